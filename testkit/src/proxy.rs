//! A fault-injecting HTTP/1.1 proxy for the misbehaviours a real nginx will not produce. It sits
//! between ferry and nginx, forwards each request, and damages responses as its [`Fault`] says.
//! It understands just enough HTTP for that: one request at a time per connection (what ferry
//! sends), heads up to the blank line, bodies by `Content-Length`.
//!
//! Threads per connection; the listener stops when the guard drops.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// What to do to responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything untouched.
    None,
    /// For response number `nth` (0-based, counted over all connections), forward only `keep`
    /// body bytes, then close the connection.
    TruncateBody {
        /// Which response.
        nth: usize,
        /// Body bytes to forward.
        keep: u64,
    },
    /// Every response forwards only `keep` body bytes, then the connection closes.
    TruncateAll {
        /// Body bytes to forward per response.
        keep: u64,
    },
    /// For response number `nth`, flip every bit of body byte `at` (counted from the start of
    /// that response's body): the bytes arrive intact in size but wrong in content.
    FlipByte {
        /// Which response.
        nth: usize,
        /// Which body byte.
        at: u64,
    },
    /// For response number `nth`, shift the `Content-Range` by one byte (`bytes A-B/T` becomes
    /// `bytes A+1-B+1/T`), leaving the body alone.
    ShiftContentRange {
        /// Which response.
        nth: usize,
    },
    /// For response number `nth`, forward only `keep` body bytes, then send nothing more while
    /// keeping the connection open (for a minute): a stalled server.
    Stall {
        /// Which response.
        nth: usize,
        /// Body bytes to forward before stalling.
        keep: u64,
    },
    /// Every body is forwarded at `bytes_per_sec` (per connection), in 16 KiB steps: a slow
    /// server. (nginx's `limit_rate` cannot make one for ranged requests of a few MiB: the
    /// socket buffers on loopback take a whole range at once.)
    Throttle {
        /// Body bytes per second on each connection.
        bytes_per_sec: u64,
    },
    /// The first `times` requests whose request line contains `uri_contains` get `status`
    /// (a 500, 503 or 429) with `Retry-After: retry_after` (seconds), without reaching the
    /// upstream: a burst of errors that passes.
    Refuse {
        /// What the request line must contain.
        uri_contains: &'static str,
        /// How many such requests fail.
        times: usize,
        /// The status answered.
        status: u16,
        /// The `Retry-After` seconds sent with it.
        retry_after: u32,
    },
    /// For response number `nth`, forward `keep` body bytes, then reset the connection (an RST,
    /// not a FIN: `SO_LINGER` 0).
    Reset {
        /// Which response.
        nth: usize,
        /// Body bytes to forward first.
        keep: u64,
    },
    /// Request number `nth` (0-based, over all connections) goes upstream without its `Range`
    /// header, so the answer is a `200` with the whole file where a `206` was asked for.
    IgnoreRange {
        /// Which request.
        nth: usize,
    },
    /// Response number `nth` dribbles out: its head one byte per write with a pause of a
    /// millisecond, its body in writes of 7 bytes (no Nagle): heads and bodies split anywhere.
    Drip {
        /// Which response.
        nth: usize,
    },
    /// A raw relay (no HTTP parsing, so it works under TLS too) that flips every bit of byte
    /// `at` of the server-to-client stream of connection `conn` (0-based, in accept order):
    /// corruption in flight below TLS, which the record layer's authentication detects.
    FlipStreamByte {
        /// Which connection.
        conn: usize,
        /// Which byte of what the server sends on it.
        at: u64,
    },
    /// Response number `nth` gets `bytes` of extra header lines (`X-Junk-N: aaaa...`, 1 KiB
    /// each) before its blank line: a gigantic head.
    HugeHead {
        /// Which response.
        nth: usize,
        /// Bytes of junk headers.
        bytes: usize,
    },
}

impl Fault {
    /// The fault in words, as the reliability record names it. Which response it hits is left
    /// out: the record counts those as tries of the same fault.
    pub fn describe(&self) -> String {
        match *self {
            Fault::None => "none".into(),
            Fault::TruncateBody { .. } => "body cut short (connection closed mid-body)".into(),
            Fault::TruncateAll { .. } => "every body cut short".into(),
            Fault::FlipByte { .. } => "a corrupted byte in flight".into(),
            Fault::ShiftContentRange { .. } => "a wrong Content-Range".into(),
            Fault::Stall { .. } => "a stalled body (no byte for a minute)".into(),
            Fault::Throttle { .. } => "a slow server".into(),
            Fault::Refuse { status, .. } => format!("a burst of {status} with Retry-After"),
            Fault::Reset { .. } => "connection reset (RST) mid-body".into(),
            Fault::IgnoreRange { .. } => "a 200 with the whole file where a 206 was asked".into(),
            Fault::Drip { .. } => "a response dribbled out a few bytes at a time".into(),
            Fault::HugeHead { .. } => "a gigantic response head (16 MiB)".into(),
            Fault::FlipStreamByte { .. } => "a corrupted byte in flight under TLS".into(),
        }
    }
}

/// A running proxy. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Responses seen so far.
    pub responses: Arc<AtomicUsize>,
    /// Requests answered with a made-up error ([`Fault::Refuse`]).
    pub refused: Arc<AtomicUsize>,
    /// Requests forwarded upstream so far.
    pub requests: Arc<AtomicUsize>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `127.0.0.1:upstream`.
    pub fn start(upstream: u16, fault: Fault) -> FaultProxy {
        FaultProxy::start_on("127.0.0.1:0", upstream, fault)
    }

    /// Starts a proxy listening on `bind` (`"[::1]:0"`: an IPv6-only front for an IPv4 nginx).
    pub fn start_on(bind: &str, upstream: u16, fault: Fault) -> FaultProxy {
        let listener = TcpListener::bind(bind).expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let responses = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let counters = Counters {
            responses: Arc::clone(&responses),
            refused: Arc::clone(&refused),
            requests: Arc::clone(&requests),
            connections: Arc::new(AtomicUsize::new(0)),
        };
        let stop2 = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let counters = counters.clone();
                        std::thread::spawn(move || {
                            let _ = serve(client, upstream, fault, &counters);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            port,
            stop,
            responses,
            refused,
            requests,
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The proxy's counters, shared by its connection threads.
#[derive(Clone)]
struct Counters {
    responses: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Ok(Some(head));
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> u64 {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn shift_range(head: &str) -> String {
    head.lines()
        .map(|l| match l.split_once(':') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("content-range") => {
                let v = v.trim().trim_start_matches("bytes ").to_owned();
                let shifted = v.split_once('/').and_then(|(r, t)| {
                    let (a, b) = r.split_once('-')?;
                    Some(format!(
                        "bytes {}-{}/{t}",
                        a.parse::<u64>().ok()? + 1,
                        b.parse::<u64>().ok()? + 1
                    ))
                });
                format!("Content-Range: {}", shifted.unwrap_or(v))
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// The request head without its `Range` header.
fn without_range(req: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(req);
    let kept: Vec<&str> = text
        .split("\r\n")
        .filter(|l| {
            !l.split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        })
        .collect();
    kept.join("\r\n").into_bytes()
}

/// `head` (ending in a blank line) with `bytes` of junk header lines before the blank line.
fn with_junk(head: &str, bytes: usize) -> String {
    let mut out = head.trim_end().to_owned();
    let line = "a".repeat(1000);
    for i in 0..bytes.div_ceil(1024) {
        out.push_str(&format!("\r\nX-Junk-{i:05}: {line}"));
    }
    out + "\r\n\r\n"
}

/// An answer made up by the proxy (a status and `Retry-After`, no body).
fn refusal(status: u16, retry_after: u32) -> String {
    let reason = match status {
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!("HTTP/1.1 {status} {reason}\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\n\r\n")
}

/// Ends `client` with an RST: `SO_LINGER` 0, then close.
fn reset(client: TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO));
    drop(client);
}

/// Copies bytes both ways between `client` and `upstream`, flipping the byte at offset `flip`
/// (if any) of what upstream sends.
fn relay(client: TcpStream, upstream: u16, flip: Option<u64>) -> std::io::Result<()> {
    let up = TcpStream::connect(("127.0.0.1", upstream))?;
    let (mut c_in, mut u_out) = (client.try_clone()?, up.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut u_out);
        let _ = u_out.shutdown(std::net::Shutdown::Write);
    });
    let (mut u_in, mut c_out) = (up, client);
    let mut at = 0u64;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = u_in.read(&mut chunk)?;
        if n == 0 {
            let _ = c_out.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        if let Some(f) = flip.filter(|f| (at..at + n as u64).contains(f)) {
            chunk[(f - at) as usize] ^= 0xff;
        }
        at += n as u64;
        c_out.write_all(&chunk[..n])?;
    }
}

fn serve(mut client: TcpStream, upstream: u16, fault: Fault, c: &Counters) -> std::io::Result<()> {
    let index = c.connections.fetch_add(1, Ordering::SeqCst);
    if let Fault::FlipStreamByte { conn, at } = fault {
        return relay(client, upstream, (conn == index).then_some(at));
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let (mut cbuf, mut ubuf) = (Vec::new(), Vec::new());
    loop {
        let Some(mut req) = read_head(&mut client, &mut cbuf)? else {
            return Ok(());
        };
        if let Fault::Refuse {
            uri_contains,
            times,
            status,
            retry_after,
        } = fault
        {
            let line = String::from_utf8_lossy(&req);
            let line = line.lines().next().unwrap_or("");
            if line.contains(uri_contains) && c.refused.fetch_add(1, Ordering::SeqCst) < times {
                client.write_all(refusal(status, retry_after).as_bytes())?;
                continue;
            }
        }
        let request = c.requests.fetch_add(1, Ordering::SeqCst);
        if matches!(fault, Fault::IgnoreRange { nth } if nth == request) {
            req = without_range(&req);
        }
        up.write_all(&req)?;
        let Some(head) = read_head(&mut up, &mut ubuf)? else {
            return Ok(());
        };
        let nth = c.responses.fetch_add(1, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&head).into_owned();
        let len = content_length(&text);
        let (head_out, keep) = match fault {
            Fault::ShiftContentRange { nth: n } if n == nth => {
                (shift_range(text.trim_end()) + "\r\n\r\n", len)
            }
            Fault::TruncateBody { nth: n, keep } if n == nth => (text, keep.min(len)),
            Fault::TruncateAll { keep } => (text, keep.min(len)),
            Fault::Stall { nth: n, keep } if n == nth => (text, keep.min(len)),
            Fault::Reset { nth: n, keep } if n == nth => (text, keep.min(len)),
            Fault::HugeHead { nth: n, bytes } if n == nth => (with_junk(&text, bytes), len),
            _ => (text, len),
        };
        let mut flip = match fault {
            Fault::FlipByte { nth: n, at } if n == nth && at < len => Some(at),
            _ => None,
        };
        let drip = matches!(fault, Fault::Drip { nth: n } if n == nth);
        if drip {
            client.set_nodelay(true)?;
            for b in head_out.as_bytes() {
                client.write_all(std::slice::from_ref(b))?;
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            client.write_all(head_out.as_bytes())?;
        }
        let mut left = keep;
        let mut skip = len - keep;
        loop {
            let mut take = (ubuf.len() as u64).min(left) as usize;
            if let Fault::Throttle { bytes_per_sec } = fault {
                take = take.min(16 << 10);
                let pause = take as f64 / bytes_per_sec.max(1) as f64;
                std::thread::sleep(Duration::from_secs_f64(pause));
            }
            if let Some(at) = flip {
                let sent = keep - left;
                if at < sent + take as u64 {
                    let i = (at - sent) as usize;
                    ubuf[i] = !ubuf[i];
                    flip = None;
                }
            }
            if drip {
                for piece in ubuf[..take].chunks(7) {
                    client.write_all(piece)?;
                }
            } else {
                client.write_all(&ubuf[..take])?;
            }
            ubuf.drain(..take);
            left -= take as u64;
            let drop_n = (ubuf.len() as u64).min(skip) as usize;
            ubuf.drain(..drop_n);
            skip -= drop_n as u64;
            if left == 0 && skip == 0 {
                break;
            }
            if left == 0 && keep < len && matches!(fault, Fault::Stall { nth: n, .. } if n == nth) {
                // A stall: the connection stays open, silent.
                std::thread::sleep(Duration::from_secs(60));
                return Ok(());
            }
            if left == 0 && keep < len && matches!(fault, Fault::Reset { nth: n, .. } if n == nth) {
                reset(client);
                return Ok(());
            }
            if left == 0 && keep < len {
                // Truncation: hang up mid-body.
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            if !ubuf.is_empty() {
                continue; // throttled: the rest of what came is sent in the next steps
            }
            let mut chunk = vec![0u8; 1 << 16];
            let n = up.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            ubuf.extend_from_slice(&chunk[..n]);
        }
    }
}
