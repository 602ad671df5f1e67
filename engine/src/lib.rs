//! ferry: a Linux data-plane engine that moves bytes from the network to disk at the speed of the
//! hardware, on io_uring where the kernel allows it and on portable syscalls (safe mode) where it
//! does not.
//!
//! The library runs the same jobs as the `ferry` command. Build an [`Engine`] from a [`Config`]
//! (this probes the kernel, picks the back-end and starts one pinned worker per core), start a
//! [`Job`] on it (one file with [`Engine::get`], many over shared connections with
//! [`Engine::get_many`]), watch its [`Event`]s, and get a [`Report`] or a typed [`GetError`]:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use std::io::{Read, Write};
//! # let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! # let port = listener.local_addr()?.port();
//! # std::thread::spawn(move || {
//! #     // A one-shot origin for the example: answers any request with 11 bytes.
//! #     let (mut s, _) = listener.accept().unwrap();
//! #     let mut req = [0u8; 1024];
//! #     let _ = s.read(&mut req);
//! #     s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello ferry").unwrap();
//! # });
//! # let dir = tempfile::tempdir()?;
//! use std::time::Duration;
//! use ferry::{Config, Engine, Event};
//!
//! let engine = Engine::new(Config::default())?;
//! let out = dir.path().join("hello.txt");
//! let mut job = engine.get(&format!("http://127.0.0.1:{port}/hello.txt"), &out)?;
//! for event in job.events(Duration::from_millis(100)) {
//!     if let Event::Progress(p) = event {
//!         eprintln!("{} of {:?} bytes", p.done, p.total);
//!     }
//! }
//! let report = job.wait()?;
//! assert_eq!(report.bytes, 11);
//! assert_eq!(std::fs::read(&out)?, b"hello ferry");
//! println!("{} bytes in {:.3} s on {}", report.bytes, report.seconds, report.backend);
//! # Ok(())
//! # }
//! ```
//!
//! A download either completes byte for byte (checked against a sha256 when given one, see
//! [`Engine::get_with`]) or fails with a [`GetError`] and leaves nothing under its final name.
//! [`hub::Pull`] mirrors a Hugging Face repo (verified, resumable after a crash through its
//! journal) and [`serve::Server`] serves such mirrors. Downloads speak HTTPS (rustls), go
//! through proxies, race IPv6 and IPv4 (Happy Eyeballs), take a file's bytes from several
//! mirrors ([`GetItem::mirror`]) and keep to a bandwidth cap ([`Config::limit_rate`]). What the
//! crate does not do yet: HTTP/2 and QUIC.
#![warn(missing_docs)]

mod backend;
mod error;
/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`); not part of the API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod get;
mod http1;
pub mod hub;
mod journal;
mod net;
mod plan;
mod retry;
mod runtime;
pub mod serve;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::backend::sink::SinkKind;
pub use crate::backend::{
    Backend, BackendKind, SAFE_MODE_ENV, Selection, select as select_backend,
};
pub use crate::error::{ErrorKind, GetError, StartError};
pub use crate::get::ping::PingReport;
pub use crate::get::sources::EndpointReport;
pub use crate::runtime::WorkerInfo;
pub use kernel_probes;

use crate::backend::{UringVerdict, judge_setup_errno};
use crate::get::{Batch, Counters, Ctx, FileSpec, JobSettings, SinkChoice, Target};
pub use crate::net::tls::{TlsInfo, tls_info};
use crate::runtime::Workers;
use crate::verify::Checksum;
pub use crate::verify::HashAlgorithm;

/// Connections a job keeps open by default. Measured on loopback (2 cores, ext4, nginx): 16
/// instead of 8 takes 2,000 small files in 0.49-0.52 s instead of 0.59-0.61 s (more fsyncs
/// share each journal commit), and a 2 GiB verified file in the same time (2.7-2.8 s), for
/// 27 MiB more peak memory.
pub const DEFAULT_CONNECTIONS: usize = 16;

/// A file's size before it is known.
const UNKNOWN_TOTAL: u64 = u64::MAX;

/// How an [`Engine`] runs. Start from [`Config::default`] and change what you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Which back-end to run ([`BackendKind::Auto`] by default).
    pub backend: BackendKind,
    /// Force the portable back-end unless `backend` is [`BackendKind::Uring`]. Also set by
    /// `FERRY_SAFE_MODE=1` in the environment.
    pub safe_mode: bool,
    /// Worker threads; by default one per CPU of the NUMA node nearest `placement_dir`'s disk.
    pub threads: Option<usize>,
    /// Connections a job keeps open at once, shared by its files ([`DEFAULT_CONNECTIONS`]).
    pub connections: usize,
    /// Range size; by default about two ranges per connection over what is left, 1-8 MiB, and
    /// on a file with a checksum at most 64 MiB over all the connections together.
    pub chunk_size: Option<u64>,
    /// Size of one write buffer (default 1 MiB; a multiple of 4 KiB).
    pub buffer_size: usize,
    /// Writes in flight per connection (default 4). Memory is bounded per job, however many
    /// files it has: a connection holds at most `write_depth + 1` buffers, and with sha256s to
    /// check the verifiers keep at most 128 MiB of written buffers, together, until they are
    /// hashed, so buffers take at most `connections * (write_depth + 1) * buffer_size + 128 MiB`
    /// (208 MiB by default). Returned buffers are kept for reuse and taken before new ones are
    /// allocated, so idle and used together stay under the peak in use (at most 208 MiB idle).
    /// Buffers are carved from 2 MiB huge-page chunks, which adds at most one partly carved
    /// chunk.
    pub write_depth: usize,
    /// How bytes reach the file; by default O_DIRECT on io_uring where the filesystem allows
    /// it, and buffered in safe mode (which never uses O_DIRECT).
    pub sink: Option<SinkKind>,
    /// Where downloads will land, for NUMA placement of the workers.
    pub placement_dir: Option<PathBuf>,
    /// PEM files of CA certificates to trust for `https://`, besides Mozilla's roots, the
    /// system store, and the files `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE` name.
    pub ca_files: Vec<PathBuf>,
    /// The proxy for every URL (`http://`, `socks5://` or `socks5h://`, credentials allowed);
    /// without it `HTTPS_PROXY`, `HTTP_PROXY` and `ALL_PROXY` apply. `NO_PROXY` applies to both.
    pub proxy: Option<String>,
    /// How long one TCP connect attempt may take (default 10 s).
    pub connect_timeout: Duration,
    /// How long a read may bring no byte before the stall watchdog drops the connection and
    /// the range is fetched again (default 30 s).
    pub read_timeout: Duration,
    /// A cap on the bytes per second all of the engine's downloads read together (a token
    /// bucket shared by every connection); `None` (the default) for no cap.
    pub limit_rate: Option<u64>,
    /// Bytes to leave free on the filesystem a file is written to; by default 1% of it, at
    /// most 256 MiB. A file whose bytes would go under it waits for space (see `space_wait`).
    pub min_free: Option<u64>,
    /// How long a file waits for another process to free disk space before it fails with
    /// [`GetError::NoSpace`] (default 60 s; zero fails at once).
    pub space_wait: Duration,
    /// Whether a redirect from a public address may lead to a private, loopback or link-local
    /// one (default: refused, with [`GetError::Redirect`]).
    pub allow_private_redirects: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendKind::Auto,
            safe_mode: false,
            threads: None,
            connections: DEFAULT_CONNECTIONS,
            chunk_size: None,
            buffer_size: 1 << 20,
            write_depth: 4,
            sink: None,
            placement_dir: None,
            ca_files: Vec::new(),
            proxy: None,
            connect_timeout: net::Timeouts::default().connect,
            read_timeout: net::Timeouts::default().read,
            limit_rate: None,
            min_free: None,
            space_wait: Duration::from_secs(60),
            allow_private_redirects: false,
        }
    }
}

/// The engine: a back-end and its pinned workers. Jobs started on it share the workers.
/// Dropping the engine waits for running jobs to finish, then stops the workers.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    selection: Selection,
    workers: Workers,
    /// The sink chosen per filesystem (by device number): the O_DIRECT probe writes a file, so
    /// it runs once per filesystem, not once per download or directory.
    sinks: std::sync::Mutex<std::collections::HashMap<u64, SinkChoice>>,
    /// Trust for `https://` (built on first use) and the proxy settings.
    dialer: net::Dialer,
    /// Set by [`Interrupter::interrupt`]; every job of the engine reads it.
    interrupted: Arc<std::sync::atomic::AtomicBool>,
}

impl Engine {
    /// Probes the kernel, selects the back-end and starts the workers.
    ///
    /// With [`BackendKind::Auto`], a blocked or missing io_uring falls back to the portable
    /// back-end and the reason is logged once (and kept in [`Engine::selection`]); with
    /// [`BackendKind::Uring`] it is an error.
    pub fn new(config: Config) -> Result<Engine, StartError> {
        let proxies = net::proxy::Proxies::from_env(config.proxy.as_deref())
            .map_err(|detail| StartError::Proxy { detail })?;
        let mut selection = backend::select(config.backend, config.safe_mode)?;
        let cpus = runtime::default_cpus(config.placement_dir.as_deref());
        let threads = config.threads.unwrap_or(cpus.len()).max(1);
        let workers = match Workers::spawn(selection.backend, threads, &cpus) {
            Ok(w) => w,
            Err(e) if selection.backend == Backend::Uring => {
                // The probe's ring worked but a worker's did not (memlock, a per-thread limit).
                let reason = format!(
                    "building the io_uring runtime: {}",
                    kernel_probes::describe_io_error(&e.source)
                );
                let sysctl = kernel_probes::uring().disabled_sysctl;
                let kernel = kernel_probes::Kernel::current().version;
                match (
                    config.backend,
                    judge_setup_errno(e.source.raw_os_error(), &reason, sysctl, kernel),
                ) {
                    (BackendKind::Auto, UringVerdict::Unavailable(why)) => {
                        selection = Selection {
                            backend: Backend::Portable,
                            reason: format!("io_uring unavailable: {why}"),
                            fell_back: true,
                        };
                        Workers::spawn(Backend::Portable, threads, &cpus).map_err(|e| {
                            StartError::Worker {
                                worker: e.worker,
                                source: e.source,
                            }
                        })?
                    }
                    (_, UringVerdict::Unavailable(reason)) => {
                        return Err(StartError::UringUnavailable { reason });
                    }
                    (_, _) => return Err(StartError::UringBroken { reason }),
                }
            }
            Err(e) => {
                return Err(StartError::Worker {
                    worker: e.worker,
                    source: e.source,
                });
            }
        };
        if selection.fell_back {
            tracing::warn!(
                "{}; using the portable back-end (safe mode)",
                selection.reason
            );
        } else {
            tracing::debug!(backend = %selection.backend, reason = %selection.reason, "back-end selected");
        }
        if let Some(w) = workers.info().iter().find(|w| w.pin_error.is_some()) {
            tracing::warn!(
                "could not pin worker threads to their CPUs ({}); running unpinned",
                w.pin_error.as_deref().unwrap_or("")
            );
        }
        let dialer = net::Dialer {
            tls: net::tls::TlsClient::new(&config.ca_files),
            proxies: Arc::new(proxies),
            timeouts: net::Timeouts {
                connect: config.connect_timeout.max(Duration::from_millis(1)),
                read: config.read_timeout.max(Duration::from_millis(1)),
            },
            winners: Arc::default(),
            rate: config
                .limit_rate
                .map(|r| Arc::new(net::rate::RateLimit::new(r))),
            fast_open: fast_open_clients(),
            allow_private_redirects: config.allow_private_redirects,
        };
        Ok(Engine {
            config,
            selection,
            workers,
            sinks: Default::default(),
            dialer,
            interrupted: Arc::default(),
        })
    }

    /// A handle that interrupts this engine's jobs, running and future, from any thread (a
    /// signal handler's, say). See [`Interrupter`].
    pub fn interrupter(&self) -> Interrupter {
        Interrupter {
            flag: Arc::clone(&self.interrupted),
        }
    }

    /// The back-end in use and why it was chosen.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// How the engine was configured.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The trust and proxies connections are made with.
    pub(crate) fn dialer(&self) -> &net::Dialer {
        &self.dialer
    }

    /// The workers, with their CPUs and whether pinning held.
    pub fn workers(&self) -> &[WorkerInfo] {
        self.workers.info()
    }

    /// Starts downloading `url` to `output`.
    ///
    /// The URL and the output path are checked before anything is sent: a bad URL, an
    /// unsupported scheme, a missing or unwritable directory, or an output that is a directory
    /// fail here. The bytes land in `output` + `.incomplete` and are renamed to `output` once
    /// complete and fsynced.
    pub fn get(&self, url: &str, output: impl AsRef<Path>) -> Result<Job, GetError> {
        self.get_with(url, output, &GetOptions::default())
    }

    /// [`Engine::get`] with options: a sha256 the file must have, for one.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ferry::{Config, Engine, GetOptions};
    ///
    /// let engine = Engine::new(Config::default())?;
    /// let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    /// let job = engine.get_with("http://127.0.0.1:8080/abc", "abc", &GetOptions::new().sha256(sha))?;
    /// let report = job.wait()?; // a mismatch is fetched once more, then `GetError::ChecksumMismatch`
    /// assert_eq!(report.verified.map(|h| h.digest).as_deref(), Some(sha));
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_with(
        &self,
        url: &str,
        output: impl AsRef<Path>,
        options: &GetOptions,
    ) -> Result<Job, GetError> {
        let mut item = GetItem::new(url, output);
        if let Some(hex) = &options.sha256 {
            item = item.sha256(hex.clone());
        }
        self.get_many(vec![item])
    }

    /// Downloads many files as one job over [`Config::connections`] kept-alive connections:
    /// files are started largest first (by [`GetItem::size`], when stated), a large file gets
    /// every connection that is free, and small files go one after another over the same
    /// connection. Progress counts bytes across all files. One file failing does not stop the
    /// others; [`Job::wait_all`] returns a result per file, in the order given.
    ///
    /// Every item is checked before anything is sent (as in [`Engine::get`]), and two items
    /// may not write the same file.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ferry::{Config, Engine, GetItem};
    ///
    /// let engine = Engine::new(Config::default())?;
    /// let items = (0..100).map(|i| {
    ///     GetItem::new(format!("http://127.0.0.1:8080/f{i}"), format!("out/f{i}"))
    /// });
    /// for result in engine.get_many(items)?.wait_all() {
    ///     let report = result?;
    ///     println!("{}: {} bytes", report.path.display(), report.bytes);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_many(&self, items: impl IntoIterator<Item = GetItem>) -> Result<Job, GetError> {
        self.get_many_journaled(items, None)
    }

    /// [`Engine::get_many`] keeping `journal` (a pull's): items with a digest and a size are
    /// recorded there as their writes complete, and resumed from it.
    pub(crate) fn get_many_journaled(
        &self,
        items: impl IntoIterator<Item = GetItem>,
        journal: Option<Arc<journal::Journal>>,
    ) -> Result<Job, GetError> {
        let started = Instant::now();
        let items: Vec<GetItem> = items.into_iter().collect();
        if items.is_empty() {
            return Err(GetError::NothingToDo);
        }
        let mut resolved = get::Resolved::new(self.dialer.clone());
        let mut outputs = std::collections::HashMap::new();
        let mut dirs_ok = std::collections::HashSet::new();
        let mut dirs: std::collections::HashMap<PathBuf, backend::nofollow::Dir> =
            std::collections::HashMap::new();
        let cwd = std::env::current_dir().ok();
        let counters = Arc::new(Counters::new(
            items.len() as u64,
            Arc::clone(&self.interrupted),
        ));
        let settings = Arc::new(JobSettings {
            connections: self.config.connections.max(1),
            chunk: self.config.chunk_size,
            staging: self.config.buffer_size.max(backend::buf::BUF_ALIGN),
            depth: self.config.write_depth.max(1),
            backend: self.selection.backend,
            backend_reason: self.selection.reason.clone(),
            threads: self.workers.len(),
            space: get::space::JobSpace::new(self.config.min_free, self.config.space_wait),
            durable: get::durable::Durable::new(items.len() > 1),
        });
        let window = verify::Window::new(get::HASH_WINDOW);
        let endpoints = Arc::new(get::sources::Endpoints::default());
        let mut files = Vec::with_capacity(items.len());
        for item in items {
            let checksum = match &item.checksum {
                Some((algorithm, hex)) => {
                    Some(Checksum::parse(*algorithm, hex).ok_or_else(|| {
                        GetError::InvalidChecksum {
                            algorithm: *algorithm,
                            given: hex.clone(),
                        }
                    })?)
                }
                None => None,
            };
            if checksum.is_some_and(|c| c.algorithm() == HashAlgorithm::GitSha1)
                && item.size.is_none()
            {
                return Err(GetError::GitSha1WithoutSize { url: item.url });
            }
            let mut target = Target::new(&item.url, &mut resolved)?;
            if let Some(secret) = item.authorization {
                secret
                    .check()
                    .map_err(|detail| GetError::InvalidCredential { detail })?;
                target.authorization = Some(secret);
            }
            let mirrors = item
                .mirrors
                .iter()
                .map(|m| Target::new(m, &mut resolved))
                .collect::<Result<Vec<_>, _>>()?;
            check_output(&item.output, &mut dirs_ok)?;
            let absolute = match &cwd {
                Some(cwd) if item.output.is_relative() => cwd.join(&item.output),
                _ => item.output.clone(),
            };
            if outputs
                .insert(absolute.clone(), item.partial_suffix)
                .is_some()
            {
                return Err(GetError::DuplicateOutput { path: item.output });
            }
            let parent = get::parent_dir(&item.output);
            let dir = match dirs.get(parent) {
                Some(d) => d.clone(),
                None => {
                    let d = open_output_dir(parent, item.root.as_deref())?;
                    dirs.insert(parent.to_path_buf(), d.clone());
                    d
                }
            };
            let sink = self.sink_for(parent);
            let spec = FileSpec {
                target,
                mirrors,
                dir,
                partial_suffix: item.partial_suffix,
                output: item.output,
                sink,
                checksum,
                size: item.size,
                journal: journal.clone(),
            };
            files.push(Arc::new(Ctx::new(
                spec,
                Arc::clone(&settings),
                (Arc::clone(&counters), Arc::clone(&window)),
                (started, Arc::clone(&endpoints)),
            )));
        }
        check_collisions(&outputs)?;
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let batch = Batch::new(files, Arc::clone(&counters), settings.connections, done_tx);
        if batch.start(self.workers.dispatcher()) == 0 {
            return Err(GetError::EngineStopped);
        }
        Ok(Job {
            counters,
            done: done_rx,
            result: None,
        })
    }

    /// Measures `url` from here: a new connection, timed step by step (connect, TLS, time
    /// to the first byte of a ranged `GET` for its first `bytes` bytes, redirects followed), and
    /// the throughput of reading them, all on the data plane a download would use. One sample,
    /// no retry. `ferry ping` runs this for each endpoint in turn.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ferry::{Config, Engine};
    ///
    /// let engine = Engine::new(Config::default())?;
    /// let p = engine.ping("http://127.0.0.1:8080/files/big", 4 << 20)?;
    /// println!("{} ms to connect, {:?} B/s", p.connect_seconds * 1e3, p.bytes_per_second);
    /// # Ok(())
    /// # }
    /// ```
    pub fn ping(&self, url: &str, bytes: u64) -> Result<PingReport, GetError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let url = url.to_owned();
        let dialer = self.dialer.clone();
        let task: runtime::Task = Box::new(move || {
            Box::pin(async move {
                let mut resolved = get::Resolved::new(dialer);
                let _ = tx.send(get::ping::ping(&url, bytes, &mut resolved).await);
            })
        });
        if !self.workers.dispatcher().run(task) {
            return Err(GetError::EngineStopped);
        }
        rx.recv().unwrap_or(Err(GetError::EngineStopped))
    }

    /// The sink for files in `dir`, probed once per filesystem, with whether that filesystem's
    /// `syncfs` may make them durable.
    fn sink_for(&self, dir: &Path) -> SinkChoice {
        use std::os::unix::fs::MetadataExt;
        let choose = |dev: Option<u64>| {
            let mut sink = choose_sink(self.selection.backend, self.config.sink, dir);
            sink.syncfs = dev.filter(|_| kernel_probes::fs::full_syncfs(dir));
            tracing::debug!(sink = %sink.kind, reason = %sink.reason, syncfs = sink.syncfs.is_some(), dir = %dir.display(), "sink chosen");
            sink
        };
        let Ok(dev) = std::fs::metadata(dir).map(|m| m.dev()) else {
            return choose(None);
        };
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(dev)
            .or_insert_with(|| choose(Some(dev)))
            .clone()
    }
}

/// Bytes for people, in binary units: `512 B`, `1.50 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// One download of a job ([`Engine::get_many`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GetItem {
    /// The URL (http://).
    pub url: String,
    /// The file to write; it appears only once complete (and verified, with a sha256).
    pub output: PathBuf,
    /// The digest the file must have (hex): a sha256 as in [`GetOptions::sha256`], or a git
    /// blob id (which needs [`GetItem::size`]).
    pub checksum: Option<(HashAlgorithm, String)>,
    /// The size, when known up front (a listing states it): larger files start first, and
    /// progress has a total from the start.
    pub size: Option<u64>,
    /// `Authorization` for the URL's own origin only (never across a redirect to another).
    authorization: Option<get::Secret>,
    /// Other URLs with the same bytes ([`GetItem::mirror`]).
    pub mirrors: Vec<String>,
    /// A directory the output lies beneath, in which no symlink is followed (a repo's folder).
    root: Option<PathBuf>,
    /// What the partial file's name adds to the output's ([`get::PARTIAL_SUFFIX`] by default).
    partial_suffix: &'static str,
}

impl GetItem {
    /// Download `url` to `output`.
    pub fn new(url: impl Into<String>, output: impl AsRef<Path>) -> GetItem {
        GetItem {
            url: url.into(),
            output: output.as_ref().to_path_buf(),
            checksum: None,
            size: None,
            authorization: None,
            mirrors: Vec::new(),
            root: None,
            partial_suffix: get::PARTIAL_SUFFIX,
        }
    }

    /// The partial file is `OUTPUT` + `suffix` (a pull's, which huggingface_hub never adopts).
    pub(crate) fn partial_suffix(mut self, suffix: &'static str) -> GetItem {
        self.partial_suffix = suffix;
        self
    }

    /// The output lies beneath `root`, and no symlink between the two is followed.
    pub(crate) fn beneath(mut self, root: impl Into<PathBuf>) -> GetItem {
        self.root = Some(root.into());
        self
    }

    /// Another URL serving the same bytes (repeatable). Ranges are spread over the URL and
    /// its mirrors; a range that fails or stalls on one moves to another, and a far slower
    /// one is demoted. The `Authorization` goes to the first URL's origin only; the
    /// checksum, when given, covers the bytes from all of them.
    pub fn mirror(mut self, url: impl Into<String>) -> GetItem {
        self.mirrors.push(url.into());
        self
    }

    /// Checks the file against this sha256.
    pub fn sha256(mut self, hex: impl Into<String>) -> GetItem {
        self.checksum = Some((HashAlgorithm::Sha256, hex.into()));
        self
    }

    /// Checks the file against this git blob id (`sha1("blob LEN\0" + bytes)`, how the
    /// Hugging Face Hub names files kept outside LFS). The size must be stated too.
    pub fn git_sha1(mut self, hex: impl Into<String>) -> GetItem {
        self.checksum = Some((HashAlgorithm::GitSha1, hex.into()));
        self
    }

    /// Sends `Authorization: Bearer TOKEN` to the URL's origin (scheme, host and port); a
    /// redirect elsewhere (a CDN) gets no token.
    pub fn bearer_token(mut self, token: impl Into<String>) -> GetItem {
        self.authorization = Some(get::Secret::bearer(&token.into()));
        self
    }

    /// The same credential for several items (a pull's files).
    pub(crate) fn authorization(mut self, authorization: Option<get::Secret>) -> GetItem {
        self.authorization = authorization;
        self
    }

    /// States the file's size up front.
    pub fn size(mut self, bytes: u64) -> GetItem {
        self.size = Some(bytes);
        self
    }
}

/// Options of one download ([`Engine::get_with`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GetOptions {
    /// The sha256 the file must have (64 hex digits). The hash follows the download in file
    /// order; a mismatch fetches the file once more, then fails with
    /// [`GetError::ChecksumMismatch`] and leaves nothing under the final name.
    pub sha256: Option<String>,
}

impl GetOptions {
    /// No options.
    pub fn new() -> GetOptions {
        GetOptions::default()
    }

    /// Checks the file against this sha256.
    pub fn sha256(mut self, hex: impl Into<String>) -> GetOptions {
        self.sha256 = Some(hex.into());
        self
    }
}

/// The sink for a file in `dir`: buffered in safe mode or when asked; otherwise O_DIRECT when a
/// probe of `dir` shows it works, buffered (with the reason) when it does not.
fn choose_sink(backend: Backend, asked: Option<SinkKind>, dir: &Path) -> SinkChoice {
    let buffered = |reason: String| SinkChoice {
        kind: SinkKind::Buffered,
        reason,
        align: 1,
        syncfs: None,
    };
    if backend == Backend::Portable {
        match asked {
            Some(SinkKind::Direct) => {
                tracing::warn!("safe mode does not use O_DIRECT; writing through the page cache")
            }
            Some(SinkKind::Splice) => {
                tracing::warn!("safe mode does not splice; writing through the page cache")
            }
            _ => {}
        }
        return buffered("safe mode writes through the page cache".into());
    }
    match asked {
        Some(SinkKind::Buffered) => return buffered("buffered writes were asked for".into()),
        Some(SinkKind::Splice) => {
            let missing = kernel_probes::uring().missing(&[
                kernel_probes::UringOp::Splice,
                kernel_probes::UringOp::PollAdd,
            ]);
            if missing.is_empty() {
                return SinkChoice {
                    kind: SinkKind::Splice,
                    reason: "splice was asked for (socket -> pipe -> file, POLL_ADD linked)".into(),
                    align: 1,
                    syncfs: None,
                };
            }
            let names: Vec<_> = missing.iter().map(|op| op.name()).collect();
            let reason = format!("the kernel lacks io_uring {}", names.join(", "));
            tracing::warn!("{reason}; writing through the page cache instead of splicing");
            return buffered(reason);
        }
        _ => {}
    }
    let probe = kernel_probes::fs::probe_dir(dir);
    match (&probe.o_direct, probe.dio_align) {
        (kernel_probes::Support::Available, align) => {
            let align = align.map_or(4096, |a| u64::from(a.offset.max(a.memory)).max(1));
            SinkChoice {
                kind: SinkKind::Direct,
                reason: format!(
                    "O_DIRECT works on {} ({}), offset alignment {align}",
                    dir.display(),
                    probe.filesystem
                ),
                align,
                syncfs: None,
            }
        }
        (why, _) => {
            let reason = format!("O_DIRECT unavailable on {}: {why}", dir.display());
            if asked == Some(SinkKind::Direct) {
                tracing::warn!("{reason}; writing through the page cache");
            }
            buffered(reason)
        }
    }
}

/// Checks that `output` can be created: not a directory or another file that is not a regular
/// one (the rename at the end would replace `/dev/null` with a regular file), in a directory
/// that exists (each directory checked once: `dirs_ok`). The file itself (`output.incomplete`
/// first) is created when its download starts.
fn check_output(
    output: &Path,
    dirs_ok: &mut std::collections::HashSet<PathBuf>,
) -> Result<(), GetError> {
    if let Ok(m) = std::fs::metadata(output) {
        let path = output.to_path_buf();
        if m.is_dir() {
            return Err(GetError::OutputIsDirectory { path });
        }
        if let Some(what) = special_file(m.file_type()) {
            return Err(GetError::OutputNotRegularFile { path, what });
        }
    }
    let dir = get::parent_dir(output);
    if dirs_ok.contains(dir) {
        return Ok(());
    }
    let checked = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(GetError::OutputDirMissing {
            dir: dir.to_path_buf(),
        }),
        Ok(m) if !m.is_dir() => Err(GetError::OutputDirNotDirectory {
            dir: dir.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(GetError::OutputDirNotDirectory {
            dir: dir.to_path_buf(),
        }),
        _ => Ok(()),
    };
    if checked.is_ok() {
        dirs_ok.insert(dir.to_path_buf());
    }
    checked
}

/// The directory `dir` of an output, held open for the job. With a `root` (a repo's folder that
/// `dir` lies in), no symlink beneath the root is followed on the way.
fn open_output_dir(dir: &Path, root: Option<&Path>) -> Result<backend::nofollow::Dir, GetError> {
    let not_writable = |source| GetError::OutputNotWritable {
        path: dir.to_path_buf(),
        source,
    };
    match root.and_then(|r| Some((r, dir.strip_prefix(r).ok()?))) {
        Some((root, rel)) => backend::nofollow::Dir::open(root)
            .and_then(|r| r.beneath(rel, false))
            .map_err(not_writable),
        None => backend::nofollow::Dir::open(dir).map_err(not_writable),
    }
}

/// Refuses a job in which one output is another's partial file (`X` and `X.incomplete`), or is
/// named like ferry's temporary files: one would overwrite the other's bytes, and the final
/// name could receive the wrong file.
fn check_collisions(
    outputs: &std::collections::HashMap<PathBuf, &'static str>,
) -> Result<(), GetError> {
    let mut sorted: Vec<(&PathBuf, &&str)> = outputs.iter().collect();
    sorted.sort();
    for (path, suffix) in sorted {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.contains(".ferry-tmp-") {
            return Err(GetError::OutputCollision {
                path: path.clone(),
                detail: "the name has the form of ferry's temporary files (*.ferry-tmp-*); \
                         refused"
                    .into(),
            });
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(suffix);
        let partial = PathBuf::from(partial);
        if outputs.contains_key(&partial) {
            return Err(GetError::OutputCollision {
                path: partial,
                detail: format!(
                    "it is also the partial file of {} in the same job: one would overwrite \
                     the other's bytes; refused",
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// What a file that is neither regular nor a directory is, in words; `None` for those two.
fn special_file(t: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    [
        (t.is_char_device(), "a character device"),
        (t.is_block_device(), "a block device"),
        (t.is_fifo(), "a FIFO"),
        (t.is_socket(), "a socket"),
    ]
    .into_iter()
    .find_map(|(is, what)| is.then_some(what))
}

/// Stops an [`Engine`]'s jobs early, cleanly: each connection stops at its next read, the writes
/// in flight complete (and a pull's resume journal records them), files not started are not, and
/// every file that was not complete ends with [`GetError::Interrupted`], nothing under its final
/// name. Files already complete finish as usual. Interrupting is for good: jobs started later
/// end at once the same way. `ferry` calls it on the first SIGINT or SIGTERM.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use ferry::{Config, Engine, GetError};
///
/// let engine = Engine::new(Config::default())?;
/// let job = engine.get("http://127.0.0.1:8080/files/big", "big")?;
/// let stop = engine.interrupter();
/// std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_secs(1));
///     stop.interrupt();
/// });
/// match job.wait() {
///     Err(GetError::Interrupted) => println!("stopped early"),
///     other => println!("{other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Interrupter {
    flag: Arc<std::sync::atomic::AtomicBool>,
}

impl Interrupter {
    /// Interrupts the engine's jobs; returns at once (the jobs end on their own threads).
    pub fn interrupt(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How far a job has come, in bytes across all its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Bytes written so far.
    pub done: u64,
    /// The bytes of the whole job, once every file's size is known (stated up front with
    /// [`GetItem::size`] or told by the server).
    pub total: Option<u64>,
    /// Files finished (successfully or not).
    pub files_done: u64,
    /// Files in the job.
    pub files: u64,
}

/// What a running job reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A progress snapshot.
    Progress(Progress),
}

/// Downloads in flight. [`Job::wait`] returns the [`Report`] of a one-file job,
/// [`Job::wait_all`] one result per file.
#[derive(Debug)]
pub struct Job {
    counters: Arc<Counters>,
    done: crossbeam_channel::Receiver<get::batch::Results>,
    result: Option<get::batch::Results>,
}

impl Job {
    /// A snapshot of the job's progress.
    pub fn progress(&self) -> Progress {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counters;
        Progress {
            done: c.done.load(Relaxed),
            total: (c.unknown.load(Relaxed) == 0).then(|| c.total.load(Relaxed)),
            files_done: c.files_done.load(Relaxed),
            files: c.files,
        }
    }

    /// Progress events, one every `every`, ending (after a last snapshot) when the job finishes.
    pub fn events(&mut self, every: Duration) -> Events<'_> {
        Events {
            job: self,
            every,
            finished: false,
        }
    }

    /// True once the job has finished, successfully or not.
    pub fn is_finished(&mut self) -> bool {
        self.poll(Duration::ZERO)
    }

    fn poll(&mut self, timeout: Duration) -> bool {
        if self.result.is_none() {
            match self.done.recv_timeout(timeout) {
                Ok(r) => self.result = Some(r),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return false,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    self.result = Some(Vec::new())
                }
            }
        }
        true
    }

    /// Waits for the job to finish: the report of its file, or why it failed. For a job of
    /// several files, the first failure in the order given, else the first file's report; see
    /// [`Job::wait_all`].
    pub fn wait(self) -> Result<Report, GetError> {
        let mut first = None;
        for r in self.wait_all() {
            match r {
                Err(e) => return Err(e),
                Ok(report) => {
                    first.get_or_insert(report);
                }
            }
        }
        first.ok_or(GetError::EngineStopped)
    }

    /// Waits for the job to finish: one result per file, in the order given.
    pub fn wait_all(mut self) -> Vec<Result<Report, GetError>> {
        while !self.poll(Duration::from_secs(3600)) {}
        match self.result.take() {
            Some(r) if !r.is_empty() => r,
            // The engine stopped before the job could report.
            _ => (0..self.counters.files)
                .map(|_| Err(GetError::EngineStopped))
                .collect(),
        }
    }
}

/// The iterator returned by [`Job::events`].
#[derive(Debug)]
pub struct Events<'a> {
    job: &'a mut Job,
    every: Duration,
    finished: bool,
}

impl Iterator for Events<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        self.finished = self.job.poll(self.every);
        Some(Event::Progress(self.job.progress()))
    }
}

/// What a finished download did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The URL asked for.
    pub url: String,
    /// The URL the bytes came from, when redirects led elsewhere.
    pub url_final: Option<String>,
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Seconds from the start of the job until the file was durable under its final name.
    pub seconds: f64,
    /// `bytes / seconds / 1e9`.
    pub gb_per_s: f64,
    /// The back-end that moved the bytes.
    pub backend: Backend,
    /// Why that back-end.
    pub backend_reason: String,
    /// Worker threads of the engine.
    pub threads: usize,
    /// Connections the download used.
    pub connections: usize,
    /// True when the file came in ranges; false for one stream (the server ignored `Range`).
    pub ranged: bool,
    /// How the bytes were written.
    pub sink: SinkKind,
    /// Why that sink.
    pub sink_reason: String,
    /// The verified digest, when one was asked for.
    pub verified: Option<HashReport>,
    /// Times the file was fetched (2 after a sha256 mismatch that the second fetch cured).
    pub fetches: u32,
    /// Bytes taken over from an earlier run that was stopped (a pull's resume journal), read
    /// back and verified rather than fetched again.
    pub resumed: u64,
    /// Ranges fetched again after a body ended short.
    pub retries: u64,
    /// Ranges split so that connections finish together.
    pub splits: u64,
    /// Bytes written from buffers registered with the ring (io_uring `WRITE_FIXED`): on the
    /// io_uring back-end, all that its direct and buffered sinks wrote from the buffer arena;
    /// 0 in safe mode, with the splice sink, or where the kernel refused the registration (see
    /// the debug log).
    pub written_fixed: u64,
    /// With mirrors ([`GetItem::mirror`]): the bytes of this file each endpoint served, and
    /// each endpoint's failures and demotion over the whole job so far. Empty without mirrors.
    pub endpoints: Vec<EndpointReport>,
}

/// How a download's digest was verified.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HashReport {
    /// What was hashed.
    pub algorithm: HashAlgorithm,
    /// The digest, which matched the one asked for (lowercase hex).
    pub digest: String,
    /// Bytes hashed from buffers still in memory.
    pub from_memory: u64,
    /// Bytes read back from the file to be hashed (they had left memory before their turn).
    pub read_back: u64,
}

/// Whether `net.ipv4.tcp_fastopen` lets clients use TCP Fast Open (its bit 1), said once.
fn fast_open_clients() -> bool {
    let sysctl = kernel_probes::net::tcp_fastopen();
    let on = sysctl.is_some_and(|v| v & 1 != 0);
    tracing::debug!(
        sysctl = ?sysctl,
        "TCP Fast Open for repeat connections: {}",
        if on { "on" } else { "off" }
    );
    on
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `body` to each of `conns` connections, one request each, then closes.
    fn one_shot_origin(body: &'static [u8], conns: usize) -> u16 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for _ in 0..conns {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let mut req = [0u8; 2048];
                let _ = s.read(&mut req);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
            }
        });
        port
    }

    /// The back-ends this machine runs: portable always, io_uring where the probe says so.
    fn backends_here() -> Vec<BackendKind> {
        let mut kinds = vec![BackendKind::Portable];
        if kernel_probes::uring().is_available() {
            kinds.push(BackendKind::Uring);
        } else {
            eprintln!("SKIP io_uring: {}", kernel_probes::uring().setup);
        }
        kinds
    }

    #[test]
    fn engine_runs_on_each_backend_and_pins_on_uring() {
        for kind in backends_here() {
            let config = Config {
                backend: kind,
                threads: Some(2),
                ..Config::default()
            };
            let engine = Engine::new(config).expect("engine");
            assert_eq!(engine.workers().len(), 2, "backend={kind:?}");
            match engine.selection().backend {
                Backend::Uring => {
                    // This process may run pinned already; pinning is checked against what was asked.
                    for w in engine.workers() {
                        assert!(
                            w.cpu.is_some(),
                            "backend={kind:?}: uring workers have a CPU"
                        );
                        assert!(
                            w.pinned || w.pin_error.is_some(),
                            "backend={kind:?}: pinning is either confirmed or explained: {w:?}"
                        );
                    }
                }
                Backend::Portable => assert!(
                    engine
                        .workers()
                        .iter()
                        .all(|w| w.cpu.is_none() && !w.pinned),
                    "safe mode does not pin"
                ),
            }
            let dir = tempfile::tempdir().expect("tmp");
            let out = dir.path().join("f");
            let port = one_shot_origin(b"0123456789abcdef", 1);
            let job = engine
                .get(&format!("http://127.0.0.1:{port}/f"), &out)
                .expect("start");
            let report = job.wait().expect("download");
            assert_eq!(
                report.backend,
                engine.selection().backend,
                "backend={kind:?}"
            );
            assert!(!report.ranged, "the origin ignores Range");
            assert_eq!(
                std::fs::read(&out).expect("read"),
                b"0123456789abcdef",
                "backend={kind:?}"
            );
            eprintln!(
                "ran on backend={:?} workers={:?}",
                report.backend,
                engine.workers()
            );
        }
    }

    #[test]
    fn a_job_outlives_its_engine() {
        for kind in backends_here() {
            let engine = Engine::new(Config {
                backend: kind,
                threads: Some(2),
                ..Config::default()
            })
            .expect("engine");
            let dir = tempfile::tempdir().expect("tmp");
            let out = dir.path().join("f");
            let port = one_shot_origin(b"outlives the engine", 1);
            let job = engine
                .get(&format!("http://127.0.0.1:{port}/f"), &out)
                .expect("start");
            // Dropping the engine waits for the job, which still finishes.
            drop(engine);
            let report = job.wait().expect("download");
            assert_eq!(std::fs::read(&out).expect("read"), b"outlives the engine");
            eprintln!("ran on backend={:?}", report.backend);
        }
    }

    #[test]
    fn explicit_uring_request_matches_the_probe() {
        let config = Config {
            backend: BackendKind::Uring,
            threads: Some(1),
            ..Config::default()
        };
        match (Engine::new(config), kernel_probes::uring().is_available()) {
            (Ok(e), true) => assert_eq!(e.selection().backend, Backend::Uring),
            (Err(StartError::UringUnavailable { reason }), false) => assert!(!reason.is_empty()),
            (other, avail) => panic!("probe says available={avail}, engine gave {other:?}"),
        }
    }
}
