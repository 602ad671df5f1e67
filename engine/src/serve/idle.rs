//! The kept-alive connections waiting for their next request, so that at the connection cap the
//! one idle the longest can be closed for a newcomer (see `http.rs`).
//!
//! Invariant: a connection is registered only while it waits for the first byte of a request;
//! closing it then loses no request. Not here: the cap itself (the accept loop's).

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The kept-alive connections between requests, oldest first: each with a second handle of
/// its socket, which the accept thread shuts down to free its slot.
#[derive(Debug, Default)]
pub(crate) struct Idle {
    next_id: AtomicUsize,
    waiting: std::sync::Mutex<std::collections::BTreeMap<usize, (Instant, TcpStream)>>,
}

impl Idle {
    /// Registers a connection as waiting for its next request; `None` when its socket cannot
    /// be shared (it is then simply not evictable).
    pub(super) fn enter(&self, stream: &TcpStream) -> Option<usize> {
        let handle = stream.try_clone().ok()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (Instant::now(), handle));
        Some(id)
    }

    /// The connection is busy again (or gone).
    pub(super) fn leave(&self, id: Option<usize>) {
        if let Some(id) = id {
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }

    /// Closes the connection idle the longest; false when none is idle. Its thread sees the
    /// close at once and frees its slot.
    pub(super) fn evict_oldest(&self) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = waiting
            .iter()
            .min_by_key(|(_, (since, _))| *since)
            .map(|(id, _)| *id);
        match oldest.and_then(|id| waiting.remove(&id)) {
            Some((_, stream)) => {
                let _ = stream.shutdown(Shutdown::Both);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;

    /// A connected pair: (the server's side, the client's side).
    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (server, client)
    }

    #[test]
    fn the_connection_idle_the_longest_is_closed_first() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let idle = Idle::default();
        let conns: Vec<_> = (0..3).map(|_| pair(&listener)).collect();
        let ids: Vec<_> = conns.iter().map(|(s, _)| idle.enter(s)).collect();
        // The second goes busy again: it is not evictable while it works.
        idle.leave(ids[1]);
        assert!(idle.evict_oldest());
        assert!(idle.evict_oldest());
        assert!(!idle.evict_oldest(), "none is idle any more");
        let closed = |c: &TcpStream| {
            c.set_read_timeout(Some(std::time::Duration::from_millis(200)))
                .expect("timeout");
            matches!((&*c).read(&mut [0u8; 1]), Ok(0))
        };
        assert!(closed(&conns[0].1), "the oldest was closed");
        assert!(!closed(&conns[1].1), "the busy one was kept");
        assert!(closed(&conns[2].1), "then the next oldest");
    }
}
