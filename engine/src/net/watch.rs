//! The stall watchdog on a connection's reads: a read that brings no byte for the watch's
//! limit ends as stalled; a lease's read may end sooner, as *hedged*, when its flow sent
//! nothing for a few round trips while other connections kept moving, so its rest can go to
//! another connection instead of holding the file until the watchdog.
//!
//! Invariant: a read is never cancelled. The socket's receiving side is shut down instead,
//! which ends the read as the end of the stream would: the operation completes normally (its
//! buffer comes back, nothing it already moved is lost), and the connection is not used again.
//! Not here: what a stalled lease's lane does next (`download/lease.rs`), the timing rule
//! (`proto::file::hedge_after`).

use std::time::{Duration, Instant};

/// How often a read past its hedge's wait asks again whether other connections are moving.
const HEDGE_POLL: Duration = Duration::from_millis(100);

/// What a read waits for.
#[derive(Clone, Copy)]
pub(crate) struct Watch<'a> {
    /// No byte for this long: the read ends as [`WatchError::Stalled`].
    pub(crate) limit: Duration,
    /// An earlier end for a lease's read ([`WatchError::Hedged`]).
    pub(crate) hedge: Option<Hedge<'a>>,
}

impl Watch<'_> {
    /// Only the watchdog's limit.
    pub(crate) fn limit(limit: Duration) -> Watch<'static> {
        Watch { limit, hedge: None }
    }
}

/// A read's flow counts as stalled after `after` without a byte; it ends as soon as `moving`,
/// asked with the instant the read began, says other connections moved since.
#[derive(Clone, Copy)]
pub(crate) struct Hedge<'a> {
    pub(crate) after: Duration,
    pub(crate) moving: &'a dyn Fn(Instant) -> bool,
}

/// Why a read under the watchdog ended without bytes.
#[derive(Debug)]
pub(crate) enum WatchError {
    /// The read failed.
    Io(std::io::Error),
    /// No byte came for the watch's limit.
    Stalled(Duration),
    /// No byte came for the hedge's wait (how long it was) while other connections moved.
    Hedged(Duration),
}

/// The error a hedged read's [`WatchError::into_io`] carries, for [`is_hedged`].
#[derive(Debug)]
struct HedgedRead(Duration);

impl std::fmt::Display for HedgedRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no byte for {:.1} s while other connections kept moving (a stalled flow)",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for HedgedRead {}

impl WatchError {
    /// As an I/O error: a stall becomes `TimedOut`, saying for how long nothing came.
    pub(crate) fn into_io(self) -> std::io::Error {
        use std::io::{Error, ErrorKind};
        match self {
            WatchError::Io(e) => e,
            WatchError::Stalled(limit) => Error::new(
                ErrorKind::TimedOut,
                format!("no byte for {} s (stalled)", limit.as_secs_f64()),
            ),
            WatchError::Hedged(waited) => Error::new(ErrorKind::TimedOut, HedgedRead(waited)),
        }
    }
}

/// Whether `e` is a read ended by its hedge ([`WatchError::Hedged`] as an I/O error).
pub(crate) fn is_hedged(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<HedgedRead>())
}

/// Runs `read` (a read of `socket`, through a buffer or a splice) under `watch`: when no byte
/// comes for its limit, or for its hedge's wait while the hedge's check says other connections
/// moved, shuts the socket's receiving side down (see the module's invariant); a read that
/// then brings nothing is reported as why.
pub(crate) async fn watched<T>(
    read: impl std::future::Future<Output = (std::io::Result<usize>, T)>,
    socket: &impl std::os::fd::AsFd,
    watch: Watch<'_>,
) -> (Result<usize, WatchError>, T) {
    use futures_util::future::{Either, select};
    let began = Instant::now();
    let mut read = std::pin::pin!(read);
    let (result, why) = match select(read.as_mut(), std::pin::pin!(verdict(began, watch))).await {
        Either::Left((r, _)) => (r, None),
        Either::Right((why, _)) => {
            let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Read);
            (read.as_mut().await, Some(why))
        }
    };
    let (r, buf) = result;
    let r = match (r, why) {
        (Ok(0), Some(why)) => Err(why),
        (Ok(n), _) => Ok(n),
        (Err(e), _) => Err(WatchError::Io(e)),
    };
    (r, buf)
}

/// Runs `wait` (one that owns no buffer and may be dropped at any point: an HTTP/2 stream's
/// next frame) under `watch`; when the watch ends it first, `wait` is dropped and why is
/// returned.
pub(crate) async fn watched_cancellable<T>(
    wait: impl std::future::Future<Output = T>,
    watch: Watch<'_>,
) -> Result<T, WatchError> {
    use futures_util::future::{Either, select};
    let began = Instant::now();
    match select(std::pin::pin!(wait), std::pin::pin!(verdict(began, watch))).await {
        Either::Left((r, _)) => Ok(r),
        Either::Right((why, _)) => Err(why),
    }
}

/// Resolves when a read that began at `began` and is still waiting has waited too long under
/// `watch`, saying why: the watchdog's limit passed, or the hedge's wait passed while other
/// connections moved (asked every [`HEDGE_POLL`]).
async fn verdict(began: Instant, watch: Watch<'_>) -> WatchError {
    loop {
        let waited = began.elapsed();
        let next = match watch.hedge {
            Some(h) if waited < h.after => h.after,
            Some(_) => (waited + HEDGE_POLL).min(watch.limit),
            None => watch.limit,
        };
        compio::time::sleep(next.saturating_sub(waited)).await;
        let waited = began.elapsed();
        if waited >= watch.limit {
            return WatchError::Stalled(watch.limit);
        }
        if watch
            .hedge
            .is_some_and(|h| waited >= h.after && (h.moving)(began))
        {
            return WatchError::Hedged(waited);
        }
    }
}
