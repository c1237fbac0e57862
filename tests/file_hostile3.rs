//! A third hostile review of FileCache, aimed at the lock-descriptor
//! bookkeeping of `src/file/shared.rs` and `src/file/lock.rs`: a lock file
//! replaced under a running process, the registry entry of a lock that was
//! followed, readers that never write when the lock file goes too, two
//! writers in the window a replaced lock file opens, and forks while
//! threads open, drop and race to build states.
//!
//! Found by it, on the code reviewed:
//! - `a_followed_lock_file_still_gives_one_state_per_process`: a
//!   regression, fixed (a followed lock file keeps its registry link).
//! - `a_reader_that_never_writes_follows_a_file_created_anew_with_its_lock`
//!   and `writes_after_two_states_converge_on_a_new_lock_file_are_kept`:
//!   what deleting the lock file under running processes costs. That is
//!   outside the assumptions docs/file-format.md states ("Do not delete or
//!   truncate it"), which now say what these show; they stay here,
//!   ignored, as the record of it. (A state whose committed length went
//!   back is now indexed afresh, which took the second from 30 lost reads
//!   in 360 to about 1 in 6 runs: what remains is records written in the
//!   window that hide later ones from any scan.)
//!
//! The others are attacks that held.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use layercache::{Cache, FileCache};
use tempfile::TempDir;

use support::{in_forked_child, open_manual, reap, value_of};

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The descriptors of this process open on `target` (or on a file that was
/// at `target` and has been removed since).
fn fds_on(target: &Path) -> Vec<i32> {
    let deleted = format!("{} (deleted)", target.display());
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let link = std::fs::read_link(entry.path()).ok()?;
            let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
            (link == target || link.to_str() == Some(deleted.as_str())).then_some(fd)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. The registry entry of a lock file that was followed.
// ---------------------------------------------------------------------------

/// `relock` (src/file/shared.rs) registers the lock file it opens with
/// `Registered::new`, whose entry has an empty `Weak<Shared>`; nothing ever
/// points it back at the state that follows the new lock file (the code
/// before this commit updated the old entry in place, keeping its link to
/// the state). So after a process follows a replaced lock file, the next
/// `open` of the same path in that process finds no live state for the
/// lock file (`live` upgrades nothing) and builds a second one: two states,
/// two lock descriptions, two maps and indexes, two `Periodic` sync threads
/// and two sets of `stats` for one file in one process, against "A process
/// holds at most one [`Shared`] per lock file" (shared.rs) and "Every
/// thread of a process shares one description per lock file"
/// (docs/file-format.md, Assumptions).
#[test]
fn a_followed_lock_file_still_gives_one_state_per_process() {
    let dir = TempDir::new().expect("a temporary directory");
    let path = dir.path().join("one.lc");
    let lock = lock_path(&path);
    let first = open_manual(&path);
    first.set("a".to_string(), value_of("a")).expect("set");
    assert_eq!(fds_on(&lock).len(), 1, "one lock descriptor after open");
    // The lock file goes (by hand, or a clean-up job); the next write past
    // the full-check interval follows the one created anew.
    std::fs::remove_file(&lock).expect("remove the lock file");
    thread::sleep(Duration::from_millis(150));
    first.set("b".to_string(), value_of("b")).expect("set");
    assert!(lock.exists(), "the write created a new lock file");
    assert_eq!(
        fds_on(&lock).len(),
        1,
        "one lock descriptor after following the new lock file"
    );
    let second = open_manual(&path);
    let third = FileCache::open(&path).expect("open");
    assert_eq!(
        second.get(&"b".to_string()).expect("get"),
        Some(value_of("b"))
    );
    assert_eq!(
        third.get(&"a".to_string()).expect("get"),
        Some(value_of("a"))
    );
    let held = fds_on(&lock);
    assert_eq!(
        held.len(),
        1,
        "three handles on one file in one process hold {} lock descriptors \
         ({held:?}): a second state was built for a lock file this process \
         already follows",
        held.len()
    );
}

// ---------------------------------------------------------------------------
// 2. A reader that never writes, when the lock file goes with the data file.
// ---------------------------------------------------------------------------

/// A reader that never writes watches the data epoch in the page of the
/// lock file it loaded under (`State::epoch_moved`, src/file/state.rs).
/// When the data file and its lock file are both removed (`rm cache.lc*`,
/// the obvious way to empty a cache by hand) and another process then
/// opens the path and writes, the epoch that moves is in the *new* lock
/// file's page, which the reader never maps: `FileCache::fresh`
/// (src/file/mod.rs) finds its old file neither superseded nor its epoch
/// moved, and serves the old, deleted file's values for as long as it only
/// reads: not a window, for ever. docs/file-format.md promises a reader
/// follows "a file that another process created anew at once"; the
/// deletion of the lock file is only said to cost writes made in a window.
#[test]
#[ignore = "deleting the lock file is outside the stated assumptions; readers make no system call to notice"]
fn a_reader_that_never_writes_follows_a_file_created_anew_with_its_lock() {
    let dir = TempDir::new().expect("a temporary directory");
    let path = dir.path().join("reader.lc");
    let reader = open_manual(&path);
    let key = "k".to_string();
    reader.set(key.clone(), b"old".to_vec()).expect("set");
    assert_eq!(reader.get(&key).expect("get"), Some(b"old".to_vec()));
    let (data, lock) = (path.clone(), lock_path(&path));
    // Another process: removes both files, opens the path (creating both
    // anew) and writes. Its `set` has returned when the child exits.
    in_forked_child(|| {
        std::fs::remove_file(&data).expect("remove the data file");
        std::fs::remove_file(&lock).expect("remove the lock file");
        let writer = open_manual(&data);
        writer.set("k".to_string(), b"new".to_vec()).expect("set");
        assert_eq!(writer.generation().expect("generation"), 0);
    });
    let until = Instant::now() + Duration::from_secs(1);
    let mut got = reader.get(&key).expect("get");
    while got.as_deref() != Some(b"new".as_slice()) && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
        got = reader.get(&key).expect("get");
    }
    assert_eq!(
        got.as_deref().map(String::from_utf8_lossy),
        Some("new".into()),
        "1 s after another process's set(k, new) returned, the reader still \
         serves the value of the deleted file"
    );
}

// ---------------------------------------------------------------------------
// 3. Two writers in the window a replaced lock file opens, then writes
//    after both converged.
// ---------------------------------------------------------------------------

/// Each round removes the lock file and opens a second handle (which, with
/// no live state for the new lock file, builds its own state on it), so
/// two states in one process lock different files and append at once for
/// 40 ms, with values of varied lengths (writes there may be lost: the
/// documented window). Then both write past the full-check interval, so
/// both follow the new lock file, and from then on every acknowledged write
/// must survive: read through the handles, and through a fresh state that
/// rescans the file from its start, in a forked child.
///
/// Fails on the code reviewed: a whole round of writes made after both
/// states converged (30 of 360) reads as missing through the handle, while
/// a fresh rescan finds them all. Likely cause: in the window both states
/// append at the one committed length, and the one that stores last may
/// store a smaller end than the other already stored, so the committed
/// length goes backwards below a state's `indexed`; later appends land
/// below `indexed`, and `State::scan` (src/file/state.rs, `if to <=
/// self.indexed { return }`) never indexes them in that state, for as long
/// as it lives ("indexed never exceeds the committed length" no longer
/// holds). Timing-dependent: it failed 7 of 9 runs here (and passed 5 of
/// 5 on the commit before HEAD, which may be timing alone).
#[test]
#[ignore = "deleting the lock file is outside the stated assumptions: records written in the window can hide later ones"]
fn writes_after_two_states_converge_on_a_new_lock_file_are_kept() {
    let dir = TempDir::new().expect("a temporary directory");
    let path = dir.path().join("window.lc");
    let lock = lock_path(&path);
    let first = Arc::new(open_manual(&path));
    let mut after: Vec<String> = Vec::new();
    for round in 0..12u64 {
        std::fs::remove_file(&lock).expect("remove the lock file");
        let second = Arc::new(open_manual(&path));
        let stop = Arc::new(AtomicBool::new(false));
        let racers: Vec<_> = [first.clone(), second.clone()]
            .into_iter()
            .enumerate()
            .map(|(t, cache)| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let len = 40 + ((n * 37 + t as u64 * 101) % 400) as usize;
                        let _ = cache.set(format!("w{round}-{t}-{}", n % 7), vec![b'v'; len]);
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(40));
        stop.store(true, Ordering::Relaxed);
        for racer in racers {
            racer.join().expect("a racer");
        }
        // Past the full-check interval, a write makes each state follow
        // the lock file now at the path.
        thread::sleep(Duration::from_millis(120));
        for (t, cache) in [&first, &second].into_iter().enumerate() {
            cache
                .set(format!("converge{t}"), vec![1])
                .expect("a converging set");
        }
        for n in 0..30 {
            let key = format!("after{round}-{n}");
            let cache = if n % 2 == 0 { &first } else { &second };
            let mut value = value_of(&key);
            value.resize(20 + (n * 53 % 300), b'.');
            cache
                .set(key.clone(), value)
                .expect("set after convergence");
            after.push(key);
        }
    }
    let expected = |key: &str| {
        let n: usize = key.rsplit('-').next().expect("n").parse().expect("n");
        let mut value = value_of(key);
        value.resize(20 + (n * 53 % 300), b'.');
        value
    };
    let through_handle: Vec<&String> = after
        .iter()
        .filter(|key| first.get(key).expect("get") != Some(expected(key)))
        .collect();
    // A state that rescans the file from its start, in a forked child
    // (which opens its own); it exits with how many it misses.
    // SAFETY: the child runs the closure below and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let missing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let fresh = open_manual(&path);
            after
                .iter()
                .filter(|key| fresh.get(key).ok().flatten() != Some(expected(key)))
                .count()
                .min(200) as i32
        }))
        .unwrap_or(255);
        // SAFETY: ends the child without the parent's exit handlers.
        unsafe { libc::_exit(missing) };
    }
    let on_rescan = reap(pid, Instant::now() + Duration::from_secs(10));
    assert!(
        through_handle.is_empty() && on_rescan == "ok",
        "of {} writes acknowledged after both states converged on the new \
         lock file, {} read wrong or missing through the handle that wrote \
         half of them ({:?}...), and a fresh rescan of the file ended `{on_rescan}` \
         (exit n: n of them missing)",
        after.len(),
        through_handle.len(),
        &through_handle[..through_handle.len().min(5)],
    );
}

// ---------------------------------------------------------------------------
// 4. Forks while threads open, drop and race to build states, and others
//    hold the lock.
// ---------------------------------------------------------------------------

/// Counts, in this process, the descriptors open on a `.lock` file under
/// `dir` and those of them whose description holds a `flock` (its fdinfo
/// has a `lock:` line).
fn lock_fds_under(dir: &Path) -> (usize, usize) {
    let mut open = 0;
    let mut locked = 0;
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return (usize::MAX, usize::MAX);
    };
    for entry in entries.flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let text = link.to_string_lossy();
        if !link.starts_with(dir) || !text.contains(".lock") {
            continue;
        }
        open += 1;
        let info = Path::new("/proc/self/fdinfo").join(entry.file_name());
        if std::fs::read_to_string(info).is_ok_and(|i| i.contains("lock:")) {
            locked += 1;
        }
    }
    (open, locked)
}

/// Two threads write to a busy file (holding its lock most of the time);
/// two threads open files by path and by symbolic link at once (so one of
/// each pair builds a state that loses to the other's) and drop them. The
/// main thread
/// forks; each child, before touching any cache, must hold no descriptor
/// whose description holds a `flock` (it would keep its parent's lock alive
/// past the parent's death), then writes a key through the inherited
/// handle, after which it must hold exactly one locked-or-not lock
/// descriptor on the busy file besides those it inherited and that now
/// name `/dev/null`. Every child must exit within 10 s, and every key a
/// child acknowledged must be in the file.
#[test]
fn forks_amid_opens_drops_and_losing_states_leak_no_locked_descriptor() {
    let dir = TempDir::new().expect("a temporary directory");
    let busy_path = dir.path().join("busy.lc");
    let busy = Arc::new(open_manual(&busy_path));
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for t in 0..2 {
        let (busy, stop) = (busy.clone(), stop.clone());
        workers.push(thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                busy.set(format!("parent{t}-{}", n % 50), value_of("p"))
                    .expect("set");
            }
        }));
    }
    for t in 0..2usize {
        let (dir, stop, opened) = (dir.path().to_owned(), stop.clone(), opened.clone());
        workers.push(thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("churn{}.lc", n % 6);
                let real = dir.join(&name);
                let link = dir.join(format!("link{t}-{}", n % 6));
                if !link.exists() {
                    let _ = symlink(&real, &link);
                }
                // Thread 0 by the real path, thread 1 by a link: the two
                // race to build the same file's state.
                let by = if t == 0 { real } else { link };
                if let Ok(cache) = FileCache::open(&by) {
                    let _ = cache.get(&"x".to_string());
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // At least 5 s and 60 forks (a loaded machine forks slowly), at most
    // 400 forks or 60 s.
    let start = Instant::now();
    let (until, give_up) = (
        start + Duration::from_secs(5),
        start + Duration::from_secs(60),
    );
    let mut forks = 0u64;
    let mut failures = Vec::new();
    let mut acknowledged = Vec::new();
    while (Instant::now() < until || forks < 60) && forks < 400 && Instant::now() < give_up {
        forks += 1;
        let key = format!("child{forks}");
        let busy_lock = lock_path(&busy_path);
        let root = dir.path().to_owned();
        // SAFETY: the child runs the closure below and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let (_, locked) = lock_fds_under(&root);
                if locked != 0 {
                    return 10;
                }
                let before = fds_on(&busy_lock).len();
                if busy.set(key.clone(), value_of(&key)).is_err() {
                    return 11;
                }
                if busy.get(&key).ok().flatten() != Some(value_of(&key)) {
                    return 12;
                }
                if fds_on(&busy_lock).len() != before + 1 {
                    return 13;
                }
                0
            }))
            .unwrap_or(14);
            // SAFETY: ends the child without the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        match reap(pid, Instant::now() + Duration::from_secs(10)).as_str() {
            "ok" => acknowledged.push(format!("child{forks}")),
            other => failures.push(format!("child{forks}: {other}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("a worker");
    }
    assert!(failures.is_empty(), "children failed: {failures:?}");
    assert!(forks > 50, "only {forks} forks");
    assert!(opened.load(Ordering::Relaxed) > 50, "too few opens");
    for key in &acknowledged {
        assert_eq!(busy.get(key).expect("get"), Some(value_of(key)), "{key}");
    }
    // And the parent leaks none: only the busy file's lock is open now.
    assert_eq!(lock_fds_under(dir.path()).0, 1, "lock descriptors left");
}
