//! InputBuffer: a proptest model against `VecDeque<u8>`, plus example tests of the helpers.

mod util;

use std::collections::VecDeque;
use std::io;
use std::sync::OnceLock;

use duo_buffer::{
    BufPool, BufferError, InputBuffer, Line, PoolConfig, PoolError, ReadOutcome, MAX_BLOCK,
};
use proptest::prelude::*;
use util::{pattern, scatter};

/// The pool of the model test: only this file's single proptest uses it, so its counters say
/// exactly what the buffer holds.
fn model_pool() -> BufPool {
    static POOL: OnceLock<BufPool> = OnceLock::new();
    *POOL.get_or_init(|| BufPool::new(PoolConfig::default()))
}

#[derive(Debug, Clone)]
enum Op {
    /// `InputBuffer::append` of this many new stream bytes.
    Append(usize),
    /// A read where the "socket" holds `available` bytes and the call copies at most `accept`.
    Read {
        available: usize,
        accept: usize,
    },
    /// A read failing with `WouldBlock`.
    WouldBlock,
    /// A read returning 0.
    Eof,
    /// A read failing with another error.
    Error,
    Consume(usize),
    ConsumeAll,
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 1usize..200, 3 => 1usize..6000, 2 => 1usize..100_000]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => size().prop_map(Op::Append),
        6 => (size(), size()).prop_map(|(available, accept)| Op::Read { available, accept }),
        1 => Just(Op::WouldBlock),
        1 => Just(Op::Eof),
        1 => Just(Op::Error),
        4 => size().prop_map(Op::Consume),
        1 => Just(Op::ConsumeAll),
    ]
}

fn max_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        Just(100),
        Just(5000),
        Just(70_000),
        Just(300_000),
        Just(MAX_BLOCK)
    ]
}

fn check(buf: &InputBuffer, model: &mut VecDeque<u8>) {
    let expected = model.make_contiguous();
    assert_eq!(buf.len(), expected.len());
    assert!(buf.peek() == &*expected, "contents differ from the model");
    assert!(buf.len() <= buf.max_len());
    if expected.is_empty() {
        assert!(buf.is_empty());
        assert_eq!(buf.capacity(), 0, "an idle buffer holds no block");
        assert_eq!(model_pool().stats().in_use_blocks(), 0);
    } else {
        assert!(buf.capacity() >= buf.len());
        // Bytes read into an empty buffer wait in the thread's spill area, not in a block,
        // until settled.
        let blocks = usize::from(!buf.is_unsettled());
        assert_eq!(model_pool().stats().in_use_blocks(), blocks);
    }
    let u32_expected = expected
        .get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
    assert_eq!(buf.peek_u32_be(), u32_expected);
    let u64_expected = expected
        .get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
    assert_eq!(buf.peek_u64_be(), u64_expected);
    if expected.len() >= 3 {
        let mid = expected.len() / 2;
        let needle = [expected[mid], expected[mid + 1]];
        let naive = expected.windows(2).position(|w| w == needle);
        assert_eq!(buf.find(&needle), naive);
        assert_eq!(
            buf.find(&needle[..1]),
            expected.iter().position(|&b| b == needle[0])
        );
    }
}

proptest! {
    #[test]
    fn input_buffer_matches_a_vecdeque_model(max in max_len(), ops in prop::collection::vec(op(), 1..40)) {
        let mut buf = InputBuffer::with_pool(model_pool(), max);
        let mut model = VecDeque::new();
        let mut next = 0usize; // stream position of the next new byte
        for op in ops {
            let room = max - model.len();
            match op {
                Op::Append(n) => {
                    let bytes = pattern(next, n);
                    match buf.append(&bytes) {
                        Ok(()) => {
                            prop_assert!(n <= room);
                            model.extend(&bytes);
                            next += n;
                        }
                        Err(BufferError::Full { limit }) => prop_assert!(n > room && limit == max),
                        Err(e) => prop_assert!(false, "append failed: {e}"),
                    }
                }
                Op::Read { available, accept } => {
                    let bytes = pattern(next, available.min(accept));
                    let mut offered = 0;
                    let result = buf.read_with(|iovs| {
                        assert!(!iovs.is_empty() && iovs.len() <= 2);
                        offered = iovs.iter().map(|iov| iov.len()).sum();
                        Ok(scatter(iovs, &bytes))
                    });
                    if room == 0 {
                        let full = matches!(result, Err(BufferError::Full { limit }) if limit == max);
                        prop_assert!(full, "expected Full, got {:?}", result);
                        prop_assert_eq!(offered, 0, "a full buffer must not read");
                    } else {
                        prop_assert!(offered <= room, "offered {} > room {}", offered, room);
                        prop_assert!(offered >= room.min(64 << 10), "offered {} < room {}", offered, room);
                        let len = bytes.len().min(offered);
                        prop_assert_eq!(result.ok(), Some(ReadOutcome::Data { len, drained: len < offered }));
                        model.extend(&bytes[..len]);
                        next += len;
                    }
                }
                Op::WouldBlock | Op::Eof | Op::Error => {
                    let kind = match op {
                        Op::WouldBlock => Some(io::ErrorKind::WouldBlock),
                        Op::Error => Some(io::ErrorKind::ConnectionReset),
                        _ => None,
                    };
                    let result = buf.read_with(|_| kind.map_or(Ok(0), |k| Err(k.into())));
                    match (room, kind, result) {
                        (0, _, Err(BufferError::Full { .. })) => {}
                        (_, Some(io::ErrorKind::WouldBlock), Ok(ReadOutcome::WouldBlock)) => {}
                        (_, None, Ok(ReadOutcome::Eof)) => {}
                        (_, Some(io::ErrorKind::ConnectionReset), Err(BufferError::Io(e))) => {
                            prop_assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
                        }
                        (_, _, other) => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                Op::Consume(n) => {
                    buf.consume(n);
                    model.drain(..n.min(model.len()));
                }
                Op::ConsumeAll => {
                    buf.consume_all();
                    model.clear();
                }
            }
            check(&buf, &mut model);
        }
        drop(buf);
        prop_assert_eq!(model_pool().stats().in_use_blocks(), 0);
    }
}

fn with(bytes: &[u8]) -> InputBuffer {
    let mut buf = InputBuffer::new();
    buf.append(bytes).expect("append");
    buf
}

#[test]
fn next_line_accepts_lf_and_crlf() {
    let mut buf = with(b"one\r\ntwo\n\nthree");
    assert_eq!(
        buf.next_line(10).expect("ok"),
        Some(Line {
            len: 3,
            consumed: 5
        })
    );
    buf.consume(5);
    assert_eq!(
        buf.next_line(10).expect("ok"),
        Some(Line {
            len: 3,
            consumed: 4
        })
    );
    assert_eq!(&buf.peek()[..3], b"two");
    buf.consume(4);
    assert_eq!(
        buf.next_line(10).expect("ok"),
        Some(Line {
            len: 0,
            consumed: 1
        })
    );
    buf.consume(1);
    assert_eq!(buf.next_line(10).expect("ok"), None);
    buf.append(b"\r").expect("append");
    assert_eq!(
        buf.next_line(5).expect("ok"),
        None,
        "a trailing CR may start the terminator"
    );
    buf.append(b"\n").expect("append");
    assert_eq!(
        buf.next_line(5).expect("ok"),
        Some(Line {
            len: 5,
            consumed: 7
        })
    );
    buf.consume(7);
    assert_eq!(buf.capacity(), 0);
    assert_eq!(InputBuffer::new().next_line(0).expect("ok"), None);
}

#[test]
fn next_line_rejects_long_lines_as_soon_as_known() {
    let limit_err = |r: Result<Option<Line>, BufferError>| {
        matches!(r, Err(BufferError::LineTooLong { limit: 4 }))
    };
    assert_eq!(with(b"abcd").next_line(4).expect("ok"), None);
    assert!(
        limit_err(with(b"abcde").next_line(4)),
        "unterminated and already too long"
    );
    assert_eq!(with(b"abcd\r").next_line(4).expect("ok"), None);
    assert!(limit_err(with(b"abcde\r").next_line(4)));
    assert_eq!(
        with(b"abcd\r\n").next_line(4).expect("ok"),
        Some(Line {
            len: 4,
            consumed: 6
        })
    );
    assert!(limit_err(with(b"abcde\n").next_line(4)));
    assert!(
        limit_err(with(b"abc\rx\n").next_line(4)),
        "a lone CR is part of the line"
    );
}

#[test]
fn find_and_peek_helpers() {
    let buf = with(b"\x00\x00\x00\x2aGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(buf.peek_u32_be(), Some(42));
    assert_eq!(
        buf.peek_u64_be(),
        Some(u64::from_be_bytes(*b"\x00\x00\x00\x2aGET "))
    );
    assert_eq!(buf.find(b"\r\n"), Some(18));
    assert_eq!(buf.find(b"\r\n\r\n"), Some(27));
    assert_eq!(buf.find(b"nope"), None);
    assert_eq!(buf.find(b""), Some(0));
    assert_eq!(with(b"abc").peek_u32_be(), None);
    assert_eq!(InputBuffer::new().find(b"a"), None);
}

#[test]
fn append_respects_max_len_and_grows_by_class() {
    let pool = BufPool::new(PoolConfig::default());
    let mut buf = InputBuffer::with_pool(pool, 20_000);
    buf.append(&[1; 4000]).expect("append");
    assert_eq!(buf.capacity(), 4096);
    buf.consume(3000); // 1000 left at offset 3000
    buf.append(&[2; 3000]).expect("fits after compaction");
    assert_eq!(buf.capacity(), 4096);
    buf.append(&[3; 5000]).expect("moves to 16 KiB");
    assert_eq!((buf.len(), buf.capacity()), (9000, 16 << 10));
    assert!(matches!(
        buf.append(&[4; 11_001]),
        Err(BufferError::Full { limit: 20_000 })
    ));
    assert_eq!(buf.len(), 9000, "a refused append changes nothing");
    buf.append(&[4; 11_000]).expect("exactly max_len");
    assert_eq!((buf.len(), buf.capacity()), (20_000, 64 << 10));
    let expected: Vec<u8> = [vec![1; 1000], vec![2; 3000], vec![3; 5000], vec![4; 11_000]].concat();
    assert_eq!(buf.peek(), &expected[..]);
    assert!(matches!(
        buf.read_with(|_| unreachable!("a full buffer must not read")),
        Err(BufferError::Full { .. })
    ));
    buf.consume_all();
    assert_eq!(buf.capacity(), 0);
    assert_eq!(pool.stats().in_use_blocks(), 0);
    assert_eq!(
        InputBuffer::with_pool(pool, usize::MAX).max_len(),
        MAX_BLOCK
    );
}

#[test]
fn pool_exhaustion_is_reported_when_bytes_must_be_kept() {
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(100),
        thread_cache_bytes: 0,
    });
    let mut buf = InputBuffer::with_pool(pool, 1000);
    // A read into an empty buffer needs no block: the bytes can be parsed where they landed.
    let mut wire: &[u8] = b"abc";
    let read = buf.read_with(|iovs| std::io::Read::read_vectored(&mut wire, iovs));
    assert!(
        matches!(read, Ok(ReadOutcome::Data { len: 3, .. })),
        "{read:?}"
    );
    assert_eq!(buf.peek(), b"abc");
    // Keeping them needs a block, which the pool cannot give: a typed error, bytes kept.
    let settled = buf.settle();
    assert!(
        matches!(settled, Err(PoolError::Exhausted { .. })),
        "{settled:?}"
    );
    assert_eq!(buf.peek(), b"abc");
    let err: io::Error = BufferError::Pool(settled.expect_err("error")).into();
    assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
    // The next read must settle first, and fails the same way without reading.
    let result = buf.read_with(|_| unreachable!("no block, no read"));
    assert!(
        matches!(result, Err(BufferError::Pool(PoolError::Exhausted { .. }))),
        "{result:?}"
    );
    assert!(matches!(buf.append(b"x"), Err(BufferError::Pool(_))));
    assert_eq!(buf.len(), 3);
    buf.consume_all();
    assert!(!buf.is_unsettled());
}

#[test]
fn buffer_errors_convert_to_io_errors() {
    let full: io::Error = BufferError::Full { limit: 5 }.into();
    assert_eq!(full.kind(), io::ErrorKind::InvalidData);
    assert!(full.to_string().contains('5'), "{full}");
    let long: io::Error = BufferError::LineTooLong { limit: 7 }.into();
    assert_eq!(long.kind(), io::ErrorKind::InvalidData);
    let io: io::Error = BufferError::from(io::Error::from(io::ErrorKind::BrokenPipe)).into();
    assert_eq!(io.kind(), io::ErrorKind::BrokenPipe);
}

#[test]
fn debug_does_not_dump_contents() {
    let buf = with(b"top secret");
    let text = format!("{buf:?}");
    assert!(
        text.contains("len: 10") && !text.contains("secret"),
        "{text}"
    );
}
