//! `ferry pull --swarm` on loopback when the swarm cannot serve it (no torrent at the endpoint,
//! no peer, or only a peer that answers every block with random bytes) or the endpoint refuses
//! the small files a swarm pull asks it for first. Each pull must end with
//! every file byte-identical (over HTTP where the swarm failed), say why in its report, and
//! leave no swarm partial behind. On both back-ends (the HTTP path's); the swarm itself writes
//! with plain `pwrite` whatever the back-end.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use ferry_testkit::KillOnDrop as Guard;
use ferry_testkit::hostile::{HostileOrigin, answer, request_path};
use ferry_testkit::{Backend, backends_under_test, ferry_command, free_port};

use super::{assert_pulled, repo_files, start_opentracker_at, start_origin_at, write_cache_repo};

/// `ferry pull org/swarm --swarm --json` from `endpoint` into `cache`; its report.
fn pull_swarm(backend: Backend, endpoint: &str, cache: &Path, extra: &[&str]) -> serde_json::Value {
    let out = ferry_command(backend)
        .args(["pull", "org/swarm", "--endpoint", endpoint, "--cache-dir"])
        .arg(cache)
        .args(["--swarm", "--swarm-listen", "127.0.0.1:0", "--json"])
        .args(extra)
        .env_remove("FERRY_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("ferry pull");
    assert!(
        out.status.success(),
        "[{}] ferry pull --swarm: {}\n{}",
        backend.flag(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report")
}

#[test]
fn a_server_without_torrents_is_pulled_over_http_and_the_report_says_why() {
    for backend in backends_under_test() {
        let tmp = tempfile::tempdir().expect("tmp");
        let files = repo_files();
        write_cache_repo(&tmp.path().join("root"), &files);
        // No --torrents: the torrent route answers 501.
        let (_serve, url) = start_origin_at(
            None,
            &tmp.path().join("root"),
            &tmp.path().join("pieces"),
            None,
            &[],
        );
        let cache = tmp.path().join("cache");
        let report = pull_swarm(backend, &url, &cache, &[]);
        let swarm = &report["swarm"];
        eprintln!("[{}] {swarm}", backend.flag());
        assert_eq!(swarm["files"], 0, "{report}");
        assert_eq!(swarm["files_over_http"], 5, "{report}");
        let why = swarm["fallback"].as_str().expect("a reason");
        assert!(why.contains("published no torrent"), "{why}");
        assert_pulled(&cache, &files);
    }
}

/// `ferry serve --torrents` of the repo under `dir`, its torrents announcing to a tracker
/// nobody answers: no peer is ever found.
fn origin_without_peers(dir: &Path, files: &[(String, Vec<u8>, bool)]) -> (Guard, String) {
    write_cache_repo(&dir.join("root"), files);
    let dead = format!("http://127.0.0.1:{}/announce", free_port());
    start_origin_at(
        None,
        &dir.join("root"),
        &dir.join("pieces"),
        Some(&dead),
        &[],
    )
}

#[test]
fn a_swarm_without_peers_falls_back_to_http_after_the_stall() {
    for backend in backends_under_test() {
        let tmp = tempfile::tempdir().expect("tmp");
        let files = repo_files();
        let (_serve, url) = origin_without_peers(tmp.path(), &files);
        let cache = tmp.path().join("cache");
        let report = pull_swarm(backend, &url, &cache, &["--swarm-stall", "2s"]);
        let swarm = &report["swarm"];
        eprintln!("[{}] {swarm}", backend.flag());
        assert_eq!(swarm["files"], 0, "{report}");
        assert_eq!(swarm["bytes_from_peers"], 0, "{report}");
        let why = swarm["fallback"].as_str().expect("a reason");
        assert!(why.contains("brought nothing for 2 s"), "{why}");
        assert_pulled(&cache, &files);
    }
}

/// `tests/fixtures/bt_liar.py` on 127.0.0.1:`port`, once it announced itself.
fn start_liar(torrent: &Path, port: u16, stop: &Path) -> Guard {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bt_liar.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(torrent)
        .args(["127.0.0.1", &port.to_string(), "120"])
        .arg(stop)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    assert!(first.contains("listening"), "bt_liar.py: {first:?}");
    Guard(child)
}

/// A peer that answers every block with random bytes: with it alone in the swarm, nothing it
/// sends is kept (every piece fails its check) and the pull completes over HTTP; beside the
/// origin's seed, the pull completes from the swarm with every file right.
#[test]
fn pieces_from_a_lying_peer_are_rejected() {
    for (backend, with_seed) in backends_under_test()
        .into_iter()
        .flat_map(|b| [(b, false), (b, true)])
    {
        let tmp = tempfile::tempdir().expect("tmp");
        let files = repo_files();
        write_cache_repo(&tmp.path().join("root"), &files);
        let tracker_port = free_port();
        let announce = format!("http://127.0.0.1:{tracker_port}/announce");
        let seed_addr = format!("127.0.0.1:{}", free_port());
        let extra: &[&str] = if with_seed {
            &["--seed", "--seed-addr", &seed_addr]
        } else {
            &[]
        };
        let torrent = tmp.path().join("swarm.torrent");
        let pieces = tmp.path().join("pieces");
        let root = tmp.path().join("root");
        let hash = super::torrent_ahead(&root, &pieces, &announce, &torrent);
        let _tracker = start_opentracker_at(None, tracker_port, tmp.path(), &[&hash]);
        let (_serve, url) = start_origin_at(None, &root, &pieces, Some(&announce), extra);
        let stop = tmp.path().join("stop");
        let mut liar = start_liar(&torrent, free_port(), &stop);
        let cache = tmp.path().join("cache");
        let report = pull_swarm(backend, &url, &cache, &["--swarm-stall", "3s"]);
        std::fs::write(&stop, b"").expect("stop");
        let mut told = String::new();
        if let Some(out) = liar.0.stdout.as_mut() {
            BufReader::new(out)
                .read_line(&mut told)
                .expect("liar's report");
        }
        let swarm = &report["swarm"];
        eprintln!(
            "[{}] {} the origin's seed: {swarm}; the liar: {told}",
            backend.flag(),
            if with_seed { "with" } else { "without" }
        );
        assert_pulled(&cache, &files);
        if with_seed {
            super::assert_from_swarm(&report);
        } else {
            let told: serde_json::Value = serde_json::from_str(&told).expect("json");
            assert!(
                told["bytes"].as_u64() > Some(0),
                "the liar sent nothing: {told}"
            );
            assert_eq!(swarm["files"], 0, "{report}");
            assert_eq!(swarm["files_small"], super::SMALL, "{report}");
            assert_eq!(swarm["files_over_http"], super::FROM_SWARM, "{report}");
        }
    }
}

/// `--seed` options that cannot work are refused before anything is served: no tracker, only
/// https trackers (ferry's BitTorrent client has no TLS), a mirror, signed links.
#[test]
fn seed_options_that_cannot_work_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    write_cache_repo(&tmp.path().join("root"), &repo_files());
    let root = tmp.path().join("root");
    let cases: [(&[&str], &str); 4] = [
        (&["--seed"], "--tracker"),
        (
            &["--seed", "--tracker", "https://tracker.example/announce"],
            "http:// and udp:// trackers only",
        ),
        (
            &[
                "--seed",
                "--tracker",
                "http://127.0.0.1:9/announce",
                "--upstream",
                "http://127.0.0.1:9",
            ],
            "--upstream",
        ),
        (
            &[
                "--seed",
                "--tracker",
                "http://127.0.0.1:9/announce",
                "--sign-key-file",
                "/dev/null",
            ],
            "--sign-key-file",
        ),
    ];
    for (args, why) in cases {
        let out = std::process::Command::new(ferry_testkit::ferry_bin())
            .args(["serve", "--addr", "127.0.0.1:0", "--root"])
            .arg(&root)
            .args(args)
            .env("FERRY_CACHE_DIR", tmp.path().join("cache"))
            .stdin(Stdio::null())
            .output()
            .expect("ferry serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} served: {err}");
    }
}

/// A symlink planted where a swarm partial goes is not followed: its target stays as it was,
/// and the pull completes over HTTP, saying why.
#[test]
fn a_symlink_at_a_swarm_partial_is_not_followed() {
    for backend in backends_under_test() {
        let tmp = tempfile::tempdir().expect("tmp");
        let files = repo_files();
        let (_serve, url) = origin_without_peers(tmp.path(), &files);
        let cache = tmp.path().join("cache");
        let blobs = cache.join("models--org--swarm/blobs");
        std::fs::create_dir_all(&blobs).expect("blobs");
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"not ferry's").expect("victim");
        let (_, bytes, _) = &files[2];
        let etag = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        std::os::unix::fs::symlink(&victim, blobs.join(format!("{etag}.ferry-swarm")))
            .expect("symlink");
        let report = pull_swarm(backend, &url, &cache, &["--swarm-stall", "2s"]);
        let swarm = &report["swarm"];
        eprintln!("[{}] {swarm}", backend.flag());
        assert_eq!(std::fs::read(&victim).expect("victim"), b"not ferry's");
        let why = swarm["fallback"].as_str().expect("a reason");
        assert!(why.contains("cannot open"), "{why}");
        // The small files came over HTTP before the swarm; the shards fall back.
        assert_eq!(swarm["files_small"], super::SMALL, "{report}");
        assert_eq!(swarm["files_over_http"], super::FROM_SWARM, "{report}");
        assert_pulled(&cache, &files);
    }
}

/// An endpoint in front of `origin` (a forwarding [`HostileOrigin`]) that answers 404 for the
/// repo's small files, and forwards everything else.
fn endpoint_refusing_small_files(origin: &str) -> HostileOrigin {
    let addr = origin.trim_start_matches("http://").to_owned();
    HostileOrigin::start(move |head| {
        let path = request_path(head);
        if path.contains("/resolve/")
            && (path.ends_with("config.json") || path.ends_with("README.md"))
        {
            return answer("404 Not Found", &[], b"not here");
        }
        // The request as sent, on a connection of its own that the origin closes.
        let mut forward: String = head
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        forward.push_str("Connection: close\r\n\r\n");
        let mut conn = std::net::TcpStream::connect(&addr).expect("origin");
        std::io::Write::write_all(&mut conn, forward.as_bytes()).expect("forward");
        let mut reply = Vec::new();
        let _ = std::io::Read::read_to_end(&mut conn, &mut reply);
        reply
    })
}

/// Small files come over HTTP before the swarm is joined; when the endpoint will not give
/// them, they come from the swarm with the shards, and every file is right.
#[test]
fn small_files_the_endpoint_refuses_come_from_the_swarm() {
    for backend in backends_under_test() {
        let tmp = tempfile::tempdir().expect("tmp");
        let files = repo_files();
        let root = tmp.path().join("root");
        write_cache_repo(&root, &files);
        let tracker_port = free_port();
        let announce = format!("http://127.0.0.1:{tracker_port}/announce");
        let seed_addr = format!("127.0.0.1:{}", free_port());
        let torrent = tmp.path().join("swarm.torrent");
        let pieces = tmp.path().join("pieces");
        let hash = super::torrent_ahead(&root, &pieces, &announce, &torrent);
        let _tracker = start_opentracker_at(None, tracker_port, tmp.path(), &[&hash]);
        let (_serve, url) = start_origin_at(
            None,
            &root,
            &pieces,
            Some(&announce),
            &["--seed", "--seed-addr", &seed_addr],
        );
        let endpoint = endpoint_refusing_small_files(&url);
        let cache = tmp.path().join("cache");
        let report = pull_swarm(backend, &endpoint.url(), &cache, &["--swarm-stall", "10s"]);
        let swarm = &report["swarm"];
        eprintln!("[{}] {swarm}", backend.flag());
        assert_pulled(&cache, &files);
        let asked = endpoint
            .requests()
            .iter()
            .filter(|h| request_path(h).ends_with("config.json"))
            .count();
        assert!(asked > 0, "config.json was never asked for over HTTP");
        assert_eq!(swarm["files"], super::FROM_SWARM + super::SMALL, "{report}");
        assert_eq!(swarm["files_small"], 0, "{report}");
        assert!(swarm["fallback"].is_null(), "{report}");
    }
}
