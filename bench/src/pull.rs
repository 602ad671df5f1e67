//! The `pull` suite (issue 4's targets): mirroring a model repo of 4 shards (`--shards`; `--shard`,
//! 2 GiB by default) and 200 small files from `ferry serve` on loopback, with `ferry pull` (and
//! `ferry --safe-mode pull`) against huggingface_hub's `snapshot_download(max_workers=16)`, round
//! after round, each run into a fresh, empty cache; and a second `ferry pull` of the complete
//! mirror the first one left. The `wan-80-repo` suite (issue 29) is the same flow with the test
//! kit's relay between the tools and `ferry serve` (512 MiB shards by default); `wan.rs` picks
//! its tools (`ferry pull` and `snapshot_download`) and its targets.
//!
//! The repo is written once by `scripts/synth-repo.py` in the huggingface_hub cache layout and
//! read once (hashed) before any timing, so the server's page cache is warm. ferry fsyncs and
//! verifies by itself; `snapshot_download` is followed inside the timing by `sync` of every file
//! and folder it wrote. After each run, outside the timing, the snapshot is compared with the
//! origin's: the same file list, `refs/main` at the same commit, every file's sha256; a
//! mismatch stops the benchmark. The server is stopped by its PID when the suite ends, also on
//! an error.
//!
//! It does not measure `ferry serve` (the server's CPU is not counted, and the server is the
//! same for every client), and it asserts nothing about speed: the targets are stated in the
//! report with the medians.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use ferry_testkit::hub::cache_folder;
use ferry_testkit::relay::Relay;
use ferry_testkit::serve::Serve;
use ferry_testkit::sha256_file;

use crate::report::Target;
use crate::{Args, Filler, Sample, SuiteResult, Timed, Tool, ceilings, timed, wan};

/// The synthetic repo's id.
pub(crate) const REPO: &str = "ferry-bench/synthetic-model";
/// Small files in the repo, as bench/README.md's `repo`: synth-repo.py always writes 7 (config,
/// tokenizer, README, ...), `--small` the others.
const SMALL_FILES: usize = 200;
const SYNTH_FIXED_SMALL: usize = 7;

pub(crate) const FERRY: &str = "ferry pull";
pub(crate) const AGAIN: &str = "ferry pull, again (complete mirror)";
pub(crate) const SAFE: &str = "ferry --safe-mode pull";
pub(crate) const HF: &str = "snapshot_download";

/// A file of the origin's snapshot.
pub(crate) struct OriginFile {
    /// Path inside the repo, `/`-separated.
    pub(crate) path: String,
    pub(crate) size: u64,
    sha256: String,
}

/// `ferry serve` on a free loopback port serving `root`, its log to `log`; stopped by its PID
/// when dropped (the test kit's guard).
pub(crate) fn serve(root: &Path, log: &Path) -> anyhow::Result<Serve> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    Serve::try_start(root, None, None, &[], Stdio::from(log_file)).map_err(|e| {
        anyhow::anyhow!(
            "ferry serve did not start ({e}): {}",
            std::fs::read_to_string(log).unwrap_or_default().trim()
        )
    })
}

/// `scripts/synth-repo.py`, next to this crate in the checkout.
fn synth_script() -> PathBuf {
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/synth-repo.py");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("scripts/synth-repo.py")
    }
}

/// Every file under `dir` (symlinks followed to their target, which must be a file), as sorted
/// `/`-separated paths relative to `dir`.
fn list_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), &rel, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

/// Whether a pull into `cache` completed: `refs/main` is what `ferry pull` writes last.
pub(crate) fn cache_has_ref(cache: &Path) -> bool {
    cache_folder(cache, REPO).join("refs/main").exists()
}

/// Checks a cache written by one tool against the origin: `refs/main`, the snapshot's file
/// list, and every file's size and sha256.
pub(crate) fn verify(cache: &Path, commit: &str, origin: &[OriginFile]) -> anyhow::Result<()> {
    let folder = cache_folder(cache, REPO);
    let refs = std::fs::read_to_string(folder.join("refs/main"))
        .with_context(|| format!("read {}/refs/main", folder.display()))?;
    if refs.trim() != commit {
        bail!("refs/main is {:?}, not the commit {commit}", refs.trim());
    }
    let snap = folder.join("snapshots").join(commit);
    let got = list_files(&snap)?;
    let want: Vec<&str> = origin.iter().map(|f| f.path.as_str()).collect();
    if got != want {
        let missing: Vec<&&str> = want
            .iter()
            .filter(|w| !got.contains(&w.to_string()))
            .collect();
        let extra: Vec<&String> = got.iter().filter(|g| !want.contains(&g.as_str())).collect();
        bail!(
            "the snapshot's files differ from the origin's: {} missing (first: {:?}), {} extra \
             (first: {:?})",
            missing.len(),
            missing.first(),
            extra.len(),
            extra.first()
        );
    }
    for f in origin {
        let path = snap.join(&f.path);
        let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
        if !meta.is_file() || meta.len() != f.size {
            bail!(
                "{}: {} bytes, the origin has {}",
                f.path,
                meta.len(),
                f.size
            );
        }
        let got = sha256_file(&path);
        if got != f.sha256 {
            bail!(
                "{} differs from the origin (sha256 {got} != {})",
                f.path,
                f.sha256
            );
        }
    }
    Ok(())
}

/// Every tool's shell line (`{OUT}` is the output cache), in the order they run: the second
/// pull right after the first, on its mirror.
fn tools(endpoint: &str) -> Vec<Tool> {
    let ferry = ferry_testkit::ferry_bin().to_string_lossy().into_owned();
    let pull = format!("pull {REPO} --endpoint {endpoint} --cache-dir '{{OUT}}' --json");
    let mut again = Tool::new(AGAIN, format!("{ferry} {pull}"));
    again.moves_bytes = false;
    vec![
        Tool::new(FERRY, format!("{ferry} {pull}")),
        again,
        Tool::new(SAFE, format!("{ferry} --safe-mode {pull}")),
        Tool::new(
            HF,
            format!(
                "HF_ENDPOINT={endpoint} HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 \
                 HF_HUB_ENABLE_HF_TRANSFER=0 HF_HUB_DISABLE_PROGRESS_BARS=1 python3 -c \
                 'from huggingface_hub import snapshot_download; \
                 snapshot_download(\"{REPO}\", cache_dir=\"{{OUT}}\", max_workers=16)' \
                 && find '{{OUT}}' \\( -type f -o -type d \\) -exec sync {{}} +"
            ),
        ),
    ]
}

/// What `ferry pull --json` said: its back-end and the bytes it fetched.
pub(crate) fn ferry_report(stdout: &str) -> anyhow::Result<(String, u64)> {
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("ferry pull --json printed {stdout:?}"))?;
    let backend = match &v["backend"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let fetched = v["bytes_fetched"]
        .as_u64()
        .context("no bytes_fetched in ferry pull --json")?;
    Ok((backend, fetched))
}

/// Writes the synthetic repo of `shards` shards of `shard` bytes and [`SMALL_FILES`] small
/// files into the cache at `origin` for `suite`, and hashes every file (so the server's page
/// cache is warm): its commit, its files, and their bytes.
pub(crate) fn synth(
    suite: &str,
    origin: &Path,
    (shard, shards): (u64, u32),
) -> anyhow::Result<(String, Vec<OriginFile>, u64)> {
    if shard < 1 << 20 || !shard.is_multiple_of(1 << 20) {
        bail!("{suite}: --shard must be a whole number of MiB (synth-repo.py --shard-mib)");
    }
    eprintln!(
        "== {suite}: generating {REPO}: {shards} shards of {} MiB and {SMALL_FILES} small files ...",
        shard >> 20
    );
    let synth = Command::new("python3")
        .arg(synth_script())
        .arg(origin)
        .arg(REPO)
        .args(["--shards", &shards.to_string()])
        .args(["--shard-mib", &(shard >> 20).to_string()])
        .args(["--small", &(SMALL_FILES - SYNTH_FIXED_SMALL).to_string()])
        .args(["--seed", "ferry-bench"])
        .output()
        .context("run scripts/synth-repo.py")?;
    if !synth.status.success() {
        bail!(
            "scripts/synth-repo.py failed: {}",
            String::from_utf8_lossy(&synth.stderr)
        );
    }
    let commit = String::from_utf8_lossy(&synth.stdout).trim().to_owned();
    let snap = cache_folder(origin, REPO).join("snapshots").join(&commit);
    let mut files = Vec::new();
    for path in list_files(&snap)? {
        let full = snap.join(&path);
        // Hashing reads the file: the server's page cache is warm afterwards.
        files.push(OriginFile {
            size: std::fs::metadata(&full)?.len(),
            sha256: sha256_file(&full),
            path,
        });
    }
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    eprintln!(
        "{suite}: {} files, {:.2} GB, commit {commit}",
        files.len(),
        bytes as f64 / 1e9
    );
    Ok((commit, files, bytes))
}

/// Runs `suite`: `pull`, or `wan-80-repo` through the relay.
pub(crate) fn run(suite: &str, args: &Args, scratch: &Path) -> anyhow::Result<SuiteResult> {
    let (shard, shards) = (args.shard(suite), args.shards);
    let origin = scratch.join(format!("src-{suite}"));
    let mut outputs = crate::Outputs::new(scratch, suite)?;
    let (commit, files, bytes) = synth(suite, &origin, (shard, shards))?;

    let serve = serve(&origin, &scratch.join("serve.log"))?;
    let scenario = wan::scenario(suite);
    // Over a WAN path every request goes through the relay: the listing (whose one page holds
    // the whole repo, so no `Link` to the server's own address is followed) and every file.
    let relay = match scenario {
        Some(w) => {
            let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], serve.port));
            let relay = Relay::start(upstream, w.path)?;
            eprintln!("{suite}: relay at {} ({})", relay.addr(), w.path.label());
            Some(relay)
        }
        None => None,
    };
    let endpoint = match &relay {
        Some(relay) => format!("http://{}", relay.addr()),
        None => serve.endpoint(),
    };
    let (tools, left_out) = match scenario {
        Some(w) => wan::tools(tools(&endpoint), w),
        None => (tools(&endpoint), Vec::new()),
    };
    // Over a WAN path the link cap is the ceiling (`wan.rs`): one curl would measure a flow's.
    let ceilings = if scenario.is_none() {
        eprintln!("== pull: ceilings ...");
        let first_shard = files
            .iter()
            .find(|f| f.path.ends_with(".safetensors"))
            .context("no shard in the repo")?;
        let ceilings = ceilings(
            &format!("{}/{REPO}/resolve/{commit}/{}", endpoint, first_shard.path),
            first_shard.size,
            scratch,
            None,
        )?;
        eprintln!("{ceilings:?}");
        Some(ceilings)
    } else {
        None
    };
    let filler = Filler::for_state(&args.state, scratch)?;
    let mut samples = Vec::new();
    for round in 0..=args.runs {
        for tool in &tools {
            let out = match (tool.name.as_str(), outputs.current()) {
                (AGAIN, Some(last)) => last.to_owned(),
                _ => outputs.next()?.to_owned(),
            };
            if let Some(f) = &filler {
                f.top_up()?;
            }
            let line = tool.shell.replace("{OUT}", &out.to_string_lossy());
            let relayed = relay.as_ref().map(Relay::bytes_down);
            let Timed {
                wall,
                cpu,
                rss_kib,
                machine,
                stdout,
            } = timed(&line).with_context(|| format!("{suite}: {}", tool.name))?;
            let report = if tool.name.starts_with("ferry") {
                Some(ferry_report(&stdout).with_context(|| format!("{suite}: {}", tool.name))?)
            } else {
                None
            };
            if let (AGAIN, Some((_, fetched))) = (tool.name.as_str(), &report)
                && *fetched > 0
            {
                bail!(
                    "{suite}: the second ferry pull fetched {fetched} bytes: the first did not \
                         leave a complete mirror"
                );
            }
            // A run into an empty cache carries every byte of the repo through the relay; fewer
            // would mean that some request went around it (to the server's own address).
            if let (Some(r), Some(before)) = (&relay, relayed)
                && tool.moves_bytes
                && r.bytes_down() - before < bytes
            {
                bail!(
                    "{suite}: {}: {} bytes came through the relay, the repo has {bytes}: some \
                     request went around it",
                    tool.name,
                    r.bytes_down() - before
                );
            }
            // The first pull's mirror is checked after the second pull, which runs on it (where
            // the suite has one).
            let again_follows = tools.iter().any(|t| t.name == AGAIN);
            if tool.name != FERRY || !again_follows {
                verify(&out, &commit, &files)
                    .with_context(|| format!("{suite}: {}: the output is wrong", tool.name))?;
            }
            let rate = if tool.moves_bytes {
                format!("{:6.3} GB/s", bytes as f64 / wall / 1e9)
            } else {
                "    (listing)".into()
            };
            eprintln!(
                "{suite} round {round} {:<36} {wall:7.2} s {rate} cpu {cpu:6.2} s rss {:4} MiB{}{}",
                tool.name,
                rss_kib / 1024,
                report
                    .as_ref()
                    .map(|(b, f)| format!(" [{b}, fetched {:.2} GB]", *f as f64 / 1e9))
                    .unwrap_or_default(),
                if round == 0 { " (warm-up)" } else { "" }
            );
            if round > 0 {
                samples.push(Sample {
                    tool: tool.name.clone(),
                    round,
                    wall,
                    cpu,
                    rss_kib,
                    backend: report.as_ref().map(|(b, _)| b.clone()),
                    bytes_fetched: report.as_ref().map(|(_, f)| *f),
                    tls: None,
                    http: None,
                    machine,
                });
            }
        }
    }
    drop(relay);
    drop(serve);
    drop(outputs);
    let _ = std::fs::remove_dir_all(&origin);
    let mut r = SuiteResult::new(suite, bytes, files.len(), tools);
    r.base = FERRY.into();
    r.ceilings = ceilings;
    r.samples = samples;
    r.left_out = left_out;
    if let Some(w) = scenario {
        r.targets = wan::targets(&r.tools, w);
        return Ok(r);
    }
    r.targets = vec![
        Target {
            text: format!(
                "issue 4: `{FERRY}` (durable, every file verified) takes at most 0.4x the wall \
                 time of `{HF}(max_workers=16)` (made durable)"
            ),
            tool: HF.into(),
            best_of: Vec::new(),
            max_ratio: Some(0.4),
            ..Target::default()
        },
        Target {
            text: "issue 4: a second `ferry pull` of a complete mirror takes under 1 s".into(),
            tool: AGAIN.into(),
            best_of: Vec::new(),
            max_wall_s: Some(1.0),
            ..Target::default()
        },
    ];
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache holding `files` in `REPO`'s snapshot `commit` (as plain files: `verify` follows
    /// links, so the layout of the blobs does not matter to it).
    fn cache(dir: &Path, commit: &str, files: &[(&str, &[u8])]) -> Vec<OriginFile> {
        let folder = cache_folder(dir, REPO);
        std::fs::create_dir_all(folder.join("refs")).expect("refs");
        std::fs::write(folder.join("refs/main"), commit).expect("refs/main");
        let mut origin = Vec::new();
        for (path, bytes) in files {
            let full = folder.join("snapshots").join(commit).join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(&full, bytes).expect("write");
            origin.push(OriginFile {
                path: (*path).to_owned(),
                size: bytes.len() as u64,
                sha256: sha256_file(&full),
            });
        }
        origin.sort_by(|a, b| a.path.cmp(&b.path));
        origin
    }

    #[test]
    fn verify_catches_a_wrong_byte_a_missing_or_extra_file_and_a_wrong_ref() {
        let dir = tempfile::tempdir().expect("tempdir");
        let origin = cache(
            dir.path(),
            "c0ffee",
            &[("a.json", b"{}"), ("sub/dir/b.bin", b"bytes")],
        );
        verify(dir.path(), "c0ffee", &origin).expect("a faithful copy passes");
        let snap = cache_folder(dir.path(), REPO).join("snapshots/c0ffee");

        std::fs::write(snap.join("sub/dir/b.bin"), b"bytez").expect("write");
        let e = verify(dir.path(), "c0ffee", &origin).expect_err("wrong byte");
        assert!(format!("{e:#}").contains("sub/dir/b.bin differs"), "{e:#}");
        std::fs::write(snap.join("sub/dir/b.bin"), b"bytes").expect("write");

        std::fs::write(snap.join("sub/extra"), b"").expect("write");
        let e = verify(dir.path(), "c0ffee", &origin).expect_err("extra file");
        assert!(format!("{e:#}").contains("1 extra"), "{e:#}");
        std::fs::remove_file(snap.join("sub/extra")).expect("rm");

        std::fs::remove_file(snap.join("a.json")).expect("rm");
        let e = verify(dir.path(), "c0ffee", &origin).expect_err("missing file");
        assert!(format!("{e:#}").contains("1 missing"), "{e:#}");

        assert!(verify(dir.path(), "beef", &origin).is_err(), "wrong ref");
    }

    #[test]
    fn ferry_report_reads_the_backend_and_the_bytes_fetched() {
        let (backend, fetched) =
            ferry_report("{\"backend\": \"uring\", \"bytes_fetched\": 42, \"files\": 3}\n")
                .expect("report");
        assert_eq!((backend.as_str(), fetched), ("uring", 42));
        assert!(ferry_report("not json").is_err());
    }
}
