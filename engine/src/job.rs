//! A job and what it is made of: the [`GetItem`]s it downloads, the [`Job`] handle that watches
//! it, and the [`Event`]s and [`Progress`] it reports.
//!
//! Invariant: a `Job` learns its results once, from the channel its lanes send on when the last
//! file is settled; progress is read from counters the lanes add to. Not here: how a job runs
//! (`download/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::download::{self, JobProgress};
use crate::error::GetError;
use crate::net::target::Secret;
use crate::report::Report;
use crate::verify::HashAlgorithm;

/// One download of a job ([`Engine::get_many`](crate::Engine::get_many)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GetItem {
    /// The URL (http://).
    pub url: String,
    /// The file to write; it appears only once complete (and verified, with a sha256).
    pub output: PathBuf,
    /// The digest the file must have (hex): a sha256 ([`GetItem::sha256`]), or a git
    /// blob id (which needs [`GetItem::size`]).
    pub checksum: Option<(HashAlgorithm, String)>,
    /// The size, when known up front (a listing states it): larger files start first, and
    /// progress has a total from the start.
    pub size: Option<u64>,
    /// `Authorization` for the URL's own origin only (never across a redirect to another).
    pub(crate) authorization: Option<Secret>,
    /// Other URLs with the same bytes ([`GetItem::mirror`]).
    pub mirrors: Vec<String>,
    /// A directory the output lies beneath, in which no symlink is followed (a repo's folder).
    pub(crate) root: Option<PathBuf>,
    /// What the partial file's name adds to the output's ([`download::PARTIAL_SUFFIX`] by default).
    pub(crate) partial_suffix: &'static str,
    /// Told of every write of the partial file as it completes (a mirror serving it meanwhile).
    pub(crate) watch: Option<Arc<dyn download::Watch>>,
    /// Every byte asked of the origin once: no lease is split (a mirror's upstream egress).
    pub(crate) once: bool,
    /// A scratch file read back and removed soon (an HLS segment): written through the page
    /// cache and not fsynced, so that one removed before writeback never reaches the disk.
    pub(crate) scratch: bool,
    /// Kept in memory when it fits this holding's budget, handed over there instead of renamed
    /// into place ([`crate::backend::held`]); written to `output`'s partial file otherwise.
    pub(crate) hold: Option<Arc<crate::backend::held::Holding>>,
    /// Only these bytes of the URL's resource are the file (an HLS byte range): every request
    /// asks for bytes inside it, and answers are judged as if the window were the whole file.
    pub(crate) window: Option<std::ops::Range<u64>>,
    /// Started in the order given, whatever its size (HLS segments, in the order of need).
    pub(crate) in_order: bool,
}

impl GetItem {
    /// Download `url` to `output`.
    pub fn new(url: impl Into<String>, output: impl AsRef<Path>) -> GetItem {
        GetItem {
            url: url.into(),
            output: output.as_ref().to_path_buf(),
            checksum: None,
            size: None,
            authorization: None,
            mirrors: Vec::new(),
            root: None,
            partial_suffix: download::PARTIAL_SUFFIX,
            watch: None,
            once: false,
            scratch: false,
            hold: None,
            window: None,
            in_order: false,
        }
    }

    /// Starts in the order given among the job's items, not by size (see the field).
    pub(crate) fn in_order(mut self) -> GetItem {
        self.in_order = true;
        self
    }

    /// The file is bytes `offset..offset + len` of the URL's resource (see the field); its size
    /// is `len`. A server that answers with the whole resource fails the file with
    /// [`GetError::RangesUnsupported`].
    pub(crate) fn window(mut self, offset: u64, len: u64) -> GetItem {
        self.window = Some(offset..offset.saturating_add(len));
        self.size = Some(len);
        self
    }

    /// The output is a scratch file: buffered, not fsynced (see the field).
    pub(crate) fn scratch(mut self) -> GetItem {
        self.scratch = true;
        self
    }

    /// The body is kept in memory when `holding` has room for it (see the field).
    pub(crate) fn hold(mut self, holding: Arc<crate::backend::held::Holding>) -> GetItem {
        self.hold = Some(holding);
        self
    }

    /// Asks the origin for every byte once: leases already asked for are never split.
    pub(crate) fn once(mut self) -> GetItem {
        self.once = true;
        self
    }

    /// `watch` is told of the partial file's writes as they complete.
    pub(crate) fn watch(mut self, watch: Arc<dyn download::Watch>) -> GetItem {
        self.watch = Some(watch);
        self
    }

    /// The partial file is `OUTPUT` + `suffix` (a pull's, which huggingface_hub never adopts).
    pub(crate) fn partial_suffix(mut self, suffix: &'static str) -> GetItem {
        self.partial_suffix = suffix;
        self
    }

    /// The output lies beneath `root`, and no symlink between the two is followed.
    pub(crate) fn beneath(mut self, root: impl Into<PathBuf>) -> GetItem {
        self.root = Some(root.into());
        self
    }

    /// Another URL serving the same bytes (repeatable). Ranges are spread over the URL and
    /// its mirrors; a range that fails or stalls on one moves to another, and a far slower
    /// one is demoted. The `Authorization` goes to the first URL's origin only; the
    /// checksum, when given, covers the bytes from all of them.
    pub fn mirror(mut self, url: impl Into<String>) -> GetItem {
        self.mirrors.push(url.into());
        self
    }

    /// Checks the file against this sha256 (64 hex digits). The hash follows the download in
    /// file order; a mismatch fetches the file once more, then fails with
    /// [`GetError::ChecksumMismatch`](crate::GetError::ChecksumMismatch) and leaves nothing
    /// under the final name.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ferry::{Config, Engine, GetItem};
    ///
    /// let engine = Engine::new(Config::default())?;
    /// let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    /// let item = GetItem::new("http://127.0.0.1:8080/abc", "abc").sha256(sha);
    /// let report = engine.get_many([item])?.wait()?;
    /// assert_eq!(report.verified.map(|h| h.digest).as_deref(), Some(sha));
    /// # Ok(())
    /// # }
    /// ```
    pub fn sha256(mut self, hex: impl Into<String>) -> GetItem {
        self.checksum = Some((HashAlgorithm::Sha256, hex.into()));
        self
    }

    /// Checks the file against this git blob id (`sha1("blob LEN\0" + bytes)`, how the
    /// Hugging Face Hub names files kept outside LFS). The size must be stated too.
    pub fn git_sha1(mut self, hex: impl Into<String>) -> GetItem {
        self.checksum = Some((HashAlgorithm::GitSha1, hex.into()));
        self
    }

    /// Sends `Authorization: Bearer TOKEN` to the URL's origin (scheme, host and port); a
    /// redirect elsewhere (a CDN) gets no token.
    pub fn bearer_token(mut self, token: impl Into<String>) -> GetItem {
        self.authorization = Some(Secret::bearer(&token.into()));
        self
    }

    /// The same credential for several items (a pull's files).
    pub(crate) fn authorization(mut self, authorization: Option<Secret>) -> GetItem {
        self.authorization = authorization;
        self
    }

    /// States the file's size up front.
    pub fn size(mut self, bytes: u64) -> GetItem {
        self.size = Some(bytes);
        self
    }
}

/// How far a job has come, in bytes across all its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Bytes written so far.
    pub done: u64,
    /// The bytes of the whole job, once every file's size is known (stated up front with
    /// [`GetItem::size`] or told by the server).
    pub total: Option<u64>,
    /// Files finished (successfully or not).
    pub files_done: u64,
    /// Files in the job.
    pub files: u64,
}

/// What a running job reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A progress snapshot.
    Progress(Progress),
}

/// Downloads in flight. [`Job::wait`] returns the [`Report`] of a one-file job,
/// [`Job::wait_all`] one result per file.
#[derive(Debug)]
pub struct Job {
    counters: Arc<JobProgress>,
    done: crossbeam_channel::Receiver<download::Results>,
    result: Option<download::Results>,
}

impl Job {
    /// The handle of a job whose lanes report on `done`.
    pub(crate) fn new(
        counters: Arc<JobProgress>,
        done: crossbeam_channel::Receiver<download::Results>,
    ) -> Job {
        Job {
            counters,
            done,
            result: None,
        }
    }

    /// A snapshot of the job's progress.
    pub fn progress(&self) -> Progress {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counters;
        Progress {
            done: c.done.load(Relaxed),
            total: (c.unknown.load(Relaxed) == 0).then(|| c.total.load(Relaxed)),
            files_done: c.files_done.load(Relaxed),
            files: c.files,
        }
    }

    /// Progress events, one every `every`, ending (after a last snapshot) when the job finishes.
    pub fn events(&mut self, every: Duration) -> Events<'_> {
        Events {
            job: self,
            every,
            finished: false,
        }
    }

    /// True once the job has finished, successfully or not.
    pub fn is_finished(&mut self) -> bool {
        self.poll(Duration::ZERO)
    }

    fn poll(&mut self, timeout: Duration) -> bool {
        if self.result.is_none() {
            match self.done.recv_timeout(timeout) {
                Ok(r) => self.result = Some(r),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return false,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    self.result = Some(Vec::new())
                }
            }
        }
        true
    }

    /// Waits for the job to finish: the report of its file, or why it failed. For a job of
    /// several files, the first failure in the order given, else the first file's report; see
    /// [`Job::wait_all`].
    pub fn wait(self) -> Result<Report, GetError> {
        let mut first = None;
        for r in self.wait_all() {
            match r {
                Err(e) => return Err(e),
                Ok(report) => {
                    first.get_or_insert(report);
                }
            }
        }
        first.ok_or(GetError::EngineStopped)
    }

    /// Waits for the job to finish: one result per file, in the order given.
    pub fn wait_all(mut self) -> Vec<Result<Report, GetError>> {
        while !self.poll(Duration::from_secs(3600)) {}
        match self.result.take() {
            Some(r) if !r.is_empty() => r,
            // The engine stopped before the job could report.
            _ => (0..self.counters.files)
                .map(|_| Err(GetError::EngineStopped))
                .collect(),
        }
    }
}

/// The iterator returned by [`Job::events`].
#[derive(Debug)]
pub struct Events<'a> {
    job: &'a mut Job,
    every: Duration,
    finished: bool,
}

impl Iterator for Events<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        self.finished = self.job.poll(self.every);
        Some(Event::Progress(self.job.progress()))
    }
}
