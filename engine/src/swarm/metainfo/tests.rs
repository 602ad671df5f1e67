use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bendy::decoding::FromBencode;
use bendy::encoding::Encoder;
use bendy::value::Value;
use sha1::{Digest, Sha1};
use sha2::Sha256;

use super::*;
use crate::swarm::pieces::{Etag, hash};

fn file(path: &str, bytes: &[u8], piece_len: u32) -> TorrentFile {
    let etag = hex::encode(Sha256::digest(bytes));
    let pieces = hash(
        bytes,
        bytes.len() as u64,
        Etag::Sha256(&etag),
        piece_len,
        &AtomicU64::new(0),
    )
    .expect("hashes");
    TorrentFile {
        path: path.into(),
        pieces: Arc::new(pieces),
    }
}

/// Canonical bencode of `v` (deeper than bendy's default for a `Value`).
fn encode(v: &Value<'_>) -> Vec<u8> {
    let mut e = Encoder::new().with_max_depth(8);
    e.emit(v).expect("emit");
    e.get_output().expect("encode")
}

/// `bytes` decoded (deeper than bendy's default for a `Value`).
fn decode(bytes: &[u8]) -> Value<'_> {
    let mut d = bendy::decoding::Decoder::new(bytes).with_max_depth(8);
    let object = d.next_object().expect("bencode").expect("an object");
    Value::decode_bencode_object(object).expect("a value")
}

fn dict<'a>(v: &'a Value<'a>) -> &'a BTreeMap<Cow<'a, [u8]>, Value<'a>> {
    match v {
        Value::Dict(d) => d,
        other => panic!("not a dict: {other:?}"),
    }
}

fn get<'a>(d: &'a BTreeMap<Cow<'a, [u8]>, Value<'a>>, k: &str) -> &'a Value<'a> {
    d.get(k.as_bytes()).unwrap_or_else(|| panic!("no {k}"))
}

fn paths(files: &Value<'_>) -> Vec<(String, i64, bool)> {
    let Value::List(list) = files else {
        panic!("files is not a list")
    };
    list.iter()
        .map(|f| {
            let d = dict(f);
            let Value::List(path) = get(d, "path") else {
                panic!("path")
            };
            let path: Vec<String> = path
                .iter()
                .map(|s| match s {
                    Value::Bytes(b) => String::from_utf8(b.to_vec()).expect("utf8"),
                    _ => panic!("segment"),
                })
                .collect();
            let Value::Integer(len) = get(d, "length") else {
                panic!("length")
            };
            let pad = d.get(&b"attr"[..]) == Some(&Value::Bytes(Cow::Borrowed(b"p")));
            (path.join("/"), *len, pad)
        })
        .collect()
}

#[test]
fn pads_align_every_file_and_the_last_piece_is_short() {
    let p = 16 * 1024;
    let a: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let b = vec![7u8; 2 * 16 * 1024];
    let c = b"tail".to_vec();
    let files = [
        file("a.bin", &a, p),
        file("dir/b.bin", &b, p),
        file("empty", b"", p),
        file("z/c.txt", &c, p),
    ];
    let info = Info::new(&"0".repeat(40), p, &files).expect("info");
    let meta = info.metainfo(
        &["http://t1/announce".into(), "http://t2/announce".into()],
        Some("http://seed/org/name/resolve/"),
        "org/name",
        1_700_000_000,
    );
    let v = decode(&meta);
    let top = dict(&v);
    // The outer dictionary is canonical too: encoding it again gives the same bytes.
    assert_eq!(encode(&v), meta);
    assert_eq!(
        get(top, "announce"),
        &Value::Bytes(Cow::Borrowed(b"http://t1/announce"))
    );
    assert!(matches!(get(top, "announce-list"), Value::List(t) if t.len() == 2));
    assert!(matches!(get(top, "url-list"), Value::List(s) if s.len() == 1));
    let info_v = get(top, "info");
    let raw = encode(info_v);
    assert_eq!(<[u8; 20]>::from(Sha1::digest(&raw)), info.info_hash());
    let d = dict(info_v);
    assert_eq!(get(d, "private"), &Value::Integer(1));
    assert_eq!(get(d, "piece length"), &Value::Integer(16_384));
    assert_eq!(
        paths(get(d, "files")),
        vec![
            ("a.bin".into(), 40_000, false),
            (".pad/9152".into(), 9152, true),
            ("dir/b.bin".into(), 32_768, false),
            ("empty".into(), 0, false),
            ("z/c.txt".into(), 4, false),
        ]
    );
    // Pieces: a's 2 whole + padded tail, b's 2, c's tail alone.
    let Value::Bytes(pieces) = get(d, "pieces") else {
        panic!("pieces")
    };
    let mut zeros_after_a = a[32_768..].to_vec();
    zeros_after_a.resize(16_384, 0);
    let want: Vec<u8> = [
        &a[..16_384],
        &a[16_384..32_768],
        &zeros_after_a[..],
        &b[..16_384],
        &b[16_384..],
        &c[..],
    ]
    .iter()
    .flat_map(|chunk| Sha1::digest(chunk).to_vec())
    .collect();
    assert_eq!(&pieces[..], &want[..]);
    assert!(info.has_pad(9152) && !info.has_pad(9151));
}

#[test]
fn same_files_same_hash_whatever_the_trackers() {
    let p = 16 * 1024;
    let files = [file("x", b"hello", p)];
    let info = Info::new("n", p, &files).expect("info");
    let again = Info::new("n", p, &files).expect("info");
    assert_eq!(info.info_hash(), again.info_hash());
    let m = info.magnet(&["http://t/a b".into()], Some("http://s/"));
    assert!(m.starts_with(&format!(
        "magnet:?xt=urn:btih:{}&dn=n&tr=http%3A%2F%2Ft%2Fa%20b",
        hex::encode(info.info_hash())
    )));
    assert!(m.ends_with("&ws=http%3A%2F%2Fs%2F"));
    // Another name is another torrent.
    assert_ne!(
        Info::new("m", p, &files).expect("info").info_hash(),
        info.info_hash()
    );
}

#[test]
fn refused_layouts() {
    let p = 16 * 1024;
    assert!(
        Info::new("n", p, &[file(".pad/1", b"x", p)])
            .expect_err("collides")
            .contains(".pad")
    );
    assert!(Info::new("n", 2 * p, &[file("x", b"x", p)]).is_err());
}

#[test]
fn piece_lengths() {
    assert_eq!(piece_length(0, 0), MIN_PIECE);
    assert_eq!(piece_length(100 << 20, 3), MIN_PIECE);
    assert_eq!(piece_length(1 << 30, 1), 512 * 1024);
    assert_eq!(piece_length(3 << 30, 4), 2 * 1024 * 1024);
    // A model of a hundred 4 GB shards and a few small files.
    assert_eq!(piece_length(400_000_000_000, 110), MAX_PIECE);
    // A dataset of 100,000 files of 4 MB: pieces no larger than a file.
    assert_eq!(piece_length(400_000_000_000, 100_000), 2 * 1024 * 1024);
    // Many tiny files: the smallest piece.
    assert_eq!(piece_length(1 << 30, 1_000_000), MIN_PIECE);
}
