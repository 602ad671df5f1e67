use super::*;
use crate::net::Dialer;
use crate::net::target::Resolver;

fn target(url: &str) -> Target {
    Target::new(url, &mut Resolver::new(Dialer::default())).expect("target")
}

#[test]
fn a_request_is_the_http1_one_as_pseudo_headers() {
    let t = target("https://user:secret@127.0.0.1:8443/org/m/resolve/main/a%20b.bin?x=1");
    let req = request(&t, Some(100..200)).expect("request");
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(req.uri().scheme_str(), Some("https"));
    assert_eq!(
        req.uri().authority().map(|a| a.as_str()),
        Some("127.0.0.1:8443")
    );
    assert_eq!(
        req.uri().path_and_query().map(|p| p.as_str()),
        Some("/org/m/resolve/main/a%20b.bin?x=1")
    );
    let h = req.headers();
    assert_eq!(h["range"], "bytes=100-199");
    assert_eq!(h["accept-encoding"], "identity");
    assert!(
        h["authorization"]
            .to_str()
            .expect("ascii")
            .starts_with("Basic ")
    );
    // A whole file: no Range.
    let whole = request(&target("https://127.0.0.1/f"), None).expect("request");
    assert!(whole.headers().get("range").is_none());
    assert!(whole.headers().get("authorization").is_none());
}

#[test]
fn requests_ahead_never_pass_the_connection_window() {
    let window = 8 << 20;
    // Alone, any size (a whole file counts as a window).
    assert!(fits(0, window, window));
    assert!(fits(0, 4 * window, window));
    // Behind others, only while the total fits.
    assert!(fits(4 << 20, 4 << 20, window));
    assert!(!fits(4 << 20, (4 << 20) + 1, window));
    assert!(!fits(1, window, window));
    assert!(!fits(u64::MAX, 1, window));
}

#[test]
fn h2_errors_read_as_the_io_errors_of_a_connection() {
    let reset = to_io(h2::Error::from(h2::Reason::INTERNAL_ERROR));
    assert_eq!(reset.kind(), io::ErrorKind::ConnectionReset);
    assert!(reset.to_string().contains("HTTP/2"), "{reset}");
    // A refused stream was not processed; a stream reset for an internal error may have been.
    assert!(unprocessed(&h2::Error::from(h2::Reason::REFUSED_STREAM)));
    assert!(!unprocessed(&h2::Error::from(h2::Reason::INTERNAL_ERROR)));
}
