//! Proxies: which one a URL goes through, and the handshakes that open a tunnel through it.
//!
//! The choice follows curl and Python requests: `--proxy URL` for every URL, else
//! `https_proxy`/`HTTPS_PROXY` for `https://` and `http_proxy`/`HTTP_PROXY` for `http://`, else
//! `all_proxy`/`ALL_PROXY`; lower case wins over upper case. `no_proxy`/`NO_PROXY` lists hosts
//! that connect directly: `*`, names (matching the name and every name below it, with or
//! without a leading dot), IP addresses, CIDR blocks, each optionally with `:port`.
//!
//! Proxy URLs are `http://` (a `CONNECT` tunnel for `https://` targets, absolute-form requests
//! for `http://` ones), `socks5://` (the target resolved here) and `socks5h://` (resolved by the
//! proxy). Credentials in the URL (`http://user:pass@host:port`, percent-encoded) are sent as
//! `Proxy-Authorization: Basic` or as SOCKS5 username/password (RFC 1929), and never shown:
//! a proxy displays as `http://***@host:port`.
//!
//! Sans-IO: [`Handshake`] produces the bytes to send and parses the replies; the data plane and
//! the Hub API client drive it over their own sockets. This module does not connect anything.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;

/// How a proxy is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyKind {
    /// An HTTP proxy: `CONNECT` tunnels, or absolute-form requests for `http://`.
    Http,
    /// SOCKS5 with the target's address resolved here.
    Socks5,
    /// SOCKS5 with the target's name resolved by the proxy.
    Socks5h,
}

/// One proxy, from a URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    /// User name and password, percent-decoded.
    credentials: Option<(String, String)>,
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.kind {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
        };
        let auth = if self.credentials.is_some() {
            "***@"
        } else {
            ""
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{auth}{host}:{}", self.port)
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proxy({self})")
    }
}

impl Proxy {
    /// Parses a proxy URL; without a scheme it is `http://`. The error never repeats the
    /// credentials.
    pub(crate) fn parse(s: &str) -> Result<Proxy, String> {
        let with_scheme = if s.contains("://") {
            s.to_owned()
        } else {
            format!("http://{s}")
        };
        let redacted = || redact(&with_scheme);
        let url = url::Url::parse(&with_scheme)
            .map_err(|e| format!("invalid proxy URL {}: {e}", redacted()))?;
        let (kind, default_port) = match url.scheme() {
            "http" => (ProxyKind::Http, 80),
            "socks5" => (ProxyKind::Socks5, 1080),
            "socks5h" => (ProxyKind::Socks5h, 1080),
            other => {
                return Err(format!(
                    "proxy {}: scheme {other:?} is not supported (http://, socks5://, socks5h://)",
                    redacted()
                ));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("proxy {} has no host", redacted()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| format!("proxy {}: credentials are not UTF-8", redacted()))
        };
        let credentials = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            Some((
                decode(url.username())?,
                decode(url.password().unwrap_or(""))?,
            ))
        };
        Ok(Proxy {
            kind,
            host,
            port: url.port().unwrap_or(default_port),
            credentials,
        })
    }

    /// The `Proxy-Authorization` value for an HTTP proxy with credentials.
    pub(crate) fn authorization(&self) -> Option<String> {
        let (user, pass) = self.credentials.as_ref()?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        Some(format!("Basic {token}"))
    }

    /// True when the target's name is resolved here, not by the proxy.
    pub(crate) fn resolves_locally(&self) -> bool {
        self.kind == ProxyKind::Socks5
    }
}

/// `scheme://user:pass@host` with the credentials replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// One `no_proxy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bypass {
    All,
    Name {
        name: String,
        port: Option<u16>,
    },
    Net {
        addr: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
}

impl Bypass {
    fn parse(entry: &str) -> Option<Bypass> {
        let e = entry.trim().to_ascii_lowercase();
        if e.is_empty() {
            return None;
        }
        if e == "*" {
            return Some(Bypass::All);
        }
        // `[v6]:port`, `v4:port`, `name:port`; a bare v6 address has several colons.
        let (host, port) = if let Some(rest) = e.strip_prefix('[') {
            let (h, after) = rest.split_once(']')?;
            (
                h.to_owned(),
                after.strip_prefix(':').and_then(|p| p.parse().ok()),
            )
        } else if e.matches(':').count() == 1 {
            let (h, p) = e.split_once(':')?;
            (h.to_owned(), Some(p.parse().ok()?))
        } else {
            (e.clone(), None)
        };
        let (addr_part, prefix) = match host.split_once('/') {
            Some((a, n)) => (a, Some(n.parse::<u8>().ok()?)),
            None => (host.as_str(), None),
        };
        if let Ok(addr) = addr_part.parse::<IpAddr>() {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            return Some(Bypass::Net {
                addr,
                prefix: prefix.unwrap_or(max).min(max),
                port,
            });
        }
        let name = host.trim_start_matches("*.").trim_start_matches('.');
        Some(Bypass::Name {
            name: name.to_owned(),
            port,
        })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        match self {
            Bypass::All => true,
            Bypass::Name { name, port: p } => {
                p.is_none_or(|p| p == port)
                    && (host == name
                        || host
                            .strip_suffix(name.as_str())
                            .is_some_and(|head| head.ends_with('.')))
            }
            Bypass::Net {
                addr,
                prefix,
                port: p,
            } => {
                p.is_none_or(|p| p == port)
                    && host
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| in_net(ip, *addr, *prefix))
            }
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Which proxy each URL goes through.
#[derive(Debug, Clone, Default)]
pub(crate) struct Proxies {
    http: Option<Arc<Proxy>>,
    https: Option<Arc<Proxy>>,
    bypass: Vec<Bypass>,
}

impl Proxies {
    /// From `--proxy` (when given) and the environment.
    pub(crate) fn from_env(explicit: Option<&str>) -> Result<Proxies, String> {
        Proxies::from_lookup(explicit, |k| std::env::var(k).ok())
    }

    fn from_lookup(
        explicit: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Proxies, String> {
        let get = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| var(n).filter(|v| !v.trim().is_empty()))
        };
        let parse = |s: Option<String>| -> Result<Option<Arc<Proxy>>, String> {
            s.map(|s| Proxy::parse(s.trim()).map(Arc::new)).transpose()
        };
        let (http, https) = match explicit.filter(|s| !s.is_empty()) {
            Some(p) => {
                let p = parse(Some(p.to_owned()))?;
                (p.clone(), p)
            }
            None => {
                let all = get(&["all_proxy", "ALL_PROXY"]);
                (
                    parse(get(&["http_proxy", "HTTP_PROXY"]).or_else(|| all.clone()))?,
                    parse(get(&["https_proxy", "HTTPS_PROXY"]).or(all))?,
                )
            }
        };
        let bypass = get(&["no_proxy", "NO_PROXY"])
            .map(|v| v.split(',').filter_map(Bypass::parse).collect())
            .unwrap_or_default();
        Ok(Proxies {
            http,
            https,
            bypass,
        })
    }

    /// The proxy for a URL of `scheme` to `host:port`, or `None` to connect directly.
    pub(crate) fn for_url(&self, scheme: &str, host: &str, port: u16) -> Option<Arc<Proxy>> {
        let proxy = match scheme {
            "https" => self.https.as_ref(),
            _ => self.http.as_ref(),
        }?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if self.bypass.iter().any(|b| b.matches(&host, port)) {
            return None;
        }
        Some(Arc::clone(proxy))
    }
}

/// Why a proxy handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ProxyError(pub String);

/// Where a tunnel goes: a name (resolved by the proxy) or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dest {
    Name(String, u16),
    Addr(SocketAddr),
}

#[derive(Debug)]
enum Stage {
    /// Waiting for the proxy's answer to `CONNECT`.
    ConnectReply,
    /// SOCKS5: waiting for the chosen method.
    Method,
    /// SOCKS5: waiting for the username/password verdict.
    Auth,
    /// SOCKS5: waiting for the reply to the connect request.
    Reply,
    Done,
}

/// The client side of opening a tunnel through a proxy, without I/O: send
/// [`Handshake::take_output`], feed what comes back to [`Handshake::feed`], until
/// [`Handshake::is_done`].
#[derive(Debug)]
pub(crate) struct Handshake {
    proxy: Arc<Proxy>,
    dest: Dest,
    stage: Stage,
    out: Vec<u8>,
}

/// The largest `CONNECT` answer head accepted.
const MAX_CONNECT_HEAD: usize = 16 << 10;

impl Handshake {
    /// Starts a tunnel to `dest` through `proxy`.
    pub(crate) fn new(proxy: Arc<Proxy>, dest: Dest) -> Handshake {
        let mut h = Handshake {
            proxy,
            dest,
            stage: Stage::Done,
            out: Vec::new(),
        };
        match h.proxy.kind {
            ProxyKind::Http => {
                let authority = match &h.dest {
                    Dest::Name(n, p) if n.contains(':') => format!("[{n}]:{p}"),
                    Dest::Name(n, p) => format!("{n}:{p}"),
                    Dest::Addr(a) => a.to_string(),
                };
                let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
                if let Some(auth) = h.proxy.authorization() {
                    req.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
                }
                req.push_str("\r\n");
                h.out = req.into_bytes();
                h.stage = Stage::ConnectReply;
            }
            ProxyKind::Socks5 | ProxyKind::Socks5h => {
                h.out = if h.proxy.credentials.is_some() {
                    vec![5, 2, 0, 2]
                } else {
                    vec![5, 1, 0]
                };
                h.stage = Stage::Method;
            }
        }
        h
    }

    /// Bytes to send now (empty while waiting for the proxy).
    pub(crate) fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    fn fail(&self, why: impl std::fmt::Display) -> ProxyError {
        ProxyError(format!("proxy {}: {why}", self.proxy))
    }

    /// Feeds everything received and not yet consumed. `Ok(Some(n))`: the current reply was
    /// complete and took `n` bytes (there may be output to send next); `Ok(None)`: more bytes
    /// are needed.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<Option<usize>, ProxyError> {
        match self.stage {
            Stage::ConnectReply => {
                let head = match crate::proto::http1::parse_head(input) {
                    Ok(Some(h)) => h,
                    Ok(None) if input.len() > MAX_CONNECT_HEAD => {
                        return Err(self.fail("CONNECT answer head too large"));
                    }
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(self.fail(format!("bad CONNECT answer: {e}"))),
                };
                let (head, len) = head;
                match head.status {
                    200..=299 => self.done(input, len),
                    // 407 is the standard answer; tinyproxy says 401.
                    401 | 407 => Err(self.fail(if self.proxy.credentials.is_some() {
                        format!("refused the credentials ({})", head.status)
                    } else {
                        format!(
                            "requires authentication ({}); put user:password in the proxy URL",
                            head.status
                        )
                    })),
                    s => Err(self.fail(format!(
                        "refused the tunnel to {}: {s} {}",
                        self.dest_text(),
                        head.reason
                    ))),
                }
            }
            Stage::Method => {
                let [ver, method] = match input {
                    [a, b, ..] => [*a, *b],
                    _ => return Ok(None),
                };
                if ver != 5 {
                    return Err(self.fail("is not a SOCKS5 proxy"));
                }
                match (method, &self.proxy.credentials) {
                    (0, _) => {
                        self.out = self.connect_request();
                        self.stage = Stage::Reply;
                    }
                    (2, Some((user, pass))) => {
                        if user.len() > 255 || pass.len() > 255 {
                            return Err(self.fail("user name or password over 255 bytes"));
                        }
                        let mut m = vec![1, user.len() as u8];
                        m.extend_from_slice(user.as_bytes());
                        m.push(pass.len() as u8);
                        m.extend_from_slice(pass.as_bytes());
                        self.out = m;
                        self.stage = Stage::Auth;
                    }
                    (0xff, None) => {
                        return Err(self
                            .fail("requires authentication; put user:password in the proxy URL"));
                    }
                    _ => return Err(self.fail("offered no authentication method we can use")),
                }
                Ok(Some(2))
            }
            Stage::Auth => {
                let [_, status] = match input {
                    [a, b, ..] => [*a, *b],
                    _ => return Ok(None),
                };
                if status != 0 {
                    return Err(self.fail("refused the credentials"));
                }
                self.out = self.connect_request();
                self.stage = Stage::Reply;
                Ok(Some(2))
            }
            Stage::Reply => {
                if input.len() < 5 {
                    return Ok(None);
                }
                if input[0] != 5 {
                    return Err(self.fail("sent a malformed SOCKS5 reply"));
                }
                if input[1] != 0 {
                    return Err(self.fail(format!(
                        "could not connect to {}: {}",
                        self.dest_text(),
                        socks_reply(input[1])
                    )));
                }
                let len = match input[3] {
                    1 => 4 + 4 + 2,
                    4 => 4 + 16 + 2,
                    3 => 4 + 1 + usize::from(input[4]) + 2,
                    _ => return Err(self.fail("sent a malformed SOCKS5 reply")),
                };
                if input.len() < len {
                    return Ok(None);
                }
                self.done(input, len)
            }
            Stage::Done => Ok(Some(0)),
        }
    }

    /// The tunnel is open after the final reply's `len` bytes. Bytes beyond it would belong to
    /// the origin, which has not been spoken to yet: a proxy that sends some is refused.
    fn done(&mut self, input: &[u8], len: usize) -> Result<Option<usize>, ProxyError> {
        if input.len() > len {
            return Err(self.fail("sent data before the tunnel was used"));
        }
        self.stage = Stage::Done;
        Ok(Some(len))
    }

    fn dest_text(&self) -> String {
        match &self.dest {
            Dest::Name(n, p) => format!("{n}:{p}"),
            Dest::Addr(a) => a.to_string(),
        }
    }

    fn connect_request(&self) -> Vec<u8> {
        let mut m = vec![5, 1, 0];
        let port = match &self.dest {
            Dest::Addr(SocketAddr::V4(a)) => {
                m.push(1);
                m.extend_from_slice(&a.ip().octets());
                a.port()
            }
            Dest::Addr(SocketAddr::V6(a)) => {
                m.push(4);
                m.extend_from_slice(&a.ip().octets());
                a.port()
            }
            Dest::Name(n, p) => {
                // Names over 255 bytes cannot be sent; URL hosts are far shorter (DNS: 253).
                let n = &n.as_bytes()[..n.len().min(255)];
                m.push(3);
                m.push(n.len() as u8);
                m.extend_from_slice(n);
                *p
            }
        };
        m.extend_from_slice(&port.to_be_bytes());
        m
    }
}

fn socks_reply(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "not allowed by the proxy's rules",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown error",
    }
}

#[cfg(test)]
mod tests;
