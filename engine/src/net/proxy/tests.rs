//! Tests of `proxy`.

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn proxy_urls_parse_and_never_show_credentials() {
    let p = Proxy::parse("http://us%40er:p%3Ass@proxy.corp:3128").expect("parse");
    assert_eq!(
        (p.kind, p.host.as_str(), p.port),
        (ProxyKind::Http, "proxy.corp", 3128)
    );
    assert_eq!(p.to_string(), "http://***@proxy.corp:3128");
    assert_eq!(format!("{p:?}"), "Proxy(http://***@proxy.corp:3128)");
    let auth = p.authorization().expect("auth");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.strip_prefix("Basic ").expect("basic"))
        .expect("b64");
    assert_eq!(decoded, b"us@er:p:ss");
    assert_eq!(
        Proxy::parse("proxy:8080").expect("bare").to_string(),
        "http://proxy:8080"
    );
    assert_eq!(
        Proxy::parse("socks5h://[::1]").expect("v6").to_string(),
        "socks5h://[::1]:1080"
    );
    let err = Proxy::parse("ftp://user:secret@h").expect_err("scheme");
    assert!(!err.contains("secret") && err.contains("***@h"), "{err}");
}

#[test]
fn environment_and_no_proxy_choose_like_curl() {
    let p = Proxies::from_lookup(
        None,
        env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:1"),
            ("ALL_PROXY", "socks5h://all:1080"),
            (
                "NO_PROXY",
                "internal.corp, .local,10.0.0.0/8,[::1],127.0.0.1:8080 ,*.svc",
            ),
        ]),
    )
    .expect("env");
    let host = |scheme, h, port| p.for_url(scheme, h, port).map(|p| p.host.clone());
    assert_eq!(
        host("https", "huggingface.co", 443).as_deref(),
        Some("lower")
    );
    assert_eq!(host("http", "huggingface.co", 80).as_deref(), Some("all"));
    assert_eq!(host("https", "internal.corp", 443), None);
    assert_eq!(host("https", "a.b.internal.corp", 443), None);
    assert_eq!(
        host("https", "notinternal.corp", 443).as_deref(),
        Some("lower")
    );
    assert_eq!(host("https", "x.local", 443), None);
    assert_eq!(host("https", "10.1.2.3", 443), None);
    assert_eq!(host("https", "11.1.2.3", 443).as_deref(), Some("lower"));
    assert_eq!(host("https", "[::1]", 443), None);
    assert_eq!(host("http", "127.0.0.1", 8080), None);
    assert_eq!(host("http", "127.0.0.1", 8081).as_deref(), Some("all"));
    assert_eq!(host("https", "a.svc", 443), None);
    assert_eq!(
        host("https", "HUGGINGFACE.CO", 443).as_deref(),
        Some("lower")
    );

    let all =
        Proxies::from_lookup(Some("socks5://s:1"), env(&[("NO_PROXY", "*")])).expect("explicit");
    assert_eq!(
        all.for_url("https", "x", 443),
        None,
        "* bypasses every host"
    );
    let none = Proxies::from_lookup(None, env(&[])).expect("empty");
    assert_eq!(none.for_url("https", "x", 443), None);
    assert!(Proxies::from_lookup(Some("gopher://x"), env(&[])).is_err());
}

/// Runs a handshake against scripted replies; returns what was sent.
fn drive(mut h: Handshake, replies: &[&[u8]]) -> Result<Vec<Vec<u8>>, ProxyError> {
    let mut sent = Vec::new();
    let mut replies = replies.iter();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let out = h.take_output();
        if !out.is_empty() {
            sent.push(out);
        }
        if h.is_done() {
            return Ok(sent);
        }
        if let Some(n) = h.feed(&buf)? {
            buf.drain(..n);
            continue;
        }
        // Byte by byte: every split of a reply must work.
        let next = replies
            .next()
            .expect("handshake wants more than the script has");
        for b in next.iter() {
            buf.push(*b);
            if let Some(n) = h.feed(&buf)? {
                buf.drain(..n);
                break;
            }
        }
        let out = h.take_output();
        if !out.is_empty() {
            sent.push(out);
        }
        if h.is_done() {
            return Ok(sent);
        }
    }
}

#[test]
fn http_connect() {
    let p = Arc::new(Proxy::parse("http://u:p@proxy:3128").expect("proxy"));
    let sent = drive(
        Handshake::new(p.clone(), Dest::Name("huggingface.co".into(), 443)),
        &[b"HTTP/1.1 200 Connection established\r\n\r\n"],
    )
    .expect("tunnel");
    let req = String::from_utf8(sent[0].clone()).expect("utf8");
    assert!(req.starts_with("CONNECT huggingface.co:443 HTTP/1.1\r\nHost: huggingface.co:443\r\n"));
    assert!(req.contains("Proxy-Authorization: Basic dTpw\r\n"), "{req}");
    let err = drive(
        Handshake::new(p, Dest::Name("h".into(), 443)),
        &[b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"],
    )
    .expect_err("407");
    assert!(
        err.0.contains("refused the credentials (407)") && !err.0.contains(":p@"),
        "{err}"
    );
}

#[test]
fn bytes_after_the_final_reply_are_refused() {
    let p = Arc::new(Proxy::parse("http://proxy:3128").expect("proxy"));
    let mut h = Handshake::new(p, Dest::Name("h".into(), 443));
    let _ = h.take_output();
    let err = h
        .feed(b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\n")
        .expect_err("leftover");
    assert!(
        err.0.contains("sent data before the tunnel was used"),
        "{err}"
    );
    assert!(!h.is_done());
}

#[test]
fn socks5_with_and_without_credentials() {
    let anon = Arc::new(Proxy::parse("socks5h://s:1080").expect("proxy"));
    let sent = drive(
        Handshake::new(anon, Dest::Name("hf.co".into(), 443)),
        &[&[5, 0], &[5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90]],
    )
    .expect("tunnel");
    assert_eq!(sent[0], vec![5, 1, 0]);
    assert_eq!(
        sent[1],
        vec![5, 1, 0, 3, 5, b'h', b'f', b'.', b'c', b'o', 1, 187]
    );

    let auth = Arc::new(Proxy::parse("socks5://ab:cd@s:1080").expect("proxy"));
    let dest = Dest::Addr("[::1]:80".parse().expect("addr"));
    let sent = drive(
        Handshake::new(auth.clone(), dest.clone()),
        &[&[5, 2], &[1, 0], &[5, 0, 0, 3, 3, b'a', b'b', b'c', 0, 80]],
    )
    .expect("tunnel");
    assert_eq!(sent[0], vec![5, 2, 0, 2]);
    assert_eq!(sent[1], vec![1, 2, b'a', b'b', 2, b'c', b'd']);
    assert_eq!(sent[2][..4], [5, 1, 0, 4]);
    let refused = drive(
        Handshake::new(auth.clone(), dest.clone()),
        &[&[5, 2], &[1, 1]],
    );
    assert!(
        refused
            .expect_err("bad creds")
            .0
            .contains("refused the credentials")
    );
    let unreachable = drive(
        Handshake::new(auth, dest),
        &[&[5, 2], &[1, 0], &[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]],
    );
    assert!(
        unreachable
            .expect_err("refused")
            .0
            .contains("connection refused")
    );
}
