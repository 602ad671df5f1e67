//! Failures end cleanly: one line on stderr naming the problem, a distinct non-zero exit code,
//! no panic, and nothing under the final name (nor a partial file) — on every back-end.

use std::path::Path;
use std::process::Output;

use ferry_testkit::record;
use ferry_testkit::{
    Backend, Fault, FaultProxy, Nginx, assert_clean_failure, assert_no_output, backends_under_test,
    ferry, serve_one_file, write_data,
};

/// Exit codes from the README.
const USAGE: i32 = 2;
const REMOTE: i32 = 3;

fn get(backend: Backend, url: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["get", url, "-o", out.to_str().expect("utf8")];
    args.extend_from_slice(extra);
    ferry(backend, &args)
}

#[test]
fn bad_input_is_one_clear_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("x");
    for backend in backends_under_test() {
        let cases: [(&str, &Path, &str); 5] = [
            ("not a url", &out, "invalid URL"),
            ("ftp://127.0.0.1/x", &out, "unsupported URL scheme \"ftp\""),
            (
                "gopher://127.0.0.1/x",
                &out,
                "unsupported URL scheme \"gopher\"",
            ),
            (
                "http://127.0.0.1:1/x",
                &tmp.path().join("missing/dir/x"),
                "does not exist",
            ),
            ("http://127.0.0.1:1/x", tmp.path(), "is a directory"),
        ];
        for (url, dest, needle) in cases {
            let o = get(backend, url, dest, &[]);
            assert_clean_failure(
                &o,
                USAGE,
                needle,
                &format!("backend={backend:?} {url} -> {}", dest.display()),
            );
        }
        let o = ferry(
            backend,
            &["get", "http://127.0.0.1:1/x", "-o", "/proc/version/x"],
        );
        assert_clean_failure(
            &o,
            USAGE,
            "not a directory",
            &format!("backend={backend:?} parent is a file"),
        );
        assert_no_output(&out, "bad input");
    }
}

#[test]
fn an_output_that_is_not_a_regular_file_is_refused_and_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    // `ferry get URL -o /dev/null` once renamed its `.incomplete` file over /dev/null, which
    // left a regular file there. A FIFO stands in for the device (no root needed to make one).
    let tmp = tempfile::tempdir().expect("tmp");
    let fifo = tmp.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo");
    // A file the origin has: without the check, the download would succeed and be renamed.
    let src = tempfile::tempdir().expect("tmp");
    std::fs::write(src.path().join("f"), b"hello").expect("source");
    let nginx = Nginx::start(src.path());
    for backend in backends_under_test() {
        let o = get(backend, &nginx.url("files", "f"), &fifo, &[]);
        assert_clean_failure(
            &o,
            USAGE,
            "is a FIFO, not a regular file",
            &format!("backend={backend:?} output is a FIFO"),
        );
        let t = std::fs::symlink_metadata(&fifo)
            .expect("still there")
            .file_type();
        assert!(
            t.is_fifo(),
            "backend={backend:?}: the FIFO is left as it was"
        );
        assert!(!tmp.path().join("fifo.incomplete").exists());
    }
}

#[test]
fn unwritable_directory_is_refused() {
    // As root every directory is writable, so run ferry as `nobody` against a 0555 directory.
    let tmp = tempfile::tempdir().expect("tmp");
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let dest = ro.join("x");
    let is_root = rustix::process::geteuid().is_root();
    for backend in backends_under_test() {
        let mut cmd = if is_root {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(ferry_testkit::ferry_bin());
            c
        } else {
            std::process::Command::new(ferry_testkit::ferry_bin())
        };
        let o = cmd
            .args([
                "--backend",
                backend.flag(),
                "get",
                "http://127.0.0.1:1/x",
                "-o",
                dest.to_str().expect("utf8"),
            ])
            .output()
            .expect("run ferry");
        assert_clean_failure(
            &o,
            USAGE,
            "cannot write to",
            &format!("backend={backend:?} read-only dir"),
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("EACCES"),
            "names the errno"
        );
        assert_no_output(&dest, "read-only dir");
    }
}

#[test]
fn connection_refused_is_a_remote_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = ferry_testkit::free_port();
    for backend in backends_under_test() {
        let dest = tmp.path().join("x");
        let o = get(backend, &format!("http://127.0.0.1:{port}/x"), &dest, &[]);
        assert_clean_failure(
            &o,
            REMOTE,
            "cannot connect",
            &format!("backend={backend:?}"),
        );
        assert_no_output(&dest, "refused");
    }
}

#[test]
fn not_found_is_a_remote_error_and_leaves_nothing() {
    let src = tempfile::tempdir().expect("tmp");
    let nginx = Nginx::start(src.path());
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("nope");
        let o = get(backend, &nginx.url("files", "nope"), &dest, &[]);
        assert_clean_failure(&o, REMOTE, "404", &format!("backend={backend:?} 404"));
        assert_no_output(&dest, "404");
    }
}

/// Downloads `path` through a proxy injecting `fault` and checks that ferry refuses it cleanly.
fn refused_through_proxy(
    (nginx, test): (&Nginx, &str),
    backend: Backend,
    fault: Fault,
    path: &str,
    extra: &[&str],
    needle: &str,
) {
    let proxy = FaultProxy::start(nginx.port(), fault);
    let out = tempfile::tempdir().expect("tmp");
    let dest = out.path().join("f");
    let o = get(
        backend,
        &format!("http://127.0.0.1:{}/{path}", proxy.port()),
        &dest,
        extra,
    );
    let what = format!("backend={backend:?} {fault:?} on /{path}");
    record::failed_cleanly(
        &format!("{} (on /{path})", fault.describe()),
        &format!("errors::{test}"),
        backend,
        "failed cleanly: one line, exit 3, nothing left",
        &dest,
    );
    assert_clean_failure(&o, REMOTE, needle, &what);
    assert_no_output(&dest, &what);
}

const SHORT: &str = "short_bodies_are_fetched_again_until_retries_run_out";

#[test]
fn short_bodies_are_fetched_again_until_retries_run_out() {
    let (_src, file, nginx) = serve_one_file(3 << 20, 6);
    for backend in backends_under_test() {
        // One range answered short (the first, or a later one): the rest of it is fetched again
        // and the file is whole.
        for nth in [0, 1] {
            let proxy = FaultProxy::start(nginx.port(), Fault::TruncateBody { nth, keep: 1000 });
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let url = format!("http://127.0.0.1:{}/files/f", proxy.port());
            let report =
                ferry_testkit::get_ok(backend, &url, &dest, &["--chunk-size", "1M", "-c", "2"]);
            assert!(
                report["retries"].as_u64().unwrap_or(0) >= 1,
                "backend={backend:?} nth={nth}: a retry is reported: {report}"
            );
            record::recovered(
                &Fault::TruncateBody { nth, keep: 1000 }.describe(),
                &format!("errors::{SHORT}"),
                backend,
                &file,
                &dest,
            );
        }
        // Every answer short: the retries run out and the download fails cleanly.
        refused_through_proxy(
            (&nginx, SHORT),
            backend,
            Fault::TruncateAll { keep: 1000 },
            "files/f",
            &["--chunk-size", "1M", "-c", "2"],
            "body ended after",
        );
        // /norange/ answers 200 with Content-Length: a single stream cut short cannot be
        // resumed by range, so it fails.
        let fault = Fault::TruncateBody { nth: 0, keep: 5000 };
        refused_through_proxy(
            (&nginx, SHORT),
            backend,
            fault,
            "norange/f",
            &[],
            "body ended after 5000 of 3145728 bytes",
        );
    }
}

#[test]
fn sha256_is_verified_and_a_mismatch_is_fetched_again_then_refused() {
    let src = tempfile::tempdir().expect("tmp");
    let file = src.path().join("f");
    write_data(&file, (5 << 20) + 4097, 8);
    let good = ferry_testkit::sha256_file(&file);
    let nginx = Nginx::start(src.path());
    for (backend, sink) in ferry_testkit::modes_under_test() {
        {
            let what = format!("backend={backend:?} sink={sink}");
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            // A right digest: verified, reported.
            let url = format!("http://127.0.0.1:{}/files/f", nginx.port());
            let report = ferry_testkit::get_ok(
                backend,
                &url,
                &dest,
                &["--sha256", &good, "--sink", sink, "--chunk-size", "1M"],
            );
            assert_eq!(report["verified"]["digest"], good.as_str(), "{what}");
            let hashed = report["verified"]["from_memory"].as_u64().unwrap_or(0)
                + report["verified"]["read_back"].as_u64().unwrap_or(0);
            assert_eq!(hashed, (5 << 20) + 4097, "{what}: every byte hashed once");
            assert_eq!(report["fetches"], 1, "{what}");
            std::fs::remove_file(&dest).expect("rm");
            // One corrupted byte in the second answer (byte 100: inside every range, the 4097-byte
            // tail included): the first fetch mismatches, the second
            // (through the same proxy, which corrupts only once) is right.
            let proxy = FaultProxy::start(nginx.port(), Fault::FlipByte { nth: 1, at: 100 });
            let url = format!("http://127.0.0.1:{}/files/f", proxy.port());
            let report = ferry_testkit::get_ok(
                backend,
                &url,
                &dest,
                &["--sha256", &good, "--sink", sink, "--chunk-size", "1M"],
            );
            assert_eq!(
                report["fetches"], 2,
                "{what}: fetched again after a mismatch"
            );
            record::recovered(
                &Fault::FlipByte { nth: 1, at: 100 }.describe(),
                "errors::sha256_is_verified_and_a_mismatch_is_fetched_again_then_refused",
                backend,
                &file,
                &dest,
            );
            std::fs::remove_file(&dest).expect("rm");
            // A wrong digest: both fetches mismatch, the download fails, nothing is left.
            let wrong = "0".repeat(64);
            let url = format!("http://127.0.0.1:{}/files/f", nginx.port());
            let o = get(backend, &url, &dest, &["--sha256", &wrong, "--sink", sink]);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(REMOTE), "{what}: {stderr}");
            let lines: Vec<_> = stderr.lines().collect();
            assert_eq!(
                lines.len(),
                2,
                "{what}: a warning, then the error: {stderr}"
            );
            assert!(
                lines[0].contains("WARN") && lines[0].contains("fetching the file again"),
                "{what}: {stderr}"
            );
            assert!(
                lines[1].starts_with("ferry: error: ")
                    && lines[1].contains("sha256 mismatch after 2 fetches"),
                "{what}: {stderr}"
            );
            assert!(
                !stderr.contains('\u{1b}'),
                "{what}: no colour on a pipe: {stderr}"
            );
            assert_no_output(&dest, &what);
        }
    }
    for backend in backends_under_test() {
        // Not a digest: a usage error before anything is fetched.
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let url = format!("http://127.0.0.1:{}/files/f", nginx.port());
        let o = get(backend, &url, &dest, &["--sha256", "abc"]);
        assert_clean_failure(&o, USAGE, "invalid sha256", &format!("backend={backend:?}"));
        assert_no_output(&dest, "bad sha256");
    }
}
