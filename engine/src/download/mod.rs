//! Downloads: the files of a job, over a fixed number of keep-alive connections ("lanes")
//! spread across the workers. The files of this folder, in the order a file meets them:
//!
//! 1. `mod.rs` ([`start`]): every item checked (`output.rs`), a `FileDownload` each
//!    (`file.rs`), the lanes started.
//! 2. `lanes.rs`: which lane works on which file (work stealing; the decision is in
//!    `proto/plan/files.rs`).
//! 3. `first.rs`: the partial file created (`partial.rs`), the first request (`request.rs`;
//!    which source: `mirrors.rs`), and the verdict on the first answer (`proto/file.rs`):
//!    ranged, one stream, or empty.
//! 4. `lease.rs` (ranged) or `stream.rs` (one stream): bodies copied (`conn.rs`) through the
//!    write pipeline (`pipe.rs`) into the sink; with a digest, the verifier hashes in file
//!    order and `readback.rs` reads back what left memory.
//! 5. `settle.rs`: the hash checked, the file made durable (`durable.rs`), renamed, marked.
//!
//! `space.rs` watches the disk; `ping.rs` measures an endpoint on the same data plane.
//!
//! Invariants: nothing appears under a final name before it is complete, verified when a
//! digest was given, and durable; one file failing does not stop the others. A job with a
//! resume journal records every completed write of a file with a digest and a size, and
//! resumes such a file from its gaps. Not here: HTTP parsing and every per-file decision
//! (`proto/`), connecting (`net/`), how bytes reach the disk (`backend/`).

mod body;
mod conn;
mod crowd;
pub(crate) mod durable;
mod file;
mod first;
mod h2wire;
mod h3wire;
mod lanes;
mod lease;
mod mirrors;
mod output;
mod partial;
pub(crate) mod ping;
mod pipe;
mod readback;
mod request;
mod settle;
pub(crate) mod space;
mod stream;
mod streams;
mod validator;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub(crate) use self::file::JobProgress;
use self::file::{FileDownload, FileSpec, JobSettings, JobShared};
use self::lanes::Lanes;
pub(crate) use self::lanes::Results;
pub(crate) use self::output::parent_dir;
use self::output::{check_collisions, check_output, open_output_dir};
use crate::backend::nofollow::Dir;
use crate::engine::Engine;
use crate::error::GetError;
use crate::job::{GetItem, Job};
use crate::journal::Journal;

/// Told of a partial file's bytes as they land, so that they can be read before the file is
/// complete (`ferry serve --upstream` streams a blob while it is fetched). The bytes are not
/// verified yet; only the job's result says whether the file was.
pub(crate) trait Watch: Send + Sync + std::fmt::Debug {
    /// A fetch opened the partial file: `file`, to read the bytes from (a watcher that keeps
    /// it duplicates the descriptor). When `emptied` (created, or emptied to start over) none
    /// of its bytes count as written any more; otherwise the fetch goes on from what an earlier
    /// one wrote, and what was written stays written.
    fn fresh(&self, file: std::os::fd::BorrowedFd<'_>, emptied: bool);
    /// `len` bytes at `at` are written (the write completed, or an earlier run's bytes were
    /// kept).
    fn written(&self, at: u64, len: u64);
    /// Bytes of the file someone waits for, most urgent first: the next lease starts in the
    /// first of them that no connection has taken yet, rather than at the frontier
    /// ([`crate::proto::plan::Plan::take_wanting`]).
    fn wanted(&self) -> Vec<crate::proto::plan::Want> {
        Vec::new()
    }
}
use crate::net::target::{Resolver, Target};
use crate::proto::sources::Endpoints;
use crate::verify::{Checksum, HashAlgorithm, Window};

/// A file's size before it is known.
const UNKNOWN_TOTAL: u64 = u64::MAX;
/// Bytes of written buffers the verifiers of a job may keep, together, until they are hashed
/// (see `pipe.rs`; measured in docs/decisions.md, "The hash window").
pub(crate) const HASH_WINDOW: u64 = 128 << 20;
/// How far the leases of a verified file may spread, all connections together: half the
/// window, so that the bytes received past a lagging lease fit in it with room to spare
/// (measured in docs/decisions.md, "The hash window").
const HASH_SPREAD: u64 = HASH_WINDOW / 2;
/// What the partial file of `PATH` adds to its name, unless the job says otherwise.
pub(crate) const PARTIAL_SUFFIX: &str = ".incomplete";

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
    let mut outputs = HashMap::new();
    let mut dirs_ok = HashSet::new();
    let mut dirs: HashMap<PathBuf, Dir> = HashMap::new();
    let cwd = std::env::current_dir().ok();
    let progress = Arc::new(JobProgress::new(
        items.len() as u64,
        Arc::clone(engine.interrupted()),
        engine.config().connections.max(1),
    ));
    let settings = Arc::new(JobSettings {
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
        pipelining: engine.config().pipelining,
    });
    let shared = JobShared {
        progress: Arc::clone(&progress),
        window: Window::new(HASH_WINDOW),
        started,
        endpoints: Arc::new(Endpoints::default()),
    };
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
        if checksum.is_some_and(|c| c.algorithm() == HashAlgorithm::GitSha1) && item.size.is_none()
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
        target.window = item.window.clone();
        let mirrors = item
            .mirrors
            .iter()
            .map(|m| {
                Target::new(m, &mut resolved).map(|mut t| {
                    t.window = item.window.clone();
                    t
                })
            })
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
        let sink = if item.scratch {
            engine.scratch_sink(parent)
        } else {
            engine.sink_for(parent)
        };
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
            watch: item.watch,
            once: item.once,
            scratch: item.scratch,
            hold: item.hold,
            in_order: item.in_order,
        };
        files.push(Arc::new(FileDownload::new(
            spec,
            Arc::clone(&settings),
            &shared,
        )));
    }
    check_collisions(&outputs)?;
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let lanes = Lanes::new(files, Arc::clone(&progress), done_tx);
    if lanes.start(engine.dispatcher()) == 0 {
        return Err(GetError::EngineStopped);
    }
    Ok(Job::new(progress, done_rx))
}
