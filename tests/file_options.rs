//! FileCache's options, on real files: every value is checked at open,
//! `Durability::Periodic` syncs without a later write, a failed automatic
//! compaction is reported beside the write instead of as its result, new
//! files get the mode asked for, and what cannot be a cache is refused
//! before anything is created beside it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use layercache::file::Durability;
use layercache::{Cache, Error, FileCache, FileCacheBuilder};
use proptest::prelude::*;
use tempfile::TempDir;

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn invalid_option(result: layercache::Result<FileCache>) -> &'static str {
    match result {
        Err(Error::InvalidOption { option, reason }) => {
            assert!(!reason.is_empty());
            option
        }
        other => panic!("expected Error::InvalidOption, got {other:?}"),
    }
}

/// Regression: `growth(u64::MAX)` divided by zero at open.
#[test]
fn an_out_of_range_growth_is_an_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("g.lc");
    for growth in [u64::MAX, 0, 1, (1 << 40) + 1] {
        let result = FileCache::builder(&path).growth(growth).open();
        assert_eq!(invalid_option(result), "growth", "growth {growth}");
    }
    assert!(
        names_in(dir.path()).is_empty(),
        "an invalid option creates nothing: {:?}",
        names_in(dir.path())
    );
    // The edges are fine, and a reach that is not whole pages is rounded.
    for growth in [4096, 4097, 1 << 40] {
        let cache = FileCache::builder(&path).growth(growth).open().unwrap();
        cache.set("k".to_string(), vec![1; 10_000]).unwrap();
        assert_eq!(cache.get(&"k".to_string()).unwrap(), Some(vec![1; 10_000]));
    }
}

/// What `validate` must say of one set of options: the option it names
/// first, in the order the builder documents, or `None` when all are valid.
fn first_invalid(
    durability: Durability,
    ratio: f64,
    growth: u64,
    key: usize,
    value: usize,
    mode: u32,
) -> Option<&'static str> {
    if durability == Durability::Periodic(Duration::ZERO) {
        return Some("durability");
    }
    if ratio.is_nan() || ratio < 0.0 {
        return Some("compact_when");
    }
    if !(4096..=1 << 40).contains(&growth) {
        return Some("growth");
    }
    if key > u32::MAX as usize {
        return Some("max_key_len");
    }
    if value > u32::MAX as usize {
        return Some("max_value_len");
    }
    if mode > 0o777 || mode & 0o600 != 0o600 {
        return Some("mode");
    }
    None
}

fn durabilities() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Buffered),
        Just(Durability::Sync),
        Just(Durability::Periodic(Duration::ZERO)),
        (1u64..5_000).prop_map(|ms| Durability::Periodic(Duration::from_millis(ms))),
    ]
}

fn ratios() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        -2.0f64..3.0,
    ]
}

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..100_000,
        Just(u32::MAX as usize),
        Just(u32::MAX as usize + 1),
        Just(usize::MAX),
    ]
}

fn growths() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(u64::MAX), 0u64..10_000, 4096u64..(1 << 41),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Any option values: `open` never panics; an out-of-range value is
    /// `InvalidOption` naming it, and creates nothing; valid ones open a
    /// cache that works.
    #[test]
    fn any_option_values_open_or_name_the_bad_option(
        durability in durabilities(),
        ratio in ratios(),
        min_bytes in any::<u64>(),
        growth in growths(),
        key in sizes(),
        value in sizes(),
        mode in prop_oneof![0u32..0o10000, Just(0o600u32), Just(0o660u32), Just(u32::MAX)],
        allow_network_fs in any::<bool>(),
    ) {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("p.lc");
        let result = FileCache::builder(&path)
            .durability(durability)
            .compact_when(ratio, min_bytes)
            .growth(growth)
            .max_key_len(key)
            .max_value_len(value)
            .mode(mode)
            .allow_network_fs(allow_network_fs)
            .open();
        match first_invalid(durability, ratio, growth, key, value, mode) {
            Some(option) => {
                prop_assert_eq!(invalid_option(result), option);
                prop_assert!(names_in(dir.path()).is_empty());
            }
            None => {
                let cache = result.unwrap();
                let k = "k".repeat(key.min(3));
                let v = vec![5u8; value.min(100)];
                cache.set(k.clone(), v.clone()).unwrap();
                prop_assert_eq!(cache.get(&k).unwrap(), Some(v));
                prop_assert_eq!(mode_of(&path), mode);
            }
        }
    }
}

/// Polls `done` until it holds, failing after `deadline`.
fn eventually(deadline: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Regression: `Periodic` synced only on a later write, so the last writes
/// of a burst waited for kernel writeback.
#[test]
fn periodic_durability_syncs_the_last_write_of_a_burst_without_another_write() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("periodic.lc");
    let cache = FileCache::builder(&path)
        .durability(Durability::Periodic(Duration::from_millis(20)))
        .open()
        .unwrap();
    assert_eq!(cache.stats().syncs, 0, "nothing written, nothing synced");
    for n in 0..10u8 {
        cache.set(format!("burst-{n}"), vec![n; 100]).unwrap();
    }
    // No further write: the background sync must come by itself.
    eventually(Duration::from_secs(10), "a background sync", || {
        cache.stats().syncs >= 1
    });
    // And once synced, an idle cache is not synced again and again. (A
    // sync may have come mid-burst; the rest of the burst is then synced
    // within one more interval.)
    std::thread::sleep(Duration::from_millis(100));
    let synced = cache.stats().syncs;
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(cache.stats().syncs, synced, "idle: nothing left to sync");
}

/// Regression: a handle did not flush on drop.
#[test]
fn a_periodic_handle_syncs_when_dropped() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("drop.lc");
    let hourly = FileCache::builder(&path)
        .durability(Durability::Periodic(Duration::from_secs(3600)))
        .open()
        .unwrap();
    let observer = FileCache::open(&path).unwrap(); // shares the process's counters
    hourly.set("k".to_string(), b"v".to_vec()).unwrap();
    assert_eq!(observer.stats().syncs, 0, "an hour has not passed");
    drop(hourly);
    assert_eq!(observer.stats().syncs, 1, "the drop synced");
}

/// Regression: a write that happened returned the error of the automatic
/// compaction after it. Now the write is `Ok`, the hook hears of the
/// failure (here a seal that cannot create its new segment), the counter
/// counts it, and the next attempt waits.
#[test]
fn a_failed_automatic_compaction_goes_to_the_hook_not_to_the_write() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("hook.lc");
    let blockers = [
        dir.path().join("hook.lc.next"),
        dir.path().join("hook.lc.compact"),
    ];
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = {
        let heard = heard.clone();
        let calls = calls.clone();
        FileCache::builder(&path)
            .compact_when(0.0, 0) // after every write
            .segment_size(8192)
            .on_compaction_error(move |error| {
                calls.fetch_add(1, Ordering::SeqCst);
                heard.lock().unwrap().push(error.to_string());
            })
            .open()
            .unwrap()
    };
    for blocker in &blockers {
        std::fs::create_dir(blocker).unwrap(); // nothing can be made there
    }
    // 1 KiB values: the ninth write needs a new segment.
    for n in 0..9 {
        cache.set(format!("a{n}"), vec![1; 1024]).unwrap();
    }
    assert_eq!(cache.get(&"a8".to_string()).unwrap(), Some(vec![1; 1024]));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        heard.lock().unwrap()[0].contains("hook.lc"),
        "the error names the cache: {:?}",
        heard.lock().unwrap()
    );
    assert_eq!(cache.stats().compaction_failures, 1);
    // Within the pause, writes do not retry (and so do not fail again).
    for n in 0..20 {
        cache.set(format!("b{n}"), vec![2; 1024]).unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "paused after a failure");
    // An explicit compaction reports its own failure, and leaves the file.
    let generation = cache.generation().unwrap();
    match cache.compact() {
        Err(Error::Io { path: named, .. }) => assert_eq!(named, blockers[1]),
        other => panic!("expected an I/O error naming the compaction file, got {other:?}"),
    }
    assert_eq!(cache.generation().unwrap(), generation);
    // Once the way is clear, compaction works and leaves nothing behind.
    for blocker in &blockers {
        std::fs::remove_dir(blocker).unwrap();
    }
    cache.compact().unwrap();
    assert_eq!(cache.generation().unwrap(), generation + 1);
    assert_eq!(names_in(dir.path()), ["hook.lc", "hook.lc.lock"]);
    assert_eq!(cache.len().unwrap(), 29);
}

/// New files get exactly the mode asked for, whatever the umask (0o660
/// under the usual 0o022 would be 0o640 if the umask applied); compaction
/// keeps a mode changed since.
#[test]
fn new_files_get_the_mode_asked_for_and_compaction_keeps_it() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("group.lc");
    let cache = FileCache::builder(&path).mode(0o660).open().unwrap();
    cache.set("k".to_string(), vec![1]).unwrap();
    assert_eq!(mode_of(&path), 0o660);
    assert_eq!(mode_of(&dir.path().join("group.lc.lock")), 0o660);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    cache.compact().unwrap();
    assert_eq!(cache.generation().unwrap(), 1);
    assert_eq!(mode_of(&path), 0o640, "compaction keeps the file's mode");
    assert_eq!(cache.get(&"k".to_string()).unwrap(), Some(vec![1]));
}

fn refused(result: layercache::Result<FileCache>) -> String {
    match result {
        Err(Error::Refused { reason, .. }) => reason,
        other => panic!("expected Error::Refused, got {other:?}"),
    }
}

/// A directory, a foreign file and a dangling symbolic link are refused
/// before a lock file is created beside them.
#[test]
fn what_cannot_be_a_cache_is_refused_and_nothing_is_created() {
    let dir = TempDir::new().unwrap();
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    assert!(refused(FileCache::open(&sub)).contains("not a regular file"));

    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "some text, long enough to be a header? no").unwrap();
    match FileCache::open(&foreign) {
        Err(Error::Format { path, reason }) => {
            assert_eq!(path, foreign);
            assert!(reason.contains("not a layercache file"), "{reason}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }

    let dangling = dir.path().join("dangling.lc");
    std::os::unix::fs::symlink(dir.path().join("nowhere.lc"), &dangling).unwrap();
    assert!(refused(FileCache::open(&dangling)).contains("does not exist"));

    assert_eq!(
        names_in(dir.path()),
        ["a-directory", "dangling.lc", "notes.txt"],
        "no lock file or cache file was created"
    );
}

/// A builder's `Debug` says what it will open, and how.
#[test]
fn a_builder_prints_its_options() {
    let builder: FileCacheBuilder = FileCache::builder("x.lc").mode(0o640);
    let printed = format!("{builder:?}");
    assert!(printed.contains("0o640"), "{printed}");
    assert!(printed.contains("x.lc"), "{printed}");
}

/// Opening a directory or a file that is not a cache (issue 13): an error
/// naming the path given, and no stray `.lock` (or anything else) left
/// beside it.
#[test]
fn a_directory_or_a_foreign_file_is_refused_and_leaves_nothing() {
    let dir = TempDir::new().unwrap();
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "plain text, not a cache file: ".repeat(20)).unwrap();
    for path in [&sub, &foreign] {
        let error = FileCache::<String>::open(path).expect_err("not a cache");
        let message = error.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "names the path given: {message}"
        );
        assert!(!message.contains(".lock"), "names no lock file: {message}");
    }
    assert_eq!(names_in(dir.path()), ["a-directory", "notes.txt"]);
    assert_eq!(
        std::fs::read_to_string(&foreign).unwrap(),
        "plain text, not a cache file: ".repeat(20),
        "the foreign file is untouched"
    );
}
