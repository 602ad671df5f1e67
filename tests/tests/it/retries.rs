//! The retry table in the data plane, on every back-end: 503s with `Retry-After` on the first
//! request and on later ranges are asked again (and counted in the summary), a 404 is not, and
//! the stall watchdog drops a range that stops delivering and fetches it again elsewhere, and a
//! flow that stalls while the others move has its rest fetched on a new connection long
//! before the watchdog.

use ferry_testkit::record;
use ferry_testkit::{
    Fault, FaultProxy, Nginx, assert_no_output, backends_under_test, ferry, get_ok, get_ok_sink,
    modes_under_test, serve_one_file,
};

#[test]
fn unavailable_answers_are_asked_again_and_counted() {
    let (_src, file, nginx) = serve_one_file(3 << 20, 70);
    for backend in backends_under_test() {
        // 3 refusals: the first request, then later ranges on any connection.
        let fault = Fault::Refuse {
            uri_contains: "/files/f",
            times: 3,
            status: 503,
            retry_after: 0,
        };
        let proxy = FaultProxy::start(nginx.port(), fault);
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let url = format!("http://127.0.0.1:{}/files/f", proxy.port());
        let report = get_ok(backend, &url, &dest, &["--chunk-size", "1M", "-c", "2"]);
        record::recovered(
            &fault.describe(),
            "retries::unavailable_answers_are_asked_again_and_counted",
            backend,
            &file,
            &dest,
        );
        let refused = proxy.refused.load(std::sync::atomic::Ordering::SeqCst);
        assert!(refused >= 3, "backend={backend:?}: {refused} refusals");
        assert!(
            report["retries"].as_u64().unwrap_or(0) >= 3,
            "backend={backend:?}: every 503 is a retry in the summary: {report}"
        );
        eprintln!(
            "ran on backend {backend:?}: 3 x 503, retries {}",
            report["retries"]
        );
    }
}

#[test]
fn a_404_fails_at_once() {
    let src = tempfile::tempdir().expect("tmp");
    let nginx = Nginx::start(src.path());
    for (i, backend) in backends_under_test().into_iter().enumerate() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("x");
        let url = nginx.url("files", "missing");
        let o = ferry(
            backend,
            &["-v", "get", &url, "-o", dest.to_str().expect("utf8")],
        );
        assert_eq!(o.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !stderr.contains("asking again") && stderr.contains("404"),
            "{stderr}"
        );
        assert_eq!(nginx.requests(i + 1).len(), i + 1, "asked once");
        assert_no_output(&dest, "404");
        eprintln!("ran on backend {backend:?}: 404 not retried");
    }
}

#[test]
fn a_stalled_range_is_dropped_and_fetched_again() {
    let (_src, file, nginx) = serve_one_file(4 << 20, 71);
    // Every sink: the splice sink reads the socket through `splice`, not `read`, and needs
    // the watchdog as much.
    for mode in modes_under_test() {
        let (backend, sink) = mode;
        // Response 1 (a later range) sends 100 KiB and then nothing, keeping its connection open.
        let fault = Fault::Stall {
            nth: 1,
            keep: 100 << 10,
        };
        let proxy = FaultProxy::start(nginx.port(), fault);
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let url = format!("http://127.0.0.1:{}/files/f", proxy.port());
        let report = get_ok_sink(
            mode,
            &url,
            &dest,
            // One connection: no other moves, so the watchdog, not a hedge, ends the stall.
            &["--chunk-size", "1M", "-c", "1", "--read-timeout", "1"],
        );
        let what = format!("backend={backend:?} sink={sink}");
        record::recovered(
            &format!("{} ({sink} sink)", fault.describe()),
            "retries::a_stalled_range_is_dropped_and_fetched_again",
            backend,
            &file,
            &dest,
        );
        assert!(
            report["retries"].as_u64().unwrap_or(0) >= 1,
            "{what}: the stalled range was fetched again: {report}"
        );
        eprintln!("ran on backend {backend:?}, sink {sink}: stalled range re-fetched: {report}");
    }
}

#[test]
fn a_stalled_flow_goes_to_a_new_connection_before_the_watchdog() {
    let (_src, file, nginx) = serve_one_file(24 << 20, 72);
    for mode in modes_under_test() {
        let (backend, sink) = mode;
        // Response 2 (a later range) sends 100 KiB, then nothing for a minute.
        let fault = Fault::Stall {
            nth: 2,
            keep: 100 << 10,
        };
        let what = format!("backend={backend:?} sink={sink}");
        // With other connections moving, the stalled flow is hedged: its rest goes to a new
        // connection after a second or so, not after the watchdog's two minutes (had the hedge
        // not fired, the proxy's minute would end the stall and the count below would be 0).
        let proxy = FaultProxy::start(nginx.port(), fault);
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let url = format!("http://127.0.0.1:{}/files/f", proxy.port());
        let report = get_ok_sink(
            mode,
            &url,
            &dest,
            &["--chunk-size", "1M", "-c", "4", "--read-timeout", "120"],
        );
        record::recovered(
            &format!("{}, other flows moving ({sink} sink)", fault.describe()),
            "retries::a_stalled_flow_goes_to_a_new_connection_before_the_watchdog",
            backend,
            &file,
            &dest,
        );
        assert!(
            report["hedged"].as_u64().unwrap_or(0) >= 1,
            "{what}: the stalled flow was hedged: {report}"
        );
        assert_eq!(
            report["retries"], 0,
            "{what}: a hedge uses no retry: {report}"
        );
        // One connection: nothing else moves, so nothing is hedged (the server, not the flow,
        // may be what stalls); the watchdog ends the read and the range is retried.
        let proxy = FaultProxy::start(nginx.port(), fault);
        let dest = out.path().join("g");
        let url = format!("http://127.0.0.1:{}/files/f", proxy.port());
        let report = get_ok_sink(
            mode,
            &url,
            &dest,
            &["--chunk-size", "1M", "-c", "1", "--read-timeout", "3"],
        );
        assert_eq!(report["hedged"], 0, "{what}: one connection: {report}");
        assert!(
            report["retries"].as_u64().unwrap_or(0) >= 1,
            "{what}: the watchdog's retry: {report}"
        );
        eprintln!("ran on backend {backend:?}, sink {sink}: stalled flow hedged: {report}");
    }
}
