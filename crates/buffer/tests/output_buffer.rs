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
