//! The values inside playlist tags (RFC 8216 section 4.2): decimal integers, byte ranges,
//! resolutions, IVs and attribute lists, each parsed strictly, with the line named on failure.

use super::{ParseError, fail};

pub(super) fn decimal(n: usize, v: &str, what: &str) -> Result<u64, ParseError> {
    v.trim().parse().map_or_else(
        |_| fail(n, format!("{what} {v:?} is not a decimal integer")),
        Ok,
    )
}

/// `n[@o]`.
pub(super) fn byte_range(n: usize, v: &str) -> Result<(u64, Option<u64>), ParseError> {
    let (len, offset) = match v.split_once('@') {
        Some((l, o)) => (l, Some(decimal(n, o, "byte range offset")?)),
        None => (v, None),
    };
    let len = decimal(n, len, "byte range length")?;
    if let Some(o) = offset
        && o.checked_add(len).is_none()
    {
        return fail(n, "byte range past 2^64");
    }
    Ok((len, offset))
}

pub(super) fn resolution(n: usize, v: &str) -> Result<(u32, u32), ParseError> {
    let bad = || fail(n, format!("RESOLUTION {v:?} is not WIDTHxHEIGHT"));
    let Some((w, h)) = v.split_once(['x', 'X']) else {
        return bad();
    };
    match (w.parse(), h.parse()) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => bad(),
    }
}

/// An IV: a hexadecimal-sequence of at most 128 bits, left-padded with zeros.
pub(super) fn iv(n: usize, v: &str) -> Result<[u8; 16], ParseError> {
    let hex = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .map_or_else(|| fail(n, format!("IV {v:?} does not start with 0x")), Ok)?;
    if hex.is_empty() || hex.len() > 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return fail(n, format!("IV {v:?} is not 1-32 hexadecimal digits"));
    }
    let padded = format!("{hex:0>32}");
    let mut out = [0u8; 16];
    hex::decode_to_slice(&padded, &mut out).map_err(|e| ParseError {
        what: format!("line {n}: IV {v:?}: {e}"),
    })?;
    Ok(out)
}

/// An attribute list (section 4.2): `NAME=VALUE` pairs, commas outside quotes separating them.
/// Quoted values come without their quotes.
pub(super) struct Attributes<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Attributes<'a> {
    pub(super) fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

pub(super) fn attributes(n: usize, text: &str) -> Result<Attributes<'_>, ParseError> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once('=') else {
            return fail(n, format!("attribute without '=' in {text:?}"));
        };
        let name = name.trim();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let Some(end) = q.find('"') else {
                return fail(n, format!("unterminated quoted string in {text:?}"));
            };
            (&q[..end], &q[end + 1..])
        } else {
            match after.find(',') {
                Some(c) => (after[..c].trim_end(), &after[c..]),
                None => (after.trim_end(), ""),
            }
        };
        if out.iter().any(|(k, _)| *k == name) {
            return fail(n, format!("attribute {name} appears twice"));
        }
        out.push((name, value));
        let tail = tail.trim_start();
        rest = match tail.strip_prefix(',') {
            Some(t) => t.trim_start(),
            None if tail.is_empty() => "",
            None => return fail(n, format!("junk after attribute {name} in {text:?}")),
        };
    }
    Ok(Attributes(out))
}
