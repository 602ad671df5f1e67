//! Page-aligned I/O buffers and the per-worker pool they come from.
//!
//! O_DIRECT needs the memory of a write aligned (the probe's `dio_mem_align`, at most a page on
//! every filesystem we know), so staging buffers are allocated page-aligned here instead of as a
//! `Vec`. Buffers are allocated once and recycled through the [`BufPool`]: the hot path takes
//! and returns them, it allocates only while the number in use grows. Memory is bounded by the
//! callers (each connection holds at most its write depth plus one, the verifier at most its
//! window), not by the pool, which only keeps what was returned.
//!
//! This module owns the one allocation `unsafe` of the data path; it does not do I/O.

use std::alloc::{Layout, alloc, dealloc};
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::Mutex;

use compio::buf::{IoBuf, IoBufMut, SetLen};

/// Memory alignment of every buffer: a page, enough for O_DIRECT on any filesystem we know.
pub(crate) const BUF_ALIGN: usize = 4096;

/// A fixed-capacity, page-aligned byte buffer: `len` initialised bytes of `cap`.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: the buffer owns its allocation exclusively (no aliasing pointers are handed out beyond
// borrows of `self`), so moving it to another thread is as safe as moving a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to [`BUF_ALIGN`]). The pages are not touched here, so
    /// resident memory grows only as the buffer is used.
    pub fn new(cap: usize) -> AlignedBuf {
        let cap = cap.max(BUF_ALIGN).next_multiple_of(BUF_ALIGN);
        let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("buffer layout");
        // SAFETY: `layout` has a non-zero size (at least BUF_ALIGN).
        let raw = unsafe { alloc(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len: 0, cap }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The initialised bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `cap` bytes and the first `len` (<= cap) are initialised
        // (every path that grows `len` writes those bytes first).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Appends `src`; panics when it does not fit (callers size their copies).
    pub fn push_slice(&mut self, src: &[u8]) {
        assert!(src.len() <= self.cap - self.len, "AlignedBuf overflow");
        // SAFETY: the destination `len..len + src.len()` lies inside the allocation (checked
        // above) and cannot overlap `src`, which is borrowed from elsewhere.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(self.len), src.len());
        }
        self.len += src.len();
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, BUF_ALIGN).expect("buffer layout");
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), layout) };
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

impl IoBuf for AlignedBuf {
    fn as_init(&self) -> &[u8] {
        self.bytes()
    }
}

impl SetLen for AlignedBuf {
    unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.cap);
        self.len = len;
    }
}

impl IoBufMut for AlignedBuf {
    fn as_uninit(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: `ptr` is valid for `cap` bytes for as long as `&mut self` lives; viewing them
        // as `MaybeUninit<u8>` makes no claim about their contents.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.cap) }
    }
}

/// Copies as much of `src` as fits into `buf`'s spare room, right after its initialised bytes,
/// and grows `buf` by that count, which it returns. This is how bytes a library hands out as
/// `&[u8]` (rustls's decrypted records) reach compio's possibly-uninitialised buffers: one copy,
/// with no zeroing of the room first (which cost as much as the copy itself on the HTTPS path).
pub(crate) fn append<B: IoBufMut>(buf: &mut B, src: &[u8]) -> usize {
    let init = B::buf_len(buf);
    let spare = &mut B::as_uninit(buf)[init..];
    let n = src.len().min(spare.len());
    // SAFETY: `spare` has room for `n` bytes (`n <= spare.len()`), `MaybeUninit<u8>` has the
    // layout of `u8`, and `src` cannot overlap it: `spare` borrows `buf` mutably.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), spare.as_mut_ptr().cast::<u8>(), n) };
    // SAFETY: `init + n <= as_uninit().len()` (n is within the spare room), and the bytes
    // `init..init + n` were initialised by the copy just above.
    unsafe { B::set_len(buf, init + n) };
    n
}

/// Returned buffers, kept for reuse by any worker. A buffer often comes back on another thread
/// than the one that took it (the verifier holds buffers until the hashed prefix reaches them),
/// so the pool is shared; it is touched once per buffer (about a thousand times per GB), so a
/// mutex costs nothing measurable.
pub(crate) struct BufPool;

static POOL: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());

/// Bytes of idle buffers kept for reuse; more are freed when returned. As large as the default
/// bound on buffers in use (16 connections x 5 x 1 MiB + the verifiers' 128 MiB): a job keeps
/// every buffer it returns, instead of freeing and allocating again (which made each fresh buffer
/// fault its pages in again: about 600 MB of page faults per 2 GB over HTTPS, with 16 kept).
/// A buffer is taken from here before a new one is allocated, so for one buffer size the idle
/// and the used together never exceed the peak in use.
const POOL_KEEP_BYTES: usize = 208 << 20;

impl BufPool {
    /// A cleared buffer of exactly `cap` bytes (rounded up to [`BUF_ALIGN`]), reused when one was
    /// returned.
    pub fn take(cap: usize) -> AlignedBuf {
        let cap = cap.max(BUF_ALIGN).next_multiple_of(BUF_ALIGN);
        let reused = {
            let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
            p.iter()
                .position(|b| b.capacity() == cap)
                .map(|i| p.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_else(|| AlignedBuf::new(cap));
        buf.clear();
        buf
    }

    /// Gives a buffer back for reuse.
    pub fn give(buf: AlignedBuf) {
        let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let idle: usize = p.iter().map(AlignedBuf::capacity).sum();
        if idle + buf.capacity() <= POOL_KEEP_BYTES {
            p.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_and_recycled() {
        let mut a = BufPool::take(10_000);
        assert_eq!(a.capacity(), 12_288);
        assert_eq!(a.bytes().as_ptr() as usize % BUF_ALIGN, 0);
        a.push_slice(b"hello");
        assert_eq!(a.bytes(), b"hello");
        let addr = a.bytes().as_ptr() as usize;
        BufPool::give(a);
        let b = BufPool::take(12_288);
        assert_eq!(
            b.bytes().as_ptr() as usize,
            addr,
            "the returned buffer is reused"
        );
        assert!(b.bytes().is_empty(), "and comes back cleared");
    }

    #[test]
    fn append_copies_what_fits_after_the_initialised_bytes() {
        let mut a = AlignedBuf::new(4096);
        a.push_slice(b"ab");
        assert_eq!(append(&mut a, b"cd"), 2);
        assert_eq!(a.bytes(), &b"abcd"[..]);
        let mut v: Vec<u8> = Vec::with_capacity(8);
        v.extend_from_slice(b"xyz");
        let room = v.capacity() - 3;
        assert_eq!(
            append(&mut v, &[7u8; 100]),
            room,
            "capped at the spare room"
        );
        assert_eq!(v.len(), v.capacity());
        assert_eq!(
            (&v[..3], v[3..].iter().all(|&b| b == 7)),
            (&b"xyz"[..], true)
        );
        assert_eq!(append(&mut v, b"more"), 0, "a full buffer takes nothing");
    }

    #[test]
    #[should_panic(expected = "overflow")]
    fn overflow_is_caught() {
        let mut a = AlignedBuf::new(4096);
        a.push_slice(&[0u8; 4097]);
    }
}
