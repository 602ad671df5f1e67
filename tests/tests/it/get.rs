//! `ferry get` end to end against a real nginx, on every back-end: sizes around the page
//! boundaries, a multi-MiB file in many ranges, ~1 GiB, servers that ignore `Range` or send no
//! length, redirects, and several URLs into a directory.

use std::path::Path;

use ferry_testkit::{
    Backend, Nginx, assert_same_file, backends_under_test, can_pin_memory, get_ok, get_ok_sink,
    modes_under_test, write_data,
};

const ODD_SIZES: [u64; 5] = [0, 1, 4095, 4096, 4097];

#[test]
fn sizes_around_page_boundaries_are_byte_identical() {
    let src = tempfile::tempdir().expect("tmp");
    for (i, size) in ODD_SIZES.iter().enumerate() {
        write_data(&src.path().join(format!("f{size}")), *size, i as u64);
    }
    let nginx = Nginx::start(src.path());
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        // Whole in one answer (on the direct sink: through the page cache), then in 2 KiB
        // ranges (on the direct sink: O_DIRECT for the aligned pages, buffered heads and tails).
        for (chunks, extra) in [
            ("one answer", &[][..]),
            ("2K ranges", &["--chunk-size", "2K"]),
        ] {
            for size in ODD_SIZES {
                let name = format!("f{size}");
                let dest = out.path().join(format!("{name}-{}", extra.len()));
                let report = get_ok_sink(mode, &nginx.url("files", &name), &dest, extra);
                assert_eq!(report["bytes"], size, "mode={mode:?}");
                if mode.1 == "direct" && size > 0 {
                    let reason = report["sink_reason"].as_str().unwrap_or("");
                    let whole = extra.is_empty() || size <= 2048;
                    assert_eq!(
                        reason.contains("came whole in one answer"),
                        whole,
                        "mode={mode:?} {chunks}: {report}"
                    );
                }
                assert_same_file(
                    &src.path().join(&name),
                    &dest,
                    &format!("mode={mode:?} size={size} {chunks}"),
                );
            }
            eprintln!("ran on backend, sink = {mode:?}: sizes {ODD_SIZES:?} in {chunks}");
        }
    }
}

#[test]
fn a_few_mib_in_many_ranges_and_one() {
    let src = tempfile::tempdir().expect("tmp");
    let size = 5 * (1 << 20) + 12_345;
    write_data(&src.path().join("mid"), size, 7);
    let nginx = Nginx::start(src.path());
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        // 1 MiB ranges over 4 connections: the ranges are spread and reused on keep-alive.
        let dest = out.path().join("mid");
        let r = get_ok_sink(
            mode,
            &nginx.url("files", "mid"),
            &dest,
            &["--chunk-size", "1M", "-c", "4"],
        );
        assert_eq!(r["ranged"], true);
        // Lanes join a file once its first answer is in, so how many got a range depends on
        // timing (the scheduling itself is tested deterministically in `plan::files`).
        let used = r["connections"].as_u64().expect("connections");
        assert!((1..=4).contains(&used), "mode={mode:?}: {r}");
        assert_same_file(
            &src.path().join("mid"),
            &dest,
            &format!("mode={mode:?} 1M ranges"),
        );
        // Default chunking: everything in the first range.
        let dest = out.path().join("mid-default");
        get_ok_sink(mode, &nginx.url("files", "mid"), &dest, &[]);
        assert_same_file(
            &src.path().join("mid"),
            &dest,
            &format!("mode={mode:?} default"),
        );
        // An odd chunk size and buffer size: ranges that start and end off page boundaries,
        // so O_DIRECT writes come with buffered heads and tails.
        let dest = out.path().join("mid-odd");
        get_ok_sink(
            mode,
            &nginx.url("files", "mid"),
            &dest,
            &[
                "--chunk-size",
                "777777",
                "--buffer-size",
                "64K",
                "--write-depth",
                "2",
            ],
        );
        assert_same_file(
            &src.path().join("mid"),
            &dest,
            &format!("mode={mode:?} odd ranges"),
        );
    }
}

#[test]
fn about_one_gib_is_byte_identical() {
    // A prime near 1 GiB: the tail range is odd-sized and unaligned.
    let size: u64 = 1_073_741_789;
    // The source in memory, so the test needs 1 GiB of disk, not 2.
    let src = ferry_testkit::data::memory_tempdir(size);
    write_data(&src.path().join("big"), size, 42);
    let sha = ferry_testkit::sha256_file(&src.path().join("big"));
    let nginx = Nginx::start(src.path());
    for mode in modes_under_test() {
        let out = ferry_testkit::data::download_tempdir(size);
        let dest = out.path().join("big");
        let r = get_ok_sink(mode, &nginx.url("files", "big"), &dest, &["--sha256", &sha]);
        assert_eq!(r["bytes"], size);
        assert!(
            r["connections"].as_u64().unwrap_or(0) > 1,
            "mode={mode:?}: several connections: {r}"
        );
        assert_eq!(r["verified"]["digest"], sha.as_str(), "mode={mode:?}");
        assert_same_file(
            &src.path().join("big"),
            &dest,
            &format!("mode={mode:?} 1 GiB"),
        );
        // On io_uring, the direct and buffered sinks write every byte from registered buffers
        // (WRITE_FIXED), unless the kernel refused to pin them; the splice sink and safe mode
        // write none that way.
        let fixed = r["written_fixed"].as_u64().expect("written_fixed");
        match mode {
            (Backend::Uring, "direct" | "buffered") if can_pin_memory() => {
                assert_eq!(fixed, size, "mode={mode:?}: every byte written fixed: {r}")
            }
            (Backend::Uring, "direct" | "buffered") => {
                assert!(fixed <= size, "mode={mode:?}: {r}");
                eprintln!("this process may not pin memory: {fixed} of {size} bytes fixed");
            }
            _ => assert_eq!(fixed, 0, "mode={mode:?}: {r}"),
        }
        eprintln!(
            "ran on backend, sink = {mode:?}: 1 GiB at {} GB/s, sha256 {}, {fixed} bytes \
             written from registered buffers",
            r["gb_per_s"], r["verified"]
        );
    }
}

#[test]
fn a_memlock_limit_leaves_writes_the_plain_way_and_the_file_whole() {
    if !backends_under_test().contains(&Backend::Uring) {
        eprintln!("SKIP: registered buffers are io_uring's");
        return;
    }
    let src = tempfile::tempdir().expect("tmp");
    let size: u64 = (64 << 20) + 4097;
    write_data(&src.path().join("f"), size, 9);
    let sha = ferry_testkit::sha256_file(&src.path().join("f"));
    let nginx = Nginx::start(src.path());
    let out = tempfile::tempdir().expect("tmp");
    for sink in ["direct", "buffered"] {
        let dest = out.path().join(sink);
        // 4 MiB of locked memory: two of the 2 MiB chunks. Root gives up CAP_IPC_LOCK, which
        // would lift the limit.
        let mut cmd = std::process::Command::new("prlimit");
        cmd.arg("--memlock=4194304:4194304");
        if rustix::process::geteuid().is_root() {
            cmd.args([
                "setpriv",
                "--inh-caps=-ipc_lock",
                "--bounding-set=-ipc_lock",
                "--",
            ]);
        }
        let o = cmd
            .arg(ferry_testkit::ferry_bin())
            .args(["--backend", "uring", "get", &nginx.url("files", "f")])
            .args([
                "-o",
                dest.to_str().expect("utf-8"),
                "--json",
                "--sink",
                sink,
            ])
            .args(["--sha256", &sha])
            .env_remove("FERRY_SAFE_MODE")
            .output()
            .expect("run prlimit");
        let r = ferry_testkit::success_report(&o, Backend::Uring, sink);
        assert_eq!(r["sink"], sink, "{r}");
        let fixed = r["written_fixed"].as_u64().expect("written_fixed");
        assert!(
            fixed < size,
            "{sink}: the limit refused some registrations: {r}"
        );
        assert_same_file(&src.path().join("f"), &dest, sink);
        eprintln!(
            "ran on uring, sink {sink}, 4 MiB memlock: {fixed} of {size} bytes from registered \
             buffers, the rest plain; file identical"
        );
    }
}

fn check_single_stream(loc: &str) {
    let src = tempfile::tempdir().expect("tmp");
    let size = 3 * (1 << 20) + 5;
    write_data(&src.path().join("s"), size, 3);
    write_data(&src.path().join("z"), 0, 3);
    let nginx = Nginx::start(src.path());
    for mode in modes_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        for name in ["s", "z"] {
            let dest = out.path().join(name);
            let r = get_ok_sink(mode, &nginx.url(loc, name), &dest, &["--chunk-size", "1M"]);
            assert_eq!(r["ranged"], false, "mode={mode:?} {loc}: one stream: {r}");
            assert_same_file(
                &src.path().join(name),
                &dest,
                &format!("mode={mode:?} /{loc}/{name}"),
            );
        }
    }
}

#[test]
fn server_that_ignores_range_gives_a_correct_file() {
    check_single_stream("norange");
}

#[test]
fn chunked_response_without_length_gives_a_correct_file() {
    check_single_stream("chunked");
}

#[test]
fn close_delimited_response_gives_a_correct_file() {
    check_single_stream("close");
}

#[test]
fn redirect_is_followed_and_ranges_go_to_the_target() {
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("r"), 2 * (1 << 20) + 1, 9);
    let nginx = Nginx::start(src.path());
    for backend in backends_under_test() {
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("r");
        let r = get_ok(
            backend,
            &nginx.url("redirect", "r"),
            &dest,
            &["--chunk-size", "1M"],
        );
        assert!(
            r["url_final"]
                .as_str()
                .is_some_and(|u| u.contains("/files/r")),
            "{r}"
        );
        assert_same_file(
            &src.path().join("r"),
            &dest,
            &format!("backend={backend:?} redirect"),
        );
    }
}

#[test]
fn summary_line_and_no_progress_bar_on_a_pipe() {
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("p"), 1 << 20, 1);
    let nginx = Nginx::start(src.path());
    let out = tempfile::tempdir().expect("tmp");
    for backend in backends_under_test() {
        let dest = out.path().join(format!("p-{}", backend.flag()));
        let o = ferry_testkit::ferry(
            backend,
            &[
                "get",
                &nginx.url("files", "p"),
                "-o",
                dest.to_str().expect("utf8"),
            ],
        );
        assert!(o.status.success());
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(stdout.lines().count(), 1, "one summary line: {stdout:?}");
        assert!(
            stdout.contains("GB/s") && stdout.contains(backend.flag()),
            "{stdout:?}"
        );
        assert!(
            o.stderr.is_empty(),
            "nothing on stderr when piped: {:?}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(Path::new(&dest).exists());
    }
}
