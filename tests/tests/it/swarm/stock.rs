//! A fleet of stock BitTorrent peers pulls one commit from `ferry serve --torrents` (issue 33),
//! on a network of namespaces (`ferry_testkit::netlab`): an origin running `ferry serve` (the
//! torrent's publisher and web seed), a stock tracker (Debian's opentracker, whitelist mode),
//! and PEERS nodes running stock clients, the PyPI libtorrent (`tests/fixtures/lt_swarm.py
//! peer`) and, on the last two, aria2c and Transmission (`transmission-cli`), which know no pad
//! files; every link capped at LINK_MBIT both ways with `tbf`. Every peer must end with every file byte-identical;
//! the origin's interface counters say how many copies of the repo it sent.
//!
//! ferry serve is blocking std I/O: no io_uring or safe-mode back-end is involved here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_testkit::KillOnDrop as Guard;
use ferry_testkit::netlab::Lab;

use super::{
    COMMIT, fetch_torrent, lt_peer, other_peer, repo_files, start_opentracker, start_origin,
    write_cache_repo,
};

const PEERS: usize = 5;
/// The peers that are not libtorrent: the last two, by their command.
const OTHERS: [&str; 2] = ["aria2c", "transmission-cli"];
const LINK_MBIT: u32 = 200;

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
        &[],
    );
    let torrent_path = dir.join("swarm.torrent");
    fetch_torrent(lab.node(peers[0]), lab.node(origin), &torrent_path);
    let hash = super::info_hash(&torrent_path);

    let _tracker = start_opentracker(lab.node(tracker), &dir, &[&hash]);

    let (sent_before, _) = lab.node(origin).bytes().expect("counters");
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
        let child = lt_peer(node, &torrent_path, &save, &stop);
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
