//! QUIC connections for HTTP/3 (`--http3`, issue 30): a UDP socket and QUIC endpoint of
//! compio-quic per connection, on the calling worker's runtime; the TLS 1.3 handshake with ALPN
//! `h3` against the same trust as TCP's TLS, under a short deadline, the origin's addresses
//! raced 250 ms apart; then the h3 client started on the connection, its driver a task of the
//! same runtime. What the job learnt (an origin that did not answer over QUIC, and why; the
//! UDP path's counts) is in [`QuicState`], shared by the job's connections.
//!
//! Whether a connection tries QUIC at all is [`choose`], sans-IO (asked for, `https://`, no
//! proxy, not safe mode, what this job and earlier runs learnt); `download/conn.rs` acts on it.
//!
//! Invariants: only `https://` origins reached directly are tried (a proxy's tunnel carries
//! TCP); an origin whose handshake failed once is not tried again in the job, and the first
//! reason is kept for the report; nothing here retries. Not here: requests and answers
//! (`download/h3wire.rs`), `Alt-Svc` parsing and the memory's file (`altsvc.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use compio::quic::{ClientConfig, Connection, ConnectionError, Endpoint, EndpointConfig};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;

use super::altsvc::{Entry, Memory, Store};
use super::tls::TlsClient;

/// The h3 handle requests are sent with, and one request's stream.
pub(crate) type SendRequest =
    compio::quic::h3::client::SendRequest<compio::quic::h3::OpenStreams, Bytes>;
pub(crate) type RequestStream =
    compio::quic::h3::client::RequestStream<compio::quic::h3::BidiStream<Bytes>, Bytes>;

/// How long a QUIC handshake may take before the connection goes over TCP instead: a path
/// that blocks UDP answers nothing at all (no ICMP reaches an unconnected socket), so only a
/// deadline tells it. Two seconds holds a handshake over a 300 ms round trip with a lost
/// packet or two.
pub(crate) const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(2);

/// The delay between attempts to an origin's next address (RFC 8305's 250 ms).
const NEXT_ADDRESS: Duration = Duration::from_millis(250);

/// A QUIC connection's receive windows: per stream, and for the whole connection (what the
/// server may send that ferry has not read). As over HTTP/2 (`net::h2::Windows`), answers are
/// read in the order asked, and the bytes asked ahead stay within the connection's window.
pub(crate) const STREAM_WINDOW: u32 = 8 << 20;
pub(crate) const CONNECTION_WINDOW: u32 = 8 << 20;

/// An idle connection sends a PING this often, so that a `pull` idle between files does not
/// lose it to the server's idle timeout (and pay a new handshake).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Why a connection went over TCP though HTTP/3 was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoH3 {
    /// Through a proxy: CONNECT and SOCKS5 tunnels carry TCP.
    Proxied,
    /// No answer to the QUIC handshake within the deadline: UDP blocked on the path, or no
    /// QUIC server on the port.
    NoAnswer(Duration),
    /// The server speaks no QUIC version ferry does.
    Version,
    /// The server ended the handshake (no `h3` among its protocols, a TLS failure, ...).
    Refused(String),
    /// The UDP socket or the QUIC client could not be set up here.
    Setup(String),
    /// An earlier run failed to it `ago`, `why`, and the memory (`altsvc.rs`) keeps that for
    /// a while.
    Remembered { why: String, ago: Duration },
    /// Safe mode: no QUIC (compio-quic uses GSO and GRO wherever the kernel has them, and has
    /// no switch to turn them off alone).
    SafeMode,
}

impl std::fmt::Display for NoH3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoH3::Proxied => f.write_str("a proxy is in the way (its tunnels carry TCP only)"),
            NoH3::NoAnswer(after) => write!(
                f,
                "no answer to the QUIC handshake within {:.1} s (UDP blocked, or no HTTP/3 \
                 server on the port)",
                after.as_secs_f64()
            ),
            NoH3::Version => f.write_str("the server speaks no QUIC version ferry does"),
            NoH3::Refused(why) => write!(f, "the server refused the QUIC handshake: {why}"),
            NoH3::Setup(why) => write!(f, "QUIC could not be set up here: {why}"),
            NoH3::SafeMode => f.write_str(
                "safe mode: no QUIC (its UDP offloads, GSO and GRO, cannot be turned off alone)",
            ),
            NoH3::Remembered { why, ago } => write!(
                f,
                "an earlier run failed {} s ago ({why}); QUIC is tried again {} min after a \
                 failure",
                ago.as_secs(),
                super::altsvc::FAILED_FOR.as_secs() / 60
            ),
        }
    }
}

/// A QUIC connection with HTTP/3 started on it. Dropping it closes the connection.
pub(crate) struct H3Conn {
    pub(crate) quic: Connection,
    pub(crate) send: SendRequest,
    pub(crate) driver: compio::runtime::JoinHandle<()>,
    /// Kept so the endpoint's socket lives as long as the connection.
    pub(crate) _endpoint: Endpoint,
    pub(crate) addr: SocketAddr,
}

impl std::fmt::Debug for H3Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Conn").field("addr", &self.addr).finish()
    }
}

/// What a job's QUIC connections learnt, shared by all of them, and what earlier runs did
/// (`altsvc.rs`, read the first time it is needed).
#[derive(Debug, Default)]
pub(crate) struct QuicState {
    /// The memory's file and what it held, read the first time either is needed.
    memory: Mutex<Option<(Store, Memory)>>,
    /// Origins whose `Alt-Svc` was read in this job (once each).
    adverts_seen: Mutex<std::collections::HashSet<String>>,
    /// Origins (`host:port`) whose handshake failed, with why: later connections to them go
    /// over TCP at once.
    failed: Mutex<HashMap<String, NoH3>>,
    /// The first reason any connection went over TCP, for the report.
    first_fallback: Mutex<Option<String>>,
    pub(crate) tally: Tally,
}

impl QuicState {
    /// What the memory says about `origin` now (an earlier run's failure, or the port it
    /// advertised HTTP/3 on).
    pub(crate) fn remembered(&self, origin: &str) -> Option<Entry> {
        let mut memory = lock(&self.memory);
        let (_, memory) = memory.get_or_insert_with(Self::load);
        memory.get(origin, unix_now()).cloned()
    }

    fn load() -> (Store, Memory) {
        let store = Store::default_dir();
        let memory = store.load();
        (store, memory)
    }

    /// Reads `advert`, the `Alt-Svc` of a TCP answer from `origin`, once per origin and job,
    /// into the memory.
    pub(crate) fn advertised(&self, origin: &str, field: &str) {
        if !lock(&self.adverts_seen).insert(origin.to_owned()) {
            return;
        }
        let Some(advert) = super::altsvc::parse(field) else {
            tracing::debug!(%origin, "a malformed Alt-Svc field, ignored: {field:?}");
            return;
        };
        self.remember(|m, now| m.advertised(origin, &advert, now));
    }

    /// Applies `change` to the memory, and writes it when it changed.
    fn remember(&self, change: impl FnOnce(&mut Memory, u64) -> bool) {
        let mut memory = lock(&self.memory);
        let (store, memory) = memory.get_or_insert_with(Self::load);
        if change(memory, unix_now()) {
            store.save(memory);
        }
    }

    /// Why HTTP/3 is not tried for `origin`, when it failed before in this job.
    pub(crate) fn failed(&self, origin: &str) -> Option<NoH3> {
        lock(&self.failed).get(origin).cloned()
    }

    /// Records that `origin` goes over TCP, and why (said once per origin at `-v`); a failure
    /// of QUIC on `port` is remembered for the next runs.
    pub(crate) fn fall_back(&self, origin: &str, port: Option<u16>, why: NoH3) {
        let mut failed = lock(&self.failed);
        if failed.contains_key(origin) {
            return;
        }
        tracing::info!("HTTP/3 to {origin}: {why}; going over TCP");
        lock(&self.first_fallback).get_or_insert_with(|| format!("{origin}: {why}"));
        // A path's answer, kept for the next runs; not a proxy here or a setup of this machine.
        if let (NoH3::NoAnswer(_) | NoH3::Version | NoH3::Refused(_), Some(port)) = (&why, port) {
            let text = why.to_string();
            self.remember(|m, now| m.failed(origin, port, &text, now));
        }
        failed.insert(origin.to_owned(), why);
    }

    /// The first reason a connection went over TCP, if one did.
    pub(crate) fn fallback(&self) -> Option<String> {
        lock(&self.first_fallback).clone()
    }
}

/// Seconds since the epoch (the memory's clock).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The UDP path's counts over a job's QUIC connections, added as each answer is read
/// ([`Tally::add`] takes what a connection counted since its last call).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) connections: AtomicU64,
    pub(crate) datagrams_sent: AtomicU64,
    pub(crate) sends: AtomicU64,
    pub(crate) datagrams_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) lost_packets: AtomicU64,
}

/// A connection's counts when last added to the tally.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counted {
    datagrams_sent: u64,
    sends: u64,
    datagrams_received: u64,
    bytes_received: u64,
    lost_packets: u64,
}

impl Tally {
    /// Adds what `quic` counted since `last`, and makes `last` its counts now.
    pub(crate) fn add(&self, quic: &Connection, last: &mut Counted) {
        let s = quic.stats();
        let now = Counted {
            datagrams_sent: s.udp_tx.datagrams,
            sends: s.udp_tx.ios,
            datagrams_received: s.udp_rx.datagrams,
            bytes_received: s.udp_rx.bytes,
            lost_packets: s.path.lost_packets,
        };
        let add = |to: &AtomicU64, now: u64, was: u64| {
            to.fetch_add(now.saturating_sub(was), Ordering::Relaxed);
        };
        add(
            &self.datagrams_sent,
            now.datagrams_sent,
            last.datagrams_sent,
        );
        add(&self.sends, now.sends, last.sends);
        add(
            &self.datagrams_received,
            now.datagrams_received,
            last.datagrams_received,
        );
        add(
            &self.bytes_received,
            now.bytes_received,
            last.bytes_received,
        );
        add(&self.lost_packets, now.lost_packets, last.lost_packets);
        *last = now;
    }
}

/// How a new connection to an origin goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Over TCP, nothing to say (HTTP/3 not asked for, not `https://`, or already said).
    Tcp,
    /// Over TCP, and the report says why (once per origin).
    TcpBecause(NoH3),
    /// Over QUIC to this port (the origin's own, or the one it advertised).
    Quic { port: u16 },
}

/// The facts a connection's protocol is chosen from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    /// `--http3`.
    pub asked: bool,
    pub safe_mode: bool,
    /// The origin's port, for `https://` URLs; `None` for `http://`.
    pub https_port: Option<u16>,
    /// Straight to the origin (no proxy).
    pub direct: bool,
    /// HTTP/3 to the origin already failed in this job (and the report said why).
    pub failed_in_job: bool,
    /// What earlier runs left in the memory, and the time now (seconds since the epoch).
    pub remembered: Option<&'a Entry>,
    pub now: u64,
}

/// Whether a connection tries HTTP/3, and where: the sans-IO half of opening one.
pub(crate) fn choose(f: Facts<'_>) -> Choice {
    let Some(port) = f.https_port.filter(|_| f.asked) else {
        return Choice::Tcp;
    };
    if f.failed_in_job {
        return Choice::Tcp;
    }
    if f.safe_mode {
        return Choice::TcpBecause(NoH3::SafeMode);
    }
    if !f.direct {
        return Choice::TcpBecause(NoH3::Proxied);
    }
    match f.remembered {
        Some(Entry::Failed { why, at, .. }) => Choice::TcpBecause(NoH3::Remembered {
            why: why.clone(),
            ago: Duration::from_secs(f.now.saturating_sub(*at)),
        }),
        Some(Entry::H3 { port, .. }) => Choice::Quic { port: *port },
        None => Choice::Quic { port },
    }
}

/// The origin (`host:port`) HTTP/3 state is kept under for `target`; `None` for `http://`.
pub(crate) fn origin(target: &super::target::Target) -> Option<String> {
    let host = target.tls_host.as_deref()?;
    let port = target.url.port_or_known_default().unwrap_or(443);
    Some(format!("{host}:{port}"))
}

impl super::Dialer {
    /// Reads the `Alt-Svc` of a TCP answer from `target` into the HTTP/3 memory, with
    /// `--http3` (without it ferry keeps nothing about HTTP/3).
    pub(crate) fn note_alt_svc(
        &self,
        target: &super::target::Target,
        head: &crate::proto::http1::ResponseHead,
    ) {
        if !self.http3 {
            return;
        }
        if let (Some(origin), Some(field)) = (origin(target), head.header("alt-svc")) {
            self.quic.advertised(&origin, field);
        }
    }

    /// The report of the job's QUIC connections, with `--http3`.
    pub(crate) fn quic_report(&self) -> Option<crate::QuicReport> {
        if !self.http3 {
            return None;
        }
        let t = &self.quic.tally;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (sent, sends) = (load(&t.datagrams_sent), load(&t.sends));
        let report = crate::QuicReport {
            fallback: self.quic.fallback(),
            connections: load(&t.connections),
            datagrams_sent: sent,
            sends,
            gso_segments_per_send: if sends > 0 {
                sent as f64 / sends as f64
            } else {
                0.0
            },
            datagrams_received: load(&t.datagrams_received),
            bytes_received: load(&t.bytes_received),
            lost_packets: load(&t.lost_packets),
        };
        Some(report)
    }
}

impl TlsClient {
    /// The QUIC client configuration: this trust's rustls config (TLS 1.3 only in QUIC),
    /// offering `h3`, with ferry's windows and keep-alive.
    pub(crate) fn quic_config(&self) -> Result<ClientConfig, String> {
        let mut tls = (*self.config()?).clone();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| format!("no TLS 1.3 cipher suite QUIC can use: {e}"))?;
        let mut config = ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn_proto::TransportConfig::default();
        transport
            .stream_receive_window(STREAM_WINDOW.into())
            .receive_window(CONNECTION_WINDOW.into())
            .keep_alive_interval(Some(KEEP_ALIVE));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// Opens a QUIC connection to one of `addrs` (verifying `host`'s certificate) and starts
/// HTTP/3 on it: the first address at once, each next one 250 ms later while none answered,
/// the first handshake to finish wins, all within `deadline`.
pub(crate) async fn connect(
    tls: &TlsClient,
    addrs: &[SocketAddr],
    host: &str,
    deadline: Duration,
) -> Result<H3Conn, NoH3> {
    let config = tls.quic_config().map_err(NoH3::Setup)?;
    let mut attempts = FuturesUnordered::new();
    for (i, &addr) in addrs.iter().enumerate() {
        let config = config.clone();
        attempts.push(async move {
            if i > 0 {
                compio::time::sleep(NEXT_ADDRESS * i as u32).await;
            }
            attempt(addr, host, config).await
        });
    }
    let race = async {
        let mut last = NoH3::NoAnswer(deadline);
        while let Some(got) = attempts.next().await {
            match got {
                Ok(conn) => return Ok(conn),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    match compio::time::timeout(deadline, race).await {
        Ok(got) => got,
        Err(_) => Err(NoH3::NoAnswer(deadline)),
    }
}

/// One handshake to `addr`, then HTTP/3's start (SETTINGS on its control stream).
async fn attempt(addr: SocketAddr, host: &str, config: ClientConfig) -> Result<H3Conn, NoH3> {
    let any: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = udp_socket(any).map_err(|e| NoH3::Setup(format!("UDP socket: {e}")))?;
    let endpoint = Endpoint::new(socket, EndpointConfig::default(), None, Some(config))
        .map_err(|e| NoH3::Setup(format!("QUIC endpoint: {e}")))?;
    let quic = endpoint
        .connect(addr, host, None)
        .map_err(|e| NoH3::Setup(format!("QUIC connect to {addr}: {e}")))?
        .await
        .map_err(|e| handshake_failed(&e))?;
    let (mut driver, send) = compio::quic::h3::client::new(quic.clone())
        .await
        .map_err(|e| NoH3::Refused(format!("HTTP/3 did not start: {e}")))?;
    let driver = compio::runtime::spawn(async move {
        let end = driver.wait_idle().await;
        if !end.is_h3_no_error() {
            tracing::debug!(%addr, "HTTP/3 connection ended: {end}");
        }
    });
    tracing::debug!(%addr, "HTTP/3 connection open");
    Ok(H3Conn {
        quic,
        send,
        driver,
        _endpoint: endpoint,
        addr,
    })
}

/// A UDP socket bound to `any`, its receive buffer raised to [`RECEIVE_BUFFER`] (as far as
/// `net.core.rmem_max` lets it): the server's GSO sends arrive in bursts of up to 32
/// datagrams per connection, and the default buffer (208 KiB here) overflowed on loopback,
/// each drop a loss to recover.
fn udp_socket(any: SocketAddr) -> std::io::Result<compio::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(any)?;
    if let Err(e) = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, RECEIVE_BUFFER) {
        tracing::debug!(error = %e, "SO_RCVBUF not raised");
    }
    socket.set_nonblocking(true)?;
    compio::net::UdpSocket::from_std(socket)
}

/// The receive buffer a QUIC connection's socket asks for.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Why a handshake failed, as the report says it.
fn handshake_failed(e: &ConnectionError) -> NoH3 {
    match e {
        ConnectionError::VersionMismatch => NoH3::Version,
        ConnectionError::TimedOut => NoH3::NoAnswer(HANDSHAKE_DEADLINE),
        other => NoH3::Refused(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
