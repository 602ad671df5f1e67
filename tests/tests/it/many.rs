//! Many files in one job against a real nginx: small files go one request each over a few
//! kept-alive connections, large files share the connections with them, and one failing file
//! does not take the others down. Every file is compared byte for byte, on every back-end and
//! sink.

use std::collections::BTreeSet;
use std::path::Path;

use ferry_testkit::{
    Nginx, assert_no_output, assert_same_file, ferry, modes_under_test, write_data,
};

/// Exit code of a remote failure (`ferry --help` lists them).
const REMOTE: i32 = 3;

/// Runs `ferry get` on every URL into `out` and returns (exit status, JSON lines, stderr).
fn get_many(
    (backend, sink): (ferry_testkit::Backend, &str),
    urls: &[String],
    out: &Path,
    extra: &[&str],
) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let mut args: Vec<&str> = vec!["get", "--json", "--sink", sink, "-o"];
    args.push(out.to_str().expect("utf-8"));
    args.extend_from_slice(extra);
    args.extend(urls.iter().map(String::as_str));
    let o = ferry(backend, &args);
    let reports = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON summary per line"))
        .collect();
    (
        o.status.code(),
        reports,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// No `.incomplete` file is left in `dir`.
fn assert_nothing_partial(dir: &Path, what: &str) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let name = e.expect("entry").file_name();
        assert!(
            !name.to_string_lossy().ends_with(".incomplete"),
            "{what}: {name:?} left behind"
        );
    }
}

#[test]
fn small_files_take_one_request_each_over_few_kept_alive_connections() {
    let src = tempfile::tempdir().expect("tmp");
    // 300 files of 0 to 64 KiB, with the page-boundary sizes among them.
    let mut sizes: Vec<u64> = vec![0, 1, 4095, 4096, 4097, 65_536];
    sizes.extend((0..294).map(|i| (i * 7919 + 13) % 65_536));
    let names: Vec<String> = (0..sizes.len()).map(|i| format!("s{i:03}.bin")).collect();
    for (name, &size) in names.iter().zip(&sizes) {
        write_data(&src.path().join(name), size, size + 1);
    }
    let nginx = Nginx::start(src.path());
    let urls: Vec<String> = names.iter().map(|n| nginx.url("files", n)).collect();
    let mut logged = 0;
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let (code, reports, stderr) = get_many(mode, &urls, out.path(), &["-c", "4"]);
        assert_eq!(code, Some(0), "mode={mode:?}: {stderr}");
        assert_eq!(
            reports.len(),
            names.len(),
            "mode={mode:?}: a summary per file"
        );
        for name in &names {
            assert_same_file(
                &src.path().join(name),
                &out.path().join(name),
                &format!("mode={mode:?} {name}"),
            );
        }
        assert_nothing_partial(out.path(), &format!("mode={mode:?}"));
        // nginx saw one request per file, on at most 4 connections (kept alive across files).
        let all = nginx.requests(logged + names.len());
        let mine = &all[logged..];
        logged = all.len();
        assert_eq!(
            mine.len(),
            names.len(),
            "mode={mode:?}: one request per file"
        );
        let conns: BTreeSet<u64> = mine.iter().map(|r| r.connection).collect();
        assert!(
            conns.len() <= 4,
            "mode={mode:?}: {} connections for 4 lanes",
            conns.len()
        );
        let max_reuse = mine.iter().map(|r| r.nth).max().unwrap_or(0);
        assert!(
            max_reuse >= (names.len() as u64).div_ceil(4),
            "mode={mode:?}: some connection carried at least a quarter of the files"
        );
        eprintln!(
            "ran on backend, sink = {mode:?}: {} files, {} requests over {} connections",
            names.len(),
            mine.len(),
            conns.len()
        );
    }
}

#[test]
fn large_and_small_files_share_the_connections() {
    let src = tempfile::tempdir().expect("tmp");
    let mut files: Vec<(String, u64)> = vec![
        ("big.bin".into(), 9 * (1 << 20) + 12_345),
        ("mid.bin".into(), 3 << 20),
    ];
    files.extend((0..40).map(|i| (format!("t{i:02}.json"), 100 + i * 1013)));
    for (i, (name, size)) in files.iter().enumerate() {
        write_data(&src.path().join(name), *size, i as u64);
    }
    let nginx = Nginx::start(src.path());
    let urls: Vec<String> = files.iter().map(|(n, _)| nginx.url("files", n)).collect();
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let (code, reports, stderr) =
            get_many(mode, &urls, out.path(), &["-c", "4", "--chunk-size", "1M"]);
        assert_eq!(code, Some(0), "mode={mode:?}: {stderr}");
        assert_eq!(reports.len(), files.len(), "mode={mode:?}");
        for (name, _) in &files {
            assert_same_file(
                &src.path().join(name),
                &out.path().join(name),
                &format!("mode={mode:?} {name}"),
            );
        }
        let big = reports
            .iter()
            .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with("big.bin")))
            .expect("big.bin summary");
        assert_eq!(big["ranged"], true, "mode={mode:?}: {big}");
        assert_nothing_partial(out.path(), &format!("mode={mode:?}"));
        eprintln!("ran on backend, sink = {mode:?}: 2 large and 40 small files");
    }
}

#[test]
fn one_missing_file_fails_alone() {
    let src = tempfile::tempdir().expect("tmp");
    for (i, n) in ["a.bin", "b.bin"].iter().enumerate() {
        write_data(&src.path().join(n), 200_000 + i as u64, i as u64);
    }
    let nginx = Nginx::start(src.path());
    let urls = [
        nginx.url("files", "a.bin"),
        nginx.url("files", "missing.bin"),
        nginx.url("files", "b.bin"),
    ];
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let (code, reports, stderr) = get_many(mode, &urls, out.path(), &[]);
        assert_eq!(code, Some(REMOTE), "mode={mode:?}: {stderr}");
        assert!(
            stderr.contains("missing.bin") && stderr.contains("404"),
            "mode={mode:?}: the failure names the file and the status: {stderr}"
        );
        assert_eq!(
            reports.len(),
            2,
            "mode={mode:?}: the other two are reported"
        );
        for n in ["a.bin", "b.bin"] {
            assert_same_file(
                &src.path().join(n),
                &out.path().join(n),
                &format!("mode={mode:?} {n}"),
            );
        }
        assert_no_output(&out.path().join("missing.bin"), &format!("mode={mode:?}"));
        eprintln!("ran on backend, sink = {mode:?}: one 404 among three");
    }
}

#[test]
fn an_input_list_verifies_each_file_against_its_sha256() {
    let src = tempfile::tempdir().expect("tmp");
    let names: Vec<String> = (0..20).map(|i| format!("l{i:02}.bin")).collect();
    for (i, n) in names.iter().enumerate() {
        write_data(&src.path().join(n), 3000 + i as u64 * 40_000, i as u64);
    }
    let nginx = Nginx::start(src.path());
    let mut list = String::from("# name sha256\n\n");
    for (i, n) in names.iter().enumerate() {
        let sha = if i == 7 {
            // Wrong on purpose: the digest of another file.
            ferry_testkit::sha256_file(&src.path().join(&names[8]))
        } else {
            ferry_testkit::sha256_file(&src.path().join(n))
        };
        list.push_str(&format!("{} {sha}\n", nginx.url("files", n)));
    }
    let list_path = src.path().join("list.txt");
    std::fs::write(&list_path, list).expect("write list");
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let (code, reports, stderr) = get_many(
            mode,
            &[],
            out.path(),
            &["-i", list_path.to_str().expect("utf-8")],
        );
        assert_eq!(code, Some(REMOTE), "mode={mode:?}: {stderr}");
        assert!(
            stderr.contains("sha256 mismatch") && stderr.contains("l07.bin"),
            "mode={mode:?}: {stderr}"
        );
        assert_eq!(reports.len(), 19, "mode={mode:?}");
        for r in &reports {
            assert!(r["verified"]["digest"].is_string(), "verified: {r}");
        }
        for (i, n) in names.iter().enumerate() {
            if i == 7 {
                assert_no_output(&out.path().join(n), &format!("mode={mode:?}"));
            } else {
                assert_same_file(
                    &src.path().join(n),
                    &out.path().join(n),
                    &format!("mode={mode:?} {n}"),
                );
            }
        }
        assert_nothing_partial(out.path(), &format!("mode={mode:?}"));
        eprintln!("ran on backend, sink = {mode:?}: 19 verified, 1 refused after 2 fetches");
    }
}
