//! WebVTT subtitle renditions (ffmpeg's, from an SRT) come out as one valid WebVTT file: one
//! header, every cue once and in order, as ffmpeg itself reads it (on every back-end).

use std::process::Command;

use ferry_testkit::hls::{self, SRT_TEXTS};
use ferry_testkit::{Nginx, backends_under_test};

use super::hls::{get, report};

/// The cue texts ffmpeg reads from a WebVTT file, converted to SRT.
fn cue_texts(vtt: &std::path::Path) -> Vec<String> {
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(vtt)
        .args(["-f", "srt", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let srt = String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n");
    srt.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| b.lines().skip(2).collect::<Vec<_>>().join("\n"))
        .collect()
}

#[test]
fn webvtt_segments_merge_into_one_valid_file() {
    let s = hls::streams();
    let nginx = Nginx::start(&s.root);
    let url = nginx.url("files", "subs/master.m3u8");
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("film.ts");
        let r = report(
            &get(backend, &url, &dest, &["--renditions", "all"]),
            backend,
            "subtitles",
        );
        let subs = &r["tracks"][1];
        assert_eq!(subs["kind"], "subtitles", "{r}");
        let path = subs["outputs"][0].as_str().expect("subtitle output");
        assert!(path.ends_with("film.subtitles-English.vtt"), "{path}");
        let text = std::fs::read_to_string(path).expect("read subtitles");
        assert!(text.starts_with("WEBVTT"), "{text}");
        assert_eq!(text.matches("WEBVTT").count(), 1, "one header:\n{text}");
        assert_eq!(cue_texts(path.as_ref()), SRT_TEXTS, "{text}");
        eprintln!(
            "ran on backend {backend:?}: {} cues in one WebVTT file",
            SRT_TEXTS.len()
        );
    }
}
