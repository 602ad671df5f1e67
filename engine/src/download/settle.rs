//! The end of a file, run by the last lane to leave it: the hash checked (a mismatch fetches
//! the file again, once), the file made durable (`durable.rs`), renamed to its final name and
//! marked as verified; or, on failure, its partial file kept for a resume or removed.
//!
//! Invariants: nothing is renamed into place before every byte was written, hashed when a
//! digest was given, and made durable; what becomes of a failed file's partial is decided in
//! `proto/file.rs`. Not here: the job's directory fsyncs (`lanes.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::file::FileDownload;
use crate::error::GetError;
use crate::proto::file::{OnMismatch, PartialFate, on_mismatch, partial_fate};
use crate::report::{HashReport, Report};
use crate::verify::{Checksum, HashStats};

/// What the last lane to leave a file does with it.
pub(super) enum Settled {
    /// The file is durable under its final name, or failed (and nothing is under its name).
    Done(Box<Result<Report, GetError>>),
    /// Its sha256 did not match: fetch it again.
    Again,
}

/// Settles a file once no lane works on it any more: checks the hash, makes it durable, or
/// cleans up after a failure.
pub(super) async fn settle(file: &Arc<FileDownload>) -> Settled {
    if let Some((retries, splits)) = file.with_plan(|p| (p.retries(), p.splits())) {
        file.retries
            .fetch_add(u64::from(retries), Ordering::Relaxed);
        file.splits.fetch_add(splits, Ordering::Relaxed);
    }
    let result = verify(file).await;
    let result = match result {
        Ok(Verified::Mismatch) => return Settled::Again,
        Ok(Verified::Ok(hash)) => finish(file, hash).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        // A held body's share of the budget comes back at once.
        file.held.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
    let journaled = file.journal_id.load(Ordering::Relaxed) != 0;
    match partial_fate(&result, journaled) {
        PartialFate::Published | PartialFate::LeaveAlone => {}
        PartialFate::KeepForResume => file.partial.release(),
        PartialFate::Discard => {
            file.journal_fresh();
            file.partial.discard();
        }
    }
    Settled::Done(Box::new(result))
}

enum Verified {
    Ok(Option<(Checksum, HashStats)>),
    Mismatch,
}

async fn verify(file: &FileDownload) -> Result<Verified, GetError> {
    // Every lane is done: dropping the last waker lets the read-back task finish.
    let verifier = file
        .verify
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .map(|(v, _)| v);
    let read_back = file
        .read_back
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(rx) = read_back {
        match rx.recv_async().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => file.fail(e),
            Err(_) => file.fail(GetError::EngineStopped),
        }
    }
    if let Some(e) = file.take_error() {
        return Err(e);
    }
    if file.progress.interrupted()
        && file.done.load(Ordering::Relaxed) != file.total.load(Ordering::Relaxed)
    {
        // The lanes stopped early (an unknown size never equals the bytes written).
        return Err(GetError::Interrupted);
    }
    let Some(verifier) = verifier else {
        return Ok(Verified::Ok(None));
    };
    let total = file.total.load(Ordering::Relaxed);
    if verifier.prefix() != total {
        return Err(GetError::Io {
            op: "verify",
            path: file.incomplete.clone(),
            source: std::io::Error::other(format!("hashed {} of {total} bytes", verifier.prefix())),
        });
    }
    let (got, stats) = verifier.finish();
    let expected = file.checksum.expect("hashing only with a digest");
    if got == expected {
        return Ok(Verified::Ok(Some((got, stats))));
    }
    let fetch = file.fetches.load(Ordering::Relaxed);
    if on_mismatch(fetch) == OnMismatch::Fail {
        return Err(GetError::ChecksumMismatch {
            url: file.target().display.clone(),
            algorithm: expected.algorithm(),
            expected: expected.to_string(),
            got: got.to_string(),
            attempts: fetch,
        });
    }
    tracing::warn!(
        url = %file.target().display,
        %expected,
        %got,
        "checksum mismatch; fetching the file again"
    );
    Ok(Verified::Mismatch)
}

/// Makes the file durable and gives it its final name. The directory entry is made durable
/// by the job, once per directory, when the job ends.
async fn finish(
    file: &FileDownload,
    hash: Option<(Checksum, HashStats)>,
) -> Result<Report, GetError> {
    let total = file.total.load(Ordering::Relaxed);
    let done = file.done.load(Ordering::Relaxed);
    if total != done {
        return Err(GetError::ShortBody {
            url: file.target().display.clone(),
            offset: 0,
            expected: total,
            received: done,
        });
    }
    let held = file.held.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (held.and_then(|b| b.take()), &file.hold) {
        (Some(body), Some(holding)) => {
            // Held in memory: handed over whole; the partial file was never written.
            file.partial.discard();
            holding.land(file.output.clone(), body);
        }
        _ => {
            // The file was truncated when created and grew by exactly the bytes counted in
            // `done`.
            let durable = file.open_file().await?;
            if !file.scratch {
                file.settings
                    .durable
                    .commit(&durable, file.sink.syncfs)
                    .await
                    .map_err(|source| file.io_error("fsync", source))?;
            }
            file.partial.publish().map_err(|source| GetError::Io {
                op: "rename",
                path: file.output.clone(),
                source,
            })?;
            if let Some((digest, _)) = &hash {
                // After the rename: the mark must be the inode's last change (see
                // `verify::mark`). It is not made durable; lost in a crash, it only costs a hash.
                crate::verify::mark::set(&durable, digest);
            }
        }
    }
    let seconds = file.started.elapsed().as_secs_f64();
    let (sink, sink_reason) = file.sink_used();
    Ok(Report {
        url: file.sources[0].origin.display.clone(),
        path: file.output.clone(),
        bytes: total,
        seconds,
        gb_per_s: if seconds > 0.0 {
            total as f64 / seconds / 1e9
        } else {
            0.0
        },
        backend: file.settings.backend,
        backend_reason: file.settings.backend_reason.clone(),
        threads: file.settings.threads,
        connections: file.used_connections.load(Ordering::Relaxed) as usize,
        connections_open: file.progress.crowd.target(),
        ranged: file
            .plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some(),
        url_final: file.sources[0].redirected.get().map(|t| t.display.clone()),
        sink,
        sink_reason,
        verified: hash.map(|(digest, stats)| HashReport {
            algorithm: digest.algorithm(),
            digest: digest.to_string(),
            from_memory: stats.from_memory,
            read_back: stats.read_back,
        }),
        fetches: file.fetches.load(Ordering::Relaxed),
        resumed: file.resumed_bytes.load(Ordering::Relaxed),
        retries: file.retries.load(Ordering::Relaxed),
        splits: file.splits.load(Ordering::Relaxed),
        pipelined: file.pipelined.load(Ordering::Relaxed),
        http2: file.http2.load(Ordering::Relaxed),
        http3: file.http3.load(Ordering::Relaxed),
        quic: file.sources[0].origin.dialer.quic_report(),
        hedged: file.hedged.load(Ordering::Relaxed),
        written_fixed: file.sink_share.written_fixed(),
        endpoints: file.endpoint_report(),
    })
}
