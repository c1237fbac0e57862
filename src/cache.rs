//! The [`Cache`] trait, its blanket impls and the [`CacheExt`] conveniences.

use std::fmt::Debug;
use std::sync::Arc;

use crate::error::Result;

/// A thread-safe key-value cache: the one trait every layer implements.
///
/// A backend implements four methods — [`get`](Cache::get),
/// [`set`](Cache::set), [`remove`](Cache::remove) and [`keys`](Cache::keys) —
/// and [`Debug`], which should show its structure (the stack of a
/// [`Layered`](crate::Layered) cache prints as
/// `Layered[Memory(2 entries), Serialised<Json>(...)]`). The other methods
/// have defaults built on those four; override them when the backend can do
/// better.
///
/// The trait is object safe, so `Box<dyn Cache<K, V>>` is a cache, and so
/// are `Arc<C>` and `&C` for any cache `C`.
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
    /// The value stored for `key`, or `None`.
    fn get(&self, key: &K) -> Result<Option<V>>;

    /// Store `value` for `key`, replacing what was there.
    fn set(&self, key: K, value: V) -> Result<()>;

    /// Remove `key`, returning what was stored, or `None`.
    fn remove(&self, key: &K) -> Result<Option<V>>;

    /// A snapshot of the keys; entries may change as soon as it returns.
    fn keys(&self) -> Result<Vec<K>>;

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
}

/// Implements `Cache` for a pointer-like type by forwarding every method,
/// the provided ones included, so the pointee's overrides are kept.
macro_rules! forward_cache {
    ($($ty:ty),*) => {$(
        impl<K, V, C: $crate::cache::Cache<K, V> + ?Sized> $crate::cache::Cache<K, V> for $ty {
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
        V: Clone,
    {
        if let Some(value) = self.get(&key)? {
            return Ok(value);
        }
        let value = make();
        self.set(key, value.clone())?;
        Ok(value)
    }

    /// Like [`get_or_insert_with`](CacheExt::get_or_insert_with) for a
    /// fallible `make`: an `Err` from `make` is returned and nothing is
    /// stored.
    fn try_get_or_insert_with<E>(
        &self,
        key: K,
        make: impl FnOnce() -> std::result::Result<V, E>,
    ) -> std::result::Result<V, E>
    where
        V: Clone,
        E: From<crate::Error>,
    {
        if let Some(value) = self.get(&key)? {
            return Ok(value);
        }
        let value = make()?;
        self.set(key, value.clone())?;
        Ok(value)
    }

    /// Remove every entry whose key contains a match for `pattern`
    /// (Python's `re.search`, as ftrack's `clear(pattern=...)`; anchor the
    /// pattern with `^...$` for a whole-key match). Returns how many were
    /// removed.
    ///
    /// ```
    /// use layercache::{Cache, CacheExt, MemoryCache};
    /// use regex::Regex;
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
    {
        crate::Serialised::new(self, codec)
    }
}

impl<K, V, C: Cache<K, V> + ?Sized> CacheExt<K, V> for C {}
