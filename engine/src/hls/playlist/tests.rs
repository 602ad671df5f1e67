use super::*;

fn base() -> Url {
    Url::parse("https://cdn.example/path/video/index.m3u8?token=abc").expect("test input")
}

fn media(text: &str) -> Media {
    match parse(text.as_bytes(), &base()) {
        Ok(Playlist::Media(m)) => m,
        other => panic!("not a media playlist: {other:?}"),
    }
}

fn error(text: &str) -> String {
    match parse(text.as_bytes(), &base()) {
        Err(e) => e.what,
        Ok(p) => panic!("parsed, but should have failed: {p:?}"),
    }
}

fn iv_of(msn: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[8..].copy_from_slice(&msn.to_be_bytes());
    iv
}

#[test]
fn a_plain_vod_playlist_resolves_numbers_and_uris() {
    let m = media(
        "\u{feff}#EXTM3U\r\n#EXT-X-VERSION:3\r\n#EXT-X-TARGETDURATION:2\r\n#EXT-X-MEDIA-SEQUENCE:41\r\n\r\n#EXTINF:2.0,\r\nseg_0.ts\r\n#EXTINF:1.5,title\r\n/abs/seg_1.ts\r\n#EXTINF:2,\r\nhttp://other.example/seg_2.ts\r\n#EXT-X-ENDLIST\r\n",
    );
    assert!(!m.is_live());
    assert_eq!(m.target_duration, 2);
    let msns: Vec<_> = m.segments.iter().map(|s| s.msn).collect();
    assert_eq!(msns, [41, 42, 43]);
    assert_eq!(
        m.segments[0].uri.as_str(),
        "https://cdn.example/path/video/seg_0.ts"
    );
    assert_eq!(
        m.segments[1].uri.as_str(),
        "https://cdn.example/abs/seg_1.ts"
    );
    assert_eq!(m.segments[2].uri.as_str(), "http://other.example/seg_2.ts");
    assert!((m.duration() - 5.5).abs() < 1e-9);
    assert!(
        m.segments
            .iter()
            .all(|s| s.crypt.is_none() && s.map.is_none())
    );
    // The one plain http:// segment under an https:// playlist is said once.
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    assert!(m.warnings[0].contains("line 11"), "{:?}", m.warnings);
}

#[test]
fn a_key_without_iv_uses_the_media_sequence_number_and_scopes_until_the_next_key_or_none() {
    let m = media(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-KEY:METHOD=AES-128,URI=\"k1.key\"\n#EXTINF:1,\na.ts\n#EXTINF:1,\nb.ts\n#EXT-X-KEY:METHOD=AES-128,URI=\"../k2.key\",IV=0x1f\n#EXTINF:1,\nc.ts\n#EXT-X-KEY:METHOD=NONE\n#EXTINF:1,\nd.ts\n#EXT-X-ENDLIST\n",
    );
    let s = &m.segments;
    let k1 = Url::parse("https://cdn.example/path/video/k1.key").expect("test input");
    let k2 = Url::parse("https://cdn.example/path/k2.key").expect("test input");
    assert_eq!(
        s[0].crypt,
        Some(Crypt {
            key: k1.clone(),
            iv: iv_of(7)
        })
    );
    // The MSN, not the index in the list and not MSN + 1.
    assert_eq!(
        s[1].crypt,
        Some(Crypt {
            key: k1,
            iv: iv_of(8)
        })
    );
    let mut iv = [0u8; 16];
    iv[15] = 0x1f;
    assert_eq!(s[2].crypt, Some(Crypt { key: k2, iv }));
    assert_eq!(s[3].crypt, None);
}

#[test]
fn a_map_under_a_key_is_encrypted_and_needs_an_iv_and_a_clear_map_stays_clear() {
    let m = media(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\",IV=0x01\n#EXTINF:1,\na.m4s\n#EXT-X-MAP:URI=\"init2.mp4\",BYTERANGE=\"100@5\"\n#EXTINF:1,\nb.m4s\n#EXT-X-ENDLIST\n",
    );
    assert_eq!(m.maps.len(), 2);
    assert_eq!(m.maps[0].crypt, None, "the first MAP came before any key");
    assert!(m.maps[1].crypt.is_some(), "the second MAP is under the key");
    assert_eq!(
        m.maps[1].range,
        Some(ByteRange {
            offset: 5,
            len: 100
        })
    );
    assert_eq!(m.segments[0].map, Some(0));
    assert_eq!(m.segments[1].map, Some(1));
    let e = error(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\"\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:1,\na.m4s\n",
    );
    assert!(e.contains("line 4") && e.contains("IV"), "{e}");
}

#[test]
fn byte_ranges_without_offsets_follow_the_previous_sub_range_of_the_same_resource() {
    let m = media(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-BYTERANGE:100@0\n#EXTINF:1,\nall.ts\n#EXT-X-BYTERANGE:50\n#EXTINF:1,\nall.ts\n#EXT-X-BYTERANGE:70\n#EXTINF:1,\nall.ts\n#EXT-X-ENDLIST\n",
    );
    let r: Vec<_> = m
        .segments
        .iter()
        .map(|s| s.range.expect("test input"))
        .collect();
    assert_eq!(
        r,
        [
            ByteRange {
                offset: 0,
                len: 100
            },
            ByteRange {
                offset: 100,
                len: 50
            },
            ByteRange {
                offset: 150,
                len: 70
            }
        ]
    );
    // Offset-less after a whole resource, or after another resource: MUST fail.
    let e = error(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\na.ts\n#EXT-X-BYTERANGE:50\n#EXTINF:1,\na.ts\n",
    );
    assert!(e.contains("line 5") && e.contains("4.3.2.2"), "{e}");
    let e = error(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-BYTERANGE:50@0\n#EXTINF:1,\na.ts\n#EXT-X-BYTERANGE:50\n#EXTINF:1,\nb.ts\n",
    );
    assert!(e.contains("4.3.2.2"), "{e}");
}

#[test]
fn discontinuities_count_from_the_discontinuity_sequence() {
    let m = media(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-DISCONTINUITY-SEQUENCE:3\n#EXTINF:1,\na.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:1,\nb.ts\n#EXTINF:1,\nc.ts\n",
    );
    let d: Vec<_> = m
        .segments
        .iter()
        .map(|s| (s.dsn, s.discontinuity))
        .collect();
    assert_eq!(d, [(3, false), (4, true), (4, false)]);
    assert!(m.is_live(), "no ENDLIST and not VOD: live");
}

#[test]
fn what_the_rfc_says_must_fail_fails() {
    let e = error("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-VERSION:4\n");
    assert!(e.contains("second EXT-X-VERSION"), "{e}");
    let e = error("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n");
    assert!(e.contains("4.3.4"), "{e}");
    let e = error("not a playlist\n");
    assert!(e.contains("#EXTM3U"), "{e}");
    let e =
        error("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=AES-128\n#EXTINF:1,\na.ts\n");
    assert!(e.contains("without URI"), "{e}");
}

#[test]
fn sample_aes_and_drm_only_keys_are_refused_with_a_clear_message() {
    let e = error(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"k\",IV=0x1\n#EXTINF:1,\na.ts\n",
    );
    assert!(e.contains("SAMPLE-AES"), "{e}");
    let e = error(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"skd://x\",KEYFORMAT=\"com.apple.streamingkeydelivery\"\n#EXTINF:1,\na.ts\n",
    );
    assert!(e.contains("DRM"), "{e}");
    // An identity AES-128 key beside a DRM one: the identity key decrypts.
    let m = media(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"skd://x\",KEYFORMAT=\"com.apple.streamingkeydelivery\"\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\"\n#EXTINF:1,\na.ts\n",
    );
    assert!(m.segments[0].crypt.is_some());
    let e = error(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=AES-256,URI=\"k\"\n#EXTINF:1,\na.ts\n",
    );
    assert!(e.contains("METHOD=AES-256"), "{e}");
}

#[test]
fn hostile_uris_refuse_the_whole_playlist() {
    for uri in [
        "file:///etc/passwd",
        "data:text/plain,abc",
        "ftp://x/seg.ts",
    ] {
        let e = error(&format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{uri}\n"
        ));
        assert!(e.contains("only http and https"), "{uri}: {e}");
        let e = error(&format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=AES-128,URI=\"{uri}\"\n#EXTINF:1,\na.ts\n"
        ));
        assert!(e.contains("only http and https"), "key {uri}: {e}");
    }
    let long = "a".repeat(MAX_URI + 1);
    let e = error(&format!(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{long}\n"
    ));
    assert!(e.contains("refused"), "{e}");
    let big = vec![b'#'; MAX_PLAYLIST_BYTES + 1];
    assert!(parse(&big, &base()).is_err());
}

#[test]
fn a_master_playlist_lists_variants_and_renditions() {
    let text = "#EXTM3U\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"English, main\",LANGUAGE=\"en\",DEFAULT=YES,URI=\"audio/en.m3u8\"\n#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID=\"cc\",NAME=\"cc1\",INSTREAM-ID=\"CC1\"\n#EXT-X-STREAM-INF:BANDWIDTH=800000,AVERAGE-BANDWIDTH=600000,RESOLUTION=640x360,CODECS=\"avc1.4d401e,mp4a.40.2\",AUDIO=\"aud\"\nlo/index.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=3000000,RESOLUTION=1920x1080\nhi/index.m3u8\n";
    let Ok(Playlist::Master(m)) = parse(text.as_bytes(), &base()) else {
        panic!("not a master playlist");
    };
    assert_eq!(m.variants.len(), 2);
    let lo = &m.variants[0];
    assert_eq!(
        lo.uri.as_str(),
        "https://cdn.example/path/video/lo/index.m3u8"
    );
    assert_eq!((lo.bandwidth, lo.rate()), (800_000, 600_000));
    assert_eq!(lo.resolution, Some((640, 360)));
    assert_eq!(lo.codecs.as_deref(), Some("avc1.4d401e,mp4a.40.2"));
    assert_eq!(lo.audio.as_deref(), Some("aud"));
    assert_eq!(m.renditions.len(), 2);
    assert_eq!(m.renditions[0].name, "English, main");
    assert_eq!(m.renditions[0].language.as_deref(), Some("en"));
    assert!(m.renditions[0].default);
    assert_eq!(m.renditions[1].uri, None);
}

#[test]
fn servers_breaking_shoulds_get_warnings_not_failures() {
    let m = media(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:3.7,\na.ts\nb.ts\n#EXT-X-FUTURE-TAG:X=1\n#EXT-X-ENDLIST\n",
    );
    assert_eq!(m.segments.len(), 2);
    assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
    let m = media("#EXTM3U\n#EXTINF:4,\na.ts\n#EXT-X-ENDLIST\n");
    assert_eq!(m.target_duration, 4);
    assert!(m.warnings[0].contains("TARGETDURATION"));
}

#[test]
fn attribute_lists_keep_commas_inside_quotes_and_refuse_junk() {
    let a = attributes(1, "A=1,B=\"x,y\",C=0x1F, D=\"\"").expect("test input");
    assert_eq!(a.get("A"), Some("1"));
    assert_eq!(a.get("B"), Some("x,y"));
    assert_eq!(a.get("C"), Some("0x1F"));
    assert_eq!(a.get("D"), Some(""));
    assert!(attributes(1, "A=\"open").is_err());
    assert!(attributes(1, "A=1,A=2").is_err());
    assert!(attributes(1, "NOEQUALS").is_err());
}

#[test]
fn ivs_are_left_padded_and_checked() {
    assert_eq!(iv(1, "0x1").expect("test input")[15], 1);
    assert_eq!(
        iv(1, "0X00000000000000000000000000000102").expect("test input")[14..],
        [1, 2]
    );
    assert!(iv(1, "0x").is_err());
    assert!(iv(1, "12").is_err());
    assert!(iv(1, "0x123456789012345678901234567890123").is_err());
    assert!(iv(1, "0xzz").is_err());
}

#[test]
fn an_https_playlist_never_sends_a_key_over_http_and_warns_of_clear_segments() {
    // base() is https.
    let e = error(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=AES-128,URI=\"http://keys.example/k\"\n#EXTINF:1,\na.ts\n",
    );
    assert!(e.contains("in the clear"), "{e}");
    let m = media(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://cdn.example/a.ts\n#EXTINF:1,\nhttp://cdn.example/b.ts\n#EXT-X-ENDLIST\n",
    );
    assert_eq!(m.warnings.len(), 1, "warned once: {:?}", m.warnings);
    assert!(m.warnings[0].contains("not protected"), "{:?}", m.warnings);
    // Over plain http, an http key is what the playlist already is: no refusal, no warning.
    let http = Url::parse("http://cdn.example/index.m3u8").expect("test input");
    let Ok(Playlist::Media(m)) = parse(
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\"\n#EXTINF:1,\na.ts\n",
        &http,
    ) else {
        panic!("an http playlist with an http key parses");
    };
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
}
