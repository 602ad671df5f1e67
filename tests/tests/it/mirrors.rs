//! Mirrors (`--mirror`), on every back-end: ranges spread over the URL and its mirror and the
//! summary counts each one's bytes; a dead endpoint, one without the file, one that cuts its
//! bodies short and one that stalls hand their ranges to the other; a far slower one is demoted
//! by its measured throughput. Every file is checked byte for byte (and by its sha256).

use ferry_testkit::endpoints_served;
use ferry_testkit::{
    Fault, FaultProxy, Nginx, assert_same_file, backends_under_test, get_ok, get_ok_sink,
    modes_under_test, sha256_file, write_data,
};
use serde_json::Value;

/// A data file in a fresh root, and its sha256.
fn data(size: u64, seed: u64) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let src = tempfile::tempdir().expect("tmp");
    let file = src.path().join("f");
    write_data(&file, size, seed);
    let sha = sha256_file(&file);
    (src, file, sha)
}

/// `--mirror MIRROR -c 4 --chunk-size 1M --sha256 SHA EXTRA...`.
fn mirror_args<'a>(mirror: &'a str, sha: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--mirror",
        mirror,
        "-c",
        "4",
        "--chunk-size",
        "1M",
        "--sha256",
        sha,
    ];
    args.extend_from_slice(extra);
    args
}

fn origin(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

#[test]
fn ranges_spread_over_the_url_and_its_mirror() {
    const SIZE: u64 = 12 << 20;
    let (src, file, sha) = data(SIZE, 101);
    // Two origins with the same bytes, each 16 MB/s per connection: every lane is busy long
    // enough for all four to take ranges.
    let nginx = Nginx::start(src.path());
    let slow = Fault::Throttle {
        bytes_per_sec: 16 << 20,
    };
    let (a, b) = (
        FaultProxy::start(nginx.port(), slow),
        FaultProxy::start(nginx.port(), slow),
    );
    let url = |p: &FaultProxy| format!("http://127.0.0.1:{}/files/f", p.port());
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let mirror = url(&b);
        let report = get_ok_sink(mode, &url(&a), &dest, &mirror_args(&mirror, &sha, &[]));
        assert_same_file(&file, &dest, &format!("{mode:?}"));
        let e = endpoints_served(&report);
        assert_eq!(e.len(), 2, "{mode:?}: {report}");
        assert_eq!(
            (e[0].0.clone(), e[1].0.clone()),
            (origin(a.port()), origin(b.port()))
        );
        assert!(e[0].1 > 0 && e[1].1 > 0, "{mode:?}: both served: {e:?}");
        assert_eq!(
            e[0].1 + e[1].1,
            SIZE,
            "{mode:?}: every byte from one of them: {e:?}"
        );
        eprintln!("ran on {mode:?}: served by {e:?}");
    }
}

#[test]
fn a_dead_url_or_one_without_the_file_hands_over_to_the_mirror() {
    const SIZE: u64 = 3 << 20;
    let (src, file, sha) = data(SIZE, 102);
    let nginx = Nginx::start(src.path());
    let dead = ferry_testkit::free_port();
    let cases = [
        (format!("http://127.0.0.1:{dead}/files/f"), "refused"),
        (nginx.url("files", "missing"), "404"),
    ];
    for backend in backends_under_test() {
        for (url, what) in &cases {
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let mirror = nginx.url("files", "f");
            // One connection: its lane asks the URL first (lanes are spread over the
            // endpoints by number, and lane 0 takes the first), so the dead or missing URL is
            // tried before the mirror on every run. With more lanes, those on the mirror may
            // finish the file before any other lane has asked the URL.
            let args = [
                "--mirror",
                &mirror,
                "-c",
                "1",
                "--chunk-size",
                "1M",
                "--sha256",
                &sha,
            ];
            let report = get_ok(backend, url, &dest, &args);
            assert_same_file(&file, &dest, &format!("backend={backend:?} {what}"));
            let e = endpoints_served(&report);
            assert_eq!(e[0].1, 0, "backend={backend:?} {what}: {e:?}");
            // A dead endpoint is put aside (a failure counted); one without the file is fine
            // for other files: no failure.
            let failed = e[0].2 > 0;
            assert_eq!(
                failed,
                *what == "refused",
                "backend={backend:?} {what}: {e:?}"
            );
            assert_eq!(e[1].1, SIZE, "backend={backend:?} {what}: {e:?}");
            eprintln!("ran on backend {backend:?}: first URL {what}, all from the mirror");
        }
    }
}

#[test]
fn a_mirror_that_cuts_or_stalls_its_bodies_hands_its_ranges_back() {
    const SIZE: u64 = 8 << 20;
    let (src, file, sha) = data(SIZE, 103);
    let nginx = Nginx::start(src.path());
    // The URL's origin sends 8 MB/s per connection: one lane alone needs a second for the
    // file, so the mirror's lanes have long joined and asked it for ranges (at loopback speed
    // the URL's first lane could finish all 8 MiB before they did, and the mirror would never
    // be asked).
    let front = FaultProxy::start(
        nginx.port(),
        Fault::Throttle {
            bytes_per_sec: 8 << 20,
        },
    );
    let url = format!("http://127.0.0.1:{}/files/f", front.port());
    for backend in backends_under_test() {
        let faults = [
            (Fault::TruncateAll { keep: 64 << 10 }, "cut short"),
            (
                Fault::Stall {
                    nth: 0,
                    keep: 100 << 10,
                },
                "stalled",
            ),
        ];
        for (fault, what) in faults {
            let mirror = FaultProxy::start(nginx.port(), fault);
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let mirror_url = format!("http://127.0.0.1:{}/files/f", mirror.port());
            let args = mirror_args(&mirror_url, &sha, &["--read-timeout", "1"]);
            let report = get_ok(backend, &url, &dest, &args);
            assert_same_file(&file, &dest, &format!("backend={backend:?} {what}"));
            let e = endpoints_served(&report);
            assert!(
                e[1].2 >= 1,
                "backend={backend:?} {what}: the mirror failed: {e:?}"
            );
            assert_eq!(e[0].1 + e[1].1, SIZE, "backend={backend:?} {what}: {e:?}");
            eprintln!("ran on backend {backend:?}: mirror {what}, served by {e:?}");
        }
    }
}

#[test]
fn a_far_slower_mirror_is_demoted() {
    const SIZE: u64 = 64 << 20;
    let (src, file, sha) = data(SIZE, 104);
    let nginx = Nginx::start(src.path());
    // The mirror sends 4 MB/s per connection; the URL's own origin, loopback speed.
    let front = FaultProxy::start(
        nginx.port(),
        Fault::Throttle {
            bytes_per_sec: 4 << 20,
        },
    );
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let mirror = format!("http://127.0.0.1:{}/files/f", front.port());
        let url = nginx.url("files", "f");
        let mut args = vec!["get", &url, "-o", dest.to_str().expect("utf8"), "--json"];
        args.extend(mirror_args(&mirror, &sha, &[]));
        let o = ferry_testkit::ferry(backend, &args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "backend={backend:?}: {stderr}");
        assert_same_file(&file, &dest, &format!("backend={backend:?}"));
        let report: Value = serde_json::from_slice(&o.stdout).expect("JSON");
        let e = endpoints_served(&report);
        assert!(
            e[1].3,
            "backend={backend:?}: the slow mirror is demoted: {e:?}"
        );
        assert!(
            e[1].1 < e[0].1,
            "backend={backend:?}: it served less: {e:?}"
        );
        assert!(
            stderr.contains(&format!("{} demoted", origin(front.port()))),
            "backend={backend:?}: said once: {stderr}"
        );
        eprintln!("ran on backend {backend:?}: slow mirror demoted, served by {e:?}");
    }
}
