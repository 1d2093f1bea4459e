//! Review round 11 of the buffer area, at the codec level: a length-prefixed frame that
//! arrives in two parts on a server whose buffer pool is capped.
//!
//! When the second part arrived, the input buffer (a 16 KiB block holding the first part)
//! had to grow to a 64 KiB block; the growth holds both blocks at once, which the cap
//! refused although the 64 KiB block alone fits. The bytes already read were dropped and the
//! connection closed as `OutOfMemory`. The frame must be decoded whole instead.

mod util;

use std::io::Write;
use std::sync::{Arc, Mutex};

use duo_buffer::{BufPool, PoolConfig};
use duo_net::codec::LengthHeaderCodec;
use duo_net::TcpServer;
use duo_testkit::wait_until;
use util::{connect, init_log, localhost, TestServer};

/// Room for one 64 KiB block and 8 KiB more, not for a 16 KiB and a 64 KiB block at once.
const CAP: usize = (64 << 10) + (8 << 10);

#[test]
fn a_frame_in_two_parts_on_a_capped_pool_is_decoded_whole() {
    init_log();
    for cached in [false, true] {
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(CAP),
            thread_cache_bytes: if cached { 1 << 20 } else { 0 },
        });
        let codec = LengthHeaderCodec::new(60_000);
        let frames: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let seen = frames.clone();
        let server = TestServer::start(move || {
            TcpServer::builder("round11-capped", localhost())
                .io_threads(1)
                .buffer_pool(pool)
                .on_message(move |_ctx, input| {
                    let _ = codec.decode_all(input, |payload| {
                        seen.lock().unwrap().push(payload.to_vec());
                    });
                })
        });
        let payload: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        codec.encode(&payload, &mut wire).unwrap();
        let mut s = connect(server.addr());
        s.write_all(&wire[..10_000]).unwrap();
        wait_until("the server to read the first part", || {
            server.stats().bytes_in() == 10_000
        });
        s.write_all(&wire[10_000..]).unwrap();
        wait_until("the frame, or a close", || {
            !frames.lock().unwrap().is_empty() || server.stats().closes().out_of_memory > 0
        });
        assert_eq!(
            server.stats().closes().out_of_memory,
            0,
            "cached={cached}: closed for want of memory"
        );
        assert!(frames.lock().unwrap()[0] == payload, "cached={cached}");
        drop(s);
        wait_until("the connection to close", || server.stats().active == 0);
        server.stop();
        assert!(pool.stats().allocated_bytes <= CAP);
    }
}
