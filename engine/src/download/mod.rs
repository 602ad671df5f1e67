//! Downloads: the files of a job, over a fixed number of keep-alive connections ("lanes") spread
//! across the workers.
//!
//! A file starts with a request for its first range (`bytes=0-…`); the answer tells the size and
//! whether ranges work. A file that fits that range is done with the one request, so many small
//! files go one after another over the same connection. A larger one is `fallocate`d and gets a
//! [`Plan`]; it becomes *active* and other lanes join it and take ranges from the plan until none
//! are left (`batch.rs` decides which lane works on which file). With a 200 (the server ignores
//! `Range`) or no length, the body is copied as one stream. Every answer is checked against the
//! range asked for (`Content-Range`, length); a body that ends short gives the rest of its lease
//! back to the plan and is fetched again on a fresh connection, a bounded number of times.
//!
//! Bytes go socket -> aligned pipeline buffer -> [`FileSink`] (O_DIRECT where it works), several
//! writes in flight per connection. With a sha256 to check, each completed write feeds the
//! file's [`Verifier`] in file order, and a read-back task hashes what had to leave memory first.
//! A mismatch fetches the whole file once more, then fails. The last lane to leave a file makes
//! it durable ([`durable`]: an fsync, or a share of a `syncfs` with the files settled at the same
//! time), then renames it from `PATH.incomplete` to `PATH` (the directories are fsynced once
//! when the job ends); on any failure the partial file is removed and nothing appears under the
//! final name. One file failing does not stop the others.
//!
//! A job may keep a resume [`Journal`]: every completed write of a file with a digest and a
//! size is recorded there, and a file the journal knows is resumed, not emptied: its first
//! request asks for the first missing byte, the plan hands out only the gaps, and the ranges
//! already on disk are read back for the hash. A failed file then keeps its `PATH.incomplete`
//! for the next run (unless its bytes proved wrong).
//!
//! Disk space is checked before a file is reserved and written ([`space`]): a file that would
//! take the disk under the floor waits for space, then fails with [`GetError::NoSpace`].

mod conn;
pub(crate) mod durable;
mod lanes;
mod output;
mod partial;
pub(crate) mod ping;
mod pipe;
pub(crate) mod sources;
pub(crate) mod space;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use compio::driver::ToSharedFd;
use compio::fs::File;
use rustix::fs::OFlags;

use self::conn::{BodyEnd, Conn};
pub(crate) use self::lanes::{Lanes, Results};
use self::output::{check_collisions, check_output, open_output_dir};
use self::partial::Partial;
use self::pipe::Pipeline;
use self::sources::{EndpointReport, Endpoints};
use crate::backend::Backend;
use crate::backend::buf::AlignedBuf;
use crate::backend::nofollow::Dir;
use crate::backend::sink::{FileShare, FileSink, SinkKind};
use crate::error::GetError;
use crate::http1::{ContentRange, Framing, ResponseHead, parse_content_range};
use crate::journal::Journal;
use crate::net::target::redirect_target;
pub(crate) use crate::net::target::{Resolver, Secret, Target, take_credentials};

use crate::backend::sink::SinkChoice;
use crate::engine::Engine;
use crate::job::{GetItem, Job};
use crate::plan::{FIRST_CHUNK, LeaseId, Plan};
use crate::report::{HashReport, Report};
use crate::retry::Verdict;
use crate::verify::{Checksum, HashStats, Verifier, Window};

/// A file's size before it is known.
const UNKNOWN_TOTAL: u64 = u64::MAX;

/// Bytes read back per read when the verifier needs bytes that left memory.
const READ_BACK: u64 = 8 << 20;

/// On the direct sink, a file that comes whole in one answer and is smaller than this is
/// written through the page cache instead: one write, flushed when the file is made durable,
/// where O_DIRECT costs a second descriptor (an open) and splits the file into an aligned part
/// and a buffered tail, two writes to the disk. 2,000 files of 4-64 KiB: 0.54 s against 0.62 s
/// (medians of 6). Larger files keep O_DIRECT: their page-cache copy would cost more than the
/// open saves.
const WHOLE_BUFFERED_BELOW: u64 = 1 << 20;
/// Bytes of written buffers the verifiers of a job may keep, together, until they are hashed.
/// Leases are handed out in file order, so the connections spread over about one lease each;
/// when they spread further than the window holds, connections wait for the hash (see
/// `get/pipe.rs`). At 64 MiB (with 16 x 8 MiB leases) they waited so often that the 2 GiB
/// verified download from nginx took 2.89-3.50 s (median 2.96) against 2.41-2.78 s (median
/// 2.58) at 128 MiB, alternated, 6 rounds.
pub(crate) const HASH_WINDOW: u64 = 128 << 20;
/// How far the leases of a verified file may spread, all connections together: half the
/// window, so that the bytes received past a lagging lease fit in it with room to spare (16
/// connections get 4 MiB leases, 8 or fewer the 8 MiB maximum). With 16 x 8 MiB = the whole
/// window, it filled whenever the lowest lease lagged: the other connections stopped and the
/// hash, which bounds a verified download, waited for that one (its idle gaps summed to
/// 0.6-0.7 s per 8 GiB; 0.2-0.4 s with 4 MiB leases). 8 GiB from nginx, alternated, 6 rounds
/// in two runs: 5.70 and 5.67 s with 8 MiB leases, 5.34 and 5.14 s with 4 MiB.
const HASH_SPREAD: u64 = HASH_WINDOW / 2;
/// What the partial file of `PATH` adds to its name, unless the job says otherwise.
pub(crate) const PARTIAL_SUFFIX: &str = ".incomplete";

/// Fetches of the whole file when its sha256 does not match: the first, and one more.
const MAX_FETCHES: u32 = 2;

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
}

impl JobProgress {
    pub(crate) fn new(files: u64, interrupted: Arc<AtomicBool>) -> JobProgress {
        JobProgress {
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            files,
            files_done: AtomicU64::new(0),
            interrupted,
        }
    }

    /// True once the engine was interrupted: lanes stop at their next read, files not started
    /// are not, and those cut short end with [`GetError::Interrupted`].
    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Counts a file of the job, with the size stated up front if any.
    fn add_file(&self, hint: Option<u64>) {
        match hint {
            Some(n) => self.total.fetch_add(n, Ordering::Relaxed),
            None => self.unknown.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// A file's size is `now`; it was `was` (`UNKNOWN_TOTAL` until first known, when `hint`
    /// stood for it in the total). The same size learnt again (a second fetch, a stream's
    /// length confirmed at its end) changes nothing.
    fn size_known(&self, hint: Option<u64>, was: u64, now: u64) {
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
    /// Lanes: connections the job keeps open at once.
    pub connections: usize,
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
}

/// One place a file's bytes come from: the URL asked for, or a mirror of it.
struct Source {
    /// The URL as given.
    origin: Target,
    /// The URL after redirects, set once they were followed.
    redirected: OnceLock<Target>,
    /// Its endpoint's id in the job's [`Endpoints`].
    endpoint: usize,
    /// Bytes of this file it served.
    served: AtomicU64,
    /// Set when it answered this file with what no retry cures (a mirror without the file, a
    /// certificate that does not verify): it is not asked for this file again.
    refused: AtomicBool,
}

impl Source {
    /// Where its requests go: the URL after redirects.
    fn target(&self) -> &Target {
        self.redirected.get().unwrap_or(&self.origin)
    }

    /// Its endpoint, as shown and as the job keys it: `scheme://host:port`.
    fn label(&self) -> String {
        self.origin.url.origin().ascii_serialization()
    }

    /// The error for a body of `range` from here that stopped at `at`.
    fn short_body(&self, range: &Range<u64>, at: u64) -> GetError {
        GetError::ShortBody {
            url: self.target().display.clone(),
            offset: range.start,
            expected: range.end - range.start,
            received: at - range.start,
        }
    }
}

/// One file of a job, and what the lanes working on it share.
pub(crate) struct FileDownload {
    /// The URL asked for first, then its mirrors.
    sources: Vec<Source>,
    /// What the job knows of each endpoint (shared by its files).
    endpoints: Arc<Endpoints>,
    pub output: PathBuf,
    /// `PATH.incomplete`, for messages.
    pub incomplete: PathBuf,
    /// The partial file itself: created, locked, reopened and renamed only through this.
    partial: Partial,
    pub sink: SinkChoice,
    pub checksum: Option<Checksum>,
    size_hint: Option<u64>,
    pub settings: Arc<JobSettings>,
    /// The job's counters; the file's own are below.
    progress: Arc<JobProgress>,
    window: Arc<Window>,
    started: Instant,
    /// Bytes of this file written in the current fetch.
    done: AtomicU64,
    /// The file's size once known (`UNKNOWN_TOTAL` before).
    total: AtomicU64,
    plan: Mutex<Option<Plan>>,
    verify: Mutex<Option<(Arc<Verifier>, flume::Sender<()>)>>,
    read_back: Mutex<Option<flume::Receiver<Result<(), GetError>>>>,
    aborted: AtomicBool,
    first_error: Mutex<Option<GetError>>,
    /// Lanes working on the file now; changed only under the job's scheduling lock.
    pub helpers: AtomicUsize,
    used_connections: AtomicU64,
    fetches: AtomicU32,
    retries: AtomicU64,
    splits: AtomicU64,
    /// The job's resume journal: used for files with a digest and a size.
    journal: Option<Arc<Journal>>,
    /// The journal's id for the current fetch (0: not journaled).
    journal_id: AtomicU64,
    /// Bytes of the file taken over from an earlier run.
    resumed_bytes: AtomicU64,
    /// Bytes of this file that went socket -> pipe -> file (the splice sink).
    spliced: AtomicU64,
    /// This fetch writes the file through the page cache though the sink is direct
    /// ([`WHOLE_BUFFERED_BELOW`]).
    whole_buffered: AtomicBool,
    /// The partial file was created empty (or emptied) by this fetch and holds no blocks yet:
    /// what it has allocated need not be asked of the filesystem (a `statx` per file).
    empty: AtomicBool,
    /// The file's turn for buffered writes and its cached stretches, shared by its sinks on
    /// every worker.
    sink_share: FileShare,
}

impl FileDownload {
    pub(crate) fn new(
        spec: FileSpec,
        settings: Arc<JobSettings>,
        (progress, window): (Arc<JobProgress>, Arc<Window>),
        (started, endpoints): (Instant, Arc<Endpoints>),
    ) -> FileDownload {
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
            journal: spec.journal,
            journal_id: AtomicU64::new(0),
            resumed_bytes: AtomicU64::new(0),
            spliced: AtomicU64::new(0),
            whole_buffered: AtomicBool::new(false),
            empty: AtomicBool::new(false),
            sink_share: FileShare::new(),
        }
    }

    /// The journal key of this file (its size and digest) when the job journals it.
    fn journal_key(&self) -> Option<(&Journal, u64, String)> {
        let journal = self.journal.as_deref()?;
        Some((journal, self.size_hint?, self.checksum?.to_string()))
    }

    /// Records that `len` bytes at `at` are written (the write completed).
    pub(crate) fn journal_written(&self, at: u64, len: u64) {
        let Some(journal) = &self.journal else {
            return;
        };
        let id = self.journal_id.load(Ordering::Relaxed);
        if id != 0 && len > 0 {
            journal.written(id, at..at + len);
        }
    }

    /// Starts a fresh journal record of this file (before it is emptied).
    fn journal_fresh(&self) {
        if let Some((journal, size, digest)) = self.journal_key() {
            let id = journal.start(&self.output, size, &digest);
            self.journal_id.store(id, Ordering::Relaxed);
        }
    }

    /// What an earlier run wrote of this file and the journal vouches for (only on the first
    /// fetch of this job: a second fetch follows a mismatch, and starts over).
    fn journal_resumable(&self) -> Option<(u64, Vec<Range<u64>>)> {
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
    fn take_over(&self, ranges: &[Range<u64>]) {
        let n: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.add_done(n);
        self.resumed_bytes.store(n, Ordering::Relaxed);
        if let (Some(v), Some(wake)) = self.verifier() {
            for r in ranges {
                v.written_elsewhere(r.start, r.end - r.start);
            }
            let _ = wake.try_send(());
        }
    }

    /// The earlier run's bytes cannot be used (the server answered with the whole file, or
    /// another size): start the journal over and empty the file.
    fn drop_resumed(&self, file: &File) -> Result<(), GetError> {
        self.journal_fresh();
        rustix::fs::ftruncate(file, 0).map_err(|e| GetError::Io {
            op: "truncate",
            path: self.incomplete.clone(),
            source: e.into(),
        })?;
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
    async fn wait_for_space(&self, file: &File, len: u64) -> Result<u64, GetError> {
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

    /// The endpoint ids of the sources still asked for this file, and their source indices.
    fn candidates(&self) -> (Vec<usize>, Vec<usize>) {
        self.sources
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.refused.load(Ordering::Relaxed))
            .map(|(i, s)| (s.endpoint, i))
            .unzip()
    }

    /// The source lane `lane` asks next (see [`Endpoints::pick`]).
    fn pick(&self, lane: usize) -> usize {
        if self.sources.len() == 1 {
            return 0;
        }
        let (endpoints, indices) = self.candidates();
        if indices.is_empty() {
            return 0;
        }
        indices[self.endpoints.pick(&endpoints, lane, Instant::now())]
    }

    /// A request to source `src` failed with `error`: with mirrors, its endpoint is put aside
    /// for a while, and for an error no retry cures the source is not asked for this file
    /// again. `Some(next)`: another source can be asked at once (the endpoint to name).
    fn source_failed(&self, src: usize, error: &GetError) -> Option<String> {
        if self.sources.len() == 1 {
            return None;
        }
        let now = Instant::now();
        let source = &self.sources[src];
        if matches!(crate::retry::for_error(error), Verdict::Fail) {
            // This source cannot give this file; its endpoint may be fine for others.
            source.refused.store(true, Ordering::Relaxed);
        } else {
            self.endpoints.failed(source.endpoint, now);
        }
        let (_, indices) = self.candidates();
        indices
            .into_iter()
            .find(|&i| i != src && self.endpoints.usable(self.sources[i].endpoint, now))
            .map(|i| self.sources[i].label())
    }

    /// With mirrors: the bytes of this file each endpoint served, with the job's failures and
    /// demotions.
    fn endpoint_report(&self) -> Vec<EndpointReport> {
        if self.sources.len() == 1 {
            return Vec::new();
        }
        let job = self.endpoints.report();
        self.sources
            .iter()
            .map(|s| EndpointReport {
                bytes: s.served.load(Ordering::Relaxed),
                ..job[s.endpoint].clone()
            })
            .collect()
    }

    /// `bytes` of this file came from source `src` in `elapsed` of reading (waits for buffers
    /// and disk not counted: they are ours, not the endpoint's); `complete` when the whole
    /// range arrived (only those measure the endpoint's throughput).
    fn served(&self, src: usize, bytes: u64, elapsed: Duration, complete: bool) {
        let source = &self.sources[src];
        source.served.fetch_add(bytes, Ordering::Relaxed);
        if self.sources.len() == 1 {
            return;
        }
        if !complete {
            self.endpoints.partial(source.endpoint, bytes);
        } else if let Some(line) = self.endpoints.served(source.endpoint, bytes, elapsed) {
            tracing::warn!("{line}");
        }
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
    fn sink_used(&self) -> (SinkKind, String) {
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
    fn set_total(&self, n: u64) {
        let was = self.total.swap(n, Ordering::Relaxed);
        self.progress.size_known(self.size_hint, was, n);
    }

    /// Records the first failure and tells every lane on this file to stop.
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

    /// What the file offers a free lane now (`None` before it has a plan).
    pub(crate) fn offer(&self) -> Option<crate::plan::files::Offer> {
        if self.is_aborted() {
            return None;
        }
        self.with_plan(|p| crate::plan::files::Offer {
            frontier_left: p.frontier_left(),
            has_work: p.has_work(),
        })
    }

    fn take_lease(&self) -> Option<(LeaseId, Range<u64>)> {
        if self.is_aborted() {
            return None;
        }
        self.with_plan(|p| p.take().map(|(id, r, _)| (id, r)))
            .flatten()
    }

    /// How many of `want` bytes the holder of `lease`, now at `at`, may still read.
    pub(crate) fn reserve(&self, lease: LeaseId, at: u64, want: u64) -> u64 {
        self.with_plan(|p| p.reserve(lease, at, want)).unwrap_or(0)
    }

    /// The verifier of the current fetch and the waker of its read-back task (when hashing).
    pub(crate) fn verifier(&self) -> (Option<Arc<Verifier>>, Option<flume::Sender<()>>) {
        match &*self.verify.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((v, wake)) => (Some(Arc::clone(v)), Some(wake.clone())),
            None => (None, None),
        }
    }

    async fn open_file(&self) -> Result<File, GetError> {
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
    async fn open_sink(&self, created: Option<File>) -> Result<FileSink, GetError> {
        self.open_sink_as(created, self.sink.kind).await
    }

    /// The sink of a file whose `len` bytes all come in the answer at hand, on the lane that
    /// created it: buffered when it is small ([`WHOLE_BUFFERED_BELOW`]), the file's sink
    /// otherwise.
    async fn open_whole_sink(&self, created: File, len: u64) -> Result<FileSink, GetError> {
        let small = self.sink.kind == SinkKind::Direct && len < WHOLE_BUFFERED_BELOW;
        self.whole_buffered.store(small, Ordering::Relaxed);
        let kind = if small {
            SinkKind::Buffered
        } else {
            self.sink.kind
        };
        self.open_sink_as(Some(created), kind).await
    }

    async fn open_sink_as(
        &self,
        created: Option<File>,
        kind: SinkKind,
    ) -> Result<FileSink, GetError> {
        let share = self.sink_share.clone();
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

    /// Creates (or empties) `PATH.incomplete` and clears what an earlier fetch left behind, or,
    /// when the journal vouches for what an earlier run wrote, opens it as it is and returns
    /// those ranges (the first answer decides whether they are kept); starts the read-back task
    /// when hashing. Runs on the lane that starts the file, which gets the file back (for
    /// `fallocate`, and as its sink's buffered descriptor).
    async fn begin_fetch(self: &Arc<Self>) -> Result<(File, Vec<Range<u64>>), GetError> {
        let resumed = match self.journal_resumable() {
            Some((id, ranges)) => {
                self.journal_id.store(id, Ordering::Relaxed);
                ranges
            }
            None => {
                self.journal_fresh();
                Vec::new()
            }
        };
        self.resumed_bytes.store(0, Ordering::Relaxed);
        self.whole_buffered.store(false, Ordering::Relaxed);
        // An io_uring op (OPENAT) on the uring back-end: creating files contends with journal
        // commits of other files' fsyncs, and must not stall the worker meanwhile.
        let file = self.partial.create(resumed.is_empty()).await?;
        self.empty.store(resumed.is_empty(), Ordering::Relaxed);
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let before = self.done.swap(0, Ordering::Relaxed);
        self.progress.done.fetch_sub(before, Ordering::Relaxed);
        self.aborted.store(false, Ordering::Relaxed);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        if let Some(checksum) = self.checksum {
            // A git blob id hashes the length first: the job requires it stated up front.
            let len = self.size_hint.unwrap_or(0);
            let v = Arc::new(Verifier::new(
                Arc::clone(&self.window),
                checksum.algorithm(),
                len,
            ));
            let (wake_tx, wake_rx) = flume::bounded(1);
            let (done_tx, done_rx) = flume::bounded(1);
            *self.verify.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Arc::clone(&v), wake_tx));
            *self.read_back.lock().unwrap_or_else(|p| p.into_inner()) = Some(done_rx);
            let ctx = Arc::clone(self);
            compio::runtime::spawn(async move {
                let _ = done_tx.send(read_back_loop(&ctx, &v, wake_rx).await);
            })
            .detach();
        }
        Ok((file, resumed))
    }
}

/// Hashes, in file order, the written bytes that left memory before the prefix reached them.
async fn read_back_loop(
    ctx: &FileDownload,
    verifier: &Verifier,
    wake: flume::Receiver<()>,
) -> Result<(), GetError> {
    let mut sink = None;
    let mut buf = None;
    loop {
        while let Some(claim) = verifier.claim_read_back(READ_BACK) {
            if ctx.is_aborted() {
                return Ok(());
            }
            // Opened on first use: most files never need it.
            if sink.is_none() {
                sink = Some(ctx.open_sink(None).await?);
            }
            let sink = sink.as_ref().expect("opened above");
            let align = sink.align().max(1);
            let b = buf
                .take()
                .unwrap_or_else(|| AlignedBuf::new((READ_BACK + 2 * align) as usize));
            let (start, len) = (claim.range.start, claim.range.end - claim.range.start);
            let (res, back) = sink.read_back(b, start, len).await;
            let skip = res.map_err(|source| GetError::Io {
                op: "read back for sha256",
                path: ctx.incomplete.clone(),
                source,
            })?;
            verifier
                .complete_read_back(claim, &back.bytes()[skip..skip + len as usize])
                .hash_all();
            buf = Some(back);
        }
        if wake.recv_async().await.is_err() {
            // Every writer is gone; whatever they recorded last was claimed above.
            if !verifier.has_read_back() {
                return Ok(());
            }
        }
    }
}

/// One of a job's connection lanes, as the data plane sees it: its number (which spreads the
/// lanes over a file's sources) and its kept-alive connection.
struct Lane {
    id: usize,
    conn: Option<Conn>,
}

/// What became of a file after the first answer, for the lane that asked.
enum Opened {
    /// Ranged: the lane continues with the first lease, then takes more from the plan (which
    /// may offer work to other lanes).
    Ranged {
        conn: Conn,
        pipe: Pipeline,
        first: LeaseId,
        range: Range<u64>,
        /// The source that answered.
        src: usize,
    },
    /// One stream (the server ignored `Range`, or gave no length): the lane copies it alone.
    Stream {
        conn: Conn,
        framing: Framing,
        created: File,
        src: usize,
    },
    /// Nothing more to fetch (an empty file).
    Empty,
}

/// Sends the first request of a file (following redirects) on `lane`'s connection when it goes
/// to the right host, on a new one otherwise, and sets the file up from the answer.
async fn open(ctx: &Arc<FileDownload>, lane: &mut Lane) -> Result<Opened, GetError> {
    if ctx.progress.interrupted() {
        return Err(GetError::Interrupted);
    }
    let (created, mut resumed) = ctx.begin_fetch().await?;
    if let Some(size) = ctx.size_hint {
        // Before connecting: a file that does not fit waits here, not with a connection open.
        ctx.wait_for_space(&created, size).await?;
    }
    let first_len = ctx.settings.chunk.unwrap_or(FIRST_CHUNK).max(1);
    // A resumed file starts at its first missing byte.
    let first = match (resumed.is_empty(), ctx.size_hint) {
        (false, Some(size)) => match crate::plan::gaps(&resumed, size).first() {
            Some(g) => g.start..(g.start + first_len).min(g.end),
            None => {
                // Every byte is on disk already: only the hash is left to check.
                ctx.set_total(size);
                ctx.take_over(&resumed);
                return Ok(Opened::Empty);
            }
        },
        _ => 0..first_len,
    };
    // The first answer, retried as the table in `crate::retry` says; with mirrors, a
    // failure moves on to another source at once.
    let mut failures = 0;
    let budget = crate::plan::MAX_RETRIES * ctx.sources.len() as u32;
    // With a 206, the file's size it states (checked here: a 206 for another range than the
    // one asked is not used, but asked again like a failure).
    let (conn, src, head, partial_total) = loop {
        let src = ctx.pick(lane.id);
        let answer = ask(ctx, lane, src, &first, true)
            .await
            .and_then(|(conn, head)| {
                let total = match head.status {
                    206 => Some(check_partial(ctx, &head, first.start, first.end - 1, None)?),
                    _ => None,
                };
                Ok((conn, head, total))
            });
        match answer {
            Ok((conn, head, total)) => break (conn, src, head, total),
            Err(e) => {
                let next = ctx.source_failed(src, &e);
                // Nothing listens there: a wrong host or port, said at once rather than after
                // minutes of retries. (Once bytes flowed, a refusal is retried: a server
                // restarting.)
                if next.is_none() && (is_refused(&e) || ctx.candidates().1.is_empty()) {
                    return Err(e);
                }
                failures += 1;
                if failures > budget {
                    return Err(e);
                }
                match next {
                    Some(next) => tracing::warn!("{e}; asking {next} instead"),
                    None if !wait_to_retry(&e, failures).await => return Err(e),
                    None => {}
                }
                ctx.retries.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let framing = framing_of(ctx.target(), &head)?;
    // An answer larger than the listed size is refused before anything is reserved or written.
    let stated = match (head.status, partial_total, framing) {
        (206, Some(total), _) => Some(total),
        (200, _, Framing::Length(n)) => Some(n),
        _ => None,
    };
    if let (Some(listed), Some(stated)) = (ctx.size_hint, stated)
        && stated > listed
    {
        return Err(GetError::LargerThanListed {
            url: ctx.target().display.clone(),
            listed,
            stated,
        });
    }
    match (head.status, partial_total) {
        (206, Some(total)) => {
            if !resumed.is_empty() && ctx.size_hint != Some(total) {
                tracing::warn!(
                    url = %ctx.target().display,
                    "the file has {total} bytes, not the {:?} its journal expected; fetching it all",
                    ctx.size_hint
                );
                ctx.drop_resumed(&created)?;
                resumed.clear();
            }
            let first_end = first.end.min(total);
            check_length(ctx, framing, first.start..first_end)?;
            let sink = if first.start > 0 || total > first_end {
                preallocate(ctx, &created, total).await?;
                ctx.open_sink(Some(created)).await?
            } else {
                // The whole file is in this answer: one write, nothing to reserve. A size known
                // up front was checked before the request, a moment ago.
                if ctx.size_hint != Some(total) {
                    ctx.wait_for_space(&created, total).await?;
                }
                ctx.set_total(total);
                ctx.open_whole_sink(created, total).await?
            };
            let pipe = Pipeline::new(ctx, sink);
            let todo = crate::plan::gaps(&resumed, total);
            let mut plan =
                Plan::with_gaps(total, todo, ctx.settings.connections, ctx.settings.chunk)
                    .with_sources(ctx.sources.len());
            if ctx.checksum.is_some() {
                plan = plan.spread_within(HASH_SPREAD);
            }
            let lease = plan.claim(first.start..first_end);
            *ctx.plan.lock().unwrap_or_else(|p| p.into_inner()) = Some(plan);
            ctx.take_over(&resumed);
            Ok(Opened::Ranged {
                conn,
                pipe,
                first: lease,
                range: first.start..first_end,
                src,
            })
        }
        (200, _) => {
            if !resumed.is_empty() {
                tracing::info!(
                    url = %ctx.target().display,
                    "the server sends the whole file (no ranges); the earlier run's bytes are not used"
                );
                ctx.drop_resumed(&created)?;
            }
            if let Framing::Length(n) = framing {
                preallocate(ctx, &created, n).await?;
            }
            Ok(Opened::Stream {
                conn,
                framing,
                created,
                src,
            })
        }
        (416, _) => match head.header("content-range").and_then(parse_content_range) {
            Some(ContentRange::Unsatisfied { total: 0 }) => {
                ctx.set_total(0);
                lane.conn = Some(conn);
                Ok(Opened::Empty)
            }
            _ => Err(status_error(ctx.target(), &head)),
        },
        _ => Err(status_error(ctx.target(), &head)),
    }
}

fn is_refused(e: &GetError) -> bool {
    matches!(e, GetError::Connect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Asks source `src` for `range` on the lane's connection when it goes there, on a new one
/// otherwise, following redirects (from the URL as given when `from_origin`, else from where
/// its redirects led before) and keeping where they led. A final status worth retrying comes
/// back as an error, like a failed connection.
async fn ask(
    ctx: &Arc<FileDownload>,
    lane: &mut Lane,
    src: usize,
    range: &Range<u64>,
    from_origin: bool,
) -> Result<(Conn, ResponseHead), GetError> {
    let source = &ctx.sources[src];
    let mut target = if from_origin {
        source.origin.clone()
    } else {
        source.target().clone()
    };
    let mut conn = match lane.conn.take() {
        Some(c) if c.serves(&target) => c,
        _ => Conn::open(&target).await?,
    };
    let mut redirects = 0;
    let mut resolved = Resolver::new(target.dialer.clone());
    let head = loop {
        let head = conn.request(&target, Some(range.clone())).await?;
        if !crate::http1::is_redirect(head.status) {
            break head;
        }
        redirects += 1;
        let next = redirect_target(&target, &head, redirects, &mut resolved)?;
        let framing = framing_of(&target, &head)?;
        let same_host = next.addrs == target.addrs
            && next.tls_host == target.tls_host
            && next.route == target.route;
        if same_host && conn.is_reusable() {
            conn.discard_body(framing).await;
        }
        if !same_host || !conn.is_reusable() {
            conn = Conn::open(&next).await?;
        }
        target = next;
    };
    // ferry asks for no encoding: an encoded body would be saved as it came, not as the file.
    if let Some(encoding) = head.header("content-encoding")
        && !encoding.trim().eq_ignore_ascii_case("identity")
        && (200..300).contains(&head.status)
    {
        return Err(GetError::Protocol {
            url: target.display.clone(),
            detail: format!(
                "the answer is encoded (Content-Encoding: {encoding}), which ferry did not ask \
                 for; refused rather than saved encoded"
            ),
        });
    }
    // Statuses worth retrying come back as errors, and so do refusals (a mirror without the
    // file: the next source is asked); 416 is judged by the caller (an empty file).
    if crate::retry::retryable_status(head.status) || (head.status >= 400 && head.status != 416) {
        return Err(GetError::Status {
            url: target.display.clone(),
            status: head.status,
            reason: head.reason.clone(),
            retry_after: crate::retry::asked_wait(&head),
        });
    }
    // Later ranges go to the final URL.
    if target.url != source.origin.url && source.redirected.get().is_none() {
        tracing::debug!(from = %source.origin.display, to = %target.display, "followed redirect");
        let _ = source.redirected.set(target);
    }
    Ok((conn, head))
}

/// Copies the first lease of a ranged file, then takes leases like any other lane.
async fn run_ranged(
    ctx: &Arc<FileDownload>,
    lane: &mut Lane,
    mut conn: Conn,
    mut pipe: Pipeline,
    (first, range, src): (LeaseId, Range<u64>, usize),
) {
    ctx.used_connections.fetch_add(1, Ordering::Relaxed);
    let end = copy_counted(ctx, &mut conn, &mut pipe, (first, range.clone()), src).await;
    let go_on = match end {
        Ok(end) => lease_ended(ctx, first, range, end),
        Err(e) => Err(e),
    };
    lane.conn = Some(conn);
    match go_on {
        Ok(Ended::Next | Ended::Retry) => take_leases(ctx, lane, pipe).await,
        Ok(Ended::Stop) => drain(ctx, pipe).await,
        Err(e) => {
            ctx.fail(e);
            drain(ctx, pipe).await;
        }
    }
}

/// A lane joining a ranged file that another lane opened.
async fn help(ctx: &Arc<FileDownload>, lane: &mut Lane) {
    ctx.used_connections.fetch_add(1, Ordering::Relaxed);
    match ctx.open_sink(None).await {
        Ok(sink) => take_leases(ctx, lane, Pipeline::new(ctx, sink)).await,
        Err(e) => ctx.fail(e),
    }
}

/// Takes leases until none are left, then waits for this lane's writes.
async fn take_leases(ctx: &Arc<FileDownload>, lane: &mut Lane, mut pipe: Pipeline) {
    if let Err(e) = range_loop(ctx, lane, &mut pipe).await {
        ctx.fail(e);
    }
    drain(ctx, pipe).await;
}

/// Waits for a lane's writes on the file; a failed write fails the file.
async fn drain(ctx: &FileDownload, mut pipe: Pipeline) {
    if let Err(e) = pipe.drain().await {
        ctx.fail(e);
    }
}

/// Copies a file that comes as one stream.
async fn run_stream(
    ctx: &Arc<FileDownload>,
    lane: &mut Lane,
    (mut conn, framing, src): (Conn, Framing, usize),
    created: File,
) {
    ctx.used_connections.fetch_add(1, Ordering::Relaxed);
    let result = single_stream(ctx, &mut conn, (framing, src), created).await;
    lane.conn = Some(conn);
    if let Err(e) = result {
        ctx.fail(e);
    }
}

/// What the last lane to leave a file does with it.
enum Settled {
    /// The file is durable under its final name, or failed (and nothing is under its name).
    Done(Box<Result<Report, GetError>>),
    /// Its sha256 did not match: fetch it again.
    Again,
}

/// Settles a file once no lane works on it any more: checks the hash, makes it durable, or
/// cleans up after a failure.
async fn settle(ctx: &Arc<FileDownload>) -> Settled {
    if let Some((retries, splits)) = ctx.with_plan(|p| (p.retries(), p.splits())) {
        ctx.retries.fetch_add(u64::from(retries), Ordering::Relaxed);
        ctx.splits.fetch_add(splits, Ordering::Relaxed);
    }
    let result = verify(ctx).await;
    let result = match result {
        Ok(Verified::Mismatch) => return Settled::Again,
        Ok(Verified::Ok(hash)) => finish(ctx, hash).await,
        Err(e) => Err(e),
    };
    match &result {
        // Another process's file: not ours to touch.
        Err(GetError::OutputBusy { .. }) => {}
        // What an earlier run or this one wrote stays for the next run to resume, unless it
        // proved wrong.
        Err(e)
            if ctx.journal_id.load(Ordering::Relaxed) != 0
                && !matches!(e, GetError::ChecksumMismatch { .. }) =>
        {
            ctx.partial.release();
        }
        Err(_) => {
            ctx.journal_fresh();
            ctx.partial.discard();
        }
        Ok(_) => {}
    }
    Settled::Done(Box::new(result))
}

enum Verified {
    Ok(Option<(Checksum, HashStats)>),
    Mismatch,
}

async fn verify(ctx: &FileDownload) -> Result<Verified, GetError> {
    // Every lane is done: dropping the last waker lets the read-back task finish.
    let verifier = ctx
        .verify
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .map(|(v, _)| v);
    let read_back = ctx
        .read_back
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(rx) = read_back {
        match rx.recv_async().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => ctx.fail(e),
            Err(_) => ctx.fail(GetError::EngineStopped),
        }
    }
    if let Some(e) = ctx.take_error() {
        return Err(e);
    }
    if ctx.progress.interrupted()
        && ctx.done.load(Ordering::Relaxed) != ctx.total.load(Ordering::Relaxed)
    {
        // The lanes stopped early (an unknown size never equals the bytes written).
        return Err(GetError::Interrupted);
    }
    let Some(verifier) = verifier else {
        return Ok(Verified::Ok(None));
    };
    let total = ctx.total.load(Ordering::Relaxed);
    if verifier.prefix() != total {
        return Err(GetError::Io {
            op: "verify",
            path: ctx.incomplete.clone(),
            source: std::io::Error::other(format!("hashed {} of {total} bytes", verifier.prefix())),
        });
    }
    let (got, stats) = verifier.finish();
    let expected = ctx.checksum.expect("hashing only with a digest");
    if got == expected {
        return Ok(Verified::Ok(Some((got, stats))));
    }
    let fetch = ctx.fetches.load(Ordering::Relaxed);
    if fetch >= MAX_FETCHES {
        return Err(GetError::ChecksumMismatch {
            url: ctx.target().display.clone(),
            algorithm: expected.algorithm(),
            expected: expected.to_string(),
            got: got.to_string(),
            attempts: fetch,
        });
    }
    tracing::warn!(
        url = %ctx.target().display,
        %expected,
        %got,
        "checksum mismatch; fetching the file again"
    );
    Ok(Verified::Mismatch)
}

/// How the body of `head`, an answer from `target`, is framed.
fn framing_of(target: &Target, head: &ResponseHead) -> Result<Framing, GetError> {
    head.framing().map_err(|e| GetError::Protocol {
        url: target.display.clone(),
        detail: e.to_string(),
    })
}

fn status_error(target: &Target, head: &ResponseHead) -> GetError {
    GetError::Status {
        url: target.display.clone(),
        status: head.status,
        reason: head.reason.clone(),
        retry_after: crate::retry::asked_wait(head),
    }
}

/// Checks a 206 against the range asked for; returns the total size it states.
fn check_partial(
    ctx: &FileDownload,
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
            return Err(GetError::RangeIgnored {
                url: ctx.target().display.clone(),
                asked_first: first,
                asked_last: last,
            });
        }
        return Err(status_error(ctx.target(), head));
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

async fn preallocate(ctx: &FileDownload, file: &File, len: u64) -> Result<(), GetError> {
    ctx.set_total(len);
    if len == 0 {
        return Ok(());
    }
    let mut need = ctx.wait_for_space(file, len).await?;
    let mut looked_again = false;
    loop {
        // A ring op on io_uring: reserving a large file's extents does not stall the worker.
        match crate::backend::fileop::fallocate(file.to_shared_fd(), len).await {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                ) =>
            {
                // No fallocate on this filesystem (or no such ring op): set the size instead.
                return rustix::fs::ftruncate(file, len)
                    .map_err(|e| ctx.io_error("set_len", e.into()));
            }
            // Another process took the space between the look and the reservation: wait for
            // space again, once.
            Err(e) if space::is_full(&e) && !looked_again => {
                looked_again = true;
                // The failed reservation may have kept some blocks.
                ctx.empty.store(false, Ordering::Relaxed);
                need = ctx.wait_for_space(file, len).await?;
            }
            Err(e) if space::is_full(&e) => {
                return Err(ctx.settings.space.full(parent_dir(&ctx.incomplete), need));
            }
            Err(e) => return Err(ctx.io_error("fallocate", e)),
        }
    }
}

/// A ranged answer must carry exactly the bytes of its range.
fn check_length(ctx: &FileDownload, framing: Framing, range: Range<u64>) -> Result<(), GetError> {
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
fn lease_ended(
    ctx: &FileDownload,
    id: LeaseId,
    range: Range<u64>,
    end: BodyEnd,
) -> Result<Ended, GetError> {
    match end {
        BodyEnd::Complete | BodyEnd::Trimmed => {
            ctx.with_plan(|p| p.complete(id));
            Ok(Ended::Next)
        }
        BodyEnd::Aborted => Ok(Ended::Stop),
        BodyEnd::Short { at, error } => {
            let given_back = ctx.with_plan(|p| p.give_back(id, at)).unwrap_or(Err(()));
            let error = error.unwrap_or_else(|| ctx.sources[0].short_body(&range, at));
            match given_back {
                Ok(lease_end) => {
                    tracing::debug!("{error}; fetching bytes {at}-{lease_end} again");
                    Ok(Ended::Retry)
                }
                Err(()) => Err(error),
            }
        }
    }
}

/// How a lease went, for the lane that held it.
enum Ended {
    /// Done: take the next one.
    Next,
    /// The body stopped short; the rest went back to the plan, for a fresh connection.
    Retry,
    /// The job is stopping.
    Stop,
}

/// Waits before the `failures`-th retry in a row after `e`, as the table in [`crate::retry`]
/// says (what the server asked, else a backoff), saying so. `false`: `e` is not retried, or the
/// server asked for a longer wait than ferry gives.
async fn wait_to_retry(e: &GetError, failures: u32) -> bool {
    let Verdict::Retry { wait } = crate::retry::for_error(e) else {
        return false;
    };
    let Some(wait) = crate::retry::wait_for(failures, wait) else {
        return false;
    };
    tracing::warn!("{e}; asking again in {:.1} s", wait.as_secs_f64());
    compio::time::sleep(wait).await;
    true
}

/// Takes leases from the plan until none are left, on the lane's connection (replaced when it
/// breaks or goes elsewhere).
async fn range_loop(
    ctx: &Arc<FileDownload>,
    lane: &mut Lane,
    pipe: &mut Pipeline,
) -> Result<(), GetError> {
    let total = ctx.total.load(Ordering::Relaxed);
    // Failures in a row on this lane: each retry waits longer.
    let mut failures = 0;
    while let Some((id, range)) = ctx.take_lease() {
        let src = ctx.pick(lane.id);
        match lease(ctx, lane, pipe, (id, range.clone(), src), total).await {
            // The plan has the lease back (or the retries ran out, which fails the file).
            Ok(end) => match lease_ended(ctx, id, range, end)? {
                Ended::Next => failures = 0,
                Ended::Stop => break,
                Ended::Retry => lane.conn = None,
            },
            Err(e) => {
                // Nothing of this lease was written: all of it goes back, within the file's
                // retry budget, when the table says another try may do better, or another
                // source can be asked.
                let next = ctx.source_failed(src, &e);
                let retryable = matches!(crate::retry::for_error(&e), Verdict::Retry { .. });
                if !(retryable || next.is_some())
                    || !matches!(ctx.with_plan(|p| p.give_back(id, range.start)), Some(Ok(_)))
                {
                    return Err(e);
                }
                lane.conn = None;
                failures += 1;
                match next {
                    Some(next) => {
                        tracing::warn!("{e}; asking {next} instead");
                        ctx.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    None if !wait_to_retry(&e, failures).await => return Err(e),
                    None => {}
                }
            }
        }
    }
    Ok(())
}

/// One lease from source `src`, on the lane's connection when it goes there (a fresh one
/// otherwise). An error means no byte of the lease was taken, and the lease is still the
/// lane's.
async fn lease(
    ctx: &Arc<FileDownload>,
    lane: &mut Lane,
    pipe: &mut Pipeline,
    (id, range, src): (LeaseId, Range<u64>, usize),
    total: u64,
) -> Result<BodyEnd, GetError> {
    let (conn, head) = ask(ctx, lane, src, &range, false).await?;
    let c = lane.conn.insert(conn);
    let target = ctx.sources[src].target();
    check_partial(ctx, &head, range.start, range.end - 1, Some(total))?;
    check_length(ctx, framing_of(target, &head)?, range.clone())?;
    copy_counted(ctx, c, pipe, (id, range), src).await
}

/// Copies a lease's body, counting what it brought for its source.
async fn copy_counted(
    ctx: &Arc<FileDownload>,
    conn: &mut Conn,
    pipe: &mut Pipeline,
    (id, range): (LeaseId, Range<u64>),
    src: usize,
) -> Result<BodyEnd, GetError> {
    let before = (conn.body_bytes(), conn.read_time());
    let end = conn.copy_lease(ctx, pipe, id, range.clone()).await;
    let complete = matches!(end, Ok(BodyEnd::Complete));
    // A body cut or stalled: its source is put aside like one that failed to answer, and the
    // error names that source.
    let end = match end {
        Ok(BodyEnd::Short { at, error }) => {
            let error = error.unwrap_or_else(|| ctx.sources[src].short_body(&range, at));
            ctx.source_failed(src, &error);
            Ok(BodyEnd::Short {
                at,
                error: Some(error),
            })
        }
        other => other,
    };
    let (bytes, time) = (conn.body_bytes() - before.0, conn.read_time() - before.1);
    ctx.served(src, bytes, time, complete);
    end
}

async fn single_stream(
    ctx: &Arc<FileDownload>,
    conn: &mut Conn,
    (framing, src): (Framing, usize),
    created: File,
) -> Result<(), GetError> {
    let sink = match framing {
        Framing::Length(n) => ctx.open_whole_sink(created, n).await?,
        _ => ctx.open_sink(Some(created)).await?,
    };
    let mut pipe = Pipeline::new(ctx, sink);
    let before = (conn.body_bytes(), conn.read_time());
    let copied = conn.copy_stream(ctx, &mut pipe, framing).await;
    let complete = matches!(copied, Ok(Some(_)));
    let (bytes, time) = (conn.body_bytes() - before.0, conn.read_time() - before.1);
    ctx.served(src, bytes, time, complete);
    let drained = pipe.drain().await;
    if let Some(n) = copied? {
        ctx.set_total(n);
    }
    drained
}

/// Makes the file durable and gives it its final name. The directory entry is made durable
/// by the job, once per directory, when the job ends.
async fn finish(
    ctx: &FileDownload,
    hash: Option<(Checksum, HashStats)>,
) -> Result<Report, GetError> {
    let total = ctx.total.load(Ordering::Relaxed);
    let done = ctx.done.load(Ordering::Relaxed);
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
    ctx.settings
        .durable
        .commit(&file, ctx.sink.syncfs)
        .await
        .map_err(|source| ctx.io_error("fsync", source))?;
    ctx.partial.publish().map_err(|source| GetError::Io {
        op: "rename",
        path: ctx.output.clone(),
        source,
    })?;
    if let Some((digest, _)) = &hash {
        // After the rename: the mark must be the inode's last change (see `verify::mark`). It
        // is not made durable; lost in a crash, it only costs a hash.
        crate::verify::mark::set(&file, digest);
    }
    drop(file);
    let seconds = ctx.started.elapsed().as_secs_f64();
    let (sink, sink_reason) = ctx.sink_used();
    Ok(Report {
        url: ctx.sources[0].origin.display.clone(),
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
        url_final: ctx.sources[0].redirected.get().map(|t| t.display.clone()),
        sink,
        sink_reason,
        verified: hash.map(|(digest, stats)| HashReport {
            algorithm: digest.algorithm(),
            digest: digest.to_string(),
            from_memory: stats.from_memory,
            read_back: stats.read_back,
        }),
        fetches: ctx.fetches.load(Ordering::Relaxed),
        resumed: ctx.resumed_bytes.load(Ordering::Relaxed),
        retries: ctx.retries.load(Ordering::Relaxed),
        splits: ctx.splits.load(Ordering::Relaxed),
        written_fixed: ctx.sink_share.written_fixed(),
        endpoints: ctx.endpoint_report(),
    })
}

/// The directory a path lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Starts `items` as one job on `engine`'s workers, after checking every item (checksum, URL,
/// credential, output) before anything is sent. `journal`: a pull's resume journal.
pub(crate) fn start(
    engine: &Engine,
    items: Vec<GetItem>,
    journal: Option<Arc<Journal>>,
) -> Result<Job, GetError> {
    let started = Instant::now();
    let items: Vec<GetItem> = items.into_iter().collect();
    if items.is_empty() {
        return Err(GetError::NothingToDo);
    }
    let mut resolved = Resolver::new(engine.dialer().clone());
    let mut outputs = std::collections::HashMap::new();
    let mut dirs_ok = std::collections::HashSet::new();
    let mut dirs: std::collections::HashMap<PathBuf, Dir> = std::collections::HashMap::new();
    let cwd = std::env::current_dir().ok();
    let counters = Arc::new(JobProgress::new(
        items.len() as u64,
        Arc::clone(engine.interrupted()),
    ));
    let settings = Arc::new(JobSettings {
        connections: engine.config().connections.max(1),
        chunk: engine.config().chunk_size,
        staging: engine
            .config()
            .buffer_size
            .max(crate::backend::buf::BUF_ALIGN),
        depth: engine.config().write_depth.max(1),
        backend: engine.selection().backend,
        backend_reason: engine.selection().reason.clone(),
        threads: engine.workers().len(),
        space: space::JobSpace::new(engine.config().min_free, engine.config().space_wait),
        durable: durable::Durable::new(items.len() > 1),
    });
    let window = Window::new(HASH_WINDOW);
    let endpoints = Arc::new(sources::Endpoints::default());
    let mut files = Vec::with_capacity(items.len());
    for item in items {
        let checksum = match &item.checksum {
            Some((algorithm, hex)) => {
                Some(
                    Checksum::parse(*algorithm, hex).ok_or_else(|| GetError::InvalidChecksum {
                        algorithm: *algorithm,
                        given: hex.clone(),
                    })?,
                )
            }
            None => None,
        };
        if checksum.is_some_and(|c| c.algorithm() == crate::verify::HashAlgorithm::GitSha1)
            && item.size.is_none()
        {
            return Err(GetError::GitSha1WithoutSize { url: item.url });
        }
        let mut target = Target::new(&item.url, &mut resolved)?;
        if let Some(secret) = item.authorization {
            secret
                .check()
                .map_err(|detail| GetError::InvalidCredential { detail })?;
            target.authorization = Some(secret);
        }
        let mirrors = item
            .mirrors
            .iter()
            .map(|m| Target::new(m, &mut resolved))
            .collect::<Result<Vec<_>, _>>()?;
        check_output(&item.output, &mut dirs_ok)?;
        let absolute = match &cwd {
            Some(cwd) if item.output.is_relative() => cwd.join(&item.output),
            _ => item.output.clone(),
        };
        if outputs
            .insert(absolute.clone(), item.partial_suffix)
            .is_some()
        {
            return Err(GetError::DuplicateOutput { path: item.output });
        }
        let parent = parent_dir(&item.output);
        let dir = match dirs.get(parent) {
            Some(d) => d.clone(),
            None => {
                let d = open_output_dir(parent, item.root.as_deref())?;
                dirs.insert(parent.to_path_buf(), d.clone());
                d
            }
        };
        let sink = engine.sink_for(parent);
        let spec = FileSpec {
            target,
            mirrors,
            dir,
            partial_suffix: item.partial_suffix,
            output: item.output,
            sink,
            checksum,
            size: item.size,
            journal: journal.clone(),
        };
        files.push(Arc::new(FileDownload::new(
            spec,
            Arc::clone(&settings),
            (Arc::clone(&counters), Arc::clone(&window)),
            (started, Arc::clone(&endpoints)),
        )));
    }
    check_collisions(&outputs)?;
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let batch = Lanes::new(files, Arc::clone(&counters), settings.connections, done_tx);
    if batch.start(engine.dispatcher()) == 0 {
        return Err(GetError::EngineStopped);
    }
    Ok(Job::new(counters, done_rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_total_counts_each_size_once() {
        let c = JobProgress::new(3, Arc::default());
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
        let d = JobProgress::new(1, Arc::default());
        d.add_file(Some(50));
        d.size_known(Some(50), UNKNOWN_TOTAL, 60);
        assert_eq!(d.total.load(Ordering::Relaxed), 60);
    }
}
