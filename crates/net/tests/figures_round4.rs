//! Figures that must mean what `docs/observability.md` says, where several loops race.
//!
//! `duo_server_full_pauses_total` is documented as the times the server stopped accepting
//! because it was full: one pause of the server, however many of its loops were accepting
//! at that moment and each found it full.

mod util;

use std::sync::mpsc;

use duo_net::{AcceptMode, LoopHandle, WhenFull};
use duo_testkit::LIMIT;
use util::{barrier, connect, echo_builder, echo_once, hold_loop, init_log, localhost, TestServer};

/// Two loops sharing the listener (`AcceptMode::Shared`) both find the server full at once:
/// each accepts one of two waiting connections (one over the maximum, as documented) and
/// pauses, but the server stopped accepting once, so the figure is 1, not 2. A later
/// close that makes room and a new connection that fills the server again is a second
/// pause.
#[test]
fn two_loops_finding_the_server_full_at_once_count_one_pause() {
    init_log();
    let (loops_tx, loops_rx) = mpsc::channel::<LoopHandle>();
    let server = TestServer::start(move || {
        echo_builder("full-race", localhost())
            .io_threads(2)
            .accept_mode(AcceptMode::Shared)
            .max_connections(1)
            .when_full(WhenFull::Pause)
            .thread_init(move |lp| {
                let _ = loops_tx.send(lp.handle());
            })
    });
    let addr = server.addr();
    let loops: Vec<LoopHandle> = (0..2)
        .map(|_| {
            loops_rx
                .recv_timeout(LIMIT)
                .expect("an I/O loop's thread_init")
        })
        .collect();
    // Both loops held: the two connections wait in the listen queue, and the listener is
    // ready in both loops' epoll sets (no loop was waiting to take the wake-up alone).
    let holds: Vec<_> = loops.iter().map(hold_loop).collect();
    let mut first = connect(addr);
    let mut second = connect(addr);
    // Released together: each loop accepts one and finds the server full.
    drop(holds);
    echo_once(&mut first, b"one");
    echo_once(&mut second, b"two");
    let s = server.wait_for_stats("both connections accepted", |s| s.accepted == 2);
    assert_eq!(s.rejected, 0, "{s:#?}");
    // Every accepting loop has finished its handler (and its pause) once it ran these.
    for lp in &loops {
        barrier(lp);
    }
    let s = server.stats();
    assert_eq!(
        s.full_pauses, 1,
        "the server stopped accepting once, two loops counted it: {s:#?}"
    );
    // Room again (both closed), then full again: a second pause.
    drop((first, second));
    server.wait_for_stats("both closed", |s| s.closed == 2 && s.active == 0);
    let mut third = connect(addr);
    echo_once(&mut third, b"three");
    let s = server.wait_for_stats("the server full again", |s| s.full_pauses == 2);
    assert_eq!(s.accepted, 3, "{s:#?}");
    for lp in &loops {
        barrier(lp);
    }
    assert_eq!(server.stats().full_pauses, 2, "{:#?}", server.stats());
    drop(third);
    server.stop();
}
