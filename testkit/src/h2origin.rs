//! A hostile HTTP/2 origin for the tests: hyperium's `h2` server over `tokio-rustls` (ALPN `h2`
//! only), serving files held in memory with ranges, and misbehaving as [`H2Fault`] says on the
//! streams it picks: a stream reset or a GOAWAY mid-body, a graceful GOAWAY, streams refused,
//! one stream at a time, DATA in tiny frames, a byte too many, the wrong range.
//!
//! It runs on its own thread with a current-thread tokio runtime, on a free loopback port, and
//! stops when dropped. It is a test server: every body is sent from memory, and nothing here
//! measures anything.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use crate::ranged::hits;

/// How the origin misbehaves. "Every `n`" counts streams over all connections, from 1: the
/// streams numbered `n`, `2n`, ... get the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Fault {
    /// Answers every request as it should.
    None,
    /// Half the body of every `n`-th answer, then RST_STREAM (INTERNAL_ERROR).
    ResetMid(usize),
    /// Half the body of the `n`-th answer, then GOAWAY (INTERNAL_ERROR) and the connection
    /// closed, with every stream on it unfinished.
    GoAwayMid(usize),
    /// After each connection's `n`-th stream, a graceful GOAWAY (NO_ERROR): the streams it
    /// took are answered, later ones must go to a new connection.
    GracefulAfter(usize),
    /// Every `n`-th stream refused (REFUSED_STREAM: not processed, safe to send again).
    RefuseEvery(usize),
    /// SETTINGS_MAX_CONCURRENT_STREAMS 1: one stream at a time per connection.
    OneStream,
    /// The first 64 KiB of every body in DATA frames of 1 to 97 bytes, and a connection window
    /// for the client's data of 1 byte.
    TinyFrames,
    /// Every `n`-th answer: a 206 that says the range's length but sends one byte more.
    TooMany(usize),
    /// Every `n`-th answer: a 206 whose `Content-Range` starts one byte later than asked.
    WrongRange(usize),
    /// Every answer without `Content-Length` (END_STREAM ends the body, as HTTP/2 allows);
    /// every `n`-th of them a byte short.
    NoLength(usize),
}

/// What the origin saw.
#[derive(Debug, Default)]
pub struct H2Counts {
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    /// Streams (requests) received.
    pub streams: AtomicUsize,
    /// Faults inflicted.
    pub faults: AtomicUsize,
    /// The most streams open at once on one connection.
    pub most_open: AtomicUsize,
}

/// A running origin; dropping it stops it.
pub struct H2Origin {
    port: u16,
    counts: Arc<H2Counts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for H2Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Origin")
            .field("port", &self.port)
            .finish()
    }
}

impl H2Origin {
    /// Serves each file of `root` (not its subdirectories) at `/NAME` over HTTPS with `cert`,
    /// misbehaving as `fault` says.
    pub fn start(root: &Path, cert: &crate::tls::ServerCert, fault: H2Fault) -> H2Origin {
        let files = crate::ranged::load_files(root);
        let tls = Arc::new(crate::ranged::server_tls(cert, b"h2"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let counts = Arc::new(H2Counts::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shared = Arc::new(Shared {
            files,
            fault,
            counts: Arc::clone(&counts),
        });
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                let accept = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        shared.counts.connections.fetch_add(1, Ordering::Relaxed);
                        let (acceptor, shared) = (acceptor.clone(), Arc::clone(&shared));
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                serve_connection(tls, shared).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        H2Origin {
            port,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `https://localhost:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("https://localhost:{}/{name}", self.port)
    }

    /// What the origin saw so far.
    pub fn counts(&self) -> &H2Counts {
        &self.counts
    }
}

impl Drop for H2Origin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Shared {
    files: HashMap<String, Bytes>,
    fault: H2Fault,
    counts: Arc<H2Counts>,
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    shared: Arc<Shared>,
) {
    let mut builder = h2::server::Builder::new();
    match shared.fault {
        // Counted once per connection they apply to.
        H2Fault::OneStream => {
            shared.counts.faults.fetch_add(1, Ordering::Relaxed);
            builder.max_concurrent_streams(1);
        }
        H2Fault::TinyFrames => {
            shared.counts.faults.fetch_add(1, Ordering::Relaxed);
            builder.initial_window_size(1).max_frame_size(16_384);
        }
        _ => {
            builder.max_concurrent_streams(100);
        }
    }
    let Ok(mut conn) = builder.handshake::<_, Bytes>(tls).await else {
        return;
    };
    let open = Arc::new(AtomicUsize::new(0));
    let mut on_this = 0usize;
    let (kill, mut killed) = tokio::sync::mpsc::unbounded_channel::<()>();
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = killed.recv() => {
                conn.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
                // Sends the GOAWAY, then the connection ends.
                let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
                return;
            }
        };
        let Some(Ok((req, respond))) = next else {
            break;
        };
        on_this += 1;
        let n = shared.counts.streams.fetch_add(1, Ordering::Relaxed) + 1;
        let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
        shared
            .counts
            .most_open
            .fetch_max(now_open, Ordering::Relaxed);
        if let H2Fault::GracefulAfter(k) = shared.fault
            && on_this == k
        {
            shared.counts.faults.fetch_add(1, Ordering::Relaxed);
            conn.graceful_shutdown();
        }
        let (shared, open, kill) = (Arc::clone(&shared), Arc::clone(&open), kill.clone());
        tokio::spawn(async move {
            answer(req, respond, &shared, n, &kill).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Until the client is done with the connection.
    let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
}

async fn answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    shared: &Shared,
    n: usize,
    kill: &tokio::sync::mpsc::UnboundedSender<()>,
) {
    let fault = shared.fault;
    let counts = &shared.counts;
    if let H2Fault::RefuseEvery(k) = fault
        && hits(n, k)
    {
        counts.faults.fetch_add(1, Ordering::Relaxed);
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    }
    let Some(file) = shared.files.get(req.uri().path()) else {
        let head = http::Response::builder()
            .status(404)
            .header("content-length", "0")
            .body(())
            .expect("404");
        let _ = respond.send_response(head, true);
        return;
    };
    let twist = |hit: bool| {
        if hit {
            counts.faults.fetch_add(1, Ordering::Relaxed);
        }
        hit
    };
    let range = req.headers().get("range").and_then(|v| v.to_str().ok());
    let twists = crate::ranged::Twists {
        wrong_range: twist(matches!(fault, H2Fault::WrongRange(k) if hits(n, k))),
        too_many: twist(matches!(fault, H2Fault::TooMany(k) if hits(n, k))),
        no_length: matches!(fault, H2Fault::NoLength(_)),
        short: twist(matches!(fault, H2Fault::NoLength(k) if hits(n, k)) && file.len() > 1),
    };
    let crate::ranged::Answer { head, body: bytes } = crate::ranged::answer(file, range, twists);
    let Ok(mut send) = respond.send_response(head, bytes.is_empty()) else {
        return;
    };
    if bytes.is_empty() {
        return;
    }
    let cut = match fault {
        H2Fault::ResetMid(k) | H2Fault::GoAwayMid(k) if hits(n, k) => {
            counts.faults.fetch_add(1, Ordering::Relaxed);
            Some(bytes.len() / 2)
        }
        _ => None,
    };
    if let Some(half) = cut {
        let _ = send_paced(&mut send, bytes.slice(..half), false, fault).await;
        // h2 drops the DATA it has not written yet when the stream is reset: give the half body
        // time to go out, so the client sees it cut mid-body, not before its head.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let H2Fault::GoAwayMid(_) = fault {
            let _ = kill.send(());
        } else {
            send.send_reset(h2::Reason::INTERNAL_ERROR);
        }
        return;
    }
    let _ = send_paced(&mut send, bytes, true, fault).await;
}

/// Sends `bytes` as the stream's flow control allows (so a reset or GOAWAY after it comes after
/// these bytes went out), in tiny frames first with [`H2Fault::TinyFrames`].
async fn send_paced(
    send: &mut h2::SendStream<Bytes>,
    mut bytes: Bytes,
    end: bool,
    fault: H2Fault,
) -> Result<(), h2::Error> {
    let mut tiny = if fault == H2Fault::TinyFrames {
        64 << 10
    } else {
        0
    };
    let mut size = 1usize;
    while !bytes.is_empty() {
        let want = if tiny > 0 {
            size = size % 97 + 1;
            size.min(tiny)
        } else {
            bytes.len().min(256 << 10)
        };
        send.reserve_capacity(want);
        let got = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(got) => got?,
            None => return Ok(()),
        };
        let n = got.min(want).min(bytes.len());
        if n == 0 {
            continue;
        }
        tiny = tiny.saturating_sub(n);
        let chunk = bytes.split_to(n);
        send.send_data(chunk, end && bytes.is_empty())?;
    }
    Ok(())
}
