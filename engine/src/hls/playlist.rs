//! HLS playlists (RFC 8216) read into what a download needs: a master playlist's variants and
//! renditions, or a media playlist's segments fully resolved (media sequence number,
//! discontinuity sequence number, absolute URI, byte range, the AES-128 key and IV in force,
//! the init section in force).
//!
//! Sans-IO: text and the playlist's final URL in, plain data out. Strict only where the RFC says
//! a client MUST fail (two `EXT-X-VERSION`s, master and media tags mixed, an offset-less byte
//! range with no earlier range of the same resource, an encrypted `EXT-X-MAP` without an `IV`);
//! lenient with a warning where servers commonly break a SHOULD (an `EXTINF` over the target
//! duration, a missing `EXTINF`). A remote playlist names only `http`/`https` URIs: any other
//! scheme refuses the whole playlist. Sizes and counts are bounded. Unknown tags are ignored
//! (section 6.3.1). Not here: fetching, choosing a variant (`select.rs`), decrypting.

use std::collections::HashMap;

use url::Url;

mod types;
mod values;

pub(crate) use types::*;
use values::{attributes, byte_range, decimal, iv, resolution};

/// A playlist larger than this is refused (a 24-hour stream of 1 s segments with long signed
/// URLs is a few tens of MiB at most; the bound keeps a hostile server from filling memory).
pub(crate) const MAX_PLAYLIST_BYTES: usize = 32 << 20;
/// Segments in one media playlist (a day of 1 s segments is 86,400).
pub(crate) const MAX_SEGMENTS: usize = 500_000;
/// Variants or renditions in one master playlist.
const MAX_ENTRIES: usize = 4096;
/// A URI longer than this is refused (signed CDN URLs run to a few KiB).
const MAX_URI: usize = 16 << 10;

/// Why a playlist cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub(crate) struct ParseError {
    /// What is wrong, naming the line where there is one.
    pub what: String,
}

fn fail<T>(line: usize, what: impl std::fmt::Display) -> Result<T, ParseError> {
    Err(ParseError {
        what: format!("line {line}: {what}"),
    })
}

/// Which kind a tag belongs to, for the "never both" rule (section 4.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Master,
    Media,
}

/// The key state of one `KEYFORMAT`.
#[derive(Debug, Clone)]
enum KeyState {
    Aes128 { uri: Url, iv: Option<[u8; 16]> },
    SampleAes,
    Other(String),
}

/// Reads `text`, fetched from `base` (its final URL after redirects).
pub(crate) fn parse(text: &[u8], base: &Url) -> Result<Playlist, ParseError> {
    if text.len() > MAX_PLAYLIST_BYTES {
        return Err(ParseError {
            what: format!(
                "playlist of {} bytes is larger than the {} MiB ferry accepts",
                text.len(),
                MAX_PLAYLIST_BYTES >> 20
            ),
        });
    }
    let text = std::str::from_utf8(text).map_err(|e| ParseError {
        what: format!("playlist is not UTF-8 ({e}); RFC 8216 section 4.1 requires it"),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r').trim());
    if lines.next() != Some("#EXTM3U") {
        return Err(ParseError {
            what: "not an HLS playlist: the first line is not #EXTM3U".into(),
        });
    }
    Parser::new(base).run(lines)
}

struct Parser<'b> {
    base: &'b Url,
    kind: Option<(Kind, usize)>,
    version_seen: bool,
    master: Master,
    media: Media,
    warnings: Vec<String>,
    // Media state.
    msn: u64,
    dsn: u64,
    pending_duration: Option<f64>,
    pending_range: Option<(u64, Option<u64>, usize)>,
    pending_discontinuity: bool,
    pending_gap: bool,
    keys: HashMap<String, KeyState>,
    map: Option<usize>,
    /// The previous segment's resource and range end, for an offset-less `EXT-X-BYTERANGE`.
    last_range: Option<(Url, u64)>,
    over_target_warned: bool,
    missing_extinf_warned: bool,
    /// An http:// URI in an https:// playlist was warned about (`resolve` takes `&self`).
    downgrade_warned: std::cell::Cell<bool>,
    warnings_late: std::cell::RefCell<Vec<String>>,
    // Master state.
    pending_variant: Option<(Variant, usize)>,
}

impl<'b> Parser<'b> {
    fn new(base: &'b Url) -> Parser<'b> {
        Parser {
            base,
            kind: None,
            version_seen: false,
            master: Master::default(),
            media: Media::default(),
            warnings: Vec::new(),
            msn: 0,
            dsn: 0,
            pending_duration: None,
            pending_range: None,
            pending_discontinuity: false,
            pending_gap: false,
            keys: HashMap::new(),
            map: None,
            last_range: None,
            over_target_warned: false,
            missing_extinf_warned: false,
            downgrade_warned: std::cell::Cell::new(false),
            warnings_late: std::cell::RefCell::new(Vec::new()),
            pending_variant: None,
        }
    }

    fn run<'t>(mut self, lines: impl Iterator<Item = &'t str>) -> Result<Playlist, ParseError> {
        let mut target_seen = false;
        let result = self.lines(lines, &mut target_seen);
        let late = self.warnings_late.take();
        self.warnings.extend(late);
        result?;
        self.finish(target_seen)
    }

    fn lines<'t>(
        &mut self,
        lines: impl Iterator<Item = &'t str>,
        target_seen: &mut bool,
    ) -> Result<(), ParseError> {
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            if line.is_empty() {
                continue;
            }
            if let Some(tag) = line.strip_prefix("#EXT") {
                let (name, value) = match tag.split_once(':') {
                    Some((name, value)) => (name, Some(value)),
                    None => (tag, None),
                };
                if name == "-X-TARGETDURATION" {
                    *target_seen = true;
                }
                self.tag(n, name, value)?;
            } else if line.starts_with('#') {
                continue;
            } else {
                self.uri_line(n, line)?;
            }
        }
        Ok(())
    }

    fn finish(mut self, target_seen: bool) -> Result<Playlist, ParseError> {
        match self.kind.map(|(k, _)| k) {
            Some(Kind::Master) => {
                if self.pending_variant.is_some() {
                    self.warnings
                        .push("the last EXT-X-STREAM-INF has no URI line; ignored".into());
                }
                if self.master.variants.is_empty() {
                    return Err(ParseError {
                        what: "master playlist lists no variant (EXT-X-STREAM-INF)".into(),
                    });
                }
                self.master.warnings = self.warnings;
                Ok(Playlist::Master(self.master))
            }
            _ => {
                if !target_seen {
                    let longest = self
                        .media
                        .segments
                        .iter()
                        .map(|s| s.duration)
                        .fold(0.0, f64::max);
                    self.media.target_duration = longest.round() as u64;
                    self.warnings.push(
                        "media playlist has no EXT-X-TARGETDURATION (required); using its longest segment".into(),
                    );
                }
                self.media.warnings = self.warnings;
                Ok(Playlist::Media(self.media))
            }
        }
    }

    fn kind(&mut self, n: usize, kind: Kind, tag: &str) -> Result<(), ParseError> {
        match self.kind {
            None => {
                self.kind = Some((kind, n));
                Ok(())
            }
            Some((k, _)) if k == kind => Ok(()),
            Some((_, first)) => fail(
                n,
                format!(
                    "#EXT{tag} is a {} tag, but line {first} made this a {} playlist; RFC 8216 section 4.3.4 says such a playlist MUST fail",
                    name_of(kind),
                    name_of(self.kind.map_or(kind, |(k, _)| k))
                ),
            ),
        }
    }

    fn tag<'t>(&mut self, n: usize, name: &str, value: Option<&'t str>) -> Result<(), ParseError> {
        let need = |v: Option<&'t str>| -> Result<&'t str, ParseError> {
            match v {
                Some(v) => Ok(v),
                None => fail(n, format!("#EXT{name} needs a value")),
            }
        };
        match name {
            "-X-VERSION" => {
                if self.version_seen {
                    return fail(
                        n,
                        "a second EXT-X-VERSION; RFC 8216 section 4.3.1.2 says the playlist MUST fail",
                    );
                }
                self.version_seen = true;
            }
            "INF" => {
                self.kind(n, Kind::Media, name)?;
                let v = need(value)?;
                let number = v.split(',').next().unwrap_or("").trim();
                let d: f64 = number
                    .parse()
                    .ok()
                    .filter(|d: &f64| d.is_finite() && *d >= 0.0)
                    .map_or_else(
                        || fail(n, format!("EXTINF duration {number:?} is not a number")),
                        Ok,
                    )?;
                self.pending_duration = Some(d);
            }
            "-X-TARGETDURATION" => {
                self.kind(n, Kind::Media, name)?;
                self.media.target_duration = decimal(n, need(value)?, "EXT-X-TARGETDURATION")?;
            }
            "-X-MEDIA-SEQUENCE" => {
                self.kind(n, Kind::Media, name)?;
                let v = decimal(n, need(value)?, "EXT-X-MEDIA-SEQUENCE")?;
                if self.media.segments.is_empty() {
                    self.media.media_sequence = v;
                    self.msn = v;
                } else {
                    self.warnings.push(format!(
                        "line {n}: EXT-X-MEDIA-SEQUENCE after the first segment; ignored"
                    ));
                }
            }
            "-X-DISCONTINUITY-SEQUENCE" => {
                self.kind(n, Kind::Media, name)?;
                let v = decimal(n, need(value)?, "EXT-X-DISCONTINUITY-SEQUENCE")?;
                if self.media.segments.is_empty() {
                    self.dsn = v;
                } else {
                    self.warnings.push(format!(
                        "line {n}: EXT-X-DISCONTINUITY-SEQUENCE after the first segment; ignored"
                    ));
                }
            }
            "-X-ENDLIST" => {
                self.kind(n, Kind::Media, name)?;
                self.media.end_list = true;
            }
            "-X-PLAYLIST-TYPE" => {
                self.kind(n, Kind::Media, name)?;
                self.media.kind = match need(value)? {
                    "VOD" => Some(PlaylistType::Vod),
                    "EVENT" => Some(PlaylistType::Event),
                    other => {
                        self.warnings.push(format!(
                            "line {n}: unknown EXT-X-PLAYLIST-TYPE {other:?}; ignored"
                        ));
                        None
                    }
                };
            }
            "-X-I-FRAMES-ONLY" => {
                return fail(
                    n,
                    "an I-frame-only playlist (EXT-X-I-FRAMES-ONLY) holds no downloadable media; give the media playlist's URL",
                );
            }
            "-X-DISCONTINUITY" => {
                self.kind(n, Kind::Media, name)?;
                self.pending_discontinuity = true;
            }
            "-X-GAP" => {
                self.kind(n, Kind::Media, name)?;
                self.pending_gap = true;
            }
            "-X-BYTERANGE" => {
                self.kind(n, Kind::Media, name)?;
                let (len, offset) = byte_range(n, need(value)?)?;
                self.pending_range = Some((len, offset, n));
            }
            "-X-KEY" => {
                self.kind(n, Kind::Media, name)?;
                self.key(n, need(value)?)?;
            }
            "-X-MAP" => {
                self.kind(n, Kind::Media, name)?;
                self.map_tag(n, need(value)?)?;
            }
            "-X-STREAM-INF" => {
                self.kind(n, Kind::Master, name)?;
                if self.pending_variant.is_some() {
                    self.warnings.push(format!(
                        "line {n}: EXT-X-STREAM-INF follows one that had no URI line; the earlier one is ignored"
                    ));
                }
                let a = attributes(n, need(value)?)?;
                let bandwidth = match a.get("BANDWIDTH") {
                    Some(v) => decimal(n, v, "BANDWIDTH")?,
                    None => {
                        self.warnings.push(format!(
                            "line {n}: EXT-X-STREAM-INF without BANDWIDTH (required)"
                        ));
                        0
                    }
                };
                let average_bandwidth = a
                    .get("AVERAGE-BANDWIDTH")
                    .map(|v| decimal(n, v, "AVERAGE-BANDWIDTH"))
                    .transpose()?;
                let resolution = a.get("RESOLUTION").map(|v| resolution(n, v)).transpose()?;
                let variant = Variant {
                    uri: self.base.clone(),
                    bandwidth,
                    average_bandwidth,
                    resolution,
                    codecs: a.get("CODECS").map(|s| s.to_string()),
                    audio: a.get("AUDIO").map(|s| s.to_string()),
                    subtitles: a.get("SUBTITLES").map(|s| s.to_string()),
                };
                self.pending_variant = Some((variant, n));
            }
            "-X-MEDIA" => {
                self.kind(n, Kind::Master, name)?;
                let a = attributes(n, need(value)?)?;
                let kind = match a.get("TYPE") {
                    Some("AUDIO") => MediaType::Audio,
                    Some("VIDEO") => MediaType::Video,
                    Some("SUBTITLES") => MediaType::Subtitles,
                    Some("CLOSED-CAPTIONS") => MediaType::ClosedCaptions,
                    other => return fail(n, format!("EXT-X-MEDIA with TYPE {other:?}")),
                };
                let Some(group) = a.get("GROUP-ID") else {
                    return fail(n, "EXT-X-MEDIA without GROUP-ID (required)");
                };
                let uri = match a.get("URI") {
                    Some(u) if kind != MediaType::ClosedCaptions => Some(self.resolve(n, u)?),
                    _ => None,
                };
                if self.master.renditions.len() >= MAX_ENTRIES {
                    return fail(n, format!("more than {MAX_ENTRIES} renditions"));
                }
                self.master.renditions.push(Rendition {
                    kind,
                    group: group.to_string(),
                    name: a.get("NAME").unwrap_or("").to_string(),
                    language: a.get("LANGUAGE").map(|s| s.to_string()),
                    uri,
                    default: a.get("DEFAULT") == Some("YES"),
                });
            }
            "-X-I-FRAME-STREAM-INF" | "-X-SESSION-DATA" | "-X-SESSION-KEY" => {
                self.kind(n, Kind::Master, name)?;
            }
            // Tags of either kind that change nothing ferry writes, and unknown tags
            // (section 6.3.1: ignored).
            _ => {}
        }
        Ok(())
    }

    fn key(&mut self, n: usize, value: &str) -> Result<(), ParseError> {
        let a = attributes(n, value)?;
        let Some(method) = a.get("METHOD") else {
            return fail(n, "EXT-X-KEY without METHOD (required)");
        };
        let format = a.get("KEYFORMAT").unwrap_or("identity").to_string();
        if method == "NONE" {
            if a.len() > 1 {
                self.warnings.push(format!(
                    "line {n}: EXT-X-KEY METHOD=NONE with other attributes (not allowed); they are ignored"
                ));
            }
            // Segments that follow are not encrypted, in any key format.
            self.keys.clear();
            return Ok(());
        }
        let state = match method {
            "AES-128" if format == "identity" => {
                let Some(uri) = a.get("URI") else {
                    return fail(n, "EXT-X-KEY METHOD=AES-128 without URI (required)");
                };
                let iv = a.get("IV").map(|v| iv(n, v)).transpose()?;
                let uri = self.resolve(n, uri)?;
                if self.base.scheme() == "https" && uri.scheme() == "http" {
                    return fail(
                        n,
                        "an AES-128 key over http:// named by a playlist fetched over https://: the key would travel in the clear, so the playlist is refused",
                    );
                }
                KeyState::Aes128 { uri, iv }
            }
            "SAMPLE-AES" | "SAMPLE-AES-CTR" | "SAMPLE-AES-CENC" if format == "identity" => {
                KeyState::SampleAes
            }
            _ => KeyState::Other(format!("METHOD={method}, KEYFORMAT={format}")),
        };
        self.keys.insert(format, state);
        Ok(())
    }

    /// The AES-128 key in force for the next segment (`msn`), or why it cannot be decrypted.
    fn crypt(&self, n: usize, msn: u64, what: &str) -> Result<Option<Crypt>, ParseError> {
        match self.keys.get("identity") {
            Some(KeyState::Aes128 { uri, iv }) => Ok(Some(Crypt {
                key: uri.clone(),
                iv: iv.unwrap_or_else(|| {
                    let mut iv = [0u8; 16];
                    iv[8..].copy_from_slice(&msn.to_be_bytes());
                    iv
                }),
            })),
            Some(KeyState::SampleAes) => fail(
                n,
                format!(
                    "{what} is encrypted with SAMPLE-AES, which ferry does not decrypt (it would need to rewrite the elementary streams); refused"
                ),
            ),
            Some(KeyState::Other(d)) => fail(
                n,
                format!("{what} is encrypted with {d}, a method ferry does not know; refused"),
            ),
            None if self.keys.is_empty() => Ok(None),
            None => {
                let formats: Vec<_> = self
                    .keys
                    .values()
                    .filter_map(|k| match k {
                        KeyState::Other(d) => Some(d.as_str()),
                        _ => None,
                    })
                    .collect();
                fail(
                    n,
                    format!(
                        "{what} is encrypted only with keys ferry cannot use ({}): DRM is not supported; refused",
                        formats.join("; ")
                    ),
                )
            }
        }
    }

    fn map_tag(&mut self, n: usize, value: &str) -> Result<(), ParseError> {
        let a = attributes(n, value)?;
        let Some(uri) = a.get("URI") else {
            return fail(n, "EXT-X-MAP without URI (required)");
        };
        let uri = self.resolve(n, uri)?;
        let range = match a.get("BYTERANGE") {
            None => None,
            Some(v) => {
                let (len, offset) = byte_range(n, v)?;
                if offset.is_none() {
                    self.warnings.push(format!(
                        "line {n}: EXT-X-MAP BYTERANGE without an offset; using offset 0"
                    ));
                }
                Some(ByteRange {
                    offset: offset.unwrap_or(0),
                    len,
                })
            }
        };
        if let Some(KeyState::Aes128 { iv: None, .. }) = self.keys.get("identity") {
            return fail(
                n,
                "an EXT-X-MAP under AES-128 whose EXT-X-KEY has no IV; RFC 8216 section 4.3.2.5 requires one",
            );
        }
        let crypt = self.crypt(n, 0, "the init section")?;
        let map = InitSection { uri, range, crypt };
        let index = match self.media.maps.iter().position(|m| *m == map) {
            Some(i) => i,
            None => {
                self.media.maps.push(map);
                self.media.maps.len() - 1
            }
        };
        self.map = Some(index);
        Ok(())
    }

    fn uri_line(&mut self, n: usize, line: &str) -> Result<(), ParseError> {
        let uri = self.resolve(n, line)?;
        if let Some((mut variant, _)) = self.pending_variant.take() {
            if self.master.variants.len() >= MAX_ENTRIES {
                return fail(n, format!("more than {MAX_ENTRIES} variants"));
            }
            variant.uri = uri;
            self.master.variants.push(variant);
            return Ok(());
        }
        if self.kind.map(|(k, _)| k) == Some(Kind::Master) {
            self.warnings.push(format!(
                "line {n}: a URI with no EXT-X-STREAM-INF before it; ignored"
            ));
            return Ok(());
        }
        self.kind(n, Kind::Media, "INF")?;
        if self.media.segments.len() >= MAX_SEGMENTS {
            return fail(n, format!("more than {MAX_SEGMENTS} segments"));
        }
        let duration = match self.pending_duration.take() {
            Some(d) => d,
            None => {
                if !self.missing_extinf_warned {
                    self.missing_extinf_warned = true;
                    self.warnings
                        .push(format!("line {n}: a segment without EXTINF (required)"));
                }
                0.0
            }
        };
        if self.media.target_duration > 0
            && duration.round() as u64 > self.media.target_duration
            && !self.over_target_warned
        {
            self.over_target_warned = true;
            self.warnings.push(format!(
                "line {n}: EXTINF {duration} is longer than EXT-X-TARGETDURATION {}",
                self.media.target_duration
            ));
        }
        let range = match self.pending_range.take() {
            None => None,
            Some((len, Some(offset), _)) => Some(ByteRange { offset, len }),
            Some((len, None, at)) => match &self.last_range {
                Some((last, end)) if *last == uri => Some(ByteRange { offset: *end, len }),
                _ => {
                    return fail(
                        at,
                        "EXT-X-BYTERANGE without an offset, and the segment before is not a sub-range of the same resource; RFC 8216 section 4.3.2.2 says this MUST fail",
                    );
                }
            },
        };
        if let Some(r) = range
            && r.offset.checked_add(r.len).is_none()
        {
            return fail(n, "byte range past 2^64");
        }
        let what = format!("segment {}", self.msn);
        let crypt = self.crypt(n, self.msn, &what)?;
        if self.pending_discontinuity {
            self.dsn += 1;
        }
        self.last_range = range.map(|r| (uri.clone(), r.offset + r.len));
        self.media.segments.push(Segment {
            msn: self.msn,
            dsn: self.dsn,
            uri,
            range,
            duration,
            crypt,
            map: self.map,
            discontinuity: std::mem::take(&mut self.pending_discontinuity),
            gap: std::mem::take(&mut self.pending_gap),
        });
        self.msn = self.msn.checked_add(1).ok_or_else(|| ParseError {
            what: format!("line {n}: media sequence number overflows"),
        })?;
        Ok(())
    }

    /// A URI of the playlist, absolute, and only http(s).
    fn resolve(&self, n: usize, uri: &str) -> Result<Url, ParseError> {
        if uri.len() > MAX_URI {
            return fail(n, format!("a URI of {} bytes; refused", uri.len()));
        }
        let url = self.base.join(uri).map_err(|e| ParseError {
            what: format!("line {n}: URI {uri:?}: {e}"),
        })?;
        match url.scheme() {
            "http" if self.base.scheme() == "https" => {
                if !self.downgrade_warned.replace(true) {
                    self.warnings_late.borrow_mut().push(format!(
                        "line {n}: {url} is plain http:// in a playlist fetched over https://; its bytes are not protected in transit"
                    ));
                }
                Ok(url)
            }
            "http" | "https" => Ok(url),
            other => fail(
                n,
                format!(
                    "URI with scheme {other:?}; a remote playlist may name only http and https URIs, so the whole playlist is refused"
                ),
            ),
        }
    }
}

fn name_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Master => "master",
        Kind::Media => "media",
    }
}

#[cfg(test)]
mod tests;
