//! [`WorkerTable`]: the supervisor's live view of its workers' rows, for an endpoint that
//! aggregates what the workers serve.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use duo_sys::SharedCounters;

use crate::protocol::{COL_GENERATION, COL_METRICS_PORT, COL_PID, ROW_LEN};

/// A worker with a metrics endpoint, as its row says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerEndpoint {
    /// The worker's PID.
    pub pid: u32,
    /// Its generation (1 for the first, +1 per reload).
    pub generation: u64,
    /// Where its metrics endpoint listens (`127.0.0.1`, the port it published).
    pub metrics: SocketAddr,
}

/// The rows of a running [`Supervisor`](crate::Supervisor)'s workers, readable from any
/// thread of the supervisor process (for example a metrics endpoint's): from
/// [`Supervisor::worker_table`](crate::Supervisor::worker_table). Cheap to clone. Empty
/// until [`run`](crate::Supervisor::run) has created the stats region.
///
/// A row is the supervisor's from a worker's start until it has reaped that worker, so
/// the table lists workers that are serving, starting or draining, and none that has been
/// reaped. A worker that died a moment ago may still be listed: its endpoint then refuses
/// the connection.
#[derive(Debug, Clone, Default)]
pub struct WorkerTable {
    region: Arc<OnceLock<Arc<SharedCounters>>>,
}

impl WorkerTable {
    /// The table of `region` (set once; later calls are ignored).
    pub(crate) fn set(&self, region: Arc<SharedCounters>) {
        let _ = self.region.set(region);
    }

    /// The workers that published a metrics endpoint
    /// ([`StatsSlot::publish_metrics_port`](crate::StatsSlot::publish_metrics_port)),
    /// oldest generation first, then by PID.
    pub fn metrics_endpoints(&self) -> Vec<WorkerEndpoint> {
        let Some(region) = self.region.get() else {
            return Vec::new();
        };
        let mut found: Vec<WorkerEndpoint> = region
            .slots()
            .chunks_exact(ROW_LEN)
            .filter_map(|row| {
                let get = |c: usize| row[c].load(Ordering::Relaxed);
                let pid = u32::try_from(get(COL_PID)).ok().filter(|&p| p != 0)?;
                let port = u16::try_from(get(COL_METRICS_PORT))
                    .ok()
                    .filter(|&p| p != 0)?;
                let generation = get(COL_GENERATION);
                // Read the PID again: a row reused meanwhile (its worker reaped, the next
                // one started in it) must not pair one worker's PID with another's port.
                (get(COL_PID) == u64::from(pid)).then_some(WorkerEndpoint {
                    pid,
                    generation,
                    metrics: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                })
            })
            .collect();
        found.sort_by_key(|w| (w.generation, w.pid));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::StatsSlot;

    #[test]
    fn lists_the_rows_with_an_endpoint() {
        let table = WorkerTable::default();
        assert!(table.metrics_endpoints().is_empty(), "no region yet");
        let region = Arc::new(SharedCounters::create("t", 3 * ROW_LEN).unwrap());
        table.set(region.clone());
        assert!(table.metrics_endpoints().is_empty(), "no row published");
        let slot = StatsSlot::new(region.clone(), 2).unwrap();
        slot.publish(&crate::WorkerStats::default());
        assert!(table.metrics_endpoints().is_empty(), "counters only");
        region.slots()[2 * ROW_LEN + COL_GENERATION].store(4, Ordering::Relaxed);
        slot.publish_metrics_port(9123);
        assert_eq!(
            table.metrics_endpoints(),
            vec![WorkerEndpoint {
                pid: std::process::id(),
                generation: 4,
                metrics: "127.0.0.1:9123".parse().unwrap(),
            }]
        );
        slot.publish_metrics_port(0);
        assert!(table.metrics_endpoints().is_empty(), "withdrawn");
    }
}
