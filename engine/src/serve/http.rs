//! One client connection: HTTP/1.1 request heads read with `httparse` under a size cap and a
//! deadline, answers framed and written back, file bodies sent with sendfile(2), kept alive
//! until the client closes, says `Connection: close`, or idles past
//! [`ServeOptions::idle_timeout`](super::ServeOptions::idle_timeout).
//!
//! A kept-alive connection waiting for its next request is registered as idle ([`Idle`](super::idle::Idle)): when
//! every slot is taken, the server closes the longest-idle one for the newcomer instead of
//! answering 503, so clients that hold connections open between rare requests cannot starve
//! the others.
//!
//! Limits, all of which end the connection: a head over [`MAX_HEAD`] bytes or with more than
//! [`MAX_HEADERS`] fields (431), a head that does not parse (400), a head not complete within
//! [`ServeOptions::head_timeout`](super::ServeOptions::head_timeout) (slow clients cannot hold
//! a thread), a send that blocks past
//! [`ServeOptions::write_timeout`](super::ServeOptions::write_timeout) (`SO_SNDTIMEO`), and a
//! client that reads a body slower than
//! [`ServeOptions::min_send_rate`](super::ServeOptions::min_send_rate) over such a span
//! ([`Pace`]). Request bodies are never read: a request that announces one is answered and the connection closed.
//! Over HTTPS the TLS handshake must also finish within the head deadline, and file bodies are
//! read and encrypted in user space instead of sendfile(2).
//! This module knows nothing of the Hub protocol; [`super::handler`] does.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Shared;
use super::handler::{Request, Response, dispatch};
use super::public_url::{Forwarded, public_base};
use super::send::{Pace, reason, send_file, write_response};

/// Largest request body read (a POST of `paths-info`: a list of paths), in bytes.
pub(crate) const MAX_BODY: u64 = 1 << 20;
/// Largest request head accepted, in bytes.
pub(crate) const MAX_HEAD: usize = 16 << 10;
/// Most header fields accepted in one request.
pub(crate) const MAX_HEADERS: usize = 64;

/// Holds one slot of [`Shared::active`]; gives it back when dropped (also on panic).
#[derive(Debug)]
pub(crate) struct ActiveGuard(pub Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers 503 to a connection over the cap, without waiting on it. An HTTPS client is just
/// closed: answering would mean a handshake on the accepting thread.
pub(crate) fn reject_busy(mut stream: TcpStream, tls: bool) {
    if tls {
        return;
    }
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let body = br#"{"error":"Too many connections"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nX-Error-Message: Too many connections\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body));
    let _ = stream.shutdown(Shutdown::Write);
}

/// A served connection: plain TCP, or rustls over it.
pub(super) type Wire = crate::net::tls::Wire<rustls::ServerConnection>;

impl Wire {
    /// The server name the client asked for in the TLS handshake (SNI).
    fn sni(&self) -> Option<String> {
        match self {
            Wire::Tls(s) => s.conn.server_name().map(str::to_owned),
            Wire::Plain(_) => None,
        }
    }

    /// Runs the server side of the TLS handshake, within the head deadline.
    fn accept_tls(tcp: TcpStream, ctx: &Shared) -> io::Result<Wire> {
        let Some(identity) = &ctx.options.tls else {
            return Ok(Wire::Plain(tcp));
        };
        let session = identity
            .session()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut s = rustls::StreamOwned::new(session, tcp);
        let deadline = Instant::now() + ctx.options.head_timeout;
        while s.conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            s.sock.set_read_timeout(Some(left))?;
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Wire::Tls(Box::new(s)))
    }

    /// Sends `len` bytes of `file` from `offset`: sendfile(2) on plain TCP, read and encrypt
    /// over TLS. `pace` cuts off a client that reads too slowly.
    pub(super) fn send_file(
        &mut self,
        file: &std::fs::File,
        (offset, len): (u64, u64),
        pace: &mut Pace,
    ) -> io::Result<()> {
        match self {
            Wire::Plain(s) => send_file(s, file, offset, len, pace),
            Wire::Tls(s) => {
                use std::os::unix::fs::FileExt;
                let mut chunk = vec![0u8; 256 << 10];
                let (mut pos, end) = (offset, offset + len);
                while pos < end {
                    let want = ((end - pos) as usize).min(chunk.len());
                    let n = file.read_at(&mut chunk[..want], pos)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file shorter than the catalog says",
                        ));
                    }
                    s.write_all(&chunk[..n])?;
                    pos += n as u64;
                    pace.sent(n as u64)?;
                }
                s.flush()
            }
        }
    }

    /// Ends the sending side: close_notify over TLS, then a TCP half-close.
    fn shutdown_write(&mut self) {
        if let Wire::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }
}

/// The parts of a request head this server uses, copied out of the read buffer.
#[derive(Debug, Default)]
struct Head {
    method: String,
    target: String,
    http10: bool,
    host: Option<String>,
    /// `X-Forwarded-Proto`, `-Host` and `-Prefix`: honoured from trusted proxies only.
    forwarded: Forwarded,
    range: Option<String>,
    if_range: Option<String>,
    /// `Authorization` (a mirror asks its upstream with it; never logged).
    authorization: Option<String>,
    /// `Connection: close` (1.1) or no `Connection: keep-alive` (1.0).
    close: bool,
    /// The request announces a body (read only for a POST with a length, up to [`MAX_BODY`]).
    has_body: bool,
    /// Its `Content-Length`, when it states one.
    length: Option<u64>,
    len: usize,
}

enum Parsed {
    Complete(Box<Head>),
    Partial,
    /// Answer this status and close.
    Invalid(u16),
}

fn parse_head(buf: &[u8]) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Invalid(431),
        Err(_) => return Parsed::Invalid(400),
    };
    // Lines end in CRLF: a bare LF is read differently by other parsers on the path (a
    // proxy in front), which is how requests are smuggled.
    let bare_lf = buf[..len]
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || buf[i - 1] != b'\r'));
    if bare_lf {
        return Parsed::Invalid(400);
    }
    let mut head = Head {
        method: req.method.unwrap_or("").to_owned(),
        target: req.path.unwrap_or("").to_owned(),
        http10: req.version == Some(0),
        len,
        ..Head::default()
    };
    let mut keep_alive = false;
    let (mut hosts, mut length, mut chunked) = (0, None::<u64>, false);
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            if h.name.eq_ignore_ascii_case("host") || h.name.eq_ignore_ascii_case("content-length")
            {
                return Parsed::Invalid(400);
            }
            continue;
        };
        let value = value.trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            head.host = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
            head.forwarded.proto = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("x-forwarded-host") {
            head.forwarded.host = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("x-forwarded-prefix") {
            head.forwarded.prefix = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("range") {
            head.range = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("if-range") {
            head.if_range = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            // Digits only (no sign, no list), and every copy the same.
            let n = value
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| value.parse::<u64>().ok())
                .flatten();
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Parsed::Invalid(400),
            }
        }
    }
    // One Host, and one is required in HTTP/1.1 (RFC 9112 3.2); a length and a transfer
    // coding together are the classic smuggling pair.
    if hosts > 1 || (hosts == 0 && !head.http10) || (chunked && length.is_some()) {
        return Parsed::Invalid(400);
    }
    head.has_body = chunked || length.is_some_and(|n| n > 0);
    head.length = length;
    // GET and HEAD take no body here: one announced would be read as the next request.
    if head.has_body && (head.method == "GET" || head.method == "HEAD") {
        return Parsed::Invalid(400);
    }
    if head.http10 && !keep_alive {
        head.close = true;
    }
    Parsed::Complete(Box::new(head))
}

/// Serves requests on `stream` until it closes or fails.
pub(crate) fn serve_connection(tcp: TcpStream, peer: SocketAddr, ctx: &Shared) {
    let _ = tcp.set_nodelay(true);
    if let Err(e) = tcp.set_write_timeout(Some(ctx.options.write_timeout)) {
        tracing::debug!(%peer, error = %e, "cannot set a send timeout; closing");
        return;
    }
    let stream = match Wire::accept_tls(tcp, ctx) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed; closing");
            return;
        }
    };
    let local = stream.tcp().local_addr().unwrap_or(peer);
    let sni = stream.sni();
    let stream = match stream {
        Wire::Tls(tls) if tls.conn.alpn_protocol() == Some(b"h2") => {
            return super::h2::serve(*tls, peer, (local, sni), ctx);
        }
        other => other,
    };
    let mut stream = stream;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut first = true;
    loop {
        // Between requests the connection may idle (and be evicted when slots run out); once a
        // byte of the next head arrives, the head deadline applies.
        let mut idle = None;
        if !first && buf.is_empty() {
            let (id, arrived) = wait_for_request(&mut stream, ctx, &mut buf);
            if !arrived {
                // Idled out, closed by the client, or evicted for a newcomer.
                ctx.idle.leave(id);
                return;
            }
            idle = id;
        }
        first = false;
        let head = read_head(&mut stream, &mut buf, ctx.options.head_timeout);
        ctx.idle.leave(idle);
        let head = match head {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(%peer, status, "bad request head; closing");
                let r = Response::error(status, None, reason(status));
                if write_response(&mut stream, r, (false, true), &ctx.options).is_ok() {
                    linger_close(&mut stream);
                }
                return;
            }
        };
        buf.drain(..head.len);
        let head_only = head.method == "HEAD";
        // A POST's body is read when its length is stated and small; any other body is not,
        // and the connection closes after the answer.
        let body = match (head.method.as_str(), head.length) {
            ("POST", Some(n)) if n <= MAX_BODY && !head.has_body_chunked() => {
                read_body(&mut stream, &mut buf, n as usize, ctx.options.head_timeout)
            }
            _ => None,
        };
        let close = head.close || (head.has_body && body.is_none());
        let base = public_base(ctx, &head.forwarded, peer, (local, sni.as_deref()));
        let posted = match (head.method.as_str(), &body) {
            ("POST", Some(b)) => Some(b.as_slice()),
            ("POST", None) if !head.has_body => Some(&[][..]),
            _ => None,
        };
        let response = dispatch(
            ctx,
            &Request {
                method: &head.method,
                target: &head.target,
                base: &base,
                range: head.range.as_deref(),
                if_range: head.if_range.as_deref(),
                authorization: head.authorization.as_deref(),
                body: posted,
            },
        );
        tracing::debug!(
            %peer,
            method = %head.method,
            target = %head.target,
            range = ?head.range,
            status = response.status,
            bytes = response.body_len(),
            "request"
        );
        if let Err(e) = write_response(&mut stream, response, (head_only, close), &ctx.options) {
            tracing::debug!(%peer, error = %e, "send failed; closing");
            if e.kind() == io::ErrorKind::TimedOut {
                // A client too slow to read: reset, so the kernel does not keep sending it
                // (and holding) the rest of the socket buffer after the thread is gone.
                let _ = rustix::net::sockopt::set_socket_linger(stream.tcp(), Some(Duration::ZERO));
            }
            return;
        }
        if close {
            linger_close(&mut stream);
            return;
        }
    }
}

impl Head {
    /// A body framed by a transfer coding (never read).
    fn has_body_chunked(&self) -> bool {
        self.has_body && self.length.is_none()
    }
}

/// Reads a body of `len` bytes, what `buf` holds of it first, within `timeout`; `None` when it
/// does not all arrive in time (the connection is then closed).
fn read_body(
    stream: &mut Wire,
    buf: &mut Vec<u8>,
    len: usize,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 16 << 10];
    while buf.len() < len {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.tcp().set_read_timeout(Some(left)).is_err() {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(buf.drain(..len).collect())
}

/// Waits up to the idle timeout for the first bytes of the next request, registered as idle
/// meanwhile (so the accept thread may close it for a newcomer). Returns the registration,
/// which the caller ends once the head is read, and whether bytes arrived.
fn wait_for_request(stream: &mut Wire, ctx: &Shared, buf: &mut Vec<u8>) -> (Option<usize>, bool) {
    let id = ctx.idle.enter(stream.tcp());
    let mut chunk = [0u8; 4096];
    if stream
        .tcp()
        .set_read_timeout(Some(ctx.options.idle_timeout))
        .is_err()
    {
        return (id, false);
    }
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (id, false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return (id, true);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (id, false),
        }
    }
}

/// Reads until `buf` holds a complete head. `Ok(None)`: the client closed or idled out between
/// requests; `Err(status)`: answer that status and close.
fn read_head(stream: &mut Wire, buf: &mut Vec<u8>, timeout: Duration) -> Result<Option<Head>, u16> {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    loop {
        if !buf.is_empty() {
            match parse_head(buf) {
                Parsed::Complete(h) => return Ok(Some(*h)),
                Parsed::Invalid(status) => return Err(status),
                Parsed::Partial if buf.len() >= MAX_HEAD => return Err(431),
                Parsed::Partial => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return if buf.is_empty() { Ok(None) } else { Err(408) };
        }
        if stream.tcp().set_read_timeout(Some(left)).is_err() {
            return Ok(None);
        }
        let room = (MAX_HEAD + 1 - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return if buf.is_empty() { Ok(None) } else { Err(408) };
            }
            Err(_) => return Ok(None),
        }
    }
}

/// Ends the connection after an answer: shuts down sending, then reads and discards what the
/// client still sends (at most 1 MiB, for at most 2 s) until it closes. Closing a socket with
/// unread input resets the connection, and a reset can destroy the answer before the client has
/// read it (what nginx's `lingering_close` avoids).
fn linger_close(stream: &mut Wire) {
    stream.shutdown_write();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    while total < (1 << 20) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.tcp().set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
mod tests;
