//! [`InputBuffer`]: the bytes received on a connection and not yet parsed.

use std::cell::Cell;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::os::fd::BorrowedFd;

use crate::pool::SIZE_CLASSES;
use crate::{BufPool, BufferError, IoBuf, Line, PoolError, ReadOutcome, MAX_BLOCK};

/// Size of the spill area offered to `readv` after the block's free tail (muduo's 64 KiB
/// `extrabuf`).
const SPILL_LEN: usize = 64 << 10;

/// The spill area: a fixed-size array, so that a buffer holding one needs a thin pointer.
type SpillArea = [u8; SPILL_LEN];

thread_local! {
    /// This thread's spill area, taken for the duration of one read and put back.
    static SPILL: Cell<Option<Box<SpillArea>>> = const { Cell::new(None) };
}

/// Takes this thread's spill area (a fresh one if it is in use or the thread is exiting).
fn take_spill() -> Box<SpillArea> {
    SPILL
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_else(|| Box::new([0u8; SPILL_LEN]))
}

/// Puts the spill area back for the next read on this thread.
fn put_spill(spill: Box<SpillArea>) {
    let _ = SPILL.try_with(move |cell| cell.set(Some(spill)));
}

/// The bytes received on a connection and not yet parsed, in one pooled block.
///
/// An idle input buffer holds **no block**: one is taken from the pool when bytes arrive and
/// given back as soon as everything has been consumed, so an idle connection costs no buffer
/// memory. The contents are always contiguous ([`peek`](InputBuffer::peek)), so a parser
/// works on one slice in place; [`consume`](InputBuffer::consume) removes what it parsed
/// (muduo's `retrieve`).
///
/// # Reading
///
/// [`read_from`](InputBuffer::read_from) makes exactly one `readv` system call into the
/// block's free tail followed by a 64 KiB spill area (muduo's trick): one call reads what the
/// socket holds even when the block is small, and the block grows (to a bigger size class, one
/// copy) only when bytes actually landed in the spill area. An empty buffer reads into the
/// spill area alone and is parsed from there: if the parser consumes everything, no block
/// is taken and no byte is copied; what is left moves into a block on
/// [`settle`](InputBuffer::settle) (or the next read). The amount offered to the kernel
/// never exceeds what the buffer may still hold ([`max_len`](InputBuffer::max_len)), so a read
/// never loses bytes to the limit; a full buffer refuses to read
/// ([`BufferError::Full`]) and the bytes stay in the socket.
///
/// The spill area is a per-thread array reused by every read rather than a fresh stack array:
/// safe Rust cannot leave it uninitialised, and zeroing 64 KiB on every read would cost about
/// a microsecond.
///
/// ```
/// use std::io::{IoSliceMut, Read};
/// use duo_buffer::{InputBuffer, ReadOutcome};
///
/// let mut input = InputBuffer::new();
/// assert_eq!(input.capacity(), 0); // idle: no block
///
/// // A simulated read (`read_from(fd)` does the same with `readv`).
/// let mut wire: &[u8] = b"PING 1\r\nPIN";
/// let outcome = input.read_with(|iovs: &mut [IoSliceMut<'_>]| wire.read_vectored(iovs))?;
/// assert_eq!(outcome, ReadOutcome::Data { len: 11, drained: true });
///
/// let line = input.next_line(64)?.expect("one complete line");
/// assert_eq!(&input.peek()[..line.len], b"PING 1");
/// input.consume(line.consumed);
/// assert_eq!(input.next_line(64)?, None); // "PIN" is incomplete
///
/// input.consume_all();
/// assert_eq!(input.capacity(), 0); // drained: the block went back to the pool
/// # Ok::<(), duo_buffer::BufferError>(())
/// ```
pub struct InputBuffer {
    /// The block, present only while there are unconsumed bytes (or during a read).
    buf: Option<IoBuf>,
    /// Bytes a read into an empty buffer left in this thread's spill area, not yet
    /// [settled](InputBuffer::settle) into a block. Never present together with `buf`.
    spilled: Option<Spilled>,
    pool: BufPool,
    max_len: usize,
}

/// The spill area, borrowed from the thread, holding `area[start..end]`. Kept small (16
/// bytes): every connection's input buffer has room for one.
struct Spilled {
    area: Box<SpillArea>,
    start: u32,
    end: u32,
}

impl Spilled {
    fn data(&self) -> &[u8] {
        self.area
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Drops up to `n` bytes from the front.
    fn consume(&mut self, n: usize) {
        let n = n.min(self.len()) as u32; // at most SPILL_LEN
        self.start += n;
    }
}

impl Drop for InputBuffer {
    fn drop(&mut self) {
        if let Some(s) = self.spilled.take() {
            put_spill(s.area);
        }
    }
}

impl Default for InputBuffer {
    fn default() -> InputBuffer {
        InputBuffer::new()
    }
}

impl fmt::Debug for InputBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputBuffer")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("max_len", &self.max_len)
            .field("spilled", &self.spilled.is_some())
            .finish_non_exhaustive()
    }
}

impl InputBuffer {
    /// The default maximum length: the largest block, 8 MiB.
    pub const DEFAULT_MAX_LEN: usize = MAX_BLOCK;

    /// An empty buffer on the [global pool](BufPool::global) holding at most 8 MiB.
    pub fn new() -> InputBuffer {
        InputBuffer::with_pool(BufPool::global(), InputBuffer::DEFAULT_MAX_LEN)
    }

    /// An empty buffer taking its block from `pool` and holding at most `max_len` bytes
    /// (clamped to [`MAX_BLOCK`], since the contents live in one block).
    pub fn with_pool(pool: BufPool, max_len: usize) -> InputBuffer {
        InputBuffer {
            buf: None,
            spilled: None,
            pool,
            max_len: max_len.min(MAX_BLOCK),
        }
    }

    /// The most bytes the buffer holds; a read into a full buffer fails with
    /// [`BufferError::Full`].
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The pool the blocks come from.
    pub fn pool(&self) -> BufPool {
        self.pool
    }

    /// The unconsumed bytes, contiguous.
    pub fn peek(&self) -> &[u8] {
        match &self.spilled {
            Some(s) => s.data(),
            None => self.buf.as_ref().map(IoBuf::data).unwrap_or_default(),
        }
    }

    /// Number of unconsumed bytes.
    pub fn len(&self) -> usize {
        match &self.spilled {
            Some(s) => s.len(),
            None => self.buf.as_ref().map_or(0, IoBuf::len),
        }
    }

    /// Whether there is nothing to consume.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of buffer memory held: the block's size, or the thread's 64 KiB spill area
    /// while unsettled bytes sit there; 0 when idle.
    pub fn capacity(&self) -> usize {
        match &self.spilled {
            Some(s) => s.area.len(),
            None => self.buf.as_ref().map_or(0, IoBuf::capacity),
        }
    }

    /// Removes the first `n` bytes (clamped to [`len`](InputBuffer::len)). When nothing is
    /// left, the block goes back to the pool (or the spill area to its thread).
    pub fn consume(&mut self, n: usize) {
        if let Some(s) = &mut self.spilled {
            s.consume(n);
            if s.len() == 0 {
                self.release_spill();
            }
            return;
        }
        if let Some(buf) = &mut self.buf {
            buf.consume(n);
        }
        self.release_if_empty();
    }

    /// Removes every byte and gives the block back to the pool.
    pub fn consume_all(&mut self) {
        self.buf = None;
        self.release_spill();
    }

    /// Moves bytes that a read left in the thread's spill area into a pooled block, and
    /// gives the spill area back to the thread.
    ///
    /// A read into an empty buffer lands in the spill area only, and the bytes are parsed
    /// from there: when the parser consumes everything (the usual case: whole requests),
    /// no block is taken and nothing is copied. What it leaves must move into a block
    /// before this thread's next read into another buffer; a connection calls `settle`
    /// after each message callback. The other methods work in either state, and a read
    /// settles first by itself. Idempotent.
    ///
    /// # Errors
    ///
    /// [`PoolError`] if no block could be had; the bytes stay where they are.
    pub fn settle(&mut self) -> Result<(), PoolError> {
        let Some(s) = &self.spilled else {
            return Ok(());
        };
        let data = s.data();
        let mut block = self.pool.alloc(data.len())?;
        block.append(data);
        self.buf = Some(block);
        self.release_spill();
        Ok(())
    }

    /// Whether bytes are waiting in the thread's spill area (see
    /// [`settle`](InputBuffer::settle)).
    pub fn is_unsettled(&self) -> bool {
        self.spilled.is_some()
    }

    fn release_spill(&mut self) {
        if let Some(s) = self.spilled.take() {
            put_spill(s.area);
        }
    }

    /// Position of the first occurrence of `needle` in the unconsumed bytes (`Some(0)` for
    /// an empty needle).
    pub fn find(&self, needle: &[u8]) -> Option<usize> {
        let hay = self.peek();
        match needle {
            [] => Some(0),
            [byte] => hay.iter().position(|b| b == byte),
            _ => hay.windows(needle.len()).position(|w| w == needle),
        }
    }

    /// The first 4 bytes as a big-endian `u32`, if there are 4.
    pub fn peek_u32_be(&self) -> Option<u32> {
        let bytes = self.peek().get(..4)?;
        <[u8; 4]>::try_from(bytes).ok().map(u32::from_be_bytes)
    }

    /// The first 8 bytes as a big-endian `u64`, if there are 8.
    pub fn peek_u64_be(&self) -> Option<u64> {
        let bytes = self.peek().get(..8)?;
        <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
    }

    /// Finds the line at the front, terminated by `\n` or `\r\n`. Does not consume it.
    ///
    /// Returns `Ok(None)` while the line is incomplete.
    ///
    /// # Errors
    ///
    /// [`BufferError::LineTooLong`] as soon as the line (without terminator) is known to be
    /// longer than `max`, whether or not its terminator has arrived.
    pub fn next_line(&self, max: usize) -> Result<Option<Line>, BufferError> {
        let data = self.peek();
        let too_long = BufferError::LineTooLong { limit: max };
        match data.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let cr = end.checked_sub(1).and_then(|i| data.get(i)) == Some(&b'\r');
                let len = end - usize::from(cr);
                if len > max {
                    return Err(too_long);
                }
                Ok(Some(Line {
                    len,
                    consumed: end + 1,
                }))
            }
            None => {
                // A trailing '\r' may be the first half of the terminator.
                let pending = data.len() - usize::from(data.last() == Some(&b'\r'));
                if pending > max {
                    return Err(too_long);
                }
                Ok(None)
            }
        }
    }

    /// Appends bytes (for codecs and tests), moving to a bigger block if needed.
    ///
    /// # Errors
    ///
    /// [`BufferError::Full`] if the result would exceed [`max_len`](InputBuffer::max_len)
    /// (nothing is appended); [`BufferError::Pool`] if no block could be had.
    pub fn append(&mut self, data: &[u8]) -> Result<(), BufferError> {
        if data.len() > self.max_len - self.len() {
            return Err(BufferError::Full {
                limit: self.max_len,
            });
        }
        self.store(data)?;
        Ok(())
    }

    /// Reads once from `fd` (one `readv`) and appends what arrived.
    ///
    /// # Errors
    ///
    /// [`BufferError::Full`] without reading if the buffer already holds
    /// [`max_len`](InputBuffer::max_len) bytes; [`BufferError::Io`] for a failed read;
    /// [`BufferError::Pool`] if the pool has no block. Growing after the read holds the old
    /// block and the bigger one at once; if the pool refuses that, the contents and the new
    /// bytes are kept unsettled in the spill area instead (64 KiB), and the read succeeds
    /// ([`settle`](InputBuffer::settle) then needs one block only). On a pool with a
    /// [memory cap](crate::PoolConfig::memory_cap), the spill area is offered only as far
    /// as that fallback can keep what lands there: with more than 64 KiB unconsumed, the
    /// read goes into the block's free tail alone, and a full block grows *before* the
    /// read. A `Pool` error therefore never loses a byte: nothing was read, the bytes
    /// wait in the socket (TCP flow control slows the peer), and a later read, once the
    /// pool has room or the caller consumed, takes them. (Without a cap the pool never
    /// refuses a block.)
    pub fn read_from(&mut self, fd: BorrowedFd<'_>) -> Result<ReadOutcome, BufferError> {
        self.read_with(|iovs| duo_sys::readv(fd, iovs))
    }

    /// [`read_from`](InputBuffer::read_from) for a socket: one `recv` when the read goes
    /// into one slice (an idle connection's read into the spill area, the common case),
    /// which costs the kernel less than `readv`; one `readv` otherwise.
    ///
    /// # Errors
    ///
    /// As [`read_from`](InputBuffer::read_from); `ENOTSOCK` if `fd` is not a socket.
    pub fn recv_from(&mut self, fd: BorrowedFd<'_>) -> Result<ReadOutcome, BufferError> {
        self.read_with(|iovs| duo_sys::recv_vectored(fd, iovs))
    }

    /// The core of [`read_from`](InputBuffer::read_from) with the system call supplied by the
    /// caller: `read` is called once with the free tail of the block and the spill area (one
    /// or two slices, at most [`max_len`](InputBuffer::max_len) bytes in total) and returns how
    /// many bytes it wrote, front to back, like `readv`. `Ok(0)` means end of stream; an error
    /// of kind `WouldBlock` gives [`ReadOutcome::WouldBlock`].
    ///
    /// # Errors
    ///
    /// As [`read_from`](InputBuffer::read_from).
    pub fn read_with<F>(&mut self, read: F) -> Result<ReadOutcome, BufferError>
    where
        F: FnOnce(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
    {
        let len = self.len();
        if len >= self.max_len {
            return Err(BufferError::Full {
                limit: self.max_len,
            });
        }
        let budget = self.max_len - len;
        if self.spilled.is_some() {
            self.settle()?;
        } else if self.buf.is_none() {
            return self.read_into_spill(budget, read);
        }
        let block = match self.buf.take() {
            Some(block) => block,
            None => self.pool.alloc(budget.min(SIZE_CLASSES[0]))?,
        };
        let block = self.buf.insert(block);
        let mut direct = block.writable_len().min(budget);
        // The most the spill area may take: bytes landing there must then be stored, which
        // may need a bigger block. A capped pool may refuse it, and the fallback
        // (`unsettle`) keeps the contents and the new bytes only if they fit in the spill
        // area: offer no more than that, so that a read never takes bytes from the socket
        // it has nowhere to keep.
        let mut spill_most = budget - direct;
        if self.pool.config().memory_cap.is_some() {
            spill_most = spill_most.min(SPILL_LEN.saturating_sub(block.len() + direct));
            if direct == 0 && spill_most == 0 {
                // Full, and too much for the fallback: make room before reading, or fail
                // with the bytes still in the socket.
                direct = Self::grow_before_read(block, self.pool, budget)?;
            }
        }
        let mut spill = if spill_most > 0 {
            Some(take_spill())
        } else {
            None
        };
        let (result, offered) = {
            let tail = block.writable().get_mut(..direct).unwrap_or_default();
            let extra: &mut [u8] = match &mut spill {
                Some(spill) => {
                    let spill_len = spill_most.min(spill.len());
                    spill.get_mut(..spill_len).unwrap_or_default()
                }
                None => &mut [],
            };
            let offered = tail.len() + extra.len();
            let (tail_empty, extra_empty) = (tail.is_empty(), extra.is_empty());
            let mut iovs = [IoSliceMut::new(tail), IoSliceMut::new(extra)];
            let iovs = match (tail_empty, extra_empty) {
                (false, true) => iovs.get_mut(..1),
                (true, false) => iovs.get_mut(1..),
                _ => iovs.get_mut(..),
            };
            (read(iovs.unwrap_or_default()), offered)
        };
        let outcome = match result {
            Ok(0) => Ok(ReadOutcome::Eof),
            Ok(n) => {
                let n = n.min(offered);
                let in_block = n.min(direct);
                block.advance_tail(in_block);
                let spilled = spill
                    .as_deref()
                    .and_then(|s| s.get(..n - in_block))
                    .unwrap_or_default();
                let data = ReadOutcome::Data {
                    len: n,
                    drained: n < offered,
                };
                match self.store(spilled) {
                    Ok(()) => Ok(data),
                    Err(e) => match spill.take() {
                        // Growth holds the old block and the new one at once; a cap with
                        // room for the new one alone refuses it. Keep the bytes unsettled.
                        Some(area) => match self.unsettle(area, n - in_block) {
                            Ok(()) => Ok(data),
                            Err(area) => {
                                spill = Some(area);
                                Err(BufferError::Pool(e))
                            }
                        },
                        None => Err(BufferError::Pool(e)),
                    },
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::WouldBlock),
            Err(e) => Err(BufferError::Io(e)),
        };
        if let Some(spill) = spill {
            put_spill(spill);
        }
        self.release_if_empty();
        outcome
    }

    /// On a capped pool, before a read into a full `block` holding more than the spill
    /// area's fallback could keep: compacts it, or moves its contents into a bigger block
    /// (at most `budget` more, at most 64 KiB), so that the read goes into the block
    /// alone. Returns the room for the read.
    ///
    /// # Errors
    ///
    /// The pool's refusal; nothing changed and nothing was read.
    fn grow_before_read(
        block: &mut IoBuf,
        pool: BufPool,
        budget: usize,
    ) -> Result<usize, BufferError> {
        if block.capacity() > block.len() {
            block.compact();
        } else {
            let mut bigger = pool.alloc(block.len() + budget.min(SPILL_LEN))?;
            bigger.append(block.data());
            *block = bigger;
        }
        Ok(block.writable_len().min(budget))
    }

    /// After a read whose growth the pool refused: moves the block's contents and the
    /// `new` bytes the read left at the front of `area` into `area` (in order), gives the
    /// block back and keeps `area` as the unsettled bytes, so nothing read is lost and a
    /// later [`settle`](InputBuffer::settle) needs one block only. Gives `area` back
    /// untouched if they do not fit in it.
    fn unsettle(&mut self, mut area: Box<SpillArea>, new: usize) -> Result<(), Box<SpillArea>> {
        let old = self.buf.as_ref().map_or(0, IoBuf::len);
        let total = old + new;
        if total > area.len() || new > area.len() {
            return Err(area);
        }
        area.copy_within(..new, old);
        if let (Some(buf), Some(dst)) = (self.buf.take(), area.get_mut(..old)) {
            dst.copy_from_slice(buf.data());
        }
        self.spilled = Some(Spilled {
            area,
            start: 0,
            end: total as u32, // at most SPILL_LEN
        });
        Ok(())
    }

    /// A read into an empty buffer: into the spill area alone, where the bytes stay until
    /// consumed or [settled](InputBuffer::settle).
    fn read_into_spill<F>(&mut self, budget: usize, read: F) -> Result<ReadOutcome, BufferError>
    where
        F: FnOnce(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
    {
        let mut area = take_spill();
        let offered = budget.min(area.len());
        let result = {
            let dst = area.get_mut(..offered).unwrap_or_default();
            read(&mut [IoSliceMut::new(dst)])
        };
        let outcome = match result {
            Ok(0) => Ok(ReadOutcome::Eof),
            Ok(n) => {
                let n = n.min(offered);
                self.spilled = Some(Spilled {
                    area,
                    start: 0,
                    end: n as u32, // at most SPILL_LEN
                });
                return Ok(ReadOutcome::Data {
                    len: n,
                    drained: n < offered,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::WouldBlock),
            Err(e) => Err(BufferError::Io(e)),
        };
        put_spill(area);
        outcome
    }

    /// Appends `src`, which is known to fit under `max_len`: in place, after compacting, or in
    /// a bigger block (one copy of the current contents).
    fn store(&mut self, src: &[u8]) -> Result<(), PoolError> {
        if src.is_empty() {
            return Ok(());
        }
        if let Some(s) = &self.spilled {
            // One block for both: settling first, then growing, would hold two at once.
            let mut block = self.pool.alloc(s.len() + src.len())?;
            block.append(s.data());
            block.append(src);
            self.buf = Some(block);
            self.release_spill();
            return Ok(());
        }
        match &mut self.buf {
            None => {
                let mut buf = self.pool.alloc(src.len())?;
                buf.append(src);
                self.buf = Some(buf);
            }
            Some(buf) if buf.writable_len() >= src.len() => {
                buf.append(src);
            }
            Some(buf) if buf.capacity() - buf.len() >= src.len() => {
                buf.compact();
                buf.append(src);
            }
            Some(buf) => {
                let mut bigger = self.pool.alloc(buf.len() + src.len())?;
                bigger.append(buf.data());
                bigger.append(src);
                *buf = bigger;
            }
        }
        Ok(())
    }

    /// Gives the block back if it holds nothing.
    fn release_if_empty(&mut self) {
        if self.buf.as_ref().is_some_and(IoBuf::is_empty) {
            self.buf = None;
        }
    }
}
