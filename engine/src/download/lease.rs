//! A ranged file's leases: the lane that started the file copies the first one, then every
//! lane on the file takes leases from its plan until none are left, each on the lane's
//! kept-alive connection, the next lease's request pipelined behind the body being read; a
//! body that ends short gives the rest of its lease back.
//!
//! Invariant: a lease's bytes are written only after its answer named exactly its range
//! (`proto/file.rs`); a failed request gives its whole lease back within the file's retry
//! budget. Not here: which lane works on which file (`lanes.rs`), the copy itself (`conn.rs`).

use std::collections::VecDeque;
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
    AfterFailure, BodyOutcome, Ended, after_lease_failure, check_answer, check_length,
    check_partial, may_pipeline, one_more_ahead, pipelining_pays,
};
use crate::proto::http1::ResponseHead;
use crate::proto::plan::LeaseId;
use crate::proto::retry::{self, Verdict};

/// A lease of a file's plan as a lane holds it: its id, its bytes, and the source asked.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) id: LeaseId,
    pub(super) range: Range<u64>,
    pub(super) src: usize,
}

/// Copies the first lease of a ranged file (its answer's head is read: `conn`), then takes
/// leases like any other lane.
pub(super) async fn run_ranged(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    conn: Conn,
    mut pipe: Pipeline,
    first: Lease,
) {
    file.used_connections.fetch_add(1, Ordering::Relaxed);
    lane.conn = Some(conn);
    if let Err(e) = range_loop(file, lane, &mut pipe, Some(first)).await {
        file.fail(e);
    }
    drain(file, pipe).await;
}

/// A lane joining a ranged file that another lane started.
pub(super) async fn join_file(file: &Arc<FileDownload>, lane: &mut Lane) {
    file.used_connections.fetch_add(1, Ordering::Relaxed);
    match file.open_sink(None).await {
        Ok(sink) => {
            let mut pipe = Pipeline::for_lane(file, sink, lane.grown());
            if let Err(e) = range_loop(file, lane, &mut pipe, None).await {
                file.fail(e);
            }
            drain(file, pipe).await;
        }
        Err(e) => file.fail(e),
    }
}

/// Waits for a lane's writes on the file; a failed write fails the file.
async fn drain(file: &FileDownload, mut pipe: Pipeline) {
    if let Err(e) = pipe.drain().await {
        file.fail(e);
    }
}

/// Takes leases from the plan until none are left, on the lane's connection (replaced when it
/// breaks or goes elsewhere). `current`: a lease whose answer's head was read already, on
/// `lane.conn` (the file's first).
///
/// While a body is read, the requests for the next leases are already on the connection
/// (HTTP/1.1 pipelining, where [`may_pipeline`] allows; as many as a round trip takes to
/// receive, [`one_more_ahead`]): their answers follow this body without an idle round trip.
/// Leases asked for ahead whose answers never came (the body before them ended short, the
/// server closed) go back whole, using no retry.
async fn range_loop(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    pipe: &mut Pipeline,
    mut current: Option<Lease>,
) -> Result<(), GetError> {
    let total = file.total.load(Ordering::Relaxed);
    // Failures in a row on this lane: each retry waits longer.
    let mut failures = 0;
    // The leases whose requests went out behind the body being read, in the order asked.
    let mut ahead: VecDeque<Lease> = VecDeque::new();
    let result = loop {
        // Requests ahead live on the lane's connection: without it, their answers never come.
        if lane.conn.is_none() {
            put_back_all(file, &mut ahead);
        }
        // The next lease, with its answer's head read and checked, on `lane.conn`.
        let lease = if let Some(lease) = current.take() {
            lease
        } else if let Some(lease) = ahead.pop_front() {
            match pipelined_answer(file, lane, &lease, total).await {
                Ok(()) => lease,
                Err(Pipelined::Unanswered) => {
                    file.put_back(lease.id);
                    lane.conn = None;
                    continue;
                }
                Err(Pipelined::Failed(e)) => {
                    match failed(file, lane, &lease, e, &mut failures).await {
                        Ok(()) => continue,
                        Err(e) => break Err(e),
                    }
                }
            }
        } else {
            // A lane above the job's count (or refused) leaves after its current lease.
            if lane.leaving() {
                break Ok(());
            }
            let Some((id, range)) = file.take_lease() else {
                break Ok(());
            };
            let lease = Lease {
                id,
                range,
                src: file.pick(lane.id),
            };
            match request_lease(file, lane, &lease, total).await {
                Ok(()) => lease,
                Err(e) => match failed(file, lane, &lease, e, &mut failures).await {
                    Ok(()) => continue,
                    Err(e) => break Err(e),
                },
            }
        };
        pipeline_more(file, lane, &lease, &mut ahead).await;
        let conn = lane.conn.as_mut().expect("the lease's connection");
        let end = match copy_counted(file, conn, pipe, &lease).await {
            Ok(end) => {
                lane.delivered = true;
                end
            }
            Err(e) => match failed(file, lane, &lease, e, &mut failures).await {
                Ok(()) => continue,
                Err(e) => break Err(e),
            },
        };
        // A body cut short while a request was pipelined behind it: a server that closes after
        // an answer with a request unread resets the connection, which can cut the body before
        // it. Its endpoint gets one request per answer from then on.
        if matches!(end, BodyEnd::Short { .. })
            && let (Some(b), Some(conn)) = (ahead.front(), lane.conn.as_ref())
        {
            conn.stop_pipelining(
                file,
                b.src,
                "reset a connection with a request pipelined; asking one range at a time there",
            );
        }
        // A body not read to its end leaves the connection out of step with the answers behind
        // it: the leases asked for ahead go back, and the connection with them.
        if !lane.conn.as_ref().is_some_and(Conn::is_reusable) && !ahead.is_empty() {
            lane.conn = None;
        }
        // The plan has the lease back (or the retries ran out, which fails the file).
        match lease_ended(file, &lease, end) {
            Ok(Ended::Next) => failures = 0,
            // The rest of the lease goes back to the plan. Over HTTP/1.1 the connection goes
            // too; over HTTP/2 and HTTP/3 one whose stream alone ended stays (`body.rs`).
            Ok(Ended::Retry) => {
                if !lane
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.is_multiplexed() && c.is_reusable())
                {
                    lane.conn = None;
                }
            }
            Ok(Ended::Stop | Ended::Fail) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if !ahead.is_empty() {
        put_back_all(file, &mut ahead);
        lane.conn = None;
    }
    result
}

/// Leases asked for ahead whose answers will not be read go back whole, using no retry.
fn put_back_all(file: &FileDownload, ahead: &mut VecDeque<Lease>) {
    for lease in ahead.drain(..) {
        file.put_back(lease.id);
    }
}

/// After a request for `lease` failed with `e` (or its copy did) and no byte of it counts:
/// all of it goes back, within the file's retry budget, when the table says another try may do
/// better or another source can be asked; the lane then drops its connection and waits as the
/// table says. `Err`: the file fails with it.
async fn failed(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    lease: &Lease,
    e: GetError,
    failures: &mut u32,
) -> Result<(), GetError> {
    // An answer's head that did not come while the other connections moved: its lease goes
    // to a new connection as a stalled body's rest does.
    if e.is_hedged() {
        match file.with_plan(|p| p.hedge(lease.id, lease.range.start)) {
            Some(Ok(_)) => {
                file.source_failed(lease.src, &e);
                file.hedged.fetch_add(1, Ordering::Relaxed);
                tracing::info!("{e}; asking for the range on a new connection");
                lane.conn = None;
                return Ok(());
            }
            Some(Err(())) => return Err(e),
            None => {}
        }
    }
    let verdict = retry::for_error(&e);
    // A connection opened to grow that the server refuses before it delivered anything: the
    // server's connection limit, not a fault of the file. The lease goes back whole, using no
    // retry, the lane leaves, and the step is taken back.
    if lane.grown() && !lane.delivered && matches!(verdict, Verdict::Retry { .. }) {
        tracing::debug!("lane {} refused ({e}); it leaves", lane.id);
        file.put_back(lease.id);
        lane.refused = true;
        lane.conn = None;
        lane.crowd.refused();
        return Ok(());
    }
    let next = file.source_failed(lease.src, &e);
    let given_back = (matches!(verdict, Verdict::Retry { .. }) || next.is_some())
        && matches!(
            file.with_plan(|p| p.give_back(lease.id, lease.range.start)),
            Some(Ok(_))
        );
    if after_lease_failure(verdict, next.is_some(), given_back) == AfterFailure::Fail {
        return Err(e);
    }
    lane.conn = None;
    *failures += 1;
    match next {
        Some(next) => {
            tracing::warn!("{e}; asking {next} instead");
            file.retries.fetch_add(1, Ordering::Relaxed);
        }
        None if !wait_to_retry(&e, *failures).await => return Err(e),
        None => {}
    }
    Ok(())
}

/// Asks for one lease from its source, on the lane's connection when it goes there (a fresh
/// one otherwise), and checks the answer's head against it. An error means no byte of the
/// lease was taken, and the lease is still the lane's.
async fn request_lease(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    lease: &Lease,
    total: u64,
) -> Result<(), GetError> {
    let (conn, head) = request(file, lane, lease.src, &lease.range, false).await?;
    lane.conn = Some(conn);
    check_lease_answer(file, lease, &head, total)
}

/// A ranged answer must name exactly its lease and carry exactly its bytes.
fn check_lease_answer(
    file: &FileDownload,
    lease: &Lease,
    head: &ResponseHead,
    total: u64,
) -> Result<(), GetError> {
    let target = file.sources[lease.src].target();
    let url = &file.target().display;
    check_partial(
        url,
        head,
        lease.range.start,
        lease.range.end - 1,
        Some(total),
    )?;
    check_length(url, framing_of(target, head)?, &lease.range)
}

/// Sends requests for the next leases on the lane's connection, behind the answer to
/// `current` (whose head was read) and those already `ahead`, when [`may_pipeline`] allows,
/// for as many leases as [`one_more_ahead`] says a round trip takes, while the frontier has
/// leases to give: the same source, the same connection.
async fn pipeline_more(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    current: &Lease,
    ahead: &mut VecDeque<Lease>,
) {
    if lane.leaving() {
        return;
    }
    // Behind other files' first requests, an answer for this file would come out of turn.
    let Some(conn) = lane.conn.as_mut().filter(|c| c.firsts_ahead.is_empty()) else {
        return;
    };
    let source = &file.sources[current.src];
    let target = source.target();
    conn.answer_wait = file.endpoints.least_wait(source.endpoint);
    let Some(wait) = conn.answer_wait else { return };
    let pays = pipelining_pays(
        wait,
        current.range.end - current.range.start,
        conn.body_rate,
    );
    let allowed = may_pipeline(
        file.settings.pipelining && pays,
        conn.serves(target),
        conn.is_multiplexed() || file.endpoints.pipelines(source.endpoint),
    );
    if !allowed {
        return;
    }
    let mut ahead_bytes: u64 = ahead.iter().map(|l| l.range.end - l.range.start).sum();
    while one_more_ahead(wait, conn.body_rate, ahead.len(), ahead_bytes) {
        let Some((id, range)) = file.take_lease_ahead() else {
            return;
        };
        if conn.pipeline(target, range.clone()).await.is_err() {
            // The body being read will meet the broken connection and say so.
            file.put_back(id);
            return;
        }
        file.pipelined.fetch_add(1, Ordering::Relaxed);
        ahead_bytes += range.end - range.start;
        ahead.push_back(Lease {
            id,
            range,
            src: current.src,
        });
    }
}

/// Why the answer to a pipelined request is not there.
enum Pipelined {
    /// The connection closed before any byte of it: the server does not take pipelined
    /// requests (or closed an idle connection just then).
    Unanswered,
    /// An answer that fails its checks, or a broken connection: like a failed request.
    Failed(GetError),
}

/// Reads and checks the answer to the pipelined request for `lease` on the lane's connection.
async fn pipelined_answer(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    lease: &Lease,
    total: u64,
) -> Result<(), Pipelined> {
    let source = &file.sources[lease.src];
    let target = source.target();
    let conn = lane
        .conn
        .as_mut()
        .expect("the connection the request went on");
    let head = match conn.read_head(target).await {
        Ok(Some(head)) => head,
        Ok(None) => {
            conn.stop_pipelining(
                file,
                lease.src,
                "closed a connection with a request unanswered; asking one range at a time there",
            );
            return Err(Pipelined::Unanswered);
        }
        Err(e) => return Err(Pipelined::Failed(e)),
    };
    conn.count_answer(file);
    if crate::proto::http1::is_redirect(head.status) {
        return Err(Pipelined::Failed(GetError::Protocol {
            url: target.display.clone(),
            detail: format!(
                "a redirect ({}) answered a range of a URL that had answered without one",
                head.status
            ),
        }));
    }
    check_answer(&target.display, &head).map_err(Pipelined::Failed)?;
    check_lease_answer(file, lease, &head, total).map_err(Pipelined::Failed)
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
    // A body cut or stalled: its source is put aside like one that failed to answer (a
    // stalled flow's rest then goes to another mirror where there is one), and the error
    // names that source.
    let end = match end {
        Ok(BodyEnd::Short { at, error }) => {
            let error = error.unwrap_or_else(|| file.sources[src].short_body(range, at));
            file.source_failed(src, &error);
            Ok(BodyEnd::Short {
                at,
                error: Some(error),
            })
        }
        Ok(BodyEnd::Stalled { at, error }) => {
            // With mirrors, the stalled one is put aside a while: the rest goes elsewhere.
            file.source_failed(src, &error);
            file.hedged.fetch_add(1, Ordering::Relaxed);
            tracing::info!("{error}; fetching the range's rest from {at} on a new connection");
            Ok(BodyEnd::Stalled { at, error })
        }
        other => other,
    };
    let (bytes, time) = (conn.body_bytes() - before.0, conn.read_time() - before.1);
    if complete && !time.is_zero() {
        conn.body_rate = Some(bytes as f64 / time.as_secs_f64());
    }
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
        BodyEnd::Stalled { at, error } => (BodyOutcome::Stalled { at }, Some((at, Some(error)))),
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
