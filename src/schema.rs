//! [`Schema`]: the version of a value type, kept in the key namespace so
//! that a changed type is a miss, never wrong data.
//!
//! A codec that stores fields by position, such as bincode, cannot tell a
//! struct from the same struct with two fields swapped, or a `u64` from an
//! `i64`: it decodes the old bytes into the new type and the program gets
//! wrong data. So [`Serialised`] refuses such a codec
//! unless the values' schema has a version: every stored key is then put
//! under `<version>.<codec>:`, and a program whose type changed (and whose version
//! changed with it) reads and writes keys of its own. The codec is in the
//! namespace too, so a build that changed codec keeps apart as well. Two
//! versions of a program sharing a cache during a rolling deploy each see
//! their own entries and never touch the other's.
//!
//! A version comes from you ([`Schema::version`]), or is derived from the
//! type's serde shape ([`Schema::reflect`], feature `reflect`): field names,
//! their order and types, enum variants, container names. Any change to
//! those gives another version. A [`Versioned`] store holds values of the
//! one type its schema describes.
//!
//! ```
//! # #[cfg(all(feature = "bincode", feature = "reflect"))] {
//! use layercache::{Schema, codec::Bincode, prelude::*};
//!
//! #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! struct User {
//!     name: String,
//!     age: u32,
//! }
//!
//! # fn main() -> layercache::Result<()> {
//! let store: MemoryCache<String, Vec<u8>> = MemoryCache::new();
//! let users = store.versioned(Bincode::new(), Schema::<User>::reflect()?);
//! users.set("ada".to_string(), User { name: "Ada".into(), age: 36 })?;
//!
//! // The stored key carries the schema's version and the codec.
//! let stored = users.inner().inner().keys()?;
//! let version = Schema::<User>::reflect()?;
//! assert_eq!(stored, [format!("{version}.bincode:ada")]);
//! # Ok(())
//! # }
//! # main().unwrap();
//! # }
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::cache::{Cache, Watcher};
use crate::clock::Clock;
use crate::codec::Codec;
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::keyed::{Keyed, Verbatim};
use crate::serialised::Serialised;

/// The version of the schema of values of type `V`: see [the module](self).
///
/// A version is 1 to 64 characters among ASCII letters, digits, `.`, `_`
/// and `-`. A derived version is `#` followed by 16 hexadecimal digits.
/// The type parameter ties a versioned store to the one type the version
/// describes: a [`Versioned`] store built with a `Schema<User>` holds
/// `User`s and nothing else.
pub struct Schema<V> {
    version: Arc<str>,
    _values: PhantomData<fn() -> V>,
}

/// The longest version [`Schema::version`] takes.
const MAX_VERSION: usize = 64;

/// How many times at most [`Schema::reflect`] traces a type in a row: each
/// pass learns at most one more variant of an enum, and each variant takes
/// two passes (by name, then by index).
#[cfg(feature = "reflect")]
const MAX_PASSES: usize = 8192;

/// How many times at most [`Schema::reflect`] starts again, having learnt
/// the names of more nested enums.
#[cfg(feature = "reflect")]
const MAX_RESTARTS: usize = 64;

impl<V> Schema<V> {
    /// A version you give, such as `"users-3"`: bump it whenever the type
    /// changes in a way its codec would not notice.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] when `version` is empty, longer than 64
    /// characters, or holds a character other than an ASCII letter, digit,
    /// `.`, `_` or `-`.
    ///
    /// ```
    /// use layercache::Schema;
    ///
    /// assert_eq!(Schema::<String>::version("users-3").unwrap().as_str(), "users-3");
    /// assert!(Schema::<String>::version("a:b").is_err());
    /// assert!(Schema::<String>::version("").is_err());
    /// ```
    pub fn version(version: &str) -> Result<Self> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if version.is_empty() || version.len() > MAX_VERSION || !version.chars().all(allowed) {
            return Err(Error::InvalidOption {
                option: "schema version",
                reason: format!(
                    "{version:?} is not 1 to {MAX_VERSION} ASCII letters, digits, '.', '_' or '-'"
                ),
            });
        }
        Ok(Self::tagged(version))
    }

    /// The version derived from `V`'s serde shape (feature `reflect`): a
    /// hash of what [serde-reflection](https://docs.rs/serde-reflection)
    /// traces of it, so any change to a field's name, order or type, an
    /// enum's variants (nested ones included) or a container's name gives
    /// another version. A change that keeps the shape (a field that now
    /// counts kilobytes instead of bytes) keeps the version: give one by
    /// hand for those.
    ///
    /// The hash is stable across runs, processes and builds of the same
    /// type; a new major version of serde-reflection may change it, which
    /// costs one cold cache, never wrong data.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming the type when it cannot be traced:
    /// a `Deserialize` written by hand that refuses the tracer's sample
    /// values, `#[serde(untagged)]` or `flatten`, a self-describing value
    /// such as `serde_json::Value`, an enum whose first variant holds the
    /// enum itself (`enum Tree { Node(Box<Tree>), Leaf }`: put `Leaf`
    /// first), and an enum inside an `Option`, a `Vec`, a map or another
    /// enum's variant (serde-reflection stops exploring there once it knows
    /// the container's format, so it would see only some of the variants).
    /// Enums at the top, in fields, tuples and newtypes are traced whole.
    /// Give a refused type a [`version`](Self::version).
    ///
    /// ```
    /// # #[cfg(feature = "reflect")] {
    /// use layercache::Schema;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct V1 { a: u32, b: u32 }
    /// #[derive(serde::Deserialize)]
    /// struct V2 { b: u32, a: u32 }
    /// #[derive(serde::Deserialize)]
    /// enum Status { Draft, Final }
    /// #[derive(serde::Deserialize)]
    /// struct Shot { name: String, status: Option<Status> }
    ///
    /// let one = Schema::<V1>::reflect().unwrap();
    /// assert_eq!(one.as_str(), Schema::<V1>::reflect().unwrap().as_str());
    /// assert_ne!(one.as_str(), Schema::<V2>::reflect().unwrap().as_str());
    /// assert!(one.as_str().starts_with('#'));
    /// assert!(Schema::<Shot>::reflect().is_err(), "an enum inside an Option is refused");
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Take { name: String, status: Status }
    /// assert!(Schema::<Take>::reflect().is_ok(), "an enum in a field is traced whole");
    /// # }
    /// ```
    #[cfg(feature = "reflect")]
    pub fn reflect() -> Result<Self>
    where
        V: serde::de::DeserializeOwned,
    {
        use serde_reflection::{FormatHolder, Samples, Tracer, TracerConfig};

        let refused = |reason: String| Error::InvalidOption {
            option: "schema",
            reason: format!(
                "cannot derive the schema of {} ({reason}): give it one with Schema::version",
                std::any::type_name::<V>()
            ),
        };
        let samples = Samples::new();
        // serde-reflection learns an enum's variants over several passes,
        // and repeats passes by itself only for an enum at the top: one
        // found deeper stays marked incomplete and is not explored again.
        // Its names come out in the registry's error; trace afresh, and
        // after each pass take the mark off those enums (that is what
        // `check_incomplete_enum` does) until none is incomplete.
        //
        // The seed bounds nesting as bincode's decoding is bounded: the
        // tracer follows an enum's first variant again and again, so an enum
        // whose first variant holds itself would recurse until the stack
        // overflows and the process aborts; it is refused instead.
        let seed = crate::codec::depth::Seed::new(
            std::marker::PhantomData::<V>,
            crate::codec::BINCODE_DEPTH_LIMIT,
        );
        let mut enums: Vec<String> = Vec::new();
        for _ in 0..MAX_RESTARTS {
            let mut tracer = Tracer::new(TracerConfig::default());
            let mut format = None;
            let mut incomplete = false;
            for _ in 0..MAX_PASSES {
                let (traced, _) = tracer
                    .trace_type_with_seed(&samples, seed.clone())
                    .map_err(|e| refused(e.to_string()))?;
                format = Some(traced);
                incomplete = false;
                for name in &enums {
                    incomplete |= tracer.check_incomplete_enum(name).is_some();
                }
                if !incomplete {
                    break;
                }
            }
            let Some(mut format) = format else {
                unreachable!("at least one pass");
            };
            if incomplete {
                return Err(refused(format!(
                    "an enum has more variants than {MAX_PASSES} passes explore"
                )));
            }
            match tracer.registry() {
                Ok(registry) => {
                    // A variant the tracer named but never placed keeps a
                    // provisional index near `u32::MAX`: the tracer stops
                    // exploring below an `Option`, a sequence or a map once
                    // it knows their format, so an enum there may not have
                    // been seen whole. Refuse rather than hash half a shape.
                    for (name, container) in &registry {
                        if let serde_reflection::ContainerFormat::Enum(variants) = container
                            && variants.keys().any(|&index| index > u32::MAX - (1 << 16))
                        {
                            return Err(refused(format!(
                                "the variants of enum {name} cannot all be traced where it \
                                 sits (inside an Option, a sequence, a map or another \
                                 enum's variant)"
                            )));
                        }
                    }
                    format.normalize().map_err(|e| refused(e.to_string()))?;
                    let shape = serde_json::to_vec(&(format, registry))
                        .map_err(|e| refused(e.to_string()))?;
                    return Ok(Self::tagged(&format!("#{:016x}", fnv1a(&shape))));
                }
                Err(serde_reflection::Error::MissingVariants(names))
                    if names.iter().any(|name| !enums.contains(name)) =>
                {
                    enums.extend(names);
                }
                Err(error) => return Err(refused(error.to_string())),
            }
        }
        Err(refused(format!(
            "enums still incomplete after {MAX_RESTARTS} restarts"
        )))
    }

    fn tagged(version: &str) -> Self {
        Self {
            version: Arc::from(version),
            _values: PhantomData,
        }
    }

    /// The version.
    pub fn as_str(&self) -> &str {
        &self.version
    }

    /// The namespace of a store of these values encoded with `codec`:
    /// the version, a `.`, the codec's [`format`](Codec::format) name, and
    /// a `:`. The codec is part of it because the same type in two formats
    /// is two sets of bytes that must not be read one as the other.
    ///
    /// In the format name, every character but ASCII letters, digits, `_`
    /// and `-` is written `%` and its UTF-8 bytes in hexadecimal (`%` as
    /// `%25`), so two names give two namespaces, neither part holds a `:`
    /// or the format part a `.`: each namespace stands for one version and
    /// format, and none begins another.
    ///
    /// ```
    /// # #[cfg(feature = "bincode")] {
    /// use layercache::{Schema, codec::{Bincode, LimitedBincode}};
    ///
    /// let schema = Schema::<u32>::version("v1").unwrap();
    /// assert_eq!(schema.namespace(&Bincode::new()), "v1.bincode:");
    /// // The limit does not change the bytes: the same namespace.
    /// assert_eq!(schema.namespace(&LimitedBincode::<64>::new()), "v1.bincode:");
    /// # }
    /// ```
    pub fn namespace<X: Codec<V>>(&self, codec: &X) -> String {
        let mut namespace = format!("{}.", self.version);
        let format = codec.format();
        for byte in format.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
                namespace.push(char::from(byte));
            } else {
                namespace.push_str(&format!("%{byte:02X}"));
            }
        }
        namespace.push(':');
        namespace
    }
}

impl<V> Clone for Schema<V> {
    fn clone(&self) -> Self {
        Self {
            version: self.version.clone(),
            _values: PhantomData,
        }
    }
}

impl<V> PartialEq for Schema<V> {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
    }
}

impl<V> Eq for Schema<V> {}

impl<V> fmt::Display for Schema<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<V> fmt::Debug for Schema<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schema({})", self.as_str())
    }
}

/// FNV-1a, 64 bits: a hash fixed by its definition, the same in every
/// build (std's hashers promise no such thing).
#[cfg(feature = "reflect")]
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A cache of values of the one type `V`, encoded with the codec `X`, in a
/// byte store `C` whose keys (`K`: `String` or `Vec<u8>`) are put under the
/// namespace of the value's [`Schema`] and the codec
/// ([`Schema::namespace`]): what [`Serialised::versioned`] and
/// [`CacheExt::versioned`](crate::CacheExt::versioned) make.
///
/// Its [`keys`](Cache::keys), [`clear`](Cache::clear),
/// [`clear_matching`](Cache::clear_matching) and watchers see only its own
/// namespace (it is a [`Keyed`] with [`Verbatim`] keys inside). For a
/// namespace of your own as well, put a [`Keyed`] on top:
/// `.versioned(codec, schema)?.keyed(JsonKeys).with_namespace("users:")`.
///
/// ```
/// # #[cfg(all(feature = "bincode", feature = "reflect"))] {
/// use layercache::{Cache, CacheExt, MemoryCache, Schema, codec::Bincode};
///
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct User { name: String }
///
/// # fn main() -> layercache::Result<()> {
/// let store: MemoryCache<String, Vec<u8>> = MemoryCache::new();
/// let users = store.versioned(Bincode::new(), Schema::<User>::reflect()?);
/// users.set("ada".into(), User { name: "Ada".into() })?;
/// assert_eq!(users.keys()?, ["ada"]);
/// let stored = users.inner().inner().keys()?;
/// assert_eq!(stored, [format!("{}ada", users.namespace())]);
/// assert!(users.namespace().ends_with(".bincode:"));
/// # Ok(())
/// # }
/// # main().unwrap();
/// # }
/// ```
///
/// It holds the one type its schema describes: a value of another type
/// does not compile.
///
/// ```compile_fail
/// use layercache::{Cache, CacheExt, MemoryCache, Schema, codec::Bincode};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct UserV1 { a: u32, b: u32 }
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct UserV2 { b: u32, a: u32 }
///
/// let store: MemoryCache<String, Vec<u8>> = MemoryCache::new();
/// let users = store.versioned(Bincode::new(), Schema::<UserV1>::reflect().unwrap());
/// // error[E0308]: expected `UserV1`, found `UserV2`
/// users.set("ada".into(), UserV2 { b: 2, a: 1 }).unwrap();
/// ```
pub struct Versioned<K, V, C, X> {
    keyed: Keyed<Serialised<C, X>, Verbatim<K>>,
    schema: Schema<V>,
}

impl<K, V, C, X: Codec<V>> Versioned<K, V, C, X> {
    /// Values encoded with `codec`, stored in `inner` under the namespace
    /// of `schema` and `codec`.
    pub fn new(inner: C, codec: X, schema: Schema<V>) -> Self {
        let namespace = schema.namespace(&codec);
        Self {
            keyed: Keyed::new(Serialised::unversioned(inner, codec), Verbatim::new())
                .with_namespace(namespace),
            schema,
        }
    }
}

impl<K, V, C, X> Versioned<K, V, C, X> {
    /// With `strict` on, stored bytes that do not decode are an error
    /// rather than a miss: see [`Serialised::strict`].
    pub fn strict(mut self, strict: bool) -> Self {
        self.keyed = self.keyed.map_inner(|serialised| serialised.strict(strict));
        self
    }

    /// The schema.
    pub fn schema(&self) -> &Schema<V> {
        &self.schema
    }

    /// What is put in front of every stored key.
    pub fn namespace(&self) -> &str {
        self.keyed.namespace()
    }

    /// The [`Serialised`] underneath (its [`stale`](Serialised::stale)
    /// count, its store).
    pub fn inner(&self) -> &Serialised<C, X> {
        self.keyed.inner()
    }
}

impl<K, V, C, X> Cache<K, V> for Versioned<K, V, C, X>
where
    K: crate::keyed::StoredKey + PartialEq + Send + Sync + 'static,
    Verbatim<K>: crate::keyed::KeyCodec<K, Stored = K>,
    Serialised<C, X>: Cache<K, V>,
    C: Send + Sync + fmt::Debug,
    X: Send + Sync + fmt::Debug,
{
    fn get_entry(&self, key: &K) -> Result<Option<Entry<V>>> {
        self.keyed.get_entry(key)
    }
    fn set_entry(&self, key: K, entry: Entry<V>) -> Result<()> {
        self.keyed.set_entry(key, entry)
    }
    fn get(&self, key: &K) -> Result<Option<V>> {
        self.keyed.get(key)
    }
    fn set(&self, key: K, value: V) -> Result<()> {
        self.keyed.set(key, value)
    }
    fn remove(&self, key: &K) -> Result<Option<V>> {
        self.keyed.remove(key)
    }
    fn keys(&self) -> Result<Vec<K>> {
        self.keyed.keys()
    }
    fn values(&self) -> Result<Vec<V>> {
        self.keyed.values()
    }
    fn clear(&self) -> Result<()> {
        Cache::<K, V>::clear(&self.keyed)
    }
    fn clear_matching(&self, matches: &dyn Fn(&K) -> bool) -> Result<usize> {
        Cache::<K, V>::clear_matching(&self.keyed, matches)
    }
    fn clock(&self) -> &dyn Clock {
        Cache::<K, V>::clock(&self.keyed)
    }
    fn watch(&self, watcher: Arc<dyn Watcher<K>>) -> bool {
        Cache::<K, V>::watch(&self.keyed, watcher)
    }
}

impl<K, V, C: fmt::Debug, X: fmt::Debug> fmt::Debug for Versioned<K, V, C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Versioned<{:?}>({:?})", self.namespace(), self.inner())
    }
}
