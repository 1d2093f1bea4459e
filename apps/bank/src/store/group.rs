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
//! flight (see the server's module docs), so its writes still apply in its order. Without
//! group commit a batch is one job.

use std::collections::VecDeque;
use std::time::Instant;

use parking_lot::Mutex;

use super::{WriteJob, WriteOp, WriteResults};
use crate::metrics::BankMetrics;

/// The queue of write jobs and the writers that commit them.
pub(crate) struct GroupCommit<W> {
    pending: Mutex<VecDeque<WriteJob>>,
    writers: Vec<Mutex<W>>,
    max_ops: usize,
    metrics: BankMetrics,
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
        GroupCommit {
            pending: Mutex::new(VecDeque::new()),
            writers: writers.into_iter().map(Mutex::new).collect(),
            max_ops: if group_commit { max_ops } else { 1 },
            metrics,
        }
    }

    /// Queues `job` and, if a writer is free, leads: runs batches through `execute` (which
    /// returns one result per operation, in order) until nothing is queued.
    pub(crate) fn submit(
        &self,
        job: WriteJob,
        execute: impl Fn(&mut W, &[&WriteOp]) -> WriteResults,
    ) {
        self.pending.lock().push_back(job);
        loop {
            let Some(mut writer) = self.writers.iter().find_map(|w| w.try_lock()) else {
                // Every writer has a leader, which takes our job before it lets go.
                return;
            };
            loop {
                let batch = self.take_batch();
                if batch.is_empty() {
                    break;
                }
                let ops: Vec<&WriteOp> = batch.iter().flat_map(|j| j.ops.iter()).collect();
                let began = Instant::now();
                let results = execute(&mut writer, &ops);
                self.metrics.batch(&ops, &results, began.elapsed());
                let mut results = results.into_iter();
                for job in batch {
                    let mine: WriteResults = results.by_ref().take(job.ops.len()).collect();
                    (job.done)(mine);
                }
            }
            drop(writer);
            // A job queued after our last look, whose worker found every writer taken, is
            // ours to run.
            if self.pending.lock().is_empty() {
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
    /// job).
    fn take_batch(&self) -> Vec<WriteJob> {
        let mut pending = self.pending.lock();
        let mut batch = Vec::new();
        let mut ops = 0;
        while let Some(job) = pending.front() {
            if !batch.is_empty() && ops + job.ops.len() > self.max_ops {
                break;
            }
            ops += job.ops.len();
            batch.extend(pending.pop_front());
        }
        batch
    }
}
