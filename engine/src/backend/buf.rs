//! Page-aligned I/O buffers, the arena most of them are carved from, and the pool they are
//! recycled through.
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
//! divides 2 MiB (the default 1 MiB among them) are carved from the 2 MiB chunks of an arena
//! reserved once per process at a 2 MiB boundary and marked `MADV_HUGEPAGE` (see [`Arena`]: its
//! chunks are what the io_uring workers register as fixed buffers, [`super::fixed`], so it is
//! never unmapped, and a buffer asked for when it is full comes from the heap). The kernel can
//! back each chunk with one transparent huge page: a buffer's first use then faults once per
//! 2 MiB instead of once per 4 KiB page (measured: docs/decisions.md, "Huge-page buffers").
//! Where THP is off, the chunks are ordinary pages and nothing else changes. Sizes that are a multiple of
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
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
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
    pub(crate) fn new(cap: usize) -> AlignedBuf {
        AlignedBuf::with(cap, false)
    }

    /// A buffer of `cap` bytes (rounded up to [`BUF_ALIGN`]); with `huge`, one the kernel may
    /// back with huge pages (see the module docs). Only for buffers that are filled whole: the
    /// first byte touched makes all 2 MiB of its chunk resident.
    fn with(cap: usize, huge: bool) -> AlignedBuf {
        let cap = cap.max(BUF_ALIGN).next_multiple_of(BUF_ALIGN);
        let (ptr, backing) = match Backing::of(cap, huge) {
            Backing::Chunk => match Arena::lock().take(cap) {
                Some(ptr) => (ptr, Backing::Chunk),
                None => (heap(cap), Backing::Heap),
            },
            Backing::Own => (map_huge(cap), Backing::Own),
            Backing::Heap => (heap(cap), Backing::Heap),
        };
        AlignedBuf {
            ptr,
            len: 0,
            cap,
            backing,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// The initialised bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `cap` bytes and the first `len` (<= cap) are initialised
        // (every path that grows `len` writes those bytes first).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Appends `src`; panics when it does not fit (callers size their copies).
    pub(crate) fn push_slice(&mut self, src: &[u8]) {
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
            Backing::Chunk => Arena::lock().give(self.ptr, self.cap),
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
pub(crate) const CHUNK: usize = 2 << 20;

/// Where a buffer's memory comes from, and so how it is freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// A slot of a 2 MiB chunk of the [`Arena`] (the capacity divides [`CHUNK`]).
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
        } else if CHUNK.is_multiple_of(cap) {
            Backing::Chunk
        } else if cap.is_multiple_of(CHUNK) {
            Backing::Own
        } else {
            Backing::Heap
        }
    }
}

/// A page-aligned allocation of `cap` bytes (a multiple of [`BUF_ALIGN`]) from the heap.
fn heap(cap: usize) -> NonNull<u8> {
    let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("buffer layout");
    // SAFETY: `layout` has a non-zero size (at least BUF_ALIGN).
    let raw = unsafe { alloc(layout) };
    NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

/// Maps `len` bytes (a multiple of [`CHUNK`]) at a [`CHUNK`] boundary and asks for huge pages.
fn map_huge(len: usize) -> NonNull<u8> {
    try_map_huge(len).unwrap_or_else(|| {
        let layout = Layout::from_size_align(len, BUF_ALIGN).expect("buffer layout");
        std::alloc::handle_alloc_error(layout)
    })
}

/// [`map_huge`], or `None` when the kernel refuses the mapping.
fn try_map_huge(len: usize) -> Option<NonNull<u8>> {
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
        return None;
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
    NonNull::new(start as *mut u8)
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

/// Bytes of the arena that buffers of sizes dividing [`CHUNK`] are carved from: the pool's
/// idle bound ([`POOL_KEEP_BYTES`], which is also the default bound on buffers in use).
const ARENA_BYTES: usize = POOL_KEEP_BYTES;

/// Chunks in the arena.
pub(crate) const ARENA_CHUNKS: usize = ARENA_BYTES / CHUNK;

/// The arena that buffers of sizes dividing [`CHUNK`] are carved from: [`ARENA_CHUNKS`] chunks
/// of 2 MiB, reserved once per process at a 2 MiB boundary and marked `MADV_HUGEPAGE`
/// (address space only: a page becomes resident when first touched). A chunk is carved for one
/// buffer size; a freed slot is taken by the next buffer of that size, and a chunk whose slots
/// are all free goes back to be carved for any size.
///
/// Nothing in the arena is unmapped or given back to the kernel while the process lives: the
/// io_uring workers register its chunks as fixed buffers ([`super::fixed`]), and a registration
/// holds the pages the chunk had when it was made. Memory remapped under it (`munmap`,
/// `MADV_DONTNEED`) would leave the kernel writing the old pages to the file. So the arena's
/// resident size is the most that was ever in use at once, at most [`ARENA_BYTES`], the same
/// bound the pool keeps idle. Buffers asked for when the arena is full come from the heap.
/// Touched about once per buffer allocated, so one lock is enough.
struct Arena {
    /// The first chunk's address; 0 until reserved (or when the reservation failed).
    base: usize,
    /// Whether the reservation was tried.
    tried: bool,
    /// Per buffer size, the chunk being carved and the offset of its next uncarved slot.
    carving: BTreeMap<usize, (usize, usize)>,
    /// Per buffer size, freed slots (addresses) ready to be taken again.
    free: BTreeMap<usize, Vec<usize>>,
    /// Slots in use per chunk.
    live: Vec<u32>,
    /// Chunks with no slot carved or in use.
    idle: Vec<usize>,
    /// Chunks ever carved: what the arena may hold resident (all of it with huge pages), and
    /// keeps for the life of the process.
    touched: usize,
}

/// [`Arena::base`], readable without the lock (set once).
static ARENA_BASE: AtomicUsize = AtomicUsize::new(0);

static ARENA: Mutex<Arena> = Mutex::new(Arena {
    base: 0,
    tried: false,
    carving: BTreeMap::new(),
    free: BTreeMap::new(),
    live: Vec::new(),
    idle: Vec::new(),
    touched: 0,
});

impl Arena {
    fn lock() -> std::sync::MutexGuard<'static, Arena> {
        ARENA.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The arena's address range, reserving it on first use; `None` where it could not be.
    fn reserved(&mut self) -> Option<usize> {
        if !self.tried {
            self.tried = true;
            if let Some(base) = try_map_huge(ARENA_BYTES) {
                self.base = base.as_ptr() as usize;
                ARENA_BASE.store(self.base, Ordering::Release);
                self.live = vec![0; ARENA_CHUNKS];
                self.idle = (0..ARENA_CHUNKS).rev().collect();
            } else {
                tracing::debug!("no address space for the buffer arena: buffers from the heap");
            }
        }
        (self.base != 0).then_some(self.base)
    }

    /// A slot of `cap` bytes (which divides [`CHUNK`]), or `None` when the arena is full.
    fn take(&mut self, cap: usize) -> Option<NonNull<u8>> {
        let a = self;
        let base = a.reserved()?;
        let addr = match a.free.get_mut(&cap).and_then(Vec::pop) {
            Some(addr) => addr,
            None => {
                let (chunk, next) = match a.carving.get(&cap) {
                    Some(&(chunk, next)) if next < CHUNK => (chunk, next),
                    _ => (a.idle.pop()?, 0),
                };
                // Chunks once carved are on top of the idle stack, so they are taken again
                // before any untouched one: the most ever out is the chunks ever touched.
                a.touched = a.touched.max(a.live.len() - a.idle.len());
                a.carving.insert(cap, (chunk, next + cap));
                base + chunk * CHUNK + next
            }
        };
        a.live[(addr - base) / CHUNK] += 1;
        NonNull::new(addr as *mut u8)
    }

    /// Frees the slot of `cap` bytes at `ptr`, and its chunk for any size with its last slot.
    fn give(&mut self, ptr: NonNull<u8>, cap: usize) {
        let addr = ptr.as_ptr() as usize;
        let a = self;
        let chunk = (addr - a.base) / CHUNK;
        a.live[chunk] -= 1;
        if a.live[chunk] > 0 {
            a.free.entry(cap).or_default().push(addr);
            return;
        }
        let start = a.base + chunk * CHUNK;
        if let Some(slots) = a.free.get_mut(&cap) {
            slots.retain(|&s| s / CHUNK != start / CHUNK);
        }
        if a.carving.get(&cap).is_some_and(|&(c, _)| c == chunk) {
            a.carving.remove(&cap);
        }
        a.idle.push(chunk);
    }

    /// Slots in use in the chunk at `chunk_addr`.
    #[cfg(test)]
    fn live_in(&self, chunk_addr: usize) -> u32 {
        self.live[(chunk_addr - self.base) / CHUNK]
    }
}

/// Reserves the arena's address space now, if it was not yet (the workers do at start; pages
/// become resident only when a buffer first uses them).
pub(crate) fn reserve_arena() {
    Arena::lock().reserved();
}

/// The arena chunk that holds all of the `len` bytes at `ptr`: its index (below
/// [`ARENA_CHUNKS`]) and its address ([`CHUNK`] bytes, mapped for the life of the process).
/// `None` for bytes outside the arena, across a chunk boundary, or none at all.
pub(crate) fn arena_chunk(ptr: *const u8, len: usize) -> Option<(usize, usize)> {
    let base = ARENA_BASE.load(Ordering::Acquire);
    let (start, end) = (ptr as usize, ptr as usize + len);
    if base == 0 || len == 0 || start < base || end > base + ARENA_BYTES {
        return None;
    }
    let chunk = (start - base) / CHUNK;
    ((end - base).div_ceil(CHUNK) == chunk + 1).then_some((chunk, base + chunk * CHUNK))
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
    pub(crate) fn new(buf: AlignedBuf) -> SharedBuf {
        SharedBuf(Some(Arc::new(Marked {
            buf,
            mark: AtomicU8::new(0),
        })))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], |m| m.buf.bytes())
    }

    /// The buffer's mark, shared by every handle (0 when made).
    pub(crate) fn mark(&self) -> &AtomicU8 {
        &self.0.as_deref().expect("a live handle").mark
    }

    /// The buffer, when this is its last handle; this handle back otherwise.
    pub(crate) fn into_inner(mut self) -> Result<AlignedBuf, SharedBuf> {
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

/// Bytes of idle memory kept for reuse: the arena's resident chunks (every buffer of the arena
/// returned is kept) and other idle buffers together; other buffers past it are freed when
/// returned. As large as the default
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
    pub(crate) fn take(cap: usize, huge: bool) -> AlignedBuf {
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

    /// Gives a buffer back for reuse. A buffer of the arena is always kept: its memory stays
    /// with the arena whether kept or freed. Any other is kept while it, the others kept and
    /// the arena's resident chunks together stay within [`POOL_KEEP_BYTES`], so that idle
    /// memory stays within that bound when buffers past a full arena came from the heap.
    pub(crate) fn give(buf: AlignedBuf) {
        if buf.backing == Backing::Chunk {
            POOL.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
            return;
        }
        let arena = Arena::lock().touched * CHUNK;
        let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let idle: usize = p
            .iter()
            .filter(|b| b.backing != Backing::Chunk)
            .map(AlignedBuf::capacity)
            .sum();
        if idle + buf.capacity() + arena <= POOL_KEEP_BYTES {
            p.push(buf);
        }
    }
}

#[cfg(test)]
mod tests;
