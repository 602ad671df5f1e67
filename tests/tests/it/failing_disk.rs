//! A disk that fails writes after ferry handed them over: ext4 on a loop device whose image's
//! tmpfs runs out of room ([`FailingDisk`]), the origin a real nginx. ext4 takes the small
//! files' bytes into the page cache; their writeback, when ferry makes them durable (a group's
//! `syncfs`, or a file's own `fsync`), fails for the blocks the tmpfs cannot store, with the
//! error the loop device gives, `ENOSPC`, as a thin-provisioned disk out of room does (ext4
//! itself still shows tens of MiB free). Inode-table blocks fail too where the image has not
//! stored them yet.
//!
//! Then the filesystem is unmounted while the tmpfs is still full (what was not on the disk is
//! lost, as in a crash), repaired (`e2fsck -fy`) and mounted again, and every file is read back
//! from what the disk kept. On each back-end:
//!
//! - ferry fails (not every file fits), saying the disk is out of space;
//! - every file under its final name is byte for byte its source: a file whose bytes did not
//!   reach the disk is never renamed;
//! - every file ferry reported done is there, whole. This is what caught a first version of
//!   the group commits that fsynced each file of a group whose `syncfs` failed: the `syncfs`
//!   had already written (and failed to write) the files' inodes, so the fsyncs had nothing to
//!   write and succeeded, and six files reported done were gone after the remount
//!   (`get/durable.rs` says more).

use std::collections::BTreeSet;
use std::path::Path;

use ferry_testkit::disk::FailingDisk;
use ferry_testkit::record::{self, Damage, Trial};
use ferry_testkit::{Nginx, backends_under_test, ferry_bin, write_data};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Small files (written whole through the page cache), about 12 MiB in all.
const FILES: u64 = 48;

#[test]
fn bytes_the_disk_fails_to_write_are_never_published() {
    let src = tempfile::tempdir().expect("tmp");
    let names: Vec<String> = (0..FILES).map(|i| format!("w{i:02}.bin")).collect();
    for (i, n) in names.iter().enumerate() {
        write_data(&src.path().join(n), 200 * KIB + i as u64 * 4099, i as u64);
    }
    let nginx = Nginx::start(src.path());
    let urls: Vec<String> = names.iter().map(|n| nginx.url("files", n)).collect();
    for backend in backends_under_test() {
        let what = format!("backend={backend:?}");
        let disk = FailingDisk::mount(32 * MIB, 64 * MIB);
        let out = disk.inside().join("out");
        std::fs::create_dir(disk.outside(&out)).expect("mkdir out");
        // The folder's blocks, for every name ferry will write (and each `.incomplete`), are
        // allocated and stored now: a directory keeps its blocks when its entries go.
        for n in &names {
            let long = disk.outside(&out.join(format!("{n}.incomplete.and-some-room")));
            std::fs::write(&long, b"").expect("grow the folder");
            std::fs::remove_file(&long).expect("grow the folder");
        }
        let sync = disk.command(Path::new("sync")).output().expect("sync");
        assert!(sync.status.success(), "sync");
        // Room for about half the bytes.
        disk.leave_room(6 * MIB);
        let mut cmd = disk.command(&ferry_bin());
        cmd.arg("--backend")
            .arg(backend.flag())
            .args(["get", "--json", "-o", out.to_str().expect("utf-8")])
            .args(&urls)
            .env_remove("FERRY_SAFE_MODE");
        let o = cmd.output().expect("run ferry");
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        let done: BTreeSet<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                let path = v["path"].as_str().expect("path").to_owned();
                path.rsplit('/').next().expect("name").to_owned()
            })
            .collect();
        let fsck = disk.remount();

        // What the disk kept, measured before anything is asserted.
        let (mut published, mut damage) = (0, Damage::default());
        for n in &names {
            let at = disk.outside(&out.join(n));
            if at.exists() {
                published += 1;
                let d = record::damage(&src.path().join(n), &at);
                if d.lost + d.corrupted > 0 {
                    eprintln!("{what}: {n} published with {d:?}");
                }
                damage += d;
            } else if done.contains(n) {
                // Reported done but gone: every byte lost.
                damage.lost += std::fs::metadata(src.path().join(n)).expect("src").len();
            }
        }
        let outcome = format!(
            "{published} of {FILES} files published, each whole; the rest failed, out of space"
        );
        Trial {
            times: FILES - published,
            ..Trial::once(
                (
                    "the disk fails the writeback of written bytes",
                    "failing_disk::bytes_the_disk_fails_to_write_are_never_published",
                ),
                Some(backend),
                &outcome,
                damage,
            )
        }
        .record();
        eprintln!(
            "{what}: {published} of {FILES} published, {} reported done; e2fsck: {}",
            done.len(),
            fsck.lines().last().unwrap_or("")
        );

        assert!(
            !o.status.success(),
            "{what}: ferry cannot have stored every file: {stderr}"
        );
        assert!(
            stderr.contains("not enough disk space") || stderr.contains("Input/output error"),
            "{what}: the failure says what the disk did: {stderr}"
        );
        assert_eq!(
            (damage.lost, damage.corrupted),
            (0, 0),
            "{what}: a published file differs from its source, or a file reported done is gone"
        );
        assert!(
            done.len() < FILES as usize,
            "{what}: every file reported done though the disk failed: {stderr}"
        );
    }
}
