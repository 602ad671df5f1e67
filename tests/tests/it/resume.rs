//! `ferry pull` stopped by `kill -9` at 50 random moments of its transfers (seeded; the seed is
//! printed), resuming after each, then run to the end, on each back-end. The origin is a real nginx serving a static Hub at 8 MiB/s per
//! request (so that a kill lands mid-transfer), logging the body bytes it sent.
//!
//! What must hold:
//! - at no moment does a name a user sees (a blob under its final name, a snapshot link) hold
//!   partial or wrong bytes: a watcher checks every final name as soon as it appears, while
//!   ferry runs and is killed;
//! - every run takes over what the journal says the runs before it wrote (the final run fetches
//!   none of the bytes the journal held at the last kill);
//! - nothing written is fetched again: all runs together make nginx send at most the repo's
//!   bytes plus, per kill, what the connections can have had in flight (one range each, at most
//!   8 MiB);
//! - the final mirror is byte for byte the repo, with no journal or partial file left behind.
//!
//! And stopped by SIGINT, SIGTERM, or two signals in a row, mid-transfer: it exits with 128 + the
//! signal, says how to resume, loses no journal record, never shows a partial file under a final
//! name, and the next run takes over every byte journaled at the signal.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_testkit::hub::{PULL_PARTIAL, Repo, StaticHub};
use ferry_testkit::record::{self, Damage, Trial};
use ferry_testkit::{Backend, assert_same_file, backends_under_test, ferry_bin, success_report};

const SPEC: &[(&str, u64, bool)] = &[
    ("model-00001-of-00003.safetensors", 48 << 20, true),
    ("model-00002-of-00003.safetensors", (48 << 20) + 4097, true),
    ("model-00003-of-00003.safetensors", (40 << 20) - 1, true),
    ("config.json", 700, false),
    ("tokenizer.json", 300_000, false),
];
/// Connections of each run (`-c`).
const CONNECTIONS: u64 = 4;
/// The longest range ferry asks for at once (`plan::MAX_CHUNK`): what one connection can have
/// in flight when the process dies.
const MAX_RANGE: u64 = 8 << 20;
/// SIGKILLs per back-end, each at a random moment of the pull.
const KILLS: u64 = 50;
/// The kill moments' seed, unless `FERRY_TEST_SEED` gives one (each run prints it).
const SEED: u64 = 0x5eed_f0e1_2026_1121;

/// Bytes the journal records as written (its `W` lines; see `engine/src/journal.rs`).
fn journal_bytes(cache: &Path, repo: &Repo) -> u64 {
    let path = repo
        .cache_folder(cache)
        .join(".ferry")
        .join(format!("{}.journal", repo.commit));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                [_, "W", _, start, end] => {
                    Some(end.parse::<u64>().ok()? - start.parse::<u64>().ok()?)
                }
                _ => None,
            }
        })
        .sum()
}

/// Checks every final name that has appeared since the last call: a blob must be complete and
/// hold exactly its file's bytes, a snapshot link must point at such a blob. Returns what is
/// wrong, each with the damage it shows (a wrong link: its whole file).
fn check_final_names(
    cache: &Path,
    repo: &Repo,
    by_etag: &HashMap<&str, &ferry_testkit::hub::RepoFile>,
    checked: &mut HashSet<PathBuf>,
) -> Vec<(String, Damage)> {
    let mut wrong = Vec::new();
    let blobs = repo.cache_folder(cache).join("blobs");
    let whole = |f: &ferry_testkit::hub::RepoFile| Damage {
        lost: 0,
        corrupted: f.size,
        checked: f.size,
    };
    let mut check_blob = |path: PathBuf, name: &str, wrong: &mut Vec<(String, Damage)>| {
        if checked.contains(&path) {
            return;
        }
        match by_etag.get(name) {
            None => wrong.push((
                format!("unexpected file under blobs/: {name}"),
                record::leftover(&path),
            )),
            Some(f) => {
                let got = std::fs::read(&path).unwrap_or_default();
                let want = std::fs::read(&f.source).expect("source");
                if got != want {
                    wrong.push((
                        format!(
                            "{} is under its final name with wrong bytes ({} of {} bytes)",
                            f.path,
                            got.len(),
                            want.len()
                        ),
                        record::damage(&f.source, &path),
                    ));
                }
                checked.insert(path);
            }
        }
    };
    for entry in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(PULL_PARTIAL) {
            check_blob(entry.path(), &name, &mut wrong);
        }
    }
    // A link that appeared since the listing above: its blob is checked now.
    let snapshot = repo.snapshot(cache);
    for f in &repo.files {
        let link = snapshot.join(&f.path);
        if std::fs::symlink_metadata(&link).is_err() {
            continue;
        }
        match std::fs::canonicalize(&link) {
            Ok(target) => {
                let name = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if target.parent() != std::fs::canonicalize(&blobs).ok().as_deref() {
                    wrong.push((format!("snapshot link {} leaves blobs/", f.path), whole(f)));
                } else if name != f.etag {
                    let m = format!("snapshot link {} points at {name}", f.path);
                    wrong.push((m, whole(f)));
                } else {
                    check_blob(blobs.join(&name), &name, &mut wrong);
                }
            }
            Err(e) => {
                let m = format!("snapshot link {} is dangling: {e}", f.path);
                wrong.push((m, whole(f)));
            }
        }
    }
    wrong
}

/// Runs `check_final_names` over and over until dropped, collecting what is wrong.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(String, Damage)>>>,
}

impl Watcher {
    fn start(cache: PathBuf, repo: Arc<Repo>, checked: Arc<Mutex<HashSet<PathBuf>>>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let by_etag: HashMap<&str, &ferry_testkit::hub::RepoFile> =
                repo.files.iter().map(|f| (f.etag.as_str(), f)).collect();
            let mut wrong = Vec::new();
            loop {
                let last = stop2.load(Ordering::Relaxed);
                let mut seen = checked.lock().expect("lock");
                wrong.extend(check_final_names(&cache, &repo, &by_etag, &mut seen));
                drop(seen);
                if last {
                    return wrong;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Watcher {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(String, Damage)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("watcher")
    }
}

fn pull_command(backend: Backend, endpoint: &str, cache: &Path) -> Command {
    let mut c = Command::new(ferry_bin());
    c.args([
        "--backend",
        backend.flag(),
        "pull",
        "org/model",
        "--endpoint",
    ])
    .arg(endpoint)
    .arg("--cache-dir")
    .arg(cache)
    .args(["-c", &CONNECTIONS.to_string(), "--json"])
    .env_remove("FERRY_SAFE_MODE")
    .env_remove("HF_TOKEN")
    .stdin(Stdio::null());
    c
}

/// Runs the pull to its end after the stopped runs: it must succeed, on `backend`, with no
/// wrong final name seen by `watcher` meanwhile. Before anything is asserted, `trial` is
/// recorded with its damage (what the watcher saw wrong under final names during all the runs,
/// plus what the final mirror lacks or has wrong) and `refetched()`. Returns the JSON report.
fn finish_pull(
    (backend, endpoint): (Backend, &str),
    (cache, repo): (&Path, &Repo),
    watcher: Watcher,
    what: &str,
    (trial, refetched): (Trial, impl FnOnce() -> Option<u64>),
) -> serde_json::Value {
    let out = pull_command(backend, endpoint, cache)
        .output()
        .expect("run ferry");
    let wrong = watcher.finish();
    let mut damage = Damage::default();
    for (_, d) in &wrong {
        damage += *d;
    }
    let snapshot = repo.snapshot(cache);
    for f in &repo.files {
        damage += record::damage(&f.source, &snapshot.join(&f.path));
    }
    Trial {
        damage,
        refetched: refetched(),
        ..trial
    }
    .record();
    let wrong: Vec<&String> = wrong.iter().map(|(m, _)| m).collect();
    assert!(wrong.is_empty(), "{what}: {wrong:#?}");
    success_report(&out, backend, &format!("{what}: the resumed pull"))
}

/// Every file of `repo` is in the snapshot, byte for byte.
fn assert_mirrored(cache: &Path, repo: &Repo, what: &str) {
    for f in &repo.files {
        let path = repo.snapshot(cache).join(&f.path);
        assert_same_file(&f.source, &path, &format!("{what}: {}", f.path));
    }
}

#[test]
fn a_pull_killed_mid_transfer_resumes_without_fetching_written_ranges_again() {
    // The repo of [`SPEC`] as a static Hub, at `/slow` (8 MiB/s per request).
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let (repo, nginx, endpoint) = (Arc::new(hub.repo.clone()), &hub.nginx, hub.slow_endpoint());
    let total: u64 = repo.files.iter().map(|f| f.size).sum();
    let lfs_total: u64 = repo.files.iter().filter(|f| f.lfs).map(|f| f.size).sum();
    for backend in backends_under_test() {
        eprintln!("kill -9 and resume on backend={backend:?}");
        let cache = tempfile::tempdir().expect("tmp");
        let logged_before = nginx.requests(0).len();
        let checked = Arc::new(Mutex::new(HashSet::new()));
        let watcher = Watcher::start(
            cache.path().to_path_buf(),
            Arc::clone(&repo),
            Arc::clone(&checked),
        );
        let mut killed_running = 0;
        let mut journaled_at_last_kill = 0;
        // The report of a run that finished the pull before its kill came (one that finds every
        // byte written by the runs before takes them over and can end within its kill's
        // 0-40 ms): no later run has anything to take over, and this run is the one that
        // resumed after the last kill.
        let mut finished: Option<serde_json::Value> = None;
        // The moments: a random point of the shards' bytes for each kill (in order, so the kills
        // spread over the whole pull), then a random 0-40 ms more, so they also land between
        // journal records, in the listing, while files open, settle and are published.
        let seed = std::env::var("FERRY_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(SEED);
        eprintln!("  kill moments from seed {seed} (FERRY_TEST_SEED)");
        let mut rng = XorShift(seed | 1);
        // Points in the first 90%: the last run must still have something to take over.
        let mut points: Vec<u64> = (0..KILLS).map(|_| rng.below(lfs_total / 10 * 9)).collect();
        points.sort_unstable();
        for (k, threshold) in points.into_iter().enumerate() {
            let mut child = pull_command(backend, &endpoint, cache.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn ferry");
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if child.try_wait().expect("try_wait").is_some() {
                    break;
                }
                if journal_bytes(cache.path(), &repo) >= threshold {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "ferry pull neither progressed nor finished"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(rng.below(41)));
            let before = (killed_running, journaled_at_last_kill);
            let journaled = journal_bytes(cache.path(), &repo);
            if child.try_wait().expect("try_wait").is_none() {
                child.kill().expect("SIGKILL");
                killed_running += 1;
                journaled_at_last_kill = journaled;
            }
            let out = child.wait_with_output().expect("wait");
            eprintln!(
                "  kill {}: {} MiB of {} MiB journaled",
                k + 1,
                journaled >> 20,
                lfs_total >> 20
            );
            // A report on stdout: the run finished the pull (before its kill, or as it came).
            if let Ok(r) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                eprintln!("  run {} finished the pull", k + 1);
                // A kill that came as it finished interrupted nothing, and what the journal
                // held then is this run's own work.
                (killed_running, journaled_at_last_kill) = before;
                finished = Some(r);
                break;
            }
        }
        assert!(
            killed_running > 0,
            "every run finished before it could be killed: the test proved nothing"
        );
        let what = format!("backend={backend:?}");
        let sent_for_backend = || -> u64 {
            nginx
                .requests(0)
                .iter()
                .skip(logged_before)
                .filter(|q| q.uri.contains("/resolve/"))
                .map(|q| q.body_bytes)
                .sum()
        };
        let trial = Trial {
            times: killed_running,
            ..Trial::once(
                (
                    "SIGKILL at a random moment of a pull, then resume",
                    "resume::a_pull_killed_mid_transfer_resumes_without_fetching_written_ranges_again",
                ),
                Some(backend),
                "resumed; no partial file under a final name; mirror byte for byte",
                Damage::default(),
            )
        };
        let refetched = || Some(sent_for_backend().saturating_sub(total));
        let (place, endpoint) = ((cache.path(), &*repo), (backend, endpoint.as_str()));
        let r = finish_pull(endpoint, place, watcher, &what, (trial, refetched));
        // The run after the last kill: this one, or one that ended by itself before it.
        let r = match finished {
            Some(first) => {
                assert_eq!(r["bytes_fetched"], 0, "{what}: the pull was complete: {r}");
                first
            }
            None => r,
        };
        let resumed = r["bytes_resumed"].as_u64().expect("bytes_resumed");
        let fetched = r["bytes_fetched"].as_u64().expect("bytes_fetched");
        assert!(resumed > 0, "a partial file was taken over: {r}");
        // Whatever the journal held at the last kill (complete files, and ranges of partial
        // ones) is not fetched by the final run.
        assert!(
            total - fetched >= journaled_at_last_kill,
            "the journal held {journaled_at_last_kill} bytes at the last kill, yet the final run fetched {fetched} of {total}: {r}"
        );
        assert_mirrored(cache.path(), &repo, &what);
        assert!(
            !repo.cache_folder(cache.path()).join(".ferry").exists(),
            "the journal is removed once the pull completes"
        );
        let leftovers: Vec<String> =
            std::fs::read_dir(repo.cache_folder(cache.path()).join("blobs"))
                .expect("blobs")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(PULL_PARTIAL))
                .collect();
        assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
        // Every byte nginx sent for this back-end's runs, killed ones included (nginx logs a
        // request whose client vanished with the bytes it had sent until then).
        let sent = sent_for_backend();
        let refetched = sent.saturating_sub(total);
        let bound = killed_running * CONNECTIONS * MAX_RANGE;
        eprintln!(
            "  {killed_running} kills; {resumed} bytes resumed by the last run; nginx sent {sent} bytes for a {total}-byte repo: {refetched} fetched again (bound {bound})"
        );
        assert!(
            sent >= total,
            "nginx sent {sent} bytes, less than the repo's {total}"
        );
        assert!(
            refetched <= bound,
            "{refetched} bytes fetched again over {killed_running} kills; at most {bound} were in flight"
        );
    }
}

/// A small deterministic generator for the kill moments (xorshift64).
struct XorShift(u64);

impl XorShift {
    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// `SIGINT then SIGTERM`.
fn signal_names(signals: &[rustix::process::Signal]) -> String {
    use rustix::process::Signal;
    let names: Vec<&str> = signals
        .iter()
        .map(|&s| match s {
            Signal::INT => "SIGINT",
            Signal::TERM => "SIGTERM",
            _ => "a signal",
        })
        .collect();
    names.join(" then ")
}

/// Sends `sig` to `child`; false when it had exited already.
fn signal(child: &std::process::Child, sig: rustix::process::Signal) -> bool {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid");
    rustix::process::kill_process(pid, sig).is_ok()
}

/// Waits for `child` to exit, at most `limit` (then kills it and fails): its exit code and
/// stderr, and how long it took.
fn wait_exit(mut child: std::process::Child, limit: Duration) -> (Option<i32>, String, Duration) {
    use std::io::Read;
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry did not exit within {limit:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = t0.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err, took)
}

#[test]
fn a_pull_stopped_by_sigint_or_sigterm_exits_cleanly_and_resumes() {
    use rustix::process::Signal;
    // The repo of [`SPEC`] as a static Hub, at `/slow` (8 MiB/s per request).
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let (repo, endpoint) = (Arc::new(hub.repo.clone()), hub.slow_endpoint());
    let lfs_total: u64 = repo.files.iter().filter(|f| f.lfs).map(|f| f.size).sum();
    // (signals sent back to back, what stderr must say). The second signal of the last case is
    // another one: two SIGINTs sent microseconds apart merge into one (POSIX does not queue
    // standard signals), where a user's second Ctrl-C comes far later. Two signals pending at
    // once are taken in no set order: the first taken stops, the second exits at once. The exit
    // code is 128 + the signal that stopped ferry.
    let cases: [(&[Signal], &str); 3] = [
        (&[Signal::INT], "SIGINT: stopping"),
        (&[Signal::TERM], "SIGTERM: stopping"),
        (&[Signal::INT, Signal::TERM], "exiting at once"),
    ];
    for backend in backends_under_test() {
        for (signals, said) in cases {
            let what = format!("backend={backend:?} {signals:?}");
            let cache = tempfile::tempdir().expect("tmp");
            let checked = Arc::new(Mutex::new(HashSet::new()));
            let watcher = Watcher::start(
                cache.path().to_path_buf(),
                Arc::clone(&repo),
                Arc::clone(&checked),
            );
            let mut child = pull_command(backend, &endpoint, cache.path())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ferry");
            // Mid-transfer: a third of the shards' bytes journaled.
            let deadline = Instant::now() + Duration::from_secs(120);
            while journal_bytes(cache.path(), &repo) < lfs_total / 3 {
                assert!(
                    child.try_wait().expect("try_wait").is_none(),
                    "{what}: ferry ended before the signal"
                );
                assert!(
                    Instant::now() < deadline,
                    "{what}: ferry pull made no progress"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let journaled = journal_bytes(cache.path(), &repo);
            let mut delivered = 0;
            for &sig in signals {
                delivered += usize::from(signal(&child, sig));
            }
            let (exit, stderr, took) = wait_exit(child, Duration::from_secs(30));
            let journaled_after = journal_bytes(cache.path(), &repo);
            eprintln!(
                "{what}: exit {exit:?} after {:.0} ms; {} MiB journaled at the signal, {} MiB at the exit{}",
                took.as_secs_f64() * 1e3,
                journaled >> 20,
                journaled_after >> 20,
                if stderr.contains("exiting now") {
                    " (the grace period ended the stop)"
                } else {
                    ""
                }
            );
            let code = if stderr.contains("SIGTERM: stopping") {
                143
            } else {
                130
            };
            assert_eq!(exit, Some(code), "{what}: {stderr}");
            // A second signal that found ferry gone has nothing to say.
            if delivered == signals.len() {
                assert!(stderr.contains(said), "{what}: {stderr}");
            }
            assert!(
                stderr.contains("run the same command again to resume"),
                "{what}: {stderr}"
            );
            assert!(
                journaled_after >= journaled,
                "{what}: the journal lost records ({journaled} -> {journaled_after})"
            );
            // Run again to the end: what the stopped run wrote is taken over.
            let fault = format!("{} mid-transfer, then resume", signal_names(signals));
            let trial = Trial::once(
                (
                    &fault,
                    "resume::a_pull_stopped_by_sigint_or_sigterm_exits_cleanly_and_resumes",
                ),
                Some(backend),
                "exit 128 + signal; journal kept; resumed; mirror byte for byte",
                Damage::default(),
            );
            let place = (cache.path(), &*repo);
            let r = finish_pull(
                (backend, &endpoint),
                place,
                watcher,
                &what,
                (trial, || None),
            );
            let total: u64 = repo.files.iter().map(|f| f.size).sum();
            let fetched = r["bytes_fetched"].as_u64().expect("bytes_fetched");
            assert!(
                total - fetched >= journaled,
                "{what}: {journaled} bytes were journaled at the signal, yet the next run fetched {fetched} of {total}: {r}"
            );
            assert_mirrored(cache.path(), &repo, &what);
        }
    }
}
