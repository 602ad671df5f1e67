//! The verifier's tests: out-of-order writes, read-back, the window, and both digests against
//! their references.

use sha2::{Digest, Sha256};

use super::*;

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn sha(b: &[u8]) -> Checksum {
    Checksum::Sha256(Sha256::digest(b).into())
}

fn buf_of(bytes: &[u8]) -> AlignedBuf {
    let mut b = AlignedBuf::new(bytes.len());
    b.push_slice(bytes);
    b
}

/// Feeds writes in the given order, reading back (from `file`) whenever the verifier says so.
fn run(file: &[u8], writes: &[Range<usize>], window: u64) -> (Checksum, HashStats) {
    let v = Verifier::new(
        Window::new(window),
        HashAlgorithm::Sha256,
        file.len() as u64,
    );
    for w in writes {
        match v.written(w.start as u64, buf_of(&file[w.clone()])) {
            Ok(next) => {
                next.hash_all();
            }
            Err(b) => v.spill(w.start as u64, b),
        }
        while let Some(c) = v.claim_read_back(3) {
            let r = c.range.start as usize..c.range.end as usize;
            v.complete_read_back(c, &file[r]).hash_all();
        }
    }
    assert_eq!(v.prefix(), file.len() as u64);
    v.finish()
}

#[test]
fn in_order_writes_hash_from_memory() {
    let f = data(1000);
    let (d, s) = run(&f, &[0..100, 100..600, 600..1000], 0);
    assert_eq!(d, sha(&f));
    assert_eq!(
        s,
        HashStats {
            from_memory: 1000,
            read_back: 0
        }
    );
}

#[test]
fn out_of_order_writes_hash_the_same_from_the_window_or_read_back() {
    let f = data(1000);
    let orders: &[&[Range<usize>]] = &[
        &[500..1000, 0..500],
        &[900..1000, 600..900, 100..600, 0..100],
        &[0..10, 20..30, 30..40, 10..20, 40..1000],
        &[300..400, 0..100, 200..300, 100..200, 400..1000],
    ];
    for order in orders {
        // No window: everything out of order is read back.
        let (d, s) = run(&f, order, 0);
        assert_eq!(d, sha(&f), "{order:?}");
        assert_eq!(s.from_memory + s.read_back, 1000, "{order:?}");
        assert!(s.read_back > 0, "{order:?}");
        // A window as large as the file: nothing is read back.
        let (d, s) = run(&f, order, 1000);
        assert_eq!(d, sha(&f), "{order:?}");
        assert_eq!(
            s,
            HashStats {
                from_memory: 1000,
                read_back: 0
            },
            "{order:?}"
        );
        // A small window: some of each.
        let (d, s) = run(&f, order, 150);
        assert_eq!(d, sha(&f), "{order:?}");
        assert_eq!(s.from_memory + s.read_back, 1000, "{order:?}");
    }
}

#[test]
fn a_run_is_hashed_a_buffer_at_a_time_while_others_arrive() {
    let f = data(1000);
    let window = Window::new(1000);
    let v = Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 1000);
    assert!(matches!(
        v.written(200, buf_of(&f[200..400])),
        Ok(HashStep::Idle { read_back: false })
    ));
    assert_eq!(window.used(), 200);
    let Ok(HashStep::Hash(mut run)) = v.written(0, buf_of(&f[..200])) else {
        panic!("the prefix's buffer is handed out to hash");
    };
    // The run took the kept buffer that continues it; the hasher is out meanwhile. The kept
    // buffer's room comes back when it is hashed, not before: it is still in memory.
    assert_eq!(run.end, 400);
    assert!(run.step());
    assert_eq!(window.used(), 200);
    // Bytes that arrive at the end of the run meanwhile are kept (the hasher is out) ...
    assert!(matches!(
        v.written(400, buf_of(&f[400..1000])),
        Ok(HashStep::Idle { read_back: false })
    ));
    assert!(v.claim_read_back(1000).is_none());
    assert_eq!(window.used(), 800);
    assert!(run.step());
    assert_eq!(window.used(), 600);
    assert!(!run.step());
    // ... and come next, when the run is done.
    let HashStep::Hash(run) = run.finish() else {
        panic!("the kept buffer continues the prefix");
    };
    assert_eq!(run.end, 1000);
    assert!(!run.finish().hash_all());
    assert_eq!(v.prefix(), 1000);
    assert_eq!(v.finish().0, sha(&f));
}

#[test]
fn a_run_dropped_unfinished_still_moves_the_prefix() {
    let f = data(1000);
    let v = Verifier::new(Window::new(1000), HashAlgorithm::Sha256, 1000);
    v.written(500, buf_of(&f[500..1000]))
        .expect("the window has room")
        .hash_all();
    let Ok(HashStep::Hash(mut run)) = v.written(0, buf_of(&f[..500])) else {
        panic!("the prefix's buffer is handed out to hash");
    };
    assert!(run.step());
    // A connection cancelled while it hashed: nothing is lost.
    drop(run);
    assert_eq!(v.prefix(), 1000);
    assert_eq!(v.finish().0, sha(&f));
}

fn shared_of(bytes: &[u8]) -> SharedBuf {
    SharedBuf::new(buf_of(bytes))
}

/// The write of `buf` at `at` lands after its bytes were hashed: the buffer comes back
/// whole (no run holds it any more), and the verifier lets it go without keeping it.
fn lands_hashed(v: &Verifier, at: u64, buf: SharedBuf) {
    let Landed::Back(back) = v.landed(at, buf) else {
        panic!("no run holds the buffer at {at}");
    };
    assert!(matches!(
        v.written(at, back),
        Ok(HashStep::Idle { read_back: false })
    ));
}

#[test]
fn bytes_in_flight_are_hashed_without_waiting_for_their_write() {
    let f = data(1000);
    let window = Window::new(1000);
    let v = Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 1000);
    // Further on: shown while in flight, not hashed, counted by nobody but its writer.
    let far = shared_of(&f[700..1000]);
    assert!(v.submitted(700, far.clone()).is_none());
    assert_eq!((v.prefix(), window.used()), (0, 0));
    // At the prefix: hashed at once, before its write completes.
    let first = shared_of(&f[..200]);
    let Some(HashStep::Hash(run)) = v.submitted(0, first.clone()) else {
        panic!("the prefix's buffer is hashed at submit");
    };
    assert!(!run.finish().hash_all());
    assert_eq!(v.prefix(), 200);
    // Its write completes: the buffer comes back whole, behind the prefix, and just goes
    // back to the pool.
    lands_hashed(&v, 0, first);
    // Written, not hashed: kept in the window as before.
    let mid = shared_of(&f[400..700]);
    assert!(v.submitted(400, mid.clone()).is_none());
    let Landed::Back(mid) = v.landed(400, mid) else {
        panic!("no run holds it");
    };
    v.written(400, mid).expect("room").hash_all();
    assert_eq!(window.used(), 300);
    // A written buffer at the prefix makes a run that takes the kept buffer and the one
    // still in flight after it; while the run holds the flying one, its writer cannot take
    // it back.
    let Ok(HashStep::Hash(mut run)) = v.written(200, buf_of(&f[200..400])) else {
        panic!("the prefix's buffer is handed out to hash");
    };
    assert!(
        run.step() && run.step(),
        "the written buffer, then the kept one"
    );
    assert_eq!(
        window.used(),
        0,
        "the kept buffer's room is back once hashed"
    );
    // Written while the run still holds it: left to the run, and counted by the window
    // until hashed, so its connection goes on.
    assert!(matches!(v.landed(700, far), Landed::Left));
    assert_eq!(window.used(), 300);
    assert!(!run.finish().hash_all());
    assert_eq!((v.prefix(), window.used()), (1000, 0));
    let (d, stats) = v.finish();
    assert_eq!(d, sha(&f));
    assert_eq!(stats.from_memory, 1000);
}

#[test]
fn a_flying_buffer_a_run_holds_is_left_to_it_only_while_the_window_has_room() {
    let f = data(200);
    let window = Window::new(50);
    let v = Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 200);
    let first = shared_of(&f[..100]);
    let Some(HashStep::Hash(run)) = v.submitted(0, first.clone()) else {
        panic!("hashed at submit");
    };
    // Written before the run hashed it, and the window cannot count it: the writer keeps
    // it and tries again.
    let Landed::Busy(first) = v.landed(0, first) else {
        panic!("the window has no room for it");
    };
    assert_eq!(window.used(), 0);
    assert!(!run.finish().hash_all());
    lands_hashed(&v, 0, first);
    assert_eq!((v.prefix(), window.used()), (100, 0));
}

#[test]
fn a_flying_buffer_hashed_before_its_run_ends_is_not_kept_when_it_lands() {
    let f = data(300);
    let window = Window::new(300);
    let v = Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 300);
    let flying = shared_of(&f[100..200]);
    assert!(v.submitted(100, flying.clone()).is_none());
    let Ok(HashStep::Hash(mut run)) = v.written(0, buf_of(&f[..100])) else {
        panic!("a run at the prefix, taking the flying buffer along");
    };
    assert!(
        run.step() && run.step(),
        "both hashed; the run has not ended"
    );
    assert_eq!(v.prefix(), 0);
    // Its write lands: the run let it go, so it comes back whole, but it is hashed.
    lands_hashed(&v, 100, flying);
    assert_eq!(window.used(), 0, "not kept");
    assert!(!run.finish().hash_all());
    assert!(
        v.written(200, buf_of(&f[200..300]))
            .is_ok_and(|n| !n.hash_all())
    );
    assert_eq!((v.prefix(), window.used()), (300, 0));
    let (d, stats) = v.finish();
    assert_eq!(d, sha(&f));
    assert_eq!(stats.from_memory, 300);
}

#[test]
fn a_buffer_shown_while_the_hasher_is_busy_waits_for_the_prefix() {
    let f = data(600);
    let v = Verifier::new(Window::new(600), HashAlgorithm::Sha256, 600);
    let Ok(HashStep::Hash(run)) = v.written(0, buf_of(&f[..200])) else {
        panic!("a run at the prefix");
    };
    // The run holds the hasher: the next buffer is not hashed now, but shown.
    assert!(v.submitted(200, shared_of(&f[200..400])).is_none());
    // The run's end brings it along, in flight.
    let HashStep::Hash(run) = run.finish() else {
        panic!("the flying buffer continues the prefix");
    };
    assert!(!run.finish().hash_all());
    assert_eq!(v.prefix(), 400);
    // A failed write's buffer is taken back (its file fails): it is no longer shown, so
    // the prefix reaching it does not hash it.
    let failed = shared_of(&f[500..600]);
    assert!(v.submitted(500, failed.clone()).is_none());
    drop(v.landed(500, failed));
    let Some(HashStep::Hash(run)) = v.submitted(400, shared_of(&f[400..500])) else {
        panic!("at the prefix, hashed at once");
    };
    assert!(!run.finish().hash_all());
    assert_eq!(v.prefix(), 500);
}

#[test]
fn verifiers_of_one_job_share_one_window() {
    let f = data(1000);
    let window = Window::new(600);
    let (a, b) = (
        Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 0),
        Verifier::new(Arc::clone(&window), HashAlgorithm::Sha256, 0),
    );
    // Out of order in both files: each keeps what the shared window still has room for.
    assert!(a.written(500, buf_of(&f[500..1000])).is_ok());
    assert_eq!(window.used(), 500);
    let back = b
        .written(500, buf_of(&f[500..900]))
        .expect_err("the window is full for the second file");
    assert!(b.written(900, buf_of(&f[900..1000])).is_ok());
    assert_eq!(window.used(), 600);
    // The first file's prefix arrives: its kept buffer is hashed and its room given back.
    assert!(a.written(0, buf_of(&f[..500])).is_ok());
    assert_eq!(window.used(), 100);
    assert_eq!(a.finish().0, sha(&f));
    assert!(b.written(500, back).is_ok(), "now there is room");
    assert_eq!(window.used(), 500);
    drop(b);
    assert_eq!(window.used(), 0, "a dropped verifier gives its room back");
}

#[test]
fn hex_round_trips_and_rejects_garbage() {
    let h = sha(b"abc");
    assert_eq!(
        h.to_string(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let parse = |s: &str| Checksum::parse(HashAlgorithm::Sha256, s);
    assert_eq!(parse(&h.to_string().to_uppercase()), Some(h));
    assert_eq!(parse("abc"), None);
    assert_eq!(parse(&"g".repeat(64)), None);
    assert_eq!(
        Checksum::parse(HashAlgorithm::GitSha1, &h.to_string()),
        None
    );
}

#[test]
fn git_blob_id_matches_git() {
    // `printf 'hello\n' | git hash-object --stdin`, and the id of the empty blob.
    for (bytes, id) in [
        (&b"hello\n"[..], "ce013625030ba8dba906f756967f9e9ca394464a"),
        (&b""[..], "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"),
    ] {
        let v = Verifier::new(Window::new(0), HashAlgorithm::GitSha1, bytes.len() as u64);
        if !bytes.is_empty() {
            assert!(v.written(0, buf_of(bytes)).is_ok());
        }
        assert_eq!(v.finish().0.to_string(), id);
    }
}
