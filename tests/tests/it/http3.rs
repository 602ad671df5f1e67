//! HTTP/3 end to end (issue 30): with `--http3`, `https://` connections try QUIC first. Against
//! Caddy (Debian's, `tls internal`, a QUIC stack ferry did not write): byte-identical files of
//! every size on every back-end and sink, ranges many to a connection, Caddy's access log
//! saying each came over HTTP/3, the report counting the UDP path. Where HTTP/3 cannot be had
//! (nothing on the UDP port, a port that answers junk, a proxy in the way) the file still comes
//! over TCP and the report says why.

use ferry_testkit::caddy::Caddy;
use ferry_testkit::tls::TestPki;
use ferry_testkit::{
    Nginx, assert_same_file, backends_under_test, get_ok, get_ok_sink, modes_under_test,
    sha256_file, write_data,
};

const SIZES: [u64; 6] = [0, 1, 4095, 16_385, 1 << 20, 9 * (1 << 20) + 12_347];

#[test]
fn files_come_over_http3_from_caddy_byte_identical_on_every_back_end_and_sink() {
    let src = tempfile::tempdir().expect("tmp");
    for (i, size) in SIZES.iter().enumerate() {
        write_data(&src.path().join(format!("f{size}")), *size, 40 + i as u64);
    }
    let caddy = Caddy::start(src.path());
    let ca = caddy.ca().display().to_string();
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        for size in SIZES {
            let name = format!("f{size}");
            let source = src.path().join(&name);
            let dest = out.path().join(&name);
            let sha = sha256_file(&source);
            let before = caddy.requests().len();
            // Small ranges over a few connections: many streams per connection.
            let extra = [
                "--http3",
                "--ca-file",
                &ca,
                "--sha256",
                &sha,
                "-c",
                "3",
                "--chunk-size",
                "1M",
            ];
            let report = get_ok_sink(mode, &caddy.url(&name), &dest, &extra);
            assert_eq!(report["bytes"], size, "mode={mode:?}: {report}");
            assert_same_file(&source, &dest, &format!("h3 mode={mode:?} size={size}"));
            let requests = caddy.requests();
            let mine: Vec<_> = requests[before..]
                .iter()
                .filter(|r| r.uri == format!("/{name}"))
                .collect();
            assert!(!mine.is_empty(), "{requests:?}");
            assert!(
                mine.iter().all(|r| r.proto == "HTTP/3.0"),
                "mode={mode:?} size={size}: not all over HTTP/3: {mine:?}"
            );
            assert_eq!(
                report["http3"].as_u64(),
                Some(mine.len() as u64),
                "mode={mode:?} size={size}: {report}"
            );
            let quic = &report["quic"];
            assert_eq!(quic["fallback"], serde_json::Value::Null, "{report}");
            assert!(quic["connections"].as_u64() >= Some(1), "{report}");
            assert!(
                quic["datagrams_received"].as_u64() >= Some(size / 1500),
                "{report}"
            );
            if size > 2 << 20 {
                let ranged = mine.iter().filter(|r| r.range.is_some()).count();
                assert!(ranged >= 2, "mode={mode:?} size={size}: {mine:?}");
            }
        }
        eprintln!("ran on backend, sink = {mode:?}: HTTP/3 from Caddy, sizes {SIZES:?}");
    }
}

/// Without `--http3`, nothing goes over QUIC (and the report has no QUIC section), even to a
/// server that offers it; nor in safe mode, whose report says why.
#[test]
fn without_http3_nothing_goes_over_quic() {
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 2 * (1 << 20) + 1, 9);
    let caddy = Caddy::start(src.path());
    let ca = caddy.ca().display().to_string();
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let report = get_ok(backend, &caddy.url("f"), &dest, &["--ca-file", &ca]);
        assert_same_file(&src.path().join("f"), &dest, "without --http3");
        assert_eq!(report["http3"], 0, "{report}");
        assert_eq!(report["quic"], serde_json::Value::Null, "{report}");
        assert!(
            caddy.requests().iter().all(|r| r.proto == "HTTP/1.1"),
            "{:?}",
            caddy.requests()
        );
        eprintln!("ran on backend {backend:?}: no QUIC without --http3");
    }
    let out = tempfile::tempdir().expect("tmp");
    let dest = out.path().join("f");
    let extra = ["--ca-file", &ca, "--http3", "--safe-mode"];
    let report = get_ok(
        ferry_testkit::Backend::Portable,
        &caddy.url("f"),
        &dest,
        &extra,
    );
    assert_same_file(&src.path().join("f"), &dest, "safe mode");
    assert_eq!(report["http3"], 0, "{report}");
    let why = report["quic"]["fallback"].as_str().unwrap_or_default();
    assert!(why.contains("safe mode"), "{report}");
    eprintln!("ran on backend Portable (safe mode): no QUIC ({why})");
}

/// Where HTTP/3 cannot be had, the file comes over TCP, whole, and the report says why: an
/// HTTPS server with nothing on its UDP port (no answer to the handshake), the same server
/// with a hostile UDP responder on that port answering every datagram with junk, and a
/// proxy in the way (its tunnel carries TCP only). On both back-ends.
#[test]
fn without_an_http3_server_the_file_comes_over_tcp_and_the_report_says_why() {
    use ferry_testkit::proxies::RealProxy;
    use ferry_testkit::udpjunk::UdpJunk;
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    let size = 3 * (1 << 20) + 17;
    write_data(&src.path().join("f"), size, 33);
    let nginx = Nginx::start_tls(src.path(), &pki.localhost);
    let ca = pki.ca.display().to_string();
    let sha = sha256_file(&src.path().join("f"));
    let url = nginx.https_url("localhost", "files", "f");
    let tiny = RealProxy::tinyproxy(None);
    for backend in backends_under_test() {
        for case in ["silent UDP port", "junk on the UDP port", "through a proxy"] {
            let junk = (case == "junk on the UDP port").then(|| UdpJunk::start(nginx.tls_port()));
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let proxy = tiny.url(None);
            let mut extra = vec!["--http3", "--ca-file", &ca, "--sha256", &sha];
            if case == "through a proxy" {
                extra.extend(["--proxy", proxy.as_str()]);
            }
            let report = get_ok(backend, &url, &dest, &extra);
            assert_same_file(&src.path().join("f"), &dest, case);
            assert_eq!(report["http3"], 0, "{case}: {report}");
            let why = report["quic"]["fallback"].as_str().unwrap_or_default();
            let expected = if case == "through a proxy" {
                "proxy"
            } else {
                "no answer to the QUIC handshake"
            };
            assert!(why.contains(expected), "{case}: {report}");
            if let Some(junk) = junk {
                assert!(junk.answered() > 0, "the junk responder heard nothing");
            }
            eprintln!("ran on backend {backend:?}: {case} -> TCP ({why})");
        }
    }
}

/// What one run learns about HTTP/3, the next uses (ferry's cache folder, `FERRY_CACHE_DIR`):
/// an HTTPS server with nothing on its UDP port whose TCP answers advertise
/// `Alt-Svc: h3=":PORT"` (nginx, with Caddy on that port) sends the next run's QUIC there,
/// and the files come over HTTP/3; a server with no advertisement, whose UDP port did not
/// answer, is not tried again by the next run, whose report says an earlier run failed. On
/// both back-ends.
#[test]
fn the_next_run_uses_what_this_one_learnt_about_http3() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    let size = 2 * (1 << 20) + 5;
    write_data(&src.path().join("f"), size, 8);
    let caddy_root = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(caddy_root.path().join("files")).expect("mkdir");
    std::fs::copy(src.path().join("f"), caddy_root.path().join("files/f")).expect("copy");
    let caddy = Caddy::start(caddy_root.path());
    let caddy_port = caddy
        .url("")
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .expect("caddy port");
    let advertising = Nginx::start_options(
        src.path(),
        &ferry_testkit::nginx::Options {
            tls: Some(pki.localhost.clone()),
            extra: format!("add_header Alt-Svc 'h3=\":{caddy_port}\"; ma=60' always;"),
            ..Default::default()
        },
    );
    let silent = Nginx::start_tls(src.path(), &pki.localhost);
    let (ca, caddy_ca) = (
        pki.ca.display().to_string(),
        caddy.ca().display().to_string(),
    );
    for backend in backends_under_test() {
        let memory = tempfile::tempdir().expect("cache dir");
        let run = |url: &str| {
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let o = ferry_testkit::ferry_command(backend)
                .env("FERRY_CACHE_DIR", memory.path())
                .args(["get", url, "-o", dest.to_str().expect("utf-8"), "--json"])
                .args(["--http3", "--ca-file", &ca, "--ca-file", &caddy_ca])
                .output()
                .expect("run ferry");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert_same_file(&src.path().join("f"), &dest, url);
            serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("JSON report")
        };
        let url = advertising.https_url("localhost", "files", "f");
        let first = run(&url);
        assert_eq!(first["http3"], 0, "{first}");
        // The answers came over QUIC from Caddy's port, the only UDP port that answers (Caddy
        // logs no request whose `:authority` names another port, as an alternative's must).
        let second = run(&url);
        assert!(second["http3"].as_u64() >= Some(1), "{second}");
        assert_eq!(
            second["quic"]["fallback"],
            serde_json::Value::Null,
            "{second}"
        );

        let url = silent.https_url("localhost", "files", "f");
        let first = run(&url);
        let why = first["quic"]["fallback"].as_str().unwrap_or_default();
        assert!(why.contains("no answer to the QUIC handshake"), "{first}");
        let second = run(&url);
        let why = second["quic"]["fallback"].as_str().unwrap_or_default();
        assert!(why.contains("an earlier run failed"), "{second}");
        assert_eq!(second["quic"]["connections"], 0, "{second}");
        eprintln!("ran on backend {backend:?}: Alt-Svc and a failure remembered between runs");
    }
}

/// The HTTP/3 faults of the reliability table: a stream reset or the connection closed
/// mid-body, a GOAWAY, rejected requests, data in tiny pieces, a byte too many, the wrong
/// range, answers without a length. A big file in 1 MiB ranges over 2 connections and twelve
/// small files in one job must come out byte-identical on both back-ends, over HTTP/3.
#[test]
fn a_hostile_http3_server_still_gives_byte_identical_files() {
    use ferry_testkit::h3origin::{H3Fault, H3Origin};
    use ferry_testkit::record;
    use std::sync::atomic::Ordering::Relaxed;
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("big"), 6 * (1 << 20) + 4321, 92);
    for i in 0..12 {
        write_data(&src.path().join(format!("s{i}")), 1000 + 3000 * i, 200 + i);
    }
    let ca = pki.ca.display().to_string();
    let test = "http3::a_hostile_http3_server_still_gives_byte_identical_files";
    let faults = [
        (H3Fault::None, "none (HTTP/3 baseline)"),
        (H3Fault::ResetMid(3), "HTTP/3 stream reset mid-body"),
        (H3Fault::CloseMid(4), "HTTP/3 connection closed mid-body"),
        (
            H3Fault::GoAwayAfter(3),
            "HTTP/3 GOAWAY with requests in flight",
        ),
        (H3Fault::RejectEvery(2), "HTTP/3 H3_REQUEST_REJECTED"),
        (H3Fault::TinyPieces, "HTTP/3 data in 1-97 byte pieces"),
        (
            H3Fault::TooMany(3),
            "HTTP/3 body a byte longer than its Content-Length",
        ),
        (H3Fault::WrongRange(3), "HTTP/3 206 for another range"),
        (
            H3Fault::NoLength(3),
            "HTTP/3 answers without Content-Length, every third a byte short",
        ),
    ];
    let mut baseline = 0;
    for (fault, name) in faults {
        let origin = H3Origin::start(src.path(), &pki.localhost, fault);
        for backend in backends_under_test() {
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("big");
            let sha = sha256_file(&src.path().join("big"));
            let report = get_ok(
                backend,
                &origin.url("big"),
                &dest,
                &[
                    "--http3",
                    "--ca-file",
                    &ca,
                    "--sha256",
                    &sha,
                    "-c",
                    "2",
                    "--chunk-size",
                    "1M",
                ],
            );
            assert!(
                report["http3"].as_u64() >= Some(1),
                "{name}: not over HTTP/3: {report}"
            );
            record::recovered(name, test, backend, &src.path().join("big"), &dest);
            let many = out.path().join("many");
            std::fs::create_dir(&many).expect("mkdir");
            let mut cmd = vec![
                "get".to_owned(),
                "--http3".into(),
                "--ca-file".into(),
                ca.clone(),
            ];
            cmd.extend(["-c".into(), "2".into(), "--json".into()]);
            cmd.extend(["-o".into(), many.display().to_string()]);
            cmd.extend((0..12).map(|i| origin.url(&format!("s{i}"))));
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let o = ferry_testkit::ferry(backend, &args);
            assert!(
                o.status.success(),
                "{name} on {backend:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            for i in 0..12 {
                let file = format!("s{i}");
                assert_same_file(
                    &src.path().join(&file),
                    &many.join(&file),
                    &format!("{name} {backend:?} {file}"),
                );
            }
            eprintln!("ran on backend {backend:?}: {name}");
        }
        let c = origin.counts();
        eprintln!(
            "{name}: {} connections, {} requests, {} faults",
            c.connections.load(Relaxed),
            c.requests.load(Relaxed),
            c.faults.load(Relaxed),
        );
        if fault == H3Fault::None {
            baseline = c.connections.load(Relaxed);
        } else {
            assert!(
                c.faults.load(Relaxed) > 0,
                "{name}: the fault never happened"
            );
        }
        // A stream reset, or ended short, is that stream's end alone: the connection goes on
        // (before, each cost a new one: 24 connections where the baseline had 8).
        if matches!(fault, H3Fault::ResetMid(_) | H3Fault::NoLength(_)) {
            assert!(
                c.connections.load(Relaxed) <= baseline + 4,
                "{name}: {} connections, the baseline {baseline}",
                c.connections.load(Relaxed)
            );
        }
    }
}
