//! A stingy HTTP/2 client for the tests of `ferry serve --http2`: hyperium's `h2` over
//! `tokio-rustls` (ALPN `h2` only), whose receive window is a few bytes it never opens again,
//! as a client that stops reading would. It says what the server did about it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What became of a stingy request.
#[derive(Debug, Clone, Default)]
pub struct Stingy {
    /// The answer's status.
    pub status: u16,
    /// Body bytes received (at most the window).
    pub got: usize,
    /// How the stream ended: the server's RST_STREAM reason (`CANCEL`), or `None` when the
    /// wait ran out first.
    pub reset: Option<String>,
    /// Whether the server then closed the idle connection (GOAWAY, then the end of it) within
    /// the wait.
    pub closed: bool,
}

/// An HTTP/2 connection to the HTTPS server at `addr` (certificate for `localhost`, signed by
/// the CA in `ca`), announcing a receive window of `window` bytes.
async fn connect(
    addr: SocketAddr,
    ca: &Path,
    window: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, bytes::Bytes>,
) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add ca");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS");
    h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window.max(65_535))
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .expect("h2 handshake")
}

/// POSTs to `path` of the server at `addr` a head that announces a body, and never sends the
/// body; says how the server ended the stream (its RST_STREAM reason), waiting at most `wait`.
pub fn unfinished_post(addr: SocketAddr, ca: &Path, path: &str, wait: Duration) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (send, conn) = connect(addr, ca, 65_535).await;
        let _conn = tokio::spawn(conn);
        let req = http::Request::post(format!("https://localhost:{}{path}", addr.port()))
            .header("content-type", "application/json")
            .body(())
            .expect("request");
        let mut send = send.ready().await.expect("ready");
        // No END_STREAM, and no DATA ever: the body never comes.
        let (answer, _body) = send.send_request(req, false).expect("send");
        match tokio::time::timeout(wait, answer).await {
            Ok(Err(e)) => e.reason().map(|r| format!("{r:?}")),
            Ok(Ok(answer)) => Some(format!("answered {}", answer.status())),
            Err(_) => None,
        }
    })
}

/// GETs `path` from the HTTPS server at `addr` (certificate for `localhost`, signed by the CA
/// in `ca`) with a receive window of `window` bytes, never opened further; waits at most
/// `wait` for the server to give up on the stream, then as long again for it to close the
/// connection.
pub fn stingy_get(addr: SocketAddr, ca: &Path, path: &str, window: u32, wait: Duration) -> Stingy {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (send, conn) = connect(addr, ca, window).await;
        let mut conn = tokio::spawn(conn);
        let mut out = Stingy::default();
        let req = http::Request::get(format!("https://localhost:{}{path}", addr.port()))
            .body(())
            .expect("request");
        let mut send = send.ready().await.expect("ready");
        let (answer, _) = send.send_request(req, true).expect("send");
        let answer = tokio::time::timeout(wait, answer)
            .await
            .expect("an answer in time")
            .expect("answer");
        out.status = answer.status().as_u16();
        let mut body = answer.into_body();
        let read = async {
            while let Some(data) = body.data().await {
                match data {
                    // Never released: the window stays shut.
                    Ok(d) => out.got += d.len(),
                    Err(e) => return e.reason().map(|r| format!("{r:?}")),
                }
            }
            None
        };
        out.reset = tokio::time::timeout(wait, read).await.ok().flatten();
        drop(body);
        // `send` lives on: the connection ends only if the server ends it.
        out.closed = tokio::time::timeout(wait, &mut conn).await.is_ok();
        drop(send);
        out
    })
}
