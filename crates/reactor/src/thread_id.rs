//! A small per-thread integer id, cheaper to compare than `std::thread::ThreadId` (which
//! needs `thread::current()`, an `Arc` clone).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static ID: Cell<u64> = const { Cell::new(0) };
}

/// This thread's id: unique in the process, never 0.
pub(crate) fn current_thread_id() -> u64 {
    ID.with(|id| {
        let v = id.get();
        if v != 0 {
            return v;
        }
        let v = NEXT.fetch_add(1, Ordering::Relaxed);
        id.set(v);
        v
    })
}
