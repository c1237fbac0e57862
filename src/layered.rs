//! [`Layered`]: a read-through, write-through stack of caches.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hashbrown::HashSet;

use crate::cache::Cache;
use crate::error::{Error, Operation, Result};

/// What a [`Layered`] cache does when one of its layers fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// A failing layer fails the call (after the other layers have been
    /// written or cleared, so none is left holding a stale value that it
    /// could have dropped). The default.
    #[default]
    Strict,
    /// A failing layer counts as a miss (for reads) or is skipped (for
    /// writes); the failure goes to the [`on_failure`](Layered::on_failure)
    /// hook and the [`failures`](Layered::failures) count. Use it so that an
    /// outage of a remote layer does not take reads down.
    Degrade,
}

/// A layer's failure that did not fail the call: reported to the
/// [`on_failure`](Layered::on_failure) hook.
#[derive(Debug)]
#[non_exhaustive]
pub struct LayerFailure<'a> {
    /// The layer's depth, 0 being the top.
    pub depth: usize,
    /// What the layer was asked to do.
    pub operation: Operation,
    /// What it answered.
    pub error: &'a Error,
}

impl fmt::Display for LayerFailure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "layer {} failed during {}: {}",
            self.depth, self.operation, self.error
        )
    }
}

type FailureHook = Arc<dyn Fn(&LayerFailure<'_>) + Send + Sync>;

/// A stack of caches that reads through and writes through, with the
/// semantics of ftrack's `LayeredCache`, made explicit:
///
/// - [`get`](Cache::get) asks the layers from the top (depth 0). On a hit at
///   depth `d` it sets the value on every layer above `d` (all of which
///   missed) and returns it; the layers below `d` are not touched. A
///   promotion that fails is reported, never a failed read.
/// - [`set`](Cache::set) writes to every layer, top first.
/// - [`remove`](Cache::remove) removes from every layer and returns the
///   value of the shallowest layer that had one.
/// - [`keys`](Cache::keys) is the union of the layers' keys, each once, in
///   the order first seen from the top; [`values`](Cache::values) has one
///   value per key, from the shallowest layer that has it (no promotion).
/// - [`clear`](Cache::clear) and [`clear_matching`](Cache::clear_matching)
///   act on every layer.
///
/// What a failing layer does to a call is set by the [`ErrorPolicy`].
///
/// The layers are not updated atomically together: a `get` that promotes can
/// race with a `remove` of the same key and put the value back in an upper
/// layer. Callers that need one answer per key serialise those calls.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use layercache::{Cache, Layered, MemoryCache};
///
/// # fn main() -> layercache::Result<()> {
/// let top = Arc::new(MemoryCache::new());
/// let bottom = Arc::new(MemoryCache::new());
/// let cache = Layered::new().with_layer(top.clone()).with_layer(bottom.clone());
///
/// bottom.set("k".to_string(), 7)?;          // only the lower layer has it
/// assert_eq!(cache.get(&"k".to_string())?, Some(7));
/// assert_eq!(top.get(&"k".to_string())?, Some(7)); // promoted
///
/// assert_eq!(format!("{cache:?}"), "Layered[Memory(1 entries), Memory(1 entries)]");
/// # Ok(())
/// # }
/// ```
pub struct Layered<K, V> {
    layers: Vec<Box<dyn Cache<K, V>>>,
    policy: ErrorPolicy,
    on_failure: Option<FailureHook>,
    failures: AtomicU64,
}

impl<K, V> Default for Layered<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> Layered<K, V> {
    /// An empty stack with the [`Strict`](ErrorPolicy::Strict) policy.
    /// An empty stack misses every read and stores nothing.
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            policy: ErrorPolicy::Strict,
            on_failure: None,
            failures: AtomicU64::new(0),
        }
    }

    /// This stack with `layer` added at the bottom.
    pub fn with_layer(mut self, layer: impl Cache<K, V> + 'static) -> Self {
        self.push(layer);
        self
    }

    /// Add `layer` at the bottom of the stack.
    pub fn push(&mut self, layer: impl Cache<K, V> + 'static) {
        self.push_boxed(Box::new(layer));
    }

    /// Add an already boxed `layer` at the bottom of the stack.
    pub fn push_boxed(&mut self, layer: Box<dyn Cache<K, V>>) {
        self.layers.push(layer);
    }

    /// The layers, top first.
    pub fn layers(&self) -> &[Box<dyn Cache<K, V>>] {
        &self.layers
    }

    /// The layers, top first, to reorder, insert or remove.
    pub fn layers_mut(&mut self) -> &mut Vec<Box<dyn Cache<K, V>>> {
        &mut self.layers
    }

    /// The layer at `depth` (0 is the top), if there is one.
    pub fn layer(&self, depth: usize) -> Option<&dyn Cache<K, V>> {
        self.layers.get(depth).map(|layer| &**layer)
    }

    /// The number of layers.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// This stack with the error `policy`.
    pub fn with_policy(mut self, policy: ErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The error policy.
    pub fn policy(&self) -> ErrorPolicy {
        self.policy
    }

    /// This stack with `hook` called for every layer failure that does not
    /// fail the call: all failures under [`ErrorPolicy::Degrade`], failed
    /// promotions, and failures after the first one of a call under
    /// [`ErrorPolicy::Strict`]. The hook runs on the calling thread.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use layercache::{ErrorPolicy, Layered, MemoryCache};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let cache: Layered<String, u32> = Layered::new()
    ///     .with_layer(MemoryCache::new())
    ///     .with_policy(ErrorPolicy::Degrade)
    ///     .on_failure(move |failure| log.lock().unwrap().push(failure.to_string()));
    /// # let _ = cache;
    /// ```
    pub fn on_failure(mut self, hook: impl Fn(&LayerFailure<'_>) + Send + Sync + 'static) -> Self {
        self.on_failure = Some(Arc::new(hook));
        self
    }

    /// How many layer failures did not fail their call (see
    /// [`on_failure`](Layered::on_failure)) since the stack was made.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn report(&self, depth: usize, operation: Operation, error: &Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.on_failure {
            hook(&LayerFailure {
                depth,
                operation,
                error,
            });
        }
    }

    fn wrap(&self, depth: usize, operation: Operation, error: Error) -> Error {
        Error::Layer {
            depth,
            layer: format!("{:?}", self.layers[depth]),
            operation,
            source: Box::new(error),
        }
    }

    /// Applies the policy to a layer's failure in a call that stops at the
    /// first failure (reads): `Err` under `Strict`, reported under `Degrade`.
    fn fail(&self, depth: usize, operation: Operation, error: Error) -> Result<()> {
        match self.policy {
            ErrorPolicy::Strict => Err(self.wrap(depth, operation, error)),
            ErrorPolicy::Degrade => {
                self.report(depth, operation, &error);
                Ok(())
            }
        }
    }

    /// Applies the policy to a layer's outcome in a call that goes on to
    /// every layer (writes): the first failure becomes the call's error under
    /// `Strict`; everything else is reported.
    fn collect<T>(
        &self,
        outcome: &mut Result<()>,
        depth: usize,
        operation: Operation,
        result: Result<T>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                if self.policy == ErrorPolicy::Strict && outcome.is_ok() {
                    *outcome = Err(self.wrap(depth, operation, error));
                } else {
                    self.report(depth, operation, &error);
                }
                None
            }
        }
    }

    /// The rest of a `get` whose top layer answered `answer` (a miss or an
    /// error), kept out of line so the hit path stays small.
    #[inline(never)]
    fn miss_at_top(&self, key: &K, answer: Result<Option<V>>) -> Result<Option<V>>
    where
        K: Clone,
        V: Clone,
    {
        if let Err(error) = answer {
            self.fail(0, Operation::Get, error)?;
        }
        self.lookup(key, 1, true)
    }

    /// Asks each layer for `key` from depth `from` down, promoting a hit
    /// into the layers above it if asked; a failing layer is handled by the
    /// stack's policy (and reported to its hook) as in `get`.
    pub(crate) fn lookup(&self, key: &K, from: usize, promote: bool) -> Result<Option<V>>
    where
        K: Clone,
        V: Clone,
    {
        for (depth, layer) in self.layers.iter().enumerate().skip(from) {
            match layer.get(key) {
                Ok(Some(value)) => {
                    if promote {
                        for (above, upper) in self.layers[..depth].iter().enumerate() {
                            if let Err(error) = upper.set(key.clone(), value.clone()) {
                                self.report(above, Operation::Promote, &error);
                            }
                        }
                    }
                    return Ok(Some(value));
                }
                Ok(None) => {}
                Err(error) => self.fail(depth, Operation::Get, error)?,
            }
        }
        Ok(None)
    }
}

impl<K, V> Cache<K, V> for Layered<K, V>
where
    K: Hash + Eq + Clone + Send + Sync,
    V: Clone + Send + Sync,
{
    #[inline]
    fn get(&self, key: &K) -> Result<Option<V>> {
        // The top layer's hit is the hot path: return its answer as it is.
        let Some(top) = self.layers.first() else {
            return Ok(None);
        };
        let answer = top.get(key);
        if let Ok(Some(_)) = answer {
            return answer;
        }
        self.miss_at_top(key, answer)
    }

    fn set(&self, key: K, value: V) -> Result<()> {
        let Some((last, above)) = self.layers.split_last() else {
            return Ok(());
        };
        let mut outcome = Ok(());
        for (depth, layer) in above.iter().enumerate() {
            let result = layer.set(key.clone(), value.clone());
            self.collect(&mut outcome, depth, Operation::Set, result);
        }
        let result = last.set(key, value);
        self.collect(&mut outcome, above.len(), Operation::Set, result);
        outcome
    }

    fn remove(&self, key: &K) -> Result<Option<V>> {
        let mut outcome = Ok(());
        let mut shallowest = None;
        for (depth, layer) in self.layers.iter().enumerate() {
            let removed = self.collect(&mut outcome, depth, Operation::Remove, layer.remove(key));
            if shallowest.is_none() {
                shallowest = removed.flatten();
            }
        }
        outcome.map(|()| shallowest)
    }

    fn keys(&self) -> Result<Vec<K>> {
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        for (depth, layer) in self.layers.iter().enumerate() {
            match layer.keys() {
                Ok(layer_keys) => {
                    for key in layer_keys {
                        if seen.insert(key.clone()) {
                            keys.push(key);
                        }
                    }
                }
                Err(error) => self.fail(depth, Operation::Keys, error)?,
            }
        }
        Ok(keys)
    }

    fn values(&self) -> Result<Vec<V>> {
        let keys = self.keys()?;
        let mut values = Vec::with_capacity(keys.len());
        for key in &keys {
            if let Some(value) = self.lookup(key, 0, false)? {
                values.push(value);
            }
        }
        Ok(values)
    }

    fn clear(&self) -> Result<()> {
        let mut outcome = Ok(());
        for (depth, layer) in self.layers.iter().enumerate() {
            self.collect(&mut outcome, depth, Operation::Clear, layer.clear());
        }
        outcome
    }

    /// Clears matching keys from every layer. The count is of distinct keys
    /// that matched in at least one layer: a key present in several layers
    /// counts once.
    fn clear_matching(&self, matches: &dyn Fn(&K) -> bool) -> Result<usize> {
        let matched = Mutex::new(HashSet::new());
        let record = |key: &K| {
            let hit = matches(key);
            if hit {
                matched
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.clone());
            }
            hit
        };
        let mut outcome = Ok(());
        for (depth, layer) in self.layers.iter().enumerate() {
            self.collect(
                &mut outcome,
                depth,
                Operation::ClearMatching,
                layer.clear_matching(&record),
            );
        }
        let count = matched
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        outcome.map(|()| count)
    }
}

impl<K, V> fmt::Debug for Layered<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Layered")?;
        f.debug_list().entries(&self.layers).finish()
    }
}
