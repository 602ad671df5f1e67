//! `ferry gc`: removes what interrupted pulls left that no run resumes any more — ferry's own
//! partial files (`*.ferry-partial`), resume journals (`.ferry/*.journal`) and temporary files
//! (`*.ferry-tmp-*`) — once they are older than an age.
//!
//! A repo whose journal folder is locked (a pull is running there) is skipped whole and
//! reported. Only ferry's own names are removed, never huggingface_hub's (`*.incomplete`,
//! `.locks/`), never a file a listing names. No symlink is followed: directories are entered
//! only when they are directories (not links to one), and a name is removed with `unlinkat`,
//! which removes a link, not what it points to. Not here: verifying files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::error::HubError;
use super::layout::Layout;
use super::pull::{PARTIAL_SUFFIX, SWARM_SUFFIX};
use crate::backend::nofollow::Dir;

/// Directory levels walked below a repo folder or local dir (a repo's paths are not deeper).
const MAX_DEPTH: usize = 64;

/// What [`gc`] removed (or, with `dry_run`, would remove).
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// The files removed.
    pub removed: Vec<PathBuf>,
    /// Their bytes (allocated on disk).
    pub bytes: u64,
    /// Repos skipped because a pull holds their lock.
    pub busy: Vec<PathBuf>,
    /// Whether nothing was removed on purpose (`--dry-run`).
    pub dry_run: bool,
}

/// Removes ferry's leftovers older than `older_than` in `layout` (every repo of a cache, or one
/// local dir). With `dry_run`, only reports them.
pub fn gc(layout: &Layout, older_than: Duration, dry_run: bool) -> Result<GcReport, HubError> {
    let cutoff = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| HubError::Io { op, path, source }
    };
    match layout {
        Layout::Cache(cache) => {
            let root = Dir::open(cache).map_err(io("open directory", cache))?;
            let mut names: Vec<_> = std::fs::read_dir(cache)
                .map_err(io("read directory", cache))?
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name())
                .filter(|n| {
                    let n = n.to_string_lossy();
                    ["models--", "datasets--", "spaces--"]
                        .iter()
                        .any(|p| n.starts_with(p))
                })
                .collect();
            names.sort();
            for name in names {
                let Ok(repo) = root.beneath(Path::new(&name), false) else {
                    continue;
                };
                clean_repo(&repo, Path::new(".ferry"), cutoff, &mut report);
            }
        }
        Layout::LocalDir(dir) => {
            let root = Dir::open(dir).map_err(io("open directory", dir))?;
            clean_repo(
                &root,
                Path::new(".cache/huggingface/ferry"),
                cutoff,
                &mut report,
            );
        }
    }
    Ok(report)
}

/// Cleans one repo folder (or local dir) under its journal folder's lock.
fn clean_repo(repo: &Dir, journal_rel: &Path, cutoff: SystemTime, report: &mut GcReport) {
    // Held until the end: a pull starting meanwhile waits on it (it reports busy at once).
    let lock = match repo.beneath(journal_rel, false) {
        Ok(journal) => {
            match rustix::fs::flock(
                journal.as_fd(),
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
            ) {
                Ok(()) => Some(journal),
                Err(_) => {
                    report.busy.push(repo.path().to_path_buf());
                    return;
                }
            }
        }
        Err(_) => None,
    };
    walk(repo, 0, cutoff, report);
    if let Some(journal) = lock {
        sweep(&journal, cutoff, report, |n| n.ends_with(".journal"));
        if !report.dry_run {
            // Removed only when empty; the lock goes with the descriptor.
            let _ = std::fs::remove_dir(journal.path());
        }
    }
}

/// Removes ferry's partial and temporary files in `dir` and below.
fn walk(dir: &Dir, depth: usize, cutoff: SystemTime, report: &mut GcReport) {
    sweep(dir, cutoff, report, |n| {
        n.ends_with(PARTIAL_SUFFIX) || n.ends_with(SWARM_SUFFIX) || n.contains(".ferry-tmp-")
    });
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir.path()) else {
        return;
    };
    let mut subdirs: Vec<_> = entries
        .flatten()
        // `file_type` does not follow a symlink: a link to a directory is not entered.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name())
        .collect();
    subdirs.sort();
    for name in subdirs {
        if let Ok(sub) = dir.beneath(Path::new(&name), false) {
            walk(&sub, depth + 1, cutoff, report);
        }
    }
}

/// Removes the names in `dir` that `pick` chooses and that were last modified before `cutoff`.
fn sweep(dir: &Dir, cutoff: SystemTime, report: &mut GcReport, pick: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir.path()) else {
        return;
    };
    let mut names: Vec<_> = entries
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| pick(&n.to_string_lossy()))
        .collect();
    names.sort();
    for name in names {
        let Ok(Some(st)) = dir.stat(&name) else {
            continue;
        };
        let modified = SystemTime::UNIX_EPOCH
            + Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32);
        if modified >= cutoff {
            continue;
        }
        let path = dir.join(&name);
        if report.dry_run || dir.unlink(&name).is_ok() {
            report.bytes += st.st_blocks as u64 * 512;
            report.removed.push(path);
        }
    }
}

/// Parses `30m`, `12h`, `7d`, `90s` or `0` into a duration.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid age {s:?} (e.g. 90s, 30m, 12h, 7d)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid age unit in {s:?} (use s, m, h or d)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("age {s:?} out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("0"), Ok(Duration::ZERO));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_age("7").is_err());
        assert!(parse_age("1w").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }
}
