//! The engine's public errors: one enum per operation that can fail ([`StartError`] for building
//! an [`Engine`](crate::Engine), [`GetError`] for a download), each variant carrying the numbers and
//! names a user needs to act on it. Caller mistakes (bad URL, bad output path) are kept apart from
//! peer faults (status, short body) and local faults (disk), and [`GetError::kind`] says which.

use std::io;
use std::path::PathBuf;

use crate::units::human_bytes;
use crate::verify::HashAlgorithm;

/// Why an [`Engine`](crate::Engine) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// `--backend uring` was asked for and io_uring cannot run here.
    #[error("io_uring back-end unavailable: {reason}")]
    UringUnavailable {
        /// What failed, with its errno (`io_uring_setup: EPERM (...)`).
        reason: String,
    },
    /// io_uring failed in a way that is not "blocked or unsupported" (e.g. EINVAL on a kernel
    /// that should accept our flags): a bug to report, not something to paper over.
    #[error("io_uring setup failed unexpectedly: {reason}")]
    UringBroken {
        /// What failed.
        reason: String,
    },
    /// The proxy setting (`--proxy` or the environment) cannot be used.
    #[error("{detail}")]
    Proxy {
        /// Which setting and why (credentials never shown).
        detail: String,
    },
    /// A worker thread or its runtime could not be created.
    #[error("cannot start worker {worker}: {source}")]
    Worker {
        /// Index of the worker.
        worker: usize,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The broad class of a [`GetError`], for exit codes and retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request itself is wrong: URL, scheme, output path.
    Usage,
    /// The server or the network failed or misbehaved.
    Remote,
    /// Writing locally failed (permissions, I/O error).
    Local,
    /// The disk is full (or above the space ferry keeps free), and stayed so.
    NoSpace,
    /// The engine stopped before the job finished.
    Engine,
    /// The job was interrupted ([`crate::Interrupter`]): on purpose, not a failure.
    Interrupted,
    /// Another process is writing the same output.
    Busy,
}

/// Why a download failed. No file is left under the final name when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The URL does not parse.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL's scheme is not one ferry downloads from.
    #[error("unsupported URL scheme {scheme:?} in {url}: ferry speaks http:// and https://")]
    UnsupportedScheme {
        /// The scheme.
        scheme: String,
        /// The URL.
        url: String,
    },
    /// The output path names an existing directory.
    #[error("output path {} is a directory; give a file path", path.display())]
    OutputIsDirectory {
        /// The path.
        path: PathBuf,
    },
    /// The output path names an existing file that is not a regular file (a device such as
    /// `/dev/null`, a FIFO, a socket). ferry writes `PATH.incomplete` and renames it over `PATH`
    /// when it is complete, which would put a regular file in its place.
    #[error(
        "output path {} is {what}, not a regular file: ferry writes {}.incomplete and renames it \
         over the output when it is complete, which would replace it; give a file path",
        path.display(),
        path.display()
    )]
    OutputNotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is, in words ("a character device", "a FIFO", ...).
        what: &'static str,
    },
    /// The output's parent directory does not exist.
    #[error("output directory {} does not exist", dir.display())]
    OutputDirMissing {
        /// The directory.
        dir: PathBuf,
    },
    /// The output's parent is not a directory.
    #[error("{} is not a directory", dir.display())]
    OutputDirNotDirectory {
        /// The path that should be a directory.
        dir: PathBuf,
    },
    /// The output file cannot be created.
    #[error("cannot write to {}: {}", path.display(), kernel_probes::describe_io_error(source))]
    OutputNotWritable {
        /// The file ferry tried to create.
        path: PathBuf,
        /// The error from the create.
        #[source]
        source: io::Error,
    },
    /// The host name did not resolve.
    #[error("cannot resolve host {host:?}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// No address of the host accepted a connection.
    #[error(
        "cannot connect to {addr}: {}",
        kernel_probes::describe_io_error(source)
    )]
    Connect {
        /// The address (the last one tried).
        addr: String,
        /// The error of the last attempt.
        #[source]
        source: io::Error,
    },
    /// The server's certificate did not verify, or the TLS exchange failed. Never retried, and
    /// never answered by falling back to an unverified connection.
    #[error("{addr}: {detail}")]
    Tls {
        /// The peer address.
        addr: String,
        /// Which host and why (`TLS with example.org failed: its certificate has expired`).
        detail: String,
    },
    /// The proxy refused the tunnel, wanted other credentials, or broke its protocol.
    #[error("{detail}")]
    Proxy {
        /// Which proxy (credentials never shown) and why.
        detail: String,
    },
    /// The trust settings cannot be used (a CA file that is missing or holds no certificate).
    #[error("TLS setup: {detail}")]
    TlsSetup {
        /// What is wrong.
        detail: String,
    },
    /// A socket read or write failed mid-transfer.
    #[error(
        "network error talking to {addr} ({op}): {}",
        kernel_probes::describe_io_error(source)
    )]
    Network {
        /// The peer.
        addr: String,
        /// `"send request"`, `"read response"`.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The server answered with a status that is not success.
    #[error("{url}: server answered {status} {reason}")]
    Status {
        /// The URL asked for.
        url: String,
        /// The status code.
        status: u16,
        /// The reason phrase.
        reason: String,
        /// How long the server asked to wait before asking again (`Retry-After`, or the
        /// `RateLimit` reset of a 429), when it did.
        retry_after: Option<std::time::Duration>,
    },
    /// A range was answered with a `200` and the whole file: the server (or one node behind
    /// it) stopped honouring `Range` in the middle of a download. Retried: another request
    /// may reach a node that honours it.
    #[error(
        "{url}: asked for bytes {asked_first}-{asked_last}, server answered 200 with the whole file (it stopped honouring Range)"
    )]
    RangeIgnored {
        /// The URL.
        url: String,
        /// First byte asked for.
        asked_first: u64,
        /// Last byte asked for (inclusive).
        asked_last: u64,
    },
    /// Only a byte range of a resource was wanted (an HLS `EXT-X-BYTERANGE`), and the server
    /// answered 200 with the whole resource: it does not serve byte ranges. Not retried; the
    /// caller may fetch the whole resource instead.
    #[error(
        "{url}: asked for bytes {first}-{last} of it, the server answered 200 with all of it (it does not serve byte ranges)"
    )]
    RangesUnsupported {
        /// The URL.
        url: String,
        /// First byte of the range wanted.
        first: u64,
        /// Last byte of the range wanted (inclusive).
        last: u64,
    },
    /// The server's `Content-Range` is not the range asked for.
    #[error(
        "{url}: asked for bytes {asked_first}-{asked_last}, server answered Content-Range {got:?}"
    )]
    ContentRangeMismatch {
        /// The URL.
        url: String,
        /// First byte asked for.
        asked_first: u64,
        /// Last byte asked for (inclusive).
        asked_last: u64,
        /// The header as received (or `"(missing)"`).
        got: String,
    },
    /// The file changed size between two responses.
    #[error("{url}: size changed during the download (first {first} bytes, now {now})")]
    SizeChanged {
        /// The URL.
        url: String,
        /// Size learned from the first response.
        first: u64,
        /// Size in a later response.
        now: u64,
    },
    /// The connection ended before the promised body did.
    #[error("{url}: body ended after {received} of {expected} bytes (at offset {offset})")]
    ShortBody {
        /// The URL.
        url: String,
        /// File offset where the short range starts.
        offset: u64,
        /// Bytes promised for the range.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// The server sent something that is not valid HTTP/1.1.
    #[error("{url}: protocol error: {detail}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// Too many redirects, or a redirect ferry will not follow.
    #[error("{url}: {detail}")]
    Redirect {
        /// The URL that redirected.
        url: String,
        /// Why it was not followed.
        detail: String,
    },
    /// A local file operation failed.
    #[error("{op} {}: {}", path.display(), kernel_probes::describe_io_error(source))]
    Io {
        /// The operation (`"write"`, `"fsync"`, `"rename"`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The filesystem has no room for the file's bytes (above the space ferry keeps free), and
    /// none came free while ferry waited ([`crate::Config::space_wait`]). A resumable file keeps
    /// its partial bytes for the next run.
    #[error(
        "not enough disk space in {}: {}; free some space and run again",
        dir.display(),
        need_have(*need, *have, *floor)
    )]
    NoSpace {
        /// The directory the file is written in.
        dir: PathBuf,
        /// Bytes the file still needs (0 when its size is not known).
        need: u64,
        /// Bytes free on the filesystem.
        have: u64,
        /// Bytes ferry keeps free there ([`crate::Config::min_free`]).
        floor: u64,
    },
    /// The downloaded bytes do not hash to the digest asked for, on the first fetch and on the
    /// re-fetch. Nothing is left under the final name.
    #[error(
        "{url}: {algorithm} mismatch after {attempts} fetches: expected {expected}, got {got}; the file was removed"
    )]
    ChecksumMismatch {
        /// The URL.
        url: String,
        /// What was hashed.
        algorithm: HashAlgorithm,
        /// The digest asked for (lowercase hex).
        expected: String,
        /// The digest of the bytes received (lowercase hex).
        got: String,
        /// How many times the file was fetched.
        attempts: u32,
    },
    /// A digest given is not hexadecimal of the algorithm's length.
    #[error("invalid {algorithm} {given:?}: expected {} hexadecimal digits", match algorithm {
        HashAlgorithm::Sha256 => 64,
        HashAlgorithm::GitSha1 => 40,
    })]
    InvalidChecksum {
        /// The algorithm.
        algorithm: HashAlgorithm,
        /// What was given.
        given: String,
    },
    /// A git blob id can only be checked when the file's size is stated up front.
    #[error("{url}: a git blob id needs the file's size up front")]
    GitSha1WithoutSize {
        /// The URL.
        url: String,
    },
    /// Two downloads of one job would write the same file.
    #[error("two downloads would both write {}", path.display())]
    DuplicateOutput {
        /// The path.
        path: PathBuf,
    },
    /// Another process (a second `ferry get` or `ferry pull`) is writing the same output now.
    /// Nothing of its file was touched.
    #[error(
        "another ferry is writing {} now (its partial file is locked); wait for it to finish",
        path.display()
    )]
    OutputBusy {
        /// The output.
        path: PathBuf,
    },
    /// One output of a job is another output's partial file (`X` and `X.incomplete`), or ends
    /// in the suffix of ferry's temporary files: writing one would overwrite the other's bytes.
    #[error("{}: {detail}", path.display())]
    OutputCollision {
        /// The output that collides.
        path: PathBuf,
        /// With what.
        detail: String,
    },
    /// The answer states more bytes than the size the job was given for the file (a listing's
    /// size): refused before anything is written, so a hostile endpoint cannot fill the disk.
    #[error(
        "{url}: the answer states {stated} bytes, but the file is listed with {listed}; refused"
    )]
    LargerThanListed {
        /// The URL.
        url: String,
        /// The size the job was given.
        listed: u64,
        /// What the answer states (`Content-Range` total or `Content-Length`), or received.
        stated: u64,
    },
    /// A token or credential that cannot be sent as a header value.
    #[error("invalid credential: {detail}")]
    InvalidCredential {
        /// What is wrong (never the credential itself).
        detail: String,
    },
    /// A job with no downloads.
    #[error("nothing to download")]
    NothingToDo,
    /// The engine shut down (or a worker died) before the job finished.
    #[error("the engine stopped before the download finished")]
    EngineStopped,
    /// The job was interrupted ([`crate::Interrupter::interrupt`]) before this file was
    /// complete. Nothing is under the final name; with a resume journal (`ferry pull`) what was
    /// written stays for the next run.
    #[error("interrupted before the download finished")]
    Interrupted,
}

impl GetError {
    /// The broad class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            GetError::InvalidUrl { .. }
            | GetError::UnsupportedScheme { .. }
            | GetError::OutputIsDirectory { .. }
            | GetError::OutputNotRegularFile { .. }
            | GetError::OutputDirMissing { .. }
            | GetError::OutputDirNotDirectory { .. }
            | GetError::OutputNotWritable { .. }
            | GetError::InvalidChecksum { .. }
            | GetError::DuplicateOutput { .. }
            | GetError::OutputCollision { .. }
            | GetError::InvalidCredential { .. }
            | GetError::GitSha1WithoutSize { .. }
            | GetError::TlsSetup { .. }
            | GetError::NothingToDo => ErrorKind::Usage,
            GetError::Resolve { .. }
            | GetError::Connect { .. }
            | GetError::Tls { .. }
            | GetError::Proxy { .. }
            | GetError::Network { .. }
            | GetError::Status { .. }
            | GetError::ContentRangeMismatch { .. }
            | GetError::RangeIgnored { .. }
            | GetError::RangesUnsupported { .. }
            | GetError::SizeChanged { .. }
            | GetError::ShortBody { .. }
            | GetError::Protocol { .. }
            | GetError::Redirect { .. }
            | GetError::LargerThanListed { .. }
            | GetError::ChecksumMismatch { .. } => ErrorKind::Remote,
            GetError::OutputBusy { .. } => ErrorKind::Busy,
            GetError::Io { .. } => ErrorKind::Local,
            GetError::NoSpace { .. } => ErrorKind::NoSpace,
            GetError::EngineStopped => ErrorKind::Engine,
            GetError::Interrupted => ErrorKind::Interrupted,
        }
    }

    /// A read ended by its hedge: its flow stalled while other connections moved
    /// (`net/watch.rs`).
    pub(crate) fn is_hedged(&self) -> bool {
        matches!(self, GetError::Network { source, .. } if crate::net::is_hedged(source))
    }
}

/// `need 8.00 MiB, have 1.20 MiB (keeping …)`; `need more` when the size is not known (0).
pub(crate) fn need_have(need: u64, have: u64, floor: u64) -> String {
    let need = match need {
        0 => "more".to_owned(),
        n => human_bytes(n),
    };
    format!(
        "need {need}, have {}{}",
        human_bytes(have),
        kept_free(floor)
    )
}

/// `" (keeping 64.0 MiB free, --min-free)"`, or nothing without a floor.
fn kept_free(floor: u64) -> String {
    if floor == 0 {
        String::new()
    } else {
        format!(" (keeping {} free, --min-free)", human_bytes(floor))
    }
}
