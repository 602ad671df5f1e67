//! File operations compio does not offer, as ring operations on io_uring and as their syscalls
//! on compio's blocking pool on the polling driver (safe mode), so that neither blocks the
//! worker thread that runs every connection of its core:
//!
//! - [`fallocate`] (`IORING_OP_FALLOCATE`): a large file's extents are reserved before its
//!   ranges arrive.
//! - [`start_writeback`] (`IORING_OP_SYNC_FILE_RANGE` with `SYNC_FILE_RANGE_WRITE`): a buffered
//!   sink starts writing back each [`STRETCH`] of the file as soon as it is written. Bytes
//!   written through the page cache otherwise stay dirty until the kernel's flusher takes them,
//!   which it starts only past the dirty background threshold (10% of memory); past the dirty
//!   limit the writer is throttled, and the final fsync waits for whatever is still dirty.
//!   Started a stretch at a time, the disk writes from the first megabytes on. Measured on
//!   8 GiB from nginx, verified, in safe mode: 21.8 s and 2.63 CPU s/GB without, 16.8 s and
//!   2.10 CPU s/GB with (3 alternated rounds; 27.6 s against 19.3 s in 2 more), where curl took
//!   22.3 s.
//!
//! This module does not decide what to reserve or which stretches to start, and it waits for no
//! writeback (the final fsync does, and reports a write error). The fallback to `ftruncate` on
//! filesystems without `fallocate` is the caller's.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};

use compio::BufResult;
use compio::driver::{Decision, IourOpCode, OpEntry, OpType, PollOpCode, SharedFd};

/// Reserves bytes `0..len` of `fd` (mode 0: allocate, extend the size).
pub(crate) async fn fallocate<S: AsFd + 'static>(fd: SharedFd<S>, len: u64) -> io::Result<()> {
    submit(fd, What::Fallocate { len }).await
}

/// Starts writing back the dirty pages of `range` of `fd`, without waiting for them.
pub(crate) async fn start_writeback<S: AsFd + 'static>(
    fd: SharedFd<S>,
    range: Range<u64>,
) -> io::Result<()> {
    submit(fd, What::StartWriteback { range }).await
}

/// Writeback is started this many bytes at a time.
pub(crate) const STRETCH: u64 = 8 << 20;

/// The [`STRETCH`], if any, that a write of `written` completes: the last one that ends inside
/// it or at its end. A stretch may hold bytes other connections have not written yet; the
/// flusher takes those later, as it would have taken all of them.
pub(crate) fn completed_stretch(written: Range<u64>) -> Option<Range<u64>> {
    let (first, last) = (written.start / STRETCH, written.end / STRETCH);
    (last > first).then(|| (last - 1) * STRETCH..last * STRETCH)
}

async fn submit<S: AsFd + 'static>(fd: SharedFd<S>, what: What) -> io::Result<()> {
    let BufResult(r, _) = compio::runtime::submit(FileOp { fd, what }).await;
    r.map(|_| ())
}

enum What {
    Fallocate { len: u64 },
    StartWriteback { range: Range<u64> },
}

struct FileOp<S> {
    fd: SharedFd<S>,
    what: What,
}

// SAFETY: the entry refers to nothing but the descriptor, which `self.fd` keeps open until the
// completion arrives (the driver keeps the op alive until then).
unsafe impl<S: AsFd> IourOpCode for FileOp<S> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        use io_uring::{opcode, types::Fd};
        let fd = Fd(self.fd.as_fd().as_raw_fd());
        match &self.what {
            What::Fallocate { len } => opcode::Fallocate::new(fd, *len).offset(0).mode(0).build(),
            // Stretches are a few MiB: the length fits the op's 32 bits.
            What::StartWriteback { range } => {
                let len = u32::try_from(range.end - range.start).unwrap_or(u32::MAX);
                opcode::SyncFileRange::new(fd, len)
                    .offset(range.start)
                    .flags(libc::SYNC_FILE_RANGE_WRITE)
                    .build()
            }
        }
        .into()
    }
}

// SAFETY: on the polling driver `operate` runs the syscall on the blocking pool, on the
// descriptor `self.fd` keeps open; no memory is shared with the kernel.
unsafe impl<S: AsFd> PollOpCode for FileOp<S> {
    type Control = ();

    fn pre_submit(&mut self, _: &mut ()) -> io::Result<Decision> {
        Ok(Decision::Blocking)
    }

    fn op_type(&mut self, _: &mut ()) -> Option<OpType> {
        None
    }

    fn operate(&mut self, _: &mut ()) -> std::task::Poll<io::Result<usize>> {
        let fd = self.fd.as_fd();
        let r = match &self.what {
            What::Fallocate { len } => {
                rustix::fs::fallocate(fd, rustix::fs::FallocateFlags::empty(), 0, *len)
                    .map_err(io::Error::from)
            }
            What::StartWriteback { range } => {
                let (offset, len) = (range.start as i64, (range.end - range.start) as i64);
                // SAFETY: sync_file_range reads only its integer arguments; `fd` is open.
                let r = unsafe {
                    libc::sync_file_range(fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
                };
                if r == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }
        };
        std::task::Poll::Ready(r.map(|()| 0))
    }
}

#[cfg(test)]
mod tests {
    use compio::driver::ToSharedFd;
    use compio::io::AsyncWriteAtExt;

    use super::*;
    use crate::backend::Backend;

    /// Both ops are accepted by the kernel on both back-ends. A failed `start_writeback` is only
    /// logged by the sink, so this is where a wrong opcode, flag or argument would show.
    #[test]
    fn both_ops_run_on_both_back_ends() {
        for backend in [Backend::Uring, Backend::Portable] {
            let rt = match crate::runtime::build_runtime(backend, 2) {
                Ok(rt) => rt,
                Err(e) if backend == Backend::Uring => {
                    eprintln!("no io_uring here ({e}): checked on the portable back-end only");
                    continue;
                }
                Err(e) => panic!("the polling runtime: {e}"),
            };
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("f");
            rt.block_on(async {
                let mut file = compio::fs::OpenOptions::new()
                    .create(true)
                    .read(true)
                    .write(true)
                    .open(&path)
                    .await
                    .expect("open");
                fallocate(file.to_shared_fd(), 3 * STRETCH)
                    .await
                    .expect("fallocate");
                let written = file.write_all_at(vec![7u8; STRETCH as usize], 0).await;
                written.0.expect("write");
                start_writeback(file.to_shared_fd(), 0..STRETCH)
                    .await
                    .expect("start writeback");
            });
            let meta = std::fs::metadata(&path).expect("metadata");
            assert_eq!(meta.len(), 3 * STRETCH, "fallocate set the size");
            eprintln!("fallocate and start_writeback ran on {backend:?}");
        }
    }

    #[test]
    fn a_write_that_reaches_a_stretch_end_completes_that_stretch() {
        let mib = |m: u64| m << 20;
        assert_eq!(completed_stretch(mib(0)..mib(1)), None);
        assert_eq!(completed_stretch(mib(7)..mib(8)), Some(0..mib(8)));
        assert_eq!(completed_stretch(mib(7)..mib(9)), Some(0..mib(8)));
        assert_eq!(completed_stretch(mib(8)..mib(9)), None);
        assert_eq!(completed_stretch(mib(20)..mib(33)), Some(mib(24)..mib(32)));
        assert_eq!(completed_stretch(0..0), None);
    }
}
