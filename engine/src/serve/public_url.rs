//! The URL clients reach `ferry serve` by, for the absolute `Link`s of paged listings, and what
//! a reverse proxy in front says about it. Never the client's `Host` (see [`public_base`]).

use std::net::SocketAddr;

use super::Shared;

/// What a reverse proxy says about the URL the client used.
#[derive(Debug, Default, Clone)]
pub(crate) struct Forwarded {
    pub proto: Option<String>,
    pub host: Option<String>,
    pub prefix: Option<String>,
}

/// The URL clients reach this server by, for the absolute `Link`s of paged listings: the
/// configured public URL; else what a trusted reverse proxy forwards (`X-Forwarded-Proto`,
/// `-Host`, `-Prefix`); else the address the client connected to (for HTTPS, the name it asked
/// the certificate for). Never the client's `Host`: a tree page that names a host of the
/// client's choosing could be cached by a proxy and handed to others.
pub(crate) fn public_base(
    ctx: &Shared,
    forwarded: &Forwarded,
    peer: SocketAddr,
    (local, sni): (SocketAddr, Option<&str>),
) -> String {
    if let Some(url) = &ctx.options.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let scheme = if ctx.options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let peer_ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        ip => ip,
    };
    if ctx.options.trusted_proxies.contains(&peer_ip)
        && let Some(host) = forwarded.host.as_deref().and_then(super::route::sane_host)
    {
        let proto = match forwarded.proto.as_deref() {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(p) if p.eq_ignore_ascii_case("http") => "http",
            _ => scheme,
        };
        let prefix = forwarded
            .prefix
            .as_deref()
            .filter(|p| sane_prefix(p))
            .unwrap_or("")
            .trim_end_matches('/');
        return format!("{proto}://{host}{prefix}");
    }
    match sni.and_then(super::route::sane_host) {
        Some(name) => format!("{scheme}://{name}:{}", local.port()),
        None => format!("{scheme}://{local}"),
    }
}

/// A path prefix a proxy may forward: `/`-led, URL-safe characters, no `..`.
fn sane_prefix(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 255
        && !p.contains("..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'))
}
