//! Tests of `http`.

use super::*;
use crate::serve::date::http_date;

#[test]
fn a_window_under_the_minimum_rate_ends_the_body() {
    let mut pace = Pace::new(1000, Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(5));
    // 10 000 bytes in a few ms (under 10 s) is fast enough; the window starts over.
    pace.sent(10_000).expect("fast enough");
    std::thread::sleep(Duration::from_millis(5));
    let e = pace
        .sent(1)
        .expect_err("1 byte in 5 ms is under 1000 bytes/s");
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert_eq!(Pace::new(4 << 10, Duration::from_secs(60)).step, 256 << 10);
    assert_eq!(Pace::new(1 << 20, Duration::from_secs(1)).step, 1 << 20);
    assert_eq!(Pace::new(1 << 30, Duration::from_secs(60)).step, 2 << 20);
}

#[test]
fn heads_that_other_parsers_could_read_otherwise_are_refused() {
    for raw in [
        &b"GET / HTTP/1.1\nHost: a\n\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    ] {
        assert!(
            matches!(parse_head(raw), Parsed::Invalid(400)),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    // A body on another method is announced (answered 405, then closed), not refused here.
    let Parsed::Complete(h) =
        parse_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    else {
        panic!("complete");
    };
    assert!(h.has_body);
    let Parsed::Complete(h) = parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    else {
        panic!("complete");
    };
    assert!(!h.has_body, "an empty body is no body");
}

#[test]
fn heads() {
    let Parsed::Complete(h) = parse_head(
        b"GET /x HTTP/1.1\r\nHost: a:1\r\nRange: bytes=0-0\r\nConnection: close\r\n\r\nGET",
    ) else {
        panic!("complete");
    };
    assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/x"));
    assert_eq!(h.host.as_deref(), Some("a:1"));
    assert_eq!(h.range.as_deref(), Some("bytes=0-0"));
    assert!(h.close && !h.has_body);
    assert_eq!(h.len, 67);
    assert!(matches!(
        parse_head(b"GET /x HTTP/1.1\r\nHo"),
        Parsed::Partial
    ));
    assert!(matches!(
        parse_head(b"GET /x\x01 HTTP/1.1\r\n\r\n"),
        Parsed::Invalid(400)
    ));
    let Parsed::Complete(h) = parse_head(b"GET / HTTP/1.0\r\n\r\n") else {
        panic!("complete");
    };
    assert!(h.close, "HTTP/1.0 closes by default");
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("X-{i}: y\r\n"))
        .collect();
    let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert!(matches!(parse_head(req.as_bytes()), Parsed::Invalid(431)));
}

#[test]
fn dates() {
    let d = http_date();
    assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
}
