//! A changed type is a miss, never wrong data, for every codec; two versions
//! of a program share one cache file without touching each other's
//! entries; a failed decode removes nothing.
//!
//! Before issue 12, bincode read a struct with swapped fields as
//! `BA { b: 1, a: 2 }`, a `u64` 1 as the `i64` -1, and a read by another
//! version's type removed the first version's entry.

#![cfg(all(
    feature = "file",
    feature = "bincode",
    feature = "cbor",
    feature = "json"
))]
#![cfg(feature = "reflect")]

use std::fmt::Debug;
use std::sync::Arc;

use layercache::codec::{Bincode, Cbor, Codec, Json};
use layercache::{Cache, CacheExt, Entry, Error, FileCache, MemoryCache, Schema, Serialised};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The first version of each type, and the changes made to it.
mod v1 {
    use super::*;
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    pub struct Pair {
        pub a: u32,
        pub b: u32,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    pub struct Count {
        pub n: u64,
    }
}

mod v2 {
    use super::*;
    /// Fields reordered.
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    pub struct Pair {
        pub b: u32,
        pub a: u32,
    }
    /// `u64` became `i64`.
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    pub struct Count {
        pub n: i64,
    }
    /// A field added.
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[serde(rename = "Pair")]
    pub struct PairPlus {
        pub a: u32,
        pub b: u32,
        pub c: u32,
    }
    /// A field removed.
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[serde(rename = "Pair")]
    pub struct PairMinus {
        pub a: u32,
    }
}

fn file(dir: &tempfile::TempDir) -> Arc<FileCache> {
    Arc::new(FileCache::open(dir.path().join("shared.lc")).expect("open the cache file"))
}

fn k(s: &str) -> String {
    s.to_owned()
}

fn schema<V: DeserializeOwned>() -> Schema<V> {
    Schema::<V>::reflect().expect("traceable")
}

/// Writes `old` as `Old` and reads it back as `New` through two stacks on
/// one real file, each with the schema version of its own type; returns
/// what the reader got.
fn read_as<Old, New, X>(codec: X, old: Old) -> Option<New>
where
    Old: Serialize + DeserializeOwned + Debug + PartialEq + Clone,
    New: Serialize + DeserializeOwned + Debug,
    X: Codec<Old> + Codec<New> + Clone,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let file = file(&dir);
    let writer = file.clone().versioned(codec.clone(), schema::<Old>());
    writer.set(k("k"), old.clone()).expect("set");
    let reader = file.clone().versioned(codec, schema::<New>());
    let got: Option<New> = reader
        .get(&k("k"))
        .expect("a changed type is a miss, not an error");
    // The old version's entry is untouched by the new version's read.
    assert_eq!(writer.get(&k("k")).expect("get"), Some(old));
    got
}

#[test]
fn bincode_every_change_is_a_miss() {
    let pair = v1::Pair { a: 1, b: 2 };
    assert_eq!(
        read_as::<_, v2::Pair, _>(Bincode::new(), pair.clone()),
        None
    );
    assert_eq!(
        read_as::<_, v2::Count, _>(Bincode::new(), v1::Count { n: 1 }),
        None
    );
    assert_eq!(
        read_as::<_, v2::PairPlus, _>(Bincode::new(), pair.clone()),
        None
    );
    assert_eq!(read_as::<_, v2::PairMinus, _>(Bincode::new(), pair), None);
}

/// Self-describing codecs, versioned the same way, also miss; unversioned
/// (as `Serialised::new` takes them) they read by field name: the right
/// fields, or a miss, never a swap.
fn self_describing_never_misreads<X>(codec: X)
where
    X: Codec<v1::Pair>
        + Codec<v2::Pair>
        + Codec<v1::Count>
        + Codec<v2::Count>
        + Codec<v2::PairPlus>
        + Codec<v2::PairMinus>
        + layercache::codec::SelfDescribing
        + Clone
        + Debug,
{
    let pair = v1::Pair { a: 1, b: 2 };
    assert_eq!(read_as::<_, v2::Pair, _>(codec.clone(), pair.clone()), None);
    assert_eq!(
        read_as::<_, v2::Count, _>(codec.clone(), v1::Count { n: 1 }),
        None
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = file(&dir);
    let plain = Serialised::new(store.clone(), codec.clone());
    plain.set(k("pair"), pair).expect("set");
    let reordered: Option<v2::Pair> = plain.get(&k("pair")).expect("get");
    assert_eq!(
        reordered,
        Some(v2::Pair { b: 2, a: 1 }),
        "{codec:?}: by name"
    );
    let added: Option<v2::PairPlus> = plain.get(&k("pair")).expect("a miss");
    assert_eq!(added, None, "{codec:?}: a missing field is a miss");
    let removed: Option<v2::PairMinus> = plain.get(&k("pair")).expect("get");
    assert_eq!(removed, Some(v2::PairMinus { a: 1 }), "{codec:?}");
    plain.set(k("count"), v1::Count { n: 1 }).expect("set");
    let signed: Option<v2::Count> = plain.get(&k("count")).expect("get");
    assert_eq!(signed, Some(v2::Count { n: 1 }), "{codec:?}: 1 stays 1");
    plain.set(k("count"), v2::Count { n: -1 }).expect("set");
    let unsigned: Option<v1::Count> = plain.get(&k("count")).expect("a miss");
    assert_eq!(unsigned, None, "{codec:?}: -1 is no u64");
    assert_eq!(plain.stale(), 2, "{codec:?}: the two misses were counted");
    assert_eq!(store.len().expect("len"), 2, "{codec:?}: nothing removed");
}

#[test]
fn cbor_never_misreads() {
    self_describing_never_misreads(Cbor);
}

#[test]
fn json_never_misreads() {
    self_describing_never_misreads(Json);
}

/// Two builds of a program, each with its own `Pair`, take turns on one
/// cache file (and a second handle on it, as another process would have):
/// each reads only what it wrote, and neither removes the other's entries.
fn two_versions_interleave<X>(codec: X)
where
    X: Codec<v1::Pair> + Codec<v2::Pair> + Clone + Debug,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let old = file(&dir).versioned(codec.clone(), schema::<v1::Pair>());
    let new = file(&dir).versioned(codec.clone(), schema::<v2::Pair>());
    for round in 0..50u32 {
        let key = k(&format!("shot-{}", round % 7));
        if round % 2 == 0 {
            old.set(key.clone(), v1::Pair { a: round, b: 1 })
                .expect("set");
        } else {
            new.set(key.clone(), v2::Pair { b: round, a: 2 })
                .expect("set");
        }
        let got: Option<v1::Pair> = old.get(&key).expect("get");
        if let Some(got) = got {
            assert_eq!(got.b, 1, "{codec:?}: version 1 read {got:?}");
        }
        let got: Option<v2::Pair> = new.get(&key).expect("get");
        if let Some(got) = got {
            assert_eq!(got.a, 2, "{codec:?}: version 2 read {got:?}");
        }
        // A missing key of the other version's reads nothing and removes
        // nothing.
        let _: Option<v1::Pair> = old.get(&k("absent")).expect("get");
    }
    let raw = FileCache::open(dir.path().join("shared.lc")).expect("open");
    let (mut mine, mut theirs) = (0, 0);
    for stored in raw.keys().expect("keys") {
        if stored.starts_with(&schema::<v1::Pair>().namespace(&codec)) {
            mine += 1;
        } else if stored.starts_with(&schema::<v2::Pair>().namespace(&codec)) {
            theirs += 1;
        } else {
            panic!("{codec:?}: a key outside both namespaces: {stored}");
        }
    }
    assert_eq!(
        (mine, theirs),
        (7, 7),
        "{codec:?}: each version keeps its 7 keys"
    );
    let keys = Cache::<String, v1::Pair>::keys(&old).expect("keys");
    assert_eq!(
        keys.len(),
        7,
        "{codec:?}: keys() lists a version's own keys"
    );
    Cache::<String, v2::Pair>::clear(&new).expect("clear");
    assert_eq!(
        raw.keys().expect("keys").len(),
        7,
        "{codec:?}: clear is per version"
    );
    let kept = Cache::<String, v1::Pair>::keys(&old).expect("keys");
    assert_eq!(kept.len(), 7, "{codec:?}");
}

#[test]
fn two_versions_interleave_on_one_file_bincode() {
    two_versions_interleave(Bincode::new());
}

#[test]
fn two_versions_interleave_on_one_file_cbor() {
    two_versions_interleave(Cbor);
}

#[test]
fn two_versions_interleave_on_one_file_json() {
    two_versions_interleave(Json);
}

/// A byte store in which another writer puts a fresh value under a key
/// right after a read returned the stale bytes: what a concurrent writer
/// does, made certain.
#[derive(Debug)]
struct RacedStore {
    inner: MemoryCache<String, Vec<u8>>,
    fresh: Vec<u8>,
}

impl Cache<String, Vec<u8>> for RacedStore {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<Vec<u8>>>> {
        let read = self.inner.get_entry(key)?;
        self.inner.set(key.clone(), self.fresh.clone())?;
        Ok(read)
    }
    fn set_entry(&self, key: String, entry: Entry<Vec<u8>>) -> layercache::Result<()> {
        self.inner.set_entry(key, entry)
    }
    fn remove(&self, key: &String) -> layercache::Result<Option<Vec<u8>>> {
        self.inner.remove(key)
    }
    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
    fn clear(&self) -> layercache::Result<()> {
        self.inner.clear()
    }
}

#[test]
fn a_failed_decode_never_removes_a_value_it_did_not_read() {
    let fresh = Json.encode(&v1::Pair { a: 1, b: 2 }).expect("encode");
    let store = RacedStore {
        inner: MemoryCache::new(),
        fresh,
    };
    store.inner.set(k("k"), b"{stale".to_vec()).expect("set");
    let cache = Serialised::new(store, Json);
    let got: Option<v1::Pair> = cache.get(&k("k")).expect("a miss");
    assert_eq!(got, None);
    assert_eq!(cache.stale(), 1);
    let now: Option<v1::Pair> = cache.get(&k("k")).expect("get");
    assert_eq!(
        now,
        Some(v1::Pair { a: 1, b: 2 }),
        "the fresh value survived"
    );
}

#[test]
fn versions_are_checked_and_reflection_failures_name_the_type() {
    for bad in ["", "a:b", "v 1", "ü", &"x".repeat(65)] {
        let error = Schema::<()>::version(bad).expect_err(bad);
        assert!(
            matches!(error, Error::InvalidOption { .. }),
            "{bad:?}: {error}"
        );
    }
    assert_eq!(
        Schema::<()>::version("users-3.1_a")
            .expect("valid")
            .namespace(&Bincode::new()),
        "users-3.1_a.bincode:"
    );

    /// A type whose `Deserialize` refuses every value, as a validating one
    /// refuses the tracer's samples.
    #[derive(Debug)]
    struct Picky;
    impl<'de> Deserialize<'de> for Picky {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let _ = u32::deserialize(d)?;
            Err(serde::de::Error::custom("no value is good enough"))
        }
    }
    let error = Schema::<Picky>::reflect().expect_err("untraceable");
    let message = error.to_string();
    assert!(message.contains("Picky"), "{message}");
    assert!(message.contains("Schema::version"), "{message}");

    // Derived versions are stable and tell the shapes apart.
    assert_eq!(schema::<v1::Pair>(), schema::<v1::Pair>());
    let all = [
        schema::<v1::Pair>().to_string(),
        schema::<v2::Pair>().to_string(),
        schema::<v2::PairPlus>().to_string(),
        schema::<v2::PairMinus>().to_string(),
        schema::<v1::Count>().to_string(),
        schema::<v2::Count>().to_string(),
    ];
    for (i, one) in all.iter().enumerate() {
        for other in &all[i + 1..] {
            assert_ne!(one, other);
        }
    }
}

#[test]
fn memory_stores_may_go_unversioned() {
    // Any codec, for a store only this build reads.
    let cache = Serialised::unversioned(MemoryCache::<String, Vec<u8>>::new(), Bincode::new());
    cache.set(k("k"), v1::Pair { a: 1, b: 2 }).expect("set");
    assert_eq!(
        cache.get(&k("k")).expect("get"),
        Some(v1::Pair { a: 1, b: 2 })
    );
    assert_eq!(cache.inner().keys().expect("keys"), ["k"]);
}

/// `Bincode` is a value as `Json` is (issue 13): no `::new()` needed.
#[test]
fn bincode_is_a_value_like_json() {
    let store = MemoryCache::<String, Vec<u8>>::new();
    let pairs = store.versioned(Bincode, schema::<v1::Pair>());
    pairs.set(k("p"), v1::Pair { a: 1, b: 2 }).expect("set");
    assert_eq!(
        pairs.get(&k("p")).expect("get"),
        Some(v1::Pair { a: 1, b: 2 })
    );
    assert_eq!(Bincode, Bincode::new());
    assert!(pairs.namespace().ends_with(".bincode:"));
}
