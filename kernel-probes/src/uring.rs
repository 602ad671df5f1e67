//! io_uring: the `kernel.io_uring_disabled` sysctl, a ring built with the setup flags the engine
//! really uses, and the opcodes this kernel supports (`IORING_REGISTER_PROBE`).
//!
//! The ring is built with SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN because a kernel can accept
//! a plain ring and refuse these flags (before 6.1, DEFER_TASKRUN gives EINVAL): probing with
//! other flags would report a ring the engine cannot build. The result is cached per process.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Serialize;

use crate::{Support, read_trimmed};

/// The setup flags the engine builds its rings with, by name, in the order they are applied.
pub const ENGINE_SETUP_FLAGS: [&str; 3] = ["SINGLE_ISSUER", "DEFER_TASKRUN", "COOP_TASKRUN"];

/// The io_uring opcodes the probe asks the kernel about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)] // each variant is the IORING_OP_ of the same name
pub enum UringOp {
    Read,
    Write,
    ReadFixed,
    WriteFixed,
    Recv,
    Send,
    SendZc,
    Recvmsg,
    Sendmsg,
    Connect,
    Accept,
    Socket,
    Openat,
    Close,
    Fsync,
    Statx,
    Fallocate,
    Splice,
    PollAdd,
    AsyncCancel,
    Timeout,
    LinkTimeout,
    ProvideBuffers,
}

impl UringOp {
    /// Every opcode the probe checks.
    pub const ALL: [UringOp; 23] = [
        UringOp::Read,
        UringOp::Write,
        UringOp::ReadFixed,
        UringOp::WriteFixed,
        UringOp::Recv,
        UringOp::Send,
        UringOp::SendZc,
        UringOp::Recvmsg,
        UringOp::Sendmsg,
        UringOp::Connect,
        UringOp::Accept,
        UringOp::Socket,
        UringOp::Openat,
        UringOp::Close,
        UringOp::Fsync,
        UringOp::Statx,
        UringOp::Fallocate,
        UringOp::Splice,
        UringOp::PollAdd,
        UringOp::AsyncCancel,
        UringOp::Timeout,
        UringOp::LinkTimeout,
        UringOp::ProvideBuffers,
    ];

    /// The `IORING_OP_*` name without its prefix.
    pub fn name(self) -> &'static str {
        match self {
            UringOp::Read => "READ",
            UringOp::Write => "WRITE",
            UringOp::ReadFixed => "READ_FIXED",
            UringOp::WriteFixed => "WRITE_FIXED",
            UringOp::Recv => "RECV",
            UringOp::Send => "SEND",
            UringOp::SendZc => "SEND_ZC",
            UringOp::Recvmsg => "RECVMSG",
            UringOp::Sendmsg => "SENDMSG",
            UringOp::Connect => "CONNECT",
            UringOp::Accept => "ACCEPT",
            UringOp::Socket => "SOCKET",
            UringOp::Openat => "OPENAT",
            UringOp::Close => "CLOSE",
            UringOp::Fsync => "FSYNC",
            UringOp::Statx => "STATX",
            UringOp::Fallocate => "FALLOCATE",
            UringOp::Splice => "SPLICE",
            UringOp::PollAdd => "POLL_ADD",
            UringOp::AsyncCancel => "ASYNC_CANCEL",
            UringOp::Timeout => "TIMEOUT",
            UringOp::LinkTimeout => "LINK_TIMEOUT",
            UringOp::ProvideBuffers => "PROVIDE_BUFFERS",
        }
    }

    #[cfg(target_os = "linux")]
    fn code(self) -> u8 {
        use io_uring::opcode;
        match self {
            UringOp::Read => opcode::Read::CODE,
            UringOp::Write => opcode::Write::CODE,
            UringOp::ReadFixed => opcode::ReadFixed::CODE,
            UringOp::WriteFixed => opcode::WriteFixed::CODE,
            UringOp::Recv => opcode::Recv::CODE,
            UringOp::Send => opcode::Send::CODE,
            UringOp::SendZc => opcode::SendZc::CODE,
            UringOp::Recvmsg => opcode::RecvMsg::CODE,
            UringOp::Sendmsg => opcode::SendMsg::CODE,
            UringOp::Connect => opcode::Connect::CODE,
            UringOp::Accept => opcode::Accept::CODE,
            UringOp::Socket => opcode::Socket::CODE,
            UringOp::Openat => opcode::OpenAt::CODE,
            UringOp::Close => opcode::Close::CODE,
            UringOp::Fsync => opcode::Fsync::CODE,
            UringOp::Statx => opcode::Statx::CODE,
            UringOp::Fallocate => opcode::Fallocate::CODE,
            UringOp::Splice => opcode::Splice::CODE,
            UringOp::PollAdd => opcode::PollAdd::CODE,
            UringOp::AsyncCancel => opcode::AsyncCancel::CODE,
            UringOp::Timeout => opcode::Timeout::CODE,
            UringOp::LinkTimeout => opcode::LinkTimeout::CODE,
            UringOp::ProvideBuffers => opcode::ProvideBuffers::CODE,
        }
    }
}

impl std::fmt::Display for UringOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the kernel said about io_uring.
#[derive(Debug, Clone, Serialize)]
pub struct UringReport {
    /// `kernel.io_uring_disabled`: 0 enabled, 1 only for the `io_uring_group`, 2 disabled;
    /// `None` when the sysctl does not exist (kernels before 6.6).
    pub disabled_sysctl: Option<u8>,
    /// The setup flags the ring was built with.
    pub setup_flags: Vec<&'static str>,
    /// Whether `io_uring_setup` with [`ENGINE_SETUP_FLAGS`] succeeded.
    pub setup: Support,
    /// Support for each opcode in [`UringOp::ALL`]; empty when no ring could be built.
    pub opcodes: BTreeMap<UringOp, bool>,
}

impl UringReport {
    /// True when the ring builds with the engine's flags.
    pub fn is_available(&self) -> bool {
        self.setup.is_available()
    }

    /// The opcodes from `needed` that this kernel lacks (all of them when no ring could be built).
    pub fn missing(&self, needed: &[UringOp]) -> Vec<UringOp> {
        needed
            .iter()
            .copied()
            .filter(|op| !self.opcodes.get(op).copied().unwrap_or(false))
            .collect()
    }
}

/// The io_uring report for this process, probed on first use and cached.
pub fn uring() -> &'static UringReport {
    static CACHE: OnceLock<UringReport> = OnceLock::new();
    CACHE.get_or_init(probe)
}

fn probe() -> UringReport {
    let disabled_sysctl =
        read_trimmed("/proc/sys/kernel/io_uring_disabled").and_then(|s| s.parse().ok());
    let (setup, opcodes) = build_ring();
    UringReport {
        disabled_sysctl,
        setup_flags: ENGINE_SETUP_FLAGS.to_vec(),
        setup,
        opcodes,
    }
}

#[cfg(target_os = "linux")]
fn build_ring() -> (Support, BTreeMap<UringOp, bool>) {
    let ring: std::io::Result<io_uring::IoUring> = io_uring::IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(8);
    let ring = match ring {
        Ok(ring) => ring,
        Err(e) => return (Support::failed("io_uring_setup", &e), BTreeMap::new()),
    };
    let mut probe = io_uring::Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return (
            Support::failed("io_uring_register(PROBE)", &e),
            BTreeMap::new(),
        );
    }
    let opcodes = UringOp::ALL
        .iter()
        .map(|&op| (op, probe.is_supported(op.code())))
        .collect();
    (Support::Available, opcodes)
}

#[cfg(not(target_os = "linux"))]
fn build_ring() -> (Support, BTreeMap<UringOp, bool>) {
    let reason = "io_uring exists only on Linux".to_owned();
    (
        Support::Unavailable {
            errno: None,
            reason,
        },
        BTreeMap::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_consistent() {
        let r = uring();
        if r.is_available() {
            // Any kernel that accepts DEFER_TASKRUN (6.1+) has the basic opcodes.
            assert!(r.opcodes[&UringOp::Read], "{r:?}");
            assert!(r.missing(&[UringOp::Read, UringOp::Write]).is_empty());
        } else {
            assert!(r.opcodes.is_empty());
            assert_eq!(r.missing(&[UringOp::Read]), vec![UringOp::Read]);
        }
        eprintln!(
            "io_uring probe: setup={} sysctl={:?}",
            r.setup, r.disabled_sysctl
        );
    }
}
