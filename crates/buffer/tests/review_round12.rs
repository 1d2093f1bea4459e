//! Review round 12 of duo-buffer: a read on a capped pool never takes from the socket
//! bytes it may then have nowhere to keep.
//!
//! A read offers the kernel the block's free tail and the 64 KiB spill area; bytes that
//! land in the spill area must then be stored, which may need a bigger block. When the
//! pool refused that growth and the contents did not fit in the spill area either (more
//! than 64 KiB of unconsumed input), the read failed and the bytes the kernel had handed
//! over (and acknowledged to the peer) were dropped: the stream was broken although the
//! pool may have been full only for a moment. Now, on a capped pool, the spill area is
//! offered only as far as the fallback can keep what lands there, a full block grows
//! *before* the read, and a refused growth fails the read with nothing taken: the bytes
//! stay in the socket (TCP flow control slows the peer) and a later read, once memory is
//! free or the caller consumed, takes them.

mod util;

use std::io::{self, IoSliceMut};

use duo_buffer::{BufPool, BufferError, InputBuffer, PoolConfig, ReadOutcome};
use proptest::prelude::*;
use util::{pattern, scatter};

const K: usize = 1 << 10;

/// A source of stream bytes: what a read takes is gone from it (as from a socket).
struct Wire {
    bytes: Vec<u8>,
    at: usize,
}

impl Wire {
    fn read(&mut self, iovs: &mut [IoSliceMut<'_>], most: usize) -> io::Result<usize> {
        let end = self.at.saturating_add(most).min(self.bytes.len());
        if self.at == end {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = scatter(iovs, &self.bytes[self.at..end]);
        self.at += n;
        Ok(n)
    }
}

/// The buffer holds 100 KiB (a 256 KiB block) on a pool capped at 512 KiB; 200 KiB more
/// arrive, 300 KiB in all, which needs a 1 MiB block the cap refuses. Every byte taken
/// from the wire must be in the buffer; what cannot be kept stays on the wire, and
/// follows once the caller consumed.
#[test]
fn a_capped_read_past_the_spill_area_leaves_what_it_cannot_keep_in_the_socket() {
    for cached in [false, true] {
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(512 * K),
            thread_cache_bytes: if cached { 1 << 20 } else { 0 },
        });
        let total = 300 * K;
        let stream = pattern(0, total);
        let mut buf = InputBuffer::with_pool(pool, 1 << 20);
        buf.append(&stream[..100 * K]).expect("100 KiB fit");
        let mut wire = Wire {
            bytes: stream.clone(),
            at: 100 * K,
        };
        let mut refused = false;
        for _ in 0..16 {
            match buf.read_with(|iovs| wire.read(iovs, usize::MAX)) {
                Ok(ReadOutcome::Data { .. }) => {}
                Ok(other) => panic!("cached={cached}: {other:?}"),
                Err(BufferError::Pool(_)) => {
                    refused = true;
                    break;
                }
                Err(e) => panic!("cached={cached}: {e}"),
            }
        }
        assert!(refused, "cached={cached}: 300 KiB cannot fit under 512 KiB");
        assert_eq!(
            buf.len(),
            wire.at,
            "cached={cached}: bytes taken from the wire were dropped"
        );
        assert_eq!(buf.peek(), &stream[..wire.at], "cached={cached}");
        assert!(pool.stats().allocated_bytes <= 512 * K);
        // The caller consumes; the rest of the stream follows.
        let mut seen = buf.len();
        buf.consume(seen);
        while wire.at < total {
            let outcome = buf.read_with(|iovs| wire.read(iovs, usize::MAX));
            assert!(
                matches!(outcome, Ok(ReadOutcome::Data { .. })),
                "cached={cached}: {outcome:?}"
            );
            assert_eq!(buf.peek(), &stream[seen..wire.at], "cached={cached}");
            seen = wire.at;
            buf.consume_all();
        }
    }
}

/// The spill area's fallback at its limits: a tight cap, contents of any length, reads of
/// any size and partial consumption. Whatever the pool refuses, the bytes in the buffer
/// and on the wire are always the whole stream, in order, and the pool stays within its
/// cap.
#[test]
fn capped_reads_never_lose_a_byte() {
    let config = ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        cap_kib in prop::sample::select(vec![68usize, 80, 128, 260, 320, 600, 1100]),
        first in 0usize..200 * K,
        steps in prop::collection::vec((1usize..150 * K, 0usize..100), 1..24),
    )| {
        let cap = cap_kib * K;
        let pool = BufPool::new(PoolConfig { memory_cap: Some(cap), thread_cache_bytes: 0 });
        let total = first + steps.iter().map(|s| s.0).sum::<usize>();
        let stream = pattern(0, total);
        let mut buf = InputBuffer::with_pool(pool, 1 << 20);
        let first = if buf.append(&stream[..first]).is_ok() { first } else { 0 };
        let mut consumed = 0;
        let mut wire = Wire { bytes: stream.clone(), at: first };
        for (most, consume_pct) in steps {
            match buf.read_with(|iovs| wire.read(iovs, most)) {
                Ok(_) | Err(BufferError::Pool(_) | BufferError::Full { .. }) => {}
                Err(e) => prop_assert!(false, "{e}"),
            }
            prop_assert!(
                buf.peek() == &stream[consumed..wire.at],
                "{} bytes buffered, {} taken from the wire", buf.len(), wire.at - consumed
            );
            prop_assert!(pool.stats().allocated_bytes <= cap);
            let n = buf.len() * consume_pct / 100;
            buf.consume(n);
            consumed += n;
            if buf.settle().is_ok() {
                prop_assert!(!buf.is_unsettled());
            }
            prop_assert!(buf.peek() == &stream[consumed..wire.at], "after settling");
        }
    });
}
