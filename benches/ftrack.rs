//! The ftrack session: a cached get, merges, and the session codec.
//!
//! `cargo bench --bench ftrack`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use layercache::codec::Codec;
use layercache::ftrack::{Entity, EntityKey, FixtureServer, Session, Value};
use serde_json::json;

fn session() -> (Arc<FixtureServer>, Session) {
    let server = FixtureServer::new();
    server
        .insert_all([
            json!({"__entity_type__": "Shot", "id": "s1", "name": "sh010"}),
            json!({"__entity_type__": "Asset", "id": "a1", "name": "hero",
                   "parent": {"__entity_type__": "Shot", "id": "s1"}}),
            json!({"__entity_type__": "User", "id": "u1", "username": "ada"}),
            json!({"__entity_type__": "Task", "id": "t1", "name": "comp", "status": "wip",
                   "priority": 3, "bid": 12.5, "is_open": true, "description": "comp the shot",
                   "start": {"__type__": "datetime", "value": "2026-11-24T10:00:00"},
                   "parent": {"__entity_type__": "Shot", "id": "s1"},
                   "assets": [{"__entity_type__": "Asset", "id": "a1"}],
                   "assignee": {"__entity_type__": "User", "id": "u1"}}),
        ])
        .unwrap();
    let server = Arc::new(server);
    let session = Session::builder(server.clone()).build();
    (server, session)
}

/// A detached Task with 10 attributes, `round` making their values change.
/// It is not the Task the codec benches encode, which the merges would
/// otherwise change.
fn incoming(round: i64) -> Entity {
    let entity = Entity::new(EntityKey::new("Task", ["t2"]));
    for (i, name) in [
        "name",
        "status",
        "description",
        "a",
        "b",
        "c",
        "d",
        "e",
        "f",
        "g",
    ]
    .into_iter()
    .enumerate()
    {
        entity.set(name, Value::Integer(round * 100 + i as i64));
    }
    entity
}

fn benches(c: &mut Criterion) {
    let (server, session) = session();
    let task = session.get("Task", ["t1"]).unwrap().unwrap();
    session.query("select name from Shot").unwrap();
    session.query("select name, parent from Asset").unwrap();
    session.query("select username from User").unwrap();
    let calls = server.calls();

    let mut group = c.benchmark_group("ftrack_session");
    group.bench_function("get_hit", |b| {
        b.iter(|| black_box(session.get("Task", ["t1"]).unwrap()))
    });
    assert_eq!(server.calls(), calls, "get_hit reached the server");

    session.merge(&incoming(1)).unwrap();
    let same = incoming(1);
    group.bench_function("merge_10_attributes_unchanged", |b| {
        b.iter(|| black_box(session.merge(&same).unwrap()))
    });
    let changing = [incoming(2), incoming(3)];
    let mut n = 0;
    group.bench_function("merge_10_attributes_changed", |b| {
        b.iter(|| {
            n += 1;
            black_box(session.merge(&changing[n % 2]).unwrap())
        })
    });
    group.finish();

    let codec = session.codec();
    let bytes = codec.encode(&task).unwrap();
    let mut group = c.benchmark_group("ftrack_codec");
    group.bench_function("encode_entity_with_references", |b| {
        b.iter(|| black_box(codec.encode(&task).unwrap()))
    });
    group.bench_function("decode_entity_with_references", |b| {
        b.iter(|| black_box(codec.decode(&bytes).unwrap()))
    });
    group.finish();
}

criterion_group!(ftrack, benches);
criterion_main!(ftrack);
