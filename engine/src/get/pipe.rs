//! A connection's write pipeline: up to `depth` writes in flight while the next buffer fills.
//!
//! Buffers come from the pool and go back to it (or to the verifier, which keeps some until the
//! hashed prefix reaches them); a connection never holds more than `depth + 1` of them, which is what bounds memory (and what pushes back on the socket when the
//! disk is slower than the network: no free buffer, no read). Each completed write is counted in
//! the job's progress and offered to the verifier while its buffer is still in hand.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use compio::driver::SharedFd;
use compio::runtime::JoinHandle;

use super::Ctx;
use crate::backend::buf::{AlignedBuf, BufPool};
use crate::backend::sink::FileSink;
use crate::error::GetError;
use crate::verify::Verifier;

type Write = JoinHandle<(std::io::Result<()>, AlignedBuf)>;

/// How often a connection looks again when the verifier's window is full.
const WINDOW_POLL: Duration = Duration::from_millis(2);
/// How long it waits before letting the buffer go to read-back.
const WINDOW_WAIT: Duration = Duration::from_millis(500);

pub(super) struct Pipeline {
    ctx: Arc<Ctx>,
    sink: FileSink,
    verifier: Option<Arc<Verifier>>,
    wake_read_back: Option<flume::Sender<()>>,
    depth: usize,
    buf_size: usize,
    inflight: VecDeque<(u64, Write)>,
}

impl Pipeline {
    pub fn new(ctx: &Arc<Ctx>, sink: FileSink) -> Pipeline {
        let (verifier, wake_read_back) = ctx.verifier();
        Pipeline {
            ctx: Arc::clone(ctx),
            sink,
            verifier,
            wake_read_back,
            depth: ctx.settings.depth.max(1),
            buf_size: ctx.settings.staging,
            inflight: VecDeque::new(),
        }
    }

    /// Buffers must end at file offsets that are multiples of this (see [`FileSink::align`]).
    pub fn align(&self) -> u64 {
        self.sink.align()
    }

    /// How many bytes a buffer that starts at file offset `at` may hold: up to the next aligned
    /// boundary when `at` is off one (that piece goes the buffered way), a whole buffer otherwise.
    pub fn fill_limit(&self, at: u64, cap: usize) -> usize {
        let align = self.align();
        match at % align {
            0 => cap,
            off => cap.min((align - off) as usize),
        }
    }

    /// An empty buffer; waits for the oldest write when all are in flight.
    pub async fn buffer(&mut self) -> Result<AlignedBuf, GetError> {
        if self.inflight.len() >= self.depth {
            self.reap_one().await?;
        }
        Ok(BufPool::take(self.buf_size))
    }

    /// Starts writing `buf` at `at` (an empty buffer just goes back to the free list).
    pub async fn submit(&mut self, buf: AlignedBuf, at: u64) -> Result<(), GetError> {
        if buf.bytes().is_empty() {
            BufPool::give(buf);
            return Ok(());
        }
        while self.inflight.len() >= self.depth {
            self.reap_one().await?;
        }
        let mut sink = self.sink.clone();
        let write = compio::runtime::spawn(async move { sink.write(buf, at).await });
        self.inflight.push_back((at, write));
        Ok(())
    }

    /// The file's descriptor for splicing into, when the sink splices.
    pub fn splice_target(&self) -> Option<SharedFd<std::fs::File>> {
        self.sink.splice_target()
    }

    /// `len` bytes were spliced into the file at `at`: counted, and left to read-back for the
    /// hash.
    pub fn spliced(&self, at: u64, len: u64) {
        self.ctx.add_done(len);
        self.ctx.add_spliced(len);
        self.ctx.journal_written(at, len);
        if let Some(v) = &self.verifier {
            if v.written_elsewhere(at, len) {
                if let Some(wake) = &self.wake_read_back {
                    let _ = wake.try_send(());
                }
            }
        }
    }

    /// Gives back a buffer that will not be written.
    pub fn unused(&mut self, buf: AlignedBuf) {
        BufPool::give(buf);
    }

    async fn reap_one(&mut self) -> Result<(), GetError> {
        let Some((at, write)) = self.inflight.pop_front() else {
            return Ok(());
        };
        let (result, buf) = match write.await {
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
            BufPool::give(buf);
            return Err(self.ctx.io_error("write", source));
        }
        let len = buf.bytes().len() as u64;
        self.ctx.add_done(len);
        self.ctx.journal_written(at, len);
        let Some(v) = self.verifier.clone() else {
            BufPool::give(buf);
            return Ok(());
        };
        // The verifier takes the buffer: it hashes it now or keeps it for later. When its window
        // is full, wait for the prefix to move (this connection stops reading meanwhile); give
        // up after a while, so that a stuck prefix cannot stall the download.
        let mut buf = buf;
        let mut waited = Duration::ZERO;
        let wake = loop {
            match v.written(at, buf) {
                Ok(wake) => break wake,
                Err(back) if waited >= WINDOW_WAIT || self.ctx.is_aborted() => {
                    v.spill(at, back);
                    break true;
                }
                Err(back) => {
                    buf = back;
                    compio::time::sleep(WINDOW_POLL).await;
                    waited += WINDOW_POLL;
                }
            }
        };
        if wake {
            if let Some(wake) = &self.wake_read_back {
                let _ = wake.try_send(());
            }
        }
        Ok(())
    }

    /// Waits for every write in flight; the first error wins, but all are waited for.
    pub async fn drain(&mut self) -> Result<(), GetError> {
        let mut first = Ok(());
        while !self.inflight.is_empty() {
            if let Err(e) = self.reap_one().await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}
