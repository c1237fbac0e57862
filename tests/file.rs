//! FileCache on real files: the conformance suite, persistence, damage.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use layercache::file::Durability;
use layercache::testing;
use layercache::{Cache, Error, FileCache};
use tempfile::TempDir;

fn fresh(dir: &TempDir, name: &str) -> FileCache {
    FileCache::open(dir.path().join(name)).expect("open")
}

#[test]
fn conformance_string_and_byte_keys() {
    let dir = TempDir::new().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let make = || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fresh(&dir, &format!("c{n}.lc"))
    };
    testing::run_all(make);
    testing::run_string_keyed(make);
    testing::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        FileCache::builder(dir.path().join(format!("b{n}.lc")))
            .byte_keys()
            .open()
            .expect("open")
    });
}

/// One key type per handle: calls on a `FileCache` need no annotations
/// (they needed turbofish when one handle took both key types), and a
/// string-keyed and a byte-keyed handle share one file.
#[test]
fn one_key_type_per_handle_needs_no_annotations() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("keys.lc");
    let strings = FileCache::open(&path).unwrap();
    strings.set("text".to_string(), b"1".to_vec()).unwrap();
    assert_eq!(strings.keys().unwrap(), ["text"]);
    assert_eq!(strings.values().unwrap(), [b"1".to_vec()]);
    let bytes = FileCache::builder(&path).byte_keys().open().unwrap();
    bytes.set(vec![0xFF, 0xFE], b"2".to_vec()).unwrap();
    let mut all = bytes.keys().unwrap();
    all.sort();
    assert_eq!(all, [b"text".to_vec(), vec![0xFF, 0xFE]]);
    // Keys that are not UTF-8 are not strings: left out, never mangled.
    assert_eq!(strings.keys().unwrap(), ["text"]);
    assert_eq!(strings.clear_matching(&|_| true).unwrap(), 1);
    assert_eq!(bytes.keys().unwrap(), [vec![0xFF, 0xFE]]);
    strings.clear().unwrap();
    assert!(bytes.is_empty().unwrap());
}

#[test]
fn conformance_with_sync_durability() {
    let dir = TempDir::new().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    testing::run_all::<String, Vec<u8>, _>(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        FileCache::builder(dir.path().join(format!("s{n}.lc")))
            .durability(Durability::Sync)
            .open()
            .unwrap()
    });
}

#[test]
fn everything_set_is_there_after_reopen() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("p.lc");
    {
        let cache = FileCache::open(&path).unwrap();
        for n in 0..500u32 {
            cache
                .set(format!("k{n}"), n.to_le_bytes().to_vec())
                .unwrap();
        }
        for n in (0..500u32).step_by(5) {
            cache.remove(&format!("k{n}")).unwrap();
        }
        cache
            .set("k1".to_string(), b"overwritten".to_vec())
            .unwrap();
    }
    let cache = FileCache::open(&path).unwrap();
    assert_eq!(cache.len().unwrap(), 400);
    assert_eq!(
        cache.get(&"k1".to_string()).unwrap(),
        Some(b"overwritten".to_vec())
    );
    assert_eq!(cache.get(&"k5".to_string()).unwrap(), None);
    assert_eq!(
        cache.get(&"k7".to_string()).unwrap(),
        Some(7u32.to_le_bytes().to_vec())
    );
    assert!(cache.verify().unwrap().damage.is_empty());
}

#[test]
fn new_files_are_owner_only() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("mode.lc");
    let cache = FileCache::open(&path).unwrap();
    cache.set("k".to_string(), vec![1]).unwrap();
    cache.compact().unwrap();
    for file in [path.clone(), dir.path().join("mode.lc.lock")] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

fn assert_format_error(path: &Path, needle: &str) {
    let before = std::fs::read(path).unwrap();
    match FileCache::open(path) {
        Err(Error::Format { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains(needle), "{reason}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file must be untouched"
    );
}

#[test]
fn opening_something_else_is_a_clear_error_and_touches_nothing() {
    let dir = TempDir::new().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "not a cache at all, just some text that is long enough",
    )
    .unwrap();
    assert_format_error(&text, "not a layercache file");
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 10_000]).unwrap();
    assert_format_error(&big, "not a layercache file");

    let newer = dir.path().join("newer.lc");
    FileCache::open(&newer)
        .unwrap()
        .set("k".to_string(), vec![1])
        .unwrap();
    let mut bytes = std::fs::read(&newer).unwrap();
    bytes[8] = 9; // the format version
    std::fs::write(&newer, &bytes).unwrap();
    assert_format_error(&newer, "version 9 is newer");
}

#[test]
fn a_flipped_byte_loses_only_its_entry() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("flip.lc");
    let value =
        |n: u32| format!("value number {n} with some padding to make it longer").into_bytes();
    {
        let cache = FileCache::open(&path).unwrap();
        for n in 0..50u32 {
            cache.set(format!("key{n:02}"), value(n)).unwrap();
        }
    }
    let clean = std::fs::read(&path).unwrap();
    // Flip a byte in every region of record 10: header, key, value.
    let record_len = (clean.len() - 4096) / 50;
    let start = 4096 + 10 * record_len;
    for offset in [start + 2, start + 13, start + 34, start + 60] {
        let mut bytes = clean.clone();
        bytes[offset] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let cache = FileCache::open(&path).unwrap();
        assert_eq!(
            cache.get(&"key10".to_string()).unwrap(),
            None,
            "flip at {offset}"
        );
        for n in (0..50u32).filter(|&n| n != 10) {
            assert_eq!(
                cache.get(&format!("key{n:02}")).unwrap(),
                Some(value(n)),
                "flip at {offset}"
            );
        }
        let report = cache.verify().unwrap();
        assert_eq!(report.damage.len(), 1, "flip at {offset}: {report:?}");
        assert_eq!(report.damage[0].offset as usize, start, "flip at {offset}");
    }
}

#[test]
fn oversize_keys_and_values_are_refused_and_nothing_else_changes() {
    let dir = TempDir::new().unwrap();
    let cache = FileCache::builder(dir.path().join("limits.lc"))
        .max_key_len(16)
        .max_value_len(64)
        .open()
        .unwrap();
    cache.set("ok".to_string(), vec![1; 64]).unwrap();
    let err = cache.set("k".repeat(17), vec![1]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                what: "key",
                size: 17,
                limit: 16
            }
        ),
        "{err}"
    );
    let err = cache.set("ok".to_string(), vec![2; 65]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                what: "value",
                size: 65,
                limit: 64
            }
        ),
        "{err}"
    );
    assert_eq!(cache.get(&"ok".to_string()).unwrap(), Some(vec![1; 64]));
    assert_eq!(cache.len().unwrap(), 1);
}

#[test]
fn compaction_reclaims_space_and_keeps_live_values() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("compact.lc");
    let cache = FileCache::builder(&path)
        .compact_when(2.0, 0)
        .open()
        .unwrap();
    for round in 0..10u8 {
        for n in 0..100u32 {
            cache.set(format!("k{n}"), vec![round; 100]).unwrap();
        }
    }
    for n in 0..50u32 {
        cache.remove(&format!("k{n}")).unwrap();
    }
    let before = std::fs::metadata(&path).unwrap().len();
    assert!(cache.garbage_bytes().unwrap() > 0);
    cache.compact().unwrap();
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(after * 10 < before, "{before} -> {after}");
    assert_eq!(cache.generation().unwrap(), 1);
    assert_eq!(cache.garbage_bytes().unwrap(), 0);
    assert_eq!(cache.len().unwrap(), 50);
    assert_eq!(cache.get(&"k70".to_string()).unwrap(), Some(vec![9; 100]));
    drop(cache);
    let cache = FileCache::open(&path).unwrap();
    assert_eq!(cache.len().unwrap(), 50);
    assert_eq!(cache.get(&"k99".to_string()).unwrap(), Some(vec![9; 100]));
}

#[test]
fn two_handles_see_each_others_writes_without_reopening() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("two.lc");
    let a = FileCache::open(&path).unwrap();
    let b = FileCache::open(&path).unwrap();
    a.set("x".to_string(), vec![1]).unwrap();
    assert_eq!(b.get(&"x".to_string()).unwrap(), Some(vec![1]));
    b.remove(&"x".to_string()).unwrap();
    assert_eq!(a.get(&"x".to_string()).unwrap(), None);
    b.set("y".to_string(), vec![2]).unwrap();
    a.compact().unwrap();
    assert_eq!(
        b.get(&"y".to_string()).unwrap(),
        Some(vec![2]),
        "b follows a's compaction"
    );
    b.set("z".to_string(), vec![3]).unwrap();
    assert_eq!(a.get(&"z".to_string()).unwrap(), Some(vec![3]));
    a.clear().unwrap();
    assert_eq!(b.len().unwrap(), 0);
}

/// Both deadlines survive the file, for both key types: the conformance
/// suite's expiry checks, on a manual clock.
#[test]
fn deadlines_are_kept() {
    let dir = TempDir::new().unwrap();
    let made = std::sync::atomic::AtomicUsize::new(0);
    let name = || {
        let n = made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        dir.path().join(format!("deadlines-{n}.lc"))
    };
    testing::run_deadlines(|clock| {
        FileCache::builder(name())
            .clock(clock)
            .open()
            .expect("open")
    });
    testing::run_deadlines(|clock| {
        FileCache::builder(name())
            .byte_keys()
            .clock(clock)
            .open()
            .expect("open")
    });
}

/// A TTL set through a memory-over-file stack reaches the file with its
/// deadline: once the memory layer's entry expires, the file's has too, and
/// the stack never serves the older value.
#[test]
fn a_deadline_set_through_a_stack_expires_in_every_layer() {
    use layercache::{CacheExt, Layered, ManualClock, MemoryCache};
    use std::sync::Arc;
    use std::time::Duration;

    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new());
    let file = Arc::new(
        FileCache::builder(dir.path().join("stack.lc"))
            .clock(clock.clone())
            .open()
            .expect("open"),
    );
    let stack = Layered::new()
        .with_layer(MemoryCache::new().with_clock(clock.clone()))
        .with_layer(file.clone());
    let key = "k".to_string();
    stack.set(key.clone(), b"old".to_vec()).unwrap();
    stack
        .set_with_ttl(key.clone(), b"new".to_vec(), Duration::from_secs(60))
        .unwrap();
    assert_eq!(stack.get(&key).unwrap(), Some(b"new".to_vec()));
    let below = file.get_entry(&key).unwrap().expect("in the file");
    assert_eq!(below.value, b"new");
    assert_eq!(below.expires(), Some(clock.now() + Duration::from_secs(60)));
    clock.advance(Duration::from_secs(60));
    assert_eq!(stack.get(&key).unwrap(), None, "never the older value");
    assert_eq!(file.get(&key).unwrap(), None);
}
