//! Combinations of buffer and pool states the other tests do not combine: the pool under
//! a memory cap against a model of what must fit (with and without thread caches, trims
//! while buffers are out), blocks returned from another thread while the cap is reached,
//! an input buffer at its maximum size read and consumed alternately with `settle`, lines
//! and failing reads mixed in, an output buffer on a capped pool (all-or-nothing appends),
//! many tiny chunks then a huge one, and zero-length operations.

mod util;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{mpsc, Arc};
use std::thread;

use duo_buffer::{
    BufPool, BufferError, InputBuffer, IoBuf, OutputBuffer, PoolConfig, PoolError, ReadOutcome,
    MAX_BLOCK, SIZE_CLASSES,
};
use proptest::prelude::*;
use util::{pattern, scatter};

const K4: usize = 4 << 10;
const K16: usize = 16 << 10;
const K64: usize = 64 << 10;

#[derive(Debug, Clone)]
enum PoolOp {
    /// Allocate a block for this many bytes.
    Alloc(usize),
    /// Drop the live block at this index (modulo the number live).
    Free(usize),
    Trim,
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    let size = prop_oneof![
        Just(0usize),
        Just(K4),
        Just(K4 + 1),
        Just(K16),
        Just(K16 + 1),
        Just(K64),
        Just(K64 + 1),
        1usize..(300 << 10),
    ];
    prop_oneof![
        5 => size.prop_map(PoolOp::Alloc),
        4 => any::<usize>().prop_map(PoolOp::Free),
        1 => Just(PoolOp::Trim),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// On one thread, with or without its cache, a capped pool serves a request exactly
    /// when the blocks in use plus the new block fit under the cap (free blocks of any
    /// class are given back to make room), never holds more than the cap, and its counters
    /// match the blocks held.
    #[test]
    fn a_capped_pool_serves_exactly_what_fits(
        cap in prop_oneof![Just(K64), Just(K64 + K16), Just(300 << 10), Just(1 << 20)],
        cached in any::<bool>(),
        ops in prop::collection::vec(pool_op(), 1..60),
    ) {
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(cap),
            thread_cache_bytes: if cached { 1 << 20 } else { 0 },
        });
        let mut live: Vec<IoBuf> = Vec::new();
        for op in ops {
            match op {
                PoolOp::Alloc(n) => {
                    let size = BufPool::class_size_for(n).expect("in range");
                    let in_use: usize = live.iter().map(IoBuf::capacity).sum();
                    match pool.alloc(n) {
                        Ok(buf) => {
                            prop_assert_eq!(buf.capacity(), size);
                            prop_assert!(buf.is_empty());
                            prop_assert!(in_use + size <= cap, "served over the cap");
                            live.push(buf);
                        }
                        Err(PoolError::Exhausted { requested, cap: c, .. }) => {
                            prop_assert_eq!((requested, c), (size, cap));
                            prop_assert!(
                                in_use + size > cap,
                                "refused {} bytes with {} in use under a cap of {}",
                                size, in_use, cap
                            );
                        }
                        Err(e) => prop_assert!(false, "unexpected {:?}", e),
                    }
                }
                PoolOp::Free(i) => {
                    if !live.is_empty() {
                        let i = i % live.len();
                        live.swap_remove(i);
                    }
                }
                PoolOp::Trim => {
                    pool.trim();
                    let stats = pool.stats();
                    prop_assert_eq!(stats.free_bytes(), 0, "a trim on the only thread frees all");
                }
            }
            let stats = pool.stats();
            prop_assert!(stats.allocated_bytes <= cap);
            for (class, size) in stats.classes.iter().zip(SIZE_CLASSES) {
                let held = live.iter().filter(|b| b.capacity() == size).count();
                prop_assert_eq!(class.in_use, held, "class {}", size);
                prop_assert_eq!(class.allocated, class.free + class.in_use);
            }
            let bytes: usize = stats.classes.iter().map(|c| c.allocated * c.size).sum();
            prop_assert_eq!(bytes, stats.allocated_bytes);
        }
        drop(live);
        pool.trim();
        prop_assert_eq!(pool.stats().allocated_bytes, 0);
    }
}

/// The cap is reached while another thread returns blocks: its cache keeps at most the
/// caches' share of the cap (an eighth), the rest go to the shared list and are usable here
/// at once; what it cached becomes usable once it exits; the counters stay exact through
/// it, and a trim while buffers are out keeps them.
#[test]
fn the_cap_reached_while_another_thread_returns_blocks() {
    let cap = 8 * K16;
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(cap),
        ..PoolConfig::default()
    });
    let bufs: Vec<IoBuf> = (0..8).map(|_| pool.alloc(K16).expect("alloc")).collect();
    assert!(matches!(pool.alloc(K4), Err(PoolError::Exhausted { .. })));
    let (to_other, from_main) = mpsc::channel::<Vec<IoBuf>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let other = thread::spawn(move || {
        let bufs = from_main.recv().expect("blocks");
        drop(bufs);
        done_tx.send(()).expect("done");
        exit_rx.recv().expect("exit");
    });
    // A trim here while every block is out releases nothing and keeps the counters.
    assert_eq!(pool.trim(), 0);
    to_other.send(bufs).expect("send");
    done_rx.recv().expect("freed on the other thread");
    let stats = pool.stats();
    assert_eq!(stats.in_use_blocks(), 0);
    assert_eq!(stats.allocated_bytes, cap);
    // At most an eighth of the cap (one block) is held in the other thread's cache.
    let big = pool.alloc(K64).expect("room made from the shared list");
    let mut small = Vec::new();
    while let Ok(b) = pool.alloc(K16) {
        small.push(b);
    }
    assert_eq!(small.len(), 3, "all but the block the other thread caches");
    let stats = pool.stats();
    assert_eq!(stats.allocated_bytes, cap);
    assert_eq!(stats.class(K16).map(|c| (c.in_use, c.free)), Some((3, 1)));
    exit_tx.send(()).expect("exit");
    other.join().expect("join");
    // Flushed to the shared list at its exit: usable now.
    small.push(pool.alloc(K16).expect("the flushed block"));
    let stats = pool.stats();
    assert_eq!(stats.allocated_bytes, cap);
    assert_eq!(stats.in_use_blocks(), 5);
    drop((big, small));
    pool.trim();
    assert_eq!(pool.stats().allocated_bytes, 0);
}

#[derive(Debug, Clone)]
enum InOp {
    /// A read: the "socket" holds this many new stream bytes and accepts all it is offered.
    Read(usize),
    /// A read that fails with this error kind (nothing read).
    Fail(bool),
    /// A read of end of stream.
    Eof,
    Consume(usize),
    /// Parse one line of at most this many bytes and consume it if whole.
    Line(usize),
    Settle,
    Append(usize),
}

fn in_op(max: usize) -> impl Strategy<Value = InOp> {
    let size = prop_oneof![
        3 => 1usize..64,
        2 => 1usize..(K64 + 10),
        2 => Just(max),
        1 => Just(max.saturating_sub(1).max(1)),
    ];
    prop_oneof![
        6 => size.clone().prop_map(InOp::Read),
        1 => any::<bool>().prop_map(InOp::Fail),
        1 => Just(InOp::Eof),
        5 => size.clone().prop_map(InOp::Consume),
        2 => (1usize..200).prop_map(InOp::Line),
        2 => Just(InOp::Settle),
        2 => size.prop_map(InOp::Append),
    ]
}

/// A byte stream with a newline every so often, so that lines are found.
fn stream(start: usize, len: usize) -> Vec<u8> {
    pattern(start, len)
        .into_iter()
        .enumerate()
        .map(|(i, b)| if (start + i) % 97 == 0 { b'\n' } else { b })
        .collect()
}

fn in_case() -> impl Strategy<Value = (usize, Vec<InOp>)> {
    prop_oneof![
        Just(K4),
        Just(K4 + 1),
        Just(K16),
        Just(K64 + 1),
        Just(200 << 10)
    ]
    .prop_flat_map(|max| (Just(max), prop::collection::vec(in_op(max), 1..60)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// An input buffer filled to its maximum, read and consumed alternately (through the
    /// block's tail, the spill area, compaction and growth across size classes), with
    /// settles, lines, appends and failing reads in between, holds exactly the model's
    /// bytes; a failed read changes nothing.
    #[test]
    fn an_input_buffer_at_its_maximum_read_and_consumed_alternately((max, ops) in in_case()) {
        let pool = BufPool::new(PoolConfig::default());
        let mut buf = InputBuffer::with_pool(pool, max);
        let mut model: VecDeque<u8> = VecDeque::new();
        let mut next = 0usize;
        for op in ops {
            let room = max - model.len();
            match op {
                InOp::Read(n) => {
                    let bytes = stream(next, n);
                    let mut offered = 0;
                    let result = buf.read_with(|iovs| {
                        offered = iovs.iter().map(|iov| iov.len()).sum();
                        Ok(scatter(iovs, &bytes))
                    });
                    if room == 0 {
                        let full = matches!(result, Err(BufferError::Full { .. }));
                        prop_assert!(full, "{:?}", result);
                        prop_assert_eq!(offered, 0, "a full buffer does not read");
                    } else {
                        prop_assert!(offered <= room && offered >= room.min(K64), "offered {}", offered);
                        let len = n.min(offered);
                        prop_assert_eq!(
                            result.ok(),
                            Some(ReadOutcome::Data { len, drained: len < offered })
                        );
                        model.extend(&bytes[..len]);
                        next += len;
                    }
                }
                InOp::Fail(would_block) => {
                    let before = buf.peek().to_vec();
                    let kind = if would_block {
                        io::ErrorKind::WouldBlock
                    } else {
                        io::ErrorKind::ConnectionReset
                    };
                    let result = buf.read_with(|iovs| {
                        // A vectored read the kernel fails midway: it wrote into the
                        // slices, then reported an error.
                        scatter(iovs, &[0xEE; 100]);
                        Err(kind.into())
                    });
                    match result {
                        Err(BufferError::Full { .. }) => prop_assert_eq!(room, 0),
                        Ok(ReadOutcome::WouldBlock) => prop_assert!(would_block),
                        Err(BufferError::Io(e)) => prop_assert_eq!(e.kind(), kind),
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                    prop_assert!(buf.peek() == before.as_slice(), "a failed read changed the contents");
                }
                InOp::Eof => {
                    let result = buf.read_with(|_| Ok(0));
                    match result {
                        Ok(ReadOutcome::Eof) => prop_assert!(room > 0),
                        Err(BufferError::Full { .. }) => prop_assert_eq!(room, 0),
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                InOp::Consume(n) => {
                    buf.consume(n);
                    model.drain(..n.min(model.len()));
                }
                InOp::Line(limit) => {
                    let data: Vec<u8> = model.iter().copied().collect();
                    let expected = match data.iter().position(|&b| b == b'\n') {
                        Some(end) => {
                            let len = end - usize::from(end > 0 && data[end - 1] == b'\r');
                            if len > limit { Err(()) } else { Ok(Some((len, end + 1))) }
                        }
                        None => {
                            let pending = data.len() - usize::from(data.last() == Some(&b'\r'));
                            if pending > limit { Err(()) } else { Ok(None) }
                        }
                    };
                    let got = buf.next_line(limit).map(|l| l.map(|l| (l.len, l.consumed))).map_err(|_| ());
                    prop_assert_eq!(got, expected);
                    if let Ok(Some((_, consumed))) = got {
                        buf.consume(consumed);
                        model.drain(..consumed);
                    }
                }
                InOp::Settle => {
                    buf.settle().expect("no cap");
                    prop_assert!(!buf.is_unsettled());
                }
                InOp::Append(n) => {
                    let bytes = stream(next, n);
                    match buf.append(&bytes) {
                        Ok(()) => {
                            prop_assert!(n <= room);
                            model.extend(&bytes);
                            next += n;
                        }
                        Err(BufferError::Full { .. }) => prop_assert!(n > room),
                        Err(e) => prop_assert!(false, "append: {}", e),
                    }
                }
            }
            prop_assert_eq!(buf.len(), model.len());
            prop_assert!(buf.peek().iter().eq(model.iter()), "contents differ from the model");
            prop_assert!(buf.len() <= max);
            if model.is_empty() {
                prop_assert_eq!(buf.capacity(), 0);
                prop_assert_eq!(pool.stats().in_use_blocks(), 0);
            } else {
                prop_assert!(buf.capacity() >= buf.len());
            }
        }
    }
}

#[derive(Debug, Clone)]
enum OutOp {
    Append(usize),
    Tiny(usize),
    Shared(usize),
    Write(usize),
}

fn out_op() -> impl Strategy<Value = OutOp> {
    prop_oneof![
        4 => prop_oneof![1usize..100, 1usize..(80 << 10), Just(K16), Just(K16 + 1)]
            .prop_map(OutOp::Append),
        3 => (1usize..40).prop_map(OutOp::Tiny),
        2 => (1usize..5000).prop_map(OutOp::Shared),
        4 => (0usize..(100 << 10)).prop_map(OutOp::Write),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// An output buffer on a capped pool: an append either queues all its bytes or none
    /// (the cap refused a block), the buffer never holds more pooled bytes than the cap,
    /// and what is written is exactly what was accepted, in order; many tiny pooled chunks
    /// and shared ones mix with appends that span blocks.
    #[test]
    fn an_output_buffer_on_a_capped_pool_appends_all_or_nothing(
        cap in prop_oneof![Just(K16 + K4), Just(K64 + 2 * K16), Just(300 << 10)],
        ops in prop::collection::vec(out_op(), 1..60),
    ) {
        let pool = BufPool::new(PoolConfig { memory_cap: Some(cap), thread_cache_bytes: 0 });
        let mut out = OutputBuffer::with_pool(pool);
        let mut model: VecDeque<u8> = VecDeque::new();
        let mut next = 0usize;
        for op in ops {
            match op {
                OutOp::Append(n) => {
                    let bytes = pattern(next, n);
                    let before: Vec<Vec<u8>> = out.chunks().map(<[u8]>::to_vec).collect();
                    match out.append(&bytes) {
                        Ok(()) => {
                            model.extend(&bytes);
                            next += n;
                        }
                        Err(PoolError::Exhausted { .. }) => {
                            let after: Vec<Vec<u8>> = out.chunks().map(<[u8]>::to_vec).collect();
                            prop_assert!(after == before, "a refused append changed the queue");
                        }
                        Err(e) => prop_assert!(false, "append: {:?}", e),
                    }
                }
                OutOp::Tiny(n) => {
                    // n one-byte pooled chunks (push_buf), each in its own 4 KiB block.
                    for _ in 0..n {
                        let Ok(mut block) = pool.alloc(1) else { break };
                        block.append(&pattern(next, 1));
                        out.push_buf(block);
                        model.extend(pattern(next, 1));
                        next += 1;
                    }
                }
                OutOp::Shared(n) => {
                    let msg: Arc<[u8]> = Arc::from(pattern(next, n));
                    out.push_shared(msg, 0);
                    model.extend(pattern(next, n));
                    next += n;
                }
                OutOp::Write(accept) => {
                    let mut wire = Vec::new();
                    let written = out
                        .write_with(|iovs: &[IoSlice<'_>]| {
                            assert!(iovs.len() <= 64);
                            for iov in iovs {
                                let n = iov.len().min(accept - wire.len());
                                wire.extend_from_slice(&iov[..n]);
                            }
                            Ok(wire.len())
                        })
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(written, wire.len());
                    let expected: Vec<u8> = model.drain(..written).collect();
                    prop_assert!(wire == expected, "written bytes differ from the model");
                }
            }
            prop_assert_eq!(out.len(), model.len());
            prop_assert!(out.chunks().flatten().eq(model.iter()), "queue differs from the model");
            prop_assert!(pool.stats().allocated_bytes <= cap);
        }
        out.clear();
        prop_assert_eq!(pool.stats().in_use_blocks(), 0);
    }
}

/// Many one-byte chunks, then one append larger than the largest block: one write takes
/// the first 64 chunks, the huge append spans two blocks, and the stream comes out whole.
#[test]
fn many_tiny_chunks_then_a_huge_one() {
    let pool = BufPool::new(PoolConfig::default());
    let mut out = OutputBuffer::with_pool(pool);
    let mut stream = Vec::new();
    for i in 0..100 {
        let msg: Arc<[u8]> = Arc::from(pattern(i, 1));
        stream.extend_from_slice(&msg);
        out.push_shared(msg, 0);
    }
    let huge = pattern(100, MAX_BLOCK + 1);
    out.append(&huge).expect("append");
    stream.extend_from_slice(&huge);
    assert_eq!(out.block_count(), 102);
    assert_eq!(out.len(), stream.len());
    let mut wire = Vec::new();
    let mut calls = 0;
    while !out.is_empty() {
        calls += 1;
        let n = out
            .write_with(|iovs| {
                assert!(iovs.len() <= 64);
                for iov in iovs {
                    wire.extend_from_slice(iov);
                }
                Ok(iovs.iter().map(|i| i.len()).sum())
            })
            .expect("write");
        assert!(n > 0);
    }
    assert_eq!(calls, 2, "64 tiny chunks, then the rest");
    assert!(wire == stream, "the stream comes out whole");
    assert_eq!(pool.stats().in_use_blocks(), 0);
}

/// Zero-length operations hold nothing and change nothing.
#[test]
fn zero_length_operations_change_nothing() {
    let pool = BufPool::new(PoolConfig::default());
    let mut input = InputBuffer::with_pool(pool, K4);
    input.append(&[]).expect("empty append");
    input.consume(0);
    input.consume(usize::MAX);
    input.settle().expect("nothing to settle");
    assert_eq!((input.len(), input.capacity()), (0, 0));
    assert_eq!(input.next_line(0).expect("empty"), None);
    assert_eq!(input.find(b""), Some(0));
    let mut out = OutputBuffer::with_pool(pool);
    out.append(&[]).expect("empty append");
    out.push_buf(pool.alloc(0).expect("alloc"));
    out.push_shared(Arc::from(&b""[..]), 0);
    out.consume(0);
    assert_eq!((out.len(), out.block_count()), (0, 0));
    out.append(b"abc").expect("append");
    // A write of zero bytes (a zero-length send) drops nothing.
    assert_eq!(out.write_with(|_| Ok(0)).expect("write"), 0);
    assert_eq!(out.chunks().collect::<Vec<_>>(), [&b"abc"[..]]);
    out.clear();
    let mut buf = pool.alloc(0).expect("alloc");
    assert_eq!(buf.append(&[]), 0);
    buf.advance_tail(0);
    buf.consume(0);
    buf.compact();
    assert_eq!((buf.len(), buf.prependable()), (0, 0));
    drop(buf);
    assert_eq!(pool.stats().in_use_blocks(), 0);
    // Exactly a class size and one over.
    for (i, &size) in SIZE_CLASSES.iter().enumerate() {
        assert_eq!(pool.alloc(size).expect("alloc").capacity(), size);
        match SIZE_CLASSES.get(i + 1) {
            Some(&bigger) => assert_eq!(pool.alloc(size + 1).expect("alloc").capacity(), bigger),
            None => assert!(matches!(
                pool.alloc(size + 1),
                Err(PoolError::TooLarge { .. })
            )),
        }
    }
}
