//! Second hostile review of issue 12 ("no wrong value and no hang anywhere
//! in the stack"), on what the first (tests/review12_hostile.rs) did not
//! see: the lock-free ftrack session of ccf9c9c (identity map, one
//! write-through per identity, lower records only filling gaps) and the
//! fixes of 7b4ea5f (`Versioned`, the codec in the namespace, nested enums
//! traced by `Schema::reflect`, writes through an older forked stack).
//!
//! It proved seven bugs, each with a test that failed on 17a99cb. Five are
//! fixed in the library and their tests run: an older copy of a forked
//! stack now reads through the newest layers; the codec's `format` name,
//! escaped injectively, is the codec part of a namespace (and `FnCodec`
//! takes a name); `Schema::reflect` bounds the nesting it follows and
//! traces enums of thousands of variants. The two ftrack session bugs are
//! fixed too: a placeholder is made whole from the lower layers before its
//! first write-through, and a write left pending by a writer that panicked
//! is done by the next call that touches the identity. The other tests are
//! attacks that found nothing; each still asserts what it attacked.

#![cfg(all(
    feature = "file",
    feature = "ftrack",
    feature = "bincode",
    feature = "json",
    feature = "reflect"
))]

mod support;
use support::within;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use layercache::codec::{Bincode, FnCodec, Json};
use layercache::ftrack::{Entity, EntityKey, FixtureServer, Session, Value};
use layercache::{
    Cache, CacheExt, Entry, Error, FileCache, KeyedExt, Layered, MemoryCache, Operation, Schema,
    Serialised, Verbatim,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tempfile::TempDir;

type Layer = Box<dyn Cache<String, Entity>>;

/// A session whose stack is memory over `Serialised(FileCache at path,
/// session.codec())`, with auto-populate as given.
fn file_session(server: &Arc<FixtureServer>, path: &std::path::Path, auto: bool) -> Session {
    let path = path.to_owned();
    Session::builder(server.clone())
        .auto_populate(auto)
        .cache(move |session| {
            let file = FileCache::open(&path).expect("open cache file");
            Some(Box::new(Serialised::new(file, session.codec())) as Layer)
        })
        .build()
}

// ===========================================================================
// 1. ftrack session (ccf9c9c): lost values in the lower layers.
// ===========================================================================

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

/// Was a bug: a merge into a placeholder wiped the lower layer's record;
/// fixed by filling a placeholder (an instance marked partial) from the
/// lower layers' record before its first write-through (`make_whole` in
/// src/ftrack/session.rs). What the bug was:
///
/// When a persistent layer decodes a record that references an entity the
/// session does not hold, the reference becomes a placeholder (primary key
/// only) put in the memory layer, meant to "load from the cache when read".
/// A query (or merge) of that entity then merged into the placeholder and
/// wrote it through: the `SetOnly` encoding of a placeholder carried only
/// the merged attributes, and replaced the full record in the file. Every
/// attribute the file held and the query did not project was gone from the
/// file: this session and every later one (auto-populate off) read NotSet
/// where the cache held "layout". The commit promises "a record from a lower
/// layer only fills attributes the instance has no value for"; there the
/// instance's emptiness overrode the record instead. The test is unchanged
/// (tests/ftrack_session.rs adds auto-populate on, a third session and the
/// cost: `a_placeholder_written_through_keeps_the_lower_records_values`).
#[test]
fn merge_into_placeholder_wipes_the_files_record() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("tasks.lc");
    let server = task_server();
    {
        let first = file_session(&server, &path, true);
        first
            .query(r#"select name, status from Task where id is "t1""#)
            .unwrap();
        first
            .query(r#"select name, parent from Shot where id is "s1""#)
            .unwrap();
    }
    // The file holds the full Task record: a fresh session reads its name.
    {
        let check = file_session(&server, &path, false);
        let task = check.get("Task", ["t1"]).unwrap().unwrap();
        assert_eq!(task.get("name").unwrap(), Value::String("layout".into()));
    }
    // A fresh session reads the Shot from the file: its parent is a
    // placeholder in memory. A query of the Task's status merges into it.
    server
        .insert(json!({"__entity_type__": "Task", "id": "t1", "name": "layout", "status": "done"}))
        .unwrap();
    let name_in_session = {
        let second = file_session(&server, &path, false);
        let shot = second.get("Shot", ["s1"]).unwrap().unwrap();
        let parent = match shot.get("parent").unwrap() {
            Value::Entity(parent) => parent,
            other => panic!("parent is {other:?}"),
        };
        assert!(parent.peek("name") == Value::NotSet, "a placeholder");
        second
            .query(r#"select status from Task where id is "t1""#)
            .unwrap();
        assert_eq!(parent.peek("status"), Value::String("done".into()));
        parent.get("name").unwrap()
    };
    let third = file_session(&server, &path, false);
    let task = third.get("Task", ["t1"]).unwrap().unwrap();
    let in_file = task.get("name").unwrap();
    assert!(
        name_in_session == Value::String("layout".into())
            && in_file == Value::String("layout".into()),
        "a query of the Task's status lost its cached name: the session reads {name_in_session:?}, \
         a fresh session reads {in_file:?} from the file, which now holds {task:?}"
    );
}

/// A lower layer that, when armed, stops the next `set` until released and
/// then panics (`panic`) or fails, storing nothing.
#[derive(Debug)]
struct Gate {
    inner: Layer,
    armed: AtomicBool,
    panic: bool,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Cache<String, Entity> for Gate {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<Entity>>> {
        self.inner.get_entry(key)
    }

    fn set_entry(&self, key: String, entry: Entry<Entity>) -> layercache::Result<()> {
        if self.armed.swap(false, Ordering::SeqCst) {
            let entered = self.entered.lock().unwrap().take().unwrap();
            entered.send(()).unwrap();
            let release = self.release.lock().unwrap().take().unwrap();
            release
                .recv_timeout(Duration::from_secs(20))
                .expect("released");
            if self.panic {
                panic!("gate: this layer panics on purpose");
            }
            return Err(Error::backend(
                "gate",
                Operation::Set,
                "this layer fails on purpose",
            ));
        }
        self.inner.set_entry(key, entry)
    }

    fn remove(&self, key: &String) -> layercache::Result<Option<Entity>> {
        self.inner.remove(key)
    }

    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
}

/// What the file says of Task t1's status, read by a fresh session.
fn status_in_file(server: &Arc<FixtureServer>, path: &std::path::Path) -> Value {
    let fresh = file_session(server, path, false);
    let task = fresh.get("Task", ["t1"]).unwrap().unwrap();
    task.get("status").unwrap()
}

/// Merges `status` into Task t1 of `session` (a local value).
fn merge_status(session: &Session, status: &str) -> layercache::Result<Entity> {
    let incoming = Entity::new(EntityKey::new("Task", ["t1"]));
    incoming.set("status", status);
    session.merge(&incoming)
}

/// What the file holds of Task t1's status, and A's outcome, from
/// [`writer_dies_while_another_merge_waits`].
struct Died {
    /// Once A is done, before any other call touches Task t1.
    before_touch: Value,
    /// After a get of Task t1 (the next call touching it).
    after_touch: Value,
    outcome: String,
}

/// Thread A writes Task t1 through a gate that blocks; thread B merges a
/// newer status meanwhile (it only asks A to write again, and returns Ok);
/// then A's write of the file layer fails or panics. Returns what the file
/// holds once A is done, what it holds after a get of Task t1, and A's
/// outcome.
fn writer_dies_while_another_merge_waits(panic: bool) -> Died {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("gate.lc");
    let server = task_server();
    let gate_cell: Arc<Mutex<Option<Arc<Gate>>>> = Arc::new(Mutex::new(None));
    let session = {
        let gate_cell = gate_cell.clone();
        let path = path.clone();
        Session::builder(server.clone())
            .auto_populate(false)
            .cache(move |session| {
                let file = FileCache::open(&path).unwrap();
                let gate = Arc::new(Gate {
                    inner: Box::new(Serialised::new(file, session.codec())),
                    armed: AtomicBool::new(false),
                    panic,
                    entered: Mutex::new(None),
                    release: Mutex::new(None),
                });
                *gate_cell.lock().unwrap() = Some(gate.clone());
                Some(Box::new(gate) as Layer)
            })
            .build()
    };
    let gate = gate_cell.lock().unwrap().clone().unwrap();
    // The file holds status "0".
    session.get("Task", ["t1"]).unwrap().unwrap();
    merge_status(&session, "0").unwrap();
    assert_eq!(status_in_file(&server, &path), Value::String("0".into()));

    let (entered_tx, entered_rx) = mpsc::channel();
    *gate.entered.lock().unwrap() = Some(entered_tx);
    let (release_tx, release_rx) = mpsc::channel();
    *gate.release.lock().unwrap() = Some(release_rx);
    gate.armed.store(true, Ordering::SeqCst);

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
        .expect("the writer reached the gate");
    // B: a newer status, merged while A writes. It returns at once.
    let b = within("merge while another writes", Duration::from_secs(20), {
        let session = session.clone();
        move || merge_status(&session, "b").map(|_| ())
    });
    assert!(b.is_ok(), "B's merge: {b:?}");
    release_tx.send(()).unwrap();
    let outcome = match writer.join().unwrap() {
        Ok(Ok(())) => "A: Ok".to_string(),
        Ok(Err(e)) => format!("A: Err({e})"),
        Err(_) => "A: panicked".to_string(),
    };
    let before_touch = status_in_file(&server, &path);
    let memory = session.get("Task", ["t1"]).unwrap().unwrap();
    assert_eq!(memory.peek("status"), Value::String("b".into()));
    drop(session);
    Died {
        before_touch,
        after_touch: status_in_file(&server, &path),
        outcome,
    }
}

/// Attack: the writing thread's file write fails while another merge asked
/// it to write again. The loop writes again, so B's value reaches the file
/// and A gets the failure. Found nothing.
#[test]
fn a_failed_write_still_writes_the_waiting_merge() {
    let Died {
        before_touch,
        after_touch,
        outcome,
    } = writer_dies_while_another_merge_waits(false);
    assert!(outcome.starts_with("A: Err"), "{outcome}");
    assert_eq!(before_touch, Value::String("b".into()), "{outcome}");
    assert_eq!(after_touch, Value::String("b".into()), "{outcome}");
}

/// Was a bug: a merge whose write-through was left to a writer that
/// panicked never reached the lower layers, and nobody was told; fixed by
/// keeping the write pending (`Writer::drop` clears `writing` and keeps
/// `again`, making no write while unwinding) and having the next call that
/// touches the identity make it (src/ftrack/session.rs; `Session::merge`
/// documents it).
///
/// B's merge finds A writing Task t1, sets "again" and returns Ok: its
/// value is left for A to write. A's lower layer panics; `Writer::drop`
/// used to clear both `writing` and `again`, so B's value was never
/// written: the file kept status "0" while the session's instance (and B's
/// Ok) said "b", and every later session read "0". (The same layer failing
/// with an error instead is handled: `a_failed_write_still_writes_the_waiting_merge`.)
///
/// Adapted to the fix: the write is not made when A unwinds (no I/O in a
/// `Drop` while unwinding), so right after A the file still holds "0"; the
/// next call touching Task t1 (here the helper's get, which checks the
/// memory layer) writes B's value, and the file then holds "b". The test
/// asserts both, which is what `Session::merge` now promises.
#[test]
fn a_panicking_writer_drops_the_waiting_merge() {
    let Died {
        before_touch,
        after_touch,
        outcome,
    } = writer_dies_while_another_merge_waits(true);
    assert_eq!(outcome, "A: panicked");
    assert_eq!(
        before_touch,
        Value::String("0".into()),
        "pending until the identity is touched (no write while unwinding)"
    );
    assert_eq!(
        after_touch,
        Value::String("b".into()),
        "B's merge returned Ok, but after the next touch of Task t1 the file still holds \
         {after_touch:?}: its value was left to a writer that panicked, and dropped"
    );
}

/// Attack: many threads merge statuses, query, read and auto-populate
/// Tasks through memory over a real `FileCache` (the session's codec); at
/// the end a fresh session on the file must read, for every Task, what the
/// session's instance holds, and every handle of an identity must be the
/// same instance. Found nothing.
#[test]
fn concurrent_merges_queries_and_fills_leave_the_file_current() {
    within(
        "concurrent session calls over a file",
        Duration::from_secs(120),
        || {
            let dir = TempDir::new().unwrap();
            let path = dir.path().join("stress.lc");
            let server = FixtureServer::new();
            const TASKS: usize = 6;
            for n in 0..TASKS {
                server
                    .insert(json!({"__entity_type__": "Task", "id": format!("t{n}"),
                                   "name": format!("task {n}"), "status": "new",
                                   "priority": n}))
                    .unwrap();
            }
            let server = Arc::new(server);
            let session = file_session(&server, &path, true);
            let handles: Arc<Mutex<Vec<Entity>>> = Arc::new(Mutex::new(Vec::new()));
            let start = Arc::new(Barrier::new(4));
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let session = session.clone();
                    let handles = handles.clone();
                    let start = start.clone();
                    thread::spawn(move || {
                        start.wait();
                        for i in 0..150usize {
                            let n = (i * 7 + t) % TASKS;
                            let id = format!("t{n}");
                            match (i + t) % 5 {
                                0 | 1 => {
                                    let incoming = Entity::new(EntityKey::new("Task", [&id]));
                                    incoming.set("status", format!("s{t}-{i}"));
                                    handles
                                        .lock()
                                        .unwrap()
                                        .push(session.merge(&incoming).unwrap());
                                }
                                2 => {
                                    let found = session
                                        .query(&format!(
                                            r#"select name, priority from Task where id is "{id}""#
                                        ))
                                        .unwrap();
                                    handles.lock().unwrap().extend(found);
                                }
                                3 => {
                                    let task = session.get("Task", [&id]).unwrap().unwrap();
                                    // Auto-populate (or the file) fills these.
                                    assert_eq!(
                                        task.get("name").unwrap(),
                                        Value::String(format!("task {n}"))
                                    );
                                    handles.lock().unwrap().push(task);
                                }
                                _ => {
                                    // Memory drops the Task: the next read decodes it
                                    // from the file while handles keep the instance.
                                    let key =
                                        session.cache_key(&EntityKey::new("Task", [&id])).unwrap();
                                    session.cache().layer(0).unwrap().remove(&key).unwrap();
                                }
                            }
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("a worker panicked");
            }
            let handles = handles.lock().unwrap();
            for n in 0..TASKS {
                let id = format!("t{n}");
                let instance = session.get("Task", [&id]).unwrap().unwrap();
                for handle in handles.iter().filter(|h| h.key() == instance.key()) {
                    assert!(
                        handle.same(&instance),
                        "two instances of {:?} alive at once: {handle:?} and {instance:?}",
                        instance.key()
                    );
                }
                let fresh = file_session(&server, &path, false);
                let stored = fresh.get("Task", [&id]).unwrap().unwrap();
                for name in ["status", "name", "priority"] {
                    assert_eq!(
                        stored.get(name).unwrap(),
                        instance.peek(name),
                        "Task {id}: the file's {name} is older than the session's"
                    );
                }
            }
        },
    );
}

/// A `Remote` that takes a lock of the user's on every call.
#[derive(Debug)]
struct LockingRemote {
    inner: Arc<FixtureServer>,
    lock: Arc<Mutex<()>>,
}

impl layercache::ftrack::Remote for LockingRemote {
    fn call(&self, operations: &[serde_json::Value]) -> layercache::Result<Vec<serde_json::Value>> {
        let _held = self.lock.lock().unwrap();
        thread::sleep(Duration::from_micros(200));
        self.inner.call(operations)
    }
}

/// A layer that takes the same lock on every write.
#[derive(Debug)]
struct LockingLayer {
    inner: MemoryCache<String, Entity>,
    lock: Arc<Mutex<()>>,
}

impl Cache<String, Entity> for LockingLayer {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<Entity>>> {
        self.inner.get_entry(key)
    }

    fn set_entry(&self, key: String, entry: Entry<Entity>) -> layercache::Result<()> {
        let _held = self.lock.lock().unwrap();
        thread::sleep(Duration::from_micros(200));
        self.inner.set_entry(key, entry)
    }

    fn remove(&self, key: &String) -> layercache::Result<Option<Entity>> {
        self.inner.remove(key)
    }

    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
}

/// Attack: a layer and the remote take a lock of the user's, while user
/// threads holding that lock call the session (reads of cached entities,
/// merges that only ask a running writer to write again) and others merge
/// and query. No session call may wait for another: a deadline catches a
/// deadlock. Found nothing.
#[test]
fn user_locks_in_layers_and_remote_never_deadlock() {
    within(
        "session calls against a user lock",
        Duration::from_secs(60),
        || {
            let server = task_server();
            let lock = Arc::new(Mutex::new(()));
            let session = {
                let lock = lock.clone();
                Session::builder(LockingRemote {
                    inner: server.clone(),
                    lock: lock.clone(),
                })
                .cache(move |_| {
                    Some(Box::new(LockingLayer {
                        inner: MemoryCache::new(),
                        lock,
                    }) as Layer)
                })
                .build()
            };
            let task = session.get("Task", ["t1"]).unwrap().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let mut threads = Vec::new();
            for t in 0..2 {
                let session = session.clone();
                let stop = stop.clone();
                threads.push(thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        merge_status(&session, &format!("w{t}-{i}")).unwrap();
                        session
                            .query(r#"select name from Task where id is "t1""#)
                            .unwrap();
                        i += 1;
                    }
                }));
            }
            for _ in 0..300 {
                let _held = lock.lock().unwrap();
                let again = session.get("Task", ["t1"]).unwrap().unwrap();
                assert!(again.same(&task));
            }
            stop.store(true, Ordering::SeqCst);
            for thread in threads {
                thread.join().unwrap();
            }
        },
    );
}

// ===========================================================================
// 2. Layered (7b4ea5f): an older copy of the session's stack.
// ===========================================================================

/// BUG: a read through an older copy of the stack promotes a value from a
/// layer that was taken out into the layers that stayed, where it beats the
/// newer value the new bottom layer holds.
///
/// 7b4ea5f sends the *writes* of an older copy to the newest copy's layers;
/// its *reads* still go through its own list, and a hit in a layer the
/// newest copy took out is promoted into the layers above it, which the new
/// stack still has (memory). Here: memory over bottom B holds ada; a call
/// holds a snapshot; `cache_mut` replaces B by N; grace is written through
/// the new stack (memory and N); memory drops the key; the old snapshot
/// reads it (B's ada, promoted into memory). Every read through the new
/// stack now answers ada from memory, while its bottom holds grace: the
/// "promotion never leaves an upper layer holding an older value than the
/// layers below" promise, broken across copies. `cache_mut` documents that
/// a taken-out layer "may still see a few of their reads and writes", not
/// that what it holds comes back into the stack.
#[test]
fn an_old_copy_does_not_promote_a_removed_layers_value() {
    let bottom: Arc<MemoryCache<String, Entity>> = Arc::new(MemoryCache::new());
    let session = {
        let bottom = bottom.clone();
        Session::builder(task_server())
            .cache(move |_| Some(Box::new(bottom) as Layer))
            .build()
    };
    let key = EntityKey::new("Task", ["t1"]);
    let cache_key = session.cache_key(&key).unwrap();
    session.get("Task", ["t1"]).unwrap().unwrap();
    assert!(bottom.get(&cache_key).unwrap().is_some());

    let old = session.cache();
    let new_bottom: Arc<MemoryCache<String, Entity>> = Arc::new(MemoryCache::new());
    {
        let mut stack = session.cache_mut();
        stack.remove_layer(1).unwrap();
        stack.push(new_bottom.clone());
    }
    let newer = Entity::new(key.clone());
    newer.set("name", "renamed");
    session
        .cache()
        .set(cache_key.clone(), newer.clone())
        .unwrap();
    // Memory drops the key (eviction).
    session
        .cache()
        .layer(0)
        .unwrap()
        .remove(&cache_key)
        .unwrap();
    // The call holding the old copy reads it.
    let _ = old.get(&cache_key).unwrap();
    drop(old);
    let read = session.cache().get(&cache_key).unwrap().unwrap();
    assert!(
        read.same(&newer),
        "the new stack serves name {:?} from memory, promoted there by the old copy from the \
         layer cache_mut took out; its bottom layer holds {:?}",
        read.peek("name"),
        new_bottom.get(&cache_key).unwrap().map(|e| e.peek("name"))
    );
}

/// The same with a remove: an entity removed through the new stack comes
/// back from the taken-out layer through a read of the old copy.
#[test]
fn an_old_copy_does_not_resurrect_a_removed_key() {
    let bottom: Arc<MemoryCache<String, Entity>> = Arc::new(MemoryCache::new());
    let session = {
        let bottom = bottom.clone();
        Session::builder(task_server())
            .cache(move |_| Some(Box::new(bottom) as Layer))
            .build()
    };
    let cache_key = session.cache_key(&EntityKey::new("Task", ["t1"])).unwrap();
    session.get("Task", ["t1"]).unwrap().unwrap();
    let old = session.cache();
    {
        let mut stack = session.cache_mut();
        stack.remove_layer(1).unwrap();
        stack.push(MemoryCache::new());
    }
    session.cache().remove(&cache_key).unwrap();
    assert!(session.cache().get(&cache_key).unwrap().is_none());
    let _ = old.get(&cache_key).unwrap();
    drop(old);
    let back = session.cache().get(&cache_key).unwrap();
    assert!(
        back.is_none(),
        "removed through the new stack, yet it serves the key again: {back:?}"
    );
}

/// Attack: writer threads write their own keys through snapshots of the
/// stack taken before a change (old copies) and after, while another thread
/// keeps inserting and taking out a middle layer; after every write, a read
/// through the current stack with memory dropped must give that write's
/// value (never an older one from a layer an old copy did not know). Many
/// rounds, real threads. Found nothing.
#[test]
fn writes_through_old_and_new_copies_race_layer_changes() {
    within("writers racing cache_mut", Duration::from_secs(120), || {
        let bottom: Arc<MemoryCache<String, Entity>> = Arc::new(MemoryCache::new());
        let session = {
            let bottom = bottom.clone();
            Session::builder(task_server())
                .cache(move |_| Some(Box::new(bottom) as Layer))
                .build()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(AtomicUsize::new(0));
        let changer = {
            let session = session.clone();
            let stop = stop.clone();
            let changes = changes.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    {
                        let mut stack = session.cache_mut();
                        if stack.depth() == 2 {
                            stack.insert_layer(1, Arc::new(MemoryCache::new()));
                        } else {
                            stack.remove_layer(1).unwrap();
                        }
                    }
                    changes.fetch_add(1, Ordering::SeqCst);
                    thread::yield_now();
                }
            })
        };
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let session = session.clone();
                thread::spawn(move || {
                    for i in 0..2000usize {
                        let key = format!("k{t}-{}", i % 4);
                        let value = Entity::new(EntityKey::new("Task", [format!("{t}-{i}")]));
                        let snapshot = session.cache();
                        // Half the writes go through a copy that may be old
                        // by now.
                        if i % 2 == 0 {
                            thread::yield_now();
                        }
                        snapshot.set(key.clone(), value.clone()).unwrap();
                        drop(snapshot);
                        let now = session.cache();
                        now.layer(0).unwrap().remove(&key).unwrap();
                        let read = now.get(&key).unwrap();
                        assert!(
                            read.as_ref().is_some_and(|r| r.same(&value)),
                            "writer {t} round {i}: wrote {:?}, read {:?}",
                            value.key(),
                            read.map(|r| r.key().clone())
                        );
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("a writer saw an older value");
        }
        stop.store(true, Ordering::SeqCst);
        changer.join().unwrap();
        assert!(
            changes.load(Ordering::SeqCst) > 10,
            "the stack changed often"
        );
    });
}

/// Enums for the reflect attacks: same names in different modules, so that
/// only the shape differs.
#[allow(dead_code)]
mod shapes {
    use serde::Deserialize;

    /// A recursive enum whose first variant recurses: serde-reflection's
    /// documented limit (its first variant must be a base case).
    pub mod recursive_first {
        use super::*;
        #[derive(Deserialize)]
        pub enum Tree {
            Node(Box<Tree>, Box<Tree>),
            Leaf,
        }
    }

    /// Recursive enums nested in a struct, the base case first.
    pub mod forest1 {
        use super::*;
        #[derive(Deserialize)]
        pub enum Tree {
            Leaf,
            Node(Box<Tree>, Box<Tree>),
        }
        #[derive(Deserialize)]
        pub struct Forest {
            pub name: String,
            pub tree: Tree,
        }
    }
    pub mod forest2 {
        use super::*;
        #[derive(Deserialize)]
        pub enum Tree {
            Leaf,
            Node(Box<Tree>, Box<Tree>, u8),
        }
        #[derive(Deserialize)]
        pub struct Forest {
            pub name: String,
            pub tree: Tree,
        }
    }
    pub mod forest3 {
        use super::*;
        #[derive(Deserialize)]
        pub enum Tree {
            Leaf(u8),
            Node(Box<Tree>, Box<Tree>),
        }
        #[derive(Deserialize)]
        pub struct Forest {
            pub name: String,
            pub tree: Tree,
        }
    }

    /// Enums inside enum variants, inside a struct.
    macro_rules! nested {
        ($m:ident, { $($inner:tt)* }, { $($outer:tt)* }) => {
            pub mod $m {
                use super::*;
                #[derive(Deserialize)]
                pub enum Inner { $($inner)* }
                #[derive(Deserialize)]
                pub enum Outer { $($outer)* }
                #[derive(Deserialize)]
                pub struct Top {
                    pub id: u32,
                    pub outer: Outer,
                }
            }
        };
    }
    nested!(n1, { X, Y }, { A, B(Inner) });
    nested!(n2, { X, Z }, { A, B(Inner) });
    nested!(n3, { Y, X }, { A, B(Inner) });
    nested!(n4, { X, Y(u8) }, { A, B(Inner) });
    nested!(n5, { X, Y }, { B(Inner), A });
    nested!(n6, { X, Y }, { A, B(Inner, Inner) });
    nested!(n7, { X, Y, W }, { A, B(Inner) });
    nested!(n8, { X { a: u8 }, Y }, { A, B(Inner) });
    nested!(n9, { X { b: u8 }, Y }, { A, B(Inner) });
    nested!(n10, { X, Y }, { A, B { inner: Inner } });

    /// A unit enum of 100 and one of 140 variants, each in a field.
    pub mod wide {
        use super::*;
        #[derive(Deserialize)]
        pub enum E100 {
            V0,
            V1,
            V2,
            V3,
            V4,
            V5,
            V6,
            V7,
            V8,
            V9,
            V10,
            V11,
            V12,
            V13,
            V14,
            V15,
            V16,
            V17,
            V18,
            V19,
            V20,
            V21,
            V22,
            V23,
            V24,
            V25,
            V26,
            V27,
            V28,
            V29,
            V30,
            V31,
            V32,
            V33,
            V34,
            V35,
            V36,
            V37,
            V38,
            V39,
            V40,
            V41,
            V42,
            V43,
            V44,
            V45,
            V46,
            V47,
            V48,
            V49,
            V50,
            V51,
            V52,
            V53,
            V54,
            V55,
            V56,
            V57,
            V58,
            V59,
            V60,
            V61,
            V62,
            V63,
            V64,
            V65,
            V66,
            V67,
            V68,
            V69,
            V70,
            V71,
            V72,
            V73,
            V74,
            V75,
            V76,
            V77,
            V78,
            V79,
            V80,
            V81,
            V82,
            V83,
            V84,
            V85,
            V86,
            V87,
            V88,
            V89,
            V90,
            V91,
            V92,
            V93,
            V94,
            V95,
            V96,
            V97,
            V98,
            V99,
        }
        #[derive(Deserialize)]
        pub enum E140 {
            V0,
            V1,
            V2,
            V3,
            V4,
            V5,
            V6,
            V7,
            V8,
            V9,
            V10,
            V11,
            V12,
            V13,
            V14,
            V15,
            V16,
            V17,
            V18,
            V19,
            V20,
            V21,
            V22,
            V23,
            V24,
            V25,
            V26,
            V27,
            V28,
            V29,
            V30,
            V31,
            V32,
            V33,
            V34,
            V35,
            V36,
            V37,
            V38,
            V39,
            V40,
            V41,
            V42,
            V43,
            V44,
            V45,
            V46,
            V47,
            V48,
            V49,
            V50,
            V51,
            V52,
            V53,
            V54,
            V55,
            V56,
            V57,
            V58,
            V59,
            V60,
            V61,
            V62,
            V63,
            V64,
            V65,
            V66,
            V67,
            V68,
            V69,
            V70,
            V71,
            V72,
            V73,
            V74,
            V75,
            V76,
            V77,
            V78,
            V79,
            V80,
            V81,
            V82,
            V83,
            V84,
            V85,
            V86,
            V87,
            V88,
            V89,
            V90,
            V91,
            V92,
            V93,
            V94,
            V95,
            V96,
            V97,
            V98,
            V99,
            V100,
            V101,
            V102,
            V103,
            V104,
            V105,
            V106,
            V107,
            V108,
            V109,
            V110,
            V111,
            V112,
            V113,
            V114,
            V115,
            V116,
            V117,
            V118,
            V119,
            V120,
            V121,
            V122,
            V123,
            V124,
            V125,
            V126,
            V127,
            V128,
            V129,
            V130,
            V131,
            V132,
            V133,
            V134,
            V135,
            V136,
            V137,
            V138,
            V139,
        }
        #[derive(Deserialize)]
        pub struct Holds100 {
            pub e: E100,
        }
        #[derive(Deserialize)]
        pub struct Holds140 {
            pub e: E140,
        }
    }
    /// A big enum in a field.
    pub mod big {
        use super::*;
        #[derive(Deserialize)]
        pub enum Big {
            V0(u8),
            V1(u8),
            V2(u8),
            V3(u8),
            V4(u8),
            V5(u8),
            V6(u8),
            V7(u8),
            V8(u8),
            V9(u8),
            V10(u8),
            V11(u8),
            V12(u8),
            V13(u8),
            V14(u8),
            V15(u8),
            V16(u8),
            V17(u8),
            V18(u8),
            V19(u8),
            V20(u8),
            V21(u8),
            V22(u8),
            V23(u8),
            V24(u8),
            V25(u8),
            V26(u8),
            V27(u8),
            V28(u8),
            V29(u8),
            V30(u8),
            V31(u8),
            V32(u8),
            V33(u8),
            V34(u8),
            V35(u8),
            V36(u8),
            V37(u8),
            V38(u8),
            V39(u8),
            V40(u8),
            V41(u8),
            V42(u8),
            V43(u8),
            V44(u8),
            V45(u8),
            V46(u8),
            V47(u8),
            V48(u8),
            V49(u8),
            V50(u8),
            V51(u8),
            V52(u8),
            V53(u8),
            V54(u8),
            V55(u8),
            V56(u8),
            V57(u8),
            V58(u8),
            V59(u8),
            V60(u8),
            V61(u8),
            V62(u8),
            V63(u8),
            V64(u8),
            V65(u8),
            V66(u8),
            V67(u8),
            V68(u8),
            V69(u8),
            V70(u8),
            V71(u8),
            V72(u8),
            V73(u8),
            V74(u8),
            V75(u8),
            V76(u8),
            V77(u8),
            V78(u8),
            V79(u8),
            V80(u8),
            V81(u8),
            V82(u8),
            V83(u8),
            V84(u8),
            V85(u8),
            V86(u8),
            V87(u8),
            V88(u8),
            V89(u8),
            V90(u8),
            V91(u8),
            V92(u8),
            V93(u8),
            V94(u8),
            V95(u8),
            V96(u8),
            V97(u8),
            V98(u8),
            V99(u8),
            V100(u8),
            V101(u8),
            V102(u8),
            V103(u8),
            V104(u8),
            V105(u8),
            V106(u8),
            V107(u8),
            V108(u8),
            V109(u8),
            V110(u8),
            V111(u8),
            V112(u8),
            V113(u8),
            V114(u8),
            V115(u8),
            V116(u8),
            V117(u8),
            V118(u8),
            V119(u8),
            V120(u8),
            V121(u8),
            V122(u8),
            V123(u8),
            V124(u8),
            V125(u8),
            V126(u8),
            V127(u8),
            V128(u8),
            V129(u8),
            V130(u8),
            V131(u8),
            V132(u8),
            V133(u8),
            V134(u8),
            V135(u8),
            V136(u8),
            V137(u8),
            V138(u8),
            V139(u8),
            V140(u8),
            V141(u8),
            V142(u8),
            V143(u8),
            V144(u8),
            V145(u8),
            V146(u8),
            V147(u8),
            V148(u8),
            V149(u8),
            V150(u8),
            V151(u8),
            V152(u8),
            V153(u8),
            V154(u8),
            V155(u8),
            V156(u8),
            V157(u8),
            V158(u8),
            V159(u8),
            V160(u8),
            V161(u8),
            V162(u8),
            V163(u8),
            V164(u8),
            V165(u8),
            V166(u8),
            V167(u8),
            V168(u8),
            V169(u8),
            V170(u8),
            V171(u8),
            V172(u8),
            V173(u8),
            V174(u8),
            V175(u8),
            V176(u8),
            V177(u8),
            V178(u8),
            V179(u8),
            V180(u8),
            V181(u8),
            V182(u8),
            V183(u8),
            V184(u8),
            V185(u8),
            V186(u8),
            V187(u8),
            V188(u8),
            V189(u8),
            V190(u8),
            V191(u8),
            V192(u8),
            V193(u8),
            V194(u8),
            V195(u8),
            V196(u8),
            V197(u8),
            V198(u8),
            V199(u8),
        }
        #[derive(Deserialize)]
        pub struct Holder {
            pub a: Big,
            pub b: (Big, Big),
        }
    }
}

// ===========================================================================
// 3. Schema::reflect (7b4ea5f): nested enums traced.
// ===========================================================================

/// A version, or the refusal's text.
fn reflected<V: serde::de::DeserializeOwned>() -> Result<String, String> {
    Schema::<V>::reflect()
        .map(|s| s.to_string())
        .map_err(|e| e.to_string())
}

/// Attack: enums inside enum variants, inside a struct, changed in every way
/// bincode would misread (variant renamed, reordered, payload changed, one
/// added, a field renamed; the enum moved to the other variant): every
/// shape traced must get its own version (a refusal is fine: no wrong
/// data). Found nothing wrong: every one of them is refused (an enum in an
/// enum's variant is never traced whole, even in the first variant), with a
/// misleading reason ("inside an Option, a sequence or a map").
#[test]
fn enums_in_enums_never_share_a_version() {
    use shapes::*;
    let results = [
        ("n1", reflected::<n1::Top>()),
        ("n2 (Inner Y renamed Z)", reflected::<n2::Top>()),
        ("n3 (Inner reordered)", reflected::<n3::Top>()),
        ("n4 (Inner Y carries a u8)", reflected::<n4::Top>()),
        ("n5 (Outer reordered)", reflected::<n5::Top>()),
        ("n6 (B carries two Inners)", reflected::<n6::Top>()),
        ("n7 (Inner gains W)", reflected::<n7::Top>()),
        ("n8 (Inner X {a})", reflected::<n8::Top>()),
        ("n9 (Inner X {b})", reflected::<n9::Top>()),
        ("n10 (B {inner})", reflected::<n10::Top>()),
    ];
    let mut seen: Vec<(&str, &String)> = Vec::new();
    for (what, result) in &results {
        if let Ok(version) = result {
            if let Some((other, _)) = seen.iter().find(|(_, v)| *v == version) {
                panic!("{what} and {other} share version {version}: {results:#?}");
            }
            seen.push((what, version));
        }
    }
    // Traced or refused, the answer is stable.
    assert_eq!(reflected::<n1::Top>(), reflected::<n1::Top>());
}

/// Attack: recursive enums nested in a struct (the base case first), and a
/// change of their payloads: traced or refused, never shared; quick.
/// Found nothing.
#[test]
fn nested_recursive_enums_are_told_apart() {
    use shapes::*;
    let results = within(
        "reflect of recursive types",
        Duration::from_secs(30),
        || {
            [
                reflected::<forest1::Forest>(),
                reflected::<forest2::Forest>(),
                reflected::<forest3::Forest>(),
            ]
        },
    );
    let traced: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    for (i, a) in traced.iter().enumerate() {
        for b in &traced[i + 1..] {
            assert_ne!(a, b, "two recursive shapes share a version: {results:?}");
        }
    }
    assert_eq!(
        traced.len(),
        3,
        "the base case first, they trace: {results:?}"
    );
}

/// BUG (no wrong value, a false refusal with a wrong reason): an enum in
/// a plain struct field with more than 128 variants is refused, and the
/// error says it sits "inside an Option, a sequence or a map". reflect's
/// doc promises "Enums at the top, in fields, tuples and newtypes are traced
/// whole". serde-reflection learns one variant per pass, by name and then
/// by index (two passes per variant), and reflect stops after
/// `MAX_PASSES` = 256 passes in a row, then takes the provisional indices
/// left for an Option/sequence/map case. A 140-variant `enum` (country
/// codes, opcodes) in a field cannot be versioned, and the message sends
/// the user looking for an Option that is not there. 100 variants work.
#[test]
fn a_wide_enum_in_a_field_is_traced() {
    let hundred = reflected::<shapes::wide::Holds100>();
    assert!(hundred.is_ok(), "100 variants: {hundred:?}");
    let wide = within(
        "reflect of a 140-variant enum",
        Duration::from_secs(60),
        reflected::<shapes::wide::Holds140>,
    );
    assert!(
        wide.is_ok(),
        "struct {{ e: E140 }} (a 140-variant enum in a field, no Option anywhere): {wide:?}"
    );
}

/// Attack: a 200-variant enum in a field and twice in a tuple must trace
/// (or be refused) within a deadline, never hang. Found nothing (it is
/// refused, see `a_wide_enum_in_a_field_is_refused_for_the_wrong_reason`).
#[test]
fn a_big_nested_enum_reflects_quickly() {
    let started = Instant::now();
    let result = within(
        "reflect of a 200-variant enum",
        Duration::from_secs(60),
        reflected::<shapes::big::Holder>,
    );
    let took = started.elapsed();
    eprintln!("200 variants: {result:?} in {took:?}");
    assert!(
        took < Duration::from_secs(20),
        "reflect took {took:?}: {result:?}"
    );
}

/// The child of `reflect_of_a_recursive_first_variant_crashes`: reflects
/// the type and reports what it got.
#[test]
fn child_review12b_reflect_recursive_first() {
    if !support::is_child("child_review12b_reflect_recursive_first") {
        return;
    }
    let result = reflected::<shapes::recursive_first::Tree>();
    support::report(format!("reflect: {result:?}"));
}

/// BUG: `Schema::reflect` of a recursive enum whose first variant recurses
/// (`enum Tree { Node(Box<Tree>, Box<Tree>), Leaf }`) overflows the stack
/// and aborts the whole process, where its documentation promises an
/// `Error::InvalidOption` for "a type that cannot be traced".
/// serde-reflection visits variant 0 of an enum it has marked incomplete
/// to stop recursion, which never ends when variant 0 recurses (its own
/// documented limit: "the first variants of mutually recursive enums must
/// be a base case"); reflect neither guards against it (a depth limit) nor
/// documents it. One derive in a program's value types kills the program
/// at start-up. Run in a child process.
#[test]
fn reflect_of_a_recursive_first_variant_is_refused_not_a_crash() {
    let child = support::child_command("child_review12b_reflect_recursive_first", &[]);
    let output = within("the reflecting child", Duration::from_secs(60), move || {
        let mut child = child;
        child.output().expect("run the child")
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("#lc reflect: Err("),
        "Schema::<Tree>::reflect() for enum Tree {{ Node(Box<Tree>, Box<Tree>), Leaf }} did not \
         return an error: the child ended with {:?}\nstdout: {stdout}\nstderr (tail): {}",
        output.status,
        stderr.lines().rev().take(4).collect::<Vec<_>>().join(" | ")
    );
}

// ===========================================================================
// 4. The codec in the namespace (7b4ea5f).
// ===========================================================================

/// BUG: every `FnCodec` has the same namespace, so a build that changes
/// the functions of its `FnCodec` reads the other build's bytes as its own.
///
/// 7b4ea5f puts "the codec's Debug letters" in the namespace so that "the
/// same type in two formats is two sets of bytes that must not be read one
/// as the other". `FnCodec`'s `Debug` is the constant "FnCodec": two builds
/// storing `u32`s (the same reflected version), one in decimal text and one
/// in hexadecimal, share `<version>.FnCodec:`, and the second reads the
/// first's 16 as 22. The very bug the commit fixed (a JSON 5 read by bincode
/// as 53), back through the crate's own codec.
#[test]
fn two_fn_codecs_have_namespaces_of_their_own() {
    let store: Arc<MemoryCache<String, Vec<u8>>> = Arc::new(MemoryCache::new());
    let decimal = FnCodec::new(
        "decimal",
        |n: &u32| Ok(n.to_string().into_bytes()),
        |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::Decode {
                    codec: "decimal",
                    source: "not a decimal".into(),
                })
        },
    );
    let hex = FnCodec::new(
        "hex",
        |n: &u32| Ok(format!("{n:x}").into_bytes()),
        |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or_else(|| Error::Decode {
                    codec: "hex",
                    source: "not hexadecimal".into(),
                })
        },
    );
    let old_build = store
        .clone()
        .versioned(decimal, Schema::<u32>::reflect().unwrap());
    let new_build = store
        .clone()
        .versioned(hex, Schema::<u32>::reflect().unwrap());
    old_build.set("n".to_string(), 16).unwrap();
    let read = new_build.get(&"n".to_string()).unwrap();
    assert!(
        read.is_none() || read == Some(16),
        "the hex build read the decimal build's 16 as {read:?} (both namespaces are {:?} and {:?})",
        old_build.namespace(),
        new_build.namespace()
    );
}

/// A user codec with two parameters that change its bytes: `Scaled(a, b)`
/// stores `n * a + b`.
#[derive(Debug)]
struct Scaled(u32, u32);

impl layercache::codec::Codec<u32> for Scaled {
    fn encode(&self, n: &u32) -> layercache::Result<Vec<u8>> {
        Ok((n * self.0 + self.1).to_le_bytes().to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> layercache::Result<u32> {
        let raw: [u8; 4] = bytes.try_into().map_err(|_| Error::Decode {
            codec: "scaled",
            source: "not 4 bytes".into(),
        })?;
        Ok(u32::from_le_bytes(raw).wrapping_sub(self.1) / self.0)
    }
}

/// BUG: the namespace keeps only the letters and digits of the codec's
/// `Debug`, so `Scaled(1, 23)` and `Scaled(12, 3)` (derived `Debug`) both
/// become "Scaled123": two codecs that write different bytes share one
/// namespace, and one reads the other's 28 (5 stored by the first) as 2.
/// The doc says "each namespace stands for one version and codec"; it
/// stands for one string of the Debug text's alphanumerics.
#[test]
fn codec_debug_punctuation_keeps_namespaces_apart() {
    let store: Arc<MemoryCache<String, Vec<u8>>> = Arc::new(MemoryCache::new());
    let one = store
        .clone()
        .versioned(Scaled(1, 23), Schema::<u32>::version("v1").unwrap());
    let two = store
        .clone()
        .versioned(Scaled(12, 3), Schema::<u32>::version("v1").unwrap());
    one.set("n".to_string(), 5).unwrap();
    let read = two.get(&"n".to_string()).unwrap();
    assert!(
        read.is_none() || read == Some(5),
        "Scaled(12, 3) read Scaled(1, 23)'s 5 as {read:?}: namespaces {:?} and {:?}",
        one.namespace(),
        two.namespace()
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserV1 {
    name: String,
    age: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserV2 {
    age: u32,
    name: String,
}

/// Attack: `Versioned` under a `Keyed` namespace, in a `Layered` stack over
/// a shared `FileCache`, two versions and two codecs, written from threads:
/// every read is the type's own value or a miss, never the other version's
/// bytes, and clearing one store leaves the others. Found nothing.
#[test]
fn versioned_keyed_layered_compositions_never_mix() {
    within("versioned compositions", Duration::from_secs(60), || {
        let dir = TempDir::new().unwrap();
        let file: Arc<FileCache> = Arc::new(FileCache::open(dir.path().join("v.lc")).unwrap());
        let v1_bin = Arc::new(
            file.clone()
                .versioned(Bincode::new(), Schema::<UserV1>::reflect().unwrap())
                .keyed(Verbatim::new())
                .with_namespace("users:"),
        );
        let v2_bin = Arc::new(
            file.clone()
                .versioned(Bincode::new(), Schema::<UserV2>::reflect().unwrap())
                .keyed(Verbatim::new())
                .with_namespace("users:"),
        );
        let v1_json = file
            .clone()
            .versioned(Json, Schema::<UserV1>::reflect().unwrap());
        let stack1 = Arc::new(
            Layered::new()
                .with_layer(MemoryCache::new())
                .with_layer(v1_bin.clone()),
        );
        let stack2 = Arc::new(
            Layered::new()
                .with_layer(MemoryCache::new())
                .with_layer(v2_bin.clone()),
        );
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let stack1 = stack1.clone();
                let stack2 = stack2.clone();
                thread::spawn(move || {
                    for i in 0..300u32 {
                        let key = format!("u{}", i % 8);
                        if t == 0 {
                            stack1
                                .set(
                                    key.clone(),
                                    UserV1 {
                                        name: format!("one{i}"),
                                        age: i,
                                    },
                                )
                                .unwrap();
                            if let Some(v) = stack1.get(&key).unwrap() {
                                assert!(v.name.starts_with("one"), "{v:?}");
                            }
                        } else {
                            stack2
                                .set(
                                    key.clone(),
                                    UserV2 {
                                        age: i + 1000,
                                        name: format!("two{i}"),
                                    },
                                )
                                .unwrap();
                            if let Some(v) = stack2.get(&key).unwrap() {
                                assert!(v.name.starts_with("two") && v.age >= 1000, "{v:?}");
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a version read the other's value");
        }
        // Fresh reads straight from the file's stores.
        for i in 0..8 {
            let key = format!("u{i}");
            if let Some(v) = v1_bin.get(&key).unwrap() {
                assert!(v.name.starts_with("one"), "{v:?}");
            }
            if let Some(v) = v2_bin.get(&key).unwrap() {
                assert!(v.name.starts_with("two"), "{v:?}");
            }
            assert_eq!(
                v1_json.get(&key).unwrap(),
                None,
                "JSON store reads bincode's bytes"
            );
        }
        v1_bin.clear().unwrap();
        assert!(v1_bin.keys().unwrap().is_empty());
        assert_eq!(v2_bin.keys().unwrap().len(), 8, "clearing v1 cleared v2");
    });
}
