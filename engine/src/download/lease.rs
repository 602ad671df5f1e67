//! A ranged file's leases: the lane that started the file copies the first one, then every
//! lane on the file takes leases from its plan until none are left, each on the lane's
//! kept-alive connection; a body that ends short gives the rest of its lease back.
//!
//! Invariant: a lease's bytes are written only after its answer named exactly its range
//! (`proto/file.rs`); a failed request gives its whole lease back within the file's retry
//! budget. Not here: which lane works on which file (`lanes.rs`), the copy itself (`conn.rs`).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::conn::{BodyEnd, Conn};
use super::file::FileDownload;
use super::pipe::Pipeline;
use super::request::{Lane, framing_of, request, wait_to_retry};
use crate::error::GetError;
use crate::proto;
use crate::proto::file::{
    AfterFailure, BodyOutcome, Ended, after_lease_failure, check_length, check_partial,
};
use crate::proto::plan::LeaseId;
use crate::proto::retry::{self, Verdict};

/// A lease of a file's plan as a lane holds it: its id, its bytes, and the source asked.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) id: LeaseId,
    pub(super) range: Range<u64>,
    pub(super) src: usize,
}

/// Copies the first lease of a ranged file, then takes leases like any other lane.
pub(super) async fn run_ranged(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    mut conn: Conn,
    mut pipe: Pipeline,
    first: Lease,
) {
    file.used_connections.fetch_add(1, Ordering::Relaxed);
    let end = copy_counted(file, &mut conn, &mut pipe, &first).await;
    let go_on = match end {
        Ok(end) => lease_ended(file, &first, end),
        Err(e) => Err(e),
    };
    lane.conn = Some(conn);
    match go_on {
        Ok(Ended::Next | Ended::Retry) => take_leases(file, lane, pipe).await,
        Ok(_) => drain(file, pipe).await,
        Err(e) => {
            file.fail(e);
            drain(file, pipe).await;
        }
    }
}

/// A lane joining a ranged file that another lane started.
pub(super) async fn join_file(file: &Arc<FileDownload>, lane: &mut Lane) {
    file.used_connections.fetch_add(1, Ordering::Relaxed);
    match file.open_sink(None).await {
        Ok(sink) => take_leases(file, lane, Pipeline::new(file, sink)).await,
        Err(e) => file.fail(e),
    }
}

/// Takes leases until none are left, then waits for this lane's writes.
async fn take_leases(file: &Arc<FileDownload>, lane: &mut Lane, mut pipe: Pipeline) {
    if let Err(e) = range_loop(file, lane, &mut pipe).await {
        file.fail(e);
    }
    drain(file, pipe).await;
}

/// Waits for a lane's writes on the file; a failed write fails the file.
async fn drain(file: &FileDownload, mut pipe: Pipeline) {
    if let Err(e) = pipe.drain().await {
        file.fail(e);
    }
}

/// Takes leases from the plan until none are left, on the lane's connection (replaced when it
/// breaks or goes elsewhere).
async fn range_loop(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    pipe: &mut Pipeline,
) -> Result<(), GetError> {
    let total = file.total.load(Ordering::Relaxed);
    // Failures in a row on this lane: each retry waits longer.
    let mut failures = 0;
    while let Some((id, range)) = file.take_lease() {
        let lease = Lease {
            id,
            range,
            src: file.pick(lane.id),
        };
        match fetch_lease(file, lane, pipe, &lease, total).await {
            // The plan has the lease back (or the retries ran out, which fails the file).
            Ok(end) => match lease_ended(file, &lease, end)? {
                Ended::Next => failures = 0,
                Ended::Retry => lane.conn = None,
                Ended::Stop | Ended::Fail => break,
            },
            Err(e) => {
                // Nothing of this lease was written: all of it goes back, within the file's
                // retry budget, when the table says another try may do better, or another
                // source can be asked.
                let next = file.source_failed(lease.src, &e);
                let verdict = retry::for_error(&e);
                let given_back = (matches!(verdict, Verdict::Retry { .. }) || next.is_some())
                    && matches!(
                        file.with_plan(|p| p.give_back(id, lease.range.start)),
                        Some(Ok(_))
                    );
                let step = after_lease_failure(verdict, next.is_some(), given_back);
                if step == AfterFailure::Fail {
                    return Err(e);
                }
                lane.conn = None;
                failures += 1;
                match next {
                    Some(next) => {
                        tracing::warn!("{e}; asking {next} instead");
                        file.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    None if !wait_to_retry(&e, failures).await => return Err(e),
                    None => {}
                }
            }
        }
    }
    Ok(())
}

/// One lease from its source, on the lane's connection when it goes there (a fresh one
/// otherwise). An error means no byte of the lease was taken, and the lease is still the
/// lane's.
async fn fetch_lease(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    pipe: &mut Pipeline,
    lease: &Lease,
    total: u64,
) -> Result<BodyEnd, GetError> {
    let (conn, head) = request(file, lane, lease.src, &lease.range, false).await?;
    let c = lane.conn.insert(conn);
    let target = file.sources[lease.src].target();
    let url = &file.target().display;
    check_partial(
        url,
        &head,
        lease.range.start,
        lease.range.end - 1,
        Some(total),
    )?;
    check_length(url, framing_of(target, &head)?, &lease.range)?;
    copy_counted(file, c, pipe, lease).await
}

/// Copies a lease's body, counting what it brought for its source.
async fn copy_counted(
    file: &Arc<FileDownload>,
    conn: &mut Conn,
    pipe: &mut Pipeline,
    lease: &Lease,
) -> Result<BodyEnd, GetError> {
    let (src, range) = (lease.src, &lease.range);
    let before = (conn.body_bytes(), conn.read_time());
    let end = conn.copy_lease(file, pipe, lease.id, range.clone()).await;
    let complete = matches!(end, Ok(BodyEnd::Complete));
    // A body cut or stalled: its source is put aside like one that failed to answer, and the
    // error names that source.
    let end = match end {
        Ok(BodyEnd::Short { at, error }) => {
            let error = error.unwrap_or_else(|| file.sources[src].short_body(range, at));
            file.source_failed(src, &error);
            Ok(BodyEnd::Short {
                at,
                error: Some(error),
            })
        }
        other => other,
    };
    let (bytes, time) = (conn.body_bytes() - before.0, conn.read_time() - before.1);
    file.count_served(src, bytes, time, complete);
    end
}

/// Settles a lease after its body in the file's plan, as
/// [`proto::file::lease_ended`](crate::proto::file::lease_ended) decides; a short body whose
/// retries are spent is the file's error.
fn lease_ended(file: &FileDownload, lease: &Lease, end: BodyEnd) -> Result<Ended, GetError> {
    let (outcome, short) = match end {
        BodyEnd::Complete | BodyEnd::Trimmed => (BodyOutcome::Complete, None),
        BodyEnd::Aborted => (BodyOutcome::Aborted, None),
        BodyEnd::Short { at, error } => (BodyOutcome::Short { at }, Some((at, error))),
    };
    let ended = {
        let mut plan = file.plan.lock().unwrap_or_else(|p| p.into_inner());
        proto::file::lease_ended(plan.as_mut(), lease.id, outcome)
    };
    let Some((at, error)) = short else {
        return Ok(ended);
    };
    let error = error.unwrap_or_else(|| file.sources[0].short_body(&lease.range, at));
    match ended {
        Ended::Fail => Err(error),
        other => {
            tracing::debug!("{error}; fetching bytes from {at} again");
            Ok(other)
        }
    }
}
