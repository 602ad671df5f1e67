//! Disk space: the floor ferry leaves free on the target filesystem, and the watchdog that holds
//! a file back *before* its bytes would take the filesystem under that floor, rather than after
//! a write failed.
//!
//! Before a file's extents are reserved (`fallocate`), and before bytes nothing reserved are
//! written (a file that came whole in its first answer, or a stream of known length), a lane asks
//! [`JobSpace::wait_for`] for room. When the free space minus what is asked would fall under the
//! floor, the lane pauses and looks again every [`POLL`] until another process frees space (the
//! download then goes on by itself) or the wait ([`crate::Config::space_wait`]) runs out. Then
//! the file fails with [`GetError::NoSpace`] ("need X, have Y"), and the job's other files that
//! do not fit fail at once instead of each waiting again; the files already reserved go on. A
//! resumable file (`ferry pull`) keeps its partial bytes and journal for the next run.
//!
//! Once reserved, a file's writes cannot run out of space on filesystems that reserve
//! (ext4, xfs, btrfs without compression, tmpfs). Where no reservation is possible (no
//! `fallocate`, a stream of unknown length), or another process takes the space between the
//! check and the reservation, the `ENOSPC` that follows is the same clean error.
//!
//! Not here: the up-front check of a pull against its listing (`hub/pull.rs`, which calls
//! [`check`]).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{GetError, need_have};
use crate::units::human_bytes;

/// How often a paused lane looks at the free space again.
pub(crate) const POLL: Duration = Duration::from_millis(200);
/// The default floor is 1% of the filesystem, at most this much.
const DEFAULT_FLOOR_MAX: u64 = 256 << 20;

/// A filesystem's size and the bytes an unprivileged writer may still use (`statvfs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Free {
    pub avail: u64,
    pub size: u64,
}

/// The free space of the filesystem holding `dir`.
pub(crate) fn free(dir: &Path) -> io::Result<Free> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(Free {
        avail: s.f_bavail.saturating_mul(s.f_frsize),
        size: s.f_blocks.saturating_mul(s.f_frsize),
    })
}

/// The bytes left free on a filesystem of `size` bytes: `min_free` when set, else 1% of it, at
/// most 256 MiB.
pub(crate) fn floor(min_free: Option<u64>, size: u64) -> u64 {
    min_free.unwrap_or((size / 100).min(DEFAULT_FLOOR_MAX))
}

/// Whether `need` more bytes fit in `dir` above the floor: the bytes free when they do,
/// [`GetError::NoSpace`] (with what is free) when they do not.
pub(crate) fn check(dir: &Path, need: u64, min_free: Option<u64>) -> Result<u64, GetError> {
    let free = free(dir).map_err(|source| GetError::Io {
        op: "statvfs",
        path: dir.to_owned(),
        source,
    })?;
    let floor = floor(min_free, free.size);
    if free.avail >= need.saturating_add(floor) {
        return Ok(free.avail);
    }
    Err(GetError::NoSpace {
        dir: dir.to_owned(),
        need,
        have: free.avail,
        floor,
    })
}

/// True for the errors of a full filesystem or an exhausted quota.
pub(crate) fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// The disk-space policy of one job, and whether one of its files already gave up waiting.
#[derive(Debug)]
pub(crate) struct JobSpace {
    min_free: Option<u64>,
    wait: Duration,
    gave_up: AtomicBool,
}

impl JobSpace {
    pub(crate) fn new(min_free: Option<u64>, wait: Duration) -> JobSpace {
        JobSpace {
            min_free,
            wait,
            gave_up: AtomicBool::new(false),
        }
    }

    /// Waits until `need` more bytes fit in `dir` above the floor: at once when they do, after
    /// a pause when another process frees space, or fails with [`GetError::NoSpace`] when the
    /// wait runs out (at once when another file of the job already waited in vain). `stop`
    /// says whether the file was aborted meanwhile.
    pub(crate) async fn wait_for(
        &self,
        dir: &Path,
        need: u64,
        stop: impl Fn() -> bool,
    ) -> Result<(), GetError> {
        if need == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let mut paused = false;
        loop {
            let short = match check(dir, need, self.min_free) {
                Ok(avail) => {
                    if paused {
                        tracing::warn!(
                            "{}: {} free now; going on after {:.1} s",
                            dir.display(),
                            human_bytes(avail),
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(());
                }
                Err(e @ GetError::NoSpace { .. }) => e,
                Err(e) => return Err(e),
            };
            if self.gave_up.load(Ordering::Relaxed) || started.elapsed() >= self.wait {
                self.gave_up.store(true, Ordering::Relaxed);
                return Err(short);
            }
            if let (false, GetError::NoSpace { have, floor, .. }) = (paused, &short) {
                paused = true;
                tracing::warn!(
                    "{}: {}; paused, waiting up to {:.0} s for space",
                    dir.display(),
                    need_have(need, *have, *floor),
                    self.wait.as_secs_f64()
                );
            }
            if stop() {
                return Err(GetError::Interrupted);
            }
            compio::time::sleep(POLL).await;
        }
    }

    /// The error for an `ENOSPC` that got through: `need` more bytes did not fit in `dir`.
    pub(crate) fn full(&self, dir: &Path, need: u64) -> GetError {
        self.gave_up.store(true, Ordering::Relaxed);
        let (have, floor) = match free(dir) {
            Ok(f) => (f.avail, floor(self.min_free, f.size)),
            Err(_) => (0, 0),
        };
        GetError::NoSpace {
            dir: dir.to_owned(),
            need,
            have,
            floor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_floor_is_one_percent_up_to_256_mib() {
        assert_eq!(floor(None, 16 << 20), (16 << 20) / 100);
        assert_eq!(floor(None, 1 << 40), 256 << 20);
        assert_eq!(floor(Some(0), 1 << 40), 0);
        assert_eq!(floor(Some(5), 1 << 40), 5);
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        compio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn room_is_granted_at_once_and_a_shortage_fails_after_the_wait_then_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let have = free(dir.path()).expect("statvfs").avail;
        let space = JobSpace::new(Some(0), Duration::from_millis(300));
        run(space.wait_for(dir.path(), 1, || false)).expect("one byte fits");
        let t = Instant::now();
        let e = run(space.wait_for(dir.path(), have.saturating_mul(2), || false))
            .expect_err("twice the free space does not fit");
        assert!(t.elapsed() >= Duration::from_millis(300), "waited first");
        assert!(
            matches!(e, GetError::NoSpace { need, .. } if need == have.saturating_mul(2)),
            "{e}"
        );
        assert!(e.to_string().contains("need "), "{e}");
        // Another file of the job fails without pausing (a pause looks at `stop` first), and a
        // file that fits still goes on.
        let looked = std::cell::Cell::new(0);
        let stop = || {
            looked.set(looked.get() + 1);
            false
        };
        assert!(run(space.wait_for(dir.path(), have.saturating_mul(2), stop)).is_err());
        assert_eq!(looked.get(), 0, "no second pause");
        run(space.wait_for(dir.path(), 1, || false)).expect("still fits");
    }

    #[test]
    fn the_floor_counts_against_the_room() {
        let dir = tempfile::tempdir().expect("tmp");
        let have = free(dir.path()).expect("statvfs").avail;
        let space = JobSpace::new(Some(have), Duration::ZERO);
        let e = run(space.wait_for(dir.path(), 4096, || false)).expect_err("under the floor");
        assert!(e.to_string().contains("--min-free"), "{e}");
    }

    #[test]
    fn a_stop_ends_the_pause() {
        let dir = tempfile::tempdir().expect("tmp");
        let space = JobSpace::new(Some(u64::MAX / 2), Duration::from_secs(600));
        let e = run(space.wait_for(dir.path(), 1, || true)).expect_err("stopped");
        assert!(matches!(e, GetError::Interrupted), "{e}");
    }
}
