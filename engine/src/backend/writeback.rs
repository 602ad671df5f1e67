//! Starting the writeback of a stretch of a file as soon as it is written
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): a ring op on io_uring (`IORING_OP_SYNC_FILE_RANGE`,
//! which compio does not offer), the same syscall on compio's blocking pool on the polling driver.
//!
//! Bytes written through the page cache stay dirty until the kernel's flusher takes them, which
//! it starts only past the dirty background threshold (10% of memory); past the dirty limit the
//! writer is throttled, and the file's final fsync waits for whatever is still dirty. Started a
//! stretch at a time, right after it is written, the disk writes from the first megabytes on
//! and the page cache never holds much of the file dirty. Measured on 8 GiB from nginx,
//! verified, in safe mode: 21.8 s and 2.63 CPU s/GB without, 16.8 s and 2.10 CPU s/GB with
//! (3 alternated rounds; 27.6 s against 19.3 s in 2 more), where curl took 22.3 s.
//!
//! This module only starts writeback: it waits for none of it (the final fsync does, and reports
//! a write error), and which stretches to start is the caller's choice.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};

use compio::BufResult;
use compio::driver::{Decision, IourOpCode, OpEntry, OpType, PollOpCode, SharedFd};

/// Starts writing back the dirty pages of `range` of `fd`, without waiting for them.
pub(crate) async fn start<S: AsFd + 'static>(fd: SharedFd<S>, range: Range<u64>) -> io::Result<()> {
    let BufResult(r, _) = compio::runtime::submit(StartWriteback { fd, range }).await;
    r.map(|_| ())
}

struct StartWriteback<S> {
    fd: SharedFd<S>,
    range: Range<u64>,
}

impl<S> StartWriteback<S> {
    fn len(&self) -> u64 {
        self.range.end - self.range.start
    }
}

// SAFETY: the entry refers to nothing but the descriptor, which `self.fd` keeps open until the
// completion arrives (the driver keeps the op alive until then).
unsafe impl<S: AsFd> IourOpCode for StartWriteback<S> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        use io_uring::{opcode, types::Fd};
        // Stretches are a few MiB: the length fits the op's 32 bits.
        let len = u32::try_from(self.len()).unwrap_or(u32::MAX);
        opcode::SyncFileRange::new(Fd(self.fd.as_fd().as_raw_fd()), len)
            .offset(self.range.start)
            .flags(libc::SYNC_FILE_RANGE_WRITE)
            .build()
            .into()
    }
}

// SAFETY: on the polling driver `operate` runs the syscall on the blocking pool, on the
// descriptor `self.fd` keeps open; no memory is shared with the kernel.
unsafe impl<S: AsFd> PollOpCode for StartWriteback<S> {
    type Control = ();

    fn pre_submit(&mut self, _: &mut ()) -> io::Result<Decision> {
        Ok(Decision::Blocking)
    }

    fn op_type(&mut self, _: &mut ()) -> Option<OpType> {
        None
    }

    fn operate(&mut self, _: &mut ()) -> std::task::Poll<io::Result<usize>> {
        let (offset, len) = (
            self.range.start as libc::off64_t,
            self.len() as libc::off64_t,
        );
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open.
        let r = unsafe {
            libc::sync_file_range(
                self.fd.as_fd().as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        std::task::Poll::Ready(match r {
            0 => Ok(0),
            _ => Err(io::Error::last_os_error()),
        })
    }
}

/// The stretch of [`STRETCH`] bytes, if any, that a write of `written` completes: the last one
/// that ends inside it or at its end. A stretch may hold bytes other connections have not written
/// yet; the flusher takes those later, as it would have taken all of them.
pub(crate) fn completed_stretch(written: Range<u64>) -> Option<Range<u64>> {
    let (first, last) = (written.start / STRETCH, written.end / STRETCH);
    (last > first).then(|| (last - 1) * STRETCH..last * STRETCH)
}

/// Writeback is started this many bytes at a time.
pub(crate) const STRETCH: u64 = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

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
