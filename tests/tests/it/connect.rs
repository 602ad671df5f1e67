//! Connecting with Happy Eyeballs (RFC 8305), on every back-end: `localhost` resolves to `::1`
//! and `127.0.0.1` (a private hosts file), and one of the two is closed (refused at once) or
//! silent (SYNs dropped); ferry reaches the other, and says in its log which attempt won and
//! what became of the other. Both closed: one clear error naming both addresses. A name with
//! several addresses of one family gets its connections spread over those that answer.

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

/// A TCP forwarder on `ip:port` to `upstream`, counting the connections it accepted; stopped
/// (its listener closed) when dropped.
struct Forwarder {
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    addr: SocketAddr,
}

impl Forwarder {
    fn start(addr: SocketAddr, upstream: SocketAddr) -> std::io::Result<Forwarder> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind(addr)?;
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (count, stopped) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(down) = conn else { continue };
                count.fetch_add(1, Ordering::Relaxed);
                let Ok(up) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        down.try_clone().expect("clone"),
                        up.try_clone().expect("clone"),
                    ),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Ok(Forwarder {
            accepted,
            stop,
            addr,
        })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accept loop, which then sees `stop`.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// A name with three IPv4 addresses (a CDN's several A records): once one answered, ferry's
/// connections are spread over all three; a fourth address where nothing listens is left out
/// after it failed once, and the file arrives whole. On both back-ends.
#[test]
fn connections_spread_over_a_names_addresses() {
    let (_src, source, nginx) = serve_one_file(3 << 20, 31);
    let upstream: SocketAddr = format!("127.0.0.1:{}", nginx.port()).parse().expect("addr");
    // One port free on 127.0.0.1..3 (tried again when another took it meanwhile).
    let forwarders = (0..20)
        .find_map(|_| {
            let port = ferry_testkit::free_port();
            (1..=3)
                .map(|i| {
                    Forwarder::start(format!("127.0.0.{i}:{port}").parse().ok()?, upstream).ok()
                })
                .collect::<Option<Vec<_>>>()
                .map(|f| (port, f))
        })
        .expect("a port free on three loopback addresses");
    let (port, forwarders) = forwarders;
    let hosts = "127.0.0.1 spread.test\n127.0.0.4 spread.test\n127.0.0.2 spread.test\n\
                 127.0.0.3 spread.test\n";
    for backend in backends_under_test() {
        let before: Vec<usize> = forwarders.iter().map(Forwarder::accepted).collect();
        let dir = tempfile::tempdir().expect("tmp");
        let dest = dir.path().join("f");
        let url = format!("http://spread.test:{port}/files/f");
        let args = [
            "-v",
            "get",
            &url,
            "-o",
            dest.to_str().expect("utf8"),
            "-c",
            "8",
            "--chunk-size",
            "256K",
        ];
        let o = ferry_testkit::eyeballs::ferry_with_hosts(dir.path(), hosts, backend, &args);
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "backend={backend:?}: {log}");
        assert_same_file(&source, &dest, "spread");
        let got: Vec<usize> = forwarders
            .iter()
            .zip(&before)
            .map(|(f, b)| f.accepted() - b)
            .collect();
        assert!(
            got.iter().all(|&n| n >= 1),
            "backend={backend:?}: connections per address {got:?}: {log}"
        );
        eprintln!("ran on backend {backend:?}: connections per address {got:?}");
    }
}
