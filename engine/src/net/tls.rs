//! HTTPS for the client side: which certificates are trusted, and a TLS stream over a compio
//! `TcpStream` driven by rustls's sans-IO [`ClientConnection`].
//!
//! Trust is Mozilla's roots (compiled in), plus the system store, plus every PEM file given with
//! `--ca-file` or named by `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE`. A certificate that does not
//! verify is an error naming the host and the reason; there is no switch that turns
//! verification off. TLS 1.2 and 1.3 with rustls's safe defaults, SNI for host names, ALPN
//! `http/1.1` (or `h2` then `http/1.1`, per connection: [`Alpn`]). The crypto is aws-lc-rs ([`provider`]), which offers the post-quantum hybrid
//! key exchange X25519MLKEM768 first; the group a connection negotiated is logged (`-v` for the
//! first one, `-vv` for each).
//!
//! The stream reads ciphertext into its own buffer, lets rustls decrypt it, and copies the
//! plaintext straight into the caller's buffer (a pipeline buffer on the hot path). It does not
//! do kTLS, client certificates or session resumption across connections beyond rustls's own
//! in-memory cache.

use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf, IoBufMut};
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::backend::buf::append;

/// The crypto of every TLS connection ferry makes, client and server: rustls's aws-lc-rs
/// provider. Chosen because rustls 0.23.48 deprecated its ring provider (no post-quantum key
/// exchange), aws-lc-rs offers X25519MLKEM768 (what current servers and CDNs negotiate), and
/// its C builds offline from crates.io with the compiler `scripts/setup.sh` needs anyway. The
/// throughput of the two: `docs/decisions.md` ("TLS provider").
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The TLS crypto ferry uses, for `ferry probe`: the provider and the key exchange groups it
/// offers, most preferred first.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct TlsInfo {
    /// The crypto provider (`aws-lc-rs`).
    pub provider: &'static str,
    /// Key exchange groups offered, most preferred first (`X25519MLKEM768`, ...).
    pub key_exchange: Vec<String>,
}

/// What [`TlsInfo`] says of this build.
pub fn tls_info() -> TlsInfo {
    TlsInfo {
        provider: "aws-lc-rs",
        key_exchange: provider()
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect(),
    }
}

/// Logs the key exchange a session negotiated: at info level for the first session of the
/// process (`-v`), at debug level for the others.
fn log_session(host: &str, conn: &rustls::ClientConnection) {
    static FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    let version = conn.protocol_version();
    let suite = conn.negotiated_cipher_suite().map(|c| c.suite());
    let kx = conn.negotiated_key_exchange_group().map(|g| g.name());
    if FIRST.swap(false, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(host, ?version, ?suite, key_exchange = ?kx, "TLS session established");
    } else {
        tracing::debug!(host, ?version, ?suite, key_exchange = ?kx, "TLS session established");
    }
}

/// Environment variables naming a CA bundle to trust besides the built-in roots (OpenSSL's and
/// Python requests' names, which huggingface_hub users already set).
pub(crate) const CA_ENV: [&str; 2] = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"];

/// Ciphertext read per socket read: a few TLS records (16 KiB each).
const RX_CHUNK: usize = 64 * 1024;

/// The trust settings of an engine, turned into a rustls config the first time an `https://`
/// URL needs one (reading the system store costs milliseconds a plain-HTTP job need not pay).
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsClient {
    inner: Arc<Lazy>,
}

#[derive(Debug, Default)]
struct Lazy {
    ca_files: Vec<PathBuf>,
    config: OnceLock<Result<Arc<ClientConfig>, String>>,
}

impl TlsClient {
    /// Trusts the built-in and system roots plus `ca_files` and the files the environment
    /// names in [`CA_ENV`].
    pub(crate) fn new(ca_files: &[PathBuf]) -> TlsClient {
        let mut files = ca_files.to_vec();
        for var in CA_ENV {
            if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                files.push(PathBuf::from(v));
            }
        }
        TlsClient {
            inner: Arc::new(Lazy {
                ca_files: files,
                config: OnceLock::new(),
            }),
        }
    }

    /// The rustls config; an error says which CA file could not be used.
    pub(crate) fn config(&self) -> Result<Arc<ClientConfig>, String> {
        self.inner
            .config
            .get_or_init(|| build_config(&self.inner.ca_files).map(Arc::new))
            .clone()
    }

    /// A new client session for `host` (a name or an IP address), offering HTTP/1.1 only.
    pub(crate) fn session(&self, host: &str) -> Result<ClientConnection, String> {
        self.session_alpn(host, Alpn::Http11)
    }

    /// A new client session for `host` offering the protocols of `alpn`. One config serves
    /// both offers: the list is per session (`new_with_alpn`), so a connection that cannot
    /// speak HTTP/2 never offers it.
    pub(crate) fn session_alpn(&self, host: &str, alpn: Alpn) -> Result<ClientConnection, String> {
        let config = self.config()?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
        ClientConnection::new_with_alpn(config, name, alpn.offer()).map_err(|e| e.to_string())
    }

    /// TLS over a blocking socket, handshake done (the Hub API client's few requests).
    pub(crate) fn connect_blocking(
        &self,
        host: &str,
        tcp: std::net::TcpStream,
    ) -> Result<rustls::StreamOwned<ClientConnection, std::net::TcpStream>, HandshakeError> {
        let session = self.session(host).map_err(HandshakeError::Setup)?;
        let mut stream = rustls::StreamOwned::new(session, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| match tls_error(&e) {
                    Some(t) => HandshakeError::Tls(describe(host, t)),
                    None => HandshakeError::Io(e),
                })?;
        }
        log_session(host, &stream.conn);
        Ok(stream)
    }
}

fn build_config(ca_files: &[PathBuf]) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(
        system = added,
        errors = system.errors.len(),
        "system CA certificates loaded"
    );
    for file in ca_files {
        add_ca_file(&mut roots, file)?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn add_ca_file(roots: &mut RootCertStore, file: &Path) -> Result<(), String> {
    let bad = |why: String| format!("CA file {}: {why}", file.display());
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(file)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad(format!(
            "none of its {ignored} certificates could be used"
        )));
    }
    Ok(())
}

/// Which application protocols a client connection offers in its TLS handshake (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `http/1.1` only: what every connection of the HTTP/1.1 data plane offers, so a server
    /// that speaks HTTP/2 too never picks it for a connection that cannot.
    Http11,
    /// `h2`, then `http/1.1`: the server picks; a server that picks nothing or `http/1.1`
    /// gets HTTP/1.1 ([`TlsStream::negotiated_h2`]).
    H2OrHttp11,
}

impl Alpn {
    fn offer(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http11 => vec![b"http/1.1".to_vec()],
            Alpn::H2OrHttp11 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// A TLS session taken apart after its handshake, for a protocol that drives rustls itself
/// (`net/h2.rs`): the socket, the session, and ciphertext already read but not yet handed to
/// rustls (a server may send its first frames in the same segment as its last handshake
/// record).
pub(crate) struct TlsParts {
    pub(crate) tcp: TcpStream,
    pub(crate) conn: ClientConnection,
    pub(crate) unread: Vec<u8>,
}

/// Why a TLS session could not be set up.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// Trust settings or the server name: not the peer's fault.
    Setup(String),
    /// The peer failed verification or the TLS exchange (described for a user).
    Tls(String),
    /// The socket failed.
    Io(io::Error),
}

/// The rustls error inside an I/O error made by this module or by rustls's own stream.
pub(crate) fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A TLS failure in words a user can act on, naming the host.
pub(crate) fn describe(host: &str, e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let why = match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => format!(
            "its certificate is not signed by a trusted CA (for a private CA, pass --ca-file or set {})",
            CA_ENV[0]
        ),
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            format!("its certificate is not valid for the name {host:?}")
        }
        rustls::Error::InvalidCertificate(C::Expired)
        | rustls::Error::InvalidCertificate(C::ExpiredContext { .. }) => {
            "its certificate has expired".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet)
        | rustls::Error::InvalidCertificate(C::NotValidYetContext { .. }) => {
            "its certificate is not valid yet (is this machine's clock right?)".into()
        }
        other => other.to_string(),
    };
    format!("TLS with {host} failed: {why}")
}

fn io_tls(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Hands `ciphertext` to the session and decrypts what it completes (the compio side's read
/// step, here and in `h2.rs`): how many bytes it took, and its state after.
pub(crate) fn feed<S: rustls::SideData>(
    session: &mut rustls::ConnectionCommon<S>,
    mut ciphertext: &[u8],
) -> io::Result<(usize, rustls::IoState)> {
    let n = session.read_tls(&mut ciphertext)?;
    let state = session.process_new_packets().map_err(io_tls)?;
    Ok((n, state))
}

/// A blocking socket, plain or with rustls over it: the Hub API client's connections
/// (`C` = `ClientConnection`) and `ferry serve`'s (`ServerConnection`).
pub(crate) enum Wire<C> {
    Plain(std::net::TcpStream),
    Tls(Box<rustls::StreamOwned<C, std::net::TcpStream>>),
}

impl<C> Wire<C> {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &std::net::TcpStream {
        match self {
            Wire::Plain(s) => s,
            Wire::Tls(s) => &s.sock,
        }
    }
}

impl<C, S> Read for Wire<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl<C, S> Write for Wire<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

/// A client TLS session over a compio TCP stream.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    conn: ClientConnection,
    /// Ciphertext read from the socket; `rx[rx_at..]` is not yet handed to rustls.
    rx: Vec<u8>,
    rx_at: usize,
    /// Outgoing ciphertext, reused.
    tx: Vec<u8>,
    /// Decrypted bytes rustls holds for us.
    plain: usize,
    /// The peer sent close_notify, or the socket reached EOF.
    closed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("version", &self.conn.protocol_version())
            .field("plain", &self.plain)
            .finish()
    }
}

impl TlsStream {
    /// Runs the handshake with `host` over `tcp`, offering the protocols of `alpn`.
    pub(crate) async fn connect_alpn(
        client: &TlsClient,
        host: &str,
        tcp: TcpStream,
        alpn: Alpn,
    ) -> Result<TlsStream, HandshakeError> {
        let conn = client
            .session_alpn(host, alpn)
            .map_err(HandshakeError::Setup)?;
        let mut s = TlsStream {
            tcp,
            conn,
            rx: Vec::with_capacity(RX_CHUNK),
            rx_at: 0,
            tx: Vec::new(),
            plain: 0,
            closed: false,
        };
        let fail = |e: io::Error| match tls_error(&e) {
            Some(t) => HandshakeError::Tls(describe(host, t)),
            None => HandshakeError::Io(e),
        };
        while s.conn.is_handshaking() {
            if s.conn.wants_write() {
                s.flush().await.map_err(fail)?;
            } else if s.conn.wants_read() {
                if s.rx_at == s.rx.len() && s.read_tcp().await.map_err(fail)? == 0 {
                    return Err(HandshakeError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    )));
                }
                s.feed().map_err(fail)?;
            } else {
                break;
            }
        }
        s.flush().await.map_err(fail)?;
        log_session(host, &s.conn);
        Ok(s)
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// True when the server chose `h2` from what the handshake offered.
    pub(crate) fn negotiated_h2(&self) -> bool {
        self.conn.alpn_protocol() == Some(b"h2")
    }

    /// The socket, the session and the ciphertext not yet handed to rustls. Plaintext rustls
    /// already decrypted stays in the session, where the new owner reads it first.
    pub(crate) fn into_parts(self) -> TlsParts {
        TlsParts {
            unread: self.rx[self.rx_at..].to_vec(),
            tcp: self.tcp,
            conn: self.conn,
        }
    }

    /// Reads one socket-full of ciphertext into `rx` (which must be consumed).
    async fn read_tcp(&mut self) -> io::Result<usize> {
        let mut rx = std::mem::take(&mut self.rx);
        rx.clear();
        self.rx_at = 0;
        let BufResult(r, slice) = self.tcp.read(rx.slice(0..RX_CHUNK)).await;
        self.rx = slice.into_inner();
        r
    }

    /// Hands buffered ciphertext to rustls and decrypts what it completes.
    fn feed(&mut self) -> io::Result<()> {
        let (n, state) = feed(&mut self.conn, &self.rx[self.rx_at..])?;
        self.rx_at += n;
        self.plain = state.plaintext_bytes_to_read();
        self.closed |= state.peer_has_closed();
        Ok(())
    }

    /// Sends whatever rustls has queued.
    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut tx = std::mem::take(&mut self.tx);
            tx.clear();
            self.conn.write_tls(&mut tx)?;
            let BufResult(r, tx) = self.tcp.write_all(tx).await;
            self.tx = tx;
            r?;
        }
        Ok(())
    }

    /// Reads decrypted bytes into `buf`'s spare room; `Ok(0)` at the end of the stream.
    pub(crate) async fn read<B: IoBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
        loop {
            if self.plain > 0 {
                // Record by record, straight from rustls's plaintext into `buf` (no zeroing
                // of the room first, as `Read::read` into it would need).
                let mut reader = self.conn.reader();
                let mut moved = 0;
                while self.plain > 0 {
                    let record = match reader.fill_buf() {
                        Ok(r) => r,
                        Err(e) if moved == 0 => return BufResult(Err(e), buf),
                        Err(_) => break,
                    };
                    if record.is_empty() {
                        // Not what rustls said it held: ask it again after the next feed.
                        self.plain = 0;
                        break;
                    }
                    let n = append(&mut buf, &record[..record.len().min(self.plain)]);
                    if n == 0 {
                        break;
                    }
                    reader.consume(n);
                    self.plain -= n;
                    moved += n;
                }
                if moved > 0 || self.plain > 0 {
                    // Bytes, or a full `buf` (which reads nothing, as any read into it would).
                    return BufResult(Ok(moved), buf);
                }
            }
            if self.rx_at < self.rx.len() {
                if let Err(e) = self.feed() {
                    return BufResult(Err(e), buf);
                }
                if let Err(e) = self.flush().await {
                    return BufResult(Err(e), buf);
                }
                continue;
            }
            if self.closed {
                return BufResult(Ok(0), buf);
            }
            match self.read_tcp().await {
                // EOF without close_notify: the HTTP framing above says whether the body was
                // complete, so it is reported as an end, not as an attack.
                Ok(0) => self.closed = true,
                Ok(_) => {}
                Err(e) => return BufResult(Err(e), buf),
            }
        }
    }

    /// Encrypts and sends all of `data`.
    pub(crate) async fn write_all(&mut self, data: Vec<u8>) -> BufResult<(), Vec<u8>> {
        let r = match self.conn.writer().write_all(&data) {
            Ok(()) => self.flush().await,
            Err(e) => Err(e),
        };
        BufResult(r, data)
    }
}
