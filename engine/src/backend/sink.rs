//! Sinks: how received bytes reach the file.
//!
//! - [`SinkKind::Direct`] (the default on io_uring, where the filesystem allows it): writes at
//!   offsets aligned to the filesystem's O_DIRECT alignment go through an `O_DIRECT` descriptor,
//!   from page-aligned buffers, bypassing the page cache. The unaligned pieces (the head of a
//!   range that starts off a boundary, the tail of a range or file) go through a second, buffered
//!   descriptor of the same file. The alignment used is at least a page, so a page is only ever
//!   written one way and the two never race in the page cache.
//! - [`SinkKind::Buffered`]: every write through the page cache (the safe-mode path, and what a
//!   filesystem without O_DIRECT gets).
//! - [`SinkKind::Splice`] (io_uring only): ranged bodies go socket -> pipe -> page cache inside
//!   the kernel ([`super::splice`]); bytes that arrive with a response head, and bodies that are
//!   not ranged (chunked, streamed), take the buffered path.
//!
//! On the polling driver (safe mode) writes and read-backs pass [`super::gate`] first, so
//! that no more of them wait for the blocking pool than it has threads. Buffered writes of one
//! file take turns first, on both back-ends ([`super::gate::Tokens`]): the inode lock would
//! serialise them anyway, after spinning.
//!
//! A buffered sink starts the writeback of each 8 MiB stretch of the file once a write completes
//! it ([`super::fileop`]), instead of leaving it dirty in the page cache until the flusher or
//! the final fsync. The stretch started [`DROP_BEHIND`] stretches before it (in the order the
//! file's sinks started them, on every worker) is then waited for and dropped from the page
//! cache: a file keeps a few dozen MiB cached however large it is, and its next writes get the
//! pages just freed instead of fresh ones (why that matters: [`super::fileop`]).
//!
//! On io_uring, a write from a buffer of the arena goes out with `WRITE_FIXED` from the ring's
//! registered buffers ([`super::fixed`]), on either descriptor; other buffers, and every write in
//! safe mode, the plain way.
//!
//! The final fsync of the file covers both descriptors. A sink does not decide offsets or sizes:
//! the connection cuts its buffers at [`FileSink::align`] boundaries so that whole buffers stay
//! on the direct path.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::driver::{SharedFd, ToSharedFd};
use compio::fs::File;
use compio::io::AsyncReadAt;
use serde::Serialize;

use super::buf::{AlignedBuf, BUF_ALIGN};
use super::gate::Tokens;
use super::held::HeldBody;
use super::{Backend, fileop, fixed};

/// How bytes are written to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// O_DIRECT for aligned blocks, buffered for the unaligned edges.
    Direct,
    /// Through the page cache.
    Buffered,
    /// Socket -> pipe -> file with `SPLICE` (io_uring), through the page cache, no user copy.
    Splice,
}

impl std::fmt::Display for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SinkKind::Direct => "direct",
            SinkKind::Buffered => "buffered",
            SinkKind::Splice => "splice",
        })
    }
}

impl std::str::FromStr for SinkKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(SinkKind::Direct),
            "buffered" => Ok(SinkKind::Buffered),
            "splice" => Ok(SinkKind::Splice),
            other => Err(format!(
                "unknown sink {other:?} (expected direct, buffered or splice)"
            )),
        }
    }
}

/// Stretches whose writeback was started that a file keeps in the page cache; the one started
/// before them is dropped.
pub(crate) const DROP_BEHIND: usize = 8;

/// What the sinks of one file share across workers: the turn for buffered writes, and the
/// stretches whose writeback was started and which are still cached. Clones share both.
#[derive(Debug, Clone)]
pub(crate) struct FileShare {
    turn: Tokens,
    started: Arc<Mutex<VecDeque<u64>>>,
    /// Bytes written from registered buffers ([`fixed`]).
    fixed: Arc<AtomicU64>,
}

impl FileShare {
    pub(crate) fn new() -> FileShare {
        FileShare {
            turn: Tokens::new(1),
            started: Arc::default(),
            fixed: Arc::default(),
        }
    }

    /// Bytes of the file written so far from registered buffers (`WRITE_FIXED`).
    pub(crate) fn written_fixed(&self) -> u64 {
        self.fixed.load(Ordering::Relaxed)
    }

    /// Notes the stretch at `start` as started; returns the stretch to drop, if there are now
    /// more than [`DROP_BEHIND`].
    fn started(&self, start: u64) -> Option<Range<u64>> {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        started.push_back(start);
        if started.len() <= DROP_BEHIND {
            return None;
        }
        started.pop_front().map(|s| s..s + fileop::STRETCH)
    }
}

/// One file open for writing by one worker: a buffered descriptor, and an O_DIRECT one when the
/// sink is direct. Cheap to clone (descriptors are shared).
#[derive(Debug, Clone)]
pub(crate) struct FileSink {
    buffered: File,
    direct: Option<File>,
    /// The bytes go to memory instead ([`super::held`]): no descriptor is written.
    held: Option<Arc<HeldBody>>,
    align: u64,
    splice: bool,
    /// Shared with the other workers' sinks of the file.
    share: FileShare,
}

impl FileSink {
    /// A sink for `kind` writes aligned to `align` bytes (the probe's O_DIRECT offset
    /// alignment; raised to a page), over `buffered`, a descriptor of the file open for reading
    /// and writing, and `direct`, one open with `O_DIRECT` (the direct sink only; the caller
    /// opens both, and checks they are of one file). `share` is the file's, the same for every
    /// sink of it.
    pub(crate) fn new(
        buffered: File,
        direct: Option<File>,
        kind: SinkKind,
        align: u64,
        share: FileShare,
    ) -> FileSink {
        FileSink {
            buffered,
            direct: direct.filter(|_| kind == SinkKind::Direct),
            held: None,
            align: align.max(BUF_ALIGN as u64),
            splice: kind == SinkKind::Splice,
            share,
        }
    }

    /// A sink whose bytes go to `body` in memory; `buffered` (the partial file, left empty)
    /// is only held.
    pub(crate) fn held(buffered: File, body: Arc<HeldBody>, share: FileShare) -> FileSink {
        FileSink {
            buffered,
            direct: None,
            held: Some(body),
            align: BUF_ALIGN as u64,
            splice: false,
            share,
        }
    }

    /// Whether this is a splice sink.
    pub(crate) fn is_splice(&self) -> bool {
        self.splice
    }

    /// The descriptor ranged bodies are spliced into, when this is a splice sink.
    pub(crate) fn splice_target(&self) -> Option<SharedFd<std::fs::File>> {
        self.splice.then(|| self.buffered.to_shared_fd())
    }

    /// Buffers should be cut at file offsets that are multiples of this (1 when any cut will do).
    pub(crate) fn align(&self) -> u64 {
        if self.direct.is_some() { self.align } else { 1 }
    }

    /// Writes all of `buf` at `at`; gives the buffer back with the result. On a buffered sink
    /// a write that completes a stretch starts its writeback and drops an older one; an error
    /// from that older stretch's writeback is this write's.
    pub(crate) async fn write<B: IoBuf>(&mut self, buf: B, at: u64) -> (io::Result<()>, B) {
        if let Some(body) = &self.held {
            return (body.write(buf.as_init(), at), buf);
        }
        let len = buf.buf_len() as u64;
        let (result, buf) = self.write_through(buf, at).await;
        if result.is_err() || self.direct.is_some() {
            return (result, buf);
        }
        match fileop::completed_stretch(at..at + len) {
            Some(stretch) => (self.write_back(stretch).await, buf),
            None => (result, buf),
        }
    }

    async fn write_through<B: IoBuf>(&mut self, buf: B, at: u64) -> (io::Result<()>, B) {
        let len = buf.buf_len() as u64;
        let align = self.align;
        let direct_len = match &self.direct {
            Some(_) if at.is_multiple_of(align) => len / align * align,
            _ => 0,
        };
        // The file's turn first: waiting for it must not hold a pool thread's permit.
        let _turn = if direct_len < len {
            Some(self.share.turn.take().await)
        } else {
            None
        };
        let _permit = super::gate::enter().await;
        let mut buf = buf;
        let fixed = &self.share.fixed;
        if direct_len > 0 {
            let file = self.direct.as_mut().expect("direct descriptor");
            let head = buf.slice(..direct_len as usize);
            let BufResult(r, slice) = fixed::write_all_at(file, head, at, fixed).await;
            buf = slice.into_inner();
            if let Err(e) = r {
                return (Err(e), buf);
            }
        }
        if direct_len < len {
            let rest = buf.slice(direct_len as usize..);
            let BufResult(r, slice) =
                fixed::write_all_at(&mut self.buffered, rest, at + direct_len, fixed).await;
            buf = slice.into_inner();
            if let Err(e) = r {
                return (Err(e), buf);
            }
        }
        (Ok(()), buf)
    }

    /// Starts the writeback of `stretch`, which a write just completed, and drops the stretch
    /// started [`DROP_BEHIND`] before it once it is on the disk. The file's turn is not held:
    /// the next write copies meanwhile.
    async fn write_back(&self, stretch: Range<u64>) -> io::Result<()> {
        let fd = self.buffered.to_shared_fd();
        let _permit = super::gate::enter().await;
        // Only a hint: what fails here fails again, and is reported, at the drop or the fsync.
        if let Err(e) = fileop::start_writeback(fd.clone(), stretch.clone()).await {
            tracing::debug!("starting writeback of {stretch:?} failed: {e}");
        }
        match self.share.started(stretch.start) {
            Some(old) => fileop::drop_behind(fd, old).await,
            None => Ok(()),
        }
    }

    /// Reads `len` bytes at `at` into `buf` (cleared first) for verification: O_DIRECT from an
    /// aligned window when the sink is direct (the bytes left the page cache when written), the
    /// page cache otherwise. `buf` must hold `len` plus two alignment units. Returns the offset
    /// of the wanted bytes inside `buf`.
    pub(crate) async fn read_back(
        &self,
        mut buf: AlignedBuf,
        at: u64,
        len: u64,
    ) -> (io::Result<usize>, AlignedBuf) {
        buf.clear();
        if let Some(body) = &self.held {
            let Ok(n) = usize::try_from(len) else {
                return (Err(io::Error::other("read-back too large")), buf);
            };
            assert!(n <= buf.capacity(), "read-back buffer too small");
            let r = body.read(at, n, |bytes| buf.push_slice(bytes)).map(|()| 0);
            return (r, buf);
        }
        let (file, start, skip, want) = match &self.direct {
            Some(d) => {
                let start = at / self.align * self.align;
                let end = (at + len).next_multiple_of(self.align);
                (d, start, (at - start) as usize, (end - start) as usize)
            }
            None => (&self.buffered, at, 0, len as usize),
        };
        assert!(want <= buf.capacity(), "read-back buffer too small");
        let _permit = super::gate::enter().await;
        let need = skip + len as usize;
        let mut filled = 0;
        while filled < need {
            let BufResult(r, slice) = file
                .read_at(buf.slice(filled..want), start + filled as u64)
                .await;
            buf = slice.into_inner();
            match r {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "file ends at {} while reading back to {}",
                            start + filled as u64,
                            at + len
                        ),
                    );
                    return (Err(e), buf);
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(skip), buf)
    }
}

/// The sink for a file in `dir`: buffered in safe mode or when asked; otherwise O_DIRECT when a
/// probe of `dir` shows it works, buffered (with the reason) when it does not.
pub(crate) fn choose_sink(backend: Backend, asked: Option<SinkKind>, dir: &Path) -> SinkChoice {
    let buffered = |reason: String| SinkChoice {
        kind: SinkKind::Buffered,
        reason,
        align: 1,
        syncfs: None,
    };
    if backend == Backend::Portable {
        match asked {
            Some(SinkKind::Direct) => {
                tracing::warn!("safe mode does not use O_DIRECT; writing through the page cache")
            }
            Some(SinkKind::Splice) => {
                tracing::warn!("safe mode does not splice; writing through the page cache")
            }
            _ => {}
        }
        return buffered("safe mode writes through the page cache".into());
    }
    match asked {
        Some(SinkKind::Buffered) => return buffered("buffered writes were asked for".into()),
        Some(SinkKind::Splice) => {
            let missing = kernel_probes::uring().missing(&[
                kernel_probes::UringOp::Splice,
                kernel_probes::UringOp::PollAdd,
            ]);
            if missing.is_empty() {
                return SinkChoice {
                    kind: SinkKind::Splice,
                    reason: "splice was asked for (socket -> pipe -> file, POLL_ADD linked)".into(),
                    align: 1,
                    syncfs: None,
                };
            }
            let names: Vec<_> = missing.iter().map(|op| op.name()).collect();
            let reason = format!("the kernel lacks io_uring {}", names.join(", "));
            tracing::warn!("{reason}; writing through the page cache instead of splicing");
            return buffered(reason);
        }
        _ => {}
    }
    let probe = kernel_probes::fs::probe_dir(dir);
    match (&probe.o_direct, probe.dio_align) {
        (kernel_probes::Support::Available, align) => {
            let align = align.map_or(4096, |a| u64::from(a.offset.max(a.memory)).max(1));
            SinkChoice {
                kind: SinkKind::Direct,
                reason: format!(
                    "O_DIRECT works on {} ({}), offset alignment {align}",
                    dir.display(),
                    probe.filesystem
                ),
                align,
                syncfs: None,
            }
        }
        (why, _) => {
            let reason = format!("O_DIRECT unavailable on {}: {why}", dir.display());
            if asked == Some(SinkKind::Direct) {
                tracing::warn!("{reason}; writing through the page cache");
            }
            buffered(reason)
        }
    }
}

/// How a file is written: the sink chosen for its directory and why.
#[derive(Debug, Clone)]
pub(crate) struct SinkChoice {
    pub kind: SinkKind,
    pub reason: String,
    /// O_DIRECT offset alignment of the filesystem (used when `kind` is direct).
    pub align: u64,
    /// The filesystem's device when its `syncfs` is a full sync
    /// ([`kernel_probes::fs::full_syncfs`]): the files of a job there may be made durable in
    /// groups (`download/durable.rs`).
    pub syncfs: Option<u64>,
}
