//! The `get` job: one URL to one file, over several keep-alive connections spread across the
//! workers.
//!
//! Order of events: the first connection asks for the first range (`bytes=0-…`); the answer tells
//! the size and whether ranges work. With a 206, the file is `fallocate`d, a [`Plan`] is made with
//! that first range as its first lease, and up to `connections` connections (spread over the
//! workers) take leases from it until none are left. With a 200 (the server ignores `Range`) or no
//! length, the body is copied as one stream. Every answer is checked against the range asked for
//! (`Content-Range`, length); a body that ends short gives the rest of its lease back to the plan
//! and is fetched again on a fresh connection, a bounded number of times.
//!
//! Bytes go socket -> aligned pipeline buffer -> [`FileSink`] (O_DIRECT where it works), several
//! writes in flight per connection. With a sha256 to check, each completed write feeds the
//! [`Verifier`] in file order, and a read-back task hashes what had to leave memory first. A
//! mismatch fetches the whole file once more, then fails. At the end the file is fsynced, renamed
//! from `PATH.incomplete` to `PATH` and the directory fsynced; on any failure the partial file is
//! removed and nothing appears under the final name.
//!
//! Not here (later issues): resume across runs, several files per job, TLS.

mod conn;
mod pipe;

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use compio::fs::{File, OpenOptions};
use url::Url;

use self::conn::{BodyEnd, Conn};
use self::pipe::Pipeline;
use crate::backend::Backend;
use crate::backend::buf::AlignedBuf;
use crate::backend::sink::{FileSink, SinkKind};
use crate::error::GetError;
use crate::http1::{ContentRange, Framing, ResponseHead, parse_content_range};
use crate::plan::{FIRST_CHUNK, LeaseId, Plan};
use crate::runtime::Task;
use crate::verify::{HashStats, Sha256Hex, Verifier};
use crate::{HashReport, Report, UNKNOWN_TOTAL};

/// Bytes read back per read when the verifier needs bytes that left memory.
const READ_BACK: u64 = 8 << 20;
/// Bytes of written buffers the verifier may keep until the hashed prefix reaches them. Leases
/// are at most 8 MiB and handed out in file order, so 8 connections spread over about 64 MiB;
/// when they spread further, connections wait for the hash (see `get/pipe.rs`).
pub(crate) const HASH_WINDOW: u64 = 64 << 20;
/// Fetches of the whole file when its sha256 does not match: the first, and one more.
const MAX_FETCHES: u32 = 2;

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// Where the bytes come from: a parsed URL and what the requests need.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub url: Url,
    pub display: String,
    pub addrs: Vec<SocketAddr>,
    pub host_header: String,
    pub request_target: String,
}

impl Target {
    /// Checks the URL and resolves its host.
    pub fn new(url: &str) -> Result<Target, GetError> {
        let parsed = Url::parse(url).map_err(|e| GetError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        Target::from_url(parsed)
    }

    fn from_url(url: Url) -> Result<Target, GetError> {
        let display = url.to_string();
        if url.scheme() != "http" {
            return Err(GetError::UnsupportedScheme {
                scheme: url.scheme().to_owned(),
                url: display,
            });
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| GetError::InvalidUrl {
                url: display.clone(),
                reason: "no host".into(),
            })?
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = crate::net::resolve(bare_host, port)?;
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let mut request_target = url.path().to_owned();
        if let Some(q) = url.query() {
            request_target.push('?');
            request_target.push_str(q);
        }
        Ok(Target {
            url,
            display,
            addrs,
            host_header,
            request_target,
        })
    }
}

/// Progress counters shared with the [`Job`](crate::Job) handle.
#[derive(Debug)]
pub(crate) struct Counters {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            done: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN_TOTAL),
        }
    }
}

/// How a job writes: the sink chosen for its file and why.
#[derive(Debug, Clone)]
pub(crate) struct SinkChoice {
    pub kind: SinkKind,
    pub reason: String,
    /// O_DIRECT offset alignment of the filesystem (used when `kind` is direct).
    pub align: u64,
}

/// What the job's tasks share.
pub(crate) struct Ctx {
    /// The URL as asked for.
    origin: Target,
    /// The URL after redirects, set once before any range is fetched.
    redirected: OnceLock<Target>,
    pub output: PathBuf,
    pub incomplete: PathBuf,
    pub counters: Arc<Counters>,
    pub settings: JobSettings,
    pub started: Instant,
    /// The file as created by [`Engine::get`](crate::Engine::get); used for `fallocate`.
    pub created: std::fs::File,
    plan: Mutex<Option<Plan>>,
    verify: Mutex<Option<(Arc<Verifier>, flume::Sender<()>)>>,
    aborted: AtomicBool,
    first_error: Mutex<Option<GetError>>,
    used_connections: AtomicU64,
    retries: AtomicU64,
    splits: AtomicU64,
}

/// How a job runs: what [`Ctx::new`] needs besides the target and the files.
pub(crate) struct JobSettings {
    pub connections: usize,
    pub chunk: Option<u64>,
    /// Size of one write buffer.
    pub staging: usize,
    /// Writes in flight per connection.
    pub depth: usize,
    pub backend: Backend,
    pub backend_reason: String,
    pub sink: SinkChoice,
    pub sha256: Option<Sha256Hex>,
    pub threads: usize,
}

impl Ctx {
    /// Where requests go: the URL after redirects.
    pub fn target(&self) -> &Target {
        self.redirected.get().unwrap_or(&self.origin)
    }

    pub fn new(
        target: Target,
        (output, incomplete, created): (PathBuf, PathBuf, std::fs::File),
        counters: Arc<Counters>,
        settings: JobSettings,
        started: Instant,
    ) -> Ctx {
        Ctx {
            origin: target,
            redirected: OnceLock::new(),
            output,
            incomplete,
            created,
            counters,
            settings: JobSettings {
                connections: settings.connections.max(1),
                staging: settings.staging.max(crate::backend::buf::BUF_ALIGN),
                depth: settings.depth.max(1),
                ..settings
            },
            started,
            plan: Mutex::new(None),
            verify: Mutex::new(None),
            aborted: AtomicBool::new(false),
            first_error: Mutex::new(None),
            used_connections: AtomicU64::new(1),
            retries: AtomicU64::new(0),
            splits: AtomicU64::new(0),
        }
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }

    /// Records the first failure and tells every connection to stop.
    fn fail(&self, err: GetError) {
        let mut slot = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(err);
        }
        self.aborted.store(true, Ordering::Relaxed);
    }

    /// The first recorded failure, if any.
    fn take_error(&self) -> Option<GetError> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn with_plan<T>(&self, f: impl FnOnce(&mut Plan) -> T) -> Option<T> {
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        plan.as_mut().map(f)
    }

    fn take_lease(&self) -> Option<(LeaseId, Range<u64>)> {
        if self.is_aborted() {
            return None;
        }
        self.with_plan(|p| p.take().map(|(id, r, _)| (id, r)))
            .flatten()
    }

    /// How many of `want` bytes the holder of `lease`, now at `at`, may still read.
    pub fn reserve(&self, lease: LeaseId, at: u64, want: u64) -> u64 {
        self.with_plan(|p| p.reserve(lease, at, want)).unwrap_or(0)
    }

    /// The verifier of the current fetch and the waker of its read-back task (when hashing).
    pub fn verifier(&self) -> (Option<Arc<Verifier>>, Option<flume::Sender<()>>) {
        match &*self.verify.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((v, wake)) => (Some(Arc::clone(v)), Some(wake.clone())),
            None => (None, None),
        }
    }

    async fn open_file(&self) -> Result<File, GetError> {
        OpenOptions::new()
            .write(true)
            .open(&self.incomplete)
            .await
            .map_err(|source| GetError::Io {
                op: "open",
                path: self.incomplete.clone(),
                source,
            })
    }

    /// This worker's descriptors of the file, for the job's sink.
    async fn open_sink(&self) -> Result<FileSink, GetError> {
        FileSink::open(
            &self.incomplete,
            self.settings.sink.kind,
            self.settings.sink.align,
        )
        .await
        .map_err(|source| GetError::Io {
            op: if self.settings.sink.kind == SinkKind::Direct {
                "open (O_DIRECT)"
            } else {
                "open"
            },
            path: self.incomplete.clone(),
            source,
        })
    }

    /// Clears what one fetch of the file leaves behind, before the next.
    fn reset_fetch(&self) -> Option<(Arc<Verifier>, flume::Receiver<()>)> {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.counters.done.store(0, Ordering::Relaxed);
        self.aborted.store(false, Ordering::Relaxed);
        self.settings.sha256.map(|_| {
            let v = Arc::new(Verifier::new(HASH_WINDOW));
            let (tx, rx) = flume::bounded(1);
            *self.verify.lock().unwrap_or_else(|p| p.into_inner()) = Some((Arc::clone(&v), tx));
            (v, rx)
        })
    }
}

/// The sender of a connection task's verdict back to the coordinator.
type Done = flume::Sender<()>;

/// Runs the whole job on the current worker; other connections go to `spawn`.
pub(crate) async fn run(ctx: Arc<Ctx>, spawn: impl Fn(Task) -> bool) -> Result<Report, GetError> {
    let result = fetch_until_verified(&ctx, &spawn).await;
    let result = match result {
        Ok((fetches, hash)) => finish(&ctx, fetches, hash).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&ctx.incomplete);
    }
    result
}

/// Fetches the file, and once more when its sha256 does not match.
async fn fetch_until_verified(
    ctx: &Arc<Ctx>,
    spawn: &impl Fn(Task) -> bool,
) -> Result<(u32, Option<(Sha256Hex, HashStats)>), GetError> {
    let mut fetch = 0;
    loop {
        fetch += 1;
        let hashing = ctx.reset_fetch();
        let reader = hashing.as_ref().map(|(v, rx)| {
            let (ctx, v, rx) = (Arc::clone(ctx), Arc::clone(v), rx.clone());
            compio::runtime::spawn(async move { read_back_loop(&ctx, &v, rx).await })
        });
        if let Err(e) = coordinate(ctx, spawn).await {
            ctx.fail(e);
        }
        // Every connection is done: dropping the last waker lets the read-back task finish.
        *ctx.verify.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(reader) = reader {
            match reader.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => ctx.fail(e),
                Err(_) => ctx.fail(GetError::EngineStopped),
            }
        }
        if let Some(e) = ctx.take_error() {
            return Err(e);
        }
        let Some((verifier, _)) = hashing else {
            return Ok((fetch, None));
        };
        let total = ctx.counters.total.load(Ordering::Relaxed);
        if verifier.prefix() != total {
            return Err(GetError::Io {
                op: "verify",
                path: ctx.incomplete.clone(),
                source: std::io::Error::other(format!(
                    "hashed {} of {total} bytes",
                    verifier.prefix()
                )),
            });
        }
        let (got, stats) = verifier.finish();
        let expected = ctx.settings.sha256.expect("hashing only with a digest");
        if got == expected {
            return Ok((fetch, Some((got, stats))));
        }
        if fetch >= MAX_FETCHES {
            return Err(GetError::ChecksumMismatch {
                url: ctx.target().display.clone(),
                expected: expected.to_string(),
                got: got.to_string(),
                attempts: fetch,
            });
        }
        tracing::warn!(
            url = %ctx.target().display,
            %expected,
            %got,
            "sha256 mismatch; fetching the file again"
        );
        ctx.created.set_len(0).map_err(|source| GetError::Io {
            op: "truncate",
            path: ctx.incomplete.clone(),
            source,
        })?;
    }
}

/// Hashes, in file order, the written bytes that left memory before the prefix reached them.
async fn read_back_loop(
    ctx: &Ctx,
    verifier: &Verifier,
    wake: flume::Receiver<()>,
) -> Result<(), GetError> {
    let sink = ctx.open_sink().await?;
    let align = sink.align().max(1);
    let mut buf = AlignedBuf::new((READ_BACK + 2 * align) as usize);
    loop {
        while let Some(claim) = verifier.claim_read_back(READ_BACK) {
            if ctx.is_aborted() {
                return Ok(());
            }
            let (start, len) = (claim.range.start, claim.range.end - claim.range.start);
            let (res, back) = sink.read_back(buf, start, len).await;
            buf = back;
            let skip = res.map_err(|source| GetError::Io {
                op: "read back for sha256",
                path: ctx.incomplete.clone(),
                source,
            })?;
            verifier.complete_read_back(claim, &buf.bytes()[skip..skip + len as usize]);
        }
        if wake.recv_async().await.is_err() {
            // Every writer is gone; whatever they recorded last was claimed above.
            if !verifier.has_read_back() {
                return Ok(());
            }
        }
    }
}

async fn coordinate(ctx: &Arc<Ctx>, spawn: &impl Fn(Task) -> bool) -> Result<(), GetError> {
    let first_len = ctx.settings.chunk.unwrap_or(FIRST_CHUNK);
    let mut target = ctx.origin.clone();
    let mut conn = Conn::open(&target.addrs).await?;
    let mut redirects = 0;
    let head = loop {
        let head = conn.request(&target, Some(0..first_len)).await?;
        if !matches!(head.status, 301 | 302 | 303 | 307 | 308) {
            break head;
        }
        redirects += 1;
        let next = redirect_target(&target, &head, redirects)?;
        let framing = head.framing().map_err(|e| GetError::Protocol {
            url: target.display.clone(),
            detail: e.to_string(),
        })?;
        let same_host = next.addrs == target.addrs;
        if same_host && conn.is_reusable() {
            conn.discard_body(framing).await;
        }
        if !same_host || !conn.is_reusable() {
            conn = Conn::open(&next.addrs).await?;
        }
        target = next;
    };
    // Ranges after a redirect go to the final URL.
    if target.url != ctx.origin.url {
        tracing::debug!(from = %ctx.origin.display, to = %target.display, "followed redirect");
        let _ = ctx.redirected.set(target);
    }
    let framing = head.framing().map_err(|e| GetError::Protocol {
        url: ctx.target().display.clone(),
        detail: e.to_string(),
    })?;
    match head.status {
        206 => ranged(ctx, conn, &head, framing, first_len, spawn).await,
        200 => single_stream(ctx, conn, framing).await,
        416 => match head.header("content-range").and_then(parse_content_range) {
            Some(ContentRange::Unsatisfied { total: 0 }) => {
                ctx.counters.total.store(0, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(status_error(ctx, &head)),
        },
        _ => Err(status_error(ctx, &head)),
    }
}

fn status_error(ctx: &Ctx, head: &ResponseHead) -> GetError {
    GetError::Status {
        url: ctx.target().display.clone(),
        status: head.status,
        reason: head.reason.clone(),
    }
}

fn redirect_target(from: &Target, head: &ResponseHead, count: usize) -> Result<Target, GetError> {
    let err = |detail: String| GetError::Redirect {
        url: from.display.clone(),
        detail,
    };
    if count > MAX_REDIRECTS {
        return Err(err(format!("more than {MAX_REDIRECTS} redirects")));
    }
    let location = head
        .header("location")
        .ok_or_else(|| err(format!("{} redirect without a Location", head.status)))?;
    let next = from
        .url
        .join(location)
        .map_err(|e| err(format!("bad Location {location:?}: {e}")))?;
    Target::from_url(next)
}

/// Checks a 206 against the range asked for; returns the total size it states.
fn check_partial(
    ctx: &Ctx,
    head: &ResponseHead,
    first: u64,
    last: u64,
    known_total: Option<u64>,
) -> Result<u64, GetError> {
    let mismatch = |got: String| GetError::ContentRangeMismatch {
        url: ctx.target().display.clone(),
        asked_first: first,
        asked_last: last,
        got,
    };
    if head.status != 206 {
        if head.status == 200 {
            return Err(mismatch(
                "(status 200 with no range: the server stopped honouring Range)".to_owned(),
            ));
        }
        return Err(status_error(ctx, head));
    }
    let raw = head.header("content-range").unwrap_or("(missing)");
    let Some(ContentRange::Satisfied {
        first: f,
        last: l,
        total,
    }) = parse_content_range(raw)
    else {
        return Err(mismatch(raw.to_owned()));
    };
    let total = match (total, known_total) {
        (Some(t), Some(k)) if t != k => {
            return Err(GetError::SizeChanged {
                url: ctx.target().display.clone(),
                first: k,
                now: t,
            });
        }
        (Some(t), _) => t,
        (None, Some(k)) => k,
        (None, None) => {
            return Err(GetError::Protocol {
                url: ctx.target().display.clone(),
                detail: format!("Content-Range {raw:?} does not state the file size"),
            });
        }
    };
    // A server clamps the last byte to the end of the file (RFC 9110 14.1.1).
    if f != first || l != last.min(total.saturating_sub(1)) {
        return Err(mismatch(raw.to_owned()));
    }
    Ok(total)
}

fn preallocate(ctx: &Ctx, len: u64) -> Result<(), GetError> {
    ctx.counters.total.store(len, Ordering::Relaxed);
    if len == 0 {
        return Ok(());
    }
    // Blocking, but one call per file and cheap on extent filesystems; it becomes an io_uring op
    // with the data-plane work.
    match rustix::fs::fallocate(&ctx.created, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            ctx.created.set_len(len).map_err(|source| GetError::Io {
                op: "set_len",
                path: ctx.incomplete.clone(),
                source,
            })
        }
        Err(e) => Err(GetError::Io {
            op: "fallocate",
            path: ctx.incomplete.clone(),
            source: e.into(),
        }),
    }
}

async fn ranged(
    ctx: &Arc<Ctx>,
    mut conn: Conn,
    head: &ResponseHead,
    framing: Framing,
    first_len: u64,
    spawn: &impl Fn(Task) -> bool,
) -> Result<(), GetError> {
    let total = check_partial(ctx, head, 0, first_len - 1, None)?;
    let first_end = first_len.min(total);
    check_length(ctx, framing, 0..first_end)?;
    preallocate(ctx, total)?;
    // Everything that can fail early happens before other connections exist, so an early
    // return never leaves a connection writing to the file.
    let mut pipe = Pipeline::new(ctx, ctx.open_sink().await?);
    let mut plan = Plan::new(total, 0, ctx.settings.connections, ctx.settings.chunk);
    let first = plan.claim(0..first_end);
    let extra = plan
        .frontier_leases_left()
        .min(ctx.settings.connections as u64 - 1) as usize;
    *ctx.plan.lock().unwrap_or_else(|p| p.into_inner()) = Some(plan);
    let (done_tx, done_rx) = flume::unbounded();
    let mut spawned = 0;
    for _ in 0..extra {
        let task_ctx = Arc::clone(ctx);
        let tx: Done = done_tx.clone();
        let task: Task = Box::new(move || {
            Box::pin(async move {
                if let Err(e) = range_loop(&task_ctx, None).await {
                    task_ctx.fail(e);
                }
                let _ = tx.send(());
            })
        });
        if spawn(task) {
            spawned += 1;
        }
    }
    drop(done_tx);
    ctx.used_connections
        .store(1 + spawned as u64, Ordering::Relaxed);
    let mine = async {
        let end = conn.copy_lease(ctx, &mut pipe, first, 0..first_end).await;
        let go_on = match end {
            Ok(end) => lease_ended(ctx, first, 0..first_end, end),
            Err(e) => Err(e),
        };
        match go_on {
            Ok(true) => range_loop(ctx, Some((conn, pipe))).await,
            Ok(false) => pipe.drain().await,
            Err(e) => {
                let _ = pipe.drain().await;
                Err(e)
            }
        }
    }
    .await;
    if let Err(e) = mine {
        ctx.fail(e);
    }
    // Wait for every other connection, failed or not, before touching the file again.
    for _ in 0..spawned {
        if done_rx.recv_async().await.is_err() {
            break;
        }
    }
    let (retries, splits) = ctx
        .with_plan(|p| (p.retries(), p.splits()))
        .unwrap_or_default();
    ctx.retries.fetch_add(u64::from(retries), Ordering::Relaxed);
    ctx.splits.fetch_add(splits, Ordering::Relaxed);
    Ok(())
}

/// A ranged answer must carry exactly the bytes of its range.
fn check_length(ctx: &Ctx, framing: Framing, range: Range<u64>) -> Result<(), GetError> {
    let want = range.end - range.start;
    match framing {
        Framing::Length(n) if n == want => Ok(()),
        other => Err(GetError::Protocol {
            url: ctx.target().display.clone(),
            detail: format!(
                "the answer for bytes {}-{} is framed as {other:?}, not {want} bytes",
                range.start,
                range.end - 1
            ),
        }),
    }
}

/// Settles a lease after its body: `Ok(true)` when the connection should take another.
fn lease_ended(ctx: &Ctx, id: LeaseId, range: Range<u64>, end: BodyEnd) -> Result<bool, GetError> {
    match end {
        BodyEnd::Complete | BodyEnd::Trimmed => {
            ctx.with_plan(|p| p.complete(id));
            Ok(true)
        }
        BodyEnd::Aborted => Ok(false),
        BodyEnd::Short { at, error } => {
            let given_back = ctx.with_plan(|p| p.give_back(id, at)).unwrap_or(Err(()));
            let error = error.unwrap_or_else(|| GetError::ShortBody {
                url: ctx.target().display.clone(),
                offset: range.start,
                expected: range.end - range.start,
                received: at - range.start,
            });
            match given_back {
                Ok(lease_end) => {
                    tracing::debug!(
                        from = at,
                        to = lease_end,
                        "{error}; fetching the rest again"
                    );
                    Ok(true)
                }
                Err(()) => Err(error),
            }
        }
    }
}

/// Takes leases from the plan until none are left, on one connection (replaced when it breaks).
async fn range_loop(ctx: &Arc<Ctx>, reuse: Option<(Conn, Pipeline)>) -> Result<(), GetError> {
    let (mut conn, mut pipe) = match reuse {
        Some((conn, pipe)) => (Some(conn), pipe),
        None => (None, Pipeline::new(ctx, ctx.open_sink().await?)),
    };
    let total = ctx.counters.total.load(Ordering::Relaxed);
    let result = async {
        while let Some((id, range)) = ctx.take_lease() {
            let c = match conn.take() {
                Some(c) if c.is_reusable() => c,
                _ => Conn::open(&ctx.target().addrs).await?,
            };
            let c = conn.insert(c);
            let head = c.request(ctx.target(), Some(range.clone())).await?;
            check_partial(ctx, &head, range.start, range.end - 1, Some(total))?;
            let framing = head.framing().map_err(|e| GetError::Protocol {
                url: ctx.target().display.clone(),
                detail: e.to_string(),
            })?;
            check_length(ctx, framing, range.clone())?;
            let end = c.copy_lease(ctx, &mut pipe, id, range.clone()).await?;
            if !lease_ended(ctx, id, range, end)? {
                break;
            }
        }
        Ok(())
    }
    .await;
    let drained = pipe.drain().await;
    result.and(drained)
}

async fn single_stream(ctx: &Arc<Ctx>, mut conn: Conn, framing: Framing) -> Result<(), GetError> {
    if let Framing::Length(n) = framing {
        preallocate(ctx, n)?;
    }
    let mut pipe = Pipeline::new(ctx, ctx.open_sink().await?);
    let copied = conn.copy_stream(ctx, &mut pipe, framing).await;
    let drained = pipe.drain().await;
    if let Some(n) = copied? {
        ctx.counters.total.store(n, Ordering::Relaxed);
    }
    drained
}

/// Makes the file durable and gives it its final name.
async fn finish(
    ctx: &Ctx,
    fetches: u32,
    hash: Option<(Sha256Hex, HashStats)>,
) -> Result<Report, GetError> {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> GetError + 'a {
        move |source| GetError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
    let total = ctx.counters.total.load(Ordering::Relaxed);
    let done = ctx.counters.done.load(Ordering::Relaxed);
    if total != done {
        return Err(GetError::ShortBody {
            url: ctx.target().display.clone(),
            offset: 0,
            expected: total,
            received: done,
        });
    }
    // The file was truncated when created and grew by exactly the bytes counted in `done`.
    let file = ctx.open_file().await?;
    file.sync_all()
        .await
        .map_err(io("fsync", &ctx.incomplete))?;
    drop(file);
    std::fs::rename(&ctx.incomplete, &ctx.output).map_err(io("rename", &ctx.output))?;
    let dir = parent_dir(&ctx.output);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))?;
    let seconds = ctx.started.elapsed().as_secs_f64();
    Ok(Report {
        url: ctx.origin.display.clone(),
        path: ctx.output.clone(),
        bytes: total,
        seconds,
        gb_per_s: if seconds > 0.0 {
            total as f64 / seconds / 1e9
        } else {
            0.0
        },
        backend: ctx.settings.backend,
        backend_reason: ctx.settings.backend_reason.clone(),
        threads: ctx.settings.threads,
        connections: ctx.used_connections.load(Ordering::Relaxed) as usize,
        ranged: ctx.plan.lock().unwrap_or_else(|p| p.into_inner()).is_some(),
        url_final: ctx.redirected.get().map(|t| t.display.clone()),
        sink: ctx.settings.sink.kind,
        sink_reason: ctx.settings.sink.reason.clone(),
        sha256: hash.map(|(digest, stats)| HashReport {
            sha256: digest.to_string(),
            from_memory: stats.from_memory,
            read_back: stats.read_back,
        }),
        fetches,
        retries: ctx.retries.load(Ordering::Relaxed),
        splits: ctx.splits.load(Ordering::Relaxed),
    })
}

/// The directory a path lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
