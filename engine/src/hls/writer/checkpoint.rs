//! The writer's checkpoints: what a run records of each track once its outputs are fsynced
//! (`state`, replaced atomically), how a later run takes up from it, and what a stopped run
//! keeps (the resource files made durable, listed). Not here: the writing itself (the parent).

use std::io::{Seek, SeekFrom};
use std::sync::Arc;
use std::time::Instant;

use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};

use super::{Saved, Writer, part_name};
use crate::hls::HlsError;
use crate::hls::assemble::Resources;
use crate::hls::track::Track;

/// The checkpoint's name in the work folder.
const STATE: &str = "state";

#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    /// What the tracks were when it was taken: a different playlist starts over.
    fingerprint: String,
    tracks: Vec<Saved>,
    /// Resource files made durable when the run stopped ([`Writer::keep`]): the only ones a
    /// later run trusts. Resource files are scratch files (not fsynced as they land), so one
    /// left by a crash may have lost its bytes.
    #[serde(default)]
    kept: Vec<String>,
}

/// What the tracks are, for a checkpoint: one taken of other playlists is not taken up.
pub(super) fn fingerprint(tracks: &[Track]) -> String {
    tracks
        .iter()
        .map(|t| {
            let s = &t.media.segments;
            format!(
                "{} {} {} {}",
                t.asked,
                s.len(),
                s.first().map_or(0, |s| s.msn),
                s.last().map_or("", |s| s.uri.as_str())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Writer {
    /// Takes up where an earlier run's checkpoint left off: each part cut back to the length
    /// it recorded. A checkpoint for other playlists, or whose parts are shorter than it says,
    /// is dropped and the tracks start over.
    pub(super) fn resume(&mut self) -> Result<(), HlsError> {
        let Ok(text) = self
            .work
            .open_std(STATE.as_ref(), OFlags::RDONLY)
            .and_then(|mut f| {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut f, &mut s).map(|_| s)
            })
        else {
            return Ok(());
        };
        let saved: Checkpoint = match serde_json::from_str(&text) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    "the checkpoint of an earlier run is unreadable ({e}); starting over"
                );
                return Ok(());
            }
        };
        self.trusted = saved.kept.clone();
        if saved.fingerprint != self.fingerprint || saved.tracks.len() != self.tracks.len() {
            tracing::warn!("the playlist changed since the earlier run; starting over");
            return Ok(());
        }
        let mut opened = Vec::new();
        for (t, s) in saved.tracks.iter().enumerate() {
            if self.tracks[t].seg_dir.is_some() || s.parts == 0 {
                opened.push(None);
                continue;
            }
            let name = part_name(t, s.parts);
            let file = self
                .work
                .open_std(&name, OFlags::RDWR)
                .ok()
                .and_then(|mut f| {
                    let len = f.metadata().ok()?.len();
                    (len >= s.len).then_some(())?;
                    f.set_len(s.len).ok()?;
                    f.seek(SeekFrom::Start(s.len)).ok()?;
                    Some(f)
                });
            match file {
                Some(f) => opened.push(Some(f)),
                None => {
                    tracing::warn!(
                        "{}: shorter than the checkpoint says; starting over",
                        self.work.join(&name).display()
                    );
                    return Ok(());
                }
            }
        }
        for ((track, s), file) in self.tracks.iter_mut().zip(saved.tracks).zip(opened) {
            self.resumed += s.next as u64;
            track.part = file;
            if s.maps_written.len() == track.saved.maps_written.len() {
                track.saved = s;
            } else {
                track.saved = Saved {
                    maps_written: track.saved.maps_written.clone(),
                    ..s
                };
            }
        }
        if self.resumed > 0 {
            tracing::info!(
                "resuming: {} segments were written by an earlier run",
                self.resumed
            );
        }
        Ok(())
    }

    /// Whether a resource file found in the work folder was made durable by an earlier run.
    pub(in crate::hls) fn trusts(&self, name: &std::ffi::OsStr) -> bool {
        self.trusted.iter().any(|t| std::ffi::OsStr::new(t) == name)
    }

    /// Makes what was written durable, records it, then removes the resource files it covers.
    pub(super) fn checkpoint(&mut self) -> Result<(), HlsError> {
        self.checkpoint_keeping(Vec::new())
    }

    pub(super) fn checkpoint_keeping(&mut self, kept: Vec<String>) -> Result<(), HlsError> {
        let started = Instant::now();
        for (t, out) in self.tracks.iter().enumerate() {
            if let Some(f) = &out.part {
                f.sync_data().map_err(|source| HlsError::Io {
                    path: self.work.join(&part_name(t, out.saved.parts)),
                    source,
                })?;
            }
        }
        let c = Checkpoint {
            fingerprint: self.fingerprint.clone(),
            tracks: self.tracks.iter().map(|t| t.saved.clone()).collect(),
            kept,
        };
        let text = serde_json::to_vec(&c).map_err(|e| HlsError::Io {
            path: self.work.join(STATE.as_ref()),
            source: std::io::Error::other(e),
        })?;
        self.work
            .write_atomic(STATE.as_ref(), &text)
            .map_err(|source| HlsError::Io {
                path: self.work.join(STATE.as_ref()),
                source,
            })?;
        for name in self.unlink.drain(..) {
            let _ = self.work.unlink(&name);
        }
        tracing::trace!(
            "checkpoint of {} bytes in {:.3} s",
            self.since,
            started.elapsed().as_secs_f64()
        );
        self.since = 0;
        self.at = Instant::now();
        Ok(())
    }

    /// Stops writing: what was written, and the resource files fetched but not yet written,
    /// are made durable (one `syncfs`) and recorded for the next run.
    pub(in crate::hls) fn keep(mut self, resources: &Resources) -> Result<(), HlsError> {
        // Bodies held in memory and not written yet become files, so that they are kept too.
        let landed = self
            .holding
            .drain()
            .into_iter()
            .filter_map(|(path, body)| Some((path.file_name()?.to_owned(), Arc::new(body))));
        for (name, body) in self.held.drain().chain(landed) {
            let io = |source| HlsError::Io {
                path: self.work.join(&name),
                source,
            };
            let (tmp, mut f) = self.work.create_temp(&name).map_err(io)?;
            std::io::Write::write_all(&mut f, &body)
                .and_then(|()| self.work.rename(&tmp, &name))
                .map_err(io)?;
        }
        rustix::fs::syncfs(self.work.as_fd()).map_err(|e| HlsError::Io {
            path: self.work.path().to_path_buf(),
            source: e.into(),
        })?;
        let unlinking = std::mem::take(&mut self.unlink);
        let kept = resources
            .list
            .iter()
            .filter(|r| !unlinking.contains(&r.name))
            .filter(|r| matches!(self.work.stat(&r.name), Ok(Some(_))))
            .map(|r| r.name.to_string_lossy().into_owned())
            .collect();
        self.unlink = unlinking;
        self.checkpoint_keeping(kept)
    }
}
