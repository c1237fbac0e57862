//! Integration tests for `Layered`: read-through with promotion,
//! write-through, removal at any depth, key union, clearing, the error
//! policies and failure reporting, `Debug` output and thread safety.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use layercache::codec::Json;
use layercache::testing::Instrumented;
use layercache::{Cache, CacheExt, Error, ErrorPolicy, Layered, MemoryCache, Operation};

type Mem = MemoryCache<u8, u32>;
type Layer = Arc<Instrumented<Mem>>;

/// The operations an `Instrumented` layer counts, in a fixed order.
const OPS: [Operation; 7] = [
    Operation::Get,
    Operation::Set,
    Operation::Remove,
    Operation::Keys,
    Operation::Values,
    Operation::Clear,
    Operation::ClearMatching,
];

fn layer() -> Layer {
    Arc::new(Instrumented::new(MemoryCache::new()))
}

/// `n` fresh instrumented layers and a stack of them with `policy`.
fn stack(n: usize, policy: ErrorPolicy) -> (Vec<Layer>, Layered<u8, u32>) {
    let layers: Vec<Layer> = (0..n).map(|_| layer()).collect();
    let mut cache = Layered::new().with_policy(policy);
    for layer in &layers {
        cache.push(layer.clone());
    }
    (layers, cache)
}

/// The calls each layer has had so far, per operation (in `OPS` order).
fn counts(layers: &[Layer]) -> Vec<[u64; 7]> {
    layers
        .iter()
        .map(|layer| OPS.map(|op| layer.calls(op)))
        .collect()
}

/// Per layer, the calls it got: (operation, count) pairs, non-zero counts
/// only.
type Calls = Vec<Vec<(Operation, u64)>>;

/// Runs `f` and returns its result with the calls each layer got meanwhile.
fn calls_during<R>(layers: &[Layer], f: impl FnOnce() -> R) -> (R, Calls) {
    let before = counts(layers);
    let result = f();
    let calls = counts(layers)
        .iter()
        .zip(&before)
        .map(|(now, then)| {
            OPS.iter()
                .zip(now.iter().zip(then))
                .filter(|(_, (now, then))| now != then)
                .map(|(op, (now, then))| (*op, now - then))
                .collect()
        })
        .collect();
    (result, calls)
}

/// The contents of a layer, read without going through its counters.
fn contents(layer: &Layer) -> BTreeSet<(u8, u32)> {
    let inner = layer.inner();
    inner
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| (k, inner.get(&k).unwrap().unwrap()))
        .collect()
}

/// Failures reported to the hook: (depth, operation, the backend's own
/// operation), plus the shared log.
type FailureLog = Arc<Mutex<Vec<(usize, Operation, Operation)>>>;

fn with_log(cache: Layered<u8, u32>) -> (Layered<u8, u32>, FailureLog) {
    let log = FailureLog::default();
    let sink = log.clone();
    let cache = cache.on_failure(move |failure| {
        let backend_op = match failure.error {
            Error::Backend { operation, .. } => *operation,
            other => panic!("expected the layer's own Backend error, got {other:?}"),
        };
        sink.lock()
            .unwrap()
            .push((failure.depth, failure.operation, backend_op));
    });
    (cache, log)
}

fn take(log: &FailureLog) -> Vec<(usize, Operation, Operation)> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// Checks `error` is `Error::Layer` at `depth` for `operation`, wrapping the
/// instrumented layer's Backend error for `backend_op`.
fn assert_layer_error(error: &Error, depth: usize, operation: Operation, backend_op: Operation) {
    match error {
        Error::Layer {
            depth: d,
            operation: op,
            layer,
            ..
        } => {
            assert_eq!((*d, *op), (depth, operation), "{error}");
            assert_eq!(
                layer, "Instrumented",
                "the kind of layer, not its whole Debug"
            );
        }
        other => panic!("expected Error::Layer, got {other:?}"),
    }
    match error.root() {
        Error::Backend {
            backend, operation, ..
        } => {
            assert_eq!(backend, "instrumented");
            assert_eq!(*operation, backend_op);
        }
        other => panic!("expected a Backend root, got {other:?}"),
    }
}

// 1.
#[test]
fn get_hit_in_middle_promotes_above_and_leaves_below_alone() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    layers[1].inner().set(5, 50).unwrap();

    let (got, calls) = calls_during(&layers, || cache.get(&5).unwrap());

    assert_eq!(got, Some(50));
    assert_eq!(
        calls,
        vec![
            vec![(Operation::Get, 1), (Operation::Set, 1)],
            vec![(Operation::Get, 1)],
            vec![],
        ]
    );
    assert_eq!(contents(&layers[0]), [(5, 50)].into());
    assert_eq!(contents(&layers[1]), [(5, 50)].into());
    assert!(layers[2].inner().is_empty(), "not written below the hit");
    assert_eq!(cache.failures(), 0);

    // The next read is a hit at the top.
    let (got, calls) = calls_during(&layers, || cache.get(&5).unwrap());
    assert_eq!(got, Some(50));
    assert_eq!(calls, vec![vec![(Operation::Get, 1)], vec![], vec![]]);
}

#[test]
fn get_hit_at_bottom_promotes_into_every_layer_above() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    layers[2].inner().set(1, 11).unwrap();
    let (got, calls) = calls_during(&layers, || cache.get(&1).unwrap());
    assert_eq!(got, Some(11));
    assert_eq!(
        calls,
        vec![
            vec![(Operation::Get, 1), (Operation::Set, 1)],
            vec![(Operation::Get, 1), (Operation::Set, 1)],
            vec![(Operation::Get, 1)],
        ]
    );
    for layer in &layers {
        assert_eq!(contents(layer), [(1, 11)].into());
    }
}

#[test]
fn get_miss_asks_every_layer_and_writes_nothing() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    layers[0].inner().set(1, 10).unwrap();
    let (got, calls) = calls_during(&layers, || cache.get(&2).unwrap());
    assert_eq!(got, None);
    assert_eq!(calls, vec![vec![(Operation::Get, 1)]; 3]);
    assert_eq!(contents(&layers[0]), [(1, 10)].into());
    assert!(layers[1].inner().is_empty() && layers[2].inner().is_empty());
}

// 2.
#[test]
fn get_hit_at_top_does_not_touch_lower_layers() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    layers[0].inner().set(3, 30).unwrap();
    layers[1].inner().set(3, 31).unwrap();
    layers[2].inner().set(3, 32).unwrap();
    let (got, calls) = calls_during(&layers, || cache.get(&3).unwrap());

    assert_eq!(got, Some(30), "the shallowest value wins");
    assert_eq!(calls, vec![vec![(Operation::Get, 1)], vec![], vec![]]);
    assert_eq!(contents(&layers[1]), [(3, 31)].into());
    assert_eq!(contents(&layers[2]), [(3, 32)].into());
}

// 3.
#[test]
fn set_writes_every_layer() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    layers[1].inner().set(4, 1).unwrap();
    let ((), calls) = calls_during(&layers, || cache.set(4, 40).unwrap());
    assert_eq!(calls, vec![vec![(Operation::Set, 1)]; 3]);
    for layer in &layers {
        assert_eq!(contents(layer), [(4, 40)].into());
    }
}

#[test]
fn remove_of_key_only_at_depth_two_returns_it_and_removes_it() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    layers[2].inner().set(2, 20).unwrap();
    layers[2].inner().set(9, 90).unwrap();
    let (removed, calls) = calls_during(&layers, || cache.remove(&2).unwrap());

    assert_eq!(removed, Some(20));
    assert_eq!(calls, vec![vec![(Operation::Remove, 1)]; 3]);
    assert!(layers[0].inner().is_empty());
    assert!(layers[1].inner().is_empty());
    assert_eq!(contents(&layers[2]), [(9, 90)].into(), "other keys kept");
    assert_eq!(cache.get(&2).unwrap(), None);
}

#[test]
fn remove_returns_the_shallowest_value_and_removes_from_all() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    layers[1].inner().set(1, 11).unwrap();
    layers[2].inner().set(1, 12).unwrap();
    assert_eq!(cache.remove(&1).unwrap(), Some(11));
    for layer in &layers {
        assert!(layer.inner().is_empty());
    }

    for (depth, layer) in layers.iter().enumerate() {
        layer.inner().set(2, 20 + depth as u32).unwrap();
    }
    assert_eq!(cache.remove(&2).unwrap(), Some(20));
    for layer in &layers {
        assert!(layer.inner().is_empty());
    }
}

#[test]
fn remove_of_missing_key_is_none() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    layers[1].inner().set(1, 10).unwrap();
    let (removed, calls) = calls_during(&layers, || cache.remove(&7).unwrap());
    assert_eq!(removed, None);
    assert_eq!(calls, vec![vec![(Operation::Remove, 1)]; 3]);
    assert_eq!(contents(&layers[1]), [(1, 10)].into());
}

// 4.
#[test]
fn keys_are_the_union_without_duplicates_top_first() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    for (depth, keys) in [[1u8, 2].as_slice(), &[2, 3], &[3, 4, 1]]
        .into_iter()
        .enumerate()
    {
        for &k in keys {
            layers[depth].inner().set(k, u32::from(k)).unwrap();
        }
    }
    let keys = cache.keys().unwrap();
    assert_eq!(keys.len(), 4, "no duplicates: {keys:?}");
    // In the order first seen from the top: layer 0's keys, then 3, then 4.
    assert_eq!(
        keys[..2].iter().copied().collect::<BTreeSet<_>>(),
        [1, 2].into()
    );
    assert_eq!(keys[2..], [3, 4]);
}

#[test]
fn values_are_one_per_key_from_the_shallowest_layer_without_promotion() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    let data: [&[(u8, u32)]; 3] = [
        &[(1, 10), (2, 20)],
        &[(2, 21), (3, 31)],
        &[(3, 32), (4, 42), (1, 12)],
    ];
    for (layer, entries) in layers.iter().zip(data) {
        for &(k, v) in entries {
            layer.inner().set(k, v).unwrap();
        }
    }
    let mut values = cache.values().unwrap();
    values.sort_unstable();
    assert_eq!(values, [10, 20, 31, 42]);
    for (layer, entries) in layers.iter().zip(data) {
        assert_eq!(
            contents(layer),
            entries.iter().copied().collect(),
            "values must not promote"
        );
        assert_eq!(layer.calls(Operation::Set), 0);
    }
}

// 5.
#[test]
fn clear_clears_every_layer() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    for (depth, layer) in layers.iter().enumerate() {
        for k in 0..=depth as u8 {
            layer.inner().set(k, 1).unwrap();
        }
    }
    cache.clear().unwrap();
    for layer in &layers {
        assert!(layer.inner().is_empty());
        assert_eq!(layer.calls(Operation::Clear), 1);
    }
    assert!(cache.keys().unwrap().is_empty());
}

#[test]
fn clear_matching_clears_all_layers_and_counts_each_key_once() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    let data: [&[u8]; 3] = [&[1, 2, 3], &[2, 4, 5], &[2, 3, 6]];
    for (layer, keys) in layers.iter().zip(data) {
        for &k in keys {
            layer.inner().set(k, u32::from(k) * 10).unwrap();
        }
    }
    let even = |k: &u8| k.is_multiple_of(2);
    // 2 is in all three layers, 4 and 6 in one each.
    assert_eq!(cache.clear_matching(&even).unwrap(), 3);
    assert_eq!(contents(&layers[0]), [(1, 10), (3, 30)].into());
    assert_eq!(contents(&layers[1]), [(5, 50)].into());
    assert_eq!(contents(&layers[2]), [(3, 30)].into());
    assert_eq!(cache.clear_matching(&even).unwrap(), 0);
    assert_eq!(cache.clear_matching(&|_| true).unwrap(), 3);
    for layer in &layers {
        assert!(layer.inner().is_empty());
    }
}

// 6.
#[test]
fn strict_failing_read_fails_get() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    let (cache, log) = with_log(cache);
    layers[0].inner().set(1, 10).unwrap();
    layers[2].inner().set(2, 20).unwrap();
    layers[1].fail_reads(true);

    // A hit above the failing layer never reaches it.
    assert_eq!(cache.get(&1).unwrap(), Some(10));
    assert_eq!(layers[1].calls(Operation::Get), 0);

    let (error, calls) = calls_during(&layers, || cache.get(&2).unwrap_err());
    assert_layer_error(&error, 1, Operation::Get, Operation::Get);
    assert_eq!(
        calls,
        vec![vec![(Operation::Get, 1)], vec![(Operation::Get, 1)], vec![]],
        "stops at the failing layer"
    );
    assert!(layers[0].inner().get(&2).unwrap().is_none(), "no promotion");
    assert_eq!(cache.failures(), 0, "a returned error is not also reported");
    assert!(take(&log).is_empty());

    // keys and values are reads too.
    assert_layer_error(
        &cache.keys().unwrap_err(),
        1,
        Operation::Keys,
        Operation::Keys,
    );
    assert_layer_error(
        &cache.values().unwrap_err(),
        1,
        Operation::Keys,
        Operation::Keys,
    );
}

#[test]
fn strict_failing_write_still_writes_the_other_layers() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    let (cache, log) = with_log(cache);
    layers[1].fail_writes(true);

    let error = cache.set(7, 70).unwrap_err();
    assert_layer_error(&error, 1, Operation::Set, Operation::Set);
    assert_eq!(contents(&layers[0]), [(7, 70)].into());
    assert!(layers[1].inner().is_empty());
    assert_eq!(contents(&layers[2]), [(7, 70)].into());
    // The stack tried to drop the key from the layer that failed (so it
    // cannot serve an older value); that failed too, and is reported.
    assert_eq!(cache.failures(), 1);
    assert_eq!(take(&log), [(1, Operation::Remove, Operation::Remove)]);

    // remove and clear go on past the failing layer the same way.
    layers[1].inner().set(7, 71).unwrap();
    let error = cache.remove(&7).unwrap_err();
    assert_layer_error(&error, 1, Operation::Remove, Operation::Remove);
    assert!(layers[0].inner().is_empty() && layers[2].inner().is_empty());
    assert_eq!(contents(&layers[1]), [(7, 71)].into());

    layers[0].inner().set(8, 80).unwrap();
    layers[2].inner().set(8, 80).unwrap();
    let error = cache.clear().unwrap_err();
    assert_layer_error(&error, 1, Operation::Clear, Operation::Clear);
    assert!(layers[0].inner().is_empty() && layers[2].inner().is_empty());

    layers[0].inner().set(8, 80).unwrap();
    let error = cache.clear_matching(&|_| true).unwrap_err();
    assert_layer_error(
        &error,
        1,
        Operation::ClearMatching,
        Operation::ClearMatching,
    );
    assert!(layers[0].inner().is_empty());
    assert_eq!(cache.failures(), 1, "no more than the set's");
}

#[test]
fn strict_reports_failures_after_the_first_one() {
    let (layers, cache) = stack(3, ErrorPolicy::Strict);
    let (cache, log) = with_log(cache);
    layers[1].fail_writes(true);
    layers[2].fail_writes(true);

    let error = cache.set(1, 10).unwrap_err();
    assert_layer_error(&error, 1, Operation::Set, Operation::Set);
    assert_eq!(
        take(&log),
        [
            (1, Operation::Remove, Operation::Remove),
            (2, Operation::Set, Operation::Set),
            (2, Operation::Remove, Operation::Remove)
        ]
    );
    assert_eq!(cache.failures(), 3);
    assert_eq!(contents(&layers[0]), [(1, 10)].into());
}

// 7.
#[test]
fn degrade_failing_middle_layer_is_a_miss() {
    let (layers, cache) = stack(3, ErrorPolicy::Degrade);
    let (cache, log) = with_log(cache);
    assert_eq!(cache.policy(), ErrorPolicy::Degrade);
    layers[2].inner().set(9, 90).unwrap();
    layers[1].fail_reads(true);

    let (got, calls) = calls_during(&layers, || cache.get(&9).unwrap());

    assert_eq!(got, Some(90));
    assert_eq!(take(&log), [(1, Operation::Get, Operation::Get)]);
    assert_eq!(cache.failures(), 1);
    assert_eq!(
        calls,
        vec![
            vec![(Operation::Get, 1), (Operation::Set, 1)],
            vec![(Operation::Get, 1), (Operation::Set, 1)],
            vec![(Operation::Get, 1)],
        ]
    );
    // Promotion into the layer above the hit includes the failing one: only
    // its reads fail.
    assert_eq!(contents(&layers[0]), [(9, 90)].into());
    assert_eq!(contents(&layers[1]), [(9, 90)].into());

    // A miss everywhere is still a miss.
    assert_eq!(cache.get(&3).unwrap(), None);
    assert_eq!(take(&log), [(1, Operation::Get, Operation::Get)]);
    assert_eq!(cache.failures(), 2);
}

#[test]
fn degrade_writes_and_listings_skip_the_failing_layer() {
    let (layers, cache) = stack(3, ErrorPolicy::Degrade);
    let (cache, log) = with_log(cache);
    layers[1].inner().set(5, 51).unwrap();
    layers[2].inner().set(9, 90).unwrap();
    layers[1].fail_reads(true);
    layers[1].fail_writes(true);

    // get: a miss at depth 1, the promotion into it fails, the read does not.
    assert_eq!(cache.get(&9).unwrap(), Some(90));
    assert_eq!(
        take(&log),
        [
            (1, Operation::Get, Operation::Get),
            (1, Operation::Promote, Operation::Set)
        ]
    );
    assert_eq!(contents(&layers[0]), [(9, 90)].into());

    cache.set(3, 30).unwrap();
    assert_eq!(
        take(&log),
        [
            (1, Operation::Set, Operation::Set),
            (1, Operation::Remove, Operation::Remove)
        ]
    );
    assert_eq!(contents(&layers[0]), [(3, 30), (9, 90)].into());
    assert_eq!(contents(&layers[2]), [(3, 30), (9, 90)].into());

    let mut keys = cache.keys().unwrap();
    keys.sort_unstable();
    assert_eq!(keys, [3, 9], "the failing layer's key 5 is not listed");
    assert_eq!(take(&log), [(1, Operation::Keys, Operation::Keys)]);

    assert_eq!(cache.remove(&9).unwrap(), Some(90));
    assert_eq!(take(&log), [(1, Operation::Remove, Operation::Remove)]);
    assert_eq!(contents(&layers[0]), [(3, 30)].into());
    assert_eq!(contents(&layers[2]), [(3, 30)].into());

    assert_eq!(
        cache.remove(&5).unwrap(),
        None,
        "5 is only in the failing layer"
    );
    assert_eq!(take(&log), [(1, Operation::Remove, Operation::Remove)]);

    assert_eq!(cache.clear_matching(&|k| *k == 3).unwrap(), 1);
    assert_eq!(
        take(&log),
        [(1, Operation::ClearMatching, Operation::ClearMatching)]
    );
    assert!(layers[0].inner().is_empty() && layers[2].inner().is_empty());

    cache.set(4, 40).unwrap();
    take(&log);
    cache.clear().unwrap();
    assert_eq!(take(&log), [(1, Operation::Clear, Operation::Clear)]);
    assert!(layers[0].inner().is_empty() && layers[2].inner().is_empty());
    assert_eq!(
        contents(&layers[1]),
        [(5, 51)].into(),
        "failing layer untouched"
    );

    // 2 (get) + 2 (set, and dropping the key after it) + keys + 2 removes
    // + clear_matching + 2 (set) + clear.
    assert_eq!(cache.failures(), 11);
}

// 8.
#[test]
fn failed_promotion_is_not_a_failed_read() {
    for policy in [ErrorPolicy::Strict, ErrorPolicy::Degrade] {
        let (layers, cache) = stack(3, policy);
        let (cache, log) = with_log(cache);
        layers[2].inner().set(6, 60).unwrap();
        layers[0].fail_writes(true);

        assert_eq!(cache.get(&6).unwrap(), Some(60), "{policy:?}");

        assert_eq!(
            take(&log),
            [(0, Operation::Promote, Operation::Set)],
            "{policy:?}"
        );
        assert_eq!(cache.failures(), 1, "{policy:?}");
        assert!(layers[0].inner().is_empty(), "{policy:?}");
        // The other layer above the hit is still promoted into.
        assert_eq!(contents(&layers[1]), [(6, 60)].into(), "{policy:?}");
        assert_eq!(layers[2].calls(Operation::Set), 0, "{policy:?}");

        // The next read hits at depth 1 and tries layer 0 again.
        assert_eq!(cache.get(&6).unwrap(), Some(60), "{policy:?}");
        assert_eq!(take(&log), [(0, Operation::Promote, Operation::Set)]);
        assert_eq!(cache.failures(), 2, "{policy:?}");
        assert_eq!(layers[2].calls(Operation::Get), 1, "{policy:?}");
    }
}

// 9.
#[test]
fn debug_shows_the_stack() {
    let bytes: MemoryCache<String, Vec<u8>> = MemoryCache::new();
    let cache: Layered<String, Vec<String>> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(bytes.serialised(Json));
    assert_eq!(
        format!("{cache:?}"),
        "Layered[Memory(0 entries), Serialised<Json>(Memory(0 entries))]"
    );
    cache
        .set("user:1".to_string(), vec!["Ada".to_string()])
        .unwrap();
    assert_eq!(
        format!("{cache:?}"),
        "Layered[Memory(1 entry), Serialised<Json>(Memory(1 entry))]"
    );

    let empty: Layered<u8, u32> = Layered::new();
    assert_eq!(format!("{empty:?}"), "Layered[]");

    let nested: Layered<u8, u32> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(Layered::new().with_layer(MemoryCache::new()));
    nested.set(1, 1).unwrap();
    nested.set(2, 2).unwrap();
    assert_eq!(
        format!("{nested:?}"),
        "Layered[Memory(2 entries), Layered[Memory(2 entries)]]"
    );
}

#[test]
fn serialised_lower_layer_promotes_decoded_values() {
    let bytes: Arc<MemoryCache<String, Vec<u8>>> = Arc::new(MemoryCache::new());
    let top: Arc<MemoryCache<String, Vec<String>>> = Arc::new(MemoryCache::new());
    let cache = Layered::new()
        .with_layer(top.clone())
        .with_layer(bytes.clone().serialised(Json));
    bytes
        .set("k".to_string(), br#"["a","b"]"#.to_vec())
        .unwrap();
    let expected = Some(vec!["a".to_string(), "b".to_string()]);
    assert_eq!(cache.get(&"k".to_string()).unwrap(), expected);
    assert_eq!(top.get(&"k".to_string()).unwrap(), expected);
}

// 10.
#[test]
fn empty_stack_misses_and_stores_nothing() {
    let cache: Layered<u8, u32> = Layered::default();
    assert_eq!(cache.depth(), 0);
    assert!(cache.layers().is_empty());
    assert!(cache.layer(0).is_none());
    assert_eq!(cache.policy(), ErrorPolicy::Strict);

    cache.set(1, 10).unwrap();
    assert_eq!(cache.get(&1).unwrap(), None);
    assert_eq!(cache.remove(&1).unwrap(), None);
    assert!(cache.keys().unwrap().is_empty());
    assert!(cache.values().unwrap().is_empty());
    cache.clear().unwrap();
    assert_eq!(cache.clear_matching(&|_| true).unwrap(), 0);
    assert_eq!(cache.failures(), 0);
}

#[test]
fn push_with_layer_layers_layer_and_depth() {
    let top = layer();
    let middle = layer();
    let bottom = layer();
    let mut cache = Layered::new().with_layer(top.clone());
    assert_eq!(cache.depth(), 1);
    cache.push(middle.clone());
    cache.push_boxed(bottom.clone().boxed());
    assert_eq!(cache.depth(), 3);
    assert_eq!(cache.layers().len(), 3);
    assert!(cache.layer(3).is_none());

    // layer(d) is the layer pushed d-th, top first.
    for (depth, handle) in [&top, &middle, &bottom].into_iter().enumerate() {
        let value = 100 + depth as u32;
        cache.layer(depth).unwrap().set(depth as u8, value).unwrap();
        assert_eq!(contents(handle), [(depth as u8, value)].into());
        assert_eq!(
            cache.layers()[depth].get(&(depth as u8)).unwrap(),
            Some(value)
        );
    }
    // The stack reads top first and promotes the bottom's entry upwards.
    assert_eq!(cache.get(&2).unwrap(), Some(102));
    assert_eq!(contents(&top), [(0, 100), (2, 102)].into());
    assert_eq!(contents(&middle), [(1, 101), (2, 102)].into());

    cache.remove_layer(0).expect("a top layer");
    assert_eq!(cache.depth(), 2);
    assert_eq!(cache.get(&0).unwrap(), None, "the top layer is gone");
}

// 11.
#[test]
fn concurrent_gets_and_sets_see_the_right_values() {
    const THREADS: u32 = 8;
    const ROUNDS: u32 = 2_000;
    const PREFILLED: u8 = 64;
    let value_of = |k: u8| u32::from(k) * 1_000 + 7;

    let top: Arc<Mem> = Arc::new(MemoryCache::new());
    let bottom: Arc<Mem> = Arc::new(MemoryCache::new());
    for k in 0..PREFILLED {
        bottom.set(k, value_of(k)).unwrap();
    }
    let cache = Layered::new()
        .with_layer(top.clone())
        .with_layer(bottom.clone());
    let start = Barrier::new(THREADS as usize);

    thread::scope(|scope| {
        for t in 0..THREADS {
            let (cache, start) = (&cache, &start);
            scope.spawn(move || {
                start.wait();
                for r in 0..ROUNDS {
                    let k = ((t * 37 + r * 11) % 128) as u8;
                    if r.is_multiple_of(4) {
                        cache.set(k, value_of(k)).unwrap();
                    }
                    let got = cache.get(&k).unwrap();
                    if k < PREFILLED {
                        assert_eq!(got, Some(value_of(k)), "key {k}");
                    } else if let Some(v) = got {
                        assert_eq!(v, value_of(k), "key {k}");
                    }
                }
            });
        }
    });

    for k in 0..PREFILLED {
        assert_eq!(cache.get(&k).unwrap(), Some(value_of(k)));
        assert_eq!(top.get(&k).unwrap(), Some(value_of(k)), "promoted");
    }
    // Whatever reached the top layer, by promotion or set, is right too.
    for k in top.keys().unwrap() {
        assert_eq!(top.get(&k).unwrap(), Some(value_of(k)), "key {k}");
    }
}

mod invalidation {
    use super::*;
    use layercache::testing::Watched;
    use layercache::{Invalidation, Watcher};

    type Shared = Arc<Watched<String, MemoryCache<String, u32>>>;

    fn stack() -> (Arc<MemoryCache<String, u32>>, Shared, Layered<String, u32>) {
        let top = Arc::new(MemoryCache::new());
        let shared: Shared = Arc::new(Watched::new(MemoryCache::new()));
        let stack = Layered::new()
            .with_layer(top.clone())
            .with_layer(shared.clone());
        (top, shared, stack)
    }

    /// A key another process changed is dropped from the layers above the
    /// one that reported it, so the stack reads the new value.
    #[test]
    fn a_reported_key_is_dropped_from_the_layers_above() {
        let (top, shared, stack) = stack();
        let key = "k".to_string();
        stack.set(key.clone(), 1).unwrap();
        stack.set("other".to_string(), 5).unwrap();
        assert_eq!(top.get(&key).unwrap(), Some(1));
        shared.write_elsewhere(key.clone(), 2).unwrap();
        assert_eq!(top.get(&key).unwrap(), None, "dropped from the top");
        assert_eq!(
            top.get(&"other".to_string()).unwrap(),
            Some(5),
            "only that key"
        );
        assert_eq!(stack.get(&key).unwrap(), Some(2));
        shared.remove_elsewhere(&key).unwrap();
        assert_eq!(stack.get(&key).unwrap(), None);
    }

    /// `Invalidation::All` empties the layers above the reporting one.
    #[test]
    fn everything_reported_empties_the_layers_above() {
        let (top, shared, stack) = stack();
        for n in 0..10 {
            stack.set(format!("k{n}"), n).unwrap();
        }
        shared.report(Invalidation::All);
        assert!(top.is_empty());
        assert_eq!(
            shared.inner().len(),
            10,
            "the reporting layer keeps its own"
        );
    }

    /// A stack reports what its layers report, after acting on it, so a
    /// stack nested in another keeps the outer layers coherent too.
    #[test]
    fn nested_stacks_pass_reports_up() {
        let (inner_top, shared, inner) = stack();
        let outer_top = Arc::new(MemoryCache::new());
        let outer = Layered::new()
            .with_layer(outer_top.clone())
            .with_layer(inner);
        let key = "k".to_string();
        outer.set(key.clone(), 1).unwrap();
        shared.write_elsewhere(key.clone(), 2).unwrap();
        assert_eq!(outer_top.get(&key).unwrap(), None);
        assert_eq!(inner_top.get(&key).unwrap(), None);
        assert_eq!(outer.get(&key).unwrap(), Some(2));
    }

    /// `watch` on a stack says whether any layer reports.
    #[test]
    fn a_stack_reports_only_if_a_layer_does() {
        let quiet: Layered<String, u32> = Layered::new()
            .with_layer(MemoryCache::new())
            .with_layer(MemoryCache::new());
        let noop: Arc<dyn Watcher<String>> = Arc::new(|_: Invalidation<'_, String>| {});
        assert!(!quiet.watch(noop.clone()));
        let (_, _, loud) = stack();
        assert!(loud.watch(noop));
    }

    /// A long-lived shared layer does not collect the watchers of the
    /// short-lived stacks built over it, and a dropped stack hears nothing.
    #[test]
    fn dropped_stacks_leave_no_watchers_behind() {
        let shared: Shared = Arc::new(Watched::new(MemoryCache::new()));
        for _ in 0..1_000 {
            let stack = Layered::new()
                .with_layer(MemoryCache::new())
                .with_layer(shared.clone());
            stack.set("k".to_string(), 1).unwrap();
        }
        assert!(
            shared.watchers() <= 1,
            "{} watchers kept",
            shared.watchers()
        );
        shared.write_elsewhere("k".to_string(), 2).unwrap();
        assert_eq!(shared.watchers(), 0);
    }

    /// A layer taken out of the stack is no longer acted on.
    #[test]
    fn a_removed_layer_reports_nothing_to_the_stack() {
        let (top, shared, mut stack) = stack();
        let key = "k".to_string();
        stack.set(key.clone(), 1).unwrap();
        stack.remove_layer(1).expect("the shared layer");
        shared.write_elsewhere(key.clone(), 2).unwrap();
        assert_eq!(
            top.get(&key).unwrap(),
            Some(1),
            "not the stack's layer any more"
        );
    }

    /// Failing to drop a reported key from a layer above goes to the
    /// failure hook.
    #[test]
    fn a_failed_drop_is_reported() {
        let top = Arc::new(Instrumented::new(MemoryCache::<String, u32>::new()));
        let shared: Shared = Arc::new(Watched::new(MemoryCache::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let stack = Layered::new()
            .with_layer(top.clone())
            .with_layer(shared.clone())
            .on_failure(move |failure| log.lock().unwrap().push(failure.to_string()));
        stack.set("k".to_string(), 1).unwrap();
        top.fail_writes(true);
        shared.write_elsewhere("k".to_string(), 2).unwrap();
        assert_eq!(stack.failures(), 1);
        let seen = seen.lock().unwrap();
        assert!(seen[0].contains("layer 0 failed during remove"), "{seen:?}");
    }
}

/// A value computed by `get_or_insert_with` is never lost to a failed
/// write: under `Degrade` it comes back as `Ok`; under `Strict` the error
/// carries it. On main before issue 12, `Strict` returned the layer's error
/// and dropped the value, though the top layer held it.
#[test]
fn write_failure_keeps_the_computed_value() {
    for policy in [ErrorPolicy::Strict, ErrorPolicy::Degrade] {
        let (layers, cache) = stack(2, policy);
        layers[1].fail_writes(true);
        let got = cache.get_or_insert_with(1, || 10);
        let tried: Result<u32, Error> = cache.try_get_or_insert_with(2, || Ok(20));
        match policy {
            ErrorPolicy::Strict => {
                let error = got.expect_err("the bottom layer refused the write");
                assert!(matches!(error.root(), Error::Backend { .. }), "{error:?}");
                assert!(error.to_string().contains("could not store"), "{error}");
                assert_eq!(error.into_computed::<u32>().expect("carried"), 10);
                let error = tried.expect_err("refused");
                assert_eq!(error.into_computed::<u32>().expect("carried"), 20);
            }
            _ => {
                assert_eq!(got.expect("degraded write"), 10);
                assert_eq!(tried.expect("degraded write"), 20);
            }
        }
        // Either way the top layer holds both, and the stack serves them.
        assert_eq!(layers[0].inner().get(&1).unwrap(), Some(10), "{policy:?}");
        assert_eq!(cache.get(&2).unwrap(), Some(20), "{policy:?}");
    }
    // A value of another type is not given back as this one.
    let (layers, cache) = stack(2, ErrorPolicy::Strict);
    layers[1].fail_writes(true);
    let error = cache.get_or_insert_with(3, || 30).expect_err("refused");
    let error = error
        .into_computed::<String>()
        .expect_err("a u32, not a String");
    assert_eq!(error.into_computed::<u32>().expect("still carried"), 30);
}

/// A stack from a list of layers (issue 13): `collect` of boxed or shared
/// layers, top first, and `extend` adds at the bottom; `Debug` counts
/// entries in English.
#[test]
fn a_stack_collects_from_a_list_of_layers() {
    let top = Arc::new(MemoryCache::<u8, u32>::new());
    let boxed: Vec<Box<dyn Cache<u8, u32>>> =
        vec![Box::new(top.clone()), Box::new(MemoryCache::new())];
    let mut stack: Layered<u8, u32> = boxed.into_iter().collect();
    assert_eq!(stack.depth(), 2);
    let bottom: Arc<dyn Cache<u8, u32>> = Arc::new(MemoryCache::new());
    stack.extend([bottom.clone()]);
    assert_eq!(stack.depth(), 3);
    stack.set(1, 10).unwrap();
    assert_eq!(
        bottom.get(&1).unwrap(),
        Some(10),
        "written through to the added layer"
    );
    assert_eq!(top.get(&1).unwrap(), Some(10));
    assert_eq!(
        format!("{stack:?}"),
        "Layered[Memory(1 entry), Memory(1 entry), Memory(1 entry)]"
    );
    stack.set(2, 20).unwrap();
    assert_eq!(format!("{:?}", *top), "Memory(2 entries)");
    let empty: Layered<u8, u32> = Vec::<Arc<dyn Cache<u8, u32>>>::new().into_iter().collect();
    assert_eq!(empty.depth(), 0);
    assert_eq!(
        format!("{:?}", MemoryCache::<u8, u32>::new()),
        "Memory(0 entries)"
    );
}

/// `clear_pattern` with the re-exported regex: no dependency of one's own.
#[test]
fn clear_pattern_takes_the_reexported_regex() {
    let cache = MemoryCache::<String, u32>::new();
    cache.set("Task:1".into(), 1).unwrap();
    cache.set("User:1".into(), 2).unwrap();
    let task = layercache::regex::Regex::new("^Task:").unwrap();
    assert_eq!(cache.clear_pattern(&task).unwrap(), 1);
    assert_eq!(cache.keys().unwrap(), ["User:1"]);
}

/// `Error::Layer` names the kind of layer, not its whole `Debug` (issue
/// 13): a stack of stacks no longer prints every layer of the inner one.
#[test]
fn a_layer_error_names_the_kind_of_layer() {
    let failing = layer();
    failing.fail_writes(true);
    let inner: Layered<u8, u32> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(failing.clone());
    let outer: Layered<u8, u32> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(inner);
    let error = outer
        .set(1, 10)
        .expect_err("the inner stack's bottom refused");
    match &error {
        Error::Layer {
            depth,
            layer,
            source,
            ..
        } => {
            assert_eq!((*depth, layer.as_str()), (1, "Layered"), "{error}");
            match &**source {
                Error::Layer { depth, layer, .. } => {
                    assert_eq!((*depth, layer.as_str()), (1, "Instrumented"));
                }
                other => panic!("the inner stack's error: {other:?}"),
            }
        }
        other => panic!("expected Error::Layer, got {other:?}"),
    }
    assert_eq!(
        error.to_string().matches("Memory").count(),
        0,
        "no layer's contents in the message: {error}"
    );
}
