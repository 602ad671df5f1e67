//! What is retried and what fails at once, in one table for the Hub API client and the data
//! plane alike, and how long to wait before the next try.
//!
//! | failure | verdict | wait |
//! |---|---|---|
//! | connection reset or refused, a timeout, a stalled body, a short body | retry | backoff |
//! | a range answered `200` with the whole file (a node that ignores `Range`) | retry | backoff |
//! | a `206` for another range than the one asked (a wrong `Content-Range`) | retry | backoff |
//! | 408, 500, 502, 503, 504 | retry | `Retry-After`, else backoff |
//! | 429 | retry | `Retry-After`, else the `t=` of `RateLimit`, else 4 x the base backoff |
//! | 400, 401, 403, 404, 416 and every other status | fail | |
//! | TLS (a certificate that does not verify), a proxy's refusal | fail | |
//! | a malformed answer, a size that changed, a redirect loop | fail | |
//! | a local error (I/O, permissions), a bad URL or path | fail | |
//! | a full disk | fail, after waiting for space (`download/space.rs`) | `--space-wait` |
//!
//! One exception, in the data plane: a connection refused on a file's first request fails at
//! once (nothing listens there: a wrong host or port); later, a refusal is retried (a server
//! restarting). Short bodies are fetched again at once from where they stopped.
//!
//! Backoff is exponential with full jitter (the caller passes the randomness in): a uniformly random wait below `250 ms x 2^(n-1)`,
//! capped at 20 s. Retries are bounded by the caller (attempts per API request, retries per
//! file in the data plane) and logged as warnings, so they show. A wrong sha256 is not here: the
//! data plane fetches the file once more by itself (`download/settle.rs`).
//!
//! This module decides; it does not sleep or count.

use std::time::Duration;

use crate::error::GetError;
use crate::proto::http1::ResponseHead;

/// The first backoff; doubled per retry, then full jitter.
pub(crate) const BACKOFF: Duration = Duration::from_millis(250);
/// The longest backoff.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(20);
/// The longest wait a server may ask for (`Retry-After`); longer is treated as a refusal.
pub(crate) const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try again after `wait` (as the server asked), or after a backoff when `None`.
    Retry { wait: Option<Duration> },
    /// Give up with this error.
    Fail,
}

/// The statuses worth asking again for, later: the server is busy, overloaded or rate
/// limiting. Everything else, 4xx above all, fails at once with its cause.
pub(crate) fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// The verdict on an answer's status.
pub(crate) fn for_status(head: &ResponseHead) -> Verdict {
    match head.status {
        429 => Verdict::Retry {
            wait: Some(rate_limit_wait(head).unwrap_or(BACKOFF * 4)),
        },
        s if retryable_status(s) => Verdict::Retry {
            wait: head.header("retry-after").and_then(parse_seconds),
        },
        _ => Verdict::Fail,
    }
}

/// The verdict on a data-plane error.
pub(crate) fn for_error(e: &GetError) -> Verdict {
    match e {
        GetError::Status {
            status,
            retry_after,
            ..
        } if retryable_status(*status) => Verdict::Retry { wait: *retry_after },
        GetError::Connect { .. }
        | GetError::Network { .. }
        | GetError::ShortBody { .. }
        | GetError::RangeIgnored { .. }
        | GetError::ContentRangeMismatch { .. } => Verdict::Retry { wait: None },
        _ => Verdict::Fail,
    }
}

/// The wait a server asks for before the next request: `Retry-After: <seconds>`, or for a 429
/// the `t=` of `RateLimit: "api";r=0;t=55`.
pub(crate) fn asked_wait(head: &ResponseHead) -> Option<Duration> {
    match for_status(head) {
        Verdict::Retry { wait } => wait,
        Verdict::Fail => None,
    }
}

fn rate_limit_wait(head: &ResponseHead) -> Option<Duration> {
    if let Some(s) = head.header("retry-after").and_then(parse_seconds) {
        return Some(s);
    }
    let rl = head.header("ratelimit")?;
    rl.split(';')
        .filter_map(|p| p.trim().strip_prefix("t="))
        .find_map(parse_seconds)
}

fn parse_seconds(s: &str) -> Option<Duration> {
    s.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Exponential backoff with full jitter for the `attempt`-th retry (from 1): `jitter` (uniform
/// in `[0, 1)`, the caller's randomness) of `BACKOFF * 2^(attempt-1)`, at most [`BACKOFF_MAX`].
pub(crate) fn backoff(attempt: u32, jitter: f64) -> Duration {
    let cap = BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    cap.mul_f64(jitter.clamp(0.0, 1.0))
        .max(Duration::from_millis(10))
}

/// The wait before retry number `attempt`: what the server asked for (at most
/// [`RETRY_AFTER_MAX`]), else a backoff. `None`: the server asked for longer than that.
pub(crate) fn wait_for(attempt: u32, asked: Option<Duration>, jitter: f64) -> Option<Duration> {
    match asked {
        Some(w) if w > RETRY_AFTER_MAX => None,
        Some(w) => Some(w),
        None => Some(backoff(attempt, jitter)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http1::parse_head;

    fn head(text: &str) -> ResponseHead {
        parse_head(text.as_bytes())
            .expect("valid")
            .expect("complete")
            .0
    }

    #[test]
    fn the_table() {
        let h = head("HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\n\r\n");
        assert_eq!(asked_wait(&h), Some(Duration::from_secs(7)));
        let h = head("HTTP/1.1 429 Too Many\r\nRateLimit: \"api\";r=0;t=55\r\n\r\n");
        assert_eq!(asked_wait(&h), Some(Duration::from_secs(55)));
        let h = head("HTTP/1.1 429 Too Many\r\n\r\n");
        assert_eq!(asked_wait(&h), Some(BACKOFF * 4));
        let h = head("HTTP/1.1 503 Busy\r\n\r\n");
        assert_eq!(
            for_status(&h),
            Verdict::Retry { wait: None },
            "5xx: backoff"
        );
        let h = head("HTTP/1.1 503 Busy\r\nRetry-After: 2\r\n\r\n");
        assert_eq!(asked_wait(&h), Some(Duration::from_secs(2)));
        for status in [408, 500, 502, 504] {
            let h = head(&format!("HTTP/1.1 {status} X\r\n\r\n"));
            assert!(matches!(for_status(&h), Verdict::Retry { .. }), "{status}");
        }
        for status in [200, 400, 401, 403, 404, 416, 451, 501] {
            let h = head(&format!("HTTP/1.1 {status} X\r\n\r\n"));
            assert_eq!(for_status(&h), Verdict::Fail, "{status} fails fast");
        }
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let retried = [
            GetError::Connect {
                addr: "a".into(),
                source: io(),
            },
            GetError::Network {
                addr: "a".into(),
                op: "read body",
                source: io(),
            },
            GetError::Status {
                url: "u".into(),
                status: 503,
                reason: "Busy".into(),
                retry_after: Some(Duration::from_secs(3)),
            },
            GetError::RangeIgnored {
                url: "u".into(),
                asked_first: 1,
                asked_last: 2,
            },
            GetError::ContentRangeMismatch {
                url: "u".into(),
                asked_first: 1,
                asked_last: 2,
                got: "bytes 2-3/10".into(),
            },
        ];
        assert_eq!(
            for_error(&retried[2]),
            Verdict::Retry {
                wait: Some(Duration::from_secs(3))
            }
        );
        for e in &retried {
            assert!(matches!(for_error(e), Verdict::Retry { .. }), "{e}");
        }
        let failed = [
            GetError::Tls {
                addr: "a".into(),
                detail: "expired".into(),
            },
            GetError::Proxy {
                detail: "407".into(),
            },
            GetError::Status {
                url: "u".into(),
                status: 404,
                reason: "Not Found".into(),
                retry_after: None,
            },
        ];
        for e in &failed {
            assert_eq!(for_error(e), Verdict::Fail, "{e}");
        }
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_a_cap() {
        for attempt in 1..40 {
            let cap = BACKOFF
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_MAX);
            for jitter in [0.0, 0.5, 0.9999] {
                let w = backoff(attempt, jitter);
                assert!(w <= cap.max(Duration::from_millis(10)), "{attempt}: {w:?}");
            }
            assert_eq!(
                backoff(attempt, 0.5),
                cap.mul_f64(0.5).max(Duration::from_millis(10))
            );
        }
        assert_eq!(
            wait_for(1, Some(Duration::from_secs(9)), 0.5),
            Some(Duration::from_secs(9))
        );
        assert_eq!(wait_for(1, Some(RETRY_AFTER_MAX * 2), 0.5), None);
    }
}
