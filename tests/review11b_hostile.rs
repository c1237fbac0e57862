//! Hostile review 11b of FileCache format 2: attacks on the fixes of
//! review 11 (commits 91ab4e9..29d64e0). Real files, threads and child
//! processes (the test binary run again, see `support`).
//!
//! It proved four bugs (hint files more readable than the cache, a forged
//! hint listing a removed key, a hole seen by one process and not another,
//! a forked child detaching its parent's threads); they pass since the
//! fixes that followed.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use layercache::{Cache, FileCache};
use tempfile::TempDir;

use support::layout::*;
use support::{Running, arg, arg_u64, child_command, is_child, report};

// ---------------------------------------------------------------------------
// Helpers: the on-disk layout (docs/file-format.md), read by hand.
// ---------------------------------------------------------------------------

fn small(path: &Path) -> layercache::FileCacheBuilder {
    FileCache::builder(path)
        .segment_size(8192)
        .compact_when(0.5, 0)
}

fn manual(path: &Path) -> layercache::FileCacheBuilder {
    FileCache::builder(path)
        .segment_size(8192)
        .compact_when(2.0, 0)
}

/// This process's umask, from /proc (reading it does not change it).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

// ---------------------------------------------------------------------------
// 1. Hint files and the cache's mode.
// ---------------------------------------------------------------------------

/// "The data file and the lock file are created with exactly the mode given
/// to `FileCacheBuilder::mode` (default `0o600`, readable and writable by
/// the owner only)" and "Forging one takes knowing the salt, which is in
/// the header of a file only its owner can read by default."
///
/// A hint file holds the segment's salt (bytes 40..44), every key's 64-bit
/// hash, length and CRC-32: `hint::write` creates it with
/// `File::options().create_new(true)` and no mode, so it gets 0o666 less
/// the umask (0o644 under the usual 022): readable by every user, beside a
/// cache whose files are 0o600.
#[test]
fn hint_files_are_no_more_readable_than_the_cache() {
    let Some(mask) = umask() else {
        support::skipped("hint mode", "no Umask in /proc/self/status");
        return;
    };
    if mask & 0o077 == 0o077 {
        support::skipped("hint mode", "the umask already hides files from others");
        return;
    }
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("mode.lc");
    {
        let cache = manual(&path).mode(0o600).open().unwrap();
        for n in 0..200u64 {
            cache.set(format!("user{n}"), vec![b'v'; 100]).unwrap();
        }
    }
    wait_for_hints(&path);
    let data_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(data_mode, 0o600);
    let hints = hints(&path);
    assert!(!hints.is_empty(), "no hint was written");
    let wider: Vec<String> = hints
        .values()
        .filter_map(|h| {
            let mode = std::fs::metadata(h).unwrap().permissions().mode() & 0o777;
            (mode & !data_mode != 0).then(|| format!("{} {mode:o}", h.display()))
        })
        .collect();
    assert!(
        wider.is_empty(),
        "umask {mask:03o}: the cache is {data_mode:o} but its hints (salt, key hashes, \
         key CRC-32s) are readable by others: {wider:?}"
    );
}

// ---------------------------------------------------------------------------
// 2. A forged hint: "costs misses, never wrong bytes".
// ---------------------------------------------------------------------------

/// "A hint that lies (forged to pass every check) can therefore only point
/// a key at a record of another key, which every read checks, so it costs
/// misses, never wrong bytes."
///
/// Forged: the hint entry of `a` keeps its own hash but describes the
/// record of `b` (offset, lengths and checksums copied from `b`'s entry).
/// Entry 1 is not sampled by `Hint::matches` (first, last, every 4096th).
/// `get(a)` misses, as promised; but `keys()` and `values()` check only
/// the key's checksum against the entry (which matches `b`'s record), not
/// that the key hashes to the entry's hash, so `b` is listed twice, and
/// after `remove(b)` (whose tombstone forgets only the entry under `b`'s
/// hash) the removed key and its old value are still listed.
#[test]
fn a_forged_hint_never_lists_a_removed_key_or_its_value() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("forged.lc");
    {
        let cache = manual(&path).open().unwrap();
        cache
            .set("first".into(), b"value-of-first".to_vec())
            .unwrap();
        cache.set("a".into(), b"value-of-a".to_vec()).unwrap();
        cache.set("b".into(), b"value-of-b".to_vec()).unwrap();
        for n in 0..120u64 {
            cache.set(format!("filler{n}"), vec![b'f'; 100]).unwrap();
        }
    }
    wait_for_hints(&path);
    let (&first, segment_path) = sealed(&path)
        .iter()
        .next()
        .map(|(k, v)| (k, v.clone()))
        .unwrap();
    let hint_path = hints(&path)[&first].clone();
    let segment = std::fs::read(&segment_path).unwrap();
    let mut hint = std::fs::read(&hint_path).unwrap();
    let entries = hint_entries(&hint);
    let find = |key: &[u8]| {
        entries
            .iter()
            .position(|e| key_at(&segment, e.offset & !(1 << 63)) == key)
            .unwrap()
    };
    let (ia, ib) = (find(b"a"), find(b"b"));
    assert!(ia != 0 && ia + 1 != entries.len(), "entry of a is sampled");
    let forged = HintEntry {
        hash: entries[ia].hash,
        ..entries[ib]
    };
    put_hint_entry(&mut hint, ia, forged);
    reseal_hint(&mut hint);
    std::fs::write(&hint_path, &hint).unwrap();

    let cache = manual(&path).open().unwrap();
    assert!(cache.stats().hinted >= 1, "the forged hint was not used");
    let mut wrong = Vec::new();
    if cache.get(&"a".to_string()).unwrap().is_some() {
        wrong.push("get(a) is not a miss".to_string());
    }
    let b_listed = cache.keys().unwrap().iter().filter(|k| *k == "b").count();
    if b_listed != 1 {
        wrong.push(format!("before remove: keys() lists b {b_listed} times"));
    }
    assert_eq!(
        cache.remove(&"b".to_string()).unwrap(),
        Some(b"value-of-b".to_vec())
    );
    assert_eq!(cache.get(&"b".to_string()).unwrap(), None);
    let keys = cache.keys().unwrap();
    if keys.iter().any(|k| k == "b") {
        wrong.push("after remove(b): keys() still lists b".into());
    }
    if cache.values().unwrap().iter().any(|v| v == b"value-of-b") {
        wrong.push("after remove(b): values() still holds b's value".into());
    }
    assert!(
        wrong.is_empty(),
        "forged hint gave wrong answers: {wrong:#?}"
    );
}

// ---------------------------------------------------------------------------
// 3. A hole seen by a process that maps it and by one that opens fresh.
// ---------------------------------------------------------------------------

/// Child: opens the cache (mapping every segment), reports `opened`, waits
/// for GO, then churns with cleaning on and reports what it reads for
/// `keep`.
#[test]
fn child_r11b_mapped_before_hole() {
    if !is_child("child_r11b_mapped_before_hole") {
        return;
    }
    let path = PathBuf::from(arg("PATH"));
    let cache = small(&path).open().unwrap();
    report(format!(
        "opened keep={}",
        cache
            .get(&"keep".to_string())
            .unwrap()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| "-".into())
    ));
    support::wait_for_file(Path::new(&arg("GO")));
    for n in 0..arg_u64("CHURN") {
        cache
            .set(format!("churn{}", n % 3), vec![b'c'; 120])
            .unwrap();
    }
    report(format!(
        "done keep={} stats={:?}",
        cache
            .get(&"keep".to_string())
            .unwrap()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| "-".into()),
        cache.stats()
    ));
}

/// docs/file-format.md, Assumptions: "Deleting a sealed segment by hand
/// ... loses its entries and those of every older segment (they read as
/// missing)". Hand deletion is outside the assumptions, but the docs name
/// its outcome, and the brief asks whether a process that mapped the
/// segment before it went and one that opens fresh agree.
///
/// They do not: the fresh process (hole at segment 2, segment 1 left out)
/// reads `keep` (in segment 1) as missing, and its `remove(keep)` finds no
/// entry and writes no tombstone. The child, which mapped every segment
/// before the deletion, still has `keep` live; its cleaning copies it
/// forward into the active segment, and the fresh process, which removed
/// it, reads it again.
#[test]
fn a_key_removed_after_a_hole_stays_removed() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("hole.lc");
    let go = dir.path().join("go");
    {
        let cache = manual(&path).open().unwrap();
        cache.set("keep".into(), b"keep=v1".to_vec()).unwrap();
        for n in 0..300u64 {
            cache.set(format!("filler{n}"), vec![b'f'; 100]).unwrap();
        }
    }
    wait_for_hints(&path);
    let segs = sealed(&path);
    assert!(segs.len() >= 3, "segments {segs:?}");
    let mut child = Running::spawn(
        "mapped before the hole",
        child_command(
            "child_r11b_mapped_before_hole",
            &[
                ("PATH", path.display().to_string()),
                ("GO", go.display().to_string()),
                ("CHURN", "3000".to_string()),
            ],
        ),
    );
    child.wait_until("opened", Duration::from_secs(10), |r| {
        r.iter().any(|l| l.starts_with("opened"))
    });
    // The hole: the second sealed segment, deleted by hand.
    let hole = *segs.keys().nth(1).unwrap();
    std::fs::remove_file(&segs[&hole]).unwrap();
    let _ = std::fs::remove_file(dir.path().join(format!("hole.lc.{hole}.hint")));
    let cache = manual(&path).open().unwrap();
    let before = cache.get(&"keep".to_string()).unwrap();
    let removed = cache.remove(&"keep".to_string()).unwrap();
    std::fs::write(&go, b"go").unwrap();
    let finished = child.finish();
    finished.assert_success();
    let after = cache.get(&"keep".to_string()).unwrap();
    let reopened = manual(&path).open().unwrap();
    drop(cache);
    let fresh = reopened.get(&"keep".to_string()).unwrap();
    let show = |v: &Option<Vec<u8>>| {
        v.as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "-".into())
    };
    let summary = format!(
        "hole at segment {hole}; child: {:?}; fresh process: before remove {}, remove returned {}, \
         after the child's cleaning {}, reopened {}",
        finished.reports,
        show(&before),
        show(&removed),
        show(&after),
        show(&fresh)
    );
    assert_eq!(before, None, "{summary}");
    assert_eq!(after, None, "a removed key came back: {summary}");
    assert_eq!(fresh, None, "a removed key came back: {summary}");
}

// ---------------------------------------------------------------------------
// 4. Guards.
// ---------------------------------------------------------------------------

/// "`max_bytes`, at least 64 KiB": 65,535 refused, 65,536 accepted.
#[test]
fn max_bytes_below_64_kib_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("budget.lc");
    assert!(FileCache::builder(&path).max_bytes(65_535).open().is_err());
    let cache = FileCache::builder(&path).max_bytes(65_536).open().unwrap();
    for n in 0..2000u64 {
        cache.set(format!("k{n}"), vec![b'x'; 200]).unwrap();
    }
    assert!(cache.file_bytes().unwrap() <= 65_536 + 256);
    assert!(cache.get(&"k1999".to_string()).unwrap().is_some());
}

/// The empty key (key length 0) through a seal, its hint and a reopen.
#[test]
fn the_empty_key_survives_a_seal_and_a_hinted_reopen() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("empty.lc");
    {
        let cache = manual(&path).open().unwrap();
        cache.set(String::new(), b"empty-key".to_vec()).unwrap();
        cache.set("x".into(), Vec::new()).unwrap();
        for n in 0..200u64 {
            cache.set(format!("filler{n}"), vec![b'f'; 100]).unwrap();
        }
    }
    wait_for_hints(&path);
    let cache = manual(&path).open().unwrap();
    assert!(cache.stats().hinted >= 1);
    assert_eq!(
        cache.get(&String::new()).unwrap(),
        Some(b"empty-key".to_vec())
    );
    assert_eq!(cache.get(&"x".to_string()).unwrap(), Some(Vec::new()));
    assert!(cache.keys().unwrap().contains(&String::new()));
    assert_eq!(
        cache.remove(&String::new()).unwrap(),
        Some(b"empty-key".to_vec())
    );
    drop(cache);
    let cache = manual(&path).open().unwrap();
    assert_eq!(cache.get(&String::new()).unwrap(), None);
}

/// Child: forks ROUNDS times while its hint threads run; each forked
/// grandchild writes (sealing segments of its own), opens a second handle
/// and drops both. Reports `round <n> ok`, or `round <n> failed <status>`,
/// or `round <n> hung`, and `done`.
#[test]
fn child_r11b_fork_and_drop() {
    if !is_child("child_r11b_fork_and_drop") {
        return;
    }
    let dir = PathBuf::from(arg("DIR"));
    for round in 0..arg_u64("ROUNDS") {
        let path = dir.join(format!("fork{round}.lc"));
        let cache = small(&path).open().unwrap();
        for n in 0..400u64 {
            cache.set(format!("parent{n}"), vec![b'p'; 100]).unwrap();
        }
        // SAFETY: the grandchild only uses the cache and the heap, then
        // `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for n in 0..300u64 {
                    cache.set(format!("child{n}"), vec![b'c'; 100]).unwrap();
                }
                assert!(cache.get(&"parent399".to_string()).unwrap().is_some());
                let second = small(&path).open().unwrap();
                assert!(second.get(&"child0".to_string()).unwrap().is_some());
                drop(cache);
                drop(second);
            }))
            .is_ok();
            // SAFETY: ends the grandchild without the exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut status = 0;
        let outcome = loop {
            // SAFETY: our child; a valid out-pointer.
            let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if waited == pid {
                break if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    "ok".to_string()
                } else {
                    format!("failed {status:#x}")
                };
            }
            if Instant::now() > deadline {
                // SAFETY: our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break "hung".to_string();
            }
            thread::sleep(Duration::from_millis(5));
        };
        let missing = (0..300u64)
            .filter(|n| cache.get(&format!("child{n}")).unwrap().is_none())
            .count();
        report(format!("round {round} {outcome} missing={missing}"));
    }
    report("done");
}

/// "A child forked while a parent holds a cache keeps working with the
/// handles it inherited" (docs/file-format.md, Assumptions, fork), and
/// `Shared::drop` joins background threads "only in the process that
/// started them". Observed: in the forked child, dropping its handles
/// panics in `Background::join_all` with "failed to join thread: Invalid
/// argument (os error 22)" in about half the rounds, even when the
/// parent's hint threads had finished before the fork (their handles not
/// yet joined). Likely cause: the parent's `Shared` dropped in the child
/// drops the parent's `JoinHandle`s (`pthread_detach` of thread ids that
/// do not exist in the child, whose descriptors glibc has reused for the
/// child's own new threads), so the child's own hint thread is marked
/// detached and its join fails. With another thread of the parent inside
/// std's panic machinery at the fork, the panic then hangs the child
/// forever (seen in a first version of this test). The forks are made in a
/// child process of their own, so that no other test thread holds std's
/// panic or output locks at the fork.
#[test]
fn a_forked_child_drops_its_handles_while_hint_threads_run() {
    let dir = TempDir::new().unwrap();
    let finished = Running::spawn(
        "fork and drop",
        child_command(
            "child_r11b_fork_and_drop",
            &[
                ("DIR", dir.path().display().to_string()),
                ("ROUNDS", "12".to_string()),
            ],
        ),
    )
    .finish();
    let bad: Vec<&String> = finished
        .reports
        .iter()
        .filter(|l| l.starts_with("round") && !l.contains(" ok missing=0"))
        .collect();
    assert!(
        finished.status.success() && bad.is_empty(),
        "bad rounds {bad:?}\nstderr: {}",
        finished.stderr
    );
}

/// Child: writes with no descriptor left (RLIMIT_NOFILE at the lowest free
/// number), so every seal fails at `.next`, then with descriptors back.
#[test]
fn child_r11b_no_descriptor_at_seal() {
    if !is_child("child_r11b_no_descriptor_at_seal") {
        return;
    }
    let path = PathBuf::from(arg("PATH"));
    let hooked = Arc::new(AtomicU64::new(0));
    let seen = hooked.clone();
    let cache = small(&path)
        .on_compaction_error(move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
        })
        .open()
        .unwrap();
    let lowest = std::fs::File::open("/dev/null").unwrap();
    let free = std::os::fd::AsRawFd::as_raw_fd(&lowest) as u64;
    drop(lowest);
    let set = |cur: u64| {
        let limit = libc::rlimit {
            rlim_cur: cur,
            rlim_max: 20_000,
        };
        // SAFETY: setrlimit reads a live struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    };
    set(free);
    let mut failed = 0;
    for n in 0..300u64 {
        match cache.set(format!("key{n}"), format!("key{n}=v").into_bytes()) {
            Ok(()) => report(format!("ack key{n}")),
            Err(_) => failed += 1,
        }
    }
    set(20_000);
    for n in 300..600u64 {
        cache
            .set(format!("key{n}"), format!("key{n}=v").into_bytes())
            .unwrap();
        report(format!("ack key{n}"));
    }
    report(format!(
        "done failed={failed} hooked={} stats={:?}",
        hooked.load(Ordering::Relaxed),
        cache.stats()
    ));
}

/// "A write's result is the write's alone: when a seal ... fails, the
/// write returns `Ok`, the error goes to `on_compaction_error`": with no
/// descriptor for `.next`, every acknowledged write must read back, in a
/// fresh process, after descriptors return.
#[test]
fn writes_acknowledged_while_seals_fail_for_descriptors_are_kept() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("emfile.lc");
    let finished = Running::spawn(
        "no descriptor at seal",
        child_command(
            "child_r11b_no_descriptor_at_seal",
            &[("PATH", path.display().to_string())],
        ),
    )
    .finish();
    finished.assert_success();
    let done = finished
        .reports
        .iter()
        .find(|l| l.starts_with("done"))
        .unwrap()
        .clone();
    assert!(!done.contains("hooked=0"), "no seal failed: {done}");
    let cache = manual(&path).open().unwrap();
    let mut lost = Vec::new();
    for line in &finished.reports {
        if let Some(key) = line.strip_prefix("ack ") {
            let want = format!("{key}=v").into_bytes();
            if cache.get(&key.to_string()).unwrap() != Some(want) {
                lost.push(key.to_string());
            }
        }
    }
    assert!(lost.is_empty(), "{done}; lost {lost:?}");
}

/// "A value that fails its checksum reads as missing, and so does an entry
/// whose key or record header is damaged after it was indexed": with the
/// `key_matched` shortcut, `get` relies on comparing the key bytes; `keys`
/// and `values` on the key checksum. A key byte changed on disk after
/// indexing (in the active segment, and in a sealed one loaded from its
/// hint) must read as missing everywhere, under either name.
#[test]
fn a_key_damaged_after_indexing_is_missing_from_get_keys_and_values() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("damage.lc");
    {
        let cache = manual(&path).open().unwrap();
        cache.set("sealed-abc".into(), b"SEALED".to_vec()).unwrap();
        for n in 0..120u64 {
            cache.set(format!("filler{n}"), vec![b'f'; 100]).unwrap();
        }
    }
    wait_for_hints(&path);
    let cache = manual(&path).open().unwrap();
    cache.set("active-abc".into(), b"ACTIVE".to_vec()).unwrap();
    assert!(cache.get(&"sealed-abc".to_string()).unwrap().is_some());
    // Flip the last key byte of both records, in place.
    let mut files: Vec<PathBuf> = sealed(&path).into_values().collect();
    files.push(path.clone());
    let mut flipped = 0;
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for key in [b"sealed-abc".as_slice(), b"active-abc".as_slice()] {
            if let Some(at) = bytes.windows(key.len()).position(|w| w == key) {
                let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
                f.write_all_at(b"d", (at + key.len() - 1) as u64).unwrap();
                flipped += 1;
            }
        }
    }
    assert_eq!(flipped, 2);
    let mut wrong = Vec::new();
    for key in ["sealed-abc", "sealed-abd", "active-abc", "active-abd"] {
        if let Some(v) = cache.get(&key.to_string()).unwrap() {
            wrong.push(format!("get({key}) = {}", String::from_utf8_lossy(&v)));
        }
    }
    for key in cache.keys().unwrap() {
        if key.ends_with("-abc") || key.ends_with("-abd") {
            wrong.push(format!("keys() lists {key}"));
        }
    }
    for value in cache.values().unwrap() {
        if value == b"SEALED" || value == b"ACTIVE" {
            wrong.push(format!(
                "values() holds {}",
                String::from_utf8_lossy(&value)
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}

/// Child: writes `c<k>` = sequence numbers under the byte budget, with its
/// own segment size, and cleaning on; reports `last c<k> <seq>` at the end.
#[test]
fn child_r11b_budget_writer() {
    if !is_child("child_r11b_budget_writer") {
        return;
    }
    let path = PathBuf::from(arg("PATH"));
    let cache = FileCache::builder(&path)
        .segment_size(arg_u64("SEGMENT"))
        .max_bytes(256 * 1024)
        .compact_when(0.3, 0)
        .open()
        .unwrap();
    let mut last = BTreeMap::new();
    let mut rng = support::Rng::new(11);
    for seq in 0..4000u64 {
        let k = rng.below(60);
        let pad = rng.below(200) as usize;
        let mut value = format!("c{k}:{seq}:").into_bytes();
        value.resize(value.len() + pad, b'.');
        cache.set(format!("c{k}"), value).unwrap();
        last.insert(k, seq);
    }
    for (k, seq) in last {
        report(format!("last c{k} {seq}"));
    }
    report("done");
}

/// The byte budget and cleaning across two processes with different
/// segment sizes (8 KiB here, 32 KiB there: an eighth of the budget), one
/// key set each: "The files exceed the budget by at most the records of
/// the write in progress", and no key ever reads an older value than its
/// last write (an evicted key reads as missing).
#[test]
fn budget_and_cleaning_across_processes_with_different_segment_sizes() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("budget2.lc");
    let cache = FileCache::builder(&path)
        .segment_size(8192)
        .max_bytes(256 * 1024)
        .compact_when(0.3, 0)
        .open()
        .unwrap();
    let mut child = Running::spawn(
        "budget writer",
        child_command(
            "child_r11b_budget_writer",
            &[
                ("PATH", path.display().to_string()),
                ("SEGMENT", (1u64 << 20).to_string()),
            ],
        ),
    );
    let mut last = BTreeMap::new();
    let mut rng = support::Rng::new(7);
    let mut over = Vec::new();
    for seq in 0..4000u64 {
        let k = rng.below(60);
        let pad = rng.below(200) as usize;
        let mut value = format!("p{k}:{seq}:").into_bytes();
        value.resize(value.len() + pad, b'.');
        cache.set(format!("p{k}"), value).unwrap();
        last.insert(format!("p{k}"), seq);
        let on_disk: u64 = sealed(&path)
            .values()
            .chain(std::iter::once(&path))
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        if on_disk > 256 * 1024 + 2 * 8192 {
            over.push(on_disk);
        }
    }
    let finished = child.finish();
    finished.assert_success();
    for line in &finished.reports {
        if let Some(rest) = line.strip_prefix("last ") {
            let (key, seq) = rest.split_once(' ').unwrap();
            last.insert(key.to_string(), seq.parse().unwrap());
        }
    }
    let mut older = Vec::new();
    for (key, seq) in &last {
        if let Some(v) = cache.get(key).unwrap() {
            let text = String::from_utf8_lossy(&v).into_owned();
            let got: u64 = text.split(':').nth(1).unwrap().parse().unwrap();
            if got != *seq {
                older.push(format!("{key}: read {got}, last {seq}"));
            }
        }
    }
    assert!(older.is_empty(), "older values: {older:?}");
    assert!(
        over.len() < 5,
        "segment files over the budget (by more than two segments) after {} writes: max {:?}",
        over.len(),
        over.iter().max()
    );
    assert!(cache.file_bytes().unwrap() <= 256 * 1024 + 8192);
}
