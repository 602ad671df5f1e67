//! The connection limits of `ferry serve`: oversized heads refused and closed, a stalled client
//! or a slow reader never blocking the others, and keep-alive over many requests.

use super::*;

#[test]
fn oversized_heads_are_refused_and_closed() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let long = format!(
        "GET /api/models/org/name HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(20 << 10)
    );
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /api/models/org/name HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for (what, req) in [("20 KiB head", long), ("100 header fields", many)] {
        let mut conn = BufReader::new(serve.connect());
        conn.get_mut().write_all(req.as_bytes()).expect("send");
        let r = read_response(&mut conn, false);
        let fault = format!("a hostile request head ({what})");
        let test = "serve::oversized_heads_are_refused_and_closed";
        let outcome = "431 or 400, then the connection is closed";
        Trial::once((&fault, test), None, outcome, record::Damage::default()).record();
        assert!(r.status == 431 || r.status == 400, "{what}: {}", r.status);
        // Then the server closes the connection.
        let mut rest = Vec::new();
        let n = conn.read_to_end(&mut rest).unwrap_or(0);
        assert_eq!(n, 0, "{what}: nothing after the error");
        eprintln!("{what}: {} and closed", r.status);
    }
    let mut conn = BufReader::new(serve.connect());
    conn.get_mut()
        .write_all(b"NOT HTTP AT ALL\r\n\r\n")
        .expect("send");
    assert_eq!(read_response(&mut conn, false).status, 400);
}

#[test]
fn a_stalled_client_does_not_block_others() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    // Half a head, then nothing.
    let mut stalled = serve.connect();
    stalled
        .write_all(b"GET /api/models/org/name/revision/main HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("send half");
    // Others are served meanwhile (generous bound: the server's head deadline is 30 s).
    for _ in 0..3 {
        let r = get(&serve, "/api/models/org/name/revision/main");
        assert_eq!(r.status, 200);
        let r = get_range(
            &serve,
            "/org/name/resolve/main/model.safetensors",
            "bytes=0-0",
        );
        assert_eq!(r.status, 206);
    }
    // The stalled request still completes once the rest arrives.
    stalled
        .write_all(b"1\r\nConnection: close\r\n\r\n")
        .expect("send rest");
    let r = read_response(&mut BufReader::new(stalled), false);
    assert_eq!(r.json()["sha"], COMMIT);
    eprintln!("a stalled head did not block other connections");
}

/// A connection to `port` with a small receive buffer (set before the connect, so the window
/// stays small): a slow reader holds little in flight.
pub(super) fn small_window_connect(port: u16) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, ipproto, socket, sockopt};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, Some(ipproto::TCP)).expect("socket");
    sockopt::set_socket_recv_buffer_size(&fd, 64 << 10).expect("SO_RCVBUF");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    rustix::net::connect(&fd, &addr).expect("connect");
    TcpStream::from(fd)
}

#[test]
fn a_slow_reader_is_disconnected_and_a_fast_one_is_not() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("root");
    let big = seeded(32 << 20, 11);
    write_cache_repo(
        &root,
        "models--org--big",
        COMMIT,
        "main",
        &[file("big.bin", big.clone(), true)],
    );
    // Every client must read 1 MiB/s over each second.
    let serve = Serve::start_with(
        &root,
        None,
        None,
        &["--send-timeout", "1", "--min-send-rate", "1M"],
    );
    let target = "/org/big/resolve/main/big.bin";
    // A reader at full speed gets the whole body under these limits.
    let r = get(&serve, target);
    assert_eq!(r.status, 200);
    let fast = record::damage_bytes(&big, &r.body);
    // A reader taking 64 KiB every 200 ms (320 KiB/s): reading the whole body would take over
    // 100 s. The server cuts it off after a second or two of that, with a reset.
    let mut slow = small_window_connect(serve.port);
    send(&mut slow, "GET", target, &[], true);
    let mut got = 0usize;
    let mut chunk = vec![0u8; 64 << 10];
    let started = std::time::Instant::now();
    let end = loop {
        std::thread::sleep(Duration::from_millis(200));
        match slow.read(&mut chunk) {
            Ok(0) => break "closed".to_owned(),
            Ok(n) => got += n,
            Err(e) => break e.to_string(),
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "a reader at 320 KiB/s was never disconnected ({got} bytes read)"
        );
    };
    Trial::once(
        (
            "a client reading a body at 320 KiB/s (--min-send-rate 1M)",
            "serve::a_slow_reader_is_disconnected_and_a_fast_one_is_not",
        ),
        None,
        "the slow reader is reset; a fast reader gets the whole body",
        fast,
    )
    .record();
    assert_eq!(
        (fast.lost, fast.corrupted, fast.checked),
        (0, 0, big.len() as u64),
        "the fast reader got the file"
    );
    assert!(
        got < big.len(),
        "disconnected before the end of the body: {got} of {} bytes ({end})",
        big.len()
    );
    eprintln!(
        "a slow reader was cut off after {got} bytes in {:.1} s ({end}); a fast one got all {} bytes",
        started.elapsed().as_secs_f64(),
        big.len()
    );
    // Others are still served.
    let r = get_range(&serve, target, "bytes=0-0");
    assert_eq!(r.status, 206);
}

#[test]
fn keep_alive_serves_many_requests_per_connection() {
    let tmp = cache_root();
    let serve = Serve::start(&tmp.path().join("root"), None);
    let files = cache_model_files();
    let mut conn = BufReader::new(serve.connect());
    // One after the other.
    send(
        conn.get_mut(),
        "GET",
        "/api/models/org/name/revision/main",
        &[],
        false,
    );
    let r = read_response(&mut conn, false);
    assert_eq!(
        (r.status, r.header("Connection")),
        (200, Some("keep-alive"))
    );
    send(
        conn.get_mut(),
        "HEAD",
        "/org/name/resolve/main/config.json",
        &[],
        false,
    );
    assert_eq!(read_response(&mut conn, true).status, 200);
    send(
        conn.get_mut(),
        "GET",
        "/org/name/resolve/main/model.safetensors",
        &[("Range", "bytes=10-19")],
        false,
    );
    let r = read_response(&mut conn, false);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &files[0].bytes[10..20])
    );
    send(
        conn.get_mut(),
        "GET",
        "/org/name/resolve/main/nope",
        &[],
        false,
    );
    assert_eq!(read_response(&mut conn, false).status, 404);
    // Pipelined: two requests in one write, two answers in order.
    let two = "GET /org/name/resolve/main/one.bin HTTP/1.1\r\nHost: x\r\n\r\n\
               GET /org/name/resolve/main/sub/y.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    conn.get_mut().write_all(two.as_bytes()).expect("send two");
    assert_eq!(read_response(&mut conn, false).body, [0x5a]);
    let r = read_response(&mut conn, false);
    assert_eq!(
        (r.body.as_slice(), r.header("Connection")),
        (&b"nested y\n"[..], Some("close"))
    );
    let mut rest = Vec::new();
    assert_eq!(
        conn.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed after Connection: close"
    );
    eprintln!("6 requests on one connection, 2 of them pipelined");
}
