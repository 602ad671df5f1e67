//! Facts about this kernel and machine, for ferry's back-end selection and for `ferry probe`.
//!
//! Each probe *tries* the feature the way the engine would use it (a ring built with the real setup
//! flags, an O_DIRECT write in the target directory, a `TCP_ULP "tls"` on a connected socket), so a
//! feature blocked by seccomp, a sysctl or a filesystem shows up as unavailable with its errno.
//!
//! This crate reports; it never decides. Which back-end to run, and what to do when a feature is
//! missing, is the engine's policy (`ferry::backend`). Probes run once: [`uring()`] caches its answer
//! for the life of the process, and [`probe`] is meant to be called once per run.
//!
//! `unsafe` appears only where no safe wrapper exists (a few `setsockopt`/`recvmmsg` calls in
//! `net.rs`), each with a `// SAFETY:` comment.
#![warn(missing_docs)]

use std::path::Path;

use serde::Serialize;

pub mod cpu;
pub mod fs;
pub mod net;
pub mod numa;
pub mod uring;

pub use cpu::CpuFeatures;
pub use fs::DirReport;
pub use net::NetReport;
pub use numa::{Numa, NumaNode};
pub use uring::{UringOp, UringReport, uring};

/// Whether one feature works here, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Support {
    /// The feature was tried and worked.
    Available,
    /// The feature was tried and failed.
    Unavailable {
        /// The errno of the failing call, when there was one.
        errno: Option<i32>,
        /// What failed, in words (`"setsockopt(UDP_SEGMENT): EPERM"`).
        reason: String,
    },
}

impl Support {
    /// True when the feature was tried and worked.
    pub fn is_available(&self) -> bool {
        matches!(self, Support::Available)
    }

    /// `Unavailable` built from the failing call's name and its error.
    pub fn failed(call: &str, err: &std::io::Error) -> Support {
        Support::Unavailable {
            errno: err.raw_os_error(),
            reason: format!("{call}: {}", describe_io_error(err)),
        }
    }

    fn from_result<T>(call: &str, r: std::io::Result<T>) -> Support {
        match r {
            Ok(_) => Support::Available,
            Err(e) => Support::failed(call, &e),
        }
    }
}

impl std::fmt::Display for Support {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Support::Available => f.write_str("yes"),
            Support::Unavailable { reason, .. } => write!(f, "no ({reason})"),
        }
    }
}

/// The running kernel.
#[derive(Debug, Clone, Serialize)]
pub struct Kernel {
    /// `uname -r`, e.g. `6.18.44`.
    pub release: String,
    /// `(major, minor)` parsed from the release, when it parses.
    pub version: Option<(u32, u32)>,
}

impl Kernel {
    /// Reads `uname`.
    pub fn current() -> Kernel {
        let uts = rustix::system::uname();
        let release = uts.release().to_string_lossy().into_owned();
        let version = parse_version(&release);
        Kernel { release, version }
    }
}

fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The `RLIMIT_MEMLOCK` limit, which bounds registered buffers.
#[derive(Debug, Clone, Serialize)]
pub struct Memlock {
    /// Soft limit in bytes; `None` means unlimited.
    pub soft: Option<u64>,
    /// Hard limit in bytes; `None` means unlimited.
    pub hard: Option<u64>,
}

impl Memlock {
    /// Reads the limit of this process.
    pub fn current() -> Memlock {
        let r = rustix::process::getrlimit(rustix::process::Resource::Memlock);
        Memlock {
            soft: r.current,
            hard: r.maximum,
        }
    }
}

/// Everything `ferry probe` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// The running kernel.
    pub kernel: Kernel,
    /// io_uring: sysctl, ring setup with the engine's flags, opcodes.
    pub io_uring: UringReport,
    /// The target directory, when one was given.
    pub dir: Option<DirReport>,
    /// splice(2), socket-side features, TCP settings.
    pub net: NetReport,
    /// The memlock limit.
    pub memlock: Memlock,
    /// NUMA nodes and the nodes of NICs and of the target directory's block device.
    pub numa: Numa,
    /// CPU features that matter for hashing and copying.
    pub cpu: CpuFeatures,
}

/// Runs every probe. `dir` is where downloads will land; its filesystem is probed for O_DIRECT,
/// `fallocate` and free space, and its block device for its NUMA node.
///
/// ```
/// let report = kernel_probes::probe(Some(std::path::Path::new(".")));
/// println!("kernel {}: io_uring {}", report.kernel.release, report.io_uring.setup);
/// if let Some(dir) = &report.dir {
///     println!("O_DIRECT here: {} ({} free bytes)", dir.o_direct, dir.free_bytes);
/// }
/// ```
pub fn probe(dir: Option<&Path>) -> ProbeReport {
    let dir_report = dir.map(fs::probe_dir);
    ProbeReport {
        kernel: Kernel::current(),
        io_uring: uring().clone(),
        numa: numa::probe(dir),
        dir: dir_report,
        net: net::probe(),
        memlock: Memlock::current(),
        cpu: CpuFeatures::detect(),
    }
}

/// The symbolic name of an errno (`EPERM`), or `None` for ones this crate does not name.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPIPE => "EPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EDQUOT => "EDQUOT",
        libc::EFBIG => "EFBIG",
        _ => return None,
    })
}

/// `"EPERM (Operation not permitted)"` for OS errors, the error's own text otherwise.
pub fn describe_io_error(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => {
            let text = std::io::Error::from_raw_os_error(code).to_string();
            // std renders "Operation not permitted (os error 1)"; keep the words only.
            let words = text.split(" (os error").next().unwrap_or(&text);
            match errno_name(code) {
                Some(name) => format!("{name} ({words})"),
                None => format!("errno {code} ({words})"),
            }
        }
        None => err.to_string(),
    }
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_versions() {
        assert_eq!(parse_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_version("5.4.0"), Some((5, 4)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn describes_errnos_by_name() {
        let e = std::io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(describe_io_error(&e), "EPERM (Operation not permitted)");
    }

    #[test]
    fn full_probe_serializes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = probe(Some(dir.path()));
        let json = serde_json::to_value(&report).expect("serialize");
        assert!(
            json["kernel"]["release"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        assert!(json["dir"]["free_bytes"].as_u64().is_some());
        assert!(
            !report.numa.nodes.is_empty(),
            "at least one NUMA node (or the fallback node 0)"
        );
    }
}
