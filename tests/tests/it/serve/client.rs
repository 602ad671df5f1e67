//! The stock `huggingface_hub` client against `ferry serve`: whole snapshots and single files,
//! from the cache layout and the local-dir layout, over HTTP and HTTPS, read back offline and
//! compared byte for byte. Skipped (with a line on stderr) where the client is not installed.

use super::*;

fn job(op: &str, repo: &str, kind: &str, revision: &str, file: &str) -> serde_json::Value {
    serde_json::json!({ "op": op, "repo": repo, "type": kind, "revision": revision, "file": file })
}

/// snapshot_download + hf_hub_download of a model and a dataset, then the same offline; over
/// HTTPS with a certificate from `pki` when given, `ferry serve` started with `serve_extra`.
fn client_round_trip(
    root: &Path,
    model: &[FixtureFile],
    label: &str,
    pki: Option<&TestPki>,
    serve_extra: &[&str],
) {
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
            Some(pki) => Serve::start_with(root, Some(3), Some(&pki.localhost), serve_extra),
            None => Serve::start_with(root, None, None, serve_extra),
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
        &[],
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
        &[],
    );
}

/// Over HTTPS, and from a `ferry serve --http2`, which offers `h2` then `http/1.1`: the stock
/// client (which offers only HTTP/1.1) is served the same.
#[test]
fn huggingface_hub_downloads_over_https() {
    if !have_hf_client() {
        return;
    }
    let pki = TestPki::new();
    let tmp = cache_root();
    for (serve_extra, label) in [
        (&[][..], "https, cache layout"),
        (&["--http2"][..], "https with --http2, cache layout"),
    ] {
        client_round_trip(
            &tmp.path().join("root"),
            &cache_model_files(),
            label,
            Some(&pki),
            serve_extra,
        );
    }
}

/// Mirror to mirror: `ferry pull --http2` from `ferry serve --http2` gets every file over
/// HTTP/2 streams, byte for byte, on both back-ends; a ranged `ferry get` of the LFS file
/// says its answers came over HTTP/2.
#[test]
fn ferry_pulls_from_ferry_serve_over_http2() {
    let pki = TestPki::new();
    let tmp = cache_root();
    let serve = Serve::start_with(
        &tmp.path().join("root"),
        Some(3),
        Some(&pki.localhost),
        &["--http2"],
    );
    let ca = pki.ca.to_str().expect("utf-8");
    let model = cache_model_files();
    for backend in ferry_testkit::backends_under_test() {
        let cache = tempfile::tempdir().expect("cache");
        let pulled = pull_json(
            backend,
            ("org/name", &serve.endpoint()),
            ca,
            cache.path(),
            &["--http2"],
        );
        // The files' answers came over HTTP/2: at least as many as files fetched.
        assert!(
            pulled["http2"].as_u64() >= pulled["fetched"].as_u64(),
            "{pulled}"
        );
        let snapshots = cache.path().join("models--org--name/snapshots");
        assert_snapshot(&snapshots.join(COMMIT), &model, "pull over HTTP/2");
        let out = tempfile::tempdir().expect("out");
        let dest = out.path().join("model.safetensors");
        let url = format!(
            "{}/org/name/resolve/main/model.safetensors",
            serve.endpoint()
        );
        let report = ferry_testkit::get_ok(
            backend,
            &url,
            &dest,
            &["--http2", "--ca-file", ca, "--chunk-size", "1M", "-c", "2"],
        );
        assert!(report["http2"].as_u64() >= Some(3), "{report}");
        let want = model
            .iter()
            .find(|f| f.path == "model.safetensors")
            .expect("fixture");
        assert!(std::fs::read(&dest).expect("file") == want.bytes, "differs");
        eprintln!("ran on backend {backend:?}: ferry pull and get over HTTP/2 from ferry serve");
    }
}

/// A client that stops reading an HTTP/2 body (its window shut after 1000 bytes) has the
/// stream reset after the send timeout, and its connection, idle then, is closed after the
/// idle timeout; one that never finishes a POST body has the stream reset after the head
/// timeout: none holds the server's thread for ever.
#[test]
fn a_stingy_http2_client_is_cut_off() {
    use ferry_testkit::h2client::stingy_get;
    let pki = TestPki::new();
    let tmp = cache_root();
    let serve = Serve::start_with(
        &tmp.path().join("root"),
        Some(3),
        Some(&pki.localhost),
        &[
            "--http2",
            "--send-timeout",
            "1",
            "--idle-timeout",
            "1",
            "--head-timeout",
            "1",
        ],
    );
    let port = serve
        .endpoint()
        .rsplit_once(':')
        .expect("port")
        .1
        .to_owned();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let got = stingy_get(
        addr,
        &pki.ca,
        "/org/name/resolve/main/model.safetensors",
        1000,
        Duration::from_secs(60),
    );
    assert_eq!(got.status, 200, "{got:?}");
    assert!(got.got <= 1000, "past the window: {got:?}");
    assert_eq!(got.reset.as_deref(), Some("CANCEL"), "{got:?}");
    assert!(got.closed, "the idle connection stayed open: {got:?}");
    // A POST whose body never comes is reset after the head timeout.
    let ended = ferry_testkit::h2client::unfinished_post(
        addr,
        &pki.ca,
        "/api/models/org/name/paths-info/main",
        Duration::from_secs(60),
    );
    assert_eq!(ended.as_deref(), Some("CANCEL"), "an unfinished POST body");
    Trial::once(
        (
            "HTTP/2 client that shuts its window (server side)",
            "serve::client::a_stingy_http2_client_is_cut_off",
        ),
        None,
        "stream reset after the send timeout, connection closed when idle; an unfinished POST \
         body reset after the head timeout",
        record::Damage::default(),
    )
    .record();
}

/// Runs `curl --http2 ARGS` (curl on nghttp2, a client ferry did not write) and returns what
/// it wrote (with `-w` last) and whether it succeeded.
fn curl_h2(ca: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new("curl")
        .args(["--http2", "-sS", "--cacert"])
        .arg(ca)
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        o.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// curl (nghttp2) against `ferry serve --http2`: the API, a HEAD, a range, a POST and a 404 all
/// over HTTP/2, each answered as over HTTP/1.1.
#[test]
fn curl_speaks_http2_to_ferry_serve() {
    let pki = TestPki::new();
    let tmp = cache_root();
    let serve = Serve::start_with(
        &tmp.path().join("root"),
        Some(3),
        Some(&pki.localhost),
        &["--http2"],
    );
    let base = serve.endpoint();
    let ca = pki.ca.as_path();
    let w = ["-w", "\n%{http_version} %{http_code}"];
    let api = curl_h2(
        ca,
        &[&[&*format!("{base}/api/models/org/name")][..], &w].concat(),
    );
    assert!(api.ends_with("\n2 200"), "{api}");
    assert!(api.contains(COMMIT), "{api}");
    let file = format!("{base}/org/name/resolve/main/model.safetensors");
    let head = curl_h2(ca, &[&["-I", &*file][..], &w].concat());
    assert!(head.ends_with("\n2 200"), "{head}");
    assert!(head.contains("x-repo-commit: "), "{head}");
    assert!(head.contains("content-length: 3145728"), "{head}");
    let range = curl_h2(
        ca,
        &[
            &["-r", "100-199", "-D", "-", "-o", "/dev/null", &*file][..],
            &w,
        ]
        .concat(),
    );
    assert!(range.ends_with("\n2 206"), "{range}");
    assert!(
        range.contains("content-range: bytes 100-199/3145728"),
        "{range}"
    );
    let info = curl_h2(
        ca,
        &[
            &[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data",
                r#"{"paths": ["config.json"]}"#,
                &*format!("{base}/api/models/org/name/paths-info/main"),
            ][..],
            &w,
        ]
        .concat(),
    );
    assert!(info.ends_with("\n2 200"), "{info}");
    assert!(info.contains("\"path\":\"config.json\""), "{info}");
    let missing = curl_h2(
        ca,
        &[
            &[&*format!("{base}/org/name/resolve/main/nope.bin")][..],
            &w,
        ]
        .concat(),
    );
    assert!(missing.ends_with("\n2 404"), "{missing}");
}
