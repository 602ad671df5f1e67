//! Files by name inside a held directory descriptor, never through a symlink.
//!
//! Every file ferry creates or reopens goes through a [`Dir`]: `openat` relative to a directory
//! descriptor held for the job, always with `O_NOFOLLOW`, so a symlink planted under a name
//! ferry writes (`PATH.incomplete`, a journal, a temporary file) is refused, never followed.
//! Directories beneath a root (a repo's folder in the cache) are walked one component at a time
//! with `O_NOFOLLOW | O_DIRECTORY` ([`Dir::beneath`]), so no symlink inside the root is
//! followed either; the root itself is the user's, and opened as given. A name that must be new
//! is created with `O_EXCL` ([`Dir::create_temp`]: unpredictable names from `getrandom`). A
//! descriptor reopened by name (the O_DIRECT one of a partial file) is checked to be the same
//! inode as the one held ([`same_inode`]).
//!
//! Invariants: no function here follows a symlink in the last component, and [`Dir::beneath`]
//! follows none at all. Not here: which names are written, locking, and what a caller does
//! when a name is taken.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use compio::buf::IntoInner;
use rustix::fs::{AtFlags, Mode, OFlags};

/// Permission bits of the files and directories ferry creates (the umask applies).
const FILE_MODE: u32 = 0o666;
const DIR_MODE: u32 = 0o777;

/// A directory, held open: the files of a job are created and renamed relative to it.
#[derive(Debug, Clone)]
pub(crate) struct Dir {
    fd: Arc<OwnedFd>,
    /// What messages name.
    path: PathBuf,
}

impl Dir {
    /// Opens the directory `path` as given (symlinks on the way are the user's own choice).
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            fd: Arc::new(fd),
            path: path.to_path_buf(),
        })
    }

    /// The directory `rel` beneath this one, following no symlink on the way (a symlink or a
    /// file where a directory should be is an error naming it); missing directories are
    /// created when `create`. `rel` must be relative and hold no `..`.
    pub(crate) fn beneath(&self, rel: &Path, create: bool) -> io::Result<Dir> {
        let mut fd = Arc::clone(&self.fd);
        let mut path = self.path.clone();
        for c in rel.components() {
            let name = match c {
                Component::Normal(n) => n,
                Component::CurDir => continue,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} leaves {}", rel.display(), self.path.display()),
                    ));
                }
            };
            path.push(name);
            let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
            let opened = match rustix::fs::openat(&*fd, name, flags, Mode::empty()) {
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&*fd, name, Mode::from_raw_mode(DIR_MODE)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(named(e.into(), "create directory", &path)),
                    }
                    rustix::fs::openat(&*fd, name, flags, Mode::empty())
                }
                other => other,
            };
            let opened = opened.map_err(|e| match e {
                rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!(
                        "{} is not a directory (a symlink or a file): ferry follows no symlink \
                         inside {}",
                        path.display(),
                        self.path.display()
                    ),
                ),
                e => named(e.into(), "open directory", &path),
            })?;
            fd = Arc::new(opened);
        }
        Ok(Dir { fd, path })
    }

    /// The directory's path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory, for messages.
    pub(crate) fn join(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the file at `rel` beneath this directory, following no symlink on the way or at
    /// the end: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or where that call is missing
    /// or blocked (kernels before 5.6, some seccomp profiles), the same walk one component at a
    /// time with `O_NOFOLLOW`.
    pub(crate) fn open_beneath(&self, rel: &Path, flags: OFlags) -> io::Result<std::fs::File> {
        use rustix::fs::ResolveFlags;
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(
            &*self.fd,
            rel,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => Ok(std::fs::File::from(fd)),
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                let name = rel
                    .file_name()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
                let parent = rel.parent().unwrap_or(Path::new(""));
                self.beneath(parent, false)?.open_std(name, flags)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens (or creates, with `O_CREAT` in `flags`) `name`, never through a symlink.
    pub(crate) fn open_std(&self, name: &OsStr, flags: OFlags) -> io::Result<std::fs::File> {
        let fd = rustix::fs::openat(
            &*self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )?;
        Ok(std::fs::File::from(fd))
    }

    /// [`Dir::open_std`] as a runtime op (an io_uring `OPENAT` on that back-end: creating a file
    /// can wait for the filesystem's journal, and must not stall the worker meanwhile).
    pub(crate) async fn open_file(
        &self,
        name: &OsStr,
        flags: OFlags,
    ) -> io::Result<compio::fs::File> {
        let name = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name"))?;
        let op = compio::driver::op::OpenFile::new(
            Arc::clone(&self.fd),
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        );
        let compio::BufResult(res, op) = compio::runtime::submit(op).await;
        res?;
        Ok(adopt(std::fs::File::from(op.into_inner())))
    }

    /// Creates a new file named `<stem>.ferry-tmp-<16 random hex digits>` (`O_EXCL`), for
    /// writing and then renaming over another name.
    pub(crate) fn create_temp(&self, stem: &OsStr) -> io::Result<(OsString, std::fs::File)> {
        loop {
            let mut bytes = [0u8; 8];
            rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
            let mut name = stem.to_owned();
            name.push(format!(".ferry-tmp-{}", hex::encode(bytes)));
            match self.open_std(&name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL) {
                Ok(f) => return Ok((name, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `bytes` under `name` through a new temporary file, fsynced, renamed into place: a
    /// reader sees the old content or the new, and a symlink at `name` is replaced, not
    /// followed.
    pub(crate) fn write_atomic(&self, name: &OsStr, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let (tmp, mut f) = self.create_temp(name)?;
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        let renamed = written.and_then(|()| self.rename(&tmp, name));
        if renamed.is_err() {
            let _ = self.unlink(&tmp);
        }
        renamed
    }

    /// Creates the symlink `name -> target` through a temporary name, renamed into place.
    pub(crate) fn symlink_atomic(&self, target: &Path, name: &OsStr) -> io::Result<()> {
        // A temporary name nobody can predict, taken with O_EXCL, then freed for the symlink.
        let (tmp, f) = self.create_temp(name)?;
        drop(f);
        self.unlink(&tmp)?;
        rustix::fs::symlinkat(target, &*self.fd, &tmp)?;
        let renamed = self.rename(&tmp, name);
        if renamed.is_err() {
            let _ = self.unlink(&tmp);
        }
        renamed
    }

    /// Renames `from` to `to` within this directory (neither followed if a symlink).
    pub(crate) fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::renameat(&*self.fd, from, &*self.fd, to)?)
    }

    /// Renames `from` in this directory to `to` in `dir` (same filesystem); a symlink at `to`
    /// is replaced, not followed.
    pub(crate) fn rename_into(&self, from: &OsStr, dir: &Dir, to: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::renameat(&*self.fd, from, &*dir.fd, to)?)
    }

    /// Removes the name `name` (a symlink is removed, not followed).
    pub(crate) fn unlink(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&*self.fd, name, AtFlags::empty())?)
    }

    /// What `name` is, not following it: `None` when there is no such name.
    pub(crate) fn stat(&self, name: &OsStr) -> io::Result<Option<rustix::fs::Stat>> {
        match rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The directory's descriptor (to fsync it).
    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether two stats are of one inode.
pub(crate) fn same_inode(a: &rustix::fs::Stat, b: &rustix::fs::Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Whether a stat is of a regular file.
pub(crate) fn is_regular(st: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
}

/// A std file as a runtime file, for the data path's ops.
pub(crate) fn adopt(file: std::fs::File) -> compio::fs::File {
    // SAFETY: `into_raw_fd` hands over ownership of an open descriptor, which the compio file
    // takes (and closes). compio's attach is a no-op on Linux for both drivers (io_uring and
    // polling), so nothing is skipped by not calling it.
    unsafe { compio::fs::File::from_raw_fd(file.into_raw_fd()) }
}

fn named(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beneath_refuses_symlinked_and_escaping_components() {
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("tmp");
        let root = Dir::open(tmp.path()).expect("root");
        let made = root.beneath(Path::new("a/b"), true).expect("created");
        assert!(made.path().ends_with("a/b") && tmp.path().join("a/b").is_dir());
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("link")).expect("symlink");
        let e = root
            .beneath(Path::new("link/x"), true)
            .expect_err("a symlinked component");
        assert!(e.to_string().contains("follows no symlink"), "{e}");
        assert!(!outside.path().join("x").exists(), "nothing made outside");
        assert!(root.beneath(Path::new("../x"), true).is_err());
        assert!(root.beneath(Path::new("/etc"), false).is_err());
    }

    #[test]
    fn files_are_never_opened_through_a_symlink() {
        let tmp = tempfile::tempdir().expect("tmp");
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        std::os::unix::fs::symlink(&victim, tmp.path().join("f.incomplete")).expect("plant");
        let dir = Dir::open(tmp.path()).expect("dir");
        let e = dir
            .open_std(
                OsStr::new("f.incomplete"),
                OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC,
            )
            .expect_err("symlink refused");
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        dir.write_atomic(OsStr::new("f.incomplete"), b"new")
            .expect("replaced");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        assert_eq!(
            std::fs::read(tmp.path().join("f.incomplete")).expect("file"),
            b"new"
        );
        let (a, _) = dir.create_temp(OsStr::new("x")).expect("temp");
        let (b, _) = dir.create_temp(OsStr::new("x")).expect("temp");
        assert_ne!(a, b, "temporary names are not predictable");
    }
}
