//! Hostile review of issue 10 ("The trait, version 2"): entries with
//! deadlines, the promotion protocol of `Layered`, watchers, Redis
//! deadlines and `Keyed`.
//!
//! Orders between threads are forced with gates inside test layers (a
//! thread parks inside a layer call until the test lets it go), never with
//! sleeps. Real time passes only where a Redis server has to count it.
//!
//! Tests marked `#[ignore]` with a `// BUG:` comment demonstrate a defect
//! (`// LIMIT:` a documented limit, `// NOT YET:` work of a later issue)
//! and fail today; run them with `--ignored`. The others guard behaviour
//! that held up under attack.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use layercache::codec::{Bincode, Codec};
use layercache::testing::{RedisServer, Watched};
use layercache::{
    Cache, CacheExt, Clock, CodecKeys, Entry, Error, ErrorPolicy, FileCache, Invalidation,
    JsonKeys, KeyCodec, Keyed, Layered, ManualClock, MemoryCache, RedisCache, Serialised,
    SystemClock, Timestamp, Watcher,
};

#[path = "support/gates.rs"]
mod gates;
use gates::*;

// ---------------------------------------------------------------------------
// Test layers: a bounded (evicting) layer here; the probe with hooks around
// every call and the gates are in tests/support/gates.rs.
// ---------------------------------------------------------------------------

/// A small first-in-first-out cache: holds at most `cap` entries and
/// evicts the oldest, as a bounded top layer does. Keeps deadlines.
struct Bounded {
    cap: usize,
    items: Mutex<VecDeque<(String, Entry<u32>)>>,
    clock: Arc<dyn Clock>,
}

impl Bounded {
    fn new(cap: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            cap,
            items: Mutex::new(VecDeque::new()),
            clock,
        }
    }
}

impl fmt::Debug for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bounded({})", self.cap)
    }
}

impl Cache<String, u32> for Bounded {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<u32>>> {
        let now = self.clock.now();
        let mut items = self.items.lock().unwrap();
        let Some(at) = items.iter().position(|(k, _)| k == key) else {
            return Ok(None);
        };
        if items[at].1.is_expired(now) {
            items.remove(at);
            return Ok(None);
        }
        Ok(Some(items[at].1))
    }
    fn set_entry(&self, key: String, entry: Entry<u32>) -> layercache::Result<()> {
        let mut items = self.items.lock().unwrap();
        items.retain(|(k, _)| *k != key);
        if entry.is_expired(self.clock.now()) {
            return Ok(());
        }
        items.push_back((key, entry));
        while items.len() > self.cap {
            items.pop_front();
        }
        Ok(())
    }
    fn remove(&self, key: &String) -> layercache::Result<Option<u32>> {
        let now = self.clock.now();
        let mut items = self.items.lock().unwrap();
        let at = items.iter().position(|(k, _)| k == key);
        Ok(at
            .and_then(|at| items.remove(at))
            .filter(|(_, e)| !e.is_expired(now))
            .map(|(_, e)| e.value))
    }
    fn keys(&self) -> layercache::Result<Vec<String>> {
        let now = self.clock.now();
        Ok(self
            .items
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| !e.is_expired(now))
            .map(|(k, _)| k.clone())
            .collect())
    }
    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }
}

// ---------------------------------------------------------------------------
// 1. Promotion
// ---------------------------------------------------------------------------

/// What overlaps the promotion in [`race_promotion`].
#[derive(Clone, Copy, Debug)]
enum Overlap {
    Set,
    Remove,
    Clear,
    ClearMatching,
    /// Another process writes the bottom (a watched layer) and reports it.
    Invalidation,
}

/// What the bottom holds after each overlap.
fn expected_after(overlap: Overlap) -> Option<u32> {
    match overlap {
        Overlap::Set | Overlap::Invalidation => Some(1),
        Overlap::Remove | Overlap::Clear | Overlap::ClearMatching => None,
    }
}

struct Race {
    /// What a `get` through the stack answered after the overlapping call
    /// had returned, while the promotion's write was in the top layer and
    /// its undo had not run yet.
    read_in_window: Option<u32>,
    /// What the promoting `get` returned.
    promoted: Option<u32>,
    top: Option<u32>,
    bottom: Option<u32>,
    /// What a `get` through the stack answers after everything finished.
    after: Option<u32>,
}

/// A bounded top over a watched bottom. `k` is 0 in the bottom only (the
/// top evicted it). A `get` promotes 0; its write into the top is parked
/// before it lands while `overlap` runs to completion, then lands (over
/// whatever the overlap did), then is parked again so the test can read
/// through the stack, then the promotion finishes.
fn race_promotion(overlap: Overlap) -> Race {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new());
    let top = Arc::new(Probe::new(Bounded::new(1, clock.clone())));
    let bottom = Arc::new(Watched::new(MemoryCache::new().with_clock(clock.clone())));
    let stack = Arc::new(
        Layered::new()
            .with_layer(top.clone())
            .with_layer(bottom.clone()),
    );
    stack.set(k("k"), 0).unwrap();
    stack.set(k("other"), 9).unwrap(); // evicts k from the top
    assert_eq!(top.get(&k("k")).unwrap(), None, "evicted");

    let (gate, ctl) = gate();
    let (before, after) = (once(), once());
    top.hook(move |at, key, value| {
        if key != "k" || value != Some(0) {
            return;
        }
        match at {
            At::BeforeSet if before.swap(false, Ordering::SeqCst) => gate.pause("before"),
            At::AfterSet if after.swap(false, Ordering::SeqCst) => gate.pause("after"),
            _ => {}
        }
    });
    let promoting = {
        let stack = stack.clone();
        thread::spawn(move || stack.get(&k("k")).unwrap())
    };
    ctl.reached("before");
    match overlap {
        Overlap::Set => stack.set(k("k"), 1).unwrap(),
        Overlap::Remove => {
            stack.remove(&k("k")).unwrap();
        }
        Overlap::Clear => stack.clear().unwrap(),
        Overlap::ClearMatching => {
            stack.clear_matching(&|key: &String| key == "k").unwrap();
        }
        Overlap::Invalidation => bottom.write_elsewhere(k("k"), 1).unwrap(),
    }
    ctl.release();
    ctl.reached("after");
    let read_in_window = stack.get(&k("k")).unwrap();
    ctl.release();
    let promoted = promoting.join().unwrap();
    top.unhook();
    Race {
        read_in_window,
        promoted,
        top: top.inner.get(&k("k")).unwrap(),
        bottom: bottom.get(&k("k")).unwrap(),
        after: stack.get(&k("k")).unwrap(),
    }
}

/// Guard: whatever overlaps a promotion (set, remove, clear,
/// clear_matching, a reported change), once everything has finished the
/// top holds nothing older than the bottom and the stack reads the bottom's
/// value. The promotion's write landed after the overlap and was undone.
#[test]
fn promotion_overlapped_by_any_write_is_undone_once_everything_finished() {
    for overlap in [
        Overlap::Set,
        Overlap::Remove,
        Overlap::Clear,
        Overlap::ClearMatching,
        Overlap::Invalidation,
    ] {
        let race = race_promotion(overlap);
        let want = expected_after(overlap);
        assert_eq!(race.promoted, Some(0), "{overlap:?}: the read itself");
        assert_eq!(race.bottom, want, "{overlap:?}");
        assert_eq!(race.top, None, "{overlap:?}: the promotion was undone");
        assert_eq!(race.after, want, "{overlap:?}");
    }
}

// Guard (was a bug): a `get` that starts after `set(k, 1)` (or `remove`,
// `clear`, `clear_matching`, a reported change) has returned never answers
// the old value, even while a promotion that read it has written it to the
// top and not yet undone it: the read sees the promotion in flight on the
// key's stripe and reads the lower layers.
#[test]
fn no_stale_hit_after_an_overlapping_write_returned() {
    for overlap in [
        Overlap::Set,
        Overlap::Remove,
        Overlap::Clear,
        Overlap::ClearMatching,
        Overlap::Invalidation,
    ] {
        let race = race_promotion(overlap);
        assert_eq!(
            race.read_in_window,
            expected_after(overlap),
            "{overlap:?}: a get after the {overlap:?} returned served the value from before it"
        );
    }
}

// LIMIT: the promotion's undo is a plain `remove` whose failure is only
// reported. When the top layer cannot remove at that moment (a remote top
// that blips), the promoted value, older than the one `set` wrote below it,
// stays in the top for good: every later `get` serves it. The stack has no
// record that the key is suspect (it does not even skip the top until a
// later write). Under `Degrade` nothing fails at all.
#[test]
#[ignore = "LIMIT (documented in Layered's docs and concepts.md): a failed undo leaves the promoted value"]
fn a_failed_undo_does_not_leave_an_older_value_in_the_top() {
    let top = Arc::new(Probe::new(MemoryCache::new()));
    let bottom = Arc::new(MemoryCache::new());
    let stack = Arc::new(
        Layered::new()
            .with_layer(top.clone())
            .with_layer(bottom.clone())
            .with_policy(ErrorPolicy::Degrade),
    );
    bottom.set(k("k"), 0).unwrap();
    let (gate, ctl) = gate();
    let before = once();
    let probe = top.clone();
    top.hook(move |at, key, value| {
        if at == At::BeforeSet
            && key == "k"
            && value == Some(0)
            && before.swap(false, Ordering::SeqCst)
        {
            gate.pause("before");
            // The top's backend goes down right after this write.
            probe.fail_removes.store(true, Ordering::SeqCst);
        }
    });
    let promoting = {
        let stack = stack.clone();
        thread::spawn(move || stack.get(&k("k")).unwrap())
    };
    ctl.reached("before");
    stack.set(k("k"), 1).unwrap();
    ctl.release();
    assert_eq!(promoting.join().unwrap(), Some(0));
    top.fail_removes.store(false, Ordering::SeqCst); // the backend is back
    top.unhook();
    assert_eq!(bottom.get(&k("k")).unwrap(), Some(1));
    assert_eq!(
        stack.get(&k("k")).unwrap(),
        Some(1),
        "the top kept the promoted 0 after set(k, 1) finished (failures: {})",
        stack.failures()
    );
}

// LIMIT: a layer that panics inside `set_entry` *after* storing (a bug in the
// layer, a panicking Drop of the old value, an allocation failure) during a
// promotion unwinds past the undo. If a `set` overlapped, the layer keeps
// the older promoted value for good, below a top that has the new one:
// once the top evicts the key, every read serves the old value. A drop
// guard around the promotion's writes would undo on unwind too. (The stripe
// itself is not left busy: see the guard test below.)
#[test]
#[ignore = "LIMIT (documented in Layered's docs and concepts.md): a layer that panics after storing keeps what it stored"]
fn a_panicking_middle_layer_does_not_keep_an_older_promoted_value() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new());
    let top = Arc::new(Bounded::new(1, clock.clone()));
    let middle = Arc::new(Probe::new(MemoryCache::new()));
    let bottom = Arc::new(MemoryCache::new());
    let stack = Arc::new(
        Layered::new()
            .with_layer(top.clone())
            .with_layer(middle.clone())
            .with_layer(bottom.clone()),
    );
    bottom.set(k("k"), 0).unwrap();
    let (gate, ctl) = gate();
    let (before, after) = (once(), once());
    middle.hook(move |at, key, value| {
        if key != "k" || value != Some(0) {
            return;
        }
        match at {
            At::BeforeSet if before.swap(false, Ordering::SeqCst) => gate.pause("before"),
            At::AfterSet if after.swap(false, Ordering::SeqCst) => {
                panic!("the middle layer panics after storing")
            }
            _ => {}
        }
    });
    let promoting = {
        let stack = stack.clone();
        thread::spawn(move || stack.get(&k("k")))
    };
    ctl.reached("before");
    stack.set(k("k"), 1).unwrap();
    ctl.release();
    assert!(promoting.join().is_err(), "the promotion panicked");
    middle.unhook();
    stack.set(k("evict"), 5).unwrap(); // the bounded top evicts k
    assert_eq!(bottom.get(&k("k")).unwrap(), Some(1));
    assert_eq!(
        stack.get(&k("k")).unwrap(),
        Some(1),
        "the middle layer kept the promoted 0 after set(k, 1) finished"
    );
}

/// Guard: a layer that panics inside `set` (through the stack) or inside a
/// promotion does not leave the key's stripe busy: later promotions of the
/// key still happen, and a later `set` still works.
#[test]
fn a_panicking_layer_does_not_leave_the_stripe_busy() {
    let top = Arc::new(Probe::new(MemoryCache::new()));
    let bottom = Arc::new(MemoryCache::new());
    let stack = Layered::new()
        .with_layer(top.clone())
        .with_layer(bottom.clone());
    top.hook(|at, _, _| {
        if at == At::BeforeSet {
            panic!("top layer panics in set")
        }
    });
    let outcome = catch_unwind(AssertUnwindSafe(|| stack.set(k("k"), 1)));
    assert!(outcome.is_err(), "set panicked through the stack");
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        bottom.set(k("p"), 3).unwrap();
        stack.get(&k("p"))
    }));
    assert!(outcome.is_err(), "the promotion panicked through get");
    let outcome = catch_unwind(AssertUnwindSafe(|| stack.clear()));
    assert!(outcome.is_ok(), "clear does not set");
    top.unhook();
    // If a stripe had been left with a writer in flight, these promotions
    // would be skipped for good.
    for key in ["k", "p"] {
        bottom.set(k(key), 7).unwrap();
        assert_eq!(stack.get(&k(key)).unwrap(), Some(7));
        assert_eq!(top.get(&k(key)).unwrap(), Some(7), "{key} promoted");
    }
    // A report that panics in the layer above does not leave it busy
    // either.
    let shared = Arc::new(Watched::new(MemoryCache::new()));
    let top2 = Arc::new(Probe::new(MemoryCache::new()));
    let stack2 = Layered::new()
        .with_layer(top2.clone())
        .with_layer(shared.clone());
    top2.hook(|at, _, _| {
        if at == At::BeforeRemove {
            panic!("top layer panics in remove")
        }
    });
    let outcome = catch_unwind(AssertUnwindSafe(|| shared.write_elsewhere(k("w"), 1)));
    assert!(outcome.is_err(), "the report panicked");
    top2.unhook();
    shared.inner().set(k("w"), 2).unwrap();
    assert_eq!(stack2.get(&k("w")).unwrap(), Some(2));
    assert_eq!(
        top2.get(&k("w")).unwrap(),
        Some(2),
        "w promoted after the panic"
    );
}

/// Guard: a promotion whose write lands after the entry's deadline has
/// passed stores nothing (the top refuses a dead entry), and the promoted
/// entry carries the source's deadline, never a later one.
#[test]
fn a_late_promotion_never_outlives_its_source() {
    let clock = Arc::new(ManualClock::new());
    let top = Arc::new(Probe::new(MemoryCache::new().with_clock(clock.clone())));
    let bottom = Arc::new(MemoryCache::new().with_clock(clock.clone()));
    let stack = Arc::new(
        Layered::new()
            .with_layer(top.clone())
            .with_layer(bottom.clone()),
    );
    bottom
        .set_with_freshness(k("k"), 4, Duration::from_secs(5), Duration::from_secs(10))
        .unwrap();
    let source = bottom.get_entry(&k("k")).unwrap().unwrap();
    let (gate, ctl) = gate();
    let before = once();
    top.hook(move |at, key, _| {
        if at == At::BeforeSet && key == "k" && before.swap(false, Ordering::SeqCst) {
            gate.pause("before");
        }
    });
    let promoting = {
        let stack = stack.clone();
        thread::spawn(move || stack.get_entry(&k("k")).unwrap())
    };
    ctl.reached("before");
    clock.advance(Duration::from_secs(11));
    ctl.release();
    assert_eq!(promoting.join().unwrap(), Some(source));
    top.unhook();
    assert_eq!(top.inner.len(), 0, "a dead entry was promoted");
    assert_eq!(stack.get(&k("k")).unwrap(), None);

    // In time, the promoted entry has exactly the source's deadlines.
    clock.advance(Duration::from_secs(1));
    bottom
        .set_with_freshness(k("k"), 5, Duration::from_secs(5), Duration::from_secs(10))
        .unwrap();
    let source = bottom.get_entry(&k("k")).unwrap().unwrap();
    assert_eq!(stack.get_entry(&k("k")).unwrap(), Some(source));
    assert_eq!(top.get_entry(&k("k")).unwrap(), Some(source));
    clock.advance(Duration::from_secs(10));
    assert_eq!(stack.get(&k("k")).unwrap(), None);
    assert_eq!(top.get(&k("k")).unwrap(), None);
}

/// Guard: nested stacks. An outer stack's promotion out of an inner stack
/// (which promotes too) overlapped by a `set` through the outer stack is
/// undone at both levels; the same for a change reported from the inner
/// stack's bottom.
#[test]
fn nested_promotions_overlapped_by_writes_are_undone_at_both_levels() {
    for reported in [false, true] {
        let outer_top = Arc::new(Probe::new(MemoryCache::new()));
        let inner_top = Arc::new(MemoryCache::new());
        let shared = Arc::new(Watched::new(MemoryCache::new()));
        let inner = Layered::new()
            .with_layer(inner_top.clone())
            .with_layer(shared.clone());
        let outer = Arc::new(
            Layered::new()
                .with_layer(outer_top.clone())
                .with_layer(inner),
        );
        shared.inner().set(k("k"), 0).unwrap();
        let (gate, ctl) = gate();
        let (before, after) = (once(), once());
        outer_top.hook(move |at, key, value| {
            if key != "k" || value != Some(0) {
                return;
            }
            match at {
                At::BeforeSet if before.swap(false, Ordering::SeqCst) => gate.pause("before"),
                At::AfterSet if after.swap(false, Ordering::SeqCst) => gate.pause("after"),
                _ => {}
            }
        });
        let promoting = {
            let outer = outer.clone();
            thread::spawn(move || outer.get(&k("k")).unwrap())
        };
        ctl.reached("before");
        assert_eq!(inner_top.get(&k("k")).unwrap(), Some(0), "inner promoted");
        if reported {
            shared.write_elsewhere(k("k"), 1).unwrap();
        } else {
            outer.set(k("k"), 1).unwrap();
        }
        ctl.release();
        ctl.reached("after");
        ctl.release();
        assert_eq!(promoting.join().unwrap(), Some(0));
        outer_top.unhook();
        assert_eq!(
            outer_top.inner.get(&k("k")).unwrap(),
            None,
            "reported={reported}"
        );
        let inner_has = inner_top.get(&k("k")).unwrap();
        assert!(
            inner_has.is_none() || inner_has == Some(1),
            "reported={reported}: inner top {inner_has:?}"
        );
        assert_eq!(outer.get(&k("k")).unwrap(), Some(1), "reported={reported}");
    }
}

/// Guard: one writer thread (sets, removes, clear_matching) and three
/// reader threads (gets, which promote) over a bounded top, a middle and a
/// bottom layer, flat and as a nested stack. Once all have finished, every
/// layer holds either nothing or the writer's last value for each key, and
/// the bottom holds exactly that value.
#[test]
fn readers_promoting_against_a_writer_leave_the_stack_coherent() {
    const KEYS: u64 = 6;
    const READERS: u64 = 3;
    const OPS: u64 = 20_000;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    for nested in [false, true] {
        let top = Arc::new(Bounded::new(2, clock.clone()));
        let middle = Arc::new(MemoryCache::<String, u32>::new());
        let bottom = Arc::new(MemoryCache::<String, u32>::new());
        let stack: Arc<Layered<String, u32>> = if nested {
            let inner = Layered::new()
                .with_layer(middle.clone())
                .with_layer(bottom.clone());
            Arc::new(Layered::new().with_layer(top.clone()).with_layer(inner))
        } else {
            Arc::new(
                Layered::new()
                    .with_layer(top.clone())
                    .with_layer(middle.clone())
                    .with_layer(bottom.clone()),
            )
        };
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..READERS)
            .map(|t| {
                let stack = stack.clone();
                let done = done.clone();
                thread::spawn(move || {
                    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (t + 1);
                    while !done.load(Ordering::Relaxed) {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        stack.get(&format!("k{}", seed % KEYS)).unwrap();
                    }
                })
            })
            .collect();
        let mut expected: Vec<Option<u32>> = vec![None; KEYS as usize];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for n in 0..OPS {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % KEYS) as usize;
            let key = format!("k{at}");
            match (seed >> 8) % 10 {
                0..=6 => {
                    stack.set(key, n as u32).unwrap();
                    expected[at] = Some(n as u32);
                }
                7 | 8 => {
                    stack.remove(&key).unwrap();
                    expected[at] = None;
                }
                _ => {
                    stack.clear_matching(&|k: &String| *k == key).unwrap();
                    expected[at] = None;
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().unwrap();
        }
        for (at, want) in expected.iter().enumerate() {
            let key = format!("k{at}");
            let held = [
                top.get(&key).unwrap(),
                middle.get(&key).unwrap(),
                bottom.get(&key).unwrap(),
            ];
            assert_eq!(held[2], *want, "nested={nested} {key}: bottom");
            assert!(
                held.iter().all(|h| h.is_none() || h == want),
                "nested={nested} {key}: a layer holds another value than the last write {want:?}: {held:?}"
            );
            assert_eq!(stack.get(&key).unwrap(), *want, "nested={nested} {key}");
        }
    }
}

// Guard (was a bug): two overlapping `set`s of one key leave no upper
// layer disagreeing with the bottom: the set that saw the overlap drops the
// key from the upper layers before it returns.
#[test]
fn overlapping_sets_leave_every_layer_with_the_same_value() {
    let top = Arc::new(MemoryCache::new());
    let bottom = Arc::new(Probe::new(MemoryCache::new()));
    let stack = Arc::new(
        Layered::new()
            .with_layer(top.clone())
            .with_layer(bottom.clone()),
    );
    let (gate, ctl) = gate();
    let before = once();
    bottom.hook(move |at, key, value| {
        if at == At::BeforeSet
            && key == "k"
            && value == Some(1)
            && before.swap(false, Ordering::SeqCst)
        {
            gate.pause("before");
        }
    });
    let first = {
        let stack = stack.clone();
        thread::spawn(move || stack.set(k("k"), 1).unwrap())
    };
    ctl.reached("before");
    stack.set(k("k"), 2).unwrap();
    ctl.release();
    first.join().unwrap();
    bottom.unhook();
    let held = (top.get(&k("k")).unwrap(), bottom.get(&k("k")).unwrap());
    assert!(
        held.0.is_none() || held.0 == held.1,
        "top and bottom disagree after both sets returned: {held:?}"
    );
    assert_eq!(
        stack.get(&k("k")).unwrap(),
        held.1,
        "reads give the bottom's value"
    );
}

// ---------------------------------------------------------------------------
// 2. Deadlines
// ---------------------------------------------------------------------------

// Guard (was a bug): `MemoryCache::clear_matching` drops expired entries
// whether or not they match, and counts only live ones.
#[test]
fn memory_clear_matching_drops_expired_entries_as_documented() {
    let clock = Arc::new(ManualClock::new());
    let cache = MemoryCache::with_shards(1).with_clock(clock.clone());
    cache
        .set_with_ttl(k("dead"), 1u32, Duration::from_secs(1))
        .unwrap();
    cache.set(k("live"), 2).unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        cache.clear_matching(&|_| true).unwrap(),
        1,
        "counts the live one only"
    );
    assert_eq!(cache.len(), 0, "the expired entry is still held");
}

// Guard (was a bug): `set_entry` of an already-expired entry removes what
// a FileCache held, as the trait says, instead of refusing it.
#[test]
fn file_set_entry_of_an_expired_entry_removes_the_old_value() {
    let dir = tempfile::tempdir().unwrap();
    let file: FileCache = FileCache::open(dir.path().join("c.lc")).unwrap();
    file.set(k("k"), b"old".to_vec()).unwrap();
    let past = Entry::new(b"new".to_vec()).with_expires(Timestamp::from_millis(1));
    let outcome = file.set_entry(k("k"), past);
    assert_eq!(
        file.get(&k("k")).unwrap(),
        None,
        "set_entry of an expired entry answered {outcome:?} and kept the old value"
    );
}

/// Guard: every cache and wrapper, given an entry that has already
/// expired, stores nothing and drops what was there (a stack also when a
/// layer refuses deadlines); none returns an expired value from `remove`,
/// lists it in `keys`/`values`, or counts it in `clear_matching`.
#[test]
fn expired_entries_vanish_through_every_wrapper() {
    let clock = Arc::new(ManualClock::new());
    let memory = || MemoryCache::<String, Vec<u8>>::new().with_clock(clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let file: FileCache = FileCache::open(dir.path().join("c.lc")).unwrap();
    type Named = (&'static str, Box<dyn Cache<String, Vec<u8>>>);
    let caches: Vec<Named> = vec![
        ("memory", Box::new(memory())),
        (
            "layered memory/file",
            Box::new(Layered::new().with_layer(memory()).with_layer(file)),
        ),
        (
            "layered memory/memory",
            Box::new(Layered::new().with_layer(memory()).with_layer(memory())),
        ),
        (
            "keyed",
            Box::new(Keyed::new(
                Serialised::new(memory(), layercache::codec::Json),
                JsonKeys,
            )),
        ),
    ];
    for (name, cache) in &caches {
        let key = k("k");
        cache.set(key.clone(), b"old".to_vec()).unwrap();
        let dead = Entry::new(b"new".to_vec()).with_expires(clock.now());
        let outcome = cache.set_entry(key.clone(), dead);
        assert!(
            outcome.is_ok() || matches!(outcome, Err(Error::Layer { .. })),
            "{name}: {outcome:?}"
        );
        assert_eq!(
            cache.get(&key).unwrap(),
            None,
            "{name}: the old value stayed"
        );

        cache
            .set_with_ttl(k("t"), b"t".to_vec(), Duration::from_secs(1))
            .or_else(|e| match e {
                Error::Layer { .. } => Ok(()), // the file refused; the top kept it
                e => Err(e),
            })
            .unwrap();
        cache.set(k("p"), b"p".to_vec()).unwrap();
        clock.advance(Duration::from_secs(2));
        assert_eq!(cache.keys().unwrap(), vec![k("p")], "{name}: keys");
        assert_eq!(
            cache.values().unwrap(),
            vec![b"p".to_vec()],
            "{name}: values"
        );
        assert_eq!(cache.remove(&k("t")).unwrap(), None, "{name}: remove");
        cache
            .set_with_ttl(k("t"), b"t".to_vec(), Duration::from_secs(1))
            .or_else(|e| match e {
                Error::Layer { .. } => Ok(()),
                e => Err(e),
            })
            .unwrap();
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            cache.clear_matching(&|_| true).unwrap(),
            1,
            "{name}: clear_matching counted an expired entry"
        );
    }
}

/// Guard: `Serialised` (strict or not) and `Keyed` pass both deadlines
/// through unchanged, and a strict decode failure leaves the entry (and
/// its deadline) alone.
#[test]
fn wrappers_keep_both_deadlines() {
    let clock = Arc::new(ManualClock::new());
    let now = clock.now();
    let entry = Entry::new(vec![1u32, 2])
        .with_expires(now + Duration::from_secs(60))
        .with_fresh_until(now + Duration::from_secs(6));
    for strict in [false, true] {
        let bytes = MemoryCache::<String, Vec<u8>>::new().with_clock(clock.clone());
        let typed = Serialised::unversioned(bytes, Bincode::new()).strict(strict);
        typed.set_entry(k("k"), entry.clone()).unwrap();
        assert_eq!(typed.get_entry(&k("k")).unwrap(), Some(entry.clone()));
        let inner = typed.inner().get_entry(&k("k")).unwrap().unwrap();
        assert_eq!(
            (inner.expires(), inner.fresh_until()),
            (entry.expires(), entry.fresh_until())
        );
        // Bytes that are not a Vec<u32> with a deadline.
        typed
            .inner()
            .set_entry(
                k("bad"),
                Entry::new(vec![0xff; 3]).with_expires(now + Duration::from_secs(60)),
            )
            .unwrap();
        let got: layercache::Result<Option<Vec<u32>>> = typed.get(&k("bad"));
        if strict {
            assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
            assert!(typed.inner().get(&k("bad")).unwrap().is_some(), "kept");
        } else {
            assert_eq!(got.unwrap(), None);
        }
        let keyed = Keyed::new(typed, JsonKeys).with_namespace("n:");
        keyed.set_entry(7u64, entry.clone()).unwrap();
        assert_eq!(keyed.get_entry(&7u64).unwrap(), Some(entry.clone()));
        clock.advance(Duration::from_secs(60));
        let gone: Option<Vec<u32>> = keyed.get(&7u64).unwrap();
        assert_eq!(gone, None);
        clock.set(now);
    }
}

/// Guard: deadline arithmetic saturates instead of overflowing or
/// panicking, a clock at the end of time does not panic, and a clock that
/// goes backwards makes entries follow it (an entry not yet dropped is
/// served again: deadlines are wall-clock instants).
#[test]
fn deadline_arithmetic_saturates_and_clocks_may_go_backwards() {
    let end = Timestamp::MAX;
    assert_eq!(end + Duration::MAX, end);
    assert_eq!(Timestamp::UNIX_EPOCH - end, Duration::ZERO);
    let _ = end.to_system_time(); // no overflow
    let entry = Entry::new(1u32).with_expires(end);
    assert!(entry.expires().is_some(), "MAX is a deadline, not 'never'");
    assert_eq!(
        entry.time_to_live(Timestamp::UNIX_EPOCH).map(|_| ()),
        Some(())
    );

    let clock = Arc::new(ManualClock::starting_at(Timestamp::from_millis(
        u64::MAX - 10,
    )));
    let cache = MemoryCache::<String, u32>::new().with_clock(clock.clone());
    cache.set_with_ttl(k("a"), 1, Duration::MAX).unwrap();
    cache
        .set_with_freshness(k("b"), 2, Duration::MAX, Duration::from_millis(5))
        .unwrap();
    clock.advance(Duration::MAX);
    assert_eq!(clock.now(), Timestamp::MAX);
    assert_eq!(cache.get(&k("b")).unwrap(), None);
    cache.purge_expired();

    let clock = Arc::new(ManualClock::new());
    let cache = MemoryCache::<String, u32>::new().with_clock(clock.clone());
    let start = clock.now();
    cache
        .set_with_ttl(k("k"), 1, Duration::from_secs(10))
        .unwrap();
    clock.advance(Duration::from_secs(20));
    assert_eq!(cache.keys().unwrap(), Vec::<String>::new());
    clock.set(start); // NTP stepped the clock back before any read dropped it
    assert_eq!(cache.get(&k("k")).unwrap(), Some(1));
    clock.advance(Duration::from_secs(20));
    assert_eq!(cache.get(&k("k")).unwrap(), None, "dropped by this read");
    clock.set(start);
    assert_eq!(cache.get(&k("k")).unwrap(), None, "and gone for good");
}

/// Guard: the coarse system clock (the crate's one new `unsafe`) agrees
/// with `SystemTime` from many threads at once and never runs backwards on
/// one thread by more than the kernel's own steps.
#[test]
fn the_coarse_clock_agrees_with_system_time_across_threads() {
    let workers: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(|| {
                let mut last = SystemClock.now();
                for _ in 0..200_000 {
                    let now = SystemClock.now();
                    assert!(now >= last, "went back from {last:?} to {now:?}");
                    last = now;
                }
                let exact = Timestamp::from_system_time(std::time::SystemTime::now());
                assert!(last <= exact && exact - last < Duration::from_millis(50));
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
}

// ---------------------------------------------------------------------------
// 3. Watchers
// ---------------------------------------------------------------------------

// Guard (was a bug): a stack's watcher on a layer it took out says it is
// inactive, so a layer taken out and put back many times holds one watcher.
#[test]
fn a_layer_taken_out_and_put_back_does_not_collect_watchers() {
    let shared = Arc::new(Watched::new(MemoryCache::<String, u32>::new()));
    let mut stack = Layered::new().with_layer(MemoryCache::new());
    for _ in 0..1_000 {
        stack.insert_layer(1, shared.clone());
        stack.remove_layer(1).unwrap();
    }
    stack.insert_layer(1, shared.clone());
    shared.write_elsewhere(k("k"), 1).unwrap(); // prunes inactive watchers
    assert_eq!(shared.watchers(), 1, "watchers kept by one stack");
}

/// A layer that reports a change of every key it stores from inside its
/// own `set_entry` (with no lock of its own held), as a store whose change
/// notifications arrive synchronously would, and reports `All` when
/// dropped.
struct Noisy {
    inner: MemoryCache<String, u32>,
    watchers: Mutex<Vec<Arc<dyn Watcher<String>>>>,
    drops: Arc<AtomicUsize>,
}

impl Noisy {
    fn new(drops: Arc<AtomicUsize>) -> Self {
        Self {
            inner: MemoryCache::new(),
            watchers: Mutex::new(Vec::new()),
            drops,
        }
    }
    fn report(&self, invalidation: Invalidation<'_, String>) {
        let watchers = self.watchers.lock().unwrap().clone();
        for watcher in watchers {
            watcher.invalidated(invalidation);
        }
    }
}

impl fmt::Debug for Noisy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Noisy")
    }
}

impl Drop for Noisy {
    fn drop(&mut self) {
        self.report(Invalidation::All);
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

impl Cache<String, u32> for Noisy {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<u32>>> {
        self.inner.get_entry(key)
    }
    fn set_entry(&self, key: String, entry: Entry<u32>) -> layercache::Result<()> {
        self.inner.set_entry(key.clone(), entry)?;
        self.report(Invalidation::Key(&key));
        Ok(())
    }
    fn remove(&self, key: &String) -> layercache::Result<Option<u32>> {
        let removed = self.inner.remove(key)?;
        self.report(Invalidation::Key(key));
        Ok(removed)
    }
    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
    fn watch(&self, watcher: Arc<dyn Watcher<String>>) -> bool {
        self.watchers.lock().unwrap().push(watcher);
        true
    }
}

/// Guard: no deadlock and no panic when a layer reports from inside its
/// own `set`/`remove`, when the stack's watcher calls back into the stack
/// (get, set, remove, watch, clear), across nested stacks, and when layers
/// report while the stack is being dropped.
#[test]
fn reentrant_reports_neither_deadlock_nor_panic() {
    finishes_within(Duration::from_secs(30), "re-entrant reports", || {
        let drops = Arc::new(AtomicUsize::new(0));
        let top = Arc::new(MemoryCache::<String, u32>::new());
        let noisy = Noisy::new(drops.clone());
        let inner = Layered::new().with_layer(top.clone()).with_layer(noisy);
        let outer_top = Arc::new(MemoryCache::<String, u32>::new());
        let outer = Arc::new(
            Layered::new()
                .with_layer(outer_top.clone())
                .with_layer(inner),
        );
        let heard = Arc::new(AtomicUsize::new(0));
        let weak: Weak<Layered<String, u32>> = Arc::downgrade(&outer);
        let count = heard.clone();
        let busy = Arc::new(AtomicBool::new(false));
        let watcher: Arc<dyn Watcher<String>> = Arc::new(move |inv: Invalidation<'_, String>| {
            count.fetch_add(1, Ordering::SeqCst);
            let Some(stack) = weak.upgrade() else { return };
            if busy.swap(true, Ordering::SeqCst) {
                return; // one level of re-entry is enough
            }
            if let Invalidation::Key(key) = inv {
                let _ = stack.get(key).unwrap();
                stack.set(format!("{key}-seen"), 1).unwrap();
                let _ = stack.remove(&format!("{key}-seen")).unwrap();
            }
            let noop: Arc<dyn Watcher<String>> = Arc::new(|_: Invalidation<'_, String>| {});
            stack.watch(noop);
            stack
                .clear_matching(&|k: &String| k.ends_with("-gone"))
                .unwrap();
            busy.store(false, Ordering::SeqCst);
        });
        assert!(outer.watch(watcher));
        // A set through the outer stack makes the noisy bottom report from
        // inside its set: the stack drops the key above it again.
        outer.set(k("k"), 1).unwrap();
        assert!(heard.load(Ordering::SeqCst) > 0);
        assert_eq!(outer.get(&k("k")).unwrap(), Some(1));
        outer.remove(&k("k")).unwrap();
        assert_eq!(outer.get(&k("k")).unwrap(), None);
        // Dropping the stack drops the noisy layer, which reports All.
        drop(outer);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

/// Guard: a layer taken out of a stack and replaced reports nothing to the
/// stack any more, even about keys the new layer at that depth holds; a
/// report racing `remove_layer`/`insert_layer` on other threads neither
/// deadlocks nor acts on the wrong layer.
#[test]
fn reports_after_remove_layer_reach_nothing() {
    let top = Arc::new(MemoryCache::<String, u32>::new());
    let old = Arc::new(Watched::new(MemoryCache::<String, u32>::new()));
    let new = Arc::new(Watched::new(MemoryCache::<String, u32>::new()));
    let mut stack = Layered::new()
        .with_layer(top.clone())
        .with_layer(old.clone());
    stack.set(k("k"), 1).unwrap();
    stack.remove_layer(1).unwrap();
    stack.insert_layer(1, new.clone());
    old.write_elsewhere(k("k"), 2).unwrap();
    assert_eq!(
        top.get(&k("k")).unwrap(),
        Some(1),
        "a removed layer's report acted"
    );
    new.write_elsewhere(k("k"), 3).unwrap();
    assert_eq!(top.get(&k("k")).unwrap(), None);

    finishes_within(
        Duration::from_secs(30),
        "reports racing layer changes",
        move || {
            let stop = Arc::new(AtomicBool::new(false));
            let reporters: Vec<_> = [old.clone(), new.clone()]
                .into_iter()
                .map(|layer| {
                    let stop = stop.clone();
                    thread::spawn(move || {
                        let mut n = 0u32;
                        while !stop.load(Ordering::SeqCst) {
                            layer.write_elsewhere(format!("k{}", n % 8), n).unwrap();
                            layer.report(Invalidation::All);
                            n += 1;
                        }
                    })
                })
                .collect();
            for n in 0..2_000 {
                let layer: Arc<dyn Cache<String, u32>> =
                    if n % 2 == 0 { old.clone() } else { new.clone() };
                stack.insert_layer(1, layer);
                stack.set(format!("k{}", n % 8), n).unwrap();
                stack.remove_layer(1).unwrap();
            }
            stop.store(true, Ordering::SeqCst);
            for reporter in reporters {
                reporter.join().unwrap();
            }
        },
    );
}

// ---------------------------------------------------------------------------
// 4. Redis deadlines
// ---------------------------------------------------------------------------

fn raw(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

fn redis_cache(server: &RedisServer, namespace: &str) -> RedisCache {
    RedisCache::builder(server.url())
        .namespace(namespace)
        .build()
        .unwrap()
}

// Guard: values written under the namespace by someone else (layercache
// 0.1 through `Serialised<Bincode>`, another program) read as misses and are
// left in place, even when they start with 0x00 or 0x01 as bincode values
// so often do (false/true, None/Some, empty collections, small numbers).
#[test]
fn foreign_values_starting_with_a_tag_byte_read_as_misses() {
    let Some(server) = RedisServer::start_or_skip("review10 foreign tag bytes") else {
        return;
    };
    let mut raw = raw(&server);
    let cache = redis_cache(&server, "r10foreign:");
    let v01 = Bincode::new().encode(&(false, vec![0u8])).unwrap();
    assert_eq!(v01, [0, 1, 0], "what layercache 0.1 stored");
    redis::cmd("SET")
        .arg("r10foreign:pair")
        .arg(&v01)
        .query::<()>(&mut raw)
        .unwrap();
    let empty = Bincode::new().encode(&Vec::<u32>::new()).unwrap();
    redis::cmd("SET")
        .arg("r10foreign:empty")
        .arg(&empty)
        .query::<()>(&mut raw)
        .unwrap();

    let pair = Serialised::unversioned(&cache, Bincode::new());
    let got: Option<(bool, Vec<u8>)> = pair.get(&k("pair")).unwrap();
    let list = Serialised::unversioned(&cache, Bincode::new());
    let gone: Option<Vec<u32>> = list.get(&k("empty")).unwrap();
    let still: Option<Vec<u8>> = redis::cmd("GET")
        .arg("r10foreign:empty")
        .query(&mut raw)
        .unwrap();
    assert_eq!(
        (got, gone, still.as_deref(), list.stale()),
        (None, None, Some(&empty[..]), 0),
        "(pair read back, empty read back, empty still stored, stale count)"
    );
}

// Guard for the documented behaviour (docs/redis.md, "Timed-out writes"):
// a SET whose reply timed out while the server was stalled still runs when
// the server resumes, with its time to live counted from then. The entry
// outlives the deadline it was given by about the stall, and lives no longer
// than its time to live after it ran. (Bounding the first would take an
// absolute deadline, which RedisCache does not send.)
#[test]
fn a_timed_out_set_may_still_run_with_its_ttl_counted_from_then() {
    let Some(server) = RedisServer::start_or_skip("review10 ghost set") else {
        return;
    };
    let cache = RedisCache::builder(server.url())
        .namespace("r10ghost:")
        .command_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .retry_after(Duration::from_millis(10))
        .build()
        .unwrap();
    cache.set(k("warm"), b"w".to_vec()).unwrap(); // a pooled connection
    server.pause().unwrap();
    let ttl = Duration::from_secs(1);
    let deadline = SystemClock.now() + ttl;
    let outcome = cache.set_with_ttl(k("k"), b"v".to_vec(), ttl);
    assert!(outcome.is_err(), "the set timed out: {outcome:?}");
    thread::sleep(Duration::from_millis(2_000)); // the server is stalled past the deadline
    // Read before the server resumes: the SET cannot run earlier.
    let resumed = SystemClock.now();
    server.resume().unwrap();
    let reader = redis_cache(&server, "r10ghost:");
    let started = Instant::now();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(2) {
        if let Some(entry) = reader.get_entry(&k("k")).unwrap() {
            seen = Some((SystemClock.now(), entry.expires()));
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let (at, expires) = seen.expect("the timed-out set ran when the server resumed");
    let expires = expires.expect("with its time to live");
    // Counted from when it ran, after the resume (less the read's round
    // trip), so past the deadline it was given by about the stall ...
    assert!(
        expires + Duration::from_millis(250) >= resumed + ttl && expires > deadline + ttl,
        "expires {expires:?}: deadline {deadline:?}, resumed {resumed:?}"
    );
    // ... and never more than its time to live after it was seen
    // (plus the coarse clock's resolution).
    assert!(
        expires <= at + ttl + Duration::from_millis(20),
        "expires {expires:?}, seen at {at:?}"
    );
    // The server expires it then, as it would any entry.
    while reader.get_entry(&k("k")).unwrap().is_some() {
        assert!(
            SystemClock.now() <= expires + Duration::from_millis(500),
            "still served long after it expired at {expires:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Guard: hostile stored bytes (every tag, short leads, huge leads, a lead
/// on a key without expiry, non-string types) never panic and never come
/// back as a fresh entry with a deadline later than the server's.
#[test]
fn hostile_redis_values_never_panic() {
    let Some(server) = RedisServer::start_or_skip("review10 hostile redis values") else {
        return;
    };
    let mut raw = raw(&server);
    let cache = redis_cache(&server, "r10hostile:");
    let mut values: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![1],
        vec![1; 8],
        vec![1; 9],
        [vec![1], u64::MAX.to_le_bytes().to_vec(), b"v".to_vec()].concat(),
        [vec![1], 0u64.to_le_bytes().to_vec(), b"v".to_vec()].concat(),
        vec![2, 3, 4],
        vec![0xff; 64],
    ];
    let mut seed = 0x1234_5678_u64;
    for _ in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 24) as usize;
        values.push((0..len).map(|i| (seed >> (i % 8 * 8)) as u8 % 3).collect());
    }
    for (n, value) in values.iter().enumerate() {
        let key = format!("r10hostile:{n}");
        redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .query::<()>(&mut raw)
            .unwrap();
        if n % 2 == 0 {
            redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(60_000)
                .query::<()>(&mut raw)
                .unwrap();
        }
    }
    let now = SystemClock.now();
    for n in 0..values.len() {
        let key = format!("{n}");
        let _ = cache.get(&key).unwrap();
        if let Some(entry) = cache.get_entry(&key).unwrap() {
            if n % 2 == 0 {
                let expires = entry.expires().expect("the key has a TTL");
                assert!(expires <= now + Duration::from_secs(61), "{n}: {expires:?}");
            } else {
                assert_eq!(entry.expires(), None, "{n}");
            }
            if let Some(fresh) = entry.fresh_until() {
                assert!(fresh <= entry.expires().unwrap_or(Timestamp::MAX), "{n}");
            }
        }
    }
    let _ = cache.values().unwrap();
    // A non-string type under the namespace is a miss left in place (it
    // was an error before the second review), never a panic.
    redis::cmd("HSET")
        .arg("r10hostile:hash")
        .arg("f")
        .arg("v")
        .query::<()>(&mut raw)
        .unwrap();
    assert!(cache.get_entry(&k("hash")).unwrap().is_none());
    let _ = cache.values().unwrap();
    cache.clear().unwrap();
}

/// Guard: the TTL cap, zero and huge durations, PERSIST and PEXPIRE done by
/// another client, and two hosts whose clocks disagree by a day.
#[test]
fn redis_deadline_edges_hold() {
    let Some(server) = RedisServer::start_or_skip("review10 redis edges") else {
        return;
    };
    let mut raw = raw(&server);
    let capped = RedisCache::builder(server.url())
        .namespace("r10edge:")
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let plain = redis_cache(&server, "r10edge:");
    let now = SystemClock.now();

    // Zero TTL: dead on arrival, removes what was there.
    plain.set(k("z"), b"old".to_vec()).unwrap();
    plain
        .set_with_ttl(k("z"), b"new".to_vec(), Duration::ZERO)
        .unwrap();
    assert_eq!(plain.get(&k("z")).unwrap(), None);

    // Huge: refused without a cap (and the old value kept), capped with one.
    plain.set(k("h"), b"old".to_vec()).unwrap();
    let refused = plain.set_with_ttl(k("h"), b"new".to_vec(), Duration::MAX);
    assert!(
        matches!(refused, Err(Error::Unsupported { .. })),
        "{refused:?}"
    );
    assert_eq!(plain.get(&k("h")).unwrap(), Some(b"old".to_vec()));
    capped
        .set_with_ttl(k("h"), b"new".to_vec(), Duration::MAX)
        .unwrap();
    let entry = capped.get_entry(&k("h")).unwrap().unwrap();
    let expires = entry.expires().unwrap();
    assert!(expires <= now + Duration::from_secs(62), "{expires:?}");

    // The cap also bounds a long freshness; an earlier expiry wins over it.
    capped
        .set_with_freshness(
            k("f"),
            b"f".to_vec(),
            Duration::from_secs(3_600),
            Duration::from_secs(7_200),
        )
        .unwrap();
    let entry = capped.get_entry(&k("f")).unwrap().unwrap();
    assert!(entry.expires().unwrap() <= now + Duration::from_secs(62));
    assert!(
        entry.fresh_until().is_none(),
        "fresh until the capped expiry"
    );
    capped
        .set_with_freshness(
            k("g"),
            b"g".to_vec(),
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .unwrap();
    let entry = capped.get_entry(&k("g")).unwrap().unwrap();
    assert!(entry.expires().unwrap() <= now + Duration::from_secs(12));
    let fresh = entry.fresh_until().unwrap();
    assert!(
        fresh <= now + Duration::from_secs(7)
            && fresh + Duration::from_secs(2) >= now + Duration::from_secs(5)
    );

    // Another client persists a key with a lead: served, but stale.
    redis::cmd("PERSIST")
        .arg("r10edge:g")
        .query::<()>(&mut raw)
        .unwrap();
    let entry = plain.get_entry(&k("g")).unwrap().unwrap();
    assert_eq!(entry.expires(), None);
    assert!(!entry.is_fresh(SystemClock.now()));
    // ... or shortens it to 1 ms: gone.
    redis::cmd("PEXPIRE")
        .arg("r10edge:g")
        .arg(1)
        .query::<()>(&mut raw)
        .unwrap();
    let started = Instant::now();
    while plain.get_entry(&k("g")).unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "PEXPIRE 1 ignored"
        );
        thread::yield_now();
    }

    // Skew: a writer a day behind and a reader a day ahead agree on the
    // remaining time; neither extends it.
    let day = Duration::from_secs(86_400);
    let behind = Arc::new(ManualClock::starting_at(Timestamp::from_millis(
        SystemClock.now().as_millis() - day.as_millis() as u64,
    )));
    let ahead = Arc::new(ManualClock::starting_at(SystemClock.now() + day));
    let writer = RedisCache::builder(server.url())
        .namespace("r10edge:")
        .clock(behind.clone())
        .build()
        .unwrap();
    let reader = RedisCache::builder(server.url())
        .namespace("r10edge:")
        .clock(ahead.clone())
        .build()
        .unwrap();
    writer
        .set_with_ttl(k("s"), b"s".to_vec(), Duration::from_secs(30))
        .unwrap();
    let entry = reader.get_entry(&k("s")).unwrap().unwrap();
    let left = entry.time_to_live(ahead.now()).unwrap();
    assert!(
        left <= Duration::from_secs(30) && left >= Duration::from_secs(28),
        "{left:?}"
    );
    capped.clear().unwrap();
}

// ---------------------------------------------------------------------------
// 5. Keyed
// ---------------------------------------------------------------------------

// Two distinct keys never share a stored key (`None`, `Some(None)`: `null`).
#[test]
fn distinct_keys_never_share_a_stored_key() {
    let cache = Keyed::new(MemoryCache::<String, String>::new(), JsonKeys).with_namespace("o:");
    let none: Option<Option<u32>> = None;
    let some_none: Option<Option<u32>> = Some(None);
    cache.set(none, k("none")).unwrap();
    let outcome = cache.set(some_none, k("some-none"));
    let keys: Vec<Option<Option<u32>>> = cache.keys().unwrap();
    assert_eq!(
        (outcome.is_err(), cache.get(&none).unwrap()),
        (true, Some(k("none"))),
        "Some(None) was accepted and overwrote None; keys() = {keys:?}"
    );
}

// An `f64` key serde_json reads back inexactly is refused, not listed as another.
#[test]
fn float_keys_come_back_as_the_key_that_was_set() {
    let key = f64::from_bits(0x7f6c_280b_eaa8_e3e7);
    let cache = Keyed::new(MemoryCache::<String, u8>::new(), JsonKeys).with_namespace("f:");
    let outcome = cache.set(key, 1);
    let keys: Vec<f64> = cache.keys().unwrap();
    let cleared = cache.clear_matching(&|k: &f64| *k == key).unwrap();
    assert!(
        outcome.is_err() || (keys == [key] && cleared == 1),
        "set {key:e}: keys() = {keys:?}, clear_matching for it removed {cleared}"
    );
}

// Other spellings of our key in our namespace (`n: 7`) are not ours.
#[test]
fn non_canonical_stored_keys_are_not_ours() {
    let store = MemoryCache::<String, String>::new();
    let cache = Keyed::new(&store, JsonKeys).with_namespace("n:");
    cache.set(7u64, k("ours")).unwrap();
    store.set(k("n: 7"), k("foreign")).unwrap();
    store.set(k("n:7 "), k("foreign2")).unwrap();
    let keys: Vec<u64> = cache.keys().unwrap();
    let values: Vec<String> = Cache::<u64, String>::values(&cache).unwrap();
    let cleared = cache.clear_matching(&|key: &u64| *key == 7).unwrap();
    assert_eq!(
        (keys, values.len(), cleared),
        (vec![7], 1, 1),
        "(keys, how many values, how many cleared)"
    );
}

/// Guard: `clear` and `clear_matching` through `Keyed` never touch keys of
/// another namespace, keys that do not decode, or (for byte keys) keys that
/// are not UTF-8; a namespace that is a prefix of ours is apart as long as
/// its keys do not decode under ours.
#[test]
fn keyed_clear_leaves_foreign_keys_alone() {
    let store = MemoryCache::<String, u8>::new();
    let ours = Keyed::new(&store, JsonKeys).with_namespace("app:v2:");
    let theirs = Keyed::new(&store, JsonKeys).with_namespace("app:v1:");
    ours.set(1u64, 1).unwrap();
    theirs.set(1u64, 2).unwrap();
    store.set(k("app:v2:not json"), 3).unwrap();
    store.set(k("other"), 4).unwrap();
    Cache::<u64, u8>::clear(&ours).unwrap();
    let mut left = store.keys().unwrap();
    left.sort();
    assert_eq!(left, ["app:v1:1", "app:v2:not json", "other"]);

    let bytes = MemoryCache::<Vec<u8>, u8>::new();
    let keyed = Keyed::new(&bytes, CodecKeys(Bincode::new())).with_namespace("b:");
    keyed.set(300u64, 1).unwrap();
    bytes.set(b"b:\xff\xfe".to_vec(), 2).unwrap();
    bytes.set(b"\xffb:".to_vec(), 3).unwrap();
    assert_eq!(keyed.clear_matching(&|_: &u64| true).unwrap(), 1);
    assert_eq!(bytes.len(), 2);
    // Keys are checked to read back.
    assert!(KeyCodec::<u64>::decode(&JsonKeys, "7").is_some());
}

// ---------------------------------------------------------------------------
// 6. Panics and aborts on user input
// ---------------------------------------------------------------------------

/// A key type that nests as deep as the program makes it.
#[derive(PartialEq, serde::Serialize, serde::Deserialize)]
enum Nest {
    Leaf,
    Node(Box<Nest>),
}

fn nest(depth: usize) -> Nest {
    let mut nest = Nest::Leaf;
    for _ in 0..depth {
        nest = Nest::Node(Box::new(nest));
    }
    nest
}

/// Drops a `Nest` without recursing.
fn unnest(mut nest: Nest) {
    while let Nest::Node(inner) = nest {
        nest = *inner;
    }
}

const CHILD: &str = "REVIEW10_CHILD";

/// Run only as a child process by `a_deeply_nested_key_is_an_error_not_an_abort`:
/// encodes a 5,000-deep key with `JsonKeys` on a thread with the default
/// 2 MiB stack of a spawned thread.
#[test]
fn child_deep_json_key() {
    if std::env::var(CHILD).as_deref() != Ok("deep_json_key") {
        return;
    }
    let outcome = thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let key = nest(5_000);
            let cache = Keyed::new(MemoryCache::<String, u8>::new(), JsonKeys);
            let outcome = cache.set(key, 1).map_err(|e| e.to_string());
            // The key was moved into `set`; build another to look it up.
            let key = nest(5_000);
            let found = cache.get(&key).map_err(|e| e.to_string());
            unnest(key);
            format!("{outcome:?} {found:?}")
        })
        .unwrap()
        .join()
        .unwrap();
    println!("#r10 {outcome}");
}

// A JsonKeys key nested 5,000 deep is an error from `set` and `get`, not an abort.
#[test]
fn a_deeply_nested_key_is_an_error_not_an_abort() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_deep_json_key",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "deep_json_key")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("#r10 Err("),
        "the child died: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
}

// ---------------------------------------------------------------------------
// 3b. Watchers in the shipped layers
// ---------------------------------------------------------------------------

/// Run only as a child process: another host writes `k` through its own
/// stack over the same Redis namespace.
#[test]
fn child_other_host_writes() {
    if std::env::var(CHILD).as_deref() != Ok("other_host") {
        return;
    }
    let url = std::env::var("REVIEW10_URL").unwrap();
    let stack = Layered::new()
        .with_layer(MemoryCache::<String, Vec<u8>>::new())
        .with_layer(
            RedisCache::builder(url)
                .namespace("r10hosts:")
                .build()
                .unwrap(),
        );
    stack.set(k("k"), b"from the other host".to_vec()).unwrap();
    println!("#r10 written");
}

// NOT YET (scope): README says `Layered` has "layers that report changes made
// by other processes", and docs/concepts.md names "a shared file, Redis" as
// such layers, but neither `RedisCache` nor `FileCache` implements `watch`:
// both answer `false` and never report. A memory layer over a shared Redis
// (or file) keeps serving its own value after another host (here a real
// child process) wrote a new one, for good. Only the `testing::Watched`
// double reports, so the whole invalidation path is exercised by tests
// alone.
#[test]
#[ignore = "NOT YET: FileCache and RedisCache report changes made by others in the coherence issue; the docs say so"]
fn a_memory_top_over_redis_hears_of_another_hosts_write() {
    let Some(server) = RedisServer::start_or_skip("review10 other host") else {
        return;
    };
    let redis = RedisCache::builder(server.url())
        .namespace("r10hosts:")
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file: FileCache = FileCache::open(dir.path().join("c.lc")).unwrap();
    let noop: Arc<dyn Watcher<String>> = Arc::new(|_: Invalidation<'_, String>| {});
    let reports = (redis.watch(noop.clone()), file.watch(noop));
    let stack = Layered::new()
        .with_layer(MemoryCache::<String, Vec<u8>>::new())
        .with_layer(redis);
    stack.set(k("k"), b"ours".to_vec()).unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_other_host_writes",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "other_host")
        .env("REVIEW10_URL", server.url())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("#r10 written"),
        "{output:?}"
    );
    assert_eq!(
        (reports, stack.get(&k("k")).unwrap()),
        ((true, true), Some(b"from the other host".to_vec())),
        "(redis and file report, what this host reads after the other wrote)"
    );
}
