//! [`EventLoopThreadPool`]: the sub-reactors of a server.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::event_loop_thread::{EventLoopThread, ThreadInit};
use crate::{LoopGroup, LoopHandle, LoopSharing};

/// N threads, each running one loop, plus a base loop (the caller's, usually the one
/// that accepts connections) that serves everything when N is zero.
///
/// With [`set_loops`](EventLoopThreadPool::set_loops) above N, the pool runs M loops on
/// its N threads instead (a [`LoopGroup`]: a ready loop whose thread is busy or off its
/// core is run by another), so that a thread that loses its core strands only the loop it
/// was running.
///
/// Work is spread with [`next_loop`](EventLoopThreadPool::next_loop) (round robin) or
/// [`loop_for_hash`](EventLoopThreadPool::loop_for_hash) (the same key always lands on
/// the same loop). [`stop`](EventLoopThreadPool::stop) (or drop) quits every loop and joins
/// every thread.
///
/// ```
/// use duo_reactor::{EventLoop, EventLoopThreadPool};
///
/// let base = EventLoop::new()?;
/// let mut pool = EventLoopThreadPool::new(base.handle(), "io", 2);
/// pool.start()?;
/// let a = pool.next_loop();
/// let b = pool.next_loop();
/// assert!(!a.same_loop(&b));
/// assert!(pool.next_loop().same_loop(&a));
/// pool.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventLoopThreadPool {
    base: LoopHandle,
    name: String,
    num_threads: usize,
    /// Loops to run on the threads (0 or at most `num_threads`: one loop per thread).
    num_loops: usize,
    /// How a group's threads share its loops.
    sharing: LoopSharing,
    init: Option<ThreadInit>,
    threads: Vec<EventLoopThread>,
    /// The loops and threads when there are more loops than threads.
    group: Option<LoopGroup>,
    handles: Vec<LoopHandle>,
    next: AtomicUsize,
}

impl EventLoopThreadPool {
    /// A pool of `num_threads` loop threads named `{name}-{i}`, not yet started.
    pub fn new(base: LoopHandle, name: &str, num_threads: usize) -> EventLoopThreadPool {
        EventLoopThreadPool {
            base,
            name: name.to_owned(),
            num_threads,
            num_loops: 0,
            sharing: LoopSharing::default(),
            init: None,
            threads: Vec::new(),
            group: None,
            handles: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// Sets a function run on each new loop (in its thread) before it starts.
    pub fn set_thread_init(&mut self, init: ThreadInit) {
        self.init = Some(init);
    }

    /// Runs `loops` loops on the pool's threads (set before [`start`]): more loops than
    /// threads makes the pool a [`LoopGroup`]; `loops` at most the number of threads (the
    /// default, 0, included) keeps one loop per thread. With no threads, the base loop
    /// serves everything and this has no effect.
    ///
    /// [`start`]: EventLoopThreadPool::start
    pub fn set_loops(&mut self, loops: usize) {
        self.num_loops = loops;
    }

    /// How the threads share the loops when there are more loops than threads (set
    /// before [`start`]; default [`LoopSharing::Owned`]).
    ///
    /// [`start`]: EventLoopThreadPool::start
    pub fn set_loop_sharing(&mut self, sharing: LoopSharing) {
        self.sharing = sharing;
    }

    /// Starts the threads; returns when every loop is ready. On failure the threads
    /// already started are stopped again.
    pub fn start(&mut self) -> io::Result<()> {
        if !self.threads.is_empty() || self.group.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "thread pool already started",
            ));
        }
        if self.num_threads > 0 && self.num_loops > self.num_threads {
            let group = LoopGroup::start_sharing(
                &self.name,
                self.num_threads,
                self.num_loops,
                self.sharing,
                self.init.clone(),
            )?;
            self.handles = group.handles().to_vec();
            self.group = Some(group);
            return Ok(());
        }
        for i in 0..self.num_threads {
            let name = format!("{}-{i}", self.name);
            match EventLoopThread::spawn(&name, self.init.clone()) {
                Ok(t) => {
                    self.handles.push(t.handle().clone());
                    self.threads.push(t);
                }
                Err(e) => {
                    let _ = self.stop_threads();
                    // Which of how many: "Too many open files" alone does not say that
                    // the thread count outgrew the descriptor limit.
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "starting I/O loop {} of {} ({name}): {e}",
                            i + 1,
                            self.num_threads
                        ),
                    ));
                }
            }
        }
        log::debug!(
            "loop pool {} started with {} threads",
            self.name,
            self.num_threads
        );
        Ok(())
    }

    /// The next loop in round-robin order (the base loop if there are no threads).
    pub fn next_loop(&self) -> LoopHandle {
        if self.handles.is_empty() {
            return self.base.clone();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].clone()
    }

    /// The loop for a key: always the same loop for the same `hash` (the base loop if
    /// there are no threads).
    pub fn loop_for_hash(&self, hash: u64) -> LoopHandle {
        if self.handles.is_empty() {
            return self.base.clone();
        }
        self.handles[(hash % self.handles.len() as u64) as usize].clone()
    }

    /// Every loop of the pool (just the base loop if there are no threads).
    pub fn handles(&self) -> Vec<LoopHandle> {
        if self.handles.is_empty() {
            vec![self.base.clone()]
        } else {
            self.handles.clone()
        }
    }

    /// The loop group, when the pool runs more loops than threads (started, with
    /// [`set_loops`](EventLoopThreadPool::set_loops)).
    pub fn group(&self) -> Option<&LoopGroup> {
        self.group.as_ref()
    }

    /// The base loop.
    pub fn base(&self) -> &LoopHandle {
        &self.base
    }

    /// Number of loop threads (not counting the base loop).
    pub fn num_threads(&self) -> usize {
        self.num_threads
    }

    /// Number of loops on the threads (not counting the base loop): the number of
    /// threads, or more with [`set_loops`](EventLoopThreadPool::set_loops).
    pub fn num_loops(&self) -> usize {
        if self.num_threads == 0 {
            0
        } else {
            self.num_loops.max(self.num_threads)
        }
    }

    /// Quits every loop and joins every thread; reports the first failure. Called from
    /// one of the pool's own loops, it joins the others and reports an error for that one,
    /// which ends on its own once the calling callback returns (a thread cannot join
    /// itself).
    pub fn stop(&mut self) -> io::Result<()> {
        self.stop_threads()
    }

    fn stop_threads(&mut self) -> io::Result<()> {
        self.handles.clear();
        if let Some(group) = self.group.take() {
            return group.stop();
        }
        // Ask every loop to quit first, so they wind down in parallel.
        for t in &self.threads {
            t.handle().quit();
        }
        let mut first_err = None;
        for t in self.threads.drain(..) {
            if let Err(e) = t.stop() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for EventLoopThreadPool {
    fn drop(&mut self) {
        if let Err(e) = self.stop_threads() {
            log::error!("loop pool {}: {e}", self.name);
        }
    }
}

impl fmt::Debug for EventLoopThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoopThreadPool")
            .field("name", &self.name)
            .field("num_threads", &self.num_threads)
            .field("num_loops", &self.num_loops())
            .field(
                "running",
                &(self.threads.len() + self.group.as_ref().map_or(0, |g| g.num_threads())),
            )
            .finish()
    }
}
