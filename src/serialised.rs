//! [`Serialised`]: a cache of values stored as bytes in another cache.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::{Cache, Watcher};
use crate::clock::Clock;
use crate::codec::Codec;
use crate::entry::Entry;
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
    /// Decodes the stored bytes; the deadlines pass through unchanged.
    fn get_entry(&self, key: &K) -> Result<Option<Entry<V>>> {
        let Some(entry) = self.inner.get_entry(key)? else {
            return Ok(None);
        };
        match entry.try_map(|bytes| self.codec.decode(&bytes)) {
            Ok(entry) => Ok(Some(entry)),
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

    /// Encodes the value; the deadlines pass through unchanged.
    fn set_entry(&self, key: K, entry: Entry<V>) -> Result<()> {
        let entry = entry.try_map(|value| self.codec.encode(&value))?;
        self.inner.set_entry(key, entry)
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

    fn clock(&self) -> &dyn Clock {
        self.inner.clock()
    }

    fn watch(&self, watcher: Arc<dyn Watcher<K>>) -> bool {
        self.inner.watch(watcher)
    }
}

impl<C: fmt::Debug, X: fmt::Debug> fmt::Debug for Serialised<C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serialised<{:?}>({:?})", self.codec, self.inner)
    }
}
