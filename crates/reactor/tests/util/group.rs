//! Helpers of the `LoopGroup` tests (`loop_group.rs`, `loop_group_owned.rs`,
//! `loop_group_owned_edges.rs`).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use duo_reactor::{Channel, EventLoop, Handler, Interest, LoopGroup, LoopHandle, LoopSharing};
use duo_testkit::{nonblocking_pair, LIMIT};

/// Runs `f` on the loop and returns its result (waiting up to `limit`).
pub(crate) fn on_loop_within<R: Send + 'static>(
    limit: Duration,
    h: &LoopHandle,
    f: impl FnOnce(&mut EventLoop) -> R + Send + 'static,
) -> R {
    let (tx, rx) = mpsc::channel();
    h.queue_in_loop(move |lp| {
        let _ = tx.send(f(lp));
    })
    .unwrap();
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("loop {} did not answer: {e}", h.name()))
}

/// Runs `f` on the loop and returns its result.
pub(crate) fn on_loop<R: Send + 'static>(
    h: &LoopHandle,
    f: impl FnOnce(&mut EventLoop) -> R + Send + 'static,
) -> R {
    on_loop_within(LIMIT, h, f)
}

/// The name of the calling thread (a group thread is `{group}-t{j}`).
pub(crate) fn current_thread_name() -> String {
    thread::current().name().unwrap_or("").to_owned()
}

/// Sets a timer on the loop of `handle`, due after `delay`, waits for it to fire and
/// returns the thread it fired on.
pub(crate) fn timer_fires(handle: &LoopHandle, delay: Duration) -> String {
    let (fired_tx, fired_rx) = mpsc::channel();
    handle
        .run_after(delay, move |_| {
            let _ = fired_tx.send(current_thread_name());
        })
        .unwrap();
    fired_rx.recv_timeout(LIMIT).expect("the timer fired")
}

/// The loops of a group of `threads` threads and `loops` loops that thread `owner` owns
/// (loop `i` is thread `i mod threads`'s, `LoopSharing::Owned`), other than `except`.
pub(crate) fn owned_by(owner: usize, threads: usize, loops: usize, except: usize) -> Vec<usize> {
    (0..loops)
        .filter(|&i| i % threads == owner && i != except)
        .collect()
}

/// The index `j` of a group thread named `{group}-t{j}`.
pub(crate) fn thread_index(name: &str) -> usize {
    name.rsplit_once("-t")
        .and_then(|(_, j)| j.parse().ok())
        .unwrap_or_else(|| panic!("not a group thread: {name}"))
}

/// A group thread held inside a callback of one loop until released (or dropped: a
/// failing test never leaves a group thread stuck).
pub(crate) struct Stuck {
    release: Option<mpsc::Sender<()>>,
    /// The thread running the stuck turn.
    pub(crate) thread: String,
}

impl Stuck {
    pub(crate) fn index(&self) -> usize {
        thread_index(&self.thread)
    }

    pub(crate) fn release(&mut self) {
        drop(self.release.take());
    }
}

/// Queues a callback on `h` that blocks its turn until released, and waits until a group
/// thread is inside it.
pub(crate) fn stick(h: &LoopHandle) -> Stuck {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (entered_tx, entered_rx) = mpsc::channel();
    h.queue_in_loop(move |_| {
        entered_tx.send(current_thread_name()).unwrap();
        // Released by a message or by the sender's drop.
        let _ = release_rx.recv_timeout(LIMIT);
    })
    .unwrap();
    let thread = entered_rx
        .recv_timeout(LIMIT)
        .expect("a thread enters the callback");
    Stuck {
        release: Some(release_tx),
        thread,
    }
}

/// Registers `sock` (readable) with `handler` on the loop behind `h`.
pub(crate) fn add_on(h: &LoopHandle, sock: UnixStream, handler: impl Handler) {
    let fd = OwnedFd::from(sock);
    on_loop(h, move |lp| {
        lp.add_channel(fd, Interest::READABLE, handler)
            .map(|_| ())
            .map_err(|e| e.error.to_string())
    })
    .expect("the channel is registered");
}

/// Marks a loop as being run, counting an overlap if it already was.
pub(crate) fn enter(inside: &AtomicBool, overlaps: &AtomicUsize) {
    if inside.swap(true, Ordering::SeqCst) {
        overlaps.fetch_add(1, Ordering::SeqCst);
    }
}

/// Echoes what it reads and checks that no two threads are ever inside its loop at once
/// (the channels of one loop share one `inside` flag).
pub(crate) struct Echo {
    sock: UnixStream,
    inside: Arc<AtomicBool>,
    overlaps: Arc<AtomicUsize>,
}

impl Handler for Echo {
    fn handle_read(&mut self, _lp: &mut EventLoop, _ch: &mut Channel) {
        enter(&self.inside, &self.overlaps);
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.sock.write_all(&buf[..n]).expect("echo"),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        self.inside.store(false, Ordering::SeqCst);
    }
}

/// An echo load over every loop of a group: two channels per loop, each client on a
/// thread of its own, all at once (so that loops are ready together).
pub(crate) struct EchoLoad {
    pub(crate) threads: usize,
    pub(crate) loops: usize,
    pub(crate) rounds: usize,
    pub(crate) sharing: LoopSharing,
    pub(crate) steal_after: Duration,
    pub(crate) busy_poll: Duration,
    /// A 1 ms timer on every loop, inside the same no-overlap check.
    pub(crate) timers: bool,
}

impl EchoLoad {
    /// Runs the load to the end on a new group, checks every echo and that no loop ran
    /// on two threads at once, stops the group, and returns its helped turns.
    pub(crate) fn run(&self, name: &str) -> u64 {
        let group =
            LoopGroup::start_sharing(name, self.threads, self.loops, self.sharing, None).unwrap();
        group.set_steal_after(self.steal_after);
        group.set_busy_poll(self.busy_poll);
        let overlaps = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::new();
        let mut timers = Vec::new();
        for (i, h) in group.handles().iter().enumerate() {
            let inside = Arc::new(AtomicBool::new(false));
            for _ in 0..2 {
                let (ours, theirs) = nonblocking_pair();
                let handler = Echo {
                    sock: theirs.try_clone().unwrap(),
                    inside: inside.clone(),
                    overlaps: overlaps.clone(),
                };
                add_on(h, theirs, handler);
                ours.set_nonblocking(false).unwrap();
                ours.set_read_timeout(Some(LIMIT)).unwrap();
                clients.push((i, ours));
            }
            if self.timers {
                let (inside, overlaps) = (inside.clone(), overlaps.clone());
                let id = h
                    .run_every(Duration::from_millis(1), move |_| {
                        enter(&inside, &overlaps);
                        inside.store(false, Ordering::SeqCst);
                    })
                    .unwrap();
                timers.push((h.clone(), id));
            }
        }
        let rounds = self.rounds;
        let workers: Vec<_> = clients
            .into_iter()
            .map(|(i, mut c)| {
                thread::spawn(move || {
                    for r in 0..rounds {
                        let msg = format!("{i}:{r};");
                        c.write_all(msg.as_bytes()).unwrap();
                        let mut back = vec![0u8; msg.len()];
                        c.read_exact(&mut back).unwrap();
                        assert_eq!(back, msg.as_bytes());
                    }
                })
            })
            .collect();
        for w in workers {
            duo_testkit::join_within("echo client", w);
        }
        for (h, id) in timers {
            h.cancel(id).unwrap();
        }
        assert_eq!(
            overlaps.load(Ordering::SeqCst),
            0,
            "a loop ran on two threads at once ({:?})",
            self.sharing
        );
        let turns: u64 = group.handles().iter().map(|h| h.metrics().iterations).sum();
        assert!(turns >= rounds as u64, "{turns} turns");
        let helped = group.helped_turns();
        group.stop().unwrap();
        helped
    }
}
