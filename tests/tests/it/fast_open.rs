//! TCP Fast Open (RFC 7413), on every back-end, against nginx with `fastopen=` on its listener.
//! `net.ipv4.tcp_fastopen` is per network namespace, so the test runs itself again inside a
//! namespace of its own (`unshare --net`, as root), sets the sysctl there and brings up its
//! loopback: the machine's setting is never touched.
//!
//! `ferry ping` measures three URLs one after the other in one process: the first connection
//! races (Happy Eyeballs) with a plain handshake, the second goes to the winner with Fast Open
//! and gets a cookie, the third sends its request in the SYN, which the kernel confirms
//! (`TCP_INFO`) and ferry logs. With the client side off, ferry does not try; with the server
//! side off, the handshakes are full and nothing is lost either way.

use std::process::Command;

use ferry_testkit::{Nginx, backends_under_test, ferry, write_data};

/// Set inside the namespace, where [`inside`] runs.
const INSIDE: &str = "FERRY_TEST_FAST_OPEN_NETNS";

#[test]
fn fast_open_sends_the_request_in_the_syn_where_the_sysctl_allows() {
    let exe = std::env::current_exe().expect("test binary");
    // This module's path in the test binary (`fast_open`, under the crate's name), so that only
    // [`inside`] runs there.
    let inside = module_path!()
        .split_once("::")
        .map_or("inside".to_owned(), |(_, module)| {
            format!("{module}::inside")
        });
    let o = Command::new("unshare")
        .arg("--net")
        .arg(&exe)
        .args(["--exact", &inside, "--ignored", "--nocapture"])
        .env(INSIDE, "1")
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("{stderr}");
    assert!(
        o.status.success() && stdout.contains("1 passed"),
        "the test inside a network namespace failed:\n{stdout}\n{stderr}"
    );
}

/// `ferry -vv ping URL URL URL --bytes 64K`: its log, after checking every ping answered.
fn ping_three(backend: ferry_testkit::Backend, url: &str, what: &str) -> String {
    let o = ferry(
        backend,
        &["-vv", "ping", url, url, url, "--bytes", "64K", "--json"],
    );
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{what}: {log}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    for e in v["endpoints"].as_array().expect("endpoints") {
        assert_eq!(e["bytes"], 64 << 10, "{what}: {e}");
    }
    log
}

fn set_fast_open(value: u32) {
    std::fs::write("/proc/sys/net/ipv4/tcp_fastopen", value.to_string())
        .expect("set net.ipv4.tcp_fastopen in the test's namespace");
}

#[test]
#[ignore = "runs inside the network namespace the test above makes"]
fn inside() {
    assert_eq!(
        std::env::var(INSIDE).as_deref(),
        Ok("1"),
        "only inside the namespace: it changes net.ipv4.tcp_fastopen"
    );
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip (iproute2)");
    assert!(up.success(), "bring up loopback in the namespace");
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 1 << 20, 95);
    let nginx = Nginx::start_fast_open(src.path());
    let url = nginx.url("files", "f");
    let in_syn = "TCP Fast Open: the request went in the SYN";
    for backend in backends_under_test() {
        // Clients off: ferry does not set the option (the kernel would refuse it anyway).
        set_fast_open(0);
        let what = format!("backend={backend:?} tcp_fastopen=0");
        let log = ping_three(backend, &url, &what);
        assert!(
            log.contains("TCP Fast Open for repeat connections: off") && !log.contains(in_syn),
            "{what}: {log}"
        );
        // Clients on, servers off: nginx grants no cookie, so every handshake is full.
        set_fast_open(1);
        let what = format!("backend={backend:?} tcp_fastopen=1");
        let log = ping_three(backend, &url, &what);
        assert!(
            log.contains("TCP Fast Open for repeat connections: on")
                && log.contains("TCP Fast Open: full handshake")
                && !log.contains(in_syn),
            "{what}: {log}"
        );
        // Both on: from the third connection (the second got the cookie), data in the SYN.
        set_fast_open(3);
        let what = format!("backend={backend:?} tcp_fastopen=3");
        let log = ping_three(backend, &url, &what);
        assert!(log.contains(in_syn), "{what}: {log}");
        eprintln!("ran on backend {backend:?}: the request went in the SYN");
    }
}
