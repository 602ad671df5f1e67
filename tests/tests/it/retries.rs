//! The retry table in the data plane, on every back-end: 503s with `Retry-After` on the first
//! request and on later ranges are asked again (and counted in the summary), a 404 is not, and
//! the stall watchdog drops a range that stops delivering and fetches it again elsewhere.

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
            &["--chunk-size", "1M", "-c", "2", "--read-timeout", "1"],
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
