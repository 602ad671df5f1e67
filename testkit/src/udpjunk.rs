//! A hostile UDP responder for the HTTP/3 fallback tests: bound to a loopback port beside an
//! HTTPS server's TCP port, it answers every datagram with as many random bytes, so a QUIC
//! client hears "something" that is never a QUIC packet. A thread of the test process; it
//! stops when dropped.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A running junk responder. Dropping it stops the thread.
#[derive(Debug)]
pub struct UdpJunk {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpJunk {
    /// Answers junk on `127.0.0.1:port` (UDP).
    pub fn start(port: u16) -> UdpJunk {
        let socket = UdpSocket::bind(("127.0.0.1", port)).expect("bind the UDP junk responder");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&answered));
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                for b in &mut buf[..n] {
                    // xorshift: fast, and never a valid QUIC packet by design of the test
                    // (a long header's fixed bit and version would have to line up).
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *b = seed as u8;
                }
                if socket.send_to(&buf[..n], from).is_ok() {
                    a.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        UdpJunk {
            stop,
            answered,
            thread: Some(thread),
        }
    }

    /// Datagrams answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for UdpJunk {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
