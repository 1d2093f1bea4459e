//! # duo-buffer
//!
//! Pooled I/O buffers for duo's connections, in safe Rust.
//!
//! | Type | What it is |
//! |---|---|
//! | [`BufPool`] | blocks in seven size classes (4 KiB … 8 MiB, [`SIZE_CLASSES`]), per-thread caches, shared free lists, an optional memory cap, counters ([`PoolStats`]) |
//! | [`IoBuf`] | one pooled block with consumed / readable / writable regions; dropping it returns the block |
//! | [`InputBuffer`] | received bytes, contiguous for parsing; one `readv` per read with a 64 KiB spill area; holds no block while idle |
//! | [`OutputBuffer`] | bytes to send, a chain of blocks written with one `writev`/`sendmsg`; holds no block while empty |
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::os::fd::AsFd;
//! use duo_buffer::{InputBuffer, OutputBuffer, ReadOutcome};
//!
//! let (a, b) = UnixStream::pair()?;
//! a.set_nonblocking(true)?;
//! b.set_nonblocking(true)?;
//!
//! let mut out = OutputBuffer::new();
//! out.append(b"length-prefixed or line-based, the buffers do not care\n")?;
//! out.send_to(a.as_fd())?;
//! assert!(out.is_empty());
//!
//! let mut input = InputBuffer::new();
//! let ReadOutcome::Data { len, .. } = input.read_from(b.as_fd())? else { panic!("no data") };
//! assert_eq!(len, input.len());
//! let line = input.next_line(1024)?.expect("a whole line");
//! assert!(input.peek()[..line.len].starts_with(b"length-prefixed"));
//! input.consume(line.consumed);
//! assert_eq!(input.capacity(), 0); // idle again: no memory held
//! assert_eq!(input.read_from(b.as_fd())?, ReadOutcome::WouldBlock);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Design
//!
//! - **A pool lives as long as the process.** [`BufPool`] is a `Copy` handle to a leaked
//!   `'static` pool, so an [`IoBuf`] carries one pointer and allocation involves no reference
//!   counting. Most programs use [`BufPool::global`].
//! - **Fast path without locks.** Allocation and free go to a per-thread cache of free blocks
//!   (per pool and class); the shared lists are touched in batches; the system only when no
//!   free block exists. Blocks may be freed on any thread; an exiting thread's cache is
//!   flushed to the shared lists.
//! - **Bounded memory.** [`PoolConfig::memory_cap`] bounds the bytes taken from the system.
//!   Hitting it releases free blocks of other classes first (none if that could not make
//!   room), then fails with [`PoolError::Exhausted`]; nothing aborts. The thread caches
//!   keep at most an eighth of the cap, so free blocks that a quiet thread keeps cannot
//!   starve the others. [`InputBuffer::max_len`] bounds one connection's unparsed input; a
//!   read never takes more from the socket than fits, under the limit or in the pool: a
//!   read the full pool refuses takes nothing, and the bytes wait in the socket.
//! - **Idle connections cost nothing.** Input and output buffers give their blocks back as
//!   soon as they are drained.
//! - **Few copies and system calls.** One `readv` reads whatever the socket holds (block tail
//!   plus spill area) and tells whether the socket was drained
//!   ([`ReadOutcome::Data::drained`](ReadOutcome::Data)), so an edge-triggered caller can
//!   skip the read that would only return `EAGAIN`. Output is written with one vectored call
//!   over up to 64 blocks; [`OutputBuffer::push_buf`] queues an encoded block without a copy.
//! - **Safe Rust only** (`#![forbid(unsafe_code)]`): system calls go through `duo-sys`.
// The doc examples are what users copy first: one that warns (an ignored `Result`, an
// unused value) fails its test.
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod error;
mod input;
mod io_buf;
mod line;
mod output;
mod pool;
mod read_outcome;

pub use error::BufferError;
pub use input::InputBuffer;
pub use io_buf::IoBuf;
pub use line::Line;
pub use output::OutputBuffer;
pub use pool::{BufPool, ClassStats, PoolConfig, PoolError, PoolStats, MAX_BLOCK, SIZE_CLASSES};
pub use read_outcome::ReadOutcome;
