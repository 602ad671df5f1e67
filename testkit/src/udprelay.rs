//! A network path in user space for UDP (QUIC), the counterpart of `relay.rs`'s TCP relay:
//! every datagram is held for half the round trip in each direction; downstream (towards the
//! client) each flow (one client address) is served at most at its rate and all flows together
//! at the link's, through a queue that holds at most a round trip's worth of each rate, beyond
//! which datagrams are dropped (a router's tail drop: the loss QUIC's congestion control reacts
//! to). No netem here; the hand measurements of HTTP/3 over a WAN path go through this.
//!
//! Invariants: datagrams are forwarded unchanged, each flow's in order; only a full queue drops
//! (counted, [`UdpRelay::dropped`]); dropping the [`UdpRelay`] stops its threads. Not here:
//! random loss, reordering, or a handshake's extra delay (QUIC's handshake pays its round
//! trips through the relay itself).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::relay::WanPath;

/// Where a scheduled datagram goes.
#[derive(Debug)]
enum To {
    /// To the client at this address, from the relay's front socket.
    Client(SocketAddr),
    /// To the origin, from the flow's own socket.
    Origin(Arc<UdpSocket>),
}

#[derive(Debug)]
struct Due {
    at: Instant,
    seq: u64,
    to: To,
    bytes: Vec<u8>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// When the bottleneck is next free, per flow and for the link.
#[derive(Debug, Default)]
struct Shaper {
    flows: HashMap<SocketAddr, Instant>,
    link: Option<Instant>,
}

#[derive(Debug)]
struct Shared {
    path: WanPath,
    front: UdpSocket,
    queue: Mutex<(BinaryHeap<Reverse<Due>>, u64)>,
    ready: Condvar,
    shaper: Mutex<Shaper>,
    stop: AtomicBool,
    dropped: AtomicU64,
    down_bytes: AtomicU64,
}

/// A running UDP relay: datagrams to [`UdpRelay::addr`] are relayed to the upstream address.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpRelay {
    /// Listens on `127.0.0.1:port` (0: a free port) and relays each client's datagrams to
    /// `upstream` over `path`.
    pub fn start(port: u16, upstream: SocketAddr, path: WanPath) -> io::Result<UdpRelay> {
        let front = UdpSocket::bind(("127.0.0.1", port))?;
        front.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            path,
            front,
            queue: Mutex::new((BinaryHeap::new(), 0)),
            ready: Condvar::new(),
            shaper: Mutex::new(Shaper::default()),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            down_bytes: AtomicU64::new(0),
        });
        let sender = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || send_loop(&shared))
        };
        let receiver = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || front_loop(&shared, upstream))
        };
        Ok(UdpRelay {
            addr,
            shared,
            threads: vec![sender, receiver],
        })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams dropped by a full queue so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Bytes sent downstream so far.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Schedules `bytes` to `to` at `at`.
fn schedule(shared: &Shared, at: Instant, to: To, bytes: Vec<u8>) {
    let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    q.1 += 1;
    let seq = q.1;
    q.0.push(Reverse(Due { at, seq, to, bytes }));
    shared.ready.notify_one();
}

/// Sends each datagram when it is due.
fn send_loop(shared: &Shared) {
    let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        match q.0.peek() {
            Some(Reverse(d)) if d.at <= now => {
                let Some(Reverse(d)) = q.0.pop() else {
                    continue;
                };
                drop(q);
                match d.to {
                    To::Client(addr) => {
                        // Counted before the send, so a client that has them sees them counted.
                        shared
                            .down_bytes
                            .fetch_add(d.bytes.len() as u64, Ordering::Relaxed);
                        let _ = shared.front.send_to(&d.bytes, addr);
                    }
                    To::Origin(sock) => {
                        let _ = sock.send(&d.bytes);
                    }
                }
                q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            }
            Some(Reverse(d)) => {
                let wait = d.at - now;
                q = shared
                    .ready
                    .wait_timeout(q, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            None => {
                q = shared
                    .ready
                    .wait_timeout(q, Duration::from_millis(100))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
    }
}

/// Reads clients' datagrams: each new client gets a socket of its own towards the origin (and a
/// thread reading the origin's answers), and its datagrams go upstream half a round trip later.
fn front_loop(shared: &Arc<Shared>, upstream: SocketAddr) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut readers = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = shared.front.recv_from(&mut buf) else {
            continue;
        };
        let sock = match flows.get(&from) {
            Some(s) => Arc::clone(s),
            None => {
                let Ok(s) = UdpSocket::bind("127.0.0.1:0").and_then(|s| {
                    s.connect(upstream)?;
                    s.set_read_timeout(Some(Duration::from_millis(100)))?;
                    Ok(s)
                }) else {
                    continue;
                };
                let s = Arc::new(s);
                flows.insert(from, Arc::clone(&s));
                let (shared, s2) = (Arc::clone(shared), Arc::clone(&s));
                readers.push(std::thread::spawn(move || origin_loop(&shared, &s2, from)));
                s
            }
        };
        let at = Instant::now() + shared.path.rtt / 2;
        schedule(shared, at, To::Origin(sock), buf[..n].to_vec());
    }
    for r in readers {
        let _ = r.join();
    }
}

/// Reads the origin's datagrams for the client at `client` and schedules them downstream
/// through the flow's and the link's bottleneck, dropping what a full queue cannot hold.
fn origin_loop(shared: &Shared, sock: &UdpSocket, client: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    let rtt = shared.path.rtt;
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let now = Instant::now();
        let out = {
            let mut s = shared.shaper.lock().unwrap_or_else(|p| p.into_inner());
            let mut at = now;
            // When the bottleneck of `rate`, next free at `free`, has sent a datagram that
            // reached it at `from`.
            let serve = |rate: Option<u64>, free: Option<Instant>, from: Instant| {
                rate.map(|r| {
                    free.map_or(from, |f| f.max(from))
                        + Duration::from_secs_f64(n as f64 / r as f64)
                })
            };
            let flow_free = s.flows.get(&client).copied();
            let flow_done = serve(shared.path.flow_rate, flow_free, at);
            if let Some(d) = flow_done {
                at = d;
            }
            let link_done = serve(shared.path.link_rate, s.link, at);
            if let Some(d) = link_done {
                at = d;
            }
            // A queue holds a round trip's worth: beyond it, tail drop.
            if at.duration_since(now) > rtt {
                None
            } else {
                if let Some(d) = flow_done {
                    s.flows.insert(client, d);
                }
                if let Some(d) = link_done {
                    s.link = Some(d);
                }
                Some(at)
            }
        };
        match out {
            Some(at) => schedule(shared, at + rtt / 2, To::Client(client), buf[..n].to_vec()),
            None => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An origin that echoes every datagram back.
    fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = s.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
        addr
    }

    #[test]
    fn datagrams_come_back_unchanged_after_a_round_trip() {
        let path = WanPath {
            rtt: Duration::from_millis(60),
            flow_rate: Some(10_000_000),
            link_rate: Some(50_000_000),
        };
        let relay = UdpRelay::start(0, echo(), path).expect("relay");
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let start = Instant::now();
        for i in 0..20u8 {
            client.send_to(&[i; 1000], relay.addr()).expect("send");
        }
        let mut buf = [0u8; 2048];
        for i in 0..20u8 {
            let n = client.recv(&mut buf).expect("an echo");
            assert_eq!(&buf[..n], &[i; 1000][..], "in order and unchanged");
        }
        assert!(start.elapsed() >= path.rtt, "took {:?}", start.elapsed());
        assert_eq!(relay.bytes_down(), 20_000);
        assert_eq!(relay.dropped(), 0);
    }

    #[test]
    fn a_full_queue_drops() {
        // 1 MB/s and 20 ms: a queue of 20 kB; 200 kB at once cannot all fit.
        let path = WanPath {
            rtt: Duration::from_millis(20),
            flow_rate: Some(1_000_000),
            link_rate: None,
        };
        let relay = UdpRelay::start(0, echo(), path).expect("relay");
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for _ in 0..200 {
            client.send_to(&[1u8; 1000], relay.addr()).expect("send");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.dropped() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(relay.dropped() > 0, "nothing dropped");
    }
}
