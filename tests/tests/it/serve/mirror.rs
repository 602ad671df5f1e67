//! `ferry serve --upstream`: the pull-through mirror, with nginx serving a static copy of the
//! Hub's API as the upstream (at 8 MiB/s per request, so that fills are under way while
//! clients read) and the stock huggingface_hub client as the mirror's clients. Every test runs
//! on both back-ends (the mirror's fills go through the engine) and says which.

use super::*;
use ferry_testkit::hub::{Repo, StaticHub};
use ferry_testkit::serve::get_on;
use ferry_testkit::{Backend, backends_under_test};

/// A model with one file large enough to be still filling while clients read it.
const SPEC: &[(&str, u64, bool)] = &[
    ("model.safetensors", 24 * 1024 * 1024 + 13, true),
    ("small.safetensors", 300_000, true),
    ("empty.bin", 0, true),
    ("config.json", 700, false),
    ("tokenizer/tokenizer.json", 20_000, false),
    ("with space.txt", 4095, false),
];

/// A mirror of `upstream` on `backend`, its cache in `cache`.
fn mirror(cache: &Path, upstream: &str, backend: Backend, extra: &[&str]) -> Serve {
    let mut args = vec!["--upstream", upstream, "--backend", backend.flag()];
    args.extend_from_slice(extra);
    Serve::start_with(cache, None, None, &args)
}

/// Body bytes nginx sent for file requests (`resolve`).
fn upstream_file_bytes(hub: &StaticHub) -> u64 {
    hub.resolves_since(0).iter().map(|r| r.body_bytes).sum()
}

fn repo_bytes(repo: &Repo) -> u64 {
    repo.files.iter().map(|f| f.size).sum()
}

/// `/metrics` parsed by the Prometheus project's own Python parser (OpenMetrics): every sample
/// as `name{label="value",...}` -> value.
fn scrape(serve: &Serve) -> BTreeMap<String, f64> {
    let (status, head, body) = serve.get("/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let script = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = {}\n\
        for fam in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in fam.samples:\n\
        \x20       labels = ','.join(f'{k}=\"{v}\"' for k, v in sorted(s.labels.items()))\n\
        \x20       out[s.name + ('{' + labels + '}' if labels else '')] = s.value\n\
        print(json.dumps(out))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&body)
        .expect("write metrics");
    let o = child.wait_with_output().expect("python3");
    assert!(
        o.status.success(),
        "prometheus_client refused /metrics: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&o.stdout).expect("parsed metrics")
}

/// Checks a snapshot folder the client returned against the repo's sources.
fn assert_same_files(snapshot: &Path, repo: &Repo, what: &str) {
    for f in &repo.files {
        let got = std::fs::read(snapshot.join(&f.path))
            .unwrap_or_else(|e| panic!("{what}: {} missing: {e}", f.path));
        let want = std::fs::read(&f.source).expect("source");
        assert!(got == want, "{what}: {} differs", f.path);
    }
}

#[test]
fn eight_stock_clients_of_a_cold_repo_get_every_byte_and_the_upstream_sends_it_once() {
    if !have_hf_client() {
        return;
    }
    for backend in backends_under_test() {
        let hub = StaticHub::start_with(SPEC, |_| None, None);
        let cache = tempfile::tempdir().expect("cache");
        let serve = mirror(cache.path(), &hub.slow_endpoint(), backend, &[]);
        let clients: Vec<_> = (0..8)
            .map(|i| {
                let endpoint = serve.endpoint();
                std::thread::spawn(move || {
                    let home = tempfile::tempdir().expect("client cache");
                    let jobs = serde_json::json!([
                        { "op": "snapshot", "repo": "org/model", "type": "model", "revision": "main", "file": "" }
                    ]);
                    let paths = hf_client(&endpoint, home.path(), false, &jobs);
                    (i, home, paths)
                })
            })
            .collect();
        for c in clients {
            let (i, _home, paths) = c.join().expect("client thread");
            assert_same_files(
                &paths[0],
                &hub.repo,
                &format!("{backend:?}: client {i} of 8"),
            );
        }
        let sent = upstream_file_bytes(&hub);
        let repo = repo_bytes(&hub.repo);
        eprintln!(
            "{backend:?}: 8 clients, repo {repo} bytes, upstream sent {sent} ({:.3}x)",
            sent as f64 / repo as f64
        );
        assert!(
            sent as f64 <= repo as f64 * 1.05,
            "{backend:?}: the upstream sent {sent} bytes for a {repo}-byte repo"
        );
        // The cache is a huggingface_hub cache now: warm, a client is served without the
        // upstream sending a byte of any file.
        let before = hub.resolves();
        let home = tempfile::tempdir().expect("client cache");
        let jobs = serde_json::json!([
            { "op": "snapshot", "repo": "org/model", "type": "model", "revision": "main", "file": "" }
        ]);
        let paths = hf_client(&serve.endpoint(), home.path(), false, &jobs);
        assert_same_files(&paths[0], &hub.repo, &format!("{backend:?}: warm client"));
        assert_eq!(
            hub.resolves(),
            before,
            "{backend:?}: a warm mirror asked the upstream for file bytes"
        );
        // The counters say the same, as the Prometheus client library reads them.
        let m = scrape(&serve);
        eprintln!("{backend:?}: /metrics: {m:?}");
        let get = |k: &str| {
            m.get(k)
                .copied()
                .unwrap_or_else(|| panic!("no {k} in {m:?}"))
        };
        let fetched = get("ferry_mirror_filled_bytes_total");
        assert!(
            fetched >= (repo - 1) as f64 && fetched <= repo as f64 * 1.05,
            "{backend:?}: filled_bytes {fetched} for a {repo}-byte repo"
        );
        assert_eq!(
            get("ferry_mirror_fills_total{class=\"verified\"}"),
            5.0,
            "{backend:?}"
        );
        assert!(get("ferry_mirror_cache_misses_total") >= 5.0, "{backend:?}");
        assert!(
            get("ferry_mirror_cache_hits_total") >= 5.0,
            "{backend:?}: the warm client"
        );
        assert_eq!(get("ferry_mirror_fills_in_flight"), 0.0, "{backend:?}");
        assert!(
            get("ferry_mirror_bytes_from_fills_total")
                >= get("ferry_mirror_bytes_unverified_total"),
            "{backend:?}"
        );
        // The mirror's cache is a huggingface_hub cache of what was asked (the client never
        // asks for an empty file's bytes).
        let mut asked = hub.repo.clone();
        asked.files.retain(|f| f.size > 0);
        let snapshot = hub.repo.snapshot(cache.path());
        assert_same_files(
            &snapshot,
            &asked,
            &format!("{backend:?}: the mirror's cache"),
        );
    }
}

#[test]
fn a_range_of_a_file_being_filled_is_answered_206_with_exactly_its_bytes() {
    for backend in backends_under_test() {
        let hub = StaticHub::start_with(SPEC, |_| None, None);
        let cache = tempfile::tempdir().expect("cache");
        let serve = mirror(cache.path(), &hub.slow_endpoint(), backend, &[]);
        let f = &hub.repo.files[0];
        let want = std::fs::read(&f.source).expect("source");
        let target = format!("/org/model/resolve/main/{}", f.path);
        // Three readers at once, in the middle and at the end of a cold 24 MiB file, while
        // the one fill of it lands.
        let size = f.size;
        let ranges = [
            (12 << 20, (12 << 20) + 999_999),
            (size - 100, size - 1),
            (1, 2),
        ];
        let readers: Vec<_> = ranges
            .iter()
            .map(|&(a, b)| {
                let port = serve.port;
                let target = target.clone();
                std::thread::spawn(move || {
                    let range = format!("Range: bytes={a}-{b}\r\n");
                    (a, b, get_on(port, &target, &range))
                })
            })
            .collect();
        for r in readers {
            let (a, b, (status, head, body)) = r.join().expect("reader");
            assert_eq!(status, 206, "{backend:?}: {head}");
            assert!(
                head.contains(&format!("content-range: bytes {a}-{b}/{size}")),
                "{backend:?}: {head}"
            );
            assert!(
                body == want[a as usize..=b as usize],
                "{backend:?}: bytes {a}-{b} differ"
            );
        }
        let (status, head, _) = serve.get_range(&target, &format!("bytes={size}-"));
        assert_eq!(status, 416, "{backend:?}: past the end: {head}");
        assert!(
            head.contains(&format!("content-range: bytes */{size}")),
            "{head}"
        );
        eprintln!(
            "{backend:?}: ranges of a filling file answered 206 byte-exact; past the end 416"
        );
    }
}

/// Hostile upstream: its listing names a sha256 the bytes do not have. The client gets a body
/// cut short (never a complete wrong file), nothing is kept under the blob's name, and asking
/// again does not serve the wrong bytes as cached either.
#[test]
fn bytes_that_do_not_match_the_listing_are_never_kept_or_served_whole() {
    for backend in backends_under_test() {
        let hub = StaticHub::start_with(
            SPEC,
            |repo| {
                let mut tree = ferry_testkit::hub::tree_json(&repo.files);
                // small.safetensors: the listing claims another sha256.
                for e in tree.as_array_mut().expect("tree") {
                    if e["path"] == "small.safetensors" {
                        e["lfs"]["oid"] = serde_json::json!("ab".repeat(32));
                    }
                }
                Some(tree)
            },
            None,
        );
        let cache = tempfile::tempdir().expect("cache");
        let serve = mirror(cache.path(), &hub.endpoint(), backend, &[]);
        let target = "/org/model/resolve/main/small.safetensors";
        for attempt in 0..2 {
            let (status, head, body) = serve.get_range(target, "bytes=0-");
            assert!(
                status >= 500 || (status == 206 && (body.len() as u64) < 300_000),
                "{backend:?}: attempt {attempt}: a wrong file was served whole ({status}, {} bytes): {head}",
                body.len()
            );
        }
        let blob = hub
            .repo
            .cache_folder(cache.path())
            .join("blobs")
            .join("ab".repeat(32));
        assert!(
            !blob.exists(),
            "{backend:?}: the wrong bytes were kept under the listed sha256"
        );
        // The other files are unaffected.
        let (status, _, body) = serve.get("/org/model/resolve/main/config.json");
        assert_eq!(status, 200);
        let f = hub.repo.file("config.json");
        assert!(
            body == std::fs::read(&f.source).expect("source"),
            "{backend:?}"
        );
        let m = scrape(&serve);
        let failures = m["ferry_mirror_verification_failures_total"];
        assert!(
            failures >= 1.0,
            "{backend:?}: {failures} verification failures counted"
        );
        eprintln!("{backend:?}: a mismatching upstream file was cut short and not kept");
    }
}

#[test]
fn upstream_refusals_pass_through_and_xet_is_not_offered() {
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let cache = tempfile::tempdir().expect("cache");
    let serve = mirror(cache.path(), &hub.endpoint(), Backend::Portable, &[]);
    let (status, head, _) = serve.get("/api/models/org/missing/revision/main");
    assert_eq!(status, 404, "{head}");
    let (status, head, _) = serve.get("/api/models/org/model/xet-read-token/main");
    assert_eq!(status, 501, "{head}");
    assert!(head.contains("x-error-message:"), "{head}");
    // The revision answer is the mirror's own: the commit, no Xet fields.
    let (status, head, body) = serve.get("/api/models/org/model/revision/main?blobs=true");
    assert_eq!(status, 200, "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["sha"], hub.repo.commit.as_str());
    assert!(!String::from_utf8_lossy(&body).contains("xet"), "{v}");
    // Commits, as a plain serve lists them: the one commit known of the revision.
    let (status, head, body) = serve.get("/api/models/org/model/commits/main");
    assert_eq!(status, 200, "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v[0]["id"], hub.repo.commit.as_str(), "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    // A HEAD of a cold file is answered from the listing and starts no fill.
    let mut s = serve.connect();
    s.write_all(b"HEAD /org/model/resolve/main/model.safetensors HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    let f = &hub.repo.files[0];
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(
        all.to_ascii_lowercase()
            .contains(&format!("x-linked-size: {}", f.size)),
        "{all}"
    );
    assert!(all.contains(&f.etag), "{all}");
    assert_eq!(hub.resolves(), 0, "a HEAD fetched file bytes");
    // A path that leaves the repo is refused before anything is asked.
    let (status, _, _) = serve.get("/org/model/resolve/main/..%2F..%2Fetc%2Fpasswd");
    assert_eq!(status, 400);
}

/// A mirror killed (SIGKILL) mid-fill and started again on the same cache goes on from what
/// its journal says was written: the bytes already fetched are not fetched again.
#[test]
fn a_mirror_killed_mid_fill_resumes_without_fetching_again_what_it_wrote() {
    for backend in backends_under_test() {
        let hub = StaticHub::start_with(SPEC, |_| None, None);
        let cache = tempfile::tempdir().expect("cache");
        let f = &hub.repo.files[0];
        let want = std::fs::read(&f.source).expect("source");
        let target = format!("/org/model/resolve/main/{}", f.path);
        let first = 8u64 << 20;
        {
            // One connection at 4 MiB/s: the first 8 MiB land seconds before the rest.
            let serve = mirror(
                cache.path(),
                &hub.endpoint(),
                backend,
                &["--limit-rate", "4M", "--fill-connections", "1"],
            );
            let (status, head, body) = serve.get_range(&target, &format!("bytes=0-{}", first - 1));
            assert_eq!(status, 206, "{backend:?}: {head}");
            assert!(
                body == want[..first as usize],
                "{backend:?}: the first 8 MiB differ"
            );
            // The guard kills the mirror here, mid-fill.
        }
        let blob = hub
            .repo
            .cache_folder(cache.path())
            .join("blobs")
            .join(&f.etag);
        assert!(
            !blob.exists(),
            "{backend:?}: the fill ended before the kill; nothing to resume"
        );
        // What the journal vouches for after the kill: its `W ID START END` records (a reader
        // may have had bytes whose record was not appended yet; those are fetched again).
        let journal = std::fs::read_to_string(
            hub.repo
                .cache_folder(cache.path())
                .join(".ferry/mirror.journal"),
        )
        .expect("the mirror's journal");
        let journaled: Vec<(u64, u64)> = journal
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                match w.as_slice() {
                    [_, "W", _, a, b] => Some((a.parse().ok()?, b.parse().ok()?)),
                    _ => None,
                }
            })
            .collect();
        let vouched: u64 = journaled.iter().map(|(a, b)| b - a).sum();
        assert!(
            vouched > 0,
            "{backend:?}: the journal vouches for nothing: {journal}"
        );
        let before: u64 = upstream_file_bytes(&hub);
        let logged = hub.resolves();
        let serve = mirror(cache.path(), &hub.endpoint(), backend, &[]);
        let (status, head, body) = serve.get(&target);
        assert_eq!(status, 200, "{backend:?}: {head}");
        assert!(body == want, "{backend:?}: the resumed file differs");
        let again: Vec<_> = hub
            .resolves_since(logged)
            .into_iter()
            .filter(|r| r.uri.ends_with(&f.path))
            .collect();
        let after: u64 = again.iter().map(|r| r.body_bytes).sum();
        eprintln!(
            "{backend:?}: before the kill the upstream sent {before} bytes; after it {after} of {} in {} requests",
            f.size,
            again.len()
        );
        // What the journal vouched for is not asked for again.
        for r in &again {
            let (start, end) = r
                .range
                .strip_prefix("bytes=")
                .and_then(|v| v.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()? + 1)))
                .unwrap_or_else(|| panic!("{backend:?}: a request without a range: {r:?}"));
            for &(a, b) in &journaled {
                assert!(
                    end <= a || start >= b,
                    "{backend:?}: after the restart {start}..{end} was asked, the journal vouched for {a}..{b}: {r:?}"
                );
            }
        }
        eprintln!("{backend:?}: the journal vouched for {vouched} bytes, none asked again");
        assert!(
            after > 0,
            "{backend:?}: nothing was fetched after the restart"
        );
        // The fill is over (its last byte went out after the blob was in place): the journal,
        // which the mirror keeps open, no longer holds it.
        let left = std::fs::read_to_string(
            hub.repo
                .cache_folder(cache.path())
                .join(".ferry/mirror.journal"),
        )
        .expect("the mirror's journal");
        assert!(
            !left.lines().any(|l| l.split(' ').nth(1) == Some("F")),
            "{backend:?}: a finished fill is still journaled: {left}"
        );
    }
}

/// `ferry pull --http2` from a cold mirror serving HTTPS and HTTP/2: the files stream to ferry
/// over HTTP/2 streams while the mirror fills them, byte for byte, on both back-ends.
#[test]
fn ferry_pulls_a_cold_repo_through_the_mirror_over_http2_and_http3() {
    let pki = TestPki::new();
    let ca = pki.ca.to_str().expect("utf-8");
    // (the server's flag, the client's, the report's count of requests over it)
    let protocols = [
        ("--http2", "--http2", "http2"),
        ("--h3", "--http3", "http3"),
    ];
    for backend in backends_under_test() {
        for (serve_flag, pull_flag, counted) in protocols {
            let hub = StaticHub::start_with(SPEC, |_| None, None);
            let cache = tempfile::tempdir().expect("cache");
            let serve = Serve::start_with(
                cache.path(),
                Some(3),
                Some(&pki.localhost),
                &[
                    serve_flag,
                    "--upstream",
                    &hub.slow_endpoint(),
                    "--backend",
                    backend.flag(),
                ],
            );
            let client = tempfile::tempdir().expect("client cache");
            let pulled = pull_json(
                backend,
                ("org/model", &serve.endpoint()),
                ca,
                client.path(),
                &[pull_flag],
            );
            assert!(
                pulled[counted].as_u64() >= pulled["fetched"].as_u64(),
                "{backend:?} {pull_flag}: {pulled}"
            );
            assert_same_files(
                &hub.repo.snapshot(client.path()),
                &hub.repo,
                &format!("{backend:?}: ferry pull {pull_flag} through the mirror"),
            );
            let sent = upstream_file_bytes(&hub);
            assert!(
                sent as f64 <= repo_bytes(&hub.repo) as f64 * 1.05,
                "{backend:?} {pull_flag}: {sent}"
            );
            eprintln!("ran on backend {backend:?}: ferry pull {pull_flag} from a cold mirror");
        }
    }
}

/// Where a reader waits is what the fill fetches next: over one connection at 4 MiB/s, a range
/// near the end of a cold 24 MiB file arrives long before the fill's front would get there.
#[test]
fn a_reader_far_ahead_of_the_fill_gets_its_bytes_fetched_next() {
    for backend in backends_under_test() {
        let hub = StaticHub::start_with(SPEC, |_| None, None);
        let cache = tempfile::tempdir().expect("cache");
        let serve = mirror(
            cache.path(),
            &hub.endpoint(),
            backend,
            &["--limit-rate", "4M", "--fill-connections", "1"],
        );
        let f = &hub.repo.files[0];
        let want = std::fs::read(&f.source).expect("source");
        let target = format!("/org/model/resolve/main/{}", f.path);
        let (a, b) = (20u64 << 20, (21u64 << 20) - 1);
        let (status, head, body) = serve.get_range(&target, &format!("bytes={a}-{b}"));
        assert_eq!(status, 206, "{backend:?}: {head}");
        assert!(
            body == want[a as usize..=b as usize],
            "{backend:?}: bytes differ"
        );
        // What the upstream had finished sending when the reader got its bytes: without the
        // reader's priority, the 20 MiB before them.
        let sent = upstream_file_bytes(&hub);
        eprintln!("{backend:?}: a range at 20 MiB came after the upstream sent {sent} bytes");
        assert!(
            sent <= 12 << 20,
            "{backend:?}: the range at 20 MiB waited for {sent} bytes before it"
        );
    }
}

/// `--max-size`: the blobs a mirror keeps stay under the bound, the least recently used going
/// first, and the order survives a restart without a scan of the cache. A blob an answer is
/// being sent from is pinned, and an evicted blob's snapshot link goes with it.
#[test]
fn max_size_evicts_the_least_recently_used_blobs_and_remembers_across_a_restart() {
    // Larger than what a socket holds in flight (4 MiB of send buffer at most here), so that a
    // client that reads nothing keeps its answer being sent.
    const M10: u64 = 10 << 20;
    const SHARDS: &[(&str, u64, bool)] = &[
        ("a.bin", M10, true),
        ("b.bin", M10, true),
        ("c.bin", M10, true),
        ("d.bin", M10, true),
    ];
    for backend in backends_under_test() {
        let hub = StaticHub::start_with(SHARDS, |_| None, None);
        let cache = tempfile::tempdir().expect("cache");
        let folder = hub.repo.cache_folder(cache.path());
        let blobs = folder.join("blobs");
        let snapshot = folder.join("snapshots").join(&hub.repo.commit);
        let kept = || -> Vec<String> {
            let mut names: Vec<String> = hub
                .repo
                .files
                .iter()
                .filter(|f| blobs.join(&f.etag).exists())
                .map(|f| f.path.clone())
                .collect();
            names.sort();
            // A snapshot lists exactly what the cache keeps: no link left dangling.
            let mut linked: Vec<String> = std::fs::read_dir(&snapshot)
                .map(|d| {
                    d.map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
                        .collect()
                })
                .unwrap_or_default();
            linked.sort();
            assert_eq!(linked, names, "{backend:?}: the snapshot's links");
            names
        };
        let fetch = |serve: &Serve, name: &str| {
            let f = hub.repo.file(name);
            let (status, head, body) = serve.get(&format!("/org/model/resolve/main/{name}"));
            assert_eq!(status, 200, "{backend:?}: {name}: {head}");
            assert!(
                body == std::fs::read(&f.source).expect("source"),
                "{backend:?}: {name} differs"
            );
        };
        let args = ["--max-size", "21M"];
        {
            let serve = mirror(cache.path(), &hub.endpoint(), backend, &args);
            fetch(&serve, "a.bin");
            fetch(&serve, "b.bin");
            assert_eq!(kept(), ["a.bin", "b.bin"], "{backend:?}");
            fetch(&serve, "c.bin");
            assert_eq!(kept(), ["b.bin", "c.bin"], "{backend:?}: a was the oldest");
            // a again: fetched again, and b, now the oldest, goes.
            fetch(&serve, "a.bin");
            assert_eq!(kept(), ["a.bin", "c.bin"], "{backend:?}");
            let m = scrape(&serve);
            assert_eq!(m["ferry_mirror_evictions_total"], 2.0, "{backend:?}");
            assert_eq!(
                m["ferry_mirror_cache_bytes"],
                (2 * M10) as f64,
                "{backend:?}"
            );
        }
        // Restarted: the index knows c is older than a.
        let serve = mirror(cache.path(), &hub.endpoint(), backend, &args);
        fetch(&serve, "d.bin");
        assert_eq!(kept(), ["a.bin", "d.bin"], "{backend:?}: after the restart");
        // A client reads a's answer no further than its head: a is pinned while it is sent.
        let mut slow = BufReader::new(super::limits::small_window_connect(serve.port));
        send(
            slow.get_mut(),
            "GET",
            "/org/model/resolve/main/a.bin",
            &[],
            true,
        );
        let mut status = String::new();
        slow.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{backend:?}: {status}");
        // d is used after a, so a is the least recently used when b comes in; pinned, it
        // stays, and d goes.
        fetch(&serve, "d.bin");
        fetch(&serve, "b.bin");
        assert_eq!(kept(), ["a.bin", "b.bin"], "{backend:?}: a was pinned");
        drop(slow);
        eprintln!(
            "{backend:?}: --max-size kept the two most recent blobs, across a restart, \
             skipping one being sent; evicted blobs' snapshot links went with them"
        );
    }
}

/// A gated repo: the mirror asks the upstream with each caller's own token, so a caller
/// without access gets the Hub's gated error even for a file the mirror has cached for a
/// caller with access; the mirror's own token fetches bytes and never opens a listing.
#[test]
fn a_caller_without_access_gets_the_gated_error_even_when_the_file_is_cached() {
    use ferry_testkit::nginx::GATED_TOKEN;
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let cache = tempfile::tempdir().expect("cache");
    let token_file = cache.path().join("upstream-token");
    std::fs::write(&token_file, GATED_TOKEN).expect("token file");
    let serve = mirror(
        &cache.path().join("hub"),
        &hub.gated_endpoint(),
        Backend::Portable,
        &["--upstream-token-file", token_file.to_str().expect("utf-8")],
    );
    let f = hub.repo.file("small.safetensors");
    let target = format!("/org/model/resolve/main/{}", f.path);
    let granted = format!("Authorization: Bearer {GATED_TOKEN}\r\n");
    let refused = |who: &str, headers: &str| {
        for t in [&target, "/api/models/org/model/revision/main"] {
            let (status, head, body) = get_on(serve.port, t, headers);
            assert_eq!(status, 403, "{who}: {t}: {head}");
            assert!(
                head.contains("x-error-code: gatedrepo"),
                "{who}: {t}: {head}"
            );
            assert!(
                body.len() < 1000,
                "{who}: {t}: a body of {} bytes",
                body.len()
            );
        }
    };
    refused("no token, cold", "");
    let (status, head, body) = get_on(serve.port, &target, &granted);
    assert_eq!(status, 200, "granted: {head}");
    assert!(
        body == std::fs::read(&f.source).expect("source"),
        "granted: differs"
    );
    // Cached now; still refused to those the upstream refuses.
    refused("no token, cached", "");
    refused(
        "another token, cached",
        "Authorization: Bearer hf_someone_else\r\n",
    );
    let (status, _, body) = get_on(serve.port, &target, &granted);
    assert_eq!(status, 200);
    assert!(body == std::fs::read(&f.source).expect("source"));
    // Listings went with the caller's credential or none; the mirror's token only fetched bytes.
    let api: Vec<_> = hub
        .nginx
        .requests(0)
        .into_iter()
        .filter(|r| r.uri.contains("/api/"))
        .collect();
    assert!(api.iter().any(|r| !r.authorized), "{api:?}");
    let fills = hub.resolves();
    assert!(fills >= 1 && hub.resolves_since(0).iter().all(|r| r.authorized));
    eprintln!(
        "gated: refused without access before and after caching; {} listing requests, {fills} fill requests",
        api.len()
    );
}

/// `ferry sign` and `--sign-key-file`: a signed link opens its one file until it expires, on a
/// mirror (even of a gated repo: the operator vouches, the mirror's token lists it) and on a
/// plain `ferry serve`; a wrong, tampered or expired link is refused, and so is a request
/// without one unless a mirror's caller has a token for the upstream to judge.
#[test]
fn signed_links_open_one_file_until_they_expire() {
    use ferry_testkit::nginx::GATED_TOKEN;
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("sign.key");
    std::fs::write(&key, "a-signing-key-only-this-test-knows\n").expect("key");
    let token_file = dir.path().join("upstream-token");
    std::fs::write(&token_file, GATED_TOKEN).expect("token file");
    let key_s = key.to_str().expect("utf-8");
    let serve = mirror(
        &dir.path().join("hub"),
        &hub.gated_endpoint(),
        Backend::Portable,
        &[
            "--upstream-token-file",
            token_file.to_str().expect("utf-8"),
            "--sign-key-file",
            key_s,
        ],
    );
    let sign = |url: &str, expires: &str| -> String {
        let o = std::process::Command::new(ferry_testkit::ferry_bin())
            .args(["sign", url, "--key-file", key_s, "--expires", expires])
            .output()
            .expect("ferry sign");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(o.stdout).expect("utf-8");
        assert!(!out.contains("a-signing-key"), "the key was printed");
        out.trim().to_owned()
    };
    let target_of = |url: &str| {
        url.splitn(4, '/')
            .nth(3)
            .map(|t| format!("/{t}"))
            .expect("path")
    };
    let f = hub.repo.file("with space.txt");
    let want = std::fs::read(&f.source).expect("source");
    let url = format!(
        "{}/org/model/resolve/main/with%20space.txt",
        serve.endpoint()
    );
    // No link, no token: refused.
    let (status, head, _) = serve.get(&target_of(&url));
    assert_eq!(status, 401, "{head}");
    // A link: the file, although the repo is gated and the caller has no token.
    let link = sign(&url, "1h");
    let (status, head, body) = serve.get(&target_of(&link));
    assert_eq!(status, 200, "{link}: {head}");
    assert!(body == want, "the signed file differs");
    // Tampered: another file with the same signature, or a later expiry.
    let other = target_of(&link).replace("with%20space.txt", "config.json");
    assert_eq!(serve.get(&other).0, 403, "another path");
    let later = target_of(&link).replace("expires=", "expires=9");
    assert_eq!(serve.get(&later).0, 403, "another expiry");
    // Expired (an expiry of 0 s is in the past by the time it is checked).
    let expired = sign(&url, "0");
    let (status, head, _) = serve.get(&target_of(&expired));
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("expired"), "{head}");
    // Without a link, a caller with a token is judged by the upstream.
    let granted = format!("Authorization: Bearer {GATED_TOKEN}\r\n");
    assert_eq!(get_on(serve.port, &target_of(&url), &granted).0, 200);
    let other_token = "Authorization: Bearer hf_someone_else\r\n";
    assert_eq!(get_on(serve.port, &target_of(&url), other_token).0, 403);
    drop(serve);

    // A plain `ferry serve` over the cache the mirror filled: links or nothing.
    let plain = Serve::start_with(
        &dir.path().join("hub"),
        None,
        None,
        &["--sign-key-file", key_s],
    );
    let url = format!(
        "{}/org/model/resolve/main/with%20space.txt",
        plain.endpoint()
    );
    assert_eq!(plain.get(&target_of(&url)).0, 401);
    assert_eq!(
        get_on(plain.port, &target_of(&url), &granted).0,
        401,
        "a token means nothing here"
    );
    let (status, _, body) = plain.get(&target_of(&sign(&url, "10m")));
    assert_eq!(status, 200);
    assert!(body == want);
    assert_eq!(plain.get(&target_of(&sign(&url, "0"))).0, 403);
    eprintln!(
        "signed links: served until expiry, tampered and expired ones refused, on a mirror and a plain serve"
    );
}

/// `--offline`: the mirror answers from its cache alone (refs, kept listings, blobs), with its
/// upstream unreachable; what it lacks is refused; a repo the upstream never listed to a caller
/// without a token (gated) is served offline only with `--offline-private`.
#[test]
fn an_offline_mirror_serves_its_cache_and_refuses_the_rest() {
    use ferry_testkit::nginx::GATED_TOKEN;
    let dead = "http://127.0.0.1:9";
    let get_file = |serve: &Serve, path: &str, headers: &str| {
        get_on(
            serve.port,
            &format!("/org/model/resolve/main/{path}"),
            headers,
        )
    };
    // A public repo, two files of it fetched while online.
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let cache = tempfile::tempdir().expect("cache");
    {
        let online = mirror(cache.path(), &hub.endpoint(), Backend::Portable, &[]);
        for path in ["config.json", "with%20space.txt"] {
            assert_eq!(get_file(&online, path, "").0, 200, "{path}");
        }
    }
    let asked_online = hub.nginx.requests(0).len();
    let offline = mirror(cache.path(), dead, Backend::Portable, &["--offline"]);
    let (status, head, body) = offline.get("/api/models/org/model/revision/main");
    assert_eq!(status, 200, "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["sha"], hub.repo.commit.as_str());
    for path in ["config.json", "with space.txt"] {
        let f = hub.repo.file(path);
        let (status, head, body) = get_file(&offline, &path.replace(' ', "%20"), "");
        assert_eq!(status, 200, "{path}: {head}");
        assert!(
            body == std::fs::read(&f.source).expect("source"),
            "{path} differs"
        );
    }
    let (status, head, _) = get_file(&offline, "model.safetensors", "");
    assert_eq!(status, 503, "not cached: {head}");
    assert!(head.contains("offline"), "{head}");
    assert_eq!(offline.get("/api/models/org/model/revision/nope").0, 404);
    assert_eq!(
        hub.nginx.requests(0).len(),
        asked_online,
        "the offline mirror asked the upstream"
    );
    drop(offline);

    // A gated repo cached for a caller with access.
    let gated = StaticHub::start_with(SPEC, |_| None, None);
    let cache = tempfile::tempdir().expect("cache");
    let token_file = cache.path().join("token");
    std::fs::write(&token_file, GATED_TOKEN).expect("token");
    let granted = format!("Authorization: Bearer {GATED_TOKEN}\r\n");
    {
        let online = mirror(
            &cache.path().join("hub"),
            &gated.gated_endpoint(),
            Backend::Portable,
            &["--upstream-token-file", token_file.to_str().expect("utf-8")],
        );
        assert_eq!(get_file(&online, "config.json", &granted).0, 200);
    }
    let offline = mirror(
        &cache.path().join("hub"),
        dead,
        Backend::Portable,
        &["--offline"],
    );
    for headers in ["", granted.as_str()] {
        let (status, head, _) = get_file(&offline, "config.json", headers);
        assert_eq!(status, 404, "a gated repo offline: {head}");
        assert!(head.contains("x-error-code: reponotfound"), "{head}");
    }
    drop(offline);
    let private = mirror(
        &cache.path().join("hub"),
        dead,
        Backend::Portable,
        &["--offline", "--offline-private"],
    );
    assert_eq!(
        get_file(&private, "config.json", "").0,
        200,
        "--offline-private"
    );
    eprintln!(
        "offline: cached files and listings served, the rest refused, gated repos only with --offline-private"
    );
}

/// An upstream that rate-limits: the caller gets 429 with `Retry-After`, and the whole mirror
/// backs off: the next callers are answered 429 without the upstream being asked again.
#[test]
fn a_rate_limited_upstream_makes_the_whole_mirror_back_off() {
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let cache = tempfile::tempdir().expect("cache");
    let serve = mirror(
        cache.path(),
        &hub.limited_endpoint(),
        Backend::Portable,
        &[],
    );
    let (status, head, _) = serve.get("/api/models/org/model/revision/main");
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("retry-after:"), "{head}");
    let asked = hub.nginx.requests(0).len();
    assert!(asked >= 1, "the upstream was not asked");
    for target in [
        "/api/models/org/model/revision/main",
        "/api/models/org/other/tree/main",
        "/org/model/resolve/main/config.json",
    ] {
        let (status, head, _) = serve.get(target);
        assert_eq!(status, 429, "{target}: {head}");
    }
    assert_eq!(
        hub.nginx.requests(0).len(),
        asked,
        "the upstream was asked again while the mirror backed off"
    );
    let m = scrape(&serve);
    assert!(m["ferry_mirror_upstream_errors_total{class=\"rate_limited\"}"] >= 4.0);
    eprintln!("rate-limited: {asked} upstream requests, then the mirror answered 429 itself");
}

/// An upstream that cuts its first bodies short, more often than one fetch retries: the fill
/// goes on from its journal before the reader is told, and the reader gets every byte right.
#[test]
fn a_fill_whose_upstream_keeps_cutting_bodies_resumes_before_its_reader_notices() {
    use ferry_testkit::hostile::{HostileOrigin, answer, request_path, response};
    use std::sync::atomic::{AtomicUsize, Ordering};
    const SIZE: usize = 3 << 20;
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4096) as u8).collect();
    let sha = sha256_hex(&data);
    let commit = "1234567890abcdef1234567890abcdef12345678";
    let cuts = std::sync::Arc::new(AtomicUsize::new(0));
    let (body, counted) = (data.clone(), std::sync::Arc::clone(&cuts));
    let tree = serde_json::json!([{
        "type": "file", "path": "f.bin", "size": SIZE, "oid": git_sha1(b"pointer"),
        "lfs": { "oid": sha, "size": SIZE, "pointerSize": 130 }
    }])
    .to_string();
    let revision = serde_json::json!({ "id": "org/cut", "sha": commit }).to_string();
    let origin = HostileOrigin::start(move |head| {
        let path = request_path(head);
        let json = [("Content-Type", "application/json".to_owned())];
        if path.starts_with("/api/models/org/cut/revision/") {
            return answer("200 OK", &json, revision.as_bytes());
        }
        if path.starts_with("/api/models/org/cut/tree/") {
            return answer("200 OK", &json, tree.as_bytes());
        }
        if !path.starts_with(&format!("/org/cut/resolve/{commit}/f.bin")) {
            return answer("404 Not Found", &[], b"");
        }
        let range = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("range: bytes=")
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "0-".into());
        let (a, b) = range.split_once('-').expect("a range");
        let a: usize = a.trim().parse().expect("start");
        let b: usize = b
            .trim()
            .parse()
            .map_or(SIZE - 1, |b: usize| b.min(SIZE - 1));
        let headers = [
            ("Content-Range", format!("bytes {a}-{b}/{SIZE}")),
            ("Content-Length", (b - a + 1).to_string()),
            ("Connection", "close".to_owned()),
        ];
        // The first 12 bodies end after 64 KiB: more than one fetch's 8 retries.
        let end = if counted.fetch_add(1, Ordering::SeqCst) < 12 {
            (a + (64 << 10)).min(b + 1)
        } else {
            b + 1
        };
        response("206 Partial Content", &headers, &body[a..end])
    });
    let cache = tempfile::tempdir().expect("cache");
    let serve = mirror(
        cache.path(),
        origin.url().trim_end_matches('/'),
        Backend::Portable,
        &[],
    );
    let (status, head, got) = serve.get("/org/cut/resolve/main/f.bin");
    assert_eq!(status, 200, "{head}");
    assert!(got == data, "the file differs ({} bytes)", got.len());
    let m = scrape(&serve);
    assert!(m["ferry_mirror_fill_resumes_total"] >= 1.0, "{m:?}");
    assert!(cuts.load(Ordering::SeqCst) > 12);
    eprintln!(
        "a fill resumed {} times after bodies were cut; the reader got every byte",
        m["ferry_mirror_fill_resumes_total"]
    );
}

/// `/refs` is the upstream's answer to the caller (here a plain `ferry serve` with a branch
/// and a pull request), and the mirror's revision answers agree with it.
#[test]
fn refs_come_from_the_upstream() {
    let tmp = cache_root();
    let upstream = Serve::start(&tmp.path().join("root"), None);
    let cache = tempfile::tempdir().expect("cache");
    let serve = mirror(cache.path(), &upstream.endpoint(), Backend::Portable, &[]);
    for target in [
        "/api/models/org/name/refs",
        "/api/models/org/name/refs?include_prs=1",
    ] {
        let (status, head, body) = serve.get(target);
        assert_eq!(status, 200, "{target}: {head}");
        let (_, _, want) = upstream.get(target);
        let got: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let want: serde_json::Value = serde_json::from_slice(&want).expect("json");
        assert_eq!(got, want, "{target}");
    }
    let (_, _, body) = serve.get("/api/models/org/name/revision/main");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["sha"], COMMIT);
    assert_eq!(serve.get("/api/models/org/missing/refs").0, 404);
}

/// Planted symlinks in the mirror's cache: a blob that is a link to a file outside is never
/// served as cached, and the fill replaces the link rather than writing through it; a `blobs`
/// folder that is a link out of the cache gets no byte written through it.
#[test]
fn planted_symlinks_in_the_cache_are_neither_served_nor_written_through() {
    use std::os::unix::fs::symlink;
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let f = hub.repo.file("config.json");
    let want = std::fs::read(&f.source).expect("source");
    let dir = tempfile::tempdir().expect("tmp");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    let decoy = outside.join("decoy");
    std::fs::write(&decoy, vec![b'X'; want.len()]).expect("decoy");

    // A blob planted as a link to a file of the right size outside the cache.
    let cache = dir.path().join("cache");
    let blobs = hub.repo.cache_folder(&cache).join("blobs");
    std::fs::create_dir_all(&blobs).expect("blobs");
    symlink(&decoy, blobs.join(&f.etag)).expect("symlink");
    let serve = mirror(&cache, &hub.endpoint(), Backend::Portable, &[]);
    let (status, head, body) = serve.get("/org/model/resolve/main/config.json");
    assert_eq!(status, 200, "{head}");
    assert!(body == want, "the decoy behind a planted link was served");
    assert_eq!(
        std::fs::read(&decoy).expect("decoy"),
        vec![b'X'; want.len()],
        "the fill wrote through the planted link"
    );
    let meta = std::fs::symlink_metadata(blobs.join(&f.etag)).expect("blob");
    assert!(meta.is_file(), "the verified blob did not replace the link");
    drop(serve);

    // A blobs folder that is a link out of the cache.
    let cache = dir.path().join("cache2");
    let repo_dir = hub.repo.cache_folder(&cache);
    std::fs::create_dir_all(&repo_dir).expect("repo dir");
    symlink(&outside, repo_dir.join("blobs")).expect("symlink");
    let serve = mirror(&cache, &hub.endpoint(), Backend::Portable, &[]);
    let (status, head, _) = serve.get("/org/model/resolve/main/config.json");
    assert!(
        status >= 500,
        "a fill through a linked blobs folder: {head}"
    );
    let mut names: Vec<_> = std::fs::read_dir(&outside)
        .expect("outside")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["decoy"], "something was written outside the cache");
    eprintln!("planted links: not served, replaced by the verified blob, never written through");
}
