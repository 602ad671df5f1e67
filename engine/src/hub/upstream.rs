//! The upstream of a pull-through mirror (`ferry serve --upstream`): revisions resolved and
//! listings read from it with the *caller's* credential, and blobs fetched from it into the
//! huggingface_hub cache layout with the *mirror's* own token, through the engine (ranged,
//! verified, durable, resumable from the repo's journal), exactly as `ferry pull` writes them.
//!
//! Invariants: the mirror's token is only ever sent to fetch bytes, never to answer a
//! caller's question (so it never decides who may read); a blob appears under its final name
//! only once its hash matched; every listing passes the same hostile-listing checks as a
//! pull's. Not here: caching answers, serving bytes while they land (`serve/mirror/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use url::Url;

use super::error::HubError;
use super::layout::{Layout, Place};
use super::listing::RemoteFile;
use super::pull::{PARTIAL_SUFFIX, PullOptions};
use super::remote::{api_json_somewhere, file_url, list_at_somewhere, resolve_somewhere};
use super::repo::{RepoId, RepoType};
use crate::download::Watch;
use crate::engine::Engine;
use crate::job::{GetItem, Job};
use crate::journal::{self, Journal};
use crate::net::target::Secret;
use crate::verify::HashAlgorithm;

/// One upstream (with its mirrors) and the cache the mirror fills from it.
#[derive(Debug)]
pub(crate) struct Upstream {
    engine: Engine,
    endpoint: Url,
    mirrors: Vec<Url>,
    /// The mirror's own credential: sent with fills only.
    token: Option<Secret>,
    layout: Layout,
    /// One resume journal per repo folder, held (and locked) for the server's life.
    journals: Mutex<HashMap<PathBuf, Arc<Journal>>>,
}

impl Upstream {
    pub(crate) fn new(
        engine: Engine,
        endpoint: Url,
        mirrors: Vec<Url>,
        token: Option<Secret>,
        cache: &Path,
    ) -> Upstream {
        Upstream {
            engine,
            endpoint,
            mirrors,
            token,
            layout: Layout::Cache(cache.to_path_buf()),
            journals: Mutex::new(HashMap::new()),
        }
    }

    /// The mirror's own token (for what the operator vouched for: a signed link).
    pub(crate) fn own_token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    fn options(
        &self,
        kind: RepoType,
        repo: &RepoId,
        rev: &str,
        caller: Option<&Secret>,
    ) -> PullOptions {
        let mut o = PullOptions::new(repo.clone(), self.layout.clone(), self.endpoint.clone())
            .kind(kind)
            .revision(rev);
        o.mirrors.clone_from(&self.mirrors);
        o.authorization = caller.cloned();
        o
    }

    /// The commit `rev` names, asked with the caller's credential; kept as the cache's ref
    /// (`refs/REV`), as a pull keeps it, so the cache serves offline too.
    pub(crate) fn resolve(
        &self,
        caller: Option<&Secret>,
        kind: RepoType,
        repo: &RepoId,
        rev: &str,
    ) -> Result<String, HubError> {
        let commit = resolve_somewhere(&self.engine, &self.options(kind, repo, rev, caller))?;
        let place = Place::new(&self.layout, repo, kind);
        if let Err(e) = place
            .prepare(&[])
            .and_then(|()| place.set_ref(rev, &commit))
        {
            tracing::warn!("cannot keep the ref {rev} of {repo}: {e}");
        }
        Ok(commit)
    }

    /// Every file of `repo` at `commit`, asked with the caller's credential and checked as a
    /// pull checks a listing. The listing is kept beside the cache (`trees/COMMIT.json`) as a
    /// pull keeps it.
    pub(crate) fn list(
        &self,
        caller: Option<&Secret>,
        kind: RepoType,
        repo: &RepoId,
        commit: &str,
    ) -> Result<Vec<RemoteFile>, HubError> {
        let options = self.options(kind, repo, commit, caller);
        let files = list_at_somewhere(&self.engine, &options, commit)?;
        let place = Place::new(&self.layout, repo, kind);
        let kept = place
            .prepare(&[])
            .and_then(|()| place.write_trees(commit, &files))
            .and_then(|()| match caller {
                None => place.mark_public(),
                Some(_) => Ok(()),
            });
        if let Err(e) = kept {
            tracing::warn!("cannot keep the listing of {repo} at {commit}: {e}");
        }
        Ok(files)
    }

    /// The repo's branches, tags (and with `include_prs`, pull requests) as the upstream lists
    /// them to the caller (`GET .../refs`).
    pub(crate) fn refs(
        &self,
        caller: Option<&Secret>,
        kind: RepoType,
        repo: &RepoId,
        include_prs: bool,
    ) -> Result<serde_json::Value, HubError> {
        let rest = if include_prs {
            "refs?include_prs=1"
        } else {
            "refs"
        };
        api_json_somewhere(
            &self.engine,
            &self.options(kind, repo, "main", caller),
            rest,
        )
    }

    /// Offline: the commit `rev` names in the cache (`refs/REV`, or `rev` itself when it is a
    /// commit whose listing is kept).
    pub(crate) fn cached_commit(&self, kind: RepoType, repo: &RepoId, rev: &str) -> Option<String> {
        let place = Place::new(&self.layout, repo, kind);
        if super::repo::is_commit(rev) {
            let commit = rev.to_ascii_lowercase();
            return place.trees_path(&commit).is_file().then_some(commit);
        }
        place.read_ref(rev)
    }

    /// Offline: the listing of `commit` kept in the cache; `Ok(None)` when there is none.
    pub(crate) fn cached_list(
        &self,
        kind: RepoType,
        repo: &RepoId,
        commit: &str,
    ) -> Result<Option<Vec<RemoteFile>>, String> {
        Place::new(&self.layout, repo, kind).read_trees(commit)
    }

    /// Whether the upstream ever listed `repo` to a caller without a token.
    pub(crate) fn is_public(&self, kind: RepoType, repo: &RepoId) -> bool {
        Place::new(&self.layout, repo, kind).is_public()
    }

    /// Where `f`'s blob lies in the cache (it may not be there).
    pub(crate) fn blob_path(&self, kind: RepoType, repo: &RepoId, f: &RemoteFile) -> PathBuf {
        Place::new(&self.layout, repo, kind).bytes_path(f)
    }

    /// Starts fetching `f` of `repo` at `commit` into its blob, `watch` told of its bytes as
    /// they land. The job's result says whether the blob is in place (verified).
    pub(crate) fn fetch(
        &self,
        kind: RepoType,
        repo: &RepoId,
        commit: &str,
        f: &RemoteFile,
        watch: Arc<dyn Watch>,
    ) -> Result<Job, HubError> {
        let place = Place::new(&self.layout, repo, kind);
        place.prepare(std::slice::from_ref(f))?;
        let journal = self.journal(&place, repo)?;
        let options = self.options(kind, repo, commit, None);
        let item = self.mirrors.iter().fold(
            GetItem::new(
                file_url(&self.endpoint, &options, commit, &f.path),
                place.bytes_path(f),
            )
            .beneath(place.base())
            .partial_suffix(PARTIAL_SUFFIX)
            .size(f.size)
            .authorization(self.token.clone())
            .watch(watch)
            .once(),
            |item, m| item.mirror(file_url(m, &options, commit, &f.path)),
        );
        let item = match f.algorithm {
            HashAlgorithm::Sha256 => item.sha256(f.etag.clone()),
            HashAlgorithm::GitSha1 => item.git_sha1(f.etag.clone()),
        };
        Ok(self.engine.get_many_journaled([item], Some(journal))?)
    }

    /// `f`'s fill put its blob in place: its repo's journal forgets it, so that the journal
    /// holds the fills in flight only.
    pub(crate) fn filled(&self, place: &Place, f: &RemoteFile) {
        let (root, rel) = place.journal_dir();
        let journal = self
            .journals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&root.join(&rel))
            .cloned();
        if let Some(j) = journal {
            j.done(&place.bytes_path(f));
        }
    }

    /// Where `repo`'s files go in the cache.
    pub(crate) fn place(&self, kind: RepoType, repo: &RepoId) -> Place {
        Place::new(&self.layout, repo, kind)
    }

    /// The repo folder's resume journal, opened once.
    fn journal(&self, place: &Place, repo: &RepoId) -> Result<Arc<Journal>, HubError> {
        let (root, rel) = place.journal_dir();
        let key = root.join(&rel);
        let mut journals = self.journals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = journals.get(&key) {
            return Ok(Arc::clone(j));
        }
        let j = Journal::open(root, &rel, "mirror.journal").map_err(|e| match e {
            journal::OpenError::Busy(dir) => HubError::Busy { dir },
            journal::OpenError::Io { op, path, source } => HubError::Io { op, path, source },
        })?;
        tracing::debug!(repo = %repo, "opened the mirror's journal");
        // Fills that put their blob in place before a crash are over.
        j.done_where(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
        let j = Arc::new(j);
        journals.insert(key, Arc::clone(&j));
        Ok(j)
    }
}

/// Makes `f` (whose blob is in place) visible in the snapshot of `commit`, as a pull does.
pub(crate) fn publish(place: &Place, commit: &str, f: &RemoteFile) {
    if let Err(e) = place.publish(commit, f) {
        tracing::warn!("cannot link {} into snapshot {commit}: {e}", f.path);
    }
}
