//! The target directory's filesystem: O_DIRECT and its alignment, `fallocate`, free space.
//!
//! Alignment comes from `statx(STATX_DIOALIGN)` (Linux 6.1+, asked of a regular file because
//! filesystems answer it only for those) and is always confirmed by a real O_DIRECT write of one
//! aligned block: a filesystem can report an alignment and still refuse the open (tmpfs before
//! 6.6, some FUSE mounts). The probe file is an unnamed `O_TMPFILE` next to the downloads, so a
//! process killed mid-probe leaves nothing behind; where the filesystem has no `O_TMPFILE`, a
//! named file unlinked right after it is created.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, Mode, OFlags, StatxFlags};
use serde::Serialize;

use crate::Support;

/// O_DIRECT alignment requirements, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DioAlign {
    /// Alignment of the user buffer's address.
    pub memory: u32,
    /// Alignment of file offsets and lengths.
    pub offset: u32,
    /// Where the numbers came from: `"statx"` or `"test write"`.
    pub source: &'static str,
}

/// What the probe learned about one directory.
#[derive(Debug, Clone, Serialize)]
pub struct DirReport {
    /// The directory probed.
    pub path: PathBuf,
    /// Filesystem name from `statfs` (`ext4`, `xfs`, `tmpfs`, ...), or its magic number in hex.
    pub filesystem: String,
    /// Bytes available to an unprivileged writer.
    pub free_bytes: u64,
    /// Size of the filesystem in bytes.
    pub total_bytes: u64,
    /// Whether an O_DIRECT write of one aligned block works there.
    pub o_direct: Support,
    /// O_DIRECT alignment, when O_DIRECT works.
    pub dio_align: Option<DioAlign>,
    /// Whether `fallocate(mode 0)` works there.
    pub fallocate: Support,
}

/// Probes `dir`. A directory that cannot be written to reports every write test as unavailable
/// with the errno of the failed create.
pub fn probe_dir(dir: &Path) -> DirReport {
    let (free_bytes, total_bytes) = match rustix::fs::statvfs(dir) {
        Ok(s) => (s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize),
        Err(_) => (0, 0),
    };
    let filesystem = match rustix::fs::statfs(dir) {
        // `f_type` is i64 on x86_64 glibc but u32 or i32 elsewhere.
        #[allow(clippy::unnecessary_cast)]
        Ok(s) => fs_name(s.f_type as i64),
        Err(e) => format!("unknown ({e})"),
    };
    let (o_direct, dio_align, fallocate) = match scratch_file(dir) {
        Err(e) => {
            let why = Support::failed("create probe file", &e.into());
            (why.clone(), None, why)
        }
        Ok(fd) => {
            let fallocate = Support::from_result(
                "fallocate",
                rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, 1 << 20).map_err(Into::into),
            );
            let (o_direct, dio_align) = probe_direct(&fd);
            (o_direct, dio_align, fallocate)
        }
    };
    DirReport {
        path: dir.to_path_buf(),
        filesystem,
        free_bytes,
        total_bytes,
        o_direct,
        dio_align,
        fallocate,
    }
}

/// A file in `dir` with no name: `O_TMPFILE`, or a named file unlinked at once where the
/// filesystem cannot make unnamed ones.
fn scratch_file(dir: &Path) -> rustix::io::Result<OwnedFd> {
    let mode = Mode::from_raw_mode(0o600);
    if let Ok(fd) = rustix::fs::open(dir, OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, mode) {
        return Ok(fd);
    }
    let path = dir.join(format!(".ferry-probe-{}-{}", std::process::id(), nanos()));
    let fd = rustix::fs::open(
        &path,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
        mode,
    )?;
    let _ = rustix::fs::unlink(&path);
    Ok(fd)
}

fn probe_direct(fd: &OwnedFd) -> (Support, Option<DioAlign>) {
    let statx = rustix::fs::statx(
        fd.as_fd(),
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        StatxFlags::DIOALIGN,
    );
    let from_statx = match statx {
        Ok(sx) if StatxFlags::from_bits_retain(sx.stx_mask).contains(StatxFlags::DIOALIGN) => {
            if sx.stx_dio_offset_align == 0 {
                let reason = "statx: the filesystem reports no O_DIRECT support".to_owned();
                return (
                    Support::Unavailable {
                        errno: None,
                        reason,
                    },
                    None,
                );
            }
            Some(DioAlign {
                memory: sx.stx_dio_mem_align,
                offset: sx.stx_dio_offset_align,
                source: "statx",
            })
        }
        _ => None,
    };
    // The same check as open(O_DIRECT): the filesystem must support direct I/O.
    let direct = rustix::fs::fcntl_getfl(fd)
        .and_then(|flags| rustix::fs::fcntl_setfl(fd, flags | OFlags::DIRECT));
    if let Err(e) = direct {
        return (Support::failed("open(O_DIRECT)", &e.into()), None);
    }
    // One block, 4096-aligned in memory and in the file: valid for every alignment up to 4096.
    // Take an aligned window of a plain Vec instead of a custom allocation.
    const BLOCK: usize = 4096;
    let backing = vec![0u8; 2 * BLOCK];
    let start = backing.as_ptr().align_offset(BLOCK);
    let block = &backing[start..start + BLOCK];
    let candidates: &[u32] = match from_statx {
        Some(a) => &[a.offset.max(a.memory)],
        None => &[512, BLOCK as u32],
    };
    let mut last_err = None;
    for &align in candidates {
        let len = (align as usize).clamp(512, BLOCK);
        match rustix::io::pwrite(fd, &block[..len], 0) {
            Ok(_) => {
                let dio = from_statx.unwrap_or(DioAlign {
                    memory: align,
                    offset: align,
                    source: "test write",
                });
                return (Support::Available, Some(dio));
            }
            Err(e) => last_err = Some(e),
        }
    }
    let err = last_err
        .map(std::io::Error::from)
        .unwrap_or_else(|| std::io::Error::other("no alignment tried"));
    (Support::failed("pwrite(O_DIRECT)", &err), None)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Whether `syncfs` on the filesystem of `dir` writes back and flushes all of it, as an `fsync`
/// of each file would: the local filesystems that implement it (ext2/3/4, XFS, btrfs, f2fs,
/// tmpfs). Not NFS or FUSE, whose `syncfs` may not reach the server, nor anything unknown.
pub fn full_syncfs(dir: &Path) -> bool {
    // `f_type` is i64 on x86_64 glibc but u32 or i32 elsewhere.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(dir).is_ok_and(|s| full_syncfs_type(s.f_type as i64))
}

fn full_syncfs_type(magic: i64) -> bool {
    matches!(
        fs_name(magic).as_str(),
        "ext4" | "xfs" | "btrfs" | "f2fs" | "tmpfs"
    )
}

fn fs_name(magic: i64) -> String {
    let name = match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0x6573_5546 => "fuse",
        0x5346_544E => "ntfs",
        0x4d44 => "vfat",
        0x6462_6720 => "debugfs",
        0x0027_e0eb => "cgroup",
        0x6265_6572 => "sysfs",
        0x9fa0 => "proc",
        _ => return format!("{magic:#x}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_a_writable_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = probe_dir(dir.path());
        assert!(r.total_bytes > 0, "{r:?}");
        if r.o_direct.is_available() {
            let a = r.dio_align.expect("alignment when O_DIRECT works");
            assert!(a.offset.is_power_of_two() && a.offset <= 4096, "{a:?}");
        }
        // The probe file is gone again.
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read_dir").collect();
        assert!(left.is_empty(), "probe left files behind: {left:?}");
        eprintln!(
            "fs probe: {} o_direct={} fallocate={}",
            r.filesystem, r.o_direct, r.fallocate
        );
    }

    #[test]
    fn syncfs_is_a_full_sync_only_on_local_filesystems_that_implement_it() {
        for magic in [0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010, 0x0102_1994] {
            assert!(full_syncfs_type(magic), "{}", fs_name(magic));
        }
        // NFS, FUSE, overlayfs, ZFS, something unknown.
        for magic in [0x6969, 0x6573_5546, 0x794C_7630, 0x2FC1_2FC1, 0x1234] {
            assert!(!full_syncfs_type(magic), "{}", fs_name(magic));
        }
        assert!(!full_syncfs(Path::new("/nonexistent/ferry-probe")));
    }

    #[test]
    fn a_missing_dir_reports_the_errno() {
        let r = probe_dir(Path::new("/nonexistent/ferry-probe"));
        match r.o_direct {
            Support::Unavailable { errno, .. } => assert_eq!(errno, Some(libc::ENOENT)),
            Support::Available => panic!("O_DIRECT cannot work in a missing directory"),
        }
    }
}
