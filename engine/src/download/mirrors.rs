//! A file's sources (the URL asked for, then its mirrors) and the file's side of choosing
//! among them: which source a lane asks next, what a failure does to a source, and what each
//! served. The choice itself, from the job's view of each endpoint, is sans-IO
//! (`proto/sources.rs`).
//!
//! Invariant: a source refused for this file (an answer no retry cures) is never asked for it
//! again; its endpoint may still serve other files.

use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::file::FileDownload;
use crate::error::GetError;
use crate::net::target::Target;
use crate::proto::retry::{self, Verdict};
use crate::proto::sources::EndpointReport;

/// One place a file's bytes come from: the URL asked for, or a mirror of it.
pub(super) struct Source {
    /// The URL as given.
    pub(super) origin: Target,
    /// The URL after redirects, set once they were followed.
    pub(super) redirected: OnceLock<Target>,
    /// Its endpoint's id in the job's [`Endpoints`].
    pub(super) endpoint: usize,
    /// Bytes of this file it served.
    pub(super) served: AtomicU64,
    /// Set when it answered this file with what no retry cures (a mirror without the file, a
    /// certificate that does not verify): it is not asked for this file again.
    pub(super) refused: AtomicBool,
}

impl Source {
    /// Where its requests go: the URL after redirects.
    pub(super) fn target(&self) -> &Target {
        self.redirected.get().unwrap_or(&self.origin)
    }

    /// Its endpoint, as shown and as the job keys it: `scheme://host:port`.
    pub(super) fn label(&self) -> String {
        self.origin.url.origin().ascii_serialization()
    }

    /// The error for a body of `range` from here that stopped at `at`.
    pub(super) fn short_body(&self, range: &Range<u64>, at: u64) -> GetError {
        GetError::ShortBody {
            url: self.target().display.clone(),
            offset: range.start,
            expected: range.end - range.start,
            received: at - range.start,
        }
    }
}

impl FileDownload {
    /// The endpoint ids of the sources still asked for this file, and their source indices.
    pub(super) fn candidates(&self) -> (Vec<usize>, Vec<usize>) {
        self.sources
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.refused.load(Ordering::Relaxed))
            .map(|(i, s)| (s.endpoint, i))
            .unzip()
    }

    /// The source lane `lane` asks next (see [`Endpoints::pick`]).
    pub(super) fn pick(&self, lane: usize) -> usize {
        if self.sources.len() == 1 {
            return 0;
        }
        let (endpoints, indices) = self.candidates();
        if indices.is_empty() {
            return 0;
        }
        indices[self.endpoints.pick(&endpoints, lane, Instant::now())]
    }

    /// A request to source `src` failed with `error`: with mirrors, its endpoint is put aside
    /// for a while, and for an error no retry cures the source is not asked for this file
    /// again. `Some(next)`: another source can be asked at once (the endpoint to name).
    pub(super) fn source_failed(&self, src: usize, error: &GetError) -> Option<String> {
        if self.sources.len() == 1 {
            return None;
        }
        let now = Instant::now();
        let source = &self.sources[src];
        if matches!(retry::for_error(error), Verdict::Fail) {
            // This source cannot give this file; its endpoint may be fine for others.
            source.refused.store(true, Ordering::Relaxed);
        } else {
            self.endpoints.failed(source.endpoint, now);
        }
        let (_, indices) = self.candidates();
        indices
            .into_iter()
            .find(|&i| i != src && self.endpoints.usable(self.sources[i].endpoint, now))
            .map(|i| self.sources[i].label())
    }

    /// With mirrors: the bytes of this file each endpoint served, with the job's failures and
    /// demotions.
    pub(super) fn endpoint_report(&self) -> Vec<EndpointReport> {
        if self.sources.len() == 1 {
            return Vec::new();
        }
        let job = self.endpoints.report();
        self.sources
            .iter()
            .map(|s| EndpointReport {
                bytes: s.served.load(Ordering::Relaxed),
                ..job[s.endpoint].clone()
            })
            .collect()
    }

    /// `bytes` of this file came from source `src` in `elapsed` of reading (waits for buffers
    /// and disk not counted: they are ours, not the endpoint's); `complete` when the whole
    /// range arrived (only those measure the endpoint's throughput).
    pub(super) fn count_served(&self, src: usize, bytes: u64, elapsed: Duration, complete: bool) {
        let source = &self.sources[src];
        source.served.fetch_add(bytes, Ordering::Relaxed);
        if self.sources.len() == 1 {
            return;
        }
        if !complete {
            self.endpoints.partial(source.endpoint, bytes);
        } else if let Some(line) = self.endpoints.served(source.endpoint, bytes, elapsed) {
            tracing::warn!("{line}");
        }
    }
}
