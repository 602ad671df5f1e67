//! BitTorrent for fleets (issue 33): what `ferry serve --torrents` publishes for each commit it
//! serves — a private torrent whose files start on piece boundaries, with the server itself as
//! a web seed — and the piece hashes behind it.
//!
//! BitTorrent v1's SHA-1 pieces are never the authority over a file's bytes: a blob is hashed
//! into pieces only in a pass that also checks it against its etag (sha256 or git blob id).
//! With the `swarm` feature, ferry is also a peer and a seed ([`peer::Swarm`], on librqbit).

pub(crate) mod metainfo;
#[cfg(feature = "swarm")]
pub(crate) mod peer;
pub(crate) mod pieces;
#[cfg(feature = "swarm")]
pub(crate) mod rqbit;
