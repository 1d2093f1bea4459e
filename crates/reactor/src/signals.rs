//! Unix signals as loop events, through a `signalfd` ([`EventLoop::watch_signals`]).

use std::io;
use std::os::fd::AsFd;

use duo_sys::{Signal, SignalFd};

use crate::{Channel, EventLoop, Handler, Interest, Token};

struct SignalHandler<F> {
    signals: SignalFd,
    on_signal: F,
}

/// The most signals one dispatch reads: the signalfd is level-triggered, so what is left
/// is read in the next turn, after the loop has served everything else; a flood that
/// keeps a signal pending all the time cannot hold the loop in one dispatch.
pub(crate) const SIGNALS_PER_TURN: usize = 64;

impl<F: FnMut(&mut EventLoop, Signal) + Send + 'static> Handler for SignalHandler<F> {
    fn handle_read(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        for _ in 0..SIGNALS_PER_TURN {
            match self.signals.read() {
                Ok(Some(info)) => {
                    // A signal read is progress: a flood of them, readable again at every
                    // turn, is no spin.
                    ch.progressed();
                    log::info!("received {} from pid {}", info.signal, info.sender_pid);
                    (self.on_signal)(lp, info.signal);
                }
                Ok(None) => return,
                Err(e) => {
                    crate::log_limited!(log::Level::Error, "reading the signalfd: {e}");
                    return;
                }
            }
        }
    }
}

impl EventLoop {
    /// Delivers `signals` (say `SIGINT` and `SIGTERM`) to `on_signal` on this loop, as
    /// ordinary events, instead of running their default action.
    ///
    /// The signals are blocked in the calling thread and read from a `signalfd`. The
    /// kernel hands a process-directed signal to any thread that does not block it, so
    /// every other thread must block it too: duo's own threads (loop threads, worker
    /// pools) block [`TERMINATION_SIGNALS`](duo_sys::TERMINATION_SIGNALS) themselves;
    /// threads you spawn inherit your mask, so for those, call this (or
    /// [`duo_sys::block_signals`]) before spawning them. Returns the channel's token;
    /// removing the channel stops the delivery (the signals stay blocked, so they wait
    /// pending rather than kill the process).
    ///
    /// One turn of the loop reads at most 64 signals; more pending ones are read in the
    /// next turns, after the loop's other channels, timers and queued functions, so a
    /// flood of signals cannot hold the loop. Reading a signal counts as progress for the
    /// spin detector ([`HealthConfig`](crate::HealthConfig)).
    ///
    /// ```no_run
    /// use duo_reactor::EventLoop;
    /// use duo_sys::Signal;
    ///
    /// let mut lp = EventLoop::new()?;
    /// lp.watch_signals(&[Signal::INT, Signal::TERM], |lp, sig| {
    ///     eprintln!("{sig}: stopping");
    ///     lp.quit();
    /// })?;
    /// // ... start servers and threads, then:
    /// lp.run()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn watch_signals(
        &mut self,
        signals: &[Signal],
        on_signal: impl FnMut(&mut EventLoop, Signal) + Send + 'static,
    ) -> io::Result<Token> {
        let fd = SignalFd::new(signals)?;
        // The loop owns the registered descriptor; the handler keeps the signalfd itself
        // to read from (both refer to the same open file).
        let registered = fd.as_fd().try_clone_to_owned()?;
        let handler = SignalHandler {
            signals: fd,
            on_signal,
        };
        self.add_channel(registered, Interest::READABLE, handler)
            .map_err(|e| e.error)
    }
}
