//! The reactor layer of duo: one event loop per thread, muduo style (or, in a
//! [`LoopGroup`], more loops than threads).
//!
//! - [`EventLoop`]: waits on epoll and dispatches to [`Channel`]s and their [`Handler`]s,
//!   runs timers (all on one `timerfd`) and functions queued from other threads.
//!   Driven by one thread at a time: the thread that created it (at most one per thread),
//!   or, in a [`LoopGroup`], whichever of the group's threads runs its turn.
//! - [`LoopHandle`]: the `Send + Sync + Clone` way in from other threads
//!   (`queue_in_loop`, timers, `quit`, metrics), woken through an `eventfd`
//!   only when needed.
//! - [`TimingWheel`]: coarse timeouts over many keys (idle connections) in O(1) per refresh.
//! - [`EventLoopThread`], [`EventLoopThreadPool`]: loops on their own threads, for the
//!   main-reactor + sub-reactors model.
//! - [`LoopGroup`]: more loops than threads, any free thread running a ready loop's next
//!   turn, so that a thread that loses its core holds up one loop, not its whole share of
//!   the connections (a pool with [`EventLoopThreadPool::set_loops`] makes one).
//!
//! # Why a handler gets `&mut EventLoop` (the ownership choice)
//!
//! muduo gives every `Channel` callbacks that capture `this`, and C++ lets a callback call
//! back into the loop that is dispatching it. In Rust that is a `&mut` aliasing problem.
//! A common answer is shared ownership with run-time borrow checks (calloop, for one, keeps
//! its event sources in `Rc<RefCell<_>>`). duo's answer is its own, with neither
//! `Rc<RefCell<_>>` nor `unsafe`:
//!
//! - The loop keeps its channels in a slab (`channel_slab.rs`), each slot a channel and its
//!   `Box<dyn Handler>`, addressed by a [`Token`]: slot index plus generation, which is
//!   also the epoll event's data.
//! - For the duration of a callback the channel and its handler are **taken out** of their
//!   slot. The handler then gets `&mut EventLoop` and `&mut Channel` with no aliasing: it
//!   can add and remove channels (itself included), schedule timers, queue work, or quit.
//! - When the handler returns, the loop puts the pair back and applies what it asked for:
//!   one `epoll_ctl(MOD)` if the interest changed, or deregistration, close and drop if
//!   the channel was removed. If another handler removed it while it was out, the slot
//!   remembers, and the same happens on return.
//! - An event for a slot removed earlier in the same batch, or reused since, fails the
//!   generation check and is dropped: muduo's `tie()`/`weak_ptr` guard, for free.
//! - Code that is not a handler (a queued function, a timer) reaches a channel by token:
//!   [`EventLoop::with_channel`], or typed, [`EventLoop::with_handler`] (a downcast through
//!   `Any`). Per-loop state that is no channel's (an idle wheel, say) is a loop-local
//!   value ([`EventLoop::insert_local`], [`EventLoop::with_local`]), taken out the same
//!   way, so code on the loop reaches it without a global or a lock.
//! - Work from other threads is a `Box<dyn FnOnce(&mut EventLoop) + Send>` queued through a
//!   [`LoopHandle`]; [`EventLoop::queue_in_loop`] queues the loop's own work without a lock.
//!   Everything a loop owns is `Send`, so that a [`LoopGroup`] can move a loop between
//!   threads between turns.
//!
//! The rest of the design is documented where it lives: one iteration, timers and
//! threading on [`EventLoop`]; wake-ups and ordering on [`LoopHandle`]; coarse timeouts on
//! [`TimingWheel`]; loop threads and their signal mask in `event_loop_thread.rs`; the
//! timer queue's costs in `timer_queue.rs`.
//!
//! This crate is safe Rust; every system call goes through [`duo_sys`].
// The doc examples are what users copy first: one that warns (an ignored `Result`, an
// unused value) fails its test.
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod channel;
mod channel_slab;
mod error;
mod event_loop;
mod event_loop_thread;
mod event_loop_thread_pool;
pub mod health;
pub mod log_limit;
mod loop_group;
mod loop_handle;
mod panic_scope;
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
pub use health::{HealthConfig, LatencyHistogram};
pub use log_limit::{report_suppressed, LogLimiter, Permit};
pub use loop_group::{LoopGroup, LoopSharing, ParseLoopSharingError};
pub use loop_handle::{loops, LoopHandle, LoopMetrics};
pub use panic_scope::{catch_panic, panic_will_be_caught};
pub use timer_queue::{deadline_after, TimerId, FOREVER};
pub use timing_wheel::TimingWheel;

pub use duo_sys::{Interest, Ready, Signal};
