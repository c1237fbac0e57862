//! [`MemoryCache`]: an unbounded, thread-safe, in-process map.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;

use crate::cache::Cache;
use crate::clock::{Clock, SystemClock};
use crate::entry::Entry;
use crate::error::Result;

/// An unbounded, thread-safe, in-memory cache.
///
/// Entries live in a fixed number of shards, each a hash table behind its own
/// read-write lock, so threads working on different keys rarely wait for each
/// other. A key is hashed once (with [foldhash], a fast non-cryptographic
/// hasher seeded per cache) and that hash both picks the shard and finds the
/// slot. A read hit costs a hash, an uncontended read lock and a clone of the
/// value: store an `Arc` when values are expensive to clone.
///
/// Nothing is ever evicted; put a bounded cache in its place (any [`Cache`]
/// works in a [`Layered`](crate::Layered) stack) when memory matters.
///
/// # Deadlines
///
/// Entries keep both deadlines (see [`Entry`]). An expired entry is a miss
/// from the moment its deadline passes on the cache's [`Clock`] (the
/// [`SystemClock`] unless [`with_clock`](MemoryCache::with_clock) says
/// otherwise), and is dropped when a read finds it, or by
/// [`purge_expired`](MemoryCache::purge_expired). The clock is read only for
/// entries that have an expiry.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use layercache::{Cache, MemoryCache};
///
/// # fn main() -> layercache::Result<()> {
/// let cache: MemoryCache<String, Arc<str>> = MemoryCache::new();
/// cache.set("greeting".into(), Arc::from("hello"))?;
/// assert_eq!(cache.get(&"greeting".into())?.as_deref(), Some("hello"));
/// assert_eq!(cache.len(), 1);
/// assert_eq!(format!("{cache:?}"), "Memory(1 entry)");
/// # Ok(())
/// # }
/// ```
///
/// [foldhash]: https://docs.rs/foldhash
pub struct MemoryCache<K, V, S = DefaultHashBuilder> {
    shards: Box<[Shard<K, V>]>,
    clock: Arc<dyn Clock>,
    /// Right shift that turns a hash into a shard index (see `shard`).
    shift: u32,
    mask: usize,
    hasher: S,
}

/// One lock and table, aligned to its own cache lines so that shards do not
/// share a line (false sharing would make independent reads contend).
#[repr(align(128))]
struct Shard<K, V>(RwLock<HashTable<(K, Entry<V>)>>);

impl<K, V> Shard<K, V> {
    fn read(&self) -> RwLockReadGuard<'_, HashTable<(K, Entry<V>)>> {
        // A panic in a user's `Hash`/`Eq`/`Clone` while the lock was held
        // leaves a valid table; carry on rather than poison every caller.
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashTable<(K, Entry<V>)>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The most shards [`MemoryCache::with_shards`] makes.
const MAX_SHARDS: usize = 1 << 16;

/// Shards for a cache built with [`MemoryCache::new`]: four per CPU, at least
/// 4 and at most 64, a power of two. Computed once: asking the OS for the CPU
/// count reads files under cgroups.
fn default_shards() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        (cpus * 4).next_power_of_two().clamp(4, 64)
    })
}

impl<K, V> MemoryCache<K, V> {
    /// An empty cache with the default number of shards.
    pub fn new() -> Self {
        Self::with_shards(default_shards())
    }

    /// An empty cache with room for about `capacity` entries before it
    /// reallocates.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_shards_capacity_and_hasher(
            default_shards(),
            capacity,
            DefaultHashBuilder::default(),
        )
    }

    /// An empty cache with `shards` shards (rounded up to a power of two,
    /// from 1 to 65536). One shard is a single `RwLock<HashMap>`.
    pub fn with_shards(shards: usize) -> Self {
        Self::with_shards_capacity_and_hasher(shards, 0, DefaultHashBuilder::default())
    }
}

impl<K, V> Default for MemoryCache<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, S> MemoryCache<K, V, S> {
    /// An empty cache with `shards` shards (rounded up to a power of two),
    /// room for about `capacity` entries, and keys hashed by `hasher`.
    pub fn with_shards_capacity_and_hasher(shards: usize, capacity: usize, hasher: S) -> Self {
        let shards = shards.clamp(1, MAX_SHARDS).next_power_of_two();
        let per_shard = capacity.div_ceil(shards);
        let bits = shards.trailing_zeros();
        Self {
            shards: (0..shards)
                .map(|_| Shard(RwLock::new(HashTable::with_capacity(per_shard))))
                .collect(),
            // The table uses the low bits of the hash for the slot and the top
            // 7 for its control bytes; take the shard from the bits just below
            // those so the three never overlap.
            shift: 57 - bits,
            mask: shards - 1,
            hasher,
            clock: Arc::new(SystemClock),
        }
    }

    /// This cache, checking deadlines against `clock` (a
    /// [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The number of entries held, expired ones not yet dropped included (a
    /// snapshot: other threads may change it).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }

    /// Whether the cache holds no entries (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| shard.read().is_empty())
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> MemoryCache<K, V, S> {
    #[inline]
    fn locate(&self, key: &K) -> (u64, &Shard<K, V>) {
        let hash = self.hasher.hash_one(key);
        let index = (hash >> self.shift) as usize & self.mask;
        (hash, &self.shards[index])
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> MemoryCache<K, V, S> {
    /// Drop every entry that has expired; returns how many were dropped.
    ///
    /// Reads drop the expired entries they find; call this now and then
    /// when many keys are written with deadlines and never read again.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now();
        let mut purged = 0;
        for shard in self.shards.iter() {
            // Collected, and dropped after the lock is released: a value's
            // destructor may be slow.
            let gone: Vec<(K, Entry<V>)> = shard
                .write()
                .extract_if(|(_, entry)| entry.is_expired(now))
                .collect();
            purged += gone.len();
        }
        purged
    }

    /// Drops `key` if its entry has expired, after a read found it so.
    #[cold]
    fn drop_expired<Q: ?Sized + Eq>(&self, hash: u64, shard: &Shard<K, V>, key: &Q)
    where
        K: Borrow<Q>,
    {
        let mut table = shard.write();
        let clock = &*self.clock;
        let gone = match table.find_entry(hash, |(k, e)| k.borrow() == key && !e.alive(clock)) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        };
        drop(table);
        drop(gone);
    }

    /// The value for a key given in any borrowed form of `K` (`&str` for
    /// `String` keys), without building a `K`.
    ///
    /// ```
    /// use layercache::{Cache, MemoryCache};
    ///
    /// # fn main() -> layercache::Result<()> {
    /// let cache = MemoryCache::new();
    /// cache.set("k".to_string(), 1)?;
    /// assert_eq!(cache.get_by("k")?, Some(1));
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn get_by<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
        V: Clone,
    {
        Ok(self.find(key, |entry| entry.value.clone()))
    }

    /// Looks `key` up and applies `read` to its live entry, dropping it
    /// instead if it has expired.
    #[inline]
    fn find<Q, T>(&self, key: &Q, read: impl FnOnce(&Entry<V>) -> T) -> Option<T>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[(hash >> self.shift) as usize & self.mask];
        let table = shard.read();
        let (_, entry) = table.find(hash, |(k, _)| k.borrow() == key)?;
        if entry.alive(&*self.clock) {
            return Some(read(entry));
        }
        drop(table);
        self.drop_expired(hash, shard, key);
        None
    }
}

impl<K, V, S> Cache<K, V> for MemoryCache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync,
    V: Clone + Send + Sync,
    S: BuildHasher + Send + Sync,
{
    #[inline]
    fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.find(key, |entry| entry.value.clone()))
    }

    #[inline]
    fn get_entry(&self, key: &K) -> Result<Option<Entry<V>>> {
        Ok(self.find(key, Entry::clone))
    }

    #[inline]
    fn set_entry(&self, key: K, entry: Entry<V>) -> Result<()> {
        if !entry.alive(&*self.clock) {
            // Dead on arrival: the key is gone, as after any later expiry.
            self.remove(&key)?;
            return Ok(());
        }
        let (hash, shard) = self.locate(&key);
        let mut table = shard.write();
        let old = match table.find_mut(hash, |(k, _)| *k == key) {
            Some((_, slot)) => Some(std::mem::replace(slot, entry)),
            None => {
                table.insert_unique(hash, (key, entry), |(k, _)| self.hasher.hash_one(k));
                None
            }
        };
        drop(table);
        // The old value is dropped after the lock is released: its destructor
        // may be arbitrarily slow.
        drop(old);
        Ok(())
    }

    /// Removes `key`; an entry that had expired is dropped but not
    /// returned.
    #[inline]
    fn remove(&self, key: &K) -> Result<Option<V>> {
        let (hash, shard) = self.locate(key);
        let mut table = shard.write();
        let removed = match table.find_entry(hash, |(k, _)| k == key) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        };
        drop(table);
        Ok(removed
            .filter(|(_, entry)| entry.alive(&*self.clock))
            .map(|(_, entry)| entry.value))
    }

    fn keys(&self) -> Result<Vec<K>> {
        let now = self.clock.now();
        let mut keys = Vec::new();
        for shard in self.shards.iter() {
            let table = shard.read();
            keys.reserve(table.len());
            keys.extend(
                table
                    .iter()
                    .filter(|(_, entry)| !entry.is_expired(now))
                    .map(|(k, _)| k.clone()),
            );
        }
        Ok(keys)
    }

    fn values(&self) -> Result<Vec<V>> {
        let now = self.clock.now();
        let mut values = Vec::new();
        for shard in self.shards.iter() {
            let table = shard.read();
            values.reserve(table.len());
            values.extend(
                table
                    .iter()
                    .filter(|(_, entry)| !entry.is_expired(now))
                    .map(|(_, entry)| entry.value.clone()),
            );
        }
        Ok(values)
    }

    fn clear(&self) -> Result<()> {
        for shard in self.shards.iter() {
            let old = std::mem::take(&mut *shard.write());
            drop(old);
        }
        Ok(())
    }

    /// Removes the matching keys; an expired entry is dropped whether or
    /// not it matches, and is not counted.
    fn clear_matching(&self, matches: &dyn Fn(&K) -> bool) -> Result<usize> {
        let now = self.clock.now();
        let mut removed = 0;
        for shard in self.shards.iter() {
            // Snapshot the keys, then run `matches` with no lock held, so that
            // it may use this cache.
            let snapshot: Vec<(K, bool)> = shard
                .read()
                .iter()
                .map(|(k, entry)| (k.clone(), entry.is_expired(now)))
                .collect();
            let (mut doomed, expired): (Vec<_>, Vec<_>) =
                snapshot.into_iter().partition(|(_, expired)| !*expired);
            doomed.retain(|(k, _)| matches(k));
            doomed.extend(expired);
            if doomed.is_empty() {
                continue;
            }
            let mut gone = Vec::with_capacity(doomed.len());
            let mut table = shard.write();
            for (key, expired) in &doomed {
                let hash = self.hasher.hash_one(key);
                // An expired key is dropped only if it is still the expired
                // entry: another thread may have set it again meanwhile.
                let found = table.find_entry(hash, |(k, entry)| {
                    k == key && (!*expired || entry.is_expired(now))
                });
                if let Ok(entry) = found {
                    gone.push(entry.remove().0);
                }
            }
            drop(table);
            removed += gone
                .iter()
                .filter(|(_, entry)| !entry.is_expired(now))
                .count();
        }
        Ok(removed)
    }

    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }
}

impl<K, V, S> fmt::Debug for MemoryCache<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.len();
        write!(
            f,
            "Memory({len} {})",
            if len == 1 { "entry" } else { "entries" }
        )
    }
}
