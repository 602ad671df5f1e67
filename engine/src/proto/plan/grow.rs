//! Connections by measurement: how many connections a job keeps open, decided from its total
//! rate. Where a CDN edge caps each flow, more flows fetch more; where the access link is full,
//! they do not, and only cost memory and the server's patience.
//!
//! A job starts with [`START`] connections (all of `-c` when that is fewer). Where `-c` allows
//! more, the controller lets the rate settle (a ramp of [`RAMP_MIN`] plus [`RAMP_RTTS`] round
//! trips), measures it over at least [`MEASURE_MIN`] and [`MEASURE_RTTS`] round trips, opens as
//! many again (the first step, as TCP's slow start: nothing says yet that the link is near
//! full) or half as many again (later steps), lets that settle, and measures again. The step
//! stays only when the rate grew by [`GAIN`]; otherwise the count goes back and growth stops. It also stops at the cap, and
//! when too little is left for a step to pay. A connection opened by a step that the server
//! refuses ([`Growth::refused`]: an edge's connection limit) takes the step back at once.
//!
//! Invariants: the count stays between the start count and the cap; once settled it never
//! changes. Sans-IO: time and bytes are passed in. Not here: opening or closing connections
//! (`download/lanes.rs`).

use std::time::Duration;

/// Connections a job starts with.
pub(crate) const START: usize = crate::config::START_CONNECTIONS;
/// How much faster the job must go for a step to stay.
pub(crate) const GAIN: f64 = 1.15;
/// A step's connections get at least this long to connect and fill their windows...
pub(crate) const RAMP_MIN: Duration = Duration::from_millis(250);
/// ... and this many round trips (the handshake, the first answer, a window's growth).
pub(crate) const RAMP_RTTS: u32 = 5;
/// A rate is measured over at least this long...
pub(crate) const MEASURE_MIN: Duration = Duration::from_millis(500);
/// ... and this many round trips.
pub(crate) const MEASURE_RTTS: u32 = 4;
/// How often to look again before the first bytes came.
const POLL: Duration = Duration::from_millis(50);

/// What the driver does after a [`Growth::tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing now; tick again after this long.
    Wait(Duration),
    /// Open connections until this many are open, then tick again after the ramp.
    Open(usize),
    /// The last step did not pay: go back to this many, and stop growing.
    Back(usize),
    /// Settled on this many; no more ticks are needed.
    Settled(usize),
}

/// The count before a step and the rate measured with it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Before {
    count: usize,
    rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No byte came yet, or no round trip is known.
    Waiting,
    /// Letting the rate settle until `until`; `before`: what the step started from.
    Ramp {
        until: Duration,
        before: Option<Before>,
    },
    /// Measuring since `since`, when `bytes` had come.
    Measure {
        since: Duration,
        bytes: u64,
        before: Option<Before>,
    },
    Settled,
}

/// The controller of one job's connection count.
#[derive(Debug, Clone)]
pub(crate) struct Growth {
    open: usize,
    cap: usize,
    phase: Phase,
}

impl Growth {
    /// A job allowed `cap` connections (`-c`): it starts with [`START`] of them, or all of them
    /// when that is fewer, in which case the count is fixed.
    pub(crate) fn new(cap: usize) -> Growth {
        let cap = cap.max(1);
        let open = cap.min(START);
        Growth {
            open,
            cap,
            phase: if open >= cap {
                Phase::Settled
            } else {
                Phase::Waiting
            },
        }
    }

    /// Connections the job keeps open now.
    pub(crate) fn open(&self) -> usize {
        self.open
    }

    /// The most connections allowed.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Whether the count no longer changes.
    pub(crate) fn settled(&self) -> bool {
        self.phase == Phase::Settled
    }

    /// Looks at the job at `now` (since it began): `done` bytes fetched so far, `left` bytes
    /// still to fetch (`None` while a size is unknown), `rtt` the path's round trip once an
    /// answer told it.
    pub(crate) fn tick(
        &mut self,
        now: Duration,
        done: u64,
        left: Option<u64>,
        rtt: Option<Duration>,
    ) -> Step {
        match self.phase {
            Phase::Settled => Step::Settled(self.open),
            Phase::Waiting => match rtt {
                Some(rtt) if done > 0 => {
                    let until = now + ramp(rtt);
                    self.phase = Phase::Ramp {
                        until,
                        before: None,
                    };
                    Step::Wait(until - now)
                }
                _ => Step::Wait(POLL),
            },
            Phase::Ramp { until, before } => {
                if now < until {
                    return Step::Wait(until - now);
                }
                self.phase = Phase::Measure {
                    since: now,
                    bytes: done,
                    before,
                };
                Step::Wait(measure(rtt))
            }
            Phase::Measure {
                since,
                bytes,
                before,
            } => {
                let elapsed = now.saturating_sub(since);
                if elapsed < measure(rtt) {
                    return Step::Wait(measure(rtt) - elapsed);
                }
                let rate = done.saturating_sub(bytes) as f64 / elapsed.as_secs_f64();
                self.decide(now, rate, left, rtt, before)
            }
        }
    }

    /// After a measurement of `rate` bytes/s with `self.open` connections.
    fn decide(
        &mut self,
        now: Duration,
        rate: f64,
        left: Option<u64>,
        rtt: Option<Duration>,
        before: Option<Before>,
    ) -> Step {
        if let Some(before) = before
            && rate < before.rate * GAIN
        {
            return self.settle_on(before.count, true);
        }
        if self.open >= self.cap {
            return self.settle_on(self.open, false);
        }
        // A step pays only if the job lasts well beyond its ramp and measurement at this rate.
        let step_time = ramp(rtt.unwrap_or_default()) + measure(rtt);
        if rate <= 0.0
            || left.is_some_and(|left| (left as f64 / rate) < 2.0 * step_time.as_secs_f64())
        {
            return self.settle_on(self.open, false);
        }
        // The first step doubles; later ones, after a step that paid, add half.
        let step = match before {
            None => self.open,
            Some(_) => self.open / 2,
        };
        let before = Some(Before {
            count: self.open,
            rate,
        });
        self.open = (self.open + step.max(1)).min(self.cap);
        self.phase = Phase::Ramp {
            until: now + ramp(rtt.unwrap_or_default()),
            before,
        };
        Step::Open(self.open)
    }

    fn settle_on(&mut self, count: usize, back: bool) -> Step {
        self.open = count;
        self.phase = Phase::Settled;
        if back {
            Step::Back(count)
        } else {
            Step::Settled(count)
        }
    }

    /// A connection opened by the step under way was refused by the server (a retryable status,
    /// a reset, a failed connect) before it delivered any bytes: the step goes back, and growth
    /// stops. `Some(count)` to go back to; `None` when no step is under way (settled, or the
    /// refused connection came from a step that already stayed: it just leaves).
    pub(crate) fn refused(&mut self) -> Option<usize> {
        match self.phase {
            Phase::Ramp {
                before: Some(before),
                ..
            }
            | Phase::Measure {
                before: Some(before),
                ..
            } => {
                self.settle_on(before.count, true);
                Some(before.count)
            }
            _ => None,
        }
    }
}

fn ramp(rtt: Duration) -> Duration {
    RAMP_MIN + rtt * RAMP_RTTS
}

fn measure(rtt: Option<Duration>) -> Duration {
    MEASURE_MIN.max(rtt.unwrap_or_default() * MEASURE_RTTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const RTT: Duration = Duration::from_millis(80);

    /// Drives a controller against a path where each connection fetches `per_flow` bytes/s
    /// and all together at most `link` bytes/s, with `size` bytes to fetch; returns the steps
    /// it took and the count it settled on.
    fn run(cap: usize, per_flow: f64, link: f64, size: u64) -> (Vec<Step>, usize) {
        let mut g = Growth::new(cap);
        let mut now = Duration::ZERO;
        let mut done = 0u64;
        let mut steps = Vec::new();
        // The first answer takes a round trip.
        let mut last = now;
        for _ in 0..1000 {
            let rtt = (now >= RTT).then_some(RTT);
            let step = g.tick(now, done, Some(size.saturating_sub(done)), rtt);
            steps.push(step);
            let wait = match step {
                Step::Wait(d) => d,
                Step::Open(_) => ramp(RTT),
                Step::Back(n) | Step::Settled(n) => return (steps, n),
            };
            now += wait;
            let rate = (g.open() as f64 * per_flow).min(link);
            if now >= RTT {
                done += (rate * (now - last.max(RTT)).as_secs_f64()) as u64;
            }
            last = now;
        }
        panic!("never settled: {steps:?}");
    }

    #[test]
    fn capped_flows_grow_to_the_cap() {
        // 10 MB/s per flow, a link of 1 GB/s: every step pays: the first doubles, the next add
        // half, the last only up to the cap.
        let (steps, settled) = run(64, 10e6, 1e9, 20 << 30);
        assert_eq!(settled, 64, "{steps:?}");
        let opened: Vec<usize> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Open(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(opened, [32, 48, 64], "{steps:?}");
    }

    #[test]
    fn the_cap_is_never_passed() {
        let (steps, settled) = run(24, 10e6, 1e9, 20 << 30);
        assert_eq!(settled, 24, "{steps:?}");
        assert!(steps.contains(&Step::Open(24)));
    }

    #[test]
    fn a_full_link_goes_back_to_the_start() {
        // 16 flows fill the link already: the step to 32 brings nothing.
        let (steps, settled) = run(32, 25e6, 400e6, 20 << 30);
        assert_eq!(settled, 16, "{steps:?}");
        assert!(steps.contains(&Step::Open(32)), "{steps:?}");
        assert_eq!(steps.last(), Some(&Step::Back(16)));
    }

    #[test]
    fn a_gain_below_the_threshold_goes_back() {
        // 16 flows of 25 MB/s against a 440 MB/s link: 32 flows bring 10 %.
        let (steps, settled) = run(32, 25e6, 440e6, 20 << 30);
        assert_eq!(settled, 16, "{steps:?}");
        assert_eq!(steps.last(), Some(&Step::Back(16)));
    }

    #[test]
    fn a_step_that_pays_stays_and_the_next_that_does_not_goes_back() {
        // 16 x 10 MB/s = 160 MB/s; 32 -> 300 (the link): +87 % stays; 48 -> 300: goes back
        // to 32.
        let (steps, settled) = run(64, 10e6, 300e6, 20 << 30);
        assert_eq!(settled, 32, "{steps:?}");
        assert_eq!(steps.last(), Some(&Step::Back(32)));
    }

    #[test]
    fn a_small_job_does_not_grow() {
        // At 160 MB/s, what is left after the first measurement takes less than two steps.
        let (steps, settled) = run(64, 10e6, 1e9, 400_000_000);
        assert_eq!(settled, 16, "{steps:?}");
        assert!(!steps.iter().any(|s| matches!(s, Step::Open(_))));
    }

    #[test]
    fn a_cap_at_or_below_the_start_is_fixed() {
        for cap in [1, 8, 16] {
            let mut g = Growth::new(cap);
            assert_eq!(g.open(), cap);
            assert!(g.settled());
            assert_eq!(
                g.tick(Duration::from_secs(9), 1 << 30, Some(1 << 30), Some(RTT)),
                Step::Settled(cap)
            );
        }
    }

    #[test]
    fn nothing_happens_before_the_first_answer() {
        let mut g = Growth::new(32);
        assert_eq!(g.tick(Duration::ZERO, 0, None, None), Step::Wait(POLL));
        assert_eq!(g.tick(100 * MS, 0, None, Some(RTT)), Step::Wait(POLL));
        assert_eq!(g.tick(200 * MS, 5, None, None), Step::Wait(POLL));
        assert_eq!(g.open(), 16);
        // The first bytes with a round trip start the ramp.
        assert_eq!(g.tick(300 * MS, 5, None, Some(RTT)), Step::Wait(ramp(RTT)));
    }

    #[test]
    fn a_refused_step_goes_back_at_once() {
        let mut g = Growth::new(32);
        let mut now = Duration::ZERO;
        let mut done = 1;
        loop {
            match g.tick(now, done, None, Some(RTT)) {
                Step::Wait(d) => now += d,
                Step::Open(n) => {
                    assert_eq!(n, 32);
                    break;
                }
                s => panic!("{s:?}"),
            }
            done += 10 << 20;
        }
        assert_eq!(g.refused(), Some(16));
        assert!(g.settled());
        assert_eq!(g.open(), 16);
        // Once settled a refusal changes nothing.
        assert_eq!(g.refused(), None);
        assert_eq!(g.tick(now, done, None, Some(RTT)), Step::Settled(16));
    }

    #[test]
    fn a_refusal_before_any_step_changes_nothing() {
        let mut g = Growth::new(32);
        assert_eq!(g.refused(), None);
        assert!(!g.settled());
        assert_eq!(g.open(), 16);
    }
}
