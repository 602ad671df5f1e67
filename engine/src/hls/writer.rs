//! The outputs, written while the segments download: each track's segments appended in
//! playlist order as soon as each one and those before it have landed, the init section in
//! force first, AES-128 decrypted; each segment's file in the work folder removed once it is
//! written and a checkpoint covers it, so the disk holds about one copy of the stream.
//!
//! Invariants:
//! - An output holds at most one init section: an `EXT-X-MAP` change starts the next file,
//!   `NAME.partN.EXT`.
//! - A segment that cannot be read or decrypted leaves no byte in an output (the file is cut
//!   back to where it began). It is a gap: skipped when gaps are allowed (or live), else the
//!   track stops there, so that a later run can fill it in place.
//! - Outputs grow in the work folder (`tT.pP`) and are renamed into place only by
//!   [`Writer::publish`]. A checkpoint (`state`, replaced atomically after the outputs are
//!   fsynced) records how far each track got; a run stopped at any moment resumes from it, the
//!   bytes past it cut off.
//! - With a segments folder, each segment is its own file, renamed into place when written.
//! - No name from a playlist becomes a path (rendition names are reduced to `[A-Za-z0-9_-]`).
//!
//! Not here: fetching (`fetch.rs`), the bytes of one segment (`assemble.rs`).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};
use url::Url;

use super::assemble::{KeySource, Resources, Src, append, copy, extension, push_gap, read, safe};
use super::fetch::State;
use super::playlist::ByteRange;
use super::track::Track;
use super::vtt::VttMerge;
use super::{Gap, HlsError, TrackReport};
use crate::backend::fileop::{self, STRETCH};
use crate::backend::held::{Held, Holding};
use crate::backend::nofollow::Dir;
use crate::backend::sink::DROP_BEHIND;

mod checkpoint;

use checkpoint::fingerprint;

/// Segments held in memory between their download and their writing, at most, by default
/// (more land in the work folder as files).
pub(super) const DEFAULT_MEMORY: u64 = 256 << 20;
/// The largest subtitle segment read (they are read whole, to be merged).
const MAX_SUBTITLE_SEGMENT: u64 = 16 << 20;
/// A checkpoint at least this often, in bytes written...
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// ...or in time.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Where the outputs go.
pub(super) struct OutputPlan {
    pub dir: Dir,
    pub stem: String,
    pub file: OsString,
    pub segments: Option<Dir>,
}

impl OutputPlan {
    pub(super) fn new(
        dir: &Dir,
        file: &OsString,
        segments: Option<&Path>,
    ) -> Result<OutputPlan, HlsError> {
        let segments = match segments {
            None => None,
            Some(p) => {
                let io = |source| HlsError::Io {
                    path: p.to_path_buf(),
                    source,
                };
                std::fs::create_dir_all(p).map_err(io)?;
                Some(Dir::open(p).map_err(io)?)
            }
        };
        let name = file.to_string_lossy();
        let stem = match name.rsplit_once('.') {
            Some((s, _)) if !s.is_empty() => s.to_string(),
            _ => name.to_string(),
        };
        Ok(OutputPlan {
            dir: dir.clone(),
            stem,
            file: file.clone(),
            segments,
        })
    }
}

/// What a checkpoint keeps of a track.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    next: usize,
    parts: usize,
    len: u64,
    map_in_file: Option<usize>,
    maps_written: Vec<bool>,
    decrypted: u64,
    bytes: u64,
    seconds: f64,
    gaps: Vec<Gap>,
    /// A WebVTT subtitle track's merge ([`VttMerge`]).
    #[serde(default)]
    vtt: Option<VttMerge>,
}

/// One track being written.
struct TrackOut {
    label: String,
    ext: String,
    saved: Saved,
    /// The part being written, in the work folder.
    part: Option<File>,
    seg_dir: Option<Dir>,
    /// Stopped at a gap that a later run may fill: why (not saved, since that run retries it).
    stopped: Option<String>,
    /// The part's stretches whose writeback was started, oldest first (see [`Writer::write_back`]).
    started: VecDeque<u64>,
}

/// Every track's output, written as the segments land.
pub(super) struct Writer {
    work: Dir,
    plan: OutputPlan,
    tracks: Vec<TrackOut>,
    fingerprint: String,
    skip_gaps: bool,
    since: u64,
    at: Instant,
    /// Resource files written and covered by the next checkpoint, to be removed after it.
    unlink: Vec<OsString>,
    /// Segments written by an earlier run (from its checkpoint).
    pub resumed: u64,
    /// The resource files an earlier run made durable and listed.
    trusted: Vec<String>,
    /// Where the engine hands over the resources it kept in memory...
    holding: Arc<Holding>,
    /// ...and those taken from it, by file name, until their last use.
    held: HashMap<OsString, Arc<Held>>,
}

fn part_name(track: usize, part: usize) -> OsString {
    format!("t{track}.p{part}").into()
}

impl Writer {
    /// A writer for `tracks`, resuming from the checkpoint in `work` when it is for the same
    /// playlists (`resume`: a VOD stream), taking segments held in up to `memory` bytes.
    pub(super) fn new(
        tracks: &[Track],
        work: &Dir,
        plan: OutputPlan,
        skip_gaps: bool,
        resume: bool,
        memory: u64,
    ) -> Result<Writer, HlsError> {
        let fingerprint = fingerprint(tracks);
        let mut labels: Vec<String> = Vec::new();
        let mut outs = Vec::new();
        for track in tracks {
            let label = if track.kind == "main" {
                String::new()
            } else {
                let base = format!("{}-{}", track.kind, safe(&track.name));
                let mut label = base.clone();
                let mut n = 2;
                while labels.contains(&label) {
                    label = format!("{base}{n}");
                    n += 1;
                }
                labels.push(label.clone());
                label
            };
            let seg_dir = match &plan.segments {
                Some(d) if track.kind == "main" => Some(d.clone()),
                Some(d) => {
                    Some(
                        d.beneath(Path::new(&label), true)
                            .map_err(|source| HlsError::Io {
                                path: d.join(label.as_ref()),
                                source,
                            })?,
                    )
                }
                None => None,
            };
            let ext = extension(track.media.segments.first().map(|s| &s.uri));
            let vtt = (track.kind == "subtitles" && matches!(ext.as_str(), "vtt" | "webvtt"))
                .then(VttMerge::default);
            outs.push(TrackOut {
                ext,
                label,
                saved: Saved {
                    maps_written: vec![false; track.media.maps.len()],
                    vtt,
                    ..Saved::default()
                },
                part: None,
                seg_dir,
                stopped: None,
                started: VecDeque::new(),
            });
        }
        let mut w = Writer {
            work: work.clone(),
            plan,
            tracks: outs,
            fingerprint,
            skip_gaps,
            since: 0,
            at: Instant::now(),
            unlink: Vec::new(),
            resumed: 0,
            trusted: Vec::new(),
            holding: Holding::new(memory),
            held: HashMap::new(),
        };
        if resume {
            w.resume()?;
        }
        Ok(w)
    }

    /// Where the engine may hand over resources in memory ([`crate::GetItem`]'s `hold`).
    pub(super) fn holding(&self) -> Arc<Holding> {
        Arc::clone(&self.holding)
    }

    /// Resources handed over in memory, and the most bytes held at once.
    pub(super) fn memory_use(&self) -> (u64, u64) {
        (self.holding.count(), self.holding.peak())
    }

    /// Track `t` forgot its first `n` segments (all written): its next moves back by that.
    pub(super) fn forget(&mut self, t: usize, n: usize) {
        let next = &mut self.tracks[t].saved.next;
        *next = next.saturating_sub(n);
    }

    /// Where each track stands: the next segment to write.
    pub(super) fn next(&self, track: usize) -> usize {
        self.tracks[track].saved.next
    }

    /// Writes what can be written now. `last`: the fetching is over, so a segment whose
    /// resource is not in is a gap (or, after an interrupt, the end).
    pub(super) fn advance(
        &mut self,
        tracks: &[Track],
        resources: &Resources,
        keys: &mut KeySource,
        last: bool,
    ) -> Result<(), HlsError> {
        for (t, track) in tracks.iter().enumerate() {
            self.advance_track(t, track, resources, keys, last)?;
        }
        let written = self.since > 0 || !self.unlink.is_empty();
        if written
            && (self.since >= CHECKPOINT_BYTES || self.at.elapsed() >= CHECKPOINT_EVERY || last)
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn advance_track(
        &mut self,
        t: usize,
        track: &Track,
        resources: &Resources,
        keys: &mut KeySource,
        last: bool,
    ) -> Result<(), HlsError> {
        let media = &track.media;
        while self.tracks[t].stopped.is_none() && self.tracks[t].saved.next < media.segments.len() {
            let seg = &media.segments[self.tracks[t].saved.next];
            let why = if seg.gap {
                Some("the playlist marks it EXT-X-GAP".to_string())
            } else {
                match self.ready(&seg.uri, seg.range, resources) {
                    Ready::Yes => None,
                    Ready::Failed(why) => Some(why),
                    Ready::NotYet if last => Some(format!("{} was not fetched", seg.uri)),
                    Ready::NotYet => return Ok(()),
                }
            };
            let why = match (why, seg.map) {
                (None, Some(m)) => {
                    match self.ready(&media.maps[m].uri, media.maps[m].range, resources) {
                        Ready::Yes => None,
                        Ready::Failed(why) => Some(format!("its init section: {why}")),
                        Ready::NotYet if last => Some("its init section was not fetched".into()),
                        Ready::NotYet => return Ok(()),
                    }
                }
                (why, _) => why,
            };
            let at = (self.tracks[t].saved.parts, self.tracks[t].saved.len);
            let written = match why {
                Some(why) => Err(why),
                None => self.write_segment(t, track, resources, keys),
            };
            match written {
                Ok(()) => self.write_back(t, at)?,
                Err(why) if self.skip_gaps => {
                    tracing::warn!("segment {} missing: {why}", seg.msn);
                    push_gap(&mut self.tracks[t].saved.gaps, seg.msn, seg.duration, why);
                }
                Err(why) => {
                    tracing::warn!("segment {} missing: {why}", seg.msn);
                    self.tracks[t].stopped = Some(why);
                    return Ok(());
                }
            }
            self.tracks[t].saved.next += 1;
            if !seg.gap
                && let Some(r) = resources.find(&seg.uri, seg.range)
                && resources.last_use(&seg.uri, seg.range)
                    == Some((t, self.tracks[t].saved.next - 1))
                && matches!(r.state, State::Kept | State::Fetched | State::Pending)
            {
                self.held.remove(&r.name);
                self.unlink.push(r.name.clone());
            }
            if self.since >= CHECKPOINT_BYTES {
                self.checkpoint()?;
            }
        }
        Ok(())
    }

    /// After a write to track `t`'s part that began at `from` (part, length): starts the
    /// writeback of each [`STRETCH`] the write completed, and drops from the page cache the one
    /// started [`DROP_BEHIND`] before it (waiting for it to be on the disk). Outputs so stay a
    /// few stretches in the page cache however long the stream, and a checkpoint's fsync
    /// finds little still dirty: it does not stop the writing for long.
    fn write_back(&mut self, t: usize, from: (usize, u64)) -> Result<(), HlsError> {
        let out = &mut self.tracks[t];
        let Some(f) = &out.part else {
            return Ok(());
        };
        let start = if from.0 == out.saved.parts { from.1 } else { 0 };
        let fd = std::os::fd::AsFd::as_fd(f);
        for s in start / STRETCH..out.saved.len / STRETCH {
            let stretch = s * STRETCH..(s + 1) * STRETCH;
            // Only a hint: what fails here fails again at the drop or the fsync.
            if let Err(e) = fileop::start_writeback_now(fd, stretch.clone()) {
                tracing::debug!("starting writeback of {stretch:?} failed: {e}");
            }
            out.started.push_back(stretch.start);
            if out.started.len() > DROP_BEHIND
                && let Some(old) = out.started.pop_front()
            {
                fileop::drop_behind_now(fd, old..old + STRETCH).map_err(|source| HlsError::Io {
                    path: self.work.join(&part_name(t, out.saved.parts)),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Whether the resource at `url` is in, in memory or in the work folder.
    fn ready(&self, url: &Url, range: Option<ByteRange>, resources: &Resources) -> Ready {
        match resources.find(url, range).map(|r| (&r.state, &r.name)) {
            None => Ready::Failed(format!("{url} was not fetched")),
            Some((State::Kept | State::Fetched, _)) => Ready::Yes,
            Some((State::Failed { why, .. }, _)) => Ready::Failed(why.clone()),
            // The engine hands a body over, or renames a file into place, only once all of it
            // is written.
            Some((State::Pending, name)) if self.held.contains_key(name) => Ready::Yes,
            Some((State::Pending, name)) if self.holding.has(&self.work.join(name)) => Ready::Yes,
            Some((State::Pending, name)) => match self.work.stat(name) {
                Ok(Some(st)) if crate::backend::nofollow::is_regular(&st) => Ready::Yes,
                _ => Ready::NotYet,
            },
        }
    }

    /// Takes the resource named `name` from the holding, if the engine handed it over there.
    fn take_held(&mut self, name: &OsString) {
        if !self.held.contains_key(name)
            && let Some(body) = self.holding.take(&self.work.join(name))
        {
            self.held.insert(name.clone(), Arc::new(body));
        }
    }

    /// Writes the next segment of track `t` (and the init section it needs first).
    fn write_segment(
        &mut self,
        t: usize,
        track: &Track,
        resources: &Resources,
        keys: &mut KeySource,
    ) -> Result<(), String> {
        let media = &track.media;
        let seg = &media.segments[self.tracks[t].saved.next];
        let r = resources.find(&seg.uri, seg.range).ok_or("not fetched")?;
        let key = match &seg.crypt {
            None => None,
            Some(c) => Some((keys.get(&c.key)?, c)),
        };
        let map = match seg.map {
            None => None,
            Some(m) => {
                let map = &media.maps[m];
                let key = match &map.crypt {
                    None => None,
                    Some(c) => Some((keys.get(&c.key)?, c)),
                };
                let src = resources
                    .find(&map.uri, map.range)
                    .ok_or("its init section was not fetched")?;
                Some((m, map, src, key))
            }
        };
        self.take_held(&r.name);
        if let Some((_, _, src, _)) = &map {
            self.take_held(&src.name);
        }
        // Shared out of the map: what follows borrows `self` mutably.
        let seg_body = self.held.get(&r.name).cloned();
        let map_body = map
            .as_ref()
            .and_then(|(_, _, src, _)| self.held.get(&src.name).cloned());
        let work = self.work.clone();
        let seg_src = source(seg_body.as_deref(), &work);
        let map_src = map.is_some().then(|| source(map_body.as_deref(), &work));
        let out = &mut self.tracks[t];
        if let Some(dir) = &out.seg_dir {
            if let Some((m, map, src, key)) = map
                && !out.saved.maps_written[m]
            {
                let name = format!("init-{m}.{}", extension(Some(&map.uri)));
                let from = map_src.expect("a map's source with its map");
                write_file(dir, &name, |f| copy(from, src, map.range, key.as_ref(), f))
                    .map_err(|e| format!("its init section: {e}"))?;
                out.saved.maps_written[m] = true;
            }
            let name = format!("{}.{}", seg.msn, out.ext);
            let n = write_file(dir, &name, |f| copy(seg_src, r, seg.range, key.as_ref(), f))?;
            out.saved.bytes += n;
            self.since += n;
        } else {
            if let Some((m, map, src, key)) = map
                && out.saved.map_in_file != Some(m)
            {
                self.new_part(t).map_err(|e| e.to_string())?;
                let out = &mut self.tracks[t];
                let f = out.part.as_mut().ok_or("no part open")?;
                let from = map_src.expect("a map's source with its map");
                let n = copy(from, src, map.range, key.as_ref(), f)
                    .map_err(|e| format!("its init section: {e}"))?;
                out.saved.len += n;
                out.saved.bytes += n;
                out.saved.map_in_file = Some(m);
            }
            if self.tracks[t].part.is_none() {
                self.new_part(t).map_err(|e| e.to_string())?;
            }
            let out = &mut self.tracks[t];
            let f = out.part.as_mut().ok_or("no part open")?;
            let n = match &mut out.saved.vtt {
                Some(merge) => {
                    let bytes = read(seg_src, r, seg.range, key.as_ref(), MAX_SUBTITLE_SEGMENT)?;
                    // Taken as the track's only once written.
                    let mut next = merge.clone();
                    let text = next.next(&bytes).map_err(|e| format!("{}: {e}", r.url))?;
                    let n = append(f, &text)?;
                    *merge = next;
                    n
                }
                None => copy(seg_src, r, seg.range, key.as_ref(), f)?,
            };
            out.saved.len += n;
            out.saved.bytes += n;
            self.since += n;
        }
        let out = &mut self.tracks[t];
        out.saved.seconds += seg.duration;
        out.saved.decrypted += u64::from(key.is_some());
        Ok(())
    }

    /// Closes track `t`'s part (fsynced) and opens the next one, empty.
    fn new_part(&mut self, t: usize) -> Result<(), HlsError> {
        let out = &mut self.tracks[t];
        if let Some(f) = out.part.take() {
            f.sync_all().map_err(|source| HlsError::Io {
                path: self.work.join(&part_name(t, out.saved.parts)),
                source,
            })?;
        }
        out.saved.parts += 1;
        out.saved.len = 0;
        out.started.clear();
        let name = part_name(t, out.saved.parts);
        let _ = self.work.unlink(&name);
        let f = self
            .work
            .open_std(&name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL)
            .map_err(|source| HlsError::Io {
                path: self.work.join(&name),
                source,
            })?;
        out.part = Some(f);
        Ok(())
    }

    /// The tracks' reports: what was written, the gaps, and (for a track stopped at a gap)
    /// every later segment that is missing too.
    pub(super) fn reports(&self, tracks: &[Track], resources: &Resources) -> Vec<TrackReport> {
        self.tracks
            .iter()
            .zip(tracks)
            .map(|(out, track)| {
                let mut gaps = out.saved.gaps.clone();
                if let Some(why) = &out.stopped {
                    let seg = &track.media.segments[out.saved.next];
                    push_gap(&mut gaps, seg.msn, seg.duration, why.clone());
                    for seg in &track.media.segments[out.saved.next + 1..] {
                        let why = match self.ready(&seg.uri, seg.range, resources) {
                            Ready::Failed(why) => why,
                            Ready::NotYet => format!("{} was not fetched", seg.uri),
                            Ready::Yes if seg.gap => "the playlist marks it EXT-X-GAP".into(),
                            Ready::Yes => continue,
                        };
                        push_gap(&mut gaps, seg.msn, seg.duration, why);
                    }
                }
                gaps.extend(track.missed.iter().cloned());
                gaps.sort_by_key(|g| g.first);
                let outputs = match &out.seg_dir {
                    Some(d) => vec![d.path().to_path_buf()],
                    None => (1..=out.saved.parts.max(1))
                        .map(|p| self.plan.dir.join(&self.final_name(out, p)))
                        .collect(),
                };
                TrackReport {
                    kind: track.kind.to_string(),
                    name: track.name.clone(),
                    playlist: track.asked.to_string(),
                    outputs,
                    segments: track.segments(),
                    decrypted: out.saved.decrypted,
                    bytes: out.saved.bytes,
                    seconds: out.saved.seconds,
                    gaps,
                }
            })
            .collect()
    }

    fn final_name(&self, out: &TrackOut, part: usize) -> OsString {
        let (stem, ext) = (&self.plan.stem, &out.ext);
        match (out.label.is_empty(), part) {
            (true, 1) => self.plan.file.clone(),
            (true, n) => format!("{stem}.part{n}.{ext}").into(),
            (false, 1) => format!("{stem}.{}.{ext}", out.label).into(),
            (false, n) => format!("{stem}.{}.part{n}.{ext}", out.label).into(),
        }
    }

    /// Renames every output into place (an empty track still gets its empty file) and
    /// fsyncs the folders.
    pub(super) fn publish(mut self) -> Result<(), HlsError> {
        for t in 0..self.tracks.len() {
            if self.tracks[t].seg_dir.is_none() && self.tracks[t].saved.parts == 0 {
                self.new_part(t)?;
            }
        }
        self.checkpoint()?;
        for (t, out) in self.tracks.iter().enumerate() {
            if let Some(f) = &out.part {
                f.sync_all().map_err(|source| HlsError::Io {
                    path: self.work.join(&part_name(t, out.saved.parts)),
                    source,
                })?;
            }
            if out.seg_dir.is_some() {
                continue;
            }
            for p in 1..=out.saved.parts {
                let to = self.final_name(out, p);
                self.work
                    .rename_into(&part_name(t, p), &self.plan.dir, &to)
                    .map_err(|source| HlsError::Io {
                        path: self.plan.dir.join(&to),
                        source,
                    })?;
            }
        }
        rustix::fs::fsync(self.plan.dir.as_fd()).map_err(|e| HlsError::Io {
            path: self.plan.dir.path().to_path_buf(),
            source: e.into(),
        })?;
        Ok(())
    }
}

/// A resource's bytes: `held` in memory, else its file in `work`.
fn source<'a>(held: Option<&'a Held>, work: &'a Dir) -> Src<'a> {
    match held {
        Some(b) => Src::Memory(b),
        None => Src::File(work),
    }
}

enum Ready {
    Yes,
    NotYet,
    Failed(String),
}

/// Writes a file of a segments folder: a temporary name, `fill`, fsync, renamed into place.
fn write_file(
    dir: &Dir,
    name: &str,
    fill: impl FnOnce(&mut File) -> Result<u64, String>,
) -> Result<u64, String> {
    let (tmp, mut f) = dir
        .create_temp(name.as_ref())
        .map_err(|e| format!("{}: {e}", dir.join(name.as_ref()).display()))?;
    let done = fill(&mut f).and_then(|n| {
        f.sync_all()
            .and_then(|()| dir.rename(&tmp, name.as_ref()))
            .map(|()| n)
            .map_err(|e| format!("{}: {e}", dir.join(name.as_ref()).display()))
    });
    if done.is_err() {
        let _ = dir.unlink(&tmp);
    }
    done
}
