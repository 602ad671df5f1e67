//! `ferry pull --swarm`: the bytes of a commit from a BitTorrent swarm of the machines that pull
//! it too, with the endpoint's `ferry serve --torrents --seed` as the origin seed, through
//! [`crate::swarm::peer::Swarm`].
//!
//! The metainfo comes from the endpoint and must match the listing (every file it names is
//! listed with that size; pad files are BEP 47's), or it is not used. Files shorter than half a
//! piece come over HTTP first (the swarm would fetch their pads' zeros too). Each other missing
//! blob is fetched into `BLOB.ferry-swarm` beside its final name, preallocated; a stopped pull's
//! pieces there are read back and kept by the next one. A file the swarm completed is checked like an
//! HTTP download (its sha256 or git blob id against the listing, never the torrent's SHA-1
//! pieces), made durable, then renamed to its final name. What the swarm cannot bring (no
//! metainfo, no tracker, no peer, nothing new for [`SwarmOptions::stall`], a file that fails
//! its check) goes to the HTTP path, and the report says why. Afterwards the commit is seeded
//! for [`SwarmOptions::seed_for`].
//!
//! Not here: the BitTorrent protocol (librqbit, `swarm/rqbit.rs`), the HTTP path and
//! publishing names (`pull.rs`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::fs::OFlags;
use serde::Serialize;

use super::error::HubError;
use super::layout::Place;
use super::listing::RemoteFile;
use super::pull::{PullOptions, SWARM_SUFFIX};
use crate::backend::nofollow::Dir;
use crate::engine::Engine;
use crate::swarm::peer::{Join, Member, Metainfo, Slot, Swarm};
use crate::swarm::rqbit::{Rqbit, can_announce};
use crate::verify::{Checksum, mark};

/// How often the swarm's progress is read.
const TICK: Duration = Duration::from_millis(250);
/// How often `-v` says how far the swarm got.
const SAY_EVERY: Duration = Duration::from_millis(500);

/// What [`SwarmOptions::progress`] calls.
pub type ProgressFn = Arc<dyn Fn(&SwarmProgress) + Send + Sync>;

/// How a pull joins its commit's swarm.
#[derive(Clone)]
#[non_exhaustive]
pub struct SwarmOptions {
    /// Where peers reach this one (port 0: one the system picks).
    pub listen: SocketAddr,
    /// How long to seed the commit once the pull is complete (0: leave at once).
    pub seed_for: Duration,
    /// How long the swarm may bring nothing new before the rest goes over HTTP.
    pub stall: Duration,
    /// Told how far the swarm got, a few times a second.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for SwarmOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmOptions")
            .field("listen", &self.listen)
            .field("seed_for", &self.seed_for)
            .field("stall", &self.stall)
            .finish_non_exhaustive()
    }
}

impl Default for SwarmOptions {
    fn default() -> SwarmOptions {
        SwarmOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            seed_for: Duration::ZERO,
            stall: Duration::from_secs(30),
            progress: None,
        }
    }
}

/// How far the swarm got.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct SwarmProgress {
    /// Verified bytes of the files fetched from the swarm.
    pub done: u64,
    /// All the bytes of those files.
    pub total: u64,
    /// Peers connected now.
    pub peers: u32,
    /// Bytes sent to peers.
    pub uploaded: u64,
    /// Seeding (the pull is complete).
    pub seeding: bool,
}

/// What the swarm did for a pull.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct SwarmReport {
    /// The torrent's info hash (hex), when one was joined.
    pub info_hash: Option<String>,
    /// Files that came from the swarm (checked against the listing).
    pub files: usize,
    /// Bytes received from peers (pieces that failed their check included).
    pub bytes_from_peers: u64,
    /// Bytes sent to peers, seeding included.
    pub bytes_uploaded: u64,
    /// The most peers connected at once.
    pub peers_max: u32,
    /// Files shorter than half a piece, fetched over HTTP before the swarm was joined (through
    /// the swarm each would have cost a whole piece); not counted in `files_over_http`.
    pub files_small: usize,
    /// Files that went over HTTP instead.
    pub files_over_http: usize,
    /// Why they did.
    pub fallback: Option<String>,
    /// Seconds spent seeding after the pull.
    pub seeded_seconds: f64,
}

/// The swarm part of a pull: joined before the HTTP job, kept to seed after it.
#[derive(Debug)]
pub(super) struct SwarmPull {
    options: SwarmOptions,
    engine: Option<Rqbit>,
    torrent: Vec<u8>,
    meta: Option<Metainfo>,
    member: Option<Box<dyn Member>>,
    /// The BitTorrent engine's state folder, this pull's alone (removed at the end).
    state: Option<PathBuf>,
    /// The files (indexes into the pull's `fetching`) that came from the swarm.
    settled: Vec<usize>,
    pub(super) report: SwarmReport,
}

/// One blob fetched from the swarm.
struct Fetching {
    /// Index into the pull's `fetching`, and the torrent entry.
    file: usize,
    entry: usize,
    dir: Dir,
    partial: OsString,
    name: OsString,
    handle: File,
    /// The partial was there before (a stopped pull's): its pieces are read back.
    resumed: bool,
    done: bool,
}

impl SwarmPull {
    /// Fetches what it can of `fetching` from the swarm; returns the indexes of the files
    /// left for HTTP. Files shorter than half a piece go first through `over_http` (which
    /// fetches them now and returns those that arrived): through the swarm each would cost a
    /// whole piece, mostly its pad's zeros, which librqbit fetches (no BEP 47). Those that did
    /// not arrive are fetched from the swarm with the rest. Fails only when the pull was
    /// interrupted.
    pub(super) fn run(
        engine: &Engine,
        options: &PullOptions,
        swarm: &SwarmOptions,
        (place, commit): (&Place, &str),
        (listed, files, fetching): (&[RemoteFile], &[RemoteFile], &[RemoteFile]),
        over_http: &mut dyn FnMut(&[usize]) -> Vec<usize>,
    ) -> Result<(SwarmPull, Vec<usize>), HubError> {
        let mut this = SwarmPull {
            options: swarm.clone(),
            engine: None,
            torrent: Vec::new(),
            meta: None,
            member: None,
            state: None,
            settled: Vec::new(),
            report: SwarmReport::default(),
        };
        let all: Vec<usize> = (0..fetching.len()).collect();
        if fetching.is_empty() {
            // Nothing to fetch, but asked to seed: the swarm is joined afterwards, with every
            // file read-only ([`SwarmPull::seed`]).
            if !swarm.seed_for.is_zero() {
                match this.prepare(engine, options, commit, listed) {
                    Ok((rq, meta)) => this.keep_to_seed(rq, meta),
                    Err(why) => tracing::warn!("not seeding: {why}"),
                }
            }
            return Ok((this, all));
        }
        let (rq, meta) = match this.prepare(engine, options, commit, listed) {
            Ok(got) => got,
            Err(why) => {
                this.fall_back(why, fetching.len());
                return Ok((this, all));
            }
        };
        let half = u64::from(meta.piece_len) / 2;
        let small: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| fetching[i].size < half)
            .collect();
        let arrived: HashSet<usize> = if small.is_empty() {
            HashSet::new()
        } else {
            over_http(&small).into_iter().collect()
        };
        if engine.interrupted().load(Ordering::Relaxed) {
            return Err(HubError::Get(crate::error::GetError::Interrupted));
        }
        this.report.files_small = arrived.len();
        let wanted: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| !arrived.contains(i))
            .collect();
        if wanted.is_empty() {
            // Nothing left for the swarm; with `seed_for`, [`SwarmPull::seed`] joins it.
            this.keep_to_seed(rq, meta);
            return Ok((this, wanted));
        }
        let (slots, mut jobs) = match open_slots(place, &meta, files, fetching, &wanted) {
            Ok(got) => got,
            Err(why) => {
                this.fall_back(why, wanted.len());
                return Ok((this, wanted));
            }
        };
        this.report.info_hash = Some(meta.info_hash.clone());
        let how = if this.state.is_some() {
            Join::Known(known_pieces(&meta, &slots, &jobs))
        } else {
            Join::Check
        };
        let member = match rq.join((&this.torrent, &meta), slots, how) {
            Ok(m) => m,
            Err(why) => {
                remove_partials(&jobs);
                this.fall_back(why, wanted.len());
                return Ok((this, wanted));
            }
        };
        tracing::info!(
            info_hash = %meta.info_hash,
            listen = ?rq.listen_addr(),
            "joined the swarm of {commit} for {} file(s)",
            jobs.len()
        );
        this.engine = Some(rq);
        this.meta = Some(meta);
        let stalled = this.follow(engine, member.as_ref(), &mut jobs, fetching);
        let left: Vec<usize> = jobs.iter().filter(|j| !j.done).map(|j| j.file).collect();
        this.settled = jobs.iter().filter(|j| j.done).map(|j| j.file).collect();
        this.report.files = this.settled.len();
        if engine.interrupted().load(Ordering::Relaxed) {
            member.leave();
            return Err(HubError::Get(crate::error::GetError::Interrupted));
        }
        if left.is_empty() {
            this.member = Some(member);
        } else {
            // The swarm keeps nothing it cannot finish: those files start over HTTP.
            member.leave();
            let not_done: Vec<Fetching> = jobs.into_iter().filter(|j| !j.done).collect();
            remove_partials(&not_done);
            let why = stalled.unwrap_or_else(|| "files failed their check".into());
            this.fall_back(why, left.len());
        }
        Ok((this, left))
    }

    /// The engine and the checked metainfo, or why the swarm cannot be used.
    fn prepare(
        &mut self,
        engine: &Engine,
        options: &PullOptions,
        commit: &str,
        listed: &[RemoteFile],
    ) -> Result<(Rqbit, Metainfo), String> {
        self.torrent = super::remote::torrent_somewhere(engine, options, commit)
            .map_err(|e| format!("the endpoint published no torrent of {commit}: {e}"))?;
        // librqbit keeps its bitfields here; ferry tells it which pieces it has, so that a
        // fresh download reads nothing back.
        self.state = crate::config::ferry_cache_dir().map(|d| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            d.join("swarm")
                .join(format!("{}-{nanos:08x}", std::process::id()))
        });
        let rq = Rqbit::start(self.options.listen, self.state.clone(), None)?;
        let meta = rq
            .read_metainfo(&self.torrent)
            .map_err(|e| format!("the endpoint's torrent of {commit}: {e}"))?;
        check_metainfo(&meta, listed).map_err(|e| {
            format!("the endpoint's torrent of {commit} does not match its listing: {e}")
        })?;
        if meta.trackers.is_empty() {
            return Err(format!("the torrent of {commit} names no tracker"));
        }
        if !meta.trackers.iter().any(|t| can_announce(t)) {
            return Err(format!(
                "the torrent of {commit} names only trackers ferry's BitTorrent client cannot \
                 reach ({}): it speaks to http:// and udp:// trackers",
                meta.trackers.join(", ")
            ));
        }
        Ok((rq, meta))
    }

    /// Keeps the engine and the metainfo for [`SwarmPull::seed`], with nothing joined yet.
    fn keep_to_seed(&mut self, rq: Rqbit, meta: Metainfo) {
        self.report.info_hash = Some(meta.info_hash.clone());
        self.engine = Some(rq);
        self.meta = Some(meta);
    }

    fn fall_back(&mut self, why: String, files: usize) {
        tracing::warn!("{why}: {files} file(s) over HTTP from the endpoint");
        self.report.files_over_http = files;
        self.report.fallback = Some(why);
    }

    /// Follows the swarm until every job's file is in place, or it brings nothing new for
    /// [`SwarmOptions::stall`] (then: why), or the pull is interrupted.
    fn follow(
        &mut self,
        engine: &Engine,
        member: &dyn Member,
        jobs: &mut [Fetching],
        fetching: &[RemoteFile],
    ) -> Option<String> {
        let total: u64 = jobs.iter().map(|j| fetching[j.file].size).sum();
        let (mut last, mut since) = (u64::MAX, Instant::now());
        let mut said = Instant::now();
        loop {
            if engine.interrupted().load(Ordering::Relaxed) {
                return None;
            }
            let status = member.status();
            self.report.bytes_from_peers = status.fetched;
            self.report.bytes_uploaded = status.uploaded;
            self.report.peers_max = self.report.peers_max.max(status.peers);
            if let Some(e) = status.error {
                return Some(format!("the swarm failed: {e}"));
            }
            let mut done = 0;
            for j in jobs.iter_mut() {
                let f = &fetching[j.file];
                let have = status.file_done.get(j.entry).copied().unwrap_or(0);
                done += have.min(f.size);
                if !j.done && have >= f.size && !status.checking {
                    j.done = settle(j, f);
                }
            }
            if let Some(progress) = &self.options.progress {
                progress(&SwarmProgress {
                    done,
                    total,
                    peers: status.peers,
                    uploaded: status.uploaded,
                    seeding: false,
                });
            }
            if said.elapsed() >= SAY_EVERY {
                said = Instant::now();
                tracing::debug!(
                    done,
                    total,
                    peers = status.peers,
                    from_peers = status.fetched,
                    "swarm progress"
                );
            }
            if jobs.iter().all(|j| j.done) {
                return None;
            }
            if status.checking || done != last {
                (last, since) = (done, Instant::now());
            } else if since.elapsed() >= self.options.stall {
                return Some(format!(
                    "the swarm brought nothing for {} s ({} peer(s) connected, {} heard of)",
                    self.options.stall.as_secs(),
                    status.peers,
                    status.seen
                ));
            }
            std::thread::sleep(TICK);
        }
    }

    /// Seeds the commit (every file of it here) for [`SwarmOptions::seed_for`], or until the
    /// pull is interrupted.
    pub(super) fn seed(&mut self, engine: &Engine, place: &Place, files: &[RemoteFile]) {
        let wait = self.options.seed_for;
        if wait.is_zero() {
            return;
        }
        let (Some(rq), Some(meta)) = (&self.engine, &self.meta) else {
            return;
        };
        if self.member.is_none() {
            // Some files came over HTTP: join again with every file read-only.
            let slots = match open_slots(place, meta, files, &[], &[]) {
                Ok((slots, _)) => slots,
                Err(why) => return tracing::warn!("not seeding: {why}"),
            };
            // Every file is in place and checked against the listing by now.
            let how = if self.state.is_some() {
                Join::Known(known_pieces(meta, &slots, &[]))
            } else {
                Join::Check
            };
            match rq.join((&self.torrent, meta), slots, how) {
                Ok(m) => self.member = Some(m),
                Err(why) => return tracing::warn!("not seeding: {why}"),
            }
        }
        let Some(member) = &self.member else {
            return;
        };
        tracing::info!(
            info_hash = %meta.info_hash,
            "seeding for {} s (stop with Ctrl-C)",
            wait.as_secs()
        );
        let started = Instant::now();
        let total: u64 = meta.entries.iter().filter(|e| !e.pad).map(|e| e.len).sum();
        while started.elapsed() < wait && !engine.interrupted().load(Ordering::Relaxed) {
            let status = member.status();
            self.report.bytes_uploaded = status.uploaded;
            self.report.peers_max = self.report.peers_max.max(status.peers);
            if let Some(progress) = &self.options.progress {
                progress(&SwarmProgress {
                    done: total,
                    total,
                    peers: status.peers,
                    uploaded: status.uploaded,
                    seeding: true,
                });
            }
            std::thread::sleep(TICK);
        }
        self.report.seeded_seconds = started.elapsed().as_secs_f64();
    }

    /// The bytes of the files that came from the swarm (indexes into `fetching`).
    pub(super) fn bytes_in_place(&self, fetching: &[RemoteFile]) -> u64 {
        self.settled.iter().map(|&i| fetching[i].size).sum()
    }

    /// Leaves the swarm.
    pub(super) fn leave(&mut self) {
        if let Some(m) = self.member.take() {
            m.leave();
        }
    }
}

impl Drop for SwarmPull {
    fn drop(&mut self) {
        self.leave();
        drop(self.engine.take());
        if let Some(dir) = &self.state {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The pieces on disk and right: every piece of a file in place (ferry checked it against its
/// etag), and each piece of a stopped pull's partial whose SHA-1 matches (read back now); none
/// of a fresh partial.
fn known_pieces(meta: &Metainfo, slots: &[Slot], jobs: &[Fetching]) -> Vec<bool> {
    use sha1::{Digest, Sha1};
    let mut have = vec![false; meta.piece_count()];
    let spans = meta.spans();
    for (s, (pieces, _)) in slots.iter().zip(&spans) {
        if matches!(s, Slot::Read(_)) {
            for k in pieces.clone() {
                have[k] = true;
            }
        }
    }
    let total: u64 = meta.entries.iter().map(|e| e.len).sum();
    let piece_len = u64::from(meta.piece_len);
    let mut buf = Vec::new();
    for j in jobs.iter().filter(|j| j.resumed) {
        let (pieces, offset) = spans[j.entry].clone();
        let len = meta.entries[j.entry].len;
        for k in pieces {
            let start = k as u64 * piece_len;
            let size = piece_len.min(total - start);
            let from = start - offset;
            let in_file = size.min(len - from);
            buf.clear();
            // The piece's bytes past the file's end are its pad file's zeros.
            buf.resize(usize::try_from(size).unwrap_or(0), 0);
            let Ok(n) = usize::try_from(in_file) else {
                continue;
            };
            if j.handle.read_exact_at(&mut buf[..n], from).is_ok() {
                have[k] = <[u8; 20]>::from(Sha1::digest(&buf)) == meta.hashes[k];
            }
        }
    }
    have
}

/// Checks that every file `meta` names is in the commit's listing with that size, and that its
/// pad files are pads.
fn check_metainfo(meta: &Metainfo, listed: &[RemoteFile]) -> Result<(), String> {
    let by_path: HashMap<&str, &RemoteFile> = listed.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut seen = HashSet::new();
    for e in &meta.entries {
        if e.pad {
            if e.len >= u64::from(meta.piece_len) {
                return Err(format!("a pad file of {} bytes", e.len));
            }
            continue;
        }
        let f = by_path
            .get(e.path.as_str())
            .ok_or_else(|| format!("it names {:?}, which the commit does not have", e.path))?;
        if f.size != e.len {
            return Err(format!(
                "{}: {} bytes in the torrent, {} in the listing",
                e.path, e.len, f.size
            ));
        }
        if !seen.insert(e.path.as_str()) {
            return Err(format!("it names {} twice", e.path));
        }
    }
    Ok(())
}

/// The torrent's files: each blob of `fetching` that is `wanted` once, into its swarm partial
/// (opened beneath the pull's folder, never through a symlink, and preallocated); the files
/// already here, read-only; the rest skipped. With nothing to fetch: the slots a seed of
/// `files` needs.
fn open_slots(
    place: &Place,
    meta: &Metainfo,
    files: &[RemoteFile],
    fetching: &[RemoteFile],
    wanted: &[usize],
) -> Result<(Vec<Slot>, Vec<Fetching>), String> {
    let to_fetch: HashMap<PathBuf, usize> = wanted
        .iter()
        .map(|&i| (place.bytes_path(&fetching[i]), i))
        .collect();
    let here: HashMap<&str, &RemoteFile> = files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut taken = HashSet::new();
    let mut slots = Vec::with_capacity(meta.entries.len());
    let mut jobs: Vec<Fetching> = Vec::new();
    for (entry, e) in meta.entries.iter().enumerate() {
        let Some(f) = here.get(e.path.as_str()).filter(|_| !e.pad) else {
            slots.push(if e.pad { Slot::Pad } else { Slot::Skip });
            continue;
        };
        let bytes = place.bytes_path(f);
        if !taken.insert(bytes.clone()) {
            slots.push(Slot::Skip);
            continue;
        }
        let (dir, name) = place.dir_and_name(&bytes).map_err(|e| e.to_string())?;
        match to_fetch.get(&bytes) {
            Some(&file) => {
                let mut partial = name.clone();
                partial.push(SWARM_SUFFIX);
                let resumed = dir
                    .stat(&partial)
                    .ok()
                    .flatten()
                    .is_some_and(|st| st.st_size > 0);
                let flags = OFlags::RDWR | OFlags::CREATE;
                let opened = dir.open_std(&partial, flags).and_then(|h| {
                    preallocate(&h, f.size)?;
                    Ok((h.try_clone()?, h))
                });
                let (mine, theirs) = opened.map_err(|e| {
                    remove_partials(&jobs);
                    format!("cannot open {}: {e}", dir.join(&partial).display())
                })?;
                jobs.push(Fetching {
                    file,
                    entry,
                    dir,
                    partial,
                    name,
                    handle: mine,
                    resumed,
                    done: false,
                });
                slots.push(Slot::Write(theirs));
            }
            None => match dir.open_std(&name, OFlags::RDONLY) {
                Ok(h) => slots.push(Slot::Read(h)),
                Err(_) => slots.push(Slot::Skip),
            },
        }
    }
    Ok((slots, jobs))
}

/// Reserves `size` bytes for `file` (a partial of an earlier run keeps its pieces).
fn preallocate(file: &File, size: u64) -> std::io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        // A filesystem without it gets a sparse file; the bytes arrive all the same.
        Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(size),
        Err(e) => Err(e.into()),
    }
}

/// A file the swarm completed: checked against the listing, made durable, renamed to its
/// final name. False (and the partial removed) when it is not right.
fn settle(job: &Fetching, f: &RemoteFile) -> bool {
    let partial = job.dir.join(&job.partial);
    let checked = check_file(&job.handle, f);
    let ok = match checked {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(
                "{}: the swarm's bytes do not match the listing's {} {}; fetching it over HTTP",
                f.path,
                f.algorithm,
                f.etag
            );
            false
        }
        Err(e) => {
            tracing::warn!("cannot read back {}: {e}", partial.display());
            false
        }
    };
    if !ok {
        let _ = job.dir.unlink(&job.partial);
        return false;
    }
    let durable = job
        .handle
        .sync_all()
        .and_then(|()| job.dir.rename(&job.partial, &job.name))
        .and_then(|()| Ok(rustix::fs::fsync(job.dir.as_fd())?));
    match durable {
        Ok(()) => {
            if let Some(digest) = Checksum::parse(f.algorithm, &f.etag) {
                mark::set(&job.handle, &digest);
            }
            true
        }
        Err(e) => {
            tracing::warn!("cannot put {} in place: {e}", partial.display());
            false
        }
    }
}

/// Whether `file`'s bytes (from its start) hash to `f`'s etag.
fn check_file(mut file: &File, f: &RemoteFile) -> std::io::Result<bool> {
    use std::io::Seek;
    let Some(want) = Checksum::parse(f.algorithm, &f.etag) else {
        return Ok(false);
    };
    file.rewind()?;
    Ok(super::layout::hash_reader(file, f, &mut |_| {})? == want)
}

fn remove_partials(jobs: &[Fetching]) {
    for j in jobs {
        let _ = j.dir.unlink(&j.partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::peer::Entry;

    fn listed() -> Vec<RemoteFile> {
        ["a.bin", "dir/b.bin"]
            .iter()
            .map(|p| RemoteFile {
                path: (*p).to_owned(),
                size: 1000,
                algorithm: crate::verify::HashAlgorithm::Sha256,
                etag: "0".repeat(64),
                blob_id: None,
            })
            .collect()
    }

    fn meta(entries: &[(&str, u64, bool)]) -> Metainfo {
        let total: u64 = entries.iter().map(|e| e.1).sum();
        Metainfo {
            info_hash: "00".repeat(20),
            piece_len: 256 << 10,
            entries: entries
                .iter()
                .map(|&(path, len, pad)| Entry {
                    path: path.to_owned(),
                    len,
                    pad,
                })
                .collect(),
            trackers: vec!["http://t/announce".into()],
            hashes: vec![[0; 20]; total.div_ceil(256 << 10) as usize],
        }
    }

    #[test]
    fn a_torrent_of_the_listing_is_accepted() {
        let m = meta(&[
            ("a.bin", 1000, false),
            (".pad/261144", 261_144, true),
            ("dir/b.bin", 1000, false),
        ]);
        assert_eq!(check_metainfo(&m, &listed()), Ok(()));
        // A filtered pull uses a torrent naming fewer files, too.
        assert_eq!(
            check_metainfo(&meta(&[("dir/b.bin", 1000, false)]), &listed()),
            Ok(())
        );
    }

    #[test]
    fn each_file_has_its_own_pieces() {
        // 1000 bytes, padded to 256 KiB, then 1000 more: one piece each.
        let m = meta(&[
            ("a.bin", 1000, false),
            (".pad/261144", 261_144, true),
            ("dir/b.bin", 1000, false),
        ]);
        assert_eq!(m.piece_count(), 2);
        assert_eq!(m.spans()[0], (0..1, 0));
        assert_eq!(m.spans()[2], (1..2, 262_144));
        // A file of a piece and a byte spans two.
        let m = meta(&[("a.bin", (256 << 10) + 1, false)]);
        assert_eq!(m.spans()[0], (0..2, 0));
    }

    #[test]
    fn a_torrent_that_differs_from_the_listing_is_refused() {
        let cases = [
            (meta(&[("c.bin", 1000, false)]), "does not have"),
            (meta(&[("a.bin", 999, false)]), "999 bytes in the torrent"),
            (
                meta(&[("a.bin", 1000, false), ("a.bin", 1000, false)]),
                "twice",
            ),
            (meta(&[(".pad/x", 256 << 10, true)]), "a pad file of"),
            (meta(&[("../a.bin", 1000, false)]), "does not have"),
        ];
        for (m, why) in cases {
            let e = check_metainfo(&m, &listed()).expect_err(why);
            assert!(e.contains(why), "{e}");
        }
    }
}
