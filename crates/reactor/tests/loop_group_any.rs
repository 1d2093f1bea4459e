//! `LoopGroup` with `LoopSharing::Any`: readiness that no new event reports must still be
//! served (a level-triggered channel left readable, more ready channels than one wait of a
//! loop returns), and loops that become ready while a thread is held in a turn are run by
//! the other. (Written for a design that kept loops edge-triggered in the shared set with
//! a queue of ready loops, where each of these was a way to lose a loop; that design was
//! measured and dropped, `docs/benchmarks.md`, and the tests stay for whatever comes next.)

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use duo_reactor::{Channel, EventLoop, Handler, Interest, LoopGroup, LoopSharing};
use duo_testkit::{nonblocking_pair, wait_until, LIMIT};
use util::group::{on_loop, stick};

mod util;

/// Reads what it is given, `per_event` bytes at most per readiness event, and counts
/// them.
struct Counter {
    sock: UnixStream,
    per_event: usize,
    got: Arc<AtomicUsize>,
}

impl Handler for Counter {
    fn handle_read(&mut self, _lp: &mut EventLoop, _ch: &mut Channel) {
        let mut buf = [0u8; 256];
        let mut taken = 0;
        while taken < self.per_event {
            let want = (self.per_event - taken).min(buf.len());
            match self.sock.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    taken += n;
                    self.got.fetch_add(n, Ordering::SeqCst);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// Registers a counting channel for the far end of a new pair on loop `h`, with
/// `interest`, and returns the near end.
fn counted(
    h: &duo_reactor::LoopHandle,
    interest: Interest,
    per_event: usize,
    got: &Arc<AtomicUsize>,
) -> UnixStream {
    let (ours, theirs) = nonblocking_pair();
    let handler = Counter {
        sock: theirs.try_clone().unwrap(),
        per_event,
        got: got.clone(),
    };
    on_loop(h, move |lp| {
        lp.add_channel(theirs, interest, handler)
            .map(|_| ())
            .map_err(|e| e.error.to_string())
    })
    .expect("the channel is registered");
    ours
}

#[test]
fn a_level_triggered_channel_left_readable_is_served_again_without_new_readiness() {
    let group = LoopGroup::start_sharing("anylt", 2, 4, LoopSharing::Any, None).unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    // One byte per event: after each turn the socket is still readable, and no new
    // readiness arrives to report it.
    let mut ours = counted(&group.handles()[1], Interest::READABLE, 1, &got);
    ours.write_all(&[7u8; 500]).unwrap();
    wait_until("all 500 bytes read, one per event", || {
        got.load(Ordering::SeqCst) == 500
    });
    group.stop().unwrap();
}

#[test]
fn more_ready_channels_than_one_wait_returns_are_all_served() {
    const CHANNELS: usize = 300;
    let group = LoopGroup::start_sharing("anyfull", 2, 2, LoopSharing::Any, None).unwrap();
    let h = &group.handles()[0];
    let got = Arc::new(AtomicUsize::new(0));
    let mut clients: Vec<UnixStream> = (0..CHANNELS)
        .map(|_| counted(h, Interest::READABLE | Interest::EDGE, usize::MAX, &got))
        .collect();
    // All ready before the loop's next wait: its event buffer (64 to start with) cannot
    // take them at once, and the ones left get no new edge.
    let mut stuck = stick(h);
    for c in &mut clients {
        c.write_all(b"x").unwrap();
    }
    stuck.release();
    wait_until("every ready channel served", || {
        got.load(Ordering::SeqCst) == CHANNELS
    });
    group.stop().unwrap();
}

/// Blocks its turn until released (or until the test is over).
struct Gate {
    sock: UnixStream,
    entered: mpsc::Sender<()>,
    release: Arc<parking_lot::Mutex<Option<mpsc::Receiver<()>>>>,
}

impl Handler for Gate {
    fn handle_read(&mut self, _lp: &mut EventLoop, _ch: &mut Channel) {
        let mut buf = [0u8; 64];
        while matches!(self.sock.read(&mut buf), Ok(n) if n > 0) {}
        // This round's release is taken before the test hears of the turn: taken after,
        // it could be the next round's (the test sets that as soon as it has heard), and
        // the turn would then hold its loop until the next round's gate, which that
        // very loop has to run (seen once in CI: "the gate's turn ran: Timeout").
        let release = self.release.lock().take();
        let _ = self.entered.send(());
        if let Some(release) = release {
            let _ = release.recv_timeout(LIMIT);
        }
    }
}

#[test]
fn loops_ready_while_a_thread_is_held_in_a_turn_are_run_by_the_other() {
    const LOOPS: usize = 8;
    const ROUNDS: usize = 40;
    let group = LoopGroup::start_sharing("anyq", 2, LOOPS, LoopSharing::Any, None).unwrap();
    let hs = group.handles();
    let (entered_tx, entered) = mpsc::channel();
    let release = Arc::new(parking_lot::Mutex::new(None));
    let (mut gate, theirs) = nonblocking_pair();
    let handler = Gate {
        sock: theirs.try_clone().unwrap(),
        entered: entered_tx,
        release: release.clone(),
    };
    on_loop(&hs[0], move |lp| {
        lp.add_channel(theirs, Interest::READABLE | Interest::EDGE, handler)
            .map(|_| ())
            .map_err(|e| e.error.to_string())
    })
    .expect("the gate is registered");
    let got = Arc::new(AtomicUsize::new(0));
    let mut others: Vec<UnixStream> = hs[1..]
        .iter()
        .map(|h| counted(h, Interest::READABLE | Interest::EDGE, usize::MAX, &got))
        .collect();
    for round in 0..ROUNDS {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        *release.lock() = Some(release_rx);
        // The gate first, the others at once after: a thread runs the gate's turn and is
        // held there while the others become ready (in a batch it may have taken).
        gate.write_all(b"g").unwrap();
        for c in &mut others {
            c.write_all(b"x").unwrap();
        }
        let want = (round + 1) * (LOOPS - 1);
        wait_until(
            &format!("round {round}: the others served while a thread is held at the gate"),
            || got.load(Ordering::SeqCst) == want,
        );
        entered.recv_timeout(LIMIT).expect("the gate's turn ran");
        drop(release_tx);
    }
    group.stop().unwrap();
}
