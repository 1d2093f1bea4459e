//! Running the loop's queued functions: one batch per iteration, and what a panic in one
//! of them leaves behind.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;

use super::{EventLoop, LocalTask};
use crate::health::CallbackKind;

impl EventLoop {
    /// Runs the functions queued so far; later ones wait for the next iteration.
    pub(super) fn run_queued(&mut self) {
        let mut batch = std::mem::take(&mut self.running);
        {
            let mut queue = self.shared.queue.lock();
            if let Some(q) = queue.as_mut() {
                std::mem::swap(q, &mut batch);
            }
        }
        let mut local = std::mem::replace(
            &mut self.local_tasks,
            std::mem::take(&mut self.running_local),
        );
        if batch.is_empty() && local.is_empty() {
            self.running = batch;
            self.running_local = local;
            return;
        }
        self.shared.draining.store(true, Ordering::SeqCst);
        let n = batch.len() + local.len();
        self.iteration_tasks += n as u64;
        self.health.task_batch(n, &self.shared.metrics.health);
        let mut tasks = batch.drain(..);
        while let Some(task) = tasks.next() {
            let name = task.name;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (task.f)(self))) {
                let rest = tasks.collect();
                self.requeue_after_panic(rest, std::mem::take(&mut local));
                resume_unwind(panic);
            }
            self.task_done(name);
        }
        drop(tasks);
        let mut tasks = local.drain(..);
        while let Some(task) = tasks.next() {
            let name = task.name;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (task.f)(self))) {
                let rest = tasks.collect();
                self.requeue_after_panic(Vec::new(), rest);
                resume_unwind(panic);
            }
            self.task_done(name);
        }
        drop(tasks);
        self.shared.draining.store(false, Ordering::SeqCst);
        self.running = batch;
        self.running_local = local;
    }

    /// A queued function panicked: the functions after it in the batch go back to the
    /// front of their queues, in order, so that the next `run` runs them first (the
    /// panicking one is dropped; nothing else that was accepted is lost).
    fn requeue_after_panic(
        &mut self,
        shared_rest: Vec<crate::loop_handle::SendTask>,
        local_rest: Vec<LocalTask>,
    ) {
        if !shared_rest.is_empty() {
            if let Some(q) = self.shared.queue.lock().as_mut() {
                q.splice(0..0, shared_rest);
            }
        }
        self.local_tasks.splice(0..0, local_rest);
        self.shared.draining.store(false, Ordering::SeqCst);
    }

    fn task_done(&mut self, name: &'static str) {
        self.health.callback_done(
            CallbackKind::Task,
            &|| format!("queued function {name}"),
            &self.shared.name,
            &self.shared.metrics.health,
        );
    }
}
