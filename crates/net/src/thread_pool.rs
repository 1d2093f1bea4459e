//! [`ThreadPool`]: fixed worker threads for blocking or heavy business logic.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_queue::ArrayQueue;
use parking_lot::{Condvar, Mutex};

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
    /// Workers sleep on this when the queue is empty.
    lock: Mutex<()>,
    ready: Condvar,
    sleeping: AtomicU64,
    completed: AtomicU64,
    panicked: AtomicU64,
}

/// A fixed set of worker threads fed by a bounded queue (`crossbeam-queue`'s
/// `ArrayQueue`), so I/O threads never block on business logic and a flood of requests
/// meets a clear "full" answer instead of unbounded memory.
///
/// - [`submit`](ThreadPool::submit) never blocks: it fails with [`SubmitError::Full`] or
///   [`SubmitError::Stopped`] and hands the job back.
/// - A job that panics is logged and counted; the worker goes on.
/// - [`stop`](ThreadPool::stop) refuses new jobs, lets the workers finish every job already
///   queued, and joins them (seed 001's fix: a stopping pool must not drop accepted work).
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
    workers: Mutex<Vec<JoinHandle<()>>>,
    name: String,
}

impl ThreadPool {
    /// Starts `threads` workers (at least one) named `{name}-{i}` with a queue of
    /// `capacity` jobs (at least one).
    pub fn new(name: &str, threads: usize, capacity: usize) -> std::io::Result<ThreadPool> {
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(capacity.max(1)),
            stopping: AtomicBool::new(false),
            lock: Mutex::new(()),
            ready: Condvar::new(),
            sleeping: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        });
        let pool = ThreadPool {
            shared,
            workers: Mutex::new(Vec::new()),
            name: name.to_owned(),
        };
        for i in 0..threads.max(1) {
            let shared = pool.shared.clone();
            let t = thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(&shared))?;
            pool.workers.lock().push(t);
        }
        Ok(pool)
    }

    /// Queues `job`; never blocks.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), SubmitError> {
        self.submit_boxed(Box::new(job))
    }

    /// [`ThreadPool::submit`] for an already boxed job.
    pub fn submit_boxed(&self, job: Job) -> Result<(), SubmitError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(SubmitError::Stopped(job));
        }
        self.shared.queue.push(job).map_err(SubmitError::Full)?;
        // Pairs with the fence in `worker`: either we see its `sleeping` registration, or
        // it sees our job when it re-checks the queue.
        std::sync::atomic::fence(Ordering::SeqCst);
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

    /// Jobs finished (including those that panicked).
    pub fn completed(&self) -> u64 {
        self.shared.completed.load(Ordering::Relaxed)
    }

    /// Jobs that panicked.
    pub fn panicked(&self) -> u64 {
        self.shared.panicked.load(Ordering::Relaxed)
    }

    /// Refuses new jobs, finishes the queued ones, joins the workers. Idempotent; also
    /// done on drop. Must not be called from a worker of this pool (it would wait for
    /// itself); that case is detected, logged, and the other workers are still joined.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock();
            self.shared.ready.notify_all();
        }
        let me = thread::current().id();
        for t in self.workers.lock().drain(..) {
            if t.thread().id() == me {
                log::error!(
                    "ThreadPool {}: stop() called from its own worker",
                    self.name
                );
                continue;
            }
            if t.join().is_err() {
                log::error!("ThreadPool {}: a worker thread panicked", self.name);
            }
        }
    }
}

fn worker(shared: &Shared) {
    loop {
        if let Some(job) = shared.queue.pop() {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                shared.panicked.fetch_add(1, Ordering::Relaxed);
                log::error!("a worker job panicked; the worker goes on");
            }
            shared.completed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut guard = shared.lock.lock();
        // Re-check under the lock: a submitter that saw `sleeping == 0` pushed before we
        // registered; one that sees our registration notifies under this lock.
        shared.sleeping.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if shared.queue.is_empty() {
            if shared.stopping.load(Ordering::SeqCst) {
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
            .field("completed", &self.completed())
            .finish()
    }
}
