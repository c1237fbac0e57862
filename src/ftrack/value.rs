//! [`Value`]: what an entity attribute holds.

use super::entity::Entity;

/// An attribute's value. [`Value::NotSet`] means *unknown* (not loaded, or
/// never set), which is different from [`Value::Null`], a known null.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Value {
    /// Not loaded or not set: ftrack's `NOT_SET` symbol.
    #[default]
    NotSet,
    /// A known null.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Integer(i64),
    /// A floating point number.
    Float(f64),
    /// A string.
    String(String),
    /// A date and time, as the ISO 8601 text the server sent
    /// (`2026-11-24T10:00:00`).
    DateTime(String),
    /// A reference to another entity.
    Entity(Entity),
    /// A collection of entities.
    Collection(Vec<Entity>),
}

impl Value {
    /// Whether the value is known (anything but [`Value::NotSet`]).
    pub fn is_set(&self) -> bool {
        !matches!(self, Value::NotSet)
    }

    /// The string, if this is a [`Value::String`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The entity, if this is a [`Value::Entity`].
    pub fn as_entity(&self) -> Option<&Entity> {
        match self {
            Value::Entity(e) => Some(e),
            _ => None,
        }
    }

    /// The entities, if this is a [`Value::Collection`].
    pub fn as_collection(&self) -> Option<&[Entity]> {
        match self {
            Value::Collection(c) => Some(c),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Integer(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}

impl From<Entity> for Value {
    fn from(e: Entity) -> Self {
        Value::Entity(e)
    }
}
