//! A real nginx on a free loopback port, serving one directory, stopped by PID on drop.
//!
//! Locations, all over the same files:
//! - `/files/`    plain static files: ranges, keep-alive, sendfile (the normal origin);
//! - `/norange/`  `max_ranges 0`: answers `Range` with a full 200;
//! - `/chunked/`  a no-op `sub_filter`: no Content-Length, chunked, no ranges;
//! - `/close/`    the same with chunked encoding off: the body ends when nginx closes;
//! - `/redirect/` a 302 to the same path under `/files/`;
//! - `/slow/`     like `/files/`, at most 8 MiB/s per request (`limit_rate`), so that a test
//!   can stop a client in the middle of a transfer;
//! - `/gated/`    like `/files/` for requests with `Authorization: Bearer` [`GATED_TOKEN`];
//!   any other gets the Hub's answer for a gated repo (403, `X-Error-Code: GatedRepo`);
//! - `/limited/`  every request answered 429 (`Retry-After: 0`), as a rate-limited Hub.
//!
//! Started with [`Nginx::start_tls`], the same locations are also served over HTTPS (TLS 1.2
//! and 1.3) on a second port, and `/to-https/` on the plain port redirects to `/files/` there.
//!
//! Every request is logged (connection serial number, request number on that connection,
//! status, body bytes sent, URI, `Range`, whether an `Authorization` came, the TLS version and
//! cipher, the HTTP version), so tests can count requests, connections and bytes, and see where a token went, and
//! the benchmark what each tool negotiated: [`Nginx::requests`].
//!
//! [`Options`] is the one nginx configuration of the repository: the tests' origins and the
//! benchmark's HTTPS origin (TLS 1.3 only, kTLS asked for) are both made from it. Nothing here
//! listens beyond 127.0.0.1, and nothing measures anything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The one token `/gated/` accepts.
pub const GATED_TOKEN: &str = "hf_granted_to_this_test";

/// A running nginx. Dropping it stops the process (SIGTERM, then SIGKILL) and waits for it.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    port: u16,
    tls_port: Option<u16>,
    _dir: tempfile::TempDir,
}

/// How to start nginx. [`Nginx::start`] and its siblings fill it in for the tests; the
/// benchmark's HTTPS origin sets it itself ([`Nginx::try_start`]).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve HTTPS too, on a second port, with this certificate.
    pub tls: Option<crate::tls::ServerCert>,
    /// `ssl_protocols` over HTTPS; `TLSv1.2 TLSv1.3` when `None`.
    pub tls_protocols: Option<String>,
    /// `ssl_conf_command Options KTLS`: let OpenSSL hand the encryption to the kernel (kTLS)
    /// where the kernel offers it, so that sendfile stays in the kernel over HTTPS.
    pub ktls: bool,
    /// HTTP/2 on the HTTPS listener (`listen ... ssl http2`, the spelling nginx 1.22 knows), offered
    /// beside HTTP/1.1 by ALPN.
    pub http2: bool,
    /// TCP Fast Open on the plain listener (`fastopen=64`).
    pub fast_open: bool,
    /// More directives for the `server` block (a `location`).
    pub extra: String,
}

impl Nginx {
    /// Starts nginx serving `root`.
    pub fn start(root: &Path) -> Nginx {
        Nginx::start_options(root, &Options::default())
    }

    /// Starts nginx serving `root` as a reverse proxy too: `/hf/` goes to `upstream` (a
    /// `ferry serve` on 127.0.0.1) with the prefix stripped and `X-Forwarded-Proto`, `-Host`
    /// and `-Prefix` set, as a team that mounts its mirror on a sub-path configures it.
    pub fn start_proxy(root: &Path, upstream: u16) -> Nginx {
        let extra = format!(
            "location /hf/ {{ proxy_pass http://127.0.0.1:{upstream}/; \
             proxy_set_header X-Forwarded-Proto $scheme; \
             proxy_set_header X-Forwarded-Host $http_host; \
             proxy_set_header X-Forwarded-Prefix /hf; }}"
        );
        Nginx::start_options(
            root,
            &Options {
                extra,
                ..Options::default()
            },
        )
    }

    /// Starts nginx serving `root` with TCP Fast Open on its listener (`listen ... fastopen=`),
    /// which the kernel honours when `net.ipv4.tcp_fastopen` enables servers.
    pub fn start_fast_open(root: &Path) -> Nginx {
        Nginx::start_options(
            root,
            &Options {
                fast_open: true,
                ..Options::default()
            },
        )
    }

    /// Starts nginx serving `root` over HTTP and, with `cert`, over HTTPS too.
    pub fn start_tls(root: &Path, cert: &crate::tls::ServerCert) -> Nginx {
        Nginx::start_options(
            root,
            &Options {
                tls: Some(cert.clone()),
                ..Options::default()
            },
        )
    }

    /// [`Nginx::try_start`], panicking with nginx's error log when it does not start.
    pub fn start_options(root: &Path, options: &Options) -> Nginx {
        Nginx::try_start(root, options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts nginx serving `root` as `options` say, on free loopback ports (other ports are
    /// tried when one was taken meanwhile); the error says why it did not start.
    pub fn try_start(root: &Path, options: &Options) -> Result<Nginx, String> {
        let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or("nginx not installed: run scripts/setup.sh")?;
        let dir = tempfile::tempdir().map_err(|e| format!("nginx prefix dir: {e}"))?;
        let root = std::fs::canonicalize(root)
            .map_err(|e| format!("nginx root {}: {e}", root.display()))?;
        // As root, nginx's workers would drop to `nobody` and lose access to a 0700 temp dir.
        let is_root = rustix::process::geteuid().is_root();
        let tls = options.tls.as_ref();
        for _attempt in 0..5 {
            let port = crate::free_port();
            let tls_port = tls.map(|_| crate::free_port());
            let tls_conf = match (tls, tls_port) {
                (Some(c), Some(p)) => format!(
                    "listen 127.0.0.1:{p} ssl{};\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols {};\n        {}location /to-https/ {{ rewrite ^/to-https/(.*)$ https://localhost:{p}/files/$1 redirect; }}",
                    if options.http2 { " http2" } else { "" },
                    c.cert.display(),
                    c.key.display(),
                    options
                        .tls_protocols
                        .as_deref()
                        .unwrap_or("TLSv1.2 TLSv1.3"),
                    if options.ktls {
                        "ssl_conf_command Options KTLS;\n        "
                    } else {
                        ""
                    },
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
    log_format ferry '$connection $connection_requests $status $body_bytes_sent $request_uri "$http_range" "$http_authorization" "$ssl_protocol $ssl_cipher" "$server_protocol"';
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
        location /gated/ {{
            alias {root}/;
            if ($http_authorization != "Bearer {gated}") {{
                add_header X-Error-Code GatedRepo always;
                add_header X-Error-Message "Access to this repo is restricted" always;
                return 403 '{{"error":"Access to model org/model is restricted."}}';
            }}
        }}
        location /limited/ {{
            add_header Retry-After 0 always;
            return 429 '{{"error":"You have been rate-limited"}}';
        }}
        {extra}
    }}
}}
"#,
                user = if is_root { "user root root;" } else { "" },
                fast_open = if options.fast_open {
                    " fastopen=64"
                } else {
                    ""
                },
                extra = options.extra,
                gated = GATED_TOKEN,
                prefix = dir.path().display(),
                root = root.display(),
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).map_err(|e| format!("write nginx.conf: {e}"))?;
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
                .map_err(|e| format!("spawn {}: {e}", nginx.display()))?;
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
                    return Ok(Nginx {
                        child,
                        port,
                        tls_port,
                        _dir: dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        Err(format!("nginx did not start; error.log:\n{log}"))
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
    /// Over HTTPS, the TLS version and cipher negotiated (`TLSv1.3 TLS_AES_256_GCM_SHA384`).
    pub tls: Option<String>,
    /// The HTTP version of the request (`HTTP/1.1`, `HTTP/2.0`).
    pub protocol: String,
}

impl Request {
    fn parse(line: &str) -> Option<Request> {
        let mut it = line.splitn(6, ' ');
        let (connection, nth, status, body_bytes, uri) =
            (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
        // `"RANGE" "AUTHORIZATION" "TLS-VERSION CIPHER" "HTTP-VERSION"`: none contains a quote,
        // and nginx writes `-` for a variable that is empty.
        let mut quoted = it.next()?.split('"').filter(|s| !s.trim().is_empty());
        Some(Request {
            connection: connection.parse().ok()?,
            nth: nth.parse().ok()?,
            status: status.parse().ok()?,
            body_bytes: body_bytes.parse().ok()?,
            uri: uri.to_owned(),
            range: quoted.next()?.to_owned(),
            authorized: quoted.next().is_some_and(|a| a != "-"),
            tls: quoted.next().filter(|t| *t != "- -").map(str::to_owned),
            protocol: quoted.next()?.to_owned(),
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        crate::stop_child(&mut self.child);
    }
}
