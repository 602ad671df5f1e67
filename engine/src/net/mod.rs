//! Connecting: resolve a host once per job, then open TCP connections on the calling worker's
//! runtime with Happy Eyeballs (RFC 8305: both address families raced, a new attempt every
//! 250 ms); through a proxy when one applies ([`proxy`]: a
//! `CONNECT` or SOCKS5 tunnel, or absolute-form requests to an HTTP proxy), and TLS over that
//! for `https://` ([`tls`]). TCP Fast Open (RFC 7413) where `net.ipv4.tcp_fastopen` enables
//! clients, for connections to an address that has already answered ([`connect`] says why);
//! the Hub API client's blocking connections do not use it.

pub(crate) mod altsvc;
mod connect;
pub(crate) mod h2;
pub(crate) mod proxy;
pub(crate) mod quic;
pub(crate) mod rate;
pub(crate) mod target;
pub(crate) mod tls;
mod watch;

pub(crate) use self::connect::{FastOpen, Winners, connect, connect_blocking};
pub(crate) use self::watch::{Hedge, Watch, WatchError, is_hedged, watched, watched_cancellable};

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use compio::BufResult;
use compio::buf::{IoBuf, IoBufMut};
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpStream;

use self::proxy::{Dest, Handshake, Proxies, Proxy};
use crate::error::GetError;

/// What connections are made with: the TLS trust, the proxy settings and the timeouts. Cheap
/// to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dialer {
    pub tls: tls::TlsClient,
    pub proxies: Arc<Proxies>,
    pub timeouts: Timeouts,
    /// Which address won the last race to each host.
    pub winners: Arc<Winners>,
    /// `--limit-rate`: the cap on all connections' reads together.
    pub rate: Option<Arc<rate::RateLimit>>,
    /// Whether connections to an address that already won a race use TCP Fast Open.
    pub fast_open: bool,
    /// Whether a redirect from a public address may lead to a private one
    /// ([`crate::proto::http1::redirect`]).
    pub allow_private_redirects: bool,
    /// Whether the data plane's `https://` connections offer HTTP/2 (`Config::http2`).
    pub http2: bool,
    /// Whether they try HTTP/3 over QUIC first (`Config::http3`), and what the job's QUIC
    /// connections learnt.
    pub http3: bool,
    pub quic: Arc<quic::QuicState>,
    /// Safe mode (`Config::safe_mode`): no QUIC.
    pub safe_mode: bool,
}

/// A stream of an HTTP/2 or HTTP/3 connection that the server reset: the stream's end, not
/// the connection's (which may carry other answers on). Read as an I/O error of kind
/// `ConnectionReset` whose payload is this ([`is_stream_reset`]).
#[derive(Debug)]
pub(crate) struct StreamReset(pub(crate) String);

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StreamReset {}

/// The I/O error a reset stream reads as.
pub(crate) fn stream_reset(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, StreamReset(what))
}

/// Whether `e` is a reset stream ([`stream_reset`]) rather than a failed connection.
pub(crate) fn is_stream_reset(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<StreamReset>())
}

/// How long connecting and reading may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// One TCP connect attempt.
    pub connect: Duration,
    /// A read that brings no byte: the stall watchdog's limit.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(30),
        }
    }
}

/// How a connection reaches its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Straight to the origin's addresses.
    Direct,
    /// To a proxy, which opens a tunnel to `dest` (`CONNECT` or SOCKS5); then as if direct.
    Tunnel { proxy: Arc<Proxy>, dest: Dest },
    /// To an HTTP proxy, asked for absolute URLs (plain `http://` targets).
    Forward { proxy: Arc<Proxy> },
}

impl Route {
    /// How a request for `url` (to `host:port`) goes under `proxies`; `resolve` gives the
    /// origin's address when the proxy wants one (`socks5://`). An HTTP proxy forwards plain
    /// `http://` requests itself: many refuse `CONNECT` to ports other than 443.
    pub(crate) fn for_url<E>(
        proxies: &Proxies,
        url: &url::Url,
        host: &str,
        port: u16,
        resolve: impl FnOnce() -> Result<SocketAddr, E>,
    ) -> Result<Route, E> {
        let Some(proxy) = proxies.for_url(url.scheme(), host, port) else {
            return Ok(Route::Direct);
        };
        if url.scheme() == "http" && proxy.kind == proxy::ProxyKind::Http {
            return Ok(Route::Forward { proxy });
        }
        let dest = if proxy.resolves_locally() {
            Dest::Addr(resolve()?)
        } else {
            Dest::Name(host.to_owned(), port)
        };
        Ok(Route::Tunnel { proxy, dest })
    }

    /// The proxy the connection goes to, if any.
    pub(crate) fn proxy(&self) -> Option<&Proxy> {
        match self {
            Route::Direct => None,
            Route::Tunnel { proxy, .. } | Route::Forward { proxy } => Some(proxy),
        }
    }

    /// The request target for `url`: absolute-form to a forwarding proxy, else `origin_form`.
    pub(crate) fn request_target(&self, url: &url::Url, origin_form: String) -> String {
        match self {
            Route::Forward { .. } => {
                let mut absolute = url.clone();
                absolute.set_fragment(None);
                absolute.to_string()
            }
            _ => origin_form,
        }
    }

    /// The `Proxy-Authorization` value each request carries (forwarding proxies only; a
    /// tunnel authenticates once, in its handshake).
    pub(crate) fn proxy_authorization(&self) -> Option<String> {
        match self {
            Route::Forward { proxy } => proxy.authorization(),
            _ => None,
        }
    }
}

/// A connection to a server: plain TCP, or TLS over it.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tls::TlsStream>),
}

impl Stream {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.tcp(),
        }
    }

    /// The socket, when bytes on it are the plain bytes of the response (what splice needs).
    pub(crate) fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) => None,
        }
    }

    /// Reads into `buf`'s spare room; `Ok(0)` at the end of the stream.
    pub(crate) async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    /// [`Stream::read`] under the stall watchdog ([`watched`]).
    pub(crate) async fn read_watched<B: IoBufMut>(
        &mut self,
        buf: B,
        watch: Watch<'_>,
    ) -> BufResult<usize, B> {
        use compio::driver::ToSharedFd;
        use futures_util::FutureExt;
        let socket = self.tcp().to_shared_fd();
        let read = self.read(buf).map(|BufResult(r, buf)| (r, buf));
        let (r, buf) = watched(read, &socket, watch).await;
        BufResult(r.map_err(WatchError::into_io), buf)
    }

    /// Sends all of `data`.
    pub(crate) async fn write_all(&mut self, data: Vec<u8>) -> BufResult<(), Vec<u8>> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => s.write_all(data).await,
        }
    }
}

/// How [`open`] went: how long its steps took, and whether Fast Open was used.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OpenTimes {
    /// The TCP connect (the Happy Eyeballs race), and the proxy's tunnel when there is one.
    pub connect: Duration,
    /// The TLS handshake, for `https://`.
    pub tls: Option<Duration>,
    /// Whether the TCP connection used Fast Open ([`connect`]).
    pub fast_open: FastOpen,
}

/// Connects to the first of `addrs` that accepts ([`connect`]), opens the tunnel `route` asks
/// for, then runs TLS with `tls_host` when given, offering the protocols of `alpn` (which one
/// the server took: [`tls::TlsStream::negotiated_h2`]); says how long each step took.
pub(crate) async fn open(
    dialer: &Dialer,
    addrs: &[SocketAddr],
    route: &Route,
    tls_host: Option<&str>,
    alpn: tls::Alpn,
) -> Result<(Stream, OpenTimes), GetError> {
    let started = std::time::Instant::now();
    let (mut tcp, fast_open) =
        connect(addrs, dialer)
            .await
            .map_err(|e| match (e, route.proxy()) {
                (GetError::Connect { addr, source }, Some(proxy)) => GetError::Connect {
                    addr: format!("{addr} (proxy {proxy})"),
                    source,
                },
                (e, _) => e,
            })?;
    let addr = tcp
        .peer_addr()
        .map_or_else(|_| addrs[0].to_string(), |a| a.to_string());
    // A Fast Open connection has not heard from the server yet: when the tunnel or the TLS
    // handshake (its first exchange) fails, the address goes back to racing.
    let forget = |e: GetError| {
        if fast_open {
            dialer.winners.forget(addrs[0]);
        }
        e
    };
    if let Route::Tunnel { proxy, dest } = route {
        tunnel(&mut tcp, Handshake::new(Arc::clone(proxy), dest.clone()))
            .await
            .map_err(|e| match e {
                TunnelError::Proxy(detail) => GetError::Proxy { detail },
                TunnelError::Io(source) => GetError::Network {
                    addr: format!("{addr} (proxy {proxy})"),
                    op: "open a tunnel",
                    source,
                },
            })
            .map_err(forget)?;
    }
    let mut times = OpenTimes {
        connect: started.elapsed(),
        tls: None,
        fast_open,
    };
    let Some(host) = tls_host else {
        return Ok((Stream::Plain(tcp), times));
    };
    match tls::TlsStream::connect_alpn(&dialer.tls, host, tcp, alpn).await {
        Ok(s) => {
            times.tls = Some(started.elapsed() - times.connect);
            Ok((Stream::Tls(Box::new(s)), times))
        }
        Err(tls::HandshakeError::Setup(detail)) => Err(GetError::TlsSetup { detail }),
        Err(tls::HandshakeError::Tls(detail)) => Err(GetError::Tls { addr, detail }),
        Err(tls::HandshakeError::Io(source)) => Err(forget(GetError::Network {
            addr,
            op: "TLS handshake",
            source,
        })),
    }
}

/// Resolves `host:port` (blocking; called once per job, off the workers).
pub(crate) fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, GetError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| GetError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(GetError::Resolve {
            host: host.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        });
    }
    Ok(addrs)
}

/// Why a tunnel could not be opened.
enum TunnelError {
    Proxy(String),
    Io(std::io::Error),
}

/// Runs a proxy handshake on `tcp`.
async fn tunnel(tcp: &mut TcpStream, mut hs: Handshake) -> Result<(), TunnelError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let out = hs.take_output();
        if !out.is_empty() {
            let BufResult(r, _) = tcp.write_all(out).await;
            r.map_err(TunnelError::Io)?;
        }
        if hs.is_done() {
            return Ok(());
        }
        if let Some(n) = hs.feed(&buf).map_err(|e| TunnelError::Proxy(e.0))? {
            buf.drain(..n);
            continue;
        }
        let len = buf.len();
        buf.reserve(1024);
        let BufResult(r, slice) = tcp.read(buf.slice(len..len + 1024)).await;
        buf = compio::buf::IntoInner::into_inner(slice);
        if r.map_err(TunnelError::Io)? == 0 {
            return Err(TunnelError::Proxy(
                "the proxy closed the connection during the handshake".into(),
            ));
        }
    }
}
