//! OutputBuffer: a proptest model against `VecDeque<u8>`, plus example tests.

mod util;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::OnceLock;

use duo_buffer::{BufPool, OutputBuffer, PoolConfig, PoolError, MAX_BLOCK};
use proptest::prelude::*;
use util::pattern;

/// The pool of the model test, used by nothing else, so its counters are exact.
fn model_pool() -> BufPool {
    static POOL: OnceLock<BufPool> = OnceLock::new();
    *POOL.get_or_init(|| BufPool::new(PoolConfig::default()))
}

#[derive(Debug, Clone)]
enum Op {
    /// `append` of this many new stream bytes.
    Append(usize),
    /// `push_buf` of a block filled with this many new stream bytes (0: an empty block).
    PushBuf(usize),
    /// A vectored write accepting at most this many bytes.
    Write(usize),
    /// A vectored write failing with `WouldBlock`.
    Blocked,
    Consume(usize),
    Clear,
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..200, 3 => 0usize..6000, 2 => 0usize..300_000]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => size().prop_map(Op::Append),
        2 => (0usize..5000).prop_map(Op::PushBuf),
        6 => size().prop_map(Op::Write),
        1 => Just(Op::Blocked),
        2 => size().prop_map(Op::Consume),
        1 => Just(Op::Clear),
    ]
}

fn check(buf: &OutputBuffer, model: &mut VecDeque<u8>) {
    let expected = model.make_contiguous();
    assert_eq!(buf.len(), expected.len());
    assert_eq!(buf.is_empty(), expected.is_empty());
    let mut at = 0;
    for chunk in buf.chunks() {
        assert!(!chunk.is_empty(), "no empty block is kept");
        assert!(
            chunk == &expected[at..at + chunk.len()],
            "contents differ from the model"
        );
        at += chunk.len();
    }
    assert_eq!(at, expected.len());
    if expected.is_empty() {
        assert_eq!(buf.block_count(), 0, "an empty buffer holds no block");
    }
    assert_eq!(model_pool().stats().in_use_blocks(), buf.block_count());
}

proptest! {
    #[test]
    fn output_buffer_matches_a_vecdeque_model(ops in prop::collection::vec(op(), 1..40)) {
        let pool = model_pool();
        let mut buf = OutputBuffer::with_pool(pool);
        let mut model = VecDeque::new();
        let mut next = 0usize;
        for op in ops {
            match op {
                Op::Append(n) => {
                    let bytes = pattern(next, n);
                    buf.append(&bytes).expect("no cap");
                    model.extend(&bytes);
                    next += n;
                }
                Op::PushBuf(n) => {
                    let bytes = pattern(next, n);
                    let mut block = pool.alloc(n).expect("alloc");
                    prop_assert_eq!(block.append(&bytes), n);
                    buf.push_buf(block);
                    model.extend(&bytes);
                    next += n;
                }
                Op::Write(accept) => {
                    let mut wire = Vec::new();
                    let mut called = false;
                    let written = buf
                        .write_with(|iovs: &[IoSlice<'_>]| {
                            called = true;
                            assert!(!iovs.is_empty() && iovs.len() <= 64);
                            for iov in iovs {
                                let n = iov.len().min(accept - wire.len());
                                wire.extend_from_slice(&iov[..n]);
                            }
                            Ok(wire.len())
                        })
                        .expect("write");
                    prop_assert_eq!(called, !model.is_empty());
                    prop_assert_eq!(written, wire.len());
                    let expected: Vec<u8> = model.drain(..written).collect();
                    prop_assert!(wire == expected, "written bytes differ from the model");
                }
                Op::Blocked => {
                    let err = buf.write_with(|_| Err(io::ErrorKind::WouldBlock.into()));
                    match err {
                        Ok(0) => prop_assert!(model.is_empty()),
                        Err(e) => prop_assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                        Ok(n) => prop_assert!(false, "blocked write reported {} bytes", n),
                    }
                }
                Op::Consume(n) => {
                    buf.consume(n);
                    model.drain(..n.min(model.len()));
                }
                Op::Clear => {
                    buf.clear();
                    model.clear();
                }
            }
            check(&buf, &mut model);
        }
        drop(buf);
        prop_assert_eq!(pool.stats().in_use_blocks(), 0);
    }
}

#[test]
fn append_fills_the_tail_then_sizes_new_blocks_to_the_rest() {
    let pool = BufPool::new(PoolConfig::default());
    let mut buf = OutputBuffer::with_pool(pool);
    buf.append(&[1; 100]).expect("append");
    assert_eq!(buf.block_count(), 1);
    buf.append(&[2; 3996])
        .expect("fills the 4 KiB block exactly");
    assert_eq!(buf.block_count(), 1);
    buf.append(&[3; 20_000])
        .expect("one 64 KiB block for the rest");
    let sizes: Vec<usize> = buf.chunks().map(<[u8]>::len).collect();
    assert_eq!(sizes, [4096, 20_000]);
    assert_eq!(pool.stats().class(64 << 10).map(|c| c.in_use), Some(1));
    buf.append(&[4; 44_000])
        .expect("tail has 45 536 bytes free");
    assert_eq!(buf.block_count(), 2);
    assert_eq!(buf.len(), 4096 + 64_000);
}

#[test]
fn append_larger_than_the_largest_block_spans_blocks() {
    let pool = BufPool::new(PoolConfig::default());
    let mut buf = OutputBuffer::with_pool(pool);
    let data = pattern(0, MAX_BLOCK + (1 << 20) + 5);
    buf.append(&data).expect("append");
    let sizes: Vec<usize> = buf.chunks().map(<[u8]>::len).collect();
    assert_eq!(sizes, [MAX_BLOCK, (1 << 20) + 5]);
    assert_eq!(buf.chunks().flatten().copied().collect::<Vec<u8>>(), data);
    buf.clear();
    assert_eq!(pool.stats().in_use_blocks(), 0);
}

#[test]
fn failed_append_changes_nothing() {
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(4096 + (16 << 10)),
        thread_cache_bytes: 0,
    });
    let mut buf = OutputBuffer::with_pool(pool);
    buf.append(&[1; 1000]).expect("append");
    // Needs the 3096 free bytes of the tail, then 16 KiB, then 64 KiB: over the cap.
    let err = buf
        .append(&vec![2; 3096 + (16 << 10) + 100])
        .expect_err("over the cap");
    assert!(matches!(err, PoolError::Exhausted { .. }), "{err:?}");
    assert_eq!(buf.len(), 1000);
    assert_eq!(buf.chunks().collect::<Vec<_>>(), [&[1u8; 1000][..]]);
    assert_eq!(pool.stats().in_use_blocks(), 1);
    buf.append(&[3; 3096]).expect("the tail is still usable");
    assert_eq!(buf.block_count(), 1);
}

#[test]
fn one_write_covers_at_most_64_blocks() {
    let pool = BufPool::new(PoolConfig::default());
    let mut buf = OutputBuffer::with_pool(pool);
    for i in 0..100u8 {
        let mut block = pool.alloc(10).expect("alloc");
        block.append(&[i; 10]);
        buf.push_buf(block);
    }
    assert_eq!(buf.block_count(), 100);
    let n = buf
        .write_with(|iovs| {
            assert_eq!(iovs.len(), 64);
            Ok(iovs.iter().map(|iov| iov.len()).sum())
        })
        .expect("write");
    assert_eq!((n, buf.block_count(), buf.len()), (640, 36, 360));
    assert_eq!(buf.chunks().next(), Some(&[64u8; 10][..]));
    // An over-reporting writer cannot make the buffer drop more than it offered.
    assert_eq!(buf.write_with(|_| Ok(usize::MAX)).expect("write"), 360);
    assert_eq!((buf.len(), buf.block_count()), (0, 0));
    assert_eq!(pool.stats().in_use_blocks(), 0);
    assert_eq!(
        buf.write_with(|_| unreachable!("empty buffer, no call"))
            .expect("noop"),
        0
    );
}

#[test]
fn push_buf_of_an_empty_block_is_dropped() {
    let pool = BufPool::new(PoolConfig::default());
    let mut buf = OutputBuffer::with_pool(pool);
    buf.push_buf(pool.alloc(1).expect("alloc"));
    assert_eq!((buf.len(), buf.block_count()), (0, 0));
    assert_eq!(pool.stats().in_use_blocks(), 0);
    let text = format!("{buf:?}");
    assert!(text.contains("OutputBuffer"), "{text}");
}

// `push_shared` (shared, reference-counted chunks) mixed with everything else.

use std::sync::Arc;

/// The pool of the shared-chunk model test, used by nothing else.
fn shared_model_pool() -> BufPool {
    static POOL: OnceLock<BufPool> = OnceLock::new();
    *POOL.get_or_init(|| BufPool::new(PoolConfig::default()))
}

#[derive(Debug, Clone)]
enum MixOp {
    /// `append` of this many new stream bytes.
    Append(usize),
    /// `push_buf` of a block filled with this many new stream bytes.
    PushBuf(usize),
    /// `push_shared` of a message of `len` bytes from `start` (which may be at or past the
    /// end: then nothing is queued); the message's bytes before `start` are not part of the
    /// stream (they "went out directly").
    PushShared {
        len: usize,
        start: usize,
    },
    /// A vectored write accepting at most this many bytes.
    Write(usize),
    Clear,
}

fn mix_op() -> impl Strategy<Value = MixOp> {
    prop_oneof![
        4 => size().prop_map(MixOp::Append),
        2 => (0usize..5000).prop_map(MixOp::PushBuf),
        4 => (size(), size()).prop_map(|(len, start)| MixOp::PushShared {
            len,
            // Mostly inside the message, sometimes at or past its end.
            start: if len == 0 { start % 3 } else { start % (len + len / 4 + 2) },
        }),
        6 => size().prop_map(MixOp::Write),
        1 => Just(MixOp::Clear),
    ]
}

proptest! {
    /// `append`, `push_buf` and `push_shared` mixed with partial writes: what comes out is
    /// exactly what went in (minus what `clear` dropped), in order; `len()` always matches;
    /// every `Arc` handed to `push_shared` is released (strong count back to 1) once the
    /// buffer is drained or cleared, and none is copied (held while queued).
    #[test]
    fn shared_chunks_mix_with_blocks_and_partial_writes(
        ops in prop::collection::vec(mix_op(), 1..40),
        final_clear in any::<bool>(),
    ) {
        let pool = shared_model_pool();
        let mut buf = OutputBuffer::with_pool(pool);
        let mut model: VecDeque<u8> = VecDeque::new();
        let mut arcs: Vec<Arc<[u8]>> = Vec::new();
        let mut next = 0usize;
        for op in ops {
            match op {
                MixOp::Append(n) => {
                    let bytes = pattern(next, n);
                    buf.append(&bytes).expect("no cap");
                    model.extend(&bytes);
                    next += n;
                }
                MixOp::PushBuf(n) => {
                    let bytes = pattern(next, n);
                    let mut block = pool.alloc(n.max(1)).expect("alloc");
                    prop_assert_eq!(block.append(&bytes), n);
                    buf.push_buf(block);
                    model.extend(&bytes);
                    next += n;
                }
                MixOp::PushShared { len, start } => {
                    let msg: Arc<[u8]> = Arc::from(pattern(next, len));
                    next += len;
                    buf.push_shared(msg.clone(), start);
                    if start < len {
                        model.extend(&msg[start..]);
                        prop_assert_eq!(Arc::strong_count(&msg), 2, "queued by reference");
                    } else {
                        prop_assert_eq!(Arc::strong_count(&msg), 1, "nothing queued");
                    }
                    arcs.push(msg);
                }
                MixOp::Write(accept) => {
                    let mut wire = Vec::new();
                    let written = buf
                        .write_with(|iovs: &[IoSlice<'_>]| {
                            for iov in iovs {
                                let n = iov.len().min(accept - wire.len());
                                wire.extend_from_slice(&iov[..n]);
                            }
                            Ok(wire.len())
                        })
                        .expect("write");
                    prop_assert_eq!(written, wire.len());
                    prop_assert!(written <= model.len());
                    let expected: Vec<u8> = model.drain(..written).collect();
                    prop_assert!(wire == expected, "written bytes differ from the model");
                }
                MixOp::Clear => {
                    buf.clear();
                    model.clear();
                }
            }
            prop_assert_eq!(buf.len(), model.len());
            prop_assert_eq!(buf.is_empty(), model.is_empty());
            let expected = model.make_contiguous();
            let mut at = 0;
            for chunk in buf.chunks() {
                prop_assert!(!chunk.is_empty(), "no empty chunk is kept");
                prop_assert!(chunk == &expected[at..at + chunk.len()], "queued bytes differ");
                at += chunk.len();
            }
            prop_assert_eq!(at, expected.len());
            prop_assert!(pool.stats().in_use_blocks() <= buf.block_count());
            for a in &arcs {
                prop_assert!(Arc::strong_count(a) <= 2, "an Arc is held more than once");
            }
        }
        if final_clear {
            buf.clear();
            model.clear();
        } else {
            // Drain with writes of at most 65 521 bytes each.
            while !buf.is_empty() {
                let mut wire = Vec::new();
                let written = buf
                    .write_with(|iovs| {
                        for iov in iovs {
                            let n = iov.len().min(65_521 - wire.len());
                            wire.extend_from_slice(&iov[..n]);
                        }
                        Ok(wire.len())
                    })
                    .expect("write");
                prop_assert!(written > 0);
                let expected: Vec<u8> = model.drain(..written).collect();
                prop_assert!(wire == expected, "drained bytes differ from the model");
            }
        }
        prop_assert!(model.is_empty());
        prop_assert_eq!((buf.len(), buf.block_count()), (0, 0));
        for a in &arcs {
            prop_assert_eq!(Arc::strong_count(a), 1, "an Arc is still held after draining");
        }
        prop_assert_eq!(pool.stats().in_use_blocks(), 0);
        drop(buf);
    }
}

#[test]
fn push_shared_at_or_past_the_end_queues_nothing() {
    let pool = BufPool::new(PoolConfig::default());
    let mut buf = OutputBuffer::with_pool(pool);
    let msg: Arc<[u8]> = Arc::from(&b"twelve bytes"[..]);
    buf.push_shared(msg.clone(), msg.len());
    buf.push_shared(msg.clone(), msg.len() + 1);
    buf.push_shared(msg.clone(), usize::MAX);
    let empty: Arc<[u8]> = Arc::from(&b""[..]);
    buf.push_shared(empty.clone(), 0);
    assert_eq!((buf.len(), buf.block_count()), (0, 0));
    assert!(buf.is_empty());
    assert_eq!(Arc::strong_count(&msg), 1, "nothing kept a reference");
    assert_eq!(Arc::strong_count(&empty), 1, "nothing kept a reference");
    assert_eq!(
        buf.write_with(|_| unreachable!("nothing queued, no call"))
            .expect("noop"),
        0
    );
    // One byte before the end: exactly that byte is queued.
    buf.push_shared(msg.clone(), msg.len() - 1);
    assert_eq!(buf.len(), 1);
    assert_eq!(buf.chunks().collect::<Vec<_>>(), [&b"s"[..]]);
    assert_eq!(Arc::strong_count(&msg), 2);
    buf.clear();
    assert_eq!(Arc::strong_count(&msg), 1);
    assert_eq!(pool.stats().in_use_blocks(), 0);
}
