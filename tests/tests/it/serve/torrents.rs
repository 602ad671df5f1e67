//! `ferry serve --torrents` (issue 33's publisher), checked by stock BitTorrent software: the
//! PyPI `libtorrent` reads the metainfo (private, pad files, trackers, web seed), hashes the
//! served files against its pieces, and downloads the whole repo from the web seed alone;
//! `aria2c` and `transmission-cli` (no BEP 47) do too, fetching the pad files as zeros;
//! `transmission-show` reads it.
//! Hostile cases: bytes that are not their etag, an incomplete commit, a repo path that would
//! collide with pad files, pad requests that name no pad, a mirror's gated repo (never
//! published) and its commits not cached whole (409, no fill started).
//!
//! ferry serve is blocking std I/O: no io_uring or safe-mode back-end is involved here.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

const TRACKERS: [&str; 2] = ["http://127.0.0.1:9/announce", "udp://127.0.0.1:9/announce"];

/// `ferry serve --torrents` with its piece cache in `tmp/pieces-cache` and its log in
/// `tmp/serve.log`.
fn start(tmp: &Path, extra: &[&str]) -> Serve {
    let cache = tmp.join("pieces-cache");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp.join("serve.log"))
        .expect("log");
    let mut args = vec!["--torrents"];
    for t in TRACKERS {
        args.extend(["--tracker", t]);
    }
    args.extend(extra);
    Serve::try_start_env(
        &tmp.join("root"),
        None,
        None,
        (
            &args,
            &[
                ("FERRY_CACHE_DIR", cache.as_os_str()),
                ("FERRY_LOG", OsStr::new("ferry=info")),
            ],
        ),
        Stdio::from(log),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// GET `target`, following 503 + `Retry-After` while the torrent is being hashed.
fn get_torrent(s: &Serve, target: &str) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = get(s, target);
        if r.status != 503 || Instant::now() > deadline {
            return r;
        }
        assert_eq!(r.error_code(), Some("TorrentPreparing"), "{target}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `tests/fixtures/lt_swarm.py ARGS...` (the PyPI libtorrent): its JSON answer.
pub(crate) fn lt(args: &[&OsStr]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lt_swarm.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "lt_swarm.py {args:?} (needs the PyPI libtorrent: scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

/// libtorrent downloads `torrent` into `tmp/lt` from its web seed alone (no peer, no tracker
/// that answers) and must complete; returns the folder.
fn webseed_download(tmp: &Path, torrent: &Path) -> PathBuf {
    let dir = tmp.join("lt");
    std::fs::create_dir_all(&dir).expect("dir");
    let got = lt(&[
        OsStr::new("webseed"),
        torrent.as_os_str(),
        dir.as_os_str(),
        OsStr::new("60"),
    ]);
    assert_eq!(got["seeding"], true, "{got}");
    dir
}

/// Writes `files` under `dir/COMMIT/`, as a client that has the commit would hold them.
fn write_copy(dir: &Path, commit: &str, files: &[FixtureFile]) {
    for f in files {
        let p = dir.join(commit).join(&f.path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        std::fs::write(&p, &f.bytes).expect("write");
    }
}

fn save(tmp: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = tmp.join(name);
    std::fs::write(&p, bytes).expect("torrent file");
    p
}

#[test]
fn torrents_are_read_and_checked_by_stock_clients() {
    let tmp = cache_root();
    let serve = start(tmp.path(), &[]);
    let r = get_torrent(&serve, "/api/models/org/name/torrent/main");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Content-Type"), Some("application/x-bittorrent"));
    assert_eq!(r.header("X-Repo-Commit"), Some(COMMIT));
    let hash = r.header("X-Info-Hash").expect("X-Info-Hash").to_owned();
    let file = save(tmp.path(), "model.torrent", &r.body);
    let info = lt(&[OsStr::new("info"), file.as_os_str()]);
    assert_eq!(info["info_hash"], hash.as_str());
    assert_eq!(info["private"], true);
    assert_eq!(info["name"], COMMIT);
    assert_eq!(info["trackers"], serde_json::json!(TRACKERS));
    assert_eq!(
        info["web_seeds"],
        serde_json::json!([format!("{}/org/name/resolve/", serve.endpoint())])
    );
    // One torrent file per repo file, each on a piece boundary; pad files between.
    let piece = info["piece_length"].as_u64().expect("piece length");
    let mut listed = BTreeMap::new();
    for f in info["files"].as_array().expect("files") {
        let path = f["path"].as_str().expect("path");
        let rel = path
            .strip_prefix(&format!("{COMMIT}/"))
            .expect("under the name");
        if f["pad"] == true {
            assert!(rel.starts_with(".pad/"), "{rel}");
            continue;
        }
        assert_eq!(f["offset"].as_u64().expect("offset") % piece, 0, "{rel}");
        listed.insert(rel.to_owned(), f["size"].as_u64().expect("size"));
    }
    let want: BTreeMap<String, u64> = cache_model_files()
        .iter()
        .map(|f| (f.path.clone(), f.bytes.len() as u64))
        .collect();
    assert_eq!(listed, want);

    // transmission-show reads it the same way.
    let shown = Command::new("transmission-show")
        .arg(&file)
        .output()
        .expect("transmission-show (transmission-cli: scripts/setup.sh)");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("Privacy: Private torrent"), "{shown}");
    assert!(shown.contains(&hash), "{shown}");

    // libtorrent hashes a copy of the commit's files against the pieces: all of them match.
    let check = tmp.path().join("check");
    write_copy(&check, COMMIT, &cache_model_files());
    let checked = lt(&[OsStr::new("check"), file.as_os_str(), check.as_os_str()]);
    assert_eq!(checked["pieces_have"], info["num_pieces"], "{checked}");
    assert_eq!(checked["seeding"], true, "{checked}");

    // The magnet link names the same swarm; the same request gives the same bytes.
    let magnet = get_torrent(&serve, "/api/models/org/name/magnet/main");
    assert_eq!(magnet.status, 200);
    let text = String::from_utf8(magnet.body).expect("utf8");
    assert!(
        text.starts_with(&format!("magnet:?xt=urn:btih:{hash}&dn={COMMIT}&tr=")),
        "{text}"
    );
    assert!(text.contains("&ws=http%3A%2F%2F127.0.0.1%3A"), "{text}");
    assert_eq!(
        get_torrent(&serve, &format!("/api/models/org/name/torrent/{COMMIT}")).body,
        r.body
    );

    // Another revision (its `/`s encoded) and a dataset are torrents of their own.
    let pr = get_torrent(&serve, "/api/models/org/name/torrent/refs%2Fpr%2F1");
    assert_eq!(pr.header("X-Repo-Commit"), Some(COMMIT_PR));
    assert_ne!(pr.header("X-Info-Hash"), Some(hash.as_str()));
    let ds = get_torrent(&serve, "/api/datasets/org/data/torrent/main");
    let ds_file = save(tmp.path(), "data.torrent", &ds.body);
    let ds_info = lt(&[OsStr::new("info"), ds_file.as_os_str()]);
    assert_eq!(
        ds_info["web_seeds"],
        serde_json::json!([format!("{}/datasets/org/data/resolve/", serve.endpoint())])
    );

    // A restart reads the kept pieces instead of hashing the files again.
    drop(serve);
    let serve = start(tmp.path(), &[]);
    let again = get_torrent(&serve, "/api/models/org/name/torrent/main");
    assert_eq!(again.header("X-Info-Hash"), Some(hash.as_str()));
    let log = std::fs::read_to_string(tmp.path().join("serve.log")).expect("log");
    let ready: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("torrent ready"))
        .collect();
    assert!(ready.len() >= 4, "{log}");
    let last = ready.last().expect("a line");
    assert!(
        last.contains("hashed_bytes=0") && !last.contains("kept_bytes=0"),
        "{last}"
    );
    eprintln!(
        "torrent {hash}: {} pieces of {piece} bytes, read by libtorrent and transmission-show, \
         checked by libtorrent; kept over a restart",
        info["num_pieces"]
    );
}

#[test]
fn the_web_seed_serves_libtorrent_aria2_and_transmission() {
    let tmp = cache_root();
    let serve = start(tmp.path(), &[]);
    let r = get_torrent(&serve, "/api/models/org/name/torrent/main");
    assert_eq!(r.status, 200);
    let file = save(tmp.path(), "model.torrent", &r.body);

    // libtorrent, with no peer and no tracker that answers: every byte from the web seed.
    let lt_dir = webseed_download(tmp.path(), &file);
    assert_snapshot(
        &lt_dir.join(COMMIT),
        &cache_model_files(),
        "libtorrent from the web seed",
    );

    // aria2c does not know pad files (BEP 47): it asks the web seed for them like files, and
    // gets zeros.
    let aria_dir = tmp.path().join("aria2");
    let out = Command::new("aria2c")
        .args([
            "--seed-time=0",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--bt-stop-timeout=60",
            "--console-log-level=warn",
            "--summary-interval=0",
        ])
        .arg(format!("--listen-port={}", ferry_testkit::free_port()))
        .arg("-d")
        .arg(&aria_dir)
        .arg(&file)
        .output()
        .expect("aria2c (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "aria2c: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let pads = aria_dir.join(COMMIT).join(".pad");
    let mut pad_bytes = 0;
    for e in std::fs::read_dir(&pads).expect("aria2 wrote its pad files") {
        let bytes = std::fs::read(e.expect("entry").path()).expect("pad");
        assert!(bytes.iter().all(|&b| b == 0), "a pad file holds zeros only");
        pad_bytes += bytes.len();
    }
    std::fs::remove_dir_all(&pads).expect("rm pads");
    assert_snapshot(
        &aria_dir.join(COMMIT),
        &cache_model_files(),
        "aria2c from the web seed",
    );

    // Transmission 3 neither: it too gets its pad files as zeros. It creates no empty file,
    // and it seeds until stopped: its completion script says when it is done.
    let tr_dir = tmp.path().join("transmission");
    std::fs::create_dir_all(&tr_dir).expect("dir");
    let done = tmp.path().join("transmission.done");
    let script = tmp.path().join("transmission-done.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch '{}'\n", done.display())).expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let child = Command::new("transmission-cli")
        .arg("-w")
        .arg(&tr_dir)
        .arg("-g")
        .arg(tmp.path().join("transmission-config"))
        .arg("-p")
        .arg(ferry_testkit::free_port().to_string())
        .arg("-f")
        .arg(&script)
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("transmission-cli (scripts/setup.sh)");
    let child = ferry_testkit::KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done.exists() {
        assert!(Instant::now() < deadline, "transmission-cli did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(child);
    let got = tr_dir.join(COMMIT);
    for f in cache_model_files().iter().filter(|f| !f.bytes.is_empty()) {
        let bytes = std::fs::read(got.join(&f.path)).expect("transmission's file");
        assert!(bytes == f.bytes, "transmission-cli: {} differs", f.path);
    }
    eprintln!(
        "libtorrent, aria2c and transmission-cli downloaded the commit from the web seed \
         ({pad_bytes} pad bytes as zeros to aria2c)"
    );
}

#[test]
fn no_torrent_for_bytes_that_are_not_their_etag() {
    let tmp = cache_root();
    let root = tmp.path().join("root");
    // The big blob keeps its size and name, and loses one bit.
    let big = model_files().remove(0);
    let blob = root.join("models--org--name/blobs").join(big.etag());
    let mut bytes = big.bytes.clone();
    bytes[1 << 20] ^= 1;
    std::fs::write(&blob, &bytes).expect("rewrite");
    let serve = start(tmp.path(), &[]);
    let r = get_torrent(&serve, "/api/models/org/name/torrent/main");
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), Some("TorrentUnavailable"));
    let msg = r.json()["error"].as_str().expect("error").to_owned();
    assert!(
        msg.contains("model.safetensors") && msg.contains("not to its etag"),
        "{msg}"
    );
    // Nothing was kept for that blob; asked again, the same answer (not a torrent).
    let kept = tmp.path().join("pieces-cache/pieces");
    let names: Vec<String> = std::fs::read_dir(&kept)
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !names.iter().any(|n| n.starts_with(&big.etag())),
        "{names:?}"
    );
    assert_eq!(
        get_torrent(&serve, "/api/models/org/name/torrent/main").status,
        500
    );
    // The repo's other commit and the dataset still get theirs.
    assert_eq!(
        get_torrent(&serve, "/api/models/org/name/torrent/refs%2Fpr%2F1").status,
        200
    );
    assert_eq!(
        get_torrent(&serve, "/api/datasets/org/data/torrent/main").status,
        200
    );
    eprintln!("refused: {msg}");
}

#[test]
fn no_torrent_for_an_incomplete_commit_or_a_colliding_path() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("root");
    // org/partial: the kept listing names a file that is not here.
    let files = vec![file("a.txt", b"a\n".to_vec(), false)];
    write_cache_repo(&root, "models--org--partial", COMMIT, "main", &files);
    let listing = serde_json::json!({
        "format_version": 1,
        "files": {
            "a.txt": { "size": 2, "blob_id": git_sha1(b"a\n") },
            "missing.bin": { "size": 5, "blob_id": git_sha1(b"12345") },
        }
    });
    let trees = root.join("models--org--partial/trees");
    std::fs::create_dir_all(&trees).expect("trees");
    std::fs::write(trees.join(format!("{COMMIT}.json")), listing.to_string()).expect("listing");
    // org/pads: a repo file where BEP 47 puts pad files.
    let files = vec![
        file("x.bin", seeded(1000, 3), true),
        file(".pad/1", b"not a pad\n".to_vec(), false),
    ];
    write_cache_repo(&root, "models--org--pads", COMMIT, "main", &files);
    let serve = start(tmp.path(), &[]);
    let r = get_torrent(&serve, "/api/models/org/partial/torrent/main");
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let msg = r.json()["error"].as_str().expect("error").to_owned();
    assert!(msg.contains("missing.bin"), "{msg}");
    let r = get_torrent(&serve, "/api/models/org/pads/torrent/main");
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["error"]
            .as_str()
            .expect("error")
            .contains(".pad/1"),
        "{:?}",
        r.json()
    );
    // The repo file at .pad/1 is still served as itself.
    let f = get(&serve, "/org/pads/resolve/main/.pad/1");
    assert_eq!((f.status, f.body.as_slice()), (200, &b"not a pad\n"[..]));
    eprintln!("refused: {msg}");
}

#[test]
fn pad_files_routes_and_options() {
    let tmp = cache_root();
    let serve = start(tmp.path(), &[]);
    let pad = |n: u64| format!("/org/name/resolve/main/.pad/{n}");
    let r = get_torrent(&serve, "/api/models/org/name/torrent/main");
    let file = save(tmp.path(), "model.torrent", &r.body);
    let info = lt(&[OsStr::new("info"), file.as_os_str()]);
    let n = info["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["pad"] == true)
        .and_then(|f| f["size"].as_u64())
        .expect("a pad file");
    let whole = get(&serve, &pad(n));
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body.len() as u64, n);
    assert!(whole.body.iter().all(|&b| b == 0));
    let part = get_range(&serve, &pad(n), "bytes=10-19");
    assert_eq!(part.status, 206);
    assert_eq!(part.body, vec![0u8; 10]);
    let head = request(&serve, "HEAD", &pad(n), &[]);
    assert_eq!(head.header("Content-Length"), Some(n.to_string().as_str()));
    // Lengths the torrent has no pad of, and spellings that are not a length, are not found.
    for bad in [
        pad(n + 1),
        format!("/org/name/resolve/main/.pad/0{n}"),
        "/org/name/resolve/main/.pad/x".into(),
        "/org/name/resolve/main/.pad/99999999999999999999".into(),
        "/org/name/resolve/main/.pad".into(),
    ] {
        assert_eq!(get(&serve, &bad).status, 404, "{bad}");
    }
    // An unknown revision; a server without --torrents.
    let r = get(&serve, "/api/models/org/name/torrent/nope");
    assert_eq!((r.status, r.error_code()), (404, Some("RevisionNotFound")));
    let plain = Serve::start(&tmp.path().join("root"), None);
    let r = get(&plain, "/api/models/org/name/torrent/main");
    assert_eq!((r.status, r.error_code()), (501, Some("NotImplemented")));
    assert_eq!(get(&plain, &pad(n)).status, 404);
    // Options that cannot work are refused before anything starts.
    for args in [
        vec!["--torrents", "--sign-key-file", "/nonexistent/key"],
        vec!["--tracker", "ftp://127.0.0.1/announce"],
        vec!["--tracker", "not a url"],
    ] {
        let mut child = Command::new(ferry_testkit::ferry_bin())
            .args(["serve", "--root"])
            .arg(tmp.path().join("root"))
            .args(["--addr", "127.0.0.1:0"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ferry");
        // A server that started anyway is stopped (by its PID) and fails the test.
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{args:?}");
    }
}

/// A mirror (`--upstream` with `--torrents`) of nginx's static Hub, its cache in `tmp/root`.
fn start_mirror(tmp: &Path, upstream: &str, extra: &[&str]) -> Serve {
    let mut args = vec!["--upstream", upstream, "--backend", "portable"];
    args.extend_from_slice(extra);
    start(tmp, &args)
}

#[test]
fn a_mirror_publishes_the_public_commits_it_holds_whole() {
    use ferry_testkit::hub::StaticHub;
    use ferry_testkit::nginx::GATED_TOKEN;
    let spec: &[(&str, u64, bool)] = &[
        ("model.safetensors", (3 << 20) + 5, true),
        ("config.json", 700, false),
        ("sub/x.txt", 10, false),
    ];
    let hub = StaticHub::start_with(spec, |_| None, None);
    let tmp = tempfile::tempdir().expect("tmp");
    let serve = start_mirror(tmp.path(), &hub.endpoint(), &[]);
    let target = "/api/models/org/model/torrent/main";
    // Cold: no torrent, and no fill started for it.
    let cold = get(&serve, target);
    assert_eq!(cold.status, 409, "{}", String::from_utf8_lossy(&cold.body));
    assert_eq!(cold.error_code(), Some("TorrentUnavailable"));
    assert_eq!(hub.resolves(), 0, "a torrent request fetched files");
    // Warm: every file once through the mirror, then the torrent.
    for f in &hub.repo.files {
        let r = get(
            &serve,
            &format!("/org/model/resolve/main/{}", quote(&f.path)),
        );
        assert_eq!(r.status, 200, "{}", f.path);
    }
    let r = get_torrent(&serve, target);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("X-Repo-Commit"), Some(hub.repo.commit.as_str()));
    let file = save(tmp.path(), "mirror.torrent", &r.body);
    let lt_dir = webseed_download(tmp.path(), &file);
    for f in &hub.repo.files {
        let bytes = std::fs::read(lt_dir.join(&hub.repo.commit).join(&f.path)).expect("file");
        assert!(
            bytes == std::fs::read(&f.source).expect("source"),
            "{} differs",
            f.path
        );
    }
    drop(serve);

    // A gated repo, cached whole by a caller with access: still no torrent, since neither
    // peers nor web seed requests carry a token.
    let gated = tempfile::tempdir().expect("tmp");
    let token_file = gated.path().join("upstream-token");
    std::fs::write(&token_file, GATED_TOKEN).expect("token file");
    let serve = start_mirror(
        gated.path(),
        &hub.gated_endpoint(),
        &["--upstream-token-file", token_file.to_str().expect("utf-8")],
    );
    let auth = format!("Bearer {GATED_TOKEN}");
    for f in &hub.repo.files {
        let t = format!("/org/model/resolve/main/{}", quote(&f.path));
        let r = request(&serve, "GET", &t, &[("Authorization", &auth)]);
        assert_eq!(r.status, 200, "{}", f.path);
    }
    for who in [vec![], vec![("Authorization", auth.as_str())]] {
        let r = request(&serve, "GET", target, &who);
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error_code(), Some("GatedRepo"));
    }
    eprintln!(
        "mirror: 409 cold, a torrent once cached whole (libtorrent from its web seed), none for a gated repo"
    );
}
