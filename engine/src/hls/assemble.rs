//! The pieces of a stream's download: its resources (each segment's or init section's URL,
//! its file in the work folder, how it stands, which segment uses it last), its keys (fetched
//! once each, on first use, kept in memory only), and one segment's bytes appended to an output
//! (its byte range of the resource, AES-128 decrypted), cut back on any error.
//!
//! Not here: the order of writing and the outputs (`writer.rs`), fetching (`fetch.rs`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use rustix::fs::OFlags;
use url::Url;

use super::Gap;
use super::crypt::Decryptor;
use super::fetch::{Resource, State, file_name};
use super::playlist::{ByteRange, Crypt};
use super::track::Track;
use crate::backend::nofollow::Dir;
use crate::hub::api::Api;

/// Bytes read from a resource file at a time.
const CHUNK: usize = 1 << 20;

/// What names a resource: its URL (without a fragment) and, for a byte range fetched on its
/// own, that range.
type Key = (Url, Option<ByteRange>);

/// Every resource the tracks need, each once. A segment or init section with a byte range is
/// a resource of its own (only its bytes are fetched, and it is held, written and resumed like
/// any segment), unless its server answered a byte range with the whole resource: then every
/// range of that URL shares one resource, fetched whole.
#[derive(Default)]
pub(super) struct Resources {
    pub list: Vec<Resource>,
    by_key: HashMap<Key, usize>,
    /// The last (track, segment index) that uses each resource.
    last: HashMap<usize, (usize, usize)>,
    /// URLs fetched whole: their server does not serve byte ranges.
    whole: HashSet<Url>,
}

impl Resources {
    fn key(&self, url: &Url, range: Option<ByteRange>) -> Key {
        let mut url = url.clone();
        url.set_fragment(None);
        let range = range.filter(|_| !self.whole.contains(&url));
        (url, range)
    }

    fn add(&mut self, url: &Url, range: Option<ByteRange>) -> usize {
        let key = self.key(url, range);
        if let Some(&i) = self.by_key.get(&key) {
            return i;
        }
        self.list.push(Resource {
            name: file_name(&key.0, key.1),
            url: key.0.clone(),
            window: key.1,
            state: State::Pending,
            needed: false,
        });
        self.by_key.insert(key, self.list.len() - 1);
        self.list.len() - 1
    }

    /// Registers the tracks' resources and marks those still needed: used by a segment at or
    /// after `from(track)` (the next one its output will write), or an init section of one.
    pub(super) fn index(&mut self, tracks: &[Track], from: impl Fn(usize) -> usize) {
        for r in &mut self.list {
            r.needed = false;
        }
        for (t, track) in tracks.iter().enumerate() {
            let start = from(t);
            for (i, s) in track.media.segments.iter().enumerate() {
                if s.gap {
                    continue;
                }
                let r = self.add(&s.uri, s.range);
                self.last.insert(r, (t, i));
                if i >= start {
                    self.list[r].needed = true;
                    if let Some(m) = s.map {
                        let map = &track.media.maps[m];
                        let m = self.add(&map.uri, map.range);
                        self.list[m].needed = true;
                    }
                }
            }
        }
    }

    /// Keeps only the resources the segments and init sections of `tracks` name, each as it
    /// stands (a live track forgot the segments that used the others, or their URLs are now
    /// fetched whole). The last uses are for [`Resources::index`] to find again.
    pub(super) fn rebuild(&mut self, tracks: &[Track]) {
        let old = std::mem::take(self);
        self.whole = old.whole.clone();
        for t in tracks {
            let maps = t.media.maps.iter().map(|m| (&m.uri, m.range));
            for (url, range) in t
                .media
                .segments
                .iter()
                .map(|s| (&s.uri, s.range))
                .chain(maps)
            {
                let key = self.key(url, range);
                if self.by_key.contains_key(&key) {
                    continue;
                }
                if let Some(&i) = old.by_key.get(&key) {
                    self.list.push(old.list[i].clone());
                    self.by_key.insert(key, self.list.len() - 1);
                }
            }
        }
    }

    /// From now on, every byte range of `url` comes from the whole resource, fetched once.
    pub(super) fn fetch_whole(&mut self, url: &Url, tracks: &[Track]) {
        let mut url = url.clone();
        url.set_fragment(None);
        self.whole.insert(url);
        self.rebuild(tracks);
    }

    /// The last (track, segment index) that uses the resource of `url` and `range`.
    pub(super) fn last_use(&self, url: &Url, range: Option<ByteRange>) -> Option<(usize, usize)> {
        self.by_key
            .get(&self.key(url, range))
            .and_then(|i| self.last.get(i))
            .copied()
    }

    /// How the resource of `url` and `range` stands.
    pub(super) fn state(&self, url: &Url, range: Option<ByteRange>) -> Option<&State> {
        self.find(url, range).map(|r| &r.state)
    }

    /// The resource of `url` and `range`.
    pub(super) fn find(&self, url: &Url, range: Option<ByteRange>) -> Option<&Resource> {
        self.by_key
            .get(&self.key(url, range))
            .map(|&i| &self.list[i])
    }

    /// Sets the needed resources whose state `which` picks back to pending, for another round.
    pub(super) fn retry(&mut self, which: impl Fn(&State) -> bool) {
        for r in &mut self.list {
            if r.needed && which(&r.state) {
                r.state = State::Pending;
            }
        }
    }
}

/// The keys, fetched once each on first use; kept in memory only.
pub(super) struct KeySource {
    api: Api,
    map: HashMap<Url, Result<[u8; 16], String>>,
    fetched: u64,
}

impl KeySource {
    pub(super) fn new(api: Api) -> KeySource {
        KeySource {
            api,
            map: HashMap::new(),
            fetched: 0,
        }
    }

    pub(super) fn fetched(&self) -> u64 {
        self.fetched
    }

    /// The key at `url`: fetched the first time, remembered (or its failure) after.
    pub(super) fn get(&mut self, url: &Url) -> Result<[u8; 16], String> {
        if !self.map.contains_key(url) {
            self.fetched += 1;
            let key = fetch_key(&self.api, url);
            self.map.insert(url.clone(), key);
        }
        self.map[url].clone()
    }
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

/// Where a resource's bytes are: held in memory (handed over by the engine), or its file in
/// the work folder.
#[derive(Clone, Copy)]
pub(super) enum Src<'a> {
    Memory(&'a [u8]),
    File(&'a Dir),
}

/// Appends a resource (or its byte range), decrypted when `key` says so, to `out`; returns the
/// bytes written. On an error `out` is cut back to where it was. A resource fetched as its
/// byte range (a window) is all of it.
pub(super) fn copy(
    src: Src<'_>,
    r: &Resource,
    range: Option<ByteRange>,
    key: Option<&([u8; 16], &Crypt)>,
    out: &mut File,
) -> Result<u64, String> {
    all_or_nothing(out, |out| copy_inner(src, r, range, key, u64::MAX, out))
}

/// Appends `bytes` to `out`; returns how many. On an error `out` is cut back to where it was.
pub(super) fn append(out: &mut File, bytes: &[u8]) -> Result<u64, String> {
    all_or_nothing(out, |out| {
        out.write_all(bytes)
            .map(|()| bytes.len() as u64)
            .map_err(|e| format!("write: {e}"))
    })
}

/// Runs `write` on `out`, and cuts `out` back to where it was when it fails.
fn all_or_nothing(
    out: &mut File,
    write: impl FnOnce(&mut File) -> Result<u64, String>,
) -> Result<u64, String> {
    let start = out.stream_position().map_err(|e| e.to_string())?;
    let result = write(out);
    if let Err(why) = &result {
        let cut = out
            .set_len(start)
            .and_then(|()| out.seek(SeekFrom::Start(start)).map(drop));
        if let Err(e) = cut {
            return Err(format!("{why}; cannot cut the output back: {e}"));
        }
    }
    result
}

/// The resource's bytes `range` picks: (offset, length), checked against its `size` and
/// refused past `limit` bytes.
fn pick(
    r: &Resource,
    range: Option<ByteRange>,
    size: u64,
    limit: u64,
) -> Result<(u64, u64), String> {
    // A resource fetched as its byte range (a window) is all of it.
    let (offset, len) = match range.filter(|_| r.window.is_none()) {
        None => (0, size),
        Some(b) if b.offset.saturating_add(b.len) > size => {
            return Err(format!(
                "{} is {size} bytes, shorter than its byte range {}@{}",
                r.url, b.len, b.offset
            ));
        }
        Some(b) => (b.offset, b.len),
    };
    if len > limit {
        return Err(format!("{}: {len} bytes, more than {limit} allowed", r.url));
    }
    Ok((offset, len))
}

/// Decrypts (when keyed) and writes what it is given, in order.
struct Emit<'o> {
    dec: Option<Decryptor>,
    plain: Vec<u8>,
    out: &'o mut dyn Write,
    written: u64,
}

impl Emit<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), String> {
        let bytes = match &mut self.dec {
            None => bytes,
            Some(d) => {
                self.plain.clear();
                d.update(bytes, &mut self.plain);
                &self.plain[..]
            }
        };
        self.out
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn finish(mut self, r: &Resource) -> Result<u64, String> {
        if let Some(d) = self.dec.take() {
            self.plain.clear();
            d.finish(&mut self.plain)
                .map_err(|e| format!("{}: {e}", r.url))?;
            self.out
                .write_all(&self.plain)
                .map_err(|e| format!("write: {e}"))?;
            self.written += self.plain.len() as u64;
        }
        Ok(self.written)
    }
}

/// A resource's bytes (or its byte range), decrypted when `key` says so, in memory: for what
/// is rewritten before it is written (subtitles). At most `limit` bytes.
pub(super) fn read(
    src: Src<'_>,
    r: &Resource,
    range: Option<ByteRange>,
    key: Option<&([u8; 16], &Crypt)>,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    copy_inner(src, r, range, key, limit, &mut out)?;
    Ok(out)
}

fn copy_inner(
    src: Src<'_>,
    r: &Resource,
    range: Option<ByteRange>,
    key: Option<&([u8; 16], &Crypt)>,
    limit: u64,
    out: &mut dyn Write,
) -> Result<u64, String> {
    let mut emit = Emit {
        dec: key.map(|(k, c)| Decryptor::new(k, &c.iv)),
        plain: Vec::new(),
        out,
        written: 0,
    };
    let len = match src {
        Src::Memory(bytes) => {
            let (offset, len) = pick(r, range, bytes.len() as u64, limit)?;
            // In bounds: `pick` checked them against the length.
            let bytes = &bytes[offset as usize..(offset + len) as usize];
            for chunk in bytes.chunks(CHUNK) {
                emit.put(chunk)?;
            }
            len
        }
        Src::File(work) => {
            let io = |e: std::io::Error| format!("{}: {e}", work.join(&r.name).display());
            let mut file = work.open_std(&r.name, OFlags::RDONLY).map_err(io)?;
            let (offset, len) = pick(r, range, file.metadata().map_err(io)?.len(), limit)?;
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut file = file.take(len);
            let mut read = 0;
            BUF.with_borrow_mut(|buf| {
                buf.resize(CHUNK, 0);
                loop {
                    let n = file.read(buf).map_err(io)?;
                    if n == 0 {
                        return Ok::<(), String>(());
                    }
                    read += n as u64;
                    emit.put(&buf[..n])?;
                }
            })?;
            if read != len {
                return Err(format!("{}: {read} of {len} bytes read", r.url));
            }
            len
        }
    };
    let written = emit.finish(r)?;
    if written != len && key.is_none() {
        return Err(format!("{}: {written} of {len} bytes read", r.url));
    }
    Ok(written)
}

thread_local! {
    /// The read buffer, reused: one allocation per thread, not one per segment.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Adds `msn` to the gaps, joining the last stretch when it follows it for the same reason.
pub(super) fn push_gap(gaps: &mut Vec<Gap>, msn: u64, seconds: f64, reason: String) {
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
pub(super) fn extension(url: Option<&Url>) -> String {
    url.and_then(|u| {
        let last = u.path_segments()?.next_back()?;
        let (_, ext) = last.rsplit_once('.')?;
        (!ext.is_empty() && ext.len() <= 5 && ext.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| ext.to_ascii_lowercase())
    })
    .unwrap_or_else(|| "ts".into())
}

/// A name from a playlist made safe for a file name: `[A-Za-z0-9_-]`, at most 32, never empty.
pub(super) fn safe(name: &str) -> String {
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
