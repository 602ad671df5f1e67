//! A connection's write pipeline: up to `depth` writes in flight while the next buffer fills.
//!
//! Buffers come from the worker's pool and go back to it; a connection never holds more than
//! `depth + 1` of them, which is what bounds memory (and what pushes back on the socket when the
//! disk is slower than the network: no free buffer, no read). Each completed write is counted in
//! the job's progress and offered to the verifier while its buffer is still in hand.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use compio::runtime::JoinHandle;

use super::Ctx;
use crate::backend::buf::{AlignedBuf, BufPool};
use crate::backend::sink::FileSink;
use crate::error::GetError;
use crate::verify::Verifier;

type Write = JoinHandle<(std::io::Result<()>, AlignedBuf)>;

pub(super) struct Pipeline {
    ctx: Arc<Ctx>,
    sink: FileSink,
    verifier: Option<Arc<Verifier>>,
    wake_read_back: Option<flume::Sender<()>>,
    depth: usize,
    buf_size: usize,
    inflight: VecDeque<(u64, Write)>,
    free: Vec<AlignedBuf>,
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
            free: Vec::new(),
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
        if self.free.is_empty() && self.inflight.len() >= self.depth {
            self.reap_one().await?;
        }
        Ok(self
            .free
            .pop()
            .unwrap_or_else(|| BufPool::take(self.buf_size)))
    }

    /// Starts writing `buf` at `at` (an empty buffer just goes back to the free list).
    pub async fn submit(&mut self, buf: AlignedBuf, at: u64) -> Result<(), GetError> {
        if buf.bytes().is_empty() {
            self.free.push(buf);
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

    /// Gives back a buffer that will not be written.
    pub fn unused(&mut self, buf: AlignedBuf) {
        self.free.push(buf);
    }

    async fn reap_one(&mut self) -> Result<(), GetError> {
        let Some((at, write)) = self.inflight.pop_front() else {
            return Ok(());
        };
        let (result, mut buf) = match write.await {
            Ok(done) => done,
            Err(_) => {
                return Err(GetError::Io {
                    op: "write",
                    path: self.ctx.incomplete.clone(),
                    source: std::io::Error::other("the write task was cancelled or panicked"),
                });
            }
        };
        result.map_err(|source| GetError::Io {
            op: "write",
            path: self.ctx.incomplete.clone(),
            source,
        })?;
        let len = buf.bytes().len() as u64;
        self.ctx.counters.done.fetch_add(len, Ordering::Relaxed);
        if let Some(v) = &self.verifier {
            if v.written(at, buf.bytes()) {
                if let Some(wake) = &self.wake_read_back {
                    let _ = wake.try_send(());
                }
            }
        }
        buf.clear();
        self.free.push(buf);
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

impl Drop for Pipeline {
    fn drop(&mut self) {
        for buf in self.free.drain(..) {
            BufPool::give(buf);
        }
        // Writes still in flight here belong to a job that failed; dropping their handles
        // cancels them, and the file is removed by the job.
    }
}
