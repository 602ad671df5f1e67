//! The progress bar of a running job, on a terminal only: bytes over all its files, rate, ETA,
//! and `n/m files` when there are several; for an HLS stream, segments done over segments, with
//! bytes and rate beside. Nothing here decides anything about the job.

use std::time::Duration;

use ferry::{Event, Job, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Follows `job` until it ends, drawing a bar on stderr; `label` goes before the bar.
pub(crate) fn follow(job: &mut Job, label: &str) {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let template = format!(
        "{label}{{spinner}} {{bytes}}/{{total_bytes}} [{{wide_bar}}] {{binary_bytes_per_sec}} ETA {{eta}} {{msg}}"
    );
    let style =
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    for event in job.events(Duration::from_millis(100)) {
        if let Event::Progress(p) = event {
            if let Some(total) = p.total {
                bar.set_length(total);
            }
            bar.set_position(p.done);
            if p.files > 1 {
                bar.set_message(format!("{}/{} files", p.files_done, p.files));
            }
        }
    }
    bar.finish_and_clear();
}

/// A bar over an HLS stream's segments rather than its bytes (segment sizes are not known up
/// front, their count is), with bytes and rate beside it and the ETA by segments; fed progress
/// snapshots of each job in turn.
pub(crate) struct SegmentBar {
    bar: ProgressBar,
    started: std::time::Instant,
}

impl SegmentBar {
    pub(crate) fn new() -> SegmentBar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let template = "{spinner} {pos}/{len} segments [{wide_bar}] {msg} ETA {eta}";
        let style =
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        SegmentBar {
            bar,
            started: std::time::Instant::now(),
        }
    }

    pub(crate) fn tick(&self, p: &Progress) {
        self.bar.set_length(p.files);
        self.bar.set_position(p.files_done);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "{} ({}/s)",
            ferry::units::human_bytes(p.done),
            ferry::units::human_bytes((p.done as f64 / secs) as u64)
        ));
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A bar over what a pull's BitTorrent swarm brought, then what seeding sent; fed its progress.
pub(crate) fn swarm_bar() -> impl Fn(&ferry::hub::SwarmProgress) + Send + Sync {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let template =
        "swarm {spinner} {bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec} ETA {eta} {msg}";
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    move |p: &ferry::hub::SwarmProgress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
        let up = ferry::units::human_bytes(p.uploaded);
        bar.set_message(if p.seeding {
            format!("seeding: {up} sent, {} peer(s)", p.peers)
        } else {
            format!("{} peer(s), {up} sent", p.peers)
        });
        if p.done >= p.total && !p.seeding {
            bar.finish_and_clear();
        }
    }
}
