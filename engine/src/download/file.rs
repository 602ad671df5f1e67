//! One file of a job ([`FileDownload`]) and what its lanes share: the job's progress
//! ([`JobProgress`]) and settings ([`JobSettings`]), the file's counters, its plan, its
//! verifier, its journal record and its sink.
//!
//! Invariants: the counters only grow within a fetch (a new fetch starts them over, in
//! `first.rs`); the plan exists once the first answer was ranged; the first failure is kept and
//! every lane stops at its next step. Not here: what the lanes do with a file (`first.rs`,
//! `lease.rs`, `stream.rs`, `settle.rs`) or which source they ask (`mirrors.rs`).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use compio::fs::File;
use rustix::fs::OFlags;

use super::UNKNOWN_TOTAL;
use super::mirrors::Source;
use super::output::parent_dir;
use super::partial::Partial;
use super::{durable, space};
use crate::backend::Backend;
use crate::backend::held::{HeldBody, Holding};
use crate::backend::nofollow::Dir;
use crate::backend::sink::{FileShare, FileSink, SinkChoice, SinkKind};
use crate::error::GetError;
use crate::journal::Journal;
use crate::net::target::Target;
use crate::proto::plan::{LeaseId, Plan};
use crate::proto::sources::Endpoints;
use crate::verify::{Checksum, Verifier, Window};

/// On the direct sink, a file that comes whole in one answer and is smaller than this is
/// written through the page cache instead: one write, flushed when the file is made durable,
/// where O_DIRECT costs a second descriptor (an open) and splits the file into an aligned part
/// and a buffered tail, two writes to the disk (measured: docs/decisions.md, "Small files
/// through the page cache"). Larger files keep O_DIRECT.
pub(super) const WHOLE_BUFFERED_BELOW: u64 = 1 << 20;

/// Progress counters of a job, shared with its [`Job`](crate::Job) handle.
#[derive(Debug)]
pub(crate) struct JobProgress {
    /// Bytes written, all files together.
    pub done: AtomicU64,
    /// Sum of the sizes known so far (stated up front or learnt from a first answer).
    pub total: AtomicU64,
    /// Files whose size is not known yet.
    pub unknown: AtomicU64,
    /// Files of the job, and files finished (successfully or not).
    pub files: u64,
    pub files_done: AtomicU64,
    /// The engine's interrupt flag ([`crate::Interrupter`]), shared by all its jobs.
    interrupted: Arc<AtomicBool>,
    /// When the job began, and when a lease's read last began since (nanoseconds after it):
    /// whether connections are moving, for a stalled one's hedge.
    began: Instant,
    last_read: AtomicU64,
    /// How many connections the job keeps open (connections by measurement).
    pub crowd: Arc<super::crowd::Crowd>,
}

impl JobProgress {
    /// A job of `files` files allowed `connections` connections.
    pub(crate) fn new(files: u64, interrupted: Arc<AtomicBool>, connections: usize) -> JobProgress {
        JobProgress {
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            files,
            files_done: AtomicU64::new(0),
            interrupted,
            began: Instant::now(),
            last_read: AtomicU64::new(0),
            crowd: Arc::new(super::crowd::Crowd::new(connections)),
        }
    }

    /// Time since the job began.
    pub(crate) fn elapsed(&self) -> std::time::Duration {
        self.began.elapsed()
    }

    /// A lease's read begins (any file, any connection).
    fn read_begins(&self) {
        let at = self.began.elapsed().as_nanos() as u64;
        self.last_read.fetch_max(at, Ordering::Relaxed);
    }

    /// Whether a lease's read began after `since`: connections are moving.
    fn moved_since(&self, since: Instant) -> bool {
        let last =
            self.began + std::time::Duration::from_nanos(self.last_read.load(Ordering::Relaxed));
        last > since
    }

    /// True once the engine was interrupted: lanes stop at their next read, files not started
    /// are not, and those cut short end with [`GetError::Interrupted`].
    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Counts a file of the job, with the size stated up front if any.
    pub(super) fn add_file(&self, hint: Option<u64>) {
        match hint {
            Some(n) => self.total.fetch_add(n, Ordering::Relaxed),
            None => self.unknown.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// A file's size is `now`; it was `was` (`UNKNOWN_TOTAL` until first known, when `hint`
    /// stood for it in the total). The same size learnt again (a second fetch, a stream's
    /// length confirmed at its end) changes nothing.
    pub(super) fn size_known(&self, hint: Option<u64>, was: u64, now: u64) {
        let counted = match (was, hint) {
            (UNKNOWN_TOTAL, Some(h)) => h,
            (UNKNOWN_TOTAL, None) => {
                self.unknown.fetch_sub(1, Ordering::Relaxed);
                0
            }
            (was, _) => was,
        };
        self.total.fetch_add(now, Ordering::Relaxed);
        self.total.fetch_sub(counted, Ordering::Relaxed);
    }
}

/// How a job runs: the same for all its files.
#[derive(Debug)]
pub(crate) struct JobSettings {
    pub chunk: Option<u64>,
    /// Size of one write buffer.
    pub staging: usize,
    /// Writes in flight per connection.
    pub depth: usize,
    pub backend: Backend,
    pub backend_reason: String,
    pub threads: usize,
    /// Disk space: the floor to keep free and the wait for space.
    pub space: space::JobSpace,
    /// How settled files are made durable before their rename.
    pub durable: durable::Durable,
    /// Whether range requests may be pipelined ([`Config::pipelining`](crate::Config::pipelining)).
    pub pipelining: bool,
}

/// One file of a job, as the job was given it.
#[derive(Debug)]
pub(crate) struct FileSpec {
    pub target: Target,
    /// Other URLs with the same bytes.
    pub mirrors: Vec<Target>,
    pub output: PathBuf,
    /// The output's directory, held open: the partial file is created in it by name.
    pub dir: Dir,
    /// The partial file is the output's name plus this.
    pub partial_suffix: &'static str,
    pub sink: SinkChoice,
    pub checksum: Option<Checksum>,
    /// The size stated up front (for ordering and progress), if any.
    pub size: Option<u64>,
    /// The job's resume journal, if it keeps one.
    pub journal: Option<Arc<Journal>>,
    /// Told of the partial file's writes.
    pub watch: Option<Arc<dyn super::Watch>>,
    /// No lease is split ([`crate::proto::plan::Plan::without_splits`]).
    pub once: bool,
    /// Not fsynced ([`crate::job::GetItem::scratch`]).
    pub scratch: bool,
    /// Kept in memory when it fits ([`crate::job::GetItem::hold`]).
    pub hold: Option<Arc<Holding>>,
    /// Started in the order given ([`crate::job::GetItem::in_order`]).
    pub in_order: bool,
}

/// What every file of a job shares besides its settings: the progress counters, the hash
/// window, the start time and what the job knows of each endpoint.
#[derive(Debug, Clone)]
pub(crate) struct JobShared {
    pub(crate) progress: Arc<JobProgress>,
    pub(crate) window: Arc<Window>,
    pub(crate) started: Instant,
    pub(crate) endpoints: Arc<Endpoints>,
}

/// One file of a job, and what the lanes working on it share.
pub(crate) struct FileDownload {
    /// The URL asked for first, then its mirrors.
    pub(super) sources: Vec<Source>,
    /// What the job knows of each endpoint (shared by its files).
    pub(super) endpoints: Arc<Endpoints>,
    pub(crate) output: PathBuf,
    /// `PATH.incomplete`, for messages.
    pub(crate) incomplete: PathBuf,
    /// The partial file itself: created, locked, reopened and renamed only through this.
    pub(super) partial: Partial,
    pub(crate) sink: SinkChoice,
    pub(crate) checksum: Option<Checksum>,
    pub(super) size_hint: Option<u64>,
    pub(crate) settings: Arc<JobSettings>,
    /// The job's counters; the file's own are below.
    pub(super) progress: Arc<JobProgress>,
    pub(super) window: Arc<Window>,
    pub(super) started: Instant,
    /// Bytes of this file written in the current fetch.
    pub(super) done: AtomicU64,
    /// The file's size once known (`UNKNOWN_TOTAL` before).
    pub(super) total: AtomicU64,
    pub(super) plan: Mutex<Option<Plan>>,
    pub(super) verify: Mutex<Option<(Arc<Verifier>, flume::Sender<()>)>>,
    pub(super) read_back: Mutex<Option<flume::Receiver<Result<(), GetError>>>>,
    pub(super) aborted: AtomicBool,
    pub(super) first_error: Mutex<Option<GetError>>,
    /// Lanes working on the file now; changed only under the job's scheduling lock.
    pub(crate) helpers: AtomicUsize,
    pub(super) used_connections: AtomicU64,
    pub(super) fetches: AtomicU32,
    pub(super) retries: AtomicU64,
    pub(super) splits: AtomicU64,
    /// Range requests sent behind an answer still being read (HTTP/1.1 pipelining).
    pub(super) pipelined: AtomicU64,
    /// Answers that came over HTTP/2, for [`Report::http2`](crate::Report::http2).
    pub(super) http2: AtomicU64,
    /// Answers that came over HTTP/3, for [`Report::http3`](crate::Report::http3).
    pub(super) http3: AtomicU64,
    /// Stalled leases whose rest went to another connection.
    pub(super) hedged: AtomicU64,
    /// The job's resume journal: used for files with a digest and a size.
    pub(super) journal: Option<Arc<Journal>>,
    /// The journal's id for the current fetch (0: not journaled).
    pub(super) journal_id: AtomicU64,
    /// For a file without a digest: what vouches for its journaled bytes (`validator.rs`).
    pub(super) validator: Mutex<Option<super::validator::Validator>>,
    /// Told of the partial file's writes ([`super::Watch`]): by the write itself as it
    /// completes, and again (harmlessly) when it is journaled.
    pub(super) watch: Option<Arc<dyn super::Watch>>,
    /// No lease is split.
    pub(super) once: bool,
    /// Not fsynced before the rename.
    pub(super) scratch: bool,
    /// Where the body may be kept in memory, and its budget.
    pub(super) hold: Option<Arc<Holding>>,
    /// The current fetch's body in memory, when the holding had room for it.
    pub(super) held: Mutex<Option<Arc<HeldBody>>>,
    /// Started in the order given, not by size.
    pub(super) in_order: bool,
    /// Bytes of the file taken over from an earlier run.
    pub(super) resumed_bytes: AtomicU64,
    /// Bytes of this file that went socket -> pipe -> file (the splice sink).
    pub(super) spliced: AtomicU64,
    /// This fetch writes the file through the page cache though the sink is direct
    /// ([`WHOLE_BUFFERED_BELOW`]).
    pub(super) whole_buffered: AtomicBool,
    /// The partial file was created empty (or emptied) by this fetch and holds no blocks yet:
    /// what it has allocated need not be asked of the filesystem (a `statx` per file).
    pub(super) empty: AtomicBool,
    /// The file's turn for buffered writes and its cached stretches, shared by its sinks on
    /// every worker.
    pub(super) sink_share: FileShare,
}

impl FileDownload {
    pub(crate) fn new(
        spec: FileSpec,
        settings: Arc<JobSettings>,
        shared: &JobShared,
    ) -> FileDownload {
        let JobShared {
            progress,
            window,
            started,
            endpoints,
        } = shared.clone();
        let mut name = spec.output.as_os_str().to_owned();
        name.push(spec.partial_suffix);
        let partial = Partial::new(spec.dir, &spec.output, spec.partial_suffix);
        progress.add_file(spec.size);
        let sources = std::iter::once(spec.target)
            .chain(spec.mirrors)
            .map(|origin| {
                let mut source = Source {
                    origin,
                    redirected: OnceLock::new(),
                    endpoint: 0,
                    served: AtomicU64::new(0),
                    refused: AtomicBool::new(false),
                };
                source.endpoint = endpoints.id(&source.label());
                source
            })
            .collect();
        FileDownload {
            sources,
            endpoints,
            output: spec.output,
            incomplete: PathBuf::from(name),
            partial,
            sink: spec.sink,
            checksum: spec.checksum,
            size_hint: spec.size,
            settings,
            progress,
            window,
            started,
            done: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN_TOTAL),
            plan: Mutex::new(None),
            verify: Mutex::new(None),
            read_back: Mutex::new(None),
            aborted: AtomicBool::new(false),
            first_error: Mutex::new(None),
            helpers: AtomicUsize::new(0),
            used_connections: AtomicU64::new(0),
            fetches: AtomicU32::new(0),
            retries: AtomicU64::new(0),
            splits: AtomicU64::new(0),
            pipelined: AtomicU64::new(0),
            http2: AtomicU64::new(0),
            http3: AtomicU64::new(0),
            hedged: AtomicU64::new(0),
            journal: spec.journal,
            journal_id: AtomicU64::new(0),
            validator: Mutex::new(None),
            watch: spec.watch,
            once: spec.once,
            scratch: spec.scratch,
            hold: spec.hold,
            held: Mutex::new(None),
            in_order: spec.in_order,
            resumed_bytes: AtomicU64::new(0),
            spliced: AtomicU64::new(0),
            whole_buffered: AtomicBool::new(false),
            empty: AtomicBool::new(false),
            sink_share: FileShare::new(),
        }
    }

    /// The journal key of this file (its size and digest) when the job journals it.
    pub(super) fn journal_key(&self) -> Option<(&Journal, u64, String)> {
        let journal = self.journal.as_deref()?;
        match self.checksum {
            Some(checksum) => Some((journal, self.size_hint?, checksum.to_string())),
            None => self
                .validator
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|v| (journal, v.size, v.digest.clone())),
        }
    }

    /// Records that `len` bytes at `at` are written (the write completed).
    pub(crate) fn journal_written(&self, at: u64, len: u64) {
        if let Some(watch) = &self.watch
            && len > 0
        {
            watch.written(at, len);
        }
        let Some(journal) = &self.journal else {
            return;
        };
        let id = self.journal_id.load(Ordering::Relaxed);
        if id != 0 && len > 0 {
            journal.written(id, at..at + len);
        }
    }

    /// Starts a fresh journal record of this file (before it is emptied).
    pub(super) fn journal_fresh(&self) {
        if let Some((journal, size, digest)) = self.journal_key() {
            let id = journal.start(&self.output, size, &digest);
            self.journal_id.store(id, Ordering::Relaxed);
        }
    }

    /// What an earlier run wrote of this file and the journal vouches for (only on the first
    /// fetch of this job: a second fetch follows a mismatch, and starts over).
    pub(super) fn journal_resumable(&self) -> Option<(u64, Vec<Range<u64>>)> {
        if self.checksum.is_none() {
            return self
                .validator_resumable()
                .map(|(id, ranges, _)| (id, ranges));
        }
        if self.fetches.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let (journal, size, digest) = self.journal_key()?;
        let (id, ranges) = journal.resumable(&self.output, size, &digest)?;
        // The file must still hold every range (it was never emptied behind the journal's back).
        let end = ranges.last().map_or(0, |r| r.end);
        let len = self.partial.len_on_disk()?;
        (len >= end).then_some((id, ranges))
    }

    /// The earlier run's bytes are kept: count them, and have the verifier read them back.
    pub(super) fn keep_resumed(&self, ranges: &[Range<u64>]) {
        let n: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.add_done(n);
        self.resumed_bytes.store(n, Ordering::Relaxed);
        if let Some(watch) = &self.watch {
            for r in ranges {
                watch.written(r.start, r.end - r.start);
            }
        }
        if let (Some(v), Some(wake)) = self.verifier() {
            for r in ranges {
                v.written_elsewhere(r.start, r.end - r.start);
            }
            let _ = wake.try_send(());
        }
    }

    /// The earlier run's bytes cannot be used (the server answered with the whole file, or
    /// another size): start the journal over and empty the file.
    pub(super) fn drop_resumed(&self, file: &File) -> Result<(), GetError> {
        self.void_record();
        self.journal_fresh();
        rustix::fs::ftruncate(file, 0).map_err(|e| GetError::Io {
            op: "truncate",
            path: self.incomplete.clone(),
            source: e.into(),
        })?;
        if let Some(watch) = &self.watch {
            watch.fresh(std::os::fd::AsFd::as_fd(file), true);
        }
        self.empty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The error of a failed operation on the partial file: [`GetError::NoSpace`] when the
    /// disk is full, [`GetError::Io`] otherwise.
    pub(crate) fn io_error(&self, op: &'static str, source: std::io::Error) -> GetError {
        if space::is_full(&source) {
            let total = self.total.load(Ordering::Relaxed);
            let need = match total {
                UNKNOWN_TOTAL => 0,
                t => t.saturating_sub(self.done.load(Ordering::Relaxed)),
            };
            return self.settings.space.full(parent_dir(&self.incomplete), need);
        }
        GetError::Io {
            op,
            path: self.incomplete.clone(),
            source,
        }
    }

    /// Waits until the file's `len` bytes fit on the disk, counting what `file` already has
    /// allocated (a resumed partial file); see [`space`].
    pub(super) async fn wait_for_space(&self, file: &File, len: u64) -> Result<u64, GetError> {
        use std::os::unix::fs::MetadataExt;
        let allocated = if self.empty.load(Ordering::Relaxed) {
            0
        } else {
            file.metadata().await.map_or(0, |m| m.blocks() * 512)
        };
        let need = len.saturating_sub(allocated);
        let dir = parent_dir(&self.incomplete);
        self.settings
            .space
            .wait_for(dir, need, || self.is_aborted())
            .await?;
        Ok(need)
    }

    /// The first source's target (the URL asked for, after redirects): what messages name.
    pub(crate) fn target(&self) -> &Target {
        self.sources[0].target()
    }

    /// The size stated up front, for the start order.
    pub(crate) fn size_hint(&self) -> Option<u64> {
        self.size_hint
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed) || self.progress.interrupted()
    }

    /// Counts `n` bytes that went through a pipe, not a buffer (the splice sink).
    pub(crate) fn add_spliced(&self, n: u64) {
        self.spliced.fetch_add(n, Ordering::Relaxed);
    }

    /// The sink the report names, and why: over TLS the socket carries ciphertext, so a file
    /// of the splice sink whose bytes never went through a pipe was written from buffers.
    pub(super) fn sink_used(&self) -> (SinkKind, String) {
        let tls = self.sources.iter().all(|s| s.target().tls_host.is_some());
        if self.sink.kind == SinkKind::Splice && tls && self.spliced.load(Ordering::Relaxed) == 0 {
            return (
                SinkKind::Buffered,
                format!(
                    "{}, but over TLS the socket carries ciphertext: the decrypted bytes were written from buffers",
                    self.sink.reason
                ),
            );
        }
        if self.sink.kind == SinkKind::Direct && self.whole_buffered.load(Ordering::Relaxed) {
            return (
                SinkKind::Buffered,
                format!(
                    "{}, but the file came whole in one answer of under {} MiB: one write \
                     through the page cache, flushed by the fsync",
                    self.sink.reason,
                    WHOLE_BUFFERED_BELOW >> 20
                ),
            );
        }
        (self.sink.kind, self.sink.reason.clone())
    }

    /// Counts `n` more bytes written, in the file and in the job.
    pub(crate) fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.progress.done.fetch_add(n, Ordering::Relaxed);
    }

    /// The file's size is now known.
    pub(super) fn set_total(&self, n: u64) {
        let was = self.total.swap(n, Ordering::Relaxed);
        self.progress.size_known(self.size_hint, was, n);
    }

    /// Records the first failure and tells every lane on this file to stop.
    pub(super) fn fail(&self, err: GetError) {
        let mut slot = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(err);
        }
        self.aborted.store(true, Ordering::Relaxed);
    }

    /// The first recorded failure, if any.
    pub(super) fn take_error(&self) -> Option<GetError> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub(super) fn with_plan<T>(&self, f: impl FnOnce(&mut Plan) -> T) -> Option<T> {
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        plan.as_mut().map(f)
    }

    /// What the file offers a free lane now (`None` before it has a plan).
    pub(crate) fn offer(&self) -> Option<crate::proto::plan::files::Offer> {
        if self.is_aborted() {
            return None;
        }
        self.with_plan(|p| crate::proto::plan::files::Offer {
            frontier_left: p.frontier_left(),
            has_work: p.has_work(),
        })
    }

    pub(super) fn take_lease(&self) -> Option<(LeaseId, Range<u64>)> {
        if self.is_aborted() {
            return None;
        }
        let wanted = self.wanted();
        self.with_plan(|p| p.take_wanting(&wanted, true).map(|(id, r, _)| (id, r)))
            .flatten()
    }

    /// Bytes readers of the partial file wait for ([`super::Watch::wanted`]).
    fn wanted(&self) -> Vec<crate::proto::plan::Want> {
        self.watch.as_ref().map(|w| w.wanted()).unwrap_or_default()
    }

    /// A lease to ask for behind the one being read ([`Plan::take_ahead`]).
    pub(super) fn take_lease_ahead(&self) -> Option<(LeaseId, Range<u64>)> {
        if self.is_aborted() {
            return None;
        }
        let wanted = self.wanted();
        self.with_plan(|p| p.take_ahead(&wanted)).flatten()
    }

    /// A lease none of whose bytes was read goes back whole, using no retry.
    pub(super) fn put_back(&self, id: LeaseId) {
        self.with_plan(|p| p.put_back(id));
    }

    /// How many of `want` bytes the holder of `lease`, now at `at`, may still read (it reads
    /// them next).
    pub(crate) fn reserve(&self, lease: LeaseId, at: u64, want: u64) -> u64 {
        self.progress.read_begins();
        self.with_plan(|p| p.reserve(lease, at, want)).unwrap_or(0)
    }

    /// Whether a lease's read that began at `since` and brought nothing for its hedge's wait
    /// should end so its rest goes to another connection: the file has hedges left
    /// ([`Plan::hedge`]), and other connections moved since, or have nothing left to fetch of
    /// the file but this lease's rest (they finished while it stalled). When they have work
    /// and do not move either, the server is what stalls, and the watchdog decides.
    pub(crate) fn hedge_pays(&self, since: Instant) -> bool {
        self.with_plan(|p| p.may_hedge() && (!p.has_work() || self.progress.moved_since(since)))
            .unwrap_or(false)
    }

    /// The verifier of the current fetch and the waker of its read-back task (when hashing).
    pub(crate) fn verifier(&self) -> (Option<Arc<Verifier>>, Option<flume::Sender<()>>) {
        match &*self.verify.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((v, wake)) => (Some(Arc::clone(v)), Some(wake.clone())),
            None => (None, None),
        }
    }

    pub(super) async fn open_file(&self) -> Result<File, GetError> {
        self.partial
            .reopen(OFlags::RDWR)
            .await
            .map_err(|source| GetError::Io {
                op: "open",
                path: self.incomplete.clone(),
                source,
            })
    }

    /// This lane's descriptors of the file, for the file's sink: `created` (from
    /// [`FileDownload::begin_fetch`]) as the buffered one when this lane has it, new ones otherwise.
    pub(super) async fn open_sink(&self, created: Option<File>) -> Result<FileSink, GetError> {
        self.open_sink_as(created, self.sink.kind).await
    }

    /// The sink of a file whose `len` bytes all come in the answer at hand, on the lane that
    /// created it: buffered when it is small ([`WHOLE_BUFFERED_BELOW`]), the file's sink
    /// otherwise.
    pub(super) async fn open_whole_sink(
        &self,
        created: File,
        len: u64,
    ) -> Result<FileSink, GetError> {
        let small = self.sink.kind == SinkKind::Direct && len < WHOLE_BUFFERED_BELOW;
        self.whole_buffered.store(small, Ordering::Relaxed);
        let kind = if small {
            SinkKind::Buffered
        } else {
            self.sink.kind
        };
        self.open_sink_as(Some(created), kind).await
    }

    /// Keeps this fetch's body of `len` bytes in memory when the item may be held and the
    /// holding has room (never for a file that is hashed, journaled or watched: those need
    /// their bytes on disk); returns whether it is held. Called once the first answer stated
    /// the size, before any byte is written.
    pub(super) fn try_hold(&self, len: u64) -> bool {
        let body = match &self.hold {
            // Not a file resumed from the journal: its earlier bytes are on disk.
            Some(h)
                if self.checksum.is_none()
                    && self.watch.is_none()
                    && self.resume_if_range().is_none() =>
            {
                h.reserve(len)
            }
            _ => None,
        };
        let held = body.is_some();
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = body;
        held
    }

    /// The current fetch's body in memory, if it is held.
    pub(super) fn held_body(&self) -> Option<Arc<HeldBody>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) async fn open_sink_as(
        &self,
        created: Option<File>,
        kind: SinkKind,
    ) -> Result<FileSink, GetError> {
        let share = self.sink_share.clone();
        if let Some(body) = self.held_body() {
            let file = match created {
                Some(file) => file,
                None => self.open_file().await?,
            };
            return Ok(FileSink::held(file, body, share));
        }
        let opened = async {
            let buffered = match created {
                Some(file) => file,
                None => self.partial.reopen(OFlags::RDWR).await?,
            };
            let direct = match kind {
                SinkKind::Direct => Some(self.partial.reopen(OFlags::RDWR | OFlags::DIRECT).await?),
                SinkKind::Buffered | SinkKind::Splice => None,
            };
            Ok(FileSink::new(
                buffered,
                direct,
                kind,
                self.sink.align,
                share,
            ))
        };
        opened.await.map_err(|source| GetError::Io {
            op: if kind == SinkKind::Direct {
                "open (O_DIRECT)"
            } else {
                "open"
            },
            path: self.incomplete.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn progress_total_counts_each_size_once() {
        let c = JobProgress::new(3, Arc::default(), 16);
        c.add_file(Some(100)); // stated up front
        c.add_file(None);
        c.add_file(None);
        assert_eq!(c.unknown.load(Ordering::Relaxed), 2);
        // The stated size was right; learning it again (a second fetch) changes nothing.
        c.size_known(Some(100), UNKNOWN_TOTAL, 100);
        c.size_known(Some(100), 100, 100);
        // An unknown empty file: learnt at its first answer and again at the stream's end.
        c.size_known(None, UNKNOWN_TOTAL, 0);
        c.size_known(None, 0, 0);
        assert_eq!(
            c.unknown.load(Ordering::Relaxed),
            1,
            "one file still unknown"
        );
        // A stated size that was wrong is replaced by the real one.
        c.size_known(None, UNKNOWN_TOTAL, 7);
        assert_eq!(c.unknown.load(Ordering::Relaxed), 0);
        assert_eq!(c.total.load(Ordering::Relaxed), 107);
        let d = JobProgress::new(1, Arc::default(), 16);
        d.add_file(Some(50));
        d.size_known(Some(50), UNKNOWN_TOTAL, 60);
        assert_eq!(d.total.load(Ordering::Relaxed), 60);
    }
}
