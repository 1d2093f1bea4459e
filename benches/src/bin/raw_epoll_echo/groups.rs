//! The three ways `raw_epoll_echo` runs more reactors than threads (`--spread loops`,
//! `owned` and `flat`; see the crate documentation): duo's `LoopGroup` models, without
//! duo's code.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::{
    accept_one, ctl_token, epoll_create, exit_on_error, interest, join_all, reuseport_listeners,
    service, wait, Accepted, Conn, Unit, ACCEPT_PAUSE, BUF_SIZE, ONESHOT,
};

/// `--spread loops`: `loops` reactors ([`Unit`], each with its own `SO_REUSEPORT`
/// listener, so a connection stays on the reactor that accepted it and is served without
/// a lock) and `n` threads that run any reactor whose turn is due. Every reactor's epoll
/// set is in one outer epoll set, registered `EPOLLONESHOT`: the thread that takes a
/// reactor's readiness locks it, runs one turn (`epoll_wait` with no timeout, then its
/// events), unlocks it and re-arms it (one `epoll_ctl` per turn, not per event). So a
/// reactor whose thread lost its CPU is served by the other thread, the way work sharing
/// serves a connection, at the granularity of a reactor.
pub(super) fn serve_loops(
    addr: SocketAddr,
    n: usize,
    loops: usize,
    defer_accept: u32,
) -> io::Result<()> {
    let units = units(addr, loops, defer_accept)?;
    let unit_fds: Vec<RawFd> = units.iter().map(|u| u.ep.as_raw_fd()).collect();
    let units: Vec<Mutex<Unit>> = units.into_iter().map(Mutex::new).collect();
    let outer = epoll_create()?;
    for (i, &fd) in unit_fds.iter().enumerate() {
        let events = libc::EPOLLIN as u32 | ONESHOT;
        ctl_token(outer.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, events, i as u64)?;
    }
    // The earliest end of a reactor's accept pause (`monotonic_nanos`), `u64::MAX` if
    // none: a paused reactor may have no event to wake anyone when its pause ends.
    let paused = AtomicU64::new(u64::MAX);
    on_threads(n, |_| {
        loops_worker(outer.as_raw_fd(), &units, &unit_fds, &paused)
    })
}

/// One thread of [`serve_loops`].
fn loops_worker(
    outer: RawFd,
    units: &[Mutex<Unit>],
    unit_fds: &[RawFd],
    paused: &AtomicU64,
) -> io::Result<()> {
    let mut buf = [0u8; BUF_SIZE];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1024];
    // One reactor per wait: a thread that loses its CPU holds up no other.
    let mut ready = [libc::epoll_event { events: 0, u64: 0 }; 1];
    loop {
        let resume_at = paused.load(Ordering::Acquire);
        let timeout = if resume_at == u64::MAX {
            -1
        } else {
            let left = resume_at.saturating_sub(duo_sys::monotonic_nanos());
            (left / 1_000_000) as i32 + 1
        };
        let got = wait(outer, &mut ready, timeout)?;
        if resume_at != u64::MAX
            && duo_sys::monotonic_nanos() >= resume_at
            && paused
                .compare_exchange(resume_at, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // Whoever claims an ended pause gives every paused reactor a turn (which
            // resumes its accepting if due) and notes the pauses still running.
            for unit in units {
                let mut unit = unit.lock().unwrap_or_else(|e| e.into_inner());
                if unit.resume_accept.is_some() {
                    unit.turn(0, &mut buf, &mut events)?;
                }
                note_pause(&unit, paused);
            }
        }
        for ev in &ready[..got] {
            let i = ev.u64 as usize;
            {
                let mut unit = units[i].lock().unwrap_or_else(|e| e.into_inner());
                unit.turn(0, &mut buf, &mut events)?;
                note_pause(&unit, paused);
            }
            ctl_token(
                outer,
                libc::EPOLL_CTL_MOD,
                unit_fds[i],
                libc::EPOLLIN as u32 | ONESHOT,
                i as u64,
            )?;
        }
    }
}

/// Marks a progress stamp taken at the start of a wait.
const WAITING: u64 = 1 << 63;

/// `--spread owned`: `loops` reactors ([`Unit`], each with its own `SO_REUSEPORT`
/// listener), reactor k owned by thread k mod n: its epoll set sits level-triggered in
/// that thread's outer set, so the owner runs its ready reactors with nothing to re-arm.
/// Each thread stamps its progress; after its own turns a thread runs the ready reactors
/// (those not locked) of any thread that has made no progress for `after` nanoseconds:
/// preempted mid-turn, or woken but given no core. duo's `LoopSharing::Owned` without
/// duo's code.
pub(super) fn serve_owned(
    addr: SocketAddr,
    n: usize,
    loops: usize,
    defer_accept: u32,
    after: u64,
) -> io::Result<()> {
    let units = units(addr, loops, defer_accept)?;
    let outers = (0..n)
        .map(|_| epoll_create())
        .collect::<io::Result<Vec<_>>>()?;
    for (k, u) in units.iter().enumerate() {
        ctl_token(
            outers[k % n].as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            u.ep.as_raw_fd(),
            libc::EPOLLIN as u32,
            k as u64,
        )?;
    }
    let outer_fds: Vec<RawFd> = outers.iter().map(|o| o.as_raw_fd()).collect();
    let units: Vec<Mutex<Unit>> = units.into_iter().map(Mutex::new).collect();
    let progress = stamps(n);
    on_threads(n, |me| {
        owned_worker(me, &units, &outer_fds, &progress, after)
    })
}

/// Thread `me` of [`serve_owned`]. Simpler than duo's group, as a control experiment:
/// it blocks in its own wait (no timed look at the others for a thread that has nothing
/// to do), and an owner whose ready reactor another thread holds finds it ready again at
/// once until that thread lets go (duo parks the registration instead), which costs it
/// CPU only while it is being helped.
fn owned_worker(
    me: usize,
    units: &[Mutex<Unit>],
    outers: &[RawFd],
    progress: &[AtomicU64],
    after: u64,
) -> io::Result<()> {
    let n = outers.len();
    let mut buf = [0u8; BUF_SIZE];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut ready = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut tried = vec![0u64; n];
    let mine = &progress[me];
    // A turn of reactor `k` if no other thread runs it; a reactor that stopped accepting
    // sets `PAUSED`, so that some thread gives it a turn when the pause may have ended (a
    // reactor with a disabled listener and no connection has no event to get one).
    // Whether the turn ran (another thread may hold the reactor).
    let mut run = |k: usize, buf: &mut [u8; BUF_SIZE]| -> io::Result<bool> {
        let Ok(mut unit) = units[k].try_lock() else {
            return Ok(false);
        };
        unit.turn(0, buf, &mut events)?;
        if unit.resume_accept.is_some() {
            PAUSED.store(true, Ordering::Release);
        }
        Ok(true)
    };
    loop {
        let timeout = pause_timeout();
        mine.store(duo_sys::monotonic_nanos() | WAITING, Ordering::Release);
        let got = wait(outers[me], &mut ready, timeout)?;
        for ev in &ready[..got] {
            mine.store(duo_sys::monotonic_nanos(), Ordering::Release);
            run(ev.u64 as usize, &mut buf)?;
        }
        if timeout >= 0 && PAUSED.swap(false, Ordering::AcqRel) {
            // A turn resumes accepting if the pause is over; one still paused sets the
            // flag again. A reactor another thread holds keeps the flag set: that thread
            // may have set it just before this swap, and not look again after letting go
            // (a paused reactor was once left with nobody to resume it).
            for k in 0..units.len() {
                if !run(k, &mut buf)? {
                    PAUSED.store(true, Ordering::Release);
                }
            }
        }
        help_stalled(
            me,
            progress,
            &mut tried,
            after,
            outers,
            &mut ready,
            |_, token| run(token as usize, &mut buf).map(drop),
        )?;
    }
}

/// A reactor of `--spread flat`: a listener and the connections it accepted, all
/// registered in the epoll set of the reactor's owner thread with the token
/// `reactor << 32 | fd`.
struct FlatUnit {
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    /// When accepting resumes after running out of descriptors.
    resume_accept: Option<Instant>,
}

/// `--spread flat` (see `Spread::Flat`).
pub(super) fn serve_flat(
    addr: SocketAddr,
    n: usize,
    loops: usize,
    defer_accept: u32,
    after: u64,
) -> io::Result<()> {
    let sets = (0..n)
        .map(|_| epoll_create())
        .collect::<io::Result<Vec<_>>>()?;
    let mut units = Vec::with_capacity(loops);
    for (k, listener) in reuseport_listeners(addr, loops, defer_accept)?
        .into_iter()
        .enumerate()
    {
        let lfd = listener.as_raw_fd();
        let token = (k as u64) << 32 | lfd as u64;
        ctl_token(
            sets[k % n].as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            lfd,
            libc::EPOLLIN as u32,
            token,
        )?;
        units.push(Mutex::new(FlatUnit {
            listener,
            conns: Vec::new(),
            resume_accept: None,
        }));
    }
    let set_fds: Vec<RawFd> = sets.iter().map(|o| o.as_raw_fd()).collect();
    let progress = stamps(n);
    on_threads(n, |me| flat_worker(me, &units, &set_fds, &progress, after))
}

/// Runs `worker(me)` for `me` in `0..n`, each on a thread of its own, until they end
/// (which they do only by ending the process, [`exit_on_error`], or by panicking).
fn on_threads(n: usize, worker: impl Fn(usize) -> io::Result<()> + Sync) -> io::Result<()> {
    std::thread::scope(|s| {
        let worker = &worker;
        let threads = (0..n)
            .map(|me| s.spawn(move || exit_on_error(worker(me))))
            .collect();
        join_all(threads)
    })
}

/// `loops` reactors ([`Unit`]), each with its own `SO_REUSEPORT` listener on the address
/// the first one bound (announced).
fn units(addr: SocketAddr, loops: usize, defer_accept: u32) -> io::Result<Vec<Unit>> {
    reuseport_listeners(addr, loops, defer_accept)?
        .into_iter()
        .map(Unit::new)
        .collect()
}

/// A progress stamp per thread of [`serve_owned`] or [`serve_flat`], with [`WAITING`] set
/// while the thread sleeps in its own wait.
fn stamps(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// Thread `me` of [`serve_owned`] or [`serve_flat`] serves, with `serve(set, token)`, the
/// ready events in the epoll set (`sets[j]`) of each other thread `j` that has made no
/// progress for `after` nanoseconds, looking at each no more often than that (`tried`).
/// Level-triggered: looking takes nothing from the owner, which finds the same events
/// ready when it comes back.
fn help_stalled(
    me: usize,
    progress: &[AtomicU64],
    tried: &mut [u64],
    after: u64,
    sets: &[RawFd],
    ready: &mut [libc::epoll_event],
    mut serve: impl FnMut(RawFd, u64) -> io::Result<()>,
) -> io::Result<()> {
    let now = duo_sys::monotonic_nanos();
    for (j, &set) in sets.iter().enumerate() {
        let stamp = progress[j].load(Ordering::Acquire) & !WAITING;
        if j == me || now < stamp.saturating_add(after) || now < tried[j].saturating_add(after) {
            continue;
        }
        tried[j] = now;
        let got = wait(set, ready, 0)?;
        for ev in &ready[..got] {
            serve(set, ev.u64)?;
        }
    }
    Ok(())
}

/// Some reactor of `--spread owned` or `flat` stopped accepting for a while (out of
/// descriptors). Such a reactor may have no event to give it a turn when its pause ends
/// (its listener disabled, no connection), and whichever thread paused it may not be its
/// owner, which may sleep meanwhile: so every thread waits at most [`ACCEPT_PAUSE`] while
/// this is set, and the first to claim it looks at every reactor.
static PAUSED: AtomicBool = AtomicBool::new(false);

/// How long a thread may wait for events (ms): until an accept pause may have ended, or
/// for ever (`-1`).
fn pause_timeout() -> i32 {
    if PAUSED.load(Ordering::Acquire) {
        ACCEPT_PAUSE.as_millis() as i32
    } else {
        -1
    }
}

/// Thread `me` of [`serve_flat`].
fn flat_worker(
    me: usize,
    units: &[Mutex<FlatUnit>],
    sets: &[RawFd],
    progress: &[AtomicU64],
    after: u64,
) -> io::Result<()> {
    let n = sets.len();
    let mut buf = [0u8; BUF_SIZE];
    let mut ready = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut tried = vec![0u64; n];
    let mine = &progress[me];
    loop {
        let timeout = look_timeout(me, progress, &tried, after, pause_timeout());
        mine.store(duo_sys::monotonic_nanos() | WAITING, Ordering::Release);
        let got = wait(sets[me], &mut ready, timeout)?;
        for ev in &ready[..got] {
            mine.store(duo_sys::monotonic_nanos(), Ordering::Release);
            flat_event(units, sets[me], ev.u64, &mut buf)?;
        }
        if PAUSED.load(Ordering::Acquire) && PAUSED.swap(false, Ordering::AcqRel) {
            for (k, unit) in units.iter().enumerate() {
                let mut u = unit.lock().unwrap_or_else(|e| e.into_inner());
                match u.resume_accept {
                    Some(t) if Instant::now() >= t => {
                        u.resume_accept = None;
                        let lfd = u.listener.as_raw_fd();
                        let token = (k as u64) << 32 | lfd as u64;
                        let interest = libc::EPOLLIN as u32;
                        ctl_token(sets[k % n], libc::EPOLL_CTL_MOD, lfd, interest, token)?;
                    }
                    Some(_) => PAUSED.store(true, Ordering::Release),
                    None => {}
                }
            }
        }
        help_stalled(
            me,
            progress,
            &mut tried,
            after,
            sets,
            &mut ready,
            |set, token| flat_event(units, set, token, &mut buf),
        )?;
    }
}

/// How long thread `me` of [`serve_flat`] may sleep in its wait (ms, `-1`: until an
/// event): no longer than `limit`, and only until the earliest moment one of the other
/// threads that is running (not asleep in its own wait) would have made no progress for
/// `after`, so that a thread preempted with events in hand is helped even when this one
/// has nothing of its own to do (as duo's `LoopGroup` does). A sleeping thread is woken
/// by its own events.
fn look_timeout(me: usize, progress: &[AtomicU64], tried: &[u64], after: u64, limit: i32) -> i32 {
    let now = duo_sys::monotonic_nanos();
    let due = progress
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != me)
        .filter_map(|(j, t)| {
            let p = t.load(Ordering::Acquire);
            (p & WAITING == 0).then(|| p.saturating_add(after).max(tried[j].saturating_add(after)))
        })
        .min();
    match due {
        // Rounded up to a millisecond, epoll's unit (at least 1: no spinning).
        Some(due) => {
            let ms = (due.saturating_sub(now).div_ceil(1_000_000)).max(1) as i32;
            if limit < 0 {
                ms
            } else {
                ms.min(limit)
            }
        }
        None => limit,
    }
}

/// Serves one event of a `--spread flat` reactor (`token`: reactor << 32 | fd) whose
/// owner's epoll set is `set`, unless another thread holds that reactor
/// (level triggering reports the event again).
fn flat_event(
    units: &[Mutex<FlatUnit>],
    set: RawFd,
    token: u64,
    buf: &mut [u8; BUF_SIZE],
) -> io::Result<()> {
    let (k, fd) = ((token >> 32) as usize, token as u32 as RawFd);
    let Ok(mut u) = units[k].try_lock() else {
        return Ok(());
    };
    let u = &mut *u;
    if fd == u.listener.as_raw_fd() {
        loop {
            let c = match accept_one(fd)? {
                Accepted::Conn(c) => c,
                Accepted::Drained => return Ok(()),
                Accepted::Exhausted => {
                    ctl_token(set, libc::EPOLL_CTL_MOD, fd, 0, token)?;
                    u.resume_accept = Some(Instant::now() + ACCEPT_PAUSE);
                    PAUSED.store(true, Ordering::Release);
                    return Ok(());
                }
            };
            let raw = c.as_raw_fd();
            let t = (k as u64) << 32 | raw as u64;
            if let Err(e) = ctl_token(set, libc::EPOLL_CTL_ADD, raw, libc::EPOLLIN as u32, t) {
                eprintln!("raw_epoll_echo: epoll_ctl: {e}; dropping the connection");
                continue;
            }
            if u.conns.len() <= raw as usize {
                u.conns.resize_with(raw as usize + 1, || None);
            }
            u.conns[raw as usize] = Some(Conn {
                fd: c,
                pending: Vec::new(),
            });
        }
    }
    let Some(slot) = u.conns.get_mut(fd as usize) else {
        return Ok(());
    };
    let Some(c) = slot.as_mut() else {
        return Ok(());
    };
    let before = interest(c);
    if !service(c, buf)
        || (interest(c) != before
            && ctl_token(set, libc::EPOLL_CTL_MOD, fd, interest(c), token).is_err())
    {
        *slot = None;
    }
    Ok(())
}

/// Records `unit`'s accept pause, if any, in the earliest pause end.
fn note_pause(unit: &Unit, paused: &AtomicU64) {
    if let Some(t) = unit.resume_accept {
        let left = t.saturating_duration_since(Instant::now()).as_nanos() as u64;
        paused.fetch_min(duo_sys::monotonic_nanos() + left, Ordering::AcqRel);
    }
}
