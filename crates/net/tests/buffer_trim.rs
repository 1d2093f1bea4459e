//! The buffer pool gives memory back after a burst: an echo server whose clients stop
//! reading holds megabytes of output in pooled blocks; once they leave, the loops' trim
//! timer returns the free blocks to the system. A test binary of its own, so that no other
//! test uses the process-wide pool meanwhile.

mod util;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_buffer::BufPool;
use duo_reactor::LoopHandle;
use duo_testkit::wait_until;
use util::{connect, echo_builder, init_log, localhost, TestServer};

#[test]
fn free_blocks_return_to_the_system_after_a_burst() {
    init_log();
    const CLIENTS: usize = 8;
    const BYTES: usize = 16 << 20;
    // The I/O loops, whose only timer is the trim timer (no idle timeout): how many
    // times it has fired is what the test waits on.
    let loops: Arc<Mutex<Vec<LoopHandle>>> = Arc::default();
    let l = loops.clone();
    let server = TestServer::start(|| {
        echo_builder("trim", localhost())
            .io_threads(2)
            .water_marks(64 << 20, 32 << 20)
            .buffer_trim_interval(Duration::from_millis(100))
            .thread_init(move |lp| l.lock().unwrap().push(lp.handle()))
    });
    wait_until("both I/O loops", || loops.lock().unwrap().len() == 2);
    let loops = loops.lock().unwrap().clone();
    let ticks = || -> Vec<u64> { loops.iter().map(|l| l.metrics().timers_fired).collect() };
    let pool = BufPool::global();

    // Clients that send 16 MiB each and read nothing: the echoes pile up in the server's
    // output buffers (below its 64 MiB high-water mark, so it keeps reading).
    let data = vec![7u8; BYTES];
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = connect(server.addr());
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&data).unwrap();
        clients.push(s);
    }
    let peak = std::cell::Cell::new(0);
    wait_until("the echoes to fill the server's output buffers", || {
        peak.set(pool.stats().in_use_bytes());
        // The kernel holds a few MiB of each connection's echo; the rest is in blocks.
        peak.get() >= CLIENTS * BYTES / 2
    });

    // Trimming waits while the blocks are in use, not free: three trim passes on every
    // loop leave them.
    let at_peak = ticks();
    wait_until("three trim passes on every I/O loop", || {
        ticks()
            .iter()
            .zip(&at_peak)
            .all(|(now, then)| *now >= then + 3)
    });
    assert!(pool.stats().in_use_bytes() >= peak.get() / 2);

    drop(clients);
    wait_until("the server to close every connection", || {
        server.stats().active == 0
    });
    wait_until("the pool to give the freed blocks back", || {
        let s = pool.stats();
        s.in_use_bytes() == 0 && s.free_bytes() <= 2 << 20
    });
    server.stop();
}
