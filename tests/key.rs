//! Key makers: `ObjectKeyMaker` is injective on values, ignores map order,
//! keeps its documented format; `StringKeyMaker` is `Display`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use layercache::key::{KeyMaker, ObjectKeyMaker, StringKeyMaker};
use layercache::{Error, Result};
use proptest::prelude::*;
use serde::{Serialize, Serializer};

fn key<T: Serialize + ?Sized>(item: &T) -> String {
    ObjectKeyMaker.key(item).expect("a key")
}

// ---------------------------------------------------------------------------
// 1. Distinct values, distinct keys.

/// A value tree in serde's data model, serialised as plain unit, bool, i64,
/// f64, str, bytes, seq, map and option: no enum variants reach the key
/// maker.
#[derive(Debug, Clone)]
enum Val {
    Unit,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Seq(Vec<Val>),
    Map(BTreeMap<String, Val>),
    Opt(Option<Box<Val>>),
}

impl PartialEq for Val {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Val::Unit, Val::Unit) => true,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Int(a), Val::Int(b)) => a == b,
            // By bits: 0.0 and -0.0 are different values (and keys).
            (Val::Float(a), Val::Float(b)) => a.to_bits() == b.to_bits(),
            (Val::Str(a), Val::Str(b)) => a == b,
            (Val::Bytes(a), Val::Bytes(b)) => a == b,
            (Val::Seq(a), Val::Seq(b)) => a == b,
            (Val::Map(a), Val::Map(b)) => a == b,
            (Val::Opt(a), Val::Opt(b)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for Val {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Val::Unit => serializer.serialize_unit(),
            Val::Bool(v) => serializer.serialize_bool(*v),
            Val::Int(v) => serializer.serialize_i64(*v),
            Val::Float(v) => serializer.serialize_f64(*v),
            Val::Str(v) => serializer.serialize_str(v),
            Val::Bytes(v) => serializer.serialize_bytes(v),
            Val::Seq(v) => serializer.collect_seq(v),
            Val::Map(v) => serializer.collect_map(v),
            Val::Opt(None) => serializer.serialize_none(),
            Val::Opt(Some(v)) => serializer.serialize_some(v),
        }
    }
}

/// Strings from an alphabet of the grammar's own delimiters, so collisions
/// would be likely if escaping or length prefixes were wrong.
const TRICKY: &str = "[ab1:;\"\\[\\]{}ifsnuT]{0,4}";

fn arb_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE),
        (-3i32..3).prop_map(f64::from),
        any::<f64>().prop_filter("no NaN", |f| !f.is_nan()),
    ]
}

fn arb_val() -> impl Strategy<Value = Val> {
    let leaf = prop_oneof![
        Just(Val::Unit),
        any::<bool>().prop_map(Val::Bool),
        (-3i64..12).prop_map(Val::Int),
        any::<i64>().prop_map(Val::Int),
        arb_float().prop_map(Val::Float),
        TRICKY.prop_map(Val::Str),
        proptest::collection::vec(any::<u8>(), 0..3).prop_map(Val::Bytes),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Val::Seq),
            proptest::collection::btree_map("[ab:\"]{0,2}", inner.clone(), 0..3).prop_map(Val::Map),
            proptest::option::of(inner).prop_map(|v| Val::Opt(v.map(Box::new))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn keys_are_equal_exactly_when_values_are(
        values in proptest::collection::vec(arb_val(), 2..16),
        repeat in 0usize..8,
    ) {
        // Add copies so that equal pairs are always present too.
        let mut values = values;
        let copies: Vec<Val> = values.iter().take(repeat).cloned().collect();
        values.extend(copies);
        let keys: Vec<String> = values.iter().map(key).collect();
        for (i, a) in values.iter().enumerate() {
            for (j, b) in values.iter().enumerate().skip(i) {
                prop_assert_eq!(
                    a == b,
                    keys[i] == keys[j],
                    "{:?} and {:?} have keys {:?} and {:?}", a, b, &keys[i], &keys[j]
                );
            }
        }
        // Concatenation stays unambiguous: pairs of values, as tuples.
        for a in values.iter().take(4) {
            for b in values.iter().take(4) {
                for c in values.iter().take(4) {
                    prop_assert_eq!(
                        key(&(a, b)) == key(&(c, b)),
                        a == c
                    );
                }
            }
        }
    }

    #[test]
    fn keys_are_deterministic(value in arb_val()) {
        let first = key(&value);
        prop_assert_eq!(&key(&value.clone()), &first);
        // key_into appends exactly the key.
        let mut out = String::from("prefix|");
        ObjectKeyMaker.key_into(&value, &mut out).expect("a key");
        prop_assert_eq!(out, format!("prefix|{first}"));
    }
}

// ---------------------------------------------------------------------------
// 2. The explicit cases.

#[derive(Serialize)]
struct Point {
    x: u32,
    y: u32,
}

#[derive(Serialize)]
struct Spot {
    x: u32,
    y: u32,
}

#[derive(Serialize)]
struct Unit;

#[derive(Serialize)]
struct Other;

#[derive(Serialize)]
struct Wrap(u32);

#[derive(Serialize)]
struct Pair(u32, u32);

#[derive(Serialize)]
enum Shape {
    Empty,
    Blank,
    Circle(u32),
    Square(u32),
    Rect(u32, u32),
    Boxed { x: u32, y: u32 },
}

#[derive(Serialize)]
enum Form {
    Empty,
    Circle(u32),
    Rect(u32, u32),
    Boxed { x: u32, y: u32 },
}

/// Bytes serialised as bytes (what `serde_bytes` does).
struct ByteBuf(Vec<u8>);

impl Serialize for ByteBuf {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

#[track_caller]
fn assert_distinct(a: String, b: String) {
    assert_ne!(a, b);
}

#[test]
fn the_classic_ambiguities_are_distinct() {
    assert_distinct(key(&("a:b", "")), key(&("a", "b")));
    assert_distinct(key(&("a", "bc")), key(&("ab", "c")));
    assert_distinct(key(&Some(None::<u8>)), key(&None::<Option<u8>>));
    assert_distinct(key(&()), key(&None::<u8>));
    assert_distinct(key(&1u8), key(&1.0f64));
    assert_distinct(key(&vec![Vec::<u8>::new()]), key(&Vec::<Vec<u8>>::new()));
    assert_distinct(key(&"1"), key(&1));
    assert_distinct(key(&""), key(&()));
    assert_distinct(key(&0.0f64), key(&-0.0f64));
    assert_distinct(key(&true), key(&"T"));
    assert_distinct(key(&ByteBuf(vec![1, 2])), key(&vec![1u8, 2]));
    assert_distinct(key(&ByteBuf(vec![])), key(&""));
    assert_distinct(key(&(1, (2, 3))), key(&((1, 2), 3)));
    assert_distinct(key(&vec![(); 2]), key(&vec![(); 3]));
    assert_distinct(key(&Wrap(1)), key(&1u32));
    assert_distinct(key(&Wrap(1)), key(&(1u32,)));
    assert_distinct(key(&Pair(1, 2)), key(&(1u32, 2u32)));
    assert_distinct(key(&Unit), key(&()));
    assert_distinct(key(&Unit), key(&Other));
}

#[test]
fn structs_maps_and_enums_are_distinct() {
    let map: BTreeMap<&str, u32> = [("x", 1), ("y", 2)].into();
    let point = Point { x: 1, y: 2 };
    let spot = Spot { x: 1, y: 2 };
    // A struct differs from a map with the same fields, and from a struct of
    // another name with the same fields.
    assert_distinct(key(&point), key(&map));
    assert_distinct(key(&point), key(&spot));
    assert_distinct(key(&Shape::Boxed { x: 1, y: 2 }), key(&point));

    let all = [
        key(&point),
        key(&spot),
        key(&map),
        key(&(1u32, 2u32)),
        key(&Pair(1, 2)),
        key(&Shape::Empty),
        key(&Shape::Blank),
        key(&Shape::Circle(1)),
        key(&Shape::Circle(2)),
        key(&Shape::Square(1)),
        key(&Shape::Rect(1, 2)),
        key(&Shape::Rect(2, 1)),
        key(&Shape::Boxed { x: 1, y: 2 }),
        key(&Form::Empty),
        key(&Form::Circle(1)),
        key(&Form::Rect(1, 2)),
        key(&Form::Boxed { x: 1, y: 2 }),
        key(&"Empty"),
        key(&Unit),
        key(&Wrap(1)),
    ];
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "{all:#?}");
}

#[test]
fn documented_equivalences_hold() {
    // All integer widths share one form; char and str share one form; an f32
    // is widened to f64.
    assert_eq!(key(&1u8), key(&1i64));
    assert_eq!(key(&1u8), key(&1u128));
    assert_eq!(key(&-7i8), key(&-7i64));
    assert_eq!(key(&'a'), key(&"a"));
    assert_eq!(key(&1.5f32), key(&1.5f64));
    assert_eq!(key(&"s".to_string()), key(&"s"));
    assert_eq!(key(&vec![1, 2]), key(&[1, 2]));
    assert_eq!(key(&vec![1, 2]), key(&(1, 2)));
    let btree: BTreeMap<&str, u32> = [("x", 1), ("y", 2)].into();
    let hash: HashMap<&str, u32> = [("y", 2), ("x", 1)].into();
    assert_eq!(key(&btree), key(&hash));
    // A two-entry HashMap is in sorted order half the time: this one never is.
    assert_eq!(key(&btree), key(&Entries(vec![("y", 2), ("x", 1)])));
}

// ---------------------------------------------------------------------------
// 3. Maps in any order.

/// A map serialised with its entries in exactly the given order.
struct Entries<K, V>(Vec<(K, V)>);

impl<K: Serialize, V: Serialize> Serialize for Entries<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

type Nested = Vec<(String, Vec<(String, u32)>)>;

/// A Fisher–Yates shuffle driven by `seed`.
fn shuffled<T>(mut items: Vec<T>, seed: u64) -> Vec<T> {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = ((state >> 33) as usize) % (i + 1);
        items.swap(i, j);
    }
    items
}

fn arb_nested() -> impl Strategy<Value = Nested> {
    proptest::collection::btree_map(
        "[a-c:]{0,3}",
        proptest::collection::btree_map("[a-c\"]{0,3}", any::<u32>(), 0..5),
        0..6,
    )
    .prop_map(|outer| {
        outer
            .into_iter()
            .map(|(k, inner)| (k, inner.into_iter().collect()))
            .collect()
    })
}

/// The entries as sorted maps: the key every order must give.
fn as_sorted(entries: &Nested) -> BTreeMap<String, BTreeMap<String, u32>> {
    entries
        .iter()
        .map(|(k, inner)| (k.clone(), inner.iter().cloned().collect()))
        .collect()
}

fn as_hash(entries: &Nested) -> HashMap<String, HashMap<String, u32>> {
    entries
        .iter()
        .map(|(k, inner)| (k.clone(), inner.iter().cloned().collect()))
        .collect()
}

fn as_entries(entries: &Nested, seed: u64) -> Entries<String, Entries<String, u32>> {
    Entries(
        shuffled(entries.clone(), seed)
            .into_iter()
            .enumerate()
            .map(|(i, (k, inner))| (k, Entries(shuffled(inner, seed ^ i as u64))))
            .collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn nested_maps_in_any_order_give_one_key(
        (entries, reordered) in arb_nested().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
        seed_a in any::<u64>(),
        seed_b in any::<u64>(),
    ) {
        let sorted = as_sorted(&entries);
        let expected = key(&sorted);
        // HashMaps (each with its own random order) built in two orders.
        prop_assert_eq!(&key(&as_hash(&entries)), &expected);
        prop_assert_eq!(&key(&as_hash(&reordered)), &expected);
        // Entries serialised in explicitly shuffled orders, at both levels.
        prop_assert_eq!(&key(&as_entries(&entries, seed_a)), &expected);
        prop_assert_eq!(&key(&as_entries(&reordered, seed_b)), &expected);
        // Inside other values too.
        prop_assert_eq!(
            key(&(1, Some(as_hash(&reordered)), vec![as_hash(&entries)])),
            key(&(1, Some(&sorted), vec![&sorted]))
        );
    }

    #[test]
    fn maps_with_different_entries_give_different_keys(
        a in arb_nested(),
        b in arb_nested(),
    ) {
        let a_key = key(&as_hash(&a));
        let b_key = key(&as_hash(&b));
        prop_assert_eq!(as_sorted(&a) == as_sorted(&b), a_key == b_key);
    }
}

#[test]
fn maps_with_non_string_keys_are_sorted_too() {
    let one: HashMap<(u8, String), Vec<u8>> = (0..20u8)
        .map(|i| ((i % 3, i.to_string()), vec![i]))
        .collect();
    let two: HashMap<(u8, String), Vec<u8>> = (0..20u8)
        .rev()
        .map(|i| ((i % 3, i.to_string()), vec![i]))
        .collect();
    assert_eq!(key(&one), key(&two));
    let three: HashMap<u64, ()> = (0..50).map(|i| (i * 7919, ())).collect();
    let four: HashMap<u64, ()> = (0..50).rev().map(|i| (i * 7919, ())).collect();
    assert_eq!(key(&three), key(&four));
}

// ---------------------------------------------------------------------------
// 4. Stable format.

#[test]
fn keys_have_the_documented_format() {
    assert_eq!(key(&("Task", 3)), r#"["4:Taski3;]"#);
    assert_eq!(key(&()), "u");
    assert_eq!(key(&None::<u8>), "n");
    assert_eq!(key(&Some(1u8)), "si1;");
    assert_eq!(key(&Some(None::<u8>)), "sn");
    assert_eq!(key(&true), "T");
    assert_eq!(key(&false), "F");
    assert_eq!(key(&-5i32), "i-5;");
    assert_eq!(key(&u128::MAX), "i340282366920938463463374607431768211455;");
    assert_eq!(key(&1.0f64), "f1.0;");
    assert_eq!(key(&-0.0f64), "f-0.0;");
    assert_eq!(key(&0.1f64), "f0.1;");
    assert_eq!(key(&1e300f64), "f1e300;");
    assert_eq!(key(&f64::INFINITY), "finf;");
    assert_eq!(key(&f64::NAN), "fNaN;");
    assert_eq!(key(&"héllo"), "\"6:héllo");
    assert_eq!(key(&""), "\"0:");
    assert_eq!(key(&'x'), "\"1:x");
    assert_eq!(key(&ByteBuf(vec![0xde, 0xad, 0x01])), "b3:dead01");
    assert_eq!(key(&Vec::<u8>::new()), "[]");
    assert_eq!(key(&vec![Vec::<u8>::new()]), "[[]]");
    assert_eq!(key(&Point { x: 1, y: 2 }), r#"r5:Point{"1:xi1;"1:yi2;}"#);
    let map: HashMap<&str, u32> = [("y", 2), ("x", 1)].into();
    assert_eq!(key(&map), r#"{"1:xi1;"1:yi2;}"#);
    let reversed = Entries(vec![("y", 2), ("x", 1)]);
    assert_eq!(key(&reversed), r#"{"1:xi1;"1:yi2;}"#);
    assert_eq!(key(&BTreeMap::<u8, u8>::new()), "{}");
    assert_eq!(key(&Unit), "c4:Unit");
    assert_eq!(key(&Wrap(7)), "w4:Wrapi7;");
    assert_eq!(key(&Pair(1, 2)), "t4:Pair[i1;i2;]");
    assert_eq!(key(&Shape::Empty), "v5:Shape5:Empty");
    assert_eq!(key(&Shape::Circle(5)), "V5:Shape6:Circlei5;");
    assert_eq!(key(&Shape::Rect(1, 2)), "x5:Shape4:Rect[i1;i2;]");
    assert_eq!(
        key(&Shape::Boxed { x: 1, y: 2 }),
        r#"y5:Shape5:Boxed{"1:xi1;"1:yi2;}"#
    );
    assert_eq!(
        key(&(Some("a:b"), vec![1.5f32], ())),
        r#"[s"3:a:b[f1.5;]u]"#
    );
}

#[test]
fn integer_and_length_edges_have_the_documented_format() {
    for (value, text) in [
        (0i128, "0"),
        (-1, "-1"),
        (i128::from(i64::MIN), "-9223372036854775808"),
        (i128::from(u64::MAX), "18446744073709551615"),
        (i128::from(u64::MAX) + 1, "18446744073709551616"),
        (10_000_000_000_000_000_000, "10000000000000000000"),
        (20_000_000_000_000_000_000, "20000000000000000000"),
        (i128::MAX, "170141183460469231731687303715884105727"),
        (i128::MIN, "-170141183460469231731687303715884105728"),
    ] {
        assert_eq!(key(&value), format!("i{text};"));
    }
    assert_eq!(key(&u64::MAX), "i18446744073709551615;");
    assert_eq!(key(&0u8), "i0;");
    assert_eq!(key(&i8::MIN), "i-128;");
    let long = "z".repeat(1234);
    assert_eq!(key(&long), format!("\"1234:{long}"));
    let bytes = ByteBuf(vec![0xab; 100]);
    assert_eq!(key(&bytes), format!("b100:{}", "ab".repeat(100)));
    assert_eq!(key(&ByteBuf(vec![])), "b0:");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn integers_strings_and_bytes_match_the_grammar(
        small in any::<i64>(),
        unsigned in any::<u64>(),
        wide in any::<i128>(),
        wide_unsigned in any::<u128>(),
        text in ".{0,40}",
        bytes in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        prop_assert_eq!(key(&small), format!("i{small};"));
        prop_assert_eq!(key(&unsigned), format!("i{unsigned};"));
        prop_assert_eq!(key(&wide), format!("i{wide};"));
        prop_assert_eq!(key(&wide_unsigned), format!("i{wide_unsigned};"));
        prop_assert_eq!(key(&(small as i32)), format!("i{};", small as i32));
        prop_assert_eq!(key(&(unsigned as u16)), format!("i{};", unsigned as u16));
        prop_assert_eq!(key(&text), format!("\"{}:{}", text.len(), text));
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert_eq!(key(&ByteBuf(bytes.clone())), format!("b{}:{}", bytes.len(), hex));
    }
}

// ---------------------------------------------------------------------------
// Errors and the trait.

struct Refuses;

impl Serialize for Refuses {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refused to serialise"))
    }
}

#[test]
fn a_failing_serialize_is_a_key_error() {
    for result in [
        ObjectKeyMaker.key(&Refuses),
        ObjectKeyMaker.key(&(1, Refuses)),
        ObjectKeyMaker.key(&vec![Some(Refuses)]),
        ObjectKeyMaker.key(&BTreeMap::from([(1, Refuses)])),
    ] {
        match result {
            Err(Error::Key { reason }) => assert_eq!(reason, "refused to serialise"),
            other => panic!("expected a key error, got {other:?}"),
        }
    }
    let error = ObjectKeyMaker.key(&Refuses).expect_err("fails");
    assert_eq!(error.to_string(), "cannot make a key: refused to serialise");
}

// ---------------------------------------------------------------------------
// 5. StringKeyMaker and key_into.

struct Task {
    id: u32,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Task#{}", self.id)
    }
}

#[test]
fn string_key_maker_uses_display() {
    assert_eq!(StringKeyMaker.key(&42).expect("key"), "42");
    assert_eq!(StringKeyMaker.key("a:b").expect("key"), "a:b");
    assert_eq!(StringKeyMaker.key(&1.5).expect("key"), "1.5");
    assert_eq!(StringKeyMaker.key(&'c').expect("key"), "c");
    assert_eq!(StringKeyMaker.key(&Task { id: 3 }).expect("key"), "Task#3");
    // Readable, not unambiguous, as documented.
    assert_eq!(
        StringKeyMaker.key("1").expect("key"),
        StringKeyMaker.key(&1).expect("key")
    );
}

#[test]
fn key_into_appends() {
    let mut out = String::from("prefix/");
    StringKeyMaker.key_into(&42, &mut out).expect("key");
    assert_eq!(out, "prefix/42");
    StringKeyMaker
        .key_into(&Task { id: 9 }, &mut out)
        .expect("key");
    assert_eq!(out, "prefix/42Task#9");

    let mut out = String::from("f:");
    ObjectKeyMaker
        .key_into(&("Task", 3), &mut out)
        .expect("key");
    assert_eq!(out, r#"f:["4:Taski3;]"#);
    ObjectKeyMaker.key_into(&None::<u8>, &mut out).expect("key");
    assert_eq!(out, r#"f:["4:Taski3;]n"#);
    // Map entries are encoded apart and appended sorted after the prefix.
    let mut out = String::from("m:");
    let map: HashMap<&str, u8> = [("b", 2), ("a", 1)].into();
    ObjectKeyMaker.key_into(&map, &mut out).expect("key");
    assert_eq!(out, r#"m:{"1:ai1;"1:bi2;}"#);
    let mut out = String::from("m:");
    let reversed = Entries(vec![("b", 2u8), ("a", 1)]);
    ObjectKeyMaker.key_into(&reversed, &mut out).expect("key");
    assert_eq!(out, r#"m:{"1:ai1;"1:bi2;}"#);

    // The default key_into of a key maker that only has key().
    struct Upper;
    impl KeyMaker<str> for Upper {
        fn key(&self, item: &str) -> Result<String> {
            Ok(item.to_uppercase())
        }
    }
    let mut out = String::from("x-");
    Upper.key_into("abc", &mut out).expect("key");
    assert_eq!(out, "x-ABC");
    // Key makers work as trait objects.
    let makers: [&dyn KeyMaker<u32>; 2] = [&StringKeyMaker, &ObjectKeyMaker];
    let keys: Vec<String> = makers.iter().map(|m| m.key(&5).expect("key")).collect();
    assert_eq!(keys, ["5", "i5;"]);
}
