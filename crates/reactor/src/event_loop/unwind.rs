//! What a callback's panic leaves behind: its channel, the rest of its poll batch, and
//! the iteration's counts.

use super::{EventLoop, TIMERFD_TOKEN, WAKER_TOKEN};
use crate::channel::Token;
use crate::channel_slab::{Entry, TakeOutcome};
use crate::health::CallbackKind;

impl EventLoop {
    /// A channel's handler panicked while its entry was out of its slot: the channel goes
    /// (slot freed, deregistered, descriptor closed), as `run`'s documentation promises,
    /// instead of leaving its slot taken for ever.
    pub(super) fn drop_panicked(&mut self, token: Token, entry: Entry) {
        self.channels.free(token);
        self.deregister(&entry);
        drop(entry);
    }

    /// A callback of `kind` panicked: it held the loop as long as one that returns, and is
    /// accounted the same way (the time split, the longest callback, the stall detector)
    /// before its panic goes on; `what` names it for a stall report.
    pub(super) fn panicked_callback_done(&mut self, kind: CallbackKind, what: &dyn Fn() -> String) {
        self.health
            .callback_done(kind, what, &self.shared.name, &self.shared.metrics.health);
    }

    /// The callback run for the event `data` (a channel's token, or the timerfd's) of the
    /// current poll batch panicked, and the panic takes the events after it out of `run`
    /// undispatched. A level-triggered descriptor is reported again by the next poll, but
    /// an edge-triggered or one-shot one is not: the `epoll_wait` that returned the batch
    /// consumed its edge (or disarmed it), and its data would wait for more that may never
    /// come. Registering it again with the same interest (`EPOLL_CTL_MOD`) has the kernel
    /// look at it afresh and report it if it is still ready.
    ///
    /// What the iteration counted so far is published too, as the iteration's end would
    /// have (and as a queued function's panic does): the loop may never run again (its
    /// thread dies with the panic, and the metrics are read through a handle). A timer
    /// that panicked counts as run, as a panicking handler's event and a panicking queued
    /// function do.
    ///
    /// Only on the panic path: nothing is done per event.
    pub(super) fn rearm_rest_of_batch(&mut self, data: u64) {
        if data == TIMERFD_TOKEN {
            // `run_timers` counts a timer when its callback returns.
            self.iteration_timers += 1;
        }
        self.publish_metrics();
        let mut i = 0;
        while let Some((d, _)) = self.poller.event(i) {
            i += 1;
            if d == data {
                break;
            }
        }
        while let Some((d, _)) = self.poller.event(i) {
            i += 1;
            if d == WAKER_TOKEN || d == TIMERFD_TOKEN {
                continue; // level-triggered: reported again
            }
            let token = Token(d);
            // Not there: removed meanwhile (or held further up the stack of a nested
            // `run`, which dispatches it itself).
            let TakeOutcome::Taken(entry) = self.channels.take_out(token) else {
                continue;
            };
            let registered = entry.channel.registered;
            if registered.is_edge() || registered.is_oneshot() {
                if let Err(e) = self.poller.modify(entry.channel.fd(), registered, d) {
                    crate::log_limited!(
                        log::Level::Warn,
                        "re-arming {token:?} after a panic in its batch: {e}"
                    );
                }
            }
            self.channels.fill(token, entry);
        }
    }
}
