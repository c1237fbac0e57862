//! [`Serialised`]: a cache of values stored as bytes in another cache.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::Cache;
use crate::codec::Codec;
use crate::error::{Error, Result};

/// A cache of values of type `V` on top of a byte cache `C`, encoding with
/// the codec `X` on the way in and decoding on the way out (ftrack's
/// `SerialisedCache`).
///
/// Use it to put values into a store that holds bytes: a
/// [`MemoryCache<K, Vec<u8>>`](crate::MemoryCache), a file, a server.
///
/// # Stale entries
///
/// Stored bytes that no longer decode (the value's type changed, the store
/// was damaged) are a miss: `get` removes the entry and answers `Ok(None)`,
/// counting it in [`stale`](Serialised::stale), so the caller fetches a
/// fresh value and the next `set` replaces it. In
/// [`strict`](Serialised::strict) mode `get` returns the
/// [`Error::Decode`] instead and leaves the entry alone.
///
/// # Example
///
/// ```
/// # #[cfg(feature = "json")] {
/// use layercache::{Cache, MemoryCache, Serialised, codec::Json};
///
/// let bytes: MemoryCache<String, Vec<u8>> = MemoryCache::new();
/// let cache = Serialised::new(bytes, Json);
/// cache.set("k".to_string(), vec!["x".to_string()]).unwrap();
/// assert_eq!(cache.inner().get(&"k".to_string()).unwrap(), Some(br#"["x"]"#.to_vec()));
///
/// // Bytes that are not a Vec<String> read as a miss and are dropped.
/// cache.inner().set("bad".to_string(), b"{oops".to_vec()).unwrap();
/// let value: Option<Vec<String>> = cache.get(&"bad".to_string()).unwrap();
/// assert_eq!(value, None);
/// assert_eq!(cache.inner().get(&"bad".to_string()).unwrap(), None);
/// assert_eq!(format!("{cache:?}"), "Serialised<Json>(Memory(1 entries))");
/// # }
/// ```
pub struct Serialised<C, X> {
    inner: C,
    codec: X,
    strict: bool,
    stale: AtomicU64,
}

impl<C, X> Serialised<C, X> {
    /// Values encoded with `codec`, stored in `inner`.
    pub fn new(inner: C, codec: X) -> Self {
        Self {
            inner,
            codec,
            strict: false,
            stale: AtomicU64::new(0),
        }
    }

    /// With `strict` on, bytes that do not decode are an error rather than a
    /// miss: `get` returns it and leaves the entry in place; `remove` returns
    /// it after removing the entry.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Whether decoding is strict.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// The byte cache underneath.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The codec.
    pub fn codec(&self) -> &X {
        &self.codec
    }

    /// The byte cache, taken back.
    pub fn into_inner(self) -> C {
        self.inner
    }

    /// How many entries failed to decode and were treated as misses.
    pub fn stale(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// A decode failure: an error in strict mode, else a counted miss.
    fn stale_entry<V>(&self, error: Error) -> Result<Option<V>> {
        if self.strict {
            return Err(error);
        }
        self.stale.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }
}

impl<K, V, C, X> Cache<K, V> for Serialised<C, X>
where
    C: Cache<K, Vec<u8>>,
    X: Codec<V>,
{
    fn get(&self, key: &K) -> Result<Option<V>> {
        let Some(bytes) = self.inner.get(key)? else {
            return Ok(None);
        };
        match self.codec.decode(&bytes) {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                if !self.strict {
                    // Drop the stale entry so the next set replaces it and
                    // later reads do not pay for a failed decode again.
                    self.inner.remove(key)?;
                }
                self.stale_entry(error)
            }
        }
    }

    fn set(&self, key: K, value: V) -> Result<()> {
        let bytes = self.codec.encode(&value)?;
        self.inner.set(key, bytes)
    }

    fn remove(&self, key: &K) -> Result<Option<V>> {
        match self.inner.remove(key)? {
            None => Ok(None),
            Some(bytes) => match self.codec.decode(&bytes) {
                Ok(value) => Ok(Some(value)),
                Err(error) => self.stale_entry(error),
            },
        }
    }

    fn keys(&self) -> Result<Vec<K>> {
        self.inner.keys()
    }

    fn clear(&self) -> Result<()> {
        self.inner.clear()
    }

    fn clear_matching(&self, matches: &dyn Fn(&K) -> bool) -> Result<usize> {
        self.inner.clear_matching(matches)
    }
}

impl<C: fmt::Debug, X: fmt::Debug> fmt::Debug for Serialised<C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serialised<{:?}>({:?})", self.codec, self.inner)
    }
}
