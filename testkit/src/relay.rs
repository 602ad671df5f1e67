//! A network path in user space, in front of a real origin: a TCP relay that holds every byte for
//! half the round trip in each direction, holds a new connection's first bytes until a round
//! trip after it was accepted (the handshake), caps each flow's rate and all flows' rate together (the access link),
//! and keeps at most a window of bytes in flight per flow, as TCP would. It can also freeze one
//! flow mid-body (a stalled CDN edge), counted from the relay's start ([`Relay::freeze`]) or from
//! now on ([`Relay::freeze_next`], re-armed before each of a benchmark's runs), and refuse a
//! client's connections beyond a number open at once with `503` ([`Relay::refuse_beyond`], a
//! CDN edge's connection limit). This machine has
//! no `netem`; the benchmark's `wan-*` suites and the stall tests go through this instead.
//!
//! Invariants: bytes are forwarded in order and unchanged; a frozen flow sends nothing more but
//! stays open; dropping the [`Relay`] stops accepting and closes every flow it relays. Not here:
//! loss or reordering (TCP below the relay recovers those), or anything of HTTP.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes read from a socket at a time: small enough that pacing stays smooth at 25 MB/s.
const CHUNK: usize = 64 << 10;

/// The path a relay emulates.
#[derive(Debug, Clone, Copy)]
pub struct WanPath {
    /// Round-trip time: each direction holds bytes for half of it.
    pub rtt: Duration,
    /// Bytes per second one flow (one TCP connection) may carry downstream; `None`: no cap.
    pub flow_rate: Option<u64>,
    /// Bytes per second all flows together may carry downstream; `None`: no cap.
    pub link_rate: Option<u64>,
}

impl WanPath {
    /// Bytes one flow may have in flight: 1.5 x its rate x the round trip (a TCP window that
    /// lets it reach its cap), at least 256 KiB.
    pub fn window(&self) -> u64 {
        let rate = self.flow_rate.or(self.link_rate).unwrap_or(1 << 30);
        ((rate as f64 * self.rtt.as_secs_f64() * 1.5) as u64).max(256 << 10)
    }

    /// `30ms-100M-1000M`: how reports and logs name the path.
    pub fn label(&self) -> String {
        let mb = |r: Option<u64>| r.map_or("inf".to_owned(), |r| format!("{}M", r / 1_000_000));
        format!(
            "{}ms-{}-{}",
            self.rtt.as_millis(),
            mb(self.flow_rate),
            mb(self.link_rate)
        )
    }
}

/// A token bucket: `rate` bytes per second, bursts of at most 10 ms of it.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Mutex<Bucket> {
        Mutex::new(Bucket {
            rate: rate as f64,
            tokens: 0.0,
            last: Instant::now(),
        })
    }

    /// Takes `n` bytes' worth; returns how long to wait before sending them.
    fn take(&mut self, n: usize) -> Duration {
        let now = Instant::now();
        let burst = self.rate / 100.0;
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(burst);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Freeze the downstream side of the `connection`-th accepted flow (from 0) once it carried
/// `after` bytes: it stays open and sends nothing more.
#[derive(Debug, Clone, Copy)]
pub struct Freeze {
    pub connection: usize,
    pub after: u64,
}

#[derive(Debug)]
struct Shared {
    path: WanPath,
    link: Option<Mutex<Bucket>>,
    stop: AtomicBool,
    accepted: AtomicUsize,
    freeze: Mutex<Option<Freeze>>,
    /// Flows frozen so far.
    frozen: AtomicUsize,
    /// Bytes carried downstream, all flows.
    down_bytes: AtomicU64,
    /// Flows relayed and not closed yet.
    live: AtomicUsize,
    /// With [`Relay::refuse_beyond`]: the most flows open at once; `usize::MAX` for no limit.
    limit: AtomicUsize,
    /// Connections answered `503` for the limit.
    refused: AtomicUsize,
    /// Every socket of every flow, to shut down when the relay is dropped.
    sockets: Mutex<Vec<TcpStream>>,
}

/// A running relay: connections to [`Relay::addr`] are relayed to the upstream address.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on a free port of 127.0.0.1 and relays each connection to `upstream` over `path`.
    pub fn start(upstream: SocketAddr, path: WanPath) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            path,
            link: path.link_rate.map(Bucket::new),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            freeze: Mutex::new(None),
            frozen: AtomicUsize::new(0),
            down_bytes: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            refused: AtomicUsize::new(0),
            sockets: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || accept_loop(&listener, upstream, &s))?;
        Ok(Relay {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Freezes one flow mid-body (see [`Freeze`]); replaces an earlier rule.
    pub fn freeze(&self, rule: Freeze) {
        *self.shared.freeze.lock().unwrap_or_else(|p| p.into_inner()) = Some(rule);
    }

    /// Freezes the `rule.connection`-th flow accepted from now on (from 0) once it carried
    /// `rule.after` bytes: the same fault for a client's next run, however many connections the
    /// runs before it opened. Replaces an earlier rule; call it while no client connects.
    pub fn freeze_next(&self, rule: Freeze) {
        let mut g = self.shared.freeze.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(Freeze {
            connection: self.connections() + rule.connection,
            after: rule.after,
        });
    }

    /// Removes the freeze rule: no flow accepted from now on freezes. A flow already frozen
    /// stays frozen (open and silent) until the relay is dropped.
    pub fn disarm(&self) {
        *self.shared.freeze.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Flows frozen so far (each at most once).
    pub fn frozen(&self) -> usize {
        self.shared.frozen.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// From now on, a connection that comes while `n` flows are open is not relayed: after a
    /// round trip its request is answered `503 Service Unavailable` and the connection closed,
    /// as a CDN edge with a per-client connection limit does.
    pub fn refuse_beyond(&self, n: usize) {
        self.shared.limit.store(n, Ordering::Relaxed);
    }

    /// Connections answered `503` by [`Relay::refuse_beyond`] so far.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Bytes carried downstream (origin to client) so far, all flows.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.live.load(Ordering::Relaxed) >= shared.limit.load(Ordering::Relaxed) {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            let rtt = shared.path.rtt;
            std::thread::spawn(move || refuse(client, rtt));
            continue;
        }
        let id = shared.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(origin) = TcpStream::connect(upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = origin.set_nodelay(true);
        // One down for the downstream writer's end (`Live`).
        shared.live.fetch_add(1, Ordering::Relaxed);
        if let (Ok(a), Ok(b)) = (client.try_clone(), origin.try_clone()) {
            let mut all = shared.sockets.lock().unwrap_or_else(|p| p.into_inner());
            all.push(a);
            all.push(b);
        }
        let (Ok(c2), Ok(o2)) = (client.try_clone(), origin.try_clone()) else {
            continue;
        };
        // Upstream: the request, its first bytes no sooner than a round trip after the
        // connection was accepted (the handshake: a client that connected early and asks
        // later pays nothing for it, as over TCP).
        let handshake_done = Instant::now() + shared.path.rtt;
        pump(client, o2, shared, None, Some(handshake_done));
        // Downstream: the body, capped per flow and per link.
        pump(origin, c2, shared, Some(id), None);
    }
}

/// One direction of one flow: a reader that timestamps what it reads, and a writer that sends
/// each chunk half a round trip after it arrived (the first no sooner than half a round trip
/// after `first_not_before`), paced. `down`: the flow's number when this is the downstream
/// side (rates and freezes apply).
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    shared: &Arc<Shared>,
    down: Option<usize>,
    first_not_before: Option<Instant>,
) {
    type Queue = (Mutex<(VecDeque<(Instant, Vec<u8>)>, u64, bool)>, Condvar);
    let queue: Arc<Queue> = Arc::new((Mutex::new((VecDeque::new(), 0, false)), Condvar::new()));
    let window = shared.path.window();
    let half = shared.path.rtt / 2;
    let q = Arc::clone(&queue);
    let reader = move || {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.truncate(n);
            let mut release = Instant::now();
            if first {
                release = release.max(first_not_before.unwrap_or(release));
                first = false;
            }
            release += half;
            let (lock, cv) = &*q;
            let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
            // At most a window in flight: the sender's TCP stalls meanwhile.
            while g.1 >= window && !g.2 {
                g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            if g.2 {
                break;
            }
            g.1 += n as u64;
            g.0.push_back((release, buf));
            cv.notify_all();
        }
        let (lock, cv) = &*q;
        let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
        g.0.push_back((Instant::now() + half, Vec::new()));
        cv.notify_all();
    };
    let s = Arc::clone(shared);
    let flow = shared.path.flow_rate.map(Bucket::new);
    let writer = move || {
        let _live = down.map(|_| Live(Arc::clone(&s)));
        let mut sent = 0u64;
        loop {
            let (lock, cv) = &*queue;
            let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
            while g.0.is_empty() {
                g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            let (release, chunk) = g.0.pop_front().expect("not empty");
            g.1 -= chunk.len() as u64;
            cv.notify_all();
            drop(g);
            if chunk.is_empty() {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            let now = Instant::now();
            if release > now {
                std::thread::sleep(release - now);
            }
            if let Some(id) = down {
                let frozen = s
                    .freeze
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some_and(|f| f.connection == id && sent >= f.after);
                if frozen {
                    s.frozen.fetch_add(1, Ordering::Relaxed);
                    // Holds the flow open and silent until the relay is dropped.
                    while !s.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    return;
                }
                let wait = [flow.as_ref(), s.link.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        b.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take(chunk.len())
                    })
                    .max()
                    .unwrap_or_default();
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
            if to.write_all(&chunk).is_err() {
                let (lock, cv) = &*queue;
                lock.lock().unwrap_or_else(|p| p.into_inner()).2 = true;
                cv.notify_all();
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            sent += chunk.len() as u64;
            if down.is_some() {
                s.down_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    };
    let _ = std::thread::Builder::new()
        .name("relay-read".into())
        .spawn(reader);
    let _ = std::thread::Builder::new()
        .name("relay-write".into())
        .spawn(writer);
}

/// A downstream side running: the flow counts as open until it ends.
struct Live(Arc<Shared>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers a refused connection's request with `503` after a round trip (the handshake and the
/// answer's way back), then closes it.
fn refuse(mut client: TcpStream, rtt: Duration) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    std::thread::sleep(rtt);
    let _ = client.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let _ = client.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An origin that answers each connection's first read with `body`, then closes.
    fn origin(body: Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let body = body.clone();
                std::thread::spawn(move || {
                    let mut req = [0u8; 64];
                    if s.read(&mut req).is_ok() {
                        let _ = s.write_all(&body);
                    }
                });
            }
        });
        addr
    }

    fn fetch(relay: &Relay) -> (Vec<u8>, Duration) {
        let start = Instant::now();
        let mut s = TcpStream::connect(relay.addr()).expect("connect");
        s.write_all(b"GET").expect("send");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        (got, start.elapsed())
    }

    #[test]
    fn bytes_arrive_unchanged_after_the_handshake_and_a_round_trip() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let path = WanPath {
            rtt: Duration::from_millis(100),
            flow_rate: None,
            link_rate: None,
        };
        let relay = Relay::start(origin(body.clone()), path).expect("relay");
        let (got, took) = fetch(&relay);
        assert_eq!(got, body, "in order and unchanged");
        // The request waits a handshake round trip and half a round trip; the answer another half.
        assert!(took >= Duration::from_millis(200), "took {took:?}");
        assert_eq!(relay.connections(), 1);
        assert_eq!(relay.bytes_down(), body.len() as u64);
        assert_eq!(path.label(), "100ms-inf-inf");
    }

    #[test]
    fn a_flow_keeps_to_its_rate() {
        let body = vec![7u8; 1_000_000];
        let path = WanPath {
            rtt: Duration::from_millis(2),
            flow_rate: Some(4_000_000),
            link_rate: Some(8_000_000),
        };
        let relay = Relay::start(origin(body.clone()), path).expect("relay");
        let (got, took) = fetch(&relay);
        assert_eq!(got.len(), body.len());
        // 1 MB at 4 MB/s takes at least 0.25 s, less the 10 ms burst the bucket allows.
        assert!(took >= Duration::from_millis(240), "took {took:?}");
    }

    #[test]
    fn a_frozen_flow_stops_after_its_bytes_and_stays_open() {
        let body = vec![1u8; 2_000_000];
        let path = WanPath {
            rtt: Duration::from_millis(2),
            flow_rate: None,
            link_rate: None,
        };
        let relay = Relay::start(origin(body), path).expect("relay");
        relay.freeze(Freeze {
            connection: 0,
            after: 500_000,
        });
        let mut s = TcpStream::connect(relay.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        s.write_all(b"GET").expect("send");
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        // Up to the freeze, however slow this machine is; then silence, not the rest or EOF.
        let deadline = Instant::now() + Duration::from_secs(30);
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break "closed",
                Ok(n) => got += n,
                Err(_) if got < 500_000 && Instant::now() < deadline => {}
                Err(_) => break "silent",
            }
        };
        assert_eq!(end, "silent", "the flow stays open");
        assert!(
            (500_000..500_000 + CHUNK).contains(&got),
            "stopped after its bytes: {got}"
        );
    }

    #[test]
    fn freeze_next_counts_from_now_and_disarm_lets_later_flows_through() {
        let body = vec![3u8; 1_000_000];
        let path = WanPath {
            rtt: Duration::from_millis(2),
            flow_rate: None,
            link_rate: None,
        };
        let relay = Relay::start(origin(body.clone()), path).expect("relay");
        assert_eq!(fetch(&relay).0.len(), body.len(), "no rule yet");
        // The next flow (the relay's second), not the relay's first, which is over.
        relay.freeze_next(Freeze {
            connection: 0,
            after: 300_000,
        });
        let mut s = TcpStream::connect(relay.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        s.write_all(b"GET").expect("send");
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match s.read(&mut buf) {
                Ok(0) => panic!("the armed flow ran to its end"),
                Ok(n) => got += n,
                Err(_) if got < 300_000 && Instant::now() < deadline => {}
                Err(_) => break,
            }
        }
        assert!(got < body.len(), "frozen after {got} bytes");
        assert_eq!(relay.frozen(), 1);
        relay.disarm();
        assert_eq!(fetch(&relay).0.len(), body.len(), "disarmed");
        assert_eq!((relay.connections(), relay.frozen()), (3, 1));
    }
}
