//! A fill: one blob being fetched from the upstream, and what its readers wait on. The engine
//! tells the fill of every write of the partial file as it completes ([`Watch`]); a reader
//! sends each stretch of bytes as soon as it has landed, from its own descriptor of the
//! partial file, so a second client of a cold file gets bytes at once, not when the file is
//! done.
//!
//! Invariants: the server owns a fill, not a request: a reader that leaves stops nothing, and
//! there is at most one fill per blob ([`Fills`]). A reader never sends a byte that has not
//! landed in the current fetch, and if the fetch starts over (the partial file emptied), a
//! reader that already sent bytes of the earlier one is failed rather than continued, since
//! the two fetches' bytes need not agree. Bytes sent before the hash matched are unverified;
//! only a verified blob is published under its final name. Not here: what to fetch (the
//! upstream, `hub/upstream.rs`), HTTP.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::metrics::{Class, Metrics};
use crate::download::Watch;
use crate::error::GetError;
use crate::job::Job;

/// One blob being fetched.
#[derive(Debug)]
pub(crate) struct Fill {
    /// The blob's size: its last byte is held back until the blob is verified.
    size: u64,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// How many times the partial file was created or emptied.
    generation: u64,
    /// The partial file of the current generation.
    file: Option<Arc<File>>,
    /// What has landed in this generation: sorted, disjoint, not touching.
    landed: Vec<Range<u64>>,
    /// `Some` once the fetch ended: `Ok` when the blob is in place, verified.
    outcome: Option<Result<(), String>>,
    /// Where each blocked reader waits, and since when, by reader: what the fetch takes next.
    blocked: HashMap<u64, (u64, Instant)>,
    /// The next reader's id.
    readers: u64,
}

/// Blocked readers' offsets told to the engine at most (those waiting longest).
const MAX_WANTED: usize = 16;

/// One reader of a fill: where it waits is what the fetch takes next, until it is dropped.
#[derive(Debug)]
pub(crate) struct Reader {
    fill: Arc<Fill>,
    id: u64,
    /// The generation it sent its first bytes from.
    seen: Option<u64>,
    /// Whether the blob was verified when bytes were last handed out.
    verified: bool,
}

impl Reader {
    /// What this reader at `pos` can send now; when nothing, `pos` is wanted next.
    pub(crate) fn ready(&mut self, pos: u64) -> Ready {
        let mut state = self.fill.lock();
        let ready = check(&state, self.fill.size, pos, &mut self.seen);
        note(&mut state, self.id, pos, &ready);
        self.verified = matches!(state.outcome, Some(Ok(())));
        ready
    }

    /// `n` bytes handed out by the last [`Reader::ready`] were sent (counted for `/metrics`).
    pub(crate) fn sent(&self, n: u64) {
        self.fill.metrics.bytes_from_fills.inc_by(n);
        if !self.verified {
            self.fill.metrics.bytes_unverified.inc_by(n);
        }
    }

    /// [`Reader::ready`], waiting up to `limit` for bytes at `pos` to land.
    pub(crate) fn wait_ready(&mut self, pos: u64, limit: Duration) -> Ready {
        let fill = Arc::clone(&self.fill);
        let mut state = fill.lock();
        let deadline = std::time::Instant::now() + limit;
        loop {
            let ready = check(&state, fill.size, pos, &mut self.seen);
            note(&mut state, self.id, pos, &ready);
            self.verified = matches!(state.outcome, Some(Ok(())));
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !matches!(ready, Ready::Wait) || left.is_zero() {
                return ready;
            }
            state = fill
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Records whether reader `id` is blocked at `pos` (since when it first blocked there).
fn note(state: &mut State, id: u64, pos: u64, ready: &Ready) {
    if matches!(ready, Ready::Wait) {
        let since = match state.blocked.get(&id) {
            Some(&(at, since)) if at == pos => since,
            _ => Instant::now(),
        };
        state.blocked.insert(id, (pos, since));
    } else {
        state.blocked.remove(&id);
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.fill.lock().blocked.remove(&self.id);
    }
}

/// What a reader at some offset can do now.
#[derive(Debug)]
pub(crate) enum Ready {
    /// The bytes from the offset up to `until` have landed in `file`.
    Bytes { file: Arc<File>, until: u64 },
    /// Nothing at the offset yet.
    Wait,
    /// The fill failed, or started over after this reader sent bytes of the earlier fetch.
    Failed(String),
}

impl Fill {
    pub(crate) fn new(size: u64, metrics: Arc<Metrics>) -> Fill {
        Fill {
            size,
            metrics,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new reader.
    pub(crate) fn reader(self: &Arc<Self>) -> Reader {
        let mut state = self.lock();
        state.readers += 1;
        Reader {
            fill: Arc::clone(self),
            id: state.readers,
            seen: None,
            verified: false,
        }
    }

    /// The fetch ended: wakes every reader.
    pub(crate) fn finish(&self, outcome: Result<(), String>) {
        self.lock().outcome = Some(outcome);
        self.changed.notify_all();
    }
}

/// The blob's last byte is sent only once the blob is verified, so that a reader of the whole
/// file never gets all of a wrong one: its body ends short, and the client's own checks fail.
fn check(state: &State, size: u64, pos: u64, seen: &mut Option<u64>) -> Ready {
    if let Some(Err(e)) = &state.outcome {
        return Ready::Failed(e.clone());
    }
    if seen.is_some_and(|g| g != state.generation) {
        return Ready::Failed("the upstream fetch started over after bytes were sent".into());
    }
    let Some(file) = &state.file else {
        return Ready::Wait;
    };
    // The first stretch ending past `pos`; it holds `pos` when it starts at or before it.
    let i = state.landed.partition_point(|r| r.end <= pos);
    match state.landed.get(i) {
        Some(r) if r.start <= pos => {
            let verified = matches!(state.outcome, Some(Ok(())));
            let until = if verified {
                r.end
            } else {
                r.end.min(size.saturating_sub(1))
            };
            if until <= pos {
                return Ready::Wait;
            }
            *seen = Some(state.generation);
            Ready::Bytes {
                file: Arc::clone(file),
                until,
            }
        }
        _ => Ready::Wait,
    }
}

impl Watch for Fill {
    fn fresh(&self, file: BorrowedFd<'_>, emptied: bool) {
        let dup = reopen(file);
        let mut state = self.lock();
        if emptied || state.file.is_none() {
            state.generation += 1;
            state.landed.clear();
        }
        state.file = match dup {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                // Readers wait for the next generation, or the outcome.
                tracing::warn!(error = %e, "cannot duplicate a partial blob's descriptor");
                None
            }
        };
        drop(state);
        self.changed.notify_all();
    }

    fn written(&self, at: u64, len: u64) {
        insert(&mut self.lock().landed, at..at + len);
        self.changed.notify_all();
    }

    fn wanted(&self) -> Vec<u64> {
        // The longest-waiting readers first: with many readers blocked (clients that read a
        // file in ranges, each at its own offsets), one far ahead is not starved by those
        // near the fill's front, which it moves past anyway.
        let state = self.lock();
        let mut blocked: Vec<(Instant, u64)> = state
            .blocked
            .values()
            .map(|&(pos, since)| (since, pos))
            .collect();
        blocked.sort_unstable();
        let mut at: Vec<u64> = Vec::with_capacity(MAX_WANTED);
        for (_, pos) in blocked {
            if !at.contains(&pos) {
                at.push(pos);
                if at.len() == MAX_WANTED {
                    break;
                }
            }
        }
        at
    }
}

/// A descriptor of its own for the partial file `file`: opened again through
/// `/proc/self/fd`, a new open file description, so that it does not share the engine's
/// `flock` on the partial file (a `dup` would, and would keep the file locked after the fetch
/// ended, refusing the next fill of the same blob). Where `/proc` is missing, a `dup`.
fn reopen(file: BorrowedFd<'_>) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .or_else(|_| file.try_clone_to_owned().map(File::from))
}

/// Adds `r` to `set` (sorted, disjoint, not touching), merging what it overlaps or touches.
fn insert(set: &mut Vec<Range<u64>>, mut r: Range<u64>) {
    if r.is_empty() {
        return;
    }
    // Every stretch from `lo` to `hi` overlaps or touches `r`.
    let lo = set.partition_point(|s| s.end < r.start);
    let hi = set.partition_point(|s| s.start <= r.end);
    if lo < hi {
        r.start = r.start.min(set[lo].start);
        r.end = r.end.max(set[hi - 1].end);
    }
    set.splice(lo..hi, std::iter::once(r));
}

/// Starts a blob's fetch, told of its writes through the fill it is given: callable again
/// when the partial file is still locked by the fill before.
pub(crate) type Fetch = Box<dyn Fn(Arc<Fill>) -> Result<Job, String> + Send>;

/// Times a fill that failed for a reason worth trying again goes on from its journal.
const RESUMES: u32 = 3;

/// What the engine would try again ([`crate::proto::retry::for_error`]): the network, a body
/// cut short, a 5xx or 429.
fn worth_resuming(e: &GetError) -> bool {
    matches!(
        crate::proto::retry::for_error(e),
        crate::proto::retry::Verdict::Retry { .. }
    )
}

/// Tries of a fetch whose partial file the previous fill still held, and the wait between.
const BUSY_RETRIES: u32 = 50;
const BUSY_WAIT: Duration = Duration::from_millis(100);

/// The fills running, one per blob (by its path in the cache).
#[derive(Debug)]
pub(crate) struct Fills {
    running: Mutex<HashMap<PathBuf, Arc<Fill>>>,
    metrics: Arc<Metrics>,
}

/// How a reader gets a blob.
pub(crate) enum Joined {
    /// The blob is in place (verified), opened: read it from the cache.
    InPlace(File),
    /// A fill to read from while it lands.
    Filling(Arc<Fill>),
}

impl Fills {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Fills {
        Fills {
            running: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Fills running, and readers blocked on them (for `/metrics`).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let blocked = running.values().map(|f| f.lock().blocked.len()).sum();
        (running.len(), blocked)
    }

    /// Joins the fill of `blob`, or starts one with `fetch` (which starts the fetch, told of
    /// its writes through the fill it is given; `on_success` runs once the blob is in place),
    /// unless `in_place` finds the blob there (and opens it). Looked at under the lock, so that a blob is
    /// never fetched twice at once, nor while a finished fill is being removed.
    pub(crate) fn join(
        self: &Arc<Self>,
        (blob, size): (PathBuf, u64),
        in_place: impl FnOnce() -> Option<File>,
        fetch: Fetch,
        on_success: Box<dyn FnOnce() + Send>,
    ) -> Result<Joined, String> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fill) = running.get(&blob) {
            return Ok(Joined::Filling(Arc::clone(fill)));
        }
        if let Some(file) = in_place() {
            return Ok(Joined::InPlace(file));
        }
        let fill = Arc::new(Fill::new(size, Arc::clone(&self.metrics)));
        let mut job = fetch(Arc::clone(&fill))?;
        running.insert(blob.clone(), Arc::clone(&fill));
        drop(running);
        let fills = Arc::clone(self);
        let watched = Arc::clone(&fill);
        let spawned = std::thread::Builder::new()
            .name("ferry-fill".into())
            .spawn(move || {
                let metrics = &fills.metrics;
                let (mut busy, mut resumed) = (0, 0);
                // `Err((None, why))`: the fetch could not start again.
                let result = loop {
                    match job.wait() {
                        Ok(report) => break Ok(report),
                        // The partial file is still locked by the fill before this one,
                        // whose job has ended but whose last descriptors are closing: again,
                        // shortly.
                        Err(GetError::OutputBusy { .. }) if busy < BUSY_RETRIES => {
                            busy += 1;
                            std::thread::sleep(BUSY_WAIT);
                        }
                        // The upstream failed in a way worth trying again, after the job's
                        // own retries were spent: the fill goes on from what its journal
                        // says was written, before any reader is told.
                        Err(e) if resumed < RESUMES && worth_resuming(&e) => {
                            resumed += 1;
                            metrics.fill_resumes.inc();
                            tracing::info!(blob = ?blob, error = %e, "a fill failed; resuming it");
                        }
                        Err(e) => {
                            let shown = e.to_string();
                            break Err((Some(e), shown));
                        }
                    }
                    match fetch(Arc::clone(&watched)) {
                        Ok(next) => job = next,
                        Err(e) => break Err((None, e)),
                    }
                };
                let outcome = match result {
                    Ok(report) => {
                        metrics.fills.get_or_create(&Class::of("verified")).inc();
                        metrics.filled_bytes.inc_by(report.bytes);
                        on_success();
                        Ok(())
                    }
                    Err((e, shown)) => {
                        metrics.fills.get_or_create(&Class::of("failed")).inc();
                        if matches!(e, Some(GetError::ChecksumMismatch { .. })) {
                            metrics.verification_failures.inc();
                        }
                        tracing::warn!(blob = ?blob, error = %shown, "a mirror fill failed");
                        Err(shown)
                    }
                };
                // Removed before readers learn the outcome: a reader that comes after finds
                // the blob in place, or starts a new fill.
                fills
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&blob);
                watched.finish(outcome);
            });
        if let Err(e) = spawned {
            // The job runs on; without a thread to wait for it, its readers are failed.
            fill.finish(Err(format!("cannot start a thread for the fill: {e}")));
            return Err(e.to_string());
        }
        Ok(Joined::Filling(fill))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merges_overlapping_and_touching_ranges() {
        let mut s = Vec::new();
        insert(&mut s, 10..20);
        insert(&mut s, 30..40);
        assert_eq!(s, vec![10..20, 30..40]);
        insert(&mut s, 20..25);
        assert_eq!(s, vec![10..25, 30..40]);
        insert(&mut s, 0..5);
        assert_eq!(s, vec![0..5, 10..25, 30..40]);
        insert(&mut s, 4..31);
        assert_eq!(s, vec![0..40]);
        insert(&mut s, 50..50);
        assert_eq!(s, vec![0..40]);
    }

    #[test]
    fn a_reader_gets_only_landed_bytes_and_fails_when_the_fetch_starts_over() {
        let fill = Arc::new(Fill::new(100, Arc::new(Metrics::new())));
        let mut reader = fill.reader();
        assert!(matches!(reader.ready(0), Ready::Wait));
        let file = tempfile::tempfile().expect("tempfile");
        fill.fresh(std::os::fd::AsFd::as_fd(&file), true);
        assert!(matches!(reader.ready(0), Ready::Wait));
        fill.written(10, 10);
        assert!(matches!(reader.ready(0), Ready::Wait));
        fill.written(0, 10);
        match reader.ready(5) {
            Ready::Bytes { until, .. } => assert_eq!(until, 20),
            other => panic!("{other:?}"),
        }
        assert_eq!(reader.seen, Some(1));
        assert!(matches!(reader.ready(20), Ready::Wait));
        // A fetch that goes on from the bytes written keeps them, and its readers.
        fill.fresh(std::os::fd::AsFd::as_fd(&file), false);
        assert!(matches!(reader.ready(5), Ready::Bytes { until: 20, .. }));
        // The fetch starts over: a reader that sent bytes of the first one is failed ...
        fill.fresh(std::os::fd::AsFd::as_fd(&file), true);
        assert!(matches!(reader.ready(20), Ready::Failed(_)));
        // ... one that had sent nothing waits for the new bytes.
        let mut fresh_reader = fill.reader();
        assert!(matches!(fresh_reader.ready(0), Ready::Wait));
        fill.finish(Err("upstream gone".into()));
        assert!(matches!(
            fresh_reader.wait_ready(0, Duration::from_secs(5)),
            Ready::Failed(e) if e == "upstream gone"
        ));
    }

    #[test]
    fn a_waiting_reader_wakes_when_its_bytes_land() {
        let fill = Arc::new(Fill::new(20, Arc::new(Metrics::new())));
        let file = tempfile::tempfile().expect("tempfile");
        fill.fresh(std::os::fd::AsFd::as_fd(&file), true);
        let writer = Arc::clone(&fill);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.written(0, 10);
        });
        let got = fill.reader().wait_ready(0, Duration::from_secs(30));
        t.join().expect("writer");
        assert!(matches!(got, Ready::Bytes { until: 10, .. }), "{got:?}");
    }

    #[test]
    fn the_last_byte_waits_for_the_verdict() {
        let fill = Arc::new(Fill::new(10, Arc::new(Metrics::new())));
        let file = tempfile::tempfile().expect("tempfile");
        fill.fresh(std::os::fd::AsFd::as_fd(&file), true);
        fill.written(0, 10);
        let mut reader = fill.reader();
        assert!(matches!(reader.ready(0), Ready::Bytes { until: 9, .. }));
        assert!(matches!(reader.ready(9), Ready::Wait));
        fill.finish(Ok(()));
        assert!(matches!(reader.ready(9), Ready::Bytes { until: 10, .. }));
        let bad = Arc::new(Fill::new(10, Arc::new(Metrics::new())));
        bad.fresh(std::os::fd::AsFd::as_fd(&file), true);
        bad.written(0, 10);
        bad.finish(Err("sha256 mismatch".into()));
        assert!(matches!(bad.reader().ready(9), Ready::Failed(_)));
    }

    #[test]
    fn blocked_readers_say_what_is_wanted_until_they_get_bytes_or_leave() {
        let fill = Arc::new(Fill::new(100, Arc::new(Metrics::new())));
        let file = tempfile::tempfile().expect("tempfile");
        fill.fresh(std::os::fd::AsFd::as_fd(&file), true);
        let (mut a, mut b, mut c) = (fill.reader(), fill.reader(), fill.reader());
        assert!(matches!(a.ready(70), Ready::Wait));
        // Later than a (the clock must tell them apart).
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(b.ready(30), Ready::Wait));
        assert!(matches!(c.ready(30), Ready::Wait));
        // The longest waiting first.
        assert_eq!(fill.wanted(), vec![70, 30]);
        fill.written(30, 10);
        assert!(matches!(b.ready(30), Ready::Bytes { .. }));
        assert_eq!(fill.wanted(), vec![70, 30], "c has not looked again yet");
        drop(c);
        assert_eq!(fill.wanted(), vec![70]);
        drop(a);
        assert!(fill.wanted().is_empty());
    }
}
