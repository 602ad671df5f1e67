//! The start of a file's fetch: its partial file created (or reopened to resume), its first
//! request sent and retried, and the file set up as the first answer says: ranged (reserved
//! with `fallocate`, a plan made, the first lease kept by this lane), one stream, or empty.
//!
//! Invariant: nothing is reserved or written before the first answer was judged (size, range,
//! framing: `proto/file.rs`). Not here: the leases after the first (`lease.rs`), the stream's
//! copy (`stream.rs`).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use compio::driver::ToSharedFd;
use compio::fs::File;

use super::conn::Conn;
use super::file::FileDownload;
use super::lease::Lease;
use super::output::parent_dir;
use super::pipe::Pipeline;
use super::readback::read_back_loop;
use super::request::{Lane, framing_of, is_refused, request, wait_to_retry};
use super::stream::OneStream;
use super::{HASH_SPREAD, space};
use crate::error::GetError;
use crate::proto::file::{
    AfterFailure, FirstAnswer, FirstRequest, after_first_failure, check_partial, first_answer,
    first_request,
};
use crate::proto::http1::ResponseHead;
use crate::proto::plan::{Plan, gaps};
use crate::verify::Verifier;

/// What became of a file after the first answer, for the lane that asked.
pub(super) enum Started {
    /// Ranged: the lane continues with the first lease, then takes more from the plan (which
    /// may offer work to other lanes).
    Ranged {
        conn: Conn,
        pipe: Pipeline,
        first: Lease,
        /// The first lease is the whole file.
        whole: bool,
    },
    /// One stream (the server ignored `Range`, or gave no length): the lane copies it alone.
    Stream(OneStream),
    /// Nothing more to fetch (an empty file, or every byte already on disk).
    Empty,
}

/// Starts a fresh fetch of `file` on `lane`: creates (or reopens, to resume) its partial file,
/// sends its first request, and sets the file up as the first answer says
/// ([`proto::file::first_answer`](crate::proto::file::first_answer)).
pub(super) async fn start_file(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
) -> Result<Started, GetError> {
    if file.progress.interrupted() {
        return Err(GetError::Interrupted);
    }
    let (created, mut resumed) = file.begin_fetch().await?;
    if let Some(size) = file.size_hint {
        // Before connecting: a file that does not fit waits here, not with a connection open.
        file.wait_for_space(&created, size).await?;
    }
    let asked = match first_request(&resumed, file.size_known(), file.settings.chunk) {
        FirstRequest::Range(r) => r,
        FirstRequest::AllOnDisk { size } => {
            file.set_total(size);
            file.keep_resumed(&resumed);
            return Ok(Started::Empty);
        }
    };
    let (conn, src, head, partial_total) = first_response(file, lane, &asked).await?;
    let framing = framing_of(file.target(), &head)?;
    let answer = first_answer(
        &file.target().display,
        &head,
        framing,
        &asked,
        partial_total,
        file.size_known(),
        !resumed.is_empty(),
    )?;
    match answer {
        FirstAnswer::Ranged {
            total,
            first,
            drop_resumed,
            whole,
        } => {
            let why = if drop_resumed {
                Some(format!(
                    "the file has {total} bytes, not the {:?} its journal expected",
                    file.size_known()
                ))
            } else if !resumed.is_empty() && file.validator_changed(&head) {
                Some("the resource changed since the earlier run (another ETag)".to_owned())
            } else {
                None
            };
            if let Some(why) = why {
                tracing::warn!(url = %file.target().display, "{why}; fetching it all");
                file.drop_resumed(&created)?;
                resumed.clear();
            }
            let held = file.try_hold(total);
            if !held && resumed.is_empty() {
                file.validate_fresh(total, &head);
            }
            let sink = if held {
                file.set_total(total);
                file.open_sink(Some(created)).await?
            } else if whole {
                // The whole file is in this answer: one write, nothing to reserve. A size known
                // up front was checked before the request, a moment ago.
                if file.size_hint != Some(total) {
                    file.wait_for_space(&created, total).await?;
                }
                file.set_total(total);
                file.open_whole_sink(created, total).await?
            } else {
                preallocate(file, &created, total).await?;
                file.open_sink(Some(created)).await?
            };
            let pipe = Pipeline::for_lane(file, sink, lane.grown());
            let todo = gaps(&resumed, total);
            let mut plan = Plan::with_gaps(
                total,
                todo,
                file.progress.crowd.target(),
                file.settings.chunk,
            )
            .with_sources(file.sources.len());
            if file.checksum.is_some() {
                plan = plan.spread_within(HASH_SPREAD);
            }
            if file.once {
                plan = plan.without_splits();
            }
            let id = plan.claim(first.clone());
            *file.plan.lock().unwrap_or_else(|p| p.into_inner()) = Some(plan);
            file.keep_resumed(&resumed);
            Ok(Started::Ranged {
                conn,
                pipe,
                first: Lease {
                    id,
                    range: first,
                    src,
                },
                whole,
            })
        }
        FirstAnswer::Stream {
            length,
            drop_resumed,
        } => {
            if drop_resumed {
                tracing::info!(
                    url = %file.target().display,
                    "the server sends the whole file (no ranges); the earlier run's bytes are not used"
                );
                file.drop_resumed(&created)?;
            }
            if let Some(n) = length {
                if file.try_hold(n) {
                    file.set_total(n);
                } else {
                    preallocate(file, &created, n).await?;
                }
            }
            Ok(Started::Stream(OneStream {
                conn,
                framing,
                created,
                src,
            }))
        }
        FirstAnswer::Empty => {
            file.set_total(0);
            lane.conn = Some(conn);
            Ok(Started::Empty)
        }
    }
}

/// The first answer for `asked`, retried as the table in `proto/retry.rs` says; with mirrors,
/// a failure moves on to another source at once. With a 206, also the file's size it states
/// (checked here: a 206 for another range than the one asked is not used, but asked again like
/// a failure).
async fn first_response(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    asked: &Range<u64>,
) -> Result<(Conn, usize, ResponseHead, Option<u64>), GetError> {
    let mut failures = 0;
    loop {
        let src = file.pick(lane.id);
        let answer = request(file, lane, src, asked, true)
            .await
            .and_then(|(conn, head)| {
                let total = match head.status {
                    206 => Some(check_partial(
                        &file.target().display,
                        &head,
                        asked.start,
                        asked.end - 1,
                        None,
                    )?),
                    _ => None,
                };
                Ok((conn, head, total))
            });
        let e = match answer {
            Ok((conn, head, total)) => return Ok((conn, src, head, total)),
            Err(e) => e,
        };
        let next = file.source_failed(src, &e);
        failures += 1;
        let sources_left = !file.candidates().1.is_empty();
        match after_first_failure(
            next.is_some(),
            is_refused(&e),
            sources_left,
            failures,
            file.sources.len(),
        ) {
            AfterFailure::Fail => return Err(e),
            AfterFailure::AskOther => {
                tracing::warn!("{e}; asking {} instead", next.unwrap_or_default())
            }
            AfterFailure::WaitAndRetry => {
                if !wait_to_retry(&e, failures).await {
                    return Err(e);
                }
            }
        }
        file.retries.fetch_add(1, Ordering::Relaxed);
    }
}

pub(super) async fn preallocate(
    file: &FileDownload,
    created: &File,
    len: u64,
) -> Result<(), GetError> {
    file.set_total(len);
    if len == 0 {
        return Ok(());
    }
    let mut need = file.wait_for_space(created, len).await?;
    if file.scratch {
        // No extents reserved: a scratch file removed before writeback then never reaches the
        // disk (allocated blocks would be written back by the next journal commit, and
        // discarded on removal).
        return rustix::fs::ftruncate(created, len).map_err(|e| file.io_error("set_len", e.into()));
    }
    let mut looked_again = false;
    loop {
        // A ring op on io_uring: reserving a large file's extents does not stall the worker.
        match crate::backend::fileop::fallocate(created.to_shared_fd(), len).await {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                ) =>
            {
                // No fallocate on this filesystem (or no such ring op): set the size instead.
                return rustix::fs::ftruncate(created, len)
                    .map_err(|e| file.io_error("set_len", e.into()));
            }
            // Another process took the space between the look and the reservation: wait for
            // space again, once.
            Err(e) if space::is_full(&e) && !looked_again => {
                looked_again = true;
                // The failed reservation may have kept some blocks.
                file.empty.store(false, Ordering::Relaxed);
                need = file.wait_for_space(created, len).await?;
            }
            Err(e) if space::is_full(&e) => {
                return Err(file.settings.space.full(parent_dir(&file.incomplete), need));
            }
            Err(e) => return Err(file.io_error("fallocate", e)),
        }
    }
}

impl FileDownload {
    /// Creates (or empties) `PATH.incomplete` and clears what an earlier fetch left behind, or,
    /// when the journal vouches for what an earlier run wrote, opens it as it is and returns
    /// those ranges (the first answer decides whether they are kept); starts the read-back task
    /// when hashing. Runs on the lane that starts the file, which gets the file back (for
    /// `fallocate`, and as its sink's buffered descriptor).
    pub(super) async fn begin_fetch(self: &Arc<Self>) -> Result<(File, Vec<Range<u64>>), GetError> {
        let found = match self.checksum {
            // A digest-less file's record names what vouches for it: kept for its answers.
            None => self.validator_resumable().map(|(id, ranges, v)| {
                *self.validator.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
                (id, ranges)
            }),
            Some(_) => self.journal_resumable(),
        };
        let resumed = match found {
            Some((id, ranges)) => {
                self.journal_id.store(id, Ordering::Relaxed);
                ranges
            }
            None => {
                // A digest-less file's record is voided before its file is emptied; its next
                // one starts with its first answer (`validate_fresh`).
                self.void_record();
                self.journal_fresh();
                Vec::new()
            }
        };
        self.resumed_bytes.store(0, Ordering::Relaxed);
        self.whole_buffered.store(false, Ordering::Relaxed);
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // An io_uring op (OPENAT) on the uring back-end: creating files contends with journal
        // commits of other files' fsyncs, and must not stall the worker meanwhile.
        let file = self.partial.create(resumed.is_empty()).await?;
        if let Some(watch) = &self.watch {
            watch.fresh(std::os::fd::AsFd::as_fd(&file), resumed.is_empty());
        }
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
            let file = Arc::clone(self);
            compio::runtime::spawn(async move {
                let _ = done_tx.send(read_back_loop(&file, &v, wake_rx).await);
            })
            .detach();
        }
        Ok((file, resumed))
    }
}
