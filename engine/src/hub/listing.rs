//! The file list of a repo at a commit, as the Hub's API states it, and the checks that make a
//! hostile listing harmless.
//!
//! [`TreeEntry`] and [`RevisionInfo`] are the JSON shapes ferry reads (the `/tree` walk, and the
//! `siblings` of the revision endpoint as a fallback). [`check`] turns them into [`RemoteFile`]s:
//! every path is a relative, normalised repo path that cannot leave the target directory (no
//! `..`, no absolute path, no backslash, no NUL or control character, no over-long name, no file
//! that is also a directory, no duplicate), and every file has the digest it will be verified
//! against. [`Filter`] applies `--include`/`--exclude` the way huggingface_hub does.
//!
//! Pure functions: no I/O.

use std::collections::HashSet;

use globset::{GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::repo::is_hex;
use crate::verify::HashAlgorithm;

/// One entry of `GET /api/{type}s/{repo}/tree/{commit}?recursive=true`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TreeEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub oid: Option<String>,
    #[serde(default)]
    pub lfs: Option<TreeLfs>,
}

/// The LFS part of a tree entry: `oid` is the sha256.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TreeLfs {
    pub oid: String,
    pub size: u64,
}

/// `GET /api/{type}s/{repo}/revision/{rev}[?blobs=true]`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RevisionInfo {
    pub sha: String,
    #[serde(default)]
    pub siblings: Option<Vec<Sibling>>,
}

/// One file of [`RevisionInfo::siblings`] (sizes and ids only with `blobs=true`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Sibling {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    #[serde(default)]
    pub lfs: Option<SiblingLfs>,
}

/// The LFS part of a sibling.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SiblingLfs {
    pub sha256: String,
    pub size: u64,
}

/// A file to mirror: where it goes, how big it is, and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteFile {
    /// The repo path (`/`-separated, checked by [`check`]).
    pub path: String,
    pub size: u64,
    /// sha256 for LFS files, the git blob id otherwise.
    pub algorithm: HashAlgorithm,
    /// Lowercase hex; also the blob's name in the cache (the Hub's ETag).
    pub etag: String,
    /// The git blob id of the file (of its LFS pointer, for an LFS file), when listed: what a
    /// tree listing kept beside the cache (`trees/COMMIT.json`) records.
    pub blob_id: Option<String>,
}

/// Longest repo path accepted, and longest single name (Linux's `NAME_MAX`).
const MAX_PATH: usize = 1024;
const MAX_NAME: usize = 255;

/// Files from a tree walk (directories are skipped; their paths are checked through the files).
pub(crate) fn from_tree(entries: Vec<TreeEntry>) -> Result<Vec<RemoteFile>, String> {
    let mut files = Vec::new();
    for e in entries {
        match e.kind.as_str() {
            "directory" => continue,
            "file" => {}
            other => return Err(format!("entry {:?} has unknown type {other:?}", e.path)),
        }
        let lfs = e.lfs.map(|l| (l.oid, l.size));
        files.push(remote_file(e.path, e.size, e.oid, lfs)?);
    }
    Ok(files)
}

/// Files from `siblings` (the revision endpoint asked with `blobs=true`).
pub(crate) fn from_siblings(siblings: Vec<Sibling>) -> Result<Vec<RemoteFile>, String> {
    siblings
        .into_iter()
        .map(|s| {
            let lfs = s.lfs.map(|l| (l.sha256, l.size));
            remote_file(s.rfilename, s.size, s.blob_id, lfs)
        })
        .collect()
}

/// A listed file: an LFS file is named and sized by its LFS part (sha256, size), any other by
/// its git blob id and size.
fn remote_file(
    path: String,
    size: Option<u64>,
    oid: Option<String>,
    lfs: Option<(String, u64)>,
) -> Result<RemoteFile, String> {
    let (algorithm, etag, size, blob_id) = match lfs {
        Some((sha256, size)) => (HashAlgorithm::Sha256, sha256, size, oid),
        None => {
            let oid = oid.ok_or_else(|| format!("file {path:?} has no git blob id"))?;
            let size = size.ok_or_else(|| format!("file {path:?} has no size"))?;
            (HashAlgorithm::GitSha1, oid.clone(), size, Some(oid))
        }
    };
    Ok(RemoteFile {
        path,
        size,
        algorithm,
        etag,
        blob_id,
    })
}

/// Checks every path and digest of a listing; the first problem is the error.
pub(crate) fn check(mut files: Vec<RemoteFile>) -> Result<Vec<RemoteFile>, String> {
    let mut seen = HashSet::new();
    let mut dirs = HashSet::new();
    for f in &mut files {
        check_path(&f.path)?;
        let want = match f.algorithm {
            HashAlgorithm::Sha256 => 64,
            HashAlgorithm::GitSha1 => 40,
        };
        let etag = f.etag.trim_matches('"').to_ascii_lowercase();
        if !is_hex(&etag, want) {
            return Err(format!(
                "file {:?} has a malformed {} {:?}",
                f.path, f.algorithm, f.etag
            ));
        }
        f.etag = etag;
        // Kept only as the 40 hex digits a git blob id is.
        f.blob_id = f
            .blob_id
            .take()
            .map(|b| b.to_ascii_lowercase())
            .filter(|b| is_hex(b, 40));
        if !seen.insert(f.path.clone()) {
            return Err(format!("file {:?} is listed twice", f.path));
        }
        let mut at = 0;
        while let Some(i) = f.path[at..].find('/') {
            dirs.insert(f.path[..at + i].to_owned());
            at += i + 1;
        }
    }
    if let Some(both) = files.iter().find(|f| dirs.contains(&f.path)) {
        return Err(format!(
            "{:?} is listed both as a file and as a directory",
            both.path
        ));
    }
    Ok(files)
}

/// A path a listing may name: it stays inside the directory it is joined to
/// ([`stays_inside`]), is not over-long, and is not where the mirror keeps its metadata.
fn check_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("refusing path {path:?} from the listing: {why}"));
    stays_inside(path).or_else(bad)?;
    if path.len() > MAX_PATH {
        return bad("longer than 1024 bytes");
    }
    if path.split('/').any(|p| p.len() > MAX_NAME) {
        return bad("a name longer than 255 bytes");
    }
    // ferry's own bookkeeping lives there in a local dir, as huggingface_hub's does.
    if path == ".cache/huggingface" || path.starts_with(".cache/huggingface/") {
        return bad("inside .cache/huggingface, where the mirror keeps its metadata");
    }
    // Names of ferry's partial and temporary files: a listed file so named would be taken for
    // a leftover (and removed by `ferry gc`), or collide with another file's partial.
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.ends_with(".ferry-partial") || name.contains(".ferry-tmp-") {
        return bad("named like ferry's partial or temporary files");
    }
    Ok(())
}

/// A relative repo path that names nothing outside its repo: non-empty segments separated by
/// `/`, none `.` or `..`, no backslash and no control character (NUL included). `ferry serve`
/// applies the same rule to request paths. The error says what is wrong.
pub(crate) fn stays_inside(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty");
    }
    if path.starts_with('/') {
        return Err("absolute");
    }
    if path.contains('\\') {
        return Err("backslash");
    }
    if path.chars().any(char::is_control) {
        return Err("NUL or control character");
    }
    for part in path.split('/') {
        match part {
            "" => return Err("empty path segment"),
            "." | ".." => return Err("'.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

/// `--include` / `--exclude` as huggingface_hub applies them: fnmatch patterns (`*` also
/// crosses `/`), a pattern ending in `/` stands for everything below it, a file is kept when it
/// matches an include (or none is given) and no exclude.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Filter {
    pub(crate) fn new(include: &[String], exclude: &[String]) -> Result<Filter, String> {
        fn set(patterns: &[String]) -> Result<Option<GlobSet>, String> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in patterns {
                let p = if p.ends_with('/') {
                    format!("{p}*")
                } else {
                    p.clone()
                };
                let glob = globset::GlobBuilder::new(&p)
                    .literal_separator(false)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| format!("bad pattern {p:?}: {e}"))?;
                b.add(glob);
            }
            b.build().map(Some).map_err(|e| e.to_string())
        }
        Ok(Filter {
            include: set(include)?,
            exclude: set(exclude)?,
        })
    }

    pub(crate) fn keeps(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(path))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> RemoteFile {
        RemoteFile {
            path: path.into(),
            size: 1,
            algorithm: HashAlgorithm::GitSha1,
            etag: "a".repeat(40),
            blob_id: None,
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\\b",
            "a\0b",
            "a\nb",
            "a//b",
            "./a",
            "",
            ".cache/huggingface/download/x.metadata",
            "weights.bin.ferry-partial",
            "sub/x.ferry-tmp-0123456789abcdef",
        ] {
            assert!(check(vec![file(bad)]).is_err(), "{bad:?} must be refused");
        }
        let long = "n".repeat(256);
        assert!(check(vec![file(&long)]).is_err());
        assert!(check(vec![file(&format!("{}/x", "d/".repeat(600)))]).is_err());
        assert!(check(vec![file("a"), file("a")]).is_err(), "duplicate");
        assert!(
            check(vec![file("a"), file("a/b")]).is_err(),
            "file and directory"
        );
        assert!(check(vec![file("a/b"), file("a")]).is_err());
        assert!(check(vec![file("sub dir/ü #1.txt"), file(".gitattributes")]).is_ok());
    }

    #[test]
    fn digests_are_checked_and_normalised() {
        let mut f = file("x");
        f.etag = format!("\"{}\"", "AB".repeat(20));
        let ok = check(vec![f.clone()]).expect("quoted upper-case hex is fine");
        assert_eq!(ok[0].etag, "ab".repeat(20));
        f.etag = "ab".repeat(32);
        assert!(check(vec![f]).is_err(), "a sha256 where a sha1 belongs");
    }

    #[test]
    fn tree_entries_become_files() {
        let json = r#"[
            {"type":"directory","path":"sub","oid":"0000000000000000000000000000000000000000","size":0},
            {"type":"file","path":"sub/config.json","size":12,"oid":"1111111111111111111111111111111111111111"},
            {"type":"file","path":"model.safetensors","size":134,"oid":"2222222222222222222222222222222222222222",
             "lfs":{"oid":"3333333333333333333333333333333333333333333333333333333333333333","size":1000000,"pointerSize":134}}
        ]"#;
        let entries: Vec<TreeEntry> = serde_json::from_str(json).expect("parses");
        let files = check(from_tree(entries).expect("files")).expect("valid");
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].algorithm, HashAlgorithm::GitSha1);
        assert_eq!(files[1].size, 1_000_000, "the LFS size, not the pointer's");
        assert_eq!(files[1].algorithm, HashAlgorithm::Sha256);
    }

    #[test]
    fn filters_match_like_huggingface_hub() {
        let f = Filter::new(
            &["*.json".into(), "tokenizer/".into()],
            &["*secret*".into()],
        )
        .expect("valid");
        assert!(f.keeps("config.json"));
        assert!(f.keeps("sub/dir/config.json"), "* crosses / as in fnmatch");
        assert!(f.keeps("tokenizer/vocab.txt"));
        assert!(!f.keeps("model.safetensors"));
        assert!(!f.keeps("a/secret.json"));
        let all = Filter::new(&[], &["*.bin".into()]).expect("valid");
        assert!(all.keeps("x.safetensors") && !all.keeps("pytorch_model.bin"));
    }
}
