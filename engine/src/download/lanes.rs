//! A job's lanes: `connections` kept-alive connections, each a task on one of the workers, that
//! between them fetch every file of the job.
//!
//! Files wait in a crossbeam [`Injector`] in start order (largest first). A lane that starts a
//! file pops from its own FIFO deque, refilling it with a batch from the injector, or steals from
//! another lane's deque when both are empty: small files go several at a time to one lane and its
//! connection, and an idle lane takes over what a busy one has not reached. Which work a free
//! lane does next (join an active file, start one, split, wait, leave) is decided by
//! [`plan::files::next`](crate::proto::plan::files::next) under one short lock, which also counts the
//! files started, probing, active and settling, so that no lane leaves while work may still
//! appear. The last lane to leave a file settles it (hash, made durable, rename); when every file
//! is settled, the job's directories are fsynced once each and the results go to the
//! [`Job`](crate::Job).
//!
//! The job starts with the connections [`super::crowd`] says, and a task of the job opens more
//! while they pay (connections by measurement); a lane above the count leaves once it holds no
//! claimed file (its deque is then empty: only its owner pushes to it).
//!
//! Not here: what happens inside a file (`first.rs`, `lease.rs`, `stream.rs`, `settle.rs`), or
//! HTTP (`conn.rs`).

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_deque::{Injector, Steal, Stealer, Worker};

use super::conn::{Conn, FirstAhead};
use super::file::{FileDownload, JobProgress};
use super::first::{Started, start_file};
use super::lease::{join_file, run_ranged};
use super::request::Lane;
use super::settle::{Settled, settle};
use super::stream::run_stream;
use crate::error::GetError;
use crate::proto::file::{MAX_FIRSTS_AHEAD, first_ahead, pipelining_pays};
use crate::proto::plan::files::{self, LaneStep, Offer};
use crate::proto::plan::grow::Step as GrowStep;
use crate::report::Report;
use crate::runtime::{Dispatcher, Task};

/// Files a job settles in the background at once (each holds a descriptor while its fsync
/// runs); beyond this, lanes settle their files themselves.
const SETTLING_MAX: usize = 64;

/// What the job hands back when it ends: one result per file, in the order given.
pub(crate) type Results = Vec<Result<Report, GetError>>;

struct Sched {
    /// Files not yet started (in the deques), minus those a lane has reserved to start.
    unstarted: usize,
    /// Files started whose first answer has not come yet.
    probing: usize,
    /// Ranged files with lanes on them (indices into `files`).
    active: Vec<usize>,
    /// Files no lane works on any more, being settled (one may be fetched again).
    settling: usize,
    /// Files not settled yet.
    remaining: usize,
    /// Lanes waiting for a change.
    waiters: Vec<flume::Sender<()>>,
}

impl Sched {
    fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            let _ = w.try_send(());
        }
    }
}

/// What a lane does next.
enum Step {
    Join(usize),
    Start,
    Wait(flume::Receiver<()>),
    Exit,
}

/// The files of a job and the lanes' shared state.
pub(crate) struct Lanes {
    files: Vec<Arc<FileDownload>>,
    progress: Arc<JobProgress>,
    injector: Injector<usize>,
    stealers: Vec<Stealer<usize>>,
    /// The deques of lanes not started yet, in lane order (one per connection `-c` allows).
    locals: Mutex<VecDeque<Worker<usize>>>,
    sched: Mutex<Sched>,
    results: Mutex<Vec<Option<Result<Report, GetError>>>>,
    done: Mutex<Option<crossbeam_channel::Sender<Results>>>,
    /// Keeps the workers' queues open until the job ends, so that an engine dropped mid-job
    /// still finishes it (the workers stop once their queues close and their tasks are done).
    workers: Mutex<Option<Dispatcher>>,
}

impl Lanes {
    /// A job of `files` over the connections `progress.crowd` allows; `done` receives the
    /// results.
    pub(crate) fn new(
        files: Vec<Arc<FileDownload>>,
        progress: Arc<JobProgress>,
        done: crossbeam_channel::Sender<Results>,
    ) -> Arc<Lanes> {
        let lanes = progress.crowd.cap();
        let injector = Injector::new();
        // A file to start in the order given counts as one of unknown size: those start
        // first, in the order given.
        let sizes: Vec<Option<u64>> = files
            .iter()
            .map(|f| f.size_hint().filter(|_| !f.in_order))
            .collect();
        for i in files::start_order(&sizes) {
            injector.push(i);
        }
        let locals: VecDeque<Worker<usize>> =
            (0..lanes.max(1)).map(|_| Worker::new_fifo()).collect();
        let stealers = locals.iter().map(Worker::stealer).collect();
        let n = files.len();
        Arc::new(Lanes {
            files,
            progress,
            injector,
            stealers,
            locals: Mutex::new(locals),
            sched: Mutex::new(Sched {
                unstarted: n,
                probing: 0,
                active: Vec::new(),
                settling: 0,
                remaining: n,
                waiters: Vec::new(),
            }),
            results: Mutex::new((0..n).map(|_| None).collect()),
            done: Mutex::new(Some(done)),
            workers: Mutex::new(None),
        })
    }

    /// Starts the lanes on the workers, in turn, and the task that grows their number where
    /// that may pay; returns how many lanes started.
    pub(crate) fn start(self: &Arc<Self>, workers: Dispatcher) -> usize {
        *self.workers.lock().unwrap_or_else(|p| p.into_inner()) = Some(workers.clone());
        let started = self.start_lanes(&workers);
        if started > 0 && !self.progress.crowd.settled() {
            let lanes = Arc::clone(self);
            let task: Task = Box::new(move || Box::pin(async move { lanes.grow().await }));
            workers.run(task);
        }
        started
    }

    /// Starts the lanes up to the count, each on a worker in turn; returns how many started.
    fn start_lanes(self: &Arc<Self>, workers: &Dispatcher) -> usize {
        let mut started = 0;
        for id in self.progress.crowd.to_start() {
            let Some(local) = self
                .locals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            else {
                break;
            };
            let lanes = Arc::clone(self);
            let task: Task = Box::new(move || Box::pin(async move { lanes.lane(id, local).await }));
            if workers.run(task) {
                started += 1;
            }
        }
        started
    }

    /// Connections by measurement: ticks the job's [`Crowd`](super::crowd::Crowd) with its
    /// bytes and round trip until it settles or the job ends, starting the lanes it opens and
    /// waking those it lets go.
    async fn grow(self: Arc<Self>) {
        let crowd = &self.progress.crowd;
        let endpoints = self.files.first().map(|f| Arc::clone(&f.endpoints));
        loop {
            if self.lock().remaining == 0 || self.progress.interrupted() {
                return;
            }
            let done = self.progress.done.load(Ordering::Relaxed);
            let left = (self.progress.unknown.load(Ordering::Relaxed) == 0).then(|| {
                self.progress
                    .total
                    .load(Ordering::Relaxed)
                    .saturating_sub(done)
            });
            let rtt = endpoints.as_ref().and_then(|e| e.least_wait_any());
            match crowd.tick(self.progress.elapsed(), done, left, rtt) {
                GrowStep::Wait(wait) => compio::time::sleep(wait).await,
                GrowStep::Open(n) => {
                    self.size_plans_for(n);
                    let workers = self
                        .workers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    if let Some(workers) = workers {
                        self.start_lanes(&workers);
                    }
                }
                GrowStep::Back(n) => {
                    self.size_plans_for(n);
                    self.lock().wake_all();
                    return;
                }
                GrowStep::Settled(_) => return,
            }
        }
    }

    /// The active files' leases are sized for `n` connections from now on.
    fn size_plans_for(&self, n: usize) {
        for f in &self.lock().active {
            self.files[*f].with_plan(|p| p.set_connections(n));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn lane(self: Arc<Self>, id: usize, local: Worker<usize>) {
        let mut lane = Lane {
            id,
            conn: None,
            claimed: VecDeque::new(),
            crowd: Arc::clone(&self.progress.crowd),
            delivered: false,
            refused: false,
        };
        loop {
            // Above the job's count: run what this lane's deque still holds, then leave.
            if lane.leaving() && lane.claimed.is_empty() {
                match self.take_own(&local) {
                    Some(f) => self.run_file(f, &mut lane, &local).await,
                    None => {
                        self.lock().wake_all();
                        return;
                    }
                }
                continue;
            }
            // Files this lane claimed go first, in the order their requests went out.
            if let Some(f) = lane.claimed.pop_front() {
                self.run_file(f, &mut lane, &local).await;
                continue;
            }
            match self.next() {
                Step::Join(f) => {
                    join_file(&self.files[f], &mut lane).await;
                    self.leave(f).await;
                }
                Step::Start => {
                    let f = self.pop(&local);
                    self.run_file(f, &mut lane, &local).await;
                }
                Step::Wait(rx) => {
                    let _ = rx.recv_async().await;
                }
                Step::Exit => return,
            }
        }
    }

    fn next(&self) -> Step {
        let mut s = self.lock();
        let offers: Vec<Offer> = s
            .active
            .iter()
            .map(|&f| {
                self.files[f].offer().unwrap_or(Offer {
                    frontier_left: 0,
                    has_work: false,
                })
            })
            .collect();
        match files::next(&offers, s.unstarted > 0, s.probing + s.settling) {
            LaneStep::Join(i) => {
                let f = s.active[i];
                self.files[f].helpers.fetch_add(1, Ordering::Relaxed);
                Step::Join(f)
            }
            LaneStep::Start => {
                s.unstarted -= 1;
                s.probing += 1;
                Step::Start
            }
            LaneStep::Wait => {
                let (tx, rx) = flume::bounded(1);
                s.waiters.push(tx);
                Step::Wait(rx)
            }
            LaneStep::Exit => Step::Exit,
        }
    }

    /// A file from this lane's own deque, started (`None` when it is empty).
    fn take_own(&self, local: &Worker<usize>) -> Option<usize> {
        let mut s = self.lock();
        // Lanes that reserved a file under the lock find one in some deque: take one only
        // while one is not reserved.
        if s.unstarted == 0 {
            return None;
        }
        let f = local.pop()?;
        s.unstarted -= 1;
        s.probing += 1;
        Some(f)
    }

    /// Pops a file to start: the lane reserved one under the lock, so one is in a deque.
    fn pop(&self, local: &Worker<usize>) -> usize {
        loop {
            if let Some(i) = local.pop() {
                return i;
            }
            match self.injector.steal_batch_and_pop(local) {
                Steal::Success(i) => return i,
                Steal::Retry => continue,
                Steal::Empty => {}
            }
            for s in &self.stealers {
                if let Steal::Success(i) = s.steal() {
                    return i;
                }
            }
            // Another thread is moving a batch between deques this instant.
            std::thread::yield_now();
        }
    }

    /// Fetches a file this lane started, until other lanes or a settling task take it over.
    /// A file whose first answer is the whole file may first have the first requests of the
    /// next files sent behind it ([`Lanes::ask_ahead`]).
    async fn run_file(self: &Arc<Self>, f: usize, lane: &mut Lane, local: &Worker<usize>) {
        let ctx = &self.files[f];
        match start_file(ctx, lane).await {
            Ok(Started::Ranged {
                mut conn,
                pipe,
                first,
                whole,
            }) => {
                self.opened(f, true);
                if whole {
                    self.ask_ahead(ctx, first.src, &mut conn, lane, local).await;
                }
                run_ranged(ctx, lane, conn, pipe, first).await;
            }
            Ok(Started::Stream(stream)) => {
                self.opened(f, false);
                run_stream(ctx, lane, stream).await;
            }
            Ok(Started::Empty) => self.opened(f, false),
            Err(e) => {
                ctx.fail(e);
                self.opened(f, false);
            }
        }
        self.leave(f).await;
    }

    /// Sends the first requests of the next files on `conn`, behind the answer to `file`'s
    /// (from source `src`) whose head was read (HTTP/1.1 pipelining): many small files then
    /// cost a round trip per [`MAX_FIRSTS_AHEAD`] files, not one each. Only where pipelining
    /// pays at that endpoint ([`pipelining_pays`]: a WAN's round trip), for files that come
    /// whole in their first answer or whose size is unknown ([`first_ahead`]), to the same
    /// connection. The files are claimed from this lane's deque (they count as started), in
    /// order; the lane runs them next, reading the answers in turn (`request.rs`). A file
    /// not asked for ahead stops the run: the requests on a connection follow the order
    /// the files are run in.
    async fn ask_ahead(
        &self,
        file: &FileDownload,
        src: usize,
        conn: &mut Conn,
        lane: &mut Lane,
        local: &Worker<usize>,
    ) {
        let endpoint = file.sources[src].endpoint;
        // Over HTTP/2 and HTTP/3 requests ahead are streams: no server can get them wrong.
        let streams = conn.is_multiplexed();
        let pays = |f: &FileDownload, endpoint| {
            f.settings.pipelining
                && (streams || f.endpoints.pipelines(endpoint))
                && f.endpoints
                    .least_wait(endpoint)
                    .is_some_and(|wait| pipelining_pays(wait, 0, None))
        };
        if !pays(file, endpoint) || lane.leaving() {
            return;
        }
        while conn.firsts_ahead.len() < MAX_FIRSTS_AHEAD {
            // The claimed files whose requests are on the connection come first in the queue.
            let next = match lane.claimed.get(conn.firsts_ahead.len()) {
                Some(&f) => f,
                None => match self.claim(local) {
                    Some(f) => {
                        lane.claimed.push_back(f);
                        f
                    }
                    None => return,
                },
            };
            let next = &self.files[next];
            let started =
                next.fetches.load(Ordering::Relaxed) > 0 || next.journal_resumable().is_some();
            let Some(asked) = first_ahead(next.size_hint, next.settings.chunk, started) else {
                return;
            };
            let src = next.pick(lane.id);
            let source = &next.sources[src];
            if !conn.serves(&source.origin) || !pays(next, source.endpoint) {
                return;
            }
            if conn.pipeline(&source.origin, asked.clone()).await.is_err() {
                // The body being read will meet the broken connection and say so.
                return;
            }
            next.pipelined.fetch_add(1, Ordering::Relaxed);
            conn.firsts_ahead.push_back(FirstAhead {
                file: FirstAhead::key(next),
                src,
                range: asked,
            });
        }
    }

    /// Claims a file not started yet from this lane's deque (or the injector), to start after
    /// the one it runs; `None` when there is none there.
    fn claim(&self, local: &Worker<usize>) -> Option<usize> {
        let mut s = self.lock();
        if s.unstarted == 0 {
            return None;
        }
        let f = local.pop().or_else(|| {
            loop {
                match self.injector.steal_batch_and_pop(local) {
                    Steal::Success(i) => break Some(i),
                    Steal::Retry => continue,
                    Steal::Empty => break None,
                }
            }
        })?;
        s.unstarted -= 1;
        s.probing += 1;
        Some(f)
    }

    /// The first answer of file `f` came: ranged files take helpers from now on.
    fn opened(&self, f: usize, ranged: bool) {
        let mut s = self.lock();
        s.probing -= 1;
        self.files[f].helpers.store(1, Ordering::Relaxed);
        if ranged {
            s.active.push(f);
        }
        s.wake_all();
    }

    /// This lane is done with file `f`. The last lane to leave has it settled: by a task of
    /// its own, so the lane goes on to the next file while the file is made durable (files
    /// settling at the same time share one `syncfs`, see [`super::durable`]), or by the lane
    /// itself when many are settling already.
    async fn leave(self: &Arc<Self>, f: usize) {
        let background = {
            let mut s = self.lock();
            if self.files[f].helpers.fetch_sub(1, Ordering::Relaxed) > 1 {
                return;
            }
            s.active.retain(|&a| a != f);
            s.settling += 1;
            s.settling <= SETTLING_MAX
        };
        if background {
            let lanes = Arc::clone(self);
            compio::runtime::spawn(async move { lanes.settle(f).await }).detach();
        } else {
            self.settle(f).await;
        }
    }

    /// Settles file `f`; a sha256 mismatch puts it back among the files to start.
    async fn settle(self: &Arc<Self>, f: usize) {
        match settle(&self.files[f]).await {
            Settled::Again => {
                self.injector.push(f);
                let mut s = self.lock();
                s.settling -= 1;
                s.unstarted += 1;
                s.wake_all();
            }
            Settled::Done(result) => self.record(f, *result),
        }
    }

    fn record(&self, f: usize, result: Result<Report, GetError>) {
        self.results.lock().unwrap_or_else(|p| p.into_inner())[f] = Some(result);
        self.progress.files_done.fetch_add(1, Ordering::Relaxed);
        let last = {
            let mut s = self.lock();
            s.settling -= 1;
            s.remaining -= 1;
            s.wake_all();
            s.remaining == 0
        };
        if last {
            self.complete();
        }
    }

    /// Every file is settled: make the renames durable and hand the results over.
    fn complete(&self) {
        let mut results: Results =
            std::mem::take(&mut *self.results.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .map(|r| r.unwrap_or(Err(GetError::EngineStopped)))
                .collect();
        if let Some(first) = self.files.first() {
            let (groups, files) = first.settings.durable.synced();
            tracing::debug!("{files} files made durable by {groups} syncfs calls");
        }
        // The directories that received a file, each fsynced once.
        let dirs: BTreeSet<PathBuf> = results
            .iter()
            .flatten()
            .map(|r| super::output::parent_dir(&r.path).to_path_buf())
            .collect();
        for dir in dirs {
            // Blocking, once per directory at the end of the job.
            let Err(e) = std::fs::File::open(&dir).and_then(|d| d.sync_all()) else {
                continue;
            };
            for r in &mut results {
                if matches!(r, Ok(rep) if super::output::parent_dir(&rep.path) == dir) {
                    *r = Err(GetError::Io {
                        op: "fsync directory",
                        path: dir.clone(),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    });
                }
            }
        }
        if let Some(tx) = self.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(results);
        }
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}
