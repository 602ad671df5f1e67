//! A real Caddy (Debian's `caddy`) serving a folder over HTTPS with its own internal CA
//! (`tls internal`), speaking HTTP/1.1 and HTTP/2 (and HTTP/3 on UDP) as it does by default,
//! with a JSON access log that names each request's protocol. For the interoperability tests
//! of ferry's HTTP/2 client against a server ferry did not write.
//!
//! Caddy runs in a temporary folder of its own (storage, CA, log, config), its admin endpoint
//! off, on free loopback ports only, and is stopped by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Caddy. Dropping it stops the process (SIGTERM, then SIGKILL) and waits for it.
#[derive(Debug)]
pub struct Caddy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// One request of Caddy's access log.
#[derive(Debug, Clone)]
pub struct CaddyRequest {
    /// `HTTP/1.1`, `HTTP/2.0`, `HTTP/3.0`.
    pub proto: String,
    pub uri: String,
    pub status: u64,
    /// The `Range` header, when sent.
    pub range: Option<String>,
}

impl Caddy {
    /// Serves `root` at `https://localhost:PORT/`.
    pub fn start(root: &Path) -> Caddy {
        let caddy = ["/usr/bin/caddy", "/usr/local/bin/caddy"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("caddy not installed: run scripts/setup.sh");
        let dir = tempfile::tempdir().expect("caddy dir");
        let root = std::fs::canonicalize(root).expect("caddy root");
        let port = crate::free_port();
        let http_port = crate::free_port();
        let config = format!(
            "{{\n  admin off\n  http_port {http_port}\n  https_port {port}\n  \
             storage file_system {storage}\n  skip_install_trust\n  \
             auto_https disable_redirects\n}}\n\
             https://localhost:{port} {{\n  tls internal\n  bind 127.0.0.1\n  \
             root * {root}\n  file_server\n  \
             log {{\n    output file {log}\n    format json\n  }}\n}}\n",
            storage = dir.path().join("data").display(),
            root = root.display(),
            log = dir.path().join("access.log").display(),
        );
        let file = dir.path().join("Caddyfile");
        std::fs::write(&file, config).expect("write Caddyfile");
        let stderr = std::fs::File::create(dir.path().join("caddy.err")).expect("caddy.err");
        let child = Command::new(caddy)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&file)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("xdg-data"))
            .env("XDG_CONFIG_HOME", dir.path().join("xdg-config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start caddy");
        let caddy = Caddy { child, port, dir };
        caddy.wait_ready();
        caddy
    }

    /// Until the port accepts and the internal CA's root is on disk.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // HTTP/3 listens on the same port over UDP, opened a moment after TCP's.
            let up = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && crate::udp_bound(self.port);
            if up && self.ca().exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let err = std::fs::read_to_string(self.dir.path().join("caddy.err")).unwrap_or_default();
        panic!("caddy did not start on port {}: {err}", self.port);
    }

    /// The root certificate of Caddy's internal CA, which signed the server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("data/pki/authorities/local/root.crt")
    }

    /// `https://localhost:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("https://localhost:{}/{name}", self.port)
    }

    /// The requests of the access log so far.
    pub fn requests(&self) -> Vec<CaddyRequest> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                let req = &v["request"];
                CaddyRequest {
                    proto: req["proto"].as_str().unwrap_or("").to_owned(),
                    uri: req["uri"].as_str().unwrap_or("").to_owned(),
                    status: v["status"].as_u64().unwrap_or(0),
                    range: req["headers"]["Range"][0].as_str().map(str::to_owned),
                }
            })
            .collect()
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        crate::stop_child(&mut self.child);
    }
}
