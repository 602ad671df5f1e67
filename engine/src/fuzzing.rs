//! Entry points for the fuzz targets (`fuzz/`, `cargo fuzz`) and for the regression test that
//! replays their committed corpora on stable Rust: one function per parser of untrusted bytes,
//! each taking raw bytes and checking the invariants a caller relies on, panicking when one
//! breaks (which the fuzzer reports as a crash). Built only for tests and with the `fuzzing`
//! feature; not part of the public API.
//!
//! Not here: the fuzzing itself (libFuzzer, through `fuzz/`), or any I/O.

use crate::proto::http1::chunked::ChunkedDecoder;
use crate::proto::http1::range::{ContentRange, parse_content_range};
use crate::serve::range_request::{RangeAnswer, evaluate};

/// The HTTP/1.1 response head parser (`http1::parse_head`) and what the data plane asks of a
/// head it accepted: the length it consumed lies within the input, and the framing and
/// keep-alive questions answer without panicking.
pub fn response_head(data: &[u8]) {
    if let Ok(Some((head, len))) = crate::proto::http1::parse_head(data) {
        assert!(len <= data.len(), "consumed {len} of {} bytes", data.len());
        let _ = head.content_length();
        let _ = head.framing();
        let _ = head.keep_alive();
        let _ = head.header("content-range").map(parse_content_range);
    }
}

/// The chunked decoder, fed the same bytes whole and then split at a point the input chooses
/// (its first byte): both ways decode the same payload, consume the same bytes, and agree on
/// the end. Split decoding is what a socket gives it.
pub fn chunked(data: &[u8]) {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let whole = run_chunked(&[body]);
    let at = usize::from(split).min(body.len());
    let (a, b) = body.split_at(at);
    let parts = run_chunked(&[a, b]);
    assert_eq!(whole, parts, "split at {at} changed the outcome");
}

/// The outcome of decoding `pieces` in turn: payload, bytes consumed, done, or the first error.
fn run_chunked(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), String> {
    let mut d = ChunkedDecoder::default();
    let (mut out, mut used) = (Vec::new(), 0);
    for piece in pieces {
        let n = d.decode(piece, &mut out).map_err(|e| format!("{e:?}"))?;
        assert!(n <= piece.len(), "consumed {n} of {}", piece.len());
        used += n;
        if d.is_done() {
            break;
        }
    }
    Ok((out, used, d.is_done()))
}

/// `Content-Range` (the client's check of every answer) and `Range` (`ferry serve`'s answer to
/// a request), parsed from the same text: a satisfied range is ordered and inside its total;
/// the range served lies inside the file. The file size comes from the first 8 bytes.
pub fn ranges(data: &[u8]) {
    let (size, text) = match data.split_first_chunk::<8>() {
        Some((n, rest)) => (u64::from_le_bytes(*n), rest),
        None => (0, data),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if let Some(ContentRange::Satisfied { first, last, total }) = parse_content_range(text) {
        assert!(first <= last, "{text:?}: {first} > {last}");
        if let Some(total) = total {
            assert!(last < total, "{text:?}: {last} >= {total}");
        }
    }
    match evaluate(Some(text), size) {
        RangeAnswer::Partial { start, end } => {
            assert!(
                start <= end && end < size,
                "{text:?} of {size}: {start}-{end}"
            );
        }
        RangeAnswer::Full | RangeAnswer::Unsatisfiable => {}
    }
}

/// The Hub's listing JSON, as the tree API and as a model's `siblings` give it: whatever is
/// accepted has only paths that stay inside the repo, no two the same.
pub fn listing(data: &[u8]) {
    use crate::hub::listing::{Sibling, TreeEntry, check, from_siblings, from_tree, stays_inside};
    let accepted = [
        serde_json::from_slice::<Vec<TreeEntry>>(data)
            .ok()
            .map(|t| from_tree(t).and_then(check)),
        serde_json::from_slice::<Vec<Sibling>>(data)
            .ok()
            .map(|s| from_siblings(s).and_then(check)),
    ];
    for files in accepted.into_iter().flatten().flatten() {
        let mut seen = std::collections::HashSet::new();
        for f in &files {
            assert!(stays_inside(&f.path).is_ok(), "accepted {:?}", f.path);
            assert!(seen.insert(f.path.as_str()), "accepted {:?} twice", f.path);
        }
    }
}

/// The resume journal's decoder: the valid prefix lies within the input, and the records it
/// read, encoded again (as a compacted rewrite does), decode to the same records, so a rewrite
/// loses nothing. (Not byte for byte: a path's percent-encoding may be spelled differently.)
pub fn journal(data: &[u8]) {
    let decoded = crate::journal::decode(data);
    assert!(decoded.valid <= data.len());
    if decoded.records.is_empty() {
        return;
    }
    let mut again = crate::journal::HEADER.as_bytes().to_vec();
    for r in &decoded.records {
        again.extend_from_slice(&r.encode());
    }
    let redecoded = crate::journal::decode(&again);
    assert_eq!(
        redecoded.records, decoded.records,
        "re-encoding changed the records"
    );
    let _ = crate::journal::replay(&decoded.records);
}

/// The HLS playlist reader (`hls::playlist::parse`) against a fixed base URL, and the variant
/// choice over what it accepted: media sequence numbers count up by one from the first, every
/// URI is http(s), byte ranges do not overflow, every segment's init section exists, counts
/// stay within their bounds, and no variant choice panics.
pub fn playlist(data: &[u8]) {
    use crate::hls::playlist::{MAX_SEGMENTS, Playlist, parse};
    use crate::hls::select::{VariantChoice, variant};
    let base = url::Url::parse("https://cdn.example/a/b/index.m3u8").expect("base URL");
    let http = |u: &url::Url| matches!(u.scheme(), "http" | "https");
    match parse(data, &base) {
        Err(_) => {}
        Ok(Playlist::Media(m)) => {
            assert!(m.segments.len() <= MAX_SEGMENTS);
            for (i, s) in m.segments.iter().enumerate() {
                assert_eq!(s.msn, m.media_sequence + i as u64, "segment {i}");
                assert!(http(&s.uri), "{}", s.uri);
                if let Some(r) = s.range {
                    assert!(r.offset.checked_add(r.len).is_some());
                }
                if let Some(c) = &s.crypt {
                    assert!(http(&c.key), "{}", c.key);
                }
                assert!(s.map.is_none_or(|i| i < m.maps.len()));
            }
            assert!(m.maps.iter().all(|x| http(&x.uri)));
        }
        Ok(Playlist::Master(m)) => {
            assert!(!m.variants.is_empty());
            assert!(m.variants.iter().all(|v| http(&v.uri)));
            for choice in [
                VariantChoice::Best,
                VariantChoice::Worst,
                VariantChoice::Bandwidth(1_000_000),
                VariantChoice::Resolution(1280, 720),
                VariantChoice::Codec("avc1".into()),
            ] {
                if let Ok(i) = variant(&m, &choice) {
                    assert!(i < m.variants.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every committed corpus file of every target, replayed: the fuzzers' findings stay fixed
    /// on stable Rust, in every test run.
    #[test]
    fn committed_corpora_replay_cleanly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 6] = [
            ("response_head", super::response_head),
            ("chunked", super::chunked),
            ("ranges", super::ranges),
            ("listing", super::listing),
            ("journal", super::journal),
            ("playlist", super::playlist),
        ];
        for (name, run) in targets {
            let dir = root.join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.expect("corpus entry").path();
                run(&std::fs::read(&path).expect("corpus file"));
                n += 1;
            }
            assert!(n > 0, "{name}: empty corpus at {dir:?}");
            eprintln!("{name}: {n} corpus inputs replayed");
        }
    }
}
