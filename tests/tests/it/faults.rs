//! Faults from the fault-injecting proxy between ferry and a real nginx, on every back-end: a
//! connection reset mid-body, bursts of 500 / 503 / 429 with `Retry-After`, a `200` with the
//! whole file where a `206` was asked for, a `206` for another range (a wrong `Content-Range`),
//! a response that dribbles out a few bytes at a time, and a gigantic response head. ferry either ends with the file byte for byte (and its
//! sha256), or fails with one clear line and leaves nothing behind.
//!
//! Other suites cover the rest: truncated bodies (`errors.rs`),
//! stalls (`retries.rs`, `mirrors.rs`), corrupted bytes (`errors.rs`: a sha256 mismatch over
//! plain HTTP; `https.rs`: a TLS record that fails to authenticate).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_testkit::record;
use ferry_testkit::{
    Fault, FaultProxy, Nginx, assert_clean_failure, assert_no_output, backends_under_test, ferry,
    get_ok, sha256_file, write_data,
};

const SIZE: u64 = 3 << 20;

/// nginx serving one seeded file `f`, and its sha256.
fn origin(seed: u64) -> (tempfile::TempDir, Nginx, String) {
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), SIZE, seed);
    let sha = sha256_file(&src.path().join("f"));
    let nginx = Nginx::start(src.path());
    (src, nginx, sha)
}

fn url(proxy: &FaultProxy) -> String {
    format!("http://127.0.0.1:{}/files/f", proxy.port())
}

/// `ferry get` through a fresh proxy with `fault`, on every back-end: each must end with the
/// whole file; `check` then sees the proxy, the report and the time taken.
fn survives(
    (nginx, test): (&Nginx, &str),
    src: &tempfile::TempDir,
    sha: &str,
    fault: Fault,
    check: impl Fn(&FaultProxy, &serde_json::Value, Duration, &str),
) {
    for backend in backends_under_test() {
        let proxy = FaultProxy::start(nginx.port(), fault);
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let args = ["-c", "2", "--chunk-size", "1M", "--sha256", sha];
        let t0 = Instant::now();
        let report = get_ok(backend, &url(&proxy), &dest, &args);
        let took = t0.elapsed();
        let what = format!("backend={backend:?} {fault:?}");
        let test = format!("faults::{test}");
        record::recovered(
            &fault.describe(),
            &test,
            backend,
            &src.path().join("f"),
            &dest,
        );
        assert_eq!(report["backend"], backend.flag(), "{report}");
        check(&proxy, &report, took, &what);
        eprintln!(
            "ran on backend {backend:?}: {fault:?}: whole file in {took:?}, {} retries, {} fetches",
            report["retries"], report["fetches"]
        );
    }
}

/// A [`survives`] check: the damaged range was asked again.
fn retried(_: &FaultProxy, report: &serde_json::Value, _: Duration, what: &str) {
    assert!(
        report["retries"].as_u64() >= Some(1),
        "{what}: the damaged range was asked again: {report}"
    );
}

const RESET: &str = "a_connection_reset_mid_body_is_fetched_again";

#[test]
fn a_connection_reset_mid_body_is_fetched_again() {
    let (src, nginx, sha) = origin(601);
    // The first answer (the size probe), then a later range.
    for nth in [0, 2] {
        let fault = Fault::Reset {
            nth,
            keep: 100 << 10,
        };
        survives((&nginx, RESET), &src, &sha, fault, retried);
    }
}

#[test]
fn bursts_of_500_503_and_429_are_waited_out_as_retry_after_says() {
    let (src, nginx, sha) = origin(602);
    for status in [500, 503, 429] {
        // The first two requests for the file fail; each says to come back in 1 s.
        let fault = Fault::Refuse {
            uri_contains: "/files/f",
            times: 2,
            status,
            retry_after: 1,
        };
        let test = "bursts_of_500_503_and_429_are_waited_out_as_retry_after_says";
        survives((&nginx, test), &src, &sha, fault, |proxy, _, took, what| {
            assert!(
                proxy.refused.load(Ordering::SeqCst) >= 2,
                "{what}: both refusals were met"
            );
            // Both refusals were of the first request (nothing else is asked before its
            // answer), so honouring Retry-After takes at least 2 s. A lower bound: no timing
            // assumption about this machine.
            assert!(
                took >= Duration::from_secs(2),
                "{what}: Retry-After not honoured: done in {took:?}"
            );
        });
    }
}

#[test]
fn a_200_with_the_whole_file_where_a_206_was_asked_still_gives_the_file() {
    let (src, nginx, sha) = origin(603);
    let test = "a_200_with_the_whole_file_where_a_206_was_asked_still_gives_the_file";
    // The first request: a 200 there makes one stream of the file.
    survives(
        (&nginx, test),
        &src,
        &sha,
        Fault::IgnoreRange { nth: 0 },
        |_, _, _, _| {},
    );
    // A later range: a 200 there, with the whole file, cannot be used as that range.
    let fault = Fault::IgnoreRange { nth: 2 };
    survives((&nginx, test), &src, &sha, fault, retried);
}

#[test]
fn a_wrong_content_range_is_asked_again() {
    let (src, nginx, sha) = origin(606);
    let test = "a_wrong_content_range_is_asked_again";
    // Response 0 is the first range (the size probe); 2 is a later range on some connection.
    // Its bytes are not used; the range is asked again.
    for nth in [0, 2] {
        let fault = Fault::ShiftContentRange { nth };
        survives((&nginx, test), &src, &sha, fault, retried);
    }
}

#[test]
fn a_response_that_dribbles_out_still_gives_the_file() {
    let (src, nginx, sha) = origin(604);
    for nth in [0, 1] {
        let test = "a_response_that_dribbles_out_still_gives_the_file";
        survives(
            (&nginx, test),
            &src,
            &sha,
            Fault::Drip { nth },
            |_, _, _, _| {},
        );
    }
}

#[test]
fn a_gigantic_response_head_fails_clearly_and_leaves_nothing() {
    let (_src, nginx, sha) = origin(605);
    for backend in backends_under_test() {
        // 16 MiB of headers: the parser stops at its 64 KiB limit, whatever comes after.
        for nth in [0, 2] {
            let fault = Fault::HugeHead {
                nth,
                bytes: 16 << 20,
            };
            let proxy = FaultProxy::start(nginx.port(), fault);
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let o = ferry(
                backend,
                &[
                    "get",
                    &url(&proxy),
                    "-o",
                    dest.to_str().expect("utf-8"),
                    "-c",
                    "2",
                    "--chunk-size",
                    "1M",
                    "--sha256",
                    &sha,
                ],
            );
            let what = format!("backend={backend:?} huge head on response {nth}");
            record::failed_cleanly(
                &fault.describe(),
                "faults::a_gigantic_response_head_fails_clearly_and_leaves_nothing",
                backend,
                "failed cleanly: one line, exit 3, nothing left",
                &dest,
            );
            assert_clean_failure(&o, 3, "response head larger than 65536 bytes", &what);
            assert_no_output(&dest, &what);
            eprintln!("ran on backend {backend:?}: {what}: one clear line, nothing left");
        }
    }
}
