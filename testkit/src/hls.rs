//! HLS test streams for the HLS tests: made once per process with Debian's `ffmpeg` and
//! `openssl` in a temporary folder ([`streams`]), offline, with the plaintext each one must
//! download to ([`Streams::plain_ts`], [`Streams::plain_fmp4`], [`Streams::plain_variant`]) and
//! ffmpeg's own reading of a playlist as a second oracle ([`streamhash`]).
//!
//! The source is a 6 s test pattern (160x120, 10 fps, a keyframe every second) with a 440 Hz
//! tone, cut into 1 s segments, so every stream has 6 media segments (the audio rendition of
//! `mv/` has 7). Folders under [`Streams::root`]:
//!
//! - `vod/`    `index.m3u8`, `seg_000.ts`..`seg_005.ts`, MSN 0..5: plain TS, ENDLIST.
//! - `enc/`    ffmpeg's AES-128 TS (`periodic_rekey`): `seg_007.ts`..`seg_012.ts`, MSN 7..12,
//!   one key `enc.key`, a KEY tag before every segment with `IV=` the MSN. Decrypted, each
//!   segment is byte for byte the `vod/` segment of the same position.
//! - `fmp4/`   `init.mp4` (MAP) and `seg_000.m4s`..`seg_005.m4s`, MSN 0..5.
//! - `single/` `all.ts` with one `BYTERANGE` per segment (`index.m3u8`, every range with
//!   `@offset`); `nooff.m3u8` is the same with no `@offset` after the first range. `all.ts` is
//!   byte for byte [`Streams::plain_ts`].
//! - `mv/`     `master.m3u8`: variants `hi/index.m3u8` (160x120) and `lo/index.m3u8` (80x60,
//!   a second encode, so the two differ in bytes), video only, each `AUDIO="group_aud"` (ffmpeg's
//!   name for `agroup:aud`), the higher BANDWIDTH on `hi`; the rendition `audio/index.m3u8`
//!   (7 segments, the last 0.05 s). No CODECS, no AVERAGE-BANDWIDTH.
//! - `srv/`    encrypted fMP4 made with openssl: MAP `init.mp4` (clear, listed before any KEY),
//!   `s7.m4s`..`s12.m4s`, MSN 7..12; KEY tags without `IV` (the IV is the MSN): `k1.key` for
//!   MSN 7-8, `k2.key` for 9-10, `METHOD=NONE` from MSN 11 (11-12 clear).
//! - `tsenc/`  the same over the TS of `vod/`, without MAP: `s7.ts`..`s12.ts`, `k1.key`,
//!   `k2.key`, the same MSNs, keys and clear tail.
//! - `subs/`   `master.m3u8`: the video `out_0.m3u8` (2 s segments) with a SUBTITLES group,
//!   `out_0_vtt.m3u8`: ffmpeg's WebVTT segments of [`SRT`] (`out_00.vtt`.., each with its own
//!   `WEBVTT` header).
//!
//! `src.mp4` and `lo.mp4` (the encodes) are in the root too. Keys are 16 random bytes, new in
//! every process. Debian's ffmpeg reads local playlists with keys only with
//! `-allowed_extensions ALL`. This module serves nothing (serve [`Streams::root`] with
//! [`crate::Nginx`]) and emulates a live stream only by [`Streams::live_window`] rewrites;
//! faults are the proxy's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The first media sequence number of `enc/`, `srv/` and `tsenc/`.
const FIRST_MSN: u64 = 7;

/// The HLS test streams of this process (see the module docs for what is where).
#[derive(Debug)]
pub struct Streams {
    /// The folder holding `vod/`, `enc/`, `fmp4/`, `single/`, `mv/`, `srv/`, `tsenc/` and `subs/`.
    pub root: PathBuf,
    /// `vod/`'s `EXT-X-TARGETDURATION`.
    target_duration: String,
    /// `vod/`'s segments in order: (EXTINF value, file name).
    vod: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

/// The streams, made on the first call in this process (a second or two) and kept until it
/// exits; the folder (about 1 MB) is not removed then, as statics are never dropped. Panics, naming what failed, if ffmpeg or openssl is missing or fails.
pub fn streams() -> &'static Streams {
    static STREAMS: OnceLock<Streams> = OnceLock::new();
    STREAMS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("ferry-hls")
            .tempdir()
            .expect("temporary folder for the HLS streams");
        let root = dir.path().to_path_buf();
        build(&root);
        let playlist = read_text(&root.join("vod/index.m3u8"));
        let target_duration = playlist
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
            .expect("TARGETDURATION in vod/index.m3u8")
            .trim()
            .to_owned();
        let mut vod = Vec::new();
        let mut extinf = None;
        for line in playlist.lines() {
            if let Some(v) = line.strip_prefix("#EXTINF:") {
                extinf = Some(v.trim_end_matches(',').to_owned());
            } else if !line.is_empty() && !line.starts_with('#') {
                let d = extinf.take().expect("EXTINF before each segment of vod/");
                vod.push((d, line.to_owned()));
            }
        }
        Streams {
            root,
            target_duration,
            vod,
            _dir: dir,
        }
    })
}

impl Streams {
    /// The number of segments of `vod/` (6).
    pub fn segment_count(&self) -> usize {
        self.vod.len()
    }

    /// What `vod/`, `enc/`, `single/` and `tsenc/` download to: `vod/seg_*.ts` concatenated.
    pub fn plain_ts(&self) -> Vec<u8> {
        let vod = self.root.join("vod");
        self.vod
            .iter()
            .flat_map(|(_, name)| read_bytes(&vod.join(name)))
            .collect()
    }

    /// What `fmp4/` and `srv/` download to: `fmp4/init.mp4`, then `fmp4/seg_*.m4s` in order.
    pub fn plain_fmp4(&self) -> Vec<u8> {
        concat_segments(&self.root.join("fmp4"), Some("init.mp4"), ".m4s")
    }

    /// What the media playlist `mv/NAME/index.m3u8` downloads to (`hi`, `lo` or `audio`):
    /// `mv/NAME/seg_*.ts` concatenated.
    pub fn plain_variant(&self, name: &str) -> Vec<u8> {
        concat_segments(&self.root.join("mv").join(name), None, ".ts")
    }

    /// Writes `dir/index.m3u8`, a live media playlist (no PLAYLIST-TYPE) of `count` segments of
    /// `vod/` from index `first`, with `EXT-X-MEDIA-SEQUENCE:media_sequence`, `vod/`'s
    /// TARGETDURATION and EXTINFs, and `EXT-X-ENDLIST` if `endlist`. The segment of MSN `n` is
    /// `dir/seg_%05d.ts` (n), a hard link to (or copy of) its `vod/` file. Both the playlist and
    /// each segment are replaced atomically (temporary file, rename), so a server reading `dir`
    /// never sees half of one. Segments that leave the window stay; delete them to emulate expiry.
    pub fn live_window(
        &self,
        dir: &Path,
        first: usize,
        count: usize,
        media_sequence: u64,
        endlist: bool,
    ) {
        assert!(
            first + count <= self.vod.len(),
            "live_window: segments {first}..{} of {} in vod/",
            first + count,
            self.vod.len()
        );
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("live_window: create {}: {e}", dir.display()));
        let mut m3u8 = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:{media_sequence}\n",
            self.target_duration
        );
        for (i, (extinf, name)) in self.vod[first..first + count].iter().enumerate() {
            let seg = format!("seg_{:05}.ts", media_sequence + i as u64);
            let tmp = dir.join(format!(".{seg}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            let src = self.root.join("vod").join(name);
            if std::fs::hard_link(&src, &tmp).is_err() {
                std::fs::copy(&src, &tmp)
                    .unwrap_or_else(|e| panic!("live_window: copy {}: {e}", src.display()));
            }
            std::fs::rename(&tmp, dir.join(&seg))
                .unwrap_or_else(|e| panic!("live_window: rename to {seg}: {e}"));
            // rename() does nothing when both names are links to one file: drop the spare link.
            let _ = std::fs::remove_file(&tmp);
            let _ = write!(m3u8, "#EXTINF:{extinf},\n{seg}\n");
        }
        if endlist {
            m3u8.push_str("#EXT-X-ENDLIST\n");
        }
        let tmp = dir.join(".index.m3u8.tmp");
        write_file(&tmp, m3u8.as_bytes());
        std::fs::rename(&tmp, dir.join("index.m3u8"))
            .unwrap_or_else(|e| panic!("live_window: rename playlist in {}: {e}", dir.display()));
    }
}

/// ffprobe's reading of a media file's duration, in seconds.
pub fn duration_seconds(path: &Path) -> Result<f64, String> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .map_err(|e| format!("run ffprobe: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|_| {
        format!(
            "ffprobe {}: {text:?} ({})",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// ffmpeg's per-stream SHA-256 of what it reads from `input` (a playlist or a media file):
/// `ffmpeg -v error EXTRA_IN... -i INPUT -map 0 -c copy -f streamhash -hash sha256 -`, its
/// stdout (a line per stream). Panics with ffmpeg's stderr if it fails. Pass
/// `-allowed_extensions ALL` in `extra_in` for a local playlist with keys. Compare TS with TS
/// and fMP4 with fMP4 only: the video bitstreams differ (Annex B, AVCC).
pub fn streamhash(input: &str, extra_in: &[&str]) -> String {
    require_tools();
    let mut args = vec!["-nostdin", "-v", "error"];
    args.extend_from_slice(extra_in);
    args.extend(["-i", input]);
    args.extend("-map 0 -c copy -f streamhash -hash sha256 -".split_whitespace());
    let out = run(None, "ffmpeg", &args);
    String::from_utf8(out).expect("streamhash output is UTF-8")
}

/// The x264 settings of both encodes: a keyframe every 10 frames (1 s), no scene cuts.
const X264: &str =
    "-c:v libx264 -preset ultrafast -g 10 -keyint_min 10 -sc_threshold 0 -pix_fmt yuv420p";
/// The HLS muxer settings of every ffmpeg-made stream: 1 s segments, a VOD playlist.
const HLS: &str = "-c copy -f hls -hls_time 1 -hls_playlist_type vod";

/// Makes every stream under `root`.
fn build(root: &Path) {
    require_tools();
    // `ffmpeg ARGS... TAIL...` in `root`: ARGS split at spaces, TAIL (which may hold spaces) as is.
    let ff = |args: &str, tail: &[&str]| {
        let mut all = vec!["-nostdin", "-v", "error", "-y"];
        all.extend(args.split_whitespace());
        all.extend_from_slice(tail);
        run(Some(root), "ffmpeg", &all);
    };
    ff(
        &format!(
            "-f lavfi -i testsrc=size=160x120:rate=10 -f lavfi -i sine=frequency=440:sample_rate=22050 \
             -t 6 {X264} -c:a aac -b:a 32k -shortest src.mp4"
        ),
        &[],
    );
    // The low variant of mv/: a second encode, so that it differs from hi in bytes.
    ff(
        &format!("-i src.mp4 -map 0:v -vf scale=80:60 {X264} lo.mp4"),
        &[],
    );
    for d in ["vod", "enc", "fmp4", "single", "mv", "srv", "tsenc", "subs"] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    }
    ff(
        &format!("-i src.mp4 {HLS} -hls_segment_filename vod/seg_%03d.ts vod/index.m3u8"),
        &[],
    );

    write_file(&root.join("enc/enc.key"), &random_key());
    write_file(&root.join("enc/keyinfo"), b"enc.key\nenc/enc.key\n");
    ff(
        &format!(
            "-i src.mp4 {HLS} -hls_key_info_file enc/keyinfo -hls_flags periodic_rekey \
             -start_number {FIRST_MSN} -hls_segment_filename enc/seg_%03d.ts enc/index.m3u8"
        ),
        &[],
    );

    ff(
        &format!(
            "-i src.mp4 {HLS} -hls_segment_type fmp4 -hls_fmp4_init_filename init.mp4 \
             -hls_segment_filename fmp4/seg_%03d.m4s fmp4/index.m3u8"
        ),
        &[],
    );

    ff(
        &format!(
            "-i src.mp4 {HLS} -hls_flags single_file -hls_segment_filename single/all.ts \
             single/index.m3u8"
        ),
        &[],
    );
    let single = read_text(&root.join("single/index.m3u8"));
    let nooff = drop_offsets(&single);
    write_file(&root.join("single/nooff.m3u8"), nooff.as_bytes());

    ff(
        &format!(
            "-i src.mp4 -i lo.mp4 -map 0:v -map 1:v -map 0:a {HLS} -master_pl_name master.m3u8"
        ),
        &[
            "-var_stream_map",
            "v:0,agroup:aud,name:hi v:1,agroup:aud,name:lo \
             a:0,agroup:aud,name:audio,default:yes,language:en",
            "-hls_segment_filename",
            "mv/%v/seg_%03d.ts",
            "mv/%v/index.m3u8",
        ],
    );
    let master = root.join("mv/master.m3u8");
    write_file(&master, fix_master(&read_text(&master)).as_bytes());

    encrypt_copy(root, "fmp4", "srv", Some("init.mp4"));
    encrypt_copy(root, "vod", "tsenc", None);

    // subs/: ffmpeg's WebVTT segments of an SRT, beside a video, and a master naming both.
    write_file(&root.join("subs/subs.srt"), SRT.as_bytes());
    ff(
        "-i src.mp4 -i subs/subs.srt -map 0:v -map 1:s -c:v copy -c:s webvtt -f hls \
         -hls_time 2 -hls_playlist_type vod",
        &[
            "-var_stream_map",
            "v:0,s:0,sgroup:subs",
            "-hls_segment_filename",
            "subs/v%v_%03d.ts",
            "subs/out_%v.m3u8",
        ],
    );
    write_file(
        &root.join("subs/master.m3u8"),
        b"#EXTM3U\n\
          #EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"English\",LANGUAGE=\"en\",\
          URI=\"out_0_vtt.m3u8\"\n\
          #EXT-X-STREAM-INF:BANDWIDTH=300000,SUBTITLES=\"subs\"\nout_0.m3u8\n",
    );
}

/// The subtitles of `subs/`: the second cue crosses the 2 s segment boundary.
pub const SRT: &str = "1\n00:00:00,500 --> 00:00:01,500\nFirst line\n\n\
    2\n00:00:01,800 --> 00:00:02,600\nAcross a boundary\n\n\
    3\n00:00:03,000 --> 00:00:04,000\nThird\n\n\
    4\n00:00:04,500 --> 00:00:05,500\nFourth\n";

/// The cue texts of [`SRT`], in order.
pub const SRT_TEXTS: [&str; 4] = ["First line", "Across a boundary", "Third", "Fourth"];

/// `single/nooff.m3u8` from `single/index.m3u8`: every `BYTERANGE` after the first without
/// its `@offset`.
fn drop_offsets(playlist: &str) -> String {
    let mut seen = false;
    let mut out = String::new();
    for line in playlist.lines() {
        match line.strip_prefix("#EXT-X-BYTERANGE:") {
            Some(range) if seen => {
                let len = range.split('@').next().unwrap_or(range);
                let _ = writeln!(out, "#EXT-X-BYTERANGE:{len}");
            }
            Some(_) => {
                seen = true;
                let _ = writeln!(out, "{line}");
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

/// ffmpeg's master playlist of `mv/`, with the variants told apart: `hi` (160x120) keeps its
/// BANDWIDTH, `lo` (80x60) gets half of it unless ffmpeg gave it less already, and each gets a
/// RESOLUTION if ffmpeg wrote none.
fn fix_master(master: &str) -> String {
    let lines: Vec<&str> = master.lines().collect();
    let inf_of = |uri: &str| {
        lines
            .iter()
            .position(|l| l.trim() == uri)
            .and_then(|i| i.checked_sub(1))
            .filter(|&i| lines[i].starts_with("#EXT-X-STREAM-INF:"))
            .unwrap_or_else(|| panic!("mv/master.m3u8: no STREAM-INF for {uri}:\n{master}"))
    };
    let bandwidth = |i: usize| -> u64 {
        attr(lines[i], "BANDWIDTH")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("mv/master.m3u8: no BANDWIDTH in {}", lines[i]))
    };
    let (hi, lo) = (inf_of("hi/index.m3u8"), inf_of("lo/index.m3u8"));
    let (hi_bw, lo_bw) = (bandwidth(hi), bandwidth(lo));
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    if lo_bw >= hi_bw {
        out[lo] = out[lo].replace(
            &format!("BANDWIDTH={lo_bw}"),
            &format!("BANDWIDTH={}", hi_bw / 2),
        );
    }
    for (i, res) in [(hi, "160x120"), (lo, "80x60")] {
        if attr(&out[i], "RESOLUTION").is_none() {
            out[i].push_str(&format!(",RESOLUTION={res}"));
        }
    }
    out.join("\n") + "\n"
}

/// The value of attribute `name` of a tag line (unquoted ones; enough for BANDWIDTH and
/// RESOLUTION).
fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (_, list) = line.split_once(':')?;
    list.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// `dst/` from `src/`'s media playlist, as a server encrypting with openssl would make it:
/// MSN from [`FIRST_MSN`], KEY tags without IV (so the IV is the MSN), `k1.key` for the first
/// two segments, `k2.key` for the next two, `METHOD=NONE` for the rest (left clear); `map`,
/// if any, copied clear and listed before the first KEY.
fn encrypt_copy(root: &Path, src: &str, dst: &str, map: Option<&str>) {
    let (src_dir, dst_dir) = (root.join(src), root.join(dst));
    let segments = media_segments(&read_text(&src_dir.join("index.m3u8")));
    assert!(
        segments.len() >= 5,
        "{src}/ has {} segments; the key layout wants 5 or more",
        segments.len()
    );
    let keys = [random_key(), random_key()];
    write_file(&dst_dir.join("k1.key"), &keys[0]);
    write_file(&dst_dir.join("k2.key"), &keys[1]);
    let mut m3u8 = format!(
        "#EXTM3U\n#EXT-X-VERSION:{}\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{FIRST_MSN}\n",
        if map.is_some() { 7 } else { 3 }
    );
    if let Some(map) = map {
        std::fs::copy(src_dir.join(map), dst_dir.join(map))
            .unwrap_or_else(|e| panic!("copy {src}/{map}: {e}"));
        let _ = writeln!(m3u8, "#EXT-X-MAP:URI=\"{map}\"");
    }
    for (i, (extinf, name)) in segments.iter().enumerate() {
        let msn = FIRST_MSN + i as u64;
        let ext = Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .expect("segment extension");
        let out = format!("s{msn}.{ext}");
        match i {
            0 => m3u8.push_str("#EXT-X-KEY:METHOD=AES-128,URI=\"k1.key\"\n"),
            2 => m3u8.push_str("#EXT-X-KEY:METHOD=AES-128,URI=\"k2.key\"\n"),
            4 => m3u8.push_str("#EXT-X-KEY:METHOD=NONE\n"),
            _ => {}
        }
        let (from, to) = (src_dir.join(name), dst_dir.join(&out));
        if i < 4 {
            let key = hex::encode(keys[i / 2]);
            let iv = format!("{msn:032x}");
            let (from, to) = (path_str(&from), path_str(&to));
            run(
                None,
                "openssl",
                &[
                    "aes-128-cbc",
                    "-K",
                    &key,
                    "-iv",
                    &iv,
                    "-in",
                    from,
                    "-out",
                    to,
                ],
            );
        } else {
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
        let _ = write!(m3u8, "#EXTINF:{extinf},\n{out}\n");
    }
    m3u8.push_str("#EXT-X-ENDLIST\n");
    write_file(&dst_dir.join("index.m3u8"), m3u8.as_bytes());
}

/// A media playlist's segments in order: (EXTINF value, URI).
fn media_segments(playlist: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut extinf = None;
    for line in playlist.lines() {
        if let Some(v) = line.strip_prefix("#EXTINF:") {
            extinf = Some(v.trim_end_matches(',').to_owned());
        } else if !line.is_empty() && !line.starts_with('#') {
            let d = extinf.take().expect("EXTINF before each segment");
            out.push((d, line.to_owned()));
        }
    }
    out
}

/// `first` (if any), then the files of `dir/index.m3u8`'s segments, which end in `ext`.
fn concat_segments(dir: &Path, first: Option<&str>, ext: &str) -> Vec<u8> {
    let segments = media_segments(&read_text(&dir.join("index.m3u8")));
    let mut out = first.map(|f| read_bytes(&dir.join(f))).unwrap_or_default();
    for (_, name) in segments {
        assert!(name.ends_with(ext), "{}: segment {name}", dir.display());
        out.extend(read_bytes(&dir.join(name)));
    }
    out
}

/// Panics with the fix if ffmpeg or openssl cannot be run.
fn require_tools() {
    for (tool, arg) in [("ffmpeg", "-version"), ("openssl", "version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{tool} not found or not working: the HLS test streams need it; run scripts/setup.sh"
        );
    }
}

/// Runs `prog ARGS` (in `cwd` if given) and returns its stdout; panics with its stderr if it
/// fails.
fn run(cwd: Option<&Path>, prog: &str, args: &[&str]) -> Vec<u8> {
    let mut c = Command::new(prog);
    c.args(args).stdin(Stdio::null());
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e} (run scripts/setup.sh)"));
    assert!(
        o.status.success(),
        "{prog} {} failed ({}): {}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// 16 random bytes from `openssl rand`.
fn random_key() -> [u8; 16] {
    run(None, "openssl", &["rand", "16"])
        .try_into()
        .expect("openssl rand 16 gives 16 bytes")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

fn read_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn write_file(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl aes-128-cbc -d` of `path` with `key` and `iv` (32 hex digits).
    fn decrypt(path: &Path, key: &[u8], iv: &str) -> Vec<u8> {
        run(
            None,
            "openssl",
            &[
                "aes-128-cbc",
                "-d",
                "-K",
                &hex::encode(key),
                "-iv",
                iv,
                "-in",
                path_str(path),
            ],
        )
    }

    /// A quoted attribute's value (`URI="..."`).
    fn quoted<'a>(line: &'a str, name: &str) -> Option<&'a str> {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        line[start..].split('"').next()
    }

    /// A segment as [`decrypt_playlist`] read it: MSN, the key file in force (`None`: clear),
    /// the bytes after decryption.
    type Segment = (u64, Option<String>, Vec<u8>);

    /// Walks a media playlist of `dir` as a client would (MSN, KEY in force, explicit or
    /// implicit IV, MAP) and returns the MAP's bytes if there is one, and its segments.
    fn decrypt_playlist(dir: &Path) -> (Option<Vec<u8>>, Vec<Segment>) {
        let text = read_text(&dir.join("index.m3u8"));
        let mut msn = 0;
        let mut key: Option<(String, Option<String>)> = None;
        let mut map = None;
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                msn = v.trim().parse().expect("MEDIA-SEQUENCE");
            } else if let Some(rest) = line.strip_prefix("#EXT-X-KEY:") {
                key = if rest.contains("METHOD=NONE") {
                    None
                } else {
                    assert!(rest.contains("METHOD=AES-128"), "{line}");
                    let uri = quoted(line, "URI").expect("key URI").to_owned();
                    let iv = attr(line, "IV").map(|v| {
                        let v = v.trim_start_matches("0x").trim_start_matches("0X");
                        format!("{v:0>32}")
                    });
                    Some((uri, iv))
                };
            } else if line.starts_with("#EXT-X-MAP:") {
                assert!(key.is_none(), "MAP under a key in {}", dir.display());
                map = Some(read_bytes(&dir.join(quoted(line, "URI").expect("MAP URI"))));
            } else if !line.is_empty() && !line.starts_with('#') {
                let path = dir.join(line);
                let bytes = match &key {
                    None => read_bytes(&path),
                    Some((uri, iv)) => {
                        let k = read_bytes(&dir.join(uri));
                        assert_eq!(k.len(), 16, "{uri}: a key is 16 bytes");
                        let iv = iv.clone().unwrap_or_else(|| format!("{msn:032x}"));
                        let plain = decrypt(&path, &k, &iv);
                        assert_ne!(plain, read_bytes(&path), "{line} is not encrypted");
                        plain
                    }
                };
                out.push((msn, key.as_ref().map(|(u, _)| u.clone()), bytes));
                msn += 1;
            }
        }
        (map, out)
    }

    fn vod_segments(s: &Streams) -> Vec<Vec<u8>> {
        s.vod
            .iter()
            .map(|(_, n)| read_bytes(&s.root.join("vod").join(n)))
            .collect()
    }

    #[test]
    fn hls_enc_decrypts_to_vod_segment_by_segment() {
        let s = streams();
        let playlist = read_text(&s.root.join("enc/index.m3u8"));
        assert_eq!(
            playlist.matches("#EXT-X-KEY:").count(),
            s.segment_count(),
            "periodic_rekey: a KEY per segment:\n{playlist}"
        );
        assert!(playlist.contains(",IV=0x"), "{playlist}");
        let (map, segs) = decrypt_playlist(&s.root.join("enc"));
        assert!(map.is_none());
        let vod = vod_segments(s);
        assert_eq!(segs.len(), vod.len(), "enc/ and vod/ segment counts");
        for (i, ((msn, key, plain), want)) in segs.iter().zip(&vod).enumerate() {
            assert_eq!(*msn, FIRST_MSN + i as u64);
            assert_eq!(key.as_deref(), Some("enc.key"));
            assert!(plain == want, "enc/ MSN {msn} decrypts to vod/ segment {i}");
        }
    }

    #[test]
    fn hls_single_file_is_vod_concatenated() {
        let s = streams();
        let all = read_bytes(&s.root.join("single/all.ts"));
        assert!(all == s.plain_ts(), "single/all.ts == vod/seg_*.ts");
        let (vod, index) = (
            vod_segments(s),
            read_text(&s.root.join("single/index.m3u8")),
        );
        let ranges: Vec<(usize, usize)> = index
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-BYTERANGE:"))
            .map(|r| {
                let (n, o) = r.split_once('@').expect("offset in index.m3u8");
                (n.parse().expect("length"), o.parse().expect("offset"))
            })
            .collect();
        assert_eq!(ranges.len(), vod.len());
        for (i, (n, o)) in ranges.iter().enumerate() {
            assert!(all[*o..o + n] == vod[i], "range {i} is vod/ segment {i}");
        }
        let nooff = read_text(&s.root.join("single/nooff.m3u8"));
        let noff: Vec<&str> = nooff
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-BYTERANGE:"))
            .collect();
        assert_eq!(noff.len(), ranges.len());
        assert_eq!(noff[0], format!("{}@0", ranges[0].0));
        for (r, (n, _)) in noff[1..].iter().zip(&ranges[1..]) {
            assert_eq!(*r, n.to_string(), "no offset after the first range");
        }
    }

    #[test]
    fn hls_openssl_streams_decrypt_to_plaintext() {
        let s = streams();
        // k1 for MSN 7-8, k2 for 9-10, clear (METHOD=NONE) from 11.
        let keys = ["k1.key", "k1.key", "k2.key", "k2.key"];
        for (dir, plain, has_map) in [
            ("srv", s.plain_fmp4(), true),
            ("tsenc", s.plain_ts(), false),
        ] {
            let (map, segs) = decrypt_playlist(&s.root.join(dir));
            assert_eq!(map.is_some(), has_map, "{dir}: MAP");
            assert_eq!(segs.len(), s.segment_count(), "{dir}: segments");
            let mut got = map.unwrap_or_default();
            for (i, (msn, key, bytes)) in segs.into_iter().enumerate() {
                assert_eq!(msn, FIRST_MSN + i as u64, "{dir}: MSN");
                assert_eq!(key.as_deref(), keys.get(i).copied(), "{dir}: key of {msn}");
                got.extend(bytes);
            }
            assert!(got == plain, "{dir}/ decrypts to its plaintext");
        }
        assert_ne!(
            read_bytes(&s.root.join("srv/k1.key")),
            read_bytes(&s.root.join("srv/k2.key")),
            "rotation to a different key"
        );
    }

    #[test]
    fn hls_ffmpeg_reads_the_encrypted_streams_as_the_clear_ones() {
        let s = streams();
        let p = |d: &str| path_str(&s.root.join(d).join("index.m3u8")).to_owned();
        let all = ["-allowed_extensions", "ALL"];
        let (vod, fmp4) = (streamhash(&p("vod"), &[]), streamhash(&p("fmp4"), &[]));
        assert_eq!(vod.lines().count(), 2, "a video and an audio stream: {vod}");
        for d in ["enc", "tsenc"] {
            assert_eq!(streamhash(&p(d), &all), vod, "{d}/ vs vod/");
        }
        assert_eq!(streamhash(&p("srv"), &all), fmp4, "srv/ vs fmp4/");
        assert_ne!(vod, fmp4, "TS and fMP4 hashes differ (Annex B vs AVCC)");
    }

    #[test]
    fn hls_mv_variants_differ() {
        let s = streams();
        let master = read_text(&s.root.join("mv/master.m3u8"));
        let inf = |uri: &str| {
            let lines: Vec<&str> = master.lines().collect();
            let i = lines
                .iter()
                .position(|l| *l == uri)
                .expect("variant listed");
            lines[i - 1].to_owned()
        };
        let (hi, lo) = (inf("hi/index.m3u8"), inf("lo/index.m3u8"));
        let bw = |l: &str| -> u64 { attr(l, "BANDWIDTH").expect("BANDWIDTH").parse().expect("n") };
        assert!(bw(&hi) > bw(&lo), "hi has the higher BANDWIDTH:\n{master}");
        assert_eq!(attr(&hi, "RESOLUTION"), Some("160x120"));
        assert_eq!(attr(&lo, "RESOLUTION"), Some("80x60"));
        assert!(master.contains("GROUP-ID=\"group_aud\""), "{master}");
        assert!(s.plain_variant("hi") != s.plain_variant("lo"));
        assert!(!s.plain_variant("audio").is_empty());
    }

    #[test]
    fn hls_live_window_slides() {
        let s = streams();
        let dir = tempfile::tempdir().expect("tmp");
        let vod = vod_segments(s);
        s.live_window(dir.path(), 1, 3, 100, false);
        let text = read_text(&dir.path().join("index.m3u8"));
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:100\n"), "{text}");
        assert!(text.contains("#EXT-X-TARGETDURATION:1\n"), "{text}");
        assert!(!text.contains("ENDLIST"), "{text}");
        let listed: Vec<_> = media_segments(&text).into_iter().map(|(_, n)| n).collect();
        assert_eq!(listed, ["seg_00100.ts", "seg_00101.ts", "seg_00102.ts"]);
        s.live_window(dir.path(), 2, 4, 101, true);
        let text = read_text(&dir.path().join("index.m3u8"));
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
        for (msn, seg) in (100..105).zip(&vod[1..]) {
            let got = read_bytes(&dir.path().join(format!("seg_{msn:05}.ts")));
            assert!(got == *seg, "seg_{msn:05}.ts is its vod/ segment");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names.len(),
            6,
            "5 segments and the playlist, no temporaries: {names:?}"
        );
    }
}
