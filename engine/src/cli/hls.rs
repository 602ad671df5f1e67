//! `ferry get URL.m3u8`: the options of an HLS download, when a URL is taken for a stream, and
//! the summary (or `--json`) and exit code at the end. Uses only `ferry::hls`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use ferry::Engine;
use ferry::hls::{self, HlsError, HlsReport, RenditionChoice, VariantChoice};
use ferry::units::human_bytes;

use super::exit;

/// How long an interrupted stream download may take to write what it has (a live recording of
/// hours is decrypted and written after the stop) before the process exits anyway.
pub(crate) const GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub(crate) struct HlsArgs {
    /// Take the URL for an HLS playlist (implied by a path ending in .m3u8 or .m3u, and by the
    /// options below): every segment is fetched, decrypted (AES-128) and written in order.
    #[arg(long, conflicts_with = "no_hls")]
    hls: bool,
    /// Keep an answer that is an HLS playlist as it is (by default a URL whose answer starts
    /// with #EXTM3U is taken for a stream and its media downloaded in its place).
    #[arg(long)]
    no_hls: bool,
    /// Which variant of a master playlist: best, worst, bandwidth=BITS (the best at most
    /// that), resolution=WxH, codec=PREFIX (e.g. hvc1).
    #[arg(long, value_name = "CHOICE", value_parser = clap::value_parser!(VariantChoice))]
    variant: Option<VariantChoice>,
    /// The variant's audio and subtitle renditions written beside it (OUT.audio-NAME.EXT):
    /// all, none, or a language (en matches en-US).
    #[arg(long, value_name = "WHICH", value_parser = clap::value_parser!(RenditionChoice))]
    renditions: Option<RenditionChoice>,
    /// Keep each segment as a file in DIR (MSN.EXT, init sections as init-N.EXT, renditions in
    /// a folder each) instead of one output file.
    #[arg(long, value_name = "DIR")]
    segments_dir: Option<PathBuf>,
    /// Write the outputs even when segments are missing (they are reported all the same, and
    /// the exit code is 0).
    #[arg(long)]
    allow_gaps: bool,
    /// A live stream: stop recording after this many seconds of media (Ctrl-C also stops it
    /// and writes what was recorded).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    duration: Option<u64>,
    /// A live stream: stop when its playlist has not changed for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    live_timeout: u64,
    /// Memory for segments between their download and their writing (default 256M). A segment
    /// that does not fit goes through a file in the work folder; 0: every segment does.
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size_or_zero)]
    hls_memory: Option<u64>,
}

impl HlsArgs {
    /// Whether `url` is to be downloaded as a stream.
    pub(crate) fn wanted(&self, urls: &[String]) -> bool {
        if self.no_hls {
            return false;
        }
        self.hls
            || self.variant.is_some()
            || self.renditions.is_some()
            || self.segments_dir.is_some()
            || self.allow_gaps
            || self.duration.is_some()
            || self.hls_memory.is_some()
            || urls.iter().any(|u| {
                url::Url::parse(u).is_ok_and(|u| {
                    let p = u.path().to_ascii_lowercase();
                    p.ends_with(".m3u8") || p.ends_with(".m3u")
                })
            })
    }
}

impl HlsArgs {
    /// Whether a single file just downloaded to `path` is a playlist to follow: it starts with
    /// `#EXTM3U`, is small enough to be one, is not named as a playlist, and `--no-hls` is off.
    pub(crate) fn sniff(&self, path: &Path) -> bool {
        use std::io::Read;
        if self.no_hls {
            return false;
        }
        let named = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("m3u8") || e.eq_ignore_ascii_case("m3u"));
        let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= 32 << 20);
        let mut head = [0u8; 7];
        let starts = std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok_and(|()| &head == b"#EXTM3U" || head.starts_with(b"\xef\xbb\xbf#EX"));
        !named && small && starts
    }
}

/// The output when `-o` is not given: the playlist's name with `.ts`.
pub(crate) fn default_output(url: &str) -> Option<PathBuf> {
    let u = url::Url::parse(url).ok()?;
    let last = u.path_segments()?.next_back()?;
    let stem = last.rsplit_once('.').map_or(last, |(s, _)| s);
    let ok = !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !stem.starts_with('.');
    Some(PathBuf::from(format!(
        "{}.ts",
        if ok { stem } else { "stream" }
    )))
}

/// Downloads one stream; returns the exit code.
pub(crate) fn run(
    engine: &Engine,
    url: &str,
    output: &Path,
    args: &HlsArgs,
    json: bool,
    quiet: bool,
) -> u8 {
    let mut options = hls::Options::default();
    options.variant = args.variant.clone().unwrap_or_default();
    options.renditions = args.renditions.clone().unwrap_or_default();
    options.segments_dir = args.segments_dir.clone();
    options.allow_gaps = args.allow_gaps;
    options.duration = args.duration.map(Duration::from_secs);
    options.live_timeout = Some(Duration::from_secs(args.live_timeout));
    options.memory = args.hls_memory;
    let show_bar = !quiet && !json && std::io::stderr().is_terminal();
    let bar = show_bar.then(super::progress::SegmentBar::new);
    let mut watch = |p: &ferry::Progress| {
        if let Some(b) = &bar {
            b.tick(p);
        }
    };
    let result = hls::download(engine, url, output, &options, &mut watch);
    if let Some(b) = &bar {
        b.finish();
    }
    match result {
        Ok(report) => {
            print(&report, json, quiet);
            0
        }
        Err(HlsError::Gaps(report)) => {
            if json {
                super::print_json(&report);
            }
            super::fail(&HlsError::Gaps(report), exit::GAPS)
        }
        Err(e) => {
            let code = match e.kind() {
                ferry::ErrorKind::Usage => exit::USAGE,
                ferry::ErrorKind::Local => exit::LOCAL,
                ferry::ErrorKind::NoSpace => exit::NO_SPACE,
                ferry::ErrorKind::Interrupted => super::signals::interrupted_code(),
                ferry::ErrorKind::Remote => exit::REMOTE,
                ferry::ErrorKind::Busy => exit::BUSY,
                _ => exit::INTERNAL,
            };
            super::fail(&e, code)
        }
    }
}

fn print(report: &HlsReport, json: bool, quiet: bool) {
    if json {
        return super::print_json(report);
    }
    if quiet {
        return;
    }
    for t in &report.tracks {
        let outputs: Vec<String> = t.outputs.iter().map(|p| p.display().to_string()).collect();
        let what = if t.kind == "main" {
            report.variant.clone().unwrap_or_default()
        } else {
            format!("{} {}", t.kind, t.name)
        };
        println!(
            "{}: {} segments, {:.1} s of media, {}{}{}",
            outputs.join(", "),
            t.segments,
            t.seconds,
            human_bytes(t.bytes),
            if t.decrypted > 0 {
                format!(", {} decrypted", t.decrypted)
            } else {
                String::new()
            },
            if what.is_empty() {
                String::new()
            } else {
                format!(" [{what}]")
            },
        );
        for g in &t.gaps {
            println!(
                "  missing: segments {}-{} ({:.1} s): {}",
                g.first, g.last, g.seconds, g.reason
            );
        }
    }
    if let Some(why) = &report.live {
        println!("live recording stopped: {why}");
    }
    println!(
        "{} fetched in {:.2} s{}",
        human_bytes(report.fetched_bytes),
        report.seconds,
        if report.kept > 0 {
            format!(
                "; {} of {} segments kept from an earlier run",
                report.kept, report.resources
            )
        } else {
            String::new()
        }
    );
}
