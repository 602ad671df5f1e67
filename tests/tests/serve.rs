//! `ferry serve` end to end, on loopback only: the stock `huggingface_hub` client downloads whole
//! snapshots and single files from it (cache layout, local-dir layout, model and dataset repos)
//! and reads them back offline; a raw HTTP client checks the protocol details (headers, ranges,
//! tree paging, errors), that no request path reaches outside the root, and the connection
//! limits (oversized heads, a stalled client, keep-alive).
//!
//! Every test builds its repos in a temporary folder, starts `ferry serve --addr 127.0.0.1:0`,
//! reads the port from its first stdout line, and kills the child by its PID when the test ends,
//! also when it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_testkit::hf::{have_hf_client, hf_client, hf_client_ca};
use ferry_testkit::record::{self, Trial};
use ferry_testkit::serve::Serve;
use ferry_testkit::tls::TestPki;
use sha2::{Digest, Sha256};

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

fn seeded(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
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

// ---------------------------------------------------------------------------------------------
// The real client.

fn job(op: &str, repo: &str, kind: &str, revision: &str, file: &str) -> serde_json::Value {
    serde_json::json!({ "op": op, "repo": repo, "type": kind, "revision": revision, "file": file })
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

/// snapshot_download + hf_hub_download of a model and a dataset, then the same offline; over
/// HTTPS with a certificate from `pki` when given.
fn client_round_trip(root: &Path, model: &[FixtureFile], label: &str, pki: Option<&TestPki>) {
    let cache = tempfile::tempdir().expect("cache");
    let jobs = serde_json::json!([
        job("snapshot", "org/name", "model", "main", ""),
        job("file", "org/name", "model", "main", "config.json"),
        job("file", "org/name", "model", "main", "sub/dir/x.txt"),
        job(
            "file",
            "org/name",
            "model",
            "main",
            "with space #\u{fc}.txt"
        ),
        job("file", "org/name", "model", COMMIT, "model.safetensors"),
        job("snapshot", "org/data", "dataset", "main", ""),
    ]);
    let paths = {
        let serve = match pki {
            Some(pki) => Serve::start_tls(root, &pki.localhost),
            None => Serve::start(root, None),
        };
        hf_client_ca(
            &serve.endpoint(),
            cache.path(),
            false,
            &jobs,
            pki.map(|p| p.ca.as_path()),
        )
        // The server stops here: the offline run below cannot reach it.
    };
    assert_snapshot(&paths[0], model, &format!("{label} model snapshot"));
    let by_name: BTreeMap<&str, &FixtureFile> =
        model.iter().map(|f| (f.path.as_str(), f)).collect();
    for (i, name) in [
        (1, "config.json"),
        (2, "sub/dir/x.txt"),
        (3, "with space #\u{fc}.txt"),
        (4, "model.safetensors"),
    ] {
        assert!(
            std::fs::read(&paths[i]).expect("downloaded file") == by_name[name].bytes,
            "{label}: hf_hub_download {name} differs"
        );
        assert!(paths[i].ends_with(name), "{label}: {}", paths[i].display());
    }
    assert_snapshot(
        &paths[5],
        &dataset_files(),
        &format!("{label} dataset snapshot"),
    );
    // The client names blobs by etag: sha256 for LFS files, git sha1 otherwise.
    let blobs = cache.path().join("models--org--name/blobs");
    for f in model {
        assert!(
            blobs.join(f.etag()).is_file(),
            "{label}: blob {} for {} missing",
            f.etag(),
            f.path
        );
    }

    let offline = serde_json::json!([
        job("snapshot", "org/name", "model", "main", ""),
        job("snapshot", "org/data", "dataset", "main", ""),
        job("file", "org/name", "model", "main", "config.json"),
    ]);
    let again = hf_client("http://127.0.0.1:9", cache.path(), true, &offline);
    assert_eq!(again[0], paths[0], "{label}: offline snapshot path");
    assert_snapshot(
        &again[0],
        model,
        &format!("{label} model snapshot, offline"),
    );
    assert_snapshot(
        &again[1],
        &dataset_files(),
        &format!("{label} dataset, offline"),
    );
    assert_eq!(
        std::fs::read(&again[2]).expect("offline file"),
        by_name["config.json"].bytes
    );
}

#[test]
fn huggingface_hub_downloads_from_the_cache_layout() {
    if !have_hf_client() {
        return;
    }
    let tmp = cache_root();
    client_round_trip(
        &tmp.path().join("root"),
        &cache_model_files(),
        "cache layout",
        None,
    );

    // Another revision by name, and a repo id without an org.
    let cache = tempfile::tempdir().expect("cache");
    let serve = Serve::start(&tmp.path().join("root"), None);
    let paths = hf_client(
        &serve.endpoint(),
        cache.path(),
        false,
        &serde_json::json!([
            job("file", "org/name", "model", "refs/pr/1", "config.json"),
            job("snapshot", "solo", "model", "main", ""),
        ]),
    );
    assert_eq!(std::fs::read(&paths[0]).expect("pr file"), b"{\"pr\": 1}");
    assert!(paths[0].to_string_lossy().contains(COMMIT_PR), "{paths:?}");
    assert_eq!(
        std::fs::read(paths[1].join("config.json")).expect("solo"),
        b"{}"
    );
}

#[test]
fn huggingface_hub_downloads_from_the_local_dir_layout() {
    if !have_hf_client() {
        return;
    }
    let tmp = local_root();
    client_round_trip(
        &tmp.path().join("root"),
        &model_files(),
        "local-dir layout",
        None,
    );
}

#[test]
fn huggingface_hub_downloads_over_https() {
    if !have_hf_client() {
        return;
    }
    let pki = TestPki::new();
    let tmp = cache_root();
    client_round_trip(
        &tmp.path().join("root"),
        &cache_model_files(),
        "https, cache layout",
        Some(&pki),
    );
}

// ---------------------------------------------------------------------------------------------
// Protocol details.

#[test]
fn resolve_headers_and_ranges() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let files = cache_model_files();
    let by_name: BTreeMap<&str, &FixtureFile> =
        files.iter().map(|f| (f.path.as_str(), f)).collect();

    for f in &files {
        for rev in ["main", COMMIT] {
            let target = format!("/org/name/resolve/{rev}/{}", quote(&f.path));
            let head = request(&serve, "HEAD", &target, &[]);
            let what = format!("HEAD {target}");
            assert_eq!(head.status, 200, "{what}");
            assert_eq!(head.header("X-Repo-Commit"), Some(COMMIT), "{what}");
            let quoted = format!("\"{}\"", f.etag());
            assert_eq!(head.header("ETag"), Some(quoted.as_str()), "{what}");
            assert_eq!(
                head.header("X-Linked-Etag"),
                Some(quoted.as_str()),
                "{what}"
            );
            let size = f.bytes.len().to_string();
            assert_eq!(head.header("X-Linked-Size"), Some(size.as_str()), "{what}");
            assert_eq!(head.header("Content-Length"), Some(size.as_str()), "{what}");
            assert_eq!(head.header("Accept-Ranges"), Some("bytes"), "{what}");
            if f.lfs {
                let digest = format!("SHA-256={}", base64(&Sha256::digest(&f.bytes)));
                assert_eq!(head.header("Digest"), Some(digest.as_str()), "{what}");
            }
            let body = get(&serve, &target);
            assert_eq!(body.status, 200, "GET {target}");
            assert!(body.body == f.bytes, "GET {target}: bytes differ");
        }
    }
    eprintln!(
        "HEAD and GET of {} files at main and at the commit",
        files.len()
    );

    let model = "/org/name/resolve/main/model.safetensors";
    let m = &by_name["model.safetensors"].bytes;
    let total = m.len();
    // A thousand small ranges in one header (12 KiB, under the 16 KiB head limit).
    let many: Vec<String> = (0..1000)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 5))
        .collect();
    let many = format!("bytes={}", many.join(","));
    let cases: [(&str, u16, Option<String>, &[u8]); 8] = [
        (
            "bytes=0-0",
            206,
            Some(format!("bytes 0-0/{total}")),
            &m[..1],
        ),
        (
            "bytes=100-199",
            206,
            Some(format!("bytes 100-199/{total}")),
            &m[100..200],
        ),
        (
            "bytes=-10",
            206,
            Some(format!("bytes {}-{}/{total}", total - 10, total - 1)),
            &m[total - 10..],
        ),
        (
            "bytes=3145000-",
            206,
            Some(format!("bytes 3145000-{}/{total}", total - 1)),
            &m[3_145_000..],
        ),
        (
            &format!("bytes={total}-"),
            416,
            Some(format!("bytes */{total}")),
            b"",
        ),
        ("bytes=0-1,5-9", 200, None, m),
        // Overlapping ranges, and many: the whole file once (RFC 9110 lets a server ignore
        // Range), never a multipart body that repeats or outgrows the file.
        ("bytes=0-99,50-149", 200, None, m),
        (&many, 200, None, m),
    ];
    for (range, status, content_range, want) in cases {
        let r = get_range(&serve, model, range);
        assert_eq!(r.status, status, "{range}");
        assert_eq!(
            r.header("Content-Range").map(str::to_owned),
            content_range,
            "{range}"
        );
        assert!(r.body == want, "{range}: body differs");
        assert_eq!(r.header("X-Repo-Commit"), Some(COMMIT), "{range}");
    }

    let one = "/org/name/resolve/main/one.bin";
    let r = get_range(&serve, one, "bytes=0-0");
    assert_eq!(
        (r.status, r.header("Content-Range")),
        (206, Some("bytes 0-0/1"))
    );
    assert_eq!(r.body, [0x5a]);
    let r = get_range(&serve, one, "bytes=1-");
    assert_eq!(
        (r.status, r.header("Content-Range")),
        (416, Some("bytes */1"))
    );

    let empty = "/org/name/resolve/main/empty.bin";
    for range in ["bytes=0-0", "bytes=0-", "bytes=-1", "bytes=5-9"] {
        let r = get_range(&serve, empty, range);
        assert_eq!(
            (r.status, r.header("Content-Range")),
            (416, Some("bytes */0")),
            "{range}"
        );
    }
    let r = get(&serve, empty);
    assert_eq!((r.status, r.body.len()), (200, 0));

    // If-Range with another validator: the whole file.
    let r = request(
        &serve,
        "GET",
        one,
        &[("Range", "bytes=0-0"), ("If-Range", "\"other\"")],
    );
    assert_eq!(r.status, 200);
    eprintln!(
        "ranges: single, suffix, open, unsatisfiable, multiple, overlapping and 1000 (ignored: the file once), 1-byte and 0-byte files"
    );

    // Revision info with blobs, as old clients read it.
    for q in ["?blobs=true", "?blobs=True"] {
        let info = get(&serve, &format!("/api/models/org/name/revision/main{q}")).json();
        assert_eq!(info["id"], "org/name");
        assert_eq!(info["sha"], COMMIT);
        let siblings = info["siblings"].as_array().expect("siblings");
        assert_eq!(siblings.len(), files.len());
        for s in siblings {
            let f = by_name[s["rfilename"].as_str().expect("rfilename")];
            assert_eq!(s["size"], f.bytes.len(), "{s}");
            assert_eq!(s["blobId"], f.oid(), "{s}");
            if f.lfs {
                assert_eq!(s["lfs"]["sha256"], f.etag(), "{s}");
                assert_eq!(s["lfs"]["size"], f.bytes.len(), "{s}");
                let pointer = lfs_pointer(&f.etag(), f.bytes.len());
                assert_eq!(s["lfs"]["pointerSize"], pointer.len(), "{s}");
            } else {
                assert!(s.get("lfs").is_none(), "{s}");
            }
        }
    }
    let info = get(&serve, "/api/models/org/name").json();
    assert_eq!(info["sha"], COMMIT, "no revision is main");
    let info = get(&serve, "/api/models/org/name/revision/refs%2Fpr%2F1").json();
    assert_eq!(info["sha"], COMMIT_PR);
    assert_eq!(
        info["siblings"],
        serde_json::json!([{ "rfilename": "config.json" }])
    );
    let info = get(&serve, "/api/datasets/org/data/revision/main").json();
    assert_eq!(info["id"], "org/data");

    // Tree sizes.
    let all: usize = files.iter().map(|f| f.bytes.len()).sum();
    let r = get(&serve, "/api/models/org/name/treesize/main").json();
    assert_eq!(r["size"], all);
    let sub: usize = files
        .iter()
        .filter(|f| f.path.starts_with("sub/"))
        .map(|f| f.bytes.len())
        .sum();
    let r = get(&serve, "/api/models/org/name/treesize/main/sub").json();
    assert_eq!(
        (r["path"].as_str(), r["size"].as_u64()),
        (Some("sub"), Some(sub as u64))
    );
}

/// Follows a tree listing through its `Link` pages; returns every entry and the page count.
fn walk_tree(serve: &Serve, first: &str) -> (Vec<serde_json::Value>, usize) {
    let mut entries = Vec::new();
    let mut url = format!("{}{first}", serve.endpoint());
    let mut pages = 0;
    loop {
        let target = url
            .strip_prefix(&serve.endpoint())
            .unwrap_or_else(|| panic!("next page on another origin: {url}"))
            .to_owned();
        let r = get(serve, &target);
        assert_eq!(r.status, 200, "{target}");
        pages += 1;
        let page = r.json();
        entries.extend(page.as_array().expect("array").iter().cloned());
        match r.header("Link") {
            None => break,
            Some(link) => {
                assert!(link.ends_with("; rel=\"next\""), "{link}");
                url = link
                    .strip_prefix('<')
                    .and_then(|l| l.split_once('>'))
                    .map(|(u, _)| u.to_owned())
                    .expect("link url");
                assert!(url.contains("cursor="), "{url}");
            }
        }
        assert!(pages < 100, "paging does not end");
    }
    (entries, pages)
}

#[test]
fn tree_pages_follow_link_to_the_end() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), Some(3));
    let files = cache_model_files();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for f in &files {
        let mut p = f.path.as_str();
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            dirs.insert(p.to_owned());
        }
    }

    for rev in ["main", COMMIT] {
        let (entries, pages) = walk_tree(
            &serve,
            &format!("/api/models/org/name/tree/{rev}?recursive=true&expand=false"),
        );
        let want = files.len() + dirs.len();
        assert_eq!(entries.len(), want, "every entry exactly once: {entries:?}");
        assert_eq!(pages, want.div_ceil(3), "pages of 3");
        let mut seen = BTreeSet::new();
        for e in &entries {
            let path = e["path"].as_str().expect("path").to_owned();
            assert!(seen.insert(path.clone()), "{path} listed twice");
            let oid = e["oid"].as_str().expect("oid");
            assert!(
                oid.len() == 40 && oid.bytes().all(|b| b.is_ascii_hexdigit()),
                "{e}"
            );
            match e["type"].as_str() {
                Some("directory") => assert!(dirs.contains(&path), "{path}"),
                Some("file") => {
                    let f = files.iter().find(|f| f.path == path).expect("fixture file");
                    assert_eq!(e["size"], f.bytes.len(), "{e}");
                    assert_eq!(oid, f.oid(), "{e}");
                    if f.lfs {
                        assert_eq!(e["lfs"]["oid"], f.etag(), "{e}");
                        assert_eq!(e["lfs"]["size"], f.bytes.len(), "{e}");
                        assert_eq!(
                            e["lfs"]["pointerSize"],
                            lfs_pointer(&f.etag(), f.bytes.len()).len(),
                            "{e}"
                        );
                    } else {
                        assert!(e.get("lfs").is_none(), "{e}");
                    }
                }
                other => panic!("type {other:?}"),
            }
        }
        eprintln!(
            "tree at {rev}: {} entries in {pages} pages of 3",
            entries.len()
        );
    }

    // Non-recursive: direct children only, directories included.
    let (entries, _) = walk_tree(&serve, "/api/models/org/name/tree/main?recursive=false");
    let top: BTreeSet<String> = entries
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_owned())
        .collect();
    let mut want: BTreeSet<String> = files
        .iter()
        .filter(|f| !f.path.contains('/'))
        .map(|f| f.path.clone())
        .collect();
    want.insert("sub".into());
    assert_eq!(top, want);
    // A sub-folder, its path encoded as clients do (`quote(path, safe="")`).
    let (entries, _) = walk_tree(&serve, "/api/models/org/name/tree/main/sub?recursive=false");
    let sub: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().expect("path"))
        .collect();
    assert_eq!(sub, ["sub/dir", "sub/y.txt"]);
    let (entries, _) = walk_tree(
        &serve,
        "/api/models/org/name/tree/main/sub%2Fdir?recursive=true",
    );
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["path"], "sub/dir/x.txt");
    // The Link URL never echoes the request's Host (a cache in front could hand a page that
    // names the client's host to others): it names the address the client connected to, and
    // X-Forwarded-* from a peer that is not a trusted proxy is ignored.
    let tree = "/api/models/org/name/tree/main?recursive=true";
    let own = format!(
        "<http://127.0.0.1:{}/api/models/org/name/tree/main?",
        serve.port
    );
    for extra in [
        &[("Host", "mirror.example:8443")][..],
        &[("Host", "bad\"host>")][..],
        &[
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Prefix", "/x"),
        ][..],
    ] {
        let r = request(&serve, "GET", tree, extra);
        let link = r.header("Link").expect("link");
        assert!(link.starts_with(&own), "{extra:?}: {link}");
    }
    drop(serve);
    // Behind a reverse proxy: --public-url, or a trusted proxy's X-Forwarded-*.
    let root = tmp.path().join("root");
    let serve = Serve::start_with(
        &root,
        Some(3),
        None,
        &["--public-url", "https://hub.example/mirror/"],
    );
    let r = request(&serve, "GET", tree, &[("Host", "other.example")]);
    let link = r.header("Link").expect("link");
    assert!(
        link.starts_with("<https://hub.example/mirror/api/models/org/name/tree/main?"),
        "{link}"
    );
    drop(serve);
    let serve = Serve::start_with(&root, Some(3), None, &["--trusted-proxy", "127.0.0.1"]);
    let forwarded = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "hub.example"),
        ("X-Forwarded-Prefix", "/hf"),
    ];
    let r = request(&serve, "GET", tree, &forwarded);
    let link = r.header("Link").expect("link");
    assert!(
        link.starts_with("<https://hub.example/hf/api/models/org/name/tree/main?"),
        "{link}"
    );
}

#[test]
fn errors_carry_hub_codes() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let cases: [(&str, &str, u16, Option<&str>); 12] = [
        (
            "GET",
            "/api/models/nope/nope/revision/main",
            404,
            Some("RepoNotFound"),
        ),
        ("GET", "/api/models/nope", 404, Some("RepoNotFound")),
        (
            "GET",
            "/api/datasets/org/name/revision/main",
            404,
            Some("RepoNotFound"),
        ),
        (
            "HEAD",
            "/nope/nope/resolve/main/config.json",
            404,
            Some("RepoNotFound"),
        ),
        (
            "GET",
            "/datasets/org/name/resolve/main/config.json",
            404,
            Some("RepoNotFound"),
        ),
        (
            "GET",
            "/api/models/org/name/revision/nope",
            404,
            Some("RevisionNotFound"),
        ),
        (
            "GET",
            "/api/models/org/name/tree/nope?recursive=true",
            404,
            Some("RevisionNotFound"),
        ),
        (
            "HEAD",
            "/org/name/resolve/nope/config.json",
            404,
            Some("RevisionNotFound"),
        ),
        (
            "HEAD",
            "/org/name/resolve/main/missing.txt",
            404,
            Some("EntryNotFound"),
        ),
        (
            "GET",
            "/api/models/org/name/tree/main/missing",
            404,
            Some("EntryNotFound"),
        ),
        ("GET", "/favicon.ico", 404, None),
        ("POST", "/org/name/resolve/main/config.json", 405, None),
    ];
    for (method, target, status, code) in cases {
        let r = request(&serve, method, target, &[]);
        let what = format!("{method} {target}");
        assert_eq!(r.status, status, "{what}");
        assert_eq!(r.error_code(), code, "{what}");
        assert!(r.header("X-Error-Message").is_some(), "{what}");
        if method == "GET" {
            assert!(r.json()["error"].is_string(), "{what}");
        }
        if code == Some("EntryNotFound") {
            assert_eq!(r.header("X-Repo-Commit"), Some(COMMIT), "{what}");
        }
        eprintln!("{what} -> {status} {code:?}");
    }
}

#[test]
fn no_path_reaches_outside_the_root() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let targets = [
        "/org/name/resolve/main/..%2F..%2F..%2F..%2Foutside%2Fsecret.txt",
        "/org/name/resolve/main/..%2F..%2Fetc%2Fpasswd",
        "/org/name/resolve/main/%2e%2e/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",
        "/org/name/resolve/main/%2E%2E%2F%2E%2E%2Fblobs",
        "/org/name/resolve/main/../../../../outside/secret.txt",
        "/org/name/resolve/main/sub/../../../../../outside/secret.txt",
        "/org/name/resolve/main/sub%5C..%5C..%5Cconfig.json",
        "/org/name/resolve/main/config.json%00",
        "/org/name/resolve/main/%00",
        "/org/name/resolve/main//etc/passwd",
        "/org/name/resolve/main/%2Fetc%2Fpasswd",
        "/org/name/resolve/main/leak.txt",
        "/org/name/resolve/main/leak2.txt",
        "/org/name/resolve/..%2F..%2Foutside/secret.txt",
        "/api/models/org/name/tree/main/..%2F..?recursive=true",
        "/api/models/org/name/treesize/main/..%2F..%2F..",
        "/api/models/..%2F..%2Foutside/tree/main",
    ];
    // Every answer that is not a refusal or carries the secret counts as bytes served wrongly.
    let mut leaked = 0u64;
    let answers: Vec<(&str, &str, Resp)> = targets
        .iter()
        .flat_map(|t| ["GET", "HEAD"].map(|m| (*t, m)))
        .map(|(t, m)| (t, m, request(&serve, m, t, &[])))
        .collect();
    for (_, _, r) in &answers {
        let body = String::from_utf8_lossy(&r.body);
        if !(400..500).contains(&r.status) || body.contains("TOP-SECRET") || body.contains("root:")
        {
            leaked += r.body.len().max(1) as u64;
        }
    }
    let damage = record::Damage {
        corrupted: leaked,
        ..record::Damage::default()
    };
    Trial {
        times: answers.len() as u64,
        ..Trial::once(
            (
                "path traversal: encoded ../, backslashes, NUL, absolute paths, symlinks out",
                "serve::no_path_reaches_outside_the_root",
            ),
            None,
            "refused with a 4xx; nothing outside the root served",
            damage,
        )
    }
    .record();
    for (target, method, r) in &answers {
        assert!(
            (400..500).contains(&r.status),
            "{method} {target}: status {}",
            r.status
        );
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains("TOP-SECRET") && !body.contains("root:"),
            "{target}: {body}"
        );
    }
    eprintln!("refused: {targets:#?}");
    // The symlinks out of the root are not even listed.
    let (entries, _) = walk_tree(&serve, "/api/models/org/name/tree/main?recursive=true");
    for e in &entries {
        let p = e["path"].as_str().expect("path");
        assert!(!p.starts_with("leak"), "listed {p}");
    }
    let info = get(&serve, "/api/models/org/name/revision/main").json();
    assert!(!info.to_string().contains("leak"), "{info}");
}

#[test]
fn local_dir_files_without_metadata_are_not_served() {
    let tmp = local_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let r = request(&serve, "HEAD", "/org/name/resolve/main/stray.txt", &[]);
    assert_eq!((r.status, r.error_code()), (404, Some("EntryNotFound")));
    let r = request(
        &serve,
        "HEAD",
        "/org/name/resolve/main/.cache/huggingface/download/config.json.metadata",
        &[],
    );
    assert_eq!(r.status, 404);
    let r = request(&serve, "HEAD", "/org/name/resolve/main/config.json", &[]);
    assert_eq!((r.status, r.header("X-Repo-Commit")), (200, Some(COMMIT)));
    let r = request(
        &serve,
        "HEAD",
        &format!("/datasets/org/data/resolve/{COMMIT}/data/train.parquet"),
        &[],
    );
    assert_eq!(r.status, 200);
    let info = get(&serve, "/api/models/org/name/revision/main").json();
    let names: BTreeSet<&str> = info["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| s["rfilename"].as_str().expect("name"))
        .collect();
    let want: BTreeSet<String> = model_files().into_iter().map(|f| f.path).collect();
    assert_eq!(names, want.iter().map(String::as_str).collect());
}

// ---------------------------------------------------------------------------------------------
// Connection limits.

#[test]
fn oversized_heads_are_refused_and_closed() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let long = format!(
        "GET /api/models/org/name HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(20 << 10)
    );
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /api/models/org/name HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for (what, req) in [("20 KiB head", long), ("100 header fields", many)] {
        let mut conn = BufReader::new(serve.connect());
        conn.get_mut().write_all(req.as_bytes()).expect("send");
        let r = read_response(&mut conn, false);
        let fault = format!("a hostile request head ({what})");
        let test = "serve::oversized_heads_are_refused_and_closed";
        let outcome = "431 or 400, then the connection is closed";
        Trial::once((&fault, test), None, outcome, record::Damage::default()).record();
        assert!(r.status == 431 || r.status == 400, "{what}: {}", r.status);
        // Then the server closes the connection.
        let mut rest = Vec::new();
        let n = conn.read_to_end(&mut rest).unwrap_or(0);
        assert_eq!(n, 0, "{what}: nothing after the error");
        eprintln!("{what}: {} and closed", r.status);
    }
    let mut conn = BufReader::new(serve.connect());
    conn.get_mut()
        .write_all(b"NOT HTTP AT ALL\r\n\r\n")
        .expect("send");
    assert_eq!(read_response(&mut conn, false).status, 400);
}

#[test]
fn a_stalled_client_does_not_block_others() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    // Half a head, then nothing.
    let mut stalled = serve.connect();
    stalled
        .write_all(b"GET /api/models/org/name/revision/main HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("send half");
    // Others are served meanwhile (generous bound: the server's head deadline is 30 s).
    for _ in 0..3 {
        let r = get(&serve, "/api/models/org/name/revision/main");
        assert_eq!(r.status, 200);
        let r = get_range(
            &serve,
            "/org/name/resolve/main/model.safetensors",
            "bytes=0-0",
        );
        assert_eq!(r.status, 206);
    }
    // The stalled request still completes once the rest arrives.
    stalled
        .write_all(b"1\r\nConnection: close\r\n\r\n")
        .expect("send rest");
    let r = read_response(&mut BufReader::new(stalled), false);
    assert_eq!(r.json()["sha"], COMMIT);
    eprintln!("a stalled head did not block other connections");
}

/// A connection to `port` with a small receive buffer (set before the connect, so the window
/// stays small): a slow reader holds little in flight.
fn small_window_connect(port: u16) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, ipproto, socket, sockopt};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, Some(ipproto::TCP)).expect("socket");
    sockopt::set_socket_recv_buffer_size(&fd, 64 << 10).expect("SO_RCVBUF");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    rustix::net::connect(&fd, &addr).expect("connect");
    TcpStream::from(fd)
}

#[test]
fn a_slow_reader_is_disconnected_and_a_fast_one_is_not() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("root");
    let big = seeded(32 << 20, 11);
    write_cache_repo(
        &root,
        "models--org--big",
        COMMIT,
        "main",
        &[file("big.bin", big.clone(), true)],
    );
    // Every client must read 1 MiB/s over each second.
    let serve = Serve::start_with(
        &root,
        None,
        None,
        &["--send-timeout", "1", "--min-send-rate", "1M"],
    );
    let target = "/org/big/resolve/main/big.bin";
    // A reader at full speed gets the whole body under these limits.
    let r = get(&serve, target);
    assert_eq!(r.status, 200);
    let fast = record::damage_bytes(&big, &r.body);
    // A reader taking 64 KiB every 200 ms (320 KiB/s): reading the whole body would take over
    // 100 s. The server cuts it off after a second or two of that, with a reset.
    let mut slow = small_window_connect(serve.port);
    send(&mut slow, "GET", target, &[], true);
    let mut got = 0usize;
    let mut chunk = vec![0u8; 64 << 10];
    let started = std::time::Instant::now();
    let end = loop {
        std::thread::sleep(Duration::from_millis(200));
        match slow.read(&mut chunk) {
            Ok(0) => break "closed".to_owned(),
            Ok(n) => got += n,
            Err(e) => break e.to_string(),
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "a reader at 320 KiB/s was never disconnected ({got} bytes read)"
        );
    };
    Trial::once(
        (
            "a client reading a body at 320 KiB/s (--min-send-rate 1M)",
            "serve::a_slow_reader_is_disconnected_and_a_fast_one_is_not",
        ),
        None,
        "the slow reader is reset; a fast reader gets the whole body",
        fast,
    )
    .record();
    assert_eq!(
        (fast.lost, fast.corrupted, fast.checked),
        (0, 0, big.len() as u64),
        "the fast reader got the file"
    );
    assert!(
        got < big.len(),
        "disconnected before the end of the body: {got} of {} bytes ({end})",
        big.len()
    );
    eprintln!(
        "a slow reader was cut off after {got} bytes in {:.1} s ({end}); a fast one got all {} bytes",
        started.elapsed().as_secs_f64(),
        big.len()
    );
    // Others are still served.
    let r = get_range(&serve, target, "bytes=0-0");
    assert_eq!(r.status, 206);
}

#[test]
fn keep_alive_serves_many_requests_per_connection() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let files = cache_model_files();
    let mut conn = BufReader::new(serve.connect());
    // One after the other.
    send(
        conn.get_mut(),
        "GET",
        "/api/models/org/name/revision/main",
        &[],
        false,
    );
    let r = read_response(&mut conn, false);
    assert_eq!(
        (r.status, r.header("Connection")),
        (200, Some("keep-alive"))
    );
    send(
        conn.get_mut(),
        "HEAD",
        "/org/name/resolve/main/config.json",
        &[],
        false,
    );
    assert_eq!(read_response(&mut conn, true).status, 200);
    send(
        conn.get_mut(),
        "GET",
        "/org/name/resolve/main/model.safetensors",
        &[("Range", "bytes=10-19")],
        false,
    );
    let r = read_response(&mut conn, false);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &files[0].bytes[10..20])
    );
    send(
        conn.get_mut(),
        "GET",
        "/org/name/resolve/main/nope",
        &[],
        false,
    );
    assert_eq!(read_response(&mut conn, false).status, 404);
    // Pipelined: two requests in one write, two answers in order.
    let two = "GET /org/name/resolve/main/one.bin HTTP/1.1\r\nHost: x\r\n\r\n\
               GET /org/name/resolve/main/sub/y.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    conn.get_mut().write_all(two.as_bytes()).expect("send two");
    assert_eq!(read_response(&mut conn, false).body, [0x5a]);
    let r = read_response(&mut conn, false);
    assert_eq!(
        (r.body.as_slice(), r.header("Connection")),
        (&b"nested y\n"[..], Some("close"))
    );
    let mut rest = Vec::new();
    assert_eq!(
        conn.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed after Connection: close"
    );
    eprintln!("6 requests on one connection, 2 of them pipelined");
}
