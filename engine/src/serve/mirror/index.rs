//! The blobs a mirror keeps, by last use, for `--max-size`: when a fill adds a blob and the
//! total passes the bound, the least recently used blobs are deleted until it fits again.
//!
//! The order is a `BTreeSet` keyed by a logical clock, so adding, touching and evicting are
//! O(log n) whatever the number of blobs, and nothing walks the cache. The index survives a
//! restart as an append-only log (`.ferry-mirror/index.log` under the root): `+ TICK SIZE
//! PATH` when a blob is added or used, `- PATH` when it is deleted. Opening replays it (a torn
//! or malformed line is skipped) and rewrites it compacted, one line per blob; it is compacted
//! again whenever it holds four times as many lines as blobs.
//!
//! Invariants: only blobs this index knows are ever deleted, never the one just added; a blob
//! found in the cache but not in the index (written before the index existed, or by another
//! tool) is adopted when it is next served; uses are logged at most once a minute per blob
//! (the order in memory is exact). Every file is opened beneath the root, following no
//! symlink. Not here: pinning blobs being read (a deleted blob's open readers keep reading it;
//! its space returns when they finish).

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

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
    /// Lines in the log.
    lines: usize,
}

/// The mirror's blobs under a size bound.
#[derive(Debug)]
pub(crate) struct Index {
    root: Dir,
    max: u64,
    inner: Mutex<Inner>,
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
        })
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
    /// other blobs are deleted until the total fits the bound again. Returns how many were.
    pub(crate) fn added(&self, path: &str, size: u64) -> usize {
        let mut inner = self.lock();
        touch(&mut inner, path, size);
        let mut evicted = 0;
        while inner.total > self.max {
            let Some(victim) = inner
                .order
                .iter()
                .find(|(_, p)| p != path)
                .map(|(_, p)| p.clone())
            else {
                break;
            };
            // Gone already (deleted by hand): forgotten all the same.
            if let Err(e) = self.delete(&victim)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(blob = %victim, error = %e, "cannot evict; it stays counted");
                break;
            }
            forget(&mut inner, &victim);
            evicted += 1;
            tracing::info!(blob = %victim, "evicted (least recently used)");
        }
        evicted
    }

    /// Bytes of the blobs the index holds.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().total
    }

    fn delete(&self, path: &str) -> io::Result<()> {
        let path = Path::new(path);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a blob path",
            ));
        };
        self.root.beneath(parent, false)?.unlink(name)
    }
}

/// Makes `path` the most recently used (adding it with `size` when new), logging it when it
/// is new or had fallen into the older half of the order since it was last logged.
fn touch(inner: &mut Inner, path: &str, size: u64) {
    inner.tick += 1;
    let tick = inner.tick;
    let half = (inner.entries.len() as u64 / 2).max(1);
    let (size, logged) = match unset(inner, path) {
        Some(old) if tick - old.logged < half => (old.size, Some(old.logged)),
        Some(old) => (old.size, None),
        None => (size, None),
    };
    set(
        inner,
        path,
        Entry {
            size,
            tick,
            logged: logged.unwrap_or(tick),
        },
    );
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
    if inner.lines > 4 * inner.entries.len() + 1024
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
                unset(inner, path);
                set(
                    inner,
                    path,
                    Entry {
                        size,
                        tick,
                        logged: tick,
                    },
                );
                inner.tick = inner.tick.max(tick);
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
    for (tick, path) in &inner.order {
        let size = inner.entries.get(path).map_or(0, |e| e.size);
        text.push_str(&format!("+ {tick} {size} {path}\n"));
    }
    inner
        .folder
        .write_atomic(OsStr::new(LOG), text.as_bytes())?;
    inner.log = Some(inner.folder.open_std(
        OsStr::new(LOG),
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
    )?);
    inner.lines = inner.entries.len();
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
