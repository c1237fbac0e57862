//! Benchmarks of the in-memory layers, each group running our cache and its
//! peers on the same workload so that ratios come from one run.
//!
//! Run with `cargo bench --bench caches`; a group at a time with
//! `cargo bench --bench caches -- memory_get_hit`.

#[path = "support/order.rs"]
mod order;

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use layercache::codec::{Bincode, Cbor, Codec, Json};
use layercache::{Cache, CacheExt, Layered, Memoiser, MemoryCache};
use order::random_order;
use serde::{Deserialize, Serialize};

/// 40-byte keys shaped like the ftrack session's, `('Task', ['<id>'])`.
fn keys(entries: usize) -> Vec<String> {
    let keys: Vec<String> = (0..entries)
        .map(|n| format!("('Task', ['{n:026x}'])"))
        .collect();
    assert!(keys.iter().all(|k| k.len() == 40));
    keys
}

type Value = Arc<str>;

fn value(n: usize) -> Value {
    Arc::from(format!("value {n}").as_str())
}

/// The floor: one std `RwLock` around a std `HashMap` (SipHash).
#[derive(Default)]
struct Floor(RwLock<HashMap<String, Value>>);

impl Floor {
    fn get(&self, key: &str) -> Option<Value> {
        self.0.read().unwrap().get(key).cloned()
    }
    fn set(&self, key: String, value: Value) {
        self.0.write().unwrap().insert(key, value);
    }
}

/// Each group runs at two sizes: 1,000 entries (the working set stays in
/// the CPU's caches) and 100,000 (most lookups miss the caches and wait on
/// memory, which dominates every peer alike).
const SIZES: [usize; 2] = [1_000, 100_000];

fn memory(c: &mut Criterion) {
    for entries in SIZES {
        let keys = keys(entries);
        let ours = MemoryCache::new();
        let moka = moka::sync::Cache::new(entries as u64 * 2);
        let floor = Floor::default();
        for (n, k) in keys.iter().enumerate() {
            ours.set(k.clone(), value(n)).unwrap();
            moka.insert(k.clone(), value(n));
            floor.set(k.clone(), value(n));
        }
        moka.run_pending_tasks();
        let mut next = random_order(entries);

        // Hits and misses run the same lookups, of the stored keys and of
        // keys of the same length that are not stored.
        let missing: Vec<String> = keys.iter().map(|k| k.replace('T', "X")).collect();
        for (name, lookups) in [("memory_get_hit", &keys), ("memory_get_miss", &missing)] {
            let mut group = c.benchmark_group(format!("{name}/{entries}"));
            group.bench_function("layercache", |b| {
                b.iter(|| black_box(ours.get(&lookups[next()]).unwrap()))
            });
            group.bench_function("moka", |b| b.iter(|| black_box(moka.get(&lookups[next()]))));
            group.bench_function("rwlock_hashmap", |b| {
                b.iter(|| black_box(floor.get(&lookups[next()])))
            });
            group.finish();
        }

        // Overwrites of existing keys: the steady state of a warm cache. The
        // key clone is part of every peer's cost alike.
        let v = value(1);
        let mut group = c.benchmark_group(format!("memory_set/{entries}"));
        group.bench_function("layercache", |b| {
            b.iter(|| ours.set(keys[next()].clone(), v.clone()).unwrap())
        });
        group.bench_function("moka", |b| {
            b.iter(|| moka.insert(keys[next()].clone(), v.clone()))
        });
        group.bench_function("rwlock_hashmap", |b| {
            b.iter(|| floor.set(keys[next()].clone(), v.clone()))
        });
        group.finish();
    }
}

fn layered(c: &mut Criterion) {
    let entries = 1_000;
    let keys = keys(entries);
    let top = Arc::new(MemoryCache::new());
    let bottom = Arc::new(MemoryCache::new());
    for (n, k) in keys.iter().enumerate() {
        top.set(k.clone(), value(n)).unwrap();
        bottom.set(k.clone(), value(n)).unwrap();
    }
    let stack: Layered<String, Value> = Layered::new()
        .with_layer(top.clone())
        .with_layer(bottom.clone());
    let mut next = random_order(entries);

    let mut group = c.benchmark_group("layered_get");
    group.bench_function("memory_alone", |b| {
        b.iter(|| black_box(top.get(&keys[next()]).unwrap()))
    });
    group.bench_function("hit_top_layer", |b| {
        b.iter(|| black_box(stack.get(&keys[next()]).unwrap()))
    });
    // Each measured get misses the top layer, hits the second and promotes:
    // the setup (not timed) removes the key from the top layer first.
    group.bench_function("hit_second_layer_with_promotion", |b| {
        b.iter_batched(
            || {
                let k = &keys[next()];
                top.remove(k).unwrap();
                k
            },
            |k| black_box(stack.get(k).unwrap()),
            // Fewer iterations per batch than distinct keys, so no key
            // repeats within a batch (a repeat would find the setup undone).
            BatchSize::NumIterations(256),
        )
    });
    group.finish();
}

/// What version 2's entries and promotion guard cost, each against the
/// same work without them, side by side in one run: a get of an entry with
/// a deadline (one clock read) against one without; a set with a TTL
/// against a plain set; a set through a two-layer stack (key hash and two
/// atomic adds on its generation stripe) against the same two sets made by
/// hand. 1,000 entries, keys in random order.
fn entries(c: &mut Criterion) {
    let entries = 1_000;
    let keys = keys(entries);
    let plain = MemoryCache::new();
    let expiring = MemoryCache::new();
    for (n, k) in keys.iter().enumerate() {
        plain.set(k.clone(), value(n)).unwrap();
        expiring
            .set_with_ttl(k.clone(), value(n), Duration::from_secs(3_600))
            .unwrap();
    }
    let mut next = random_order(entries);

    let mut group = c.benchmark_group("entries_get/1000");
    group.bench_function("no_deadline", |b| {
        b.iter(|| black_box(plain.get(&keys[next()]).unwrap()))
    });
    group.bench_function("with_deadline", |b| {
        b.iter(|| black_box(expiring.get(&keys[next()]).unwrap()))
    });
    group.finish();

    let v = value(1);
    let ttl = Duration::from_secs(3_600);
    let mut group = c.benchmark_group("entries_set/1000");
    group.bench_function("set", |b| {
        b.iter(|| plain.set(keys[next()].clone(), v.clone()).unwrap())
    });
    group.bench_function("set_with_ttl", |b| {
        b.iter(|| {
            expiring
                .set_with_ttl(keys[next()].clone(), v.clone(), ttl)
                .unwrap()
        })
    });
    group.finish();

    let top = Arc::new(MemoryCache::new());
    let bottom = Arc::new(MemoryCache::new());
    let stack: Layered<String, Value> = Layered::new()
        .with_layer(top.clone())
        .with_layer(bottom.clone());
    let mut group = c.benchmark_group("layered_set/1000");
    group.bench_function("two_sets_by_hand", |b| {
        b.iter(|| {
            let k = &keys[next()];
            top.set(k.clone(), v.clone()).unwrap();
            bottom.set(k.clone(), v.clone()).unwrap();
        })
    });
    group.bench_function("through_the_stack", |b| {
        b.iter(|| stack.set(keys[next()].clone(), v.clone()).unwrap())
    });
    group.finish();
}

/// A record of 10 fields, about 300 bytes as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: String,
    name: String,
    entity_type: String,
    status: String,
    priority: u32,
    bid: f64,
    is_open: bool,
    parent_id: Option<String>,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
}

fn record() -> Record {
    Record {
        id: "7f3c1e2a-58b4-4d0e-9a53-2b1f6c8d4e90".into(),
        name: "sh010_comp_v012".into(),
        entity_type: "Task".into(),
        status: "In Progress".into(),
        priority: 3,
        bid: 12.5,
        is_open: true,
        parent_id: Some("0b6e2f5d-93a1-4c7e-8f24-6d3a9b1c5e07".into()),
        tags: vec!["comp".into(), "urgent".into(), "client-review".into()],
        metadata: [
            ("department", "compositing"),
            ("software", "nuke 15.1"),
            ("artist", "ada.lovelace"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    }
}

fn codec_pair<X: Codec<Record>>(c: &mut Criterion, name: &str, codec: X) {
    let record = record();
    let bytes = codec.encode(&record).unwrap();
    let mut group = c.benchmark_group(format!("codec_{name}"));
    group.bench_function("encode", |b| {
        b.iter(|| black_box(codec.encode(black_box(&record)).unwrap()))
    });
    group.bench_function("decode", |b| {
        b.iter(|| black_box(codec.decode(black_box(&bytes)).unwrap()))
    });
    group.finish();
}

fn codecs(c: &mut Criterion) {
    let json_len = Json.encode(&record()).unwrap().len();
    assert!(
        (250..=350).contains(&json_len),
        "record is {json_len} bytes of JSON"
    );
    codec_pair(c, "bincode", Bincode::new());
    codec_pair(c, "cbor", Cbor);
    codec_pair(c, "json", Json);
}

fn memoiser(c: &mut Criterion) {
    let memo = Memoiser::new(MemoryCache::<String, u64>::new());
    for n in 0..1_000u64 {
        memo.call("square", &(n, "px"), || n * n).unwrap();
    }
    let mut n = 0u64;
    let mut group = c.benchmark_group("memoiser_hit");
    group.bench_function("layercache", |b| {
        b.iter(|| {
            n = (n + 7) % 1_000;
            black_box(
                memo.call("square", &(n, "px"), || unreachable!("a hit"))
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, memory, layered, entries, codecs, memoiser);
criterion_main!(benches);
