//! Connections by measurement, through the user-space WAN relay in front of nginx: where each
//! flow is capped, a job opens more connections up to `-c`; where the link is full, it goes
//! back to the 16 it started with; an edge that refuses connections beyond 16 costs no retry.
//! Every file comes out byte-identical and verified, on both back-ends.

use std::time::Duration;

use ferry_testkit::relay::{Relay, WanPath};
use ferry_testkit::{Nginx, backends_under_test, get_ok, record, sha256_file, write_data};

/// Enough bytes that at 16 flows of 2 MB/s a step of growth has time to be measured twice.
const SIZE: u64 = 128 << 20;

/// nginx with one file of [`SIZE`] behind a relay emulating `path`; downloads it with `-c`
/// `cap` on each back-end and returns the reports (the relay alongside, for its counters).
fn fetch_through(
    path: WanPath,
    cap: &str,
    setup: impl Fn(&Relay),
    check: impl Fn(
        &serde_json::Value,
        &Relay,
        ferry_testkit::Backend,
        &std::path::Path,
        &std::path::Path,
    ),
) {
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("big"), SIZE, 77);
    let sha = sha256_file(&src.path().join("big"));
    let nginx = Nginx::start(src.path());
    let upstream = format!("127.0.0.1:{}", nginx.port()).parse().expect("addr");
    for backend in backends_under_test() {
        let relay = Relay::start(upstream, path).expect("relay");
        setup(&relay);
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("big");
        let url = format!("http://127.0.0.1:{}/files/big", relay.addr().port());
        let report = get_ok(backend, &url, &dest, &["-c", cap, "--sha256", &sha]);
        assert_eq!(report["verified"]["digest"], sha.as_str(), "{report}");
        eprintln!(
            "backend={backend:?} path={}: {} connections used, {} open at the end, {} accepted, \
             {} refused",
            path.label(),
            report["connections"],
            report["connections_open"],
            relay.connections(),
            relay.refused()
        );
        check(&report, &relay, backend, &src.path().join("big"), &dest);
    }
}

fn capped(flow: u64, link: Option<u64>) -> WanPath {
    WanPath {
        rtt: Duration::from_millis(20),
        flow_rate: Some(flow),
        link_rate: link,
    }
}

#[test]
fn capped_flows_make_the_job_open_more_connections() {
    // 16 flows of 2 MB/s: 24 fetch 50 % more, so the job settles on the cap.
    fetch_through(
        capped(2_000_000, None),
        "24",
        |_| {},
        |report, relay, backend, src, dest| {
            assert_eq!(
                report["connections_open"], 24,
                "backend={backend:?}: {report}"
            );
            assert!(relay.connections() >= 24, "{}", relay.connections());
            ferry_testkit::assert_same_file(src, dest, &format!("backend={backend:?} grown"));
        },
    );
}

#[test]
fn a_full_link_keeps_the_connections_it_started_with() {
    // Flows of 2 MB/s on a 24 MB/s link: 16 fill it, 24 bring nothing. The job tries, and goes
    // back.
    fetch_through(
        capped(2_000_000, Some(24_000_000)),
        "24",
        |_| {},
        |report, relay, backend, src, dest| {
            assert_eq!(
                report["connections_open"], 16,
                "backend={backend:?}: {report}"
            );
            assert!(
                relay.connections() > 16,
                "backend={backend:?}: the job never tried a step: {} connections",
                relay.connections()
            );
            ferry_testkit::assert_same_file(src, dest, &format!("backend={backend:?} full link"));
        },
    );
}

#[test]
fn an_edge_that_refuses_a_seventeenth_connection_costs_nothing() {
    // Flows capped, so growth is tried; the edge answers 503 to any connection beyond 16 open.
    fetch_through(
        capped(2_000_000, None),
        "24",
        |relay| relay.refuse_beyond(16),
        |report, relay, backend, src, dest| {
            assert!(
                relay.refused() > 0,
                "backend={backend:?}: no step was tried"
            );
            assert_eq!(
                report["connections_open"], 16,
                "backend={backend:?}: {report}"
            );
            assert_eq!(report["retries"], 0, "backend={backend:?}: {report}");
            record::recovered(
                "an edge refuses connections beyond 16 (503)",
                "growth::an_edge_that_refuses_a_seventeenth_connection_costs_nothing",
                backend,
                src,
                dest,
            );
        },
    );
}

#[test]
fn sixteen_or_fewer_is_a_fixed_count() {
    // Capped flows would pay, but `-c 16` is a bound the job keeps.
    fetch_through(
        capped(8_000_000, None),
        "16",
        |_| {},
        |report, relay, backend, src, dest| {
            assert_eq!(
                report["connections_open"], 16,
                "backend={backend:?}: {report}"
            );
            assert!(relay.connections() <= 16, "{}", relay.connections());
            ferry_testkit::assert_same_file(src, dest, &format!("backend={backend:?} -c 16"));
        },
    );
}
