//! Downloads through real proxies started by the tests, on every back-end: tinyproxy (HTTP
//! `CONNECT` for https://, forwarded requests for http://) and microsocks (SOCKS5, the target
//! named by the client or resolved by the proxy), with and without credentials, from `--proxy`
//! and from the environment; `NO_PROXY`; a dead proxy or wrong credentials failing clearly with
//! no password in any output; and a `ferry pull` (the Hub API and the data plane) through a
//! proxy. Each proxy's own log proves the bytes went through it.

use std::path::Path;

use ferry_testkit::proxies::RealProxy;
use ferry_testkit::tls::TestPki;
use ferry_testkit::{Backend, Nginx, assert_no_output, assert_same_file, backends_under_test};
use ferry_testkit::{ferry_command, free_port, pull_args, write_data};

const USER: &str = "ferry";
const PASS: &str = "pa55-w0rd-never-printed";

/// Proxy variables cleared for every run, then set as the case asks.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `ferry -v get URL -o OUT ARGS` with exactly `envs` as proxy settings.
fn get(backend: Backend, url: &str, out: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = ferry_command(backend);
    cmd.args(["-v", "get", url, "-o"])
        .arg(out)
        .args(["--quiet", "-c", "4", "--chunk-size", "1M"])
        .args(args)
        .env_remove("FERRY_LOG")
        .env_remove("SSL_CERT_FILE")
        .env_remove("REQUESTS_CA_BUNDLE");
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run ferry");
    let run = Run {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(PASS) && !run.stderr.contains(PASS),
        "the proxy password must never be printed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

struct Origin {
    pki: TestPki,
    nginx: Nginx,
    src: tempfile::TempDir,
}

impl Origin {
    fn start() -> Origin {
        let pki = TestPki::new();
        let src = tempfile::tempdir().expect("tmp");
        write_data(&src.path().join("f"), 3 * (1 << 20) + 4097, 60);
        let nginx = Nginx::start_tls(src.path(), &pki.localhost);
        Origin { pki, nginx, src }
    }

    fn file(&self) -> std::path::PathBuf {
        self.src.path().join("f")
    }

    fn ca(&self) -> String {
        self.pki.ca.display().to_string()
    }

    fn https(&self) -> String {
        self.nginx.https_url("localhost", "files", "f")
    }

    fn http(&self) -> String {
        self.nginx.url("files", "f")
    }
}

fn expect_ok(run: &Run, what: &str) {
    assert_eq!(run.code, Some(0), "{what}: {}", run.stderr);
}

#[test]
fn tinyproxy_tunnels_https_and_forwards_http_with_credentials() {
    let origin = Origin::start();
    let proxy = RealProxy::tinyproxy(Some((USER, PASS)));
    let with_creds = proxy.url(Some((USER, PASS)));
    let ca = origin.ca();
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        // https:// through a CONNECT tunnel, from --proxy and from HTTPS_PROXY.
        let dest = out.path().join("a");
        let run = get(
            backend,
            &origin.https(),
            &dest,
            &["--ca-file", &ca, "--proxy", &with_creds],
            &[],
        );
        expect_ok(&run, "https via --proxy");
        assert_same_file(&origin.file(), &dest, "https via --proxy");
        let dest = out.path().join("b");
        let run = get(
            backend,
            &origin.https(),
            &dest,
            &["--ca-file", &ca],
            &[("HTTPS_PROXY", &with_creds)],
        );
        expect_ok(&run, "https via HTTPS_PROXY");
        assert_same_file(&origin.file(), &dest, "https via HTTPS_PROXY");
        // http:// as absolute-form requests, from http_proxy.
        let dest = out.path().join("c");
        let run = get(
            backend,
            &origin.http(),
            &dest,
            &[],
            &[("http_proxy", &with_creds)],
        );
        expect_ok(&run, "http via http_proxy");
        assert_same_file(&origin.file(), &dest, "http via http_proxy");
        eprintln!("ran on backend {backend:?}: tinyproxy CONNECT and forwarding");
    }
    let log = proxy.log();
    let tls_port = origin.nginx.tls_port();
    assert!(
        log.contains(&format!("CONNECT localhost:{tls_port} HTTP/1.1")),
        "https went through tinyproxy's CONNECT:\n{log}"
    );
    assert!(
        log.contains(&format!("GET {} HTTP/1.1", origin.http())),
        "http went through tinyproxy as absolute-form requests:\n{log}"
    );
}

#[test]
fn microsocks_carries_http_and_https_with_and_without_credentials() {
    let origin = Origin::start();
    let anon = RealProxy::microsocks(None);
    let authed = RealProxy::microsocks(Some((USER, PASS)));
    let ca = origin.ca();
    let cases = [
        (
            "socks5h, credentials",
            authed.url(Some((USER, PASS))),
            "localhost",
        ),
        (
            "socks5, no credentials",
            anon.url_as("socks5", None),
            "127.0.0.1",
        ),
    ];
    for backend in backends_under_test() {
        for (what, proxy_url, _) in &cases {
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("https");
            let run = get(
                backend,
                &origin.https(),
                &dest,
                &["--ca-file", &ca],
                &[("ALL_PROXY", proxy_url)],
            );
            expect_ok(&run, what);
            assert_same_file(&origin.file(), &dest, what);
            let dest = out.path().join("http");
            let run = get(backend, &origin.http(), &dest, &["--proxy", proxy_url], &[]);
            expect_ok(&run, what);
            assert_same_file(&origin.file(), &dest, what);
        }
        eprintln!(
            "ran on backend {backend:?}: microsocks socks5h with credentials, socks5 without"
        );
    }
    // socks5h hands the name to the proxy; socks5 resolves it here and sends the address.
    let tls_port = origin.nginx.tls_port();
    for (proxy, (what, _, host)) in [(&authed, &cases[0]), (&anon, &cases[1])] {
        let log = proxy.log();
        assert!(
            log.contains(&format!("connected to {host}:{tls_port}")),
            "{what}: the tunnel went to {host}:\n{log}"
        );
    }
}

#[test]
fn no_proxy_bypasses_and_a_dead_or_refusing_proxy_fails_clearly() {
    let origin = Origin::start();
    let ca = origin.ca();
    let dead = format!("http://{USER}:{PASS}@127.0.0.1:{}", free_port());
    let tiny = RealProxy::tinyproxy(Some((USER, PASS)));
    let wrong = tiny.url(Some((USER, "not-the-password")));
    let socks = RealProxy::microsocks(Some((USER, PASS)));
    let socks_wrong = socks.url(Some((USER, "nope")));
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        // NO_PROXY names the origin: the dead proxy is never tried.
        for no_proxy in [
            "localhost",
            ".localhost",
            "localhost:0,*",
            "127.0.0.1,localhost",
        ] {
            let run = get(
                backend,
                &origin.https(),
                &dest,
                &["--ca-file", &ca],
                &[("HTTPS_PROXY", &dead), ("NO_PROXY", no_proxy)],
            );
            expect_ok(&run, &format!("NO_PROXY={no_proxy}"));
            assert_same_file(&origin.file(), &dest, no_proxy);
            std::fs::remove_file(&dest).expect("rm");
        }
        // Without it, the dead proxy fails the download (no silent direct connection).
        let run = get(
            backend,
            &origin.https(),
            &dest,
            &["--ca-file", &ca],
            &[("HTTPS_PROXY", &dead)],
        );
        assert_eq!(run.code, Some(3), "dead proxy: {}", run.stderr);
        assert!(
            run.stderr.contains("cannot connect")
                && run.stderr.contains("(proxy http://***@127.0.0.1:"),
            "the error names the proxy, not its password: {}",
            run.stderr
        );
        assert_no_output(&dest, "dead proxy");
        // Wrong credentials: refused, said so, not retried into success.
        for (what, url, expect) in [
            ("tinyproxy", &wrong, "refused the credentials"),
            ("microsocks", &socks_wrong, "refused the credentials"),
        ] {
            let run = get(
                backend,
                &origin.https(),
                &dest,
                &["--ca-file", &ca, "--proxy", url],
                &[],
            );
            assert_eq!(run.code, Some(3), "{what}: {}", run.stderr);
            assert!(
                run.stderr.contains(expect) && run.stderr.contains("***@127.0.0.1"),
                "{what}: names the proxy without its password: {}",
                run.stderr
            );
            assert_no_output(&dest, what);
            eprintln!(
                "backend={backend:?} {what}, wrong password: {}",
                run.stderr.lines().last().unwrap_or("")
            );
        }
        // A proxy URL ferry cannot use is a usage error.
        let run = get(
            backend,
            &origin.https(),
            &dest,
            &["--proxy", "ftp://x:1"],
            &[],
        );
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        eprintln!("ran on backend {backend:?}: NO_PROXY, dead proxy, wrong credentials");
    }
}

#[test]
fn a_pull_goes_through_the_proxy_for_the_api_and_the_bytes() {
    use ferry_testkit::hub::{MODEL, make_repo, write_static_hub};
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tmp");
    let repo = make_repo(dir.path(), "org/model", MODEL);
    let root = dir.path().join("hub");
    write_static_hub(&root, &repo, None);
    let nginx = Nginx::start_tls(&root, &pki.localhost);
    let proxy = RealProxy::tinyproxy(Some((USER, PASS)));
    let endpoint = format!("https://localhost:{}/files", nginx.tls_port());
    for backend in backends_under_test() {
        let cache = tempfile::tempdir().expect("tmp");
        let ca = pki.ca.to_str().expect("utf-8");
        let args = pull_args(&endpoint, cache.path(), &["--ca-file", ca, "--quiet"]);
        let mut cmd = ferry_command(backend);
        cmd.args(args).env_remove("HF_TOKEN");
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        cmd.env("HTTPS_PROXY", proxy.url(Some((USER, PASS))));
        let o = cmd.output().expect("run ferry pull");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "backend={backend:?}: {stderr}");
        assert!(!stdout.contains(PASS) && !stderr.contains(PASS));
        let snap = cache
            .path()
            .join("models--org--model/snapshots")
            .join(&repo.commit);
        for f in &repo.files {
            assert_same_file(
                &f.source,
                &snap.join(&f.path),
                &format!("backend={backend:?} {}", f.path),
            );
        }
        eprintln!("ran on backend {backend:?}: ferry pull through tinyproxy");
    }
    let log = proxy.log();
    // One CONNECT per API request and per data connection; each pull makes several of both.
    let tunnels = log
        .matches(&format!("CONNECT localhost:{} ", nginx.tls_port()))
        .count();
    assert!(
        tunnels >= 4,
        "the API and the data plane both tunnelled: {tunnels}\n{log}"
    );
}
