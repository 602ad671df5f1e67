//! A pull: resolve the revision to a commit once, walk the listing pinned to that commit, check
//! and filter it, skip what is already in place, fetch the rest as one data-plane job (each file
//! verified against its sha256 or git blob id), then publish the names (snapshot symlinks or
//! local-dir metadata) and the ref.
//!
//! The listing runs on the calling thread (a few small JSON requests, see [`super::api`]); the
//! bytes go through the [`Engine`], with a resume [`Journal`] per repo and commit: a pull
//! stopped at any moment takes over, on its next run, every range the last one wrote (complete
//! files are never fetched twice, partial ones only for their missing ranges). The journal is
//! removed once the pull completes; while it is open it locks the repo's place against a second
//! pull.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use url::Url;

use super::error::HubError;
use super::layout::{Layout, Place};
use super::listing::{Filter, RemoteFile};
use super::remote::{file_url, list_somewhere};
use super::repo::{RepoId, RepoType};
use crate::engine::Engine;
use crate::error::GetError;
use crate::job::{GetItem, Job};
use crate::journal::{self, Journal};
use crate::net::target::Secret;
use crate::report::{EndpointReport, Report};
use crate::verify::HashAlgorithm;

/// Extra jobs for files that failed for a passing reason (5xx, resets, short bodies).
const RETRY_ROUNDS: u32 = 3;

/// A pull's partial files are `BLOB.ferry-partial`: huggingface_hub names its own
/// `BLOB.incomplete`, and releases before 1.18 resume any file under that name from its size, so
/// a preallocated partial of ferry's would be taken for complete.
pub(crate) const PARTIAL_SUFFIX: &str = ".ferry-partial";
/// A blob fetched from a swarm is `BLOB.ferry-swarm` until it is checked (`swarm.rs`).
pub(crate) const SWARM_SUFFIX: &str = ".ferry-swarm";

/// What to pull, from where, to where.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PullOptions {
    /// The repo.
    pub repo: RepoId,
    /// Model, dataset or space.
    pub kind: RepoType,
    /// Branch, tag or commit (default `main`).
    pub revision: String,
    /// Keep only files matching one of these (fnmatch patterns; all when empty).
    pub include: Vec<String>,
    /// Drop files matching one of these.
    pub exclude: Vec<String>,
    /// Where the files go.
    pub layout: Layout,
    /// The Hub endpoint (no trailing `/`).
    pub endpoint: Url,
    /// Other endpoints with the same repos ([`PullOptions::mirror`]).
    pub mirrors: Vec<Url>,
    /// The token, as an `Authorization` value.
    pub(super) authorization: Option<Secret>,
    /// Fetch from the commit's BitTorrent swarm first ([`PullOptions::swarm`]).
    #[cfg(feature = "swarm")]
    pub(super) swarm: Option<super::swarm::SwarmOptions>,
}

impl PullOptions {
    /// Pulls `repo` at `main` into `layout` from `endpoint`.
    pub fn new(repo: RepoId, layout: Layout, endpoint: Url) -> PullOptions {
        PullOptions {
            repo,
            kind: RepoType::Model,
            revision: "main".into(),
            include: Vec::new(),
            exclude: Vec::new(),
            layout,
            endpoint,
            mirrors: Vec::new(),
            authorization: None,
            #[cfg(feature = "swarm")]
            swarm: None,
        }
    }

    /// Fetches the missing files from the commit's BitTorrent swarm (the metainfo `ferry serve
    /// --torrents` publishes at the endpoint) before anything goes over HTTP; what the swarm
    /// cannot bring goes over HTTP, and [`PullReport::swarm`] says why. Every file is checked
    /// against the listing as over HTTP.
    #[cfg(feature = "swarm")]
    pub fn swarm(mut self, swarm: super::swarm::SwarmOptions) -> PullOptions {
        self.swarm = Some(swarm);
        self
    }

    /// Another HF-compatible endpoint with the same repos (repeatable): each file's ranges are
    /// spread over the endpoint and its mirrors, a failing or stalled one hands its ranges to
    /// the others, a far slower one is demoted; when the endpoint cannot list the repo, the
    /// mirrors are asked in turn. The token goes to the endpoint only, never to a mirror.
    pub fn mirror(mut self, endpoint: Url) -> PullOptions {
        self.mirrors.push(endpoint);
        self
    }

    /// The repo's type.
    pub fn kind(mut self, kind: RepoType) -> PullOptions {
        self.kind = kind;
        self
    }

    /// The revision.
    pub fn revision(mut self, revision: impl Into<String>) -> PullOptions {
        self.revision = revision.into();
        self
    }

    /// Include and exclude patterns.
    pub fn filter(mut self, include: Vec<String>, exclude: Vec<String>) -> PullOptions {
        self.include = include;
        self.exclude = exclude;
        self
    }

    /// A token, sent to the endpoint's origin only.
    pub fn token(mut self, token: impl Into<String>) -> PullOptions {
        self.authorization = Some(Secret::bearer(&token.into()));
        self
    }
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PullReport {
    /// The repo id.
    pub repo: String,
    /// Its type.
    pub kind: RepoType,
    /// The revision asked for.
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    /// Where the files are: the snapshot directory, or the local dir.
    pub path: PathBuf,
    /// Files in the (filtered) listing.
    pub files: usize,
    /// Files whose bytes were fetched (files with the same content count once).
    pub fetched: usize,
    /// Files already in place, not fetched.
    pub reused: usize,
    /// Bytes fetched.
    pub bytes_fetched: u64,
    /// Bytes an earlier, stopped pull had written and this one took over (read back and
    /// verified, not fetched).
    pub bytes_resumed: u64,
    /// Bytes of all the files of the listing.
    pub bytes_total: u64,
    /// Answers to the file requests that came over HTTP/2 (`--http2`, an endpoint that chose
    /// `h2`; the listing's requests are HTTP/1.1).
    pub http2: u64,
    /// Answers to the file requests that came over HTTP/3 (`--http3`).
    pub http3: u64,
    /// With `--http3`: what the pull's QUIC connections did, and why any went over TCP.
    pub quic: Option<crate::QuicReport>,
    /// Seconds spent on the revision and the listing.
    pub listing_seconds: f64,
    /// Seconds in all.
    pub seconds: f64,
    /// The data plane's back-end.
    pub backend: crate::backend::Backend,
    /// With mirrors: the bytes each endpoint served, its failures and whether it was demoted.
    /// Empty without mirrors.
    pub endpoints: Vec<EndpointReport>,
    /// Connections the data plane kept open: what connections by measurement settled on
    /// (0 when nothing was fetched over HTTP).
    pub connections_open: usize,
    /// With [`PullOptions::swarm`]: what the swarm brought, and why anything went over HTTP.
    #[cfg(feature = "swarm")]
    pub swarm: Option<super::swarm::SwarmReport>,
}

/// What the pull's HTTP downloads add up to, file report by file report.
#[derive(Default)]
struct Tally {
    bytes_fetched: u64,
    bytes_resumed: u64,
    http2: u64,
    http3: u64,
    connections_open: usize,
    endpoints: Vec<EndpointReport>,
}

impl Tally {
    /// Adds one file's report. Per endpoint, failures and demotion are the job's, so the latest
    /// count stands.
    fn add(&mut self, r: &Report) {
        self.bytes_fetched += r.bytes - r.resumed;
        self.bytes_resumed += r.resumed;
        self.http2 += r.http2;
        self.http3 += r.http3;
        self.connections_open = self.connections_open.max(r.connections_open);
        for e in &r.endpoints {
            match self.endpoints.iter_mut().find(|t| t.endpoint == e.endpoint) {
                Some(t) => {
                    t.bytes += e.bytes;
                    t.failures = t.failures.max(e.failures);
                    t.demoted = e.demoted;
                }
                None => self.endpoints.push(e.clone()),
            }
        }
    }
}

/// A pull in progress: the listing is done, the bytes are on their way.
#[derive(Debug)]
pub struct Pull<'e> {
    engine: &'e Engine,
    options: PullOptions,
    place: Place,
    commit: String,
    files: Vec<RemoteFile>,
    /// Every file of the commit, as listed (before `--include`/`--exclude`).
    listed: Vec<RemoteFile>,
    /// The file whose bytes each download brings (one per blob).
    fetching: Vec<RemoteFile>,
    job: Option<Job>,
    /// The files (indexes into `fetching`) the job fetches.
    over_http: Vec<usize>,
    /// The swarm, while the pull has one.
    #[cfg(feature = "swarm")]
    swarm: Option<super::swarm::SwarmPull>,
    /// What the files fetched over HTTP before the swarm was joined reported.
    #[cfg(feature = "swarm")]
    early: Vec<Report>,
    /// The resume journal, while there are bytes to fetch.
    journal: Option<Arc<Journal>>,
    started: Instant,
    listing_seconds: f64,
}

impl<'e> Pull<'e> {
    /// Lists the repo and starts fetching what is missing. Fails before the first byte on a
    /// missing repo or revision, a refused token, a hostile listing, or too little disk space.
    pub fn start(engine: &'e Engine, mut options: PullOptions) -> Result<Pull<'e>, HubError> {
        let started = Instant::now();
        // `user:password@` in the endpoint is its credential (a token given wins); it leaves
        // the URL, so no message shows it.
        if let Some(basic) = crate::net::target::take_credentials(&mut options.endpoint) {
            options.authorization.get_or_insert(basic);
        }
        let filter = Filter::new(&options.include, &options.exclude).map_err(HubError::Usage)?;
        super::repo::check_revision(&options.revision).map_err(HubError::Usage)?;
        let (commit, listed) = list_somewhere(engine, &options)?;
        let files: Vec<RemoteFile> = listed
            .iter()
            .filter(|f| filter.keeps(&f.path))
            .cloned()
            .collect();
        let listing_seconds = started.elapsed().as_secs_f64();
        let place = Place::new(&options.layout, &options.repo, options.kind);
        // Missing bytes, once per blob in the cache (identical files share one).
        let mut seen = HashSet::new();
        let fetching: Vec<RemoteFile> = files
            .iter()
            .filter(|f| !place.has(f))
            .filter(|f| !matches!(options.layout, Layout::Cache(_)) || seen.insert(f.etag.clone()))
            .cloned()
            .collect();
        place.prepare(&files)?;
        check_space(&place, &fetching, engine.config().min_free)?;
        // Locked even when nothing is fetched: the leftovers of an interrupted pull whose files
        // another tool completed since are removed under the lock (the journal once this pull
        // completes).
        let journal = Arc::new(open_journal(&place, &commit)?);
        place.remove_stale_partials(&files, &fetching);
        let journal = Some(journal);
        let mut pull = Pull {
            engine,
            options,
            place,
            commit,
            files,
            listed,
            fetching,
            job: None,
            over_http: Vec::new(),
            #[cfg(feature = "swarm")]
            swarm: None,
            #[cfg(feature = "swarm")]
            early: Vec::new(),
            journal,
            started,
            listing_seconds,
        };
        pull.over_http = (0..pull.fetching.len()).collect();
        #[cfg(feature = "swarm")]
        if let Some(options) = &pull.options.swarm {
            let mut early = Vec::new();
            let (swarm, left) = super::swarm::SwarmPull::run(
                engine,
                &pull.options,
                options,
                (&pull.place, &pull.commit),
                (&pull.listed, &pull.files, &pull.fetching),
                &mut |small| {
                    let job = match pull.fetch(small) {
                        Ok(Some(job)) => job,
                        Ok(None) => return Vec::new(),
                        Err(e) => {
                            tracing::warn!("small files over HTTP: {e}");
                            return Vec::new();
                        }
                    };
                    let mut arrived = Vec::new();
                    for (&i, r) in small.iter().zip(job.wait_all()) {
                        match r {
                            Ok(report) => {
                                arrived.push(i);
                                early.push(report);
                            }
                            Err(e) => tracing::warn!(
                                "{}: {e}; fetching it from the swarm",
                                pull.fetching[i].path
                            ),
                        }
                    }
                    arrived
                },
            )?;
            pull.swarm = Some(swarm);
            pull.over_http = left;
            pull.early = early;
        }
        pull.job = pull.fetch(&pull.over_http)?;
        Ok(pull)
    }

    /// Starts a job for the files `which` (indexes into `fetching`); none when empty.
    fn fetch(&self, which: &[usize]) -> Result<Option<Job>, HubError> {
        if which.is_empty() {
            return Ok(None);
        }
        let items = which.iter().map(|&i| {
            let f = &self.fetching[i];
            let o = &self.options;
            let url = file_url(&o.endpoint, o, &self.commit, &f.path);
            let item = o.mirrors.iter().fold(
                GetItem::new(url, self.place.bytes_path(f))
                    .beneath(self.place.base())
                    .partial_suffix(PARTIAL_SUFFIX)
                    .size(f.size)
                    .authorization(o.authorization.clone()),
                |item, m| item.mirror(file_url(m, o, &self.commit, &f.path)),
            );
            match f.algorithm {
                HashAlgorithm::Sha256 => item.sha256(f.etag.clone()),
                HashAlgorithm::GitSha1 => item.git_sha1(f.etag.clone()),
            }
        });
        Ok(Some(
            self.engine
                .get_many_journaled(items, self.journal.clone())?,
        ))
    }

    /// The commit the revision resolved to.
    pub fn commit(&self) -> &str {
        &self.commit
    }

    /// Files in the filtered listing, and how many of them need bytes fetched.
    pub fn counts(&self) -> (usize, usize) {
        (self.files.len(), self.fetching.len())
    }

    /// The data-plane job fetching the missing bytes (none when everything is in place), for
    /// progress.
    pub fn job(&mut self) -> Option<&mut Job> {
        self.job.as_mut()
    }

    /// Waits for the bytes, then publishes every file whose bytes are in place (a failed file
    /// leaves nothing under its name) and, when all are, the ref. The first failure is the
    /// error; the files that did arrive stay, verified, for the next pull.
    pub fn finish(mut self) -> Result<PullReport, HubError> {
        let mut tally = Tally::default();
        let mut failed: Vec<(usize, GetError)> = Vec::new();
        let mut which: Vec<usize> = std::mem::take(&mut self.over_http);
        let mut job = self.job.take();
        #[cfg(feature = "swarm")]
        for report in std::mem::take(&mut self.early) {
            tally.add(&report);
        }
        for round in 1.. {
            let results: Vec<Result<Report, GetError>> = match job.take() {
                Some(job) => job.wait_all(),
                None => Vec::new(),
            };
            failed.clear();
            for (i, r) in which.iter().zip(results) {
                match r {
                    Ok(report) => tally.add(&report),
                    Err(e) => failed.push((*i, e)),
                }
            }
            // Files that failed for a passing reason (a 5xx, a reset) get another job, after a
            // growing wait; the others fail now.
            let retry: Vec<usize> = failed
                .iter()
                .filter(|(_, e)| is_transient(e))
                .map(|(i, _)| *i)
                .collect();
            if retry.is_empty() || round > RETRY_ROUNDS {
                break;
            }
            let wait = crate::proto::retry::backoff(round + 2, crate::runtime::jitter());
            tracing::warn!(
                "{} file(s) failed ({}); fetching them again in {:.1} s (round {} of {RETRY_ROUNDS})",
                retry.len(),
                failed[0].1,
                wait.as_secs_f64(),
                round
            );
            std::thread::sleep(wait);
            which = retry;
            job = self.fetch(&which)?;
        }
        let failed_blobs: HashSet<PathBuf> = failed
            .iter()
            .map(|(i, _)| self.place.bytes_path(&self.fetching[*i]))
            .collect();
        // A full disk is what the user must act on first: it is named even when other files
        // failed for other reasons (or stopped because of it).
        if let Some(k) = failed
            .iter()
            .position(|(_, e)| matches!(e, GetError::NoSpace { .. }))
        {
            failed.swap(0, k);
        }
        let first_error = failed
            .into_iter()
            .next()
            .map(|(i, e)| self.download_error(&self.fetching[i], e));
        for f in &self.files {
            if failed_blobs.contains(&self.place.bytes_path(f)) {
                continue;
            }
            self.place.publish(&self.commit, f)?;
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        self.place.write_trees(&self.commit, &self.listed)?;
        self.place.set_ref(&self.options.revision, &self.commit)?;
        // Every file is in place: a partial name left (a swarm partial that could not be
        // opened, say) goes, still under the journal's lock.
        self.place.remove_stale_partials(&self.files, &[]);
        if let Some(journal) = self.journal.take() {
            journal.remove();
        }
        #[cfg(feature = "swarm")]
        let swarm = self.swarm.take().map(|mut s| {
            tally.bytes_fetched += s.bytes_in_place(&self.fetching);
            s.seed(self.engine, &self.place, &self.files);
            s.leave();
            std::mem::take(&mut s.report)
        });
        let bytes_total = self.files.iter().map(|f| f.size).sum();
        Ok(PullReport {
            repo: self.options.repo.to_string(),
            kind: self.options.kind,
            revision: self.options.revision.clone(),
            path: self.place.snapshot_dir(&self.commit),
            commit: self.commit,
            files: self.files.len(),
            fetched: self.fetching.len(),
            reused: self.files.len() - self.fetching.len(),
            bytes_fetched: tally.bytes_fetched,
            bytes_resumed: tally.bytes_resumed,
            bytes_total,
            http2: tally.http2,
            http3: tally.http3,
            quic: self.engine.dialer().quic_report(),
            listing_seconds: self.listing_seconds,
            seconds: self.started.elapsed().as_secs_f64(),
            backend: self.engine.selection().backend,
            endpoints: tally.endpoints,
            connections_open: tally.connections_open,
            #[cfg(feature = "swarm")]
            swarm,
        })
    }

    fn download_error(&self, f: &RemoteFile, e: GetError) -> HubError {
        match e {
            GetError::Status { status: 404, .. } => HubError::EntryNotFound {
                repo: self.options.repo.to_string(),
                path: f.path.clone(),
                commit: self.commit.clone(),
            },
            GetError::Status {
                status: status @ (401 | 403),
                ..
            } => HubError::BadToken {
                repo: self.options.repo.to_string(),
                status,
            },
            e => HubError::Get(e),
        }
    }
}

/// True for a failure that another try may not meet (the table in [`crate::proto::retry`]).
fn is_transient(e: &GetError) -> bool {
    matches!(
        crate::proto::retry::for_error(e),
        crate::proto::retry::Verdict::Retry { .. }
    )
}

/// The repo's resume journal for `commit`, locked for this process.
fn open_journal(place: &Place, commit: &str) -> Result<Journal, HubError> {
    let (root, rel) = place.journal_dir();
    Journal::open(root, &rel, &format!("{commit}.journal")).map_err(|e| match e {
        journal::OpenError::Busy(dir) => HubError::Busy { dir },
        journal::OpenError::Io { op, path, source } => HubError::Io { op, path, source },
    })
}

/// Refuses up front when the bytes to fetch cannot fit above the space kept free. Space an
/// earlier run already allocated to a partial file (which this pull may resume) counts as had.
fn check_space(
    place: &Place,
    fetching: &[RemoteFile],
    min_free: Option<u64>,
) -> Result<(), HubError> {
    use std::os::unix::fs::MetadataExt;
    // Saturating: sizes from a listing are a stranger's numbers, and must not wrap the sum.
    let need: u64 = fetching
        .iter()
        .map(|f| {
            let mut partial = place.bytes_path(f).into_os_string();
            partial.push(PARTIAL_SUFFIX);
            let allocated = std::fs::symlink_metadata(&partial).map_or(0, |m| m.blocks() * 512);
            f.size.saturating_sub(allocated)
        })
        .fold(0u64, u64::saturating_add);
    if need == 0 {
        return Ok(());
    }
    crate::download::space::check(&place.bytes_dir(), need, min_free).map_err(HubError::Get)?;
    Ok(())
}
