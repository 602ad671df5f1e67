//! HLS downloads through the fault-injecting proxy in front of nginx, on every back-end: a
//! connection reset or a body cut short mid-segment, a burst of 503s, a wrong `Content-Range`
//! on a byte range, a range answered with the whole file, an answer that dribbles out. Each
//! run must still write the plaintext byte for byte, through segments held in memory, byte
//! ranges fetched alone and AES-128; each trial goes into the reliability record.

use std::path::Path;
use std::sync::atomic::Ordering;

use ferry_testkit::hls;
use ferry_testkit::record;
use ferry_testkit::{Fault, FaultProxy, Nginx, backends_under_test};

use super::hls::{get, report};

/// The answers a run without faults gets: the playlist, 6 segments (or byte ranges), and
/// `enc/`'s key.
fn clean_answers(playlist: &str) -> usize {
    if playlist.starts_with("enc/") { 8 } else { 7 }
}

/// `ferry get` of `playlist` through a proxy with `fault`, on every back-end: the output must
/// be `plain`, byte for byte, and the fault must have struck: a damaged answer asked again
/// (more answers than a clean run), or the refusals answered.
fn survives(nginx: &Nginx, test: &str, playlist: &str, fault: Fault, plain: &Path) {
    for backend in backends_under_test() {
        let proxy = FaultProxy::start(nginx.port(), fault);
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("out.ts");
        let url = format!("http://127.0.0.1:{}/files/{playlist}", proxy.port());
        let what = format!("{playlist} {fault:?}");
        let r = report(&get(backend, &url, &dest, &["-c", "2"]), backend, &what);
        record::recovered(
            &format!("HLS: {}", fault.describe()),
            &format!("hls_faults::{test}"),
            backend,
            plain,
            &dest,
        );
        let gaps = r["tracks"][0]["gaps"].as_array().map(Vec::len);
        assert_eq!(gaps, Some(0), "{what}: {r}");
        let answers = proxy.responses.load(Ordering::Relaxed);
        match fault {
            // The counter counts every matching request: the refused ones, then the one let
            // through.
            Fault::Refuse { times, .. } => {
                assert!(proxy.refused.load(Ordering::Relaxed) > times, "{what}");
            }
            // Split anywhere, nothing is lost: nothing asked again.
            Fault::Drip { .. } => assert_eq!(answers, clean_answers(playlist), "{what}"),
            _ => assert!(
                answers > clean_answers(playlist),
                "{what}: {answers} answers"
            ),
        }
        eprintln!(
            "ran on backend {backend:?}: {what}: {} responses through the proxy, output whole",
            proxy.responses.load(Ordering::Relaxed)
        );
    }
}

/// The plaintext of every test stream but fMP4, as a file (the record compares files).
fn plain_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("plain.ts");
    std::fs::write(&p, hls::streams().plain_ts()).expect("write plaintext");
    (dir, p)
}

#[test]
fn segments_cut_or_reset_mid_body_are_fetched_again() {
    let nginx = Nginx::start(&hls::streams().root);
    let (_keep, plain) = plain_file();
    // Response 0 is the playlist; later ones are segments (and, for enc/, its key).
    for playlist in ["vod/index.m3u8", "enc/index.m3u8", "single/index.m3u8"] {
        for fault in [
            Fault::Reset { nth: 2, keep: 3000 },
            Fault::TruncateBody { nth: 3, keep: 5000 },
        ] {
            survives(
                &nginx,
                "segments_cut_or_reset_mid_body_are_fetched_again",
                playlist,
                fault,
                &plain,
            );
        }
    }
}

#[test]
fn refusals_wrong_ranges_and_dribbles_end_with_the_same_bytes() {
    let nginx = Nginx::start(&hls::streams().root);
    let (_keep, plain) = plain_file();
    let test = "refusals_wrong_ranges_and_dribbles_end_with_the_same_bytes";
    let refuse = Fault::Refuse {
        uri_contains: "seg_002",
        times: 2,
        status: 503,
        retry_after: 1,
    };
    survives(&nginx, test, "vod/index.m3u8", refuse, &plain);
    survives(
        &nginx,
        test,
        "vod/index.m3u8",
        Fault::Drip { nth: 2 },
        &plain,
    );
    // A byte range answered for the next byte over: outside the range asked, asked again.
    survives(
        &nginx,
        test,
        "single/index.m3u8",
        Fault::ShiftContentRange { nth: 2 },
        &plain,
    );
    // A byte range answered with the whole file: that URL is fetched whole instead.
    survives(
        &nginx,
        test,
        "single/index.m3u8",
        Fault::IgnoreRange { nth: 2 },
        &plain,
    );
}
