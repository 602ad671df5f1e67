//! The download of a stream, step by step: playlists and keys (small, blocking, through the
//! Hub API client's retries and redirects), every segment and init section as one engine job
//! over shared connections, a second round for segments refused with 401/403/410 after the
//! playlist is loaded again (signed URLs expire), then `assemble.rs`.
//!
//! Invariant: a resource (a segment's or init section's URL) is fetched at most once per run,
//! into the work folder under a name made from a hash of its URL; one already there from an
//! earlier run is complete (the engine renames a file into place only once all of it is written
//! and durable) and is kept. Not here: decrypting and writing the outputs (`assemble.rs`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use url::Url;

use super::assemble::{self, Keys, OutputPlan, Resources};
use super::playlist::{self, Media, Playlist};
use super::{HlsError, HlsReport, Options, select};
use crate::backend::nofollow::{self, Dir};
use crate::engine::Engine;
use crate::error::GetError;
use crate::hub::api::Api;
use crate::job::{GetItem, Job};

/// The work folder's suffix, after the output's file name.
pub(crate) const WORK_SUFFIX: &str = ".ferry-hls";
/// Statuses that mean a signed URL expired: the playlist is loaded again for fresh ones.
const EXPIRED: [u16; 3] = [401, 403, 410];

/// One media playlist to write.
pub(super) struct Track {
    pub kind: &'static str,
    pub name: String,
    /// The URL it was asked at (reloaded from there, not from a tokened redirect).
    pub asked: Url,
    pub media: Media,
}

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
pub(super) struct Resource {
    pub url: Url,
    pub name: OsString,
    pub state: State,
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
    watch: &mut dyn FnMut(&mut Job),
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
    let (variant, mut tracks) = tracks(&api, &asked, options, &mut warnings)?;
    for t in &tracks {
        tracing::info!(
            "{}: {} segments, {:.1} s",
            t.asked,
            t.media.segments.len(),
            t.media.duration()
        );
        if t.media.is_live() {
            return Err(HlsError::Usage(format!(
                "{}: a live playlist (no EXT-X-ENDLIST); ferry downloads VOD and ended streams only for now",
                t.asked
            )));
        }
    }
    let (dir, file) = output_dir(output)?;
    let mut work_name = file.clone();
    work_name.push(WORK_SUFFIX);
    let work = dir
        .beneath(Path::new(&work_name), true)
        .map_err(|source| HlsError::Io {
            path: dir.join(&work_name),
            source,
        })?;

    let mut resources = Resources::default();
    let mut needs = resources.index(&tracks);
    let mut kept = 0;
    for r in &mut resources.list {
        if let Ok(Some(st)) = work.stat(&r.name)
            && nofollow::is_regular(&st)
        {
            r.state = State::Kept;
            kept += 1;
        }
    }
    if kept > 0 {
        tracing::info!(
            "resuming: {kept} of {} segments and init sections were fetched by an earlier run and are kept",
            resources.list.len()
        );
    }
    let mut fetched_bytes = fetch(engine, &work, &mut resources, watch)?;
    let expired = resources
        .list
        .iter()
        .any(|r| matches!(r.state, State::Failed { status: Some(s), .. } if EXPIRED.contains(&s)));
    if expired {
        tracing::warn!(
            "segments were refused (401/403/410): loading the playlists again for fresh URLs"
        );
        for t in &mut tracks {
            match load(&api, &t.asked)? {
                (Playlist::Media(m), _) => t.media = m,
                (Playlist::Master(_), _) => {
                    return Err(HlsError::Playlist {
                        url: t.asked.to_string(),
                        what: "reloaded as a master playlist".into(),
                    });
                }
            }
        }
        needs = resources.index(&tracks);
        resources.retry(
            &needs,
            |s| matches!(s, State::Failed { status: Some(s), .. } if EXPIRED.contains(s)),
        );
        fetched_bytes += fetch(engine, &work, &mut resources, watch)?;
    }
    let keys = fetch_keys(&api, &tracks, &resources, &needs);
    let plan = OutputPlan::new(&dir, &file, options.segments_dir.as_deref())?;
    let mut written = assemble::write(&tracks, &resources, &keys, &work, &plan)?;
    let mut report = HlsReport {
        url: url.to_string(),
        variant,
        tracks: std::mem::take(&mut written.tracks),
        resources: resources.list.len() as u64,
        kept,
        fetched_bytes,
        keys: keys.fetched(),
        seconds: 0.0,
        backend: engine.selection().backend,
        warnings,
    };
    if report.gaps().next().is_some() && !options.allow_gaps {
        written.discard();
        report.seconds = started.elapsed().as_secs_f64();
        return Err(HlsError::Gaps(Box::new(report)));
    }
    written.publish()?;
    drop(work);
    let work_path = dir.join(&work_name);
    if let Err(e) = std::fs::remove_dir_all(&work_path) {
        tracing::warn!("{}: not removed: {e}", work_path.display());
    }
    report.seconds = started.elapsed().as_secs_f64();
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
            let track = Track {
                kind: "main",
                name: String::new(),
                asked: asked.clone(),
                media,
            };
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
    out.push(Track {
        kind: "main",
        name: String::new(),
        asked: variant.uri.clone(),
        media: media(&variant.uri, warnings)?,
    });
    for r in select::renditions(&master, variant, &options.renditions) {
        let Some(uri) = &r.uri else { continue };
        let name = if r.name.is_empty() {
            r.language.clone().unwrap_or_default()
        } else {
            r.name.clone()
        };
        out.push(Track {
            kind: r.kind.name(),
            name,
            asked: uri.clone(),
            media: media(uri, warnings)?,
        });
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

/// Fetches every pending resource as one engine job; returns the bytes fetched.
fn fetch(
    engine: &Engine,
    work: &Dir,
    resources: &mut Resources,
    watch: &mut dyn FnMut(&mut Job),
) -> Result<u64, HlsError> {
    let pending: Vec<usize> = (0..resources.list.len())
        .filter(|&i| matches!(resources.list[i].state, State::Pending))
        .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let items = pending.iter().map(|&i| {
        let r = &resources.list[i];
        GetItem::new(r.url.as_str(), work.join(&r.name)).beneath(work.path())
    });
    let mut job = engine.get_many(items)?;
    watch(&mut job);
    let mut bytes = 0;
    for (i, result) in pending.into_iter().zip(job.wait_all()) {
        let r = &mut resources.list[i];
        r.state = match result {
            Ok(report) => {
                bytes += report.bytes;
                State::Fetched
            }
            Err(GetError::Interrupted) => return Err(HlsError::Interrupted),
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
    if engine
        .interrupted()
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(HlsError::Interrupted);
    }
    Ok(bytes)
}

/// The name of a resource's file in the work folder: a hash of its URL.
pub(super) fn file_name(url: &Url) -> OsString {
    let digest = Sha256::digest(url.as_str().as_bytes());
    OsString::from(format!("{}.seg", hex::encode(&digest[..16])))
}

/// Fetches each key the written segments need, once.
fn fetch_keys(
    api: &Api,
    tracks: &[Track],
    resources: &Resources,
    needs: &[Vec<Option<usize>>],
) -> Keys {
    let mut keys: HashMap<Url, Result<[u8; 16], String>> = HashMap::new();
    let mut fetched = 0;
    for (t, track) in tracks.iter().enumerate() {
        let crypts = track
            .media
            .segments
            .iter()
            .map(|s| &s.crypt)
            .chain(track.media.maps.iter().map(|m| &m.crypt));
        for (c, crypt) in crypts.enumerate() {
            let Some(crypt) = crypt else { continue };
            if keys.contains_key(&crypt.key) {
                continue;
            }
            // A key for a segment that failed anyway is not asked for.
            let usable = needs[t]
                .get(c)
                .copied()
                .flatten()
                .is_none_or(|r| !matches!(resources.list[r].state, State::Failed { .. }));
            if !usable {
                continue;
            }
            fetched += 1;
            keys.insert(crypt.key.clone(), fetch_key(api, &crypt.key));
        }
    }
    Keys::new(keys, fetched)
}

fn fetch_key(api: &Api, url: &Url) -> Result<[u8; 16], String> {
    let answer = api.get(url).map_err(|e| format!("key {url}: {e}"))?;
    if !(200..300).contains(&answer.head.status) {
        return Err(format!(
            "key {url}: server answered {} {}",
            answer.head.status, answer.head.reason
        ));
    }
    <[u8; 16]>::try_from(answer.body.as_slice()).map_err(|_| {
        format!(
            "key {url}: {} bytes; an AES-128 key is exactly 16 (RFC 8216 section 5.1)",
            answer.body.len()
        )
    })
}
