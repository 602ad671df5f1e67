//! The HTTP/2 side of a data-plane connection ([`super::conn::Wire::H2`]): each request goes
//! out as a stream of one h2 connection at once, and the answers are read in the order they
//! were asked. So `request.rs`, `lease.rs`, `lanes.rs` and `body.rs` use it as they use an
//! HTTP/1.1 connection with requests pipelined: a head, then a body read into the pipeline's
//! buffers, then the next head; without HTTP/1.1's caveats (a server that closes with requests
//! unanswered, answers that must be read whole before the next one).
//!
//! Invariants: answers are read in the order asked; a body yields only its own stream's DATA,
//! its flow-control capacity given back as it is taken (what h2 holds for a slow reader is
//! bounded by the connection's window, `net::h2::Windows`); the bytes asked and not yet read
//! never exceed the connection's window unless one request is alone, so a later answer's DATA
//! can never fill the window while an earlier one waits to be read (reading in order would
//! then wait for ever); a request the server did not
//! process (REFUSED_STREAM, or above a GOAWAY's last stream) reads as "closed before any byte
//! of it", which the callers answer with a fresh connection, as for HTTP/1.1; an answer with an
//! HTTP/1.1 connection header (`transfer-encoding`, `connection`) is malformed (RFC 9113 8.2.2)
//! and refused; a 206 without `Content-Length` (END_STREAM frames an HTTP/2 body) counts as
//! long as its `Content-Range` says. Not here: TLS, ALPN and the h2 handshake (`net/h2.rs`), the answer checks
//! (`proto/file.rs`), cleartext HTTP/2 (h2c).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::task::{Context, Poll, ready};

use bytes::Bytes;

use super::Target;
use super::streams::{self, answer_head, fits, request};
use crate::error::GetError;
use crate::net::h2::to_io;
use crate::net::{Watch, watched_cancellable};
use crate::proto::http1::ResponseHead;

/// How many times a request the server refused (REFUSED_STREAM) is sent again at once on the
/// same connection before its answer counts as missing.
const MAX_REFUSED: u32 = 4;

/// An h2 connection as one lane's wire: the handle streams are opened with, the task driving
/// the connection (dropping it closes the connection), the requests whose answers are not read
/// yet, and the body being read.
pub(crate) struct H2Wire {
    send: h2::client::SendRequest<Bytes>,
    _driver: compio::runtime::JoinHandle<()>,
    asked: VecDeque<Asked>,
    body: Option<h2::RecvStream>,
    /// Bytes of the current body not read yet (as asked), and the most bytes asked and not
    /// read the connection may have: its receive window.
    left: u64,
    window: u64,
    /// DATA taken from `body` and not yet copied out (at most one frame).
    chunk: Bytes,
}

/// A request sent, its answer to come.
struct Asked {
    answer: h2::client::ResponseFuture,
    /// Kept to send again when the server refuses the stream.
    req: http::Request<()>,
    refused: u32,
    /// The bytes asked for (a whole file of unknown size counts as a window).
    len: u64,
}

impl std::fmt::Debug for H2Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Wire")
            .field("asked", &self.asked.len())
            .field("body", &self.body.is_some())
            .finish()
    }
}

impl H2Wire {
    pub(crate) fn new(
        send: h2::client::SendRequest<Bytes>,
        driver: compio::runtime::JoinHandle<()>,
        windows: crate::net::h2::Windows,
    ) -> H2Wire {
        H2Wire {
            send,
            _driver: driver,
            asked: VecDeque::new(),
            body: None,
            left: 0,
            window: u64::from(windows.connection),
            chunk: Bytes::new(),
        }
    }

    /// True while the connection can take new streams (no GOAWAY, no connection error).
    pub(crate) fn is_open(&self) -> bool {
        // `poll_ready` on a fresh clone answers at once: it has no stream of its own pending.
        let mut send = self.send.clone();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        !matches!(send.poll_ready(&mut cx), std::task::Poll::Ready(Err(_)))
    }

    /// Opens a stream with a GET of `range` of `target` (the whole file for `None`). Never
    /// waits: beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS, h2 holds streams back in
    /// the order opened and sends each as an earlier one closes. [`SendError::Full`] when the
    /// bytes asked ahead would pass the connection's window (see the module's invariants).
    pub(crate) fn send(
        &mut self,
        target: &Target,
        range: Option<Range<u64>>,
    ) -> Result<(), SendError> {
        let len = range.as_ref().map_or(self.window, |r| r.end - r.start);
        let unread = self.left + self.asked.iter().map(|a| a.len).sum::<u64>();
        if !fits(unread, len, self.window) {
            return Err(SendError::Full);
        }
        let req = request(target, range).map_err(SendError::Request)?;
        let answer = open_stream(&self.send, req.clone()).map_err(SendError::H2)?;
        self.asked.push_back(Asked {
            answer,
            req,
            refused: 0,
            len,
        });
        Ok(())
    }

    /// Reads the head of the oldest unread answer, dropping (resetting, if it had not ended)
    /// the body before it. `Ok(None)`: the server did not process the request (refused, a
    /// GOAWAY before it, the connection gone before any answer).
    pub(crate) async fn read_head(
        &mut self,
        url: &str,
        watch: Watch<'_>,
    ) -> Result<Option<ResponseHead>, io::Error> {
        self.end_body();
        let Some(mut asked) = self.asked.pop_front() else {
            return Ok(None);
        };
        let answer = loop {
            let got = watched_cancellable(&mut asked.answer, watch)
                .await
                .map_err(crate::net::WatchError::into_io)?;
            match got {
                Ok(answer) => break answer,
                Err(e)
                    if e.reason() == Some(h2::Reason::REFUSED_STREAM)
                        && e.is_remote()
                        && asked.refused < MAX_REFUSED =>
                {
                    // RFC 9113 8.7: not processed, safe to send again. It comes when requests
                    // went out before the server's SETTINGS lowered its stream limit.
                    asked.refused += 1;
                    match open_stream(&self.send, asked.req.clone()) {
                        Ok(answer) => asked.answer = answer,
                        Err(_) => return Ok(None),
                    }
                }
                Err(e) if unprocessed(&e) => {
                    tracing::debug!("HTTP/2 request not processed: {e}");
                    return Ok(None);
                }
                Err(e) => return Err(to_io(e)),
            }
        };
        self.left = asked.len;
        let (parts, body) = answer.into_parts();
        let head = answer_head(
            url,
            parts.status,
            &parts.headers,
            "HTTP/2",
            "RFC 9113 8.2.2",
        )?;
        self.body = Some(body);
        Ok(Some(head))
    }

    /// Gives up the current body: a stream that had not ended is reset (CANCEL), the connection
    /// and the answers behind it stay usable.
    pub(crate) fn end_body(&mut self) {
        self.body = None;
        self.chunk = Bytes::new();
        self.left = 0;
    }
}

impl streams::Body for H2Wire {
    /// Takes one DATA frame (or the body's end, or its error) as the current chunk. Its
    /// flow-control capacity goes back at once: it is copied out before the next frame is
    /// taken, so what h2 holds stays within the window.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        Poll::Ready(match ready!(body.poll_data(cx)) {
            None => Ok(false),
            Some(Err(e)) => Err(to_io(e)),
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
                self.chunk = data;
                Ok(true)
            }
        })
    }

    fn chunk(&mut self) -> &mut Bytes {
        &mut self.chunk
    }

    fn consumed(&mut self, n: usize) {
        self.left = self.left.saturating_sub(n as u64);
    }
}

/// Why a request could not go out.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The URL is not one h2 can send (`Protocol` for the caller).
    Request(String),
    /// Asked ahead, it would pass the connection's window: to be asked after the answers
    /// before it were read.
    Full,
    /// The connection is gone.
    H2(h2::Error),
}

/// Opens a stream for `req` (no body: END_STREAM with the headers).
fn open_stream(
    send: &h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> Result<h2::client::ResponseFuture, h2::Error> {
    // A fresh clone has no stream of its own pending, so h2 takes the request whatever the
    // server's stream limit (it queues it) and fails only when the connection is gone.
    let (answer, _) = send.clone().send_request(req, true)?;
    Ok(answer)
}

/// Whether `e`, ending a request before its answer's head, says the server did not process it.
fn unprocessed(e: &h2::Error) -> bool {
    e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)
        || e.reason() == Some(h2::Reason::REFUSED_STREAM)
        || e.get_io().is_some_and(|io| is_closed(io.kind()))
}

fn is_closed(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
    )
}

/// The address an h2 connection's errors name.
pub(crate) fn net_err(addr: SocketAddr, op: &'static str, e: h2::Error) -> GetError {
    GetError::Network {
        addr: addr.to_string(),
        op,
        source: to_io(e),
    }
}

#[cfg(test)]
mod tests;
