//! Connecting to a host: Happy Eyeballs (RFC 8305) over its addresses, IPv6 and IPv4
//! interleaved, a new attempt every [`ATTEMPT_DELAY`] while earlier ones are pending, the winner
//! remembered per host so a job's later connections go straight to its family, spread over the
//! addresses of it that answer ([`Winners`]); TCP Fast Open for repeat connections where the
//! sysctl allows it.
//!
//! Not here: proxies (`proxy.rs`), TLS (`tls.rs`), name resolution (`mod.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use compio::net::TcpStream;

use crate::error::GetError;

use super::*;

/// What connecting to each list of addresses (keyed by the list's first) has taught: the address
/// that won the last Happy Eyeballs race, those that answered and those that failed while
/// another answered (RFC 8305 section 4 allows such a cache). Once one address answered, later
/// connections need no race: they are spread over the addresses of its family in turn, those
/// that failed left out, so a CDN name with several addresses gets connections to each (their
/// caps are per server) and a dead one costs one attempt, not one per connection. When the
/// winner stops answering a Fast Open connection, the race runs again ([`Winners::forget`]).
#[derive(Debug, Default)]
pub(crate) struct Winners(std::sync::Mutex<std::collections::HashMap<SocketAddr, Known>>);

#[derive(Debug)]
struct Known {
    winner: SocketAddr,
    answered: Vec<SocketAddr>,
    failed: Vec<SocketAddr>,
    /// Connections ordered since the first winner: which address of the family is next.
    turn: usize,
}

impl Winners {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<SocketAddr, Known>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `addrs` in the order to try them: interleaved; once one answered, the next address of
    /// its family in turn (leaving out those that failed) first, then the last winner.
    fn order(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut order = interleave(addrs);
        let mut map = self.lock();
        let Some(known) = addrs.first().and_then(|first| map.get_mut(first)) else {
            return order;
        };
        let family: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| a.is_ipv6() == known.winner.is_ipv6() && !known.failed.contains(a))
            .collect();
        let pick = if family.is_empty() {
            known.winner
        } else {
            family[known.turn % family.len()]
        };
        known.turn = known.turn.wrapping_add(1);
        for first in [known.winner, pick] {
            if let Some(at) = order.iter().position(|a| *a == first) {
                let a = order.remove(at);
                order.insert(0, a);
            }
        }
        order
    }

    /// `winner` answered; `failed` did not, in the same race.
    fn record(&self, addrs: &[SocketAddr], winner: SocketAddr, failed: &[SocketAddr]) {
        let Some(first) = addrs.first() else { return };
        let mut map = self.lock();
        let known = map.entry(*first).or_insert_with(|| Known {
            winner,
            answered: Vec::new(),
            failed: Vec::new(),
            turn: 0,
        });
        known.winner = winner;
        if !known.answered.contains(&winner) {
            known.answered.push(winner);
        }
        known.failed.retain(|a| *a != winner);
        for a in failed {
            if !known.failed.contains(a) {
                known.failed.push(*a);
            }
        }
    }

    /// Whether `addr` of the list `addrs` answered before (what Fast Open may go to).
    fn answered(&self, addrs: &[SocketAddr], addr: SocketAddr) -> bool {
        let map = self.lock();
        addrs
            .first()
            .and_then(|first| map.get(first))
            .is_some_and(|k| k.answered.contains(&addr))
    }

    /// Forgets what is known of the list whose first address is `first`: a connection that
    /// skipped the handshake (TCP Fast Open) failed, so the next one races again.
    pub(crate) fn forget(&self, first: SocketAddr) {
        self.lock().remove(&first);
    }
}

/// How long an attempt has alone before the next address is tried beside it (RFC 8305's
/// "Connection Attempt Delay", its recommended 250 ms).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The order addresses are tried in (RFC 8305 section 4): the resolver's order (RFC 6724 put
/// the preferred family first), with the two families alternating, so that one family that
/// does not answer costs one attempt delay, not one connect timeout per address.
pub(crate) fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut same, mut other): (Vec<_>, Vec<_>) =
        addrs.iter().partition(|a| a.is_ipv6() == first.is_ipv6());
    let mut out = Vec::with_capacity(addrs.len());
    same.reverse();
    other.reverse();
    while let Some(a) = same.pop() {
        out.push(a);
        if let Some(b) = other.pop() {
            out.push(b);
        }
    }
    out.extend(other.into_iter().rev());
    out
}

/// Connects with Happy Eyeballs (RFC 8305): the addresses in [`interleave`]d order, a new
/// attempt started when the last one failed or had no answer for [`ATTEMPT_DELAY`], the
/// attempts racing, the first connection to complete kept and the others dropped. Each
/// attempt is bounded by the dialer's connect timeout. Later connections go straight to the
/// winner's family, spread over its addresses ([`Winners`]).
///
/// With the dialer's `fast_open`, an attempt to an address that answered before uses TCP Fast
/// Open (the result says whether the connection did): once the kernel holds a cookie for it,
/// `connect` completes at once and the request rides in the SYN, saving a round trip per new
/// connection. Only such addresses: a Fast Open connect to a dead address
/// with a cookie would "succeed" at once and win the race, and the failure would only show at
/// the first read. When that happens to the winner, its caller forgets it
/// ([`Winners::forget`]) and the next connection races again.
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    dialer: &Dialer,
) -> Result<(TcpStream, FastOpen), GetError> {
    use futures_util::StreamExt;
    use futures_util::future::{Either, select};
    use futures_util::stream::FuturesUnordered;

    let (timeout, winners) = (dialer.timeouts.connect, &*dialer.winners);
    let order = winners.order(addrs);
    let mut next = order.iter().copied();
    let attempt = |addr: SocketAddr| async move {
        let fast = dialer.fast_open && winners.answered(addrs, addr);
        let r = match compio::time::timeout(timeout, connect_one(addr, fast)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", timeout.as_secs_f64()),
            )),
        };
        (addr, r)
    };
    let mut racing = FuturesUnordered::new();
    let mut failed: Vec<(SocketAddr, std::io::Error)> = Vec::new();
    racing.extend(next.next().map(attempt));
    while !racing.is_empty() {
        let done = if next.len() > 0 {
            let delay = std::pin::pin!(compio::time::sleep(ATTEMPT_DELAY));
            match select(racing.next(), delay).await {
                Either::Left((done, _)) => done,
                Either::Right(((), _)) => {
                    // No answer yet: the next address joins the race.
                    racing.extend(next.next().map(attempt));
                    continue;
                }
            }
        } else {
            racing.next().await
        };
        let Some((addr, result)) = done else { break };
        match result {
            Ok((stream, fast_open)) => {
                let started = &order[..order.len() - next.len()];
                won(winners, addrs, (started, &failed), addr);
                let _ = stream.set_nodelay(true);
                return Ok((stream, fast_open));
            }
            Err(e) => {
                failed.push((addr, e));
                // A failure starts the next attempt at once.
                racing.extend(next.next().map(attempt));
            }
        }
    }
    let (addr, source) = all_failed(failed);
    Err(GetError::Connect { addr, source })
}

/// Whether a connection was opened with TCP Fast Open, and so has not heard from the server
/// yet: it may have skipped the handshake.
pub(crate) type FastOpen = bool;

/// One TCP connect, with `TCP_FASTOPEN_CONNECT` set first when `fast_open`; a kernel that
/// refuses the option gets a plain connect. Says whether the option was set.
async fn connect_one(addr: SocketAddr, fast_open: bool) -> std::io::Result<(TcpStream, FastOpen)> {
    if !fast_open {
        return Ok((TcpStream::connect(addr).await?, false));
    }
    let socket = if addr.is_ipv6() {
        compio::net::TcpSocket::new_v6().await?
    } else {
        compio::net::TcpSocket::new_v4().await?
    };
    let set = match crate::backend::sockopt::set_fast_open_connect(&socket) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "TCP Fast Open refused; connecting without it");
            false
        }
    };
    Ok((socket.connect(addr).await?, set))
}

/// [`connect`] for blocking sockets (the Hub API client): the same order, delay and cache, each
/// attempt on a thread of its own. An attempt still waiting when another won ends on its own
/// (within `timeout`) and its socket is closed.
pub(crate) fn connect_blocking(
    addrs: &[SocketAddr],
    timeout: Duration,
    winners: &Winners,
) -> std::io::Result<std::net::TcpStream> {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let order = winners.order(addrs);
    let mut next = order.iter().copied();
    let (tx, rx) = channel();
    let start = |addr: Option<SocketAddr>| {
        let Some(addr) = addr else { return };
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((addr, std::net::TcpStream::connect_timeout(&addr, timeout)));
        });
    };
    let mut failed: Vec<(SocketAddr, std::io::Error)> = Vec::new();
    start(next.next());
    // Attempts started are those taken from `next`.
    let mut finished = 0;
    while finished < order.len() - next.len() {
        let done = if next.len() > 0 {
            match rx.recv_timeout(ATTEMPT_DELAY) {
                Ok(done) => done,
                Err(RecvTimeoutError::Timeout) => {
                    start(next.next());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(done) => done,
                Err(_) => break,
            }
        };
        finished += 1;
        match done {
            (addr, Ok(stream)) => {
                let started = &order[..order.len() - next.len()];
                won(winners, addrs, (started, &failed), addr);
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            (addr, Err(e)) => {
                failed.push((addr, e));
                start(next.next());
            }
        }
    }
    let (addr, e) = all_failed(failed);
    Err(std::io::Error::new(e.kind(), format!("{addr}: {e}")))
}

/// `addr` won a race among the `started` addresses (`failed` those that failed): keeps it
/// first for next time, and when it was not the only attempt, says how the others fared.
fn won(
    winners: &Winners,
    addrs: &[SocketAddr],
    (started, failed): (&[SocketAddr], &[(SocketAddr, std::io::Error)]),
    addr: SocketAddr,
) {
    // Recorded even without a race: an address that answered is what Fast Open may go to.
    let lost: Vec<SocketAddr> = failed.iter().map(|(a, _)| *a).collect();
    winners.record(addrs, addr, &lost);
    if started.len() < 2 {
        return;
    }
    let others: Vec<String> = started
        .iter()
        .filter(|a| **a != addr)
        .map(|a| match failed.iter().find(|(f, _)| f == a) {
            Some((_, e)) => format!("{a}: {e}"),
            None => format!("{a}: no answer yet"),
        })
        .collect();
    tracing::info!(
        "connected to {addr} (happy eyeballs; {})",
        others.join("; ")
    );
}

/// Every address failed: the addresses to name (all of them when they failed alike, else the
/// last) and the error.
fn all_failed(mut failed: Vec<(SocketAddr, std::io::Error)>) -> (String, std::io::Error) {
    let Some((last_addr, source)) = failed.pop() else {
        return (
            String::from("(no address)"),
            std::io::Error::other("no address to connect to"),
        );
    };
    let addr = if failed.iter().all(|(_, e)| e.kind() == source.kind()) {
        let mut all: Vec<String> = failed.iter().map(|(a, _)| a.to_string()).collect();
        all.push(last_addr.to_string());
        all.join(" or ")
    } else {
        last_addr.to_string()
    };
    (addr, source)
}

#[cfg(test)]
mod tests;
