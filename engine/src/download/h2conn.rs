//! One HTTP/2 connection of a download (spike, issue 29 item 3): opened with ALPN `h2` then
//! `http/1.1` (`net/h2.rs`), many ranged GETs in flight on it at once, each answer checked as
//! an HTTP/1.1 one is (`proto/file.rs`: status, encoding, 206, `Content-Range`, length), each
//! body counted against its range and its flow-control capacity released as it is consumed.
//!
//! Invariants: a body yields at most the bytes of its range (one more byte is an error, and
//! the stream is reset when the body is dropped); a body that ends before its range did is an
//! error naming where; a read that brings nothing for the stall limit fails its stream only.
//! Not here yet: the lanes, leases and pipeline (`lease.rs`, `pipe.rs`), redirects, proxies
//! (a tunnel works, a forwarding proxy is HTTP/1.1 only), retries and `ferry get`.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;

use crate::error::GetError;
use crate::net::h2::{Negotiated, Windows};
use crate::net::target::Target;
use crate::net::tls::Alpn;
use crate::proto::file::{check_answer, check_length, check_partial};
use crate::proto::http1::{Framing, ResponseHead};

/// How many times in a row a request refused with REFUSED_STREAM is sent again.
const MAX_REFUSED: u32 = 8;

/// An HTTP/2 connection to one origin. Requests go out on clones of its handle, so each lease
/// in flight can be awaited by its own task; dropping the connection stops its driver.
pub(crate) struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    _driver: compio::runtime::JoinHandle<()>,
    addr: SocketAddr,
    read_timeout: Duration,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn").field("addr", &self.addr).finish()
    }
}

/// What a connection that offered `h2` became.
#[derive(Debug)]
pub(crate) enum Opened {
    H2(H2Conn),
    /// The server did not choose `h2`: the stream for the HTTP/1.1 path as it is.
    Http1(crate::net::Stream),
}

/// An h2 failure as the data plane's error: GOAWAY, RST_STREAM and I/O are network errors
/// (retried on a fresh connection, as a broken HTTP/1.1 connection is).
fn net_err(addr: SocketAddr, op: &'static str, e: h2::Error) -> GetError {
    let source = if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| std::io::Error::other("HTTP/2 I/O error"))
    } else {
        std::io::Error::other(e)
    };
    GetError::Network {
        addr: addr.to_string(),
        op,
        source,
    }
}

impl H2Conn {
    /// Connects to `target` offering `h2` then `http/1.1`; HTTP/2 starts when the server
    /// chose it.
    pub(crate) async fn open(target: &Target, windows: Windows) -> Result<Opened, GetError> {
        let (stream, _times) = crate::net::open_alpn(
            &target.dialer,
            &target.addrs,
            &target.route,
            target.tls_host.as_deref(),
            Alpn::H2OrHttp11,
        )
        .await?;
        let addr = stream.tcp().peer_addr().unwrap_or(target.addrs[0]);
        match crate::net::h2::start(stream, windows).await {
            Ok(Negotiated::H2 { send, driver }) => Ok(Opened::H2(H2Conn {
                send,
                _driver: driver,
                addr,
                read_timeout: target.dialer.timeouts.read,
            })),
            Ok(Negotiated::Http1(stream)) => Ok(Opened::Http1(stream)),
            Err(e) => Err(net_err(addr, "HTTP/2 handshake", e)),
        }
    }

    /// Sends a GET of `range` of `target` as a new stream and waits for its answer's head.
    /// Many may be awaited at once (each clones the handle); h2 holds a request back while
    /// the server's SETTINGS_MAX_CONCURRENT_STREAMS are all in use.
    pub(crate) async fn get(
        &self,
        target: &Target,
        range: Range<u64>,
    ) -> Result<(ResponseHead, H2Body), GetError> {
        let addr = self.addr;
        let mut req = http::Request::get(uri_of(target)?)
            .header("user-agent", concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .header("accept", "*/*")
            .header("accept-encoding", "identity")
            .header("range", format!("bytes={}-{}", range.start, range.end - 1));
        if let Some(auth) = &target.authorization {
            req = req.header("authorization", auth.expose());
        }
        let req = req.body(()).map_err(|e| GetError::Protocol {
            url: target.display.clone(),
            detail: format!("request: {e}"),
        })?;
        // REFUSED_STREAM says the server did not process the request (RFC 9113 8.7): sent
        // again at once. It comes when requests went out before the server's SETTINGS
        // lowered the streams allowed (h2 assumes no limit until then).
        let mut refused = 0;
        let answer = loop {
            let mut send = self
                .send
                .clone()
                .ready()
                .await
                .map_err(|e| net_err(addr, "open a stream", e))?;
            let (answer, _) = send
                .send_request(req.clone(), true)
                .map_err(|e| net_err(addr, "send request", e))?;
            match watch(answer, self.read_timeout).await {
                Err(Watched::H2(e))
                    if e.reason() == Some(h2::Reason::REFUSED_STREAM)
                        && e.is_remote()
                        && refused < MAX_REFUSED =>
                {
                    refused += 1;
                }
                r => break r.map_err(|e| e.into_get(addr, "read response head"))?,
            }
        };
        let (parts, recv) = answer.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let head = ResponseHead::from_parts(parts.status.as_u16(), headers);
        let body = H2Body {
            recv,
            url: target.display.clone(),
            range,
            got: 0,
            addr,
            read_timeout: self.read_timeout,
        };
        Ok((head, body))
    }

    /// True while the connection can take new streams (no GOAWAY, no connection error).
    pub(crate) fn is_open(&self) -> bool {
        // `ready` on a clone answers at once when the connection is gone.
        let mut send = self.send.clone();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        !matches!(send.poll_ready(&mut cx), std::task::Poll::Ready(Err(_)))
    }
}

/// `https://host[:port]/path?query` of `target` (h2 sends it as `:scheme`, `:authority`,
/// `:path`).
fn uri_of(target: &Target) -> Result<http::Uri, GetError> {
    let text = format!(
        "{}://{}{}",
        target.url.scheme(),
        target.host_header,
        target.request_target
    );
    text.parse().map_err(|e| GetError::Protocol {
        url: target.display.clone(),
        detail: format!("not a URI h2 takes: {e}"),
    })
}

/// The checks of a ranged answer, the same as HTTP/1.1's (`lease.rs` `check_lease_answer`):
/// no encoding, no error status, a 206 naming exactly `range` of a file of `total` bytes, and
/// a `Content-Length` of exactly its bytes. An HTTP/2 answer may leave `Content-Length` out
/// (END_STREAM ends the body): the body is then counted against the range instead.
pub(crate) fn check_ranged(
    url: &str,
    head: &ResponseHead,
    range: &Range<u64>,
    total: Option<u64>,
) -> Result<u64, GetError> {
    check_answer(url, head)?;
    let total = check_partial(url, head, range.start, range.end - 1, total)?;
    let length = head.content_length().map_err(|e| GetError::Protocol {
        url: url.to_owned(),
        detail: e.to_string(),
    })?;
    let framing = Framing::Length(length.unwrap_or(range.end - range.start));
    check_length(url, framing, range)?;
    Ok(total)
}

/// The body of one answer, read frame by frame.
pub(crate) struct H2Body {
    recv: h2::RecvStream,
    url: String,
    range: Range<u64>,
    got: u64,
    addr: SocketAddr,
    read_timeout: Duration,
}

impl std::fmt::Debug for H2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body")
            .field("range", &self.range)
            .field("got", &self.got)
            .finish()
    }
}

impl H2Body {
    /// The next piece of the body; `None` once all of the range came and the stream ended.
    /// The piece's flow-control capacity is released before it is returned: the caller
    /// copies it out at once, so what bounds the bytes held is the connection's window.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, GetError> {
        let want = self.range.end - self.range.start;
        let data = async { self.recv.data().await.transpose() };
        let piece = match watch(data, self.read_timeout).await {
            Ok(Some(piece)) => piece,
            Ok(None) if self.got == want => return Ok(None),
            Ok(None) => {
                return Err(GetError::ShortBody {
                    url: self.url.clone(),
                    offset: self.range.start,
                    expected: want,
                    received: self.got,
                });
            }
            Err(e) => return Err(e.into_get(self.addr, "read body")),
        };
        let n = piece.len();
        // Released even when refused below: the stream is reset, the connection goes on.
        let _ = self.recv.flow_control().release_capacity(n);
        if self.got + n as u64 > want {
            return Err(GetError::Protocol {
                url: self.url.clone(),
                detail: format!(
                    "the answer for bytes {}-{} carries more than its {want} bytes",
                    self.range.start,
                    self.range.end - 1
                ),
            });
        }
        self.got += n as u64;
        Ok(Some(piece))
    }

    /// Body bytes received so far.
    pub(crate) fn received(&self) -> u64 {
        self.got
    }
}

/// Why a watched h2 wait ended without its value.
enum Watched {
    H2(h2::Error),
    Stalled(Duration),
}

impl Watched {
    fn into_get(self, addr: SocketAddr, op: &'static str) -> GetError {
        match self {
            Watched::H2(e) => net_err(addr, op, e),
            Watched::Stalled(limit) => GetError::Network {
                addr: addr.to_string(),
                op,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no byte for {} s (stalled)", limit.as_secs_f64()),
                ),
            },
        }
    }
}

/// The per-stream stall watchdog: `wait` (a head or a DATA frame) must come within `limit`.
async fn watch<T>(
    wait: impl std::future::Future<Output = Result<T, h2::Error>>,
    limit: Duration,
) -> Result<T, Watched> {
    use futures_util::future::{Either, select};
    let wait = std::pin::pin!(wait);
    let timer = std::pin::pin!(compio::time::sleep(limit));
    match select(wait, timer).await {
        Either::Left((r, _)) => r.map_err(Watched::H2),
        Either::Right(_) => Err(Watched::Stalled(limit)),
    }
}

/// Fetches `ranges` of `target` on one HTTP/2 connection, all in flight at once, each answer
/// checked; returns each range's CRC-32 (for the tests and the measurement). `Ok(None)` when
/// the server did not choose `h2`.
pub(crate) async fn fetch_ranges(
    target: &Target,
    ranges: &[Range<u64>],
    total: Option<u64>,
    windows: Windows,
) -> Result<Option<Vec<u32>>, GetError> {
    let conn = match H2Conn::open(target, windows).await? {
        Opened::H2(conn) => std::rc::Rc::new(conn),
        Opened::Http1(_) => return Ok(None),
    };
    fetch_ranges_on(&conn, target, ranges, total)
        .await
        .map(Some)
}

/// [`fetch_ranges`] on an open connection.
pub(crate) async fn fetch_ranges_on(
    conn: &std::rc::Rc<H2Conn>,
    target: &Target,
    ranges: &[Range<u64>],
    total: Option<u64>,
) -> Result<Vec<u32>, GetError> {
    let tasks: Vec<_> = ranges
        .iter()
        .map(|range| {
            let (conn, target, range) = (conn.clone(), target.clone(), range.clone());
            compio::runtime::spawn(async move { fetch_one(&conn, &target, range, total).await })
        })
        .collect();
    let mut crcs = Vec::with_capacity(tasks.len());
    for task in tasks {
        let crc = task.await.map_err(|_| GetError::Protocol {
            url: target.display.clone(),
            detail: "a stream's task panicked".into(),
        })??;
        crcs.push(crc);
    }
    Ok(crcs)
}

/// One range: its answer checked, its body copied into a 1 MiB buffer (as into a pipeline
/// buffer) and hashed.
async fn fetch_one(
    conn: &H2Conn,
    target: &Target,
    range: Range<u64>,
    total: Option<u64>,
) -> Result<u32, GetError> {
    let (head, mut body) = conn.get(target, range.clone()).await?;
    check_ranged(&target.display, &head, &range, total)?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = Vec::with_capacity(1 << 20);
    while let Some(piece) = body.next().await? {
        if buf.len() + piece.len() > buf.capacity() {
            crc.update(&buf);
            buf.clear();
        }
        buf.extend_from_slice(&piece);
    }
    crc.update(&buf);
    Ok(crc.finalize())
}

#[cfg(test)]
mod tests;
