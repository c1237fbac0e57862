//! Hostile review of issue 12 ("no wrong value and no hang anywhere in the
//! stack"): schema versions in the key namespace, Memoiser cycles, values
//! kept on write failures, and the ftrack session's copy-on-write stack.
//!
//! The review proved six bugs, each with a test here that failed on the
//! code under review (commit 83b5d08); all six are fixed and their tests
//! run (their comments say "Was a bug"). The others are attacks that found
//! nothing; each still asserts what it attacked.

#![cfg(all(
    feature = "testing",
    feature = "file",
    feature = "ftrack",
    feature = "bincode",
    feature = "cbor",
    feature = "json",
    feature = "reflect"
))]

mod support;
use support::within;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use layercache::codec::{Bincode, Cbor, Json};
use layercache::ftrack::{EntityKey, FixtureServer, Session, Value};
use layercache::testing::Instrumented;
use layercache::{
    Cache, CacheExt, Error, ErrorPolicy, FileCache, Keyed, KeyedExt, Layered, Memoiser,
    MemoryCache, Schema, Serialised, Verbatim,
};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

fn file_store(dir: &TempDir, name: &str) -> Arc<FileCache> {
    Arc::new(FileCache::open(dir.path().join(name)).expect("open the cache file"))
}

// ===========================================================================
// 1. Schema::reflect: different shapes must give different versions.
// ===========================================================================

mod shapes {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    pub struct W<T> {
        pub inner: T,
    }

    pub mod e1 {
        use super::*;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub enum Kind {
            A(u32),
            B(String),
        }
    }
    pub mod e2 {
        use super::*;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub enum Kind {
            B(String),
            A(u32),
        }
    }
    pub mod e3 {
        use super::*;
        // Same variant names and order, one variant's payload changed.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub enum Kind {
            A(u32),
            B(u64),
        }
    }

    pub mod n1 {
        use super::*;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Inner {
            pub a: u32,
            pub b: u32,
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Outer {
            pub inner: Inner,
            pub kinds: Vec<Option<super::e1::Kind>>,
        }
    }
    pub mod n2 {
        use super::*;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Inner {
            pub b: u32,
            pub a: u32,
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Outer {
            pub inner: Inner,
            pub kinds: Vec<Option<super::e1::Kind>>,
        }
    }
    pub mod n3 {
        use super::*;
        // n1::Outer with a nested enum's second variant changed, two deep.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Outer {
            pub inner: super::n1::Inner,
            pub kinds: Vec<Option<super::e3::Kind>>,
        }
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    pub struct Meters(pub u32);

    #[derive(Deserialize)]
    #[allow(dead_code)]
    pub struct PairStruct {
        pub a: u32,
        pub b: u32,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    pub struct PairTuple(pub u32, pub u32);

    #[derive(Deserialize)]
    #[allow(dead_code)]
    pub struct Renamed {
        #[serde(rename = "b")]
        pub a: u32,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    pub struct Plain {
        pub a: u32,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    pub struct Tree {
        pub label: String,
        pub children: Vec<Tree>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    pub struct Flat {
        pub x: u32,
        #[serde(flatten)]
        pub rest: Plain,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    #[serde(untagged)]
    pub enum Untagged {
        A(u32),
        B(String),
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    #[serde(tag = "type")]
    pub enum Internal {
        A { x: u32 },
        B { y: String },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    #[serde(from = "u64")]
    pub struct FromU64(pub u64);
    impl From<u64> for FromU64 {
        fn from(v: u64) -> Self {
            Self(v)
        }
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    #[serde(from = "i64")]
    pub struct FromI64(pub i64);
    impl From<i64> for FromI64 {
        fn from(v: i64) -> Self {
            Self(v)
        }
    }

    pub mod clash_a {
        use super::*;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Item {
            pub n: u32,
        }
    }
    pub mod clash_b {
        use super::*;
        #[derive(Deserialize)]
        #[allow(dead_code)]
        pub struct Item {
            pub n: String,
        }
    }
    // Two different types both named `Item` in one type.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    pub struct Clash {
        pub a: clash_a::Item,
        pub b: clash_b::Item,
    }
}

fn reflect<V: serde::de::DeserializeOwned>() -> Schema<V> {
    Schema::<V>::reflect().unwrap_or_else(|e| panic!("reflect {}: {e}", std::any::type_name::<V>()))
}

/// The version derived for `V`, as text: schemas of different types are of
/// different types, so the attacks compare their versions.
fn version_of<V: serde::de::DeserializeOwned>() -> String {
    reflect::<V>().to_string()
}

/// Attack: pairs of shapes that a positional codec would confuse. Every
/// pair must give two versions. Found nothing: serde-reflection records
/// names, order, variant indices and nested containers.
#[test]
fn reflect_tells_apart_every_confusable_pair() {
    use shapes::*;
    let pairs: Vec<(&str, String, String)> = vec![
        (
            "W<u32> vs W<i32>",
            version_of::<W<u32>>(),
            version_of::<W<i32>>(),
        ),
        (
            "W<u64> vs W<Option<u64>>",
            version_of::<W<u64>>(),
            version_of::<W<Option<u64>>>(),
        ),
        (
            "u32 vs Option<u32>",
            version_of::<u32>(),
            version_of::<Option<u32>>(),
        ),
        ("u64 vs i64", version_of::<u64>(), version_of::<i64>()),
        (
            "enum reordered",
            version_of::<e1::Kind>(),
            version_of::<e2::Kind>(),
        ),
        (
            "enum payload changed",
            version_of::<e1::Kind>(),
            version_of::<e3::Kind>(),
        ),
        (
            "nested struct reordered",
            version_of::<n1::Inner>(),
            version_of::<n2::Inner>(),
        ),
        (
            "nested struct in generic",
            version_of::<W<n1::Inner>>(),
            version_of::<W<n2::Inner>>(),
        ),
        (
            "newtype vs inner",
            version_of::<Meters>(),
            version_of::<u32>(),
        ),
        (
            "tuple struct vs struct",
            version_of::<PairTuple>(),
            version_of::<PairStruct>(),
        ),
        (
            "tuple vs struct",
            version_of::<(u32, u32)>(),
            version_of::<PairStruct>(),
        ),
        (
            "serde rename vs plain",
            version_of::<Renamed>(),
            version_of::<Plain>(),
        ),
        (
            "from u64 vs from i64",
            version_of::<FromU64>(),
            version_of::<FromI64>(),
        ),
        (
            "Vec<u8> vs Vec<i8>",
            version_of::<Vec<u8>>(),
            version_of::<Vec<i8>>(),
        ),
        (
            "(u8, u16) vs (u16, u8)",
            version_of::<(u8, u16)>(),
            version_of::<(u16, u8)>(),
        ),
        (
            "String vs char",
            version_of::<String>(),
            version_of::<char>(),
        ),
        ("f32 vs u32", version_of::<f32>(), version_of::<u32>()),
    ];
    for (what, one, two) in &pairs {
        assert_ne!(one, two, "{what}: one version for two shapes");
        assert!(
            one.as_str().starts_with('#') && one.as_str().len() == 17,
            "{what}: {one:?}"
        );
    }
    // Stable within a run and across calls.
    assert_eq!(version_of::<n1::Inner>(), version_of::<n1::Inner>());
    // A recursive type traces.
    let _ = version_of::<Tree>();
}

/// Attack: types the tracer cannot see through must be refused, never
/// silently given a version. Found nothing: each is an InvalidOption
/// naming the type.
#[test]
fn reflect_refuses_what_it_cannot_trace() {
    use shapes::*;
    for (what, result) in [
        ("flatten", Schema::<Flat>::reflect().map(|s| s.to_string())),
        (
            "untagged",
            Schema::<Untagged>::reflect().map(|s| s.to_string()),
        ),
        (
            "internally tagged",
            Schema::<Internal>::reflect().map(|s| s.to_string()),
        ),
        (
            "two types named Item",
            Schema::<Clash>::reflect().map(|s| s.to_string()),
        ),
        (
            "serde_json::Value",
            Schema::<serde_json::Value>::reflect().map(|s| s.to_string()),
        ),
    ] {
        match result {
            Err(Error::InvalidOption { reason, .. }) => {
                assert!(reason.contains("Schema::version"), "{what}: {reason}")
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
}

/// Attack: hand versions that could begin another's namespace.
#[test]
fn hand_versions_cannot_overlap() {
    for bad in [
        "",
        "a:b",
        "v1:",
        ":",
        "#0123",
        "a b",
        "ü",
        &"x".repeat(65),
        "v1\n",
    ] {
        assert!(Schema::<()>::version(bad).is_err(), "{bad:?} accepted");
    }
    assert!(Schema::<()>::version(&"x".repeat(64)).is_ok());
    // Derived versions start with '#', which a hand version cannot.
    assert!(reflect::<u32>().as_str().starts_with('#'));
}

// ===========================================================================
// 2. Versioned stores: wrong data through any path.
// ===========================================================================

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserV1 {
    a: u32,
    b: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserV2 {
    b: u32,
    a: u32,
}

/// Was a bug, fixed by the codec's name in the namespace (wrong data):
/// the namespace was the schema of the *type* only, not
/// the codec. Two versions of a program whose value type is unchanged but
/// whose codec changed (JSON in version 1, bincode in version 2 "for
/// speed": a likely rolling-deploy change) get the same namespace from
/// `Schema::reflect` and read each other's bytes. bincode reads version 1's
/// JSON `5` (the byte 0x35) as the u32 53, and CBOR reads it as the i32
/// -22: a wrong value, not a miss. The version should include the codec
/// (a name for it, or a codec-supplied tag).
#[test]
fn codec_change_under_one_schema_reads_wrong_values() {
    let dir = TempDir::new().unwrap();
    let store = file_store(&dir, "codec.lc");
    let version1 = store.clone().versioned(Json, reflect::<u32>());
    let version2 = store.clone().versioned(Bincode::new(), reflect::<u32>());
    version1.set("hits".to_string(), 5u32).unwrap();
    let read: Option<u32> = version2.get(&"hits".to_string()).unwrap();
    assert!(
        read.is_none() || read == Some(5),
        "version 2 (bincode) read version 1's (JSON) 5 as {read:?}: wrong data, not a miss"
    );

    let version3 = store.clone().versioned(Cbor, reflect::<i32>());
    let version1i = store.clone().versioned(Json, reflect::<i32>());
    version1i.set("delta".to_string(), 5i32).unwrap();
    let read: Option<i32> = version3.get(&"delta".to_string()).unwrap();
    assert!(
        read.is_none() || read == Some(5),
        "version 3 (CBOR) read version 1's (JSON) 5 as {read:?}: wrong data, not a miss"
    );
}

/// Was a bug: `versioned` returned a `Keyed`, whose `with_namespace`
/// replaced the schema's namespace, so two versions with swapped fields
/// shared `users:<key>` and bincode read one's struct as the other's with
/// the fields swapped. `versioned` now returns a `Versioned`, which has no
/// `with_namespace`; a namespace of one's own goes in a `Keyed` on top,
/// and the schema's namespace stays in front of it.
#[test]
fn a_namespace_on_top_of_a_versioned_store_keeps_the_version() {
    let dir = TempDir::new().unwrap();
    let store = file_store(&dir, "ns.lc");
    let v1 = store
        .clone()
        .versioned(Bincode::new(), reflect::<UserV1>())
        .keyed(Verbatim::<String>::new())
        .with_namespace("users:");
    let v2 = store
        .clone()
        .versioned(Bincode::new(), reflect::<UserV2>())
        .keyed(Verbatim::<String>::new())
        .with_namespace("users:");
    v1.set("ada".to_string(), UserV1 { a: 1, b: 2 }).unwrap();
    let read: Option<UserV2> = v2.get(&"ada".to_string()).unwrap();
    assert_eq!(
        read,
        None,
        "version 2 read version 1's UserV1 {{ a: 1, b: 2 }} as {read:?} (stored keys: {:?})",
        store.keys().unwrap(),
    );
    let ns1 = reflect::<UserV1>().namespace(&Bincode::new());
    assert_eq!(store.keys().unwrap(), [format!("{ns1}users:ada")]);
}

/// Attack: keys that look like another version's namespace, and every
/// listing call, on a real file shared by two versions and an unrelated
/// program. Found nothing: keys, values, clear_matching and clear stay
/// within their version.
#[test]
fn versions_never_see_each_other_on_a_file() {
    let dir = TempDir::new().unwrap();
    let store = file_store(&dir, "versions.lc");
    let s1 = Schema::version("v1").unwrap();
    let s2 = Schema::version("v2").unwrap();
    let v1 = store.clone().versioned(Bincode::new(), s1.clone());
    let v2 = store.clone().versioned(Bincode::new(), s2.clone());
    // Version 1 writes keys that spell version 2's namespace.
    v1.set("v2.bincode:ada".to_string(), UserV1 { a: 1, b: 2 })
        .unwrap();
    v1.set("v2.bincode:".to_string(), UserV1 { a: 3, b: 4 })
        .unwrap();
    v1.set(String::new(), UserV1 { a: 5, b: 6 }).unwrap();
    // An unversioned program writes a raw key inside version 2's namespace
    // textually, but with bytes of version 1.
    v2.set("ada".to_string(), UserV2 { b: 20, a: 10 }).unwrap();

    let got: Option<UserV2> = v2.get(&"ada".to_string()).unwrap();
    assert_eq!(got, Some(UserV2 { b: 20, a: 10 }));
    let got: Option<UserV1> = v1.get(&"v2.bincode:ada".to_string()).unwrap();
    assert_eq!(got, Some(UserV1 { a: 1, b: 2 }));

    let mut k1: Vec<String> = Cache::<String, UserV1>::keys(&v1).unwrap();
    k1.sort();
    assert_eq!(k1, ["", "v2.bincode:", "v2.bincode:ada"]);
    let k2: Vec<String> = Cache::<String, UserV2>::keys(&v2).unwrap();
    assert_eq!(k2, ["ada"]);
    let vals2: Vec<UserV2> = v2.values().unwrap();
    assert_eq!(vals2, [UserV2 { b: 20, a: 10 }]);
    let vals1: Vec<UserV1> = v1.values().unwrap();
    assert_eq!(vals1.len(), 3);

    // clear_matching on version 2 with a predicate that would take anything.
    let n = Cache::<String, UserV2>::clear_matching(&v2, &|_| true).unwrap();
    assert_eq!(n, 1);
    assert_eq!(Cache::<String, UserV1>::keys(&v1).unwrap().len(), 3);
    v2.set("ada".to_string(), UserV2 { b: 20, a: 10 }).unwrap();
    Cache::<String, UserV1>::clear(&v1).unwrap();
    assert_eq!(store.keys().unwrap(), ["v2.bincode:ada"]);
    // remove through version 1 of a key version 2 holds: a miss.
    let removed: Option<UserV1> = v1.remove(&"ada".to_string()).unwrap();
    assert_eq!(removed, None);
    assert_eq!(store.keys().unwrap(), ["v2.bincode:ada"]);
}

/// Attack: byte-keyed FileCache with Verbatim<Vec<u8>>, keys holding ':'
/// and the other version's prefix bytes, non-UTF-8 bytes. Found nothing.
#[test]
fn byte_keyed_versions_stay_apart() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(
        FileCache::builder(dir.path().join("bytes.lc"))
            .byte_keys()
            .open()
            .unwrap(),
    );
    let v1 = store.clone().versioned(Bincode::new(), reflect::<UserV1>());
    let v2 = store.clone().versioned(Bincode::new(), reflect::<UserV2>());
    let ns2 = reflect::<UserV2>()
        .namespace(&Bincode::new())
        .as_bytes()
        .to_vec();
    let mut tricky = ns2.clone();
    tricky.extend_from_slice(b"k");
    v1.set(tricky.clone(), UserV1 { a: 1, b: 2 }).unwrap();
    v1.set(vec![0xff, 0x00, b':'], UserV1 { a: 3, b: 4 })
        .unwrap();
    v2.set(b"k".to_vec(), UserV2 { b: 9, a: 8 }).unwrap();
    let got: Option<UserV2> = v2.get(&b"k".to_vec()).unwrap();
    assert_eq!(got, Some(UserV2 { b: 9, a: 8 }));
    let got: Option<UserV2> = v2.get(&tricky).unwrap();
    assert_eq!(got, None);
    let k2: Vec<Vec<u8>> = Cache::<Vec<u8>, UserV2>::keys(&v2).unwrap();
    assert_eq!(k2, [b"k".to_vec()]);
    Cache::<Vec<u8>, UserV2>::clear(&v2).unwrap();
    let mut k1: Vec<Vec<u8>> = Cache::<Vec<u8>, UserV1>::keys(&v1).unwrap();
    k1.sort();
    let mut want = vec![tricky, vec![0xff, 0x00, b':']];
    want.sort();
    assert_eq!(k1, want);
}

/// Attack: a Layered stack (memory over a versioned file) in each of two
/// versions, sharing the file. Promotion, invalidation and clear must not
/// move one version's value into the other. Found nothing.
#[test]
fn layered_stacks_over_versioned_layers_stay_apart() {
    let dir = TempDir::new().unwrap();
    let store = file_store(&dir, "layered.lc");
    let stack1: Layered<String, UserV1> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(store.clone().versioned(Bincode::new(), reflect::<UserV1>()));
    let stack2: Layered<String, UserV2> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(store.clone().versioned(Bincode::new(), reflect::<UserV2>()));
    for i in 0..50u32 {
        stack1
            .set(format!("k{i}"), UserV1 { a: i, b: i + 1 })
            .unwrap();
        if i % 2 == 0 {
            stack2
                .set(
                    format!("k{i}"),
                    UserV2 {
                        b: 1000 + i,
                        a: 2000 + i,
                    },
                )
                .unwrap();
        }
    }
    // Fresh stacks (cold memory) read only their own.
    let cold1: Layered<String, UserV1> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(store.clone().versioned(Bincode::new(), reflect::<UserV1>()));
    let cold2: Layered<String, UserV2> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(store.clone().versioned(Bincode::new(), reflect::<UserV2>()));
    for i in 0..50u32 {
        assert_eq!(
            cold1.get(&format!("k{i}")).unwrap(),
            Some(UserV1 { a: i, b: i + 1 })
        );
        let want = (i % 2 == 0).then_some(UserV2 {
            b: 1000 + i,
            a: 2000 + i,
        });
        assert_eq!(cold2.get(&format!("k{i}")).unwrap(), want);
    }
    cold2.clear().unwrap();
    for i in 0..50u32 {
        assert_eq!(
            cold1.layer(1).unwrap().get(&format!("k{i}")).unwrap(),
            Some(UserV1 { a: i, b: i + 1 })
        );
    }
}

/// Child of `two_processes_two_versions_interleave`: version 2 (fields
/// swapped) hammering the same file as the parent's version 1.
#[test]
fn child_review12_version2_writer() {
    if !support::is_child("child_review12_version2_writer") {
        return;
    }
    let path = support::arg("PATH");
    let rounds = support::arg_u64("ROUNDS") as u32;
    let store = Arc::new(FileCache::open(&path).unwrap());
    let v2 = store.versioned(Bincode::new(), reflect::<UserV2>());
    support::report("ready");
    let mut wrong = 0;
    for round in 0..rounds {
        let key = format!("k{}", round % 16);
        v2.set(
            key.clone(),
            UserV2 {
                b: 7_000_000 + round,
                a: 9_000_000 + round,
            },
        )
        .unwrap();
        let got: Option<UserV2> = v2.get(&key).unwrap();
        match got {
            Some(UserV2 { b, a }) if (7_000_000..8_000_000).contains(&b) && a == b + 2_000_000 => {}
            None => {}
            other => {
                wrong += 1;
                support::report(format!("wrong {other:?}"));
            }
        }
        if round % 7 == 0 {
            let _: Option<UserV2> = v2.remove(&format!("k{}", (round + 3) % 16)).unwrap();
        }
    }
    support::report(format!("done wrong={wrong}"));
}

/// Attack: two versions of a program, in two processes, interleaving sets,
/// gets and removes of the same keys on one FileCache. Found nothing:
/// neither reads the other's values; each one's last value survives.
#[test]
fn two_processes_two_versions_interleave() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("two.lc");
    let store = Arc::new(FileCache::open(&path).unwrap());
    let v1 = store.clone().versioned(Bincode::new(), reflect::<UserV1>());
    let rounds = 3000u32;
    let mut child = support::Running::spawn(
        "version2",
        support::child_command(
            "child_review12_version2_writer",
            &[
                ("PATH", path.display().to_string()),
                ("ROUNDS", rounds.to_string()),
            ],
        ),
    );
    child.wait_for_report("ready", support::CHILD_DEADLINE);
    for round in 0..rounds {
        let key = format!("k{}", round % 16);
        v1.set(
            key.clone(),
            UserV1 {
                a: round,
                b: round + 1,
            },
        )
        .unwrap();
        let got: Option<UserV1> = v1.get(&key).unwrap();
        if let Some(UserV1 { a, b }) = got {
            assert!(a < rounds && b == a + 1, "version 1 read {got:?}");
        }
        if round % 5 == 0 {
            let _: Option<UserV1> = v1.remove(&format!("k{}", (round + 1) % 16)).unwrap();
        }
    }
    let finished = child.finish();
    finished.assert_success();
    assert!(
        finished.reports.iter().any(|r| r == "done wrong=0"),
        "child reports: {:?}",
        finished.reports
    );
    // Both namespaces exist, and nothing outside them.
    let ns1 = reflect::<UserV1>().namespace(&Bincode::new()).to_string();
    let ns2 = reflect::<UserV2>().namespace(&Bincode::new()).to_string();
    for key in store.keys().unwrap() {
        assert!(
            key.starts_with(&ns1) || key.starts_with(&ns2),
            "stray key {key}"
        );
    }
}

// ===========================================================================
// 3. NotStored: the computed value must never be lost.
// ===========================================================================

/// A stack's failing bottom layer, to look at.
type Bottom = Arc<Instrumented<MemoryCache<u32, String>>>;

fn failing_stack(policy: ErrorPolicy) -> (Layered<u32, String>, Bottom) {
    let bottom = Arc::new(Instrumented::new(MemoryCache::new()));
    bottom.fail_writes(true);
    let stack = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(bottom.clone())
        .with_policy(policy);
    (stack, bottom)
}

/// Attack: into_computed with the wrong type, then the right one; Display,
/// root() and source() chains. Found nothing: the value survives a wrong
/// guess and the chain reaches the layer's error.
#[test]
fn not_stored_survives_wrong_type_guesses() {
    use std::error::Error as _;
    let (stack, _bottom) = failing_stack(ErrorPolicy::Strict);
    let error = stack
        .get_or_insert_with(1, || "one".to_string())
        .unwrap_err();
    let shown = error.to_string();
    assert!(
        shown.starts_with("computed a value but could not store it"),
        "{shown}"
    );
    assert!(
        !matches!(error.root(), Error::NotStored { .. } | Error::Layer { .. }),
        "root {:?}",
        error.root()
    );
    let source = error.source().expect("NotStored has a source");
    assert!(
        source.to_string().contains("layer 1") || source.to_string().contains("1"),
        "{source}"
    );
    if let Error::NotStored { value, .. } = &error {
        assert_eq!(value.type_name(), std::any::type_name::<String>());
    }
    // Wrong guesses give the error back, value inside.
    let error = error.into_computed::<&'static str>().unwrap_err();
    let error = error.into_computed::<Box<String>>().unwrap_err();
    let error = error.into_computed::<Arc<String>>().unwrap_err();
    assert!(matches!(error, Error::NotStored { .. }));
    assert_eq!(error.into_computed::<String>().unwrap(), "one");
    // The top layer kept it: the next read is a hit, no recomputation.
    assert_eq!(stack.get(&1).unwrap(), Some("one".to_string()));
    // Not a NotStored: into_computed gives the error back unchanged.
    let other = Error::Key { reason: "x".into() };
    assert!(matches!(
        other.into_computed::<String>(),
        Err(Error::Key { .. })
    ));
}

/// Attack: every path that computes and stores, over a cache that refuses
/// every write. Found nothing: each gives the value back, in NotStored or
/// (Degrade) as Ok.
#[test]
fn not_stored_on_every_path() {
    // A top layer that fails (Strict): memory below takes it.
    let top = Arc::new(Instrumented::new(MemoryCache::<u32, String>::new()));
    top.fail_writes(true);
    let stack: Layered<u32, String> = Layered::new()
        .with_layer(top.clone())
        .with_layer(MemoryCache::new());
    let e = stack.get_or_insert_with(7, || "seven".into()).unwrap_err();
    assert_eq!(e.into_computed::<String>().unwrap(), "seven");
    // try_get_or_insert_with.
    let e = stack
        .try_get_or_insert_with(8, || Ok::<_, Error>("eight".to_string()))
        .unwrap_err();
    assert_eq!(e.into_computed::<String>().unwrap(), "eight");
    // Degrade with every layer failing: Ok, value back.
    let a = Arc::new(Instrumented::new(MemoryCache::<u32, String>::new()));
    let b = Arc::new(Instrumented::new(MemoryCache::<u32, String>::new()));
    a.fail_writes(true);
    b.fail_writes(true);
    let degrade: Layered<u32, String> = Layered::new()
        .with_layer(a.clone())
        .with_layer(b.clone())
        .with_policy(ErrorPolicy::Degrade);
    assert_eq!(degrade.get_or_insert_with(1, || "d".into()).unwrap(), "d");

    // Memoiser: call, try_call, wrap / Memoised::call, Memoised::try_call.
    let failing = Instrumented::new(MemoryCache::<String, u64>::new());
    failing.fail_writes(true);
    let memo = Memoiser::new(failing);
    let e = memo.call("f", &1u32, || 11u64).unwrap_err();
    assert_eq!(e.into_computed::<u64>().unwrap(), 11);
    let e = memo
        .try_call("f", &2u32, || Ok::<u64, Error>(22))
        .unwrap_err();
    assert_eq!(e.into_computed::<u64>().unwrap(), 22);
    let wrapped = memo.wrap("g", |x: &u32| u64::from(*x) * 3);
    let e = wrapped.call(&5u32).unwrap_err();
    assert_eq!(e.into_computed::<u64>().unwrap(), 15);
    let wrapped = memo.wrap("h", |x: &u32| Ok::<u64, Error>(u64::from(*x) * 4));
    let e = wrapped.try_call(&5u32).unwrap_err();
    assert_eq!(e.into_computed::<u64>().unwrap(), 20);

    // Keyed: a key that does not round-trip is a NotStored too.
    let keyed = Keyed::new(MemoryCache::<String, u64>::new(), layercache::JsonKeys);
    let e = keyed.get_or_insert_with(f64::NAN, || 99).unwrap_err();
    assert_eq!(e.into_computed::<u64>().unwrap(), 99);

    // Serialised over a failing store.
    let bytes = Instrumented::new(MemoryCache::<String, Vec<u8>>::new());
    bytes.fail_writes(true);
    let ser = bytes.versioned(Bincode::new(), Schema::version("v1").unwrap());
    let e = ser
        .get_or_insert_with("k".to_string(), || vec![1u8, 2])
        .unwrap_err();
    assert_eq!(e.into_computed::<Vec<u8>>().unwrap(), vec![1, 2]);
}

/// Attack: followers of a leader whose store failed. Found nothing: every
/// caller gets a value (its own, in NotStored, or the leader's), no hang.
#[test]
fn memoiser_followers_of_a_failed_store_get_values() {
    within(
        "followers of a failed store",
        Duration::from_secs(20),
        || {
            let failing = Instrumented::new(MemoryCache::<String, u64>::new());
            failing.fail_writes(true);
            let memo = Arc::new(Memoiser::new(failing));
            let computed = Arc::new(AtomicUsize::new(0));
            let barrier = Arc::new(Barrier::new(4));
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (memo, computed, barrier) =
                        (memo.clone(), computed.clone(), barrier.clone());
                    thread::spawn(move || {
                        barrier.wait();
                        let r = memo.call("slow", &0u32, || {
                            computed.fetch_add(1, Ordering::SeqCst);
                            thread::sleep(Duration::from_millis(20));
                            42u64
                        });
                        match r {
                            Ok(v) => v,
                            Err(e) => e.into_computed::<u64>().expect("a NotStored carrying u64"),
                        }
                    })
                })
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), 42);
            }
        },
    );
}

// ===========================================================================
// 4. Memoiser: no false cycles, no missed ones.
// ===========================================================================

type Memo = Memoiser<MemoryCache<String, u64>>;

fn is_cycle_like(e: &Error) -> bool {
    matches!(e, Error::Cycle { .. } | Error::Recursion { .. })
}

/// A DAG: node n depends on the nodes given by `deps(n)`, all < n.
fn deps(n: u64) -> Vec<u64> {
    if n < 3 {
        return vec![];
    }
    vec![n / 2, n - 1, (n * 7) % n.max(1) / 2, n - 3]
}

fn value_of(n: u64) -> u64 {
    // Deterministic, independent of evaluation order.
    n.wrapping_mul(2_654_435_761) % 1_000_003
}

/// Evaluates `n` through the memoiser, each node checking the values of
/// its dependencies.
fn eval(memo: &Memo, n: u64, spin: &AtomicBool) -> Result<u64, Error> {
    memo.try_call("node", &n, || {
        for d in deps(n) {
            let v = eval(memo, d, spin)?;
            assert_eq!(v, value_of(d), "node {d} had a wrong value");
        }
        if spin.load(Ordering::Relaxed) {
            thread::yield_now();
        }
        Ok(value_of(n))
    })
}

/// Attack: false cycles. Six threads evaluate an acyclic graph from
/// different roots, many rounds, the cache cleared between rounds so the
/// flights really overlap. A Cycle or Recursion here would be an error
/// where no deadlock exists. Found nothing.
#[test]
fn no_false_cycles_on_an_acyclic_graph() {
    within(
        "acyclic graph, six threads",
        Duration::from_secs(60),
        || {
            let memo: Arc<Memo> = Arc::new(Memoiser::new(MemoryCache::new()));
            let spin = Arc::new(AtomicBool::new(true));
            for round in 0..150u64 {
                memo.cache().clear().unwrap();
                let barrier = Arc::new(Barrier::new(6));
                let handles: Vec<_> = (0..6u64)
                    .map(|t| {
                        let (memo, spin, barrier) = (memo.clone(), spin.clone(), barrier.clone());
                        thread::spawn(move || {
                            barrier.wait();
                            let root = 20 + (round * 5 + t * 3) % 25;
                            eval(&memo, root, &spin).map(|v| (root, v))
                        })
                    })
                    .collect();
                for h in handles {
                    match h.join().unwrap() {
                        Ok((root, v)) => assert_eq!(v, value_of(root)),
                        Err(e) => panic!("round {round}: false {e}"),
                    }
                }
            }
        },
    );
}

/// `n` threads, thread i leading key i whose computation needs key i+1
/// (mod n): a real circle once all are inside. Returns each thread's result.
fn circle(n: usize) -> Vec<Result<u64, Error>> {
    let memo: Arc<Memo> = Arc::new(Memoiser::new(MemoryCache::new()));
    let inside = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (memo, inside) = (memo.clone(), inside.clone());
            thread::spawn(move || {
                memo.try_call("ring", &(i as u64), || {
                    inside.fetch_add(1, Ordering::SeqCst);
                    let until = Instant::now() + Duration::from_secs(5);
                    while inside.load(Ordering::SeqCst) < n && Instant::now() < until {
                        thread::yield_now();
                    }
                    let next = ((i + 1) % n) as u64;
                    // The inner computation (run if this thread ever leads
                    // `next`) needs the key after it, and so on: the circle
                    // is there whichever thread leads what.
                    fn chain(memo: &Memo, k: u64, n: u64, left: u64) -> Result<u64, Error> {
                        memo.try_call("ring", &k, || {
                            if left == 0 {
                                return Ok(k);
                            }
                            chain(memo, (k + 1) % n, n, left - 1).map(|_| k)
                        })
                    }
                    chain(&memo, next, n as u64, 2 * n as u64).map(|_| i as u64)
                })
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Attack: missed cycles with 2 to 5 threads, many rounds. Found nothing:
/// never a hang, and some call always reports the circle.
#[test]
fn real_circles_never_hang() {
    for n in 2..=5usize {
        for round in 0..30 {
            let results = within(
                &format!("a circle of {n} threads, round {round}"),
                Duration::from_secs(20),
                move || circle(n),
            );
            assert!(
                results
                    .iter()
                    .any(|r| matches!(r, Err(e) if is_cycle_like(e))),
                "{n} threads, round {round}: a circle and nobody saw it: {results:?}"
            );
            for (i, r) in results.iter().enumerate() {
                if let Ok(v) = r {
                    assert_eq!(*v, i as u64, "thread {i} got another key's value");
                }
            }
        }
    }
}

/// Attack: panics inside computations while others follow them and a
/// third thread closes what would be a circle through the panicking one.
/// Found nothing: followers wake, no false cycle is left behind, the
/// memoiser works afterwards.
#[test]
fn panics_end_flights_and_leave_no_ghost_waits() {
    within("panicking leaders", Duration::from_secs(30), || {
        let memo: Arc<Memo> = Arc::new(Memoiser::new(MemoryCache::new()));
        for round in 0..40u64 {
            memo.cache().clear().unwrap();
            let started = Arc::new(Barrier::new(2));
            let leader = {
                let (memo, started) = (memo.clone(), started.clone());
                thread::spawn(move || {
                    memo.call("p", &round, || -> u64 {
                        started.wait();
                        thread::sleep(Duration::from_millis(5));
                        // Needs q while followers wait on p.
                        let _ = memo.call("q", &round, || round);
                        panic!("computation of p panics");
                    })
                })
            };
            started.wait();
            let followers: Vec<_> = (0..3)
                .map(|_| {
                    let memo = memo.clone();
                    thread::spawn(move || memo.call("p", &round, || round + 1000))
                })
                .collect();
            assert!(leader.join().is_err(), "the leader panicked");
            for f in followers {
                let v = f
                    .join()
                    .unwrap()
                    .expect("a follower after a panic: no false cycle");
                assert_eq!(v, round + 1000);
            }
            // A fresh circle-free chain on this memoiser still works.
            assert_eq!(
                memo.call("q2", &round, || memo.call("p", &round, || 0).unwrap())
                    .unwrap(),
                round + 1000
            );
        }
    });
}

/// Attack: flights landing while other threads walk the wait graph: many
/// threads hammering a few keys whose computations call each other in a
/// fixed (acyclic) order, with short computations so flights end during
/// walks. Found nothing.
#[test]
fn flights_landing_during_walks_are_not_cycles() {
    within("landing during walks", Duration::from_secs(60), || {
        let memo: Arc<Memo> = Arc::new(Memoiser::new(MemoryCache::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..5u64)
            .map(|t| {
                let (memo, stop, errors) = (memo.clone(), stop.clone(), errors.clone());
                thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let k = (i + t) % 6 + 10;
                        if i.is_multiple_of(3) {
                            let _ = memo.cache().remove(&memo.key("node", &k).unwrap());
                            let _ = memo.cache().remove(&memo.key("node", &(k / 2)).unwrap());
                        }
                        let spin = AtomicBool::new(false);
                        if let Err(e) = eval(&memo, k, &spin) {
                            errors.lock().unwrap().push(e.to_string());
                        }
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
        let errors = errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "false errors: {:?}",
            &errors[..errors.len().min(5)]
        );
    });
}

// ===========================================================================
// 5. ftrack session: cache_mut copy-on-write.
// ===========================================================================

fn user_server() -> Arc<FixtureServer> {
    let server = FixtureServer::new();
    server
        .insert(serde_json::json!({"__entity_type__": "User", "id": "u1", "username": "ada"}))
        .unwrap();
    Arc::new(server)
}

/// Was a bug, fixed by writes through an older copy going to the newest
/// copy's layers (stale value from `fork`): the commit says a forked stack shares the
/// old one's generations "so that promotions and writes on the two copies
/// still see each other and keep the guarantees of one stack", and
/// `Layered` guarantees that "a promotion never leaves an upper layer
/// holding an older value than the layers below". With a layer *inserted*
/// by `cache_mut`, a promotion on the new stack copies the bottom's value
/// into the new layer; a later write through the old stack (a snapshot from
/// `Session::cache()`, or any call that started before the guard dropped)
/// does not know the new layer and leaves it holding the older value. Once
/// memory drops the key (eviction, a clear), every read through the new
/// stack serves the older entity from the new layer, while the bottom
/// layer holds the newer one, for good. The same with a remove: a
/// removed entity comes back.
#[test]
fn fork_leaves_an_inserted_layer_stale() {
    let bottom: Arc<MemoryCache<String, layercache::ftrack::Entity>> = Arc::new(MemoryCache::new());
    let session = {
        let bottom = bottom.clone();
        Session::builder(user_server())
            .cache(move |_| {
                Some(Box::new(bottom) as Box<dyn Cache<String, layercache::ftrack::Entity>>)
            })
            .build()
    };
    let key = EntityKey::new("User", ["u1"]);
    let cache_key = session.cache_key(&key).unwrap();
    let ada = session.get("User", ["u1"]).unwrap().unwrap();
    assert_eq!(ada.peek("username"), Value::String("ada".into()));

    // A call on the stack as it is (a snapshot, or a call under way).
    let old = session.cache();
    // Another thread adds a shared layer between memory and the bottom.
    let middle: Arc<MemoryCache<String, layercache::ftrack::Entity>> = Arc::new(MemoryCache::new());
    {
        let mut stack = session.cache_mut();
        stack.insert_layer(1, middle.clone());
    }
    // Memory drops the key; a read on the new stack promotes from the bottom.
    session
        .cache()
        .layer(0)
        .unwrap()
        .remove(&cache_key)
        .unwrap();
    assert!(session.cache().get(&cache_key).unwrap().is_some());
    // The old stack writes a newer entity: memory and bottom get it.
    let grace = layercache::ftrack::Entity::new(key.clone());
    grace.set("username", "grace");
    old.set(cache_key.clone(), grace.clone()).unwrap();
    drop(old);
    assert!(
        bottom.get(&cache_key).unwrap().unwrap().same(&grace),
        "the bottom has the newer entity"
    );
    // Memory drops it again (eviction); read through the new stack.
    session
        .cache()
        .layer(0)
        .unwrap()
        .remove(&cache_key)
        .unwrap();
    let read = session.cache().get(&cache_key).unwrap().unwrap();
    assert!(
        read.same(&grace),
        "the new stack served {:?} (username {:?}) from the inserted layer, older than the \
         bottom layer's {:?}: a promotion left an upper layer older than the layers below",
        read.key(),
        read.peek("username"),
        grace.peek("username"),
    );
}

/// Was the same bug, by `remove`: an entity removed through the old stack came
/// back from the inserted layer.
#[test]
fn fork_resurrects_a_removed_entity() {
    let bottom: Arc<MemoryCache<String, layercache::ftrack::Entity>> = Arc::new(MemoryCache::new());
    let session = {
        let bottom = bottom.clone();
        Session::builder(user_server())
            .cache(move |_| {
                Some(Box::new(bottom) as Box<dyn Cache<String, layercache::ftrack::Entity>>)
            })
            .build()
    };
    let cache_key = session.cache_key(&EntityKey::new("User", ["u1"])).unwrap();
    session.get("User", ["u1"]).unwrap().unwrap();
    let old = session.cache();
    {
        let mut stack = session.cache_mut();
        stack.insert_layer(1, Arc::new(MemoryCache::new()));
    }
    session
        .cache()
        .layer(0)
        .unwrap()
        .remove(&cache_key)
        .unwrap();
    assert!(session.cache().get(&cache_key).unwrap().is_some()); // promotes into the new layer
    old.remove(&cache_key).unwrap();
    drop(old);
    assert!(bottom.get(&cache_key).unwrap().is_none());
    let back = session.cache().get(&cache_key).unwrap();
    assert!(
        back.is_none(),
        "removed through the stack, yet the new stack still serves it: {:?}",
        back.map(|e| e.peek("username"))
    );
}

/// Attack: cache_mut (adding and removing a lower layer, replacing the
/// memory layer) racing get, query, merge and populate on four threads,
/// with deadlines; every entity returned must be the identity asked for,
/// with its server value. Found nothing.
#[test]
fn cache_mut_racing_calls_never_hang_or_mix_entities() {
    within(
        "cache_mut racing session calls",
        Duration::from_secs(60),
        || {
            let server = FixtureServer::new();
            for n in 0..20 {
                server
                .insert(serde_json::json!({"__entity_type__": "Shot", "id": format!("s{n}"), "name": format!("sh{n:03}")}))
                .unwrap();
            }
            let dir = TempDir::new().unwrap();
            let path = dir.path().join("session.lc");
            let session = {
                let path = path.clone();
                Session::builder(server)
                    .cache(move |session| {
                        let file = FileCache::open(&path).unwrap();
                        Some(Box::new(Serialised::new(file, session.codec()))
                            as Box<dyn Cache<String, layercache::ftrack::Entity>>)
                    })
                    .build()
            };
            let stop = Arc::new(AtomicBool::new(false));
            let mut handles = Vec::new();
            for t in 0..3u64 {
                let (session, stop) = (session.clone(), stop.clone());
                handles.push(thread::spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let n = i % 20;
                        let id = format!("s{n}");
                        let entity = match i % 3 {
                            0 => session.get("Shot", [id.as_str()]).unwrap().unwrap(),
                            1 => session
                                .query(&format!("select name from Shot where id is \"{id}\""))
                                .unwrap()
                                .pop()
                                .unwrap(),
                            _ => {
                                let e = session.get("Shot", [id.as_str()]).unwrap().unwrap();
                                session.populate(std::slice::from_ref(&e), "name").unwrap();
                                session.merge(&e).unwrap()
                            }
                        };
                        assert_eq!(
                            entity.key(),
                            &EntityKey::new("Shot", [id.as_str()]),
                            "wrong entity"
                        );
                        assert_eq!(
                            entity.get("name").unwrap(),
                            Value::String(format!("sh{n:03}")),
                            "wrong value for {id}"
                        );
                    }
                }));
            }
            let changer = {
                let (session, stop) = (session.clone(), stop.clone());
                let path = path.clone();
                thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let mut stack = session.cache_mut();
                        match i % 3 {
                            0 => {
                                let file = FileCache::open(&path).unwrap();
                                stack.push(Serialised::new(file, session.codec()));
                            }
                            1 => {
                                let depth = stack.depth();
                                if depth > 1 {
                                    stack.remove_layer(depth - 1);
                                }
                            }
                            _ => {
                                stack.remove_layer(0);
                                stack.insert_layer(0, Arc::new(MemoryCache::new()));
                            }
                        }
                        drop(stack);
                        thread::sleep(Duration::from_millis(1));
                    }
                })
            };
            thread::sleep(Duration::from_secs(4));
            stop.store(true, Ordering::Relaxed);
            for h in handles {
                h.join().unwrap();
            }
            changer.join().unwrap();
        },
    );
}

/// Attack: lost cache_mut changes: four threads each add their own layer,
/// repeatedly, concurrently with reads. Found nothing: every layer added
/// is there at the end.
#[test]
fn concurrent_cache_mut_changes_are_all_kept() {
    within("concurrent cache_mut", Duration::from_secs(30), || {
        let session = Session::builder(user_server()).build();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let session = session.clone();
                thread::spawn(move || {
                    for _ in 0..25 {
                        session.cache_mut().push(MemoryCache::new());
                        session.get("User", ["u1"]).unwrap().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(session.cache().depth(), 1 + 4 * 25);
    });
}

mod enum_probe {
    use super::*;
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    pub enum Status {
        Active,
        Suspended { days: u32 },
        Gone(String),
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    pub struct Direct {
        pub name: String,
        pub status: Status,
    }
    /// `Status` with the payload of its last variant changed (same name to
    /// serde, so only the payload tells them apart).
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    #[serde(rename = "Status")]
    pub enum StatusChanged {
        Active,
        Suspended { days: u32 },
        Gone(u64),
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    #[serde(rename = "Direct")]
    pub struct DirectChanged {
        pub name: String,
        #[serde(rename = "status")]
        pub status: StatusChanged,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    pub struct InOption {
        pub status: Option<Status>,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    pub struct InVec {
        pub statuses: Vec<Status>,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    pub struct Unit {
        pub status: UnitOnly,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    pub enum UnitOnly {
        A,
        B,
    }
}

/// Was a bug: `Schema::reflect` refused every type holding an enum below
/// the top (serde-reflection repeats its passes only for a top-level enum,
/// so a nested one stayed incomplete). It now traces an enum in a field, a
/// tuple or a newtype whole, by taking the mark off nested enums between
/// passes. Below an `Option`, a sequence or a map serde-reflection stops
/// exploring once it knows the container's format, so only part of the
/// enum would be seen: those types are refused with an error naming the
/// enum, never given a version from half a shape.
#[test]
fn reflect_traces_nested_enums_or_refuses_them_by_name() {
    use enum_probe::*;
    for (what, result) in [
        (
            "struct { name: String, status: Status }",
            Schema::<Direct>::reflect().map(|s| s.to_string()),
        ),
        (
            "struct { status: enum UnitOnly { A, B } }",
            Schema::<Unit>::reflect().map(|s| s.to_string()),
        ),
        (
            "Vec<Status>",
            Schema::<Vec<Status>>::reflect().map(|s| s.to_string()),
        ),
        (
            "Option<enum UnitOnly { A, B }>",
            Schema::<Option<UnitOnly>>::reflect().map(|s| s.to_string()),
        ),
        ("Status", Schema::<Status>::reflect().map(|s| s.to_string())),
    ] {
        assert!(result.is_ok(), "{what}: {result:?}");
    }
    for (what, enum_name, result) in [
        (
            "struct { status: Option<Status> }",
            "Status",
            Schema::<InOption>::reflect().map(|s| s.to_string()),
        ),
        (
            "struct { statuses: Vec<Status> }",
            "Status",
            Schema::<InVec>::reflect().map(|s| s.to_string()),
        ),
        (
            "a struct with Vec<Option<enum>> (shapes::n1::Outer)",
            "Kind",
            Schema::<shapes::n1::Outer>::reflect().map(|s| s.to_string()),
        ),
        (
            "the same with a variant's payload changed (shapes::n3::Outer)",
            "Kind",
            Schema::<shapes::n3::Outer>::reflect().map(|s| s.to_string()),
        ),
    ] {
        match result {
            Err(Error::InvalidOption { reason, .. }) => {
                assert!(
                    reason.contains(&format!("enum {enum_name}")),
                    "{what}: {reason}"
                );
                assert!(reason.contains("Schema::version"), "{what}: {reason}");
            }
            other => panic!("{what}: neither traced whole nor refused: {other:?}"),
        }
    }
    // A change to a nested enum's variant, traced whole, changes the version.
    assert_ne!(
        version_of::<enum_probe::Direct>(),
        version_of::<enum_probe::DirectChanged>()
    );
}

// Was a bug: a versioned store was a `Cache<K, V>` for every `V` its codec
// takes, so a handle made with `Schema::<UserV1>::reflect()` stored
// `UserV2`s under version 1's namespace. A `Versioned` store now holds the
// one type of its `Schema<V>`: `set(k, UserV2 { .. })` on it does not
// compile (the `compile_fail` example on `layercache::Versioned`).
