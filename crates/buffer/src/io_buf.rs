//! [`IoBuf`]: one pooled block with a read position and a write position.

use std::fmt;

use crate::pool::class_size;
use crate::BufPool;

/// One block from a [`BufPool`], with the bytes not yet processed between a head and a tail.
///
/// The block is divided as in muduo's `Buffer`:
///
/// ```text
/// +-------------------+------------------+------------------+
/// | prependable bytes |  readable bytes  |  writable bytes  |
/// |    (consumed)     |    (data())      |   (writable())   |
/// +-------------------+------------------+------------------+
/// |                   |                  |                  |
/// 0        <=       head       <=      tail      <=     capacity
/// ```
///
/// Writing goes into the writable region (copy with [`append`](IoBuf::append), or fill
/// [`writable`](IoBuf::writable) and commit with [`advance_tail`](IoBuf::advance_tail));
/// processing moves the head with [`consume`](IoBuf::consume). When everything is consumed
/// head and tail go back to 0, so the whole block is writable again; [`compact`](IoBuf::compact)
/// moves the readable bytes to the front to reclaim the prependable region earlier.
///
/// Dropping an `IoBuf` gives its block back to its pool (RAII: no manual release). Its
/// `Debug` output shows positions, never the bytes.
///
/// ```
/// use duo_buffer::BufPool;
///
/// let mut buf = BufPool::global().alloc(10)?;
/// assert_eq!((buf.len(), buf.capacity()), (0, 4096));
/// let spare = buf.writable();
/// spare[..3].copy_from_slice(b"abc");
/// buf.advance_tail(3);
/// buf.append(b"def");
/// buf.consume(2);
/// assert_eq!(buf.data(), b"cdef");
/// assert_eq!(buf.prependable(), 2);
/// buf.compact();
/// assert_eq!((buf.prependable(), buf.data()), (0, &b"cdef"[..]));
/// # Ok::<(), duo_buffer::PoolError>(())
/// ```
pub struct IoBuf {
    /// The pooled block; its length is the class size.
    block: Box<[u8]>,
    /// Start of the readable bytes.
    head: usize,
    /// End of the readable bytes, start of the writable ones.
    tail: usize,
    /// Index of the block's size class, to return it to the right list.
    class: usize,
    pool: BufPool,
}

impl IoBuf {
    /// Wraps a block just taken from `pool` (class index `class`).
    pub(crate) fn from_block(pool: BufPool, class: usize, block: Box<[u8]>) -> IoBuf {
        debug_assert_eq!(block.len(), class_size(class));
        IoBuf {
            block,
            head: 0,
            tail: 0,
            class,
            pool,
        }
    }

    /// The readable bytes (written, not yet consumed).
    pub fn data(&self) -> &[u8] {
        self.block.get(self.head..self.tail).unwrap_or_default()
    }

    /// The readable bytes, mutably (to decode in place).
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.block.get_mut(self.head..self.tail).unwrap_or_default()
    }

    /// Number of readable bytes.
    pub fn len(&self) -> usize {
        self.tail - self.head
    }

    /// Whether there are no readable bytes.
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Size of the block in bytes (its size class).
    pub fn capacity(&self) -> usize {
        self.block.len()
    }

    /// The size class this block belongs to (equal to [`capacity`](IoBuf::capacity)).
    pub fn size_class(&self) -> usize {
        class_size(self.class)
    }

    /// The pool the block returns to.
    pub fn pool(&self) -> BufPool {
        self.pool
    }

    /// Bytes consumed at the front of the block and not yet reclaimed by
    /// [`compact`](IoBuf::compact).
    pub fn prependable(&self) -> usize {
        self.head
    }

    /// Number of writable bytes after the tail.
    pub fn writable_len(&self) -> usize {
        self.block.len() - self.tail
    }

    /// The writable bytes after the tail. After writing the first `n` of them, commit them
    /// with [`advance_tail(n)`](IoBuf::advance_tail). Their content is unspecified (old data
    /// of the block), never uninitialised.
    pub fn writable(&mut self) -> &mut [u8] {
        self.block.get_mut(self.tail..).unwrap_or_default()
    }

    /// Makes the first `n` writable bytes readable. Clamped to
    /// [`writable_len`](IoBuf::writable_len).
    pub fn advance_tail(&mut self, n: usize) {
        self.tail += n.min(self.writable_len());
    }

    /// Copies as much of `src` as fits into the writable region; returns how many bytes.
    pub fn append(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.writable_len());
        if let (Some(dst), Some(src)) = (self.block.get_mut(self.tail..self.tail + n), src.get(..n))
        {
            dst.copy_from_slice(src);
            self.tail += n;
            n
        } else {
            0
        }
    }

    /// Marks the first `n` readable bytes processed (clamped to [`len`](IoBuf::len)). When
    /// nothing readable is left, head and tail go back to the start of the block.
    pub fn consume(&mut self, n: usize) {
        self.head += n.min(self.len());
        if self.head == self.tail {
            self.clear();
        }
    }

    /// Moves the readable bytes to the start of the block, so the consumed region becomes
    /// writable.
    pub fn compact(&mut self) {
        if self.head > 0 {
            self.block.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
    }

    /// Discards every readable byte; the whole block becomes writable.
    pub fn clear(&mut self) {
        self.head = 0;
        self.tail = 0;
    }

    /// Keeps only the first `len` readable bytes (no-op if `len >= self.len()`).
    pub(crate) fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.tail = self.head + len;
        }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        let block = std::mem::take(&mut self.block);
        self.pool.give_back(self.class, block);
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("head", &self.head)
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}
