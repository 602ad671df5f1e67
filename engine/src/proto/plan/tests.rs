//! Tests of `plan`.

use super::*;

/// A deterministic simulation: `speeds[i]` bytes per tick for connection `i`; each connection
/// reads in steps of at most `step`, asking the plan first. Returns the bytes each offset was
/// written by (checked to tile the file exactly) and the tick each connection finished.
struct Sim {
    plan: Plan,
    covered: Vec<(u64, u64)>,
    finished: Vec<u64>,
}

fn simulate(total: u64, first: u64, speeds: &[u64], chunk: Option<u64>) -> Sim {
    let mut plan = Plan::new(total, first, speeds.len(), chunk);
    let mut covered = vec![(0, first)];
    let mut state: Vec<Option<(LeaseId, u64, u64)>> = vec![None; speeds.len()]; // id, at, start
    let mut finished = vec![0; speeds.len()];
    let mut idle = vec![false; speeds.len()];
    let mut tick = 0;
    while idle.iter().any(|i| !i) {
        tick += 1;
        assert!(tick < 10_000_000, "simulation does not terminate");
        for (c, &speed) in speeds.iter().enumerate() {
            // A connection whose lease ends takes the next one in the same tick.
            while !idle[c] {
                if state[c].is_none() {
                    match plan.take() {
                        Some((id, r, _)) => state[c] = Some((id, r.start, r.start)),
                        None => {
                            idle[c] = true;
                            finished[c] = tick;
                            break;
                        }
                    }
                }
                let (id, at, start) = state[c].expect("lease");
                let got = plan.reserve(id, at, speed);
                if got == 0 {
                    covered.push((start, at));
                    plan.complete(id);
                    state[c] = None;
                    continue;
                }
                state[c] = Some((id, at + got, start));
                break;
            }
        }
    }
    Sim {
        plan,
        covered,
        finished,
    }
}

fn assert_tiles(covered: &mut [(u64, u64)], total: u64) {
    covered.sort();
    let mut at = 0;
    for &(s, e) in covered.iter() {
        if s == e {
            continue;
        }
        assert_eq!(s, at, "gap or overlap at {at}: {covered:?}");
        at = e;
    }
    assert_eq!(at, total, "covers the whole file");
}

#[test]
fn leases_tile_the_file_exactly() {
    for total in [
        0,
        1,
        4095,
        4096,
        4097,
        FIRST_CHUNK + 1,
        1 << 30,
        (1 << 30) + 12345,
    ] {
        let first = FIRST_CHUNK.min(total);
        let mut sim = simulate(total, first, &[1 << 20; 8], None);
        assert_tiles(&mut sim.covered, total);
        let mut sim = simulate(total, first, &[777_777, 3 << 20, 65_536], Some(777_777));
        assert_tiles(&mut sim.covered, total);
    }
}

#[test]
fn a_resumed_plan_hands_out_exactly_its_gaps() {
    let total = (40 << 20) + 123;
    let gaps = [
        (30 << 20) + 4096..total,
        0..4096,
        (5 << 20)..(9 << 20) + 8192,
        (6 << 20)..(7 << 20), // inside the one before: merged
    ];
    let mut plan = Plan::with_gaps(total, gaps.clone(), 3, None);
    assert_eq!(
        plan.frontier_left(),
        4096 + (4 << 20) + 8192 + (10 << 20) - 4096 + 123
    );
    // The first request of the resumed file, in the middle of a gap.
    let first = plan.claim((6 << 20)..(7 << 20));
    plan.complete(first);
    let mut got = vec![(6 << 20, 7 << 20)];
    let mut last_start = 0;
    while let Some((id, r, src)) = plan.take() {
        assert_eq!(src, LeaseOrigin::Frontier, "nothing held, nothing to split");
        assert!(r.start >= last_start, "in file order");
        last_start = r.start;
        got.push((r.start, r.end));
        plan.complete(id);
    }
    got.sort();
    let merged: Vec<(u64, u64)> = got.iter().fold(Vec::new(), |mut acc, &(s, e)| {
        match acc.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => acc.push((s, e)),
        }
        acc
    });
    assert_eq!(
        merged,
        [
            (0, 4096),
            (5 << 20, (9 << 20) + 8192),
            ((30 << 20) + 4096, total)
        ],
        "every gap, nothing else"
    );
    assert_eq!(plan.frontier_left(), 0);
    assert!(
        Plan::with_gaps(100, [], 2, None).take().is_none(),
        "all on disk"
    );
}

#[test]
fn gaps_are_what_the_ranges_on_disk_leave() {
    assert_eq!(gaps(&[], 10), std::iter::once(0..10).collect::<Vec<_>>());
    assert_eq!(gaps(&[2..4, 6..10], 10), [0..2, 4..6]);
    assert!(gaps(std::slice::from_ref(&(0..10)), 10).is_empty());
    assert_eq!(
        gaps(&[0..3, 8..12], 10),
        std::iter::once(3..8).collect::<Vec<_>>(),
        "clipped to the file"
    );
}

#[test]
fn unequal_connections_finish_together() {
    // One connection ten times slower than the others: without splits it would hold a whole
    // chunk at the end while the rest sit idle.
    let total = 1 << 30;
    let speeds = [64 << 10, 640 << 10, 640 << 10, 640 << 10];
    let mut sim = simulate(total, FIRST_CHUNK, &speeds, None);
    assert_tiles(&mut sim.covered, total);
    assert!(sim.plan.splits() > 0, "the tail was split");
    let first = *sim.finished.iter().min().expect("conns");
    let last = *sim.finished.iter().max().expect("conns");
    // Ideal: total / sum(speeds) ticks. Everyone finishes within a few split units of it.
    let ideal = total / speeds.iter().sum::<u64>();
    assert!(
        last <= ideal + ideal / 20 + 2 * SPLIT_ALIGN / speeds[0],
        "last {last} vs ideal {ideal}"
    );
    assert!(
        last - first <= 2 * SPLIT_ALIGN / speeds[0] + 2,
        "{first}..{last}"
    );
}

#[test]
fn frontier_goes_front_to_back_and_shrinks() {
    let mut plan = Plan::new(1 << 30, FIRST_CHUNK, 8, None);
    let mut last_end = FIRST_CHUNK;
    let mut last_len = u64::MAX;
    while let Some((id, r, src)) = plan.take() {
        if src != LeaseOrigin::Frontier {
            break;
        }
        assert_eq!(r.start, last_end, "in file order");
        assert!(r.end - r.start <= last_len, "never grows");
        assert!(r.end == 1 << 30 || (r.end - r.start) % MIN_CHUNK == 0);
        last_len = r.end - r.start;
        last_end = r.end;
        plan.complete(id);
    }
    assert_eq!(last_end, 1 << 30);
}

#[test]
fn a_verified_file_keeps_its_leases_within_the_spread() {
    // The first lease per connection of a large file, by the number of connections.
    let first_len = |connections: usize, spread: Option<u64>| {
        let mut plan = Plan::new(8 << 30, 0, connections, None);
        if let Some(bytes) = spread {
            plan = plan.spread_within(bytes);
        }
        let (_, r, src) = plan.take().expect("frontier");
        assert_eq!(src, LeaseOrigin::Frontier);
        r.end - r.start
    };
    assert_eq!(first_len(16, None), MAX_CHUNK);
    assert_eq!(first_len(16, Some(64 << 20)), 4 << 20);
    assert_eq!(first_len(8, Some(64 << 20)), MAX_CHUNK);
    assert_eq!(
        first_len(12, Some(64 << 20)),
        5 << 20,
        "rounded down to a MiB"
    );
    assert_eq!(
        first_len(256, Some(64 << 20)),
        MIN_CHUNK,
        "never below the minimum"
    );
    // A chunk size given by the user is kept.
    let mut plan = Plan::new(8 << 30, 0, 16, Some(32 << 20)).spread_within(64 << 20);
    let (_, r, _) = plan.take().expect("frontier");
    assert_eq!(r, 0..32 << 20);
}

#[test]
fn more_connections_get_smaller_leases_within_the_same_spread() {
    // A verified file: 16 connections span 64 MiB with 4 MiB leases; grown to 32, 2 MiB.
    let mut plan = Plan::new(8 << 30, 0, 16, None).spread_within(64 << 20);
    let (_, r, _) = plan.take().expect("frontier");
    assert_eq!(r.end - r.start, 4 << 20);
    plan.set_connections(32);
    let (_, r2, _) = plan.take().expect("frontier");
    assert_eq!((r2.start, r2.end - r2.start), (r.end, 2 << 20));
    // Without a spread, the chunk follows what is left per connection (8 MiB at most).
    let mut plan = Plan::new(256 << 20, 0, 16, None);
    let (_, r, _) = plan.take().expect("frontier");
    assert_eq!(r.end - r.start, 8 << 20);
    plan.set_connections(64);
    let (_, r, _) = plan.take().expect("frontier");
    assert_eq!(
        r.end - r.start,
        1 << 20,
        "248 MiB over 64 connections, two each"
    );
}

#[test]
fn a_split_never_cuts_below_what_was_reserved() {
    let mut plan = Plan::new(100 << 20, 0, 2, Some(100 << 20));
    let (a, r, _) = plan.take().expect("frontier");
    assert_eq!(r, 0..100 << 20);
    assert_eq!(plan.reserve(a, 0, 30 << 20), 30 << 20);
    let (b, r, src) = plan.take().expect("split");
    assert_eq!(src, LeaseOrigin::Split);
    assert_eq!(r, 65 << 20..100 << 20, "middle of 30..100 MiB");
    assert_eq!(plan.end_of(a), 65 << 20);
    // The holder of `a` can read to the new end and no further.
    assert_eq!(plan.reserve(a, 30 << 20, 50 << 20), 35 << 20);
    assert_eq!(plan.reserve(a, 65 << 20, 1), 0);
    plan.complete(a);
    // Nothing left to split in `b` below 2 MiB of unreserved bytes.
    assert_eq!(
        plan.reserve(b, 65 << 20, (35 << 20) - (1 << 20)),
        (34 << 20)
    );
    assert!(plan.take().is_none());
}

#[test]
fn short_answers_are_retried_then_refused() {
    let mut plan = Plan::new(10 << 20, 0, 1, Some(10 << 20));
    let (id, _, _) = plan.take().expect("frontier");
    for round in 0..MAX_RETRIES {
        let lease = id_or(&mut plan, id, round);
        plan.give_back(lease, 5 << 20).expect("retry allowed");
    }
    let (id, r, src) = plan.take().expect("retry");
    assert_eq!((r, src), (5 << 20..10 << 20, LeaseOrigin::Retry));
    assert_eq!(plan.give_back(id, 6 << 20), Err(()), "retries used up");
    assert_eq!(plan.retries(), MAX_RETRIES);
}

/// The lease to give back in round `round`: the first, then each retry lease in turn.
fn id_or(plan: &mut Plan, first: LeaseId, round: u32) -> LeaseId {
    if round == 0 {
        return first;
    }
    let (id, r, src) = plan.take().expect("retry lease");
    assert_eq!((r, src), (5 << 20..10 << 20, LeaseOrigin::Retry));
    id
}

#[test]
fn leases_taken_ahead_never_split_and_go_back_without_a_retry() {
    let mut plan = Plan::new(16 << 20, 0, 2, Some(4 << 20));
    let (a, ra, _) = plan.take().expect("first");
    let (b, rb) = plan.take_ahead(&[]).expect("the frontier's next chunk");
    assert_eq!((ra, rb.clone()), (0..4 << 20, 4 << 20..8 << 20));
    // Put back whole, no retry used; the next taker gets exactly those bytes.
    plan.put_back(b);
    assert_eq!(plan.retries(), 0);
    let (b2, rb2, origin) = plan.take().expect("the put-back lease");
    assert_eq!((rb2, origin), (rb, LeaseOrigin::Retry));
    let (_c, _) = plan.take_ahead(&[]).expect("third chunk");
    let (_d, _) = plan.take_ahead(&[]).expect("fourth chunk");
    // Only splits are left now: nothing is taken ahead, though a free connection would split.
    assert!(plan.take_ahead(&[]).is_none());
    assert!(plan.has_work());
    plan.complete(a);
    plan.complete(b2);
}

#[test]
fn stalled_leases_go_on_without_a_retry_until_the_hedges_run_out() {
    let mut plan = Plan::new(10 << 20, 0, 2, Some(10 << 20));
    let (mut id, _, _) = plan.take().expect("frontier");
    let mut at = 0;
    for _ in 0..MAX_HEDGES {
        assert!(plan.may_hedge());
        at += 1 << 20;
        assert_eq!(plan.hedge(id, at), Ok(10 << 20));
        let (next, r, origin) = plan.take().expect("the stalled lease's rest");
        assert_eq!((r, origin), (at..10 << 20, LeaseOrigin::Retry));
        id = next;
    }
    assert_eq!(plan.retries(), 0, "hedges use no retry");
    // Past the hedges a stall is a short answer like any other.
    assert!(!plan.may_hedge());
    assert_eq!(plan.hedge(id, at + (1 << 20)), Ok(10 << 20));
    assert_eq!(plan.retries(), 1);
    let (id, r, _) = plan.take().expect("retry");
    assert_eq!(r, at + (1 << 20)..10 << 20);
    // A stall at the lease's very end gives nothing back and uses nothing.
    assert_eq!(plan.hedge(id, 10 << 20), Ok(10 << 20));
    assert_eq!(plan.retries(), 1);
    assert!(plan.take().is_none());
}

#[test]
fn a_wanted_offset_in_the_frontier_is_leased_next_and_nothing_is_leased_twice() {
    const M: u64 = 1 << 20;
    let mut plan = Plan::new(64 * M, 0, 4, Some(4 * M));
    let (_, first, _) = plan.take().expect("front");
    assert_eq!(first, 0..4 * M);
    // A reader waits at 40.5 MiB: the next lease starts on the MiB boundary below it.
    let (_, r, _) = plan
        .take_wanting(&[Want::at(40 * M + M / 2, false)], true)
        .expect("the wanted chunk");
    assert_eq!(r, 40 * M..44 * M);
    // An offset already leased is not leased again; the next wanted one is.
    let (_, r, _) = plan
        .take_wanting(&[41 * M, 2 * M, 63 * M].map(|at| Want::at(at, false)), true)
        .expect("the next wanted chunk");
    assert_eq!(
        r,
        63 * M..64 * M,
        "2 MiB is leased, 41 MiB too: 63 MiB comes next"
    );
    // With nothing wanted, the front goes on from where it was.
    let (_, r, _) = plan.take_wanting(&[], true).expect("front");
    assert_eq!(r, 4 * M..8 * M);
    // Everything is handed out exactly once.
    let mut got = vec![first, 40 * M..44 * M, 63 * M..64 * M, 4 * M..8 * M];
    while let Some((_, r, origin)) = plan.take_wanting(&[Want::at(50 * M, false)], true) {
        if origin == LeaseOrigin::Split {
            break;
        }
        got.push(r);
    }
    got.sort_by_key(|r| r.start);
    let mut at = 0;
    for r in got {
        assert_eq!(r.start, at, "a gap or an overlap at {at}");
        at = r.end;
    }
    assert_eq!(at, 64 * M);
}

#[test]
fn without_splits_an_idle_connection_gets_nothing_once_the_frontier_is_out() {
    const M: u64 = 1 << 20;
    let mut plan = Plan::new(8 * M, 0, 2, Some(4 * M)).without_splits();
    let (_, a, _) = plan.take().expect("first");
    let (_, b, _) = plan.take().expect("second");
    assert_eq!((a, b), (0..4 * M, 4 * M..8 * M));
    assert!(!plan.has_work());
    assert!(plan.take().is_none(), "a lease was split");
    // Nor is a stalled flow hedged: it waits for the watchdog (or a reader's cut).
    assert!(!plan.may_hedge());
}

#[test]
fn a_wanted_range_is_leased_where_it_first_meets_the_frontier() {
    const M: u64 = 1 << 20;
    let mut plan = Plan::new(64 * M, 0, 4, Some(4 * M));
    let (_, first, _) = plan.take().expect("front");
    assert_eq!(first, 0..4 * M);
    // A reader at 1 MiB reads ahead to 12 MiB: 0..4 MiB is leased, so 4 MiB comes next ...
    let ahead = Want {
        range: M..12 * M,
        stalled: false,
    };
    let (_, r, _) = plan
        .take_wanting(std::slice::from_ref(&ahead), true)
        .expect("ahead");
    assert_eq!(r, 4 * M..8 * M);
    // ... then 8 MiB; past what it wants, the front goes on where it was.
    let (_, r, _) = plan
        .take_wanting(std::slice::from_ref(&ahead), true)
        .expect("ahead");
    assert_eq!(r, 8 * M..12 * M);
    let (_, r, _) = plan.take_wanting(&[ahead], true).expect("front");
    assert_eq!(r, 12 * M..16 * M);
}

#[test]
fn a_stalled_reader_cuts_the_lease_that_holds_its_offset_once_past_what_was_reserved() {
    const M: u64 = 1 << 20;
    let mut plan = Plan::new(8 * M, 0, 2, Some(8 * M)).without_splits();
    let (slow, r, _) = plan.take().expect("the whole file");
    assert_eq!(r, 0..8 * M);
    assert_eq!(plan.reserve(slow, 0, M), M);
    // Not stalled yet, or asked ahead of time: nothing to hand out (no splits).
    assert!(
        plan.take_wanting(&[Want::at(5 * M + 7, false)], true)
            .is_none()
    );
    assert!(plan.take_ahead(&[Want::at(5 * M + 7, true)]).is_none());
    // Stalled: the lease is cut on the MiB boundary below the reader.
    let (_, r, origin) = plan
        .take_wanting(&[Want::at(5 * M + 7, true)], true)
        .expect("the cut rest");
    assert_eq!((r, origin), (5 * M..8 * M, LeaseOrigin::Split));
    assert_eq!(plan.end_of(slow), 5 * M);
    // The new lease starts at the reader: it is not cut again for the same reader.
    assert!(
        plan.take_wanting(&[Want::at(5 * M + 7, true)], true)
            .is_none()
    );
    // Inside what the slow holder reserved, nothing is cut: those bytes are being read.
    assert_eq!(plan.reserve(slow, M, M / 2), M / 2);
    assert!(
        plan.take_wanting(&[Want::at(M + M / 4, true)], true)
            .is_none()
    );
    // Just past it, the cut is at the offset itself, not below what was reserved.
    let (_, r, _) = plan
        .take_wanting(&[Want::at(M + M / 2 + 10, true)], true)
        .expect("cut past the reservation");
    assert_eq!(r, M + M / 2 + 10..5 * M);
    assert_eq!(plan.end_of(slow), M + M / 2 + 10);
}
