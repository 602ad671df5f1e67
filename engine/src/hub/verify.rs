//! `ferry verify`: re-hashes a mirrored snapshot (a cache or a local dir) against the listing it
//! came from, and says of each file whether it is good, missing or damaged.
//!
//! The commit is the one the revision's ref names (or the revision itself, a commit; in a local
//! dir, the commit its metadata names). The listing is the one kept beside the mirror
//! (`trees/COMMIT.json`, [`super::trees`]), else the endpoint's. Every file is hashed, marks are
//! not trusted; a good one is marked anew, so a later pull skips it. Repairing is a pull of the
//! same commit: it fetches exactly what is not good. Not here: fetching ([`super::Pull`]).

use std::time::Instant;

use serde::Serialize;

use super::error::HubError;
use super::layout::Place;
use super::pull::PullOptions;
use super::remote::list_somewhere;
use super::repo::is_commit;
use crate::engine::Engine;

/// What became of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// Present, and its bytes hash to the listed digest.
    Good,
    /// Not in the mirror.
    Missing,
    /// Present with other bytes, another size, or in another form (a link elsewhere).
    Damaged,
}

/// One file's verdict.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct FileCheck {
    /// The repo path.
    pub path: String,
    /// Its state.
    pub state: FileState,
    /// Why it is missing or damaged, when there is more to say.
    pub detail: Option<String>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The repo id.
    pub repo: String,
    /// The commit checked.
    pub commit: String,
    /// Where the listing came from: `kept` (beside the mirror) or `endpoint`.
    pub listing: &'static str,
    /// Every file of the listing, in path order.
    pub files: Vec<FileCheck>,
    /// Files good, missing and damaged.
    pub good: usize,
    /// Files missing.
    pub missing: usize,
    /// Files damaged.
    pub damaged: usize,
    /// Bytes read and hashed.
    pub bytes_hashed: u64,
    /// Wall time.
    pub seconds: f64,
}

impl VerifyReport {
    /// True when every file is good.
    pub fn all_good(&self) -> bool {
        self.missing == 0 && self.damaged == 0
    }
}

/// Verifies the snapshot `options` names (its repo, type, revision and layout); the endpoint
/// of `options` is asked for the listing only when none is kept beside the mirror. `hashed` is
/// told each step's bytes (for progress).
pub fn verify(
    engine: &Engine,
    options: &PullOptions,
    hashed: &mut dyn FnMut(u64),
) -> Result<VerifyReport, HubError> {
    let started = Instant::now();
    super::repo::check_revision(&options.revision).map_err(HubError::Usage)?;
    let place = Place::new(&options.layout, &options.repo, options.kind);
    let rev = options.revision.to_ascii_lowercase();
    let commit = if is_commit(&rev) {
        Some(rev)
    } else {
        place
            .read_ref(&options.revision)
            .or_else(|| place.local_commit())
    };
    let kept = match &commit {
        Some(c) => place.read_trees(c).map_err(|e| HubError::BadListing {
            repo: options.repo.to_string(),
            detail: e,
        })?,
        None => None,
    };
    let (commit, files, listing) = match (commit, kept) {
        (Some(c), Some(files)) => (c, files, "kept"),
        (commit, _) => {
            // Pinned to the commit the mirror holds, when it is known.
            let mut asked = options.clone();
            if let Some(c) = &commit {
                asked.revision = c.clone();
            }
            let (listed_commit, files) = list_somewhere(engine, &asked)?;
            (commit.unwrap_or(listed_commit), files, "endpoint")
        }
    };
    let mut checks = Vec::with_capacity(files.len());
    let mut bytes_hashed = 0;
    for f in &files {
        let (state, detail) = place.check(&commit, f, &mut |n| {
            bytes_hashed += n;
            hashed(n);
        });
        checks.push(FileCheck {
            path: f.path.clone(),
            state,
            detail,
        });
    }
    checks.sort_by(|a, b| a.path.cmp(&b.path));
    let count = |s: FileState| checks.iter().filter(|c| c.state == s).count();
    Ok(VerifyReport {
        repo: options.repo.to_string(),
        good: count(FileState::Good),
        missing: count(FileState::Missing),
        damaged: count(FileState::Damaged),
        commit,
        listing,
        files: checks,
        bytes_hashed,
        seconds: started.elapsed().as_secs_f64(),
    })
}
