//! `ferry pull`: the command-line front end of [`ferry::hub::Pull`]. It resolves the conventions
//! huggingface_hub users expect (endpoint, token and cache from flags, then `HF_*` variables,
//! then defaults), shows progress, prints one summary, and maps each Hub error to its own exit
//! code. The token is never printed or logged.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use ferry::Engine;
use ferry::hub::{HubError, Layout, Pull, PullOptions, PullReport, RepoId, RepoType, SwarmOptions};
use ferry::units::human_bytes;

use super::{Global, exit, get_error_code};

/// Arguments of `ferry pull`.
#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Only files matching this pattern (fnmatch, as huggingface_hub; repeatable).
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Skip files matching this pattern (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// The most connections for the bytes: a pull starts with 16 and opens more while they
    /// make it faster (a CDN edge that caps each flow); 16 or fewer is a fixed count.
    #[arg(short = 'c', long, default_value_t = ferry::DEFAULT_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..=256))]
    connections: u32,
    /// The summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar and no summary (errors still go to stderr).
    #[arg(short, long)]
    quiet: bool,
    /// Fetch from the commit's BitTorrent swarm (the torrent `ferry serve --torrents` publishes
    /// at the endpoint; peers from its tracker), every file checked against the listing; what
    /// the swarm cannot bring goes over HTTP, and the summary says why.
    #[arg(long)]
    swarm: bool,
    /// With --swarm: seed the commit for this long once it is complete (90s, 30m, 12h, 7d);
    /// Ctrl-C stops seeding.
    #[arg(long, value_name = "DURATION", requires = "swarm", value_parser = ferry::hub::parse_age)]
    seed_for: Option<std::time::Duration>,
    /// With --swarm: the address peers reach this one at [default: 0.0.0.0:0, a port the
    /// system picks].
    #[arg(long, value_name = "ADDR", requires = "swarm")]
    swarm_listen: Option<std::net::SocketAddr>,
    /// With --swarm: how long the swarm may bring nothing new before the rest goes over HTTP
    /// (90s, 5m).
    #[arg(long, value_name = "DURATION", requires = "swarm", value_parser = ferry::hub::parse_age)]
    swarm_stall: Option<std::time::Duration>,
}

/// Which repo, where it is mirrored, and where it comes from: what `ferry pull` and
/// `ferry verify` share.
#[derive(Debug, Args)]
pub(crate) struct RepoArgs {
    /// The repo: `org/name` (or `name`).
    repo_id: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// model, dataset or space.
    #[arg(long, default_value = "model", value_parser = parse_repo_type)]
    repo_type: RepoType,
    /// Write plain files into DIR (with huggingface_hub's .cache/huggingface metadata) instead
    /// of the cache.
    #[arg(long, value_name = "DIR", conflicts_with = "cache_dir")]
    local_dir: Option<PathBuf>,
    /// The huggingface_hub cache (default: HF_HUB_CACHE, else HF_HOME/hub, else
    /// ~/.cache/huggingface/hub).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The Hub endpoint (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Another HF-compatible endpoint with the same repos (repeatable): ranges are spread over
    /// the endpoint and its mirrors, a failing one hands its ranges to the others, a far slower
    /// one is demoted; the listing falls back to a mirror when the endpoint cannot answer.
    /// The token is never sent to a mirror.
    #[arg(long, value_name = "URL")]
    mirror: Vec<String>,
    /// Access token (default: HF_TOKEN, else the token file under HF_HOME). Never printed.
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the access token from FILE (`-`: standard input), so that it is not in the
    /// process list. Surrounding whitespace is dropped.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
}

pub(super) fn parse_repo_type(s: &str) -> Result<RepoType, String> {
    s.parse()
}

pub(crate) fn run(global: &Global, args: PullArgs) -> u8 {
    let options = match options(&args) {
        Ok(o) => o,
        Err(e) => return super::fail(&e, exit::USAGE),
    };
    let placement = match &options.layout {
        Layout::Cache(d) | Layout::LocalDir(d) => Some(d.clone()),
    };
    let mut config = global.config(placement);
    config.connections = args.connections as usize;
    let engine = match Engine::new(config) {
        Ok(e) => e,
        Err(e) => return super::fail(&e, super::start_error_code(&e)),
    };
    super::signals::watch(
        engine.interrupter(),
        "what was written is kept: run the same command again to resume",
        super::signals::GRACE,
    );
    let mut pull = match Pull::start(&engine, options) {
        Ok(p) => p,
        Err(e) => return super::fail(&e, hub_error_code(&e)),
    };
    let (files, fetching) = pull.counts();
    if !args.quiet && !args.json {
        eprintln!(
            "{} at {}: {files} files, {fetching} to fetch",
            args.repo.repo_id,
            &pull.commit()[..12]
        );
    }
    let show_bar = !args.quiet && !args.json && std::io::stderr().is_terminal();
    if let (true, Some(job)) = (show_bar, pull.job()) {
        super::progress::follow(job, "");
    }
    match pull.finish() {
        Ok(report) => {
            print_summary(&report, &args);
            0
        }
        Err(e) => super::fail(&e, hub_error_code(&e)),
    }
}

fn options(args: &PullArgs) -> Result<PullOptions, HubError> {
    let options = repo_options(&args.repo)?.filter(args.include.clone(), args.exclude.clone());
    if !args.swarm {
        return Ok(options);
    }
    let mut swarm = SwarmOptions::default();
    if let Some(listen) = args.swarm_listen {
        swarm.listen = listen;
    }
    if let Some(d) = args.seed_for {
        swarm.seed_for = d;
    }
    if let Some(d) = args.swarm_stall {
        if d.is_zero() {
            return Err(HubError::Usage("--swarm-stall must be more than 0".into()));
        }
        swarm.stall = d;
    }
    if !args.quiet && !args.json && std::io::stderr().is_terminal() {
        swarm.progress = Some(std::sync::Arc::new(super::progress::swarm_bar()));
    }
    Ok(options.swarm(swarm))
}

/// The options of a pull (or a verify) of the repo `args` names, with no filter.
pub(super) fn repo_options(args: &RepoArgs) -> Result<PullOptions, HubError> {
    let repo = RepoId::parse(&args.repo_id).map_err(HubError::Usage)?;
    let endpoint = parse_endpoint(&ferry::hub::env::endpoint(args.endpoint.clone()))?;
    let mirrors = args
        .mirror
        .iter()
        .map(|m| parse_endpoint(m))
        .collect::<Result<Vec<_>, _>>()?;
    let layout = match &args.local_dir {
        Some(dir) => Layout::LocalDir(dir.clone()),
        None => Layout::Cache(ferry::hub::env::cache_dir(args.cache_dir.clone())?),
    };
    let mut o = PullOptions::new(repo, layout, endpoint)
        .kind(args.repo_type)
        .revision(args.revision.clone());
    for m in mirrors {
        o = o.mirror(m);
    }
    if let Some(token) = ferry::hub::env::token(args.token.clone(), args.token_file.as_deref())? {
        o = o.token(token);
    }
    Ok(o)
}

/// An endpoint or mirror URL, without its trailing `/`.
pub(super) fn parse_endpoint(endpoint: &str) -> Result<url::Url, HubError> {
    let endpoint = endpoint.trim_end_matches('/');
    url::Url::parse(endpoint)
        .map_err(|e| HubError::Usage(format!("invalid endpoint {endpoint:?}: {e}")))
}

pub(super) fn hub_error_code(e: &HubError) -> u8 {
    match e {
        HubError::Usage(_) => exit::USAGE,
        HubError::RepoNotFound { .. } => exit::REPO_NOT_FOUND,
        HubError::RevisionNotFound { .. } => exit::REVISION_NOT_FOUND,
        HubError::EntryNotFound { .. } => exit::ENTRY_NOT_FOUND,
        HubError::Gated { .. } => exit::GATED,
        HubError::BadToken { .. } => exit::BAD_TOKEN,
        HubError::RateLimited { .. } => exit::RATE_LIMITED,
        HubError::BadListing { .. } => exit::BAD_LISTING,
        HubError::Busy { .. } => exit::BUSY,
        HubError::Get(g) => get_error_code(g),
        HubError::Io { .. } => exit::LOCAL,
        _ => exit::REMOTE,
    }
}

fn print_summary(report: &PullReport, args: &PullArgs) {
    if args.json {
        return super::print_json(report);
    }
    if args.quiet {
        return;
    }
    println!(
        "{} {}: {} files ({}) at {}, {} fetched ({}{}), {} already here, every file verified; {:.2} s [{}]",
        report.kind,
        report.repo,
        report.files,
        human_bytes(report.bytes_total),
        report.path.display(),
        report.fetched,
        human_bytes(report.bytes_fetched),
        if report.bytes_resumed > 0 {
            format!(
                ", {} resumed from an earlier run",
                human_bytes(report.bytes_resumed)
            )
        } else {
            String::new()
        },
        report.reused,
        report.seconds,
        report.backend,
    );
    if report.connections_open > ferry::START_CONNECTIONS {
        println!(
            "{} connections: more flows fetched faster on this path",
            report.connections_open
        );
    }
    if !report.endpoints.is_empty() {
        println!("{}", super::served_by(&report.endpoints));
    }
    if let Some(s) = &report.swarm {
        println!(
            "swarm: {} file(s) from peers ({} received), {} sent to peers{}{}{}",
            s.files,
            human_bytes(s.bytes_from_peers),
            human_bytes(s.bytes_uploaded),
            if s.files_small > 0 {
                format!(
                    "; {} file(s) under half a piece over HTTP first",
                    s.files_small
                )
            } else {
                String::new()
            },
            if s.seeded_seconds > 0.0 {
                format!(", seeded {:.0} s", s.seeded_seconds)
            } else {
                String::new()
            },
            match &s.fallback {
                Some(why) => format!("; {} file(s) over HTTP: {why}", s.files_over_http),
                None => String::new(),
            }
        );
    }
}
