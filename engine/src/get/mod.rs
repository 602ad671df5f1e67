//! The `get` job: one URL to one file, over several keep-alive connections spread across the
//! workers.
//!
//! Order of events: the first connection asks for the first range (`bytes=0-…`); the answer tells
//! the size and whether ranges work. With a 206, the file is `fallocate`d and the rest of the
//! ranges go to up to `connections` connections, each pulling the next range from a shared
//! [`RangePlan`]. With a 200 (the server ignores `Range`) or no length, the body is copied as one
//! stream. Every body is checked against the range asked for (`Content-Range`, length, a short
//! body is an error). At the end the file is fsynced, renamed from `PATH.incomplete` to `PATH`
//! and the directory fsynced; on any failure the partial file is removed and nothing appears
//! under the final name.
//!
//! Not here yet (later issues): retries, resume, hashing, O_DIRECT, dynamic range splitting.

mod conn;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use compio::fs::{File, OpenOptions};
use url::Url;

use self::conn::{Conn, Copied};
use crate::backend::Backend;
use crate::error::GetError;
use crate::http1::{ContentRange, Framing, ResponseHead, parse_content_range};
use crate::plan::{FIRST_CHUNK, RangePlan};
use crate::runtime::Task;
use crate::{Report, UNKNOWN_TOTAL};

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

/// What the job's tasks share.
pub(crate) struct Ctx {
    /// The URL as asked for.
    origin: Target,
    /// The URL after redirects, set once before any range is fetched.
    redirected: OnceLock<Target>,
    pub output: PathBuf,
    pub incomplete: PathBuf,
    pub counters: Arc<Counters>,
    pub connections: usize,
    pub chunk: Option<u64>,
    pub staging: usize,
    pub backend: Backend,
    pub backend_reason: String,
    pub threads: usize,
    pub started: Instant,
    /// The file as created by [`Engine::get`](crate::Engine::get); used for `fallocate`.
    pub created: std::fs::File,
    plan: Mutex<Option<RangePlan>>,
    aborted: AtomicBool,
    first_error: Mutex<Option<GetError>>,
    used_connections: AtomicU64,
}

impl Ctx {
    /// Where requests go: the URL after redirects.
    pub fn target(&self) -> &Target {
        self.redirected.get().unwrap_or(&self.origin)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: Target,
        output: PathBuf,
        incomplete: PathBuf,
        created: std::fs::File,
        counters: Arc<Counters>,
        config: &crate::Config,
        backend: (Backend, String),
        threads: usize,
        started: Instant,
    ) -> Ctx {
        Ctx {
            origin: target,
            redirected: OnceLock::new(),
            output,
            incomplete,
            created,
            counters,
            connections: config.connections.max(1),
            chunk: config.chunk_size,
            staging: config.buffer_size.max(4096),
            backend: backend.0,
            backend_reason: backend.1,
            threads,
            started,
            plan: Mutex::new(None),
            aborted: AtomicBool::new(false),
            first_error: Mutex::new(None),
            used_connections: AtomicU64::new(1),
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

    fn next_range(&self) -> Option<std::ops::Range<u64>> {
        if self.is_aborted() {
            return None;
        }
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        plan.as_mut().and_then(RangePlan::poll_range)
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
}

/// The sender of a connection task's verdict back to the coordinator.
type Done = flume::Sender<()>;

/// Runs the whole job on the current worker; other connections go to `spawn`.
pub(crate) async fn run(ctx: Arc<Ctx>, spawn: impl Fn(Task) -> bool) -> Result<Report, GetError> {
    if let Err(e) = coordinate(&ctx, spawn).await {
        ctx.fail(e);
    }
    let result = match ctx.take_error() {
        Some(e) => Err(e),
        None => finish(&ctx).await,
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&ctx.incomplete);
    }
    result
}

async fn coordinate(ctx: &Arc<Ctx>, spawn: impl Fn(Task) -> bool) -> Result<(), GetError> {
    let first_len = ctx.chunk.unwrap_or(FIRST_CHUNK);
    let mut target = ctx.origin.clone();
    let mut conn = Conn::open(&target.addrs, ctx.staging).await?;
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
            conn = Conn::open(&next.addrs, ctx.staging).await?;
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
    spawn: impl Fn(Task) -> bool,
) -> Result<(), GetError> {
    let total = check_partial(ctx, head, 0, first_len - 1, None)?;
    preallocate(ctx, total)?;
    // Everything that can fail early happens before other connections exist, so an early
    // return never leaves a connection writing to the file.
    let mut file = ctx.open_file().await?;
    let first_end = first_len.min(total);
    let plan = RangePlan::new(total, first_end, ctx.connections, ctx.chunk);
    let extra = plan.ranges_left().min(ctx.connections as u64 - 1) as usize;
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
        match conn
            .copy_body(ctx, framing, Some(first_end), &mut file, 0)
            .await?
        {
            Copied::Aborted => Ok(()),
            Copied::Done(_) => range_loop(ctx, Some((conn, file))).await,
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
    Ok(())
}

/// Takes ranges from the plan until none are left, on one connection.
async fn range_loop(ctx: &Ctx, reuse: Option<(Conn, File)>) -> Result<(), GetError> {
    let (mut conn, mut file) = match reuse {
        Some(pair) => pair,
        None => (
            Conn::open(&ctx.target().addrs, ctx.staging).await?,
            ctx.open_file().await?,
        ),
    };
    let total = ctx.counters.total.load(Ordering::Relaxed);
    while let Some(range) = ctx.next_range() {
        if !conn.is_reusable() {
            conn = Conn::open(&ctx.target().addrs, ctx.staging).await?;
        }
        let head = conn.request(ctx.target(), Some(range.clone())).await?;
        check_partial(ctx, &head, range.start, range.end - 1, Some(total))?;
        let framing = head.framing().map_err(|e| GetError::Protocol {
            url: ctx.target().display.clone(),
            detail: e.to_string(),
        })?;
        if let Copied::Aborted = conn
            .copy_body(
                ctx,
                framing,
                Some(range.end - range.start),
                &mut file,
                range.start,
            )
            .await?
        {
            break;
        }
    }
    Ok(())
}

async fn single_stream(ctx: &Ctx, mut conn: Conn, framing: Framing) -> Result<(), GetError> {
    let expect = match framing {
        Framing::Length(n) => {
            preallocate(ctx, n)?;
            Some(n)
        }
        _ => None,
    };
    let mut file = ctx.open_file().await?;
    if let Copied::Done(n) = conn.copy_body(ctx, framing, expect, &mut file, 0).await? {
        ctx.counters.total.store(n, Ordering::Relaxed);
    }
    Ok(())
}

/// Makes the file durable and gives it its final name.
async fn finish(ctx: &Ctx) -> Result<Report, GetError> {
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
        backend: ctx.backend,
        backend_reason: ctx.backend_reason.clone(),
        threads: ctx.threads,
        connections: ctx.used_connections.load(Ordering::Relaxed) as usize,
        ranged: ctx.plan.lock().unwrap_or_else(|p| p.into_inner()).is_some(),
        url_final: ctx.redirected.get().map(|t| t.display.clone()),
    })
}

/// The directory a path lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
