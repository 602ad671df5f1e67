//! `ferry serve --seed`: the origin seed of every torrent `--torrents` publishes. Each commit
//! joins the swarm when its torrent is ready, with the served files read in place, read-only,
//! opened beneath the root following no symlink, as the resolve route opens them.
//!
//! A torrent is ready only after every file was checked against its etag in the pass that cut
//! it into pieces, or its pieces were kept from such a pass, so the seed claims every piece
//! without reading the files again at start (librqbit's fastresume, `swarm/rqbit.rs`); librqbit
//! still checks one piece per file and a sample of the others first. Peers check every piece
//! they get. Not here: publishing (`torrents.rs`), fetching from a swarm.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use super::catalog::Snapshot;
use super::handler::open_beneath;
use crate::backend::nofollow::Dir;
use crate::swarm::metainfo::Info;
use crate::swarm::peer::{Join, Member, Slot, Swarm};
use crate::swarm::rqbit::Rqbit;

/// The server's BitTorrent seed.
#[derive(Debug)]
pub(crate) struct Seeder {
    swarm: Rqbit,
    root: Dir,
    trackers: Vec<String>,
    joined: Mutex<Joined>,
}

/// The torrents joined (kept joined while the server runs), and their info hashes.
#[derive(Debug, Default)]
struct Joined {
    hashes: HashSet<[u8; 20]>,
    members: Vec<Box<dyn Member>>,
}

impl Seeder {
    /// A seed listening on `listen` for the files under `root`, announcing to `trackers`, with
    /// at most `peers` peers per torrent at once; its state (fastresume bitfields) goes to
    /// `state_dir`.
    pub(crate) fn start(
        (listen, peers): (SocketAddr, usize),
        state_dir: PathBuf,
        root: Dir,
        trackers: Vec<String>,
    ) -> Result<Seeder, String> {
        let swarm = Rqbit::start(listen, Some(state_dir), Some(peers.max(1)))?;
        tracing::info!(listen = ?swarm.listen_addr(), "seeding the published torrents");
        Ok(Seeder {
            swarm,
            root,
            trackers,
            joined: Mutex::new(Joined::default()),
        })
    }

    /// Seeds the torrent `info` of `snap` (once; a second call does nothing).
    pub(crate) fn seed(&self, info: &Info, snap: &Snapshot) {
        let hash = info.info_hash();
        if !self.lock().hashes.insert(hash) {
            return;
        }
        let torrent = info.metainfo(&self.trackers, None, "", snap.last_modified);
        let joined = self.swarm.read_metainfo(&torrent).and_then(|meta| {
            let slots = meta
                .entries
                .iter()
                .map(|e| {
                    if e.pad {
                        return Ok(Slot::Pad);
                    }
                    let disk = snap
                        .files
                        .get(&e.path)
                        .and_then(|f| f.disk.as_ref())
                        .ok_or_else(|| format!("{} is not here", e.path))?;
                    open_beneath(&self.root, disk)
                        .map(Slot::Read)
                        .map_err(|err| format!("{}: {err}", e.path))
                })
                .collect::<Result<Vec<Slot>, String>>()?;
            let all = vec![true; meta.piece_count()];
            self.swarm.join((&torrent, &meta), slots, Join::Known(all))
        });
        match joined {
            Ok(member) => {
                tracing::info!(commit = %snap.commit, info_hash = %hex::encode(hash), "seeding");
                self.lock().members.push(member);
            }
            Err(why) => {
                tracing::warn!(commit = %snap.commit, "not seeding: {why}");
                self.lock().hashes.remove(&hash);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Joined> {
        self.joined.lock().unwrap_or_else(|e| e.into_inner())
    }
}
