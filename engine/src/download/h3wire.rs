//! The HTTP/3 side of a data-plane connection ([`super::conn::Wire::H3`]): as over HTTP/2
//! (`h2wire.rs`), each request is a stream of one QUIC connection, sent at once, and the
//! answers are read in the order asked, so everything above it uses it as it uses any other
//! connection. Each request is a task of the worker's runtime (open the stream, send the
//! head, read the answer's head), so a request asked ahead never waits for the ones before it
//! and the server's stream limit queues rather than fails.
//!
//! Invariants: answers are read in the order asked; the bytes asked and not yet read never
//! exceed the connection's receive window unless one request is alone (the reason is
//! `h2wire.rs`'s); a request the server did not process (H3_REQUEST_REJECTED, a GOAWAY, the
//! connection gone before any answer) reads as "closed before any byte of it", which the
//! callers answer with a fresh connection; an answer's head passes the same checks as over
//! HTTP/2 (`h2wire::answer_head`); the job's UDP counts take this connection's at each answer
//! and when it is dropped. Not here: the QUIC handshake and the fallback to TCP (`net/quic.rs`,
//! `conn.rs`), the answer checks (`proto/file.rs`).

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use compio::quic::h3::error::{Code, ConnectionError, StreamError};
use compio::quic::h3::quic::ConnectionErrorIncoming;

use super::Target;
use super::streams::{self, answer_head, fits};
use crate::net::quic::{self, Counted, H3Conn, QuicState, RequestStream};
use crate::net::{Watch, watched_cancellable};
use crate::proto::http1::ResponseHead;

/// A request's task: its stream and its answer's head, once they came.
type Answer = compio::runtime::JoinHandle<Result<(http::Response<()>, RequestStream), StreamError>>;

/// How many times a request the server rejected (H3_REQUEST_REJECTED) is sent again at once
/// on the same connection before its answer counts as missing (as over HTTP/2).
const MAX_REJECTED: u32 = 4;

/// A request sent, its answer to come.
struct Asked {
    answer: Answer,
    /// Kept to send again when the server rejects it.
    req: http::Request<()>,
    rejected: u32,
    /// The bytes asked for (a whole file of unknown size counts as a window).
    len: u64,
}

/// A QUIC connection with HTTP/3 as one lane's wire.
pub(crate) struct H3Wire {
    conn: H3Conn,
    asked: VecDeque<Asked>,
    body: Option<RequestStream>,
    /// Bytes of the current body not read yet (as asked), and the connection's window.
    left: u64,
    window: u64,
    /// Data taken from `body` and not yet copied out.
    chunk: Bytes,
    state: Arc<QuicState>,
    counted: Counted,
}

impl std::fmt::Debug for H3Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Wire")
            .field("addr", &self.conn.addr)
            .field("asked", &self.asked.len())
            .field("body", &self.body.is_some())
            .finish()
    }
}

impl Drop for H3Wire {
    fn drop(&mut self) {
        self.state.tally.add(&self.conn.quic, &mut self.counted);
        // H3_NO_ERROR: the client is done with the connection (RFC 9114 8.1).
        self.conn.quic.close(
            Code::H3_NO_ERROR.value().try_into().unwrap_or_default(),
            b"",
        );
    }
}

impl H3Wire {
    pub(crate) fn new(conn: H3Conn, state: Arc<QuicState>) -> H3Wire {
        state
            .tally
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        H3Wire {
            conn,
            asked: VecDeque::new(),
            body: None,
            left: 0,
            window: u64::from(quic::CONNECTION_WINDOW),
            chunk: Bytes::new(),
            state,
            counted: Counted::default(),
        }
    }

    /// True while the QUIC connection is up.
    pub(crate) fn is_open(&self) -> bool {
        self.conn.quic.close_reason().is_none() && !self.conn.driver.is_finished()
    }

    /// Sends a GET of `range` of `target` (the whole file for `None`) on a new stream, as a
    /// task; never waits. [`SendError::Full`] as over HTTP/2 (`h2wire::SendError::Full`).
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
        if !self.is_open() {
            return Err(SendError::Closed);
        }
        let req = streams::request(target, range).map_err(SendError::Request)?;
        let answer = self.spawn(req.clone());
        self.asked.push_back(Asked {
            answer,
            req,
            rejected: 0,
            len,
        });
        Ok(())
    }

    /// The task that sends `req` on a new stream and reads its answer's head.
    fn spawn(&self, req: http::Request<()>) -> Answer {
        let mut send = self.conn.send.clone();
        compio::runtime::spawn(async move {
            let mut stream = send.send_request(req).await?;
            stream.finish().await?;
            let head = stream.recv_response().await?;
            Ok((head, stream))
        })
    }

    /// Reads the head of the oldest unread answer, dropping (stopping, if it had not ended)
    /// the body before it. `Ok(None)`: the server did not process the request.
    pub(crate) async fn read_head(
        &mut self,
        url: &str,
        watch: Watch<'_>,
    ) -> Result<Option<ResponseHead>, io::Error> {
        self.end_body();
        self.state.tally.add(&self.conn.quic, &mut self.counted);
        let Some(mut asked) = self.asked.pop_front() else {
            return Ok(None);
        };
        let got = loop {
            let got = watched_cancellable(&mut asked.answer, watch)
                .await
                .map_err(crate::net::WatchError::into_io)?;
            match got {
                // RFC 9114 4.1.1: not processed, safe to send again.
                Ok(Err(StreamError::RemoteTerminate { code }))
                    if code == Code::H3_REQUEST_REJECTED
                        && asked.rejected < MAX_REJECTED
                        && self.is_open() =>
                {
                    asked.rejected += 1;
                    asked.answer = self.spawn(asked.req.clone());
                }
                got => break got,
            }
        };
        let len = asked.len;
        let (head, stream) = match got {
            Ok(Ok(got)) => got,
            Ok(Err(e)) if unprocessed(&e) => {
                tracing::debug!(addr = %self.conn.addr, "HTTP/3 request not processed: {e}");
                return Ok(None);
            }
            Ok(Err(e)) => return Err(to_io(e)),
            Err(e) => return Err(io::Error::other(format!("HTTP/3 request task: {e}"))),
        };
        let (parts, ()) = head.into_parts();
        let head = answer_head(url, parts.status, &parts.headers, "HTTP/3", "RFC 9114 4.2")?;
        // What is left to read is what the answer says it carries, when it says (a file
        // shorter than the range asked, an error page), so its end is seen at its last byte.
        self.left = match head.content_length() {
            Ok(Some(n)) => n,
            _ => len,
        };
        self.body = Some(stream);
        Ok(Some(head))
    }

    /// Gives up the current body: a stream that had not ended is stopped
    /// (H3_REQUEST_CANCELLED); the connection and the answers behind it stay usable.
    pub(crate) fn end_body(&mut self) {
        if let Some(mut body) = self.body.take()
            && self.left > 0
        {
            body.stop_sending(Code::H3_REQUEST_CANCELLED);
        }
        self.chunk = Bytes::new();
        self.left = 0;
    }
}

impl streams::Body for H3Wire {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        Poll::Ready(match ready!(body.poll_recv_data(cx)) {
            Ok(None) => Ok(false),
            Err(e) => Err(to_io(e)),
            Ok(Some(mut data)) => {
                self.chunk = data.copy_to_bytes(data.remaining());
                Ok(true)
            }
        })
    }

    fn chunk(&mut self) -> &mut Bytes {
        &mut self.chunk
    }

    fn consumed(&mut self, n: usize) {
        self.left = self.left.saturating_sub(n as u64);
        if self.left == 0 {
            // The answer's last byte: its datagrams count now, not when the connection goes.
            self.state.tally.add(&self.conn.quic, &mut self.counted);
        }
    }
}

/// Why a request could not go out.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The URL is not one HTTP/3 can send.
    Request(String),
    /// Asked ahead, it would pass the connection's window.
    Full,
    /// The connection is gone.
    Closed,
}

/// Whether `e`, ending a request before its answer's head, says the server did not process
/// it (RFC 9114 4.1.1: H3_REQUEST_REJECTED; a GOAWAY; the connection closed or idle).
fn unprocessed(e: &StreamError) -> bool {
    match e {
        StreamError::RemoteClosing => true,
        StreamError::RemoteTerminate { code } => *code == Code::H3_REQUEST_REJECTED,
        StreamError::ConnectionError(c) => closed(c),
        _ => false,
    }
}

/// Whether a connection error is the connection's end rather than a fault of an answer.
fn closed(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::Remote(ConnectionErrorIncoming::ApplicationClose { error_code }) => {
            *error_code == Code::H3_NO_ERROR.value()
        }
        ConnectionError::Remote(ConnectionErrorIncoming::Timeout) | ConnectionError::Timeout => {
            true
        }
        _ => e.is_h3_no_error(),
    }
}

/// An HTTP/3 error as the data plane's I/O errors: a stream reset reads as such
/// ([`crate::net::stream_reset`]), a GOAWAY or a connection gone as a reset connection (the
/// range is fetched again either way), anything else as bad data.
fn to_io(e: StreamError) -> io::Error {
    if let StreamError::RemoteTerminate { .. } = e {
        return crate::net::stream_reset(format!("HTTP/3: {e}"));
    }
    let kind = match &e {
        StreamError::RemoteClosing => io::ErrorKind::ConnectionReset,
        StreamError::ConnectionError(c) if closed(c) => io::ErrorKind::ConnectionReset,
        StreamError::ConnectionError(ConnectionError::Remote(_)) => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, format!("HTTP/3: {e}"))
}
