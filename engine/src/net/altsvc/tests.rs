use super::*;

fn h3(port: u16, secs: u64) -> Option<Advert> {
    Some(Advert::H3 {
        port,
        max_age: Duration::from_secs(secs),
    })
}

fn advert(port: u16, secs: u64) -> Advert {
    Advert::H3 {
        port,
        max_age: Duration::from_secs(secs),
    }
}

#[test]
fn fields_as_servers_send_them() {
    // Caddy, Cloudflare, nginx and ferry serve.
    assert_eq!(
        parse(r#"h3=":443"; ma=2592000"#),
        h3(443, MAX_AGE_CAP.as_secs())
    );
    assert_eq!(parse(r#"h3=":8443"; ma=86400"#), h3(8443, 86400));
    assert_eq!(
        parse(r#"h3-29=":443"; ma=93600, h3=":4433"; ma=60, h2=":443""#),
        h3(4433, 60)
    );
    assert_eq!(parse(r#"h3=":443""#), h3(443, DEFAULT_MAX_AGE.as_secs()));
    assert_eq!(parse(r#"h3=":443"; ma="120"; persist=1"#), h3(443, 120));
    assert_eq!(parse("clear"), Some(Advert::Clear));
    assert_eq!(parse(" CLEAR "), Some(Advert::Clear));
}

#[test]
fn what_is_not_an_h3_alternative_on_the_same_host() {
    assert_eq!(parse(r#"h2=":443""#), Some(Advert::Nothing));
    // Another host: not followed.
    assert_eq!(parse(r#"h3="other.example:443""#), Some(Advert::Nothing));
    assert_eq!(
        parse(r#"h3="evil.example:443", h2=":443""#),
        Some(Advert::Nothing)
    );
}

#[test]
fn malformed_and_oversized_fields_are_ignored() {
    for bad in [
        r#"h3=":0""#,
        r#"h3=":70000""#,
        r#"h3=":443"; ma=-1"#,
        r#"h3=":443"; ma=soon"#,
        r#"h3=":44"3""#,
        "h3",
        "",
    ] {
        assert_eq!(parse(bad), None, "{bad:?}");
    }
    let many = vec![r#"h2=":443""#; MAX_ALTERNATIVES + 1].join(", ");
    assert_eq!(parse(&many), None);
    let long = format!(r#"h3=":443"; x="{}""#, "a".repeat(MAX_FIELD));
    assert_eq!(parse(&long), None);
}

#[test]
fn the_memory_keeps_adverts_for_their_max_age_and_failures_for_a_while() {
    let mut m = Memory::default();
    let origin = "hub.example:443";
    assert!(m.advertised(origin, &advert(8443, 60), 1000));
    assert_eq!(
        m.get(origin, 1059),
        Some(&Entry::H3 {
            port: 8443,
            until: 1060
        })
    );
    assert_eq!(m.get(origin, 1060), None, "expired");
    // A failure wins over an advertisement of the same port until it expires; one of another
    // port replaces it.
    assert!(m.failed(origin, 443, "no answer", 2000));
    assert!(!m.advertised(origin, &advert(443, 600), 2001));
    assert!(matches!(m.get(origin, 2001), Some(Entry::Failed { .. })));
    let mut other = m.clone();
    assert!(other.advertised(origin, &advert(8443, 600), 2001));
    assert!(matches!(
        other.get(origin, 2001),
        Some(Entry::H3 { port: 8443, .. })
    ));
    let after = 2000 + FAILED_FOR.as_secs();
    assert_eq!(m.get(origin, after), None);
    assert!(m.advertised(origin, &advert(443, 600), after));
    assert!(m.advertised(origin, &Advert::Clear, after + 1));
    assert_eq!(m.get(origin, after + 1), None);
    assert!(!m.advertised(origin, &Advert::Nothing, after + 1));
}

#[test]
fn the_memory_is_bounded_and_drops_what_expires_first() {
    let mut m = Memory::default();
    for i in 0..(MAX_ORIGINS as u64 + 10) {
        let advert = Advert::H3 {
            port: 443,
            max_age: Duration::from_secs(100 + i),
        };
        m.advertised(&format!("h{i}.example:443"), &advert, 0);
    }
    assert_eq!(m.origins.len(), MAX_ORIGINS);
    assert!(m.get("h0.example:443", 1).is_none());
    assert!(
        m.get(&format!("h{}.example:443", MAX_ORIGINS + 9), 1)
            .is_some()
    );
}

#[test]
fn the_store_round_trips_and_refuses_a_symlink_and_junk() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Store {
        dir: Some(tmp.path().join("ferry")),
    };
    assert_eq!(store.load(), Memory::default(), "nothing yet");
    let mut m = Memory::default();
    m.failed("a.example:443", 443, "no answer", 5);
    store.save(&m);
    assert_eq!(store.load(), m);
    // A symlink in the file's place is not followed when read, and replaced when written.
    let file = tmp.path().join("ferry").join(FILE);
    let elsewhere = tmp.path().join("elsewhere.json");
    std::fs::write(&elsewhere, serde_json::to_vec(&m).expect("json")).expect("write");
    std::fs::remove_file(&file).expect("rm");
    std::os::unix::fs::symlink(&elsewhere, &file).expect("symlink");
    assert_eq!(store.load(), Memory::default(), "read through a symlink");
    store.save(&Memory::default());
    assert!(!std::fs::symlink_metadata(&file).expect("stat").is_symlink());
    assert_eq!(
        std::fs::read(&elsewhere).expect("read"),
        serde_json::to_vec(&m).expect("json"),
        "the symlink's target was written through"
    );
    // Junk and oversized files are dropped.
    std::fs::write(&file, b"{not json").expect("write");
    assert_eq!(store.load(), Memory::default());
    std::fs::write(&file, vec![b' '; MAX_FILE as usize + 1]).expect("write");
    assert_eq!(store.load(), Memory::default());
}
