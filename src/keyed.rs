//! [`Keyed`]: a cache of typed keys over a store that takes only `String` or
//! `Vec<u8>` keys, with a [`KeyCodec`] to turn one into the other.
//!
//! The byte stores — [`FileCache`](crate::FileCache),
//! [`RedisCache`](crate::RedisCache), a [`MemoryCache<String,
//! _>`](crate::MemoryCache) standing in for one — keep their keys as text or
//! bytes, so on their own they cannot be layers of a `Layered<u64, User>`.
//! `Keyed` makes them one: it encodes the key on the way in and decodes the
//! stored keys on the way out, as [`Serialised`](crate::Serialised) does for
//! values.
//!
//! | key codec | stored key | for |
//! |---|---|---|
//! | [`JsonKeys`] (feature `json`) | canonical JSON, a `String` | any `Serialize + DeserializeOwned` key; deterministic, maps included; readable in `redis-cli` |
//! | [`CodecKeys`] | the bytes of any value [`Codec`], a `Vec<u8>` | `Vec<u8>`-keyed stores ([`FileCacheBuilder::byte_keys`](crate::FileCacheBuilder::byte_keys)); as deterministic as the codec |
//! | your own | anything that is a [`StoredKey`] | implement [`KeyCodec`] |
//!
//! # Only our keys
//!
//! A store may hold keys this adapter did not write: another program's, or
//! those of another version of this one. A stored key is *ours* when it
//! starts with the adapter's [namespace](Keyed::with_namespace) and the rest
//! is exactly what the codec writes for some key: it decodes to a key, and
//! that key encodes back to the same text or bytes. Every other key is
//! invisible. [`keys`](Cache::keys) leaves it out, and [`clear`](Cache::clear)
//! and [`clear_matching`](Cache::clear_matching) never remove it: `clear` is
//! the store's `clear_matching` over our keys, not the store's `clear`. A key
//! that others change is reported to a [watcher](Cache::watch) only when it
//! is ours.
//!
//! So another spelling of one of our keys is not ours: under a namespace
//! `n:`, [`JsonKeys`] writes the `u64` 7 as `n:7`, and `n: 7`, left by
//! another writer or a hand edit, is not listed as a second 7 (nor is its
//! value among our `values`, nor is it removed by our `clear`).
//!
//! The namespace is what keeps two programs, or two versions of one program
//! with keys of different shapes, apart in one store: without one, a
//! foreign key that happens to decode (another program's `"7"` read as the
//! `u64` 7) counts as ours. No namespace should begin with another:
//! `app:v1:` and `app:v2:` are apart, `v1` and `v12` are not.
//!
//! # Only keys that come back
//!
//! Conversely, [`set`](Cache::set) and [`set_entry`](Cache::set_entry)
//! store a key only if it round-trips exactly: its stored form must decode
//! to an equal key (`==`, hence `K: PartialEq`), and that key must encode to
//! the same stored form. Any other key is an [`Error::Key`] and nothing is
//! written. This refuses:
//!
//! - keys whose stored form does not decode at all (a JSON key holding a
//!   NaN, written as `null`): `keys` would never list them and `clear`
//!   never remove them;
//! - keys that decode to another key: JSON writes `None` and `Some(None)`
//!   of an `Option<Option<_>>` both as `null`, and serde_json reads some
//!   `f64`s back as a neighbouring `f64`, so two keys would share one stored
//!   key and `keys` would list one that was never set;
//! - keys whose codec is not deterministic, such as a `HashSet` in a key
//!   (its order changes from one set to an equal one): the stored form
//!   would not be ours by the rule above.
//!
//! The check costs a decode and a second encode on each write. Reads by key
//! ([`get`](Cache::get), [`get_entry`](Cache::get_entry),
//! [`remove`](Cache::remove)) only encode; listing and clearing
//! ([`keys`](Cache::keys), [`values`](Cache::values), `clear`,
//! `clear_matching`) and watching decode and encode again each stored key
//! they see.
//!
//! # Example
//!
//! Users by numeric id in a memory layer over a file that two versions of
//! the program share:
//!
//! ```
//! # #[cfg(all(feature = "file", feature = "json", feature = "bincode", unix))] {
//! use layercache::codec::Bincode;
//! use layercache::prelude::*;
//! use layercache::{FileCache, JsonKeys};
//!
//! #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! struct User {
//!     name: String,
//! }
//!
//! # fn main() -> layercache::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("users.lc");
//! let cache: Layered<u64, User> = Layered::new()
//!     .with_layer(MemoryCache::new())
//!     .with_layer(
//!         FileCache::open(&path)?
//!             .versioned(Bincode::new(), Schema::version("v2")?)
//!             .keyed(JsonKeys)
//!             .with_namespace("users:"),
//!     );
//! cache.set(7, User { name: "Ada".into() })?;
//!
//! // The file holds the key as text under the schema's version; version
//! // 1's keys are left alone.
//! let file = FileCache::open(&path)?;
//! file.set("v1.bincode:users:\"ada\"".to_string(), b"...".to_vec())?;
//! let mut stored = file.keys()?;
//! stored.sort();
//! assert_eq!(stored, ["v1.bincode:users:\"ada\"", "v2.bincode:users:7"]);
//!
//! cache.clear()?;
//! assert_eq!(file.keys()?, ["v1.bincode:users:\"ada\""]);
//! # Ok(())
//! # }
//! # main().unwrap();
//! # }
//! ```

use std::fmt::{self, Debug};
use std::sync::Arc;

use crate::cache::{Cache, Invalidation, Watcher};
use crate::clock::Clock;
use crate::codec::Codec;
use crate::entry::Entry;
use crate::error::{Error, Result};

/// A key as a store keeps it: what a [`KeyCodec`] encodes to, with a
/// namespace in front.
///
/// Implemented for `String` (the keys of [`RedisCache`](crate::RedisCache)
/// and of a [`FileCache`](crate::FileCache)) and `Vec<u8>` (a byte-keyed
/// `FileCache`); implement it for another store's key type.
pub trait StoredKey {
    /// The borrowed form a [`KeyCodec`] decodes: `str` for `String`, `[u8]`
    /// for `Vec<u8>`. Decoding what follows the namespace needs no copy,
    /// and comparing it with a key encoded again tells whether it is in
    /// the codec's own form.
    type Slice: ?Sized + PartialEq;

    /// This key with `prefix` in front (itself when `prefix` is empty).
    fn prefixed(self, prefix: &str) -> Self;

    /// What follows `prefix` in this key, or `None` when it does not start
    /// with `prefix`. With an empty `prefix`, the whole key.
    fn unprefixed<'a>(&'a self, prefix: &str) -> Option<&'a Self::Slice>;
}

impl StoredKey for String {
    type Slice = str;

    fn prefixed(mut self, prefix: &str) -> Self {
        self.insert_str(0, prefix);
        self
    }

    fn unprefixed<'a>(&'a self, prefix: &str) -> Option<&'a str> {
        // Not `strip_prefix("")`: measured at ~80 ns, more than the rest of
        // a write (glibc's memcmp of zero bytes at the empty string's
        // dangling address is that slow on some CPUs).
        if prefix.is_empty() {
            return Some(self);
        }
        str::strip_prefix(self, prefix)
    }
}

impl StoredKey for Vec<u8> {
    type Slice = [u8];

    fn prefixed(mut self, prefix: &str) -> Self {
        self.splice(0..0, prefix.bytes());
        self
    }

    fn unprefixed<'a>(&'a self, prefix: &str) -> Option<&'a [u8]> {
        if prefix.is_empty() {
            return Some(self);
        }
        <[u8]>::strip_prefix(self, prefix.as_bytes())
    }
}

/// Turns keys of type `K` into the keys a store takes, and back: what
/// [`Keyed`] needs.
///
/// `encode` must be deterministic (equal keys give equal stored keys, in
/// every process and run) or a key set by one call is missed by the next.
/// `decode` answers `None` for a stored key that is not one of ours: another
/// program's key, or one of another shape. It is given what follows the
/// namespace, borrowed (`&str` for a `String`, `&[u8]` for a `Vec<u8>`).
///
/// Neither has to be exact: [`Keyed`] checks the round trip itself. It
/// writes a key only if its stored form decodes to an equal key that
/// encodes to the same stored form, and counts a stored key as ours only if
/// it decodes to a key that encodes back to it (see
/// [the module documentation](crate::keyed#only-keys-that-come-back)).
/// A `decode` that accepts other spellings of a key (the `Decimal` below
/// could skip its check) is therefore harmless, only slower.
///
/// ```
/// use layercache::{Cache, Keyed, KeyCodec, MemoryCache, Result};
///
/// /// `u64` keys as decimal text.
/// #[derive(Debug)]
/// struct Decimal;
///
/// impl KeyCodec<u64> for Decimal {
///     type Stored = String;
///     fn encode(&self, key: &u64) -> Result<String> {
///         Ok(key.to_string())
///     }
///     fn decode(&self, stored: &str) -> Option<u64> {
///         stored.parse().ok().filter(|n: &u64| n.to_string() == stored)
///     }
/// }
///
/// # fn main() -> Result<()> {
/// let store: MemoryCache<String, &str> = MemoryCache::new();
/// let cache = Keyed::new(store, Decimal).with_namespace("n:");
/// cache.set(42, "answer")?;
/// assert_eq!(cache.inner().keys()?, ["n:42"]);
/// assert_eq!(cache.keys()?, [42]);
/// # Ok(())
/// # }
/// ```
pub trait KeyCodec<K>: Send + Sync + Debug {
    /// The store's key type.
    type Stored: StoredKey;

    /// The stored form of `key` (without the namespace), or an
    /// [`Error::Key`] when it has none. Never panics, and never recurses
    /// without bound: a key nested too deeply for the format is an
    /// [`Error::Key`] too.
    fn encode(&self, key: &K) -> Result<Self::Stored>;

    /// The key whose stored form (after the namespace) is `stored`, or
    /// `None` when it is not one.
    fn decode(&self, stored: &<Self::Stored as StoredKey>::Slice) -> Option<K>;

    /// Whether `decode` is the exact inverse of `encode` for every key and
    /// every stored key (as with [`Verbatim`], which stores keys as they
    /// are), so that [`Keyed`] can skip its round-trip checks. `false`
    /// unless said otherwise; a codec that claims it wrongly lets two keys
    /// share a stored key.
    fn exact(&self) -> bool {
        false
    }
}

impl<K, KC: KeyCodec<K> + ?Sized> KeyCodec<K> for Arc<KC> {
    type Stored = KC::Stored;

    fn encode(&self, key: &K) -> Result<Self::Stored> {
        (**self).encode(key)
    }

    fn decode(&self, stored: &<Self::Stored as StoredKey>::Slice) -> Option<K> {
        (**self).decode(stored)
    }

    fn exact(&self) -> bool {
        (**self).exact()
    }
}

/// A cache with keys of type `K` over a cache `C` whose keys are what the
/// key codec `KC` makes of them (usually `String` or `Vec<u8>`).
///
/// Entries pass through with their deadlines unchanged, and so do the
/// inner cache's [`clock`](Cache::clock) and its reports of keys changed by
/// others ([`watch`](Cache::watch): a stored key is reported as the key it
/// decodes to; a key that is not ours is not reported; `All` is).
///
/// What is "ours", why `clear` only ever removes our keys, and why a write
/// refuses a key that does not round-trip exactly (so keys need
/// `PartialEq`) is in the [module documentation](crate::keyed).
///
/// Over a codec that takes many key types, such as [`JsonKeys`], a `Keyed`
/// is a cache for each of them. In a [`Layered`](crate::Layered) stack the
/// stack's type picks one; on its own, a call whose arguments do not name
/// the key type (`keys`, `values`, `clear`) needs it named:
/// `let keys: Vec<u64> = cache.keys()?` or `Cache::<u64, User>::clear(&cache)`.
///
/// # Example
///
/// A memory layer over a file, for a key type the file could not take:
///
/// ```
/// # #[cfg(all(feature = "file", feature = "json", unix))] {
/// use layercache::codec::Json;
/// use layercache::prelude::*;
/// use layercache::{FileCache, JsonKeys};
///
/// #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct Shot {
///     project: String,
///     frames: u32,
/// }
///
/// # fn main() -> layercache::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("shots.lc");
///
/// let shots: Layered<(String, u32), Shot> = Layered::new()
///     .with_layer(MemoryCache::new())
///     .with_layer(FileCache::open(&path)?.serialised(Json).keyed(JsonKeys));
///
/// let key = ("alpha".to_string(), 10);
/// let shot = Shot { project: "alpha".into(), frames: 240 };
/// shots.set(key.clone(), shot.clone())?;
/// assert_eq!(shots.get(&key)?, Some(shot));
/// assert_eq!(shots.keys()?, [key]);
///
/// // In the file, the key is JSON text.
/// assert_eq!(FileCache::open(&path)?.keys()?, [r#"["alpha",10]"#]);
/// # Ok(())
/// # }
/// # main().unwrap();
/// # }
/// ```
pub struct Keyed<C, KC> {
    inner: C,
    codec: Arc<KC>,
    namespace: Arc<str>,
}

impl<C, KC> Keyed<C, KC> {
    /// Keys encoded with `codec`, stored in `inner`, with no namespace.
    pub fn new(inner: C, codec: KC) -> Self {
        Self {
            inner,
            codec: Arc::new(codec),
            namespace: Arc::from(""),
        }
    }

    /// This adapter over what `map` makes of its inner cache.
    pub(crate) fn map_inner<D>(self, map: impl FnOnce(C) -> D) -> Keyed<D, KC> {
        Keyed {
            inner: map(self.inner),
            codec: self.codec,
            namespace: self.namespace,
        }
    }

    /// This adapter with every stored key under `namespace`: it is put in
    /// front of each stored key, and a stored key without it is not ours.
    /// No namespace should begin with another one in use on the same store
    /// (`app:v1:` and `app:v2:` are apart; `v1` and `v12` are not).
    ///
    /// This is on top of any namespace of the store itself (a
    /// [`RedisCache`](crate::RedisCache) has one): use it for what sets this
    /// adapter's keys apart, such as the version of their schema.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Arc::from(namespace.into());
        self
    }

    /// The namespace, `""` for none.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The store underneath.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The key codec.
    pub fn codec(&self) -> &KC {
        &self.codec
    }

    /// The store, taken back.
    pub fn into_inner(self) -> C {
        self.inner
    }

    /// The key under which `key` is stored in the inner cache, namespace
    /// included. This is the lookup of [`get`](Cache::get): it does not
    /// check that the key round-trips, as [`set`](Cache::set) does.
    pub fn stored_key<K>(&self, key: &K) -> Result<<KC as KeyCodec<K>>::Stored>
    where
        KC: KeyCodec<K>,
    {
        Ok(self.codec.encode(key)?.prefixed(&self.namespace))
    }

    /// The key stored in the inner cache as `stored`, or `None` when it is
    /// not ours: another namespace, not a key of this codec, or not in the
    /// codec's own form (the key it decodes to encodes to something else).
    pub fn key_of<K>(&self, stored: &<KC as KeyCodec<K>>::Stored) -> Option<K>
    where
        KC: KeyCodec<K>,
    {
        decode_ours(&*self.codec, &self.namespace, stored)
    }

    /// Whether `stored` is one of our keys.
    fn owns<K>(&self, stored: &<KC as KeyCodec<K>>::Stored) -> bool
    where
        KC: KeyCodec<K>,
    {
        self.key_of::<K>(stored).is_some()
    }

    /// The stored key for a key about to be written, checked to round-trip:
    /// it decodes to an equal key, which encodes to the same stored key.
    /// Otherwise two keys could share a stored key, or the key would be
    /// stored where `keys` and `clear` never see it.
    fn stored_key_to_write<K>(&self, key: &K) -> Result<<KC as KeyCodec<K>>::Stored>
    where
        KC: KeyCodec<K>,
        K: PartialEq,
    {
        let stored = self.codec.encode(key)?;
        if self.codec.exact() {
            return Ok(stored.prefixed(&self.namespace));
        }
        let refuse = |why: &str| {
            Err(Error::Key {
                reason: format!("{:?} encodes it to a stored key that {why}", self.codec),
            })
        };
        let Some(slice) = whole(&stored) else {
            return refuse("its StoredKey cannot show whole (unprefixed(\"\") is None)");
        };
        let Some(back) = self.codec.decode(slice) else {
            return refuse("does not decode back, so keys() and clear() would never see it");
        };
        if back != *key {
            return refuse(
                "decodes to a different key, so two keys would share it (JSON, for one, writes \
                 None and Some(None) both as null, and serde_json reads some floats back as \
                 their neighbour)",
            );
        }
        match self.codec.encode(&back) {
            Ok(again) if whole(&again) == Some(slice) => {}
            _ => {
                return refuse(
                    "decodes to a key that encodes differently (is the encoding not \
                     deterministic, as with a HashSet in the key?), so keys() and clear() \
                     would never see it",
                );
            }
        }
        Ok(stored.prefixed(&self.namespace))
    }
}

/// `stored` as a whole, as its codec decodes it.
fn whole<S: StoredKey>(stored: &S) -> Option<&S::Slice> {
    stored.unprefixed("")
}

/// The key `stored` stands for, if it is ours: under `namespace`, and what
/// follows decodes to a key that encodes back to exactly it.
fn decode_ours<K, KC: KeyCodec<K> + ?Sized>(
    codec: &KC,
    namespace: &str,
    stored: &KC::Stored,
) -> Option<K> {
    let slice = stored.unprefixed(namespace)?;
    let key = codec.decode(slice)?;
    if codec.exact() {
        return Some(key);
    }
    let again = codec.encode(&key).ok()?;
    (whole(&again)? == slice).then_some(key)
}

/// `K` and `KC` are `'static` because [`watch`](Cache::watch) gives the
/// store a watcher of its own that holds the codec and reports `K`s.
///
/// `K: PartialEq` because writes check that a key comes back as itself.
impl<K, V, C, KC> Cache<K, V> for Keyed<C, KC>
where
    C: Cache<KC::Stored, V>,
    KC: KeyCodec<K> + 'static,
    K: PartialEq + 'static,
{
    /// The inner entry, deadlines unchanged.
    fn get_entry(&self, key: &K) -> Result<Option<Entry<V>>> {
        self.inner.get_entry(&self.stored_key(key)?)
    }

    /// Stores the entry, deadlines unchanged. A key that does not
    /// round-trip exactly is an [`Error::Key`].
    fn set_entry(&self, key: K, entry: Entry<V>) -> Result<()> {
        self.inner.set_entry(self.stored_key_to_write(&key)?, entry)
    }

    fn get(&self, key: &K) -> Result<Option<V>> {
        self.inner.get(&self.stored_key(key)?)
    }

    /// Stores the value. A key that does not round-trip exactly is an
    /// [`Error::Key`].
    fn set(&self, key: K, value: V) -> Result<()> {
        self.inner.set(self.stored_key_to_write(&key)?, value)
    }

    fn remove(&self, key: &K) -> Result<Option<V>> {
        self.inner.remove(&self.stored_key(key)?)
    }

    /// Our keys, decoded; the store's other keys are left out.
    fn keys(&self) -> Result<Vec<K>> {
        Ok(self
            .inner
            .keys()?
            .iter()
            .filter_map(|stored| self.key_of(stored))
            .collect())
    }

    /// The values of our keys; the store's other entries are left out.
    fn values(&self) -> Result<Vec<V>> {
        let mut values = Vec::new();
        for stored in self.inner.keys()? {
            if self.owns::<K>(&stored)
                && let Some(value) = self.inner.get(&stored)?
            {
                values.push(value);
            }
        }
        Ok(values)
    }

    /// Removes our keys, and only those: the inner cache's
    /// [`clear_matching`](Cache::clear_matching), never its `clear`.
    fn clear(&self) -> Result<()> {
        self.inner
            .clear_matching(&|stored| self.owns::<K>(stored))
            .map(drop)
    }

    /// Removes those of our keys that `matches`; `matches` never sees the
    /// store's other keys.
    fn clear_matching(&self, matches: &dyn Fn(&K) -> bool) -> Result<usize> {
        self.inner
            .clear_matching(&|stored| self.key_of(stored).is_some_and(|key| matches(&key)))
    }

    fn clock(&self) -> &dyn Clock {
        self.inner.clock()
    }

    /// Watches the inner cache: a stored key it reports reaches `watcher`
    /// decoded, a key that is not ours does not reach it, and `All` does.
    fn watch(&self, watcher: Arc<dyn Watcher<K>>) -> bool {
        self.inner.watch(Arc::new(KeyWatcher {
            codec: self.codec.clone(),
            namespace: self.namespace.clone(),
            watcher,
        }))
    }
}

impl<C: Debug, KC: Debug> Debug for Keyed<C, KC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "Keyed<{:?}>({:?})", self.codec, self.inner)
        } else {
            write!(
                f,
                "Keyed<{:?}, {:?}>({:?})",
                self.codec, self.namespace, self.inner
            )
        }
    }
}

/// What [`Keyed::watch`](Cache::watch) gives the inner cache: decodes its
/// reports for the watcher it was given.
struct KeyWatcher<K, KC> {
    codec: Arc<KC>,
    namespace: Arc<str>,
    watcher: Arc<dyn Watcher<K>>,
}

impl<K, KC: KeyCodec<K>> Watcher<KC::Stored> for KeyWatcher<K, KC> {
    fn invalidated(&self, invalidation: Invalidation<'_, KC::Stored>) {
        match invalidation {
            Invalidation::Key(stored) => {
                if let Some(key) = decode_ours(&*self.codec, &self.namespace, stored) {
                    self.watcher.invalidated(Invalidation::Key(&key));
                }
            }
            Invalidation::All => self.watcher.invalidated(Invalidation::All),
        }
    }

    fn is_active(&self) -> bool {
        self.watcher.is_active()
    }
}

/// `.keyed(codec)` for any cache: [`Keyed::new`] as a method, to end a
/// chain such as `FileCache::open(path)?.serialised(Json)`.
///
/// It is a trait of its own, not generic over the key and value types, so
/// that it also works on caches of many value types (a
/// [`Serialised`](crate::Serialised) is one for each value its codec
/// takes). Brought in by `use layercache::KeyedExt` or the prelude.
///
/// Put it last in a chain: `store.serialised(Json).keyed(JsonKeys)` needs
/// no annotations, while `store.keyed(JsonKeys).serialised(Json)` does,
/// because [`CacheExt::serialised`](crate::CacheExt::serialised) is generic
/// over the key type and a `Keyed` has many (write
/// `Serialised::new(store.keyed(JsonKeys), Json)` for that order).
pub trait KeyedExt: Sized {
    /// This cache's keys made by `codec` from keys of another type: see
    /// [`Keyed`].
    fn keyed<KC>(self, codec: KC) -> Keyed<Self, KC> {
        Keyed::new(self, codec)
    }
}

impl<C: Debug + Send + Sync> KeyedExt for C {}

/// Keys as canonical JSON text (feature `json`): any key that is
/// `Serialize + DeserializeOwned`, stored as a `String`.
///
/// - **Deterministic**: the key goes through a [`serde_json::Value`] and
///   every object is written with its entries sorted, so a `HashMap` (at
///   any depth) gives the same text whatever its order, in every process.
///   This holds whether or not serde_json's `preserve_order` feature is on
///   somewhere in the build. Sets are sequences, not maps: a `HashSet`
///   gives text in its own order, so use a `BTreeSet` in keys.
/// - **Readable**: `7`, `"ada"`, `["alpha",10]`, `{"id":7,"kind":"Task"}`,
///   as seen in `redis-cli` or a file's keys.
/// - **Fallible, never panicking**: a key JSON cannot hold (a map whose keys
///   are not strings or numbers, an integer beyond 64 bits) is an
///   [`Error::Key`]. JSON has no NaN or infinity: serde_json writes them as
///   `null`, so a key holding one does not read back, and
///   [`Keyed`] refuses to store it. It refuses as well a key that reads
///   back as another (`Some(None)` of an `Option<Option<_>>`, written
///   `null` like `None`; an `f64` that serde_json parses as its neighbour,
///   which happens to some with large or tiny exponents, not to the likes
///   of `0.1` or `6.02e23`).
/// - **Bounded**: serde_json reads at most 127 arrays and objects nested in
///   one another (its limit is 128 levels), so `encode` refuses, with an
///   [`Error::Key`], a key that nests 128 deep, as soon as it gets there:
///   a key nested thousands deep is an error, not a stack overflow. Levels
///   that JSON does not show (`Some`, newtype structs) count towards a
///   second limit of 512 levels of nesting in all. Only a `Serialize`
///   written by hand that recurses without calling the serializer escapes
///   both.
///
/// `decode` takes any JSON that parses as a `K` (`" 7"` decodes as the
/// `u64` 7), but [`Keyed`] counts a stored key as ours only in the form
/// `encode` writes (`7`). Use a namespace on a shared store all the same.
///
/// ```
/// # #[cfg(feature = "json")] {
/// use std::collections::HashMap;
/// use layercache::{JsonKeys, KeyCodec};
///
/// let one: HashMap<String, u32> = [("b".into(), 2), ("a".into(), 1)].into();
/// let two: HashMap<String, u32> = [("a".into(), 1), ("b".into(), 2)].into();
/// assert_eq!(JsonKeys.encode(&one).unwrap(), r#"{"a":1,"b":2}"#);
/// assert_eq!(JsonKeys.encode(&two).unwrap(), r#"{"a":1,"b":2}"#);
/// assert_eq!(KeyCodec::<u64>::decode(&JsonKeys, "7"), Some(7));
/// assert_eq!(KeyCodec::<u64>::decode(&JsonKeys, "user:7"), None);
/// # }
/// ```
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct JsonKeys;

#[cfg(feature = "json")]
impl<K: serde::Serialize + serde::de::DeserializeOwned> KeyCodec<K> for JsonKeys {
    type Stored = String;

    fn encode(&self, key: &K) -> Result<String> {
        let cannot = |error: serde_json::Error| Error::Key {
            reason: format!("cannot write it as JSON: {error}"),
        };
        let value = serde_json::to_value(json::Bounded::new(key)).map_err(cannot)?;
        serde_json::to_string(&json::Canonical(&value)).map_err(cannot)
    }

    fn decode(&self, stored: &str) -> Option<K> {
        serde_json::from_str(stored).ok()
    }
}

#[cfg(feature = "json")]
mod json {
    use std::fmt::Display;

    use serde::ser::{self, Serialize, Serializer};
    use serde_json::Value;

    /// serde_json refuses to read a 128th level of arrays and objects, one
    /// in another; a key is refused on the way in when it gets that deep.
    const JSON_DEPTH_LIMIT: usize = 128;

    /// How many levels a key may nest in all, counting those JSON does not
    /// show (`Some(_)` is written as what it holds, a newtype struct as its
    /// field): a bound on the serializer's recursion, and so on the stack.
    const NESTING_LIMIT: usize = 512;

    /// How deep a value is: in arrays and objects of the JSON, and in
    /// levels of nesting of any kind.
    #[derive(Clone, Copy)]
    struct Depth {
        json: usize,
        nesting: usize,
    }

    impl Depth {
        /// The depth of what is inside a value at this depth that opens
        /// `json` arrays and objects (0 for `Some` or a newtype struct, 2 for
        /// a tuple or struct variant, written `{"Variant":[...]}`), or the
        /// error when it is too deep: before any recursion into it.
        #[inline]
        fn enter<E: ser::Error>(self, json: usize) -> Result<Depth, E> {
            let inside = Depth {
                json: self.json + json,
                nesting: self.nesting + 1,
            };
            if inside.json >= JSON_DEPTH_LIMIT {
                Err(E::custom(format_args!(
                    "it nests {JSON_DEPTH_LIMIT} or more arrays and objects deep, and \
                     serde_json reads back at most {}",
                    JSON_DEPTH_LIMIT - 1
                )))
            } else if inside.nesting > NESTING_LIMIT {
                Err(E::custom(format_args!(
                    "it nests more than {NESTING_LIMIT} levels deep"
                )))
            } else {
                Ok(inside)
            }
        }
    }

    /// A value to serialize through a [`Limited`] serializer: what
    /// `JsonKeys` encodes, so that its recursion stops at the limits.
    pub(super) struct Bounded<'a, T: ?Sized> {
        value: &'a T,
        depth: Depth,
    }

    impl<'a, T: ?Sized> Bounded<'a, T> {
        /// `value` at the top level.
        pub(super) fn new(value: &'a T) -> Self {
            Bounded {
                value,
                depth: Depth {
                    json: 0,
                    nesting: 0,
                },
            }
        }
    }

    impl<T: Serialize + ?Sized> Serialize for Bounded<'_, T> {
        #[inline]
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            self.value.serialize(Limited {
                inner: serializer,
                depth: self.depth,
            })
        }
    }

    /// A serializer that forwards every call to `inner`, and passes
    /// whatever is nested in a value on as a [`Bounded`] one level deeper,
    /// or fails when that is too deep. A key within the limits serializes
    /// exactly as it would without it.
    struct Limited<S> {
        inner: S,
        depth: Depth,
    }

    /// What [`Limited`] gives for a sequence, map, struct or variant:
    /// `inner`'s, with every element, key, value and field [`Bounded`].
    struct Compound<C> {
        inner: C,
        depth: Depth,
    }

    impl<C> Compound<C> {
        #[inline]
        fn bounded<'a, T: ?Sized>(&self, value: &'a T) -> Bounded<'a, T> {
            Bounded {
                value,
                depth: self.depth,
            }
        }
    }

    /// Forwards `Serializer` methods of values with nothing nested.
    macro_rules! forward_plain {
        ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
            #[inline]
            fn $method(self, $($arg: $ty),*) -> Result<S::Ok, S::Error> {
                self.inner.$method($($arg),*)
            }
        )*};
    }

    impl<S: Serializer> Serializer for Limited<S> {
        type Ok = S::Ok;
        type Error = S::Error;
        type SerializeSeq = Compound<S::SerializeSeq>;
        type SerializeTuple = Compound<S::SerializeTuple>;
        type SerializeTupleStruct = Compound<S::SerializeTupleStruct>;
        type SerializeTupleVariant = Compound<S::SerializeTupleVariant>;
        type SerializeMap = Compound<S::SerializeMap>;
        type SerializeStruct = Compound<S::SerializeStruct>;
        type SerializeStructVariant = Compound<S::SerializeStructVariant>;

        forward_plain! {
            serialize_bool(v: bool);
            serialize_i8(v: i8);
            serialize_i16(v: i16);
            serialize_i32(v: i32);
            serialize_i64(v: i64);
            serialize_i128(v: i128);
            serialize_u8(v: u8);
            serialize_u16(v: u16);
            serialize_u32(v: u32);
            serialize_u64(v: u64);
            serialize_u128(v: u128);
            serialize_f32(v: f32);
            serialize_f64(v: f64);
            serialize_char(v: char);
            serialize_str(v: &str);
            serialize_bytes(v: &[u8]);
            serialize_none();
            serialize_unit();
            serialize_unit_struct(name: &'static str);
            serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
        }

        fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
            let depth = self.depth.enter(0)?;
            self.inner.serialize_some(&Bounded { value, depth })
        }

        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            name: &'static str,
            value: &T,
        ) -> Result<S::Ok, S::Error> {
            let depth = self.depth.enter(0)?;
            self.inner
                .serialize_newtype_struct(name, &Bounded { value, depth })
        }

        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            name: &'static str,
            index: u32,
            variant: &'static str,
            value: &T,
        ) -> Result<S::Ok, S::Error> {
            let depth = self.depth.enter(1)?;
            self.inner
                .serialize_newtype_variant(name, index, variant, &Bounded { value, depth })
        }

        fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
            let depth = self.depth.enter(1)?;
            let inner = self.inner.serialize_seq(len)?;
            Ok(Compound { inner, depth })
        }

        fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
            let depth = self.depth.enter(1)?;
            let inner = self.inner.serialize_tuple(len)?;
            Ok(Compound { inner, depth })
        }

        fn serialize_tuple_struct(
            self,
            name: &'static str,
            len: usize,
        ) -> Result<Self::SerializeTupleStruct, S::Error> {
            let depth = self.depth.enter(1)?;
            let inner = self.inner.serialize_tuple_struct(name, len)?;
            Ok(Compound { inner, depth })
        }

        fn serialize_tuple_variant(
            self,
            name: &'static str,
            index: u32,
            variant: &'static str,
            len: usize,
        ) -> Result<Self::SerializeTupleVariant, S::Error> {
            let depth = self.depth.enter(2)?;
            let inner = self
                .inner
                .serialize_tuple_variant(name, index, variant, len)?;
            Ok(Compound { inner, depth })
        }

        fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
            let depth = self.depth.enter(1)?;
            let inner = self.inner.serialize_map(len)?;
            Ok(Compound { inner, depth })
        }

        fn serialize_struct(
            self,
            name: &'static str,
            len: usize,
        ) -> Result<Self::SerializeStruct, S::Error> {
            let depth = self.depth.enter(1)?;
            let inner = self.inner.serialize_struct(name, len)?;
            Ok(Compound { inner, depth })
        }

        fn serialize_struct_variant(
            self,
            name: &'static str,
            index: u32,
            variant: &'static str,
            len: usize,
        ) -> Result<Self::SerializeStructVariant, S::Error> {
            let depth = self.depth.enter(2)?;
            let inner = self
                .inner
                .serialize_struct_variant(name, index, variant, len)?;
            Ok(Compound { inner, depth })
        }

        fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
            self.inner.collect_str(value)
        }

        fn is_human_readable(&self) -> bool {
            self.inner.is_human_readable()
        }
    }

    /// The compounds whose one method takes an element or a field: each
    /// goes through [`Bounded`] and on to the inner serializer.
    macro_rules! bounded_compound {
        ($($trait:ident :: $method:ident),* $(,)?) => {$(
            impl<C: ser::$trait> ser::$trait for Compound<C> {
                type Ok = C::Ok;
                type Error = C::Error;

                fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
                    let value = self.bounded(value);
                    self.inner.$method(&value)
                }

                fn end(self) -> Result<C::Ok, C::Error> {
                    self.inner.end()
                }
            }
        )*};
    }

    bounded_compound!(
        SerializeSeq::serialize_element,
        SerializeTuple::serialize_element,
        SerializeTupleStruct::serialize_field,
        SerializeTupleVariant::serialize_field,
    );

    impl<C: ser::SerializeMap> ser::SerializeMap for Compound<C> {
        type Ok = C::Ok;
        type Error = C::Error;

        fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
            let key = self.bounded(key);
            self.inner.serialize_key(&key)
        }

        fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
            let value = self.bounded(value);
            self.inner.serialize_value(&value)
        }

        fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
            &mut self,
            key: &K,
            value: &V,
        ) -> Result<(), C::Error> {
            let (key, value) = (self.bounded(key), self.bounded(value));
            self.inner.serialize_entry(&key, &value)
        }

        fn end(self) -> Result<C::Ok, C::Error> {
            self.inner.end()
        }
    }

    impl<C: ser::SerializeStruct> ser::SerializeStruct for Compound<C> {
        type Ok = C::Ok;
        type Error = C::Error;

        fn serialize_field<T: Serialize + ?Sized>(
            &mut self,
            key: &'static str,
            value: &T,
        ) -> Result<(), C::Error> {
            let value = self.bounded(value);
            self.inner.serialize_field(key, &value)
        }

        fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
            self.inner.skip_field(key)
        }

        fn end(self) -> Result<C::Ok, C::Error> {
            self.inner.end()
        }
    }

    impl<C: ser::SerializeStructVariant> ser::SerializeStructVariant for Compound<C> {
        type Ok = C::Ok;
        type Error = C::Error;

        fn serialize_field<T: Serialize + ?Sized>(
            &mut self,
            key: &'static str,
            value: &T,
        ) -> Result<(), C::Error> {
            let value = self.bounded(value);
            self.inner.serialize_field(key, &value)
        }

        fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
            self.inner.skip_field(key)
        }

        fn end(self) -> Result<C::Ok, C::Error> {
            self.inner.end()
        }
    }

    /// A JSON value written with every object's entries sorted by key.
    ///
    /// Without serde_json's `preserve_order` feature a `Value`'s objects are
    /// sorted already (and sorting them again costs one pass); with it,
    /// which any crate in a build can turn on, they keep the order the key
    /// serialised them in, which for a `HashMap` changes from run to run.
    pub(super) struct Canonical<'a>(pub(super) &'a Value);

    impl Serialize for Canonical<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                Value::Array(items) => serializer.collect_seq(items.iter().map(Canonical)),
                Value::Object(map) => {
                    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    serializer.collect_map(entries.into_iter().map(|(k, v)| (k, Canonical(v))))
                }
                other => other.serialize(serializer),
            }
        }
    }
}

/// Keys as the bytes of a value [`Codec`], stored as a `Vec<u8>`: for stores
/// with byte keys, such as a [`FileCache`](crate::FileCache) opened with
/// [`byte_keys`](crate::FileCacheBuilder::byte_keys).
///
/// Keys are only as deterministic as the codec: bincode writes a `HashMap`
/// in its iteration order, which changes from run to run, so a key holding
/// one misses what an equal key stored. Use `BTreeMap`s and `BTreeSet`s in
/// keys with this codec, or [`JsonKeys`] (feature `json`), which sorts maps.
/// A key the codec cannot encode is an [`Error::Key`]. A stored key is
/// ours only in the form the codec writes: bincode also reads a small
/// integer written in more bytes than it needs, which is not ours.
///
/// Encoding is only as bounded as the codec's: the value codecs of this
/// crate ([`Bincode`](type@crate::codec::Bincode), [`Json`](crate::codec::Json),
/// [`Cbor`](crate::codec::Cbor)) refuse what nests too deeply when reading,
/// not when writing, so a key nested tens of thousands of levels deep can
/// overflow the stack in `encode` (in `get` as in `set`). [`JsonKeys`] stops
/// at its limits.
///
/// ```
/// # #[cfg(feature = "bincode")] {
/// use layercache::codec::Bincode;
/// use layercache::{Cache, CodecKeys, Keyed, MemoryCache};
///
/// let store: MemoryCache<Vec<u8>, String> = MemoryCache::new();
/// let cache = Keyed::new(store, CodecKeys(Bincode::new())).with_namespace("v1:");
/// cache.set(300u64, "x".to_string()).unwrap();
/// assert_eq!(cache.inner().keys().unwrap(), [b"v1:\xfb\x2c\x01".to_vec()]);
/// let keys: Vec<u64> = cache.keys().unwrap();
/// assert_eq!(keys, [300]);
/// # }
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CodecKeys<X>(pub X);

impl<X> CodecKeys<X> {
    /// Keys encoded with `codec`.
    pub const fn new(codec: X) -> Self {
        Self(codec)
    }
}

impl<K, X: Codec<K>> KeyCodec<K> for CodecKeys<X> {
    type Stored = Vec<u8>;

    fn encode(&self, key: &K) -> Result<Vec<u8>> {
        self.0.encode(key).map_err(|error| Error::Key {
            reason: error.to_string(),
        })
    }

    fn decode(&self, stored: &[u8]) -> Option<K> {
        self.0.decode(stored).ok()
    }
}

impl<X: Debug> Debug for CodecKeys<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodecKeys<{:?}>", self.0)
    }
}

/// Keys stored as they are: a `String` as that `String`, a `Vec<u8>` as
/// those bytes (`K` is the one of the two that the store takes). With a
/// namespace, it is what puts a store's keys under a prefix, as
/// [`Serialised::versioned`](crate::Serialised::versioned) does with a
/// [`Schema`](crate::Schema)'s version.
///
/// ```
/// use layercache::{Cache, Keyed, MemoryCache, Verbatim};
///
/// let store: MemoryCache<String, u32> = MemoryCache::new();
/// let cache = Keyed::new(store, Verbatim::new()).with_namespace("app:");
/// cache.set("k".to_string(), 1).unwrap();
/// assert_eq!(cache.inner().keys().unwrap(), ["app:k"]);
/// assert_eq!(cache.keys().unwrap(), ["k"]);
/// ```
pub struct Verbatim<K>(std::marker::PhantomData<fn() -> K>);

impl<K> Verbatim<K> {
    /// The key codec.
    pub const fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<K> Default for Verbatim<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Clone for Verbatim<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Verbatim<K> {}

impl<K> Debug for Verbatim<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verbatim")
    }
}

impl KeyCodec<String> for Verbatim<String> {
    type Stored = String;

    fn encode(&self, key: &String) -> Result<String> {
        Ok(key.clone())
    }

    fn decode(&self, stored: &str) -> Option<String> {
        Some(stored.to_owned())
    }

    fn exact(&self) -> bool {
        true
    }
}

impl KeyCodec<Vec<u8>> for Verbatim<Vec<u8>> {
    type Stored = Vec<u8>;

    fn encode(&self, key: &Vec<u8>) -> Result<Vec<u8>> {
        Ok(key.clone())
    }

    fn decode(&self, stored: &[u8]) -> Option<Vec<u8>> {
        Some(stored.to_vec())
    }

    fn exact(&self) -> bool {
        true
    }
}
