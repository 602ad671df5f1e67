//! Registered buffers: each io_uring worker registers the buffer arena's chunks
//! ([`super::buf::arena_chunk`]) as fixed buffers of its ring, and a sink writes a buffer that
//! lies in a registered chunk with `IORING_OP_WRITE_FIXED` instead of `IORING_OP_WRITE`.
//!
//! What that saves: for a plain O_DIRECT write the kernel pins the user pages of the buffer
//! before the I/O and unpins them after it (`bio_iov_iter_get_pages`, `__bio_release_pages`);
//! a buffered write walks the page tables for its copy. A fixed buffer's pages were pinned once,
//! when it was registered, and a write from it goes straight to them.
//!
//! How the table is kept:
//! - The registrations are `io_uring_register` calls on the ring's descriptor (compio 0.19 has
//!   no API for them), through rustix's uapi mirrors.
//! - [`install`] registers a sparse table of [`ARENA_CHUNKS`] empty entries
//!   (`IORING_REGISTER_BUFFERS2` with `IORING_RSRC_REGISTER_SPARSE`), once per worker, on the
//!   worker's own thread (the ring is `SINGLE_ISSUER`: registration from another thread fails).
//! - Entry `i` is filled with chunk `i` (`IORING_REGISTER_BUFFERS_UPDATE`) the first time this
//!   ring writes from that chunk. Registration pins the chunk's pages, so registering lazily
//!   keeps a small job from pinning the whole arena at start; every chunk is registered at most
//!   once per ring. The arena never unmaps a chunk nor gives its pages back
//!   ([`super::buf`]), which is what keeps an entry true for the life of the ring.
//! - A registration the kernel refuses (`ENOMEM` past `RLIMIT_MEMLOCK` for a user without
//!   `CAP_IPC_LOCK`, or a kernel without sparse tables, before 5.19) is logged once per ring and
//!   that chunk, or every chunk, is written the plain way: slower by the pinning, never wrong.
//! - The table is the current thread's ([`Installed`]), bound to its ring's descriptor; a write
//!   on any other runtime, or on the polling driver, takes the plain path.
//!
//! This module does not choose offsets or split writes at alignment (the sink does), and does
//! not register anything on the polling driver: safe mode has no ring.

use std::cell::RefCell;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::driver::{Decision, IourOpCode, OpEntry, OpType, PollOpCode, SharedFd, ToSharedFd};
use compio::fs::File;
use compio::io::AsyncWriteAtExt;
use rustix::io_uring::{
    IoringRegisterOp, IoringRsrcFlags, io_uring_ptr, io_uring_register, io_uring_rsrc_register,
    io_uring_rsrc_update2,
};

use super::buf::{ARENA_CHUNKS, CHUNK, arena_chunk};

/// What a ring's entry for one chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Nothing yet.
    Empty,
    /// The chunk, registered.
    Registered,
    /// The kernel refused to register the chunk; its writes take the plain path.
    Refused,
}

/// The current thread's ring and what its table holds.
struct Table {
    ring: RawFd,
    entries: Vec<Entry>,
}

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// The current thread's registered table; dropping it forgets the table. Drop it before the
/// runtime whose ring it belongs to (declare it after the runtime), so that no later ring with
/// the same descriptor number is mistaken for this one.
#[derive(Debug)]
pub(crate) struct Installed {
    /// Bound to the thread whose table it is.
    _thread: PhantomData<*const ()>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        TABLE.with_borrow_mut(|t| *t = None);
    }
}

/// Registers an empty table of fixed buffers, one entry per arena chunk, in `runtime`'s ring
/// (an io_uring runtime built on this thread), and makes it this thread's. An error is the
/// kernel's refusal; the caller writes the plain way.
pub(crate) fn install(runtime: &compio::runtime::Runtime) -> io::Result<Installed> {
    let ring = runtime.as_raw_fd();
    let mut table = io_uring_rsrc_register::default();
    table.nr = ARENA_CHUNKS as u32;
    table.flags = IoringRsrcFlags::REGISTER_SPARSE;
    register(ring, IoringRegisterOp::RegisterBuffers2, &table)?;
    TABLE.with_borrow_mut(|t| {
        *t = Some(Table {
            ring,
            entries: vec![Entry::Empty; ARENA_CHUNKS],
        })
    });
    Ok(Installed {
        _thread: PhantomData,
    })
}

/// The index of the fixed buffer that holds all of `bytes` in the current runtime's ring,
/// registering its chunk there first when this ring has not yet; `None` when `bytes` are not in
/// one arena chunk, this thread has no table for the current runtime, or the kernel refused.
fn index_for(bytes: &[u8]) -> Option<u16> {
    let (chunk, addr) = arena_chunk(bytes.as_ptr(), bytes.len())?;
    let ring = compio::runtime::Runtime::try_with_current(|rt| rt.as_raw_fd()).ok()?;
    TABLE.with_borrow_mut(|table| {
        let t = table.as_mut().filter(|t| t.ring == ring)?;
        match t.entries[chunk] {
            Entry::Registered => return u16::try_from(chunk).ok(),
            Entry::Refused => return None,
            Entry::Empty => {}
        }
        match update(ring, chunk, addr) {
            Ok(()) => {
                t.entries[chunk] = Entry::Registered;
                u16::try_from(chunk).ok()
            }
            Err(e) => {
                if !t.entries.contains(&Entry::Refused) {
                    tracing::debug!(
                        "registering a 2 MiB buffer chunk with io_uring was refused ({e}); \
                         writes from it go the plain way"
                    );
                }
                t.entries[chunk] = Entry::Refused;
                None
            }
        }
    })
}

/// Fills entry `chunk` of `ring`'s table with the [`CHUNK`] bytes at `addr`.
fn update(ring: RawFd, chunk: usize, addr: usize) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: CHUNK,
    };
    let mut up = io_uring_rsrc_update2::default();
    up.offset = chunk as u32;
    up.data = io_uring_ptr::from((&raw mut iov).cast::<libc::c_void>());
    up.nr = 1;
    register(ring, IoringRegisterOp::RegisterBuffersUpdate, &up)
}

/// `io_uring_register(ring, op, arg, size_of::<T>())`: the form of the resource ops, whose
/// argument is one struct and whose count is its size.
fn register<T>(ring: RawFd, op: IoringRegisterOp, arg: &T) -> io::Result<()> {
    let size = u32::try_from(size_of::<T>()).expect("a small struct");
    // SAFETY: `ring` is the open ring descriptor of the current runtime, which outlives this
    // call. `arg` is a live, initialised struct of the layout the kernel expects for `op`
    // (rustix's uapi mirrors), read during the call only; the iovec it may point to lives as
    // long. The memory that iovec names is an arena chunk, mapped for the life of the process
    // (`arena_chunk`); the kernel pins it.
    unsafe {
        let ring = BorrowedFd::borrow_raw(ring);
        io_uring_register(ring, op, (arg as *const T).cast(), size)
    }
    .map(drop)
    .map_err(io::Error::from)
}

/// Writes all of `buf` at `at` through `file`: from the registered buffer with `WRITE_FIXED`
/// when `buf`'s bytes lie in a chunk registered (or registrable) in the current ring, and the
/// plain way otherwise. Adds the bytes written the fixed way to `fixed`.
pub(crate) async fn write_all_at<B: IoBuf>(
    file: &mut File,
    buf: B,
    at: u64,
    fixed: &AtomicU64,
) -> BufResult<(), B> {
    let Some(index) = index_for(buf.as_init()) else {
        return file.write_all_at(buf, at).await;
    };
    let fd = file.to_shared_fd();
    let len = buf.buf_len();
    let mut buf = buf;
    let mut done = 0;
    while done < len {
        let op = WriteFixed {
            fd: fd.clone(),
            buf: buf.slice(done..),
            at: at + done as u64,
            index,
        };
        let BufResult(r, op) = compio::runtime::submit(op).await;
        buf = op.buf.into_inner();
        match r {
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::WriteZero, "the write wrote nothing");
                return BufResult(Err(e), buf);
            }
            Ok(n) => {
                done += n;
                fixed.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return BufResult(Err(e), buf),
        }
    }
    BufResult(Ok(()), buf)
}

/// `IORING_OP_WRITE_FIXED` of `buf`'s bytes, which lie in fixed buffer `index`, at `at`.
struct WriteFixed<B> {
    fd: SharedFd<std::fs::File>,
    buf: B,
    at: u64,
    index: u16,
}

// SAFETY: the entry points into `self.buf`'s bytes, which the op owns (and the driver keeps
// alive) until the completion arrives, and which lie whole in the registered buffer `index`
// (`index_for` checked that, and the arena never remaps a chunk); `self.fd` keeps the
// descriptor open as long.
unsafe impl<B: IoBuf> IourOpCode for WriteFixed<B> {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        use io_uring::{opcode, types::Fd};
        let bytes = self.buf.as_init();
        // A buffer lies in one 2 MiB chunk: its length fits the op's 32 bits.
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        opcode::WriteFixed::new(
            Fd(self.fd.as_fd().as_raw_fd()),
            bytes.as_ptr(),
            len,
            self.index,
        )
        .offset(self.at)
        .build()
        .into()
    }
}

// SAFETY: on the polling driver (never chosen for a fixed write: no table is installed there,
// but the driver must be able to run the op) `operate` is a plain `pwrite` on the blocking
// pool, from `self.buf`, which the op owns, to the descriptor `self.fd` keeps open.
unsafe impl<B: IoBuf> PollOpCode for WriteFixed<B> {
    type Control = ();

    fn pre_submit(&mut self, _: &mut ()) -> io::Result<Decision> {
        Ok(Decision::Blocking)
    }

    fn op_type(&mut self, _: &mut ()) -> Option<OpType> {
        None
    }

    fn operate(&mut self, _: &mut ()) -> std::task::Poll<io::Result<usize>> {
        let r = rustix::io::pwrite(self.fd.as_fd(), self.buf.as_init(), self.at);
        std::task::Poll::Ready(r.map_err(io::Error::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::buf::{AlignedBuf, BufPool};

    /// A buffer of the arena (1 MiB, the default size) filled with a pattern from `seed`.
    fn arena_buf(seed: u8) -> AlignedBuf {
        let mut buf = BufPool::take(1 << 20, true);
        let bytes: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 ^ seed).collect();
        buf.push_slice(&bytes);
        assert!(
            arena_chunk(buf.bytes().as_ptr(), buf.bytes().len()).is_some(),
            "a 1 MiB buffer comes from the arena"
        );
        buf
    }

    #[test]
    fn arena_buffers_are_written_fixed_on_io_uring_and_plain_elsewhere() {
        for (backend, rt) in crate::runtime::test_runtimes(2) {
            let installed = match backend {
                Backend::Uring => Some(install(&rt).expect("a sparse table on this kernel")),
                Backend::Portable => None,
            };
            let dir = tempfile::tempdir().expect("tmp");
            let path = dir.path().join("f");
            let fixed = AtomicU64::new(0);
            let (a, b, heap) = rt.block_on(async {
                let mut file = compio::fs::OpenOptions::new()
                    .create(true)
                    .read(true)
                    .write(true)
                    .open(&path)
                    .await
                    .expect("create");
                // The second half of one buffer (an offset inside its registered chunk), and
                // a whole buffer.
                let a = arena_buf(1);
                let tail = a.bytes()[4096..].to_vec();
                let BufResult(r, slice) = write_all_at(&mut file, a.slice(4096..), 0, &fixed).await;
                r.expect("write the tail of a");
                drop(slice);
                let b = arena_buf(2);
                let whole = b.bytes().to_vec();
                let at = tail.len() as u64;
                let BufResult(r, b) = write_all_at(&mut file, b, at, &fixed).await;
                r.expect("write b");
                drop(b);
                // A heap buffer is not in the arena: always the plain way.
                let mut heap = AlignedBuf::new(8192);
                heap.push_slice(&[0x5a; 8192]);
                let at = at + whole.len() as u64;
                let BufResult(r, _) = write_all_at(&mut file, heap, at, &fixed).await;
                r.expect("write the heap buffer");
                (tail, whole, vec![0x5a; 8192])
            });
            let expected = [a, b, heap].concat();
            assert!(
                std::fs::read(&path).expect("read") == expected,
                "{backend}: the file holds the bytes written"
            );
            let want = match backend {
                Backend::Uring => expected.len() as u64 - 8192,
                Backend::Portable => 0,
            };
            assert_eq!(
                fixed.load(Ordering::Relaxed),
                want,
                "{backend}: bytes written from registered buffers"
            );
            drop(installed);
            eprintln!("ran on {backend}: {want} bytes from registered buffers");
        }
    }

    #[test]
    fn a_ring_without_this_threads_table_writes_the_plain_way() {
        let runtimes = crate::runtime::test_runtimes(2);
        let Some((_, first)) = runtimes.iter().find(|(b, _)| *b == Backend::Uring) else {
            eprintln!("no io_uring here: nothing to check");
            return;
        };
        let installed = install(first).expect("a sparse table on this kernel");
        // Another io_uring runtime on the same thread: its ring has no table, and a fixed write
        // there would fail. It must get plain writes.
        let other = crate::runtime::build_runtime(Backend::Uring, 2).expect("a second ring");
        let dir = tempfile::tempdir().expect("tmp");
        let fixed = AtomicU64::new(0);
        for (what, rt) in [("second ring", &other), ("first ring", first)] {
            let path = dir.path().join(what);
            let buf = arena_buf(3);
            let want = buf.bytes().to_vec();
            rt.block_on(async {
                let mut file = compio::fs::File::create(&path).await.expect("create");
                let BufResult(r, _) = write_all_at(&mut file, buf, 0, &fixed).await;
                r.expect("write");
            });
            assert!(std::fs::read(&path).expect("read") == want, "{what}");
        }
        assert_eq!(
            fixed.load(Ordering::Relaxed),
            1 << 20,
            "only the ring with the table wrote fixed"
        );
        // The table forgotten, its own ring writes the plain way too.
        drop(installed);
        let path = dir.path().join("after");
        first.block_on(async {
            let mut file = compio::fs::File::create(&path).await.expect("create");
            let BufResult(r, _) = write_all_at(&mut file, arena_buf(4), 0, &fixed).await;
            r.expect("write");
        });
        assert_eq!(fixed.load(Ordering::Relaxed), 1 << 20);
        eprintln!("ran on uring: a ring without this thread's table wrote the plain way");
    }
}
