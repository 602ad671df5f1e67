//! One connection of a download: opened (Happy Eyeballs, proxy, TLS with ALPN, TCP Fast Open),
//! a request sent and its head read, a body read and thrown away. Over HTTP/1.1 ([`Wire::H1`])
//! bytes after the head that arrived with it are kept and used first; over HTTP/2
//! ([`Wire::H2`], `h2wire.rs`) and HTTP/3 ([`Wire::H3`], `h3wire.rs`, QUIC where `--http3`
//! asks and the origin answers, TCP otherwise) each request is a stream, its answers read in
//! the order asked.
//! Either way the callers see one sequence of answers (`body.rs` reads bodies into the
//! pipeline).
//!
//! Invariant: a connection is reused only while its last body was read to its end (over
//! HTTP/2, or given up with its stream reset) and the server did not say `Connection: close`
//! (or send GOAWAY).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use compio::BufResult;
use compio::buf::{IntoInner, IoBufMut};

use super::Target;
use super::h2wire::{self, H2Wire};
use super::h3wire::{self, H3Wire};
use crate::backend::splice::SplicePipe;
use crate::error::GetError;
use crate::net::rate::RateLimit;
use crate::net::{Hedge, Stream, Watch};
use crate::proto::file::hedge_after;
use crate::proto::http1::{self, ChunkedDecoder, Framing, ResponseHead};

/// Head-read granularity; heads are small, bodies go straight to pipeline buffers.
pub(super) const HEAD_READ: usize = 16 * 1024;

/// How the body of a lease ended.
pub(super) enum BodyEnd {
    /// Received up to the lease's end as asked.
    Complete,
    /// Received up to the lease's end after a split moved it down; the connection is spent.
    Trimmed,
    /// The body stopped at `at`, short of the lease's end (EOF or a read error).
    Short { at: u64, error: Option<GetError> },
    /// No byte came at `at` for a few round trips while other connections kept moving
    /// (`net/watch.rs`): the rest goes to another connection; this one is spent.
    Stalled { at: u64, error: GetError },
    /// Another connection failed and the job is stopping.
    Aborted,
}

/// What a connection speaks, as the TLS handshake's ALPN decided.
pub(super) enum Wire {
    /// HTTP/1.1 on the socket (plain, or TLS where the server did not pick `h2`).
    H1(Stream),
    /// HTTP/2: each request a stream of the connection.
    H2(Box<H2Wire>),
    /// HTTP/3 over QUIC (`--http3`): each request a stream of the connection.
    H3(Box<H3Wire>),
}

impl Wire {
    /// The plain TCP socket of an HTTP/1.1 connection without TLS (splice, Fast Open).
    pub(super) fn plain_tcp(&self) -> Option<&compio::net::TcpStream> {
        match self {
            Wire::H1(s) => s.plain_tcp(),
            Wire::H2(_) | Wire::H3(_) => None,
        }
    }
}

pub(super) struct Conn {
    pub(super) wire: Wire,
    pub(super) addr: SocketAddr,
    /// The TLS server name this connection verified, for `https://`.
    pub(super) tls_host: Option<String>,
    /// Through which proxy, if any.
    pub(super) route: crate::net::Route,
    /// The stall watchdog's limit on a read that brings nothing.
    pub(super) read_timeout: std::time::Duration,
    /// Bytes read past the last head, not yet consumed.
    pub(super) pending: Vec<u8>,
    /// True once a request has completed on this connection (a closed idle connection is then
    /// not the server's fault and is retried on a fresh one).
    pub(super) reused: bool,
    /// False once the body ran to EOF or the server said `Connection: close`.
    pub(super) reusable: bool,
    /// This connection's pipe for the splice sink, made on first use.
    pub(super) splice: Option<SplicePipe>,
    /// `--limit-rate`, shared by every connection of the engine.
    pub(super) rate: Option<Arc<RateLimit>>,
    /// Body bytes read on this connection (ranged and streamed), for the per-source counts.
    pub(super) body_bytes: u64,
    /// Time spent waiting for the socket (not for buffers, the disk or `--limit-rate`): what
    /// the server's throughput is measured by.
    pub(super) read_time: std::time::Duration,
    /// A TCP Fast Open connection that has not heard from the server yet, with the race cache
    /// and the key (the address list's first) to forget when it fails before an answer.
    pub(super) unproven: Option<(Arc<crate::net::Winners>, SocketAddr)>,
    /// The wait for the answer's head of the last request sent on this connection while idle
    /// (about a round trip), taken by [`request`](super::request::request) for its endpoint.
    pub(super) last_wait: Option<std::time::Duration>,
    /// The least wait for an answer its endpoint has seen (any connection of the job), and
    /// the rate of the last body read whole: whether pipelining pays here
    /// ([`crate::proto::file::pipelining_pays`]) and when a stalled flow is hedged.
    pub(super) answer_wait: Option<std::time::Duration>,
    pub(super) body_rate: Option<f64>,
    /// First requests of other files sent behind the answer being read, in the order sent
    /// (`lanes.rs`): the next answers on this connection are theirs, and no other request
    /// may go on it before them.
    pub(super) firsts_ahead: VecDeque<FirstAhead>,
    /// The file whose answers this connection reads now (set by each request): a head that
    /// does not come while the file's other connections move is hedged like a body
    /// ([`FileDownload::hedge_pays`](super::file::FileDownload::hedge_pays)).
    pub(super) hedging: Option<Arc<super::file::FileDownload>>,
}

/// A file's first request sent ahead on a connection: which file (its address, see
/// [`FirstAhead::key`]), from which source, and the range asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FirstAhead {
    pub(super) file: usize,
    pub(super) src: usize,
    pub(super) range: std::ops::Range<u64>,
}

impl FirstAhead {
    /// A file's identity for as long as it is alive: the address of its state.
    pub(super) fn key(file: &Arc<super::file::FileDownload>) -> usize {
        Arc::as_ptr(file) as usize
    }
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
        let started = std::time::Instant::now();
        if let Some(h3) = open_h3(target).await {
            let times = crate::net::OpenTimes {
                connect: started.elapsed(),
                tls: None,
                fast_open: false,
            };
            let addr = h3.addr;
            let wire = Wire::H3(Box::new(H3Wire::new(h3, Arc::clone(&target.dialer.quic))));
            return Ok((Conn::with_wire(wire, addr, target), times));
        }
        let alpn = if target.dialer.http2 {
            crate::net::tls::Alpn::H2OrHttp11
        } else {
            crate::net::tls::Alpn::Http11
        };
        let (stream, times) = crate::net::open(
            &target.dialer,
            addrs,
            &target.route,
            target.tls_host.as_deref(),
            alpn,
        )
        .await?;
        let addr = stream.tcp().peer_addr().unwrap_or(addrs[0]);
        // Over TLS, the handshake in `open` already heard from the server.
        let unproven = (times.fast_open && stream.plain_tcp().is_some())
            .then(|| (Arc::clone(&target.dialer.winners), addrs[0]));
        let windows = crate::net::h2::Windows::default();
        let wire = match crate::net::h2::start(stream, windows).await {
            Ok(crate::net::h2::Negotiated::Http1(stream)) => Wire::H1(stream),
            Ok(crate::net::h2::Negotiated::H2 { send, driver }) => {
                tracing::debug!(%addr, "HTTP/2 (the server chose h2)");
                Wire::H2(Box::new(H2Wire::new(send, driver, windows)))
            }
            Err(e) => return Err(h2wire::net_err(addr, "start HTTP/2", e)),
        };
        let mut conn = Conn::with_wire(wire, addr, target);
        conn.unproven = unproven;
        Ok((conn, times))
    }

    /// A new connection to `addr` of `target` over `wire`, nothing asked on it yet.
    fn with_wire(wire: Wire, addr: SocketAddr, target: &Target) -> Conn {
        Conn {
            wire,
            addr,
            tls_host: target.tls_host.clone(),
            route: target.route.clone(),
            read_timeout: target.dialer.timeouts.read,
            pending: Vec::with_capacity(HEAD_READ),
            reused: false,
            reusable: true,
            splice: None,
            rate: target.dialer.rate.clone(),
            body_bytes: 0,
            read_time: std::time::Duration::ZERO,
            last_wait: None,
            answer_wait: None,
            firsts_ahead: VecDeque::new(),
            hedging: None,
            body_rate: None,
            unproven: None,
        }
    }

    /// Settles a TCP Fast Open connection on its first exchange: `answered` when the server's
    /// first bytes came (logged with whether the request went in the SYN), otherwise the
    /// address is forgotten as the race's winner, so the next connection races again.
    pub(super) fn settle_fast_open(&mut self, answered: bool) {
        let Some((winners, first)) = self.unproven.take() else {
            return;
        };
        if !answered {
            winners.forget(first);
            tracing::debug!(addr = %self.addr, "TCP Fast Open connection failed before any answer; the next connection races again");
            return;
        }
        let in_syn = self
            .wire
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
            && match &self.wire {
                Wire::H1(_) => true,
                Wire::H2(h2) => h2.is_open(),
                Wire::H3(h3) => h3.is_open(),
            }
    }

    /// Whether this connection speaks HTTP/2 or HTTP/3: its requests are streams, so sending
    /// one ahead of an answer is always safe (no HTTP/1.1 pipelining caveats).
    pub(super) fn is_multiplexed(&self) -> bool {
        matches!(self.wire, Wire::H2(_) | Wire::H3(_))
    }

    /// Counts an answer read on this connection in `file`'s report, by protocol
    /// ([`Report::http2`](crate::Report::http2), [`Report::http3`](crate::Report::http3)).
    pub(super) fn count_answer(&self, file: &super::file::FileDownload) {
        use std::sync::atomic::Ordering::Relaxed;
        match self.wire {
            Wire::H1(_) => {}
            Wire::H2(_) => _ = file.http2.fetch_add(1, Relaxed),
            Wire::H3(_) => _ = file.http3.fetch_add(1, Relaxed),
        }
    }

    /// An answer to a request this connection sent ahead did not come, and the server `did`
    /// what one that takes no pipelined requests does: over HTTP/1.1 its source's endpoint gets
    /// one request per answer from then on (said once, with what `did` says). Over HTTP/2 the
    /// and HTTP/3 the request was a stream refused or cut off by GOAWAY, no fault of sending it
    /// ahead.
    pub(super) fn stop_pipelining(&self, file: &super::file::FileDownload, src: usize, did: &str) {
        let source = &file.sources[src];
        if !self.is_multiplexed() && file.endpoints.stop_pipelining(source.endpoint) {
            tracing::info!("{} {did}", source.label());
        }
    }

    /// True when this connection goes to `target` (one of its addresses, and over TLS with its
    /// host name when it is `https://`) and can take another request.
    pub(super) fn serves(&self, target: &Target) -> bool {
        self.is_reusable()
            && target.addrs.contains(&self.addr)
            && self.tls_host == target.tls_host
            && self.route == target.route
    }

    pub(super) fn net_err(&self, op: &'static str, source: std::io::Error) -> GetError {
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
        if !self.firsts_ahead.is_empty() {
            // The next answers here are other files': this request goes on a fresh connection.
            *self = Conn::open(target).await?;
        }
        if self.reused {
            match self.try_request(target, range.clone()).await {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {
                    tracing::debug!(addr = %self.addr, "idle connection was closed; reconnecting");
                    *self = Conn::open(target).await?;
                }
                Err(e) => return Err(e),
            }
        }
        match self.try_request(target, range).await? {
            Some(head) => Ok(head),
            // A stream a GOAWAY or the connection's end cut before its answer: not processed,
            // worth asking again (RFC 9113 8.7).
            None if self.is_multiplexed() => Err(self.net_err(
                "read response head",
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the connection ended (GOAWAY or closed) before the answer",
                ),
            )),
            None => Err(GetError::Protocol {
                url: target.display.clone(),
                detail: "the server closed the connection without a response".into(),
            }),
        }
    }

    /// `Ok(None)`: the connection closed before any byte of a response.
    pub(super) async fn try_request(
        &mut self,
        target: &Target,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<ResponseHead>, GetError> {
        self.pending.clear();
        let sent = std::time::Instant::now();
        if let Err(e) = self.send(target, range).await {
            self.settle_fast_open(false);
            if self.reused && is_closed(&e) {
                return Ok(None);
            }
            return Err(self.net_err("send request", e));
        }
        let head = self.read_head(target).await;
        if let Ok(Some(_)) = head {
            self.last_wait = Some(sent.elapsed());
        }
        head
    }

    /// Sends a GET for `range` behind the answer being read (HTTP/1.1 pipelining): what was
    /// read of that answer stays for its body, and [`Conn::read_head`] reads this one's head
    /// once that body ended.
    pub(super) async fn pipeline(
        &mut self,
        target: &Target,
        range: std::ops::Range<u64>,
    ) -> Result<(), GetError> {
        self.send(target, Some(range))
            .await
            .map_err(|e| self.net_err("send request", e))
    }

    /// Sends a GET of `range` of `target`: its bytes on an HTTP/1.1 connection, a new stream on
    /// an HTTP/2 one. A URL HTTP/2 cannot send reads as an I/O error of kind `InvalidInput`.
    async fn send(
        &mut self,
        target: &Target,
        range: Option<std::ops::Range<u64>>,
    ) -> std::io::Result<()> {
        let range = target.wire_range(range);
        match &mut self.wire {
            Wire::H1(stream) => {
                let BufResult(sent, _) = stream.write_all(request_bytes(target, range)).await;
                sent
            }
            Wire::H2(h2) => h2.send(target, range).map_err(|e| match e {
                h2wire::SendError::Request(why) => {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, why)
                }
                h2wire::SendError::Full => std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "the HTTP/2 connection's window is taken by the answers asked ahead",
                ),
                h2wire::SendError::H2(e) => crate::net::h2::to_io(e),
            }),
            Wire::H3(h3) => h3.send(target, range).map_err(|e| match e {
                h3wire::SendError::Request(why) => {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, why)
                }
                h3wire::SendError::Full => std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "the HTTP/3 connection's window is taken by the answers asked ahead",
                ),
                h3wire::SendError::Closed => std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the HTTP/3 connection is closed",
                ),
            }),
        }
    }

    /// Reads the head of the next answer on this connection. `Ok(None)`: the connection
    /// closed before any byte of it (an idle connection the server had closed, or one it
    /// closed without answering a pipelined request).
    pub(super) async fn read_head(
        &mut self,
        target: &Target,
    ) -> Result<Option<ResponseHead>, GetError> {
        let file = self.hedging.clone();
        let moving = |since| file.as_ref().is_some_and(|f| f.hedge_pays(since));
        let watch = hedged_watch(self.read_timeout, self.answer_wait, &moving);
        let head = match &mut self.wire {
            Wire::H2(h2) => Some(h2.read_head(&target.display, watch).await),
            Wire::H3(h3) => Some(h3.read_head(&target.display, watch).await),
            Wire::H1(_) => None,
        };
        if let Some(head) = head {
            return head
                .map_err(|e| self.net_err("read response head", e))?
                .map(|h| target.answer_for_file(h))
                .transpose();
        }
        loop {
            match http1::parse_head(&self.pending) {
                Ok(Some((head, len))) => {
                    self.pending.drain(..len);
                    if !head.keep_alive() {
                        self.reusable = false;
                    }
                    return match target.answer_for_file(head) {
                        Ok(head) => Ok(Some(head)),
                        Err(e) => {
                            // Its body is not read: the connection cannot carry another answer.
                            self.reusable = false;
                            Err(e)
                        }
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(GetError::Protocol {
                        url: target.display.clone(),
                        detail: e.to_string(),
                    });
                }
            }
            let n = match self.read_more_watched(watch).await {
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
    pub(super) async fn read_into<B: IoBufMut>(
        &mut self,
        buf: B,
        from: usize,
        want: usize,
    ) -> BufResult<usize, B> {
        let watch = Watch::limit(self.read_timeout);
        self.read_into_watched(buf, from, want, watch).await
    }

    /// [`Conn::read_into`] under `watch` (a lease's read, which may be hedged).
    pub(super) async fn read_into_watched<B: IoBufMut>(
        &mut self,
        buf: B,
        from: usize,
        want: usize,
        watch: Watch<'_>,
    ) -> BufResult<usize, B> {
        let want = self.rate.as_ref().map_or(want, |r| r.quantum(want));
        let started = std::time::Instant::now();
        let BufResult(r, buf) = match &mut self.wire {
            Wire::H1(stream) => {
                let BufResult(r, slice) = stream
                    .read_watched(buf.slice(from..from + want), watch)
                    .await;
                BufResult(r, slice.into_inner())
            }
            Wire::H2(h2) => super::streams::read_body(&mut **h2, buf, from, want, watch).await,
            Wire::H3(h3) => super::streams::read_body(&mut **h3, buf, from, want, watch).await,
        };
        self.read_time += started.elapsed();
        if let Ok(n) = r {
            pace(self.rate.as_deref(), n).await;
        }
        BufResult(r, buf)
    }

    /// Appends up to [`HEAD_READ`] bytes from the socket to `pending`.
    pub(super) async fn read_more(&mut self) -> std::io::Result<usize> {
        self.read_more_watched(Watch::limit(self.read_timeout))
            .await
    }

    /// [`Conn::read_more`] under `watch`.
    async fn read_more_watched(&mut self, watch: Watch<'_>) -> std::io::Result<usize> {
        let mut buf = std::mem::take(&mut self.pending);
        let len = buf.len();
        buf.reserve(HEAD_READ);
        let BufResult(r, buf) = self.read_into_watched(buf, len, HEAD_READ, watch).await;
        self.pending = buf;
        if self.unproven.is_some() {
            self.settle_fast_open(matches!(r, Ok(n) if n > 0));
        }
        r
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
    pub(super) async fn discard_raw(&mut self, limit: u64) -> Result<u64, GetError> {
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
    pub(super) async fn discard_chunked(
        &mut self,
        target: &Target,
        limit: u64,
    ) -> Result<u64, GetError> {
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

/// A QUIC connection with HTTP/3 to `target` where one is asked for (`--http3`) and may be
/// tried: an `https://` origin reached directly whose handshake has not failed in this job.
/// `None` sends the connection over TCP; why is recorded once per origin
/// ([`crate::net::quic::QuicState::fall_back`]).
async fn open_h3(target: &Target) -> Option<crate::net::quic::H3Conn> {
    use crate::net::quic::{self, Choice, Facts};
    let dialer = &target.dialer;
    if !dialer.http3 {
        return None;
    }
    let host = target.tls_host.as_deref()?;
    let origin = quic::origin(target)?;
    let failed_in_job = dialer.quic.failed(&origin).is_some();
    let remembered = if failed_in_job {
        None
    } else {
        dialer.quic.remembered(&origin)
    };
    let choice = quic::choose(Facts {
        asked: dialer.http3,
        safe_mode: dialer.safe_mode,
        https_port: target.url.port_or_known_default(),
        direct: target.route == crate::net::Route::Direct,
        failed_in_job,
        remembered: remembered.as_ref(),
        now: quic::unix_now(),
    });
    let port = match choice {
        Choice::Tcp => return None,
        Choice::TcpBecause(why) => {
            dialer.quic.fall_back(&origin, None, why);
            return None;
        }
        Choice::Quic { port } => port,
    };
    let mut addrs = target.addrs.clone();
    addrs.iter_mut().for_each(|a| a.set_port(port));
    match quic::connect(&dialer.tls, &addrs, host, quic::HANDSHAKE_DEADLINE).await {
        Ok(conn) => Some(conn),
        Err(why) => {
            dialer.quic.fall_back(&origin, Some(port), why);
            None
        }
    }
}

/// The watch on a lease's read (its answer's head or body): the stall watchdog's `limit`, and
/// the hedge ([`hedge_after`] the endpoint's round trip `wait`) that ends it sooner when
/// `moving` says the file's other connections kept moving.
pub(super) fn hedged_watch<'a>(
    limit: std::time::Duration,
    wait: Option<std::time::Duration>,
    moving: &'a dyn Fn(std::time::Instant) -> bool,
) -> Watch<'a> {
    Watch {
        limit,
        hedge: Some(Hedge {
            after: hedge_after(wait, limit),
            moving,
        }),
    }
}

/// Pays `rate` for `n` bytes read, waiting while it is in debt.
pub(super) async fn pace(rate: Option<&RateLimit>, n: usize) {
    if let Some(rate) = rate {
        let wait = rate.spend(n as u64);
        if !wait.is_zero() {
            compio::time::sleep(wait).await;
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

/// The bytes of a GET of `target` (for `range`, when given).
fn request_bytes(target: &Target, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    http1::get_request(
        &target.request_target,
        &target.host_header,
        range,
        (
            target.authorization.as_ref().map(|a| a.expose()),
            target.proxy_authorization.as_ref().map(|a| a.expose()),
        ),
        target.if_range.as_deref(),
    )
}
