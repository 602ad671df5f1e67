//! The [`Engine`]: a back-end, its pinned workers and the dialer its jobs connect with.
//!
//! `Engine::new` probes the kernel, selects the back-end (falling back to safe mode when a
//! worker's ring cannot be built, [`backend::after_worker_setup_failed`]) and starts the
//! workers; `get`/`get_many` hand a job to [`download::start`]. Not here: what a job does
//! (`download/`), or how the back-end is chosen (`backend/`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::sink::{SinkChoice, choose_sink};
use crate::backend::{self, Backend, Selection};
use crate::config::Config;
use crate::download;
use crate::error::{GetError, StartError};
use crate::job::{GetItem, Job};
use crate::journal::Journal;
use crate::net;
use crate::report::PingReport;
use crate::runtime::{self, WorkerInfo, Workers};

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
    /// With [`BackendKind::Auto`](crate::BackendKind::Auto), a blocked or missing io_uring falls back to the portable
    /// back-end and the reason is logged once (and kept in [`Engine::selection`]); with
    /// [`BackendKind::Uring`](crate::BackendKind::Uring) it is an error.
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
                selection = backend::after_worker_setup_failed(config.backend, &e.source)?;
                Workers::spawn(Backend::Portable, threads, &cpus).map_err(|e| {
                    StartError::Worker {
                        worker: e.worker,
                        source: e.source,
                    }
                })?
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
            http2: config.http2,
            http3: config.http3,
            quic: Arc::default(),
            safe_mode: config.safe_mode || backend::safe_mode_from_env(),
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

    /// The flag [`Interrupter::interrupt`] sets, read by every job of the engine.
    pub(crate) fn interrupted(&self) -> &Arc<std::sync::atomic::AtomicBool> {
        &self.interrupted
    }

    /// Hands tasks to the workers.
    pub(crate) fn dispatcher(&self) -> runtime::Dispatcher {
        self.workers.dispatcher()
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
    /// complete and fsynced. To check a digest or add mirrors, start a [`GetItem`] with
    /// [`Engine::get_many`].
    pub fn get(&self, url: &str, output: impl AsRef<Path>) -> Result<Job, GetError> {
        self.get_many([GetItem::new(url, output)])
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
        journal: Option<Arc<Journal>>,
    ) -> Result<Job, GetError> {
        download::start(self, items.into_iter().collect(), journal)
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
                let mut resolved = net::target::Resolver::new(dialer);
                let _ = tx.send(download::ping::ping(&url, bytes, &mut resolved).await);
            })
        });
        if !self.workers.dispatcher().run(task) {
            return Err(GetError::EngineStopped);
        }
        rx.recv().unwrap_or(Err(GetError::EngineStopped))
    }

    /// The sink for files in `dir`, probed once per filesystem, with whether that filesystem's
    /// `syncfs` may make them durable.
    /// The sink of a scratch file in `dir` ([`GetItem::scratch`](crate::GetItem)): buffered,
    /// never grouped into a `syncfs`.
    pub(crate) fn scratch_sink(&self, dir: &Path) -> SinkChoice {
        let mut sink = choose_sink(
            self.selection.backend,
            Some(crate::backend::sink::SinkKind::Buffered),
            dir,
        );
        sink.syncfs = None;
        sink
    }

    pub(crate) fn sink_for(&self, dir: &Path) -> SinkChoice {
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
    use crate::backend::BackendKind;

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
