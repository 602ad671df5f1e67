//! Connecting: resolve a host once per job, then open TCP connections on the calling worker's
//! runtime, trying each address in turn; through a proxy when one applies ([`proxy`]: a
//! `CONNECT` or SOCKS5 tunnel, or absolute-form requests to an HTTP proxy), and TLS over that
//! for `https://` ([`tls`]). Happy Eyeballs is not here yet.

pub(crate) mod proxy;
pub(crate) mod tls;

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
    pub fn for_url<E>(
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
    pub fn proxy(&self) -> Option<&Proxy> {
        match self {
            Route::Direct => None,
            Route::Tunnel { proxy, .. } | Route::Forward { proxy } => Some(proxy),
        }
    }

    /// The request target for `url`: absolute-form to a forwarding proxy, else `origin_form`.
    pub fn request_target(&self, url: &url::Url, origin_form: String) -> String {
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
    pub fn proxy_authorization(&self) -> Option<String> {
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
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.tcp(),
        }
    }

    /// The socket, when bytes on it are the plain bytes of the response (what splice needs).
    pub fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) => None,
        }
    }

    /// Reads into `buf`'s spare room; `Ok(0)` at the end of the stream.
    pub async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    /// [`Stream::read`] under the stall watchdog: when no byte comes for `limit`, the socket's
    /// receiving side is shut down, which ends the read (the buffer comes back, nothing it
    /// already held is lost), and the read fails with `TimedOut`.
    pub async fn read_watched<B: IoBufMut>(
        &mut self,
        buf: B,
        limit: Duration,
    ) -> BufResult<usize, B> {
        use compio::driver::ToSharedFd;
        use futures_util::future::{Either, select};
        let socket = self.tcp().to_shared_fd();
        let read = std::pin::pin!(self.read(buf));
        let timer = std::pin::pin!(compio::time::sleep(limit));
        match select(read, timer).await {
            Either::Left((r, _)) => r,
            Either::Right(((), read)) => {
                let _ = rustix::net::shutdown(&socket, rustix::net::Shutdown::Read);
                match read.await {
                    BufResult(Ok(0), buf) => BufResult(
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no byte for {} s (stalled)", limit.as_secs_f64()),
                        )),
                        buf,
                    ),
                    other => other,
                }
            }
        }
    }

    /// Sends all of `data`.
    pub async fn write_all(&mut self, data: Vec<u8>) -> BufResult<(), Vec<u8>> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => s.write_all(data).await,
        }
    }
}

/// Connects to the first of `addrs` that accepts, opens the tunnel `route` asks for, then runs
/// TLS with `tls_host` when given.
pub(crate) async fn open(
    addrs: &[SocketAddr],
    route: &Route,
    tls: Option<(&tls::TlsClient, &str)>,
    timeout: Duration,
) -> Result<Stream, GetError> {
    let mut tcp = connect(addrs, timeout)
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
            })?;
    }
    let Some((client, host)) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    match tls::TlsStream::connect(client, host, tcp).await {
        Ok(s) => Ok(Stream::Tls(Box::new(s))),
        Err(tls::HandshakeError::Setup(detail)) => Err(GetError::TlsSetup { detail }),
        Err(tls::HandshakeError::Tls(detail)) => Err(GetError::Tls { addr, detail }),
        Err(tls::HandshakeError::Io(source)) => Err(GetError::Network {
            addr,
            op: "TLS handshake",
            source,
        }),
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

/// Connects to the first address that accepts, each attempt within `timeout`.
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<TcpStream, GetError> {
    let mut last = None;
    for addr in addrs {
        let attempt = compio::time::timeout(timeout, TcpStream::connect(*addr)).await;
        match attempt {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some((addr, e)),
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", timeout.as_secs_f64()),
                );
                last = Some((addr, e));
            }
        }
    }
    let (addr, source) = last.map_or_else(
        || {
            (
                String::from("(no address)"),
                std::io::Error::other("no address to connect to"),
            )
        },
        |(a, e)| (a.to_string(), e),
    );
    Err(GetError::Connect { addr, source })
}
