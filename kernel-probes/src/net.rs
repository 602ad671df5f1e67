//! Socket-side features: splice(2), UDP GSO/GRO, `recvmmsg`, TCP Fast Open, congestion controls,
//! receive buffer limits, kTLS. Each is tried on a real socket on loopback; the TCP settings are read from sysctls.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use serde::Serialize;

use crate::{Support, read_trimmed};

/// `ferry probe`'s network section.
#[derive(Debug, Clone, Serialize)]
pub struct NetReport {
    /// splice(2) from a pipe works.
    pub splice: Support,
    /// `UDP_SEGMENT` (GSO) can be set on a UDP socket.
    pub udp_gso: Support,
    /// `UDP_GRO` can be set on a UDP socket.
    pub udp_gro: Support,
    /// `recvmmsg(2)` exists.
    pub recvmmsg: Support,
    /// `net.ipv4.tcp_fastopen`: bit 1 enables clients, bit 2 servers.
    pub tcp_fastopen: Option<u32>,
    /// `net.ipv4.tcp_available_congestion_control`.
    pub congestion_controls: Vec<String>,
    /// `net.ipv4.tcp_congestion_control`, the default.
    pub congestion_default: Option<String>,
    /// `net.ipv4.tcp_rmem`: the minimum, default and most bytes the kernel lets a TCP socket's
    /// receive buffer grow to by itself. The most bounds a flow's window: a path whose
    /// bandwidth-delay product is larger cannot be filled by one connection.
    pub tcp_rmem: Option<[u64; 3]>,
    /// `net.core.rmem_max`: the most a program may ask for with `SO_RCVBUF`.
    pub rmem_max: Option<u64>,
    /// `setsockopt(TCP_ULP, "tls")` works on a connected TCP socket.
    pub ktls: Support,
}

/// Runs the network probes.
pub fn probe() -> NetReport {
    NetReport {
        splice: probe_splice(),
        udp_gso: udp_sockopt("setsockopt(UDP_SEGMENT)", libc::UDP_SEGMENT, 1200),
        udp_gro: udp_sockopt("setsockopt(UDP_GRO)", libc::UDP_GRO, 1),
        recvmmsg: probe_recvmmsg(),
        tcp_fastopen: tcp_fastopen(),
        congestion_controls: read_trimmed("/proc/sys/net/ipv4/tcp_available_congestion_control")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        congestion_default: read_trimmed("/proc/sys/net/ipv4/tcp_congestion_control"),
        tcp_rmem: read_trimmed("/proc/sys/net/ipv4/tcp_rmem").and_then(|s| {
            let v: Vec<u64> = s
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            <[u64; 3]>::try_from(v).ok()
        }),
        rmem_max: read_trimmed("/proc/sys/net/core/rmem_max").and_then(|s| s.parse().ok()),
        ktls: probe_ktls(),
    }
}

/// `net.ipv4.tcp_fastopen` (of this network namespace): bit 1 (`& 1`) enables clients,
/// bit 2 (`& 2`) servers. `None` when the sysctl cannot be read.
pub fn tcp_fastopen() -> Option<u32> {
    read_trimmed("/proc/sys/net/ipv4/tcp_fastopen").and_then(|s| s.parse().ok())
}

fn probe_splice() -> Support {
    let run = || -> std::io::Result<()> {
        let (rx, tx) = rustix::pipe::pipe()?;
        rustix::io::write(&tx, b"x")?;
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        rustix::pipe::splice(
            &rx,
            None,
            &null,
            None,
            1,
            rustix::pipe::SpliceFlags::empty(),
        )?;
        Ok(())
    };
    Support::from_result("splice", run())
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller for the duration of this call, and the
    // option value points to a live `c_int` whose size is passed alongside it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn udp_sockopt(call: &str, name: i32, value: i32) -> Support {
    let run = || -> std::io::Result<()> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, name, value)
    };
    Support::from_result(call, run())
}

fn probe_recvmmsg() -> Support {
    let run = || -> std::io::Result<()> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        let mut buf = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero `mmsghdr` is a valid value (null name, no control data).
        let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
        msg.msg_hdr.msg_iov = &mut iov;
        msg.msg_hdr.msg_iovlen = 1;
        // SAFETY: `msg` points to one initialised `mmsghdr` whose iovec points into `buf`; all of
        // them outlive the call. MSG_DONTWAIT makes it return at once on an empty socket.
        let rc = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                &mut msg,
                1,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc >= 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        // An empty socket answers EAGAIN: the call exists, there was just nothing to read.
        if err.kind() == std::io::ErrorKind::WouldBlock {
            Ok(())
        } else {
            Err(err)
        }
    };
    Support::from_result("recvmmsg", run())
}

fn probe_ktls() -> Support {
    let run = || -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let _server = listener.accept()?;
        let ulp = b"tls";
        // SAFETY: `client` is a connected TCP socket that outlives the call; the option value is
        // a live byte string whose exact length is passed.
        let rc = unsafe {
            libc::setsockopt(
                client.as_raw_fd(),
                libc::SOL_TCP,
                libc::TCP_ULP,
                ulp.as_ptr().cast(),
                ulp.len() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    Support::from_result("setsockopt(TCP_ULP, \"tls\")", run())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_probes_run() {
        let r = probe();
        // splice(2) and recvmmsg(2) have been in every kernel since 2.6.33.
        assert!(r.splice.is_available(), "{:?}", r.splice);
        assert!(r.recvmmsg.is_available(), "{:?}", r.recvmmsg);
        eprintln!(
            "net probe: gso={} gro={} ktls={} cc={:?}",
            r.udp_gso, r.udp_gro, r.ktls, r.congestion_controls
        );
        // The receive buffer limits, as the sysctls say (three numbers, in order).
        if let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem") {
            let want: Vec<u64> = text
                .split_whitespace()
                .map(|n| n.parse().expect("n"))
                .collect();
            let [min, default, most] = r.tcp_rmem.expect("tcp_rmem read");
            assert_eq!(vec![min, default, most], want);
            assert!(min <= default && default <= most, "{want:?}");
        }
        if let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/rmem_max") {
            assert_eq!(r.rmem_max, text.trim().parse().ok());
        }
    }
}
