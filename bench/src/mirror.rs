//! The `mirror` suite (issue 31's targets): `ferry serve --upstream` as a pull-through mirror
//! of a synthetic repo (4 shards of 512 MiB by default, `--shards`, `--shard`, and 200 small
//! files) whose upstream is a `ferry serve` behind the test kit's relay, capped at 200 MB/s.
//!
//! Round after round, in this order: one `ferry pull` straight from the upstream (the base);
//! 1, 4 and 8 concurrent `ferry pull`s through a mirror started cold (an empty cache) just
//! before them, timed until the last client ends; 8 clients of that same mirror again, now
//! warm; the same two with 8 curls fetching every file to /dev/null instead (the mirror alone:
//! 8 `ferry pull`s hashing and writing 8 copies durably share its two cores and its disk
//! here, where a fleet's clients would not); 8 `ferry pull`s of the origin's plain `ferry
//! serve` with no relay (what 8 clients cost on this machine with no mirror at all). Every client's snapshot is checked file by file
//! against the origin, outside the timing. The relay counts the bytes the upstream sent
//! during each cold run: the egress, as a multiple of the repo.
//!
//! Once after the rounds, readers of a filling shard: a cold mirror, one `ferry pull` through
//! it, and at once five readers of the first shard (`Range` from 0 %, 25 %, 50 %, 75 % and its
//! last MiB), each timing its first byte and its longest wait between two reads (the stock
//! client gives up after 10 s without a byte), every byte compared with the origin's.
//!
//! It asserts nothing about speed: the targets are read off the report. Every server is
//! stopped by its PID when the suite ends, also on an error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_testkit::hub::cache_folder;
use ferry_testkit::relay::{Relay, WanPath};
use ferry_testkit::serve::Serve;

use crate::pull::{self, OriginFile, REPO};
use crate::report::{Target, spread};
use crate::{Args, Sample, SuiteResult, Timed, Tool, ceilings, timed};

pub(crate) const SUITE: &str = "mirror";
/// The default shard size.
pub(crate) const SHARD: u64 = 512 << 20;
/// The upstream's link: what the relay lets through, all connections together.
const UPSTREAM_RATE: u64 = 200_000_000;
/// Clients of a cold mirror, per row.
const CLIENTS: [usize; 3] = [1, 4, 8];

const DIRECT: &str = "ferry pull, straight from the upstream";
const WARM: &str = "8 ferry pull clients, warm mirror";
/// 8 curl clients fetching every file to /dev/null: the mirror alone, without 8 verifying,
/// durable clients sharing its CPUs and disk.
const CURL_COLD: &str = "8 curl clients (to /dev/null), cold mirror";
const CURL_WARM: &str = "8 curl clients (to /dev/null), warm mirror";
const PLAIN: &str = "8 ferry pull clients, plain ferry serve (no relay)";

fn cold(n: usize) -> String {
    format!(
        "{n} ferry pull client{}, cold mirror",
        if n == 1 { "" } else { "s" }
    )
}

/// `n` concurrent `ferry pull`s of `endpoint` into `{OUT}/cI`, their reports in
/// `{OUT}/rI.json`; the line fails when any of them does.
fn clients(ferry: &str, n: usize, endpoint: &str) -> String {
    format!(
        "pids=; for i in $(seq {n}); do {ferry} pull {REPO} --endpoint {endpoint} \
         --cache-dir '{{OUT}}/c'$i --json > '{{OUT}}/r'$i.json & pids=\"$pids $!\"; done; \
         s=0; for p in $pids; do wait $p || s=1; done; exit $s"
    )
}

/// 8 concurrent curls of every file the config file `{CURL}` lists, to /dev/null, each
/// printing the bytes of every file it got.
fn curls() -> String {
    "pids=; for i in $(seq 8); do curl -sS --fail -K '{CURL}' > '{OUT}/r'$i.txt & \
     pids=\"$pids $!\"; done; s=0; for p in $pids; do wait $p || s=1; done; exit $s"
        .into()
}

/// A curl config that fetches every file of the repo from `endpoint` to /dev/null and prints
/// each one's size.
fn curl_config(endpoint: &str, commit: &str, files: &[OriginFile]) -> String {
    files
        .iter()
        .map(|f| {
            format!(
                "url = \"{endpoint}/{REPO}/resolve/{commit}/{}\"\noutput = \"/dev/null\"\n\
                 write-out = \"%{{size_download}}\\n\"\n",
                f.path
            )
        })
        .collect()
}

/// The clients a row runs: 1 for the direct pull.
fn clients_of(tool: &str) -> usize {
    if tool == DIRECT {
        1
    } else {
        tool.split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
    }
}

/// A mirror of `upstream` caching into `cache` (emptied first), its log to `log`.
fn start_mirror(cache: &Path, upstream: &str, log: &Path) -> anyhow::Result<Serve> {
    let _ = std::fs::remove_dir_all(cache);
    let log_file =
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    Serve::try_start(
        cache,
        None,
        None,
        &["--upstream", upstream],
        Stdio::from(log_file),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "the mirror did not start ({e}): {}",
            std::fs::read_to_string(log).unwrap_or_default().trim()
        )
    })
}

pub(crate) fn run(args: &Args, scratch: &Path) -> anyhow::Result<SuiteResult> {
    let (shard, shards) = (args.shard(SUITE), args.shards);
    let origin = scratch.join(format!("src-{SUITE}"));
    let mut outputs = crate::Outputs::new(scratch, SUITE)?;
    let (commit, files, bytes) = pull::synth(SUITE, &origin, (shard, shards))?;
    let serve = pull::serve(&origin, &scratch.join("serve.log"))?;
    let path = WanPath {
        rtt: Duration::from_millis(2),
        flow_rate: None,
        link_rate: Some(UPSTREAM_RATE),
    };
    let relay = Relay::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], serve.port)),
        path,
    )?;
    let upstream = format!("http://{}", relay.addr());
    eprintln!("{SUITE}: upstream at {upstream} ({})", path.label());
    let first = files
        .iter()
        .filter(|f| f.path.ends_with(".safetensors"))
        .max_by_key(|f| f.size)
        .context("no shard in the repo")?;
    eprintln!("== {SUITE}: ceilings ...");
    let ceilings = ceilings(
        &format!(
            "{}/{REPO}/resolve/{commit}/{}",
            serve.endpoint(),
            first.path
        ),
        first.size,
        scratch,
        None,
    )?;
    eprintln!("{ceilings:?}");

    let ferry = ferry_testkit::ferry_bin().to_string_lossy().into_owned();
    let mut tools = vec![Tool::new(
        DIRECT,
        format!("{ferry} pull {REPO} --endpoint {upstream} --cache-dir '{{OUT}}' --json"),
    )];
    for n in CLIENTS {
        tools.push(Tool::new(&cold(n), clients(&ferry, n, "{MIRROR}")));
    }
    tools.push(Tool::new(WARM, clients(&ferry, 8, "{MIRROR}")));
    tools.push(Tool::new(CURL_COLD, curls()));
    tools.push(Tool::new(CURL_WARM, curls()));
    tools.push(Tool::new(PLAIN, clients(&ferry, 8, &serve.endpoint())));

    let cache = scratch.join("mirror-cache");
    let curl_cfg = scratch.join("mirror-curl.cfg");
    let mirror_log = scratch.join("mirror.log");
    let mut samples = Vec::new();
    // Per cold row: the upstream's bytes / the repo's, round by round.
    let mut egress: Vec<(String, Vec<f64>)> = CLIENTS
        .iter()
        .map(|&n| cold(n))
        .chain([CURL_COLD.to_owned()])
        .map(|t| (t, Vec::new()))
        .collect();
    let mut mirror: Option<Serve> = None;
    for round in 0..=args.runs {
        for tool in &tools {
            let out = outputs.next()?.to_owned();
            if tool.name.ends_with("cold mirror") {
                drop(mirror.take());
                mirror = Some(start_mirror(&cache, &upstream, &mirror_log)?);
            }
            let at = mirror.as_ref().map(Serve::endpoint).unwrap_or_default();
            std::fs::write(&curl_cfg, curl_config(&at, &commit, &files))?;
            let line = tool
                .shell
                .replace("{OUT}", &out.to_string_lossy())
                .replace("{MIRROR}", &at)
                .replace("{CURL}", &curl_cfg.to_string_lossy());
            let before = relay.bytes_down();
            let Timed {
                wall,
                cpu,
                rss_kib,
                machine,
                stdout,
            } = timed(&line).with_context(|| format!("{SUITE}: {}", tool.name))?;
            let sent = relay.bytes_down() - before;
            let (fetched, backend) = if tool.name.starts_with("8 curl") {
                (
                    curled(&out, bytes).with_context(|| format!("{SUITE}: {}", tool.name))?,
                    None,
                )
            } else {
                pulled(&tool.name, &out, &stdout, (&commit, &files))?
            };
            if let Some((_, e)) = egress.iter_mut().find(|(t, _)| *t == tool.name)
                && round > 0
            {
                e.push(sent as f64 / bytes as f64);
            }
            eprintln!(
                "{SUITE} round {round} {:<52} {wall:7.2} s {:6.3} GB/s (last client) cpu \
                 {cpu:6.2} s upstream sent {:.3}x the repo{}",
                tool.name,
                bytes as f64 / wall / 1e9,
                sent as f64 / bytes as f64,
                if round == 0 { " (warm-up)" } else { "" }
            );
            if tool.name.contains("warm mirror") {
                drop(mirror.take());
            }
            if round > 0 {
                samples.push(Sample {
                    tool: tool.name.clone(),
                    round,
                    wall,
                    cpu,
                    rss_kib,
                    backend,
                    bytes_fetched: Some(fetched),
                    tls: None,
                    http: None,
                    machine,
                });
            }
        }
    }
    drop(mirror);
    let _ = std::fs::remove_dir_all(&cache);
    let mut notes: Vec<String> = egress
        .iter()
        .filter_map(|(tool, e)| {
            let (m, lo, hi) = spread(e)?;
            Some(format!(
                "upstream egress, {tool}: median {m:.3}x the repo ({lo:.3}-{hi:.3}; issue 31: \
                 at most 1.05x)"
            ))
        })
        .collect();
    eprintln!("== {SUITE}: readers of a filling shard ...");
    let readers = readers(
        scratch,
        (&upstream, &cache, &mirror_log),
        (&commit, &files),
        first,
        &origin,
    )?;
    notes.extend(readers);
    drop(relay);
    drop(serve);
    drop(outputs);
    let _ = std::fs::remove_dir_all(&origin);
    let _ = std::fs::remove_dir_all(&cache);

    let mut r = SuiteResult::new(SUITE, bytes, files.len(), tools);
    r.base = DIRECT.into();
    r.targets = CLIENTS
        .iter()
        .map(|&n| Target {
            text: format!(
                "issue 31: the last of {n} `ferry pull` clients of a cold mirror finishes \
                 within 1.2x of one `ferry pull` straight from the upstream"
            ),
            tool: cold(n),
            max_times: Some(1.2),
            ..Target::default()
        })
        .collect();
    r.targets.push(Target {
        text: "issue 31, the mirror alone: the last of 8 curl clients of a cold mirror \
               finishes within 1.2x of one `ferry pull` straight from the upstream"
            .into(),
        tool: CURL_COLD.into(),
        max_times: Some(1.2),
        ..Target::default()
    });
    r.targets.push(Target {
        text: "issue 31: a warm mirror serves 8 clients at least 0.8 of loopback's network \
               ceiling in total (8 curls to /dev/null; 8 repos' bytes / the last client's \
               time / the ceiling)"
            .into(),
        tool: CURL_WARM.into(),
        min_share: Some(0.8),
        link_rate: Some((ceilings.network_gb_s * 1e9 / 8.0) as u64),
        ..Target::default()
    });
    r.ceilings = Some(ceilings);
    r.samples = samples;
    r.notes = notes;
    Ok(r)
}

/// The bytes 8 curls printed in `out` (`rI.txt`, one size per file): an error unless each
/// got `bytes`.
fn curled(out: &Path, bytes: u64) -> anyhow::Result<u64> {
    let mut all = 0;
    for i in 1..=8 {
        let text = std::fs::read_to_string(out.join(format!("r{i}.txt")))?;
        let got: u64 = text
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .sum();
        if got != bytes {
            bail!("curl {i} got {got} bytes, the repo has {bytes}");
        }
        all += got;
    }
    Ok(all)
}

/// The bytes the `ferry pull`s of a row fetched and their back-end, after checking every
/// client's snapshot (the direct pull's report is its `stdout`, the clients' `out/rI.json`).
fn pulled(
    tool: &str,
    out: &Path,
    stdout: &str,
    (commit, files): (&str, &[OriginFile]),
) -> anyhow::Result<(u64, Option<String>)> {
    let reports: Vec<String> = if tool == DIRECT {
        vec![stdout.to_owned()]
    } else {
        (1..=clients_of(tool))
            .map(|i| std::fs::read_to_string(out.join(format!("r{i}.json"))))
            .collect::<Result<_, _>>()
            .context("a client's report")?
    };
    let mut fetched = 0;
    let mut backend = None;
    for (i, report) in reports.iter().enumerate() {
        let (b, f) = pull::ferry_report(report)?;
        fetched += f;
        backend.get_or_insert(b);
        let snapshot = if tool == DIRECT {
            out.to_owned()
        } else {
            out.join(format!("c{}", i + 1))
        };
        pull::verify(&snapshot, commit, files)
            .with_context(|| format!("{SUITE}: {tool}: client {} got a wrong snapshot", i + 1))?;
    }
    Ok((fetched, backend))
}

/// What one reader saw: from its request to its first body byte, its longest wait between
/// two reads, and its whole time.
struct Seen {
    from: u64,
    first: Duration,
    longest: Duration,
    all: Duration,
}

/// The readers of a filling shard (see the module docs), in words.
fn readers(
    scratch: &Path,
    (upstream, cache, log): (&str, &Path, &Path),
    (commit, files): (&str, &[OriginFile]),
    shard: &OriginFile,
    origin: &Path,
) -> anyhow::Result<Vec<String>> {
    let mirror = start_mirror(cache, upstream, log)?;
    let out = scratch.join("mirror-readers-pull");
    let _ = std::fs::remove_dir_all(&out);
    let ferry = ferry_testkit::ferry_bin();
    let mut pull = Command::new(&ferry)
        .args([
            "pull",
            REPO,
            "--endpoint",
            &mirror.endpoint(),
            "--cache-dir",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start ferry pull")?;
    let source: PathBuf = cache_folder(origin, REPO)
        .join("snapshots")
        .join(commit)
        .join(&shard.path);
    let target = format!("/{REPO}/resolve/{commit}/{}", shard.path);
    let size = shard.size;
    let starts = [
        0,
        size / 4,
        size / 2,
        size / 4 * 3,
        size.saturating_sub(1 << 20),
    ];
    let port = mirror.port;
    let threads: Vec<_> = starts
        .iter()
        .map(|&from| {
            let (target, source) = (target.clone(), source.clone());
            std::thread::spawn(move || read_from(port, &target, from, &source))
        })
        .collect();
    let mut seen = Vec::new();
    for t in threads {
        seen.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("a reader panicked"))??,
        );
    }
    let status = pull.wait().context("wait for ferry pull")?;
    if !status.success() {
        bail!("{SUITE}: the ferry pull beside the readers failed: {status}");
    }
    pull::verify(&out, commit, files).context("the ferry pull beside the readers")?;
    let _ = std::fs::remove_dir_all(&out);
    drop(mirror);
    let longest = seen.iter().map(|s| s.longest).max().unwrap_or_default();
    let mut notes: Vec<String> = seen
        .iter()
        .map(|s| {
            format!(
                "a reader of the filling {} MiB shard from {:.0} %: first byte after {:.2} s, \
                 longest wait between two reads {:.2} s, all its bytes after {:.2} s",
                size >> 20,
                s.from as f64 * 100.0 / size as f64,
                s.first.as_secs_f64(),
                s.longest.as_secs_f64(),
                s.all.as_secs_f64()
            )
        })
        .collect();
    notes.push(format!(
        "the longest any reader of the filling shard waited for a byte: {:.2} s (issue 31: no \
         client waits 10 s) — {}",
        longest.as_secs_f64(),
        if longest < Duration::from_secs(10) {
            "**met**"
        } else {
            "**not met**"
        }
    ));
    for n in &notes {
        eprintln!("{SUITE}: {n}");
    }
    Ok(notes)
}

/// GETs `target` from `from` to its end on the mirror at `port`, timing the bytes, and
/// compares them with `source`'s.
fn read_from(port: u16, target: &str, from: u64, source: &Path) -> anyhow::Result<Seen> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("connect to the mirror")?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let asked = Instant::now();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nRange: bytes={from}-\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut source = std::fs::File::open(source)?;
    std::io::Seek::seek(&mut source, std::io::SeekFrom::Start(from))?;
    let mut head: Vec<u8> = Vec::new();
    let mut in_head = true;
    let mut buf = vec![0u8; 256 << 10];
    let mut want = vec![0u8; 256 << 10];
    let (mut first, mut longest, mut last) = (None, Duration::ZERO, Instant::now());
    let mut body = 0u64;
    loop {
        let n = s.read(&mut buf).context("read from the mirror")?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        let mut start = 0;
        if in_head {
            head.extend_from_slice(&buf[..n]);
            let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let line = String::from_utf8_lossy(&head[..i]).into_owned();
            if !line.starts_with("HTTP/1.1 206") {
                bail!("the mirror answered a range from {from} with {line:?}");
            }
            in_head = false;
            // The terminator completed in this read: what follows it is body.
            start = n - (head.len() - (i + 4));
        }
        let bytes = &buf[start..n];
        if bytes.is_empty() {
            continue;
        }
        match first {
            None => first = Some(now - asked),
            Some(_) => longest = longest.max(now - last),
        }
        last = now;
        source
            .read_exact(&mut want[..bytes.len()])
            .with_context(|| format!("a reader from {from} got more bytes than the origin has"))?;
        if bytes != &want[..bytes.len()] {
            bail!(
                "a reader from {from} got a byte that differs from the origin's near {}",
                from + body
            );
        }
        body += bytes.len() as u64;
    }
    let all = asked.elapsed();
    let left = source.read(&mut want[..1])?;
    if left != 0 || first.is_none() {
        bail!("a reader from {from} got {body} bytes, short of the origin's");
    }
    Ok(Seen {
        from,
        first: first.unwrap_or_default(),
        longest,
        all,
    })
}
