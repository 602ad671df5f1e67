//! HTTPS end to end against a real nginx with certificates from a CA the test makes: byte
//! identity on every back-end and sink, a private CA given by `--ca-file` or `SSL_CERT_FILE`,
//! certificate failures that name the host and never fall back to an unverified connection,
//! a redirect from http:// to https://, and a byte corrupted in flight under TLS, which costs
//! one range, not the file.

use std::path::Path;

use ferry_testkit::record::{self, Trial};
use ferry_testkit::tls::TestPki;
use ferry_testkit::{
    Backend, Fault, FaultProxy, Nginx, assert_no_output, assert_same_file, backends_under_test,
    ferry_bin, get_ok, get_ok_sink, modes_under_test, sha256_file, write_data,
};

const SIZES: [u64; 6] = [0, 1, 4095, 4096, 4097, 5 * (1 << 20) + 12_347];

fn ca_args(pki: &TestPki) -> Vec<String> {
    vec!["--ca-file".into(), pki.ca.display().to_string()]
}

#[test]
fn https_downloads_are_byte_identical_on_every_back_end_and_sink() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    for (i, size) in SIZES.iter().enumerate() {
        write_data(&src.path().join(format!("f{size}")), *size, 40 + i as u64);
    }
    let nginx = Nginx::start_tls(src.path(), &pki.localhost);
    let ca = ca_args(&pki);
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        for size in SIZES {
            let name = format!("f{size}");
            let source = src.path().join(&name);
            let dest = out.path().join(&name);
            let sha = sha256_file(&source);
            // Small ranges, several connections: many TLS sessions and reads across records.
            let mut extra: Vec<&str> = ca.iter().map(String::as_str).collect();
            extra.extend(["--sha256", &sha, "-c", "4", "--chunk-size", "1M"]);
            let url = nginx.https_url("localhost", "files", &name);
            let report = get_ok_sink(mode, &url, &dest, &extra);
            assert_eq!(report["bytes"], size, "mode={mode:?}: {report}");
            assert_same_file(&source, &dest, &format!("https mode={mode:?} size={size}"));
        }
        eprintln!("ran on backend, sink = {mode:?}: https sizes {SIZES:?}");
    }
}

/// Runs `ferry get URL -o OUT` with `envs`, returning (exit code, stderr).
fn get_with_env(
    backend: Backend,
    url: &str,
    out: &Path,
    extra: &[&str],
    envs: &[(&str, &Path)],
) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(ferry_bin());
    cmd.args(["--backend", backend.flag(), "get", url, "-o"])
        .arg(out)
        .args(["--quiet"])
        .args(extra)
        .env_remove("FERRY_SAFE_MODE")
        .env_remove("SSL_CERT_FILE")
        .env_remove("REQUESTS_CA_BUNDLE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run ferry");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_private_ca_is_trusted_from_the_environment() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 300_000, 7);
    let nginx = Nginx::start_tls(src.path(), &pki.localhost);
    let url = nginx.https_url("localhost", "files", "f");
    for backend in backends_under_test() {
        for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"] {
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let (code, stderr) = get_with_env(backend, &url, &dest, &[], &[(var, &pki.ca)]);
            assert_eq!(code, Some(0), "backend={backend:?} {var}: {stderr}");
            assert_same_file(&src.path().join("f"), &dest, var);
        }
        eprintln!("ran on backend {backend:?}: CA from SSL_CERT_FILE and REQUESTS_CA_BUNDLE");
    }
}

#[test]
fn certificate_failures_name_the_host_and_send_nothing() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 100_000, 8);
    let good = Nginx::start_tls(src.path(), &pki.localhost);
    let expired = Nginx::start_tls(src.path(), &pki.expired);
    let ca = pki.ca.display().to_string();
    let cases: [(&str, String, Vec<&str>, &str); 3] = [
        (
            "unknown CA",
            good.https_url("localhost", "files", "f"),
            vec![],
            "not signed by a trusted CA",
        ),
        (
            "wrong name",
            good.https_url("127.0.0.1", "files", "f"),
            vec!["--ca-file", &ca],
            "not valid for the name \"127.0.0.1\"",
        ),
        (
            "expired",
            expired.https_url("localhost", "files", "f"),
            vec!["--ca-file", &ca],
            "expired",
        ),
    ];
    for backend in backends_under_test() {
        for (what, url, extra, expect) in &cases {
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let (code, stderr) = get_with_env(backend, url, &dest, extra, &[]);
            assert_eq!(
                code,
                Some(3),
                "backend={backend:?} {what}: exit 3 (remote): {stderr}"
            );
            let host = if *what == "wrong name" {
                "127.0.0.1"
            } else {
                "localhost"
            };
            assert!(
                stderr.contains(&format!("TLS with {host} failed")) && stderr.contains(expect),
                "backend={backend:?} {what}: the error names the host and the reason: {stderr}"
            );
            assert_no_output(&dest, what);
            eprintln!("backend={backend:?} {what}: {}", stderr.trim());
        }
        eprintln!("ran on backend {backend:?}: unknown CA, wrong name, expired");
    }
    // No request ever reached nginx: a failed verification is not followed by a plain retry.
    assert!(good.requests(0).is_empty(), "{:?}", good.requests(0));
    assert!(expired.requests(0).is_empty(), "{:?}", expired.requests(0));
}

#[test]
fn a_bad_ca_file_is_a_usage_error() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 10, 9);
    let nginx = Nginx::start_tls(src.path(), &pki.localhost);
    let not_pem = pki.dir().join("not.pem");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let out = tempfile::tempdir().expect("tmp");
    let dest = out.path().join("f");
    let url = nginx.https_url("localhost", "files", "f");
    for backend in backends_under_test() {
        let missing = pki.dir().join("missing.pem");
        for (file, expect) in [(&not_pem, "no PEM certificate"), (&missing, "missing.pem")] {
            let f = file.display().to_string();
            let (code, stderr) = get_with_env(backend, &url, &dest, &["--ca-file", &f], &[]);
            assert_eq!(code, Some(2), "backend={backend:?}: {stderr}");
            assert!(stderr.contains(expect), "{stderr}");
            assert_no_output(&dest, "bad CA file");
            eprintln!("backend={backend:?}: {}", stderr.trim());
        }
        eprintln!("ran on backend {backend:?}: bad CA files");
    }
}

#[test]
fn a_redirect_from_http_to_https_is_followed_and_verified() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 3 << 20, 10);
    let nginx = Nginx::start_tls(src.path(), &pki.localhost);
    let ca = ca_args(&pki);
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let mut extra: Vec<&str> = ca.iter().map(String::as_str).collect();
        extra.extend(["-c", "3", "--chunk-size", "1M"]);
        get_ok_sink(mode, &nginx.url("to-https", "f"), &dest, &extra);
        assert_same_file(&src.path().join("f"), &dest, &format!("mode={mode:?}"));
        eprintln!("ran on backend, sink = {mode:?}: http -> https redirect");
    }
}

#[test]
fn a_byte_corrupted_in_flight_under_tls_costs_two_ranges_not_the_file() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    let source = src.path().join("f");
    let size: u64 = (6 << 20) + 4097;
    write_data(&source, size, 77);
    let sha = sha256_file(&source);
    let nginx = Nginx::start_tls(src.path(), &pki.localhost);
    let chunk: u64 = 1 << 20;
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        // One connection carries every range; a byte 3 MiB into what the server sends on it
        // is flipped: inside a TLS record of the fourth range (the fifth is already asked for).
        let fault = Fault::FlipStreamByte {
            conn: 0,
            at: 3 << 20,
        };
        let proxy = FaultProxy::start(nginx.tls_port(), fault);
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let logged_before = nginx.requests(0).len();
        let url = format!("https://localhost:{}/files/f", proxy.port());
        let mut args: Vec<&str> = vec!["--ca-file", pki.ca.to_str().expect("utf-8")];
        args.extend(["--sha256", &sha, "-c", "1", "--chunk-size", "1M"]);
        let report = get_ok(backend, &url, &dest, &args);
        let sent: u64 = nginx
            .requests(0)
            .iter()
            .skip(logged_before)
            .filter(|q| q.uri.contains("/files/f"))
            .map(|q| q.body_bytes)
            .sum();
        let refetched = sent.saturating_sub(size);
        let damage = record::damage(&source, &dest);
        let test = "https::a_byte_corrupted_in_flight_under_tls_costs_two_ranges_not_the_file";
        let outcome = "the TLS record failed to authenticate; that range and the one asked ahead fetched again";
        Trial {
            refetched: Some(refetched),
            ..Trial::once((&fault.describe(), test), Some(backend), outcome, damage)
        }
        .record_undamaged(&what);
        assert_eq!(
            report["fetches"], 1,
            "{what}: not the whole file again: {report}"
        );
        assert!(
            report["retries"].as_u64() >= Some(1),
            "{what}: the damaged range was asked again: {report}"
        );
        // The damaged range's rest is fetched again, and so is the range asked for behind it on
        // the same connection (pipelined): nginx had sent it, the broken connection lost it.
        assert!(
            refetched <= 2 * chunk,
            "{what}: nginx sent {sent} bytes for {size}: {refetched} again, more than the \
             damaged range and the one asked ahead"
        );
        eprintln!(
            "ran on backend {backend:?}: a flipped byte under TLS cost {refetched} bytes of {size} ({} retries)",
            report["retries"]
        );
    }
}

/// `ferry -v get` over HTTPS on `backend`: its stderr (the first session's key exchange is
/// logged at info level).
fn key_exchange_logged(backend: Backend, url: &str, pki: &TestPki) -> String {
    let out = tempfile::tempdir().expect("tmp");
    let o = std::process::Command::new(ferry_bin())
        .args(["--backend", backend.flag(), "-v", "get", url, "-o"])
        .arg(out.path().join("f"))
        .arg("--ca-file")
        .arg(&pki.ca)
        .env_remove("FERRY_SAFE_MODE")
        .env_remove("FERRY_LOG")
        .output()
        .expect("run ferry");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    stderr
}

#[test]
fn the_key_exchange_is_post_quantum_where_the_server_offers_it_and_is_said() {
    let pki = TestPki::new();
    // ferry serve (rustls with aws-lc-rs, like ferry's client) negotiates X25519MLKEM768.
    let root = tempfile::tempdir().expect("tmp");
    let repo = root.path().join("org/model");
    std::fs::create_dir_all(repo.join(".cache/huggingface/download")).expect("dirs");
    std::fs::write(repo.join("a.txt"), b"abc").expect("file");
    let commit = "c".repeat(40);
    let etag = ferry_testkit::hub::git_blob_id(b"abc");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        + 5;
    std::fs::write(
        repo.join(".cache/huggingface/download/a.txt.metadata"),
        format!("{commit}\n{etag}\n{now}\n"),
    )
    .expect("metadata");
    let serve = ferry_testkit::serve::Serve::start_tls(root.path(), &pki.localhost);
    let url = format!("{}/org/model/resolve/main/a.txt", serve.endpoint());
    // nginx (OpenSSL) offers what its build has: a classical group at least.
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 1000, 1);
    let nginx = Nginx::start_tls(src.path(), &pki.localhost);
    for backend in backends_under_test() {
        let said = key_exchange_logged(backend, &url, &pki);
        assert!(
            said.contains("key_exchange=Some(X25519MLKEM768)"),
            "backend={backend:?} ferry serve: {said}"
        );
        let said = key_exchange_logged(backend, &nginx.https_url("localhost", "files", "f"), &pki);
        assert!(
            said.contains("TLS session established") && said.contains("key_exchange=Some("),
            "backend={backend:?} nginx: {said}"
        );
        eprintln!("ran on backend {backend:?}: key exchange logged with -v");
    }
    // `ferry probe` says what is offered.
    let o = std::process::Command::new(ferry_bin())
        .args(["probe", "--json"])
        .output()
        .expect("probe");
    let probe: serde_json::Value = serde_json::from_slice(&o.stdout).expect("probe JSON");
    assert_eq!(probe["tls"]["provider"], "aws-lc-rs");
    assert_eq!(
        probe["tls"]["key_exchange"][0], "X25519MLKEM768",
        "{}",
        probe["tls"]
    );
}
