//! `ferry ping`: measures each endpoint (connect, TLS handshake, time to first byte and
//! throughput on a small ranged read, through [`ferry::Engine::ping`]) one after the other and
//! prints a table, or JSON. With `--repo`, each endpoint is asked for the same file of the repo
//! at the same commit (the largest, unless `--file` names one), so the figures compare. It
//! does not choose endpoints for later downloads: a pull measures its endpoints as it goes.

use clap::Args;
use ferry::hub::{HubError, Layout, PullOptions, RepoId, RepoType};
use ferry::units::human_bytes;
use ferry::{Engine, PingReport};

use super::{Global, exit};

/// Arguments of `ferry ping`.
#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    /// Endpoints or URLs to measure (default: the endpoint, then each --mirror). Without
    /// --repo, each is asked for as it is.
    #[arg(value_name = "ENDPOINT")]
    endpoints: Vec<String>,
    /// The Hub endpoint when no ENDPOINT is given (default: HF_ENDPOINT, else
    /// https://huggingface.co).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// A mirror to measure after the endpoint when no ENDPOINT is given (repeatable).
    #[arg(long, value_name = "URL")]
    mirror: Vec<String>,
    /// Ask every endpoint for a file of this repo (`org/name`): the largest, or --file.
    #[arg(long, value_name = "REPO")]
    repo: Option<String>,
    /// With --repo: the file to read (default: the largest in the listing).
    #[arg(long, value_name = "PATH", requires = "repo")]
    file: Option<String>,
    /// With --repo: branch, tag or commit.
    #[arg(long, default_value = "main", requires = "repo")]
    revision: String,
    /// With --repo: model, dataset or space.
    #[arg(long, default_value = "model", value_parser = super::pull::parse_repo_type)]
    repo_type: RepoType,
    /// Access token for the endpoint's listing (default: HF_TOKEN, else the token file under
    /// HF_HOME). Never printed, never sent to a mirror.
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How much of the file to read for the throughput figure.
    #[arg(long, default_value = "4M", value_parser = super::parse_size)]
    bytes: u64,
    /// The measurements as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// One row: what was pinged, under which name, and how it went.
struct Row {
    endpoint: String,
    result: Result<PingReport, String>,
}

pub(crate) fn run(global: &Global, args: PingArgs) -> u8 {
    let engine = match Engine::new(global.config(None)) {
        Ok(e) => e,
        Err(e) => return super::fail(&e, super::start_error_code(&e)),
    };
    let endpoints = if args.endpoints.is_empty() {
        std::iter::once(ferry::hub::env::endpoint(args.endpoint.clone()))
            .chain(args.mirror.iter().cloned())
            .collect()
    } else {
        args.endpoints.clone()
    };
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| e.trim_end_matches('/').to_owned())
        .collect();
    let (file, urls) = match &args.repo {
        Some(repo) => match repo_urls(&engine, &args, repo, &endpoints) {
            Ok((file, urls)) => (Some(file), urls),
            Err(e) => return super::fail(&e, super::pull::hub_error_code(&e)),
        },
        None => (None, endpoints.clone()),
    };
    if let (Some(file), false) = (&file, args.json) {
        eprintln!("reading the first {} of {file}", human_bytes(args.bytes));
    }
    let rows: Vec<Row> = endpoints
        .into_iter()
        .zip(urls)
        .map(|(endpoint, url)| Row {
            result: engine.ping(&url, args.bytes).map_err(|e| e.to_string()),
            endpoint,
        })
        .collect();
    if args.json {
        print_json(&rows, file.as_deref());
    } else {
        print_table(&rows);
    }
    if rows.iter().all(|r| r.result.is_ok()) {
        0
    } else {
        exit::REMOTE
    }
}

/// The URL of the same file on each endpoint, listed from the first that answers.
fn repo_urls(
    engine: &Engine,
    args: &PingArgs,
    repo: &str,
    endpoints: &[String],
) -> Result<(String, Vec<String>), HubError> {
    let repo = RepoId::parse(repo).map_err(HubError::Usage)?;
    let (first, rest) = endpoints
        .split_first()
        .ok_or_else(|| HubError::Usage("no endpoint to ping".into()))?;
    // The layout is not used: nothing is written.
    let mut options = PullOptions::new(
        repo,
        Layout::LocalDir(".".into()),
        super::pull::parse_endpoint(first)?,
    )
    .kind(args.repo_type)
    .revision(args.revision.clone());
    for m in rest {
        options = options.mirror(super::pull::parse_endpoint(m)?);
    }
    if let Some(token) = ferry::hub::env::token(args.token.clone(), None)? {
        options = options.token(token);
    }
    ferry::hub::file_urls(engine, &options, args.file.as_deref())
}

fn millis(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1e3)
}

fn print_table(rows: &[Row]) {
    let width = rows
        .iter()
        .map(|r| r.endpoint.len())
        .max()
        .unwrap_or(0)
        .max("ENDPOINT".len());
    println!(
        "{:<width$}  {:>10}  {:>10}  {:>10}  {:>12}  READ",
        "ENDPOINT", "CONNECT", "TLS", "FIRST BYTE", "THROUGHPUT"
    );
    for row in rows {
        match &row.result {
            Ok(p) => {
                let rate = p
                    .bytes_per_second
                    .map_or("-".to_owned(), |r| format!("{}/s", human_bytes(r as u64)));
                let mut read = human_bytes(p.bytes);
                if let Some(to) = &p.redirected_to {
                    read.push_str(&format!(" (redirected to {to})"));
                }
                println!(
                    "{:<width$}  {:>10}  {:>10}  {:>10}  {:>12}  {read}",
                    row.endpoint,
                    millis(p.connect_seconds),
                    p.tls_seconds.map_or("-".to_owned(), millis),
                    millis(p.first_byte_seconds),
                    rate,
                );
            }
            Err(e) => println!("{:<width$}  error: {e}", row.endpoint),
        }
    }
}

fn print_json(rows: &[Row], file: Option<&str>) {
    let endpoints: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let mut v = match &row.result {
                Ok(p) => serde_json::to_value(p).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e }),
            };
            if let Some(o) = v.as_object_mut() {
                o.insert("endpoint".into(), row.endpoint.clone().into());
                o.insert("ok".into(), row.result.is_ok().into());
            }
            v
        })
        .collect();
    super::print_json(&serde_json::json!({ "file": file, "endpoints": endpoints }));
}
