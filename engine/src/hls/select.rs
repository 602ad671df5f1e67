//! Which variant of a master playlist to download, and which of its renditions go beside it.
//!
//! Sans-IO: the parsed master playlist and the user's choice in, indexes out. A choice that
//! matches nothing fails and lists what there is; it never silently falls back to another
//! variant. Not here: parsing the choice from the command line (`FromStr` below is all of it).

use std::str::FromStr;

use super::playlist::{Master, MediaType, Rendition, Variant};

/// `--variant`: which variant of a master playlist.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VariantChoice {
    /// The highest rate (`AVERAGE-BANDWIDTH`, else `BANDWIDTH`), then the largest picture.
    #[default]
    Best,
    /// The lowest rate.
    Worst,
    /// The highest rate at most this many bits per second (the lowest one if none is).
    Bandwidth(u64),
    /// Exactly this `RESOLUTION`, the highest rate among several.
    Resolution(u32, u32),
    /// Variants whose `CODECS` has one starting with this (e.g. `hvc1`, `avc1.64`), best first.
    Codec(String),
}

impl FromStr for VariantChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<VariantChoice, String> {
        let bad = || {
            format!(
                "--variant {s:?}: expected best, worst, bandwidth=BITS, resolution=WxH or codec=PREFIX"
            )
        };
        match s {
            "best" => return Ok(VariantChoice::Best),
            "worst" => return Ok(VariantChoice::Worst),
            _ => {}
        }
        let (k, v) = s.split_once('=').ok_or_else(bad)?;
        match k {
            "bandwidth" => v.parse().map(VariantChoice::Bandwidth).map_err(|_| bad()),
            "resolution" => {
                let (w, h) = v.split_once(['x', 'X']).ok_or_else(bad)?;
                Ok(VariantChoice::Resolution(
                    w.parse().map_err(|_| bad())?,
                    h.parse().map_err(|_| bad())?,
                ))
            }
            "codec" if !v.is_empty() => Ok(VariantChoice::Codec(v.to_string())),
            _ => Err(bad()),
        }
    }
}

/// `--renditions`: which alternative renditions of the chosen variant are written beside it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RenditionChoice {
    /// Every audio and subtitle rendition of the variant's groups that has its own playlist.
    #[default]
    All,
    /// None: only the variant.
    None,
    /// Those whose `LANGUAGE` is this (or starts with it and a `-`, as `en` for `en-US`).
    Language(String),
}

impl FromStr for RenditionChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<RenditionChoice, String> {
        match s {
            "all" => Ok(RenditionChoice::All),
            "none" => Ok(RenditionChoice::None),
            l if !l.is_empty()
                && l.len() <= 35
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                Ok(RenditionChoice::Language(l.to_ascii_lowercase()))
            }
            _ => Err(format!(
                "--renditions {s:?}: expected all, none or a language tag (en, pt-BR)"
            )),
        }
    }
}

/// Picks the variant `choice` names.
pub(crate) fn variant(master: &Master, choice: &VariantChoice) -> Result<usize, String> {
    let v = &master.variants;
    let rank = |i: &usize| {
        let x = &v[*i];
        (
            x.rate(),
            x.resolution.map_or(0, |(w, h)| w as u64 * h as u64),
        )
    };
    let all = 0..v.len();
    let pick = match choice {
        VariantChoice::Best => all.max_by_key(rank),
        VariantChoice::Worst => all.min_by_key(rank),
        VariantChoice::Bandwidth(cap) => all
            .clone()
            .filter(|i| v[*i].rate() <= *cap)
            .max_by_key(rank)
            .or_else(|| all.min_by_key(rank)),
        VariantChoice::Resolution(w, h) => all
            .filter(|i| v[*i].resolution == Some((*w, *h)))
            .max_by_key(rank),
        VariantChoice::Codec(prefix) => all
            .filter(|i| {
                v[*i]
                    .codecs
                    .as_deref()
                    .is_some_and(|c| c.split(',').any(|c| c.trim().starts_with(prefix.as_str())))
            })
            .max_by_key(rank),
    };
    pick.ok_or_else(|| {
        format!(
            "no variant matches {choice:?}; the playlist has: {}",
            v.iter().map(describe).collect::<Vec<_>>().join("; ")
        )
    })
}

/// One line about a variant, for messages and `-v`.
pub(crate) fn describe(v: &Variant) -> String {
    let mut s = format!("{} bit/s", v.rate());
    if let Some((w, h)) = v.resolution {
        s += &format!(" {w}x{h}");
    }
    if let Some(c) = &v.codecs {
        s += &format!(" {c}");
    }
    s
}

/// The renditions of `variant`'s audio and subtitle groups that `choice` keeps and that have a
/// playlist of their own (one without a URI is muxed into the variant).
pub(crate) fn renditions<'m>(
    master: &'m Master,
    variant: &Variant,
    choice: &RenditionChoice,
) -> Vec<&'m Rendition> {
    let groups = [
        (MediaType::Audio, variant.audio.as_deref()),
        (MediaType::Subtitles, variant.subtitles.as_deref()),
    ];
    let mut out: Vec<&Rendition> = Vec::new();
    for r in &master.renditions {
        let in_group = groups
            .iter()
            .any(|(k, g)| r.kind == *k && *g == Some(r.group.as_str()));
        let wanted = match choice {
            RenditionChoice::All => true,
            RenditionChoice::None => false,
            RenditionChoice::Language(l) => r.language.as_deref().is_some_and(|x| {
                let x = x.to_ascii_lowercase();
                x == *l || x.starts_with(&format!("{l}-"))
            }),
        };
        // The same playlist listed twice (in two groups) is written once.
        let twice = out.iter().any(|o| o.uri == r.uri);
        if in_group && wanted && r.uri.is_some() && !twice && r.uri.as_ref() != Some(&variant.uri) {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::playlist::{Playlist, parse};

    fn master() -> Master {
        let text = "#EXTM3U\n\
            #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"en\",LANGUAGE=\"en-US\",URI=\"en.m3u8\"\n\
            #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"fr\",LANGUAGE=\"fr\",URI=\"fr.m3u8\"\n\
            #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"b\",NAME=\"other\",LANGUAGE=\"en\",URI=\"b.m3u8\"\n\
            #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"muxed\",LANGUAGE=\"de\"\n\
            #EXT-X-STREAM-INF:BANDWIDTH=500000,RESOLUTION=320x180,CODECS=\"avc1.42e00a,mp4a.40.2\",AUDIO=\"a\"\nlo.m3u8\n\
            #EXT-X-STREAM-INF:BANDWIDTH=5000000,AVERAGE-BANDWIDTH=900000,RESOLUTION=1920x1080,CODECS=\"hvc1.1.6.L93.B0\",AUDIO=\"a\"\nhevc.m3u8\n\
            #EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720,CODECS=\"avc1.64001f,mp4a.40.2\"\nmid.m3u8\n";
        let base = url::Url::parse("http://x/m.m3u8").expect("test input");
        match parse(text.as_bytes(), &base).expect("test input") {
            Playlist::Master(m) => m,
            _ => panic!("master"),
        }
    }

    fn pick(choice: &str) -> Result<String, String> {
        let m = master();
        let i = variant(&m, &choice.parse()?)?;
        Ok(m.variants[i].uri.path().to_string())
    }

    #[test]
    fn choices_pick_the_variant_they_name() {
        // AVERAGE-BANDWIDTH ranks: hevc's 0.9 Mbit/s average is below mid's 2 Mbit/s.
        assert_eq!(pick("best").expect("test input"), "/mid.m3u8");
        assert_eq!(pick("worst").expect("test input"), "/lo.m3u8");
        assert_eq!(pick("bandwidth=1000000").expect("test input"), "/hevc.m3u8");
        assert_eq!(pick("bandwidth=1").expect("test input"), "/lo.m3u8");
        assert_eq!(
            pick("resolution=1920x1080").expect("test input"),
            "/hevc.m3u8"
        );
        assert_eq!(pick("codec=avc1").expect("test input"), "/mid.m3u8");
        assert_eq!(pick("codec=hvc1").expect("test input"), "/hevc.m3u8");
        let e = pick("resolution=7x7").expect_err("should fail");
        assert!(e.contains("320x180") && e.contains("1920x1080"), "{e}");
        assert!(
            pick("fastest")
                .expect_err("should fail")
                .contains("expected")
        );
        assert!(pick("resolution=7").is_err());
    }

    #[test]
    fn renditions_come_from_the_variants_groups_with_their_own_playlists() {
        let m = master();
        let lo = &m.variants[0];
        let names = |c: &str| -> Vec<String> {
            renditions(&m, lo, &c.parse().expect("test input"))
                .iter()
                .map(|r| r.name.clone())
                .collect()
        };
        assert_eq!(names("all"), ["en", "fr"]);
        assert_eq!(names("none"), Vec::<String>::new());
        assert_eq!(names("en"), ["en"], "en matches en-US");
        assert_eq!(names("FR"), ["fr"]);
        assert!(renditions(&m, &m.variants[2], &RenditionChoice::All).is_empty());
        assert!("../x".parse::<RenditionChoice>().is_err());
    }
}
