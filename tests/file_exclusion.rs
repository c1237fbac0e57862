//! FileCache's mutual exclusion and file identity, with real files and real
//! processes: threads of one process that share the OS lock, processes
//! forked with an open handle, one file reached by two names (a symlink, a
//! hard link), a file deleted and re-created under a running writer,
//! compactions that fail (a blocked temporary name, a full disk), and what a
//! compaction keeps of the file's metadata.
//!
//! The writers write unique keys, each with a value derived from the key,
//! and acknowledge a write (one flushed line) only once `set` returned `Ok`;
//! the parent then reopens the file and requires every acknowledged write.
//! The child-process plumbing is in `support` (shared with
//! `file_processes`).

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use layercache::{Cache, Error, FileCache};
use tempfile::TempDir;

use support::{
    CHILD_DEADLINE, Finished, Rng, Running, Tmpfs, arg, arg_u64, child_command, compact_path,
    is_child, open_manual, raw_report, report, skipped, value_of, wait_for_file,
};

/// How long a child of these tests writes at most before it stops by
/// itself (the parent kills it at [`CHILD_DEADLINE`]).
const RUN_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The writer child and the parent's check of what it acknowledged.
// ---------------------------------------------------------------------------

/// Writes unique keys `<PREFIX><thread>-<n>` from `WRITERS` threads, up to
/// `MAX` each, until the `STOP` file appears. Opens one handle per path in
/// `PATHS` (separated by `|`); thread `t` writes through handle `t % paths`.
/// Every `COMPACT_EVERY` writes (0: never) a thread compacts, and after
/// any write that finds the file `COMPACT_ON` (removing it). With
/// `READER=1`, one more thread calls `get` and `len` in a loop until the
/// writers are done. Reports `ready` once open, then waits for the `START`
/// file; then `ack <key>` per write that returned `Ok`, `compact <n>` per
/// compaction (`n` counts attempts), `error ...` per call that failed, and
/// `done` at the end.
#[test]
fn child_writer() {
    if !is_child("child_writer") {
        return;
    }
    let paths: Vec<PathBuf> = arg("PATHS").split('|').map(PathBuf::from).collect();
    let prefix = arg("PREFIX");
    let writers = arg_u64("WRITERS") as usize;
    let max = arg_u64("MAX");
    let compact_every = arg_u64("COMPACT_EVERY");
    let reader = arg_u64("READER") == 1;
    let stop = PathBuf::from(arg("STOP"));
    let compact_on = PathBuf::from(arg("COMPACT_ON"));
    let caches: Vec<FileCache> = paths.iter().map(|p| open_manual(p)).collect();
    report("ready");
    wait_for_file(Path::new(&arg("START")));
    let deadline = Instant::now() + RUN_LIMIT;
    let compactions = AtomicU64::new(0);
    let writing = AtomicUsize::new(writers);
    let written = AtomicU64::new(0);
    thread::scope(|s| {
        for t in 0..writers {
            let cache = &caches[t % caches.len()];
            let (prefix, stop, compact_on) = (&prefix, &stop, &compact_on);
            let (compactions, writing, written) = (&compactions, &writing, &written);
            s.spawn(move || {
                for n in 0..max {
                    if Instant::now() > deadline || stop.exists() {
                        break;
                    }
                    let key = format!("{prefix}{t}-{n}");
                    match cache.set(key.clone(), value_of(&key)) {
                        Ok(()) => report(format!("ack {key}")),
                        Err(e) => report(format!("error set {key}: {e}")),
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                    // Removing the request file claims it: one compaction
                    // per request.
                    let requested = !compact_on.as_os_str().is_empty()
                        && std::fs::remove_file(compact_on).is_ok();
                    if requested || (compact_every > 0 && (n + 1) % compact_every == 0) {
                        let attempt = compactions.fetch_add(1, Ordering::Relaxed) + 1;
                        match cache.compact() {
                            Ok(()) => report(format!("compact {attempt}")),
                            Err(e) => report(format!("error compact {attempt}: {e}")),
                        }
                    }
                }
                writing.fetch_sub(1, Ordering::Release);
            });
        }
        if reader {
            let (cache, prefix) = (&caches[0], &prefix);
            let (writing, written) = (&writing, &written);
            s.spawn(move || {
                let mut rng = Rng::new(0x5EAD);
                let mut reads = 0u64;
                while writing.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                    // A key some writer has most likely written by now.
                    let t = rng.below(writers as u64);
                    let n = rng.below(written.load(Ordering::Relaxed) / writers as u64 + 1);
                    let key = format!("{prefix}{t}-{n}");
                    match cache.get(&key) {
                        Ok(Some(value)) if value != value_of(&key) => {
                            report(format!("error get {key}: a wrong value"));
                        }
                        Ok(_) => {}
                        Err(e) => report(format!("error get {key}: {e}")),
                    }
                    if let Err(e) = cache.len() {
                        report(format!("error len: {e}"));
                    }
                    reads += 1;
                }
                report(format!("reads {reads}"));
            });
        }
    });
    report("done");
}

/// The arguments of a `child_writer`.
struct Writer<'a> {
    paths: &'a [&'a Path],
    prefix: &'a str,
    writers: u64,
    max: u64,
    compact_every: u64,
    reader: bool,
    /// A file whose appearance asks for a compaction, if any.
    compact_on: Option<&'a Path>,
}

impl Writer<'_> {
    fn spawn(&self, name: &str, start: &Path, stop: &Path) -> Running {
        let paths: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        Running::spawn(
            name,
            child_command(
                "child_writer",
                &[
                    ("PATHS", paths.join("|")),
                    ("PREFIX", self.prefix.to_string()),
                    ("WRITERS", self.writers.to_string()),
                    ("MAX", self.max.to_string()),
                    ("COMPACT_EVERY", self.compact_every.to_string()),
                    ("READER", u64::from(self.reader).to_string()),
                    (
                        "COMPACT_ON",
                        self.compact_on
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                    ),
                    ("START", start.display().to_string()),
                    ("STOP", stop.display().to_string()),
                ],
            ),
        )
    }
}

/// A child's status, its reports other than acks and compactions, and the
/// end of its stderr: enough to see why it failed without every ack line.
fn short_diagnostics(child: &Finished) -> String {
    let others: Vec<&str> = child
        .reports
        .iter()
        .map(String::as_str)
        .filter(|r| !r.starts_with("ack ") && !r.starts_with("compact "))
        .take(20)
        .collect();
    let stderr: Vec<&str> = child.stderr.lines().collect();
    let tail = stderr[stderr.len().saturating_sub(25)..].join("\n");
    format!(
        "--- child {}: {:?}; {} reports; other reports (first 20): {others:?}\n--- its stderr (end):\n{tail}",
        child.name,
        child.status,
        child.reports.len(),
    )
}

/// Requires, for every path in `paths` (names of the same cache file):
/// every child exited normally, no call failed, and every write a child
/// acknowledged is there with its value, in a file with no damage. Panics
/// with everything that is wrong, `problems` (found by the caller) first.
fn check_acknowledged(
    test: &str,
    paths: &[&Path],
    children: &[Finished],
    mut problems: Vec<String>,
) {
    let mut summary = Vec::new();
    for child in children {
        if let Some(signal) = child.status.signal() {
            problems.push(format!(
                "child {} was killed by signal {signal}",
                child.name
            ));
        } else if !child.status.success() {
            problems.push(format!("child {} failed: {:?}", child.name, child.status));
        }
        let errors: Vec<&str> = child.reports_of("error").collect();
        if !errors.is_empty() {
            problems.push(format!(
                "child {}: {} calls returned an error, the first: {:?}",
                child.name,
                errors.len(),
                &errors[..errors.len().min(3)]
            ));
        }
        summary.push(format!(
            "{}: {} acks, {} compactions",
            child.name,
            child.reports_of("ack").count(),
            child.reports_of("compact").count()
        ));
    }
    for path in paths {
        let cache = match FileCache::open(path) {
            Ok(cache) => cache,
            Err(e) => {
                problems.push(format!("reopening {}: {e}", path.display()));
                continue;
            }
        };
        for child in children {
            let acked: Vec<&str> = child.reports_of("ack").collect();
            let lost: Vec<String> = acked
                .iter()
                .filter_map(|key| match cache.get(&key.to_string()) {
                    Ok(Some(value)) if value == value_of(key) => None,
                    Ok(Some(_)) => Some(format!("{key} (wrong value)")),
                    Ok(None) => Some(key.to_string()),
                    Err(e) => Some(format!("{key} ({e})")),
                })
                .collect();
            if !lost.is_empty() {
                problems.push(format!(
                    "{}: {} of the {} writes {} acknowledged are lost, the first: {:?}",
                    path.display(),
                    lost.len(),
                    acked.len(),
                    child.name,
                    &lost[..lost.len().min(8)]
                ));
            }
        }
        match cache.verify() {
            Ok(report) if report.damage.is_empty() => {}
            Ok(report) => problems.push(format!(
                "{}: {} damaged places, the first: {:?}",
                path.display(),
                report.damage.len(),
                &report.damage[..report.damage.len().min(3)]
            )),
            Err(e) => problems.push(format!("verify {}: {e}", path.display())),
        }
    }
    eprintln!("{test}: {}", summary.join("; "));
    if !problems.is_empty() {
        let children: Vec<String> = children.iter().map(short_diagnostics).collect();
        panic!(
            "{test}:\n- {}\n({})\n{}",
            problems.join("\n- "),
            summary.join("; "),
            children.join("\n")
        );
    }
}

/// Starts `writers` (each waits for the start file), lets them all go at
/// once, and returns them finished: the first `stop_after` of them run to
/// their end, then the stop file tells the others to stop.
fn run_writers(dir: &Path, writers: &[(&str, Writer<'_>)], stop_after: usize) -> Vec<Finished> {
    let (start, stop) = (dir.join("start"), dir.join("stop"));
    let mut running: Vec<Running> = writers
        .iter()
        .map(|(name, writer)| writer.spawn(name, &start, &stop))
        .collect();
    for child in &mut running {
        child.wait_for_report("ready", CHILD_DEADLINE);
    }
    std::fs::write(&start, b"go").unwrap();
    let mut finished: Vec<Finished> = running[..stop_after]
        .iter_mut()
        .map(Running::finish)
        .collect();
    std::fs::write(&stop, b"stop").unwrap();
    finished.extend(running[stop_after..].iter_mut().map(Running::finish));
    finished
}

// ---------------------------------------------------------------------------
// 1. Threads of one process share the OS lock.
// ---------------------------------------------------------------------------

/// Q compacts after this many of its writes...
const THREADS_Q_COMPACT_EVERY: u64 = 4;
/// ... until it has compacted this often, or for at most this long.
const THREADS_Q_COMPACTIONS: u64 = 120;
const THREADS_RUN: Duration = Duration::from_secs(6);

/// Proves that the threads of one process exclude other processes together.
/// An `flock` belongs to the open file description, which every thread of a
/// handle shares: a reader thread that follows another process's compaction
/// must not take and drop the lock while a writer thread of its process
/// holds it (the writer would then append unlocked while the other process
/// writes or compacts). Process P: three writer threads and a reader
/// thread; process Q: one writer that compacts every few writes. Every
/// acknowledged write of both must be in the file.
#[test]
fn threads_of_one_process_keep_the_lock_while_another_process_compacts() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("threads.lc");
    let (start, stop) = (dir.path().join("start"), dir.path().join("stop"));
    let paths = [path.as_path()];
    let mut p = Writer {
        paths: &paths,
        prefix: "p",
        writers: 3,
        max: u64::MAX,
        compact_every: 0,
        reader: true,
        compact_on: None,
    }
    .spawn("P (3 writer threads, a reader thread)", &start, &stop);
    let mut q = Writer {
        paths: &paths,
        prefix: "q",
        writers: 1,
        max: u64::MAX,
        compact_every: THREADS_Q_COMPACT_EVERY,
        reader: false,
        compact_on: None,
    }
    .spawn("Q (writes and compacts)", &start, &stop);
    p.wait_for_report("ready", CHILD_DEADLINE);
    q.wait_for_report("ready", CHILD_DEADLINE);
    std::fs::write(&start, b"go").unwrap();
    // Each of Q's compactions is a chance for P's reader to follow it while
    // a writer of P holds the lock. Q may get the lock seldom (flock is not
    // fair, and P has three writers): the run also ends after a while,
    // however many Q managed.
    let done = format!("compact {THREADS_Q_COMPACTIONS}");
    q.wait_until(&done, THREADS_RUN, |reports| {
        reports
            .iter()
            .any(|r| *r == done || r.starts_with("error "))
    });
    std::fs::write(&stop, b"stop").unwrap();
    let children = [p.finish(), q.finish()];
    check_acknowledged(
        "threads_of_one_process_keep_the_lock_while_another_process_compacts",
        &paths,
        &children,
        Vec::new(),
    );
}

// ---------------------------------------------------------------------------
// 2. fork() with an open handle.
// ---------------------------------------------------------------------------

const FORKED_WORKERS: u64 = 4;
const FORKED_WRITES: u64 = 300;
const FORKED_COMPACT_EVERY: u64 = 25;

/// A forked worker's work: unique keys `f<id>-<n>`, a compaction every
/// `compact_every` writes.
fn forked_worker(cache: &FileCache, id: u64, deadline: Instant) {
    for n in 0..FORKED_WRITES {
        if Instant::now() > deadline {
            raw_report(&format!("error worker {id} ran out of time"));
            return;
        }
        let key = format!("f{id}-{n}");
        match cache.set(key.clone(), value_of(&key)) {
            Ok(()) => raw_report(&format!("ack {key}")),
            Err(e) => raw_report(&format!("error set {key}: {e}")),
        }
        if (n + 1) % FORKED_COMPACT_EVERY == 0 {
            match cache.compact() {
                Ok(()) => raw_report(&format!("compact {id}-{n}")),
                Err(e) => raw_report(&format!("error compact {id}-{n}: {e}")),
            }
        }
    }
}

/// Opens `PATH`, writes once, then forks `FORKED_WORKERS` workers that
/// write through the inherited handle (released together by closing a
/// pipe), and reports how each ended: `worker <id> exit <code>` or `worker
/// <id> signal <n>`.
#[test]
fn child_forker() {
    if !is_child("child_forker") {
        return;
    }
    let cache = open_manual(Path::new(&arg("PATH")));
    cache
        .set("before-fork".to_string(), value_of("before-fork"))
        .expect("set before the fork");
    report("ack before-fork");
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let deadline = Instant::now() + RUN_LIMIT;
    let mut pids = Vec::new();
    for id in 0..FORKED_WORKERS {
        // SAFETY: the worker only writes through `cache`, reports with
        // write(2) and leaves with _exit, never returning into the test
        // harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let mut byte = 0u8;
            // SAFETY: plain descriptor calls; `byte` is a live 1-byte buffer.
            unsafe {
                libc::close(fds[1]);
                // Blocks until the forker closes its write end: go.
                libc::read(fds[0], (&raw mut byte).cast(), 1);
            }
            let worked =
                std::panic::catch_unwind(AssertUnwindSafe(|| forked_worker(&cache, id, deadline)));
            // SAFETY: ends the worker at once, running nothing of the
            // forker's (no destructors, no atexit handlers, no libtest).
            unsafe { libc::_exit(if worked.is_ok() { 0 } else { 101 }) };
        }
        pids.push(pid);
    }
    // SAFETY: closing the forker's ends of the pipe releases the workers.
    unsafe {
        libc::close(fds[1]);
        libc::close(fds[0]);
    }
    let reap_by = deadline + Duration::from_secs(5);
    for (id, &pid) in pids.iter().enumerate() {
        let mut status = 0;
        loop {
            // SAFETY: `pid` is our child; `status` is a live int.
            let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if reaped == pid {
                break;
            }
            assert!(reaped == 0, "waitpid: {}", std::io::Error::last_os_error());
            if Instant::now() > reap_by {
                report(format!(
                    "error worker {id} still running at the deadline: killed"
                ));
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        if libc::WIFEXITED(status) {
            report(format!("worker {id} exit {}", libc::WEXITSTATUS(status)));
        } else {
            report(format!("worker {id} signal {}", libc::WTERMSIG(status)));
        }
    }
    report("done");
}

/// Proves that a handle inherited through `fork()` excludes its sibling
/// processes: after a process that opened and wrote the cache forks four
/// workers, each writing unique keys (and compacting now and then) through
/// the inherited handle, every write a worker acknowledged is in the file.
/// (The forked workers share the parent's open lock file, so each one's
/// `flock` succeeds while another holds it.)
#[test]
fn forked_workers_writing_through_an_inherited_handle_lose_nothing() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("forked.lc");
    let finished = Running::spawn(
        "forker",
        child_command("child_forker", &[("PATH", path.display().to_string())]),
    )
    .finish();
    let mut problems = Vec::new();
    for id in 0..FORKED_WORKERS {
        let wanted = format!("{id} exit 0");
        match finished
            .reports_of("worker")
            .find(|r| r.starts_with(&format!("{id} ")))
        {
            Some(ended) if ended == wanted => {}
            Some(ended) => problems.push(format!("worker {ended}")),
            None => problems.push(format!("worker {id} never reported its end")),
        }
    }
    check_acknowledged(
        "forked_workers_writing_through_an_inherited_handle_lose_nothing",
        &[&path],
        &[finished],
        problems,
    );
}

/// Fills `PATH` with enough data that a compaction holds the lock for a
/// while, forks a sleeper that never touches the cache (but inherits the
/// handle, and with it, unless the fork handler disowned it, the lock's
/// open file description), reports `sleeper <pid>`, then compacts until it
/// is killed.
#[test]
fn child_compactor_with_a_sleeping_child() {
    if !is_child("child_compactor_with_a_sleeping_child") {
        return;
    }
    let cache = FileCache::builder(Path::new(&arg("PATH")))
        .compact_when(2.0, 0)
        .open()
        .expect("open");
    let value = vec![0x5Au8; 2048];
    for n in 0..20_000 {
        cache.set(format!("k{n:05}"), value.clone()).expect("fill");
    }
    // SAFETY: the sleeper only redirects its output, sleeps and leaves with
    // _exit, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: plain descriptor calls; the sleeper lets go of the pipes
        // to the test (so the test sees the compactor's output end) and
        // sleeps until the test kills it.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::sleep(60);
            libc::_exit(0);
        }
    }
    report(format!("sleeper {pid}"));
    loop {
        cache.compact().expect("compact");
    }
}

/// A process killed while it holds the lock must not leave the lock held
/// by a forked child that inherited its handle but never used it: the fork
/// handler points the child's copy of the lock descriptor at /dev/null.
/// (On the old main the sleeping child kept the dead process's lock, and
/// every writer of the cache waited until the child exited.)
#[test]
fn a_forked_child_does_not_keep_its_dead_parents_lock() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("held.lc");
    let lock_path = dir.path().join("held.lc.lock");
    let mut compactor = Running::spawn(
        "compactor",
        child_command(
            "child_compactor_with_a_sleeping_child",
            &[("PATH", path.display().to_string())],
        ),
    );
    assert!(
        compactor.wait_until("the sleeper", CHILD_DEADLINE, |reports| {
            reports.iter().any(|r| r.starts_with("sleeper "))
        }),
        "the compactor never forked its sleeper"
    );
    let sleeper: libc::pid_t = compactor.reports_so_far()[0]
        .strip_prefix("sleeper ")
        .and_then(|pid| pid.parse().ok())
        .expect("the sleeper's pid");
    // Kill the compactor while it holds the lock (as a probe that fails to
    // take it shows).
    let probe = std::fs::File::open(&lock_path).unwrap();
    let deadline = Instant::now() + CHILD_DEADLINE;
    loop {
        match probe.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) => break,
            Ok(()) => probe.unlock().unwrap(),
            Err(e) => panic!("probe: {e:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the compactor never held the lock"
        );
        thread::sleep(Duration::from_micros(200));
    }
    compactor.kill();
    let killed = compactor.finish();
    assert_eq!(killed.status.signal(), Some(libc::SIGKILL));
    // With the compactor dead, the lock must come free though the sleeper,
    // which inherited the compactor's handle, lives on.
    let freed_by = Instant::now() + Duration::from_secs(5);
    let freed = loop {
        match probe.try_lock() {
            Ok(()) => break true,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < freed_by => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(_) => break false,
        }
    };
    // SAFETY: the sleeper is the compactor's child, reparented; signalling
    // it by pid is all we do (it may already be gone).
    let sleeper_alive = unsafe { libc::kill(sleeper, 0) } == 0;
    // SAFETY: as above.
    unsafe { libc::kill(sleeper, libc::SIGKILL) };
    assert!(
        sleeper_alive,
        "the sleeper must outlive the compactor for the test to mean anything"
    );
    assert!(
        freed,
        "the lock stayed held after its holder died: the forked child kept it"
    );
    probe.unlock().unwrap();
    // And the file the compactor was rewriting opens whole.
    let cache = FileCache::open(&path).unwrap();
    assert_eq!(cache.len().unwrap(), 20_000);
    assert!(cache.verify().unwrap().damage.is_empty());
}

// ---------------------------------------------------------------------------
// 3. File identity: one file, two names; a file replaced under a writer.
// ---------------------------------------------------------------------------

const NAMED_WRITES: u64 = 800;
const NAMED_COMPACT_EVERY: u64 = 20;

/// `real.lc`, holding one entry, and `link.lc -> real.lc` (a relative
/// symlink) in `dir`.
fn real_and_link(dir: &Path) -> (PathBuf, PathBuf) {
    let (real, link) = (dir.join("real.lc"), dir.join("link.lc"));
    open_manual(&real)
        .set("seed".to_string(), value_of("seed"))
        .unwrap();
    std::os::unix::fs::symlink("real.lc", &link).unwrap();
    (real, link)
}

/// Proves that a file reached through two names (`real.lc` and a symlink
/// `link.lc -> real.lc`) is one cache: two processes, one per name, write
/// unique keys and compact often; no process dies of a signal (SIGBUS when
/// one cuts the file the other has mapped) and every acknowledged write is
/// in the file, through either name.
#[test]
fn one_file_by_two_names_in_two_processes_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let (real, link) = real_and_link(dir.path());
    let (real_paths, link_paths) = ([real.as_path()], [link.as_path()]);
    let writer = |paths, prefix| Writer {
        paths,
        prefix,
        writers: 1,
        max: NAMED_WRITES,
        compact_every: NAMED_COMPACT_EVERY,
        reader: false,
        compact_on: None,
    };
    let (a, b) = (writer(&real_paths, "a"), writer(&link_paths, "b"));
    let children = run_writers(dir.path(), &[("A (real.lc)", a), ("B (link.lc)", b)], 2);
    check_acknowledged(
        "one_file_by_two_names_in_two_processes_loses_nothing",
        &[&real, &link],
        &children,
        Vec::new(),
    );
}

/// Proves the same within one process: two handles, one opened as
/// `real.lc` and one through `link.lc -> real.lc`, written by two threads
/// that compact often, lose no acknowledged write. (Run in a child, so that
/// a SIGBUS is reported rather than killing the test binary.)
#[test]
fn one_file_by_two_names_in_one_process_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let (real, link) = real_and_link(dir.path());
    let paths = [real.as_path(), link.as_path()];
    let children = run_writers(
        dir.path(),
        &[(
            "P (a thread per name)",
            Writer {
                paths: &paths,
                prefix: "t",
                writers: 2,
                max: NAMED_WRITES,
                compact_every: NAMED_COMPACT_EVERY,
                reader: false,
                compact_on: None,
            },
        )],
        1,
    );
    check_acknowledged(
        "one_file_by_two_names_in_one_process_loses_nothing",
        &paths,
        &children,
        Vec::new(),
    );
}

/// Proves that compacting through a symlink replaces the file it points
/// at, not the symlink: `link.lc` is still a symlink to `real.lc`, the
/// lock is taken beside the real file, and `real.lc` holds everything,
/// including writes made through the link after the compaction.
#[test]
fn compacting_through_a_symlink_keeps_the_symlink() {
    let dir = TempDir::new().unwrap();
    let (real, link) = real_and_link(dir.path());
    // Only the link is opened from here on: the lock must be beside
    // real.lc all the same.
    let real_lock = dir.path().join("real.lc.lock");
    std::fs::remove_file(&real_lock).unwrap();
    let cache = open_manual(&link);
    for n in 0..20 {
        let key = format!("before-{n}");
        cache.set(key.clone(), value_of(&key)).unwrap();
    }
    cache.remove(&"before-0".to_string()).unwrap();
    cache.compact().unwrap();
    for n in 0..20 {
        let key = format!("after-{n}");
        cache.set(key.clone(), value_of(&key)).unwrap();
    }

    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(
        meta.file_type().is_symlink(),
        "compaction replaced the symlink {} with a {:?}",
        link.display(),
        meta.file_type()
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("real.lc"));
    assert!(
        real_lock.exists(),
        "the lock file is beside the real file: {:?}",
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    drop(cache);
    let cache = open_manual(&real);
    let mut missing = Vec::new();
    for key in std::iter::once("seed".to_string())
        .chain((1..20).map(|n| format!("before-{n}")))
        .chain((0..20).map(|n| format!("after-{n}")))
    {
        if cache.get(&key).unwrap() != Some(value_of(&key)) {
            missing.push(key);
        }
    }
    assert!(missing.is_empty(), "real.lc lacks {missing:?}");
    assert_eq!(cache.get(&"before-0".to_string()).unwrap(), None);
    assert_eq!(cache.len().unwrap(), 40);
    assert_eq!(
        cache.generation().unwrap(),
        1,
        "real.lc is the compacted file"
    );
}

/// Proves that a data file with another hard link is refused: compaction
/// renames a new file over one name, which would silently split the two
/// names into two caches. Opening either name is an error that says why.
#[test]
fn a_hard_linked_data_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let (a, b) = (dir.path().join("a.lc"), dir.path().join("b.lc"));
    open_manual(&a).set("k".to_string(), b"v".to_vec()).unwrap();
    std::fs::hard_link(&a, &b).unwrap();
    for path in [&a, &b] {
        match FileCache::open(path) {
            Ok(cache) => panic!("{} has 2 links, yet it opened: {cache:?}", path.display()),
            Err(e) => assert!(
                e.to_string().contains("link"),
                "the error says the file has another link: {e}"
            ),
        }
    }
}

/// Proves that a writer whose file was deleted and re-created by another
/// process does not overwrite the new file: process A writes (and compacts
/// when asked); the test removes the file (`rm`) while A writes; process B
/// creates it anew, writes and exits; after A's later writes and
/// compactions, every write B acknowledged is in the file at the path.
#[test]
fn a_deleted_and_recreated_file_is_not_overwritten_by_an_old_writer() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("replaced.lc");
    let (start, stop) = (dir.path().join("start"), dir.path().join("stop"));
    let request = dir.path().join("compact-now");
    let paths = [path.as_path()];
    let mut a = Writer {
        paths: &paths,
        prefix: "a",
        writers: 1,
        max: u64::MAX,
        compact_every: 0,
        reader: false,
        compact_on: Some(&request),
    }
    .spawn("A (old writer)", &start, &stop);
    a.wait_for_report("ready", CHILD_DEADLINE);
    std::fs::write(&start, b"go").unwrap();
    // A writes, compacts once (when asked), writes on.
    let write_on = |a: &mut Running, when: &str| {
        let acks = |reports: &[String]| reports.iter().filter(|r| r.starts_with("ack ")).count();
        let now = acks(a.reports_so_far());
        let wrote = a.wait_until("more writes", CHILD_DEADLINE, |reports| {
            acks(reports) >= now + 10
        });
        assert!(wrote, "A stopped writing {when}");
    };
    let mut compactions = 0;
    let mut compact_and_write_on = |a: &mut Running| {
        compactions += 1;
        std::fs::write(&request, b"compact").unwrap();
        let (done, failed) = (
            format!("compact {compactions}"),
            format!("error compact {compactions}:"),
        );
        let compacted = a.wait_until(&done, CHILD_DEADLINE, |reports| {
            reports.iter().any(|r| *r == done || r.starts_with(&failed))
        });
        assert!(
            compacted,
            "A never answered compaction request {compactions}"
        );
        write_on(a, "after a compaction");
    };
    compact_and_write_on(&mut a);
    std::fs::remove_file(&path).unwrap();
    write_on(&mut a, "after the rm");
    let b = Writer {
        paths: &paths,
        prefix: "b",
        writers: 1,
        max: 100,
        compact_every: 0,
        reader: false,
        compact_on: None,
    }
    .spawn("B (re-creates the file)", &start, &stop)
    .finish();
    compact_and_write_on(&mut a);
    compact_and_write_on(&mut a);
    std::fs::write(&stop, b"stop").unwrap();
    let a = a.finish();
    let mut problems = Vec::new();
    if !a.status.success() {
        problems.push(format!("A ended with {:?}", a.status));
    }
    let a_errors: Vec<&str> = a.reports_of("error").collect();
    eprintln!(
        "A: {} acks, {} errors (the first: {:?})",
        a.reports_of("ack").count(),
        a_errors.len(),
        &a_errors[..a_errors.len().min(3)]
    );
    check_acknowledged(
        "a_deleted_and_recreated_file_is_not_overwritten_by_an_old_writer",
        &paths,
        &[b],
        problems,
    );
}

/// A process that only reads follows a data file that another process
/// created anew at the path after it was deleted: the data epoch in the
/// lock file's page tells it, with no lock and no system call on the
/// read. (Before, only a writer noticed, so a reader served the deleted
/// file's values for good.)
#[test]
fn a_reader_that_never_writes_follows_a_file_created_anew() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("reader.lc");
    let reader = FileCache::open(&path).unwrap();
    reader.set("old".to_string(), b"deleted".to_vec()).unwrap();
    assert_eq!(
        reader.get(&"old".to_string()).unwrap(),
        Some(b"deleted".to_vec())
    );
    std::fs::remove_file(&path).unwrap();
    support::in_forked_child(|| {
        let other = FileCache::open(&path).expect("open: creates the file anew");
        other
            .set("new".to_string(), b"created".to_vec())
            .expect("set");
    });
    assert_eq!(
        reader.get(&"new".to_string()).unwrap(),
        Some(b"created".to_vec())
    );
    assert_eq!(reader.get(&"old".to_string()).unwrap(), None);
    assert_eq!(reader.len().unwrap(), 1);
}

/// A FUSE mount (bindfs) of a directory for one test, unmounted when
/// dropped.
struct Bindfs {
    source: TempDir,
    mount: TempDir,
}

impl Bindfs {
    /// Mounts a new directory with bindfs, or says why not.
    fn mount() -> Result<Bindfs, String> {
        let (source, mount) = (TempDir::new().unwrap(), TempDir::new().unwrap());
        let status = std::process::Command::new("bindfs")
            .arg(source.path())
            .arg(mount.path())
            .status()
            .map_err(|e| format!("bindfs: {e}"))?;
        if !status.success() {
            return Err(format!("bindfs failed: {status}"));
        }
        Ok(Bindfs { source, mount })
    }
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("fusermount")
            .arg("-u")
            .arg(self.mount.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.mount.path())
                .status();
        }
    }
}

/// A cache on a FUSE file system (a real bindfs mount) is refused, before
/// anything is created there, with an error naming the file system and
/// the way out; `allow_network_fs(true)` opens it. (NFS and SMB take the
/// same path through `fstatfs`; a FUSE mount is the one this machine can
/// make.) Needs bindfs: CI installs it and sets `LAYERCACHE_REQUIRE_FUSE`,
/// elsewhere the test says SKIPPED loudly without it.
#[test]
fn a_cache_on_a_fuse_file_system_is_refused_unless_allowed() {
    let fuse = match Bindfs::mount() {
        Ok(fuse) => fuse,
        Err(why) => {
            assert!(
                std::env::var_os("LAYERCACHE_REQUIRE_FUSE").is_none(),
                "LAYERCACHE_REQUIRE_FUSE is set, but: {why}"
            );
            skipped(
                "a_cache_on_a_fuse_file_system_is_refused_unless_allowed",
                &why,
            );
            return;
        }
    };
    let path = fuse.mount.path().join("remote.lc");
    match FileCache::open(&path) {
        Err(Error::Refused {
            path: named,
            reason,
        }) => {
            assert_eq!(named, path);
            assert!(reason.contains("FUSE"), "{reason}");
            assert!(reason.contains("allow_network_fs"), "{reason}");
        }
        other => panic!("expected Error::Refused, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(fuse.mount.path()).unwrap().count(),
        0,
        "nothing was created on the refused file system"
    );
    let cache = FileCache::builder(&path)
        .allow_network_fs(true)
        .open()
        .expect("allowed explicitly");
    cache.set("k".to_string(), b"v".to_vec()).unwrap();
    assert_eq!(cache.get(&"k".to_string()).unwrap(), Some(b"v".to_vec()));
    drop(cache);
    assert!(fuse.source.path().join("remote.lc").exists());
}

/// A cache file replaced by hand (`mv other.lc cache.lc`) under an open
/// handle: the handle's compaction must compact the file now at the path,
/// never rename its old content over it, and its writes a little later go
/// to the new file. (The old main renamed its old file over the new one.)
#[test]
fn a_file_replaced_by_hand_is_followed_not_renamed_over() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("cache.lc");
    let cache = FileCache::open(&path).unwrap();
    cache.set("ours".to_string(), b"old file".to_vec()).unwrap();
    // Another cache file, made elsewhere and moved into place.
    let elsewhere = TempDir::new_in(dir.path()).unwrap();
    let other = elsewhere.path().join("other.lc");
    {
        let theirs = FileCache::open(&other).unwrap();
        theirs
            .set("theirs".to_string(), b"new file".to_vec())
            .unwrap();
    }
    std::fs::rename(&other, &path).unwrap();
    cache.compact().unwrap();
    assert_eq!(
        cache.get(&"theirs".to_string()).unwrap(),
        Some(b"new file".to_vec()),
        "the compaction followed the file now at the path"
    );
    assert_eq!(cache.get(&"ours".to_string()).unwrap(), None);
    // Replaced again, with no compaction: a write 100 ms later follows too.
    {
        let third = FileCache::open(&other).unwrap();
        third
            .set("third".to_string(), b"third file".to_vec())
            .unwrap();
    }
    std::fs::rename(&other, &path).unwrap();
    thread::sleep(Duration::from_millis(150));
    cache.set("after".to_string(), b"written".to_vec()).unwrap();
    drop(cache);
    let reopened = FileCache::open(&path).unwrap();
    assert_eq!(
        reopened.get(&"third".to_string()).unwrap(),
        Some(b"third file".to_vec())
    );
    assert_eq!(
        reopened.get(&"after".to_string()).unwrap(),
        Some(b"written".to_vec()),
        "the write went to the file at the path, not to the unlinked one"
    );
}

// ---------------------------------------------------------------------------
// 4. A failed automatic compaction does not fail the write before it.
// ---------------------------------------------------------------------------

/// Every name in `dir` with `.compact` in it.
fn compact_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".compact"))
        .collect()
}

/// Proves that a write that happened reports `Ok` even when the automatic
/// compaction after it fails: with a directory where compaction's temporary
/// file goes, every compaction fails, yet with compaction after every write
/// each `set` returns `Ok` and its value is there, now and after reopening.
#[test]
fn a_failed_automatic_compaction_does_not_fail_the_write() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("blocked.lc");
    std::fs::create_dir(compact_path(&path)).unwrap();
    // TODO(api): with a compaction-error hook, also require that it was
    // called once per failed compaction, with the error.
    let cache = FileCache::builder(&path)
        .compact_when(0.0, 0)
        .open()
        .unwrap();
    for n in 0..20 {
        let key = format!("k{n}");
        if let Err(e) = cache.set(key.clone(), value_of(&key)) {
            let written = cache.get(&key).unwrap() == Some(value_of(&key));
            panic!(
                "set {key} returned Err, though only the compaction after it failed \
                 (the value {} there): {e}",
                if written { "is" } else { "is not" }
            );
        }
        assert_eq!(cache.get(&key).unwrap(), Some(value_of(&key)), "{key}");
        // An overwrite leaves garbage: a compaction is due at once.
        cache.set(key.clone(), value_of(&key)).unwrap();
    }
    assert!(
        cache.compact().is_err(),
        "an explicit compaction reports that it failed"
    );
    assert_eq!(cache.len().unwrap(), 20);
    drop(cache);
    std::fs::remove_dir(compact_path(&path)).unwrap();
    let cache = FileCache::open(&path).unwrap();
    for n in 0..20 {
        let key = format!("k{n}");
        assert_eq!(cache.get(&key).unwrap(), Some(value_of(&key)), "{key}");
    }
    cache.compact().unwrap();
    assert_eq!(cache.len().unwrap(), 20);
    assert!(compact_leftovers(dir.path()).is_empty());
}

/// A value of about 6 KB for `key`, different for every key.
fn full_value(key: &str) -> Vec<u8> {
    let mut value = value_of(key);
    value.extend((0..6000u32).map(|i| (i as u8).wrapping_add(key.len() as u8)));
    value
}

/// Proves that on a full disk (a 2 MiB tmpfs, 1.25 MiB of it taken by
/// another file) a write reports an error only when it did not happen:
/// with compaction after every write, which fails long before appends do,
/// each `set` that returned `Ok` is there, each that returned `Err` (an
/// I/O error) left nothing, gets keep serving every acknowledged value, and
/// no `.compact` file is left behind. Once the other file is deleted,
/// writes and an explicit compaction work again, and every acknowledged
/// value is there after reopening.
#[test]
fn on_a_full_disk_only_writes_that_did_not_happen_fail() {
    let tmpfs = match Tmpfs::mount("2m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            skipped("on_a_full_disk_only_writes_that_did_not_happen_fail", &why);
            return;
        }
    };
    let filler = tmpfs.path().join("filler");
    std::fs::write(&filler, vec![0x5A; 1280 * 1024]).unwrap();
    let path = tmpfs.path().join("full.lc");
    // TODO(api): with a compaction-error hook, require that it saw the
    // failed compactions (ENOSPC) while the writes returned Ok.
    let cache = FileCache::builder(&path)
        .compact_when(0.0, 0)
        .open()
        .unwrap();
    let mut acked: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut failed = 0;
    for n in 0..400 {
        let key = format!("k{n:03}");
        match cache.set(key.clone(), full_value(&key)) {
            Ok(()) => acked.push(key.clone()),
            Err(e) => {
                failed += 1;
                if !matches!(&e, Error::Io { .. }) {
                    problems.push(format!("set {key}: not an I/O error: {e:?}"));
                }
                match cache.get(&key) {
                    Ok(None) => {}
                    Ok(Some(_)) => problems.push(format!(
                        "set {key} returned Err, yet the write happened (get returns it): {e}"
                    )),
                    Err(get) => problems.push(format!("get {key} after a failed set: {get}")),
                }
            }
        }
        let leftovers = compact_leftovers(tmpfs.path());
        if !leftovers.is_empty() {
            problems.push(format!("after set {key}: compaction left {leftovers:?}"));
        }
        if !problems.is_empty() || failed == 3 {
            break;
        }
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|key| cache.get(*key).ok().flatten() != Some(full_value(key)))
        .collect();
    if !lost.is_empty() {
        problems.push(format!(
            "{} of {} acknowledged values do not read back: {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(8)]
        ));
    }
    assert!(
        problems.is_empty(),
        "after {} acknowledged writes and {failed} failed ones:\n- {}",
        acked.len(),
        problems.join("\n- ")
    );
    eprintln!(
        "full disk: {} writes fitted, then {failed} failed",
        acked.len()
    );
    assert!(failed > 0, "the disk filled up: {} writes fit", acked.len());
    assert!(acked.len() > 20, "only {} writes fit", acked.len());

    std::fs::remove_file(&filler).unwrap();
    for n in 0..10 {
        let key = format!("later-{n}");
        cache
            .set(key.clone(), full_value(&key))
            .unwrap_or_else(|e| panic!("set {key} once there is room: {e}"));
        acked.push(key);
    }
    cache.compact().expect("a compaction once there is room");
    drop(cache);
    let cache = FileCache::open(&path).unwrap();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|key| cache.get(*key).unwrap() != Some(full_value(key)))
        .collect();
    assert!(lost.is_empty(), "lost after reopening: {lost:?}");
    assert_eq!(cache.len().unwrap(), acked.len());
    assert!(cache.verify().unwrap().damage.is_empty());
    assert!(compact_leftovers(tmpfs.path()).is_empty());
    drop(cache);
}

// ---------------------------------------------------------------------------
// 5. Compaction keeps the file's mode and owner.
// ---------------------------------------------------------------------------

/// Proves that compaction keeps what the user set on the data file: its
/// permission bits (0640 here) and, when the test runs as root, its owner
/// and group (4242:4343).
#[test]
fn compaction_keeps_the_files_mode_and_owner() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("mode.lc");
    // TODO(api): with an option for the mode of a new file, also check a
    // file created with it.
    let cache = open_manual(&path);
    cache.set("k".to_string(), b"v".to_vec()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::os::unix::fs::chown(&path, Some(4242), Some(4343)).unwrap();
    } else {
        skipped(
            "compaction_keeps_the_files_mode_and_owner (the owner part)",
            "not root: cannot chown",
        );
    }
    cache.compact().unwrap();
    assert_eq!(cache.generation().unwrap(), 1, "compacted");
    let meta = std::fs::metadata(&path).unwrap();
    let mut problems = Vec::new();
    if meta.mode() & 0o7777 != 0o640 {
        problems.push(format!("mode {:o}, not 640", meta.mode() & 0o7777));
    }
    if root && (meta.uid(), meta.gid()) != (4242, 4343) {
        problems.push(format!(
            "owner {}:{}, not 4242:4343",
            meta.uid(),
            meta.gid()
        ));
    }
    assert!(
        problems.is_empty(),
        "after compaction the data file has {}",
        problems.join(" and ")
    );
    assert_eq!(cache.get(&"k".to_string()).unwrap(), Some(b"v".to_vec()));
}

// ---------------------------------------------------------------------------
// 6. Absurd options are errors, not panics.
// ---------------------------------------------------------------------------

/// Proves that a growth too large to map is an error from `open`, not a
/// panic (an overflow, a division by zero) in the builder or in `open`.
#[test]
fn an_absurd_growth_is_an_error_not_a_panic() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("growth.lc");
    for growth in [u64::MAX, 1 << 63] {
        let opened = std::panic::catch_unwind(|| FileCache::builder(&path).growth(growth).open());
        match opened {
            Err(_) => panic!("growth({growth}) panicked (see above) instead of failing"),
            Ok(Ok(cache)) if growth == u64::MAX => {
                panic!("growth(u64::MAX) cannot be mapped, yet it opened: {cache:?}")
            }
            // A growth clamped to something that maps must work.
            Ok(Ok(cache)) => {
                cache.set("k".to_string(), b"v".to_vec()).unwrap();
                assert_eq!(cache.get(&"k".to_string()).unwrap(), Some(b"v".to_vec()));
            }
            Ok(Err(e)) => eprintln!("growth({growth}): {e}"),
        }
    }
}
