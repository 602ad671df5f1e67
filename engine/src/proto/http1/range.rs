//! `Content-Range` parsing (RFC 9110 section 14.4): `bytes A-B/N`, `bytes A-B/*`, `bytes */N`.

/// A parsed `Content-Range` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentRange {
    /// `bytes first-last/total` (`total` is `None` for `*`); `last` is inclusive.
    Satisfied {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
    /// `bytes */total`, sent with 416.
    Unsatisfied { total: u64 },
}

/// Parses a `Content-Range` header value; `None` when it is not a valid byte range.
pub(crate) fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?;
    let rest = rest
        .strip_prefix(|c: char| c == ' ' || c == '=')?
        .trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(digits(t)?),
    };
    if range.trim() == "*" {
        return total.map(|total| ContentRange::Unsatisfied { total });
    }
    let (first, last) = range.split_once('-')?;
    let (first, last) = (digits(first.trim())?, digits(last.trim())?);
    if last < first || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some(ContentRange::Satisfied { first, last, total })
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some(ContentRange::Satisfied {
                first: 0,
                last: 9,
                total: Some(100)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-5/*"),
            Some(ContentRange::Satisfied {
                first: 5,
                last: 5,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */0"),
            Some(ContentRange::Unsatisfied { total: 0 })
        );
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "bytes",
            "bytes 9-0/100",
            "bytes 0-100/100",
            "items 0-1/2",
            "bytes -1-2/3",
            "bytes 0-1/x",
            "bytes */*",
            "bytes +1-2/3",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }
}
