//! HTTP/2 end to end (issue 29): with `--http2`, `https://` connections offer `h2` then
//! `http/1.1`, and where the server picks `h2` every request is a stream of the connection.
//! Against a real nginx with `http2` on: byte-identical files of every size on every back-end
//! and sink, the report saying the answers came over HTTP/2; without `--http2` only HTTP/1.1 is
//! offered to the same server, and a server without HTTP/2 is spoken to in HTTP/1.1. Against a
//! hostile HTTP/2 origin a WAN's round trip away, ranges and small files asked ahead as streams
//! come out byte-identical whatever it does.

use ferry_testkit::nginx::Options;
use ferry_testkit::tls::TestPki;
use ferry_testkit::{
    Nginx, assert_same_file, backends_under_test, get_ok, get_ok_sink, modes_under_test,
    sha256_file, write_data,
};

const SIZES: [u64; 6] = [0, 1, 4095, 16_385, 1 << 20, 9 * (1 << 20) + 12_347];

fn nginx_h2(root: &std::path::Path, pki: &TestPki) -> Nginx {
    Nginx::start_options(
        root,
        &Options {
            tls: Some(pki.localhost.clone()),
            http2: true,
            ..Options::default()
        },
    )
}

#[test]
fn files_come_over_http2_byte_identical_on_every_back_end_and_sink() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    for (i, size) in SIZES.iter().enumerate() {
        write_data(&src.path().join(format!("f{size}")), *size, 70 + i as u64);
    }
    let nginx = nginx_h2(src.path(), &pki);
    let ca = pki.ca.display().to_string();
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        for size in SIZES {
            let name = format!("f{size}");
            let source = src.path().join(&name);
            let dest = out.path().join(&name);
            let sha = sha256_file(&source);
            // Small ranges over a few connections: many streams per connection.
            let extra = [
                "--http2",
                "--ca-file",
                &ca,
                "--sha256",
                &sha,
                "-c",
                "3",
                "--chunk-size",
                "1M",
            ];
            let url = nginx.https_url("localhost", "files", &name);
            let report = get_ok_sink(mode, &url, &dest, &extra);
            assert_eq!(report["bytes"], size, "mode={mode:?}: {report}");
            assert!(
                report["http2"].as_u64() >= Some(1),
                "mode={mode:?} size={size}: not over HTTP/2: {report}"
            );
            assert_same_file(&source, &dest, &format!("h2 mode={mode:?} size={size}"));
        }
        eprintln!("ran on backend, sink = {mode:?}: HTTP/2 sizes {SIZES:?}");
    }
}

#[test]
fn http1_1_is_spoken_without_http2_or_when_the_server_has_no_http2() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    let size = 3 * (1 << 20) + 5;
    write_data(&src.path().join("f"), size, 77);
    let h2 = nginx_h2(src.path(), &pki);
    let h1 = Nginx::start_tls(src.path(), &pki.localhost);
    let ca = pki.ca.display().to_string();
    for backend in backends_under_test() {
        for (server, flags, why) in [
            (&h2, vec![], "without --http2"),
            (&h1, vec!["--http2"], "a server without HTTP/2"),
        ] {
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let mut extra = vec!["--ca-file", &ca, "--chunk-size", "1M"];
            extra.extend(flags);
            let report = get_ok(
                backend,
                &server.https_url("localhost", "files", "f"),
                &dest,
                &extra,
            );
            assert_eq!(report["http2"], 0, "backend={backend:?} {why}: {report}");
            assert_same_file(&src.path().join("f"), &dest, why);
        }
        eprintln!("ran on backend {backend:?}: HTTP/1.1 without --http2 and without h2");
    }
}

/// The HTTP/2 faults of the reliability table: a stream reset or GOAWAY mid-body, a graceful
/// GOAWAY, refused streams, one stream at a time, tiny frames, a byte too many, the wrong
/// range. Through a relay 30 ms away, so that ranges and small files are asked ahead as
/// streams; each file must come out byte-identical on both back-ends.
#[test]
fn a_hostile_http2_server_still_gives_byte_identical_files() {
    use ferry_testkit::h2origin::{H2Fault, H2Origin};
    use ferry_testkit::record;
    use ferry_testkit::relay::{Relay, WanPath};
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    let big = 6 * (1 << 20) + 4321;
    write_data(&src.path().join("big"), big, 91);
    for i in 0..12 {
        write_data(&src.path().join(format!("s{i}")), 1000 + 3000 * i, 100 + i);
    }
    let ca = pki.ca.display().to_string();
    let test = "http2::a_hostile_http2_server_still_gives_byte_identical_files";
    let faults = [
        (H2Fault::None, "none (HTTP/2 baseline)"),
        (H2Fault::ResetMid(3), "HTTP/2 RST_STREAM mid-body"),
        (H2Fault::GoAwayMid(4), "HTTP/2 GOAWAY (error) mid-body"),
        (
            H2Fault::GracefulAfter(3),
            "HTTP/2 graceful GOAWAY with streams in flight",
        ),
        (H2Fault::RefuseEvery(2), "HTTP/2 REFUSED_STREAM"),
        (H2Fault::OneStream, "HTTP/2 one stream at a time"),
        (
            H2Fault::TinyFrames,
            "HTTP/2 tiny DATA frames, 1-byte window",
        ),
        (
            H2Fault::TooMany(3),
            "HTTP/2 body a byte longer than its Content-Length",
        ),
        (H2Fault::WrongRange(3), "HTTP/2 206 for another range"),
        (
            H2Fault::NoLength(3),
            "HTTP/2 answers without Content-Length, every third a byte short",
        ),
    ];
    for (fault, name) in faults {
        let origin = H2Origin::start(src.path(), &pki.localhost, fault);
        let upstream = format!("127.0.0.1:{}", port_of(&origin.url("big")))
            .parse()
            .expect("addr");
        let relay = Relay::start(
            upstream,
            WanPath {
                rtt: std::time::Duration::from_millis(30),
                flow_rate: None,
                link_rate: None,
            },
        )
        .expect("relay");
        let at = |name: &str| format!("https://localhost:{}/{name}", relay.addr().port());
        for backend in backends_under_test() {
            let out = tempfile::tempdir().expect("tmp");
            // The big file in 1 MiB ranges over 2 connections.
            let dest = out.path().join("big");
            let sha = sha256_file(&src.path().join("big"));
            let report = get_ok(
                backend,
                &at("big"),
                &dest,
                &[
                    "--http2",
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
                report["http2"].as_u64() >= Some(1),
                "{name}: not over HTTP/2: {report}"
            );
            record::recovered(name, test, backend, &src.path().join("big"), &dest);
            // Twelve small files over 2 connections: their first requests go ahead as streams.
            let many = out.path().join("many");
            std::fs::create_dir(&many).expect("mkdir");
            let mut cmd = vec![
                "get".to_owned(),
                "--http2".into(),
                "--ca-file".into(),
                ca.clone(),
            ];
            cmd.extend(["-c".into(), "2".into(), "--json".into()]);
            cmd.extend(["-o".into(), many.display().to_string()]);
            cmd.extend((0..12).map(|i| at(&format!("s{i}"))));
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let o = ferry_testkit::ferry(backend, &args);
            assert!(
                o.status.success(),
                "{name} on {backend:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON summary per line"))
                .collect();
            let ahead: u64 = reports.iter().filter_map(|r| r["pipelined"].as_u64()).sum();
            if fault == H2Fault::None {
                assert!(ahead > 0, "no request went ahead as a stream: {reports:?}");
            }
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
            "{name}: {} connections, {} streams, {} faults, at most {} open at once",
            c.connections.load(std::sync::atomic::Ordering::Relaxed),
            c.streams.load(std::sync::atomic::Ordering::Relaxed),
            c.faults.load(std::sync::atomic::Ordering::Relaxed),
            c.most_open.load(std::sync::atomic::Ordering::Relaxed),
        );
        if fault == H2Fault::None {
            assert!(
                c.most_open.load(std::sync::atomic::Ordering::Relaxed) >= 2,
                "never two streams open at once"
            );
        } else {
            assert!(
                c.faults.load(std::sync::atomic::Ordering::Relaxed) > 0,
                "{name}: the fault never happened"
            );
        }
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// Against Caddy (Debian's, `tls internal`), a server ferry did not write: with `--http2` the
/// ranges go over HTTP/2 (Caddy's access log says so, request by request), without it over
/// HTTP/1.1; the file is byte-identical either way, on both back-ends.
#[test]
fn caddy_serves_ranges_over_http2_and_http1_1() {
    use ferry_testkit::caddy::Caddy;
    let src = tempfile::tempdir().expect("tmp");
    let size = 5 * (1 << 20) + 777;
    write_data(&src.path().join("f.bin"), size, 123);
    let caddy = Caddy::start(src.path());
    let ca = caddy.ca().display().to_string();
    let sha = sha256_file(&src.path().join("f.bin"));
    for backend in backends_under_test() {
        for (flags, proto) in [(vec!["--http2"], "HTTP/2.0"), (vec![], "HTTP/1.1")] {
            let before = caddy.requests().len();
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f.bin");
            let mut extra = vec!["--ca-file", &ca, "--sha256", &sha, "--chunk-size", "1M"];
            extra.extend(&flags);
            let report = get_ok(backend, &caddy.url("f.bin"), &dest, &extra);
            assert_same_file(&src.path().join("f.bin"), &dest, proto);
            let requests = caddy.requests();
            let ranged: Vec<_> = requests[before..]
                .iter()
                .filter(|r| r.uri == "/f.bin" && r.range.is_some())
                .collect();
            assert!(ranged.len() >= 5, "{proto}: {requests:?}");
            assert!(
                ranged.iter().all(|r| r.proto == proto && r.status == 206),
                "{proto}: {ranged:?}"
            );
            let over_h2 = report["http2"].as_u64().unwrap_or(0);
            assert_eq!(over_h2 > 0, proto == "HTTP/2.0", "{report}");
        }
        eprintln!("ran on backend {backend:?}: Caddy over HTTP/2 and HTTP/1.1");
    }
}

/// HTTP/2 through the proxies and with mirrors, as over HTTP/1.1: through tinyproxy's
/// `CONNECT` tunnel (with credentials) and microsocks (`socks5h`), and from two nginx
/// mirrors at once (the report names both and every answer came over HTTP/2), on both
/// back-ends.
#[test]
fn http2_goes_through_proxies_and_mirrors() {
    use ferry_testkit::proxies::RealProxy;
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    let size = 6 * (1 << 20) + 99;
    write_data(&src.path().join("f"), size, 55);
    let a = nginx_h2(src.path(), &pki);
    let b = nginx_h2(src.path(), &pki);
    let tiny = RealProxy::tinyproxy(Some(("u", "p")));
    let socks = RealProxy::microsocks(None);
    let ca = pki.ca.display().to_string();
    let sha = sha256_file(&src.path().join("f"));
    let url = a.https_url("localhost", "files", "f");
    let mirror = b.https_url("localhost", "files", "f");
    for backend in backends_under_test() {
        let via_tiny = tiny.url(Some(("u", "p")));
        let via_socks = socks.url_as("socks5h", None);
        for (what, extra) in [
            ("tinyproxy CONNECT", vec!["--proxy", via_tiny.as_str()]),
            ("microsocks socks5h", vec!["--proxy", via_socks.as_str()]),
            ("two mirrors", vec!["--mirror", mirror.as_str()]),
        ] {
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let mut args = vec!["--http2", "--ca-file", &ca, "--sha256", &sha];
            args.extend(["--chunk-size", "1M", "-c", "4"]);
            args.extend(extra);
            let report = get_ok(backend, &url, &dest, &args);
            assert_same_file(&src.path().join("f"), &dest, what);
            assert!(report["http2"].as_u64() >= Some(6), "{what}: {report}");
            if what == "two mirrors" {
                let served: Vec<u64> = report["endpoints"]
                    .as_array()
                    .expect("endpoints")
                    .iter()
                    .map(|e| e["bytes"].as_u64().unwrap_or(0))
                    .collect();
                assert!(
                    served.len() == 2 && served.iter().all(|&b| b > 0),
                    "{report}"
                );
            }
        }
        eprintln!("ran on backend {backend:?}: HTTP/2 through tinyproxy, socks5h, two mirrors");
    }
    assert!(tiny.log().contains("CONNECT"), "{}", tiny.log());
}

/// Over HTTP/2, a redirect on the same host is followed on the same connection (nginx's
/// `/to-https/` answers 302 to `/files/`), and `ferry ping --http2` measures over HTTP/2 too;
/// on both back-ends.
#[test]
fn redirects_and_ping_over_http2() {
    let pki = TestPki::new();
    let src = tempfile::tempdir().expect("tmp");
    let size = 2 * (1 << 20) + 3;
    write_data(&src.path().join("f"), size, 66);
    let nginx = nginx_h2(src.path(), &pki);
    let ca = pki.ca.display().to_string();
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let url = nginx.https_url("localhost", "to-https", "f");
        let report = get_ok(
            backend,
            &url,
            &dest,
            &["--http2", "--ca-file", &ca, "--chunk-size", "512K"],
        );
        assert_same_file(&src.path().join("f"), &dest, "redirect over HTTP/2");
        assert!(report["http2"].as_u64() >= Some(4), "{report}");
        let o = ferry_testkit::ferry(
            backend,
            &[
                "ping",
                "--json",
                "--http2",
                "--ca-file",
                &ca,
                "--bytes",
                "1M",
                &nginx.https_url("localhost", "files", "f"),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&o.stderr));
        });
        let e = &v["endpoints"][0];
        assert_eq!(e["ok"], true, "{v}");
        assert_eq!(e["bytes"].as_u64(), Some(1 << 20), "{v}");
        assert_eq!(e["status"], 206, "{v}");
        eprintln!("ran on backend {backend:?}: a redirect and a ping over HTTP/2");
    }
    let log = nginx.requests(1);
    assert!(
        log.iter().all(|r| r.protocol == "HTTP/2.0"),
        "every request over HTTP/2: {log:?}"
    );
    // The range after each redirect went on the redirect's own connection.
    let redirects: Vec<_> = log.iter().filter(|r| r.status == 302).collect();
    assert_eq!(redirects.len(), backends_under_test().len(), "{log:?}");
    for r in redirects {
        assert!(
            log.iter()
                .any(|n| n.connection == r.connection && n.nth > r.nth && n.uri == "/files/f"),
            "no range after the redirect on its connection: {log:?}"
        );
    }
}
