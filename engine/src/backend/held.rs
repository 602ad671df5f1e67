//! Bodies held in memory instead of written to a file: for a job item that is read once, soon,
//! by this process (an HLS segment), a file's bytes land in one buffer of its size and are
//! handed over whole when the file completes. That spares the page-cache copy into a scratch
//! file, the copy back out, and the file's creation and removal.
//!
//! Invariants:
//! - The bytes reserved by one [`Holding`] never exceed its limit. A body that does not fit
//!   (or whose size is not known when its first answer arrives) goes to its file as usual: the
//!   budget picks where bytes go, it never makes a download wait, so no download can wait on a
//!   reader that waits on it.
//! - A body is handed over ([`Holding::take`]) only complete: every byte written, the length
//!   its answer stated. Its share of the budget comes back when the last holder drops it.
//! - Nothing held is durable: a crash loses it, so whoever holds must be able to fetch again.
//!
//! Not here: which items are held (the caller), hashing (held items have no digest).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where the held bodies of one job land, and the budget they share.
#[derive(Debug)]
pub(crate) struct Holding {
    limit: u64,
    used: AtomicU64,
    /// The most bytes reserved at once.
    peak: AtomicU64,
    /// Bodies handed over.
    count: AtomicU64,
    landed: Mutex<HashMap<PathBuf, Held>>,
}

impl Holding {
    /// A holding of at most `limit` bytes at once.
    pub(crate) fn new(limit: u64) -> Arc<Holding> {
        Arc::new(Holding {
            limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            count: AtomicU64::new(0),
            landed: Mutex::default(),
        })
    }

    /// A buffer for a body of `len` bytes, when it fits: at most a quarter of the limit each,
    /// so that one large body never takes the room of many small ones.
    pub(crate) fn reserve(self: &Arc<Self>, len: u64) -> Option<Arc<HeldBody>> {
        if len > self.limit / 4 {
            return None;
        }
        let was = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + len <= self.limit).then_some(used + len)
            })
            .ok()?;
        self.peak.fetch_max(was + len, Ordering::Relaxed);
        let reservation = Reservation {
            holding: Arc::clone(self),
            len,
        };
        Some(Arc::new(HeldBody {
            data: Mutex::new(Some(Held {
                bytes: vec![0; len as usize],
                _reservation: reservation,
            })),
        }))
    }

    /// The most bytes reserved at once so far.
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Bodies handed over so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Hands over the complete body of the item whose output is `key`.
    pub(crate) fn land(&self, key: PathBuf, held: Held) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, held);
    }

    /// The body of the item whose output is `key`, once it completed in memory.
    pub(crate) fn take(&self, key: &Path) -> Option<Held> {
        self.lock().remove(key)
    }

    /// Every body handed over and not taken yet.
    pub(crate) fn drain(&self) -> Vec<(PathBuf, Held)> {
        self.lock().drain().collect()
    }

    /// Whether the item whose output is `key` completed in memory (and was not taken yet).
    pub(crate) fn has(&self, key: &Path) -> bool {
        self.lock().contains_key(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Held>> {
        self.landed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A share of a holding's budget, given back when dropped.
#[derive(Debug)]
struct Reservation {
    holding: Arc<Holding>,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.holding.used.fetch_sub(self.len, Ordering::AcqRel);
    }
}

/// A complete body, handed over; its bytes are the file's.
#[derive(Debug)]
pub(crate) struct Held {
    bytes: Vec<u8>,
    _reservation: Reservation,
}

impl std::ops::Deref for Held {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A body being filled: the lanes' sinks write into it at file offsets.
#[derive(Debug)]
pub(crate) struct HeldBody {
    data: Mutex<Option<Held>>,
}

impl HeldBody {
    /// Copies `buf` to offset `at`.
    pub(crate) fn write(&self, buf: &[u8], at: u64) -> io::Result<()> {
        let mut data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let held = data
            .as_mut()
            .ok_or_else(|| io::Error::other("the held body was already handed over"))?;
        let range = slot(held.bytes.len(), at, buf.len())?;
        held.bytes[range].copy_from_slice(buf);
        Ok(())
    }

    /// Gives `len` bytes at offset `at` to `read`.
    pub(crate) fn read(&self, at: u64, len: usize, read: impl FnOnce(&[u8])) -> io::Result<()> {
        let data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let held = data
            .as_ref()
            .ok_or_else(|| io::Error::other("the held body was already handed over"))?;
        read(&held.bytes[slot(held.bytes.len(), at, len)?]);
        Ok(())
    }

    /// The body, for handing over (once).
    pub(crate) fn take(&self) -> Option<Held> {
        self.data.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The bytes `at..at + len` of a body of `size` bytes, or an error when they are not all in it.
fn slot(size: usize, at: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
    usize::try_from(at)
        .ok()
        .and_then(|at| Some(at..at.checked_add(len)?))
        .filter(|r| r.end <= size)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes at {at} do not fit a held body of {size}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_never_exceeded_and_comes_back_on_drop() {
        let h = Holding::new(100);
        assert!(h.reserve(26).is_none(), "more than a quarter of the limit");
        let bodies: Vec<_> = (0..4).map(|_| h.reserve(25).expect("fits")).collect();
        assert_eq!((h.used.load(Ordering::Acquire), h.peak()), (100, 100));
        assert!(h.reserve(1).is_none(), "the budget is full");
        let held = bodies[0].take().expect("not taken yet");
        drop(bodies);
        assert_eq!(
            h.used.load(Ordering::Acquire),
            25,
            "the handed-over body still counts"
        );
        drop(held);
        assert_eq!(h.used.load(Ordering::Acquire), 0);
        assert!(h.reserve(25).is_some());
        assert_eq!(h.peak(), 100);
    }

    #[test]
    fn writes_outside_the_body_fail_and_change_nothing() {
        let h = Holding::new(1 << 20);
        let b = h.reserve(8).expect("fits");
        b.write(b"abcd", 4).expect("in bounds");
        assert!(b.write(b"abcd", 5).is_err());
        assert!(b.write(b"x", u64::MAX).is_err());
        let mut out = Vec::new();
        b.read(4, 4, |bytes| out.extend_from_slice(bytes))
            .expect("in bounds");
        assert_eq!(out, b"abcd");
        assert!(b.read(6, 4, |_| {}).is_err());
        let held = b.take().expect("once");
        assert_eq!(&held[..], b"\0\0\0\0abcd");
        assert!(b.take().is_none());
        assert!(b.write(b"a", 0).is_err(), "handed over: no more writes");
        h.land(PathBuf::from("x"), held);
        assert!(h.has(Path::new("x")));
        assert_eq!(h.take(Path::new("x")).map(|b| b.len()), Some(8));
        assert!(!h.has(Path::new("x")));
    }
}
