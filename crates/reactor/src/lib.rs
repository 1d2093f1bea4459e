//! The reactor layer of duo: one event loop per thread, muduo style.
//!
//! - [`EventLoop`]: waits on epoll and dispatches to [`Channel`]s and their [`Handler`]s,
//!   runs timers (all on one `timerfd`) and functions queued from other threads.
//!   Confined to the thread that created it; at most one per thread.
//! - [`LoopHandle`]: the `Send + Sync + Clone` way in from other threads
//!   (`queue_in_loop`, timers, `quit`, metrics), woken through an `eventfd`
//!   only when needed.
//! - [`TimingWheel`]: coarse timeouts over many keys (idle connections) in O(1) per refresh.
//! - [`EventLoopThread`], [`EventLoopThreadPool`]: loops on their own threads, for the
//!   main-reactor + sub-reactors model.
//!
//! This crate is safe Rust; every system call goes through [`duo_sys`].
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod channel;
mod channel_slab;
mod error;
mod event_loop;
mod event_loop_thread;
mod event_loop_thread_pool;
mod loop_handle;
mod poller;
mod signals;
mod thread_id;
mod timer_queue;
mod timing_wheel;

pub use channel::{Channel, FnHandler, Handler, Token};
pub use error::{InsertError, LoopClosed, LoopError};
pub use event_loop::EventLoop;
pub use event_loop_thread::{EventLoopThread, ThreadInit};
pub use event_loop_thread_pool::EventLoopThreadPool;
pub use loop_handle::{LoopHandle, LoopMetrics};
pub use timer_queue::TimerId;
pub use timing_wheel::TimingWheel;

pub use duo_sys::{Interest, Ready, Signal};
