//! Gates in front of file I/O: a per-worker gate for the polling driver's blocking pool (safe
//! mode), and a per-file turn for buffered writes (both back-ends).
//!
//! On the polling driver compio runs every file operation on a blocking pool capped near the
//! core count, and when all of its threads are busy, the runtime thread that submits one more
//! spins (`sched_yield`) until a thread frees up: with 16 connections the worker that should
//! read sockets spent its time yielding (measured: docs/decisions.md, "Gates in front of file
//! I/O"). The gate lets at most as many of the sink's writes and reads through as the pool has threads;
//! the others wait asleep, and the runtime thread stays free for the sockets. On io_uring no
//! gate is installed and [`enter`] returns at once.
//!
//! A buffered write takes the inode's lock on ext4 (as on most filesystems), so two threads
//! writing one file never write in parallel: the second spins on the first
//! (`rwsem_spin_on_owner`) and both copy slower. That happened on both back-ends: in safe mode
//! between the pool threads of the two workers, on io_uring between the two workers' io-wq
//! threads (each ring's io-wq keeps its own writes to a file in line, not another ring's; the
//! cost: docs/decisions.md, "Gates in front of file I/O"). So buffered writes of one file take
//! turns (a single [`Tokens`]), before they ask the gate for a pool thread.
//!
//! Not here: which operations are gated (the sink decides), or the pool itself (compio's).

use std::cell::RefCell;

thread_local! {
    /// This worker's gate: one token per free pool thread.
    static GATE: RefCell<Option<Tokens>> = const { RefCell::new(None) };
}

/// Installs a gate of `permits` on the calling thread (a worker on the polling driver).
pub(crate) fn install(permits: usize) {
    GATE.with(|g| *g.borrow_mut() = Some(Tokens::new(permits)));
}

/// Held while a gated operation runs; the permit goes back when it is dropped.
pub(crate) struct Permit(Option<flume::Sender<()>>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.try_send(());
        }
    }
}

/// Waits for a permit of this thread's gate; at once where there is no gate.
pub(crate) async fn enter() -> Permit {
    let Some(gate) = GATE.with(|g| g.borrow().clone()) else {
        return Permit(None);
    };
    gate.take().await
}

/// A number of tokens in a channel; taking one waits asleep until one is back. A worker's gate
/// holds one per pool thread; a file's turn for buffered writes is a single token, shared by
/// every worker writing the file (clones share the tokens).
#[derive(Debug, Clone)]
pub(crate) struct Tokens {
    tx: flume::Sender<()>,
    rx: flume::Receiver<()>,
}

impl Tokens {
    /// `count` tokens (at least one).
    pub(crate) fn new(count: usize) -> Tokens {
        let count = count.max(1);
        let (tx, rx) = flume::bounded(count);
        for _ in 0..count {
            let _ = tx.send(());
        }
        Tokens { tx, rx }
    }

    /// Waits for a token; it goes back when the permit is dropped.
    pub(crate) async fn take(&self) -> Permit {
        // `self` holds a sender, so this only ends with a token.
        let _ = self.rx.recv_async().await;
        Permit(Some(self.tx.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn without_a_gate_every_operation_goes_at_once() {
        std::thread::spawn(|| {
            let held: Vec<Permit> = (0..100)
                .map(|_| match poll_once(pin!(enter())) {
                    Poll::Ready(p) => p,
                    Poll::Pending => panic!("waited with no gate installed"),
                })
                .collect();
            assert_eq!(held.len(), 100);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_gate_lets_its_permits_through_and_the_next_waits_for_one_back() {
        std::thread::spawn(|| {
            install(2);
            let a = poll_once(pin!(enter()));
            let b = poll_once(pin!(enter()));
            assert!(a.is_ready() && b.is_ready(), "two permits");
            let mut third = pin!(enter());
            assert!(poll_once(third.as_mut()).is_pending(), "a third waits");
            drop(a);
            assert!(
                poll_once(third.as_mut()).is_ready(),
                "and goes once one is back"
            );
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_file_turn_lets_one_writer_through_at_a_time() {
        let turn = Tokens::new(1);
        let first = poll_once(pin!(turn.take()));
        assert!(first.is_ready(), "the first writer goes");
        let mut second = pin!(turn.take());
        assert!(poll_once(second.as_mut()).is_pending(), "the second waits");
        drop(first);
        assert!(poll_once(second.as_mut()).is_ready(), "and goes after it");
    }
}
