//! The ftrack fixture server: records, the query language subset, call
//! counting, errors (never panics) and thread safety.
#![cfg(feature = "ftrack")]

use std::sync::Arc;

use layercache::Error;
use layercache::ftrack::{FixtureServer, Remote};
use proptest::prelude::*;
use serde_json::{Value as Json, json};

/// A small production: a project, a shot, assets and versions, users with
/// timelogs, and composite-keyed metadata.
fn server() -> FixtureServer {
    let server = FixtureServer::new().with_primary_key("Metadata", &["parent_id", "key"]);
    server
        .insert_all([
            json!({"__entity_type__": "Project", "id": "p1", "name": "proj"}),
            json!({"__entity_type__": "Shot", "id": "s1", "name": "sh010",
                   "parent": {"__entity_type__": "Project", "id": "p1"},
                   "metadata": [{"__entity_type__": "Metadata", "parent_id": "s1", "key": "fps"}]}),
            json!({"__entity_type__": "Asset", "id": "a1", "name": "x",
                   "parent": {"__entity_type__": "Shot", "id": "s1"}}),
            json!({"__entity_type__": "Asset", "id": "a2", "name": "y",
                   "parent": {"__entity_type__": "Project", "id": "p1"}}),
            json!({"__entity_type__": "AssetVersion", "id": "v1", "version": 1,
                   "asset": {"__entity_type__": "Asset", "id": "a1"}}),
            json!({"__entity_type__": "AssetVersion", "id": "v2", "version": 2,
                   "asset": {"__entity_type__": "Asset", "id": "a1"}}),
            json!({"__entity_type__": "AssetVersion", "id": "v3", "version": 1,
                   "asset": {"__entity_type__": "Asset", "id": "a2"}}),
            json!({"__entity_type__": "AssetVersion", "id": "v4", "version": 3,
                   "asset": {"__entity_type__": "Asset", "id": "gone"}}),
            json!({"__entity_type__": "AssetVersion", "id": "v5", "version": 4, "asset": null}),
            json!({"__entity_type__": "User", "id": "a", "name": "Ada", "active": true,
                   "timelogs": [{"__entity_type__": "Timelog", "id": "t1"},
                                {"__entity_type__": "Timelog", "id": "t2"}]}),
            json!({"__entity_type__": "User", "id": "b", "name": "Bob", "active": false,
                   "timelogs": []}),
            json!({"__entity_type__": "User", "id": "c", "name": "Cy", "active": true,
                   "timelogs": [{"__entity_type__": "Timelog", "id": "t3"}]}),
            json!({"__entity_type__": "Timelog", "id": "t1", "comment": "Some comment",
                   "duration": 3600,
                   "start": {"__type__": "datetime", "value": "2026-11-24T10:00:00"},
                   "user": {"__entity_type__": "User", "id": "a"}}),
            json!({"__entity_type__": "Timelog", "id": "t2", "comment": null, "duration": 1.5,
                   "start": {"__type__": "datetime", "value": "2026-11-25T09:30:00"},
                   "user": {"__entity_type__": "User", "id": "a"}}),
            json!({"__entity_type__": "Timelog", "id": "t3", "comment": "say \"hi\"",
                   "duration": 60, "user": {"__entity_type__": "User", "id": "c"}}),
            json!({"__entity_type__": "Metadata", "parent_id": "s1", "key": "fps", "value": "24"}),
            json!({"__entity_type__": "Metadata", "parent_id": "s1", "key": "res", "value": "4k"}),
        ])
        .expect("valid records");
    server
}

/// Runs one query and returns its data, checking the result's envelope.
fn query(server: &FixtureServer, expression: &str) -> Json {
    let operation = json!({"action": "query", "expression": expression});
    let mut results = server
        .call(&[operation])
        .unwrap_or_else(|e| panic!("{expression}: {e}"));
    assert_eq!(results.len(), 1);
    let result = results.remove(0);
    assert_eq!(result["action"], "query");
    assert_eq!(result["metadata"], json!({"next": {"offset": null}}));
    assert_eq!(
        result.as_object().map(|o| o.len()),
        Some(3),
        "only action, data and metadata: {result}"
    );
    assert!(result["data"].is_array(), "{result}");
    result["data"].clone()
}

/// The ids of a query's results.
fn ids(server: &FixtureServer, expression: &str) -> Vec<String> {
    query(server, expression)
        .as_array()
        .expect("data")
        .iter()
        .map(|record| record["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// The reason of the `Error::Query` a malformed expression gives, checking
/// it names the whole expression.
fn query_error(server: &FixtureServer, expression: &str) -> String {
    match server.call(&[json!({"action": "query", "expression": expression})]) {
        Err(Error::Query {
            expression: named,
            reason,
        }) => {
            assert_eq!(named, expression);
            reason
        }
        other => panic!("{expression:?}: expected a query error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The seed documentation's examples.

#[test]
fn select_comment_from_timelog_by_id() {
    let server = server();
    assert_eq!(
        query(&server, r#"select comment from Timelog where id is "t1""#),
        json!([{"__entity_type__": "Timelog", "id": "t1", "comment": "Some comment"}])
    );
}

#[test]
fn select_asset_parent_where_asset_name_with_limit() {
    let server = server();
    assert_eq!(
        query(
            &server,
            r#"select asset.parent from AssetVersion where asset.name is "x" limit 10"#
        ),
        json!([
            {"__entity_type__": "AssetVersion", "id": "v1",
             "asset": {"__entity_type__": "Asset", "id": "a1",
                       "parent": {"__entity_type__": "Shot", "id": "s1"}}},
            {"__entity_type__": "AssetVersion", "id": "v2",
             "asset": {"__entity_type__": "Asset", "id": "a1",
                       "parent": {"__entity_type__": "Shot", "id": "s1"}}},
        ])
    );
    assert_eq!(
        ids(
            &server,
            r#"select asset.parent from AssetVersion where asset.name is "x" limit 1"#
        ),
        ["v1"]
    );
}

#[test]
fn select_name_and_timelogs_of_users_in_a_list() {
    let server = server();
    assert_eq!(
        query(
            &server,
            r#"select name, timelogs from User where id in ("a", "b")"#
        ),
        json!([
            {"__entity_type__": "User", "id": "a", "name": "Ada",
             "timelogs": [{"__entity_type__": "Timelog", "id": "t1"},
                          {"__entity_type__": "Timelog", "id": "t2"}]},
            {"__entity_type__": "User", "id": "b", "name": "Bob", "timelogs": []},
        ])
    );
}

// ---------------------------------------------------------------------------
// Projections.

#[test]
fn from_without_select_returns_every_attribute() {
    let server = server();
    assert_eq!(
        query(&server, r#"from Timelog where id is "t1""#),
        json!([{"__entity_type__": "Timelog", "id": "t1", "comment": "Some comment",
                "duration": 3600,
                "start": {"__type__": "datetime", "value": "2026-11-24T10:00:00"},
                "user": {"__entity_type__": "User", "id": "a"}}])
    );
    assert_eq!(
        ids(&server, "from AssetVersion"),
        ["v1", "v2", "v3", "v4", "v5"]
    );
    assert_eq!(query(&server, "from Nothing"), json!([]));
}

#[test]
fn references_are_returned_as_type_and_primary_key() {
    let server = FixtureServer::new();
    server
        .insert_all([
            json!({"__entity_type__": "User", "id": "u", "name": "Ada"}),
            // A reference stored with extra attributes is still returned as
            // a bare reference.
            json!({"__entity_type__": "Note", "id": "n", "author":
                   {"__entity_type__": "User", "id": "u", "name": "stale"},
                   "readers": [{"__entity_type__": "User", "id": "u", "name": "stale"}]}),
        ])
        .expect("valid");
    let reference = json!({"__entity_type__": "User", "id": "u"});
    assert_eq!(
        query(&server, "select author, readers from Note"),
        json!([{"__entity_type__": "Note", "id": "n", "author": reference,
                "readers": [reference]}])
    );
    assert_eq!(
        query(&server, "from Note"),
        json!([{"__entity_type__": "Note", "id": "n", "author": reference,
                "readers": [reference]}])
    );
    // A dotted projection reads the stored record, not the stale copy.
    assert_eq!(
        query(&server, "select author.name from Note")[0]["author"],
        json!({"__entity_type__": "User", "id": "u", "name": "Ada"})
    );
}

#[test]
fn dotted_projections_resolve_references_and_merge() {
    let server = server();
    assert_eq!(
        query(
            &server,
            r#"select asset.name, asset.parent.name, asset.parent.parent.name, version from AssetVersion where id is "v1""#
        ),
        json!([{"__entity_type__": "AssetVersion", "id": "v1", "version": 1,
                "asset": {"__entity_type__": "Asset", "id": "a1", "name": "x",
                          "parent": {"__entity_type__": "Shot", "id": "s1", "name": "sh010",
                                     "parent": {"__entity_type__": "Project", "id": "p1",
                                                "name": "proj"}}}}])
    );
    // The same path twice is one projection.
    assert_eq!(
        query(
            &server,
            r#"select asset.name, asset.name, asset from AssetVersion where id is "v3""#
        ),
        json!([{"__entity_type__": "AssetVersion", "id": "v3",
                "asset": {"__entity_type__": "Asset", "id": "a2", "name": "y"}}])
    );
}

#[test]
fn dangling_null_and_scalar_paths() {
    let server = server();
    // A dangling reference gives just the reference; a null stays null.
    assert_eq!(
        query(
            &server,
            r#"select asset.name, asset.parent.name from AssetVersion where id in ("v4", "v5")"#
        ),
        json!([
            {"__entity_type__": "AssetVersion", "id": "v4",
             "asset": {"__entity_type__": "Asset", "id": "gone"}},
            {"__entity_type__": "AssetVersion", "id": "v5", "asset": null},
        ])
    );
    // A path running past a scalar stops at it.
    assert_eq!(
        query(&server, r#"select name.first from Project"#),
        json!([{"__entity_type__": "Project", "id": "p1", "name": "proj"}])
    );
}

#[test]
fn missing_attributes_are_omitted() {
    let server = server();
    assert_eq!(
        query(
            &server,
            r#"select comment, nonsense, user.nonsense from Timelog where id is "t2""#
        ),
        json!([{"__entity_type__": "Timelog", "id": "t2", "comment": null,
                "user": {"__entity_type__": "User", "id": "a"}}])
    );
    // Projecting the primary key adds nothing.
    assert_eq!(
        query(&server, "select id from Project"),
        json!([{"__entity_type__": "Project", "id": "p1"}])
    );
}

#[test]
fn projections_through_collections() {
    let server = server();
    assert_eq!(
        query(
            &server,
            r#"select timelogs.comment, timelogs.start from User where id in ("a", "b")"#
        ),
        json!([
            {"__entity_type__": "User", "id": "a", "timelogs": [
                {"__entity_type__": "Timelog", "id": "t1", "comment": "Some comment",
                 "start": {"__type__": "datetime", "value": "2026-11-24T10:00:00"}},
                {"__entity_type__": "Timelog", "id": "t2", "comment": null,
                 "start": {"__type__": "datetime", "value": "2026-11-25T09:30:00"}},
            ]},
            {"__entity_type__": "User", "id": "b", "timelogs": []},
        ])
    );
    // Back through a reference from each element.
    assert_eq!(
        query(
            &server,
            r#"select timelogs.user.name from User where id is "c""#
        ),
        json!([{"__entity_type__": "User", "id": "c", "timelogs": [
            {"__entity_type__": "Timelog", "id": "t3",
             "user": {"__entity_type__": "User", "id": "c", "name": "Cy"}}]}])
    );
}

#[test]
fn composite_primary_keys() {
    let server = server();
    assert_eq!(
        query(&server, r#"select value from Metadata where key is "res""#),
        json!([{"__entity_type__": "Metadata", "parent_id": "s1", "key": "res", "value": "4k"}])
    );
    assert_eq!(
        query(&server, "select metadata.value from Shot"),
        json!([{"__entity_type__": "Shot", "id": "s1", "metadata": [
            {"__entity_type__": "Metadata", "parent_id": "s1", "key": "fps", "value": "24"}]}])
    );
    assert_eq!(
        query(
            &server,
            r#"select name from Shot where metadata.value is "24""#
        )
        .as_array()
        .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        server.get("Metadata", &[json!("s1"), json!("fps")]),
        Some(
            json!({"__entity_type__": "Metadata", "parent_id": "s1", "key": "fps", "value": "24"})
        )
    );
    assert_eq!(server.get("Metadata", &[json!("s1")]), None);
}

// ---------------------------------------------------------------------------
// Conditions.

#[test]
fn is_and_is_not() {
    let server = server();
    assert_eq!(ids(&server, r#"from User where name is "Bob""#), ["b"]);
    assert_eq!(ids(&server, r#"from User where name = "Bob""#), ["b"]);
    assert_eq!(
        ids(&server, r#"from User where name is_not "Bob""#),
        ["a", "c"]
    );
    assert_eq!(ids(&server, r#"from User where name != "Bob""#), ["a", "c"]);
    assert_eq!(
        ids(&server, r#"from User where name is "Nobody""#),
        Vec::<String>::new()
    );
    assert_eq!(ids(&server, "from User where active is true"), ["a", "c"]);
    assert_eq!(ids(&server, "from User where active is FALSE"), ["b"]);
}

#[test]
fn in_and_not_in() {
    let server = server();
    assert_eq!(
        ids(&server, r#"from User where id in ("c", "a", "zz")"#),
        ["a", "c"]
    );
    assert_eq!(
        ids(&server, r#"from User where id not_in ("c", "a")"#),
        ["b"]
    );
    assert_eq!(ids(&server, r#"from User where id in ("b")"#), ["b"]);
    assert_eq!(
        ids(&server, "from AssetVersion where version in (2, 3)"),
        ["v2", "v4"]
    );
}

#[test]
fn null_and_none() {
    let server = server();
    assert_eq!(ids(&server, "from Timelog where comment is null"), ["t2"]);
    assert_eq!(ids(&server, "from Timelog where comment is None"), ["t2"]);
    assert_eq!(
        ids(&server, "from Timelog where comment is_not NULL"),
        ["t1", "t3"]
    );
    // A missing attribute reads as null.
    assert_eq!(ids(&server, "from Timelog where start is null"), ["t3"]);
    assert_eq!(
        ids(&server, "from AssetVersion where asset is null"),
        ["v5"]
    );
    // So does a path through a null or a dangling reference.
    assert_eq!(
        ids(&server, "from AssetVersion where asset.name is null"),
        ["v4", "v5"]
    );
}

#[test]
fn and_binds_tighter_than_or_and_parentheses_group() {
    let server = server();
    // a or (b and c)
    assert_eq!(
        ids(
            &server,
            r#"from User where id is "a" or id is "b" and active is true"#
        ),
        ["a"]
    );
    // (a or b) and c
    assert_eq!(
        ids(
            &server,
            r#"from User where (id is "a" or id is "b") and active is false"#
        ),
        ["b"]
    );
    assert_eq!(
        ids(
            &server,
            r#"from User where active is false and id is "b" or id is "c""#
        ),
        ["b", "c"]
    );
    assert_eq!(
        ids(
            &server,
            r#"from User where ((id is "a") or (((id is "c"))))"#
        ),
        ["a", "c"]
    );
    assert_eq!(ids(&server, r#"from User where not id is "a""#), ["b", "c"]);
    assert_eq!(
        ids(&server, r#"from User where not (id is "a" or id is "b")"#),
        ["c"]
    );
    assert_eq!(ids(&server, r#"from User where not not id is "a""#), ["a"]);
}

#[test]
fn conditions_through_references_and_collections() {
    let server = server();
    assert_eq!(
        ids(&server, r#"from AssetVersion where asset.name is "x""#),
        ["v1", "v2"]
    );
    assert_eq!(
        ids(
            &server,
            r#"from AssetVersion where asset.parent.name is "proj""#
        ),
        ["v3"]
    );
    assert_eq!(
        ids(
            &server,
            r#"from AssetVersion where asset.parent.parent.name is "proj""#
        ),
        ["v1", "v2"]
    );
    // Through a collection: any element.
    assert_eq!(
        ids(
            &server,
            r#"from User where timelogs.comment is "Some comment""#
        ),
        ["a"]
    );
    assert_eq!(
        ids(&server, "from User where timelogs.comment is null"),
        ["a"]
    );
    // is_not: no element; an empty collection has none.
    assert_eq!(
        ids(
            &server,
            r#"from User where timelogs.comment is_not "Some comment""#
        ),
        ["b", "c"]
    );
    assert_eq!(
        ids(&server, r#"from User where timelogs.id in ("t3", "t9")"#),
        ["c"]
    );
    // A reference compared with a value is an object, not its id.
    assert_eq!(
        ids(&server, r#"from Timelog where user is "a""#),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&server, r#"from Timelog where user.id is "a""#),
        ["t1", "t2"]
    );
}

#[test]
fn number_string_and_datetime_comparison() {
    let server = server();
    // Numbers compare by value: 1 equals 1.0.
    assert_eq!(
        ids(&server, "from AssetVersion where version is 1.0"),
        ["v1", "v3"]
    );
    assert_eq!(
        ids(&server, "from AssetVersion where version is 1"),
        ["v1", "v3"]
    );
    assert_eq!(
        ids(&server, "from AssetVersion where version is 1e0"),
        ["v1", "v3"]
    );
    assert_eq!(ids(&server, "from Timelog where duration is 1.5"), ["t2"]);
    assert_eq!(ids(&server, "from Timelog where duration is 3.6e3"), ["t1"]);
    // A string literal matches a number by its text, and the reverse.
    assert_eq!(
        ids(&server, r#"from AssetVersion where version is "2""#),
        ["v2"]
    );
    assert_eq!(
        query(&server, "select key from Metadata where value is 24"),
        json!([{"__entity_type__": "Metadata", "parent_id": "s1", "key": "fps"}])
    );
    assert_eq!(
        ids(&server, r#"from AssetVersion where version is "two""#),
        Vec::<String>::new()
    );
    // A string literal matches a datetime by its ISO 8601 text.
    assert_eq!(
        ids(
            &server,
            r#"from Timelog where start is "2026-11-25T09:30:00""#
        ),
        ["t2"]
    );
    // Negative numbers.
    server
        .insert(json!({"__entity_type__": "Account", "id": 7, "balance": -12}))
        .expect("valid");
    assert_eq!(
        ids_of(&query(&server, "from Account where balance is -12")),
        [json!(7)]
    );
    assert_eq!(
        ids_of(&query(&server, r#"from Account where id is "7""#)),
        [json!(7)]
    );
    assert_eq!(
        ids_of(&query(&server, "from Account where id in (7)")),
        [json!(7)]
    );
}

fn ids_of(data: &Json) -> Vec<Json> {
    data.as_array()
        .expect("data")
        .iter()
        .map(|record| record["id"].clone())
        .collect()
}

#[test]
fn strings_quotes_and_escapes() {
    let server = server();
    assert_eq!(
        ids(&server, r#"from Timelog where comment is "say \"hi\"""#),
        ["t3"]
    );
    assert_eq!(
        ids(&server, r#"from Timelog where comment is 'say "hi"'"#),
        ["t3"]
    );
    assert_eq!(ids(&server, r"from User where name is 'Ada'"), ["a"]);
    server
        .insert_all([
            json!({"__entity_type__": "Note", "id": "n1", "text": "it's a \\ back\nslash\t/"}),
            json!({"__entity_type__": "Note", "id": "n2", "text": "naïve café ✓"}),
            json!({"__entity_type__": "Note", "id": "n3", "text": ""}),
        ])
        .expect("valid");
    assert_eq!(
        ids(
            &server,
            r#"from Note where text is 'it\'s a \\ back\nslash\t\/'"#
        ),
        ["n1"]
    );
    assert_eq!(
        ids(&server, r#"from Note where text is "naïve café ✓""#),
        ["n2"]
    );
    assert_eq!(ids(&server, r#"from Note where text is """#), ["n3"]);
    assert_eq!(ids(&server, "from Note where text is ''"), ["n3"]);
}

#[test]
fn keywords_are_case_insensitive_names_are_not() {
    let server = server();
    assert_eq!(
        query(
            &server,
            r#"SeLeCt comment FROM Timelog WHERE id IS "t1" AnD id Is_Not "x" LIMIT 5 OFFSET 0"#
        ),
        json!([{"__entity_type__": "Timelog", "id": "t1", "comment": "Some comment"}])
    );
    assert_eq!(
        ids(
            &server,
            r#"from User where id IN ("a") OR id NOT_IN ("a", "b")"#
        ),
        ["a", "c"]
    );
    assert_eq!(query(&server, "from timelog"), json!([]));
    assert_eq!(
        query(&server, r#"select Comment from Timelog where id is "t1""#),
        json!([{"__entity_type__": "Timelog", "id": "t1"}])
    );
    // Keywords are fine as attribute names after a dot.
    server
        .insert(json!({"__entity_type__": "Box", "id": "b", "inner": {"__entity_type__": "Box", "id": "c"}}))
        .expect("valid");
    server
        .insert(json!({"__entity_type__": "Box", "id": "c", "from": "here"}))
        .expect("valid");
    assert_eq!(
        ids(&server, r#"from Box where inner.from is "here""#),
        ["b"]
    );
}

#[test]
fn whitespace_is_free() {
    let server = server();
    assert_eq!(
        query(
            &server,
            "  select\tcomment ,duration\nfrom   Timelog where id in(\"t1\",\"t2\")and(duration=3600)limit 1  "
        ),
        json!([{"__entity_type__": "Timelog", "id": "t1", "comment": "Some comment", "duration": 3600}])
    );
}

// ---------------------------------------------------------------------------
// Limit, offset, order.

#[test]
fn limit_and_offset() {
    let server = server();
    let all = ["v1", "v2", "v3", "v4", "v5"];
    assert_eq!(ids(&server, "from AssetVersion limit 100"), all);
    assert_eq!(ids(&server, "from AssetVersion limit 2"), ["v1", "v2"]);
    assert_eq!(
        ids(&server, "from AssetVersion limit 0"),
        Vec::<String>::new()
    );
    assert_eq!(ids(&server, "from AssetVersion offset 3"), ["v4", "v5"]);
    assert_eq!(
        ids(&server, "from AssetVersion offset 1 limit 2"),
        ["v2", "v3"]
    );
    assert_eq!(
        ids(&server, "from AssetVersion limit 2 offset 1"),
        ["v2", "v3"]
    );
    assert_eq!(
        ids(&server, "from AssetVersion offset 9"),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&server, "from AssetVersion where version is 1 offset 1"),
        ["v3"]
    );
    assert_eq!(
        ids(&server, &format!("from AssetVersion limit {}", u64::MAX)),
        all
    );
}

#[test]
fn results_follow_insertion_order_and_insert_replaces_in_place() {
    let server = FixtureServer::new();
    for id in ["z", "a", "m"] {
        server
            .insert(json!({"__entity_type__": "Task", "id": id, "name": id}))
            .expect("valid");
    }
    assert_eq!(ids(&server, "from Task"), ["z", "a", "m"]);
    assert_eq!(server.len(), 3);
    server
        .insert(json!({"__entity_type__": "Task", "id": "a", "status": "done"}))
        .expect("valid");
    assert_eq!(server.len(), 3);
    assert_eq!(
        query(&server, "from Task"),
        json!([
            {"__entity_type__": "Task", "id": "z", "name": "z"},
            {"__entity_type__": "Task", "id": "a", "status": "done"},
            {"__entity_type__": "Task", "id": "m", "name": "m"},
        ])
    );
    assert_eq!(
        server.get("Task", &[json!("a")]),
        Some(json!({"__entity_type__": "Task", "id": "a", "status": "done"}))
    );
    // Same id, other type: another record.
    server
        .insert(json!({"__entity_type__": "Shot", "id": "a"}))
        .expect("valid");
    assert_eq!(server.len(), 4);
}

// ---------------------------------------------------------------------------
// Records.

#[test]
fn insert_validates_records() {
    let server = FixtureServer::new().with_primary_key("Metadata", &["parent_id", "key"]);
    let invalid = [
        json!("Task"),
        json!(null),
        json!([{"__entity_type__": "Task", "id": "t"}]),
        json!({"id": "t"}),
        json!({"__entity_type__": 5, "id": "t"}),
        json!({"__entity_type__": "Task"}),
        json!({"__entity_type__": "Task", "id": null}),
        json!({"__entity_type__": "Task", "id": true}),
        json!({"__entity_type__": "Task", "id": {"x": 1}}),
        json!({"__entity_type__": "Metadata", "parent_id": "s1"}),
        json!({"__entity_type__": "Metadata", "key": "fps", "id": "x"}),
    ];
    for record in invalid {
        match server.insert(record.clone()) {
            Err(Error::Key { reason }) => assert!(!reason.is_empty()),
            other => panic!("{record}: expected a key error, got {other:?}"),
        }
    }
    assert!(server.is_empty());
    assert_eq!(server.len(), 0);
    // insert_all stores nothing when any record is invalid.
    let result = server.insert_all([
        json!({"__entity_type__": "Task", "id": "ok"}),
        json!({"__entity_type__": "Task"}),
    ]);
    assert!(matches!(result, Err(Error::Key { .. })), "{result:?}");
    assert_eq!(server.len(), 0);
    server
        .insert_all([
            json!({"__entity_type__": "Task", "id": "ok"}),
            json!({"__entity_type__": "Task", "id": 2}),
            json!({"__entity_type__": "Metadata", "parent_id": "s1", "key": "fps"}),
        ])
        .expect("valid");
    assert_eq!(server.len(), 3);
    assert!(!server.is_empty());
    // Inserting counts no call.
    assert_eq!(server.calls(), 0);
}

#[test]
fn primary_keys_from_schemas() {
    let server = FixtureServer::from_schemas(
        r#"[
            {"id": "Task", "primary_key": ["id"], "properties": {"id": {"type": "string"}}},
            {"id": "Metadata", "primary_key": ["parent_id", "key"], "properties": {}},
            {"id": "Status"}
        ]"#,
    )
    .expect("a schema list");
    assert_eq!(server.primary_key("Metadata"), ["parent_id", "key"]);
    assert_eq!(server.primary_key("Task"), ["id"]);
    assert_eq!(server.primary_key("Status"), ["id"]);
    assert_eq!(server.primary_key("Unknown"), ["id"]);
    server
        .insert(json!({"__entity_type__": "Metadata", "parent_id": "p", "key": "k", "value": 1}))
        .expect("valid");
    assert_eq!(
        query(&server, "select value from Metadata"),
        json!([{"__entity_type__": "Metadata", "parent_id": "p", "key": "k", "value": 1}])
    );

    for bad in [
        "",
        "{",
        r#"{"id": "Task"}"#,
        r#"[{"primary_key": ["id"]}]"#,
        r#"[{"id": "Task", "primary_key": "id"}]"#,
        r#"[{"id": "Task", "primary_key": [1]}]"#,
        r#"[{"id": "Task", "primary_key": []}]"#,
    ] {
        let result = FixtureServer::from_schemas(bad);
        assert!(
            matches!(result, Err(Error::Decode { .. })),
            "{bad}: {result:?}"
        );
    }
}

#[test]
fn with_primary_key_reindexes_stored_records() {
    let server = FixtureServer::new();
    server
        .insert_all([
            json!({"__entity_type__": "Pair", "id": "1", "a": "x", "b": "y", "v": 1}),
            json!({"__entity_type__": "Holder", "id": "h", "pair": {"__entity_type__": "Pair", "a": "x", "b": "y"}}),
        ])
        .expect("valid");
    let server = server.with_primary_key("Pair", &["a", "b"]);
    assert_eq!(
        query(&server, "select pair.v from Holder"),
        json!([{"__entity_type__": "Holder", "id": "h",
                "pair": {"__entity_type__": "Pair", "a": "x", "b": "y", "v": 1}}])
    );
}

// ---------------------------------------------------------------------------
// Operations and counting.

#[test]
fn batches_answer_in_order_and_are_counted() {
    let server = server();
    assert_eq!((server.calls(), server.operations()), (0, 0));
    assert!(server.queries().is_empty());
    let results = server
        .call(&[
            json!({"action": "query", "expression": r#"select name from User where id is "a""#}),
            json!({"action": "query", "expression": "select name from Project"}),
        ])
        .expect("answers");
    assert_eq!(
        results,
        [
            json!({"action": "query",
                   "data": [{"__entity_type__": "User", "id": "a", "name": "Ada"}],
                   "metadata": {"next": {"offset": null}}}),
            json!({"action": "query",
                   "data": [{"__entity_type__": "Project", "id": "p1", "name": "proj"}],
                   "metadata": {"next": {"offset": null}}}),
        ]
    );
    assert_eq!((server.calls(), server.operations()), (1, 2));
    query(&server, "from Shot");
    assert_eq!((server.calls(), server.operations()), (2, 3));
    assert_eq!(
        server.queries(),
        [
            r#"select name from User where id is "a""#,
            "select name from Project",
            "from Shot"
        ]
    );
    // An empty batch is a call with no operations.
    assert_eq!(server.call(&[]).expect("nothing"), Vec::<Json>::new());
    assert_eq!((server.calls(), server.operations()), (3, 3));

    server.reset_counts();
    assert_eq!((server.calls(), server.operations()), (0, 0));
    assert!(server.queries().is_empty());
    query(&server, "from Shot");
    assert_eq!((server.calls(), server.operations()), (1, 1));
    assert_eq!(server.queries(), ["from Shot"]);
}

#[test]
fn failed_calls_are_counted_too() {
    let server = server();
    query_error(&server, "select");
    assert_eq!((server.calls(), server.operations()), (1, 1));
    assert_eq!(server.queries(), ["select"]);
    // One bad operation fails the batch.
    let result = server.call(&[
        json!({"action": "query", "expression": "from User"}),
        json!({"action": "query", "expression": "from User where"}),
    ]);
    match result {
        Err(Error::Query { expression, .. }) => assert_eq!(expression, "from User where"),
        other => panic!("{other:?}"),
    }
    assert_eq!((server.calls(), server.operations()), (2, 3));
    assert_eq!(server.queries(), ["select", "from User", "from User where"]);
}

#[test]
fn unknown_actions_and_malformed_operations_are_backend_errors() {
    let server = server();
    let cases = [
        (
            json!({"action": "create", "entity_type": "Task", "entity_data": {}}),
            "unsupported action \"create\"",
        ),
        (json!({"action": "query"}), "needs a string \"expression\""),
        (
            json!({"action": "query", "expression": 5}),
            "needs a string \"expression\"",
        ),
        (
            json!({"expression": "from Task"}),
            "not an object with a string \"action\"",
        ),
        (
            json!({"action": null}),
            "not an object with a string \"action\"",
        ),
        (json!("query"), "not an object with a string \"action\""),
        (json!(null), "not an object with a string \"action\""),
    ];
    for (operation, message) in cases {
        match server.call(std::slice::from_ref(&operation)) {
            Err(error @ Error::Backend { .. }) => {
                let text = error.to_string();
                assert!(text.contains(message), "{operation}: {text}");
                assert!(text.contains("ftrack fixture server"), "{text}");
            }
            other => panic!("{operation}: expected a backend error, got {other:?}"),
        }
    }
    assert_eq!((server.calls(), server.operations()), (7, 7));
    assert!(server.queries().is_empty());
}

#[test]
fn works_behind_arc_and_dyn() {
    let server = Arc::new(server());
    let remote: Box<dyn Remote> = Box::new(Arc::clone(&server));
    let results = remote
        .call(&[json!({"action": "query", "expression": "select name from Project"})])
        .expect("answers");
    assert_eq!(
        results[0]["data"],
        json!([{"__entity_type__": "Project", "id": "p1", "name": "proj"}])
    );
    assert_eq!(server.calls(), 1);
    assert_eq!(format!("{server:?}"), "FixtureServer(17 records, 1 calls)");
    assert_eq!(format!("{remote:?}"), "FixtureServer(17 records, 1 calls)");
    assert_eq!(
        format!("{:?}", FixtureServer::default()),
        "FixtureServer(0 records, 0 calls)"
    );
}

// ---------------------------------------------------------------------------
// Malformed expressions.

#[test]
fn malformed_expressions_name_what_was_expected_and_where() {
    let server = server();
    let cases = [
        (
            "",
            "expected \"select\" or \"from\" at character 0, found the end of the expression",
        ),
        (
            "   ",
            "expected \"select\" or \"from\" at character 3, found the end of the expression",
        ),
        (
            "Task",
            "expected \"select\" or \"from\" at character 0, found name \"Task\"",
        ),
        (
            "update Task",
            "expected \"select\" or \"from\" at character 0, found name \"update\"",
        ),
        (
            "select",
            "expected an attribute name to select at character 6, found the end of the expression",
        ),
        (
            "select from Task",
            "expected an attribute name to select at character 7, found keyword \"from\"",
        ),
        (
            "select name Task",
            "expected \",\" or \"from\" at character 12, found name \"Task\"",
        ),
        (
            "select name",
            "expected \",\" or \"from\" at character 11, found the end of the expression",
        ),
        (
            "select name, from Task",
            "expected an attribute name to select at character 13, found keyword \"from\"",
        ),
        (
            "select a..b from Task",
            "expected an attribute name after \".\" at character 9, found \".\"",
        ),
        // After a dot any name is an attribute, keywords included.
        (
            "select a. from Task",
            "expected \",\" or \"from\" at character 15, found name \"Task\"",
        ),
        (
            "from",
            "expected an entity type at character 4, found the end of the expression",
        ),
        (
            "from where",
            "expected an entity type at character 5, found keyword \"where\"",
        ),
        (
            "from 5",
            "expected an entity type at character 5, found number 5",
        ),
        (
            "from Task where",
            "expected an attribute name, \"(\" or \"not\" at character 15, found the end of the expression",
        ),
        (
            "from Task where id",
            "expected \"is\", \"is_not\", \"in\", \"not_in\", \"=\" or \"!=\" at character 18, found the end of the expression",
        ),
        (
            "from Task where id like \"x\"",
            "expected \"is\", \"is_not\", \"in\", \"not_in\", \"=\" or \"!=\" at character 19, found name \"like\"",
        ),
        (
            "from Task where id is",
            "expected a value (a quoted string, a number, true, false, null or none) at character 21, found the end of the expression",
        ),
        (
            "from Task where id is x",
            "expected a value (a quoted string, a number, true, false, null or none) at character 22, found name \"x\"",
        ),
        (
            "from Task where id is \"x",
            "unterminated string starting at character 22: expected a closing \"",
        ),
        (
            "from Task where id is 'x\"",
            "unterminated string starting at character 22: expected a closing '",
        ),
        (
            "from Task where id is \"x\\",
            "unterminated string starting at character 22: expected a closing \"",
        ),
        (
            "from Task where id is \"\\q\"",
            "unknown escape \\q at character 23: expected one of \\\" \\' \\\\ \\/ \\n \\t \\r",
        ),
        (
            "from Task where id in \"x\"",
            "expected \"(\" starting a list of values at character 22, found string \"x\"",
        ),
        (
            "from Task where id in ()",
            "expected a value (a quoted string, a number, true, false, null or none) at character 23, found \")\"",
        ),
        (
            "from Task where id in (\"a\" \"b\")",
            "expected \",\" or \")\" at character 27, found string \"b\"",
        ),
        (
            "from Task where id in (\"a\",",
            "expected a value (a quoted string, a number, true, false, null or none) at character 27, found the end of the expression",
        ),
        (
            "from Task where id in (select id from Task)",
            "expected a value (a quoted string, a number, true, false, null or none) at character 23, found keyword \"select\"",
        ),
        (
            "from Task where (id is 1",
            "expected \")\", \"and\" or \"or\" at character 24, found the end of the expression",
        ),
        (
            "from Task where id is 1)",
            "expected \"limit\", \"offset\" or the end of the expression at character 23, found \")\"",
        ),
        (
            "from Task where id is 1 and",
            "expected an attribute name, \"(\" or \"not\" at character 27, found the end of the expression",
        ),
        (
            "from Task where id is 1 or or id is 2",
            "expected an attribute name, \"(\" or \"not\" at character 27, found keyword \"or\"",
        ),
        (
            "from Task where not",
            "expected an attribute name, \"(\" or \"not\" at character 19, found the end of the expression",
        ),
        (
            "from Task where id is_not",
            "expected a value (a quoted string, a number, true, false, null or none) at character 25, found the end of the expression",
        ),
        (
            "from Task where id is 1 limit",
            "expected a non-negative integer after \"limit\" at character 29, found the end of the expression",
        ),
        (
            "from Task limit -1",
            "expected a non-negative integer after \"limit\" at character 16, found number -1",
        ),
        (
            "from Task limit 1.5",
            "expected a non-negative integer after \"limit\" at character 16, found number 1.5",
        ),
        (
            "from Task limit ten",
            "expected a non-negative integer after \"limit\" at character 16, found name \"ten\"",
        ),
        (
            "from Task limit 99999999999999999999",
            "number 99999999999999999999 at character 16 is out of range",
        ),
        (
            "from Task offset \"1\"",
            "expected a non-negative integer after \"offset\" at character 17, found string \"1\"",
        ),
        (
            "from Task limit 1 limit 2",
            "expected \"offset\" or the end of the expression at character 18, found keyword \"limit\"",
        ),
        (
            "from Task offset 1 limit 2 offset 3",
            "expected the end of the expression at character 27, found keyword \"offset\"",
        ),
        (
            "from Task limit 10abc",
            "expected \"offset\" or the end of the expression at character 18, found name \"abc\"",
        ),
        (
            "from Task order by name",
            "expected \"where\", \"limit\", \"offset\" or the end of the expression at character 10, found name \"order\"",
        ),
        (
            "from Task where id is 1 order by name",
            "expected \"limit\", \"offset\" or the end of the expression at character 24, found name \"order\"",
        ),
        (
            "from Task Shot",
            "expected \"where\", \"limit\", \"offset\" or the end of the expression at character 10, found name \"Shot\"",
        ),
        ("from Task;", "unexpected character ';' at character 9"),
        (
            "from Task where id > 1",
            "unexpected character '>' at character 19",
        ),
        (
            "from Task where id ! 1",
            "unexpected character '!' at character 19",
        ),
        (
            "select * from Task",
            "unexpected character '*' at character 7",
        ),
        (
            "from Task where id is 1e999",
            "number 1e999 at character 22 is out of range",
        ),
        (
            "from Täsk where id is \"é\" garbage",
            "expected \"limit\", \"offset\" or the end of the expression at character 26, found name \"garbage\"",
        ),
    ];
    for (expression, reason) in cases {
        assert_eq!(query_error(&server, expression), reason, "{expression:?}");
    }
    assert_eq!(server.calls(), cases.len());
}

#[test]
fn the_error_message_names_the_expression() {
    let server = server();
    let error = server
        .call(&[json!({"action": "query", "expression": "from Task where"})])
        .expect_err("malformed");
    assert_eq!(
        error.to_string(),
        "cannot run query \"from Task where\": expected an attribute name, \"(\" or \"not\" at character 15, found the end of the expression"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let server = server();
    // Within the limit.
    let nested = format!(
        "from User where {}id is \"a\"{}",
        "(".repeat(64),
        ")".repeat(64)
    );
    assert_eq!(ids(&server, &nested), ["a"]);
    let nots = format!("from User where {}id is \"a\"", "not ".repeat(64));
    assert_eq!(ids(&server, &nots), ["a"]);
    // Past it.
    for depth in [65, 10_000, 200_000] {
        let reason = query_error(
            &server,
            &format!(
                "from User where {}id is \"a\"{}",
                "(".repeat(depth),
                ")".repeat(depth)
            ),
        );
        assert!(reason.contains("nested more than 64 deep"), "{reason}");
        let reason = query_error(
            &server,
            &format!("from User where {}id is \"a\"", "not ".repeat(depth)),
        );
        assert!(reason.contains("nested more than 64 deep"), "{reason}");
    }
    // Long paths.
    let path = vec!["asset"; 32].join(".");
    assert_eq!(
        ids(&server, &format!("from AssetVersion where {path} is 1")),
        Vec::<String>::new()
    );
    let path = vec!["asset"; 100_000].join(".");
    let reason = query_error(&server, &format!("select {path} from AssetVersion"));
    assert!(
        reason.contains("a path of more than 32 attributes"),
        "{reason}"
    );
}

// ---------------------------------------------------------------------------
// Threads.

#[test]
fn concurrent_queries_and_inserts_are_counted_exactly() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 50;
    let server = Arc::new(server());
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let data = query(&server, r#"select comment from Timelog where id is "t1""#);
                    assert_eq!(
                        data,
                        json!([{"__entity_type__": "Timelog", "id": "t1", "comment": "Some comment"}])
                    );
                    let results = server
                        .call(&[
                            json!({"action": "query", "expression": "select name from Project"}),
                            json!({"action": "query", "expression": format!("from Thread{thread}")}),
                        ])
                        .expect("answers");
                    assert_eq!(results[1]["data"].as_array().map(Vec::len), Some(round));
                    server
                        .insert(json!({"__entity_type__": format!("Thread{thread}"), "id": round}))
                        .expect("valid");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("no thread panicked");
    }
    assert_eq!(server.calls(), THREADS * ROUNDS * 2);
    assert_eq!(server.operations(), THREADS * ROUNDS * 3);
    let queries = server.queries();
    assert_eq!(queries.len(), THREADS * ROUNDS * 3);
    assert_eq!(
        queries
            .iter()
            .filter(|q| q.as_str() == "select name from Project")
            .count(),
        THREADS * ROUNDS
    );
    assert_eq!(server.len(), 17 + THREADS * ROUNDS);
    for thread in 0..THREADS {
        assert_eq!(
            ids_of(&query(&server, &format!("from Thread{thread}"))).len(),
            ROUNDS
        );
    }
}

#[test]
fn fixture_server_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<FixtureServer>();
}

// ---------------------------------------------------------------------------
// Never a panic.

/// Tokens of the language (and a few outside it), to reach deep into the
/// parser more often than random text does.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("select".to_owned()),
        Just("from".to_owned()),
        Just("where".to_owned()),
        Just("and".to_owned()),
        Just("or".to_owned()),
        Just("not".to_owned()),
        Just("is".to_owned()),
        Just("is_not".to_owned()),
        Just("in".to_owned()),
        Just("not_in".to_owned()),
        Just("limit".to_owned()),
        Just("offset".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just(",".to_owned()),
        Just(".".to_owned()),
        Just("=".to_owned()),
        Just("!=".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("\\".to_owned()),
        Just("-".to_owned()),
        Just("User".to_owned()),
        Just("AssetVersion".to_owned()),
        Just("asset".to_owned()),
        Just("timelogs".to_owned()),
        Just("name".to_owned()),
        Just("id".to_owned()),
        "[a-z]{1,4}",
        "-?[0-9]{1,25}(\\.[0-9]{0,3})?(e-?[0-9]{1,4})?",
        "\"[^\"]{0,5}\"",
        "[ \\t\\n]",
        any::<char>().prop_map(String::from),
    ]
}

fn check_never_panics(server: &FixtureServer, expression: &str) -> Result<(), TestCaseError> {
    match server.call(&[json!({"action": "query", "expression": expression})]) {
        Ok(results) => {
            prop_assert_eq!(results.len(), 1);
            prop_assert!(results[0]["data"].is_array());
        }
        Err(Error::Query {
            expression: named,
            reason,
        }) => {
            prop_assert_eq!(named, expression);
            prop_assert!(!reason.is_empty());
        }
        Err(other) => prop_assert!(false, "{expression:?}: unexpected error {other:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_strings_never_panic(expression in any::<String>()) {
        check_never_panics(&server(), &expression)?;
    }

    #[test]
    fn random_token_soup_never_panics(tokens in prop::collection::vec(token(), 0..30), spaced in any::<bool>()) {
        let expression = tokens.join(if spaced { " " } else { "" });
        check_never_panics(&server(), &expression)?;
        let prefixed = format!("select {expression}");
        check_never_panics(&server(), &prefixed)?;
        let conditioned = format!("from User where {expression}");
        check_never_panics(&server(), &conditioned)?;
    }

    #[test]
    fn random_operations_never_panic(operation in prop_oneof![
        Just(json!(null)),
        any::<String>().prop_map(|s| json!({"action": s})),
        any::<String>().prop_map(|s| json!({"action": "query", "expression": s})),
        any::<i64>().prop_map(|n| json!({"action": "query", "expression": n})),
        any::<String>().prop_map(Json::from),
    ]) {
        let server = server();
        let _ = server.call(&[operation]);
        prop_assert_eq!(server.calls(), 1);
        prop_assert_eq!(server.operations(), 1);
    }
}

/// A valid query built from parts always answers, with records of the
/// queried type.
#[test]
fn generated_valid_queries_answer() {
    let server = server();
    let projections = [
        "name",
        "timelogs",
        "timelogs.comment",
        "timelogs.user.name",
        "active, name",
    ];
    let conditions = [
        "",
        " where id is \"a\"",
        " where id in (\"a\", \"c\") and not active is false",
        " where (name is \"Ada\" or name is \"Bob\") and timelogs.id is_not \"t3\"",
    ];
    let tails = ["", " limit 1", " offset 1", " limit 1 offset 1"];
    for projection in projections {
        for condition in conditions {
            for tail in tails {
                let expression = format!("select {projection} from User{condition}{tail}");
                let data = query(&server, &expression);
                for record in data.as_array().expect("data") {
                    assert_eq!(record["__entity_type__"], "User", "{expression}");
                    assert!(record["id"].is_string(), "{expression}");
                }
            }
        }
    }
}
