//! Model tests: random operation sequences run against `MemoryCache` and
//! `Layered` and against plain `HashMap` models of their documented
//! semantics, comparing every answer and the full state after every step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use layercache::testing::Instrumented;
use layercache::{Cache, Error, ErrorPolicy, Layered, MemoryCache, Operation};
use proptest::prelude::*;

type Mem = MemoryCache<u8, u32>;

const DEPTH: usize = 3;

fn key() -> impl Strategy<Value = u8> {
    0..8u8
}

fn value() -> impl Strategy<Value = u32> {
    0..40u32
}

/// `key % modulus == remainder`, with `remainder < modulus`.
fn residue() -> impl Strategy<Value = (u8, u8)> {
    (1..4u8).prop_flat_map(|m| (Just(m), 0..m))
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort_unstable();
    items
}

/// Everything in a memory cache, read without side effects.
fn snapshot(cache: &Mem) -> BTreeMap<u8, u32> {
    let keys = cache.keys().unwrap();
    let map: BTreeMap<u8, u32> = keys
        .iter()
        .map(|k| (*k, cache.get(k).unwrap().unwrap()))
        .collect();
    assert_eq!(map.len(), keys.len(), "duplicate keys: {keys:?}");
    assert_eq!(cache.len(), map.len());
    map
}

fn ordered(model: &HashMap<u8, u32>) -> BTreeMap<u8, u32> {
    model.iter().map(|(k, v)| (*k, *v)).collect()
}

// ---------------------------------------------------------------------------
// MemoryCache against a HashMap.

#[derive(Debug, Clone)]
enum MemOp {
    Get(u8),
    Set(u8, u32),
    Remove(u8),
    Keys,
    Values,
    Clear,
    ClearMatching(u8, u8),
}

fn mem_op() -> impl Strategy<Value = MemOp> {
    prop_oneof![
        4 => key().prop_map(MemOp::Get),
        6 => (key(), value()).prop_map(|(k, v)| MemOp::Set(k, v)),
        3 => key().prop_map(MemOp::Remove),
        1 => Just(MemOp::Keys),
        1 => Just(MemOp::Values),
        1 => Just(MemOp::Clear),
        2 => residue().prop_map(|(m, r)| MemOp::ClearMatching(m, r)),
    ]
}

fn run_memory(cache: &Mem, ops: &[MemOp]) -> Result<(), TestCaseError> {
    let mut model: HashMap<u8, u32> = HashMap::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            MemOp::Get(k) => {
                prop_assert_eq!(cache.get(&k).unwrap(), model.get(&k).copied(), "{}", step);
            }
            MemOp::Set(k, v) => {
                cache.set(k, v).unwrap();
                model.insert(k, v);
            }
            MemOp::Remove(k) => {
                prop_assert_eq!(cache.remove(&k).unwrap(), model.remove(&k), "{}", step);
            }
            MemOp::Keys => {
                let expected = sorted(model.keys().copied().collect());
                prop_assert_eq!(sorted(cache.keys().unwrap()), expected, "{}", step);
            }
            MemOp::Values => {
                let expected = sorted(model.values().copied().collect());
                prop_assert_eq!(sorted(cache.values().unwrap()), expected, "{}", step);
            }
            MemOp::Clear => {
                cache.clear().unwrap();
                model.clear();
            }
            MemOp::ClearMatching(m, r) => {
                let before = model.len();
                model.retain(|k, _| k % m != r);
                let removed = cache.clear_matching(&|k| k % m == r).unwrap();
                prop_assert_eq!(removed, before - model.len(), "{}", step);
            }
        }
        prop_assert_eq!(
            snapshot(cache),
            ordered(&model),
            "after step {} {:?}",
            step,
            op
        );
        prop_assert_eq!(cache.is_empty(), model.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memory_cache_matches_a_hashmap(ops in prop::collection::vec(mem_op(), 1..60)) {
        run_memory(&MemoryCache::new(), &ops)?;
    }

    #[test]
    fn single_shard_memory_cache_matches_a_hashmap(
        ops in prop::collection::vec(mem_op(), 1..60),
    ) {
        let cache = MemoryCache::with_shards(1);
        prop_assert_eq!(cache.shard_count(), 1);
        run_memory(&cache, &ops)?;
    }
}

/// The comment on `MemoryCache::clear_matching` says the predicate "runs with
/// no lock held, so it may use this cache"; a predicate that writes to the
/// cache must not deadlock.
#[test]
fn memory_clear_matching_predicate_may_use_the_cache() {
    let cache: Arc<Mem> = Arc::new(MemoryCache::with_shards(1));
    cache.set(1, 10).unwrap();
    cache.set(2, 20).unwrap();
    let (done, finished) = mpsc::channel();
    let worker = cache.clone();
    // Left running (blocked forever) if it deadlocks; the test fails on the
    // timeout instead of hanging.
    thread::spawn(move || {
        let removed = worker
            .clear_matching(&|k| {
                // Record what was cleared in another key of the same cache.
                worker.set(100 + k, u32::from(*k)).unwrap();
                *k < 100
            })
            .unwrap();
        done.send(removed).unwrap();
    });
    let removed = finished
        .recv_timeout(Duration::from_secs(5))
        .expect("clear_matching deadlocked: the predicate wrote to the cache");
    assert_eq!(removed, 2);
    assert_eq!(cache.get(&1).unwrap(), None);
}

// ---------------------------------------------------------------------------
// Layered against a Vec of HashMaps.

#[derive(Debug, Clone)]
enum LayeredOp {
    Get(u8),
    Set(u8, u32),
    Remove(u8),
    Keys,
    Values,
    Clear,
    ClearMatching(u8, u8),
    /// Write straight into one layer, bypassing the stack.
    SetAt(usize, u8, u32),
    /// Remove straight from one layer, bypassing the stack.
    RemoveAt(usize, u8),
    /// Make one layer's reads fail, or stop failing.
    FailReads(usize, bool),
    /// Make one layer's writes fail, or stop failing.
    FailWrites(usize, bool),
}

fn layered_op() -> BoxedStrategy<LayeredOp> {
    let depth = 0..DEPTH;
    prop_oneof![
        6 => key().prop_map(LayeredOp::Get),
        3 => (key(), value()).prop_map(|(k, v)| LayeredOp::Set(k, v)),
        2 => key().prop_map(LayeredOp::Remove),
        1 => Just(LayeredOp::Keys),
        1 => Just(LayeredOp::Values),
        1 => Just(LayeredOp::Clear),
        1 => residue().prop_map(|(m, r)| LayeredOp::ClearMatching(m, r)),
        6 => (depth.clone(), key(), value()).prop_map(|(d, k, v)| LayeredOp::SetAt(d, k, v)),
        2 => (depth, key()).prop_map(|(d, k)| LayeredOp::RemoveAt(d, k)),
    ]
    .boxed()
}

fn failing_layered_op() -> BoxedStrategy<LayeredOp> {
    prop_oneof![
        10 => layered_op(),
        1 => (0..DEPTH, any::<bool>()).prop_map(|(d, f)| LayeredOp::FailReads(d, f)),
        1 => (0..DEPTH, any::<bool>()).prop_map(|(d, f)| LayeredOp::FailWrites(d, f)),
    ]
    .boxed()
}

/// What a call answered: its value, or the depth and operation that
/// `Error::Layer` named.
type Outcome<T> = Result<T, (usize, Operation)>;

fn outcome<T>(result: layercache::Result<T>) -> Outcome<T> {
    result.map_err(|error| match error {
        Error::Layer {
            depth, operation, ..
        } => (depth, operation),
        other => panic!("expected Error::Layer, got {other:?}"),
    })
}

/// The documented semantics of `Layered`, over plain maps.
struct Model {
    layers: Vec<HashMap<u8, u32>>,
    fail_reads: Vec<bool>,
    fail_writes: Vec<bool>,
    policy: ErrorPolicy,
    /// Failures that did not fail their call.
    failures: u64,
}

impl Model {
    fn new(policy: ErrorPolicy) -> Self {
        Self {
            layers: vec![HashMap::new(); DEPTH],
            fail_reads: vec![false; DEPTH],
            fail_writes: vec![false; DEPTH],
            policy,
            failures: 0,
        }
    }

    fn strict(&self) -> bool {
        self.policy == ErrorPolicy::Strict
    }

    /// The shallowest hit for `k`, skipping (and, under Degrade, counting)
    /// layers whose reads fail; under Strict the first such layer fails the
    /// call.
    fn lookup(&mut self, k: u8) -> Outcome<Option<(usize, u32)>> {
        for d in 0..DEPTH {
            if self.fail_reads[d] {
                if self.strict() {
                    return Err((d, Operation::Get));
                }
                self.failures += 1;
            } else if let Some(&v) = self.layers[d].get(&k) {
                return Ok(Some((d, v)));
            }
        }
        Ok(None)
    }

    fn get(&mut self, k: u8) -> Outcome<Option<u32>> {
        let Some((hit, v)) = self.lookup(k)? else {
            return Ok(None);
        };
        for above in 0..hit {
            if self.fail_writes[above] {
                // A failed promotion is reported under either policy.
                self.failures += 1;
            } else {
                self.layers[above].insert(k, v);
            }
        }
        Ok(Some(v))
    }

    /// Runs `write` on every layer whose writes work; the first failing
    /// layer is the call's error under Strict, every other failure is
    /// reported.
    fn write_all<T>(
        &mut self,
        operation: Operation,
        mut write: impl FnMut(&mut HashMap<u8, u32>) -> T,
    ) -> Outcome<Vec<T>> {
        let mut error = None;
        let mut results = Vec::new();
        for d in 0..DEPTH {
            if self.fail_writes[d] {
                if self.strict() && error.is_none() {
                    error = Some((d, operation));
                } else {
                    self.failures += 1;
                }
            } else {
                results.push(write(&mut self.layers[d]));
            }
        }
        error.map_or(Ok(results), Err)
    }

    /// A layer whose write fails is then asked to drop the key (so it cannot
    /// serve the older value); here its removes fail too, which is reported.
    fn set(&mut self, k: u8, v: u32) -> Outcome<()> {
        let outcome = self
            .write_all(Operation::Set, |layer| {
                layer.insert(k, v);
            })
            .map(drop);
        self.failures += self.fail_writes.iter().filter(|fails| **fails).count() as u64;
        outcome
    }

    fn remove(&mut self, k: u8) -> Outcome<Option<u32>> {
        let removed = self.write_all(Operation::Remove, |layer| layer.remove(&k))?;
        Ok(removed.into_iter().flatten().next())
    }

    /// The keys each readable layer adds to the union, top first.
    fn keys(&mut self) -> Outcome<Vec<BTreeSet<u8>>> {
        let mut seen: BTreeSet<u8> = BTreeSet::new();
        let mut segments = Vec::new();
        for d in 0..DEPTH {
            if self.fail_reads[d] {
                if self.strict() {
                    return Err((d, Operation::Keys));
                }
                self.failures += 1;
                continue;
            }
            let new: BTreeSet<u8> = self.layers[d]
                .keys()
                .filter(|k| !seen.contains(*k))
                .copied()
                .collect();
            seen.extend(&new);
            segments.push(new);
        }
        Ok(segments)
    }

    fn values(&mut self) -> Outcome<Vec<u32>> {
        let keys: Vec<u8> = self.keys()?.into_iter().flatten().collect();
        let mut values = Vec::new();
        for k in keys {
            if let Some((_, v)) = self.lookup(k)? {
                values.push(v);
            }
        }
        Ok(sorted(values))
    }

    fn clear(&mut self) -> Outcome<()> {
        self.write_all(Operation::Clear, HashMap::clear).map(drop)
    }

    fn clear_matching(&mut self, m: u8, r: u8) -> Outcome<usize> {
        let mut matched = BTreeSet::new();
        self.write_all(Operation::ClearMatching, |layer| {
            layer.retain(|k, _| {
                let hit = k % m == r;
                if hit {
                    matched.insert(*k);
                }
                !hit
            });
        })?;
        Ok(matched.len())
    }
}

/// `keys` is the union, each key once, in the order first seen from the
/// top: a run of each layer's new keys (in any order within the run).
fn keys_match(keys: &[u8], segments: &[BTreeSet<u8>]) -> bool {
    let mut rest = keys;
    for segment in segments {
        if rest.len() < segment.len() {
            return false;
        }
        let (run, tail) = rest.split_at(segment.len());
        if run.iter().copied().collect::<BTreeSet<u8>>() != *segment {
            return false;
        }
        rest = tail;
    }
    rest.is_empty()
}

/// A stack of three memory layers, each also held through an `Arc`, plain
/// or instrumented (to make it fail).
struct Stack {
    cache: Layered<u8, u32>,
    plain: Vec<Arc<Mem>>,
    instrumented: Vec<Arc<Instrumented<Mem>>>,
}

/// A stack of `layers` with `policy`, top first.
fn stack_of<C: Cache<u8, u32> + 'static>(
    policy: ErrorPolicy,
    layers: &[Arc<C>],
) -> Layered<u8, u32> {
    let mut cache = Layered::new().with_policy(policy);
    for layer in layers {
        cache.push(layer.clone());
    }
    cache
}

impl Stack {
    fn plain(policy: ErrorPolicy) -> Self {
        let plain: Vec<Arc<Mem>> = (0..DEPTH).map(|_| Arc::new(MemoryCache::new())).collect();
        Self {
            cache: stack_of(policy, &plain),
            plain,
            instrumented: Vec::new(),
        }
    }

    fn instrumented(policy: ErrorPolicy) -> Self {
        let instrumented: Vec<Arc<Instrumented<Mem>>> = (0..DEPTH)
            .map(|d| {
                // Vary the layers' shard counts too.
                Arc::new(Instrumented::new(MemoryCache::with_shards(1 << (2 * d))))
            })
            .collect();
        Self {
            cache: stack_of(policy, &instrumented),
            plain: Vec::new(),
            instrumented,
        }
    }

    fn mem(&self, depth: usize) -> &Mem {
        match self.plain.get(depth) {
            Some(layer) => layer,
            None => self.instrumented[depth].inner(),
        }
    }
}

fn run_layered(stack: &Stack, model: &mut Model, ops: &[LayeredOp]) -> Result<(), TestCaseError> {
    let cache = &stack.cache;
    for (step, op) in ops.iter().enumerate() {
        match *op {
            LayeredOp::Get(k) => {
                prop_assert_eq!(outcome(cache.get(&k)), model.get(k), "step {}", step);
            }
            LayeredOp::Set(k, v) => {
                prop_assert_eq!(outcome(cache.set(k, v)), model.set(k, v), "step {}", step);
            }
            LayeredOp::Remove(k) => {
                prop_assert_eq!(outcome(cache.remove(&k)), model.remove(k), "step {}", step);
            }
            LayeredOp::Keys => match (outcome(cache.keys()), model.keys()) {
                (Ok(keys), Ok(segments)) => prop_assert!(
                    keys_match(&keys, &segments),
                    "step {}: keys {:?}, expected runs {:?}",
                    step,
                    keys,
                    segments
                ),
                (real, expected) => {
                    prop_assert_eq!(real.map(drop), expected.map(drop), "step {}", step);
                }
            },
            LayeredOp::Values => {
                let real = outcome(cache.values()).map(sorted);
                prop_assert_eq!(real, model.values(), "step {}", step);
            }
            LayeredOp::Clear => {
                prop_assert_eq!(outcome(cache.clear()), model.clear(), "step {}", step);
            }
            LayeredOp::ClearMatching(m, r) => {
                let real = outcome(cache.clear_matching(&|k| k % m == r));
                prop_assert_eq!(real, model.clear_matching(m, r), "step {}", step);
            }
            LayeredOp::SetAt(d, k, v) => {
                stack.mem(d).set(k, v).unwrap();
                model.layers[d].insert(k, v);
            }
            LayeredOp::RemoveAt(d, k) => {
                let removed = stack.mem(d).remove(&k).unwrap();
                prop_assert_eq!(removed, model.layers[d].remove(&k), "step {}", step);
            }
            LayeredOp::FailReads(d, fail) => {
                stack.instrumented[d].fail_reads(fail);
                model.fail_reads[d] = fail;
            }
            LayeredOp::FailWrites(d, fail) => {
                stack.instrumented[d].fail_writes(fail);
                model.fail_writes[d] = fail;
            }
        }
        for d in 0..DEPTH {
            prop_assert_eq!(
                snapshot(stack.mem(d)),
                ordered(&model.layers[d]),
                "layer {} after step {} {:?}",
                d,
                step,
                op
            );
        }
        prop_assert_eq!(
            cache.failures(),
            model.failures,
            "failures after step {} {:?}",
            step,
            op
        );
    }
    Ok(())
}

fn policy() -> impl Strategy<Value = ErrorPolicy> {
    prop_oneof![Just(ErrorPolicy::Strict), Just(ErrorPolicy::Degrade)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn layered_matches_a_stack_of_hashmaps(ops in prop::collection::vec(layered_op(), 1..80)) {
        let stack = Stack::plain(ErrorPolicy::Strict);
        let mut model = Model::new(ErrorPolicy::Strict);
        run_layered(&stack, &mut model, &ops)?;
        prop_assert_eq!(stack.cache.failures(), 0);
    }

    #[test]
    fn layered_with_failing_layers_matches_the_model(
        policy in policy(),
        ops in prop::collection::vec(failing_layered_op(), 1..80),
    ) {
        let stack = Stack::instrumented(policy);
        let mut model = Model::new(policy);
        run_layered(&stack, &mut model, &ops)?;
    }
}
