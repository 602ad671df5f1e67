//! Mirrors: a file may come from several endpoints (the URL asked for, and `--mirror`s), the
//! same bytes at each. This module decides which endpoint a lane asks next, from what the job
//! has seen of each: failures put an endpoint aside for a while (the lane moves to the next at
//! once), and an endpoint far slower than the best is demoted (used only while no other is
//! available). Lanes are spread over the endpoints in use by their number, and a lane stays on
//! its endpoint while it is fit (its connection is kept alive).
//!
//! Sans-IO: the time is passed in, nothing here connects or sleeps. Which bytes a source
//! served is counted by the file (`download/mirrors.rs`); the job-wide totals are here.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Throughput per connection below this share of the best endpoint's demotes an endpoint.
const DEMOTE_BELOW: f64 = 0.25;
/// Time spent on completed ranges an endpoint needs before its throughput is trusted for
/// demotion: short ranges on a fast link measure the scheduler, not the link.
const TIME_TO_JUDGE: Duration = Duration::from_millis(200);
/// Bytes of completed ranges that make an endpoint's throughput the yardstick for others.
const BYTES_TO_RATE: u64 = 8 << 20;
/// How long a failed endpoint is put aside, doubled per failure in a row, at most
/// [`MAX_ASIDE`].
const ASIDE: Duration = Duration::from_secs(1);
const MAX_ASIDE: Duration = Duration::from_secs(30);

/// What a job knows of each endpoint its files come from.
#[derive(Debug, Default)]
pub(crate) struct Endpoints {
    state: Mutex<Vec<Endpoint>>,
}

#[derive(Debug, Clone)]
struct Endpoint {
    /// `scheme://host:port` of the endpoint, as shown.
    label: String,
    bytes: u64,
    /// Bytes and time of its completed ranges, all connections added: its throughput per
    /// connection is their ratio.
    timed_bytes: u64,
    timed: Duration,
    /// Said once: an endpoint demoted, restored and demoted again is not announced again.
    announced: bool,
    /// Failures in a row.
    failures: u32,
    failures_total: u64,
    aside_until: Option<Instant>,
    demoted: bool,
    /// It closed a connection with a pipelined request unanswered: it gets one request per
    /// answer from then on.
    no_pipelining: bool,
    /// The least wait for an answer's head of a request sent on an idle connection to it, any
    /// connection of the job: about a round trip (one busy moment does not raise it).
    least_wait: Option<Duration>,
}

impl Endpoint {
    /// Not put aside at `now`.
    fn usable(&self, now: Instant) -> bool {
        self.aside_until.is_none_or(|t| t <= now)
    }
}

/// One endpoint's share of a job, for the summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EndpointReport {
    /// `scheme://host:port`.
    pub endpoint: String,
    /// Bytes it served.
    pub bytes: u64,
    /// Requests to it that failed (each moved to another endpoint or was retried).
    pub failures: u64,
    /// True when it was demoted for being far slower than the best endpoint.
    pub demoted: bool,
}

impl Endpoints {
    /// The id of the endpoint labelled `label`, added when new.
    pub(crate) fn id(&self, label: &str) -> usize {
        let mut s = self.lock();
        if let Some(i) = s.iter().position(|e| e.label == label) {
            return i;
        }
        s.push(Endpoint {
            label: label.to_owned(),
            bytes: 0,
            timed_bytes: 0,
            timed: Duration::ZERO,
            announced: false,
            failures: 0,
            failures_total: 0,
            aside_until: None,
            demoted: false,
            no_pipelining: false,
            least_wait: None,
        });
        s.len() - 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Endpoint>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Which of `candidates` (endpoint ids, in order of preference) lane `lane` asks next: its
    /// position in `candidates`. Among the endpoints not put aside and not demoted, the lanes
    /// are spread by number; else the demoted ones; else the one back soonest.
    pub(crate) fn pick(&self, candidates: &[usize], lane: usize, now: Instant) -> usize {
        let s = self.lock();
        let at = |p: &usize| &s[candidates[*p]];
        let positions = 0..candidates.len();
        let fit: Vec<usize> = positions
            .clone()
            .filter(|p| at(p).usable(now) && !at(p).demoted)
            .collect();
        if !fit.is_empty() {
            return fit[lane % fit.len()];
        }
        positions
            .clone()
            .find(|p| at(p).usable(now))
            .or_else(|| positions.min_by_key(|p| at(p).aside_until))
            .unwrap_or(0)
    }

    /// True when endpoint `id` is not put aside at `now`.
    pub(crate) fn usable(&self, id: usize, now: Instant) -> bool {
        self.lock()[id].usable(now)
    }

    /// A range of `bytes` from `id` completed in `elapsed`: its throughput counts, and it is
    /// fit again. Returns a line to log when this demoted an endpoint.
    pub(crate) fn served(&self, id: usize, bytes: u64, elapsed: Duration) -> Option<String> {
        let mut s = self.lock();
        let e = &mut s[id];
        e.bytes += bytes;
        e.failures = 0;
        e.aside_until = None;
        e.timed_bytes += bytes;
        e.timed += elapsed;
        judge(&mut s)
    }

    /// Bytes that arrived from `id` in a range that then failed.
    pub(crate) fn partial(&self, id: usize, bytes: u64) {
        self.lock()[id].bytes += bytes;
    }

    /// Whether requests to `id` may be pipelined (sent before the answer ahead of them ended).
    pub(crate) fn pipelines(&self, id: usize) -> bool {
        !self.lock()[id].no_pipelining
    }

    /// `id` closed a connection with a pipelined request unanswered: no more pipelining there.
    /// True the first time (to say so once).
    pub(crate) fn stop_pipelining(&self, id: usize) -> bool {
        let mut s = self.lock();
        !std::mem::replace(&mut s[id].no_pipelining, true)
    }

    /// A request sent to `id` on an idle connection waited `wait` for its answer's head.
    pub(crate) fn answered(&self, id: usize, wait: Duration) {
        let mut s = self.lock();
        let least = &mut s[id].least_wait;
        *least = Some(least.map_or(wait, |l| l.min(wait)));
    }

    /// The least wait for an answer seen at `id` so far ([`Endpoints::answered`]): about a
    /// round trip, once any connection has asked.
    pub(crate) fn least_wait(&self, id: usize) -> Option<Duration> {
        self.lock()[id].least_wait
    }

    /// The least wait for an answer seen at any endpoint: the job's shortest round trip.
    pub(crate) fn least_wait_any(&self) -> Option<Duration> {
        self.lock().iter().filter_map(|e| e.least_wait).min()
    }

    /// A request to `id` failed at `now`: it is put aside for a while (longer each time).
    pub(crate) fn failed(&self, id: usize, now: Instant) {
        let mut s = self.lock();
        let e = &mut s[id];
        e.failures += 1;
        e.failures_total += 1;
        let aside = ASIDE
            .saturating_mul(1 << e.failures.saturating_sub(1).min(5))
            .min(MAX_ASIDE);
        e.aside_until = Some(now + aside);
    }

    /// Each endpoint's share, in the order they were added.
    pub(crate) fn report(&self) -> Vec<EndpointReport> {
        self.lock()
            .iter()
            .map(|e| EndpointReport {
                endpoint: e.label.clone(),
                bytes: e.bytes,
                failures: e.failures_total,
                demoted: e.demoted,
            })
            .collect()
    }
}

/// Demotes the endpoints far slower than the best (each judged on enough samples), and
/// restores those no longer so; returns a line about a new demotion.
fn judge(s: &mut [Endpoint]) -> Option<String> {
    let rate = |e: &Endpoint| {
        (e.timed >= TIME_TO_JUDGE).then(|| e.timed_bytes as f64 / e.timed.as_secs_f64())
    };
    // The best is known from fewer, faster ranges: enough bytes to be more than a latency.
    let best = s
        .iter()
        .filter(|e| e.timed_bytes >= BYTES_TO_RATE && !e.timed.is_zero())
        .map(|e| e.timed_bytes as f64 / e.timed.as_secs_f64())
        .fold(0.0_f64, f64::max);
    let mut said = None;
    for e in s.iter_mut() {
        let r = rate(e);
        let slow = r.is_some_and(|r| r < best * DEMOTE_BELOW);
        if slow && !e.announced {
            e.announced = true;
            said = Some(format!(
                "{} demoted: {:.1} MB/s per connection, the best endpoint {:.1} MB/s",
                e.label,
                r.unwrap_or(0.0) / 1e6,
                best / 1e6
            ));
        }
        e.demoted = slow;
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoints_round_trip_is_the_least_wait_any_connection_saw() {
        let e = Endpoints::default();
        let (a, b) = (e.id("http://a:80"), e.id("http://b:80"));
        assert_eq!(e.least_wait(a), None);
        let ms = Duration::from_millis;
        // Sixteen connections asking at once: the busy start does not stick.
        e.answered(a, ms(95));
        e.answered(a, ms(80));
        e.answered(a, ms(140));
        assert_eq!(e.least_wait(a), Some(ms(80)));
        assert_eq!(e.least_wait(b), None, "per endpoint");
    }

    fn two() -> (Endpoints, Vec<usize>) {
        let e = Endpoints::default();
        let ids = vec![e.id("http://a"), e.id("http://b")];
        (e, ids)
    }

    #[test]
    fn an_endpoint_stops_pipelining_once_and_for_good() {
        let e = Endpoints::default();
        let (a, b) = (e.id("http://a:80"), e.id("http://b:80"));
        assert!(e.pipelines(a) && e.pipelines(b));
        assert!(e.stop_pipelining(a), "said the first time");
        assert!(!e.stop_pipelining(a), "not again");
        assert!(
            !e.pipelines(a) && e.pipelines(b),
            "the other endpoint keeps it"
        );
    }

    #[test]
    fn lanes_spread_over_the_fit_endpoints_and_stay() {
        let (e, ids) = two();
        let now = Instant::now();
        let picks: Vec<usize> = (0..4).map(|lane| e.pick(&ids, lane, now)).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        assert_eq!(e.pick(&ids, 2, now), 0, "a lane stays where it was");
        assert_eq!(e.id("http://b"), 1, "an endpoint is added once");
    }

    #[test]
    fn a_failed_endpoint_is_put_aside_then_comes_back() {
        let (e, ids) = two();
        let now = Instant::now();
        e.failed(ids[1], now);
        assert!(!e.usable(ids[1], now) && e.usable(ids[0], now));
        assert_eq!(e.pick(&ids, 1, now), 0, "lane 1 moves to a");
        let later = now + Duration::from_secs(2);
        assert_eq!(e.pick(&ids, 1, later), 1, "b is back after its pause");
        // Failures in a row double the pause.
        e.failed(ids[1], later);
        e.failed(ids[1], later);
        assert_eq!(e.pick(&ids, 1, later + Duration::from_secs(3)), 0);
        assert_eq!(e.pick(&ids, 1, later + Duration::from_secs(5)), 1);
        // Everything aside: the one back soonest.
        e.failed(ids[0], later);
        assert_eq!(e.pick(&ids, 1, later), 0);
        assert!(!e.usable(ids[0], later));
    }

    #[test]
    fn a_slow_endpoint_is_demoted_by_its_throughput_and_restored() {
        let (e, ids) = two();
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let short = Duration::from_millis(100);
        assert_eq!(e.served(ids[0], 100 << 20, second), None);
        assert_eq!(e.served(ids[0], 100 << 20, second), None);
        assert_eq!(
            e.served(ids[1], 1 << 20, short),
            None,
            "100 ms is too short to judge"
        );
        let said = e.served(ids[1], 1 << 20, short).expect("demoted");
        assert!(said.starts_with("http://b demoted"), "{said}");
        assert_eq!(e.pick(&ids, 1, now), 0, "every lane goes to a");
        assert_eq!(e.pick(&ids, 3, now), 0);
        // a fails: b, demoted, is still used rather than nothing.
        e.failed(ids[0], now);
        assert_eq!(e.pick(&ids, 0, now), 1);
        // b speeds up: restored, and a later demotion is not announced again.
        for _ in 0..6 {
            e.served(ids[1], 100 << 20, second);
        }
        let r = e.report();
        assert!(!r[1].demoted, "{r:?}");
        assert_eq!(r[0].bytes, 200 << 20);
        assert_eq!(e.served(ids[1], 1 << 20, Duration::from_secs(60)), None);
        assert!(e.report()[1].demoted);
        assert_eq!(r[0].failures, 1);
    }
}
