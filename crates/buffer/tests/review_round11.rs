//! Review round 11 of duo-buffer: a read into an input buffer that already holds bytes, on
//! a capped pool, that needs a bigger block.
//!
//! Growing moves the contents into a block of a bigger class: for the copy, the old block
//! and the new one are held at once. On a pool whose cap has room for the new block alone
//! (but not for both), the growth after a read failed, and the bytes the read had already
//! taken from the socket (in the spill area) were dropped: the stream was broken and the
//! connection closed for want of memory, although the contents fit in the pool. The read
//! must keep every byte it took (and leave the pool within its cap): when the growth is
//! refused and the contents fit in the 64 KiB spill area, they stay there unsettled, and
//! settling needs one block only. `append` to unsettled bytes likewise took a block for
//! them and then a bigger one; it now takes the one block the result needs.

mod util;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use duo_buffer::{BufPool, InputBuffer, PoolConfig, ReadOutcome};
use util::{pattern, scatter};

const K16: usize = 16 << 10;
const K64: usize = 64 << 10;
/// Room for one 64 KiB block and 8 KiB more, not for 16 KiB + 64 KiB.
const CAP: usize = K64 + (8 << 10);

/// A pool with room for one 64 KiB block and a little more, not for 16 KiB + 64 KiB.
fn tight_pool(cached: bool) -> BufPool {
    BufPool::new(PoolConfig {
        memory_cap: Some(CAP),
        thread_cache_bytes: if cached { 1 << 20 } else { 0 },
    })
}

/// The buffer holds 10 000 bytes (a 16 KiB block); a read brings 30 000 more: 40 000 fit
/// in one 64 KiB block, which the pool has room for once the 16 KiB block is given back.
#[test]
fn a_read_that_needs_growth_on_a_tight_capped_pool_keeps_every_byte() {
    for cached in [false, true] {
        let pool = tight_pool(cached);
        let mut buf = InputBuffer::with_pool(pool, 1 << 20);
        let first = pattern(0, 10_000);
        buf.append(&first).expect("10 000 bytes fit");
        assert_eq!(buf.capacity(), K16);
        let second = pattern(10_000, 30_000);
        let outcome = buf.read_with(|iovs| Ok(scatter(iovs, &second)));
        assert!(
            matches!(outcome, Ok(ReadOutcome::Data { len: 30_000, .. })),
            "cached={cached}: {outcome:?}"
        );
        assert_eq!(buf.peek(), &pattern(0, 40_000)[..], "cached={cached}");
        buf.settle()
            .expect("one 64 KiB block fits once the 16 KiB one is back");
        assert_eq!(buf.peek(), &pattern(0, 40_000)[..], "cached={cached}");
        let stats = pool.stats();
        assert!(stats.allocated_bytes <= CAP, "{stats:?}");
        assert_eq!(stats.in_use_blocks(), 1);
        buf.consume_all();
        assert_eq!(pool.stats().in_use_blocks(), 0);
    }
}

/// The same over a real socket: the bytes `read_from` took from the kernel are all there,
/// and the rest of the stream follows them.
#[test]
fn a_socket_read_that_needs_growth_on_a_tight_capped_pool_keeps_the_stream_whole() {
    let pool = tight_pool(true);
    let (mut tx, rx) = UnixStream::pair().expect("socketpair");
    rx.set_nonblocking(true).expect("nonblocking");
    let total = 50_000;
    let wire = pattern(0, total);
    let mut buf = InputBuffer::with_pool(pool, 1 << 20);
    tx.write_all(&wire[..10_000]).expect("write");
    // The first read lands in the spill area; settling takes a 16 KiB block.
    let first = buf.read_from(rx.as_fd()).expect("first read");
    assert_eq!(
        first,
        ReadOutcome::Data {
            len: 10_000,
            drained: true
        }
    );
    buf.settle().expect("a 16 KiB block fits");
    assert_eq!(buf.capacity(), K16);
    tx.write_all(&wire[10_000..]).expect("write");
    drop(tx);
    let deadline = std::time::Instant::now() + util::DEADLINE;
    loop {
        assert!(std::time::Instant::now() < deadline, "stream never ended");
        match buf.read_from(rx.as_fd()) {
            Ok(ReadOutcome::Data { .. }) => buf.settle().expect("settle"),
            Ok(ReadOutcome::Eof) => break,
            Ok(ReadOutcome::WouldBlock) => std::thread::yield_now(),
            Err(e) => panic!("read failed with {} of {total} bytes held: {e}", buf.len()),
        }
    }
    assert_eq!(buf.len(), total);
    assert!(buf.peek() == &wire[..], "the stream differs");
    let mut rest = Vec::new();
    let _ = (&rx).read_to_end(&mut rest);
    assert!(rest.is_empty());
}

/// `append` to unsettled bytes settled them into a block of their own first and then grew
/// it: two blocks at once again, refused by the same tight pool although the result fits
/// in one 64 KiB block.
#[test]
fn an_append_to_unsettled_bytes_on_a_tight_capped_pool_takes_one_block() {
    for cached in [false, true] {
        let pool = tight_pool(cached);
        let mut buf = InputBuffer::with_pool(pool, 1 << 20);
        let first = pattern(0, 10_000);
        buf.read_with(|iovs| Ok(scatter(iovs, &first)))
            .expect("read into the spill area");
        assert!(buf.is_unsettled());
        buf.append(&pattern(10_000, 30_000))
            .unwrap_or_else(|e| panic!("cached={cached}: {e}"));
        assert!(!buf.is_unsettled());
        assert_eq!(buf.peek(), &pattern(0, 40_000)[..], "cached={cached}");
        assert_eq!(buf.capacity(), K64);
        assert!(pool.stats().allocated_bytes <= CAP);
        buf.consume_all();
        assert_eq!(pool.stats().in_use_blocks(), 0);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

    /// Held bytes plus a read of at most 64 KiB in all, on a pool used by this thread
    /// alone: the read keeps every byte whatever the cap, and settling succeeds whenever
    /// the one block the contents need fits in the cap.
    #[test]
    fn a_read_of_up_to_64k_in_all_never_loses_bytes_to_the_cap(
        cap_kib in 8usize..400,
        cached in proptest::prelude::any::<bool>(),
        held in 1usize..K64,
        read_frac in 0.0f64..1.0,
    ) {
        let cap = cap_kib << 10;
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(cap),
            thread_cache_bytes: if cached { 1 << 20 } else { 0 },
        });
        let mut buf = InputBuffer::with_pool(pool, 1 << 20);
        if buf.append(&pattern(0, held)).is_err() {
            // The held bytes alone do not fit: nothing to check.
            proptest::prop_assert!(BufPool::class_size_for(held).unwrap() > cap);
            return Ok(());
        }
        let n = 1 + ((K64 - held) as f64 * read_frac) as usize;
        let n = n.min(K64 - held);
        proptest::prop_assume!(n > 0);
        let bytes = pattern(held, n);
        let outcome = buf.read_with(|iovs| Ok(scatter(iovs, &bytes)));
        proptest::prop_assert!(
            matches!(outcome, Ok(ReadOutcome::Data { len, .. }) if len == n),
            "{:?}", outcome
        );
        proptest::prop_assert!(buf.peek() == &pattern(0, held + n)[..]);
        let need = BufPool::class_size_for(held + n).unwrap();
        match buf.settle() {
            Ok(()) => proptest::prop_assert!(buf.peek() == &pattern(0, held + n)[..]),
            Err(e) => proptest::prop_assert!(need > cap, "{}", e),
        }
        proptest::prop_assert!(pool.stats().allocated_bytes <= cap);
    }
}
