//! The `hls-80` suite (issue 32's target) and its AES-128 twin `hls-80-aes`: a VOD HLS stream
//! (RFC 8216) of 2 s MPEG-TS segments, one hour of media by default (some 1,800 segments, about
//! 2 GB), from nginx behind the test kit's relay on the `wan-80` path (80 ms round trip, 40 MB/s
//! per flow, a 400 MB/s link), downloaded in turn, round by round, by `ferry get URL.m3u8`,
//! yt-dlp's native HLS downloader with 16 concurrent fragments, and `ffmpeg -i URL -c copy`.
//!
//! The stream is made by Debian's ffmpeg without re-encoding the hour: a 20 s source (testsrc2,
//! 1280x720 at 30 fps, H.264 by libx264 ultrafast at 4000 kbit/s with a keyframe every 2 s, AAC
//! at 128 kbit/s) looped with `-stream_loop -1 -c copy` into the HLS muxer. `hls-80-aes` serves
//! the same segments encrypted by openssl (AES-128-CBC, one key, the IV the media sequence
//! number, as RFC 8216 5.2 says when a KEY tag has no IV), so both suites download to the same
//! plaintext: the plain segments concatenated in playlist order. The stream is made once per
//! process in the scratch folder, or kept between runs in `FERRY_BENCH_HLS_CACHE`, in a folder
//! named after its parameters; its length is `FERRY_BENCH_HLS_SECONDS` (3600 by default; a smoke
//! run uses 120).
//!
//! Every ferry and yt-dlp output is compared by sha256 with the plaintext after its run, outside
//! the timing (ferry checks no digest of a stream by itself): a wrong byte stops the benchmark.
//! ffmpeg remuxes, so its output is other bytes; it is checked by ffprobe's duration against
//! the playlist's. ferry fsyncs; yt-dlp and ffmpeg are followed by `sync FILE` inside the
//! timing. The relay counts the connections and bytes of every run (ffmpeg's keep-alive and
//! yt-dlp's connection reuse, in the report's notes).
//!
//! It asserts nothing about speed: the targets are read off the report. nginx and the relay are
//! stopped when the suite ends, also on an error.

use std::fmt::Write as _;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use ferry_testkit::Nginx;
use ferry_testkit::relay::{Relay, WanPath};
use sha2::Digest;

use crate::report::{Target, spread};
use crate::{Args, FailedRun, Filler, LeftOut, Sample, SuiteResult, Timed, Tool, sh, timed, wan};

/// The plain-TS suite.
pub(crate) const SUITE: &str = "hls-80";
/// The same stream encrypted with AES-128.
pub(crate) const AES: &str = "hls-80-aes";
/// Both, in the order they run.
pub(crate) const SUITES: [&str; 2] = [SUITE, AES];

/// The WAN suite whose path this suite's relay emulates.
const PATH_OF: &str = "wan-80";
/// Seconds of media when `FERRY_BENCH_HLS_SECONDS` is not set (issue 32: one hour).
const SECONDS: u64 = 3600;
/// The source that is looped, in seconds (a whole number of 2 s GOPs).
const SOURCE_SECONDS: u64 = 20;
/// The encode of the source: 1280x720 at 30 fps, a keyframe every 60 frames (2 s), no scene
/// cuts, a constant 4000 kbit/s of video; AAC 128 kbit/s. One x264 thread: the same bytes on
/// every run (with several, rate control makes slightly different ones).
const ENCODE: &str = "-f lavfi -i testsrc2=size=1280x720:rate=30 \
                      -f lavfi -i sine=frequency=440:sample_rate=48000 \
                      -c:v libx264 -threads 1 -preset ultrafast -b:v 4000k -minrate 4000k \
                      -maxrate 4000k -bufsize 8000k -g 60 -keyint_min 60 -sc_threshold 0 \
                      -pix_fmt yuv420p -c:a aac -b:a 128k -shortest";
/// Bumped whenever the stream's recipe changes, so that a kept stream is made again.
const RECIPE: u32 = 2;

pub(crate) const FERRY: &str = "ferry";
pub(crate) const YTDLP: &str = "yt-dlp -N 16";
pub(crate) const FFMPEG: &str = "ffmpeg -c copy";

/// The output file of every row, in its run's folder.
const OUT_FILE: &str = "out.ts";

/// One stream, made and hashed.
struct Stream {
    /// The folder nginx serves: `plain/` and, when made, `aes/`.
    root: PathBuf,
    /// Segments, in playlist order.
    segments: usize,
    /// Seconds of media (the sum of the EXTINFs).
    seconds: f64,
    /// The plaintext's bytes and sha256: the plain segments concatenated.
    bytes: u64,
    sha256: String,
}

/// The stream's length in seconds: `FERRY_BENCH_HLS_SECONDS`, else an hour.
fn stream_seconds() -> anyhow::Result<u64> {
    match std::env::var("FERRY_BENCH_HLS_SECONDS") {
        Ok(v) => {
            let s: u64 = v
                .trim()
                .parse()
                .with_context(|| format!("FERRY_BENCH_HLS_SECONDS={v:?}"))?;
            if s < 4 {
                bail!("FERRY_BENCH_HLS_SECONDS is at least 4 (two segments)");
            }
            Ok(s)
        }
        Err(_) => Ok(SECONDS),
    }
}

/// `ffmpeg -nostdin -v error -y ARGS...` in `dir` (ARGS split at spaces).
fn ffmpeg(dir: &Path, args: &str) -> anyhow::Result<()> {
    let out = Command::new("ffmpeg")
        .current_dir(dir)
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args.split_whitespace())
        .output()
        .context("run ffmpeg (scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "ffmpeg {args}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The media segments of a media playlist, in order, with the sum of their EXTINFs.
fn segments_of(playlist: &str) -> (Vec<String>, f64) {
    let mut names = Vec::new();
    let mut seconds = 0.0;
    for line in playlist.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("#EXTINF:") {
            seconds += v
                .split(',')
                .next()
                .and_then(|d| d.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        } else if !line.is_empty() && !line.starts_with('#') {
            names.push(line.to_owned());
        }
    }
    (names, seconds)
}

/// `playlist` with one `EXT-X-KEY` (AES-128, `uri`, no IV) before its first segment.
fn with_key(playlist: &str, uri: &str) -> String {
    let mut out = String::new();
    let mut keyed = false;
    for line in playlist.lines() {
        if !keyed && line.starts_with("#EXTINF:") {
            let _ = writeln!(out, "#EXT-X-KEY:METHOD=AES-128,URI=\"{uri}\"");
            keyed = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The AES key of `hls-80-aes`: fixed, so that a kept stream stays valid (a test key, not a
/// secret).
fn aes_key() -> [u8; 16] {
    let d = sha2::Sha256::digest(b"ferry-bench hls-80-aes key");
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// Makes (or finds, made before) the stream of `seconds` under `cache`, its AES-128 copy too
/// with `aes`, and hashes the plaintext (which leaves the segments in the page cache, as the
/// other suites' origins are).
fn stream(cache: &Path, seconds: u64, aes: bool) -> anyhow::Result<Stream> {
    let root = cache.join(format!("hls-{seconds}s-r{RECIPE}"));
    let plain = root.join("plain");
    if !plain.join(".done").exists() {
        eprintln!(
            "== hls: making {seconds} s of 2 s TS segments in {} ...",
            root.display()
        );
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&plain)?;
        ffmpeg(&root, &format!("{ENCODE} -t {SOURCE_SECONDS} src.mp4"))?;
        ffmpeg(
            &root,
            &format!(
                "-stream_loop -1 -i src.mp4 -t {seconds} -map 0 -c copy -f hls -hls_time 2 \
                 -hls_playlist_type vod -hls_segment_filename plain/seg_%05d.ts plain/index.m3u8"
            ),
        )?;
        std::fs::write(plain.join(".done"), b"")?;
    }
    let playlist = std::fs::read_to_string(plain.join("index.m3u8"))?;
    let (names, media) = segments_of(&playlist);
    if names.is_empty() || !playlist.contains("#EXT-X-ENDLIST") {
        bail!("{}: no complete VOD playlist", plain.display());
    }
    if aes && !root.join("aes/.done").exists() {
        eprintln!("== hls: encrypting {} segments (AES-128) ...", names.len());
        let dir = root.join("aes");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let key = aes_key();
        std::fs::write(dir.join("key.bin"), key)?;
        let first: u64 = playlist
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
            .map_or(Ok(0), |v| v.trim().parse())
            .context("EXT-X-MEDIA-SEQUENCE")?;
        for (i, name) in names.iter().enumerate() {
            let msn = first + i as u64;
            let out = Command::new("openssl")
                .args(["enc", "-aes-128-cbc", "-K", &hex::encode(key), "-iv"])
                .arg(format!("{msn:032x}"))
                .arg("-in")
                .arg(plain.join(name))
                .arg("-out")
                .arg(dir.join(name))
                .output()
                .context("run openssl")?;
            if !out.status.success() {
                bail!(
                    "openssl enc {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        std::fs::write(dir.join("index.m3u8"), with_key(&playlist, "key.bin"))?;
        std::fs::write(dir.join(".done"), b"")?;
    }
    eprintln!(
        "== hls: hashing the plaintext ({} segments) ...",
        names.len()
    );
    let mut h = sha2::Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for name in &names {
        let mut f = std::fs::File::open(plain.join(name))
            .with_context(|| format!("open {}", plain.join(name).display()))?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            bytes += n as u64;
        }
    }
    if aes {
        // The origin serves the ciphertext: read once, as the plaintext was.
        for name in &names {
            std::io::copy(
                &mut std::fs::File::open(root.join("aes").join(name))?,
                &mut std::io::sink(),
            )?;
        }
    }
    Ok(Stream {
        root,
        segments: names.len(),
        seconds: media,
        bytes,
        sha256: hex::encode(h.finalize()),
    })
}

/// The rows: ferry, yt-dlp's native HLS downloader with 16 concurrent fragments (no fixup, so
/// its output is the segments concatenated), ffmpeg remuxing to MPEG-TS. Every line writes
/// `{OUT}/out.ts` and ends with it durable.
fn tools(ferry: &str, url: &str) -> Vec<Tool> {
    let out = format!("'{{OUT}}/{OUT_FILE}'");
    vec![
        Tool::new(FERRY, format!("{ferry} get '{url}' -o {out} --json")),
        Tool::new(
            YTDLP,
            format!(
                "python3 -m yt_dlp --ignore-config --no-cache-dir -q --no-warnings --no-progress \
                 --downloader m3u8:native -N 16 --fixup never --abort-on-unavailable-fragments \
                 -o {out} '{url}' && sync {out}"
            ),
        ),
        Tool::new(
            FFMPEG,
            format!(
                "ffmpeg -nostdin -v error -y -i '{url}' -map 0 -c copy -f mpegts {out} \
                 && sync {out}"
            ),
        ),
    ]
}

/// What ferry's `--json` says, checked against the stream: its back-end and the bytes it
/// fetched.
fn ferry_report(stdout: &str, s: &Stream, aes: bool) -> anyhow::Result<(String, u64)> {
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("ferry get --json printed {stdout:?}"))?;
    let track = &v["tracks"][0];
    let segments = track["segments"].as_u64().unwrap_or(0);
    let bytes = track["bytes"].as_u64().unwrap_or(0);
    let gaps = track["gaps"].as_array().map_or(usize::MAX, Vec::len);
    if segments != s.segments as u64 || bytes != s.bytes || gaps != 0 {
        bail!(
            "ferry reported {segments} segments, {bytes} bytes, {gaps} gaps; the stream has {} \
             segments, {} bytes",
            s.segments,
            s.bytes
        );
    }
    if aes && track["decrypted"].as_u64() != Some(segments) {
        bail!(
            "ferry decrypted {} of {segments} segments",
            track["decrypted"]
        );
    }
    let backend = match &v["backend"] {
        serde_json::Value::String(b) => b.clone(),
        other => other.to_string(),
    };
    let fetched = v["fetched_bytes"]
        .as_u64()
        .context("no fetched_bytes in ferry get --json")?;
    Ok((backend, fetched))
}

/// ffprobe's duration of `path`, in seconds.
fn probe_seconds(path: &Path) -> anyhow::Result<f64> {
    ferry_testkit::hls::duration_seconds(path).map_err(anyhow::Error::msg)
}

/// Checks a row's output: ferry's and yt-dlp's byte for byte against the plaintext, ffmpeg's
/// (a remux) by its duration against the playlist's (within a second and 0.1 %).
fn verify(suite: &str, tool: &str, out: &Path, s: &Stream) -> anyhow::Result<()> {
    let file = out.join(OUT_FILE);
    if tool == FFMPEG {
        let d = probe_seconds(&file).with_context(|| format!("{suite}: {tool}"))?;
        if (d - s.seconds).abs() > 1.0 + s.seconds / 1000.0 {
            bail!(
                "{suite}: {tool}: ffprobe says {d:.2} s of media, the playlist {:.2} s",
                s.seconds
            );
        }
        return Ok(());
    }
    if !file.exists() {
        bail!("{suite}: {tool} wrote no {}", file.display());
    }
    let got = ferry_testkit::sha256_file(&file);
    if got != s.sha256 {
        bail!(
            "{suite}: {tool}: the output differs from the plaintext (sha256 {got} != {}, {} \
             bytes against {})",
            s.sha256,
            std::fs::metadata(&file).map_or(0, |m| m.len()),
            s.bytes
        );
    }
    Ok(())
}

/// The first line of `cmd`'s stdout, or what it said went wrong.
fn first_line(cmd: &str) -> String {
    sh(cmd)
        .ok()
        .and_then(|o| o.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Why yt-dlp cannot run `suite` here, if it cannot.
fn ytdlp_missing(aes: bool) -> Option<String> {
    if sh("python3 -c 'import yt_dlp'").is_err() {
        return Some(
            "not installed (`python3 -m pip install \"yt-dlp[default]\"`; `scripts/setup.sh \
             --bench` installs it)"
                .into(),
        );
    }
    if aes && sh("python3 -c 'import Cryptodome'").is_err() {
        return Some(
            "pycryptodomex is not installed, so yt-dlp would decrypt AES-128 in pure Python \
             (minutes per GB); `scripts/setup.sh --bench` installs `yt-dlp[default]`, which \
             brings it"
                .into(),
        );
    }
    None
}

/// The request handlers yt-dlp says it has (`[debug] Request Handlers: ...`), from an untimed
/// `--simulate` of `url`, which also fails when yt-dlp cannot read the stream.
fn ytdlp_probe(url: &str) -> anyhow::Result<String> {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "yt_dlp",
        "--ignore-config",
        "--no-cache-dir",
        "-v",
        "--simulate",
        url,
    ]);
    ferry_testkit::env::scrub(&mut cmd);
    let out = cmd.output().context("run python3 -m yt_dlp")?;
    let said = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let last = said.lines().rev().find(|l| !l.trim().is_empty());
        bail!("{}", last.unwrap_or("failed").trim());
    }
    Ok(said
        .lines()
        .find_map(|l| l.strip_prefix("[debug] Request Handlers: "))
        .unwrap_or("not said")
        .trim()
        .to_owned())
}

pub(crate) fn run(suite: &str, args: &Args, scratch: &Path) -> anyhow::Result<SuiteResult> {
    let aes = suite == AES;
    let path: WanPath = wan::path(PATH_OF).context("the wan-80 path")?;
    let seconds = stream_seconds()?;
    let cache = std::env::var_os("FERRY_BENCH_HLS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| scratch.to_owned());
    std::fs::create_dir_all(&cache)?;
    let s = stream(&cache, seconds, aes)?;
    eprintln!(
        "== {suite}: {} segments, {:.0} s of media, {} bytes, sha256 {}",
        s.segments, s.seconds, s.bytes, s.sha256
    );
    let nginx = Nginx::try_start(&s.root, &Default::default()).map_err(anyhow::Error::msg)?;
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], nginx.port())), path)?;
    let url = format!(
        "http://{}/files/{}/index.m3u8",
        relay.addr(),
        if aes { "aes" } else { "plain" }
    );
    eprintln!("{suite}: {url} ({})", path.label());
    let ferry = ferry_testkit::ferry_bin().to_string_lossy().into_owned();
    let mut tools = tools(&ferry, &url);
    let mut left_out = Vec::new();
    let mut handlers = None;
    let unusable = match ytdlp_missing(aes) {
        Some(reason) => Some(reason),
        None => match ytdlp_probe(&url) {
            Ok(h) => {
                handlers = Some(h);
                None
            }
            Err(e) => Some(format!(
                "failed to read the stream in an untimed probe: {e:#}"
            )),
        },
    };
    if let Some(reason) = unusable {
        eprintln!("{suite}: {YTDLP} left out: {reason}");
        tools.retain(|t| t.name != YTDLP);
        left_out.push(LeftOut {
            tool: YTDLP.into(),
            reason,
        });
    }
    let mut outputs = crate::Outputs::new(scratch, suite)?;
    let filler = Filler::for_state(&args.state, scratch)?;
    let mut samples = Vec::new();
    let mut failed = Vec::new();
    // Per tool: (connections, bytes the relay carried down) of each reported run.
    let mut wire: Vec<(String, Vec<(f64, f64)>)> =
        tools.iter().map(|t| (t.name.clone(), Vec::new())).collect();
    for round in 0..=args.runs {
        for tool in &tools {
            let out = outputs.next()?.to_owned();
            if let Some(f) = &filler {
                f.top_up()?;
            }
            let line = tool.shell.replace("{OUT}", &out.to_string_lossy());
            let (conns, down) = (relay.connections(), relay.bytes_down());
            let Timed {
                wall,
                cpu,
                rss_kib,
                machine,
                stdout,
            } = match timed(&line) {
                Ok(t) => t,
                Err(e) if tool.is_peer() => {
                    let error = format!("{e:#}");
                    let last = error.lines().rev().find(|l| !l.trim().is_empty());
                    let error = last.unwrap_or("failed").trim().to_owned();
                    eprintln!("{suite} round {round} {:<16} FAILED: {error}", tool.name);
                    failed.push(FailedRun {
                        tool: tool.name.clone(),
                        round,
                        error,
                    });
                    continue;
                }
                Err(e) => return Err(e.context(format!("{suite}: {}", tool.name))),
            };
            let (conns, down) = (
                relay.connections() - conns,
                relay.bytes_down().saturating_sub(down),
            );
            verify(suite, &tool.name, &out, &s)?;
            let (backend, fetched) = if tool.name == FERRY {
                let (b, f) = ferry_report(&stdout, &s, aes).with_context(|| suite.to_owned())?;
                (Some(b), Some(f))
            } else {
                (None, None)
            };
            eprintln!(
                "{suite} round {round} {:<16} {wall:7.2} s {:6.3} GB/s {:.2} of the link cpu \
                 {cpu:6.2} s rss {:4} MiB, {conns} connections{}",
                tool.name,
                s.bytes as f64 / wall / 1e9,
                s.bytes as f64 / wall / path.link_rate.unwrap_or(1) as f64,
                rss_kib / 1024,
                if round == 0 { " (warm-up)" } else { "" }
            );
            if round == 0 {
                continue;
            }
            if let Some((_, w)) = wire.iter_mut().find(|(t, _)| *t == tool.name) {
                w.push((conns as f64, down as f64 / s.bytes as f64));
            }
            samples.push(Sample {
                tool: tool.name.clone(),
                round,
                wall,
                cpu,
                rss_kib,
                backend,
                bytes_fetched: fetched,
                tls: None,
                http: None,
                machine,
            });
        }
    }
    drop(relay);
    drop(nginx);
    drop(outputs);

    let mut r = SuiteResult::new(suite, s.bytes, s.segments, tools);
    r.notes = notes(suite, &s, path, handlers.as_deref(), &samples, &wire);
    r.targets = targets(path, aes);
    r.samples = samples;
    r.left_out = left_out;
    r.failed = failed;
    Ok(r)
}

/// What the stream and each tool are, ferry's share of the link round by round, and what the
/// relay saw of each tool's runs.
fn notes(
    suite: &str,
    s: &Stream,
    path: WanPath,
    handlers: Option<&str>,
    samples: &[Sample],
    wire: &[(String, Vec<(f64, f64)>)],
) -> Vec<String> {
    let link = path.link_rate.unwrap_or(1) as f64;
    let mut notes = vec![format!(
        "the stream: {:.0} s of media in {} MPEG-TS segments of 2 s, {} bytes ({:.2} Mbit/s): a \
         {SOURCE_SECONDS} s source (testsrc2 1280x720 at 30 fps, H.264 by libx264 ultrafast at \
         4000 kbit/s with a keyframe every 2 s, AAC 128 kbit/s) looped by ffmpeg with \
         `-stream_loop -1 -c copy -f hls -hls_time 2 -hls_playlist_type vod`{}; nginx on \
         127.0.0.1 behind the test kit's relay on the `{PATH_OF}` path ({} ms round trip, {} \
         MB/s per flow, {} MB/s link)",
        s.seconds,
        s.segments,
        s.bytes,
        s.bytes as f64 * 8.0 / s.seconds / 1e6,
        if suite == AES {
            "; every segment encrypted by openssl (AES-128-CBC, one key, `EXT-X-KEY` without IV: \
             the IV is the media sequence number); the figures count the plaintext's bytes"
        } else {
            ""
        },
        path.rtt.as_millis(),
        path.flow_rate.unwrap_or(0) / 1_000_000,
        path.link_rate.unwrap_or(0) / 1_000_000,
    )];
    notes.push(
        "`ferry`: `ferry get URL.m3u8 --json`, every segment over its kept-alive, pipelined \
         HTTP/1.1 connections (16 by default), written in order, fsynced and renamed into \
         place; its output is compared by sha256 with the plaintext (the plain segments \
         concatenated in playlist order) after each run"
            .into(),
    );
    notes.push(format!(
        "`{YTDLP}`: yt-dlp {} (PyPI; the request handlers it has: {}), its native HLS downloader \
         (`--downloader m3u8:native`) with 16 fragments at a time (`-N 16`), `--fixup never` so \
         that nothing remuxes its output: the segments concatenated, compared by sha256 with the \
         plaintext after each run; it writes each fragment to a file of its own, reads it back \
         and appends it; followed by `sync FILE` inside the timing",
        first_line("python3 -m yt_dlp --version 2>/dev/null"),
        handlers.unwrap_or("—")
    ));
    notes.push(format!(
        "`{FFMPEG}`: {} (Debian), its HLS demuxer reading one segment after another \
         (`http_persistent` and `http_multiple` at their defaults), remuxed to MPEG-TS (`-c copy \
         -f mpegts`): other bytes than the segments', so its output is checked by ffprobe's \
         duration against the playlist's (within 1 s and 0.1 %); followed by `sync FILE` inside \
         the timing. The relay's connection counts below say how many connections it kept \
         alive: it reuses one for plain `http` segments, but opens a new one for every \
         AES-128 segment (its `crypto+http` reads are not persistent)",
        first_line("ffmpeg -version 2>/dev/null")
            .split(" Copyright")
            .next()
            .unwrap_or("ffmpeg")
    ));
    let shares: Vec<String> = samples
        .iter()
        .filter(|x| x.tool == FERRY)
        .map(|x| format!("{:.2}", s.bytes as f64 / x.wall / link))
        .collect();
    if !shares.is_empty() {
        notes.push(format!(
            "`ferry`'s throughput as a share of the {} MB/s link, round by round: {}",
            path.link_rate.unwrap_or(0) / 1_000_000,
            shares.join(", ")
        ));
    }
    for (tool, runs) in wire {
        let conns: Vec<f64> = runs.iter().map(|w| w.0).collect();
        let (Some((c, clo, chi)), Some((d, ..))) = (
            spread(&conns),
            spread(&runs.iter().map(|w| w.1).collect::<Vec<_>>()),
        ) else {
            continue;
        };
        let segs = s.segments as f64;
        notes.push(format!(
            "the relay, `{tool}`'s runs: median {c:.0} TCP connections per run ({clo:.0}-{chi:.0}; \
             {:.1} segments per connection), {d:.3}x the stream's bytes carried down",
            segs / c.max(1.0)
        ));
    }
    notes
}

/// Issue 32's goals: ferry at least 0.8 of the link cap, at most 0.5x yt-dlp's wall time and
/// 0.1x ffmpeg's.
fn targets(path: WanPath, aes: bool) -> Vec<Target> {
    let over = if aes { " over AES-128" } else { "" };
    let link = format!(
        "{} MB/s, {} ms round trip, {} MB/s per flow",
        path.link_rate.unwrap_or(0) / 1_000_000,
        path.rtt.as_millis(),
        path.flow_rate.unwrap_or(0) / 1_000_000
    );
    vec![
        Target {
            text: format!(
                "issue 32: `ferry get URL.m3u8`{over} (durable, every byte checked after) as a \
                 share of the link cap ({link})"
            ),
            tool: FERRY.into(),
            min_share: Some(0.8),
            link_rate: path.link_rate,
            ..Target::default()
        },
        Target {
            text: format!(
                "issue 32: `ferry`{over} takes at most 0.5x the wall time of `yt-dlp -N 16` \
                 (native HLS downloader, made durable)"
            ),
            tool: YTDLP.into(),
            max_ratio: Some(0.5),
            ..Target::default()
        },
        Target {
            text: format!(
                "issue 32: `ferry`{over} takes at most 0.1x the wall time of `ffmpeg -i URL -c \
                 copy` (made durable)"
            ),
            tool: FFMPEG.into(),
            max_ratio: Some(0.1),
            ..Target::default()
        },
    ]
}

/// The method paragraph of the report for the HLS suites (the default one speaks of a file's
/// sha256, which a stream has none of).
pub(crate) fn note(suite: &str) -> Option<&'static str> {
    SUITES.contains(&suite).then_some(
        "A VOD HLS stream of 2 s MPEG-TS segments (made by ffmpeg from a looped 20 s 720p \
         source; `hls-80-aes`: the same segments AES-128 encrypted by openssl, IV = media \
         sequence number) from nginx behind the relay of `wan-80` (80 ms round trip, 40 MB/s \
         per flow, 400 MB/s link). ferry (`ferry get URL.m3u8`) fsyncs its output; yt-dlp \
         (native HLS downloader, 16 concurrent fragments) and `ffmpeg -c copy` are followed by \
         `sync FILE` inside the timing. After each run, outside the timing, ferry's and \
         yt-dlp's outputs are compared by sha256 with the plaintext (the plain segments \
         concatenated); ffmpeg remuxes, so its output is checked by ffprobe's duration. No tool \
         has a digest of the stream to verify while downloading.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAYLIST: &str = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n\
                            #EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n\
                            #EXTINF:2.000000,\nseg_00000.ts\n#EXTINF:1.966667,\nseg_00001.ts\n\
                            #EXT-X-ENDLIST\n";

    #[test]
    fn segments_are_read_in_order_with_their_durations() {
        let (names, seconds) = segments_of(PLAYLIST);
        assert_eq!(names, ["seg_00000.ts", "seg_00001.ts"]);
        assert!((seconds - 3.966667).abs() < 1e-9);
    }

    #[test]
    fn the_key_goes_before_the_first_segment_and_only_once() {
        let keyed = with_key(PLAYLIST, "key.bin");
        assert_eq!(keyed.matches("#EXT-X-KEY:").count(), 1);
        let key = keyed.find("#EXT-X-KEY:METHOD=AES-128,URI=\"key.bin\"\n");
        assert!(key.is_some_and(|k| k < keyed.find("#EXTINF").unwrap_or(0)));
        assert_eq!(segments_of(&keyed), segments_of(PLAYLIST));
    }

    #[test]
    fn every_row_writes_the_same_file_and_the_peers_make_it_durable() {
        let t = tools("/bin/ferry", "http://127.0.0.1:1/files/plain/index.m3u8");
        let names: Vec<_> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, [FERRY, YTDLP, FFMPEG]);
        assert!(t.iter().all(|t| t.shell.contains("'{OUT}/out.ts'")));
        assert!(!t[0].is_peer() && t[1].is_peer() && t[2].is_peer());
        assert!(!t[0].shell.contains("sync"));
        assert!(
            t[1..]
                .iter()
                .all(|t| t.shell.ends_with("&& sync '{OUT}/out.ts'"))
        );
        assert!(t[1].shell.contains("-N 16") && t[1].shell.contains("--fixup never"));
    }

    #[test]
    fn the_targets_are_issue_32s() {
        let path = wan::path(PATH_OF).expect("the wan-80 path");
        let t = targets(path, false);
        assert_eq!(
            (t[0].min_share, t[0].link_rate),
            (Some(0.8), Some(400_000_000))
        );
        assert_eq!((t[1].tool.as_str(), t[1].max_ratio), (YTDLP, Some(0.5)));
        assert_eq!((t[2].tool.as_str(), t[2].max_ratio), (FFMPEG, Some(0.1)));
    }

    #[test]
    fn ferry_reports_are_checked_against_the_stream() {
        let s = Stream {
            root: PathBuf::new(),
            segments: 2,
            seconds: 4.0,
            bytes: 10,
            sha256: String::new(),
        };
        let ok = r#"{"tracks":[{"segments":2,"bytes":10,"decrypted":2,"gaps":[]}],
                    "fetched_bytes":12,"backend":"uring"}"#;
        assert_eq!(
            ferry_report(ok, &s, true).expect("a good report"),
            ("uring".to_owned(), 12)
        );
        let gap = ok.replace("\"gaps\":[]", "\"gaps\":[{\"first\":1}]");
        assert!(ferry_report(&gap, &s, false).is_err());
        let short = ok.replace("\"bytes\":10", "\"bytes\":9");
        assert!(ferry_report(&short, &s, false).is_err());
        let clear = ok.replace("\"decrypted\":2", "\"decrypted\":0");
        assert!(ferry_report(&clear, &s, false).is_ok());
        assert!(ferry_report(&clear, &s, true).is_err());
    }
}
