//! Connecting: resolve a host once per job, then open TCP connections on the calling worker's
//! runtime, trying each address in turn, and run TLS over them for `https://` ([`tls`]).
//! Proxies and Happy Eyeballs are not here yet.

pub(crate) mod tls;

use std::net::{SocketAddr, ToSocketAddrs};

use compio::BufResult;
use compio::buf::IoBufMut;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpStream;

use crate::error::GetError;

/// A connection to a server: plain TCP, or TLS over it.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tls::TlsStream>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.tcp(),
        }
    }

    /// The socket, when bytes on it are the plain bytes of the response (what splice needs).
    pub fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) => None,
        }
    }

    /// Reads into `buf`'s spare room; `Ok(0)` at the end of the stream.
    pub async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    /// Sends all of `data`.
    pub async fn write_all(&mut self, data: Vec<u8>) -> BufResult<(), Vec<u8>> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => s.write_all(data).await,
        }
    }
}

/// Connects to the first of `addrs` that accepts, then runs TLS with `tls_host` when given.
pub(crate) async fn open(
    addrs: &[SocketAddr],
    tls: Option<(&tls::TlsClient, &str)>,
) -> Result<Stream, GetError> {
    let tcp = connect(addrs).await?;
    let Some((client, host)) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let addr = tcp
        .peer_addr()
        .map_or_else(|_| addrs[0].to_string(), |a| a.to_string());
    match tls::TlsStream::connect(client, host, tcp).await {
        Ok(s) => Ok(Stream::Tls(Box::new(s))),
        Err(tls::HandshakeError::Setup(detail)) => Err(GetError::TlsSetup { detail }),
        Err(tls::HandshakeError::Tls(detail)) => Err(GetError::Tls { addr, detail }),
        Err(tls::HandshakeError::Io(source)) => Err(GetError::Network {
            addr,
            op: "TLS handshake",
            source,
        }),
    }
}

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
