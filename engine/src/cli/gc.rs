//! `ferry gc`: the command-line front end of [`ferry::hub::gc`]. Removes the partial files,
//! journals and temporary files interrupted pulls left in a cache (or a local dir) once they
//! are older than `--older-than`, skipping repos a running pull holds, and says what it freed.

use std::path::PathBuf;

use clap::Args;
use ferry::hub::{Layout, gc, parse_age};

use super::exit;

/// Arguments of `ferry gc`.
#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    /// Clean this local dir (as `ferry pull --local-dir` wrote it) instead of the cache.
    #[arg(long, value_name = "DIR", conflicts_with = "cache_dir")]
    local_dir: Option<PathBuf>,
    /// The huggingface_hub cache (default: HF_HUB_CACHE, else HF_HOME/hub, else
    /// ~/.cache/huggingface/hub).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Only what was last written longer ago than this (90s, 30m, 12h, 7d; 0 for all).
    #[arg(long, value_name = "AGE", default_value = "1d", value_parser = parse_age)]
    older_than: std::time::Duration,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// The report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: GcArgs) -> u8 {
    let layout = match args.local_dir {
        Some(dir) => Layout::LocalDir(dir),
        None => match ferry::hub::env::cache_dir(args.cache_dir) {
            Ok(dir) => Layout::Cache(dir),
            Err(e) => return super::fail(&e, exit::USAGE),
        },
    };
    let report = match gc(&layout, args.older_than, args.dry_run) {
        Ok(r) => r,
        Err(e) => return super::fail(&e, super::pull::hub_error_code(&e)),
    };
    if args.json {
        super::print_json(&report);
        return 0;
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for p in &report.removed {
        println!("{verb} {}", p.display());
    }
    for p in &report.busy {
        eprintln!("skipped {}: a pull is writing it", p.display());
    }
    println!(
        "{verb} {} file(s), {}",
        report.removed.len(),
        ferry::units::human_bytes(report.bytes)
    );
    0
}
