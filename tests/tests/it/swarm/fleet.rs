//! `ferry pull --swarm` peers in a fleet (issue 33), on a network of namespaces
//! (`ferry_testkit::netlab`): an origin running `ferry serve --seed` (publisher, web seed and
//! BitTorrent seed), a stock opentracker, and peers on links capped with `tbf`. Every peer must
//! end with every file byte-identical and checked against the listing; the origin's interface
//! counters say how many copies of the repo it sent.
//!
//! Round trips and loss are not emulated (a bridge on one machine). The swarm writes with plain
//! `pwrite` on either back-end; these runs use the default one, which the report names.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::KillOnDrop as Guard;
use ferry_testkit::netlab::{Lab, Node};

use super::{
    assert_from_swarm, assert_pulled, lt_peer, other_peer, pulled, repo_files, start_opentracker,
    start_origin, write_cache_repo,
};

/// `ferry pull org/swarm --swarm --json --seed-for SEED` on `node` into `cache`, from the origin.
fn ferry_peer(node: &Node, origin: &Node, cache: &Path, seed: &str, log: &str) -> Child {
    node.command(ferry_testkit::ferry_bin())
        .args([
            "pull",
            "org/swarm",
            "--endpoint",
            &format!("http://{}:8080", origin.addr),
            "--cache-dir",
        ])
        .arg(cache)
        .args(["--swarm", "--json", "--seed-for", seed])
        .env("FERRY_CACHE_DIR", cache.with_extension("ferry"))
        .env("FERRY_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry pull")
}

/// Stops a seeding ferry peer (SIGINT ends its seeding) and returns its report.
fn stop_peer(peer: Guard) -> serde_json::Value {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &peer.0.id().to_string()])
        .status();
    peer_report(peer)
}

/// The report of a ferry peer, once it exits.
fn peer_report(mut peer: Guard) -> serde_json::Value {
    let mut out = String::new();
    if let Some(mut stdout) = peer.0.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut out).expect("report");
    }
    let mut err = String::new();
    if let Some(mut stderr) = peer.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
    }
    let status = peer.0.wait().expect("wait");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("ferry pull ({status}): {e}: {out:?}\n{err}"))
}

/// The lab: origin (`ferry serve --seed`), tracker, and `peers` nodes, links at `mbit`.
struct Fleet {
    lab: Lab,
    origin: usize,
    peers: Vec<usize>,
    torrent: PathBuf,
    announce: String,
    _tracker: Guard,
    serve: Option<Guard>,
}

fn fleet(dir: &Path, files: &[(String, Vec<u8>, bool)], peers: usize, mbit: u32) -> Fleet {
    let root = dir.join("root");
    write_cache_repo(&root, files);
    let mut lab = Lab::new().unwrap_or_else(|e| panic!("network lab: {e}"));
    let origin = lab.add("origin", Some(mbit)).expect("origin");
    let tracker = lab.add("tracker", None).expect("tracker");
    let peers: Vec<usize> = (0..peers)
        .map(|i| lab.add(&format!("peer{i}"), Some(mbit)).expect("peer"))
        .collect();
    let announce = format!("http://{}:6969/announce", lab.node(tracker).addr);
    let torrent = dir.join("swarm.torrent");
    let pieces = dir.join("pieces-cache");
    let hash = super::torrent_ahead(&root, &pieces, &announce, &torrent);
    let tracker = start_opentracker(lab.node(tracker), dir, &[&hash]);
    let seed_addr = format!("{}:6881", lab.node(origin).addr);
    let serve = start_origin(
        lab.node(origin),
        &root,
        &pieces,
        &announce,
        &["--seed", "--seed-addr", &seed_addr],
    );
    Fleet {
        lab,
        origin,
        peers,
        torrent,
        announce,
        _tracker: tracker,
        serve: Some(serve),
    }
}

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const FERRY_PEERS: usize = 4;

/// The stock peers beside libtorrent: half the fleet is stock clients.
const OTHERS: [&str; 3] = ["aria2c", "transmission-daemon", "qbittorrent-nox"];

/// Four ferry peers and four stock ones (libtorrent, aria2c, transmission-daemon,
/// qbittorrent-nox) pull one commit at once; every one ends with the right bytes, the ferry peers from the swarm alone (no HTTP
/// fallback), and the ferry peers send pieces to the stock ones (libtorrent says from which
/// address it got what).
#[test]
fn ferry_peers_swarm_with_stock_peers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let files = repo_files();
    let repo_bytes: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    let f = fleet(&dir, &files, FERRY_PEERS + 1 + OTHERS.len(), 200);
    let (sent_before, _) = f.lab.node(f.origin).bytes().expect("counters");
    let started = Instant::now();
    let mut ferry: Vec<(PathBuf, Guard)> = Vec::new();
    for (i, &p) in f.peers[..FERRY_PEERS].iter().enumerate() {
        let cache = dir.join(format!("ferry{i}"));
        let child = ferry_peer(f.lab.node(p), f.lab.node(f.origin), &cache, "10m", "warn");
        ferry.push((cache, Guard(child)));
    }
    let stop = dir.join("stop");
    let lt_save = dir.join("lt");
    std::fs::create_dir_all(&lt_save).expect("lt");
    let lt_node = f.lab.node(f.peers[FERRY_PEERS]);
    let mut lt = Guard(lt_peer(lt_node, &f.torrent, &lt_save, &stop));
    // aria2c and Transmission know no pad files: they also take them from the web seed.
    let mut others = Vec::new();
    for (k, program) in OTHERS.iter().enumerate() {
        let save = dir.join(program);
        std::fs::create_dir_all(&save).expect("save");
        let node = f.lab.node(f.peers[FERRY_PEERS + 1 + k]);
        let child = other_peer(program, node, &f.torrent, &save);
        others.push((save, Guard(child)));
    }
    let lt_done = PathBuf::from(format!("{}.done", lt_save.display()));
    let done = |save: &Path| PathBuf::from(format!("{}.done", save.display())).exists();
    wait_until("every peer completes", 170, || {
        ferry.iter().all(|(c, _)| pulled(c))
            && lt_done.exists()
            && others.iter().all(|(s, _)| done(s))
    });
    let took = started.elapsed();
    let (sent_after, _) = f.lab.node(f.origin).bytes().expect("counters");
    std::fs::write(&stop, b"").expect("stop");
    let mut uploaded = 0;
    let mut lines = Vec::new();
    for (cache, guard) in ferry {
        let report = stop_peer(guard);
        assert_pulled(&cache, &files);
        assert_from_swarm(&report);
        let swarm = &report["swarm"];
        uploaded += swarm["bytes_uploaded"].as_u64().unwrap_or(0);
        lines.push(format!(
            "{} B from peers, {} B sent",
            swarm["bytes_from_peers"], swarm["bytes_uploaded"]
        ));
    }
    let mut out = String::new();
    if let Some(mut stdout) = lt.0.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut out).expect("libtorrent's report");
    }
    let _ = lt.0.wait();
    let lt_report: serde_json::Value = serde_json::from_str(&out).expect("libtorrent's report");
    for save in std::iter::once(&lt_save).chain(others.iter().map(|(s, _)| s)) {
        for (path, bytes, _) in &files {
            let got =
                std::fs::read(save.join(super::COMMIT).join(path)).expect("a stock peer's file");
            assert!(got == *bytes, "{}: {path} differs", save.display());
        }
    }
    drop(others);
    let ferry_ips: Vec<String> = f.peers[..FERRY_PEERS]
        .iter()
        .map(|&p| f.lab.node(p).addr.to_string())
        .collect();
    let from_ferry: u64 = lt_report["from_ip_at_end"]
        .as_object()
        .expect("from_ip_at_end")
        .iter()
        .filter(|(ip, _)| ferry_ips.contains(ip))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    let copies = (sent_after - sent_before) as f64 / repo_bytes as f64;
    eprintln!(
        "{FERRY_PEERS} ferry peers, libtorrent, {OTHERS:?}, links 200 Mbit/s, repo \
         {repo_bytes} bytes: all byte-identical in {took:.1?}; the origin sent {copies:.2} \
         copies; libtorrent got {from_ferry} B from ferry peers (of its {}); ferry peers: {}",
        lt_report["payload_download"],
        lines.join("; ")
    );
    assert!(
        uploaded >= repo_bytes / 4,
        "the ferry peers sent the others {uploaded} bytes: no swarm"
    );
    assert!(
        from_ferry > 0,
        "libtorrent got nothing from a ferry peer: {lt_report}"
    );
}

/// The progress a ferry peer logs (`swarm progress done=D total=T`), or None for other lines.
fn progress(line: &str) -> Option<(u64, u64)> {
    if !line.contains("swarm progress") {
        return None;
    }
    let field = |name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((field("done")?, field("total")?))
}

/// A ferry peer killed (SIGKILL) at half its download and started again keeps every piece it
/// had: the second run fetches at most the rest and what was in flight.
#[test]
fn a_killed_ferry_peer_keeps_its_pieces() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let files = repo_files();
    let repo_bytes: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    // 40 Mbit/s: the repo takes ~8 s, long enough to stop it halfway.
    let f = fleet(&dir, &files, 1, 40);
    let cache = dir.join("ferry0");
    let node = f.lab.node(f.peers[0]);
    let mut first = Guard(ferry_peer(
        node,
        f.lab.node(f.origin),
        &cache,
        "0",
        "ferry=debug",
    ));
    let stderr = first.0.stderr.take().expect("stderr");
    let mut at_kill = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("line");
        if let Some((done, total)) = progress(&line)
            && done * 2 >= total
        {
            first.0.kill().expect("kill");
            at_kill = Some(done);
            break;
        }
    }
    let _ = first.0.wait();
    let at_kill = at_kill.expect("the first run logged its progress past half");
    assert!(
        !pulled(&cache),
        "the first run completed before it was killed"
    );
    let second = peer_report(Guard(ferry_peer(
        node,
        f.lab.node(f.origin),
        &cache,
        "0",
        "warn",
    )));
    assert_pulled(&cache, &files);
    let swarm = &second["swarm"];
    // Files the first run completed are in place: the second fetches the others, from peers.
    assert_eq!(swarm["files"], second["fetched"], "{second}");
    assert!(swarm["fallback"].is_null(), "{second}");
    let fetched = swarm["bytes_from_peers"].as_u64().expect("bytes");
    // In flight at the kill: up to 128 blocks of 16 KiB per peer, and the pieces they were
    // part of (256 KiB pieces here).
    let in_flight = 4 << 20;
    eprintln!(
        "killed at {at_kill} of {repo_bytes} bytes; the second run fetched {fetched} bytes \
         (at most {} allowed)",
        repo_bytes - at_kill + in_flight
    );
    assert!(
        fetched <= repo_bytes - at_kill + in_flight,
        "the second run fetched {fetched} bytes again"
    );
}

/// Once one ferry peer holds the whole commit, the origin can go: the peers that joined
/// meanwhile complete from the swarm.
#[test]
fn the_swarm_completes_without_the_origin() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let files = repo_files();
    let mut f = fleet(&dir, &files, 3, 200);
    let origin = f.lab.node(f.origin);
    let first_cache = dir.join("ferry0");
    let first = Guard(ferry_peer(
        f.lab.node(f.peers[0]),
        origin,
        &first_cache,
        "10m",
        "warn",
    ));
    wait_until("the first peer completes", 60, || pulled(&first_cache));
    let mut later = Vec::new();
    for (i, &p) in f.peers[1..].iter().enumerate() {
        let cache = dir.join(format!("ferry{}", i + 1));
        let mut child = ferry_peer(f.lab.node(p), origin, &cache, "10m", "ferry=info");
        // Once it joined the swarm, it needs the origin no more.
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let joined = lines.any(|l| l.is_ok_and(|l| l.contains("joined the swarm")));
        assert!(joined, "the peer did not join the swarm");
        std::thread::spawn(move || lines.for_each(drop));
        later.push((cache, Guard(child)));
    }
    drop(f.serve.take());
    for (cache, _) in &later {
        wait_until("the later peers complete", 120, || pulled(cache));
    }
    for (cache, guard) in later {
        let report = stop_peer(guard);
        assert_pulled(&cache, &files);
        assert_from_swarm(&report);
    }
    let report = stop_peer(first);
    assert!(
        report["swarm"]["bytes_uploaded"].as_u64() > Some(0),
        "the first peer sent nothing: {report}"
    );
}

/// One `ferry pull --swarm` on `node` into `cache`, not seeding: checks that every file is in
/// place and that the shards came from the swarm.
fn pull_from_swarm(node: &Node, origin: &Node, cache: &Path, files: &[(String, Vec<u8>, bool)]) {
    let report = peer_report(Guard(ferry_peer(node, origin, cache, "0", "warn")));
    assert_pulled(cache, files);
    assert_from_swarm(&report);
}

/// A peer whose cache already holds the whole commit seeds it when asked (`--seed-for`), with
/// nothing to fetch: a later peer gets the commit from it, the origin serving the listing and
/// the metainfo but seeding nothing.
#[test]
fn a_peer_with_everything_in_place_seeds_when_asked() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let files = repo_files();
    let repo_bytes: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    let mut f = fleet(&dir, &files, 2, 200);
    let origin = f.lab.node(f.origin);
    let first_cache = dir.join("ferry0");
    pull_from_swarm(f.lab.node(f.peers[0]), origin, &first_cache, &files);
    // The origin again, without its seed.
    drop(f.serve.take());
    let (root, pieces) = (dir.join("root"), dir.join("pieces-cache"));
    let _serve = start_origin(origin, &root, &pieces, &f.announce, &[]);
    let mut again = ferry_peer(
        f.lab.node(f.peers[0]),
        origin,
        &first_cache,
        "10m",
        "ferry=info",
    );
    let stderr = again.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let seeding = lines.any(|l| l.is_ok_and(|l| l.contains("seeding for")));
    assert!(seeding, "a pull with every file in place did not seed");
    std::thread::spawn(move || lines.for_each(drop));
    let again = Guard(again);
    let second_cache = dir.join("ferry1");
    pull_from_swarm(f.lab.node(f.peers[1]), origin, &second_cache, &files);
    let seeder = stop_peer(again);
    assert_eq!(seeder["fetched"], 0, "{seeder}");
    let sent = seeder["swarm"]["bytes_uploaded"].as_u64().unwrap_or(0);
    assert!(
        sent >= repo_bytes,
        "the seeding peer sent {sent} of the repo's {repo_bytes} bytes: {seeder}"
    );
}
