//! Small and failing filesystems for the disk tests, each in a private mount namespace
//! (`unshare --mount`, as root) that a `sleep` process holds. ferry runs inside it through
//! `nsenter`; the test reaches the same files through `/proc/PID/root`. Nothing is mounted in
//! the machine's namespace, and the mounts go away with their holder, which is killed by PID on
//! drop (also when the test fails).
//!
//! - [`SmallDisk`]: a tmpfs of a given size, for full disks.
//! - [`FailingDisk`]: ext4 on a loop device whose image lies on a small tmpfs, for a disk that
//!   fails writes: ext4 takes the bytes into the page cache, and their writeback fails
//!   (`ENOSPC` from the loop device) once the tmpfs under the image is full.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A mount namespace of its own, set up by a shell script and held by a `sleep` process.
#[derive(Debug)]
struct Held {
    holder: Child,
    /// A temporary folder, `$0` of the script.
    dir: tempfile::TempDir,
}

impl Held {
    /// Runs `script` (`sh -c`, with `$0` a new temporary folder and `args` after it) in a new
    /// mount namespace; the script prints `ready` and execs `sleep` once its mounts are made.
    fn new(script: &str, args: &[String], needs: &str) -> Held {
        let dir = tempfile::tempdir().expect("tmp");
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare (util-linux)");
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().expect("stdout")).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let out = holder.wait_with_output().expect("unshare");
            panic!("{needs}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Held { holder, dir }
    }

    fn outside(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.holder.id())).join(rel)
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "--"])
            .arg(program);
        c
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Another process filling the filesystem of folder `root` (as this process reaches it): a
/// file taking all but `leave` of its free bytes (as far as whole pages allow). Returns its
/// path, to remove later.
fn fill(root: &Path, leave: u64) -> PathBuf {
    let free = || {
        let s = rustix::fs::statvfs(root).expect("statvfs");
        s.f_bavail * s.f_frsize
    };
    let path = root.join("filler");
    let f = std::fs::File::create(&path).expect("create the filler");
    // ferry may reserve space between the look and the fallocate: look again then.
    for _ in 0..100 {
        let take = free().saturating_sub(leave) & !4095;
        match rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, take) {
            Ok(()) => return path,
            Err(rustix::io::Errno::NOSPC) => {
                f.set_len(0).expect("empty the filler");
            }
            Err(e) => panic!("fallocate the filler: {e}"),
        }
    }
    panic!("could not fill the disk: its free space kept shrinking")
}

/// A tmpfs of a fixed size in a mount namespace of its own.
#[derive(Debug)]
pub struct SmallDisk {
    held: Held,
    /// The mount point, as processes in the namespace see it.
    inside: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` bytes.
    pub fn mount(size: u64) -> SmallDisk {
        let held = Held::new(
            r#"mkdir "$0/disk" && mount -t tmpfs -o "size=$1" tmpfs "$0/disk" && echo ready && exec sleep 3600"#,
            &[size.to_string()],
            "the full-disk tests need a mount namespace and tmpfs (root)",
        );
        let inside = held.dir.path().join("disk");
        SmallDisk { held, inside }
    }

    /// The mount point as ferry (run by [`SmallDisk::command`]) sees it.
    pub fn inside(&self) -> &Path {
        &self.inside
    }

    /// `path` under the mount point (as ferry sees it), as this process reaches it.
    pub fn outside(&self, path: &Path) -> PathBuf {
        self.held.outside(path)
    }

    /// The mount point, as this process reaches it.
    pub fn root(&self) -> PathBuf {
        self.outside(&self.inside)
    }

    /// `program` run in the namespace (`nsenter` execs it: its PID is the child's).
    pub fn command(&self, program: &Path) -> Command {
        self.held.command(program)
    }

    /// Bytes free on the tmpfs.
    pub fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(self.root()).expect("statvfs");
        s.f_bavail * s.f_frsize
    }

    /// The tmpfs's size.
    pub fn size(&self) -> u64 {
        let s = rustix::fs::statvfs(self.root()).expect("statvfs");
        s.f_blocks * s.f_frsize
    }

    /// Another process filling the disk: a file taking all but `leave` of the free bytes (as
    /// far as whole pages allow). Returns its path, to remove later.
    pub fn fill(&self, leave: u64) -> PathBuf {
        fill(&self.root(), leave)
    }
}

/// ext4 (without a journal, as on this project's machines) on a loop device whose image file
/// lies on a tmpfs of a fixed size, in a mount namespace of its own. ext4 sees a disk of the
/// image's size; once the tmpfs is full, the loop device fails every write to a block the image
/// has not stored yet (`ENOSPC`, as a thin-provisioned disk out of room), after ext4 took the
/// bytes into the page cache. Requests to the loop device are one 4 KiB block each, one page
/// of the tmpfs: the loop device reports a write the tmpfs took only in part as done (it
/// checks only reads for short counts), and would lose the rest without an error. The inode
/// tables, bitmaps and group descriptors are written by
/// `mkfs` (no lazy init), so they are stored already and their later writes succeed: what
/// fails is the writeback of file data, and of directory blocks the image has not stored yet.
#[derive(Debug)]
pub struct FailingDisk {
    held: Held,
    /// Where ext4 is mounted, as processes in the namespace see it.
    inside: PathBuf,
}

impl FailingDisk {
    /// An ext4 of `size` bytes on an image on a tmpfs of `backing` bytes.
    pub fn mount(backing: u64, size: u64) -> FailingDisk {
        let held = Held::new(
            r#"set -e
mkdir "$0/back" "$0/disk"
mount -t tmpfs -o "size=$1" tmpfs "$0/back"
truncate -s "$2" "$0/back/img"
mkfs.ext4 -q -F -b 4096 -O ^has_journal -E lazy_itable_init=0 "$0/back/img"
mount -o loop "$0/back/img" "$0/disk"
dev=$(findmnt -n -o SOURCE "$0/disk")
echo 4 > "/sys/block/${dev#/dev/}/queue/max_sectors_kb"
echo ready
exec sleep 3600"#,
            &[backing.to_string(), size.to_string()],
            "the failing-disk tests need a mount namespace, tmpfs, loop devices and mkfs.ext4 (root)",
        );
        let inside = held.dir.path().join("disk");
        FailingDisk { held, inside }
    }

    /// The ext4 mount point as ferry (run by [`FailingDisk::command`]) sees it.
    pub fn inside(&self) -> &Path {
        &self.inside
    }

    /// `path` under the mount point (as ferry sees it), as this process reaches it.
    pub fn outside(&self, path: &Path) -> PathBuf {
        self.held.outside(path)
    }

    /// `program` run in the namespace (`nsenter` execs it: its PID is the child's).
    pub fn command(&self, program: &Path) -> Command {
        self.held.command(program)
    }

    /// Leaves `room` bytes for the image to grow by: writes past them fail.
    pub fn leave_room(&self, room: u64) {
        fill(&self.held.outside(&self.held.dir.path().join("back")), room);
    }

    /// What the disk kept, as after a crash: unmounts the filesystem while the tmpfs is still
    /// full (what was not on the disk by then is lost), gives the tmpfs its room back, repairs
    /// the filesystem (`e2fsck -fy`) and mounts it again. Returns e2fsck's report.
    pub fn remount(&self) -> String {
        let o: Output = self
            .held
            .command(Path::new("sh"))
            .arg("-c")
            .arg(
                r#"umount "$0/disk" && rm "$0/back/filler" && { e2fsck -fy "$0/back/img" 2>&1 || true; } && mount -o loop "$0/back/img" "$0/disk""#,
            )
            .arg(self.held.dir.path())
            .output()
            .expect("run sh");
        let report = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "remount: {report} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        report
    }
}
