//! `ferry ping` on every back-end: each endpoint measured on a fresh connection against a real
//! nginx (plain, over TLS with the test CA, behind a redirect, behind a throttling proxy), a
//! dead endpoint reported as such without hiding the others, and `--repo` asking every
//! endpoint for the same file (the largest) at the same commit.

use ferry_testkit::hub::{make_repo, write_static_hub};
use ferry_testkit::tls::TestPki;
use ferry_testkit::{Fault, FaultProxy, Nginx, backends_under_test, ferry, free_port, write_data};

/// `ferry ping ARGS --json`: exit code and the endpoints' entries.
fn ping_json(backend: ferry_testkit::Backend, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let mut all = vec!["ping", "--json"];
    all.extend_from_slice(args);
    let o = ferry(backend, &all);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "backend={backend:?}: JSON on stdout ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let entries = v["endpoints"].as_array().expect("endpoints").clone();
    (o.status.code().unwrap_or(-1), entries)
}

/// Checks an entry that answered: the bytes read, a status, times that add up.
fn assert_measured(e: &serde_json::Value, bytes: u64, what: &str) {
    assert_eq!(e["ok"], true, "{what}: {e}");
    assert_eq!(e["bytes"].as_u64(), Some(bytes), "{what}: {e}");
    assert_eq!(e["status"], 206, "{what}: a ranged answer: {e}");
    for key in ["connect_seconds", "first_byte_seconds", "read_seconds"] {
        let s = e[key].as_f64().unwrap_or(-1.0);
        assert!(s >= 0.0, "{what}: {key}: {e}");
    }
    let rate = e["bytes_per_second"].as_f64().expect("a throughput");
    let read = e["read_seconds"].as_f64().expect("read time");
    assert!(
        (rate * read - bytes as f64).abs() <= bytes as f64 * 1e-6 + 1.0,
        "{what}: throughput is bytes over read time: {e}"
    );
}

#[test]
fn each_endpoint_is_measured_and_a_dead_one_is_reported() {
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 8 << 20, 91);
    write_data(&src.path().join("small"), 1000, 92);
    let nginx = Nginx::start(src.path());
    let dead = format!("http://127.0.0.1:{}/files/f", free_port());
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        let (code, e) = ping_json(
            backend,
            &[
                &nginx.url("files", "f"),
                &dead,
                &nginx.url("files", "small"),
                &nginx.url("redirect", "f"),
                "--bytes",
                "1M",
            ],
        );
        assert_eq!(
            e.len(),
            4,
            "{what}: one entry per endpoint, in order: {e:?}"
        );
        assert_measured(&e[0], 1 << 20, &what);
        assert_eq!(
            e[0]["tls_seconds"],
            serde_json::Value::Null,
            "{what}: {}",
            e[0]
        );
        assert_eq!(e[1]["ok"], false, "{what}: {}", e[1]);
        let err = e[1]["error"].as_str().expect("an error");
        assert!(err.contains("cannot connect"), "{what}: {err}");
        // A file smaller than the range: all of it.
        assert_measured(&e[2], 1000, &what);
        // A redirect is followed, and said.
        assert_measured(&e[3], 1 << 20, &what);
        let to = e[3]["redirected_to"].as_str().expect("redirected_to");
        assert!(to.ends_with("/files/f"), "{what}: {to}");
        assert_eq!(
            code, 3,
            "{what}: an endpoint failed, so the exit code says so"
        );
        // Without the dead one, success; the table names every endpoint.
        let o = ferry(backend, &["ping", &nginx.url("files", "f")]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{what}: {out}");
        assert!(
            out.contains("CONNECT")
                && out.contains("THROUGHPUT")
                && out.contains(&nginx.url("files", "f")),
            "{what}: {out}"
        );
        eprintln!("ran on backend {backend:?}: {}", e[0]);
    }
}

#[test]
fn https_endpoints_show_their_handshake() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 2 << 20, 93);
    let nginx = Nginx::start_tls(src.path(), &pki.localhost);
    let ca = pki.ca.display().to_string();
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        let url = nginx.https_url("localhost", "files", "f");
        let (code, e) = ping_json(backend, &["--ca-file", &ca, &url]);
        assert_eq!(code, 0, "{what}: {e:?}");
        assert_measured(&e[0], 2 << 20, &what);
        let tls = e[0]["tls_seconds"].as_f64().expect("a TLS handshake time");
        // Not trusting the CA: a certificate error naming the host, not a measurement.
        let (code, e) = ping_json(backend, &[&url]);
        assert_eq!(code, 3, "{what}: {e:?}");
        let err = e[0]["error"].as_str().expect("an error");
        assert!(err.contains("localhost"), "{what}: {err}");
        eprintln!("ran on backend {backend:?}: TLS handshake in {tls} s");
    }
}

#[test]
fn a_throttled_endpoint_measures_no_faster_than_its_link() {
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 4 << 20, 94);
    let nginx = Nginx::start(src.path());
    // 1 MiB/s: reading 1 MiB takes at least about a second, whatever the machine, so a
    // measurement above 1.5 MiB/s would be counting something other than the bytes' arrival.
    let slow = FaultProxy::start(
        nginx.port(),
        Fault::Throttle {
            bytes_per_sec: 1 << 20,
        },
    );
    let url = format!("http://127.0.0.1:{}/files/f", slow.port());
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        let (code, e) = ping_json(backend, &[&url, "--bytes", "1M"]);
        assert_eq!(code, 0, "{what}: {e:?}");
        assert_measured(&e[0], 1 << 20, &what);
        let rate = e[0]["bytes_per_second"].as_f64().expect("rate");
        assert!(rate < 1.5 * (1 << 20) as f64, "{what}: {}", e[0]);
        eprintln!("ran on backend {backend:?}: throttled at {rate:.0} B/s");
    }
}

#[test]
fn with_a_repo_every_endpoint_is_asked_for_its_largest_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let repo = make_repo(
        dir.path(),
        "org/model",
        &[
            ("config.json", 300, false),
            ("model.safetensors", 3 << 20, true),
            ("tokenizer.json", 40_000, false),
        ],
    );
    let root = dir.path().join("hub");
    write_static_hub(&root, &repo, None);
    let nginx = Nginx::start(&root);
    let endpoint = format!("http://127.0.0.1:{}/files", nginx.port());
    let front = FaultProxy::start(nginx.port(), Fault::None);
    let mirror = format!("http://127.0.0.1:{}/files", front.port());
    let repo_args = |more: [&str; 2]| -> Vec<String> {
        [
            "--repo",
            "org/model",
            "--endpoint",
            &endpoint,
            more[0],
            more[1],
        ]
        .map(str::to_owned)
        .to_vec()
    };
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        let seen = nginx.requests(0).len();
        let args = repo_args(["--mirror", &mirror]);
        let (code, e) = ping_json(
            backend,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert_eq!(code, 0, "{what}: {e:?}");
        assert_eq!(e.len(), 2, "{what}: {e:?}");
        assert_eq!(e[0]["endpoint"], endpoint.as_str(), "{what}");
        assert_eq!(e[1]["endpoint"], mirror.as_str(), "{what}");
        let path = format!("/org/model/resolve/{}/model.safetensors", repo.commit);
        for entry in &e {
            assert_measured(entry, 3 << 20, &what);
            let url = entry["url"].as_str().expect("url");
            assert!(
                url.ends_with(&path),
                "{what}: the same file at the commit: {url}"
            );
        }
        // Both reads reached nginx (the mirror through its proxy) as ranged requests.
        let ranged = |all: Vec<ferry_testkit::Request>| -> Vec<ferry_testkit::Request> {
            all[seen..]
                .iter()
                .filter(|r| r.uri.ends_with("model.safetensors") && r.range != "-")
                .cloned()
                .collect()
        };
        // nginx logs a request just after its last byte: wait for both.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ranged(nginx.requests(0)).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let got = ranged(nginx.requests(0));
        assert_eq!(got.len(), 2, "{what}: {got:?}");
        // --file names another file; a missing one fails as a missing entry (exit 8).
        let args = repo_args(["--file", "tokenizer.json"]);
        let (code, e) = ping_json(
            backend,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert_eq!(code, 0, "{what}: {e:?}");
        assert_measured(&e[0], 40_000, &what);
        let mut args = vec!["ping".to_owned()];
        args.extend(repo_args(["--file", "nope.bin"]));
        let o = ferry(
            backend,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert_eq!(
            o.status.code(),
            Some(8),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!(
            "ran on backend {backend:?}: {} and {} measured",
            endpoint, mirror
        );
    }
}
