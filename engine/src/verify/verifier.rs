//! The [`Verifier`]: the in-order hash of one file written out of order, and the job-wide
//! [`Window`] that bounds the written buffers its verifiers keep.
//!
//! Invariants: the hashed prefix only grows; a buffer is counted either by its connection or by
//! the window until hashed; bytes that had to leave memory are recorded and read back once
//! (`download/readback.rs`); hashing runs outside the lock (the run that advances the prefix
//! takes the hasher). Not here: the digests themselves (`digest.rs`), any I/O.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::digest::{Checksum, HashAlgorithm, Hasher};
use crate::backend::buf::{AlignedBuf, BufPool, SharedBuf};

/// How the bytes reached the hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HashStats {
    /// Bytes hashed from buffers still in memory.
    pub from_memory: u64,
    /// Bytes read back from the file to be hashed.
    pub read_back: u64,
}

struct State {
    prefix: u64,
    /// Where the bytes end that are hashed or handed out to hash (to a run or a read-back
    /// claim): the prefix, or the end of the one in progress. A flying buffer a run has hashed
    /// lands below it while the prefix has not moved yet.
    claimed: u64,
    /// `None` while a thread hashes outside the lock (it owns the hasher meanwhile).
    hasher: Option<Hasher>,
    /// Written, not hashed, buffer kept: start -> buffer. All beyond `prefix`.
    stash: BTreeMap<u64, AlignedBuf>,
    stash_bytes: u64,
    /// Written, not hashed, buffer gone: start -> end, disjoint, all beyond `prefix`.
    written: BTreeMap<u64, u64>,
    /// Being written, not hashed: start -> a handle on the buffer. Counted by the connection
    /// that writes it, not by the window.
    flying: BTreeMap<u64, SharedBuf>,
    stats: HashStats,
    /// The prefix when a buffer last went to read-back because the window stayed full: while
    /// the prefix is still there, the next ones go at once ([`Verifier::stuck`]).
    spilled_at: Option<u64>,
}

/// A run of written bytes, at the prefix, whose buffers left memory: the caller reads it back
/// and hands the bytes to [`Verifier::complete_read_back`]. It owns the hasher meanwhile.
pub(crate) struct ReadBackClaim {
    pub range: Range<u64>,
    hasher: Hasher,
}

/// What a caller that handed the verifier bytes does next.
#[derive(Debug)]
#[must_use = "a run owns the hasher until it is hashed"]
pub(crate) enum HashStep<'a> {
    /// Buffers at the prefix to hash: the caller owns the hasher until the run is done.
    Hash(Run<'a>),
    /// Nothing to hash now; `read_back` when written bytes that left memory wait at the prefix.
    Idle { read_back: bool },
}

impl HashStep<'_> {
    /// Hashes this and every run that follows on the spot; returns whether read-back work
    /// waits at the prefix. For callers that need not stay responsive meanwhile.
    pub(crate) fn hash_all(self) -> bool {
        let mut next = self;
        loop {
            match next {
                HashStep::Hash(run) => next = run.finish(),
                HashStep::Idle { read_back } => return read_back,
            }
        }
    }
}

/// Buffers at the hashed prefix, contiguous, handed out to be hashed outside the verifier's lock,
/// one [`Run::step`] at a time, so a connection's worker can see to its other sockets between
/// buffers: hashing 64 MiB takes about 40 ms, time in which none of the worker's sockets would
/// otherwise be read. Each buffer goes back to the pool, and its room to the window, as soon as
/// it is hashed. A run owns the hasher meanwhile; dropped unfinished, it hashes the rest on the
/// spot so the hasher is never lost.
pub(crate) struct Run<'a> {
    verifier: &'a Verifier,
    hasher: Option<Hasher>,
    bufs: VecDeque<Held>,
    /// The file offset where `bufs` end.
    end: u64,
}

/// What became of a written buffer handed to [`Verifier::landed`].
#[derive(Debug)]
pub(crate) enum Landed {
    /// Back whole, for [`Verifier::written`].
    Back(AlignedBuf),
    /// Left to the run hashing it, counted by the window until hashed.
    Left,
    /// A run is hashing it and the window is full: try again later.
    Busy(SharedBuf),
}

/// A flying buffer's mark ([`SharedBuf::mark`]): counted by its connection,
const FLYING: u8 = 0;
/// left by its connection to the run hashing it and counted by the window,
const LEFT: u8 = 1;
/// or hashed by the run, which counts it no more.
const HASHED: u8 = 2;

/// A buffer in a [`Run`], by who counts it.
enum Held {
    /// The caller's own, just written: counted by its connection.
    Own(AlignedBuf),
    /// Kept: counted by the window, whose room it gives back once hashed.
    Kept(AlignedBuf),
    /// Its write in flight: counted by the connection writing it, which takes it back, or,
    /// once written and left to the run, by the window.
    Flying(SharedBuf),
}

impl Held {
    fn bytes(&self) -> &[u8] {
        match self {
            Held::Own(b) | Held::Kept(b) => b.bytes(),
            Held::Flying(b) => b.bytes(),
        }
    }
}

impl<'a> Run<'a> {
    /// Hashes the next buffer; false when all are hashed.
    pub(crate) fn step(&mut self) -> bool {
        let Some(b) = self.bufs.pop_front() else {
            return false;
        };
        self.hasher
            .as_mut()
            .expect("a run holds the hasher until it finishes")
            .update(b.bytes());
        match b {
            Held::Own(b) => BufPool::give(b),
            Held::Kept(b) => {
                self.verifier.window.give(b.bytes().len() as u64);
                BufPool::give(b);
            }
            Held::Flying(b) => {
                if b.mark().swap(HASHED, Ordering::AcqRel) == LEFT {
                    self.verifier.window.give(b.bytes().len() as u64);
                }
            }
        }
        true
    }

    /// Hashes what is left, moves the prefix to the run's end and hands the hasher back; what
    /// follows is the next run (kept buffers that continue it) or nothing.
    pub(crate) fn finish(mut self) -> HashStep<'a> {
        self.complete()
    }

    /// What [`Run::finish`] does, for `finish` and for a run dropped unfinished: afterwards the
    /// run holds no hasher and no buffer.
    fn complete(&mut self) -> HashStep<'a> {
        while self.step() {}
        let hasher = self
            .hasher
            .take()
            .expect("a run holds the hasher until it finishes");
        self.verifier.ran(hasher, self.end)
    }
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("buffers", &self.bufs.len())
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if self.hasher.is_some() {
            self.complete().hash_all();
        }
    }
}

/// The bytes of kept buffers all verifiers of a job may hold together: one memory bound for a
/// job, however many files it hashes at once.
#[derive(Debug)]
pub(crate) struct Window {
    limit: u64,
    used: AtomicU64,
}

impl Window {
    pub(crate) fn new(limit: u64) -> Arc<Window> {
        Arc::new(Window {
            limit,
            used: AtomicU64::new(0),
        })
    }

    fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// The in-order sha256 of one file being written out of order.
pub(crate) struct Verifier {
    state: Mutex<State>,
    /// Bytes of buffers the verifier may hold for later (its memory bound), shared by the job.
    window: Arc<Window>,
}

impl Verifier {
    /// A verifier of `algorithm` over a file of `len` bytes (only the git blob id needs it)
    /// that keeps buffers waiting for the prefix while `window` has room.
    pub(crate) fn new(window: Arc<Window>, algorithm: HashAlgorithm, len: u64) -> Verifier {
        Verifier {
            state: Mutex::new(State {
                prefix: 0,
                claimed: 0,
                hasher: Some(Hasher::new(algorithm, len)),
                stash: BTreeMap::new(),
                stash_bytes: 0,
                written: BTreeMap::new(),
                flying: BTreeMap::new(),
                stats: HashStats::default(),
                spilled_at: None,
            }),
            window,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `buf` was written at `at`. When it continues the prefix, the caller gets it back as a
    /// [`Run`] to hash, with any kept buffers that follow; otherwise it is kept while the window
    /// has room. `Err(buf)` when the window is full: the caller waits for the prefix to move
    /// (backpressure: hashing from memory beats reading back), or gives up waiting with
    /// [`Verifier::spill`].
    pub(crate) fn written(&self, at: u64, buf: AlignedBuf) -> Result<HashStep<'_>, AlignedBuf> {
        let len = buf.bytes().len() as u64;
        let mut s = self.lock();
        if len == 0 || at + len <= s.claimed {
            drop(s);
            BufPool::give(buf);
            return Ok(HashStep::Idle { read_back: false });
        }
        debug_assert!(at >= s.prefix, "a write overlapping the hashed prefix");
        if at == s.prefix && s.hasher.is_some() {
            return Ok(self.next_run(s, Some(Held::Own(buf))));
        }
        if self.window.try_take(len) {
            s.stash_bytes += len;
            s.stash.insert(at, buf);
            return Ok(HashStep::Idle { read_back: false });
        }
        Err(buf)
    }

    /// `buf`, whose write at `at` was just submitted, is hashed while it is written: now, when
    /// it continues the prefix and the hasher is free (what follows is it and the buffers that
    /// continue it, to hash, as from [`Verifier::written`]), or when the prefix reaches it. The
    /// write is still awaited before the file is settled; the connection gives the buffer back
    /// through [`Verifier::landed`] once written.
    pub(crate) fn submitted(&self, at: u64, buf: SharedBuf) -> Option<HashStep<'_>> {
        let len = buf.bytes().len() as u64;
        let mut s = self.lock();
        if len == 0 || at + len <= s.claimed {
            return None;
        }
        if at == s.prefix && s.hasher.is_some() {
            return Some(self.next_run(s, Some(Held::Flying(buf))));
        }
        s.flying.insert(at, buf);
        None
    }

    /// The write of `buf` at `at`, shown to [`Verifier::submitted`], completed: the buffer
    /// back whole, for [`Verifier::written`] (which gives it to the pool when it was hashed
    /// meanwhile). When a run on another thread is hashing it, it is left to that run and
    /// counted by the window until hashed; when the window is full, the handle comes back to
    /// try again once the prefix has moved.
    pub(crate) fn landed(&self, at: u64, buf: SharedBuf) -> Landed {
        let shown = self.lock().flying.remove(&at);
        drop(shown);
        let mut buf = buf;
        loop {
            match buf.into_inner() {
                Ok(b) => return Landed::Back(b),
                Err(shared) => buf = shared,
            }
            let len = buf.bytes().len() as u64;
            if !self.window.try_take(len) {
                return Landed::Busy(buf);
            }
            match buf
                .mark()
                .compare_exchange(FLYING, LEFT, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Landed::Left,
                // The run has just hashed it and is letting it go.
                Err(_) => {
                    self.window.give(len);
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Records a written buffer for read-back instead of keeping it (the window stayed full).
    pub(crate) fn spill(&self, at: u64, buf: AlignedBuf) {
        self.written_elsewhere(at, buf.bytes().len() as u64);
        BufPool::give(buf);
        let mut s = self.lock();
        s.spilled_at = Some(s.prefix);
    }

    /// True when a buffer went to read-back (its connection gave up waiting for room) and the
    /// prefix has not moved since: it is stuck behind a range not received yet (a stalled
    /// flow), and waiting again for room would only hold every connection back in turn.
    pub(crate) fn stuck(&self) -> bool {
        let s = self.lock();
        s.spilled_at == Some(s.prefix)
    }

    /// `len` bytes were written at `at` without passing through memory (spliced): they are
    /// hashed by read-back. Returns true when read-back work is waiting at the prefix.
    pub(crate) fn written_elsewhere(&self, at: u64, len: u64) -> bool {
        let mut s = self.lock();
        if len > 0 && at + len > s.prefix {
            // Merge with a neighbour that ends where this starts.
            let end = at + len;
            let start = match s.written.range(..at).next_back() {
                Some((&ps, &pe)) if pe == at => ps,
                _ => at,
            };
            let end = s.written.remove(&end).unwrap_or(end);
            s.written.insert(start, end);
        }
        s.written.contains_key(&s.prefix)
    }

    /// `first` (which starts at the prefix) and every kept or flying buffer that follows, for
    /// the caller to hash outside the lock; [`HashStep::Idle`] when there is nothing at the prefix
    /// to hash.
    fn next_run<'a>(&'a self, mut s: MutexGuard<'a, State>, first: Option<Held>) -> HashStep<'a> {
        let mut end = s.prefix + first.as_ref().map_or(0, |b| b.bytes().len() as u64);
        let mut bufs = VecDeque::from_iter(first);
        loop {
            let next = if let Some(b) = s.stash.remove(&end) {
                // Out of the stash, still counted by the window until hashed (see `Run::step`).
                s.stash_bytes -= b.bytes().len() as u64;
                Held::Kept(b)
            } else if let Some(b) = s.flying.remove(&end) {
                Held::Flying(b)
            } else {
                break;
            };
            end += next.bytes().len() as u64;
            bufs.push_back(next);
        }
        if bufs.is_empty() {
            return HashStep::Idle {
                read_back: s.written.contains_key(&s.prefix),
            };
        }
        let hasher = s.hasher.take().expect("the hasher is free");
        s.claimed = end;
        HashStep::Hash(Run {
            verifier: self,
            hasher: Some(hasher),
            bufs,
            end,
        })
    }

    /// A run was hashed: the prefix moves to its end and the hasher comes back.
    fn ran<'a>(&'a self, hasher: Hasher, end: u64) -> HashStep<'a> {
        let mut s = self.lock();
        s.hasher = Some(hasher);
        s.stats.from_memory += end - s.prefix;
        s.prefix = end;
        self.next_run(s, None)
    }

    /// Claims the next run to read back: written bytes at the prefix whose buffers are gone, at
    /// most `max`. `None` when there is none, or the hasher is busy (its holder will report
    /// read-back work when it is done).
    pub(crate) fn claim_read_back(&self, max: u64) -> Option<ReadBackClaim> {
        let mut s = self.lock();
        let prefix = s.prefix;
        let &end = s.written.get(&prefix)?;
        let hasher = s.hasher.take()?;
        s.written.remove(&prefix);
        let stop = end.min(prefix + max);
        if stop < end {
            s.written.insert(stop, end);
        }
        s.claimed = stop;
        Some(ReadBackClaim {
            range: prefix..stop,
            hasher,
        })
    }

    /// True when written bytes wait at the prefix for read-back.
    pub(crate) fn has_read_back(&self) -> bool {
        let s = self.lock();
        s.written.contains_key(&s.prefix)
    }

    /// Hashes the bytes of a claimed run, read back from the file; what follows is the kept
    /// buffers that continue it, to hash, or whether more read-back work is waiting.
    pub(crate) fn complete_read_back(&self, claim: ReadBackClaim, bytes: &[u8]) -> HashStep<'_> {
        let ReadBackClaim { range, mut hasher } = claim;
        assert_eq!(
            bytes.len() as u64,
            range.end - range.start,
            "read back the whole run"
        );
        hasher.update(bytes);
        let mut s = self.lock();
        s.hasher = Some(hasher);
        s.prefix = range.end;
        s.stats.read_back += range.end - range.start;
        self.next_run(s, None)
    }

    /// Bytes hashed so far (the contiguous prefix).
    pub(crate) fn prefix(&self) -> u64 {
        self.lock().prefix
    }

    /// The digest of the prefix, once it covers the whole file, and how it was fed.
    pub(crate) fn finish(&self) -> (Checksum, HashStats) {
        let s = self.lock();
        let digest = s.hasher.clone().expect("no hashing in progress").finalize();
        (digest, s.stats)
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let mut s = self.lock();
        self.window.give(s.stash_bytes);
        s.stash_bytes = 0;
        for (_, b) in std::mem::take(&mut s.stash) {
            BufPool::give(b);
        }
    }
}

#[cfg(test)]
mod tests;
