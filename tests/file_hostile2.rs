//! A second hostile review of FileCache, aimed where the first one
//! (`file_hostile.rs`) did not go: fork at the moment a `Periodic` handle
//! starts its sync thread, fork at the moment the first cache of a process
//! installs its fork handlers, planted symbolic links beside the cache,
//! values that carry records of their own, descriptor counts over thousands
//! of open/drop cycles and forks, `Command` spawning through `fork` from
//! many threads, and readers that never write while another process
//! compacts over and over.
//!
//! Five of these fail on the code reviewed (each states the flaw):
//! - `a_fork_while_a_periodic_handle_starts_its_sync_thread_does_not_hang_the_child`
//! - `a_fork_while_the_first_cache_of_a_process_opens_does_not_hang_the_child`
//! - `a_symlink_planted_at_the_compaction_path_does_not_clobber_its_target`
//! - `a_symlink_planted_at_the_lock_path_does_not_clobber_its_target`
//! - `a_value_that_holds_a_record_does_not_become_an_entry_when_its_header_is_damaged`
//!
//! The others are attacks that held.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use layercache::{Cache, Durability, FileCache};
use tempfile::TempDir;

use support::{Running, arg, child_command, is_child, reap, report, value_of};

/// A page of `u64`s shared with forked children (`MAP_SHARED`), for them
/// to say how far they got.
struct SharedPage {
    ptr: *mut AtomicU64,
    slots: usize,
}

// SAFETY: the page is only ever accessed through atomics.
unsafe impl Send for SharedPage {}
unsafe impl Sync for SharedPage {}

impl SharedPage {
    fn new(slots: usize) -> SharedPage {
        // SAFETY: an anonymous shared mapping of fresh memory (zeroed).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                slots * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap a shared page");
        SharedPage {
            ptr: ptr.cast(),
            slots,
        }
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.slots);
        // SAFETY: in bounds, page aligned, zero-initialised, atomics only.
        unsafe { &*self.ptr.add(i) }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.slots * 8) };
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn threads_now() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

// ---------------------------------------------------------------------------
// 1. fork while a Periodic handle starts the file's sync thread.
// ---------------------------------------------------------------------------

const FLUSHER_FILES: usize = 120;
const FLUSHER_MAX_FORKS: usize = 400;

/// `Shared::flush_within` (src/file/shared.rs) holds the state's `forking`
/// mutex while it spawns the `Periodic` sync thread, and
/// `Shared::after_fork` takes that same mutex in a forked child at the
/// child's first use of an inherited handle. A fork by any other thread
/// while one thread opens the first `Periodic` handle on a file (a thread
/// spawn: tens of microseconds) leaves the mutex locked forever in the
/// child, whose first `get` on any handle of that file then hangs. This is
/// not the limit the docs admit ("a handle whose first use in the child
/// races with a second fork in that child"): here the parent did nothing
/// but open a handle.
///
/// Each of `FLUSHER_FILES` files has a `Buffered` handle (its state, with
/// no sync thread). One thread opens a `Periodic` handle on each in turn
/// while the main thread forks as fast as it can; every child reads one
/// key through each `Buffered` handle and exits. Every child must exit
/// within 8 s (a healthy one takes well under a second).
#[test]
fn a_fork_while_a_periodic_handle_starts_its_sync_thread_does_not_hang_the_child() {
    let dir = TempDir::new().expect("a temporary directory");
    let paths: Vec<PathBuf> = (0..FLUSHER_FILES)
        .map(|i| dir.path().join(format!("f{i}.lc")))
        .collect();
    let handles: Vec<FileCache> = paths
        .iter()
        .map(|path| {
            let cache = FileCache::builder(path)
                .growth(1 << 16)
                .open()
                .expect("open");
            cache.set("k".to_string(), b"v".to_vec()).expect("set");
            cache
        })
        .collect();
    let page = SharedPage::new(FLUSHER_MAX_FORKS + 1);
    let opening = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let opener = {
        let (opening, done) = (opening.clone(), done.clone());
        thread::spawn(move || {
            let mut periodic = Vec::new();
            for (i, path) in paths.iter().enumerate() {
                opening.store(i, Ordering::SeqCst);
                periodic.push(
                    FileCache::builder(path)
                        .durability(Durability::Periodic(Duration::from_secs(5)))
                        .open()
                        .expect("open Periodic"),
                );
            }
            done.store(true, Ordering::SeqCst);
            periodic
        })
    };
    let mut forks = Vec::new(); // (pid, file being opened when forked)
    while !done.load(Ordering::SeqCst) && forks.len() < FLUSHER_MAX_FORKS {
        let at = opening.load(Ordering::SeqCst);
        let slot = forks.len();
        // SAFETY: the child only reads through handles, stores to a shared
        // page and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            for (i, cache) in handles.iter().enumerate() {
                page.slot(slot).store(i as u64 + 1, Ordering::SeqCst);
                if cache.get(&"k".to_string()).ok().flatten().as_deref() != Some(b"v") {
                    // SAFETY: ends the child without running anything else.
                    unsafe { libc::_exit(3) };
                }
            }
            page.slot(slot).store(u64::MAX, Ordering::SeqCst);
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        forks.push((pid, at));
    }
    let periodic = opener.join().expect("the opener");
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut hung = Vec::new();
    let mut other = Vec::new();
    for (slot, (pid, at)) in forks.iter().enumerate() {
        let how = reap(*pid, deadline);
        let got = page.slot(slot).load(Ordering::SeqCst);
        match how.as_str() {
            "ok" => {}
            "hung" => hung.push(format!(
                "child {slot} hung in its first get on file {} (forked while file {at} was being opened)",
                got.saturating_sub(1)
            )),
            _ => other.push(format!("child {slot}: {how}")),
        }
    }
    drop(periodic);
    assert!(other.is_empty(), "children failed: {other:?}");
    assert!(
        hung.is_empty(),
        "{} of {} children hung:\n{}",
        hung.len(),
        forks.len(),
        hung.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 2. fork while the process's first cache installs the fork handlers.
// ---------------------------------------------------------------------------

const FIRST_OPEN_ATTEMPTS: usize = 20;

/// In a fresh process (no cache opened yet): one thread opens the first
/// cache while the main thread forks as fast as it can until that open
/// returns; each child opens a cache of its own and exits. Reports
/// `forks <n>`, and `child <how it ended>` for each child that did not
/// exit normally within 3 s.
#[test]
fn child_first_open_races_fork() {
    if !is_child("child_first_open_races_fork") {
        return;
    }
    let dir = PathBuf::from(arg("DIR"));
    let go = Arc::new(AtomicBool::new(false));
    let opener = {
        let (go, path) = (go.clone(), dir.join("first.lc"));
        thread::spawn(move || {
            while !go.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            FileCache::open(path).map(|_| ()).map_err(|e| e.to_string())
        })
    };
    let mut pids = Vec::new();
    go.store(true, Ordering::Release);
    while !opener.is_finished() && pids.len() < 200 {
        let path = dir.join(format!("child-{}.lc", pids.len()));
        // SAFETY: the child opens a cache and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = match FileCache::open(&path) {
                Ok(_) => 0,
                Err(_) => 2,
            };
            // SAFETY: ends the child without running anything else.
            unsafe { libc::_exit(code) };
        }
        pids.push(pid);
    }
    opener.join().expect("the opener").expect("the first open");
    report(format!("forks {}", pids.len()));
    let deadline = Instant::now() + Duration::from_secs(3);
    for pid in pids {
        let how = reap(pid, deadline);
        if how != "ok" {
            report(format!("child {how}"));
        }
    }
}

/// `install_fork_handlers` (src/file/shared.rs) runs in a `std::sync::Once`
/// that opens `/dev/null` and calls `pthread_atfork`. A fork by another
/// thread while the first cache of a process is being opened (inside that
/// `Once`, before the handlers exist) leaves the `Once` running forever in
/// the child: the child's first `FileCache::open`, of any file, hangs.
///
/// Runs up to `FIRST_OPEN_ATTEMPTS` fresh processes of
/// `child_first_open_races_fork` (stopping at the first failure); every
/// child they fork must open its cache and exit.
#[test]
fn a_fork_while_the_first_cache_of_a_process_opens_does_not_hang_the_child() {
    let dir = TempDir::new().expect("a temporary directory");
    let mut forks = 0;
    let mut failures = Vec::new();
    for attempt in 0..FIRST_OPEN_ATTEMPTS {
        let sub = dir.path().join(format!("a{attempt}"));
        std::fs::create_dir(&sub).expect("a directory");
        let mut running = Running::spawn(
            format!("attempt {attempt}"),
            child_command(
                "child_first_open_races_fork",
                &[("DIR", sub.display().to_string())],
            ),
        );
        let finished = running.finish();
        finished.assert_success();
        forks += finished
            .reports_of("forks")
            .map(|n| n.parse::<usize>().expect("a count"))
            .sum::<usize>();
        failures.extend(
            finished
                .reports_of("child")
                .map(|how| format!("attempt {attempt}: a child {how}")),
        );
        if !failures.is_empty() {
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {forks} children forked during a first open failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 3. A symbolic link planted at `<path>.compact`.
// ---------------------------------------------------------------------------

/// Compaction creates `<real path>.compact` with `O_CREAT|O_TRUNC` and no
/// `O_NOFOLLOW`/`O_EXCL` (`identity::create_replacing`), gives it the cache
/// file's owner and mode, and renames it over the cache. Whoever may write
/// the cache's directory (a group sharing a cache, as `mode(0o660)`'s docs
/// invite) can plant a symbolic link there between two loads: the next
/// compaction, in whatever process runs it (root, another user), truncates
/// the link's target, fills it with cache records, `fchown`s and `chmod`s
/// it, and the cache path becomes a link to it. A file outside the cache's
/// directory must come out of a compaction untouched.
#[test]
fn a_symlink_planted_at_the_compaction_path_does_not_clobber_its_target() {
    let dir = TempDir::new().expect("a temporary directory");
    let elsewhere = TempDir::new().expect("another directory");
    let victim = elsewhere.path().join("precious.txt");
    std::fs::write(&victim, b"precious data that is not a cache\n").expect("victim");
    let path = dir.path().join("cache.lc");
    let cache = FileCache::builder(&path)
        .compact_when(2.0, 0)
        .open()
        .expect("open");
    for i in 0..10 {
        let key = format!("k{i}");
        cache.set(key.clone(), value_of(&key)).expect("set");
    }
    let mut compact = path.as_os_str().to_owned();
    compact.push(".compact");
    std::os::unix::fs::symlink(&victim, PathBuf::from(compact)).expect("plant the link");
    let result = cache.compact();
    let now = std::fs::read(&victim).expect("read the victim");
    assert_eq!(
        String::from_utf8_lossy(&now),
        "precious data that is not a cache\n",
        "compaction ({result:?}) wrote {} bytes into a file outside the cache; the cache path is now {}",
        now.len(),
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            "a symbolic link to it"
        } else {
            "a regular file"
        }
    );
}

// ---------------------------------------------------------------------------
// 4. A value that carries a record of its own, and one damaged byte.
// ---------------------------------------------------------------------------

/// The bytes of the records of a fresh cache file holding only `key` =
/// `value` (everything after the 4096-byte header).
fn encoded_record(dir: &Path, key: &str, value: &[u8]) -> Vec<u8> {
    let path = dir.join("scratch.lc");
    {
        let cache = FileCache::open(&path).expect("open scratch");
        cache.set(key.to_string(), value.to_vec()).expect("set");
    }
    let bytes = std::fs::read(&path).expect("read scratch");
    std::fs::remove_file(&path).expect("remove scratch");
    bytes[4096..].to_vec()
}

fn committed_of(path: &Path) -> usize {
    let bytes = std::fs::read(path).expect("read");
    u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize
}

/// Stores `victim` = genuine, then a "carrier" key whose value holds
/// `forged` (the bytes of a whole record) at an 8-aligned file offset,
/// flips one bit of the carrier's record header, reopens, and checks that
/// `victim` is not read as FORGED.
fn a_damaged_carrier_does_not_free_its_image(dir: &Path, forged: impl FnOnce(&Path) -> Vec<u8>) {
    let path = dir.join("cache.lc");
    let _ = std::fs::remove_file(&path);
    let carrier_at = {
        let cache = FileCache::builder(&path)
            .compact_when(2.0, 0)
            .open()
            .expect("open");
        // An older record of victim = FORGED, in this very file.
        cache
            .set("victim".to_string(), b"FORGED".to_vec())
            .expect("set victim");
        let forged = forged(&path);
        cache
            .set("victim".to_string(), b"genuine".to_vec())
            .expect("set victim");
        let carrier_at = committed_of(&path);
        // The carrier's value starts after its 48-byte header and the
        // 7-byte key: pad it so the image starts 8-aligned.
        let value_at = carrier_at + 48 + "carrier".len();
        let mut carrier = vec![b'.'; value_at.next_multiple_of(8) - value_at];
        carrier.extend_from_slice(&forged);
        carrier.extend_from_slice(b" and the rest of an innocent value");
        cache
            .set("carrier".to_string(), carrier.clone())
            .expect("set carrier");
        assert_eq!(
            cache.get(&"victim".to_string()).expect("get"),
            Some(b"genuine".to_vec())
        );
        assert_eq!(
            cache.get(&"carrier".to_string()).expect("get"),
            Some(carrier)
        );
        carrier_at as u64
    };
    // One bit of damage in carrier's record header (its kind byte).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the file");
    let mut byte = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, carrier_at + 8).expect("read");
    byte[0] ^= 0x40;
    std::os::unix::fs::FileExt::write_all_at(&file, &byte, carrier_at + 8).expect("damage");
    drop(file);
    let cache = FileCache::open(&path).expect("reopen");
    let victim = cache.get(&"victim".to_string()).expect("get victim");
    assert!(
        victim.as_deref() != Some(b"FORGED".as_slice()),
        "victim reads as {:?}: bytes from inside another key's value; verify says {:?}",
        victim.map(|v| String::from_utf8_lossy(&v).into_owned()),
        cache.verify().expect("verify").damage
    );
    assert_eq!(
        victim,
        Some(b"genuine".to_vec()),
        "one bit lost nothing else"
    );
}

/// "A damaged record reads as missing, never as wrong bytes." After a
/// damaged record header, the scan resyncs at the next 8-aligned offset
/// holding something that parses as a record (`log::resync`), which may be
/// inside the damaged record's own value. A value is arbitrary bytes (a
/// cached file, a cache file's backup, a value an attacker chose): if it
/// holds a well-formed record, one flipped bit in its record's header
/// would make the embedded record live, and `get` of a key that was never
/// set to it would return its bytes.
///
/// Format version 1 could not tell a record from its image. Format 2's
/// record checksum covers the file's salt and the record's own offset, so
/// an image, from another file or from this one, is not a record.
#[test]
fn a_value_that_holds_a_record_does_not_become_an_entry_when_its_header_is_damaged() {
    let dir = TempDir::new().expect("a temporary directory");
    // The image of a record from another cache file.
    let scratch = TempDir::new().expect("another directory");
    a_damaged_carrier_does_not_free_its_image(dir.path(), |_| {
        encoded_record(scratch.path(), "victim", b"FORGED")
    });
    // The image of a record of this very file (victim's older record,
    // which starts right after the header).
    a_damaged_carrier_does_not_free_its_image(dir.path(), |path| {
        let bytes = std::fs::read(path).expect("read");
        bytes[4096..committed_of(path)].to_vec()
    });
}

/// The same for `<path>.lock`: it is opened following symbolic links
/// (`identity::open_or_create`), its first page reserved (`fallocate`,
/// which extends a shorter target) and the data epoch stored in its first
/// 8 bytes whenever a data file is created or compacted. A link planted
/// there before a cache is created makes the process overwrite the start of
/// the link's target.
#[test]
fn a_symlink_planted_at_the_lock_path_does_not_clobber_its_target() {
    let dir = TempDir::new().expect("a temporary directory");
    let elsewhere = TempDir::new().expect("another directory");
    let victim = elsewhere.path().join("precious.txt");
    std::fs::write(&victim, b"precious data that is not a lock\n").expect("victim");
    let path = dir.path().join("cache.lc");
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    std::os::unix::fs::symlink(&victim, PathBuf::from(lock)).expect("plant the link");
    let opened = FileCache::open(&path).map(|cache| cache.compact());
    let now = std::fs::read(&victim).expect("read the victim");
    assert!(
        now == b"precious data that is not a lock\n",
        "open and compact ({opened:?}) rewrote a file outside the cache: it is {} bytes now, starting {:?}",
        now.len(),
        String::from_utf8_lossy(&now[..now.len().min(33)])
    );
}

// ---------------------------------------------------------------------------
// 5. Descriptors and threads over thousands of open/drop cycles and forks.
// ---------------------------------------------------------------------------

/// In a fresh process: 2000 open/use/drop cycles on three files (one by a
/// symbolic link) with options varied per cycle (each durability, growth,
/// size limits, compaction after every write), an explicit compaction every
/// 50th, and every 100th a fork whose child uses an inherited handle, opens
/// and drops 30 handles, and exits 0 only if its descriptor count came back.
/// Reports `fds <before> <after>`, `threads <before> <after>` and
/// `fork <how it ended>` for each child that did not exit 0.
#[test]
fn child_churn() {
    if !is_child("child_churn") {
        return;
    }
    let dir = PathBuf::from(arg("DIR"));
    let paths = [dir.join("a.lc"), dir.join("b.lc"), dir.join("link-to-a.lc")];
    std::os::unix::fs::symlink(dir.join("a.lc"), &paths[2]).expect("link");
    let open = |i: u64, path: &Path| {
        let builder = FileCache::builder(path)
            .growth(4096 * (1 + i % 7))
            .max_value_len(1024 + (i as usize % 3) * 1024)
            .max_key_len(16 + (i as usize % 5));
        let builder = match i % 4 {
            0 => builder.durability(Durability::Periodic(Duration::from_millis(1))),
            1 => builder.durability(Durability::Sync),
            2 => builder.compact_when(0.0, 0),
            _ => builder,
        };
        builder.open().expect("open")
    };
    // The first open keeps `/dev/null` open for the life of the process
    // (for the fork handlers): count from after it.
    drop(open(3, &dir.join("warm-up.lc")));
    let fds_before = open_fds();
    let threads_before = threads_now();
    let mut failed = Vec::new();
    for i in 0..2000u64 {
        let cache = open(i, &paths[(i % 3) as usize]);
        let key = format!("k{}", i % 40);
        cache.set(key.clone(), value_of(&key)).expect("set");
        assert_eq!(cache.get(&key).expect("get"), Some(value_of(&key)));
        if i.is_multiple_of(7) {
            cache.remove(&key).expect("remove");
        }
        if i.is_multiple_of(50) {
            cache.compact().expect("compact");
        }
        if i.is_multiple_of(100) {
            // SAFETY: the child uses caches and leaves with `_exit`.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork");
            if pid == 0 {
                let start = open_fds();
                let ok = cache.set(key.clone(), value_of(&key)).is_ok()
                    && cache.get(&key).ok().flatten() == Some(value_of(&key));
                for j in 0..30 {
                    let other = open(j, &paths[(j % 3) as usize]);
                    let _ = other.get(&key);
                }
                let end = open_fds();
                // The inherited handle's state in the child holds its own
                // lock descriptor, data descriptor: at most a few more.
                let code = if !ok {
                    2
                } else if end > start + 4 {
                    3
                } else {
                    0
                };
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(code) };
            }
            let how = reap(pid, Instant::now() + Duration::from_secs(20));
            if how != "ok" {
                failed.push(how);
            }
        }
    }
    // Sync threads end once their state is gone: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (open_fds() > fds_before || threads_now() > threads_before) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    report(format!("fds {fds_before} {}", open_fds()));
    report(format!("threads {threads_before} {}", threads_now()));
    for how in failed {
        report(format!("fork {how}"));
    }
}

/// Proves that nothing accumulates: after 2000 open/use/drop cycles with
/// every durability (one sync thread started per `Periodic` open), varied
/// growth and size limits, compactions, and 20 forks whose children use
/// an inherited handle and open 30 more, the process has exactly the
/// descriptors and threads it had before, and every child's count came
/// back too.
#[test]
fn thousands_of_open_drop_cycles_and_forks_leak_no_descriptor_or_thread() {
    let dir = TempDir::new().expect("a temporary directory");
    let mut running = Running::spawn(
        "churn",
        child_command("child_churn", &[("DIR", dir.path().display().to_string())]),
    );
    let finished = running.finish();
    finished.assert_success();
    let pair = |word: &str| -> (usize, usize) {
        let line = finished
            .reports_of(word)
            .next()
            .unwrap_or_else(|| panic!("no {word} report\n{}", finished.diagnostics()));
        let mut it = line.split(' ').map(|n| n.parse().expect("a number"));
        (it.next().expect("before"), it.next().expect("after"))
    };
    let (fds_before, fds_after) = pair("fds");
    let (threads_before, threads_after) = pair("threads");
    let forks: Vec<&str> = finished.reports_of("fork").collect();
    assert!(forks.is_empty(), "children failed: {forks:?}");
    assert_eq!(fds_after, fds_before, "descriptors before and after");
    assert_eq!(threads_after, threads_before, "threads before and after");
}

// ---------------------------------------------------------------------------
// 6. std::process::Command spawning through fork() from many threads.
// ---------------------------------------------------------------------------

/// Proves that spawning processes through `fork` (a `pre_exec` hook makes
/// std fork instead of `posix_spawn`, so the fork handlers run and the
/// prepare handler takes the registry's mutex) from three threads, while
/// two threads open, write, read, compact and drop caches on two files (so
/// the registry is taken and released all the time), neither deadlocks nor
/// loses a write: 3 x 80 spawns of `true` all succeed, and every write any
/// cache thread acknowledged reads back. A watchdog fails the test after
/// 60 s.
#[test]
fn command_spawns_through_fork_from_many_threads_while_caches_open_and_drop() {
    let dir = TempDir::new().expect("a temporary directory");
    let paths = Arc::new([dir.path().join("x.lc"), dir.path().join("y.lc")]);
    let done = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let watchdog = {
        let finished = finished.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while finished.load(Ordering::SeqCst) < 5 {
                assert!(
                    Instant::now() < deadline,
                    "deadlock: threads never finished"
                );
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let spawners: Vec<_> = (0..3)
        .map(|_| {
            let finished = finished.clone();
            thread::spawn(move || {
                for _ in 0..80 {
                    let mut command = Command::new("true");
                    command
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    // SAFETY: the hook does nothing; it only makes std fork.
                    unsafe { command.pre_exec(|| Ok(())) };
                    let status = command.status().expect("spawn true");
                    assert!(status.success());
                }
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let users: Vec<_> = (0..2)
        .map(|t| {
            let (paths, done, finished) = (paths.clone(), done.clone(), finished.clone());
            thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let path = &paths[(i % 2) as usize];
                    let cache = FileCache::builder(path)
                        .compact_when(0.5, 4096)
                        .open()
                        .expect("open");
                    let key = format!("t{t}-{i}");
                    cache.set(key.clone(), value_of(&key)).expect("set");
                    acked.push((path.clone(), key));
                    if i.is_multiple_of(25) {
                        cache.compact().expect("compact");
                    }
                    drop(cache);
                    i += 1;
                }
                finished.fetch_add(1, Ordering::SeqCst);
                acked
            })
        })
        .collect();
    for spawner in spawners {
        spawner.join().expect("a spawner");
    }
    done.store(true, Ordering::SeqCst);
    let acked: Vec<(PathBuf, String)> = users
        .into_iter()
        .flat_map(|u| u.join().expect("a cache thread"))
        .collect();
    watchdog.join().expect("no deadlock");
    assert!(acked.len() > 50, "only {} writes", acked.len());
    let caches = [
        FileCache::open(&paths[0]).expect("open"),
        FileCache::open(&paths[1]).expect("open"),
    ];
    for (path, key) in &acked {
        let cache = &caches[usize::from(*path != paths[0])];
        assert_eq!(
            cache.get(key).expect("get"),
            Some(value_of(key)),
            "{key} in {}",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------
// 7. Readers that never write, while another process compacts over and over.
// ---------------------------------------------------------------------------

const BOARD_KEYS: usize = 8;

/// `BOARD_KEYS` counters in a file mapped shared by every process: a writer
/// stores the number it wrote to key `i` once its `set` has returned.
struct Board {
    ptr: *mut AtomicU64,
}

// SAFETY: only ever accessed through atomics.
unsafe impl Send for Board {}
unsafe impl Sync for Board {}

impl Board {
    fn open(path: &Path) -> Board {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .expect("the board");
        file.set_len(4096).expect("size the board");
        // SAFETY: a shared mapping of a 4096-byte file, kept after close.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "map the board");
        Board { ptr: ptr.cast() }
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i < BOARD_KEYS);
        // SAFETY: in bounds of the page, aligned, atomics only; never unmapped.
        unsafe { &*self.ptr.add(i) }
    }
}

fn counter_value(n: u64) -> Vec<u8> {
    let mut value = format!("{n:020}").into_bytes();
    value.resize(300, b'#');
    value
}

/// Writes keys `k0..k7` with rising numbers from two threads (each its
/// own keys), publishing each number on the board once its `set` returned,
/// with compaction after every write, and a third thread calling `compact`
/// in a loop, until `STOP` exists. Reports `wrote <n>`.
#[test]
fn child_board_writer() {
    if !is_child("child_board_writer") {
        return;
    }
    let path = PathBuf::from(arg("PATH"));
    let stop = PathBuf::from(arg("STOP"));
    let board = Arc::new(Board::open(Path::new(&arg("BOARD"))));
    let cache = Arc::new(
        FileCache::builder(&path)
            .compact_when(0.0, 0)
            .open()
            .expect("open"),
    );
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let (cache, board, stop) = (cache.clone(), board.clone(), stop.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.exists() {
                    n += 1;
                    let i = t * BOARD_KEYS / 2 + (n as usize % (BOARD_KEYS / 2));
                    cache.set(format!("k{i}"), counter_value(n)).expect("set");
                    board.slot(i).store(n, Ordering::SeqCst);
                }
                n
            })
        })
        .collect();
    let compactor = {
        let (cache, stop) = (cache.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.exists() {
                cache.compact().expect("compact");
            }
        })
    };
    let wrote: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    compactor.join().expect("compactor");
    report(format!("wrote {wrote}"));
}

/// Proves that a process that only reads never serves a value older than
/// one whose `set`, in another process, returned before the read began,
/// while that process compacts after every write and in a loop besides (so
/// the reader's file is superseded again and again): two reader threads
/// read the board's number for a key, then the key, for 3 s, and the value
/// read always carries at least that number.
#[test]
fn a_reader_that_never_writes_never_serves_a_value_older_than_a_finished_set() {
    let dir = TempDir::new().expect("a temporary directory");
    let path = dir.path().join("board.lc");
    let stop = dir.path().join("stop");
    let board_path = dir.path().join("board");
    let board = Arc::new(Board::open(&board_path));
    let cache = Arc::new(FileCache::open(&path).expect("open"));
    let mut writer = Running::spawn(
        "board writer",
        child_command(
            "child_board_writer",
            &[
                ("PATH", path.display().to_string()),
                ("STOP", stop.display().to_string()),
                ("BOARD", board_path.display().to_string()),
            ],
        ),
    );
    let until = Instant::now() + Duration::from_secs(3);
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (cache, board) = (cache.clone(), board.clone());
            thread::spawn(move || {
                let mut reads = 0u64;
                let mut generations = std::collections::BTreeSet::new();
                let mut i = r;
                while Instant::now() < until {
                    i = (i + 1) % BOARD_KEYS;
                    let published = board.slot(i).load(Ordering::SeqCst);
                    let got = cache.get(&format!("k{i}")).expect("get");
                    let seen = got
                        .as_deref()
                        .map(|v| {
                            std::str::from_utf8(&v[..20])
                                .expect("utf-8")
                                .parse::<u64>()
                                .expect("a number")
                        })
                        .unwrap_or(0);
                    assert!(
                        seen >= published,
                        "k{i}: read {seen} after {published} was acknowledged"
                    );
                    reads += 1;
                    generations.insert(cache.generation().expect("generation"));
                }
                (reads, generations.len())
            })
        })
        .collect();
    let results: Vec<(u64, usize)> = readers
        .into_iter()
        .map(|r| r.join().expect("a reader"))
        .collect();
    std::fs::write(&stop, b"").expect("stop");
    let finished = writer.finish();
    finished.assert_success();
    let wrote: u64 = finished
        .reports_of("wrote")
        .next()
        .expect("wrote")
        .parse()
        .expect("a number");
    let generations = results.iter().map(|r| r.1).max().unwrap_or(0);
    assert!(wrote > 100, "the writer wrote only {wrote}");
    assert!(
        generations > 20,
        "the readers saw only {generations} generations: {results:?}"
    );
}
