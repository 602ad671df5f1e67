//! `ferry serve --upstream`: a pull-through mirror. What a client asks of a repo is answered
//! from the upstream's listing at the commit its revision names (asked once, with the
//! caller's own credential, and kept: [`Memo`]); a file's bytes come from the cache when its
//! verified blob is there, else from a fill ([`Fills`]) that fetches the blob once through the
//! engine while every client asking for it is sent the bytes as they land.
//!
//! Invariants: API answers are built by the same code as for a local cache (`handler.rs`),
//! from the listing, so no upstream field (Xet hashes, upstream URLs) reaches a client; a
//! caller gets a file only through a listing fetched with the caller's own credential (kept
//! for [`LISTING_TTL_TOKEN`] when the caller has one), while fills use the mirror's token; a
//! blob is published under its name only once its hash matched; an upstream error is passed
//! on with the Hub's status and code, never kept. Not here: `/commits` (answered 501), HTTP/3;
//! eviction (`index.rs`), metrics (`metrics.rs`), signed links (`../signed.rs`).

mod fill;
mod index;
mod memo;
mod metrics;
mod torrent;

use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

pub(crate) use self::fill::{Fill, Reader, Ready};
use self::fill::{Fills, Joined};
use self::index::Index;
pub(crate) use self::index::Pin;
use self::memo::Memo;
use self::metrics::{Class, Metrics};
use super::Shared;
use super::catalog::{FileEntry, Repo, Snapshot};
use super::handler::{
    self, ACTIONS, Body, Request, Response, bad_path, entry_not_found, not_found, not_implemented,
    post_not_allowed, repo_not_found, revision_not_found,
};
use super::route::{Resource, decode, parse_target, repo_id, valid_repo_path};
use crate::hub::HubError;
use crate::hub::RepoType;
use crate::hub::listing::RemoteFile;
use crate::hub::repo::{RepoId, is_commit};
use crate::hub::upstream::Upstream;
use crate::net::target::Secret;
use crate::verify::HashAlgorithm;

/// How long a branch or tag is taken to name the commit the upstream last said.
const REF_TTL: Duration = Duration::from_secs(60);
/// How long a listing asked without a credential is kept (a commit's files never change;
/// this bounds how long a repo that turned private stays readable here).
const LISTING_TTL: Duration = Duration::from_secs(3600);
/// How long a listing asked with a caller's credential vouches for that caller's access.
const LISTING_TTL_TOKEN: Duration = Duration::from_secs(300);
/// Keys kept per memo.
const MEMO_CAP: usize = 4096;

/// Who asks: the credential to ask the upstream with, and a digest of it to key what the
/// upstream answered that caller (the credential itself is never kept as a key or logged).
struct Caller {
    secret: Option<Secret>,
    class: Option<[u8; 32]>,
}

impl Caller {
    fn of(req: &Request<'_>) -> Result<Caller, Response> {
        let Some(value) = req.authorization else {
            return Ok(Caller {
                secret: None,
                class: None,
            });
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Response::error(401, None, "Only bearer tokens are accepted"))?;
        let secret = Secret::bearer(token);
        secret
            .check()
            .map_err(|_| Response::error(400, None, "Malformed Authorization header"))?;
        Ok(Caller {
            secret: Some(secret),
            class: Some(sha2::Sha256::digest(token.as_bytes()).into()),
        })
    }
}

/// (caller, kind, repo, revision or commit).
type Key = (Option<[u8; 32]>, RepoType, String, String);

/// The mirror: its upstream, what it has been told, and its fills.
#[derive(Debug)]
pub(crate) struct Mirror {
    upstream: Arc<Upstream>,
    commits: Memo<Key, String>,
    listings: Memo<Key, Arc<Snapshot>>,
    /// `/refs` answers, as the upstream gave them to each caller.
    refs: Memo<Key, Arc<serde_json::Value>>,
    fills: Arc<Fills>,
    metrics: Arc<Metrics>,
    /// With `--max-size`: the blobs kept, by last use.
    index: Option<Arc<Index>>,
    /// Offline: what is served comes from the cache only.
    offline: Option<Offline>,
    /// After the upstream rate-limited the mirror: no question is sent to it before then.
    backoff: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long the whole mirror stops asking the upstream after it answered 429 (after the
/// client's own waits as `Retry-After` said, which `hub/api.rs` does first).
const BACKOFF: Duration = Duration::from_secs(30);

/// What an offline mirror serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offline {
    /// Repos the upstream listed to a caller without a token.
    Public,
    /// Every repo in the cache (the operator's choice: no caller can be checked offline).
    All,
}

impl Mirror {
    /// A mirror of `upstream` into the cache at `root` (canonical), bounded to `max_size`
    /// bytes of blobs when given (the index of what it keeps is opened, not rebuilt).
    pub(crate) fn new(
        upstream: Upstream,
        root: &std::path::Path,
        (max_size, offline): (Option<u64>, Option<Offline>),
    ) -> std::io::Result<Mirror> {
        let metrics = Arc::new(Metrics::new());
        let index = match max_size {
            Some(max) => Some(Arc::new(
                Index::open(root, max)?.counting(metrics.evictions.clone()),
            )),
            None => None,
        };
        Ok(Mirror {
            upstream: Arc::new(upstream),
            commits: Memo::new(MEMO_CAP),
            listings: Memo::new(MEMO_CAP),
            refs: Memo::new(MEMO_CAP),
            fills: Arc::new(Fills::new(Arc::clone(&metrics))),
            metrics,
            index,
            offline,
            backoff: std::sync::Mutex::new(None),
        })
    }

    /// `GET /metrics`: the counters, and the gauges as they are now.
    fn metrics(&self) -> Response {
        let (running, blocked) = self.fills.counts();
        self.metrics.fills_in_flight.set(running as i64);
        self.metrics.waiting_readers.set(blocked as i64);
        if let Some(index) = &self.index {
            self.metrics.cache_bytes.set(index.bytes() as i64);
        }
        Response {
            status: 200,
            headers: vec![(
                "Content-Type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8".into(),
            )],
            body: Body::Bytes(self.metrics.encode().into_bytes()),
        }
    }

    /// Answers `req`; `signed` when it came with a valid signed link, which the operator
    /// made: its file is listed with the mirror's own token.
    pub(crate) fn handle(&self, ctx: &Shared, req: &Request<'_>, signed: bool) -> Response {
        let started = std::time::Instant::now();
        let response = self.answer(ctx, req, signed);
        // The access log: no query (a signed link's signature), no credential.
        tracing::info!(
            target: "ferry::access",
            method = req.method,
            path = req.target.split('?').next().unwrap_or_default(),
            status = response.status,
            bytes = response.body_len(),
            body = match &response.body {
                Body::File { .. } => "cache",
                Body::Filling { .. } => "fill",
                Body::Bytes(_) => "json",
                Body::Announced { .. } => "head",
            },
            caller = if signed {
                "signed link"
            } else if req.authorization.is_some() {
                "token"
            } else {
                "anonymous"
            },
            ms = started.elapsed().as_millis() as u64,
        );
        response
    }

    fn answer(&self, ctx: &Shared, req: &Request<'_>, signed: bool) -> Response {
        let path = req.target.split('?').next().unwrap_or_default();
        if path == "/metrics" && req.method != "POST" {
            self.count("metrics");
            return self.metrics();
        }
        let caller = if signed {
            Caller {
                secret: self.upstream.own_token().cloned(),
                class: Some(sha2::Sha256::digest(b"ferry signed link").into()),
            }
        } else {
            match Caller::of(req) {
                Ok(c) => c,
                Err(r) => return r,
            }
        };
        match parse_target(req.target) {
            Some((Resource::Api { kind, segs }, query)) => {
                self.count("api");
                self.api(ctx, req, &caller, kind, &segs, query)
            }
            Some((Resource::File { .. }, _)) if req.method == "POST" => post_not_allowed(),
            Some((Resource::File { kind, segs }, _)) => {
                self.count("file");
                self.resolve(ctx, req, &caller, kind, &segs)
            }
            None => {
                self.count("other");
                not_found()
            }
        }
    }

    fn count(&self, class: &str) {
        self.metrics.requests.get_or_create(&Class::of(class)).inc();
    }

    /// The snapshot `rev` names, as the upstream lists it to `caller`.
    fn snapshot(
        &self,
        caller: &Caller,
        kind: RepoType,
        repo: &RepoId,
        rev: &str,
    ) -> Result<Arc<Snapshot>, Response> {
        if let Some(offline) = self.offline {
            return self.cached_snapshot(offline, kind, repo, rev);
        }
        let commit = if is_commit(rev) {
            rev.to_ascii_lowercase()
        } else {
            let key = (caller.class, kind, repo.to_string(), rev.to_owned());
            self.commits
                .get(&key, REF_TTL, || {
                    self.backing_off()?;
                    self.metrics.upstream_requests.inc();
                    self.upstream
                        .resolve(caller.secret.as_ref(), kind, repo, rev)
                })
                .map_err(|e| self.upstream_error(&e))?
                .0
        };
        let key = (caller.class, kind, repo.to_string(), commit.clone());
        let ttl = if caller.secret.is_some() {
            LISTING_TTL_TOKEN
        } else {
            LISTING_TTL
        };
        let (snap, fetched) = self
            .listings
            .get(&key, ttl, || {
                self.backing_off()?;
                self.metrics.upstream_requests.inc();
                let files = self
                    .upstream
                    .list(caller.secret.as_ref(), kind, repo, &commit)?;
                Ok::<_, HubError>(Arc::new(snapshot(commit.clone(), &files)))
            })
            .map_err(|e| self.upstream_error(&e))?;
        if fetched {
            tracing::info!(
                kind = kind.plural(), repo = %repo, commit = %snap.commit,
                files = snap.files.len(), "listed from the upstream"
            );
        }
        Ok(snap)
    }

    /// `GET .../refs`: the upstream's answer to this caller, kept as long as a branch is taken
    /// to name its commit.
    fn refs(&self, caller: &Caller, kind: RepoType, repo: &RepoId, query: &str) -> Response {
        let prs = super::route::query_flag(query, "include_prs");
        let key = (
            caller.class,
            kind,
            repo.to_string(),
            format!("refs include_prs={prs}"),
        );
        let got = self.refs.get(&key, REF_TTL, || {
            self.backing_off()?;
            self.metrics.upstream_requests.inc();
            self.upstream
                .refs(caller.secret.as_ref(), kind, repo, prs)
                .map(Arc::new)
        });
        match got {
            Ok((v, _)) => Response::json(200, &v),
            Err(e) => self.upstream_error(&e),
        }
    }

    /// A rate limit, while the mirror backs off after the upstream's 429.
    fn backing_off(&self) -> Result<(), HubError> {
        let until = *self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        match until {
            Some(t) if t > std::time::Instant::now() => Err(HubError::RateLimited {
                url: "the upstream".into(),
                attempts: 0,
            }),
            _ => Ok(()),
        }
    }

    /// Offline: the snapshot `rev` names from the cache's refs and kept listings.
    fn cached_snapshot(
        &self,
        offline: Offline,
        kind: RepoType,
        repo: &RepoId,
        rev: &str,
    ) -> Result<Arc<Snapshot>, Response> {
        if offline == Offline::Public && !self.upstream.is_public(kind, repo) {
            // As the Hub answers a caller who may not see a repo.
            return Err(repo_not_found(kind, repo.as_str()));
        }
        let Some(commit) = self.upstream.cached_commit(kind, repo, rev) else {
            return Err(revision_not_found(rev));
        };
        let key = (None, kind, repo.to_string(), commit.clone());
        self.listings
            .get(&key, LISTING_TTL, || {
                match self.upstream.cached_list(kind, repo, &commit) {
                    Ok(Some(files)) => Ok(Arc::new(snapshot(commit.clone(), &files))),
                    Ok(None) => Err(revision_not_found(rev)),
                    Err(e) => {
                        tracing::warn!("offline: the kept listing of {repo} at {commit}: {e}");
                        Err(Response::error(
                            500,
                            None,
                            "The kept listing cannot be read",
                        ))
                    }
                }
            })
            .map(|(snap, _)| snap)
    }

    fn api(
        &self,
        ctx: &Shared,
        req: &Request<'_>,
        caller: &Caller,
        kind: RepoType,
        segs: &[&str],
        query: &str,
    ) -> Response {
        let Some((repo, rest)) = split_repo(segs, |rest| match rest {
            [] | [""] => true,
            [action, ..] => ACTIONS.contains(action) || *action == "xet-read-token",
        }) else {
            return not_found();
        };
        let shell = Repo {
            kind,
            id: repo.to_string(),
            refs: Default::default(),
            snapshots: Default::default(),
        };
        let posting = req.method == "POST";
        let rev_of = |raw: &[&str]| decode(&raw.join("/")).unwrap_or_default();
        if !posting
            && let [action, revs @ ..] = rest
            && let Some(format) = super::torrents::Format::of(action)
        {
            return self.torrent(ctx, req, (kind, &repo, &rev_of(revs)), format);
        }
        match rest {
            ["paths-info", revs @ ..] if posting => {
                match self.snapshot(caller, kind, &repo, &rev_of(revs)) {
                    Ok(snap) => handler::paths_info(&snap, req.body.unwrap_or_default()),
                    Err(r) => r,
                }
            }
            ["paths-info", ..] => {
                let mut r = Response::error(405, None, "Method Not Allowed");
                r.headers.push(("Allow", "POST".into()));
                r
            }
            _ if posting => post_not_allowed(),
            ["xet-read-token", ..] => Response::error(
                501,
                Some("XetNotAvailable"),
                "This mirror serves files over plain HTTP and has no Xet storage: download with the resolve URLs",
            ),
            [] | [""] => match self.snapshot(caller, kind, &repo, "main") {
                Ok(snap) => handler::info(&shell, &snap, query),
                Err(r) => r,
            },
            ["revision", revs @ ..] => match self.snapshot(caller, kind, &repo, &rev_of(revs)) {
                Ok(snap) => handler::info(&shell, &snap, query),
                Err(r) => r,
            },
            [action @ ("tree" | "treesize"), rev, path @ ..] => {
                let Some(rev) = decode(rev) else {
                    return bad_path();
                };
                let path = match decode(&path.join("/")) {
                    Some(p) if p.is_empty() || valid_repo_path(&p) => p,
                    _ => return bad_path(),
                };
                let snap = match self.snapshot(caller, kind, &repo, &rev) {
                    Ok(snap) => snap,
                    Err(r) => return r,
                };
                if *action == "tree" {
                    handler::tree(ctx, req, &shell, &snap, &rev, &path, query)
                } else {
                    match snap.size_under(&path) {
                        Some(size) => {
                            Response::json(200, &serde_json::json!({ "path": path, "size": size }))
                        }
                        None => entry_not_found(&snap.commit, &path),
                    }
                }
            }
            ["refs"] if self.offline.is_none() => self.refs(caller, kind, &repo, query),
            // As a plain serve answers: the one commit known of the revision, no history.
            ["commits", revs @ ..] => match self.snapshot(caller, kind, &repo, &rev_of(revs)) {
                Ok(snap) => handler::commits(&snap),
                Err(r) => r,
            },
            [action @ "refs", ..] => not_implemented(action),
            _ => not_found(),
        }
    }

    /// `/{prefix}{repo}/resolve/{rev}/{path}`.
    fn resolve(
        &self,
        ctx: &Shared,
        req: &Request<'_>,
        caller: &Caller,
        kind: RepoType,
        segs: &[&str],
    ) -> Response {
        let Some((repo, rest)) = split_repo(segs, |rest| rest.first() == Some(&"resolve")) else {
            return not_found();
        };
        let (Some(rev), Some(path)) = (
            rest.get(1).and_then(|r| decode(r)),
            decode(&rest.get(2..).unwrap_or_default().join("/")),
        ) else {
            return bad_path();
        };
        if !valid_repo_path(&path) {
            return bad_path();
        }
        let snap = match self.snapshot(caller, kind, &repo, &rev) {
            Ok(snap) => snap,
            Err(r) => return r,
        };
        let Some(entry) = snap.files.get(&path) else {
            // A pad file of the commit's torrent, asked by a web seed client without BEP 47.
            return ctx
                .publisher
                .as_ref()
                .and_then(|p| p.pad(req, &torrent::shell(kind, &repo), &snap, &path))
                .unwrap_or_else(|| entry_not_found(&snap.commit, &path));
        };
        let remote = remote_file(&path, entry);
        let blob = self.upstream.blob_path(kind, &repo, &remote);
        // Kept from eviction while the answer is sent, whether from the cache or a fill.
        let kept = self
            .index
            .as_ref()
            .and_then(|index| Some((index, index.key(&blob)?)));
        let pin = kept.as_ref().map(|(index, key)| index.pin(key.clone()));
        if let Some(file) = self.open_blob(ctx, &blob, entry.size) {
            if let (Some((index, key)), "GET") = (&kept, req.method) {
                index.used(key, entry.size);
            }
            return self.cached_answer(req, &snap.commit, entry, (file, pin));
        }
        if self.offline.is_some() {
            return Response::error(
                503,
                None,
                "This mirror is offline and does not have this file",
            );
        }
        if req.method == "HEAD" {
            // Answered from the listing; a HEAD starts no fill.
            return handler::file_answer(req, &snap.commit, entry, |_, len| Body::Announced {
                len,
            });
        }
        let commit = snap.commit.clone();
        let fetch: fill::Fetch = {
            let upstream = Arc::clone(&self.upstream);
            let (repo, commit, remote) = (repo.clone(), commit.clone(), remote.clone());
            Box::new(move |fill| {
                tracing::info!(repo = %repo, path = %remote.path, size = remote.size, "filling from the upstream");
                upstream
                    .fetch(kind, &repo, &commit, &remote, fill)
                    .map_err(|e| e.to_string())
            })
        };
        // The fill thread publishes the snapshot link once the blob is in place.
        let publish = self.publisher(kind, &repo, &commit, &remote);
        let joined = self.fills.join(
            (blob.clone(), entry.size),
            || self.open_blob(ctx, &blob, entry.size),
            fetch,
            publish,
        );
        match joined {
            Ok(Joined::Filling(fill)) => {
                self.metrics.misses.inc();
                handler::file_answer(req, &snap.commit, entry, |offset, len| Body::Filling {
                    fill,
                    offset,
                    len,
                    pin,
                })
            }
            Ok(Joined::InPlace(file)) => self.cached_answer(req, &snap.commit, entry, (file, pin)),
            Err(e) => {
                tracing::warn!(path = %path, error = %e, "cannot start a fill");
                Response::error(502, None, "Cannot fetch the file from the upstream")
            }
        }
    }

    /// The answer from a verified blob in the cache.
    fn cached_answer(
        &self,
        req: &Request<'_>,
        commit: &str,
        entry: &FileEntry,
        (file, pin): (std::fs::File, Option<Pin>),
    ) -> Response {
        let r = handler::file_answer(req, commit, entry, |offset, len| Body::File {
            file,
            offset,
            len,
            pin,
        });
        if req.method == "GET" && r.status / 100 == 2 {
            self.metrics.hits.inc();
            self.metrics.bytes_from_cache.inc_by(r.body_len());
        }
        r
    }

    /// The blob at `blob`, opened beneath the root following no symlink, when it is a file of
    /// `size` bytes (a blob is only ever renamed into place once verified).
    fn open_blob(&self, ctx: &Shared, blob: &std::path::Path, size: u64) -> Option<std::fs::File> {
        let file = handler::open_beneath(&ctx.root, blob).ok()?;
        let meta = file.metadata().ok()?;
        (meta.is_file() && meta.len() == size).then_some(file)
    }

    /// What the fill thread runs once `f`'s blob is in place: the snapshot link, so that the
    /// cache is one huggingface_hub (and a plain `ferry serve`) can read.
    fn publisher(
        &self,
        kind: RepoType,
        repo: &RepoId,
        commit: &str,
        f: &RemoteFile,
    ) -> Box<dyn FnOnce() + Send> {
        let place = self.upstream.place(kind, repo);
        let (commit, f) = (commit.to_owned(), f.clone());
        let kept = self.index.clone().and_then(|index| {
            let blob = index.key(&place.bytes_path(&f))?;
            let link = index.key(&place.file_path(&commit, &f))?;
            Some((blob, link, index))
        });
        let upstream = Arc::clone(&self.upstream);
        Box::new(move || {
            upstream.filled(&place, &f);
            crate::hub::upstream::publish(&place, &commit, &f);
            if let Some((blob, link, index)) = kept {
                index.added(&blob, f.size);
                index.linked(&blob, &link);
            }
        })
    }
}

/// The repo id at the start of `segs` (`org/name` or `name`) whose remaining segments
/// `fits`, and those segments.
fn split_repo<'s>(
    segs: &'s [&'s str],
    fits: impl Fn(&[&str]) -> bool,
) -> Option<(RepoId, &'s [&'s str])> {
    [2, 1].into_iter().find_map(|n| {
        let rest = segs.get(n..)?;
        if !fits(rest) {
            return None;
        }
        let id = RepoId::parse(&repo_id(&segs[..n])?).ok()?;
        Some((id, rest))
    })
}

/// The snapshot a listing describes (no file is on disk yet: bytes are looked up by blob).
fn snapshot(commit: String, files: &[RemoteFile]) -> Snapshot {
    let entries = files
        .iter()
        .filter_map(|f| Some((f.path.clone(), FileEntry::with_disk(None, f.size, &f.etag)?)))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Snapshot::new(commit, entries, now)
}

/// The listing's entry of `path` again (what a fill fetches).
fn remote_file(path: &str, f: &FileEntry) -> RemoteFile {
    RemoteFile {
        path: path.to_owned(),
        size: f.size,
        algorithm: if f.lfs.is_some() {
            HashAlgorithm::Sha256
        } else {
            HashAlgorithm::GitSha1
        },
        etag: f.etag().to_owned(),
        blob_id: Some(f.oid.clone()),
    }
}

impl Mirror {
    /// The upstream's refusal, as the Hub would say it to this caller; the upstream's address
    /// and the mirror's configuration are never named.
    fn upstream_error(&self, e: &HubError) -> Response {
        let class = match e {
            HubError::RepoNotFound { .. }
            | HubError::RevisionNotFound { .. }
            | HubError::EntryNotFound { .. } => "not_found",
            HubError::Gated { .. } | HubError::BadToken { .. } => "denied",
            HubError::RateLimited { attempts, .. } => {
                // A fresh 429 (not one of the mirror's own back-off): every caller waits.
                if *attempts > 0 {
                    *self.backoff.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(std::time::Instant::now() + BACKOFF);
                    tracing::warn!("the upstream rate-limits this mirror; backing off {BACKOFF:?}");
                }
                "rate_limited"
            }
            HubError::BadListing { .. } => "bad_listing",
            _ => "failed",
        };
        self.metrics
            .upstream_errors
            .get_or_create(&Class::of(class))
            .inc();
        hub_answer(e)
    }
}

/// [`Mirror::upstream_error`]'s answer.
fn hub_answer(e: &HubError) -> Response {
    match e {
        HubError::RepoNotFound { repo, kind, .. } => Response::error(
            404,
            Some("RepoNotFound"),
            &format!("Repository not found: {kind} {repo}"),
        ),
        HubError::RevisionNotFound { revision, .. } => Response::error(
            404,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {revision}"),
        ),
        HubError::EntryNotFound { path, commit, .. } => entry_not_found(commit, path),
        HubError::Gated { repo, .. } => Response::error(
            403,
            Some("GatedRepo"),
            &format!(
                "Access to {repo} is restricted: you must have access to it and be authenticated"
            ),
        ),
        HubError::BadToken { status, .. } => Response::error(
            if *status == 403 { 403 } else { 401 },
            None,
            "The upstream refused this token",
        ),
        HubError::RateLimited { .. } => {
            let mut r = Response::error(429, None, "The upstream is rate limiting this mirror");
            r.headers.push(("Retry-After", "30".into()));
            r
        }
        HubError::BadListing { detail, .. } => {
            tracing::warn!("refused an upstream listing: {detail}");
            Response::error(
                502,
                None,
                "The upstream's listing was refused by the mirror",
            )
        }
        other => {
            tracing::warn!("upstream: {other}");
            Response::error(502, None, "The upstream cannot be reached or failed")
        }
    }
}
