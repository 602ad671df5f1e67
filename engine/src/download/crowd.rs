//! How many of a job's lanes run: the [`Growth`] controller's count, applied. A task of the job
//! ticks the controller with the job's bytes and round trip; when it opens connections, more
//! lanes start (each one connection); when a step goes back, the lanes above the count leave
//! after their current lease.
//!
//! Invariants: lanes `0..target` never leave early, so the job always has lanes to finish it;
//! a lane above the target takes no new lease and asks nothing ahead, then exits once its
//! claimed files are done. Lanes opened by growth keep one write in flight, so memory grows by
//! two buffers per grown lane ([`crate::Config::write_depth`]). Not here: the decisions
//! (`proto/plan/grow.rs`), what a lane does (`lanes.rs`, `lease.rs`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::proto::plan::grow::{Growth, Step};

/// A job's lane count: the controller and the count lanes read.
#[derive(Debug)]
pub(crate) struct Crowd {
    growth: Mutex<Growth>,
    /// Lanes with an id at or above this leave.
    target: AtomicUsize,
    /// Lanes started so far (ids `0..started`).
    started: AtomicUsize,
    /// The count the job started with: lanes from here on were opened by growth.
    start: usize,
}

impl Crowd {
    /// A job allowed `cap` connections.
    pub(crate) fn new(cap: usize) -> Crowd {
        let growth = Growth::new(cap);
        let open = growth.open();
        Crowd {
            growth: Mutex::new(growth),
            target: AtomicUsize::new(open),
            started: AtomicUsize::new(0),
            start: open,
        }
    }

    fn growth(&self) -> std::sync::MutexGuard<'_, Growth> {
        self.growth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most lanes the job may run (`-c`).
    pub(crate) fn cap(&self) -> usize {
        self.growth().cap()
    }

    /// Lanes to run now.
    pub(crate) fn target(&self) -> usize {
        self.target.load(Ordering::Relaxed)
    }

    /// Whether lane `id` stays (it is under the target).
    pub(crate) fn keeps(&self, id: usize) -> bool {
        id < self.target()
    }

    /// Whether lane `id` was opened by growth (it keeps one write in flight).
    pub(crate) fn grown(&self, id: usize) -> bool {
        id >= self.start
    }

    /// Whether the controller has more to decide.
    pub(crate) fn settled(&self) -> bool {
        self.growth().settled()
    }

    /// The ids of the lanes to start now (up to the target, none started before).
    pub(crate) fn to_start(&self) -> std::ops::Range<usize> {
        let target = self.target();
        let from = self.started.fetch_max(target, Ordering::Relaxed);
        from..target.max(from)
    }

    /// A lane opened by the step under way was refused before it delivered a byte: the step goes
    /// back (lanes above the count leave). Returns whether the count changed.
    pub(crate) fn refused(&self) -> bool {
        let back = self.growth().refused();
        match back {
            Some(n) => {
                tracing::info!("a connection opened to grow was refused; keeping {n}");
                self.target.store(n, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Ticks the controller; `Some(step)` for the driver to apply. The target moves with it.
    pub(crate) fn tick(
        &self,
        now: std::time::Duration,
        done: u64,
        left: Option<u64>,
        rtt: Option<std::time::Duration>,
    ) -> Step {
        let step = self.growth().tick(now, done, left, rtt);
        match step {
            Step::Open(n) => {
                tracing::debug!("growing to {n} connections");
                self.target.store(n, Ordering::Relaxed);
            }
            Step::Back(n) => {
                tracing::debug!("the step did not pay; back to {n} connections");
                self.target.store(n, Ordering::Relaxed);
            }
            Step::Settled(_) | Step::Wait(_) => {}
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lanes_start_once_and_leave_above_the_target() {
        let c = Crowd::new(32);
        assert_eq!(c.to_start(), 0..16);
        assert_eq!(c.to_start(), 16..16);
        assert!(c.keeps(15) && !c.keeps(16));
        assert!(!c.grown(15) && c.grown(16));
        let rtt = Some(Duration::from_millis(80));
        let mut now = Duration::ZERO;
        let mut done = 1;
        loop {
            match c.tick(now, done, None, rtt) {
                Step::Wait(d) => now += d,
                Step::Open(n) => {
                    assert_eq!(n, 32);
                    break;
                }
                s => panic!("{s:?}"),
            }
            done += 8 << 20;
        }
        assert_eq!(c.to_start(), 16..32);
        assert!(c.keeps(31));
        assert!(c.refused());
        assert!(!c.keeps(16) && c.keeps(15));
        assert!(c.settled());
        // Lanes 16..32 were started already: none starts again.
        assert_eq!(c.to_start(), 32..32);
        assert!(!c.refused());
    }

    #[test]
    fn a_small_cap_is_fixed() {
        let c = Crowd::new(4);
        assert!(c.settled());
        assert_eq!(c.to_start(), 0..4);
        assert!(!c.grown(3));
    }
}
