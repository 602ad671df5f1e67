//! Real proxies from Debian on free loopback ports, for the proxy tests: tinyproxy (HTTP,
//! `CONNECT` tunnels and forwarded requests) and microsocks (SOCKS5), each optionally demanding
//! a user name and password. Both are stopped by their PID when the guard drops, and both keep
//! a log the tests read to prove the traffic went through them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A proxy process, killed and reaped on drop.
#[derive(Debug)]
pub struct RealProxy {
    child: Child,
    port: u16,
    log: PathBuf,
    scheme: &'static str,
    _dir: tempfile::TempDir,
}

fn find(bin: &str) -> PathBuf {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{bin} not installed: run scripts/setup.sh"))
}

impl RealProxy {
    /// tinyproxy, with HTTP Basic credentials when `auth` is given.
    pub fn tinyproxy(auth: Option<(&str, &str)>) -> RealProxy {
        let bin = find("tinyproxy");
        RealProxy::start("http", |dir, port| {
            let log = dir.join("tinyproxy.log");
            let mut conf = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 600\nLogFile \"{}\"\nLogLevel Info\nMaxClients 200\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
                log.display()
            );
            if let Some((u, p)) = auth {
                conf.push_str(&format!("BasicAuth {u} {p}\n"));
            }
            let conf_path = dir.join("tinyproxy.conf");
            std::fs::write(&conf_path, conf).expect("write tinyproxy.conf");
            let mut cmd = Command::new(&bin);
            cmd.arg("-d").arg("-c").arg(conf_path);
            (cmd, log)
        })
    }

    /// microsocks, with SOCKS5 username/password when `auth` is given.
    pub fn microsocks(auth: Option<(&str, &str)>) -> RealProxy {
        let bin = find("microsocks");
        RealProxy::start("socks5h", |dir, port| {
            let mut cmd = Command::new(&bin);
            cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
            if let Some((u, p)) = auth {
                cmd.args(["-u", u, "-P", p]);
            }
            // microsocks logs each tunnel ("connected to HOST:PORT") on stderr.
            (cmd, dir.join("stderr.log"))
        })
    }

    fn start(scheme: &'static str, build: impl Fn(&Path, u16) -> (Command, PathBuf)) -> RealProxy {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("proxy dir");
            let port = crate::free_port();
            let (mut cmd, log) = build(dir.path(), port);
            let stderr_path = dir.path().join("stderr.log");
            let stderr = std::fs::File::create(&stderr_path).expect("stderr");
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn proxy");
            // The guard exists before anything can panic, so the child is always stopped.
            let mut proxy = RealProxy {
                child,
                port,
                log,
                scheme,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = proxy.child.try_wait() {
                    break; // the port was taken: try another
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // A proxy that lost the port to another test's server exits at once: make
                    // sure the one answering is ours.
                    std::thread::sleep(Duration::from_millis(100));
                    if proxy.child.try_wait().is_ok_and(|s| s.is_none()) {
                        return proxy;
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last_log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        }
        panic!("proxy did not start; stderr:\n{last_log}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The proxy's URL (`http://` or `socks5h://`), with `creds` in it when given.
    pub fn url(&self, creds: Option<(&str, &str)>) -> String {
        self.url_as(self.scheme, creds)
    }

    /// The proxy's URL with another scheme (`socks5` for local name resolution).
    pub fn url_as(&self, scheme: &str, creds: Option<(&str, &str)>) -> String {
        let auth = creds.map_or(String::new(), |(u, p)| format!("{u}:{p}@"));
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RealProxy {
    fn drop(&mut self) {
        // Our own unreaped child: the PID cannot name another process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
