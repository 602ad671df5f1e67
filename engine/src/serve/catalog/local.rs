//! The `--local-dir` layout under the root: `org/name/` holding files at their repo paths and
//! `.cache/huggingface/download/<path>.metadata`, scanned into a [`Repo`].
//!
//! Invariant: only files whose metadata names the repo's commit, and is not older than the
//! file, are served. Not here: the cache layout (`cache.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::cache::regular_file_inside;
use super::*;
use crate::hub::RepoType;

pub(super) fn is_local_repo(dir: &Path) -> bool {
    dir.join(".cache/huggingface/download").is_dir()
}

/// Local-dir repos at `dir/name` and `dir/org/name`; with `org` given, `dir` is the org folder.
pub(super) fn local_dirs_under(dir: &Path, org: Option<&str>) -> Vec<(PathBuf, String)> {
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

/// A `--local-dir` download: files at their paths, metadata under `.cache/huggingface/download`.
pub(super) fn scan_local_repo(dir: &Path, kind: RepoType, id: String) -> Option<Repo> {
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
