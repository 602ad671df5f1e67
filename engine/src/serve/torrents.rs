//! `ferry serve --torrents`: each commit served is also a private BitTorrent torrent
//! (`swarm/metainfo.rs`), published at `GET /api/{type}s/{repo}/torrent/{rev}` (the metainfo)
//! and `GET /api/{type}s/{repo}/magnet/{rev}` (its magnet link), with this server's resolve
//! route as the web seed and the configured trackers as `announce`.
//!
//! Every commit's torrent is built in the background from the start (those a ref names first),
//! or at once on its first request if that comes sooner: every file is read once, checked
//! against its etag and cut into pieces in that one pass (`swarm/pieces.rs`), the pieces kept
//! in ferry's cache folder for the next commit or start that has the same blob. One commit is
//! hashed at a time for the whole server. A request waits up to [`WAIT`] for its torrent, then
//! gets 503 with `Retry-After` and how far the hashing got.
//!
//! Invariants: no torrent is published for a commit that is not whole here or one of whose
//! files does not match its etag (the request gets an error naming the file; the build is
//! tried again after [`RETRY_FAILED`]); files are opened beneath the root following no
//! symlink, as the resolve route opens them. Not here: seeding (`seed.rs`, told of each torrent
//! ready), trackers of our own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::catalog::{Catalog, FileEntry, Repo, Snapshot};
use super::handler::{Body, Request, Response, open_beneath};
use super::range_request::{RangeAnswer, evaluate};
use crate::backend::nofollow::Dir;
use crate::hub::RepoType;
use crate::hub::repo::encode_segment;
use crate::swarm::metainfo::{Info, PAD_DIR, TorrentFile, piece_length};
use crate::swarm::pieces::{BlobPieces, Etag, PieceStore, hash};

/// How long a request waits for a torrent being built before it is told to come back.
const WAIT: Duration = Duration::from_secs(5);
/// What `Retry-After` says meanwhile.
const RETRY_AFTER_S: u64 = 5;
/// How long a failed build is answered from memory before it is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(60);
/// How often a long hashing says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Files hashed at once within a commit.
const MAX_HASHERS: usize = 4;

/// A commit of a repo.
type Key = (RepoType, String, String);

#[derive(Debug)]
enum State {
    Hashing {
        done: Arc<AtomicU64>,
        total: u64,
    },
    Ready(Arc<Info>),
    Failed {
        status: u16,
        why: String,
        at: Instant,
    },
}

/// The torrents of every commit served (built as asked).
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    trackers: Vec<String>,
    store: PieceStore,
    root: Dir,
    states: Mutex<HashMap<Key, State>>,
    changed: Condvar,
    /// Held by the thread hashing a commit: one at a time for the server.
    hashing: Mutex<()>,
    /// With `--seed`: joins each torrent's swarm once it is ready.
    #[cfg(feature = "swarm")]
    seeder: Option<Arc<super::seed::Seeder>>,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The metainfo file (`application/x-bittorrent`).
    Metainfo,
    /// Its magnet link, as text.
    Magnet,
}

impl Format {
    /// What the API action (`torrent`, `magnet`) asks for; `None` for another action.
    pub(crate) fn of(action: &str) -> Option<Format> {
        match action {
            "torrent" => Some(Format::Metainfo),
            "magnet" => Some(Format::Magnet),
            _ => None,
        }
    }
}

/// 501 for a torrent asked of a server started without `--torrents`.
pub(crate) fn not_published() -> Response {
    Response::error(
        501,
        Some("NotImplemented"),
        "this server publishes no torrents (ferry serve --torrents)",
    )
}

impl Publisher {
    /// A publisher of the commits under `root`, announcing `trackers`.
    pub(crate) fn new(root: Dir, trackers: Vec<String>, store: PieceStore) -> Publisher {
        Publisher {
            inner: Arc::new(Inner {
                trackers,
                store,
                root,
                states: Mutex::new(HashMap::new()),
                changed: Condvar::new(),
                hashing: Mutex::new(()),
                #[cfg(feature = "swarm")]
                seeder: None,
            }),
        }
    }

    /// Seeds every torrent once it is ready (call before the first is built).
    #[cfg(feature = "swarm")]
    pub(crate) fn with_seeder(mut self, seeder: super::seed::Seeder) -> Publisher {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.seeder = Some(Arc::new(seeder));
        }
        self
    }

    /// Builds, on one background thread, the torrent of every commit in `catalog` that no
    /// request asked for yet: those a ref names first, then the others. A request for one not
    /// reached yet builds it at once on a thread of its own (one commit hashes at a time).
    pub(crate) fn prepare_all(&self, catalog: &Catalog) {
        let mut commits: Vec<(bool, Key, Arc<Snapshot>)> = catalog
            .repos()
            .flat_map(|repo| {
                repo.snapshots.values().map(|snap| {
                    let named = repo.refs.values().any(|c| *c == snap.commit);
                    let key = (repo.kind, repo.id.clone(), snap.commit.clone());
                    (!named, key, Arc::clone(snap))
                })
            })
            .collect();
        commits.sort_by(|a, b| (a.0, &a.1.1, &a.1.2).cmp(&(b.0, &b.1.1, &b.1.2)));
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("ferry-torrents".into())
            .spawn(move || {
                for (_, key, snap) in commits {
                    let done = {
                        let mut states = inner.lock();
                        if states.contains_key(&key) {
                            continue;
                        }
                        hashing(&mut states, &key, &snap)
                    };
                    inner.build_and_keep(key, &snap, &done);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("torrents are built as asked, not ahead: {e}");
        }
    }

    /// Answers a request for the torrent of `snap`, a commit of `repo`; `base` is the URL this
    /// client reached the server by (the web seed is built on it).
    pub(crate) fn answer(
        &self,
        base: &str,
        repo: &Repo,
        snap: &Arc<Snapshot>,
        format: Format,
    ) -> Response {
        let key = (repo.kind, repo.id.clone(), snap.commit.clone());
        let deadline = Instant::now() + WAIT;
        let mut states = self.inner.lock();
        loop {
            match states.get(&key) {
                Some(State::Ready(info)) => {
                    let info = Arc::clone(info);
                    drop(states);
                    return self.respond(base, repo, snap, &info, format);
                }
                Some(State::Failed { status, why, at }) if at.elapsed() < RETRY_FAILED => {
                    return Response::error(*status, Some("TorrentUnavailable"), why);
                }
                Some(State::Hashing { done, total }) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return preparing(&snap.commit, done.load(Ordering::Relaxed), *total);
                    }
                    states = self
                        .inner
                        .changed
                        .wait_timeout(states, deadline - now)
                        .map_or_else(|e| e.into_inner().0, |(g, _)| g);
                }
                _ => {
                    let done = hashing(&mut states, &key, snap);
                    let inner = Arc::clone(&self.inner);
                    let (snap, key2) = (Arc::clone(snap), key.clone());
                    let spawned = std::thread::Builder::new()
                        .name("ferry-torrent".into())
                        .spawn(move || inner.build_and_keep(key2, &snap, &done));
                    if let Err(e) = spawned {
                        states.remove(&key);
                        return Response::error(503, None, &format!("cannot start hashing: {e}"));
                    }
                }
            }
        }
    }

    fn respond(
        &self,
        base: &str,
        repo: &Repo,
        snap: &Snapshot,
        info: &Info,
        format: Format,
    ) -> Response {
        let ids: Vec<String> = repo.id.split('/').map(encode_segment).collect();
        let seed = format!(
            "{base}/{}{}/resolve/",
            repo.kind.url_prefix(),
            ids.join("/")
        );
        let trackers = &self.inner.trackers;
        let (content_type, body) = match format {
            Format::Metainfo => (
                "application/x-bittorrent",
                info.metainfo(
                    trackers,
                    Some(&seed),
                    &format!("{} {} at {}", repo.kind.plural(), repo.id, snap.commit),
                    snap.last_modified,
                ),
            ),
            Format::Magnet => (
                "text/plain; charset=utf-8",
                format!("{}\n", info.magnet(trackers, Some(&seed))).into_bytes(),
            ),
        };
        let name = repo.id.rsplit('/').next().unwrap_or("repo");
        let mut headers = vec![
            ("Content-Type", content_type.to_owned()),
            ("X-Repo-Commit", snap.commit.clone()),
            ("X-Info-Hash", hex::encode(info.info_hash())),
        ];
        if format == Format::Metainfo {
            headers.push((
                "Content-Disposition",
                format!(
                    "attachment; filename=\"{}-{}.torrent\"",
                    super::route::header_safe(name).replace('"', "%22"),
                    &snap.commit[..snap.commit.len().min(12)]
                ),
            ));
        }
        Response {
            status: 200,
            headers,
            body: Body::Bytes(body),
        }
    }
}

impl Publisher {
    /// The answer to a web seed's request for `path` in `snap` when it names one of the
    /// commit's pad files (`.pad/N`, BEP 47) and the commit's torrent is built: `N` zeros, or
    /// the range asked of them. Clients that do not know pad files (aria2, Transmission 3) ask
    /// for them like any file. `None` for anything else.
    pub(crate) fn pad(
        &self,
        req: &Request<'_>,
        repo: &Repo,
        snap: &Snapshot,
        path: &str,
    ) -> Option<Response> {
        let digits = path.strip_prefix(PAD_DIR)?.strip_prefix('/')?;
        // The one spelling a torrent uses: decimal, no sign, no leading zero.
        if digits.is_empty()
            || digits.len() > 10
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let len: u64 = digits.parse().ok()?;
        let key = (repo.kind, repo.id.clone(), snap.commit.clone());
        match self.inner.lock().get(&key) {
            Some(State::Ready(info)) if info.has_pad(len) => {}
            _ => return None,
        }
        let mut headers = vec![
            ("Content-Type", "application/octet-stream".to_owned()),
            ("Accept-Ranges", "bytes".to_owned()),
            ("X-Repo-Commit", snap.commit.clone()),
        ];
        let (status, n) = match evaluate(req.range, len) {
            RangeAnswer::Full => (200, len),
            RangeAnswer::Partial { start, end } => {
                headers.push(("Content-Range", format!("bytes {start}-{end}/{len}")));
                (206, end - start + 1)
            }
            RangeAnswer::Unsatisfiable => {
                headers.push(("Content-Range", format!("bytes */{len}")));
                (416, 0)
            }
        };
        // At most one piece (16 MiB); zeroed memory from the allocator is the kernel's zero
        // page until written, so sending it costs no physical memory.
        let n = usize::try_from(n).ok()?;
        let body = if req.method == "HEAD" {
            Body::Announced { len: n as u64 }
        } else {
            Body::Bytes(vec![0u8; n])
        };
        Some(Response {
            status,
            headers,
            body,
        })
    }
}

/// Marks `key` as being hashed; returns the count of its bytes hashed so far.
fn hashing(states: &mut HashMap<Key, State>, key: &Key, snap: &Snapshot) -> Arc<AtomicU64> {
    let done = Arc::new(AtomicU64::new(0));
    let total = snap.files.values().map(|f| f.size).sum();
    states.insert(
        key.clone(),
        State::Hashing {
            done: Arc::clone(&done),
            total,
        },
    );
    done
}

/// 503: still hashing, come back.
fn preparing(commit: &str, done: u64, total: u64) -> Response {
    let mut r = Response::error(
        503,
        Some("TorrentPreparing"),
        &format!(
            "the torrent of commit {commit} is being prepared: {done} of {total} bytes hashed"
        ),
    );
    r.headers.push(("Retry-After", RETRY_AFTER_S.to_string()));
    r
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn build_and_keep(&self, key: Key, snap: &Snapshot, done: &AtomicU64) {
        let kept = AtomicU64::new(0);
        let built = {
            let _one = self.hashing.lock().unwrap_or_else(|e| e.into_inner());
            self.build(snap, done, &kept)
        };
        let state = match built {
            Ok(info) => {
                let kept = kept.load(Ordering::Relaxed);
                tracing::info!(
                    repo = %key.1,
                    commit = %key.2,
                    info_hash = %hex::encode(info.info_hash()),
                    hashed_bytes = done.load(Ordering::Relaxed) - kept,
                    kept_bytes = kept,
                    "torrent ready"
                );
                State::Ready(Arc::new(info))
            }
            Err((status, why)) => {
                tracing::warn!(repo = %key.1, commit = %key.2, "no torrent: {why}");
                State::Failed {
                    status,
                    why,
                    at: Instant::now(),
                }
            }
        };
        #[cfg(feature = "swarm")]
        let ready = match (&state, &self.seeder) {
            (State::Ready(info), Some(seeder)) => Some((Arc::clone(info), Arc::clone(seeder))),
            _ => None,
        };
        self.lock().insert(key, state);
        self.changed.notify_all();
        #[cfg(feature = "swarm")]
        if let Some((info, seeder)) = ready {
            seeder.seed(&info, snap);
        }
    }

    /// The commit's info dictionary: every file's pieces, kept or hashed now.
    /// `kept` counts the bytes whose pieces were kept from before (not read now).
    fn build(
        &self,
        snap: &Snapshot,
        done: &AtomicU64,
        kept: &AtomicU64,
    ) -> Result<Info, (u16, String)> {
        let files: Vec<(&String, &FileEntry)> = snap.files.iter().collect();
        if let Some((path, _)) = files.iter().find(|(_, f)| f.disk.is_none()) {
            return Err((
                409,
                format!(
                    "{path} of commit {} is not on this server (a partial pull): no torrent \
                     of an incomplete commit",
                    snap.commit
                ),
            ));
        }
        let piece_len = piece_length(
            files.iter().map(|(_, f)| f.size).sum(),
            files.iter().filter(|(_, f)| f.size > 0).count() as u64,
        );
        // Largest first, so the workers end together.
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(files[i].1.size));
        let slots: Vec<Mutex<Option<Arc<BlobPieces>>>> =
            files.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let failed: Mutex<Option<String>> = Mutex::new(None);
        let stop = AtomicBool::new(false);
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_HASHERS)
            .min(files.len().max(1));
        let total: u64 = files.iter().map(|(_, f)| f.size).sum();
        std::thread::scope(|s| {
            // Says how far a long hashing got, until the workers are done (the sender dropped).
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            s.spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(PROGRESS_EVERY)
                {
                    tracing::info!(
                        commit = %snap.commit,
                        "hashing for its torrent: {} of {}",
                        crate::units::human_bytes(done.load(Ordering::Relaxed)),
                        crate::units::human_bytes(total)
                    );
                }
            });
            let workers: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                                break;
                            };
                            let (path, f) = files[i];
                            match self.pieces_of(f, piece_len, done, kept) {
                                Ok(p) => {
                                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) =
                                        Some(Arc::new(p));
                                }
                                Err(why) => {
                                    stop.store(true, Ordering::Relaxed);
                                    failed
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .get_or_insert(format!("{path}: {why}"));
                                }
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
            drop(tx);
        });
        if let Some(why) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err((
                500,
                format!("commit {}: {why}; no torrent published", snap.commit),
            ));
        }
        let mut torrent_files = Vec::with_capacity(files.len());
        for ((path, _), slot) in files.iter().zip(slots) {
            let pieces = slot
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .ok_or_else(|| (500, format!("{path}: not hashed")))?;
            torrent_files.push(TorrentFile {
                path: (*path).clone(),
                pieces,
            });
        }
        Info::new(&snap.commit, piece_len, &torrent_files).map_err(|why| (409, why))
    }

    /// One file's pieces: the kept record, or a read of the file now (checked against its etag).
    fn pieces_of(
        &self,
        f: &FileEntry,
        piece_len: u32,
        done: &AtomicU64,
        kept: &AtomicU64,
    ) -> Result<BlobPieces, String> {
        if let Some(pieces) = self.store.load(f.etag(), f.size, piece_len) {
            done.fetch_add(f.size, Ordering::Relaxed);
            kept.fetch_add(f.size, Ordering::Relaxed);
            return Ok(pieces);
        }
        let disk = f.disk.as_ref().ok_or("not here")?;
        let file = open_beneath(&self.root, disk).map_err(|e| e.to_string())?;
        let etag = match &f.lfs {
            Some(lfs) => Etag::Sha256(&lfs.sha256),
            None => Etag::GitBlob(&f.oid),
        };
        let pieces = hash(file, f.size, etag, piece_len, done).map_err(|e| e.to_string())?;
        self.store.save(f.etag(), &pieces);
        Ok(pieces)
    }
}
