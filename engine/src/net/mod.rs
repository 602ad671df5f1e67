//! Connecting: resolve a host once per job, then open TCP connections on the calling worker's
//! runtime, trying each address in turn. TLS, proxies and Happy Eyeballs come later (issue 5);
//! this module does plain TCP only.

use std::net::{SocketAddr, ToSocketAddrs};

use compio::net::TcpStream;

use crate::error::GetError;

/// Resolves `host:port` (blocking; called once per job, off the workers).
pub(crate) fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, GetError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| GetError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(GetError::Resolve {
            host: host.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        });
    }
    Ok(addrs)
}

/// Connects to the first address that accepts.
pub(crate) async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, GetError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(*addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, source) = last.map_or_else(
        || {
            (
                String::from("(no address)"),
                std::io::Error::other("no address to connect to"),
            )
        },
        |(a, e)| (a.to_string(), e),
    );
    Err(GetError::Connect { addr, source })
}
