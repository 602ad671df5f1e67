//! Connecting: resolve a host once per job, then open TCP connections on the calling worker's
//! runtime with Happy Eyeballs (RFC 8305: both address families raced, a new attempt every
//! 250 ms); through a proxy when one applies ([`proxy`]: a
//! `CONNECT` or SOCKS5 tunnel, or absolute-form requests to an HTTP proxy), and TLS over that
//! for `https://` ([`tls`]). TCP Fast Open (RFC 7413) where `net.ipv4.tcp_fastopen` enables
//! clients, for connections to an address that has already answered ([`connect`] says why);
//! the Hub API client's blocking connections do not use it.

pub(crate) mod proxy;
pub(crate) mod rate;
pub(crate) mod target;
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
    /// Which address won the last race to each host.
    pub winners: Arc<Winners>,
    /// `--limit-rate`: the cap on all connections' reads together.
    pub rate: Option<Arc<rate::RateLimit>>,
    /// Whether connections to an address that already won a race use TCP Fast Open.
    pub fast_open: bool,
    /// Whether a redirect from a public address may lead to a private one
    /// ([`crate::proto::http1::redirect`]).
    pub allow_private_redirects: bool,
}

/// The address that won the last Happy Eyeballs race for each list of addresses (keyed by the
/// list's first), tried first by later connections, which then need no race (RFC 8305 section
/// 4 allows such a cache). When it stops answering, the race runs again.
#[derive(Debug, Default)]
pub(crate) struct Winners(std::sync::Mutex<std::collections::HashMap<SocketAddr, SocketAddr>>);

impl Winners {
    /// `addrs` in the order to try them: interleaved, the last winner first.
    fn order(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut order = interleave(addrs);
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let winner = addrs.first().and_then(|first| map.get(first));
        if let Some(at) = winner.and_then(|w| order.iter().position(|a| a == w)) {
            let w = order.remove(at);
            order.insert(0, w);
        }
        order
    }

    fn record(&self, addrs: &[SocketAddr], winner: SocketAddr) {
        if let Some(first) = addrs.first() {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.insert(*first, winner);
        }
    }

    /// The last winner for `addrs`, if any.
    fn known(&self, addrs: &[SocketAddr]) -> Option<SocketAddr> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        addrs.first().and_then(|first| map.get(first)).copied()
    }

    /// Forgets the winner for the list whose first address is `first`: it failed on a
    /// connection that skipped the handshake (TCP Fast Open), so the next one races again.
    pub(crate) fn forget(&self, first: SocketAddr) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&first);
    }
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
        limit: Duration,
    ) -> BufResult<usize, B> {
        use compio::driver::ToSharedFd;
        use futures_util::FutureExt;
        let socket = self.tcp().to_shared_fd();
        let read = self.read(buf).map(|BufResult(r, buf)| (r, buf));
        let (r, buf) = watched(read, &socket, limit).await;
        BufResult(r.map_err(|e| e.into_io(limit)), buf)
    }

    /// Sends all of `data`.
    pub(crate) async fn write_all(&mut self, data: Vec<u8>) -> BufResult<(), Vec<u8>> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => s.write_all(data).await,
        }
    }
}

/// Why a read under the stall watchdog ended without bytes.
#[derive(Debug)]
pub(crate) enum WatchError {
    /// The read failed.
    Io(std::io::Error),
    /// No byte came for the watchdog's limit.
    Stalled,
}

impl WatchError {
    /// As an I/O error; a stall becomes `TimedOut`, saying for how long nothing came.
    pub(crate) fn into_io(self, limit: Duration) -> std::io::Error {
        match self {
            WatchError::Io(e) => e,
            WatchError::Stalled => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no byte for {} s (stalled)", limit.as_secs_f64()),
            ),
        }
    }
}

/// The stall watchdog: runs `read` (a read of `socket`, through a buffer or a splice), and
/// when no byte comes for `limit`, shuts the socket's receiving side down. That ends the read
/// as the end of the stream would, so the operation completes normally (its buffer comes back,
/// nothing it already moved is lost, no in-flight operation is cancelled), and a read that
/// then brings nothing is reported as [`WatchError::Stalled`]. The connection is not usable
/// afterwards.
pub(crate) async fn watched<T>(
    read: impl std::future::Future<Output = (std::io::Result<usize>, T)>,
    socket: &impl std::os::fd::AsFd,
    limit: Duration,
) -> (Result<usize, WatchError>, T) {
    use futures_util::future::{Either, select};
    let read = std::pin::pin!(read);
    let timer = std::pin::pin!(compio::time::sleep(limit));
    let ((r, buf), fired) = match select(read, timer).await {
        Either::Left((r, _)) => (r, false),
        Either::Right(((), read)) => {
            let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Read);
            (read.await, true)
        }
    };
    let r = match r {
        Ok(0) if fired => Err(WatchError::Stalled),
        Ok(n) => Ok(n),
        Err(e) => Err(WatchError::Io(e)),
    };
    (r, buf)
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
/// for, then runs TLS with `tls_host` when given; says how long each step took.
pub(crate) async fn open(
    dialer: &Dialer,
    addrs: &[SocketAddr],
    route: &Route,
    tls_host: Option<&str>,
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
    match tls::TlsStream::connect(&dialer.tls, host, tcp).await {
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

/// How long an attempt has alone before the next address is tried beside it (RFC 8305's
/// "Connection Attempt Delay", its recommended 250 ms).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The order addresses are tried in (RFC 8305 section 4): the resolver's order (RFC 6724 put
/// the preferred family first), with the two families alternating, so that one family that
/// does not answer costs one attempt delay, not one connect timeout per address.
pub(crate) fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut same, mut other): (Vec<_>, Vec<_>) =
        addrs.iter().partition(|a| a.is_ipv6() == first.is_ipv6());
    let mut out = Vec::with_capacity(addrs.len());
    same.reverse();
    other.reverse();
    while let Some(a) = same.pop() {
        out.push(a);
        if let Some(b) = other.pop() {
            out.push(b);
        }
    }
    out.extend(other.into_iter().rev());
    out
}

/// Connects with Happy Eyeballs (RFC 8305): the addresses in [`interleave`]d order, a new
/// attempt started when the last one failed or had no answer for [`ATTEMPT_DELAY`], the
/// attempts racing, the first connection to complete kept and the others dropped. Each
/// attempt is bounded by the dialer's connect timeout. The race's winner goes first next time
/// ([`Winners`]).
///
/// With the dialer's `fast_open`, the attempt to the last winner uses TCP Fast Open (the
/// result says whether the connection did): once the kernel holds a cookie for it, `connect`
/// completes at once and the request rides in the SYN, saving a round trip per new
/// connection. Only that address: a Fast Open connect to a dead address
/// with a cookie would "succeed" at once and win the race, and the failure would only show at
/// the first read. When that happens to the winner, its caller forgets it
/// ([`Winners::forget`]) and the next connection races again.
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    dialer: &Dialer,
) -> Result<(TcpStream, FastOpen), GetError> {
    use futures_util::StreamExt;
    use futures_util::future::{Either, select};
    use futures_util::stream::FuturesUnordered;

    let (timeout, winners) = (dialer.timeouts.connect, &*dialer.winners);
    let order = winners.order(addrs);
    let fast = winners.known(addrs).filter(|_| dialer.fast_open);
    let mut next = order.iter().copied();
    let attempt = |addr: SocketAddr| async move {
        let r = match compio::time::timeout(timeout, connect_one(addr, fast == Some(addr))).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", timeout.as_secs_f64()),
            )),
        };
        (addr, r)
    };
    let mut racing = FuturesUnordered::new();
    let mut failed: Vec<(SocketAddr, std::io::Error)> = Vec::new();
    racing.extend(next.next().map(attempt));
    while !racing.is_empty() {
        let done = if next.len() > 0 {
            let delay = std::pin::pin!(compio::time::sleep(ATTEMPT_DELAY));
            match select(racing.next(), delay).await {
                Either::Left((done, _)) => done,
                Either::Right(((), _)) => {
                    // No answer yet: the next address joins the race.
                    racing.extend(next.next().map(attempt));
                    continue;
                }
            }
        } else {
            racing.next().await
        };
        let Some((addr, result)) = done else { break };
        match result {
            Ok((stream, fast_open)) => {
                let started = &order[..order.len() - next.len()];
                won(winners, addrs, (started, &failed), addr);
                let _ = stream.set_nodelay(true);
                return Ok((stream, fast_open));
            }
            Err(e) => {
                failed.push((addr, e));
                // A failure starts the next attempt at once.
                racing.extend(next.next().map(attempt));
            }
        }
    }
    let (addr, source) = all_failed(failed);
    Err(GetError::Connect { addr, source })
}

/// Whether a connection was opened with TCP Fast Open, and so has not heard from the server
/// yet: it may have skipped the handshake.
pub(crate) type FastOpen = bool;

/// One TCP connect, with `TCP_FASTOPEN_CONNECT` set first when `fast_open`; a kernel that
/// refuses the option gets a plain connect. Says whether the option was set.
async fn connect_one(addr: SocketAddr, fast_open: bool) -> std::io::Result<(TcpStream, FastOpen)> {
    if !fast_open {
        return Ok((TcpStream::connect(addr).await?, false));
    }
    let socket = if addr.is_ipv6() {
        compio::net::TcpSocket::new_v6().await?
    } else {
        compio::net::TcpSocket::new_v4().await?
    };
    let set = match crate::backend::sockopt::set_fast_open_connect(&socket) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "TCP Fast Open refused; connecting without it");
            false
        }
    };
    Ok((socket.connect(addr).await?, set))
}

/// [`connect`] for blocking sockets (the Hub API client): the same order, delay and cache, each
/// attempt on a thread of its own. An attempt still waiting when another won ends on its own
/// (within `timeout`) and its socket is closed.
pub(crate) fn connect_blocking(
    addrs: &[SocketAddr],
    timeout: Duration,
    winners: &Winners,
) -> std::io::Result<std::net::TcpStream> {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let order = winners.order(addrs);
    let mut next = order.iter().copied();
    let (tx, rx) = channel();
    let start = |addr: Option<SocketAddr>| {
        let Some(addr) = addr else { return };
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((addr, std::net::TcpStream::connect_timeout(&addr, timeout)));
        });
    };
    let mut failed: Vec<(SocketAddr, std::io::Error)> = Vec::new();
    start(next.next());
    // Attempts started are those taken from `next`.
    let mut finished = 0;
    while finished < order.len() - next.len() {
        let done = if next.len() > 0 {
            match rx.recv_timeout(ATTEMPT_DELAY) {
                Ok(done) => done,
                Err(RecvTimeoutError::Timeout) => {
                    start(next.next());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(done) => done,
                Err(_) => break,
            }
        };
        finished += 1;
        match done {
            (addr, Ok(stream)) => {
                let started = &order[..order.len() - next.len()];
                won(winners, addrs, (started, &failed), addr);
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            (addr, Err(e)) => {
                failed.push((addr, e));
                start(next.next());
            }
        }
    }
    let (addr, e) = all_failed(failed);
    Err(std::io::Error::new(e.kind(), format!("{addr}: {e}")))
}

/// `addr` won a race among the `started` addresses (`failed` those that failed): keeps it
/// first for next time, and when it was not the only attempt, says how the others fared.
fn won(
    winners: &Winners,
    addrs: &[SocketAddr],
    (started, failed): (&[SocketAddr], &[(SocketAddr, std::io::Error)]),
    addr: SocketAddr,
) {
    // Recorded even without a race: an address that answered is what Fast Open may go to.
    winners.record(addrs, addr);
    if started.len() < 2 {
        return;
    }
    let others: Vec<String> = started
        .iter()
        .filter(|a| **a != addr)
        .map(|a| match failed.iter().find(|(f, _)| f == a) {
            Some((_, e)) => format!("{a}: {e}"),
            None => format!("{a}: no answer yet"),
        })
        .collect();
    tracing::info!(
        "connected to {addr} (happy eyeballs; {})",
        others.join("; ")
    );
}

/// Every address failed: the addresses to name (all of them when they failed alike, else the
/// last) and the error.
fn all_failed(mut failed: Vec<(SocketAddr, std::io::Error)>) -> (String, std::io::Error) {
    let Some((last_addr, source)) = failed.pop() else {
        return (
            String::from("(no address)"),
            std::io::Error::other("no address to connect to"),
        );
    };
    let addr = if failed.iter().all(|(_, e)| e.kind() == source.kind()) {
        let mut all: Vec<String> = failed.iter().map(|(a, _)| a.to_string()).collect();
        all.push(last_addr.to_string());
        all.join(" or ")
    } else {
        last_addr.to_string()
    };
    (addr, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().expect("address")).collect()
    }

    #[test]
    fn families_alternate_starting_with_the_resolvers_first() {
        let got = interleave(&addrs(&[
            "[::1]:80",
            "[::2]:80",
            "[::3]:80",
            "127.0.0.1:80",
            "127.0.0.2:80",
        ]));
        let want = addrs(&[
            "[::1]:80",
            "127.0.0.1:80",
            "[::2]:80",
            "127.0.0.2:80",
            "[::3]:80",
        ]);
        assert_eq!(got, want);
        let got = interleave(&addrs(&[
            "127.0.0.1:80",
            "127.0.0.2:80",
            "127.0.0.3:80",
            "[::1]:80",
        ]));
        let want = addrs(&["127.0.0.1:80", "[::1]:80", "127.0.0.2:80", "127.0.0.3:80"]);
        assert_eq!(got, want);
    }

    #[test]
    fn one_family_keeps_its_order() {
        let one = addrs(&["127.0.0.3:80", "127.0.0.1:80"]);
        assert_eq!(interleave(&one), one);
        assert!(interleave(&[]).is_empty());
    }
}
