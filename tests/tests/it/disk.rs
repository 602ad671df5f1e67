//! Full disks, on a real small filesystem: a tmpfs with `size=` in a mount namespace of its own
//! ([`SmallDisk`]), the origin a real nginx. On each back-end:
//!
//! - a download that cannot fit stops with "need X, have Y" (exit 12) and leaves nothing: one of
//!   known length is refused before its first byte is written, and a stream of unknown length,
//!   which nothing can reserve, stops at the `ENOSPC` it runs into;
//! - a pull that cannot fit is refused up front, before the first byte;
//! - another process fills the disk during a pull: the next file that does not fit pauses
//!   before it writes (the disk is never driven full); with a short `--space-wait` the pull
//!   stops with "need X, have Y", keeps the files it verified (published, byte for byte), and
//!   the next run, once space is freed, fetches only the rest; with a longer one, the pull goes
//!   on by itself as soon as space comes free.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::disk::SmallDisk;
use ferry_testkit::hub::{PULL_PARTIAL, Repo, StaticHub};
use ferry_testkit::record::{self, Damage, Trial};
use ferry_testkit::{
    Backend, Nginx, backends_under_test, ferry_bin, pull_args, success_report, write_data,
};

const MIB: u64 = 1 << 20;
/// Three 8 MiB shards and a small file; sorted large first, fetched one at a time (`-c 1`).
const SPEC: &[(&str, u64, bool)] = &[
    ("model-00001-of-00003.safetensors", 8 << 20, true),
    ("model-00002-of-00003.safetensors", (8 << 20) + 4097, true),
    ("model-00003-of-00003.safetensors", (8 << 20) - 1, true),
    ("config.json", 700, false),
];

fn ferry_in(disk: &SmallDisk, backend: Backend, args: &[&str]) -> Command {
    let mut c = disk.command(&ferry_bin());
    c.arg("--backend")
        .arg(backend.flag())
        .args(args)
        .env_remove("FERRY_SAFE_MODE")
        .env_remove("HF_TOKEN")
        .stdin(Stdio::null());
    c
}

fn pull_in(disk: &SmallDisk, backend: Backend, endpoint: &str, extra: &[&str]) -> Command {
    let cache = disk.inside().join("cache");
    let mut args = vec!["-c", "1"];
    args.extend_from_slice(extra);
    ferry_in(disk, backend, &pull_args(endpoint, &cache, &args))
}

/// The shards whose blob is complete under its final name.
fn complete_blobs(disk: &SmallDisk, repo: &Repo) -> usize {
    let blobs = repo.cache_folder(&disk.root().join("cache")).join("blobs");
    repo.files
        .iter()
        .filter(|f| std::fs::metadata(blobs.join(&f.etag)).is_ok_and(|m| m.len() == f.size))
        .count()
}

/// The partial files whose whole size is allocated (`fallocate`d by ferry).
fn reserved_partials(disk: &SmallDisk, repo: &Repo) -> usize {
    use std::os::unix::fs::MetadataExt;
    let blobs = repo.cache_folder(&disk.root().join("cache")).join("blobs");
    repo.files
        .iter()
        .filter(|f| {
            std::fs::metadata(blobs.join(format!("{}{PULL_PARTIAL}", f.etag)))
                .is_ok_and(|m| m.blocks() * 512 >= f.size)
        })
        .count()
}

/// Waits until `cond` holds (or `child` exits, or a minute passes: then fails with `what`).
fn wait_until(child: &mut Child, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "ferry exited before {what}"
        );
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stderr_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// What the final names under the repo hold, against their files: every blob is read (a name
/// no file has counts as corrupted), every snapshot link must lead to its file's blob. Returns
/// how many files are published, and the damage.
fn published(disk: &SmallDisk, repo: &Repo) -> (usize, Damage) {
    let blobs = repo.cache_folder(&disk.root().join("cache")).join("blobs");
    let mut damage = Damage::default();
    for entry in std::fs::read_dir(&blobs).expect("blobs").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(PULL_PARTIAL) {
            continue;
        }
        damage += match repo.files.iter().find(|f| f.etag == name) {
            Some(f) => record::damage(&f.source, &entry.path()),
            None => record::leftover(&entry.path()),
        };
    }
    // The same file, by device and inode: paths under `/proc/PID/root` do not canonicalize.
    let identity = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
    };
    let snapshot = repo
        .cache_folder(&disk.root().join("cache"))
        .join("snapshots")
        .join(&repo.commit);
    let mut count = 0;
    for f in &repo.files {
        let link = snapshot.join(&f.path);
        if std::fs::symlink_metadata(&link).is_err() {
            continue;
        }
        count += 1;
        let blob = identity(&blobs.join(&f.etag));
        if blob.is_none() || identity(&link) != blob {
            damage.corrupted += f.size;
        }
    }
    (count, damage)
}

#[test]
fn a_download_that_cannot_fit_stops_with_need_and_have_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    write_data(&dir.path().join("big"), 20 * MIB, 7);
    let nginx = Nginx::start(dir.path());
    let disk = SmallDisk::mount(16 * MIB);
    let out = disk.inside().join("big");
    let out_s = out.to_str().expect("utf-8");
    for backend in backends_under_test() {
        // (location, what stops it): a known length is checked before the first byte; a
        // chunked stream has no length to reserve and runs into ENOSPC.
        for (loc, need) in [("files", "need 20.00 MiB"), ("chunked", "need more")] {
            let what = format!("backend={backend:?} /{loc}/");
            eprintln!("full disk, get {what}");
            let url = nginx.url(loc, "big");
            let o = ferry_in(
                &disk,
                backend,
                &["get", &url, "-o", out_s, "--space-wait", "0"],
            )
            .output()
            .expect("run ferry");
            record::failed_cleanly(
                &format!("a disk too small for the file (/{loc}/)"),
                "disk::a_download_that_cannot_fit_stops_with_need_and_have_and_leaves_nothing",
                backend,
                "stopped cleanly: exit 12, need X, have Y; nothing left",
                &disk.outside(&out),
            );
            ferry_testkit::assert_clean_failure(&o, 12, "not enough disk space in", &what);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(need) && err.contains("have "), "{what}: {err}");
            ferry_testkit::assert_no_output(&disk.outside(&out), &what);
            assert_eq!(disk.free(), disk.size(), "{what}: every byte given back");
        }
    }
}

#[test]
fn a_pull_that_cannot_fit_is_refused_before_the_first_byte() {
    // A static Hub with [`SPEC`], at `/slow` (8 MiB/s per request), so that the test can fill
    // the disk between two shards.
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let (repo, nginx, endpoint) = (&hub.repo, &hub.nginx, hub.slow_endpoint());
    let total: u64 = repo.files.iter().map(|f| f.size).sum();
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        let disk = SmallDisk::mount(total / 2);
        let before = nginx.requests(0).len();
        let o = pull_in(&disk, backend, &endpoint, &[])
            .output()
            .expect("run ferry");
        ferry_testkit::assert_clean_failure(&o, 12, "not enough disk space in", &what);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("need ") && err.contains("have "),
            "{what}: {err}"
        );
        let fetched = nginx
            .requests(0)
            .iter()
            .skip(before)
            .filter(|q| q.uri.contains("/resolve/"))
            .count();
        assert_eq!(fetched, 0, "{what}: no byte asked for");
    }
}

/// Starts a pull, waits for its first shard to be complete and the second reserved, then fills
/// the disk (another process) so that the third does not fit above the floor ferry keeps free
/// (1% of the disk), and waits for ferry to say it paused. Returns the running pull, the filler, and ferry's stderr
/// file.
fn pull_into_a_disk_filled_midway(
    disk: &SmallDisk,
    repo: &Repo,
    (backend, endpoint): (Backend, &str),
    space_wait: &str,
    logs: &Path,
) -> (Child, PathBuf, PathBuf) {
    let err_path = logs.join(format!("{backend:?}-{space_wait}.stderr"));
    let mut child = pull_in(disk, backend, endpoint, &["--space-wait", space_wait])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn ferry");
    // One shard complete and the next one's space reserved: with one connection, the third
    // is not opened before the second is done (a second at 8 MiB/s). The disk is filled now, so
    // that no reservation of ferry's is under way while the other process takes the space.
    wait_until(&mut child, "a shard complete and the next reserved", || {
        complete_blobs(disk, repo) >= 1 && reserved_partials(disk, repo) >= 1
    });
    // Leave less than a shard above the floor.
    let floor = disk.size() / 100;
    let filler = disk.fill(floor + 2 * MIB);
    eprintln!(
        "  filled the disk after the first shard: {} MiB free",
        disk.free() / MIB
    );
    wait_until(&mut child, "ferry paused for space", || {
        stderr_of(&err_path).contains("paused, waiting up to")
    });
    assert!(
        disk.free() >= floor + MIB,
        "ferry paused before the disk was full, not after: {} bytes free; {}",
        disk.free(),
        stderr_of(&err_path)
    );
    (child, filler, err_path)
}

#[test]
fn a_disk_filled_during_a_pull_pauses_it_then_stops_cleanly_and_the_next_run_resumes() {
    // A static Hub with [`SPEC`], at `/slow` (8 MiB/s per request), so that the test can fill
    // the disk between two shards.
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let (repo, endpoint) = (&hub.repo, hub.slow_endpoint());
    let logs = tempfile::tempdir().expect("tmp");
    let total: u64 = repo.files.iter().map(|f| f.size).sum();
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        eprintln!("disk filled mid-pull, short wait, {what}");
        let disk = SmallDisk::mount(48 * MIB);
        let (child, filler, err_path) =
            pull_into_a_disk_filled_midway(&disk, repo, (backend, &endpoint), "1", logs.path());
        let o = finish(child);
        let err = stderr_of(&err_path);
        assert_eq!(o.status.code(), Some(12), "{what}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("ferry: error: not enough disk space in")
                && last.contains("need ")
                && last.contains("have "),
            "{what}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
        // What was verified is kept, under its final names.
        let (kept, mut damage) = published(&disk, repo);
        eprintln!("  stopped: {kept} files published; {last}");

        // Space is freed: the next run fetches only what is missing.
        std::fs::remove_file(&filler).expect("remove the filler");
        let o = pull_in(&disk, backend, &endpoint, &[])
            .output()
            .expect("run ferry");
        let (all, at_end) = published(&disk, repo);
        damage += at_end;
        Trial::once(
            (
                "another process fills the disk mid-pull (--space-wait 1)",
                "disk::a_disk_filled_during_a_pull_pauses_it_then_stops_cleanly_and_the_next_run_resumes",
            ),
            Some(backend),
            "paused before the disk was full; stopped cleanly (exit 12); verified files kept; resumed once space was freed",
            damage,
        )
        .record_undamaged(&what);
        assert!(kept >= 1, "{what}: the first shard is published");
        let r = success_report(&o, backend, &what);
        let fetched = r["bytes_fetched"].as_u64().expect("bytes_fetched");
        assert!(
            fetched <= total - SPEC[0].1,
            "{what}: the first shard was not fetched again ({fetched} of {total} bytes): {r}"
        );
        assert_eq!(all, repo.files.len(), "{what}: every file published");
        assert!(
            !repo
                .cache_folder(&disk.root().join("cache"))
                .join(".ferry")
                .exists(),
            "{what}: the journal is removed once the pull completes"
        );
    }
}

#[test]
fn a_pull_paused_for_space_goes_on_by_itself_once_space_is_freed() {
    // A static Hub with [`SPEC`], at `/slow` (8 MiB/s per request), so that the test can fill
    // the disk between two shards.
    let hub = StaticHub::start_with(SPEC, |_| None, None);
    let (repo, endpoint) = (&hub.repo, hub.slow_endpoint());
    let logs = tempfile::tempdir().expect("tmp");
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        eprintln!("disk filled mid-pull, then freed, {what}");
        let disk = SmallDisk::mount(48 * MIB);
        let (child, filler, err_path) =
            pull_into_a_disk_filled_midway(&disk, repo, (backend, &endpoint), "600", logs.path());
        std::fs::remove_file(&filler).expect("remove the filler");
        let o = finish(child);
        let err = stderr_of(&err_path);
        assert!(o.status.success(), "{what}: {err}");
        let (all, damage) = published(&disk, repo);
        Trial::once(
            (
                "another process fills the disk mid-pull, then frees it",
                "disk::a_pull_paused_for_space_goes_on_by_itself_once_space_is_freed",
            ),
            Some(backend),
            "paused before the disk was full; went on by itself once space was freed",
            damage,
        )
        .record_undamaged(&what);
        assert!(err.contains("free now; going on"), "{what}: {err}");
        success_report(&o, backend, &what);
        assert_eq!(all, repo.files.len(), "{what}: every file published");
    }
}

/// Waits for `child` to exit and returns its output.
fn finish(child: Child) -> Output {
    child.wait_with_output().expect("ferry")
}
