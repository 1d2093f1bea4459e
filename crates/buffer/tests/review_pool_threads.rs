//! The pool under a memory cap with several threads: blocks idle in the caches of threads
//! that are alive but not using the pool (an I/O loop whose connections went quiet), refills
//! that take blocks from the shared list, blocks handed across threads in a ring, a thread
//! that exits with a full cache, blocks dropped by a thread-local destructor at thread exit,
//! and trims while blocks are out on other threads.
//!
//! The guarantee checked: with a cap, the free blocks that thread caches keep total at most
//! an eighth of it, so a request fails with `Exhausted` only when the blocks in use and the
//! request together exceed seven eighths of the cap, whatever the other threads' caches hold.

mod util;

use std::cell::RefCell;
use std::sync::mpsc;
use std::thread;

use duo_buffer::{BufPool, IoBuf, PoolConfig, PoolError};
use util::{pattern, DEADLINE};

const K4: usize = 4 << 10;
const K16: usize = 16 << 10;
const K64: usize = 64 << 10;
const K256: usize = 256 << 10;
const M1: usize = 1 << 20;

/// A pool with the default thread caches (1 MiB per class) and `cap`.
fn capped(cap: usize) -> BufPool {
    BufPool::new(PoolConfig {
        memory_cap: Some(cap),
        ..PoolConfig::default()
    })
}

/// A thread that ran `work`, keeps what it returned, and waits, alive, until it is let go
/// (or the test ends: the sender is dropped). Its thread cache stays as `work` left it.
struct Parked<T: Send + 'static> {
    go: Option<mpsc::Sender<()>>,
    ready: mpsc::Receiver<()>,
    handle: Option<thread::JoinHandle<T>>,
}

impl<T: Send + 'static> Parked<T> {
    /// Starts the thread and waits until `work` is done.
    fn start(work: impl FnOnce() -> T + Send + 'static) -> Parked<T> {
        let parked = Parked::spawn(work);
        parked.wait_ready();
        parked
    }

    /// Starts the thread without waiting for `work`.
    fn spawn(work: impl FnOnce() -> T + Send + 'static) -> Parked<T> {
        let (go, wait) = mpsc::channel::<()>();
        let (ready_tx, ready) = mpsc::channel::<()>();
        let handle = thread::spawn(move || {
            let kept = work();
            ready_tx.send(()).expect("ready");
            // Held until let go; a test that fails drops the sender, which ends the wait.
            let _ = wait.recv_timeout(DEADLINE);
            kept
        });
        Parked {
            go: Some(go),
            ready,
            handle: Some(handle),
        }
    }

    fn wait_ready(&self) {
        self.ready
            .recv_timeout(DEADLINE)
            .expect("the thread did its work");
    }

    /// Lets the thread exit and returns what it kept.
    fn finish(mut self) -> T {
        drop(self.go.take());
        self.handle
            .take()
            .expect("joined once")
            .join()
            .expect("the parked thread")
    }
}

impl<T: Send + 'static> Drop for Parked<T> {
    fn drop(&mut self) {
        drop(self.go.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Allocates blocks of `size` on this thread until the pool refuses; checks the refusal
/// against the guarantee (the blocks in use plus the request exceed 7/8 of the cap) and
/// returns the blocks.
fn fill_until_exhausted(pool: BufPool, size: usize) -> Vec<IoBuf> {
    let cap = pool.config().memory_cap.expect("a capped pool");
    let mut held = Vec::new();
    loop {
        match pool.alloc(size) {
            Ok(b) => held.push(b),
            Err(PoolError::Exhausted {
                requested,
                allocated,
                ..
            }) => {
                let stats = pool.stats();
                assert!(allocated <= cap, "{allocated} allocated over the cap {cap}");
                assert!(
                    stats.in_use_bytes() + requested > cap - cap / 8,
                    "refused a {requested}-byte block with only {} of {cap} bytes in use \
                     ({} free, {} got here)",
                    stats.in_use_bytes(),
                    stats.free_bytes(),
                    held.len() * size,
                );
                return held;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(held.len() * size <= cap, "more than the cap handed out");
    }
}

/// A thread that served a burst and then went quiet keeps its freed blocks in its cache.
/// With 1 MiB caches per class and a 1 MiB cap, the whole cap sat there: every other
/// thread got `Exhausted` with nothing in use (a server at its cap closing connections
/// with `OutOfMemory` while the cap is all free).
#[test]
fn an_idle_threads_cache_does_not_starve_the_cap() {
    let cap = M1;
    let pool = capped(cap);
    let quiet = Parked::start(move || {
        let burst: Vec<IoBuf> = (0..64).map(|_| pool.alloc(K16).expect("alloc")).collect();
        drop(burst);
    });
    assert_eq!(pool.stats().in_use_blocks(), 0);
    let held = fill_until_exhausted(pool, K16);
    assert!(
        held.len() * K16 >= cap - cap / 8,
        "got {} blocks",
        held.len()
    );
    drop(held);
    quiet.finish();
    pool.trim();
    assert_eq!(pool.stats().allocated_bytes, 0, "nothing lost");
}

/// An empty cache refilled half its bound (32 blocks of 16 KiB) from the shared list for
/// one allocation: the other 31 then sat idle while another thread was refused.
#[test]
fn a_refill_does_not_hoard_the_shared_list() {
    let cap = M1;
    let pool = capped(cap);
    // The whole cap, free on the shared list (flushed by a thread that exited).
    thread::spawn(move || {
        let all: Vec<IoBuf> = (0..64).map(|_| pool.alloc(K16).expect("alloc")).collect();
        drop(all);
    })
    .join()
    .expect("join");
    let stats = pool.stats();
    assert_eq!((stats.allocated_bytes, stats.free_bytes()), (cap, cap));
    // One allocation on a thread that then holds it and goes quiet.
    let one = Parked::start(move || pool.alloc(K16).expect("from the shared list"));
    let held = fill_until_exhausted(pool, K16);
    assert!(
        held.len() * K16 >= cap - cap / 8 - K16,
        "got {}",
        held.len()
    );
    assert_eq!(pool.stats().allocated_bytes, cap, "all reused, none new");
    drop(held);
    drop(one.finish());
    pool.trim();
    assert_eq!(pool.stats().allocated_bytes, 0);
}

/// Four threads in a ring allocate blocks of four classes and send them to the next, which
/// frees them (so every free lands in a cache other than the allocator's), against a cap
/// that the storm reaches; then they go quiet, alive. The counters are exact, and this
/// thread gets what the guarantee promises, in a class none of them used.
#[test]
fn threads_freeing_each_others_blocks_against_the_cap() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 200;
    let cap = 4 * M1;
    let pool = capped(cap);
    let sizes = [K4, K16, K64, K256];
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<Vec<IoBuf>>()).unzip();
    let mut rxs: Vec<Option<mpsc::Receiver<Vec<IoBuf>>>> = rxs.into_iter().map(Some).collect();
    let (done_tx, done) = mpsc::channel::<(usize, usize)>();
    let mut ring = Vec::new();
    for t in 0..THREADS {
        let next = txs[(t + 1) % THREADS].clone();
        let from_prev = rxs[t].take().expect("one receiver each");
        let done_tx = done_tx.clone();
        ring.push(Parked::spawn(move || {
            let (mut served, mut refused) = (0, 0);
            for round in 0..ROUNDS {
                let batch: Vec<IoBuf> = (0..8)
                    .filter_map(|i| match pool.alloc(sizes[(round + i + t) % sizes.len()]) {
                        Ok(b) => {
                            served += 1;
                            Some(b)
                        }
                        Err(PoolError::Exhausted { allocated, .. }) => {
                            assert!(allocated <= cap);
                            refused += 1;
                            None
                        }
                        Err(e) => panic!("unexpected {e}"),
                    })
                    .collect();
                next.send(batch).expect("next thread");
                let theirs = from_prev.recv_timeout(DEADLINE).expect("previous thread");
                drop(theirs);
            }
            done_tx.send((served, refused)).expect("done");
        }));
    }
    for p in &ring {
        p.wait_ready();
    }
    let (mut served, mut refused) = (0, 0);
    for _ in 0..THREADS {
        let (s, r) = done.recv_timeout(DEADLINE).expect("a ring thread finished");
        served += s;
        refused += r;
    }
    assert!(served > 0);
    let stats = pool.stats();
    assert_eq!(stats.in_use_blocks(), 0, "{stats:?} ({refused} refused)");
    assert!(stats.allocated_bytes <= cap);
    for c in stats.classes {
        assert_eq!(c.allocated, c.free, "{c:?}");
    }
    // 1 MiB blocks: none of the ring's classes; what they cache must be given up.
    let held = fill_until_exhausted(pool, M1);
    assert!(held.len() * M1 >= cap - cap / 8 - M1, "got {}", held.len());
    drop(held);
    for p in ring {
        p.finish();
    }
    pool.trim();
    assert_eq!(pool.stats().allocated_bytes, 0, "nothing lost");
}

/// Threads that exit with full caches give everything back: the blocks (flushed to the
/// shared list) and their part of the cache allowance, so a thread started after many of
/// them still caches what it frees (its free block is not on the shared list).
#[test]
fn threads_exiting_with_full_caches_lose_nothing() {
    let cap = 8 * M1;
    let pool = capped(cap);
    for _ in 0..40 {
        thread::spawn(move || {
            let bufs: Vec<IoBuf> = (0..64).map(|_| pool.alloc(K4).expect("alloc")).collect();
            drop(bufs);
            let bufs: Vec<IoBuf> = (0..4).map(|_| pool.alloc(K64).expect("alloc")).collect();
            drop(bufs);
        })
        .join()
        .expect("join");
    }
    let stats = pool.stats();
    assert_eq!(stats.in_use_blocks(), 0);
    pool.trim();
    assert_eq!(
        pool.stats().allocated_bytes,
        0,
        "every block reached the shared list"
    );
    // A new thread frees one block and keeps it cached: this thread must take a new one.
    let cached = Parked::start(move || drop(pool.alloc(K4).expect("alloc")));
    let before = pool.stats().allocated_bytes;
    let mine = pool.alloc(K4).expect("alloc");
    assert_eq!(
        pool.stats().allocated_bytes,
        before + K4,
        "the other thread's freed block stayed in its cache"
    );
    drop(mine);
    cached.finish();
    // And the whole cap is usable.
    let held = fill_until_exhausted(pool, K64);
    assert_eq!(held.len() * K64, cap);
}

thread_local! {
    /// Blocks a thread keeps until it exits: dropped by this destructor, which may run
    /// before or after the pool's own thread-local caches are destroyed.
    static KEPT: RefCell<Vec<IoBuf>> = const { RefCell::new(Vec::new()) };
}

/// Blocks dropped by a thread-local destructor at thread exit, in either order with the
/// pool's caches, come back (none is lost to the cap).
#[test]
fn blocks_dropped_by_a_thread_local_destructor_come_back() {
    let cap = 2 * M1;
    let pool = capped(cap);
    for touch_first in [true, false] {
        thread::spawn(move || {
            if touch_first {
                // KEPT registered before the pool's caches: destroyed after them.
                KEPT.with(|k| k.borrow_mut().clear());
            }
            let bufs: Vec<IoBuf> = (0..32).map(|_| pool.alloc(K16).expect("alloc")).collect();
            KEPT.with(|k| k.borrow_mut().extend(bufs));
        })
        .join()
        .expect("join");
        let stats = pool.stats();
        assert_eq!(stats.in_use_blocks(), 0, "touch_first {touch_first}");
        let held = fill_until_exhausted(pool, K16);
        assert_eq!(held.len() * K16, cap, "touch_first {touch_first}");
    }
}

/// A trim while other threads hold blocks and cache others releases only what is free on
/// the shared lists and in the caller's cache; the blocks out come back afterwards and the
/// counters stay exact.
#[test]
fn trim_while_blocks_are_out_on_other_threads() {
    let cap = 4 * M1;
    let pool = capped(cap);
    let holder = Parked::start(move || {
        let keep: Vec<IoBuf> = (0..16).map(|_| pool.alloc(K64).expect("alloc")).collect();
        let spare: Vec<IoBuf> = (0..8).map(|_| pool.alloc(K4).expect("alloc")).collect();
        drop(spare);
        keep
    });
    let mine: Vec<IoBuf> = (0..10).map(|_| pool.alloc(K16).expect("alloc")).collect();
    drop(mine);
    let before = pool.stats();
    let released = pool.trim();
    let after = pool.stats();
    assert!(
        released >= 10 * K16,
        "this thread's own free blocks: {released}"
    );
    assert_eq!(after.allocated_bytes, before.allocated_bytes - released);
    assert_eq!(after.in_use_blocks(), 16);
    let k64 = after.class(K64).expect("a class");
    assert_eq!(
        (k64.allocated, k64.in_use),
        (16, 16),
        "blocks out are never released"
    );
    let keep = holder.finish();
    drop(keep);
    let stats = pool.stats();
    assert_eq!(stats.in_use_blocks(), 0);
    for c in stats.classes {
        assert_eq!(c.allocated, c.free, "{c:?}");
    }
    pool.trim();
    assert_eq!(pool.stats().allocated_bytes, 0);
}

/// A frame of the test stream: a 4-byte big-endian length, then that many bytes of
/// `pattern` starting at `seq`.
fn frame(seq: usize, len: usize) -> Vec<u8> {
    let mut f = (len as u32).to_be_bytes().to_vec();
    f.extend(pattern(seq, len));
    f
}

/// Frames written over TCP with a small send buffer from one thread, as copied appends,
/// pooled blocks pushed without a copy and shared chunks (many more than the 64 blocks one
/// `sendmsg` takes, so writes stop mid-block and mid-vector), and parsed on another thread
/// from an input buffer whose maximum is barely above the largest frame, which consumes
/// only whole frames (so reads stop at the maximum, and the rest is compacted and settled);
/// both sides on one capped pool. Every frame arrives whole, and no block is left in use.
#[test]
fn frames_through_partial_writes_and_a_small_input_maximum_across_threads() {
    use std::os::fd::AsFd;
    use std::sync::Arc;

    use duo_buffer::{InputBuffer, OutputBuffer, ReadOutcome};
    use duo_sys::socket2::SockRef;

    const FRAMES: usize = 600;
    const MAX_FRAME: usize = 3000;
    let pool = capped(4 * M1);
    let (client, server) = util::tcp_pair();
    SockRef::from(&client)
        .set_send_buffer_size(4096)
        .expect("sndbuf");
    let lens: Vec<usize> = (0..FRAMES).map(|i| (i * 7919) % MAX_FRAME).collect();
    let expected = lens.clone();
    let reader = thread::spawn(move || {
        let mut input = InputBuffer::with_pool(pool, MAX_FRAME + 4 + 17);
        let mut got = Vec::new();
        util::until("every frame", || {
            loop {
                match input.recv_from(server.as_fd()) {
                    Ok(ReadOutcome::Data { .. }) => {}
                    Ok(ReadOutcome::WouldBlock) => break,
                    Ok(ReadOutcome::Eof) => panic!("unexpected EOF"),
                    Err(duo_buffer::BufferError::Full { .. }) => {}
                    Err(e) => panic!("read: {e}"),
                }
                while let Some(len) = input.peek_u32_be().map(|l| l as usize) {
                    if input.len() < 4 + len {
                        break;
                    }
                    let seq = got.len();
                    assert!(
                        input.peek()[4..4 + len] == pattern(seq, len)[..],
                        "frame {seq}"
                    );
                    got.push(len);
                    input.consume(4 + len);
                }
                input.settle().expect("settle");
            }
            (got.len() == FRAMES).then_some(())
        });
        assert_eq!(input.capacity(), 0, "drained: no block held");
        got
    });
    let mut out = OutputBuffer::with_pool(pool);
    for (seq, &len) in lens.iter().enumerate() {
        let f = frame(seq, len);
        match seq % 3 {
            0 => out.append(&f).expect("append"),
            1 => {
                let mut b = pool.alloc(f.len()).expect("alloc");
                b.append(&f);
                out.push_buf(b);
            }
            _ => out.push_shared(Arc::from(&f[..]), 0),
        }
    }
    assert!(out.block_count() > 64, "{} blocks", out.block_count());
    let mut writes = 0;
    util::until("the output to drain", || {
        match out.send_to(client.as_fd()) {
            Ok(n) if n > 0 => writes += 1,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("send: {e}"),
        }
        out.is_empty().then_some(())
    });
    assert!(writes > 10, "writes were partial: {writes}");
    assert_eq!(out.block_count(), 0);
    assert_eq!(reader.join().expect("reader"), expected);
    assert_eq!(pool.stats().in_use_blocks(), 0);
}

/// An input buffer at the largest maximum (8 MiB) filled from TCP: reads stop at exactly
/// the maximum (`Full`, the rest stays in the socket), the contents are the stream, and
/// after consuming half the rest is read into the same block.
#[test]
fn an_input_buffer_filled_to_the_largest_maximum_from_tcp() {
    use std::os::fd::AsFd;

    use duo_buffer::{BufferError, InputBuffer, OutputBuffer, ReadOutcome, MAX_BLOCK};

    const EXTRA: usize = 1000;
    let pool = BufPool::new(PoolConfig::default());
    let (client, server) = util::tcp_pair();
    let mut out = OutputBuffer::with_pool(pool);
    out.append(&pattern(0, MAX_BLOCK + EXTRA)).expect("append");
    let mut input = InputBuffer::with_pool(pool, MAX_BLOCK);
    let mut full = false;
    util::until("the buffer to fill", || {
        if let Err(e) = out.send_to(client.as_fd()) {
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "send: {e}");
        }
        loop {
            match input.recv_from(server.as_fd()) {
                Ok(ReadOutcome::Data { .. }) => input.settle().expect("settle"),
                Ok(ReadOutcome::WouldBlock) => break,
                Ok(ReadOutcome::Eof) => panic!("unexpected EOF"),
                Err(BufferError::Full { limit }) => {
                    assert_eq!(limit, MAX_BLOCK);
                    full = true;
                    break;
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        full.then_some(())
    });
    assert_eq!((input.len(), input.capacity()), (MAX_BLOCK, MAX_BLOCK));
    assert!(
        input.peek() == pattern(0, MAX_BLOCK),
        "the stream, in order"
    );
    input.consume(MAX_BLOCK / 2);
    util::until("the rest", || {
        if let Err(e) = out.send_to(client.as_fd()) {
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "send: {e}");
        }
        match input.recv_from(server.as_fd()) {
            Ok(ReadOutcome::Data { .. } | ReadOutcome::WouldBlock) => {}
            other => panic!("read: {other:?}"),
        }
        input.settle().expect("settle");
        (input.len() == MAX_BLOCK / 2 + EXTRA).then_some(())
    });
    assert_eq!(
        input.capacity(),
        MAX_BLOCK,
        "compacted in place, no second block"
    );
    assert!(input.peek() == pattern(MAX_BLOCK / 2, MAX_BLOCK / 2 + EXTRA));
    assert_eq!(pool.stats().in_use_blocks(), 1);
}
