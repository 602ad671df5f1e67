//! Sans-IO HTTP/1.1 client codec: request writer, response head parser (on httparse), body
//! framing, `Content-Range` parsing and a chunked-transfer decoder.
//!
//! Nothing here touches a socket or a clock; the connection code in `download/` feeds bytes in and
//! acts on what comes out, so every rule here is unit-tested and can be fuzzed. It does not follow
//! redirects, retry, or decide what a status means for a download: that is the caller's policy.
#![forbid(unsafe_code)]

pub(crate) mod chunked;
pub(crate) mod range;
pub(crate) mod redirect;

use std::ops::Range;

pub(crate) use chunked::{ChunkError, ChunkedDecoder};
pub(crate) use range::{ContentRange, parse_content_range};

/// Upper bound on a response head; a server that sends more is refused, not buffered.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Upper bound on the number of response headers.
pub(crate) const MAX_HEADERS: usize = 96;

/// A response head, with header names lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    pub status: u16,
    pub reason: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor_version: u8,
    headers: Vec<(String, String)>,
}

/// Why a response head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// The head is not valid HTTP/1.x (httparse's verdict).
    Malformed(String),
    /// More than [`MAX_HEAD_BYTES`] without the blank line that ends a head.
    TooLarge,
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// `Content-Length` that is not a number, or several that disagree.
    BadContentLength(String),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Malformed(why) => write!(f, "malformed response head: {why}"),
            HeadError::TooLarge => write!(f, "response head larger than {MAX_HEAD_BYTES} bytes"),
            HeadError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} response headers"),
            HeadError::BadContentLength(v) => write!(f, "invalid Content-Length {v:?}"),
        }
    }
}

/// How the end of a response body is found (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// Parses a response head from the start of `buf`. `Ok(None)` means "need more bytes"; on
/// success it returns the head and its length, so `buf[len..]` is the start of the body.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            if len > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            let head = ResponseHead {
                status: resp.code.unwrap_or(0),
                reason: resp.reason.unwrap_or("").to_owned(),
                minor_version: resp.version.unwrap_or(1),
                headers: resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

impl ResponseHead {
    /// A head from a protocol other than HTTP/1.1 (an HTTP/2 answer): its status and headers,
    /// names in lower case, so the same checks (`proto/file.rs`) judge it. No reason phrase;
    /// `minor_version` 1, as the connection is kept.
    pub(crate) fn from_parts(status: u16, headers: Vec<(String, String)>) -> ResponseHead {
        ResponseHead {
            status,
            reason: String::new(),
            minor_version: 1,
            headers,
        }
    }

    /// Replaces every field `name` (give it in lower case) by one with `value`.
    pub(crate) fn set_header(&mut self, name: &str, value: String) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value));
    }

    /// The first value of header `name` (give it in lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
    }

    fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Content-Length`, checked: several values must agree (RFC 9110 section 8.6).
    pub(crate) fn content_length(&self) -> Result<Option<u64>, HeadError> {
        let mut found: Option<u64> = None;
        for value in self.headers_named("content-length") {
            for part in value.split(',') {
                let part = part.trim();
                let n: u64 = part
                    .parse()
                    .map_err(|_| HeadError::BadContentLength(value.to_owned()))?;
                if found.is_some_and(|f| f != n) {
                    return Err(HeadError::BadContentLength(value.to_owned()));
                }
                found = Some(n);
            }
        }
        Ok(found)
    }

    /// True when the last transfer coding is `chunked`.
    pub(crate) fn is_chunked(&self) -> bool {
        self.headers_named("transfer-encoding")
            .flat_map(|v| v.split(','))
            .last()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
    }

    /// How this response's body ends.
    pub(crate) fn framing(&self) -> Result<Framing, HeadError> {
        if matches!(self.status, 100..=199 | 204 | 304) {
            return Ok(Framing::Length(0));
        }
        if self.is_chunked() {
            return Ok(Framing::Chunked);
        }
        Ok(match self.content_length()? {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        })
    }

    /// Whether the connection may carry another request after this response.
    pub(crate) fn keep_alive(&self) -> bool {
        let tokens = || {
            self.headers_named("connection")
                .flat_map(|v| v.split(','))
                .map(str::trim)
        };
        if self.minor_version == 0 {
            tokens().any(|t| t.eq_ignore_ascii_case("keep-alive"))
        } else {
            !tokens().any(|t| t.eq_ignore_ascii_case("close"))
        }
    }
}

/// Writes a `GET` request. `target` is the origin-form path and query (`/a/b?c`), `host` the
/// `Host` header value, `range` the byte range to ask for (inclusive end is derived from it).
/// True for a status that sends the client elsewhere with `Location`.
pub(crate) fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// The `Host` header and the origin-form request target (`/path?query`) of `url`.
pub(crate) fn host_and_target(url: &url::Url) -> (String, String) {
    let host = url.host_str().unwrap_or_default();
    let host_header = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    (host_header, target)
}

/// The fields of every GET ferry sends, over HTTP/1.1 ([`get_request`]) and HTTP/2 alike:
/// ferry's identity, any type, no content coding (bodies are written as they come), the
/// origin's credentials when the target has them, and the range when one is asked.
pub(crate) fn get_fields(
    range: Option<Range<u64>>,
    authorization: Option<&str>,
    if_range: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        (
            "User-Agent",
            concat!("ferry/", env!("CARGO_PKG_VERSION")).to_owned(),
        ),
        ("Accept", "*/*".to_owned()),
        ("Accept-Encoding", "identity".to_owned()),
    ];
    if let Some(auth) = authorization {
        fields.push(("Authorization", auth.to_owned()));
    }
    if let Some(r) = range {
        debug_assert!(r.start < r.end, "empty ranges are never requested");
        fields.push(("Range", format!("bytes={}-{}", r.start, r.end - 1)));
        if let Some(tag) = if_range {
            fields.push(("If-Range", tag.to_owned()));
        }
    }
    fields
}

/// An HTTP/1.1 GET of `target` at `host`: [`get_fields`], and the proxy's credentials when it
/// goes to a forwarding proxy.
pub(crate) fn get_request(
    target: &str,
    host: &str,
    range: Option<Range<u64>>,
    (authorization, proxy_authorization): (Option<&str>, Option<&str>),
    if_range: Option<&str>,
) -> Vec<u8> {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n");
    let proxy = proxy_authorization.map(|auth| ("Proxy-Authorization", auth.to_owned()));
    for (name, value) in get_fields(range, authorization, if_range)
        .into_iter()
        .chain(proxy)
    {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> ResponseHead {
        let (h, len) = parse_head(text.as_bytes())
            .expect("valid")
            .expect("complete");
        assert_eq!(len, text.len());
        h
    }

    #[test]
    fn parses_a_ranged_response() {
        let h = head(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/100\r\n\r\n",
        );
        assert_eq!(h.status, 206);
        assert_eq!(h.framing(), Ok(Framing::Length(10)));
        assert!(h.keep_alive());
        assert_eq!(h.header("content-range"), Some("bytes 0-9/100"));
    }

    #[test]
    fn partial_heads_ask_for_more() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Len"), Ok(None));
    }

    #[test]
    fn body_start_follows_the_head() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let (_, len) = parse_head(buf).expect("valid").expect("complete");
        assert_eq!(&buf[len..], b"abc");
    }

    #[test]
    fn oversized_heads_are_refused() {
        let mut buf = b"HTTP/1.1 200 OK\r\n".to_vec();
        while buf.len() < MAX_HEAD_BYTES {
            buf.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let r = parse_head(&buf);
        assert!(
            matches!(r, Err(HeadError::TooLarge | HeadError::TooManyHeaders)),
            "{r:?}"
        );
    }

    #[test]
    fn framing_rules() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing(),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\n\r\n").framing(),
            Ok(Framing::UntilClose)
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")
                .framing(),
            Ok(Framing::Chunked),
            "chunked wins over Content-Length (RFC 9112 6.3)"
        );
        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
                .framing()
                .is_err()
        );
        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n")
                .framing()
                .is_err()
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n").framing(),
            Ok(Framing::Length(7))
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive());
        assert!(head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
    }

    #[test]
    fn writes_ranged_gets() {
        let req = String::from_utf8(get_request(
            "/f?x=1",
            "h:8080",
            Some(10..20),
            (None, None),
            None,
        ))
        .expect("utf8");
        assert!(req.starts_with("GET /f?x=1 HTTP/1.1\r\nHost: h:8080\r\n"));
        assert!(req.contains("\r\nRange: bytes=10-19\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }
}
