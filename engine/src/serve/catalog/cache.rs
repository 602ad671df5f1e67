//! The huggingface_hub cache layout under the root: `models--org--name/` with `refs/`,
//! `blobs/` and `snapshots/<commit>/` symlinks, scanned into a [`Repo`].
//!
//! Invariant: a snapshot entry is served only when its link's final target is a regular file
//! inside the repo's own folder; symlinked directories are never followed. Not here: the
//! `--local-dir` layout (`local.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::hub::RepoType;
use crate::hub::repo::is_hex;

/// A huggingface_hub cache folder: `refs/`, `blobs/`, `snapshots/<commit>/`.
pub(super) fn scan_cache_repo(dir: &Path, kind: RepoType, id: String) -> Option<Repo> {
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
pub(super) fn scan_snapshot(snap: &Path, repo: &Path, blobs: &Path) -> BTreeMap<String, FileEntry> {
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
pub(super) fn child_path(rel: &str, entry: &fs::DirEntry) -> Option<String> {
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
pub(super) fn regular_file_inside(path: &Path, within: &Path) -> Option<(PathBuf, u64)> {
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
