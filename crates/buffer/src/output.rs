//! [`OutputBuffer`]: bytes queued for sending, as a chain of pooled blocks.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::{BufPool, IoBuf, PoolError, MAX_BLOCK};

/// Most blocks passed to one vectored write.
const MAX_IOVS: usize = if duo_sys::IOV_MAX < 64 {
    duo_sys::IOV_MAX
} else {
    64
};

/// A chain of at most this many empty slots is kept after draining; a longer one is freed.
const KEEP_SLOTS: usize = 16;

/// Bytes queued for sending: a chain of pooled blocks written with one `writev` (or
/// `sendmsg`) per call and released as soon as they are written.
///
/// [`append`](OutputBuffer::append) copies into the free tail of the last block, then into new
/// blocks sized to the rest (the smallest class that fits, at most [`MAX_BLOCK`] each);
/// [`push_buf`](OutputBuffer::push_buf) adds a filled [`IoBuf`] without copying, and
/// [`push_shared`](OutputBuffer::push_shared) queues a reference to an `Arc<[u8]>` (one
/// message sent to many connections is then held once, not once per connection). An empty
/// buffer holds no blocks. [`len`](OutputBuffer::len) is what a high-water mark compares with.
///
/// ```
/// use std::io::IoSlice;
/// use duo_buffer::{BufPool, OutputBuffer};
///
/// let mut out = OutputBuffer::new();
/// out.append(b"hello, ")?;
/// let mut frame = BufPool::global().alloc(5)?;
/// frame.append(b"world");
/// out.push_buf(frame); // zero-copy
/// assert_eq!((out.len(), out.block_count()), (12, 2));
///
/// // A simulated partial write (`write_to(fd)`/`send_to(fd)` do the same with the kernel).
/// let mut wire = Vec::new();
/// let n = out.write_with(|iovs: &[IoSlice<'_>]| {
///     wire.extend_from_slice(&iovs[0][..4]);
///     Ok(4)
/// })?;
/// assert_eq!((n, out.len()), (4, 8));
/// out.write_with(|iovs| {
///     iovs.iter().for_each(|iov| wire.extend_from_slice(iov));
///     Ok(iovs.iter().map(|iov| iov.len()).sum())
/// })?;
/// assert_eq!(wire, b"hello, world");
/// assert_eq!((out.len(), out.block_count()), (0, 0)); // drained: blocks released
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct OutputBuffer {
    /// Non-empty blocks, oldest first.
    blocks: VecDeque<Chunk>,
    /// Sum of the blocks' lengths.
    len: usize,
    pool: BufPool,
}

/// One queued piece: a pooled block, or the unwritten tail of a shared message.
enum Chunk {
    Pooled(IoBuf),
    Shared { data: Arc<[u8]>, start: usize },
}

impl Chunk {
    fn data(&self) -> &[u8] {
        match self {
            Chunk::Pooled(b) => b.data(),
            Chunk::Shared { data, start } => data.get(*start..).unwrap_or_default(),
        }
    }
    fn len(&self) -> usize {
        self.data().len()
    }
    /// Drops the first `n` bytes (`n` < `len`).
    fn consume(&mut self, n: usize) {
        match self {
            Chunk::Pooled(b) => b.consume(n),
            Chunk::Shared { start, .. } => *start += n,
        }
    }
}

impl Default for OutputBuffer {
    fn default() -> OutputBuffer {
        OutputBuffer::new()
    }
}

impl fmt::Debug for OutputBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputBuffer")
            .field("len", &self.len)
            .field("blocks", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

impl OutputBuffer {
    /// An empty buffer on the [global pool](BufPool::global).
    pub fn new() -> OutputBuffer {
        OutputBuffer::with_pool(BufPool::global())
    }

    /// An empty buffer taking its blocks from `pool`.
    pub fn with_pool(pool: BufPool) -> OutputBuffer {
        OutputBuffer {
            blocks: VecDeque::new(),
            len: 0,
            pool,
        }
    }

    /// The pool new blocks come from.
    pub fn pool(&self) -> BufPool {
        self.pool
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of blocks held.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// The queued bytes, block by block, oldest first.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.blocks.iter().map(Chunk::data)
    }

    /// Copies `data` to the end of the queue: into the free tail of the last block, then into
    /// new blocks sized to the rest.
    ///
    /// # Errors
    ///
    /// [`PoolError::Exhausted`] if the pool cannot provide a block; nothing is appended then.
    pub fn append(&mut self, data: &[u8]) -> Result<(), PoolError> {
        if data.is_empty() {
            return Ok(());
        }
        let old_count = self.blocks.len();
        let old_tail_len = self.blocks.back().map_or(0, Chunk::len);
        let mut rest = data;
        if let Some(Chunk::Pooled(tail)) = self.blocks.back_mut() {
            let n = tail.append(rest);
            rest = rest.get(n..).unwrap_or_default();
        }
        while !rest.is_empty() {
            match self.pool.alloc(rest.len().min(MAX_BLOCK)) {
                Ok(mut block) => {
                    let n = block.append(rest);
                    debug_assert!(n > 0, "a fresh block accepts at least 4 KiB");
                    rest = rest.get(n..).unwrap_or_default();
                    self.blocks.push_back(Chunk::Pooled(block));
                }
                Err(e) => {
                    // All or nothing: drop the new blocks, cut the old tail back.
                    self.blocks.truncate(old_count);
                    if let Some(Chunk::Pooled(tail)) = self.blocks.back_mut() {
                        tail.truncate(old_tail_len);
                    }
                    return Err(e);
                }
            }
        }
        self.len += data.len();
        Ok(())
    }

    /// Queues a filled block without copying (an empty one is simply dropped). Later
    /// [`append`](OutputBuffer::append)s may fill its free tail.
    pub fn push_buf(&mut self, buf: IoBuf) {
        if !buf.is_empty() {
            self.len += buf.len();
            self.blocks.push_back(Chunk::Pooled(buf));
        }
    }

    /// Queues `data[start..]` without copying: the buffer keeps a reference to `data` until
    /// those bytes are written. For one message sent to many connections (a broadcast),
    /// every connection's buffer shares the one allocation. Nothing is queued if `start`
    /// is at or past the end.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use duo_buffer::OutputBuffer;
    ///
    /// let msg: Arc<[u8]> = Arc::from(&b"to everyone"[..]);
    /// let (mut a, mut b) = (OutputBuffer::new(), OutputBuffer::new());
    /// a.push_shared(msg.clone(), 0);
    /// b.push_shared(msg.clone(), 3); // 3 bytes already went out directly
    /// assert_eq!((a.len(), b.len()), (11, 8));
    /// assert_eq!(Arc::strong_count(&msg), 3); // held, not copied
    /// a.clear();
    /// b.clear();
    /// assert_eq!(Arc::strong_count(&msg), 1);
    /// ```
    pub fn push_shared(&mut self, data: Arc<[u8]>, start: usize) {
        if start < data.len() {
            self.len += data.len() - start;
            self.blocks.push_back(Chunk::Shared { data, start });
        }
    }

    /// Drops the first `n` queued bytes (clamped to [`len`](OutputBuffer::len)), releasing
    /// the blocks that become empty.
    pub fn consume(&mut self, n: usize) {
        let mut n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.blocks.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.blocks.pop_front();
            } else {
                front.consume(n);
                n = 0;
            }
        }
        if self.blocks.is_empty() && self.blocks.capacity() > KEEP_SLOTS {
            self.blocks = VecDeque::new();
        }
    }

    /// Drops everything queued and releases every block.
    pub fn clear(&mut self) {
        self.consume(self.len);
    }

    /// Makes one vectored write of the queued bytes with `write` (over at most 64 blocks),
    /// drops what it reports written and returns that count. An empty buffer returns `Ok(0)`
    /// without calling `write`.
    ///
    /// # Errors
    ///
    /// Whatever `write` returns, `WouldBlock` included; nothing is dropped then.
    pub fn write_with<F>(&mut self, write: F) -> io::Result<usize>
    where
        F: FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
    {
        if self.blocks.is_empty() {
            return Ok(0);
        }
        let mut iovs = [IoSlice::new(&[]); MAX_IOVS];
        let mut count = 0;
        let mut offered = 0;
        for (slot, block) in iovs.iter_mut().zip(&self.blocks) {
            *slot = IoSlice::new(block.data());
            count += 1;
            offered += block.len();
        }
        let written = write(iovs.get(..count).unwrap_or_default())?.min(offered);
        self.consume(written);
        Ok(written)
    }

    /// One `writev` to `fd`. On a socket prefer [`send_to`](OutputBuffer::send_to), which
    /// cannot raise `SIGPIPE`.
    ///
    /// # Errors
    ///
    /// The system call's error; `WouldBlock` when the descriptor's buffer is full.
    pub fn write_to(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.write_with(|iovs| duo_sys::writev(fd, iovs))
    }

    /// One `sendmsg(MSG_NOSIGNAL)` to the socket `fd`: a closed peer gives `EPIPE`, not
    /// `SIGPIPE`.
    ///
    /// # Errors
    ///
    /// The system call's error; `WouldBlock` when the socket's send buffer is full.
    pub fn send_to(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.write_with(|iovs| duo_sys::send_vectored(fd, iovs))
    }
}
