//! Composable cache layers.
//!
//! `layercache` is a small framework for building cache stacks out of parts,
//! modelled on the caching module of ftrack's Python API and grown for Rust:
//!
//! - [`Cache`]: one object-safe, thread-safe trait with `get`, `set`,
//!   `remove`, `keys`, `values`, `clear` and `clear_matching`. A miss is
//!   `Ok(None)`; an `Err` means the cache could not answer.
//! - Caches that are made of caches, so stacks compose like `std::io`
//!   adapters: [`MemoryCache`], [`Proxy`], [`Layered`] (read-through with
//!   promotion, write-through) and [`Serialised`] (values stored as bytes
//!   through a [`Codec`](codec::Codec): bincode, CBOR, JSON or your own)
//!   and [`Keyed`] (typed keys over a store of `String` or `Vec<u8>` keys,
//!   through a [`KeyCodec`], under an optional namespace).
//! - [Key makers](key) and a [`Memoiser`] for function calls.
//! - A [conformance suite](testing) (feature `testing`) to check a cache of
//!   your own against the contract.
//!
//! # Example
//!
//! A memory layer over a byte store holding JSON, read through with
//! promotion:
//!
//! ```
//! # #[cfg(feature = "json")] {
//! use std::sync::Arc;
//! use layercache::prelude::*;
//! use layercache::codec::Json;
//!
//! # fn main() -> layercache::Result<()> {
//! let store: Arc<MemoryCache<String, Vec<u8>>> = Arc::new(MemoryCache::new());
//! let cache = Layered::new()
//!     .with_layer(MemoryCache::new())
//!     .with_layer(store.clone().serialised(Json));
//!
//! cache.set("user:1".to_string(), vec!["Ada".to_string()])?;
//! assert_eq!(store.get(&"user:1".to_string())?, Some(br#"["Ada"]"#.to_vec()));
//! assert_eq!(cache.get(&"user:1".to_string())?, Some(vec!["Ada".to_string()]));
//! println!("{cache:?}"); // Layered[Memory(1 entry), Serialised<Json>(Memory(1 entry))]
//! # Ok(())
//! # }
//! # main().unwrap();
//! # }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `file` | yes | [`FileCache`]: a memory-mapped cache file shared by processes (Unix) |
//! | `ftrack` | yes | [`ftrack`]: sessions caching ftrack entity records (implies `json`) |
//! | `bincode` | yes | [`codec::Bincode`](type@codec::Bincode), [`codec::LimitedBincode`] |
//! | `cbor` | yes | [`codec::Cbor`] |
//! | `json` | yes | [`codec::Json`] |
//! | `reflect` | yes | [`Schema::reflect`]: a value type's schema version derived from its serde shape |
//! | `redis` | no | [`RedisCache`]: a cache layer on a Redis server shared by many hosts |
//! | `testing` | no | [`testing`]: the conformance suite and test doubles |
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod cache;
pub mod clock;
pub mod codec;
pub mod entry;
pub mod error;
#[cfg(all(feature = "file", unix))]
pub mod file;
#[cfg(feature = "ftrack")]
pub mod ftrack;
pub mod key;
pub mod keyed;
pub mod layered;
pub mod memoise;
pub mod memory;
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;
pub mod schema;
pub mod serialised;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "redis")]
pub use self::redis::RedisCache;
pub use cache::{Cache, CacheExt, Invalidation, Watcher, Watchers};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use entry::Entry;
pub use error::{BoxError, Error, Operation, Result};
#[cfg(all(feature = "file", unix))]
pub use file::{Durability, FileCache, FileCacheBuilder, FileKey, FileStats};
pub use key::{KeyMaker, ObjectKeyMaker, StringKeyMaker};
#[cfg(feature = "json")]
pub use keyed::JsonKeys;
pub use keyed::{CodecKeys, KeyCodec, Keyed, KeyedExt, StoredKey, Verbatim};
pub use layered::{ErrorPolicy, LayerFailure, Layered};
pub use memoise::{Memoised, Memoiser};
pub use memory::MemoryCache;
pub use proxy::Proxy;
pub use schema::{Schema, Versioned};
pub use serialised::Serialised;

/// The [regex](https://docs.rs/regex) crate, whose `Regex`
/// [`CacheExt::clear_pattern`] takes: re-exported so that a pattern needs
/// no dependency of your own, and its version always matches ours.
pub use regex;

// The README's and docs/'s Rust examples are compiled and run as doctests, so
// the documentation cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/concepts.md")]
struct ConceptsDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/custom-caches.md")]
struct CustomCachesDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/codecs.md")]
struct CodecsDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/memoisation.md")]
struct MemoisationDoctests;
#[cfg(all(doctest, feature = "ftrack", feature = "file"))]
#[doc = include_str!("../docs/ftrack.md")]
struct FtrackDoctests;
#[cfg(all(
    doctest,
    feature = "redis",
    feature = "testing",
    feature = "file",
    feature = "bincode"
))]
#[doc = include_str!("../docs/redis.md")]
struct RedisDoctests;

/// The names most programs need: `use layercache::prelude::*;`.
pub mod prelude {
    pub use crate::cache::{Cache, CacheExt};
    pub use crate::codec::Codec;
    pub use crate::entry::Entry;
    pub use crate::keyed::{Keyed, KeyedExt};
    pub use crate::layered::{ErrorPolicy, Layered};
    pub use crate::memoise::Memoiser;
    pub use crate::memory::MemoryCache;
    pub use crate::proxy::Proxy;
    pub use crate::schema::Schema;
    pub use crate::serialised::Serialised;
}
