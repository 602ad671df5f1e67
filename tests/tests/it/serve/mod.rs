//! `ferry serve` end to end, on loopback only: the stock `huggingface_hub` client downloads whole
//! snapshots and single files from it (cache layout, local-dir layout, model and dataset repos)
//! and reads them back offline; a raw HTTP client checks the protocol details (headers, ranges,
//! tree paging, errors), that no request path reaches outside the root, and the connection
//! limits (oversized heads, a stalled client, keep-alive).
//!
//! Every test builds its repos in a temporary folder, starts `ferry serve --addr 127.0.0.1:0`,
//! reads the port from its first stdout line, and kills the child by its PID when the test ends,
//! also when it fails.
//!
//! The fixtures (repos in both layouts) and the raw HTTP/1.1 client are here; the tests are in
//! `client` (the real huggingface_hub), `protocol` (headers, ranges, paging, errors, the root)
//! and `limits` (connection limits).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_testkit::data::seeded;
use ferry_testkit::hf::{have_hf_client, hf_client, hf_client_ca};
use ferry_testkit::record::{self, Trial};
use ferry_testkit::serve::Serve;
use ferry_testkit::tls::TestPki;
use sha2::{Digest, Sha256};

mod client;
mod dragonfly;
mod h3;
mod limits;
mod mirror;
mod protocol;
pub(crate) mod torrents;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const COMMIT_PR: &str = "fedcba9876543210fedcba9876543210fedcba98";
const SECRET: &[u8] = b"TOP-SECRET: this file lies outside the served root\n";

// ---------------------------------------------------------------------------------------------
// Hashes.

use ferry_testkit::hub::git_blob_id as git_sha1;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn lfs_pointer(sha256: &str, size: usize) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// One file of a fixture repo.
#[derive(Debug, Clone)]
struct FixtureFile {
    path: String,
    bytes: Vec<u8>,
    lfs: bool,
}

impl FixtureFile {
    fn etag(&self) -> String {
        if self.lfs {
            sha256_hex(&self.bytes)
        } else {
            git_sha1(&self.bytes)
        }
    }

    fn oid(&self) -> String {
        if self.lfs {
            git_sha1(lfs_pointer(&self.etag(), self.bytes.len()).as_bytes())
        } else {
            self.etag()
        }
    }
}

fn file(path: &str, bytes: Vec<u8>, lfs: bool) -> FixtureFile {
    FixtureFile {
        path: path.to_owned(),
        bytes,
        lfs,
    }
}

/// LFS files of 3 MiB, 1 byte and 0 bytes, small git files, nested folders, an odd name.
fn model_files() -> Vec<FixtureFile> {
    vec![
        file("model.safetensors", seeded(3 << 20, 1), true),
        file("one.bin", vec![0x5a], true),
        file("empty.bin", Vec::new(), true),
        file(
            "config.json",
            br#"{"architectures": ["FerryModel"], "hidden_size": 8}"#.to_vec(),
            false,
        ),
        file(
            "tokenizer.json",
            br#"{"version": "1.0", "model": {"type": "BPE"}}"#.to_vec(),
            false,
        ),
        file("sub/dir/x.txt", b"nested x\n".to_vec(), false),
        file("sub/y.txt", b"nested y\n".to_vec(), false),
        file("with space #\u{fc}.txt", b"odd name\n".to_vec(), false),
    ]
}

fn dataset_files() -> Vec<FixtureFile> {
    vec![
        file("data/train.parquet", seeded(200_000, 7), true),
        file("README.md", b"# a dataset\n".to_vec(), false),
    ]
}

/// Writes a huggingface_hub cache folder `root/<folder>` with `refs/main` -> [`COMMIT`].
fn write_cache_repo(root: &Path, folder: &str, commit: &str, rev: &str, files: &[FixtureFile]) {
    let repo = root.join(folder);
    let blobs = repo.join("blobs");
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&blobs).expect("blobs");
    std::fs::create_dir_all(&snap).expect("snapshot");
    for f in files {
        let etag = f.etag();
        std::fs::write(blobs.join(&etag), &f.bytes).expect("blob");
        let link = snap.join(&f.path);
        std::fs::create_dir_all(link.parent().expect("parent")).expect("dirs");
        let depth = f.path.matches('/').count();
        let target = format!("{}../../blobs/{etag}", "../".repeat(depth));
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
    }
    let ref_path = repo.join("refs").join(rev);
    std::fs::create_dir_all(ref_path.parent().expect("parent")).expect("refs");
    std::fs::write(ref_path, commit).expect("ref");
}

/// Writes a `--local-dir` download at `dir`: the files plus their `.metadata`.
fn write_local_repo(dir: &Path, commit: &str, files: &[FixtureFile]) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for f in files {
        let path = dir.join(&f.path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(&path, &f.bytes).expect("file");
        let meta = dir
            .join(".cache/huggingface/download")
            .join(format!("{}.metadata", f.path));
        std::fs::create_dir_all(meta.parent().expect("parent")).expect("dirs");
        std::fs::write(meta, format!("{commit}\n{}\n{}\n", f.etag(), now + 1.0)).expect("meta");
    }
}

/// A cache-layout root: `org/name` (model, with `refs/pr/1`, a regular file in the snapshot and
/// a symlink that leads outside the root), `solo` (no org) and the dataset `org/data`. Returns
/// the temp dir (root is `tmp/root`, the secret lies in `tmp/outside`).
fn cache_root() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("secret.txt"), SECRET).expect("secret");
    write_cache_repo(&root, "models--org--name", COMMIT, "main", &model_files());
    // A second revision, reachable as `refs/pr/1`.
    write_cache_repo(
        &root,
        "models--org--name",
        COMMIT_PR,
        "refs/pr/1",
        &[file("config.json", b"{\"pr\": 1}".to_vec(), false)],
    );
    let snap = root.join("models--org--name/snapshots").join(COMMIT);
    // A snapshot entry that is a regular file: served with a computed git sha1.
    std::fs::write(snap.join("plain.txt"), b"a regular file in the snapshot\n").expect("plain");
    // Symlinks out of the root, absolute and relative: never served.
    std::os::unix::fs::symlink(outside.join("secret.txt"), snap.join("leak.txt")).expect("leak");
    std::os::unix::fs::symlink("../../../../outside/secret.txt", snap.join("leak2.txt"))
        .expect("leak2");
    write_cache_repo(
        &root,
        "models--solo",
        COMMIT,
        "main",
        &[file("config.json", b"{}".to_vec(), false)],
    );
    write_cache_repo(
        &root,
        "datasets--org--data",
        COMMIT,
        "main",
        &dataset_files(),
    );
    tmp
}

/// The files `org/name` serves at `main` in [`cache_root`].
fn cache_model_files() -> Vec<FixtureFile> {
    let mut v = model_files();
    v.push(file(
        "plain.txt",
        b"a regular file in the snapshot\n".to_vec(),
        false,
    ));
    v
}

/// A local-dir root: model `org/name`, dataset `datasets/org/data`, and a stray file without
/// metadata (not served).
fn local_root() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("root");
    write_local_repo(&root.join("org/name"), COMMIT, &model_files());
    std::fs::write(root.join("org/name/stray.txt"), b"no metadata\n").expect("stray");
    write_local_repo(&root.join("datasets/org/data"), COMMIT, &dataset_files());
    tmp
}

// ---------------------------------------------------------------------------------------------
// The server under test.

/// A running `ferry serve`; killed by its PID when dropped.
// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client.

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body: {e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn error_code(&self) -> Option<&str> {
        self.header("X-Error-Code")
    }
}

/// Reads one response from `r` (`head_only`: the request was HEAD, no body follows).
fn read_response(r: &mut BufReader<TcpStream>, head_only: bool) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':').expect("header");
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if !head_only {
        let len: usize = resp
            .header("Content-Length")
            .expect("Content-Length")
            .parse()
            .expect("length");
        resp.body = vec![0; len];
        r.read_exact(&mut resp.body).expect("body");
    }
    assert_no_xet(&resp);
    resp
}

/// No Xet header, ever (clients would switch protocols).
fn assert_no_xet(r: &Resp) {
    for (n, v) in &r.headers {
        assert!(!n.to_ascii_lowercase().starts_with("x-xet"), "{n}: {v}");
        assert!(!v.contains("xet-auth"), "{n}: {v}");
    }
    assert!(
        !String::from_utf8_lossy(&r.body).contains("xetHash"),
        "xetHash in a body"
    );
}

/// One request on a fresh connection.
fn request(s: &Serve, method: &str, target: &str, extra: &[(&str, &str)]) -> Resp {
    let mut conn = BufReader::new(s.connect());
    send(conn.get_mut(), method, target, extra, true);
    read_response(&mut conn, method == "HEAD")
}

fn send(stream: &mut TcpStream, method: &str, target: &str, extra: &[(&str, &str)], close: bool) {
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    if !extra.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        let port = stream.peer_addr().expect("peer").port();
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (n, v) in extra {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if close {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("send request");
}

fn get(s: &Serve, target: &str) -> Resp {
    request(s, "GET", target, &[])
}

fn get_range(s: &Serve, target: &str, range: &str) -> Resp {
    request(s, "GET", target, &[("Range", range)])
}

/// `quote(path)` as huggingface_hub does: `/` kept, the rest percent-encoded.
fn quote(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every regular file under `dir` (following symlinks), by repo path; `.cache` is skipped.
fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.file_name().is_some_and(|n| n == ".cache") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("under").to_str().expect("utf8");
                out.insert(rel.to_owned(), std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

fn assert_snapshot(got: &Path, want: &[FixtureFile], what: &str) {
    let got = files_under(got);
    let want: BTreeMap<String, Vec<u8>> = want
        .iter()
        .map(|f| (f.path.clone(), f.bytes.clone()))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: file list"
    );
    for (path, bytes) in &want {
        assert!(got[path] == *bytes, "{what}: {path} differs");
    }
    eprintln!("{what}: {} files byte-identical", want.len());
}

/// `ferry pull REPO --endpoint ENDPOINT --ca-file CA --cache-dir CACHE --json EXTRA...` on
/// `backend`, which must succeed: its JSON report.
fn pull_json(
    backend: ferry_testkit::Backend,
    (repo, endpoint): (&str, &str),
    ca: &str,
    cache: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let cache_s = cache.to_str().expect("utf-8");
    let mut args = vec![
        "pull",
        repo,
        "--endpoint",
        endpoint,
        "--ca-file",
        ca,
        "--cache-dir",
        cache_s,
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = ferry_testkit::ferry(backend, &args);
    assert!(
        o.status.success(),
        "{backend:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON report")
}
