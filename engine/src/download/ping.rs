//! `ferry ping`'s measurement: one fresh connection to a URL, timed step by step on the data
//! plane itself (the same Happy Eyeballs, proxies, TLS and stall watchdog a download uses):
//! connect, TLS handshake, time to the first byte of the answer to a ranged `GET`, and the
//! throughput of reading that range. Redirects are followed, and their time counts in the
//! time to first byte, as a download would pay it.
//!
//! It measures one sample per URL, one URL at a time (so endpoints do not compete for the
//! link); it does not retry, write anything, or pick an endpoint for a download.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::conn::Conn;
use super::request::framing_of;
use crate::error::GetError;
use crate::net::target::{Resolver, Target, redirect_target};
use crate::proto::file::status_error;

/// What one ping of a URL measured.
#[derive(Debug, Clone, Serialize)]
pub struct PingReport {
    /// The URL pinged.
    pub url: String,
    /// The address the connection went to (the proxy's, through a proxy).
    pub addr: String,
    /// Name resolution, in seconds.
    pub resolve_seconds: f64,
    /// The TCP connect (and the proxy tunnel, if any), in seconds.
    pub connect_seconds: f64,
    /// The TLS handshake, in seconds (`https://` only).
    pub tls_seconds: Option<f64>,
    /// From sending the request to the answer's head, redirects included, in seconds.
    pub first_byte_seconds: f64,
    /// The status of the final answer.
    pub status: u16,
    /// Where redirects led, when they did.
    pub redirected_to: Option<String>,
    /// Body bytes read.
    pub bytes: u64,
    /// Time to read them after the head, in seconds.
    pub read_seconds: f64,
    /// `bytes / read_seconds`, in bytes per second; `None` when nothing was read.
    pub bytes_per_second: Option<f64>,
}

/// Pings `url`: asks for its first `bytes` bytes on a new connection and times each step.
pub(crate) async fn ping(
    url: &str,
    bytes: u64,
    resolved: &mut Resolver,
) -> Result<PingReport, GetError> {
    let started = Instant::now();
    let mut target = Target::new(url, resolved)?;
    let resolve = started.elapsed();
    let (mut conn, times) = Conn::open_timed(&target).await?;
    let addr = conn.addr().to_string();
    let range = (bytes > 0).then_some(0..bytes);
    let asked = Instant::now();
    let mut redirects = 0;
    let head = loop {
        let head = conn.request(&target, range.clone()).await?;
        if !crate::proto::http1::is_redirect(head.status) {
            break head;
        }
        redirects += 1;
        target = redirect_target(&target, &head, redirects, resolved)?;
        conn = Conn::open(&target).await?;
    };
    let first_byte = asked.elapsed();
    if !matches!(head.status, 200 | 206) {
        return Err(status_error(&target.display, &head));
    }
    let framing = framing_of(&target, &head)?;
    let reading = Instant::now();
    let got = conn.read_and_discard(&target, framing, bytes).await?;
    let read = reading.elapsed();
    let secs = |d: Duration| d.as_secs_f64();
    Ok(PingReport {
        url: url.to_owned(),
        addr,
        resolve_seconds: secs(resolve),
        connect_seconds: secs(times.connect),
        tls_seconds: times.tls.map(secs),
        first_byte_seconds: secs(first_byte),
        status: head.status,
        redirected_to: (redirects > 0).then(|| target.display.clone()),
        bytes: got,
        read_seconds: secs(read),
        bytes_per_second: (got > 0 && !read.is_zero()).then(|| got as f64 / secs(read)),
    })
}
