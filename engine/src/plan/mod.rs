//! Sans-IO download planning: how a file of known size is cut into byte ranges for several
//! connections. No I/O, no clock, no `unsafe`.
//!
//! The first range is asked for before the size is known (its response tells the size), so a plan
//! starts after it. Ranges are handed out front to back, in chunks whose size keeps every
//! connection busy until near the end: about four chunks per connection, between
//! [`MIN_CHUNK`] and [`MAX_CHUNK`], rounded to a multiple of 1 MiB so ranges stay aligned for
//! O_DIRECT. Dynamic splitting of the largest remaining run and work stealing come with the data
//! plane (issue 3); this plan is the simple, correct baseline.
#![forbid(unsafe_code)]

use std::ops::Range;

/// Smallest chunk the plan hands out (except the file's tail).
pub const MIN_CHUNK: u64 = 1 << 20;
/// Largest chunk the plan hands out.
pub const MAX_CHUNK: u64 = 64 << 20;
/// The range asked for before the size is known.
pub const FIRST_CHUNK: u64 = 4 << 20;

/// Ranges of one file still to be handed out.
#[derive(Debug, Clone)]
pub(crate) struct RangePlan {
    next: u64,
    total: u64,
    chunk: u64,
}

impl RangePlan {
    /// A plan for `total` bytes whose first `done` bytes are already taken. `chunk` overrides the
    /// chunk size (tests and `--chunk-size`); otherwise it is derived from `connections`.
    pub fn new(total: u64, done: u64, connections: usize, chunk: Option<u64>) -> RangePlan {
        let chunk = chunk
            .unwrap_or_else(|| auto_chunk(total.saturating_sub(done), connections))
            .max(1);
        RangePlan {
            next: done.min(total),
            total,
            chunk,
        }
    }

    /// The next range to fetch, or `None` when everything is handed out.
    #[must_use]
    pub fn poll_range(&mut self) -> Option<Range<u64>> {
        if self.next >= self.total {
            return None;
        }
        let start = self.next;
        let end = (start + self.chunk).min(self.total);
        self.next = end;
        Some(start..end)
    }

    /// Ranges not yet handed out.
    pub fn ranges_left(&self) -> u64 {
        (self.total - self.next).div_ceil(self.chunk)
    }
}

/// About four chunks per connection over `remaining` bytes, clamped and rounded to 1 MiB.
fn auto_chunk(remaining: u64, connections: usize) -> u64 {
    let per = remaining / (connections.max(1) as u64 * 4);
    let clamped = per.clamp(MIN_CHUNK, MAX_CHUNK);
    clamped / MIN_CHUNK * MIN_CHUNK
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut p: RangePlan) -> Vec<Range<u64>> {
        std::iter::from_fn(|| p.poll_range()).collect()
    }

    #[test]
    fn ranges_tile_the_file_exactly() {
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
            let ranges = drain(RangePlan::new(total, first, 8, None));
            let mut at = first;
            for r in &ranges {
                assert_eq!(r.start, at, "total={total}: contiguous");
                assert!(r.end > r.start && r.end <= total);
                at = r.end;
            }
            assert_eq!(at, total, "total={total}: covers the whole file");
        }
    }

    #[test]
    fn chunk_size_follows_connections() {
        assert_eq!(auto_chunk(1 << 30, 8), 32 << 20);
        assert_eq!(auto_chunk(10, 8), MIN_CHUNK);
        assert_eq!(auto_chunk(1 << 40, 1), MAX_CHUNK);
        // Whole MiB, so every range but the tail starts O_DIRECT-aligned.
        assert_eq!(auto_chunk(3 * (1 << 30) + 7, 5) % MIN_CHUNK, 0);
    }

    #[test]
    fn explicit_chunk_is_honoured() {
        let plan = RangePlan::new(10, 0, 4, Some(3));
        assert_eq!(plan.ranges_left(), 4);
        let ranges = drain(plan);
        assert_eq!(ranges, vec![0..3, 3..6, 6..9, 9..10]);
    }
}
