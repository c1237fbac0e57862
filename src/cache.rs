//! The [`Cache`] trait, its blanket impls and the [`CacheExt`] conveniences.

use std::fmt::{self, Debug};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::entry::Entry;
use crate::error::Result;

/// What a layer reports to a [watcher](Cache::watch) when a key changed
/// behind its back (another process or host wrote it).
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation<'a, K> {
    /// This key changed or went away.
    Key(&'a K),
    /// Anything may have changed (the layer lost track, or was cleared):
    /// forget everything learned from it.
    All,
}

impl<K> Clone for Invalidation<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Invalidation<'_, K> {}

/// What receives a layer's [`Invalidation`]s: see [`Cache::watch`].
///
/// Any `Fn(Invalidation<'_, K>) + Send + Sync` closure is a watcher that
/// stays active for good.
pub trait Watcher<K>: Send + Sync {
    /// `invalidation` happened in the watched layer.
    fn invalidated(&self, invalidation: Invalidation<'_, K>);

    /// Whether this watcher still wants reports. A layer drops watchers
    /// that say no (a [`Layered`](crate::Layered) stack's watcher says no
    /// once the stack is dropped), so a long-lived layer shared by many
    /// short-lived stacks does not collect them.
    fn is_active(&self) -> bool {
        true
    }
}

impl<K, F: Fn(Invalidation<'_, K>) + Send + Sync> Watcher<K> for F {
    fn invalidated(&self, invalidation: Invalidation<'_, K>) {
        self(invalidation)
    }
}

/// The watchers a reporting layer keeps: what its
/// [`watch`](Cache::watch) adds to and what it reports changes to.
///
/// It drops watchers that say they are no longer
/// [active](Watcher::is_active) whenever one is added or a change is
/// reported, so a long-lived layer shared by short-lived stacks does not
/// collect them, and it calls watchers (`invalidated` and `is_active`) with
/// no lock held, so a watcher may call back into the layer or the list.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use layercache::{Invalidation, Watcher, Watchers};
///
/// let watchers: Watchers<String> = Watchers::new();
/// let heard = Arc::new(AtomicUsize::new(0));
/// let count = heard.clone();
/// watchers.add(Arc::new(move |_: Invalidation<'_, String>| {
///     count.fetch_add(1, Ordering::Relaxed);
/// }));
/// watchers.report(Invalidation::Key(&"k".to_string()));
/// assert_eq!(heard.load(Ordering::Relaxed), 1);
/// ```
pub struct Watchers<K>(Mutex<Vec<Arc<dyn Watcher<K>>>>);

impl<K> Watchers<K> {
    /// No watchers yet.
    pub const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    fn list(&self) -> MutexGuard<'_, Vec<Arc<dyn Watcher<K>>>> {
        // The list stays valid whatever panicked while it was held.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keep `watcher` (and drop the inactive ones).
    pub fn add(&self, watcher: Arc<dyn Watcher<K>>) {
        self.prune();
        self.list().push(watcher);
    }

    /// Tell every active watcher of `invalidation`, with no lock held. A
    /// watcher that panics does not keep the others from hearing of it: the
    /// first panic is raised again once all have been told.
    pub fn report(&self, invalidation: Invalidation<'_, K>) {
        let mut panicked = None;
        for watcher in self.prune() {
            let told = catch_unwind(AssertUnwindSafe(|| watcher.invalidated(invalidation)));
            if let Err(panic) = told {
                panicked.get_or_insert(panic);
            }
        }
        if let Some(panic) = panicked {
            resume_unwind(panic);
        }
    }

    /// Drops the inactive watchers and returns the active ones. `is_active`
    /// runs with no lock held, so it may use this list too.
    fn prune(&self) -> Vec<Arc<dyn Watcher<K>>> {
        let all = self.list().clone();
        let (active, inactive): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|watcher| watcher.is_active());
        if !inactive.is_empty() {
            self.list()
                .retain(|watcher| !inactive.iter().any(|gone| Arc::ptr_eq(watcher, gone)));
        }
        active
    }

    /// How many watchers are kept, inactive ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }
}

impl<K> Default for Watchers<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> fmt::Debug for Watchers<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Watchers({})", self.len())
    }
}

/// A thread-safe key-value cache: the one trait every layer implements.
///
/// A backend implements four methods — [`get_entry`](Cache::get_entry),
/// [`set_entry`](Cache::set_entry), [`remove`](Cache::remove) and
/// [`keys`](Cache::keys) — and [`Debug`], which should show its structure
/// (the stack of a [`Layered`](crate::Layered) cache prints as
/// `Layered[Memory(2 entries), Serialised<Json>(...)]`). The other methods
/// have defaults built on those four; override them when the backend can do
/// better.
///
/// The trait is object safe, so `Box<dyn Cache<K, V>>` is a cache, and so
/// are `Arc<C>` and `&C` for any cache `C`.
///
/// # Entries and deadlines
///
/// Every stored value is an [`Entry`]: the value and two optional
/// deadlines, `expires` (after it, a read misses) and `fresh_until` (after
/// it, the value is stale: still returned, but due for a refresh). The
/// contract every implementation keeps:
///
/// - [`get_entry`](Cache::get_entry) never returns an entry that has
///   expired by the cache's [`clock`](Cache::clock), and returns the
///   deadlines it was given. A layer that keeps times relative, like Redis,
///   turns them into durations and back, so they may move by the time a
///   request takes to reach it plus the clock's resolution (milliseconds);
///   no layer moves them further, except that a write which failed with a
///   timeout may still be applied later by a stalled server.
/// - [`set_entry`](Cache::set_entry) either keeps both deadlines or fails
///   with [`Error::Unsupported`](crate::Error::Unsupported); it never stores
///   an expiring entry as one that lives forever. An entry that has already
///   expired is not stored, and removes what was there.
/// - [`get`](Cache::get) and [`set`](Cache::set) are the same calls without
///   deadlines; their defaults go through the entry methods.
///
/// The entry methods are required, not provided, so that a wrapper cannot
/// forget to forward them (it would report entries that never expire, and a
/// [`Layered`](crate::Layered) stack would promote a dead value for good).
///
/// # Errors
///
/// A miss is `Ok(None)`, never an error. `Err` means the cache could not
/// answer: I/O, a codec, corrupt data, a backend that is down.
///
/// # Example
///
/// ```
/// use layercache::{Cache, MemoryCache};
///
/// # fn main() -> layercache::Result<()> {
/// let cache: MemoryCache<String, u32> = MemoryCache::new();
/// assert_eq!(cache.get(&"a".to_string())?, None);
/// cache.set("a".to_string(), 1)?;
/// assert_eq!(cache.get(&"a".to_string())?, Some(1));
/// assert_eq!(cache.remove(&"a".to_string())?, Some(1));
/// assert_eq!(cache.remove(&"a".to_string())?, None);
/// # Ok(())
/// # }
/// ```
pub trait Cache<K, V>: Send + Sync + Debug {
    /// The entry stored for `key` with its deadlines, or `None` (also when
    /// it has expired).
    fn get_entry(&self, key: &K) -> Result<Option<Entry<V>>>;

    /// Store `entry` for `key`, replacing what was there, keeping its
    /// deadlines (or failing if the cache cannot keep them).
    fn set_entry(&self, key: K, entry: Entry<V>) -> Result<()>;

    /// Remove `key`, returning what was stored, or `None`.
    fn remove(&self, key: &K) -> Result<Option<V>>;

    /// A snapshot of the keys; entries may change as soon as it returns.
    fn keys(&self) -> Result<Vec<K>>;

    /// The value stored for `key`, or `None` (also when it has expired).
    ///
    /// The default is [`get_entry`](Cache::get_entry) without the deadlines.
    #[inline]
    fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.get_entry(key)?.map(Entry::into_value))
    }

    /// Store `value` for `key`, replacing what was there; it never expires.
    ///
    /// The default is [`set_entry`](Cache::set_entry) with no deadlines.
    #[inline]
    fn set(&self, key: K, value: V) -> Result<()> {
        self.set_entry(key, Entry::new(value))
    }

    /// A snapshot of the values.
    ///
    /// The default asks [`get`](Cache::get) for each of [`keys`](Cache::keys)
    /// and skips keys that vanished in between.
    fn values(&self) -> Result<Vec<V>> {
        let keys = self.keys()?;
        let mut values = Vec::with_capacity(keys.len());
        for key in &keys {
            if let Some(value) = self.get(key)? {
                values.push(value);
            }
        }
        Ok(values)
    }

    /// Remove every entry.
    ///
    /// The default removes each of [`keys`](Cache::keys); a key that vanished
    /// in between is not an error.
    fn clear(&self) -> Result<()> {
        for key in self.keys()? {
            self.remove(&key)?;
        }
        Ok(())
    }

    /// Remove every entry whose key `matches`, returning how many were
    /// removed.
    ///
    /// The default removes each matching key of [`keys`](Cache::keys) and
    /// counts those that were still there.
    fn clear_matching(&self, matches: &dyn Fn(&K) -> bool) -> Result<usize> {
        let mut removed = 0;
        for key in self.keys()? {
            if matches(&key) && self.remove(&key)?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The clock this cache checks deadlines against; the default is the
    /// [`SystemClock`]. [`CacheExt::set_with_ttl`] reads it to turn a
    /// time-to-live into a deadline.
    fn clock(&self) -> &dyn Clock {
        &SystemClock
    }

    /// Ask this cache to report keys that *others* change (another process
    /// or host writing the same store) to `watcher`, from now on. Returns
    /// whether it will: the default, for a cache only this handle writes,
    /// is `false` and never calls `watcher`.
    ///
    /// A [`Layered`](crate::Layered) stack watches each of its layers and,
    /// on a report, drops the key from the layers above and stops any
    /// promotion of it that is under way. A cache calls `watcher` with no
    /// lock of its own held.
    fn watch(&self, watcher: Arc<dyn Watcher<K>>) -> bool {
        let _ = watcher;
        false
    }
}

/// Implements `Cache` for a pointer-like type by forwarding every method,
/// the provided ones included, so the pointee's overrides are kept.
macro_rules! forward_cache {
    ($($ty:ty),*) => {$(
        impl<K, V, C: $crate::cache::Cache<K, V> + ?Sized> $crate::cache::Cache<K, V> for $ty {
            #[inline]
            fn get_entry(&self, key: &K) -> $crate::error::Result<Option<$crate::entry::Entry<V>>> {
                (**self).get_entry(key)
            }
            #[inline]
            fn set_entry(&self, key: K, entry: $crate::entry::Entry<V>) -> $crate::error::Result<()> {
                (**self).set_entry(key, entry)
            }
            #[inline]
            fn get(&self, key: &K) -> $crate::error::Result<Option<V>> {
                (**self).get(key)
            }
            #[inline]
            fn set(&self, key: K, value: V) -> $crate::error::Result<()> {
                (**self).set(key, value)
            }
            #[inline]
            fn remove(&self, key: &K) -> $crate::error::Result<Option<V>> {
                (**self).remove(key)
            }
            fn keys(&self) -> $crate::error::Result<Vec<K>> {
                (**self).keys()
            }
            fn values(&self) -> $crate::error::Result<Vec<V>> {
                (**self).values()
            }
            fn clear(&self) -> $crate::error::Result<()> {
                (**self).clear()
            }
            fn clear_matching(&self, matches: &dyn Fn(&K) -> bool) -> $crate::error::Result<usize> {
                (**self).clear_matching(matches)
            }
            fn clock(&self) -> &dyn $crate::clock::Clock {
                (**self).clock()
            }
            fn watch(&self, watcher: std::sync::Arc<dyn $crate::cache::Watcher<K>>) -> bool {
                (**self).watch(watcher)
            }
        }
    )*};
}

forward_cache!(Box<C>, Arc<C>, &C);
pub(crate) use forward_cache;

/// Generic conveniences for every [`Cache`], kept out of the trait so that it
/// stays object safe. Brought in by `use layercache::CacheExt` (or the
/// prelude).
pub trait CacheExt<K, V>: Cache<K, V> {
    /// The value for `key`, computing and storing it with `make` on a miss.
    ///
    /// This is not atomic: two callers that miss at once both call `make`.
    /// Use a [`Memoiser`](crate::Memoiser) when `make` must run once.
    ///
    /// # Errors
    ///
    /// The cache's error when the read fails. When the value was computed
    /// but storing it failed, an [`Error::NotStored`](crate::Error::NotStored)
    /// that carries it: [`Error::into_computed`](crate::Error::into_computed)
    /// gives it back. (Under [`ErrorPolicy::Degrade`](crate::ErrorPolicy)
    /// a [`Layered`](crate::Layered) stack skips a failing layer, so the
    /// value comes back as `Ok`.)
    ///
    /// ```
    /// use layercache::{CacheExt, MemoryCache};
    ///
    /// # fn main() -> layercache::Result<()> {
    /// let cache = MemoryCache::new();
    /// assert_eq!(cache.get_or_insert_with(1, || "one".to_string())?, "one");
    /// assert_eq!(cache.get_or_insert_with(1, || "uno".to_string())?, "one");
    /// # Ok(())
    /// # }
    /// ```
    fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> Result<V>
    where
        V: Clone + Send + Sync + 'static,
    {
        if let Some(value) = self.get(&key)? {
            return Ok(value);
        }
        let value = make();
        match self.set(key, value.clone()) {
            Ok(()) => Ok(value),
            Err(error) => Err(crate::Error::not_stored(error, value)),
        }
    }

    /// Like [`get_or_insert_with`](CacheExt::get_or_insert_with) for a
    /// fallible `make`: an `Err` from `make` is returned and nothing is
    /// stored; a value that could not be stored comes back in an
    /// [`Error::NotStored`](crate::Error::NotStored).
    fn try_get_or_insert_with<E>(
        &self,
        key: K,
        make: impl FnOnce() -> std::result::Result<V, E>,
    ) -> std::result::Result<V, E>
    where
        V: Clone + Send + Sync + 'static,
        E: From<crate::Error>,
    {
        if let Some(value) = self.get(&key)? {
            return Ok(value);
        }
        let value = make()?;
        match self.set(key, value.clone()) {
            Ok(()) => Ok(value),
            Err(error) => Err(crate::Error::not_stored(error, value).into()),
        }
    }

    /// Store `value` for `key`, expiring `ttl` from now by the cache's
    /// [`clock`](Cache::clock).
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::{Cache, CacheExt, MemoryCache};
    ///
    /// # fn main() -> layercache::Result<()> {
    /// let cache = MemoryCache::new();
    /// cache.set_with_ttl("session".to_string(), 42, Duration::from_secs(300))?;
    /// let entry = cache.get_entry(&"session".to_string())?.expect("just set");
    /// assert_eq!(entry.value, 42);
    /// assert!(entry.expires().is_some());
    /// # Ok(())
    /// # }
    /// ```
    fn set_with_ttl(&self, key: K, value: V, ttl: Duration) -> Result<()> {
        let now = self.clock().now();
        self.set_entry(key, Entry::expiring_in(value, now, ttl))
    }

    /// Store `value` for `key`, fresh for `fresh_for` and expiring after
    /// `ttl`, both from now by the cache's [`clock`](Cache::clock). Between
    /// the two the value is served but stale (see [`Entry`]).
    fn set_with_freshness(
        &self,
        key: K,
        value: V,
        fresh_for: Duration,
        ttl: Duration,
    ) -> Result<()> {
        let now = self.clock().now();
        let entry = Entry::expiring_in(value, now, ttl).with_fresh_until(now + fresh_for);
        self.set_entry(key, entry)
    }

    /// Store `value` for `key`, expiring at `expires`.
    fn set_expiring_at(&self, key: K, value: V, expires: Timestamp) -> Result<()> {
        self.set_entry(key, Entry::new(value).with_expires(expires))
    }

    /// The value for a key given in a borrowed form: `&str` for `String`
    /// keys, `&[u8]` for `Vec<u8>` keys. It builds the owned key (an
    /// allocation for those types); [`MemoryCache`](crate::MemoryCache) has
    /// an inherent `get_by` that does not.
    ///
    /// ```
    /// use layercache::{Cache, CacheExt, MemoryCache};
    ///
    /// # fn main() -> layercache::Result<()> {
    /// let cache = MemoryCache::new().boxed();
    /// cache.set("k".to_string(), 1)?;
    /// assert_eq!(cache.get_by("k")?, Some(1));
    /// assert_eq!(cache.remove_by("k")?, Some(1));
    /// # Ok(())
    /// # }
    /// ```
    fn get_by<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        Q: ?Sized + ToOwned<Owned = K>,
    {
        self.get(&key.to_owned())
    }

    /// Remove a key given in a borrowed form; see
    /// [`get_by`](CacheExt::get_by).
    fn remove_by<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        Q: ?Sized + ToOwned<Owned = K>,
    {
        self.remove(&key.to_owned())
    }

    /// Remove every entry whose key contains a match for `pattern`
    /// (Python's `re.search`, as ftrack's `clear(pattern=...)`; anchor the
    /// pattern with `^...$` for a whole-key match). Returns how many were
    /// removed.
    ///
    /// ```
    /// use layercache::{Cache, CacheExt, MemoryCache};
    /// use layercache::regex::Regex; // re-exported: no regex dependency of your own
    ///
    /// # fn main() -> layercache::Result<()> {
    /// let cache = MemoryCache::new();
    /// cache.set("Task:1".to_string(), 1)?;
    /// cache.set("User:1".to_string(), 2)?;
    /// let task = Regex::new("^Task:").expect("valid pattern");
    /// assert_eq!(cache.clear_pattern(&task)?, 1);
    /// assert_eq!(cache.keys()?, vec!["User:1".to_string()]);
    /// # Ok(())
    /// # }
    /// ```
    fn clear_pattern(&self, pattern: &regex::Regex) -> Result<usize>
    where
        K: AsRef<str>,
    {
        self.clear_matching(&|key: &K| pattern.is_match(key.as_ref()))
    }

    /// This cache behind a `Box<dyn Cache>`, for stacks that mix types.
    fn boxed<'a>(self) -> Box<dyn Cache<K, V> + 'a>
    where
        Self: Sized + 'a,
    {
        Box::new(self)
    }

    /// This byte cache as a cache of values encoded with `codec`: see
    /// [`Serialised`](crate::Serialised).
    ///
    /// ```
    /// # #[cfg(feature = "json")] {
    /// use layercache::{Cache, CacheExt, MemoryCache, codec::Json};
    ///
    /// let bytes: MemoryCache<String, Vec<u8>> = MemoryCache::new();
    /// let values = bytes.serialised(Json);
    /// values.set("k".to_string(), vec![1u32, 2, 3]).unwrap();
    /// let back: Option<Vec<u32>> = values.get(&"k".to_string()).unwrap();
    /// assert_eq!(back, Some(vec![1, 2, 3]));
    /// # }
    /// ```
    fn serialised<X>(self, codec: X) -> crate::Serialised<Self, X>
    where
        Self: Sized + Cache<K, Vec<u8>>,
        X: crate::codec::SelfDescribing,
    {
        crate::Serialised::new(self, codec)
    }

    /// This byte cache as a cache of values encoded with any `codec`, its
    /// keys under the `schema`'s version: see
    /// [`Serialised::versioned`](crate::Serialised::versioned).
    ///
    /// ```
    /// # #[cfg(all(feature = "bincode", feature = "reflect"))] {
    /// use layercache::{Cache, CacheExt, MemoryCache, Schema, codec::Bincode};
    ///
    /// # fn main() -> layercache::Result<()> {
    /// let bytes: MemoryCache<String, Vec<u8>> = MemoryCache::new();
    /// let values = bytes.versioned(Bincode::new(), Schema::<Vec<u32>>::version("v1")?);
    /// values.set("k".to_string(), vec![1, 2, 3])?;
    /// assert_eq!(values.get(&"k".to_string())?, Some(vec![1, 2, 3]));
    /// assert_eq!(values.inner().inner().keys()?, ["v1.bincode:k"]);
    /// # Ok(())
    /// # }
    /// # main().unwrap();
    /// # }
    /// ```
    fn versioned<X, T>(
        self,
        codec: X,
        schema: crate::Schema<T>,
    ) -> crate::schema::Versioned<K, T, Self, X>
    where
        Self: Sized + Cache<K, Vec<u8>>,
        X: crate::codec::Codec<T>,
    {
        crate::Serialised::versioned(self, codec, schema)
    }
}

impl<K, V, C: Cache<K, V> + ?Sized> CacheExt<K, V> for C {}
