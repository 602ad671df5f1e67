//! HTTP/2 connections (spike, issue 29 item 3): a TLS connection that offered `h2` then
//! `http/1.1` ([`super::tls::Alpn`]), handed to hyperium's `h2` crate when the server chose
//! `h2`, and given back as an ordinary HTTP/1.1 [`Stream`] when it chose `http/1.1` or nothing.
//!
//! Why `h2`: it is the HTTP/2 codec under hyper, reqwest and tonic, kept by the hyper team and
//! fuzzed, with flow control, GOAWAY and RST_STREAM handled as the RFC says; it needs no tokio
//! runtime, timer or spawn, only tokio's `AsyncRead`/`AsyncWrite` traits and its `Connection`
//! future polled (here by a compio task). A codec of ferry's own would repeat all of that.
//!
//! [`H2Io`] implements those two traits over rustls and compio's owned-buffer socket ops
//! directly: the socket is cloned (compio shares the descriptor), a read and a write may each
//! be in flight at once as boxed `'static` futures owning their buffer, and the TLS session
//! stays in the adapter. Plaintext goes from rustls straight into h2's read buffer (no zeroing,
//! no intermediate buffer), which is one copy fewer than compio-io's `compat` layer (its own
//! buffer, and it needs a splittable stream, which a rustls session is not).
//!
//! Invariants: at most one socket read and one socket write in flight; a write's ciphertext is
//! sent whole before more plaintext is taken (h2's writes wait: back-pressure); a read that
//! reaches EOF without `close_notify` reads as the end of the stream (h2 then fails the
//! streams still open). Not here: requests, answers and their checks
//! (`download/h2conn.rs`); HTTP/2 without TLS (`h2c`); the stall watchdog, which runs per
//! stream, as an idle HTTP/2 connection legitimately reads nothing for long.

use std::future::Future;
use std::io::{self, BufRead, Write};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::{AsyncRead as _, AsyncWriteExt as _};
use compio::net::TcpStream;
use rustls::ClientConnection;

use super::Stream;
use super::tls::TlsParts;

/// Ciphertext read per socket read: a few TLS records (16 KiB each), as `tls.rs` reads.
const RX_CHUNK: usize = 64 * 1024;

type Op<T> = Pin<Box<dyn Future<Output = (io::Result<T>, Vec<u8>)>>>;

/// tokio's I/O traits over a TLS session on a compio socket, for `h2`: a client's
/// (`ClientConnection`, the default) or, in tests, a server's.
pub(crate) struct H2Io<C = ClientConnection> {
    tcp: TcpStream,
    tls: C,
    /// Ciphertext read, `rx[rx_at..]` not yet handed to rustls; empty while a read is out.
    rx: Vec<u8>,
    rx_at: usize,
    /// The socket read in flight, owning the buffer that becomes `rx`.
    reading: Option<Op<usize>>,
    /// The socket write in flight, owning the ciphertext; `tx` is its buffer when none is.
    writing: Option<Op<()>>,
    tx: Vec<u8>,
    /// The socket reached EOF, or the peer sent `close_notify`.
    closed: bool,
}

impl<C> std::fmt::Debug for H2Io<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Io")
            .field("reading", &self.reading.is_some())
            .field("writing", &self.writing.is_some())
            .field("closed", &self.closed)
            .finish()
    }
}

impl H2Io {
    /// Takes over a TLS session whose handshake is done ([`super::tls::TlsStream::into_parts`]).
    pub(crate) fn new(parts: TlsParts) -> H2Io {
        H2Io::over(parts.tcp, parts.conn, parts.unread)
    }
}

impl<C, S> H2Io<C>
where
    C: DerefMut + Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    /// `tls` over `tcp`, `unread` the ciphertext already read. A session still in its
    /// handshake finishes it as bytes flow (reads feed it, and what it answers is sent).
    pub(crate) fn over(tcp: TcpStream, tls: C, unread: Vec<u8>) -> H2Io<C> {
        H2Io {
            tcp,
            tls,
            rx: unread,
            rx_at: 0,
            reading: None,
            writing: None,
            tx: Vec::new(),
            closed: false,
        }
    }

    /// Hands buffered ciphertext to rustls and decrypts what it completes.
    fn feed(&mut self) -> io::Result<()> {
        let (n, state) = super::tls::feed(&mut self.tls, &self.rx[self.rx_at..])?;
        self.rx_at += n;
        self.closed |= state.peer_has_closed();
        Ok(())
    }

    /// Moves decrypted bytes into `buf`, record by record; how many.
    fn take_plain(&mut self, buf: &mut tokio::io::ReadBuf<'_>) -> io::Result<usize> {
        let mut reader = self.tls.reader();
        let mut moved = 0;
        while buf.remaining() > 0 {
            let record = match reader.fill_buf() {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if moved == 0 => return Err(e),
                Err(_) => break,
            };
            if record.is_empty() {
                // close_notify: the end of the stream.
                self.closed = true;
                break;
            }
            let n = record.len().min(buf.remaining());
            buf.put_slice(&record[..n]);
            reader.consume(n);
            moved += n;
        }
        Ok(moved)
    }

    /// Drives the socket write: finishes the one in flight, then sends what rustls has queued.
    /// `Ready(Ok)` once nothing is left to send.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(op) = self.writing.as_mut() {
                let (r, tx) = ready!(op.as_mut().poll(cx));
                self.writing = None;
                self.tx = tx;
                r?;
            }
            if !self.tls.wants_write() {
                return Poll::Ready(Ok(()));
            }
            let mut tx = std::mem::take(&mut self.tx);
            tx.clear();
            while self.tls.wants_write() {
                self.tls.write_tls(&mut tx)?;
            }
            let mut tcp = self.tcp.clone();
            self.writing = Some(Box::pin(async move {
                let BufResult(r, tx) = tcp.write_all(tx).await;
                (r, tx)
            }));
        }
    }
}

impl<C, S> tokio::io::AsyncRead for H2Io<C>
where
    C: DerefMut + Deref<Target = rustls::ConnectionCommon<S>> + Unpin,
    S: rustls::SideData,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.take_plain(buf)? > 0 || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.rx_at < this.rx.len() {
                this.feed()?;
                // rustls may owe the peer an answer (a key update, an alert): start sending
                // it; a write still going on is finished by h2's next flush.
                if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
                continue;
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            let op = this.reading.get_or_insert_with(|| {
                let mut rx = std::mem::take(&mut this.rx);
                rx.clear();
                // The first buffer is what the handshake left over, maybe none at all.
                rx.reserve(RX_CHUNK);
                let mut tcp = this.tcp.clone();
                Box::pin(async move {
                    let BufResult(r, slice) = tcp.read(rx.slice(0..RX_CHUNK)).await;
                    (r, slice.into_inner())
                })
            });
            let (r, rx) = ready!(op.as_mut().poll(cx));
            this.reading = None;
            this.rx = rx;
            this.rx_at = 0;
            // EOF without close_notify: h2's framing says whether anything was cut.
            if r? == 0 {
                this.closed = true;
            }
        }
    }
}

impl<C, S> tokio::io::AsyncWrite for H2Io<C>
where
    C: DerefMut + Deref<Target = rustls::ConnectionCommon<S>> + Unpin,
    S: rustls::SideData,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Back-pressure: the last ciphertext goes out before more is made.
        ready!(this.poll_send(cx))?;
        let n = this.tls.writer().write(data)?;
        // Starts the socket write (compio submits an op when it is first polled).
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.send_close_notify();
        this.poll_send(cx)
    }
}

/// The flow-control windows and frame size a client connection announces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Windows {
    /// The connection's receive window: the most body bytes of all its streams together the
    /// server may send ahead of what ferry consumed, so the most h2 buffers per connection.
    pub connection: u32,
    /// Each stream's initial receive window: at least a lease, so a lease's body never waits
    /// on a WINDOW_UPDATE (what a slow consumer lowers is the connection's).
    pub stream: u32,
    /// SETTINGS_MAX_FRAME_SIZE: the largest DATA frame the server may send.
    pub max_frame: u32,
}

impl Default for Windows {
    fn default() -> Self {
        // A window holds what a flow brings in a round trip (8 MiB: 55 MB/s at 150 ms, twice
        // a CDN edge's per-flow rate), and bounds what h2 keeps for a lane that stopped reading
        // (its buffers all in the pipeline), where HTTP/1.1 leaves it in the kernel's socket
        // buffer (up to `tcp_rmem`'s 6 MiB). 16 MiB put peak RSS at 253 MiB on wan-80-https.
        Windows {
            connection: 8 << 20,
            stream: 8 << 20,
            // Fewer frames (and fewer polls of h2) per MiB than the 16 KiB default; the
            // server still picks smaller ones (nginx's `http2_chunk_size`, 8 KiB).
            max_frame: 1 << 20,
        }
    }
}

/// What a connection that offered `h2` turned out to speak.
pub(crate) enum Negotiated {
    /// HTTP/2: the handle requests are sent on (cheap to clone, one per stream in flight)
    /// and the task driving the connection. Dropping the task closes the connection.
    H2 {
        send: h2::client::SendRequest<bytes::Bytes>,
        driver: compio::runtime::JoinHandle<()>,
    },
    /// HTTP/1.1 (the server chose it, or chose nothing, or the connection is plain): the
    /// stream as `net::open` gives it, for the HTTP/1.1 data plane, unchanged.
    Http1(Stream),
}

impl std::fmt::Debug for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Negotiated::H2 { .. } => f.write_str("H2"),
            Negotiated::Http1(s) => f.debug_tuple("Http1").field(s).finish(),
        }
    }
}

/// Starts HTTP/2 on `stream` when its TLS handshake chose `h2`: the client preface and
/// SETTINGS with `windows`, and the connection's driver spawned on this worker. Anything
/// else comes back as [`Negotiated::Http1`].
pub(crate) async fn start(stream: Stream, windows: Windows) -> Result<Negotiated, h2::Error> {
    let tls = match stream {
        Stream::Tls(tls) if tls.negotiated_h2() => tls,
        other => return Ok(Negotiated::Http1(other)),
    };
    let io = H2Io::new(tls.into_parts());
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .max_frame_size(windows.max_frame)
        .enable_push(false)
        .handshake::<_, bytes::Bytes>(io)
        .await?;
    let driver = compio::runtime::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("HTTP/2 connection ended: {e}");
        }
    });
    Ok(Negotiated::H2 { send, driver })
}

/// An h2 error as the I/O error a read of an HTTP/1.1 connection would have given: what
/// ended the stream (RST_STREAM, GOAWAY, the connection) named.
pub(crate) fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 connection failed"));
    }
    // RST_STREAM from the server: that stream's end alone.
    if e.is_reset() && e.is_remote() {
        return super::stream_reset(format!("HTTP/2: {e}"));
    }
    // GOAWAY, or a stream h2 reset itself for a protocol error.
    let kind = if e.reason().is_some() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::InvalidData
    };
    io::Error::new(kind, format!("HTTP/2: {e}"))
}
