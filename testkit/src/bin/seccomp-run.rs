//! `seccomp-run PROGRAM [ARGS...]`: runs a program under a seccomp filter that makes
//! `io_uring_setup`, `io_uring_enter` and `io_uring_register` fail with EPERM, as Docker's default
//! profile does, so tests can prove ferry's fallback on a kernel that has io_uring.
//!
//! The filter is installed on this process and inherited across `exec`. Every other system call
//! is allowed.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;

use anyhow::{Context, bail};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        bail!("usage: seccomp-run PROGRAM [ARGS...]");
    };
    let mut rules = BTreeMap::new();
    for nr in [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ] {
        rules.insert(nr, vec![]); // no conditions: every call matches
    }
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .context("target arch")?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let program_bpf: BpfProgram = filter.try_into().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    seccompiler::apply_filter(&program_bpf)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("install seccomp filter")?;
    let err = std::process::Command::new(&program).args(args).exec();
    Err(err).with_context(|| format!("exec {}", program.to_string_lossy()))
}
