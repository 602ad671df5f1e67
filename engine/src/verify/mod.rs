//! Streaming sha256 (or git blob sha1) of a file that is written out of order, fed in file order.
//!
//! Connections write ranges of one file concurrently; a hash is sequential. A [`Verifier`]
//! tracks the hashed prefix `0..prefix` and takes every buffer once it is written. A buffer that
//! continues the prefix is hashed on the spot, with any kept buffers that follow it. One further
//! on is kept, up to a window of bytes (the verifier's memory bound). When the window is full the
//! connection waits for the prefix to move (backpressure); only when it stays stuck (a lagging
//! or broken connection holds the prefix) is the buffer let go and its range recorded, and once
//! the prefix reaches it those bytes, which have left memory, are read back from the file ([`Verifier::claim_read_back`], done by the job's read-back task).
//! Ranges are handed out front to back in modest leases, so the spread between connections stays
//! within the window and read-back is the exception. Hashing happens outside the lock: the
//! thread that advances the prefix takes the hasher, so other connections never wait on it.
//!
//! The hash is a [`Checksum`]'s algorithm: sha256 (LFS files, `--sha256`), or the git blob id
//! `sha1("blob LEN\0" + bytes)` with which the Hugging Face Hub names its non-LFS files (the
//! length goes first, so it must be known up front). sha2 and sha1 pick SHA-NI (or the ARMv8
//! extensions) at run time. This module does no I/O itself and knows nothing of sockets or
//! back-ends.

use std::collections::BTreeMap;
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

    /// `buf` was written at `at`. When it continues the prefix it is hashed now, with any kept
    /// buffers that follow; otherwise it is kept while the window has room. `Err(buf)` when the
    /// window is full: the caller waits for the prefix to move (backpressure: hashing from
    /// memory beats reading back), or gives up waiting with [`Verifier::spill`].
    /// `Ok(true)` when read-back work is waiting at the prefix.
    pub fn written(&self, at: u64, buf: AlignedBuf) -> Result<bool, AlignedBuf> {
        let len = buf.bytes().len() as u64;
        let mut s = self.lock();
        if len == 0 || at + len <= s.prefix {
            drop(s);
            BufPool::give(buf);
            return Ok(false);
        }
        debug_assert!(at >= s.prefix, "a write overlapping the hashed prefix");
        if at == s.prefix && s.hasher.is_some() {
            return Ok(self.advance(s, vec![buf]));
        }
        if self.window.try_take(len) {
            s.stash_bytes += len;
            s.stash.insert(at, buf);
            return Ok(false);
        }
        Err(buf)
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

    /// Hashes `run` (which starts at the prefix) and every kept buffer that follows, outside the
    /// lock; returns true when what follows then is read-back work.
    fn advance<'a>(&'a self, mut s: MutexGuard<'a, State>, mut run: Vec<AlignedBuf>) -> bool {
        loop {
            let mut next = s.prefix + run.iter().map(|b| b.bytes().len() as u64).sum::<u64>();
            while let Some(b) = s.stash.remove(&next) {
                let len = b.bytes().len() as u64;
                s.stash_bytes -= len;
                self.window.give(len);
                next += len;
                run.push(b);
            }
            if run.is_empty() {
                return s.written.contains_key(&s.prefix);
            }
            let mut hasher = s.hasher.take().expect("the hasher is free");
            drop(s);
            for b in &run {
                hasher.update(b.bytes());
            }
            s = self.lock();
            s.hasher = Some(hasher);
            s.stats.from_memory += next - s.prefix;
            s.prefix = next;
            for b in run.drain(..) {
                BufPool::give(b);
            }
        }
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

    /// Hashes the bytes of a claimed run, read back from the file, then whatever kept buffers
    /// follow. Returns true when more read-back work is waiting.
    pub fn complete_read_back(&self, claim: ReadBackClaim, bytes: &[u8]) -> bool {
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
        self.advance(s, Vec::new())
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
            if let Err(b) = v.written(w.start as u64, buf_of(&file[w.clone()])) {
                v.spill(w.start as u64, b);
            }
            while let Some(c) = v.claim_read_back(3) {
                let r = c.range.start as usize..c.range.end as usize;
                v.complete_read_back(c, &file[r]);
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
