//! Group commit: the writes of many connections share transactions and durable commits.
//!
//! A worker queues its [`WriteJob`] and tries to take a writer (a database connection that
//! writes). The worker that gets one (a leader) takes *everything* queued, up to a limit,
//! runs it as one batch (one transaction, one commit), then hands each job its results and
//! looks again. Workers that find every writer taken simply return: a current leader picks
//! their jobs up, in queue order, before it lets go (it looks at the queue after every batch,
//! and once more after letting go of its writer). So while one commit is syncing, the next
//! batch gathers, and the number of syncs per second, not of requests, is what the disk
//! limits.
//!
//! With one writer (SQLite) batches run one after the other. With several (PostgreSQL)
//! batches run side by side on separate connections; a connection has at most one job in
//! flight (see the server's module docs), so its writes still apply in its order. A free
//! writer does not take the queue the moment a job arrives while another batch is in
//! flight: the jobs gather until they make a batch as large as an average one in flight,
//! or until a leader in flight takes them ([`Queue::may_start`]). So a second writer
//! overlaps batches (one is sent while the other commits) instead of splitting the load
//! into a commit per job. Without group commit a batch is one job.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use parking_lot::Mutex;

use super::{StoreError, WriteJob, WriteOp, WriteResults};
use crate::metrics::BankMetrics;

/// The queue of write jobs and the writers that commit them.
pub(crate) struct GroupCommit<W> {
    queue: Mutex<Queue>,
    writers: Vec<Mutex<W>>,
    max_ops: usize,
    metrics: BankMetrics,
}

/// The fewest operations a batch started beside another one may have (fewer with a
/// smaller operation limit). Without such a floor, batches of one operation beget batches
/// of one: a leader occupies its worker thread while its batch waits for the other one's
/// commit, so jobs reach the queue one at a time, and each found a writer free.
const MIN_SIDE_BATCH: usize = 16;

/// The jobs waiting for a writer, and the batches on their way to the database.
struct Queue {
    jobs: VecDeque<WriteJob>,
    /// Operations in `jobs`.
    ops: usize,
    /// Batches being executed, and their operations.
    busy: usize,
    busy_ops: usize,
    /// [`MIN_SIDE_BATCH`], or the operation limit if smaller.
    side_min: usize,
}

impl Queue {
    /// Whether a free writer should take the queue now: when no batch is in flight, or
    /// when the queue holds as many operations as an average batch in flight (and at
    /// least [`Queue::side_min`]). Otherwise the jobs gather for a leader in flight to
    /// take when its batch ends: a batch sent beside another one that shares accounts
    /// waits for that one's commit anyway, so sending jobs one by one as they arrive
    /// would buy a commit per job, and batches that touch hot accounts would queue
    /// behind each other one operation at a time.
    fn may_start(&self) -> bool {
        !self.jobs.is_empty()
            && (self.busy == 0
                || (self.ops >= self.side_min && self.ops * self.busy >= self.busy_ops))
    }
}

impl<W> GroupCommit<W> {
    /// Commits through `writers` (at least one), batching whole jobs up to `max_ops`
    /// operations if `group_commit`, else one job per batch; counts every batch in
    /// `metrics`.
    pub(crate) fn new(
        writers: Vec<W>,
        group_commit: bool,
        max_ops: usize,
        metrics: BankMetrics,
    ) -> GroupCommit<W> {
        assert!(!writers.is_empty(), "group commit needs a writer");
        let max_ops = if group_commit { max_ops } else { 1 };
        GroupCommit {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                ops: 0,
                busy: 0,
                busy_ops: 0,
                side_min: MIN_SIDE_BATCH.min(max_ops),
            }),
            writers: writers.into_iter().map(Mutex::new).collect(),
            max_ops,
            metrics,
        }
    }

    /// Queues `job` and, if a writer is free and the queue should go now
    /// ([`Queue::may_start`]), leads: runs batches through `execute` (which returns one
    /// result per operation, in order) until nothing is left for it to take, handing each
    /// batch's results to its jobs at once.
    pub(crate) fn submit(
        &self,
        job: WriteJob,
        execute: impl Fn(&mut W, &[&WriteOp]) -> WriteResults,
    ) {
        self.submit_with(job, execute, |_, applied| applied.deliver(Ok(())));
    }

    /// As [`GroupCommit::submit`], but each batch's results go to `release` (with the
    /// writer that ran it) instead of to the jobs: it delivers them ([`Applied::deliver`])
    /// now or later, from any thread. The leader moves on to the next batch meanwhile.
    pub(crate) fn submit_with(
        &self,
        job: WriteJob,
        execute: impl Fn(&mut W, &[&WriteOp]) -> WriteResults,
        release: impl Fn(&mut W, Applied),
    ) {
        {
            let mut queue = self.queue.lock();
            queue.ops += job.ops.len();
            queue.jobs.push_back(job);
            if !queue.may_start() {
                // A leader in flight takes it when its batch ends.
                return;
            }
        }
        loop {
            let Some(mut writer) = self.writers.iter().find_map(|w| w.try_lock()) else {
                // Every writer has a leader, which takes our job before it lets go.
                return;
            };
            while let Some((jobs, in_flight)) = self.next_batch() {
                let began = Instant::now();
                // A panic (a bug in a store) must not end the leader: the jobs gathered
                // behind its batch would wait for a leader until the next write comes.
                // The batch's outcome is then unknown: `Unavailable`, as for a lost
                // connection (a retry with the same request id tells).
                let results = {
                    let ops: Vec<&WriteOp> = jobs.iter().flat_map(|j| j.ops.iter()).collect();
                    catch_unwind(AssertUnwindSafe(|| execute(&mut writer, &ops)))
                        .unwrap_or_else(|_| panicked(ops.len(), "its batch"))
                };
                drop(in_flight);
                let applied = Applied {
                    jobs,
                    results,
                    began,
                    metrics: self.metrics.clone(),
                };
                // (A panic here drops the jobs not yet answered: their responders answer
                // `INTERNAL` as they drop.)
                if catch_unwind(AssertUnwindSafe(|| release(&mut writer, applied))).is_err() {
                    panicked(0, "handing its results over");
                }
            }
            drop(writer);
            // A job queued after our last look, whose worker found every writer taken, is
            // ours to run (unless a leader still in flight will take it).
            if !self.queue.lock().may_start() {
                return;
            }
        }
    }

    /// Runs `f` on a writer, waiting for one (tests, maintenance).
    #[cfg(test)]
    pub(crate) fn with_writer<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        f(&mut self.writers[0].lock())
    }

    /// The next batch: whole jobs in queue order, up to the operation limit (at least one
    /// job), counted in flight until the guard returned with it is dropped; or `None` if
    /// the queue is empty or should wait ([`Queue::may_start`]). A job left to gather
    /// always has a leader in flight, which looks again once its batch has ended.
    fn next_batch(&self) -> Option<(Vec<WriteJob>, InFlight<'_>)> {
        let mut queue = self.queue.lock();
        if !queue.may_start() {
            return None;
        }
        let (mut batch, mut ops) = (Vec::new(), 0);
        while let Some(job) = queue.jobs.front() {
            if !batch.is_empty() && ops + job.ops.len() > self.max_ops {
                break;
            }
            ops += job.ops.len();
            batch.extend(queue.jobs.pop_front());
        }
        queue.ops -= ops;
        queue.busy += 1;
        queue.busy_ops += ops;
        Some((
            batch,
            InFlight {
                queue: &self.queue,
                ops,
            },
        ))
    }
}

/// Logs a writer's panic (`during` what); returns `n` results of unknown outcome.
fn panicked(n: usize, during: &str) -> WriteResults {
    log::error!("a database writer panicked during {during}; its outcome is unknown");
    let unknown = "the database writer failed; the outcome is unknown (retry with the same id)";
    (0..n)
        .map(|_| Err(StoreError::Unavailable(unknown.to_owned())))
        .collect()
}

/// A batch on its way to the database: counted in [`Queue::busy`] until dropped (also
/// when `execute` unwinds).
struct InFlight<'a> {
    queue: &'a Mutex<Queue>,
    ops: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut queue = self.queue.lock();
        queue.busy -= 1;
        queue.busy_ops -= self.ops;
    }
}

/// A batch that has run: its jobs and their results, not yet handed over.
pub(crate) struct Applied {
    jobs: Vec<WriteJob>,
    results: WriteResults,
    began: Instant,
    metrics: BankMetrics,
}

impl Applied {
    /// Whether an operation of the batch may have changed the database (some result is
    /// not an error): only then has its commit anything to make durable.
    pub(crate) fn committed_something(&self) -> bool {
        self.results.iter().any(Result::is_ok)
    }

    /// Hands each job its results, and counts the batch (its time up to now, so a
    /// delivery that waited for the disk counts that wait). With `Err`, every operation
    /// gets [`StoreError::Unavailable`] instead: the batch may or may not be durable.
    /// Only a batch that committed something and was made durable counts as a committed
    /// batch (its size and commit time); every operation counts by its outcome.
    pub(crate) fn deliver(self, durable: Result<(), StoreError>) {
        let committed = durable.is_ok() && self.committed_something();
        let Applied {
            jobs,
            mut results,
            began,
            metrics,
        } = self;
        if let Err(e) = durable {
            let m = match e {
                StoreError::Unavailable(m) => m,
                other => other.to_string(),
            };
            results = (0..results.len())
                .map(|_| Err(StoreError::Unavailable(m.clone())))
                .collect();
        }
        let ops: Vec<&WriteOp> = jobs.iter().flat_map(|j| j.ops.iter()).collect();
        metrics.batch(&ops, &results, committed.then(|| began.elapsed()));
        drop(ops);
        let mut results = results.into_iter();
        for job in jobs {
            let mine: WriteResults = results.by_ref().take(job.ops.len()).collect();
            (job.done)(mine);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::store::WriteOutcome;

    /// A job of `n` deposits that counts its results into `delivered`.
    fn job(n: usize, delivered: &mpsc::Sender<usize>) -> WriteJob {
        let delivered = delivered.clone();
        WriteJob {
            ops: (0..n)
                .map(|_| WriteOp::Deposit { user: 1, amount: 1 })
                .collect(),
            // (Operations whose outcome is unknown are not counted.)
            done: Box::new(move |r| {
                let known = r
                    .iter()
                    .filter(|r| !matches!(r, Err(StoreError::Unavailable(_))))
                    .count();
                delivered.send(known).unwrap()
            }),
        }
    }

    /// A writer that records the size of every batch; the first batch blocks until
    /// `release` says so, after telling `started` it began.
    struct Fake {
        sizes: Arc<Mutex<Vec<usize>>>,
        first: AtomicBool,
        started: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
        /// The first batch panics once released.
        panic_first: bool,
    }

    impl Fake {
        fn execute(&self, ops: &[&WriteOp]) -> WriteResults {
            self.sizes.lock().push(ops.len());
            if !self.first.swap(true, Ordering::SeqCst) {
                self.started.lock().send(()).unwrap();
                self.release
                    .lock()
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap();
                assert!(!self.panic_first, "the first batch panics (on purpose)");
            }
            ops.iter().map(|_| Ok(WriteOutcome::Balance(1))).collect()
        }
    }

    /// Two writers, a first batch of `first` operations in flight on one of them, and a
    /// `GroupCommit` ready for more.
    struct Rig {
        group: Arc<GroupCommit<()>>,
        fake: Arc<Fake>,
        release: mpsc::Sender<()>,
        delivered: mpsc::Sender<usize>,
        results: mpsc::Receiver<usize>,
        leader: thread::JoinHandle<()>,
    }

    impl Rig {
        fn start(first: usize) -> Rig {
            Rig::start_with(first, false)
        }

        fn start_with(first: usize, panic_first: bool) -> Rig {
            let (started_tx, started_rx) = mpsc::channel();
            let (release_tx, release_rx) = mpsc::channel();
            let (delivered, results) = mpsc::channel();
            let fake = Arc::new(Fake {
                sizes: Arc::default(),
                first: AtomicBool::new(false),
                started: Mutex::new(started_tx),
                release: Mutex::new(release_rx),
                panic_first,
            });
            let group = Arc::new(GroupCommit::new(
                vec![(), ()],
                true,
                512,
                BankMetrics::default(),
            ));
            let leader = {
                let (group, fake, first) = (group.clone(), fake.clone(), job(first, &delivered));
                thread::spawn(move || group.submit(first, |_, ops| fake.execute(ops)))
            };
            started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            Rig {
                group,
                fake,
                release: release_tx,
                delivered,
                results,
                leader,
            }
        }

        fn submit(&self, n: usize) {
            let fake = self.fake.clone();
            self.group
                .submit(job(n, &self.delivered), move |_, ops| fake.execute(ops));
        }

        fn sizes(&self) -> Vec<usize> {
            self.fake.sizes.lock().clone()
        }

        /// Lets the first batch end; returns every job's result count, in delivery order,
        /// and the batches' sizes.
        fn finish(self) -> (Vec<usize>, Vec<usize>) {
            self.release.send(()).unwrap();
            self.leader.join().unwrap();
            drop(self.delivered);
            (
                self.results.iter().collect(),
                self.fake.sizes.lock().clone(),
            )
        }
    }

    #[test]
    fn a_second_writer_waits_for_a_batch_as_large_as_the_one_in_flight() {
        let rig = Rig::start(20);
        // Jobs that arrive while a batch is in flight gather instead of each taking the
        // free writer alone (batches that share accounts would queue behind each
        // other's commits, one operation per commit).
        for _ in 0..19 {
            rig.submit(1);
        }
        assert_eq!(rig.sizes(), [20]);
        // The twentieth makes a batch as large as the one in flight: it goes out at once,
        // on the second writer, while the first is still busy.
        rig.submit(1);
        assert_eq!(rig.sizes(), [20, 20]);
        let (mut delivered, _) = rig.finish();
        delivered.sort_unstable();
        assert_eq!(delivered, [[1; 20].as_slice(), &[20]].concat());
    }

    #[test]
    fn a_batch_beside_another_has_a_floor() {
        // A batch of one in flight does not let every later job go alone.
        let rig = Rig::start(1);
        for _ in 0..MIN_SIDE_BATCH - 1 {
            rig.submit(1);
        }
        assert_eq!(rig.sizes(), [1]);
        rig.submit(1);
        assert_eq!(rig.sizes(), [1, MIN_SIDE_BATCH]);
        assert_eq!(rig.finish().0.len(), MIN_SIDE_BATCH + 1);
    }

    /// A leader whose batch panics (a bug in a store, say) must not strand the jobs that
    /// gathered behind its batch: no other worker looks at the queue until a new write
    /// comes, so their clients would wait for ever. The panicked batch's operations get
    /// `Unavailable` (its outcome is unknown), and the leader goes on.
    #[test]
    fn a_panicking_batch_does_not_strand_the_jobs_gathered_behind_it() {
        let rig = Rig::start_with(20, true);
        for _ in 0..3 {
            rig.submit(2);
        }
        assert_eq!(rig.sizes(), [20]);
        let (delivered, sizes) = rig.finish();
        assert_eq!(
            delivered,
            [0, 2, 2, 2],
            "unavailable ops count 0, then the jobs"
        );
        assert_eq!(sizes, [20, 6]);
    }

    #[test]
    fn jobs_left_to_gather_run_when_the_batch_in_flight_ends() {
        let rig = Rig::start(20);
        for _ in 0..3 {
            rig.submit(2);
        }
        assert_eq!(rig.sizes(), [20]);
        let (delivered, sizes) = rig.finish();
        // The first batch's leader took them, as one batch.
        assert_eq!(delivered, [20, 2, 2, 2]);
        assert_eq!(sizes, [20, 6]);
    }
}
