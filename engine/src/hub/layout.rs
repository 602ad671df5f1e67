//! Where a pulled repo's files go on disk, in one of the two layouts huggingface_hub itself
//! reads:
//!
//! - [`Layout::Cache`]: the huggingface_hub cache. `models--org--name/blobs/<etag>` holds the
//!   bytes, `snapshots/<commit>/<path>` is a relative symlink to the blob, `refs/<revision>`
//!   names the commit. `huggingface_hub` with `HF_HUB_OFFLINE=1` and `transformers` load from
//!   it with no network. Files with the same content share one blob.
//! - [`Layout::LocalDir`]: plain files at their repo paths, plus
//!   `.cache/huggingface/download/<path>.metadata` (commit, etag, time) as huggingface_hub's
//!   `--local-dir` writes them.
//!
//! Bytes reach a final name only through the data plane, verified; this module then adds the
//! names that point at them (symlinks, metadata, refs), each replaced atomically with a rename.
//! It decides nothing about what to fetch beyond "is this file already here".

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::error::HubError;
use super::listing::RemoteFile;
use super::repo::{RepoId, RepoType};
use crate::backend::nofollow::Dir;
use crate::verify::{Checksum, Hasher, mark};

/// Where and how a repo is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The huggingface_hub cache rooted here (`HF_HUB_CACHE`).
    Cache(PathBuf),
    /// Plain files in this directory.
    LocalDir(PathBuf),
}

/// One repo's place in a layout.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    layout: Layout,
    /// The cache or the local dir, as the user gave it: beneath it, no symlink is followed
    /// when ferry writes.
    base: PathBuf,
    /// The repo's folder (cache) or the local dir.
    root: PathBuf,
}

impl Place {
    pub(crate) fn new(layout: &Layout, repo: &RepoId, kind: RepoType) -> Place {
        let (base, root) = match layout {
            Layout::Cache(cache) => (cache.clone(), cache.join(repo.cache_folder(kind))),
            Layout::LocalDir(dir) => (dir.clone(), dir.clone()),
        };
        Place {
            layout: layout.clone(),
            base,
            root,
        }
    }

    /// The directory `dir` (beneath the base), held open, reached without following a symlink
    /// beneath the base; created when missing and `create`.
    fn dir(&self, dir: &Path, create: bool) -> Result<Dir, HubError> {
        let rel = dir.strip_prefix(&self.base).map_err(|_| HubError::Io {
            op: "open directory",
            path: dir.to_path_buf(),
            source: io::Error::other(format!("not beneath {}", self.base.display())),
        })?;
        if create {
            // The base is the user's (a cache or a local dir, maybe not made yet).
            std::fs::create_dir_all(&self.base).map_err(io_err("create directory", &self.base))?;
        }
        Dir::open(&self.base)
            .and_then(|b| b.beneath(rel, create))
            .map_err(io_err("open directory", dir))
    }

    /// The directory every file of this place lies beneath (where no symlink is followed).
    /// The directory of `path` (beneath the base, opened following no symlink) and its name.
    #[cfg(feature = "swarm")]
    pub(super) fn dir_and_name(&self, path: &Path) -> Result<(Dir, std::ffi::OsString), HubError> {
        let parent = path.parent().unwrap_or(&self.root);
        let name = path.file_name().unwrap_or_default().to_owned();
        Ok((self.dir(parent, false)?, name))
    }

    pub(super) fn base(&self) -> &Path {
        &self.base
    }

    fn is_cache(&self) -> bool {
        matches!(self.layout, Layout::Cache(_))
    }

    /// Where the data plane writes `f`'s bytes.
    pub(crate) fn bytes_path(&self, f: &RemoteFile) -> PathBuf {
        if self.is_cache() {
            self.root.join("blobs").join(&f.etag)
        } else {
            self.root.join(&f.path)
        }
    }

    /// Where `f` appears for users: the snapshot entry, or the local file.
    pub(crate) fn file_path(&self, commit: &str, f: &RemoteFile) -> PathBuf {
        if self.is_cache() {
            self.root.join("snapshots").join(commit).join(&f.path)
        } else {
            self.root.join(&f.path)
        }
    }

    fn metadata_path(&self, f: &RemoteFile) -> PathBuf {
        self.root
            .join(".cache/huggingface/download")
            .join(format!("{}.metadata", f.path))
    }

    /// The snapshot directory (cache) or the local dir: what a user opens.
    pub(super) fn snapshot_dir(&self, commit: &str) -> PathBuf {
        if self.is_cache() {
            self.root.join("snapshots").join(commit)
        } else {
            self.root.clone()
        }
    }

    /// Creates the directories the files of `files` need, so the data plane can write them.
    pub(crate) fn prepare(&self, files: &[RemoteFile]) -> Result<(), HubError> {
        let mut dirs: Vec<PathBuf> = vec![self.root.clone()];
        if self.is_cache() {
            dirs.push(self.root.join("blobs"));
        } else {
            for f in files {
                if let Some(parent) = self.root.join(&f.path).parent() {
                    dirs.push(parent.to_path_buf());
                }
            }
        }
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            self.dir(&d, true)?;
        }
        Ok(())
    }

    /// True when `f`'s verified bytes are already here: the blob (cache), or the local file
    /// whose metadata names the same etag (local dir), has the listed size and either carries
    /// ferry's verified mark for this digest ([`mark`]) or is hashed now and found right (and
    /// then marked). A file with other bytes is reported and fetched again (its fresh copy
    /// replaces it). So a file another tool left, or one changed since, is never reused unread.
    pub(super) fn has(&self, f: &RemoteFile) -> bool {
        let path = self.bytes_path(f);
        // Not through a symlink: a blob that is a link to another file is fetched again.
        let in_place = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_file() && m.len() == f.size)
            && (self.is_cache()
                || std::fs::read_to_string(self.metadata_path(f))
                    .is_ok_and(|m| m.lines().nth(1) == Some(f.etag.as_str())));
        if !in_place {
            return false;
        }
        let Some(digest) = Checksum::parse(f.algorithm, &f.etag) else {
            return false;
        };
        if mark::is_marked(&path, &digest) {
            return true;
        }
        tracing::info!(file = %f.path, "in place but not verified by ferry: hashing it");
        match hash_file(&path, f) {
            Ok(got) if got == digest => {
                if let Ok(file) = std::fs::File::open(&path) {
                    mark::set(&file, &digest);
                }
                true
            }
            Ok(got) => {
                tracing::warn!(
                    "{} is in place with other bytes than the listing says ({} {got}, not {digest}); fetching it again",
                    path.display(),
                    f.algorithm
                );
                false
            }
            Err(e) => {
                tracing::warn!("cannot read {} ({e}); fetching it again", path.display());
                false
            }
        }
    }

    /// Makes `f` (whose bytes are in place) visible at `commit`: the snapshot symlink, or the
    /// local-dir metadata. Nothing is written when it is already there (a second pull).
    pub(crate) fn publish(&self, commit: &str, f: &RemoteFile) -> Result<(), HubError> {
        if self.is_cache() {
            let link = self.file_path(commit, f);
            let target = link_target(f);
            if std::fs::read_link(&link).is_ok_and(|t| t == target) {
                return Ok(());
            }
            let parent = link.parent().unwrap_or(&self.root);
            let name = link.file_name().unwrap_or_default();
            self.dir(parent, true)?
                .symlink_atomic(&target, name)
                .map_err(io_err("create symlink", &link))?;
        } else {
            let meta = self.metadata_path(f);
            let published = std::fs::read_to_string(&meta).is_ok_and(|m| {
                let mut lines = m.lines();
                lines.next() == Some(commit) && lines.next() == Some(f.etag.as_str())
            });
            if published {
                return Ok(());
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            self.write_atomic(&meta, format!("{commit}\n{}\n{now}\n", f.etag).as_bytes())?;
        }
        Ok(())
    }

    /// Removes the partial files ferry left for files of `files` that are in place now (not in
    /// `fetching`): another tool completed them after a pull was interrupted. Only ferry's own
    /// partial name is touched, never huggingface_hub's; call it under the journal's lock.
    pub(super) fn remove_stale_partials(&self, files: &[RemoteFile], fetching: &[RemoteFile]) {
        let wanted: std::collections::HashSet<PathBuf> =
            fetching.iter().map(|f| self.bytes_path(f)).collect();
        for f in files {
            let path = self.bytes_path(f);
            if wanted.contains(&path) {
                continue;
            }
            let Some(parent) = path.parent() else {
                continue;
            };
            let Ok(dir) = self.dir(parent, false) else {
                continue;
            };
            for suffix in [super::pull::PARTIAL_SUFFIX, super::pull::SWARM_SUFFIX] {
                let mut name = path.file_name().unwrap_or_default().to_owned();
                name.push(suffix);
                if dir.stat(&name).ok().flatten().is_some() && dir.unlink(&name).is_ok() {
                    tracing::info!(
                        "removed {}: the file is complete now",
                        parent.join(&name).display()
                    );
                }
            }
        }
    }

    /// Where the listing of `commit` is kept (`trees/COMMIT.json`, as huggingface_hub keeps it).
    pub(crate) fn trees_path(&self, commit: &str) -> PathBuf {
        let folder = if self.is_cache() {
            self.root.clone()
        } else {
            self.root.join(".cache/huggingface")
        };
        folder.join("trees").join(format!("{commit}.json"))
    }

    /// Keeps the listing of `commit` (every file of it) beside the mirror; nothing when the
    /// listing lacks the git blob ids huggingface_hub's format needs.
    pub(crate) fn write_trees(&self, commit: &str, files: &[RemoteFile]) -> Result<(), HubError> {
        match super::trees::encode(files) {
            Some(bytes) => self.write_atomic(&self.trees_path(commit), &bytes),
            None => Ok(()),
        }
    }

    /// The listing of `commit` kept beside the mirror, if any (checked like a listing from the
    /// network); `Err` when one is there but cannot be used.
    pub(crate) fn read_trees(&self, commit: &str) -> Result<Option<Vec<RemoteFile>>, String> {
        use std::io::Read;
        let path = self.trees_path(commit);
        let parent = path.parent().unwrap_or(&self.root);
        let Ok(dir) = self.dir(parent, false) else {
            return Ok(None);
        };
        let name = path.file_name().unwrap_or_default();
        let mut file = match dir.open_std(name, rustix::fs::OFlags::RDONLY) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut bytes = Vec::new();
        file.by_ref()
            .take(super::trees::MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if bytes.len() as u64 > super::trees::MAX_BYTES {
            return Err(format!(
                "{}: larger than {} bytes",
                path.display(),
                super::trees::MAX_BYTES
            ));
        }
        super::trees::decode(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The commit `refs/REVISION` names (cache only), read without following a symlink.
    pub(crate) fn read_ref(&self, revision: &str) -> Option<String> {
        use std::io::Read;
        let path = self.root.join("refs").join(revision);
        let dir = self.dir(path.parent()?, false).ok()?;
        let mut file = dir
            .open_std(path.file_name()?, rustix::fs::OFlags::RDONLY)
            .ok()?;
        let mut text = String::new();
        file.by_ref().take(64).read_to_string(&mut text).ok()?;
        let commit = text.trim().to_ascii_lowercase();
        super::repo::is_commit(&commit).then_some(commit)
    }

    /// The commit the files of a local dir were pulled at, when their metadata all name one.
    pub(super) fn local_commit(&self) -> Option<String> {
        let mut commits = std::collections::BTreeSet::new();
        let mut stack = vec![self.root.join(".cache/huggingface/download")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).ok()?.flatten() {
                let kind = e.file_type().ok()?;
                if kind.is_dir() {
                    stack.push(e.path());
                } else if kind.is_file() && e.file_name().to_string_lossy().ends_with(".metadata") {
                    let text = std::fs::read_to_string(e.path()).ok()?;
                    commits.insert(text.lines().next()?.to_owned());
                }
            }
        }
        let mut it = commits.into_iter();
        match (it.next(), it.next()) {
            (Some(c), None) if super::repo::is_commit(&c) => Some(c),
            _ => None,
        }
    }

    /// What `f` of `commit` is in this mirror: good (its bytes hash right, and it is marked
    /// so), missing, or damaged (with why). Always hashes: it does not trust marks.
    pub(super) fn check(
        &self,
        commit: &str,
        f: &RemoteFile,
        hashed: &mut dyn FnMut(u64),
    ) -> (super::verify::FileState, Option<String>) {
        use super::verify::FileState;
        let entry = self.file_path(commit, f);
        let Ok(meta) = std::fs::symlink_metadata(&entry) else {
            return (FileState::Missing, None);
        };
        let bytes = if meta.file_type().is_symlink() && self.is_cache() {
            let target = std::fs::read_link(&entry).unwrap_or_default();
            if target != link_target(f) {
                return (
                    FileState::Damaged,
                    Some(format!(
                        "the snapshot entry points to {}, not its blob",
                        target.display()
                    )),
                );
            }
            self.bytes_path(f)
        } else {
            entry
        };
        match std::fs::symlink_metadata(&bytes) {
            Err(_) => return (FileState::Missing, Some("its blob is missing".into())),
            Ok(m) if !m.is_file() => {
                return (FileState::Damaged, Some("not a regular file".into()));
            }
            Ok(m) if m.len() != f.size => {
                return (
                    FileState::Damaged,
                    Some(format!("{} bytes, listed with {}", m.len(), f.size)),
                );
            }
            Ok(_) => {}
        }
        let Some(digest) = Checksum::parse(f.algorithm, &f.etag) else {
            return (
                FileState::Damaged,
                Some("the listing's digest is not valid".into()),
            );
        };
        match hash_file_counted(&bytes, f, hashed) {
            Ok(got) if got == digest => {
                if let Ok(file) = std::fs::File::open(&bytes) {
                    mark::set(&file, &digest);
                }
                (FileState::Good, None)
            }
            Ok(got) => (
                FileState::Damaged,
                Some(format!("{} {got}, listed {digest}", f.algorithm)),
            ),
            Err(e) => (FileState::Damaged, Some(format!("cannot read it: {e}"))),
        }
    }

    /// Records that `revision` is `commit` (cache only; a commit names itself).
    pub(crate) fn set_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        // Unchanged: no write (a mirror resolves the same branch again every minute).
        if !self.is_cache()
            || revision == commit
            || self.read_ref(revision).as_deref() == Some(commit)
        {
            return Ok(());
        }
        self.write_atomic(&self.root.join("refs").join(revision), commit.as_bytes())
    }

    /// A marker (`.ferry/public` in the repo's cache folder) that the upstream listed this
    /// repo to a caller without a token: what an offline mirror serves to anyone.
    pub(crate) fn mark_public(&self) -> Result<(), HubError> {
        if self.is_public() {
            return Ok(());
        }
        let (_, rel) = self.journal_dir();
        self.write_atomic(&self.base.join(rel).join("public"), b"")
    }

    /// Whether [`Place::mark_public`] was done, read without following a symlink.
    pub(crate) fn is_public(&self) -> bool {
        let (_, rel) = self.journal_dir();
        let marker = self.base.join(rel).join("public");
        let (Some(parent), Some(name)) = (marker.parent(), marker.file_name()) else {
            return false;
        };
        self.dir(parent, false)
            .and_then(|d| d.stat(name).map_err(io_err("stat", &marker)))
            .is_ok_and(|st| st.is_some())
    }

    /// Writes `bytes` to `path` (beneath the base) through a new temporary file, fsynced,
    /// renamed into place; no symlink on the way or at the name is followed.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), HubError> {
        let parent = path.parent().unwrap_or(&self.root);
        let name = path.file_name().unwrap_or_default();
        self.dir(parent, true)?
            .write_atomic(name, bytes)
            .map_err(io_err("write", path))
    }

    /// The folder of the pull's resume journals (and its lock): `.ferry/` in the repo's cache
    /// folder (huggingface_hub ignores what it does not know there), or
    /// `.cache/huggingface/ferry/` in a local dir (where no listed path can be).
    pub(crate) fn journal_dir(&self) -> (&Path, PathBuf) {
        let dir = if self.is_cache() {
            self.root.join(".ferry")
        } else {
            self.root.join(".cache/huggingface/ferry")
        };
        let rel = dir.strip_prefix(&self.base).unwrap_or(&dir).to_path_buf();
        (&self.base, rel)
    }

    /// The directory whose filesystem receives the bytes (for the free-space check).
    pub(super) fn bytes_dir(&self) -> PathBuf {
        if self.is_cache() {
            self.root.join("blobs")
        } else {
            self.root.clone()
        }
    }
}

/// The digest of the file at `path`, as `f`'s algorithm computes it.
fn hash_file(path: &Path, f: &RemoteFile) -> io::Result<Checksum> {
    hash_file_counted(path, f, &mut |_| {})
}

/// [`hash_file`], telling `hashed` each step's bytes (not following `path` if a symlink).
fn hash_file_counted(
    path: &Path,
    f: &RemoteFile,
    hashed: &mut dyn FnMut(u64),
) -> io::Result<Checksum> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    hash_reader(file, f, hashed)
}

/// The digest of what `r` reads to its end, as `f`'s algorithm computes it, telling `hashed`
/// each step's bytes.
pub(super) fn hash_reader(
    mut r: impl Read,
    f: &RemoteFile,
    hashed: &mut dyn FnMut(u64),
) -> io::Result<Checksum> {
    let mut hasher = Hasher::new(f.algorithm, f.size);
    let mut buf = vec![0u8; 4 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                hashed(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `../../blobs/<etag>` with one more `../` per directory level of the repo path.
fn link_target(f: &RemoteFile) -> PathBuf {
    let depth = f.path.matches('/').count();
    let mut t = "../".repeat(depth + 2);
    t.push_str("blobs/");
    t.push_str(&f.etag);
    PathBuf::from(t)
}

/// The error of `op` on `path`, for `map_err`.
fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HubError {
    let path = path.to_path_buf();
    move |source| HubError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::HashAlgorithm;

    /// A listed file holding `abc`.
    fn file(path: &str) -> RemoteFile {
        let mut h = Hasher::new(HashAlgorithm::GitSha1, 3);
        h.update(b"abc");
        RemoteFile {
            path: path.into(),
            size: 3,
            algorithm: HashAlgorithm::GitSha1,
            etag: h.finalize().to_string(),
            blob_id: None,
        }
    }

    #[test]
    fn snapshot_links_are_relative_and_resolve_to_the_blob() {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = RepoId::parse("org/name").expect("valid");
        let place = Place::new(&Layout::Cache(dir.path().into()), &repo, RepoType::Model);
        let commit = "c".repeat(40);
        let f = file("a/b/c.txt");
        place.prepare(std::slice::from_ref(&f)).expect("dirs");
        std::fs::write(place.bytes_path(&f), b"abd").expect("blob");
        assert!(!place.has(&f), "the right size, the wrong bytes");
        std::fs::write(place.bytes_path(&f), b"abc").expect("blob");
        assert!(place.has(&f), "hashed and found right");
        assert!(place.has(&f), "then known by its mark");
        place.publish(&commit, &f).expect("link");
        let link = place.file_path(&commit, &f);
        assert_eq!(
            std::fs::read_link(&link).expect("a symlink"),
            PathBuf::from(format!("../../../../blobs/{}", f.etag))
        );
        assert_eq!(std::fs::read(&link).expect("resolves"), b"abc");
        place.set_ref("main", &commit).expect("ref");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("models--org--name/refs/main")).expect("ref"),
            commit
        );
    }

    #[test]
    fn local_dir_files_carry_their_metadata() {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = RepoId::parse("org/name").expect("valid");
        let place = Place::new(&Layout::LocalDir(dir.path().into()), &repo, RepoType::Model);
        let f = file("sub/x.json");
        place.prepare(std::slice::from_ref(&f)).expect("dirs");
        std::fs::write(place.bytes_path(&f), b"abc").expect("file");
        assert!(
            !place.has(&f),
            "no metadata yet: not known to be this version"
        );
        place.publish(&"c".repeat(40), &f).expect("metadata");
        assert!(place.has(&f));
        let meta = std::fs::read_to_string(
            dir.path()
                .join(".cache/huggingface/download/sub/x.json.metadata"),
        )
        .expect("metadata");
        let lines: Vec<&str> = meta.lines().collect();
        assert_eq!(lines[..2], ["c".repeat(40), f.etag.clone()]);
    }
}
