//! HTTPS for `ferry serve`: the certificate chain and private key, loaded once into a rustls
//! server config (TLS 1.2 and 1.3, ALPN `http/1.1`), and the server side of one connection.
//!
//! Encryption is rustls in user space, so file bodies are read and encrypted instead of going
//! out with sendfile(2). kTLS (sendfile with encryption in the kernel) is not done here yet.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ServeError;

/// A server certificate chain and its key, ready to serve HTTPS. Cheap to clone.
///
/// ```no_run
/// # fn main() -> Result<(), ferry::serve::ServeError> {
/// use ferry::serve::{ServeOptions, TlsIdentity};
/// let mut options = ServeOptions::default();
/// options.tls = Some(TlsIdentity::from_pem_files(
///     "/etc/ferry/cert.pem".as_ref(),
///     "/etc/ferry/key.pem".as_ref(),
/// )?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsIdentity {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity { .. }")
    }
}

impl TlsIdentity {
    /// Loads a PEM certificate chain (the server's certificate first) and its PEM private key
    /// (PKCS#8, PKCS#1 or SEC1), and checks that they belong together.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsIdentity, ServeError> {
        let bad = |path: &Path, why: String| ServeError::Tls {
            detail: format!("{}: {why}", path.display()),
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(bad(cert, "no PEM certificate in it".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(crate::net::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| bad(key, format!("does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsIdentity {
            config: Arc::new(config),
        })
    }

    /// The same identity offering HTTP/2 first (ALPN `h2`, then `http/1.1`): a client that
    /// offers `h2` gets it (`serve/h2.rs`), the others HTTP/1.1 as before.
    pub fn with_http2(self) -> TlsIdentity {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsIdentity {
            config: Arc::new(config),
        }
    }

    /// The rustls server configuration (QUIC takes it with its own ALPN, `serve/h3.rs`).
    pub(crate) fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// A server session for one connection.
    pub(crate) fn session(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        rustls::ServerConnection::new(Arc::clone(&self.config))
    }
}
