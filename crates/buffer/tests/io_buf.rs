//! IoBuf: regions, clamping, compaction, RAII return to the pool.

use duo_buffer::{BufPool, PoolConfig};

fn pool() -> BufPool {
    BufPool::new(PoolConfig {
        memory_cap: None,
        thread_cache_bytes: 0,
    })
}

#[test]
fn append_copies_what_fits() {
    let pool = pool();
    let mut buf = pool.alloc(1).expect("alloc");
    let big = vec![7u8; 5000];
    assert_eq!(buf.append(&big), 4096);
    assert_eq!(buf.len(), 4096);
    assert_eq!(buf.writable_len(), 0);
    assert!(buf.writable().is_empty());
    assert_eq!(buf.append(b"more"), 0);
    assert_eq!(buf.append(b""), 0);
}

#[test]
fn advance_tail_commits_written_spare_and_clamps() {
    let pool = pool();
    let mut buf = pool.alloc(1).expect("alloc");
    buf.writable()[..5].copy_from_slice(b"hello");
    buf.advance_tail(5);
    assert_eq!(buf.data(), b"hello");
    buf.advance_tail(usize::MAX);
    assert_eq!(buf.len(), 4096);
    assert_eq!(&buf.data()[..5], b"hello");
}

#[test]
fn consume_clamps_and_resets_when_drained() {
    let pool = pool();
    let mut buf = pool.alloc(1).expect("alloc");
    buf.append(b"abcdef");
    buf.consume(2);
    assert_eq!((buf.data(), buf.prependable()), (&b"cdef"[..], 2));
    assert_eq!(buf.writable_len(), 4096 - 6);
    buf.consume(100);
    assert!(buf.is_empty());
    assert_eq!((buf.prependable(), buf.writable_len()), (0, 4096));
}

#[test]
fn compact_moves_readable_bytes_to_the_front() {
    let pool = pool();
    let mut buf = pool.alloc(1).expect("alloc");
    buf.append(&[1u8; 4000]);
    buf.append(&[2u8; 96]);
    buf.consume(4000);
    assert_eq!(buf.writable_len(), 0);
    buf.compact();
    assert_eq!(
        (buf.prependable(), buf.len(), buf.writable_len()),
        (0, 96, 4000)
    );
    assert!(buf.data().iter().all(|&b| b == 2));
    buf.compact(); // idempotent
    assert_eq!(buf.len(), 96);
    buf.data_mut()[0] = 9;
    assert_eq!(buf.data()[0], 9);
    buf.clear();
    assert_eq!((buf.len(), buf.writable_len()), (0, 4096));
}

#[test]
fn drop_returns_the_block() {
    let pool = pool();
    let buf = pool.alloc(20_000).expect("alloc");
    assert_eq!(buf.size_class(), 64 << 10);
    assert_eq!(pool.stats().in_use_blocks(), 1);
    drop(buf);
    let stats = pool.stats();
    assert_eq!(stats.in_use_blocks(), 0);
    assert_eq!(stats.class(64 << 10).map(|c| c.free), Some(1));
}

#[test]
fn debug_shows_positions_not_bytes() {
    let pool = pool();
    let mut buf = pool.alloc(1).expect("alloc");
    buf.append(b"secret-password");
    buf.consume(3);
    let text = format!("{buf:?}");
    assert!(
        text.contains("len: 12") && text.contains("head: 3") && text.contains("capacity: 4096"),
        "{text}"
    );
    assert!(!text.contains("secret") && !text.contains("115"), "{text}");
}

#[test]
fn iobuf_is_send_and_pool_is_send_sync_copy() {
    fn send<T: Send>() {}
    fn send_sync_copy<T: Send + Sync + Copy>() {}
    send::<duo_buffer::IoBuf>();
    send::<duo_buffer::InputBuffer>();
    send::<duo_buffer::OutputBuffer>();
    send_sync_copy::<BufPool>();
}
