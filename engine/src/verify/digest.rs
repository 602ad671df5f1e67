//! The digests a file is checked against: sha256 (LFS files, `--sha256`) and the git blob id
//! `sha1("blob LEN\0" + bytes)` with which the Hugging Face Hub names its non-LFS files (the
//! length goes first, so it must be known up front). sha2 and sha1 pick SHA-NI (or the ARMv8
//! extensions) at run time. Not here: feeding a hash in file order (`verifier.rs`).

use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The hash algorithms a file can be checked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HashAlgorithm {
    /// sha256 of the bytes.
    #[serde(rename = "sha256")]
    Sha256,
    /// The git blob id: sha1 of `"blob {len}\0"` followed by the bytes.
    #[serde(rename = "git-sha1")]
    GitSha1,
}

impl std::fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::GitSha1 => "git-sha1",
        })
    }
}

/// A digest a file must have, or has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checksum {
    Sha256([u8; 32]),
    GitSha1([u8; 20]),
}

impl Checksum {
    /// Parses hex digits (either case) of `algorithm`'s length.
    pub(crate) fn parse(algorithm: HashAlgorithm, s: &str) -> Option<Checksum> {
        let s = s.trim();
        match algorithm {
            HashAlgorithm::Sha256 => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Checksum::Sha256(out))
            }
            HashAlgorithm::GitSha1 => {
                let mut out = [0u8; 20];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Checksum::GitSha1(out))
            }
        }
    }

    pub(crate) fn algorithm(&self) -> HashAlgorithm {
        match self {
            Checksum::Sha256(_) => HashAlgorithm::Sha256,
            Checksum::GitSha1(_) => HashAlgorithm::GitSha1,
        }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checksum::Sha256(d) => f.write_str(&hex::encode(d)),
            Checksum::GitSha1(d) => f.write_str(&hex::encode(d)),
        }
    }
}

/// A sha1 primed with the git blob header of a `len`-byte blob: what follows is its bytes.
pub(crate) fn git_blob_hasher(len: u64) -> Sha1 {
    let mut h = Sha1::new();
    h.update(format!("blob {len}\0").as_bytes());
    h
}

/// A running hash of one of the [`HashAlgorithm`]s.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    /// A fresh hash; a git blob id needs the file's length first.
    pub(crate) fn new(algorithm: HashAlgorithm, len: u64) -> Hasher {
        match algorithm {
            HashAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            HashAlgorithm::GitSha1 => Hasher::GitSha1(git_blob_hasher(len)),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::GitSha1(h) => h.update(bytes),
        }
    }

    pub(crate) fn finalize(self) -> Checksum {
        match self {
            Hasher::Sha256(h) => Checksum::Sha256(h.finalize().into()),
            Hasher::GitSha1(h) => Checksum::GitSha1(h.finalize().into()),
        }
    }
}
