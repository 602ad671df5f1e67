//! TCP Fast Open (RFC 7413) socket options, which neither compio, socket2 nor rustix expose:
//! `TCP_FASTOPEN_CONNECT` on a client socket (the request goes in the SYN once the kernel holds
//! a cookie for the server), `TCP_FASTOPEN` on a listener, and the `TCP_INFO` bit saying whether
//! a connection's SYN data was accepted.
//!
//! The kernel decides the rest: `net.ipv4.tcp_fastopen` must enable the side (bit 1 clients,
//! bit 2 servers), it keeps the cookies, and it falls back to a normal handshake on its own when
//! a server or a middlebox drops SYN data. This module does not decide when Fast Open is used
//! (`net::connect` and `serve` do).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `TCPI_OPT_SYN_DATA` from `linux/tcp.h` (not in libc): the SYN-ACK acknowledged data sent
/// in the SYN.
const TCPI_OPT_SYN_DATA: u8 = 32;

fn set_int(fd: impl AsFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is a descriptor borrowed for the call; the option value is a c_int that
    // lives across the call, and its size is passed alongside.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            opt,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `TCP_FASTOPEN_CONNECT` on an unconnected TCP socket: `connect` then returns at once
/// when the kernel has a cookie for the server, and the first write goes out with the SYN.
/// Without a cookie the handshake is the usual one and asks the server for a cookie.
/// `EOPNOTSUPP` when the sysctl disables the client side.
pub(crate) fn set_fast_open_connect(fd: impl AsFd) -> io::Result<()> {
    set_int(fd, libc::TCP_FASTOPEN_CONNECT, 1)
}

/// Whether `TCP_FASTOPEN_CONNECT` is set on the socket (what the test reads back).
#[cfg(test)]
fn fast_open_connect(fd: impl AsFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes for the call and `len` holds the size of
    // `value`; the kernel writes at most that many bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN_CONNECT,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    r == 0 && value != 0
}

/// Enables Fast Open on a listening socket, with at most `queue` connections whose
/// handshake is still pending.
pub(crate) fn set_fast_open_listener(fd: impl AsFd, queue: u32) -> io::Result<()> {
    set_int(
        fd,
        libc::TCP_FASTOPEN,
        libc::c_int::try_from(queue).unwrap_or(libc::c_int::MAX),
    )
}

/// Whether the server acknowledged the data this connection sent in its SYN (so the request
/// saved a round trip).
pub(crate) fn syn_data_acked(fd: impl AsFd) -> io::Result<bool> {
    // SAFETY: `tcp_info` is plain integers, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes for the call and `len` holds the size of
    // `info`; the kernel writes at most that many bytes (fewer on older kernels).
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_options & TCPI_OPT_SYN_DATA != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_reads_back_as_set_when_the_kernel_accepts_it() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        // Not a TCP socket: refused, and nothing reads back as set.
        assert!(set_fast_open_connect(&socket).is_err());
        assert!(!fast_open_connect(&socket));
        let tcp = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )
        .expect("tcp socket");
        assert!(!fast_open_connect(&tcp));
        match set_fast_open_connect(&tcp) {
            Ok(()) => assert!(fast_open_connect(&tcp)),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
                eprintln!("TCP Fast Open disabled here: {e}");
            }
        }
    }
}
