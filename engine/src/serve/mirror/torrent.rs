//! A mirror's torrents (`--upstream` with `--torrents`): the torrent of a commit as anyone may
//! read it, built from the mirror's cache once every file of the commit is there.
//!
//! Invariant: only what the upstream lists to a caller without a credential gets a torrent, so
//! a swarm never carries a gated or private file (BitTorrent peers and web seed requests carry
//! no token); a commit not wholly cached gets 409 and no fill is started. Not here: hashing and
//! the metainfo (`../torrents.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::Shared;
use super::super::catalog::{FileEntry, Repo, Snapshot};
use super::super::handler::{Request, Response};
use super::super::torrents::{Format, not_published};
use super::{Caller, Mirror, remote_file};
use crate::hub::RepoType;
use crate::hub::repo::RepoId;

impl Mirror {
    /// `/api/{type}s/{repo}/torrent/{rev}` or `/magnet/{rev}`.
    pub(super) fn torrent(
        &self,
        ctx: &Shared,
        req: &Request<'_>,
        (kind, repo, rev): (RepoType, &RepoId, &str),
        format: Format,
    ) -> Response {
        let Some(publisher) = &ctx.publisher else {
            return not_published();
        };
        let anyone = Caller {
            secret: None,
            class: None,
        };
        let snap = match self.snapshot(&anyone, kind, repo, rev) {
            Ok(snap) => snap,
            Err(r) => return r,
        };
        let mut files = BTreeMap::new();
        let mut missing = Vec::new();
        for (path, entry) in &snap.files {
            let blob = self
                .upstream
                .blob_path(kind, repo, &remote_file(path, entry));
            if self.open_blob(ctx, &blob, entry.size).is_none() {
                missing.push(path.as_str());
                continue;
            }
            files.insert(
                path.clone(),
                FileEntry {
                    disk: Some(blob),
                    ..entry.clone()
                },
            );
        }
        if let Some(first) = missing.first() {
            return Response::error(
                409,
                Some("TorrentUnavailable"),
                &format!(
                    "{} of the {} files of commit {} are not in this mirror's cache yet \
                     ({first}, ...): fetch the commit through it first",
                    missing.len(),
                    snap.files.len(),
                    snap.commit
                ),
            );
        }
        let local = Arc::new(Snapshot::new(
            snap.commit.clone(),
            files,
            snap.last_modified,
        ));
        publisher.answer(req.base, &shell(kind, repo), &local, format)
    }
}

/// A repo as the publisher names it (kind and id).
pub(super) fn shell(kind: RepoType, repo: &RepoId) -> Repo {
    Repo {
        kind,
        id: repo.to_string(),
        refs: Default::default(),
        snapshots: Default::default(),
    }
}
