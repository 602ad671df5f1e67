//! Streaming sha256 (or git blob sha1) of a file that is written out of order, fed in file order.
//!
//! Connections write ranges of one file concurrently; a hash is sequential. A [`Verifier`]
//! tracks the hashed prefix `0..prefix`. A buffer that continues the prefix when its write is
//! submitted is hashed then ([`Verifier::ahead`]), without waiting for the disk: the hash is
//! what bounds a verified download, and it would sit idle for the length of the disk's queue
//! at each such buffer. The file is settled only after every write completed, so the digest
//! still covers exactly the bytes written.
//!
//! Every other buffer is taken once it is written. One that continues the prefix then comes
//! back to the caller as a [`Run`] to hash on the spot, with any kept buffers that follow it,
//! a buffer at a time (so the caller's worker can read its other sockets in between). One
//! further on is kept, up to a window of bytes (the verifier's memory bound, which counts a
//! kept buffer until it is hashed). When the window is full the connection waits for the
//! prefix to move (backpressure); only when it stays stuck (a lagging or broken connection
//! holds the prefix) is the buffer let go and its range recorded, and once the prefix reaches
//! it those bytes, which have left memory, are read back from the file
//! ([`Verifier::claim_read_back`], done by the job's read-back task). Ranges are handed out
//! front to back in modest leases, so the spread between connections stays within the window
//! and read-back is the exception. Hashing happens outside the lock: the run that advances the
//! prefix takes the hasher, so other connections never wait on it.
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

use crate::backend::buf::{AlignedBuf, BufPool};

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
    pub fn parse(algorithm: HashAlgorithm, s: &str) -> Option<Checksum> {
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

    pub fn algorithm(&self) -> HashAlgorithm {
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
    pub fn new(algorithm: HashAlgorithm, len: u64) -> Hasher {
        match algorithm {
            HashAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            HashAlgorithm::GitSha1 => Hasher::GitSha1(git_blob_hasher(len)),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::GitSha1(h) => h.update(bytes),
        }
    }

    pub fn finalize(self) -> Checksum {
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
    /// `None` while a thread hashes outside the lock (it owns the hasher meanwhile).
    hasher: Option<Hasher>,
    /// Written, not hashed, buffer kept: start -> buffer. All beyond `prefix`.
    stash: BTreeMap<u64, AlignedBuf>,
    stash_bytes: u64,
    /// Written, not hashed, buffer gone: start -> end, disjoint, all beyond `prefix`.
    written: BTreeMap<u64, u64>,
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
pub(crate) enum Next<'a> {
    /// Buffers at the prefix to hash: the caller owns the hasher until the run is done.
    Hash(Run<'a>),
    /// Nothing to hash now; `read_back` when written bytes that left memory wait at the prefix.
    Idle { read_back: bool },
}

impl Next<'_> {
    /// Hashes this and every run that follows on the spot; returns whether read-back work
    /// waits at the prefix. For callers that need not stay responsive meanwhile.
    pub fn hash_all(self) -> bool {
        let mut next = self;
        loop {
            match next {
                Next::Hash(run) => next = run.finish(),
                Next::Idle { read_back } => return read_back,
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
    bufs: VecDeque<AlignedBuf>,
    /// How many of the first `bufs` the window does not count (the caller's own buffer); the
    /// others were kept, and give their room back as they are hashed.
    uncounted: usize,
    /// The file offset where `bufs` end.
    end: u64,
}

impl<'a> Run<'a> {
    /// Hashes the next buffer; false when all are hashed.
    pub fn step(&mut self) -> bool {
        let Some(b) = self.bufs.pop_front() else {
            return false;
        };
        self.hasher
            .as_mut()
            .expect("a run holds the hasher until it finishes")
            .update(b.bytes());
        if self.uncounted > 0 {
            self.uncounted -= 1;
        } else {
            self.verifier.window.give(b.bytes().len() as u64);
        }
        BufPool::give(b);
        true
    }

    /// Hashes what is left, moves the prefix to the run's end and hands the hasher back; what
    /// follows is the next run (kept buffers that continue it) or nothing.
    pub fn finish(mut self) -> Next<'a> {
        self.complete()
    }

    /// What [`Run::finish`] does, for `finish` and for a run dropped unfinished: afterwards the
    /// run holds no hasher and no buffer.
    fn complete(&mut self) -> Next<'a> {
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
    pub fn new(limit: u64) -> Arc<Window> {
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
    pub fn used(&self) -> u64 {
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
    pub fn new(window: Arc<Window>, algorithm: HashAlgorithm, len: u64) -> Verifier {
        Verifier {
            state: Mutex::new(State {
                prefix: 0,
                hasher: Some(Hasher::new(algorithm, len)),
                stash: BTreeMap::new(),
                stash_bytes: 0,
                written: BTreeMap::new(),
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
    pub fn written(&self, at: u64, buf: AlignedBuf) -> Result<Next<'_>, AlignedBuf> {
        let len = buf.bytes().len() as u64;
        let mut s = self.lock();
        if len == 0 || at + len <= s.prefix {
            drop(s);
            BufPool::give(buf);
            return Ok(Next::Idle { read_back: false });
        }
        debug_assert!(at >= s.prefix, "a write overlapping the hashed prefix");
        if at == s.prefix && s.hasher.is_some() {
            return Ok(self.next_run(s, vec![buf]));
        }
        if self.window.try_take(len) {
            s.stash_bytes += len;
            s.stash.insert(at, buf);
            return Ok(Next::Idle { read_back: false });
        }
        Err(buf)
    }

    /// `bytes`, about to be written at `at`, are hashed now when they continue the prefix and
    /// the hasher is free; what follows is the kept buffers that continue them, to hash, as
    /// from [`Verifier::written`]. `None` otherwise: the buffer goes to
    /// [`Verifier::written`] once written, like any other. The write of bytes hashed here is
    /// still awaited before the file is settled; handed to [`Verifier::written`] afterwards,
    /// they are behind the prefix and go straight back to the pool.
    pub fn ahead(&self, at: u64, bytes: &[u8]) -> Option<Next<'_>> {
        let mut s = self.lock();
        if bytes.is_empty() || at != s.prefix {
            return None;
        }
        let mut hasher = s.hasher.take()?;
        drop(s);
        hasher.update(bytes);
        Some(self.ran(hasher, at + bytes.len() as u64))
    }

    /// Records a written buffer for read-back instead of keeping it (the window stayed full).
    pub fn spill(&self, at: u64, buf: AlignedBuf) {
        self.written_elsewhere(at, buf.bytes().len() as u64);
        BufPool::give(buf);
    }

    /// `len` bytes were written at `at` without passing through memory (spliced): they are
    /// hashed by read-back. Returns true when read-back work is waiting at the prefix.
    pub fn written_elsewhere(&self, at: u64, len: u64) -> bool {
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

    /// `run` (which starts at the prefix) and every kept buffer that follows, for the caller to
    /// hash outside the lock; [`Next::Idle`] when there is nothing at the prefix to hash.
    fn next_run<'a>(&'a self, mut s: MutexGuard<'a, State>, run: Vec<AlignedBuf>) -> Next<'a> {
        let uncounted = run.len();
        let mut end = s.prefix + run.iter().map(|b| b.bytes().len() as u64).sum::<u64>();
        let mut bufs = VecDeque::from(run);
        while let Some(b) = s.stash.remove(&end) {
            let len = b.bytes().len() as u64;
            // Out of the stash, still counted by the window until hashed (see `Run::step`).
            s.stash_bytes -= len;
            end += len;
            bufs.push_back(b);
        }
        if bufs.is_empty() {
            return Next::Idle {
                read_back: s.written.contains_key(&s.prefix),
            };
        }
        let hasher = s.hasher.take().expect("the hasher is free");
        Next::Hash(Run {
            verifier: self,
            hasher: Some(hasher),
            bufs,
            uncounted,
            end,
        })
    }

    /// A run was hashed: the prefix moves to its end and the hasher comes back.
    fn ran<'a>(&'a self, hasher: Hasher, end: u64) -> Next<'a> {
        let mut s = self.lock();
        s.hasher = Some(hasher);
        s.stats.from_memory += end - s.prefix;
        s.prefix = end;
        self.next_run(s, Vec::new())
    }

    /// Claims the next run to read back: written bytes at the prefix whose buffers are gone, at
    /// most `max`. `None` when there is none, or the hasher is busy (its holder will report
    /// read-back work when it is done).
    pub fn claim_read_back(&self, max: u64) -> Option<ReadBackClaim> {
        let mut s = self.lock();
        let prefix = s.prefix;
        let &end = s.written.get(&prefix)?;
        let hasher = s.hasher.take()?;
        s.written.remove(&prefix);
        let stop = end.min(prefix + max);
        if stop < end {
            s.written.insert(stop, end);
        }
        Some(ReadBackClaim {
            range: prefix..stop,
            hasher,
        })
    }

    /// True when written bytes wait at the prefix for read-back.
    pub fn has_read_back(&self) -> bool {
        let s = self.lock();
        s.written.contains_key(&s.prefix)
    }

    /// Hashes the bytes of a claimed run, read back from the file; what follows is the kept
    /// buffers that continue it, to hash, or whether more read-back work is waiting.
    pub fn complete_read_back(&self, claim: ReadBackClaim, bytes: &[u8]) -> Next<'_> {
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
        self.next_run(s, Vec::new())
    }

    /// Bytes hashed so far (the contiguous prefix).
    pub fn prefix(&self) -> u64 {
        self.lock().prefix
    }

    /// The digest of the prefix, once it covers the whole file, and how it was fed.
    pub fn finish(&self) -> (Checksum, HashStats) {
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
            Ok(Next::Idle { read_back: false })
        ));
        assert_eq!(window.used(), 200);
        let Ok(Next::Hash(mut run)) = v.written(0, buf_of(&f[..200])) else {
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
            Ok(Next::Idle { read_back: false })
        ));
        assert!(v.claim_read_back(1000).is_none());
        assert_eq!(window.used(), 800);
        assert!(run.step());
        assert_eq!(window.used(), 600);
        assert!(!run.step());
        // ... and come next, when the run is done.
        let Next::Hash(run) = run.finish() else {
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
        let Ok(Next::Hash(mut run)) = v.written(0, buf_of(&f[..500])) else {
            panic!("the prefix's buffer is handed out to hash");
        };
        assert!(run.step());
        // A connection cancelled while it hashed: nothing is lost.
        drop(run);
        assert_eq!(v.prefix(), 1000);
        assert_eq!(v.finish().0, sha(&f));
    }

    #[test]
    fn bytes_that_continue_the_prefix_are_hashed_before_their_write() {
        let f = data(1000);
        let window = Window::new(1000);
        let v = Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 1000);
        // Further on: not hashed ahead; kept once written.
        assert!(v.ahead(400, &f[400..1000]).is_none());
        v.written(400, buf_of(&f[400..1000]))
            .expect("the window has room")
            .hash_all();
        assert_eq!(window.used(), 600);
        // At the prefix: hashed at once, before the write completes.
        assert!(matches!(
            v.ahead(0, &f[..200]),
            Some(Next::Idle { read_back: false })
        ));
        assert_eq!(v.prefix(), 200);
        // Its write completes: behind the prefix, the buffer just goes back.
        assert!(matches!(
            v.written(0, buf_of(&f[..200])),
            Ok(Next::Idle { read_back: false })
        ));
        assert_eq!(window.used(), 600);
        // A written buffer at the prefix makes a run; while it holds the hasher, nothing is
        // hashed ahead.
        let Ok(Next::Hash(run)) = v.written(200, buf_of(&f[200..300])) else {
            panic!("the prefix's buffer is handed out to hash");
        };
        assert!(v.ahead(300, &f[300..400]).is_none());
        assert!(!run.finish().hash_all());
        assert_eq!(v.prefix(), 300);
        // Hashed ahead, the gap brings the kept buffer after it along, and its room back.
        let Some(Next::Hash(run)) = v.ahead(300, &f[300..400]) else {
            panic!("the kept buffer continues the prefix");
        };
        assert!(!run.finish().hash_all());
        assert_eq!((v.prefix(), window.used()), (1000, 0));
        assert!(v.written(300, buf_of(&f[300..400])).is_ok());
        let (d, stats) = v.finish();
        assert_eq!(d, sha(&f));
        assert_eq!(stats.from_memory, 1000);
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
