//! FileCache against damaged files: torn tails at every byte, bytes past
//! the committed end, random byte flips in records and header, flipped keys
//! of overwritten entries, and damage made while a cache is open.
//!
//! The layout these tests poke at is `docs/file-format.md`: a 4096-byte
//! header (committed length at offset 32), then 8-aligned records with a
//! 48-byte header (`LCR2`, header crc, kind, key length at 12, value length
//! at 16, key crc, value crc, expiry, freshness), the key, the value and
//! zero padding.

mod support;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use layercache::{Cache, Error, FileCache};
use tempfile::TempDir;

const HEADER: usize = 4096;
const H_COMMITTED: usize = 32;
const RECORD_HEADER: usize = 48;

// ---------------------------------------------------------------------------
// Helpers.

/// One record of a healthy file, as laid out on disk.
#[derive(Debug, Clone)]
struct Rec {
    start: usize,
    kind: u8,
    key: Vec<u8>,
    value_len: usize,
    len: usize,
}

impl Rec {
    fn end(&self) -> usize {
        self.start + self.len
    }

    fn header_range(&self) -> Range<usize> {
        self.start..self.start + RECORD_HEADER
    }

    fn key_range(&self) -> Range<usize> {
        let at = self.start + RECORD_HEADER;
        at..at + self.key.len()
    }

    fn value_range(&self) -> Range<usize> {
        let at = self.key_range().end;
        at..at + self.value_len
    }

    fn key_str(&self) -> String {
        String::from_utf8(self.key.clone()).unwrap()
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn committed(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[H_COMMITTED..H_COMMITTED + 8].try_into().unwrap()) as usize
}

fn set_committed(bytes: &mut [u8], to: usize) {
    bytes[H_COMMITTED..H_COMMITTED + 8].copy_from_slice(&(to as u64).to_le_bytes());
}

/// The records of a healthy file, up to its committed length, checked to
/// tile the records region exactly.
fn records(bytes: &[u8]) -> Vec<Rec> {
    let end = committed(bytes);
    assert!(end <= bytes.len(), "committed {end} past {}", bytes.len());
    let mut out = Vec::new();
    let mut at = HEADER;
    while at < end {
        assert_eq!(&bytes[at..at + 4], b"LCR2", "record magic at {at}");
        let key_len = u32_at(bytes, at + 12) as usize;
        let value_len = u32_at(bytes, at + 16) as usize;
        let len = (RECORD_HEADER + key_len + value_len).div_ceil(8) * 8;
        let key_at = at + RECORD_HEADER;
        out.push(Rec {
            start: at,
            kind: bytes[at + 8],
            key: bytes[key_at..key_at + key_len].to_vec(),
            value_len,
            len,
        });
        at += len;
    }
    assert_eq!(at, end, "records do not end at the committed length");
    out
}

/// The record holding byte `offset`.
fn record_at(recs: &[Rec], offset: usize) -> &Rec {
    recs.iter()
        .find(|r| (r.start..r.end()).contains(&offset))
        .unwrap_or_else(|| panic!("no record holds byte {offset}"))
}

fn get(cache: &FileCache, key: &str) -> Option<Vec<u8>> {
    cache.get(&key.to_string()).unwrap()
}

fn set(cache: &FileCache, key: &str, value: &[u8]) {
    cache.set(key.to_string(), value.to_vec()).unwrap();
}

fn remove(cache: &FileCache, key: &str) -> Option<Vec<u8>> {
    cache.remove(&key.to_string()).unwrap()
}

fn keys(cache: &FileCache) -> Vec<String> {
    let mut keys = cache.keys().unwrap();
    keys.sort();
    keys
}

fn file_len(path: &Path) -> usize {
    std::fs::metadata(path).unwrap().len() as usize
}

/// Overwrites bytes of the file in place, as damage from outside would
/// (`pwrite`, same inode, no truncation).
fn poke(path: &Path, at: usize, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, at as u64).unwrap();
}

/// Writes `clean` to `path` with the byte at `offset` xored with `mask`.
fn write_flipped(path: &Path, clean: &[u8], offset: usize, mask: u8) {
    let mut bytes = clean.to_vec();
    bytes[offset] ^= mask;
    std::fs::write(path, &bytes).unwrap();
}

/// A deterministic xorshift64 generator.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Never zero, and well mixed even for small seeds.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A byte mask that changes something.
    fn mask(&mut self) -> u8 {
        (self.below(255) + 1) as u8
    }
}

/// Asserts that every key in `expected` reads back exactly, that `len` and
/// `keys` agree, and that the file verifies clean.
fn assert_exactly(cache: &FileCache, expected: &BTreeMap<String, Vec<u8>>, context: &str) {
    for (key, value) in expected {
        assert_eq!(
            get(cache, key).as_deref(),
            Some(value.as_slice()),
            "{context}: key {key}"
        );
    }
    assert_eq!(
        keys(cache),
        expected.keys().cloned().collect::<Vec<_>>(),
        "{context}: keys"
    );
    assert_eq!(cache.len().unwrap(), expected.len(), "{context}: len");
    let report = cache.verify().unwrap();
    assert!(report.damage.is_empty(), "{context}: {report:?}");
    assert_eq!(report.live, expected.len() as u64, "{context}: live");
}

// ---------------------------------------------------------------------------
// 1. Truncation at every byte of the last record.

/// What the last record of the file does.
#[derive(Debug, Clone, Copy)]
enum Last {
    /// Overwrites an earlier key: a torn tail leaves the earlier value.
    Overwrite,
    /// A key never written before: a torn tail leaves it absent.
    NewKey,
    /// Removes an earlier key: a torn tail leaves the earlier value.
    Tombstone,
}

/// Values of assorted lengths, so records end at every padding offset.
fn truncation_value(n: usize, round: usize) -> Vec<u8> {
    let mut value = format!("value {n} of round {round}:").into_bytes();
    value.extend(std::iter::repeat_n(
        b'a' + (n % 26) as u8,
        (n * 3 + round) % 11,
    ));
    value
}

/// Writes the file for `last`; returns what every key must read after the
/// last record is torn off, the last record's key, and that key's value
/// before the last record.
fn write_truncation_file(path: &Path, last: Last) -> (BTreeMap<String, Vec<u8>>, String) {
    let cache = FileCache::open(path).unwrap();
    let mut model = BTreeMap::new();
    for n in 0..20 {
        let key = format!("k{n:02}");
        set(&cache, &key, &truncation_value(n, 0));
        model.insert(key, truncation_value(n, 0));
    }
    for n in [3, 7, 11] {
        let key = format!("k{n:02}");
        set(&cache, &key, &truncation_value(n, 1));
        model.insert(key, truncation_value(n, 1));
    }
    assert_eq!(remove(&cache, "k05"), Some(truncation_value(5, 0)));
    model.remove("k05");
    // `model` is now the state before the last record.
    let last_key = match last {
        Last::Overwrite => {
            set(&cache, "k11", b"the newest value of k11, torn off");
            "k11"
        }
        Last::NewKey => {
            set(&cache, "brand-new", b"a key that only the last record has");
            "brand-new"
        }
        Last::Tombstone => {
            assert_eq!(remove(&cache, "k07"), Some(truncation_value(7, 1)));
            "k07"
        }
    };
    (model, last_key.to_string())
}

fn truncation_case(last: Last) {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    let (before_last, last_key) = write_truncation_file(&source, last);
    let clean = std::fs::read(&source).unwrap();
    let recs = records(&clean);
    let last_rec = recs.last().unwrap().clone();
    assert_eq!(last_rec.key_str(), last_key);
    assert_eq!(
        last_rec.end(),
        clean.len(),
        "a closed file ends at its last record"
    );
    let boundaries: Vec<usize> = recs.iter().map(|r| r.start).collect();

    let path = dir.path().join("torn.lc");
    for cut in last_rec.start..clean.len() {
        // The header's committed length points past the cut (the OS lost
        // the tail after the header page reached the disk), or at the last
        // record's start (consistent with the cut).
        for (variant, committed_to) in [
            ("past the end", clean.len()),
            ("consistent", last_rec.start),
        ] {
            let context = format!("{last:?}, cut at {cut}, committed {variant}");
            let mut bytes = clean[..cut].to_vec();
            set_committed(&mut bytes, committed_to);
            std::fs::write(&path, &bytes).unwrap();

            let cache = FileCache::open(&path).unwrap_or_else(|e| panic!("{context}: {e}"));
            let len = file_len(&path);
            assert!(
                boundaries.contains(&len),
                "{context}: length {len} is not a record boundary"
            );
            assert_eq!(len, last_rec.start, "{context}: the torn record is cut");
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(
                committed(&on_disk),
                last_rec.start,
                "{context}: committed length"
            );
            assert_eq!(
                get(&cache, &last_key),
                before_last.get(&last_key).cloned(),
                "{context}"
            );
            assert_exactly(&cache, &before_last, &context);

            // The repaired file takes writes at the right place, and they
            // are there after reopening.
            set(&cache, &last_key, b"written after the repair");
            drop(cache);
            let cache = FileCache::open(&path).unwrap();
            let mut after = before_last.clone();
            after.insert(last_key.clone(), b"written after the repair".to_vec());
            assert_exactly(
                &cache,
                &after,
                &format!("{context}, after a write and reopen"),
            );
            assert_eq!(file_len(&path), committed(&std::fs::read(&path).unwrap()));
        }
    }
}

#[test]
fn truncation_at_every_byte_offset_of_the_last_record() {
    truncation_case(Last::Overwrite);
}

#[test]
fn truncation_at_every_byte_offset_of_a_last_record_with_a_new_key() {
    truncation_case(Last::NewKey);
}

#[test]
fn truncation_at_every_byte_offset_of_a_last_tombstone() {
    truncation_case(Last::Tombstone);
}

#[test]
fn a_file_cut_into_earlier_records_keeps_every_whole_record_before_the_cut() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    write_truncation_file(&source, Last::NewKey);
    let clean = std::fs::read(&source).unwrap();
    let recs = records(&clean);
    let path = dir.path().join("cut.lc");
    // Cut inside every record (a third of the way in), committed length
    // left pointing at the original end.
    for (i, rec) in recs.iter().enumerate() {
        let cut = rec.start + rec.len / 3;
        std::fs::write(&path, &clean[..cut]).unwrap();
        let cache = FileCache::open(&path).unwrap();
        assert_eq!(file_len(&path), rec.start, "cut in record {i}");
        // What the records before the cut say, replayed.
        let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for r in &recs[..i] {
            if r.kind == 1 {
                expected.insert(r.key_str(), clean[r.value_range()].to_vec());
            } else {
                expected.remove(&r.key_str());
            }
        }
        assert_exactly(&cache, &expected, &format!("cut in record {i}"));
    }
}

// ---------------------------------------------------------------------------
// 2. Bytes past the committed end.

#[test]
fn a_torn_tail_past_the_committed_length_is_cut_at_open() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    let (mut model, last_key) = write_truncation_file(&source, Last::Overwrite);
    model.insert(last_key, b"the newest value of k11, torn off".to_vec());
    let clean = std::fs::read(&source).unwrap();
    let recs = records(&clean);
    // An older record of k03 (round 0): if a copy of it past the committed
    // end were indexed, k03 would read its old value.
    let old_k03 = recs.iter().find(|r| r.key == b"k03").unwrap().clone();
    let whole = clean[old_k03.start..old_k03.end()].to_vec();
    let mut rng = XorShift::new(7);
    let mut tails: Vec<(String, Vec<u8>)> = vec![
        ("half a record".into(), whole[..whole.len() / 2].to_vec()),
        (
            "a record header only".into(),
            whole[..RECORD_HEADER].to_vec(),
        ),
        ("a whole record".into(), whole.clone()),
        (
            "a record and a half".into(),
            [&whole[..], &whole[..whole.len() / 2]].concat(),
        ),
        ("one byte".into(), vec![0x4c]),
        ("zeros".into(), vec![0; 4096]),
    ];
    for n in 0..20 {
        let len = 1 + rng.below(200);
        let garbage = (0..len).map(|_| rng.next() as u8).collect();
        tails.push((format!("garbage {n}"), garbage));
    }
    let path = dir.path().join("tail.lc");
    for (what, tail) in &tails {
        let bytes = [&clean[..], &tail[..]].concat();
        std::fs::write(&path, &bytes).unwrap();
        let cache = FileCache::open(&path).unwrap();
        assert_eq!(file_len(&path), clean.len(), "{what}: the tail is cut");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            clean,
            "{what}: only the tail changes"
        );
        assert_exactly(&cache, &model, what);
        // A write lands at the committed end and survives a reopen.
        set(&cache, "k03", b"after the tail");
        drop(cache);
        let cache = FileCache::open(&path).unwrap();
        let mut after = model.clone();
        after.insert("k03".into(), b"after the tail".to_vec());
        assert_exactly(&cache, &after, &format!("{what}, after a write"));
    }
}

#[test]
fn a_torn_tail_appended_while_a_cache_is_open_is_never_read() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("open-tail.lc");
    let cache = FileCache::open(&path).unwrap();
    set(&cache, "a", b"first");
    let clean = std::fs::read(&path).unwrap();
    let recs = records(&clean);
    // Another writer died after its pwrite of a record for "a", before it
    // advanced the committed length: a whole valid record past the end.
    let whole = clean[recs[0].start..recs[0].end()].to_vec();
    let mut forged = whole.clone();
    let value_at = recs[0].value_range().start - recs[0].start;
    forged[value_at] = b'F'; // value crc now fails: never served, either way
    poke(&path, clean.len(), &[&whole[..], &forged[..]].concat());
    assert_eq!(get(&cache, "a"), Some(b"first".to_vec()));
    assert_eq!(cache.len().unwrap(), 1);
    // The next write goes at the committed end, over the torn bytes.
    set(&cache, "b", b"second");
    assert_eq!(get(&cache, "a"), Some(b"first".to_vec()));
    assert_eq!(get(&cache, "b"), Some(b"second".to_vec()));
    drop(cache);
    let cache = FileCache::open(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), committed(&bytes));
    let model: BTreeMap<String, Vec<u8>> = [("a", "first"), ("b", "second")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    assert_exactly(&cache, &model, "after reopen");
}

// ---------------------------------------------------------------------------
// 3. Random byte flips.

/// 100 distinct values of lengths 0 to 63; none holds a record magic.
fn flip_value(n: usize) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    let mut value = format!("{n}=").into_bytes();
    value.extend((0..(n * 7) % 60).map(|i| b'a' + ((n + i) % 26) as u8));
    value
}

fn write_flip_file(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let cache = FileCache::open(path).unwrap();
    let mut model = BTreeMap::new();
    for n in 0..100 {
        let key = format!("key{n:03}");
        set(&cache, &key, &flip_value(n));
        model.insert(key, flip_value(n));
    }
    model
}

/// Which part of a record a byte is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Header,
    Key,
    Value,
    Padding,
}

fn part_of(rec: &Rec, offset: usize) -> Part {
    if rec.header_range().contains(&offset) {
        Part::Header
    } else if rec.key_range().contains(&offset) {
        Part::Key
    } else if rec.value_range().contains(&offset) {
        Part::Value
    } else {
        Part::Padding
    }
}

/// Reads every key of `model`: each must be exact or missing. Returns the
/// missing keys.
fn exact_or_missing(
    cache: &FileCache,
    model: &BTreeMap<String, Vec<u8>>,
    context: &str,
) -> Vec<String> {
    let mut missing = Vec::new();
    for (key, value) in model {
        match get(cache, key) {
            Some(got) => assert_eq!(&got, value, "{context}: key {key} read wrong bytes"),
            None => missing.push(key.clone()),
        }
    }
    missing
}

#[test]
fn random_byte_flips() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    let model = write_flip_file(&source);
    let clean = std::fs::read(&source).unwrap();
    let recs = records(&clean);
    let end = committed(&clean);
    let path = dir.path().join("flipped.lc");
    let mut parts_hit = BTreeMap::new();
    for seed in 1..=400u64 {
        let mut rng = XorShift::new(seed);
        let offset = HEADER + rng.below(end - HEADER);
        let mask = rng.mask();
        let rec = record_at(&recs, offset);
        let part = part_of(rec, offset);
        *parts_hit.entry(format!("{part:?}")).or_insert(0) += 1;
        let context = format!("seed {seed}: byte {offset} ^ {mask:#04x}, {part:?} of {rec:?}");
        write_flipped(&path, &clean, offset, mask);

        let cache = FileCache::open(&path).unwrap_or_else(|e| panic!("{context}: {e}"));
        let missing = exact_or_missing(&cache, &model, &context);
        let report = cache.verify().unwrap();
        if part == Part::Padding {
            assert!(missing.is_empty(), "{context}: {missing:?}");
        } else {
            // Exactly the damaged record's entry is lost, and verify says
            // where.
            assert_eq!(missing, vec![rec.key_str()], "{context}");
            assert!(!report.damage.is_empty(), "{context}: verify found nothing");
            assert_eq!(
                report.damage[0].offset as usize, rec.start,
                "{context}: {report:?}"
            );
        }
        assert!(missing.len() <= 2, "{context}: {missing:?}");
        if !missing.is_empty() {
            assert!(
                !report.damage.is_empty(),
                "{context}: missing {missing:?}, no damage"
            );
        }
        // Keys list only entries that can be read, or ones whose value is
        // damaged; never one that is not in the model.
        for key in keys(&cache) {
            assert!(model.contains_key(&key), "{context}: unknown key {key:?}");
        }

        if seed % 8 == 0 {
            // Compaction drops the damage and keeps everything else.
            cache.compact().unwrap();
            let mut survivors = model.clone();
            for key in &missing {
                survivors.remove(key);
            }
            assert_exactly(&cache, &survivors, &format!("{context}, compacted"));
            drop(cache);
            let cache = FileCache::open(&path).unwrap();
            assert_exactly(
                &cache,
                &survivors,
                &format!("{context}, compacted, reopened"),
            );
        }
    }
    // The seeds reach every part of a record.
    for part in ["Header", "Key", "Value", "Padding"] {
        assert!(parts_hit.contains_key(part), "{parts_hit:?}");
    }
}

#[test]
fn several_random_byte_flips_never_give_wrong_bytes() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    let model = write_flip_file(&source);
    let clean = std::fs::read(&source).unwrap();
    let end = committed(&clean);
    let path = dir.path().join("flipped.lc");
    for seed in 1000..1150u64 {
        let mut rng = XorShift::new(seed);
        let flips = 2 + rng.below(4);
        let mut bytes = clean.clone();
        let mut where_ = Vec::new();
        for _ in 0..flips {
            let offset = HEADER + rng.below(end - HEADER);
            let mask = rng.mask();
            bytes[offset] ^= mask;
            where_.push((offset, mask));
        }
        let context = format!("seed {seed}: flips {where_:?}");
        std::fs::write(&path, &bytes).unwrap();
        let cache = FileCache::open(&path).unwrap_or_else(|e| panic!("{context}: {e}"));
        let missing = exact_or_missing(&cache, &model, &context);
        // Each flip costs at most its record and, through a resync, the
        // record after it.
        assert!(missing.len() <= 2 * flips, "{context}: {missing:?}");
        let report = cache.verify().unwrap();
        if !missing.is_empty() {
            assert!(!report.damage.is_empty(), "{context}: missing {missing:?}");
        }
    }
}

fn assert_format_error_untouched(path: &Path, context: &str) {
    let before = std::fs::read(path).unwrap();
    match FileCache::open(path) {
        Err(err @ Error::Format { .. }) => {
            let Error::Format { path: named, .. } = &err else {
                unreachable!()
            };
            assert_eq!(named, path, "{context}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{context}: {err}"
            );
        }
        other => panic!("{context}: expected a format error, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "{context}: the file must be untouched"
    );
}

#[test]
fn a_flip_in_the_static_header_is_a_format_error_and_touches_nothing() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    write_flip_file(&source);
    let clean = std::fs::read(&source).unwrap();
    let path = dir.path().join("header.lc");
    let mut rng = XorShift::new(99);
    for offset in 0..28 {
        for mask in [0x01, 0x02, 0x10, 0x80, 0xff, rng.mask()] {
            let mut bytes = clean.clone();
            bytes[offset] ^= mask;
            // A tail past the committed end must survive too: a refused
            // file is not repaired.
            bytes.extend_from_slice(b"torn tail");
            std::fs::write(&path, &bytes).unwrap();
            assert_format_error_untouched(&path, &format!("byte {offset} ^ {mask:#04x}"));
        }
    }
}

// ---------------------------------------------------------------------------
// 4. A flipped key never lets an older value through.

/// Writes `victim` = "old value", other keys, then `last` for `victim`,
/// then more keys; returns the file's bytes, the model of the other keys
/// and the last `victim` record.
fn write_overwritten_key(
    path: &Path,
    last: Option<&[u8]>,
) -> (Vec<u8>, BTreeMap<String, Vec<u8>>, Rec) {
    let cache = FileCache::open(path).unwrap();
    let mut others = BTreeMap::new();
    set(&cache, "victim", b"old value of the victim");
    for n in 0..10 {
        let key = format!("other{n}");
        set(&cache, &key, key.as_bytes());
        others.insert(key.clone(), key.into_bytes());
    }
    match last {
        Some(value) => set(&cache, "victim", value),
        None => assert!(remove(&cache, "victim").is_some()),
    }
    for n in 10..20 {
        let key = format!("other{n}");
        set(&cache, &key, key.as_bytes());
        others.insert(key.clone(), key.into_bytes());
    }
    drop(cache);
    let bytes = std::fs::read(path).unwrap();
    let recs = records(&bytes);
    let last_victim = recs.iter().rfind(|r| r.key == b"victim").unwrap().clone();
    (bytes, others, last_victim)
}

fn assert_victim_missing(
    path: &Path,
    others: &BTreeMap<String, Vec<u8>>,
    rec: &Rec,
    context: &str,
) {
    let cache = FileCache::open(path).unwrap();
    assert_eq!(
        get(&cache, "victim"),
        None,
        "{context}: an older value came back"
    );
    for (key, value) in others {
        assert_eq!(get(&cache, key).as_ref(), Some(value), "{context}: {key}");
    }
    assert!(!keys(&cache).contains(&"victim".to_string()), "{context}");
    assert_eq!(cache.len().unwrap(), others.len(), "{context}");
    let report = cache.verify().unwrap();
    assert_eq!(report.damage.len(), 1, "{context}: {report:?}");
    assert_eq!(report.damage[0].offset as usize, rec.start, "{context}");
    // Compaction keeps it gone, and the file is clean afterwards.
    cache.compact().unwrap();
    assert_exactly(&cache, others, &format!("{context}, compacted"));
}

#[test]
fn a_flip_in_an_overwriting_records_key_does_not_serve_the_older_value() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    let (clean, others, rec) = write_overwritten_key(&source, Some(b"new value of the victim"));
    assert_eq!(rec.kind, 1);
    let path = dir.path().join("key.lc");
    for offset in rec.key_range() {
        for mask in [0x01, 0x20, 0xff] {
            write_flipped(&path, &clean, offset, mask);
            assert_victim_missing(
                &path,
                &others,
                &rec,
                &format!("key byte {offset} ^ {mask:#04x}"),
            );
        }
    }
}

#[test]
fn a_flip_in_a_tombstones_key_does_not_bring_the_removed_value_back() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    let (clean, others, rec) = write_overwritten_key(&source, None);
    assert_eq!(rec.kind, 2);
    let path = dir.path().join("tomb.lc");
    for offset in rec.key_range() {
        write_flipped(&path, &clean, offset, 0x04);
        assert_victim_missing(
            &path,
            &others,
            &rec,
            &format!("tombstone key byte {offset}"),
        );
    }
}

#[test]
fn a_key_flipped_into_another_existing_key_harms_neither_that_key_nor_leaks_the_old_value() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("twin.lc");
    {
        let cache = FileCache::open(&path).unwrap();
        set(&cache, "ka", b"ka old");
        set(&cache, "kb", b"kb value");
        set(&cache, "ka", b"ka new");
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let rec = records(&bytes).last().unwrap().clone();
    // "ka" becomes "kb" in the last record: a key that exists, with a
    // checksum that does not match.
    bytes[rec.key_range().start + 1] ^= b'a' ^ b'b';
    assert_eq!(&bytes[rec.key_range()], b"kb");
    std::fs::write(&path, &bytes).unwrap();
    let cache = FileCache::open(&path).unwrap();
    assert_eq!(get(&cache, "ka"), None);
    assert_eq!(get(&cache, "kb"), Some(b"kb value".to_vec()));
    assert_eq!(keys(&cache), vec!["kb".to_string()]);
}

#[test]
fn a_flip_in_an_overwriting_records_header_does_not_serve_the_older_value() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    let (clean, others, rec) = write_overwritten_key(&source, Some(b"new value of the victim"));
    let path = dir.path().join("header.lc");
    for offset in rec.header_range() {
        write_flipped(&path, &clean, offset, 0x10);
        assert_victim_missing(&path, &others, &rec, &format!("header byte {offset}"));
    }
}

#[test]
fn a_flip_in_a_tombstones_header_does_not_bring_the_removed_value_back() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    let (clean, others, rec) = write_overwritten_key(&source, None);
    let path = dir.path().join("tomb-header.lc");
    for offset in rec.header_range() {
        write_flipped(&path, &clean, offset, 0x10);
        assert_victim_missing(
            &path,
            &others,
            &rec,
            &format!("tombstone header byte {offset}"),
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Damage while a cache is open.

#[test]
fn damage_while_open_reads_as_missing_on_the_next_get() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("live.lc");
    let cache = FileCache::open(&path).unwrap();
    let mut model = BTreeMap::new();
    for n in 1..40 {
        let key = format!("key{n:03}");
        set(&cache, &key, &flip_value(n));
        model.insert(key, flip_value(n));
    }
    let clean = std::fs::read(&path).unwrap();
    let recs = records(&clean);
    for key in model.keys() {
        assert!(get(&cache, key).is_some());
    }
    let mut rng = XorShift::new(5);
    for rec in recs.iter().filter(|r| r.value_len > 0).step_by(3) {
        let key = rec.key_str();
        let offset = rec.value_range().start + rng.below(rec.value_len);
        let mask = rng.mask();
        poke(&path, offset, &[clean[offset] ^ mask]);
        assert_eq!(
            get(&cache, &key),
            None,
            "{key}: flipped byte {offset} served"
        );
        let report = cache.verify().unwrap();
        assert_eq!(report.damage.len(), 1, "{report:?}");
        assert_eq!(report.damage[0].offset as usize, rec.start);
        // Every other key is untouched.
        for (other, value) in model.iter().filter(|(k, _)| **k != key) {
            assert_eq!(get(&cache, other).as_ref(), Some(value), "{other}");
        }
        // The check is made on every read: repaired bytes read again.
        poke(&path, offset, &[clean[offset]]);
        assert_eq!(
            get(&cache, &key).as_ref(),
            model.get(&key),
            "{key} repaired"
        );
    }
    assert!(cache.verify().unwrap().damage.is_empty());
}

#[test]
fn damage_to_indexed_headers_and_keys_while_open_never_serves_wrong_bytes() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("live-headers.lc");
    let cache = FileCache::open(&path).unwrap();
    let mut model = BTreeMap::new();
    for n in 1..30 {
        let key = format!("key{n:03}");
        set(&cache, &key, &flip_value(n));
        model.insert(key, flip_value(n));
    }
    let clean = std::fs::read(&path).unwrap();
    let recs = records(&clean);
    let mut rng = XorShift::new(11);
    // Damage the header or the key of two records in three after they were
    // indexed: each read is exact or missing.
    let mut damaged_keys = Vec::new();
    for (n, rec) in recs.iter().enumerate().filter(|(n, _)| n % 3 != 0) {
        let range = if rng.below(2) == 0 || n == 1 {
            rec.header_range()
        } else {
            rec.key_range()
        };
        damaged_keys.push(rec.key_str());
        let offset = range.start + rng.below(range.len());
        poke(&path, offset, &[clean[offset] ^ rng.mask()]);
        exact_or_missing(&cache, &model, &format!("after damage at {offset}"));
    }
    let missing = exact_or_missing(&cache, &model, "headers and keys flipped while open");
    // Exactly the entries whose records were hit go missing: a damaged
    // header holds the deadlines, so it is as untrustworthy as a damaged
    // key; the rest read exactly.
    let mut damaged_keys_sorted = damaged_keys.clone();
    damaged_keys_sorted.sort();
    assert_eq!(missing, damaged_keys_sorted);
    // Adjacent damaged headers share one resync, so one report may cover
    // several records.
    let damage = cache.verify().unwrap().damage;
    assert!(
        !damage.is_empty() && damage.len() <= recs.len(),
        "{damage:?}"
    );
    // A fresh index (the process's only handle closed and the file opened
    // again) loses exactly the entries whose records are damaged.
    drop(cache);
    let other = FileCache::open(&path).unwrap();
    let missing = exact_or_missing(&other, &model, "a fresh handle");
    assert_eq!(missing.len(), damaged_keys.len());
}

/// Damage to records written by another process after this one last
/// looked: its first scan of them must never serve wrong bytes.
#[test]
fn damage_to_records_another_process_wrote_since() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("unindexed.lc");
    let reader = FileCache::open(&path).unwrap();
    set(&reader, "before", b"indexed by both");
    let mark = file_len(&path);
    // Another process writes; this one has not indexed its records yet.
    support::in_forked_child(|| {
        let writer = FileCache::open(&path).unwrap();
        set(&writer, "hdr", b"its header will be damaged");
        set(&writer, "key", b"its key will be damaged");
        set(&writer, "val", b"its value will be damaged");
        set(&writer, "ok", b"untouched");
    });
    let clean = std::fs::read(&path).unwrap();
    let recs: Vec<Rec> = records(&clean)
        .into_iter()
        .filter(|r| r.start >= mark)
        .collect();
    assert_eq!(recs.len(), 4, "the child's four records");
    let by_key = |k: &str| recs.iter().find(|r| r.key == k.as_bytes()).unwrap();
    let header_at = by_key("hdr").header_range().start + 13;
    let key_at = by_key("key").key_range().start + 1;
    let value_at = by_key("val").value_range().start + 5;
    for at in [header_at, key_at, value_at] {
        poke(&path, at, &[clean[at] ^ 0x41]);
    }
    // The reader scans the new records only now, damaged.
    assert_eq!(get(&reader, "hdr"), None);
    assert_eq!(get(&reader, "key"), None);
    assert_eq!(get(&reader, "k$y"), None);
    assert_eq!(get(&reader, "val"), None);
    assert_eq!(get(&reader, "ok"), Some(b"untouched".to_vec()));
    assert_eq!(get(&reader, "before"), Some(b"indexed by both".to_vec()));
    // "val" is listed (its key is sound), but reads as missing.
    assert_eq!(keys(&reader), ["before", "ok", "val"]);
    let offsets: Vec<usize> = reader
        .verify()
        .unwrap()
        .damage
        .iter()
        .map(|d| d.offset as usize)
        .collect();
    assert_eq!(
        offsets,
        vec![
            by_key("hdr").start,
            by_key("key").start,
            by_key("val").start
        ]
    );
    // The reader's compaction drops the damaged records; a later process
    // finds the same.
    reader.compact().unwrap();
    let expected: BTreeMap<String, Vec<u8>> =
        [("before", &b"indexed by both"[..]), ("ok", b"untouched")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
    assert_exactly(&reader, &expected, "reader, compacted");
    drop(reader);
    assert_exactly(
        &FileCache::open(&path).unwrap(),
        &expected,
        "reopened after the compaction",
    );
}

/// Sets `victim` and some other keys in a cache that stays open, then
/// flips the victim's key in the file to `forged` (same length, never set).
fn damage_an_indexed_key(path: &Path) -> FileCache {
    let cache = FileCache::open(path).unwrap();
    set(&cache, "victim", b"the victim's value");
    for n in 0..5 {
        set(&cache, &format!("other{n}"), b"other");
    }
    let clean = std::fs::read(path).unwrap();
    let rec = records(&clean)
        .into_iter()
        .find(|r| r.key == b"victim")
        .unwrap();
    poke(path, rec.key_range().start, b"V");
    assert_eq!(get(&cache, "victim"), None);
    cache
}

#[test]
fn a_key_damaged_after_indexing_is_not_given_a_valid_record_by_compaction() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("launder.lc");
    let cache = damage_an_indexed_key(&path);
    let before_compaction = keys(&cache);
    cache.compact().unwrap();
    // "Victim" was never set: it must not read back with the victim's
    // value, nor be listed, before or after a compaction or a reopen.
    assert_eq!(get(&cache, "Victim"), None, "a never-set key reads a value");
    assert_eq!(get(&cache, "victim"), None);
    drop(cache);
    let cache = FileCache::open(&path).unwrap();
    assert_eq!(get(&cache, "Victim"), None, "a never-set key reads a value");
    assert!(!keys(&cache).contains(&"Victim".to_string()));
    assert!(
        !before_compaction.contains(&"Victim".to_string()),
        "{before_compaction:?}"
    );
    assert!(cache.verify().unwrap().damage.is_empty());
}

#[test]
fn a_key_damaged_after_indexing_is_not_found_under_the_damaged_name() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("rehash.lc");
    let cache = damage_an_indexed_key(&path);
    // Enough new keys to grow the index's table several times.
    for n in 0..2000 {
        set(&cache, &format!("filler{n}"), b"");
    }
    assert_eq!(get(&cache, "victim"), None);
    assert_eq!(get(&cache, "Victim"), None, "a never-set key reads a value");
}

// ---------------------------------------------------------------------------
// The committed length itself damaged.

#[test]
fn a_committed_length_damaged_upward_or_misaligned_is_repaired_without_loss() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    let model = write_flip_file(&source);
    let clean = std::fs::read(&source).unwrap();
    let end = committed(&clean);
    let path = dir.path().join("committed.lc");
    let mut cases = 0;
    for offset in H_COMMITTED..H_COMMITTED + 8 {
        for bit in 0..8 {
            let mut bytes = clean.clone();
            bytes[offset] ^= 1 << bit;
            let damaged = committed(&bytes);
            if damaged < end && damaged.is_multiple_of(8) {
                continue; // indistinguishable from a write that never returned
            }
            cases += 1;
            let context = format!("committed {end} damaged to {damaged}");
            std::fs::write(&path, &bytes).unwrap();
            let cache = FileCache::open(&path).unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_eq!(file_len(&path), end, "{context}");
            assert_eq!(committed(&std::fs::read(&path).unwrap()), end, "{context}");
            assert_exactly(&cache, &model, &context);
        }
    }
    assert!(cases > 50);
}

#[test]
fn a_committed_length_inside_a_record_does_not_lose_later_writes() {
    let dir = TempDir::new().unwrap();
    let source = dir.path().join("source.lc");
    let model = write_flip_file(&source);
    let clean = std::fs::read(&source).unwrap();
    let recs = records(&clean);
    let path = dir.path().join("inside.lc");
    // Cuts after a record's header: what is appended at the cut is read
    // as the rest of that record.
    for rec in recs
        .iter()
        .filter(|r| r.len >= RECORD_HEADER + 24)
        .step_by(10)
    {
        let inside = rec.start + RECORD_HEADER + 8;
        let context = format!("committed damaged to {inside}, inside {rec:?}");
        let mut bytes = clean.clone();
        set_committed(&mut bytes, inside);
        std::fs::write(&path, &bytes).unwrap();
        let cache = FileCache::open(&path).unwrap();
        exact_or_missing(&cache, &model, &context);
        let len = file_len(&path);
        let damage = cache.verify().unwrap().damage;
        set(&cache, "written after open", b"must survive");
        drop(cache);
        let cache = FileCache::open(&path).unwrap();
        assert_eq!(
            get(&cache, "written after open"),
            Some(b"must survive".to_vec()),
            "{context}: a write that returned is lost"
        );
        assert!(
            recs.iter().any(|r| r.start == len) || len == clean.len(),
            "{context}: cut at {len}, inside a record"
        );
        assert!(damage.is_empty(), "{context}: {damage:?}");
    }
}
