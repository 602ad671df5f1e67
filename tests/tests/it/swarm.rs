//! A fleet of stock BitTorrent peers pulls one commit from `ferry serve --torrents` (issue 33),
//! on a network of namespaces (`ferry_testkit::netlab`): an origin running `ferry serve` (the
//! torrent's publisher and web seed), a stock tracker (Debian's opentracker, whitelist mode),
//! and PEERS nodes running stock clients, the PyPI libtorrent (`tests/fixtures/lt_swarm.py
//! peer`) and, on the last two, aria2c and Transmission (`transmission-cli`), which know no pad
//! files; every link capped at LINK_MBIT both ways with `tbf`. Every peer must end with every file byte-identical;
//! the origin's interface counters say how many copies of the repo it sent.
//!
//! ferry serve is blocking std I/O: no io_uring or safe-mode back-end is involved here.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::KillOnDrop as Guard;
use ferry_testkit::data::seeded;
use ferry_testkit::netlab::{Lab, Node};
use sha2::{Digest, Sha256};

const COMMIT: &str = "5a7a4e0000000000000000000000000000000001";
const PEERS: usize = 5;
/// The peers that are not libtorrent: the last two, by their command.
const OTHERS: [&str; 2] = ["aria2c", "transmission-cli"];
const LINK_MBIT: u32 = 200;

/// The repo: three LFS shards of 8-16 MiB with odd sizes and a few small git files.
fn repo_files() -> Vec<(String, Vec<u8>, bool)> {
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

fn write_cache_repo(root: &Path, files: &[(String, Vec<u8>, bool)]) {
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

/// `ferry serve --torrents` on the origin node, once it listens.
fn start_origin(origin: &Node, root: &Path, cache: &Path, tracker: &str) -> Guard {
    let mut child = origin
        .command(ferry_testkit::ferry_bin())
        .args(["serve", "--root"])
        .arg(root)
        .args([
            "--addr",
            &format!("{}:8080", origin.addr),
            "--tracker",
            tracker,
        ])
        .env("FERRY_CACHE_DIR", cache)
        .env_remove("FERRY_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ferry serve");
    let stdout = child.stdout.take().expect("stdout");
    let guard = Guard(child);
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("first line");
    assert!(first.contains("listening on"), "{first:?}");
    guard
}

/// The torrent, fetched by `curl` from `node` (retried while the origin hashes).
fn fetch_torrent(node: &Node, origin: &Node, into: &Path) -> Vec<u8> {
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

fn info_hash(torrent: &Path) -> String {
    let v = crate::serve::torrents::lt(&[std::ffi::OsStr::new("info"), torrent.as_os_str()]);
    v["info_hash"].as_str().expect("info hash").to_owned()
}

/// `program` (aria2c or transmission-cli) as a swarm member on `node`: tracker, peers and web
/// seed, no DHT; it writes `SAVE.done` when the download completes (its hook) and seeds until
/// killed.
fn other_peer(program: &str, node: &Node, torrent: &Path, save: &Path) -> Child {
    let hook = save.with_extension("hook.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\ntouch '{}.done'\n", save.display()),
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut cmd = node.command(program);
    if program == "aria2c" {
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
        .arg("-d");
    } else {
        cmd.arg("-g")
            .arg(save.with_extension("config"))
            .args(["-p", "6881", "-f"])
            .arg(&hook)
            .arg("-w");
    }
    cmd.arg(save)
        .arg(torrent)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (scripts/setup.sh): {e}"))
}

#[test]
fn stock_peers_swarm_from_ferry_serve() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Everyone runs as root, opentracker drops to nobody: its folder must be readable.
    let dir = tmp.path().to_path_buf();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let files = repo_files();
    let repo_bytes: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    let root = dir.join("root");
    write_cache_repo(&root, &files);

    let mut lab = Lab::new().unwrap_or_else(|e| panic!("network lab: {e}"));
    let origin = lab.add("origin", Some(LINK_MBIT)).expect("origin");
    let tracker = lab.add("tracker", None).expect("tracker");
    let peers: Vec<usize> = (0..PEERS)
        .map(|i| lab.add(&format!("peer{i}"), Some(LINK_MBIT)).expect("peer"))
        .collect();
    let announce = format!("http://{}:6969/announce", lab.node(tracker).addr);
    let _serve = start_origin(
        lab.node(origin),
        &root,
        &dir.join("pieces-cache"),
        &announce,
    );
    let torrent_path = dir.join("swarm.torrent");
    fetch_torrent(lab.node(peers[0]), lab.node(origin), &torrent_path);
    let hash = info_hash(&torrent_path);

    let otr = dir.join("opentracker");
    std::fs::create_dir_all(&otr).expect("otr");
    std::fs::set_permissions(&otr, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::write(otr.join("whitelist.txt"), format!("{hash}\n")).expect("whitelist");
    let addr = lab.node(tracker).addr.to_string();
    let _tracker = Guard(
        lab.node(tracker)
            .command("opentracker")
            .args(["-i", &addr, "-p", "6969", "-P", "6969", "-d"])
            .arg(&otr)
            .args(["-w", "whitelist.txt"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("opentracker (scripts/setup.sh)"),
    );

    let (sent_before, _) = lab.node(origin).bytes().expect("counters");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lt_swarm.py");
    let stop = dir.join("stop");
    let started = Instant::now();
    let mut running: Vec<(PathBuf, Guard)> = Vec::new();
    for (i, &p) in peers.iter().enumerate() {
        let save = dir.join(format!("peer{i}"));
        std::fs::create_dir_all(&save).expect("save");
        let node = lab.node(p);
        if let Some(other) = i.checked_sub(PEERS - OTHERS.len()) {
            let child = other_peer(OTHERS[other], node, &torrent_path, &save);
            running.push((save.clone(), Guard(child)));
            continue;
        }
        let child = node
            .command("python3")
            .arg(&script)
            .arg("peer")
            .arg(&torrent_path)
            .arg(&save)
            .arg(node.addr.to_string())
            .arg("180")
            .arg(&stop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        running.push((save, Guard(child)));
    }
    // Every peer completes while the others still seed; then all stop.
    let deadline = Instant::now() + Duration::from_secs(170);
    while !running
        .iter()
        .all(|(save, _)| Path::new(&format!("{}.done", save.display())).exists())
    {
        assert!(Instant::now() < deadline, "the swarm did not complete");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    std::fs::write(&stop, b"").expect("stop");
    let (sent_after, _) = lab.node(origin).bytes().expect("counters");
    let mut reports = Vec::new();
    for (save, mut guard) in running {
        let n: usize = save
            .file_name()
            .and_then(|n| n.to_str()?.strip_prefix("peer")?.parse().ok())
            .expect("peerN");
        if let Some(other) = n.checked_sub(PEERS - OTHERS.len()) {
            // They seed until stopped: their files are what count.
            drop(guard);
            for (path, bytes, _) in &files {
                let got = std::fs::read(save.join(COMMIT).join(path)).expect("a peer's file");
                assert!(got == *bytes, "{}: {path} differs", OTHERS[other]);
            }
            continue;
        }
        let mut out = String::new();
        if let Some(mut stdout) = guard.0.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out).expect("report");
        }
        let status = guard.0.wait().expect("wait");
        assert!(status.success(), "{}: {status}", save.display());
        let report: serde_json::Value = serde_json::from_str(&out).expect("peer report");
        assert_eq!(report["seeding"], true, "{report}");
        for (path, bytes, _) in &files {
            let got = std::fs::read(save.join(COMMIT).join(path)).expect("a peer's file");
            assert!(got == *bytes, "{}: {path} differs", save.display());
        }
        reports.push(report);
    }
    let copies = (sent_after - sent_before) as f64 / repo_bytes as f64;
    eprintln!(
        "{} libtorrent peers, aria2c and transmission-cli, links {LINK_MBIT} Mbit/s, repo {repo_bytes} bytes: all \
         byte-identical in {took:.1?}; the origin sent {copies:.2} copies of the repo; peers: {}",
        PEERS - OTHERS.len(),
        reports
            .iter()
            .map(|r| format!(
                "took {:.1}s, up {} B",
                r["took"].as_f64().unwrap_or(f64::NAN),
                r["payload_upload"]
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // The peers found each other through the tracker and shared pieces: the libtorrent ones
    // alone sent at least a tenth of a copy to the others. (The copies the origin sent are
    // reported, not bounded: stock clients take from a web seed all they can, and aria2c and
    // Transmission fetch the pad files too.)
    let shared: u64 = reports
        .iter()
        .map(|r| r["payload_upload"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        shared >= repo_bytes / 10,
        "the peers sent each other {shared} bytes: no swarm"
    );
}
