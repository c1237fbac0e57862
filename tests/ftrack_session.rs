//! The ftrack session: the seed's examples, merging, the cross-session
//! persistent cache, and concurrency.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use layercache::ftrack::{
    EncodeStrategy, Entity, EntityCodec, EntityKey, FixtureServer, Session, Value,
};
use layercache::testing::Instrumented;
use layercache::{Cache, Entry, FileCache, Layered, MemoryCache, Operation, Serialised};
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
    let debug = format!("{:?}", second.cache());
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

// ---------------------------------------------------------------------------
// No lock across a call into a layer, a codec or user code (issue 12).
//
// A session's stack is read while a lower layer decodes, and decoding reads
// the stack again (references resolve through the memory layer); a merge
// with `EncodeStrategy::All` fills attributes from inside the encode. If a
// call held a lock on the stack across any of that, a thread changing the
// stack (`cache_mut`) would wait for it, and the inner read would wait for
// that writer: both threads hang. These tests run the calls on threads and
// fail, never hang, past a deadline.

/// How long the calls below may take; past it they are deadlocked.
const DEADLINE: Duration = Duration::from_secs(20);

/// A byte layer whose read of one armed key parks until released: it holds
/// a call inside the stack while another thread changes the stack.
#[derive(Debug)]
struct Gated {
    inner: Arc<MemoryCache<String, Vec<u8>>>,
    armed: Mutex<Option<Arm>>,
}

#[derive(Debug)]
struct Arm {
    key: String,
    parked: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

impl Gated {
    /// Parks the next read of `key`: returns what hears that a read parked,
    /// and what releases it.
    fn arm(&self, key: &str) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (parked, on_parked) = mpsc::channel();
        let (release, on_release) = mpsc::channel();
        *self.armed.lock().unwrap() = Some(Arm {
            key: key.to_owned(),
            parked,
            release: on_release,
        });
        (on_parked, release)
    }
}

impl Cache<String, Vec<u8>> for Gated {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<Vec<u8>>>> {
        let arm = {
            let mut armed = self.armed.lock().unwrap();
            if armed.as_ref().is_some_and(|arm| &arm.key == key) {
                armed.take()
            } else {
                None
            }
        };
        if let Some(arm) = arm {
            let _ = arm.parked.send(());
            // Bounded, so that a failed test leaves no thread parked here.
            let _ = arm.release.recv_timeout(DEADLINE * 3);
        }
        self.inner.get_entry(key)
    }

    fn set_entry(&self, key: String, entry: Entry<Vec<u8>>) -> layercache::Result<()> {
        self.inner.set_entry(key, entry)
    }

    fn remove(&self, key: &String) -> layercache::Result<Option<Vec<u8>>> {
        self.inner.remove(key)
    }

    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
}

/// Every fixture record, encoded by a session that has ended (as a file
/// another session wrote).
fn stored_records(server: &Arc<FixtureServer>) -> Arc<MemoryCache<String, Vec<u8>>> {
    let bytes = Arc::new(MemoryCache::new());
    let writer = Session::builder(server.clone())
        .cache({
            let bytes = bytes.clone();
            move |session| Some(Box::new(Serialised::new(bytes, session.codec())))
        })
        .build();
    for entity_type in ["User", "Timelog", "Shot", "Asset", "AssetVersion"] {
        writer.query(&format!("from {entity_type}")).unwrap();
    }
    drop(writer);
    server.reset_counts();
    bytes
}

/// A session whose layer below memory decodes `bytes`, through a gate,
/// encoding with `strategy`.
fn gated_session(
    server: &Arc<FixtureServer>,
    bytes: &Arc<MemoryCache<String, Vec<u8>>>,
    strategy: EncodeStrategy,
) -> (Session, Arc<Gated>) {
    let gate = Arc::new(Gated {
        inner: bytes.clone(),
        armed: Mutex::new(None),
    });
    let session = Session::builder(server.clone())
        .cache({
            let gate = gate.clone();
            move |session| {
                Some(Box::new(Serialised::new(
                    gate,
                    session.codec().with_strategy(strategy),
                )))
            }
        })
        .build();
    (session, gate)
}

/// Runs `call` on a thread until it is parked in the lower layer's read of
/// `key`; then another thread changes the stack with `cache_mut` (an empty
/// memory layer at depth 1) and, once that thread is calling it, the read
/// goes on. Both must be done by the deadline. `what` names the call.
///
/// Before the fix the parked call held the stack's read lock, `cache_mut`
/// waited for it, and the decode that followed took the read lock again
/// behind the waiting writer: a deadlock.
fn race_cache_mut<T: Send + 'static>(
    session: &Session,
    gate: &Gated,
    key: &str,
    what: &str,
    call: impl FnOnce(Session) -> T + Send + 'static,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    let left = || deadline.saturating_duration_since(Instant::now());
    let (parked, release) = gate.arm(key);
    let (done_tx, done) = mpsc::channel();
    let caller = session.clone();
    thread::spawn(move || {
        let _ = done_tx.send(call(caller));
    });
    parked
        .recv_timeout(left())
        .unwrap_or_else(|_| panic!("{what} never read {key} from the lower layer"));

    let (calling_tx, calling) = mpsc::channel();
    let (changed_tx, changed) = mpsc::channel();
    let changer = session.clone();
    thread::spawn(move || {
        calling_tx.send(()).unwrap();
        let depth = {
            let mut stack = changer.cache_mut();
            stack.insert_layer(1, Arc::new(MemoryCache::new()));
            stack.depth()
        };
        let _ = changed_tx.send(depth);
    });
    calling.recv_timeout(left()).unwrap();
    // Time for `cache_mut` to block, were it to wait for calls in flight.
    thread::sleep(Duration::from_millis(200));
    release.send(()).unwrap();

    let result = done
        .recv_timeout(left())
        .unwrap_or_else(|error| match error {
            RecvTimeoutError::Timeout => panic!(
                "deadlock: {what} (decoding from the lower layer) and cache_mut on another \
             thread did not finish within {DEADLINE:?}"
            ),
            RecvTimeoutError::Disconnected => panic!("{what} panicked"),
        });
    let depth = changed.recv_timeout(left()).unwrap_or_else(|_| {
        panic!("deadlock: cache_mut did not return within {DEADLINE:?} while {what} ran")
    });
    assert_eq!(depth, 3, "memory, the new layer, the lower layer");
    assert_eq!(session.cache().depth(), 3, "the change took effect");
    result
}

#[test]
fn a_get_decoding_from_below_and_cache_mut_do_not_deadlock() {
    let server = server();
    let bytes = stored_records(&server);
    let (session, gate) = gated_session(&server, &bytes, EncodeStrategy::SetOnly);
    let key = session
        .cache_key(&EntityKey::new("AssetVersion", ["v0"]))
        .unwrap();
    let version = race_cache_mut(&session, &gate, &key, "get", |session| {
        session.get("AssetVersion", ["v0"])
    })
    .unwrap()
    .expect("stored below");
    assert_eq!(version.key(), &EntityKey::new("AssetVersion", ["v0"]));
    assert_eq!(version.get("version").unwrap(), Value::from(0));
    let asset = version.get("asset").unwrap();
    assert_eq!(
        asset.as_entity().expect("a reference").key(),
        &EntityKey::new("Asset", ["a1"])
    );
    assert_eq!(server.calls(), 0, "{:?}", server.queries());
}

#[test]
fn an_attribute_filled_from_below_and_cache_mut_do_not_deadlock() {
    let server = server();
    let bytes = stored_records(&server);
    let (session, gate) = gated_session(&server, &bytes, EncodeStrategy::SetOnly);
    let version = session.get("AssetVersion", ["v1"]).unwrap().unwrap();
    let asset = version.peek("asset");
    let asset = asset.as_entity().expect("a reference").clone();
    assert_eq!(asset.peek("parent"), Value::NotSet, "a placeholder");
    let key = session.cache_key(asset.key()).unwrap();
    let parent = race_cache_mut(&session, &gate, &key, "an attribute read (fill)", {
        let asset = asset.clone();
        move |_| asset.get("parent")
    })
    .unwrap();
    assert_eq!(
        parent.as_entity().expect("a reference").key(),
        &EntityKey::new("Shot", ["s2"])
    );
    assert_eq!(asset.peek("name"), Value::from("prop"));
    assert_eq!(server.calls(), 0, "{:?}", server.queries());
}

#[test]
fn a_merge_encoding_all_attributes_and_cache_mut_do_not_deadlock() {
    let server = server();
    let bytes = stored_records(&server);
    // The stored user lacks `timelogs`: encoding it with `All` looks below,
    // then asks the server.
    let user_key = "('User', ['u1'])".to_string();
    bytes
        .set(
            user_key.clone(),
            br#"{"__entity_type__": "User", "id": "u1", "username": "ada"}"#.to_vec(),
        )
        .unwrap();
    let (session, gate) = gated_session(&server, &bytes, EncodeStrategy::All);
    assert_eq!(
        session.cache_key(&EntityKey::new("User", ["u1"])).unwrap(),
        user_key
    );
    let user = session.get("User", ["u1"]).unwrap().unwrap();
    user.set("timelogs", Value::NotSet);
    let incoming = Entity::new(EntityKey::new("User", ["u1"]));
    incoming.set("username", "ada.l");
    let merged = race_cache_mut(
        &session,
        &gate,
        &user_key,
        "merge with EncodeStrategy::All",
        move |session| session.merge(&incoming),
    )
    .unwrap();
    assert!(merged.same(&user), "merged into the held instance");
    assert_eq!(user.peek("username"), Value::from("ada.l"));
    let timelogs = user.peek("timelogs");
    let keys: Vec<&EntityKey> = timelogs
        .as_collection()
        .expect("filled from the server")
        .iter()
        .map(Entity::key)
        .collect();
    assert_eq!(
        keys,
        [
            &EntityKey::new("Timelog", ["t1"]),
            &EntityKey::new("Timelog", ["t2"])
        ]
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&bytes.get(&user_key).unwrap().expect("written through")).unwrap();
    assert_eq!(stored["username"], json!("ada.l"));
    assert_eq!(
        stored["timelogs"],
        json!([{"__entity_type__": "Timelog", "id": "t1"}, {"__entity_type__": "Timelog", "id": "t2"}])
    );
}

/// A panic's message.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".into())
}

/// One worker of the test below: a name and what it does with the session.
type Worker = (
    &'static str,
    Box<dyn FnOnce(Session) -> layercache::Result<()> + Send>,
);

#[test]
fn calls_of_every_kind_and_cache_mut_on_many_threads_return_the_right_entities() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ROUNDS: usize = 24;
    let server = server();
    let bytes = stored_records(&server);
    // Gets decode from the lower layer (the memory layer is cleared over and
    // over); writes through it encode with `All`, which may fill attributes
    // from inside the encode.
    let session = Session::builder(server.clone())
        .cache({
            let bytes = bytes.clone();
            move |session| {
                Some(Box::new(Serialised::new(
                    bytes,
                    session.codec().with_strategy(EncodeStrategy::All),
                )))
            }
        })
        .build();
    let deadline = Instant::now() + DEADLINE;
    let finished = Arc::new(AtomicUsize::new(0));

    let workers: Vec<Worker> = vec![
        (
            "get (decoding from below, then filling references)",
            Box::new(|session: Session| {
                for round in 0..ROUNDS {
                    let n = round % 12;
                    let id = format!("v{n}");
                    let version = session.get("AssetVersion", [id.as_str()])?.expect("stored");
                    assert_eq!(
                        version.key(),
                        &EntityKey::new("AssetVersion", [id.as_str()])
                    );
                    assert_eq!(version.get("version")?, Value::from(n as i64));
                    let (asset_id, asset_name, shot_id, shot_name) = if n % 2 == 0 {
                        ("a1", "hero", "s1", "sh010")
                    } else {
                        ("a2", "prop", "s2", "sh020")
                    };
                    let asset = version.get("asset")?;
                    let asset = asset.as_entity().expect("a reference");
                    assert_eq!(asset.key(), &EntityKey::new("Asset", [asset_id]));
                    assert_eq!(asset.get("name")?, Value::from(asset_name));
                    let shot = asset.get("parent")?;
                    let shot = shot.as_entity().expect("a reference");
                    assert_eq!(shot.key(), &EntityKey::new("Shot", [shot_id]));
                    assert_eq!(shot.get("name")?, Value::from(shot_name));
                }
                Ok(())
            }),
        ),
        (
            "query",
            Box::new(|session: Session| {
                for _ in 0..ROUNDS {
                    let found = session.query(
                        r#"select comment, user.username from Timelog where id in ("t1", "t2")"#,
                    )?;
                    let keys: Vec<&EntityKey> = found.iter().map(Entity::key).collect();
                    assert_eq!(
                        keys,
                        [
                            &EntityKey::new("Timelog", ["t1"]),
                            &EntityKey::new("Timelog", ["t2"])
                        ]
                    );
                    assert_eq!(found[0].get("comment")?, Value::from("Some comment"));
                    assert_eq!(found[1].get("comment")?, Value::from("Other"));
                    for timelog in &found {
                        let user = timelog.get("user")?;
                        let user = user.as_entity().expect("a reference");
                        assert_eq!(user.key(), &EntityKey::new("User", ["u1"]));
                        assert_eq!(user.get("username")?, Value::from("ada"));
                    }
                }
                Ok(())
            }),
        ),
        (
            "merge (encoding with All, which asks the server from inside the encode)",
            Box::new(|session: Session| {
                for round in 0..ROUNDS {
                    let held = session.get("Timelog", ["t2"])?.expect("stored");
                    // t2 has no `start` on the server: encoding with `All`
                    // looks below for it, then asks the server.
                    held.set("start", Value::NotSet);
                    let note = format!("round {round}");
                    let incoming = Entity::new(EntityKey::new("Timelog", ["t2"]));
                    incoming.set("note", note.as_str());
                    let merged = session.merge(&incoming)?;
                    assert_eq!(merged.key(), &EntityKey::new("Timelog", ["t2"]));
                    assert_eq!(merged.peek("note"), Value::from(note));
                    assert_eq!(merged.get("comment")?, Value::from("Other"));
                    assert_eq!(merged.get("start")?, Value::NotSet);
                }
                Ok(())
            }),
        ),
        (
            "populate",
            Box::new(|session: Session| {
                for _ in 0..ROUNDS {
                    let versions = session.query("select id from AssetVersion")?;
                    assert_eq!(versions.len(), 12);
                    session.populate(&versions, "version, asset.name")?;
                    for (n, version) in versions.iter().enumerate() {
                        let id = format!("v{n}");
                        assert_eq!(
                            version.key(),
                            &EntityKey::new("AssetVersion", [id.as_str()])
                        );
                        assert_eq!(version.get("version")?, Value::from(n as i64));
                        let asset = version.get("asset")?;
                        let name = asset.as_entity().expect("a reference").get("name")?;
                        assert_eq!(name, Value::from(if n % 2 == 0 { "hero" } else { "prop" }));
                    }
                }
                Ok(())
            }),
        ),
        (
            "auto-populate (fill)",
            Box::new(|session: Session| {
                for _ in 0..ROUNDS {
                    let user = session.get("User", ["u1"])?.expect("stored");
                    assert_eq!(user.key(), &EntityKey::new("User", ["u1"]));
                    let timelogs = user.get("timelogs")?;
                    let timelogs = timelogs.as_collection().expect("a collection");
                    let expected = [("t1", "Some comment"), ("t2", "Other")];
                    assert_eq!(timelogs.len(), expected.len());
                    for (timelog, (id, comment)) in timelogs.iter().zip(expected) {
                        assert_eq!(timelog.key(), &EntityKey::new("Timelog", [id]));
                        assert_eq!(timelog.get("comment")?, Value::from(comment));
                    }
                    let shots = session.query("select id from Shot")?;
                    for (shot, name) in shots.iter().zip(["sh010", "sh020"]) {
                        assert_eq!(shot.get("name")?, Value::from(name));
                    }
                }
                Ok(())
            }),
        ),
    ];
    let others = workers.len();
    let changer: Worker = (
        "cache_mut (adding and removing a layer, clearing memory)",
        Box::new({
            let finished = finished.clone();
            move |session: Session| {
                let mut rounds = 0;
                while rounds < ROUNDS
                    || (finished.load(Ordering::SeqCst) < others && Instant::now() < deadline)
                {
                    {
                        let mut stack = session.cache_mut();
                        assert_eq!(stack.depth(), 2);
                        stack.insert_layer(1, Arc::new(MemoryCache::new()));
                    }
                    assert_eq!(session.cache().depth(), 3);
                    thread::yield_now();
                    {
                        let mut stack = session.cache_mut();
                        stack.remove_layer(1).expect("the layer added");
                        assert_eq!(stack.depth(), 2);
                    }
                    session.cache().layer(0).expect("memory").clear()?;
                    rounds += 1;
                }
                Ok(())
            }
        }),
    );

    let (report, reports) = mpsc::channel();
    let mut running = Vec::new();
    for (name, work) in workers.into_iter().chain([changer]) {
        running.push(name);
        let report = report.clone();
        let session = session.clone();
        let finished = finished.clone();
        thread::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(session)));
            finished.fetch_add(1, Ordering::SeqCst);
            let _ = report.send((name, outcome));
        });
    }
    drop(report);
    while !running.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match reports.recv_timeout(left) {
            Ok((name, Ok(Ok(())))) => running.retain(|running| *running != name),
            Ok((name, Ok(Err(error)))) => panic!("{name} failed: {error}"),
            Ok((name, Err(payload))) => panic!("{name}: {}", panic_message(&*payload)),
            Err(_) => panic!(
                "deadlock: {running:?} did not finish within {DEADLINE:?}, \
                 running at once on one session"
            ),
        }
    }
}

#[test]
fn changes_of_the_stack_from_two_threads_are_both_kept() {
    let (_, session) = memory_session();
    thread::scope(|scope| {
        for _ in 0..2 {
            let session = session.clone();
            scope.spawn(move || {
                for _ in 0..50 {
                    session.cache_mut().push(MemoryCache::new());
                }
            });
        }
    });
    assert_eq!(session.cache().depth(), 101, "memory and 100 layers");
}

#[test]
#[should_panic(expected = "already holds a CacheMut")]
fn cache_mut_twice_on_one_thread_panics_rather_than_hangs() {
    let (_, session) = memory_session();
    let _first = session.cache_mut();
    let _second = session.cache_mut();
}

// ---------------------------------------------------------------------------
// No session lock held across a call into a layer either (issue 12, point 2):
// a layer of the user's may take a lock of its own, and the thread holding
// that lock may call the session meanwhile.

/// A lock of the user's that a layer takes when it is called for one key,
/// first telling the test that it got there.
struct UserLock {
    key: String,
    lock: Arc<Mutex<()>>,
    entered: Mutex<Option<mpsc::Sender<()>>>,
}

impl UserLock {
    fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            lock: Arc::new(Mutex::new(())),
            entered: Mutex::new(None),
        }
    }

    /// Takes the lock when `key` is the guarded key.
    fn enter(&self, key: &String) -> Option<std::sync::MutexGuard<'_, ()>> {
        if key != &self.key {
            return None;
        }
        if let Some(entered) = self.entered.lock().unwrap().take() {
            let _ = entered.send(());
        }
        Some(self.lock.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl std::fmt::Debug for UserLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserLock({})", self.key)
    }
}

/// An entity layer whose `set` of the guarded key takes the user's lock.
#[derive(Debug)]
struct LockingSets {
    inner: MemoryCache<String, Entity>,
    user: Arc<UserLock>,
}

impl Cache<String, Entity> for LockingSets {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<Entity>>> {
        self.inner.get_entry(key)
    }

    fn set_entry(&self, key: String, entry: Entry<Entity>) -> layercache::Result<()> {
        let _user = self.user.enter(&key);
        self.inner.set_entry(key, entry)
    }

    fn remove(&self, key: &String) -> layercache::Result<Option<Entity>> {
        self.inner.remove(key)
    }

    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
}

/// A byte layer whose `get` of the guarded key takes the user's lock.
#[derive(Debug)]
struct LockingGets {
    inner: Arc<MemoryCache<String, Vec<u8>>>,
    user: Arc<UserLock>,
}

impl Cache<String, Vec<u8>> for LockingGets {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<Vec<u8>>>> {
        let _user = self.user.enter(key);
        self.inner.get_entry(key)
    }

    fn set_entry(&self, key: String, entry: Entry<Vec<u8>>) -> layercache::Result<()> {
        self.inner.set_entry(key, entry)
    }

    fn remove(&self, key: &String) -> layercache::Result<Option<Vec<u8>>> {
        self.inner.remove(key)
    }

    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
}

/// A thread takes the user's lock; then `inside` runs on another thread
/// until the layer, called for the guarded key, waits for that lock; then
/// the first thread, still holding it, runs `holder` (calls into the
/// session) and releases the lock. Both must be done by the deadline; their
/// results are returned.
///
/// With a session lock held across the call into the layer, `inside` holds
/// it while it waits for the user's lock, and `holder` waits for it while
/// holding the user's lock: a deadlock.
fn race_user_lock<A: Send + 'static, B: Send + 'static>(
    session: &Session,
    user: &Arc<UserLock>,
    what: &str,
    inside: impl FnOnce(Session) -> A + Send + 'static,
    holder: impl FnOnce(Session) -> B + Send + 'static,
) -> (A, B) {
    let deadline = Instant::now() + DEADLINE;
    let left = || deadline.saturating_duration_since(Instant::now());
    let (entered_tx, entered) = mpsc::channel();
    *user.entered.lock().unwrap() = Some(entered_tx);

    let (holding_tx, holding) = mpsc::channel();
    let (holder_done_tx, holder_done) = mpsc::channel();
    let lock = user.lock.clone();
    let holder_session = session.clone();
    thread::spawn(move || {
        let _user = lock.lock().unwrap();
        holding_tx.send(()).unwrap();
        // Bounded, so that a failed test leaves no thread waiting here.
        if entered.recv_timeout(DEADLINE).is_err() {
            return;
        }
        let result = holder(holder_session);
        let _ = holder_done_tx.send(result);
    });
    holding.recv_timeout(left()).unwrap();

    let (inside_done_tx, inside_done) = mpsc::channel();
    let inside_session = session.clone();
    thread::spawn(move || {
        let _ = inside_done_tx.send(inside(inside_session));
    });

    let holder_result = holder_done
        .recv_timeout(left())
        .unwrap_or_else(|error| match error {
            RecvTimeoutError::Timeout => panic!(
                "deadlock: {what}: the thread holding the layer's lock did not get through \
                 its session calls within {DEADLINE:?}"
            ),
            RecvTimeoutError::Disconnected => {
                panic!("{what}: the layer was never called for the guarded key, or a call panicked")
            }
        });
    let inside_result = inside_done
        .recv_timeout(left())
        .unwrap_or_else(|error| match error {
            RecvTimeoutError::Timeout => panic!(
                "deadlock: {what}: the call inside the layer did not finish within {DEADLINE:?}"
            ),
            RecvTimeoutError::Disconnected => panic!("{what}: the call inside the layer panicked"),
        });
    (inside_result, holder_result)
}

#[test]
fn a_layer_locking_in_set_while_the_lock_holder_merges_gets_and_queries_does_not_deadlock() {
    let server = server();
    let user_key = "('User', ['u1'])";
    let user_lock = Arc::new(UserLock::new(user_key));
    let layer = Arc::new(LockingSets {
        inner: MemoryCache::new(),
        user: user_lock.clone(),
    });
    let session = Session::builder(server.clone())
        .cache({
            let layer = layer.clone();
            move |_| Some(Box::new(layer) as Box<dyn Cache<String, Entity>>)
        })
        .build();
    let (merged, held) = race_user_lock(
        &session,
        &user_lock,
        "merge writing through a layer that locks in set",
        |session| {
            let incoming = Entity::new(EntityKey::new("User", ["u1"]));
            incoming.set("username", "ada.l");
            session.merge(&incoming)
        },
        |session| -> layercache::Result<_> {
            let incoming = Entity::new(EntityKey::new("Shot", ["s1"]));
            incoming.set("name", "sh010 (edited)");
            let shot = session.merge(&incoming)?;
            let asset = session.get("Asset", ["a1"])?;
            let timelogs = session.query("select comment from Timelog")?;
            Ok((shot, asset, timelogs))
        },
    );
    let merged = merged.unwrap();
    assert_eq!(merged.peek("username"), Value::from("ada.l"));
    let stored = layer
        .inner
        .get(&user_key.to_string())
        .unwrap()
        .expect("written through");
    assert_eq!(stored.peek("username"), Value::from("ada.l"));
    let (shot, asset, timelogs) = held.unwrap();
    assert_eq!(shot.peek("name"), Value::from("sh010 (edited)"));
    assert_eq!(
        asset.expect("on the server").peek("name"),
        Value::from("hero")
    );
    assert_eq!(timelogs.len(), 2);
    assert!(session.get("User", ["u1"]).unwrap().unwrap().same(&merged));
}

#[test]
fn a_byte_layer_locking_in_get_while_the_lock_holder_gets_and_queries_does_not_deadlock() {
    let server = server();
    let bytes = stored_records(&server);
    let user_key = "('User', ['u1'])";
    let user_lock = Arc::new(UserLock::new(user_key));
    let session = Session::builder(server.clone())
        .cache({
            let layer = LockingGets {
                inner: bytes.clone(),
                user: user_lock.clone(),
            };
            move |session| Some(Box::new(Serialised::new(layer, session.codec())))
        })
        .build();
    let (users, held) = race_user_lock(
        &session,
        &user_lock,
        "a query reading a byte layer that locks in get",
        |session| session.query(r#"select username from User where id is "u1""#),
        |session| -> layercache::Result<_> {
            // Decoded from below (decoding resolves references through the
            // session), queried, merged.
            let shot = session.get("Shot", ["s1"])?;
            let timelogs = session.query("select comment from Timelog")?;
            let incoming = Entity::new(EntityKey::new("Asset", ["a2"]));
            incoming.set("name", "prop (edited)");
            let merged = session.merge(&incoming)?;
            Ok((shot, timelogs, merged))
        },
    );
    let users = users.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].peek("username"), Value::from("ada"));
    let (shot, timelogs, merged) = held.unwrap();
    assert_eq!(
        shot.expect("stored below").peek("name"),
        Value::from("sh010")
    );
    assert_eq!(timelogs.len(), 2);
    assert_eq!(merged.peek("name"), Value::from("prop (edited)"));
    assert!(
        session
            .get("User", ["u1"])
            .unwrap()
            .unwrap()
            .same(&users[0])
    );
}

/// A byte layer that pauses before every other store: what it stores was
/// encoded a moment before, so two overlapping writes may well store in the
/// other order.
#[derive(Debug)]
struct PausingStores(FileCache<String>, std::sync::atomic::AtomicUsize);

impl Cache<String, Vec<u8>> for PausingStores {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<Vec<u8>>>> {
        self.0.get_entry(key)
    }

    fn set_entry(&self, key: String, entry: Entry<Vec<u8>>) -> layercache::Result<()> {
        if self
            .1
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .is_multiple_of(2)
        {
            thread::sleep(Duration::from_millis(1));
        }
        self.0.set_entry(key, entry)
    }

    fn remove(&self, key: &String) -> layercache::Result<Option<Vec<u8>>> {
        self.0.remove(key)
    }

    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.0.keys()
    }
}

#[test]
fn two_threads_merging_one_entity_leave_every_layer_with_the_final_state() {
    // Many short bursts, each checked once both threads are done: what a
    // layer is left with depends on how the last writes of a burst overlap.
    const BURSTS: i64 = 40;
    const ROUNDS: i64 = 6;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("merges.lc");
    let server = server();
    let session = Session::builder(server.clone())
        .cache({
            let path = path.clone();
            move |session| {
                let file = FileCache::open(&path).expect("open cache file");
                Some(Box::new(Serialised::new(
                    PausingStores(file, Default::default()),
                    session.codec(),
                )))
            }
        })
        .build();
    let key = EntityKey::new("Shot", ["s1"]);
    let cache_key = session.cache_key(&key).unwrap();
    let held = session.get("Shot", ["s1"]).unwrap().expect("on the server");
    let start = std::sync::Barrier::new(2);
    for burst in 0..BURSTS {
        thread::scope(|scope| {
            for thread in 0..2 {
                let session = session.clone();
                let (start, held) = (&start, &held);
                scope.spawn(move || {
                    start.wait();
                    for round in 0..ROUNDS {
                        let value = burst * ROUNDS + round;
                        let incoming = Entity::new(EntityKey::new("Shot", ["s1"]));
                        // One attribute per thread, and one both write.
                        incoming.set(&format!("count_{thread}"), value);
                        incoming.set("last", format!("{thread}:{value}"));
                        let merged = session.merge(&incoming).unwrap();
                        assert!(merged.same(held), "one instance");
                    }
                });
            }
        });
        let final_value = burst * ROUNDS + ROUNDS - 1;
        assert_eq!(held.peek("count_0"), Value::from(final_value));
        assert_eq!(held.peek("count_1"), Value::from(final_value));
        let last = held.peek("last");
        assert!(
            last == Value::from(format!("0:{final_value}"))
                || last == Value::from(format!("1:{final_value}")),
            "{last:?}"
        );

        // The file, read fresh, holds the final state.
        let file = FileCache::open(&path).unwrap();
        let stored: serde_json::Value =
            serde_json::from_slice(&file.get(&cache_key).unwrap().expect("written through"))
                .unwrap();
        assert_eq!(
            stored["count_0"],
            json!(final_value),
            "burst {burst}: {stored}"
        );
        assert_eq!(
            stored["count_1"],
            json!(final_value),
            "burst {burst}: {stored}"
        );
        assert_eq!(
            stored["last"],
            json!(last.as_str().unwrap()),
            "burst {burst}: {stored}"
        );
        assert_eq!(stored["name"], json!("sh010"), "burst {burst}: {stored}");
        drop(file);
        // The memory layer holds the session's instance.
        let stack = session.cache();
        let memory = stack.layer(0).expect("memory");
        let cached = memory.get(&cache_key).unwrap();
        assert!(
            cached.is_some_and(|cached| cached.same(&held)),
            "burst {burst}"
        );
    }
    // A new session on the file reads the same state.
    let fresh = file_session(&server, &path);
    server.reset_counts();
    let read = fresh.get("Shot", ["s1"]).unwrap().expect("in the file");
    assert_eq!(server.calls(), 0);
    for name in ["count_0", "count_1", "last", "name"] {
        assert_eq!(read.peek(name), held.peek(name), "{name}");
    }
}

#[test]
fn a_handle_held_across_clearing_the_memory_layer_stays_the_sessions_instance() {
    // Memory only: the get after the clear asks the server again and merges
    // into the held instance.
    let (server, session) = memory_session();
    let user = session.get("User", ["u1"]).unwrap().unwrap();
    session.cache().layer(0).unwrap().clear().unwrap();
    let again = session.get("User", ["u1"]).unwrap().unwrap();
    assert_eq!(server.calls(), 2, "the cleared entry is fetched again");
    assert!(again.same(&user), "one instance per identity");
    let key = session.cache_key(user.key()).unwrap();
    let cached = session.cache().get(&key).unwrap().expect("cached again");
    assert!(cached.same(&user), "the memory layer holds it again");

    // With a persistent layer: the record decoded from below fills what the
    // held instance lacks, and the held instance is returned.
    let dir = TempDir::new().unwrap();
    let session = file_session(&server, &dir.path().join("clear.lc"));
    let shot = session.get("Shot", ["s1"]).unwrap().unwrap();
    shot.set("name", "local edit");
    session.cache().layer(0).unwrap().clear().unwrap();
    server.reset_counts();
    let again = session.get("Shot", ["s1"]).unwrap().unwrap();
    assert_eq!(server.calls(), 0, "decoded from the file");
    assert!(again.same(&shot));
    assert_eq!(
        again.peek("name"),
        Value::from("local edit"),
        "never overridden"
    );
    let version = session.get("AssetVersion", ["v0"]).unwrap().unwrap();
    let asset = version.get("asset").unwrap();
    let asset = asset.as_entity().unwrap();
    let parent = asset.get("parent").unwrap();
    assert!(
        parent.as_entity().unwrap().same(&shot),
        "references resolve to it too"
    );
}

/// A Task and a Shot whose parent it is.
fn task_and_shot() -> Arc<FixtureServer> {
    let server = FixtureServer::new();
    server
        .insert_all([
            json!({"__entity_type__": "Task", "id": "t1", "name": "layout", "status": "wip"}),
            json!({"__entity_type__": "Shot", "id": "s1", "name": "sh010",
                   "parent": {"__entity_type__": "Task", "id": "t1"}}),
        ])
        .unwrap();
    server.reset_counts();
    Arc::new(server)
}

/// The session's codec over a file, its calls counted.
type CountedFile = Instrumented<Serialised<FileCache<String>, EntityCodec>>;

/// A session whose stack is memory over a [`CountedFile`] at `path`.
fn counted_file_session(
    server: &Arc<FixtureServer>,
    path: &std::path::Path,
    auto_populate: bool,
) -> (Session, Arc<CountedFile>) {
    let cell: Arc<Mutex<Option<Arc<CountedFile>>>> = Arc::new(Mutex::new(None));
    let session = {
        let cell = cell.clone();
        let path = path.to_owned();
        Session::builder(server.clone())
            .auto_populate(auto_populate)
            .cache(move |session| {
                let file = FileCache::open(&path).expect("open cache file");
                let counted = Arc::new(Instrumented::new(Serialised::new(file, session.codec())));
                *cell.lock().unwrap() = Some(counted.clone());
                Some(Box::new(counted) as Box<dyn Cache<String, Entity>>)
            })
            .build()
    };
    let file = cell.lock().unwrap().take().expect("the maker ran");
    (session, file)
}

/// A placeholder (a reference decoded from the file, primary key only)
/// that a query merges into is filled from the file's record before it is
/// first written through, with auto-populate on as with it off: the file
/// keeps every value, for this session and the next, and no value is
/// fetched again. Only that first write-through reads the file; merges into
/// an instance known in full read nothing below memory.
#[test]
fn a_placeholder_written_through_keeps_the_lower_records_values() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("placeholder.lc");
    let server = task_and_shot();
    {
        let (first, _) = counted_file_session(&server, &path, true);
        first
            .query(r#"select name, status from Task where id is "t1""#)
            .unwrap();
        first
            .query(r#"select name, parent from Shot where id is "s1""#)
            .unwrap();
    }
    server
        .insert(json!({"__entity_type__": "Task", "id": "t1", "name": "layout", "status": "done"}))
        .unwrap();
    server.reset_counts();
    {
        let (second, file) = counted_file_session(&server, &path, true);
        let shot = second.get("Shot", ["s1"]).unwrap().expect("in the file");
        assert_eq!(server.calls(), 0, "read from the file");
        let parent = shot.get("parent").unwrap();
        let parent = parent.as_entity().expect("a reference").clone();
        assert!(parent.attribute_names().is_empty(), "a placeholder");
        let reads = file.calls(Operation::Get);
        second
            .query(r#"select status from Task where id is "t1""#)
            .unwrap();
        assert_eq!(
            file.calls(Operation::Get),
            reads + 1,
            "the placeholder's first write-through reads the file's record once"
        );
        assert_eq!(parent.peek("status"), Value::from("done"), "the server's");
        assert_eq!(parent.peek("name"), Value::from("layout"), "the file's");
        assert_eq!(parent.get("name").unwrap(), Value::from("layout"));
        assert_eq!(server.calls(), 1, "name was not fetched again");

        // The instance is known in full now: merges read nothing below.
        let reads = file.calls(Operation::Get);
        server
            .insert(
                json!({"__entity_type__": "Task", "id": "t1", "name": "layout", "status": "final"}),
            )
            .unwrap();
        second
            .query(r#"select status from Task where id is "t1""#)
            .unwrap();
        let incoming = Entity::new(EntityKey::new("Task", ["t1"]));
        incoming.set("note", "local");
        second.merge(&incoming).unwrap();
        assert_eq!(file.calls(Operation::Get), reads, "no read below memory");
        // An instance loaded from the server in full reads nothing below.
        let reads = file.calls(Operation::Get);
        let shot = second.get("Shot", ["s1"]).unwrap().unwrap();
        shot.set("name", "sh010 edit");
        second.merge(&shot).unwrap();
        assert_eq!(file.calls(Operation::Get), reads, "no read below memory");
    }
    server.reset_counts();
    let (third, _) = counted_file_session(&server, &path, true);
    let task = third.get("Task", ["t1"]).unwrap().expect("in the file");
    assert_eq!(task.peek("name"), Value::from("layout"));
    assert_eq!(task.peek("status"), Value::from("final"));
    assert_eq!(task.peek("note"), Value::from("local"));
    assert_eq!(server.calls(), 0, "{:?}", server.queries());
}

/// A lower layer whose armed `set` merges a status into Task t1 (a merge
/// nested in the write-through of t1, which only asks the writer to write
/// again, and returns `Ok`), then panics, storing nothing.
struct MergesThenPanics {
    inner: Box<dyn Cache<String, Entity>>,
    session: Mutex<Option<Session>>,
    armed: std::sync::atomic::AtomicBool,
    /// Stores passed on to `inner`.
    sets: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for MergesThenPanics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MergesThenPanics")
    }
}

impl Cache<String, Entity> for MergesThenPanics {
    fn get_entry(&self, key: &String) -> layercache::Result<Option<Entry<Entity>>> {
        self.inner.get_entry(key)
    }

    fn set_entry(&self, key: String, entry: Entry<Entity>) -> layercache::Result<()> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let session = self.session.lock().unwrap().clone().expect("set");
            let incoming = Entity::new(EntityKey::new("Task", ["t1"]));
            incoming.set("status", "b");
            session
                .merge(&incoming)
                .expect("the nested merge returns Ok");
            panic!("this layer panics on purpose");
        }
        self.sets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.set_entry(key, entry)
    }

    fn remove(&self, key: &String) -> layercache::Result<Option<Entity>> {
        self.inner.remove(key)
    }

    fn keys(&self) -> layercache::Result<Vec<String>> {
        self.inner.keys()
    }
}

/// Task t1's status as a fresh session reads it from the file at `path`.
fn task_status_in_file(server: &Arc<FixtureServer>, path: &std::path::Path) -> Value {
    let (fresh, _) = counted_file_session(server, path, false);
    let task = fresh.get("Task", ["t1"]).unwrap().expect("in the file");
    task.peek("status")
}

/// A merge that left its write to a writer that then panicked (its `Ok`
/// said the value would be written) is pending: the file keeps the old
/// value until the next call that touches the identity, which writes it.
/// Each kind of touch: a merge changing nothing, a get, a query returning
/// the entity and changing nothing, reading an attribute not loaded.
#[test]
fn a_merge_left_to_a_writer_that_panicked_is_written_by_the_next_touch() {
    type Touch = fn(&Session, &Entity);
    let touches: [(&str, Touch); 4] = [
        ("a merge changing nothing", |session, _| {
            let incoming = Entity::new(EntityKey::new("Task", ["t1"]));
            incoming.set("status", "b");
            session.merge(&incoming).unwrap();
        }),
        ("a get", |session, _| {
            session.get("Task", ["t1"]).unwrap().unwrap();
        }),
        ("a query changing nothing", |session, _| {
            session
                .query(r#"select name from Task where id is "t1""#)
                .unwrap();
        }),
        ("reading an attribute not loaded", |_, task| {
            assert_eq!(task.get("nothing").unwrap(), Value::NotSet);
        }),
    ];
    for (what, touch) in touches {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("pending.lc");
        let server = task_and_shot();
        let cell: Arc<Mutex<Option<Arc<MergesThenPanics>>>> = Arc::new(Mutex::new(None));
        let session = {
            let cell = cell.clone();
            let path = path.clone();
            Session::builder(server.clone())
                .auto_populate(false)
                .cache(move |session| {
                    let file = FileCache::open(&path).expect("open cache file");
                    let layer = Arc::new(MergesThenPanics {
                        inner: Box::new(Serialised::new(file, session.codec())),
                        session: Mutex::new(None),
                        armed: Default::default(),
                        sets: Default::default(),
                    });
                    *cell.lock().unwrap() = Some(layer.clone());
                    Some(Box::new(layer) as Box<dyn Cache<String, Entity>>)
                })
                .build()
        };
        let layer = cell.lock().unwrap().take().unwrap();
        *layer.session.lock().unwrap() = Some(session.clone());
        let task = session.get("Task", ["t1"]).unwrap().unwrap();
        assert_eq!(task_status_in_file(&server, &path), Value::from("wip"));

        layer.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let a = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let incoming = Entity::new(EntityKey::new("Task", ["t1"]));
            incoming.set("status", "a");
            session.merge(&incoming)
        }));
        assert!(a.is_err(), "{what}: the writer's caller sees the panic");
        assert_eq!(task.peek("status"), Value::from("b"), "{what}");
        assert_eq!(
            task_status_in_file(&server, &path),
            Value::from("wip"),
            "{what}: pending until the identity is touched"
        );
        touch(&session, &task);
        assert_eq!(
            task_status_in_file(&server, &path),
            Value::from("b"),
            "{what}: the touch writes the pending merge"
        );
        // Written once: a further touch changing nothing writes nothing.
        let sets = layer.sets.load(std::sync::atomic::Ordering::SeqCst);
        touch(&session, &task);
        assert_eq!(
            layer.sets.load(std::sync::atomic::Ordering::SeqCst),
            sets,
            "{what}: no longer pending"
        );
        *layer.session.lock().unwrap() = None;
    }
}
