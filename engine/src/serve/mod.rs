//! `ferry serve`: a read-only, Hugging Face Hub-compatible HTTP/1.1 endpoint over repos kept on
//! local disk (the huggingface_hub cache, or `--local-dir` downloads), so that stock clients
//! (`huggingface_hub` with `HF_ENDPOINT`, `ferry pull`, hf_transfer, aria2) download from it as
//! they would from the Hub. The layouts, routes and limits are described in
//! `docs/hub-and-serve.md`.
//!
//! Invariants: nothing is ever written under the root. A request names files only through the
//! catalog one scan built (`catalog/`), never by joining its path onto the root, and the file is
//! opened beneath the root's descriptor at request time following no symlink. A commit whose
//! listing is kept (`trees/COMMIT.json`) is served as that listing says: a file whose bytes are
//! not here answers 404, so a partial pull never passes for the whole commit. Request heads are
//! parsed strictly and bounded; slow clients are dropped.
//!
//! The server is blocking std::net, one thread per connection up to
//! [`ServeOptions::max_connections`]; with [`ServeOptions::tls`] it speaks HTTPS (rustls in user
//! space, [`TlsIdentity`]). Not here: kTLS, authentication, uploads, Xet, CDN redirects.

mod catalog;
mod date;
mod h2;
mod h3;
mod handler;
mod http;
mod idle;
mod mirror;
mod public_url;
pub(crate) mod range_request;
mod route;
#[cfg(feature = "swarm")]
mod seed;
mod send;
mod signed;
mod small_files;
mod streams;
mod tls_identity;
mod torrents;

pub use signed::SignKey;
pub use tls_identity::TlsIdentity;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use self::catalog::Catalog;
use self::idle::Idle;

/// What every connection thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) catalog: Catalog,
    /// The root (canonical), held open: files are opened beneath it, following no symlink.
    pub(crate) root: crate::backend::nofollow::Dir,
    pub(crate) options: ServeOptions,
    /// Connections being served.
    pub(crate) active: AtomicUsize,
    /// Kept-alive connections waiting for their next request.
    pub(crate) idle: Idle,
    /// With [`ServeOptions::h3`]: the `Alt-Svc` value every answer carries, which tells a
    /// client over TCP that HTTP/3 is on the same port over UDP.
    pub(crate) alt_svc: Option<String>,
    /// With [`ServeOptions::upstream`]: the pull-through mirror that answers every request.
    pub(crate) mirror: Option<mirror::Mirror>,
    /// With [`ServeOptions::torrents`]: the torrents of the commits served.
    pub(crate) publisher: Option<torrents::Publisher>,
}

/// Tree entries per page by default (what the Hub uses).
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// The peers `--seed` serves at once per torrent by default: the others take the pieces from
/// the one served, and about one copy leaves the origin (measured in docs/decisions.md).
#[cfg(feature = "swarm")]
pub const DEFAULT_SEED_PEERS: usize = 1;

/// How a [`Server`] runs. Start from [`ServeOptions::default`] and change what you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Entries per page of a `/tree` listing ([`DEFAULT_PAGE_SIZE`]); at least 1.
    pub page_size: usize,
    /// Connections served at once (default 256); one more is answered 503 and closed.
    pub max_connections: usize,
    /// How long a client may take to send a request head once it started (default 30 s).
    pub head_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request (default 15 s). When
    /// every slot is taken, the connection idle the longest is closed for a newcomer sooner.
    pub idle_timeout: Duration,
    /// How long one send may block on a client that does not read (default 60 s).
    pub write_timeout: Duration,
    /// The slowest a client may read a body, in bytes per second over each `write_timeout`
    /// (default 4 KiB/s): a slower one is disconnected, so that no reader, however slow,
    /// holds a connection slot for ever.
    pub min_send_rate: u64,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub tls: Option<TlsIdentity>,
    /// The URL clients reach the server by (`https://hub.example/mirror`), for the absolute
    /// `Link`s of paged listings. Default: the address each client connected to.
    pub public_url: Option<String>,
    /// Reverse proxies whose `X-Forwarded-Proto`, `-Host` and `-Prefix` are believed (when no
    /// `public_url` is set); from anyone else those headers are ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Serve HTTP/3 too (needs [`ServeOptions::tls`]): QUIC on the UDP port of the same number,
    /// one endpoint per core, and `Alt-Svc: h3=":PORT"` on every answer so clients find it.
    pub h3: bool,
    /// Be a pull-through mirror of this upstream: what the root (a huggingface_hub cache,
    /// created when missing) lacks is fetched from it, verified, kept, and streamed to every
    /// client asking meanwhile.
    pub upstream: Option<UpstreamOptions>,
    /// Accept signed, expiring links made with this key ([`SignKey::sign`], `ferry sign`):
    /// a file request with a valid one is served without a token, one with a wrong or expired
    /// one is refused (403), and one without a link is refused (401) unless, on a mirror, the
    /// caller has a token for the upstream to judge.
    pub sign_key: Option<SignKey>,
    /// Publish every commit served as a private BitTorrent torrent (BEP 27), one torrent file
    /// per repo file aligned by pad files (BEP 47), this server's resolve route as its web seed
    /// (BEP 19): `GET /api/{type}s/{repo}/torrent/{rev}` and `/magnet/{rev}`. A mirror
    /// ([`ServeOptions::upstream`]) publishes public commits it holds whole. Not with
    /// [`ServeOptions::sign_key`].
    pub torrents: bool,
    /// The trackers those torrents announce to, the first as `announce`.
    pub trackers: Vec<url::Url>,
    /// Seed every torrent published ([`ServeOptions::torrents`]) from this address, the files
    /// read in place: the origin of a swarm of `ferry pull --swarm` peers (and stock clients).
    /// Needs a tracker; not with [`ServeOptions::upstream`].
    #[cfg(feature = "swarm")]
    pub seed: Option<SocketAddr>,
    /// With [`ServeOptions::seed`]: the most peers the seed serves at once per torrent. The
    /// others take the pieces from the peers it serves: fewer copies leave the origin.
    #[cfg(feature = "swarm")]
    pub seed_peers: usize,
}

/// The upstream of a pull-through mirror ([`ServeOptions::upstream`]).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use ferry::serve::{ServeOptions, Server, UpstreamOptions};
/// let mut options = ServeOptions::default();
/// options.upstream = Some(UpstreamOptions::new("https://huggingface.co".parse()?));
/// let server = Server::bind(
///     std::path::Path::new("/srv/hub-cache"),
///     "127.0.0.1:8080".parse()?,
///     options,
/// )?;
/// server.run()
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpstreamOptions {
    /// The Hub (or a Hub-compatible mirror) to fetch from.
    pub endpoint: url::Url,
    /// Other endpoints with the same repos, tried when the first fails (as `ferry pull
    /// --mirror`); a file's ranges are spread over all of them.
    pub mirrors: Vec<url::Url>,
    /// The engine the fills run on.
    pub config: crate::Config,
    /// The most bytes of blobs the mirror keeps: past it, the least recently used blobs it
    /// fetched are deleted (`None`: no bound).
    pub max_size: Option<u64>,
    /// Never ask the upstream: serve what the cache holds (its refs, kept listings and
    /// blobs) and refuse the rest (503 for a file it lacks).
    pub offline: bool,
    /// Offline, serve every repo in the cache to anyone, also those the upstream never listed
    /// without a token (gated or private: offline no caller can be checked). Off by default.
    pub offline_private: bool,
    /// The mirror's own token, sent with fills only (never to decide who may read).
    token: Option<crate::net::target::Secret>,
}

impl UpstreamOptions {
    /// Mirrors `endpoint`, with the engine's default settings and no token.
    pub fn new(endpoint: url::Url) -> UpstreamOptions {
        UpstreamOptions {
            endpoint,
            mirrors: Vec::new(),
            config: crate::Config::default(),
            max_size: None,
            offline: false,
            offline_private: false,
            token: None,
        }
    }

    /// The mirror's own token for fetching files (a caller's access is decided by the
    /// upstream from the caller's token).
    pub fn token(mut self, token: &str) -> UpstreamOptions {
        self.token = Some(crate::net::target::Secret::bearer(token));
        self
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            page_size: DEFAULT_PAGE_SIZE,
            max_connections: 256,
            head_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(60),
            min_send_rate: 4 << 10,
            tls: None,
            public_url: None,
            trusted_proxies: Vec::new(),
            h3: false,
            upstream: None,
            sign_key: None,
            torrents: false,
            trackers: Vec::new(),
            #[cfg(feature = "swarm")]
            seed: None,
            #[cfg(feature = "swarm")]
            seed_peers: DEFAULT_SEED_PEERS,
        }
    }
}

/// Why a [`Server`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The root is missing or not a directory.
    #[error("root {} is not a directory", path.display())]
    RootNotDir {
        /// The root given.
        path: PathBuf,
    },
    /// The root could not be read.
    #[error("cannot read root {}", path.display())]
    Root {
        /// The root given.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or key for HTTPS cannot be used.
    #[error("TLS certificate: {detail}")]
    Tls {
        /// Which file and why.
        detail: String,
    },
    /// HTTP/3 was asked for without a certificate: QUIC always runs TLS 1.3.
    #[error("HTTP/3 needs a TLS certificate (QUIC always runs TLS 1.3)")]
    H3WithoutTls,
    /// The mirror's engine could not start, or its options cannot work.
    #[error("upstream: {detail}")]
    Upstream {
        /// What failed.
        detail: String,
    },
    /// Torrents were asked for with options they cannot work with.
    #[error("torrents: {detail}")]
    Torrents {
        /// Why not.
        detail: String,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// What a [`Server`] found under its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Repos (models, datasets and spaces).
    pub repos: usize,
    /// Commits with a snapshot, over all repos.
    pub snapshots: usize,
    /// Files over all snapshots.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// A bound, scanned server. Call [`Server::run`] to answer requests.
///
/// ```no_run
/// # fn main() -> Result<(), ferry::serve::ServeError> {
/// use ferry::serve::{ServeOptions, Server};
/// let server = Server::bind(
///     std::path::Path::new("/srv/hub"),
///     "127.0.0.1:8080".parse().expect("address"),
///     ServeOptions::default(),
/// )?;
/// println!("listening on http://{}", server.local_addr());
/// server.run()
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local: SocketAddr,
    ctx: Arc<Shared>,
    root: PathBuf,
    summary: Summary,
}

impl Server {
    /// Scans `root` for repos and binds `addr` (port 0 picks a free port, see
    /// [`Server::local_addr`]). Unreadable or malformed repos are skipped with a warning; only an
    /// unreadable root or a failed bind is an error.
    pub fn bind(
        root: &Path,
        addr: SocketAddr,
        options: ServeOptions,
    ) -> Result<Server, ServeError> {
        if options.upstream.is_some()
            && let Err(source) = std::fs::create_dir_all(root)
        {
            return Err(ServeError::Root {
                path: root.to_path_buf(),
                source,
            });
        }
        let meta = std::fs::metadata(root).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ServeError::RootNotDir {
                path: root.to_path_buf(),
            },
            _ => ServeError::Root {
                path: root.to_path_buf(),
                source,
            },
        })?;
        if !meta.is_dir() {
            return Err(ServeError::RootNotDir {
                path: root.to_path_buf(),
            });
        }
        let canonical = root.canonicalize().map_err(|source| ServeError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        let root_dir =
            crate::backend::nofollow::Dir::open(&canonical).map_err(|source| ServeError::Root {
                path: root.to_path_buf(),
                source,
            })?;
        // A mirror answers from its upstream's listings and looks its blobs up as asked: no scan.
        let catalog = if options.upstream.is_some() {
            Catalog::default()
        } else {
            Catalog::scan(&canonical).map_err(|source| ServeError::Root {
                path: root.to_path_buf(),
                source,
            })?
        };
        let summary = catalog.summary();
        let listener =
            TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
        // TCP Fast Open where `net.ipv4.tcp_fastopen` enables servers (bit 2): a client that
        // holds our cookie sends its request in the SYN and saves a round trip.
        if kernel_probes::net::tcp_fastopen().is_some_and(|v| v & 2 != 0)
            && let Err(e) = crate::backend::sockopt::set_fast_open_listener(&listener, 1024)
        {
            tracing::debug!(error = %e, "TCP Fast Open refused on the listener");
        }
        let local = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        let mut options = options;
        options.page_size = options.page_size.max(1);
        options.max_connections = options.max_connections.max(1);
        let h3 = match (&options.h3, &options.tls) {
            (false, _) => None,
            (true, Some(identity)) => Some(identity.clone()),
            (true, None) => return Err(ServeError::H3WithoutTls),
        };
        let publisher = if options.torrents || !options.trackers.is_empty() {
            if options.sign_key.is_some() {
                return Err(ServeError::Torrents {
                    detail: "a server of signed links publishes no torrents (their web seed \
                             would be refused)"
                        .into(),
                });
            }
            let trackers: Vec<String> = options.trackers.iter().map(|t| t.to_string()).collect();
            let publisher = torrents::Publisher::new(
                root_dir.clone(),
                trackers.clone(),
                crate::swarm::pieces::PieceStore::default_dir(),
            );
            #[cfg(feature = "swarm")]
            let publisher = match options.seed {
                None => publisher,
                Some(listen) => publisher.with_seeder(start_seeder(
                    listen,
                    &options,
                    root_dir.clone(),
                    trackers,
                )?),
            };
            Some(publisher)
        } else {
            #[cfg(feature = "swarm")]
            if options.seed.is_some() {
                return Err(ServeError::Torrents {
                    detail: "--seed seeds the published torrents: it needs --torrents".into(),
                });
            }
            None
        };
        let mirror = match options.upstream.clone() {
            None => None,
            Some(up) => {
                let engine = crate::Engine::new(up.config).map_err(|e| ServeError::Upstream {
                    detail: format!("cannot start the engine: {e}"),
                })?;
                let upstream = crate::hub::upstream::Upstream::new(
                    engine,
                    up.endpoint,
                    up.mirrors,
                    up.token,
                    &canonical,
                );
                Some(
                    mirror::Mirror::new(
                        upstream,
                        &canonical,
                        (
                            up.max_size,
                            up.offline.then_some(if up.offline_private {
                                mirror::Offline::All
                            } else {
                                mirror::Offline::Public
                            }),
                        ),
                    )
                    .map_err(|source| ServeError::Root {
                        path: root.to_path_buf(),
                        source,
                    })?,
                )
            }
        };
        let ctx = Arc::new(Shared {
            catalog,
            root: root_dir,
            options,
            active: AtomicUsize::new(0),
            idle: Idle::default(),
            alt_svc: h3
                .is_some()
                .then(|| format!("h3=\":{}\"; ma=86400", local.port())),
            mirror,
            publisher,
        });
        if let Some(publisher) = &ctx.publisher {
            publisher.prepare_all(&ctx.catalog);
        }
        if let Some(identity) = h3 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            h3::start(local, &identity, &ctx, cores).map_err(|source| ServeError::Bind {
                addr: local,
                source,
            })?;
        }
        Ok(Server {
            listener,
            local,
            ctx,
            root: canonical,
            summary,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The root, canonicalized.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the scan found.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Accepts and answers connections, one thread each, until the process ends. Accept errors
    /// (such as running out of file descriptors) are logged and retried after a pause.
    pub fn run(self) -> ! {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.dispatch(stream, peer),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn dispatch(&self, stream: TcpStream, peer: SocketAddr) {
        let ctx = &self.ctx;
        // Only this thread increments, so a load-then-add cannot overshoot the cap.
        // At the cap, a connection idle between requests gives its slot to the newcomer (its
        // thread ends at once; until then the count may pass the cap by the evictions in
        // flight). Only when none is idle is the newcomer answered 503.
        if ctx.active.load(Ordering::Acquire) >= ctx.options.max_connections
            && !ctx.idle.evict_oldest()
        {
            tracing::warn!(%peer, "connection cap reached; answering 503");
            http::reject_busy(stream, ctx.options.tls.is_some());
            return;
        }
        ctx.active.fetch_add(1, Ordering::AcqRel);
        let guard = http::ActiveGuard(Arc::clone(ctx));
        let spawned = std::thread::Builder::new()
            .name("ferry-serve-conn".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let guard = guard;
                http::serve_connection(stream, peer, &guard.0);
            });
        if let Err(e) = spawned {
            // The closure (and with it the guard and the stream) was dropped: the count is
            // back and the client sees the connection close.
            tracing::warn!(%peer, error = %e, "cannot start a connection thread");
        }
    }
}

/// The seed of `--seed`: refused without a tracker (no peer would find it) and on a mirror.
#[cfg(feature = "swarm")]
fn start_seeder(
    listen: SocketAddr,
    options: &ServeOptions,
    root: crate::backend::nofollow::Dir,
    trackers: Vec<String>,
) -> Result<seed::Seeder, ServeError> {
    let refuse = |detail: String| ServeError::Torrents { detail };
    if trackers.is_empty() {
        return Err(refuse(
            "--seed needs a --tracker: peers find the seed through it".into(),
        ));
    }
    if options.upstream.is_some() {
        return Err(refuse("a mirror (--upstream) does not seed yet".into()));
    }
    if !trackers
        .iter()
        .any(|t| crate::swarm::rqbit::can_announce(t))
    {
        return Err(refuse(
            "--seed announces to http:// and udp:// trackers only (its BitTorrent client is \
             built without TLS)"
                .into(),
        ));
    }
    let state = crate::config::ferry_cache_dir()
        .ok_or_else(|| refuse("no cache folder for the seed's state (set FERRY_CACHE_DIR)".into()))?
        .join("seed");
    seed::Seeder::start((listen, options.seed_peers), state, root, trackers).map_err(refuse)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn start(options: ServeOptions) -> (SocketAddr, tempfile::TempDir) {
        let root = tempfile::tempdir().expect("tmp");
        let server =
            Server::bind(root.path(), "127.0.0.1:0".parse().expect("addr"), options).expect("bind");
        let addr = server.local_addr();
        std::thread::spawn(move || server.run());
        (addr, root)
    }

    fn read_all(s: &mut TcpStream) -> String {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn connections_over_the_cap_get_503() {
        let (addr, _root) = start(ServeOptions {
            max_connections: 1,
            ..ServeOptions::default()
        });
        // The first connection holds the only slot (it sends nothing yet). The accept loop
        // takes connections in order and counts the first before it looks at the second.
        let mut first = TcpStream::connect(addr).expect("connect");
        let mut second = TcpStream::connect(addr).expect("connect");
        let answer = read_all(&mut second);
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        first
            .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .expect("send");
        let answer = read_all(&mut first);
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    }

    #[test]
    fn a_stalled_head_is_cut_off() {
        let (addr, _root) = start(ServeOptions {
            head_timeout: Duration::from_millis(200),
            ..ServeOptions::default()
        });
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n")
            .expect("send");
        let answer = read_all(&mut s);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        // An idle connection is closed without an answer.
        let mut idle = TcpStream::connect(addr).expect("connect");
        assert_eq!(read_all(&mut idle), "");
    }

    #[test]
    fn a_missing_root_is_an_error() {
        let err = Server::bind(
            Path::new("/nonexistent/ferry/root"),
            "127.0.0.1:0".parse().expect("addr"),
            ServeOptions::default(),
        )
        .expect_err("missing root");
        assert!(matches!(err, ServeError::RootNotDir { .. }), "{err}");
    }
}
