//! Live HLS streams (`ferry get` of a playlist without `EXT-X-ENDLIST`), on every back-end:
//! a window sliding to its end is recorded without a gap, segments that leave the window
//! unseen are a reported gap, sixty seconds of a real ffmpeg live stream have no gap, and
//! SIGINT ends a recording with what was fetched.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_testkit::hls;
use ferry_testkit::{Backend, Nginx, backends_under_test, ferry_command};

use super::hls::{assert_bytes, read, report, work_dir};

/// Waits until nginx has answered a request for `uri` (ferry fetched it), failing if `child`
/// ends first.
fn wait_for_request(nginx: &Nginx, child: &mut std::process::Child, uri: &str) {
    loop {
        if nginx
            .requests(0)
            .iter()
            .any(|q| q.uri == uri && (q.status == 200 || q.status == 206))
        {
            return;
        }
        if let Some(st) = child.try_wait().expect("wait") {
            panic!("ferry ended ({st}) before it fetched {uri}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts `ferry get URL -o OUT --json EXTRA...` in the background.
fn spawn_get(backend: Backend, url: &str, out: &Path, extra: &[&str]) -> std::process::Child {
    ferry_command(backend)
        .args(["get", url, "-o"])
        .arg(out)
        .arg("--json")
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ferry")
}

/// A live window over `vod/` (segments 0-1 listed, no ENDLIST) served by nginx, and a
/// `ferry get` recording it in the background.
struct Live {
    _root: tempfile::TempDir,
    live: PathBuf,
    nginx: Nginx,
    _out: tempfile::TempDir,
    dest: PathBuf,
    child: std::process::Child,
}

impl Live {
    fn start(s: &hls::Streams, backend: Backend, extra: &[&str]) -> Live {
        let root = tempfile::tempdir().expect("tmp");
        let live = root.path().join("live");
        s.live_window(&live, 0, 2, 0, false);
        let nginx = Nginx::start(root.path());
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("rec.ts");
        let child = spawn_get(
            backend,
            &nginx.url("files", "live/index.m3u8"),
            &dest,
            extra,
        );
        Live {
            _root: root,
            live,
            nginx,
            _out: out,
            dest,
            child,
        }
    }
}

/// A live window over `vod/` that slides one segment each time ferry has fetched the newest
/// one (so the test does not depend on timing), deleting what leaves it, until ENDLIST: the
/// recording is every segment, byte for byte, with no gap.
#[test]
fn a_live_stream_followed_to_its_end_is_recorded_without_a_gap() {
    let s = hls::streams();
    for backend in backends_under_test() {
        let Live {
            _root,
            live,
            nginx,
            _out,
            dest,
            mut child,
        } = Live::start(s, backend, &["--hls"]);
        for first in 1..=4 {
            for msn in [first - 1, first] {
                wait_for_request(&nginx, &mut child, &format!("/files/live/seg_{msn:05}.ts"));
            }
            s.live_window(&live, first, 2, first as u64, first == 4);
            let _ = std::fs::remove_file(live.join(format!("seg_{:05}.ts", first - 1)));
        }
        let o = child.wait_with_output().expect("ferry");
        let r = report(&o, backend, "live");
        assert_bytes(&dest, &s.plain_ts(), "live recording");
        assert_eq!(
            r["tracks"][0]["gaps"].as_array().map(Vec::len),
            Some(0),
            "{r}"
        );
        assert_eq!(r["tracks"][0]["segments"], 6, "{r}");
        assert!(r["live"].as_str().unwrap_or("").contains("ENDLIST"), "{r}");
        eprintln!("ran on backend {backend:?}: live window followed to ENDLIST");
    }
}

/// The window jumps past two segments ferry never saw listed: they are reported as a gap by
/// media sequence number, the exit code is 16, and the recording is written without them.
#[test]
fn segments_that_leave_a_live_window_unseen_are_a_reported_gap() {
    let s = hls::streams();
    for backend in backends_under_test() {
        let Live {
            _root,
            live,
            nginx,
            _out,
            dest,
            mut child,
        } = Live::start(s, backend, &[]);
        wait_for_request(&nginx, &mut child, "/files/live/seg_00001.ts");
        s.live_window(&live, 4, 2, 4, true);
        let o = child.wait_with_output().expect("ferry");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(16), "{stderr}");
        assert!(
            stderr.contains("segments 2-3") && stderr.contains("live window"),
            "{stderr}"
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
        let g = &r["tracks"][0]["gaps"][0];
        assert_eq!(
            (g["first"].as_u64(), g["last"].as_u64()),
            (Some(2), Some(3)),
            "{r}"
        );
        let seg = |i: usize| read(&s.root.join(format!("vod/seg_{i:03}.ts")));
        let want: Vec<u8> = [0, 1, 4, 5].into_iter().flat_map(seg).collect();
        assert_bytes(&dest, &want, "recording without 2-3");
        eprintln!("ran on backend {backend:?}: live gap 2-3 reported");
    }
}

/// ffmpeg writes a live stream in real time (a 3-segment sliding window, old segments
/// deleted); ferry records 60 s of it on both back-ends at once: no gap, and ffprobe reads
/// 60 s of media from each recording.
#[test]
fn sixty_seconds_of_a_real_ffmpeg_live_stream_have_no_gap() {
    let s = hls::streams();
    let root = tempfile::tempdir().expect("tmp");
    let live = root.path().join("live");
    std::fs::create_dir_all(&live).expect("mkdir");
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-re", "-stream_loop", "-1", "-i"])
        .arg(s.root.join("src.mp4"))
        .args([
            "-c",
            "copy",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "3",
        ])
        .args(["-hls_delete_threshold", "1"])
        .args([
            "-hls_flags",
            "delete_segments+program_date_time+temp_file+omit_endlist",
        ])
        .arg("-hls_segment_filename")
        .arg(live.join("seg_%05d.ts"))
        .arg(live.join("index.m3u8"))
        .spawn()
        .expect("start ffmpeg");
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    while !live.join("index.m3u8").exists() {
        if let Some(st) = ffmpeg.try_wait().expect("wait") {
            panic!("ffmpeg ended: {st}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ffmpeg = Reap(ffmpeg);
    let nginx = Nginx::start(root.path());
    let url = nginx.url("files", "live/index.m3u8");
    let out = tempfile::tempdir().expect("tmp");
    let runs: Vec<_> = backends_under_test()
        .into_iter()
        .map(|b| {
            let dest = out.path().join(format!("{}.ts", b.flag()));
            let child = spawn_get(b, &url, &dest, &["--duration", "60"]);
            (b, dest, child)
        })
        .collect();
    for (backend, dest, child) in runs {
        let o = child.wait_with_output().expect("ferry");
        let r = report(&o, backend, "60 s live");
        let t = &r["tracks"][0];
        assert_eq!(t["gaps"].as_array().map(Vec::len), Some(0), "{r}");
        let recorded = t["seconds"].as_f64().unwrap_or(0.0);
        assert!(recorded >= 60.0, "{recorded} s recorded: {r}");
        assert!(
            r["live"].as_str().unwrap_or("").contains("--duration"),
            "{r}"
        );
        let secs = hls::duration_seconds(&dest).expect("ffprobe reads the recording");
        assert!(
            (secs - recorded).abs() < 2.0,
            "ffprobe reads {secs} s of a {recorded} s recording"
        );
        eprintln!("ran on backend {backend:?}: {recorded:.1} s of live ffmpeg output, no gap");
    }
}

/// Ctrl-C ends a live recording cleanly: what was fetched is written, playable, exit 0.
#[test]
fn sigint_ends_a_live_recording_with_what_was_fetched() {
    let s = hls::streams();
    for backend in backends_under_test() {
        let Live {
            _root,
            live: _,
            nginx,
            _out,
            dest,
            mut child,
        } = Live::start(s, backend, &[]);
        for msn in [0, 1] {
            wait_for_request(&nginx, &mut child, &format!("/files/live/seg_{msn:05}.ts"));
        }
        // Past the first reload (the target duration, 1 s): the two segments are in.
        while nginx
            .requests(0)
            .iter()
            .filter(|q| q.uri == "/files/live/index.m3u8")
            .count()
            < 2
        {
            if let Some(st) = child.try_wait().expect("wait") {
                panic!("ferry ended ({st}) before it reloaded the playlist");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let kill = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(kill.success());
        let o = child.wait_with_output().expect("ferry");
        let r = report(&o, backend, "SIGINT");
        assert!(
            r["live"].as_str().unwrap_or("").contains("interrupted"),
            "{r}"
        );
        let seg = |i: usize| read(&s.root.join(format!("vod/seg_{i:03}.ts")));
        let want: Vec<u8> = [0, 1].into_iter().flat_map(seg).collect();
        assert_bytes(&dest, &want, "recording stopped by SIGINT");
        assert!(!work_dir(&dest).exists());
        eprintln!("ran on backend {backend:?}: SIGINT wrote the recording");
    }
}
