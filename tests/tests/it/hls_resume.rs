//! A large segment in flight when a run stops is taken up where it stopped: the resume journal
//! in the work folder names its written ranges and the `ETag` they came with
//! (`download/validator.rs`), the next run asks only for the rest with `If-Range`, and nginx's
//! access log shows it. A segment that changed between the runs (another `ETag`) is fetched
//! whole again, and the output is the new bytes. On every back-end.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testkit::data::seeded;
use ferry_testkit::{Nginx, backends_under_test, ferry_command};

use super::hls::{assert_bytes, get, report, work_dir};

const SEGMENT: usize = 6 << 20;

/// A VOD stream of two large segments (no byte ranges) under `root/big/`.
fn write_stream(root: &Path, seed: u64) -> Vec<u8> {
    let dir = root.join("big");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut all = Vec::new();
    for i in 0..2u64 {
        let bytes = seeded(SEGMENT, seed + i);
        std::fs::write(dir.join(format!("s{i}.ts")), &bytes).expect("segment");
        all.extend_from_slice(&bytes);
    }
    std::fs::write(
        dir.join("index.m3u8"),
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n\
         #EXTINF:10,\ns0.ts\n#EXTINF:10,\ns1.ts\n#EXT-X-ENDLIST\n",
    )
    .expect("playlist");
    all
}

/// Starts a slow download (1 MB/s, one connection, segments through files) and kills it
/// (`kill -9`) once its journal vouches for at least 1 MiB of a segment in flight.
fn kill_mid_segment(backend: ferry_testkit::Backend, url: &str, dest: &Path) {
    let mut child = ferry_command(backend)
        .args([
            "--limit-rate",
            "1M",
            "get",
            url,
            "-c",
            "1",
            "--hls-memory",
            "1M",
            "-o",
        ])
        .arg(dest)
        .arg("--quiet")
        .spawn()
        .expect("start ferry");
    let work = work_dir(dest);
    let journal = work.join("segments.journal");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        let written: u64 = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(1) == Some(&"W"))
                    .then(|| Some(f.get(4)?.parse::<u64>().ok()? - f.get(3)?.parse::<u64>().ok()?))
                    .flatten()
            })
            .sum();
        if written >= 1 << 20 {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "ferry ended before a segment was partly in"
        );
        assert!(Instant::now() < deadline, "no journaled range in 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(!dest.exists(), "no output from a killed run");
}

#[test]
fn a_large_segment_is_taken_up_where_a_killed_run_left_it() {
    for backend in backends_under_test() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("www");
        let want = write_stream(&root, 7);
        let nginx = Nginx::start(&root);
        let url = nginx.url("files", "big/index.m3u8");
        let dest = tmp.path().join("out.ts");
        kill_mid_segment(backend, &url, &dest);
        let before = nginx.requests(1).len();

        // One connection: no range is split between two, so nginx's log adds up to what the
        // run asked for.
        let r = report(
            &get(backend, &url, &dest, &["-c", "1"]),
            backend,
            "after kill -9",
        );
        assert_bytes(&dest, &want, "after kill -9");
        let after: Vec<_> = nginx
            .requests(before + 1)
            .into_iter()
            .skip(before)
            .collect();
        let sent: u64 = after
            .iter()
            .filter(|q| q.uri.ends_with(".ts"))
            .map(|q| q.body_bytes)
            .sum();
        assert!(
            sent <= (2 * SEGMENT - (1 << 20)) as u64,
            "the second run fetched {sent} bytes of segments: the journaled ones again? {after:?}"
        );
        assert!(
            after.iter().any(|q| q.uri.ends_with(".ts")
                && q.status == 206
                && !q.range.starts_with("bytes=0-")),
            "a range from the middle of a segment: {after:?}"
        );
        let fetched = r["fetched_bytes"].as_u64().expect("fetched_bytes");
        assert!(
            fetched < (2 * SEGMENT) as u64 && fetched >= sent.saturating_sub(1 << 20),
            "the report counts what this run fetched: {fetched} ({sent} sent)"
        );
        eprintln!(
            "ran on backend {backend:?}: killed mid-segment; the rerun fetched {sent} of {} segment bytes ({r})",
            2 * SEGMENT
        );
    }
}

#[test]
fn a_segment_that_changed_between_runs_is_fetched_whole() {
    for backend in backends_under_test() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("www");
        write_stream(&root, 11);
        let nginx = Nginx::start(&root);
        let url = nginx.url("files", "big/index.m3u8");
        let dest = tmp.path().join("out.ts");
        kill_mid_segment(backend, &url, &dest);
        // The same names and sizes, other bytes (and another ETag: nginx's is mtime and size).
        std::thread::sleep(Duration::from_millis(1100));
        let want = write_stream(&root, 99);
        let r = report(&get(backend, &url, &dest, &[]), backend, "after the change");
        assert_bytes(&dest, &want, "after the change");
        eprintln!("ran on backend {backend:?}: changed segments fetched whole ({r})");
    }
}

/// The answer of an origin that honours `Range` but ignores `If-Range` (as some CDNs and
/// object stores do), serving `body` under `etag`.
fn ranged_answer(head: &str, body: &[u8], etag: &str) -> Vec<u8> {
    use ferry_testkit::hostile::answer;
    let range = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("range")
            .then(|| value.trim().strip_prefix("bytes=").map(str::to_owned))
            .flatten()
    });
    let etag = ("ETag", etag.to_owned());
    match range.and_then(|r| {
        let (a, b) = r.split_once('-')?;
        let a: usize = a.parse().ok()?;
        let b: usize = b.parse::<usize>().ok()?.min(body.len() - 1);
        (a <= b).then_some((a, b))
    }) {
        Some((a, b)) => answer(
            "206 Partial Content",
            &[
                etag,
                ("Content-Range", format!("bytes {a}-{b}/{}", body.len())),
            ],
            &body[a..=b],
        ),
        None => answer("200 OK", &[etag], body),
    }
}

#[test]
fn a_changed_segment_is_caught_by_its_etag_when_the_server_ignores_if_range() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let old = seeded(SEGMENT, 5);
    let new = seeded(SEGMENT, 6);
    for backend in backends_under_test() {
        let changed = Arc::new(AtomicBool::new(false));
        let origin = {
            let (changed, old, new) = (Arc::clone(&changed), old.clone(), new.clone());
            ferry_testkit::hostile::HostileOrigin::start_paced(
                move |head| {
                    let path = ferry_testkit::hostile::request_path(head);
                    if path.ends_with(".m3u8") {
                        let list = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/s.ts\n\
                                    #EXT-X-ENDLIST\n";
                        return ferry_testkit::hostile::answer("200 OK", &[], list.as_bytes());
                    }
                    if changed.load(Ordering::Relaxed) {
                        ranged_answer(head, &new, "\"v2\"")
                    } else {
                        ranged_answer(head, &old, "\"v1\"")
                    }
                },
                Some((64 * 1024, Duration::from_millis(20))),
            )
        };
        let url = format!("{}/index.m3u8", origin.url());
        let tmp = tempfile::tempdir().expect("tmp");
        let dest = tmp.path().join("out.ts");
        kill_mid_segment(backend, &url, &dest);
        changed.store(true, Ordering::Relaxed);
        // One connection: the origin serves one at a time.
        let r = report(
            &get(backend, &url, &dest, &["-c", "1"]),
            backend,
            "after the change",
        );
        assert_bytes(
            &dest,
            &new,
            "a changed segment behind a server that ignores If-Range",
        );
        let asked_with = origin
            .requests()
            .iter()
            .filter(|h| h.to_ascii_lowercase().contains("if-range: \"v1\""))
            .count();
        assert!(asked_with >= 1, "the resumed request carried If-Range");
        eprintln!("ran on backend {backend:?}: another ETag under a 206: fetched whole ({r})");
    }
}
