//! FileCache against redb on the same workload: string keys shaped like the
//! ftrack session's (`('Task', ['<uuid4>'])`) and ~300-byte values.
//!
//! `cargo bench --bench file`; one group with e.g. `-- file_get_hit`.
//! The 1M-entry files take a while to build (once per run).

#[path = "support/batches.rs"]
mod batches;
#[path = "support/order.rs"]
mod order;

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use batches::time_in_batches;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use layercache::codec::Bincode;
use layercache::{Cache, FileCache, Schema, Serialised};
use order::{random_order, shuffled};
use redb::{Database, ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("cache");

fn key(n: usize) -> String {
    // A uuid4-shaped id derived from n, so keys are unique and reproducible.
    let h = (n as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    let id = format!("{:032x}", h);
    format!(
        "('Task', ['{}-{}-4{}-8{}-{}'])",
        &id[0..8],
        &id[8..12],
        &id[13..16],
        &id[17..20],
        &id[20..32]
    )
}

fn value(n: usize) -> Vec<u8> {
    let mut v = format!("{{\"__entity_type__\": \"Task\", \"id\": {n}, \"name\": \"sh{n:06}\"")
        .into_bytes();
    v.resize(300, b' ');
    v
}

fn build(dir: &Path, entries: usize) -> (FileCache, Database) {
    // Default options, cleaning included: a set pays for it as a user's would.
    let ours = FileCache::open(dir.join(format!("ours-{entries}.lc"))).unwrap();
    let db = Database::create(dir.join(format!("redb-{entries}.redb"))).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(TABLE).unwrap();
        for n in 0..entries {
            let (k, v) = (key(n), value(n));
            table.insert(k.as_str(), v.as_slice()).unwrap();
            ours.set(k, v).unwrap();
        }
    }
    txn.commit().unwrap();
    (ours, db)
}

fn redb_get(db: &Database, k: &str) -> Option<Vec<u8>> {
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(TABLE).unwrap();
    table.get(k).unwrap().map(|v| v.value().to_vec())
}

fn file(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().unwrap();
    for entries in [10_000, 1_000_000] {
        let (ours, db) = build(dir.path(), entries);
        // Keys in the order the gets visit them; each group reads them in
        // untimed batches (see `support/batches.rs`).
        let keys: Vec<String> = shuffled(entries).into_iter().map(key).collect();
        let mut at = 0;
        // The in-process floor: std's HashMap holding the same keys and
        // values in memory, no file and no checksums. A get returns a copy
        // of the value, as ours does.
        let memory: HashMap<String, Vec<u8>> = (0..entries).map(|n| (key(n), value(n))).collect();

        let mut group = c.benchmark_group(format!("file_get_hit/{entries}"));
        group.bench_function("layercache", |b| {
            b.iter_custom(|iters| {
                time_in_batches(iters, &keys, &mut at, |k| {
                    black_box(ours.get(k).unwrap());
                })
            })
        });
        // A cache read sees the latest write, so each get is its own read
        // transaction: the like-for-like comparison.
        group.bench_function("redb_txn_per_get", |b| {
            b.iter_custom(|iters| {
                time_in_batches(iters, &keys, &mut at, |k| {
                    black_box(redb_get(&db, k));
                })
            })
        });
        // redb's floor: one long-lived read transaction and table.
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        group.bench_function("redb_shared_txn", |b| {
            b.iter_custom(|iters| {
                time_in_batches(iters, &keys, &mut at, |k| {
                    black_box(table.get(k.as_str()).unwrap().map(|v| v.value().to_vec()));
                })
            })
        });
        group.bench_function("std_hashmap_in_memory", |b| {
            b.iter_custom(|iters| {
                time_in_batches(iters, &keys, &mut at, |k| {
                    black_box(memory.get(k).cloned());
                })
            })
        });
        group.finish();
        drop(table);
        drop(txn);

        let missing: Vec<String> = keys.iter().map(|k| k.replace("Task", "Shot")).collect();
        let mut group = c.benchmark_group(format!("file_get_miss/{entries}"));
        group.bench_function("layercache", |b| {
            b.iter_custom(|iters| {
                time_in_batches(iters, &missing, &mut at, |k| {
                    black_box(ours.get(k).unwrap());
                })
            })
        });
        group.bench_function("redb_txn_per_get", |b| {
            b.iter_custom(|iters| {
                time_in_batches(iters, &missing, &mut at, |k| {
                    black_box(redb_get(&db, k));
                })
            })
        });
        group.finish();
    }
}

fn writes(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().unwrap();
    let entries = 10_000;
    let (ours, db) = build(dir.path(), entries);
    let keys: Vec<String> = (0..entries).map(key).collect();
    let v = value(7);
    let mut next = random_order(entries);

    // No fsync on either side: ours in its default Buffered mode, redb with
    // Durability::None.
    let mut group = c.benchmark_group("file_set");
    group.bench_function("layercache", |b| {
        b.iter(|| ours.set(keys[next()].clone(), v.clone()).unwrap())
    });
    group.bench_function("redb", |b| {
        b.iter(|| {
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(redb::Durability::None).unwrap();
            txn.open_table(TABLE)
                .unwrap()
                .insert(keys[next()].as_str(), v.as_slice())
                .unwrap();
            txn.commit().unwrap();
        })
    });
    group.finish();

    let mut group = c.benchmark_group("file_remove");
    group.bench_function("layercache", |b| {
        b.iter_batched(
            || {
                let k = keys[next()].clone();
                ours.set(k.clone(), v.clone()).unwrap();
                k
            },
            |k| ours.remove(&k).unwrap(),
            // Fewer iterations per batch than distinct keys, so no key
            // repeats within a batch (a repeat would find the setup undone).
            BatchSize::NumIterations(256),
        )
    });
    group.bench_function("redb", |b| {
        b.iter_batched(
            || {
                let k = keys[next()].clone();
                let mut txn = db.begin_write().unwrap();
                txn.set_durability(redb::Durability::None).unwrap();
                txn.open_table(TABLE)
                    .unwrap()
                    .insert(k.as_str(), v.as_slice())
                    .unwrap();
                txn.commit().unwrap();
                k
            },
            |k| {
                let mut txn = db.begin_write().unwrap();
                txn.set_durability(redb::Durability::None).unwrap();
                let old = txn
                    .open_table(TABLE)
                    .unwrap()
                    .remove(k.as_str())
                    .unwrap()
                    .map(|v| v.value().to_vec());
                txn.commit().unwrap();
                old
            },
            // Fewer iterations per batch than distinct keys, so no key
            // repeats within a batch (a repeat would find the setup undone).
            BatchSize::NumIterations(256),
        )
    });
    group.finish();
}

fn open_and_compact(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().unwrap();
    let mut group = c.benchmark_group("file_open");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for entries in [10_000, 100_000, 1_000_000] {
        let (ours, db) = build(dir.path(), entries);
        let path = ours.path().to_owned();
        drop(ours);
        drop(db);
        let redb_path = dir.path().join(format!("redb-{entries}.redb"));
        // Each handle is closed outside the timing (and before the next
        // open: redb refuses a second handle on a file): open alone is
        // measured, not redb's work on close nor the freeing of our index.
        group.bench_with_input(BenchmarkId::new("layercache", entries), &path, |b, path| {
            b.iter_batched(
                || (),
                |()| FileCache::open(path).unwrap(),
                BatchSize::PerIteration,
            )
        });
        group.bench_with_input(BenchmarkId::new("redb", entries), &redb_path, |b, path| {
            b.iter_batched(
                || (),
                |()| Database::open(path).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();

    // Compaction of a 100k-entry file where half the records are dead.
    let mut group = c.benchmark_group("file_compact");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let entries = 100_000;
    // Every record is the same size: keys and values have fixed lengths.
    let record = (48 + key(0).len() + value(0).len()).div_ceil(8) * 8;
    group.throughput(criterion::Throughput::Bytes((entries * record) as u64));
    group.bench_function("layercache", |b| {
        b.iter_batched(
            || {
                let path = dir.path().join("compact.lc");
                let _ = std::fs::remove_file(&path);
                let cache = FileCache::builder(&path)
                    .compact_when(2.0, 0)
                    .open()
                    .unwrap();
                for n in 0..entries {
                    cache.set(key(n % (entries / 2)), value(n)).unwrap();
                }
                cache
            },
            |cache| {
                cache.compact().unwrap();
                cache // closed outside the timing
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// A record shaped like a small entity, about 300 bytes in bincode.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Shot {
    id: u64,
    name: String,
    frames: u32,
    notes: String,
}

fn shot(n: usize) -> Shot {
    Shot {
        id: n as u64,
        name: format!("sh{n:06}"),
        frames: 240,
        notes: "x".repeat(270),
    }
}

/// What the schema version in the keys costs: bincode values over a real
/// file, stored under their keys as they are (`Serialised::unversioned`)
/// against under `<version>:<key>` (`Serialised::versioned`, a `Keyed`
/// with `Verbatim` keys and the version derived by reflection).
fn versioned(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().unwrap();
    let entries = 10_000;
    let plain = Serialised::unversioned(
        FileCache::open(dir.path().join("plain.lc")).unwrap(),
        Bincode::new(),
    );
    let schema = Schema::<Shot>::reflect().unwrap();
    let versioned = Serialised::versioned(
        FileCache::open(dir.path().join("versioned.lc")).unwrap(),
        Bincode::new(),
        schema,
    );
    for n in 0..entries {
        plain.set(key(n), shot(n)).unwrap();
        versioned.set(key(n), shot(n)).unwrap();
    }
    let keys: Vec<String> = shuffled(entries).into_iter().map(key).collect();
    let mut at = 0;
    let mut group = c.benchmark_group("serialised_get_hit/10000");
    group.bench_function("unversioned", |b| {
        b.iter_custom(|iters| {
            time_in_batches(iters, &keys, &mut at, |k| {
                black_box(Cache::<String, Shot>::get(&plain, k).unwrap());
            })
        })
    });
    group.bench_function("versioned", |b| {
        b.iter_custom(|iters| {
            time_in_batches(iters, &keys, &mut at, |k| {
                black_box(Cache::<String, Shot>::get(&versioned, k).unwrap());
            })
        })
    });
    group.finish();
    let value = shot(7);
    let mut group = c.benchmark_group("serialised_set/10000");
    group.bench_function("unversioned", |b| {
        b.iter_custom(|iters| {
            time_in_batches(iters, &keys, &mut at, |k| {
                plain.set(k.clone(), value.clone()).unwrap();
            })
        })
    });
    group.bench_function("versioned", |b| {
        b.iter_custom(|iters| {
            time_in_batches(iters, &keys, &mut at, |k| {
                versioned.set(k.clone(), value.clone()).unwrap();
            })
        })
    });
    group.finish();
}

criterion_group!(benches, file, writes, open_and_compact, versioned);
criterion_main!(benches);
