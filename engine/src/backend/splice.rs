//! The splice sink's moving part: socket -> pipe -> file inside the kernel, through io_uring.
//!
//! Each connection owns one [`SplicePipe`], sized with `F_SETPIPE_SZ` (1 MiB asked; the kernel's
//! `fs.pipe-max-size` and the user's pipe quota may give less, which is recorded, not fatal).
//! [`SplicePipe::fill`] submits a `POLL_ADD` linked (`IOSQE_IO_LINK`) before the `SPLICE` from the
//! socket: io_uring runs every `SPLICE` on a kernel worker thread, and the linked poll makes sure
//! that thread is only taken once bytes are waiting, so an idle socket costs no thread.
//! [`SplicePipe::drain`] then splices what the pipe holds into the file at an offset.
//!
//! Bytes never pass through user memory, so there is nothing to hash from: a verified download
//! reads the spliced ranges back from the page cache (the caller tells the verifier). This
//! module does not decide when splice is used (the engine's sink choice does), and it runs only
//! on the io_uring back-end; on the polling driver the same calls work but go through plain
//! readiness and the blocking pool, which is never chosen.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use compio::BufResult;
use compio::driver::op::{Interest, Splice, SpliceFlags};
use compio::driver::{Decision, IourOpCode, OpEntry, OpType, PollOpCode, SharedFd};

/// The pipe size asked for with `F_SETPIPE_SZ` (the default `fs.pipe-max-size`).
pub(crate) const PIPE_SIZE: usize = 1 << 20;

/// One connection's pipe between its socket and the files it writes.
#[derive(Debug)]
pub(crate) struct SplicePipe {
    read: SharedFd<OwnedFd>,
    write: SharedFd<OwnedFd>,
    /// The capacity the kernel granted.
    size: usize,
    /// Bytes in the pipe not yet spliced out (after a failed drain).
    held: usize,
}

impl SplicePipe {
    /// A close-on-exec pipe, grown to [`PIPE_SIZE`] when the kernel allows it.
    pub(crate) fn new() -> io::Result<SplicePipe> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let size = match rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE) {
            Ok(size) => size,
            Err(e) => {
                let size = rustix::pipe::fcntl_getpipe_size(&write)?;
                tracing::debug!(error = %e, size, "F_SETPIPE_SZ refused; using the pipe as it is");
                size
            }
        };
        Ok(SplicePipe {
            read: SharedFd::new(read),
            write: SharedFd::new(write),
            size,
            held: 0,
        })
    }

    /// How many bytes one [`SplicePipe::fill`] may move.
    pub(crate) fn capacity(&self) -> usize {
        self.size
    }

    /// Moves up to `len` bytes (at most [`SplicePipe::capacity`]) from `socket` into the empty
    /// pipe, once the socket is readable. Returns the bytes moved; 0 at the end of the stream.
    pub(crate) async fn fill<S: AsFd + 'static>(
        &mut self,
        socket: SharedFd<S>,
        len: usize,
    ) -> io::Result<usize> {
        assert_eq!(self.held, 0, "fill a pipe that still holds bytes");
        let len = len.min(self.size);
        loop {
            let poll = compio::runtime::submit(LinkedPoll { fd: socket.clone() });
            let splice = compio::runtime::submit(Splice::new(
                socket.clone(),
                -1,
                self.write.clone(),
                -1,
                len,
                SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
            ));
            // Both are pushed in this one poll, back to back, so the kernel sees the link.
            let (BufResult(polled, _), BufResult(spliced, _)) =
                futures_util::future::join(poll, splice).await;
            match spliced {
                Ok(n) => {
                    self.held = n;
                    return Ok(n);
                }
                // A readiness that went away before the splice ran: wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // The poll failed, so the linked splice never ran: the poll's error is the one.
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                    return Err(polled.err().unwrap_or(e));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Splices everything the pipe holds into `file` at offset `at`.
    pub(crate) async fn drain<F: AsFd + 'static>(
        &mut self,
        file: SharedFd<F>,
        at: u64,
    ) -> io::Result<()> {
        let mut at = at;
        while self.held > 0 {
            let BufResult(r, _) = compio::runtime::submit(Splice::new(
                self.read.clone(),
                -1,
                file.clone(),
                at as i64,
                self.held,
                SpliceFlags::MOVE,
            ))
            .await;
            match r {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "splice into the file moved nothing",
                    ));
                }
                Ok(n) => {
                    self.held -= n;
                    at += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A one-shot `POLL_ADD` for readability, linked to the operation submitted right after it.
struct LinkedPoll<S> {
    fd: SharedFd<S>,
}

// SAFETY: the entry refers to nothing but the descriptor, which `self.fd` keeps open (the
// driver keeps the op, and with it the `SharedFd`, alive until the completion arrives).
unsafe impl<S: AsFd> IourOpCode for LinkedPoll<S> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        use io_uring::{opcode, squeue::Flags, types::Fd};
        opcode::PollAdd::new(Fd(self.fd.as_fd().as_raw_fd()), libc::POLLIN as u32)
            .build()
            .flags(Flags::IO_LINK)
            .into()
    }
}

// SAFETY: on the polling driver the op only waits for readiness of the descriptor `self.fd`
// keeps open; `operate` touches no memory.
unsafe impl<S: AsFd> PollOpCode for LinkedPoll<S> {
    type Control = ();

    fn pre_submit(&mut self, _: &mut ()) -> io::Result<Decision> {
        Ok(Decision::wait_for(
            self.fd.as_fd().as_raw_fd(),
            Interest::Readable,
        ))
    }

    fn op_type(&mut self, _: &mut ()) -> Option<OpType> {
        Some(OpType::fd(self.fd.as_fd().as_raw_fd()))
    }

    fn operate(&mut self, _: &mut ()) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Ready(Ok(0))
    }
}
