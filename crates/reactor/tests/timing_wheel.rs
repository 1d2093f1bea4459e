//! TimingWheel: exact expiry tick, refresh, remove, re-insert, and one real-time run on a
//! plain thread. The memory bound and the model-based proptest, which look inside the
//! wheel, are unit tests in `src/timing_wheel.rs`.

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use duo_reactor::TimingWheel;

fn sorted<K: Ord>(mut keys: Vec<K>) -> Vec<K> {
    keys.sort();
    keys
}

#[test]
fn unrefreshed_keys_expire_exactly_at_the_documented_tick() {
    for n in 1..=6usize {
        let mut wheel = TimingWheel::new(n);
        // Key `t` is inserted during tick interval `t`.
        for t in 0..10u64 {
            wheel.insert(t);
            assert_eq!(wheel.deadline_tick(&t), Some(t + n as u64 + 1));
            let expired = wheel.tick();
            assert_eq!(wheel.current_tick(), t + 1);
            // Returned by call number t' + n + 1 for the key inserted in interval t'.
            let due = (t + 1).checked_sub(n as u64 + 1);
            assert_eq!(expired, due.into_iter().collect::<Vec<_>>(), "n={n} t={t}");
        }
    }
}

#[test]
fn keys_refreshed_every_tick_never_expire() {
    let mut wheel = TimingWheel::new(3);
    wheel.insert(1u32);
    wheel.insert(2u32);
    for _ in 0..100 {
        assert!(wheel.refresh(&1));
        assert!(wheel.tick().is_empty());
        assert!(wheel.refresh(&2));
    }
    assert_eq!(wheel.len(), 2);
    // Key 1 was last refreshed in interval 99, key 2 in interval 100.
    assert_eq!(wheel.deadline_tick(&1), Some(103));
    assert_eq!(wheel.deadline_tick(&2), Some(104));
    let ticks: Vec<Vec<u32>> = (0..4).map(|_| wheel.tick()).collect();
    assert_eq!(ticks, [vec![], vec![], vec![1], vec![2]]);
}

#[test]
fn refresh_postpones_by_a_whole_timeout() {
    let mut wheel = TimingWheel::new(4);
    wheel.insert('a');
    wheel.tick();
    wheel.tick(); // interval 2
    assert!(wheel.refresh(&'a'));
    for tick in 3..7 {
        assert!(wheel.tick().is_empty(), "tick {tick}");
    }
    assert_eq!(wheel.tick(), ['a']); // tick 7 = 2 + 4 + 1
}

#[test]
fn each_key_is_returned_once() {
    let mut wheel = TimingWheel::new(2);
    for k in 0..1000u32 {
        wheel.insert(k);
        wheel.insert(k); // same as refresh
    }
    assert_eq!(wheel.len(), 1000);
    let mut all = Vec::new();
    for _ in 0..10 {
        wheel.tick_into(&mut all);
    }
    assert_eq!(sorted(all), (0..1000).collect::<Vec<_>>());
    assert!(wheel.is_empty());
}

#[test]
fn remove_prevents_expiry() {
    let mut wheel = TimingWheel::new(1);
    wheel.insert("closed");
    wheel.insert("idle");
    assert!(wheel.remove(&"closed"));
    assert!(!wheel.remove(&"closed"));
    assert!(!wheel.contains(&"closed"));
    assert_eq!(wheel.deadline_tick(&"closed"), None);
    assert!(wheel.tick().is_empty());
    assert_eq!(wheel.tick(), ["idle"]);
    assert!(wheel.tick().is_empty());
}

#[test]
fn reinsert_after_expiry_starts_a_new_timeout() {
    let mut wheel = TimingWheel::new(2);
    wheel.insert(7u8);
    wheel.tick();
    wheel.tick();
    assert_eq!(wheel.tick(), [7]);
    assert!(!wheel.contains(&7));
    assert!(!wheel.refresh(&7));
    wheel.insert(7); // interval 3
    assert!(wheel.contains(&7));
    assert!(wheel.tick().is_empty());
    assert!(wheel.tick().is_empty());
    assert_eq!(wheel.tick(), [7]); // tick 6
}

#[test]
fn refresh_of_unknown_key_returns_false_and_tracks_nothing() {
    let mut wheel = TimingWheel::<u64>::new(3);
    assert!(!wheel.refresh(&42));
    assert!(!wheel.contains(&42));
    assert!(wheel.is_empty());
    for _ in 0..5 {
        assert!(wheel.tick().is_empty());
    }
}

#[test]
fn zero_buckets_is_clamped_to_one() {
    let mut wheel = TimingWheel::new(0);
    assert_eq!(wheel.buckets(), 1);
    wheel.insert(1u8);
    assert!(wheel.tick().is_empty());
    assert_eq!(wheel.tick(), [1]);
}

#[test]
fn tick_into_appends_without_clearing() {
    let mut wheel = TimingWheel::new(1);
    let mut out = vec![100u32];
    wheel.insert(1);
    wheel.tick_into(&mut out);
    wheel.tick_into(&mut out);
    assert_eq!(out, [100, 1]);
}

/// Drives the wheel from a plain thread ticking every `P`, each tick at least `P` after
/// the previous one (an `Instant` deadline from the last tick). A key touched right after a
/// tick and one touched right before the next (both in the same interval) must expire
/// after an idle time in `[N·P, (N+1)·P]`, give or take the measured scheduling lateness
/// of the ticks, while a key refreshed every tick stays. A run whose ticks came so late in
/// all that the upper bound says little (a loaded machine) is run again, a few times.
#[test]
fn real_time_idle_keys_expire_within_one_tick_of_the_timeout() {
    const ATTEMPTS: usize = 5;
    let mut too_late = Vec::new();
    for _ in 0..ATTEMPTS {
        match real_time_run() {
            None => return,
            Some(lateness) => too_late.push(lateness),
        }
    }
    panic!("ticks too late to judge in all {ATTEMPTS} runs: {too_late:?}");
}

/// One run of [`real_time_idle_keys_expire_within_one_tick_of_the_timeout`]: fails on a
/// wrong expiry; `Some(lateness)` if the ticks were too late in all to judge the upper
/// bound, `None` if the run proved it.
fn real_time_run() -> Option<Duration> {
    const P: Duration = Duration::from_millis(10);
    const N: usize = 5;
    const TICKS: u64 = 2 * N as u64 + 4; // ~140 ms

    let handle = thread::spawn(|| {
        let mut wheel = TimingWheel::new(N);
        let mut touched: HashMap<&str, Instant> = HashMap::new();
        let mut expired: Vec<(&str, Instant, u64)> = Vec::new();
        let mut tick_at = vec![Instant::now()]; // tick_at[t]: when tick t happened
        wheel.insert("busy");
        let mut out = Vec::new();
        for t in 1..=TICKS {
            let deadline = tick_at[t as usize - 1] + P;
            let mut now = Instant::now();
            while now < deadline {
                thread::sleep(deadline - now);
                now = Instant::now();
            }
            if t == 3 {
                // Late in interval 2, just before tick 3.
                wheel.insert("late");
                touched.insert("late", Instant::now());
            }
            wheel.tick_into(&mut out);
            let at = Instant::now();
            tick_at.push(at);
            expired.extend(out.drain(..).map(|k| (k, at, t)));
            if t == 2 {
                // Early in interval 2, just after tick 2.
                wheel.insert("early");
                touched.insert("early", Instant::now());
            }
            assert!(wheel.refresh(&"busy"));
        }
        (touched, expired, tick_at)
    });
    let (touched, expired, tick_at) = handle.join().unwrap();

    assert_eq!(expired.len(), 2, "{expired:?}");
    let timeout = P * N as u32;
    let mut worst = Duration::ZERO;
    for (key, at, tick) in expired {
        // Both were touched during interval 2: due at tick 2 + N + 1.
        assert_eq!(tick, 2 + N as u64 + 1, "{key}");
        let idle = at - touched[key];
        assert!(idle >= timeout, "{key} expired early: idle {idle:?}");
        // Idle at most the span of interval 2 and the N after it: (N + 1)·P plus however
        // late the thread was scheduled for those ticks.
        let span = tick_at[tick as usize] - tick_at[2];
        assert!(idle <= span, "{key}: idle {idle:?} > span {span:?}");
        worst = worst.max(span.saturating_sub(timeout + P));
    }
    (worst >= Duration::from_millis(200)).then_some(worst)
}
