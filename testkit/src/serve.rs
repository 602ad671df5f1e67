//! `ferry serve` as a child process for the tests and the benchmark's `pull` suite: started on
//! a free loopback port (read from its first stdout line), killed by its PID when the guard
//! drops, also when a test fails. It checks only that the server started where it should; what
//! it serves is for the caller to check.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `ferry serve`.
#[derive(Debug)]
pub struct Serve {
    child: Child,
    /// The port it listens on.
    pub port: u16,
    /// `https` when started with a certificate (valid for `localhost`).
    pub scheme: &'static str,
}

impl Serve {
    /// Serves `root` (tree pages of `page_size` entries when given).
    pub fn start(root: &Path, page_size: Option<usize>) -> Serve {
        Serve::start_with(root, page_size, None, &[])
    }

    /// Over HTTPS, with tree pages of 3 entries so that clients follow `https://` `Link`s.
    pub fn start_tls(root: &Path, cert: &crate::tls::ServerCert) -> Serve {
        Serve::start_with(root, Some(3), Some(cert), &[])
    }

    /// [`Serve::try_start`] with ferry's log on this process's stderr; panics when it does not
    /// start.
    pub fn start_with(
        root: &Path,
        page_size: Option<usize>,
        tls: Option<&crate::tls::ServerCert>,
        extra: &[&str],
    ) -> Serve {
        Serve::try_start(root, page_size, tls, extra, Stdio::inherit())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ferry serve --root ROOT --addr 127.0.0.1:0 EXTRA...`, with tree pages of `page_size`
    /// entries when given, over HTTPS with `tls`, its log to `stderr`; the error says why it
    /// did not start (its first line, its exit status).
    pub fn try_start(
        root: &Path,
        page_size: Option<usize>,
        tls: Option<&crate::tls::ServerCert>,
        extra: &[&str],
        stderr: Stdio,
    ) -> Result<Serve, String> {
        Serve::try_start_env(root, page_size, tls, (extra, &[]), stderr)
    }

    /// [`Serve::try_start`] with `env` (name, value) set for the child besides `extra` args.
    pub fn try_start_env(
        root: &Path,
        page_size: Option<usize>,
        tls: Option<&crate::tls::ServerCert>,
        (extra, env): (&[&str], &[(&str, &std::ffi::OsStr)]),
        stderr: Stdio,
    ) -> Result<Serve, String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut cmd = Command::new(crate::ferry_bin());
        cmd.args(["serve", "--root"])
            .arg(root)
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .env_remove("FERRY_SERVE_PAGE_SIZE")
            .env_remove("FERRY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .envs(env.iter().copied());
        if let Some(n) = page_size {
            cmd.env("FERRY_SERVE_PAGE_SIZE", n.to_string());
        }
        if let Some(c) = tls {
            cmd.arg("--tls-cert")
                .arg(&c.cert)
                .arg("--tls-key")
                .arg(&c.key);
        }
        let mut child = cmd.spawn().map_err(|e| format!("start ferry serve: {e}"))?;
        let stdout = child.stdout.take().ok_or("ferry serve: no stdout")?;
        // The guard exists before anything can fail, so the child is always killed.
        let mut serve = Serve {
            child,
            port: 0,
            scheme,
        };
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        lines
            .read_line(&mut first)
            .map_err(|e| format!("read ferry serve's stdout: {e}"))?;
        let status = serve
            .child
            .try_wait()
            .map_err(|e| format!("try_wait: {e}"))?;
        let prefix = format!("ferry serve: listening on {scheme}://127.0.0.1:");
        if !first.starts_with(&prefix) {
            return Err(format!("first line {first:?} (exit status {status:?})"));
        }
        serve.port = first
            .split("://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no port in {first:?}"))?;
        let root = root
            .canonicalize()
            .map_err(|e| format!("root {}: {e}", root.display()))?;
        if !first.contains(&format!("(root {}", root.display())) {
            return Err(format!("another root: {first}"));
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while lines.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        eprintln!(
            "started ferry serve (pid {}) on port {}",
            serve.child.id(),
            serve.port
        );
        Ok(serve)
    }

    /// The Hub endpoint: `http://127.0.0.1:PORT`, or over HTTPS `https://localhost:PORT`.
    pub fn endpoint(&self) -> String {
        match self.scheme {
            "https" => format!("https://localhost:{}", self.port),
            _ => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A GET of `target` on a new connection (closed after the answer): status, the head's
    /// lines (lower-cased names) and the body.
    pub fn get(&self, target: &str) -> (u16, String, Vec<u8>) {
        get_on(self.port, target, "")
    }

    /// [`Serve::get`] with `Range: RANGE`; a body cut short is returned as far as it came.
    pub fn get_range(&self, target: &str, range: &str) -> (u16, String, Vec<u8>) {
        get_on(self.port, target, &format!("Range: {range}\r\n"))
    }

    /// A new connection to the server (30 s read timeout).
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s
    }
}

/// A GET of `target` from the server on `port` on a new connection (60 s read timeout), with
/// the header lines `headers` (each ending in CRLF): status, the head's lines (lower-cased)
/// and the body as far as it came (a server that cuts it short is what some tests check).
pub fn get_on(port: u16, target: &str, headers: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head, all[split + 4..].to_vec())
}

impl Drop for Serve {
    fn drop(&mut self) {
        // `Child::kill` signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd`, a `ferry serve` command line prepared by the caller (run in a network
/// namespace, say), with its stdout piped here, and waits for its first line: the process
/// (killed by its PID when dropped) and the URL that line names.
pub fn spawn_listening(mut cmd: Command) -> Result<(crate::KillOnDrop, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ferry serve: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let guard = crate::KillOnDrop(child);
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .map_err(|e| format!("ferry serve's first line: {e}"))?;
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .ok_or_else(|| format!("ferry serve did not start: {first:?}"))?
        .trim_end_matches('/')
        .to_owned();
    Ok((guard, url))
}
