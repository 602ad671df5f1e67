//! Segments go from the network to the outputs in memory when they fit the budget
//! (`--hls-memory`, 256 MiB by default), through a file in the work folder when they do not:
//! the output is the same bytes either way, the budget is never exceeded, and a segment whose
//! answer claims a huge length is never held (on every back-end).

use ferry_testkit::hls;
use ferry_testkit::hostile::{HostileOrigin, answer, request_path, response};
use ferry_testkit::{Nginx, backends_under_test};

use super::hls::{assert_bytes, get, report, work_dir};

#[test]
fn segments_through_memory_and_through_files_give_the_same_bytes() {
    let s = hls::streams();
    let nginx = Nginx::start(&s.root);
    let (ts, fmp4) = (s.plain_ts(), s.plain_fmp4());
    // (playlist, options, plaintext, resources held in memory of those fetched)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [u8], u64, u64);
    let cases: [Case; 6] = [
        // The default budget holds every segment and the init section.
        ("srv/index.m3u8", &[], &fmp4, 7, 7),
        // None held: every segment through a file.
        ("tsenc/index.m3u8", &["--hls-memory", "0"], &ts, 0, 6),
        // 68 KiB: at most 17 KiB each (a quarter). Four of the six segments are at most
        // that (16,544-17,108 bytes) and fit at once; the other two (17,484 and 17,860 bytes)
        // go through files.
        ("vod/index.m3u8", &["--hls-memory", "68K"], &ts, 4, 6),
        // The same, encrypted (lengths padded to 16): decrypted from memory and from files.
        ("enc/index.m3u8", &["--hls-memory", "68K"], &ts, 4, 6),
        // One file cut by byte ranges: each range is a resource of its own, of the same
        // lengths as the segments above.
        ("single/index.m3u8", &["--hls-memory", "68K"], &ts, 4, 6),
        // Offset-less byte ranges, in the default budget: all six held.
        ("single/nooff.m3u8", &[], &ts, 6, 6),
    ];
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        for (playlist, options, want, in_memory, resources) in cases {
            let dest = out.path().join(playlist.replace('/', "-") + ".out");
            let url = nginx.url("files", playlist);
            let what = format!("{playlist} {options:?}");
            let r = report(&get(backend, &url, &dest, options), backend, &what);
            assert_bytes(&dest, want, &what);
            assert_eq!(
                (r["in_memory"].as_u64(), r["resources"].as_u64()),
                (Some(in_memory), Some(resources)),
                "{what}: {r}"
            );
            let budget = match options {
                [_, "0"] => 0,
                [_, "68K"] => 68 << 10,
                _ => 256 << 20,
            };
            let peak = r["memory_peak"].as_u64().expect("memory_peak");
            assert!(peak <= budget, "{what}: {peak} bytes held, over {budget}");
            assert!(!work_dir(&dest).exists(), "{what}: the work folder is left");
        }
        eprintln!(
            "ran on backend {backend:?}: {} streams through memory and files",
            cases.len()
        );
    }
}

#[test]
fn a_segment_claiming_ten_gigabytes_is_never_held_and_becomes_a_gap() {
    let seg = |i: u8| vec![b'a' + i; 1000];
    let origin = HostileOrigin::start(move |head| match request_path(head) {
        "/index.m3u8" => answer(
            "200 OK",
            &[],
            b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
              #EXTINF:2,\ns0.ts\n#EXTINF:2,\ns1.ts\n#EXTINF:2,\nhuge.ts\n#EXT-X-ENDLIST\n",
        ),
        "/s0.ts" => answer("200 OK", &[], &seg(0)),
        "/s1.ts" => answer("200 OK", &[], &seg(1)),
        // Claims 10 GB, sends 100 bytes and closes: a holder that trusted the length would
        // allocate 10 GB.
        "/huge.ts" => response(
            "200 OK",
            &[
                ("Content-Length", "10000000000".into()),
                ("Connection", "close".into()),
            ],
            &[b'z'; 100],
        ),
        _ => answer("404 Not Found", &[], b""),
    });
    let url = format!("{}/index.m3u8", origin.url());
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("x.ts");
        let o = get(backend, &url, &dest, &["--allow-gaps"]);
        let r = report(&o, backend, "huge segment");
        let gaps = &r["tracks"][0]["gaps"];
        assert_eq!(
            (&gaps[0]["first"], &gaps[0]["last"]),
            (&2.into(), &2.into()),
            "{r}"
        );
        assert_eq!(r["in_memory"], 2, "{r}");
        let peak = r["memory_peak"].as_u64().expect("memory_peak");
        assert!(
            peak <= 2000,
            "{peak} bytes held: the claimed length was trusted"
        );
        let want: Vec<u8> = seg(0).into_iter().chain(seg(1)).collect();
        assert_bytes(&dest, &want, "the two honest segments");
        eprintln!("ran on backend {backend:?}: a 10 GB claim was not held");
    }
}
