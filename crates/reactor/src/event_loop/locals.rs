//! Loop-local values: per-loop state of any type, kept next to the loop without locks.

use std::any::TypeId;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use super::EventLoop;

impl EventLoop {
    /// Stores a loop-local value of type `T` (one per type), returning the previous one.
    ///
    /// Loop-local values are how a library keeps per-loop state next to the loop without
    /// locks: `duo-net` keeps each loop's idle-connection wheel and counters this way. They
    /// are dropped with the loop.
    pub fn insert_local<T: Send + 'static>(&mut self, value: T) -> Option<T> {
        let old = self.locals.insert(TypeId::of::<T>(), Some(Box::new(value)));
        old.flatten()
            .and_then(|b| b.downcast::<T>().ok())
            .map(|b| *b)
    }

    /// Removes and returns the loop-local value of type `T`.
    pub fn remove_local<T: Send + 'static>(&mut self) -> Option<T> {
        let old = self.locals.remove(&TypeId::of::<T>());
        old.flatten()
            .and_then(|b| b.downcast::<T>().ok())
            .map(|b| *b)
    }

    /// The loop-local value of type `T`, if any (and not currently taken by
    /// [`EventLoop::with_local`]).
    pub fn local<T: Send + 'static>(&self) -> Option<&T> {
        self.locals
            .get(&TypeId::of::<T>())?
            .as_ref()?
            .downcast_ref()
    }

    /// Gives `f` the loop together with the loop-local value of type `T` (taken out of the
    /// loop for the call, as handlers are). `None` if there is no such value, or if it is
    /// already taken further up the stack. If `f` panics, the value is put back (as `f`
    /// left it) before the panic goes on.
    pub fn with_local<T: Send + 'static, R>(
        &mut self,
        f: impl FnOnce(&mut EventLoop, &mut T) -> R,
    ) -> Option<R> {
        let key = TypeId::of::<T>();
        let mut boxed = self.locals.get_mut(&key)?.take()?;
        let r = catch_unwind(AssertUnwindSafe(|| {
            boxed.downcast_mut::<T>().map(|v| f(self, v))
        }));
        // Put it back unless `f` replaced or removed it meanwhile; also when `f` panicked
        // (the rest of the loop stays usable after a panic, and the value is part of it:
        // left out, it would look taken for ever).
        if let Some(slot @ None) = self.locals.get_mut(&key) {
            *slot = Some(boxed);
        }
        r.unwrap_or_else(|panic| resume_unwind(panic))
    }
}
