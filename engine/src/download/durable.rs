//! Making a job's files durable before they get their final names: a file's bytes and inode
//! are on the disk before its rename, so that a crash never leaves a partial file under a final
//! name.
//!
//! A job of one file fsyncs it. A job of several files commits them in groups: the files that
//! settle while one group is being made durable wait for the next, and a group costs one
//! `syncfs` of its filesystem instead of one `fsync` per file. An `fsync` writes the file's
//! pages, then its inode, then flushes the disk's cache, each a request to the device (on a
//! virtual machine, each an exit to the host), and ext4 without a journal flushes the disk for
//! every file. `syncfs` writes every dirty page and inode of the filesystem in one pass, where
//! neighbouring files' blocks merge into large requests and sixteen inodes share a block, then
//! flushes once (measured: docs/decisions.md, "Grouped syncfs").
//!
//! A group is committed with `syncfs` only where that is safe and cheap:
//! - on a local filesystem whose `syncfs` is a full sync (ext2/3/4, XFS, btrfs, f2fs, tmpfs;
//!   [`kernel_probes::fs::full_syncfs`], asked once per filesystem with the sink's probe).
//!   Elsewhere (NFS, FUSE, ...) each file is fsynced: their `syncfs` may not reach the server.
//! - while little else on the machine is dirty (`Dirty` + `Writeback` in `/proc/meminfo` at most
//!   [`DIRTY_MAX`]): `syncfs` writes back every dirty page of the filesystem, and ferry must not
//!   wait for another program's gigabytes. Otherwise each file is fsynced.
//!
//! Errors: `syncfs` reports a writeback error of any file of the filesystem, not which file.
//! So after it succeeds, each file's own descriptor is asked for its writeback errors
//! ([`fileop::written_back`]). After it fails, every file of the group fails, and so does every
//! later file of the job on that filesystem: the files are not fsynced one by one instead,
//! because that would not be told. ext4 without a journal writes a file's inode into its
//! inode-table block when the inode is written back; if `syncfs` then fails to write that
//! block, the inode is clean, and a later `fsync` of the file writes nothing and succeeds,
//! while the disk never got the inode. A file whose inode shared the block with one of the
//! group but settles later is in the same case. Seen in `tests/tests/it/failing_disk.rs`: files
//! reported done were gone after a remount.
//!
//! Not here: the renames (the caller's, after the commit) and the directory entries (the job
//! fsyncs each directory once, at its end).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use compio::fs::File;

use crate::backend::fileop;

/// Dirty bytes in the whole machine above which a group is fsynced file by file rather than
/// with `syncfs`: 256 MiB take the disks of this project's machines about 0.2 s.
const DIRTY_MAX: u64 = 256 << 20;

/// A job's way of making its files durable.
#[derive(Debug)]
pub(crate) struct Durable {
    /// Files commit in groups (a job of several files); otherwise each is fsynced.
    grouped: bool,
    state: Mutex<State>,
    /// Groups committed with `syncfs`, and the files in them.
    synced_groups: AtomicU64,
    synced_files: AtomicU64,
    /// Filesystems (by device) where a `syncfs` failed in this job, with its error number:
    /// every later file there fails with it.
    failed: Arc<Mutex<BTreeMap<u64, i32>>>,
}

#[derive(Debug, Default)]
struct State {
    /// Files waiting for the next group.
    waiting: Vec<Waiting>,
    /// A group is being committed.
    leading: bool,
}

/// A file waiting for its group.
#[derive(Debug)]
struct Waiting {
    /// The file, through the open file description its owner made durable-to-be (whose
    /// writeback errors are the file's).
    fd: OwnedFd,
    /// Its filesystem's device.
    dev: u64,
    turn: flume::Sender<Turn>,
}

#[derive(Debug)]
enum Turn {
    /// The group is durable; the file's own writeback result.
    Done(io::Result<()>),
    /// The owner fsyncs the file itself (the machine has much else dirty).
    Fsync,
    /// The owner commits the next group.
    Lead,
}

impl Durable {
    /// `grouped`: the job has several files, to commit in groups.
    pub(crate) fn new(grouped: bool) -> Durable {
        Durable {
            grouped,
            state: Mutex::default(),
            synced_groups: AtomicU64::new(0),
            synced_files: AtomicU64::new(0),
            failed: Arc::default(),
        }
    }

    /// Returns once `file`'s bytes and inode are durable (or with the error that says they may
    /// not be). `syncfs`: its filesystem's device when that filesystem's `syncfs` is a full sync
    /// (the sink's [`SinkChoice::syncfs`](super::SinkChoice::syncfs)); the file is fsynced
    /// otherwise.
    pub(crate) async fn commit(&self, file: &File, syncfs: Option<u64>) -> io::Result<()> {
        let (true, Some(dev)) = (self.grouped, syncfs) else {
            return file.sync_all().await;
        };
        // The same open file description: its writeback errors are this descriptor's. Out of
        // descriptors, the file is fsynced on its own.
        let Ok(fd) = file.as_fd().try_clone_to_owned() else {
            return file.sync_all().await;
        };
        let (turn, my_turn) = flume::bounded(2);
        let lead = {
            let mut s = self.lock();
            s.waiting.push(Waiting { fd, dev, turn });
            !std::mem::replace(&mut s.leading, true)
        };
        if lead {
            self.lead().await;
        }
        loop {
            match my_turn.recv_async().await {
                Ok(Turn::Done(result)) => return result,
                Ok(Turn::Lead) => self.lead().await,
                // A busy machine (or the group's commit went away).
                Ok(Turn::Fsync) | Err(_) => return file.sync_all().await,
            }
        }
    }

    /// Groups committed with `syncfs`, and the files in them.
    pub(crate) fn synced(&self) -> (u64, u64) {
        (
            self.synced_groups.load(Ordering::Relaxed),
            self.synced_files.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits the files waiting now, on the blocking pool; the files that come meanwhile wait
    /// for the next group, which one of them commits.
    async fn lead(&self) {
        // Hands the lead on even if this future is dropped mid-group.
        let _handoff = HandOff(self);
        let group = std::mem::take(&mut self.lock().waiting);
        if group.is_empty() {
            return;
        }
        let files = group.len() as u64;
        // Each file's turn is sent from the blocking thread; one that panicked drops them,
        // and their owners fsync.
        let failed = Arc::clone(&self.failed);
        let commit = move || commit_group(group, &failed);
        if let Ok(synced) = compio::runtime::spawn_blocking(commit).await {
            if synced > 0 {
                self.synced_groups.fetch_add(1, Ordering::Relaxed);
                self.synced_files.fetch_add(synced, Ordering::Relaxed);
            }
            tracing::debug!(files, synced, "group committed");
        }
    }
}

/// Passes the lead to the first file waiting, or ends it.
struct HandOff<'a>(&'a Durable);

impl Drop for HandOff<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        while !s.waiting.is_empty() {
            if s.waiting[0].turn.try_send(Turn::Lead).is_ok() {
                return;
            }
            // Its owner is gone: nothing waits for that file.
            s.waiting.remove(0);
        }
        s.leading = false;
    }
}

/// Blocking: makes `group` durable and tells each file its turn; returns how many files a
/// `syncfs` made durable. `failed`: the filesystems where a `syncfs` of this job failed.
fn commit_group(group: Vec<Waiting>, failed: &Mutex<BTreeMap<u64, i32>>) -> u64 {
    let dirty = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| dirty_in(&m));
    let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
    let calm = calm(dirty);
    let mut by_fs: BTreeMap<u64, Vec<Waiting>> = BTreeMap::new();
    for w in group {
        // Not fsynced either: that fsync might have nothing left to write, and succeed.
        if let Some(&errno) = failed.get(&w.dev) {
            let _ = w
                .turn
                .send(Turn::Done(Err(io::Error::from_raw_os_error(errno))));
        } else if calm {
            by_fs.entry(w.dev).or_default().push(w);
        } else {
            let _ = w.turn.send(Turn::Fsync);
        }
    }
    let mut synced = 0;
    for (dev, files) in by_fs {
        if let Err(e) = rustix::fs::syncfs(&files[0].fd) {
            tracing::warn!(
                "syncfs failed ({e}): the {} files settled now, and every later one on that \
                 filesystem, fail",
                files.len()
            );
            failed.insert(dev, e.raw_os_error());
            for w in files {
                let _ = w.turn.send(Turn::Done(Err(io::Error::from_raw_os_error(
                    e.raw_os_error(),
                ))));
            }
            continue;
        }
        synced += files.len() as u64;
        for w in files {
            let own = fileop::written_back(w.fd.as_fd());
            let _ = w.turn.send(Turn::Done(own));
        }
    }
    synced
}

/// Whether a machine with `dirty` bytes dirty or under writeback (unknown: `None`) is calm
/// enough for a `syncfs`.
fn calm(dirty: Option<u64>) -> bool {
    dirty.is_some_and(|d| d <= DIRTY_MAX)
}

/// Bytes dirty or under writeback, from the text of `/proc/meminfo`.
fn dirty_in(meminfo: &str) -> Option<u64> {
    let kib = |key: &str| {
        meminfo.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.trim().strip_suffix("kB")?;
            v.trim().parse::<u64>().ok()
        })
    };
    Some((kib("Dirty:")? + kib("Writeback:")?) * 1024)
}

#[cfg(test)]
mod tests {

    use std::os::unix::fs::MetadataExt;

    use compio::io::AsyncWriteAtExt;

    use super::*;
    use crate::backend::Backend;

    #[test]
    fn dirty_bytes_are_read_from_meminfo() {
        let m = "MemTotal:       24576000 kB\nDirty:              1200 kB\nWriteback:           40 kB\nWritebackTmp:      7 kB\n";
        assert_eq!(dirty_in(m), Some(1240 * 1024));
        assert_eq!(dirty_in("MemTotal: 1 kB\n"), None);
    }

    /// (Which filesystems: `kernel_probes::fs`'s tests.)
    #[test]
    fn syncfs_only_on_a_calm_machine() {
        assert!(calm(Some(0)));
        assert!(calm(Some(DIRTY_MAX)));
        assert!(!calm(Some(DIRTY_MAX + 1)));
        assert!(!calm(None));
    }

    /// Many files committed at once on both back-ends: every commit returns, the files share
    /// groups, and each file's bytes are there.
    #[test]
    fn files_committed_together_share_groups() {
        for (backend, rt) in crate::runtime::test_runtimes(2) {
            let dir = tempfile::tempdir().expect("temp dir");
            let durable = Arc::new(Durable::new(true));
            let syncfs = syncfs_of(dir.path());
            const FILES: usize = 64;
            rt.block_on(async {
                let mut tasks = Vec::new();
                for i in 0..FILES {
                    let path = dir.path().join(format!("f{i}"));
                    let durable = Arc::clone(&durable);
                    tasks.push(compio::runtime::spawn(async move {
                        let mut file = compio::fs::File::create(&path).await?;
                        let body = vec![i as u8; 4096 + i];
                        file.write_all_at(body, 0).await.0?;
                        durable.commit(&file, syncfs).await
                    }));
                }
                for t in tasks {
                    t.await.expect("task").expect("committed");
                }
            });
            let (groups, files) = durable.synced();
            eprintln!("{backend:?}: {FILES} files in {groups} syncfs groups ({files} files)");
            // Done with syncfs unless the machine was busy writing something else (or the
            // temporary folder is on a filesystem without a full syncfs).
            if files > 0 {
                assert!(groups < FILES as u64, "{groups} groups for {FILES} files");
            }
            assert!(!durable.lock().leading, "the lead was handed back");
            for i in 0..FILES {
                let got = std::fs::read(dir.path().join(format!("f{i}"))).expect("read");
                assert_eq!(got, vec![i as u8; 4096 + i], "file {i}");
            }
        }
    }

    /// After a `syncfs` of the job failed on a filesystem, later files there fail with its
    /// error (they are not fsynced instead), on both back-ends; the lead is handed back.
    #[test]
    fn after_a_failed_syncfs_later_files_there_fail() {
        for (backend, rt) in crate::runtime::test_runtimes(2) {
            let dir = tempfile::tempdir().expect("temp dir");
            let dev = std::fs::metadata(dir.path()).expect("stat").dev();
            let durable = Durable::new(true);
            durable.failed.lock().expect("lock").insert(dev, libc::EIO);
            let got = rt.block_on(async {
                let file = compio::fs::File::create(dir.path().join("f"))
                    .await
                    .expect("create");
                durable.commit(&file, Some(dev)).await
            });
            let err = got.expect_err("a file on a failed filesystem");
            assert_eq!(err.raw_os_error(), Some(libc::EIO), "{backend:?}: {err}");
            assert_eq!(durable.synced(), (0, 0), "{backend:?}");
            assert!(
                !durable.lock().leading,
                "{backend:?}: the lead was handed back"
            );
        }
    }

    /// A job of one file, or a file on a filesystem without a full `syncfs`: fsynced.
    #[test]
    fn a_job_of_one_file_fsyncs_it() {
        let rt = crate::runtime::build_runtime(Backend::Portable, 1).expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let dev = std::fs::metadata(dir.path()).expect("stat").dev();
        for (grouped, syncfs) in [(false, Some(dev)), (true, None)] {
            let durable = Durable::new(grouped);
            rt.block_on(async {
                let file = compio::fs::File::create(dir.path().join("f"))
                    .await
                    .expect("create");
                durable.commit(&file, syncfs).await.expect("fsync");
            });
            assert_eq!(durable.synced(), (0, 0), "grouped={grouped} {syncfs:?}");
        }
    }

    /// The device of `dir`'s filesystem when its `syncfs` is a full sync, as the engine asks.
    fn syncfs_of(dir: &std::path::Path) -> Option<u64> {
        let dev = std::fs::metadata(dir).expect("stat").dev();
        kernel_probes::fs::full_syncfs(dir).then_some(dev)
    }
}
