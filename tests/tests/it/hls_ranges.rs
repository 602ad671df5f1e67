//! Byte-range streams (`EXT-X-BYTERANGE`, one file cut into segments): each segment's range is
//! fetched on its own, so nothing outside a segment is asked for, and a run killed with
//! `kill -9` resumes segment by segment; a file whose server answers a range with all of it is
//! fetched whole instead, with the same bytes (on every back-end).

use ferry_testkit::hls;
use ferry_testkit::hostile::{HostileOrigin, answer, request_path};
use ferry_testkit::{Nginx, backends_under_test, ferry_command};

use super::hls::{assert_bytes, get, report, work_dir};

/// The byte ranges of `single/index.m3u8`: (offset, length) of each segment.
fn ranges() -> Vec<(u64, u64)> {
    let s = hls::streams();
    let mut at = 0;
    (0..6)
        .map(|i| {
            let len = std::fs::metadata(s.root.join(format!("vod/seg_{i:03}.ts")))
                .expect("segment")
                .len();
            at += len;
            (at - len, len)
        })
        .collect()
}

#[test]
fn each_byte_range_is_asked_for_alone_and_a_killed_run_resumes_by_segment() {
    let s = hls::streams();
    let nginx = Nginx::start(&s.root);
    let url = nginx.url("files", "single/index.m3u8");
    let want: Vec<String> = ranges()
        .iter()
        .map(|(o, l)| format!("bytes={o}-{}", o + l - 1))
        .collect();
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("r.ts");
        let before = nginx.requests(0).len();
        // Over one connection the ranges go in playlist order (the order of need), though
        // their sizes are known and differ.
        let r = report(
            &get(backend, &url, &dest, &["-c", "1"]),
            backend,
            "byte ranges",
        );
        assert_bytes(&dest, &s.plain_ts(), "byte ranges");
        assert_eq!(r["resources"], 6, "one resource per range: {r}");
        let asked: Vec<String> = nginx.requests(before + 7)[before..]
            .iter()
            .filter(|q| q.uri.ends_with("all.ts"))
            .map(|q| q.range.clone())
            .collect();
        assert_eq!(
            asked, want,
            "each segment's bytes asked once, in order, nothing else"
        );

        // Killed once a segment is written: the next run keeps it and asks only for the rest.
        let dest = out.path().join("k.ts");
        let mut child = ferry_command(backend)
            // One connection: the ranges land one after another, the first long before the end.
            .args(["--limit-rate", "8K", "get", &url, "-c", "1", "-o"])
            .arg(&dest)
            .arg("--quiet")
            .spawn()
            .expect("start ferry");
        let work = work_dir(&dest);
        while !work.join("state").exists() {
            if child.try_wait().expect("wait").is_some() {
                panic!("ferry ended before a segment was in");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let r = report(&get(backend, &url, &dest, &[]), backend, "after kill -9");
        assert_bytes(&dest, &s.plain_ts(), "after kill -9");
        assert!(r["kept"].as_u64() >= Some(1), "{r}");
        assert!(
            r["fetched_bytes"].as_u64() < Some(s.plain_ts().len() as u64),
            "not everything fetched again: {r}"
        );
        eprintln!("ran on backend {backend:?}: byte ranges asked alone, resumed by segment");
    }
}

#[test]
fn a_server_that_ignores_ranges_has_the_whole_file_fetched_instead() {
    let s = hls::streams();
    let all = std::fs::read(s.root.join("single/all.ts")).expect("all.ts");
    let playlist = std::fs::read(s.root.join("single/index.m3u8")).expect("playlist");
    // Every answer is a 200 with the whole file, whatever Range asked.
    let origin = HostileOrigin::start(move |head| match request_path(head) {
        "/index.m3u8" => answer("200 OK", &[], &playlist),
        "/all.ts" => answer("200 OK", &[], &all),
        _ => answer("404 Not Found", &[], b""),
    });
    let url = format!("{}/index.m3u8", origin.url());
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("w.ts");
        let before = origin.requests().len();
        let o = get(backend, &url, &dest, &[]);
        let r = report(&o, backend, "ranges ignored");
        assert_bytes(&dest, &s.plain_ts(), "ranges ignored");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("does not serve byte ranges"), "{stderr}");
        assert_eq!(r["resources"], 1, "the file, fetched whole: {r}");
        // Six ranges refused (each a 200), then the file once; no retry loop.
        let asked = origin.requests()[before..]
            .iter()
            .filter(|q| request_path(q) == "/all.ts")
            .count();
        assert!((7..=14).contains(&asked), "{asked} requests for the file");
        eprintln!("ran on backend {backend:?}: ranges ignored, fetched whole");
    }
}
