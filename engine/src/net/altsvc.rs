//! What ferry remembers about HTTP/3 per origin between runs: where an origin advertised it
//! (an `Alt-Svc: h3=":PORT"` field, RFC 7838, kept for its `ma`), and where it failed (no
//! answer, refused), kept for [`FAILED_FOR`] so the next run does not pay the handshake's
//! deadline again. Parsing and the memory are sans-IO, the time passed in; [`Store`] reads
//! and writes the memory as `alt-svc.json` in ferry's cache folder.
//!
//! Invariants: only `h3` alternatives on the origin's own host are kept (another host would
//! need its own certificate check and DNS, and lets an answer send ferry anywhere); a field
//! over [`MAX_FIELD`] bytes, or with more than [`MAX_ALTERNATIVES`] entries, is ignored; the
//! memory holds at most [`MAX_ORIGINS`] origins (the ones that expire first go); the file is
//! read up to [`MAX_FILE`] bytes, anything malformed in it is dropped, and it is written by
//! rename without following symlinks. Not here: the QUIC connection (`quic.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest `Alt-Svc` field read.
const MAX_FIELD: usize = 4096;
/// The most alternatives one field may list.
const MAX_ALTERNATIVES: usize = 16;
/// The most origins remembered.
const MAX_ORIGINS: usize = 1024;
/// The largest memory file read.
const MAX_FILE: u64 = 1 << 20;
/// How long an alternative is kept when the field gives no `ma` (RFC 7838 3.1: 24 hours).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The longest `ma` taken: a week.
const MAX_AGE_CAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a failed HTTP/3 origin goes over TCP without trying QUIC again.
pub(crate) const FAILED_FOR: Duration = Duration::from_secs(10 * 60);

/// What an `Alt-Svc` field says about HTTP/3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Advert {
    /// `clear`: forget the origin's alternatives.
    Clear,
    /// HTTP/3 on this port of the origin's host, for this long.
    H3 { port: u16, max_age: Duration },
    /// No usable `h3` alternative (other protocols, other hosts).
    Nothing,
}

/// Parses an `Alt-Svc` field value; `None` when it is malformed or too large.
pub(crate) fn parse(value: &str) -> Option<Advert> {
    if value.len() > MAX_FIELD {
        return None;
    }
    let value = value.trim();
    if value.eq_ignore_ascii_case("clear") {
        return Some(Advert::Clear);
    }
    let entries = split_outside_quotes(value, ',');
    if entries.len() > MAX_ALTERNATIVES {
        return None;
    }
    let mut found = None;
    for entry in entries {
        let mut params = split_outside_quotes(entry, ';').into_iter();
        let (proto, authority) = params.next()?.split_once('=')?;
        let authority = unquote(authority.trim())?;
        let mut max_age = DEFAULT_MAX_AGE;
        for p in params {
            let Some((name, v)) = p.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("ma") {
                let secs: u64 = unquote(v.trim())?.parse().ok()?;
                max_age = Duration::from_secs(secs).min(MAX_AGE_CAP);
            }
        }
        // `:PORT` (the same host) only: `host:PORT` names another host.
        let Some(port) = authority.strip_prefix(':') else {
            continue;
        };
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        if proto.trim() == "h3" && found.is_none() {
            found = Some(Advert::H3 { port, max_age });
        }
    }
    Some(found.unwrap_or(Advert::Nothing))
}

/// `s` split at `sep` where not inside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A token or a quoted string without its quotes (no escapes are needed in what is read).
fn unquote(s: &str) -> Option<&str> {
    match s.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|r| !r.contains(['"', '\\'])),
        None => Some(s),
    }
}

/// What is remembered about one origin (`host:port`), until `until` (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// The origin advertised HTTP/3 on `port`.
    H3 { port: u16, until: u64 },
    /// HTTP/3 to it on `port` failed, `why`, at `at`.
    Failed {
        port: u16,
        why: String,
        at: u64,
        until: u64,
    },
}

impl Entry {
    fn until(&self) -> u64 {
        match self {
            Entry::H3 { until, .. } | Entry::Failed { until, .. } => *until,
        }
    }
}

/// The per-origin memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Memory {
    origins: BTreeMap<String, Entry>,
}

impl Memory {
    /// What is remembered about `origin` at `now`, if it has not expired.
    pub(crate) fn get(&self, origin: &str, now: u64) -> Option<&Entry> {
        self.origins.get(origin).filter(|e| e.until() > now)
    }

    /// Records `advert` from `origin` at `now`; whether the memory changed.
    pub(crate) fn advertised(&mut self, origin: &str, advert: &Advert, now: u64) -> bool {
        match advert {
            Advert::Clear => self.origins.remove(origin).is_some(),
            Advert::Nothing => false,
            Advert::H3 { port, max_age } => {
                // A failure on that port stays until it expires: an advertisement does not
                // make QUIC pass the path's firewall. One on another port does not count.
                if let Some(Entry::Failed { port: failed, .. }) = self.get(origin, now)
                    && failed == port
                {
                    return false;
                }
                let entry = Entry::H3 {
                    port: *port,
                    until: now.saturating_add(max_age.as_secs()),
                };
                self.put(origin, entry, now)
            }
        }
    }

    /// Records that HTTP/3 to `origin` on `port` failed at `now`, `why`.
    pub(crate) fn failed(&mut self, origin: &str, port: u16, why: &str, now: u64) -> bool {
        let entry = Entry::Failed {
            port,
            why: why.chars().take(300).collect(),
            at: now,
            until: now.saturating_add(FAILED_FOR.as_secs()),
        };
        self.put(origin, entry, now)
    }

    fn put(&mut self, origin: &str, entry: Entry, now: u64) -> bool {
        if self.origins.get(origin) == Some(&entry) {
            return false;
        }
        self.origins.insert(origin.to_owned(), entry);
        self.trim(now);
        true
    }

    /// Drops what expired, then the entries that expire first beyond [`MAX_ORIGINS`].
    fn trim(&mut self, now: u64) {
        self.origins.retain(|_, e| e.until() > now);
        while self.origins.len() > MAX_ORIGINS {
            let first = self
                .origins
                .iter()
                .min_by_key(|(_, e)| e.until())
                .map(|(k, _)| k.clone());
            match first {
                Some(k) => self.origins.remove(&k),
                None => break,
            };
        }
    }
}

/// `alt-svc.json` in ferry's cache folder: `$FERRY_CACHE_DIR`, else `$XDG_CACHE_HOME/ferry`,
/// else `~/.cache/ferry`.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: Option<PathBuf>,
}

const FILE: &str = "alt-svc.json";

impl Store {
    /// The store in the default cache folder (none when no folder can be named).
    pub(crate) fn default_dir() -> Store {
        Store {
            dir: crate::config::ferry_cache_dir(),
        }
    }

    /// The memory as last written; empty when there is none or it cannot be read.
    pub(crate) fn load(&self) -> Memory {
        let Some(dir) = &self.dir else {
            return Memory::default();
        };
        match read_bounded(dir) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: not a memory ferry wrote ({e}); starting afresh",
                    dir.join(FILE).display()
                );
                Memory::default()
            }),
            Ok(None) => Memory::default(),
            Err(e) => {
                tracing::debug!(error = %e, "{}: not read", dir.join(FILE).display());
                Memory::default()
            }
        }
    }

    /// Writes `memory` (a new file renamed over the old; no symlink followed). A failure only
    /// costs the next run what this one learnt.
    pub(crate) fn save(&self, memory: &Memory) {
        let Some(dir) = &self.dir else { return };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let d = crate::backend::nofollow::Dir::open(dir)?;
            let bytes = serde_json::to_vec_pretty(memory).map_err(std::io::Error::other)?;
            d.write_atomic(FILE.as_ref(), &bytes)
        };
        if let Err(e) = write() {
            tracing::debug!(error = %e, "{}: not written", dir.join(FILE).display());
        }
    }
}

/// The file's bytes, read beneath `dir` without following a symlink, up to [`MAX_FILE`].
fn read_bounded(dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let d = match crate::backend::nofollow::Dir::open(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let file = match d.open_std(FILE.as_ref(), rustix::fs::OFlags::RDONLY) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests;
