//! The catalog: every repo, revision and file `ferry serve` answers for, built by one scan of the
//! root and read-only afterwards (shared by all connection threads without locks).
//!
//! A file is known by its canonical path on disk, found and checked at scan time: a snapshot
//! symlink is followed to its final target, which must be a regular file inside the repo's own
//! folder. Requests never build paths; they look files up here by (repo, commit, path).
//!
//! This module only reads: it never writes under the root, never follows symlinked
//! directories (no loops), and does not re-hash blobs whose name already is their etag.

mod cache;
mod local;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use sha2::Digest;

use self::cache::scan_cache_repo;
use self::local::{is_local_repo, local_dirs_under, scan_local_repo};

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
    pub(super) fn new(
        commit: String,
        files: BTreeMap<String, FileEntry>,
        last_modified: u64,
    ) -> Snapshot {
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

    /// Every repo, in no particular order.
    pub(super) fn repos(&self) -> impl Iterator<Item = &Repo> {
        self.repos.values()
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
mod tests;
