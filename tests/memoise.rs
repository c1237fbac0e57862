//! `Memoiser`: single flight, fallible and panicking computations, recursion,
//! `wrap`, and memoising into a byte store.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::Duration;

use layercache::codec::{Codec, Json};
use layercache::{Cache, Error, Memoiser, MemoryCache, Serialised, StringKeyMaker};
use serde::{Deserialize, Serialize};

const SLOW: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `f` on its own thread and returns its result, failing the test if it
/// takes longer than `TIMEOUT` (a deadlock) instead of hanging the suite.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(value) => {
            handle.join().expect("finished");
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // `f` panicked: re-raise its panic here.
            match handle.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("sent nothing but returned"),
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hung for {TIMEOUT:?}: deadlock?"),
    }
}

/// Runs `f(0)` to `f(n - 1)` on `n` threads released together by a barrier,
/// and returns their results in order; `within` `TIMEOUT`, as above.
fn together<T, F>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> T + Send + Sync + 'static,
{
    within(move || {
        let barrier = Barrier::new(n);
        thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let (barrier, f) = (&barrier, &f);
                    s.spawn(move || {
                        barrier.wait();
                        f(i)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .collect()
        })
    })
}

type Memo = Memoiser<MemoryCache<String, u64>>;

fn memo() -> Arc<Memo> {
    Arc::new(Memoiser::new(MemoryCache::new()))
}

// ---------------------------------------------------------------------------
// 1. Single flight.

#[test]
fn concurrent_callers_of_one_key_compute_once() {
    let memo = memo();
    let calls = Arc::new(AtomicUsize::new(0));
    let results = together(8, {
        let (memo, calls) = (memo.clone(), calls.clone());
        move |_| {
            memo.call("slow", &(1, "x"), || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                thread::sleep(SLOW);
                100 + n as u64
            })
            .expect("a value")
        }
    });
    assert_eq!(results, [100; 8]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(memo.cache().len(), 1);
    let key = memo.key("slow", &(1, "x")).expect("key");
    assert_eq!(memo.cache().get(&key).expect("get"), Some(100));
    // Later calls are hits.
    assert_eq!(memo.call("slow", &(1, "x"), || 0).expect("hit"), 100);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------
// 2. Different keys.

#[test]
fn different_keys_compute_independently_and_concurrently() {
    let memo = memo();
    let calls = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let results = together(8, {
        let (memo, calls) = (memo.clone(), calls.clone());
        let (in_flight, most_in_flight) = (in_flight.clone(), most_in_flight.clone());
        move |i| {
            let arg = i as u64 % 2;
            let value = memo
                .call("square-ish", &arg, || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most_in_flight.fetch_max(now, Ordering::SeqCst);
                    thread::sleep(SLOW);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    10 + arg
                })
                .expect("a value");
            (arg, value)
        }
    });
    for (arg, value) in results {
        assert_eq!(value, 10 + arg);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // One key's computation did not wait for the other's.
    assert_eq!(most_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(memo.cache().len(), 2);
}

// ---------------------------------------------------------------------------
// 3. Fallible functions.

#[derive(Debug, PartialEq)]
enum MyError {
    Failed(usize),
    Cache(String),
}

impl From<Error> for MyError {
    fn from(error: Error) -> Self {
        MyError::Cache(error.to_string())
    }
}

#[test]
fn errors_are_returned_and_not_cached() {
    let memo = memo();
    let calls = AtomicUsize::new(0);
    let flaky = || -> Result<u64, MyError> {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        if n < 2 {
            Err(MyError::Failed(n))
        } else {
            Ok(7)
        }
    };
    assert_eq!(memo.try_call("flaky", &"a", flaky), Err(MyError::Failed(0)));
    assert!(memo.cache().is_empty());
    assert_eq!(memo.try_call("flaky", &"a", flaky), Err(MyError::Failed(1)));
    assert!(memo.cache().is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(memo.try_call("flaky", &"a", flaky), Ok(7));
    assert_eq!(memo.cache().len(), 1);
    // Cached: the function is not called again.
    assert_eq!(memo.try_call("flaky", &"a", flaky), Ok(7));
    assert_eq!(
        memo.try_call("flaky", &"a", || -> Result<u64, MyError> {
            panic!("must not run")
        }),
        Ok(7)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // With Error itself as the error type.
    let failed: layercache::Result<u64> = memo.try_call("other", &1, || {
        Err(Error::Key {
            reason: "no".into(),
        })
    });
    assert!(matches!(failed, Err(Error::Key { .. })));
    assert_eq!(memo.cache().len(), 1);
}

#[test]
fn waiters_on_a_failing_leader_compute_for_themselves() {
    let memo = memo();
    let calls = Arc::new(AtomicUsize::new(0));
    let results: Vec<Result<u64, MyError>> = together(4, {
        let (memo, calls) = (memo.clone(), calls.clone());
        move |_| {
            memo.try_call("fails-first", &(), || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                thread::sleep(SLOW);
                if n == 0 {
                    Err(MyError::Failed(n))
                } else {
                    Ok(40 + n as u64)
                }
            })
        }
    });
    // The leader's failure reaches the leader only; the waiters retry, one of
    // them leads, succeeds, and the rest read its value.
    let errors = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(errors, 1, "{results:?}");
    assert!(results.contains(&Err(MyError::Failed(0))));
    assert_eq!(
        results.iter().filter(|r| **r == Ok(41)).count(),
        3,
        "{results:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        memo.try_call("fails-first", &(), || Err(MyError::Failed(99))),
        Ok(41)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------
// 4. Panics.

#[test]
fn a_panicking_leader_does_not_strand_its_waiters() {
    let memo = memo();
    let leader_done = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered_rx) = mpsc::channel();
    let leader = thread::spawn({
        let (memo, leader_done) = (memo.clone(), leader_done.clone());
        move || {
            memo.call("boom", &1, || -> u64 {
                entered_tx.send(()).expect("main listens");
                thread::sleep(SLOW);
                leader_done.store(true, Ordering::SeqCst);
                panic!("compute panicked (expected by the test)")
            })
        }
    });
    entered_rx
        .recv_timeout(TIMEOUT)
        .expect("leader started computing");
    // The leader is computing: this caller waits on its flight.
    let (result_tx, result_rx) = mpsc::channel();
    let follower = thread::spawn({
        let (memo, leader_done) = (memo.clone(), leader_done.clone());
        move || {
            let value = memo.call("boom", &1, || {
                // Runs only after the leader's flight ended.
                if leader_done.load(Ordering::SeqCst) {
                    5
                } else {
                    0
                }
            });
            let _ = result_tx.send(value);
        }
    });
    let value = result_rx
        .recv_timeout(TIMEOUT)
        .expect("the waiter was released");
    assert_eq!(value.expect("a value"), 5);
    assert!(leader.join().is_err(), "the leader panicked");
    follower.join().expect("follower finished");
    assert_eq!(memo.call("boom", &1, || 0).expect("hit"), 5);
}

#[test]
fn a_panic_in_compute_leaves_no_flight_behind() {
    let memo = memo();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        memo.call("again", &2, || -> u64 {
            panic!("compute panicked (expected by the test)")
        })
    }));
    assert!(caught.is_err());
    assert!(memo.cache().is_empty());
    // The same thread calls again: not taken for recursion, not blocked.
    let value = within({
        let memo = memo.clone();
        move || memo.call("again", &2, || 3)
    });
    assert_eq!(value.expect("a value"), 3);
    assert_eq!(memo.call("again", &2, || 0).expect("a value"), 3);
    // And on the thread that panicked.
    let caught = catch_unwind(AssertUnwindSafe(|| {
        memo.call("again", &9, || -> u64 { panic!("expected by the test") })
    }));
    assert!(caught.is_err());
    assert_eq!(memo.call("again", &9, || 4).expect("no recursion error"), 4);
}

// ---------------------------------------------------------------------------
// 5. Recursion.

#[test]
fn calling_yourself_with_the_same_args_is_a_recursion_error() {
    let memo = memo();
    let (outer, inner) = within({
        let memo = memo.clone();
        move || {
            let mut inner = None;
            let outer = memo.try_call("fact", &5, || -> Result<u64, Error> {
                inner = Some(memo.call("fact", &5, || 1));
                Ok(120)
            });
            (outer, inner.expect("compute ran"))
        }
    });
    match inner {
        Err(Error::Recursion { function, key }) => {
            assert_eq!(function, "fact");
            assert_eq!(key, memo.key("fact", &5).expect("key"));
            assert_eq!(key, "4:facti5;");
        }
        other => panic!("expected a recursion error, got {other:?}"),
    }
    assert_eq!(outer.expect("outer computed"), 120);
    assert_eq!(memo.call("fact", &5, || 0).expect("hit"), 120);
    let error = Error::Recursion {
        function: "fact".into(),
        key: "4:facti5;".into(),
    };
    assert_eq!(
        error.to_string(),
        "memoised function fact called itself with the same arguments (key 4:facti5;)"
    );
}

#[test]
fn indirect_recursion_is_detected_too() {
    // a(1) -> b(1) -> a(1) on one thread.
    let memo = memo();
    let inner = within({
        let memo = memo.clone();
        move || {
            let mut inner = None;
            let a = memo.call("a", &1, || {
                memo.call("b", &1, || {
                    inner = Some(memo.call("a", &1, || 0));
                    2
                })
                .expect("b computes")
                    + 1
            });
            (a.expect("a computes"), inner.expect("ran"))
        }
    });
    assert_eq!(inner.0, 3);
    assert!(
        matches!(&inner.1, Err(Error::Recursion { function, .. }) if function == "a"),
        "{:?}",
        inner.1
    );
    assert_eq!(memo.cache().len(), 2);
}

fn fib(memo: &Memo, n: u64, calls: &AtomicUsize) -> u64 {
    memo.call("fib", &n, || {
        calls.fetch_add(1, Ordering::SeqCst);
        if n < 2 {
            n
        } else {
            fib(memo, n - 1, calls) + fib(memo, n - 2, calls)
        }
    })
    .expect("different args are not recursion")
}

#[test]
fn recursion_with_other_args_is_fine() {
    let memo = memo();
    let calls = Arc::new(AtomicUsize::new(0));
    let value = within({
        let (memo, calls) = (memo.clone(), calls.clone());
        move || fib(&memo, 60, &calls)
    });
    assert_eq!(value, 1_548_008_755_920);
    assert_eq!(calls.load(Ordering::SeqCst), 61);
    assert_eq!(memo.cache().len(), 61);
}

// ---------------------------------------------------------------------------
// 6. wrap.

#[test]
fn wrapped_functions_cache_by_args_and_name() {
    let memo = Memoiser::new(MemoryCache::<String, u64>::new());
    let doubled = AtomicUsize::new(0);
    let squared = AtomicUsize::new(0);
    let double = memo.wrap("double", |x: &u64| {
        doubled.fetch_add(1, Ordering::SeqCst);
        x * 2
    });
    let square = memo.wrap("square".to_string(), |x: &u64| {
        squared.fetch_add(1, Ordering::SeqCst);
        x * x
    });
    assert_eq!(double.call(&3).expect("value"), 6);
    assert_eq!(square.call(&3).expect("value"), 9);
    assert_eq!(double.call(&3).expect("value"), 6);
    assert_eq!(square.call(&3).expect("value"), 9);
    assert_eq!(double.call(&4).expect("value"), 8);
    assert_eq!(doubled.load(Ordering::SeqCst), 2);
    assert_eq!(squared.load(Ordering::SeqCst), 1);
    assert_eq!(memo.cache().len(), 3);

    assert_eq!(double.name(), "double");
    assert_eq!(format!("{square:?}"), "Memoised(square)");
    let key = memo.key("double", &3u64).expect("key");
    assert_eq!(key, "6:doublei3;");
    assert_eq!(memo.cache().get(&key).expect("get"), Some(6));
    assert_eq!(
        memo.cache()
            .get(&memo.key("square", &3u64).expect("key"))
            .expect("get"),
        Some(9)
    );
    let mut keys = memo.cache().keys().expect("keys");
    keys.sort();
    assert_eq!(keys, ["6:doublei3;", "6:doublei4;", "6:squarei3;"]);
    // A long name keeps its full length prefix.
    let name = "n".repeat(120);
    assert_eq!(memo.key(&name, &()).expect("key"), format!("120:{name}u"));
    // Names are length-prefixed: no name/args confusion.
    assert_ne!(
        memo.key("a", &"b").expect("key"),
        memo.key("ab", &"").expect("key")
    );
    assert_eq!(
        format!("{memo:?}"),
        "Memoiser<ObjectKeyMaker>(Memory(3 entries))"
    );
}

#[test]
fn wrapped_fallible_functions_cache_only_ok() {
    let memo = Memoiser::new(MemoryCache::<String, u64>::new());
    let calls = AtomicUsize::new(0);
    let parse = memo.wrap("parse", |s: &str| -> Result<u64, MyError> {
        calls.fetch_add(1, Ordering::SeqCst);
        s.parse().map_err(|_| MyError::Failed(s.len()))
    });
    assert_eq!(parse.try_call("12"), Ok(12));
    assert_eq!(parse.try_call("12"), Ok(12));
    assert_eq!(parse.try_call("x"), Err(MyError::Failed(1)));
    assert_eq!(parse.try_call("x"), Err(MyError::Failed(1)));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(memo.cache().keys().expect("keys"), ["5:parse\"2:12"]);
}

#[test]
fn string_key_maker_keys() {
    let memo = Memoiser::with_key_maker(MemoryCache::<String, String>::new(), StringKeyMaker);
    assert_eq!(memo.key("f", &42).expect("key"), "1:f42");
    assert_eq!(
        memo.call("greet", "Ada", || "hello Ada".to_string())
            .expect("value"),
        "hello Ada"
    );
    assert_eq!(memo.cache().keys().expect("keys"), ["5:greetAda"]);
    assert_eq!(
        format!("{memo:?}"),
        "Memoiser<StringKeyMaker>(Memory(1 entry))"
    );
}

// ---------------------------------------------------------------------------
// 7. Over a byte store.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    title: String,
    rows: Vec<(String, u32)>,
}

fn report(title: &str) -> Report {
    Report {
        title: title.into(),
        rows: vec![("a".into(), 1), ("b".into(), 2)],
    }
}

#[test]
fn memoising_into_a_serialised_byte_store() {
    let store: Arc<MemoryCache<String, Vec<u8>>> = Arc::new(MemoryCache::new());
    let memo = Memoiser::new(Serialised::new(store.clone(), Json));
    let calls = AtomicUsize::new(0);
    let make = || {
        calls.fetch_add(1, Ordering::SeqCst);
        report("Q1")
    };
    let first: Report = memo.call("report", &("q1", 2024), make).expect("value");
    let mut second: Report = memo.call("report", &("q1", 2024), make).expect("value");
    assert_eq!(first, report("Q1"));
    assert_eq!(second, first);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Owned: changing a returned value changes nothing stored.
    second.rows.clear();
    let third: Report = memo.call("report", &("q1", 2024), make).expect("value");
    assert_eq!(third, report("Q1"));

    // Stored as JSON bytes under the memoiser's key.
    let key = memo.key("report", &("q1", 2024)).expect("key");
    assert_eq!(key, r#"6:report["2:q1i2024;]"#);
    let bytes = store.get(&key).expect("get").expect("stored");
    assert_eq!(
        bytes,
        br#"{"title":"Q1","rows":[["a",1],["b",2]]}"#.to_vec()
    );
    assert_eq!(bytes, Json.encode(&report("Q1")).expect("encodes"));

    // A new memoiser on the same store (a restart) reads the result back.
    drop(memo);
    let restarted = Memoiser::new(Serialised::new(store.clone(), Json));
    let again: Report = restarted
        .call("report", &("q1", 2024), make)
        .expect("value");
    assert_eq!(again, report("Q1"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Bytes that no longer decode are a miss: computed and stored afresh.
    store.set(key.clone(), b"{corrupt".to_vec()).expect("set");
    let fresh: Report = restarted
        .call("report", &("q1", 2024), make)
        .expect("value");
    assert_eq!(fresh, report("Q1"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Read twice as stale, before and inside the memoiser's flight: a failed
    // read removes nothing; the `set` replaced the bytes.
    assert_eq!(restarted.cache().stale(), 2);
    assert_eq!(
        store.get(&key).expect("get"),
        Some(Json.encode(&report("Q1")).expect("encodes"))
    );
}

// ---------------------------------------------------------------------------
// Cycles across threads, and values kept when they cannot be stored.

/// Thread `i` leads the call of key `i` and, inside it, calls key `i + 1`
/// (mod `n`): a circle of `n` threads. On main before issue 12 every thread
/// waited forever.
fn circle(n: usize) -> (Arc<Memo>, Vec<Result<u64, Error>>) {
    let memo = memo();
    let inside = Arc::new(Barrier::new(n));
    let shared = memo.clone();
    let results = together(n, move |i| {
        let (memo, inside) = (shared.clone(), inside.clone());
        memo.try_call("f", &i, || {
            // Every thread leads its own key before any asks for the next.
            inside.wait();
            let next = (i + 1) % n;
            memo.try_call("f", &next, || Ok::<u64, Error>(next as u64 * 10))
                .map(|v| v + 1)
        })
    });
    (memo, results)
}

#[test]
fn a_cycle_across_threads_is_an_error_naming_its_keys() {
    for n in [2, 3] {
        let (memo, results) = circle(n);
        let cycles: Vec<String> = results
            .iter()
            .filter_map(|r| match r {
                Err(Error::Cycle { key, cycle }) => {
                    assert!(cycle.starts_with(&format!("{key} -> ")) || cycle.contains(key));
                    Some(cycle.clone())
                }
                _ => None,
            })
            .collect();
        assert!(
            !cycles.is_empty(),
            "{n} threads: no cycle reported: {results:?}"
        );
        // The circle names every key in it.
        for i in 0..n {
            let key = memo.key("f", &i).expect("key");
            assert!(
                cycles[0].contains(&key),
                "{n} threads: {} lacks {key}",
                cycles[0]
            );
        }
        // The others went on, and what they returned is what was stored.
        for (i, result) in results.iter().enumerate() {
            match result {
                Ok(value) => {
                    let stored = memo.call("f", &i, || unreachable!("stored")).expect("hit");
                    assert_eq!(*value, stored, "{n} threads: thread {i}");
                }
                Err(Error::Cycle { .. }) => {}
                Err(other) => panic!("{n} threads: thread {i}: {other}"),
            }
        }
    }
}

/// Threads that wait on each other's keys without a circle are not taken
/// for one: every call succeeds.
#[test]
fn chains_without_a_circle_are_not_cycles() {
    let memo = memo();
    for round in 0..20u64 {
        let (memo, gate) = (memo.clone(), Arc::new(Barrier::new(4)));
        let results = together(4, move |i| {
            let (memo, gate) = (memo.clone(), gate.clone());
            // Thread i leads key (round, i) and needs (round, i + 1); the
            // last needs nothing: a chain 0 -> 1 -> 2 -> 3.
            memo.call("chain", &(round, i), || {
                gate.wait();
                if i < 3 {
                    memo.call("chain", &(round, i + 1), || 7).expect("no cycle") + 1
                } else {
                    7
                }
            })
        });
        for result in results {
            let value = result.expect("no cycle");
            assert!((7..=10).contains(&value), "{value}");
        }
    }
}

/// Memoising over a stack whose bottom layer refuses writes: under `Strict`
/// the error carries the value (and the top layer holds it); under
/// `Degrade` the value comes back. On main before issue 12 `Strict`
/// returned the error alone.
#[test]
fn a_value_that_cannot_be_stored_is_not_lost() {
    use layercache::testing::Instrumented;
    use layercache::{ErrorPolicy, Layered};

    for policy in [ErrorPolicy::Strict, ErrorPolicy::Degrade] {
        let top = Arc::new(MemoryCache::<String, u64>::new());
        let bottom = Arc::new(Instrumented::new(MemoryCache::<String, u64>::new()));
        bottom.fail_writes(true);
        let memo = Memoiser::new(
            Layered::new()
                .with_layer(top.clone())
                .with_layer(bottom.clone())
                .with_policy(policy),
        );
        let calls = AtomicUsize::new(0);
        let result = memo.call("answer", &(), || {
            calls.fetch_add(1, Ordering::SeqCst);
            42u64
        });
        match policy {
            ErrorPolicy::Strict => {
                let error = result.expect_err("the bottom layer refused");
                assert!(matches!(error, Error::NotStored { .. }), "{error:?}");
                assert_eq!(error.into_computed::<u64>().expect("carried"), 42);
            }
            _ => assert_eq!(result.expect("degraded"), 42),
        }
        // The top layer holds it: the next call is a hit, not a recompute.
        assert_eq!(memo.call("answer", &(), || 0u64).expect("a hit"), 42);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{policy:?}");
        assert_eq!(top.len(), 1);
    }
}
