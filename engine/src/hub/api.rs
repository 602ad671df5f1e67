//! The Hub's JSON API over plain HTTP/1.1: one blocking request at a time, for the few small
//! answers a pull needs before the data plane takes over (the revision, the paged tree walk).
//!
//! It follows redirects (the token only to the endpoint's own origin), decodes chunked bodies,
//! bounds body size, and retries what [`crate::proto::retry`]'s table says is worth retrying
//! (connection failures, resets, timeouts, 408, 429 waiting as `Retry-After` or `RateLimit`
//! says, 5xx), a bounded number of times, saying so. Everything else
//! fails at once with the Hub's own error code mapped to a [`HubError`]. File bytes never go
//! through here. `https://` endpoints verify their certificate with the engine's trust
//! ([`TlsClient`](crate::net::tls::TlsClient)); a certificate that does not verify fails at
//! once, naming the host. Proxies are the engine's ([`crate::net::proxy`]): a tunnel, or
//! absolute-form requests to an HTTP proxy for `http://`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use url::Url;

use super::error::HubError;
use crate::net::proxy::Handshake;
use crate::net::target::Secret;
use crate::net::tls::HandshakeError;
use crate::net::{Dialer, Route};
use crate::proto::http1::{self, ChunkedDecoder, Framing, ResponseHead, redirect};
use crate::proto::retry::{self, Verdict};

/// Attempts per request (the first and the retries).
const ATTEMPTS: u32 = 6;
/// A listing page or revision larger than this is refused (a page of the Hub's tree holds at
/// most a thousand entries, a few hundred KiB; a revision of 100,000 files, a few MiB).
const MAX_BODY: usize = 64 << 20;
/// An answer must be complete within this many read timeouts (`--read-timeout`, 30 s by
/// default): a server that trickles a byte now and then never trips the per-read timeout.
const DEADLINE_READS: u32 = 4;

/// An answer: status, head, whole body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub head: ResponseHead,
    pub body: Vec<u8>,
    /// The URL that answered, after redirects (what relative references resolve against).
    pub url: Url,
}

/// A client of one endpoint.
#[derive(Debug)]
pub(crate) struct Api {
    endpoint: Url,
    authorization: Option<Secret>,
    dialer: Dialer,
}

/// A connection of the API client: plain, or TLS over it.
type Wire = crate::net::tls::Wire<rustls::ClientConnection>;

/// Why one attempt failed, and whether to try again.
enum Attempt {
    Retry { why: String, wait: Option<Duration> },
    Fail(HubError),
}

impl Api {
    pub(crate) fn new(endpoint: Url, authorization: Option<Secret>, dialer: Dialer) -> Api {
        Api {
            endpoint,
            authorization,
            dialer,
        }
    }

    pub(super) fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// GETs `url` (an endpoint URL), following redirects and retrying; any final status is
    /// returned for the caller to judge, except those retried until they ran out.
    pub(crate) fn get(&self, url: &Url) -> Result<Answer, HubError> {
        let mut attempt = 1;
        loop {
            let (why, wait) = match self.get_once(url) {
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry { why, wait }) => (why, wait),
                Ok(answer) => match retry::for_status(&answer.head) {
                    Verdict::Fail => return Ok(answer),
                    Verdict::Retry { .. } if attempt >= ATTEMPTS => {
                        return Err(gave_up(url, &answer, attempt));
                    }
                    Verdict::Retry { wait } => {
                        let status = format!("{} {}", answer.head.status, answer.head.reason);
                        (status, wait)
                    }
                },
            };
            if attempt >= ATTEMPTS {
                return Err(HubError::Remote {
                    url: url.to_string(),
                    detail: format!("{why} (after {attempt} attempts)"),
                });
            }
            let Some(wait) = retry::wait_for(attempt, wait, crate::runtime::jitter()) else {
                return Err(HubError::Remote {
                    url: url.to_string(),
                    detail: format!(
                        "{why}; the server asks to wait {} s, longer than ferry waits",
                        wait.unwrap_or_default().as_secs()
                    ),
                });
            };
            attempt += 1;
            tracing::warn!(
                "{url}: {why}; retrying in {:.1} s (attempt {attempt} of {ATTEMPTS})",
                wait.as_secs_f64(),
            );
            std::thread::sleep(wait);
        }
    }

    /// One attempt, with its redirects.
    fn get_once(&self, url: &Url) -> Result<Answer, Attempt> {
        let mut url = url.clone();
        let mut count = 0;
        loop {
            // The token goes to the endpoint's origin only.
            let auth = self
                .authorization
                .as_ref()
                .filter(|_| url.origin() == self.endpoint.origin());
            let answer = request(&url, auth.map(Secret::expose), &self.dialer)?;
            if !http1::is_redirect(answer.head.status) {
                return Ok(Answer { url, ..answer });
            }
            count += 1;
            let refused = |detail: String| {
                Attempt::Fail(HubError::Remote {
                    url: url.to_string(),
                    detail,
                })
            };
            let next = redirect::next_location(&url, &answer.head, count).map_err(refused)?;
            redirect::check_private(
                is_private(&url, &self.dialer),
                &next,
                is_private(&next, &self.dialer),
                self.dialer.allow_private_redirects,
            )
            .map_err(refused)?;
            url = next;
        }
    }
}

/// Whether `url` names a private address: by its host, or (without a proxy) by every address
/// its name resolves to. A name that does not resolve counts as public.
fn is_private(url: &Url, dialer: &Dialer) -> bool {
    if let Some(private) = redirect::host_is_private(url) {
        return private;
    }
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    if dialer.proxies.for_url(url.scheme(), host, port).is_some() {
        return false;
    }
    (host, port)
        .to_socket_addrs()
        .map(|a| a.collect::<Vec<_>>())
        .is_ok_and(|a| !a.is_empty() && a.iter().all(|a| redirect::is_private(a.ip())))
}

/// The error for an answer still retryable when the attempts ran out.
fn gave_up(url: &Url, answer: &Answer, attempts: u32) -> HubError {
    if answer.head.status == 429 {
        return HubError::RateLimited {
            url: url.to_string(),
            attempts,
        };
    }
    HubError::Remote {
        url: url.to_string(),
        detail: format!(
            "{} {} after {attempts} attempts{}",
            answer.head.status,
            answer.head.reason,
            error_message(answer)
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
    }
}

/// The Hub's error text of an answer: `X-Error-Message`, or `{"error": ...}`.
pub(crate) fn error_message(answer: &Answer) -> Option<String> {
    if let Some(m) = answer.head.header("x-error-message") {
        return Some(m.to_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    v.get("error")?.as_str().map(str::to_owned)
}

/// One request on a fresh connection (the API needs few; the data plane keeps connections).
fn request(url: &Url, authorization: Option<&str>, dialer: &Dialer) -> Result<Answer, Attempt> {
    let retry = |why: String| Attempt::Retry { why, wait: None };
    let fail = |detail: String| {
        Attempt::Fail(HubError::Remote {
            url: url.to_string(),
            detail,
        })
    };
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(Attempt::Fail(HubError::Usage(format!(
                "{url}: unsupported scheme {other:?}; endpoints are http:// or https://"
            ))));
        }
    };
    let host = url
        .host_str()
        .ok_or_else(|| fail("no host".into()))?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let lookup = |h: &str, p: u16| -> Result<Vec<SocketAddr>, Attempt> {
        match (h, p).to_socket_addrs() {
            Ok(a) => Ok(a.collect()),
            Err(e) => Err(retry(format!("cannot resolve {h}: {e}"))),
        }
    };
    let route = Route::for_url(&dialer.proxies, url, bare, port, || {
        lookup(bare, port).map(|a| a[0])
    })?;
    let (host_header, origin_form) = http1::host_and_target(url);
    let target = route.request_target(url, origin_form);
    let proxy_authorization = route.proxy_authorization();
    let tcp = match &route {
        Route::Direct => {
            connect(&lookup(bare, port)?, dialer).map_err(|e| retry(format!("connect: {e}")))?
        }
        Route::Tunnel { proxy, .. } | Route::Forward { proxy } => {
            let mut tcp = connect(&lookup(&proxy.host, proxy.port)?, dialer)
                .map_err(|e| retry(format!("connect to proxy {proxy}: {e}")))?;
            if let Route::Tunnel { proxy, dest } = &route {
                tunnel(&mut tcp, Handshake::new(Arc::clone(proxy), dest.clone()))?;
            }
            tcp
        }
    };
    let mut stream = if https {
        match dialer.tls.connect_blocking(bare, tcp) {
            Ok(s) => Wire::Tls(Box::new(s)),
            Err(HandshakeError::Setup(e)) => return Err(Attempt::Fail(HubError::Usage(e))),
            Err(HandshakeError::Tls(e)) => return Err(Attempt::Fail(HubError::Tls(e))),
            Err(HandshakeError::Io(e)) => return Err(retry(format!("TLS handshake: {e}"))),
        }
    } else {
        Wire::Plain(tcp)
    };
    let mut req = http1::get_request(
        &target,
        &host_header,
        None,
        (authorization, proxy_authorization.as_deref()),
        None,
    );
    // One request per connection: say so, so the server closes after the answer.
    let at = req.len() - 2;
    req.splice(at..at, b"Connection: close\r\n".iter().copied());
    stream
        .write_all(&req)
        .map_err(|e| retry(format!("send request: {e}")))?;
    let limit = dialer.timeouts.read * DEADLINE_READS;
    let deadline = Instant::now() + limit;
    let late = || {
        fail(format!(
            "no complete answer within {:.0} s; refused",
            limit.as_secs_f64()
        ))
    };
    let mut buf = Vec::with_capacity(16 * 1024);
    let (head, used) = loop {
        match http1::parse_head(&buf) {
            Ok(Some(done)) => break done,
            Ok(None) => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        if Instant::now() > deadline {
            return Err(late());
        }
        if read_some(&mut stream, &mut buf).map_err(|e| retry(format!("read: {e}")))? == 0 {
            return Err(retry("connection closed before a complete answer".into()));
        }
    };
    buf.drain(..used);
    let framing = head.framing().map_err(|e| fail(e.to_string()))?;
    let body = read_body(&mut stream, buf, framing, deadline).map_err(|e| match e {
        BodyError::Io(e) => retry(format!("read body: {e}")),
        BodyError::Bad(d) => fail(d),
        BodyError::Late => late(),
    })?;
    Ok(Answer {
        head,
        body,
        url: url.clone(),
    })
}

enum BodyError {
    Io(std::io::Error),
    Bad(String),
    /// The deadline of the whole answer passed.
    Late,
}

fn read_body(
    stream: &mut Wire,
    mut buf: Vec<u8>,
    framing: Framing,
    deadline: Instant,
) -> Result<Vec<u8>, BodyError> {
    let read_some = |stream: &mut Wire, buf: &mut Vec<u8>| {
        if Instant::now() > deadline {
            return Err(BodyError::Late);
        }
        read_some(stream, buf).map_err(BodyError::Io)
    };
    match framing {
        Framing::Length(n) => {
            if n as usize > MAX_BODY {
                return Err(BodyError::Bad(format!("answer of {n} bytes is too large")));
            }
            while (buf.len() as u64) < n {
                if read_some(stream, &mut buf)? == 0 {
                    return Err(BodyError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("body ended after {} of {n} bytes", buf.len()),
                    )));
                }
            }
            buf.truncate(n as usize);
            Ok(buf)
        }
        Framing::UntilClose => {
            while read_some(stream, &mut buf)? > 0 {
                if buf.len() > MAX_BODY {
                    return Err(BodyError::Bad("answer too large".into()));
                }
            }
            Ok(buf)
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            let mut out = Vec::new();
            loop {
                let used = decoder
                    .decode(&buf, &mut out)
                    .map_err(|e| BodyError::Bad(format!("chunked body: {e}")))?;
                buf.drain(..used);
                if decoder.is_done() {
                    return Ok(out);
                }
                if out.len() > MAX_BODY {
                    return Err(BodyError::Bad("answer too large".into()));
                }
                if read_some(stream, &mut buf)? == 0 {
                    return Err(BodyError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunked body",
                    )));
                }
            }
        }
    }
}

/// Appends what one read brings; a signal (the engine's threads get some) just reads again.
fn read_some(stream: &mut Wire, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Opens a tunnel through a proxy on `tcp` (blocking). A refusal fails at once; a broken
/// connection is retried.
fn tunnel(tcp: &mut TcpStream, mut hs: Handshake) -> Result<(), Attempt> {
    let io = |e: std::io::Error| Attempt::Retry {
        why: format!("proxy handshake: {e}"),
        wait: None,
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let out = hs.take_output();
        tcp.write_all(&out).map_err(io)?;
        if hs.is_done() {
            return Ok(());
        }
        match hs.feed(&buf) {
            Ok(Some(n)) => {
                buf.drain(..n);
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(Attempt::Fail(HubError::Proxy(e.0))),
        }
        match tcp.read(&mut chunk) {
            Ok(0) => return Err(io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
}

/// Connects with Happy Eyeballs ([`crate::net::connect_blocking`]); reads and writes then
/// time out after the read timeout.
fn connect(addrs: &[SocketAddr], dialer: &Dialer) -> std::io::Result<TcpStream> {
    let s = crate::net::connect_blocking(addrs, dialer.timeouts.connect, &dialer.winners)?;
    s.set_read_timeout(Some(dialer.timeouts.read))?;
    s.set_write_timeout(Some(dialer.timeouts.read))?;
    Ok(s)
}
