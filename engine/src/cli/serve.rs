//! `ferry serve`: command-line front end of [`ferry::serve`]. Parses the arguments, scans and
//! binds, prints the listening address as the first line on stdout (scripts and tests read the
//! port from it), then serves until the process is stopped. All the work is in the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use ferry::serve::{
    DEFAULT_PAGE_SIZE, ServeError, ServeOptions, Server, TlsIdentity, UpstreamOptions,
};

use super::{Global, exit, fail};

/// Arguments of `ferry serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Folder holding the repos: huggingface_hub cache folders (models--org--name, ...) and
    /// --local-dir downloads (org/name, datasets/org/name, spaces/org/name). With --upstream:
    /// the huggingface_hub cache the mirror fills (created when missing).
    #[arg(long, visible_alias = "cache-dir")]
    root: PathBuf,
    /// Be a pull-through mirror of this Hub endpoint (https://huggingface.co, or another
    /// mirror): a file the cache lacks is fetched once, verified and kept, and streamed to
    /// every client asking for it meanwhile. Callers' tokens are passed to the upstream for
    /// their listings; the download options (--connections, --limit-rate, ...) apply to fills.
    #[arg(long, value_name = "URL", value_parser = parse_upstream)]
    upstream: Option<url::Url>,
    /// Another endpoint with the same repos as --upstream (repeatable): listings fall back
    /// to it, and a file's ranges are spread over all of them.
    #[arg(long, value_name = "URL", requires = "upstream", value_parser = parse_upstream)]
    mirror: Vec<url::Url>,
    /// Read the mirror's own upstream token from FILE: sent when fetching files, never used
    /// to decide what a caller may read.
    #[arg(long, value_name = "FILE", requires = "upstream")]
    upstream_token_file: Option<PathBuf>,
    /// Connections one fill (one file fetched from the upstream) uses at most.
    #[arg(long, value_name = "N", requires = "upstream", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    fill_connections: u32,
    /// Accept signed, expiring links made with this key (`ferry sign --key-file`): a file
    /// request then needs a valid one, or, on a mirror, a token for the upstream to judge.
    #[arg(long, value_name = "FILE")]
    sign_key_file: Option<PathBuf>,
    /// With --upstream: never ask it; serve what the cache holds (repos it listed to callers
    /// without a token) and refuse the rest.
    #[arg(long, requires = "upstream")]
    offline: bool,
    /// With --offline: serve gated and private repos in the cache too, to anyone (offline no
    /// caller's access can be checked).
    #[arg(long, requires = "offline")]
    offline_private: bool,
    /// With --upstream: the most bytes of blobs the mirror keeps, e.g. 500G; past it, the
    /// least recently used blobs it fetched are deleted (default: no bound).
    #[arg(long, value_name = "SIZE", requires = "upstream", value_parser = super::parse_size)]
    max_size: Option<u64>,
    /// Publish every commit served as a private BitTorrent torrent (one file per repo file,
    /// pad files, this server as its web seed): GET /api/{type}s/{repo}/torrent/{rev} and
    /// /magnet/{rev}. Commits are hashed in the background from the start, their pieces kept in
    /// ferry's cache folder ($FERRY_CACHE_DIR, else ~/.cache/ferry). With --upstream: public
    /// commits the mirror's cache holds whole.
    #[arg(long, conflicts_with = "sign_key_file")]
    torrents: bool,
    /// The tracker those torrents announce to (repeatable; implies --torrents), e.g.
    /// http://tracker.lan:6969/announce.
    #[arg(long, value_name = "URL", value_parser = parse_tracker,
          conflicts_with = "sign_key_file")]
    tracker: Vec<url::Url>,
    /// Seed every published torrent (implies --torrents; needs --tracker), the files read in
    /// place: the origin of a swarm of `ferry pull --swarm` peers and stock BitTorrent clients.
    #[arg(long, conflicts_with_all = ["sign_key_file", "upstream"], requires = "tracker")]
    seed: bool,
    /// Where the seed listens for peers (TCP).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:6881",
        requires = "seed"
    )]
    seed_addr: SocketAddr,
    /// The most peers the seed serves at once per torrent; the others take the pieces from
    /// them, so fewer copies leave this server.
    #[arg(long, value_name = "N", default_value_t = ferry::serve::DEFAULT_SEED_PEERS,
          value_parser = parse_seed_peers, requires = "seed")]
    seed_peers: usize,
    /// Address to listen on (port 0 picks a free port; the first line on stdout names it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (the server's certificate first).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTP/3 too (needs --tls-cert): QUIC on the UDP port of the same number, one
    /// endpoint per core; every answer says so in `Alt-Svc`.
    #[arg(long)]
    h3: bool,
    /// Connections served at once (TCP and QUIC together); one more is answered 503 (a QUIC
    /// one is refused).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    max_connections: u32,
    /// Seconds a client may take to send a request head, once it started one.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = super::parse_secs)]
    head_timeout: f64,
    /// Seconds a kept-alive connection may wait for its next request; when every slot is
    /// taken, the connection idle the longest is closed for a newcomer.
    #[arg(long, value_name = "SECS", default_value_t = 15.0, value_parser = super::parse_secs)]
    idle_timeout: f64,
    /// Seconds one send may block on a client that does not read.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = super::parse_secs)]
    send_timeout: f64,
    /// The slowest a client may read a body, per second over each --send-timeout, e.g. 4K;
    /// slower readers are disconnected.
    #[arg(long, value_name = "RATE", default_value = "4K", value_parser = super::parse_size)]
    min_send_rate: u64,
    /// The URL clients reach this server by, e.g. https://hub.example/mirror (behind a reverse
    /// proxy); the absolute links of paged listings start with it. Default: the address each
    /// client connected to.
    #[arg(long, value_name = "URL", value_parser = parse_public_url)]
    public_url: Option<String>,
    /// A reverse proxy (IP address, repeatable) whose X-Forwarded-Proto, -Host and -Prefix are
    /// believed when --public-url is not given; from anyone else they are ignored.
    #[arg(long, value_name = "IP")]
    trusted_proxy: Vec<std::net::IpAddr>,
    /// Tree entries per page (tests force paging with a small value).
    #[arg(long, hide = true, env = "FERRY_SERVE_PAGE_SIZE", default_value_t = DEFAULT_PAGE_SIZE as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    page_size: u32,
}

fn parse_seed_peers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: give a number of peers from 1 to 1000")),
    }
}

/// A tracker's announce URL: `http://`, `https://` or `udp://`, with a host.
fn parse_tracker(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https" | "udp") || url.host_str().is_none() {
        return Err(format!(
            "{s:?}: give an http://, https:// or udp:// tracker URL with a host"
        ));
    }
    Ok(url)
}

/// An `http://` or `https://` endpoint, without its trailing `/`.
fn parse_upstream(s: &str) -> Result<url::Url, String> {
    let url =
        url::Url::parse(s.trim_end_matches('/')).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{s:?}: give an http:// or https:// URL with a host"
        ));
    }
    Ok(url)
}

/// An `http://` or `https://` URL with a host and no query, user or fragment.
fn parse_public_url(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    if !ok {
        return Err(format!(
            "{s:?}: give an http:// or https:// URL with a host, and no query, fragment or user"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

pub(crate) fn run(global: &Global, args: ServeArgs) -> u8 {
    let mut options = ServeOptions::default();
    options.page_size = args.page_size as usize;
    options.max_connections = args.max_connections as usize;
    options.head_timeout = std::time::Duration::from_secs_f64(args.head_timeout);
    options.idle_timeout = std::time::Duration::from_secs_f64(args.idle_timeout);
    options.write_timeout = std::time::Duration::from_secs_f64(args.send_timeout);
    options.min_send_rate = args.min_send_rate;
    options.public_url = args.public_url.clone();
    options.trusted_proxies = args.trusted_proxy.clone();
    options.h3 = args.h3;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        match TlsIdentity::from_pem_files(cert, key) {
            Ok(id) if global.http2 => options.tls = Some(id.with_http2()),
            Ok(id) => options.tls = Some(id),
            Err(e) => return fail(&ErrorChain(&e), exit::USAGE),
        }
    }
    if global.http2 && options.tls.is_none() {
        eprintln!(
            "ferry: error: --http2 needs --tls-cert: HTTP/2 is offered by ALPN in the TLS handshake"
        );
        return exit::USAGE;
    }
    if args.h3 && options.tls.is_none() {
        eprintln!("ferry: error: --h3 needs --tls-cert: QUIC always runs TLS 1.3");
        return exit::USAGE;
    }
    if let Some(file) = &args.sign_key_file {
        match ferry::serve::SignKey::from_file(file) {
            Ok(key) => options.sign_key = Some(key),
            Err(e) => {
                eprintln!("ferry: error: {e}");
                return exit::USAGE;
            }
        }
    }
    options.torrents = args.torrents || args.seed || !args.tracker.is_empty();
    options.trackers.clone_from(&args.tracker);
    options.seed = args.seed.then_some(args.seed_addr);
    options.seed_peers = args.seed_peers;
    if let Some(endpoint) = &args.upstream {
        let mut up = UpstreamOptions::new(endpoint.clone());
        up.mirrors.clone_from(&args.mirror);
        up.config = global.config(Some(args.root.clone()));
        up.config.connections = args.fill_connections as usize;
        up.max_size = args.max_size;
        up.offline = args.offline;
        up.offline_private = args.offline_private;
        if let Some(file) = &args.upstream_token_file {
            match ferry::hub::env::token(None, Some(file)) {
                Ok(Some(token)) => up = up.token(&token),
                Ok(None) => {}
                Err(e) => return fail(&ErrorChain(&e), exit::USAGE),
            }
        }
        options.upstream = Some(up);
    }
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let server = match Server::bind(&args.root, args.addr, options) {
        Ok(s) => s,
        Err(e) => {
            let code = match e {
                ServeError::RootNotDir { .. }
                | ServeError::Upstream { .. }
                | ServeError::Torrents { .. } => exit::USAGE,
                ServeError::Root { .. } => exit::LOCAL,
                _ => exit::REMOTE,
            };
            return fail(&ErrorChain(&e), code);
        }
    };
    let s = server.summary();
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the server: write errors are ignored.
    let _ = writeln!(
        out,
        "ferry serve: listening on {scheme}://{} (root {})",
        server.local_addr(),
        server.root().display()
    );
    let _ = out.flush();
    drop(out);
    if let Some(up) = &args.upstream {
        eprintln!(
            "ferry serve: a pull-through mirror of {} (cache {})",
            up.origin().ascii_serialization(),
            server.root().display()
        );
    } else {
        eprintln!(
            "ferry serve: {} repos, {} snapshots, {} files, {}",
            s.repos,
            s.snapshots,
            s.files,
            ferry::units::human_bytes(s.bytes)
        );
    }
    server.run()
}

/// Shows an error with its causes on one line (`cannot listen on ...: Address in use`).
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl std::fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for ErrorChain<'_> {}
