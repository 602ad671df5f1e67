//! [`Config`]: how an [`Engine`](crate::Engine) runs, every knob with its default.
//!
//! Plain data: nothing here probes, opens or validates; the engine clamps what it must
//! (`Engine::new`) and the CLI maps its options onto these fields.

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::BackendKind;
use crate::backend::sink::SinkKind;
use crate::net;

/// Connections a job starts with (measured: docs/decisions.md, "Sixteen connections"), or all
/// of [`Config::connections`] when that is fewer.
pub const START_CONNECTIONS: usize = 16;

/// The most connections a job opens by default ([`Config::connections`]): from
/// [`START_CONNECTIONS`] it opens more only while its rate grows with them (docs/decisions.md,
/// "Connections by measurement").
pub const DEFAULT_CONNECTIONS: usize = 32;

/// How an [`Engine`](crate::Engine) runs. Start from [`Config::default`] and change what you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Which back-end to run ([`BackendKind::Auto`] by default).
    pub backend: BackendKind,
    /// Force the portable back-end unless `backend` is [`BackendKind::Uring`]. Also set by
    /// `FERRY_SAFE_MODE=1` in the environment.
    pub safe_mode: bool,
    /// Worker threads; by default one per CPU of the NUMA node nearest `placement_dir`'s disk.
    pub threads: Option<usize>,
    /// The most connections a job keeps open at once, shared by its files
    /// ([`DEFAULT_CONNECTIONS`]). A job starts with [`START_CONNECTIONS`] of them; where this
    /// allows more, it opens as many again, then half as many again, while each step makes it
    /// at least 15 % faster (where a server caps each flow), and goes back where it does not (a
    /// full link). At or below [`START_CONNECTIONS`] the count is fixed.
    pub connections: usize,
    /// Range size; by default about two ranges per connection over what is left, 1-8 MiB, and
    /// on a file with a checksum at most 64 MiB over all the connections together.
    pub chunk_size: Option<u64>,
    /// Size of one write buffer (default 1 MiB; a multiple of 4 KiB).
    pub buffer_size: usize,
    /// Writes in flight per connection (default 4). Memory is bounded per job, however many
    /// files it has: each of the first [`START_CONNECTIONS`] connections holds at most
    /// `write_depth + 1` buffers, each connection opened beyond them (connections by
    /// measurement) at most 2, and with sha256s to check the verifiers keep at most 128 MiB of
    /// written buffers, together, until they are hashed, so buffers take at most
    /// `16 * (write_depth + 1) * buffer_size + (connections - 16) * 2 * buffer_size + 128 MiB`
    /// (240 MiB by default). Returned buffers are kept for reuse and taken before new ones are
    /// allocated, so idle and used together stay under the peak in use.
    /// Buffers are carved from 2 MiB huge-page chunks, which adds at most one partly carved
    /// chunk.
    pub write_depth: usize,
    /// How bytes reach the file; by default O_DIRECT on io_uring where the filesystem allows
    /// it, and buffered in safe mode (which never uses O_DIRECT).
    pub sink: Option<SinkKind>,
    /// Where downloads will land, for NUMA placement of the workers.
    pub placement_dir: Option<PathBuf>,
    /// PEM files of CA certificates to trust for `https://`, besides Mozilla's roots, the
    /// system store, and the files `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE` name.
    pub ca_files: Vec<PathBuf>,
    /// The proxy for every URL (`http://`, `socks5://` or `socks5h://`, credentials allowed);
    /// without it `HTTPS_PROXY`, `HTTP_PROXY` and `ALL_PROXY` apply. `NO_PROXY` applies to both.
    pub proxy: Option<String>,
    /// How long one TCP connect attempt may take (default 10 s).
    pub connect_timeout: Duration,
    /// How long a read may bring no byte before the stall watchdog drops the connection and
    /// the range is fetched again (default 30 s).
    pub read_timeout: Duration,
    /// A cap on the bytes per second all of the engine's downloads read together (a token
    /// bucket shared by every connection); `None` (the default) for no cap.
    pub limit_rate: Option<u64>,
    /// Bytes to leave free on the filesystem a file is written to; by default 1% of it, at
    /// most 256 MiB. A file whose bytes would go under it waits for space (see `space_wait`).
    pub min_free: Option<u64>,
    /// How long a file waits for another process to free disk space before it fails with
    /// [`GetError::NoSpace`](crate::GetError::NoSpace) (default 60 s; zero fails at once).
    pub space_wait: Duration,
    /// Whether a redirect from a public address may lead to a private, loopback or link-local
    /// one (default: refused, with [`GetError::Redirect`](crate::GetError::Redirect)).
    pub allow_private_redirects: bool,
    /// Whether a connection may send its next range request before the answer ahead of it
    /// ended (HTTP/1.1 pipelining, default on): no idle round trip between ranges. It is used
    /// only where answers take a WAN's round trip to come; a server that closes a connection
    /// with a request unanswered gets one request per answer from then on, by itself. This
    /// turns it off everywhere.
    pub pipelining: bool,
    /// Whether `https://` connections offer HTTP/2 (ALPN `h2`, then `http/1.1`; `ferry
    /// --http2`). Where the server picks `h2`, a connection's requests go as streams of it,
    /// answered in the order asked, with no pipelining caveats; where it picks `http/1.1`,
    /// nothing changes. Off by default (every connection offers only `http/1.1`): over HTTP/2
    /// each byte costs about a third more CPU (docs/decisions.md), which on a machine with few
    /// cores is throughput lost.
    pub http2: bool,
    /// Whether `https://` origins reached without a proxy are tried over HTTP/3 (QUIC) first
    /// (`ferry --http3`): a connection whose QUIC handshake does not finish within 2 s, or that
    /// the server refuses, goes over TCP instead, and so does every later connection to that
    /// origin in the job; [`QuicReport::fallback`](crate::QuicReport::fallback) says why. Off by
    /// default.
    pub http3: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendKind::Auto,
            safe_mode: false,
            threads: None,
            connections: DEFAULT_CONNECTIONS,
            chunk_size: None,
            buffer_size: 1 << 20,
            write_depth: 4,
            sink: None,
            placement_dir: None,
            ca_files: Vec::new(),
            proxy: None,
            connect_timeout: net::Timeouts::default().connect,
            read_timeout: net::Timeouts::default().read,
            limit_rate: None,
            min_free: None,
            space_wait: Duration::from_secs(60),
            allow_private_redirects: false,
            pipelining: true,
            http2: false,
            http3: false,
        }
    }
}

/// ferry's own cache folder (what it learnt and may forget: Alt-Svc, piece hashes):
/// `$FERRY_CACHE_DIR`, else `$XDG_CACHE_HOME/ferry`, else `~/.cache/ferry`; `None` when none of
/// them is set.
pub(crate) fn ferry_cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("FERRY_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|x| x.join("ferry")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/ferry")))
}
