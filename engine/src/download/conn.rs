//! One HTTP/1.1 connection of a download: send a request, read its head, read its body into the
//! connection's write pipeline. Bytes after the head that arrived with it are kept and used first.
//! A ranged body is read straight into aligned pipeline buffers (no staging copy); the plan is
//! asked before every read how far the lease still reaches.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use compio::BufResult;
use compio::buf::{IntoInner, IoBufMut};
use compio::driver::{SharedFd, ToSharedFd};
use futures_util::FutureExt;

use super::pipe::Pipeline;
use super::{FileDownload, Target};
use crate::backend::buf::AlignedBuf;
use crate::backend::splice::SplicePipe;
use crate::error::GetError;
use crate::net::Stream;
use crate::net::rate::RateLimit;
use crate::proto::http1::{self, ChunkedDecoder, Framing, ResponseHead};
use crate::proto::plan::LeaseId;

/// Head-read granularity; heads are small, bodies go straight to pipeline buffers.
const HEAD_READ: usize = 16 * 1024;

/// How the body of a lease ended.
pub(super) enum BodyEnd {
    /// Received up to the lease's end as asked.
    Complete,
    /// Received up to the lease's end after a split moved it down; the connection is spent.
    Trimmed,
    /// The body stopped at `at`, short of the lease's end (EOF or a read error).
    Short { at: u64, error: Option<GetError> },
    /// Another connection failed and the job is stopping.
    Aborted,
}

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

pub(super) struct Conn {
    stream: Stream,
    addr: SocketAddr,
    /// The TLS server name this connection verified, for `https://`.
    tls_host: Option<String>,
    /// Through which proxy, if any.
    route: crate::net::Route,
    /// The stall watchdog's limit on a read that brings nothing.
    read_timeout: std::time::Duration,
    /// Bytes read past the last head, not yet consumed.
    pending: Vec<u8>,
    /// True once a request has completed on this connection (a closed idle connection is then
    /// not the server's fault and is retried on a fresh one).
    reused: bool,
    /// False once the body ran to EOF or the server said `Connection: close`.
    reusable: bool,
    /// This connection's pipe for the splice sink, made on first use.
    splice: Option<SplicePipe>,
    /// `--limit-rate`, shared by every connection of the engine.
    rate: Option<Arc<RateLimit>>,
    /// Body bytes read on this connection (ranged and streamed), for the per-source counts.
    body_bytes: u64,
    /// Time spent waiting for the socket (not for buffers, the disk or `--limit-rate`): what
    /// the server's throughput is measured by.
    read_time: std::time::Duration,
    /// A TCP Fast Open connection that has not heard from the server yet, with the race cache
    /// and the key (the address list's first) to forget when it fails before an answer.
    unproven: Option<(Arc<crate::net::Winners>, SocketAddr)>,
}

impl Conn {
    pub(super) async fn open(target: &Target) -> Result<Conn, GetError> {
        Conn::open_timed(target).await.map(|(conn, _)| conn)
    }

    /// [`Conn::open`], saying how long connecting and the TLS handshake took.
    pub(super) async fn open_timed(
        target: &Target,
    ) -> Result<(Conn, crate::net::OpenTimes), GetError> {
        let addrs = &target.addrs;
        let timeouts = target.dialer.timeouts;
        let (stream, times) = crate::net::open(
            &target.dialer,
            addrs,
            &target.route,
            target.tls_host.as_deref(),
        )
        .await?;
        let addr = stream.tcp().peer_addr().unwrap_or(addrs[0]);
        // Over TLS, the handshake in `open` already heard from the server.
        let unproven = (times.fast_open && stream.plain_tcp().is_some())
            .then(|| (Arc::clone(&target.dialer.winners), addrs[0]));
        let conn = Conn {
            stream,
            addr,
            tls_host: target.tls_host.clone(),
            route: target.route.clone(),
            read_timeout: timeouts.read,
            pending: Vec::with_capacity(HEAD_READ),
            reused: false,
            reusable: true,
            splice: None,
            rate: target.dialer.rate.clone(),
            body_bytes: 0,
            read_time: std::time::Duration::ZERO,
            unproven,
        };
        Ok((conn, times))
    }

    /// Settles a TCP Fast Open connection on its first exchange: `answered` when the server's
    /// first bytes came (logged with whether the request went in the SYN), otherwise the
    /// address is forgotten as the race's winner, so the next connection races again.
    fn settle_fast_open(&mut self, answered: bool) {
        let Some((winners, first)) = self.unproven.take() else {
            return;
        };
        if !answered {
            winners.forget(first);
            tracing::debug!(addr = %self.addr, "TCP Fast Open connection failed before any answer; the next connection races again");
            return;
        }
        let in_syn = self
            .stream
            .plain_tcp()
            .is_some_and(|tcp| crate::backend::sockopt::syn_data_acked(tcp).unwrap_or(false));
        tracing::debug!(
            addr = %self.addr,
            "TCP Fast Open: {}",
            if in_syn {
                "the request went in the SYN"
            } else {
                "full handshake (no cookie for this server yet, or it took no SYN data)"
            }
        );
    }

    /// The address the connection went to.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Body bytes read on this connection so far.
    pub(super) fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Time spent waiting for the socket so far.
    pub(super) fn read_time(&self) -> std::time::Duration {
        self.read_time
    }

    pub(super) fn is_reusable(&self) -> bool {
        self.reusable
    }

    /// True when this connection goes to `target` (one of its addresses, and over TLS with its
    /// host name when it is `https://`) and can take another request.
    pub(super) fn serves(&self, target: &Target) -> bool {
        self.reusable
            && target.addrs.contains(&self.addr)
            && self.tls_host == target.tls_host
            && self.route == target.route
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
    pub(super) async fn request(
        &mut self,
        target: &Target,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<ResponseHead, GetError> {
        let req = http1::get_request(
            &target.request_target,
            &target.host_header,
            range,
            target.authorization.as_ref().map(|a| a.expose()),
            target.proxy_authorization.as_ref().map(|a| a.expose()),
        );
        if self.reused {
            match self.try_request(target, req.clone()).await {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {
                    tracing::debug!(addr = %self.addr, "idle connection was closed; reconnecting");
                    *self = Conn::open(target).await?;
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
            self.settle_fast_open(false);
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

    /// Reads up to `want` bytes into `buf` at `from` (its initialised length), under the stall
    /// watchdog; with `--limit-rate`, at most a quantum, then waits out the bucket's debt.
    async fn read_into<B: IoBufMut>(
        &mut self,
        buf: B,
        from: usize,
        want: usize,
    ) -> BufResult<usize, B> {
        let want = self.rate.as_ref().map_or(want, |r| r.quantum(want));
        let started = std::time::Instant::now();
        let BufResult(r, slice) = self
            .stream
            .read_watched(buf.slice(from..from + want), self.read_timeout)
            .await;
        self.read_time += started.elapsed();
        if let Ok(n) = r {
            pace(self.rate.as_deref(), n).await;
        }
        BufResult(r, slice.into_inner())
    }

    /// Appends up to [`HEAD_READ`] bytes from the socket to `pending`.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        let mut buf = std::mem::take(&mut self.pending);
        let len = buf.len();
        buf.reserve(HEAD_READ);
        let BufResult(r, buf) = self.read_into(buf, len, HEAD_READ).await;
        self.pending = buf;
        if self.unproven.is_some() {
            self.settle_fast_open(matches!(r, Ok(n) if n > 0));
        }
        r
    }

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
            .zip(self.stream.plain_tcp().map(ToSharedFd::to_shared_fd));
        let end = match splice {
            Some((file, socket)) => {
                self.splice_lease(ctx, pipe, file, socket, lease, range)
                    .await
            }
            None => self.read_lease(ctx, pipe, lease, range).await,
        };
        match end {
            Ok(BodyEnd::Complete) => self.reused = true,
            _ => self.reusable = false,
        }
        end
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
            let BufResult(r, read) = self.read_into(buf, filled, allowed).await;
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
                    return Ok(BodyEnd::Short {
                        at,
                        error: Some(self.net_err("read body", e)),
                    });
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
            let (filled, ()) = crate::net::watched(fill, &socket, self.read_timeout).await;
            let filled = filled.map_err(|e| e.into_io(self.read_timeout));
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
                Err(e) => {
                    return Ok(BodyEnd::Short {
                        at,
                        error: Some(self.net_err("splice body", e)),
                    });
                }
            }
        }
    }

    /// Reads and throws away up to `most` bytes of the body `framing` describes (what
    /// `ferry ping` measures throughput with). Returns the body bytes read; the connection is
    /// reusable only when a body of known length was read whole.
    pub(super) async fn read_and_discard(
        &mut self,
        target: &Target,
        framing: Framing,
        most: u64,
    ) -> Result<u64, GetError> {
        let got = match framing {
            Framing::Chunked => self.discard_chunked(target, most).await?,
            Framing::Length(n) => self.discard_raw(n.min(most)).await?,
            Framing::UntilClose => self.discard_raw(most).await?,
        };
        if framing != Framing::Length(got) {
            self.reusable = false;
        }
        self.body_bytes += got;
        Ok(got)
    }

    /// Reads up to `limit` body bytes straight off the connection; fewer when it closes.
    async fn discard_raw(&mut self, limit: u64) -> Result<u64, GetError> {
        let mut got = self.pending.len().min(limit as usize);
        self.pending.drain(..got);
        let mut buf = Vec::with_capacity(256 << 10);
        while (got as u64) < limit {
            let want = buf.capacity().min(limit as usize - got);
            let BufResult(r, b) = self.read_into(buf, 0, want).await;
            match r.map_err(|e| self.net_err("read body", e))? {
                0 => break,
                n => got += n,
            }
            buf = b;
            buf.clear();
        }
        Ok(got as u64)
    }

    /// Decodes a chunked body until its end or `limit` bytes of it.
    async fn discard_chunked(&mut self, target: &Target, limit: u64) -> Result<u64, GetError> {
        let mut decoder = ChunkedDecoder::default();
        let mut decoded = Vec::new();
        let mut got = 0u64;
        loop {
            let used =
                decoder
                    .decode(&self.pending, &mut decoded)
                    .map_err(|e| GetError::Protocol {
                        url: target.display.clone(),
                        detail: format!("chunked body: {e}"),
                    })?;
            self.pending.drain(..used);
            got += std::mem::take(&mut decoded).len() as u64;
            if got >= limit || decoder.is_done() {
                return Ok(got.min(limit));
            }
            if self
                .read_more()
                .await
                .map_err(|e| self.net_err("read body", e))?
                == 0
            {
                return Ok(got);
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

    /// Reads and discards a small body (a redirect's), or gives up on the connection.
    pub(super) async fn discard_body(&mut self, framing: Framing) {
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

/// Pays `rate` for `n` bytes read, waiting while it is in debt.
async fn pace(rate: Option<&RateLimit>, n: usize) {
    if let Some(rate) = rate {
        let wait = rate.spend(n as u64);
        if !wait.is_zero() {
            compio::time::sleep(wait).await;
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

fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
    )
}
