//! `fallocate` as a ring operation (`IORING_OP_FALLOCATE`), which compio does not offer: a large
//! file's extents are reserved before its ranges arrive, without blocking the worker thread
//! that runs every connection of that core. On the polling driver (safe mode) the same op runs
//! on compio's blocking pool.
//!
//! This module only reserves space; the fallback to `ftruncate` on filesystems without
//! `fallocate`, and what to reserve, are the caller's.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use compio::BufResult;
use compio::driver::{Decision, IourOpCode, OpEntry, OpType, PollOpCode, SharedFd};

/// Reserves bytes `0..len` of `fd` (mode 0: allocate, extend the size).
pub(crate) async fn fallocate<S: AsFd + 'static>(fd: SharedFd<S>, len: u64) -> io::Result<()> {
    let BufResult(r, _) = compio::runtime::submit(Fallocate { fd, len }).await;
    r.map(|_| ())
}

struct Fallocate<S> {
    fd: SharedFd<S>,
    len: u64,
}

// SAFETY: the entry refers to nothing but the descriptor, which `self.fd` keeps open until the
// completion arrives (the driver keeps the op alive until then).
unsafe impl<S: AsFd> IourOpCode for Fallocate<S> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        use io_uring::{opcode, types::Fd};
        opcode::Fallocate::new(Fd(self.fd.as_fd().as_raw_fd()), self.len)
            .offset(0)
            .mode(0)
            .build()
            .into()
    }
}

// SAFETY: on the polling driver `operate` runs the syscall on the blocking pool, on the
// descriptor `self.fd` keeps open; no memory is shared with the kernel.
unsafe impl<S: AsFd> PollOpCode for Fallocate<S> {
    type Control = ();

    fn pre_submit(&mut self, _: &mut ()) -> io::Result<Decision> {
        Ok(Decision::Blocking)
    }

    fn op_type(&mut self, _: &mut ()) -> Option<OpType> {
        None
    }

    fn operate(&mut self, _: &mut ()) -> std::task::Poll<io::Result<usize>> {
        let r = rustix::fs::fallocate(
            self.fd.as_fd(),
            rustix::fs::FallocateFlags::empty(),
            0,
            self.len,
        );
        std::task::Poll::Ready(r.map(|()| 0).map_err(io::Error::from))
    }
}
