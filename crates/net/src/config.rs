//! The settings every connection takes from its server or client: [`ConnConfig`], with
//! all their defaults in one place ([`defaults`]), the policies [`Backpressure`] and
//! [`OutputLimit`], and the builder methods that set them, written once for
//! [`ServerBuilder`](crate::ServerBuilder) and [`ClientBuilder`](crate::ClientBuilder).

use duo_buffer::BufPool;

/// Defaults of the connection settings (and of the servers' buffer trimming).
pub mod defaults {
    use std::time::Duration;

    /// Output-buffer size above which a connection stops reading (backpressure) and the
    /// high-water-mark callback runs: 4 MiB.
    pub const HIGH_WATER: usize = 4 << 20;
    /// Largest input a connection buffers before the message callback consumes it: 8 MiB,
    /// which is also the most `max_input` may be (the input is one contiguous block of
    /// the buffer pool, at most [`duo_buffer::MAX_BLOCK`]).
    pub const MAX_INPUT: usize = duo_buffer::MAX_BLOCK;
    /// Most bytes one readiness event reads from an edge-triggered connection before the
    /// loop serves its other connections (the rest is read right after): 256 KiB.
    pub const READ_BUDGET: usize = 256 << 10;
    /// How often each loop checks whether the buffer pool holds memory a past burst left
    /// behind: 10 s.
    pub const BUFFER_TRIM_INTERVAL: Duration = Duration::from_secs(10);
    /// First delay before a client retries a failed connect: 500 ms.
    pub const RETRY_INITIAL: Duration = Duration::from_millis(500);
    /// A client's retry delay doubles after each failure up to this: 30 s.
    pub const RETRY_MAX: Duration = Duration::from_secs(30);
    /// Longest a graceful close that found unread input waits for the peer's end of
    /// stream, reading and dropping what it sends, before it closes anyway: 5 s (see
    /// `close_linger` on the builders).
    pub const CLOSE_LINGER: Duration = Duration::from_secs(5);
}

/// What a connection does when its output buffer crosses the high-water mark
/// ([`ServerBuilder::backpressure`](crate::ServerBuilder::backpressure),
/// [`ClientBuilder::backpressure`](crate::ClientBuilder::backpressure)).
///
/// Either way the [`on_high_water_mark`](crate::ServerBuilder::on_high_water_mark)
/// callback runs when the buffer crosses the mark, and
/// [`on_write_complete`](crate::ServerBuilder::on_write_complete) when it is empty again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Backpressure {
    /// Stop reading from this same connection until its output drains below the low-water
    /// mark (the default). Right for servers whose replies are made from the requests of
    /// the same connection (echo, request/response): a peer that sends without reading
    /// cannot make the server buffer without bound.
    #[default]
    PauseReading,
    /// Only run the callbacks; never pause reading by itself. Right when the bytes that
    /// fill this connection's output come from *another* connection (a relay, a proxy, a
    /// broadcast): pausing this one's reading would couple the two directions of a relay
    /// and can deadlock it. The application pauses the source instead
    /// ([`TcpConnection::stop_reading`](crate::TcpConnection::stop_reading) from
    /// `on_high_water_mark`, `start_reading` from `on_write_complete`), or bounds the
    /// buffer with an [`OutputLimit`]. Write-complete does not run when the output is
    /// dropped because this connection's peer went away: resume or close the source from
    /// this connection's close (or "down") callback too.
    Notify,
}

/// What happens to a send that would grow a connection's output buffer past its limit
/// ([`ServerBuilder::output_limit`](crate::ServerBuilder::output_limit)): how a server
/// protects itself from a peer that reads too slowly (or not at all) while others keep
/// producing for it, as in a broadcast.
///
/// The limit applies to what is *queued*: a send into an empty buffer is written straight
/// to the socket and its rest queued whatever its size, so one message larger than the
/// limit still goes out whole. A message is never cut: either all of it is queued or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputLimit {
    /// Close the connection (reason
    /// [`CloseReason::OutputLimit`](crate::CloseReason::OutputLimit)): the slow reader is
    /// dropped, everyone else goes on.
    Close,
    /// Refuse the message (the send returns `false`); the connection stays open and gets
    /// later messages once its buffer has room. Right for data where the latest matters
    /// more than every one (prices, positions).
    Discard,
}

/// The settings a connection takes from its server or client. Builders hold one and set
/// it through the methods [`conn_config_setters`] writes for both of them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnConfig {
    pub(crate) edge_triggered: bool,
    pub(crate) high_water: usize,
    pub(crate) low_water: usize,
    pub(crate) backpressure: Backpressure,
    /// Bound on the queued output and what to do past it.
    pub(crate) output_limit: Option<(usize, OutputLimit)>,
    pub(crate) max_input: usize,
    /// Most bytes one readiness event reads from a connection before the loop serves
    /// others (edge-triggered; a level-triggered connection reads once per event).
    pub(crate) read_budget: usize,
    pub(crate) tcp_nodelay: bool,
    /// Every read (and write of queued output) refreshes the idle timer (else only
    /// `ConnCtx::refresh_idle` does).
    pub(crate) idle_refresh_on_read: bool,
    /// Where the connection's input and output blocks come from.
    pub(crate) pool: BufPool,
    /// Bound of a lingering close (`conn/linger.rs`); zero: no lingering.
    pub(crate) close_linger: std::time::Duration,
}

impl Default for ConnConfig {
    fn default() -> ConnConfig {
        ConnConfig {
            edge_triggered: true,
            high_water: defaults::HIGH_WATER,
            low_water: defaults::HIGH_WATER / 2,
            backpressure: Backpressure::PauseReading,
            output_limit: None,
            max_input: defaults::MAX_INPUT,
            read_budget: defaults::READ_BUDGET,
            tcp_nodelay: false,
            idle_refresh_on_read: true,
            pool: BufPool::global(),
            close_linger: defaults::CLOSE_LINGER,
        }
    }
}

/// Writes the connection-setting methods of a builder (`ServerBuilder`, `ClientBuilder`)
/// whose `conn` field is a [`ConnConfig`]: one text for both, so they cannot drift.
macro_rules! conn_config_setters {
    () => {
        /// Edge-triggered connections (the default: read and write until `EAGAIN`) or
        /// level-triggered ones (one read per readiness event).
        pub fn edge_triggered(mut self, on: bool) -> Self {
            self.conn.edge_triggered = on;
            self
        }
        /// Output-buffer high-water mark (default
        /// [`defaults::HIGH_WATER`](crate::defaults::HIGH_WATER)) and low-water mark
        /// (default half of it). When a connection's unsent output grows past the high
        /// mark, `on_high_water_mark` runs and, with the default
        /// [`Backpressure::PauseReading`](crate::Backpressure::PauseReading), the
        /// connection stops reading until its output drains below the low mark: a peer
        /// that sends requests without reading the replies is slowed down by TCP itself
        /// instead of growing the process.
        ///
        /// A relay or broadcast, whose output comes from *other* connections, wants the
        /// signal without the pause: set
        /// [`Backpressure::Notify`](crate::Backpressure::Notify) with `backpressure`,
        /// and pause the source connection from `on_high_water_mark` (resume it from
        /// `on_write_complete`); bound what a slow reader can make the process hold with
        /// `output_limit`.
        pub fn water_marks(mut self, high: usize, low: usize) -> Self {
            self.conn.high_water = high.max(1);
            self.conn.low_water = low.min(self.conn.high_water);
            self
        }
        /// What crossing the high-water mark does: pause this connection's reading (the
        /// default) or only call the callbacks; see [`Backpressure`](crate::Backpressure)
        /// (a relay wants `Notify`).
        pub fn backpressure(mut self, policy: $crate::Backpressure) -> Self {
            self.conn.backpressure = policy;
            self
        }
        /// Bounds each connection's queued output to `bytes` (no bound by default): a
        /// send that would queue more closes the connection or is refused, as `policy`
        /// says (see [`OutputLimit`](crate::OutputLimit)). Sends from other threads
        /// ([`TcpConnection::send`](crate::TcpConnection::send)) are held to it as well
        /// while they wait for the loop, so a producer thread cannot queue without bound.
        pub fn output_limit(mut self, bytes: usize, policy: $crate::OutputLimit) -> Self {
            self.conn.output_limit = Some((bytes.max(1), policy));
            self
        }
        /// Most bytes one readiness event reads from an edge-triggered connection before
        /// the loop serves its other connections and timers (default
        /// [`defaults::READ_BUDGET`](crate::defaults::READ_BUDGET)); the rest is read
        /// right after, in the same loop iteration's queue. Bounds the work per event, so
        /// one fast sender cannot delay everyone else on its loop.
        pub fn read_budget(mut self, bytes: usize) -> Self {
            self.conn.read_budget = bytes.max(1);
            self
        }
        /// Largest unconsumed input per connection (default and most
        /// [`defaults::MAX_INPUT`](crate::defaults::MAX_INPUT), 8 MiB: the input is one
        /// block of the buffer pool, so a larger value is taken as that); past it the
        /// connection is closed
        /// ([`CloseReason::InputTooLarge`](crate::CloseReason::InputTooLarge)). A protocol
        /// with larger messages consumes them as they come.
        pub fn max_input(mut self, bytes: usize) -> Self {
            self.conn.max_input = bytes.clamp(1, defaults::MAX_INPUT);
            self
        }
        /// Sets `TCP_NODELAY` on every connection (default off).
        pub fn tcp_nodelay(mut self, on: bool) -> Self {
            self.conn.tcp_nodelay = on;
            self
        }
        /// The buffer pool the connections' input and output blocks come from (default
        /// the process-wide [`BufPool::global`](duo_buffer::BufPool::global)). A pool
        /// built with a [`PoolConfig::memory_cap`](duo_buffer::PoolConfig::memory_cap)
        /// bounds what all of them hold together. A connection whose input buffer cannot
        /// grow for now stops reading (what the peer sent waits in the kernel, and TCP
        /// flow control slows the peer) and reads again every 20 ms until the pool has
        /// room (over TLS too, once the handshake completed), for at most 2 s with
        /// nothing delivered (connections may wait for each other's memory); one whose
        /// unconsumed input needs a block that, beside the one it holds, exceeds the
        /// whole cap, or whose output cannot be buffered, closes
        /// ([`CloseReason::OutOfMemory`](crate::CloseReason::OutOfMemory)); the others go
        /// on. A server's trim timer trims this pool.
        pub fn buffer_pool(mut self, pool: duo_buffer::BufPool) -> Self {
            self.conn.pool = pool;
            self
        }
        /// How long a graceful close may linger (default
        /// [`defaults::CLOSE_LINGER`](crate::defaults::CLOSE_LINGER)). Closing a socket
        /// with unread input makes the kernel reset the connection and drop the output
        /// it still holds, so a close after the output is written
        /// ([`close_after_flush`](crate::ConnCtx::close_after_flush), the end of a
        /// graceful shutdown) that finds input nobody read half-closes instead, reads
        /// and drops what the peer sends until its end of stream, and closes then, or
        /// after `linger` (extended by another `linger` each time the peer has taken
        /// some of the output meanwhile). A close that finds no unread input closes at
        /// once, as does [`force_close`](crate::ConnCtx::force_close) always.
        /// `Duration::ZERO` closes at once in every case (a reset may then cut the last
        /// output short).
        pub fn close_linger(mut self, linger: std::time::Duration) -> Self {
            self.conn.close_linger = linger;
            self
        }
    };
}
pub(crate) use conn_config_setters;
