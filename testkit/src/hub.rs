//! A synthetic Hugging Face repo for the pull and serve tests, and a static copy of the Hub's
//! API for it that any plain file server (nginx) can serve: JSON files where the API routes
//! are, the files under `resolve/<commit>/`.
//!
//! The repo looks like a small model: LFS-like shards (sha256 names, some sizes around page
//! boundaries) and small git files (config, tokenizer; git blob ids), nested paths, a name with
//! a space. Bytes are seeded ([`crate::write_data`]), so every test knows what must arrive.
//!
//! [`StaticHub`] serves one under nginx ([`crate::Nginx`]); [`Repo::cache_folder`] and
//! [`Repo::snapshot`] say where huggingface_hub's cache layout puts it, which is where a pull
//! must land. Nothing here runs ferry or checks what it wrote.

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

impl Repo {
    /// The repo's file at `path`; panics when it has none (a test's own fixture).
    pub fn file(&self, path: &str) -> &RepoFile {
        self.files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{} has no file {path:?}", self.id))
    }

    /// The repo's folder in the huggingface_hub cache at `cache`: `models--ORG--NAME`.
    pub fn cache_folder(&self, cache: &Path) -> PathBuf {
        cache_folder(cache, &self.id)
    }

    /// The snapshot of the repo's commit in the cache at `cache`.
    pub fn snapshot(&self, cache: &Path) -> PathBuf {
        self.cache_folder(cache)
            .join("snapshots")
            .join(&self.commit)
    }
}

/// The folder of model repo `id` (`org/name`) in the huggingface_hub cache at `cache`:
/// `models--org--name`.
pub fn cache_folder(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

/// A static Hub for the synthetic model repo `org/model`, served by nginx (over HTTPS too when
/// started with a certificate). The server stops and the files go when it drops.
#[derive(Debug)]
pub struct StaticHub {
    /// The repo served.
    pub repo: Repo,
    /// The static Hub's files (nginx's root).
    pub root: PathBuf,
    /// The server.
    pub nginx: crate::Nginx,
    _dir: tempfile::TempDir,
}

impl StaticHub {
    /// [`MODEL`] as `org/model`, its tree listing replaced by what `tree` returns (a hostile
    /// listing), if anything.
    pub fn start(tree: impl FnOnce(&Repo) -> Option<serde_json::Value>) -> StaticHub {
        StaticHub::start_with(MODEL, tree, None)
    }

    /// `spec` (as [`make_repo`] takes it) as `org/model`, with the tree of `tree` if any, over
    /// HTTPS too with `tls`.
    pub fn start_with(
        spec: &[(&str, u64, bool)],
        tree: impl FnOnce(&Repo) -> Option<serde_json::Value>,
        tls: Option<&crate::tls::ServerCert>,
    ) -> StaticHub {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = make_repo(dir.path(), "org/model", spec);
        let root = dir.path().join("hub");
        write_static_hub(&root, &repo, tree(&repo));
        let nginx = match tls {
            Some(cert) => crate::Nginx::start_tls(&root, cert),
            None => crate::Nginx::start(&root),
        };
        StaticHub {
            repo,
            root,
            nginx,
            _dir: dir,
        }
    }

    /// The Hub endpoint at nginx's `/files/`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/files", self.nginx.port())
    }

    /// The Hub endpoint at nginx's `/slow/` (8 MiB/s per request), so that a test can act in
    /// the middle of a pull.
    pub fn slow_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/slow", self.nginx.port())
    }

    /// The Hub endpoint at nginx's `/gated/`: the repo is gated, and only
    /// [`crate::nginx::GATED_TOKEN`] opens it.
    pub fn gated_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/gated", self.nginx.port())
    }

    /// The Hub endpoint at nginx's `/limited/`: every request is rate-limited (429).
    pub fn limited_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/limited", self.nginx.port())
    }

    /// The Hub endpoint over HTTPS (started with a certificate, valid for `localhost`).
    pub fn https_endpoint(&self) -> String {
        format!("https://localhost:{}/files", self.nginx.tls_port())
    }

    /// How many requests for file bytes (`resolve`) nginx has logged.
    pub fn resolves(&self) -> usize {
        self.resolves_since(0).len()
    }

    /// The requests for file bytes logged after the first `skip`.
    pub fn resolves_since(&self, skip: usize) -> Vec<crate::Request> {
        self.nginx
            .requests(0)
            .into_iter()
            .filter(|r| r.uri.contains("/resolve/"))
            .skip(skip)
            .collect()
    }
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
