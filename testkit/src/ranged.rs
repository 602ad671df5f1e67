//! What the hostile origins (`h2origin.rs`, `h3origin.rs`) share: their files read into
//! memory, their TLS configuration, which requests a fault hits, and the answer to a GET of a
//! file with the byte-level faults applied: a `Range` honoured (206 with its `Content-Range`)
//! or not asked (200), a `Content-Range` shifted one byte, a byte too many, no
//! `Content-Length` and a byte short.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

/// Each file of `root` (not its subdirectories), by its path `/NAME`.
pub(crate) fn load_files(root: &Path) -> HashMap<String, Bytes> {
    let mut files = HashMap::new();
    for entry in std::fs::read_dir(root).expect("read root") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).expect("read file");
            files.insert(format!("/{name}"), Bytes::from(bytes));
        }
    }
    files
}

/// A rustls server configuration with `cert`, offering `alpn` only.
pub(crate) fn server_tls(cert: &crate::tls::ServerCert, alpn: &[u8]) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&cert.key).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// Whether request `n` (from 1) gets a fault that comes every `every` requests.
pub(crate) fn hits(n: usize, every: usize) -> bool {
    every > 0 && n.is_multiple_of(every)
}

/// Which byte-level faults an answer gets.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Twists {
    /// The `Content-Range` starts one byte later than the bytes sent.
    pub wrong_range: bool,
    /// One byte more than `Content-Length` says.
    pub too_many: bool,
    /// No `Content-Length` at all.
    pub no_length: bool,
    /// With `no_length`: the body a byte short.
    pub short: bool,
}

/// An answer's head and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub head: http::Response<()>,
    pub body: Bytes,
}

/// The answer to a GET of `file` with the `Range` header `range`, twisted as `twists` says.
pub(crate) fn answer(file: &Bytes, range: Option<&str>, twists: Twists) -> Answer {
    let size = file.len() as u64;
    let range = range
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some(a.parse::<u64>().ok()?..b.parse::<u64>().ok()? + 1))
        .map(|r| r.start.min(size)..r.end.min(size));
    let mut fields = Vec::new();
    let (status, mut body) = match range {
        Some(r) if r.start < r.end => {
            let shown = if twists.wrong_range {
                r.start + 1..r.end
            } else {
                r.clone()
            };
            fields.push((
                "content-range",
                format!("bytes {}-{}/{size}", shown.start, shown.end - 1),
            ));
            (206, file.slice(r.start as usize..r.end as usize))
        }
        _ => (200, file.clone()),
    };
    if twists.no_length {
        if twists.short && body.len() > 1 {
            body = body.slice(..body.len() - 1);
        }
    } else {
        fields.push(("content-length", body.len().to_string()));
    }
    if twists.too_many {
        let mut more = body.to_vec();
        more.push(0xA5);
        body = Bytes::from(more);
    }
    let mut head = http::Response::builder().status(status);
    for (name, value) in fields {
        head = head.header(name, value);
    }
    Answer {
        head: head.body(()).expect("head"),
        body,
    }
}
