//! What the two multiplexed wires, HTTP/2 (`h2wire.rs`) and HTTP/3 (`h3wire.rs`), share: the
//! request they send (the GET HTTP/1.1 sends, as `http::Request`), the checks of an answer's
//! head, the rule that keeps the bytes asked ahead within the connection's window, and the
//! body reader that copies a stream's data into the pipeline's buffers.
//!
//! Invariants: a body read takes all data already there before it returns and waits, under
//! the watch, only when none is (a timer per frame cost more than the frame's copy); what was
//! read before an error is handed out first. Not here: streams, flow control and the
//! protocols' errors (each wire's own).

use std::io;
use std::ops::Range;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use compio::BufResult;
use compio::buf::{IntoInner, IoBufMut};

use super::Target;
use crate::net::{Watch, watched_cancellable};
use crate::proto::http1::ResponseHead;

/// A wire's current answer body, seen as a sequence of chunks.
pub(super) trait Body {
    /// Takes the body's next data as the current chunk: `Ok(true)` when some came (it may be
    /// empty), `Ok(false)` at the body's end (or without a body).
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>>;
    /// The data taken and not yet copied out.
    fn chunk(&mut self) -> &mut Bytes;
    /// `n` bytes of the chunk were copied out.
    fn consumed(&mut self, n: usize);
}

/// Reads up to `want` bytes of `wire`'s current body into `buf` at `from` (its initialised
/// length); `Ok(0)` at the body's end.
pub(super) async fn read_body<W: Body, B: IoBufMut>(
    wire: &mut W,
    buf: B,
    from: usize,
    want: usize,
    watch: Watch<'_>,
) -> BufResult<usize, B> {
    let mut slice = buf.slice(from..from + want);
    let mut n = 0;
    while n < want {
        if wire.chunk().is_empty() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let got = match wire.poll_chunk(&mut cx) {
                Poll::Ready(got) => got,
                Poll::Pending if n > 0 => break,
                Poll::Pending => {
                    match watched_cancellable(std::future::poll_fn(|cx| wire.poll_chunk(cx)), watch)
                        .await
                    {
                        Ok(got) => got,
                        Err(e) => Err(e.into_io()),
                    }
                }
            };
            match got {
                // An empty frame: take the next.
                Ok(true) => continue,
                Ok(false) => break,
                // What was read before the error is handed out first.
                Err(_) if n > 0 => break,
                Err(e) => return BufResult(Err(e), slice.into_inner()),
            }
        }
        let m = crate::backend::buf::append(&mut slice, wire.chunk());
        wire.chunk().advance(m);
        wire.consumed(m);
        n += m;
    }
    BufResult(Ok(n), slice.into_inner())
}

/// Whether a request for `len` more bytes may go out while `unread` bytes asked are not read:
/// alone it always may; behind others, only while all of them fit in the connection's `window`.
pub(super) fn fits(unread: u64, len: u64, window: u64) -> bool {
    unread == 0 || unread.saturating_add(len) <= window
}

/// The GET of `range` of `target`, as HTTP/1.1 sends it (`proto::http1::get_request`): the
/// same identity, no compression, the credentials the target carries. `:authority` is the
/// Host header's value.
pub(super) fn request(
    target: &Target,
    range: Option<Range<u64>>,
) -> Result<http::Request<()>, String> {
    let uri = format!(
        "{}://{}{}",
        target.url.scheme(),
        target.host_header,
        target.request_target
    );
    let mut req = http::Request::get(uri);
    let auth = target.authorization.as_ref().map(|a| a.expose());
    for (name, value) in crate::proto::http1::get_fields(range, auth, target.if_range.as_deref()) {
        req = req.header(name, value);
    }
    req.body(())
        .map_err(|e| format!("not a request HTTP/2 or HTTP/3 can send: {e}"))
}

/// An HTTP/2 or HTTP/3 answer's head as ferry's checks read it (`proto/file.rs`). An answer
/// with an HTTP/1.1 connection header is malformed (`rule`: RFC 9113 8.2.2, RFC 9114 4.2) and
/// refused. Those versions end a body with the stream, so a server may leave
/// `Content-Length` out: a 206 without it is given the length its `Content-Range` states, as
/// HTTP/1.1 framing would say it (a body that ends before it is short, and one that goes on
/// past it is cut at the range's end by the plan).
pub(super) fn answer_head(
    url: &str,
    status: http::StatusCode,
    fields: &http::HeaderMap,
    version: &str,
    rule: &str,
) -> io::Result<ResponseHead> {
    let mut headers = Vec::with_capacity(fields.len() + 1);
    for (name, value) in fields {
        if matches!(
            name.as_str(),
            "transfer-encoding" | "connection" | "keep-alive"
        ) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{url}: an {version} answer with the HTTP/1.1 header {name:?} \
                     (malformed, {rule})"
                ),
            ));
        }
        headers.push((
            name.as_str().to_owned(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    if status.as_u16() == 206 && fields.get("content-length").is_none() {
        let stated = fields
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::proto::http1::parse_content_range);
        if let Some(crate::proto::http1::ContentRange::Satisfied { first, last, .. }) = stated {
            headers.push(("content-length".into(), (last - first + 1).to_string()));
        }
    }
    Ok(ResponseHead::from_parts(status.as_u16(), headers))
}
