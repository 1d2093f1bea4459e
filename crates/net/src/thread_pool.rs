//! [`ThreadPool`]: fixed worker threads for blocking or heavy business logic.

use std::fmt;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, ThreadId};

use crossbeam_queue::ArrayQueue;
use parking_lot::{Condvar, Mutex, RwLock};

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

struct Shared {
    queue: ArrayQueue<Job>,
    stopping: AtomicBool,
    /// Submitters hold it shared from their `stopping` check to their push; `stop` takes
    /// it exclusively to set `stopping`. So every accepted job is in the queue before
    /// `stopping` is set, and a worker that sees `stopping` and then an empty queue knows
    /// no accepted job can still appear.
    gate: RwLock<()>,
    /// Workers sleep on `ready` when the queue is empty; non-worker callers of `stop` wait
    /// on `exited` for the last worker to leave.
    lock: Mutex<()>,
    ready: Condvar,
    exited: Condvar,
    sleeping: AtomicU64,
    /// Workers started and not yet exited.
    alive: AtomicUsize,
    completed: AtomicU64,
    panicked: AtomicU64,
}

/// A fixed set of worker threads fed by a bounded queue (`crossbeam-queue`'s
/// `ArrayQueue`), so I/O threads never block on business logic and a flood of requests
/// meets a clear "full" answer instead of unbounded memory.
///
/// - [`submit`](ThreadPool::submit) never waits for the workers or for room: it fails
///   with [`SubmitError::Full`] or [`SubmitError::Stopped`] and hands the job back.
/// - A job that panics is logged and counted; the worker goes on.
/// - [`stop`](ThreadPool::stop) refuses new jobs, lets the workers finish every job already
///   queued, and joins them (seed 001's fix: a stopping pool must not drop accepted work).
///   Every job for which `submit` returned `Ok` runs exactly once, even when `submit` races
///   with `stop`. Dropping the pool stops it.
///
/// ```
/// use duo_net::ThreadPool;
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
    shared: Arc<Shared>,
    /// Join handles, taken by the first `stop`.
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// The workers' thread ids, to recognise `stop` called from a job.
    worker_ids: Vec<ThreadId>,
    name: String,
}

impl ThreadPool {
    /// Starts `threads` workers (at least one) named `{name}-{i}` with a queue of
    /// `capacity` jobs (at least one).
    ///
    /// # Errors
    ///
    /// The error of spawning a thread; the workers already started are stopped.
    pub fn new(name: &str, threads: usize, capacity: usize) -> std::io::Result<ThreadPool> {
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(capacity.max(1)),
            stopping: AtomicBool::new(false),
            gate: RwLock::new(()),
            lock: Mutex::new(()),
            ready: Condvar::new(),
            exited: Condvar::new(),
            sleeping: AtomicU64::new(0),
            alive: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        });
        let mut pool = ThreadPool {
            shared,
            workers: Mutex::new(Vec::new()),
            worker_ids: Vec::new(),
            name: name.to_owned(),
        };
        for i in 0..threads.max(1) {
            let shared = pool.shared.clone();
            // Counted before the thread starts, so `stop` never sees 0 while one is coming.
            pool.shared.alive.fetch_add(1, Ordering::SeqCst);
            let spawned = thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(&shared));
            match spawned {
                Ok(t) => {
                    pool.worker_ids.push(t.thread().id());
                    pool.workers.get_mut().push(t);
                }
                Err(e) => {
                    // The closure (and its guard-less share) was dropped unrun.
                    pool.shared.alive.fetch_sub(1, Ordering::SeqCst);
                    return Err(e); // dropping `pool` stops the workers already started
                }
            }
        }
        Ok(pool)
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
    pub fn submit_boxed(&self, job: Job) -> Result<(), SubmitError> {
        {
            let _gate = self.shared.gate.read();
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Err(SubmitError::Stopped(job));
            }
            self.shared.queue.push(job).map_err(SubmitError::Full)?;
        }
        // Pairs with the fence in `worker`: either we see its `sleeping` registration, or
        // it sees our job when it re-checks the queue.
        fence(Ordering::SeqCst);
        // Wake a sleeper only if there is one; taking the lock orders us with a worker
        // that is about to sleep (it re-checks the queue under the same lock).
        if self.shared.sleeping.load(Ordering::SeqCst) > 0 {
            let _guard = self.shared.lock.lock();
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.shared.queue.len()
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.shared.queue.capacity()
    }

    /// Jobs finished (including those that panicked). A job is counted just after it
    /// returns, so a job's own side effects may be seen slightly before the count moves;
    /// after [`stop`](ThreadPool::stop) returns the count is final.
    pub fn completed(&self) -> u64 {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Jobs that panicked (also counted in [`completed`](ThreadPool::completed)).
    pub fn panicked(&self) -> u64 {
        self.shared.panicked.load(Ordering::SeqCst)
    }

    /// Whether [`stop`](ThreadPool::stop) has been called (new jobs are refused).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// Refuses new jobs, finishes the queued ones, joins the workers. Idempotent and safe
    /// to call from several threads at once: every caller returns only when all workers
    /// have exited. Also done on drop.
    ///
    /// Called from a job on one of this pool's workers (directly or by dropping the last
    /// handle to the pool there), it cannot wait for its own worker: it logs an error and
    /// returns without waiting for it (joining the other workers first if it is the first
    /// call); that worker exits once the job returns and the queue is empty.
    pub fn stop(&self) {
        {
            let _gate = self.shared.gate.write();
            self.shared.stopping.store(true, Ordering::SeqCst);
        }
        {
            let _guard = self.shared.lock.lock();
            self.shared.ready.notify_all();
        }
        let me = thread::current().id();
        let on_worker = self.worker_ids.contains(&me);
        if on_worker {
            log::error!(
                "ThreadPool {}: stop() called from its own worker",
                self.name
            );
        }
        // Take the handles and release the lock before joining: a job calling `stop`
        // meanwhile must not block on the lock while we wait for its worker.
        let handles = std::mem::take(&mut *self.workers.lock());
        for t in handles {
            if t.thread().id() == me {
                continue; // detached; it exits by itself after this job
            }
            if t.join().is_err() {
                log::error!("ThreadPool {}: a worker thread panicked", self.name);
            }
        }
        if !on_worker {
            // Another caller may hold the handles and still be joining: wait for the
            // workers themselves.
            let mut guard = self.shared.lock.lock();
            while self.shared.alive.load(Ordering::SeqCst) > 0 {
                self.shared.exited.wait(&mut guard);
            }
        }
    }
}

/// Counts a worker out when it leaves, however it leaves.
struct Alive<'a>(&'a Shared);

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        let _guard = self.0.lock.lock();
        self.0.alive.fetch_sub(1, Ordering::SeqCst);
        self.0.exited.notify_all();
    }
}

fn worker(shared: &Shared) {
    let _alive = Alive(shared);
    loop {
        if let Some(job) = shared.queue.pop() {
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                shared.panicked.fetch_add(1, Ordering::SeqCst);
                log::error!("a worker job panicked; the worker goes on");
                // A payload whose destructor panics must not kill the worker either.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(payload)));
            }
            shared.completed.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let mut guard = shared.lock.lock();
        // Re-check under the lock: a submitter that saw `sleeping == 0` pushed before we
        // registered; one that sees our registration notifies under this lock.
        shared.sleeping.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // `stopping` before the queue: every accepted job was pushed before `stopping` was
        // set (see `Shared::gate`), so an empty queue seen after it is empty for good.
        let stopping = shared.stopping.load(Ordering::SeqCst);
        if shared.queue.is_empty() {
            if stopping {
                shared.sleeping.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            shared.ready.wait(&mut guard);
        }
        shared.sleeping.fetch_sub(1, Ordering::SeqCst);
    }
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
            .field("completed", &self.completed())
            .field("panicked", &self.panicked())
            .field("stopped", &self.is_stopped())
            .finish()
    }
}
