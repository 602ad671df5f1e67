//! Thread-per-core workers: one single-threaded compio runtime per thread, each pinned to its own
//! CPU on the io_uring back-end, with the driver chosen by the engine (never compio's own choice).
//!
//! Work reaches a worker as a `Send` closure that builds a `!Send` future on that worker's thread,
//! so sockets, files and buffers live and die on one core. Pinning is checked after the fact with
//! `sched_getaffinity`; a refusal (a cpuset that excludes the CPU, a seccomp filter) is recorded on
//! the worker, logged once, and the worker runs unpinned. This module does not schedule ranges or
//! steal work; the job decides which worker runs what.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use compio::driver::{DriverType, ProactorBuilder};
use serde::Serialize;

use crate::backend::Backend;

/// A unit of work: built on the worker thread, run on its runtime.
pub(crate) type Task = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// What one worker is and where it runs.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    /// Worker index.
    pub index: usize,
    /// The CPU the worker was meant for (`None` on the portable back-end, which does not pin).
    pub cpu: Option<usize>,
    /// True when `sched_getaffinity` confirms the thread runs on exactly that CPU.
    pub pinned: bool,
    /// Why pinning was refused, when it was.
    pub pin_error: Option<String>,
}

/// The running workers. Dropping this stops them once their queued work is done.
pub(crate) struct Workers {
    dispatch: Dispatcher,
    threads: Vec<JoinHandle<()>>,
    info: Vec<WorkerInfo>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A worker that could not start: its index and the error of its runtime build.
#[derive(Debug)]
pub(crate) struct SpawnError {
    pub worker: usize,
    pub source: std::io::Error,
}

/// The CPUs workers should run on: those of the NUMA node nearest `dir`'s block device when sysfs
/// says, within this process's affinity mask; all allowed CPUs otherwise.
pub(crate) fn default_cpus(dir: Option<&Path>) -> Vec<usize> {
    let allowed: Vec<usize> = match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    };
    let numa = kernel_probes::numa::probe(dir);
    let near = numa
        .dir_device
        .as_ref()
        .and_then(|d| d.node)
        .and_then(|node| numa.cpus_of(node))
        .map(|cpus| {
            cpus.iter()
                .copied()
                .filter(|c| allowed.is_empty() || allowed.contains(c))
                .collect::<Vec<_>>()
        })
        .filter(|cpus| !cpus.is_empty());
    match near {
        Some(cpus) => cpus,
        None if !allowed.is_empty() => allowed,
        None => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

impl Workers {
    /// Starts `threads` workers on `backend`, worker `i` meant for `cpus[i % cpus.len()]`.
    pub(crate) fn spawn(
        backend: Backend,
        threads: usize,
        cpus: &[usize],
    ) -> Result<Workers, SpawnError> {
        // The buffers' address space, before any worker registers a chunk of it.
        crate::backend::buf::reserve_arena();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut senders = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads {
            let cpu =
                (backend == Backend::Uring && !cpus.is_empty()).then(|| cpus[index % cpus.len()]);
            let (tx, rx) = flume::unbounded::<Task>();
            let ready_tx = ready_tx.clone();
            let pool = cpus.len().max(2);
            let handle = std::thread::Builder::new()
                .name(format!("ferry-w{index}"))
                .spawn(move || worker_main(index, backend, cpu, pool, rx, ready_tx))
                .map_err(|source| SpawnError {
                    worker: index,
                    source,
                })?;
            senders.push(tx);
            handles.push(handle);
        }
        drop(ready_tx);
        let mut info: Vec<Option<WorkerInfo>> = vec![None; threads];
        let mut failed = None;
        for _ in 0..threads {
            match ready_rx.recv() {
                Ok(Ok(w)) => {
                    let i = w.index;
                    info[i] = Some(w);
                }
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(_) => break,
            }
        }
        let workers = Workers {
            dispatch: Dispatcher {
                senders,
                next: Arc::new(AtomicUsize::new(0)),
            },
            threads: handles,
            info: info.into_iter().flatten().collect(),
        };
        if let Some(e) = failed {
            return Err(e); // dropping `workers` stops the ones that did start
        }
        if workers.info.len() != threads {
            return Err(SpawnError {
                worker: workers.info.len(),
                source: std::io::Error::other("worker thread exited during start"),
            });
        }
        Ok(workers)
    }

    pub(crate) fn info(&self) -> &[WorkerInfo] {
        &self.info
    }

    /// A handle that jobs keep to hand work to the workers.
    pub(crate) fn dispatcher(&self) -> Dispatcher {
        self.dispatch.clone()
    }
}

/// Hands tasks to the workers in turn. Jobs hold one; it keeps the workers' queues open until the
/// job is done, so an engine dropped mid-job still finishes the job.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    senders: Vec<flume::Sender<Task>>,
    next: Arc<AtomicUsize>,
}

impl Dispatcher {
    pub(crate) fn run(&self, task: Task) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.senders[i % self.senders.len()].send(task).is_ok()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.dispatch.senders.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Ready = std::sync::mpsc::Sender<Result<WorkerInfo, SpawnError>>;

fn worker_main(
    index: usize,
    backend: Backend,
    cpu: Option<usize>,
    pool: usize,
    rx: flume::Receiver<Task>,
    ready: Ready,
) {
    let (pinned, pin_error) = match cpu {
        Some(cpu) => match pin_to(cpu) {
            Ok(()) => (true, None),
            Err(why) => (false, Some(why)),
        },
        None => (false, None),
    };
    let runtime = match build_runtime(backend, pool) {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(SpawnError {
                worker: index,
                source,
            }));
            return;
        }
    };
    if backend == Backend::Portable {
        // File I/O waits asleep for a pool thread instead of spinning for one.
        crate::backend::gate::install(pool);
    }
    // The ring's table of registered buffers, on this thread (SINGLE_ISSUER). Declared after
    // the runtime, so dropped before its ring closes.
    let _fixed = (backend == Backend::Uring)
        .then(|| crate::backend::fixed::install(&runtime))
        .and_then(|r| {
            r.map_err(|e| {
                tracing::debug!(worker = index, "no registered buffers: {e}; plain writes")
            })
            .ok()
        });
    if ready
        .send(Ok(WorkerInfo {
            index,
            cpu,
            pinned,
            pin_error,
        }))
        .is_err()
    {
        return;
    }
    drop(ready);
    runtime.block_on(async move {
        while let Ok(task) = rx.recv_async().await {
            compio::runtime::spawn(task()).detach();
        }
    });
}

/// Pins the calling thread to `cpu` and confirms it with `sched_getaffinity`.
fn pin_to(cpu: usize) -> Result<(), String> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)
        .map_err(|e| format!("sched_setaffinity(cpu {cpu}): {e}"))?;
    let got =
        rustix::thread::sched_getaffinity(None).map_err(|e| format!("sched_getaffinity: {e}"))?;
    if got.count() == 1 && got.is_set(cpu) {
        Ok(())
    } else {
        Err(format!(
            "asked for cpu {cpu}, sched_getaffinity reports {} cpus",
            got.count()
        ))
    }
}

/// Builds the runtime with the driver forced: io_uring with the engine's setup flags, or polling.
pub(crate) fn build_runtime(
    backend: Backend,
    pool: usize,
) -> std::io::Result<compio::runtime::Runtime> {
    let mut proactor = ProactorBuilder::new();
    // The polling driver runs file I/O on a blocking pool: keep it near the core count.
    proactor.thread_pool_limit(pool);
    match backend {
        Backend::Uring => {
            proactor
                .driver_type(DriverType::IoUring)
                .single_issuer(true)
                .defer_taskrun(true)
                .coop_taskrun(true);
        }
        Backend::Portable => {
            proactor.driver_type(DriverType::Poll);
        }
    }
    compio::runtime::RuntimeBuilder::new()
        .with_proactor(proactor)
        .build()
}

/// For tests that run on both back-ends: a runtime of each (`pool` blocking threads), io_uring
/// first; without io_uring here, the polling one only, and says so.
/// A uniform random number in `[0, 1)` for the retry backoff's jitter
/// ([`crate::proto::retry::backoff`]), from the standard library's per-process random keys.
pub(crate) fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (random % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
pub(crate) fn test_runtimes(pool: usize) -> Vec<(Backend, compio::runtime::Runtime)> {
    let mut runtimes = Vec::new();
    match build_runtime(Backend::Uring, pool) {
        Ok(rt) => runtimes.push((Backend::Uring, rt)),
        Err(e) => eprintln!("no io_uring here ({e}): checked on the portable back-end only"),
    }
    let rt = build_runtime(Backend::Portable, pool).expect("the polling runtime");
    runtimes.push((Backend::Portable, rt));
    runtimes
}
