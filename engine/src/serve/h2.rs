//! HTTP/2 for `ferry serve --tls-cert ... --http2`: a TLS connection whose client chose `h2`
//! is served by hyperium's h2 server, on a compio runtime of the connection's own thread,
//! through the adapter the client uses (`net/h2.rs`). Every stream gets the answer an
//! HTTP/1.1 request gets (`handler.rs`: the same routes, checks, errors and ranges), with
//! `content-length`, `date` and `server` added; many streams run at once on one connection.
//!
//! Invariants: at most [`MAX_STREAMS`] streams at once per connection; a request head larger
//! than the HTTP/1.1 limit is refused by h2 (`max_header_list_size`); a POST body is read up to
//! the same 1 MiB within the head timeout (else the stream is reset); a body is sent a chunk at a time as the client's window opens (at most
//! [`CHUNK`] held per stream), and a stream whose client takes too little for the write
//! timeout is reset (the slow-reader guard, `send.rs` `Pace`); a connection with no stream
//! open for the idle timeout is closed with GOAWAY. Not here: cleartext HTTP/2 (h2c), server
//! push, HTTP/3.

use std::io;
use std::net::{SocketAddr, TcpStream};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{Either, select};

use futures_util::stream::FuturesUnordered;

use super::Shared;
use super::handler::Body;
use super::http::{MAX_BODY, MAX_HEAD};
use super::send::Pace;
use super::streams::{self, CHUNK, Chunks, timed};
use crate::net::h2::to_io;

/// Streams one connection may have open at once (what nginx allows by default).
pub(crate) const MAX_STREAMS: u32 = 128;

/// Serves the HTTP/2 connection `tls` (its handshake done, `h2` chosen) until it closes.
pub(super) fn serve(
    tls: rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    peer: SocketAddr,
    (local, sni): (SocketAddr, Option<String>),
    ctx: &Shared,
) {
    let rustls::StreamOwned { conn, sock } = tls;
    // The polling driver: one small runtime per connection thread, on any kernel.
    let rt = match crate::runtime::build_runtime(crate::backend::Backend::Portable, 1) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "no runtime for an HTTP/2 connection; closing");
            return;
        }
    };
    rt.block_on(async move {
        if let Err(e) = run(conn, sock, (peer, local, sni), ctx).await {
            tracing::debug!(%peer, error = %e, "HTTP/2 connection ended");
        }
    });
}

async fn run(
    conn: rustls::ServerConnection,
    sock: TcpStream,
    (peer, local, sni): (SocketAddr, SocketAddr, Option<String>),
    ctx: &Shared,
) -> io::Result<()> {
    sock.set_nonblocking(true)?;
    let tcp = compio::net::TcpStream::from_std(sock)?;
    let io = crate::net::h2::H2Io::over(tcp, conn, Vec::new());
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD as u32)
        .initial_window_size(MAX_BODY as u32)
        .max_send_buffer_size(CHUNK)
        .handshake::<_, Bytes>(io);
    let mut h2conn = match timed(handshake, ctx.options.head_timeout).await {
        Some(r) => r.map_err(to_io)?,
        None => return Err(io::ErrorKind::TimedOut.into()),
    };
    // The streams being answered, polled together with the connection (which does their I/O).
    let mut streams = FuturesUnordered::new();
    loop {
        let next = if streams.is_empty() {
            // No stream open: the connection idles out.
            match timed(h2conn.accept(), ctx.options.idle_timeout).await {
                Some(next) => next,
                None => {
                    h2conn.graceful_shutdown();
                    let _ = std::future::poll_fn(|cx| h2conn.poll_closed(cx)).await;
                    return Ok(());
                }
            }
        } else {
            let accept = std::pin::pin!(h2conn.accept());
            match select(accept, streams.next()).await {
                Either::Left((next, _)) => next,
                Either::Right((ended, _)) => {
                    if let Some(Err(e)) = ended {
                        tracing::debug!(%peer, error = %e, "HTTP/2 stream ended");
                    }
                    continue;
                }
            }
        };
        let Some(next) = next else { break };
        let (req, respond) = next.map_err(to_io)?;
        streams.push(answer(req, respond, ctx, (peer, local, sni.clone())));
    }
    // The client closed the connection: the streams still open end with it.
    while streams.next().await.is_some() {}
    Ok(())
}

/// Answers one stream as `handler.rs` answers the same HTTP/1.1 request.
async fn answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    ctx: &Shared,
    (peer, local, sni): (SocketAddr, SocketAddr, Option<String>),
) -> io::Result<()> {
    let (parts, mut recv) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    // A POST's body, up to the HTTP/1.1 limit.
    let mut posted = Vec::new();
    let mut too_large = false;
    if method == "POST" {
        let read = async {
            while let Some(data) = recv.data().await {
                let data = data.map_err(to_io)?;
                let _ = recv.flow_control().release_capacity(data.len());
                if posted.len() + data.len() > MAX_BODY as usize {
                    too_large = true;
                    break;
                }
                posted.extend_from_slice(&data);
            }
            Ok::<(), io::Error>(())
        };
        // Within the head timeout, as over HTTP/1.1: a body that never ends would hold the
        // stream, and with it the connection's thread, for ever.
        match timed(read, ctx.options.head_timeout).await {
            Some(read) => read?,
            None => {
                respond.send_reset(h2::Reason::CANCEL);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a POST body did not end within the head timeout",
                ));
            }
        }
    }
    let posted = (method == "POST" && !too_large).then_some(posted.as_slice());
    let (response, head) =
        streams::answer(ctx, &parts, posted, (peer, local, sni.as_deref()), "HTTP/2")?;
    let empty = method == "HEAD" || response.body_len() == 0;
    let mut send = respond.send_response(head, empty).map_err(to_io)?;
    if empty {
        return Ok(());
    }
    let mut pace = Pace::new(ctx.options.min_send_rate, ctx.options.write_timeout);
    match response.body {
        Body::Bytes(bytes) => send_part(&mut send, Bytes::from(bytes), true, ctx, &mut pace).await,
        Body::Announced { .. } => {
            send.send_reset(h2::Reason::INTERNAL_ERROR);
            Err(io::Error::other("a body announced for HEAD only"))
        }
        body => {
            let (mut chunks, mut pos, end) = Chunks::of(body)?;
            while pos < end {
                let chunk = match chunks.next((pos, end), &mut pace).await {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        send.send_reset(h2::Reason::INTERNAL_ERROR);
                        return Err(e);
                    }
                };
                pos += chunk.len() as u64;
                send_part(&mut send, Bytes::from(chunk), pos == end, ctx, &mut pace).await?;
            }
            Ok(())
        }
    }
}

/// Sends `bytes` as the client's window opens, ending the stream after them when `end`; a
/// client that opens no window for the write timeout, or too little for the minimum rate,
/// gets its stream reset.
async fn send_part(
    send: &mut h2::SendStream<Bytes>,
    mut bytes: Bytes,
    end: bool,
    ctx: &Shared,
    pace: &mut Pace,
) -> io::Result<()> {
    while !bytes.is_empty() {
        send.reserve_capacity(bytes.len());
        let capacity = std::future::poll_fn(|cx| send.poll_capacity(cx));
        let got = match timed(capacity, ctx.options.write_timeout).await {
            Some(Some(got)) => got.map_err(to_io)?,
            Some(None) => return Err(io::ErrorKind::BrokenPipe.into()),
            None => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client opened no window for the write timeout",
                ));
            }
        };
        let n = got.min(bytes.len());
        if n == 0 {
            continue;
        }
        let part = bytes.split_to(n);
        send.send_data(part, end && bytes.is_empty())
            .map_err(to_io)?;
        if let Err(e) = pace.sent(n as u64) {
            send.send_reset(h2::Reason::CANCEL);
            return Err(e);
        }
    }
    Ok(())
}
