//! What ferry asks of a BitTorrent engine, and nothing more: read a metainfo's file list, join a
//! torrent's swarm with files ferry opened itself, say how far it got, leave. `ferry pull
//! --swarm` and `ferry serve --seed` are written against [`Swarm`]; `rqbit.rs` implements it
//! on librqbit, and another engine could replace it there alone.
//!
//! Invariants: the engine writes only into [`Slot::Write`] files and reads only [`Slot::Read`]
//! and [`Slot::Write`] ones, by the torrent's file index; pad files (BEP 47) are never files on
//! disk; ferry opened every file (beneath its folder, following no symlink) before the engine
//! sees it. The engine's SHA-1 pieces say which bytes to keep, never that a file is right: the
//! caller checks every file against its sha256 or git blob id. Not here: which files to fetch,
//! publishing, fallback to HTTP (`hub/swarm.rs`).

use std::fs::File;
use std::net::SocketAddr;

/// One file of a torrent, in the metainfo's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Its path in the torrent, `/`-separated, without the torrent's name.
    pub(crate) path: String,
    pub(crate) len: u64,
    /// A BEP 47 pad file (zeros, never stored).
    pub(crate) pad: bool,
}

/// A metainfo, read.
#[derive(Debug, Clone)]
pub(crate) struct Metainfo {
    /// The info hash, hex.
    pub(crate) info_hash: String,
    pub(crate) piece_len: u32,
    pub(crate) entries: Vec<Entry>,
    /// `announce`, then `announce-list`.
    pub(crate) trackers: Vec<String>,
    /// Each piece's SHA-1.
    pub(crate) hashes: Vec<[u8; 20]>,
}

/// Where the bytes of one torrent file live.
#[derive(Debug)]
pub(crate) enum Slot {
    /// A pad file: no bytes on disk.
    Pad,
    /// Not wanted here (filtered out, or the same blob as another file): never read or written.
    Skip,
    /// Complete here, read-only: served to peers.
    Read(File),
    /// To be fetched into this file (which may hold pieces of an earlier run).
    Write(File),
}

/// How far a torrent got.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    /// Still reading back what is on disk (an earlier run's pieces).
    pub(crate) checking: bool,
    /// The engine gave up on the torrent, and why.
    pub(crate) error: Option<String>,
    /// Verified bytes of each torrent file.
    pub(crate) file_done: Vec<u64>,
    /// Bytes received from peers (including pieces that failed their check).
    pub(crate) fetched: u64,
    /// Bytes sent to peers.
    pub(crate) uploaded: u64,
    /// Peers connected now.
    pub(crate) peers: u32,
    /// Peers heard of (tracker, incoming).
    pub(crate) seen: u32,
}

/// How a torrent is joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Join {
    /// Fetch the [`Slot::Write`] files; the engine reads back what is on disk to find the
    /// pieces it has.
    Check,
    /// The pieces ferry knows are on disk and right (one flag per piece): nothing is read back
    /// at start (the engine may still check a few). A fresh download knows it has none; a seed
    /// knows its files were checked against their etags when their pieces were hashed.
    Known(Vec<bool>),
}

impl Metainfo {
    /// The pieces of the torrent.
    pub(crate) fn piece_count(&self) -> usize {
        self.hashes.len()
    }

    /// For each entry, in order: the pieces it spans, and its offset in the torrent (one pass
    /// over the entries, however many).
    pub(crate) fn spans(&self) -> Vec<(std::ops::Range<usize>, u64)> {
        let len = u64::from(self.piece_len.max(1));
        let to = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let mut offset = 0u64;
        self.entries
            .iter()
            .map(|e| {
                let span = (to(offset / len)..to((offset + e.len).div_ceil(len)), offset);
                offset += e.len;
                span
            })
            .collect()
    }
}

/// A BitTorrent engine: one listening socket, any number of torrents.
pub(crate) trait Swarm: Send + Sync + std::fmt::Debug {
    /// Reads a metainfo file (bounded; a malformed one is an error).
    fn read_metainfo(&self, torrent: &[u8]) -> Result<Metainfo, String>;

    /// Joins the swarm of a torrent (its metainfo's bytes, and as [`Swarm::read_metainfo`]
    /// read them), whose files are `slots` (one per entry, in order).
    fn join(
        &self,
        torrent: (&[u8], &Metainfo),
        slots: Vec<Slot>,
        how: Join,
    ) -> Result<Box<dyn Member>, String>;

    /// The address peers reach this engine at.
    fn listen_addr(&self) -> Option<SocketAddr>;
}

/// One torrent joined.
pub(crate) trait Member: Send + Sync + std::fmt::Debug {
    fn status(&self) -> Status;

    /// Leaves the swarm; the files stay as they are.
    fn leave(self: Box<Self>);
}
