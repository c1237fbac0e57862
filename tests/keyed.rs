//! `Keyed`: typed keys over stores of `String` or `Vec<u8>` keys. The
//! conformance suite with number and struct keys, namespaces that isolate,
//! foreign keys that are never listed or cleared, deterministic JSON for
//! map keys, keys that cannot be stored, watcher reports, and the stack this
//! adapter exists for: `Layered<u64, User>` over memory, a real `FileCache`
//! and a real `redis-server` (feature `redis`; without a server that test
//! says so and passes, unless `LAYERCACHE_REQUIRE_REDIS=1`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use layercache::codec::{Bincode, Json};
use layercache::testing::{self, Sample, Watched};
use layercache::{
    Cache, CacheExt, CodecKeys, Entry, Error, FileCache, Invalidation, JsonKeys, KeyCodec, Keyed,
    KeyedExt, Layered, MemoryCache, Schema, Timestamp,
};
use serde::{Deserialize, Serialize};

/// A key of more than one field, as a program would have.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct TaskKey {
    kind: String,
    id: u64,
}

impl Sample for TaskKey {
    fn sample(n: u64) -> Self {
        TaskKey {
            kind: format!("Task{}", n % 3),
            id: n,
        }
    }

    fn index(&self) -> Option<u64> {
        (*self == Self::sample(self.id)).then_some(self.id)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    groups: Vec<String>,
}

fn user(name: &str) -> User {
    User {
        name: name.into(),
        groups: vec!["staff".into()],
    }
}

fn s(text: &str) -> String {
    text.to_string()
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

// ---------------------------------------------------------------------------
// Conformance
// ---------------------------------------------------------------------------

#[test]
fn conformance_u64_keys_as_json() {
    testing::run_all::<u64, String, _>(|| {
        Keyed::new(MemoryCache::<String, String>::new(), JsonKeys)
    });
    testing::run_all::<u64, String, _>(|| {
        Keyed::new(MemoryCache::<String, String>::new(), JsonKeys).with_namespace("app:v1:")
    });
}

#[test]
fn conformance_struct_keys_as_json() {
    testing::run_all::<TaskKey, Vec<u8>, _>(|| {
        Keyed::new(MemoryCache::<String, Vec<u8>>::new(), JsonKeys).with_namespace("tasks:")
    });
}

#[test]
fn conformance_keys_as_bincode_bytes() {
    testing::run_all::<u64, String, _>(|| {
        Keyed::new(
            MemoryCache::<Vec<u8>, String>::new(),
            CodecKeys(Bincode::new()),
        )
        .with_namespace("v1:")
    });
    testing::run_all::<TaskKey, u64, _>(|| {
        Keyed::new(
            MemoryCache::<Vec<u8>, u64>::new(),
            CodecKeys(Bincode::new()),
        )
    });
}

/// The suite again, each time on a store that already holds keys of other
/// programs and of another version: they never show, and survive every
/// check (the suite's `keys`, `clear` and `clear_matching` checks would fail
/// on a key they did not set).
#[test]
fn conformance_on_a_store_full_of_foreign_keys() {
    let foreign = [
        "7",                // a u64 in JSON, but outside our namespace
        "user:1",           // another program's
        "app:v2:1",         // the next version's
        "app:v1:{oops",     // ours by namespace, but not a key
        "app:v1:\"seven\"", // ours by namespace, but not a u64
        "app:v1:[1,2]",     // likewise
    ];
    let stores = Mutex::new(Vec::new());
    testing::run_all::<u64, String, _>(|| {
        let store = Arc::new(MemoryCache::<String, String>::new());
        for key in foreign {
            store.set(s(key), s("theirs")).expect("plant");
        }
        stores.lock().expect("lock").push(store.clone());
        Keyed::new(store, JsonKeys).with_namespace("app:v1:")
    });
    let stores = stores.into_inner().expect("lock");
    assert!(stores.len() >= 10, "the suite made its caches");
    for store in stores {
        let left: Vec<String> = sorted(store.keys().expect("keys"))
            .into_iter()
            .filter(|key| !key.starts_with("app:v1:") || foreign.contains(&key.as_str()))
            .collect();
        assert_eq!(left, sorted(foreign.map(s).to_vec()), "{store:?}");
    }
}

// ---------------------------------------------------------------------------
// Namespaces and foreign keys
// ---------------------------------------------------------------------------

#[test]
fn namespaces_isolate_two_versions_on_one_store() {
    let store = Arc::new(MemoryCache::<String, String>::new());
    let v1 = Keyed::new(store.clone(), JsonKeys).with_namespace("app:v1:");
    let v2 = Keyed::new(store.clone(), JsonKeys).with_namespace("app:v2:");

    // Version 1 keys users by number, version 2 by a struct.
    v1.set(1u64, s("one")).expect("set");
    v1.set(2u64, s("two")).expect("set");
    let key = TaskKey {
        kind: s("User"),
        id: 1,
    };
    v2.set(key.clone(), s("uno")).expect("set");

    assert_eq!(
        sorted(store.keys().expect("keys")),
        ["app:v1:1", "app:v1:2", r#"app:v2:{"id":1,"kind":"User"}"#]
    );
    // Neither sees the other's keys or values.
    assert_eq!(
        sorted(Cache::<u64, String>::keys(&v1).expect("keys")),
        [1, 2]
    );
    assert_eq!(
        Cache::<TaskKey, String>::keys(&v2).expect("keys"),
        std::slice::from_ref(&key)
    );
    assert_eq!(
        sorted(Cache::<u64, String>::values(&v1).expect("values")),
        ["one", "two"]
    );
    assert_eq!(
        Cache::<TaskKey, String>::values(&v2).expect("values"),
        ["uno"]
    );
    // A version 1 key is not a version 2 key, even of the same type.
    assert_eq!(Cache::<u64, String>::get(&v2, &1).expect("get"), None);
    assert_eq!(Cache::<u64, String>::remove(&v2, &1).expect("remove"), None);
    assert_eq!(
        Cache::<u64, String>::keys(&v2).expect("keys"),
        Vec::<u64>::new()
    );

    // Clearing one leaves the other whole.
    assert_eq!(
        Cache::<u64, String>::clear_matching(&v1, &|_| true).expect("clear_matching"),
        2
    );
    assert_eq!(v2.get(&key).expect("get"), Some(s("uno")));
    v1.set(3u64, s("three")).expect("set");
    Cache::<TaskKey, String>::clear(&v2).expect("clear");
    assert_eq!(store.keys().expect("keys"), ["app:v1:3"]);
    assert_eq!(
        Cache::<u64, String>::get(&v1, &3).expect("get"),
        Some(s("three"))
    );
    // And removing through one never removes the other's.
    v2.set(key.clone(), s("again")).expect("set");
    assert_eq!(
        Cache::<u64, String>::remove(&v1, &3).expect("remove"),
        Some(s("three"))
    );
    assert_eq!(v2.get(&key).expect("get"), Some(s("again")));
}

#[test]
fn foreign_keys_are_skipped_by_keys_values_and_clear() {
    let store = Arc::new(MemoryCache::<String, String>::new());
    for key in ["user:1", "{oops", "\"text\"", "[1,2]", "-1"] {
        store.set(s(key), s("theirs")).expect("plant");
    }
    // No namespace: a stored key is ours when it decodes to a u64.
    let cache = Keyed::new(store.clone(), JsonKeys);
    cache.set(1u64, s("one")).expect("set");
    cache.set(20u64, s("twenty")).expect("set");

    assert_eq!(
        sorted(Cache::<u64, String>::keys(&cache).expect("keys")),
        [1, 20]
    );
    assert_eq!(
        sorted(Cache::<u64, String>::values(&cache).expect("values")),
        ["one", "twenty"]
    );
    let seen = Mutex::new(Vec::new());
    let removed = Cache::<u64, String>::clear_matching(&cache, &|key: &u64| {
        seen.lock().expect("lock").push(*key);
        *key > 10
    })
    .expect("clear_matching");
    assert_eq!(removed, 1);
    assert_eq!(
        sorted(seen.into_inner().expect("lock")),
        [1, 20],
        "only our keys"
    );
    Cache::<u64, String>::clear(&cache).expect("clear");
    assert_eq!(
        sorted(store.keys().expect("keys")),
        ["\"text\"", "-1", "[1,2]", "user:1", "{oops"]
    );
}

#[test]
fn byte_keys_keep_foreign_and_other_namespace_keys() {
    let store = Arc::new(MemoryCache::<Vec<u8>, u32>::new());
    store.set(b"v1:\xff\xff".to_vec(), 0).expect("plant"); // not bincode of a u64
    store.set(b"other".to_vec(), 0).expect("plant");
    let v1 = Keyed::new(store.clone(), CodecKeys(Bincode::new())).with_namespace("v1:");
    let v2 = Keyed::new(store.clone(), CodecKeys(Bincode::new())).with_namespace("v2:");
    v1.set(5u64, 50).expect("set");
    v2.set(5u64, 500).expect("set");
    assert_eq!(v1.get(&5u64).expect("get"), Some(50));
    assert_eq!(v2.get(&5u64).expect("get"), Some(500));
    assert_eq!(Cache::<u64, u32>::keys(&v1).expect("keys"), [5]);
    Cache::<u64, u32>::clear(&v1).expect("clear");
    assert_eq!(v2.get(&5u64).expect("get"), Some(500));
    assert_eq!(
        sorted(store.keys().expect("keys")),
        [
            b"other".to_vec(),
            b"v1:\xff\xff".to_vec(),
            b"v2:\x05".to_vec()
        ]
    );
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// A key with a map inside: what a query or a set of filters looks like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Query {
    entity: String,
    filters: HashMap<String, u32>,
    nested: Vec<HashMap<u32, String>>,
}

fn query(order: &[usize]) -> Query {
    let names = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p",
    ];
    let mut filters = HashMap::new();
    let mut nested = HashMap::new();
    for &i in order {
        filters.insert(s(names[i]), i as u32);
        nested.insert(i as u32, s(names[i]));
    }
    Query {
        entity: s("Task"),
        filters,
        nested: vec![nested],
    }
}

#[test]
fn map_keys_encode_the_same_every_time() {
    let forward: Vec<usize> = (0..16).collect();
    let backward: Vec<usize> = (0..16).rev().collect();
    let expected = JsonKeys.encode(&query(&forward)).expect("encode");
    assert!(
        expected.starts_with(r#"{"entity":"Task","filters":{"a":0,"b":1,"c":2,"#),
        "{expected}"
    );
    assert!(
        expected.contains(r#""nested":[{"0":"a","1":"b","10":"k","11":"l","#),
        "{expected}"
    );
    // Each HashMap has its own random order; the text never changes.
    for round in 0..50 {
        let order = if round % 2 == 0 { &forward } else { &backward };
        assert_eq!(JsonKeys.encode(&query(order)).expect("encode"), expected);
    }
    // And through a store: set with one map, get and remove with another.
    let cache = Keyed::new(MemoryCache::<String, u32>::new(), JsonKeys).with_namespace("q:");
    cache.set(query(&forward), 1).expect("set");
    assert_eq!(cache.get(&query(&backward)).expect("get"), Some(1));
    assert_eq!(
        Cache::<Query, u32>::keys(&cache).expect("keys"),
        [query(&backward)]
    );
    assert_eq!(cache.remove(&query(&backward)).expect("remove"), Some(1));
    assert_eq!(cache.inner().keys().expect("keys"), Vec::<String>::new());
}

#[test]
fn json_keys_are_readable() {
    let cache = Keyed::new(MemoryCache::<String, u8>::new(), JsonKeys);
    assert_eq!(cache.stored_key(&7u64).expect("key"), "7");
    assert_eq!(cache.stored_key(&s("ada")).expect("key"), "\"ada\"");
    assert_eq!(
        cache.stored_key(&(s("alpha"), 10)).expect("key"),
        r#"["alpha",10]"#
    );
    let map: BTreeMap<String, i32> = [(s("z"), -1), (s("a"), 1)].into();
    assert_eq!(cache.stored_key(&map).expect("key"), r#"{"a":1,"z":-1}"#);
    let cache = cache.with_namespace("v3:");
    assert_eq!(cache.stored_key(&7u64).expect("key"), "v3:7");
    assert_eq!(cache.key_of::<u64>(&s("v3:7")), Some(7));
    assert_eq!(cache.key_of::<u64>(&s("v2:7")), None);
    assert_eq!(cache.key_of::<u64>(&s("v3:x")), None);
}

#[test]
fn keys_that_cannot_be_stored_are_errors_not_panics() {
    let cache = Keyed::new(MemoryCache::<String, u8>::new(), JsonKeys);

    // JSON objects need string keys: a map keyed by tuples has none.
    let tuples: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    for result in [
        cache.set(tuples.clone(), 1),
        cache.get(&tuples).map(drop),
        cache.remove(&tuples).map(drop),
    ] {
        let error = result.expect_err("no JSON for tuple map keys");
        assert!(matches!(error, Error::Key { .. }), "{error:?}");
    }
    // Integers beyond 64 bits do not fit a JSON value.
    let error = cache.set(u128::MAX, 1).expect_err("too wide");
    assert!(matches!(error, Error::Key { .. }), "{error:?}");

    // NaN is written as null, which is not an f64: stored, it would be a
    // key that keys() never lists and clear() never removes.
    let error = cache.set(f64::NAN, 1).expect_err("does not read back");
    assert!(
        error.to_string().contains("does not decode back"),
        "{error}"
    );
    let error = cache
        .set_entry(f64::INFINITY, Entry::new(1))
        .expect_err("does not read back");
    assert!(matches!(error, Error::Key { .. }), "{error:?}");
    assert_eq!(cache.inner().keys().expect("keys"), Vec::<String>::new());

    // A byte codec's refusal is a key error too.
    let small = Keyed::new(
        MemoryCache::<Vec<u8>, u8>::new(),
        CodecKeys(layercache::codec::LimitedBincode::<64>::new()),
    );
    let error = small.set("x".repeat(100), 1).expect_err("too long");
    assert!(matches!(error, Error::Key { .. }), "{error:?}");
    small.set(s("short"), 1).expect("fits");
}

// ---------------------------------------------------------------------------
// Round trips: only keys that come back are written, only our own
// spellings are read
// ---------------------------------------------------------------------------

/// A key whose `==` looks at less than its encoding: `note` is written but
/// never read back, and `==` ignores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Loose {
    id: u32,
    #[serde(skip_deserializing)]
    note: String,
}

impl PartialEq for Loose {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

#[test]
fn writes_refuse_keys_that_do_not_come_back_as_themselves() {
    let cache = Keyed::new(MemoryCache::<String, u8>::new(), JsonKeys).with_namespace("r:");

    // Two keys, one stored key (`null`): the second is refused.
    cache.set(None::<Option<u8>>, 1).expect("None round-trips");
    let error = cache
        .set_entry(Some(None::<u8>), Entry::new(2))
        .expect_err("Some(None) reads back as None");
    assert!(
        error.to_string().contains("decodes to a different key"),
        "{error}"
    );
    assert_eq!(cache.get(&None::<Option<u8>>).expect("get"), Some(1));
    assert_eq!(
        Cache::<Option<Option<u8>>, u8>::keys(&cache).expect("keys"),
        [None]
    );

    // Decodes to an equal key that encodes otherwise: it would be stored
    // where keys() and clear() never look.
    let loose = Loose {
        id: 1,
        note: s("x"),
    };
    let error = cache.set(loose, 3).expect_err("not in its own form");
    assert!(matches!(error, Error::Key { .. }), "{error:?}");
    assert!(error.to_string().contains("encodes differently"), "{error}");
    cache
        .set(Loose { id: 1, note: s("") }, 3)
        .expect("round-trips");
    assert_eq!(
        sorted(cache.inner().keys().expect("keys")),
        ["r:null", r#"r:{"id":1,"note":""}"#]
    );

    // Ordinary floats do come back, and are listed and cleared as such.
    for key in [0.1, 1.5, -2.5e-3, 6.02e23, f64::MAX, f64::MIN_POSITIVE] {
        cache.set(key, 4).expect("round-trips");
        assert_eq!(cache.get(&key).expect("get"), Some(4));
    }
    assert_eq!(Cache::<f64, u8>::keys(&cache).expect("keys").len(), 6);
    assert_eq!(
        cache
            .clear_matching(&|key: &f64| *key == 0.1)
            .expect("clear"),
        1
    );
}

#[test]
fn other_spellings_of_our_keys_are_not_ours() {
    let store = Arc::new(Watched::new(MemoryCache::<String, String>::new()));
    let cache = Keyed::new(store.clone(), JsonKeys).with_namespace("n:");
    cache.set(7u64, s("ours")).expect("set");
    cache.set(s("seven"), s("ours too")).expect("set");
    // JSON that parses as 7 or "seven", but is not what JsonKeys writes.
    let spellings = ["n: 7", "n:7 ", "n:\"\\u0073even\"", "n:\t\"seven\""];
    for stored in spellings {
        store.set(s(stored), s("theirs")).expect("plant");
        assert!(
            KeyCodec::<u64>::decode(&JsonKeys, &stored[2..]).is_some()
                || KeyCodec::<String>::decode(&JsonKeys, &stored[2..]).is_some(),
            "{stored} decodes"
        );
        assert_eq!(cache.key_of::<u64>(&s(stored)), None, "{stored}");
        assert_eq!(cache.key_of::<String>(&s(stored)), None, "{stored}");
    }
    assert_eq!(cache.key_of::<u64>(&s("n:7")), Some(7));

    assert_eq!(Cache::<u64, String>::keys(&cache).expect("keys"), [7]);
    assert_eq!(
        Cache::<u64, String>::values(&cache).expect("values"),
        ["ours"]
    );
    assert_eq!(
        Cache::<String, String>::keys(&cache).expect("keys"),
        ["seven"]
    );

    // Not reported to a watcher either.
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let log = seen.clone();
    let watcher = Arc::new(move |invalidation: Invalidation<'_, u64>| {
        if let Invalidation::Key(key) = invalidation {
            log.lock().expect("lock").push(*key);
        }
    });
    assert!(Cache::<u64, String>::watch(&cache, watcher));
    for stored in spellings.into_iter().chain(["n:7"]) {
        store.report(Invalidation::Key(&s(stored)));
    }
    assert_eq!(*seen.lock().expect("lock"), [7]);

    // Nor cleared.
    assert_eq!(
        Cache::<u64, String>::clear_matching(&cache, &|_| true).expect("clear"),
        1
    );
    Cache::<String, String>::clear(&cache).expect("clear");
    assert_eq!(
        sorted(store.keys().expect("keys")),
        sorted(spellings.map(s).to_vec())
    );
}

#[test]
fn other_spellings_of_byte_keys_are_not_ours() {
    let store = Arc::new(MemoryCache::<Vec<u8>, u8>::new());
    let cache = Keyed::new(store.clone(), CodecKeys(Bincode::new())).with_namespace("b:");
    cache.set(5u64, 1).expect("set");
    assert_eq!(store.keys().expect("keys"), [b"b:\x05".to_vec()]);
    // bincode's varint of 5 in three bytes (a u16 marker): bincode reads
    // it as 5, but writes 5 in one byte, so it is not ours.
    let long = b"b:\xfb\x05\x00".to_vec();
    assert_eq!(
        KeyCodec::<u64>::decode(&CodecKeys(Bincode::new()), &long[2..]),
        Some(5)
    );
    store.set(long.clone(), 2).expect("plant");
    assert_eq!(cache.key_of::<u64>(&long), None);
    assert_eq!(Cache::<u64, u8>::keys(&cache).expect("keys"), [5]);
    assert_eq!(
        Cache::<u64, u8>::clear_matching(&cache, &|_| true).expect("clear"),
        1
    );
    assert_eq!(store.keys().expect("keys"), [long]);
}

/// `JsonKeys` wrapped to count its calls.
#[derive(Debug, Default)]
struct Counting {
    encodes: AtomicUsize,
    decodes: AtomicUsize,
}

impl Counting {
    fn take(&self) -> (usize, usize) {
        (
            self.encodes.swap(0, Ordering::SeqCst),
            self.decodes.swap(0, Ordering::SeqCst),
        )
    }
}

impl KeyCodec<u64> for Counting {
    type Stored = String;

    fn encode(&self, key: &u64) -> layercache::Result<String> {
        self.encodes.fetch_add(1, Ordering::SeqCst);
        JsonKeys.encode(key)
    }

    fn decode(&self, stored: &str) -> Option<u64> {
        self.decodes.fetch_add(1, Ordering::SeqCst);
        KeyCodec::<u64>::decode(&JsonKeys, stored)
    }
}

#[test]
fn reads_by_key_never_decode() {
    let cache = Keyed::new(MemoryCache::<String, u8>::new(), Counting::default());
    let codec = || cache.codec();
    cache.set(1, 1).expect("set");
    assert_eq!(codec().take(), (2, 1), "set: encode, decode, encode again");
    cache.set_entry(2, Entry::new(2)).expect("set_entry");
    assert_eq!(codec().take(), (2, 1), "set_entry");
    cache.get(&1).expect("get");
    cache.get_entry(&1).expect("get_entry");
    cache.remove(&2).expect("remove");
    assert_eq!(codec().take(), (3, 0), "reads by key only encode");
    cache.keys().expect("keys");
    assert_eq!(codec().take(), (1, 1), "listing: decode, encode again");
}

// ---------------------------------------------------------------------------
// Depth
// ---------------------------------------------------------------------------

/// `depth` nested one-element arrays around a 0: `[[...[0]...]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Arrays {
    Zero(u8),
    One([Box<Arrays>; 1]),
}

/// Dropped without recursing, however deep.
impl Drop for Arrays {
    fn drop(&mut self) {
        let Arrays::One([inner]) = self else { return };
        let mut next = std::mem::replace(&mut **inner, Arrays::Zero(0));
        while let Arrays::One([inner]) = &mut next {
            next = std::mem::replace(&mut **inner, Arrays::Zero(0));
        }
    }
}

fn arrays(depth: usize) -> Arrays {
    let mut arrays = Arrays::Zero(0);
    for _ in 0..depth {
        arrays = Arrays::One([Box::new(arrays)]);
    }
    arrays
}

/// A chain of newtype structs and `Some`s, none of which JSON shows: any
/// depth of it is written `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Chain(Option<Box<Chain>>);

/// Dropped without recursing, however deep.
impl Drop for Chain {
    fn drop(&mut self) {
        let mut next = self.0.take();
        while let Some(mut inner) = next {
            next = inner.0.take();
        }
    }
}

fn chain(depth: usize) -> Chain {
    let mut chain = Chain(None);
    for _ in 0..depth {
        chain = Chain(Some(Box::new(chain)));
    }
    chain
}

/// A tuple variant inside another: two levels of JSON each
/// (`{"Pair":[..., 0]}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Pairs {
    End,
    Pair(Box<Pairs>, u8),
}

fn pairs(depth: usize) -> Pairs {
    let mut pairs = Pairs::End;
    for _ in 0..depth {
        pairs = Pairs::Pair(Box::new(pairs), 0);
    }
    pairs
}

#[test]
fn json_keys_nest_exactly_as_deep_as_serde_json_reads() {
    // serde_json reads 127 nested arrays, not 128: the limit is its own.
    let text = |depth: usize| format!("{}0{}", "[".repeat(depth), "]".repeat(depth));
    assert!(serde_json::from_str::<serde_json::Value>(&text(127)).is_ok());
    assert!(serde_json::from_str::<serde_json::Value>(&text(128)).is_err());

    let cache = Keyed::new(MemoryCache::<String, u8>::new(), JsonKeys).with_namespace("d:");
    cache.set(arrays(127), 1).expect("127 deep reads back");
    assert_eq!(
        cache.stored_key(&arrays(127)).expect("key"),
        format!("d:{}", text(127))
    );
    assert_eq!(cache.get(&arrays(127)).expect("get"), Some(1));
    assert_eq!(
        Cache::<Arrays, u8>::keys(&cache).expect("keys"),
        [arrays(127)]
    );

    let too_deep = arrays(128);
    for error in [
        cache.set(too_deep.clone(), 2).expect_err("128 deep"),
        cache.get(&too_deep).expect_err("128 deep"),
        cache.remove(&too_deep).expect_err("128 deep"),
        JsonKeys.encode(&too_deep).expect_err("128 deep"),
    ] {
        assert!(matches!(error, Error::Key { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .contains("nests 128 or more arrays and objects deep"),
            "{error}"
        );
    }

    // A tuple variant is an object and an array.
    assert!(JsonKeys.encode(&pairs(63)).is_ok());
    assert!(JsonKeys.encode(&pairs(64)).is_err());

    // Levels JSON does not show count towards 512 levels in all.
    assert_eq!(JsonKeys.encode(&chain(255)).expect("encode"), "null");
    let error = JsonKeys.encode(&chain(256)).expect_err("513 levels");
    assert!(
        error.to_string().contains("more than 512 levels"),
        "{error}"
    );
}

#[test]
fn a_key_nested_thousands_deep_is_an_error_on_a_small_stack() {
    // 100,000 levels would need tens of MiB of stack; the limits stop at
    // 512 levels in all, some 360 KiB in a debug build. The keys are
    // dropped without recursing.
    std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(|| {
            let cache = Keyed::new(MemoryCache::<String, u8>::new(), JsonKeys);
            let deep = arrays(100_000);
            assert!(cache.get(&deep).is_err());
            assert!(cache.set(deep, 1).is_err());
            let deep = chain(100_000);
            assert!(cache.get(&deep).is_err());
            assert!(cache.set(deep, 1).is_err());
        })
        .expect("spawn")
        .join()
        .expect("no overflow");
}

// ---------------------------------------------------------------------------
// Entries, clock, watchers
// ---------------------------------------------------------------------------

#[test]
fn entries_keep_their_deadlines_and_the_clock_is_the_stores() {
    let clock = Arc::new(layercache::ManualClock::starting_at(
        Timestamp::from_millis(1_000),
    ));
    let store = MemoryCache::<String, u8>::new().with_clock(clock.clone());
    let cache = Keyed::new(store, JsonKeys).with_namespace("d:");
    let entry = Entry::new(1)
        .with_expires(Timestamp::from_millis(5_000))
        .with_fresh_until(Timestamp::from_millis(3_000));
    cache.set_entry(9u64, entry).expect("set_entry");
    assert_eq!(
        cache.inner().get_entry(&s("d:9")).expect("get"),
        Some(entry)
    );
    assert_eq!(cache.get_entry(&9u64).expect("get"), Some(entry));
    assert_eq!(
        Cache::<u64, u8>::clock(&cache).now(),
        Timestamp::from_millis(1_000)
    );
    cache
        .set_with_ttl(10u64, 2, std::time::Duration::from_secs(1))
        .expect("ttl");
    clock.advance(std::time::Duration::from_secs(5));
    assert_eq!(cache.get(&9u64).expect("get"), None, "expired");
    assert_eq!(cache.get(&10u64).expect("get"), None, "expired");
}

#[test]
fn watchers_hear_decoded_keys_and_only_ours() {
    let shared = Arc::new(Watched::new(MemoryCache::<String, String>::new()));
    let top = Arc::new(MemoryCache::<u64, String>::new());
    let stack = Layered::new()
        .with_layer(top.clone())
        .with_layer(Keyed::new(shared.clone(), JsonKeys).with_namespace("app:v1:"));
    assert_eq!(shared.watchers(), 1);

    stack.set(1, s("one")).expect("set");
    stack.set(2, s("two")).expect("set");
    // Another process writes key 1: the stack drops it from the top.
    shared
        .write_elsewhere(s("app:v1:1"), s("uno"))
        .expect("write elsewhere");
    assert_eq!(top.get(&1).expect("get"), None);
    assert_eq!(top.get(&2).expect("get"), Some(s("two")));
    assert_eq!(stack.get(&1).expect("get"), Some(s("uno")));

    // Keys that are not ours are not reported: key 2 stays on top.
    shared.report(Invalidation::Key(&s("app:v2:2")));
    shared.report(Invalidation::Key(&s("2")));
    shared.report(Invalidation::Key(&s("app:v1:oops")));
    assert_eq!(top.get(&2).expect("get"), Some(s("two")));

    // Everything changed: all of it goes from the top.
    shared.report(Invalidation::All);
    assert_eq!(top.keys().expect("keys"), Vec::<u64>::new());

    // The wrapped watcher is active as long as the stack lives.
    assert_eq!(shared.watchers(), 1);
    drop(stack);
    // The store drops inactive watchers the next time it reports.
    shared.report(Invalidation::All);
    assert_eq!(shared.watchers(), 0, "the dropped stack's watcher is gone");
}

#[test]
fn watch_reports_what_the_store_reports() {
    let plain = Keyed::new(MemoryCache::<String, u8>::new(), JsonKeys);
    let seen: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
    let log = seen.clone();
    let watcher = Arc::new(move |invalidation: Invalidation<'_, u64>| {
        log.lock().expect("lock").push(match invalidation {
            Invalidation::Key(key) => Some(*key),
            _ => None,
        });
    });
    assert!(
        !Cache::<u64, u8>::watch(&plain, watcher.clone()),
        "a memory store does not report"
    );

    let watched = Keyed::new(Watched::new(MemoryCache::<String, u8>::new()), JsonKeys);
    assert!(Cache::<u64, u8>::watch(&watched, watcher));
    watched.inner().report(Invalidation::Key(&s("12")));
    watched.inner().report(Invalidation::Key(&s("twelve")));
    watched.inner().report(Invalidation::All);
    assert_eq!(*seen.lock().expect("lock"), [Some(12), None]);
}

#[test]
fn debug_shows_codec_namespace_and_store() {
    let cache = Keyed::new(MemoryCache::<String, u8>::new(), JsonKeys);
    assert_eq!(format!("{cache:?}"), "Keyed<JsonKeys>(Memory(0 entries))");
    let cache = MemoryCache::<Vec<u8>, Vec<u8>>::new()
        .serialised(Json)
        .keyed(CodecKeys(Bincode::new()))
        .with_namespace("v1:");
    assert_eq!(
        format!("{cache:?}"),
        r#"Keyed<CodecKeys<Bincode>, "v1:">(Serialised<Json>(Memory(0 entries)))"#
    );
}

// ---------------------------------------------------------------------------
// The stack this adapter exists for
// ---------------------------------------------------------------------------

/// The schema version of the bincode values in the file tests.
fn v1() -> Schema<User> {
    Schema::version("v1").expect("a valid version")
}

/// Memory over a real file: promotion from the file, the file's keys as
/// text, and a second handle (another process, a later run) reading them.
#[test]
fn memory_over_a_file_with_typed_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users.lc");
    let top = Arc::new(MemoryCache::<u64, User>::new());
    let cache: Layered<u64, User> = Layered::new().with_layer(top.clone()).with_layer(
        FileCache::open(&path)
            .expect("open")
            .versioned(Bincode::new(), v1())
            .keyed(JsonKeys)
            .with_namespace("users:"),
    );
    cache.set(7, user("Ada")).expect("set");
    top.clear().expect("clear memory");
    assert_eq!(cache.get(&7).expect("get"), Some(user("Ada")));
    assert_eq!(top.get(&7).expect("get"), Some(user("Ada")), "promoted");

    let file = FileCache::open(&path).expect("open again");
    assert_eq!(file.keys().expect("keys"), ["v1.bincode:users:7"]);
    let later = Keyed::new(file.versioned(Bincode::new(), v1()), JsonKeys).with_namespace("users:");
    assert_eq!(later.get(&7u64).expect("get"), Some(user("Ada")));
}

#[cfg(feature = "redis")]
mod redis_stack {
    use super::*;
    use layercache::RedisCache;
    use layercache::testing::RedisServer;

    /// THE stack: `Layered<u64, User>` over memory, a file and Redis.
    #[test]
    fn layered_u64_users_over_memory_file_and_redis() {
        let Some(server) = RedisServer::start_or_skip("keyed: memory, file and redis") else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.lc");

        // The natural code.
        let cache: Layered<u64, User> = Layered::new()
            .with_layer(MemoryCache::new())
            .with_layer(
                FileCache::open(&path)
                    .expect("open the file")
                    .versioned(Bincode::new(), v1())
                    .keyed(JsonKeys),
            )
            .with_layer(
                RedisCache::open(server.url())
                    .expect("open redis")
                    .serialised(Json)
                    .keyed(JsonKeys)
                    .with_namespace("users:v1:"),
            );

        // Handles on each store, to look underneath.
        let file = FileCache::open(&path).expect("open the file again");
        let redis = RedisCache::open(server.url()).expect("open redis again");
        let memory = cache.layer(0).expect("memory layer");
        let file_layer = cache.layer(1).expect("file layer");

        // Set: written through to all three, keys as text.
        cache.set(7, user("Ada")).expect("set");
        cache.set(8, user("Grace")).expect("set");
        assert_eq!(
            sorted(file.keys().expect("file keys")),
            ["v1.bincode:7", "v1.bincode:8"]
        );
        assert_eq!(
            sorted(redis.keys().expect("redis keys")),
            ["users:v1:7", "users:v1:8"]
        );
        assert_eq!(
            redis.get(&s("users:v1:7")).expect("raw get"),
            Some(br#"{"name":"Ada","groups":["staff"]}"#.to_vec()),
            "JSON in redis-cli"
        );

        // The memory layer forgets: the file answers, and memory has it again.
        memory.clear().expect("clear memory");
        assert_eq!(memory.get(&7).expect("get"), None);
        assert_eq!(cache.get(&7).expect("get"), Some(user("Ada")));
        assert_eq!(
            memory.get(&7).expect("get"),
            Some(user("Ada")),
            "promoted from the file"
        );

        // Memory and file forget: Redis alone answers, and both get it back.
        memory.clear().expect("clear memory");
        file_layer.clear().expect("clear the file");
        assert_eq!(file.keys().expect("file keys"), Vec::<String>::new());
        assert_eq!(cache.get(&8).expect("get"), Some(user("Grace")));
        assert_eq!(memory.get(&8).expect("get"), Some(user("Grace")));
        assert_eq!(file_layer.get(&8).expect("get"), Some(user("Grace")));
        assert_eq!(file.keys().expect("file keys"), ["v1.bincode:8"]);

        // The stack's keys are the union, as u64s.
        assert_eq!(sorted(cache.keys().expect("keys")), [7, 8]);

        // Remove: gone from every layer.
        assert_eq!(cache.remove(&8).expect("remove"), Some(user("Grace")));
        assert_eq!(cache.get(&8).expect("get"), None);
        assert_eq!(file.keys().expect("file keys"), Vec::<String>::new());
        assert_eq!(redis.keys().expect("redis keys"), ["users:v1:7"]);

        // Clearing the stack clears our keys in Redis, and only ours.
        redis
            .set(s("someone-else"), b"theirs".to_vec())
            .expect("plant");
        cache.clear().expect("clear");
        assert_eq!(redis.keys().expect("redis keys"), ["someone-else"]);
        assert_eq!(cache.get(&7).expect("get"), None);
    }
}

/// `.keyed` is a method of every cache, also of caches of many value types.
#[test]
fn keyed_ext_reads_naturally() {
    let cache = MemoryCache::<String, Vec<u8>>::new()
        .serialised(Json)
        .keyed(JsonKeys);
    cache.set(1u64, vec![s("x")]).expect("set");
    assert_eq!(cache.get(&1u64).expect("get"), Some(vec![s("x")]));
    assert_eq!(
        cache.inner().inner().get(&s("1")).expect("raw"),
        Some(br#"["x"]"#.to_vec())
    );
    let _: &dyn KeyCodec<u64, Stored = String> = cache.codec();
    let _ = KeyedExt::keyed(MemoryCache::<String, u8>::new(), JsonKeys);
}
