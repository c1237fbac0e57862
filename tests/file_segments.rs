//! FileCache segments: the active segment sealed into `<path>.<id>.seg`
//! and a new one put at the path, followed by other handles and processes,
//! found again on reopening, merged by compaction; a seal that died half
//! way; damage in a sealed segment.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use layercache::{Cache, FileCache};
use tempfile::TempDir;

use support::{Rng, Running, arg, arg_u64, child_command, crc32, is_child, report, state_of};

const SEGMENT: u64 = 8192;

fn open(path: &Path) -> FileCache {
    FileCache::builder(path)
        .segment_size(SEGMENT)
        .open()
        .expect("open")
}

/// The files `<path>.<id><suffix>` beside `path`, by id.
fn beside(path: &Path, suffix: &str) -> BTreeMap<u64, PathBuf> {
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.unwrap();
            let file = entry.file_name().into_string().ok()?;
            let id = file
                .strip_prefix(&format!("{name}."))?
                .strip_suffix(suffix)?
                .parse()
                .ok()?;
            Some((id, entry.path()))
        })
        .collect()
}

/// The sealed segment files beside `path`, by id.
fn sealed(path: &Path) -> BTreeMap<u64, PathBuf> {
    beside(path, ".seg")
}

fn value(key: u64, round: u64) -> Vec<u8> {
    let mut v = format!("{key}:{round}:").into_bytes();
    v.resize(40 + (key % 90) as usize, b'.');
    v
}

/// Writes `rounds` rounds over `keys` keys (every seventh removed), through
/// `cache`, and returns what the cache must hold.
fn write_rounds(cache: &FileCache, keys: u64, rounds: u64) -> BTreeMap<String, Vec<u8>> {
    let mut model = BTreeMap::new();
    write_more(cache, keys, rounds, &mut model);
    model
}

/// [`write_rounds`], onto what `model` says the cache holds.
fn write_more(cache: &FileCache, keys: u64, rounds: u64, model: &mut BTreeMap<String, Vec<u8>>) {
    let mut rng = Rng::new(keys ^ rounds);
    for round in 0..rounds {
        for _ in 0..keys {
            let key = rng.next() % keys;
            let name = format!("key{key}");
            if (key + round).is_multiple_of(7) {
                cache.remove(&name).expect("remove");
                model.remove(&name);
            } else {
                cache.set(name.clone(), value(key, round)).expect("set");
                model.insert(name, value(key, round));
            }
        }
    }
}

#[test]
fn writes_across_many_segments_survive_reopening_and_other_handles() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("segments.lc");
    let cache = open(&path);
    // Another handle, opened first: it follows every seal as it reads.
    let watcher = FileCache::open(&path).expect("open with default options");
    let model = write_rounds(&cache, 300, 6);
    let sealed_now = sealed(&path);
    assert!(
        sealed_now.len() > 20,
        "8 KiB segments hold ~70 records: {} sealed",
        sealed_now.len()
    );
    for file in sealed_now.values() {
        assert!(std::fs::metadata(file).unwrap().len() <= SEGMENT + 4096);
    }
    assert_eq!(std::fs::metadata(&path).unwrap().nlink(), 1);
    assert_eq!(state_of(&cache), model);
    assert_eq!(
        state_of(&watcher),
        model,
        "a handle opened before every seal"
    );
    assert_eq!(cache.len().unwrap(), model.len());
    let report = watcher.verify().unwrap();
    assert!(report.damage.is_empty(), "{report:?}");
    assert_eq!(report.live, model.len() as u64);
    drop(cache);
    drop(watcher);
    let reopened = open(&path);
    assert_eq!(state_of(&reopened), model, "found again on reopening");
    assert!(
        reopened.garbage_bytes().unwrap() > 0,
        "overwrites left garbage in sealed segments"
    );
    // Compaction merges every segment into one file at the path.
    reopened.compact().unwrap();
    assert!(sealed(&path).is_empty(), "{:?}", sealed(&path));
    assert_eq!(reopened.garbage_bytes().unwrap(), 0);
    assert_eq!(state_of(&reopened), model);
    let after = FileCache::open(&path).unwrap();
    assert_eq!(state_of(&after), model);
}

/// Writes `LAYERCACHE_ARG_ROUNDS` rounds over `LAYERCACHE_ARG_KEYS` keys
/// with 8 KiB segments, then reports `done`.
#[test]
fn child_segment_writer() {
    if !is_child("child_segment_writer") {
        return;
    }
    let cache = open(Path::new(&arg("PATH")));
    write_rounds(&cache, arg_u64("KEYS"), arg_u64("ROUNDS"));
    report("done");
}

/// A handle that was open while another process sealed dozens of segments
/// reads exactly what that process wrote, and so does a fresh one.
#[test]
fn another_process_follows_the_seals() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("child.lc");
    let early = open(&path);
    early.set("before".to_string(), b"x".to_vec()).unwrap();
    let mut child = Running::spawn(
        "segment writer",
        child_command(
            "child_segment_writer",
            &[
                ("PATH", path.display().to_string()),
                ("KEYS", "250".to_string()),
                ("ROUNDS", "5".to_string()),
            ],
        ),
    );
    child.finish().assert_success();
    let mut model = {
        let scratch = TempDir::new().unwrap();
        write_rounds(&open(&scratch.path().join("model.lc")), 250, 5)
    };
    model.insert("before".to_string(), b"x".to_vec());
    assert!(sealed(&path).len() > 15);
    assert_eq!(state_of(&early), model);
    assert_eq!(state_of(&FileCache::open(&path).unwrap()), model);
}

/// A seal that died after giving the active segment its sealed name and
/// before renaming the new segment onto the path: the path still names the
/// whole active segment, with a second name, and a `.next` file lies
/// beside it. Opening removes both leftovers and loses nothing.
#[test]
fn a_seal_that_died_half_way_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("died.lc");
    let model = {
        let cache = open(&path);
        write_rounds(&cache, 100, 3)
    };
    let ids: Vec<u64> = sealed(&path).keys().copied().collect();
    let active_id = ids.last().unwrap() + 1;
    let second_name = dir.path().join(format!("died.lc.{active_id}.seg"));
    std::fs::hard_link(&path, &second_name).unwrap();
    std::fs::write(dir.path().join("died.lc.next"), b"half a header").unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().nlink(), 2);
    let cache = open(&path);
    assert_eq!(state_of(&cache), model);
    assert!(!second_name.exists(), "the second name is removed");
    assert!(!dir.path().join("died.lc.next").exists());
    assert_eq!(std::fs::metadata(&path).unwrap().nlink(), 1);
    // And the seals that follow work.
    let before = sealed(&path).len();
    let mut model = model;
    write_more(&cache, 100, 2, &mut model);
    assert!(sealed(&path).len() > before);
    assert_eq!(state_of(&cache), model);
    assert_eq!(state_of(&open(&path)), model);
}

/// Damage in a sealed segment: the damaged entry reads as missing, every
/// other one reads exactly, and `verify` names the segment's file.
#[test]
fn damage_in_a_sealed_segment_is_contained_and_reported() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("damaged.lc");
    let mut model = BTreeMap::new();
    {
        let cache = open(&path);
        for n in 0..400u64 {
            let key = format!("key{n}");
            cache.set(key.clone(), value(n, 0)).unwrap();
            model.insert(key, value(n, 0));
        }
    }
    let (_, first) = sealed(&path).into_iter().next().unwrap();
    // The first record's value, in the first sealed segment: header page,
    // 48-byte record header, key "key0".
    let at = 4096 + 48 + 4 + 3;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&first)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    drop(file);
    let cache = open(&path);
    assert_eq!(cache.get(&"key0".to_string()).unwrap(), None);
    for (key, value) in model.iter().filter(|(k, _)| *k != "key0") {
        assert_eq!(cache.get(key).unwrap().as_ref(), Some(value), "{key}");
    }
    let report = cache.verify().unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert_eq!(report.damage[0].file, first.canonicalize().unwrap());
    assert_eq!(report.damage[0].offset, 4096);
}

/// The byte budget: the files never exceed it after a write, the oldest
/// entries go first, and a process that opened the file without the
/// option applies the same budget (it is kept in the file).
#[test]
fn the_byte_budget_holds_and_evicts_the_oldest_first_in_every_process() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("budget.lc");
    let budget = 256 * 1024;
    let cache = FileCache::builder(&path)
        .max_bytes(budget)
        .open()
        .expect("open");
    let mut largest = 0;
    for n in 0..5000u64 {
        cache.set(format!("key{n}"), value(n, 0)).unwrap();
        largest = largest.max(cache.file_bytes().unwrap());
    }
    assert!(
        largest <= budget,
        "{largest} bytes with a budget of {budget}"
    );
    assert!(largest > budget * 3 / 4, "the budget is used: {largest}");
    let kept: Vec<u64> = (0..5000u64)
        .filter(|n| cache.get(&format!("key{n}")).unwrap().is_some())
        .collect();
    let oldest_kept = kept[0];
    assert_eq!(
        kept,
        (oldest_kept..5000).collect::<Vec<_>>(),
        "exactly the newest entries stay"
    );
    assert!(oldest_kept > 3000, "about 2,000 fit: {oldest_kept}");
    let stats = cache.stats();
    assert!(stats.seals > 0 && stats.drops > 0, "{stats:?}");
    assert_eq!(
        stats.evictions, oldest_kept,
        "every older entry was evicted once"
    );
    assert_eq!(stats.copied, 0, "no garbage, so no cleaning");
    // Another handle, without the option, applies the same budget.
    drop(cache);
    let other = FileCache::open(&path).unwrap();
    for n in 5000..8000u64 {
        other.set(format!("key{n}"), value(n, 0)).unwrap();
        assert!(other.file_bytes().unwrap() <= budget);
    }
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum::<u64>()
        + std::fs::metadata(&path).unwrap().len();
    assert!(on_disk <= budget, "{on_disk} bytes on disk");
    assert!(other.get(&"key7999".to_string()).unwrap().is_some());
    assert!(other.get(&"key5000".to_string()).unwrap().is_none());
    // Budget 0 removes it.
    drop(other);
    let unbounded = FileCache::builder(&path).max_bytes(0).open().unwrap();
    for n in 8000..11000u64 {
        unbounded.set(format!("key{n}"), value(n, 0)).unwrap();
    }
    assert!(unbounded.file_bytes().unwrap() > budget);
}

/// Cleaning, with overwrites: the garbage stays bounded, no write rewrites
/// the cache, and a handle and a process that read meanwhile see exactly
/// what was written.
#[test]
fn cleaning_keeps_garbage_bounded_and_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("cleaned.lc");
    let cache = FileCache::builder(&path)
        .segment_size(16 * 1024)
        .compact_when(0.5, 0)
        .open()
        .unwrap();
    let reader = FileCache::open(&path).unwrap();
    let mut model = BTreeMap::new();
    let mut rng = Rng::new(7);
    let mut most_garbage = 0;
    for round in 0..20_000u64 {
        let key = rng.next() % 500;
        let name = format!("key{key}");
        if rng.next().is_multiple_of(10) {
            cache.remove(&name).unwrap();
            model.remove(&name);
        } else {
            cache.set(name.clone(), value(key, round)).unwrap();
            model.insert(name, value(key, round));
        }
        if round % 97 == 0 {
            let probe = format!("key{}", rng.next() % 500);
            assert_eq!(
                reader.get(&probe).unwrap(),
                model.get(&probe).cloned(),
                "{probe}"
            );
        }
        most_garbage = most_garbage.max(cache.garbage_bytes().unwrap());
    }
    let live: u64 = model
        .iter()
        .map(|(k, v)| (48 + k.len() + v.len()).div_ceil(8) as u64 * 8)
        .sum();
    assert!(
        most_garbage < live + 64 * 1024,
        "garbage peaked at {most_garbage} bytes, live data is {live}"
    );
    assert!(
        cache.generation().unwrap() == 0,
        "no write rewrote the cache"
    );
    let stats = cache.stats();
    assert!(stats.drops > 10 && stats.copied > 0, "{stats:?}");
    assert_eq!(stats.evictions, 0, "cleaning evicts nothing: {stats:?}");
    assert_eq!(state_of(&cache), model);
    assert_eq!(state_of(&reader), model);
    assert_eq!(dump_in_child(&path), model);
    let report = cache.verify().unwrap();
    assert!(report.damage.is_empty(), "{report:?}");
    assert_eq!(report.live, model.len() as u64);
}

/// What a fresh process reads from the cache at `path`.
fn dump_in_child(path: &Path) -> BTreeMap<String, Vec<u8>> {
    open_in_child(path).1
}

/// Cleaning drops what has expired: a handle whose clock is behind finds
/// the expired entries gone once their segment was cleaned.
#[test]
fn cleaning_drops_expired_entries() {
    use layercache::{CacheExt, Clock, ManualClock};
    use std::sync::Arc;
    use std::time::Duration;

    let dir = TempDir::new().unwrap();
    let path = dir.path().join("expiring.lc");
    let clock = Arc::new(ManualClock::new());
    let start = clock.now();
    let cache = FileCache::builder(&path)
        .segment_size(16 * 1024)
        .compact_when(0.5, 0)
        .clock(clock.clone())
        .open()
        .unwrap();
    for n in 0..200u64 {
        cache
            .set_with_ttl(format!("short{n}"), value(n, 0), Duration::from_secs(5))
            .unwrap();
    }
    clock.advance(Duration::from_secs(5));
    // Overwrites of other keys make garbage, and so cleaning passes.
    for round in 0..40u64 {
        for n in 0..100u64 {
            cache.set(format!("other{n}"), value(n, round)).unwrap();
        }
    }
    let behind = FileCache::builder(&path)
        .clock(Arc::new(ManualClock::starting_at(start)))
        .open()
        .unwrap();
    let left = (0..200u64)
        .filter(|n| behind.get(&format!("short{n}")).unwrap().is_some())
        .count();
    assert_eq!(left, 0, "expired entries were dropped, not copied");
    for n in 0..100u64 {
        assert_eq!(
            behind.get(&format!("other{n}")).unwrap(),
            Some(value(n, 39))
        );
    }
}

/// The files of this cache this process still maps though no name in the
/// directory is theirs any more (dropped segments), from `/proc/self/maps`
/// (a mapping shows the name the file had when it was mapped, so the
/// inodes are compared).
fn unlinked_mappings(path: &Path) -> usize {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let present: std::collections::BTreeSet<u64> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().ino())
        .collect();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&name))
        .filter_map(|line| line.split_whitespace().nth(4)?.parse::<u64>().ok())
        .filter(|ino| !present.contains(ino))
        .count()
}

/// Entries of segments the budget dropped are gone from every read at
/// once (`get`, `keys`, `len`), and the dropped segments' maps (and so
/// their disk blocks) are released after at most 64 calls, the index
/// forgetting their entries a shard at a time (the unmap itself runs in
/// the background).
#[test]
fn evicted_entries_vanish_at_once_and_their_segments_are_unmapped() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("evicted.lc");
    let budget = 256 * 1024;
    let writer = FileCache::builder(&path).max_bytes(budget).open().unwrap();
    for n in 0..1000u64 {
        writer.set(format!("key{n}"), value(n, 0)).unwrap();
    }
    for n in 1000..6000u64 {
        writer.set(format!("key{n}"), value(n, 0)).unwrap();
        if n % 37 == 0 {
            let keys = writer.keys().unwrap().len();
            let len = writer.len().unwrap();
            assert_eq!(keys, len, "after key{n}: keys() and len() agree");
        }
    }
    let readable = (0..6000u64)
        .filter(|n| writer.get(&format!("key{n}")).unwrap().is_some())
        .count();
    assert_eq!(readable, writer.len().unwrap());
    for _ in 0..70 {
        writer.get(&"key5999".to_string()).unwrap();
    }
    if std::path::Path::new("/proc/self/maps").exists() {
        // The unmapping itself runs on a background thread of its own.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while unlinked_mappings(&path) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(unlinked_mappings(&path), 0, "dropped segments still mapped");
    }
}

// ---------------------------------------------------------------------------
// Hint files.

/// Reports `stats <hinted> <scanned>` for a fresh open of the cache at
/// `LAYERCACHE_ARG_PATH` (segments of 8 KiB), then every entry as
/// `entry <key>=<hex value>`.
#[test]
fn child_open_and_dump() {
    if !is_child("child_open_and_dump") {
        return;
    }
    let cache = open(Path::new(&arg("PATH")));
    let stats = cache.stats();
    report(format!("stats {} {}", stats.hinted, stats.scanned));
    for (key, value) in state_of(&cache) {
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        report(format!("entry {key}={hex}"));
    }
}

/// A fresh process's (hinted, scanned) counts and the cache it read.
fn open_in_child(path: &Path) -> ((u64, u64), BTreeMap<String, Vec<u8>>) {
    let mut child = Running::spawn(
        "open",
        child_command(
            "child_open_and_dump",
            &[("PATH", path.display().to_string())],
        ),
    );
    let finished = child.finish();
    finished.assert_success();
    let stats = finished
        .reports_of("stats")
        .next()
        .expect("stats")
        .to_string();
    let mut counts = stats.split(' ').map(|n| n.parse::<u64>().unwrap());
    let counts = (counts.next().unwrap(), counts.next().unwrap());
    let entries = finished
        .reports_of("entry")
        .map(|line| {
            let (key, hex) = line.split_once('=').expect("key=value");
            let value = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (key.to_string(), value)
        })
        .collect();
    (counts, entries)
}

/// The hint files beside `path`, by id.
fn hints(path: &Path) -> BTreeMap<u64, PathBuf> {
    beside(path, ".hint")
}

/// Waits until every sealed segment beside `path` has its hint (they are
/// written in the background).
fn wait_for_hints(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let sealed: Vec<u64> = sealed(path).keys().copied().collect();
        let hinted: Vec<u64> = hints(path).keys().copied().collect();
        if sealed == hinted {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hints {hinted:?} for segments {sealed:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Sealing writes a hint per segment; a fresh process indexes every
/// sealed segment from its hint, reading none of them, and gets exactly
/// what was written.
#[test]
fn a_fresh_process_opens_from_the_hints() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("hinted.lc");
    let model = write_rounds(&open(&path), 300, 4);
    wait_for_hints(&path);
    let segments = sealed(&path).len() as u64;
    assert!(segments > 10);
    let ((hinted, scanned), entries) = open_in_child(&path);
    assert_eq!((hinted, scanned), (segments, 0));
    assert_eq!(entries, model);
}

/// Damaged, truncated, stale and forged hints: a fresh process still reads
/// every entry exactly (it scans the segment instead), and a hint forged
/// to pass every checksum, whose entries point keys at other records,
/// gives misses, never another key's value.
#[test]
fn bad_hints_cost_a_scan_never_wrong_data() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bad.lc");
    let model = write_rounds(&open(&path), 300, 4);
    wait_for_hints(&path);
    let all = hints(&path);
    let (first, second) = {
        let mut ids = all.keys();
        (*ids.next().unwrap(), *ids.next().unwrap())
    };
    let original = std::fs::read(&all[&first]).unwrap();
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped header byte", {
            let mut b = original.clone();
            b[20] ^= 1;
            b
        }),
        ("a flipped entry byte", {
            let mut b = original.clone();
            b[64 + 9] ^= 1;
            b
        }),
        ("cut short", original[..original.len() - 7].to_vec()),
        ("empty", Vec::new()),
        (
            "another segment's hint",
            std::fs::read(&all[&second]).unwrap(),
        ),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&all[&first], &bytes).unwrap();
        let ((_, scanned), entries) = open_in_child(&path);
        assert!(scanned >= 1, "{what}: the segment was scanned");
        assert_eq!(entries, model, "{what}");
    }
    // Forged: the places of the second and third records swapped (the
    // first and the last are among those checked against the segment),
    // checksums made right.
    let mut forged = original.clone();
    let (a, b) = (64 + 32, 64 + 64);
    let first_offset: [u8; 8] = forged[a..a + 8].try_into().unwrap();
    let second_offset: [u8; 8] = forged[b..b + 8].try_into().unwrap();
    forged[a..a + 8].copy_from_slice(&second_offset);
    forged[b..b + 8].copy_from_slice(&first_offset);
    let body_crc = crc32(&forged[64..]);
    forged[44..48].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32(&forged[..60]);
    forged[60..64].copy_from_slice(&header_crc.to_le_bytes());
    std::fs::write(&all[&first], &forged).unwrap();
    let ((_, scanned), entries) = open_in_child(&path);
    assert_eq!(scanned, 0, "the forged hint was used");
    for (key, value) in &entries {
        assert_eq!(model.get(key), Some(value), "{key}: another key's value");
    }
    assert!(
        entries.len() + 2 >= model.len(),
        "at most the two lied about go missing"
    );
}

/// Once the last handle on a cache closes, no background thread of this
/// process writes a hint or unlinks a segment any more: the files there
/// then are the files there later (the review found a hint written into a
/// directory being deleted).
#[test]
fn nothing_changes_the_files_after_the_last_handle_closes() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("closed.lc");
    {
        let cache = FileCache::builder(&path)
            .segment_size(8192)
            .compact_when(0.5, 0)
            .open()
            .unwrap();
        write_rounds(&cache, 300, 6);
    }
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let at_close = names();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(names(), at_close);
    let hinted: Vec<u64> = hints(&path).keys().copied().collect();
    let sealed_ids: Vec<u64> = sealed(&path).keys().copied().collect();
    assert_eq!(
        hinted, sealed_ids,
        "every sealed segment has its hint by then"
    );
}

/// The base in the active segment's header is written in place, with no
/// checksum of its own. Damaged past the active segment's id (which no
/// drop can do), it is not trusted: the sealed segments are dropped (their
/// entries read as missing), the active segment's entries read exactly,
/// and nothing panics.
#[test]
fn a_damaged_base_drops_the_sealed_segments_and_nothing_else() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("base.lc");
    let model = write_rounds(&open(&path), 300, 4);
    assert!(sealed(&path).len() > 5);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.write_all_at(&u64::MAX.to_le_bytes(), 64).unwrap();
    drop(file);
    let cache = open(&path);
    for (key, value) in state_of(&cache) {
        assert_eq!(model.get(&key), Some(&value), "{key}: never another value");
    }
    assert!(sealed(&path).is_empty(), "{:?}", sealed(&path));
    // Writes after it, through seals, are all kept (a base left damaged
    // would drop every segment as soon as it is sealed).
    let mut after = BTreeMap::new();
    for n in 0..400u64 {
        let key = format!("after{n}");
        cache.set(key.clone(), value(n, 9)).unwrap();
        after.insert(key, value(n, 9));
    }
    assert!(sealed(&path).len() > 5, "the writes sealed segments");
    for (key, value) in &after {
        assert_eq!(cache.get(key).unwrap().as_ref(), Some(value), "{key}");
    }
    drop(cache);
    let again = open(&path);
    for (key, value) in &after {
        assert_eq!(
            again.get(key).unwrap().as_ref(),
            Some(value),
            "{key} reopened"
        );
    }
    assert!(again.verify().unwrap().damage.is_empty());
}
