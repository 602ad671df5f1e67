//! Streaming sha256 of a file that is written out of order, fed in file order.
//!
//! Connections write ranges of one file concurrently; sha256 is sequential. A [`Verifier`]
//! tracks the hashed prefix `0..prefix`. When a write completes at exactly `prefix`, its buffer
//! (still in memory) is hashed on the spot and the prefix grows. A write that completes further
//! on is only recorded; once the prefix reaches it, its bytes have left memory and are read back
//! from the file ([`Verifier::next_read_back`], done by the job's read-back task). With ranges
//! handed out front to back the prefix stays close behind the connections, so read-back is
//! bounded by the ranges in flight, not by the file.
//!
//! sha2 picks SHA-NI (or the ARMv8 extensions) at run time. This module does no I/O itself and
//! knows nothing of sockets or back-ends.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// A parsed sha256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sha256Hex(pub [u8; 32]);

impl Sha256Hex {
    /// Parses 64 hex digits (either case).
    pub fn parse(s: &str) -> Option<Sha256Hex> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).ok()?;
        Some(Sha256Hex(out))
    }
}

impl std::fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
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
    hasher: Sha256,
    /// Written but not hashed: start -> end, disjoint, all beyond `prefix`.
    written: BTreeMap<u64, u64>,
    stats: HashStats,
}

/// The in-order sha256 of one file being written out of order.
pub(crate) struct Verifier {
    state: Mutex<State>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier {
            state: Mutex::new(State {
                prefix: 0,
                hasher: Sha256::new(),
                written: BTreeMap::new(),
                stats: HashStats::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `bytes` were written at `at`. Hashed now when they continue the prefix; recorded for
    /// read-back otherwise. Returns true when read-back work became available.
    pub fn written(&self, at: u64, bytes: &[u8]) -> bool {
        let mut s = self.lock();
        let end = at + bytes.len() as u64;
        if bytes.is_empty() || end <= s.prefix {
            return false;
        }
        if at == s.prefix {
            s.hasher.update(bytes);
            s.prefix = end;
            s.stats.from_memory += bytes.len() as u64;
            return s.written.contains_key(&end);
        }
        debug_assert!(at > s.prefix, "a write overlapping the hashed prefix");
        // Merge with a neighbour that ends where this starts (a connection's consecutive writes).
        let start = match s.written.range(..at).next_back() {
            Some((&ps, &pe)) if pe == at => ps,
            _ => at,
        };
        let end = match s.written.remove(&end) {
            Some(next_end) => next_end,
            None => end,
        };
        s.written.insert(start, end);
        false
    }

    /// The next run to read back and hash: written bytes starting at the prefix, at most `max`.
    pub fn next_read_back(&self, max: u64) -> Option<Range<u64>> {
        let s = self.lock();
        let (&start, &end) = s.written.iter().next()?;
        (start == s.prefix).then(|| start..end.min(start + max))
    }

    /// Hashes bytes read back from the file at `at` (the prefix, from [`Verifier::next_read_back`]).
    pub fn read_back(&self, at: u64, bytes: &[u8]) {
        let mut s = self.lock();
        if at != s.prefix || bytes.is_empty() {
            return;
        }
        let end = at + bytes.len() as u64;
        let run_end = s.written.remove(&at).expect("read back a written run");
        debug_assert!(end <= run_end, "read back beyond what was written");
        if end < run_end {
            s.written.insert(end, run_end);
        }
        s.hasher.update(bytes);
        s.prefix = end;
        s.stats.read_back += bytes.len() as u64;
    }

    /// Bytes hashed so far (the contiguous prefix).
    pub fn prefix(&self) -> u64 {
        self.lock().prefix
    }

    /// The digest of the prefix, once it covers the whole file, and how it was fed.
    pub fn finish(&self) -> (Sha256Hex, HashStats) {
        let s = self.lock();
        let digest = s.hasher.clone().finalize();
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest);
        (Sha256Hex(out), s.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn sha(b: &[u8]) -> Sha256Hex {
        let mut out = [0u8; 32];
        out.copy_from_slice(&Sha256::digest(b));
        Sha256Hex(out)
    }

    /// Feeds writes in the given order, reading back (from `file`) whenever the verifier says so.
    fn run(file: &[u8], writes: &[Range<usize>]) -> (Sha256Hex, HashStats) {
        let v = Verifier::new();
        for w in writes {
            v.written(w.start as u64, &file[w.clone()]);
            while let Some(r) = v.next_read_back(3) {
                v.read_back(r.start, &file[r.start as usize..r.end as usize]);
            }
        }
        assert_eq!(v.prefix(), file.len() as u64);
        v.finish()
    }

    #[test]
    fn in_order_writes_hash_from_memory() {
        let f = data(1000);
        let (d, s) = run(&f, &[0..100, 100..600, 600..1000]);
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
    fn out_of_order_writes_are_read_back_and_hash_the_same() {
        let f = data(1000);
        let orders: &[&[Range<usize>]] = &[
            &[500..1000, 0..500],
            &[900..1000, 600..900, 100..600, 0..100],
            &[0..10, 20..30, 30..40, 10..20, 40..1000],
            &[300..400, 0..100, 200..300, 100..200, 400..1000],
        ];
        for order in orders {
            let (d, s) = run(&f, order);
            assert_eq!(d, sha(&f), "{order:?}");
            assert_eq!(s.from_memory + s.read_back, 1000, "{order:?}");
        }
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let h = sha(b"abc");
        assert_eq!(
            h.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Hex::parse(&h.to_string().to_uppercase()), Some(h));
        assert_eq!(Sha256Hex::parse("abc"), None);
        assert_eq!(Sha256Hex::parse(&"g".repeat(64)), None);
    }
}
