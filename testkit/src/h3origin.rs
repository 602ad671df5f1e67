//! A hostile HTTP/3 origin for the tests: compio-quic's QUIC with the h3 crate's server (ALPN
//! `h3`), serving files held in memory with ranges, and misbehaving as [`H3Fault`] says on the
//! request streams it picks: a stream reset or the connection closed mid-body, a GOAWAY,
//! requests rejected, data in tiny pieces, a byte too many, the wrong range, no length.
//!
//! It runs on its own thread with a compio runtime, on a free loopback UDP port, and stops when
//! dropped. It is a test server: every body is sent from memory, and nothing here measures
//! anything.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;

use crate::ranged::hits;
use compio::quic::h3::error::Code;

type RequestStream =
    compio::quic::h3::server::RequestStream<compio::quic::h3::BidiStream<Bytes>, Bytes>;

/// How the origin misbehaves. "Every `n`" counts requests over all connections, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H3Fault {
    /// Answers every request as it should.
    None,
    /// Half the body of every `n`-th answer, then the stream reset (H3_INTERNAL_ERROR).
    ResetMid(usize),
    /// Half the body of the `n`-th answer, then the whole connection closed with an error.
    CloseMid(usize),
    /// After each connection's `n`-th request, GOAWAY: later requests must go elsewhere.
    GoAwayAfter(usize),
    /// Every `n`-th request rejected before its head (H3_REQUEST_REJECTED: not processed).
    RejectEvery(usize),
    /// The first 64 KiB of every body in pieces of 1 to 97 bytes.
    TinyPieces,
    /// Every `n`-th answer: a 206 that says the range's length but sends one byte more.
    TooMany(usize),
    /// Every `n`-th answer: a 206 whose `Content-Range` starts one byte later than asked.
    WrongRange(usize),
    /// Every answer without `Content-Length`; every `n`-th of them a byte short.
    NoLength(usize),
}

/// What the origin saw.
#[derive(Debug, Default)]
pub struct H3Counts {
    /// QUIC connections accepted.
    pub connections: AtomicUsize,
    /// Requests received.
    pub requests: AtomicUsize,
    /// Faults inflicted.
    pub faults: AtomicUsize,
}

/// A running origin; dropping it stops it.
#[derive(Debug)]
pub struct H3Origin {
    port: u16,
    counts: Arc<H3Counts>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    files: HashMap<String, Bytes>,
    fault: H3Fault,
    counts: Arc<H3Counts>,
}

impl H3Origin {
    /// Serves each file of `root` (not its subdirectories) at `/NAME` over HTTP/3 with `cert`,
    /// misbehaving as `fault` says.
    pub fn start(root: &Path, cert: &crate::tls::ServerCert, fault: H3Fault) -> H3Origin {
        let files = crate::ranged::load_files(root);
        let config = server_config(cert);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let port = socket.local_addr().expect("addr").port();
        let counts = Arc::new(H3Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            files,
            fault,
            counts: Arc::clone(&counts),
        });
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let rt = compio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let socket = compio::net::UdpSocket::from_std(socket).expect("socket");
                let endpoint = compio::quic::Endpoint::new(
                    socket,
                    compio::quic::EndpointConfig::default(),
                    Some(config),
                    None,
                )
                .expect("endpoint");
                let accept = async {
                    while let Some(incoming) = endpoint.wait_incoming().await {
                        let shared = Arc::clone(&shared);
                        compio::runtime::spawn(async move {
                            let Ok(connecting) = incoming.accept() else {
                                return;
                            };
                            if let Ok(quic) = connecting.await {
                                shared.counts.connections.fetch_add(1, Ordering::Relaxed);
                                serve_connection(quic, shared).await;
                            }
                        })
                        .detach();
                    }
                };
                let stopped = async {
                    while !stopping.load(Ordering::Relaxed) {
                        compio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                };
                futures_util::future::select(std::pin::pin!(accept), std::pin::pin!(stopped)).await;
                endpoint.close(0u32.into(), b"");
            });
        });
        H3Origin {
            port,
            counts,
            stop,
            thread: Some(thread),
        }
    }

    /// `https://localhost:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("https://localhost:{}/{name}", self.port)
    }

    /// What the origin saw so far.
    pub fn counts(&self) -> &H3Counts {
        &self.counts
    }
}

impl Drop for H3Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn server_config(cert: &crate::tls::ServerCert) -> compio::quic::ServerConfig {
    let tls = crate::ranged::server_tls(cert, b"h3");
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC TLS");
    compio::quic::ServerConfig::with_crypto(Arc::new(crypto))
}

async fn serve_connection(quic: compio::quic::Connection, shared: Arc<Shared>) {
    let Ok(mut conn) = compio::quic::h3::server::builder()
        .build::<_, Bytes>(quic.clone())
        .await
    else {
        return;
    };
    let mut on_this = 0usize;
    while let Ok(Some(resolver)) = conn.accept().await {
        on_this += 1;
        let n = shared.counts.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let (mine, quic2) = (Arc::clone(&shared), quic.clone());
        compio::runtime::spawn(async move {
            if let Ok((req, stream)) = resolver.resolve_request().await {
                answer(req, stream, &mine, n, &quic2).await;
            }
        })
        .detach();
        if let H3Fault::GoAwayAfter(k) = shared.fault
            && on_this == k
        {
            shared.counts.faults.fetch_add(1, Ordering::Relaxed);
            let _ = conn.shutdown(0).await;
        }
    }
    // Until the client is done with the connection.
    let _ = quic.closed().await;
}

async fn answer(
    req: http::Request<()>,
    mut stream: RequestStream,
    shared: &Shared,
    n: usize,
    quic: &compio::quic::Connection,
) {
    let (fault, counts) = (shared.fault, &shared.counts);
    if let H3Fault::RejectEvery(k) = fault
        && hits(n, k)
    {
        counts.faults.fetch_add(1, Ordering::Relaxed);
        stream.stop_stream(Code::H3_REQUEST_REJECTED);
        stream.stop_sending(Code::H3_REQUEST_REJECTED);
        return;
    }
    let Some(file) = shared.files.get(req.uri().path()) else {
        let head = http::Response::builder()
            .status(404)
            .header("content-length", "0")
            .body(())
            .expect("404");
        let _ = stream.send_response(head).await;
        let _ = stream.finish().await;
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
        wrong_range: twist(matches!(fault, H3Fault::WrongRange(k) if hits(n, k))),
        too_many: twist(matches!(fault, H3Fault::TooMany(k) if hits(n, k))),
        no_length: matches!(fault, H3Fault::NoLength(_)),
        short: twist(matches!(fault, H3Fault::NoLength(k) if hits(n, k)) && file.len() > 1),
    };
    let crate::ranged::Answer { head, body: bytes } = crate::ranged::answer(file, range, twists);
    if stream.send_response(head).await.is_err() {
        return;
    }
    let cut = match fault {
        H3Fault::ResetMid(k) | H3Fault::CloseMid(k) if hits(n, k) && bytes.len() > 1 => {
            counts.faults.fetch_add(1, Ordering::Relaxed);
            Some(bytes.len() / 2)
        }
        _ => None,
    };
    if let Some(half) = cut {
        let _ = send(&mut stream, bytes.slice(..half), fault).await;
        // A reset discards what QUIC has not sent yet: give the half body time to go out, so
        // the client sees it cut mid-body, not before its head.
        compio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let H3Fault::CloseMid(_) = fault {
            quic.close(
                Code::H3_INTERNAL_ERROR
                    .value()
                    .try_into()
                    .unwrap_or_default(),
                b"",
            );
        } else {
            stream.stop_stream(Code::H3_INTERNAL_ERROR);
        }
        return;
    }
    if fault == H3Fault::TinyPieces {
        counts.faults.fetch_add(1, Ordering::Relaxed);
    }
    if send(&mut stream, bytes, fault).await.is_ok() {
        let _ = stream.finish().await;
    }
}

/// Sends `bytes`, in tiny pieces first with [`H3Fault::TinyPieces`].
async fn send(
    stream: &mut RequestStream,
    mut bytes: Bytes,
    fault: H3Fault,
) -> Result<(), compio::quic::h3::error::StreamError> {
    let mut tiny = if fault == H3Fault::TinyPieces {
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
            bytes.len().min(64 << 10)
        };
        let n = want.min(bytes.len());
        tiny = tiny.saturating_sub(n);
        stream.send_data(bytes.split_to(n)).await?;
    }
    Ok(())
}
