//! `ferry get URL... [-o PATH]`: download over HTTP/1.1 with a progress bar on a terminal and a
//! one-line summary (or `--json`) at the end.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use ferry::units::human_bytes;
use ferry::{Engine, GetError, Report};

use super::{Global, exit, get_error_code, parse_size};

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// URLs to download (http:// or https://).
    #[arg(required_unless_present = "input", value_name = "URL")]
    urls: Vec<String>,
    /// Read more URLs from FILE (`-` for stdin): one per line, optionally followed by the
    /// file's sha256 (64 hex digits) to verify it against; blank lines and `#` comments are
    /// skipped. The files are saved in the `-o` directory.
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Output file; with several URLs, an existing directory to put them in (named after the last
    /// path segment of each URL). Default: that name in the current directory.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// The most connections kept open at once, shared by all the URLs: a large file gets every
    /// one that is free, small files go one after another over the same connection. A job
    /// starts with 16 and opens more while they make it faster (a server that caps each flow);
    /// 16 or fewer is a fixed count.
    #[arg(short = 'c', long, default_value_t = ferry::DEFAULT_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..=256))]
    connections: u32,
    /// Range size (e.g. 8M); default: about two ranges per connection over what is left, 1-8
    /// MiB, and on a file with a checksum small enough that the connections together span at
    /// most 64 MiB (4 MiB with 16 connections).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    chunk_size: Option<u64>,
    /// How bytes reach the disk: direct (O_DIRECT for aligned blocks; the default on io_uring
    /// where the filesystem allows it), buffered (the page cache; always in safe mode) or splice
    /// (socket -> pipe -> page cache in the kernel, io_uring only; hashed by reading back).
    #[arg(long, value_name = "SINK")]
    sink: Option<ferry::SinkKind>,
    /// Verify the file against this sha256 (64 hex digits); on a mismatch it is fetched once
    /// more, then the download fails and nothing is left under the final name. One URL only.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Another URL with the same bytes (repeatable; one URL only): ranges are spread over
    /// them, a failing or stalled one hands its ranges to the others, a far slower one is
    /// demoted, and the summary says how many bytes each served.
    #[arg(long, value_name = "URL")]
    mirror: Vec<String>,
    /// Size of one write buffer (e.g. 1M; a multiple of 4K).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    buffer_size: Option<u64>,
    /// Writes in flight per connection.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    write_depth: Option<u32>,
    /// Print the summary as JSON (one object per URL, one per line).
    #[arg(long)]
    json: bool,
    /// No progress bar and no summary line.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    hls: super::hls::HlsArgs,
}

pub(crate) fn run(global: &Global, args: GetArgs) -> u8 {
    let stream = args.hls.wanted(&args.urls);
    if stream && let Err(e) = stream_usage(&args) {
        return super::fail(&e, exit::USAGE);
    }
    let jobs = match plan_outputs(&args) {
        Ok(j) => j,
        Err(e) => return super::fail(&e, exit::USAGE),
    };
    // Workers are placed near the disk of the first output.
    let placement = jobs
        .first()
        .and_then(|(_, out, _)| Some(std::path::absolute(out).ok()?.parent()?.to_path_buf()));
    let mut config = global.config(placement);
    config.connections = args.connections as usize;
    config.chunk_size = args.chunk_size;
    config.sink = args.sink;
    if let Some(b) = args.buffer_size {
        config.buffer_size = b as usize;
    }
    if let Some(d) = args.write_depth {
        config.write_depth = d as usize;
    }
    let engine = match Engine::new(config) {
        Ok(e) => e,
        Err(e) => return super::fail(&e, super::start_error_code(&e)),
    };
    if stream {
        super::signals::watch(
            engine.interrupter(),
            "a live recording is written up to there; a stream's segments fetched so far are kept, and the same command resumes",
            super::hls::GRACE,
        );
        let (url, out, _) = &jobs[0];
        return super::hls::run(&engine, url, out, &args.hls, args.json, args.quiet);
    }
    super::signals::watch(
        engine.interrupter(),
        "only files already complete get their final name",
        super::signals::GRACE,
    );
    let results = match download(&engine, &jobs, &args) {
        Ok(r) => r,
        Err(e) => return super::fail(&e, get_error_code(&e)),
    };
    // One URL that turned out to be an HLS playlist (it starts with #EXTM3U, as RFC 8216
    // requires): the stream it names is downloaded in its place.
    if let [Ok(report)] = results.as_slice()
        && args.hls.sniff(&report.path)
    {
        tracing::info!(
            "{}: the answer is an HLS playlist; downloading its stream (--no-hls keeps the playlist)",
            report.url
        );
        let url = report
            .url_final
            .clone()
            .unwrap_or_else(|| report.url.clone());
        let path = report.path.clone();
        return super::hls::run(&engine, &url, &path, &args.hls, args.json, args.quiet);
    }
    // Every file's outcome is shown; the exit code is that of the first failure.
    let mut code = 0;
    for result in results {
        match result {
            Ok(report) => print_summary(&report, &args),
            Err(e) => {
                let c = super::fail(&e, get_error_code(&e));
                if code == 0 {
                    code = c;
                }
            }
        }
    }
    code
}

/// A download of the command line: URL, output path, sha256 to check.
type Planned = (String, PathBuf, Option<String>);

/// The URLs of the command line and of `--input`, with the sha256 each must have.
fn all_urls(args: &GetArgs) -> Result<Vec<(String, Option<String>)>, UsageError> {
    let mut urls: Vec<(String, Option<String>)> = args
        .urls
        .iter()
        .map(|u| (u.clone(), args.sha256.clone()))
        .collect();
    let Some(path) = &args.input else {
        return Ok(urls);
    };
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| UsageError(format!("cannot read --input {}: {e}", path.display())))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let url = words.next().unwrap_or_default().to_owned();
        let sha = words.next().map(str::to_owned);
        if let Some(extra) = words.next() {
            return Err(UsageError(format!(
                "{}:{}: unexpected {extra:?}; a line is `URL [SHA256]`",
                path.display(),
                n + 1
            )));
        }
        urls.push((url, sha));
    }
    Ok(urls)
}

fn plan_outputs(args: &GetArgs) -> Result<Vec<Planned>, UsageError> {
    let urls = all_urls(args)?;
    if urls.is_empty() {
        return Err(UsageError("no URL to download".to_owned()));
    }
    if !args.mirror.is_empty() && urls.len() > 1 {
        return Err(UsageError(
            "--mirror gives other URLs of one file; give one URL with it".to_owned(),
        ));
    }
    if args.sha256.is_some() && urls.len() > 1 {
        return Err(UsageError(
            "--sha256 checks one file; give one URL with it".to_owned(),
        ));
    }
    if let Some(b) = args.buffer_size
        && (b == 0 || b % 4096 != 0 || b > 256 << 20)
    {
        return Err(UsageError(format!(
            "--buffer-size {b}: must be a multiple of 4 KiB, at most 256 MiB"
        )));
    }
    if urls.len() == 1 && args.input.is_none() {
        let (url, sha) = &urls[0];
        let out = match &args.output {
            Some(p) => p.clone(),
            None if args.hls.wanted(&args.urls) => super::hls::default_output(url)
                .ok_or_else(|| UsageError(format!("invalid URL {url:?}")))?,
            None => PathBuf::from(file_name_of(url)?),
        };
        return Ok(vec![(url.clone(), out, sha.clone())]);
    }
    let dir = args.output.clone().unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        return Err(UsageError(format!(
            "with several URLs, -o must be an existing directory; {} is not",
            dir.display()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let mut jobs = Vec::new();
    for (url, sha) in urls {
        let name = file_name_of(&url)?;
        if !seen.insert(name.clone()) {
            return Err(UsageError(format!(
                "two URLs would both be saved as {name:?}; download them separately"
            )));
        }
        jobs.push((url, dir.join(name), sha));
    }
    Ok(jobs)
}

/// What an HLS download cannot be combined with.
fn stream_usage(args: &GetArgs) -> Result<(), UsageError> {
    let refuse = |what: &str| {
        Err(UsageError(format!(
            "an HLS stream cannot be downloaded with {what}"
        )))
    };
    if args.urls.len() != 1 || args.input.is_some() {
        return refuse("several URLs or --input; give one playlist URL");
    }
    if args.sha256.is_some() {
        return refuse(
            "--sha256 (a stream is many files; AES-128 padding and byte ranges are checked instead)",
        );
    }
    if !args.mirror.is_empty() {
        return refuse("--mirror");
    }
    Ok(())
}

#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The last path segment of a URL, percent-decoded, as a safe file name.
fn file_name_of(url: &str) -> Result<String, UsageError> {
    let parsed =
        url::Url::parse(url).map_err(|e| UsageError(format!("invalid URL {url:?}: {e}")))?;
    let segment = parsed
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("");
    let name = percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned();
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(UsageError(format!(
            "cannot derive a file name from {url}; give one with -o"
        )));
    }
    Ok(name)
}

/// Runs all downloads as one job, with a progress bar over their bytes on a terminal.
fn download(
    engine: &Engine,
    jobs: &[Planned],
    args: &GetArgs,
) -> Result<Vec<Result<Report, GetError>>, GetError> {
    let items = jobs.iter().map(|(url, out, sha)| {
        let item = args
            .mirror
            .iter()
            .fold(ferry::GetItem::new(url.clone(), out), |item, m| {
                item.mirror(m.clone())
            });
        match sha {
            Some(hex) => item.sha256(hex.clone()),
            None => item,
        }
    });
    let mut job = engine.get_many(items)?;
    let show_bar = !args.quiet && !args.json && std::io::stderr().is_terminal();
    if !show_bar {
        return Ok(job.wait_all());
    }
    super::progress::follow(&mut job, "");
    Ok(job.wait_all())
}

fn print_summary(report: &Report, args: &GetArgs) {
    if args.json {
        return super::print_json(report);
    }
    if args.quiet {
        return;
    }
    let verified = match &report.verified {
        Some(h) => format!(", {} {} verified", h.algorithm, &h.digest[..12]),
        None => String::new(),
    };
    println!(
        "{}: {} in {:.2} s ({:.3} GB/s) [{}, {} sink, {} threads, {} connections{}{}{}]",
        report.path.display(),
        human_bytes(report.bytes),
        report.seconds,
        report.gb_per_s,
        report.backend,
        report.sink,
        report.threads,
        report.connections,
        if report.connections_open > ferry::START_CONNECTIONS {
            format!(", grown to {}", report.connections_open)
        } else {
            String::new()
        },
        if report.ranged { "" } else { ", single stream" },
        verified,
    );
    if !report.endpoints.is_empty() {
        println!("{}", super::served_by(&report.endpoints));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls() {
        assert_eq!(
            file_name_of("http://h/a/b%20c.bin").ok(),
            Some("b c.bin".to_owned())
        );
        assert!(file_name_of("http://h/").is_err());
        assert!(file_name_of("http://h/a/..").is_err());
        assert!(file_name_of("http://h/a%2Fb").is_err());
    }
}
