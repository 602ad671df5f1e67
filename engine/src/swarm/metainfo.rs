//! BitTorrent v1 metainfo (BEP 3) of one commit of a repo, as `ferry serve --torrents` publishes
//! it: private (BEP 27: no DHT, no PEX), one torrent file per repo file, every file starting on a
//! piece boundary behind a pad file (BEP 47), the server's resolve route as a web seed (BEP 19).
//!
//! Invariants: the info dictionary depends only on the commit's files (paths, sizes, piece
//! hashes), its name and the piece length, never on the address a client used, so the info hash
//! is the same from every address of the server; `announce` and `url-list` sit outside it. The
//! bencode is canonical (bendy: keys emitted sorted, integers minimal). Not here: hashing
//! (`pieces.rs`), reading metainfo, the peer protocol.

use std::collections::BTreeSet;
use std::sync::Arc;

use bendy::encoding::{Encoder, SingleItemEncoder};
use sha1::{Digest, Sha1};

use super::pieces::{BlobPieces, PieceHash};

/// The smallest piece length ferry picks: small repos still get few, cheap pieces.
pub(crate) const MIN_PIECE: u32 = 256 * 1024;
/// The largest: a 400 GB repo gets ~24,000 pieces (480 KB of hashes in its metainfo).
pub(crate) const MAX_PIECE: u32 = 16 * 1024 * 1024;
/// About how many pieces a repo's bytes are cut into, between the bounds.
const TARGET_PIECES: u64 = 2048;

/// The piece length of a torrent of `total` bytes in `files` non-empty files: a power of two,
/// so that a commit that changes a few files keeps its neighbours' length, and with it their
/// pieces; and no larger than the files' mean size, since every file but the last is padded to
/// a piece boundary: a dataset of 100,000 files of 4 MB gets 2 MiB pieces, not 16 MiB ones
/// three quarters padding (which clients without BEP 47 fetch as zeros).
pub(crate) fn piece_length(total: u64, files: u64) -> u32 {
    let want = (total / TARGET_PIECES).next_power_of_two();
    let mean = total / files.max(1);
    // The largest power of two not above the mean (1 for a mean of 0).
    let fits = 1u64 << (63 - mean.max(1).leading_zeros());
    let len = want.min(fits);
    u32::try_from(len.clamp(u64::from(MIN_PIECE), u64::from(MAX_PIECE))).unwrap_or(MAX_PIECE)
}

/// One repo file of a torrent.
#[derive(Debug, Clone)]
pub(crate) struct TorrentFile {
    /// The repo path (`/`-separated, checked by the catalog: no `..`, no empty segment).
    pub(crate) path: String,
    pub(crate) pieces: Arc<BlobPieces>,
}

/// Where pad files live (BEP 47's convention); a repo path under it would collide.
pub(crate) const PAD_DIR: &str = ".pad";

/// A torrent's info dictionary, encoded, and what the metainfo around it needs.
#[derive(Debug)]
pub(crate) struct Info {
    /// The info dictionary's bencode (what the info hash is taken of).
    encoded: Vec<u8>,
    hash: PieceHash,
    name: String,
    /// The lengths of its pad files.
    pads: BTreeSet<u64>,
}

impl Info {
    /// The info dictionary of `files` (in this order) under `name`. Every file's pieces must be
    /// at `piece_len`, and no repo path may lie under [`PAD_DIR`].
    pub(crate) fn new(name: &str, piece_len: u32, files: &[TorrentFile]) -> Result<Info, String> {
        if let Some(f) = files.iter().find(|f| f.pieces.piece_len != piece_len) {
            return Err(format!("{}: hashed at another piece length", f.path));
        }
        if let Some(f) = files
            .iter()
            .find(|f| f.path.split('/').next() == Some(PAD_DIR))
        {
            return Err(format!(
                "{}: a repo file under {PAD_DIR}/ would collide with the torrent's pad files (BEP 47)",
                f.path
            ));
        }
        let last = files.iter().rposition(|f| f.pieces.size > 0);
        let mut pieces = Vec::new();
        let mut pads = BTreeSet::new();
        for (i, f) in files.iter().enumerate() {
            for h in &f.pieces.whole {
                pieces.extend_from_slice(h);
            }
            if let Some(t) = &f.pieces.tail {
                if Some(i) == last {
                    pieces.extend_from_slice(&t.alone);
                } else {
                    pieces.extend_from_slice(&t.padded);
                    pads.insert(pad_len(f.pieces.size, piece_len));
                }
            }
        }
        let mut e = Encoder::new().with_max_depth(8);
        e.emit_with(|e| encode_info(e, name, piece_len, files, last, &pieces))
            .and_then(|()| e.get_output())
            .map(|encoded| Info {
                hash: Sha1::digest(&encoded).into(),
                encoded,
                name: name.to_owned(),
                pads,
            })
            .map_err(|e| format!("bencode: {e}"))
    }

    /// Whether a pad file of `len` bytes is in this torrent: a web seed client that does not
    /// know BEP 47 asks for it as a file, and is answered zeros.
    pub(crate) fn has_pad(&self, len: u64) -> bool {
        self.pads.contains(&len)
    }

    /// The info hash (SHA-1 of the info dictionary), what a swarm is known by.
    pub(crate) fn info_hash(&self) -> PieceHash {
        self.hash
    }

    /// The metainfo file: `trackers` (the first as `announce`, all as `announce-list` when
    /// there are several), `web_seed` as `url-list`, and the info dictionary.
    pub(crate) fn metainfo(
        &self,
        trackers: &[String],
        web_seed: Option<&str>,
        comment: &str,
        created: u64,
    ) -> Vec<u8> {
        // Written by hand, keys in sorted order as canonical bencode requires: the info
        // dictionary must go in as the very bytes its hash was taken of, and bendy emits no
        // pre-encoded bytes. The unit tests decode and re-encode it with bendy.
        let mut out = b"d".to_vec();
        let mut pair = |key: &str, value: &[u8]| {
            out.extend_from_slice(format!("{}:{key}", key.len()).as_bytes());
            out.extend_from_slice(value);
        };
        if let Some(first) = trackers.first() {
            pair("announce", &string(first));
        }
        if trackers.len() > 1 {
            let tiers: Vec<u8> = trackers
                .iter()
                .flat_map(|t| [b"l".to_vec(), string(t), b"e".to_vec()].concat())
                .collect();
            pair("announce-list", &[b"l", &tiers[..], b"e"].concat());
        }
        pair("comment", &string(comment));
        pair(
            "created by",
            &string(concat!("ferry ", env!("CARGO_PKG_VERSION"))),
        );
        pair("creation date", format!("i{created}e").as_bytes());
        pair("info", &self.encoded);
        if let Some(seed) = web_seed {
            pair("url-list", &[b"l", &string(seed)[..], b"e"].concat());
        }
        out.push(b'e');
        out
    }

    /// The magnet link (BEP 9) of this torrent: its info hash, name, trackers and web seed.
    pub(crate) fn magnet(&self, trackers: &[String], web_seed: Option<&str>) -> String {
        use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
        /// RFC 3986's unreserved characters stay as they are.
        const QUERY: &AsciiSet = &NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        let mut m = format!(
            "magnet:?xt=urn:btih:{}&dn={}",
            hex::encode(self.hash),
            utf8_percent_encode(&self.name, QUERY)
        );
        for t in trackers {
            m.push_str(&format!("&tr={}", utf8_percent_encode(t, QUERY)));
        }
        if let Some(seed) = web_seed {
            m.push_str(&format!("&ws={}", utf8_percent_encode(seed, QUERY)));
        }
        m
    }
}

/// The pad file behind a file of `size` bytes (not a multiple of `piece_len`).
fn pad_len(size: u64, piece_len: u32) -> u64 {
    u64::from(piece_len) - size % u64::from(piece_len)
}

/// A bencoded byte string.
fn string(s: &str) -> Vec<u8> {
    [format!("{}:", s.len()).as_bytes(), s.as_bytes()].concat()
}

fn encode_info(
    e: SingleItemEncoder,
    name: &str,
    piece_len: u32,
    files: &[TorrentFile],
    last: Option<usize>,
    pieces: &[u8],
) -> Result<(), bendy::encoding::Error> {
    e.emit_dict(|mut d| {
        d.emit_pair_with(b"files", |e| {
            e.emit_list(|l| {
                for (i, f) in files.iter().enumerate() {
                    l.emit_dict(|mut d| {
                        d.emit_pair(b"length", f.pieces.size)?;
                        d.emit_pair_with(b"path", |e| {
                            e.emit_list(|l| f.path.split('/').try_for_each(|s| l.emit_str(s)))
                        })
                    })?;
                    if !f.pieces.size.is_multiple_of(u64::from(piece_len)) && Some(i) != last {
                        let pad = pad_len(f.pieces.size, piece_len);
                        l.emit_dict(|mut d| {
                            d.emit_pair(b"attr", "p")?;
                            d.emit_pair(b"length", pad)?;
                            d.emit_pair_with(b"path", |e| {
                                e.emit_list(|l| {
                                    l.emit_str(PAD_DIR)?;
                                    l.emit_str(&pad.to_string())
                                })
                            })
                        })?;
                    }
                }
                Ok(())
            })
        })?;
        d.emit_pair(b"name", name)?;
        d.emit_pair(b"piece length", piece_len)?;
        d.emit_pair_with(b"pieces", |e| e.emit_bytes(pieces))?;
        d.emit_pair(b"private", 1u8)
    })
}

#[cfg(test)]
mod tests;
