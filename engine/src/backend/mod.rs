//! Back-end selection: which data path runs, and why.
//!
//! Two back-ends move bytes:
//! - [`Backend::Uring`]: compio's io_uring driver, forced (never compio's own auto mode, which
//!   degrades silently), with SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN.
//! - [`Backend::Portable`] ("safe mode"): compio's polling driver; file I/O runs on its blocking
//!   pool. No io_uring, no O_DIRECT, no splice, no pinning.
//!
//! The policy ([`select`]): an explicit request fails loudly when it cannot be met; `Auto` falls
//! back to portable when io_uring is blocked or unsupported (EPERM, EACCES, ENOSYS, ENOMEM, EINVAL
//! from a kernel older than 6.1, a missing opcode) and keeps the reason, which the engine logs once
//! and every report carries. An EINVAL from a kernel that should accept our flags fails loudly: it
//! is a bug, not a missing feature. The facts come from `kernel-probes`; this module only decides.
//!
//! The data path's own pieces live here too: page-aligned buffers and their process-wide pool
//! ([`buf`]), and the sinks that put bytes in files ([`sink`]: O_DIRECT or buffered). The job
//! (`download/`) drives them the same way on both back-ends; what differs is the driver compio runs
//! (io_uring or polling) and the sink chosen.

pub(crate) mod buf;
pub(crate) mod fileop;
pub(crate) mod fixed;
pub(crate) mod gate;
pub(crate) mod held;
pub(crate) mod nofollow;
pub(crate) mod sink;
pub(crate) mod sockopt;
pub(crate) mod splice;

use kernel_probes::{Support, UringOp, UringReport};
use serde::Serialize;

use crate::error::StartError;

/// The back-end a caller asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// io_uring when it works here, portable otherwise (the reason is recorded).
    #[default]
    Auto,
    /// io_uring, or fail.
    Uring,
    /// The portable back-end (safe mode).
    Portable,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Uring => "uring",
            BackendKind::Portable => "portable",
        })
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(BackendKind::Uring),
            "portable" | "safe" => Ok(BackendKind::Portable),
            other => Err(format!(
                "unknown back-end {other:?} (expected auto, uring or portable)"
            )),
        }
    }
}

/// The back-end that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// io_uring.
    Uring,
    /// Portable syscalls (safe mode).
    Portable,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Uring => "uring",
            Backend::Portable => "portable",
        })
    }
}

/// A back-end and the reason it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// What runs.
    pub backend: Backend,
    /// Why, in one line.
    pub reason: String,
    /// True when `Auto` wanted io_uring and fell back.
    pub fell_back: bool,
}

/// The io_uring opcodes the engine issues today (through compio). A kernel missing one of them
/// cannot run the io_uring back-end.
pub(crate) const NEEDED_OPS: &[UringOp] = &[
    UringOp::Read,
    UringOp::Write,
    UringOp::Recv,
    UringOp::Send,
    UringOp::Connect,
    UringOp::Openat,
    UringOp::Close,
    UringOp::Fsync,
    UringOp::Statx,
    UringOp::AsyncCancel,
];

/// The environment variable that forces safe mode (`FERRY_SAFE_MODE=1`).
pub const SAFE_MODE_ENV: &str = "FERRY_SAFE_MODE";

/// True when [`SAFE_MODE_ENV`] is set to a true value (`1`, `true`, `yes`, `on`).
pub(crate) fn safe_mode_from_env() -> bool {
    std::env::var(SAFE_MODE_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Whether an io_uring failure means "not available here" (fall back under `Auto`) or "broken".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UringVerdict {
    Usable,
    Unavailable(String),
    Broken(String),
}

/// Judges the probe: can the engine's rings run here?
pub(crate) fn judge(report: &UringReport, kernel: Option<(u32, u32)>) -> UringVerdict {
    match &report.setup {
        Support::Available => {
            let missing = report.missing(NEEDED_OPS);
            if missing.is_empty() {
                UringVerdict::Usable
            } else {
                let names: Vec<_> = missing.iter().map(|op| op.name()).collect();
                UringVerdict::Unavailable(format!(
                    "the kernel lacks io_uring opcodes {}",
                    names.join(", ")
                ))
            }
        }
        Support::Unavailable { errno, reason } => {
            judge_setup_errno(*errno, reason, report.disabled_sysctl, kernel)
        }
    }
}

/// Judges an error from building a ring (in the probe or in a worker).
pub(crate) fn judge_setup_errno(
    errno: Option<i32>,
    reason: &str,
    sysctl: Option<u8>,
    kernel: Option<(u32, u32)>,
) -> UringVerdict {
    let flags = kernel_probes::uring::ENGINE_SETUP_FLAGS.join("|");
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            let why = match sysctl {
                Some(n @ 1..) => format!("kernel.io_uring_disabled={n}"),
                _ => "blocked by a seccomp filter (as in Docker's default profile) or a security module".to_owned(),
            };
            UringVerdict::Unavailable(format!("{reason}: {why}"))
        }
        Some(libc::ENOSYS) => {
            UringVerdict::Unavailable(format!("{reason}: the kernel has no io_uring"))
        }
        Some(libc::ENOMEM) => UringVerdict::Unavailable(format!(
            "{reason}: not enough locked memory for a ring (raise `ulimit -l`)"
        )),
        Some(libc::EINVAL) if kernel.is_some_and(|k| k < (6, 1)) => {
            UringVerdict::Unavailable(format!("{reason}: kernel older than 6.1 rejects {flags}"))
        }
        Some(libc::EINVAL) => UringVerdict::Broken(format!(
            "{reason} with {flags} on a kernel that should accept them"
        )),
        _ => UringVerdict::Broken(reason.to_owned()),
    }
}

/// Chooses the back-end for `requested` from this machine's probe, without building anything.
/// `safe_mode` (`--safe-mode`), or [`SAFE_MODE_ENV`] set in the environment, forces portable
/// unless io_uring was asked for explicitly.
pub fn select(requested: BackendKind, safe_mode: bool) -> Result<Selection, StartError> {
    let probe = kernel_probes::uring();
    let kernel = kernel_probes::Kernel::current().version;
    decide(
        requested,
        safe_mode || safe_mode_from_env(),
        judge(probe, kernel),
    )
}

/// The selection after a worker could not build its io_uring runtime although the probe's ring
/// worked (memlock, a per-thread limit): with `Auto`, portable when the error says io_uring is
/// unavailable here; an error otherwise.
pub(crate) fn after_worker_setup_failed(
    requested: BackendKind,
    error: &std::io::Error,
) -> Result<Selection, StartError> {
    let reason = format!(
        "building the io_uring runtime: {}",
        kernel_probes::describe_io_error(error)
    );
    let sysctl = kernel_probes::uring().disabled_sysctl;
    let kernel = kernel_probes::Kernel::current().version;
    match (
        requested,
        judge_setup_errno(error.raw_os_error(), &reason, sysctl, kernel),
    ) {
        (BackendKind::Auto, UringVerdict::Unavailable(why)) => Ok(Selection {
            backend: Backend::Portable,
            reason: format!("io_uring unavailable: {why}"),
            fell_back: true,
        }),
        (_, UringVerdict::Unavailable(reason)) => Err(StartError::UringUnavailable { reason }),
        (_, _) => Err(StartError::UringBroken { reason }),
    }
}

pub(crate) fn decide(
    requested: BackendKind,
    safe_mode: bool,
    verdict: UringVerdict,
) -> Result<Selection, StartError> {
    let portable = |reason: String, fell_back| Selection {
        backend: Backend::Portable,
        reason,
        fell_back,
    };
    match (requested, verdict) {
        (BackendKind::Portable, _) => Ok(portable("requested (--backend portable)".into(), false)),
        (BackendKind::Auto, _) if safe_mode => Ok(portable(
            format!("safe mode requested (--safe-mode or {SAFE_MODE_ENV}=1)"),
            false,
        )),
        (_, UringVerdict::Usable) => Ok(Selection {
            backend: Backend::Uring,
            reason: format!(
                "io_uring works here ({}; all {} needed opcodes)",
                kernel_probes::uring::ENGINE_SETUP_FLAGS.join("|"),
                NEEDED_OPS.len()
            ),
            fell_back: false,
        }),
        (BackendKind::Uring, UringVerdict::Unavailable(reason)) => {
            Err(StartError::UringUnavailable { reason })
        }
        (_, UringVerdict::Broken(reason)) => Err(StartError::UringBroken { reason }),
        (BackendKind::Auto, UringVerdict::Unavailable(reason)) => {
            Ok(portable(format!("io_uring unavailable: {reason}"), true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(errno: i32) -> UringReport {
        UringReport {
            disabled_sysctl: Some(0),
            setup_flags: vec![],
            setup: Support::Unavailable {
                errno: Some(errno),
                reason: "io_uring_setup: X".into(),
            },
            opcodes: Default::default(),
        }
    }

    #[test]
    fn auto_falls_back_on_blocked_or_missing() {
        for errno in [libc::EPERM, libc::EACCES, libc::ENOSYS, libc::ENOMEM] {
            let s = decide(
                BackendKind::Auto,
                false,
                judge(&unavailable(errno), Some((6, 18))),
            )
            .expect("falls back");
            assert_eq!(s.backend, Backend::Portable);
            assert!(
                s.fell_back && s.reason.starts_with("io_uring unavailable: io_uring_setup"),
                "{s:?}"
            );
        }
    }

    #[test]
    fn explicit_uring_fails_loudly() {
        let err = decide(
            BackendKind::Uring,
            false,
            judge(&unavailable(libc::EPERM), Some((6, 18))),
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("seccomp"), "{err}");
    }

    #[test]
    fn einval_is_old_kernel_or_bug() {
        let old = judge(&unavailable(libc::EINVAL), Some((5, 15)));
        assert!(matches!(old, UringVerdict::Unavailable(_)), "{old:?}");
        let new = judge(&unavailable(libc::EINVAL), Some((6, 18)));
        assert!(decide(BackendKind::Auto, false, new).is_err());
    }

    #[test]
    fn sysctl_is_named() {
        let mut r = unavailable(libc::EPERM);
        r.disabled_sysctl = Some(2);
        let s = decide(BackendKind::Auto, false, judge(&r, Some((6, 18)))).expect("falls back");
        assert!(
            s.reason.contains("kernel.io_uring_disabled=2"),
            "{}",
            s.reason
        );
    }

    #[test]
    fn missing_opcode_falls_back() {
        let mut r = unavailable(0);
        r.setup = Support::Available;
        r.opcodes = UringOp::ALL
            .iter()
            .map(|&op| (op, op != UringOp::Statx))
            .collect();
        let s = decide(BackendKind::Auto, false, judge(&r, Some((6, 18)))).expect("falls back");
        assert!(s.reason.contains("STATX"), "{}", s.reason);
    }

    #[test]
    fn safe_mode_and_explicit_portable() {
        let s = decide(BackendKind::Auto, true, UringVerdict::Usable).expect("ok");
        assert_eq!((s.backend, s.fell_back), (Backend::Portable, false));
        let s = decide(BackendKind::Uring, true, UringVerdict::Usable).expect("ok");
        assert_eq!(
            s.backend,
            Backend::Uring,
            "explicit uring wins over the environment"
        );
        let s = decide(BackendKind::Portable, false, UringVerdict::Usable).expect("ok");
        assert_eq!(s.backend, Backend::Portable);
    }
}
