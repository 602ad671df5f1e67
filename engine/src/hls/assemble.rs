//! Writing the outputs: each track's segments in playlist order, the init section in force
//! first, AES-128 segments decrypted, each from the resource file the engine wrote (the whole
//! file, or the segment's byte range of it).
//!
//! Invariants: an output holds at most one init section (an `EXT-X-MAP` change starts the
//! next file, `NAME.partN.EXT`); a segment that cannot be read or decrypted leaves no byte in an
//! output (the file is cut back to where the segment began) and becomes a gap; outputs are
//! written under temporary names and renamed only by [`Written::publish`], after an fsync each,
//! and no name from a playlist becomes a path (rendition names are reduced to `[A-Za-z0-9_-]`).
//! Not here: fetching (`fetch.rs`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use rustix::fs::OFlags;
use url::Url;

use super::crypt::Decryptor;
use super::fetch::{Resource, State, Track, file_name};
use super::playlist::{ByteRange, Crypt};
use super::{Gap, HlsError, TrackReport};
use crate::backend::nofollow::Dir;

/// Bytes read from a resource file at a time.
const CHUNK: usize = 1 << 20;

/// Every resource the tracks need, each once.
#[derive(Default)]
pub(super) struct Resources {
    pub list: Vec<Resource>,
    by_url: HashMap<Url, usize>,
}

impl Resources {
    fn add(&mut self, url: &Url) -> usize {
        let mut url = url.clone();
        url.set_fragment(None);
        if let Some(&i) = self.by_url.get(&url) {
            return i;
        }
        self.list.push(Resource {
            name: file_name(&url),
            url: url.clone(),
            state: State::Pending,
        });
        self.by_url.insert(url, self.list.len() - 1);
        self.list.len() - 1
    }

    /// Registers the tracks' resources; per track, the resource of each segment (`None` for an
    /// `EXT-X-GAP` one) and then of each init section.
    pub(super) fn index(&mut self, tracks: &[Track]) -> Vec<Vec<Option<usize>>> {
        tracks
            .iter()
            .map(|t| {
                let segments: Vec<Option<usize>> = t
                    .media
                    .segments
                    .iter()
                    .map(|s| (!s.gap).then(|| self.add(&s.uri)))
                    .collect();
                let maps: Vec<Option<usize>> = t
                    .media
                    .maps
                    .iter()
                    .map(|m| Some(self.add(&m.uri)))
                    .collect();
                segments.into_iter().chain(maps).collect()
            })
            .collect()
    }

    /// How the resource at `url` stands.
    pub(super) fn state(&self, url: &Url) -> Option<&State> {
        self.find(url).map(|r| &r.state)
    }

    fn find(&self, url: &Url) -> Option<&Resource> {
        let mut url = url.clone();
        url.set_fragment(None);
        self.by_url.get(&url).map(|&i| &self.list[i])
    }

    /// Sets the failed resources `needs` names back to pending, for another round.
    pub(super) fn retry(&mut self, needs: &[Vec<Option<usize>>], which: impl Fn(&State) -> bool) {
        for &i in needs.iter().flatten().flatten() {
            if which(&self.list[i].state) {
                self.list[i].state = State::Pending;
            }
        }
    }
}

/// The keys, fetched once each; kept in memory only.
#[derive(Default)]
pub(super) struct Keys {
    map: HashMap<Url, Result<[u8; 16], String>>,
    fetched: u64,
}

impl Keys {
    pub(super) fn has(&self, url: &Url) -> bool {
        self.map.contains_key(url)
    }

    pub(super) fn insert(&mut self, url: Url, key: Result<[u8; 16], String>) {
        self.fetched += 1;
        self.map.insert(url, key);
    }

    pub(super) fn fetched(&self) -> u64 {
        self.fetched
    }

    fn get(&self, url: &Url) -> Result<&[u8; 16], String> {
        match self.map.get(url) {
            Some(Ok(k)) => Ok(k),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("key {url} was not fetched")),
        }
    }
}

/// Where the outputs go.
pub(super) struct OutputPlan {
    dir: Dir,
    stem: String,
    file: OsString,
    segments: Option<Dir>,
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
                std::fs::create_dir_all(p).map_err(|source| HlsError::Io {
                    path: p.to_path_buf(),
                    source,
                })?;
                Some(Dir::open(p).map_err(|source| HlsError::Io {
                    path: p.to_path_buf(),
                    source,
                })?)
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

/// A file written under a temporary name, to be renamed into place.
struct Pending {
    dir: Dir,
    tmp: OsString,
    name: OsString,
}

/// The outputs, written but not yet in place.
pub(super) struct Written {
    pub tracks: Vec<TrackReport>,
    pending: Vec<Pending>,
}

impl Written {
    /// Renames every output into place and fsyncs their folders.
    pub(super) fn publish(self) -> Result<(), HlsError> {
        let mut dirs: Vec<Dir> = Vec::new();
        for p in &self.pending {
            p.dir
                .rename(&p.tmp, &p.name)
                .map_err(|source| HlsError::Io {
                    path: p.dir.join(&p.name),
                    source,
                })?;
            if !dirs.iter().any(|d| d.path() == p.dir.path()) {
                dirs.push(p.dir.clone());
            }
        }
        for d in dirs {
            rustix::fs::fsync(d.as_fd()).map_err(|e| HlsError::Io {
                path: d.path().to_path_buf(),
                source: e.into(),
            })?;
        }
        Ok(())
    }

    /// Removes the temporary files: nothing is left under a final name.
    pub(super) fn discard(self) {
        for p in &self.pending {
            let _ = p.dir.unlink(&p.tmp);
        }
    }
}

/// Writes every track.
pub(super) fn write(
    tracks: &[Track],
    resources: &Resources,
    keys: &Keys,
    work: &Dir,
    plan: &OutputPlan,
) -> Result<Written, HlsError> {
    let mut written = Written {
        tracks: Vec::new(),
        pending: Vec::new(),
    };
    let mut labels: Vec<String> = Vec::new();
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
        let result = write_track(
            track,
            &label,
            resources,
            keys,
            work,
            plan,
            &mut written.pending,
        );
        match result {
            Ok(report) => written.tracks.push(report),
            Err(e) => {
                written.discard();
                return Err(e);
            }
        }
    }
    Ok(written)
}

/// The output a track's part goes to.
enum Out {
    /// One file per init section.
    Files {
        dir: Dir,
        file: Option<File>,
        parts: usize,
    },
    /// One file per segment.
    Segments { dir: Dir },
}

/// One track, written.
#[allow(clippy::too_many_arguments)]
fn write_track(
    track: &Track,
    label: &str,
    resources: &Resources,
    keys: &Keys,
    work: &Dir,
    plan: &OutputPlan,
    pending: &mut Vec<Pending>,
) -> Result<TrackReport, HlsError> {
    let media = &track.media;
    let ext = extension(media.segments.first().map(|s| &s.uri));
    let mut out = match &plan.segments {
        Some(d) if track.kind == "main" => Out::Segments { dir: d.clone() },
        Some(d) => Out::Segments {
            dir: d
                .beneath(Path::new(label), true)
                .map_err(|source| HlsError::Io {
                    path: d.join(label.as_ref()),
                    source,
                })?,
        },
        None => Out::Files {
            dir: plan.dir.clone(),
            file: None,
            parts: 0,
        },
    };
    let mut report = TrackReport {
        kind: track.kind.to_string(),
        name: track.name.clone(),
        playlist: track.asked.to_string(),
        outputs: Vec::new(),
        segments: media.segments.len() as u64,
        decrypted: 0,
        bytes: 0,
        seconds: 0.0,
        gaps: Vec::new(),
    };
    let resource = |url: &Url| -> Result<&Resource, String> {
        let r = resources
            .find(url)
            .ok_or_else(|| format!("{url} was not fetched"))?;
        match &r.state {
            State::Kept | State::Fetched => Ok(r),
            State::Failed { why, .. } => Err(why.clone()),
            State::Pending => Err(format!("{url} was not fetched")),
        }
    };
    let mut map_in_file: Option<usize> = None;
    let mut maps_written: Vec<bool> = vec![false; media.maps.len()];
    for seg in &media.segments {
        macro_rules! gap {
            ($why:expr) => {
                push_gap(&mut report.gaps, seg.msn, seg.duration, $why)
            };
        }
        if seg.gap {
            gap!("the playlist marks it EXT-X-GAP".into());
            continue;
        }
        let r = match resource(&seg.uri) {
            Ok(r) => r,
            Err(why) => {
                gap!(why);
                continue;
            }
        };
        let key = match &seg.crypt {
            None => None,
            Some(c) => match keys.get(&c.key) {
                Ok(k) => Some((k, c)),
                Err(why) => {
                    gap!(why);
                    continue;
                }
            },
        };
        // The init section in force, written once per file (or once per segments folder).
        if let Some(m) = seg.map {
            let map = &media.maps[m];
            let map_src = match resource(&map.uri) {
                Ok(r) => r,
                Err(why) => {
                    gap!(format!("its init section: {why}"));
                    continue;
                }
            };
            let map_key = match &map.crypt {
                None => None,
                Some(c) => match keys.get(&c.key) {
                    Ok(k) => Some((k, c)),
                    Err(why) => {
                        gap!(format!("its init section: {why}"));
                        continue;
                    }
                },
            };
            match &mut out {
                Out::Files { dir, file, parts } => {
                    if map_in_file != Some(m) {
                        let f =
                            next_part(dir, plan, label, &ext, parts, file, pending, &mut report)?;
                        if let Err(why) = copy(work, map_src, map.range, map_key, f) {
                            gap!(format!("its init section: {why}"));
                            *file = None;
                            map_in_file = None;
                            continue;
                        }
                        map_in_file = Some(m);
                    }
                }
                Out::Segments { dir } => {
                    if !maps_written[m] {
                        let name = format!("init-{m}.{}", extension(Some(&map.uri)));
                        let (tmp, mut f) = create(dir, &name)?;
                        pending.push(Pending {
                            dir: dir.clone(),
                            tmp,
                            name: name.clone().into(),
                        });
                        if let Err(why) = copy(work, map_src, map.range, map_key, &mut f) {
                            let p = pending.pop().expect("just pushed");
                            let _ = p.dir.unlink(&p.tmp);
                            gap!(format!("its init section: {why}"));
                            continue;
                        }
                        sync(&f, dir, &name)?;
                        maps_written[m] = true;
                    }
                }
            }
        }
        let wrote = match &mut out {
            Out::Files { dir, file, parts } => {
                if file.is_none() {
                    next_part(dir, plan, label, &ext, parts, file, pending, &mut report)?;
                }
                let f = file.as_mut().expect("a part is open");
                copy(work, r, seg.range, key, f)
            }
            Out::Segments { dir } => {
                let name = format!("{}.{ext}", seg.msn);
                let (tmp, mut f) = create(dir, &name)?;
                pending.push(Pending {
                    dir: dir.clone(),
                    tmp,
                    name: name.clone().into(),
                });
                let wrote = copy(work, r, seg.range, key, &mut f);
                if wrote.is_ok() {
                    sync(&f, dir, &name)?;
                } else {
                    let p = pending.pop().expect("just pushed");
                    let _ = p.dir.unlink(&p.tmp);
                }
                wrote
            }
        };
        match wrote {
            Ok(n) => {
                report.bytes += n;
                report.seconds += seg.duration;
                report.decrypted += u64::from(key.is_some());
            }
            Err(why) => gap!(why),
        }
    }
    for g in &track.missed {
        report.gaps.push(g.clone());
    }
    report.gaps.sort_by_key(|g| g.first);
    match &mut out {
        Out::Files { dir, file, .. } => {
            if let Some(f) = file.take() {
                sync(&f, dir, &plan.file.to_string_lossy())?;
            }
            if report.outputs.is_empty() && report.gaps.is_empty() {
                // An empty playlist still makes its (empty) output.
                let mut none = None;
                let mut parts = 0;
                let f = next_part(
                    dir,
                    plan,
                    label,
                    &ext,
                    &mut parts,
                    &mut none,
                    pending,
                    &mut report,
                )?;
                sync(f, dir, &plan.file.to_string_lossy())?;
            }
        }
        Out::Segments { dir } => report.outputs.push(dir.path().to_path_buf()),
    }
    Ok(report)
}

/// Starts the track's next output file (closing the one open).
#[allow(clippy::too_many_arguments)]
fn next_part<'f>(
    dir: &Dir,
    plan: &OutputPlan,
    label: &str,
    ext: &str,
    parts: &mut usize,
    file: &'f mut Option<File>,
    pending: &mut Vec<Pending>,
    report: &mut TrackReport,
) -> Result<&'f mut File, HlsError> {
    if let Some(f) = file.take() {
        sync(&f, dir, &plan.file.to_string_lossy())?;
    }
    *parts += 1;
    let name: OsString = match (label.is_empty(), *parts) {
        (true, 1) => plan.file.clone(),
        (true, n) => format!("{}.part{n}.{ext}", plan.stem).into(),
        (false, 1) => format!("{}.{label}.{ext}", plan.stem).into(),
        (false, n) => format!("{}.{label}.part{n}.{ext}", plan.stem).into(),
    };
    let (tmp, f) = create(dir, &name.to_string_lossy())?;
    report.outputs.push(dir.join(&name));
    pending.push(Pending {
        dir: dir.clone(),
        tmp,
        name,
    });
    Ok(file.insert(f))
}

fn create(dir: &Dir, name: &str) -> Result<(OsString, File), HlsError> {
    dir.create_temp(name.as_ref())
        .map_err(|source| HlsError::Io {
            path: dir.join(name.as_ref()),
            source,
        })
}

fn sync(f: &File, dir: &Dir, name: &str) -> Result<(), HlsError> {
    f.sync_all().map_err(|source| HlsError::Io {
        path: dir.join(name.as_ref()),
        source,
    })
}

/// Appends a resource (or its byte range), decrypted when `key` says so, to `out`; returns the
/// bytes written. On an error `out` is cut back to where it was.
fn copy(
    work: &Dir,
    r: &Resource,
    range: Option<ByteRange>,
    key: Option<(&[u8; 16], &Crypt)>,
    out: &mut File,
) -> Result<u64, String> {
    let start = out.stream_position().map_err(|e| e.to_string())?;
    let result = copy_inner(work, r, range, key, out);
    if result.is_err() {
        let cut = out
            .set_len(start)
            .and_then(|()| out.seek(SeekFrom::Start(start)).map(drop));
        if let Err(e) = cut {
            return Err(format!("cannot cut the output back: {e}"));
        }
    }
    result
}

fn copy_inner(
    work: &Dir,
    r: &Resource,
    range: Option<ByteRange>,
    key: Option<(&[u8; 16], &Crypt)>,
    out: &mut File,
) -> Result<u64, String> {
    let io = |e: std::io::Error| format!("{}: {e}", work.join(&r.name).display());
    let mut src = work.open_std(&r.name, OFlags::RDONLY).map_err(io)?;
    let size = src.metadata().map_err(io)?.len();
    let (offset, len) = match range {
        None => (0, size),
        Some(b) => {
            if b.offset.saturating_add(b.len) > size {
                return Err(format!(
                    "{} is {size} bytes, shorter than its byte range {}@{}",
                    r.url, b.len, b.offset
                ));
            }
            (b.offset, b.len)
        }
    };
    src.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut src = src.take(len);
    let mut buf = vec![0u8; CHUNK.min(len as usize).max(1)];
    let mut plain = Vec::new();
    let mut dec = key.map(|(k, c)| Decryptor::new(k, &c.iv));
    let mut written = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        let bytes = match &mut dec {
            None => &buf[..n],
            Some(d) => {
                plain.clear();
                d.update(&buf[..n], &mut plain);
                &plain[..]
            }
        };
        out.write_all(bytes).map_err(|e| format!("write: {e}"))?;
        written += bytes.len() as u64;
    }
    if let Some(d) = dec {
        plain.clear();
        d.finish(&mut plain)
            .map_err(|e| format!("{}: {e}", r.url))?;
        out.write_all(&plain).map_err(|e| format!("write: {e}"))?;
        written += plain.len() as u64;
    }
    Ok(written)
}

/// Adds `msn` to the gaps, joining the last stretch when it follows it for the same reason.
fn push_gap(gaps: &mut Vec<Gap>, msn: u64, seconds: f64, reason: String) {
    tracing::warn!("segment {msn} missing: {reason}");
    if let Some(g) = gaps.last_mut()
        && g.last + 1 == msn
        && g.reason == reason
    {
        g.last = msn;
        g.seconds += seconds;
        return;
    }
    gaps.push(Gap {
        first: msn,
        last: msn,
        seconds,
        reason,
    });
}

/// A file extension from a URL's path: 1-5 ASCII letters or digits, else `ts`.
fn extension(url: Option<&Url>) -> String {
    url.and_then(|u| {
        let last = u.path_segments()?.next_back()?;
        let (_, ext) = last.rsplit_once('.')?;
        (!ext.is_empty() && ext.len() <= 5 && ext.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| ext.to_ascii_lowercase())
    })
    .unwrap_or_else(|| "ts".into())
}

/// A name from a playlist made safe for a file name: `[A-Za-z0-9_-]`, at most 32, never empty.
fn safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if s.is_empty() { "track".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_playlists_never_become_paths() {
        assert_eq!(safe("../../etc/passwd"), "______etc_passwd");
        assert_eq!(safe(""), "track");
        assert_eq!(safe("English (US)"), "English__US_");
        assert_eq!(safe(&"x".repeat(100)).len(), 32);
        let u = |s: &str| Url::parse(s).expect("test input");
        assert_eq!(extension(Some(&u("http://h/a/seg_1.TS?x=1"))), "ts");
        assert_eq!(extension(Some(&u("http://h/a/init.mp4"))), "mp4");
        assert_eq!(extension(Some(&u("http://h/a/x.../"))), "ts");
        assert_eq!(extension(Some(&u("http://h/a/x.m4s%2F..%2Fy"))), "ts");
        assert_eq!(extension(None), "ts");
    }

    #[test]
    fn gaps_join_runs_of_the_same_reason() {
        let mut g = Vec::new();
        push_gap(&mut g, 4, 1.0, "a".into());
        push_gap(&mut g, 5, 2.0, "a".into());
        push_gap(&mut g, 6, 1.0, "b".into());
        push_gap(&mut g, 8, 1.0, "b".into());
        let spans: Vec<_> = g.iter().map(|g| (g.first, g.last, g.seconds)).collect();
        assert_eq!(spans, [(4, 5, 3.0), (6, 6, 1.0), (8, 8, 1.0)]);
    }
}
