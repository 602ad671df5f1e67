//! The `https` suite's origin: the `big` file served by nginx on 127.0.0.1 over HTTPS only
//! (`ssl_protocols TLSv1.3`, sendfile on, kernel TLS asked for with `ssl_conf_command Options
//! KTLS`), with a certificate that `openssl` makes for each run: a throwaway CA and a leaf for
//! `localhost` and `127.0.0.1` signed by it (rustls rejects a CA certificate used as the server's
//! own). Every tool is given that CA explicitly; none runs with verification off.
//!
//! nginx logs the TLS version and cipher of every request, so the report can say what each tool
//! negotiated; whether nginx encrypted in the kernel (kTLS) is read from `/proc/net/tls_stat`.
//! The server is stopped by its PID (SIGTERM to the master, which stops its workers) when
//! dropped, also on an error.
//!
//! The download rounds, the ceilings and the checks are the `big` suite's (`main.rs`); this
//! module only provides the origin and these facts about it. It measures nothing itself.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_testkit::{sha256_file, write_data};

use crate::report::Target;
use crate::{Item, LeftOut, Tool, peers, sh, tools, without_proxies};

/// The host name in every URL: the name the certificate is for (also valid for 127.0.0.1).
const HOST: &str = "localhost";

/// The throwaway CA and the server's certificate, as PEM files.
pub(crate) struct Pki {
    /// What every client trusts.
    pub(crate) ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    /// Makes a fresh CA (P-256, valid 2 days) and a leaf signed by it, in `dir`.
    pub(crate) fn create(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let (ca, ca_key, key, csr, ext, cert) = (
            p("ca.pem"),
            p("ca.key"),
            p("localhost.key"),
            p("localhost.csr"),
            p("localhost.ext"),
            p("localhost.pem"),
        );
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )?;
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        sh(&format!(
            "openssl req -x509 -new {ec} -keyout '{ca_key}' -out '{ca}' -days 2 \
             -subj '/CN=ferry-bench throwaway CA' \
             -addext 'basicConstraints=critical,CA:TRUE' \
             -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>&1 && \
             openssl req -new {ec} -keyout '{key}' -out '{csr}' -subj '/CN=localhost' 2>&1 && \
             openssl x509 -req -in '{csr}' -CA '{ca}' -CAkey '{ca_key}' -CAcreateserial \
             -days 2 -sha256 -extfile '{ext}' -out '{cert}' 2>&1 && \
             openssl verify -CAfile '{ca}' '{cert}'"
        ))
        .context("make the throwaway CA and certificate with openssl")?;
        Ok(Pki {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        })
    }
}

/// nginx serving one directory over HTTPS only, as `/files/`.
pub(crate) struct TlsNginx {
    child: Child,
    port: u16,
    prefix: PathBuf,
}

impl TlsNginx {
    /// Starts nginx on a free port of 127.0.0.1, its files (config, logs) under `prefix`.
    pub(crate) fn start(root: &Path, pki: &Pki, prefix: &Path) -> anyhow::Result<TlsNginx> {
        let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("nginx not installed: run scripts/setup.sh")?;
        std::fs::create_dir_all(prefix)?;
        let root = std::fs::canonicalize(root)?;
        let dir = prefix.display();
        // As root, nginx's workers would drop to `nobody` and lose access to the scratch dir.
        let user = if sh("id -u")?.trim() == "0" {
            "user root root;"
        } else {
            ""
        };
        for _attempt in 0..5 {
            let port = ferry_testkit::free_port();
            let _ = std::fs::remove_file(prefix.join("nginx.pid"));
            let conf = format!(
                r#"{user}
worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format tls '$status $body_bytes_sent $ssl_protocol $ssl_cipher';
    access_log {dir}/access.log tls;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_conf_command Options KTLS;
        location /files/ {{ alias {root}/; }}
    }}
}}
"#,
                cert = pki.cert.display(),
                key = pki.key.display(),
                root = root.display(),
            );
            let conf_path = prefix.join("nginx.conf");
            std::fs::write(&conf_path, conf)?;
            let child = Command::new(nginx)
                .arg("-p")
                .arg(prefix)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(prefix.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start nginx")?;
            // The guard exists before anything can fail, so the server is always stopped.
            let mut server = TlsNginx {
                child,
                port,
                prefix: prefix.to_owned(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // exited: port taken or bad config; retry with another port
                }
                // The pid file is written once every socket is bound: a port that answers
                // before it may be another server's.
                if prefix.join("nginx.pid").exists()
                    && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    eprintln!(
                        "https: nginx (pid {}) at https://{HOST}:{port}/",
                        server.child.id()
                    );
                    return Ok(server);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!(
            "nginx did not start over HTTPS; error.log:\n{}",
            std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        )
    }

    /// `https://localhost:PORT/files`.
    pub(crate) fn base(&self) -> String {
        format!("https://{HOST}:{}/files", self.port)
    }

    fn access_log(&self) -> PathBuf {
        self.prefix.join("access.log")
    }

    /// How far the access log goes now: give it to [`TlsNginx::tls_since`] after a run.
    pub(crate) fn log_len(&self) -> u64 {
        std::fs::metadata(self.access_log()).map_or(0, |m| m.len())
    }

    /// The TLS versions and ciphers of the requests logged after `offset`, each once, e.g.
    /// `TLSv1.3 TLS_AES_256_GCM_SHA384`; none when no request was logged.
    pub(crate) fn tls_since(&self, offset: u64) -> Option<String> {
        let mut text = String::new();
        let mut f = std::fs::File::open(self.access_log()).ok()?;
        f.seek(SeekFrom::Start(offset)).ok()?;
        f.read_to_string(&mut text).ok()?;
        let mut seen: Vec<String> = Vec::new();
        for line in text.lines() {
            // `STATUS BYTES PROTOCOL CIPHER`
            let tls = line
                .split_whitespace()
                .skip(2)
                .collect::<Vec<_>>()
                .join(" ");
            if !tls.is_empty() && !seen.contains(&tls) {
                seen.push(tls);
            }
        }
        (!seen.is_empty()).then(|| seen.join(", "))
    }
}

impl Drop for TlsNginx {
    fn drop(&mut self) {
        // An exited master is reaped here, and its PID is then no longer ours to signal.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM to our own master (not yet reaped, so the PID is still ours): it stops its
        // workers and exits. SIGKILL only if it has not within 5 s.
        let _ = sh(&format!("kill -TERM {}", self.child.id()));
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

/// Known causes of a peer's failure over HTTPS, by what it printed: (tool, message, cause).
const KNOWN: [(&str, &str, &str); 1] = [(
    "axel",
    "Hostname verification failed",
    "axel's own name check (its dn_match, axel 2.17) takes a one-label DNS name such as \
     `localhost` for malformed and checks no IP address names, so no certificate for this \
     origin passes it",
)];

/// Runs every tool once, untimed, on a small file from the same origin (`base`, trusting `ca`),
/// before the suite's rounds: a peer that cannot verify the origin (or fails otherwise) is left
/// out with what it printed, instead of ever being run with verification off. ferry must pass.
pub(crate) fn probe(
    all: Vec<Tool>,
    root: &Path,
    base: &str,
    ca: &Path,
    scratch: &Path,
) -> anyhow::Result<(Vec<Tool>, Vec<LeftOut>)> {
    let name = "probe.bin";
    let source = root.join(name);
    write_data(&source, 1 << 20, 999);
    let item = Item {
        name: name.into(),
        sha256: sha256_file(&source),
    };
    // The same commands, for the small file.
    let (small, _) = tools(
        "https",
        std::slice::from_ref(&item),
        base,
        scratch,
        Some(ca),
    )?;
    let out = scratch.join("out-probe");
    let (mut usable, mut left_out) = (Vec::new(), Vec::new());
    for tool in all {
        let line = small
            .iter()
            .find(|t| t.name == tool.name)
            .with_context(|| format!("no probe command for {}", tool.name))?
            .shell
            .replace("{OUT}", &out.to_string_lossy());
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &line]);
        without_proxies(&mut cmd);
        let run = cmd.output().with_context(|| format!("run {line}"))?;
        let got = out.join(name);
        let why = if !run.status.success() {
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&run.stderr),
                String::from_utf8_lossy(&run.stdout)
            );
            let cause = KNOWN
                .iter()
                .find(|(t, msg, _)| *t == tool.name && said.contains(msg))
                .map(|(_, _, cause)| format!(" ({cause})"))
                .unwrap_or_default();
            let said: Vec<&str> = said
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            Some(format!(
                "it fails to fetch over HTTPS while trusting the CA ({}): {}{cause}",
                run.status,
                said.join(" / ")
            ))
        } else if !got.is_file() || sha256_file(&got) != item.sha256 {
            Some("its output differs from the source".to_owned())
        } else {
            None
        };
        match why {
            None => usable.push(tool),
            Some(why) if tool.name.starts_with("ferry") => {
                bail!(
                    "https: {} cannot fetch from the origin: {why}\n{line}",
                    tool.name
                )
            }
            Some(reason) => {
                eprintln!("https: leaving out {}: {reason}", tool.name);
                left_out.push(LeftOut {
                    tool: tool.name,
                    reason,
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&source);
    Ok((usable, left_out))
}

/// The suite's goal: ferry (durable, verified) at most 0.4x the wall time of the best peer.
pub(crate) fn target(tools: &[Tool]) -> Target {
    let peers = peers(tools);
    Target {
        text: format!(
            "the `big` file over HTTPS (TLS 1.3, nginx on loopback): `ferry` (durable, verified) \
             takes at most 0.4x the wall time of the best peer over HTTPS (the fastest median of \
             {})",
            peers.join(", ")
        ),
        tool: "the best peer".into(),
        best_of: peers,
        max_ratio: Some(0.4),
        ..Target::default()
    }
}

/// TLS send sessions the kernel has encrypted for so far (`TlsTxSw` + `TlsTxDevice` of
/// `/proc/net/tls_stat`); none where the kernel offers no kernel TLS.
pub(crate) fn ktls_sent() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/tls_stat").ok()?;
    Some(
        stat.lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(name, _)| matches!(*name, "TlsTxSw" | "TlsTxDevice"))
            .filter_map(|(_, n)| n.trim().parse::<u64>().ok())
            .sum(),
    )
}

/// Whether nginx sent with kernel TLS between two [`ktls_sent`] readings, in words.
pub(crate) fn ktls_note(before: Option<u64>, after: Option<u64>) -> String {
    match (before, after) {
        (Some(b), Some(a)) if a > b => format!(
            "nginx encrypted in the kernel (kTLS: {} TLS send sessions opened in the network \
             ceiling's transfers), so sendfile stayed in the kernel",
            a - b
        ),
        (Some(_), Some(_)) => "nginx encrypted in user space: the kernel offers kTLS, but \
                               nginx's OpenSSL did not use it"
            .into(),
        _ => "nginx encrypted in user space: this kernel offers no kernel TLS (no \
              /proc/net/tls_stat), so `ssl_conf_command Options KTLS` had no effect and sendfile \
              was not used for the bodies"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ktls_note_says_which_side_encrypted() {
        assert!(ktls_note(None, None).contains("no kernel TLS"));
        assert!(ktls_note(Some(3), Some(3)).contains("did not use it"));
        assert!(ktls_note(Some(3), Some(5)).contains("2 TLS send sessions"));
    }
}
