//! What can go wrong in a pull, each with a message a user can act on and a class that maps to
//! a distinct exit code. Tokens never appear in these messages.

use std::path::PathBuf;

use crate::error::{ErrorKind, GetError};

/// The error of a Hub operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// Bad input: a repo id, revision, pattern, endpoint or directory that cannot work.
    #[error("{0}")]
    Usage(String),
    /// The repo does not exist, or is private and the token (if any) does not open it.
    #[error(
        "{kind} repo {repo:?} not found at {endpoint} (if it is private, set HF_TOKEN or pass --token)"
    )]
    RepoNotFound {
        /// The repo id.
        repo: String,
        /// `model`, `dataset` or `space`.
        kind: String,
        /// The endpoint asked.
        endpoint: String,
    },
    /// The revision (branch, tag or commit) does not exist in the repo.
    #[error("revision {revision:?} not found in {repo}")]
    RevisionNotFound {
        /// The repo id.
        repo: String,
        /// The revision asked for.
        revision: String,
    },
    /// A listed file is missing at the commit.
    #[error("{path:?} not found in {repo} at commit {commit}")]
    EntryNotFound {
        /// The repo id.
        repo: String,
        /// The file.
        path: String,
        /// The commit.
        commit: String,
    },
    /// The repo is gated: its terms must be accepted on the website, with a token.
    #[error(
        "{repo} is gated: accept its terms at {page} while logged in, then set HF_TOKEN (or --token) to a token of that account"
    )]
    Gated {
        /// The repo id.
        repo: String,
        /// The repo's page.
        page: String,
    },
    /// The token was refused.
    #[error("the endpoint refused the token for {repo} ({status}): check HF_TOKEN / --token")]
    BadToken {
        /// The repo id.
        repo: String,
        /// The HTTP status.
        status: u16,
    },
    /// Still rate limited after waiting as the server asked, as often as allowed.
    #[error("{url}: rate limited (429) after {attempts} attempts; try again later")]
    RateLimited {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Another process is pulling the same repo into the same place.
    #[error(
        "another ferry pull is writing {} (its lock is held); wait for it to finish",
        dir.display()
    )]
    Busy {
        /// The locked folder.
        dir: PathBuf,
    },
    /// The listing is malformed or hostile (a path that would leave the target, ...).
    #[error("refusing the listing of {repo}: {detail}")]
    BadListing {
        /// The repo id.
        repo: String,
        /// What is wrong.
        detail: String,
    },
    /// The endpoint answered with an error status or an unusable body.
    #[error("{url}: {detail}")]
    Remote {
        /// The URL.
        url: String,
        /// What happened.
        detail: String,
    },
    /// The endpoint's certificate did not verify, or TLS failed (never retried).
    #[error("{0}")]
    Tls(String),
    /// The proxy refused or broke the tunnel (never retried).
    #[error("{0}")]
    Proxy(String),
    /// A local file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A download failed.
    #[error(transparent)]
    Get(#[from] GetError),
}

impl HubError {
    /// The broad class of this error (as for downloads).
    pub fn kind(&self) -> ErrorKind {
        match self {
            HubError::Usage(_) => ErrorKind::Usage,
            HubError::Io { .. } | HubError::Busy { .. } => ErrorKind::Local,
            HubError::Get(e) => e.kind(),
            _ => ErrorKind::Remote,
        }
    }
}
