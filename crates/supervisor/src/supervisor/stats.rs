//! The stats region: one row of counters per worker, and the summed line the supervisor
//! logs every `stats_interval`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::State;
use crate::protocol::{COL_GENERATION, COL_PID, ROW_LEN};
use crate::worker::{read_row, WorkerStats};

impl State {
    pub(super) fn row_cells(&self, row: usize) -> &[AtomicU64] {
        &self.stats.slots()[row * ROW_LEN..(row + 1) * ROW_LEN]
    }

    pub(super) fn clear_row(&self, row: usize) {
        for cell in self.row_cells(row) {
            cell.store(0, Ordering::Relaxed);
        }
    }

    /// Marks `row` as a worker of `generation` (for [`WorkerTable`](crate::WorkerTable)).
    pub(super) fn set_row_generation(&self, row: usize, generation: u64) {
        self.row_cells(row)[COL_GENERATION].store(generation, Ordering::Relaxed);
    }

    /// Marks `row` as worker `pid`'s (the worker writes the same PID when it publishes).
    pub(super) fn set_row_pid(&self, row: usize, pid: u32) {
        self.row_cells(row)[COL_PID].store(u64::from(pid), Ordering::Relaxed);
    }

    /// The generation written into `row` at its worker's start (0: none).
    pub(super) fn row_generation(&self, row: usize) -> u64 {
        self.row_cells(row)[COL_GENERATION].load(Ordering::Relaxed)
    }

    pub(super) fn log_stats(&mut self) {
        let mut sum = WorkerStats::default();
        for w in self.workers.values() {
            if let Some(row) = w.row {
                let (_, s) = read_row(self.row_cells(row));
                sum.add(&s);
            }
        }
        let now = Instant::now();
        let (then, before) = self.last_stats;
        let secs = now.duration_since(then).as_secs_f64().max(1e-9);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let mib = 1024.0 * 1024.0;
        log::info!(
            "stats: generation {}, {} workers, {} connections open, {} accepted, \
             {:.0} msg/s, in {:.2} MiB/s, out {:.2} MiB/s",
            self.generation,
            self.workers.len(),
            sum.open,
            sum.accepted,
            rate(sum.messages, before.messages),
            rate(sum.bytes_in, before.bytes_in) / mib,
            rate(sum.bytes_out, before.bytes_out) / mib,
        );
        self.last_stats = (now, sum);
    }
}
