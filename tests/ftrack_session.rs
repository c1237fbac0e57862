//! The ftrack session: the seed's examples, merging, the cross-session
//! persistent cache, and concurrency.

use std::sync::Arc;

use layercache::ftrack::{Entity, FixtureServer, Session, Value};
use layercache::testing::Instrumented;
use layercache::{Cache, FileCache, Layered, MemoryCache, Operation, Serialised};
use serde_json::json;
use tempfile::TempDir;

fn server() -> Arc<FixtureServer> {
    let server = FixtureServer::new();
    server
        .insert_all([
            json!({"__entity_type__": "User", "id": "u1", "username": "ada",
                   "timelogs": [{"__entity_type__": "Timelog", "id": "t1"},
                                {"__entity_type__": "Timelog", "id": "t2"}]}),
            json!({"__entity_type__": "Timelog", "id": "t1", "comment": "Some comment",
                   "user": {"__entity_type__": "User", "id": "u1"},
                   "start": {"__type__": "datetime", "value": "2026-11-24T10:00:00"}}),
            json!({"__entity_type__": "Timelog", "id": "t2", "comment": "Other",
                   "user": {"__entity_type__": "User", "id": "u1"}}),
            json!({"__entity_type__": "Shot", "id": "s1", "name": "sh010"}),
            json!({"__entity_type__": "Shot", "id": "s2", "name": "sh020"}),
            json!({"__entity_type__": "Asset", "id": "a1", "name": "hero",
                   "parent": {"__entity_type__": "Shot", "id": "s1"}}),
            json!({"__entity_type__": "Asset", "id": "a2", "name": "prop",
                   "parent": {"__entity_type__": "Shot", "id": "s2"}}),
        ])
        .unwrap();
    for n in 0..12 {
        let asset = if n % 2 == 0 { "a1" } else { "a2" };
        server
            .insert(
                json!({"__entity_type__": "AssetVersion", "id": format!("v{n}"), "version": n,
                           "asset": {"__entity_type__": "Asset", "id": asset}}),
            )
            .unwrap();
    }
    server.reset_counts();
    Arc::new(server)
}

/// The fixture, and a session on it with the default cache (memory only).
fn memory_session() -> (Arc<FixtureServer>, Session) {
    let server = server();
    let session = Session::builder(server.clone()).build();
    (server, session)
}

#[test]
fn a_second_get_makes_no_server_call_and_returns_the_same_instance() {
    let (server, session) = memory_session();
    let user = session.get("User", ["u1"]).unwrap().expect("found");
    assert_eq!(server.calls(), 1);
    let again = session.get("User", ["u1"]).unwrap().expect("found");
    assert_eq!(server.calls(), 1, "served from the cache");
    assert!(user.same(&again));
    assert_eq!(user.get("username").unwrap(), Value::from("ada"));
    assert_eq!(session.get("User", ["nobody"]).unwrap(), None);
}

#[test]
fn a_query_merges_into_the_instance_already_held() {
    let (server, session) = memory_session();
    let user = session.get("User", ["u1"]).unwrap().unwrap();
    let timelogs = user.get("timelogs").unwrap();
    let timelog = timelogs.as_collection().unwrap()[0].clone();
    {
        let _off = session.auto_populating(false);
        assert_eq!(timelog.get("comment").unwrap(), Value::NotSet);
    }
    let calls = server.calls();
    let found = session
        .query(r#"select comment from Timelog where id is "t1""#)
        .unwrap();
    assert_eq!(server.calls(), calls + 1);
    assert!(
        found[0].same(&timelog),
        "the query's result is the held instance"
    );
    {
        let _off = session.auto_populating(false);
        assert_eq!(timelog.get("comment").unwrap(), Value::from("Some comment"));
    }
    assert!(
        session.is_auto_populating(),
        "the guard restored the setting"
    );
}

#[test]
fn reading_an_unloaded_attribute_fetches_it_when_auto_populating() {
    let (server, session) = memory_session();
    let found = session
        .query(r#"select id from Timelog where id is "t2""#)
        .unwrap();
    let timelog = &found[0];
    assert_eq!(timelog.peek("comment"), Value::NotSet);
    assert_eq!(timelog.get("comment").unwrap(), Value::from("Other"));
    assert_eq!(
        server.queries().last().map(String::as_str),
        Some(r#"select comment from Timelog where id in ("t2")"#)
    );
    let calls = server.calls();
    assert_eq!(timelog.get("comment").unwrap(), Value::from("Other"));
    assert_eq!(server.calls(), calls, "loaded once");
}

#[test]
fn not_set_never_clears_and_unchanged_merges_write_nothing() {
    let server = server();
    let lower = Arc::new(Instrumented::new(MemoryCache::<String, Entity>::new()));
    let handle = lower.clone();
    let session = Session::builder(server.clone())
        .cache(move |_| Some(Box::new(handle) as Box<dyn Cache<String, Entity>>))
        .build();
    let user = session.get("User", ["u1"]).unwrap().unwrap();
    let sets = lower.calls(Operation::Set);
    assert!(sets >= 1, "a new entity is written through");
    // A query projecting only `id` brings `username` as NotSet: it must not
    // clear the known value, and nothing changed, so nothing is written.
    session
        .query(r#"select id from User where id is "u1""#)
        .unwrap();
    assert_eq!(user.peek("username"), Value::from("ada"));
    assert_eq!(
        lower.calls(Operation::Set),
        sets,
        "an unchanged merge writes nothing"
    );
    // A changed value is written through.
    server
        .insert(json!({"__entity_type__": "User", "id": "u1", "username": "ada.l"}))
        .unwrap();
    session
        .query(r#"select username from User where id is "u1""#)
        .unwrap();
    assert_eq!(user.peek("username"), Value::from("ada.l"));
    assert_eq!(lower.calls(Operation::Set), sets + 1);
    // Local values are kept apart from remote ones.
    user.set("username", "local edit");
    assert_eq!(user.peek("username"), Value::from("local edit"));
    assert_eq!(user.attribute("username").remote, Value::from("ada.l"));
}

fn file_session(server: &Arc<FixtureServer>, path: &std::path::Path) -> Session {
    let path = path.to_owned();
    Session::builder(server.clone())
        .cache(move |session| {
            let file = FileCache::open(&path).expect("open cache file");
            Some(Box::new(
                Layered::new()
                    .with_layer(MemoryCache::new())
                    .with_layer(Serialised::new(file, session.codec())),
            ))
        })
        .build()
}

#[test]
fn a_new_session_is_served_from_the_file_with_references_expanded() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("session.lc");
    let server = server();
    let first = file_session(&server, &path);
    let versions = first
        .query(r#"select asset.parent from AssetVersion where asset.name is "hero" limit 10"#)
        .unwrap();
    assert_eq!(versions.len(), 6);
    let ids: Vec<String> = versions
        .iter()
        .map(|v| v.key().primary_key[0].clone())
        .collect();
    drop(versions);
    drop(first);

    server.reset_counts();
    let second = file_session(&server, &path);
    for id in &ids {
        let version = second
            .get("AssetVersion", [id.as_str()])
            .unwrap()
            .expect("cached");
        let asset = version.get("asset").unwrap();
        let asset = asset.as_entity().expect("a reference");
        let parent = asset.get("parent").unwrap();
        let parent = parent.as_entity().expect("a reference");
        assert_eq!(parent.key().primary_key, ["s1"]);
    }
    assert_eq!(server.calls(), 0, "{:?}", server.queries());
    let shot = second.get("Shot", ["s1"]).unwrap().expect("cached");
    assert_eq!(server.calls(), 0, "{:?}", server.queries());
    // One instance per identity, however it was reached.
    let via_version = second
        .get("AssetVersion", [ids[0].as_str()])
        .unwrap()
        .unwrap();
    let via_asset = via_version
        .get("asset")
        .unwrap()
        .as_entity()
        .unwrap()
        .get("parent")
        .unwrap();
    assert!(via_asset.as_entity().unwrap().same(&shot));
    let debug = format!("{:?}", *second.cache());
    assert!(debug.starts_with("Layered[Memory("), "{debug}");
    assert!(
        debug.contains("Serialised<EntityCodec(SetOnly)>(File("),
        "{debug}"
    );
}

#[test]
fn a_persistent_layer_with_malformed_or_stale_records_is_a_miss() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bad.lc");
    let server = server();
    let session = file_session(&server, &path);
    let key = session
        .cache_key(&layercache::ftrack::EntityKey::new("User", ["u1"]))
        .unwrap();
    {
        let file = FileCache::open(&path).unwrap();
        file.set(key.clone(), b"{not json".to_vec()).unwrap();
        file.set(
            "('Shot', ['s1'])".to_string(),
            br#"{"__entity_type__": "Shot"}"#.to_vec(),
        )
        .unwrap();
        file.set(
            "('Shot', ['s2'])".to_string(),
            br#"{"__entity_type__": "Shot", "id": "s2", "name": {"x": 1}}"#.to_vec(),
        )
        .unwrap();
    }
    let user = session.get("User", ["u1"]).unwrap().expect("fetched again");
    assert_eq!(user.get("username").unwrap(), Value::from("ada"));
    assert!(session.get("Shot", ["s1"]).unwrap().is_some());
    assert!(session.get("Shot", ["s2"]).unwrap().is_some());
    assert_eq!(
        server.calls(),
        3,
        "each bad record was a miss: {:?}",
        server.queries()
    );
}

#[test]
fn eight_threads_share_one_instance_per_identity_and_lose_no_attribute() {
    let (_, session) = memory_session();
    let results: Vec<Vec<Entity>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let session = session.clone();
                scope.spawn(move || {
                    let mut seen = Vec::new();
                    for round in 0..20 {
                        let projection = if (t + round) % 2 == 0 {
                            "comment"
                        } else {
                            "start"
                        };
                        let found = session
                            .query(&format!(
                                "select {projection} from Timelog where id in (\"t1\", \"t2\")"
                            ))
                            .unwrap();
                        seen.extend(found);
                        seen.push(session.get("User", ["u1"]).unwrap().unwrap());
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let t1 = session.get("Timelog", ["t1"]).unwrap().unwrap();
    let user = session.get("User", ["u1"]).unwrap().unwrap();
    for entity in results.iter().flatten() {
        let expected = if entity.entity_type() == "User" {
            &user
        } else if entity.key().primary_key == ["t1"] {
            &t1
        } else {
            continue;
        };
        assert!(entity.same(expected), "two instances of {}", entity.key());
    }
    let _off = session.auto_populating(false);
    assert_eq!(t1.get("comment").unwrap(), Value::from("Some comment"));
    assert_eq!(
        t1.get("start").unwrap(),
        Value::DateTime("2026-11-24T10:00:00".into())
    );
}

#[test]
fn the_codec_writes_ftrack_json_with_each_strategy() {
    use layercache::codec::Codec;
    use layercache::ftrack::EncodeStrategy;
    let (_, session) = memory_session();
    let timelog = session.get("Timelog", ["t1"]).unwrap().unwrap();
    timelog.set("comment", "edited");
    let codec = session.codec();
    let json: serde_json::Value = serde_json::from_slice(&codec.encode(&timelog).unwrap()).unwrap();
    assert_eq!(
        json,
        json!({"__entity_type__": "Timelog", "id": "t1", "comment": "edited",
               "user": {"__entity_type__": "User", "id": "u1"},
               "start": {"__type__": "datetime", "value": "2026-11-24T10:00:00"}})
    );
    let modified = codec.clone().with_strategy(EncodeStrategy::ModifiedOnly);
    let json: serde_json::Value =
        serde_json::from_slice(&modified.encode(&timelog).unwrap()).unwrap();
    assert_eq!(
        json,
        json!({"__entity_type__": "Timelog", "id": "t1", "comment": "edited"})
    );
    let persisted = codec.clone().with_strategy(EncodeStrategy::PersistedOnly);
    let json: serde_json::Value =
        serde_json::from_slice(&persisted.encode(&timelog).unwrap()).unwrap();
    assert_eq!(json["comment"], json!("Some comment"));

    // `All` loads what is not loaded yet (here the user's collection).
    let user = session
        .query(r#"select id from User where id is "u1""#)
        .unwrap()[0]
        .clone();
    user.set("timelogs", Value::NotSet);
    let all = codec.clone().with_strategy(EncodeStrategy::All);
    let json: serde_json::Value = serde_json::from_slice(&all.encode(&user).unwrap()).unwrap();
    assert_eq!(
        json["timelogs"],
        json!([{"__entity_type__": "Timelog", "id": "t1"}, {"__entity_type__": "Timelog", "id": "t2"}])
    );

    // Decoding gives an entity of this session whose references are the
    // session's instances.
    let decoded = codec.decode(&codec.encode(&timelog).unwrap()).unwrap();
    assert!(
        !decoded.same(&timelog),
        "a decoded record is a new instance"
    );
    let user_ref = decoded.peek("user");
    assert!(user_ref.as_entity().unwrap().same(&user));
    assert!(codec.decode(b"[1, 2]").is_err());
    assert!(
        codec.decode(br#"{"__entity_type__": "Timelog"}"#).is_err(),
        "no primary key"
    );
}

#[test]
fn populate_loads_projections_for_many_entities_in_one_query_per_type() {
    let (server, session) = memory_session();
    let logs = session.query("select id from Timelog").unwrap();
    assert_eq!(logs.len(), 2);
    let calls = server.calls();
    session.populate(&logs, "comment, user").unwrap();
    assert_eq!(server.calls(), calls + 1);
    assert_eq!(
        server.queries().last().map(String::as_str),
        Some(r#"select comment, user from Timelog where id in ("t1", "t2")"#)
    );
    let _off = session.auto_populating(false);
    assert_eq!(logs[1].get("comment").unwrap(), Value::from("Other"));
}

#[test]
fn composite_primary_keys_from_the_schema() {
    use layercache::ftrack::Schema;
    let schema = Schema::from_json(
        r#"[{"id": "Metadata", "primary_key": ["parent_id", "key"], "properties": {}}]"#,
    )
    .unwrap();
    let server = FixtureServer::new().with_primary_key("Metadata", &["parent_id", "key"]);
    server
        .insert(
            json!({"__entity_type__": "Metadata", "parent_id": "p1", "key": "fps", "value": "24"}),
        )
        .unwrap();
    let session = Session::builder(Arc::new(server)).schema(schema).build();
    let meta = session
        .get("Metadata", ["p1", "fps"])
        .unwrap()
        .expect("found");
    assert_eq!(meta.get("value").unwrap(), Value::from("24"));
    assert_eq!(
        session.cache_key(meta.key()).unwrap(),
        "('Metadata', ['p1', 'fps'])"
    );
    let err = session.get("Metadata", ["p1"]).unwrap_err();
    assert!(matches!(err, layercache::Error::Query { .. }), "{err}");
}

#[test]
fn a_record_written_under_another_schema_is_a_miss() {
    use layercache::ftrack::Schema;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("schema.lc");
    let server = server();
    // Another session stored Users keyed by `id`; this one keys them by
    // `username`, so the stored record lacks this schema's primary key.
    file_session(&server, &path)
        .get("User", ["u1"])
        .unwrap()
        .unwrap();
    let keyed_by_name = Session::builder(server.clone())
        .schema(Schema::new().with_type("User", &["username"]))
        .cache({
            let path = path.clone();
            move |session| {
                let file = FileCache::open(&path).unwrap();
                Some(Box::new(Serialised::new(file, session.codec())))
            }
        })
        .build();
    // The stored record decodes, but as ('User', ['ada']): it does not
    // answer for ('User', ['u1']), so that is a miss (and the server has no
    // user named "u1").
    server.reset_counts();
    assert_eq!(keyed_by_name.get("User", ["u1"]).unwrap(), None);
    assert_eq!(server.calls(), 1);
    let ada = keyed_by_name
        .get("User", ["ada"])
        .unwrap()
        .expect("on the server");
    assert_eq!(ada.key().primary_key, ["ada"]);
}

#[test]
fn a_record_that_refers_back_to_itself_merges_once_per_identity() {
    let (_, session) = memory_session();
    // User -> timelogs -> Timelog -> user -> the same User: a cycle within
    // one result.
    let users = session
        .query(r#"select timelogs.user, timelogs.comment from User where id is "u1""#)
        .unwrap();
    let user = &users[0];
    let timelogs = user.peek("timelogs");
    let timelogs = timelogs.as_collection().expect("a collection");
    assert_eq!(timelogs.len(), 2);
    for timelog in timelogs {
        let back = timelog.peek("user");
        assert!(
            back.as_entity().expect("a reference").same(user),
            "the cycle closes on one instance"
        );
    }
    assert_eq!(timelogs[0].peek("comment"), Value::from("Some comment"));
    let again = session.get("Timelog", ["t1"]).unwrap().unwrap();
    assert!(again.same(&timelogs[0]));
}
