//! Connecting with Happy Eyeballs (RFC 8305), on every back-end: `localhost` resolves to `::1`
//! and `127.0.0.1` (a private hosts file), and one of the two is closed (refused at once) or
//! silent (SYNs dropped); ferry reaches the other, and says in its log which attempt won and
//! what became of the other. Both closed: one clear error naming both addresses.

use std::net::SocketAddr;

use ferry_testkit::eyeballs::{Blackhole, ferry_dual_stack};
use ferry_testkit::{Fault, FaultProxy, assert_same_file, backends_under_test, serve_one_file};

/// `ferry -v get http://localhost:PORT/files/f ARGS` with both addresses for `localhost`;
/// returns its log after checking the file arrived whole.
fn get_dual_stack(
    backend: ferry_testkit::Backend,
    port: u16,
    source: &std::path::Path,
    args: &[&str],
) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let dest = dir.path().join("f");
    let url = format!("http://localhost:{port}/files/f");
    let mut all = vec!["-v", "get", &url, "-o", dest.to_str().expect("utf8")];
    all.extend_from_slice(args);
    let o = ferry_dual_stack(dir.path(), backend, &all);
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "backend={backend:?}: {log}");
    assert_same_file(source, &dest, &format!("backend={backend:?}"));
    log
}

#[test]
fn ipv6_refused_falls_to_ipv4_at_once() {
    // nginx on 127.0.0.1 only; nothing on [::1] at that port.
    let (_src, file, nginx) = serve_one_file(3 << 20, 81);
    for backend in backends_under_test() {
        let log = get_dual_stack(
            backend,
            nginx.port(),
            &file,
            &["-c", "4", "--chunk-size", "1M"],
        );
        let v6 = format!("[::1]:{}: Connection refused", nginx.port());
        assert!(
            log.contains(&format!("connected to 127.0.0.1:{}", nginx.port())) && log.contains(&v6),
            "backend={backend:?}: the log says [::1] refused and 127.0.0.1 won: {log}"
        );
        eprintln!("ran on backend {backend:?}: [::1] refused, 127.0.0.1 used");
    }
}

#[test]
fn ipv6_silent_does_not_hold_up_ipv4() {
    let (_src, file, nginx) = serve_one_file(3 << 20, 82);
    let port = nginx.port();
    // [::1] at nginx's port drops every SYN. Trying addresses one after the other would wait
    // the whole connect timeout (set to 10 minutes here) on it; racing, the IPv4 attempt starts
    // after 250 ms and wins while the IPv6 one has still had no answer.
    let hole = Blackhole::bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
        .expect("bind [::1] at nginx's port");
    for backend in backends_under_test() {
        let log = get_dual_stack(backend, port, &file, &["--connect-timeout", "600"]);
        let silent = format!("{}: no answer yet", hole.addr());
        assert!(
            log.contains(&format!("connected to 127.0.0.1:{port}")) && log.contains(&silent),
            "backend={backend:?}: the log says 127.0.0.1 won while [::1] was silent: {log}"
        );
        eprintln!("ran on backend {backend:?}: [::1] silent, 127.0.0.1 raced and used");
    }
}

#[test]
fn ipv4_closed_uses_ipv6() {
    let (_src, file, nginx) = serve_one_file(2 << 20, 83);
    // An IPv6-only front: [::1]:P forwards to nginx; 127.0.0.1:P is closed.
    let front = FaultProxy::start_on("[::1]:0", nginx.port(), Fault::None);
    for backend in backends_under_test() {
        let log = get_dual_stack(backend, front.port(), &file, &[]);
        assert!(
            !log.contains("happy eyeballs"),
            "backend={backend:?}: [::1] comes first and answers, nothing raced: {log}"
        );
        eprintln!("ran on backend {backend:?}: [::1] used");
    }
}

#[test]
fn both_closed_names_both() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = ferry_testkit::free_port();
    for backend in backends_under_test() {
        let dest = dir.path().join("f");
        let url = format!("http://localhost:{port}/files/f");
        let o = ferry_dual_stack(
            dir.path(),
            backend,
            &["get", &url, "-o", dest.to_str().expect("utf8")],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "backend={backend:?}: {stderr}");
        assert!(
            stderr.contains(&format!("[::1]:{port} or 127.0.0.1:{port}")),
            "backend={backend:?}: both addresses named: {stderr}"
        );
        ferry_testkit::assert_no_output(&dest, &format!("backend={backend:?}"));
        eprintln!("ran on backend {backend:?}: both refused, exit 3");
    }
}
