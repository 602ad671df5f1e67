//! Tests of `buf`.

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
fn buffers_that_divide_a_chunk_are_carved_from_the_arena_and_reused() {
    // A size no other test uses, so the chunks seen here are this test's alone.
    const CAP: usize = 32 << 10;
    let per_chunk = CHUNK / CAP;
    let mut bufs: Vec<AlignedBuf> = (0..per_chunk + 1)
        .map(|_| AlignedBuf::with(CAP, true))
        .collect();
    assert!(bufs.iter().all(|b| b.backing == Backing::Chunk));
    let chunk = |b: &AlignedBuf| {
        arena_chunk(b.ptr.as_ptr(), b.cap).expect("a buffer of the arena lies in one chunk")
    };
    let (first, first_addr) = chunk(&bufs[0]);
    assert_eq!(first_addr % CHUNK, 0, "chunks lie at 2 MiB boundaries");
    for (i, b) in bufs[..per_chunk].iter().enumerate() {
        assert_eq!(chunk(b).0, first, "slot {i} is carved from the first chunk");
        assert_eq!(
            b.ptr.as_ptr() as usize,
            first_addr + i * CAP,
            "slots do not overlap"
        );
    }
    let (second, second_addr) = chunk(&bufs[per_chunk]);
    assert_ne!(second, first, "a full chunk is not carved further");
    // Every slot is writable end to end.
    for b in &mut bufs {
        b.push_slice(&[0xa5; CAP]);
    }
    assert!(bufs.iter().all(|b| b.bytes().iter().all(|&x| x == 0xa5)));

    // A freed slot is the next one taken for that size.
    let freed = bufs.swap_remove(3).ptr.as_ptr() as usize;
    assert_eq!(Arena::lock().live_in(first_addr), per_chunk as u32 - 1);
    let again = AlignedBuf::with(CAP, true);
    assert_eq!(
        again.ptr.as_ptr() as usize,
        freed,
        "the freed slot is reused"
    );
    bufs.push(again);

    assert_eq!(second_addr % CHUNK, 0);
    // Bytes across a chunk boundary, or outside the arena, are in no chunk.
    assert_eq!(arena_chunk((first_addr + CHUNK - 1) as *const u8, 2), None);
    let heap = AlignedBuf::new(CAP);
    assert_eq!(arena_chunk(heap.ptr.as_ptr(), heap.cap), None);
}

#[test]
fn a_chunk_whose_slots_are_all_free_is_carved_again_for_any_size() {
    // An arena of its own over addresses that are never touched: only the bookkeeping runs
    // (the process's arena is shared by the tests running beside this one).
    let base = 1usize << 45;
    let mut a = Arena {
        base,
        tried: true,
        carving: BTreeMap::new(),
        free: BTreeMap::new(),
        live: vec![0; 2],
        idle: vec![1, 0],
        touched: 0,
    };
    let take = |a: &mut Arena, cap| a.take(cap).map(|p| p.as_ptr() as usize);
    let halves = [take(&mut a, CHUNK / 2), take(&mut a, CHUNK / 2)];
    assert_eq!(halves, [Some(base), Some(base + CHUNK / 2)]);
    let quarter = take(&mut a, CHUNK / 4).expect("the second chunk");
    assert_eq!(quarter, base + CHUNK, "another size takes another chunk");
    assert_eq!(take(&mut a, CHUNK / 2), None, "both chunks are in use");
    assert_eq!(a.touched, 2);
    let nn = |addr: usize| NonNull::new(addr as *mut u8).expect("not null");
    a.give(nn(base + CHUNK / 2), CHUNK / 2);
    assert_eq!(
        take(&mut a, CHUNK / 2),
        Some(base + CHUNK / 2),
        "a freed slot is reused"
    );
    assert_eq!(take(&mut a, CHUNK / 4), Some(base + CHUNK + CHUNK / 4));
    a.give(nn(base), CHUNK / 2);
    a.give(nn(base + CHUNK / 2), CHUNK / 2);
    assert_eq!(a.live_in(base), 0);
    assert!(
        a.free[&(CHUNK / 2)].is_empty(),
        "its free slots are forgotten"
    );
    let eighth = take(&mut a, CHUNK / 8);
    assert_eq!(
        eighth,
        Some(base),
        "and the chunk is carved for another size"
    );
    assert_eq!(take(&mut a, CHUNK / 2), None);
    assert_eq!(a.touched, 2, "no chunk beyond the two touched");
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
