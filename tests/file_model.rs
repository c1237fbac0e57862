//! FileCache against a `HashMap` model: random sequences of writes (some
//! with a time to live), reads, clears, compactions, the clock moving,
//! reopens, second handles and torn tails left by a writer that died,
//! compared with the model after every step; with the default segment size
//! and with segments so small that most steps seal one.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use std::sync::Arc;
use std::time::Duration;

use layercache::{Cache, CacheExt, Clock, FileCache, ManualClock, Timestamp};
use proptest::prelude::*;
use tempfile::TempDir;

use support::crc32;

const KEYS: u8 = 10;
const H_COMMITTED: usize = 32;

fn key_name(n: u8) -> String {
    format!("k{n}")
}

/// What a writer that died left past the committed end.
#[derive(Debug, Clone)]
enum Tail {
    /// Random bytes.
    Garbage(Vec<u8>),
    /// The first `cut` bytes of a valid put record (a `pwrite` cut short).
    TornRecord { key: u8, value: Vec<u8>, cut: usize },
    /// A whole valid put record, its committed length never advanced.
    WholeRecord { key: u8, value: Vec<u8> },
}

#[derive(Debug, Clone)]
enum Op {
    Set(u8, Vec<u8>),
    /// Sets with a time to live of this many seconds.
    SetTtl(u8, Vec<u8>, u8),
    /// Moves the clock on this many seconds.
    Advance(u8),
    Remove(u8),
    Get(u8),
    Keys,
    Len,
    Clear,
    /// Removes the keys whose number is `r` modulo `m`.
    ClearMatching(u8, u8),
    Compact,
    /// Drops every handle and opens the path again.
    Reopen,
    /// Opens a second handle on the path; the gets that follow use it.
    ReopenOther,
    /// Appends a torn tail past the committed end while the cache is open,
    /// then reopens when `reopen`.
    CrashTail {
        tail: Tail,
        reopen: bool,
    },
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..300)
}

fn tail() -> impl Strategy<Value = Tail> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..200).prop_map(Tail::Garbage),
        (0..KEYS, value(), 1..400usize).prop_map(|(key, value, cut)| Tail::TornRecord {
            key,
            value,
            cut
        }),
        (0..KEYS, value()).prop_map(|(key, value)| Tail::WholeRecord { key, value }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..KEYS, value()).prop_map(|(k, v)| Op::Set(k, v)),
        3 => (0..KEYS, value(), 1..5u8).prop_map(|(k, v, t)| Op::SetTtl(k, v, t)),
        2 => (1..4u8).prop_map(Op::Advance),
        3 => (0..KEYS).prop_map(Op::Remove),
        5 => (0..KEYS).prop_map(Op::Get),
        1 => Just(Op::Keys),
        1 => Just(Op::Len),
        1 => Just(Op::Clear),
        2 => (1..4u8).prop_flat_map(|m| (Just(m), 0..m)).prop_map(|(m, r)| Op::ClearMatching(m, r)),
        1 => Just(Op::Compact),
        2 => Just(Op::Reopen),
        2 => Just(Op::ReopenOther),
        2 => (tail(), any::<bool>()).prop_map(|(tail, reopen)| Op::CrashTail { tail, reopen }),
    ]
}

/// A put record as the format lays it out (`docs/file-format.md`), for a
/// file salted with `salt`, to be written at file offset `at`.
fn put_record(key: &[u8], value: &[u8], salt: u32, at: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"LCR2");
    out.extend_from_slice(&[0; 4]);
    out.push(1);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(key).to_le_bytes());
    out.extend_from_slice(&crc32(value).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&u64::MAX.to_le_bytes()); // expires: never
    out.extend_from_slice(&u64::MAX.to_le_bytes()); // fresh until: always
    let mut covered = salt.to_le_bytes().to_vec();
    covered.extend_from_slice(&at.to_le_bytes());
    covered.extend_from_slice(&out[8..48]);
    let header_crc = crc32(&covered);
    out[4..8].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out.resize(out.len().div_ceil(8) * 8, 0);
    out
}

/// The record salt of the file at `path` (header bytes 24..28).
fn salt_of(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    u32::from_le_bytes(bytes[24..28].try_into().unwrap())
}

fn tail_bytes(tail: &Tail, salt: u32, at: u64) -> Vec<u8> {
    match tail {
        Tail::Garbage(bytes) => bytes.clone(),
        Tail::TornRecord { key, value, cut } => {
            let record = put_record(key_name(*key).as_bytes(), value, salt, at);
            let cut = (*cut).min(record.len() - 1).max(1);
            record[..cut].to_vec()
        }
        Tail::WholeRecord { key, value } => put_record(key_name(*key).as_bytes(), value, salt, at),
    }
}

fn committed_on_disk(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    u64::from_le_bytes(bytes[H_COMMITTED..H_COMMITTED + 8].try_into().unwrap())
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn get(cache: &FileCache, key: &str) -> Option<Vec<u8>> {
    cache.get(&key.to_string()).unwrap()
}

fn keys(cache: &FileCache) -> BTreeSet<String> {
    cache.keys().unwrap().into_iter().collect()
}

/// Each key's value and expiry.
type Model = HashMap<String, (Vec<u8>, Option<Timestamp>)>;

/// The entries of `model` that have not expired at `now`.
fn live(model: &Model, now: Timestamp) -> HashMap<String, Vec<u8>> {
    model
        .iter()
        .filter(|(_, (_, expires))| expires.is_none_or(|at| now < at))
        .map(|(key, (value, _))| (key.clone(), value.clone()))
        .collect()
}

/// The cache holds exactly the model's live entries (`len` counts the
/// expired ones not yet dropped: at least the live ones, at most all).
fn check_state(
    cache: &FileCache,
    model: &Model,
    now: Timestamp,
    step: usize,
) -> Result<(), TestCaseError> {
    let alive = live(model, now);
    let expected: BTreeSet<String> = alive.keys().cloned().collect();
    prop_assert_eq!(keys(cache), expected, "step {}: keys", step);
    let len = cache.len().unwrap();
    prop_assert!(
        alive.len() <= len && len <= model.len(),
        "step {}: len {} for {} live of {}",
        step,
        len,
        alive.len(),
        model.len()
    );
    for n in 0..KEYS {
        let key = key_name(n);
        prop_assert_eq!(
            get(cache, &key),
            alive.get(&key).cloned(),
            "step {}: {}",
            step,
            key
        );
    }
    Ok(())
}

fn run(ops: &[Op], segment: Option<u64>) -> Result<(), TestCaseError> {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.lc");
    let clock = Arc::new(ManualClock::new());
    let open = || {
        let builder = FileCache::builder(&path).clock(clock.clone());
        match segment {
            Some(bytes) => builder.segment_size(bytes),
            None => builder,
        }
        .open()
        .unwrap()
    };
    let mut cache = open();
    let mut other: Option<FileCache> = None;
    let mut model: Model = HashMap::new();
    for (step, op) in ops.iter().enumerate() {
        let now = clock.now();
        match op {
            Op::Set(k, v) => {
                let key = key_name(*k);
                cache.set(key.clone(), v.clone()).unwrap();
                model.insert(key, (v.clone(), None));
            }
            Op::SetTtl(k, v, ttl) => {
                let key = key_name(*k);
                let ttl = Duration::from_secs(u64::from(*ttl));
                cache.set_with_ttl(key.clone(), v.clone(), ttl).unwrap();
                model.insert(key, (v.clone(), Some(now + ttl)));
            }
            Op::Advance(secs) => clock.advance(Duration::from_secs(u64::from(*secs))),
            Op::Remove(k) => {
                let key = key_name(*k);
                let old = cache.remove(&key).unwrap();
                let expected = live(&model, now).remove(&key);
                model.remove(&key);
                prop_assert_eq!(old, expected, "step {}: remove {}", step, key);
            }
            Op::Get(k) => {
                let key = key_name(*k);
                let through = other.as_ref().unwrap_or(&cache);
                prop_assert_eq!(
                    get(through, &key),
                    live(&model, now).get(&key).cloned(),
                    "step {}: get {}",
                    step,
                    key
                );
            }
            Op::Keys => {
                let expected: BTreeSet<String> = live(&model, now).keys().cloned().collect();
                prop_assert_eq!(keys(&cache), expected, "step {}", step);
            }
            Op::Len => {
                let len = cache.len().unwrap();
                prop_assert!(len >= live(&model, now).len() && len <= model.len());
                prop_assert_eq!(cache.is_empty().unwrap(), len == 0);
            }
            Op::Clear => {
                cache.clear().unwrap();
                model.clear();
            }
            Op::ClearMatching(m, r) => {
                let matches = |key: &String| key[1..].parse::<u8>().unwrap() % m == *r;
                let removed = cache.clear_matching(&matches).unwrap();
                let before = live(&model, now).len();
                // Only live keys are listed, so only they are cleared.
                model.retain(|key, (_, expires)| {
                    !(matches(key) && expires.is_none_or(|at| now < at))
                });
                let after = live(&model, now).len();
                prop_assert_eq!(removed, before - after, "step {}: count", step);
            }
            Op::Compact => {
                let generation = cache.generation().unwrap();
                cache.compact().unwrap();
                prop_assert_eq!(cache.generation().unwrap(), generation + 1);
                prop_assert_eq!(cache.garbage_bytes().unwrap(), 0);
                // Compaction drops what has expired: len is exact now.
                model = model
                    .into_iter()
                    .filter(|(_, (_, expires))| expires.is_none_or(|at| now < at))
                    .collect();
                prop_assert_eq!(cache.len().unwrap(), model.len());
            }
            Op::Reopen => {
                other = None;
                drop(cache);
                cache = open();
                prop_assert_eq!(file_len(&path), committed_on_disk(&path));
            }
            Op::ReopenOther => {
                other = Some(open());
            }
            Op::CrashTail { tail, reopen } => {
                // A writer's pwrite lands at the committed end (over what an
                // earlier torn write may have left there).
                let end = committed_on_disk(&path);
                prop_assert!(file_len(&path) >= end, "step {}", step);
                let file = OpenOptions::new().write(true).open(&path).unwrap();
                file.write_all_at(&tail_bytes(tail, salt_of(&path), end), end)
                    .unwrap();
                drop(file);
                check_state(&cache, &model, now, step)?;
                if let Some(other) = &other {
                    check_state(other, &model, now, step)?;
                }
                if *reopen {
                    other = None;
                    drop(cache);
                    cache = open();
                    prop_assert_eq!(file_len(&path), end, "step {}: tail cut", step);
                    prop_assert_eq!(committed_on_disk(&path), end);
                }
            }
        }
        check_state(&cache, &model, clock.now(), step)?;
    }
    let now = clock.now();
    for handle in std::iter::once(&cache).chain(other.as_ref()) {
        let report = handle.verify().unwrap();
        prop_assert!(report.damage.is_empty(), "{:?}", report);
        check_state(handle, &model, now, ops.len())?;
    }
    drop(other);
    drop(cache);
    let cache = open();
    check_state(&cache, &model, now, ops.len())?;
    prop_assert!(cache.verify().unwrap().damage.is_empty());
    let contents: BTreeMap<String, Vec<u8>> = keys(&cache)
        .into_iter()
        .map(|k| {
            let v = get(&cache, &k).unwrap();
            (k, v)
        })
        .collect();
    prop_assert_eq!(
        contents,
        live(&model, now).into_iter().collect::<BTreeMap<_, _>>()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn file_cache_matches_a_hashmap(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, None)?;
    }

    /// Segments of 8 KiB: most steps seal one, so every operation runs
    /// across sealed segments, and reopening finds them.
    #[test]
    fn file_cache_in_small_segments_matches_a_hashmap(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, Some(8192))?;
    }
}

#[test]
fn the_test_encoder_writes_records_the_cache_reads() {
    // A whole record appended and committed by hand is read like one the
    // cache wrote: the tails above are realistic.
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("encoder.lc");
    let cache = FileCache::open(&path).unwrap();
    cache.set("k1".to_string(), b"one".to_vec()).unwrap();
    drop(cache);
    let end = file_len(&path);
    let record = put_record(b"k2", b"two, by hand", salt_of(&path), end);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&record, end).unwrap();
    file.write_all_at(
        &(end + record.len() as u64).to_le_bytes(),
        H_COMMITTED as u64,
    )
    .unwrap();
    drop(file);
    let cache = FileCache::open(&path).unwrap();
    assert_eq!(get(&cache, "k2"), Some(b"two, by hand".to_vec()));
    assert_eq!(get(&cache, "k1"), Some(b"one".to_vec()));
    assert!(cache.verify().unwrap().damage.is_empty());
}
