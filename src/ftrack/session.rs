//! [`Session`]: entity records from a [`Remote`] server, cached through a
//! [`Layered`] stack.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, TryLockError, Weak};
use std::thread::{self, ThreadId};

use serde_json::{Map, Value as Json};

use super::codec::{EncodeStrategy, EntityCodec, record_key, value_from_json};
use super::entity::{Attribute, Entity, EntityInner, EntityKey};
use super::remote::Remote;
use super::schema::Schema;
use super::value::Value;
use crate::cache::Cache;
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::key::{KeyMaker, StringKeyMaker};
use crate::layered::Layered;
use crate::memory::MemoryCache;

/// Makes the cache a session appends below its memory layer; called once,
/// with the session, so it can use [`Session::codec`]. May return no cache.
pub type CacheMaker = Box<dyn FnOnce(&Session) -> Option<Box<dyn Cache<String, Entity>>>>;

/// A connection to an ftrack server whose entities are cached.
///
/// - The cache is a [`Layered`] stack whose top layer is always a
///   [`MemoryCache`]; the builder's cache maker can add layers below it (a
///   persistent file shared between sessions, a Redis layer).
///   [`cache`](Session::cache) returns it, [`cache_mut`](Session::cache_mut)
///   changes it.
/// - [`get`](Session::get) answers from the cache and asks the server only
///   on a miss; [`query`](Session::query) asks the server and merges what it
///   returns into the cached instances: one instance per identity. An
///   instance stays the session's instance of its identity while anything
///   holds it, the memory layer or a handle of yours: a get after the
///   memory layer was cleared returns the handle still held.
/// - Reading an attribute that is not loaded fetches it when
///   auto-populate is on (the default); see
///   [`auto_populating`](Session::auto_populating).
///
/// A `Session` is a cheap handle (an `Arc`): clones are the same session,
/// and it can be used from many threads at once. No call holds a lock
/// while it runs the cache stack, a codec, the server or code of yours, so
/// a layer or a codec may call back into the session (a persistent layer's
/// decode does), a layer or a remote may take locks of its own while
/// another thread holding them calls the session, and changing the stack
/// never waits for calls under way (see [`cache_mut`](Session::cache_mut)).
/// Changes of one entity are written through one at a time, each layer's
/// last write storing the entity's latest state (see
/// [`merge`](Session::merge)).
#[derive(Clone)]
pub struct Session(pub(crate) Arc<SessionInner>);

pub(crate) struct SessionInner {
    remote: Box<dyn Remote>,
    pub(crate) schema: Schema,
    /// The current cache stack. Locked only for a moment, to clone the `Arc`
    /// or to put a new stack in its place: a call runs on its own snapshot
    /// and holds no lock while the stack, a codec or the server runs.
    cache: RwLock<Arc<Layered<String, Entity>>>,
    /// Held by a [`CacheMut`], so that two changes of the stack do not
    /// start from the same stack and lose one of them; `changer` is the
    /// thread holding it. Nothing but another `cache_mut` waits for it.
    changing: Mutex<()>,
    changer: Mutex<Option<ThreadId>>,
    key_maker: Box<dyn KeyMaker<EntityKey>>,
    auto_populate: AtomicBool,
    /// The session's instance of each identity, and the state of its
    /// write-through: what keeps one instance per identity (finding the
    /// instance and attaching a new one are one step under this lock) and
    /// writes each change through in order (one write-through of an
    /// identity at a time, repeated while it changes: see
    /// [`write_through`](SessionInner::write_through)). Locked only for a
    /// lookup, an insert or a flag, never across a call into the stack, a
    /// codec, the server or code of yours, so a layer or a remote may take
    /// locks of its own and call back into the session from any thread.
    identities: Mutex<Identities>,
}

/// The session's instances by identity: see `SessionInner::identities`.
#[derive(Default)]
struct Identities {
    map: HashMap<EntityKey, Identity>,
    /// The map's size at which the entries of dropped instances are pruned.
    prune_at: usize,
}

/// One identity of [`Identities`].
struct Identity {
    /// The session's instance, while anything (the memory layer, a handle)
    /// holds it; once dropped, the next instance attached takes its place.
    instance: Weak<EntityInner>,
    /// A call is writing the instance through the stack.
    writing: bool,
    /// The instance changed while it was being written: the writing call
    /// writes it again. Left set when the writing call panicked (`writing`
    /// cleared): the write is then pending, and the next call that touches
    /// the identity makes it (see [`Session::merge`]).
    again: bool,
}

/// Prune no smaller map than this.
const MIN_PRUNE_AT: usize = 64;

impl Identities {
    /// The slot of `entity`'s identity, made (holding `entity`) if there
    /// is none.
    fn slot(&mut self, entity: &Entity) -> &mut Identity {
        if self.map.len() >= self.prune_at && !self.map.contains_key(entity.key()) {
            self.map
                .retain(|_, identity| identity.writing || identity.instance.strong_count() > 0);
            self.prune_at = (self.map.len() * 2).max(MIN_PRUNE_AT);
        }
        self.map
            .entry(entity.key().clone())
            .or_insert_with(|| Identity {
                instance: Arc::downgrade(&entity.0),
                writing: false,
                again: false,
            })
    }
}

/// Options for a [`Session`]: see [`Session::builder`].
pub struct SessionBuilder {
    remote: Box<dyn Remote>,
    schema: Schema,
    cache_maker: Option<CacheMaker>,
    key_maker: Box<dyn KeyMaker<EntityKey>>,
    auto_populate: bool,
}

impl SessionBuilder {
    /// The entity types and their primary keys (default: every type keyed
    /// by `id`).
    pub fn schema(mut self, schema: Schema) -> Self {
        self.schema = schema;
        self
    }

    /// Called once with the new session; the cache it returns, if any, is
    /// appended below the session's memory layer.
    pub fn cache(
        mut self,
        maker: impl FnOnce(&Session) -> Option<Box<dyn Cache<String, Entity>>> + 'static,
    ) -> Self {
        self.cache_maker = Some(Box::new(maker));
        self
    }

    /// How cache keys are made from entity keys (default
    /// [`StringKeyMaker`]: `('Task', ['<id>'])`).
    pub fn key_maker(mut self, key_maker: impl KeyMaker<EntityKey> + 'static) -> Self {
        self.key_maker = Box::new(key_maker);
        self
    }

    /// Whether reading a value that is not loaded fetches it (default on).
    pub fn auto_populate(mut self, on: bool) -> Self {
        self.auto_populate = on;
        self
    }

    /// The session.
    pub fn build(self) -> Session {
        let session = Session(Arc::new(SessionInner {
            remote: self.remote,
            schema: self.schema,
            cache: RwLock::new(Arc::new(Layered::new().with_layer(MemoryCache::new()))),
            changing: Mutex::new(()),
            changer: Mutex::new(None),
            key_maker: self.key_maker,
            auto_populate: AtomicBool::new(self.auto_populate),
            identities: Mutex::new(Identities {
                map: HashMap::new(),
                prune_at: MIN_PRUNE_AT,
            }),
        }));
        if let Some(maker) = self.cache_maker
            && let Some(cache) = maker(&session)
        {
            session.cache_mut().push_boxed(cache);
        }
        session
    }
}

/// A change of a session's cache stack, from [`Session::cache_mut`]: derefs
/// to a copy of the stack, which takes the stack's place when this is
/// dropped.
#[must_use = "the change takes effect when the guard is dropped"]
pub struct CacheMut<'a> {
    session: &'a SessionInner,
    /// The copy being changed; taken when it is put in place.
    stack: Option<Layered<String, Entity>>,
    _changing: MutexGuard<'a, ()>,
}

impl Deref for CacheMut<'_> {
    type Target = Layered<String, Entity>;

    fn deref(&self) -> &Self::Target {
        self.stack
            .as_ref()
            .expect("the copy is there until the guard drops")
    }
}

impl DerefMut for CacheMut<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.stack
            .as_mut()
            .expect("the copy is there until the guard drops")
    }
}

impl Drop for CacheMut<'_> {
    /// Puts the copy in place (also when unwinding: the stack's watchers
    /// already follow the copy's layers). The stack it replaces is dropped
    /// after the lock is released, as dropping a layer may run its code.
    fn drop(&mut self) {
        if let Some(mut stack) = self.stack.take() {
            stack.publish();
            let replaced = std::mem::replace(
                &mut *self
                    .session
                    .cache
                    .write()
                    .unwrap_or_else(PoisonError::into_inner),
                Arc::new(stack),
            );
            *self.session.changer() = None;
            drop(replaced);
        }
    }
}

impl fmt::Debug for CacheMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CacheMut").field(&**self).finish()
    }
}

/// Restores the session's previous auto-populate setting when dropped:
/// see [`Session::auto_populating`].
#[must_use = "the setting is restored when the guard is dropped"]
pub struct AutoPopulate<'a> {
    session: &'a SessionInner,
    previous: bool,
}

impl Drop for AutoPopulate<'_> {
    fn drop(&mut self) {
        self.session
            .auto_populate
            .store(self.previous, Ordering::SeqCst);
    }
}

impl Session {
    /// Options for a session talking to `remote`.
    pub fn builder(remote: impl Remote + 'static) -> SessionBuilder {
        SessionBuilder {
            remote: Box::new(remote),
            schema: Schema::new(),
            cache_maker: None,
            key_maker: Box::new(StringKeyMaker),
            auto_populate: true,
        }
    }

    /// The session's cache stack (memory on top), as it is now: a snapshot
    /// that no later [`cache_mut`](Session::cache_mut) changes. Reading or
    /// writing through it reads or writes the session's layers; hold it no
    /// longer than needed, as it keeps layers taken out of the stack alive.
    ///
    /// ```
    /// use layercache::Cache;
    /// use layercache::ftrack::{EntityKey, FixtureServer, Session};
    /// use serde_json::json;
    ///
    /// # fn main() -> layercache::Result<()> {
    /// let server = FixtureServer::new();
    /// server.insert(json!({"__entity_type__": "User", "id": "u1", "username": "ada"}))?;
    /// let session = Session::builder(server).build();
    /// session.get("User", ["u1"])?;
    ///
    /// let key = session.cache_key(&EntityKey::new("User", ["u1"]))?;
    /// assert!(session.cache().get(&key)?.is_some());
    /// assert_eq!(format!("{:?}", session.cache()), "Layered[Memory(1 entry)]");
    /// # Ok(())
    /// # }
    /// ```
    pub fn cache(&self) -> Arc<Layered<String, Entity>> {
        self.0.cache()
    }

    /// Changes the session's cache stack (adds, moves or takes out layers):
    /// the guard derefs to a copy of the stack, with the same layers, error
    /// policy and failure hook, that takes the stack's place when the guard
    /// is dropped.
    ///
    /// Nothing waits for calls under way, and calls never wait for this:
    /// calls that started before the guard is dropped (on any thread, this
    /// one included) finish on the stack they started with, so a layer
    /// taken out may still see a few of their reads and writes; calls that
    /// start after it use the new stack. The copy shares the stack's
    /// bookkeeping, so a promotion on the old stack still sees a write on
    /// the new one (see [`Layered`]). Another `cache_mut`, on any clone of
    /// the session, waits until this guard is dropped, so that no change is
    /// lost.
    ///
    /// ```
    /// use layercache::MemoryCache;
    /// use layercache::ftrack::{FixtureServer, Session};
    ///
    /// let session = Session::builder(FixtureServer::new()).build();
    /// let before = session.cache();
    /// {
    ///     let mut stack = session.cache_mut();
    ///     stack.push(MemoryCache::new());
    ///     assert_eq!(stack.depth(), 2);
    ///     assert_eq!(session.cache().depth(), 1, "not in place yet");
    /// }
    /// assert_eq!(session.cache().depth(), 2, "in place once the guard is dropped");
    /// assert_eq!(before.depth(), 1, "a snapshot never changes");
    /// ```
    ///
    /// # Panics
    ///
    /// If this thread already holds a `CacheMut` of this session (waiting
    /// for it would never end).
    pub fn cache_mut(&self) -> CacheMut<'_> {
        let inner = &*self.0;
        let me = thread::current().id();
        let changing = match inner.changing.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                assert!(
                    *inner.changer() != Some(me),
                    "Session::cache_mut on a thread that already holds a CacheMut of this session"
                );
                inner
                    .changing
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            }
        };
        *inner.changer() = Some(me);
        let stack = inner.cache().fork();
        CacheMut {
            session: inner,
            stack: Some(stack),
            _changing: changing,
        }
    }

    /// The session's encode and decode as a codec for
    /// [`Serialised`](crate::Serialised) (ftrack's `session.encode` and
    /// `session.decode`), with the [`SetOnly`](EncodeStrategy::SetOnly)
    /// strategy.
    pub fn codec(&self) -> EntityCodec {
        EntityCodec {
            session: Arc::downgrade(&self.0),
            strategy: EncodeStrategy::SetOnly,
        }
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.0.schema
    }

    /// The cache key of `key`, made by the session's key maker.
    pub fn cache_key(&self, key: &EntityKey) -> Result<String> {
        self.0.cache_key(key)
    }

    /// Turns auto-populate on or off until the returned guard is dropped,
    /// which restores the previous setting (ftrack's
    /// `with session.auto_populating(False):`).
    pub fn auto_populating(&self, on: bool) -> AutoPopulate<'_> {
        let previous = self.0.auto_populate.swap(on, Ordering::SeqCst);
        AutoPopulate {
            session: &self.0,
            previous,
        }
    }

    /// Whether auto-populate is on.
    pub fn is_auto_populating(&self) -> bool {
        self.0.auto_populate.load(Ordering::SeqCst)
    }

    /// The entity of `entity_type` with these primary key values: from the
    /// cache, or from the server on a miss (then cached). `None` when the
    /// server has no such entity.
    pub fn get<S: Into<String>>(
        &self,
        entity_type: &str,
        primary_key: impl IntoIterator<Item = S>,
    ) -> Result<Option<Entity>> {
        let key = EntityKey::new(entity_type, primary_key);
        let cache_key = self.0.cache_key(&key)?;
        if let Some(found) = self.0.cached(&cache_key, &key)? {
            return self.0.settle(cache_key, &found).map(Some);
        }
        let names = self.0.schema.primary_key(entity_type);
        if names.len() != key.primary_key.len() {
            return Err(Error::Query {
                expression: format!("get {key}"),
                reason: format!(
                    "{entity_type} has {} primary key attributes ({}), {} values given",
                    names.len(),
                    names.join(", "),
                    key.primary_key.len()
                ),
            });
        }
        let condition = key_condition(names, &key.primary_key);
        let found = self.query(&format!("from {entity_type} where {condition}"))?;
        Ok(found.into_iter().next())
    }

    /// Sends `expression` to the server and merges the entities it returns
    /// into the cache; returns the session's instances, in order.
    pub fn query(&self, expression: &str) -> Result<Vec<Entity>> {
        let operation = serde_json::json!({"action": "query", "expression": expression});
        let mut results = self.0.remote.call(std::slice::from_ref(&operation))?;
        let result = results.pop().ok_or_else(|| Error::Query {
            expression: expression.to_owned(),
            reason: "the server returned no result".into(),
        })?;
        let data = result
            .get("data")
            .and_then(Json::as_array)
            .ok_or_else(|| Error::Query {
                expression: expression.to_owned(),
                reason: format!("the server's result has no \"data\" list: {result}"),
            })?;
        self.0.merge_records(data)
    }

    /// Loads `projections` (comma separated, dotted paths allowed, as in a
    /// `select`) for `entities` with one query per entity type, and merges
    /// them. Auto-populate does this for one attribute at a time.
    pub fn populate(&self, entities: &[Entity], projections: &str) -> Result<()> {
        let mut by_type: HashMap<&str, Vec<&Entity>> = HashMap::new();
        for entity in entities {
            by_type
                .entry(entity.entity_type())
                .or_default()
                .push(entity);
        }
        for (entity_type, group) in by_type {
            self.query(&self.0.populate_expression(entity_type, &group, projections))?;
        }
        Ok(())
    }

    /// Merges an entity (from anywhere: another session, a decoded record)
    /// into this session's cache and returns the session's instance.
    ///
    /// What a caller can rely on:
    ///
    /// - When this returns (`Ok` or `Err`), the values are in the session's
    ///   instance, which it returns (on `Ok`): every handle of the identity
    ///   and the memory layer see them.
    /// - `Ok`: the instance, with these values, has been written through
    ///   every layer, or is being written by another call. A call writing
    ///   the instance at the same moment (on another thread, or further up
    ///   this one) is left to write it again, with these values too, so
    ///   that no call waits for another; a failure of that write is
    ///   reported to that call, not to this one.
    /// - If that other call panics (a layer or a codec panicked) before
    ///   writing these values, the write is pending: the layers below
    ///   memory keep the previous state until the next call that touches
    ///   the identity — a merge of it, a [`get`](Session::get) of it, a
    ///   [`query`](Session::query) returning it, or reading an attribute of
    ///   it that is not loaded — writes the instance through, and reports
    ///   that write's failure (or panic) to its own caller. Until then a
    ///   fresh session on a persistent layer reads the previous state, and
    ///   the values live only in the instance: if nothing touches the
    ///   identity again, or the memory layer drops the instance while no
    ///   handle holds it, the lower layers never get them.
    /// - `Err`: a write this call made failed (its first failure is
    ///   returned; the layers the stack's policy wrote keep the write).
    ///
    /// Writing through never loses values a layer below memory holds for
    /// the identity: an instance that may lack some (a placeholder made
    /// when a decoded record referenced an entity the session did not
    /// hold) first takes the values it has none for from the record the
    /// layers below memory hold, then is written; an instance loaded in
    /// full pays no such read.
    pub fn merge(&self, entity: &Entity) -> Result<Entity> {
        self.0.merge(entity, &mut HashMap::new())
    }
}

/// A string as a query literal.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `a is "1" and b is "2"`: the condition selecting one identity.
fn key_condition(names: &[String], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(name, value)| format!("{name} is {}", quote(value)))
        .collect::<Vec<_>>()
        .join(" and ")
}

impl SessionInner {
    /// The current stack, as a snapshot: the lock is held only to clone the
    /// `Arc`, never while the stack runs (which may decode, and so come back
    /// here, or encode, and so reach the server).
    pub(crate) fn cache(&self) -> Arc<Layered<String, Entity>> {
        Arc::clone(&self.cache.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn identities(&self) -> MutexGuard<'_, Identities> {
        self.identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The session's instance of `key`, if one is alive.
    fn live(&self, key: &EntityKey) -> Option<Entity> {
        self.identities()
            .map
            .get(key)
            .and_then(|identity| identity.instance.upgrade())
            .map(Entity)
    }

    /// The session's instance of `candidate`'s identity: the one alive, or
    /// else `candidate`, which becomes it. One step under the identities'
    /// lock, so two threads attaching instances of one identity get the
    /// same one.
    fn attach(&self, candidate: &Entity) -> Entity {
        let mut identities = self.identities();
        let identity = identities.slot(candidate);
        if let Some(instance) = identity.instance.upgrade() {
            return Entity(instance);
        }
        identity.instance = Arc::downgrade(&candidate.0);
        candidate.clone()
    }

    /// The session's instance for `found`, an entity the stack returned for
    /// `cache_key`. When `found` is not it (the memory layer dropped the
    /// instance while a handle kept it alive, so a lower layer decoded a new
    /// one; or two calls decoded one record at once), the instance gets
    /// the values of `found` it has none for, and is written through so
    /// that the memory layer holds it again. A pending write-through of
    /// the instance (its writer panicked) is made too.
    fn settle(&self, cache_key: String, found: &Entity) -> Result<Entity> {
        let attached = self.attach(found);
        if !attached.same(found) {
            fill_gaps(&attached, found);
            self.write_through(cache_key, &attached)?;
        } else if self.pending(attached.key()) {
            self.write_through(cache_key, &attached)?;
        }
        Ok(attached)
    }

    /// Whether a write-through of `key` is pending: asked for (`again`)
    /// while a call was writing, and left unmade because that call
    /// panicked. The next call that touches the identity makes it.
    fn pending(&self, key: &EntityKey) -> bool {
        self.identities()
            .map
            .get(key)
            .is_some_and(|identity| identity.again && !identity.writing)
    }

    /// Writes `entity`, the session's instance of its identity, through the
    /// whole stack with no lock held, so that a codec, a layer or the
    /// server may call back into the session (as `EncodeStrategy::All`
    /// does) from this thread or another.
    ///
    /// Write-throughs of one identity do not overlap: if one is under way
    /// (on any thread, this one included, further up), this call only asks
    /// it to write again, and returns. The writing call writes until no
    /// change asked for another write while it wrote. A codec encodes the
    /// instance as it is when the layer stores it, so the last store of
    /// every layer holds the latest state: no layer keeps an older encoding
    /// than a change that has been merged (a `Serialised` layer encodes
    /// and then stores, so two overlapping writes could store in the other
    /// order; hence one at a time). Returns the first failure.
    ///
    /// A [partial](Entity::is_partial) instance (a placeholder) first takes
    /// the values the layers below memory hold for it and it lacks (see
    /// [`make_whole`](Self::make_whole)), so that its encoding does not
    /// replace a fuller record there; if that read fails, nothing is
    /// written and the failure is returned. An instance known to hold what
    /// the lower layers hold pays no read.
    ///
    /// If a layer or a codec panics, the panic goes on to this call's
    /// caller; a write another call asked for meanwhile (it returned `Ok`,
    /// leaving its write to this one) stays pending, and the next call that
    /// touches the identity makes it (see [`Session::merge`]). No write is
    /// made while unwinding.
    fn write_through(&self, cache_key: String, entity: &Entity) -> Result<()> {
        {
            let mut identities = self.identities();
            let identity = identities.slot(entity);
            if identity.writing {
                identity.again = true;
                return Ok(());
            }
            identity.writing = true;
            identity.again = false;
        }
        let mut writer = Writer {
            session: self,
            key: entity.key(),
            done: false,
            owed: false,
        };
        let mut outcome = Ok(());
        loop {
            let written = self
                .make_whole(&cache_key, entity)
                .and_then(|()| self.cache().set(cache_key.clone(), entity.clone()));
            if outcome.is_ok() {
                outcome = written;
            }
            if !writer.again() {
                break;
            }
        }
        outcome
    }

    /// When `entity` is [partial](Entity::is_partial), fills the attributes
    /// it has no value for from the record the layers below memory hold for
    /// it (the first of them that holds one; nothing promoted), and marks it
    /// whole: also when they hold no record of it, as then writing it loses
    /// nothing. Called by the writing call only, with no lock held.
    ///
    /// Each layer is read directly, whatever the stack's error policy: under
    /// `Degrade` the stack would count a failed read as a miss, and writing
    /// the partial instance would then replace a fuller record. A failed
    /// read is returned, and nothing is written. A layer that itself turns
    /// its failures into misses (a `Layered` under `Degrade` used as one
    /// layer) cannot be told from one that holds nothing: see
    /// docs/ftrack.md.
    fn make_whole(&self, cache_key: &String, entity: &Entity) -> Result<()> {
        if !entity.is_partial() {
            return Ok(());
        }
        let mut stored = None;
        for layer in self.cache().layers().iter().skip(1) {
            if let Some(entry) = layer.get_entry(cache_key)? {
                stored = Some(entry.into_value());
                break;
            }
        }
        let stored = stored.filter(|stored| stored.key() == entity.key());
        if let Some(stored) = stored {
            fill_gaps(entity, &stored);
        }
        entity.mark_whole();
        Ok(())
    }

    /// The thread holding a [`CacheMut`], if any.
    fn changer(&self) -> MutexGuard<'_, Option<ThreadId>> {
        self.changer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache_key(&self, key: &EntityKey) -> Result<String> {
        self.key_maker.key(key)
    }

    /// The cached instance of `key`. An entry whose entity is not `key`
    /// (written under another schema or key maker) reads as a miss. It is
    /// not removed: by now the key may hold another writer's fresh value,
    /// and the write that follows the miss replaces it anyway.
    fn cached(&self, cache_key: &String, key: &EntityKey) -> Result<Option<Entity>> {
        Ok(self
            .cache()
            .get(cache_key)?
            .filter(|entity| entity.key() == key))
    }

    /// The query loading `projections` for `group`, all of `entity_type`.
    fn populate_expression(
        &self,
        entity_type: &str,
        group: &[&Entity],
        projections: &str,
    ) -> String {
        let names = self.schema.primary_key(entity_type);
        let condition = if names.len() == 1 {
            let values: Vec<String> = group
                .iter()
                .map(|e| quote(&e.key().primary_key[0]))
                .collect();
            format!("{} in ({})", names[0], values.join(", "))
        } else {
            group
                .iter()
                .map(|e| format!("({})", key_condition(names, &e.key().primary_key)))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        format!("select {projections} from {entity_type} where {condition}")
    }

    fn weak(self: &Arc<Self>) -> std::sync::Weak<Self> {
        Arc::downgrade(self)
    }

    /// A new instance of this session from a record, its values remote,
    /// references resolved by `resolve`.
    fn record_entity(
        self: &Arc<Self>,
        object: &Map<String, Json>,
        mut resolve: impl FnMut(&Map<String, Json>) -> Result<Entity>,
    ) -> Result<Entity> {
        let key = record_key(object, &self.schema)?;
        let mut attributes = BTreeMap::new();
        for (name, json) in object {
            if name != "__entity_type__" {
                let remote = value_from_json(json, &mut resolve)?;
                attributes.insert(
                    name.clone(),
                    Attribute {
                        local: Value::NotSet,
                        remote,
                    },
                );
            }
        }
        Ok(Entity::with_attributes(key, attributes, self.weak()))
    }

    /// A detached entity tree from a server record: the record's entity and
    /// every entity it references, each a new instance of this session.
    fn entity_from_record(self: &Arc<Self>, object: &Map<String, Json>) -> Result<Entity> {
        self.record_entity(object, |reference| self.entity_from_record(reference))
    }

    /// Merges server records; returns the attached instances.
    fn merge_records(self: &Arc<Self>, records: &[Json]) -> Result<Vec<Entity>> {
        let mut merged = HashMap::new();
        records
            .iter()
            .map(|record| {
                let object = record.as_object().ok_or_else(|| Error::Decode {
                    codec: "ftrack json",
                    source: format!("a query result that is not an object: {record}").into(),
                })?;
                let detached = self.entity_from_record(object)?;
                self.merge(&detached, &mut merged)
            })
            .collect()
    }

    /// Merges `incoming` into the attached instance of its identity: the
    /// session's instance (see [`settle`](Self::settle) for one the stack
    /// no longer holds), or `incoming` itself when there is none. For the
    /// local and remote values of each attribute: an incoming value that is
    /// set and differs replaces the attached one (entities merged in turn,
    /// `merged` stopping cycles); an incoming `NotSet` never clears. When
    /// anything changed, or the stack did not hold the attached instance,
    /// or a write-through of it is pending (its writer panicked), it is
    /// written through the whole cache (see
    /// [`write_through`](Self::write_through)). No lock is held across the
    /// stack's calls: the attributes are written under the instance's own
    /// lock, one at a time.
    fn merge(&self, incoming: &Entity, merged: &mut HashMap<EntityKey, Entity>) -> Result<Entity> {
        if let Some(attached) = merged.get(incoming.key()) {
            return Ok(attached.clone());
        }
        let cache_key = self.cache_key(incoming.key())?;
        let (attached, mut changed) = match self.cached(&cache_key, incoming.key())? {
            Some(found) => {
                let attached = self.attach(&found);
                let held = attached.same(&found);
                if !held {
                    fill_gaps(&attached, &found);
                }
                (attached, !held)
            }
            None => (self.attach(incoming), true),
        };
        merged.insert(incoming.key().clone(), attached.clone());
        // A snapshot: `incoming` may be `attached`, which is written below.
        let incoming_attributes = incoming.attributes().clone();
        for (name, Attribute { local, remote }) in incoming_attributes {
            if !local.is_set() && !remote.is_set() {
                continue;
            }
            let local = self.merge_value(local, merged)?;
            let remote = self.merge_value(remote, merged)?;
            let mut attributes = attached.attributes_mut();
            let slot = attributes.entry(name).or_default();
            changed |= replace_if_set(&mut slot.local, local);
            changed |= replace_if_set(&mut slot.remote, remote);
        }
        if changed || self.pending(attached.key()) {
            self.write_through(cache_key, &attached)?;
        }
        Ok(attached)
    }

    /// `value` with the entities it holds merged (see [`merge`](Self::merge)).
    fn merge_value(&self, value: Value, merged: &mut HashMap<EntityKey, Entity>) -> Result<Value> {
        Ok(match value {
            Value::Entity(e) => Value::Entity(self.merge(&e, merged)?),
            Value::Collection(c) => Value::Collection(
                c.iter()
                    .map(|e| self.merge(e, merged))
                    .collect::<Result<_>>()?,
            ),
            other => other,
        })
    }

    /// An entity decoded from a persistent layer: a new instance with the
    /// record's values; references resolve to the session's instances, or
    /// to placeholders (primary key only, kept in the memory layer) that
    /// load from the cache when read.
    pub(crate) fn decode_record(self: &Arc<Self>, object: &Map<String, Json>) -> Result<Entity> {
        self.record_entity(object, |reference| self.instance(reference))
    }

    /// The session's instance for a reference: the one alive, else the
    /// memory layer's, else a new placeholder put there.
    fn instance(self: &Arc<Self>, reference: &Map<String, Json>) -> Result<Entity> {
        let key = record_key(reference, &self.schema)?;
        if let Some(instance) = self.live(&key) {
            return Ok(instance);
        }
        let cache_key = self.cache_key(&key)?;
        let cache = self.cache();
        let Some(memory) = cache.layer(0) else {
            return Ok(self.attach(&Entity::placeholder(key, self.weak())));
        };
        if let Some(entity) = memory.get(&cache_key)?
            && entity.key() == &key
        {
            return Ok(self.attach(&entity));
        }
        let placeholder = Entity::placeholder(key, self.weak());
        let attached = self.attach(&placeholder);
        if attached.same(&placeholder) {
            memory.set(cache_key, placeholder)?;
        }
        Ok(attached)
    }

    /// Loads `name` of `entity` (whose value is not set): first from the
    /// layers below memory, then, with auto-populate on, from the server.
    /// A record from a lower layer fills the values the session's instance
    /// (`entity` itself, when there is no other) has none for; the server's
    /// values are merged. `entity` gets the value too when it is another
    /// instance (see [`adopt`]). A pending write-through of the session's
    /// instance (its writer panicked) is made first.
    pub(crate) fn fill(self: &Arc<Self>, entity: &Entity, name: &str) -> Result<Value> {
        let cache_key = self.cache_key(entity.key())?;
        if self.pending(entity.key())
            && let Some(instance) = self.live(entity.key())
        {
            self.write_through(cache_key.clone(), &instance)?;
        }
        // The layers below memory, by the stack's own read (its policy, its
        // failure hook); nothing is promoted: the merge below updates the
        // instance memory already holds.
        let lower: Option<Entity> = self
            .cache()
            .lookup(&cache_key, 1, false)?
            .map(Entry::into_value);
        if let Some(stored) = lower
            && stored.key() == entity.key()
            && stored.peek(name).is_set()
        {
            let attached = self.attach(entity);
            if fill_gaps(&attached, &stored) {
                self.write_through(cache_key, &attached)?;
            }
            let value = adopt(entity, &attached, name);
            if value.is_set() {
                return Ok(value);
            }
        }
        if !self.auto_populate.load(Ordering::SeqCst) {
            return Ok(Value::NotSet);
        }
        let expression = self.populate_expression(entity.entity_type(), &[entity], name);
        let found = Session(self.clone()).query(&expression)?;
        Ok(
            match found.iter().find(|found| found.key() == entity.key()) {
                Some(attached) => adopt(entity, attached, name),
                None => entity.peek(name),
            },
        )
    }
}

/// The value of `name` in `entity` once a fill loaded it into `attached`,
/// the session's instance of the same identity. When that is another
/// instance (`entity` was decoded by the codec or read from the stack
/// directly, and is not the session's), the remote value is copied into
/// `entity` as well, so that reading a handle loads its value wherever the
/// session keeps the identity.
fn adopt(entity: &Entity, attached: &Entity, name: &str) -> Value {
    if !attached.same(entity) {
        let remote = attached.attribute(name).remote;
        let mut attributes = entity.attributes_mut();
        replace_if_set(
            &mut attributes.entry(name.to_owned()).or_default().remote,
            remote,
        );
    }
    entity.peek(name)
}

/// Copies into `instance` the attributes of `found` (another instance of
/// the same identity, read from the stack) that `instance` has no value
/// for, local or remote: the session's instance holds the session's latest
/// state, which a record read from a lower layer may predate, so the
/// record fills gaps and never overrides. Whether anything was copied.
///
/// When `found` is not [partial](Entity::is_partial) (a record decoded from
/// a layer, or an instance that holds what the lower layers held),
/// `instance` now holds every value it held, and is no longer partial.
fn fill_gaps(instance: &Entity, found: &Entity) -> bool {
    let values = found.attributes().clone();
    let mut attributes = instance.attributes_mut();
    let mut filled = false;
    for (name, attribute) in values {
        if !attribute.local.is_set() && !attribute.remote.is_set() {
            continue;
        }
        let slot = attributes.entry(name).or_default();
        if !slot.local.is_set() && !slot.remote.is_set() {
            *slot = attribute;
            filled = true;
        }
    }
    drop(attributes);
    if !found.is_partial() {
        instance.mark_whole();
    }
    filled
}

/// The write-through of one identity under way: see
/// [`SessionInner::write_through`]. Dropped without
/// [`again`](Writer::again) having said it is done (a layer or a codec
/// panicked), it still ends the write-through, so that later ones are not
/// left waiting for a writer that is gone, and keeps `again` (setting it
/// back if the write under way was one another call asked for): a write
/// that another call asked for stays pending, for the next call that
/// touches the identity (no write is made here, while unwinding: a second panic in
/// a `Drop` would abort the process).
struct Writer<'a> {
    session: &'a SessionInner,
    key: &'a EntityKey,
    done: bool,
    /// The write under way was asked for by another call (taken from
    /// `again`): if it does not finish, `again` is set back.
    owed: bool,
}

impl Writer<'_> {
    /// Whether to write again (a change asked for it since the last write);
    /// if not, the write-through ends, in the same step, so that no change
    /// asks a writer that has stopped.
    fn again(&mut self) -> bool {
        self.owed = false;
        let mut identities = self.session.identities();
        let Some(identity) = identities.map.get_mut(self.key) else {
            self.done = true;
            return false;
        };
        if identity.again {
            identity.again = false;
            self.owed = true;
            return true;
        }
        identity.writing = false;
        self.done = true;
        false
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if !self.done
            && let Some(identity) = self.session.identities().map.get_mut(self.key)
        {
            identity.writing = false;
            identity.again |= self.owed;
        }
    }
}

/// Puts `value` in `slot` if it is set and not [`identical`] to what is
/// there; whether it did.
fn replace_if_set(slot: &mut Value, value: Value) -> bool {
    let replace = value.is_set() && !identical(slot, &value);
    if replace {
        *slot = value;
    }
    replace
}

/// Equal values, where entities must be the same instance.
fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Entity(x), Value::Entity(y)) => x.same(y),
        (Value::Collection(x), Value::Collection(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| x.same(y))
        }
        _ => a == b,
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cache = self.0.cache();
        write!(f, "Session({:?}, cache: {:?})", self.0.remote, cache)
    }
}
