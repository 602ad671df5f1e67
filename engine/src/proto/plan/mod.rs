//! Sans-IO download planning: which bytes of a file each connection fetches next. No I/O, no
//! clock, no `unsafe`; every decision is a method call, so the tests drive it deterministically.
//!
//! A connection holds a *lease*: a byte range it requests with one `Range` GET. Leases come, in
//! this order of preference, from:
//!
//! 1. **retries**: the unreceived rest of a lease whose body ended short (bounded, see
//!    [`Plan::give_back`]);
//! 2. **the frontier**, front to back, in chunks sized from what is left (about two per
//!    connection, 1-8 MiB, whole MiB so O_DIRECT offsets stay aligned). Going front to back keeps
//!    the contiguous received prefix close behind the connections, so the sha256 that follows it
//!    can be fed from buffers still in memory. A file resumed from a journal has a frontier with
//!    holes: only the gaps between the ranges already on disk are handed out
//!    ([`Plan::with_gaps`]);
//!    Before the frontier's front, a range some reader wants ([`Plan::take_wanting`]: a
//!    mirror's client blocked at an offset, or reading towards one) is carved out of the
//!    frontier where it lies, so that reader does not wait for the front to get there; a
//!    reader stalled inside another connection's lease has that lease cut for it;
//! 3. **a split** once the frontier is used up: the connection takes the largest run another
//!    connection has not yet received, cut at its middle (on a MiB boundary), so every
//!    connection finishes at about the same time instead of one straggler fetching the tail.
//!
//! A lease holder asks [`Plan::reserve`] before each read how much it may still read; a split
//! never moves a lease's end below what its holder has reserved, so no byte is fetched twice and
//! none is skipped. A plan covers one file; [`files`] decides which file a free connection
//! works on next.
#![forbid(unsafe_code)]

pub(crate) mod files;
pub(crate) mod grow;

use std::collections::VecDeque;
use std::ops::Range;

/// Smallest chunk the frontier hands out (except the file's tail).
pub(crate) const MIN_CHUNK: u64 = 1 << 20;
/// Largest chunk the frontier hands out: large enough that a request per lease costs nothing
/// measurable. A verified file's chunks may be smaller still ([`Plan::spread_within`]).
pub(crate) const MAX_CHUNK: u64 = 8 << 20;
/// The range asked for before the size is known.
pub(crate) const FIRST_CHUNK: u64 = 4 << 20;
/// Split points fall on multiples of this, and both halves of a split are at least this long.
pub(crate) const SPLIT_ALIGN: u64 = 1 << 20;
/// Short answers retried per file before the download fails.
pub(crate) const MAX_RETRIES: u32 = 8;
/// Stalled leases handed to a new connection per file without using a retry
/// ([`Plan::hedge`]); past them a stall waits for the watchdog like any read.
pub(crate) const MAX_HEDGES: u32 = 8;

/// A lease's identity, valid until [`Plan::complete`] or [`Plan::give_back`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseId(usize);

#[derive(Debug, Clone)]
struct Lease {
    start: u64,
    end: u64,
    /// The holder may have read bytes up to here; a split never cuts below it.
    reserved: u64,
}

/// Where a lease came from (for the report and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseOrigin {
    Retry,
    Frontier,
    Split,
}

/// Bytes someone waits for (a reader of the partial file, [`crate::download::Watch`]): the
/// next lease starts in `range` rather than at the frontier's front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) range: Range<u64>,
    /// The reader has waited at `range.start` long enough that, when another connection holds
    /// that offset, its lease is cut there for a free connection ([`Plan::take_wanting`]).
    pub(crate) stalled: bool,
}

impl Want {
    /// The bytes from `at`, wanted now (a reader blocked there).
    pub(crate) fn at(at: u64, stalled: bool) -> Want {
        Want {
            range: at..at + 1,
            stalled,
        }
    }
}

/// The plan of one file of known size.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    total: u64,
    /// What the frontier has not handed out yet: disjoint, in file order, none empty. Its
    /// first range starts at the frontier.
    todo: VecDeque<Range<u64>>,
    connections: u64,
    chunk: Option<u64>,
    /// The largest chunk the frontier hands out by default.
    max_chunk: u64,
    /// What one lease per connection may span at most ([`Plan::spread_within`]).
    spread: Option<u64>,
    leases: Vec<Option<Lease>>,
    retry: Vec<Range<u64>>,
    retries_left: u32,
    hedges_left: u32,
    splits: u64,
    /// Whether an idle connection may split another's lease ([`Plan::without_splits`]).
    may_split: bool,
}

impl Plan {
    /// A plan for `total` bytes whose first `done` bytes are taken care of already. `chunk`
    /// fixes the frontier's chunk size (tests and `--chunk-size`); by default it shrinks with
    /// what is left.
    #[cfg(test)]
    pub(crate) fn new(total: u64, done: u64, connections: usize, chunk: Option<u64>) -> Plan {
        Plan::with_gaps(total, std::iter::once(done..total), connections, chunk)
    }

    /// A plan for `total` bytes of which only `gaps` are left to fetch (a file resumed from
    /// its journal). Gaps are clipped to the file and may come in any order; overlapping ones
    /// are merged.
    pub(crate) fn with_gaps(
        total: u64,
        gaps: impl IntoIterator<Item = Range<u64>>,
        connections: usize,
        chunk: Option<u64>,
    ) -> Plan {
        let mut sorted: Vec<Range<u64>> = gaps
            .into_iter()
            .map(|g| g.start.min(total)..g.end.min(total))
            .filter(|g| g.start < g.end)
            .collect();
        sorted.sort_by_key(|g| g.start);
        let mut todo: VecDeque<Range<u64>> = VecDeque::with_capacity(sorted.len());
        for g in sorted {
            match todo.back_mut() {
                Some(last) if g.start <= last.end => last.end = last.end.max(g.end),
                _ => todo.push_back(g),
            }
        }
        Plan {
            total,
            todo,
            connections: connections.max(1) as u64,
            chunk: chunk.map(|c| c.max(1)),
            max_chunk: MAX_CHUNK,
            spread: None,
            leases: Vec::new(),
            retry: Vec::new(),
            retries_left: MAX_RETRIES,
            hedges_left: MAX_HEDGES,
            splits: 0,
            may_split: true,
        }
    }

    /// Leases `range`, which must lie within one range the frontier has not handed out: the
    /// first request of a download is sent before the plan exists (its answer tells the size),
    /// and becomes its first lease.
    pub(crate) fn claim(&mut self, range: Range<u64>) -> LeaseId {
        let end = range.end.min(self.total);
        if range.start >= end {
            return self.insert(range.start..range.start);
        }
        let i = self
            .todo
            .iter()
            .position(|g| g.start <= range.start && end <= g.end)
            .expect("claims lie within what is left");
        let gap = self.todo[i].clone();
        match (gap.start < range.start, end < gap.end) {
            (false, false) => {
                self.todo.remove(i);
            }
            (false, true) => self.todo[i].start = end,
            (true, false) => self.todo[i].end = range.start,
            (true, true) => {
                self.todo[i].end = range.start;
                self.todo.insert(i + 1, end..gap.end);
            }
        }
        self.insert(range.start..end)
    }

    /// The next lease for a free connection, or `None` when nothing is left to hand out (other
    /// connections may still be receiving).
    pub(crate) fn take(&mut self) -> Option<(LeaseId, Range<u64>, LeaseOrigin)> {
        if let Some(r) = self.retry.pop() {
            return Some((self.insert(r.clone()), r, LeaseOrigin::Retry));
        }
        if let Some(gap) = self.todo.front() {
            let start = gap.start;
            let end = (start + self.chunk_len()).min(gap.end);
            if end == gap.end {
                self.todo.pop_front();
            } else if let Some(gap) = self.todo.front_mut() {
                gap.start = end;
            }
            return Some((self.insert(start..end), start..end, LeaseOrigin::Frontier));
        }
        if !self.may_split {
            return None;
        }
        let (victim, mid) = self
            .leases
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i, l.as_ref()?)))
            .filter_map(|(i, l)| Some((i, split_point(l)?, l.end - l.reserved)))
            .max_by_key(|&(i, _, left)| (left, std::cmp::Reverse(i)))
            .map(|(i, mid, _)| (i, mid))?;
        let lease = self.leases[victim].as_mut().expect("victim exists");
        let end = lease.end;
        lease.end = mid;
        self.splits += 1;
        Some((self.insert(mid..end), mid..end, LeaseOrigin::Split))
    }

    /// [`Plan::take`], except that a range someone wants ([`Want`], most urgent first) is
    /// served first. Retries still come first; then the first wanted range with bytes in the
    /// frontier gets a lease starting there (on a [`SPLIT_ALIGN`] boundary at or below it);
    /// failing that, when `hedge` and a wanted offset is [`Want::stalled`] inside another
    /// connection's lease, past what its holder reserved, that lease is cut there and its rest
    /// is this lease (even in a plan [`without splits`](Plan::without_splits): a reader that
    /// waits is worth the few bytes the origin may already have sent of the cut rest).
    pub(crate) fn take_wanting(
        &mut self,
        wanted: &[Want],
        hedge: bool,
    ) -> Option<(LeaseId, Range<u64>, LeaseOrigin)> {
        if self.retry.is_empty() {
            if let Some(r) = wanted.iter().find_map(|w| self.carve(w.range.clone())) {
                return Some((self.insert(r.clone()), r, LeaseOrigin::Frontier));
            }
            if hedge
                && let Some(r) = wanted
                    .iter()
                    .filter(|w| w.stalled)
                    .find_map(|w| self.cut_at(w.range.start))
            {
                return Some((self.insert(r.clone()), r, LeaseOrigin::Split));
            }
        }
        self.take()
    }

    /// Cuts the live lease that holds `at` so that its rest from `at` (from the
    /// [`SPLIT_ALIGN`] boundary below it, when its holder has not reserved that far) is
    /// handed out; `None` when no lease holds `at` past its start and past what its holder
    /// reserved.
    fn cut_at(&mut self, at: u64) -> Option<Range<u64>> {
        let lease = self
            .leases
            .iter_mut()
            .flatten()
            .find(|l| l.start <= at && at < l.end)?;
        let aligned = at - at % SPLIT_ALIGN;
        let point = if aligned >= lease.reserved {
            aligned
        } else {
            at
        };
        if point <= lease.start || point < lease.reserved {
            return None;
        }
        let end = lease.end;
        lease.end = point;
        self.splits += 1;
        Some(point..end)
    }

    /// Takes a chunk out of the first frontier gap that overlaps `want`, starting where they
    /// first overlap (on a [`SPLIT_ALIGN`] boundary at or below it, within the gap); `None`
    /// when no gap overlaps it.
    fn carve(&mut self, want: Range<u64>) -> Option<Range<u64>> {
        let i = self
            .todo
            .iter()
            .position(|g| g.start < want.end.max(want.start + 1) && want.start < g.end)?;
        let gap = self.todo[i].clone();
        let at = want.start.max(gap.start);
        let start = (at - at % SPLIT_ALIGN).max(gap.start);
        let end = (start + self.chunk_len()).min(gap.end);
        let (before, after) = (gap.start..start, end..gap.end);
        self.todo.remove(i);
        if !after.is_empty() {
            self.todo.insert(i, after);
        }
        if !before.is_empty() {
            self.todo.insert(i, before);
        }
        Some(start..end)
    }

    /// A lease to ask for ahead, behind the one a connection is reading (HTTP/1.1 pipelining):
    /// a retry or the frontier's next chunk, never a split. Splitting a lease that another
    /// connection is reading pays only once a connection is idle; ahead of time it would only
    /// cut leases that are about to be read.
    pub(crate) fn take_ahead(&mut self, wanted: &[Want]) -> Option<(LeaseId, Range<u64>)> {
        if self.retry.is_empty() && self.todo.is_empty() {
            return None;
        }
        self.take_wanting(wanted, false)
            .map(|(id, range, _)| (id, range))
    }

    /// A lease none of whose bytes was read (its request was pipelined behind an answer that
    /// did not end well, or the server closed before answering it) goes back whole, as far as
    /// its end is now, without using a retry: nothing of it failed.
    pub(crate) fn put_back(&mut self, id: LeaseId) {
        let lease = self.leases[id.0].take().expect("live lease");
        if lease.start < lease.end {
            self.retry.push(lease.start..lease.end);
        }
    }

    /// The holder of `id`, now at `at`, wants to read up to `want` more bytes: how many it may
    /// (0 once a split has moved the lease's end to `at`).
    pub(crate) fn reserve(&mut self, id: LeaseId, at: u64, want: u64) -> u64 {
        let lease = self.lease_mut(id);
        debug_assert!(
            at >= lease.start && at <= lease.end,
            "read outside its lease"
        );
        let allowed = want.min(lease.end.saturating_sub(at));
        lease.reserved = lease.reserved.max(at + allowed);
        allowed
    }

    /// Where the lease ends now (a split may have moved it down).
    #[cfg(test)]
    pub(crate) fn end_of(&self, id: LeaseId) -> u64 {
        self.leases[id.0].as_ref().expect("live lease").end
    }

    /// The lease was received up to its (current) end.
    pub(crate) fn complete(&mut self, id: LeaseId) {
        self.leases[id.0] = None;
    }

    /// The lease's body ended at `at`, short of its end: the rest goes back to be fetched again.
    /// Returns where the lease ended (a split may have moved it down); `Err` when this file has
    /// used up its retries (the download then fails).
    pub(crate) fn give_back(&mut self, id: LeaseId, at: u64) -> Result<u64, ()> {
        let lease = self.leases[id.0].take().expect("live lease");
        if at >= lease.end {
            return Ok(lease.end);
        }
        if self.retries_left == 0 {
            return Err(());
        }
        self.retries_left -= 1;
        self.retry.push(at..lease.end);
        Ok(lease.end)
    }

    /// The lease's flow stalled at `at` while other connections kept moving: the rest goes
    /// back to be fetched on another connection, without using a retry while the file has
    /// hedges left ([`MAX_HEDGES`]; then as [`Plan::give_back`]). Returns where the lease ended.
    pub(crate) fn hedge(&mut self, id: LeaseId, at: u64) -> Result<u64, ()> {
        if self.hedges_left == 0 {
            return self.give_back(id, at);
        }
        let lease = self.leases[id.0].take().expect("live lease");
        if at < lease.end {
            self.hedges_left -= 1;
            self.retry.push(at..lease.end);
        }
        Ok(lease.end)
    }

    /// Whether a stalled lease may still be handed on without using a retry.
    pub(crate) fn may_hedge(&self) -> bool {
        self.hedges_left > 0
    }

    /// Retries used so far.
    pub(crate) fn retries(&self) -> u32 {
        MAX_RETRIES.saturating_sub(self.retries_left)
    }

    /// Allows [`MAX_RETRIES`] per source of the file (its URL and each mirror): a mirror that
    /// fails uses its own share, not the others'.
    pub(crate) fn with_sources(mut self, sources: usize) -> Plan {
        self.retries_left = MAX_RETRIES * sources.max(1) as u32;
        self
    }

    /// No splits and no stall hedges: a lease already asked for is read by its holder alone,
    /// so the origin sends every byte once (a split's or a hedge's origin has often sent the
    /// rest of the lease already, into the socket) at the cost of a tail fetched by fewer
    /// connections and of a stalled flow waiting for the watchdog, or for a reader stalled
    /// there to cut it ([`Plan::take_wanting`]). For a mirror, whose upstream's egress is
    /// what it saves.
    pub(crate) fn without_splits(mut self) -> Plan {
        self.may_split = false;
        self.hedges_left = 0;
        self
    }

    /// Keeps the frontier's default chunks small enough that one lease per connection spans at
    /// most `bytes` (rounded down to [`MIN_CHUNK`], within [`MIN_CHUNK`]..=[`MAX_CHUNK`]). For a
    /// verified file, whose hash follows the received prefix: the bytes received past a lagging
    /// lease wait in the verifier's window, so the leases in flight must span well less than
    /// the window, or it fills, the other connections stop and the hash waits for the one that
    /// lags. A fixed `--chunk-size` is kept as given.
    pub(crate) fn spread_within(mut self, bytes: u64) -> Plan {
        self.spread = Some(bytes);
        self.max_chunk =
            (bytes / self.connections / MIN_CHUNK * MIN_CHUNK).clamp(MIN_CHUNK, MAX_CHUNK);
        self
    }

    /// The job now keeps `connections` open (connections by measurement, [`grow`]): the
    /// frontier's chunks are sized for them from now on.
    pub(crate) fn set_connections(&mut self, connections: usize) {
        self.connections = connections.max(1) as u64;
        if let Some(bytes) = self.spread {
            self.max_chunk =
                (bytes / self.connections / MIN_CHUNK * MIN_CHUNK).clamp(MIN_CHUNK, MAX_CHUNK);
        }
    }

    /// Splits made so far.
    pub(crate) fn splits(&self) -> u64 {
        self.splits
    }

    /// Bytes the frontier has not handed out yet.
    pub(crate) fn frontier_left(&self) -> u64 {
        self.todo.iter().map(|g| g.end - g.start).sum()
    }

    /// True when [`Plan::take`] would hand out a lease now.
    pub(crate) fn has_work(&self) -> bool {
        !self.retry.is_empty()
            || !self.todo.is_empty()
            || self.may_split
                && self
                    .leases
                    .iter()
                    .flatten()
                    .any(|l| split_point(l).is_some())
    }

    fn chunk_len(&self) -> u64 {
        self.chunk
            .unwrap_or_else(|| auto_chunk(self.frontier_left(), self.connections, self.max_chunk))
    }

    fn insert(&mut self, r: Range<u64>) -> LeaseId {
        let lease = Lease {
            start: r.start,
            end: r.end,
            reserved: r.start,
        };
        match self.leases.iter().position(Option::is_none) {
            Some(i) => {
                self.leases[i] = Some(lease);
                LeaseId(i)
            }
            None => {
                self.leases.push(Some(lease));
                LeaseId(self.leases.len() - 1)
            }
        }
    }

    fn lease_mut(&mut self, id: LeaseId) -> &mut Lease {
        self.leases[id.0].as_mut().expect("live lease")
    }
}

/// The parts of `0..size` that `done` (disjoint, in file order) does not cover: what is left
/// of a file resumed with those ranges on disk.
pub(crate) fn gaps(done: &[Range<u64>], size: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = 0;
    for r in done {
        if r.start > at {
            out.push(at..r.start.min(size));
        }
        at = at.max(r.end);
    }
    if at < size {
        out.push(at..size);
    }
    out.retain(|g| g.start < g.end);
    out
}

/// Where a lease could be split: the middle of what its holder has not reserved, on a
/// [`SPLIT_ALIGN`] boundary, leaving at least that much on each side.
fn split_point(l: &Lease) -> Option<u64> {
    let left = l.end - l.reserved;
    if left < 2 * SPLIT_ALIGN {
        return None;
    }
    // left >= 2 * SPLIT_ALIGN, so rounding down stays above `reserved` and leaves at least
    // SPLIT_ALIGN above the cut.
    Some((l.reserved + left / 2) / SPLIT_ALIGN * SPLIT_ALIGN)
}

/// About two chunks per connection over `remaining` bytes, clamped to `MIN_CHUNK..=max` and
/// rounded to 1 MiB: large while much is left, smaller near the end.
fn auto_chunk(remaining: u64, connections: u64, max: u64) -> u64 {
    let per = remaining / (connections.max(1) * 2);
    per.clamp(MIN_CHUNK, max) / MIN_CHUNK * MIN_CHUNK
}

#[cfg(test)]
mod tests;
