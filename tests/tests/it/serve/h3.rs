//! `ferry serve --h3` (issue 30): HTTP/3 on the UDP port of the same number, with the same
//! certificate. Downloaded by ferry's own HTTP/3 client (`pull` and a ranged `get`) and by
//! ngtcp2's client (Debian's `gtlsclient`), byte for byte; the TCP answers advertise it in
//! `Alt-Svc`; `--h3` without a certificate is refused.

use super::*;

/// Mirror to mirror over QUIC: `ferry pull --http3` from `ferry serve --h3` gets every file
/// over HTTP/3, byte for byte, on both back-ends (the listing's requests are HTTP/1.1); a
/// ranged `ferry get --http3` of the LFS file has many streams on its connections.
#[test]
fn ferry_pulls_from_ferry_serve_over_http3() {
    let pki = TestPki::new();
    let tmp = cache_root();
    let serve = Serve::start_with(
        &tmp.path().join("root"),
        Some(3),
        Some(&pki.localhost),
        &["--h3"],
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
            &["--http3"],
        );
        assert!(
            pulled["http3"].as_u64() >= pulled["fetched"].as_u64(),
            "{pulled}"
        );
        assert_eq!(
            pulled["quic"]["fallback"],
            serde_json::Value::Null,
            "{pulled}"
        );
        assert!(
            pulled["quic"]["connections"].as_u64() >= Some(1),
            "{pulled}"
        );
        let snapshots = cache.path().join("models--org--name/snapshots");
        assert_snapshot(&snapshots.join(COMMIT), &model, "pull over HTTP/3");
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
            &["--http3", "--ca-file", ca, "--chunk-size", "1M", "-c", "2"],
        );
        assert!(report["http3"].as_u64() >= Some(3), "{report}");
        let want = model
            .iter()
            .find(|f| f.path == "model.safetensors")
            .expect("fixture");
        assert!(std::fs::read(&dest).expect("file") == want.bytes, "differs");
        eprintln!("ran on backend {backend:?}: ferry pull and get over HTTP/3 from ferry serve");
    }
}

/// ngtcp2's client (Debian's `gtlsclient`, GnuTLS), a QUIC stack ferry did not write, downloads
/// the LFS file and a JSON answer from `ferry serve --h3`, byte for byte.
#[test]
fn ngtcp2_downloads_from_ferry_serve_over_http3() {
    let Some(client) = ["/usr/bin/gtlsclient"]
        .iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("SKIP: ngtcp2's gtlsclient is not installed (scripts/setup.sh installs it)");
        return;
    };
    let pki = TestPki::new();
    let tmp = cache_root();
    let serve = Serve::start_with(
        &tmp.path().join("root"),
        Some(3),
        Some(&pki.localhost),
        &["--h3"],
    );
    let model = cache_model_files();
    let want = model
        .iter()
        .find(|f| f.path == "model.safetensors")
        .expect("fixture");
    let down = tempfile::tempdir().expect("download dir");
    let port = serve.port.to_string();
    let url = format!("https://localhost:{port}/org/name/resolve/main/model.safetensors");
    let o = std::process::Command::new(client)
        .args(["-q", "--exit-on-all-streams-close", "--timeout=20s"])
        .arg(format!("--download={}", down.path().display()))
        .args(["localhost", &port, &url])
        .output()
        .expect("run gtlsclient");
    assert!(
        o.status.success(),
        "gtlsclient: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = std::fs::read(down.path().join("model.safetensors")).expect("downloaded file");
    assert_eq!(got.len(), want.bytes.len(), "length");
    assert!(got == want.bytes, "gtlsclient's download differs");
    eprintln!(
        "ngtcp2's gtlsclient downloaded {} bytes over HTTP/3, byte-identical",
        got.len()
    );
}

/// Every TCP answer of `ferry serve --h3` carries `Alt-Svc: h3=":PORT"` (over HTTP/1.1 and
/// HTTP/2); without `--h3` none does; `--h3` without a certificate is refused with exit 2.
#[test]
fn tcp_answers_advertise_http3_and_h3_needs_a_certificate() {
    let pki = TestPki::new();
    let tmp = cache_root();
    let root = tmp.path().join("root");
    let h3 = Serve::start_with(&root, Some(3), Some(&pki.localhost), &["--h3", "--http2"]);
    let plain = Serve::start_with(&root, Some(3), Some(&pki.localhost), &[]);
    let head = |serve: &Serve, proto: &str| {
        let o = std::process::Command::new("curl")
            .args([proto, "-sS", "-I", "--cacert"])
            .arg(&pki.ca)
            .arg(format!("{}/api/models/org/name", serve.endpoint()))
            .output()
            .expect("run curl");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_ascii_lowercase()
    };
    for proto in ["--http1.1", "--http2"] {
        let got = head(&h3, proto);
        let want = format!("alt-svc: h3=\":{}\"; ma=86400", h3.port);
        assert!(got.contains(&want), "{proto}: {got}");
        assert!(!head(&plain, proto).contains("alt-svc"), "{proto}");
    }
    let refused = std::process::Command::new(ferry_testkit::ferry_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--h3", "--root"])
        .arg(&root)
        .output()
        .expect("run ferry serve");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--h3 needs --tls-cert"), "{stderr}");
}
