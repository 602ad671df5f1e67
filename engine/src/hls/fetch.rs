//! The download of a stream, step by step: playlists (small, blocking, through the Hub API
//! client's retries and redirects), every segment and init section still needed as one engine
//! job over shared connections while `writer.rs` writes what has landed, a second round for
//! segments refused with 401/403/410 after the playlist is loaded again (signed URLs expire);
//! for a live playlist, a job per reload.
//!
//! Invariant: a resource (a segment's or init section's URL) is fetched at most once per run,
//! into the work folder under a name made from a hash of its URL, as a scratch file (not
//! fsynced). One there from an earlier run is kept only if that run stopped cleanly and listed
//! it as made durable; any other is removed and fetched again. Not here: decrypting and writing
//! the outputs (`writer.rs`, `assemble.rs`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use url::Url;

use super::assemble::{KeySource, Resources};
use super::playlist::{self, ByteRange, Media, Playlist};
use super::track::Track;
use super::writer::{OutputPlan, Writer};
use super::{HlsError, HlsReport, Options, select};
use crate::backend::nofollow::{self, Dir};
use crate::engine::Engine;
use crate::error::GetError;
use crate::hub::api::Api;
use crate::job::{Event, GetItem, Progress};
use crate::journal::{self, Journal};

/// The work folder's suffix, after the output's file name.
pub(crate) const WORK_SUFFIX: &str = ".ferry-hls";

/// The resume journal's name in the work folder.
const JOURNAL: &str = "segments.journal";
/// How long a live playlist may stay unchanged before the recording ends, by default.
pub(super) const DEFAULT_LIVE_TIMEOUT: Duration = Duration::from_secs(120);
/// Statuses that mean a signed URL expired: the playlist is loaded again for fresh ones.
pub(super) const EXPIRED: [u16; 3] = [401, 403, 410];

/// How a resource stands.
#[derive(Debug, Clone)]
pub(super) enum State {
    Pending,
    /// In the work folder, from an earlier run.
    Kept,
    Fetched,
    Failed {
        why: String,
        status: Option<u16>,
    },
}

/// A segment's or init section's URL, and its file in the work folder.
#[derive(Clone)]
pub(super) struct Resource {
    pub url: Url,
    /// Only this byte range of the URL, fetched on its own (it is then the whole resource).
    pub window: Option<ByteRange>,
    pub name: OsString,
    pub state: State,
    /// Used by a segment not yet written (or its init section).
    pub needed: bool,
}

/// Downloads the stream at `url` into `output` (see the module docs of `ferry::hls`). `watch` is
/// handed each engine job while it runs (a progress bar), and the engine's interrupter stops it
/// (the segments fetched are kept for the next run).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use ferry::{Config, Engine, hls};
///
/// let engine = Engine::new(Config::default())?;
/// let options = hls::Options::default();
/// let report = hls::download(&engine, "http://127.0.0.1:8080/vod/index.m3u8", "vod.ts", &options, &mut |_| {})?;
/// println!("{} segments, {} bytes", report.tracks[0].segments, report.tracks[0].bytes);
/// # Ok(())
/// # }
/// ```
pub fn download(
    engine: &Engine,
    url: &str,
    output: impl AsRef<Path>,
    options: &Options,
    watch: &mut dyn FnMut(&Progress),
) -> Result<HlsReport, HlsError> {
    let started = Instant::now();
    let output = output.as_ref();
    let asked = Url::parse(url).map_err(|e| HlsError::Usage(format!("{url}: {e}")))?;
    if !matches!(asked.scheme(), "http" | "https") {
        return Err(HlsError::Usage(format!(
            "{url}: only http:// and https:// streams are supported"
        )));
    }
    let api = Api::new(asked.clone(), None, engine.dialer().clone());
    let mut warnings = Vec::new();
    let (variant, tracks) = tracks(&api, &asked, options, &mut warnings)?;
    for t in &tracks {
        tracing::info!(
            "{}: {} segments, {:.1} s{}",
            t.asked,
            t.media.segments.len(),
            t.media.duration(),
            if t.media.is_live() { ", live" } else { "" }
        );
    }
    let live = tracks.iter().any(|t| t.media.is_live());
    let (dir, file) = output_dir(output)?;
    let mut work_name = file.clone();
    work_name.push(WORK_SUFFIX);
    let work = dir
        .beneath(Path::new(&work_name), true)
        .map_err(|source| HlsError::Io {
            path: dir.join(&work_name),
            source,
        })?;
    // One run per output: a second would append to the same parts.
    let _lock = lock(&work)?;
    // Which ranges of the segments in flight are written: a run after a stop fetches only the
    // rest of a large segment (`download/validator.rs`).
    let journal = Journal::open(work.path(), Path::new(""), JOURNAL)
        .map(Arc::new)
        .map_err(|e| match e {
            journal::OpenError::Busy(path) => HlsError::Busy { path },
            journal::OpenError::Io { path, source, .. } => HlsError::Io { path, source },
        })?;
    let plan = OutputPlan::new(&dir, &file, options.segments_dir.as_deref())?;
    // Live: every gap is final, so the recording goes on past it; VOD: a track stops at its
    // first gap, so that a later run can fill it in place (unless gaps are allowed).
    let memory = options.memory.unwrap_or(super::writer::DEFAULT_MEMORY);
    let writer = Writer::new(
        &tracks,
        &work,
        plan,
        live || options.allow_gaps,
        !live,
        memory,
    )?;
    let keys = KeySource::new(Api::new(asked.clone(), None, engine.dialer().clone()));
    let mut run = Run {
        engine,
        api,
        work,
        journal,
        tracks,
        resources: Resources::default(),
        keys,
        writer,
        fetched_bytes: 0,
        warnings,
    };
    let kept = run.keep_earlier();
    let stopped = match if live {
        run.record(options, watch).map(Some)
    } else {
        run.vod(watch).map(|()| None)
    } {
        Ok(s) => s,
        Err(e) => {
            // What was written so far is kept for the next run.
            let _ = run.writer.keep(&run.resources);
            return Err(e);
        }
    };
    let Run {
        tracks,
        resources,
        keys,
        writer,
        work,
        fetched_bytes,
        warnings,
        ..
    } = run;
    let (in_memory, memory_peak) = writer.memory_use();
    let mut report = HlsReport {
        url: url.to_string(),
        variant,
        tracks: writer.reports(&tracks, &resources),
        resources: resources.list.len() as u64,
        kept,
        fetched_bytes,
        keys: keys.fetched(),
        in_memory,
        memory_peak,
        live: stopped,
        seconds: 0.0,
        backend: engine.selection().backend,
        warnings,
    };
    // A live recording is written all the same: what left the window cannot come back.
    if report.gaps().next().is_some() && !options.allow_gaps && !live {
        writer.keep(&resources)?;
        for t in &mut report.tracks {
            t.outputs.clear();
        }
        report.seconds = started.elapsed().as_secs_f64();
        return Err(HlsError::Gaps(Box::new(report)));
    }
    writer.publish()?;
    drop(work);
    let work_path = dir.join(&work_name);
    if let Err(e) = std::fs::remove_dir_all(&work_path) {
        tracing::warn!("{}: not removed: {e}", work_path.display());
    }
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "{} bytes fetched, outputs in place, in {:.2} s",
        report.fetched_bytes,
        report.seconds
    );
    if report.gaps().next().is_some() && !options.allow_gaps {
        return Err(HlsError::Gaps(Box::new(report)));
    }
    Ok(report)
}

/// The tracks to write: the media playlist asked for, or a master playlist's chosen variant
/// and its renditions. Returns the variant's description too.
fn tracks(
    api: &Api,
    asked: &Url,
    options: &Options,
    warnings: &mut Vec<String>,
) -> Result<(Option<String>, Vec<Track>), HlsError> {
    let (first, final_url) = load(api, asked)?;
    let note = |warnings: &mut Vec<String>, url: &Url, w: &[String]| {
        for w in w {
            tracing::warn!("{url}: {w}");
            warnings.push(format!("{url}: {w}"));
        }
    };
    let master = match first {
        Playlist::Media(media) => {
            note(warnings, &final_url, &media.warnings);
            let track = Track::new("main", String::new(), asked.clone(), media);
            return Ok((None, vec![track]));
        }
        Playlist::Master(m) => m,
    };
    note(warnings, &final_url, &master.warnings);
    let i = select::variant(&master, &options.variant)
        .map_err(|e| HlsError::Usage(format!("{asked}: {e}")))?;
    let variant = &master.variants[i];
    let described = select::describe(variant);
    tracing::info!("variant: {described} ({})", variant.uri);
    let mut out = Vec::new();
    let media = |url: &Url, warnings: &mut Vec<String>| -> Result<Media, HlsError> {
        match load(api, url)? {
            (Playlist::Media(m), final_url) => {
                note(warnings, &final_url, &m.warnings);
                Ok(m)
            }
            (Playlist::Master(_), _) => Err(HlsError::Playlist {
                url: url.to_string(),
                what: "a master playlist names another master playlist as a variant".into(),
            }),
        }
    };
    out.push(Track::new(
        "main",
        String::new(),
        variant.uri.clone(),
        media(&variant.uri, warnings)?,
    ));
    for r in select::renditions(&master, variant, &options.renditions) {
        let Some(uri) = &r.uri else { continue };
        let name = if r.name.is_empty() {
            r.language.clone().unwrap_or_default()
        } else {
            r.name.clone()
        };
        out.push(Track::new(
            r.kind.name(),
            name,
            uri.clone(),
            media(uri, warnings)?,
        ));
    }
    Ok((Some(described), out))
}

/// Fetches and parses one playlist; returns it and the URL that answered.
fn load(api: &Api, url: &Url) -> Result<(Playlist, Url), HlsError> {
    let answer = api.get(url).map_err(|e| HlsError::Remote {
        url: url.to_string(),
        detail: e.to_string(),
    })?;
    if !(200..300).contains(&answer.head.status) {
        return Err(HlsError::Remote {
            url: url.to_string(),
            detail: format!(
                "server answered {} {}",
                answer.head.status, answer.head.reason
            ),
        });
    }
    let playlist = playlist::parse(&answer.body, &answer.url).map_err(|e| HlsError::Playlist {
        url: url.to_string(),
        what: e.what,
    })?;
    Ok((playlist, answer.url))
}

/// Locks the work folder for this run (held until the returned file is dropped); another run
/// on the same output holding it is [`HlsError::Busy`].
fn lock(work: &Dir) -> Result<std::fs::File, HlsError> {
    use rustix::fs::{FlockOperation, OFlags};
    let io = |source| HlsError::Io {
        path: work.join("lock".as_ref()),
        source,
    };
    let f = work
        .open_std("lock".as_ref(), OFlags::RDWR | OFlags::CREATE)
        .map_err(io)?;
    match rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(HlsError::Busy {
            path: work.path().to_path_buf(),
        }),
        Err(e) => Err(io(e.into())),
    }
}

/// The output's folder (opened) and file name.
fn output_dir(output: &Path) -> Result<(Dir, OsString), HlsError> {
    let Some(file) = output.file_name() else {
        return Err(HlsError::Usage(format!(
            "{}: the output must name a file",
            output.display()
        )));
    };
    if output.is_dir() {
        return Err(HlsError::Usage(format!(
            "{} is a directory; name the output file",
            output.display()
        )));
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = Dir::open(&parent).map_err(|source| HlsError::Io {
        path: parent,
        source,
    })?;
    Ok((dir, file.to_owned()))
}

/// A download under way: what it has fetched, written and still needs.
struct Run<'e> {
    engine: &'e Engine,
    api: Api,
    work: Dir,
    journal: Arc<Journal>,
    tracks: Vec<Track>,
    resources: Resources,
    keys: KeySource,
    writer: Writer,
    fetched_bytes: u64,
    warnings: Vec<String>,
}

impl Run<'_> {
    /// Registers the tracks' resources and keeps those an earlier run left in the work folder;
    /// returns how many segments an earlier run fetched or wrote.
    fn keep_earlier(&mut self) -> u64 {
        let writer = &self.writer;
        self.resources.index(&self.tracks, |t| writer.next(t));
        let mut kept = 0;
        for r in &mut self.resources.list {
            if let Ok(Some(st)) = self.work.stat(&r.name)
                && nofollow::is_regular(&st)
            {
                if self.writer.trusts(&r.name) {
                    r.state = State::Kept;
                    kept += 1;
                } else {
                    // Left by a run that did not stop cleanly: maybe not all on disk.
                    let _ = self.work.unlink(&r.name);
                }
            }
        }
        if kept > 0 {
            tracing::info!(
                "resuming: {kept} segments and init sections fetched by an earlier run are kept"
            );
        }
        kept + self.writer.resumed
    }

    /// A playlist that does not change: everything at once, written as it lands, then once
    /// more with fresh URLs for what was refused as expired.
    fn vod(&mut self, watch: &mut dyn FnMut(&Progress)) -> Result<(), HlsError> {
        if self.fetch(watch)? {
            return Err(HlsError::Interrupted);
        }
        let expired = self.resources.list.iter().any(|r| {
            r.needed
                && matches!(r.state, State::Failed { status: Some(s), .. } if EXPIRED.contains(&s))
        });
        if expired {
            tracing::warn!(
                "segments were refused (401/403/410): loading the playlists again for fresh URLs"
            );
            for t in &mut self.tracks {
                let fresh = reload(&self.api, &t.asked)?;
                t.renew_expired(&self.resources, &fresh);
            }
            self.index();
            self.resources.retry(
                |s| matches!(s, State::Failed { status: Some(s), .. } if EXPIRED.contains(s)),
            );
            if self.fetch(watch)? {
                return Err(HlsError::Interrupted);
            }
        }
        self.writer
            .advance(&self.tracks, &self.resources, &mut self.keys, true)
    }

    /// Marks the resources still needed. A live track first forgets what it wrote, and the
    /// resources only that used (never a VOD track: its checkpoint counts from its first
    /// segment).
    fn index(&mut self) {
        let mut forgot = false;
        for (t, track) in self.tracks.iter_mut().enumerate() {
            if !track.media.is_live() {
                continue;
            }
            let n = track.forget_written(self.writer.next(t));
            if n > 0 {
                self.writer.forget(t, n);
                forgot = true;
            }
        }
        if forgot {
            self.resources.rebuild(&self.tracks);
        }
        let writer = &self.writer;
        self.resources.index(&self.tracks, |t| writer.next(t));
    }

    /// A live playlist: fetches what it lists, loads it again as RFC 8216 section 6.3.4 says
    /// (the target duration after a load that changed it, half of it after one that did not,
    /// timed from when the last load began), and adds what is new, until `EXT-X-ENDLIST`, the
    /// duration asked for, an interrupt, or a playlist that stops changing for the live
    /// timeout. Returns why it stopped.
    fn record(
        &mut self,
        options: &Options,
        watch: &mut dyn FnMut(&Progress),
    ) -> Result<String, HlsError> {
        let why = self.record_until(options, watch)?;
        if why == "interrupted" {
            self.drop_unfetched_tail();
        }
        self.writer
            .advance(&self.tracks, &self.resources, &mut self.keys, true)?;
        Ok(why)
    }

    fn record_until(
        &mut self,
        options: &Options,
        watch: &mut dyn FnMut(&Progress),
    ) -> Result<String, HlsError> {
        let idle_limit = options.live_timeout.unwrap_or(DEFAULT_LIVE_TIMEOUT);
        let stop = |t: &mut Vec<Track>| {
            if let Some(d) = options.duration {
                for track in t {
                    track.truncate_to(d.as_secs_f64());
                }
            }
        };
        stop(&mut self.tracks);
        let mut loaded = Instant::now();
        let mut changed = true;
        let mut last_change = Instant::now();
        let mut idle_warned = false;
        loop {
            self.index();
            let interrupted = self.fetch(watch)?;
            if interrupted || self.interrupted() {
                return Ok("interrupted".into());
            }
            if let Some(d) = options.duration
                && self.tracks[0].duration() >= d.as_secs_f64()
            {
                return Ok(format!("--duration {} s reached", d.as_secs()));
            }
            if self.tracks.iter().all(|t| !t.media.is_live()) {
                return Ok("the playlist ended (EXT-X-ENDLIST)".into());
            }
            let target = Duration::from_secs(self.tracks[0].media.target_duration.max(1));
            let wait = if changed { target } else { target / 2 };
            while loaded.elapsed() < wait {
                if self.interrupted() {
                    return Ok("interrupted".into());
                }
                std::thread::sleep((wait - loaded.elapsed()).min(Duration::from_millis(100)));
            }
            loaded = Instant::now();
            changed = false;
            for t in self.tracks.iter_mut().filter(|t| t.media.is_live()) {
                let fresh = match reload(&self.api, &t.asked) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!("{e}; trying again at the next reload");
                        continue;
                    }
                };
                for w in &fresh.warnings {
                    if !self.warnings.iter().any(|x| x.ends_with(w.as_str())) {
                        tracing::warn!("{}: {w}", t.asked);
                        self.warnings.push(format!("{}: {w}", t.asked));
                    }
                }
                if t.merge(fresh) {
                    changed = true;
                }
            }
            stop(&mut self.tracks);
            if changed {
                last_change = Instant::now();
                idle_warned = false;
            } else if last_change.elapsed() >= idle_limit {
                return Ok(format!(
                    "the playlist did not change for {} s (--live-timeout)",
                    idle_limit.as_secs()
                ));
            } else if !idle_warned && last_change.elapsed() >= target * 3 {
                idle_warned = true;
                tracing::warn!(
                    "the playlist has not changed for {:.0} s (3 target durations); still waiting, up to {} s",
                    last_change.elapsed().as_secs_f64(),
                    idle_limit.as_secs()
                );
            }
        }
    }

    fn interrupted(&self) -> bool {
        self.engine
            .interrupted()
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// After an interrupt, the segments at each track's end that were not fetched are not
    /// gaps: the recording stopped before them.
    fn drop_unfetched_tail(&mut self) {
        for (i, t) in self.tracks.iter_mut().enumerate() {
            while t.media.segments.len() > self.writer.next(i) {
                let Some(s) = t.media.segments.last() else {
                    break;
                };
                let fetched = self
                    .resources
                    .state(&s.uri, s.range)
                    .is_some_and(|st| matches!(st, State::Kept | State::Fetched));
                if fetched {
                    break;
                }
                t.media.segments.pop();
            }
        }
    }

    /// Fetches every needed pending resource as one engine job, writing the outputs as the
    /// segments land. Returns whether the job was interrupted (what it did not finish is left
    /// pending).
    fn fetch(&mut self, watch: &mut dyn FnMut(&Progress)) -> Result<bool, HlsError> {
        let pending: Vec<usize> = (0..self.resources.list.len())
            .filter(|&i| {
                let r = &self.resources.list[i];
                r.needed && matches!(r.state, State::Pending)
            })
            .collect();
        if pending.is_empty() {
            self.writer
                .advance(&self.tracks, &self.resources, &mut self.keys, false)?;
            return Ok(false);
        }
        let items = pending.iter().map(|&i| {
            let r = &self.resources.list[i];
            let item = GetItem::new(r.url.as_str(), self.work.join(&r.name))
                .beneath(self.work.path())
                .scratch()
                .in_order()
                .hold(self.writer.holding());
            match r.window {
                Some(w) => item.window(w.offset, w.len),
                None => item,
            }
        });
        let mut job = self
            .engine
            .get_many_journaled(items, Some(Arc::clone(&self.journal)))?;
        for Event::Progress(p) in job.events(Duration::from_millis(50)) {
            watch(&p);
            self.writer
                .advance(&self.tracks, &self.resources, &mut self.keys, false)?;
        }
        tracing::debug!(
            "job of {} resources done; written so far: {:?} segments per track",
            pending.len(),
            (0..self.tracks.len())
                .map(|t| self.writer.next(t))
                .collect::<Vec<_>>()
        );
        let mut interrupted = false;
        let mut whole = Vec::new();
        for (i, result) in pending.into_iter().zip(job.wait_all()) {
            let r = &mut self.resources.list[i];
            if let Err(GetError::RangesUnsupported { .. }) = &result {
                whole.push(r.url.clone());
            }
            r.state = match result {
                Ok(report) => {
                    // Bytes an earlier run wrote of a segment taken up were not fetched now.
                    self.fetched_bytes += report.bytes.saturating_sub(report.resumed);
                    State::Fetched
                }
                Err(GetError::Interrupted) => {
                    interrupted = true;
                    State::Pending
                }
                Err(e) => {
                    let status = match &e {
                        GetError::Status { status, .. } => Some(*status),
                        _ => None,
                    };
                    State::Failed {
                        why: e.to_string(),
                        status,
                    }
                }
            };
        }
        if !whole.is_empty() && !interrupted && !self.interrupted() {
            // The server sends whole resources only: every byte range of those URLs comes
            // from one fetch of the whole, as another round.
            whole.sort();
            whole.dedup();
            for url in &whole {
                tracing::warn!(
                    "{url}: the server does not serve byte ranges; fetching the whole resource"
                );
                self.resources.fetch_whole(url, &self.tracks);
            }
            self.index();
            return self.fetch(watch);
        }
        Ok(interrupted || self.interrupted())
    }
}

/// Loads a media playlist again.
fn reload(api: &Api, url: &Url) -> Result<Media, HlsError> {
    match load(api, url)? {
        (Playlist::Media(m), _) => Ok(m),
        (Playlist::Master(_), _) => Err(HlsError::Playlist {
            url: url.to_string(),
            what: "a media playlist reloaded as a master playlist".into(),
        }),
    }
}

/// The name of a resource's file in the work folder: a hash of its URL (and byte range).
pub(super) fn file_name(url: &Url, window: Option<ByteRange>) -> OsString {
    let mut hash = Sha256::new();
    hash.update(url.as_str().as_bytes());
    if let Some(w) = window {
        hash.update(format!(" {}@{}", w.len, w.offset).as_bytes());
    }
    let digest = hash.finalize();
    OsString::from(format!("{}.seg", hex::encode(&digest[..16])))
}
