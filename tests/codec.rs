//! Codecs and `Serialised`: round trips, garbage input, oversize length
//! prefixes (with a counting allocator to prove nothing huge is allocated),
//! the bincode size limit and stale entries.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::codec::{
    BINCODE_DEPTH_LIMIT, Bincode, Cbor, Codec, DEFAULT_BINCODE_LIMIT, FnCodec, Json, LimitedBincode,
};
use layercache::{Cache, CacheExt, Error, MemoryCache, Result, Serialised};
use proptest::prelude::*;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

// ---------------------------------------------------------------------------
// A global allocator that records the largest single request per thread, so
// concurrent tests cannot disturb a measurement.

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| {
        if size > largest.get() {
            largest.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the largest single allocation request
/// this thread made meanwhile, and how long it took.
fn measured<R>(f: impl FnOnce() -> R) -> (R, usize, Duration) {
    LARGEST.with(|largest| largest.set(0));
    let start = Instant::now();
    let result = f();
    let elapsed = start.elapsed();
    (result, LARGEST.with(Cell::get), elapsed)
}

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// Values.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    label: String,
    weight: f32,
    flags: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u64,
    name: String,
    delta: i64,
    ratio: f64,
    active: bool,
    nickname: Option<String>,
    parent: Option<u32>,
    tags: Vec<String>,
    scores: Vec<i32>,
    inner: Inner,
    attrs: BTreeMap<String, i16>,
    letter: char,
}

fn sample() -> Record {
    Record {
        id: 42,
        name: "Ada Lovelace".into(),
        delta: -17,
        ratio: 0.125,
        active: true,
        nickname: Some("ada".into()),
        parent: Some(7),
        tags: vec!["math".into(), "engine".into()],
        scores: vec![3, -1, 1_000_000],
        inner: Inner {
            label: "nested".into(),
            weight: 2.5,
            flags: vec![true, false],
        },
        attrs: [("a".to_string(), 1i16), ("b".to_string(), -2)].into(),
        letter: 'x',
    }
}

fn edge() -> Record {
    Record {
        id: u64::MAX,
        name: String::new(),
        delta: i64::MIN,
        ratio: -1.0e-7,
        active: false,
        nickname: Some(String::new()),
        parent: None,
        tags: vec![String::new(), "ünïcødé ✓ 😀".into(), "\0\n\"\\".into()],
        scores: vec![i32::MIN, i32::MAX, 0],
        inner: Inner {
            label: "日本語".into(),
            weight: -0.0,
            flags: vec![],
        },
        attrs: [(String::new(), i16::MIN), ("ключ".to_string(), i16::MAX)].into(),
        letter: '😀',
    }
}

fn empty() -> Record {
    Record {
        id: 0,
        name: String::new(),
        delta: 0,
        ratio: 0.0,
        active: false,
        nickname: None,
        parent: None,
        tags: vec![],
        scores: vec![],
        inner: Inner {
            label: String::new(),
            weight: 0.0,
            flags: vec![],
        },
        attrs: BTreeMap::new(),
        letter: '\0',
    }
}

/// An `FnCodec`: JSON behind a version tag, with its own error name.
fn versioned<V: Serialize + DeserializeOwned>() -> impl Codec<V> {
    FnCodec::new(
        "codec-a",
        |value: &V| {
            let mut bytes = b"v1:".to_vec();
            bytes.extend(Json.encode(value)?);
            Ok(bytes)
        },
        |bytes: &[u8]| match bytes.strip_prefix(b"v1:") {
            Some(rest) => Json.decode(rest),
            None => Err(Error::Decode {
                codec: "v1",
                source: "missing version tag".into(),
            }),
        },
    )
}

/// `codec.decode(bytes)` as a `T`.
fn dec<T>(codec: &dyn Codec<T>, bytes: &[u8]) -> Result<T> {
    codec.decode(bytes)
}

/// Asserts `result` is an `Error::Decode` from `codec`; returns its message.
#[track_caller]
fn decode_error<T: Debug>(result: Result<T>, codec: &str) -> String {
    match result {
        Err(Error::Decode { codec: got, source }) => {
            assert_eq!(got, codec, "wrong codec name in {source}");
            source.to_string()
        }
        other => panic!("expected a {codec} decode error, got {other:?}"),
    }
}

fn round_trip<X: Codec<Record>>(codec: &X, value: &Record) {
    let bytes = codec.encode(value).expect("encodes");
    let back = codec.decode(&bytes).expect("decodes");
    assert_eq!(&back, value, "{codec:?}");
    // Deterministic: encoding twice gives the same bytes.
    assert_eq!(codec.encode(&back).expect("encodes"), bytes, "{codec:?}");
}

// ---------------------------------------------------------------------------
// 1. Round trips.

#[test]
fn round_trips_through_every_codec() {
    let fn_codec = versioned::<Record>();
    for value in [sample(), edge(), empty()] {
        round_trip(&Bincode::new(), &value);
        round_trip(&Cbor, &value);
        round_trip(&Json, &value);
        round_trip(&fn_codec, &value);
        round_trip(&LimitedBincode::<4096>::new(), &value);
    }
    // -0.0 survives as -0.0, not as 0.0.
    let bytes = Bincode::new().encode(&edge()).expect("encodes");
    let back: Record = Bincode::new().decode(&bytes).expect("decodes");
    assert!(back.inner.weight.is_sign_negative());
    let bytes = Cbor.encode(&edge()).expect("encodes");
    let back: Record = Cbor.decode(&bytes).expect("decodes");
    assert!(back.inner.weight.is_sign_negative());
}

#[test]
fn codecs_produce_their_documented_formats() {
    assert_eq!(
        Json.encode(&("Task".to_string(), 3)).expect("encodes"),
        br#"["Task",3]"#
    );
    // bincode standard: varint length, then the bytes; small ints in one byte.
    assert_eq!(
        Bincode::new()
            .encode(&("ab".to_string(), 3u32))
            .expect("encodes"),
        [2, b'a', b'b', 3]
    );
    assert_eq!(
        Bincode::new().encode(&300u32).expect("encodes"),
        [251, 0x2c, 0x01]
    );
    // CBOR: array(2), text(2) "ab", unsigned(3).
    assert_eq!(
        Cbor.encode(&("ab".to_string(), 3u32)).expect("encodes"),
        [0x82, 0x62, b'a', b'b', 0x03]
    );
    assert_eq!(
        versioned::<Vec<u8>>().encode(&vec![1, 2]).expect("encodes"),
        b"v1:[1,2]"
    );
}

#[test]
fn fn_codec_runs_its_closures_and_is_named() {
    let upper = FnCodec::new(
        "upper",
        |s: &String| Ok(s.to_uppercase().into_bytes()),
        |b: &[u8]| Ok(String::from_utf8_lossy(b).into_owned()),
    );
    assert_eq!(upper.encode(&"abc".to_string()).expect("encodes"), b"ABC");
    assert_eq!(upper.decode(b"xyz").expect("decodes"), "xyz");
    assert_eq!(format!("{upper:?}"), "FnCodec(upper)");
    assert_eq!(Codec::<String>::format(&upper), "upper");
    // The closures' errors come back unchanged.
    let failing = FnCodec::new(
        "failing",
        |_: &u8| {
            Err(Error::Encode {
                codec: "mine",
                source: "no".into(),
            })
        },
        |_: &[u8]| -> Result<u8> {
            Err(Error::Decode {
                codec: "mine",
                source: "never".into(),
            })
        },
    );
    assert!(matches!(
        failing.encode(&1),
        Err(Error::Encode { codec: "mine", .. })
    ));
    assert_eq!(decode_error(failing.decode(b"1"), "mine"), "never");
}

#[test]
fn codecs_work_through_references_and_arcs() {
    let arc: Arc<dyn Codec<Record>> = Arc::new(Cbor);
    let bytes = arc.encode(&sample()).expect("encodes");
    assert_eq!(arc.decode(&bytes).expect("decodes"), sample());
    let by_ref = &Json;
    let bytes = Codec::<Record>::encode(&by_ref, &sample()).expect("encodes");
    assert_eq!(
        Codec::<Record>::decode(&by_ref, &bytes).expect("decodes"),
        sample()
    );
}

fn arb_record() -> impl Strategy<Value = Record> {
    // Floats that every codec, JSON included, carries exactly.
    let float = (-1_000_000i32..1_000_000).prop_map(|n| f64::from(n) / 64.0);
    (
        any::<u64>(),
        ".{0,12}",
        any::<i64>(),
        float,
        any::<bool>(),
        proptest::option::of(".{0,6}"),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(".{0,6}", 0..4),
        proptest::collection::vec(any::<i32>(), 0..6),
        (
            ".{0,6}",
            -1000i16..1000,
            proptest::collection::vec(any::<bool>(), 0..4),
        ),
        proptest::collection::btree_map(".{0,4}", any::<i16>(), 0..4),
        any::<char>(),
    )
        .prop_map(
            |(
                id,
                name,
                delta,
                ratio,
                active,
                nickname,
                parent,
                tags,
                scores,
                inner,
                attrs,
                letter,
            )| {
                Record {
                    id,
                    name,
                    delta,
                    ratio,
                    active,
                    nickname,
                    parent,
                    tags,
                    scores,
                    inner: Inner {
                        label: inner.0,
                        weight: f32::from(inner.1) / 4.0,
                        flags: inner.2,
                    },
                    attrs,
                    letter,
                }
            },
        )
}

// ---------------------------------------------------------------------------
// 2. Garbage.

/// Every strict prefix of `bytes` and `bytes` plus junk fail to decode.
fn assert_truncations_and_trailers_fail<X: Codec<Record>>(codec: &X, name: &str, value: &Record) {
    let bytes = codec.encode(value).expect("encodes");
    for len in 0..bytes.len() {
        let result: Result<Record> = codec.decode(&bytes[..len]);
        decode_error(result, name);
    }
    for junk in [&b"x"[..], &[0u8], &[0xff, 0xff], b"}]"] {
        let mut longer = bytes.clone();
        longer.extend_from_slice(junk);
        let message = decode_error(codec.decode(&longer), name);
        assert!(!message.is_empty());
    }
}

#[test]
fn truncated_and_extended_encodings_are_decode_errors() {
    for value in [sample(), edge(), empty()] {
        assert_truncations_and_trailers_fail(&Bincode::new(), "bincode", &value);
        assert_truncations_and_trailers_fail(&Cbor, "cbor", &value);
        assert_truncations_and_trailers_fail(&Json, "json", &value);
    }
    // The trailing-byte check names how many were left over.
    let mut bytes = Bincode::new().encode(&sample()).expect("encodes");
    bytes.extend_from_slice(&[1, 2, 3]);
    assert!(
        decode_error(dec::<Record>(&Bincode::new(), &bytes), "bincode")
            .contains("3 trailing bytes"),
    );
    let mut bytes = Cbor.encode(&sample()).expect("encodes");
    bytes.extend_from_slice(&[1, 2]);
    assert!(decode_error(dec::<Record>(&Cbor, &bytes), "cbor").contains("2 trailing bytes"));
}

#[test]
fn empty_and_wrong_type_input_are_decode_errors() {
    decode_error(dec::<Record>(&Bincode::new(), b""), "bincode");
    decode_error(dec::<Record>(&Cbor, b""), "cbor");
    decode_error(dec::<Record>(&Json, b""), "json");
    decode_error(versioned::<Record>().decode(b""), "v1");
    decode_error(dec::<u64>(&Bincode::new(), b""), "bincode");
    decode_error(dec::<String>(&Cbor, b""), "cbor");
    decode_error(dec::<u64>(&Json, b"   "), "json");
    // Well-formed, but not the type asked for.
    decode_error(dec::<Record>(&Json, br#"{"id":1}"#), "json");
    decode_error(dec::<u64>(&Json, br#""text""#), "json");
    decode_error(
        dec::<u64>(&Cbor, &Cbor.encode(&"text".to_string()).expect("encodes")),
        "cbor",
    );
    decode_error(
        dec::<String>(&Bincode::new(), &[0xff, 0xfe, 0xfd]),
        "bincode",
    );
    // Invalid UTF-8 in a string.
    decode_error(dec::<String>(&Bincode::new(), &[2, 0xc3, 0x28]), "bincode");
    decode_error(dec::<String>(&Cbor, &[0x62, 0xc3, 0x28]), "cbor");
    decode_error(dec::<String>(&Json, b"\"\xc3\x28\""), "json");
    // An invalid char and an invalid bool.
    decode_error(dec::<bool>(&Bincode::new(), &[2]), "bincode");
    decode_error(
        dec::<char>(&Bincode::new(), &[252, 0x00, 0xd8, 0x00, 0x00]),
        "bincode",
    );
}

/// Decoding `bytes` as `T` never panics; a failure is a `Decode` from `name`.
fn decode_any<T: DeserializeOwned + Debug, X: Codec<T>>(codec: &X, name: &str, bytes: &[u8]) {
    if let Err(error) = codec.decode(bytes) {
        match error {
            Error::Decode { codec, .. } => assert_eq!(codec, name),
            other => panic!("{name}: expected a decode error, got {other:?}"),
        }
    }
}

fn decode_everything<X>(codec: &X, name: &str, bytes: &[u8])
where
    X: Codec<Record>
        + Codec<String>
        + Codec<u64>
        + Codec<Vec<u64>>
        + Codec<Vec<String>>
        + Codec<HashMap<String, Vec<i32>>>
        + Codec<(bool, char, f64)>
        + Codec<Option<Box<Record>>>,
{
    decode_any::<Record, _>(codec, name, bytes);
    decode_any::<String, _>(codec, name, bytes);
    decode_any::<u64, _>(codec, name, bytes);
    decode_any::<Vec<u64>, _>(codec, name, bytes);
    decode_any::<Vec<String>, _>(codec, name, bytes);
    decode_any::<HashMap<String, Vec<i32>>, _>(codec, name, bytes);
    decode_any::<(bool, char, f64), _>(codec, name, bytes);
    decode_any::<Option<Box<Record>>, _>(codec, name, bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        decode_everything(&Bincode::new(), "bincode", &bytes);
        decode_everything(&Cbor, "cbor", &bytes);
        decode_everything(&Json, "json", &bytes);
    }

    #[test]
    fn random_bytes_after_a_plausible_header_never_panic(
        header in prop::sample::select(vec![
            vec![0x9b], vec![0x7b], vec![0xbb], vec![0x5b], vec![253], vec![252], vec![251],
            b"[".to_vec(), b"{\"id\":".to_vec(),
        ]),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut bytes = header;
        bytes.extend(tail);
        decode_everything(&Bincode::new(), "bincode", &bytes);
        decode_everything(&Cbor, "cbor", &bytes);
        decode_everything(&Json, "json", &bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_records_round_trip_and_truncate_cleanly(value in arb_record()) {
        round_trip(&Bincode::new(), &value);
        round_trip(&Cbor, &value);
        round_trip(&Json, &value);
        round_trip(&versioned::<Record>(), &value);
        assert_truncations_and_trailers_fail(&Bincode::new(), "bincode", &value);
        assert_truncations_and_trailers_fail(&Cbor, "cbor", &value);
        assert_truncations_and_trailers_fail(&Json, "json", &value);
    }
}

// ---------------------------------------------------------------------------
// 3. Oversize length prefixes.

fn bincode_u64_prefix(len: u64, tail: &[u8]) -> Vec<u8> {
    let mut bytes = vec![253];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(tail);
    bytes
}

fn cbor_header(major: u8, len: u64, tail: &[u8]) -> Vec<u8> {
    let mut bytes = vec![(major << 5) | 27];
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(tail);
    bytes
}

/// Decodes `bytes` as `T` and checks it fails as `name`, quickly, with no
/// allocation anywhere near what the prefix claims.
#[track_caller]
fn assert_rejected_cheaply<T: DeserializeOwned + Debug>(
    codec: &dyn Codec<T>,
    name: &str,
    what: &str,
    bytes: &[u8],
) {
    let (result, largest, elapsed) = measured(|| codec.decode(bytes));
    decode_error(result, name);
    assert!(
        largest < 64 * MIB,
        "{name} {what}: allocated {largest} bytes at once"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "{name} {what}: took {elapsed:?}"
    );
}

#[test]
fn oversize_length_prefixes_are_rejected_without_allocating() {
    // The meter works: a real 4 MiB string is seen.
    let big = "x".repeat(4 * MIB);
    let bytes = Bincode::new().encode(&big).expect("encodes");
    let (back, largest, _) = measured(|| dec::<String>(&Bincode::new(), &bytes));
    assert_eq!(back.expect("decodes").len(), 4 * MIB);
    assert!(largest >= 4 * MIB, "meter saw only {largest} bytes");
    drop(bytes);

    let bincode = Bincode::new();
    let huge = [
        u64::MAX,
        1 << 40,
        1 << 32,
        (DEFAULT_BINCODE_LIMIT as u64) + 1,
    ];
    for len in huge {
        let what = format!("length {len}");
        let bytes = bincode_u64_prefix(len, b"abc");
        assert_rejected_cheaply::<String>(&bincode, "bincode", &what, &bytes);
        assert_rejected_cheaply::<Vec<u8>>(&bincode, "bincode", &what, &bytes);
        assert_rejected_cheaply::<Vec<u64>>(&bincode, "bincode", &what, &bytes);
        assert_rejected_cheaply::<Vec<String>>(&bincode, "bincode", &what, &bytes);
        assert_rejected_cheaply::<HashMap<String, u64>>(&bincode, "bincode", &what, &bytes);
        // A record whose `name` (after `id`) claims the length.
        let mut record = vec![0u8];
        record.extend(bincode_u64_prefix(len, b"abc"));
        assert_rejected_cheaply::<Record>(&bincode, "bincode", &what, &record);
    }
    // A u32 length prefix (tag 252) claiming 4 GiB.
    let mut bytes = vec![252];
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(b"abc");
    assert_rejected_cheaply::<String>(&bincode, "bincode", "u32::MAX", &bytes);
    assert_rejected_cheaply::<Vec<u64>>(&bincode, "bincode", "u32::MAX", &bytes);

    for len in [1u64 << 40, u64::MAX, 1 << 33] {
        let what = format!("length {len}");
        // Text string, byte string, array and map headers.
        assert_rejected_cheaply::<String>(&Cbor, "cbor", &what, &cbor_header(3, len, b"abc"));
        assert_rejected_cheaply::<Vec<u8>>(&Cbor, "cbor", &what, &cbor_header(2, len, b"abc"));
        assert_rejected_cheaply::<Vec<u64>>(&Cbor, "cbor", &what, &cbor_header(4, len, &[1, 2]));
        assert_rejected_cheaply::<Vec<String>>(&Cbor, "cbor", &what, &cbor_header(4, len, &[]));
        assert_rejected_cheaply::<HashMap<String, u64>>(
            &Cbor,
            "cbor",
            &what,
            &cbor_header(5, len, &[0x61, b'a', 1]),
        );
        // Nested: an array of one string that claims the length.
        let mut nested = vec![0x81];
        nested.extend(cbor_header(3, len, b"abc"));
        assert_rejected_cheaply::<Vec<String>>(&Cbor, "cbor", &what, &nested);
    }
}

// ---------------------------------------------------------------------------
// Deep nesting: an error, not a stack overflow (which would abort the whole
// process, so each codec is tried in a child process).

#[derive(Debug, Serialize, Deserialize)]
struct Nest(Vec<Nest>);

const CHILD_ENV: &str = "LAYERCACHE_TEST_DEEP_NESTING_CODEC";
const DEPTH: usize = 1_000_000;

/// Does nothing unless run as the child of `deep_nesting_*`.
#[test]
fn deep_nesting_child() {
    let Ok(codec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (bytes, codec, name): (Vec<u8>, Box<dyn Codec<Nest>>, &str) = match codec.as_str() {
        "bincode" => {
            let mut bytes = vec![1u8; DEPTH];
            bytes.push(0);
            (bytes, Box::new(Bincode::new()), "bincode")
        }
        "cbor" => {
            let mut bytes = vec![0x81u8; DEPTH];
            bytes.push(0x80);
            (bytes, Box::new(Cbor), "cbor")
        }
        "json" => {
            let mut bytes = vec![b'['; DEPTH];
            bytes.extend(std::iter::repeat_n(b']', DEPTH));
            (bytes, Box::new(Json), "json")
        }
        other => panic!("unknown codec {other}"),
    };
    decode_error(codec.decode(&bytes), name);
}

fn run_deep_nesting_child(codec: &str) {
    let exe = std::env::current_exe().expect("test binary");
    let output = std::process::Command::new(exe)
        .args(["--exact", "deep_nesting_child", "--test-threads=1"])
        .env(CHILD_ENV, codec)
        .output()
        .expect("child runs");
    assert!(
        output.status.success(),
        "{codec}: decoding {DEPTH} nested sequences crashed: {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // A filter that matches no test also exits 0: check the child ran it.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(" 1 passed;"),
        "{codec}: the child ran no test:\n{stdout}"
    );
}

#[test]
fn deep_nesting_is_a_decode_error_cbor_and_json() {
    // A modest depth works in-process.
    let mut bytes = vec![0x81u8; 10];
    bytes.push(0x80);
    let nest: Nest = Cbor.decode(&bytes).expect("decodes");
    assert_eq!(nest.0.len(), 1);
    run_deep_nesting_child("cbor");
    run_deep_nesting_child("json");
}

#[test]
fn deep_nesting_is_a_decode_error_bincode() {
    run_deep_nesting_child("bincode");
}

/// `depth` sequences nested in one another, as bincode writes them.
fn bincode_nested_seqs(depth: usize) -> Vec<u8> {
    let mut bytes = vec![1u8; depth - 1];
    bytes.push(0);
    bytes
}

#[test]
fn bincode_depth_limit_counts_every_kind_of_nesting() {
    let codec = Bincode::new();
    // Nest is a newtype around a Vec: two levels each, so 64 of them fit.
    let fits = bincode_nested_seqs(BINCODE_DEPTH_LIMIT / 2);
    let nest: Nest = dec(&codec, &fits).expect("64 Nests, 128 levels");
    assert_eq!(nest.0.len(), 1);
    let message = decode_error(
        dec::<Nest>(&codec, &bincode_nested_seqs(BINCODE_DEPTH_LIMIT / 2 + 1)),
        "bincode",
    );
    assert_eq!(message, "nesting deeper than 128 levels");
    // Options, boxed structs, enums and maps count too.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Link {
        next: Option<Box<Link>>,
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum List {
        Cons(u8, Box<List>),
        Nil,
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Tree(BTreeMap<u8, Tree>);
    // Link: struct + Option per link; the last one's `None` nests nothing.
    let mut link = vec![1u8; BINCODE_DEPTH_LIMIT / 2 - 1];
    link.push(0);
    let value: Link = dec(&codec, &link).expect("64 links");
    assert_eq!(codec.encode(&value).expect("encodes"), link);
    link.insert(0, 1);
    decode_error(dec::<Link>(&codec, &link), "bincode");
    // List: enum + tuple variant per Cons; Nil is one more enum level.
    let mut list = [0u8, 7].repeat(BINCODE_DEPTH_LIMIT / 2 - 1);
    list.push(1);
    let value: List = dec(&codec, &list).expect("63 conses and a nil");
    assert_eq!(codec.encode(&value).expect("encodes"), list);
    list.splice(0..0, [0, 7]);
    decode_error(dec::<List>(&codec, &list), "bincode");
    // Tree: newtype + map per level.
    let mut tree = [1u8, 9].repeat(BINCODE_DEPTH_LIMIT / 2 - 1);
    tree.push(0);
    let value: Tree = dec(&codec, &tree).expect("64 maps");
    assert_eq!(codec.encode(&value).expect("encodes"), tree);
    tree.splice(0..0, [1, 9]);
    decode_error(dec::<Tree>(&codec, &tree), "bincode");
}

// ---------------------------------------------------------------------------
// 4. LimitedBincode.

#[test]
fn limited_bincode_refuses_to_encode_over_its_limit() {
    let small = LimitedBincode::<64>::new();
    match small.encode(&vec![7u8; 100]) {
        Err(Error::TooLarge { what, size, limit }) => {
            assert_eq!((what, size, limit), ("encoded value", 101, 64));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let error = small.encode(&vec![7u8; 100]).expect_err("too large");
    assert_eq!(
        error.to_string(),
        "encoded value of 101 bytes exceeds the limit of 64 bytes"
    );
    // 65 bytes: one over.
    assert!(matches!(
        small.encode(&"y".repeat(64)),
        Err(Error::TooLarge { size: 65, .. })
    ));
    // Under the limit: encodes and decodes.
    let bytes = small.encode(&vec![7u8; 10]).expect("encodes");
    assert_eq!(bytes.len(), 11);
    assert_eq!(small.decode(&bytes).ok(), Some(vec![7u8; 10]));
    let bytes = small.encode(&"z".repeat(40)).expect("encodes");
    assert_eq!(small.decode(&bytes).ok(), Some("z".repeat(40)));
    assert_eq!(LimitedBincode::<64>::LIMIT, 64);
    assert_eq!(Bincode::LIMIT, 16 * MIB);
    assert_eq!(DEFAULT_BINCODE_LIMIT, 16 * MIB);
    assert_eq!(format!("{small:?}"), "LimitedBincode<64>");
    assert_eq!(format!("{:?}", Bincode::new()), "Bincode");
}

#[test]
fn limited_bincode_refuses_to_decode_over_its_limit() {
    // What the default codec wrote, a small limit will not read.
    let bytes = Bincode::new().encode(&vec![7u8; 100]).expect("encodes");
    let message = decode_error(
        dec::<Vec<u8>>(&LimitedBincode::<64>::new(), &bytes),
        "bincode",
    );
    assert!(!message.is_empty());
    let bytes = Bincode::new().encode(&"s".repeat(100)).expect("encodes");
    decode_error(
        dec::<String>(&LimitedBincode::<64>::new(), &bytes),
        "bincode",
    );
    // The default limit: 17 MiB claimed by a well-formed prefix is refused
    // even though the bytes are not there.
    let bytes = bincode_u64_prefix(17 * MIB as u64, b"abc");
    decode_error(dec::<Vec<u8>>(&Bincode::new(), &bytes), "bincode");
}

/// Asserts `codec` refuses `value` as `TooLarge` because decoding it would
/// claim more than the limit, though its encoding of `encoded` bytes fits.
#[track_caller]
fn assert_refused_for_its_decoded_size<V, X>(codec: &X, value: &V, encoded: usize)
where
    V: Debug,
    X: Codec<V>,
{
    match codec.encode(value) {
        Err(Error::TooLarge { what, size, limit }) => {
            assert_eq!(what, "value decoded from an encoding");
            assert_eq!(size, encoded, "the encoded length");
            assert!(
                encoded <= limit,
                "{encoded} bytes should pass the cheap check"
            );
        }
        other => panic!("{codec:?}: expected TooLarge, got {other:?}"),
    }
}

/// If `codec` encodes `value`, it decodes the bytes back to `value`.
#[track_caller]
fn assert_encodes_only_what_decodes<V, X>(codec: &X, value: &V) -> bool
where
    V: Debug + PartialEq,
    X: Codec<V>,
{
    match codec.encode(value) {
        Ok(bytes) => {
            let back = codec
                .decode(&bytes)
                .unwrap_or_else(|e| panic!("{codec:?} encoded {value:?} but cannot read it: {e}"));
            assert_eq!(&back, value, "{codec:?}");
            true
        }
        Err(Error::TooLarge { .. }) => false,
        Err(other) => panic!("{codec:?}: unexpected {other:?}"),
    }
}

#[test]
fn limited_bincode_decodes_everything_it_encodes() {
    // The doc promises "nothing is stored that could not be read back": a
    // value whose encoding fits but whose decoding claims more than the
    // limit (8 bytes per length and per u64) is refused at encode.
    let small = LimitedBincode::<64>::new();

    // 64 bytes encoded (1 length byte + 63), but 8 + 63 = 71 claimed.
    assert_refused_for_its_decoded_size(&small, &"t".repeat(63), 64);
    // 21 bytes encoded; 8 + 20 * 8 = 168 claimed.
    assert_refused_for_its_decoded_size(&small, &vec![0u64; 20], 21);
    let error = small.encode(&vec![0u64; 20]).expect_err("too large");
    assert_eq!(
        error.to_string(),
        "value decoded from an encoding of 21 bytes exceeds the limit of 64 bytes"
    );

    // At the default 16 MiB: 2.2 M zeros encode to 2.2 MB but claim
    // 17.6 MB, so Serialised refuses them rather than storing a value that
    // every read would drop as stale.
    let numbers = vec![0u64; 2_200_000];
    let encoded = 1 + 4 + numbers.len(); // u32 length prefix (tag 252), 1 byte per zero
    assert_refused_for_its_decoded_size(&Bincode::new(), &numbers, encoded);
    let cache = Serialised::unversioned(Bytes::new(), Bincode::new());
    assert!(matches!(
        cache.set(k("zeros"), numbers),
        Err(Error::TooLarge { .. })
    ));
    assert!(cache.inner().is_empty(), "nothing stored");
    // Within the limit (8 + 2 M * 8 = 16 000 008 <= 16 MiB) they round-trip.
    let numbers = vec![0u64; 2_000_000];
    cache
        .set(k("zeros"), numbers.clone())
        .expect("fits the limit");
    assert_eq!(cache.get(&k("zeros")).expect("get"), Some(numbers));
    assert_eq!(cache.stale(), 0);

    // Whatever encodes decodes, across sizes on both sides of the limit.
    let (mut encoded, mut refused) = (0, 0);
    for len in 0..80 {
        for fits in [
            assert_encodes_only_what_decodes(&small, &"s".repeat(len)),
            assert_encodes_only_what_decodes(&small, &vec![u64::MAX; len / 8]),
            assert_encodes_only_what_decodes(&small, &vec![0u64; len / 4]),
            assert_encodes_only_what_decodes(&small, &vec![true; len]),
            assert_encodes_only_what_decodes(&small, &vec![Some('é'); len / 3]),
            assert_encodes_only_what_decodes(&small, &vec![vec![1u8; len / 10]; len / 10]),
        ] {
            if fits {
                encoded += 1;
            } else {
                refused += 1;
            }
        }
    }
    assert!(
        encoded > 0 && refused > 0,
        "{encoded} encoded, {refused} refused"
    );
}

#[test]
fn limited_bincode_encodes_and_decodes_values_at_its_limit() {
    let small = LimitedBincode::<64>::new();
    // Exactly at the limit: 8 (length) + 7 * 8 = 64 claimed, 8 bytes encoded.
    let bytes = small.encode(&vec![0u64; 7]).expect("claims exactly 64");
    assert_eq!(bytes.len(), 8);
    assert_eq!(dec::<Vec<u64>>(&small, &bytes).ok(), Some(vec![0u64; 7]));
    // One u64 more is 72.
    assert_refused_for_its_decoded_size(&small, &vec![0u64; 8], 9);
    // u64::MAX takes 9 bytes encoded but still claims 8: 8 + 6 * 8 = 56
    // claimed, 1 + 6 * 9 = 55 encoded.
    let max = vec![u64::MAX; 6];
    let bytes = small.encode(&max).expect("fits");
    assert_eq!(bytes.len(), 55);
    assert_eq!(dec::<Vec<u64>>(&small, &bytes).ok(), Some(max));
    // Strings: 8 + 56 = 64 claimed fits; 57 bytes do not.
    let text = "x".repeat(56);
    let bytes = small.encode(&text).expect("claims exactly 64");
    assert_eq!(bytes.len(), 57);
    assert_eq!(dec::<String>(&small, &bytes).ok(), Some(text));
    assert_refused_for_its_decoded_size(&small, &"x".repeat(57), 58);
    // A record right at its limit round-trips. It claims 4093 bytes: its tags
    // 8 + 15 * (8 + 100), its scores 8 + 584 * 4 and 121 for the rest of the
    // sample, from 2156 bytes encoded.
    let mut record = sample();
    record.tags = vec!["t".repeat(100); 15];
    record.scores = vec![0; 584];
    let exact = LimitedBincode::<4093>::new();
    let bytes = exact.encode(&record).expect("fits exactly");
    assert_eq!(bytes.len(), 2156);
    assert_eq!(exact.decode(&bytes).ok(), Some(record.clone()));
    assert_refused_for_its_decoded_size(&LimitedBincode::<4092>::new(), &record, 2156);
    decode_error(
        dec::<Record>(&LimitedBincode::<4092>::new(), &bytes),
        "bincode",
    );
    // Four bytes more in memory, one more encoded.
    record.scores.push(0);
    assert_refused_for_its_decoded_size(&LimitedBincode::<4096>::new(), &record, 2157);
}

#[test]
fn serialised_limited_bincode_refuses_at_set_what_it_could_not_read() {
    let cache: Serialised<MemoryCache<String, Vec<u8>>, LimitedBincode<64>> =
        Serialised::unversioned(MemoryCache::new(), LimitedBincode::<64>::new());
    // 21 bytes encoded, 168 claimed: an error, and nothing stored.
    match cache.set(k("zeros"), vec![0u64; 20]) {
        Err(Error::TooLarge { what, size, limit }) => {
            assert_eq!(
                (what, size, limit),
                ("value decoded from an encoding", 21, 64)
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(cache.inner().is_empty());
    assert_eq!(cache.get(&k("zeros")).expect("get"), None::<Vec<u64>>);
    assert_eq!(cache.stale(), 0);
    // A failed set leaves an earlier value in place.
    cache.set(k("zeros"), vec![0u64; 7]).expect("fits");
    assert!(cache.set(k("zeros"), vec![0u64; 8]).is_err());
    assert_eq!(cache.get(&k("zeros")).expect("get"), Some(vec![0u64; 7]));
    assert_eq!(cache.inner().len(), 1);
    assert_eq!(cache.stale(), 0);
}

#[test]
fn bincode_refuses_to_encode_values_nested_past_its_depth_limit() {
    // Encoding checks the value reads back, so a value too deep to decode
    // is an encode error, not a stored entry that reads as stale.
    fn chain(trees: usize) -> Nest {
        (1..trees).fold(Nest(vec![]), |inner, _| Nest(vec![inner]))
    }
    let codec = Bincode::new();
    // Two levels per Nest: the newtype and its Vec.
    let bytes = codec
        .encode(&chain(BINCODE_DEPTH_LIMIT / 2))
        .expect("at the limit");
    let back: Nest = codec.decode(&bytes).expect("decodes");
    assert_eq!(codec.encode(&back).expect("encodes"), bytes);
    match codec.encode(&chain(BINCODE_DEPTH_LIMIT / 2 + 1)) {
        Err(Error::Encode { codec, source }) => {
            assert_eq!(codec, "bincode");
            assert!(
                source
                    .to_string()
                    .contains("nesting deeper than 128 levels"),
                "{source}"
            );
        }
        other => panic!("expected an encode error, got {other:?}"),
    }
    let cache = Serialised::unversioned(Bytes::new(), Bincode::new());
    assert!(cache.set(k("deep"), chain(100)).is_err());
    assert!(cache.inner().is_empty());
}

// ---------------------------------------------------------------------------
// 5. Serialised.

type Bytes = MemoryCache<String, Vec<u8>>;

fn k(key: &str) -> String {
    key.to_string()
}

fn serialised_round_trip<X: Codec<Record> + Debug>(codec: X, debug: &str) {
    let cache = Serialised::unversioned(Bytes::new(), codec);
    assert_eq!(
        format!("{cache:?}"),
        format!("Serialised<{debug}>(Memory(0 entries))")
    );
    for (key, value) in [("a", sample()), ("b", edge()), ("c", empty())] {
        cache.set(k(key), value.clone()).expect("set");
        // The bytes underneath are the codec's encoding.
        let stored = cache.inner().get(&k(key)).expect("get").expect("stored");
        assert_eq!(stored, cache.codec().encode(&value).expect("encodes"));
        assert_eq!(cache.get(&k(key)).expect("get"), Some(value));
    }
    assert_eq!(
        format!("{cache:?}"),
        format!("Serialised<{debug}>(Memory(3 entries))")
    );
    let mut keys = cache.keys().expect("keys");
    keys.sort();
    assert_eq!(keys, ["a", "b", "c"]);
    assert_eq!(cache.remove(&k("a")).expect("remove"), Some(sample()));
    assert_eq!(cache.remove(&k("a")).expect("remove"), None);
    assert_eq!(cache.get(&k("a")).expect("get"), None);
    assert_eq!(cache.stale(), 0);
    cache.clear().expect("clear");
    assert!(cache.inner().is_empty());
}

#[test]
fn serialised_round_trips_through_every_codec() {
    serialised_round_trip(Bincode::new(), "Bincode");
    serialised_round_trip(LimitedBincode::<4096>::new(), "LimitedBincode<4096>");
    serialised_round_trip(Cbor, "Cbor");
    serialised_round_trip(Json, "Json");
    serialised_round_trip(versioned::<Record>(), "FnCodec(codec-a)");
}

#[test]
fn serialised_debug_matches_the_doc() {
    let cache = Serialised::new(Bytes::new(), Json);
    cache.set(k("k"), vec!["x".to_string()]).expect("set");
    assert_eq!(
        cache.inner().get(&k("k")).expect("get"),
        Some(br#"["x"]"#.to_vec())
    );
    assert_eq!(format!("{cache:?}"), "Serialised<Json>(Memory(1 entry))");
    let via_ext = Bytes::new().serialised(Cbor);
    assert_eq!(
        format!("{via_ext:?}"),
        "Serialised<Cbor>(Memory(0 entries))"
    );
}

#[test]
fn stale_entry_is_a_miss_that_is_kept_and_counted() {
    let cache = Serialised::new(Bytes::new(), Json);
    assert!(!cache.is_strict());
    cache.inner().set(k("bad"), b"{oops".to_vec()).expect("set");
    cache
        .inner()
        .set(k("good"), Json.encode(&sample()).expect("encodes"))
        .expect("set");
    let value: Option<Record> = cache.get(&k("bad")).expect("a miss, not an error");
    assert_eq!(value, None);
    assert_eq!(cache.stale(), 1);
    assert_eq!(
        cache.inner().get(&k("bad")).expect("get"),
        Some(b"{oops".to_vec()),
        "a failed read removes nothing"
    );
    // Each read of it is a counted miss.
    let value: Option<Record> = cache.get(&k("bad")).expect("miss");
    assert_eq!(value, None);
    assert_eq!(cache.stale(), 2);
    // Other entries are untouched.
    assert_eq!(cache.get(&k("good")).expect("get"), Some(sample()));
    assert_eq!(cache.inner().len(), 2);
    // The next set replaces it.
    cache.set(k("bad"), empty()).expect("set");
    assert_eq!(cache.get(&k("bad")).expect("get"), Some(empty()));
    assert_eq!(cache.stale(), 2);
}

#[test]
fn schema_change_reads_as_stale_for_every_codec() {
    // Written as a Record, read as another type over the same bytes.
    fn check<X>(codec: X)
    where
        X: Codec<Record> + Codec<(u64, String)> + Codec<Vec<u32>> + Clone + Debug,
    {
        let bytes = Arc::new(Bytes::new());
        let writer = Serialised::unversioned(bytes.clone(), codec.clone());
        writer.set(k("r"), sample()).expect("set");
        let tuple_reader = Serialised::unversioned(bytes.clone(), codec.clone());
        let read: Option<(u64, String)> = tuple_reader.get(&k("r")).expect("stale is a miss");
        assert_eq!(read, None, "{codec:?}");
        assert_eq!(tuple_reader.stale(), 1, "{codec:?}");
        assert_eq!(bytes.len(), 1, "{codec:?}: a failed read removes nothing");
        writer.set(k("r"), sample()).expect("set");
        let vec_reader = Serialised::unversioned(bytes.clone(), codec.clone());
        let read: Option<Vec<u32>> = vec_reader.get(&k("r")).expect("stale is a miss");
        assert_eq!(read, None, "{codec:?}");
        assert_eq!(vec_reader.stale(), 1, "{codec:?}");
        assert_eq!(bytes.len(), 1, "{codec:?}: a failed read removes nothing");
    }
    check(Bincode::new());
    check(Cbor);
    check(Json);
}

#[test]
fn strict_mode_returns_the_decode_error_and_keeps_the_entry() {
    let cache = Serialised::new(Bytes::new(), Cbor).strict(true);
    assert!(cache.is_strict());
    cache.inner().set(k("bad"), vec![0xff, 0x00]).expect("set");
    for _ in 0..2 {
        let result: Result<Option<Record>> = cache.get(&k("bad"));
        decode_error(result, "cbor");
        assert_eq!(
            cache.inner().get(&k("bad")).expect("get"),
            Some(vec![0xff, 0x00]),
            "entry kept"
        );
    }
    assert_eq!(cache.stale(), 0);
    // A miss is still a miss, and good entries read fine.
    assert_eq!(
        cache.get(&k("none")).expect("miss").map(|r: Record| r),
        None
    );
    cache.set(k("good"), sample()).expect("set");
    assert_eq!(cache.get(&k("good")).expect("get"), Some(sample()));
    // strict(false) switches back.
    let lenient = cache.strict(false);
    assert!(!lenient.is_strict());
    assert_eq!(
        lenient.get(&k("bad")).expect("miss").map(|r: Record| r),
        None
    );
    assert_eq!(lenient.stale(), 1);
    assert_eq!(
        lenient.inner().get(&k("bad")).expect("get"),
        Some(vec![0xff, 0x00]),
        "a failed read removes nothing"
    );
}

#[test]
fn remove_of_a_stale_entry() {
    // Lenient: removed, counted, answered as "nothing was there".
    let cache = Serialised::unversioned(Bytes::new(), Bincode::new());
    cache.inner().set(k("bad"), vec![0xff]).expect("set");
    let removed: Option<Record> = cache.remove(&k("bad")).expect("a miss");
    assert_eq!(removed, None);
    assert_eq!(cache.stale(), 1);
    assert!(cache.inner().is_empty());

    // Strict: removed, then the decode error is returned.
    let cache = Serialised::new(Bytes::new(), Json).strict(true);
    cache.inner().set(k("bad"), b"nope".to_vec()).expect("set");
    let result: Result<Option<Record>> = cache.remove(&k("bad"));
    decode_error(result, "json");
    assert!(cache.inner().is_empty(), "entry removed before the error");
    assert_eq!(cache.stale(), 0);
    let again: Option<Record> = cache.remove(&k("bad")).expect("gone");
    assert_eq!(again, None);
}

#[test]
fn set_of_a_value_over_the_limit_fails_and_stores_nothing() {
    let cache = Serialised::unversioned(Bytes::new(), LimitedBincode::<16>::new());
    assert!(matches!(
        cache.set(k("big"), "b".repeat(100)),
        Err(Error::TooLarge { .. })
    ));
    assert!(cache.inner().is_empty());
    cache.set(k("small"), "s".to_string()).expect("set");
    assert_eq!(cache.get(&k("small")).expect("get"), Some("s".to_string()));
    assert_eq!(
        format!("{cache:?}"),
        "Serialised<LimitedBincode<16>>(Memory(1 entry))"
    );
    let inner: Bytes = cache.into_inner();
    assert_eq!(inner.get(&k("small")).expect("get"), Some(vec![1, b's']));
}
