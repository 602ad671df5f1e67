//! Streaming sha256 (or git blob sha1) of a file that is written out of order, fed in file order.
//!
//! Connections write ranges of one file concurrently; a hash is sequential. A [`Verifier`]
//! tracks the hashed prefix `0..prefix`. The hash does not wait for the disk: it is what bounds
//! a verified download, and it would sit idle for the length of the disk's queue at each
//! buffer. A buffer whose write is submitted is shown to the verifier as it goes
//! ([`Verifier::submitted`], a [`SharedBuf`] the write only reads): when it continues the
//! prefix it is hashed at once, and otherwise it is hashed as soon as the prefix reaches it,
//! its write in flight or not. The file is settled only after every write completed, so the
//! digest still covers exactly the bytes written.
//!
//! A buffer not hashed by the time its write completes is taken back whole ([`Verifier::landed`])
//! and given to [`Verifier::written`]. One that a run is hashing just then is left to that run, and
//! the window counts it until hashed, so that a buffer is always counted by its connection or by
//! the window and the connection need not wait. Measured on 8 GiB from nginx, verified, 10
//! alternated rounds: 5.36 s hashing only what continued the prefix at submit, 5.06 s hashing
//! flying buffers too (when connections instead waited for a run to let go of their buffer, it was
//! no faster than before). A buffer written that continues the prefix then comes back to the caller
//! as a [`Run`] to hash on the spot, with any kept or flying buffers that follow it, a buffer at a
//! time (so the caller's worker can read its other sockets in between). One further on is kept, up
//! to a window of bytes (the verifier's memory bound, which counts a kept buffer until it is
//! hashed). When the window is full the connection waits for the prefix to move (backpressure);
//! only when it stays stuck (a lagging or broken connection holds the prefix) is the buffer let go
//! and its range recorded, and once the prefix reaches it those bytes, which have left memory, are
//! read back from the file ([`Verifier::claim_read_back`], done by the job's read-back task).
//! Ranges are handed out front to back in modest leases, so the spread between connections stays
//! within the window and read-back is the exception. Hashing happens outside the lock: the run that
//! advances the prefix takes the hasher, so other connections never wait on it.
//!
//! The hash is a [`Checksum`]'s algorithm: sha256 (LFS files, `--sha256`), or the git blob id
//! `sha1("blob LEN\0" + bytes)` with which the Hugging Face Hub names its non-LFS files (the
//! length goes first, so it must be known up front). sha2 and sha1 pick SHA-NI (or the ARMv8
//! extensions) at run time. This module does no I/O itself and knows nothing of sockets or
//! back-ends.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::backend::buf::{AlignedBuf, BufPool, SharedBuf};

pub(crate) mod mark;

/// The hash algorithms a file can be checked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HashAlgorithm {
    /// sha256 of the bytes.
    #[serde(rename = "sha256")]
    Sha256,
    /// The git blob id: sha1 of `"blob {len}\0"` followed by the bytes.
    #[serde(rename = "git-sha1")]
    GitSha1,
}

impl std::fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::GitSha1 => "git-sha1",
        })
    }
}

/// A digest a file must have, or has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checksum {
    Sha256([u8; 32]),
    GitSha1([u8; 20]),
}

impl Checksum {
    /// Parses hex digits (either case) of `algorithm`'s length.
    pub(crate) fn parse(algorithm: HashAlgorithm, s: &str) -> Option<Checksum> {
        let s = s.trim();
        match algorithm {
            HashAlgorithm::Sha256 => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Checksum::Sha256(out))
            }
            HashAlgorithm::GitSha1 => {
                let mut out = [0u8; 20];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Checksum::GitSha1(out))
            }
        }
    }

    pub(crate) fn algorithm(&self) -> HashAlgorithm {
        match self {
            Checksum::Sha256(_) => HashAlgorithm::Sha256,
            Checksum::GitSha1(_) => HashAlgorithm::GitSha1,
        }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checksum::Sha256(d) => f.write_str(&hex::encode(d)),
            Checksum::GitSha1(d) => f.write_str(&hex::encode(d)),
        }
    }
}

/// A sha1 primed with the git blob header of a `len`-byte blob: what follows is its bytes.
pub(crate) fn git_blob_hasher(len: u64) -> Sha1 {
    let mut h = Sha1::new();
    h.update(format!("blob {len}\0").as_bytes());
    h
}

/// A running hash of one of the [`HashAlgorithm`]s.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    /// A fresh hash; a git blob id needs the file's length first.
    pub(crate) fn new(algorithm: HashAlgorithm, len: u64) -> Hasher {
        match algorithm {
            HashAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            HashAlgorithm::GitSha1 => Hasher::GitSha1(git_blob_hasher(len)),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::GitSha1(h) => h.update(bytes),
        }
    }

    pub(crate) fn finalize(self) -> Checksum {
        match self {
            Hasher::Sha256(h) => Checksum::Sha256(h.finalize().into()),
            Hasher::GitSha1(h) => Checksum::GitSha1(h.finalize().into()),
        }
    }
}

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
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn sha(b: &[u8]) -> Checksum {
        Checksum::Sha256(Sha256::digest(b).into())
    }

    fn buf_of(bytes: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::new(bytes.len());
        b.push_slice(bytes);
        b
    }

    /// Feeds writes in the given order, reading back (from `file`) whenever the verifier says so.
    fn run(file: &[u8], writes: &[Range<usize>], window: u64) -> (Checksum, HashStats) {
        let v = Verifier::new(
            Window::new(window),
            HashAlgorithm::Sha256,
            file.len() as u64,
        );
        for w in writes {
            match v.written(w.start as u64, buf_of(&file[w.clone()])) {
                Ok(next) => {
                    next.hash_all();
                }
                Err(b) => v.spill(w.start as u64, b),
            }
            while let Some(c) = v.claim_read_back(3) {
                let r = c.range.start as usize..c.range.end as usize;
                v.complete_read_back(c, &file[r]).hash_all();
            }
        }
        assert_eq!(v.prefix(), file.len() as u64);
        v.finish()
    }

    #[test]
    fn in_order_writes_hash_from_memory() {
        let f = data(1000);
        let (d, s) = run(&f, &[0..100, 100..600, 600..1000], 0);
        assert_eq!(d, sha(&f));
        assert_eq!(
            s,
            HashStats {
                from_memory: 1000,
                read_back: 0
            }
        );
    }

    #[test]
    fn out_of_order_writes_hash_the_same_from_the_window_or_read_back() {
        let f = data(1000);
        let orders: &[&[Range<usize>]] = &[
            &[500..1000, 0..500],
            &[900..1000, 600..900, 100..600, 0..100],
            &[0..10, 20..30, 30..40, 10..20, 40..1000],
            &[300..400, 0..100, 200..300, 100..200, 400..1000],
        ];
        for order in orders {
            // No window: everything out of order is read back.
            let (d, s) = run(&f, order, 0);
            assert_eq!(d, sha(&f), "{order:?}");
            assert_eq!(s.from_memory + s.read_back, 1000, "{order:?}");
            assert!(s.read_back > 0, "{order:?}");
            // A window as large as the file: nothing is read back.
            let (d, s) = run(&f, order, 1000);
            assert_eq!(d, sha(&f), "{order:?}");
            assert_eq!(
                s,
                HashStats {
                    from_memory: 1000,
                    read_back: 0
                },
                "{order:?}"
            );
            // A small window: some of each.
            let (d, s) = run(&f, order, 150);
            assert_eq!(d, sha(&f), "{order:?}");
            assert_eq!(s.from_memory + s.read_back, 1000, "{order:?}");
        }
    }

    #[test]
    fn a_run_is_hashed_a_buffer_at_a_time_while_others_arrive() {
        let f = data(1000);
        let window = Window::new(1000);
        let v = Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 1000);
        assert!(matches!(
            v.written(200, buf_of(&f[200..400])),
            Ok(HashStep::Idle { read_back: false })
        ));
        assert_eq!(window.used(), 200);
        let Ok(HashStep::Hash(mut run)) = v.written(0, buf_of(&f[..200])) else {
            panic!("the prefix's buffer is handed out to hash");
        };
        // The run took the kept buffer that continues it; the hasher is out meanwhile. The kept
        // buffer's room comes back when it is hashed, not before: it is still in memory.
        assert_eq!(run.end, 400);
        assert!(run.step());
        assert_eq!(window.used(), 200);
        // Bytes that arrive at the end of the run meanwhile are kept (the hasher is out) ...
        assert!(matches!(
            v.written(400, buf_of(&f[400..1000])),
            Ok(HashStep::Idle { read_back: false })
        ));
        assert!(v.claim_read_back(1000).is_none());
        assert_eq!(window.used(), 800);
        assert!(run.step());
        assert_eq!(window.used(), 600);
        assert!(!run.step());
        // ... and come next, when the run is done.
        let HashStep::Hash(run) = run.finish() else {
            panic!("the kept buffer continues the prefix");
        };
        assert_eq!(run.end, 1000);
        assert!(!run.finish().hash_all());
        assert_eq!(v.prefix(), 1000);
        assert_eq!(v.finish().0, sha(&f));
    }

    #[test]
    fn a_run_dropped_unfinished_still_moves_the_prefix() {
        let f = data(1000);
        let v = Verifier::new(Window::new(1000), HashAlgorithm::Sha256, 1000);
        v.written(500, buf_of(&f[500..1000]))
            .expect("the window has room")
            .hash_all();
        let Ok(HashStep::Hash(mut run)) = v.written(0, buf_of(&f[..500])) else {
            panic!("the prefix's buffer is handed out to hash");
        };
        assert!(run.step());
        // A connection cancelled while it hashed: nothing is lost.
        drop(run);
        assert_eq!(v.prefix(), 1000);
        assert_eq!(v.finish().0, sha(&f));
    }

    fn shared_of(bytes: &[u8]) -> SharedBuf {
        SharedBuf::new(buf_of(bytes))
    }

    /// The write of `buf` at `at` lands after its bytes were hashed: the buffer comes back
    /// whole (no run holds it any more), and the verifier lets it go without keeping it.
    fn lands_hashed(v: &Verifier, at: u64, buf: SharedBuf) {
        let Landed::Back(back) = v.landed(at, buf) else {
            panic!("no run holds the buffer at {at}");
        };
        assert!(matches!(
            v.written(at, back),
            Ok(HashStep::Idle { read_back: false })
        ));
    }

    #[test]
    fn bytes_in_flight_are_hashed_without_waiting_for_their_write() {
        let f = data(1000);
        let window = Window::new(1000);
        let v = Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 1000);
        // Further on: shown while in flight, not hashed, counted by nobody but its writer.
        let far = shared_of(&f[700..1000]);
        assert!(v.submitted(700, far.clone()).is_none());
        assert_eq!((v.prefix(), window.used()), (0, 0));
        // At the prefix: hashed at once, before its write completes.
        let first = shared_of(&f[..200]);
        let Some(HashStep::Hash(run)) = v.submitted(0, first.clone()) else {
            panic!("the prefix's buffer is hashed at submit");
        };
        assert!(!run.finish().hash_all());
        assert_eq!(v.prefix(), 200);
        // Its write completes: the buffer comes back whole, behind the prefix, and just goes
        // back to the pool.
        lands_hashed(&v, 0, first);
        // Written, not hashed: kept in the window as before.
        let mid = shared_of(&f[400..700]);
        assert!(v.submitted(400, mid.clone()).is_none());
        let Landed::Back(mid) = v.landed(400, mid) else {
            panic!("no run holds it");
        };
        v.written(400, mid).expect("room").hash_all();
        assert_eq!(window.used(), 300);
        // A written buffer at the prefix makes a run that takes the kept buffer and the one
        // still in flight after it; while the run holds the flying one, its writer cannot take
        // it back.
        let Ok(HashStep::Hash(mut run)) = v.written(200, buf_of(&f[200..400])) else {
            panic!("the prefix's buffer is handed out to hash");
        };
        assert!(
            run.step() && run.step(),
            "the written buffer, then the kept one"
        );
        assert_eq!(
            window.used(),
            0,
            "the kept buffer's room is back once hashed"
        );
        // Written while the run still holds it: left to the run, and counted by the window
        // until hashed, so its connection goes on.
        assert!(matches!(v.landed(700, far), Landed::Left));
        assert_eq!(window.used(), 300);
        assert!(!run.finish().hash_all());
        assert_eq!((v.prefix(), window.used()), (1000, 0));
        let (d, stats) = v.finish();
        assert_eq!(d, sha(&f));
        assert_eq!(stats.from_memory, 1000);
    }

    #[test]
    fn a_flying_buffer_a_run_holds_is_left_to_it_only_while_the_window_has_room() {
        let f = data(200);
        let window = Window::new(50);
        let v = Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 200);
        let first = shared_of(&f[..100]);
        let Some(HashStep::Hash(run)) = v.submitted(0, first.clone()) else {
            panic!("hashed at submit");
        };
        // Written before the run hashed it, and the window cannot count it: the writer keeps
        // it and tries again.
        let Landed::Busy(first) = v.landed(0, first) else {
            panic!("the window has no room for it");
        };
        assert_eq!(window.used(), 0);
        assert!(!run.finish().hash_all());
        lands_hashed(&v, 0, first);
        assert_eq!((v.prefix(), window.used()), (100, 0));
    }

    #[test]
    fn a_flying_buffer_hashed_before_its_run_ends_is_not_kept_when_it_lands() {
        let f = data(300);
        let window = Window::new(300);
        let v = Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 300);
        let flying = shared_of(&f[100..200]);
        assert!(v.submitted(100, flying.clone()).is_none());
        let Ok(HashStep::Hash(mut run)) = v.written(0, buf_of(&f[..100])) else {
            panic!("a run at the prefix, taking the flying buffer along");
        };
        assert!(
            run.step() && run.step(),
            "both hashed; the run has not ended"
        );
        assert_eq!(v.prefix(), 0);
        // Its write lands: the run let it go, so it comes back whole, but it is hashed.
        lands_hashed(&v, 100, flying);
        assert_eq!(window.used(), 0, "not kept");
        assert!(!run.finish().hash_all());
        assert!(
            v.written(200, buf_of(&f[200..300]))
                .is_ok_and(|n| !n.hash_all())
        );
        assert_eq!((v.prefix(), window.used()), (300, 0));
        let (d, stats) = v.finish();
        assert_eq!(d, sha(&f));
        assert_eq!(stats.from_memory, 300);
    }

    #[test]
    fn a_buffer_shown_while_the_hasher_is_busy_waits_for_the_prefix() {
        let f = data(600);
        let v = Verifier::new(Window::new(600), HashAlgorithm::Sha256, 600);
        let Ok(HashStep::Hash(run)) = v.written(0, buf_of(&f[..200])) else {
            panic!("a run at the prefix");
        };
        // The run holds the hasher: the next buffer is not hashed now, but shown.
        assert!(v.submitted(200, shared_of(&f[200..400])).is_none());
        // The run's end brings it along, in flight.
        let HashStep::Hash(run) = run.finish() else {
            panic!("the flying buffer continues the prefix");
        };
        assert!(!run.finish().hash_all());
        assert_eq!(v.prefix(), 400);
        // A failed write's buffer is taken back (its file fails): it is no longer shown, so
        // the prefix reaching it does not hash it.
        let failed = shared_of(&f[500..600]);
        assert!(v.submitted(500, failed.clone()).is_none());
        drop(v.landed(500, failed));
        let Some(HashStep::Hash(run)) = v.submitted(400, shared_of(&f[400..500])) else {
            panic!("at the prefix, hashed at once");
        };
        assert!(!run.finish().hash_all());
        assert_eq!(v.prefix(), 500);
    }

    #[test]
    fn verifiers_of_one_job_share_one_window() {
        let f = data(1000);
        let window = Window::new(600);
        let (a, b) = (
            Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 0),
            Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 0),
        );
        // Out of order in both files: each keeps what the shared window still has room for.
        assert!(a.written(500, buf_of(&f[500..1000])).is_ok());
        assert_eq!(window.used(), 500);
        let back = b
            .written(500, buf_of(&f[500..900]))
            .expect_err("the window is full for the second file");
        assert!(b.written(900, buf_of(&f[900..1000])).is_ok());
        assert_eq!(window.used(), 600);
        // The first file's prefix arrives: its kept buffer is hashed and its room given back.
        assert!(a.written(0, buf_of(&f[..500])).is_ok());
        assert_eq!(window.used(), 100);
        assert_eq!(a.finish().0, sha(&f));
        assert!(b.written(500, back).is_ok(), "now there is room");
        assert_eq!(window.used(), 500);
        drop(b);
        assert_eq!(window.used(), 0, "a dropped verifier gives its room back");
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let h = sha(b"abc");
        assert_eq!(
            h.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let parse = |s: &str| Checksum::parse(HashAlgorithm::Sha256, s);
        assert_eq!(parse(&h.to_string().to_uppercase()), Some(h));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse(&"g".repeat(64)), None);
        assert_eq!(
            Checksum::parse(HashAlgorithm::GitSha1, &h.to_string()),
            None
        );
    }

    #[test]
    fn git_blob_id_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`, and the id of the empty blob.
        for (bytes, id) in [
            (&b"hello\n"[..], "ce013625030ba8dba906f756967f9e9ca394464a"),
            (&b""[..], "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"),
        ] {
            let v = Verifier::new(Window::new(0), HashAlgorithm::GitSha1, bytes.len() as u64);
            if !bytes.is_empty() {
                assert!(v.written(0, buf_of(bytes)).is_ok());
            }
            assert_eq!(v.finish().0.to_string(), id);
        }
    }
}
