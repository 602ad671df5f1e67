//! `ferry probe`: the kernel-probes report as a table (or JSON), ending with the back-end ferry
//! would choose here and why.

use std::path::PathBuf;

use clap::Args;
use kernel_probes::{self, ProbeReport, Support};
use serde::Serialize;

use super::{Global, exit};
use ferry::units::human_bytes;

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// Directory to probe for O_DIRECT, fallocate and free space (default: the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Choice {
    /// `uring` or `portable`, or null when the requested back-end cannot run.
    backend: Option<ferry::Backend>,
    reason: String,
    fell_back: bool,
    requested: ferry::BackendKind,
}

#[derive(Serialize)]
struct ProbeOutput<'a> {
    probe: &'a ProbeReport,
    selection: Choice,
    /// The TLS crypto: provider and the key exchange groups offered.
    tls: ferry::TlsInfo,
}

pub(crate) fn run(global: &Global, args: ProbeArgs) -> u8 {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        eprintln!("ferry: error: {} is not a directory", dir.display());
        return exit::USAGE;
    }
    let report = kernel_probes::probe(Some(&dir));
    let (choice, code) = match ferry::select(global.backend, global.safe_mode) {
        Ok(s) => (
            Choice {
                backend: Some(s.backend),
                reason: s.reason,
                fell_back: s.fell_back,
                requested: global.backend,
            },
            0,
        ),
        Err(e) => (
            Choice {
                backend: None,
                reason: e.to_string(),
                fell_back: false,
                requested: global.backend,
            },
            super::start_error_code(&e),
        ),
    };
    if args.json {
        let out = ProbeOutput {
            probe: &report,
            selection: choice,
            tls: ferry::tls_info(),
        };
        match serde_json::to_string_pretty(&out) {
            Ok(s) => println!("{s}"),
            Err(e) => return super::fail(&e, exit::INTERNAL),
        }
    } else {
        print_table(&report, &choice);
    }
    code
}

fn yes_no(s: &Support) -> String {
    s.to_string()
}

fn print_table(r: &ProbeReport, choice: &Choice) {
    let row = |k: &str, v: String| println!("  {k:<22} {v}");
    println!("kernel");
    row("release", r.kernel.release.clone());
    println!("io_uring");
    row(
        "io_uring_disabled",
        r.io_uring
            .disabled_sysctl
            .map_or("(no sysctl)".into(), |v| v.to_string()),
    );
    row(
        "ring",
        format!(
            "{} [{}]",
            yes_no(&r.io_uring.setup),
            r.io_uring.setup_flags.join("|")
        ),
    );
    if !r.io_uring.opcodes.is_empty() {
        let missing: Vec<_> = r
            .io_uring
            .opcodes
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(op, _)| op.name())
            .collect();
        row(
            "opcodes",
            if missing.is_empty() {
                format!("all {} probed supported", r.io_uring.opcodes.len())
            } else {
                format!("missing {}", missing.join(", "))
            },
        );
    }
    if let Some(d) = &r.dir {
        println!("directory {}", d.path.display());
        row("filesystem", d.filesystem.clone());
        row(
            "free",
            format!(
                "{} of {}",
                human_bytes(d.free_bytes),
                human_bytes(d.total_bytes)
            ),
        );
        let align = d
            .dio_align
            .map(|a| {
                format!(
                    ", align mem {} / offset {} ({})",
                    a.memory, a.offset, a.source
                )
            })
            .unwrap_or_default();
        row("O_DIRECT", format!("{}{align}", yes_no(&d.o_direct)));
        row("fallocate", yes_no(&d.fallocate));
    }
    println!("network");
    row("splice", yes_no(&r.net.splice));
    row("UDP GSO", yes_no(&r.net.udp_gso));
    row("UDP GRO", yes_no(&r.net.udp_gro));
    row("recvmmsg", yes_no(&r.net.recvmmsg));
    let o = &r.net.udp_offload;
    let count = |n: Option<u32>, what: &str| n.map_or("failed".into(), |n| format!("{n} {what}"));
    row(
        "UDP offloads, tried",
        format!(
            "GSO {}, GRO {}, recvmmsg {}{}",
            count(o.gso_datagrams_per_send, "datagrams per send"),
            count(o.gro_segments_per_receive, "segments per receive"),
            count(o.recvmmsg_messages_per_call, "messages per call"),
            if o.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", o.detail)
            }
        ),
    );
    row(
        "TCP Fast Open",
        r.net.tcp_fastopen.map_or("(no sysctl)".into(), |v| {
            format!(
                "{v} (client {}, server {})",
                if v & 1 != 0 { "on" } else { "off" },
                if v & 2 != 0 { "on" } else { "off" }
            )
        }),
    );
    row(
        "congestion control",
        format!(
            "{} (available: {})",
            r.net.congestion_default.as_deref().unwrap_or("?"),
            r.net.congestion_controls.join(" ")
        ),
    );
    row(
        "TCP receive buffer",
        match (r.net.tcp_rmem, r.net.rmem_max) {
            (Some([_, default, most]), max) => format!(
                "{} by default, grows to {} by itself (SO_RCVBUF up to {}): one flow's window \
                 at most",
                human_bytes(default),
                human_bytes(most),
                max.map_or("?".to_owned(), human_bytes)
            ),
            _ => "(no sysctl)".into(),
        },
    );
    row("kTLS", yes_no(&r.net.ktls));
    let tls = ferry::tls_info();
    println!("tls");
    row("crypto", tls.provider.to_owned());
    row("key exchange offered", tls.key_exchange.join(", "));
    println!("memory");
    let lim = |v: Option<u64>| v.map_or("unlimited".to_owned(), human_bytes);
    row(
        "memlock",
        format!("soft {}, hard {}", lim(r.memlock.soft), lim(r.memlock.hard)),
    );
    println!("numa");
    for n in &r.numa.nodes {
        row(&format!("node {}", n.id), format!("cpus {:?}", n.cpus));
    }
    let node = |n: Option<u32>| n.map_or("unknown".to_owned(), |n| format!("node {n}"));
    for nic in &r.numa.nics {
        row(&format!("nic {}", nic.name), node(nic.node));
    }
    if let Some(d) = &r.numa.dir_device {
        row(&format!("disk {}", d.name), node(d.node));
    }
    println!("cpu");
    row("arch", r.cpu.arch.to_owned());
    row(
        "SHA extensions",
        if r.cpu.sha { "yes" } else { "no" }.into(),
    );
    row("AVX2", if r.cpu.avx2 { "yes" } else { "no" }.into());
    println!();
    match choice.backend {
        Some(b) => println!("back-end: {b} ({})", choice.reason),
        None => println!(
            "back-end: none; --backend {:?} cannot run: {}",
            choice.requested, choice.reason
        ),
    }
}
