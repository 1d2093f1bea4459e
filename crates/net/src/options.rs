//! Per-connection policies a server or client sets for all its connections: what crossing
//! the high-water mark does ([`Backpressure`]), what happens past an output limit
//! ([`OutputLimit`]), and the settings every connection copies ([`ConnOptions`]).

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

/// Settings a connection takes from its server or client.
#[derive(Debug, Clone)]
pub(crate) struct ConnOptions {
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
    /// Key of the owning server's idle wheel on each loop, if idle timeouts are on.
    pub(crate) idle_key: Option<u64>,
    /// Every read refreshes the idle timer (else only `ConnCtx::refresh_idle` does).
    pub(crate) idle_refresh_on_read: bool,
}
