//! The resume journal: which byte ranges of which partly fetched files are already written, so
//! that a pull stopped at any moment (`kill -9` included) fetches only what is missing when it
//! runs again.
//!
//! A journal is one append-only text file (a pull keeps one per repo and commit). After a
//! header line, every line is a record prefixed by the CRC-32 of the rest of the line:
//!
//! ```text
//! ferry-journal 1
//! 3b0c4a51 F 1 1073741824 9f86d08…0a08 /cache/models--org--name/blobs/9f86d08…0a08
//! 5d1e7f02 W 1 0 1048576
//! ```
//!
//! `F ID SIZE DIGEST PATH` starts a fetch of `PATH` (percent-encoded) expecting `SIZE` bytes
//! with that digest; any earlier fetch of the same path is void from then on. `W ID START END`
//! says bytes `START..END` of fetch `ID` are written to `PATH.incomplete`. A `W` record is
//! appended only after the write it describes completed, so after a crash of the process the
//! file holds at least what its journal says. Appends are not fsynced: a journal survives
//! `kill -9` as is; a power cut may lose its tail (those ranges are fetched again) or leave
//! records whose bytes never reached the disk, which is why the journal is a hint and never
//! trusted for content: the data plane reads resumed ranges back and hashes them with the rest,
//! so a wrong journal costs a re-fetch, never a wrong file.
//!
//! Opening a journal reads the longest prefix of intact records (a torn or corrupt tail is
//! dropped), then rewrites it compacted (one `W` per merged run, through a temporary file,
//! fsync, rename). A lock on the journal's folder (`flock`) keeps two processes from sharing it.
//!
//! Not here: what to fetch next ([`crate::proto::plan`]), or the bytes themselves (`download/`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, percent_encode};
use rustix::fs::OFlags;

use crate::backend::nofollow::Dir;

/// The first line of every journal.
pub(crate) const HEADER: &str = "ferry-journal 1\n";

/// Bytes of a path encoded in a record: controls, space, `%` and every non-ASCII byte.
const PATH_ENCODE: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A fetch of `path` starts; its earlier ranges are void.
    File {
        id: u64,
        size: u64,
        digest: String,
        path: PathBuf,
    },
    /// Bytes `range` of fetch `id` are written.
    Written { id: u64, range: Range<u64> },
}

impl Record {
    /// The record as one line: CRC-32 of the rest, the record, a newline.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let body = match self {
            Record::File {
                id,
                size,
                digest,
                path,
            } => format!(
                "F {id} {size} {digest} {}",
                percent_encode(path.as_os_str().as_bytes(), PATH_ENCODE)
            ),
            Record::Written { id, range } => format!("W {id} {} {}", range.start, range.end),
        };
        format!("{:08x} {body}\n", crc32fast::hash(body.as_bytes())).into_bytes()
    }

    fn decode_line(line: &[u8]) -> Option<Record> {
        let line = std::str::from_utf8(line).ok()?;
        let (crc, body) = line.split_once(' ')?;
        if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes())
        {
            return None;
        }
        let mut f = body.split(' ');
        let record = match f.next()? {
            "F" => Record::File {
                id: f.next()?.parse().ok()?,
                size: f.next()?.parse().ok()?,
                digest: f.next()?.to_owned(),
                path: PathBuf::from(OsString::from_vec(percent_decode_str(f.next()?).collect())),
            },
            "W" => {
                let id = f.next()?.parse().ok()?;
                let (start, end) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
                if start >= end {
                    return None;
                }
                Record::Written {
                    id,
                    range: start..end,
                }
            }
            _ => return None,
        };
        f.next().is_none().then_some(record)
    }
}

/// What a journal's bytes hold: its intact records, and how many bytes they take (anything after
/// is a torn or corrupt tail).
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub records: Vec<Record>,
    pub valid: usize,
}

/// Reads records up to the first one that is torn, corrupt or malformed. Bytes without the
/// header hold no records. Never panics, whatever the input.
pub(crate) fn decode(bytes: &[u8]) -> Decoded {
    let Some(mut rest) = bytes.strip_prefix(HEADER.as_bytes()) else {
        return Decoded::default();
    };
    let mut out = Decoded {
        records: Vec::new(),
        valid: HEADER.len(),
    };
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let Some(record) = Record::decode_line(&rest[..nl]) else {
            break;
        };
        out.records.push(record);
        out.valid += nl + 1;
        rest = &rest[nl + 1..];
    }
    out
}

/// The live fetch of one path: what it expects and which of its ranges are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub id: u64,
    pub size: u64,
    pub digest: String,
    /// Written runs, merged: start -> end.
    written: BTreeMap<u64, u64>,
}

impl Entry {
    fn new(id: u64, size: u64, digest: String) -> Entry {
        Entry {
            id,
            size,
            digest,
            written: BTreeMap::new(),
        }
    }

    /// Adds a written range (clipped to the file), merging it with its neighbours.
    fn add(&mut self, range: Range<u64>) {
        let (mut start, mut end) = (range.start, range.end.min(self.size));
        if start >= end {
            return;
        }
        // Runs that overlap or touch `start..end`, from the last one starting at or before it.
        let first = self
            .written
            .range(..=start)
            .next_back()
            .filter(|&(_, &e)| e >= start)
            .map(|(&s, _)| s)
            .unwrap_or(start);
        let touching: Vec<(u64, u64)> = self
            .written
            .range(first..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.written.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.written.insert(start, end);
    }

    /// The written runs, in file order.
    pub(crate) fn ranges(&self) -> Vec<Range<u64>> {
        self.written.iter().map(|(&s, &e)| s..e).collect()
    }
}

/// Replays records: the live fetch of every path (the last `F` of each), with its ranges.
/// Records about unknown or superseded fetches are ignored.
pub(crate) fn replay(records: &[Record]) -> HashMap<PathBuf, Entry> {
    let mut entries: HashMap<PathBuf, Entry> = HashMap::new();
    let mut paths: HashMap<u64, PathBuf> = HashMap::new();
    for r in records {
        match r {
            Record::File {
                id,
                size,
                digest,
                path,
            } => {
                if let Some(old) =
                    entries.insert(path.clone(), Entry::new(*id, *size, digest.clone()))
                {
                    paths.remove(&old.id);
                }
                paths.insert(*id, path.clone());
            }
            Record::Written { id, range } => {
                if let Some(e) = paths.get(id).and_then(|p| entries.get_mut(p)) {
                    e.add(range.clone());
                }
            }
        }
    }
    entries
}

/// Why a journal could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Another process holds the folder's lock.
    Busy(PathBuf),
    /// A file operation failed.
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Inner {
    /// Appended to; `None` after an append failed (the journal then stops, with one warning:
    /// the download goes on, only its resumability suffers).
    file: Option<File>,
    entries: HashMap<PathBuf, Entry>,
    /// The path of each live fetch id.
    paths: HashMap<u64, PathBuf>,
    next_id: u64,
}

/// The journal holding `entries` as they are (their ids kept): the header, then per fetch
/// its `F` record and one `W` per written run.
fn compacted(entries: &HashMap<PathBuf, Entry>) -> Vec<u8> {
    let mut out = HEADER.as_bytes().to_vec();
    let mut sorted: Vec<(&PathBuf, &Entry)> = entries.iter().collect();
    sorted.sort_by_key(|(_, e)| e.id);
    for (p, e) in sorted {
        out.extend(
            Record::File {
                id: e.id,
                size: e.size,
                digest: e.digest.clone(),
                path: p.clone(),
            }
            .encode(),
        );
        for r in e.ranges() {
            out.extend(Record::Written { id: e.id, range: r }.encode());
        }
    }
    out
}

/// An open journal, locked for this process.
pub(crate) struct Journal {
    path: PathBuf,
    name: OsString,
    /// The folder, held open; its descriptor holds the folder's `flock` while open.
    dir: Dir,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Opens (or creates) the journal `root/rel/name`, locking its folder for this process.
    /// No symlink beneath `root` is followed, and none at the journal's name.
    pub(crate) fn open(root: &Path, rel: &Path, name: &str) -> Result<Journal, OpenError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { op, path, source }
        };
        let dir_path = root.join(rel);
        std::fs::create_dir_all(root).map_err(io("create directory", root))?;
        let dir = Dir::open(root)
            .and_then(|r| r.beneath(rel, true))
            .map_err(io("create directory", &dir_path))?;
        match rustix::fs::flock(
            dir.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(OpenError::Busy(dir_path)),
            Err(e) => return Err(io("lock", &dir_path)(e.into())),
        }
        // Temporary files a killed run left while rewriting the journal: ours to remove, under
        // the lock.
        if let Ok(entries) = std::fs::read_dir(&dir_path) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains(".ferry-tmp-") {
                    let _ = dir.unlink(&e.file_name());
                }
            }
        }
        let path = dir_path.join(name);
        let name = OsStr::new(name);
        let bytes = match dir.open_std(name, OFlags::RDONLY) {
            Ok(mut f) => {
                let mut b = Vec::new();
                f.read_to_end(&mut b).map_err(io("read", &path))?;
                b
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("read", &path)(e)),
        };
        let decoded = decode(&bytes);
        if decoded.valid < bytes.len() {
            tracing::warn!(
                journal = %path.display(),
                dropped = bytes.len() - decoded.valid,
                "the journal ends in a torn or corrupt record; dropping it (those ranges are fetched again)"
            );
        }
        // Compacted: live fetches only, renumbered, one record per written run.
        let mut entries = replay(&decoded.records);
        entries.retain(|_, e| !e.written.is_empty());
        let mut paths = HashMap::new();
        let mut sorted: Vec<(&PathBuf, &mut Entry)> = entries.iter_mut().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (n, (p, e)) in sorted.into_iter().enumerate() {
            e.id = n as u64 + 1;
            paths.insert(e.id, p.clone());
        }
        dir.write_atomic(name, &compacted(&entries))
            .map_err(io("write", &path))?;
        let file = dir
            .open_std(name, OFlags::WRONLY | OFlags::APPEND)
            .map_err(io("open", &path))?;
        Ok(Journal {
            path,
            name: name.to_owned(),
            dir,
            inner: Mutex::new(Inner {
                file: Some(file),
                next_id: paths.len() as u64 + 1,
                entries,
                paths,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fetch of `path` the journal knows, when it expects this size and digest: its id (to
    /// go on with) and the ranges already written.
    pub(crate) fn resumable(
        &self,
        path: &Path,
        size: u64,
        digest: &str,
    ) -> Option<(u64, Vec<Range<u64>>)> {
        let inner = self.lock();
        let e = inner.entries.get(path)?;
        (e.size == size && e.digest == digest && !e.written.is_empty()).then(|| (e.id, e.ranges()))
    }

    /// The live fetch of `path` whatever its digest: its id, size, digest and written ranges.
    pub(crate) fn entry(&self, path: &Path) -> Option<(u64, u64, String, Vec<Range<u64>>)> {
        let inner = self.lock();
        let e = inner.entries.get(path)?;
        Some((e.id, e.size, e.digest.clone(), e.ranges()))
    }

    /// Starts a fresh fetch of `path` (what was written of it before is void); returns its id.
    /// Call it before emptying the file, so that no moment has the journal claiming bytes the
    /// file no longer holds.
    pub(crate) fn start(&self, path: &Path, size: u64, digest: &str) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        if let Some(old) = inner
            .entries
            .insert(path.to_path_buf(), Entry::new(id, size, digest.to_owned()))
        {
            inner.paths.remove(&old.id);
        }
        inner.paths.insert(id, path.to_path_buf());
        let record = Record::File {
            id,
            size,
            digest: digest.to_owned(),
            path: path.to_path_buf(),
        };
        self.append(&mut inner, &record);
        id
    }

    /// Bytes `range` of fetch `id` are written (the write completed).
    pub(crate) fn written(&self, id: u64, range: Range<u64>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(entry) = inner.paths.get(&id).and_then(|p| inner.entries.get_mut(p)) else {
            return;
        };
        entry.add(range.clone());
        self.append(inner, &Record::Written { id, range });
    }

    fn append(&self, inner: &mut Inner, record: &Record) {
        let Some(file) = &mut inner.file else {
            return;
        };
        // One write(2) per record on an O_APPEND file: a process killed mid-way leaves whole
        // records behind it.
        if let Err(e) = file.write_all(&record.encode()) {
            tracing::warn!(
                journal = %self.path.display(),
                "cannot append to the resume journal ({e}); going on without it"
            );
            inner.file = None;
        }
    }

    /// The fetch of `path` is over (its file is in place): the journal forgets it and is
    /// rewritten with the live fetches only (ids kept), so that a journal kept open for a
    /// server's life (a mirror's) holds only what is in flight, not every file it ever
    /// fetched. Costs one small rewrite (fsync, rename).
    pub(crate) fn done(&self, path: &Path) {
        let mut inner = self.lock();
        let Some(old) = inner.entries.remove(path) else {
            return;
        };
        inner.paths.remove(&old.id);
        if inner.file.is_none() {
            return;
        }
        let reopened = self
            .dir
            .write_atomic(&self.name, &compacted(&inner.entries))
            .and_then(|()| {
                self.dir
                    .open_std(&self.name, OFlags::WRONLY | OFlags::APPEND)
            });
        match reopened {
            Ok(file) => inner.file = Some(file),
            Err(e) => {
                tracing::warn!(
                    journal = %self.path.display(),
                    "cannot rewrite the resume journal ({e}); going on without it"
                );
                inner.file = None;
            }
        }
    }

    /// Forgets every fetch whose path `over` says is in place (done before a crash).
    pub(crate) fn done_where(&self, over: impl Fn(&Path) -> bool) {
        let paths: Vec<PathBuf> = self
            .lock()
            .entries
            .keys()
            .filter(|p| over(p))
            .cloned()
            .collect();
        for p in paths {
            self.done(&p);
        }
    }

    /// Removes the journal (its work is done) and its folder when nothing else is in it.
    pub(crate) fn remove(&self) {
        let _ = self.dir.unlink(&self.name);
        let _ = std::fs::remove_dir(self.dir.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: u64, path: &str) -> Record {
        Record::File {
            id,
            size: 100,
            digest: "ab".repeat(32),
            path: PathBuf::from(path),
        }
    }

    fn w(id: u64, range: Range<u64>) -> Record {
        Record::Written { id, range }
    }

    fn bytes(records: &[Record]) -> Vec<u8> {
        let mut out = HEADER.as_bytes().to_vec();
        for r in records {
            out.extend(r.encode());
        }
        out
    }

    #[test]
    fn records_round_trip_with_odd_paths() {
        let records = vec![
            file(1, "/c/blobs/x y%z\u{e9}"),
            w(1, 0..4096),
            Record::File {
                id: 2,
                size: 7,
                digest: "0".repeat(40),
                path: PathBuf::from(OsString::from_vec(b"/bad\xff\nname".to_vec())),
            },
            w(2, 3..7),
        ];
        let b = bytes(&records);
        let d = decode(&b);
        assert_eq!(d.records, records);
        assert_eq!(d.valid, b.len());
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_dropped_and_what_precedes_it_kept() {
        let good = bytes(&[file(1, "/a"), w(1, 0..10)]);
        let next = w(1, 10..20).encode();
        for cut in 0..next.len() {
            let mut b = good.clone();
            b.extend_from_slice(&next[..cut]);
            let d = decode(&b);
            assert_eq!(d.records.len(), 2, "cut at {cut}");
            assert_eq!(d.valid, good.len());
        }
        // A flipped bit anywhere in a record voids it and everything after.
        for i in 0..next.len() - 1 {
            let mut bad = next.clone();
            bad[i] ^= 0x04;
            let mut b = good.clone();
            b.extend_from_slice(&bad);
            b.extend(w(1, 20..30).encode());
            let d = decode(&b);
            assert_eq!(d.records.len(), 2, "flip at {i}: {:?}", d.records);
        }
        assert!(decode(b"not a journal\n").records.is_empty());
        assert!(decode(b"").records.is_empty());
    }

    #[test]
    fn replay_merges_runs_and_a_new_fetch_voids_the_old_one() {
        let e = replay(&[
            file(1, "/a"),
            w(1, 10..20),
            w(1, 30..40),
            w(1, 20..30),  // fills the hole
            w(1, 90..200), // clipped to the size
            file(2, "/b"),
            w(2, 0..5),
            w(9, 0..50),   // no such fetch
            file(3, "/b"), // /b starts over
            w(2, 5..10),   // the old fetch: ignored
            w(3, 50..60),
        ]);
        assert_eq!(e[Path::new("/a")].ranges(), [10..40, 90..100]);
        assert_eq!(
            e[Path::new("/b")].ranges(),
            std::iter::once(50..60).collect::<Vec<_>>()
        );
        assert_eq!(e[Path::new("/b")].id, 3);
    }

    #[test]
    fn a_journal_survives_reopening_compacted_and_locks_its_folder() {
        let dir = tempfile::tempdir().expect("tmp");
        let jdir = dir.path().join("j");
        let p = dir.path().join("blob");
        let digest = "cd".repeat(32);
        {
            let j = Journal::open(dir.path(), Path::new("j"), "c.journal").expect("open");
            assert!(matches!(
                Journal::open(dir.path(), Path::new("j"), "c.journal"),
                Err(OpenError::Busy(_))
            ));
            let id = j.start(&p, 1 << 20, &digest);
            for i in 0..16u64 {
                j.written(id, i * 4096..(i + 1) * 4096);
            }
            j.written(id, 100_000..200_000);
            // Dropped without `remove`: as if the process had been killed.
        }
        // A torn record at the end, as a kill in the middle of a write could leave.
        let path = jdir.join("c.journal");
        let mut b = std::fs::read(&path).expect("read");
        b.extend_from_slice(b"1234abcd W 1 ");
        std::fs::write(&path, &b).expect("write");
        let j = Journal::open(dir.path(), Path::new("j"), "c.journal").expect("reopen");
        assert_eq!(
            j.resumable(&p, 1 << 20, &digest),
            Some((1, vec![0..65536, 100_000..200_000]))
        );
        assert_eq!(
            j.resumable(&p, 1 << 20, &"ee".repeat(32)),
            None,
            "other digest"
        );
        assert_eq!(j.resumable(&p, 2 << 20, &digest), None, "other size");
        let compacted = std::fs::read(&path).expect("read");
        assert_eq!(decode(&compacted).records.len(), 3, "F + two runs");
        // A fresh fetch voids the old ranges, in memory and on disk.
        let id = j.start(&p, 1 << 20, &digest);
        assert_eq!(j.resumable(&p, 1 << 20, &digest), None);
        j.written(id, 0..10);
        drop(j);
        let j = Journal::open(dir.path(), Path::new("j"), "c.journal").expect("reopen");
        assert_eq!(
            j.resumable(&p, 1 << 20, &digest).map(|r| r.1),
            Some(std::iter::once(0..10).collect())
        );
        j.remove();
        assert!(!jdir.exists(), "journal and folder removed");
    }

    #[test]
    fn a_fetch_that_is_done_leaves_the_journal_and_the_others_stay_with_their_ids() {
        let dir = tempfile::tempdir().expect("tmp");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let digest = "cd".repeat(32);
        let path = dir.path().join("j/m.journal");
        {
            let j = Journal::open(dir.path(), Path::new("j"), "m.journal").expect("open");
            let (ia, ib) = (j.start(&a, 100, &digest), j.start(&b, 100, &digest));
            j.written(ia, 0..50);
            j.written(ib, 0..10);
            j.done(&a);
            assert_eq!(j.resumable(&a, 100, &digest), None);
            assert_eq!(
                decode(&std::fs::read(&path).expect("read")).records.len(),
                2
            );
            // b goes on under the same id, appended to the rewritten file.
            j.written(ib, 10..20);
            // A journal reopened after a crash forgets what is in place.
            j.done_where(|p| p == b);
            j.written(ib, 20..30);
            let c = dir.path().join("c");
            let ic = j.start(&c, 100, &digest);
            j.written(ic, 0..5);
        }
        let j = Journal::open(dir.path(), Path::new("j"), "m.journal").expect("reopen");
        assert_eq!(j.resumable(&a, 100, &digest), None);
        assert_eq!(
            j.resumable(&b, 100, &digest),
            None,
            "done, its later writes void"
        );
        assert_eq!(
            j.resumable(&dir.path().join("c"), 100, &digest)
                .map(|r| r.1),
            Some(std::iter::once(0..5).collect())
        );
    }
}
