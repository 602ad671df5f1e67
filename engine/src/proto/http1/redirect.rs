//! The one redirect policy every client in ferry follows (the data plane, `ferry ping`, the Hub
//! API): at most [`MAX_REDIRECTS`] in a row, only to `http://` and `https://`, and never from a
//! public address into a private one (loopback, RFC 1918, link-local such as the cloud metadata
//! address 169.254.169.254, unique-local IPv6, CGNAT) unless the caller allows it.
//!
//! Sans-IO: the caller resolves names and says whether each end is private. Not here: which
//! credentials follow a redirect (the caller's: only to the same origin).
#![forbid(unsafe_code)]

use std::net::IpAddr;

use super::ResponseHead;

/// Redirects followed in a row before giving up (a loop ends here).
pub(crate) const MAX_REDIRECTS: usize = 10;

/// Where the `count`-th redirect in a row (from 1), answered by `head` to a request for `from`,
/// leads; or why it is not followed.
pub(crate) fn next_location(
    from: &url::Url,
    head: &ResponseHead,
    count: usize,
) -> Result<url::Url, String> {
    if count > MAX_REDIRECTS {
        return Err(format!(
            "more than {MAX_REDIRECTS} redirects in a row (a loop?)"
        ));
    }
    let location = head
        .header("location")
        .ok_or_else(|| format!("{} redirect without a Location", head.status))?;
    let next = from
        .join(location)
        .map_err(|e| format!("bad Location {location:?}: {e}"))?;
    match next.scheme() {
        "http" | "https" => Ok(next),
        other => Err(format!(
            "redirect to a {other}: URL refused: ferry follows redirects to http:// and https:// only"
        )),
    }
}

/// Refuses a redirect from a public address into a private one, unless `allow`.
pub(crate) fn check_private(
    from_private: bool,
    to: &url::Url,
    to_private: bool,
    allow: bool,
) -> Result<(), String> {
    if to_private && !from_private && !allow {
        return Err(format!(
            "redirect from a public address to {} (a private, loopback or link-local address) \
             refused; pass --allow-private-redirects to follow it",
            to.host_str().unwrap_or("?")
        ));
    }
    Ok(())
}

/// Whether `ip` is not a public address: loopback, private (RFC 1918, unique-local), link-local,
/// shared (CGNAT, RFC 6598), unspecified, or an IPv4-mapped address of one of those.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Whether a URL's host names a private address by itself: an IP literal that
/// [`is_private`], or `localhost`. A name is judged by what it resolves to, by the caller.
pub(crate) fn host_is_private(url: &url::Url) -> Option<bool> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(is_private(ip.into())),
        url::Host::Ipv6(ip) => Some(is_private(ip.into())),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            (d == "localhost" || d.ends_with(".localhost")).then_some(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(location: &str) -> ResponseHead {
        let raw = format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\n\r\n");
        super::super::parse_head(raw.as_bytes())
            .expect("valid")
            .expect("complete")
            .0
    }

    #[test]
    fn only_http_and_https_and_a_bounded_count() {
        let from = url::Url::parse("https://hub.example/a/b").expect("url");
        assert_eq!(
            next_location(&from, &head("/c"), 1)
                .expect("relative")
                .as_str(),
            "https://hub.example/c"
        );
        assert!(next_location(&from, &head("http://cdn.example/x"), 10).is_ok());
        assert!(
            next_location(&from, &head("/c"), 11)
                .expect_err("an 11th redirect")
                .contains("more than 10")
        );
        for bad in ["file:///etc/passwd", "ftp://x/y", "gopher://x/"] {
            let e = next_location(&from, &head(bad), 1).expect_err(bad);
            assert!(e.contains("refused"), "{e}");
        }
    }

    #[test]
    fn private_addresses_are_told_from_public_ones() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(private.parse().expect("ip")), "{private}");
        }
        for public in ["203.0.113.5", "8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_private(public.parse().expect("ip")), "{public}");
        }
        let url = |s: &str| url::Url::parse(s).expect("url");
        assert_eq!(host_is_private(&url("http://169.254.169.254/")), Some(true));
        assert_eq!(host_is_private(&url("http://localhost:8080/")), Some(true));
        assert_eq!(host_is_private(&url("http://[2001:db8::1]/")), Some(false));
        assert_eq!(host_is_private(&url("http://cdn.example/")), None);
        let to = url("http://169.254.169.254/latest");
        assert!(check_private(false, &to, true, false).is_err());
        assert!(check_private(false, &to, true, true).is_ok(), "allowed");
        assert!(
            check_private(true, &to, true, false).is_ok(),
            "private to private"
        );
    }
}
