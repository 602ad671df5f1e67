//! Page-aligned I/O buffers and the per-worker pool they come from.
//!
//! O_DIRECT needs the memory of a write aligned (the probe's `dio_mem_align`, at most a page on
//! every filesystem we know), so staging buffers are allocated page-aligned here instead of as a
//! `Vec`. Buffers are allocated once and recycled through the [`BufPool`]: the hot path takes
//! and returns them, it allocates only while the number in use grows. Memory is bounded by the
//! callers (each connection holds at most its write depth plus one, the verifier at most its
//! window), not by the pool, which only keeps what was returned.
//!
//! Buffers that will be filled whole ([`BufPool::take`] with `huge`: those of the direct and
//! buffered sinks, not the splice sink's, which mostly hold a response head) and whose size
//! divides 2 MiB (the default 1 MiB among them) are carved from 2 MiB chunks
//! mapped at 2 MiB boundaries and marked `MADV_HUGEPAGE`, so the kernel can back each chunk with
//! one transparent huge page: a buffer's first use then faults once per 2 MiB instead of once per
//! 4 KiB page. Measured on a verified 8 GiB download, interleaved, 3 pairs: 49.5 thousand page
//! faults became 490, and system time fell by 0.1-0.2 s (`perf stat -e page-faults`). Where THP
//! is off, the chunks are ordinary pages and nothing else changes. Sizes that are a multiple of
//! 2 MiB get a mapping of their own, marked the same way; other sizes come from the heap.
//!
//! A filled buffer can be shared read-only ([`SharedBuf`]) by its write and the sha256, which
//! then need not wait for each other; the last handle gives it back to the pool.
//!
//! This module owns the allocation `unsafe` of the data path; it does not do I/O.

use std::alloc::{Layout, alloc, dealloc};
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};

use compio::buf::{IoBuf, IoBufMut, SetLen};

/// Memory alignment of every buffer: a page, enough for O_DIRECT on any filesystem we know.
pub(crate) const BUF_ALIGN: usize = 4096;

/// A fixed-capacity, page-aligned byte buffer: `len` initialised bytes of `cap`.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    backing: Backing,
}

// SAFETY: the buffer owns its allocation exclusively (no aliasing pointers are handed out beyond
// borrows of `self`), so moving it to another thread is as safe as moving a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}

// SAFETY: every method that writes the bytes or the length takes `&mut self`; through `&self`
// the buffer only hands out `&[u8]` of its initialised bytes, so shared references on several
// threads only read, as with a `Vec<u8>` ([`SharedBuf`]: a write and the hash read together).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to [`BUF_ALIGN`]) from the heap. The pages are not
    /// touched here, so resident memory grows only as the buffer is used.
    pub fn new(cap: usize) -> AlignedBuf {
        AlignedBuf::with(cap, false)
    }

    /// A buffer of `cap` bytes (rounded up to [`BUF_ALIGN`]); with `huge`, one the kernel may
    /// back with huge pages (see the module docs). Only for buffers that are filled whole: the
    /// first byte touched makes all 2 MiB of its chunk resident.
    fn with(cap: usize, huge: bool) -> AlignedBuf {
        let cap = cap.max(BUF_ALIGN).next_multiple_of(BUF_ALIGN);
        let backing = Backing::of(cap, huge);
        let ptr = match backing {
            Backing::Chunk => Chunks::take(cap),
            Backing::Own => map_huge(cap),
            Backing::Heap => {
                let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("buffer layout");
                // SAFETY: `layout` has a non-zero size (at least BUF_ALIGN).
                let raw = unsafe { alloc(layout) };
                NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
            }
        };
        AlignedBuf {
            ptr,
            len: 0,
            cap,
            backing,
        }
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
        match self.backing {
            Backing::Chunk => Chunks::give(self.ptr, self.cap),
            // SAFETY: mapped by `map_huge` with exactly this length in `with`, unmapped once;
            // the buffer is gone, so nothing points into the mapping any more.
            Backing::Own => unsafe { unmap(self.ptr.as_ptr() as usize, self.cap) },
            Backing::Heap => {
                let layout = Layout::from_size_align(self.cap, BUF_ALIGN).expect("buffer layout");
                // SAFETY: allocated in `with` with exactly this layout, freed once.
                unsafe { dealloc(self.ptr.as_ptr(), layout) };
            }
        }
    }
}

/// The size and alignment of a chunk: one transparent huge page on x86-64 (and on arm64 with
/// 4 KiB pages).
const CHUNK: usize = 2 << 20;

/// Where a buffer's memory comes from, and so how it is freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// A slot of a shared 2 MiB chunk (the capacity divides [`CHUNK`]).
    Chunk,
    /// A huge-page mapping of its own (the capacity is a multiple of [`CHUNK`]).
    Own,
    /// The heap, page-aligned.
    Heap,
}

impl Backing {
    /// Where a buffer of `cap` bytes lives; huge pages only when asked for.
    fn of(cap: usize, huge: bool) -> Backing {
        if !huge {
            Backing::Heap
        } else if CHUNK % cap == 0 {
            Backing::Chunk
        } else if cap % CHUNK == 0 {
            Backing::Own
        } else {
            Backing::Heap
        }
    }
}

/// Maps `len` bytes (a multiple of [`CHUNK`]) at a [`CHUNK`] boundary and asks for huge pages.
fn map_huge(len: usize) -> NonNull<u8> {
    let span = len + CHUNK;
    // SAFETY: an anonymous private mapping at an address the kernel picks; no existing memory
    // is touched.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        let layout = Layout::from_size_align(len, BUF_ALIGN).expect("buffer layout");
        std::alloc::handle_alloc_error(layout);
    }
    let raw = raw as usize;
    let start = raw.next_multiple_of(CHUNK);
    let end = start + len;
    // SAFETY: `raw..start` and `end..raw + span` lie inside the mapping just made and nothing
    // uses them; trimming them leaves exactly `start..end` mapped.
    unsafe {
        if start > raw {
            unmap(raw, start - raw);
        }
        if raw + span > end {
            unmap(end, raw + span - end);
        }
    }
    // SAFETY: `start..end` is mapped, readable and writable, and owned by the caller from
    // here on. MADV_HUGEPAGE is a hint: where THP is off it fails and the pages stay small.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    NonNull::new(start as *mut u8).expect("mmap returned a non-null address")
}

/// Unmaps `len` bytes at `addr`.
///
/// # Safety
/// `addr..addr + len` is mapped, page-aligned, and nothing refers to it any more.
unsafe fn unmap(addr: usize, len: usize) {
    // SAFETY: the caller's contract.
    let r = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    debug_assert_eq!(r, 0, "munmap of a range we mapped");
}

/// The 2 MiB chunks that buffers of sizes dividing [`CHUNK`] are carved from. A chunk is
/// carved front to back for one buffer size; a slot is not reused once freed (returned buffers
/// are reused whole through [`BufPool`], and a buffer is only freed when the pool is full), its
/// memory goes back to the kernel at once, and the chunk is unmapped when its last slot is
/// freed. Touched about once per buffer allocated, so one lock is enough.
struct Chunks {
    /// Per buffer size, the chunk being carved and the offset of its next free slot.
    carving: BTreeMap<usize, (usize, usize)>,
    /// Slots in use, per chunk address.
    live: BTreeMap<usize, usize>,
}

static CHUNKS: Mutex<Chunks> = Mutex::new(Chunks {
    carving: BTreeMap::new(),
    live: BTreeMap::new(),
});

impl Chunks {
    fn lock() -> std::sync::MutexGuard<'static, Chunks> {
        CHUNKS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot of `cap` bytes (which divides [`CHUNK`]).
    fn take(cap: usize) -> NonNull<u8> {
        let mut c = Chunks::lock();
        let (base, next) = match c.carving.get(&cap) {
            Some(&(base, next)) if next < CHUNK => (base, next),
            _ => (map_huge(CHUNK).as_ptr() as usize, 0),
        };
        c.carving.insert(cap, (base, next + cap));
        *c.live.entry(base).or_default() += 1;
        NonNull::new((base + next) as *mut u8).expect("a chunk's slot is not null")
    }

    /// Frees the slot of `cap` bytes at `ptr`, and its chunk with its last slot.
    fn give(ptr: NonNull<u8>, cap: usize) {
        let addr = ptr.as_ptr() as usize;
        let base = addr / CHUNK * CHUNK;
        let mut c = Chunks::lock();
        let live = c.live.get_mut(&base).expect("a slot of a known chunk");
        *live -= 1;
        if *live == 0 {
            c.live.remove(&base);
            if c.carving.get(&cap).is_some_and(|&(b, _)| b == base) {
                c.carving.remove(&cap);
            }
            drop(c);
            // SAFETY: the chunk was mapped by `map_huge(CHUNK)` in `take`, and its last slot in
            // use is this one, whose buffer is being dropped; it is no longer being carved.
            unsafe { unmap(base, CHUNK) };
        } else {
            drop(c);
            // SAFETY: the slot `addr..addr + cap` lies in a mapped chunk and belongs to the
            // buffer being dropped; slots are never handed out twice, so nothing else uses it.
            // MADV_DONTNEED gives its memory back (splitting the huge page if there was one).
            unsafe { libc::madvise(addr as *mut libc::c_void, cap, libc::MADV_DONTNEED) };
        }
    }

    /// Whether the chunk at `base` is still mapped (has slots in use).
    #[cfg(test)]
    fn is_live(base: usize) -> bool {
        Chunks::lock().live.contains_key(&base)
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

/// A filled buffer shared, read-only, by its write and the sha256: the verifier may hash the
/// bytes while the write of them is still in flight. The last handle dropped gives the buffer
/// back to the pool; [`SharedBuf::into_inner`] takes it back whole when no other handle is left.
/// Each buffer carries a small atomic mark, for its holders to agree on who counts it.
#[derive(Debug, Clone)]
pub(crate) struct SharedBuf(Option<Arc<Marked>>);

#[derive(Debug)]
struct Marked {
    buf: AlignedBuf,
    mark: AtomicU8,
}

impl SharedBuf {
    pub fn new(buf: AlignedBuf) -> SharedBuf {
        SharedBuf(Some(Arc::new(Marked {
            buf,
            mark: AtomicU8::new(0),
        })))
    }

    pub fn bytes(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], |m| m.buf.bytes())
    }

    /// The buffer's mark, shared by every handle (0 when made).
    pub fn mark(&self) -> &AtomicU8 {
        &self.0.as_deref().expect("a live handle").mark
    }

    /// The buffer, when this is its last handle; this handle back otherwise.
    pub fn into_inner(mut self) -> Result<AlignedBuf, SharedBuf> {
        let shared = self.0.take().expect("a live handle");
        Arc::try_unwrap(shared)
            .map(|m| m.buf)
            .map_err(|shared| SharedBuf(Some(shared)))
    }
}

impl Drop for SharedBuf {
    fn drop(&mut self) {
        if let Some(m) = self.0.take().and_then(Arc::into_inner) {
            BufPool::give(m.buf);
        }
    }
}

impl IoBuf for SharedBuf {
    fn as_init(&self) -> &[u8] {
        self.bytes()
    }
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
    /// A cleared buffer of exactly `cap` bytes (rounded up to [`BUF_ALIGN`]), reused when one
    /// was returned; from huge-page chunks when `huge` (see [`AlignedBuf::with`]: for buffers that
    /// are filled whole, not for those that mostly hold a response head, as the splice sink's).
    pub fn take(cap: usize, huge: bool) -> AlignedBuf {
        let cap = cap.max(BUF_ALIGN).next_multiple_of(BUF_ALIGN);
        let backing = Backing::of(cap, huge);
        let reused = {
            let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
            p.iter()
                .position(|b| b.capacity() == cap && b.backing == backing)
                .map(|i| p.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_else(|| AlignedBuf::with(cap, huge));
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
        let mut a = BufPool::take(10_000, false);
        assert_eq!(a.capacity(), 12_288);
        assert_eq!(a.bytes().as_ptr() as usize % BUF_ALIGN, 0);
        a.push_slice(b"hello");
        assert_eq!(a.bytes(), b"hello");
        let addr = a.bytes().as_ptr() as usize;
        BufPool::give(a);
        let b = BufPool::take(12_288, false);
        assert_eq!(
            b.bytes().as_ptr() as usize,
            addr,
            "the returned buffer is reused"
        );
        assert!(b.bytes().is_empty(), "and comes back cleared");
    }

    #[test]
    fn buffers_that_divide_a_chunk_share_huge_page_chunks() {
        // A size no other test uses, so the chunks seen here are this test's alone.
        const CAP: usize = 32 << 10;
        let per_chunk = CHUNK / CAP;
        let bufs: Vec<AlignedBuf> = (0..per_chunk + 1)
            .map(|_| AlignedBuf::with(CAP, true))
            .collect();
        let chunk_of = |b: &AlignedBuf| b.ptr.as_ptr() as usize / CHUNK * CHUNK;
        let first = chunk_of(&bufs[0]);
        assert_eq!(first % CHUNK, 0);
        for (i, b) in bufs[..per_chunk].iter().enumerate() {
            assert_eq!(
                chunk_of(b),
                first,
                "slot {i} is carved from the first chunk"
            );
            assert_eq!(
                b.ptr.as_ptr() as usize,
                first + i * CAP,
                "slots do not overlap"
            );
        }
        let second = chunk_of(&bufs[per_chunk]);
        assert_ne!(second, first, "a full chunk is not carved further");
        // Every slot is writable end to end.
        let mut bufs = bufs;
        for b in &mut bufs {
            b.push_slice(&[0xa5; CAP]);
        }
        assert!(bufs.iter().all(|b| b.bytes().iter().all(|&x| x == 0xa5)));

        let last = bufs.pop().expect("the second chunk's buffer");
        bufs.truncate(1);
        assert!(
            Chunks::is_live(first),
            "one slot of the first chunk is still in use"
        );
        drop(bufs);
        assert!(
            !Chunks::is_live(first),
            "its last slot freed, the chunk is unmapped"
        );
        assert!(Chunks::is_live(second));
        drop(last);
        assert!(!Chunks::is_live(second));
        let again = AlignedBuf::with(CAP, true);
        assert!(
            Chunks::is_live(chunk_of(&again)),
            "a new chunk is mapped for it"
        );
    }

    #[test]
    fn huge_pages_only_when_asked_for() {
        assert_eq!(AlignedBuf::new(1 << 20).backing, Backing::Heap);
        assert_eq!(AlignedBuf::with(1 << 20, true).backing, Backing::Chunk);
        BufPool::give(BufPool::take(1 << 20, false));
        let huge = BufPool::take(1 << 20, true);
        assert_eq!(
            huge.backing,
            Backing::Chunk,
            "a heap buffer is not handed out as huge"
        );
    }

    #[test]
    fn sizes_off_the_chunk_grid_come_from_a_mapping_or_the_heap() {
        let own = AlignedBuf::with(2 * CHUNK, true);
        assert_eq!(own.backing, Backing::Own);
        assert_eq!(
            own.ptr.as_ptr() as usize % CHUNK,
            0,
            "its own huge-page mapping"
        );
        let heap = AlignedBuf::with(CHUNK + BUF_ALIGN, true);
        assert_eq!(heap.backing, Backing::Heap);
        assert_eq!(
            heap.ptr.as_ptr() as usize % BUF_ALIGN,
            0,
            "page-aligned from the heap"
        );
        for mut b in [own, heap] {
            let cap = b.capacity();
            b.push_slice(&vec![7u8; cap]);
            assert_eq!(b.bytes().len(), cap);
        }
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
