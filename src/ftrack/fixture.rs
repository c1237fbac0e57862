//! [`FixtureServer`]: an in-memory ftrack server for tests and examples.
//!
//! It holds entity records as ftrack's JSON and answers the `query` action
//! with a subset of ftrack's query language, counting every call so that a
//! test can assert that a cached read did not reach the server.
//!
//! # Records
//!
//! A record is a JSON object `{"__entity_type__": "Task", "id": "...",
//! <attributes>}`. An attribute value is a scalar (string, number, bool,
//! null), a datetime `{"__type__": "datetime", "value": "<ISO 8601>"}`, a
//! reference `{"__entity_type__": T, <primary key attributes>}` or a
//! collection (a list of references). Every type is keyed by `id` unless
//! [`FixtureServer::with_primary_key`] or [`FixtureServer::from_schemas`]
//! says otherwise. Records are kept, and results returned, in insertion
//! order; inserting a record whose identity (type and primary key) is
//! already stored replaces it in place.
//!
//! # The query language
//!
//! Keywords are case-insensitive; entity types and attribute names are not.
//! Whitespace separates tokens and is otherwise ignored.
//!
//! ```text
//! query       := [ "select" path { "," path } ] "from" TYPE
//!                [ "where" condition ] { "limit" COUNT | "offset" COUNT }
//! path        := NAME { "." NAME }
//! condition   := conjunction { "or" conjunction }
//! conjunction := unary { "and" unary }
//! unary       := "not" unary | "(" condition ")" | comparison
//! comparison  := path ( "is" | "=" | "is_not" | "!=" ) value
//!              | path ( "in" | "not_in" ) "(" value { "," value } ")"
//! value       := STRING | NUMBER | "true" | "false" | "null" | "none"
//! NAME, TYPE  := letter or "_", then letters, digits or "_"
//!                (not a keyword, except after a ".")
//! STRING      := '"' ... '"' | "'" ... "'"
//!                escapes: \" \' \\ \/ \n \t \r
//! NUMBER      := [ "-" ] digits [ "." digits ] [ ( "e" | "E" ) [ "+" | "-" ] digits ]
//! COUNT       := digits (a non-negative integer)
//! ```
//!
//! `limit` and `offset` may each appear once, in either order; `and` binds
//! tighter than `or`. Parentheses and `not` nest at most 64 deep, and a path
//! has at most 32 names.
//!
//! **Results.** The records of `TYPE`, in insertion order, that satisfy the
//! condition, skipping `offset` and keeping at most `limit`. Each result
//! has `__entity_type__`, the primary key attributes and:
//!
//! - without `select`, every attribute the record has;
//! - with `select`, each projected attribute the record has (one it lacks
//!   is omitted). A projected reference is `{"__entity_type__": T, <primary
//!   key>}` and a collection a list of those. A dotted projection such as
//!   `asset.parent.name` goes through references: `asset` is the stored
//!   record it refers to, projected in turn (`__entity_type__`, primary key
//!   and `parent`, itself projected with `name`); a dangling reference gives
//!   just the reference. Through a collection, each element likewise.
//!   Projections sharing a prefix (`asset.name, asset.parent`) are merged.
//!   A path running past a value that is not an entity stops at that value.
//!
//! **Conditions.** A path is followed as for projections: through a
//! reference to the stored record (a missing attribute, or a path past a
//! null or scalar, gives null), through a collection to each element. `is
//! v` holds when any value found at the path equals `v` (so through an
//! empty collection it never does); `is_not v` is its negation; `in (v, ...)`
//! holds when any value found equals any listed value; `not_in` is its
//! negation. Equality is JSON equality, except that numbers compare by
//! value (`1` equals `1.0`), a string literal equals a number whose JSON
//! text it is and a string value equals a number literal (`id is "7"`
//! matches `"id": 7`, as the server casts literals to the attribute's
//! type), and a string literal equals a datetime whose ISO 8601 text it is.
//!
//! **Errors.** A malformed expression (an unknown keyword or character, a
//! missing `from`, an unterminated string, a bad count, trailing tokens)
//! gives [`Error::Query`] with the whole expression and a reason saying
//! what was expected at which character offset (counting characters from
//! 0). Other constructs of ftrack's language (`order by`, `like`, `has`,
//! `any`, subqueries, ...) are not supported and are errors too.
//!
//! # Operations
//!
//! [`Remote::call`] takes a batch of operations and answers each `{"action":
//! "query", "expression": "..."}` with `{"action": "query", "data":
//! [<results>], "metadata": {"next": {"offset": null}}}`. Any other action,
//! or an operation that is not an object with a string `"action"`, fails
//! the whole batch with [`Error::Backend`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use serde_json::{Map, Value as Json, json};

use super::query::{self, Store};
use super::remote::Remote;
use super::schema::Schema;
use crate::error::{Error, Operation, Result};

/// The name [`Error::Backend`] gives this server.
const BACKEND: &str = "ftrack fixture server";

/// An in-memory ftrack server answering a documented subset of the query
/// language (see the [module documentation](self)) and counting the calls it
/// receives.
///
/// It is thread safe: records can be inserted and queries run from many
/// threads through `&self`.
///
/// ```
/// use layercache::ftrack::{FixtureServer, Remote};
/// use serde_json::json;
///
/// # fn main() -> layercache::Result<()> {
/// let server = FixtureServer::new();
/// server.insert_all([
///     json!({"__entity_type__": "User", "id": "u1", "username": "ada"}),
///     json!({"__entity_type__": "Timelog", "id": "t1", "comment": "Some comment",
///            "user": {"__entity_type__": "User", "id": "u1"}}),
/// ])?;
///
/// let results = server.call(&[json!({
///     "action": "query",
///     "expression": r#"select comment, user.username from Timelog where id is "t1""#,
/// })])?;
/// assert_eq!(
///     results[0]["data"],
///     json!([{
///         "__entity_type__": "Timelog", "id": "t1", "comment": "Some comment",
///         "user": {"__entity_type__": "User", "id": "u1", "username": "ada"},
///     }])
/// );
/// assert_eq!(server.calls(), 1);
/// assert_eq!(server.queries(), [r#"select comment, user.username from Timelog where id is "t1""#]);
///
/// // A malformed expression is an error, never a panic.
/// let bad = server.call(&[json!({"action": "query", "expression": "select from Task"})]);
/// assert!(matches!(bad, Err(layercache::Error::Query { .. })));
/// # Ok(())
/// # }
/// ```
pub struct FixtureServer {
    schema: Schema,
    data: RwLock<Data>,
    calls: AtomicUsize,
    operations: AtomicUsize,
    queries: Mutex<Vec<String>>,
}

/// The stored records, in insertion order, and where each identity is.
#[derive(Default)]
struct Data {
    records: Vec<Map<String, Json>>,
    index: HashMap<Identity, usize>,
}

/// A record's type and primary key values (as JSON text).
type Identity = (String, Vec<String>);

impl Default for FixtureServer {
    fn default() -> Self {
        Self::new()
    }
}

impl FixtureServer {
    /// An empty server where every entity type is keyed by `id`.
    pub fn new() -> Self {
        FixtureServer {
            schema: Schema::new(),
            data: RwLock::new(Data::default()),
            calls: AtomicUsize::new(0),
            operations: AtomicUsize::new(0),
            queries: Mutex::new(Vec::new()),
        }
    }

    /// This server with `entity_type` keyed by `primary_key` (for a
    /// composite key, several attributes in order). Set keys before
    /// inserting records of the type: records already stored are
    /// re-indexed, and one lacking an attribute of the new key can no
    /// longer be found through references.
    pub fn with_primary_key(mut self, entity_type: &str, primary_key: &[&str]) -> Self {
        self.schema = self.schema.with_type(entity_type, primary_key);
        let data = self.data.get_mut().unwrap_or_else(PoisonError::into_inner);
        let mut index = HashMap::new();
        for (position, record) in data.records.iter().enumerate() {
            if let Ok(identity) = identity_of(&self.schema, record) {
                index.entry(identity).or_insert(position);
            }
        }
        data.index = index;
        self
    }

    /// An empty server with the primary keys of ftrack's schema JSON (the
    /// result of its `query_schemas` action): a list of objects with `"id"`
    /// (the entity type) and `"primary_key"` (a list of attribute names;
    /// `["id"]` when absent). Other fields, such as `"properties"`, are
    /// ignored.
    ///
    /// ```
    /// use layercache::ftrack::FixtureServer;
    ///
    /// let server = FixtureServer::from_schemas(r#"[
    ///     {"id": "Task", "primary_key": ["id"], "properties": {}},
    ///     {"id": "Metadata", "primary_key": ["parent_id", "key"], "properties": {}}
    /// ]"#).unwrap();
    /// assert_eq!(server.primary_key("Metadata"), ["parent_id", "key"]);
    /// assert_eq!(server.primary_key("User"), ["id"]);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when `json` is not such a list.
    pub fn from_schemas(json: &str) -> Result<Self> {
        Ok(FixtureServer {
            schema: Schema::from_json(json)?,
            ..FixtureServer::new()
        })
    }

    /// The primary key attributes of `entity_type` (`["id"]` unless set).
    pub fn primary_key(&self, entity_type: &str) -> &[String] {
        self.schema.primary_key(entity_type)
    }

    /// Stores `record`, replacing the stored record of the same identity
    /// (keeping its position) if there is one.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] when `record` is not an object with a string
    /// `"__entity_type__"` and every primary key attribute of its type (a
    /// string or a number). Nothing is stored then.
    pub fn insert(&self, record: Json) -> Result<()> {
        self.insert_all([record])
    }

    /// Stores every record of `records`, as [`insert`](Self::insert) does.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] for the first invalid record; then none of `records`
    /// is stored.
    pub fn insert_all(&self, records: impl IntoIterator<Item = Json>) -> Result<()> {
        let checked = records
            .into_iter()
            .map(|record| {
                let Json::Object(record) = record else {
                    return Err(Error::Key {
                        reason: format!("an ftrack record must be a JSON object, not {record}"),
                    });
                };
                let identity = identity_of(&self.schema, &record)?;
                Ok((identity, record))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut data = self.data.write().unwrap_or_else(PoisonError::into_inner);
        for (identity, record) in checked {
            match data.index.get(&identity) {
                Some(&position) => {
                    if let Some(slot) = data.records.get_mut(position) {
                        *slot = record;
                    }
                }
                None => {
                    let position = data.records.len();
                    data.records.push(record);
                    data.index.insert(identity, position);
                }
            }
        }
        Ok(())
    }

    /// The stored record of `entity_type` with these primary key values (in
    /// the order of [`primary_key`](Self::primary_key)), if any.
    pub fn get(&self, entity_type: &str, primary_key: &[Json]) -> Option<Json> {
        let identity = (
            entity_type.to_owned(),
            primary_key.iter().map(key_text).collect(),
        );
        let data = self.data.read().unwrap_or_else(PoisonError::into_inner);
        let position = *data.index.get(&identity)?;
        data.records.get(position).cloned().map(Json::Object)
    }

    /// How many records are stored.
    pub fn len(&self) -> usize {
        self.data
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .records
            .len()
    }

    /// Whether no record is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times [`Remote::call`] was invoked (failed calls included).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// How many operations the calls carried in all.
    pub fn operations(&self) -> usize {
        self.operations.load(Ordering::SeqCst)
    }

    /// The expressions of the `query` operations received, in order
    /// (malformed ones included).
    pub fn queries(&self) -> Vec<String> {
        self.queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets [`calls`](Self::calls) and [`operations`](Self::operations) to
    /// zero and forgets the [`queries`](Self::queries).
    pub fn reset_counts(&self) {
        // Hold the queries' lock so that a concurrent call is counted either
        // wholly before or wholly after the reset.
        let mut queries = self.queries.lock().unwrap_or_else(PoisonError::into_inner);
        self.calls.store(0, Ordering::SeqCst);
        self.operations.store(0, Ordering::SeqCst);
        queries.clear();
    }

    /// Answers one operation.
    fn answer(&self, data: &Data, index: usize, operation: &Json) -> Result<Json> {
        let action = operation.get("action").and_then(Json::as_str);
        match action {
            Some("query") => {
                let expression = operation
                    .get("expression")
                    .and_then(Json::as_str)
                    .ok_or_else(|| {
                        failure(format!(
                            "operation {index}: a query needs a string \"expression\": {operation}"
                        ))
                    })?;
                let query = query::parse(expression)?;
                let store = View { server: self, data };
                let results = query.run(&store, &data.records);
                Ok(json!({
                    "action": "query",
                    "data": results,
                    "metadata": {"next": {"offset": null}},
                }))
            }
            Some(other) => Err(failure(format!(
                "operation {index}: unsupported action {other:?} (the fixture server answers \"query\" only)"
            ))),
            None => Err(failure(format!(
                "operation {index}: not an object with a string \"action\": {operation}"
            ))),
        }
    }
}

fn failure(reason: String) -> Error {
    Error::backend(BACKEND, Operation::Get, reason)
}

/// A primary key value as it is indexed: strings as they are, anything else
/// as its JSON text (so `"7"` and `7` are the same key, as a session's
/// string keys expect).
fn key_text(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The identity of a record (or reference), checking it has a type and
/// every primary key attribute.
fn identity_of(schema: &Schema, record: &Map<String, Json>) -> Result<Identity> {
    let entity_type = record
        .get("__entity_type__")
        .and_then(Json::as_str)
        .ok_or_else(|| Error::Key {
            reason: format!(
                "an ftrack record needs a string \"__entity_type__\": {}",
                Json::Object(record.clone())
            ),
        })?;
    let values = schema
        .primary_key(entity_type)
        .iter()
        .map(|name| match record.get(name) {
            Some(value @ (Json::String(_) | Json::Number(_))) => Ok(key_text(value)),
            Some(other) => Err(Error::Key {
                reason: format!("{entity_type}: primary key attribute {name:?} is {other}, not a string or a number"),
            }),
            None => Err(Error::Key {
                reason: format!("{entity_type}: a record without primary key attribute {name:?}"),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((entity_type.to_owned(), values))
}

/// The server's data as the query evaluator sees it.
struct View<'a> {
    server: &'a FixtureServer,
    data: &'a Data,
}

impl Store for View<'_> {
    fn resolve(&self, reference: &Map<String, Json>) -> Option<&Map<String, Json>> {
        let identity = identity_of(&self.server.schema, reference).ok()?;
        let position = *self.data.index.get(&identity)?;
        self.data.records.get(position)
    }

    fn primary_key(&self, entity_type: &str) -> &[String] {
        self.server.primary_key(entity_type)
    }
}

impl Remote for FixtureServer {
    fn call(&self, operations: &[Json]) -> Result<Vec<Json>> {
        {
            let mut queries = self.queries.lock().unwrap_or_else(PoisonError::into_inner);
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.operations
                .fetch_add(operations.len(), Ordering::SeqCst);
            queries.extend(
                operations
                    .iter()
                    .filter(|op| op.get("action").and_then(Json::as_str) == Some("query"))
                    .filter_map(|op| op.get("expression").and_then(Json::as_str))
                    .map(str::to_owned),
            );
        }
        let data = self.data.read().unwrap_or_else(PoisonError::into_inner);
        operations
            .iter()
            .enumerate()
            .map(|(index, operation)| self.answer(&data, index, operation))
            .collect()
    }
}

impl fmt::Debug for FixtureServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FixtureServer({} records, {} calls)",
            self.len(),
            self.calls()
        )
    }
}
