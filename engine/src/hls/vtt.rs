//! WebVTT subtitle segments merged into one valid file. Appended as they are, a subtitle
//! track's segments would repeat the `WEBVTT` header in the middle of the file, which players
//! stop at. Here the first segment's header is kept; each later segment loses its own, and its
//! cues follow, one blank line apart. When a later segment maps its cue times to the media
//! differently (RFC 8216 section 3.5, `X-TIMESTAMP-MAP`), its cues are moved into the first
//! segment's timeline. A cue repeated across a segment boundary (the same times and text) is
//! written once.
//!
//! Invariant: the output is a WebVTT file with one header, whatever the segments were; a
//! segment that is not WebVTT is refused, not appended. Not here: fetching or decrypting
//! (`assemble.rs`).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Cues remembered to drop their repeats at the next segment boundaries.
const RECENT: usize = 32;

/// A subtitle track's merge, segment after segment.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct VttMerge {
    /// The first segment's offset from its cue times to the media's (seconds), when it has an
    /// `X-TIMESTAMP-MAP`; later segments' cues move by their offset's difference from it.
    offset: Option<f64>,
    /// Whether the header was written.
    started: bool,
    /// The last cues written (timing line and text), to drop their repeats.
    #[serde(skip)]
    recent: VecDeque<String>,
}

impl VttMerge {
    /// What to append for the next segment's bytes.
    pub(super) fn next(&mut self, segment: &[u8]) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(segment)
            .map_err(|_| "a WebVTT segment that is not UTF-8".to_string())?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut blocks = text.split("\n\n").map(|b| b.trim_matches('\n'));
        let header = blocks.next().unwrap_or("");
        let signature = header
            .strip_prefix("WEBVTT")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n']));
        if !signature {
            return Err("not a WebVTT segment (it does not start with WEBVTT)".into());
        }
        let offset = header.lines().find_map(timestamp_map);
        let mut out = String::new();
        let shift = if self.started {
            match (self.offset, offset) {
                (Some(first), Some(this)) => this - first,
                _ => 0.0,
            }
        } else {
            self.started = true;
            self.offset = offset;
            out.push_str(header);
            out.push('\n');
            0.0
        };
        for block in blocks.filter(|b| !b.is_empty()) {
            let first_line = block.lines().next().unwrap_or("");
            let is_cue = block.lines().take(2).any(|l| l.contains("-->"));
            if !is_cue {
                // STYLE and REGION belong before the first cue: a later segment's are dropped.
                if first_line.starts_with("NOTE") {
                    out.push('\n');
                    out.push_str(block);
                    out.push('\n');
                }
                continue;
            }
            let cue = shift_cue(block, shift)?;
            let key = cue_key(&cue);
            if self.recent.contains(&key) {
                continue;
            }
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(key);
            out.push('\n');
            out.push_str(&cue);
            out.push('\n');
        }
        Ok(out.into_bytes())
    }
}

/// A cue as compared for repeats: its timing line and text, without its identifier.
fn cue_key(cue: &str) -> String {
    let mut lines = cue.lines();
    let first = lines.next().unwrap_or("");
    if first.contains("-->") {
        cue.to_string()
    } else {
        lines.collect::<Vec<_>>().join("\n")
    }
}

/// `X-TIMESTAMP-MAP=MPEGTS:900000,LOCAL:00:00:00.000`: seconds to add to a cue time to get the
/// media's (MPEGTS / 90 kHz minus LOCAL).
fn timestamp_map(line: &str) -> Option<f64> {
    let value = line.strip_prefix("X-TIMESTAMP-MAP=")?;
    let (mut mpegts, mut local) = (None, None);
    for part in value.split(',') {
        let (k, v) = part.trim().split_once(':')?;
        match k {
            "MPEGTS" => mpegts = v.parse::<u64>().ok(),
            "LOCAL" => local = parse_time(v),
            _ => {}
        }
    }
    Some(mpegts? as f64 / 90_000.0 - local?)
}

/// Moves a cue's start and end by `shift` seconds (none when 0).
fn shift_cue(block: &str, shift: f64) -> Result<String, String> {
    if shift == 0.0 {
        return Ok(block.to_string());
    }
    let mut out = Vec::new();
    let mut done = false;
    for line in block.lines() {
        if !done && line.contains("-->") {
            done = true;
            let (start, rest) = line
                .split_once("-->")
                .ok_or_else(|| format!("a cue timing line that cannot be read: {line:?}"))?;
            let rest = rest.trim_start();
            let (end, settings) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
            let moved = |t: &str| {
                parse_time(t.trim())
                    .map(|s| format_time((s + shift).max(0.0)))
                    .ok_or_else(|| format!("a cue time that cannot be read: {t:?}"))
            };
            let mut timing = format!("{} --> {}", moved(start)?, moved(end)?);
            if !settings.is_empty() {
                timing.push(' ');
                timing.push_str(settings);
            }
            out.push(timing);
        } else {
            out.push(line.to_string());
        }
    }
    Ok(out.join("\n"))
}

/// `[HH:]MM:SS.mmm` in seconds.
fn parse_time(t: &str) -> Option<f64> {
    let (rest, millis) = t.rsplit_once('.')?;
    if millis.len() != 3 {
        return None;
    }
    let mut seconds = 0u64;
    let parts: Vec<&str> = rest.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    for p in parts {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 10 {
            return None;
        }
        seconds = seconds.checked_mul(60)?.checked_add(p.parse().ok()?)?;
    }
    Some(seconds as f64 + millis.parse::<u64>().ok()? as f64 / 1000.0)
}

fn format_time(s: f64) -> String {
    let ms = (s * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(segments: &[&str]) -> Result<String, String> {
        let mut m = VttMerge::default();
        let mut out = Vec::new();
        for s in segments {
            out.extend(m.next(s.as_bytes())?);
        }
        Ok(String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn one_header_cues_in_order_repeats_once() {
        let out = merged(&[
            "WEBVTT\n\n00:00.700 --> 00:01.700\nFirst line",
            "WEBVTT\r\n\r\n00:01.500 --> 00:02.800 align:start\r\nAcross\r\n\r\n00:03.200 --> 00:04.200\nThird\n",
            // The cue across the boundary again, with an identifier this time.
            "\u{feff}WEBVTT\n\nNOTE kept\n\nSTYLE\n::cue {}\n\nc9\n00:01.500 --> 00:02.800 align:start\nAcross\n",
        ])
        .expect("merge");
        assert_eq!(
            out,
            "WEBVTT\n\n00:00.700 --> 00:01.700\nFirst line\n\n00:01.500 --> 00:02.800 align:start\n\
             Across\n\n00:03.200 --> 00:04.200\nThird\n\nNOTE kept\n"
        );
    }

    #[test]
    fn a_later_timestamp_map_moves_its_cues_into_the_first_timeline() {
        let out = merged(&[
            "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:900000,LOCAL:00:00:00.000\n\n00:00:01.000 --> 00:00:02.000\na",
            // 10 s later in MPEG-TS time, with its cue times counted from its own start.
            "WEBVTT\nX-TIMESTAMP-MAP=LOCAL:00:00:00.000,MPEGTS:1800000\n\n00:00:01.000 --> 00:00:02.500\nb",
        ])
        .expect("merge");
        assert!(
            out.starts_with("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:900000"),
            "{out}"
        );
        assert!(out.contains("00:00:11.000 --> 00:00:12.500\nb"), "{out}");
        assert_eq!(out.matches("WEBVTT").count(), 1, "{out}");
    }

    #[test]
    fn what_is_not_webvtt_is_refused() {
        assert!(merged(&["\u{0}\u{1}binary"]).is_err());
        assert!(merged(&["WEBVTTX\n\n00:00.000 --> 00:01.000\nx"]).is_err());
        assert!(
            VttMerge::default().next(&[0xff, 0xfe]).is_err(),
            "not UTF-8"
        );
        let bad = merged(&[
            "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000",
            "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:90000,LOCAL:00:00:00.000\n\nxx --> 00:01.000\nx",
        ]);
        assert!(bad.is_err(), "{bad:?}");
        assert_eq!(parse_time("99999999999:00.000"), None, "no overflow");
        assert_eq!(parse_time("01:02:03.004"), Some(3723.004));
        assert_eq!(format_time(3723.004), "01:02:03.004");
    }
}
