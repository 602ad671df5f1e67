//! One HTTP/1.1 connection of a download: send a request, read its head, copy its body to a file
//! at an offset. Bytes after the head that arrived with it are kept and used first.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::fs::File;
use compio::io::{AsyncRead, AsyncWriteAtExt, AsyncWriteExt};
use compio::net::TcpStream;

use super::{Ctx, Target};
use crate::error::GetError;
use crate::http1::{self, ChunkedDecoder, Framing, ResponseHead};

/// Head-read granularity; heads are small, bodies go straight to the staging buffer.
const HEAD_READ: usize = 16 * 1024;

/// How a body copy ended.
pub(super) enum Copied {
    /// The body was copied: this many bytes.
    Done(u64),
    /// Another connection failed and the job is stopping: nothing to report.
    Aborted,
}

pub(super) struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes read past the last head, not yet consumed.
    pending: Vec<u8>,
    /// Staging buffer for body bytes on their way to the file.
    staging: Vec<u8>,
    staging_cap: usize,
    /// True once a request has completed on this connection (a closed idle connection is then
    /// not the server's fault and is retried on a fresh one).
    reused: bool,
    /// False once the body ran to EOF or the server said `Connection: close`.
    reusable: bool,
}

impl Conn {
    pub async fn open(addrs: &[SocketAddr], staging_cap: usize) -> Result<Conn, GetError> {
        let stream = crate::net::connect(addrs).await?;
        let addr = stream.peer_addr().unwrap_or(addrs[0]);
        Ok(Conn {
            stream,
            addr,
            pending: Vec::with_capacity(HEAD_READ),
            staging: Vec::with_capacity(staging_cap),
            staging_cap,
            reused: false,
            reusable: true,
        })
    }

    pub fn is_reusable(&self) -> bool {
        self.reusable
    }

    fn net_err(&self, op: &'static str, source: std::io::Error) -> GetError {
        GetError::Network {
            addr: self.addr.to_string(),
            op,
            source,
        }
    }

    /// Sends a GET for `range` and reads the response head. A connection that was idle and turns
    /// out closed is replaced by a fresh one, once.
    pub async fn request(
        &mut self,
        target: &Target,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<ResponseHead, GetError> {
        let req = http1::get_request(&target.request_target, &target.host_header, range);
        if self.reused {
            match self.try_request(target, req.clone()).await {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {
                    tracing::debug!(addr = %self.addr, "idle connection was closed; reconnecting");
                    let staging = std::mem::take(&mut self.staging);
                    *self = Conn::open(&target.addrs, self.staging_cap).await?;
                    self.staging = staging;
                }
                Err(e) => return Err(e),
            }
        }
        match self.try_request(target, req).await? {
            Some(head) => Ok(head),
            None => Err(GetError::Protocol {
                url: target.display.clone(),
                detail: "the server closed the connection without a response".into(),
            }),
        }
    }

    /// `Ok(None)`: the connection closed before any byte of a response.
    async fn try_request(
        &mut self,
        target: &Target,
        req: Vec<u8>,
    ) -> Result<Option<ResponseHead>, GetError> {
        self.pending.clear();
        let BufResult(sent, _) = self.stream.write_all(req).await;
        if let Err(e) = sent {
            if self.reused && is_closed(&e) {
                return Ok(None);
            }
            return Err(self.net_err("send request", e));
        }
        loop {
            match http1::parse_head(&self.pending) {
                Ok(Some((head, len))) => {
                    self.pending.drain(..len);
                    if !head.keep_alive() {
                        self.reusable = false;
                    }
                    return Ok(Some(head));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(GetError::Protocol {
                        url: target.display.clone(),
                        detail: e.to_string(),
                    });
                }
            }
            let n = match self.read_more().await {
                Ok(n) => n,
                Err(e) if self.reused && self.pending.is_empty() && is_closed(&e) => {
                    return Ok(None);
                }
                Err(e) => return Err(self.net_err("read response head", e)),
            };
            if n == 0 {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                return Err(GetError::Protocol {
                    url: target.display.clone(),
                    detail: "connection closed in the middle of the response head".into(),
                });
            }
        }
    }

    /// Appends up to [`HEAD_READ`] bytes from the socket to `pending`.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        let mut buf = std::mem::take(&mut self.pending);
        let len = buf.len();
        buf.reserve(HEAD_READ);
        let BufResult(r, slice) = self.stream.read(buf.slice(len..len + HEAD_READ)).await;
        self.pending = slice.into_inner();
        r
    }

    /// Copies a response body to `file` at `offset`, writing in staging-buffer sized pieces.
    /// `expect` is the length the body must have (from the range asked for); `None` accepts
    /// whatever a single-stream body turns out to be.
    pub async fn copy_body(
        &mut self,
        ctx: &Ctx,
        framing: Framing,
        expect: Option<u64>,
        file: &mut File,
        offset: u64,
    ) -> Result<Copied, GetError> {
        let url = &ctx.target().display;
        if let (Framing::Length(n), Some(e)) = (framing, expect) {
            if n != e {
                return Err(GetError::Protocol {
                    url: url.clone(),
                    detail: format!("Content-Length {n} does not match the {e} bytes of the range"),
                });
            }
        }
        let mut staging = std::mem::take(&mut self.staging);
        staging.clear();
        let result = match framing {
            Framing::Length(n) => self.copy_exact(ctx, n, file, offset, &mut staging).await,
            Framing::UntilClose => {
                self.reusable = false;
                self.copy_until_close(ctx, file, offset, &mut staging).await
            }
            Framing::Chunked => self.copy_chunked(ctx, file, offset, &mut staging).await,
        };
        self.staging = staging;
        let copied = result?;
        if let (Copied::Done(got), Some(expected)) = (&copied, expect) {
            if *got < expected {
                return Err(GetError::ShortBody {
                    url: url.clone(),
                    offset,
                    expected,
                    received: *got,
                });
            }
            if *got > expected {
                return Err(GetError::Protocol {
                    url: url.clone(),
                    detail: format!("body of {got} bytes where {expected} were asked for"),
                });
            }
        }
        if matches!(copied, Copied::Done(_)) {
            self.reused = true;
        }
        Ok(copied)
    }

    async fn flush(
        &self,
        ctx: &Ctx,
        file: &mut File,
        staging: &mut Vec<u8>,
        at: &mut u64,
    ) -> Result<(), GetError> {
        if Vec::is_empty(staging) {
            return Ok(());
        }
        let len = staging.len() as u64;
        let BufResult(r, buf) = file.write_all_at(std::mem::take(staging), *at).await;
        *staging = buf;
        staging.clear();
        r.map_err(|source| GetError::Io {
            op: "write",
            path: ctx.incomplete.clone(),
            source,
        })?;
        *at += len;
        ctx.counters.done.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Reads exactly `len` body bytes (fewer only when the peer closes early).
    async fn copy_exact(
        &mut self,
        ctx: &Ctx,
        len: u64,
        file: &mut File,
        offset: u64,
        staging: &mut Vec<u8>,
    ) -> Result<Copied, GetError> {
        let mut at = offset;
        let take = (self.pending.len() as u64).min(len) as usize;
        staging.extend(self.pending.drain(..take));
        let mut remaining = len - take as u64;
        loop {
            if staging.len() >= self.staging_cap || (remaining == 0 && !Vec::is_empty(staging)) {
                self.flush(ctx, file, staging, &mut at).await?;
            }
            if remaining == 0 {
                return Ok(Copied::Done(len));
            }
            if ctx.is_aborted() {
                self.reusable = false;
                return Ok(Copied::Aborted);
            }
            let filled = staging.len();
            let want = (remaining.min((self.staging_cap - filled) as u64)) as usize;
            staging.reserve(want);
            let BufResult(r, slice) = self
                .stream
                .read(std::mem::take(staging).slice(filled..filled + want))
                .await;
            *staging = slice.into_inner();
            match r {
                Ok(0) => {
                    self.reusable = false;
                    self.flush(ctx, file, staging, &mut at).await?;
                    return Ok(Copied::Done(len - remaining));
                }
                Ok(n) => remaining -= n as u64,
                Err(e) => {
                    self.reusable = false;
                    return Err(self.net_err("read body", e));
                }
            }
        }
    }

    async fn copy_until_close(
        &mut self,
        ctx: &Ctx,
        file: &mut File,
        offset: u64,
        staging: &mut Vec<u8>,
    ) -> Result<Copied, GetError> {
        let mut at = offset;
        staging.append(&mut self.pending);
        loop {
            if staging.len() >= self.staging_cap {
                self.flush(ctx, file, staging, &mut at).await?;
            }
            if ctx.is_aborted() {
                return Ok(Copied::Aborted);
            }
            let filled = staging.len();
            let want = self.staging_cap - filled;
            staging.reserve(want);
            let BufResult(r, slice) = self
                .stream
                .read(std::mem::take(staging).slice(filled..filled + want))
                .await;
            *staging = slice.into_inner();
            match r {
                Ok(0) => {
                    self.flush(ctx, file, staging, &mut at).await?;
                    return Ok(Copied::Done(at - offset));
                }
                Ok(_) => {}
                Err(e) => return Err(self.net_err("read body", e)),
            }
        }
    }

    async fn copy_chunked(
        &mut self,
        ctx: &Ctx,
        file: &mut File,
        offset: u64,
        staging: &mut Vec<u8>,
    ) -> Result<Copied, GetError> {
        let url = &ctx.target().display;
        let protocol = |e: http1::ChunkError| GetError::Protocol {
            url: url.clone(),
            detail: format!("chunked body: {e}"),
        };
        let mut at = offset;
        let mut decoder = ChunkedDecoder::default();
        let used = decoder.decode(&self.pending, staging).map_err(protocol)?;
        self.pending.drain(..used);
        while !decoder.is_done() {
            if staging.len() >= self.staging_cap {
                self.flush(ctx, file, staging, &mut at).await?;
            }
            if ctx.is_aborted() {
                self.reusable = false;
                return Ok(Copied::Aborted);
            }
            let n = self
                .read_more()
                .await
                .map_err(|e| self.net_err("read body", e))?;
            if n == 0 {
                self.reusable = false;
                self.flush(ctx, file, staging, &mut at).await?;
                return Err(GetError::Protocol {
                    url: url.clone(),
                    detail: format!(
                        "connection closed inside a chunked body after {} bytes",
                        at - offset
                    ),
                });
            }
            let used = decoder.decode(&self.pending, staging).map_err(protocol)?;
            self.pending.drain(..used);
        }
        self.flush(ctx, file, staging, &mut at).await?;
        Ok(Copied::Done(at - offset))
    }

    /// Reads and discards a small body (a redirect's), or gives up on the connection.
    pub async fn discard_body(&mut self, framing: Framing) {
        match framing {
            Framing::Length(n) if n <= 64 * 1024 => {
                while (self.pending.len() as u64) < n {
                    match self.read_more().await {
                        Ok(0) | Err(_) => {
                            self.reusable = false;
                            return;
                        }
                        Ok(_) => {}
                    }
                }
                self.pending.drain(..n as usize);
                self.reused = true;
            }
            _ => self.reusable = false,
        }
    }
}

fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
    )
}
