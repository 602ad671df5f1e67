//! `ferry get URL.m3u8` against nginx serving streams made by ffmpeg and openssl
//! (`ferry_testkit::hls`), on every back-end: the output is byte for byte the known plaintext
//! (TS, AES-128 with IVs from the tag and from the media sequence number, key rotation,
//! `METHOD=NONE` mid-stream, fMP4 with `EXT-X-MAP`, single-file byte ranges with and without
//! offsets, a master playlist with an audio group), and ffmpeg's stream hash of the output
//! equals its own reading of the playlist. Missing segments are reported by media sequence
//! number with exit code 16 and nothing under the final name; the next run fetches only what
//! is missing; `kill -9` mid-download loses nothing. Hostile playlists are refused. Live
//! streams are in `hls_live.rs`; the helpers here serve the other `hls_*` files too.

use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_testkit::hls::{self, streamhash};
use ferry_testkit::{
    Backend, Nginx, assert_clean_failure, backends_under_test, ferry, ferry_command,
};

/// `ferry get URL -o OUT --json EXTRA...`
pub(crate) fn get(backend: Backend, url: &str, out: &Path, extra: &[&str]) -> Output {
    let out = out.to_str().expect("utf-8 path");
    let mut args = vec!["get", url, "-o", out, "--json"];
    args.extend_from_slice(extra);
    ferry(backend, &args)
}

/// The JSON report of a run that succeeded on `backend`.
pub(crate) fn report(o: &Output, backend: Backend, what: &str) -> serde_json::Value {
    assert!(
        o.status.success(),
        "{what}: ferry failed ({:?}): {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_eq!(r["backend"], backend.flag(), "{what}: {r}");
    r
}

pub(crate) fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub(crate) fn assert_bytes(got: &Path, want: &[u8], what: &str) {
    let got = read(got);
    assert!(
        got == want,
        "{what}: {} bytes written, {} expected; first difference at {:?}",
        got.len(),
        want.len(),
        got.iter().zip(want).position(|(a, b)| a != b)
    );
}

/// A copy of `streams().root/NAME` in a folder of its own, for tests that break it.
fn copy_stream(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let from = hls::streams().root.join(name);
    let to = dir.path().join(name);
    copy_tree(&from, &to);
    (dir, to)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read stream") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// `ferry --limit-rate 8K get URL -c 1 -o OUT --quiet` in the background: a stream of about
/// 100 KB takes it seconds, so a test can act while it runs; over one connection its segments
/// land one after another, the first long before the end.
fn spawn_slow(backend: Backend, url: &str, out: &Path) -> std::process::Child {
    ferry_command(backend)
        .args(["--limit-rate", "8K", "get", url, "-c", "1", "-o"])
        .arg(out)
        .arg("--quiet")
        .spawn()
        .expect("start ferry")
}

pub(crate) fn work_dir(out: &Path) -> PathBuf {
    let mut w = out.as_os_str().to_owned();
    w.push(".ferry-hls");
    PathBuf::from(w)
}

#[test]
fn every_kind_of_stream_comes_out_byte_identical_to_its_plaintext() {
    let s = hls::streams();
    let nginx = Nginx::start(&s.root);
    let ts = s.plain_ts();
    let fmp4 = s.plain_fmp4();
    let cases: [(&str, &[u8], u64); 7] = [
        ("vod/index.m3u8", &ts, 0),
        // ffmpeg's AES-128: a KEY tag with IV= before every segment.
        ("enc/index.m3u8", &ts, 6),
        // Keys without IV (the MSN is the IV), k1 -> k2, METHOD=NONE for the last two.
        ("tsenc/index.m3u8", &ts, 4),
        ("fmp4/index.m3u8", &fmp4, 0),
        // The same over fMP4: the clear init section first.
        ("srv/index.m3u8", &fmp4, 4),
        ("single/index.m3u8", &ts, 0),
        // Offset-less byte ranges: each follows the one before.
        ("single/nooff.m3u8", &ts, 0),
    ];
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        for (playlist, want, decrypted) in cases {
            let dest = out.path().join(playlist.replace('/', "-") + ".out");
            let url = nginx.url("files", playlist);
            let r = report(&get(backend, &url, &dest, &[]), backend, playlist);
            assert_bytes(&dest, want, playlist);
            let t = &r["tracks"][0];
            assert_eq!(t["segments"], 6, "{playlist}: {r}");
            assert_eq!(t["decrypted"], decrypted, "{playlist}: {r}");
            assert_eq!(
                t["gaps"].as_array().map(Vec::len),
                Some(0),
                "{playlist}: {r}"
            );
            assert!(
                !work_dir(&dest).exists(),
                "{playlist}: the work folder is removed"
            );
            // ffmpeg's reading of the playlist (over HTTP, keys and all) and of ferry's output
            // agree stream by stream.
            if playlist != "single/nooff.m3u8" {
                let theirs = streamhash(&url, &[]);
                let ours = streamhash(dest.to_str().expect("utf-8"), &[]);
                assert_eq!(ours, theirs, "{playlist}: stream hashes");
            }
        }
        eprintln!(
            "ran on backend {backend:?}: {} stream kinds byte-identical",
            cases.len()
        );
    }
}

#[test]
fn a_master_playlist_gives_the_chosen_variant_and_its_audio_beside_it() {
    let s = hls::streams();
    let nginx = Nginx::start(&s.root);
    let url = nginx.url("files", "mv/master.m3u8");
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("show.ts");
        let r = report(&get(backend, &url, &dest, &[]), backend, "best");
        assert_bytes(&dest, &s.plain_variant("hi"), "best variant");
        let audio = out.path().join("show.audio-audio_2.ts");
        assert_bytes(&audio, &s.plain_variant("audio"), "audio rendition");
        assert_eq!(r["tracks"].as_array().map(Vec::len), Some(2), "{r}");
        assert_eq!(r["tracks"][1]["kind"], "audio", "{r}");
        assert!(
            r["variant"].as_str().unwrap_or("").contains("160x120"),
            "{r}"
        );

        let dest = out.path().join("small.ts");
        let r = report(
            &get(
                backend,
                &url,
                &dest,
                &["--variant", "worst", "--renditions", "none"],
            ),
            backend,
            "worst",
        );
        assert_bytes(&dest, &s.plain_variant("lo"), "worst variant");
        assert_eq!(r["tracks"].as_array().map(Vec::len), Some(1), "{r}");
        assert!(!out.path().join("small.audio-audio_2.ts").exists());

        let dest = out.path().join("res.ts");
        report(
            &get(
                backend,
                &url,
                &dest,
                &["--variant", "resolution=80x60", "--renditions", "en"],
            ),
            backend,
            "resolution",
        );
        assert_bytes(&dest, &s.plain_variant("lo"), "resolution=80x60");
        assert_bytes(
            &out.path().join("res.audio-audio_2.ts"),
            &s.plain_variant("audio"),
            "--renditions en",
        );

        // A choice that matches nothing fails, naming what there is; nothing is written.
        let dest = out.path().join("none.ts");
        let o = get(backend, &url, &dest, &["--variant", "resolution=7x7"]);
        assert_clean_failure(&o, 2, "160x120", "no such variant");
        assert!(!dest.exists());
        eprintln!("ran on backend {backend:?}: variants and renditions");
    }
}

#[test]
fn segments_dir_keeps_each_segment_decrypted_under_its_media_sequence_number() {
    let s = hls::streams();
    let nginx = Nginx::start(&s.root);
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let segs = out.path().join("segs");
        let dest = out.path().join("x.ts");
        let url = nginx.url("files", "enc/index.m3u8");
        let r = report(
            &get(
                backend,
                &url,
                &dest,
                &["--segments-dir", segs.to_str().expect("utf-8")],
            ),
            backend,
            "segments dir",
        );
        assert_eq!(r["tracks"][0]["decrypted"], 6, "{r}");
        for i in 0..6 {
            let want = read(&s.root.join(format!("vod/seg_{i:03}.ts")));
            assert_bytes(&segs.join(format!("{}.ts", 7 + i)), &want, "segment file");
        }
        assert_eq!(std::fs::read_dir(&segs).expect("segs").count(), 6);
        assert!(!dest.exists(), "no concatenated output with --segments-dir");

        // fMP4: the init section is a file of its own.
        let segs = out.path().join("fsegs");
        let url = nginx.url("files", "srv/index.m3u8");
        report(
            &get(
                backend,
                &url,
                &dest,
                &["--segments-dir", segs.to_str().expect("utf-8")],
            ),
            backend,
            "segments dir fmp4",
        );
        assert_bytes(
            &segs.join("init-0.mp4"),
            &read(&s.root.join("fmp4/init.mp4")),
            "init",
        );
        assert_bytes(
            &segs.join("12.m4s"),
            &read(&s.root.join("fmp4/seg_005.m4s")),
            "12.m4s",
        );
        eprintln!("ran on backend {backend:?}: --segments-dir");
    }
}

#[test]
fn a_missing_segment_is_reported_by_number_and_the_next_run_fetches_only_what_is_missing() {
    for backend in backends_under_test() {
        let (root, stream) = copy_stream("tsenc");
        let nginx = Nginx::start(root.path());
        let url = nginx.url("files", "tsenc/index.m3u8");
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("t.ts");
        let hidden = stream.join("s9.hidden");
        std::fs::rename(stream.join("s9.ts"), &hidden).expect("hide s9");

        // Exit 16, the gap named by its media sequence number, nothing under the final name.
        let o = get(backend, &url, &dest, &[]);
        assert_eq!(
            o.status.code(),
            Some(16),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains("segment 9 ") && stderr.contains("404"),
            "{stderr}"
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
        let gaps = &r["tracks"][0]["gaps"];
        assert_eq!(
            (&gaps[0]["first"], &gaps[0]["last"]),
            (&9.into(), &9.into()),
            "{r}"
        );
        assert!(!dest.exists(), "no output with a gap");
        assert!(work_dir(&dest).exists(), "the fetched segments are kept");

        // With --allow-gaps: written without segment 9, exit 0, the gap still reported.
        let partial = out.path().join("gappy.ts");
        let r = report(
            &get(backend, &url, &partial, &["--allow-gaps"]),
            backend,
            "allow gaps",
        );
        assert_eq!(r["tracks"][0]["gaps"][0]["first"], 9, "{r}");
        let plain = hls::streams().plain_ts();
        let seg = |i: usize| read(&hls::streams().root.join(format!("vod/seg_{i:03}.ts")));
        let without: Vec<u8> = (0..6).filter(|&i| i != 2).flat_map(seg).collect();
        assert_bytes(&partial, &without, "output without segment 9");

        // The segment comes back: only it is fetched; the rest were kept.
        std::fs::rename(&hidden, stream.join("s9.ts")).expect("restore s9");
        let before = nginx.requests(0).len();
        let r = report(&get(backend, &url, &dest, &[]), backend, "rerun");
        assert_bytes(&dest, &plain, "after the rerun");
        assert_eq!(
            (r["kept"].as_u64(), r["resources"].as_u64()),
            (Some(5), Some(6)),
            "{r}"
        );
        let asked: Vec<String> = nginx.requests(before + 1)[before..]
            .iter()
            .map(|q| q.uri.clone())
            .filter(|p| p.ends_with(".ts"))
            .collect();
        assert_eq!(
            asked,
            ["/files/tsenc/s9.ts"],
            "only the missing segment is fetched"
        );
        assert!(!work_dir(&dest).exists());
        eprintln!("ran on backend {backend:?}: gap reported, then filled by a rerun");
    }
}

#[test]
fn kill_9_mid_stream_then_the_same_command_gives_the_same_bytes() {
    let s = hls::streams();
    let nginx = Nginx::start(&s.root);
    let url = nginx.url("files", "enc/index.m3u8");
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("k.ts");
        // Slow enough (8 KB/s over ~100 KB) that it is still running when a segment is in.
        let mut child = spawn_slow(backend, &url, &dest);
        let work = work_dir(&dest);
        // A segment written to the output and covered by a checkpoint (the work folder's
        // `state`, written only once something is).
        let first_segment_in = || work.join("state").exists();
        while !first_segment_in() {
            if child.try_wait().expect("wait").is_some() {
                panic!("ferry ended before a segment was in");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        assert!(!dest.exists(), "no output from a killed run");

        let r = report(&get(backend, &url, &dest, &[]), backend, "after kill -9");
        assert_bytes(&dest, &s.plain_ts(), "after kill -9");
        let kept = r["kept"].as_u64().unwrap_or(0);
        assert!(
            kept >= 1,
            "the segment written before the kill is kept: {r}"
        );
        assert!(
            r["fetched_bytes"].as_u64() < Some(s.plain_ts().len() as u64),
            "not everything fetched again: {r}"
        );
        eprintln!("ran on backend {backend:?}: killed with {kept} segments in; resumed");
    }
}

/// A folder served by nginx holding `index.m3u8` with `text` and the stream files of `from`.
fn hostile(from: &str, text: &str) -> (tempfile::TempDir, Nginx) {
    let (root, stream) = copy_stream(from);
    std::fs::write(stream.join("index.m3u8"), text).expect("write playlist");
    let nginx = Nginx::start(root.path());
    (root, nginx)
}

#[test]
fn hostile_playlists_are_refused_and_nothing_is_written() {
    let backend = backends_under_test()[0];
    let out = tempfile::tempdir().expect("tmp");
    let dest = out.path().join("h.ts");
    // A local key: never read.
    let (_r, nginx) = hostile(
        "tsenc",
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=AES-128,URI=\"file:///etc/passwd\"\n#EXTINF:1,\ns7.ts\n#EXT-X-ENDLIST\n",
    );
    let o = get(backend, &nginx.url("files", "tsenc/index.m3u8"), &dest, &[]);
    assert_clean_failure(&o, 3, "only http and https", "file:// key");
    assert!(!dest.exists() && !work_dir(&dest).exists());

    // A key that is not 16 bytes: its segments are a gap, named.
    let (_r, nginx) = hostile(
        "tsenc",
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-KEY:METHOD=AES-128,URI=\"index.m3u8\"\n#EXTINF:1,\ns7.ts\n#EXT-X-KEY:METHOD=NONE\n#EXTINF:1,\ns11.ts\n#EXT-X-ENDLIST\n",
    );
    let o = get(backend, &nginx.url("files", "tsenc/index.m3u8"), &dest, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(16), "{stderr}");
    assert!(
        stderr.contains("segment 7 ") && stderr.contains("exactly 16"),
        "{stderr}"
    );
    assert!(!dest.exists());

    // SAMPLE-AES, and the RFC's MUST-fail rules: a clear message, exit 3.
    for (text, needle) in [
        (
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"k\",IV=0x1\n#EXTINF:1,\ns7.ts\n#EXT-X-ENDLIST\n",
            "SAMPLE-AES",
        ),
        (
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\ns7.ts\n#EXT-X-ENDLIST\n",
            "second EXT-X-VERSION",
        ),
        (
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\ns7.ts\n#EXT-X-BYTERANGE:10\n#EXTINF:1,\ns8.ts\n#EXT-X-ENDLIST\n",
            "4.3.2.2",
        ),
        ("<html>not a playlist</html>", "#EXTM3U"),
    ] {
        let (_r, nginx) = hostile("tsenc", text);
        let o = get(backend, &nginx.url("files", "tsenc/index.m3u8"), &dest, &[]);
        assert_clean_failure(&o, 3, needle, needle);
        assert!(!dest.exists());
    }

    // A rendition name that looks like a path becomes a plain file name beside the output.
    let (root, _) = copy_stream("mv");
    std::fs::write(
        root.path().join("mv/master.m3u8"),
        "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"../../../tmp/evil\",URI=\"audio/index.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO=\"a\"\nhi/index.m3u8\n",
    )
    .expect("write master");
    let nginx = Nginx::start(root.path());
    let r = report(
        &get(backend, &nginx.url("files", "mv/master.m3u8"), &dest, &[]),
        backend,
        "evil rendition name",
    );
    let audio = PathBuf::from(r["tracks"][1]["outputs"][0].as_str().expect("audio output"));
    assert_eq!(audio.parent(), Some(out.path()), "{r}");
    assert_eq!(
        audio.file_name().and_then(|n| n.to_str()),
        Some("h.audio-_________tmp_evil.ts")
    );
    eprintln!("ran on backend {backend:?}: hostile playlists");
}

/// ffmpeg reads the output as a valid stream (a smoke check that `Command` finds ffmpeg).
#[test]
fn ffmpeg_reads_what_ferry_wrote_from_an_encrypted_fmp4_stream() {
    let s = hls::streams();
    let nginx = Nginx::start(&s.root);
    let backend = backends_under_test()[0];
    let out = tempfile::tempdir().expect("tmp");
    let dest = out.path().join("v.mp4");
    report(
        &get(backend, &nginx.url("files", "srv/index.m3u8"), &dest, &[]),
        backend,
        "srv",
    );
    let secs = hls::duration_seconds(&dest).expect("ffprobe reads the output");
    assert!((secs - 6.0).abs() < 0.5, "ffprobe duration {secs}");
}

/// A scripted origin for signed URLs (nginx keeps no such state): its playlist's n-th load
/// names every segment with token `n`, except that the first load names segment 2 with token 0,
/// already expired; a segment asked with any token but the latest load's is refused with 403.
struct SignedOrigin {
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SignedOrigin {
    fn start() -> SignedOrigin {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let log: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let loads = Arc::new(AtomicU64::new(0));
        let (log2, stop2) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                let (log, loads) = (Arc::clone(&log2), Arc::clone(&loads));
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).expect("blocking");
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let target = head.split(' ').nth(1).unwrap_or("").to_owned();
                        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                        let (status, body) = if path == "/index.m3u8" {
                            let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
                            let mut p = String::from(
                                "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:VOD\n",
                            );
                            for i in 0..6 {
                                let t = if n == 1 && i == 2 { 0 } else { n };
                                p += &format!("#EXTINF:1,\nseg{i}.ts?t={t}\n");
                            }
                            p += "#EXT-X-ENDLIST\n";
                            (200, p.into_bytes())
                        } else {
                            let i: usize = path
                                .trim_start_matches("/seg")
                                .trim_end_matches(".ts")
                                .parse()
                                .unwrap_or(99);
                            let fresh = query == format!("t={}", loads.load(Ordering::SeqCst));
                            let file = hls::streams().root.join(format!("vod/seg_{i:03}.ts"));
                            match std::fs::read(file) {
                                Ok(b) if fresh => (200, b),
                                Ok(_) => (403, b"expired\n".to_vec()),
                                Err(_) => (404, b"no\n".to_vec()),
                            }
                        };
                        log.lock().expect("log").push((target.clone(), status));
                        let reason = match status {
                            200 => "OK",
                            403 => "Forbidden",
                            _ => "Not Found",
                        };
                        let head = format!(
                            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        if conn
                            .write_all(head.as_bytes())
                            .and_then(|()| conn.write_all(&body))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        SignedOrigin { port, log, stop }
    }
}

impl Drop for SignedOrigin {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A segment refused as expired (403) is asked again under the URL a reload of the playlist
/// gives; the segments already fetched are not fetched again.
#[test]
fn an_expired_signed_segment_url_is_renewed_by_reloading_the_playlist() {
    let s = hls::streams();
    for backend in backends_under_test() {
        let origin = SignedOrigin::start();
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("signed.ts");
        let url = format!("http://127.0.0.1:{}/index.m3u8", origin.port);
        let r = report(&get(backend, &url, &dest, &[]), backend, "signed");
        assert_bytes(&dest, &s.plain_ts(), "after renewing segment 2");
        let log = origin.log.lock().expect("log").clone();
        let got: Vec<&str> = log
            .iter()
            .filter(|(t, st)| t.starts_with("/seg") && *st == 200)
            .map(|(t, _)| t.as_str())
            .collect();
        assert_eq!(got.len(), 6, "each segment fetched once: {log:?}");
        assert!(got.contains(&"/seg2.ts?t=2"), "{log:?}");
        assert!(log.contains(&("/seg2.ts?t=0".to_owned(), 403)), "{log:?}");
        assert_eq!(
            r["tracks"][0]["gaps"].as_array().map(Vec::len),
            Some(0),
            "{r}"
        );
        eprintln!("ran on backend {backend:?}: expired URL renewed by a reload");
    }
}

/// A URL without `.m3u8` whose answer is a playlist is followed (RFC 8216: a playlist starts
/// with `#EXTM3U`); `--no-hls` keeps the playlist itself.
#[test]
fn a_playlist_is_recognised_by_its_first_line_and_no_hls_keeps_it() {
    let s = hls::streams();
    let (root, stream) = copy_stream("vod");
    std::fs::copy(stream.join("index.m3u8"), stream.join("watch")).expect("copy");
    let nginx = Nginx::start(root.path());
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("movie.ts");
        let r = report(
            &get(backend, &nginx.url("files", "vod/watch"), &dest, &[]),
            backend,
            "sniffed",
        );
        assert_eq!(r["tracks"][0]["segments"], 6, "{r}");
        assert_bytes(&dest, &s.plain_ts(), "sniffed playlist");

        let raw = out.path().join("index.m3u8");
        let o = get(
            backend,
            &nginx.url("files", "vod/index.m3u8"),
            &raw,
            &["--no-hls"],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_bytes(&raw, &read(&stream.join("index.m3u8")), "--no-hls");
        let kept = out.path().join("watch.bin");
        let o = get(
            backend,
            &nginx.url("files", "vod/watch"),
            &kept,
            &["--no-hls"],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_bytes(
            &kept,
            &read(&stream.join("index.m3u8")),
            "--no-hls, sniffable",
        );
        eprintln!("ran on backend {backend:?}: playlist sniffed; --no-hls kept it");
    }
}

/// Over HTTPS (nginx, a private CA given by `--ca-file`): an AES-128 stream whose playlist,
/// keys and segments are all https comes out byte-identical; a playlist fetched over https that
/// names a key over plain http is refused (the key would travel in the clear); a segment over
/// plain http is fetched, with a warning.
#[test]
fn over_https_keys_never_downgrade_to_http() {
    let s = hls::streams();
    let pki = ferry_testkit::tls::TestPki::new();
    let (root, stream) = copy_stream("tsenc");
    let nginx = Nginx::start_tls(root.path(), &pki.localhost);
    let ca = pki.ca.display().to_string();
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("tls.ts");
        let url = nginx.https_url("localhost", "files", "tsenc/index.m3u8");
        let r = report(
            &get(backend, &url, &dest, &["--ca-file", &ca]),
            backend,
            "https",
        );
        assert_bytes(&dest, &s.plain_ts(), "over https");
        assert_eq!(r["tracks"][0]["decrypted"], 4, "{r}");
        eprintln!("ran on backend {backend:?}: AES-128 stream over https");
    }
    let backend = backends_under_test()[0];
    let plain = nginx.url("files", "tsenc");
    let text = std::fs::read_to_string(stream.join("index.m3u8")).expect("playlist");
    std::fs::write(
        stream.join("downgrade.m3u8"),
        text.replace("URI=\"k1.key\"", &format!("URI=\"{plain}/k1.key\"")),
    )
    .expect("write");
    let out = tempfile::tempdir().expect("tmp");
    let dest = out.path().join("down.ts");
    let url = nginx.https_url("localhost", "files", "tsenc/downgrade.m3u8");
    let o = get(backend, &url, &dest, &["--ca-file", &ca]);
    assert_clean_failure(&o, 3, "in the clear", "http key under https");
    assert!(!dest.exists());
    // A clear segment over plain http: fetched, and warned about.
    std::fs::write(
        stream.join("mixed.m3u8"),
        text.replace("\ns12.ts", &format!("\n{plain}/s12.ts")),
    )
    .expect("write");
    let url = nginx.https_url("localhost", "files", "tsenc/mixed.m3u8");
    let r = report(
        &get(backend, &url, &dest, &["--ca-file", &ca]),
        backend,
        "mixed",
    );
    assert_bytes(&dest, &s.plain_ts(), "mixed");
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("not protected"), "{r}");
}

/// One writer per output: a second `ferry get` of a stream to the output a first one is still
/// writing stops with exit 14 and touches nothing of the first's.
#[test]
fn a_second_download_to_the_same_output_is_refused_while_the_first_runs() {
    let s = hls::streams();
    let nginx = Nginx::start(&s.root);
    let url = nginx.url("files", "enc/index.m3u8");
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("one.ts");
        let mut first = spawn_slow(backend, &url, &dest);
        while !work_dir(&dest).join("lock").exists() {
            if let Some(st) = first.try_wait().expect("wait") {
                panic!("the first ferry ended ({st}) before it took its lock");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let o = get(backend, &url, &dest, &[]);
        assert_clean_failure(&o, 14, "another ferry", "second writer");
        let st = first.wait().expect("first ferry");
        assert!(st.success(), "the first ferry: {st}");
        assert_bytes(&dest, &s.plain_ts(), "the first writer's output");
        eprintln!("ran on backend {backend:?}: a second writer was refused");
    }
}
