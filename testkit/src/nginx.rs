//! A real nginx on a free loopback port, serving one directory, stopped by PID on drop.
//!
//! Locations, all over the same files:
//! - `/files/`    plain static files: ranges, keep-alive, sendfile (the normal origin);
//! - `/norange/`  `max_ranges 0`: answers `Range` with a full 200;
//! - `/chunked/`  a no-op `sub_filter`: no Content-Length, chunked, no ranges;
//! - `/close/`    the same with chunked encoding off: the body ends when nginx closes;
//! - `/redirect/` a 302 to the same path under `/files/`;
//! - `/slow/`     like `/files/`, at most 8 MiB/s per request (`limit_rate`), so that a test
//!   can stop a client in the middle of a transfer.
//!
//! Started with [`Nginx::start_tls`], the same locations are also served over HTTPS (TLS 1.2
//! and 1.3) on a second port, and `/to-https/` on the plain port redirects to `/files/` there.
//!
//! Every request is logged (connection serial number, request number on that connection,
//! status, body bytes sent, URI, `Range`, whether an `Authorization` came), so tests can count
//! requests, connections and bytes, and see where a token went: [`Nginx::requests`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx. Dropping it stops the process (SIGTERM, then SIGKILL) and waits for it.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    port: u16,
    tls_port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx serving `root`.
    pub fn start(root: &Path) -> Nginx {
        Nginx::start_with(root, None, false, "")
    }

    /// Starts nginx serving `root` as a reverse proxy too: `/hf/` goes to `upstream` (a
    /// `ferry serve` on 127.0.0.1) with the prefix stripped and `X-Forwarded-Proto`, `-Host`
    /// and `-Prefix` set, as a team that mounts its mirror on a sub-path configures it.
    pub fn start_proxy(root: &Path, upstream: u16) -> Nginx {
        let location = format!(
            "location /hf/ {{ proxy_pass http://127.0.0.1:{upstream}/; \
             proxy_set_header X-Forwarded-Proto $scheme; \
             proxy_set_header X-Forwarded-Host $http_host; \
             proxy_set_header X-Forwarded-Prefix /hf; }}"
        );
        Nginx::start_with(root, None, false, &location)
    }

    /// Starts nginx serving `root` with TCP Fast Open on its listener (`listen ... fastopen=`),
    /// which the kernel honours when `net.ipv4.tcp_fastopen` enables servers.
    pub fn start_fast_open(root: &Path) -> Nginx {
        Nginx::start_with(root, None, true, "")
    }

    /// Starts nginx serving `root` over HTTP and, with `cert`, over HTTPS too.
    pub fn start_tls(root: &Path, cert: &crate::tls::ServerCert) -> Nginx {
        Nginx::start_with(root, Some(cert), false, "")
    }

    fn start_with(
        root: &Path,
        tls: Option<&crate::tls::ServerCert>,
        fast_open: bool,
        extra: &str,
    ) -> Nginx {
        let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("nginx not installed: run scripts/setup.sh");
        let dir = tempfile::tempdir().expect("nginx prefix dir");
        let root = std::fs::canonicalize(root).expect("root");
        // As root, nginx's workers would drop to `nobody` and lose access to a 0700 temp dir.
        let is_root = rustix::process::geteuid().is_root();
        for _attempt in 0..5 {
            let port = crate::free_port();
            let tls_port = tls.map(|_| crate::free_port());
            let tls_conf = match (tls, tls_port) {
                (Some(c), Some(p)) => format!(
                    "listen 127.0.0.1:{p} ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;\n        location /to-https/ {{ rewrite ^/to-https/(.*)$ https://localhost:{p}/files/$1 redirect; }}",
                    c.cert.display(),
                    c.key.display()
                ),
                _ => String::new(),
            };
            let conf = format!(
                r#"{user}
worker_processes 2;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format ferry '$connection $connection_requests $status $body_bytes_sent $request_uri "$http_range" "$http_authorization"';
    access_log {prefix}/access.log ferry;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port}{fast_open};
        {tls_conf}
        location /files/ {{ alias {root}/; }}
        location /norange/ {{ alias {root}/; max_ranges 0; }}
        location /chunked/ {{ alias {root}/; sub_filter_types *; sub_filter 'ferry-never-matches-this' ''; }}
        location /close/ {{ alias {root}/; sub_filter_types *; sub_filter 'ferry-never-matches-this' ''; chunked_transfer_encoding off; }}
        location /redirect/ {{ rewrite ^/redirect/(.*)$ /files/$1 redirect; }}
        location /slow/ {{ alias {root}/; limit_rate 8m; }}
        {extra}
    }}
}}
"#,
                user = if is_root { "user root root;" } else { "" },
                fast_open = if fast_open { " fastopen=64" } else { "" },
                prefix = dir.path().display(),
                root = root.display(),
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut child = Command::new(&nginx)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port taken or bad config; retry with another port
                }
                let up = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
                // The pid file is written only once every listening socket is bound: without
                // it, a port that answers may belong to another test's server (ours failed to
                // bind it and is exiting), which serves other files and other certificates.
                let ours = dir.path().join("nginx.pid").exists();
                if ours && up(port) && tls_port.is_none_or(up) {
                    return Nginx {
                        child,
                        port,
                        tls_port,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        panic!("nginx did not start; error.log:\n{log}");
    }

    /// The requests logged so far, waiting (up to 10 s) until there are at least `at_least`:
    /// nginx logs a request just after its last byte is sent.
    pub fn requests(&self, at_least: usize) -> Vec<Request> {
        let path = self._dir.path().join("access.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let reqs: Vec<Request> = log.lines().filter_map(Request::parse).collect();
            if reqs.len() >= at_least || Instant::now() > deadline {
                return reqs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port nginx listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/files/NAME` (or another location given as `loc`).
    pub fn url(&self, loc: &str, name: &str) -> String {
        format!("http://127.0.0.1:{}/{loc}/{name}", self.port)
    }

    /// The HTTPS port (started with [`Nginx::start_tls`]).
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("nginx was started without TLS")
    }

    /// `https://HOST:TLS_PORT/LOC/NAME`; the test certificates are valid for `localhost` only.
    pub fn https_url(&self, host: &str, loc: &str, name: &str) -> String {
        format!("https://{host}:{}/{loc}/{name}", self.tls_port())
    }
}

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// nginx's serial number of the connection it came on.
    pub connection: u64,
    /// Its number on that connection (1 for the first).
    pub nth: u64,
    /// The status answered.
    pub status: u16,
    /// Body bytes sent (for a client that went away mid-body: what was sent until then).
    pub body_bytes: u64,
    /// The request URI.
    pub uri: String,
    /// The `Range` header, `-` when there was none.
    pub range: String,
    /// True when the request carried an `Authorization` header.
    pub authorized: bool,
}

impl Request {
    fn parse(line: &str) -> Option<Request> {
        let mut it = line.splitn(6, ' ');
        let (connection, nth, status, body_bytes, uri) =
            (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
        // `"RANGE" "AUTHORIZATION"`: neither contains a quote.
        let mut quoted = it.next()?.split('"').filter(|s| !s.trim().is_empty());
        Some(Request {
            connection: connection.parse().ok()?,
            nth: nth.parse().ok()?,
            status: status.parse().ok()?,
            body_bytes: body_bytes.parse().ok()?,
            uri: uri.to_owned(),
            range: quoted.next()?.to_owned(),
            authorized: quoted.next().is_some_and(|a| a != "-"),
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Our own child, not yet reaped (we hold `Child`), so the PID cannot name another process.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
