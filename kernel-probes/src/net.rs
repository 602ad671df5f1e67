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
    /// What the UDP offloads achieved on loopback, measured (not only whether the options set).
    pub udp_offload: UdpOffload,
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
        udp_offload: udp_offload(),
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

/// What the UDP offloads did when tried on loopback: datagrams of 1,200 bytes, 10 of them per
/// GSO send. `None` where the step failed; `detail` says why.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UdpOffload {
    /// Datagrams one `send` with `UDP_SEGMENT` became at a receiver without GRO.
    pub gso_datagrams_per_send: Option<u32>,
    /// Datagrams one `recv` returned at a receiver with `UDP_GRO` on (its bytes over the
    /// segment size).
    pub gro_segments_per_receive: Option<u32>,
    /// Messages one `recvmmsg` call returned, of three sent before it.
    pub recvmmsg_messages_per_call: Option<u32>,
    /// What failed, in words; empty when every step worked.
    pub detail: String,
}

/// The datagram size and count of the offload probe.
const SEGMENT: usize = 1200;
const SEGMENTS: usize = 10;

/// Sends one GSO burst to a plain receiver, one to a GRO receiver, and three datagrams to a
/// `recvmmsg` reader, all on loopback, and counts what arrived how.
fn udp_offload() -> UdpOffload {
    let mut r = UdpOffload::default();
    let mut failed = Vec::new();
    let burst = vec![0x5a_u8; SEGMENT * SEGMENTS];
    let gso_sender = || -> std::io::Result<UdpSocket> {
        let tx = UdpSocket::bind("127.0.0.1:0")?;
        setsockopt_int(
            tx.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            SEGMENT as i32,
        )?;
        Ok(tx)
    };
    let receiver = |gro: bool| -> std::io::Result<UdpSocket> {
        let rx = UdpSocket::bind("127.0.0.1:0")?;
        rx.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
        if gro {
            setsockopt_int(rx.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1)?;
        }
        Ok(rx)
    };
    // GSO: one send, counted as datagrams by a receiver that does not coalesce.
    let gso = || -> std::io::Result<u32> {
        let (tx, rx) = (gso_sender()?, receiver(false)?);
        tx.send_to(&burst, rx.local_addr()?)?;
        let mut buf = vec![0u8; 65_536];
        let mut datagrams = 0;
        while datagrams < SEGMENTS as u32 {
            match rx.recv(&mut buf) {
                Ok(SEGMENT) => datagrams += 1,
                _ => break,
            }
        }
        Ok(datagrams)
    };
    match gso() {
        Ok(n) => r.gso_datagrams_per_send = Some(n),
        Err(e) => failed.push(format!("GSO send: {e}")),
    }
    // GRO: the same burst, read by a receiver that coalesces.
    let gro = || -> std::io::Result<u32> {
        let (tx, rx) = (gso_sender()?, receiver(true)?);
        tx.send_to(&burst, rx.local_addr()?)?;
        let mut buf = vec![0u8; 65_536];
        let n = rx.recv(&mut buf)?;
        Ok((n / SEGMENT) as u32)
    };
    match gro() {
        Ok(n) => r.gro_segments_per_receive = Some(n),
        Err(e) => failed.push(format!("GRO receive: {e}")),
    }
    match recvmmsg_batch() {
        Ok(n) => r.recvmmsg_messages_per_call = Some(n),
        Err(e) => failed.push(format!("recvmmsg: {e}")),
    }
    r.detail = failed.join("; ");
    r
}

/// Three datagrams sent, then one `recvmmsg` of up to eight: how many it returned.
fn recvmmsg_batch() -> std::io::Result<u32> {
    let (tx, rx) = (
        UdpSocket::bind("127.0.0.1:0")?,
        UdpSocket::bind("127.0.0.1:0")?,
    );
    for _ in 0..3 {
        tx.send_to(&[1u8; 100], rx.local_addr()?)?;
    }
    let mut bufs = [[0u8; 256]; 8];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: an all-zero `mmsghdr` is a valid value (null name, no control data).
    let mut msgs: Vec<libc::mmsghdr> = (0..iovs.len())
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    // SAFETY: `msgs` holds `msgs.len()` initialised headers, each pointing to one iovec into
    // `bufs`; all outlive the call. MSG_WAITFORONE returns as soon as one message is there,
    // with every message already queued (loopback delivers the three before this call).
    let rc = unsafe {
        libc::recvmmsg(
            rx.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as u32,
            libc::MSG_WAITFORONE,
            &mut timeout,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc as u32)
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
            "net probe: gso={} gro={} ktls={} cc={:?} offload={:?}",
            r.udp_gso, r.udp_gro, r.ktls, r.congestion_controls, r.udp_offload
        );
        // Loopback delivers the three datagrams before the call; every kernel since 2.6.33
        // has recvmmsg.
        assert_eq!(
            r.udp_offload.recvmmsg_messages_per_call,
            Some(3),
            "{:?}",
            r.udp_offload
        );
        // Where the kernel takes UDP_SEGMENT, one send is split into every segment.
        if r.udp_gso.is_available() {
            assert_eq!(
                r.udp_offload.gso_datagrams_per_send,
                Some(SEGMENTS as u32),
                "{:?}",
                r.udp_offload
            );
        }
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
