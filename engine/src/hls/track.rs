//! One media playlist being written (a track): its segments as the loads listed them, how a
//! live reload is merged in, how expired URLs are renewed, and how a long recording forgets
//! what it has written.
//!
//! Invariants: media sequence numbers only grow along a track, and no segment is listed
//! twice. A live track keeps at most [`FORGET_AT`] written segments, and always the last
//! written one, so that the next reload knows where the list stood: a recording of days holds
//! about as much as one of minutes. Not here: fetching (`fetch.rs`), writing (`writer.rs`).

use url::Url;

use super::Gap;
use super::assemble::Resources;
use super::fetch::{EXPIRED, State};
use super::playlist::Media;

/// Written segments a live track keeps before it forgets them (all but the last).
pub(super) const FORGET_AT: usize = 1024;

/// One media playlist to write.
pub(super) struct Track {
    pub kind: &'static str,
    pub name: String,
    /// The URL it was asked at (reloaded from there, not from a tokened redirect).
    pub asked: Url,
    pub media: Media,
    /// Live: segments that left the window before a load listed them.
    pub missed: Vec<Gap>,
    /// Written segments forgotten from the front of `media.segments`, and their seconds.
    forgotten: u64,
    forgotten_seconds: f64,
}

impl Track {
    pub(super) fn new(kind: &'static str, name: String, asked: Url, media: Media) -> Track {
        Track {
            kind,
            name,
            asked,
            media,
            missed: Vec::new(),
            forgotten: 0,
            forgotten_seconds: 0.0,
        }
    }

    /// Segments listed so far, those forgotten included.
    pub(super) fn segments(&self) -> u64 {
        self.forgotten + self.media.segments.len() as u64
    }

    /// Seconds of media listed so far, those forgotten included.
    pub(super) fn duration(&self) -> f64 {
        self.forgotten_seconds + self.media.duration()
    }

    /// Keeps the segments that start before `seconds` of media (from the first ever listed).
    pub(super) fn truncate_to(&mut self, seconds: f64) {
        self.media.truncate_to(seconds - self.forgotten_seconds);
    }

    /// Forgets the segments before the last of the `written` first, once they are at least
    /// [`FORGET_AT`]; returns how many it forgot (the caller moves its indices back by that).
    pub(super) fn forget_written(&mut self, written: usize) -> usize {
        let n = written.min(self.media.segments.len()).saturating_sub(1);
        if n < FORGET_AT {
            return 0;
        }
        for s in self.media.segments.drain(..n) {
            self.forgotten += 1;
            self.forgotten_seconds += s.duration;
        }
        n
    }
}

impl Track {
    /// Takes from a reload the URLs of the segments and init sections whose fetch was refused
    /// as expired (by media sequence number, and init sections by their order); the rest keep
    /// theirs, so what was fetched is not fetched again under a new token.
    pub(super) fn renew_expired(&mut self, resources: &Resources, fresh: &Media) {
        let expired = |url: &Url, range| matches!(resources.state(url, range), Some(State::Failed { status: Some(s), .. }) if EXPIRED.contains(s));
        for seg in &mut self.media.segments {
            if !expired(&seg.uri, seg.range) {
                continue;
            }
            match fresh.segments.iter().find(|f| f.msn == seg.msn) {
                Some(f) => {
                    seg.uri = f.uri.clone();
                    seg.range = f.range;
                }
                None => tracing::warn!(
                    "segment {} is no longer listed by {}; it stays missing",
                    seg.msn,
                    self.asked
                ),
            }
        }
        for (m, map) in self.media.maps.iter_mut().enumerate() {
            if expired(&map.uri, map.range)
                && let Some(f) = fresh.maps.get(m)
            {
                map.uri = f.uri.clone();
                map.range = f.range;
            }
        }
    }

    /// Adds what a reload lists after the last segment known; the media sequence numbers
    /// skipped in between (they left the window before a load saw them) become gaps. Returns
    /// whether anything changed.
    pub(super) fn merge(&mut self, fresh: Media) -> bool {
        let old = &mut self.media;
        let last = old.segments.last().map(|s| s.msn);
        let mut changed = fresh.end_list != old.end_list;
        old.end_list = fresh.end_list;
        old.kind = fresh.kind;
        old.target_duration = fresh.target_duration;
        for mut seg in fresh.segments {
            if let Some(l) = last
                && seg.msn <= l
            {
                continue;
            }
            let next = old.segments.last().map_or(seg.msn, |s| s.msn + 1);
            if seg.msn > next {
                let gap = Gap {
                    first: next,
                    last: seg.msn - 1,
                    seconds: (seg.msn - next) as f64 * old.target_duration as f64,
                    reason: "it left the live window before a reload listed it".into(),
                };
                tracing::warn!("segments {}-{} missed: {}", gap.first, gap.last, gap.reason);
                self.missed.push(gap);
            }
            seg.map = seg.map.map(|m| {
                let map = &fresh.maps[m];
                match old.maps.iter().position(|x| x == map) {
                    Some(i) => i,
                    None => {
                        old.maps.push(map.clone());
                        old.maps.len() - 1
                    }
                }
            });
            old.segments.push(seg);
            changed = true;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::playlist::{Playlist, parse};

    fn live(first: u64, count: u64) -> Media {
        let mut text = format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first}\n");
        for msn in first..first + count {
            text.push_str(&format!("#EXTINF:2,\ns{msn}.ts\n"));
        }
        let base = Url::parse("http://127.0.0.1/live/index.m3u8").expect("test url");
        match parse(text.as_bytes(), &base).expect("a live playlist") {
            Playlist::Media(m) => m,
            Playlist::Master(_) => panic!("a media playlist"),
        }
    }

    #[test]
    fn a_long_recording_forgets_what_it_wrote_and_still_merges_in_order() {
        let asked = Url::parse("http://127.0.0.1/live/index.m3u8").expect("test url");
        let mut t = Track::new("main", String::new(), asked, live(0, 10));
        assert_eq!(t.forget_written(10), 0, "fewer than FORGET_AT written");
        // Reloads of a sliding window of 10 add 3 segments each.
        let mut first = 0;
        while t.segments() < 5000 {
            first += 3;
            assert!(t.merge(live(first, 10)));
            // The writer keeps up; it forgets what it wrote.
            let written = t.media.segments.len();
            t.forget_written(written);
            assert!(
                t.media.segments.len() <= FORGET_AT + 10,
                "{}",
                t.media.segments.len()
            );
        }
        let msns: Vec<u64> = t.media.segments.iter().map(|s| s.msn).collect();
        assert!(
            msns.windows(2).all(|w| w[1] == w[0] + 1),
            "in order, no repeat"
        );
        assert_eq!(*msns.last().expect("segments"), first + 9);
        assert_eq!(t.segments(), first + 10, "every segment counted once");
        assert_eq!(t.duration(), 2.0 * (first + 10) as f64);
        assert!(t.missed.is_empty(), "{:?}", t.missed);
        // Truncating counts the forgotten seconds: all but the last two segments start
        // before the last 4 s.
        t.truncate_to(2.0 * t.segments() as f64 - 4.0);
        assert_eq!(t.segments(), first + 8);
    }
}
