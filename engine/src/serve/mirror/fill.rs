//! A fill: one blob being fetched from the upstream, and what its readers wait on. The engine
//! tells the fill of every write of the partial file as it completes ([`Watch`]); a reader
//! sends each stretch of bytes as soon as it has landed, from its own descriptor of the
//! partial file, so a second client of a cold file gets bytes at once, not when the file is
//! done. Readers steer the fetch ([`Watch::wanted`]): where a reader is blocked is fetched
//! next, a reader blocked for seconds inside another connection's lease has it cut, and a
//! reading reader's next seconds of bytes (by its measured rate) are asked for ahead of it.
//!
//! Invariants: the server owns a fill, not a request: a reader that leaves stops nothing, and
//! there is at most one fill per blob ([`Fills`]). A reader never sends a byte that has not
//! landed in the current fetch, and if the fetch starts over (the partial file emptied), a
//! reader that already sent bytes of the earlier one is failed rather than continued, since
//! the two fetches' bytes need not agree. Bytes sent before the hash matched are unverified;
//! the blob's last byte is never sent before it, and the 64 KiB before it only one every two
//! seconds, so a client never has all of a wrong file nor waits 10 s for a byte. Only a
//! verified blob is published under its final name. Not here: what to fetch (the upstream,
//! `hub/upstream.rs`), HTTP.

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
use crate::proto::plan::Want;

/// One blob being fetched.
#[derive(Debug)]
pub(crate) struct Fill {
    /// The blob's size: its last [`HELD`] bytes are held back until the blob is verified.
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
    /// Where each reader is, by reader: what the fetch takes next.
    seats: HashMap<u64, Seat>,
    /// The next reader's id.
    readers: u64,
}

/// Where one reader is.
#[derive(Debug, Clone, Copy)]
struct Seat {
    pos: u64,
    /// Since when it waits at `pos` for bytes that have not landed.
    blocked: Option<Instant>,
    /// Bytes per second it took, since its first bytes.
    rate: f64,
}

/// Wanted ranges told to the engine at most.
const MAX_WANTED: usize = 16;
/// A reader blocked this long at an offset another connection holds has that connection's
/// lease cut there ([`crate::proto::plan::Plan::take_wanting`]).
const STALLED: Duration = Duration::from_secs(3);
/// How far ahead of a reader its bytes are asked for: what it takes in this long, within
/// [`AHEAD_MIN`]..=[`AHEAD_MAX`].
const AHEAD: Duration = Duration::from_secs(2);
const AHEAD_MIN: u64 = 4 << 20;
const AHEAD_MAX: u64 = 64 << 20;
/// The tail held back until the blob is verified, so that a reader of the whole file never
/// gets all of a wrong one: its body ends short, and the client's own checks fail.
const HELD: u64 = 64 << 10;
/// While a reader waits for the verdict with only held bytes left, it gets one of them this
/// often (all but the last), so that no client goes 10 s without a byte (huggingface_hub's
/// read timeout) however long the rest of the blob takes to land.
const TRICKLE: Duration = Duration::from_secs(2);

/// One reader of a fill: where it is says what the fetch takes next, until it is dropped.
#[derive(Debug)]
pub(crate) struct Reader {
    fill: Arc<Fill>,
    id: u64,
    /// The generation it sent its first bytes from.
    seen: Option<u64>,
    /// Whether the blob was verified when bytes were last handed out.
    verified: bool,
    /// When it sent its first bytes, and how many it sent since.
    since: Option<Instant>,
    sent: u64,
    /// When it last sent bytes.
    last: Option<Instant>,
}

impl Reader {
    /// What this reader at `pos` can send now; when nothing, `pos` is wanted next.
    pub(crate) fn ready(&mut self, pos: u64) -> Ready {
        let fill = Arc::clone(&self.fill);
        let mut state = fill.lock();
        self.look(&mut state, pos, Instant::now())
    }

    /// [`Reader::ready`] at `now`, with the fill's state locked.
    fn look(&mut self, state: &mut State, pos: u64, now: Instant) -> Ready {
        let trickle = self.last.is_none_or(|t| now.duration_since(t) >= TRICKLE);
        let (ready, landed) = check(state, self.fill.size, pos, &mut self.seen, trickle);
        let seat = state.seats.entry(self.id).or_insert(Seat {
            pos,
            blocked: None,
            rate: 0.0,
        });
        seat.blocked = match (&ready, seat.blocked) {
            (Ready::Wait, Some(since)) if !landed && seat.pos == pos => Some(since),
            (Ready::Wait, _) if !landed => Some(now),
            _ => None,
        };
        seat.pos = pos;
        if let Some(since) = self.since {
            let secs = now.duration_since(since).as_secs_f64().max(0.1);
            seat.rate = self.sent as f64 / secs;
        }
        if matches!(ready, Ready::Bytes { .. }) {
            self.last = Some(now);
            self.since.get_or_insert(now);
        }
        self.verified = matches!(state.outcome, Some(Ok(())));
        ready
    }

    /// `n` bytes handed out by the last [`Reader::ready`] were sent (counted for `/metrics`).
    pub(crate) fn sent(&mut self, n: u64) {
        self.sent += n;
        self.fill.metrics.bytes_from_fills.inc_by(n);
        if !self.verified {
            self.fill.metrics.bytes_unverified.inc_by(n);
        }
    }

    /// [`Reader::ready`], waiting up to `limit` for bytes at `pos` to land.
    pub(crate) fn wait_ready(&mut self, pos: u64, limit: Duration) -> Ready {
        let fill = Arc::clone(&self.fill);
        let mut state = fill.lock();
        let deadline = Instant::now() + limit;
        loop {
            let ready = self.look(&mut state, pos, Instant::now());
            let left = deadline.saturating_duration_since(Instant::now());
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

impl Drop for Reader {
    fn drop(&mut self) {
        self.fill.lock().seats.remove(&self.id);
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
            since: None,
            sent: 0,
            last: None,
        }
    }

    /// The fetch ended: wakes every reader.
    pub(crate) fn finish(&self, outcome: Result<(), String>) {
        self.lock().outcome = Some(outcome);
        self.changed.notify_all();
    }

    /// What readers want fetched next at `now`, most urgent first: the offsets blocked
    /// readers wait at (the longest waiting first: with many readers blocked, clients that
    /// read a file in ranges each at its own offsets, one far ahead is not starved by those
    /// near the fill's front, which it moves past anyway), then what each reading reader will
    /// want next, within what it takes in [`AHEAD`] (the nearest first).
    fn wanted_at(&self, now: Instant) -> Vec<Want> {
        let state = self.lock();
        let mut blocked: Vec<(Instant, u64)> = state
            .seats
            .values()
            .filter_map(|s| Some((s.blocked?, s.pos)))
            .collect();
        blocked.sort_unstable();
        let mut wanted: Vec<Want> = Vec::with_capacity(MAX_WANTED);
        for (since, pos) in blocked {
            if !wanted.iter().any(|w| w.range.start == pos) {
                wanted.push(Want::at(pos, now.duration_since(since) >= STALLED));
            }
        }
        let mut ahead: Vec<(u64, Range<u64>)> = state
            .seats
            .values()
            .filter(|s| s.blocked.is_none() && s.rate > 0.0)
            .filter_map(|s| {
                let reach = ((s.rate * AHEAD.as_secs_f64()) as u64).clamp(AHEAD_MIN, AHEAD_MAX);
                let end = s.pos.saturating_add(reach).min(self.size);
                let next = next_missing(&state.landed, s.pos);
                (next < end).then(|| (next - s.pos, next..end))
            })
            .collect();
        ahead.sort_unstable_by_key(|(gap, r)| (*gap, r.start));
        wanted.extend(ahead.into_iter().map(|(_, range)| Want {
            range,
            stalled: false,
        }));
        wanted.truncate(MAX_WANTED);
        wanted
    }
}

/// The first byte at or after `pos` that has not landed.
fn next_missing(landed: &[Range<u64>], pos: u64) -> u64 {
    let i = landed.partition_point(|r| r.end <= pos);
    match landed.get(i) {
        Some(r) if r.start <= pos => r.end,
        _ => pos,
    }
}

/// What a reader at `pos` may send, and whether `pos` has landed. Before the verdict the last
/// [`HELD`] bytes go out one at a time, when `trickle` (the reader sent nothing for
/// [`TRICKLE`]), and the very last byte not at all.
fn check(
    state: &State,
    size: u64,
    pos: u64,
    seen: &mut Option<u64>,
    trickle: bool,
) -> (Ready, bool) {
    if let Some(Err(e)) = &state.outcome {
        return (Ready::Failed(e.clone()), false);
    }
    if seen.is_some_and(|g| g != state.generation) {
        let why = "the upstream fetch started over after bytes were sent";
        return (Ready::Failed(why.into()), false);
    }
    let Some(file) = &state.file else {
        return (Ready::Wait, false);
    };
    // The first stretch ending past `pos`; it holds `pos` when it starts at or before it.
    let i = state.landed.partition_point(|r| r.end <= pos);
    match state.landed.get(i) {
        Some(r) if r.start <= pos => {
            let verified = matches!(state.outcome, Some(Ok(())));
            let held = size.saturating_sub(HELD);
            let until = if verified {
                r.end
            } else if pos < held {
                r.end.min(held)
            } else if trickle {
                r.end.min(pos + 1).min(size.saturating_sub(1))
            } else {
                pos
            };
            if until <= pos {
                return (Ready::Wait, true);
            }
            *seen = Some(state.generation);
            let ready = Ready::Bytes {
                file: Arc::clone(file),
                until,
            };
            (ready, true)
        }
        _ => (Ready::Wait, false),
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

    fn wanted(&self) -> Vec<Want> {
        self.wanted_at(Instant::now())
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
        let blocked = running
            .values()
            .map(|f| {
                f.lock()
                    .seats
                    .values()
                    .filter(|s| s.blocked.is_some())
                    .count()
            })
            .sum();
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
                        tracing::info!(
                            blob = ?blob, bytes = report.bytes, seconds = report.seconds,
                            retries = report.retries, splits = report.splits,
                            hedged = report.hedged, "a fill is in place, verified"
                        );
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

    /// A fill of `HELD + 100` bytes: its first 100 are sent as they land.
    fn fill() -> Arc<Fill> {
        Arc::new(Fill::new(HELD + 100, Arc::new(Metrics::new())))
    }

    #[test]
    fn a_reader_gets_only_landed_bytes_and_fails_when_the_fetch_starts_over() {
        let fill = fill();
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
        let fill = fill();
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

    /// What `reader` at `pos` gets at `now`: `Some(until)` for bytes, `None` for a wait.
    fn at(reader: &mut Reader, pos: u64, now: Instant) -> Option<u64> {
        let fill = Arc::clone(&reader.fill);
        let mut state = fill.lock();
        match reader.look(&mut state, pos, now) {
            Ready::Bytes { until, .. } => Some(until),
            Ready::Wait => None,
            Ready::Failed(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_tail_trickles_until_the_verdict_and_the_last_byte_waits_for_it() {
        let size = 3 * HELD;
        let fill = Arc::new(Fill::new(size, Arc::new(Metrics::new())));
        let file = tempfile::tempfile().expect("tempfile");
        fill.fresh(std::os::fd::AsFd::as_fd(&file), true);
        fill.written(HELD, 2 * HELD);
        let t0 = Instant::now();
        let mut reader = fill.reader();
        // Up to the held tail at once.
        assert_eq!(at(&mut reader, HELD, t0), Some(2 * HELD));
        // Then one byte every TRICKLE, never sooner: no client waits 10 s for a byte.
        let mut pos = 2 * HELD;
        assert_eq!(at(&mut reader, pos, t0), None);
        assert_eq!(at(&mut reader, pos, t0 + TRICKLE / 2), None);
        assert_eq!(
            fill.wanted_at(t0 + TRICKLE / 2),
            vec![],
            "landed bytes held back are not wanted"
        );
        let mut now = t0;
        while pos < size - 1 {
            now += TRICKLE;
            assert_eq!(at(&mut reader, pos, now), Some(pos + 1), "at {pos}");
            pos += 1;
            if pos.is_multiple_of(4096) {
                // Skip ahead (the loop would take long): a reader that is not at the end.
                pos = (pos + 4096 * 3).min(size - 1);
            }
        }
        // The very last byte only once verified.
        now += 10 * TRICKLE;
        assert_eq!(at(&mut reader, size - 1, now), None);
        fill.finish(Ok(()));
        assert_eq!(at(&mut reader, size - 1, now), Some(size));
        // A reader whose range ends short of the tail is not held at all.
        assert_eq!(at(&mut fill.reader(), 0, now), None, "0..HELD never landed");
        // A failed blob's readers get nothing more.
        let bad = Arc::new(Fill::new(10, Arc::new(Metrics::new())));
        bad.fresh(std::os::fd::AsFd::as_fd(&file), true);
        bad.written(0, 10);
        let mut early = bad.reader();
        assert_eq!(at(&mut early, 0, t0), Some(1), "a small blob is all tail");
        assert_eq!(at(&mut early, 1, t0), None);
        bad.finish(Err("sha256 mismatch".into()));
        assert!(matches!(bad.reader().ready(9), Ready::Failed(_)));
    }

    #[test]
    fn blocked_readers_say_what_is_wanted_until_they_get_bytes_or_leave() {
        let fill = fill();
        let file = tempfile::tempfile().expect("tempfile");
        fill.fresh(std::os::fd::AsFd::as_fd(&file), true);
        let (mut a, mut b, mut c) = (fill.reader(), fill.reader(), fill.reader());
        let t0 = Instant::now();
        let starts = |now| -> Vec<(u64, bool)> {
            fill.wanted_at(now)
                .into_iter()
                .map(|w| (w.range.start, w.stalled))
                .collect()
        };
        assert_eq!(at(&mut a, 70, t0), None);
        assert_eq!(at(&mut b, 30, t0 + Duration::from_millis(2)), None);
        assert_eq!(at(&mut c, 30, t0 + Duration::from_millis(2)), None);
        // The longest waiting first; stalled once blocked for STALLED.
        assert_eq!(starts(t0), vec![(70, false), (30, false)]);
        assert_eq!(starts(t0 + STALLED), vec![(70, true), (30, false)]);
        fill.written(30, 10);
        assert_eq!(at(&mut b, 30, t0 + STALLED), Some(40));
        assert_eq!(
            starts(t0 + STALLED),
            vec![(70, true), (30, false)],
            "c has not looked again yet"
        );
        drop(c);
        // b read, but has no measured rate yet (its bytes are not sent): nothing ahead.
        assert_eq!(starts(t0 + STALLED), vec![(70, true)]);
        drop(a);
        assert!(starts(t0 + STALLED).is_empty());
    }

    #[test]
    fn a_reading_reader_wants_what_it_will_take_in_the_next_seconds() {
        const M: u64 = 1 << 20;
        let fill = Arc::new(Fill::new(1 << 30, Arc::new(Metrics::new())));
        let file = tempfile::tempfile().expect("tempfile");
        fill.fresh(std::os::fd::AsFd::as_fd(&file), true);
        fill.written(0, 10 * M);
        let t0 = Instant::now();
        let mut r = fill.reader();
        assert_eq!(at(&mut r, 0, t0), Some(10 * M));
        // It took 8 MiB in 1 s: 8 MiB/s, so 16 MiB ahead of it, from the first missing byte.
        r.sent(8 * M);
        assert_eq!(at(&mut r, 8 * M, t0 + Duration::from_secs(1)), Some(10 * M));
        let wanted = fill.wanted_at(t0 + Duration::from_secs(1));
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].range, 10 * M..24 * M);
        // A slow reader still gets AHEAD_MIN; a fast one at most AHEAD_MAX.
        r.sent(1000 * M);
        assert_eq!(at(&mut r, 9 * M, t0 + Duration::from_secs(2)), Some(10 * M));
        let wanted = fill.wanted_at(t0 + Duration::from_secs(2));
        assert_eq!(wanted[0].range, 10 * M..9 * M + AHEAD_MAX);
    }
}
