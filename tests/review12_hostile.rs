//! Hostile review of issue 12 ("no wrong value and no hang anywhere in the
//! stack"): schema versions in the key namespace, Memoiser cycles, values
//! kept on write failures, and the ftrack session's copy-on-write stack.
//!
//! Tests marked `#[ignore = "<bug>: ..."]` prove a bug: they fail on the
//! code under review (run them with `--ignored`). The others are attacks
//! that found nothing; each still asserts what it attacked.

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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use layercache::codec::{Bincode, Cbor, Json};
use layercache::ftrack::{EntityKey, FixtureServer, Session, Value};
use layercache::testing::Instrumented;
use layercache::{
    Cache, CacheExt, Error, ErrorPolicy, FileCache, Keyed, Layered, Memoiser, MemoryCache, Schema,
    Serialised,
};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

/// Runs `work` on its own thread and panics if it does not finish within
/// `limit`: a hang fails the test instead of hanging the suite (the stuck
/// thread is leaked).
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(RecvTimeoutError::Timeout) => panic!("HANG: {what} did not finish within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what}: worker vanished"),
    }
}

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

fn reflect<V: serde::de::DeserializeOwned>() -> Schema {
    Schema::reflect::<V>().unwrap_or_else(|e| panic!("reflect {}: {e}", std::any::type_name::<V>()))
}

/// Attack: pairs of shapes that a positional codec would confuse. Every
/// pair must give two versions. Found nothing: serde-reflection records
/// names, order, variant indices and nested containers.
#[test]
fn reflect_tells_apart_every_confusable_pair() {
    use shapes::*;
    let pairs: Vec<(&str, Schema, Schema)> = vec![
        ("W<u32> vs W<i32>", reflect::<W<u32>>(), reflect::<W<i32>>()),
        (
            "W<u64> vs W<Option<u64>>",
            reflect::<W<u64>>(),
            reflect::<W<Option<u64>>>(),
        ),
        (
            "u32 vs Option<u32>",
            reflect::<u32>(),
            reflect::<Option<u32>>(),
        ),
        ("u64 vs i64", reflect::<u64>(), reflect::<i64>()),
        (
            "enum reordered",
            reflect::<e1::Kind>(),
            reflect::<e2::Kind>(),
        ),
        (
            "enum payload changed",
            reflect::<e1::Kind>(),
            reflect::<e3::Kind>(),
        ),
        (
            "nested struct reordered",
            reflect::<n1::Inner>(),
            reflect::<n2::Inner>(),
        ),
        (
            "nested struct in generic",
            reflect::<W<n1::Inner>>(),
            reflect::<W<n2::Inner>>(),
        ),
        ("newtype vs inner", reflect::<Meters>(), reflect::<u32>()),
        (
            "tuple struct vs struct",
            reflect::<PairTuple>(),
            reflect::<PairStruct>(),
        ),
        (
            "tuple vs struct",
            reflect::<(u32, u32)>(),
            reflect::<PairStruct>(),
        ),
        (
            "serde rename vs plain",
            reflect::<Renamed>(),
            reflect::<Plain>(),
        ),
        (
            "from u64 vs from i64",
            reflect::<FromU64>(),
            reflect::<FromI64>(),
        ),
        (
            "Vec<u8> vs Vec<i8>",
            reflect::<Vec<u8>>(),
            reflect::<Vec<i8>>(),
        ),
        (
            "(u8, u16) vs (u16, u8)",
            reflect::<(u8, u16)>(),
            reflect::<(u16, u8)>(),
        ),
        ("String vs char", reflect::<String>(), reflect::<char>()),
        ("f32 vs u32", reflect::<f32>(), reflect::<u32>()),
    ];
    for (what, one, two) in &pairs {
        assert_ne!(one, two, "{what}: one version for two shapes");
        assert!(
            one.as_str().starts_with('#') && one.as_str().len() == 17,
            "{what}: {one:?}"
        );
    }
    // Stable within a run and across calls.
    assert_eq!(reflect::<n1::Inner>(), reflect::<n1::Inner>());
    // A recursive type traces.
    let _ = reflect::<Tree>();
}

/// Attack: types the tracer cannot see through must be refused, never
/// silently given a version. Found nothing: each is an InvalidOption
/// naming the type.
#[test]
fn reflect_refuses_what_it_cannot_trace() {
    use shapes::*;
    for (what, result) in [
        ("flatten", Schema::reflect::<Flat>()),
        ("untagged", Schema::reflect::<Untagged>()),
        ("internally tagged", Schema::reflect::<Internal>()),
        ("two types named Item", Schema::reflect::<Clash>()),
        ("serde_json::Value", Schema::reflect::<serde_json::Value>()),
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
        assert!(Schema::version(bad).is_err(), "{bad:?} accepted");
    }
    assert!(Schema::version(&"x".repeat(64)).is_ok());
    // Derived versions start with '#', which a hand version cannot.
    assert!(reflect::<u32>().namespace().starts_with('#'));
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

/// BUG (wrong data): the namespace is the schema of the *type* only, not
/// the codec. Two versions of a program whose value type is unchanged but
/// whose codec changed (JSON in version 1, bincode in version 2 "for
/// speed": a likely rolling-deploy change) get the same namespace from
/// `Schema::reflect` and read each other's bytes. bincode reads version 1's
/// JSON `5` (the byte 0x35) as the u32 53, and CBOR reads it as the i32
/// -22: a wrong value, not a miss. The version should include the codec
/// (a name for it, or a codec-supplied tag).
#[test]
#[ignore = "bug: versioned namespace ignores the codec; a JSON-written 5 reads as 53 under bincode with the same Schema::reflect"]
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

/// BUG (wrong data): `versioned` returns a `Keyed`, and `Keyed::with_namespace`
/// *replaces* its namespace. The natural way to put an app's keys under a
/// prefix, `store.versioned(codec, schema).with_namespace("users:")`,
/// silently throws the schema version away: two versions with swapped
/// fields then share `users:<key>` and bincode reads one's struct as the
/// other's with the fields swapped. (The documented composition,
/// `.versioned(..).keyed(JsonKeys).with_namespace(..)`, works only because
/// it wraps a second Keyed.) Either `with_namespace` on a versioned store
/// should keep the version in front, or `versioned` should not hand back a
/// type whose builder can drop it.
#[test]
#[ignore = "bug: .versioned(..).with_namespace(..) replaces the schema namespace; V2 reads V1's bytes with fields swapped"]
fn with_namespace_on_a_versioned_store_drops_the_version() {
    let dir = TempDir::new().unwrap();
    let store = file_store(&dir, "ns.lc");
    let v1 = store
        .clone()
        .versioned(Bincode::new(), reflect::<UserV1>())
        .with_namespace("users:");
    let v2 = store
        .clone()
        .versioned(Bincode::new(), reflect::<UserV2>())
        .with_namespace("users:");
    v1.set("ada".to_string(), UserV1 { a: 1, b: 2 }).unwrap();
    let read: Option<UserV2> = v2.get(&"ada".to_string()).unwrap();
    assert_eq!(
        read,
        None,
        "version 2 read version 1's UserV1 {{ a: 1, b: 2 }} as {read:?} (stored keys: {:?}; \
         namespace of version 1's store: {:?}, its schema was {})",
        store.keys().unwrap(),
        v1.namespace(),
        reflect::<UserV1>()
    );
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
    v1.set("v2:ada".to_string(), UserV1 { a: 1, b: 2 }).unwrap();
    v1.set("v2:".to_string(), UserV1 { a: 3, b: 4 }).unwrap();
    v1.set(String::new(), UserV1 { a: 5, b: 6 }).unwrap();
    // An unversioned program writes a raw key inside version 2's namespace
    // textually, but with bytes of version 1.
    v2.set("ada".to_string(), UserV2 { b: 20, a: 10 }).unwrap();

    let got: Option<UserV2> = v2.get(&"ada".to_string()).unwrap();
    assert_eq!(got, Some(UserV2 { b: 20, a: 10 }));
    let got: Option<UserV1> = v1.get(&"v2:ada".to_string()).unwrap();
    assert_eq!(got, Some(UserV1 { a: 1, b: 2 }));

    let mut k1: Vec<String> = Cache::<String, UserV1>::keys(&v1).unwrap();
    k1.sort();
    assert_eq!(k1, ["", "v2:", "v2:ada"]);
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
    assert_eq!(store.keys().unwrap(), ["v2:ada"]);
    // remove through version 1 of a key version 2 holds: a miss.
    let removed: Option<UserV1> = v1.remove(&"ada".to_string()).unwrap();
    assert_eq!(removed, None);
    assert_eq!(store.keys().unwrap(), ["v2:ada"]);
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
    let ns2 = reflect::<UserV2>().namespace().as_bytes().to_vec();
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
            Some(UserV2 { b, a }) if b >= 7_000_000 && b < 8_000_000 && a == b + 2_000_000 => {}
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
    let ns1 = reflect::<UserV1>().namespace().to_string();
    let ns2 = reflect::<UserV2>().namespace().to_string();
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

fn failing_stack(
    policy: ErrorPolicy,
) -> (
    Layered<u32, String>,
    Arc<Instrumented<MemoryCache<u32, String>>>,
) {
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
                        if i % 3 == 0 {
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

/// BUG (stale value from `fork`): the commit says a forked stack shares the
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
#[ignore = "bug: after cache_mut inserts a layer, a write through the old stack misses it and a promotion leaves it stale for good"]
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

/// Same bug, by `remove`: an entity removed through the old stack comes
/// back from the inserted layer.
#[test]
#[ignore = "bug: after cache_mut inserts a layer, a remove through the old stack misses it; the removed entity comes back"]
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

/// BUG (Schema::reflect unusable for ordinary types): `Schema::reflect`
/// refuses every type that holds an enum anywhere but at the top: a struct
/// with a two-variant unit enum field, an `Option<Enum>`, a `Vec<Enum>`.
/// It calls serde-reflection's `trace_simple_type`, which only repeats the
/// trace until the variants of the *top-level* enum are all seen; a nested
/// enum stays incomplete and `registry()` fails with "Missing variants
/// detected for specific enums". The documented refusals are hand-written
/// Deserialize, untagged, flatten; this one hits most real value types
/// (a record with a status field), and sends the user back to hand
/// versions, the very thing the feature was to spare them. (It is a
/// refusal, so no wrong data.) tests/schema.rs has no enum at all.
#[test]
#[ignore = "bug: Schema::reflect refuses any struct/Option/Vec holding an enum (Missing variants), e.g. struct { status: enum {A, B} }"]
fn reflect_refuses_every_type_with_a_nested_enum() {
    use enum_probe::*;
    let mut refused = Vec::new();
    for (what, r) in [
        (
            "struct { name: String, status: Status }",
            Schema::reflect::<Direct>(),
        ),
        (
            "struct { status: Option<Status> }",
            Schema::reflect::<InOption>(),
        ),
        (
            "struct { statuses: Vec<Status> }",
            Schema::reflect::<InVec>(),
        ),
        (
            "struct { status: enum UnitOnly { A, B } }",
            Schema::reflect::<Unit>(),
        ),
        ("Vec<Status>", Schema::reflect::<Vec<Status>>()),
        (
            "Option<enum UnitOnly { A, B }>",
            Schema::reflect::<Option<UnitOnly>>(),
        ),
        (
            "a struct with Vec<Option<enum>> (shapes::n1::Outer)",
            Schema::reflect::<shapes::n1::Outer>(),
        ),
    ] {
        if let Err(e) = r {
            refused.push(format!("{what}: {e}"));
        }
    }
    // The top-level enum alone is fine:
    assert!(Schema::reflect::<Status>().is_ok());
    assert!(
        refused.is_empty(),
        "Schema::reflect refused {} ordinary types:\n{}",
        refused.len(),
        refused.join("\n")
    );
    // And once traced, a change two deep must still change the version.
    assert_ne!(
        reflect::<shapes::n1::Outer>(),
        reflect::<shapes::n3::Outer>()
    );
    assert_ne!(
        reflect::<shapes::n1::Outer>(),
        reflect::<shapes::n2::Outer>()
    );
}

/// BUG (wrong data, by design of the API): a versioned store is not tied
/// to the value type its schema was derived from. `versioned` returns a
/// `Keyed<Serialised<..>>`, which is a `Cache<K, V>` for *every* `V` the
/// codec takes, so the handle made with `Schema::reflect::<UserV1>()`
/// compiles for `set(k, UserV2 { .. })` as well: after a refactor that
/// changes the value type but not the line that derives the schema (or a
/// handle shared by two value types), version 2 writes under version 1's
/// namespace and version 1 reads its bytes with the fields swapped. The
/// schema should come from the `V` actually stored (`versioned::<V>(codec)`,
/// or a value type fixed by the handle's type).
#[test]
#[ignore = "bug: a handle versioned with Schema::reflect::<UserV1>() accepts UserV2 values; V1 readers get swapped fields"]
fn versioned_handle_is_not_tied_to_its_schema_type() {
    let dir = TempDir::new().unwrap();
    let store = file_store(&dir, "untyped.lc");
    // Version 2 of the program: the type changed, the schema line did not.
    let users = store.clone().versioned(Bincode::new(), reflect::<UserV1>());
    users.set("ada".to_string(), UserV2 { b: 2, a: 1 }).unwrap();
    // Version 1 of the program, still running.
    let old = store.clone().versioned(Bincode::new(), reflect::<UserV1>());
    let read: Option<UserV1> = old.get(&"ada".to_string()).unwrap();
    assert!(
        read.is_none() || read == Some(UserV1 { a: 1, b: 2 }),
        "version 1 read {read:?}: UserV2 {{ b: 2, a: 1 }} stored under UserV1's schema"
    );
}
