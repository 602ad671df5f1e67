//! ferry's promise — nothing partial, unverified or foreign ever stands under a final name — tried
//! as an attacker would, through the real binary, on each back-end: symlinks and hard links
//! planted under the names ferry writes (in an output directory and in a shared cache), a job
//! whose outputs collide with each other's partial files, two processes writing one output at
//! once, an origin whose answer outgrows the listed size, and revisions that would name a file
//! outside the cache. Each trial goes into the reliability record with the bytes it damaged.
//!
//! One long file on purpose: it is issue 27's checklist, one test per hostile case in the order
//! the issue lists them, so a reader can tick them off; the steps they share are in `testkit/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::hostile::{HostileOrigin, answer, request_path, response};
use ferry_testkit::hub::PULL_PARTIAL;
use ferry_testkit::hub::StaticHub as Hub;
use ferry_testkit::record::{self, Damage, Trial};
use ferry_testkit::{
    Backend, Fault, FaultProxy, Nginx, assert_same_file, backends_under_test, ferry, ferry_bin,
    ferry_command, get_ok, pull_args, pull_into, write_data,
};

const VICTIM: &[u8] = b"precious bytes that belong to someone else\n";

/// A file outside every directory ferry writes, which no run may change.
fn victim(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, VICTIM).expect("victim");
    p
}

/// What a run did to a victim: every byte changed or missing is corrupted.
fn victim_damage(p: &Path) -> Damage {
    let now = std::fs::read(p).unwrap_or_default();
    let d = record::damage_bytes(VICTIM, &now);
    Damage {
        lost: 0,
        corrupted: d.lost + d.corrupted,
        checked: VICTIM.len() as u64,
    }
}

fn assert_regular(p: &Path, what: &str) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{what}: {}: {e}", p.display()));
    assert!(
        m.file_type().is_file(),
        "{what}: {} is not a regular file",
        p.display()
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that run `o` was refused: it exited with `code` (`None`: with any failure) and said
/// `needle` on stderr. Each message names `what` and shows ferry's stderr.
fn assert_refused(o: &Output, code: Option<i32>, needle: &str, what: &str) {
    let err = stderr(o);
    match code {
        Some(code) => assert_eq!(o.status.code(), Some(code), "{what}: {err}"),
        None => assert!(!o.status.success(), "{what}: must fail: {err}"),
    }
    assert!(err.contains(needle), "{what}: {err}");
}

/// A hostile case ferry must refuse without writing anything, as the reliability record names
/// it.
struct Refusal<'a> {
    /// The fault and the test that tries it.
    trial: (&'a str, &'a str),
    /// What must come of it, in the record's words.
    outcome: &'a str,
    /// The exit code (`None`: any failure) and words the error must say.
    error: (Option<i32>, &'a str),
    /// The failure message when something was written ("nothing may be written").
    nothing: &'a str,
}

impl Refusal<'_> {
    /// Records the trial of run `o` on `backend`, `written` (the bytes or entries that appeared
    /// where none may) counted as corrupted; then asserts that ferry refused and wrote nothing,
    /// and says on which back-end it ran.
    fn check(&self, backend: Backend, o: &Output, written: u64, what: &str) {
        let damage = Damage {
            corrupted: written,
            ..Damage::default()
        };
        Trial::once(self.trial, Some(backend), self.outcome, damage).record();
        assert_refused(o, self.error.0, self.error.1, what);
        assert_eq!(written, 0, "{what}: {}", self.nothing);
        eprintln!("ran on backend {backend:?}: {what}: refused, nothing written");
    }
}

#[test]
fn a_symlink_or_hard_link_at_the_partial_name_is_never_written_through() {
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), 3 * (1 << 20) + 5, 11);
    let nginx = Nginx::start(src.path());
    for backend in backends_under_test() {
        for (kind, chunk) in [("symlink", "1M"), ("hard link", "1M"), ("symlink", "8M")] {
            let out = tempfile::tempdir().expect("tmp");
            let victim = victim(out.path(), "victim");
            let dest = out.path().join("f");
            let partial = out.path().join("f.incomplete");
            match kind {
                "symlink" => std::os::unix::fs::symlink(&victim, &partial).expect("plant"),
                _ => std::fs::hard_link(&victim, &partial).expect("plant"),
            }
            let what = format!("backend={backend:?} {kind} at f.incomplete, chunks {chunk}");
            let args = ["--chunk-size", chunk];
            get_ok(backend, &nginx.url("files", "f"), &dest, &args);
            let mut damage = record::damage(&src.path().join("f"), &dest);
            damage += victim_damage(&victim);
            Trial::once(
                (
                    &format!("a {kind} planted at the partial file's name"),
                    "hardening::a_symlink_or_hard_link_at_the_partial_name_is_never_written_through",
                ),
                Some(backend),
                "the link was removed, not followed; the victim is intact",
                damage,
            )
            .record();
            assert_eq!(std::fs::read(&victim).expect("victim"), VICTIM, "{what}");
            assert_regular(&dest, &what);
            assert_same_file(&src.path().join("f"), &dest, &what);
            eprintln!("ran on backend {backend:?}: {what}: victim intact");
        }
    }
}

/// Where a pull goes, not made yet: a fresh temporary folder (beside the cache: what a run must
/// not touch goes there), the cache in it, and `org/model`'s folder in that cache.
fn scratch_cache() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let cache = dir.path().join("cache");
    let folder = cache.join("models--org--model");
    (dir, cache, folder)
}

#[test]
fn a_pull_into_a_shared_cache_never_writes_through_planted_links() {
    let hub = Hub::start(|_| None);
    let big = &hub.repo.files[0];
    for backend in backends_under_test() {
        let (dir, cache, folder) = scratch_cache();
        std::fs::create_dir_all(folder.join("blobs")).expect("blobs");
        std::fs::create_dir_all(folder.join(".ferry")).expect("journal dir");
        let victims = [victim(dir.path(), "v1"), victim(dir.path(), "v2")];
        // The partial blob, and the journal's temporary file as ferry used to name it.
        let planted = [
            folder.join(format!("blobs/{}{PULL_PARTIAL}", big.etag)),
            folder.join(format!(".ferry/{}.journal.tmp", hub.repo.commit)),
        ];
        for (v, p) in victims.iter().zip(&planted) {
            std::os::unix::fs::symlink(v, p).expect("plant");
        }
        let o = pull_into(backend, &hub.endpoint(), &cache, &[]);
        let what = format!("backend={backend:?} links planted in the cache");
        let mut damage = Damage::default();
        for v in &victims {
            damage += victim_damage(v);
        }
        let snap = folder.join("snapshots").join(&hub.repo.commit);
        for f in &hub.repo.files {
            damage += record::damage(&f.source, &snap.join(&f.path));
        }
        Trial::once(
            (
                "symlinks planted in a shared cache (partial blob, journal temp file)",
                "hardening::a_pull_into_a_shared_cache_never_writes_through_planted_links",
            ),
            Some(backend),
            "the links were not followed; every file verified",
            damage,
        )
        .record();
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        for v in &victims {
            assert_eq!(std::fs::read(v).expect("victim"), VICTIM, "{what}");
        }
        for f in &hub.repo.files {
            assert_regular(&folder.join("blobs").join(&f.etag), &what);
            assert_same_file(&f.source, &snap.join(&f.path), &what);
        }
        eprintln!("ran on backend {backend:?}: {what}: victims intact, snapshot right");

        // A directory of the repo's folder swapped for a symlink out of the cache: refused,
        // nothing written where it points.
        let (dir, cache, folder) = scratch_cache();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::create_dir_all(&folder).expect("folder");
        std::os::unix::fs::symlink(&outside, folder.join("snapshots")).expect("plant");
        let o = pull_into(backend, &hub.endpoint(), &cache, &[]);
        let what = format!("backend={backend:?} snapshots/ is a symlink out of the cache");
        let written = std::fs::read_dir(&outside).expect("outside").count();
        Refusal {
            trial: (
                "a directory of the cache swapped for a symlink out of it",
                "hardening::a_pull_into_a_shared_cache_never_writes_through_planted_links",
            ),
            outcome: "refused with a clear error; nothing written outside",
            error: (None, "follows no symlink"),
            nothing: "nothing may appear outside the cache",
        }
        .check(backend, &o, written as u64, &what);
    }
}

#[test]
fn outputs_that_collide_with_partial_names_are_refused() {
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("x"), 1000, 1);
    write_data(&src.path().join("x.incomplete"), 2000, 2);
    write_data(&src.path().join("y.ferry-tmp-1234"), 10, 3);
    let nginx = Nginx::start(src.path());
    for backend in backends_under_test() {
        for (names, needle) in [
            (&["x", "x.incomplete"][..], "partial file of"),
            (&["x.incomplete", "x"][..], "partial file of"),
            (&["y.ferry-tmp-1234"][..], "temporary files"),
        ] {
            let out = tempfile::tempdir().expect("tmp");
            let list = out.path().join("list");
            let urls: Vec<String> = names.iter().map(|n| nginx.url("files", n)).collect();
            std::fs::write(&list, urls.join("\n")).expect("list");
            let dest = out.path().join("d");
            std::fs::create_dir(&dest).expect("dest");
            let o = ferry(
                backend,
                &[
                    "get",
                    "-i",
                    list.to_str().expect("utf-8"),
                    "-o",
                    dest.to_str().expect("utf-8"),
                ],
            );
            let what = format!("backend={backend:?} outputs {names:?}");
            let left = std::fs::read_dir(&dest).expect("dest").count();
            Refusal {
                trial: (
                    "a job whose outputs collide with partial or temporary names",
                    "hardening::outputs_that_collide_with_partial_names_are_refused",
                ),
                outcome: "refused before any request; nothing written",
                error: (Some(2), needle),
                nothing: "nothing may be written",
            }
            .check(backend, &o, left as u64, &what);
        }
        // A listing naming a file like ferry's partials (which `ferry gc` would remove).
        let hub = Hub::start(|repo| {
            let mut tree = ferry_testkit::hub::tree_json(&repo.files);
            tree[0]["path"] = "weights.bin.ferry-partial".into();
            tree[0]["type"] = "file".into();
            tree[0]["size"] = 10.into();
            Some(tree)
        });
        let cache = tempfile::tempdir().expect("tmp");
        let o = pull_into(backend, &hub.endpoint(), cache.path(), &[]);
        let what = format!("backend={backend:?} a listing naming weights.bin.ferry-partial");
        assert_refused(&o, Some(13), "named like ferry's partial", &what);
        eprintln!("ran on backend {backend:?}: colliding outputs refused");
    }
}

/// Waits (bounded) for `p` to exist while `child` runs.
fn wait_for_file(p: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.exists() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the first download ended before {} appeared",
            p.display()
        );
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a child on drop (a failing test leaves no process behind).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A quiet `ferry pull` of `org/model` from `endpoint` into `cache` on `backend`, on one
/// connection limited to `rate`, started so that the test can act while it runs (and killed when
/// the guard drops).
fn slow_pull(backend: Backend, endpoint: &str, cache: &Path, rate: &str) -> Reap {
    let child = ferry_command(backend)
        .args(["--limit-rate", rate, "pull", "org/model", "-q", "-c", "1"])
        .args(["--endpoint", endpoint, "--cache-dir"])
        .arg(cache)
        .env_remove("HF_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    Reap(child)
}

#[test]
fn two_downloads_of_one_output_never_publish_a_mix() {
    let src = tempfile::tempdir().expect("tmp");
    let size = 6 * (1 << 20) + 3;
    write_data(&src.path().join("f"), size, 21);
    let nginx = Nginx::start(src.path());
    // The first download is slow (one throttled connection), so the second starts while it
    // writes.
    let slow = FaultProxy::start(
        nginx.port(),
        Fault::Throttle {
            bytes_per_sec: 1 << 20,
        },
    );
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let first = ferry_command(backend)
            .args(["get", "-q", "-c", "1", "--chunk-size", "1M"])
            .arg(format!("http://127.0.0.1:{}/files/f", slow.port()))
            .arg("-o")
            .arg(&dest)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut first = Reap(first);
        wait_for_file(&out.path().join("f.incomplete"), &mut first.0);
        let second = ferry(
            backend,
            &[
                "get",
                &nginx.url("files", "f"),
                "-o",
                dest.to_str().expect("utf-8"),
            ],
        );
        let what = format!("backend={backend:?} a second get of the same output");
        let status = first.0.wait().expect("wait");
        let damage = record::damage(&src.path().join("f"), &dest);
        Trial::once(
            (
                "two ferry get runs writing one output at once",
                "hardening::two_downloads_of_one_output_never_publish_a_mix",
            ),
            Some(backend),
            "the second stopped at once (exit 14); the first published its own verified file",
            damage,
        )
        .record();
        assert_eq!(
            second.status.code(),
            Some(14),
            "{what}: {}",
            stderr(&second)
        );
        assert!(
            stderr(&second).contains("another ferry is writing"),
            "{what}"
        );
        assert!(status.success(), "{what}: the first download failed");
        assert_same_file(&src.path().join("f"), &dest, &what);
        assert!(!out.path().join("f.incomplete").exists(), "{what}");
        eprintln!("ran on backend {backend:?}: {what}: refused with exit 14, first intact");
    }
}

/// A hostile Hub for `org/model` with one file `f.bin` listed with `listed` bytes (and the
/// sha256 of that many zeros), whose `resolve` answer is `body`.
fn hostile_hub(
    listed: u64,
    body: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
) -> HostileOrigin {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(vec![0u8; listed as usize]));
    let commit = "c".repeat(40);
    let revision = serde_json::json!({
        "id": "org/model", "sha": commit, "siblings": [{"rfilename": "f.bin"}]
    })
    .to_string();
    let tree = serde_json::json!([{
        "type": "file", "path": "f.bin", "size": listed, "oid": "d".repeat(40),
        "lfs": {"oid": sha, "size": listed, "pointerSize": 130}
    }])
    .to_string();
    HostileOrigin::start(move |head| {
        let path = request_path(head);
        let json = |s: &str| {
            response(
                "200 OK",
                &[
                    ("Content-Type", "application/json".into()),
                    ("Content-Length", s.len().to_string()),
                    ("Connection", "close".into()),
                ],
                s.as_bytes(),
            )
        };
        if path.contains("/revision/") {
            json(&revision)
        } else if path.contains("/tree/") {
            json(&tree)
        } else if path.contains("/resolve/") {
            body(head)
        } else {
            response("404 Not Found", &[("Content-Length", "0".into())], b"")
        }
    })
}

#[test]
fn an_answer_larger_than_the_listing_is_refused_before_it_is_written() {
    const LISTED: u64 = 1000;
    const SENT: usize = 8 << 20;
    type Body = dyn Fn(&str) -> Vec<u8> + Send + Sync;
    let cases: Vec<(&str, Box<Body>)> = vec![
        (
            "a body with no length that runs past the listed size",
            Box::new(|_| {
                response(
                    "200 OK",
                    &[("Connection", "close".into())],
                    &vec![0u8; SENT],
                )
            }),
        ),
        (
            "a Content-Length above the listed size",
            Box::new(|_| {
                response(
                    "200 OK",
                    &[
                        ("Content-Length", SENT.to_string()),
                        ("Connection", "close".into()),
                    ],
                    &vec![0u8; SENT],
                )
            }),
        ),
        (
            "a Content-Range total above the listed size",
            Box::new(|head| {
                // The range asked for, honestly, of a file larger than listed.
                let range = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("range: bytes=")
                            .map(str::to_owned)
                    })
                    .unwrap_or_default();
                let (a, b) = range.split_once('-').unwrap_or(("0", ""));
                let a: usize = a.trim().parse().unwrap_or(0);
                let b: usize = b.trim().parse().unwrap_or(SENT - 1).min(SENT - 1);
                response(
                    "206 Partial Content",
                    &[
                        ("Content-Range", format!("bytes {a}-{b}/{SENT}")),
                        ("Content-Length", (b + 1 - a).to_string()),
                        ("Connection", "close".into()),
                    ],
                    &vec![0u8; b + 1 - a],
                )
            }),
        ),
    ];
    for (name, body) in cases {
        let body: std::sync::Arc<Body> = body.into();
        for backend in backends_under_test() {
            let b = std::sync::Arc::clone(&body);
            let hub = hostile_hub(LISTED, move |head| b(head));
            let dir = tempfile::tempdir().expect("tmp");
            let cache = dir.path().join("cache");
            let o = pull_into(backend, &hub.url(), &cache, &[]);
            let what = format!("backend={backend:?} {name}");
            let blobs = cache.join("models--org--model/blobs");
            let written: u64 = std::fs::read_dir(&blobs)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.metadata().map_or(0, |m| m.len()))
                        .sum()
                })
                .unwrap_or(0);
            Refusal {
                trial: (
                    &format!("hostile origin: {name}"),
                    "hardening::an_answer_larger_than_the_listing_is_refused_before_it_is_written",
                ),
                outcome: "refused before the bytes past the listed size were written; nothing kept",
                error: (Some(3), "listed with 1000"),
                nothing: "no byte may stay in the cache",
            }
            .check(backend, &o, written, &what);
        }
    }
}

#[test]
fn revisions_that_would_name_a_file_outside_the_cache_are_refused() {
    let hub = Hub::start(|_| None);
    for backend in backends_under_test() {
        for rev in ["../..", "/etc/x", "main/../../escape", "a\nb", ".hidden"] {
            let dir = tempfile::tempdir().expect("tmp");
            let cache = dir.path().join("cache");
            let before = hub.nginx.requests(0).len();
            let o = pull_into(backend, &hub.endpoint(), &cache, &["--revision", rev]);
            let what = format!("backend={backend:?} --revision {rev:?}");
            assert_refused(&o, Some(2), "invalid revision", &what);
            assert_eq!(
                hub.nginx.requests(0).len(),
                before,
                "{what}: no request made"
            );
            let outside: Vec<_> = std::fs::read_dir(dir.path())
                .expect("dir")
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .filter(|n| n != "cache")
                .collect();
            assert!(outside.is_empty(), "{what}: wrote {outside:?}");
        }
        eprintln!("ran on backend {backend:?}: hostile revisions refused");
    }
}

/// An origin answering every request with `body` (200, a length, then close).
fn plain_origin(body: &'static [u8]) -> HostileOrigin {
    HostileOrigin::start(move |_| answer("200 OK", &[], body))
}

/// `ferry get ORIGIN/f -o DIR/f` on `backend`; the output, its folder and path.
fn get_from(backend: Backend, origin: &HostileOrigin) -> (Output, tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().expect("tmp");
    let dest = out.path().join("f");
    let url = format!("{}/f", origin.url());
    let o = ferry(backend, &["get", &url, "-o", dest.to_str().expect("utf-8")]);
    (o, out, dest)
}

/// The value of header `name` in a request head (names compared without case).
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

#[test]
fn credentials_in_a_url_are_sent_as_basic_auth_and_never_shown() {
    // "user:s3cr@t" -> Basic dXNlcjpzM2NyQHQ=
    const BASIC: &str = "Basic dXNlcjpzM2NyQHQ=";
    for backend in backends_under_test() {
        for (status, ok) in [("200 OK", true), ("404 Not Found", false)] {
            let origin = HostileOrigin::start(move |_| answer(status, &[], b"hello"));
            let url = origin.url().replace("http://", "http://user:s3cr%40t@") + "/f";
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("f");
            let o = ferry(
                backend,
                &[
                    "-vv",
                    "get",
                    &url,
                    "-o",
                    dest.to_str().expect("utf-8"),
                    "--json",
                ],
            );
            let what = format!("backend={backend:?} credentials in the URL, answer {status}");
            assert_eq!(o.status.success(), ok, "{what}: {}", stderr(&o));
            let shown = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
            for secret in ["s3cr", "dXNlcjpzM2NyQHQ", "user:"] {
                assert!(
                    !shown.contains(secret),
                    "{what}: {secret:?} shown in {shown}"
                );
            }
            let requests = origin.requests();
            assert!(!requests.is_empty(), "{what}");
            for r in &requests {
                assert_eq!(header(r, "authorization"), Some(BASIC), "{what}: {r}");
                assert!(
                    !r.contains("s3cr"),
                    "{what}: the URL's userinfo was sent: {r}"
                );
            }
        }
        eprintln!("ran on backend {backend:?}: URL credentials as Basic auth, never shown");
    }
}

#[test]
fn a_token_that_would_break_a_header_is_refused_and_a_token_file_is_read() {
    let listed = 5u64;
    for backend in backends_under_test() {
        let hub = hostile_hub(listed, |_| answer("200 OK", &[], &[0u8; 5]));
        let dir = tempfile::tempdir().expect("tmp");
        let cache = dir.path().join("cache");
        // On the command line, and in a file: CR LF would start a header of the attacker's.
        let bad_file = dir.path().join("bad-token");
        std::fs::write(&bad_file, "hf_abc\r\nX-Injected: 1\n").expect("token file");
        for extra in [
            vec!["--token", "hf_abc\r\nX-Injected: 1"],
            vec!["--token-file", bad_file.to_str().expect("utf-8")],
        ] {
            let o = pull_into(backend, &hub.url(), &cache, &extra);
            let what = format!("backend={backend:?} pull {extra:?}");
            assert_refused(&o, Some(2), "cannot go in an HTTP header", &what);
            assert!(
                !stderr(&o).contains("hf_abc"),
                "{what}: the token was shown"
            );
            assert!(hub.requests().is_empty(), "{what}: no request may be sent");
        }
        // `--token-file -`: the token from standard input, sent as a bearer token.
        let endpoint = hub.url();
        let mut child = ferry_command(backend)
            .args(pull_args(&endpoint, &cache, &["--token-file", "-"]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(b"hf_from_stdin\n").expect("write token");
        }
        let o = child.wait_with_output().expect("wait");
        let what = format!("backend={backend:?} --token-file -");
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        let api = hub
            .requests()
            .into_iter()
            .find(|r| request_path(r).contains("/api/"))
            .expect("an API request");
        assert_eq!(
            header(&api, "authorization"),
            Some("Bearer hf_from_stdin"),
            "{what}"
        );
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("hf_from_stdin"),
            "{what}"
        );
        eprintln!("ran on backend {backend:?}: bad tokens refused, --token-file - read");
    }
}

#[test]
fn redirects_go_only_to_http_and_never_from_public_into_private_addresses() {
    for backend in backends_under_test() {
        // Another scheme, and a loop: exit 3, nothing left.
        for (location, needle) in [
            ("file:///etc/passwd", "refused"),
            ("ftp://127.0.0.1/x", "refused"),
            ("/again", "more than 10 redirects"),
        ] {
            let origin = HostileOrigin::start(move |_| {
                answer("302 Found", &[("Location", location.into())], b"")
            });
            let (o, _out, dest) = get_from(backend, &origin);
            let what = format!("backend={backend:?} redirect to {location}");
            ferry_testkit::assert_clean_failure(&o, 3, needle, &what);
            ferry_testkit::assert_no_output(&dest, &what);
            assert!(origin.requests().len() <= 11, "{what}: the loop must end");
        }
        // A public origin (reached through a proxy, so nothing leaves loopback) redirecting to
        // the link-local metadata address: refused unless allowed.
        let proxy = HostileOrigin::start(|head| {
            if request_path(head).starts_with("http://203.0.113.7/") {
                answer(
                    "302 Found",
                    &[("Location", "http://169.254.169.254/latest/meta-data".into())],
                    b"",
                )
            } else {
                answer("200 OK", &[], b"meta")
            }
        });
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("f");
        let dest_s = dest.to_str().expect("utf-8");
        let proxy_url = proxy.url();
        let base = [
            "--proxy",
            proxy_url.as_str(),
            "get",
            "http://203.0.113.7/f",
            "-o",
            dest_s,
        ];
        let o = ferry(backend, &base);
        let what = format!("backend={backend:?} public -> link-local redirect");
        ferry_testkit::assert_clean_failure(&o, 3, "--allow-private-redirects", &what);
        ferry_testkit::assert_no_output(&dest, &what);
        assert_eq!(
            proxy.requests().len(),
            1,
            "{what}: the private address was not asked"
        );
        let mut allowed = vec!["--allow-private-redirects"];
        allowed.extend_from_slice(&base);
        let o = ferry(backend, &allowed);
        assert!(o.status.success(), "{what}, allowed: {}", stderr(&o));
        assert_eq!(
            std::fs::read(&dest).expect("out"),
            b"meta",
            "{what}, allowed"
        );
        eprintln!("ran on backend {backend:?}: redirects policed");
    }
}

#[test]
fn an_encoded_answer_ferry_did_not_ask_for_is_refused() {
    for backend in backends_under_test() {
        let origin = HostileOrigin::start(|_| {
            answer(
                "200 OK",
                &[("Content-Encoding", "gzip".into())],
                b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
            )
        });
        let (o, _out, dest) = get_from(backend, &origin);
        let what = format!("backend={backend:?} Content-Encoding: gzip");
        ferry_testkit::assert_clean_failure(&o, 3, "Content-Encoding: gzip", &what);
        ferry_testkit::assert_no_output(&dest, &what);
        eprintln!("ran on backend {backend:?}: {what} refused");
    }
    // The same origin without the encoding: saved (the refusal is of the encoding alone).
    let origin = plain_origin(b"plain");
    let out = tempfile::tempdir().expect("tmp");
    let dest = out.path().join("f");
    get_ok(
        Backend::Portable,
        &format!("{}/f", origin.url()),
        &dest,
        &[],
    );
    assert_eq!(std::fs::read(&dest).expect("out"), b"plain");
}

#[test]
fn a_listing_that_never_ends_or_trickles_is_refused() {
    for backend in backends_under_test() {
        // Tree pages that link to a next page forever, each new.
        let pages = HostileOrigin::start(|head| {
            let path = request_path(head);
            if path.contains("/revision/") {
                let body = serde_json::json!({"id": "org/model", "sha": "c".repeat(40)});
                let body = body.to_string();
                return answer("200 OK", &[], body.as_bytes());
            }
            let n: u64 = path
                .rsplit_once("cursor=")
                .and_then(|(_, n)| n.parse().ok())
                .unwrap_or(0);
            let link = format!(
                "<{}?recursive=true&cursor={}>; rel=\"next\"",
                path.split('?').next().unwrap_or(""),
                n + 1
            );
            answer("200 OK", &[("Link", link)], b"[]")
        });
        let dir = tempfile::tempdir().expect("tmp");
        let o = pull_into(backend, &pages.url(), &dir.path().join("cache"), &[]);
        let what = format!("backend={backend:?} tree pages without end");
        assert_refused(&o, Some(13), "more than 2000 pages", &what);
        assert!(
            pages.requests().len() <= 2002,
            "{what}: asked {}",
            pages.requests().len()
        );

        // A revision answer that trickles a byte every 50 ms: it never stalls a read for the
        // read timeout (0.5 s here) but never completes within 4 of them.
        let revision =
            serde_json::json!({"id": "org/model", "sha": "c".repeat(40), "pad": "x".repeat(400)})
                .to_string();
        let trickle = HostileOrigin::start_paced(
            move |_| {
                response(
                    "200 OK",
                    &[
                        ("Content-Length", revision.len().to_string()),
                        ("Connection", "close".into()),
                    ],
                    revision.as_bytes(),
                )
            },
            Some((1, Duration::from_millis(50))),
        );
        let o = pull_into(
            backend,
            &trickle.url(),
            &dir.path().join("cache2"),
            &["--read-timeout", "0.5"],
        );
        let what = format!("backend={backend:?} a trickling answer");
        assert_refused(&o, Some(3), "no complete answer within 2 s", &what);
        eprintln!("ran on backend {backend:?}: endless pages and a trickle refused");
    }
}

/// The interpreters whose huggingface_hub the interoperability test runs: an old release
/// (0.26, before 1.18: it resumes any `BLOB.incomplete` from its size) from the virtualenv
/// `scripts/setup.sh` makes, and the current one `python3` imports.
fn hf_interpreters() -> Vec<(String, PathBuf)> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/hf-venvs/huggingface_hub-0.26.5/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: scripts/setup.sh makes it",
        venv.display()
    );
    vec![
        ("huggingface_hub 0.26.5".into(), venv),
        ("huggingface_hub (current)".into(), PathBuf::from("python3")),
    ]
}

#[test]
fn huggingface_hub_old_and_new_never_adopt_a_partial_of_ferrys_and_share_a_cache_with_it() {
    use ferry_testkit::hf::hf_client_python;
    // The upstream: a mirror ferry pulled from a static Hub, served by ferry serve.
    let hub = Hub::start(|_| None);
    let up = tempfile::tempdir().expect("tmp");
    let o = pull_into(Backend::Portable, &hub.endpoint(), up.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let serve = ferry_testkit::serve::Serve::start(up.path(), None);
    let endpoint = serve.endpoint();
    let big = &hub.repo.files[0];
    let jobs = serde_json::json!([{
        "op": "snapshot", "repo": "org/model", "type": "model", "revision": "main", "file": ""
    }]);
    for backend in backends_under_test() {
        for (client, python) in hf_interpreters() {
            let (_dir, cache, folder) = scratch_cache();
            let partial = folder.join(format!("blobs/{}{PULL_PARTIAL}", big.etag));
            // 1. A pull killed while its largest blob is preallocated, then the stock client
            //    on the same cache: it must fetch the bytes, not take ferry's partial.
            let mut killed = slow_pull(backend, &endpoint, &cache, "256K");
            wait_for_file(&partial, &mut killed.0);
            drop(killed);
            let what = format!("backend={backend:?} {client} after a killed pull");
            let paths = hf_client_python(&python, &endpoint, &cache, (false, &jobs), None);
            let snap = paths.first().expect("snapshot path");
            let mut damage = Damage::default();
            for f in &hub.repo.files {
                damage += record::damage(&f.source, &snap.join(&f.path));
            }
            Trial::once(
                (
                    &format!("{client} on a cache where a pull was killed"),
                    "hardening::huggingface_hub_old_and_new_never_adopt_a_partial_of_ferrys_and_share_a_cache_with_it",
                ),
                Some(backend),
                "the client fetched every byte; ferry's partial was not taken for complete",
                damage,
            )
            .record();
            for f in &hub.repo.files {
                assert_same_file(&f.source, &snap.join(&f.path), &what);
            }
            // 2. The next pull finds every file in place and cleans what the killed one left.
            let o = pull_into(backend, &endpoint, &cache, &[]);
            assert!(o.status.success(), "{what}: {}", stderr(&o));
            let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
            assert_eq!(r["fetched"], 0, "{what}: {r}");
            assert!(!partial.exists(), "{what}: ferry's partial file was left");
            assert!(
                !folder.join(".ferry").exists(),
                "{what}: the journal was left"
            );

            // 3. A pull and the stock client at the same time, on a fresh cache: both end
            //    with every file right.
            std::fs::remove_dir_all(&cache).expect("fresh cache");
            let mut running = slow_pull(backend, &endpoint, &cache, "1M");
            wait_for_file(&partial, &mut running.0);
            let paths = hf_client_python(&python, &endpoint, &cache, (false, &jobs), None);
            let status = running.0.wait().expect("wait");
            let what = format!("backend={backend:?} {client} beside a running pull");
            assert!(status.success(), "{what}: the pull failed");
            for f in &hub.repo.files {
                assert_same_file(&f.source, &paths[0].join(&f.path), &what);
                let blob = folder.join("blobs").join(&f.etag);
                assert_same_file(&f.source, &blob, &what);
            }
            eprintln!("ran on backend {backend:?}: {client}: no partial adopted, cache shared");
        }
    }
}

/// `ferry gc ARGS --json` on `cache`; its report.
fn gc(cache: &Path, args: &[&str]) -> serde_json::Value {
    let cache_s = cache.to_str().expect("utf-8");
    let mut all = vec!["gc", "--cache-dir", cache_s, "--json"];
    all.extend_from_slice(args);
    // gc has no back-end: `--backend` would be refused.
    let o = Command::new(ferry_bin()).args(&all).output().expect("gc");
    assert!(o.status.success(), "ferry gc {args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

fn removed(report: &serde_json::Value) -> Vec<String> {
    report["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .map(|p| p.as_str().expect("path").to_owned())
        .collect()
}

#[test]
fn gc_removes_only_stale_leftovers_of_ferry_and_never_a_running_pulls() {
    let hub = Hub::start(|_| None);
    let big = &hub.repo.files[0];
    for backend in backends_under_test() {
        let (dir, cache, folder) = scratch_cache();
        let partial = folder.join(format!("blobs/{}{PULL_PARTIAL}", big.etag));
        let mut running = slow_pull(backend, &hub.endpoint(), &cache, "256K");
        wait_for_file(&partial, &mut running.0);
        // A running pull's files are never touched, however old the cutoff.
        let r = gc(&cache, &["--older-than", "0"]);
        let what = format!("backend={backend:?} gc beside a running pull");
        assert_eq!(r["busy"].as_array().map(Vec::len), Some(1), "{what}: {r}");
        assert!(removed(&r).is_empty(), "{what}: {r}");
        assert!(partial.exists(), "{what}");
        drop(running); // SIGKILL: the partial and the journal stay behind.

        // What a stranger left: a link named like ferry's partial files, pointing outside, and
        // huggingface_hub's own partial file, which is not ferry's to remove.
        let victim = victim(dir.path(), "victim");
        let link = folder.join("blobs/planted.ferry-partial");
        std::os::unix::fs::symlink(&victim, &link).expect("plant");
        let theirs = folder.join("blobs/abc.incomplete");
        std::fs::write(&theirs, b"huggingface_hub's").expect("theirs");

        let r = gc(&cache, &["--older-than", "1h"]);
        assert!(
            removed(&r).is_empty(),
            "backend={backend:?} nothing is an hour old: {r}"
        );
        let r = gc(&cache, &["--older-than", "0", "--dry-run"]);
        assert_eq!(removed(&r).len(), 3, "backend={backend:?} dry run: {r}");
        assert!(
            partial.exists() && link.exists(),
            "a dry run removes nothing"
        );
        let r = gc(&cache, &["--older-than", "0"]);
        let what = format!("backend={backend:?} gc after a killed pull");
        let gone = removed(&r);
        assert_eq!(
            gone.len(),
            3,
            "{what}: the partial, the journal, the link: {r}"
        );
        assert!(gone.iter().any(|p| p.ends_with(".journal")), "{what}: {r}");
        assert!(
            !partial.exists() && std::fs::symlink_metadata(&link).is_err(),
            "{what}"
        );
        assert!(
            !folder.join(".ferry").exists(),
            "{what}: the journal folder"
        );
        assert_eq!(std::fs::read(&victim).expect("victim"), VICTIM, "{what}");
        assert!(
            theirs.exists(),
            "{what}: huggingface_hub's file was removed"
        );
        // The cache still pulls to completion.
        let o = pull_into(backend, &hub.endpoint(), &cache, &[]);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        let snap = folder.join("snapshots").join(&hub.repo.commit);
        for f in &hub.repo.files {
            assert_same_file(&f.source, &snap.join(&f.path), &what);
        }
        eprintln!("ran on backend {backend:?}: gc kept a running pull's files, removed the rest");
    }
}

/// `ferry verify org/model --endpoint HUB ARGS --json` on `backend`: exit code and report.
fn verify(
    backend: Backend,
    endpoint: &str,
    args: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut all = vec!["verify", "org/model", "--endpoint", endpoint, "--json"];
    all.extend_from_slice(args);
    let o = ferry(backend, &all);
    let report = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code(), report, stderr(&o))
}

/// The state `verify` gave the file `path`.
fn state_of(report: &serde_json::Value, path: &str) -> String {
    report["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == path)
        .map(|f| f["state"].as_str().expect("state").to_owned())
        .unwrap_or_default()
}

/// Changes byte 100 of `p` in place and puts its mtime back, as a careless tool or an attacker
/// would; first waits out the slack a mark allows its own change time.
fn tamper_keeping_mtime(p: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    std::thread::sleep(Duration::from_millis(2_200));
    let mtime = std::fs::metadata(p)
        .expect("stat")
        .modified()
        .expect("mtime");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .expect("open");
    f.seek(SeekFrom::Start(100)).expect("seek");
    f.write_all(&[0x5a]).expect("write");
    f.set_modified(mtime).expect("put the mtime back");
}

#[test]
fn a_file_changed_in_place_is_caught_by_verify_and_the_next_pull() {
    let hub = Hub::start(|_| None);
    let (big, gone) = (&hub.repo.files[0], &hub.repo.files[5]);
    for backend in backends_under_test() {
        let (dir, cache, folder) = scratch_cache();
        let cache_s = cache.to_str().expect("utf-8");
        let o = pull_into(backend, &hub.endpoint(), &cache, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let trees = folder.join(format!("trees/{}.json", hub.repo.commit));
        assert!(trees.exists(), "the pull keeps the commit's listing");
        let (code, r, err) = verify(backend, &hub.endpoint(), &["--cache-dir", cache_s]);
        let what = format!("backend={backend:?} verify after a pull");
        assert_eq!(code, Some(0), "{what}: {err}");
        assert_eq!(
            (r["good"].as_u64(), r["listing"].as_str()),
            (Some(9), Some("kept")),
            "{r}"
        );

        // In place, mtime put back: the mark must not vouch for it any more.
        tamper_keeping_mtime(&folder.join("blobs").join(&big.etag));
        let snap = folder.join("snapshots").join(&hub.repo.commit);
        std::fs::remove_file(snap.join(&gone.path)).expect("remove a snapshot entry");
        let (code, r, err) = verify(backend, &hub.endpoint(), &["--cache-dir", cache_s]);
        let what = format!("backend={backend:?} verify after damage");
        assert_eq!(code, Some(15), "{what}: {err}");
        assert_eq!(state_of(&r, &big.path), "damaged", "{what}: {r}");
        assert_eq!(state_of(&r, &gone.path), "missing", "{what}: {r}");
        assert_eq!(r["good"], 7, "{what}: {r}");

        // The next pull does not trust the stale mark: it fetches the damaged file again.
        let o = pull_into(backend, &hub.endpoint(), &cache, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let rep: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(
            rep["fetched"], 1,
            "{what}: the changed file is fetched again: {rep}"
        );
        for f in &hub.repo.files {
            assert_same_file(&f.source, &snap.join(&f.path), &what);
        }

        // Damage again, without the kept listing (asked of the endpoint), then --repair.
        tamper_keeping_mtime(&folder.join("blobs").join(&big.etag));
        std::fs::remove_file(&trees).expect("drop the kept listing");
        let (code, r, err) = verify(
            backend,
            &hub.endpoint(),
            &["--cache-dir", cache_s, "--repair"],
        );
        let what = format!("backend={backend:?} verify --repair");
        assert_eq!(code, Some(0), "{what}: {err}");
        assert_eq!(
            (r["good"].as_u64(), r["listing"].as_str()),
            (Some(9), Some("kept")),
            "{r}"
        );
        for f in &hub.repo.files {
            assert_same_file(&f.source, &snap.join(&f.path), &what);
        }

        // A kept listing planted to name a path outside the mirror is refused.
        std::fs::write(
            &trees,
            br#"{"format_version":1,"files":{"../../escape":{"size":1,"blob_id":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}}"#,
        )
        .expect("plant");
        let (code, _, err) = verify(backend, &hub.endpoint(), &["--cache-dir", cache_s]);
        assert_eq!(
            code,
            Some(13),
            "backend={backend:?} hostile kept listing: {err}"
        );

        // A local dir, the same way.
        let local = dir.path().join("local");
        let local_s = local.to_str().expect("utf-8");
        let o = ferry(
            backend,
            &[
                "pull",
                "org/model",
                "--endpoint",
                &hub.endpoint(),
                "--local-dir",
                local_s,
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        tamper_keeping_mtime(&local.join(&big.path));
        let (code, r, err) = verify(backend, &hub.endpoint(), &["--local-dir", local_s]);
        assert_eq!(code, Some(15), "backend={backend:?} local dir: {err}");
        assert_eq!(state_of(&r, &big.path), "damaged", "{r}");
        eprintln!("ran on backend {backend:?}: in-place change caught by verify and pull");
    }
}

/// A cache holding `org/model` as `ferry pull` (portable) writes it, with `extra` pull options.
fn pulled_cache(hub: &Hub, extra: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let o = pull_into(Backend::Portable, &hub.endpoint(), dir.path(), extra);
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

// `ferry serve` runs on blocking std threads, not on a back-end: these tests run it once.

#[test]
fn serve_opens_every_file_beneath_the_root_at_request_time() {
    let hub = Hub::start(|_| None);
    let cache = pulled_cache(&hub, &[]);
    let big = &hub.repo.files[0];
    let serve = ferry_testkit::serve::Serve::start(cache.path(), None);
    let target = format!("/org/model/resolve/main/{}", big.path);
    let (status, _, body) = serve.get(&target);
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(&big.source).expect("source"));
    // After the scan, the blobs folder is swapped for a link to a folder outside the root that
    // holds a file of the blob's name and size.
    let outside = tempfile::tempdir().expect("tmp");
    let secret = vec![b'S'; big.size as usize];
    std::fs::write(outside.path().join(&big.etag), &secret).expect("secret");
    let folder = cache.path().join("models--org--model");
    std::fs::rename(folder.join("blobs"), folder.join("blobs.moved")).expect("move");
    std::os::unix::fs::symlink(outside.path(), folder.join("blobs")).expect("plant");
    let (status, _, body) = serve.get(&target);
    Trial::once(
        (
            "a served folder swapped for a symlink out of the root after start-up",
            "hardening::serve_opens_every_file_beneath_the_root_at_request_time",
        ),
        None,
        "refused (500): nothing from outside the root was sent",
        Damage {
            corrupted: body.iter().filter(|&&b| b == b'S').count() as u64,
            ..Damage::default()
        },
    )
    .record();
    assert_ne!(status, 200, "a file outside the root was served");
    assert!(
        !body.windows(16).any(|w| w == [b'S'; 16]),
        "secret bytes sent"
    );
}

#[test]
fn serve_does_not_present_a_partial_snapshot_as_the_whole_commit() {
    let hub = Hub::start(|_| None);
    // A pull of the small files only: the kept listing names every file of the commit.
    let cache = pulled_cache(&hub, &["--include", "*.json"]);
    let serve = ferry_testkit::serve::Serve::start(cache.path(), None);
    let (status, _, body) = serve.get("/api/models/org/model/tree/main?recursive=true");
    assert_eq!(status, 200);
    let tree: serde_json::Value = serde_json::from_slice(&body).expect("tree JSON");
    let listed: Vec<&str> = tree
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["type"] == "file")
        .map(|e| e["path"].as_str().expect("path"))
        .collect();
    assert_eq!(
        listed.len(),
        hub.repo.files.len(),
        "the whole commit is listed: {listed:?}"
    );
    let shard = &hub.repo.files[0];
    let (status, head, _) = serve.get(&format!("/org/model/resolve/main/{}", shard.path));
    assert_eq!(status, 404, "a file not here is missing, as on the Hub");
    assert!(head.contains("x-error-code: entrynotfound"), "{head}");
    let (status, _, _) = serve.get("/org/model/resolve/main/config.json");
    assert_eq!(status, 200, "a file here is served");
    // A mirror pulling from it does not take the part for the commit.
    for backend in backends_under_test() {
        let downstream = tempfile::tempdir().expect("tmp");
        let o = pull_into(backend, &serve.endpoint(), downstream.path(), &[]);
        let what = format!("backend={backend:?} a pull from a partial mirror");
        assert_eq!(o.status.code(), Some(8), "{what}: {}", stderr(&o));
        let refs = downstream.path().join("models--org--model/refs/main");
        assert!(!refs.exists(), "{what}: the partial commit got a ref");
        eprintln!("ran on backend {backend:?}: {what} failed with exit 8, no ref");
    }
}

/// The peak resident memory of process `pid`, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn serve_reads_refs_without_following_links_or_reading_whole_files() {
    let hub = Hub::start(|_| None);
    // A refs/ folder swapped for a link to one of the attacker's.
    let linked = pulled_cache(&hub, &[]);
    let folder = linked.path().join("models--org--model");
    let outside = tempfile::tempdir().expect("tmp");
    std::fs::write(outside.path().join("main"), &hub.repo.commit).expect("ref");
    std::fs::remove_dir_all(folder.join("refs")).expect("refs");
    std::os::unix::fs::symlink(outside.path(), folder.join("refs")).expect("plant");
    let serve = ferry_testkit::serve::Serve::start(linked.path(), None);
    let (status, _, _) = serve.get("/api/models/org/model/revision/main");
    assert_eq!(status, 404, "a symlinked refs/ was followed");
    let (status, _, _) = serve.get(&format!(
        "/api/models/org/model/revision/{}",
        hub.repo.commit
    ));
    assert_eq!(status, 200, "the snapshot itself is still served");
    drop(serve);
    // A ref file of 2 GiB (sparse): read as its first bytes only.
    let big = pulled_cache(&hub, &[]);
    let f = std::fs::File::create(big.path().join("models--org--model/refs/big")).expect("ref");
    f.set_len(2 << 30).expect("sparse");
    let serve = ferry_testkit::serve::Serve::start(big.path(), None);
    let (status, _, _) = serve.get("/api/models/org/model/revision/main");
    assert_eq!(status, 200);
    let peak = peak_rss_kib(serve.pid());
    assert!(
        peak < 256 << 10,
        "ferry serve peaked at {peak} KiB reading refs"
    );
    eprintln!("ferry serve peak RSS with a 2 GiB ref file: {peak} KiB");
}

/// Sends `raw` to the server on a new connection and reads until it closes: every status line
/// it answered, in order.
fn raw_statuses(serve: &ferry_testkit::serve::Serve, raw: &[u8]) -> Vec<u16> {
    use std::io::{Read, Write};
    let mut s = serve.connect();
    s.write_all(raw).expect("send");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    String::from_utf8_lossy(&all)
        .lines()
        .filter_map(|l| l.strip_prefix("HTTP/1.1 "))
        .filter_map(|l| l.get(..3)?.parse().ok())
        .collect()
}

#[test]
fn serve_parses_heads_strictly_and_pages_right_behind_a_reverse_proxy() {
    let hub = Hub::start(|_| None);
    let cache = pulled_cache(&hub, &[]);
    let serve = ferry_testkit::serve::Serve::start_with(
        cache.path(),
        Some(3),
        None,
        &["--trusted-proxy", "127.0.0.1"],
    );
    // Heads other parsers could read differently, and a body on GET that would be read as a
    // second request: 400 and closed, nothing else answered.
    for (what, raw) in [
        ("bare LF", &b"GET /api/models/org/model HTTP/1.1\nHost: a\n\n"[..]),
        ("two Hosts", b"GET /api/models/org/model HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("no Host", b"GET /api/models/org/model HTTP/1.1\r\n\r\n"),
        (
            "a Content-Length that is not a number",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
        ),
        (
            "Content-Length and Transfer-Encoding",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "a body on GET holding a second request",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 39\r\n\r\nGET /api/models/org/model HTTP/1.1\r\n\r\n",
        ),
    ] {
        assert_eq!(raw_statuses(&serve, raw), [400], "{what}");
    }
    assert_eq!(
        raw_statuses(
            &serve,
            b"GET /api/models/org/model HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ),
        [200],
        "a well-formed head"
    );
    // Mounted on /hf/ behind nginx: the paged listing's links keep the prefix, so the stock
    // client and ferry pull both walk it to the end.
    let nginx = ferry_testkit::Nginx::start_proxy(cache.path(), serve.port);
    let endpoint = format!("http://127.0.0.1:{}/hf", nginx.port());
    let dir = tempfile::tempdir().expect("tmp");
    let jobs = serde_json::json!([{
        "op": "snapshot", "repo": "org/model", "type": "model", "revision": "main", "file": ""
    }]);
    let paths = ferry_testkit::hf::hf_client(&endpoint, &dir.path().join("hf"), false, &jobs);
    for f in &hub.repo.files {
        assert_same_file(
            &f.source,
            &paths[0].join(&f.path),
            "huggingface_hub behind nginx",
        );
    }
    for backend in backends_under_test() {
        let cache = tempfile::tempdir().expect("tmp");
        let o = pull_into(backend, &endpoint, cache.path(), &[]);
        assert!(
            o.status.success(),
            "backend={backend:?} behind nginx: {}",
            stderr(&o)
        );
        eprintln!("ran on backend {backend:?}: ferry pull through nginx on /hf/");
    }
}

/// Reads one response off a kept-alive connection: its status (0 when the server closed).
fn read_one_response(s: &mut std::net::TcpStream) -> u16 {
    use std::io::Read;
    let mut all = Vec::new();
    let mut byte = [0u8; 1];
    while !all.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => all.push(byte[0]),
            _ => return 0,
        }
    }
    let head = String::from_utf8_lossy(&all).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if s.read_exact(&mut body).is_err() {
        return 0;
    }
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn idle_keep_alive_clients_cannot_starve_a_newcomer() {
    use std::io::Write;
    let hub = Hub::start(|_| None);
    let cache = pulled_cache(&hub, &[]);
    let serve = ferry_testkit::serve::Serve::start_with(
        cache.path(),
        None,
        None,
        &["--max-connections", "4", "--idle-timeout", "300"],
    );
    let request = format!(
        "GET /api/models/org/model HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        serve.port
    );
    // Every slot held by a client that asked once and keeps its connection open.
    let mut holders: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = serve.connect();
            s.write_all(request.as_bytes()).expect("send");
            assert_eq!(read_one_response(&mut s), 200);
            s
        })
        .collect();
    // A newcomer is served, in the slot of the connection idle the longest. A holder counts as
    // idle once its thread waits for the next request, a moment after its answer was sent; a
    // newcomer that comes before any does gets the 503 (Retry-After: 1) and asks again, as a
    // client would.
    let mut statuses = Vec::new();
    let _newcomer = loop {
        let mut s = serve.connect();
        s.write_all(request.as_bytes()).expect("send");
        let status = read_one_response(&mut s);
        statuses.push(status);
        if status != 503 || statuses.len() == 100 {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        statuses.last(),
        Some(&200),
        "the newcomer got no slot: {statuses:?}"
    );
    // One holder was closed for it (the one idle the longest: which one that is depends on
    // when each holder's thread began to wait, so the order is checked in serve/idle.rs's unit
    // test); asking again on it finds the connection gone, and the others still hold theirs.
    let answers: Vec<u16> = holders
        .iter_mut()
        .map(|h| {
            let _ = h.write_all(request.as_bytes());
            read_one_response(h)
        })
        .collect();
    assert_eq!(
        answers.iter().filter(|&&a| a == 0).count(),
        1,
        "exactly one idle connection was closed for the newcomer: {answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|&&a| a == 200).count(),
        3,
        "the others kept theirs: {answers:?}"
    );
}

#[test]
fn the_api_clients_call_works_and_what_is_not_implemented_says_so() {
    let hub = Hub::start(|_| None);
    let cache = pulled_cache(&hub, &[]);
    let serve = ferry_testkit::serve::Serve::start(cache.path(), None);
    let home = tempfile::tempdir().expect("tmp");
    let code = r#"
import json
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
api = HfApi()
out = {}
infos = api.get_paths_info("org/model", ["config.json", "tokenizer", "nope.bin"], revision="main")
out["paths"] = sorted((type(i).__name__, i.path, getattr(i, "size", None)) for i in infos)
refs = api.list_repo_refs("org/model")
out["branches"] = [(b.name, b.target_commit) for b in refs.branches]
out["commits"] = [c.commit_id for c in api.list_repo_commits("org/model")]
try:
    list(api.get_repo_discussions("org/model"))
    out["discussions"] = "answered"
except RepositoryNotFoundError:
    out["discussions"] = "RepositoryNotFoundError"
except Exception as e:
    out["discussions"] = "%s %s" % (getattr(getattr(e, "response", None), "status_code", None), e)
print(json.dumps(out))
"#;
    let o = ferry_testkit::hf::client_command(
        Path::new("python3"),
        &serve.endpoint(),
        home.path(),
        false,
    )
    .args(["-c", code])
    .output()
    .expect("python3");
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON");
    let config = hub.repo.file("config.json");
    assert_eq!(
        v["paths"],
        serde_json::json!([
            ["RepoFile", "config.json", config.size],
            ["RepoFolder", "tokenizer", null]
        ]),
        "{v}"
    );
    assert_eq!(
        v["branches"],
        serde_json::json!([["main", hub.repo.commit]]),
        "{v}"
    );
    assert_eq!(v["commits"], serde_json::json!([hub.repo.commit]), "{v}");
    let discussions = v["discussions"].as_str().expect("discussions");
    assert!(
        discussions.starts_with("501") && discussions.contains("does not implement"),
        "an unimplemented route must say so, not 'repository not found': {discussions}"
    );
}

#[test]
fn an_option_either_works_or_is_refused() {
    let root = tempfile::tempdir().expect("tmp");
    let root_s = root.path().to_str().expect("utf-8");
    for (args, flag) in [
        (
            vec!["serve", "--root", root_s, "--limit-rate", "10M"],
            "--limit-rate",
        ),
        (
            vec!["--limit-rate", "10M", "serve", "--root", root_s],
            "--limit-rate",
        ),
        (
            vec!["--backend", "uring", "serve", "--root", root_s],
            "--backend",
        ),
        (
            vec!["gc", "--cache-dir", root_s, "--proxy", "http://127.0.0.1:9"],
            "--proxy",
        ),
        (
            vec!["ping", "http://127.0.0.1:9/x", "--min-free", "1G"],
            "--min-free",
        ),
    ] {
        let o = std::process::Command::new(ferry_bin())
            .args(&args)
            .output()
            .expect("run ferry");
        let what = format!("ferry {args:?}");
        assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{flag} does not apply to")),
            "{what}: {err}"
        );
    }
    // --help lists only what applies (`serve` takes the download options for a mirror's
    // fills; `gc` downloads nothing).
    let o = std::process::Command::new(ferry_bin())
        .args(["gc", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--limit-rate",
        "--backend",
        "--proxy",
        "--min-free",
        "--threads",
    ] {
        assert!(!help.contains(flag), "gc --help lists {flag}");
    }
}
