//! Accepting: the listening socket of a server ([`Acceptor`], on its main loop) and what
//! happens to each accepted socket (admission, naming, choice of loop).

use std::fmt;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use duo_reactor::{Channel, EventLoop, Handler, Interest, LoopHandle};
use socket2::{Domain, SockAddr, Socket, Type};

use super::ServerShared;
use crate::conn::machine::{LoopConn, Owner};
use crate::endpoint::Endpoint;
use crate::stats::AcceptCounters;
use crate::TcpConnection;

/// The backlog passed to `listen`; the kernel caps it at `net.core.somaxconn`.
pub(super) const BACKLOG: i32 = 4096;

/// Connections an acceptor takes per event at most (accepted, shed or aborted): the
/// listener is level-triggered, so the next poll reports the rest of a burst, after the
/// iteration's other events (10 000 connections arriving at once held a loop 12-24 ms in
/// one accepting callback before).
const ACCEPT_BUDGET: usize = 128;

/// How long accepting pauses when the spare-descriptor trick is not available.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What the acceptor does with each accepted socket; says whether to go on accepting.
pub(crate) type NewConnection =
    Box<dyn FnMut(&mut EventLoop, Socket, Endpoint) -> Admission + Send>;

/// After a connection: accept more, or stop accepting until a connection closes (the
/// server is full and [`WhenFull::Pause`] is its policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Continue,
    Pause,
}

/// What a server does with connections beyond
/// [`max_connections`](crate::ServerBuilder::max_connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Accept each extra connection and close it at once (counted as rejected): the peer
    /// learns at once that there is no room. The right policy for a server alone on its
    /// listening socket. Exact however many loops accept: the check for room and the
    /// count of the new connection are one atomic step.
    #[default]
    Reject,
    /// Stop accepting until a connection closes: extra connections wait in the kernel's
    /// listen queue, where another process or server on the same socket (worker
    /// processes, `SO_REUSEPORT` siblings) takes them. The loop that finds the server
    /// full pauses every acceptor of the server; one woken before its pause arrives takes
    /// one connection over the maximum (so at most one per other accepting loop: `max +
    /// loops - 1` open), rather than leave it queued unannounced.
    Pause,
}

/// How a server with I/O threads gets its connections to the loop that serves them.
///
/// With no I/O threads (`io_threads(0)`) the main loop accepts and serves everything, and
/// the mode makes no difference.
///
/// # The trade-off
///
/// | | [`MainLoop`](AcceptMode::MainLoop) | [`Shared`](AcceptMode::Shared) | [`ReusePort`](AcceptMode::ReusePort) |
/// |---|---|---|---|
/// | who accepts | the main loop | every I/O loop, one socket | every I/O loop, its own socket |
/// | thread hops per connection | 2 (hand-over, and the main loop's wake-up) | 0, or a hand-over when the accepting loop holds clearly more than another | 0 |
/// | spreading | round robin, exact | load-aware: the kernel wakes a loop that is asleep in `epoll_wait`, busy loops accept what they find, and a loop with clearly more connections than the least loaded hands new ones to it | the kernel's hash of the 4-tuple: even on average, blind to load |
/// | one listener closes | all queued connections reset (there is one) | nothing lost while another loop or process holds the socket | the connections queued on that listener are reset |
/// | across processes | no | yes: the socket a supervisor or systemd passes | only if every process binds its own |
///
/// The default is [`Shared`](AcceptMode::Shared): no hop while the loops are balanced,
/// load-aware, and it serves an inherited socket (worker processes, socket activation)
/// the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcceptMode {
    /// The main loop accepts every connection and hands it, round robin, to an I/O loop
    /// (muduo's main reactor + sub reactors). Costs a queued function and a wake-up of the
    /// chosen loop per connection; spreads connections exactly evenly by count.
    MainLoop,
    /// Every I/O loop accepts on the one listening socket, registered with
    /// `EPOLLEXCLUSIVE` so that a connection wakes one sleeping loop rather than all of
    /// them; a connection is served by the loop that accepted it, unless that loop holds
    /// more than one plus an eighth over the least loaded loop's open connections: then
    /// it is handed over to that loop (a queued function and a wake-up, as with
    /// [`MainLoop`](AcceptMode::MainLoop)). The kernel wakes one loop per wake-up and
    /// that loop accepts until the queue is empty, so without the hand-over a burst of
    /// connections lands on one loop (in tests, 119 of 120); with it the burst is spread
    /// within that margin. Under short connections the woken loop keeps taking about two
    /// thirds, so about a quarter of them are handed over (about 5 % more CPU per
    /// connection); [`ServerBuilder::balance_accepts`](crate::ServerBuilder::balance_accepts)
    /// turns the hand-overs off.
    #[default]
    Shared,
    /// Every I/O loop binds its own `SO_REUSEPORT` listener on the address and the kernel
    /// spreads connections over them by a hash of the addresses. Closing a listener
    /// resets the connections still queued on it. On an inherited socket (see
    /// [`TcpServer::builder_on`](crate::TcpServer::builder_on)), which cannot be
    /// re-bound, [`Shared`](AcceptMode::Shared) is used instead.
    ReusePort,
}

/// Options for the listening socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenOptions {
    pub(crate) reuse_port: bool,
    /// `TCP_DEFER_ACCEPT`, in seconds (0: off).
    pub(crate) defer_accept_secs: u32,
}

/// Binds and listens on `addr` (IPv4 or IPv6) with `SO_REUSEADDR` (and `SO_REUSEPORT` and
/// `TCP_DEFER_ACCEPT` if asked), non-blocking and close-on-exec.
pub(crate) fn listen(addr: SocketAddr, opts: ListenOptions) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    if opts.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket
        .bind(&SockAddr::from(addr))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    socket.listen(BACKLOG)?;
    if opts.defer_accept_secs > 0 {
        duo_sys::set_tcp_defer_accept(std::os::fd::AsFd::as_fd(&socket), opts.defer_accept_secs)?;
    }
    Ok(socket)
}

/// The handler of a listening socket: level-triggered, accepts until `EAGAIN` or
/// [`ACCEPT_BUDGET`] connections on every event (one connection per event would cost a
/// poll per connection of a burst; the rest of a longer burst is reported again by the
/// next poll), and survives descriptor exhaustion.
///
/// # `EMFILE`
///
/// When `accept4` fails with `EMFILE`/`ENFILE`, the pending connection stays in the backlog
/// and a level-triggered listener would wake the loop again at once, forever: a busy spin.
/// The acceptor keeps one spare descriptor (`/dev/null`); on exhaustion it closes the spare,
/// accepts the connection, closes it (the peer sees an orderly close instead of hanging),
/// and reopens the spare. If even that fails, it stops listening for a short pause.
///
/// # A connection lost before it was accepted
///
/// `ECONNABORTED`, `EPROTO` and the network errors Linux passes on from a new socket
/// ([`duo_sys::is_per_connection_accept_error`]) concern that one connection, which has
/// left the queue: counted (`accept_errors`) and logged (rate-limited), and accepting goes
/// on at once.
///
/// # Two reasons not to accept
///
/// An acceptor stops accepting for either of two reasons, each with its own way back: the
/// server is full ([`WhenFull::Pause`]; the close that makes room resumes it) or an accept
/// failed (the retry timer resumes it after [`ACCEPT_PAUSE`]). It reads again only once
/// neither holds: a retry coming due while the server is full leaves it paused (it would
/// take a connection over the maximum), and room made during a retry pause waits for the
/// retry (else a persistent error would be retried at every close).
pub(crate) struct Acceptor {
    spare: Option<File>,
    on_new: NewConnection,
    /// Called once per exhaustion event or other accept error (for counting).
    on_trouble: Box<dyn FnMut(AcceptTrouble) + Send>,
    local: Endpoint,
    /// The server, for whether it is stopping: a stop shuts down a listener the server
    /// bound itself before the loop removes it, and the hang-up that follows is no error.
    server: Arc<ServerShared>,
    /// Paused because the server is full, until a close makes room.
    full: bool,
    /// Paused after an accept error, until the retry timer comes due.
    retrying: bool,
}

/// What went wrong with an `accept`, for the server's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptTrouble {
    /// Out of file descriptors (`EMFILE`/`ENFILE`).
    FdExhausted,
    /// Any other error: a connection lost before it was accepted (accepting goes on), or
    /// a failure of the listener (the acceptor pauses briefly).
    Error,
}

impl Acceptor {
    pub(super) fn new(
        local: Endpoint,
        server: Arc<ServerShared>,
        on_new: NewConnection,
        on_trouble: Box<dyn FnMut(AcceptTrouble) + Send>,
    ) -> Acceptor {
        Acceptor {
            spare: open_spare(),
            on_new,
            on_trouble,
            local,
            server,
            full: false,
            retrying: false,
        }
    }

    /// Stops accepting because the server is full, until [`resume_full`](Self::resume_full).
    pub(super) fn pause_full(&mut self, ch: &mut Channel) {
        self.full = true;
        quiet(ch);
    }

    /// Room again: accepts once no retry pause holds it either.
    pub(super) fn resume_full(&mut self, ch: &mut Channel) {
        self.full = false;
        if !self.retrying {
            read_again(ch);
        }
    }

    /// Stops accepting for [`ACCEPT_PAUSE`] so that a persistent error cannot spin the
    /// loop; the retry accepts again unless the server is full meanwhile.
    fn retry_later(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.retrying = true;
        quiet(ch);
        let token = ch.token();
        lp.run_after(ACCEPT_PAUSE, move |lp| {
            lp.with_handler::<Acceptor, _>(token, |_, ch, acceptor| {
                acceptor.retrying = false;
                if !acceptor.full {
                    read_again(ch);
                }
            });
        });
    }

    fn exhausted(&mut self, lp: &mut EventLoop, ch: &mut Channel) -> bool {
        let Some(spare) = self.spare.take() else {
            self.pause(lp, ch, "out of file descriptors and no spare");
            return false;
        };
        drop(spare);
        // Linux allocates the descriptor before it looks at the backlog, so EMFILE comes
        // even when nobody is waiting: only go on accepting if a connection was really
        // there to shed, or the loop never ends.
        match duo_sys::accept4(ch.fd()) {
            Ok((fd, _)) => {
                // Shedding a connection is progress, for the spin detector.
                ch.progressed();
                // Counted before the close the peer sees: whoever watches the peer's side
                // then reads a counter that already includes it.
                (self.on_trouble)(AcceptTrouble::FdExhausted);
                drop(fd);
                self.spare = open_spare();
                duo_reactor::log_limited!(
                    log::Level::Warn,
                    "accept on {}: out of file descriptors; shed one connection",
                    self.local
                );
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.spare = open_spare();
                false
            }
            Err(e) if duo_sys::is_per_connection_accept_error(&e) => {
                // The connection it would have shed was lost anyway; not exhaustion.
                self.spare = open_spare();
                self.lost_one(ch, &e);
                true
            }
            Err(e) => {
                // Another thread took the freed descriptor, say.
                self.pause(lp, ch, &format!("{e} with the spare freed"));
                false
            }
        }
    }

    /// A connection lost before it was accepted (reset by its peer, say): it has left the
    /// queue, so this is progress; counted and logged, and accepting goes on.
    fn lost_one(&mut self, ch: &mut Channel, e: &io::Error) {
        ch.progressed();
        (self.on_trouble)(AcceptTrouble::Error);
        duo_reactor::log_limited!(
            log::Level::Debug,
            "accept on {}: {e}; a connection lost before it was accepted",
            self.local
        );
    }

    /// Whether the server is stopping: its listener may have been shut down by the stop,
    /// and goes with the removal queued to this loop; accepting fails meanwhile, which is
    /// not worth a count, a log line or a retry.
    fn stopping(&self, ch: &mut Channel) -> bool {
        let stopping = self.server.stopping.load(Ordering::SeqCst);
        if stopping {
            quiet(ch);
        }
        stopping
    }

    /// Counts an exhaustion that shed nothing, logs `why`, tries to get the spare back,
    /// and stops accepting for a moment.
    fn pause(&mut self, lp: &mut EventLoop, ch: &mut Channel, why: &str) {
        (self.on_trouble)(AcceptTrouble::FdExhausted);
        duo_reactor::log_limited!(log::Level::Warn, "accept on {}: {why}; pausing", self.local);
        self.spare = open_spare();
        self.retry_later(lp, ch);
    }
}

/// Stops reading the listener. Edge-triggered meanwhile: the kernel reports a hang-up
/// whatever the interest, and a listener hung up for good (another holder of the socket
/// shut it down) would otherwise be reported at every poll, spinning the loop; so it is
/// reported once.
fn quiet(ch: &mut Channel) {
    ch.set_interest(ch.interest().remove(Interest::READABLE).add(Interest::EDGE));
}

/// Reads the listener again, level-triggered (a batch of accepts leaves the rest of the
/// queue to be reported at the next poll).
fn read_again(ch: &mut Channel) {
    ch.set_interest(ch.interest().remove(Interest::EDGE).add(Interest::READABLE));
}

fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

impl Handler for Acceptor {
    fn label(&self) -> Option<String> {
        Some(format!("acceptor on {}", self.local))
    }

    /// The listener hung up: another holder of the socket shut it down (the listen queue
    /// is gone). Accepting then fails (`EINVAL`), which pauses and retries as for any
    /// accept error; a paused acceptor ignores it (it is reported once, see [`quiet`]).
    fn handle_close(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if !self.full && !self.retrying {
            self.handle_read(lp, ch);
        }
    }

    /// As [`handle_close`](Handler::handle_close).
    fn handle_error(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.handle_close(lp, ch);
    }

    fn handle_read(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        // No "full?" check before accepting: with `EPOLLEXCLUSIVE` this wake-up may be
        // the only one the connection gets, so declining it would leave the connection in
        // the queue with no other loop or process told. A full server's other loops are
        // paused when the first one finds it full (`pause_if_full`); one woken before
        // that takes one connection over the maximum. (Stopping at the budget declines
        // nothing: the listener stays ready in this loop's own set, level-triggered.)
        if self.server.pause_at == Some(0) {
            // `max_connections(0)` under `Pause`: no connection is ever admitted, and no
            // close ever makes room; every one is left in the queue for the socket's other
            // holders (as `Reject` with 0 closes every one). The server stopped accepting
            // because it is full: counted once in `full_pauses`, whichever loop finds it so.
            if !self.server.accept_paused.swap(true, Ordering::SeqCst) {
                AcceptCounters::bump(&self.server.counters.full_pauses);
            }
            self.pause_full(ch);
            return;
        }
        for i in 0..ACCEPT_BUDGET {
            match duo_sys::accept4(ch.fd()) {
                Ok((fd, peer)) => {
                    ch.progressed();
                    let Some(peer) = Endpoint::from_sock_addr(&peer) else {
                        continue;
                    };
                    if (self.on_new)(lp, Socket::from(fd), peer) == Admission::Pause {
                        // Full: the close that makes room enables reading again.
                        self.pause_full(ch);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Readable, yet nothing to accept at the first try: another acceptor
                    // won the connection, or (a Unix-domain listener another holder shut
                    // down) the listener is reported readable, level-triggered, for ever
                    // while `accept` fails with `EAGAIN`. Pause and retry as for a
                    // hang-up, or the loop spins.
                    if i == 0
                        && (ch.ready().is_read_hup()
                            || duo_sys::is_read_shut_down(ch.fd()).unwrap_or(false))
                        && !self.stopping(ch)
                    {
                        (self.on_trouble)(AcceptTrouble::Error);
                        duo_reactor::log_limited!(
                            log::Level::Error,
                            "accept on {}: listener shut down; pausing",
                            self.local
                        );
                        self.retry_later(lp, ch);
                    }
                    return;
                }
                Err(e) if duo_sys::is_per_connection_accept_error(&e) => self.lost_one(ch, &e),
                Err(e) if duo_sys::is_fd_exhaustion(&e) => {
                    if !self.exhausted(lp, ch) {
                        return;
                    }
                }
                Err(_) if self.stopping(ch) => return,
                Err(e) => {
                    (self.on_trouble)(AcceptTrouble::Error);
                    duo_reactor::log_limited!(
                        log::Level::Error,
                        "accept on {}: {e}; pausing",
                        self.local
                    );
                    self.retry_later(lp, ch);
                    return;
                }
            }
            if ch.is_removed() {
                return;
            }
        }
    }
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("local", &self.local)
            .field("spare", &self.spare.is_some())
            .finish()
    }
}

/// Connection ids an acceptor hands out: `first`, `first + stride`, ... (acceptors on
/// several loops interleave, so ids stay unique without a shared counter).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ids {
    pub(super) first: u64,
    pub(super) stride: u64,
}

/// Which loop an acceptor gives each connection it accepts.
#[derive(Debug, Clone)]
pub(super) enum Placement {
    /// Round robin over the loops (the main loop's acceptor, [`AcceptMode::MainLoop`]).
    RoundRobin,
    /// Always loop `home`, the acceptor's own ([`AcceptMode::ReusePort`]: the kernel's
    /// hash spreads the connections).
    Home(usize),
    /// Loop `home`, the acceptor's own, unless it holds clearly more connections than
    /// the least loaded loop: then that one, through a hand-over ([`AcceptMode::Shared`]).
    /// `in_flight[i]` counts the connections handed to loop `i` and not yet established
    /// there (one count per server, shared by its acceptors), so that a burst handed out
    /// by one acceptor counts against its target at once.
    Balanced {
        home: usize,
        in_flight: Arc<[AtomicU64]>,
    },
}

/// How many more connections than the least loaded loop an acceptor's own loop may hold
/// before it hands new ones over: one, plus an eighth of the least loaded one's. A burst
/// that one loop accepts alone (`EPOLLEXCLUSIVE` wakes one loop, which drains the queue)
/// ends up spread within that margin. (A margin of four plus an eighth handed over about
/// as many connections under churn: there the woken loop keeps taking two thirds, not a
/// few more.)
fn balance_slack(least: u64) -> u64 {
    1 + least / 8
}

impl Placement {
    /// The loop for the next connection, among `loops` (whose owners are `owners`). A
    /// loop that is gone (its thread died of a panic that nothing caught) is skipped: a
    /// connection handed to it would be dropped at once. That costs one atomic load per
    /// connection (round robin), or per hand-over (balanced), while every loop lives.
    fn choose(
        &mut self,
        loops: &[LoopHandle],
        owners: &[Arc<Owner>],
        next_loop: &mut usize,
    ) -> usize {
        match self {
            Placement::RoundRobin => {
                let n = owners.len();
                for _ in 0..n {
                    let index = *next_loop % n;
                    *next_loop = next_loop.wrapping_add(1);
                    if !loops[index].is_closed() {
                        return index;
                    }
                }
                // Every loop is gone (the server is ending): the hand-over fails, and
                // counts the connection closed.
                *next_loop % n
            }
            Placement::Home(home) => *home,
            Placement::Balanced { home, in_flight } => {
                let load =
                    |i: usize| owners[i].counters.open_now() + in_flight[i].load(Ordering::Relaxed);
                let mine = load(*home);
                let least_of = |live_only: bool| {
                    (0..owners.len())
                        .filter(|&i| !live_only || !loops[i].is_closed())
                        .map(|i| (i, load(i)))
                        .min_by_key(|&(_, l)| l)
                        .unwrap_or((*home, mine))
                };
                let (mut least_index, mut least) = least_of(false);
                if mine > least + balance_slack(least) && loops[least_index].is_closed() {
                    // A dead loop holds nothing, so it looks the least loaded: among the
                    // live ones, then.
                    (least_index, least) = least_of(true);
                }
                if mine > least + balance_slack(least) {
                    least_index
                } else {
                    *home
                }
            }
        }
    }

    /// Counts a connection handed over to loop `index` as in flight, if this placement
    /// keeps such counts, until the returned guard is dropped.
    fn hand_over(&self, index: usize) -> Option<InFlight> {
        match self {
            Placement::Balanced { in_flight, .. } => {
                in_flight[index].fetch_add(1, Ordering::Relaxed);
                Some(InFlight {
                    counts: in_flight.clone(),
                    index,
                })
            }
            _ => None,
        }
    }
}

/// One connection counted in [`Placement::Balanced`]'s `in_flight[index]` until dropped
/// (once established on its loop, or dropped with the hand-over).
struct InFlight {
    counts: Arc<[AtomicU64]>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counts[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The acceptor's callback for each new socket: admission, naming, choice of loop among
/// `loops` (as `placement` says).
pub(super) fn new_connection_handler(
    shared: Arc<ServerShared>,
    loops: Vec<LoopHandle>,
    owners: Vec<Arc<Owner>>,
    mut placement: Placement,
    max_connections: Option<usize>,
    when_full: WhenFull,
    ids: Ids,
) -> NewConnection {
    let mut next_loop = 0usize;
    let mut next_id = ids.first;
    // Shared by every connection (one allocation per server, not per connection).
    let server_name = Arc::new(shared.name.clone());
    Box::new(move |lp, socket, peer| {
        let c = &shared.counters;
        // The connection is counted open from here until its close hook runs (also if
        // registering it fails), by the same atomic step that checks for room: loops
        // accepting at once cannot both take the last place under `Reject` (a load, then
        // a later increment, let each admit one over the maximum).
        let reject = |active: u64| {
            when_full == WhenFull::Reject && max_connections.is_some_and(|max| active >= max as u64)
        };
        let taken = c
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |active| {
                (!reject(active)).then_some(active + 1)
            });
        let active = match taken {
            Ok(before) => before,
            Err(active) => {
                AcceptCounters::bump(&c.rejected);
                duo_reactor::log_limited!(
                    log::Level::Debug,
                    "{}: rejecting {peer}: {active} connections open",
                    shared.name
                );
                return Admission::Continue;
            }
        };
        AcceptCounters::bump(&c.accepted);
        if max_connections.is_some_and(|max| active >= max as u64) {
            // `Pause` (`Reject` refused it above): raced with another loop to the last
            // place; serve it (one over at most per loop) rather than drop a connection
            // another process could take.
            duo_reactor::log_limited!(
                log::Level::Debug,
                "{}: {peer} accepted over the maximum",
                shared.name
            );
        }
        let id = next_id;
        next_id += ids.stride;
        let index = placement.choose(&loops, &owners, &mut next_loop);
        let (target, owner) = (loops[index].clone(), owners[index].clone());
        let unix = peer.is_unix();
        if owner.config.tcp_nodelay && !unix {
            if let Err(e) = socket.set_nodelay(true) {
                duo_reactor::log_limited!(
                    log::Level::Debug,
                    "{}: TCP_NODELAY for {peer}: {e}",
                    shared.name
                );
            }
        }
        // A listener bound to one address accepts connections to exactly that address:
        // only a wildcard listener needs `getsockname` to learn which one was dialled
        // (`[::ffff:0.0.0.0]`, the IPv4 wildcard on an IPv6 socket, is one too).
        let local = match &shared.endpoint {
            Endpoint::Inet(addr) if addr.ip().to_canonical().is_unspecified() => socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map_or_else(|| shared.endpoint.clone(), Endpoint::Inet),
            endpoint => endpoint.clone(),
        };
        // Read once, here: the kernel recorded them at `connect`.
        let credentials = if unix {
            match duo_sys::peer_credentials(std::os::fd::AsFd::as_fd(&socket)) {
                Ok(c) => Some(c),
                Err(e) => {
                    duo_reactor::log_limited!(
                        log::Level::Debug,
                        "{}: credentials of {peer}: {e}",
                        shared.name
                    );
                    None
                }
            }
        } else {
            None
        };
        let log_peer = peer.clone();
        let handle = TcpConnection::new(
            id,
            server_name.clone(),
            peer,
            local,
            credentials,
            target.clone(),
        );

        if target.is_in_loop_thread() {
            if let Err(e) = LoopConn::establish(lp, socket, handle, owner) {
                duo_reactor::log_limited!(
                    log::Level::Warn,
                    "{}: cannot register {log_peer}: {e}",
                    shared.name
                );
            }
        } else {
            AcceptCounters::bump(&c.handed_over);
            let counted = placement.hand_over(index);
            let mut handover = Handover(Some((socket, handle, owner)));
            let queued = target.queue_in_loop(move |lp| {
                let Some((socket, handle, owner)) = handover.0.take() else {
                    return;
                };
                if let Err(e) = LoopConn::establish(lp, socket, handle, owner) {
                    duo_reactor::log_limited!(log::Level::Warn, "cannot register {log_peer}: {e}");
                }
                // Counted open on its loop now (or closed, if registering failed).
                drop(counted);
            });
            if queued.is_err() {
                // (The hand-over, dropped with the refused function, counted it closed.)
                duo_reactor::log_limited!(
                    log::Level::Warn,
                    "{}: I/O loop gone; dropping connection #{id}",
                    shared.name
                );
            }
        }
        match max_connections {
            Some(max) if when_full == WhenFull::Pause => super::pause_if_full(&shared, max as u64),
            _ => Admission::Continue,
        }
    })
}

/// An accepted connection on its way to another loop's queue. If that loop ends before it
/// runs the registration (or refuses it), the connection is dropped unseen, but still
/// counted: opened and closed (reason `Shutdown`, as for the connections dropped with
/// their loop), and the server's open count lowered by its close hook.
struct Handover(Option<(Socket, TcpConnection, Arc<Owner>)>);

impl Drop for Handover {
    fn drop(&mut self) {
        let Some((_socket, handle, owner)) = self.0.take() else {
            return;
        };
        let reason = crate::CloseReason::Shutdown;
        handle.mark_closed(reason);
        owner.counters.add_opened();
        owner.counters.add_close(reason);
        if let Some(hook) = &owner.on_close {
            hook(&handle, false);
        }
    }
}
