//! [`ThreadPool`]: fixed worker threads for blocking or heavy business logic.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, ThreadId};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};

/// A job for the pool.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why [`ThreadPool::submit`] refused a job. The job is handed back.
#[derive(thiserror::Error)]
pub enum SubmitError {
    /// The queue is at capacity: the caller should shed load (the bank answers `BUSY`).
    #[error("worker queue is full")]
    Full(Job),
    /// The pool is stopping or stopped.
    #[error("worker pool is stopped")]
    Stopped(Job),
}

impl fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(_) => f.write_str("Full(..)"),
            SubmitError::Stopped(_) => f.write_str("Stopped(..)"),
        }
    }
}

/// What the workers count, read by any thread.
#[derive(Default)]
struct Counters {
    /// Jobs that returned or panicked.
    completed: AtomicU64,
    /// Jobs that panicked.
    panicked: AtomicU64,
}

/// A fixed set of worker threads fed by a bounded queue (a `crossbeam-channel` of
/// `capacity` jobs), so I/O threads never block on business logic and a flood of requests
/// meets a clear "full" answer instead of unbounded memory.
///
/// - [`submit`](ThreadPool::submit) never waits for the workers or for room: it fails
///   with [`SubmitError::Full`] or [`SubmitError::Stopped`] and hands the job back.
/// - A job that panics is logged and counted; the worker goes on.
/// - [`stop`](ThreadPool::stop) refuses new jobs, lets the workers finish every job already
///   queued, and joins them: a stopping pool must not drop work it accepted.
///   Every job for which `submit` returned `Ok` runs exactly once, even when `submit` races
///   with `stop`. Dropping the pool stops it.
/// - [`stop_within`](ThreadPool::stop_within) is `stop` with a bound on the wait, for a
///   process that must exit even if a job never returns (a database that stopped
///   answering).
///
/// # How it holds those promises
///
/// The channel does the hard part. Workers loop on `recv`, which sleeps while the queue is
/// empty and, once every sender is gone, still returns each queued job before it reports
/// the disconnection: so stopping is dropping the one sender, and draining is the workers'
/// ordinary loop. The sender sits in an `RwLock<Option<_>>`: `submit` holds it shared from
/// its check to its `try_send`, `stop` takes it exclusively to drop the sender, so no job is
/// sent after the workers may have seen the disconnection. Each worker also holds a clone
/// of an `exit` sender that never sends; a `stop` caller waits for all of them to be
/// dropped (every worker gone), which needs no condvar even when several threads stop at
/// once.
///
/// ```
/// use duo_workers::ThreadPool;
/// use std::sync::mpsc;
///
/// let pool = ThreadPool::new("worker", 2, 64)?;
/// let (tx, rx) = mpsc::channel();
/// for i in 0..10 {
///     let tx = tx.clone();
///     pool.submit(move || tx.send(i * i).unwrap()).unwrap();
/// }
/// pool.stop();
/// let mut got: Vec<i32> = rx.try_iter().collect();
/// got.sort();
/// assert_eq!(got, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct ThreadPool {
    /// The queue's only sender; `None` once [`stop`](ThreadPool::stop) has been called.
    jobs: RwLock<Option<Sender<Job>>>,
    /// A receiver of the queue kept only to report its length and capacity.
    queue: Receiver<Job>,
    /// Disconnected when the last worker has exited (each holds an `exit` sender).
    exited: Receiver<()>,
    counters: Arc<Counters>,
    /// Join handles, taken by the first `stop`.
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// The workers' thread ids, to recognise `stop` called from a job.
    worker_ids: Vec<ThreadId>,
    name: String,
}

impl ThreadPool {
    /// The largest queue [`new`](ThreadPool::new) accepts: 16 Mi jobs. The queue's slots
    /// (24 bytes each) are allocated and written up front, so a capacity read from a
    /// configuration (`u32::MAX`, say) would otherwise abort the process on the failed
    /// allocation, or panic in the channel for `usize::MAX`.
    pub const MAX_CAPACITY: usize = 1 << 24;

    /// Starts `threads` workers (at least one) named `{name}-{i}` with a queue of
    /// `capacity` jobs (at least one, at most [`MAX_CAPACITY`](ThreadPool::MAX_CAPACITY)).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a capacity above [`MAX_CAPACITY`](ThreadPool::MAX_CAPACITY) or a
    /// name with a NUL byte (no thread can be named so: spawning one would panic); the
    /// error of spawning a thread (the workers already started are stopped).
    pub fn new(name: &str, threads: usize, capacity: usize) -> std::io::Result<ThreadPool> {
        if name.contains('\0') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("worker thread name {name:?} contains a NUL byte"),
            ));
        }
        if capacity > Self::MAX_CAPACITY {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "worker queue capacity {capacity} is above the maximum, {}",
                    Self::MAX_CAPACITY
                ),
            ));
        }
        let (jobs, queue) = crossbeam_channel::bounded(capacity.max(1));
        let (exit, exited) = crossbeam_channel::bounded::<()>(0);
        let mut pool = ThreadPool {
            jobs: RwLock::new(Some(jobs)),
            queue,
            exited,
            counters: Arc::default(),
            workers: Mutex::new(Vec::new()),
            worker_ids: Vec::new(),
            name: name.to_owned(),
        };
        // On an error `exit` is dropped on the way out of `spawn_workers`, before `pool`:
        // the workers already started are then the only holders its `stop` waits for.
        pool.spawn_workers(threads.max(1), exit)?;
        Ok(pool)
    }

    /// Starts `threads` workers, each with a clone of `exit`.
    fn spawn_workers(&mut self, threads: usize, exit: Sender<()>) -> std::io::Result<()> {
        for i in 0..threads {
            let (queue, exit, counters) = (self.queue.clone(), exit.clone(), self.counters.clone());
            let worker = thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || work(&queue, &counters, exit))?;
            self.worker_ids.push(worker.thread().id());
            self.workers.get_mut().push(worker);
        }
        Ok(())
    }

    /// Queues `job`; never waits for room or for a worker.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Full`] if the queue is at capacity, [`SubmitError::Stopped`] once
    /// [`stop`](ThreadPool::stop) has been called; either way the job is handed back.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), SubmitError> {
        self.submit_boxed(Box::new(job))
    }

    /// [`ThreadPool::submit`] for an already boxed job.
    ///
    /// # Errors
    ///
    /// As [`ThreadPool::submit`].
    pub fn submit_boxed(&self, job: Job) -> Result<(), SubmitError> {
        let jobs = self.jobs.read();
        let Some(jobs) = jobs.as_ref() else {
            return Err(SubmitError::Stopped(job));
        };
        jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) => SubmitError::Full(job),
            // Cannot happen while `self.queue` lives; refused all the same.
            TrySendError::Disconnected(job) => SubmitError::Stopped(job),
        })
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.queue.capacity().unwrap_or(usize::MAX)
    }

    /// Jobs finished (including those that panicked). A job is counted just after it
    /// returns, so a job's own side effects may be seen slightly before the count moves;
    /// after [`stop`](ThreadPool::stop) returns the count is final.
    pub fn completed(&self) -> u64 {
        // Relaxed: a statistic; `stop`'s wait for the workers orders the final value.
        self.counters.completed.load(Ordering::Relaxed)
    }

    /// Jobs that panicked (also counted in [`completed`](ThreadPool::completed), and there
    /// first: read before `completed`, it is never above it).
    pub fn panicked(&self) -> u64 {
        // Acquire: pairs with the worker's Release, so a `completed` read after this one
        // counts every job this one counts.
        self.counters.panicked.load(Ordering::Acquire)
    }

    /// Whether [`stop`](ThreadPool::stop) has been called (new jobs are refused).
    pub fn is_stopped(&self) -> bool {
        self.jobs.read().is_none()
    }

    /// Refuses new jobs, finishes the queued ones, joins the workers. Idempotent and safe
    /// to call from several threads at once: every caller returns only when all workers
    /// have exited. Also done on drop. A job that never returns makes it wait for ever:
    /// [`stop_within`](ThreadPool::stop_within) bounds the wait.
    ///
    /// Called from a job on one of this pool's workers (directly or by dropping the last
    /// handle to the pool there), it cannot wait for its own worker, nor for the others
    /// (one may be running a job that waits for a job still queued, which only the calling
    /// worker is free to run, or for the calling job to get past its `stop`): it logs an
    /// error, refuses new jobs and returns at once. The workers finish the queue and exit
    /// by themselves; a later `stop` from another thread (or the drop) waits for them.
    pub fn stop(&self) {
        // Dropping the sender disconnects the queue; the workers drain it, then exit.
        drop(self.jobs.write().take());
        if self.on_worker() {
            // Waiting here for any worker could deadlock; the handles stay for a later
            // `stop` (or are dropped with the pool: the workers exit by themselves).
            return;
        }
        // Take the handles and release the lock before joining: a job calling `stop`
        // meanwhile must not block on the lock while we wait for its worker.
        let handles = std::mem::take(&mut *self.workers.lock());
        for worker in handles {
            self.join(worker);
        }
        // Another caller may hold the handles and still be joining: wait for the workers
        // themselves. Nothing is ever sent: `recv` returns when the last worker's `exit`
        // sender is dropped.
        let _ = self.exited.recv();
    }

    /// As [`stop`](ThreadPool::stop) (new jobs are refused at once, the workers finish the
    /// queue and exit), but waits at most `limit` for them. Returns `true` if every worker
    /// has exited (every accepted job has run, the counts are final), `false` if some were
    /// still busy at the deadline: they go on with the jobs already accepted and exit once
    /// the queue is empty, by themselves; a later `stop`, `stop_within` or the drop waits
    /// for them again. A process that returns from `main` meanwhile ends them with it.
    ///
    /// Called from a job on one of this pool's workers, it cannot wait for its own worker:
    /// it logs an error and returns `false` at once.
    pub fn stop_within(&self, limit: Duration) -> bool {
        drop(self.jobs.write().take());
        if self.on_worker() {
            return false;
        }
        // Nothing is ever sent: disconnected once the last worker's `exit` sender is gone.
        // (`recv_timeout` waits without a deadline for a `limit` past the clock's range.)
        if let Err(RecvTimeoutError::Timeout) = self.exited.recv_timeout(limit) {
            return false;
        }
        // Every worker has left its loop: joining them takes no time, and reports a
        // thread that panicked.
        let handles = std::mem::take(&mut *self.workers.lock());
        for worker in handles {
            self.join(worker);
        }
        true
    }

    /// Whether the calling thread is one of this pool's workers (`stop` from a job): then
    /// logs an error, since such a `stop` cannot wait for the workers.
    fn on_worker(&self) -> bool {
        let on_worker = self.worker_ids.contains(&thread::current().id());
        if on_worker {
            log::error!(
                "ThreadPool {}: stop() called from its own worker: not waiting for the workers",
                self.name
            );
        }
        on_worker
    }

    /// Joins `worker`, logging if its thread panicked.
    fn join(&self, worker: JoinHandle<()>) {
        if worker.join().is_err() {
            log::error!("ThreadPool {}: a worker thread panicked", self.name);
        }
    }
}

/// A worker's life: runs jobs until the queue is disconnected and empty; `exit` is dropped
/// when it leaves, however it leaves.
fn work(queue: &Receiver<Job>, counters: &Counters, exit: Sender<()>) {
    for job in queue {
        let ran = duo_reactor::catch_panic(std::panic::AssertUnwindSafe(job));
        counters.completed.fetch_add(1, Ordering::Relaxed);
        if let Err(payload) = ran {
            // Counted after `completed`, and both before the report (a logger may take its
            // time): `panicked` never runs ahead of `completed`. Release, read with
            // Acquire, so whoever sees this panic counted sees its job completed too.
            counters.panicked.fetch_add(1, Ordering::Release);
            // Neither a logger that panics nor a payload whose destructor does may kill
            // the worker: the queue would be left with nobody to drain it (accepted jobs
            // never run, `stop` returns without them).
            let _ = duo_reactor::catch_panic(std::panic::AssertUnwindSafe(|| {
                let what = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("a payload that is not a string");
                duo_reactor::log_limited!(
                    log::Level::Error,
                    "{}: a job panicked ({what}); the worker goes on",
                    thread::current().name().unwrap_or("worker")
                );
            }));
            let _ = duo_reactor::catch_panic(std::panic::AssertUnwindSafe(|| drop(payload)));
        }
    }
    drop(exit);
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("name", &self.name)
            .field("queued", &self.queued())
            .field("capacity", &self.capacity())
            .field("threads", &self.worker_ids.len())
            .field("panicked", &self.panicked())
            .field("completed", &self.completed())
            .field("stopped", &self.is_stopped())
            .finish()
    }
}
