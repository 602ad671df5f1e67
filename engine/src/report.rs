//! What a finished download reports: [`Report`] per file with its [`HashReport`], and the
//! reports of other modules users read beside it ([`EndpointReport`], [`PingReport`]).
//!
//! Plain serialisable data; the JSON of `ferry get --json` is these types.

use std::path::PathBuf;

use serde::Serialize;

pub(crate) use crate::backend::Backend;
pub use crate::backend::sink::SinkKind;
pub use crate::download::ping::PingReport;
pub use crate::proto::sources::EndpointReport;
use crate::verify::HashAlgorithm;

/// What a finished download did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The URL asked for.
    pub url: String,
    /// The URL the bytes came from, when redirects led elsewhere.
    pub url_final: Option<String>,
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Seconds from the start of the job until the file was durable under its final name.
    pub seconds: f64,
    /// `bytes / seconds / 1e9`.
    pub gb_per_s: f64,
    /// The back-end that moved the bytes.
    pub backend: Backend,
    /// Why that back-end.
    pub backend_reason: String,
    /// Worker threads of the engine.
    pub threads: usize,
    /// Connections the download used.
    pub connections: usize,
    /// Connections the job kept open when the file was done: where `-c` allows more than 16,
    /// the count measurement settled on (connections by measurement), or had reached so far.
    pub connections_open: usize,
    /// True when the file came in ranges; false for one stream (the server ignored `Range`).
    pub ranged: bool,
    /// How the bytes were written.
    pub sink: SinkKind,
    /// Why that sink.
    pub sink_reason: String,
    /// The verified digest, when one was asked for.
    pub verified: Option<HashReport>,
    /// Times the file was fetched (2 after a sha256 mismatch that the second fetch cured).
    pub fetches: u32,
    /// Bytes taken over from an earlier run that was stopped (the job's resume journal)
    /// rather than fetched again: read back and verified for a file with a digest, vouched for
    /// by the resource's `ETag` and the same boot for one without (an HLS segment).
    pub resumed: u64,
    /// Ranges fetched again after a body ended short.
    pub retries: u64,
    /// Ranges split so that connections finish together.
    pub splits: u64,
    /// Range requests sent while the answer ahead of them was still being read (HTTP/1.1
    /// pipelining, where the wait for an answer is a WAN's: [`Config::pipelining`](crate::Config::pipelining)).
    pub pipelined: u64,
    /// Answers to this file's requests that came over HTTP/2 (an `https://` server that chose
    /// `h2` where it was offered: [`Config::http2`](crate::Config::http2)); 0 when every one
    /// came over HTTP/1.1.
    pub http2: u64,
    /// Answers to this file's requests that came over HTTP/3 ([`Config::http3`](crate::Config::http3)).
    pub http3: u64,
    /// With [`Config::http3`](crate::Config::http3): what the job's QUIC connections did so
    /// far (all files of the job together, not this file alone). `None` without it.
    pub quic: Option<QuicReport>,
    /// Ranges whose flow stalled (no byte for a few round trips while other connections
    /// kept moving) and whose rest was fetched on a new connection, before the stall
    /// watchdog ([`Config::read_timeout`](crate::Config::read_timeout)) would have ended it.
    pub hedged: u64,
    /// Bytes written from buffers registered with the ring (io_uring `WRITE_FIXED`): on the
    /// io_uring back-end, all that its direct and buffered sinks wrote from the buffer arena;
    /// 0 in safe mode, with the splice sink, or where the kernel refused the registration (see
    /// the debug log).
    pub written_fixed: u64,
    /// With mirrors ([`GetItem::mirror`](crate::GetItem::mirror)): the bytes of this file each endpoint served, and
    /// each endpoint's failures and demotion over the whole job so far. Empty without mirrors.
    pub endpoints: Vec<EndpointReport>,
}

/// What a job's QUIC connections did (`--http3`), counted by the QUIC stack: how the UDP path
/// was used, and why connections went over TCP instead, if any did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QuicReport {
    /// Why a connection that was to try HTTP/3 went over TCP (the first such reason, with its
    /// origin): no answer to the handshake, a proxy in the way, a refusal. `None` when none did.
    pub fallback: Option<String>,
    /// QUIC connections opened.
    pub connections: u64,
    /// UDP datagrams sent.
    pub datagrams_sent: u64,
    /// The send operations that carried them: fewer sends than datagrams means GSO (one
    /// `sendmsg` with `UDP_SEGMENT` carries several).
    pub sends: u64,
    /// Datagrams per send (1.0 without GSO).
    pub gso_segments_per_send: f64,
    /// UDP datagrams received.
    pub datagrams_received: u64,
    /// Their bytes (QUIC headers, encryption and all).
    pub bytes_received: u64,
    /// Packets the QUIC stack declared lost (and sent again).
    pub lost_packets: u64,
}

/// How a download's digest was verified.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HashReport {
    /// What was hashed.
    pub algorithm: HashAlgorithm,
    /// The digest, which matched the one asked for (lowercase hex).
    pub digest: String,
    /// Bytes hashed from buffers still in memory.
    pub from_memory: u64,
    /// Bytes read back from the file to be hashed (they had left memory before their turn).
    pub read_back: u64,
}
