//! The partial file (`PATH.incomplete`, or the suffix the job gives): created without following symlinks, locked against a
//! second ferry writing the same output, and renamed into place only while it is still the file
//! this process wrote.
//!
//! The name is fixed (a later run resumes it), so it is opened, not created new: a symlink at
//! the name is removed and never followed (`O_NOFOLLOW`), and so is a name with other links (a
//! hard link planted to another file) or one that is not a regular file. The descriptor is then
//! locked with `flock(LOCK_EX | LOCK_NB)`: a second process on the same output finds it locked
//! and stops with [`GetError::OutputBusy`], touching nothing. After the lock, the name must
//! still be that inode (the first holder may have renamed it meanwhile), or the open starts
//! over. Every later descriptor of the file (the O_DIRECT one, the one the hash reads back
//! through) is opened by name and checked to be the same inode; the rename and the removal
//! check it too.
//!
//! Invariant: while this process holds the lock, the name is its file; it never renames or
//! removes a file it does not hold. Not here: what is written, and when the file is published.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{FlockOperation, OFlags, Stat};

use crate::backend::nofollow::{Dir, adopt, is_regular, same_inode};
use crate::error::GetError;

/// Opens and resolves tried before giving up on a name that keeps changing under us.
const OPEN_TRIES: usize = 8;

/// One file's partial file, in its directory.
#[derive(Debug)]
pub(crate) struct Partial {
    dir: Dir,
    /// `NAME.incomplete` (or another suffix).
    name: OsString,
    /// `NAME`.
    final_name: OsString,
    /// The locked descriptor and what it is, while this process holds the file.
    held: Mutex<Option<(OwnedFd, Stat)>>,
}

impl Partial {
    /// The partial file of `output`, which lives in `dir`: its name plus `suffix`.
    pub(super) fn new(dir: Dir, output: &Path, suffix: &str) -> Partial {
        let final_name = output.file_name().unwrap_or(output.as_os_str()).to_owned();
        let mut name = final_name.clone();
        name.push(suffix);
        Partial {
            dir,
            name,
            final_name,
            held: Mutex::new(None),
        }
    }

    /// `PATH.incomplete`, for messages.
    pub(super) fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The size of the partial file now under the name, when it is a regular file.
    pub(super) fn len_on_disk(&self) -> Option<u64> {
        let st = self.dir.stat(&self.name).ok()??;
        (is_regular(&st) && st.st_nlink == 1).then_some(st.st_size as u64)
    }

    /// Opens the partial file for reading and writing, creating it when missing and emptying it
    /// when `fresh`, and locks it for this process (kept until [`Partial::publish`] or
    /// [`Partial::discard`]). A second fetch in this process reuses the lock it holds.
    pub(super) async fn create(&self, fresh: bool) -> Result<compio::fs::File, GetError> {
        let not_writable = |source: io::Error| GetError::OutputNotWritable {
            path: self.path(),
            source,
        };
        if let Some(file) = self.held_dup().map_err(not_writable)? {
            if fresh {
                rustix::fs::ftruncate(&file, 0).map_err(|e| not_writable(e.into()))?;
            }
            return Ok(adopt(file));
        }
        for _ in 0..OPEN_TRIES {
            let file = match self
                .dir
                .open_file(&self.name, OFlags::RDWR | OFlags::CREATE)
                .await
            {
                Ok(f) => f,
                // A symlink (or a directory) at the name ferry owns: never followed, removed.
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    tracing::warn!(
                        "{} was a symlink; removed it (ferry never writes through one)",
                        self.path().display()
                    );
                    self.dir.unlink(&self.name).map_err(not_writable)?;
                    continue;
                }
                Err(e) => return Err(not_writable(e)),
            };
            let st = rustix::fs::fstat(&file).map_err(|e| not_writable(e.into()))?;
            if !is_regular(&st) || st.st_nlink != 1 {
                // A FIFO, or a hard link to another file: not ours to write into.
                tracing::warn!(
                    "{} was not a file of its own (a link or a special file); removed it",
                    self.path().display()
                );
                drop(file);
                self.dir.unlink(&self.name).map_err(not_writable)?;
                continue;
            }
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(GetError::OutputBusy {
                        path: self.dir.join(&self.final_name),
                    });
                }
                Err(e) => return Err(not_writable(e.into())),
            }
            // The first holder may have renamed or removed the name before we locked.
            match self.dir.stat(&self.name).map_err(not_writable)? {
                Some(now) if same_inode(&now, &st) => {}
                _ => continue,
            }
            if fresh {
                rustix::fs::ftruncate(&file, 0).map_err(|e| not_writable(e.into()))?;
            }
            let held =
                rustix::io::fcntl_dupfd_cloexec(&file, 0).map_err(|e| not_writable(e.into()))?;
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some((held, st));
            return Ok(file);
        }
        Err(not_writable(io::Error::other(
            "the name kept changing while ferry opened it (another process is replacing it)",
        )))
    }

    /// Another descriptor of the held file, opened by name with `flags` (`O_DIRECT`, say) and
    /// checked to be the same file.
    pub(super) async fn reopen(&self, flags: OFlags) -> io::Result<compio::fs::File> {
        let st = self.held_stat().ok_or_else(|| {
            io::Error::other("the partial file is not held by this process any more")
        })?;
        let file = self.dir.open_file(&self.name, flags).await?;
        let now = rustix::fs::fstat(&file)?;
        if !same_inode(&now, &st) {
            return Err(replaced());
        }
        Ok(file)
    }

    /// Renames the held file to its final name, after checking the name is still it, and
    /// releases the lock.
    pub(super) fn publish(&self) -> io::Result<()> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let Some((_, st)) = held.as_ref() else {
            return Err(io::Error::other(
                "the partial file is not held by this process",
            ));
        };
        match self.dir.stat(&self.name)? {
            Some(now) if same_inode(&now, st) => {}
            _ => return Err(replaced()),
        }
        self.dir.rename(&self.name, &self.final_name)?;
        *held = None;
        Ok(())
    }

    /// Removes the partial file when it is still the one held, and releases the lock. A file
    /// this process does not hold (another run's) is left alone.
    pub(super) fn discard(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, st)) = held.as_ref()
            && self
                .dir
                .stat(&self.name)
                .ok()
                .flatten()
                .is_some_and(|now| same_inode(&now, st))
        {
            let _ = self.dir.unlink(&self.name);
        }
        *held = None;
    }

    /// Releases the lock and keeps the file (for a later run to resume).
    pub(super) fn release(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn held_stat(&self) -> Option<Stat> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, st)| *st)
    }

    /// A new descriptor of the held file (sharing its lock), when this process holds it.
    fn held_dup(&self) -> io::Result<Option<std::fs::File>> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_ref() {
            Some((fd, _)) => Ok(Some(std::fs::File::from(rustix::io::fcntl_dupfd_cloexec(
                fd.as_fd(),
                0,
            )?))),
            None => Ok(None),
        }
    }
}

fn replaced() -> io::Error {
    io::Error::other("the partial file was replaced by another process")
}
