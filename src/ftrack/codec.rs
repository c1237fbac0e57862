//! [`EntityCodec`]: a session's encode and decode, as the codec of a
//! persistent cache layer.

use std::sync::Weak;

use serde_json::{Map, Value as Json};

use super::entity::{Attribute, Entity, EntityKey};
use super::schema::{Schema, default_primary_key};
use super::session::SessionInner;
use super::value::Value;
use crate::codec::Codec;
use crate::error::{Error, Result};

/// Which attributes [`EntityCodec`] writes (ftrack's
/// `entity_attribute_strategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EncodeStrategy {
    /// Attributes with a value, local or remote (local wins). The default.
    #[default]
    SetOnly,
    /// Every attribute the entity holds, fetching the unset ones first (this
    /// may call the server).
    All,
    /// Only locally modified values.
    ModifiedOnly,
    /// Only values known from the server.
    PersistedOnly,
}

/// A session's encode and decode as a [`Codec<Entity>`]: ftrack's JSON.
///
/// An entity is `{"__entity_type__": T, <primary key>, <attributes>}`; a
/// referenced entity is `{"__entity_type__": T, <primary key>}`; a
/// collection is a list of references; a datetime is
/// `{"__type__": "datetime", "value": "<ISO 8601>"}`. Decoded entities
/// belong to the session, and their references resolve to the session's
/// instances (or to placeholders that load from the cache when read).
#[derive(Clone)]
pub struct EntityCodec {
    pub(crate) session: Weak<SessionInner>,
    pub(crate) strategy: EncodeStrategy,
}

impl std::fmt::Debug for EntityCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntityCodec({:?})", self.strategy)
    }
}

fn decode_error(reason: impl Into<String>) -> Error {
    Error::Decode {
        codec: "ftrack json",
        source: reason.into().into(),
    }
}

impl EntityCodec {
    /// This codec writing attributes by `strategy`.
    pub fn with_strategy(mut self, strategy: EncodeStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The entity as ftrack JSON, its attributes chosen by the strategy.
    pub fn to_json(&self, entity: &Entity) -> Result<Json> {
        let mut object = reference(entity);
        let chosen: fn(&Attribute) -> &Value = match self.strategy {
            EncodeStrategy::SetOnly => Attribute::value,
            EncodeStrategy::ModifiedOnly => |attribute| &attribute.local,
            EncodeStrategy::PersistedOnly => |attribute| &attribute.remote,
            EncodeStrategy::All => {
                // `get` may fetch, which writes the attributes: no lock is
                // held across it.
                for name in entity.attribute_names() {
                    if !object.contains_key(&name)
                        && let Some(json) = value_to_json(&entity.get(&name)?)
                    {
                        object.insert(name, json);
                    }
                }
                return Ok(Json::Object(object));
            }
        };
        for (name, attribute) in entity.attributes().iter() {
            // The primary key is already written.
            if !object.contains_key(name)
                && let Some(json) = value_to_json(chosen(attribute))
            {
                object.insert(name.clone(), json);
            }
        }
        Ok(Json::Object(object))
    }
}

/// `{"__entity_type__": T, <primary key>}`.
fn reference(entity: &Entity) -> Map<String, Json> {
    let mut object = Map::new();
    object.insert(
        "__entity_type__".into(),
        Json::String(entity.entity_type().into()),
    );
    let session = entity.0.session.upgrade();
    let names = match &session {
        Some(session) => session.schema.primary_key(entity.entity_type()),
        None => default_primary_key(),
    };
    for (name, value) in names.iter().zip(&entity.key().primary_key) {
        object.insert(name.clone(), Json::String(value.clone()));
    }
    object
}

fn value_to_json(value: &Value) -> Option<Json> {
    Some(match value {
        Value::NotSet => return None,
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Integer(n) => Json::from(*n),
        Value::Float(x) => serde_json::Number::from_f64(*x).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.clone()),
        Value::DateTime(s) => serde_json::json!({"__type__": "datetime", "value": s}),
        Value::Entity(e) => Json::Object(reference(e)),
        Value::Collection(c) => Json::Array(c.iter().map(|e| Json::Object(reference(e))).collect()),
    })
}

/// Reads an entity record's identity.
pub(crate) fn record_key(object: &Map<String, Json>, schema: &Schema) -> Result<EntityKey> {
    let entity_type = object
        .get("__entity_type__")
        .and_then(Json::as_str)
        .ok_or_else(|| decode_error("an entity record without \"__entity_type__\""))?;
    let mut values = Vec::new();
    for name in schema.primary_key(entity_type) {
        let value = match object.get(name) {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Number(n)) => n.to_string(),
            _ => {
                return Err(decode_error(format!(
                    "{entity_type} record without its primary key attribute {name:?}"
                )));
            }
        };
        values.push(value);
    }
    Ok(EntityKey::new(entity_type, values))
}

/// Turns a JSON attribute value into a [`Value`], resolving entity
/// references with `entity`.
pub(crate) fn value_from_json(
    json: &Json,
    entity: &mut dyn FnMut(&Map<String, Json>) -> Result<Entity>,
) -> Result<Value> {
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Object(object) if object.contains_key("__entity_type__") => {
            Value::Entity(entity(object)?)
        }
        Json::Object(object)
            if object.get("__type__").and_then(Json::as_str) == Some("datetime") =>
        {
            let text = object
                .get("value")
                .and_then(Json::as_str)
                .ok_or_else(|| decode_error("a datetime without a string \"value\""))?;
            Value::DateTime(text.to_owned())
        }
        Json::Array(items) => Value::Collection(
            items
                .iter()
                .map(|item| match item {
                    Json::Object(object) if object.contains_key("__entity_type__") => {
                        entity(object)
                    }
                    other => Err(decode_error(format!(
                        "a collection holds something other than entities: {other}"
                    ))),
                })
                .collect::<Result<_>>()?,
        ),
        Json::Object(other) => {
            return Err(decode_error(format!(
                "an attribute value of an unknown kind: {}",
                Json::Object(other.clone())
            )));
        }
    })
}

/// ftrack's JSON names every attribute.
impl crate::codec::SelfDescribing for EntityCodec {}

impl Codec<Entity> for EntityCodec {
    fn encode(&self, value: &Entity) -> Result<Vec<u8>> {
        let json = self.to_json(value)?;
        serde_json::to_vec(&json).map_err(|e| Error::Encode {
            codec: "ftrack json",
            source: e.into(),
        })
    }

    fn decode(&self, bytes: &[u8]) -> Result<Entity> {
        let session = self
            .session
            .upgrade()
            .ok_or_else(|| decode_error("the session this codec belongs to has ended"))?;
        let json: Json = serde_json::from_slice(bytes).map_err(|e| decode_error(e.to_string()))?;
        let object = json
            .as_object()
            .ok_or_else(|| decode_error("an entity must be a JSON object"))?;
        session.decode_record(object)
    }

    fn format(&self) -> String {
        "ftrack-json".into()
    }
}
