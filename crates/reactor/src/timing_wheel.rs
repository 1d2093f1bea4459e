//! [`TimingWheel`]: coarse timeouts over many keys (idle connections), O(1) per refresh.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

/// Where a live key sits in the ring: the bucket of the tick interval it was last touched
/// in, and its position inside that bucket (so it can leave the bucket in O(1)).
#[derive(Clone, Copy, Debug)]
struct Position {
    /// The bucket of the tick interval the key was last touched in.
    bucket: usize,
    /// The key's index inside that bucket.
    index: usize,
}

/// A ring of buckets of one tick each, for coarse timeouts over many keys: typically the
/// idle connections of one loop (muduo's `idleconnection` example), closed when nothing
/// happened on them for a while, without one timer per connection.
///
/// The wheel is a pure data structure: it has no clock. Its owner calls [`tick`](Self::tick)
/// from a repeating timer every *P* (the tick period), and [`refresh`](Self::refresh) on
/// activity. Whatever `tick` returns has been idle for the whole timeout and is no longer
/// tracked; the owner closes it.
///
/// # Timing
///
/// Ticks are numbered by [`current_tick`](Self::current_tick): it is 0 at construction
/// and the *t*-th call to `tick` makes it *t*. *Tick interval t* is the time between the
/// *t*-th and the (*t* + 1)-th call (interval 0 begins at construction).
///
/// With `N` = [`buckets`](Self::buckets), a key inserted or last refreshed during tick
/// interval *t* is returned by the (*t* + `N` + 1)-th call to `tick`, i.e. by the first
/// tick after which it has been idle for `N` *whole* intervals; no earlier and no later
/// tick returns it. With ticks every *P*, a key idle for a time *T* is expired by a tick at
/// which `N·P < T ≤ (N+1)·P`: never before the timeout `N·P`, at most one tick after it
/// (the same "never early" rule as the loop's timers). [`deadline_tick`](Self::deadline_tick)
/// tells which tick that is.
///
/// This is one tick later than muduo's ring of `N` buckets, which closes a connection
/// after an idle time in `((N-1)·P, N·P]`, i.e. up to one tick before its timeout.
/// Internally the ring has `N + 1` buckets: `N` whole intervals plus the current one.
///
/// # Costs
///
/// - [`insert`](Self::insert), [`refresh`](Self::refresh), [`remove`](Self::remove),
///   [`contains`](Self::contains): O(1) (a hash lookup, and on a refresh that moves the key
///   to a newer bucket, one more for the key that fills the hole it leaves).
/// - [`tick`](Self::tick): O(1 + expired keys); [`tick_into`](Self::tick_into) appends into
///   the caller's `Vec` and allocates nothing once that `Vec` is big enough.
/// - Memory: every tracked key is held exactly twice (the map and its bucket) and nothing
///   else: there are no stale entries, so refreshing a key any number of times, or
///   inserting and removing keys in any order, never grows the wheel beyond its live keys.
///   The buckets keep their capacity, so memory follows the peak number of keys.
///
/// # Bucket count
///
/// [`new`](Self::new) clamps `buckets` to `1..=`[`MAX_BUCKETS`](Self::MAX_BUCKETS): a
/// wheel of 0 buckets would expire keys on the tick after they were touched anyway, and the
/// upper bound keeps the ring (allocated up front) small. The value in use is
/// [`buckets`](Self::buckets).
///
/// # Example
///
/// ```
/// use duo_reactor::TimingWheel;
///
/// // Close connections idle for 3 ticks (e.g. 3 s with a 1 s repeating timer).
/// let mut wheel = TimingWheel::new(3);
/// wheel.insert("alice");
/// wheel.insert("bob");
/// assert_eq!(wheel.deadline_tick(&"bob"), Some(4));
///
/// assert!(wheel.tick().is_empty()); // tick 1
/// assert!(wheel.refresh(&"alice")); // alice is active during interval 1
/// assert!(wheel.tick().is_empty()); // tick 2
/// assert!(wheel.tick().is_empty()); // tick 3: bob idle for 2 whole intervals only
/// assert_eq!(wheel.tick(), ["bob"]); // tick 4: bob idle for 3 whole intervals
/// assert!(!wheel.contains(&"bob"));
///
/// let mut expired = Vec::new(); // reused across ticks: no allocation per tick
/// wheel.tick_into(&mut expired); // tick 5: alice, touched in interval 1, expires
/// assert_eq!(expired, ["alice"]);
/// assert!(wheel.is_empty());
///
/// assert!(!wheel.refresh(&"alice")); // unknown key: nothing tracked
/// ```
pub struct TimingWheel<K> {
    /// Every tracked key and where its single entry in `ring` is.
    positions: HashMap<K, Position>,
    /// `buckets + 1` buckets; `ring[cursor]` holds the keys touched in the current interval,
    /// `ring[cursor - a (mod len)]` those last touched `a` intervals ago.
    ring: Vec<Vec<K>>,
    /// The bucket of the current tick interval.
    cursor: usize,
    /// Number of calls to `tick` so far (wrapping; only reported, never used for indexing).
    tick: u64,
}

impl<K: Eq + Hash + Clone> TimingWheel<K> {
    /// The largest number of buckets [`new`](Self::new) accepts; larger requests are
    /// clamped to it (65 536 ticks: over 18 hours with a one-second tick).
    pub const MAX_BUCKETS: usize = 1 << 16;

    /// Creates an empty wheel whose keys expire after `buckets` whole idle ticks (see
    /// [Timing](Self#timing)).
    ///
    /// `buckets` is clamped to `1..=`[`MAX_BUCKETS`](Self::MAX_BUCKETS), so this never
    /// fails; [`buckets`](Self::buckets) returns the value in use.
    ///
    /// ```
    /// use duo_reactor::TimingWheel;
    ///
    /// assert_eq!(TimingWheel::<u64>::new(8).buckets(), 8);
    /// assert_eq!(TimingWheel::<u64>::new(0).buckets(), 1);
    /// assert_eq!(TimingWheel::<u64>::new(usize::MAX).buckets(), TimingWheel::<u64>::MAX_BUCKETS);
    /// ```
    pub fn new(buckets: usize) -> Self {
        let buckets = buckets.clamp(1, Self::MAX_BUCKETS);
        let mut ring = Vec::with_capacity(buckets + 1);
        ring.resize_with(buckets + 1, Vec::new);
        TimingWheel {
            positions: HashMap::new(),
            ring,
            cursor: 0,
            tick: 0,
        }
    }

    /// The timeout, in whole ticks: the `buckets` given to [`new`](Self::new), after
    /// clamping.
    pub fn buckets(&self) -> usize {
        self.ring.len() - 1
    }

    /// Starts tracking `key` as touched now (in the current tick interval). For a key
    /// already tracked this is the same as [`refresh`](Self::refresh).
    pub fn insert(&mut self, key: K) {
        if self.refresh(&key) {
            return;
        }
        let bucket = &mut self.ring[self.cursor];
        let pos = Position {
            bucket: self.cursor,
            index: bucket.len(),
        };
        bucket.push(key.clone());
        self.positions.insert(key, pos);
    }

    /// Marks `key` as touched now, postponing its expiry to
    /// [`current_tick`](Self::current_tick)` + buckets + 1`. Returns `false`, and does
    /// nothing, if `key` is not tracked (never inserted, removed, or already expired).
    ///
    /// O(1); refreshing again within the same tick interval is a lookup and nothing else.
    pub fn refresh(&mut self, key: &K) -> bool {
        let cursor = self.cursor;
        let Some(pos) = self.positions.get_mut(key) else {
            return false;
        };
        if pos.bucket == cursor {
            return true;
        }
        let old = *pos;
        pos.bucket = cursor;
        pos.index = self.ring[cursor].len();
        if let Some(key) = self.take_entry(old) {
            self.ring[cursor].push(key);
        }
        true
    }

    /// Stops tracking `key` (e.g. its connection closed first): it will not be returned by
    /// [`tick`](Self::tick). Returns whether it was tracked.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.positions.remove(key) {
            Some(pos) => {
                self.take_entry(pos);
                true
            }
            None => false,
        }
    }

    /// Whether `key` is tracked: inserted, and neither removed nor expired since.
    pub fn contains(&self, key: &K) -> bool {
        self.positions.contains_key(key)
    }

    /// The number of the tick (see [`current_tick`](Self::current_tick)) that will return
    /// `key` unless it is refreshed or removed first, or `None` if it is not tracked.
    pub fn deadline_tick(&self, key: &K) -> Option<u64> {
        let pos = self.positions.get(key)?;
        let len = self.ring.len();
        // Intervals since the key was touched: 0 ..= buckets.
        let age = (self.cursor + len - pos.bucket) % len;
        Some(self.tick.wrapping_add((len - age) as u64))
    }

    /// The number of tracked keys.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Advances one tick and returns the keys that were neither inserted nor refreshed
    /// during the last [`buckets`](Self::buckets) whole tick intervals, each exactly once
    /// and in no particular order; they are no longer tracked.
    ///
    /// Allocates only when something expires; [`tick_into`](Self::tick_into) reuses a
    /// buffer instead.
    pub fn tick(&mut self) -> Vec<K> {
        let mut expired = Vec::new();
        self.tick_into(&mut expired);
        expired
    }

    /// Like [`tick`](Self::tick), but appends the expired keys to `out` (which it does not
    /// clear: a `Vec` or a `VecDeque` the caller reuses, say), so that a caller that keeps
    /// `out` does not allocate on every tick.
    pub fn tick_into(&mut self, out: &mut impl Extend<K>) {
        self.tick = self.tick.wrapping_add(1);
        self.cursor = (self.cursor + 1) % self.ring.len();
        // The new current bucket is the one of the interval `buckets + 1` ticks ago: all its
        // keys have now been idle for `buckets` whole intervals.
        // Untracked before they are handed over: a collection that stops taking them part
        // way (one at its capacity, panicking) must not leave keys tracked that are no
        // longer in the ring (one inserted again was then "already tracked", in no bucket,
        // and never expired).
        let bucket = &mut self.ring[self.cursor];
        for key in bucket.iter() {
            self.positions.remove(key);
        }
        out.extend(bucket.drain(..));
    }

    /// The number of calls to [`tick`](Self::tick) and [`tick_into`](Self::tick_into) so
    /// far (wrapping at `u64::MAX`); the current tick interval has the same number.
    pub fn current_tick(&self) -> u64 {
        self.tick
    }

    /// Entries held in the buckets beyond one per tracked key. Always 0 by construction;
    /// for the tests of the memory bound.
    #[cfg(test)]
    fn stale_entries(&self) -> usize {
        let entries: usize = self.ring.iter().map(Vec::len).sum();
        entries.saturating_sub(self.positions.len())
    }

    /// Takes the entry at `pos` out of its bucket in O(1), moving the bucket's last entry
    /// into the hole and updating that key's position.
    fn take_entry(&mut self, pos: Position) -> Option<K> {
        let bucket = self.ring.get_mut(pos.bucket)?;
        debug_assert!(
            pos.index < bucket.len(),
            "timing wheel position out of bounds"
        );
        if pos.index >= bucket.len() {
            return None;
        }
        let key = bucket.swap_remove(pos.index);
        if let Some(moved) = bucket.get(pos.index) {
            if let Some(moved_pos) = self.positions.get_mut(moved) {
                moved_pos.index = pos.index;
            }
        }
        Some(key)
    }
}

impl<K> fmt::Debug for TimingWheel<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimingWheel")
            .field("buckets", &(self.ring.len() - 1))
            .field("current_tick", &self.tick)
            .field("len", &self.positions.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted<K: Ord>(mut keys: Vec<K>) -> Vec<K> {
        keys.sort();
        keys
    }

    #[test]
    fn many_refreshes_and_churn_in_one_tick_keep_memory_flat() {
        let mut wheel = TimingWheel::new(5);
        for k in 0..1000u32 {
            wheel.insert(k);
        }
        for tick in 0..20 {
            for _ in 0..50 {
                for k in 0..1000u32 {
                    assert!(wheel.refresh(&k));
                }
            }
            for k in (tick..1000u32).step_by(7) {
                assert!(wheel.remove(&k));
                wheel.insert(k);
            }
            assert_eq!(wheel.stale_entries(), 0);
            assert_eq!(wheel.len(), 1000);
            assert!(wheel.tick().is_empty());
        }
    }

    /// The obvious model: last touched tick per key; at each tick, expire everything touched
    /// `buckets + 1` or more ticks ago.
    #[derive(Debug, Default)]
    struct Model {
        last: HashMap<u8, u64>,
        tick: u64,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8),
        Refresh(u8),
        Remove(u8),
        Tick,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..24u8).prop_map(Op::Insert),
            3 => (0..24u8).prop_map(Op::Refresh),
            1 => (0..24u8).prop_map(Op::Remove),
            3 => Just(Op::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_a_brute_force_model(buckets in 0..7usize, ops in prop::collection::vec(op(), 0..400)) {
            let mut wheel = TimingWheel::new(buckets);
            let n = buckets.max(1) as u64;
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        wheel.insert(k);
                        model.last.insert(k, model.tick);
                    }
                    Op::Refresh(k) => {
                        let known = model.last.contains_key(&k);
                        if known {
                            model.last.insert(k, model.tick);
                        }
                        prop_assert_eq!(wheel.refresh(&k), known);
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(wheel.remove(&k), model.last.remove(&k).is_some());
                    }
                    Op::Tick => {
                        model.tick += 1;
                        let now = model.tick;
                        let mut due: Vec<u8> =
                            model.last.iter().filter(|(_, &t)| now - t > n).map(|(&k, _)| k).collect();
                        due.sort();
                        model.last.retain(|_, t| now - *t <= n);
                        prop_assert_eq!(sorted(wheel.tick()), due);
                    }
                }
                prop_assert_eq!(wheel.len(), model.last.len());
                prop_assert_eq!(wheel.current_tick(), model.tick);
                prop_assert_eq!(wheel.stale_entries(), 0);
                for k in 0..24u8 {
                    prop_assert_eq!(wheel.contains(&k), model.last.contains_key(&k));
                    prop_assert_eq!(wheel.deadline_tick(&k), model.last.get(&k).map(|t| t + n + 1));
                }
            }
        }
    }

    /// Every tracked key has exactly one entry, where its position says, and nothing else is
    /// in the ring.
    fn check_invariants<K: Eq + Hash + Clone + fmt::Debug>(wheel: &TimingWheel<K>) {
        let entries: usize = wheel.ring.iter().map(Vec::len).sum();
        assert_eq!(entries, wheel.positions.len());
        for (key, pos) in &wheel.positions {
            assert_eq!(wheel.ring[pos.bucket].get(pos.index), Some(key));
        }
    }

    #[test]
    fn refreshes_and_churn_within_one_tick_keep_one_entry_per_key() {
        let mut wheel = TimingWheel::new(4);
        for k in 0..100u32 {
            wheel.insert(k);
        }
        for round in 0..10 {
            for _ in 0..1000 {
                for k in 0..100u32 {
                    assert!(wheel.refresh(&k));
                }
            }
            // Remove/re-insert churn in the same interval.
            for k in (0..100u32).step_by(3) {
                assert!(wheel.remove(&k));
                wheel.insert(k);
            }
            check_invariants(&wheel);
            assert_eq!(wheel.stale_entries(), 0);
            assert_eq!(wheel.ring.iter().map(Vec::len).sum::<usize>(), 100);
            if round % 2 == 0 {
                assert!(wheel.tick().is_empty());
            }
        }
    }

    #[test]
    fn moving_keys_between_buckets_keeps_positions_consistent() {
        let mut wheel = TimingWheel::new(3);
        for t in 0..50u32 {
            for k in 0..20u32 {
                if (k + t) % 3 == 0 {
                    wheel.insert(k);
                }
                if (k * 7 + t) % 11 == 0 {
                    wheel.remove(&k);
                }
                check_invariants(&wheel);
            }
            wheel.tick();
            check_invariants(&wheel);
        }
    }

    #[test]
    fn debug_does_not_need_debug_keys() {
        struct Opaque;
        impl PartialEq for Opaque {
            fn eq(&self, _: &Self) -> bool {
                true
            }
        }
        impl Eq for Opaque {}
        impl Hash for Opaque {
            fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
        }
        impl Clone for Opaque {
            fn clone(&self) -> Self {
                Opaque
            }
        }
        let mut wheel = TimingWheel::new(2);
        wheel.insert(Opaque);
        assert_eq!(
            format!("{wheel:?}"),
            "TimingWheel { buckets: 2, current_tick: 0, len: 1 }"
        );
    }
}
