//! The test kit of ferry's integration tests (`tests/`) and of its benchmark harness (`bench/`):
//! a real nginx origin on a free loopback port (the one nginx configuration of the repository),
//! seeded test data, a static Hub, a fault-injecting proxy for the misbehaviours nginx will not
//! produce, real proxies, a hostile origin, a relay that emulates a WAN path, small and failing filesystems for the disk tests,
//! the reliability record the fault tests write, the environment every client runs with, and
//! helpers to run the `ferry` binary on each back-end. Its two binaries are tools of the test
//! run: `seccomp-run` (a program under a seccomp filter that denies io_uring) and `reliability`
//! (target/RELIABILITY.md from the record).
//!
//! Every server a test starts is stopped by its PID when its guard drops, also when the test
//! fails. Nothing here talks to an address other than loopback, and nothing changes the state
//! of the process that uses it (its environment, limits, namespaces): sandboxes are entered by
//! child processes. This crate tests nothing by itself beyond its own helpers; the tests are in
//! `tests/`, the measurements in `bench/`.

pub mod caddy;
pub mod data;
pub mod disk;
pub mod env;
pub mod eyeballs;
pub mod h2client;
pub mod h2origin;
pub mod h3origin;
pub mod hf;
pub mod hls;
pub mod hostile;
pub mod hub;
pub mod netlab;
pub mod nginx;
pub mod proxies;
pub mod proxy;
mod ranged;
pub mod record;
pub mod relay;
pub mod serve;
pub mod tls;
pub mod udpjunk;
pub mod udprelay;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use data::{sha256_file, write_data};
pub use nginx::{Nginx, Request};
pub use proxy::{Fault, FaultProxy};

/// The `ferry` binary under test: `$FERRY_BIN`, else `target/<profile>/ferry` next to this test.
pub fn ferry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(p);
    }
    sibling_bin("ferry")
}

/// The `seccomp-run` helper binary of this crate.
pub fn seccomp_run_bin() -> PathBuf {
    sibling_bin("seccomp-run")
}

fn sibling_bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps, binaries (the bench too) one level up.
    let exe = std::env::current_exe().expect("current_exe");
    let here = exe.parent().expect("exe dir");
    let bin = [here, here.parent().unwrap_or(here)]
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| here.join(name));
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --workspace --bins`; scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A back-end under test, as the CLI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `--backend uring`.
    Uring,
    /// `--backend portable`.
    Portable,
}

impl Backend {
    /// The `--backend` value.
    pub fn flag(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Portable => "portable",
        }
    }
}

/// The back-ends to test here: portable always, io_uring where the probe says it works (a test
/// that skips it says so on stderr).
pub fn backends_under_test() -> Vec<Backend> {
    let mut v = vec![Backend::Portable];
    let uring = kernel_probes::uring();
    if uring.is_available() {
        v.insert(0, Backend::Uring);
    } else {
        eprintln!("SKIP io_uring back-end: {}", uring.setup);
    }
    v
}

/// True when io_uring works in this process (so the unsandboxed ferry should pick it).
pub fn kernel_probes_available() -> bool {
    kernel_probes::uring().is_available()
}

/// Whether this process may pin all the memory ferry registers with io_uring: it holds
/// `CAP_IPC_LOCK`, or `RLIMIT_MEMLOCK` is unlimited. Where it may not, the kernel refuses
/// registrations past the limit and ferry writes from those buffers the plain way (reported as
/// fewer `written_fixed` bytes).
pub fn can_pin_memory() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ipc_lock = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let unlimited = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .is_some_and(|l| l.split_whitespace().nth(3) == Some("unlimited"));
    ipc_lock || unlimited
}

/// `ferry --backend B`, with `FERRY_SAFE_MODE` removed (so that B is the back-end that runs):
/// the command to add the rest of the arguments and the environment to.
pub fn ferry_command(backend: Backend) -> Command {
    let mut c = Command::new(ferry_bin());
    c.arg("--backend")
        .arg(backend.flag())
        .env_remove("FERRY_SAFE_MODE")
        .env("FERRY_CACHE_DIR", fresh_cache_dir());
    c
}

/// A cache folder of its own for one run of ferry (what it remembers about servers between
/// runs, such as HTTP/3 failures, must not leak from one test into another on a reused port).
/// A test of that memory sets `FERRY_CACHE_DIR` itself.
pub fn fresh_cache_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static BASE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = BASE.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("ferry-test-cache")
            .tempdir()
            .expect("cache base")
    });
    base.path()
        .join(NEXT.fetch_add(1, Ordering::Relaxed).to_string())
}

/// Runs `ferry --backend B ARGS...` and returns its output.
pub fn ferry(backend: Backend, args: &[&str]) -> Output {
    ferry_command(backend)
        .args(args)
        .output()
        .expect("run ferry")
}

/// The arguments of `ferry pull org/model --endpoint ENDPOINT --cache-dir CACHE --json
/// EXTRA...` (the repo a [`hub::StaticHub`] serves).
pub fn pull_args<'a>(endpoint: &'a str, cache: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "pull",
        "org/model",
        "--endpoint",
        endpoint,
        "--cache-dir",
        cache.to_str().expect("utf-8 path"),
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs [`pull_args`] on `backend` and returns its output, whether it succeeded or not.
pub fn pull_into(backend: Backend, endpoint: &str, cache: &Path, extra: &[&str]) -> Output {
    ferry(backend, &pull_args(endpoint, cache, extra))
}

/// `ferry get URL -o OUT --json` on `backend`; panics with ferry's stderr if it fails, and
/// returns the JSON summary after checking it names `backend`.
pub fn get_ok(backend: Backend, url: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let out_s = out.to_str().expect("utf-8 path");
    let mut args = vec!["get", url, "-o", out_s, "--json"];
    args.extend_from_slice(extra);
    let o = ferry(backend, &args);
    assert!(
        o.status.success(),
        "backend={backend:?}: ferry get {url} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("JSON summary on stdout");
    assert_eq!(
        report["backend"],
        backend.flag(),
        "summary names the back-end that ran: {report}"
    );
    report
}

/// Every (back-end, sink) pair to test: io_uring with `direct`, `buffered` and `splice`, safe
/// mode with `buffered` (safe mode never uses O_DIRECT or splice).
pub fn modes_under_test() -> Vec<(Backend, &'static str)> {
    let mut modes = Vec::new();
    for backend in backends_under_test() {
        match backend {
            Backend::Uring => {
                modes.push((backend, "direct"));
                modes.push((backend, "buffered"));
                modes.push((backend, "splice"));
            }
            Backend::Portable => modes.push((backend, "buffered")),
        }
    }
    modes
}

/// [`get_ok`] with `--sink SINK`; checks the summary names that sink, or explains why not (a
/// filesystem without O_DIRECT gets the buffered sink, with the reason; over TLS the splice
/// sink writes from buffers, and says so).
pub fn get_ok_sink(
    (backend, sink): (Backend, &str),
    url: &str,
    out: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec!["--sink", sink];
    args.extend_from_slice(extra);
    let report = get_ok(backend, url, out, &args);
    if report["sink"] != sink {
        let reason = report["sink_reason"].as_str().unwrap_or("");
        assert!(
            (sink == "direct" && reason.contains("O_DIRECT unavailable"))
                || (sink == "direct"
                    && report["sink"] == "buffered"
                    && report["bytes"].as_u64().is_some_and(|n| n < 1 << 20)
                    && reason.contains("came whole in one answer"))
                || (sink == "splice"
                    && report["url_final"]
                        .as_str()
                        .unwrap_or(url)
                        .starts_with("https://")
                    && report["sink"] == "buffered"
                    && reason.contains("over TLS")),
            "backend={backend:?}: asked for sink {sink}, got {report}"
        );
        eprintln!("note: {sink} sink not used on {}: {reason}", out.display());
    }
    report
}

/// A summary's per-endpoint entries (a download or pull with mirrors), as (endpoint, bytes,
/// failures, demoted), in the summary's order.
pub fn endpoints_served(report: &serde_json::Value) -> Vec<(String, u64, u64, bool)> {
    report["endpoints"]
        .as_array()
        .expect("endpoints in the summary")
        .iter()
        .map(|e| {
            (
                e["endpoint"].as_str().expect("endpoint").to_owned(),
                e["bytes"].as_u64().expect("bytes"),
                e["failures"].as_u64().expect("failures"),
                e["demoted"].as_bool().expect("demoted"),
            )
        })
        .collect()
}

/// Asserts that `path` holds exactly the bytes of `source`.
pub fn assert_same_file(source: &Path, path: &Path, what: &str) {
    let (a, b) = (
        std::fs::metadata(source).expect("source"),
        std::fs::metadata(path),
    );
    let b = b.unwrap_or_else(|e| panic!("{what}: output {} missing: {e}", path.display()));
    assert_eq!(a.len(), b.len(), "{what}: size differs");
    assert_eq!(
        sha256_file(source),
        sha256_file(path),
        "{what}: content differs"
    );
}

/// The JSON report of a run that succeeded, checked to name `backend`.
pub fn success_report(o: &Output, backend: Backend, what: &str) -> serde_json::Value {
    assert!(
        o.status.success(),
        "{what}: ferry failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_eq!(r["backend"], backend.flag(), "{r}");
    r
}

/// A failure that ended cleanly: exit code `code`, no panic, one line on stderr starting with
/// `ferry: error: ` and mentioning `needle`.
pub fn assert_clean_failure(o: &Output, code: i32, needle: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: exit code; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{what}: panic: {stderr}"
    );
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr, got {lines:?}");
    assert!(lines[0].starts_with("ferry: error: "), "{what}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{what}: stderr should mention {needle:?}: {stderr}"
    );
}

/// Asserts that neither `path` nor `path.incomplete` exists.
pub fn assert_no_output(path: &Path, what: &str) {
    assert!(
        !path.exists(),
        "{what}: {} must not exist after a failure",
        path.display()
    );
    let mut inc = path.as_os_str().to_owned();
    inc.push(".incomplete");
    assert!(
        !Path::new(&inc).exists(),
        "{what}: partial file left behind"
    );
}

/// The most common origin of a download test: a fresh folder holding one file `f` of `size`
/// seeded bytes ([`write_data`] with `seed`), served by a fresh [`Nginx`] at `/files/f`. Returns
/// the folder (keep it alive as long as the server), the file (the source to compare with) and
/// the server; bind all three (`let (_src, file, nginx)`), so that the server stops first.
pub fn serve_one_file(size: u64, seed: u64) -> (tempfile::TempDir, PathBuf, Nginx) {
    let src = tempfile::tempdir().expect("tmp");
    let file = src.path().join("f");
    write_data(&file, size, seed);
    let nginx = Nginx::start(src.path());
    (src, file, nginx)
}

/// A child process killed (by its PID) and reaped when dropped, also when a test fails.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Whether a UDP socket is bound to local `port` (any address), per `/proc/net/udp{,6}`.
pub fn udp_bound(port: u16) -> bool {
    let hex = format!(":{port:04X} ");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|local| format!("{local} ").ends_with(&hex))
            })
    })
}

/// Stops a server the test kit started: SIGTERM, up to 5 s to exit, then SIGKILL; reaped.
pub(crate) fn stop_child(child: &mut std::process::Child) {
    use std::time::{Duration, Instant};
    // Our own child, not yet reaped (we hold `Child`), so the PID cannot name another process.
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
