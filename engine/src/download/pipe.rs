//! A connection's write pipeline: up to `depth` writes in flight while the next buffer fills.
//!
//! Buffers come from the pool and go back to it (or to the verifier, which keeps some until the
//! hashed prefix reaches them); a connection never holds more than `depth + 1` of them, which
//! is what bounds memory (and what pushes back on the socket when the disk is slower than the
//! network: no free buffer, no read). A buffer is shown to the verifier as its write is
//! submitted, which hashes it then if it continues the hashed prefix, or while it is written if
//! the prefix reaches it meanwhile; each completed write is counted in the job's progress and
//! its buffer taken back and offered to the verifier, to keep if it was not hashed yet.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use compio::driver::SharedFd;
use compio::runtime::JoinHandle;

use super::FileDownload;
use crate::backend::buf::{AlignedBuf, BufPool, SharedBuf};
use crate::backend::sink::FileSink;
use crate::error::GetError;
use crate::verify::{HashStep, Landed, Verifier};

type Write = JoinHandle<(std::io::Result<()>, SharedBuf)>;

/// How often a connection looks again when the verifier's window is full.
const WINDOW_POLL: Duration = Duration::from_millis(2);
/// How often a connection looks again for a written buffer that a run is still hashing while
/// the window is full (a 1 MiB buffer takes about half a millisecond to hash).
const LANDED_POLL: Duration = Duration::from_micros(100);
/// How long it waits before letting the buffer go to read-back.
const WINDOW_WAIT: Duration = Duration::from_millis(500);

pub(super) struct Pipeline {
    ctx: Arc<FileDownload>,
    sink: FileSink,
    verifier: Option<Arc<Verifier>>,
    wake_read_back: Option<flume::Sender<()>>,
    depth: usize,
    buf_size: usize,
    /// Writes in flight and their file offsets, in no order (they are reaped lowest first).
    inflight: Vec<(u64, Write)>,
}

impl Pipeline {
    pub(super) fn new(ctx: &Arc<FileDownload>, sink: FileSink) -> Pipeline {
        let (verifier, wake_read_back) = ctx.verifier();
        Pipeline {
            ctx: Arc::clone(ctx),
            sink,
            verifier,
            wake_read_back,
            depth: ctx.settings.depth.max(1),
            buf_size: ctx.settings.staging,
            inflight: Vec::new(),
        }
    }

    /// A pipeline for a lane; one opened by growth ([`super::crowd`]) keeps one write in
    /// flight, so that growing the connections grows memory by two buffers each, not
    /// `write_depth + 1`.
    pub(super) fn for_lane(ctx: &Arc<FileDownload>, sink: FileSink, grown: bool) -> Pipeline {
        let mut pipe = Pipeline::new(ctx, sink);
        if grown {
            pipe.depth = 1;
        }
        pipe
    }

    /// Buffers must end at file offsets that are multiples of this (see [`FileSink::align`]).
    pub(super) fn align(&self) -> u64 {
        self.sink.align()
    }

    /// How many bytes a buffer that starts at file offset `at` may hold: up to the next aligned
    /// boundary when `at` is off one (that piece goes the buffered way), a whole buffer otherwise.
    pub(super) fn fill_limit(&self, at: u64, cap: usize) -> usize {
        let align = self.align();
        match at % align {
            0 => cap,
            off => cap.min((align - off) as usize),
        }
    }

    /// An empty buffer, to be filled with the bytes at file offset `at`; waits for a write
    /// when all are in flight.
    pub(super) async fn buffer(&mut self, at: u64) -> Result<AlignedBuf, GetError> {
        if self.inflight.len() >= self.depth {
            self.reap_one(at).await?;
        }
        // Huge pages for buffers that are filled whole; the splice sink's mostly hold a head.
        Ok(BufPool::take(self.buf_size, !self.sink.is_splice()))
    }

    /// Starts writing `buf` at `at` (an empty buffer just goes back to the free list).
    pub(super) async fn submit(&mut self, buf: AlignedBuf, at: u64) -> Result<(), GetError> {
        if buf.bytes().is_empty() {
            BufPool::give(buf);
            return Ok(());
        }
        while self.inflight.len() >= self.depth {
            self.reap_one(at).await?;
        }
        // The write only reads the buffer, and the hash need not wait for it.
        let buf = SharedBuf::new(buf);
        let mut sink = self.sink.clone();
        let written = buf.clone();
        // A watcher (a mirror's readers) hears of the bytes as soon as their write completes,
        // not when the connection gets round to reaping it (up to `depth` buffers later).
        let watch = self.ctx.watch.clone();
        let len = buf.bytes().len() as u64;
        let write = compio::runtime::spawn(async move {
            let done = sink.write(written, at).await;
            if let (Some(watch), (Ok(_), _)) = (&watch, &done) {
                watch.written(at, len);
            }
            done
        });
        self.inflight.push((at, write));
        let verifier = self.verifier.clone();
        if let Some(next) = verifier.as_ref().and_then(|v| v.submitted(at, buf)) {
            self.hash_runs(next).await;
        }
        Ok(())
    }

    /// The file's descriptor for splicing into, when the sink splices.
    pub(super) fn splice_target(&self) -> Option<SharedFd<std::fs::File>> {
        self.sink.splice_target()
    }

    /// `len` bytes were spliced into the file at `at`: counted, and left to read-back for the
    /// hash.
    pub(super) fn spliced(&self, at: u64, len: u64) {
        self.ctx.add_done(len);
        self.ctx.add_spliced(len);
        self.ctx.journal_written(at, len);
        if let Some(v) = &self.verifier
            && v.written_elsewhere(at, len)
            && let Some(wake) = &self.wake_read_back
        {
            let _ = wake.try_send(());
        }
    }

    /// Gives back a buffer that will not be written.
    pub(super) fn unused(&mut self, buf: AlignedBuf) {
        BufPool::give(buf);
    }

    /// Waits for the write lowest in the file and hands its buffer to the verifier. `next` is
    /// the file offset this connection reads next.
    async fn reap_one(&mut self, next: u64) -> Result<(), GetError> {
        let Some(i) = lowest(self.inflight.iter().map(|(at, _)| *at)) else {
            return Ok(());
        };
        let (at, write) = self.inflight.swap_remove(i);
        let (result, shared) = match write.await {
            Ok(done) => done,
            Err(_) => {
                return Err(GetError::Io {
                    op: "write",
                    path: self.ctx.incomplete.clone(),
                    source: std::io::Error::other("the write task was cancelled or panicked"),
                });
            }
        };
        if let Err(source) = result {
            // A failed write fails the file; its buffer is no longer shown to the verifier.
            if let Some(v) = &self.verifier {
                drop(v.landed(at, shared));
            }
            return Err(self.ctx.io_error("write", source));
        }
        let len = shared.bytes().len() as u64;
        self.ctx.add_done(len);
        self.ctx.journal_written(at, len);
        let Some(v) = self.verifier.clone() else {
            return Ok(());
        };
        // The buffer back whole; or, while a run is hashing it, left to the run (the window
        // counts it meanwhile), or, when the window is full, waited for.
        // Asleep meanwhile, not spinning: a run on this worker goes on while this task sleeps,
        // and one on the other worker needs the core less than the hash or the origin does.
        let mut shared = shared;
        let mut buf = loop {
            match v.landed(at, shared) {
                Landed::Back(buf) => break buf,
                Landed::Left => return Ok(()),
                Landed::Busy(back) => {
                    shared = back;
                    compio::time::sleep(LANDED_POLL).await;
                }
            }
        };
        // The verifier takes the buffer: it hands it back to hash now (with the kept buffers
        // that follow) or keeps it for later. When its window is full, wait for the prefix to
        // move (this connection stops reading meanwhile), unless `give_up_waiting` says
        // otherwise, or another connection already gave up at this prefix (it is stuck).
        let mut waited = Duration::ZERO;
        let next_step = loop {
            match v.written(at, buf) {
                Ok(n) => break n,
                Err(back)
                    if give_up_waiting(at, next, waited) || v.stuck() || self.ctx.is_aborted() =>
                {
                    v.spill(at, back);
                    break HashStep::Idle { read_back: true };
                }
                Err(back) => {
                    buf = back;
                    compio::time::sleep(WINDOW_POLL).await;
                    waited += WINDOW_POLL;
                }
            }
        };
        self.hash_runs(next_step).await;
        Ok(())
    }

    /// Hashes `next` and the runs that follow it, a buffer at a time, letting the worker's
    /// other connections read in between; wakes the read-back task when bytes that left
    /// memory wait at the prefix afterwards.
    async fn hash_runs(&self, mut next_step: HashStep<'_>) {
        let wake = loop {
            match next_step {
                HashStep::Hash(mut run) => {
                    while run.step() {
                        YieldNow(false).await;
                    }
                    next_step = run.finish();
                }
                HashStep::Idle { read_back } => break read_back,
            }
        };
        if wake && let Some(wake) = &self.wake_read_back {
            let _ = wake.try_send(());
        }
    }

    /// Waits for every write in flight; the first error wins, but all are waited for.
    pub(super) async fn drain(&mut self) -> Result<(), GetError> {
        let mut first = Ok(());
        while !self.inflight.is_empty() {
            // Nothing more is read: no buffer is let go early.
            if let Err(e) = self.reap_one(u64::MAX).await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}

/// Which of the writes in flight (by file offset) to wait for next: the lowest in the file, not
/// the oldest. A connection that went on to a lease lower in the file (split off a lagging one
/// near the end) may hold, in its newest write, the very bytes the verifier's prefix waits for,
/// while its older writes, further on, wait for room in the window, which only the prefix
/// moving frees. Taken oldest first, they held the prefix back until [`WINDOW_WAIT`] ran out,
/// once per such write (measured: docs/decisions.md, "The hash window").
fn lowest(offsets: impl Iterator<Item = u64>) -> Option<usize> {
    offsets
        .enumerate()
        .min_by_key(|&(_, at)| at)
        .map(|(i, _)| i)
}

/// Whether a written buffer at `at` that the verifier's full window refused should stop
/// waiting for room and be left to read-back, when the connection reads `next` next and has
/// waited `waited`. After [`WINDOW_WAIT`] in any case (a stuck prefix must not stall the
/// download), and at once when the connection reads next below it: its next bytes come before
/// this buffer, may be the ones the prefix waits for, and cannot be read while it waits.
fn give_up_waiting(at: u64, next: u64, waited: Duration) -> bool {
    next < at || waited >= WINDOW_WAIT
}

/// Returns to the worker's runtime once, which then polls its ring (so the other connections'
/// completed reads are seen) before resuming.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_write_is_waited_for_first() {
        // Oldest first: 2039 MiB and 2040 MiB of the lease before, then 1946 MiB of a split.
        let mib = |m: u64| m << 20;
        let inflight = [mib(2039), mib(2040), mib(1946)];
        assert_eq!(lowest(inflight.into_iter()), Some(2));
        assert_eq!(lowest([5, 6, 7].into_iter()), Some(0));
        assert_eq!(lowest(std::iter::empty()), None);
    }

    #[test]
    fn a_connection_that_reads_lower_next_does_not_wait_for_room() {
        let short = WINDOW_POLL;
        // Reading on in the same lease: the buffer waits for room, up to the limit.
        assert!(!give_up_waiting(10 << 20, 11 << 20, short));
        assert!(give_up_waiting(10 << 20, 11 << 20, WINDOW_WAIT));
        // Gone on to a lower lease: no waiting at all.
        assert!(give_up_waiting(10 << 20, 4 << 20, Duration::ZERO));
        // Draining (nothing more to read): only the limit.
        assert!(!give_up_waiting(10 << 20, u64::MAX, short));
    }
}
