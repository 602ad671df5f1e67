//! Sending an answer: the status line and headers, then the body (a JSON value, or a file with
//! sendfile(2), or read and encrypted over TLS), paced so that a client reading slower than
//! [`ServeOptions::min_send_rate`](super::ServeOptions::min_send_rate) over a send timeout is
//! dropped.
//!
//! Not here: reading requests or keeping connections (`http.rs`), what to answer (`handler.rs`).

use super::ServeOptions;
use super::date::http_date;
use super::handler::{Body, Response};
use super::http::Wire;
use super::mirror::Ready;
use std::io::{self, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub(super) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

pub(super) fn write_response(
    stream: &mut Wire,
    r: Response,
    (head_only, close): (bool, bool),
    options: &ServeOptions,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    head.push_str(&format!(
        "Content-Length: {}\r\nDate: {}\r\nServer: ferry/{}\r\nConnection: {}\r\n",
        r.body_len(),
        http_date(),
        env!("CARGO_PKG_VERSION"),
        if close { "close" } else { "keep-alive" }
    ));
    for (name, value) in &r.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    match r.body {
        Body::Bytes(bytes) => {
            let mut all = head.into_bytes();
            if !head_only {
                all.extend_from_slice(&bytes);
            }
            stream.write_all(&all)?;
            stream.flush()
        }
        Body::File {
            file,
            offset,
            len,
            pin: _kept,
        } => {
            stream.write_all(head.as_bytes())?;
            if head_only {
                return stream.flush();
            }
            let mut pace = Pace::new(options.min_send_rate, options.write_timeout);
            stream.send_file(&file, (offset, len), &mut pace)
        }
        Body::Filling {
            fill,
            offset,
            len,
            pin: _kept,
        } => {
            stream.write_all(head.as_bytes())?;
            if head_only {
                return stream.flush();
            }
            stream.flush()?;
            let mut pace = Pace::new(options.min_send_rate, options.write_timeout);
            let (mut pos, end, mut reader) = (offset, offset + len, fill.reader());
            while pos < end {
                match reader.wait_ready(pos, FILL_WAIT) {
                    Ready::Bytes { file, until } => {
                        let n = until.min(end) - pos;
                        stream.send_file(&file, (pos, n), &mut pace)?;
                        reader.sent(n);
                        pos += n;
                    }
                    // The client is not slow while it waits for the upstream.
                    Ready::Wait => pace.restart(),
                    Ready::Failed(why) => return Err(io::Error::other(why)),
                }
            }
            stream.flush()
        }
        Body::Announced { .. } => {
            stream.write_all(head.as_bytes())?;
            if !head_only {
                return Err(io::Error::other("a body announced for HEAD only"));
            }
            stream.flush()
        }
    }
}

/// How long a reader of a fill sleeps at most before it looks again.
pub(super) const FILL_WAIT: Duration = Duration::from_millis(500);

/// The slow-reader guard of one body: over every `window` (the send timeout), the client must
/// take at least `min_rate` bytes per second, or the connection is closed. A client that reads
/// nothing at all is cut by the send timeout itself (`SO_SNDTIMEO`), one that trickles by this,
/// so neither holds a connection thread for longer than about two windows past its last
/// reasonable read.
pub(crate) struct Pace {
    min_rate: u64,
    window: Duration,
    /// Bytes per sendfile(2) call. A call returns once all are sent, or once the client took
    /// nothing for the send timeout, so this is how often a client that keeps reading, however
    /// slowly, is looked at: what the minimum rate moves in one window, within 256 KiB..2 MiB
    /// (nginx's `sendfile_max_chunk` is 2 MiB for the same reason).
    pub(super) step: u64,
    since: Instant,
    sent: u64,
}

impl Pace {
    pub(super) fn new(min_rate: u64, window: Duration) -> Pace {
        let window = window.max(Duration::from_millis(1));
        let per_window = min_rate as f64 * window.as_secs_f64();
        Pace {
            min_rate,
            window,
            step: (per_window as u64).clamp(256 << 10, 2 << 20),
            since: Instant::now(),
            sent: 0,
        }
    }

    /// Starts a new window: the time before did not count against the client (it was waiting
    /// for bytes to send).
    pub(super) fn restart(&mut self) {
        self.since = Instant::now();
        self.sent = 0;
    }

    /// Counts `n` bytes taken by the client; an error once a whole window went by too slowly.
    pub(super) fn sent(&mut self, n: u64) -> io::Result<()> {
        self.sent += n;
        let elapsed = self.since.elapsed();
        if elapsed < self.window {
            return Ok(());
        }
        if (self.sent as f64) < self.min_rate as f64 * elapsed.as_secs_f64() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took {} bytes in {:.1} s, under the {} bytes/s minimum",
                    self.sent,
                    elapsed.as_secs_f64(),
                    self.min_rate
                ),
            ));
        }
        self.since = Instant::now();
        self.sent = 0;
        Ok(())
    }
}

/// Sends `len` bytes of `file` from `offset` with sendfile(2), looping over short sends.
pub(super) fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    pace: &mut Pace,
) -> io::Result<()> {
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let count = (end - pos).min(pace.step) as usize;
        let before = pos;
        match rustix::fs::sendfile(stream, file, Some(&mut pos), count) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than the catalog says",
                ));
            }
            // `pos` was advanced by the kernel.
            Ok(_) => pace.sent(pos - before)?,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
