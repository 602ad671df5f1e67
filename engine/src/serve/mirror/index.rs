//! The blobs a mirror keeps, by last use, for `--max-size`: when a fill adds a blob and the
//! total passes the bound, the least recently used blobs are deleted until it fits again.
//!
//! The order is a `BTreeSet` keyed by a logical clock, so adding, touching and evicting are
//! O(log n) whatever the number of blobs (plus the blobs pinned, which are few: one per
//! answer being sent), and nothing walks the cache. The index survives a restart as an
//! append-only log (`.ferry-mirror/index.log` under the root): `+ TICK SIZE PATH` when a blob
//! is added or used, `L PATH LINK` when a snapshot links to it, `- PATH` when it is deleted.
//! Opening replays it (a torn or malformed line is skipped) and rewrites it compacted, one
//! line per blob and link; it is compacted again whenever it holds four times as many lines
//! as blobs.
//!
//! Invariants: only blobs this index knows are ever deleted, never the one just added nor one
//! pinned ([`Pin`]: an answer is being sent from it; once the last pin goes, the bound is
//! applied again); a deleted blob's snapshot links go with it, so a snapshot stops listing
//! what it lost. A blob found in the cache but not in the index (written before the index
//! existed, or by another tool) is adopted when it is next served, without its links; uses
//! are logged once per blob until it falls into the older half of the order (the order in
//! memory is exact). Every file is opened beneath the root, following no symlink.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::OFlags;

use crate::backend::nofollow::Dir;

/// Where the index lives beneath the root.
const FOLDER: &str = ".ferry-mirror";
const LOG: &str = "index.log";
/// The log is read up to this size (some 10 million blobs).
const MAX_LOG: u64 = 1 << 30;

#[derive(Debug)]
struct Entry {
    size: u64,
    tick: u64,
    /// The tick of its last line in the log.
    logged: u64,
    /// Snapshot links to it (paths relative to the root), removed with it.
    links: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    /// The root's index folder.
    folder: Dir,
    log: Option<std::fs::File>,
    entries: HashMap<String, Entry>,
    /// (tick, path): the least recently used first.
    order: BTreeSet<(u64, String)>,
    total: u64,
    tick: u64,
    /// Lines in the log, and in it when it was last compacted.
    lines: usize,
    compacted: usize,
    /// Answers being sent from each pinned blob.
    pins: HashMap<String, usize>,
}

/// The mirror's blobs under a size bound.
#[derive(Debug)]
pub(crate) struct Index {
    root: Dir,
    max: u64,
    inner: Mutex<Inner>,
    /// Counts the blobs deleted (for `/metrics`).
    evictions: prometheus_client::metrics::counter::Counter,
}

/// A blob kept from eviction while an answer is sent from it; dropping it releases it.
#[derive(Debug)]
pub(crate) struct Pin {
    index: Arc<Index>,
    key: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut inner = self.index.lock();
        match inner.pins.get_mut(&self.key) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                inner.pins.remove(&self.key);
                // What the pin kept may have held the cache above its bound.
                self.index.shrink(&mut inner, None);
            }
        }
    }
}

impl Index {
    /// Opens (or starts) the index of the cache at `root`, bounded to `max` bytes.
    pub(crate) fn open(root: &Path, max: u64) -> io::Result<Index> {
        let root = Dir::open(root)?;
        let folder = root.beneath(Path::new(FOLDER), true)?;
        let mut text = String::new();
        match folder.open_std(OsStr::new(LOG), OFlags::RDONLY) {
            Ok(f) => {
                f.take(MAX_LOG).read_to_string(&mut text)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut inner = Inner {
            folder,
            log: None,
            entries: HashMap::new(),
            order: BTreeSet::new(),
            total: 0,
            tick: 0,
            lines: 0,
            compacted: 0,
            pins: HashMap::new(),
        };
        replay(&mut inner, &text);
        compact(&mut inner)?;
        tracing::info!(
            blobs = inner.entries.len(),
            bytes = inner.total,
            max,
            "mirror index opened"
        );
        Ok(Index {
            root,
            max,
            inner: Mutex::new(inner),
            evictions: Default::default(),
        })
    }

    /// Counts the blobs it deletes on `evictions` too.
    pub(crate) fn counting(
        mut self,
        evictions: prometheus_client::metrics::counter::Counter,
    ) -> Index {
        self.evictions = evictions;
        self
    }

    /// Keeps the blob at `key` (which need not be counted yet) from eviction until the pin
    /// is dropped.
    pub(crate) fn pin(self: &Arc<Self>, key: String) -> Pin {
        *self.lock().pins.entry(key.clone()).or_insert(0) += 1;
        Pin {
            index: Arc::clone(self),
            key,
        }
    }

    /// The snapshot link `link` (relative to the root) points to the blob at `path`, which
    /// the index counts: the link is deleted with the blob.
    pub(crate) fn linked(&self, path: &str, link: &str) {
        if !valid(link) {
            return;
        }
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(path) else {
            return;
        };
        if entry.links.iter().any(|l| l == link) {
            return;
        }
        entry.links.push(link.to_owned());
        append(&mut inner, &format!("L {path} {link}\n"));
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of the blob at `blob` (an absolute path beneath the root): its path relative
    /// to the root.
    pub(crate) fn key(&self, blob: &Path) -> Option<String> {
        blob.strip_prefix(self.root.path())
            .ok()
            .and_then(|r| r.to_str())
            .map(str::to_owned)
    }

    /// The blob at `path` (relative to the root) was served: it is the most recently used.
    /// One the index does not know is adopted with `size`.
    pub(crate) fn used(&self, path: &str, size: u64) {
        let mut inner = self.lock();
        touch(&mut inner, path, size);
    }

    /// A fill put the blob at `path` in place: it is counted, and the least recently used
    /// other blobs not pinned are deleted until the total fits the bound again. Returns how
    /// many were.
    pub(crate) fn added(&self, path: &str, size: u64) -> usize {
        let mut inner = self.lock();
        touch(&mut inner, path, size);
        self.shrink(&mut inner, Some(path))
    }

    /// Deletes the least recently used blobs, but `keep` and those pinned, with their
    /// snapshot links, until the total fits the bound. Returns how many it deleted.
    fn shrink(&self, inner: &mut Inner, keep: Option<&str>) -> usize {
        let mut evicted = 0;
        while inner.total > self.max {
            let Some(victim) = inner
                .order
                .iter()
                .find(|(_, p)| Some(p.as_str()) != keep && !inner.pins.contains_key(p))
                .map(|(_, p)| p.clone())
            else {
                tracing::info!(
                    bytes = inner.total,
                    max = self.max,
                    "the cache is over its bound while its blobs are in use"
                );
                break;
            };
            // Gone already (deleted by hand): forgotten all the same.
            if let Err(e) = self.delete(&victim)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(blob = %victim, error = %e, "cannot evict; it stays counted");
                break;
            }
            for link in inner.entries.get(&victim).map_or(&[][..], |e| &e.links) {
                if let Err(e) = self.delete_link(link) {
                    tracing::warn!(link = %link, error = %e, "cannot remove an evicted blob's snapshot link");
                }
            }
            forget(inner, &victim);
            evicted += 1;
            tracing::info!(blob = %victim, "evicted (least recently used)");
        }
        self.evictions.inc_by(evicted as u64);
        evicted
    }

    /// Removes the snapshot link `link`, when it is one (a symlink): whatever else a user put
    /// there stays.
    fn delete_link(&self, link: &str) -> io::Result<()> {
        let (dir, name) = match self.parent_of(link) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match dir.stat(name)? {
            Some(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_symlink() => {
                dir.unlink(name)
            }
            _ => Ok(()),
        }
    }

    /// The folder beneath the root that holds `rel` (a path relative to the root), opened
    /// following no symlink, and `rel`'s name in it.
    fn parent_of<'r>(&self, rel: &'r str) -> io::Result<(Dir, &'r OsStr)> {
        let path = Path::new(rel);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a path beneath the cache",
            ));
        };
        Ok((self.root.beneath(parent, false)?, name))
    }

    /// Bytes of the blobs the index holds.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().total
    }

    fn delete(&self, path: &str) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        dir.unlink(name)
    }
}

/// Makes `path` the most recently used (adding it with `size` when new), logging it when it
/// is new or had fallen into the older half of the order since it was last logged.
fn touch(inner: &mut Inner, path: &str, size: u64) {
    inner.tick += 1;
    let tick = inner.tick;
    let half = (inner.entries.len() as u64 / 2).max(1);
    let (size, logged) = match inner.entries.get(path) {
        Some(old) if tick - old.logged < half => (old.size, Some(old.logged)),
        Some(old) => (old.size, None),
        None => (size, None),
    };
    renew(inner, path, (size, tick, logged.unwrap_or(tick)));
    // Appended once counted: an append may compact the log from what is counted.
    if logged.is_none() {
        append(inner, &format!("+ {tick} {size} {path}\n"));
    }
}

fn forget(inner: &mut Inner, path: &str) {
    if unset(inner, path).is_some() {
        append(inner, &format!("- {path}\n"));
    }
}

/// Counts `path` as `size` bytes used at `tick` and logged at `logged`, keeping the snapshot
/// links it had.
fn renew(inner: &mut Inner, path: &str, (size, tick, logged): (u64, u64, u64)) {
    let links = unset(inner, path).map(|old| old.links).unwrap_or_default();
    set(
        inner,
        path,
        Entry {
            size,
            tick,
            logged,
            links,
        },
    );
}

/// Counts `path` with `entry` (which it must not have already).
fn set(inner: &mut Inner, path: &str, entry: Entry) {
    inner.order.insert((entry.tick, path.to_owned()));
    inner.total += entry.size;
    inner.entries.insert(path.to_owned(), entry);
}

/// No longer counts `path`; what it was.
fn unset(inner: &mut Inner, path: &str) -> Option<Entry> {
    let old = inner.entries.remove(path)?;
    inner.order.remove(&(old.tick, path.to_owned()));
    inner.total -= old.size;
    Some(old)
}

/// Appends one line (one write on an `O_APPEND` file: a crash leaves whole lines or a torn
/// last one), compacting when the log has grown to four times the blobs.
fn append(inner: &mut Inner, line: &str) {
    if let Some(log) = &mut inner.log
        && let Err(e) = log.write_all(line.as_bytes())
    {
        tracing::warn!(error = %e, "cannot append to the mirror index; going on without it");
        inner.log = None;
    }
    inner.lines += 1;
    if inner.lines > 4 * inner.compacted.max(inner.entries.len()) + 1024
        && let Err(e) = compact(inner)
    {
        tracing::warn!(error = %e, "cannot compact the mirror index");
    }
}

/// Applies the log's lines; what cannot be read is skipped.
fn replay(inner: &mut Inner, text: &str) {
    // Only whole lines: a torn tail has no newline.
    let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
    for line in whole.lines() {
        let mut parts = line.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("+"), Some(tick), Some(size), Some(path)) if valid(path) => {
                let (Ok(tick), Ok(size)) = (tick.parse::<u64>(), size.parse::<u64>()) else {
                    continue;
                };
                renew(inner, path, (size, tick, tick));
                inner.tick = inner.tick.max(tick);
            }
            (Some("L"), Some(path), Some(first), rest) => {
                // A link's path may hold spaces; a blob's does not.
                let link = match rest {
                    Some(rest) => format!("{first} {rest}"),
                    None => first.to_owned(),
                };
                if let Some(entry) = inner.entries.get_mut(path)
                    && valid(&link)
                    && !entry.links.contains(&link)
                {
                    entry.links.push(link);
                }
            }
            (Some("-"), Some(path), None, None) => {
                unset(inner, path);
            }
            _ => {}
        }
    }
}

/// A relative path of plain names, as blob paths are (`models--org--name/blobs/HEX`).
fn valid(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Rewrites the log as one line per blob (through a temporary file, fsynced, renamed) and
/// reopens it for appending.
fn compact(inner: &mut Inner) -> io::Result<()> {
    let mut text = String::new();
    let mut lines = 0;
    for (tick, path) in &inner.order {
        let Some(entry) = inner.entries.get(path) else {
            continue;
        };
        text.push_str(&format!("+ {tick} {} {path}\n", entry.size));
        for link in &entry.links {
            text.push_str(&format!("L {path} {link}\n"));
        }
        lines += 1 + entry.links.len();
    }
    inner
        .folder
        .write_atomic(OsStr::new(LOG), text.as_bytes())?;
    inner.log = Some(inner.folder.open_std(
        OsStr::new(LOG),
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
    )?);
    inner.lines = lines;
    inner.compacted = lines;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(root: &Path, name: &str, size: usize) -> String {
        let rel = format!("models--o--n/blobs/{name}");
        std::fs::create_dir_all(root.join("models--o--n/blobs")).expect("mkdir");
        std::fs::write(root.join(&rel), vec![0u8; size]).expect("write");
        rel
    }

    #[test]
    fn the_least_recently_used_blobs_go_first_and_the_order_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        let index = Index::open(root, 300).expect("open");
        let (a, b, c) = (
            blob(root, "a", 100),
            blob(root, "b", 100),
            blob(root, "c", 100),
        );
        assert_eq!(index.added(&a, 100), 0);
        assert_eq!(index.added(&b, 100), 0);
        assert_eq!(index.added(&c, 100), 0);
        index.used(&a, 100);
        drop(index);
        // After a restart the order is the same: b is the least recently used.
        let index = Index::open(root, 300).expect("reopen");
        assert_eq!(index.bytes(), 300);
        let d = blob(root, "d", 100);
        assert_eq!(index.added(&d, 100), 1);
        assert!(!root.join(&b).exists(), "b was the least recently used");
        for kept in [&a, &c, &d] {
            assert!(root.join(kept).exists(), "{kept} was evicted");
        }
        assert_eq!(index.bytes(), 300);
        // A blob larger than the bound evicts everything else, never itself.
        let big = blob(root, "big", 500);
        assert_eq!(index.added(&big, 500), 3);
        assert!(root.join(&big).exists());
        assert_eq!(index.bytes(), 500);
    }

    #[test]
    fn pinned_blobs_stay_until_released_and_evicted_ones_take_their_snapshot_links() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        let index = Arc::new(Index::open(root, 200).expect("open"));
        let (a, b) = (blob(root, "a", 100), blob(root, "b", 100));
        index.added(&a, 100);
        index.added(&b, 100);
        // Two links to `a` (two commits), one with a space in its name.
        let snap = root.join("models--o--n/snapshots");
        for link in ["c1/w.bin", "c2/my w.bin"] {
            let at = snap.join(link);
            std::fs::create_dir_all(at.parent().expect("parent")).expect("mkdir");
            std::os::unix::fs::symlink("../../blobs/a", &at).expect("symlink");
            index.linked(&a, &format!("models--o--n/snapshots/{link}"));
        }
        // A hostile link path is not kept; a link path where a user put a file of their own
        // is kept, but the file is not deleted with the blob.
        index.linked(&a, "../../etc/passwd");
        std::fs::create_dir_all(snap.join("c4")).expect("mkdir");
        std::fs::write(snap.join("c4/mine.txt"), b"mine").expect("write");
        index.linked(&a, "models--o--n/snapshots/c4/mine.txt");
        // `a` is the least recently used, but pinned: `b` goes instead of it ...
        let pin = index.pin(a.clone());
        let c = blob(root, "c", 100);
        assert_eq!(index.added(&c, 100), 1);
        assert!(root.join(&a).exists() && !root.join(&b).exists());
        // ... and with everything else pinned or just added, the cache stays over its bound,
        let pin_c = index.pin(c.clone());
        let d = blob(root, "d", 100);
        assert_eq!(index.added(&d, 100), 0);
        assert_eq!(index.bytes(), 300);
        // until the last pin of one goes: then `a` goes, with both its links.
        let pin_a = index.pin(a.clone());
        drop(pin);
        assert_eq!(index.bytes(), 300, "pinned twice");
        drop(pin_a);
        assert_eq!(index.bytes(), 200);
        assert!(!root.join(&a).exists());
        for link in ["c1/w.bin", "c2/my w.bin"] {
            assert!(
                snap.join(link).symlink_metadata().is_err(),
                "{link} left dangling"
            );
        }
        assert_eq!(
            std::fs::read(snap.join("c4/mine.txt")).expect("kept"),
            b"mine"
        );
        assert_eq!(index.evictions.get(), 2);
        drop(pin_c);
        // Links survive a restart: `c`'s goes with it after one.
        let link = snap.join("c3/x");
        std::fs::create_dir_all(snap.join("c3")).expect("mkdir");
        std::os::unix::fs::symlink("../../blobs/c", &link).expect("symlink");
        index.linked(&c, "models--o--n/snapshots/c3/x");
        drop(index);
        let index = Index::open(root, 200).expect("reopen");
        let e = blob(root, "e", 100);
        assert_eq!(index.added(&e, 100), 1);
        assert!(!root.join(&c).exists() && link.symlink_metadata().is_err());
        assert!(root.join(&d).exists() && root.join(&e).exists());
    }

    #[test]
    fn a_torn_or_hostile_log_is_read_as_far_as_it_is_sound() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        std::fs::create_dir_all(root.join(FOLDER)).expect("mkdir");
        std::fs::write(
            root.join(FOLDER).join(LOG),
            "+ 1 100 m/blobs/a\n+ 2 nan m/blobs/b\n+ 3 100 ../../etc/passwd\n- m/blobs/zz\n+ 4 10 /abs\ngarbage\n+ 5 100 m/blobs/c",
        )
        .expect("write");
        let index = Index::open(root, 1000).expect("open");
        // Only `a`: `b`'s size is not a number, the others leave the root, and `c`'s line is
        // torn (no newline).
        assert_eq!(index.bytes(), 100);
        let inner = index.lock();
        assert_eq!(inner.entries.keys().collect::<Vec<_>>(), vec!["m/blobs/a"]);
    }

    #[test]
    fn the_log_is_compacted_as_it_grows() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        let index = Index::open(root, u64::MAX).expect("open");
        for i in 0..3000 {
            index.added(&format!("m/blobs/{}", i % 10), 1);
        }
        let lines = std::fs::read_to_string(root.join(FOLDER).join(LOG))
            .expect("log")
            .lines()
            .count();
        assert!(lines <= 1024 + 4 * 10 + 1, "{lines} lines for 10 blobs");
        assert_eq!(index.bytes(), 10);
    }

    #[test]
    fn the_oldest_of_a_hundred_thousand_blobs_is_the_one_evicted() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        let index = Index::open(root, 100_000).expect("open");
        for i in 0..100_000 {
            index.used(&format!("m/blobs/{i}"), 1);
        }
        let newest = blob(root, "new", 1);
        assert_eq!(index.added(&newest, 1), 1);
        assert!(!index.lock().entries.contains_key("m/blobs/0"));
        drop(index);
        let index = Index::open(root, 100_000).expect("reopen");
        assert_eq!(index.bytes(), 100_000);
        assert!(index.lock().entries.contains_key("m/blobs/1"));
    }
}
