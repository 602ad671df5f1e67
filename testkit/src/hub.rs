//! A synthetic Hugging Face repo for the pull and serve tests, and a static copy of the Hub's
//! API for it that any plain file server (nginx) can serve: JSON files where the API routes
//! are, the files under `resolve/<commit>/`.
//!
//! The repo looks like a small model: LFS-like shards (sha256 names, some sizes around page
//! boundaries) and small git files (config, tokenizer; git blob ids), nested paths, a name with
//! a space. Bytes are seeded ([`crate::write_data`]), so every test knows what must arrive.

use std::path::{Path, PathBuf};

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// What `ferry pull` adds to a blob's (or local file's) name for its partial file: never
/// huggingface_hub's `.incomplete`, which its older releases resume from.
pub const PULL_PARTIAL: &str = ".ferry-partial";

/// One file of the synthetic repo.
#[derive(Debug, Clone)]
pub struct RepoFile {
    /// The repo path.
    pub path: String,
    /// Where its bytes are (the source to compare with).
    pub source: PathBuf,
    /// Its size.
    pub size: u64,
    /// True for an LFS file (named by sha256); false for a git file (named by blob id).
    pub lfs: bool,
    /// sha256 (LFS) or git blob id: the ETag and the blob name.
    pub etag: String,
    /// The git blob id of the file (of its LFS pointer, for LFS files), the tree's `oid`.
    pub oid: String,
    /// The size of the LFS pointer (LFS files).
    pub pointer_size: u64,
}

/// A synthetic repo at one commit.
#[derive(Debug, Clone)]
pub struct Repo {
    /// `org/name`.
    pub id: String,
    /// Its commit.
    pub commit: String,
    /// Its files.
    pub files: Vec<RepoFile>,
}

/// The git blob id of `bytes`.
pub fn git_blob_id(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

/// Builds the repo's files under `dir`: `(path, size, lfs)` each; bytes seeded by position.
pub fn make_repo(dir: &Path, id: &str, spec: &[(&str, u64, bool)]) -> Repo {
    let mut files = Vec::new();
    for (i, &(path, size, lfs)) in spec.iter().enumerate() {
        let source = dir.join(format!("src-{i}"));
        crate::write_data(&source, size, 1000 + i as u64);
        files.push(repo_file(path, source, lfs));
    }
    repo(id, files)
}

/// A repo of files that exist already: `(repo path, where its bytes are, lfs)` each.
pub fn repo_from_files(id: &str, files: &[(&str, PathBuf, bool)]) -> Repo {
    let files = files
        .iter()
        .map(|(path, source, lfs)| repo_file(path, source.clone(), *lfs))
        .collect();
    repo(id, files)
}

fn repo(id: &str, files: Vec<RepoFile>) -> Repo {
    let commit = git_blob_id(id.as_bytes()); // any stable 40-hex id
    Repo {
        id: id.to_owned(),
        commit,
        files,
    }
}

/// The repo's view of the file at `source`: its ETag, tree oid and pointer size.
fn repo_file(path: &str, source: PathBuf, lfs: bool) -> RepoFile {
    let bytes = std::fs::read(&source).expect("read source");
    let size = bytes.len() as u64;
    let (etag, oid, pointer_size) = if lfs {
        let sha = hex::encode(Sha256::digest(&bytes));
        let pointer =
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n");
        (sha, git_blob_id(pointer.as_bytes()), pointer.len() as u64)
    } else {
        let oid = git_blob_id(&bytes);
        (oid.clone(), oid, 0)
    };
    RepoFile {
        path: path.to_owned(),
        source,
        size,
        lfs,
        etag,
        oid,
        pointer_size,
    }
}

/// The `/tree` JSON entries of `files` (directories included, as the Hub lists them).
pub fn tree_json(files: &[RepoFile]) -> serde_json::Value {
    let mut entries = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut at = 0;
        while let Some(i) = f.path[at..].find('/') {
            dirs.insert(f.path[..at + i].to_owned());
            at += i + 1;
        }
    }
    for d in dirs {
        entries.push(serde_json::json!({
            "type": "directory", "path": d, "size": 0, "oid": git_blob_id(d.as_bytes())
        }));
    }
    for f in files {
        let mut e = serde_json::json!({
            "type": "file", "path": f.path, "size": f.size, "oid": f.oid
        });
        if f.lfs {
            e["lfs"] =
                serde_json::json!({"oid": f.etag, "size": f.size, "pointerSize": f.pointer_size});
        }
        entries.push(e);
    }
    serde_json::Value::Array(entries)
}

/// Writes a static Hub for `repo` under `root` (a model repo): `api/models/ID/revision/main`,
/// `api/models/ID/revision/COMMIT`, `api/models/ID/tree/COMMIT` (one page) and
/// `ID/resolve/COMMIT/PATH`. `tree` overrides the tree entries (a hostile listing).
pub fn write_static_hub(root: &Path, repo: &Repo, tree: Option<serde_json::Value>) {
    let api = root.join("api/models").join(&repo.id);
    let siblings: Vec<_> = repo
        .files
        .iter()
        .map(|f| serde_json::json!({"rfilename": f.path}))
        .collect();
    let revision = serde_json::json!({"id": repo.id, "sha": repo.commit, "siblings": siblings});
    for rev in ["main", repo.commit.as_str()] {
        write(&api.join("revision").join(rev), &revision.to_string());
    }
    let tree = tree.unwrap_or_else(|| tree_json(&repo.files));
    write(&api.join("tree").join(&repo.commit), &tree.to_string());
    for f in &repo.files {
        let to = root
            .join(&repo.id)
            .join("resolve")
            .join(&repo.commit)
            .join(&f.path);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&f.source, &to).expect("copy");
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// The model repo most tests use: shards, edge sizes, small git files, nested paths.
pub const MODEL: &[(&str, u64, bool)] = &[
    (
        "model-00001-of-00002.safetensors",
        3 * 1024 * 1024 + 7,
        true,
    ),
    ("model-00002-of-00002.safetensors", 1024 * 1024, true),
    ("empty.bin", 0, true),
    ("one.bin", 1, true),
    ("page.bin", 4097, true),
    ("config.json", 700, false),
    ("tokenizer/tokenizer.json", 20_000, false),
    ("tokenizer/special tokens.txt", 4095, false),
    (".gitattributes", 1500, false),
];
