//! Tests of `file`.

use super::*;
use crate::proto::http1::parse_head;

const URL: &str = "http://o/f";

fn head(text: &str) -> ResponseHead {
    parse_head(text.replace('\n', "\r\n").as_bytes())
        .expect("parse")
        .expect("complete")
        .0
}

#[test]
#[allow(clippy::single_range_in_vec_init)]
fn the_first_request_starts_at_the_first_missing_byte() {
    assert_eq!(
        first_request(&[], None, Some(100)),
        FirstRequest::Range(0..100)
    );
    assert_eq!(
        first_request(&[], Some(10), None),
        FirstRequest::Range(0..FIRST_CHUNK)
    );
    assert_eq!(
        first_request(&[0..40, 60..70], Some(1000), Some(100)),
        FirstRequest::Range(40..60)
    );
    assert_eq!(
        first_request(&[0..40], Some(1000), Some(100)),
        FirstRequest::Range(40..140)
    );
    assert_eq!(
        first_request(&[0..1000], Some(1000), Some(100)),
        FirstRequest::AllOnDisk { size: 1000 }
    );
    // Without a size the resumed ranges cannot be trusted: start over.
    assert_eq!(
        first_request(&[0..40], None, Some(100)),
        FirstRequest::Range(0..100)
    );
}

/// The verdict on `text` as the first answer to `bytes=0-99`, as `download/first.rs` reaches it:
/// a 206 is checked against the range first.
fn verdict(text: &str, listed: Option<u64>, resumed: bool) -> Result<FirstAnswer, GetError> {
    let h = head(text);
    let framing = h.framing().expect("framing");
    let total = match h.status {
        206 => Some(check_partial(URL, &h, 0, 99, None)?),
        _ => None,
    };
    first_answer(URL, &h, framing, &(0..100), total, listed, resumed)
}

#[test]
fn the_first_answer_decides_ranged_stream_empty_or_refused() {
    let ranged = "HTTP/1.1 206 P\nContent-Range: bytes 0-99/1000\nContent-Length: 100\n\n";
    assert_eq!(
        verdict(ranged, None, false).expect("ok"),
        FirstAnswer::Ranged {
            total: 1000,
            first: 0..100,
            drop_resumed: false,
            whole: false
        }
    );
    assert!(matches!(
        verdict(ranged, Some(900), true),
        Err(GetError::LargerThanListed {
            listed: 900,
            stated: 1000,
            ..
        })
    ));
    // Resumed bytes of a file that now has another size are dropped.
    assert!(matches!(
        verdict(ranged, Some(2000), true),
        Ok(FirstAnswer::Ranged {
            drop_resumed: true,
            ..
        })
    ));
    // A small file comes whole in the first answer (its last byte clamped).
    let small = "HTTP/1.1 206 P\nContent-Range: bytes 0-9/10\nContent-Length: 10\n\n";
    assert_eq!(
        verdict(small, None, false).expect("ok"),
        FirstAnswer::Ranged {
            total: 10,
            first: 0..10,
            drop_resumed: false,
            whole: true
        }
    );
    // A 206 framed otherwise than its range is refused.
    let chunked = "HTTP/1.1 206 P\nContent-Range: bytes 0-9/10\nTransfer-Encoding: chunked\n\n";
    assert!(matches!(
        verdict(chunked, None, false),
        Err(GetError::Protocol { .. })
    ));
    let whole = "HTTP/1.1 200 OK\nContent-Length: 50\n\n";
    assert_eq!(
        verdict(whole, None, true).expect("ok"),
        FirstAnswer::Stream {
            length: Some(50),
            drop_resumed: true
        }
    );
    assert!(matches!(
        verdict(whole, Some(49), false),
        Err(GetError::LargerThanListed { .. })
    ));
    let empty = "HTTP/1.1 416 R\nContent-Range: bytes */0\nContent-Length: 0\n\n";
    assert_eq!(verdict(empty, None, false).expect("ok"), FirstAnswer::Empty);
    let unsatisfied = "HTTP/1.1 416 R\nContent-Range: bytes */5\nContent-Length: 0\n\n";
    let not_found = "HTTP/1.1 404 N\nContent-Length: 0\n\n";
    for text in [unsatisfied, not_found] {
        assert!(matches!(
            verdict(text, None, false),
            Err(GetError::Status { .. })
        ));
    }
}

#[test]
fn a_ranged_answer_must_name_the_range_asked() {
    let h = |cr: &str| head(&format!("HTTP/1.1 206 P\nContent-Range: {cr}\n\n"));
    assert_eq!(
        check_partial(URL, &h("bytes 10-19/100"), 10, 19, None).ok(),
        Some(100)
    );
    assert_eq!(
        check_partial(URL, &h("bytes 90-99/100"), 90, 199, None).ok(),
        Some(100)
    );
    assert_eq!(
        check_partial(URL, &h("bytes 10-19/*"), 10, 19, Some(100)).ok(),
        Some(100)
    );
    assert!(matches!(
        check_partial(URL, &h("bytes 11-19/100"), 10, 19, None),
        Err(GetError::ContentRangeMismatch { .. })
    ));
    assert!(matches!(
        check_partial(URL, &h("bytes 10-19/101"), 10, 19, Some(100)),
        Err(GetError::SizeChanged {
            first: 100,
            now: 101,
            ..
        })
    ));
    assert!(matches!(
        check_partial(URL, &h("bytes 10-19/*"), 10, 19, None),
        Err(GetError::Protocol { .. })
    ));
    let ignored = head("HTTP/1.1 200 OK\nContent-Length: 5\n\n");
    assert!(matches!(
        check_partial(URL, &ignored, 10, 19, None),
        Err(GetError::RangeIgnored { .. })
    ));
    assert!(check_length(URL, Framing::Length(10), &(10..20)).is_ok());
    assert!(check_length(URL, Framing::Length(9), &(10..20)).is_err());
}

#[test]
fn a_lease_ends_next_retry_stop_or_fail() {
    let mut plan = Plan::new(100, 0, 1, Some(100));
    let (id, range, _) = plan.take().expect("a lease");
    assert_eq!(range, 0..100);
    assert_eq!(
        lease_ended(Some(&mut plan), id, BodyOutcome::Aborted),
        Ended::Stop
    );
    assert_eq!(
        lease_ended(Some(&mut plan), id, BodyOutcome::Short { at: 40 }),
        Ended::Retry
    );
    let (id, range, _) = plan.take().expect("the rest again");
    assert_eq!(range, 40..100);
    assert_eq!(
        lease_ended(Some(&mut plan), id, BodyOutcome::Complete),
        Ended::Next
    );
    assert!(!plan.has_work());
    // Without a plan a short body cannot go back: the file fails.
    assert_eq!(
        lease_ended(None, id, BodyOutcome::Short { at: 1 }),
        Ended::Fail
    );
    // The retries run out.
    let mut plan = Plan::new(100, 0, 1, Some(100));
    let mut last = Ended::Retry;
    for _ in 0..=MAX_RETRIES + 1 {
        let Some((id, _, _)) = plan.take() else { break };
        last = lease_ended(Some(&mut plan), id, BodyOutcome::Short { at: 0 });
        if last == Ended::Fail {
            break;
        }
    }
    assert_eq!(last, Ended::Fail);
}

#[test]
fn a_stalled_lease_goes_to_another_connection_without_a_retry() {
    let mut plan = Plan::new(100, 0, 2, Some(100));
    let (id, _, _) = plan.take().expect("a lease");
    assert_eq!(
        lease_ended(Some(&mut plan), id, BodyOutcome::Stalled { at: 30 }),
        Ended::Retry
    );
    assert_eq!(plan.retries(), 0);
    let (_, range, _) = plan.take().expect("the rest, for another connection");
    assert_eq!(range, 30..100);
    assert_eq!(
        lease_ended(None, id, BodyOutcome::Stalled { at: 1 }),
        Ended::Fail
    );
}

#[test]
fn a_flow_is_stalled_after_four_round_trips_within_the_watchdog() {
    let watchdog = Duration::from_secs(30);
    let ms = Duration::from_millis;
    // Unknown or short round trips: half a second.
    assert_eq!(hedge_after(None, watchdog), HEDGE_MIN);
    assert_eq!(hedge_after(Some(ms(1)), watchdog), HEDGE_MIN);
    // Long ones: four of them.
    assert_eq!(hedge_after(Some(ms(150)), watchdog), ms(600));
    // Never past the watchdog itself.
    assert_eq!(hedge_after(Some(ms(150)), ms(300)), ms(300));
}

#[test]
fn after_a_failure_a_lane_fails_asks_another_or_waits() {
    use AfterFailure::*;
    // A refused connect with no mirror: said at once.
    assert_eq!(after_first_failure(false, true, true, 1, 1), Fail);
    assert_eq!(after_first_failure(false, false, false, 1, 1), Fail);
    assert_eq!(after_first_failure(true, true, true, 1, 2), AskOther);
    assert_eq!(after_first_failure(false, false, true, 1, 1), WaitAndRetry);
    assert_eq!(
        after_first_failure(false, false, true, MAX_RETRIES + 1, 1),
        Fail
    );
    assert_eq!(
        after_first_failure(true, false, true, 2 * MAX_RETRIES, 2),
        AskOther
    );
    let retry = Verdict::Retry { wait: None };
    assert_eq!(after_lease_failure(retry, false, true), WaitAndRetry);
    assert_eq!(after_lease_failure(retry, true, true), AskOther);
    assert_eq!(after_lease_failure(Verdict::Fail, true, true), AskOther);
    assert_eq!(after_lease_failure(Verdict::Fail, false, true), Fail);
    assert_eq!(after_lease_failure(retry, true, false), Fail);
}

#[test]
fn a_settled_file_is_published_kept_left_or_discarded() {
    let busy = GetError::OutputBusy { path: "x".into() };
    let mismatch = GetError::ChecksumMismatch {
        url: URL.into(),
        algorithm: crate::verify::HashAlgorithm::Sha256,
        expected: "a".into(),
        got: "b".into(),
        attempts: 2,
    };
    let short = || GetError::ShortBody {
        url: URL.into(),
        offset: 0,
        expected: 2,
        received: 1,
    };
    assert_eq!(partial_fate(&Ok(()), true), PartialFate::Published);
    assert_eq!(
        partial_fate::<()>(&Err(busy), true),
        PartialFate::LeaveAlone
    );
    assert_eq!(
        partial_fate::<()>(&Err(mismatch), true),
        PartialFate::Discard
    );
    assert_eq!(
        partial_fate::<()>(&Err(short()), true),
        PartialFate::KeepForResume
    );
    assert_eq!(
        partial_fate::<()>(&Err(short()), false),
        PartialFate::Discard
    );
    assert_eq!(on_mismatch(1), OnMismatch::FetchAgain);
    assert_eq!(on_mismatch(MAX_FETCHES), OnMismatch::Fail);
}

#[test]
fn pipelining_pays_where_the_wait_for_an_answer_would_idle_the_connection() {
    let ms = Duration::from_millis;
    // 80 ms away, 4 MiB leases at 40 MB/s (0.1 s each): it pays.
    assert!(pipelining_pays(ms(80), 4 << 20, Some(40e6)));
    // 30 ms away at 100 MB/s per flow (42 ms a lease): it pays.
    assert!(pipelining_pays(ms(30), 4 << 20, Some(100e6)));
    // Loopback: 0.1 ms against 2.8 ms for a 4 MiB lease at 1.5 GB/s.
    assert!(!pipelining_pays(
        Duration::from_micros(100),
        4 << 20,
        Some(1.5e9)
    ));
    // Flows capped at 10 MB/s 80 ms away: 0.42 s a 4 MiB lease, a sixth of it idle without.
    assert!(pipelining_pays(ms(80), 4 << 20, Some(10e6)));
    // 30 ms away, 8 MiB leases at 10 MB/s: 0.84 s each, 3 % idle; not worth a full queue.
    assert!(!pipelining_pays(ms(30), 8 << 20, Some(10e6)));
    // Loopback with every worker busy: 19 ms of the client's own queueing, 70 ms a lease.
    assert!(!pipelining_pays(ms(19), 4 << 20, Some(60e6)));
    // Before the first body's rate is known, the wait alone says.
    assert!(pipelining_pays(ms(30), 4 << 20, None));
    assert!(!pipelining_pays(Duration::from_micros(300), 4 << 20, None));
    // A LAN's few milliseconds do not, however slow the bodies.
    assert!(!pipelining_pays(ms(2), 4 << 20, Some(1e6)));
}

#[test]
fn a_connection_keeps_a_round_trip_of_bytes_asked_for_ahead() {
    let rtt = Duration::from_millis(80);
    let rate = Some(25e6);
    // The first request ahead always (pipelining pays is decided before).
    assert!(one_more_ahead(rtt, None, 0, 0));
    // No rate yet: one.
    assert!(!one_more_ahead(rtt, None, 1, 1 << 20));
    // 1 MiB at 25 MB/s is 42 ms, less than the round trip: another; 2 MiB is 84 ms: enough.
    assert!(one_more_ahead(rtt, rate, 1, 1 << 20));
    assert!(!one_more_ahead(rtt, rate, 2, 2 << 20));
    // 4 MiB leases cover a round trip with one.
    assert!(!one_more_ahead(rtt, rate, 1, 4 << 20));
    // Never more than MAX_AHEAD, however fast.
    assert!(one_more_ahead(rtt, Some(1e9), MAX_AHEAD - 1, 4 << 20));
    assert!(!one_more_ahead(rtt, Some(1e9), MAX_AHEAD, 4 << 20));
}

#[test]
fn only_fresh_files_that_come_whole_are_asked_for_ahead() {
    // Small, or of unknown size: the first chunk, as the file's own first request asks.
    assert_eq!(
        first_ahead(Some(40 << 10), None, false),
        Some(0..FIRST_CHUNK)
    );
    assert_eq!(first_ahead(None, None, false), Some(0..FIRST_CHUNK));
    assert_eq!(
        first_ahead(Some(FIRST_CHUNK), None, false),
        Some(0..FIRST_CHUNK)
    );
    assert_eq!(
        first_ahead(Some(10), Some(1 << 20), false),
        Some(0..1 << 20)
    );
    // Known to be larger: it takes the lane's connection for its ranges.
    assert_eq!(first_ahead(Some(FIRST_CHUNK + 1), None, false), None);
    // A fetch begun before: its first request depends on what is on disk.
    assert_eq!(first_ahead(Some(10), None, true), None);
}

#[test]
fn a_lane_pipelines_only_where_everything_allows_it() {
    assert!(may_pipeline(true, true, true));
    assert!(!may_pipeline(false, true, true), "turned off");
    assert!(
        !may_pipeline(true, false, true),
        "the connection closes after this answer"
    );
    assert!(
        !may_pipeline(true, true, false),
        "the endpoint closed one with a request unanswered"
    );
}

#[test]
fn an_answer_with_an_encoding_or_a_failing_status_is_refused_before_its_range() {
    let ok = head("HTTP/1.1 206 P\nContent-Range: bytes 0-9/10\nContent-Length: 10\n\n");
    assert!(check_answer(URL, &ok).is_ok());
    let gzip = head("HTTP/1.1 206 P\nContent-Encoding: gzip\nContent-Length: 10\n\n");
    assert!(matches!(
        check_answer(URL, &gzip),
        Err(GetError::Protocol { .. })
    ));
    let identity = head("HTTP/1.1 200 OK\nContent-Encoding: identity\nContent-Length: 1\n\n");
    assert!(check_answer(URL, &identity).is_ok());
    for status in ["503 U", "404 N", "429 T"] {
        let h = head(&format!("HTTP/1.1 {status}\nContent-Length: 0\n\n"));
        assert!(
            matches!(check_answer(URL, &h), Err(GetError::Status { .. })),
            "{status}"
        );
    }
    let empty = head("HTTP/1.1 416 R\nContent-Range: bytes */0\nContent-Length: 0\n\n");
    assert!(
        check_answer(URL, &empty).is_ok(),
        "416 is judged by the caller"
    );
}
