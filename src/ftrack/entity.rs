//! [`Entity`]: a shared handle to one entity record, and [`EntityKey`], its
//! identity.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use serde::Serialize;

use super::session::SessionInner;
use super::value::Value;
use crate::error::Result;

/// An entity's identity: its type and primary key values.
///
/// Its `Display` is the Python repr of ftrack's session cache key,
/// `('Task', ['<id>'])`, so [`StringKeyMaker`](crate::StringKeyMaker) makes
/// the keys ftrack makes.
///
/// ```
/// use layercache::ftrack::EntityKey;
///
/// let key = EntityKey::new("Task", ["4f0e"]);
/// assert_eq!(key.to_string(), "('Task', ['4f0e'])");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EntityKey {
    /// The entity type, such as `Task`.
    pub entity_type: String,
    /// The primary key values, as strings, in the schema's order.
    pub primary_key: Vec<String>,
}

impl EntityKey {
    /// The key of an entity of `entity_type` with these primary key values.
    pub fn new<S: Into<String>>(
        entity_type: &str,
        primary_key: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            entity_type: entity_type.to_owned(),
            primary_key: primary_key.into_iter().map(Into::into).collect(),
        }
    }
}

/// Writes `s` as Python's `repr` of a str would (for the characters that
/// matter in keys: quotes and backslashes).
fn python_repr(s: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let (quote, escaped_quote) = if s.contains('\'') && !s.contains('"') {
        ('"', "\\\"")
    } else {
        ('\'', "\\'")
    };
    f.write_char(quote)?;
    // Runs of characters that need no escape are written whole.
    let mut plain = 0;
    for (at, c) in s.char_indices() {
        let escape = match c {
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if c == quote => escaped_quote,
            _ => continue,
        };
        f.write_str(&s[plain..at])?;
        f.write_str(escape)?;
        plain = at + c.len_utf8();
    }
    f.write_str(&s[plain..])?;
    f.write_char(quote)
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        python_repr(&self.entity_type, f)?;
        f.write_str(", [")?;
        for (i, value) in self.primary_key.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            python_repr(value, f)?;
        }
        f.write_str("])")
    }
}

/// An attribute's two values: `local`, set by the user and not yet
/// committed, and `remote`, the last value known from the server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attribute {
    /// Set locally, not committed.
    pub local: Value,
    /// Last known on the server.
    pub remote: Value,
}

impl Attribute {
    /// The local value if set, else the remote one.
    pub fn value(&self) -> &Value {
        if self.local.is_set() {
            &self.local
        } else {
            &self.remote
        }
    }
}

/// A shared handle to an entity. Clones are the same instance: a session
/// keeps one instance per identity, so two gets of one entity return
/// handles to the same data, and a merge into it is seen through both.
///
/// Equality compares identities ([`EntityKey`]); [`Entity::same`] compares
/// instances.
#[derive(Clone)]
pub struct Entity(pub(crate) Arc<EntityInner>);

pub(crate) struct EntityInner {
    pub(crate) key: EntityKey,
    pub(crate) attributes: RwLock<BTreeMap<String, Attribute>>,
    pub(crate) session: Weak<SessionInner>,
    /// The instance may lack attribute values that the session's layers
    /// below memory hold for its identity (a placeholder made for a
    /// reference): before it is first written through, it takes those
    /// values, so that writing it does not replace a fuller record. Cleared
    /// once it holds what a lower layer held (see `Entity::mark_whole`).
    partial: AtomicBool,
}

impl Entity {
    /// A detached entity (no session) with `key` and no attributes loaded.
    pub fn new(key: EntityKey) -> Self {
        Self::in_session(key, Weak::new())
    }

    pub(crate) fn in_session(key: EntityKey, session: Weak<SessionInner>) -> Self {
        Self::with_attributes(key, BTreeMap::new(), session)
    }

    pub(crate) fn with_attributes(
        key: EntityKey,
        attributes: BTreeMap<String, Attribute>,
        session: Weak<SessionInner>,
    ) -> Self {
        Entity(Arc::new(EntityInner {
            key,
            attributes: RwLock::new(attributes),
            session,
            partial: AtomicBool::new(false),
        }))
    }

    /// A placeholder of the session for a reference: the primary key only,
    /// [partial](Self::is_partial) until it is filled from the layers below
    /// memory.
    pub(crate) fn placeholder(key: EntityKey, session: Weak<SessionInner>) -> Self {
        let entity = Self::in_session(key, session);
        entity.0.partial.store(true, Ordering::SeqCst);
        entity
    }

    /// Whether the instance may lack attribute values the session's layers
    /// below memory hold for it (see `EntityInner::partial`).
    pub(crate) fn is_partial(&self) -> bool {
        self.0.partial.load(Ordering::SeqCst)
    }

    /// The instance now holds every value the layers below memory held for
    /// it (or they hold nothing): writing it through loses none.
    pub(crate) fn mark_whole(&self) {
        self.0.partial.store(false, Ordering::SeqCst);
    }

    /// The entity's identity.
    pub fn key(&self) -> &EntityKey {
        &self.0.key
    }

    /// The entity's type, such as `Task`.
    pub fn entity_type(&self) -> &str {
        &self.0.key.entity_type
    }

    /// Whether `self` and `other` are the same instance.
    pub fn same(&self, other: &Entity) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub(crate) fn attributes(&self) -> RwLockReadGuard<'_, BTreeMap<String, Attribute>> {
        self.0
            .attributes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn attributes_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Attribute>> {
        self.0
            .attributes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The attribute's value: local if set, else remote. When neither is
    /// set, it is loaded from the session's cache layers below memory, or
    /// else, when the session auto-populates, fetched from the server;
    /// either is merged and returned. Otherwise (auto-populate off and no
    /// lower layer has it, or a detached entity) it is [`Value::NotSet`].
    pub fn get(&self, name: &str) -> Result<Value> {
        let value = self.peek(name);
        if value.is_set() {
            return Ok(value);
        }
        match self.0.session.upgrade() {
            Some(session) => session.fill(self, name),
            None => Ok(Value::NotSet),
        }
    }

    /// The attribute's value as loaded, never fetching: local if set, else
    /// remote, else [`Value::NotSet`].
    pub fn peek(&self, name: &str) -> Value {
        self.attributes()
            .get(name)
            .map_or(Value::NotSet, |a| a.value().clone())
    }

    /// Both values of the attribute.
    pub fn attribute(&self, name: &str) -> Attribute {
        self.attributes().get(name).cloned().unwrap_or_default()
    }

    /// Sets the attribute's local value (not sent to the server).
    pub fn set(&self, name: &str, value: impl Into<Value>) {
        self.attributes_mut()
            .entry(name.to_owned())
            .or_default()
            .local = value.into();
    }

    /// The names of the attributes this instance holds a value for.
    pub fn attribute_names(&self) -> Vec<String> {
        self.attributes().keys().cloned().collect()
    }
}

impl PartialEq for Entity {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl fmt::Debug for Entity {
    /// The identity and the loaded attributes; referenced entities show as
    /// their keys, so cycles print finitely.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.key)?;
        let attributes = self.attributes();
        let mut map = f.debug_map();
        for (name, attribute) in attributes.iter() {
            match attribute.value() {
                Value::Entity(e) => map.entry(name, &format_args!("<{}>", e.key())),
                Value::Collection(c) => map.entry(name, &format_args!("<{} entities>", c.len())),
                other => map.entry(name, other),
            };
        }
        map.finish()
    }
}
