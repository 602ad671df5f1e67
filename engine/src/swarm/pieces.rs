//! Piece hashes (BitTorrent v1: SHA-1) of one blob, taken in the same read pass that checks the
//! blob against its etag, and kept in ferry's cache folder so that a blob is read once per
//! piece length, not once per commit or per start.
//!
//! Every file of a published torrent starts on a piece boundary (BEP 47 pad files), so a blob's
//! pieces depend only on its bytes and the piece length: its whole pieces, then its tail hashed
//! twice, zero-padded to a whole piece (the tail of a file with a pad file behind it) and alone
//! (the tail of a torrent's last file).
//!
//! Invariants: pieces are computed only from bytes whose sha256 (LFS) or git blob id matched
//! the etag in that pass, and a kept record is used only when its name, length and checksum
//! agree; anything else is hashed again. Not here: the metainfo (`metainfo.rs`).

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::backend::nofollow::Dir;
use crate::verify::{HashAlgorithm, Hasher};

/// A SHA-1 piece hash.
pub(crate) type PieceHash = [u8; 20];

/// The piece hashes of one blob at one piece length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobPieces {
    pub(crate) size: u64,
    pub(crate) piece_len: u32,
    /// One per whole piece, in order.
    pub(crate) whole: Vec<PieceHash>,
    /// The last, partial piece; `None` when the size is a multiple of the piece length.
    pub(crate) tail: Option<Tail>,
}

/// A blob's partial last piece, hashed both ways a torrent may need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    /// Followed by zeros up to the piece length (a pad file comes next).
    pub(crate) padded: PieceHash,
    /// On its own (the torrent ends with it).
    pub(crate) alone: PieceHash,
}

/// What a blob's bytes must hash to: its etag, as the Hub names it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Etag<'a> {
    /// An LFS file: the sha256 of its bytes, lowercase hex.
    Sha256(&'a str),
    /// Any other file: its git blob id, lowercase hex.
    GitBlob(&'a str),
}

impl Etag<'_> {
    fn hex(&self) -> &str {
        match self {
            Etag::Sha256(h) | Etag::GitBlob(h) => h,
        }
    }
}

/// Why a blob's pieces could not be taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("holds {got} bytes, not the {want} its listing says")]
    Size { want: u64, got: u64 },
    #[error("its bytes hash to {got}, not to its etag {want}")]
    Mismatch { want: String, got: String },
}

/// Bytes read per call.
const CHUNK: usize = 1 << 20;
/// Chunks between the reading thread and the piece thread.
const CHUNKS: usize = 4;

/// Reads `size` bytes from `r`, checking them against `etag` and hashing them in pieces of
/// `piece_len`; adds each chunk's length to `progress` as it goes. Two threads: this one reads
/// and takes the etag's hash, a second one takes the pieces' (the two hashes cost about the
/// same; one core would do both at half the speed).
pub(crate) fn hash(
    mut r: impl Read,
    size: u64,
    etag: Etag<'_>,
    piece_len: u32,
    progress: &AtomicU64,
) -> Result<BlobPieces, HashError> {
    let algorithm = match etag {
        Etag::Sha256(_) => HashAlgorithm::Sha256,
        Etag::GitBlob(_) => HashAlgorithm::GitSha1,
    };
    let mut content = Hasher::new(algorithm, size);
    let (whole, tail, got) = std::thread::scope(|s| -> Result<_, HashError> {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(CHUNKS);
        let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS);
        for _ in 0..CHUNKS {
            let _ = empty_tx.send(vec![0u8; CHUNK]);
        }
        let pieces = s.spawn(move || {
            let mut p = Pieces::new(piece_len, size);
            for (buf, n) in full_rx {
                p.update(&buf[..n]);
                // The reader may be gone (an error): then nobody wants the buffer back.
                let _ = empty_tx.send(buf);
            }
            p.finish()
        });
        let mut got = 0u64;
        let read = loop {
            let Ok(mut buf) = empty_rx.recv() else {
                break Ok(());
            };
            let n = match r.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    let _ = full_tx.send((buf, 0));
                    continue;
                }
                Err(e) => break Err(HashError::from(e)),
            };
            got += n as u64;
            if got > size {
                break Err(HashError::Size { want: size, got });
            }
            content.update(&buf[..n]);
            progress.fetch_add(n as u64, Ordering::Relaxed);
            if full_tx.send((buf, n)).is_err() {
                break Ok(());
            }
        };
        drop(full_tx);
        let (whole, tail) = pieces
            .join()
            .map_err(|_| HashError::Io(io::Error::other("the piece thread panicked")))?;
        read.map(|()| (whole, tail, got))
    })?;
    if got != size {
        return Err(HashError::Size { want: size, got });
    }
    let digest = content.finalize().to_string();
    if digest != etag.hex() {
        return Err(HashError::Mismatch {
            want: etag.hex().to_owned(),
            got: digest,
        });
    }
    Ok(BlobPieces {
        size,
        piece_len,
        whole,
        tail,
    })
}

/// The running SHA-1 pieces of one blob.
struct Pieces {
    len: u64,
    whole: Vec<PieceHash>,
    piece: Sha1,
    in_piece: u64,
}

impl Pieces {
    fn new(piece_len: u32, size: u64) -> Pieces {
        let len = u64::from(piece_len);
        Pieces {
            len,
            whole: Vec::with_capacity(usize::try_from(size / len).unwrap_or(0)),
            piece: Sha1::new(),
            in_piece: 0,
        }
    }

    fn update(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let room = usize::try_from(self.len - self.in_piece).unwrap_or(usize::MAX);
            let take = room.min(chunk.len());
            self.piece.update(&chunk[..take]);
            self.in_piece += take as u64;
            chunk = &chunk[take..];
            if self.in_piece == self.len {
                self.whole
                    .push(std::mem::take(&mut self.piece).finalize().into());
                self.in_piece = 0;
            }
        }
    }

    /// The whole pieces, and the tail both ways when there is one.
    fn finish(mut self) -> (Vec<PieceHash>, Option<Tail>) {
        let tail = (self.in_piece > 0).then(|| {
            let alone: PieceHash = self.piece.clone().finalize().into();
            let zeros = [0u8; 64 * 1024];
            let mut left = self.len - self.in_piece;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                self.piece.update(&zeros[..n]);
                left -= n as u64;
            }
            Tail {
                padded: self.piece.finalize().into(),
                alone,
            }
        });
        (self.whole, tail)
    }
}

/// Where pieces are kept: `pieces/` in ferry's cache folder, one record per (etag, piece
/// length). A store without a folder keeps nothing.
#[derive(Debug, Clone)]
pub(crate) struct PieceStore {
    dir: Option<PathBuf>,
}

/// A record's first bytes: the format and its version.
const MAGIC: &[u8] = b"ferry-pieces/1\n";

impl PieceStore {
    /// The store in ferry's cache folder ([`crate::config::ferry_cache_dir`]).
    pub(crate) fn default_dir() -> PieceStore {
        PieceStore {
            dir: crate::config::ferry_cache_dir().map(|d| d.join("pieces")),
        }
    }

    /// The record's name: the etag (hex, checked by the caller) and the piece length.
    fn name(etag: &str, piece_len: u32) -> OsString {
        format!("{etag}-{piece_len}").into()
    }

    /// The pieces kept for this blob at this piece length, if a sound record is there.
    pub(crate) fn load(&self, etag: &str, size: u64, piece_len: u32) -> Option<BlobPieces> {
        let dir = Dir::open(self.dir.as_ref()?).ok()?;
        let file = dir
            .open_std(&Self::name(etag, piece_len), rustix::fs::OFlags::RDONLY)
            .ok()?;
        let want = record_len(size, piece_len)?;
        let mut bytes = Vec::new();
        file.take(want as u64 + 1).read_to_end(&mut bytes).ok()?;
        let decoded = decode(&bytes, size, piece_len);
        if decoded.is_none() {
            tracing::warn!(
                "{}: not a record ferry wrote for this blob; hashing it again",
                dir.join(&Self::name(etag, piece_len)).display()
            );
        }
        decoded
    }

    /// Keeps `pieces` of the blob `etag` (a new file renamed into place, fsynced, no symlink
    /// followed). A failure costs only a later hash.
    pub(crate) fn save(&self, etag: &str, pieces: &BlobPieces) {
        let Some(path) = &self.dir else { return };
        let write = || -> io::Result<()> {
            std::fs::create_dir_all(path)?;
            Dir::open(path)?.write_atomic(&Self::name(etag, pieces.piece_len), &encode(pieces))
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "{}: piece hashes not kept", path.display());
        }
    }
}

/// A record's length for a blob of `size` bytes: magic, size, piece length, tail flag, the
/// hashes, and a sha256 of all that.
fn record_len(size: u64, piece_len: u32) -> Option<usize> {
    let whole = usize::try_from(size / u64::from(piece_len)).ok()?;
    let tail = usize::from(!size.is_multiple_of(u64::from(piece_len)));
    Some(MAGIC.len() + 8 + 4 + 1 + (whole + 2 * tail) * 20 + 32)
}

fn encode(p: &BlobPieces) -> Vec<u8> {
    let mut out = Vec::with_capacity(record_len(p.size, p.piece_len).unwrap_or(0));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&p.size.to_le_bytes());
    out.extend_from_slice(&p.piece_len.to_le_bytes());
    out.push(u8::from(p.tail.is_some()));
    for h in &p.whole {
        out.extend_from_slice(h);
    }
    if let Some(t) = &p.tail {
        out.extend_from_slice(&t.padded);
        out.extend_from_slice(&t.alone);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

fn decode(bytes: &[u8], size: u64, piece_len: u32) -> Option<BlobPieces> {
    if bytes.len() != record_len(size, piece_len)? {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return None;
    }
    let rest = body.strip_prefix(MAGIC)?;
    let (head, hashes) = rest.split_at(13);
    let kept_size = u64::from_le_bytes(head[..8].try_into().ok()?);
    let kept_len = u32::from_le_bytes(head[8..12].try_into().ok()?);
    let has_tail = head[12] == 1;
    if kept_size != size
        || kept_len != piece_len
        || has_tail == size.is_multiple_of(u64::from(piece_len))
    {
        return None;
    }
    let mut all = hashes
        .chunks_exact(20)
        .map(|c| <PieceHash>::try_from(c).ok());
    let whole_n = usize::try_from(size / u64::from(piece_len)).ok()?;
    let whole: Option<Vec<PieceHash>> = all.by_ref().take(whole_n).collect();
    let tail = if has_tail {
        Some(Tail {
            padded: all.next()??,
            alone: all.next()??,
        })
    } else {
        None
    };
    Some(BlobPieces {
        size,
        piece_len,
        whole: whole?,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    fn sha1(parts: &[&[u8]]) -> PieceHash {
        let mut h = Sha1::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    #[test]
    fn pieces_and_tails() {
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let etag = sha256_hex(&bytes);
        let progress = AtomicU64::new(0);
        let p = hash(&bytes[..], 40_000, Etag::Sha256(&etag), 16_384, &progress).expect("hashes");
        assert_eq!(progress.load(Ordering::Relaxed), 40_000);
        assert_eq!(
            p.whole,
            vec![sha1(&[&bytes[..16_384]]), sha1(&[&bytes[16_384..32_768]])]
        );
        let tail = p.tail.expect("a tail");
        assert_eq!(tail.alone, sha1(&[&bytes[32_768..]]));
        assert_eq!(
            tail.padded,
            sha1(&[&bytes[32_768..], &vec![0u8; 16_384 - (40_000 - 32_768)]])
        );
        // A multiple of the piece length has no tail; an empty blob has no pieces.
        let even = &bytes[..32_768];
        let p = hash(
            even,
            32_768,
            Etag::Sha256(&sha256_hex(even)),
            16_384,
            &progress,
        )
        .expect("hashes");
        assert_eq!((p.whole.len(), p.tail), (2, None));
        let empty_blob = hex::encode(crate::verify::git_blob_hasher(0).finalize());
        let p = hash(&b""[..], 0, Etag::GitBlob(&empty_blob), 16_384, &progress).expect("empty");
        assert!(p.whole.is_empty() && p.tail.is_none());
    }

    #[test]
    fn bytes_that_are_not_the_etag_are_refused() {
        let bytes = vec![5u8; 1000];
        let progress = AtomicU64::new(0);
        let wrong = sha256_hex(b"something else");
        assert!(matches!(
            hash(&bytes[..], 1000, Etag::Sha256(&wrong), 256, &progress),
            Err(HashError::Mismatch { .. })
        ));
        let right = sha256_hex(&bytes);
        // Shorter and longer than the listing says.
        assert!(matches!(
            hash(&bytes[..999], 1000, Etag::Sha256(&right), 256, &progress),
            Err(HashError::Size { got: 999, .. })
        ));
        assert!(matches!(
            hash(&bytes[..], 999, Etag::Sha256(&right), 256, &progress),
            Err(HashError::Size { .. })
        ));
    }

    /// A reader that fails after `ok` bytes (a disk error mid-file).
    struct Failing {
        ok: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::Error::other("EIO"));
            }
            let n = buf.len().min(self.ok);
            buf[..n].fill(7);
            self.ok -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_read_error_mid_file_ends_both_threads_with_it() {
        let etag = sha256_hex(&[7u8; 10 << 20]);
        let got = hash(
            Failing { ok: 5 << 20 },
            10 << 20,
            Etag::Sha256(&etag),
            1 << 20,
            &AtomicU64::new(0),
        );
        assert!(matches!(got, Err(HashError::Io(e)) if e.to_string() == "EIO"));
    }

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = PieceStore {
            dir: Some(dir.path().join("pieces")),
        };
        let bytes = vec![9u8; 5000];
        let etag = sha256_hex(&bytes);
        let p = hash(
            &bytes[..],
            5000,
            Etag::Sha256(&etag),
            2048,
            &AtomicU64::new(0),
        )
        .expect("hashes");
        assert_eq!(store.load(&etag, 5000, 2048), None);
        store.save(&etag, &p);
        assert_eq!(store.load(&etag, 5000, 2048), Some(p.clone()));
        // Another size or piece length does not take this record.
        assert_eq!(store.load(&etag, 5001, 2048), None);
        assert_eq!(store.load(&etag, 5000, 4096), None);
        // One flipped bit anywhere: refused.
        let path = dir.path().join("pieces").join(format!("{etag}-2048"));
        let mut raw = std::fs::read(&path).expect("read");
        raw[MAGIC.len() + 20] ^= 1;
        std::fs::write(&path, &raw).expect("write");
        assert_eq!(store.load(&etag, 5000, 2048), None);
        // A symlink in the record's place is not followed.
        std::fs::remove_file(&path).expect("rm");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, encode(&p)).expect("write");
        std::os::unix::fs::symlink(&elsewhere, &path).expect("symlink");
        assert_eq!(store.load(&etag, 5000, 2048), None);
        store.save(&etag, &p);
        assert!(!std::fs::symlink_metadata(&path).expect("stat").is_symlink());
        assert_eq!(std::fs::read(&elsewhere).expect("read"), encode(&p));
    }
}
