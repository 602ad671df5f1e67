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
//!   Started a stretch at a time, the disk writes from the first megabytes on (measured:
//!   docs/decisions.md, "Writeback per stretch").
//!
//! - [`drop_behind`] (`IORING_OP_SYNC_FILE_RANGE` waiting for the writeback, then
//!   `IORING_OP_FADVISE` with `POSIX_FADV_DONTNEED`): a stretch written back a while ago leaves
//!   the page cache, so that a buffered sink's cached pages stay a few stretches however large
//!   the file, and the pages it frees are the ones its next writes get. Pages the page cache
//!   has to take fresh are dear on a virtual machine that hands free memory back to its host
//!   (measured: docs/decisions.md, "Dropping written stretches from the page cache"); on bare
//!   metal the same keeps a download from pushing a machine's working set out of its cache.
//!
//! - [`start_writeback_now`] and [`drop_behind_now`]: the same, blocking, for a thread that
//!   is not a worker (HLS's writer appends its outputs with plain writes).
//!
//! - [`written_back`] (`sync_file_range` on the blocking pool, whole file): after a `syncfs`
//!   made a group of files durable, each file's own writeback errors.
//!
//! This module does not decide what to reserve or which stretches to start or drop. It waits
//! for the writeback only of what it drops, and returns that writeback's error: the wait
//! consumes it, and the file's final fsync would not see it again. The fallback to `ftruncate`
//! on filesystems without `fallocate` is the caller's.

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

/// Waits for the writeback of `range` of `fd` (starting it for pages still dirty), then drops
/// its pages from the page cache. An error is the writeback's: some of those bytes did not
/// reach the disk.
pub(crate) async fn drop_behind<S: AsFd + 'static>(
    fd: SharedFd<S>,
    range: Range<u64>,
) -> io::Result<()> {
    submit(
        fd.clone(),
        What::AwaitWriteback {
            range: range.clone(),
        },
    )
    .await?;
    submit(fd, What::Forget { range }).await
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
    AwaitWriteback { range: Range<u64> },
    Forget { range: Range<u64> },
}

/// `sync_file_range` flags that write back a range and wait until it is on the disk.
const WRITE_AND_WAIT: u32 = libc::SYNC_FILE_RANGE_WAIT_BEFORE
    | libc::SYNC_FILE_RANGE_WRITE
    | libc::SYNC_FILE_RANGE_WAIT_AFTER;

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
            What::StartWriteback { range } => opcode::SyncFileRange::new(fd, len32(range))
                .offset(range.start)
                .flags(libc::SYNC_FILE_RANGE_WRITE)
                .build(),
            What::AwaitWriteback { range } => opcode::SyncFileRange::new(fd, len32(range))
                .offset(range.start)
                .flags(WRITE_AND_WAIT)
                .build(),
            What::Forget { range } => {
                let len = i64::try_from(range.end - range.start).unwrap_or(i64::MAX);
                opcode::Fadvise::new(fd, len, libc::POSIX_FADV_DONTNEED)
                    .offset(range.start)
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
                sync_file_range(fd, range, libc::SYNC_FILE_RANGE_WRITE)
            }
            What::AwaitWriteback { range } => sync_file_range(fd, range, WRITE_AND_WAIT),
            What::Forget { range } => rustix::fs::fadvise(
                fd,
                range.start,
                std::num::NonZeroU64::new(range.end - range.start),
                rustix::fs::Advice::DontNeed,
            )
            .map_err(io::Error::from),
        };
        std::task::Poll::Ready(r.map(|()| 0))
    }
}

/// Blocking: writes back whatever of `fd`'s file is still dirty, waits for it, and returns the
/// error of any writeback of the file since `fd` was opened (or since the last check through
/// it), as `fsync` would, but without writing the inode or flushing the disk's cache. For a
/// file whose bytes and inode a `syncfs` of its filesystem has just made durable, this says
/// whether its own bytes got there: the `syncfs` alone reports an error of any file of the
/// filesystem, and not which.
pub(crate) fn written_back(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    // A length of 0: to the end of the file.
    sync_file_range(fd, &(0..0), WRITE_AND_WAIT)
}

/// Blocking [`start_writeback`], for a thread of its own (HLS's writer).
pub(crate) fn start_writeback_now(
    fd: std::os::fd::BorrowedFd<'_>,
    range: Range<u64>,
) -> io::Result<()> {
    sync_file_range(fd, &range, libc::SYNC_FILE_RANGE_WRITE)
}

/// Blocking [`drop_behind`], for a thread of its own (HLS's writer).
pub(crate) fn drop_behind_now(
    fd: std::os::fd::BorrowedFd<'_>,
    range: Range<u64>,
) -> io::Result<()> {
    sync_file_range(fd, &range, WRITE_AND_WAIT)?;
    rustix::fs::fadvise(
        fd,
        range.start,
        std::num::NonZeroU64::new(range.end - range.start),
        rustix::fs::Advice::DontNeed,
    )
    .map_err(io::Error::from)
}

/// The length of `range` for an op's 32-bit length field (stretches are a few MiB).
fn len32(range: &Range<u64>) -> u32 {
    u32::try_from(range.end - range.start).unwrap_or(u32::MAX)
}

fn sync_file_range(
    fd: std::os::fd::BorrowedFd<'_>,
    range: &Range<u64>,
    flags: u32,
) -> io::Result<()> {
    let (offset, len) = (range.start as i64, (range.end - range.start) as i64);
    // SAFETY: sync_file_range reads only its integer arguments; `fd` is open.
    let r = unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use compio::driver::ToSharedFd;
    use compio::io::AsyncWriteAtExt;

    use super::*;

    /// The ops are accepted by the kernel on both back-ends and do what they say. A failed
    /// `start_writeback` is only logged by the sink, so this is where a wrong opcode, flag or
    /// argument would show.
    #[test]
    fn the_ops_run_on_both_back_ends() {
        for (backend, rt) in crate::runtime::test_runtimes(2) {
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
                let written = file
                    .write_all_at(vec![9u8; STRETCH as usize], STRETCH)
                    .await;
                written.0.expect("write");
                // Freshly written, the pages are cached (unless something evicted them all).
                assert!(cached_pages(&path, STRETCH..2 * STRETCH) > 0);
                drop_behind(file.to_shared_fd(), STRETCH..2 * STRETCH)
                    .await
                    .expect("drop behind");
                assert_eq!(
                    cached_pages(&path, STRETCH..2 * STRETCH),
                    0,
                    "the stretch dropped left the page cache"
                );
                assert!(
                    cached_pages(&path, 0..STRETCH) > 0,
                    "the stretch before it stays"
                );
            });
            let meta = std::fs::metadata(&path).expect("metadata");
            assert_eq!(meta.len(), 3 * STRETCH, "fallocate set the size");
            let bytes = std::fs::read(&path).expect("read");
            assert!(bytes[..STRETCH as usize].iter().all(|&b| b == 7));
            assert!(
                bytes[STRETCH as usize..2 * STRETCH as usize]
                    .iter()
                    .all(|&b| b == 9)
            );
            eprintln!("fallocate, start_writeback and drop_behind ran on {backend:?}");
        }
    }

    /// Pages of `range` of the file at `path` in the page cache (`mincore` of a mapping).
    fn cached_pages(path: &std::path::Path, range: Range<u64>) -> u64 {
        let file = std::fs::File::open(path).expect("open for mincore");
        let len = (range.end - range.start) as usize;
        // SAFETY: a read-only mapping of an open file; nothing reads through it, it is only
        // asked which pages are resident, and it is unmapped before returning.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                range.start as i64,
            );
            assert_ne!(addr, libc::MAP_FAILED, "mmap");
            let mut vec = vec![0u8; len.div_ceil(4096)];
            let r = libc::mincore(addr, len, vec.as_mut_ptr());
            libc::munmap(addr, len);
            assert_eq!(r, 0, "mincore");
            vec.iter().filter(|&&v| v & 1 == 1).count() as u64
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
