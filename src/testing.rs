//! The conformance suite every cache in this crate passes, and test doubles
//! for stacks (feature `testing`).
//!
//! Run the suite on a cache of your own with [`run_all`] (and
//! [`run_string_keyed`] when its keys are strings), giving it a function that
//! makes a fresh, empty cache:
//!
//! ```
//! use layercache::{MemoryCache, testing};
//!
//! testing::run_all(MemoryCache::<String, Vec<u8>>::new);
//! testing::run_string_keyed(MemoryCache::<String, Vec<u8>>::new);
//! ```
//!
//! Each check is also a public function, to run on its own. Checks panic
//! with a message naming what broke, like `assert!`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use crate::cache::{Cache, CacheExt, Invalidation, Watcher, Watchers};
use crate::clock::{Clock, ManualClock, Timestamp};
use crate::entry::Entry;
use crate::error::{Error, Operation, Result};

/// Values the suite can make from a number and recognise again, so that a
/// torn or misplaced value is caught.
pub trait Sample: Clone + PartialEq + Debug + Send + Sync + 'static {
    /// The `n`th sample. Distinct `n` give distinct samples.
    fn sample(n: u64) -> Self;

    /// `Some(n)` when this is exactly `sample(n)`, else `None`.
    fn index(&self) -> Option<u64>;
}

impl Sample for String {
    fn sample(n: u64) -> Self {
        // Long enough that a torn write would show, and varied by n.
        let fill = char::from(b'a' + (n % 26) as u8);
        let mut s = format!("sample-{n}-");
        s.extend(std::iter::repeat_n(fill, 40));
        s
    }

    fn index(&self) -> Option<u64> {
        let n = self
            .strip_prefix("sample-")?
            .split('-')
            .next()?
            .parse()
            .ok()?;
        (Self::sample(n) == *self).then_some(n)
    }
}

impl Sample for Vec<u8> {
    fn sample(n: u64) -> Self {
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend((0..40u8).map(|i| (n as u8).wrapping_mul(31).wrapping_add(i)));
        bytes
    }

    fn index(&self) -> Option<u64> {
        let n = u64::from_le_bytes(self.get(..8)?.try_into().ok()?);
        (Self::sample(n) == *self).then_some(n)
    }
}

impl Sample for u64 {
    fn sample(n: u64) -> Self {
        n
    }

    fn index(&self) -> Option<u64> {
        Some(*self)
    }
}

fn key<K: Sample>(n: u64) -> K {
    K::sample(n)
}

fn value<V: Sample>(n: u64) -> V {
    V::sample(1_000_000 + n)
}

fn indexes<T: Sample>(items: &[T]) -> BTreeSet<u64> {
    items
        .iter()
        .map(|item| {
            item.index()
                .unwrap_or_else(|| panic!("not a sample: {item:?}"))
        })
        .collect()
}

/// Runs every check of the suite, each on a fresh cache from `make`.
pub fn run_all<K, V, C>(make: impl Fn() -> C)
where
    K: Sample + Hash + Eq,
    V: Sample,
    C: Cache<K, V>,
{
    get_miss(&make());
    set_then_get(&make());
    overwrite(&make());
    remove(&make());
    remove_missing(&make());
    keys(&make());
    values(&make());
    clear(&make());
    clear_matching(&make());
    clear_while_keys_vanish(&make());
    hammer(&make());
}

/// Runs the checks that need string keys (pattern clears), each on a fresh
/// cache from `make`.
pub fn run_string_keyed<V, C>(make: impl Fn() -> C)
where
    V: Sample,
    C: Cache<String, V>,
{
    clear_pattern(&make());
}

/// Runs every check on deadlines, each on a fresh cache from `make`, which
/// must build a cache that checks deadlines against the clock it is given
/// (all its layers, for a stack). Moving that clock is how the checks make
/// time pass: nothing sleeps.
///
/// ```
/// use layercache::{MemoryCache, testing};
///
/// testing::run_deadlines(|clock| MemoryCache::<String, Vec<u8>>::new().with_clock(clock));
/// ```
pub fn run_deadlines<K, V, C>(make: impl Fn(Arc<ManualClock>) -> C)
where
    K: Sample,
    V: Sample,
    C: Cache<K, V>,
{
    run_deadlines_kept(&make);
    let clock = Arc::new(ManualClock::new());
    expiry_follows_the_clock(&make(clock.clone()), &clock);
    let clock = Arc::new(ManualClock::new());
    stale_entries_are_served(&make(clock.clone()), &clock);
}

/// Runs the checks on deadlines that do not need time to pass on the
/// cache's clock: for a cache whose entries expire on another clock (a
/// Redis server's), given `make` as for [`run_deadlines`].
pub fn run_deadlines_kept<K, V, C>(make: impl Fn(Arc<ManualClock>) -> C)
where
    K: Sample,
    V: Sample,
    C: Cache<K, V>,
{
    let fresh = || {
        let clock = Arc::new(ManualClock::new());
        (make(clock.clone()), clock)
    };
    let (cache, clock) = fresh();
    deadlines_come_back(&cache, &clock);
    let (cache, clock) = fresh();
    expired_on_arrival(&cache, &clock);
    let (cache, clock) = fresh();
    plain_set_has_no_deadline(&cache, &clock);
}

/// How much earlier than set a deadline may come back: a cache that keeps
/// times relative (Redis) loses the time between the write and the read.
const DEADLINE_SLACK: Duration = Duration::from_secs(2);

fn assert_deadline<K: Debug>(
    what: &str,
    cache: &dyn Debug,
    key: &K,
    got: Option<Timestamp>,
    set: Timestamp,
) {
    let got = got.unwrap_or_else(|| {
        panic!("deadlines_come_back: {cache:?} lost the {what} of key {key:?} (set {set:?})")
    });
    assert!(
        got <= set && set - got <= DEADLINE_SLACK,
        "deadlines_come_back: {cache:?} returned {what} {got:?} for key {key:?}, set {set:?}: \
         a deadline may be rounded down by at most {DEADLINE_SLACK:?}, never extended"
    );
}

/// An entry's two deadlines come back from `get_entry` (never later, and
/// at most two seconds earlier), with its value.
pub fn deadlines_come_back<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(
    cache: &C,
    clock: &dyn Clock,
) {
    let now = clock.now();
    let expires = now + Duration::from_secs(3_600);
    let fresh_until = now + Duration::from_secs(600);
    let entry = Entry::new(V::sample(1))
        .with_expires(expires)
        .with_fresh_until(fresh_until);
    cache.set_entry(key(1), entry).expect("set_entry");
    let got = cache
        .get_entry(&key(1))
        .expect("get_entry")
        .unwrap_or_else(|| panic!("deadlines_come_back: {cache:?} lost key {:?}", key::<K>(1)));
    assert_eq!(
        got.value,
        V::sample(1),
        "deadlines_come_back: {cache:?} changed the value"
    );
    assert_deadline("expiry", &cache, &key::<K>(1), got.expires(), expires);
    assert_deadline(
        "fresh_until",
        &cache,
        &key::<K>(1),
        got.fresh_until(),
        fresh_until,
    );

    cache
        .set_with_ttl(key(2), V::sample(2), Duration::from_secs(60))
        .expect("set_with_ttl");
    let got = cache
        .get_entry(&key(2))
        .expect("get_entry")
        .unwrap_or_else(|| {
            panic!(
                "deadlines_come_back: {cache:?} lost key {:?} set with a ttl",
                key::<K>(2)
            )
        });
    assert_deadline(
        "expiry (set_with_ttl)",
        &cache,
        &key::<K>(2),
        got.expires(),
        now + Duration::from_secs(60),
    );
    assert_eq!(
        got.fresh_until(),
        None,
        "deadlines_come_back: {cache:?} invented a fresh_until"
    );
}

/// An entry that has already expired is not stored, and the key's older
/// value is gone too.
pub fn expired_on_arrival<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(
    cache: &C,
    clock: &dyn Clock,
) {
    cache.set(key(1), V::sample(1)).expect("set");
    let past = Timestamp::from_millis(clock.now().as_millis() - 1);
    cache
        .set_entry(key(1), Entry::new(V::sample(2)).with_expires(past))
        .expect("set_entry");
    assert_eq!(
        cache.get(&key(1)).expect("get"),
        None,
        "expired_on_arrival: {cache:?} served key {:?} after a set that had already expired",
        key::<K>(1)
    );
}

/// A plain `set` over an expiring entry leaves an entry with no deadline.
pub fn plain_set_has_no_deadline<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(
    cache: &C,
    clock: &dyn Clock,
) {
    let _ = clock;
    cache
        .set_with_ttl(key(1), V::sample(1), Duration::from_secs(60))
        .expect("set_with_ttl");
    cache.set(key(1), V::sample(2)).expect("set");
    let got = cache.get_entry(&key(1)).expect("get_entry");
    assert_eq!(
        got.as_ref()
            .map(|entry| (&entry.value, entry.expires(), entry.fresh_until())),
        Some((&V::sample(2), None, None)),
        "plain_set_has_no_deadline: {cache:?} kept a deadline through a plain set"
    );
}

/// Entries expire when the cache's clock reaches their deadline: `get`,
/// `get_entry`, `keys`, `values` and `remove` all stop seeing them.
pub fn expiry_follows_the_clock<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(
    cache: &C,
    clock: &ManualClock,
) {
    cache
        .set_with_ttl(key(1), V::sample(1), Duration::from_secs(60))
        .expect("set_with_ttl");
    cache.set(key(2), V::sample(2)).expect("set");
    clock.advance(Duration::from_millis(59_999));
    assert_eq!(
        cache.get(&key(1)).expect("get"),
        Some(V::sample(1)),
        "expiry_follows_the_clock: {cache:?} dropped key {:?} before its deadline",
        key::<K>(1)
    );
    clock.advance(Duration::from_millis(1));
    let name = format!("{cache:?}");
    assert_eq!(
        cache.get(&key(1)).expect("get"),
        None,
        "expiry_follows_the_clock: {name} served key {:?} at its deadline",
        key::<K>(1)
    );
    assert!(
        cache.get_entry(&key(1)).expect("get_entry").is_none(),
        "expiry_follows_the_clock: {name} get_entry served an expired entry"
    );
    assert_eq!(
        indexes(&cache.keys().expect("keys")),
        BTreeSet::from([2]),
        "expiry_follows_the_clock: {name} listed an expired key"
    );
    assert_eq!(
        indexes(&cache.values().expect("values")),
        BTreeSet::from([2]),
        "expiry_follows_the_clock: {name} listed an expired value"
    );
    assert_eq!(
        cache.remove(&key(1)).expect("remove"),
        None,
        "expiry_follows_the_clock: {name} remove returned an expired value"
    );
}

/// Between `fresh_until` and `expires` an entry is stale: still served, and
/// `get_entry` says it is no longer fresh.
pub fn stale_entries_are_served<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(
    cache: &C,
    clock: &ManualClock,
) {
    cache
        .set_with_freshness(
            key(1),
            V::sample(1),
            Duration::from_secs(10),
            Duration::from_secs(60),
        )
        .expect("set_with_freshness");
    let entry = cache.get_entry(&key(1)).expect("get_entry");
    assert!(
        entry
            .as_ref()
            .is_some_and(|entry| entry.is_fresh(clock.now())),
        "stale_entries_are_served: {cache:?} entry not fresh when just set: {:?}",
        entry
            .as_ref()
            .map(|entry| (entry.fresh_until(), entry.expires()))
    );
    clock.advance(Duration::from_secs(10));
    let entry = cache.get_entry(&key(1)).expect("get_entry");
    let Some(entry) = entry else {
        panic!("stale_entries_are_served: {cache:?} dropped a stale entry before it expired");
    };
    assert_eq!(entry.value, V::sample(1));
    assert!(
        !entry.is_fresh(clock.now()),
        "stale_entries_are_served: {cache:?} reports the entry fresh after fresh_until"
    );
}

/// A cache that cannot keep deadlines refuses an entry that has one with
/// [`Error::Unsupported`], and keeps what it had for the key.
pub fn refuses_deadlines<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    cache.set(key(1), V::sample(1)).expect("set");
    for entry in [
        Entry::new(V::sample(2)).with_expires(cache.clock().now() + Duration::from_secs(60)),
        Entry::new(V::sample(2)).with_fresh_until(cache.clock().now() + Duration::from_secs(60)),
    ] {
        match cache.set_entry(key(1), entry) {
            Err(Error::Unsupported { .. }) => {}
            other => panic!(
                "refuses_deadlines: {cache:?} answered {other:?} to an entry with a deadline"
            ),
        }
        assert_eq!(
            cache.get(&key(1)).expect("get"),
            Some(V::sample(1)),
            "refuses_deadlines: {cache:?} changed the key it refused to write"
        );
    }
}

/// A key never set is a miss, `Ok(None)`.
pub fn get_miss<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    assert_eq!(
        cache.get(&key(1)).expect("get"),
        None,
        "{cache:?}: a fresh cache must miss"
    );
}

/// A set value is returned by get, for this key only.
pub fn set_then_get<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    cache.set(key(1), value(1)).expect("set");
    assert_eq!(
        cache.get(&key(1)).expect("get"),
        Some(value(1)),
        "{cache:?}"
    );
    assert_eq!(
        cache.get(&key(2)).expect("get"),
        None,
        "{cache:?}: another key must miss"
    );
}

/// A second set replaces the first.
pub fn overwrite<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    cache.set(key(1), value(1)).expect("set");
    cache.set(key(1), value(2)).expect("set again");
    assert_eq!(
        cache.get(&key(1)).expect("get"),
        Some(value(2)),
        "{cache:?}"
    );
    assert_eq!(
        cache.keys().expect("keys").len(),
        1,
        "{cache:?}: one key after an overwrite"
    );
}

/// Remove returns the value and the key misses afterwards; others stay.
pub fn remove<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    cache.set(key(1), value(1)).expect("set");
    cache.set(key(2), value(2)).expect("set");
    assert_eq!(
        cache.remove(&key(1)).expect("remove"),
        Some(value(1)),
        "{cache:?}"
    );
    assert_eq!(
        cache.get(&key(1)).expect("get"),
        None,
        "{cache:?}: removed key must miss"
    );
    assert_eq!(
        cache.get(&key(2)).expect("get"),
        Some(value(2)),
        "{cache:?}: other key kept"
    );
}

/// Removing a key that is not there is `Ok(None)`, not an error.
pub fn remove_missing<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    assert_eq!(cache.remove(&key(9)).expect("remove"), None, "{cache:?}");
    cache.set(key(1), value(1)).expect("set");
    cache.remove(&key(1)).expect("remove");
    assert_eq!(
        cache.remove(&key(1)).expect("second remove"),
        None,
        "{cache:?}"
    );
}

/// Keys are exactly the keys set, each once.
pub fn keys<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    assert!(
        cache.keys().expect("keys").is_empty(),
        "{cache:?}: a fresh cache has no keys"
    );
    for n in 0..20 {
        cache.set(key(n), value(n)).expect("set");
    }
    cache.set(key(3), value(33)).expect("overwrite");
    cache.remove(&key(7)).expect("remove");
    let keys = cache.keys().expect("keys");
    assert_eq!(keys.len(), 19, "{cache:?}: keys {keys:?}");
    let expected: BTreeSet<u64> = (0..20).filter(|&n| n != 7).collect();
    assert_eq!(indexes(&keys), expected, "{cache:?}");
}

/// Values are exactly the live values.
pub fn values<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    for n in 0..10 {
        cache.set(key(n), value(n)).expect("set");
    }
    cache.remove(&key(0)).expect("remove");
    let values = cache.values().expect("values");
    let expected: BTreeSet<u64> = (1_000_001..1_000_010).collect();
    assert_eq!(values.len(), 9, "{cache:?}");
    assert_eq!(indexes(&values), expected, "{cache:?}");
}

/// Clear removes everything, and the cache works afterwards.
pub fn clear<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    for n in 0..10 {
        cache.set(key(n), value(n)).expect("set");
    }
    cache.clear().expect("clear");
    assert!(
        cache.keys().expect("keys").is_empty(),
        "{cache:?}: keys after clear"
    );
    assert_eq!(cache.get(&key(3)).expect("get"), None, "{cache:?}");
    cache.set(key(3), value(3)).expect("set after clear");
    assert_eq!(
        cache.get(&key(3)).expect("get"),
        Some(value(3)),
        "{cache:?}"
    );
}

/// `clear_matching` removes the matching keys, counts them, keeps the rest.
pub fn clear_matching<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    for n in 0..10 {
        cache.set(key(n), value(n)).expect("set");
    }
    let even = |k: &K| k.index().is_some_and(|n| n % 2 == 0);
    assert_eq!(
        cache.clear_matching(&even).expect("clear_matching"),
        5,
        "{cache:?}"
    );
    let left = indexes(&cache.keys().expect("keys"));
    assert_eq!(left, [1, 3, 5, 7, 9].into(), "{cache:?}");
    assert_eq!(
        cache.clear_matching(&even).expect("again"),
        0,
        "{cache:?}: nothing left to match"
    );
}

/// [`CacheExt::clear_pattern`] removes keys containing a match (search, not
/// full match).
pub fn clear_pattern<V: Sample, C: Cache<String, V> + ?Sized>(cache: &C) {
    for name in ["Task:1", "Task:2", "User:1", "AssetTask:9"] {
        cache.set(name.to_string(), value(1)).expect("set");
    }
    let pattern = regex::Regex::new("Task:").expect("pattern");
    assert_eq!(
        cache.clear_pattern(&pattern).expect("clear_pattern"),
        3,
        "{cache:?}"
    );
    assert_eq!(
        cache.keys().expect("keys"),
        vec!["User:1".to_string()],
        "{cache:?}"
    );
    let anchored = regex::Regex::new("^1$").expect("pattern");
    assert_eq!(
        cache.clear_pattern(&anchored).expect("anchored"),
        0,
        "{cache:?}"
    );
}

/// `clear` and `clear_matching` succeed while another thread removes the
/// same keys, and leave none of them behind.
pub fn clear_while_keys_vanish<K: Sample, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    const N: u64 = 400;
    for round in 0..2 {
        for n in 0..N {
            cache.set(key(n), value(n)).expect("set");
        }
        let start = Barrier::new(2);
        thread::scope(|scope| {
            scope.spawn(|| {
                start.wait();
                for n in (0..N).rev() {
                    cache.remove(&key(n)).expect("concurrent remove");
                }
            });
            start.wait();
            if round == 0 {
                let removed = cache.clear_matching(&|_| true).expect("clear_matching");
                assert!(removed <= N as usize, "{cache:?}: removed {removed} of {N}");
            } else {
                cache.clear().expect("clear");
            }
        });
        let left = cache.keys().expect("keys");
        assert!(
            left.is_empty(),
            "{cache:?}: keys left after clearing: {left:?}"
        );
    }
}

/// Eight threads set, get and remove on shared and private keys: every value
/// read is one that was written for that key (nothing torn or misplaced),
/// and every thread's last write to its private keys is there at the end
/// (nothing lost).
pub fn hammer<K: Sample + Hash + Eq, V: Sample, C: Cache<K, V> + ?Sized>(cache: &C) {
    const THREADS: u64 = 8;
    const ROUNDS: u64 = 300;
    const SHARED: u64 = 16;
    // Value numbers encode (key, thread, round) so a read can be checked.
    let encode = |k: u64, t: u64, r: u64| k * 1_000_000 + t * 10_000 + r;
    let start = Barrier::new(THREADS as usize);
    thread::scope(|scope| {
        for t in 0..THREADS {
            let start = &start;
            scope.spawn(move || {
                start.wait();
                for r in 0..ROUNDS {
                    let shared = (r + t) % SHARED;
                    let own = 1_000 + t * 100 + r % 10;
                    cache
                        .set(key(shared), V::sample(encode(shared, t, r)))
                        .expect("set shared");
                    cache
                        .set(key(own), V::sample(encode(own, t, r)))
                        .expect("set own");
                    for k in [shared, (shared + 1) % SHARED, own] {
                        if let Some(v) = cache.get(&key(k)).expect("get") {
                            let n = v
                                .index()
                                .unwrap_or_else(|| panic!("{cache:?}: torn value {v:?}"));
                            assert_eq!(
                                n / 1_000_000,
                                k,
                                "{cache:?}: key {k} holds another key's value"
                            );
                        }
                    }
                    if r % 7 == 0 {
                        cache.remove(&key((shared + 3) % SHARED)).expect("remove");
                    }
                }
            });
        }
    });
    // Each private key's last write was in the last round with that r % 10.
    let mut expected = HashMap::new();
    for t in 0..THREADS {
        for r in ROUNDS - 10..ROUNDS {
            let own = 1_000 + t * 100 + r % 10;
            expected.insert(own, encode(own, t, r));
        }
    }
    for (own, n) in expected {
        assert_eq!(
            cache.get(&key(own)).expect("get"),
            Some(V::sample(n)),
            "{cache:?}: lost the last write to key {own}"
        );
    }
}

/// A wrapper that counts the calls its inner cache gets, and can be told to
/// fail reads, writes, or both — to test how stacks handle a failing layer.
///
/// ```
/// use layercache::{Cache, MemoryCache, Operation, testing::Instrumented};
///
/// let layer = Instrumented::new(MemoryCache::<String, u32>::new());
/// layer.fail_reads(true);
/// assert!(layer.get(&"k".into()).is_err());
/// assert_eq!(layer.calls(Operation::Get), 1);
/// ```
#[derive(Debug, Default)]
pub struct Instrumented<C> {
    inner: C,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    calls: [AtomicU64; 8],
}

impl<C> Instrumented<C> {
    /// Counts calls to `inner`; fails nothing until told to.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            calls: Default::default(),
        }
    }

    /// Make `get`, `keys` and `values` fail (or stop failing).
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// Make `set`, `remove`, `clear` and `clear_matching` fail (or stop).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// How many times `operation` was called, failed calls included.
    pub fn calls(&self, operation: Operation) -> u64 {
        self.calls[slot(operation)].load(Ordering::SeqCst)
    }

    /// The wrapped cache.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    fn enter(&self, operation: Operation) -> Result<()> {
        self.calls[slot(operation)].fetch_add(1, Ordering::SeqCst);
        let failing = match operation {
            Operation::Get | Operation::Keys | Operation::Values => &self.fail_reads,
            _ => &self.fail_writes,
        };
        if failing.load(Ordering::SeqCst) {
            return Err(Error::backend(
                "instrumented",
                operation,
                format!("{operation} failed on purpose"),
            ));
        }
        Ok(())
    }
}

fn slot(operation: Operation) -> usize {
    match operation {
        Operation::Get => 0,
        Operation::Set => 1,
        Operation::Remove => 2,
        Operation::Keys => 3,
        Operation::Values => 4,
        Operation::Clear => 5,
        Operation::ClearMatching => 6,
        _ => 7,
    }
}

impl<K, V, C: Cache<K, V>> Cache<K, V> for Instrumented<C> {
    fn get_entry(&self, key: &K) -> Result<Option<Entry<V>>> {
        self.enter(Operation::Get)?;
        self.inner.get_entry(key)
    }
    fn set_entry(&self, key: K, entry: Entry<V>) -> Result<()> {
        self.enter(Operation::Set)?;
        self.inner.set_entry(key, entry)
    }
    fn get(&self, key: &K) -> Result<Option<V>> {
        self.enter(Operation::Get)?;
        self.inner.get(key)
    }
    fn set(&self, key: K, value: V) -> Result<()> {
        self.enter(Operation::Set)?;
        self.inner.set(key, value)
    }
    fn remove(&self, key: &K) -> Result<Option<V>> {
        self.enter(Operation::Remove)?;
        self.inner.remove(key)
    }
    fn keys(&self) -> Result<Vec<K>> {
        self.enter(Operation::Keys)?;
        self.inner.keys()
    }
    fn values(&self) -> Result<Vec<V>> {
        self.enter(Operation::Values)?;
        self.inner.values()
    }
    fn clear(&self) -> Result<()> {
        self.enter(Operation::Clear)?;
        self.inner.clear()
    }
    fn clear_matching(&self, matches: &dyn Fn(&K) -> bool) -> Result<usize> {
        self.enter(Operation::ClearMatching)?;
        self.inner.clear_matching(matches)
    }
    fn clock(&self) -> &dyn Clock {
        self.inner.clock()
    }
    fn watch(&self, watcher: Arc<dyn Watcher<K>>) -> bool {
        self.inner.watch(watcher)
    }
}

/// A layer that stands for a store other processes or hosts also write:
/// [`write_elsewhere`](Watched::write_elsewhere) and
/// [`remove_elsewhere`](Watched::remove_elsewhere) change the store behind
/// the stack's back and report the key to whoever
/// [watches](Cache::watch) it, as a shared file or Redis layer will.
///
/// ```
/// use std::sync::Arc;
/// use layercache::{Cache, Layered, MemoryCache, testing::Watched};
///
/// # fn main() -> layercache::Result<()> {
/// let top = Arc::new(MemoryCache::new());
/// let shared = Arc::new(Watched::new(MemoryCache::new()));
/// let stack = Layered::new().with_layer(top.clone()).with_layer(shared.clone());
/// stack.set("k".to_string(), 1)?;
/// shared.write_elsewhere("k".to_string(), 2)?; // another process writes
/// assert_eq!(top.get(&"k".to_string())?, None); // dropped from above
/// assert_eq!(stack.get(&"k".to_string())?, Some(2));
/// # Ok(())
/// # }
/// ```
pub struct Watched<K, C> {
    inner: C,
    watchers: Watchers<K>,
}

impl<K, C> Watched<K, C> {
    /// A watched store over `inner`.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            watchers: Watchers::new(),
        }
    }

    /// The store underneath.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// How many watchers this store holds, inactive ones it has not yet
    /// dropped included (it drops them when a watcher is added or a change
    /// reported).
    pub fn watchers(&self) -> usize {
        self.watchers.len()
    }

    /// Report `invalidation` to every watcher (with no lock held).
    pub fn report(&self, invalidation: Invalidation<'_, K>) {
        self.watchers.report(invalidation);
    }

    /// Another party stores `value` for `key`; watchers hear of it.
    pub fn write_elsewhere<V>(&self, key: K, value: V) -> Result<()>
    where
        C: Cache<K, V>,
        K: Clone,
    {
        self.inner.set(key.clone(), value)?;
        self.report(Invalidation::Key(&key));
        Ok(())
    }

    /// Another party removes `key`; watchers hear of it.
    pub fn remove_elsewhere<V>(&self, key: &K) -> Result<Option<V>>
    where
        C: Cache<K, V>,
    {
        let removed = self.inner.remove(key)?;
        self.report(Invalidation::Key(key));
        Ok(removed)
    }
}

impl<K, C: Debug> Debug for Watched<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watched({:?})", self.inner)
    }
}

impl<K: Send + Sync, V, C: Cache<K, V>> Cache<K, V> for Watched<K, C> {
    fn get_entry(&self, key: &K) -> Result<Option<Entry<V>>> {
        self.inner.get_entry(key)
    }
    fn set_entry(&self, key: K, entry: Entry<V>) -> Result<()> {
        self.inner.set_entry(key, entry)
    }
    fn remove(&self, key: &K) -> Result<Option<V>> {
        self.inner.remove(key)
    }
    fn keys(&self) -> Result<Vec<K>> {
        self.inner.keys()
    }
    fn clock(&self) -> &dyn Clock {
        self.inner.clock()
    }
    /// Keeps `watcher` and reports to it from now on: returns `true`.
    fn watch(&self, watcher: Arc<dyn Watcher<K>>) -> bool {
        self.watchers.add(watcher);
        true
    }
}

/// A `redis-server` process of its own on a free loopback port, with
/// persistence off, stopped when dropped: for tests, benches and examples
/// of [`RedisCache`](crate::RedisCache) (features `testing` and `redis`).
///
/// ```no_run
/// use layercache::{Cache, RedisCache, testing::RedisServer};
///
/// let Some(server) = RedisServer::start_or_skip("my test") else { return };
/// let cache = RedisCache::open(server.url()).unwrap();
/// cache.set("k".into(), b"v".to_vec()).unwrap();
/// ```
#[cfg(feature = "redis")]
#[derive(Debug)]
pub struct RedisServer {
    child: Option<std::process::Child>,
    port: u16,
}

#[cfg(feature = "redis")]
impl RedisServer {
    /// Whether a `redis-server` binary is on the `PATH`.
    pub fn available() -> bool {
        std::process::Command::new("redis-server")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Starts a server, or returns `None` after saying loudly on stderr why
    /// `what` is skipped when no `redis-server` is installed. With the
    /// environment variable `LAYERCACHE_REQUIRE_REDIS=1` a missing server
    /// is a panic instead, so CI cannot skip by accident.
    pub fn start_or_skip(what: &str) -> Option<Self> {
        if !Self::available() {
            if std::env::var("LAYERCACHE_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
                panic!("{what}: redis-server is not installed and LAYERCACHE_REQUIRE_REDIS=1");
            }
            // Written to the stream itself, not through `eprintln!`, which
            // the test harness captures and hides for passing tests.
            use std::io::Write;
            // One write, so that tests skipping at once do not interleave.
            let message = format!(
                "\n*** SKIPPED {what}: no redis-server on PATH (install it, e.g. \
                 `apt-get install -y redis-server`; set LAYERCACHE_REQUIRE_REDIS=1 to fail instead) ***\n"
            );
            let _ = std::io::stderr().write_all(message.as_bytes());
            return None;
        }
        Some(Self::start().expect("start redis-server"))
    }

    /// Starts a server on a free loopback port and waits until it answers.
    ///
    /// The port is one the OS had free a moment before; if another process
    /// takes it first, the server fails to start and another port is tried.
    pub fn start() -> std::io::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut server = Self { child: None, port };
            match server.restart() {
                Ok(()) => return Ok(server),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    /// The server's URL, `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it to exit. The port stays
    /// reserved for [`restart`](RedisServer::restart) only by convention.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is
    /// answered, as with a hung server. [`resume`](RedisServer::resume)
    /// undoes it.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a [`pause`](RedisServer::pause)d server run again (SIGCONT).
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> std::io::Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the server is stopped"))?;
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill {signal} failed: {status}"
            )))
        }
    }

    /// Starts the server again on the same port (after [`stop`]), empty,
    /// and waits until it answers: until this very process answers, so a
    /// stranger on the port is not mistaken for it.
    ///
    /// [`stop`]: RedisServer::stop
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(std::io::Error::other(format!(
                    "redis-server on port {} exited at once ({status}); is the port taken?",
                    self.port
                )));
            }
            if server_pid(self.port).is_some_and(|answered| answered == pid) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                self.stop();
                return Err(std::io::Error::other(format!(
                    "redis-server on port {} did not answer within 10 s",
                    self.port
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The process id of the Redis server answering on `port`, from
/// `INFO server`; `None` if nothing answers as Redis does.
#[cfg(feature = "redis")]
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let length: usize = header.strip_prefix('$')?.trim().parse().ok()?;
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:")?.trim().parse().ok())
}

#[cfg(feature = "redis")]
impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
