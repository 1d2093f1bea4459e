//! The stats region: one row of counters per worker, and the summed line the supervisor
//! logs every `stats_interval`.

use std::collections::HashMap;
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

    /// What `row` (worker `pid`'s) counted since the last look, now that it is about to
    /// be cleared (the worker exited): kept for the next line.
    pub(super) fn retire_row_stats(&mut self, pid: u32, row: usize) {
        let (_, now) = read_row(self.row_cells(row));
        self.stats_log.retire(pid, &now);
    }

    /// Every live worker with a row, and its totals.
    pub(super) fn live_stats(&self) -> Vec<(u32, WorkerStats)> {
        self.workers
            .iter()
            .filter_map(|(pid, w)| Some((*pid, read_row(self.row_cells(w.row?)).1)))
            .collect()
    }

    /// The summed line's totals so far, for the image an upgrade executes
    /// (`accepted,bytes_in,bytes_out,messages`), and the live workers' own totals they
    /// include (`PID:accepted:bytes_in:bytes_out:messages,...`), from which that image
    /// counts: a worker goes on counting during the `exec`, and what it counts meanwhile
    /// must go into the next line.
    pub(super) fn stats_to_hand_over(&self) -> (String, String) {
        let live = self.live_stats();
        let t = self.stats_log.totals_now(&live);
        let totals = format!(
            "{},{},{},{}",
            t.accepted, t.bytes_in, t.bytes_out, t.messages
        );
        let seen: Vec<String> = live
            .iter()
            .map(|(pid, s)| {
                format!(
                    "{pid}:{}:{}:{}:{}",
                    s.accepted, s.bytes_in, s.bytes_out, s.messages
                )
            })
            .collect();
        (totals, seen.join(","))
    }

    pub(super) fn log_stats(&mut self) {
        let live = self.live_stats();
        let now = Instant::now();
        let (secs, open, interval, totals) = self.stats_log.take(now, &live);
        let rate = |n: u64| n as f64 / secs;
        let mib = 1024.0 * 1024.0;
        log::info!(
            "stats: generation {}, {} workers, {} connections open, {} accepted, \
             {:.0} msg/s, in {:.2} MiB/s, out {:.2} MiB/s",
            self.generation,
            self.workers.len(),
            open,
            totals.accepted,
            rate(interval.messages),
            rate(interval.bytes_in) / mib,
            rate(interval.bytes_out) / mib,
        );
    }
}

/// The counters behind the summed line. A worker's row holds its own totals, which end
/// with it (the row is cleared for the next worker): the line sums what each worker
/// counted since the previous line, kept by PID, so that its totals never go down when a
/// worker dies or a generation retires, and its rates count every worker's work.
#[derive(Debug)]
pub(super) struct StatsLog {
    /// When the previous line was logged.
    last: Instant,
    /// Each live worker's totals at the previous line.
    seen: HashMap<u32, WorkerStats>,
    /// What exited workers counted since the previous line.
    gone: WorkerStats,
    /// Everything counted since the supervisor started, the previous images' counts
    /// handed over by an upgrade included (`open` unused).
    totals: WorkerStats,
}

impl StatsLog {
    /// Counting from now; `adopted`: the totals of workers an earlier image started, which
    /// this one does not count again; `totals`: what that image counted in all (handed
    /// over by an upgrade), which this one goes on from.
    pub(super) fn new(
        adopted: impl IntoIterator<Item = (u32, WorkerStats)>,
        totals: WorkerStats,
    ) -> StatsLog {
        StatsLog {
            last: Instant::now(),
            seen: adopted.into_iter().collect(),
            gone: WorkerStats::default(),
            totals,
        }
    }

    /// The totals so far, what the live workers (their totals in `live`) and the exited
    /// ones counted since the previous line included: what an upgrade hands over, with
    /// `live` as the new image's `adopted`.
    pub(super) fn totals_now(&self, live: &[(u32, WorkerStats)]) -> WorkerStats {
        let mut totals = self.totals;
        totals.add(&self.gone);
        for (pid, s) in live {
            totals.add(&since(s, &self.seen.get(pid).copied().unwrap_or_default()));
        }
        totals
    }

    /// Worker `pid` exited with these totals.
    fn retire(&mut self, pid: u32, now: &WorkerStats) {
        let before = self.seen.remove(&pid).unwrap_or_default();
        self.gone.add(&since(now, &before));
    }

    /// The figures of a line at `now`, from the live workers' totals: the seconds since
    /// the previous line, the connections open, what was counted since the previous line,
    /// and in all.
    fn take(
        &mut self,
        now: Instant,
        live: &[(u32, WorkerStats)],
    ) -> (f64, u64, WorkerStats, WorkerStats) {
        let secs = now.duration_since(self.last).as_secs_f64().max(1e-9);
        let mut interval = std::mem::take(&mut self.gone);
        let mut open = 0u64;
        let mut seen = HashMap::with_capacity(live.len());
        for (pid, s) in live {
            interval.add(&since(s, &self.seen.get(pid).copied().unwrap_or_default()));
            open = open.saturating_add(s.open);
            seen.insert(*pid, *s);
        }
        self.seen = seen;
        self.last = now;
        self.totals.add(&interval);
        (secs, open, interval, self.totals)
    }
}

/// The totals an upgrading image handed over ([`State::stats_to_hand_over`]); `None` if
/// malformed.
pub(super) fn parse_totals(text: &str) -> Option<WorkerStats> {
    let mut n = text.split(',').map(|v| v.trim().parse::<u64>().ok());
    let mut next = || n.next().flatten();
    Some(WorkerStats {
        open: 0,
        accepted: next()?,
        bytes_in: next()?,
        bytes_out: next()?,
        messages: next()?,
    })
}

/// The workers' totals an upgrading image counted up to ([`State::stats_to_hand_over`]);
/// malformed entries are skipped.
pub(super) fn parse_seen(text: &str) -> HashMap<u32, WorkerStats> {
    text.split(',')
        .filter_map(|entry| {
            let mut n = entry.split(':').map(|v| v.trim().parse::<u64>().ok());
            let mut next = || n.next().flatten();
            let pid = u32::try_from(next()?).ok()?;
            let stats = WorkerStats {
                open: 0,
                accepted: next()?,
                bytes_in: next()?,
                bytes_out: next()?,
                messages: next()?,
            };
            Some((pid, stats))
        })
        .collect()
}

/// What `now` counted beyond `before` (the same worker's totals, earlier), column by
/// column; `open` is `now`'s.
fn since(now: &WorkerStats, before: &WorkerStats) -> WorkerStats {
    WorkerStats {
        open: now.open,
        accepted: now.accepted.saturating_sub(before.accepted),
        bytes_in: now.bytes_in.saturating_sub(before.bytes_in),
        bytes_out: now.bytes_out.saturating_sub(before.bytes_out),
        messages: now.messages.saturating_sub(before.messages),
    }
}
