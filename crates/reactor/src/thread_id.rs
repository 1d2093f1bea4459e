//! A small per-thread integer id, cheaper to compare than `std::thread::ThreadId` (which
//! needs `thread::current()`, an `Arc` clone).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The id the next thread to ask gets.
static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's id; 0 until first asked.
    static THREAD_ID: Cell<u64> = const { Cell::new(0) };
}

/// This thread's id: unique in the process, never 0.
pub(crate) fn current_thread_id() -> u64 {
    THREAD_ID.with(|id| {
        let v = id.get();
        if v != 0 {
            return v;
        }
        let v = NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed);
        id.set(v);
        v
    })
}
