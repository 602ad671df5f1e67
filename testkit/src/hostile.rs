//! A hostile origin: a loopback HTTP/1.1 server whose every answer the test writes byte for
//! byte (a body longer than promised, a redirect to another scheme, a header nginx would never
//! send). One connection at a time, one request per connection, then it closes.
//!
//! The server runs on a thread of the test process, bound to 127.0.0.1 on a free port, and stops
//! when its guard drops (a connection to itself wakes the accept). It serves at most
//! [`MAX_REQUESTS`] requests, so a client stuck in a loop cannot keep a test running.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Requests answered before the server stops answering.
pub const MAX_REQUESTS: usize = 10_000;

type Answer = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// A running hostile origin.
#[derive(Debug)]
pub struct HostileOrigin {
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl HostileOrigin {
    /// Starts a server answering each request (given its request head, as text) with the bytes
    /// `answer` returns, then closing the connection.
    pub fn start(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> HostileOrigin {
        HostileOrigin::start_paced(answer, None)
    }

    /// [`HostileOrigin::start`], sending each answer `step` bytes at a time with `pause` between
    /// (a server that trickles): `Some((step, pause))`.
    pub fn start_paced(
        answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
        pace: Option<(usize, Duration)>,
    ) -> HostileOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let thread = {
            let (stop, requests) = (Arc::clone(&stop), Arc::clone(&requests));
            std::thread::spawn(move || {
                for conn in listener.incoming().take(MAX_REQUESTS) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    serve_one(conn, &*answer, &requests, pace);
                }
            })
        };
        HostileOrigin {
            port,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The request heads received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn serve_one(
    mut conn: TcpStream,
    answer: &Answer,
    requests: &Mutex<Vec<String>>,
    pace: Option<(usize, Duration)>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let reply = answer(&head);
    requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(head);
    match pace {
        None => {
            let _ = conn.write_all(&reply);
        }
        Some((step, pause)) => {
            // Bounded: stops at the first failed write (the client gave up) or after a minute.
            let until = std::time::Instant::now() + Duration::from_secs(60);
            for piece in reply.chunks(step.max(1)) {
                if conn.write_all(piece).is_err() || std::time::Instant::now() > until {
                    return;
                }
                std::thread::sleep(pause);
            }
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
    // Let the client read what was sent before the socket closes.
    let _ = conn.read(&mut buf);
}

impl Drop for HostileOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A response: status line, the headers given, then `body` (no `Content-Length` is added).
pub fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A complete answer that closes the connection: status line, the headers given, then
/// `Content-Length` and `Connection: close`, then `body`.
pub fn answer(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut all = headers.to_vec();
    all.push(("Content-Length", body.len().to_string()));
    all.push(("Connection", "close".into()));
    response(status, &all, body)
}

/// The path of a request head's request line.
pub fn request_path(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}
