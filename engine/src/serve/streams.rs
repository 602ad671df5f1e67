//! What `ferry serve`'s HTTP/2 (`h2.rs`) and HTTP/3 (`h3.rs`) answers share: a request's
//! head turned into the handler's [`Request`] and answered by the same [`dispatch`] as over
//! HTTP/1.1, and the handler's [`Response`] turned into an `http` head with the framing
//! fields every answer carries (`content-length`, `date`, `server`).
//!
//! Invariants: the request's fields are read as HTTP/1.1's are (names case-insensitive,
//! values that are not text ignored); the base of absolute links comes from the same rules
//! (`public_url.rs`). Not here: reading a POST body, sending a body (each protocol's own).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::{Either, select};

use super::Shared;
use super::handler::{Request, Response, dispatch};
use super::mirror::{Reader, Ready};
use super::public_url::{Forwarded, public_base};
use super::send::Pace;

/// Bytes of a file read and handed to the protocol at a time, and the most it buffers per
/// stream: over HTTP/2 a connection holds at most 2 x 64 KiB x `MAX_STREAMS` (16 MiB) of
/// bodies.
pub(super) const CHUNK: usize = 64 << 10;

/// Answers the request `parts` (with the POST body `posted`, `None` for other methods or one
/// too large) that came from `peer` to `local` (by the TLS name `sni`) over `proto`; the
/// response and its head.
pub(super) fn answer(
    ctx: &Shared,
    parts: &http::request::Parts,
    posted: Option<&[u8]>,
    (peer, local, sni): (SocketAddr, SocketAddr, Option<&str>),
    proto: &str,
) -> io::Result<(Response, http::Response<()>)> {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let method = parts.method.as_str();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let forwarded = Forwarded {
        proto: header("x-forwarded-proto"),
        host: header("x-forwarded-host"),
        prefix: header("x-forwarded-prefix"),
    };
    let base = public_base(ctx, &forwarded, peer, (local, sni));
    let (range, if_range) = (header("range"), header("if-range"));
    let authorization = header("authorization");
    let response = dispatch(
        ctx,
        &Request {
            method,
            target: &target,
            base: &base,
            range: range.as_deref(),
            if_range: if_range.as_deref(),
            authorization: authorization.as_deref(),
            body: if method == "POST" { posted } else { None },
        },
    );
    tracing::debug!(
        %peer, method = %method, target = %target, range = ?range,
        status = response.status, bytes = response.body_len(), "{proto} request"
    );
    let mut head = http::Response::builder()
        .status(response.status)
        .header("content-length", response.body_len())
        .header("date", super::date::http_date())
        .header("server", concat!("ferry/", env!("CARGO_PKG_VERSION")));
    for (name, value) in &response.headers {
        head = head.header(*name, value.as_str());
    }
    let head = head
        .body(())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((response, head))
}

/// `future`, or `None` when `limit` passed first.
pub(super) async fn timed<T>(
    future: impl std::future::Future<Output = T>,
    limit: Duration,
) -> Option<T> {
    let future = std::pin::pin!(future);
    match select(future, std::pin::pin!(compio::time::sleep(limit))).await {
        Either::Left((r, _)) => Some(r),
        Either::Right(_) => None,
    }
}

/// The next bytes of a fill's body at `pos` (at most [`CHUNK`], none past `end`), waited for
/// until they land; an error when the fill failed. The wait does not count against the
/// client's minimum rate.
pub(super) async fn fill_chunk(
    reader: &mut Reader,
    (pos, end): (u64, u64),
    pace: &mut Pace,
) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    loop {
        match reader.ready(pos) {
            Ready::Bytes { file, until } => {
                let mut chunk = vec![0u8; ((until.min(end) - pos) as usize).min(CHUNK)];
                let n = file.read_at(&mut chunk, pos)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                chunk.truncate(n);
                reader.sent(n as u64);
                return Ok(chunk);
            }
            Ready::Wait => {
                compio::time::sleep(Duration::from_millis(5)).await;
                pace.restart();
            }
            Ready::Failed(why) => return Err(io::Error::other(why)),
        }
    }
}
