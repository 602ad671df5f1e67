//! HLS streams (RFC 8216): `ferry get URL.m3u8`. A master playlist's variant is chosen
//! ([`VariantChoice`]) with the renditions that go beside it ([`RenditionChoice`]); every segment
//! and init section is fetched over the engine's connections (many in flight, the same retries,
//! stall watchdog, rate limit and proxies as any file), AES-128 segments are decrypted, and the
//! media is written in order: one file per track, or one file per segment (`segments_dir`).
//!
//! Invariants: a segment that could not be fetched or decrypted is a gap, reported by media
//! sequence number ([`Gap`]); with a gap and without [`Options::allow_gaps`] nothing is written
//! under a final name and what was fetched and written is kept for the next run. Outputs appear
//! only complete and durable (grown in a work folder beside the output, `OUTPUT.ferry-hls/`,
//! fsynced, renamed into place). Segments land in that folder (named by a hash of their URL,
//! never by a name from the playlist) and are appended to the outputs in order as they land,
//! then removed; checkpoints record how far each output got, so a run that stops (a crash,
//! `kill -9`, Ctrl-C) is resumed by the same command, which fetches only what is missing. Keys
//! stay in memory, never on disk.
//!
//! A live playlist (no `EXT-X-ENDLIST`) is recorded: loaded again as RFC 8216 section 6.3.4
//! says, its new segments fetched as they appear, until it ends, [`Options::duration`], an
//! interrupt or [`Options::live_timeout`]; segments that left the window unseen are gaps, and a
//! recording is written even with gaps (they cannot come back), still reported. SAMPLE-AES and
//! DRM key formats are refused (`playlist.rs`).

mod assemble;
mod crypt;
mod fetch;
pub(crate) mod playlist;
pub(crate) mod select;
mod track;
mod vtt;
mod writer;

use std::path::PathBuf;

use serde::Serialize;

pub use fetch::download;
pub use select::{RenditionChoice, VariantChoice};

use crate::error::{ErrorKind, GetError};

/// What to download from a stream, and how to write it.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Options {
    /// Which variant of a master playlist.
    pub variant: VariantChoice,
    /// Which of its audio and subtitle renditions are written beside it.
    pub renditions: RenditionChoice,
    /// Write each segment (decrypted) as its own file in this directory instead of one file per
    /// track: `MSN.EXT`, init sections as `init-N.EXT`, renditions in a subdirectory each.
    pub segments_dir: Option<PathBuf>,
    /// Write the outputs even when segments are missing (they are still reported).
    pub allow_gaps: bool,
    /// Live: stop recording after this much media.
    pub duration: Option<std::time::Duration>,
    /// Live: stop when the playlist has not changed for this long (default 120 s).
    pub live_timeout: Option<std::time::Duration>,
    /// Bytes of segments held in memory between their download and their writing (default
    /// 256 MiB; a segment larger than a quarter of it, or one that does not fit, goes through
    /// a file in the work folder; 0: every segment does).
    pub memory: Option<u64>,
}

/// Segments missing from an output: media sequence numbers `first..=last`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[non_exhaustive]
pub struct Gap {
    /// The first missing media sequence number.
    pub first: u64,
    /// The last missing media sequence number.
    pub last: u64,
    /// Their duration, from `EXTINF`.
    pub seconds: f64,
    /// Why they are missing.
    pub reason: String,
}

/// One track of a stream: the variant, or a rendition beside it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TrackReport {
    /// `main`, `audio` or `subtitles`.
    pub kind: String,
    /// The rendition's `NAME` (or `LANGUAGE`); empty for the main track.
    pub name: String,
    /// The media playlist's URL.
    pub playlist: String,
    /// The files written: one, or one per init section (an `EXT-X-MAP` change starts a new
    /// file, so no file holds two init sections); the segments directory with
    /// [`Options::segments_dir`]. Empty when nothing was written.
    pub outputs: Vec<PathBuf>,
    /// Segments in the playlist.
    pub segments: u64,
    /// Segments decrypted (AES-128).
    pub decrypted: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Seconds of media written.
    pub seconds: f64,
    /// Segments missing, by media sequence number.
    pub gaps: Vec<Gap>,
}

/// What a stream download did ([`download`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HlsReport {
    /// The URL asked for.
    pub url: String,
    /// The chosen variant (rate, resolution, codecs), for a master playlist.
    pub variant: Option<String>,
    /// The tracks written, the main one first.
    pub tracks: Vec<TrackReport>,
    /// Distinct resources (segments, init sections) the tracks need.
    pub resources: u64,
    /// Resources already fetched by an earlier run and kept.
    pub kept: u64,
    /// Bytes fetched by this run.
    pub fetched_bytes: u64,
    /// Keys fetched (each once).
    pub keys: u64,
    /// Resources that went from the network to the outputs in memory (the others went
    /// through a file in the work folder).
    pub in_memory: u64,
    /// The most bytes held in memory at once (at most [`Options::memory`]).
    pub memory_peak: u64,
    /// For a live stream, why the recording stopped (`EXT-X-ENDLIST`, `--duration`, an
    /// interrupt, a playlist that stopped changing).
    pub live: Option<String>,
    /// Seconds from the first request to the outputs in place.
    pub seconds: f64,
    /// The back-end the segments were fetched on.
    pub backend: crate::backend::Backend,
    /// What the playlists break that ferry worked around.
    pub warnings: Vec<String>,
}

impl HlsReport {
    /// Every gap of every track.
    pub fn gaps(&self) -> impl Iterator<Item = (&TrackReport, &Gap)> {
        self.tracks
            .iter()
            .flat_map(|t| t.gaps.iter().map(move |g| (t, g)))
    }
}

/// Why a stream download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HlsError {
    /// Bad input: an option or URL that cannot work.
    #[error("{0}")]
    Usage(String),
    /// A playlist that cannot be used (named, with the reason and its line).
    #[error("{url}: {what}")]
    Playlist {
        /// The playlist's URL.
        url: String,
        /// What is wrong.
        what: String,
    },
    /// A playlist could not be fetched.
    #[error("{url}: {detail}")]
    Remote {
        /// The playlist's URL.
        url: String,
        /// What happened.
        detail: String,
    },
    /// Segments are missing; nothing was written under a final name (unless
    /// [`Options::allow_gaps`]), and a run of the same command fetches only what is missing.
    #[error("{}", gaps_message(.0))]
    Gaps(Box<HlsReport>),
    /// A local file or folder could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The engine refused the job as a whole.
    #[error(transparent)]
    Get(#[from] GetError),
    /// Another ferry is downloading to the same output (it holds the work folder's lock).
    #[error("{}: another ferry is downloading to the same output", path.display())]
    Busy {
        /// The work folder.
        path: PathBuf,
    },
    /// Stopped by an interrupt; what was fetched is kept for the next run.
    #[error("interrupted; the segments fetched so far are kept, run the same command to resume")]
    Interrupted,
}

impl HlsError {
    /// Whose fault it is, as [`GetError::kind`] says.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HlsError::Usage(_) => ErrorKind::Usage,
            HlsError::Playlist { .. } | HlsError::Remote { .. } | HlsError::Gaps(_) => {
                ErrorKind::Remote
            }
            HlsError::Io { .. } => ErrorKind::Local,
            HlsError::Busy { .. } => ErrorKind::Busy,
            HlsError::Get(e) => e.kind(),
            HlsError::Interrupted => ErrorKind::Interrupted,
        }
    }
}

fn gaps_message(report: &HlsReport) -> String {
    let gaps: Vec<String> = report
        .gaps()
        .map(|(t, g)| {
            let track = if t.kind == "main" {
                String::new()
            } else {
                format!("{} {:?} ", t.kind, t.name)
            };
            let msn = if g.first == g.last {
                format!("segment {}", g.first)
            } else {
                format!("segments {}-{}", g.first, g.last)
            };
            format!("{track}{msn} ({:.1} s): {}", g.seconds, g.reason)
        })
        .collect();
    format!(
        "{} missing: {}; nothing written (the segments fetched are kept: run again to retry, or add --allow-gaps to write the output without them)",
        if gaps.len() == 1 {
            "a stretch is"
        } else {
            "stretches are"
        },
        gaps.join("; ")
    )
}
