//! `ferry verify`: the command-line front end of [`ferry::hub::verify`]. Re-hashes a mirrored
//! snapshot against its listing, prints each file that is not good and a summary (or JSON),
//! and exits 15 when any file is missing or damaged. With `--repair` it pulls the same commit
//! (which fetches exactly the files not good, since good ones were just marked) and verifies
//! again.

use std::io::IsTerminal;

use clap::Args;
use ferry::Engine;
use ferry::hub::{FileState, Pull, VerifyReport, verify};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::pull::{RepoArgs, hub_error_code, repo_options};
use super::{Global, exit};

/// Arguments of `ferry verify`.
#[derive(Debug, Args)]
#[command(mut_arg("local_dir", |a| {
    a.help("Check plain files in DIR (a --local-dir pull, with its .cache/huggingface metadata) instead of the cache")
}))]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Fetch the missing and damaged files again (from the endpoint), then verify again.
    #[arg(long)]
    repair: bool,
    /// The report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(global: &Global, args: VerifyArgs) -> u8 {
    let options = match repo_options(&args.repo) {
        Ok(o) => o,
        Err(e) => return super::fail(&e, exit::USAGE),
    };
    let engine = match Engine::new(global.config(None)) {
        Ok(e) => e,
        Err(e) => return super::fail(&e, super::start_error_code(&e)),
    };
    let mut report = match check(&engine, &options, args.json) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if args.repair && !report.all_good() {
        let mut at_commit = options.clone();
        at_commit.revision = report.commit.clone();
        if !args.json {
            eprintln!(
                "repairing {} missing and {} damaged file(s) from {}",
                report.missing, report.damaged, options.endpoint
            );
        }
        let pulled = Pull::start(&engine, at_commit).and_then(Pull::finish);
        if let Err(e) = pulled {
            return super::fail(&e, hub_error_code(&e));
        }
        report = match check(&engine, &options, args.json) {
            Ok(r) => r,
            Err(code) => return code,
        };
    }
    if args.json {
        super::print_json(&report);
    } else {
        print_summary(&report);
    }
    if report.all_good() { 0 } else { exit::DAMAGED }
}

/// Verifies, with a progress bar on a terminal.
fn check(
    engine: &Engine,
    options: &ferry::hub::PullOptions,
    json: bool,
) -> Result<VerifyReport, u8> {
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("verifying {bytes} {binary_bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar
    });
    let result = verify(engine, options, &mut |n| {
        if let Some(b) = &bar {
            b.inc(n);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result.map_err(|e| super::fail(&e, hub_error_code(&e)))
}

fn print_summary(r: &VerifyReport) {
    for f in r.files.iter().filter(|f| f.state != FileState::Good) {
        let state = match f.state {
            FileState::Missing => "missing",
            _ => "damaged",
        };
        match &f.detail {
            Some(d) => println!("{state:8} {} ({d})", super::escape(&f.path)),
            None => println!("{state:8} {}", super::escape(&f.path)),
        }
    }
    println!(
        "{} at {}: {} good, {} missing, {} damaged ({} hashed in {:.1} s, listing {})",
        r.repo,
        &r.commit[..12.min(r.commit.len())],
        r.good,
        r.missing,
        r.damaged,
        ferry::units::human_bytes(r.bytes_hashed),
        r.seconds,
        r.listing
    );
}
