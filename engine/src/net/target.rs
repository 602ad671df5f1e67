//! Where a file's bytes come from: a checked URL and what its requests need (resolved
//! addresses, the route through a proxy, the TLS name), the credentials that go with it
//! ([`Secret`], never shown), and the redirect step that turns one target into the next under
//! the one policy of [`crate::proto::http1::redirect`].
//!
//! Invariants: a URL's `user:password@` becomes its `Authorization` and leaves the URL, so no
//! message can show it; a credential follows a redirect only to the same origin. Not here:
//! sending requests (`download/conn.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use url::Url;

use crate::error::GetError;
use crate::net::{Dialer, Route};
use crate::proto::http1::ResponseHead;

/// Host names resolved once per job, `(host, port)` -> addresses, and the TLS trust that
/// `https://` targets (also those redirected to) connect with.
#[derive(Debug, Default)]
pub(crate) struct Resolver {
    addrs: HashMap<(String, u16), Vec<SocketAddr>>,
    dialer: Dialer,
}

impl Resolver {
    pub(crate) fn new(dialer: Dialer) -> Resolver {
        Resolver {
            addrs: HashMap::new(),
            dialer,
        }
    }

    /// The addresses of `host:port`, resolved once.
    fn lookup(&mut self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GetError> {
        let key = (host.to_owned(), port);
        if let Some(a) = self.addrs.get(&key) {
            return Ok(a.clone());
        }
        let a = crate::net::resolve(host, port)?;
        self.addrs.insert(key, a.clone());
        Ok(a)
    }
}

/// Where the bytes come from: a parsed URL and what the requests need.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub url: Url,
    pub display: String,
    pub addrs: Vec<SocketAddr>,
    pub host_header: String,
    pub request_target: String,
    /// The `Authorization` header value, sent to this URL's origin only: a redirect to another
    /// scheme, host or port drops it.
    pub authorization: Option<Secret>,
    /// For `https://`: the host name the certificate must be valid for (also sent as SNI).
    pub tls_host: Option<String>,
    /// Through a proxy or not; `addrs` are the proxy's when it is.
    pub route: Route,
    /// The `Proxy-Authorization` value, sent on each request to a forwarding HTTP proxy.
    pub proxy_authorization: Option<Secret>,
    /// Only these bytes of the resource are the file ([`Target::wire_range`]); kept across
    /// redirects.
    pub window: Option<Range<u64>>,
    /// `If-Range` of the request: the `ETag` earlier bytes of the file came with (a resumed
    /// file without a digest); kept across redirects.
    pub if_range: Option<String>,
    /// The trust and proxies connections to this target (and its redirects) use.
    pub dialer: Dialer,
}

/// A credential (an `Authorization` header value): its `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Secret(Arc<str>);

impl Secret {
    /// The `Authorization` value for a bearer token.
    pub(crate) fn bearer(token: &str) -> Secret {
        Secret(format!("Bearer {token}").into())
    }

    /// The `Authorization` value for a user name and password (`Basic`, RFC 7617).
    pub(crate) fn basic(user: &str, password: &str) -> Secret {
        use base64::Engine;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Secret(format!("Basic {pair}").into())
    }

    /// Refuses a credential that cannot be sent as a header value: a control character (CR or
    /// LF would start another header), a byte outside printable ASCII, or surrounding space.
    /// The message never shows the credential.
    pub(crate) fn check(&self) -> Result<(), String> {
        let value = self.0.split_once(' ').map_or(&*self.0, |(_, v)| v);
        if value.is_empty() {
            return Err("the token is empty".into());
        }
        if let Some(at) = value.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(format!(
                "the token holds a byte that cannot go in an HTTP header (a control character, \
                 space or non-ASCII byte at position {at}); refused"
            ));
        }
        Ok(())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

/// Takes the `user:password@` out of `url`, as the `Authorization: Basic` value it stands for.
pub(crate) fn take_credentials(url: &mut Url) -> Option<Secret> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let secret = Secret::basic(
        &decode(url.username()),
        &decode(url.password().unwrap_or("")),
    );
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Some(secret)
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Target {
    /// Checks the URL and resolves its host (once per job: `resolved` keeps the answers).
    pub(crate) fn new(url: &str, resolved: &mut Resolver) -> Result<Target, GetError> {
        let parsed = Url::parse(url).map_err(|e| GetError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        Target::from_url(parsed, resolved)
    }

    fn from_url(mut url: Url, resolved: &mut Resolver) -> Result<Target, GetError> {
        // Credentials in the URL become `Authorization: Basic` and leave the URL, so that no
        // message, log line or report can show them.
        let credentials = take_credentials(&mut url);
        let display = url.to_string();
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(GetError::UnsupportedScheme {
                    scheme: other.to_owned(),
                    url: display,
                });
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| GetError::InvalidUrl {
                url: display.clone(),
                reason: "no host".into(),
            })?
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let (host_header, origin_form) = crate::proto::http1::host_and_target(&url);
        let proxies = Arc::clone(&resolved.dialer.proxies);
        let route = Route::for_url(&proxies, &url, bare_host, port, || {
            resolved.lookup(bare_host, port).map(|a| a[0])
        })?;
        let addrs = match route.proxy() {
            Some(proxy) => resolved.lookup(&proxy.host, proxy.port)?,
            None => resolved.lookup(bare_host, port)?,
        };
        let request_target = route.request_target(&url, origin_form);
        let proxy_authorization = route.proxy_authorization().map(|a| Secret(a.into()));
        let tls_host = https.then(|| bare_host.to_owned());
        Ok(Target {
            url,
            display,
            addrs,
            host_header,
            request_target,
            authorization: credentials,
            tls_host,
            route,
            proxy_authorization,
            window: None,
            if_range: None,
            dialer: resolved.dialer.clone(),
        })
    }

    /// The range to ask the server for, for `range` of the file: the same, unless the file is
    /// a window of the resource, where it moves by the window's start and ends at the window's
    /// end at the latest, as a range asked past a file's end ends at the file's (the whole file
    /// is the whole window).
    pub(crate) fn wire_range(&self, range: Option<Range<u64>>) -> Option<Range<u64>> {
        match (&self.window, range) {
            (None, range) => range,
            (Some(w), None) => Some(w.clone()),
            (Some(w), Some(r)) => {
                Some((w.start + r.start).min(w.end)..w.start.saturating_add(r.end).min(w.end))
            }
        }
    }

    /// An answer as the file's checks see it: for a window, a 206's `Content-Range` moved back
    /// by the window's start, the window's length as the total. A 200 (the whole resource),
    /// and a range outside the window or a resource shorter than it, are errors.
    pub(crate) fn answer_for_file(&self, mut head: ResponseHead) -> Result<ResponseHead, GetError> {
        use crate::proto::http1::{ContentRange, parse_content_range};
        let Some(w) = &self.window else {
            return Ok(head);
        };
        match head.status {
            200 => Err(GetError::RangesUnsupported {
                url: self.display.clone(),
                first: w.start,
                last: w.end.saturating_sub(1),
            }),
            206 => {
                let raw = head.header("content-range").unwrap_or("").to_owned();
                let Some(ContentRange::Satisfied { first, last, total }) =
                    parse_content_range(&raw)
                else {
                    // Left for the file's checks to refuse.
                    return Ok(head);
                };
                if first < w.start || last >= w.end {
                    // As any answer for another range than the one asked: asked again.
                    return Err(GetError::ContentRangeMismatch {
                        url: self.display.clone(),
                        asked_first: w.start,
                        asked_last: w.end - 1,
                        got: raw,
                    });
                }
                if let Some(t) = total
                    && t < w.end
                {
                    return Err(GetError::Protocol {
                        url: self.display.clone(),
                        detail: format!(
                            "the resource has {t} bytes, fewer than its byte range {}-{} needs",
                            w.start,
                            w.end - 1
                        ),
                    });
                }
                let len = w.end - w.start;
                let total = total.map_or("*".to_string(), |_| len.to_string());
                head.set_header(
                    "content-range",
                    format!("bytes {}-{}/{total}", first - w.start, last - w.start),
                );
                Ok(head)
            }
            _ => Ok(head),
        }
    }
}

impl Target {
    /// Whether this target is a private address (loopback, RFC 1918, link-local, ...): by its
    /// host when that is an IP literal or `localhost`, else by every address the name resolved
    /// to (through a proxy, where ferry does not resolve it, a name counts as public).
    fn is_private(&self) -> bool {
        if let Some(private) = crate::proto::http1::redirect::host_is_private(&self.url) {
            return private;
        }
        self.route.proxy().is_none()
            && !self.addrs.is_empty()
            && self
                .addrs
                .iter()
                .all(|a| crate::proto::http1::redirect::is_private(a.ip()))
    }
}

pub(crate) fn redirect_target(
    from: &Target,
    head: &ResponseHead,
    count: usize,
    resolved: &mut Resolver,
) -> Result<Target, GetError> {
    use crate::proto::http1::redirect;
    let err = |detail: String| GetError::Redirect {
        url: from.display.clone(),
        detail,
    };
    let next = redirect::next_location(&from.url, head, count).map_err(err)?;
    let mut next = Target::from_url(next, resolved)?;
    redirect::check_private(
        from.is_private(),
        &next.url,
        next.is_private(),
        from.dialer.allow_private_redirects,
    )
    .map_err(err)?;
    // A credential goes to the origin it was given for, never to a CDN another host names.
    if next.url.origin() == from.url.origin() {
        next.authorization = from.authorization.clone();
    }
    next.window = from.window.clone();
    next.if_range = from.if_range.clone();
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(w: Range<u64>) -> Target {
        let mut t = Target::new(
            "http://127.0.0.1:9/all.ts",
            &mut Resolver::new(Dialer::default()),
        )
        .expect("target");
        t.window = Some(w);
        t
    }

    fn head(status: u16, range: &str) -> ResponseHead {
        ResponseHead::from_parts(status, vec![("content-range".into(), range.into())])
    }

    #[test]
    fn a_window_asks_inside_itself_and_reads_answers_as_the_whole_file() {
        let t = window(100..150);
        assert_eq!(t.wire_range(None), Some(100..150));
        assert_eq!(t.wire_range(Some(0..4 << 20)), Some(100..150), "clamped");
        assert_eq!(t.wire_range(Some(10..20)), Some(110..120));
        let h = t
            .answer_for_file(head(206, "bytes 110-119/1000"))
            .expect("inside");
        assert_eq!(h.header("content-range"), Some("bytes 10-19/50"));
        let h = t
            .answer_for_file(head(206, "bytes 100-149/*"))
            .expect("unknown total");
        assert_eq!(h.header("content-range"), Some("bytes 0-49/*"));
        // Outside the window: asked again, as any answer for another range.
        for outside in ["bytes 90-149/1000", "bytes 100-150/1000"] {
            assert!(matches!(
                t.answer_for_file(head(206, outside)),
                Err(GetError::ContentRangeMismatch { .. })
            ));
        }
        // A resource shorter than the window, and the whole resource: refused.
        assert!(t.answer_for_file(head(206, "bytes 100-139/140")).is_err());
        assert!(matches!(
            t.answer_for_file(head(200, "")),
            Err(GetError::RangesUnsupported {
                first: 100,
                last: 149,
                ..
            })
        ));
        // Other answers are the file's checks' to judge; no window changes nothing.
        assert_eq!(
            t.answer_for_file(head(404, "x")).map(|h| h.status).ok(),
            Some(404)
        );
        let plain = Target::new(
            "http://127.0.0.1:9/a",
            &mut Resolver::new(Dialer::default()),
        )
        .expect("target");
        assert_eq!(plain.wire_range(Some(1..2)), Some(1..2));
        let h = plain
            .answer_for_file(head(206, "bytes 1-1/9"))
            .expect("as is");
        assert_eq!(h.header("content-range"), Some("bytes 1-1/9"));
    }
}
