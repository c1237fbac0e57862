//! [`Serialised`]: a cache of values stored as bytes in another cache.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::{Cache, Watcher};
use crate::clock::Clock;
use crate::codec::{Codec, SelfDescribing};
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::schema::{Schema, Versioned};

/// A cache of values of type `V` on top of a byte cache `C`, encoding with
/// the codec `X` on the way in and decoding on the way out (ftrack's
/// `SerialisedCache`).
///
/// Use it to put values into a store that holds bytes: a file, a server, a
/// [`MemoryCache<K, Vec<u8>>`](crate::MemoryCache).
///
/// # A changed type is a miss, never wrong data
///
/// Bytes written by another version of the program may be read as a type
/// that has changed since. How that is kept from being wrong data depends
/// on the codec:
///
/// - A [self-describing](SelfDescribing) codec (JSON, CBOR) names fields
///   and types in its bytes: a value of a changed type fails to decode (a
///   miss), or decodes field by field. [`Serialised::new`] takes these.
/// - A codec that stores fields by position (bincode, most codecs of your
///   own) would read a struct with two fields swapped, or a `u64` that
///   became an `i64`, as wrong data, so `new` refuses it at compile time.
///   It goes through [`Serialised::versioned`], which puts every stored key
///   under the [`Schema`]'s version: a program whose type changed reads
///   and writes keys of its own, and two versions sharing a cache never
///   read, overwrite or remove each other's entries.
/// - [`Serialised::unversioned`] takes any codec, for a store that no other
///   version of the program reads (a `MemoryCache` in one process).
///
/// # Stale entries
///
/// Stored bytes that do not decode (damage, or a changed type under a
/// self-describing codec) are a miss: `get` answers `Ok(None)` and counts
/// it in [`stale`](Serialised::stale), so the caller fetches a fresh value
/// and its next `set` replaces them. They are not removed: by then another
/// writer may have put a fresh value under the key, and another version of
/// the program may be reading them. In [`strict`](Serialised::strict) mode
/// `get` returns the [`Error::Decode`] instead.
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
/// // Bytes that are not a Vec<String> read as a miss, and stay.
/// cache.inner().set("bad".to_string(), b"{oops".to_vec()).unwrap();
/// let value: Option<Vec<String>> = cache.get(&"bad".to_string()).unwrap();
/// assert_eq!(value, None);
/// assert_eq!(cache.stale(), 1);
/// assert_eq!(cache.inner().get(&"bad".to_string()).unwrap(), Some(b"{oops".to_vec()));
/// assert_eq!(format!("{cache:?}"), "Serialised<Json>(Memory(2 entries))");
/// # }
/// ```
pub struct Serialised<C, X> {
    inner: C,
    codec: X,
    strict: bool,
    stale: AtomicU64,
}

impl<C, X> Serialised<C, X> {
    /// Values encoded with `codec`, a [self-describing](SelfDescribing) one,
    /// stored in `inner` under their keys as they are.
    ///
    /// A codec that stores fields by position does not compile here: use
    /// [`versioned`](Self::versioned) (or, for a store only this build of
    /// the program reads, [`unversioned`](Self::unversioned)).
    ///
    /// ```compile_fail
    /// use layercache::{MemoryCache, Serialised, codec::Bincode};
    ///
    /// // error: `Bincode` stores fields by position: a value of a changed
    /// // type could decode as wrong data
    /// let cache = Serialised::new(MemoryCache::<String, Vec<u8>>::new(), Bincode::new());
    /// ```
    pub fn new(inner: C, codec: X) -> Self
    where
        X: SelfDescribing,
    {
        Self::unversioned(inner, codec)
    }

    /// Values encoded with any `codec`, stored in `inner` under their keys
    /// as they are, with no schema version: for a store that no other
    /// version of the program reads, such as a
    /// [`MemoryCache`](crate::MemoryCache) in one process. Over a file or a
    /// server that outlives a build, use [`versioned`](Self::versioned).
    pub fn unversioned(inner: C, codec: X) -> Self {
        Self {
            inner,
            codec,
            strict: false,
            stale: AtomicU64::new(0),
        }
    }

    /// Values of the one type `V` encoded with `codec`, stored in `inner`
    /// under keys put in the namespace of `schema` and the codec
    /// (`<version>.<codec>:<key>`): a [`Versioned`] store, whose
    /// [`keys`](Cache::keys), [`clear`](Cache::clear) and watchers see only
    /// its own keys.
    ///
    /// ```
    /// # #[cfg(all(feature = "bincode", feature = "reflect"))] {
    /// use layercache::{Cache, MemoryCache, Schema, Serialised, codec::Bincode};
    ///
    /// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    /// struct V1 { a: u32, b: u32 }
    /// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    /// struct V2 { b: u32, a: u32 }
    ///
    /// # fn main() -> layercache::Result<()> {
    /// let store = std::sync::Arc::new(MemoryCache::<String, Vec<u8>>::new());
    /// let v1 = Serialised::versioned(store.clone(), Bincode::new(), Schema::<V1>::reflect()?);
    /// let v2 = Serialised::versioned(store.clone(), Bincode::new(), Schema::<V2>::reflect()?);
    /// v1.set("k".to_string(), V1 { a: 1, b: 2 })?;
    /// // Version 2 misses, where it would have read b = 1 and a = 2...
    /// assert_eq!(v2.get(&"k".to_string())?, None);
    /// v2.set("k".to_string(), V2 { b: 2, a: 1 })?;
    /// // ...and version 1's entry is still there.
    /// assert_eq!(v1.get(&"k".to_string())?, Some(V1 { a: 1, b: 2 }));
    /// assert_eq!(store.len(), 2);
    /// # Ok(())
    /// # }
    /// # main().unwrap();
    /// # }
    /// ```
    pub fn versioned<K, V>(inner: C, codec: X, schema: Schema<V>) -> Versioned<K, V, C, X>
    where
        C: Cache<K, Vec<u8>>,
        X: Codec<V>,
    {
        Versioned::new(inner, codec, schema)
    }

    /// With `strict` on, bytes that do not decode are an error rather than a
    /// miss: `get` returns it; `remove` returns it after removing the
    /// entry.
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
            // Not removed: what is under the key now may not be what was
            // read (another writer's fresh value), and another version of
            // the program may be reading it.
            Err(error) => self.stale_entry(error),
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
