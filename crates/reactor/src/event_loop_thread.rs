//! [`EventLoopThread`]: a thread that runs one loop.
//!
//! The loop is created on the new thread (an [`EventLoop`] made by [`EventLoop::new`]
//! stays with the thread that made it), the optional init function runs there with it, and then its [`LoopHandle`]
//! comes back over a channel: `spawn` returns a loop that is ready for work, and an init
//! function that panics is an error, not a hang.
//!
//! # Signal mask
//!
//! A loop thread blocks the stop signals ([`duo_sys::TERMINATION_SIGNALS`]: `SIGINT`,
//! `SIGTERM`, `SIGHUP`, `SIGQUIT`) before it does anything else. A process-directed stop
//! signal is delivered to some thread that does not block it; if that were an I/O loop
//! running the default action, the whole process would end without the application's
//! graceful shutdown. With the loops blocking them, the signals reach the application's
//! threads, where [`EventLoop::watch_signals`] can turn them into loop events through a
//! `signalfd`. Only loop threads do this: threads duo spawns elsewhere (the workers of a
//! `duo_workers::ThreadPool`) keep the mask they inherit.

use std::fmt;
use std::io;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::{EventLoop, LoopHandle};

/// A function run on a new loop thread before its loop starts (muduo's
/// `ThreadInitCallback`): register channels, set thread-local state, and so on.
pub type ThreadInit = std::sync::Arc<dyn Fn(&mut EventLoop) + Send + Sync>;

/// Spawns a thread, creates an [`EventLoop`] there and runs it; [`EventLoopThread::spawn`]
/// returns once the loop exists, with its [`LoopHandle`].
///
/// Dropping (or [`stop`](EventLoopThread::stop)ping) it quits the loop and joins the thread
/// (from a callback on the loop itself, which cannot join its own thread, it quits the loop
/// and lets the thread end on its own).
///
/// ```
/// use duo_reactor::EventLoopThread;
///
/// let thread = EventLoopThread::spawn("io-0", None)?;
/// let (tx, rx) = std::sync::mpsc::channel();
/// thread.handle().queue_in_loop(move |lp| tx.send(lp.channel_count()).unwrap())?;
/// assert_eq!(rx.recv()?, 0);
/// thread.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventLoopThread {
    handle: LoopHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
    name: String,
}

impl EventLoopThread {
    /// Starts a thread named `name`, runs `init` (if any) on its new loop, then runs the
    /// loop. Returns when the loop is ready to take work, or the error that prevented it.
    pub fn spawn(name: &str, init: Option<ThreadInit>) -> io::Result<EventLoopThread> {
        let (tx, rx) = mpsc::sync_channel::<io::Result<LoopHandle>>(1);
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Stop signals go to the application's threads, not to a loop thread.
                if let Err(e) = duo_sys::block_termination_signals() {
                    log::warn!("cannot block stop signals on a loop thread: {e}");
                }
                let mut lp = match EventLoop::new() {
                    Ok(lp) => lp,
                    Err(e) => {
                        let e = io::Error::from(e);
                        let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                };
                if let Some(init) = init {
                    init(&mut lp);
                }
                // The receiver only goes away if `spawn` itself unwound; run anyway.
                let _ = tx.send(Ok(lp.handle()));
                lp.run()
            })?;
        match rx.recv() {
            Ok(Ok(handle)) => Ok(EventLoopThread {
                handle,
                thread: Some(thread),
                name: name.to_owned(),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            // The thread died before sending: the init callback panicked.
            Err(_) => Err(join_error(name, thread.join())),
        }
    }

    /// The loop's handle.
    pub fn handle(&self) -> &LoopHandle {
        &self.handle
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Quits the loop, joins the thread and reports how the loop ended.
    ///
    /// # Errors
    ///
    /// The loop's own error, or an error if the thread panicked. Called on the loop's own
    /// thread (from one of its callbacks), it cannot join: it asks the loop to quit and
    /// returns an error at once; the thread ends once the callback has returned.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.handle.quit();
        if thread.thread().id() == thread::current().id() {
            // Called from the loop's own thread (a callback that held the last owner): a
            // thread cannot join itself. The loop was asked to quit; it returns once this
            // callback has, and the thread then ends on its own (detached here).
            return Err(io::Error::other(format!(
                "loop thread {} stopped from its own loop: it ends on its own once the \
                 current callback returns",
                self.name
            )));
        }
        match thread.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other(format!(
                "loop thread {} panicked",
                self.name
            ))),
        }
    }
}

fn join_error(name: &str, joined: thread::Result<io::Result<()>>) -> io::Error {
    match joined {
        Ok(Err(e)) => e,
        Ok(Ok(())) => io::Error::other(format!("loop thread {name} ended before its loop started")),
        Err(_) => io::Error::other(format!("loop thread {name} panicked while starting")),
    }
}

impl Drop for EventLoopThread {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            log::error!("loop thread {}: {e}", self.name);
        }
    }
}

impl fmt::Debug for EventLoopThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoopThread")
            .field("name", &self.name)
            .field("running", &self.thread.is_some())
            .finish()
    }
}
