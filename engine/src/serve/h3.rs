//! HTTP/3 for `ferry serve --tls-cert ... --h3`: QUIC on the UDP port of the same number as
//! the TCP listener, with the same certificate, one endpoint per core (`SO_REUSEPORT`: the
//! kernel spreads clients over the sockets by address, so a connection's datagrams all reach
//! one thread), each on a compio runtime of its own thread (compio-quic, with the h3 crate).
//! Every request stream gets the answer an HTTP/1.1 request gets (`streams.rs`: the same
//! routes, checks, errors and ranges).
//!
//! Invariants: QUIC connections count against the same `--max-connections` as TCP ones (one
//! over it is refused); at most [`MAX_STREAMS`] request streams at once per connection; what a
//! connection may have in flight to a client is bounded by its send window
//! ([`SEND_WINDOW`]) and h3's one frame per stream; a POST body is read up to the HTTP/1.1
//! limit within the head timeout (else the stream is stopped); a stream whose client takes too
//! little for the write timeout is reset (`send.rs` `Pace`); a connection with no stream open
//! for the idle timeout is shut down with GOAWAY. Not here: 0-RTT, Retry (address validation
//! is QUIC's anti-amplification limit alone for now), the TCP side's `Alt-Svc` (`handler.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, Bytes};
use compio::quic::h3::error::Code;
use compio::quic::{Endpoint, EndpointConfig, ServerConfig, VarInt};
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use futures_util::stream::FuturesUnordered;

use super::Shared;
use super::handler::Body;
use super::http::{MAX_BODY, MAX_HEAD};
use super::send::Pace;
use super::streams::{self, Chunks, timed};
use super::tls_identity::TlsIdentity;

type Connection = compio::quic::h3::server::Connection<compio::quic::Connection, Bytes>;
type RequestStream =
    compio::quic::h3::server::RequestStream<compio::quic::h3::BidiStream<Bytes>, Bytes>;

/// Request streams one connection may have open at once (as over HTTP/2).
pub(crate) const MAX_STREAMS: u32 = 128;

/// Bytes a connection may have sent and not yet acknowledged, over all its streams.
const SEND_WINDOW: u64 = 16 << 20;

/// Binds one UDP socket per endpoint thread on `local` (the TCP listener's address, its port
/// included) and starts the threads. An error: the port cannot be had over UDP.
pub(super) fn start(
    local: SocketAddr,
    identity: &TlsIdentity,
    ctx: &Arc<Shared>,
    endpoints: usize,
) -> io::Result<()> {
    let config = server_config(identity, ctx)?;
    let mut sockets = Vec::with_capacity(endpoints);
    for _ in 0..endpoints.max(1) {
        sockets.push(bind_reuseport(local)?);
    }
    let backend = if kernel_probes::uring().is_available() {
        crate::backend::Backend::Uring
    } else {
        crate::backend::Backend::Portable
    };
    for (i, socket) in sockets.into_iter().enumerate() {
        let (config, ctx) = (config.clone(), Arc::clone(ctx));
        std::thread::Builder::new()
            .name(format!("ferry-serve-h3-{i}"))
            .spawn(move || {
                let rt = match crate::runtime::build_runtime(backend, 1) {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::warn!(error = %e, "no runtime for an HTTP/3 endpoint");
                        return;
                    }
                };
                rt.block_on(async move {
                    if let Err(e) = run(socket, config, &ctx).await {
                        tracing::warn!(error = %e, "HTTP/3 endpoint stopped");
                    }
                });
            })?;
    }
    Ok(())
}

/// The QUIC server configuration: `identity`'s certificate, ALPN `h3`, the stream and window
/// limits, the idle timeout.
fn server_config(identity: &TlsIdentity, ctx: &Shared) -> io::Result<ServerConfig> {
    let mut tls = identity.config().as_ref().clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| io::Error::other(format!("no TLS 1.3 cipher suite QUIC can use: {e}")))?;
    let mut config = ServerConfig::with_crypto(Arc::new(crypto));
    let idle = quinn_proto::IdleTimeout::try_from(ctx.options.idle_timeout)
        .map_err(|e| io::Error::other(format!("idle timeout: {e}")))?;
    let mut transport = quinn_proto::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        // A request (a POST's body at most) is small: a stream's window is the body limit.
        .stream_receive_window(VarInt::from_u32(MAX_BODY as u32))
        .receive_window(VarInt::from_u32(4 * MAX_BODY as u32))
        .send_window(SEND_WINDOW)
        .max_idle_timeout(Some(idle));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A UDP socket bound to `addr` with `SO_REUSEPORT`, so that each endpoint thread has its own.
fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use rustix::net::{AddressFamily, SocketType, bind, socket, sockopt};
    let family = if addr.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let fd = socket(family, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true)?;
    }
    bind(&fd, &addr)?;
    let socket = std::net::UdpSocket::from(fd);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Accepts QUIC connections on `socket` until the endpoint fails.
async fn run(
    socket: std::net::UdpSocket,
    config: ServerConfig,
    ctx: &Arc<Shared>,
) -> io::Result<()> {
    let socket = compio::net::UdpSocket::from_std(socket)?;
    let endpoint = Endpoint::new(socket, EndpointConfig::default(), Some(config), None)?;
    let local = endpoint.local_addr()?;
    while let Some(incoming) = endpoint.wait_incoming().await {
        let peer = incoming.remote_address();
        if ctx.active.load(Ordering::Acquire) >= ctx.options.max_connections {
            tracing::warn!(%peer, "connection cap reached; refusing a QUIC connection");
            incoming.refuse();
            continue;
        }
        ctx.active.fetch_add(1, Ordering::AcqRel);
        let guard = super::http::ActiveGuard(Arc::clone(ctx));
        compio::runtime::spawn(async move {
            let guard = guard;
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "QUIC connection not accepted");
                    return;
                }
            };
            match timed(connecting, guard.0.options.head_timeout).await {
                Some(Ok(quic)) => {
                    let ended = serve(quic.clone(), peer, local, &guard.0).await;
                    // The UDP path as this side used it: datagrams per send is GSO at work.
                    let s = quic.stats();
                    tracing::debug!(
                        %peer,
                        error = ended.err().map(|e| e.to_string()),
                        datagrams_sent = s.udp_tx.datagrams,
                        sends = s.udp_tx.ios,
                        datagrams_received = s.udp_rx.datagrams,
                        lost_packets = s.path.lost_packets,
                        "HTTP/3 connection ended"
                    );
                }
                Some(Err(e)) => tracing::debug!(%peer, error = %e, "QUIC handshake failed"),
                None => tracing::debug!(%peer, "QUIC handshake timed out"),
            }
        })
        .detach();
    }
    Ok(())
}

/// Serves one HTTP/3 connection until it closes or idles out.
async fn serve(
    quic: compio::quic::Connection,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: &Arc<Shared>,
) -> io::Result<()> {
    let mut conn: Connection = compio::quic::h3::server::builder()
        .max_field_section_size(MAX_HEAD as u64)
        .build(quic)
        .await
        .map_err(io::Error::other)?;
    let mut streams = FuturesUnordered::new();
    loop {
        let next = if streams.is_empty() {
            match timed(conn.accept(), ctx.options.idle_timeout).await {
                Some(next) => next,
                None => {
                    // GOAWAY: no new request; the client's next one goes on a new connection.
                    let _ = conn.shutdown(0).await;
                    return Ok(());
                }
            }
        } else {
            let accept = std::pin::pin!(conn.accept());
            match select(accept, streams.next()).await {
                Either::Left((next, _)) => next,
                Either::Right((ended, _)) => {
                    if let Some(Err(e)) = ended {
                        tracing::debug!(%peer, error = %e, "HTTP/3 stream ended");
                    }
                    continue;
                }
            }
        };
        let resolver = match next {
            Ok(Some(resolver)) => resolver,
            Ok(None) => break,
            Err(e) if e.is_h3_no_error() => break,
            Err(e) => return Err(io::Error::other(e)),
        };
        streams.push(async move {
            let (req, stream) = resolver.resolve_request().await.map_err(io::Error::other)?;
            answer(req, stream, ctx, (peer, local)).await
        });
    }
    while streams.next().await.is_some() {}
    Ok(())
}

/// Answers one request stream as `handler.rs` answers the same HTTP/1.1 request.
async fn answer(
    req: http::Request<()>,
    mut stream: RequestStream,
    ctx: &Arc<Shared>,
    (peer, local): (SocketAddr, SocketAddr),
) -> io::Result<()> {
    let (parts, ()) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let mut posted = Vec::new();
    let mut too_large = false;
    if method == "POST" {
        let read = async {
            while let Some(mut data) = stream.recv_data().await.map_err(io::Error::other)? {
                if posted.len() + data.remaining() > MAX_BODY as usize {
                    too_large = true;
                    break;
                }
                while data.has_remaining() {
                    let chunk = data.chunk();
                    posted.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
            Ok::<(), io::Error>(())
        };
        // Within the head timeout, as over HTTP/1.1 and HTTP/2.
        match timed(read, ctx.options.head_timeout).await {
            Some(read) => read?,
            None => {
                stream.stop_stream(Code::H3_REQUEST_CANCELLED);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a POST body did not end within the head timeout",
                ));
            }
        }
    }
    // The name the client asked for stands in for the TLS name in absolute links.
    let authority = parts.uri.host().map(str::to_owned);
    let posted = (method == "POST" && !too_large).then_some(posted);
    let (response, head) = if ctx.mirror.is_some() {
        // A mirror may ask its upstream (a revision, a listing) before it answers: on the
        // blocking pool, so that the endpoint's other connections and streams go on.
        let ctx = Arc::clone(ctx);
        compio::runtime::spawn_blocking(move || {
            let posted = posted.as_deref();
            let addrs = (peer, local, authority.as_deref());
            streams::answer(&ctx, &parts, posted, addrs, "HTTP/3")
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::other("answering a request panicked")))?
    } else {
        let addrs = (peer, local, authority.as_deref());
        streams::answer(ctx, &parts, posted.as_deref(), addrs, "HTTP/3")?
    };
    let sent = timed(stream.send_response(head), ctx.options.write_timeout).await;
    match sent {
        Some(r) => r.map_err(io::Error::other)?,
        None => return Err(io::ErrorKind::TimedOut.into()),
    }
    let empty = method == "HEAD" || response.body_len() == 0;
    if !empty {
        let mut pace = Pace::new(ctx.options.min_send_rate, ctx.options.write_timeout);
        match response.body {
            Body::Bytes(bytes) => {
                send_part(&mut stream, Bytes::from(bytes), ctx, &mut pace).await?
            }
            Body::Announced { .. } => {
                stream.stop_stream(Code::H3_INTERNAL_ERROR);
                return Err(io::Error::other("a body announced for HEAD only"));
            }
            body => {
                let (mut chunks, mut pos, end) = Chunks::of(body)?;
                while pos < end {
                    let chunk = match chunks.next((pos, end), &mut pace).await {
                        Ok(chunk) => chunk,
                        Err(e) => {
                            stream.stop_stream(Code::H3_INTERNAL_ERROR);
                            return Err(e);
                        }
                    };
                    pos += chunk.len() as u64;
                    send_part(&mut stream, Bytes::from(chunk), ctx, &mut pace).await?;
                }
            }
        }
    }
    match timed(stream.finish(), ctx.options.write_timeout).await {
        Some(r) => r.map_err(io::Error::other),
        None => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Sends `bytes` on `stream` as the client's flow control allows; a client that takes
/// nothing for the write timeout, or too little for the minimum rate, gets its stream reset.
async fn send_part(
    stream: &mut RequestStream,
    bytes: Bytes,
    ctx: &Shared,
    pace: &mut Pace,
) -> io::Result<()> {
    let n = bytes.len() as u64;
    match timed(stream.send_data(bytes), ctx.options.write_timeout).await {
        Some(r) => r.map_err(io::Error::other)?,
        None => {
            stream.stop_stream(Code::H3_REQUEST_CANCELLED);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for the write timeout",
            ));
        }
    }
    if let Err(e) = pace.sent(n) {
        stream.stop_stream(Code::H3_REQUEST_CANCELLED);
        return Err(e);
    }
    Ok(())
}
