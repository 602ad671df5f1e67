//! What Happy Eyeballs is tested against: a name that resolves to both `::1` and `127.0.0.1`
//! (a private `/etc/hosts`, bind-mounted in a mount namespace of ferry's own, so the machine's
//! file is never touched), and an address that does not answer at all.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Output};

/// A listening socket that never answers a connection attempt: its accept queue (backlog 0)
/// is full with one connection nobody accepts, so the kernel drops every later SYN, as a
/// firewall that drops packets does.
#[derive(Debug)]
pub struct Blackhole {
    _listener: OwnedFd,
    _filler: TcpStream,
    addr: SocketAddr,
}

impl Blackhole {
    /// Binds `addr` (port 0: any free one), listens with a backlog of 0 and fills the queue.
    pub fn bind(addr: SocketAddr) -> std::io::Result<Blackhole> {
        use rustix::net::{AddressFamily, SocketType, bind, listen, socket};
        let family = if addr.is_ipv6() {
            AddressFamily::INET6
        } else {
            AddressFamily::INET
        };
        let listener = socket(family, SocketType::STREAM, None)?;
        bind(&listener, &addr)?;
        listen(&listener, 0)?;
        let addr = SocketAddr::try_from(rustix::net::getsockname(&listener)?)
            .map_err(|_| std::io::Error::other("not an IP socket"))?;
        let filler = TcpStream::connect(addr)?;
        Ok(Blackhole {
            _listener: listener,
            _filler: filler,
            addr,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Runs `ferry ARGS...` with `localhost` resolving to `::1` first, then `127.0.0.1` (as on
/// most distributions' default `/etc/hosts`), in a mount namespace of its own (`unshare`, as
/// root): the machine's `/etc/hosts` is not changed.
pub fn ferry_dual_stack(dir: &Path, backend: crate::Backend, args: &[&str]) -> Output {
    ferry_with_hosts(dir, "::1 localhost\n127.0.0.1 localhost\n", backend, args)
}

/// Runs `ferry ARGS...` with `hosts` as its `/etc/hosts`, in a mount namespace of its own
/// (`unshare`, as root): the machine's `/etc/hosts` is not changed.
pub fn ferry_with_hosts(dir: &Path, hosts: &str, backend: crate::Backend, args: &[&str]) -> Output {
    let file = dir.join("hosts");
    std::fs::write(&file, hosts).expect("write hosts");
    let o = Command::new("unshare")
        .arg("--mount")
        .arg("sh")
        .arg("-c")
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(&file)
        .arg(crate::ferry_bin())
        .arg("--backend")
        .arg(backend.flag())
        .args(args)
        .env_remove("FERRY_SAFE_MODE")
        .output()
        .expect("run unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("unshare:") && !stderr.contains("mount:"),
        "the test needs a mount namespace (root): {stderr}"
    );
    o
}
