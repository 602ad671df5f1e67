//! What a playlist is read into: a master playlist's variants and renditions, or a media
//! playlist's segments with everything in force for each already resolved. Plain data; the
//! reading is `playlist.rs`'s.

use url::Url;

/// A playlist, as the RFC tells the two kinds apart.
#[derive(Debug, Clone)]
pub(crate) enum Playlist {
    Master(Master),
    Media(Media),
}

/// A master (multivariant) playlist.
#[derive(Debug, Clone, Default)]
pub(crate) struct Master {
    pub variants: Vec<Variant>,
    pub renditions: Vec<Rendition>,
    pub warnings: Vec<String>,
}

/// One `EXT-X-STREAM-INF` and its URI.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Variant {
    pub uri: Url,
    pub bandwidth: u64,
    pub average_bandwidth: Option<u64>,
    pub resolution: Option<(u32, u32)>,
    pub codecs: Option<String>,
    pub audio: Option<String>,
    pub subtitles: Option<String>,
}

impl Variant {
    /// The rate to rank by: `AVERAGE-BANDWIDTH` where stated, else `BANDWIDTH` (section 4.3.4.2).
    pub(crate) fn rate(&self) -> u64 {
        self.average_bandwidth.unwrap_or(self.bandwidth)
    }
}

/// What an `EXT-X-MEDIA` rendition carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MediaType {
    Audio,
    Video,
    Subtitles,
    ClosedCaptions,
}

impl MediaType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MediaType::Audio => "audio",
            MediaType::Video => "video",
            MediaType::Subtitles => "subtitles",
            MediaType::ClosedCaptions => "closed-captions",
        }
    }
}

/// One `EXT-X-MEDIA`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rendition {
    pub kind: MediaType,
    pub group: String,
    pub name: String,
    pub language: Option<String>,
    /// None: the rendition is muxed into the variant's own stream.
    pub uri: Option<Url>,
    pub default: bool,
}

/// `EXT-X-PLAYLIST-TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlaylistType {
    Vod,
    Event,
}

/// A sub-range of a resource: `len` bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// AES-128 in force for a segment or init section: the key's URI and the 16-byte IV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crypt {
    pub key: Url,
    pub iv: [u8; 16],
}

/// An `EXT-X-MAP` init section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InitSection {
    pub uri: Url,
    pub range: Option<ByteRange>,
    pub crypt: Option<Crypt>,
}

/// A media segment, resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Segment {
    /// Media sequence number (section 4.3.3.2).
    pub msn: u64,
    /// Discontinuity sequence number (section 4.3.3.3).
    pub dsn: u64,
    pub uri: Url,
    pub range: Option<ByteRange>,
    /// `EXTINF`, in seconds (0 when the tag was missing).
    pub duration: f64,
    pub crypt: Option<Crypt>,
    /// Index into [`Media::maps`] of the init section in force.
    pub map: Option<usize>,
    /// An `EXT-X-DISCONTINUITY` precedes it.
    pub discontinuity: bool,
    /// `EXT-X-GAP`: the server says this segment has no media.
    pub gap: bool,
}

/// A media playlist, resolved.
#[derive(Debug, Clone, Default)]
pub(crate) struct Media {
    pub target_duration: u64,
    pub media_sequence: u64,
    pub end_list: bool,
    pub kind: Option<PlaylistType>,
    pub segments: Vec<Segment>,
    pub maps: Vec<InitSection>,
    pub warnings: Vec<String>,
}

impl Media {
    /// Whether the playlist can still change (it has no `EXT-X-ENDLIST` and is not VOD).
    pub(crate) fn is_live(&self) -> bool {
        !self.end_list && self.kind != Some(PlaylistType::Vod)
    }

    /// Keeps the segments that start before `seconds` of media.
    pub(crate) fn truncate_to(&mut self, seconds: f64) {
        let mut at = 0.0;
        let keep = self
            .segments
            .iter()
            .take_while(|s| {
                let starts = at;
                at += s.duration;
                starts < seconds
            })
            .count();
        self.segments.truncate(keep);
    }

    /// The sum of the segments' durations, in seconds.
    pub(crate) fn duration(&self) -> f64 {
        self.segments.iter().map(|s| s.duration).sum()
    }
}
