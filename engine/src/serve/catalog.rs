//! The catalog: every repo, revision and file `ferry serve` answers for, built by one scan of the
//! root and read-only afterwards (shared by all connection threads without locks).
//!
//! A file is known by its canonical path on disk, found and checked at scan time: a snapshot
//! symlink is followed to its final target, which must be a regular file inside the repo's own
//! folder. Requests never build paths; they look files up here by (repo, commit, path).
//!
//! This module only reads: it never writes under the root, never follows symlinked
//! directories (no loops), and does not re-hash blobs whose name already is their etag.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use sha2::Digest;

use super::Summary;
use super::route::valid_repo_path;
use super::small_files::{read_metadata, read_ref, with_kept_listing};
use crate::hub::RepoType;
use crate::hub::repo::is_hex;
use crate::verify::git_blob_hasher;

/// The LFS facts of a file whose etag is a sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lfs {
    /// Lowercase hex.
    pub sha256: String,
    /// Length of the git-lfs pointer file that stands for it in git.
    pub pointer_size: u64,
}

/// One file of a snapshot.
#[derive(Debug, Clone)]
pub(crate) struct FileEntry {
    /// Canonical path of the bytes; `None` for a file the commit's kept listing names but that
    /// is not here (a partial pull): listed, answered 404 like a missing file on the Hub.
    pub disk: Option<PathBuf>,
    pub size: u64,
    /// The git blob id: of the bytes for a non-LFS file, of its pointer file for an LFS file.
    pub oid: String,
    pub lfs: Option<Lfs>,
}

impl FileEntry {
    /// What `ETag` says: the sha256 for LFS files, the git blob sha1 otherwise.
    pub(super) fn etag(&self) -> &str {
        match &self.lfs {
            Some(l) => &l.sha256,
            None => &self.oid,
        }
    }

    fn new(disk: PathBuf, size: u64, etag: &str) -> Option<FileEntry> {
        FileEntry::with_disk(Some(disk), size, etag)
    }

    pub(super) fn with_disk(disk: Option<PathBuf>, size: u64, etag: &str) -> Option<FileEntry> {
        let etag = etag.to_ascii_lowercase();
        if is_hex(&etag, 64) {
            let pointer = lfs_pointer(&etag, size);
            Some(FileEntry {
                disk,
                size,
                oid: git_blob_sha1(pointer.as_bytes()),
                lfs: Some(Lfs {
                    sha256: etag,
                    pointer_size: pointer.len() as u64,
                }),
            })
        } else if is_hex(&etag, 40) {
            Some(FileEntry {
                disk,
                size,
                oid: etag,
                lfs: None,
            })
        } else {
            None
        }
    }
}

/// One item of a tree listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeItem {
    pub path: String,
    pub is_dir: bool,
}

/// The files of one commit.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub commit: String,
    pub files: BTreeMap<String, FileEntry>,
    /// Every directory that holds a file, at any depth.
    pub dirs: BTreeSet<String>,
    /// Files and directories, sorted by path.
    pub items: Vec<TreeItem>,
    /// Unix seconds.
    pub last_modified: u64,
}

impl Snapshot {
    fn new(commit: String, files: BTreeMap<String, FileEntry>, last_modified: u64) -> Snapshot {
        let mut dirs = BTreeSet::new();
        for path in files.keys() {
            let mut at = path.as_str();
            while let Some(i) = at.rfind('/') {
                at = &at[..i];
                if !dirs.insert(at.to_owned()) {
                    break;
                }
            }
        }
        let mut items: Vec<TreeItem> = files
            .keys()
            .map(|p| TreeItem {
                path: p.clone(),
                is_dir: false,
            })
            .chain(dirs.iter().map(|d| TreeItem {
                path: d.clone(),
                is_dir: true,
            }))
            .collect();
        items.sort_by(|a, b| a.path.cmp(&b.path));
        Snapshot {
            commit,
            files,
            dirs,
            items,
            last_modified,
        }
    }

    /// Sum of the sizes of the files at or under `path` (`""`: the whole snapshot); `None` when
    /// `path` is neither a file nor a directory.
    pub(super) fn size_under(&self, path: &str) -> Option<u64> {
        if path.is_empty() {
            return Some(self.files.values().map(|f| f.size).sum());
        }
        if let Some(f) = self.files.get(path) {
            return Some(f.size);
        }
        if !self.dirs.contains(path) {
            return None;
        }
        let prefix = format!("{path}/");
        Some(
            self.files
                .range(prefix.clone()..)
                .take_while(|(p, _)| p.starts_with(&prefix))
                .map(|(_, f)| f.size)
                .sum(),
        )
    }
}

/// One repo: its branch names and its snapshots.
#[derive(Debug)]
pub(crate) struct Repo {
    pub kind: RepoType,
    pub id: String,
    /// Revision name (`main`, `refs/pr/1`) -> commit.
    pub refs: BTreeMap<String, String>,
    /// Commit -> snapshot.
    pub snapshots: HashMap<String, Arc<Snapshot>>,
}

impl Repo {
    /// The snapshot a revision names: a ref, or a commit sha that has a snapshot.
    pub(super) fn snapshot(&self, rev: &str) -> Option<&Arc<Snapshot>> {
        if let Some(commit) = self.refs.get(rev) {
            return self.snapshots.get(commit);
        }
        if is_hex(rev, 40) {
            return self.snapshots.get(&rev.to_ascii_lowercase());
        }
        None
    }

    /// The snapshot served when no revision is named: `main`, else the only snapshot.
    pub(super) fn default_snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.snapshot("main").or_else(|| {
            let mut it = self.snapshots.values();
            match (it.next(), it.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        })
    }
}

/// Every repo found under the root.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    repos: HashMap<(RepoType, String), Repo>,
}

impl Catalog {
    pub(super) fn repo(&self, kind: RepoType, id: &str) -> Option<&Repo> {
        self.repos.get(&(kind, id.to_owned()))
    }

    pub(super) fn summary(&self) -> Summary {
        let mut s = Summary {
            repos: self.repos.len(),
            snapshots: 0,
            files: 0,
            bytes: 0,
        };
        for repo in self.repos.values() {
            s.snapshots += repo.snapshots.len();
            for snap in repo.snapshots.values() {
                s.files += snap.files.len();
                s.bytes += snap.files.values().map(|f| f.size).sum::<u64>();
            }
        }
        s
    }

    /// Scans `root` (canonical). Fails only when the root itself cannot be listed; a repo that
    /// cannot be read is skipped with a warning.
    pub(super) fn scan(root: &Path) -> io::Result<Catalog> {
        let mut catalog = Catalog::default();
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                tracing::warn!(path = ?entry.path(), "symlink under the root skipped: repos must be real folders");
                continue;
            }
            let Some(name) = dir_name(&entry) else {
                continue;
            };
            let path = entry.path();
            let cache = [
                ("models--", RepoType::Model),
                ("datasets--", RepoType::Dataset),
                ("spaces--", RepoType::Space),
            ]
            .into_iter()
            .find_map(|(prefix, kind)| name.strip_prefix(prefix).map(|rest| (kind, rest)));
            if let Some((kind, rest)) = cache {
                let parts: Vec<&str> = rest.split("--").collect();
                if !parts.iter().all(|p| valid_repo_segment(p)) || parts.len() > 2 {
                    tracing::warn!(dir = ?path, "not a repo folder name; skipped");
                    continue;
                }
                catalog.add(scan_cache_repo(&path, kind, parts.join("/")));
            } else {
                let kind = match name.as_str() {
                    "datasets" => Some(RepoType::Dataset),
                    "spaces" => Some(RepoType::Space),
                    _ => None,
                };
                match kind {
                    Some(kind) => {
                        for (dir, id) in local_dirs_under(&path, None) {
                            catalog.add(scan_local_repo(&dir, kind, id));
                        }
                    }
                    None if is_local_repo(&path) && valid_repo_segment(&name) => {
                        catalog.add(scan_local_repo(&path, RepoType::Model, name));
                    }
                    None => {
                        for (dir, id) in local_dirs_under(&path, Some(&name)) {
                            catalog.add(scan_local_repo(&dir, RepoType::Model, id));
                        }
                    }
                }
            }
        }
        Ok(catalog)
    }

    fn add(&mut self, repo: Option<Repo>) {
        let Some(repo) = repo else { return };
        let files: usize = repo.snapshots.values().map(|s| s.files.len()).sum();
        tracing::info!(
            kind = repo.kind.plural(),
            id = %repo.id,
            refs = ?repo.refs.keys().collect::<Vec<_>>(),
            snapshots = repo.snapshots.len(),
            files,
            "serving repo"
        );
        let key = (repo.kind, repo.id.clone());
        if self.repos.contains_key(&key) {
            tracing::warn!(kind = repo.kind.plural(), id = %repo.id, "repo found twice; the first one found is served");
            return;
        }
        self.repos.insert(key, repo);
    }
}

/// The name of a real (not symlinked) directory that is not hidden.
fn dir_name(entry: &fs::DirEntry) -> Option<String> {
    let ft = entry.file_type().ok()?;
    let name = entry.file_name().into_string().ok()?;
    (ft.is_dir() && !name.starts_with('.')).then_some(name)
}

/// Letters, digits, `-`, `_`, `.`, not starting with `.`: what the Hub allows in a repo name.
fn valid_repo_segment(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 96
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_local_repo(dir: &Path) -> bool {
    dir.join(".cache/huggingface/download").is_dir()
}

/// Local-dir repos at `dir/name` and `dir/org/name`; with `org` given, `dir` is the org folder.
fn local_dirs_under(dir: &Path, org: Option<&str>) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        tracing::warn!(dir = ?dir, "cannot list; skipped");
        return found;
    };
    for entry in entries.flatten() {
        let Some(name) = dir_name(&entry) else {
            continue;
        };
        if !valid_repo_segment(&name) {
            continue;
        }
        let path = entry.path();
        match org {
            Some(org) if valid_repo_segment(org) => {
                if is_local_repo(&path) {
                    found.push((path, format!("{org}/{name}")));
                }
            }
            Some(_) => {}
            None if is_local_repo(&path) => found.push((path, name)),
            None => found.extend(local_dirs_under(&path, Some(&name))),
        }
    }
    found
}

fn mtime_secs(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// `dir`'s canonical path; a folder that cannot be resolved is skipped, with a warning.
fn canonical_dir(dir: &Path) -> Option<PathBuf> {
    dir.canonicalize()
        .map_err(|e| tracing::warn!(dir = ?dir, error = %e, "cannot resolve; skipped"))
        .ok()
}

/// A huggingface_hub cache folder: `refs/`, `blobs/`, `snapshots/<commit>/`.
fn scan_cache_repo(dir: &Path, kind: RepoType, id: String) -> Option<Repo> {
    let canonical = canonical_dir(dir)?;
    let blobs = canonical.join("blobs");
    let mut refs = BTreeMap::new();
    // `refs/` and `snapshots/` are read only when they are real folders: a symlinked one could
    // lead anywhere. A ref is read as at most 64 bytes (a commit is 40).
    let real_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let mut stack = Vec::new();
    if real_dir(&canonical.join("refs")) {
        stack.push((canonical.join("refs"), String::new()));
    } else if fs::symlink_metadata(canonical.join("refs")).is_ok() {
        tracing::warn!(dir = ?canonical.join("refs"), "refs/ is not a real folder; ignored");
    }
    while let Some((at, rel)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let (Ok(ft), Ok(name)) = (entry.file_type(), entry.file_name().into_string()) else {
                continue;
            };
            let rev = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if ft.is_dir() {
                stack.push((entry.path(), rev));
            } else if ft.is_file() {
                match read_ref(&entry.path()) {
                    Some(commit) => {
                        refs.insert(rev, commit);
                    }
                    None => {
                        tracing::warn!(file = ?entry.path(), "not a commit sha; ref skipped")
                    }
                }
            }
        }
    }
    let mut snapshots = HashMap::new();
    let snapshot_dir = canonical.join("snapshots");
    let entries = real_dir(&snapshot_dir)
        .then(|| fs::read_dir(&snapshot_dir).ok())
        .flatten();
    if let Some(entries) = entries {
        for entry in entries.flatten() {
            let Some(commit) = dir_name(&entry).filter(|n| is_hex(n, 40)) else {
                continue;
            };
            let last_modified = entry.metadata().map_or(0, |m| mtime_secs(&m));
            let commit = commit.to_ascii_lowercase();
            let files = scan_snapshot(&entry.path(), &canonical, &blobs);
            let files = with_kept_listing(&canonical.join("trees"), &commit, files, &id);
            snapshots.insert(
                commit.clone(),
                Arc::new(Snapshot::new(commit, files, last_modified)),
            );
        }
    }
    refs.retain(|rev, commit| {
        let kept = snapshots.contains_key(commit);
        if !kept {
            tracing::warn!(repo = %id, rev = ?rev, %commit, "ref names a commit without a snapshot; skipped");
        }
        kept
    });
    if snapshots.is_empty() {
        tracing::warn!(dir = ?dir, "no snapshot; repo skipped");
        return None;
    }
    Some(Repo {
        kind,
        id,
        refs,
        snapshots,
    })
}

/// The files of `snapshots/<commit>/`, each followed to a regular file inside `repo`.
fn scan_snapshot(snap: &Path, repo: &Path, blobs: &Path) -> BTreeMap<String, FileEntry> {
    let mut files = BTreeMap::new();
    let mut stack = vec![(snap.to_path_buf(), String::new())];
    while let Some((at, rel)) = stack.pop() {
        let entries = match fs::read_dir(&at) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = ?at, error = %e, "cannot list; skipped");
                continue;
            }
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            let Some(repo_path) = child_path(&rel, &entry) else {
                tracing::warn!(file = ?path, "name not servable (not UTF-8, or a control character or backslash); skipped");
                continue;
            };
            if ft.is_dir() {
                stack.push((path, repo_path));
                continue;
            }
            if !(ft.is_symlink() || ft.is_file()) {
                continue;
            }
            let Some((target, size)) = regular_file_inside(&path, repo) else {
                continue;
            };
            let blob_etag = (target.parent() == Some(blobs))
                .then(|| target.file_name().and_then(|n| n.to_str()))
                .flatten()
                .filter(|n| is_hex(n, 40) || is_hex(n, 64))
                .map(str::to_owned);
            let entry = match blob_etag {
                Some(etag) => FileEntry::new(target, size, &etag),
                None => match git_sha1_of_file(&target, size) {
                    Ok(oid) => FileEntry::new(target, size, &oid),
                    Err(e) => {
                        tracing::warn!(file = ?path, error = %e, "cannot hash; skipped");
                        None
                    }
                },
            };
            if let Some(entry) = entry {
                files.insert(repo_path, entry);
            }
        }
    }
    files
}

/// `rel/name` when `name` is a servable repo path component.
fn child_path(rel: &str, entry: &fs::DirEntry) -> Option<String> {
    let name = entry.file_name().into_string().ok()?;
    let p = if rel.is_empty() {
        name
    } else {
        format!("{rel}/{name}")
    };
    valid_repo_path(&p).then_some(p)
}

/// The canonical target of `path` and its size, if it is a regular file inside `within`
/// (canonical). A target outside is refused with a warning: it must not be served.
fn regular_file_inside(path: &Path, within: &Path) -> Option<(PathBuf, u64)> {
    let target = match path.canonicalize() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(file = ?path, error = %e, "dangling; skipped");
            return None;
        }
    };
    if !target.starts_with(within) {
        tracing::warn!(file = ?path, target = ?target, "leads outside its repo folder; refused");
        return None;
    }
    let meta = fs::metadata(&target).ok()?;
    meta.is_file().then_some((target, meta.len()))
}

/// A `--local-dir` download: files at their paths, metadata under `.cache/huggingface/download`.
fn scan_local_repo(dir: &Path, kind: RepoType, id: String) -> Option<Repo> {
    let canonical = canonical_dir(dir)?;
    let meta_root = canonical.join(".cache/huggingface/download");
    // (repo path, commit, etag, timestamp) of every readable metadata file.
    let mut found: Vec<(String, String, String, f64)> = Vec::new();
    let mut stack = vec![(meta_root.clone(), String::new())];
    while let Some((at, rel)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if ft.is_dir() {
                let sub = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((entry.path(), sub));
                continue;
            }
            let Some(file) = name.strip_suffix(".metadata").filter(|_| ft.is_file()) else {
                continue;
            };
            let repo_path = if rel.is_empty() {
                file.to_owned()
            } else {
                format!("{rel}/{file}")
            };
            if !valid_repo_path(&repo_path) || repo_path.split('/').next() == Some(".cache") {
                continue;
            }
            match read_metadata(&entry.path()) {
                Some((commit, etag, ts)) => found.push((repo_path, commit, etag, ts)),
                None => {
                    tracing::warn!(file = ?entry.path(), "unreadable metadata; skipped")
                }
            }
        }
    }
    // The repo is at the commit of its newest metadata; older ones are leftovers of earlier
    // revisions (huggingface_hub rewrites the metadata of every file it checks).
    let newest = found
        .iter()
        .max_by(|a, b| a.3.total_cmp(&b.3))
        .map(|(_, c, _, _)| c.clone());
    let Some(commit) = newest else {
        tracing::warn!(dir = ?dir, "no download metadata; repo skipped");
        return None;
    };
    let mut files = BTreeMap::new();
    let mut newest_ts = 0f64;
    for (repo_path, c, etag, ts) in found {
        if c != commit {
            tracing::warn!(repo = %id, file = %repo_path, "metadata names an older commit; not served");
            continue;
        }
        let Some((target, size)) = regular_file_inside(&canonical.join(&repo_path), &canonical)
        else {
            continue;
        };
        // huggingface_hub's rule: metadata older than the file (by more than 1 s) is stale.
        let mtime = fs::metadata(&target)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        if mtime - 1.0 > ts {
            tracing::warn!(repo = %id, file = %repo_path, "file changed after its metadata; not served");
            continue;
        }
        match FileEntry::new(target, size, &etag) {
            Some(entry) => {
                files.insert(repo_path, entry);
                newest_ts = newest_ts.max(ts);
            }
            None => {
                tracing::warn!(repo = %id, file = %repo_path, %etag, "etag is neither a sha256 nor a git sha1; not served")
            }
        }
    }
    let trees = canonical.join(".cache/huggingface/trees");
    let files = with_kept_listing(&trees, &commit, files, &id);
    let snapshot = Arc::new(Snapshot::new(commit.clone(), files, newest_ts as u64));
    Some(Repo {
        kind,
        id,
        refs: BTreeMap::from([("main".to_owned(), commit.clone())]),
        snapshots: HashMap::from([(commit, snapshot)]),
    })
}

/// The git-lfs pointer file that stands in git for a file of this sha256 and size.
pub(crate) fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

/// `sha1("blob {len}\0" + bytes)`, lowercase hex.
pub(crate) fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut h = git_blob_hasher(bytes.len() as u64);
    h.update(bytes);
    hex::encode(h.finalize())
}

fn git_sha1_of_file(path: &Path, size: u64) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut h = git_blob_hasher(size);
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        seen += n as u64;
        h.update(&buf[..n]);
    }
    if seen != size {
        return Err(io::Error::other("file changed size while being hashed"));
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            git_blob_sha1(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(
            git_blob_sha1(b""),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
    }

    #[test]
    fn snapshot_lists_dirs_once_and_sums_sizes() {
        let f = |size| FileEntry {
            disk: Some(PathBuf::new()),
            size,
            oid: "0".repeat(40),
            lfs: None,
        };
        let files = BTreeMap::from([
            ("a/b/c.txt".to_owned(), f(1)),
            ("a/b/d.txt".to_owned(), f(2)),
            ("a/e.txt".to_owned(), f(4)),
            ("a-b".to_owned(), f(8)),
            ("z".to_owned(), f(16)),
        ]);
        let s = Snapshot::new("1".repeat(40), files, 0);
        let paths: Vec<_> = s
            .items
            .iter()
            .map(|i| (i.path.as_str(), i.is_dir))
            .collect();
        assert_eq!(
            paths,
            [
                ("a", true),
                ("a-b", false),
                ("a/b", true),
                ("a/b/c.txt", false),
                ("a/b/d.txt", false),
                ("a/e.txt", false),
                ("z", false)
            ]
        );
        assert_eq!(s.size_under(""), Some(31));
        assert_eq!(s.size_under("a"), Some(7));
        assert_eq!(s.size_under("a/b"), Some(3));
        assert_eq!(s.size_under("a-b"), Some(8));
        assert_eq!(s.size_under("nope"), None);
    }

    #[test]
    fn lfs_entries_carry_the_pointer_oid() {
        let sha = "a".repeat(64);
        let e = FileEntry::new(PathBuf::new(), 5, &sha).expect("entry");
        let pointer = lfs_pointer(&sha, 5);
        assert_eq!(e.etag(), sha);
        assert_eq!(e.oid, git_blob_sha1(pointer.as_bytes()));
        assert_eq!(
            e.lfs.as_ref().map(|l| l.pointer_size),
            Some(pointer.len() as u64)
        );
        assert!(FileEntry::new(PathBuf::new(), 5, "xyz").is_none());
    }
}
