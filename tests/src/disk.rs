//! A small filesystem for the full-disk tests: a tmpfs of a given size, mounted in a private
//! mount namespace (`unshare --mount`, as root) that a `sleep` process holds. ferry runs inside
//! it through `nsenter`; the test reaches the same files through `/proc/PID/root`. Nothing is
//! mounted in the machine's namespace, and the mount goes away with its holder, which is
//! killed by PID on drop (also when the test fails).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A tmpfs of a fixed size in a mount namespace of its own.
#[derive(Debug)]
pub struct SmallDisk {
    holder: Child,
    /// The mount point, as processes in the namespace see it.
    inside: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` bytes.
    pub fn mount(size: u64) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tmp");
        let inside = dir.path().join("disk");
        std::fs::create_dir(&inside).expect("mount point");
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o "size=$1" tmpfs "$0" && echo ready && exec sleep 3600"#)
            .arg(&inside)
            .arg(size.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare (util-linux)");
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().expect("stdout")).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let out = holder.wait_with_output().expect("unshare");
            panic!(
                "the full-disk tests need a mount namespace and tmpfs (root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        SmallDisk {
            holder,
            inside,
            _dir: dir,
        }
    }

    /// The mount point as ferry (run by [`SmallDisk::command`]) sees it.
    pub fn inside(&self) -> &Path {
        &self.inside
    }

    /// `path` under the mount point (as ferry sees it), as this process reaches it.
    pub fn outside(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.holder.id())).join(rel)
    }

    /// The mount point, as this process reaches it.
    pub fn root(&self) -> PathBuf {
        self.outside(&self.inside)
    }

    /// `program` run in the namespace (`nsenter` execs it: its PID is the child's).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "--"])
            .arg(program);
        c
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
        let path = self.root().join("filler");
        let f = std::fs::File::create(&path).expect("create the filler");
        // ferry may reserve space between the look and the fallocate: look again then.
        for _ in 0..100 {
            let take = self.free().saturating_sub(leave) & !4095;
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
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
