//! `ferry pull` end to end, on each back-end: a synthetic model repo served by a real nginx as a
//! static Hub (JSON files for the API, files for `resolve`), pulled into the huggingface_hub
//! cache and into a local dir, then loaded by the real `huggingface_hub` with no network (and a
//! tiny real GPT-2 by `transformers`, config, tokenizer and sharded weights). Also:
//! a second pull fetches nothing, a corrupted file never gets a name, hostile listings and
//! impossible sizes are refused before the first byte, filters, and the token never reaching a
//! host other than the endpoint's.
//!
//! Longer than most: every scenario pulls the same synthetic repo from the same static Hub, and
//! that shared set-up lives here once rather than in several files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_testkit::hub::StaticHub as Hub;
use ferry_testkit::hub::{MODEL, PULL_PARTIAL, Repo, repo_from_files, tree_json, write_static_hub};
use ferry_testkit::{
    Backend, Fault, FaultProxy, Nginx, assert_same_file, backends_under_test, ferry, ferry_command,
    pull_args, pull_into,
};

/// `ferry pull` of `org/model` into `cache` ([`pull_into`]), which must succeed: its JSON report.
fn pulled(
    backend: Backend,
    endpoint: &str,
    cache: &Path,
    extra: &[&str],
    what: &str,
) -> serde_json::Value {
    report(&pull_into(backend, endpoint, cache, extra), what)
}

/// `ferry pull org/model --endpoint ENDPOINT --local-dir LOCAL --json` on `backend`, which must
/// succeed: its JSON report.
fn pulled_local(backend: Backend, endpoint: &str, local: &Path, what: &str) -> serde_json::Value {
    let local = local.to_str().expect("utf-8");
    let args = ["pull", "org/model", "--endpoint", endpoint];
    let args = [&args[..], &["--local-dir", local, "--json"]].concat();
    report(&ferry(backend, &args), what)
}

fn report(o: &Output, what: &str) -> serde_json::Value {
    assert!(
        o.status.success(),
        "{what}: ferry pull failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

/// Asserts that run `o` exited with `code`; the failure names `what` and shows ferry's stderr,
/// which it returns for the checks that follow.
fn assert_exit(o: &Output, code: i32, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "{what}: {err}");
    err
}

/// Checks every file of the repo in the cache's snapshot, byte for byte.
fn assert_snapshot(cache: &Path, repo: &Repo, what: &str) {
    let snap = repo.snapshot(cache);
    for f in &repo.files {
        assert_same_file(
            &f.source,
            &snap.join(&f.path),
            &format!("{what} {}", f.path),
        );
    }
}

fn python(env: &[(&str, &str)], code: &str) -> Output {
    let mut c = Command::new("python3");
    c.arg("-c").arg(code);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env_remove("HF_TOKEN").output().expect("run python3")
}

#[test]
fn a_repo_lands_in_the_cache_verified_and_huggingface_hub_loads_it_offline() {
    let hub = Hub::start(|_| None);
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        eprintln!("pull into the cache on {what}");
        let cache = tempfile::tempdir().expect("tmp");
        let cache_s = cache.path().to_str().expect("utf-8");
        let before = hub.resolves();
        let r = pulled(backend, &hub.endpoint(), cache.path(), &[], &what);
        assert_eq!(r["backend"], backend.flag(), "{r}");
        assert_eq!(r["commit"], hub.repo.commit.as_str());
        assert_eq!(r["files"], MODEL.len());
        assert_eq!(r["fetched"], MODEL.len(), "every file fetched once: {r}");
        let resolves = hub.resolves_since(before);
        let mut asked: Vec<_> = resolves
            .iter()
            .map(|r| (r.uri.clone(), r.range.clone()))
            .collect();
        asked.sort();
        asked.dedup();
        assert_eq!(
            asked.len(),
            resolves.len(),
            "no range fetched twice: {resolves:?}"
        );
        for f in &hub.repo.files {
            let name = f.path.replace(' ', "%20");
            assert!(
                resolves.iter().any(|r| r.uri.ends_with(&name)),
                "{} fetched",
                f.path
            );
        }
        let snap = hub.repo.snapshot(cache.path());
        for f in &hub.repo.files {
            let link = snap.join(&f.path);
            let target = std::fs::read_link(&link).expect("a symlink");
            assert!(target.is_relative(), "{}: {}", f.path, target.display());
            assert!(target.ends_with(Path::new("blobs").join(&f.etag)));
            assert_same_file(&f.source, &link, &format!("{what} {}", f.path));
        }
        let refs = cache.path().join("models--org--model/refs/main");
        assert_eq!(std::fs::read_to_string(refs).expect("ref"), hub.repo.commit);

        // The real client finds everything with no network at all.
        let out = python(
            &[("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", cache_s)],
            "from huggingface_hub import snapshot_download, hf_hub_download\n\
             print(snapshot_download('org/model'))\n\
             print(hf_hub_download('org/model', 'tokenizer/tokenizer.json'))",
        );
        assert!(
            out.status.success(),
            "huggingface_hub offline: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        let mut lines = printed.lines();
        assert_eq!(lines.next().map(PathBuf::from), Some(snap.clone()));
        assert_eq!(
            lines.next().map(PathBuf::from),
            Some(snap.join("tokenizer/tokenizer.json"))
        );

        // A complete mirror: the second pull only lists.
        let before = hub.resolves();
        let r = pulled(backend, &hub.endpoint(), cache.path(), &[], &what);
        assert_eq!(
            (r["fetched"].as_u64(), r["reused"].as_u64()),
            (Some(0), Some(MODEL.len() as u64)),
            "{r}"
        );
        assert_eq!(hub.resolves(), before, "no file fetched again");
    }
}

#[test]
fn a_pull_over_https_verifies_the_endpoint_and_the_bytes() {
    let pki = ferry_testkit::tls::TestPki::new();
    let hub = Hub::start_with(MODEL, |_| None, Some(&pki.localhost));
    let ca = pki.ca.to_str().expect("utf-8");
    for backend in backends_under_test() {
        let what = format!("backend={backend:?} https");
        let cache = tempfile::tempdir().expect("tmp");
        // Without the private CA: refused, naming the host, before anything is written.
        let o = pull_into(backend, &hub.https_endpoint(), cache.path(), &[]);
        let err = assert_exit(&o, 3, &what);
        assert!(
            err.contains("TLS with localhost failed") && err.contains("trusted CA"),
            "{what}: {err}"
        );
        assert!(
            !cache.path().join("models--org--model").exists(),
            "{what}: nothing written"
        );
        let pull_https = || {
            pulled(
                backend,
                &hub.https_endpoint(),
                cache.path(),
                &["--ca-file", ca],
                &what,
            )
        };
        let r = pull_https();
        assert_eq!(r["backend"], backend.flag(), "{r}");
        assert_eq!(r["fetched"], MODEL.len(), "{r}");
        assert_snapshot(cache.path(), &hub.repo, &what);
        let r = pull_https();
        assert_eq!(r["fetched"], 0, "{what}: a second pull only lists: {r}");
        eprintln!("ran on backend {backend:?}: pull over https");
    }
}

#[test]
fn a_pull_to_a_dual_stack_name_races_past_a_silent_ipv6() {
    use ferry_testkit::eyeballs::{Blackhole, ferry_dual_stack};
    let hub = Hub::start(|_| None);
    let port = hub.nginx.port();
    // `localhost` is [::1] first, then 127.0.0.1 (nginx); [::1] drops every SYN. Both the API
    // client and the data plane race past it; a connect timeout of 10 minutes shows they did
    // not wait for it.
    let _hole = Blackhole::bind(std::net::SocketAddr::from((
        std::net::Ipv6Addr::LOCALHOST,
        port,
    )))
    .expect("bind [::1] at nginx's port");
    for backend in backends_under_test() {
        let what = format!("backend={backend:?} dual stack");
        let cache = tempfile::tempdir().expect("tmp");
        let cache_s = cache.path().to_str().expect("utf-8");
        let endpoint = format!("http://localhost:{port}/files");
        let args = [
            "-v",
            "pull",
            "org/model",
            "--endpoint",
            &endpoint,
            "--json",
            "--cache-dir",
            cache_s,
            "--connect-timeout",
            "600",
        ];
        let o = ferry_dual_stack(cache.path(), backend, &args);
        let r = report(&o, &what);
        assert_eq!(r["fetched"], MODEL.len(), "{what}: {r}");
        let log = String::from_utf8_lossy(&o.stderr);
        let won = format!("connected to 127.0.0.1:{port} (happy eyeballs; [::1]:{port}");
        assert!(log.contains(&won), "{what}: {log}");
        assert_snapshot(cache.path(), &hub.repo, &what);
        eprintln!("ran on backend {backend:?}: pull raced past a silent [::1]");
    }
}

#[test]
fn a_pull_with_a_mirror_spreads_the_bytes_and_survives_a_dead_endpoint() {
    let hub = Hub::start(|_| None);
    // The mirror: the same Hub behind a port of its own.
    let front = FaultProxy::start(hub.nginx.port(), Fault::None);
    let mirror = format!("http://127.0.0.1:{}/files", front.port());
    let dead = format!("http://127.0.0.1:{}/files", ferry_testkit::free_port());
    for backend in backends_under_test() {
        let what = format!("backend={backend:?} mirror");
        // Both up: every byte from one of them, the summary says which.
        let cache = tempfile::tempdir().expect("tmp");
        let r = pulled(
            backend,
            &hub.endpoint(),
            cache.path(),
            &["--mirror", &mirror, "-c", "4"],
            &what,
        );
        assert_snapshot(cache.path(), &hub.repo, &what);
        let s = ferry_testkit::endpoints_served(&r);
        assert_eq!(s.len(), 2, "{what}: {r}");
        assert_eq!(
            s[0].1 + s[1].1,
            r["bytes_fetched"].as_u64().expect("bytes"),
            "{what}: {r}"
        );
        // `-c 4` is a fixed count, and the report says so.
        assert_eq!(r["connections_open"], 4, "{what}: {r}");
        // The endpoint dead: the listing and every byte from the mirror, and the token, meant
        // for the endpoint, never sent to the mirror.
        let seen = hub.nginx.requests(0).len();
        let cache = tempfile::tempdir().expect("tmp");
        let r = pulled(
            backend,
            &dead,
            cache.path(),
            &["--mirror", &mirror, "--token", "hf_secret"],
            &what,
        );
        assert_snapshot(cache.path(), &hub.repo, &what);
        // By default a job starts with 16; a repo this small ends before a step could pay.
        assert_eq!(r["connections_open"], 16, "{what}: {r}");
        let s = ferry_testkit::endpoints_served(&r);
        assert_eq!(
            s[1].1,
            r["bytes_fetched"].as_u64().expect("bytes"),
            "{what}: {r}"
        );
        let requests = hub.nginx.requests(seen + 1);
        assert!(
            requests[seen..].iter().all(|q| !q.authorized),
            "{what}: no token to the mirror: {requests:?}"
        );
        eprintln!("ran on backend {backend:?}: pull with a mirror, served by {s:?}");
    }
}

#[test]
fn a_local_dir_gets_plain_files_and_huggingface_hub_metadata() {
    let hub = Hub::start(|_| None);
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        eprintln!("pull into a local dir on {what}");
        let dir = tempfile::tempdir().expect("tmp");
        let local = dir.path().join("model");
        pulled_local(backend, &hub.endpoint(), &local, &what);
        for f in &hub.repo.files {
            assert_same_file(&f.source, &local.join(&f.path), &what);
            let meta = std::fs::read_to_string(
                local
                    .join(".cache/huggingface/download")
                    .join(format!("{}.metadata", f.path)),
            )
            .expect("metadata");
            let lines: Vec<&str> = meta.lines().collect();
            assert_eq!(
                lines[..2],
                [hub.repo.commit.as_str(), f.etag.as_str()],
                "{}",
                f.path
            );
        }
        let r = pulled_local(backend, &hub.endpoint(), &local, &what);
        assert_eq!(r["fetched"], 0, "second pull reuses every file: {r}");
    }
}

#[test]
fn a_corrupted_file_never_gets_a_name_and_the_next_pull_fetches_only_it() {
    let hub = Hub::start(|_| None);
    let victim = hub.repo.file("model-00002-of-00002.safetensors");
    let served = hub
        .root
        .join("org/model/resolve")
        .join(&hub.repo.commit)
        .join(&victim.path);
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        eprintln!("corrupted file on {what}");
        let mut bytes = std::fs::read(&victim.source).expect("source");
        bytes[12345] ^= 0x01; // same size, one bit wrong: only a hash sees it
        std::fs::write(&served, &bytes).expect("corrupt");
        let cache = tempfile::tempdir().expect("tmp");
        let o = pull_into(backend, &hub.endpoint(), cache.path(), &[]);
        let err = assert_exit(&o, 3, &what);
        assert!(err.contains("sha256 mismatch"), "{what}: {err}");
        let blob = cache
            .path()
            .join("models--org--model/blobs")
            .join(&victim.etag);
        assert!(!blob.exists(), "a corrupt blob must not be named");
        assert!(!Path::new(&format!("{}{PULL_PARTIAL}", blob.display())).exists());
        let snap = hub.repo.snapshot(cache.path());
        assert!(std::fs::symlink_metadata(snap.join(&victim.path)).is_err());
        assert_same_file(
            &hub.repo.files[0].source,
            &snap.join(&hub.repo.files[0].path),
            &what,
        );

        std::fs::copy(&victim.source, &served).expect("repair");
        let r = pulled(backend, &hub.endpoint(), cache.path(), &[], &what);
        assert_eq!(r["fetched"], 1, "only the missing file: {r}");
        assert_same_file(&victim.source, &snap.join(&victim.path), &what);
    }
}

/// A file already in place is reused only when its bytes are right: one ferry verified (its
/// mark names the digest and it was not modified since) is trusted as it is; one another tool
/// wrote (no mark) is hashed, then reused; one changed in place since ferry verified it is
/// fetched again.
#[test]
fn files_in_place_are_reused_only_when_their_bytes_are_right() {
    let hub = Hub::start(|_| None);
    let file = |name: &str| hub.repo.file(name);
    let (changed, foreign) = (
        file("model-00001-of-00002.safetensors"),
        file("tokenizer/tokenizer.json"),
    );
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        eprintln!("files in place on {what}");
        let cache = tempfile::tempdir().expect("tmp");
        pulled(backend, &hub.endpoint(), cache.path(), &[], &what);
        let blobs = cache.path().join("models--org--model/blobs");
        // Changed in place: same size, one bit off, so only a hash can tell.
        let mut bytes = std::fs::read(&changed.source).expect("source");
        bytes[4096] ^= 0x10;
        std::fs::write(blobs.join(&changed.etag), &bytes).expect("change in place");
        // Replaced by a right copy another tool made (no mark).
        let tmp = blobs.join("copy.tmp");
        std::fs::copy(&foreign.source, &tmp).expect("copy");
        std::fs::rename(&tmp, blobs.join(&foreign.etag)).expect("rename");
        let before = hub.resolves();
        let r = pulled(backend, &hub.endpoint(), cache.path(), &[], &what);
        assert_eq!(r["fetched"], 1, "only the changed file: {r}");
        let fetched: Vec<String> = hub
            .resolves_since(before)
            .into_iter()
            .map(|q| q.uri)
            .collect();
        assert!(
            !fetched.is_empty() && fetched.iter().all(|u| u.ends_with(&changed.path)),
            "{fetched:?}"
        );
        assert_snapshot(cache.path(), &hub.repo, &what);
        // Both are verified now: a third pull lists and reads nothing.
        let r = pulled(backend, &hub.endpoint(), cache.path(), &[], &what);
        assert_eq!(r["fetched"], 0, "{r}");
    }
}

#[test]
fn hostile_listings_are_refused_before_anything_is_written() {
    for (name, hostile) in [
        ("dot-dot", "../escape.txt"),
        ("absolute", "/tmp/escape.txt"),
        ("backslash", "a\\..\\escape.txt"),
        ("control character", "bad\u{1}name"),
    ] {
        let hub = Hub::start(|repo| {
            let mut tree = tree_json(&repo.files);
            tree[0]["path"] = hostile.into();
            tree[0]["type"] = "file".into();
            tree[0]["size"] = 10.into();
            Some(tree)
        });
        let dir = tempfile::tempdir().expect("tmp");
        let cache = dir.path().join("cache");
        let o = pull_into(Backend::Portable, &hub.endpoint(), &cache, &[]);
        let err = assert_exit(&o, 13, name);
        assert!(err.contains("refusing"), "{name}: {err}");
        assert!(!dir.path().join("escape.txt").exists());
        assert!(
            !cache.join("models--org--model/blobs").exists(),
            "{name}: nothing written"
        );
        assert_eq!(hub.resolves(), 0, "{name}: no byte fetched");
    }
    // A file and a directory of the same name.
    let hub = Hub::start(|repo| {
        let mut tree = tree_json(&repo.files);
        let mut clash = tree[tree.as_array().map_or(0, Vec::len) - 1].clone();
        clash["path"] = "config.json/x".into();
        tree.as_array_mut().expect("array").push(clash);
        Some(tree)
    });
    let cache = tempfile::tempdir().expect("tmp");
    let o = pull_into(Backend::Portable, &hub.endpoint(), cache.path(), &[]);
    assert_exit(&o, 13, "a file and a directory of the same name");
}

#[test]
fn too_little_disk_space_is_refused_up_front_with_need_and_have() {
    let hub = Hub::start(|repo| {
        let mut tree = tree_json(&repo.files);
        for e in tree.as_array_mut().expect("array") {
            if e.get("lfs").is_some() {
                e["lfs"]["size"] = (1u64 << 60).into();
                e["size"] = (1u64 << 60).into();
            }
        }
        Some(tree)
    });
    let cache = tempfile::tempdir().expect("tmp");
    let o = pull_into(Backend::Portable, &hub.endpoint(), cache.path(), &[]);
    let err = assert_exit(&o, 12, "shards of 1 EiB");
    assert!(err.contains("need ") && err.contains("have "), "{err}");
    assert_eq!(hub.resolves(), 0, "checked before the first byte");
}

#[test]
fn include_and_exclude_choose_files_like_huggingface_hub() {
    let hub = Hub::start(|_| None);
    for backend in backends_under_test() {
        eprintln!("filters on backend={backend:?}");
        let cache = tempfile::tempdir().expect("tmp");
        let r = pulled(
            backend,
            &hub.endpoint(),
            cache.path(),
            &[
                "--include",
                "*.json",
                "--include",
                "tokenizer/",
                "--exclude",
                "*special*",
            ],
            "filters",
        );
        assert_eq!(r["files"], 2, "{r}");
        let snap = hub.repo.snapshot(cache.path());
        assert!(snap.join("config.json").exists());
        assert!(snap.join("tokenizer/tokenizer.json").exists());
        assert!(!snap.join("tokenizer/special tokens.txt").exists());
        assert!(!snap.join("one.bin").exists());
    }
}

#[test]
fn missing_repos_and_unsupported_endpoints_have_their_own_exit_codes() {
    let hub = Hub::start(|_| None);
    let cache = tempfile::tempdir().expect("tmp");
    let cache_s = cache.path().to_str().expect("utf-8");
    let o = ferry(
        Backend::Portable,
        &[
            "pull",
            "org/nothing-here",
            "--endpoint",
            &hub.endpoint(),
            "--cache-dir",
            cache_s,
        ],
    );
    let err = assert_exit(&o, 6, "org/nothing-here");
    assert!(
        err.contains("not found") && err.contains("HF_TOKEN"),
        "{err}"
    );
    for (args, code) in [
        (vec!["pull", "../x", "--cache-dir", cache_s], 2),
        (
            vec![
                "pull",
                "org/model",
                "--endpoint",
                "ftp://127.0.0.1:1",
                "--cache-dir",
                cache_s,
            ],
            2,
        ),
        (
            vec![
                "pull",
                "org/model",
                "--repo-type",
                "bucket",
                "--cache-dir",
                cache_s,
            ],
            2,
        ),
    ] {
        let o = ferry(Backend::Portable, &args);
        assert_exit(&o, code, &format!("{args:?}"));
    }
}

#[test]
fn the_token_reaches_the_endpoint_and_never_the_host_it_redirects_to() {
    // The endpoint is a proxy in front of nginx; nginx redirects every request to its own port,
    // another origin (as the Hub redirects large files to a CDN).
    let hub = Hub::start(|_| None);
    let proxy = FaultProxy::start(hub.nginx.port(), Fault::None);
    let endpoint = format!("http://127.0.0.1:{}/redirect", proxy.port());
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        let cache = tempfile::tempdir().expect("tmp");
        let o = ferry_command(backend)
            .args(pull_args(&endpoint, cache.path(), &[]))
            .env("HF_TOKEN", "hf_secret_test_token")
            .output()
            .expect("run ferry");
        report(&o, &what);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !all.contains("hf_secret_test_token"),
            "the token is never printed"
        );
        let reqs = hub.nginx.requests(0);
        let via_endpoint: Vec<_> = reqs
            .iter()
            .filter(|r| r.uri.starts_with("/redirect/"))
            .collect();
        let direct: Vec<_> = reqs
            .iter()
            .filter(|r| r.uri.starts_with("/files/"))
            .collect();
        assert!(
            !via_endpoint.is_empty() && via_endpoint.iter().all(|r| r.authorized),
            "{what}: the endpoint gets the token"
        );
        assert!(
            direct.iter().any(|r| r.uri.contains("/resolve/")),
            "{what}: bytes came from the redirect target"
        );
        assert!(
            direct.iter().all(|r| !r.authorized),
            "{what}: the redirect target never gets the token"
        );
    }
}

#[test]
fn files_failing_with_a_server_error_are_fetched_again() {
    let hub = Hub::start(|_| None);
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        eprintln!("503 bursts on {what}");
        let proxy = FaultProxy::start(
            hub.nginx.port(),
            Fault::Refuse {
                uri_contains: "/resolve/",
                times: 3,
                status: 503,
                retry_after: 0,
            },
        );
        let endpoint = format!("http://127.0.0.1:{}/files", proxy.port());
        let cache = tempfile::tempdir().expect("tmp");
        pulled(backend, &endpoint, cache.path(), &[], &what);
        assert!(proxy.refused.load(std::sync::atomic::Ordering::SeqCst) >= 3);
        assert_snapshot(cache.path(), &hub.repo, &what);
    }
}

#[test]
fn a_mirror_pulled_by_ferry_is_served_by_ferry_and_pulled_again_byte_for_byte() {
    let hub = Hub::start(|_| None);
    let first = tempfile::tempdir().expect("tmp");
    pulled(
        Backend::Portable,
        &hub.endpoint(),
        first.path(),
        &[],
        "first pull",
    );
    let serve = ferry_testkit::serve::Serve::start(first.path(), None);
    let endpoint = serve.endpoint();
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}, from ferry serve");
        eprintln!("{what}");
        let second = tempfile::tempdir().expect("tmp");
        let second_s = second.path().to_str().expect("utf-8");
        let r = pulled(backend, &endpoint, second.path(), &[], &what);
        assert_eq!(r["commit"], hub.repo.commit.as_str());
        assert_snapshot(second.path(), &hub.repo, &what);
        let o = pull_into(backend, &endpoint, second.path(), &["--revision", "v9"]);
        assert_exit(&o, 7, &format!("{what} --revision v9"));
        let o = ferry(
            backend,
            &[
                "pull",
                "org/other",
                "--endpoint",
                &endpoint,
                "--cache-dir",
                second_s,
            ],
        );
        assert_exit(&o, 6, &format!("{what} org/other"));
    }
}

/// A tiny real GPT-2 (config, fast tokenizer, two safetensors shards and their index, made by
/// `tests/fixtures/tiny_gpt2.py`) pulled into the cache, then loaded by `transformers` with
/// `HF_HUB_OFFLINE=1`: its config and tokenizer through the Auto classes, each weight shard
/// through the index as transformers resolves it, every tensor equal to the original. (Not the
/// model itself: that needs torch, which the test machines do not install.)
#[test]
fn transformers_loads_a_pulled_model_with_no_network() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny_gpt2.py");
    let made = Command::new("python3")
        .arg(&script)
        .arg(&src)
        .output()
        .expect("run python3");
    assert!(
        made.status.success(),
        "tiny_gpt2.py (needs transformers, tokenizers, safetensors, numpy: scripts/setup.sh): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let names = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let files: Vec<(&str, PathBuf, bool)> = names
        .iter()
        .map(|n| (*n, src.join(n), n.ends_with(".safetensors")))
        .collect();
    let repo = repo_from_files("org/tiny", &files);
    let root = dir.path().join("hub");
    write_static_hub(&root, &repo, None);
    let nginx = Nginx::start(&root);
    let endpoint = format!("http://127.0.0.1:{}/files", nginx.port());
    for backend in backends_under_test() {
        eprintln!("transformers loads a pull made on backend={backend:?}");
        let cache = tempfile::tempdir().expect("tmp");
        let cache_s = cache.path().to_str().expect("utf-8");
        let out = ferry(
            backend,
            &[
                "pull",
                "org/tiny",
                "--endpoint",
                &endpoint,
                "--cache-dir",
                cache_s,
                "--json",
            ],
        );
        let r = report(&out, &format!("{backend:?}"));
        assert_eq!(r["files"], names.len(), "{r}");
        let src_s = src.to_str().expect("utf-8");
        let loaded = python(
            &[
                ("HF_HUB_OFFLINE", "1"),
                ("TRANSFORMERS_OFFLINE", "1"),
                ("HF_HUB_CACHE", cache_s),
                ("HF_ENDPOINT", "http://127.0.0.1:9"),
            ],
            &format!(
                "import json, numpy as np\n\
                 from safetensors.numpy import load_file\n\
                 from transformers import AutoConfig, AutoTokenizer\n\
                 from transformers.utils import cached_file\n\
                 cfg = AutoConfig.from_pretrained('org/tiny')\n\
                 assert (cfg.model_type, cfg.n_layer, cfg.n_embd) == ('gpt2', 1, 8), cfg\n\
                 tok = AutoTokenizer.from_pretrained('org/tiny')\n\
                 ids = tok('hello ferry world')['input_ids']\n\
                 assert ids == [1, 2, 3], ids\n\
                 index = json.load(open(cached_file('org/tiny', 'model.safetensors.index.json')))\n\
                 shards = sorted(set(index['weight_map'].values()))\n\
                 assert len(shards) == 2, shards\n\
                 n = 0\n\
                 for shard in shards:\n\
                 \x20   got, want = load_file(cached_file('org/tiny', shard)), load_file('{src_s}/' + shard)\n\
                 \x20   assert got.keys() == want.keys()\n\
                 \x20   for k in want:\n\
                 \x20       assert np.array_equal(got[k], want[k]), k\n\
                 \x20       n += 1\n\
                 print('loaded', n, 'tensors')\n"
            ),
        );
        assert!(
            loaded.status.success(),
            "transformers offline on {backend:?}: {}",
            String::from_utf8_lossy(&loaded.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&loaded.stdout).trim(),
            "loaded 4 tensors"
        );
    }
}
