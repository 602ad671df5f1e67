//! Request targets of the Hub protocol, taken apart without I/O: which route, which raw
//! segments, and the checks a repo path must pass before it is looked up.
//!
//! Segments stay percent-encoded here; the handler decodes each piece exactly once, after it has
//! split on the literal `/`s (a revision such as `refs%2Fpr%2F1` is one segment). Knowing which
//! segments form the repo id and the revision needs the catalog, so that is left to the handler.
//! This module never touches the file system.

use percent_encoding::percent_decode_str;

use crate::hub::RepoType;

/// What a request target asks for, before the catalog is consulted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resource<'a> {
    /// `/api/{type}s/` and the raw segments after it (repo id, action, ...).
    Api { kind: RepoType, segs: Vec<&'a str> },
    /// `/{prefix}...`: the raw segments after the type prefix (repo id, `resolve`, rev, path).
    File { kind: RepoType, segs: Vec<&'a str> },
}

/// Splits a request target into its route and its query (without `?`). Absolute-form targets
/// (`http://host/path`) are reduced to their path. `None`: not a target this server knows.
pub(crate) fn parse_target(target: &str) -> Option<(Resource<'_>, &str)> {
    let target = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => &rest[rest.find('/')?..],
        None => target,
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.strip_prefix('/')?;
    let segs: Vec<&str> = path.split('/').collect();
    if segs.first() == Some(&"api") {
        let kind = RepoType::from_plural(segs.get(1)?)?;
        return Some((
            Resource::Api {
                kind,
                segs: segs[2..].to_vec(),
            },
            query,
        ));
    }
    let (kind, segs) = match segs.first() {
        Some(&"datasets") => (RepoType::Dataset, segs[1..].to_vec()),
        Some(&"spaces") => (RepoType::Space, segs[1..].to_vec()),
        _ => (RepoType::Model, segs),
    };
    Some((Resource::File { kind, segs }, query))
}

/// Percent-decodes `raw` to UTF-8; `None` when the bytes are not UTF-8.
pub(crate) fn decode(raw: &str) -> Option<String> {
    percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The repo id `segs` spell (`org/name` or `name`), each segment percent-decoded; `None` when
/// one is not UTF-8 or decodes to a `/`.
pub(crate) fn repo_id(segs: &[&str]) -> Option<String> {
    let parts: Option<Vec<String>> = segs
        .iter()
        .map(|s| decode(s).filter(|d| !d.contains('/')))
        .collect();
    Some(parts?.join("/"))
}

/// True for a relative repo path that names nothing outside its repo, by the rule `ferry pull`
/// applies to a listing ([`crate::hub::listing::stays_inside`]), at most 4 KiB long.
pub(crate) fn valid_repo_path(p: &str) -> bool {
    p.len() <= 4096 && crate::hub::listing::stays_inside(p).is_ok()
}

/// The value of query parameter `name` (decoded; `+` is a space), if present.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(&v.replace('+', " ")).unwrap_or_default())
    })
}

/// A boolean query parameter as clients send it (`true`, `True`, `1`).
pub(crate) fn query_flag(query: &str, name: &str) -> bool {
    query_param(query, name).is_some_and(|v| matches!(v.as_str(), "true" | "True" | "1"))
}

/// The `Host` header if it is a plain `host[:port]`; anything else is not echoed back.
pub(crate) fn sane_host(host: &str) -> Option<&str> {
    (!host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')))
    .then_some(host)
}

/// A header value that cannot break the response: bytes outside visible ASCII and space are
/// percent-escaped.
pub(crate) fn header_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("/api/models/org/name/revision/main?blobs=true"),
            Some((
                Resource::Api {
                    kind: RepoType::Model,
                    segs: vec!["org", "name", "revision", "main"]
                },
                "blobs=true"
            ))
        );
        assert_eq!(
            parse_target("/datasets/org/name/resolve/main/a%20b"),
            Some((
                Resource::File {
                    kind: RepoType::Dataset,
                    segs: vec!["org", "name", "resolve", "main", "a%20b"]
                },
                ""
            ))
        );
        assert_eq!(
            parse_target("http://h:1/org/name/resolve/main/x"),
            Some((
                Resource::File {
                    kind: RepoType::Model,
                    segs: vec!["org", "name", "resolve", "main", "x"]
                },
                ""
            ))
        );
        assert_eq!(parse_target("/api/widgets/x"), None);
        assert_eq!(parse_target("*"), None);
    }

    #[test]
    fn repo_paths() {
        for ok in [
            "a",
            "a/b.txt",
            "dir/with space/#x",
            "ünï/ç",
            "a..b",
            ".gitattributes",
        ] {
            assert!(valid_repo_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\..\\b",
            "a\0b",
            "a\nb",
            "..",
        ] {
            assert!(!valid_repo_path(bad), "{bad:?}");
        }
        // Decoding comes first: an encoded `..` is still `..`.
        assert!(!valid_repo_path(
            &decode("..%2F..%2Fetc%2Fpasswd").expect("utf8")
        ));
        assert!(!valid_repo_path(&decode("%2e%2e/x").expect("utf8")));
        assert!(!valid_repo_path(&decode("x%00").expect("utf8")));
        assert_eq!(decode("%ff"), None);
    }

    #[test]
    fn queries_and_headers() {
        assert!(query_flag("recursive=True&expand=false", "recursive"));
        assert!(!query_flag("recursive=false", "recursive"));
        assert_eq!(
            query_param("a=1&cursor=x%2Fy", "cursor").as_deref(),
            Some("x/y")
        );
        assert_eq!(header_safe("a\r\nb%ü"), "a%0D%0Ab%25%C3%BC");
        assert_eq!(sane_host("127.0.0.1:8080"), Some("127.0.0.1:8080"));
        assert_eq!(sane_host("evil\r\nx"), None);
    }
}
