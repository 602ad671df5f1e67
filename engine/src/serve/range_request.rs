//! The `Range` request header (RFC 9110 §14), evaluated against a file's size. No I/O.
//!
//! One byte range (`A-B`, `A-`, `-N`) is honoured: 206, or 416 when it starts at or past the end
//! (every range of a 0-byte file). A header that is not `bytes=`, that does not parse, or that
//! asks for several ranges is ignored, which the RFC allows: the answer is the whole file with
//! 200. Serving only single ranges keeps responses free of multipart bodies and of range
//! amplification (many overlapping ranges of one large file).

/// How to answer a request for a file of some size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeAnswer {
    /// 200, the whole file.
    Full,
    /// 206, bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

/// Evaluates `header` (the `Range` value, if any) for a file of `size` bytes.
pub(crate) fn evaluate(header: Option<&str>, size: u64) -> RangeAnswer {
    let Some(header) = header else {
        return RangeAnswer::Full;
    };
    let Some((unit, set)) = header.split_once('=') else {
        return RangeAnswer::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Full;
    }
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return RangeAnswer::Full;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    match (number(first), number(last)) {
        // `-N`: the last N bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || size == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start: size - n.min(size),
                    end: size - 1,
                }
            }
        }
        // `A-`.
        (Some(a), None) if last.is_empty() => {
            if a >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start: a,
                    end: size - 1,
                }
            }
        }
        // `A-B`; B < A makes the header invalid, so it is ignored.
        (Some(a), Some(b)) if a <= b => {
            if a >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start: a,
                    end: b.min(size - 1),
                }
            }
        }
        _ => RangeAnswer::Full,
    }
}

/// Decimal digits, saturating at `u64::MAX` (a huge position is simply past the end).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::RangeAnswer::{Full, Partial, Unsatisfiable};
    use super::*;

    #[test]
    fn single_ranges() {
        let p = |start, end| Partial { start, end };
        assert_eq!(evaluate(None, 10), Full);
        assert_eq!(evaluate(Some("bytes=0-0"), 10), p(0, 0));
        assert_eq!(evaluate(Some("bytes=0-0"), 1), p(0, 0));
        assert_eq!(evaluate(Some("bytes=2-5"), 10), p(2, 5));
        assert_eq!(evaluate(Some("bytes=2-500"), 10), p(2, 9));
        assert_eq!(evaluate(Some("bytes=7-"), 10), p(7, 9));
        assert_eq!(evaluate(Some("bytes=-3"), 10), p(7, 9));
        assert_eq!(evaluate(Some("bytes=-30"), 10), p(0, 9));
        assert_eq!(evaluate(Some("Bytes = 1-1"), 10), p(1, 1));
        assert_eq!(
            evaluate(Some("bytes=99999999999999999999999-"), 10),
            Unsatisfiable
        );
        assert_eq!(
            evaluate(Some("bytes=0-99999999999999999999999"), 10),
            p(0, 9)
        );
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(evaluate(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(evaluate(Some("bytes=10-20"), 10), Unsatisfiable);
        assert_eq!(evaluate(Some("bytes=-0"), 10), Unsatisfiable);
        for r in ["bytes=0-0", "bytes=0-", "bytes=-1", "bytes=5-9"] {
            assert_eq!(evaluate(Some(r), 0), Unsatisfiable, "{r}");
        }
    }

    #[test]
    fn ignored() {
        for r in [
            "items=0-1",
            "bytes",
            "bytes=",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=0-1,5-9",
            "bytes=0-1, 0-1",
            "bytes=+1-2",
        ] {
            assert_eq!(evaluate(Some(r), 10), Full, "{r}");
        }
    }
}
