//! Sans-IO scheduling of a job's files over its connections ("lanes"). No I/O, no clock: the job
//! asks [`next`] what a free lane should do, given what the active files still offer, and the
//! tests drive whole jobs through it deterministically.
//!
//! A lane is one kept-alive connection. Files are started in [`start_order`] (largest first, so
//! the long transfers begin early and the small files fill the gaps at the end). A started file
//! is *probing* until its first answer tells its size: a small file is then done with that one
//! request (many small files go one after another over the same connection), a large one becomes
//! *active* and other lanes join it, taking ranges from its [`Plan`](super::Plan). A free lane
//! prefers, in order: the frontier of the active file with the most left to hand out (so every
//! large file keeps all the connections it can use and its hash prefix moves in order); a file
//! not yet started; a split of a range another lane is still receiving (so the lanes finish
//! together); waiting, while a probing or active file may yet offer work; and leaving.
//!
//! Which lane pops which unstarted file (the crossbeam deques) and the locking are the job's
//! business (`download/lanes.rs`); this module only decides.
#![forbid(unsafe_code)]

/// The order in which files are started: unknown sizes first in the order given (any of them
/// may be the largest, and their first answer tells), then known sizes largest first, ties in
/// the order given.
pub(crate) fn start_order(sizes: &[Option<u64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i].unwrap_or(u64::MAX)));
    order
}

/// What an active file (one whose ranges are being fetched) offers a free lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offer {
    /// Bytes its frontier has not handed out.
    pub frontier_left: u64,
    /// True when its plan would hand out a lease now (frontier, retry or split).
    pub has_work: bool,
}

/// What a free lane does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaneStep {
    /// Join active file `i` (an index into the offers) and take ranges from it.
    Join(usize),
    /// Start a file not yet started. When the caller finds none left to pop, it asks again with
    /// `may_start` false.
    Start,
    /// Nothing to do now; a probing or active file may still offer work. Wait for a change.
    Wait,
    /// Nothing is left that this lane could do.
    Exit,
}

/// The decision for a free lane. `may_start`: files may be left to start; `probing`: files
/// started whose first answer has not come yet.
pub(crate) fn next(active: &[Offer], may_start: bool, probing: usize) -> LaneStep {
    let frontier = active
        .iter()
        .enumerate()
        .filter(|(_, o)| o.frontier_left > 0)
        .max_by_key(|&(i, o)| (o.frontier_left, std::cmp::Reverse(i)));
    if let Some((i, _)) = frontier {
        return LaneStep::Join(i);
    }
    if may_start {
        return LaneStep::Start;
    }
    if let Some(i) = active.iter().position(|o| o.has_work) {
        return LaneStep::Join(i);
    }
    if probing > 0 || !active.is_empty() {
        return LaneStep::Wait;
    }
    LaneStep::Exit
}

#[cfg(test)]
mod tests {
    use super::super::{FIRST_CHUNK, LeaseId, Plan};
    use super::*;

    #[test]
    fn unknown_sizes_first_then_largest_first() {
        let sizes = [Some(10), None, Some(100), Some(10), None, Some(0)];
        assert_eq!(start_order(&sizes), vec![1, 4, 2, 0, 3, 5]);
        assert_eq!(start_order(&[]), Vec::<usize>::new());
    }

    fn offer(frontier_left: u64, has_work: bool) -> Offer {
        Offer {
            frontier_left,
            has_work,
        }
    }

    #[test]
    fn decisions() {
        // The frontier with the most left wins, before new files.
        let a = [offer(5, true), offer(9, true), offer(0, true)];
        assert_eq!(next(&a, true, 0), LaneStep::Join(1));
        // No frontier left: new files before splits.
        let b = [offer(0, true)];
        assert_eq!(next(&b, true, 0), LaneStep::Start);
        assert_eq!(next(&b, false, 0), LaneStep::Join(0));
        // Nothing to take: wait while something may still offer work, else leave.
        let c = [offer(0, false)];
        assert_eq!(next(&c, false, 0), LaneStep::Wait);
        assert_eq!(next(&[], false, 1), LaneStep::Wait);
        assert_eq!(next(&[], false, 0), LaneStep::Exit);
        assert_eq!(next(&[], true, 0), LaneStep::Start);
    }

    /// A lane in the simulation.
    #[derive(Debug, Clone)]
    enum Lane {
        Free,
        /// Receiving `range` of `file` (lease `id`, or the first request when `None`), at `at`.
        Busy {
            file: usize,
            id: Option<LeaseId>,
            end: u64,
            at: u64,
        },
        Gone,
    }

    #[derive(Debug)]
    enum File {
        Unstarted,
        Probing,
        Active(Plan),
        Done,
    }

    /// Runs a whole job: `sizes` of files, `lanes` connections each receiving `speed` bytes a
    /// tick. Checks that every byte of every file is received exactly once, that no lane waits
    /// while work is there to take, and returns (requests, ticks, last tick each lane worked).
    fn simulate(sizes: &[u64], lanes: usize, speed: u64) -> (u64, u64, Vec<u64>) {
        let mut files: Vec<File> = sizes.iter().map(|_| File::Unstarted).collect();
        let mut queue: std::collections::VecDeque<usize> =
            start_order(&sizes.iter().map(|&s| Some(s)).collect::<Vec<_>>()).into();
        let mut got: Vec<Vec<u8>> = sizes.iter().map(|&s| vec![0; s as usize]).collect();
        let mut lane_state = vec![Lane::Free; lanes];
        let mut last_work = vec![0u64; lanes];
        let mut requests = 0;
        let mut tick = 0;
        while lane_state.iter().any(|l| !matches!(l, Lane::Gone)) {
            tick += 1;
            assert!(tick < 1_000_000, "the job does not end");
            // Free lanes decide, one after another.
            for lane in lane_state.iter_mut() {
                loop {
                    if !matches!(lane, Lane::Free) {
                        break;
                    }
                    let active: Vec<usize> = (0..files.len())
                        .filter(|&f| matches!(files[f], File::Active(_)))
                        .collect();
                    let offers: Vec<Offer> = active
                        .iter()
                        .map(|&f| match &files[f] {
                            File::Active(p) => offer(p.frontier_left(), p.has_work()),
                            _ => unreachable!(),
                        })
                        .collect();
                    let probing = files.iter().filter(|f| matches!(f, File::Probing)).count();
                    match next(&offers, !queue.is_empty(), probing) {
                        LaneStep::Join(i) => {
                            let f = active[i];
                            let File::Active(plan) = &mut files[f] else {
                                unreachable!()
                            };
                            let (id, range, _) = plan.take().expect("an offer has a lease");
                            requests += 1;
                            *lane = Lane::Busy {
                                file: f,
                                id: Some(id),
                                end: range.end,
                                at: range.start,
                            };
                        }
                        LaneStep::Start => {
                            let f = queue.pop_front().expect("may_start");
                            files[f] = File::Probing;
                            requests += 1;
                            *lane = Lane::Busy {
                                file: f,
                                id: None,
                                end: FIRST_CHUNK.min(sizes[f]),
                                at: 0,
                            };
                        }
                        LaneStep::Wait => {
                            assert!(
                                offers.iter().all(|o| !o.has_work) && queue.is_empty(),
                                "a lane waits while work is there"
                            );
                            break;
                        }
                        LaneStep::Exit => *lane = Lane::Gone,
                    }
                }
            }
            // Busy lanes receive.
            for l in 0..lanes {
                let Lane::Busy { file, end, at, .. } = lane_state[l].clone() else {
                    continue;
                };
                last_work[l] = tick;
                // A probing file becomes active (or done) once its first answer arrives, which
                // here is the first tick of its request.
                if let File::Probing = files[file] {
                    let mut plan = Plan::new(sizes[file], 0, lanes, None);
                    let first = plan.claim(0..end);
                    files[file] = File::Active(plan);
                    lane_state[l] = Lane::Busy {
                        file,
                        id: Some(first),
                        end,
                        at,
                    };
                }
                let Lane::Busy { id: Some(id), .. } = lane_state[l] else {
                    unreachable!()
                };
                let File::Active(plan) = &mut files[file] else {
                    unreachable!("receiving into a file that is not active")
                };
                let n = plan.reserve(id, at, speed);
                for b in &mut got[file][at as usize..(at + n) as usize] {
                    *b += 1;
                }
                let at = at + n;
                if n == 0 || at >= end {
                    plan.complete(id);
                    lane_state[l] = Lane::Free;
                } else {
                    lane_state[l] = Lane::Busy {
                        file,
                        id: Some(id),
                        end,
                        at,
                    };
                }
            }
            // A file is done when no lane is on it and its plan has nothing left.
            for (f, state) in files.iter_mut().enumerate() {
                let on_it = lane_state
                    .iter()
                    .any(|l| matches!(l, Lane::Busy { file, .. } if *file == f));
                if let File::Active(p) = state
                    && !on_it
                    && !p.has_work()
                {
                    *state = File::Done;
                }
            }
        }
        for (f, g) in got.iter().enumerate() {
            assert!(
                g.iter().all(|&b| b == 1),
                "file {f} ({} bytes) received exactly once",
                sizes[f]
            );
        }
        (requests, tick, last_work)
    }

    #[test]
    fn small_files_take_one_request_each() {
        let sizes: Vec<u64> = (0..500).map(|i| 4096 + (i * 997) % 60_000).collect();
        let (requests, _, _) = simulate(&sizes, 16, 64 << 10);
        assert_eq!(requests, 500, "one request per small file");
    }

    #[test]
    fn a_repo_keeps_every_lane_busy_and_they_finish_together() {
        // Four shards of 64 MiB and 200 small files over 8 lanes.
        let mut sizes = vec![64 << 20; 4];
        sizes.extend((0..200).map(|i| 1000 + i * 311));
        let speed = 1 << 20;
        let (_, ticks, last) = simulate(&sizes, 8, speed);
        // A request takes at least a tick, so a small file costs a lane a tick: the ideal is
        // every lane busy every tick. Allow a few ticks for first answers and tails.
        let lane_ticks = 4 * (64 << 20) / speed + 200;
        let ideal = lane_ticks.div_ceil(8);
        assert!(ticks <= ideal + 6, "{ticks} ticks, ideal {ideal}");
        let (min, max) = (
            last.iter().min().expect("lanes"),
            last.iter().max().expect("lanes"),
        );
        assert!(max - min <= 3, "lanes stopped working at ticks {last:?}");
    }

    #[test]
    fn one_large_file_gets_every_lane() {
        let (requests, ticks, last) = simulate(&[100 << 20], 8, 1 << 20);
        assert!(ticks <= 100 / 8 + 6, "{ticks} ticks");
        assert!(requests > 8, "{requests} requests");
        assert!(last.iter().all(|&t| t + 3 >= ticks), "{last:?}");
    }

    #[test]
    fn empty_and_tiny_files_finish() {
        let (requests, _, _) = simulate(&[0, 1, 4095, 4096, 4097, 0], 3, 1000);
        assert_eq!(requests, 6);
    }
}
