//! One request of a file: to a source, on the lane's kept-alive connection when it goes to
//! the right host (a new one otherwise), redirects followed under the one policy
//! (`net/target.rs`), the answer's encoding and status checked; and the wait before a retry.
//!
//! Invariant: an answer that comes back `Ok` is a 2xx or a 416 of the URL its redirects led
//! to, which later ranges of the source go to. Not here: judging the answer against the range
//! asked (`proto/file.rs`) or reading its body (`conn.rs`).

use std::ops::Range;
use std::sync::Arc;

use super::conn::{Conn, FirstAhead};
use super::file::FileDownload;
use crate::error::GetError;
use crate::net::target::{Resolver, Target, redirect_target};
use crate::proto::file::check_answer;
use crate::proto::http1::{Framing, ResponseHead};
use crate::proto::retry::{self, Verdict};

/// One of a job's connection lanes, as the data plane sees it: its number (which spreads the
/// lanes over a file's sources), its kept-alive connection, and the files it claimed to start
/// next, in order (the first requests of the first few may be on its connection already:
/// [`Conn::firsts_ahead`]); and whether it stays ([`super::crowd`]).
pub(super) struct Lane {
    pub(super) id: usize,
    pub(super) conn: Option<Conn>,
    pub(super) claimed: std::collections::VecDeque<usize>,
    pub(super) crowd: Arc<super::crowd::Crowd>,
    /// A lease of this lane's came whole: a refusal from now on is not the server's limit.
    pub(super) delivered: bool,
    /// The server refused this lane's connection: it leaves.
    pub(super) refused: bool,
}

impl Lane {
    /// Whether the lane takes no new lease: above the job's count, or refused.
    pub(super) fn leaving(&self) -> bool {
        self.refused || !self.crowd.keeps(self.id)
    }

    /// Whether the lane was opened by growth (one write in flight, let go when refused).
    pub(super) fn grown(&self) -> bool {
        self.crowd.grown(self.id)
    }
}

/// Asks source `src` for `range` on the lane's connection when it goes there, on a new one
/// otherwise, following redirects (from the URL as given when `from_origin`, else from where
/// its redirects led before) and keeping where they led. A final status worth retrying comes
/// back as an error, like a failed connection.
pub(super) async fn request(
    file: &Arc<FileDownload>,
    lane: &mut Lane,
    src: usize,
    range: &Range<u64>,
    from_origin: bool,
) -> Result<(Conn, ResponseHead), GetError> {
    let source = &file.sources[src];
    let mut target = if from_origin {
        source.origin.clone()
    } else {
        source.target().clone()
    };
    // A first request of a file resumed by its ETag (`validator.rs`): a changed resource
    // comes whole, and its earlier bytes are dropped.
    if from_origin {
        target.if_range = file.resume_if_range();
    }
    // A first request this lane sent ahead: its answer is the next on the connection.
    let ahead = FirstAhead {
        file: FirstAhead::key(file),
        src,
        range: range.clone(),
    };
    let (mut conn, mut sent) = match lane.conn.take() {
        Some(mut c)
            if from_origin && c.serves(&target) && c.firsts_ahead.front() == Some(&ahead) =>
        {
            c.firsts_ahead.pop_front();
            (c, true)
        }
        // Answers to other requests come next on a connection with requests ahead.
        Some(c) if c.serves(&target) && c.firsts_ahead.is_empty() => (c, false),
        _ => (Conn::open(&target).await?, false),
    };
    conn.hedging = Some(Arc::clone(file));
    let mut redirects = 0;
    let mut resolved = Resolver::new(target.dialer.clone());
    let head = loop {
        let head = if std::mem::take(&mut sent) {
            match conn.read_head(&target).await? {
                Some(head) => head,
                None => {
                    conn.stop_pipelining(
                        file,
                        src,
                        "closed a connection with a request unanswered; asking one request at \
                         a time there",
                    );
                    conn = Conn::open(&target).await?;
                    conn.request(&target, Some(range.clone())).await?
                }
            }
        } else {
            conn.request(&target, Some(range.clone())).await?
        };
        if !crate::proto::http1::is_redirect(head.status) {
            break head;
        }
        redirects += 1;
        let next = redirect_target(&target, &head, redirects, &mut resolved)?;
        let framing = framing_of(&target, &head)?;
        let same_host = next.addrs == target.addrs
            && next.tls_host == target.tls_host
            && next.route == target.route;
        // Behind requests sent ahead, the next answer here would be another file's.
        let reuse = same_host && conn.is_reusable() && conn.firsts_ahead.is_empty();
        if reuse {
            conn.discard_body(framing).await;
        }
        if !reuse || !conn.is_reusable() {
            conn = Conn::open(&next).await?;
        }
        target = next;
    };
    // The wait for the final answer: a round trip to where the source's ranges go.
    if let Some(wait) = conn.last_wait.take() {
        file.endpoints.answered(source.endpoint, wait);
    }
    conn.answer_wait = file.endpoints.least_wait(source.endpoint);
    conn.count_answer(file);
    if !matches!(conn.wire, super::conn::Wire::H3(_)) {
        target.dialer.note_alt_svc(&target, &head);
    }
    // The connection may be a new one (a redirect's, or one after a close).
    conn.hedging = Some(Arc::clone(file));
    check_answer(&target.display, &head)?;
    // Later ranges go to the final URL.
    if target.url != source.origin.url && source.redirected.get().is_none() {
        tracing::debug!(from = %source.origin.display, to = %target.display, "followed redirect");
        let _ = source.redirected.set(target);
    }
    Ok((conn, head))
}

/// How the body of `head`, an answer from `target`, is framed.
pub(super) fn framing_of(target: &Target, head: &ResponseHead) -> Result<Framing, GetError> {
    head.framing().map_err(|e| GetError::Protocol {
        url: target.display.clone(),
        detail: e.to_string(),
    })
}

/// Nothing listens at the address: a wrong host or port.
pub(super) fn is_refused(e: &GetError) -> bool {
    matches!(e, GetError::Connect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Waits before the `failures`-th retry in a row after `e`, as the table in [`crate::proto::retry`]
/// says (what the server asked, else a backoff), saying so. `false`: `e` is not retried, or the
/// server asked for a longer wait than ferry gives.
pub(super) async fn wait_to_retry(e: &GetError, failures: u32) -> bool {
    let Verdict::Retry { wait } = retry::for_error(e) else {
        return false;
    };
    let Some(wait) = retry::wait_for(failures, wait, crate::runtime::jitter()) else {
        return false;
    };
    tracing::warn!("{e}; asking again in {:.1} s", wait.as_secs_f64());
    compio::time::sleep(wait).await;
    true
}
