//! The decisions of one file's download, sans-IO: where its first request starts, the verdict
//! on the first answer (ranged, one stream, empty, or refused; keep or drop resumed bytes),
//! what a ranged answer must carry, what becomes of a lease after its body or after a failed
//! request, whether a hash mismatch is fetched again, and what happens to the partial file when
//! the file settles.
//!
//! Invariants: every function here is pure (answers, counts and plans in, a verdict out); the
//! caller in `download/` performs the verdict and logs it. Not here: requests, files, waits.

use std::ops::Range;
use std::time::Duration;

use crate::error::GetError;
use crate::proto::http1::{ContentRange, Framing, ResponseHead, parse_content_range};
use crate::proto::plan::{FIRST_CHUNK, LeaseId, MAX_RETRIES, Plan, gaps};
use crate::proto::retry::{self, Verdict};

/// Fetches of the whole file when its digest does not match: the first, and one more.
pub(crate) const MAX_FETCHES: u32 = 2;

/// Where a file's first request starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FirstRequest {
    /// Ask for these bytes.
    Range(Range<u64>),
    /// Every byte of the `size`-byte file is on disk already (an earlier run's, vouched for by
    /// the journal): only the hash is left to check.
    AllOnDisk { size: u64 },
}

/// The first request of a file: `chunk` bytes (the first chunk by default) from the start, or
/// for a resumed file (`resumed`: the ranges on disk) from its first missing byte.
pub(crate) fn first_request(
    resumed: &[Range<u64>],
    size_hint: Option<u64>,
    chunk: Option<u64>,
) -> FirstRequest {
    let len = chunk.unwrap_or(FIRST_CHUNK).max(1);
    match (resumed.is_empty(), size_hint) {
        (false, Some(size)) => match gaps(resumed, size).first() {
            Some(g) => FirstRequest::Range(g.start..(g.start + len).min(g.end)),
            None => FirstRequest::AllOnDisk { size },
        },
        _ => FirstRequest::Range(0..len),
    }
}

/// The most files whose first requests a connection has in flight behind the answer it is
/// reading ([`first_ahead`]).
pub(crate) const MAX_FIRSTS_AHEAD: usize = 16;

/// The first request of a file not started yet that a lane may send ahead, behind the answer
/// it is reading (HTTP/1.1 pipelining, where it pays: [`pipelining_pays`]): the first request
/// of a fresh fetch, when the file is small enough to come whole in its answer or its size is
/// not known (a file that turns out larger costs the connection its requests ahead). A file
/// known to be larger is not asked for ahead; nor is one that was already fetched in part
/// (`started`), whose first request depends on what is on disk.
pub(crate) fn first_ahead(
    size_hint: Option<u64>,
    chunk: Option<u64>,
    started: bool,
) -> Option<Range<u64>> {
    if started {
        return None;
    }
    let FirstRequest::Range(asked) = first_request(&[], size_hint, chunk) else {
        return None;
    };
    size_hint
        .is_none_or(|size| size <= asked.end)
        .then_some(asked)
}

/// What the first answer makes of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FirstAnswer {
    /// A 206: the file has `total` bytes and comes in ranges; the answer carries `first` (the
    /// range asked, clamped to the file).
    Ranged {
        total: u64,
        first: Range<u64>,
        /// The resumed bytes cannot be used (the file has another size than the journal's).
        drop_resumed: bool,
        /// The whole file is in this answer: one write, no plan beyond it, nothing to reserve.
        whole: bool,
    },
    /// A 200: the body is the whole file, as one stream (`length` when framed by one).
    Stream {
        length: Option<u64>,
        /// Resumed bytes cannot be used with a whole-file answer.
        drop_resumed: bool,
    },
    /// A 416 stating a size of 0: an empty file, nothing to fetch.
    Empty,
}

/// The verdict on the first answer `head` (framed as `framing`) to a request for `asked`;
/// `partial_total`: the size a 206 stated, checked with [`check_partial`] when it came (a 206
/// for another range is asked again, like a failure). `size_hint`: the size listed up front;
/// `resumed`: bytes of an earlier run are on disk. An answer larger than the listed size is
/// refused before anything is reserved or written.
pub(crate) fn first_answer(
    url: &str,
    head: &ResponseHead,
    framing: Framing,
    asked: &Range<u64>,
    partial_total: Option<u64>,
    size_hint: Option<u64>,
    resumed: bool,
) -> Result<FirstAnswer, GetError> {
    let stated = match (head.status, partial_total, framing) {
        (206, Some(total), _) => Some(total),
        (200, _, Framing::Length(n)) => Some(n),
        _ => None,
    };
    if let (Some(listed), Some(stated)) = (size_hint, stated)
        && stated > listed
    {
        return Err(GetError::LargerThanListed {
            url: url.to_owned(),
            listed,
            stated,
        });
    }
    match (head.status, partial_total) {
        (206, Some(total)) => {
            let first = asked.start..asked.end.min(total);
            check_length(url, framing, &first)?;
            Ok(FirstAnswer::Ranged {
                total,
                whole: first.start == 0 && total <= first.end,
                drop_resumed: resumed && size_hint != Some(total),
                first,
            })
        }
        (200, _) => Ok(FirstAnswer::Stream {
            length: match framing {
                Framing::Length(n) => Some(n),
                _ => None,
            },
            drop_resumed: resumed,
        }),
        (416, _) => match head.header("content-range").and_then(parse_content_range) {
            Some(ContentRange::Unsatisfied { total: 0 }) => Ok(FirstAnswer::Empty),
            _ => Err(status_error(url, head)),
        },
        _ => Err(status_error(url, head)),
    }
}

/// The checks every final answer to a range request passes before its status is judged: no
/// encoding ferry did not ask for (an encoded body would be saved as it came, not as the
/// file), and no status worth retrying or refusing (a mirror without the file: the next source
/// is asked). A 416 passes: the caller judges it (an empty file).
pub(crate) fn check_answer(url: &str, head: &ResponseHead) -> Result<(), GetError> {
    if let Some(encoding) = head.header("content-encoding")
        && !encoding.trim().eq_ignore_ascii_case("identity")
        && (200..300).contains(&head.status)
    {
        return Err(GetError::Protocol {
            url: url.to_owned(),
            detail: format!(
                "the answer is encoded (Content-Encoding: {encoding}), which ferry did not ask \
                 for; refused rather than saved encoded"
            ),
        });
    }
    if retry::retryable_status(head.status) || (head.status >= 400 && head.status != 416) {
        return Err(status_error(url, head));
    }
    Ok(())
}

/// The shortest wait for an answer at which pipelining pays: a round trip longer than the same
/// host's or a LAN's, with room for a busy server's think time.
pub(crate) const PIPELINE_MIN_WAIT: Duration = Duration::from_millis(20);

/// Whether pipelining pays on a connection whose requests waited at least `wait` for their
/// answers (about a round trip) and whose bodies arrive at `rate` bytes per second: when the
/// wait is a WAN's ([`PIPELINE_MIN_WAIT`]) and at least an eighth of the time a `lease`-byte
/// body takes (a ninth of the connection's time idle without it: flows capped at 10 MB/s 80 ms
/// away idled a sixth of the time with half, docs/decisions.md). On loopback or a LAN it does not
/// pay: the receive queue that pipelining keeps full costs more CPU than the idle time it
/// saves, and there a wait of milliseconds is the client's own busy workers, not the path
/// (docs/decisions.md, "Pipelining by measurement").
pub(crate) fn pipelining_pays(wait: Duration, lease: u64, rate: Option<f64>) -> bool {
    let idles = match rate {
        Some(rate) if rate > 0.0 => wait.as_secs_f64() * 8.0 >= lease as f64 / rate,
        _ => true,
    };
    wait >= PIPELINE_MIN_WAIT && idles
}

/// The most range requests a connection has in flight behind the answer it is reading.
pub(crate) const MAX_AHEAD: usize = 4;

/// Whether a lane whose connection pipelines (see [`pipelining_pays`]) asks for one more lease
/// behind the `ahead` requests it has in flight, whose leases add up to `ahead_bytes`: while
/// those take less than a round trip (`wait`) to arrive at the connection's `rate`, the
/// connection would idle between the last of them and the next answer. Near a file's end
/// leases shrink to 1 MiB, which takes 25-40 ms at a CDN edge's 25-40 MB/s, well less than a
/// WAN's round trip: one request ahead left a third of the time idle there. At most
/// [`MAX_AHEAD`]; with no rate measured yet, one.
pub(crate) fn one_more_ahead(
    wait: Duration,
    rate: Option<f64>,
    ahead: usize,
    ahead_bytes: u64,
) -> bool {
    match (ahead, rate) {
        (0, _) => true,
        (n, Some(rate)) if n < MAX_AHEAD && rate > 0.0 => {
            (ahead_bytes as f64 / rate) < wait.as_secs_f64()
        }
        _ => false,
    }
}

/// Whether a lane sends the next range request on `conn` before the answer it is reading
/// ended: pipelining is on and pays here ([`pipelining_pays`]), the connection stays open after
/// this answer, and its endpoint never closed a connection with a request unanswered.
pub(crate) fn may_pipeline(enabled: bool, reusable: bool, endpoint_pipelines: bool) -> bool {
    enabled && reusable && endpoint_pipelines
}

/// The error for a final status ferry does not take.
pub(crate) fn status_error(url: &str, head: &ResponseHead) -> GetError {
    GetError::Status {
        url: url.to_owned(),
        status: head.status,
        reason: head.reason.clone(),
        retry_after: retry::asked_wait(head),
    }
}

/// Checks an answer against the range `first..=last` asked for: a 206 whose `Content-Range`
/// names exactly that range (the last byte clamped to the end of the file, RFC 9110 14.1.1) and
/// a size equal to `known_total` when one is known. Returns the file's size.
pub(crate) fn check_partial(
    url: &str,
    head: &ResponseHead,
    first: u64,
    last: u64,
    known_total: Option<u64>,
) -> Result<u64, GetError> {
    let mismatch = |got: String| GetError::ContentRangeMismatch {
        url: url.to_owned(),
        asked_first: first,
        asked_last: last,
        got,
    };
    match head.status {
        206 => {}
        200 => {
            return Err(GetError::RangeIgnored {
                url: url.to_owned(),
                asked_first: first,
                asked_last: last,
            });
        }
        _ => return Err(status_error(url, head)),
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
                url: url.to_owned(),
                first: k,
                now: t,
            });
        }
        (Some(t), _) => t,
        (None, Some(k)) => k,
        (None, None) => {
            return Err(GetError::Protocol {
                url: url.to_owned(),
                detail: format!("Content-Range {raw:?} does not state the file size"),
            });
        }
    };
    if f != first || l != last.min(total.saturating_sub(1)) {
        return Err(mismatch(raw.to_owned()));
    }
    Ok(total)
}

/// A ranged answer must carry exactly the bytes of its range.
pub(crate) fn check_length(
    url: &str,
    framing: Framing,
    range: &Range<u64>,
) -> Result<(), GetError> {
    let want = range.end - range.start;
    match framing {
        Framing::Length(n) if n == want => Ok(()),
        other => Err(GetError::Protocol {
            url: url.to_owned(),
            detail: format!(
                "the answer for bytes {}-{} is framed as {other:?}, not {want} bytes",
                range.start,
                range.end - 1
            ),
        }),
    }
}

/// How a lease's body ended, as far as the plan is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyOutcome {
    /// Every byte of the lease arrived (or the plan had trimmed it and the rest did).
    Complete,
    /// The job is stopping.
    Aborted,
    /// The body stopped at `at`.
    Short { at: u64 },
    /// No byte came at `at` for the hedge's wait while other connections kept moving: the
    /// rest goes to another connection ([`Plan::hedge`]).
    Stalled { at: u64 },
}

/// What the lane that held a lease does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Done: take the next lease.
    Next,
    /// The body stopped short; the rest went back to the plan, for a fresh connection.
    Retry,
    /// The job is stopping.
    Stop,
    /// The body stopped short and the file's retries are spent: the file fails.
    Fail,
}

/// Settles lease `id` in `plan` after its body ended as `outcome`.
pub(crate) fn lease_ended(plan: Option<&mut Plan>, id: LeaseId, outcome: BodyOutcome) -> Ended {
    match (outcome, plan) {
        (BodyOutcome::Aborted, _) => Ended::Stop,
        (BodyOutcome::Complete, plan) => {
            if let Some(p) = plan {
                p.complete(id);
            }
            Ended::Next
        }
        (BodyOutcome::Short { at }, Some(p)) => match p.give_back(id, at) {
            Ok(_) => Ended::Retry,
            Err(()) => Ended::Fail,
        },
        (BodyOutcome::Stalled { at }, Some(p)) => match p.hedge(id, at) {
            Ok(_) => Ended::Retry,
            Err(()) => Ended::Fail,
        },
        (BodyOutcome::Short { .. } | BodyOutcome::Stalled { .. }, None) => Ended::Fail,
    }
}

/// The least time without a byte before a lease's flow counts as stalled: half a second is
/// more than TCP's first retransmission takes (200 ms at least), and a stalled lease holds the
/// hash's in-order prefix, so the other connections' bytes soon wait for room in its window.
pub(crate) const HEDGE_MIN: Duration = Duration::from_millis(500);

/// How long a lease's read (of its answer's head or body) waits for a byte, on a connection
/// whose requests waited `wait` for their answers (about a round trip), before its flow counts
/// as stalled and, if the other connections kept moving meanwhile, its rest goes to another
/// connection: four round trips, at least [`HEDGE_MIN`], at most the stall watchdog's `limit`.
/// A fresh connection costs a round trip or two; a frozen one holds the file until the
/// watchdog (30 s by default).
pub(crate) fn hedge_after(wait: Option<Duration>, limit: Duration) -> Duration {
    wait.map_or(HEDGE_MIN, |w| (w * 4).max(HEDGE_MIN))
        .min(limit)
}

/// What a lane does after a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Give up: the file fails with the error.
    Fail,
    /// Ask another source at once.
    AskOther,
    /// Wait as the retry table says, then ask again.
    WaitAndRetry,
}

/// After the first request of a file failed (the `failures`-th time in a row): `other_source`
/// when a mirror can be asked at once, `refused` when nothing listened at the address (a wrong
/// host or port is said at once, not after minutes of retries), `sources_left` when some
/// source may still serve the file. The budget is [`MAX_RETRIES`] per source.
pub(crate) fn after_first_failure(
    other_source: bool,
    refused: bool,
    sources_left: bool,
    failures: u32,
    sources: usize,
) -> AfterFailure {
    if !other_source && (refused || !sources_left) {
        return AfterFailure::Fail;
    }
    if failures > MAX_RETRIES * sources as u32 {
        return AfterFailure::Fail;
    }
    match other_source {
        true => AfterFailure::AskOther,
        false => AfterFailure::WaitAndRetry,
    }
}

/// After a lease's request failed with an error the table judges `verdict`, before any of its
/// bytes were taken: `other_source` when a mirror can be asked at once, `given_back` when the
/// plan took the lease back within the file's retry budget.
pub(crate) fn after_lease_failure(
    verdict: Verdict,
    other_source: bool,
    given_back: bool,
) -> AfterFailure {
    let retryable = matches!(verdict, Verdict::Retry { .. });
    match (retryable || other_source) && given_back {
        false => AfterFailure::Fail,
        true if other_source => AfterFailure::AskOther,
        true => AfterFailure::WaitAndRetry,
    }
}

/// What a digest that did not match leads to, after `fetches` fetches of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnMismatch {
    /// Fetch the whole file once more.
    FetchAgain,
    /// Fail with [`GetError::ChecksumMismatch`].
    Fail,
}

/// A mismatch is fetched again until [`MAX_FETCHES`] fetches were made.
pub(crate) fn on_mismatch(fetches: u32) -> OnMismatch {
    match fetches >= MAX_FETCHES {
        true => OnMismatch::Fail,
        false => OnMismatch::FetchAgain,
    }
}

/// What becomes of a settled file's partial file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartialFate {
    /// The file is complete: it was renamed into place.
    Published,
    /// Another process holds the output: not ours to touch.
    LeaveAlone,
    /// Kept (unlocked) for the next run to resume: the journal vouches for its bytes.
    KeepForResume,
    /// Removed, and its journal record started over.
    Discard,
}

/// The fate of the partial file of a file that settled with `result`; `journaled`: the job's
/// resume journal records this file. Bytes that proved wrong are never kept.
pub(crate) fn partial_fate<T>(result: &Result<T, GetError>, journaled: bool) -> PartialFate {
    match result {
        Ok(_) => PartialFate::Published,
        Err(GetError::OutputBusy { .. }) => PartialFate::LeaveAlone,
        Err(GetError::ChecksumMismatch { .. }) => PartialFate::Discard,
        Err(_) if journaled => PartialFate::KeepForResume,
        Err(_) => PartialFate::Discard,
    }
}

#[cfg(test)]
mod tests;
