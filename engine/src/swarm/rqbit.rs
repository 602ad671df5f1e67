//! [`Swarm`] on librqbit: one librqbit session on a single-threaded tokio runtime of its own,
//! driven by one thread named `ferry-bt` (librqbit then writes and checks pieces on that thread:
//! on a multi-threaded runtime each 16 KiB block goes through `block_in_place`, a hand-off
//! between threads that cost more CPU than the bytes; docs/decisions.md). TCP only, IPv4 and
//! IPv6, no DHT, no local service discovery, no UPnP; a torrent's trackers are the only source
//! of peers. librqbit reads and writes through [`Files`], the files ferry opened, so the pieces
//! land in ferry's partial files and are served from ferry's blobs in place.
//!
//! Joining without reading every file back ([`Join::Known`]: a seed, a fresh download) uses
//! librqbit's fastresume: before the torrent is added, a bitfield of the pieces ferry knows it
//! has is written where librqbit's JSON store keeps it, and [`Files`]' factory answers
//! librqbit's "is this the file-system storage" question with yes, which that store requires.
//! librqbit still checks one piece of every file and a sample of the others against the
//! metainfo before it trusts the bitfield.
//!
//! librqbit picks pieces in file order, so peers that start together would all ask the origin
//! for the same pieces first: each peer starts at a random byte of what it fetches and selects
//! the files from there on, then all of them ([`Spread`]).
//!
//! Invariants: a write to anything but a [`Slot::Write`] file is refused, and so is any access
//! to a pad or skipped file (librqbit never asks for pads; a read error only marks a piece as
//! missing). Not here: what to fetch and how a file is checked and published.

use std::any::TypeId;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use librqbit::storage::filesystem::FilesystemStorageFactory;
use librqbit::storage::{BoxStorageFactory, StorageFactory, StorageFactoryExt, TorrentStorage};
use librqbit::{
    AddTorrent, AddTorrentOptions, ListenerMode, ListenerOptions, ManagedTorrent,
    ManagedTorrentShared, Session, SessionOptions, SessionPersistenceConfig, TorrentMetadata,
    TorrentStatsState,
};

use super::peer::{Entry, Join, Member, Metainfo, Slot, Status, Swarm};

/// A metainfo larger than this is refused (a 400 GB repo's, at the smallest pieces ferry
/// publishes, is ~30 MB; other publishers' are smaller still).
pub(crate) const MAX_METAINFO: usize = 64 << 20;
/// How long adding a torrent may take (its files are open already; a seed's spot check reads a
/// few pieces).
const ADD_TIMEOUT: Duration = Duration::from_secs(120);

/// A single-threaded tokio runtime driven by a thread of its own: futures are spawned on it and
/// their results waited for from any thread.
#[derive(Debug)]
struct Driver {
    handle: tokio::runtime::Handle,
    stop: Option<flume::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Driver {
    fn start() -> Result<Driver, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the BitTorrent runtime: {e}"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = flume::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("ferry-bt".into())
            .spawn(move || {
                // Ends when the sender is dropped or sends.
                let _ = runtime.block_on(stopped.recv_async());
            })
            .map_err(|e| format!("cannot start the BitTorrent thread: {e}"))?;
        Ok(Driver {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `fut` on the runtime and waits for its result.
    fn run<F>(&self, fut: F) -> Result<F::Output, String>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = flume::bounded(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| "the BitTorrent runtime stopped".to_string())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A librqbit session.
pub(crate) struct Rqbit {
    driver: Arc<Driver>,
    session: Arc<Session>,
    /// Where the fastresume bitfields of [`Join::Known`] go.
    state_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Rqbit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rqbit")
            .field("listen", &self.session.listen_addr())
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl Rqbit {
    /// A session listening on `listen` (port 0: one the system picks, announced as is). With
    /// `state_dir`, torrents can be joined as [`Join::Known`]; the folder is ferry's and
    /// its last session's state is dropped. `peer_limit` bounds the peers connected per torrent
    /// (librqbit's default: 128); a peer past it is turned away.
    pub(crate) fn start(
        listen: SocketAddr,
        state_dir: Option<PathBuf>,
        peer_limit: Option<usize>,
    ) -> Result<Rqbit, String> {
        // librqbit announces no port of its own for a loopback address; a port picked here is
        // announced for every address.
        let listen = if listen.port() == 0 {
            let picked = std::net::TcpListener::bind(listen)
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("cannot listen for peers on {listen}: {e}"))?;
            SocketAddr::new(listen.ip(), picked.port())
        } else {
            listen
        };
        if let Some(dir) = &state_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            // Torrents are joined anew by every start; librqbit must not bring back the last ones.
            let _ = std::fs::remove_file(dir.join("session.json"));
        }
        let driver = Arc::new(Driver::start()?);
        let opts = SessionOptions {
            dht: None,
            disable_local_service_discovery: true,
            persistence: state_dir
                .as_ref()
                .map(|dir| SessionPersistenceConfig::Json {
                    folder: Some(dir.clone()),
                }),
            fastresume: state_dir.is_some(),
            peer_limit,
            ipv4_only: listen.is_ipv4(),
            listen: Some(ListenerOptions {
                mode: ListenerMode::TcpOnly,
                listen_addr: listen,
                enable_upnp_port_forwarding: false,
                announce_port: Some(listen.port()),
                ipv4_only: listen.is_ipv4(),
                ..Default::default()
            }),
            ..Default::default()
        };
        // librqbit wants a default output folder; every torrent has ferry's storage instead.
        let unused = std::env::temp_dir();
        let session = driver
            .run(Session::new_with_opts(unused, opts))?
            .map_err(|e| format!("cannot start the BitTorrent session on {listen}: {e:#}"))?;
        Ok(Rqbit {
            driver,
            session,
            state_dir,
        })
    }
}

impl Swarm for Rqbit {
    fn read_metainfo(&self, torrent: &[u8]) -> Result<Metainfo, String> {
        read_metainfo(torrent)
    }

    fn join(
        &self,
        (torrent, meta): (&[u8], &Metainfo),
        slots: Vec<Slot>,
        how: Join,
    ) -> Result<Box<dyn Member>, String> {
        if slots.len() != meta.entries.len() {
            return Err(format!(
                "{} files given for a torrent of {}",
                slots.len(),
                meta.entries.len()
            ));
        }
        let wanted: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Read(_) | Slot::Write(_)))
            .map(|(i, _)| i)
            .collect();
        if wanted.is_empty() {
            return Err("no file of the torrent is wanted".into());
        }
        let known = match how {
            Join::Check => false,
            Join::Known(have) => {
                let dir = self
                    .state_dir
                    .as_ref()
                    .ok_or("this session keeps no state: pieces cannot be given")?;
                write_bitfield(dir, meta, &have)?;
                true
            }
        };
        let spread = Spread::new(meta, &slots, random_below);
        let only = spread
            .as_ref()
            .map_or_else(|| wanted.clone(), |s| s.first_selection(&slots));
        let files = Files {
            slots: Arc::new(slots),
            masquerade: known,
        };
        let session = Arc::clone(&self.session);
        let torrent = torrent.to_vec();
        let add = async move {
            let added = session.add_torrent(
                AddTorrent::from_bytes(torrent),
                Some(AddTorrentOptions {
                    storage_factory: Some(files.boxed()),
                    only_files: Some(only),
                    overwrite: true,
                    ..Default::default()
                }),
            );
            let handle = tokio::time::timeout(ADD_TIMEOUT, added)
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| format!("{e:#}"))?
                .into_handle()
                .ok_or_else(|| "not added".to_string())?;
            Ok::<_, String>(handle)
        };
        let handle = self
            .driver
            .run(add)
            .and_then(|r| r)
            .map_err(|e| format!("cannot join the swarm of {}: {e}", meta.info_hash))?;
        Ok(Box::new(Joined {
            handle,
            session: self.session.clone(),
            driver: Arc::clone(&self.driver),
            spread: Mutex::new(spread.map(|s| (s, wanted.into_iter().collect()))),
        }))
    }

    fn listen_addr(&self) -> Option<SocketAddr> {
        self.session.listen_addr()
    }
}

impl Drop for Rqbit {
    fn drop(&mut self) {
        let session = Arc::clone(&self.session);
        let _ = self.driver.run(async move { session.stop().await });
    }
}

/// Whether this client can announce to `tracker`: librqbit is built without TLS (no OpenSSL,
/// no second rustls), so http:// and udp:// only.
pub(crate) fn can_announce(tracker: &str) -> bool {
    tracker.starts_with("http://") || tracker.starts_with("udp://")
}

/// Reads `torrent` with librqbit's parser.
fn read_metainfo(torrent: &[u8]) -> Result<Metainfo, String> {
    if torrent.len() > MAX_METAINFO {
        return Err(format!(
            "a metainfo of {} bytes (at most {MAX_METAINFO})",
            torrent.len()
        ));
    }
    let t = librqbit::torrent_from_bytes(torrent).map_err(|e| format!("not a metainfo: {e}"))?;
    let trackers = t
        .iter_announce()
        .filter_map(|u| std::str::from_utf8(u.as_ref()).ok().map(str::to_owned))
        .collect();
    let info = t
        .info
        .data
        .validate()
        .map_err(|e| format!("not a valid metainfo: {e}"))?;
    let entries = info
        .iter_file_details()
        .map(|d| Entry {
            path: d.filename.to_vec().join("/"),
            len: d.len,
            pad: d.attrs().padding,
        })
        .collect();
    let hashes = (0..info.lengths().total_pieces())
        .map(|i| {
            info.info()
                .get_hash(i)
                .and_then(|h| <[u8; 20]>::try_from(h).ok())
                .ok_or_else(|| format!("no hash for piece {i}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Metainfo {
        hashes,
        info_hash: hex::encode(t.info_hash.0),
        piece_len: info.lengths().default_piece_length(),
        entries,
        trackers,
    })
}

/// Writes `<info hash>.bitv` with the pieces of `have` set, where librqbit's JSON store reads
/// it (most significant bit first, spare bits zero).
fn write_bitfield(dir: &Path, meta: &Metainfo, have: &[bool]) -> Result<(), String> {
    let pieces = meta.piece_count();
    if have.len() != pieces {
        return Err(format!(
            "{} pieces given, the torrent has {pieces}",
            have.len()
        ));
    }
    let mut bits = vec![0u8; pieces.div_ceil(8)];
    for (i, _) in have.iter().enumerate().filter(|(_, h)| **h) {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    let path = dir.join(format!("{}.bitv", meta.info_hash));
    std::fs::write(&path, &bits).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Where a peer starts: librqbit fetches its selected files in the order of their names, and
/// every peer of a fleet would start with the first file's first pieces, each asking the origin
/// for them (measured: 2.37 copies of the repo from the origin for 8 peers; docs/decisions.md).
/// So a peer first selects the files it fetches from a random byte of them on, and all of them
/// once those are nearly done. A file is the unit: a one-file torrent is not spread.
#[derive(Debug, PartialEq)]
struct Spread {
    /// The files to fetch first (torrent indexes).
    first: Vec<usize>,
    /// Their lengths.
    lens: Vec<u64>,
    /// How little of them may be left when every file is selected: about what is in flight.
    slack: u64,
}

impl Spread {
    /// The files of `slots` to write, in librqbit's order (by path), from the one holding a
    /// random byte of them on (`random_below(n)`: uniform in `0..n`); None when that is all.
    fn new(meta: &Metainfo, slots: &[Slot], random_below: fn(u64) -> u64) -> Option<Spread> {
        let mut order: Vec<usize> = (0..slots.len())
            .filter(|&i| matches!(slots[i], Slot::Write(_)))
            .collect();
        order.sort_by(|&a, &b| {
            Path::new(&meta.entries[a].path).cmp(Path::new(&meta.entries[b].path))
        });
        let total: u64 = order.iter().map(|&i| meta.entries[i].len).sum();
        if order.len() < 2 || total == 0 {
            return None;
        }
        let at = random_below(total);
        let mut seen = 0;
        let start = order.iter().position(|&i| {
            seen += meta.entries[i].len;
            seen > at
        })?;
        if start == 0 {
            return None;
        }
        let first = order.split_off(start);
        Some(Spread {
            lens: first.iter().map(|&i| meta.entries[i].len).collect(),
            first,
            slack: u64::from(meta.piece_len) * 8,
        })
    }

    /// What librqbit selects at first: the first files, and those to seed.
    fn first_selection(&self, slots: &[Slot]) -> Vec<usize> {
        let mut only: Vec<usize> = (0..slots.len())
            .filter(|&i| matches!(slots[i], Slot::Read(_)))
            .collect();
        only.extend(&self.first);
        only
    }

    /// Whether so little of the first files is left that every file should be selected.
    fn nearly_done(&self, file_done: &[u64]) -> bool {
        let left: u64 = self
            .first
            .iter()
            .zip(&self.lens)
            .map(|(&i, &len)| len - file_done.get(i).copied().unwrap_or(0).min(len))
            .sum();
        left <= self.slack
    }
}

/// A uniform random number in `0..n` (`n` > 0), from the standard library's per-process keys.
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % n
}

/// One torrent in the session.
struct Joined {
    handle: Arc<ManagedTorrent>,
    session: Arc<Session>,
    driver: Arc<Driver>,
    /// Until every wanted file is selected: where this peer started, and every wanted file.
    spread: Mutex<Option<(Spread, HashSet<usize>)>>,
}

impl Joined {
    /// Selects every wanted file once the first ones are nearly done.
    fn widen(&self, live: bool, file_done: &[u64]) {
        let mut spread = self.spread.lock().unwrap_or_else(|e| e.into_inner());
        let Some((first, all)) = spread.as_ref() else {
            return;
        };
        if !live || !first.nearly_done(file_done) {
            return;
        }
        let (session, handle, all) = (
            Arc::clone(&self.session),
            Arc::clone(&self.handle),
            all.clone(),
        );
        match self
            .driver
            .run(async move { session.update_only_files(&handle, &all).await })
        {
            Ok(Ok(())) => {
                tracing::debug!(
                    "every file selected, after the {} this peer started with",
                    first.first.len()
                );
                *spread = None;
            }
            Ok(Err(e)) => tracing::debug!("selecting every file: {e:#}"),
            Err(e) => tracing::debug!("selecting every file: {e}"),
        }
    }
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("info_hash", &self.handle.info_hash())
            .finish_non_exhaustive()
    }
}

impl Member for Joined {
    fn status(&self) -> Status {
        let s = self.handle.stats();
        self.widen(matches!(s.state, TorrentStatsState::Live), &s.file_progress);
        let live = s.live.as_ref().map(|l| &l.snapshot);
        Status {
            checking: matches!(s.state, TorrentStatsState::Initializing { .. }),
            error: s.error.clone(),
            file_done: s.file_progress.clone(),
            fetched: live.map_or(0, |l| l.fetched_bytes),
            uploaded: s.uploaded_bytes,
            peers: live.map_or(0, |l| l.peer_stats.live),
            seen: live.map_or(0, |l| l.peer_stats.seen),
        }
    }

    fn leave(self: Box<Self>) {
        let id = self.handle.id();
        let session = Arc::clone(&self.session);
        match self
            .driver
            .run(async move { session.delete(id.into(), false).await })
        {
            Ok(Err(e)) => tracing::debug!("leaving the swarm: {e:#}"),
            Err(e) => tracing::debug!("leaving the swarm: {e}"),
            Ok(Ok(())) => {}
        }
    }
}

/// librqbit's storage for one torrent: the files ferry opened, by the torrent's file index.
#[derive(Clone)]
struct Files {
    slots: Arc<Vec<Slot>>,
    /// Claim to be librqbit's file-system storage, which its fastresume store requires.
    masquerade: bool,
}

impl StorageFactory for Files {
    type Storage = Files;

    fn create(&self, _: &ManagedTorrentShared, meta: &TorrentMetadata) -> anyhow::Result<Files> {
        anyhow::ensure!(
            meta.file_infos.len() == self.slots.len(),
            "the torrent has {} files, ferry opened {}",
            meta.file_infos.len(),
            self.slots.len()
        );
        Ok(self.clone())
    }

    fn is_type_id(&self, type_id: TypeId) -> bool {
        type_id == TypeId::of::<Self>()
            || (self.masquerade && type_id == TypeId::of::<FilesystemStorageFactory>())
    }

    fn clone_box(&self) -> BoxStorageFactory {
        self.clone().boxed()
    }
}

impl Files {
    fn readable(&self, i: usize) -> anyhow::Result<&std::fs::File> {
        match self.slots.get(i) {
            Some(Slot::Read(f) | Slot::Write(f)) => Ok(f),
            _ => anyhow::bail!("file {i} of the torrent is not here"),
        }
    }
}

impl TorrentStorage for Files {
    fn init(&mut self, _: &ManagedTorrentShared, _: &TorrentMetadata) -> anyhow::Result<()> {
        Ok(())
    }

    fn pread_exact(&self, file_id: usize, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        Ok(self.readable(file_id)?.read_exact_at(buf, offset)?)
    }

    fn pwrite_all(&self, file_id: usize, offset: u64, buf: &[u8]) -> anyhow::Result<()> {
        match self.slots.get(file_id) {
            Some(Slot::Write(f)) => Ok(f.write_all_at(buf, offset)?),
            _ => anyhow::bail!("file {file_id} of the torrent is not written here"),
        }
    }

    fn remove_file(&self, _: usize, _: &Path) -> anyhow::Result<()> {
        // ferry removes its own files.
        Ok(())
    }

    fn remove_directory_if_empty(&self, _: &Path) -> anyhow::Result<()> {
        Ok(())
    }

    fn ensure_file_length(&self, file_id: usize, length: u64) -> anyhow::Result<()> {
        match self.slots.get(file_id) {
            // ferry sized (and preallocated) it; a longer one is an earlier run's, cut to size.
            Some(Slot::Write(f)) => Ok(f.set_len(length)?),
            Some(Slot::Read(f)) => {
                let have = f.metadata()?.len();
                anyhow::ensure!(have == length, "file {file_id}: {have} bytes, not {length}");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn take(&self) -> anyhow::Result<Box<dyn TorrentStorage>> {
        Ok(Box::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots for `kinds` (`w` write, `r` read, `p` pad, `s` skip), write slots on a temp file.
    fn slots(kinds: &str) -> Vec<Slot> {
        kinds
            .chars()
            .map(|k| match k {
                'w' => Slot::Write(tempfile::tempfile().expect("tmp")),
                'r' => Slot::Read(tempfile::tempfile().expect("tmp")),
                'p' => Slot::Pad,
                _ => Slot::Skip,
            })
            .collect()
    }

    fn meta(entries: &[(&str, u64)]) -> Metainfo {
        Metainfo {
            info_hash: "00".repeat(20),
            piece_len: 1 << 10,
            entries: entries
                .iter()
                .map(|&(path, len)| Entry {
                    path: path.to_owned(),
                    len,
                    pad: path.starts_with(".pad/"),
                })
                .collect(),
            trackers: Vec::new(),
            hashes: Vec::new(),
        }
    }

    #[test]
    fn a_peer_starts_at_the_file_holding_its_random_byte_in_name_order() {
        // Torrent order is not name order: librqbit sorts by path, so does the spread.
        let m = meta(&[
            ("b.bin", 100_000),
            (".pad/1", 100),
            ("a.bin", 50_000),
            ("c.json", 10),
            ("d.bin", 200_000),
        ]);
        let s = slots("wpwrw");
        // Bytes 0..50,000 are a.bin's: no spread, every file at once.
        assert_eq!(Spread::new(&m, &s, |_| 0), None);
        assert_eq!(Spread::new(&m, &s, |_| 49_999), None);
        // From b.bin on (c.json is read-only, not fetched).
        let from_b = Spread::new(&m, &s, |_| 50_000).expect("spread");
        assert_eq!(from_b.first, vec![0, 4]);
        assert_eq!(from_b.lens, vec![100_000, 200_000]);
        assert_eq!(from_b.first_selection(&s), vec![3, 0, 4]);
        let from_d = Spread::new(&m, &s, |n| n - 1).expect("spread");
        assert_eq!(from_d.first, vec![4]);
        // One file to fetch: nothing to spread.
        assert_eq!(Spread::new(&m, &slots("wpsrs"), |n| n - 1), None);
    }

    #[test]
    fn every_file_is_selected_once_the_first_are_within_the_slack() {
        let m = meta(&[("a", 100_000), ("b", 100_000)]);
        let s = Spread::new(&m, &slots("ww"), |n| n - 1).expect("spread");
        assert_eq!(s.slack, 8 << 10);
        assert!(!s.nearly_done(&[0, 0]));
        assert!(!s.nearly_done(&[100_000, 100_000 - (8 << 10) - 1]));
        assert!(s.nearly_done(&[0, 100_000 - (8 << 10)]));
        // librqbit's progress past a file's length counts as the whole file.
        assert!(s.nearly_done(&[0, u64::MAX]));
        // No progress reported yet.
        assert!(!s.nearly_done(&[]));
    }
}
