//! Third hostile review of issue 12, on the fixes no reviewer had seen:
//! d88055f (old copies of a forked stack read and write through the newest
//! layers; `Codec::format` escaped into `Versioned` namespaces; reflect
//! through a depth-bounded seed, 8192 passes), 8b9bff8 (ftrack placeholders
//! made whole before their first write-through; a write left by a writer
//! that panicked stays pending) and 86e0224 (`Error::Layer`'s layer name).
//!
//! It proved five bugs on 42f1c18. Four are fixed and their tests run:
//! a forked copy's layers are published only when `cache_mut`'s guard puts
//! it in place, so no call sees a stack changed half way; a writer whose
//! re-write for another call panics sets that call's request back; a
//! placeholder's fill reads each layer directly, so the session stack's
//! `Degrade` policy cannot hide a failed read; `Error::Layer` cuts a
//! layer's name outside `<...>` only. The fifth stays marked, as a known
//! limitation (docs/ftrack.md): a layer that itself reports its failed
//! reads as misses cannot be told from one that holds nothing. The other
//! tests are attacks that found nothing, and still assert what they
//! attacked.

#![cfg(all(
    feature = "file",
    feature = "ftrack",
    feature = "bincode",
    feature = "json",
    feature = "reflect"
))]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use layercache::codec::{Codec, FnCodec, Json};
use layercache::ftrack::{Entity, EntityKey, FixtureServer, Session, Value};
use layercache::{
    Cache, CacheExt, Entry, Error, ErrorPolicy, FileCache, Layered, MemoryCache, Operation, Schema,
    Serialised,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tempfile::TempDir;

/// Runs `work` on its own thread and panics if it does not finish within
/// `limit` (the stuck thread is leaked): a hang fails the test.
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(RecvTimeoutError::Timeout) => panic!("HANG: {what} did not finish within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what}: worker vanished"),
    }
}

type Layer = Box<dyn Cache<String, Entity>>;

fn task_server() -> Arc<FixtureServer> {
    let server = FixtureServer::new();
    server
        .insert_all([
            json!({"__entity_type__": "Task", "id": "t1", "name": "layout", "status": "wip"}),
            json!({"__entity_type__": "Shot", "id": "s1", "name": "sh010",
                   "parent": {"__entity_type__": "Task", "id": "t1"}}),
        ])
        .unwrap();
    Arc::new(server)
}

/// The session's file layer at `path`: `Serialised(FileCache, codec)`.
fn file_layer(session: &Session, path: &std::path::Path) -> Layer {
    let file = FileCache::open(path).expect("open cache file");
    Box::new(Serialised::new(file, session.codec()))
}

/// A session whose stack is memory over the file at `path`.
fn file_session(server: &Arc<FixtureServer>, path: &std::path::Path, auto: bool) -> Session {
    let path = path.to_owned();
    Session::builder(server.clone())
        .auto_populate(auto)
        .cache(move |session| Some(file_layer(session, &path)))
        .build()
}

fn task_key() -> EntityKey {
    EntityKey::new("Task", ["t1"])
}

/// What the file at `path` holds of Task t1's `name`, read by a fresh
/// session straight from its file layer (no server): `None` if it holds
/// no record of Task t1.
fn in_file(server: &Arc<FixtureServer>, path: &std::path::Path, name: &str) -> Option<Value> {
    let fresh = file_session(server, path, false);
    let key = fresh.cache_key(&task_key()).unwrap();
    let stack = fresh.cache();
    let record = stack.layer(1).unwrap().get(&key).unwrap();
    record.map(|task| task.peek(name))
}

/// Merges `status` into Task t1 of `session` (a local value).
fn merge_status(session: &Session, status: &str) -> layercache::Result<Entity> {
    let incoming = Entity::new(task_key());
    incoming.set("status", status);
    session.merge(&incoming)
}

fn s(text: &str) -> Value {
    Value::String(text.into())
}

// ===========================================================================
// 1. Layered (d88055f): old copies read and write through the newest layers.
// ===========================================================================

/// BUG: a call through the session made while a `cache_mut` guard is
/// changing the stack in more than one step goes through the guard's
/// half-changed copy, and its write reaches neither the old file nor the
/// new one.
///
/// d88055f makes every call through an old copy go through `core.layers`
/// as they are *now*, and the guard's copy changes `core.layers` (and bumps
/// `core.changes`) at each `remove_layer`/`push`, not when it is dropped.
/// `Session::cache_mut` promises: "calls that started before the guard is
/// dropped ... finish on the stack they started with ...; calls that start
/// after it use the new stack". Swapping the file layer (remove the old
/// one, push the new one) is the natural use. Between the two steps every
/// session call (they all go through `Session::cache()`, the published old
/// stack) sees a stack of memory alone: a merge returns Ok having written
/// memory only. Once the guard is dropped, the old file (the stack the call
/// started with) lacks the status, and so does the new one (the stack now):
/// a fresh session on either file reads the old status, though the merge
/// said "written through every layer". The merge runs on another thread
/// while the guard is held between its two steps (same thread or not, the
/// result is the same: every session call in that window does it).
#[test]
fn a_merge_while_a_file_layer_is_swapped_reaches_a_file() {
    let dir = TempDir::new().unwrap();
    let old_path = dir.path().join("old.lc");
    let new_path = dir.path().join("new.lc");
    let server = task_server();
    let session = file_session(&server, &old_path, false);
    session.get("Task", ["t1"]).unwrap().unwrap();
    merge_status(&session, "before").unwrap();
    assert_eq!(in_file(&server, &old_path, "status"), Some(s("before")));
    {
        let mut stack = session.cache_mut();
        let old_file = stack.remove_layer(1).expect("the file layer");
        // A call that starts before the guard is dropped, on another thread.
        let merged = within("a merge during cache_mut", Duration::from_secs(20), {
            let session = session.clone();
            move || merge_status(&session, "during").map(|_| ())
        });
        assert!(merged.is_ok(), "{merged:?}");
        stack.push_boxed(file_layer(&session, &new_path));
        drop(old_file);
    }
    let old = in_file(&server, &old_path, "status");
    let new = in_file(&server, &new_path, "status");
    let memory = session.get("Task", ["t1"]).unwrap().unwrap().peek("status");
    assert!(
        old == Some(s("during")) || new == Some(s("during")),
        "merge(status \"during\") returned Ok while cache_mut swapped the file layer, but \
         neither file got it: the old file (the stack the call started on) holds {old:?}, the \
         new file (the stack now) holds {new:?}; only the session's memory says {memory:?}"
    );
}

/// BUG: a read through a snapshot taken before a `cache_mut` misses a key
/// that both the stack before and the stack after hold, while the guard is
/// between two steps (see `a_merge_while_a_file_layer_is_swapped_reaches_a_file`).
/// The snapshot's documentation: "a snapshot that no later cache_mut
/// changes". Both files hold Task t1; the read sees memory alone.
#[test]
fn a_read_while_a_file_layer_is_swapped_finds_the_key() {
    let dir = TempDir::new().unwrap();
    let old_path = dir.path().join("old.lc");
    let new_path = dir.path().join("new.lc");
    let server = task_server();
    for path in [&old_path, &new_path] {
        let filler = file_session(&server, path, false);
        filler.get("Task", ["t1"]).unwrap().unwrap();
    }
    // A fresh session: memory empty, both files hold Task t1.
    let session = file_session(&server, &old_path, false);
    let key = session.cache_key(&task_key()).unwrap();
    let snapshot = session.cache();
    let during = {
        let mut stack = session.cache_mut();
        stack.remove_layer(1).expect("the file layer");
        let during = snapshot.get(&key).unwrap().map(|task| task.peek("name"));
        stack.push_boxed(file_layer(&session, &new_path));
        during
    };
    let after = snapshot.get(&key).unwrap().map(|task| task.peek("name"));
    assert_eq!(after, Some(s("layout")), "after the guard");
    assert_eq!(
        during,
        Some(s("layout")),
        "a snapshot taken before cache_mut, over memory and a file holding Task t1, read a \
         miss while the guard swapped that file for another holding Task t1 too"
    );
}

/// A value whose only attribute `n` is `n`.
fn counter(n: i64) -> Entity {
    let entity = Entity::new(EntityKey::new("C", ["c"]));
    entity.set("n", n);
    entity
}

fn count_of(entity: &Entity) -> i64 {
    match entity.peek("n") {
        Value::Integer(n) => n,
        other => panic!("n is {other:?}"),
    }
}

/// Attack: writers and readers through many old snapshots of a session's
/// stack while another thread adds and removes a middle memory layer (one
/// step per guard) and promotions fill it. Each key has one writer writing
/// increasing counts through a random snapshot; readers, each through its
/// own snapshots, must never see a count go backwards or one never
/// written, and at the end every key reads its last count through every
/// snapshot ever taken. Deadlines on everything. Found nothing.
#[test]
fn old_snapshots_race_layer_changes_without_going_back() {
    within(
        "snapshots racing cache_mut",
        Duration::from_secs(60),
        || {
            let dir = TempDir::new().unwrap();
            let server = task_server();
            let session = file_session(&server, &dir.path().join("race.lc"), false);
            const KEYS: usize = 4;
            let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
            let snapshots = Arc::new(Mutex::new(vec![session.cache()]));
            let stop = Arc::new(AtomicBool::new(false));
            let last: Arc<Vec<AtomicU64>> =
                Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
            for (i, key) in keys.iter().enumerate() {
                session.cache().set(key.clone(), counter(0)).unwrap();
                last[i].store(0, Ordering::SeqCst);
            }
            let pick = |snapshots: &Mutex<Vec<Arc<Layered<String, Entity>>>>, seed: usize| {
                let list = snapshots.lock().unwrap();
                list[seed % list.len()].clone()
            };
            let mut handles = Vec::new();
            // The changer.
            {
                let session = session.clone();
                let snapshots = snapshots.clone();
                let stop = stop.clone();
                handles.push(thread::spawn(move || {
                    let mut changes = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        {
                            let mut stack = session.cache_mut();
                            if stack.depth() == 2 {
                                stack.insert_layer(
                                    1,
                                    Arc::new(MemoryCache::<String, Entity>::new()),
                                );
                            } else {
                                stack.remove_layer(1);
                            }
                        }
                        snapshots.lock().unwrap().push(session.cache());
                        changes += 1;
                        thread::yield_now();
                    }
                    changes
                }));
            }
            // One writer per key.
            for (i, key) in keys.iter().enumerate() {
                let (snapshots, stop, last, key) =
                    (snapshots.clone(), stop.clone(), last.clone(), key.clone());
                handles.push(thread::spawn(move || {
                    let mut n = 0i64;
                    while !stop.load(Ordering::SeqCst) && n < 3000 {
                        n += 1;
                        let stack = pick(&snapshots, n as usize * 7 + i);
                        stack.set(key.clone(), counter(n)).unwrap();
                        last[i].store(n as u64, Ordering::SeqCst);
                    }
                    n as usize
                }));
            }
            // Readers.
            for r in 0..2 {
                let (snapshots, stop, last, keys) =
                    (snapshots.clone(), stop.clone(), last.clone(), keys.clone());
                handles.push(thread::spawn(move || {
                    let mut seen = [0i64; KEYS];
                    let mut reads = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        for (i, key) in keys.iter().enumerate() {
                            let floor = last[i].load(Ordering::SeqCst) as i64;
                            let stack = pick(&snapshots, reads * 13 + r);
                            let got = stack.get(key).unwrap().map(|e| count_of(&e));
                            let Some(got) = got else {
                                panic!("{key}: a miss (last written {floor})");
                            };
                            assert!(
                                got >= seen[i] && got >= floor,
                                "{key}: read {got} after reading {} (a write of {floor} had \
                             returned before this read began)",
                                seen[i]
                            );
                            let ceiling = last[i].load(Ordering::SeqCst) as i64 + 1;
                            assert!(got <= ceiling, "{key}: read {got}, never written");
                            seen[i] = got;
                            reads += 1;
                        }
                    }
                    reads
                }));
            }
            thread::sleep(Duration::from_millis(1500));
            stop.store(true, Ordering::SeqCst);
            let counts: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            eprintln!("changes, writes per key, reads: {counts:?}");
            for snapshot in snapshots.lock().unwrap().iter() {
                for (i, key) in keys.iter().enumerate() {
                    let got = snapshot.get(key).unwrap().map(|e| count_of(&e));
                    assert_eq!(
                        got,
                        Some(last[i].load(Ordering::SeqCst) as i64),
                        "{key} through a snapshot"
                    );
                }
            }
        },
    );
}

/// Measures (never asserts) what a read through a superseded snapshot
/// costs against one through the current stack: `newest()` takes the
/// core's lock and clones the layer list on every call. Reported with
/// `--nocapture`; asserts only that both read the right value. Measured
/// (debug, 2 busy cores): about 500 ns a top hit through the current
/// stack, 1265 ns through a superseded one on one thread (2.5 times), 430
/// against 730 ns each on two threads: the lock is shared, the cost is the
/// allocation and the Arc clones per call, not contention.
#[test]
fn a_stale_snapshots_reads_cost_is_reported() {
    within("stale snapshot reads", Duration::from_secs(60), || {
        let server = task_server();
        let session = Session::builder(server).build();
        for _ in 0..3 {
            session
                .cache_mut()
                .push(MemoryCache::<String, Entity>::new());
        }
        let stale = session.cache();
        session
            .cache_mut()
            .push(MemoryCache::<String, Entity>::new());
        let fresh = session.cache();
        fresh.set("k".to_string(), counter(7)).unwrap();
        const N: usize = 200_000;
        let time = |stack: Arc<Layered<String, Entity>>, threads: usize| {
            let started = Instant::now();
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let stack = stack.clone();
                    thread::spawn(move || {
                        let key = "k".to_string();
                        for _ in 0..N {
                            assert_eq!(count_of(&stack.get(&key).unwrap().unwrap()), 7);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            started.elapsed().as_nanos() as f64 / (N * threads) as f64
        };
        let fresh1 = time(fresh.clone(), 1);
        let stale1 = time(stale.clone(), 1);
        let fresh2 = time(fresh.clone(), 2);
        let stale2 = time(stale.clone(), 2);
        eprintln!(
            "ns per get (debug build, 5 layers, top hit): current stack {fresh1:.0} (1 thread) \
             {fresh2:.0} (2 threads); superseded snapshot {stale1:.0} (1 thread) {stale2:.0} \
             (2 threads)"
        );
    });
}

// ===========================================================================
// 2. ftrack session (8b9bff8): placeholders and pending write-throughs.
// ===========================================================================

/// A layer that, when armed, lets the next `set` store and then blocks it
/// until released (returning Ok), and panics on the `set` after that.
#[derive(Debug)]
struct StoreThenPanic {
    inner: Layer,
    armed: AtomicUsize,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Cache<String, Entity> for StoreThenPanic {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<Entity>>> {
        self.inner.get_entry(key)
    }

    fn set_entry(&self, key: String, entry: Entry<Entity>) -> layercache::Result<()> {
        match self
            .armed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            Ok(2) => {
                self.inner.set_entry(key, entry)?;
                self.entered
                    .lock()
                    .unwrap()
                    .take()
                    .unwrap()
                    .send(())
                    .unwrap();
                let release = self.release.lock().unwrap().take().unwrap();
                release
                    .recv_timeout(Duration::from_secs(20))
                    .expect("released");
                Ok(())
            }
            Ok(1) => panic!("store-then-panic: the second write panics on purpose"),
            _ => self.inner.set_entry(key, entry),
        }
    }

    fn remove(&self, key: &String) -> layercache::Result<Option<Entity>> {
        self.inner.remove(key)
    }

    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
}

/// BUG: a merge left to a writer is lost when the writer's *second* write
/// (the one made for it) panics: nothing is pending, no later touch writes
/// it, and the file keeps the older value for good.
///
/// 8b9bff8 keeps `again` when a writer panics, so a merge that returned Ok
/// having asked a writer to write again is pending. But `Writer::again()`
/// clears `again` *before* the write it asks for: A writes status "a"
/// (stored), B merges "b" meanwhile (again = true, returns Ok), A's loop
/// takes `again` (now false) and writes again, and that write panics. The
/// Drop keeps `again`, which is false: nothing is pending. `Session::merge`
/// promises: "If that other call panics ... before writing these values,
/// the write is pending ... the next call that touches the identity ...
/// writes the instance through". Here the next touch (a get) writes
/// nothing, a merge of the same value writes nothing (nothing changed), and
/// a fresh session reads "a" from the file while B was told Ok for "b".
#[test]
fn a_panic_in_the_writers_second_write_keeps_the_merge_pending() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("again.lc");
    let server = task_server();
    let cell: Arc<Mutex<Option<Arc<StoreThenPanic>>>> = Arc::new(Mutex::new(None));
    let session = {
        let (cell, path) = (cell.clone(), path.clone());
        Session::builder(server.clone())
            .auto_populate(false)
            .cache(move |session| {
                let layer = Arc::new(StoreThenPanic {
                    inner: file_layer(session, &path),
                    armed: AtomicUsize::new(0),
                    entered: Mutex::new(None),
                    release: Mutex::new(None),
                });
                *cell.lock().unwrap() = Some(layer.clone());
                Some(Box::new(layer) as Layer)
            })
            .build()
    };
    let layer = cell.lock().unwrap().clone().unwrap();
    session.get("Task", ["t1"]).unwrap().unwrap();
    merge_status(&session, "0").unwrap();
    assert_eq!(in_file(&server, &path, "status"), Some(s("0")));

    let (entered_tx, entered_rx) = mpsc::channel();
    *layer.entered.lock().unwrap() = Some(entered_tx);
    let (release_tx, release_rx) = mpsc::channel();
    *layer.release.lock().unwrap() = Some(release_rx);
    layer.armed.store(2, Ordering::SeqCst);
    let writer = {
        let session = session.clone();
        thread::spawn(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                merge_status(&session, "a").map(|_| ())
            }))
        })
    };
    entered_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("A stored \"a\" and waits");
    let b = within("B's merge while A writes", Duration::from_secs(20), {
        let session = session.clone();
        move || merge_status(&session, "b").map(|_| ())
    });
    assert!(b.is_ok(), "B: {b:?}");
    release_tx.send(()).unwrap();
    let a = writer.join().unwrap();
    assert!(a.is_err(), "A's second write panics");
    assert_eq!(in_file(&server, &path, "status"), Some(s("a")));
    // The next calls touching Task t1: a get, then a merge of B's value.
    let task = session.get("Task", ["t1"]).unwrap().unwrap();
    assert_eq!(task.peek("status"), s("b"), "the session's instance");
    merge_status(&session, "b").unwrap();
    let file = in_file(&server, &path, "status");
    assert_eq!(
        file,
        Some(s("b")),
        "B's merge of \"b\" returned Ok, leaving its write to A; A's re-write for it panicked, \
         and after a get and another merge of Task t1 the file still holds {file:?}: the write \
         was never pending"
    );
}

/// A layer whose reads fail while `fail_reads` is set (a transient I/O
/// error), writes always going through.
#[derive(Debug)]
struct FlakyReads {
    inner: Layer,
    fail_reads: Arc<AtomicBool>,
}

impl Cache<String, Entity> for FlakyReads {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<Entity>>> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(Error::backend(
                "flaky",
                Operation::Get,
                "a transient read failure",
            ));
        }
        self.inner.get_entry(key)
    }

    fn set_entry(&self, key: String, entry: Entry<Entity>) -> layercache::Result<()> {
        self.inner.set_entry(key, entry)
    }

    fn remove(&self, key: &String) -> layercache::Result<Option<Entity>> {
        self.inner.remove(key)
    }

    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
}

/// Fills `path` with Task t1 and Shot s1 in full, from the server.
fn fill_file(server: &Arc<FixtureServer>, path: &std::path::Path) {
    let first = file_session(server, path, true);
    first
        .query(r#"select name, status from Task where id is "t1""#)
        .unwrap();
    first
        .query(r#"select name, parent from Shot where id is "s1""#)
        .unwrap();
    drop(first);
    assert_eq!(in_file(server, path, "name"), Some(s("layout")));
}

/// A session over `layer(session)`, the Task t1 placeholder in its memory
/// (via Shot s1, read from the file), and the switch of the flaky reads.
fn session_with_placeholder(
    server: &Arc<FixtureServer>,
    path: &std::path::Path,
    degrade_inside: bool,
) -> (Session, Entity, Arc<AtomicBool>) {
    let fail_reads = Arc::new(AtomicBool::new(false));
    let session = {
        let (fail_reads, path) = (fail_reads.clone(), path.to_owned());
        Session::builder(server.clone())
            .auto_populate(false)
            .cache(move |session| {
                let flaky = FlakyReads {
                    inner: file_layer(session, &path),
                    fail_reads,
                };
                Some(if degrade_inside {
                    Box::new(
                        Layered::new()
                            .with_layer(flaky)
                            .with_policy(ErrorPolicy::Degrade),
                    ) as Layer
                } else {
                    Box::new(flaky) as Layer
                })
            })
            .build()
    };
    let shot = session.get("Shot", ["s1"]).unwrap().unwrap();
    let parent = match shot.get("parent").unwrap() {
        Value::Entity(parent) => parent,
        other => panic!("parent is {other:?}"),
    };
    assert_eq!(parent.peek("name"), Value::NotSet, "a placeholder");
    (session, parent, fail_reads)
}

/// Attack: the placeholder's fill from the lower layers fails (the session
/// stack is Strict): nothing may be written, the error must come back,
/// and once reads work again the next write-through fills it first. Found
/// nothing: the query fails, the file keeps the name, and later merges
/// keep it.
#[test]
fn a_placeholder_whose_fill_fails_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("flaky.lc");
    let server = task_server();
    fill_file(&server, &path);
    let (session, parent, fail_reads) = session_with_placeholder(&server, &path, false);
    fail_reads.store(true, Ordering::SeqCst);
    let merged = merge_status(&session, "done");
    fail_reads.store(false, Ordering::SeqCst);
    assert!(merged.is_err(), "the fill's read failed: {merged:?}");
    assert_eq!(in_file(&server, &path, "name"), Some(s("layout")));
    merge_status(&session, "later").unwrap();
    assert_eq!(parent.peek("name"), s("layout"), "filled before the write");
    assert_eq!(in_file(&server, &path, "name"), Some(s("layout")));
    assert_eq!(in_file(&server, &path, "status"), Some(s("later")));
}

/// The case of the bug below that the session can see: the session's own
/// stack under `Degrade` (a failed read of the file is a miss to the
/// stack). `make_whole` reads each layer directly, so the failure comes
/// back and nothing is written.
#[test]
fn a_placeholder_under_a_degrading_session_stack_keeps_the_files_record() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("degrade-session.lc");
    let server = task_server();
    fill_file(&server, &path);
    let (session, _parent, fail_reads) = session_with_placeholder(&server, &path, false);
    {
        let mut stack = session.cache_mut();
        *stack = std::mem::take(&mut *stack).with_policy(ErrorPolicy::Degrade);
    }
    fail_reads.store(true, Ordering::SeqCst);
    let merged = merge_status(&session, "done");
    fail_reads.store(false, Ordering::SeqCst);
    assert!(merged.is_err(), "the fill's read failed: {merged:?}");
    assert_eq!(in_file(&server, &path, "name"), Some(s("layout")));
    merge_status(&session, "later").unwrap();
    assert_eq!(in_file(&server, &path, "name"), Some(s("layout")));
    assert_eq!(in_file(&server, &path, "status"), Some(s("later")));
}

/// BUG (policy-dependent): a placeholder written through a lower layer
/// that degrades a failed read into a miss (a `Layered` with
/// `ErrorPolicy::Degrade` as the session's cache, a documented layer kind)
/// replaces the file's full record with its partial encoding: one
/// transient read error and the Task's name is gone from the file for
/// every later session.
///
/// `make_whole` reads "the record the layers below memory hold" and, on a
/// miss, marks the placeholder whole "as then writing it loses nothing".
/// A degraded failure is a miss that is not one. `Session::merge`
/// promises "Writing through never loses values a layer below memory holds
/// for the identity". A placeholder has no way to be safe on a miss it
/// cannot trust; it could stay partial and write nothing (or only merge
/// into what it reads back) instead.
#[test]
#[ignore = "known limitation: a layer that reports its failed read as a miss (a Layered under Degrade used as one layer) cannot be told from one that holds nothing"]
fn a_placeholder_under_a_degrading_layer_keeps_the_files_record() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("degrade.lc");
    let server = task_server();
    fill_file(&server, &path);
    let (session, _parent, fail_reads) = session_with_placeholder(&server, &path, true);
    fail_reads.store(true, Ordering::SeqCst);
    let merged = merge_status(&session, "done");
    fail_reads.store(false, Ordering::SeqCst);
    let name = in_file(&server, &path, "name");
    assert_eq!(
        name,
        Some(s("layout")),
        "merge of status into the Task placeholder ({merged:?}) while the file's read failed \
         once (degraded to a miss): the file's Task record now has name {name:?}"
    );
}

/// Attack: two sessions on one file, each with the Task placeholder (from
/// the Shot), merge different attributes in turn, then a third reads: no
/// attribute the file held is lost, and the later merge wins. Found
/// nothing.
#[test]
fn placeholders_in_two_sessions_keep_each_others_values() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("two.lc");
    let server = task_server();
    fill_file(&server, &path);
    let (x, _xp, _) = session_with_placeholder(&server, &path, false);
    let (y, _yp, _) = session_with_placeholder(&server, &path, false);
    merge_status(&x, "x").unwrap();
    let incoming = Entity::new(task_key());
    incoming.set("priority", "high");
    y.merge(&incoming).unwrap();
    assert_eq!(in_file(&server, &path, "name"), Some(s("layout")));
    assert_eq!(in_file(&server, &path, "status"), Some(s("x")));
    assert_eq!(in_file(&server, &path, "priority"), Some(s("high")));
    merge_status(&y, "y").unwrap();
    assert_eq!(in_file(&server, &path, "status"), Some(s("y")));
    assert_eq!(in_file(&server, &path, "priority"), Some(s("high")));
}

// ===========================================================================
// 3. Namespaces (d88055f): the codec's format escaped injectively.
// ===========================================================================

/// A codec of `u32` as decimal text, named `name`.
fn named(name: &str) -> impl Codec<u32> + Clone + use<> {
    FnCodec::new(
        name.to_string(),
        |n: &u32| Ok(n.to_string().into_bytes()),
        |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| Error::Decode {
                    codec: "decimal",
                    source: "not a number".into(),
                })
        },
    )
}

/// Attack: format names that differ only in what the escape rewrites
/// (`%`, escapes spelt out, UTF-8 vs its escape, case of the hex, `.` and
/// `:`, empty, very long) under versions with dots: every (version,
/// format) pair gets its own namespace, none is a prefix of another, and
/// values stored under one are never read under another. Found nothing.
#[test]
fn tricky_format_names_never_share_a_namespace() {
    let long = "x".repeat(10_000);
    let formats = [
        "",
        "%",
        "%25",
        "%2525",
        "a.b",
        "a%2Eb",
        "a%2eb",
        "a:b",
        "a%3Ab",
        "é",
        "%C3%A9",
        "%c3%a9",
        "e\u{301}",
        "json",
        "JSON",
        "json ",
        "-_",
        "\0",
        "%00",
        long.as_str(),
    ];
    let versions = ["v1", "v1.a", "v1.a.b", "a", "v1.%"];
    let mut namespaces: Vec<(String, String, String)> = Vec::new();
    for version in versions {
        let Ok(schema) = Schema::<u32>::version(version) else {
            continue;
        };
        for format in formats {
            let namespace = schema.namespace(&named(format));
            assert!(namespace.is_ascii(), "{namespace:?}");
            assert_eq!(namespace.matches(':').count(), 1, "{namespace:?}");
            namespaces.push((version.into(), format.into(), namespace));
        }
    }
    for (i, (v1, f1, n1)) in namespaces.iter().enumerate() {
        for (v2, f2, n2) in &namespaces[i + 1..] {
            assert!(
                !n1.starts_with(n2.as_str()) && !n2.starts_with(n1.as_str()),
                "({v1:?}, {f1:?}) -> {n1:?} and ({v2:?}, {f2:?}) -> {n2:?}"
            );
        }
    }
    // Stored under one, read under none of the others.
    let store: Arc<MemoryCache<String, Vec<u8>>> = Arc::new(MemoryCache::new());
    let schema = Schema::<u32>::version("v1").unwrap();
    for (i, format) in formats.iter().enumerate() {
        let cache = store.clone().versioned(named(format), schema.clone());
        assert_eq!(cache.get(&"k".to_string()).unwrap(), None, "{format:?}");
        cache.set("k".to_string(), i as u32).unwrap();
    }
    for (i, format) in formats.iter().enumerate() {
        let cache = store.clone().versioned(named(format), schema.clone());
        assert_eq!(cache.get(&"k".to_string()).unwrap(), Some(i as u32));
        assert_eq!(cache.keys().unwrap(), ["k".to_string()], "{format:?}");
    }
    // Clearing one leaves the others.
    let first = store.clone().versioned(named(formats[0]), schema.clone());
    first.clear().unwrap();
    assert_eq!(store.keys().unwrap().len(), formats.len() - 1);
}

// ===========================================================================
// 4. Schema::reflect (d88055f): depth-bounded seed, 8192 passes.
// ===========================================================================

/// Calls `$m!($name; V0 .. V599)`.
macro_rules! with_600 {
    ($m:ident, $name:ident) => {
        $m!($name; V0 V1 V2 V3 V4 V5 V6 V7 V8 V9 V10 V11 V12 V13 V14 V15 V16 V17 V18 V19 V20 V21 V22 V23 V24 V25 V26 V27 V28 V29 V30 V31 V32 V33 V34 V35 V36 V37 V38 V39 V40 V41 V42 V43 V44 V45 V46 V47 V48 V49 V50 V51 V52 V53 V54 V55 V56 V57 V58 V59 V60 V61 V62 V63 V64 V65 V66 V67 V68 V69 V70 V71 V72 V73 V74 V75 V76 V77 V78 V79 V80 V81 V82 V83 V84 V85 V86 V87 V88 V89 V90 V91 V92 V93 V94 V95 V96 V97 V98 V99 V100 V101 V102 V103 V104 V105 V106 V107 V108 V109 V110 V111 V112 V113 V114 V115 V116 V117 V118 V119 V120 V121 V122 V123 V124 V125 V126 V127 V128 V129 V130 V131 V132 V133 V134 V135 V136 V137 V138 V139 V140 V141 V142 V143 V144 V145 V146 V147 V148 V149 V150 V151 V152 V153 V154 V155 V156 V157 V158 V159 V160 V161 V162 V163 V164 V165 V166 V167 V168 V169 V170 V171 V172 V173 V174 V175 V176 V177 V178 V179 V180 V181 V182 V183 V184 V185 V186 V187 V188 V189 V190 V191 V192 V193 V194 V195 V196 V197 V198 V199 V200 V201 V202 V203 V204 V205 V206 V207 V208 V209 V210 V211 V212 V213 V214 V215 V216 V217 V218 V219 V220 V221 V222 V223 V224 V225 V226 V227 V228 V229 V230 V231 V232 V233 V234 V235 V236 V237 V238 V239 V240 V241 V242 V243 V244 V245 V246 V247 V248 V249 V250 V251 V252 V253 V254 V255 V256 V257 V258 V259 V260 V261 V262 V263 V264 V265 V266 V267 V268 V269 V270 V271 V272 V273 V274 V275 V276 V277 V278 V279 V280 V281 V282 V283 V284 V285 V286 V287 V288 V289 V290 V291 V292 V293 V294 V295 V296 V297 V298 V299 V300 V301 V302 V303 V304 V305 V306 V307 V308 V309 V310 V311 V312 V313 V314 V315 V316 V317 V318 V319 V320 V321 V322 V323 V324 V325 V326 V327 V328 V329 V330 V331 V332 V333 V334 V335 V336 V337 V338 V339 V340 V341 V342 V343 V344 V345 V346 V347 V348 V349 V350 V351 V352 V353 V354 V355 V356 V357 V358 V359 V360 V361 V362 V363 V364 V365 V366 V367 V368 V369 V370 V371 V372 V373 V374 V375 V376 V377 V378 V379 V380 V381 V382 V383 V384 V385 V386 V387 V388 V389 V390 V391 V392 V393 V394 V395 V396 V397 V398 V399 V400 V401 V402 V403 V404 V405 V406 V407 V408 V409 V410 V411 V412 V413 V414 V415 V416 V417 V418 V419 V420 V421 V422 V423 V424 V425 V426 V427 V428 V429 V430 V431 V432 V433 V434 V435 V436 V437 V438 V439 V440 V441 V442 V443 V444 V445 V446 V447 V448 V449 V450 V451 V452 V453 V454 V455 V456 V457 V458 V459 V460 V461 V462 V463 V464 V465 V466 V467 V468 V469 V470 V471 V472 V473 V474 V475 V476 V477 V478 V479 V480 V481 V482 V483 V484 V485 V486 V487 V488 V489 V490 V491 V492 V493 V494 V495 V496 V497 V498 V499 V500 V501 V502 V503 V504 V505 V506 V507 V508 V509 V510 V511 V512 V513 V514 V515 V516 V517 V518 V519 V520 V521 V522 V523 V524 V525 V526 V527 V528 V529 V530 V531 V532 V533 V534 V535 V536 V537 V538 V539 V540 V541 V542 V543 V544 V545 V546 V547 V548 V549 V550 V551 V552 V553 V554 V555 V556 V557 V558 V559 V560 V561 V562 V563 V564 V565 V566 V567 V568 V569 V570 V571 V572 V573 V574 V575 V576 V577 V578 V579 V580 V581 V582 V583 V584 V585 V586 V587 V588 V589 V590 V591 V592 V593 V594 V595 V596 V597 V598 V599);
    };
}

/// An enum named `$name` of the unit variants given.
macro_rules! wide_enum {
    ($name:ident; $($v:ident)*) => {
        #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
        pub enum $name { $($v),* }
    };
}

mod wide {
    use super::*;
    with_600!(wide_enum, E1);
    with_600!(wide_enum, E2);
    with_600!(wide_enum, E3);
    with_600!(wide_enum, E4);
    with_600!(wide_enum, E5);
    with_600!(wide_enum, E6);
    with_600!(wide_enum, E7);
    with_600!(wide_enum, E8);

    /// Eight enums of 600 variants in fields: 4800 variants.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Eight {
        pub a: E1,
        pub b: E2,
        pub c: E3,
        pub d: E4,
        pub e: E5,
        pub f: E6,
        pub g: E7,
        pub h: E8,
    }

    /// One of them in a field.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct One {
        pub a: E1,
    }

    /// The same enum in a field, one level deeper each, 100 levels.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Deep(pub Option<Box<Deep>>, pub E2);
}

/// Reflects `V` on its own thread within `limit`; the outcome and time.
fn timed_reflect<V: serde::de::DeserializeOwned + 'static>(
    limit: Duration,
) -> (Result<String, String>, Duration) {
    within(std::any::type_name::<V>(), limit, || {
        let started = Instant::now();
        let result = Schema::<V>::reflect()
            .map(|s| s.to_string())
            .map_err(|e| e.to_string());
        (result, started.elapsed())
    })
}

/// Attack: wide enums in fields. The doc says enums in fields are traced
/// whole and a pass learns at most one more variant of an enum: one
/// 600-variant enum needs about 1200 passes; eight distinct ones in one
/// struct, if the passes learn them one after another, 9600 passes, over
/// the limit of 8192. Time reported (debug build). Found nothing wrong: all
/// three trace (measured: one enum 0.85 s, eight 8.2 s, a self-nesting
/// struct holding one 0.8 s; slow, not refused).
#[test]
fn wide_enums_in_fields_reflect_in_bounded_time() {
    let (one, one_took) = timed_reflect::<wide::One>(Duration::from_secs(120));
    eprintln!("one 600-variant enum: {one:?} in {one_took:?}");
    assert!(one.is_ok(), "{one:?}");
    let (eight, eight_took) = timed_reflect::<wide::Eight>(Duration::from_secs(300));
    eprintln!("eight 600-variant enums: {eight:?} in {eight_took:?}");
    assert!(
        eight.is_ok() || eight.as_ref().unwrap_err().contains("8192"),
        "{eight:?}"
    );
    let (deep, deep_took) = timed_reflect::<wide::Deep>(Duration::from_secs(120));
    eprintln!("self-nesting struct with a 600-variant enum: {deep:?} in {deep_took:?}");
}

// ===========================================================================
// 5. Error::Layer's name (86e0224).
// ===========================================================================

/// A layer that fails every read, with the Debug text given.
struct Named(&'static str);

impl std::fmt::Debug for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl<V: Clone + Send + Sync + 'static> Cache<String, V> for Named {
    fn get_entry(&self, _: &String) -> layercache::Result<Option<Entry<V>>> {
        Err(Error::backend("named", Operation::Get, "fails on purpose"))
    }
    fn set_entry(&self, _: String, _: Entry<V>) -> layercache::Result<()> {
        Ok(())
    }
    fn remove(&self, _: &String) -> layercache::Result<Option<V>> {
        Ok(None)
    }
    fn keys(&self) -> layercache::Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// The `layer` of the error a read through memory over `layer` gives.
fn layer_name(layer: impl Cache<String, u32> + 'static) -> (String, String) {
    let stack: Layered<String, u32> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(layer);
    match stack.get(&"k".to_string()) {
        Err(error @ Error::Layer { .. }) => {
            let Error::Layer { ref layer, .. } = error else {
                unreachable!()
            };
            (layer.clone(), error.to_string())
        }
        other => panic!("expected a layer error, got {other:?}"),
    }
}

/// Attack: odd `Debug` texts (empty, starting with `(`, multibyte, with
/// brackets inside a generic) give a name that is a prefix of the Debug,
/// never a panic. Found nothing wrong (an empty Debug gives an empty name,
/// "layer 1 () failed", which is what the doc says).
#[test]
fn odd_debug_texts_name_their_layer_without_panicking() {
    for (debug, expected) in [
        ("", ""),
        ("(x)", ""),
        ("[1, 2]", ""),
        ("  {a}", ""),
        ("Été(1)", "Été"),
        ("Ünïcödé  [x]", "Ünïcödé"),
        ("Plain", "Plain"),
        ("Generic<A, B>{x: 1}", "Generic<A, B>"),
    ] {
        let (name, message) = layer_name(Named(debug));
        assert_eq!(name, expected, "{debug:?}: {message}");
        assert!(message.contains("fails on purpose"), "{message}");
    }
}

/// BUG (minor, message only): the name of a `Serialised` layer over a
/// codec whose Debug holds a parenthesis is cut inside its generic
/// argument: `Serialised<FnCodec` (unbalanced), where 86e0224 promises "the
/// kind of layer ... `Serialised<Json>`". d88055f made every `FnCodec`'s
/// Debug `FnCodec(name)`, so every `FnCodec` stack reports a half name.
#[test]
fn a_serialised_fn_codec_layer_has_a_whole_name() {
    // Over bytes whose every read fails, so that the Serialised layer fails.
    let (json_name, _) = layer_name(Serialised::new(Named("Bytes"), Json));
    assert_eq!(json_name, "Serialised<Json>");
    let (name, message) = layer_name(Serialised::unversioned(Named("Bytes"), named("decimal")));
    let balanced = name.matches('<').count() == name.matches('>').count();
    assert!(
        balanced,
        "a Serialised layer over FnCodec(\"decimal\") is named {name:?}: {message}"
    );
}

mod recursive {
    use super::*;

    /// Infinite through a struct field.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Chain {
        pub next: Box<Chain>,
    }

    /// Infinite through a newtype.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Wrap(pub Box<Wrap>);

    /// The first variant recurses through a tuple in a struct variant.
    #[derive(Debug, Serialize, Deserialize)]
    pub enum Nest {
        A { x: (u8, Box<Nest>) },
        B,
    }

    /// Mutual recursion through first variants.
    #[derive(Debug, Serialize, Deserialize)]
    pub enum Ping {
        P(Box<Pong>),
        Stop,
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub enum Pong {
        Q(Box<Ping>),
        End,
    }
}

/// The child of `reflect_of_self_holding_types_never_aborts`.
#[test]
fn child_review12c_reflect_recursive() {
    if !support::is_child("child_review12c_reflect_recursive") {
        return;
    }
    fn report<V: serde::de::DeserializeOwned>(what: &str) {
        let result = Schema::<V>::reflect().map(|s| s.to_string());
        support::report(format!("{what}: {result:?}"));
    }
    report::<recursive::Chain>("chain");
    report::<recursive::Wrap>("wrap");
    report::<recursive::Nest>("nest");
    report::<recursive::Ping>("ping");
    support::report("done");
}

/// Attack: types that hold themselves with no way out (a struct field, a
/// newtype), through a tuple in a struct variant, and through two enums'
/// first variants: reflect must return, never overflow the stack and
/// abort. Run in a child process. Found nothing: each is refused.
#[test]
fn reflect_of_self_holding_types_never_aborts() {
    let child = support::child_command("child_review12c_reflect_recursive", &[]);
    let output = within(
        "the reflecting child",
        Duration::from_secs(120),
        move || {
            let mut child = child;
            child.output().expect("run the child")
        },
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("#lc done"),
        "the child ended with {:?}\nstdout: {stdout}\nstderr (tail): {}",
        output.status,
        stderr.lines().rev().take(4).collect::<Vec<_>>().join(" | ")
    );
    for what in ["chain", "wrap", "nest", "ping"] {
        assert!(
            stdout.contains(&format!("#lc {what}: Err(")),
            "{what} should be refused: {stdout}"
        );
    }
}
