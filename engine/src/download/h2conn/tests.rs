use super::*;
use crate::net::target::Resolver;
use crate::net::{Dialer, tls::TlsClient};

fn head(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
    ResponseHead::from_parts(
        status,
        headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn ranged_answers_get_the_http1_checks() {
    let url = "https://h/f";
    let range = 100..200;
    let good = head(
        206,
        &[
            ("content-range", "bytes 100-199/1000"),
            ("content-length", "100"),
        ],
    );
    assert_eq!(
        check_ranged(url, &good, &range, Some(1000)).expect("exact"),
        1000
    );
    // No Content-Length: END_STREAM ends the body, which is counted instead.
    let no_length = head(206, &[("content-range", "bytes 100-199/1000")]);
    assert!(check_ranged(url, &no_length, &range, Some(1000)).is_ok());
    let whole = head(200, &[("content-length", "1000")]);
    assert!(matches!(
        check_ranged(url, &whole, &range, Some(1000)),
        Err(GetError::RangeIgnored { .. })
    ));
    let other = head(
        206,
        &[
            ("content-range", "bytes 100-299/1000"),
            ("content-length", "200"),
        ],
    );
    assert!(matches!(
        check_ranged(url, &other, &range, Some(1000)),
        Err(GetError::ContentRangeMismatch { .. })
    ));
    let long = head(
        206,
        &[
            ("content-range", "bytes 100-199/1000"),
            ("content-length", "101"),
        ],
    );
    assert!(matches!(
        check_ranged(url, &long, &range, Some(1000)),
        Err(GetError::Protocol { .. })
    ));
    let resized = head(
        206,
        &[
            ("content-range", "bytes 100-199/2000"),
            ("content-length", "100"),
        ],
    );
    assert!(matches!(
        check_ranged(url, &resized, &range, Some(1000)),
        Err(GetError::SizeChanged { .. })
    ));
    let encoded = head(
        206,
        &[
            ("content-range", "bytes 100-199/1000"),
            ("content-length", "100"),
            ("content-encoding", "gzip"),
        ],
    );
    assert!(check_ranged(url, &encoded, &range, Some(1000)).is_err());
}

/// CPU time of this process so far (all threads), from `/proc/self/stat`, in seconds.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// CPU time of this thread so far (nanosecond precision), in seconds.
fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    s.split_whitespace()
        .next()
        .expect("ns")
        .parse::<f64>()
        .expect("ns")
        / 1e9
}

/// The HTTP/1.1 baseline on the data plane's own connection (`Conn`: request, head, the
/// watched reads of `read_into`), the ranges one after another, each body copied into a
/// 1 MiB buffer and hashed as [`fetch_one`] does.
async fn fetch_ranges_http1(
    conn: &mut super::super::conn::Conn,
    target: &Target,
    ranges: &[Range<u64>],
    total: Option<u64>,
) -> Result<Vec<u32>, GetError> {
    let mut crcs = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    for range in ranges {
        let head = conn.request(target, Some(range.clone())).await?;
        check_ranged(&target.display, &head, range, total)?;
        let want = range.end - range.start;
        let mut crc = crc32fast::Hasher::new();
        let first = conn.pending.len().min(want as usize);
        crc.update(&conn.pending[..first]);
        conn.pending.drain(..first);
        let mut got = first as u64;
        while got < want {
            buf.clear();
            let room = (want - got).min(buf.capacity() as u64) as usize;
            let compio::BufResult(r, b) = conn.read_into(buf, 0, room).await;
            buf = b;
            match r.map_err(|e| conn.net_err("read body", e))? {
                0 => {
                    return Err(GetError::ShortBody {
                        url: target.display.clone(),
                        offset: range.start,
                        expected: want,
                        received: got,
                    });
                }
                n => {
                    crc.update(&buf[..n]);
                    got += n as u64;
                }
            }
        }
        conn.reused = true;
        crcs.push(crc.finalize());
    }
    Ok(crcs)
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The loopback measurement (`scripts/h2-spike.sh` starts the origin and runs it):
/// `FERRY_H2_ROUNDS` rounds of 16 ranges of 8 MiB, each round the next 128 MiB of the file,
/// on one connection: `FERRY_H2_MODE=h2` all 16 in flight on one HTTP/2 connection,
/// `h1` one after another on one HTTP/1.1 connection. Every range's CRC-32 is compared with
/// the local copy's (`FERRY_H2_FILE`).
#[test]
#[ignore = "needs a local HTTPS origin with HTTP/2: scripts/h2-spike.sh"]
fn loopback_h2_against_http1() {
    let (Some(url), Some(ca), Some(file)) = (
        var("FERRY_H2_URL"),
        var("FERRY_H2_CA"),
        var("FERRY_H2_FILE"),
    ) else {
        panic!("set FERRY_H2_URL, FERRY_H2_CA and FERRY_H2_FILE");
    };
    let mode = var("FERRY_H2_MODE").unwrap_or_else(|| "h2".into());
    let rounds: u64 = var("FERRY_H2_ROUNDS").map_or(8, |r| r.parse().expect("rounds"));
    let per: u64 = var("FERRY_H2_RANGE_MIB").map_or(8, |r| r.parse().expect("MiB")) << 20;
    let n: u64 = var("FERRY_H2_STREAMS").map_or(16, |r| r.parse().expect("streams"));
    let data = std::fs::read(&file).expect("the local copy");
    let total = data.len() as u64;
    assert!(rounds * n * per <= total, "the file is too small");
    let plan: Vec<Vec<Range<u64>>> = (0..rounds)
        .map(|r| {
            (0..n)
                .map(|i| (r * n + i) * per..(r * n + i + 1) * per)
                .collect()
        })
        .collect();
    let expected: Vec<Vec<u32>> = plan
        .iter()
        .map(|round| {
            round
                .iter()
                .map(|r| crc32fast::hash(&data[r.start as usize..r.end as usize]))
                .collect()
        })
        .collect();
    drop(data);
    let windows = Windows {
        connection: var("FERRY_H2_CONN_WINDOW_MIB").map_or(64, |v| v.parse().expect("MiB")) << 20,
        stream: var("FERRY_H2_STREAM_WINDOW_MIB").map_or(16, |v| v.parse().expect("MiB")) << 20,
        max_frame: var("FERRY_H2_MAX_FRAME_KIB").map_or(1024, |v| v.parse().expect("KiB")) << 10,
    };
    let rt = compio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dialer = Dialer {
            tls: TlsClient::new(&[std::path::PathBuf::from(&ca)]),
            ..Dialer::default()
        };
        let target = Target::new(&url, &mut Resolver::new(dialer)).expect("target");
        let (cpu0, tcpu0, t0) = (process_cpu(), thread_cpu(), std::time::Instant::now());
        match mode.as_str() {
            "h2" => {
                let conn = match H2Conn::open(&target, windows).await.expect("open") {
                    Opened::H2(c) => std::rc::Rc::new(c),
                    Opened::Http1(_) => panic!("the server did not choose h2"),
                };
                for (round, want) in plan.iter().zip(&expected) {
                    let got = fetch_ranges_on(&conn, &target, round, Some(total))
                        .await
                        .expect("h2 ranges");
                    assert_eq!(&got, want, "content differs");
                }
            }
            "h1" => {
                let mut conn = super::super::conn::Conn::open(&target).await.expect("open");
                for (round, want) in plan.iter().zip(&expected) {
                    let got = fetch_ranges_http1(&mut conn, &target, round, Some(total))
                        .await
                        .expect("http/1.1 ranges");
                    assert_eq!(&got, want, "content differs");
                }
            }
            other => panic!("FERRY_H2_MODE {other:?}: h2 or h1"),
        }
        let secs = t0.elapsed().as_secs_f64();
        let bytes = (rounds * n * per) as f64;
        println!(
            "RESULT mode={mode} bytes={} secs={secs:.3} MB/s={:.0} client_cpu_s={:.3} (thread {:.3}) cpu_s_per_GB={:.3}",
            bytes as u64,
            bytes / secs / 1e6,
            process_cpu() - cpu0,
            thread_cpu() - tcpu0,
            (thread_cpu() - tcpu0) / (bytes / 1e9),
        );
    });
}

/// How the test server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behave {
    /// 206 with the range's bytes.
    Good,
    /// 200 with the whole file.
    Whole,
    /// Half the body, then RST_STREAM (INTERNAL_ERROR).
    ResetMid,
    /// Half the body, then GOAWAY (INTERNAL_ERROR) for the whole connection.
    GoAwayMid,
    /// One byte more than the range, no Content-Length.
    TooMany,
    /// The body ends (END_STREAM) a byte short, no Content-Length.
    Short,
}

const FILE: u64 = 4 << 20;

fn byte_at(i: u64) -> u8 {
    (i % 251) as u8
}

/// A CA and a certificate for `localhost` signed by it: the CA as a PEM file, the server's
/// rustls config.
fn pki(dir: &std::path::Path) -> (std::path::PathBuf, std::sync::Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("der");
    let mut config = rustls::ServerConfig::builder_with_provider(crate::net::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .expect("config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    (ca_path, std::sync::Arc::new(config))
}

/// An HTTP/2 server over the same adapter (server side), answering every request as `behave`
/// says; `max_streams` is its SETTINGS_MAX_CONCURRENT_STREAMS.
async fn serve(
    listener: compio::net::TcpListener,
    config: std::sync::Arc<rustls::ServerConfig>,
    behave: Behave,
    max_streams: u32,
) {
    let Ok((tcp, _)) = listener.accept().await else {
        return;
    };
    let tls = rustls::ServerConnection::new(config).expect("session");
    let io = crate::net::h2::H2Io::over(tcp, tls, Vec::new());
    let Ok(mut conn) = h2::server::Builder::new()
        .max_concurrent_streams(max_streams)
        .handshake::<_, Bytes>(io)
        .await
    else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let range = req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .map(|(a, b)| a.parse::<u64>().expect("a")..b.parse::<u64>().expect("b") + 1)
            .expect("a range");
        let (status, bytes) = match behave {
            Behave::Whole => (200, 0..FILE),
            Behave::TooMany => (206, range.start..range.end + 1),
            Behave::Short => (206, range.start..range.end - 1),
            _ => (206, range.clone()),
        };
        let mut answer = http::Response::builder().status(status);
        if status == 206 {
            answer = answer.header(
                "content-range",
                format!("bytes {}-{}/{FILE}", range.start, range.end - 1),
            );
        }
        if matches!(behave, Behave::Good | Behave::Whole) {
            answer = answer.header("content-length", (bytes.end - bytes.start).to_string());
        }
        let mut send = respond
            .send_response(answer.body(()).expect("answer"), false)
            .expect("send head");
        let body: Vec<u8> = bytes.clone().map(byte_at).collect();
        match behave {
            Behave::ResetMid | Behave::GoAwayMid => {
                let half = Bytes::from(body).slice(..(bytes.end - bytes.start) as usize / 2);
                send.send_data(half, false).expect("data");
                if behave == Behave::ResetMid {
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                } else {
                    conn.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
                }
            }
            _ => send.send_data(Bytes::from(body), true).expect("data"),
        }
    }
    // Until the client is done with the connection.
    while conn.accept().await.is_some() {}
}

/// Runs `ranges` against a server that answers as `behave` says.
fn against(behave: Behave, max_streams: u32, ranges: &[Range<u64>]) -> Result<Vec<u32>, GetError> {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, config) = pki(dir.path());
    let rt = compio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let listener = compio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = compio::runtime::spawn(serve(listener, config, behave, max_streams));
        let dialer = Dialer {
            tls: TlsClient::new(&[ca]),
            ..Dialer::default()
        };
        let url = format!("https://localhost:{port}/f");
        let target = Target::new(&url, &mut Resolver::new(dialer)).expect("target");
        let got = fetch_ranges(&target, ranges, Some(FILE), Windows::default()).await;
        drop(server);
        got.map(|crcs| crcs.expect("h2 was chosen"))
    })
}

fn ranges(n: u64, each: u64) -> Vec<Range<u64>> {
    (0..n).map(|i| i * each..(i + 1) * each).collect()
}

#[test]
fn many_ranges_in_flight_on_one_connection() {
    let want = ranges(8, 256 << 10);
    let expected: Vec<u32> = want
        .iter()
        .map(|r| crc32fast::hash(&r.clone().map(byte_at).collect::<Vec<u8>>()))
        .collect();
    assert_eq!(against(Behave::Good, 100, &want).expect("good"), expected);
    // A server that takes one stream at a time: h2 holds the others back until it may.
    assert_eq!(
        against(Behave::Good, 1, &want).expect("one at a time"),
        expected
    );
}

#[test]
fn hostile_answers_are_errors() {
    let want = ranges(4, 256 << 10);
    let is = |behave, check: fn(&GetError) -> bool| {
        let e = against(behave, 100, &want).expect_err("refused");
        assert!(check(&e), "{behave:?}: {e:?}");
    };
    is(Behave::Whole, |e| {
        matches!(e, GetError::RangeIgnored { .. })
    });
    is(Behave::TooMany, |e| matches!(e, GetError::Protocol { .. }));
    is(Behave::Short, |e| matches!(e, GetError::ShortBody { .. }));
    is(Behave::ResetMid, |e| matches!(e, GetError::Network { .. }));
    is(Behave::GoAwayMid, |e| matches!(e, GetError::Network { .. }));
}
