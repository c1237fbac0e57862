//! FileCache format 2: deadlines across processes and reopening, expired
//! entries dropped by compaction, and version-1 files converted on open.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use layercache::{Cache, CacheExt, Clock, Entry, FileCache, ManualClock, SystemClock, Timestamp};
use tempfile::TempDir;

use support::{Running, arg, child_command, crc32, is_child, report};

const HOUR: Duration = Duration::from_secs(3600);

fn describe(entry: Option<Entry<Vec<u8>>>) -> String {
    match entry {
        None => "miss".to_string(),
        Some(entry) => format!(
            "{}|{:?}|{:?}",
            String::from_utf8_lossy(&entry.value),
            entry.expires().map(Timestamp::as_millis),
            entry.fresh_until().map(Timestamp::as_millis),
        ),
    }
}

/// Reports, by the system clock, `get <key> <entry>` for the keys named in
/// `LAYERCACHE_ARG_KEYS` and `keys <sorted keys>`.
#[test]
fn child_read_entries() {
    if !is_child("child_read_entries") {
        return;
    }
    let cache = FileCache::open(arg("PATH")).expect("open");
    for key in arg("KEYS").split(',') {
        let entry = cache.get_entry(&key.to_string()).expect("get_entry");
        report(format!("get {key} {}", describe(entry)));
    }
    let mut keys = cache.keys().expect("keys");
    keys.sort();
    report(format!("keys {}", keys.join(",")));
}

fn read_in_child(path: &Path, keys: &str) -> Vec<String> {
    let mut child = Running::spawn(
        "reader",
        child_command(
            "child_read_entries",
            &[
                ("PATH", path.display().to_string()),
                ("KEYS", keys.to_string()),
            ],
        ),
    );
    let finished = child.finish();
    finished.assert_success();
    finished.reports
}

/// Entries written with deadlines by one process keep them, exactly, in
/// another process and after reopening; one whose expiry has passed (by
/// the reader's clock) is a miss there and is left out of `keys`.
#[test]
fn deadlines_cross_processes_and_reopening() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("deadlines.lc");
    let now = SystemClock.now();
    // The writer's clock is two hours behind, so it can write an entry
    // that has already expired for everyone else.
    let behind = Arc::new(ManualClock::starting_at(Timestamp::from_millis(
        now.as_millis() - 2 * 3_600_000,
    )));
    let writer = FileCache::builder(&path)
        .clock(behind.clone())
        .open()
        .unwrap();
    writer
        .set_expiring_at("dead".to_string(), b"d".to_vec(), now - HOUR)
        .unwrap();
    let alive = Entry::new(b"a".to_vec())
        .with_expires(now + HOUR)
        .with_fresh_until(now + HOUR / 2);
    writer
        .set_entry("alive".to_string(), alive.clone())
        .unwrap();
    writer.set("forever".to_string(), b"f".to_vec()).unwrap();
    assert_eq!(
        writer.get(&"dead".to_string()).unwrap(),
        Some(b"d".to_vec()),
        "alive by the writer's own clock"
    );
    let expected = vec![
        "get dead miss".to_string(),
        format!("get alive {}", describe(Some(alive.clone()))),
        "get forever f|None|None".to_string(),
        "keys alive,forever".to_string(),
    ];
    assert_eq!(read_in_child(&path, "dead,alive,forever"), expected);
    drop(writer);
    // Reopened, by the system clock, in this process.
    let reader = FileCache::open(&path).unwrap();
    assert_eq!(reader.get_entry(&"dead".to_string()).unwrap(), None);
    assert_eq!(reader.get_entry(&"alive".to_string()).unwrap(), Some(alive));
    assert_eq!(
        reader.values().unwrap().len(),
        2,
        "values() leaves the expired one out"
    );
    // `remove` of an entry expired here still writes its tombstone: a
    // process whose clock is behind no longer sees it either.
    assert_eq!(reader.remove(&"dead".to_string()).unwrap(), None);
    drop(reader);
    let behind_again = FileCache::builder(&path).clock(behind).open().unwrap();
    assert_eq!(behind_again.get(&"dead".to_string()).unwrap(), None);
}

/// Compaction drops expired entries from the file, not only from view: a
/// handle whose clock is behind, opened after the compaction, does not see
/// them either.
#[test]
fn compaction_drops_expired_entries() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("compact.lc");
    let clock = Arc::new(ManualClock::new());
    let start = clock.now();
    let cache = FileCache::builder(&path)
        .clock(clock.clone())
        .open()
        .unwrap();
    for n in 0..10 {
        let key = format!("short{n}");
        cache
            .set_with_ttl(key, vec![n; 100], Duration::from_secs(10))
            .unwrap();
        let key = format!("long{n}");
        cache
            .set_with_ttl(key, vec![n; 100], Duration::from_secs(100))
            .unwrap();
    }
    cache.set("plain".to_string(), b"p".to_vec()).unwrap();
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        cache.len().unwrap(),
        21,
        "expired entries count until dropped"
    );
    assert_eq!(cache.keys().unwrap().len(), 11);
    let before = cache.verify().unwrap();
    cache.compact().unwrap();
    let after = cache.verify().unwrap();
    assert_eq!((before.records, after.records), (21, 11));
    assert_eq!(cache.len().unwrap(), 11);
    assert!(after.damage.is_empty());
    drop(cache);
    let behind = FileCache::builder(&path)
        .clock(Arc::new(ManualClock::starting_at(start)))
        .open()
        .unwrap();
    assert_eq!(behind.get(&"short3".to_string()).unwrap(), None, "dropped");
    let long = behind.get_entry(&"long3".to_string()).unwrap().unwrap();
    assert_eq!(long.value, vec![3; 100]);
    assert_eq!(
        long.expires(),
        Some(start + Duration::from_secs(100)),
        "compaction keeps a deadline exactly"
    );
}

// ---------------------------------------------------------------------------
// Version 1 files (layercache 0.1).

/// A version-1 record (`LCR1`, 32-byte header): kind 1 put, 2 tombstone.
fn v1_record(kind: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"LCR1");
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(key).to_le_bytes());
    out.extend_from_slice(&crc32(value).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let header_crc = crc32(&out[8..32]);
    out[4..8].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out.resize(out.len().div_ceil(8) * 8, 0);
    out
}

/// A version-1 file of generation `generation` holding `records`.
fn v1_file(generation: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let mut file = vec![0u8; 4096];
    file[..8].copy_from_slice(b"LYRCACHE");
    file[8..12].copy_from_slice(&1u32.to_le_bytes());
    file[12..16].copy_from_slice(&4096u32.to_le_bytes());
    file[16..24].copy_from_slice(&generation.to_le_bytes());
    let static_crc = crc32(&file[..24]);
    file[24..28].copy_from_slice(&static_crc.to_le_bytes());
    for record in records {
        file.extend_from_slice(record);
    }
    let committed = file.len() as u64;
    file[32..40].copy_from_slice(&committed.to_le_bytes());
    file
}

/// A file written by layercache 0.1 is converted on open: the newest value
/// of every key, no removed key, nothing that version 1 read as missing;
/// the file is then version 2, of the next generation, and opens again.
#[test]
fn a_version_1_file_is_converted_on_open() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("old.lc");
    let mut damaged_value = v1_record(1, b"damaged", b"its value is damaged");
    damaged_value[32 + "damaged".len() + 3] ^= 0x20; // inside the value
    let records = [
        v1_record(1, b"kept", b"first"),
        v1_record(1, b"overwritten", b"older"),
        v1_record(1, b"removed", b"gone soon"),
        v1_record(1, b"overwritten", b"newer"),
        v1_record(2, b"removed", b""),
        damaged_value,
        v1_record(1, b"last", b"at the end"),
    ];
    std::fs::write(&path, v1_file(4, &records)).unwrap();
    let converted = |cache: &FileCache| {
        let mut state: Vec<(String, Vec<u8>)> = cache
            .keys()
            .unwrap()
            .into_iter()
            .map(|key| {
                let value = cache.get(&key).unwrap().expect("listed keys read");
                (key, value)
            })
            .collect();
        state.sort();
        state
    };
    let expected = vec![
        ("kept".to_string(), b"first".to_vec()),
        ("last".to_string(), b"at the end".to_vec()),
        ("overwritten".to_string(), b"newer".to_vec()),
    ];
    let cache = FileCache::open(&path).unwrap();
    assert_eq!(converted(&cache), expected);
    assert_eq!(cache.generation().unwrap(), 5);
    assert!(cache.verify().unwrap().damage.is_empty());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
    // The converted file takes writes and deadlines, and opens again.
    cache
        .set_with_ttl("new".to_string(), b"n".to_vec(), HOUR)
        .unwrap();
    drop(cache);
    let again = FileCache::open(&path).unwrap();
    assert_eq!(again.get(&"new".to_string()).unwrap(), Some(b"n".to_vec()));
    assert_eq!(again.generation().unwrap(), 5, "converted once");
    assert_eq!(again.len().unwrap(), 4);
    // Another process reads it too.
    let reports = read_in_child(&path, "kept");
    assert_eq!(reports[0], "get kept first|None|None");
}

/// A version-1 file with a torn tail and a damaged committed length
/// converts what version 1 would have read, and no more.
#[test]
fn a_damaged_version_1_file_converts_its_whole_records() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("torn.lc");
    let mut bytes = v1_file(0, &[v1_record(1, b"a", b"one"), v1_record(1, b"b", b"two")]);
    // A torn record past the committed length, and a committed length
    // damaged to point past the end of the file.
    let torn = v1_record(1, b"c", b"three, torn");
    bytes.extend_from_slice(&torn[..20]);
    bytes[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let cache = FileCache::open(&path).unwrap();
    let mut keys = cache.keys().unwrap();
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(cache.get(&"b".to_string()).unwrap(), Some(b"two".to_vec()));
    assert!(cache.verify().unwrap().damage.is_empty());
}
