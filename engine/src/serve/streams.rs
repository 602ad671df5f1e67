//! What `ferry serve`'s HTTP/2 (`h2.rs`) and HTTP/3 (`h3.rs`) answers share: a request's
//! head turned into the handler's [`Request`] and answered by the same [`dispatch`] as over
//! HTTP/1.1, and the handler's [`Response`] turned into an `http` head with the framing
//! fields every answer carries (`content-length`, `date`, `server`).
//!
//! Invariants: the request's fields are read as HTTP/1.1's are (names case-insensitive,
//! values that are not text ignored); the base of absolute links comes from the same rules
//! (`public_url.rs`); a file's body is read in the same [`Chunks`] for both. Not here: reading
//! a POST body, sending the chunks (each protocol's own).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use futures_util::future::{Either, select};

use super::Shared;
use super::handler::Body;
use super::handler::{Request, Response, dispatch};
use super::mirror::{Pin, Reader, Ready};
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

/// A file answer's bytes as HTTP/2 and HTTP/3 send them, a [`CHUNK`] at a time: read from a
/// file, or from a fill as they land. Holds the blob's pin (a mirror's) until dropped.
pub(super) struct Chunks {
    source: Source,
    _pin: Option<Pin>,
}

enum Source {
    File(File),
    Fill(Reader),
}

impl Chunks {
    /// The chunks of `body` and the range of the file it sends; an error for a body that is
    /// not a file's.
    pub(super) fn of(body: Body) -> io::Result<(Chunks, u64, u64)> {
        match body {
            Body::File {
                file,
                offset,
                len,
                pin,
            } => Ok((
                Chunks {
                    source: Source::File(file),
                    _pin: pin,
                },
                offset,
                offset + len,
            )),
            Body::Filling {
                fill,
                offset,
                len,
                pin,
            } => Ok((
                Chunks {
                    source: Source::Fill(fill.reader()),
                    _pin: pin,
                },
                offset,
                offset + len,
            )),
            Body::Bytes(_) | Body::Announced { .. } => Err(io::Error::other("not a file's body")),
        }
    }

    /// The next bytes at `pos` (at most [`CHUNK`], none past `end`); a fill's are waited for
    /// until they land, and the wait does not count against the client's minimum rate. An
    /// error when the file is shorter than said, or the fill failed.
    pub(super) async fn next(
        &mut self,
        (pos, end): (u64, u64),
        pace: &mut Pace,
    ) -> io::Result<Vec<u8>> {
        let reader = match &mut self.source {
            Source::File(file) => {
                let mut chunk = vec![0u8; ((end - pos) as usize).min(CHUNK)];
                let n = file.read_at(&mut chunk, pos)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shorter than the catalog says",
                    ));
                }
                chunk.truncate(n);
                return Ok(chunk);
            }
            Source::Fill(reader) => reader,
        };
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
}
