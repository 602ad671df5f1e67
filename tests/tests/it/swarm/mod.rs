//! Swarms (issue 33): a commit `ferry serve --torrents` publishes, fetched by a fleet. `stock`:
//! stock BitTorrent clients only, ferry serve as publisher and web seed; `fleet`: `ferry pull
//! --swarm` peers beside stock ones, with `ferry serve --seed` as the origin seed, on a network
//! of namespaces (`ferry_testkit::netlab`) with capped links; `fallback`: on loopback, what a
//! `--swarm` pull does when the swarm cannot serve it, and peers that lie.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::KillOnDrop as Guard;
use ferry_testkit::data::seeded;
use ferry_testkit::netlab::Node;
use sha2::{Digest, Sha256};

mod fallback;
mod fleet;
mod stock;

pub(crate) const COMMIT: &str = "5a7a4e0000000000000000000000000000000001";

/// The repo: three LFS shards of 8-16 MiB with odd sizes and a few small git files.
pub(crate) fn repo_files() -> Vec<(String, Vec<u8>, bool)> {
    let mut files = vec![
        (
            "config.json".to_owned(),
            b"{\"swarm\": true}\n".to_vec(),
            false,
        ),
        ("README.md".to_owned(), b"# swarm test\n".to_vec(), false),
    ];
    for i in 0..3u64 {
        let len = (8 << 20) + (i as usize) * (4 << 20) + 12_345;
        files.push((format!("shard-{i}.safetensors"), seeded(len, 40 + i), true));
    }
    files
}

/// Files of [`repo_files`] the swarm brings: the shards. The two small git files are shorter
/// than half a piece, and a swarm pull fetches them over HTTP before it joins.
pub(crate) const FROM_SWARM: u64 = 3;
pub(crate) const SMALL: u64 = 2;

/// Checks that a `--swarm` pull's report says the shards came from the swarm, the small files
/// over HTTP first, and nothing fell back.
pub(crate) fn assert_from_swarm(report: &serde_json::Value) {
    let swarm = &report["swarm"];
    assert_eq!(swarm["files"], FROM_SWARM, "{report}");
    assert_eq!(swarm["files_small"], SMALL, "{report}");
    assert_eq!(swarm["files_over_http"], 0, "{report}");
    assert!(swarm["fallback"].is_null(), "{report}");
}

/// A huggingface_hub cache under `root` holding `org/swarm` at [`COMMIT`] (`refs/main`).
pub(crate) fn write_cache_repo(root: &Path, files: &[(String, Vec<u8>, bool)]) {
    let repo = root.join("models--org--swarm");
    let blobs = repo.join("blobs");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&blobs).expect("blobs");
    std::fs::create_dir_all(&snap).expect("snapshot");
    for (path, bytes, lfs) in files {
        let etag = if *lfs {
            hex::encode(Sha256::digest(bytes))
        } else {
            ferry_testkit::hub::git_blob_id(bytes)
        };
        std::fs::write(blobs.join(&etag), bytes).expect("blob");
        std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snap.join(path)).expect("link");
    }
    std::fs::create_dir_all(repo.join("refs")).expect("refs");
    std::fs::write(repo.join("refs/main"), COMMIT).expect("ref");
}

/// `ferry serve [--tracker TRACKER] EXTRA...` of `root` on `node` (`node` None: on this
/// machine's loopback, at `127.0.0.1:port`), once it listens; returns it and its address.
pub(crate) fn start_origin_at(
    node: Option<&Node>,
    root: &Path,
    cache: &Path,
    tracker: Option<&str>,
    extra: &[&str],
) -> (Guard, String) {
    let bin = ferry_testkit::ferry_bin();
    let mut cmd = match node {
        Some(n) => n.command(bin),
        None => std::process::Command::new(bin),
    };
    let addr = match node {
        Some(n) => format!("{}:8080", n.addr),
        None => "127.0.0.1:0".to_owned(),
    };
    cmd.args(["serve", "--root"])
        .arg(root)
        .args(["--addr", &addr])
        .args(tracker.map(|t| ["--tracker", t]).into_iter().flatten())
        .args(extra)
        .env("FERRY_CACHE_DIR", cache)
        .env_remove("FERRY_LOG")
        .stderr(Stdio::inherit());
    ferry_testkit::serve::spawn_listening(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// [`start_origin_at`] on a node of a lab.
pub(crate) fn start_origin(
    origin: &Node,
    root: &Path,
    cache: &Path,
    tracker: &str,
    extra: &[&str],
) -> Guard {
    start_origin_at(Some(origin), root, cache, Some(tracker), extra).0
}

/// The torrent, fetched by `curl` from `node` (retried while the origin hashes).
pub(crate) fn fetch_torrent(node: &Node, origin: &Node, into: &Path) -> Vec<u8> {
    let url = format!(
        "http://{}:8080/api/models/org/swarm/torrent/main",
        origin.addr
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = node
            .command("curl")
            .args(["-s", "-o"])
            .arg(into)
            .args(["-w", "%{http_code}", &url])
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code == "200" {
            return std::fs::read(into).expect("torrent");
        }
        assert!(
            code == "503" && Instant::now() < deadline,
            "GET {url}: {code}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The torrent of `root`'s commit and its info hash, from a `ferry serve --torrents` run on
/// loopback for the purpose (its pieces kept in `cache` for the origin started next): a seed
/// announces at once, so the tracker, whose whitelist needs the hash, must be up before it.
pub(crate) fn torrent_ahead(root: &Path, cache: &Path, tracker: &str, into: &Path) -> String {
    let (_serve, url) = start_origin_at(None, root, cache, Some(tracker), &[]);
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "--retry",
            "30",
            "--retry-all-errors",
            "--retry-delay",
            "1",
            "-o",
        ])
        .arg(into)
        .arg(format!("{url}/api/models/org/swarm/torrent/main"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {}", out.status);
    info_hash(into)
}

/// The info hash of a metainfo file, as libtorrent reads it.
pub(crate) fn info_hash(torrent: &Path) -> String {
    let v = crate::serve::torrents::lt(&[std::ffi::OsStr::new("info"), torrent.as_os_str()]);
    v["info_hash"].as_str().expect("info hash").to_owned()
}

/// opentracker (whitelist mode: `hashes` only) on `node` at port 6969, its files under `dir`
/// (`node` None: on 127.0.0.1 at `port`).
pub(crate) fn start_opentracker_at(
    node: Option<&Node>,
    port: u16,
    dir: &Path,
    hashes: &[&str],
) -> Guard {
    let (cmd, ip) = match node {
        Some(n) => (n.command("opentracker"), n.addr.to_string()),
        None => (
            std::process::Command::new("opentracker"),
            "127.0.0.1".to_owned(),
        ),
    };
    ferry_testkit::netlab::opentracker(cmd, (&ip, port), dir, hashes)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`start_opentracker_at`] on a node of a lab, port 6969.
pub(crate) fn start_opentracker(node: &Node, dir: &Path, hashes: &[&str]) -> Guard {
    start_opentracker_at(Some(node), 6969, dir, hashes)
}

/// Whether a pull into the cache `cache` completed (`refs/main` is written last).
pub(crate) fn pulled(cache: &Path) -> bool {
    cache.join("models--org--swarm/refs/main").exists()
}

/// Every file of the repo in `cache`'s snapshot is byte-identical to `files`.
pub(crate) fn assert_pulled(cache: &Path, files: &[(String, Vec<u8>, bool)]) {
    let snap = cache.join("models--org--swarm/snapshots").join(COMMIT);
    for (path, bytes, _) in files {
        let got = std::fs::read(snap.join(path))
            .unwrap_or_else(|e| panic!("{}: {e}", snap.join(path).display()));
        assert!(got == *bytes, "{}: {path} differs", cache.display());
    }
    let blobs = cache.join("models--org--swarm/blobs");
    for e in std::fs::read_dir(&blobs).expect("blobs").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".ferry-"), "left behind: {name}");
    }
}

/// `program` (aria2c, transmission-cli, transmission-daemon or qbittorrent-nox) as a swarm
/// member on `node`: tracker, peers and web seed, no DHT; it writes `SAVE.done` when the
/// download completes (its hook) and seeds until killed.
pub(crate) fn other_peer(program: &str, node: &Node, torrent: &Path, save: &Path) -> Child {
    let hook = save.with_extension("hook.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\ntouch '{}.done'\n", save.display()),
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut cmd = node.command(program);
    match program {
        "transmission-daemon" => transmission_daemon(&mut cmd, torrent, save, &hook),
        "qbittorrent-nox" => qbittorrent_nox(&mut cmd, torrent, save, &hook),
        "aria2c" => {
            cmd.args([
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--listen-port=6881",
                "--seed-time=10",
                "--console-log-level=warn",
                "--summary-interval=0",
            ])
            .arg(format!("--on-bt-download-complete={}", hook.display()))
            .arg("-d")
            .arg(save)
            .arg(torrent);
        }
        _ => {
            cmd.arg("-g")
                .arg(save.with_extension("config"))
                .args(["-p", "6881", "-f"])
                .arg(&hook)
                .arg("-w")
                .arg(save)
                .arg(torrent);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (scripts/setup.sh): {e}"))
}

/// transmission-daemon in the foreground, its config (`SAVE.config/settings.json`) written
/// here: no DHT, LPD, PEX or port mapping, peers on port 6881, the torrent taken from a watch
/// folder, `hook` run when it completes. It seeds until killed.
fn transmission_daemon(cmd: &mut Command, torrent: &Path, save: &Path, hook: &Path) {
    let config = save.with_extension("config");
    let watch = save.with_extension("watch");
    std::fs::create_dir_all(&config).expect("config");
    std::fs::create_dir_all(&watch).expect("watch");
    std::fs::copy(torrent, watch.join("swarm.torrent")).expect("torrent");
    let settings = serde_json::json!({
        "dht-enabled": false,
        "lpd-enabled": false,
        "pex-enabled": false,
        "port-forwarding-enabled": false,
        "peer-port": 6881,
        "rpc-bind-address": "127.0.0.1",
        "download-dir": save,
        "incomplete-dir-enabled": false,
        "watch-dir-enabled": true,
        "watch-dir": watch,
        "script-torrent-done-enabled": true,
        "script-torrent-done-filename": hook,
        "ratio-limit-enabled": false,
    });
    std::fs::write(config.join("settings.json"), settings.to_string()).expect("settings");
    cmd.args(["-f", "-g"]).arg(&config);
}

/// qbittorrent-nox with a profile of its own (`SAVE.config`): legal notice accepted, no DHT,
/// LSD or PEX, peers on port 6881, its web UI on 127.0.0.1 of the node, `hook` run when the
/// torrent completes. It seeds until killed.
fn qbittorrent_nox(cmd: &mut Command, torrent: &Path, save: &Path, hook: &Path) {
    let profile = save.with_extension("config");
    let config = profile.join("qBittorrent/config");
    std::fs::create_dir_all(&config).expect("config");
    std::fs::write(
        config.join("qBittorrent.conf"),
        format!(
            "[LegalNotice]\nAccepted=true\n\n\
             [AutoRun]\nenabled=true\nprogram={}\n\n\
             [BitTorrent]\nSession\\DHTEnabled=false\nSession\\LSDEnabled=false\n\
             Session\\PeXEnabled=false\nSession\\Port=6881\n\n\
             [Preferences]\nWebUI\\Address=127.0.0.1\nWebUI\\Port=8080\n\
             Connection\\UPnP=false\n",
            hook.display()
        ),
    )
    .expect("qBittorrent.conf");
    cmd.arg(format!("--profile={}", profile.display()))
        .arg(format!("--save-path={}", save.display()))
        .arg(torrent);
}

/// libtorrent (`tests/fixtures/lt_swarm.py peer`) as a swarm member on `node`, saving into
/// `save`: it writes `SAVE.done` when complete, seeds until `stop` exists, then prints its
/// report on stdout (piped).
pub(crate) fn lt_peer(node: &Node, torrent: &Path, save: &Path, stop: &Path) -> Child {
    node.command("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lt_swarm.py"))
        .arg("peer")
        .arg(torrent)
        .arg(save)
        .arg(node.addr.to_string())
        .arg("180")
        .arg(stop)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3")
}
