//! RedisCache against the raw `redis` client on the same loopback server and
//! the same work, so the layer's overhead reads as a ratio.
//!
//! `cargo bench --bench redis --features redis,testing`; one group with e.g.
//! `-- redis_get`. The bench starts its own `redis-server` (persistence off)
//! on a free loopback port, and skips, saying so, when none is installed.
//!
//! - `redis_get`, `redis_set`: `RedisCache` (its pool, namespace and error
//!   mapping included) against `GET`/`SET` on one plain connection.
//! - `redis_get_entry`: `RedisCache::get_entry` (`GET` and `PTTL` in one
//!   `MULTI`/`EXEC` round trip) against the raw client doing the same, and
//!   against a plain `GET`.
//! - `redis_layered`: `Layered[MemoryCache, RedisCache]` warm (the memory
//!   layer answers) and cold (memory misses, Redis answers, the value is
//!   promoted), against the raw `GET`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use layercache::testing::RedisServer;
use layercache::{Cache, Layered, MemoryCache, RedisCache};

/// A key shaped like the ftrack session's, and a ~300-byte value.
const KEY: &str = "('Task', ['5671dcb0-66de-11e1-8e6e-f23c91df25eb'])";
const NAMESPACE: &str = "bench:";

fn value() -> Vec<u8> {
    let mut v = br#"{"__entity_type__": "Task", "id": "5671dcb0", "name": "sh0010""#.to_vec();
    v.resize(300, b' ');
    v
}

/// The raw client's GET of `full`, the peer of `RedisCache::get`.
fn raw_get(raw: &mut redis::Connection, full: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(full).query(raw).unwrap()
}

fn redis(c: &mut Criterion) {
    let Some(server) = RedisServer::start_or_skip("redis benches") else {
        return;
    };
    let open = || {
        RedisCache::builder(server.url())
            .namespace(NAMESPACE)
            .build()
            .expect("a RedisCache")
    };
    let ours = open();
    let mut raw = redis::Client::open(server.url())
        .expect("a client")
        .get_connection()
        .expect("a connection");
    // The full key the raw client uses: the namespace and `KEY`, as ours.
    let full = format!("{NAMESPACE}{KEY}");
    let key = KEY.to_string();
    let value = value();
    ours.set(key.clone(), value.clone()).expect("seed");

    let mut group = c.benchmark_group("redis_get");
    group.bench_function("raw_client", |b| {
        b.iter(|| black_box(raw_get(&mut raw, &full)))
    });
    group.bench_function("redis_cache", |b| {
        b.iter(|| black_box(ours.get(black_box(&key)).unwrap()))
    });
    group.finish();

    let mut group = c.benchmark_group("redis_set");
    group.bench_function("raw_client", |b| {
        b.iter(|| {
            redis::cmd("SET")
                .arg(&full)
                .arg(value.clone())
                .query::<()>(&mut raw)
                .unwrap()
        })
    });
    group.bench_function("redis_cache", |b| {
        b.iter(|| ours.set(key.clone(), value.clone()).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("redis_get_entry");
    group.bench_function("raw_client_get", |b| {
        b.iter(|| black_box(raw_get(&mut raw, &full)))
    });
    group.bench_function("raw_client_multi_get_pttl", |b| {
        b.iter(|| {
            let reply: (Option<Vec<u8>>, i64) = redis::pipe()
                .atomic()
                .cmd("GET")
                .arg(&full)
                .cmd("PTTL")
                .arg(&full)
                .query(&mut raw)
                .unwrap();
            black_box(reply)
        })
    });
    group.bench_function("redis_cache", |b| {
        b.iter(|| black_box(ours.get_entry(black_box(&key)).unwrap()))
    });
    group.finish();

    let stack: Layered<String, Vec<u8>> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(open());
    let top = stack.layer(0).expect("a top layer");
    let mut group = c.benchmark_group("redis_layered");
    group.bench_function("raw_client_get", |b| {
        b.iter(|| black_box(raw_get(&mut raw, &full)))
    });
    group.bench_function("cold", |b| {
        b.iter(|| {
            // Drop the memory copy so the read goes to Redis and promotes.
            top.remove(&key).unwrap();
            black_box(stack.get(black_box(&key)).unwrap())
        })
    });
    stack.get(&key).unwrap();
    group.bench_function("warm", |b| {
        b.iter(|| black_box(stack.get(black_box(&key)).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, redis);
criterion_main!(benches);
