//! Entity types and their primary keys.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// The entity types a session knows: for each, its primary key attributes.
/// A type the schema does not list is keyed by `id`, as most ftrack types
/// are.
///
/// ```
/// use layercache::ftrack::Schema;
///
/// let schema = Schema::from_json(r#"[
///     {"id": "Task", "primary_key": ["id"], "properties": {}},
///     {"id": "Metadata", "primary_key": ["parent_id", "key"], "properties": {}}
/// ]"#).unwrap();
/// assert_eq!(schema.primary_key("Metadata"), ["parent_id", "key"]);
/// assert_eq!(schema.primary_key("User"), ["id"]); // the default
/// ```
#[derive(Debug, Clone, Default)]
pub struct Schema {
    primary_keys: HashMap<String, Vec<String>>,
}

impl Schema {
    /// A schema where every type is keyed by `id`.
    pub fn new() -> Self {
        Self::default()
    }

    /// This schema with `entity_type` keyed by `primary_key`.
    pub fn with_type(mut self, entity_type: &str, primary_key: &[&str]) -> Self {
        self.primary_keys.insert(
            entity_type.to_owned(),
            primary_key.iter().map(|s| (*s).to_owned()).collect(),
        );
        self
    }

    /// Reads ftrack's schema JSON (the result of its `query_schemas`
    /// action): a list of objects with `"id"` (the type) and
    /// `"primary_key"` (a list of attribute names).
    pub fn from_json(json: &str) -> Result<Self> {
        let bad = |reason: String| Error::Decode {
            codec: "ftrack schema",
            source: reason.into(),
        };
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let list = value
            .as_array()
            .ok_or_else(|| bad("expected a list of schemas".into()))?;
        let mut schema = Schema::new();
        for item in list {
            let name = item
                .get("id")
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad(format!("a schema without a string \"id\": {item}")))?;
            let key = match item.get("primary_key") {
                None => vec!["id".to_owned()],
                Some(key) => key
                    .as_array()
                    .and_then(|k| k.iter().map(|a| a.as_str().map(str::to_owned)).collect())
                    .ok_or_else(|| {
                        bad(format!("{name}: \"primary_key\" is not a list of names"))
                    })?,
            };
            if key.is_empty() {
                return Err(bad(format!("{name}: empty primary key")));
            }
            schema.primary_keys.insert(name.to_owned(), key);
        }
        Ok(schema)
    }

    /// The types this schema lists, with their primary keys (in no
    /// particular order).
    pub fn types(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.primary_keys
            .iter()
            .map(|(name, key)| (name.as_str(), key.as_slice()))
    }

    /// The primary key attributes of `entity_type`.
    pub fn primary_key(&self, entity_type: &str) -> &[String] {
        self.primary_keys
            .get(entity_type)
            .map_or(default_primary_key(), Vec::as_slice)
    }
}

/// `["id"]`: the primary key of a type no schema lists.
pub(crate) fn default_primary_key() -> &'static [String] {
    static ID: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| vec!["id".to_owned()])
}
