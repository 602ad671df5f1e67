//! Bodies into the write pipeline: a lease's bytes read straight into aligned pipeline buffers
//! (no staging copy) or spliced socket -> pipe -> file, and a single stream (raw or chunked)
//! copied in as it comes. The plan is asked before every read how far the lease still reaches.
//!
//! A lease's read that brings nothing for a few round trips while other connections move ends
//! as stalled (`net/watch.rs`), so its rest can go to another connection.
//!
//! Invariant: no byte past a lease's end (as the plan has it now) or past the listed size is
//! written. Not here: the request and the connection itself (`conn.rs`).

use std::ops::Range;

use compio::BufResult;
use compio::driver::{SharedFd, ToSharedFd};
use futures_util::FutureExt;

use super::FileDownload;
use super::conn::{BodyEnd, Conn, HEAD_READ, Wire, hedged_watch, pace};
use super::pipe::Pipeline;
use crate::backend::buf::AlignedBuf;
use crate::backend::splice::SplicePipe;
use crate::error::GetError;
use crate::net::{WatchError, is_hedged};
use crate::proto::http1::{self, ChunkedDecoder, Framing};
use crate::proto::plan::LeaseId;

/// A single-stream body on its way into pipeline buffers.
struct StreamOut {
    /// Always `Some` except while a read owns it.
    buf: Option<AlignedBuf>,
    /// File offset of `buf`'s first byte.
    buf_at: u64,
    /// Bytes of body received so far (= the file offset of the next byte).
    at: u64,
    /// The size the file is listed with: a body that outgrows it is refused before the bytes
    /// past it are written (`u64::MAX`: no size stated).
    limit: u64,
}

impl StreamOut {
    fn buf(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("stream buffer")
    }

    /// Submits the buffer when it is full and starts the next one.
    async fn make_room(&mut self, pipe: &mut Pipeline) -> Result<(), GetError> {
        if self.buf().bytes().len() == pipe.fill_limit(self.buf_at, self.buf().capacity()) {
            let next = pipe.buffer(self.at).await?;
            let full = self.buf.replace(next).expect("stream buffer");
            pipe.submit(full, self.buf_at).await?;
            self.buf_at = self.at;
        }
        Ok(())
    }

    /// Copies decoded bytes in, submitting buffers as they fill.
    async fn feed(&mut self, pipe: &mut Pipeline, mut bytes: &[u8]) -> Result<(), GetError> {
        self.check_limit(self.at.saturating_add(bytes.len() as u64))?;
        while !bytes.is_empty() {
            self.make_room(pipe).await?;
            let room =
                pipe.fill_limit(self.buf_at, self.buf().capacity()) - self.buf().bytes().len();
            let n = room.min(bytes.len());
            self.buf
                .as_mut()
                .expect("stream buffer")
                .push_slice(&bytes[..n]);
            self.at += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Refuses a body that reached `at` bytes when the file is listed with fewer.
    fn check_limit(&self, at: u64) -> Result<(), GetError> {
        if at > self.limit {
            return Err(GetError::LargerThanListed {
                url: String::new(),
                listed: self.limit,
                stated: at,
            });
        }
        Ok(())
    }
}

/// Whether a short body ended with its stream (cleanly, or reset by the server) rather than
/// with its connection: over HTTP/2 and HTTP/3 the connection then stays usable.
fn stream_ended(error: Option<&GetError>) -> bool {
    match error {
        None => true,
        Some(GetError::Network { source, .. }) => crate::net::is_stream_reset(source),
        Some(_) => false,
    }
}

impl Conn {
    /// Reads the body of a ranged answer for `lease` (which started at `range.start`) into
    /// the file, asking the plan before each read how far the lease still reaches. Only a body
    /// read to its end leaves the connection fit for another request.
    pub(super) async fn copy_lease(
        &mut self,
        ctx: &FileDownload,
        pipe: &mut Pipeline,
        lease: LeaseId,
        range: Range<u64>,
    ) -> Result<BodyEnd, GetError> {
        // Over TLS the socket carries ciphertext, so the bytes go through buffers even with the
        // splice sink.
        let splice = pipe
            .splice_target()
            .zip(self.wire.plain_tcp().map(ToSharedFd::to_shared_fd));
        let end = match splice {
            Some((file, socket)) => {
                self.splice_lease(ctx, pipe, file, socket, lease, range)
                    .await
            }
            None => self.read_lease(ctx, pipe, lease, range).await,
        };
        match (&end, &mut self.wire) {
            (Ok(BodyEnd::Complete), _) => self.reused = true,
            // Over HTTP/2 (and HTTP/3) the rest of a trimmed body is its stream's alone: reset, and the
            // connection and the answers asked behind it stay.
            (Ok(BodyEnd::Trimmed), Wire::H2(h2)) => {
                h2.end_body();
                self.reused = true;
            }
            (Ok(BodyEnd::Trimmed), Wire::H3(h3)) => {
                h3.end_body();
                self.reused = true;
            }
            // A body that ended short by its stream's own end or reset: the rest is fetched
            // again, and the connection (still open) goes on with the answers behind it.
            (Ok(BodyEnd::Short { error, .. }), Wire::H2(h2))
                if stream_ended(error.as_ref()) && h2.is_open() =>
            {
                h2.end_body();
                self.reused = true;
            }
            (Ok(BodyEnd::Short { error, .. }), Wire::H3(h3))
                if stream_ended(error.as_ref()) && h3.is_open() =>
            {
                h3.end_body();
                self.reused = true;
            }
            _ => self.reusable = false,
        }
        end
    }

    /// How a lease's body that a read error `e` cut at `at` ended: stalled when its hedge
    /// ended it, short otherwise.
    fn cut_at(&self, at: u64, op: &'static str, e: std::io::Error) -> BodyEnd {
        if is_hedged(&e) {
            BodyEnd::Stalled {
                at,
                error: self.net_err(op, e),
            }
        } else {
            BodyEnd::Short {
                at,
                error: Some(self.net_err(op, e)),
            }
        }
    }

    /// [`Conn::copy_lease`] through pipeline buffers.
    async fn read_lease(
        &mut self,
        ctx: &FileDownload,
        pipe: &mut Pipeline,
        lease: LeaseId,
        range: Range<u64>,
    ) -> Result<BodyEnd, GetError> {
        let mut at = range.start;
        let mut buf = pipe.buffer(at).await?;
        let mut buf_at = at;
        let moving = |since| ctx.hedge_pays(since);
        loop {
            if ctx.is_aborted() {
                pipe.unused(buf);
                return Ok(BodyEnd::Aborted);
            }
            let limit = pipe.fill_limit(buf_at, buf.capacity());
            if buf.bytes().len() == limit {
                pipe.submit(buf, buf_at).await?;
                buf = pipe.buffer(at).await?;
                buf_at = at;
                continue;
            }
            let allowed = ctx.reserve(lease, at, (limit - buf.bytes().len()) as u64) as usize;
            if allowed == 0 {
                pipe.submit(buf, buf_at).await?;
                return Ok(ran_out(at, &range));
            }
            if !self.pending.is_empty() {
                let n = allowed.min(self.pending.len());
                buf.push_slice(&self.pending[..n]);
                self.pending.drain(..n);
                at += n as u64;
                self.body_bytes += n as u64;
                continue;
            }
            let filled = buf.bytes().len();
            let watch = hedged_watch(self.read_timeout, self.answer_wait, &moving);
            let BufResult(r, read) = self.read_into_watched(buf, filled, allowed, watch).await;
            buf = read;
            match r {
                Ok(0) => {
                    pipe.submit(buf, buf_at).await?;
                    return Ok(BodyEnd::Short { at, error: None });
                }
                Ok(n) => {
                    at += n as u64;
                    self.body_bytes += n as u64;
                }
                Err(e) => {
                    pipe.submit(buf, buf_at).await?;
                    return Ok(self.cut_at(at, "read body", e));
                }
            }
        }
    }

    /// [`Conn::copy_lease`] for the splice sink: bytes that came with the head go through a
    /// buffer, the rest socket -> pipe -> `file` in the kernel, a pipeful at a time.
    async fn splice_lease<S: std::os::fd::AsFd + 'static>(
        &mut self,
        ctx: &FileDownload,
        pipe: &mut Pipeline,
        file: SharedFd<std::fs::File>,
        socket: SharedFd<S>,
        lease: LeaseId,
        range: Range<u64>,
    ) -> Result<BodyEnd, GetError> {
        let mut at = range.start;
        while !self.pending.is_empty() {
            let mut buf = pipe.buffer(at).await?;
            let want = self.pending.len().min(buf.capacity());
            let n = ctx.reserve(lease, at, want as u64) as usize;
            buf.push_slice(&self.pending[..n]);
            self.pending.drain(..n);
            pipe.submit(buf, at).await?;
            at += n as u64;
            self.body_bytes += n as u64;
            if n < want {
                break;
            }
        }
        let io_err = |op, source| ctx.io_error(op, source);
        let moving = |since| ctx.hedge_pays(since);
        let spliced = match &mut self.splice {
            Some(p) => p,
            None => self
                .splice
                .insert(SplicePipe::new().map_err(|e| io_err("create a pipe", e))?),
        };
        loop {
            if ctx.is_aborted() {
                return Ok(BodyEnd::Aborted);
            }
            let most = self
                .rate
                .as_ref()
                .map_or(spliced.capacity(), |r| r.quantum(spliced.capacity()));
            let allowed = ctx.reserve(lease, at, most as u64) as usize;
            if allowed == 0 {
                return Ok(ran_out(at, &range));
            }
            let started = std::time::Instant::now();
            // Under the stall watchdog, like every buffered read.
            let fill = spliced.fill(socket.clone(), allowed).map(|r| (r, ()));
            let watch = hedged_watch(self.read_timeout, self.answer_wait, &moving);
            let (filled, ()) = crate::net::watched(fill, &socket, watch).await;
            let filled = filled.map_err(WatchError::into_io);
            self.read_time += started.elapsed();
            match filled {
                Ok(0) => return Ok(BodyEnd::Short { at, error: None }),
                Ok(n) => {
                    pace(self.rate.as_deref(), n).await;
                    if let Err(e) = spliced.drain(file.clone(), at).await {
                        // The pipe still holds bytes of this body: it is not usable again.
                        self.splice = None;
                        return Err(io_err("splice into", e));
                    }
                    pipe.spliced(at, n as u64);
                    at += n as u64;
                    self.body_bytes += n as u64;
                }
                Err(e) => return Ok(self.cut_at(at, "splice body", e)),
            }
        }
    }

    /// Copies a whole body from offset 0 (a server that ignores `Range`, or a body of unknown
    /// length). Returns the bytes copied, or `None` when the job was aborted.
    pub(super) async fn copy_stream(
        &mut self,
        ctx: &FileDownload,
        pipe: &mut Pipeline,
        framing: Framing,
    ) -> Result<Option<u64>, GetError> {
        let url = &ctx.target().display;
        let mut out = StreamOut {
            buf: Some(pipe.buffer(0).await?),
            buf_at: 0,
            at: 0,
            limit: ctx.size_hint().unwrap_or(u64::MAX),
        };
        let result = match framing {
            Framing::Length(n) => self.stream_raw(ctx, pipe, &mut out, Some(n)).await,
            Framing::UntilClose => {
                self.reusable = false;
                self.stream_raw(ctx, pipe, &mut out, None).await
            }
            Framing::Chunked => self.stream_chunked(ctx, pipe, &mut out).await,
        };
        let StreamOut {
            buf, buf_at, at, ..
        } = out;
        // The limit's error names the URL here, where it is known.
        let result = result.map_err(|e| match e {
            GetError::LargerThanListed { listed, stated, .. } => GetError::LargerThanListed {
                url: url.clone(),
                listed,
                stated,
            },
            e => e,
        });
        self.body_bytes += at;
        let buf = buf.expect("stream buffer");
        match result {
            Ok(true) => {
                pipe.submit(buf, buf_at).await?;
                if let Framing::Length(n) = framing
                    && at < n
                {
                    return Err(GetError::ShortBody {
                        url: url.clone(),
                        offset: 0,
                        expected: n,
                        received: at,
                    });
                }
                Ok(Some(at))
            }
            Ok(false) => {
                pipe.unused(buf);
                Ok(None)
            }
            Err(e) => {
                pipe.unused(buf);
                Err(e)
            }
        }
    }

    /// Reads raw body bytes until `len` (or EOF when `None`). `Ok(false)`: aborted.
    async fn stream_raw(
        &mut self,
        ctx: &FileDownload,
        pipe: &mut Pipeline,
        out: &mut StreamOut,
        len: Option<u64>,
    ) -> Result<bool, GetError> {
        let pending = std::mem::take(&mut self.pending);
        let take = len.map_or(pending.len(), |n| (n as usize).min(pending.len()));
        out.feed(pipe, &pending[..take]).await?;
        loop {
            if len.is_some_and(|n| out.at >= n) {
                self.reused = true;
                return Ok(true);
            }
            if ctx.is_aborted() {
                self.reusable = false;
                return Ok(false);
            }
            out.make_room(pipe).await?;
            let filled = out.buf().bytes().len();
            let mut want = pipe.fill_limit(out.buf_at, out.buf().capacity()) - filled;
            if let Some(n) = len {
                want = want.min((n - out.at) as usize);
            }
            let buf = out.buf.take().expect("stream buffer");
            let BufResult(r, buf) = self.read_into(buf, filled, want).await;
            out.buf = Some(buf);
            match r {
                Ok(0) => {
                    self.reusable = false;
                    return Ok(true);
                }
                Ok(n) => {
                    out.at += n as u64;
                    // Read into the buffer, not yet written: refused before it is.
                    if let Err(e) = out.check_limit(out.at) {
                        self.reusable = false;
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.reusable = false;
                    return Err(self.net_err("read body", e));
                }
            }
        }
    }

    async fn stream_chunked(
        &mut self,
        ctx: &FileDownload,
        pipe: &mut Pipeline,
        out: &mut StreamOut,
    ) -> Result<bool, GetError> {
        let url = &ctx.target().display;
        let protocol = |e: http1::ChunkError| GetError::Protocol {
            url: url.clone(),
            detail: format!("chunked body: {e}"),
        };
        let mut decoder = ChunkedDecoder::default();
        let mut decoded = Vec::with_capacity(HEAD_READ);
        loop {
            let used = decoder
                .decode(&self.pending, &mut decoded)
                .map_err(protocol)?;
            self.pending.drain(..used);
            out.feed(pipe, &decoded).await?;
            decoded.clear();
            if decoder.is_done() {
                self.reused = true;
                return Ok(true);
            }
            if ctx.is_aborted() {
                self.reusable = false;
                return Ok(false);
            }
            let n = self
                .read_more()
                .await
                .map_err(|e| self.net_err("read body", e))?;
            if n == 0 {
                self.reusable = false;
                return Err(GetError::Protocol {
                    url: url.clone(),
                    detail: format!(
                        "connection closed inside a chunked body after {} bytes",
                        out.at
                    ),
                });
            }
        }
    }
}

/// How a lease's body ends when the plan allows no more bytes at `at`: at the lease's end it
/// is complete; short of it a split moved the end, and the rest of this body belongs to another
/// connection (this one cannot be reused with it unread).
fn ran_out(at: u64, range: &Range<u64>) -> BodyEnd {
    if at == range.end {
        BodyEnd::Complete
    } else {
        BodyEnd::Trimmed
    }
}
