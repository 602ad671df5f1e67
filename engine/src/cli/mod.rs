//! Command-line front end: clap definitions, logging set-up, and the mapping from errors to exit
//! codes. Each subcommand lives in its own module and uses only the library's public API.
//!
//! Exit codes (also in the README): 0 success, 1 internal error, 2 usage or bad input, 3 the
//! server or network failed, 4 a local file operation failed, 5 the requested back-end cannot run;
//! `ferry pull` adds 6 repo not found, 7 revision not found, 8 file not found, 9 gated, 10 token
//! refused, 11 rate limited, 12 not enough disk space, 13 a hostile or malformed listing, 14
//! another pull is writing the same repo; 130 / 143 `get` or `pull` stopped by SIGINT / SIGTERM
//! (what a pull wrote is kept for the next run).

mod gc;
mod get;
mod hls;
mod ping;
mod probe;
mod progress;
mod pull;
mod serve;
mod sign;
mod signals;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ferry::{BackendKind, Config, ErrorKind, GetError, StartError};

/// Exit codes, one per failure class.
pub(crate) mod exit {
    pub const INTERNAL: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const REMOTE: u8 = 3;
    pub const LOCAL: u8 = 4;
    pub const BACKEND: u8 = 5;
    // `ferry pull`: what the Hub said, one code per thing the user does about it.
    pub const REPO_NOT_FOUND: u8 = 6;
    pub const REVISION_NOT_FOUND: u8 = 7;
    pub const ENTRY_NOT_FOUND: u8 = 8;
    pub const GATED: u8 = 9;
    pub const BAD_TOKEN: u8 = 10;
    pub const RATE_LIMITED: u8 = 11;
    pub const NO_SPACE: u8 = 12;
    pub const BAD_LISTING: u8 = 13;
    pub const BUSY: u8 = 14;
    /// `ferry verify`: a file is missing or damaged.
    pub const DAMAGED: u8 = 15;
    /// `ferry get` of an HLS stream: segments are missing (and `--allow-gaps` was not given).
    pub const GAPS: u8 = 16;
}

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Moves bytes from the network to disk at the speed of the hardware."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Data path: io_uring, portable syscalls, or io_uring with fallback.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Force the portable back-end (same as FERRY_SAFE_MODE=1).
    #[arg(long, global = true)]
    pub safe_mode: bool,
    /// Worker threads (default: the cores of the NUMA node nearest the target disk).
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// PEM file of CA certificates to trust for https:// besides the built-in and system roots
    /// (repeatable; SSL_CERT_FILE and REQUESTS_CA_BUNDLE are also read).
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_file: Vec<PathBuf>,
    /// Proxy for every URL: http://, socks5:// or socks5h://, with user:password@ if needed
    /// (default: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY; NO_PROXY applies to both).
    #[arg(long, global = true, value_name = "URL")]
    pub proxy: Option<String>,
    /// Seconds one TCP connect attempt may take.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0, value_parser = parse_secs)]
    pub connect_timeout: f64,
    /// Seconds a read may bring no byte before the connection is dropped and its range fetched
    /// again (the stall watchdog).
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30.0, value_parser = parse_secs)]
    pub read_timeout: f64,
    /// Cap on the bytes per second of all connections together, e.g. 50M (K, M, G: powers of
    /// 1024, as curl's --limit-rate).
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_size)]
    pub limit_rate: Option<u64>,
    /// Disk space to leave free where files are written, e.g. 2G or 0 (default: 1% of the
    /// filesystem, at most 256M). A file that would go under it waits for space.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size_or_zero)]
    pub min_free: Option<u64>,
    /// Seconds a file waits for disk space to come free before the download stops with "not
    /// enough disk space" (exit 12); 0 stops at once.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 60.0, value_parser = parse_wait)]
    pub space_wait: f64,
    /// Follow a redirect from a public address to a private, loopback or link-local one
    /// (refused by default: a public server must not point ferry at the local network).
    #[arg(long, global = true)]
    pub allow_private_redirects: bool,
    /// Send one range request per answer: no HTTP/1.1 pipelining (by default a connection asks
    /// for its next range before the answer ahead of it ends; a server that closes such a
    /// connection gets one request per answer from then on anyway).
    #[arg(long, global = true)]
    pub no_pipelining: bool,
    /// Offer HTTP/2 on `https://` connections (ALPN `h2` then `http/1.1`; the server picks):
    /// each request a stream, many in flight per connection. By default only HTTP/1.1 is
    /// offered, which costs less CPU per byte. `serve` (with --tls-cert): speak HTTP/2 to
    /// clients that offer it, HTTP/1.1 to the rest.
    #[arg(long, global = true)]
    pub http2: bool,
    /// Try HTTP/3 (QUIC over UDP) first on `https://` connections without a proxy: each request
    /// a stream. Where the QUIC handshake gets no answer within 2 s, or the server refuses it,
    /// the connection goes over TCP (HTTP/1.1, or HTTP/2 with --http2), and so does the rest of
    /// the job to that origin; the report says why (`-v` too).
    #[arg(long, global = true)]
    pub http3: bool,
    /// More log output (-v info, -vv debug); FERRY_LOG=filter overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub(crate) fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds (0 < SECS <= 86400)"
        )),
    }
}

fn parse_wait(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds (0 <= SECS <= 86400)"
        )),
    }
}

fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_size(s)
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Report what this kernel and machine support, and which back-end ferry would use.
    Probe(probe::ProbeArgs),
    /// Download URLs to files.
    Get(get::GetArgs),
    /// Mirror a Hugging Face repo, every file verified, in the huggingface_hub cache layout.
    Pull(pull::PullArgs),
    /// Serve mirrored Hugging Face repos as a read-only, HF-compatible endpoint.
    Serve(serve::ServeArgs),
    /// Measure endpoints: connect, TLS, time to first byte and throughput of a ranged read.
    Ping(ping::PingArgs),
    /// Re-hash a mirrored snapshot against its listing: each file good, missing or damaged.
    Verify(verify::VerifyArgs),
    /// Remove the partial files and journals interrupted pulls left (older than an age).
    Gc(gc::GcArgs),
    /// Print a signed, expiring link to a file of `ferry serve --sign-key-file`.
    Sign(sign::SignArgs),
}

impl Global {
    pub fn config(&self, placement_dir: Option<PathBuf>) -> Config {
        let mut config = Config::default();
        config.backend = self.backend;
        config.safe_mode = self.safe_mode;
        config.threads = self.threads.map(|t| t as usize);
        config.placement_dir = placement_dir;
        config.ca_files = self.ca_file.clone();
        config.proxy = self.proxy.clone();
        config.connect_timeout = std::time::Duration::from_secs_f64(self.connect_timeout);
        config.read_timeout = std::time::Duration::from_secs_f64(self.read_timeout);
        config.limit_rate = self.limit_rate;
        config.min_free = self.min_free;
        config.space_wait = std::time::Duration::from_secs_f64(self.space_wait);
        config.allow_private_redirects = self.allow_private_redirects;
        config.pipelining = !self.no_pipelining;
        config.http2 = self.http2;
        config.http3 = self.http3;
        config
    }
}

/// The global options other than `-v`, by clap id.
const GLOBALS: &[&str] = &[
    "backend",
    "safe_mode",
    "threads",
    "ca_file",
    "proxy",
    "connect_timeout",
    "read_timeout",
    "limit_rate",
    "min_free",
    "space_wait",
    "allow_private_redirects",
    "no_pipelining",
    "http2",
    "http3",
];

/// Whether subcommand `sub` uses the global option `id`; one it does not use is refused there,
/// and its `--help` does not list it. `serve` uses `--http2`, and the download options only as a
/// mirror (`--upstream`, checked in [`main`]); `gc` uses none.
fn uses(sub: &str, id: &str) -> bool {
    match sub {
        "get" | "pull" | "verify" => true,
        // A ping writes nothing (the disk options do not apply) and sends one request.
        "ping" => !matches!(id, "min_free" | "space_wait" | "no_pipelining"),
        "probe" => matches!(id, "backend" | "safe_mode"),
        "serve" => id != "http3",
        _ => false,
    }
}

/// The command line, with the global options a subcommand does not use hidden from its help:
/// such a subcommand gets a hidden copy of the option, which clap then does not propagate over
/// (the copy still parses, so that [`main`] can refuse it with a clear message).
fn command() -> clap::Command {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let globals: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| GLOBALS.contains(&a.get_id().as_str()))
        .cloned()
        .collect();
    cmd.mut_subcommands(|sub| {
        let name = sub.get_name().to_owned();
        globals
            .iter()
            .filter(|a| !uses(&name, a.get_id().as_str()))
            .fold(sub, |sub, a| sub.arg(a.clone().hide(true)))
    })
}

pub fn main() -> ExitCode {
    use clap::FromArgMatches;
    let parsed = command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (m, cli)));
    let (matches, cli) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    // An option either works or is refused: a global one given to a subcommand that does not
    // use it (`ferry serve --limit-rate 10M`) is an error, not silently ignored.
    if let Some((sub, sm)) = matches.subcommand() {
        let given = GLOBALS.iter().find(|id| {
            !uses(sub, id) && sm.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        });
        if let Some(id) = given {
            eprintln!(
                "ferry: error: --{} does not apply to `ferry {sub}`; see `ferry {sub} --help`",
                id.replace('_', "-")
            );
            return ExitCode::from(exit::USAGE);
        }
        // A server that fetches nothing has no use for the options of fetching.
        let fetch_option = GLOBALS.iter().find(|id| {
            **id != "http2" && sm.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        });
        if sub == "serve"
            && sm.value_source("upstream") != Some(clap::parser::ValueSource::CommandLine)
            && let Some(id) = fetch_option
        {
            eprintln!(
                "ferry: error: --{} does not apply to `ferry serve` without --upstream (it sets how a mirror fetches)",
                id.replace('_', "-")
            );
            return ExitCode::from(exit::USAGE);
        }
    }
    init_logging(cli.global.verbose);
    let code = match cli.command {
        Command::Probe(args) => probe::run(&cli.global, args),
        Command::Get(args) => get::run(&cli.global, args),
        Command::Pull(args) => pull::run(&cli.global, args),
        Command::Serve(args) => serve::run(&cli.global, args),
        Command::Ping(args) => ping::run(&cli.global, args),
        Command::Verify(args) => verify::run(&cli.global, args),
        Command::Gc(args) => gc::run(args),
        Command::Sign(args) => sign::run(args),
    };
    ExitCode::from(code)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

/// A name from a listing or the disk as it may be printed: control characters (a newline, an
/// escape sequence for the terminal) shown escaped, never sent as they are.
pub(crate) fn escape(name: &str) -> String {
    if name.chars().any(char::is_control) {
        name.escape_debug().to_string()
    } else {
        name.to_owned()
    }
}

/// Prints a summary as one JSON object on stdout.
pub(crate) fn print_json(report: &impl serde::Serialize) {
    match serde_json::to_string(report) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("ferry: error: cannot render the summary: {e}"),
    }
}

/// Prints an error as one line on stderr and returns its exit code.
pub(crate) fn fail(err: &dyn std::error::Error, code: u8) -> u8 {
    eprintln!("ferry: error: {err}");
    code
}

pub(crate) fn start_error_code(e: &StartError) -> u8 {
    match e {
        StartError::UringUnavailable { .. } | StartError::UringBroken { .. } => exit::BACKEND,
        StartError::Proxy { .. } => exit::USAGE,
        _ => exit::INTERNAL,
    }
}

pub(crate) fn get_error_code(e: &GetError) -> u8 {
    match e.kind() {
        ErrorKind::Usage => exit::USAGE,
        ErrorKind::Remote => exit::REMOTE,
        ErrorKind::Local => exit::LOCAL,
        ErrorKind::NoSpace => exit::NO_SPACE,
        ErrorKind::Busy => exit::BUSY,
        ErrorKind::Interrupted => signals::interrupted_code(),
        _ => exit::INTERNAL,
    }
}

/// `served by http://a (1.00 GiB), http://b (12.0 MiB, 3 failures, demoted)`.
pub(crate) fn served_by(endpoints: &[ferry::EndpointReport]) -> String {
    let parts: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let mut notes = vec![ferry::units::human_bytes(e.bytes)];
            if e.failures > 0 {
                notes.push(format!(
                    "{} failure{}",
                    e.failures,
                    if e.failures == 1 { "" } else { "s" }
                ));
            }
            if e.demoted {
                notes.push("demoted".into());
            }
            format!("{} ({})", e.endpoint, notes.join(", "))
        })
        .collect();
    format!("  served by {}", parts.join(", "))
}

/// Parses `4M`, `1MiB`, `512k`, `1048576` into bytes (binary multiples).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?} (use K, M or G)"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("size {s:?} out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        command().debug_assert();
    }

    #[test]
    fn globals_a_subcommand_does_not_use_are_hidden_from_its_help() {
        let mut cmd = command();
        cmd.build();
        let mut help = |sub: &str| {
            cmd.find_subcommand_mut(sub)
                .expect("sub")
                .render_long_help()
                .to_string()
        };
        let (serve, gc, get, ping) = (help("serve"), help("gc"), help("get"), help("ping"));
        for flag in ["--limit-rate", "--backend", "--proxy", "--min-free"] {
            // A mirror's fills take the download options (refused without --upstream).
            assert!(serve.contains(flag), "serve --help lacks {flag}");
            assert!(!gc.contains(flag), "gc --help lists {flag}");
            assert!(get.contains(flag), "get --help lacks {flag}");
        }
        assert!(!serve.contains("--http3"), "serve --help lists --http3");
        assert!(ping.contains("--limit-rate") && !ping.contains("--min-free"));
        assert!(serve.contains("--verbose"), "-v applies everywhere");
    }
}
