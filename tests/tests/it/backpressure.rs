//! Memory stays bounded when the disk is slower than the network: ferry holds a bounded number of
//! buffers and stops reading from the socket when they are all waiting for the disk, instead of
//! buffering the file.
//!
//! The slow disk is real: the download runs in a cgroup (v1 `blkio`) whose O_DIRECT writes to
//! the output's device are throttled far below the loopback network, and ferry's peak RSS is
//! read by `/usr/bin/time`. This needs root and the blkio throttle; where either is missing the
//! test says so and checks nothing else (the same download is covered elsewhere).

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_testkit::{Backend, Nginx, assert_same_file, ferry_bin, write_data};

/// Throttled write rate: the 192 MiB file takes ~6 s to write, while loopback would deliver it
/// in a fraction of a second.
const WRITE_BPS: u64 = 32 << 20;
const SIZE: u64 = 192 << 20;

/// A blkio cgroup throttling writes to one device; removed on drop.
struct Throttle {
    dir: PathBuf,
}

impl Throttle {
    fn new(device_of: &Path) -> Result<Throttle, String> {
        let root = Path::new("/sys/fs/cgroup/blkio");
        if !root.join("blkio.throttle.write_bps_device").exists() {
            return Err("no cgroup v1 blkio throttle at /sys/fs/cgroup/blkio".into());
        }
        let dev = rustix::fs::stat(device_of)
            .map_err(|e| format!("stat: {e}"))?
            .st_dev;
        let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
        let dir = root.join(format!("ferry-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create cgroup: {e}"))?;
        let t = Throttle { dir };
        std::fs::write(
            t.dir.join("blkio.throttle.write_bps_device"),
            format!("{major}:{minor} {WRITE_BPS}"),
        )
        .map_err(|e| format!("set the write throttle on {major}:{minor}: {e}"))?;
        Ok(t)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_slow_disk_holds_the_download_back_instead_of_filling_memory() {
    if !ferry_testkit::backends_under_test().contains(&Backend::Uring) {
        eprintln!("SKIP: io_uring unavailable; the direct sink is what the throttle slows");
        return;
    }
    let src = tempfile::tempdir().expect("tmp");
    write_data(&src.path().join("f"), SIZE, 77);
    let nginx = Nginx::start(src.path());
    // The output goes under the target dir (a real disk), not a tmpfs.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out = tempfile::tempdir_in(base).expect("tmp");
    let throttle = match Throttle::new(out.path()) {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIP: cannot throttle the disk here: {why}");
            return;
        }
    };
    let dest = out.path().join("f");
    let rss_file = out.path().join("rss");
    let script = format!(
        "echo $$ > '{}/cgroup.procs' && exec /usr/bin/time -f %M -o '{}' '{}' --backend uring \
         get '{}' -o '{}' --sink direct --json",
        throttle.dir.display(),
        rss_file.display(),
        ferry_bin().display(),
        nginx.url("files", "f"),
        dest.display()
    );
    let o = Command::new("sh")
        .args(["-c", &script])
        .env_remove("FERRY_SAFE_MODE")
        .output()
        .expect("run ferry");
    assert!(
        o.status.success(),
        "ferry under a throttled disk: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON summary");
    assert_same_file(&src.path().join("f"), &dest, "throttled download");
    let rss_kib: u64 = std::fs::read_to_string(&rss_file)
        .expect("rss")
        .trim()
        .parse()
        .expect("rss number");
    eprintln!(
        "ran on backend={} sink={}: {SIZE} bytes at {:.3} GB/s under a {} MiB/s write throttle, \
         peak RSS {} MiB",
        report["backend"],
        report["sink"],
        report["gb_per_s"].as_f64().unwrap_or(0.0),
        WRITE_BPS >> 20,
        rss_kib / 1024
    );
    if report["sink"] != "direct" {
        eprintln!(
            "SKIP: the direct sink was not used here: {}",
            report["sink_reason"]
        );
        return;
    }
    // Whether the throttle held (the bound below is checked either way).
    let seconds = report["seconds"].as_f64().unwrap_or(0.0);
    if seconds < 0.5 * SIZE as f64 / WRITE_BPS as f64 {
        eprintln!("note: the write throttle did not slow this run ({seconds} s)");
    }
    // Buffers in use: at most 16 connections x 5 x 1 MiB = 80 MiB, plus 16 idle: below the
    // 192 MiB file, which a download that buffered without limit would approach.
    assert!(
        rss_kib < 128 * 1024,
        "peak RSS {} MiB: memory must stay bounded, not follow the file",
        rss_kib / 1024
    );
}
