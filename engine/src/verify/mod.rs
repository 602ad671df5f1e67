//! Streaming hashes of a file that is written out of order, fed in file order.
//!
//! Connections write ranges of one file concurrently; a hash is sequential. A [`Verifier`]
//! tracks the hashed prefix `0..prefix` and hashes each buffer as soon as the prefix reaches it,
//! its write in flight or not, so the hash (which bounds a verified download) never waits for
//! the disk. A buffer further on is kept, up to a job-wide [`Window`] of bytes; past it the
//! connection waits, and a buffer stuck behind a lagging connection is let go and read back
//! later. The digest covers exactly the bytes written: a file settles only after every write
//! completed. Measurements behind this design: docs/decisions.md, "Hashing in file order".
//!
//! Files: `digest.rs` (sha256, git blob sha1), `verifier.rs` (the prefix, the window),
//! `mark.rs` (the verified mark a file keeps). No I/O here; nothing of sockets or back-ends.

mod digest;
pub(crate) mod mark;
mod verifier;

pub use self::digest::HashAlgorithm;
pub(crate) use self::digest::{Checksum, Hasher, git_blob_hasher};
pub(crate) use self::verifier::{HashStats, HashStep, Landed, Verifier, Window};
