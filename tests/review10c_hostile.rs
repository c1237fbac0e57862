//! Hostile review of 060077b/61fc819 (FileCache's sharded, incrementally
//! growing index), dead3f3 (`cache::Watchers`) and 85385d5.
//!
//! Real threads, real files, a real second process. Passing tests are
//! guards; `#[ignore = "BUG: ..."]` tests demonstrate a defect.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::Duration;

use layercache::{Cache, FileCache, Invalidation, Watcher, Watchers};
use support::{Rng, Running, arg, arg_u64, child_command, is_child, report, state_of};
use tempfile::TempDir;

const H_COMMITTED: usize = 32;
const HEADER_SIZE: u64 = 4096;

fn record_len(key: &str, value: &[u8]) -> u64 {
    (48 + key.len() as u64 + value.len() as u64).div_ceil(8) * 8
}

fn committed_on_disk(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    u64::from_le_bytes(bytes[H_COMMITTED..H_COMMITTED + 8].try_into().unwrap())
}

fn value_for(key: u64, round: u64) -> Vec<u8> {
    // Lengths vary so that live_bytes catches a replacement counted wrong.
    let len = ((key.wrapping_mul(31) ^ round) % 40) as usize;
    let mut v = format!("{key}:{round}:").into_bytes();
    v.resize(v.len() + len, b'x');
    v
}

/// The cache holds exactly `model`, its len agrees, and its live bytes
/// (committed - header - garbage) are the model's records' lengths.
fn check(cache: &FileCache, model: &BTreeMap<String, Vec<u8>>, context: &str) {
    assert_eq!(cache.len().unwrap(), model.len(), "{context}: len");
    let state = state_of(cache);
    assert_eq!(state.len(), model.len(), "{context}: keys() count");
    for (key, value) in model {
        assert_eq!(
            cache.get(key).unwrap().as_ref(),
            Some(value),
            "{context}: {key}"
        );
    }
    assert_eq!(&state, model, "{context}: state");
}

fn check_bytes(cache: &FileCache, model: &BTreeMap<String, Vec<u8>>, context: &str) {
    let garbage = cache.garbage_bytes().unwrap();
    let committed = committed_on_disk(cache.path());
    let live: u64 = model.iter().map(|(k, v)| record_len(k, v)).sum();
    assert_eq!(
        committed - HEADER_SIZE - garbage,
        live,
        "{context}: live bytes"
    );
}

/// Growth through several doublings of every shard, with replacements of
/// keys that still live in `moving`, removes of keys in either table,
/// re-inserts of removed keys, compactions (a reindex) half way, and a
/// second handle and a reopen that build their index from scratch.
#[test]
fn index_growth_with_replacements_removes_and_compaction_keeps_the_model() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("c");
    // No automatic compaction: the index grows undisturbed until we ask.
    let cache = FileCache::builder(&path)
        .compact_when(1e9, u64::MAX)
        .open()
        .unwrap();
    let mut model = BTreeMap::new();
    let mut rng = Rng::new(0x10c);
    let mut next = 0u64;
    for step in 0..60_000u64 {
        let roll = rng.below(100);
        if roll < 55 || model.is_empty() {
            let key = format!("k{next}");
            let value = value_for(next, step);
            cache.set(key.clone(), value.clone()).unwrap();
            model.insert(key, value);
            next += 1;
        } else if roll < 80 {
            // Replace: recent keys are the ones most likely still in `moving`
            // of a growing shard, old ones in a table.
            let n = if rng.below(2) == 0 {
                next - 1 - rng.below(next.min(64))
            } else {
                rng.below(next)
            };
            let key = format!("k{n}");
            let value = value_for(n, step);
            cache.set(key.clone(), value.clone()).unwrap();
            model.insert(key, value);
        } else if roll < 95 {
            let n = rng.below(next);
            let key = format!("k{n}");
            assert_eq!(
                cache.remove(&key).unwrap(),
                model.remove(&key),
                "step {step}: remove {key}"
            );
        } else {
            // Re-insert a (maybe) removed key: must not end up in both tables.
            let n = rng.below(next);
            let key = format!("k{n}");
            let value = value_for(n, step + 1);
            cache.set(key.clone(), value.clone()).unwrap();
            model.insert(key, value);
        }
        if step % 10_000 == 9_999 {
            check(&cache, &model, &format!("step {step}"));
            check_bytes(&cache, &model, &format!("step {step}"));
        }
        if step == 30_000 {
            cache.compact().unwrap();
            assert_eq!(cache.garbage_bytes().unwrap(), 0, "after compaction");
            check(&cache, &model, "after compaction");
        }
    }
    check(&cache, &model, "end");
    check_bytes(&cache, &model, "end");
    let second = FileCache::open(&path).unwrap();
    check(&second, &model, "second handle");
    drop(second);
    drop(cache);
    let reopened = FileCache::open(&path).unwrap();
    check(&reopened, &model, "reopened");
    check_bytes(&reopened, &model, "reopened");
}

/// Threads of one process hammer one handle (disjoint keys per thread,
/// plus a shared hot key set everyone replaces), across growth.
#[test]
fn index_growth_under_threads_keeps_every_thread_s_keys() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("c");
    let cache = Arc::new(
        FileCache::builder(&path)
            .compact_when(1e9, u64::MAX)
            .open()
            .unwrap(),
    );
    let threads = 4u64;
    let per = 6_000u64;
    let models: Vec<BTreeMap<String, Vec<u8>>> = (0..threads)
        .map(|t| {
            let cache = cache.clone();
            thread::spawn(move || {
                let mut model = BTreeMap::new();
                let mut rng = Rng::new(t + 1);
                for i in 0..per {
                    let key = format!("t{t}-{i}");
                    let value = value_for(i, t);
                    cache.set(key.clone(), value.clone()).unwrap();
                    model.insert(key, value);
                    if i % 3 == 0 {
                        let gone = format!("t{t}-{}", rng.below(i + 1));
                        assert_eq!(cache.remove(&gone).unwrap(), model.remove(&gone));
                    }
                    if i % 5 == 0 {
                        let n = rng.below(i + 1);
                        let key = format!("t{t}-{n}");
                        let value = value_for(n, t + 100 + i);
                        cache.set(key.clone(), value.clone()).unwrap();
                        model.insert(key, value);
                    }
                    // Reads of own keys across other threads' growth.
                    let probe = format!("t{t}-{}", rng.below(i + 1));
                    assert_eq!(
                        cache.get(&probe).unwrap(),
                        model.get(&probe).cloned(),
                        "{probe}"
                    );
                }
                model
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let model: BTreeMap<_, _> = models.into_iter().flatten().collect();
    check(&cache, &model, "threads");
    check_bytes(&cache, &model, "threads");
}

/// The child writes its own keys (growth, replacements, removes) while
/// the parent writes its own and replaces/removes some of the child's
/// reserved ones; each process's index is fed the other's records by scans.
#[test]
fn child_index_writer() {
    if !is_child("child_index_writer") {
        return;
    }
    let cache = FileCache::builder(arg("PATH"))
        .compact_when(1e9, u64::MAX)
        .open()
        .expect("open");
    let n = arg_u64("N");
    report("ready");
    for (key, value) in child_ops(n) {
        match value {
            Some(value) => cache.set(key, value).unwrap(),
            None => {
                cache.remove(&key).unwrap();
            }
        }
    }
    report(format!("len {}", cache.len().unwrap()));
}

fn child_ops(n: u64) -> Vec<(String, Option<Vec<u8>>)> {
    let mut rng = Rng::new(77);
    let mut ops = Vec::new();
    for i in 0..n {
        ops.push((format!("c{i}"), Some(value_for(i, 1))));
        if i % 4 == 0 {
            let m = rng.below(i + 1);
            ops.push((format!("c{m}"), Some(value_for(m, 2 + i))));
        }
        if i % 7 == 0 {
            ops.push((format!("c{}", rng.below(i + 1)), None));
        }
    }
    ops
}

#[test]
fn two_processes_growing_one_file_agree_on_every_key() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("c");
    let cache = FileCache::builder(&path)
        .compact_when(1e9, u64::MAX)
        .open()
        .unwrap();
    let n = 15_000u64;
    let mut child = Running::spawn(
        "index_writer",
        child_command(
            "child_index_writer",
            &[("PATH", path.display().to_string()), ("N", n.to_string())],
        ),
    );
    child.wait_for_report("ready", Duration::from_secs(40));
    let mut model = BTreeMap::new();
    let mut rng = Rng::new(5);
    for i in 0..n {
        let key = format!("p{i}");
        let value = value_for(i, 9);
        cache.set(key.clone(), value.clone()).unwrap();
        model.insert(key, value);
        if i % 5 == 0 {
            let gone = format!("p{}", rng.below(i + 1));
            assert_eq!(cache.remove(&gone).unwrap(), model.remove(&gone));
        }
        if i % 50 == 0 {
            // Reads interleaved with the child's writes (scans of its records).
            let probe = format!("p{}", rng.below(i + 1));
            assert_eq!(cache.get(&probe).unwrap(), model.get(&probe).cloned());
            let _ = cache.get(&format!("c{}", rng.below(n)));
        }
    }
    let finished = child.finish();
    finished.assert_success();
    let mut child_model = BTreeMap::new();
    for (key, value) in child_ops(n) {
        match value {
            Some(v) => {
                child_model.insert(key, v);
            }
            None => {
                child_model.remove(&key);
            }
        }
    }
    model.extend(child_model);
    check(&cache, &model, "parent after child");
    check_bytes(&cache, &model, "parent after child");
    let fresh = FileCache::open(&path).unwrap();
    check(&fresh, &model, "fresh handle");
    let child_len: usize = finished.reports_of("len").next().unwrap().parse().unwrap();
    assert!(child_len <= model.len());
}

// ---------------------------------------------------------------------------
// Watchers
// ---------------------------------------------------------------------------

struct Counting {
    heard: AtomicUsize,
    active: AtomicBool,
}

impl Counting {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            heard: AtomicUsize::new(0),
            active: AtomicBool::new(true),
        })
    }
    fn heard(&self) -> usize {
        self.heard.load(Ordering::SeqCst)
    }
}

impl Watcher<u32> for Counting {
    fn invalidated(&self, _: Invalidation<'_, u32>) {
        self.heard.fetch_add(1, Ordering::SeqCst);
    }
    fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }
}

/// A watcher that adds a watcher and reports again from `invalidated`:
/// no deadlock, the added watcher hears only later reports.
#[test]
fn watchers_a_watcher_may_add_and_report_from_invalidated() {
    let watchers: Arc<Watchers<u32>> = Arc::new(Watchers::new());
    let late = Counting::new();
    let depth = Arc::new(AtomicUsize::new(0));
    {
        let (w, late, depth) = (Arc::downgrade(&watchers), late.clone(), depth.clone());
        watchers.add(Arc::new(move |inv: Invalidation<'_, u32>| {
            let w = w.upgrade().unwrap();
            if depth.fetch_add(1, Ordering::SeqCst) == 0 {
                w.add(late.clone());
                w.report(inv); // nested report: the new watcher hears this one
            }
        }));
    }
    let (tx, rx) = mpsc::channel();
    let w = watchers.clone();
    thread::spawn(move || {
        w.report(Invalidation::Key(&1));
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("re-entrant report deadlocked");
    assert_eq!(late.heard(), 1, "heard the nested report only");
    assert_eq!(watchers.len(), 2);
    watchers.report(Invalidation::All);
    assert_eq!(late.heard(), 2);
}

/// A watcher that panics leaves the list usable (no poisoned-forever list).
#[test]
fn watchers_a_panicking_watcher_does_not_poison_the_list() {
    let watchers: Arc<Watchers<u32>> = Arc::new(Watchers::new());
    watchers.add(Arc::new(|_: Invalidation<'_, u32>| {
        panic!("watcher panics")
    }));
    let w = watchers.clone();
    assert!(
        thread::spawn(move || w.report(Invalidation::All))
            .join()
            .is_err()
    );
    // A panic inside is_active, which runs with the lock held.
    struct PanicsWhenAsked;
    impl Watcher<u32> for PanicsWhenAsked {
        fn invalidated(&self, _: Invalidation<'_, u32>) {}
        fn is_active(&self) -> bool {
            panic!("is_active panics")
        }
    }
    watchers.add(Arc::new(PanicsWhenAsked));
    let w = watchers.clone();
    assert!(
        thread::spawn(move || w.add(Counting::new()))
            .join()
            .is_err()
    );
    // The list survives the poisoning; len does not panic.
    assert_eq!(
        watchers.len(),
        2,
        "the add that panicked added nothing, nothing lost"
    );
}

/// Guard (was a bug, low/medium): a watcher that panicked in `invalidated`
/// stopped the report: every watcher after it never heard the invalidation. With one
/// shared layer under several `Layered` stacks, one stack whose upper layer
/// panics in `remove` (LayerWatcher -> Core::invalidated) leaves every later
/// stack serving the stale value for good.
#[test]
fn watchers_a_panicking_watcher_does_not_silence_the_others() {
    let watchers: Arc<Watchers<u32>> = Arc::new(Watchers::new());
    watchers.add(Arc::new(|_: Invalidation<'_, u32>| {
        panic!("watcher panics")
    }));
    let after = Counting::new();
    watchers.add(after.clone());
    let w = watchers.clone();
    let _ = thread::spawn(move || w.report(Invalidation::Key(&7))).join();
    assert_eq!(after.heard(), 1, "the second watcher never heard of key 7");
}

/// Guard (was a bug, low): `is_active` ran with the list's lock held (in add
/// and report), so a watcher whose `is_active` touches the same list (its len,
/// an add, a report) self-deadlocks, although the docs say watchers are
/// called with no lock held so they may call back into the layer.
#[test]
fn watchers_is_active_may_call_back_into_the_list() {
    struct AsksLen(std::sync::Weak<Watchers<u32>>);
    impl Watcher<u32> for AsksLen {
        fn invalidated(&self, _: Invalidation<'_, u32>) {}
        fn is_active(&self) -> bool {
            self.0.upgrade().is_some_and(|w| w.len() < 100)
        }
    }
    let watchers: Arc<Watchers<u32>> = Arc::new(Watchers::new());
    watchers.add(Arc::new(AsksLen(Arc::downgrade(&watchers))));
    let (tx, rx) = mpsc::channel();
    let w = watchers.clone();
    thread::spawn(move || {
        // Either a deadlock or a panic ("lock would deadlock"): both fail.
        w.report(Invalidation::All);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("report deadlocked (is_active called back into the list)");
}

/// Many threads add (some watchers go inactive at once) and report: every
/// watcher that stays active and was added before the reports began hears
/// every report exactly once; inactive ones are pruned and never called
/// after a report that started after they went inactive.
#[test]
fn watchers_concurrent_add_and_report() {
    let watchers: Arc<Watchers<u32>> = Arc::new(Watchers::new());
    let steady: Vec<Arc<Counting>> = (0..8).map(|_| Counting::new()).collect();
    for w in &steady {
        watchers.add(w.clone());
    }
    let reporters = 4;
    let reports_each = 2_000;
    let barrier = Arc::new(Barrier::new(reporters + 2));
    let dead_calls = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..reporters {
        let (watchers, barrier) = (watchers.clone(), barrier.clone());
        handles.push(thread::spawn(move || {
            barrier.wait();
            for k in 0..reports_each {
                watchers.report(Invalidation::Key(&k));
            }
        }));
    }
    {
        let (watchers, barrier, dead_calls) =
            (watchers.clone(), barrier.clone(), dead_calls.clone());
        handles.push(thread::spawn(move || {
            barrier.wait();
            for _ in 0..2_000 {
                // Added, then deactivated: it must vanish from the list.
                let gone = Arc::new(AtomicBool::new(false));
                let (g, d) = (gone.clone(), dead_calls.clone());
                struct Flag(Arc<AtomicBool>, Arc<AtomicUsize>);
                impl Watcher<u32> for Flag {
                    fn invalidated(&self, _: Invalidation<'_, u32>) {
                        let _ = (&self.0, &self.1);
                    }
                    fn is_active(&self) -> bool {
                        !self.0.load(Ordering::SeqCst)
                    }
                }
                watchers.add(Arc::new(Flag(g, d)));
                gone.store(true, Ordering::SeqCst);
            }
        }));
    }
    barrier.wait();
    for h in handles {
        h.join().unwrap();
    }
    for w in &steady {
        assert_eq!(w.heard(), reporters * reports_each as usize);
    }
    watchers.report(Invalidation::All);
    assert_eq!(watchers.len(), steady.len(), "inactive watchers pruned");
    let _ = dead_calls;
}

/// A watcher that goes inactive while a report runs is still called by
/// that report (the report works on a snapshot), then pruned: the next
/// report neither calls nor keeps it.
#[test]
fn watchers_inactive_mid_report_is_pruned_by_the_next() {
    let watchers: Arc<Watchers<u32>> = Arc::new(Watchers::new());
    let victim = Counting::new();
    let killer = {
        let victim = victim.clone();
        move |_: Invalidation<'_, u32>| victim.active.store(false, Ordering::SeqCst)
    };
    watchers.add(Arc::new(killer));
    watchers.add(victim.clone());
    watchers.report(Invalidation::All);
    let first = victim.heard();
    assert!(first <= 1);
    watchers.report(Invalidation::All);
    assert_eq!(
        victim.heard(),
        first,
        "called after it said it was inactive"
    );
    assert_eq!(watchers.len(), 1);
}
