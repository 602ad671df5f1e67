//! A throw-away PKI for HTTPS tests, made fresh with rcgen: a CA, and server certificates signed
//! by it (good, expired, or for another name), written as PEM files for nginx, `ferry serve`,
//! ferry's `--ca-file` and Python's `SSL_CERT_FILE`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A server certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// PEM: the certificate.
    pub cert: PathBuf,
    /// PEM: its private key.
    pub key: PathBuf,
}

/// The CA and the certificates it signed, in a temporary folder.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
    /// PEM of the CA certificate: what a client must trust.
    pub ca: PathBuf,
    /// Valid now for `localhost` only (not for `127.0.0.1`, so that a name mismatch can be
    /// tested by URL).
    pub localhost: ServerCert,
    /// For `localhost`, expired in 2021.
    pub expired: ServerCert,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("pki dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ferry test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
            .expect("ca cert");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write ca");
        let localhost = issue(dir.path(), "localhost", &ca, false);
        let expired = issue(dir.path(), "expired", &ca, true);
        TestPki {
            dir,
            ca: ca_path,
            localhost,
            expired,
        }
    }

    /// The folder the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

fn issue(dir: &Path, name: &str, ca: &CertifiedIssuer<'_, KeyPair>, expired: bool) -> ServerCert {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, ca).expect("sign");
    let out = ServerCert {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&out.cert, cert.pem()).expect("write cert");
    std::fs::write(&out.key, key.serialize_pem()).expect("write key");
    out
}
