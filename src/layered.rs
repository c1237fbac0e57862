//! [`Layered`]: a read-through, write-through stack of caches.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use hashbrown::{DefaultHashBuilder, HashSet};

use crate::cache::{Cache, Invalidation, Watcher, Watchers};
use crate::clock::{Clock, SystemClock};
use crate::entry::Entry;
use crate::error::{Error, Operation, Result};
use std::hash::BuildHasher;

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

/// A read of one layer: its `get` or its `get_entry`.
type LayerRead<'a, K, V, T> = dyn Fn(&dyn Cache<K, V>, &K) -> Result<Option<T>> + 'a;

/// Striped per-key generations: what lets a promotion see that a `set`,
/// `remove` or invalidation of its key ran while it was reading a lower
/// layer.
///
/// Each stripe is one word: the number of writers in flight in its top 16
/// bits, a count of finished writes below. A writer adds [`BEGIN`] before
/// it touches any layer and [`END`] after it is done with all of them. A
/// promotion loads the word before it reads the lower layers and again
/// after it has written the upper ones; it keeps what it wrote only if the
/// word was the same both times and showed no writer in flight. Then every
/// writer of the key either finished before the promotion read (so it read
/// that writer's value or a later one) or began after the promotion wrote
/// (so the writer's value replaces the promoted one). Otherwise the
/// promotion removes what it wrote: a spurious miss, never a stale hit.
///
/// Two writes of a key that overlap can reach the layers in different
/// orders (the top gets one's value last, the bottom the other's), so a
/// `set` also checks the word when it has written every layer: if another
/// writer was in flight when it began, or began or ended since, it removes
/// the key from the upper layers before it ends. Removals need no such
/// check: they leave no value behind.
///
/// A promotion's write lands in the upper layers before it can see that it
/// must undo it, so for that moment an upper layer may hold an older value
/// than a write that has already returned. Promotions therefore mark
/// themselves in a second word per stripe (promotions in flight in the top
/// 16 bits, finished promotions below), from before their first write to
/// after their undo; a read that hits the top layer loads that word before
/// and after, and trusts the hit only if no promotion was in flight and
/// none began or ended in between. Otherwise it reads the lower layers, as
/// on a miss. To keep hashing off the hot path, the read first checks the
/// same pair of counts kept for the whole stack, and looks at its key's
/// stripe only when a promotion ran somewhere meanwhile.
///
/// Keys that share a stripe only cost each other a skipped promotion, an
/// upper-layer miss, or a read that goes down a layer.
struct Generations {
    stripes: Box<[Stripe]>,
    hasher: DefaultHashBuilder,
}

/// The two words of a stripe, on one cache line.
#[derive(Default)]
struct Stripe {
    /// Writes (set, remove, clear, invalidation): in flight and finished.
    writes: AtomicU64,
    /// Promotions: in flight and finished.
    promotions: AtomicU64,
}

/// A promotion in flight, on its key's stripe and in the stack's count;
/// ends when dropped (also when a layer panics, so that reads do not go
/// down a layer for good).
struct Promoting<'a>([&'a AtomicU64; 2]);

impl<'a> Promoting<'a> {
    fn begin(stripe: &'a AtomicU64, stack: &'a AtomicU64) -> Self {
        stack.fetch_add(BEGIN, Ordering::SeqCst);
        stripe.fetch_add(BEGIN, Ordering::SeqCst);
        Self([stripe, stack])
    }
}

impl Drop for Promoting<'_> {
    fn drop(&mut self) {
        for word in self.0 {
            word.fetch_add(END, Ordering::SeqCst);
        }
    }
}

/// The unit of a stripe word's in-flight count.
const BEGIN: u64 = 1 << 48;
/// One fewer in flight and one more finished, as one addition (wrapping;
/// the in-flight count is at least one when it is applied).
const END: u64 = 1u64.wrapping_sub(BEGIN);
/// The bits that count operations in flight.
const IN_FLIGHT: u64 = !(BEGIN - 1);
/// Stripes per stack: 16 KiB of counters.
const STRIPES: usize = 1024;

impl Generations {
    fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    #[inline]
    fn stripe<K: Hash + ?Sized>(&self, key: &K) -> &Stripe {
        let hash = self.hasher.hash_one(key);
        &self.stripes[(hash >> 32) as usize % STRIPES]
    }

    /// Marks a write of `key` in flight until the guard is dropped (also
    /// when a layer panics, so a stripe is never left busy).
    fn write<K: Hash + ?Sized>(&self, key: &K) -> Writing<'_> {
        let stripe = self.stripe(key);
        let before = stripe.writes.fetch_add(BEGIN, Ordering::SeqCst);
        Writing {
            stripes: std::slice::from_ref(stripe),
            before,
        }
    }

    /// Marks a write of every key in flight until the guard is dropped.
    fn write_all(&self) -> Writing<'_> {
        for stripe in self.stripes.iter() {
            stripe.writes.fetch_add(BEGIN, Ordering::SeqCst);
        }
        Writing {
            stripes: &self.stripes,
            before: 0,
        }
    }
}

/// A write in flight on some stripes; ends when dropped.
struct Writing<'a> {
    stripes: &'a [Stripe],
    /// The word of the only stripe before this write began (unused for a
    /// write of every stripe).
    before: u64,
}

impl Writing<'_> {
    /// Whether another write overlapped this one so far: it was in flight
    /// when this one began, or began or ended since. Always `true` for a
    /// write of every stripe.
    fn overlapped(&self) -> bool {
        let [stripe] = self.stripes else {
            return true;
        };
        self.before & IN_FLIGHT != 0
            || stripe.writes.load(Ordering::SeqCst) != self.before.wrapping_add(BEGIN)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        for stripe in self.stripes {
            stripe.writes.fetch_add(END, Ordering::SeqCst);
        }
    }
}

/// What a stack shares with the watchers it gives its layers: they run on
/// other threads, when a layer learns that someone else changed a key, and
/// outlive no stack (they hold it weakly).
struct Core<K, V> {
    generations: Generations,
    /// Promotions in flight anywhere in the stack (top 16 bits) and
    /// finished (below): what a read of the top layer checks first, with
    /// no hashing; only when a promotion ran does it look at its key's
    /// stripe.
    promotions: AtomicU64,
    /// The layers with an identity each, top first: a watcher finds its
    /// layer's current depth here. Kept equal to `Layered::layers` (of the
    /// newest copy, when a stack is forked: see `Layered::fork`).
    layers: RwLock<Vec<Member<K, V>>>,
    next_id: AtomicU64,
    /// Watchers of the stack itself (an outer stack), told after the stack
    /// has acted.
    watchers: Watchers<K>,
    on_failure: RwLock<Option<FailureHook>>,
    failures: AtomicU64,
    /// Bumped when a copy of the stack (see [`Layered::fork`]) is put in
    /// place with [`Layered::publish`]: a copy whose own list is older reads
    /// and writes through `published`.
    changes: AtomicU64,
    /// The layers of the copy published last.
    published: RwLock<Vec<Arc<dyn Cache<K, V>>>>,
}

impl<K, V> Core<K, V> {
    fn report(&self, depth: usize, operation: Operation, error: &Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let hook = self
            .on_failure
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook(&LayerFailure {
                depth,
                operation,
                error,
            });
        }
    }

    /// The layer `id` reported `invalidation`: stop promotions of the key,
    /// drop it from the layers above, and tell the stack's own watchers.
    fn invalidated(&self, id: u64, invalidation: Invalidation<'_, K>)
    where
        K: Hash,
    {
        // The layers above, cloned out so no lock is held while they run.
        let above: Vec<Arc<dyn Cache<K, V>>> = {
            let layers = self.layers.read().unwrap_or_else(PoisonError::into_inner);
            let Some(depth) = layers.iter().position(|member| member.id == id) else {
                return; // the layer has left the stack
            };
            layers[..depth]
                .iter()
                .map(|member| member.layer.clone())
                .collect()
        };
        match invalidation {
            Invalidation::Key(key) => {
                let _writing = self.generations.write(key);
                for (depth, layer) in above.iter().enumerate() {
                    if let Err(error) = layer.remove(key) {
                        self.report(depth, Operation::Remove, &error);
                    }
                }
            }
            Invalidation::All => {
                let _writing = self.generations.write_all();
                for (depth, layer) in above.iter().enumerate() {
                    if let Err(error) = layer.clear() {
                        self.report(depth, Operation::Clear, &error);
                    }
                }
            }
        }
        self.watchers.report(invalidation);
    }
}

/// A layer as its stack's watchers see it.
struct Member<K, V> {
    id: u64,
    layer: Arc<dyn Cache<K, V>>,
    /// Whether the layer said it reports changes made by others.
    reports: bool,
}

/// The watcher a stack gives each of its layers.
struct LayerWatcher<K, V> {
    core: Weak<Core<K, V>>,
    id: u64,
}

impl<K: Hash + Send + Sync, V: Send + Sync> Watcher<K> for LayerWatcher<K, V> {
    fn invalidated(&self, invalidation: Invalidation<'_, K>) {
        if let Some(core) = self.core.upgrade() {
            core.invalidated(self.id, invalidation);
        }
    }

    /// Active while the stack lives and the layer is still in it.
    fn is_active(&self) -> bool {
        self.core.upgrade().is_some_and(|core| {
            core.layers
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|member| member.id == self.id)
        })
    }
}

/// A stack of caches that reads through and writes through, with the
/// semantics of ftrack's `LayeredCache`, made explicit:
///
/// - [`get`](Cache::get) asks the layers from the top (depth 0). On a hit at
///   depth `d` it *promotes* the entry: sets it, with its deadlines, on every
///   layer above `d` (all of which missed), and returns it; the layers below
///   `d` are not touched. A promotion that fails is reported, never a
///   failed read.
/// - [`set`](Cache::set) writes to every layer, top first. A layer whose
///   write fails (or that refuses the entry's deadlines, as a
///   `FileCache` does) has the key removed instead, so
///   that it never serves the older value.
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
/// # What promotion guarantees
///
/// The layers are separate caches, not updated atomically together, but a
/// promotion never leaves an upper layer holding an older value than the
/// layers below, and never makes an entry live longer:
///
/// - The promoted entry keeps the deadlines the lower layer gave it.
/// - A `set`, `remove`, `clear` or invalidation of the key that overlaps a
///   promotion (through this stack) makes the promotion undo its write: the
///   next read goes down again and finds the newer value. A per-key
///   generation, striped over 1024 counters, detects the overlap; see
///   `docs/concepts.md`.
/// - A layer that reports changes made by others (see [`Cache::watch`]) has
///   the key dropped from every layer above it and counts as such a write.
/// - Two writes of the key that overlap (a `set` and another `set` or a
///   `remove`) may reach the layers in different orders; the `set` sees the
///   overlap and drops the key from the upper layers before it returns, so
///   no upper layer is left disagreeing with the bottom one.
///
/// - A read that hits the top layer while a promotion of a key in the same
///   stripe is in flight does not trust the hit and reads the layers below
///   (the promotion may be about to undo what it wrote), so no read that
///   starts after a write returned sees a value older than that write.
///
/// Limits: writes that bypass the stack (straight into one layer) are not
/// seen: write through the stack, or have the layer report them. A
/// promotion's undo is a `remove`: if that fails (reported to
/// [`on_failure`](Layered::on_failure)), or a layer panics after storing,
/// the older value can stay in that layer until it drops it; give such an
/// upper layer a time to live.
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
/// assert_eq!(format!("{cache:?}"), "Layered[Memory(1 entry), Memory(1 entry)]");
/// # Ok(())
/// # }
/// ```
pub struct Layered<K, V> {
    /// The layers, top first: read without a lock on every call.
    layers: Vec<Arc<dyn Cache<K, V>>>,
    policy: ErrorPolicy,
    core: Arc<Core<K, V>>,
    /// The `core.changes` that `layers` reflects.
    seen: u64,
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
            core: Arc::new(Core {
                generations: Generations::new(),
                promotions: AtomicU64::new(0),
                layers: RwLock::new(Vec::new()),
                next_id: AtomicU64::new(0),
                watchers: Watchers::new(),
                on_failure: RwLock::new(None),
                failures: AtomicU64::new(0),
                changes: AtomicU64::new(0),
                published: RwLock::new(Vec::new()),
            }),
            seen: 0,
        }
    }

    /// The layers, top first.
    pub fn layers(&self) -> &[Arc<dyn Cache<K, V>>] {
        &self.layers
    }

    /// The layer at `depth` (0 is the top), if there is one.
    pub fn layer(&self, depth: usize) -> Option<&dyn Cache<K, V>> {
        self.layers.get(depth).map(|layer| &**layer)
    }

    /// The number of layers.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Take the layer at `depth` out of the stack (it stops being watched
    /// for this stack). `None` if there is no such layer.
    pub fn remove_layer(&mut self, depth: usize) -> Option<Arc<dyn Cache<K, V>>> {
        if depth >= self.layers.len() {
            return None;
        }
        self.core
            .layers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(depth);
        Some(self.layers.remove(depth))
    }

    /// A copy of this stack to change and then use in its place, while
    /// calls already under way finish on this one: the same layers and
    /// policy, and the same shared state (failure hook and count, watchers,
    /// per-key generations), so that promotions and writes on the two copies
    /// still see each other and keep the guarantees of one stack. Only the
    /// newest copy may have its layers changed: the watchers follow its
    /// layers. Once it is [published](Self::publish), reads and writes
    /// through an older copy go to its layers (so a layer it added never
    /// misses a write, nor keeps a key an older copy removed, and no older
    /// copy reads a layer it took out); until then they keep to their own,
    /// so a change made in several steps is never seen half made.
    #[cfg(feature = "ftrack")]
    pub(crate) fn fork(&self) -> Self {
        Self {
            layers: self.layers.clone(),
            policy: self.policy,
            core: Arc::clone(&self.core),
            seen: self.seen,
        }
    }

    /// Puts this copy's layers in place of every older copy's (see `fork`):
    /// from now on their reads and writes go through these layers.
    #[cfg(feature = "ftrack")]
    pub(crate) fn publish(&mut self) {
        let mut published = self
            .core
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        published.clone_from(&self.layers);
        // Under the lock, so that a copy that sees the new count reads
        // the list it stands for.
        self.seen = self.core.changes.fetch_add(1, Ordering::AcqRel) + 1;
    }

    /// When a newer copy of this stack was published (see `fork`), a
    /// stack over the layers as they are now, for a write to go through.
    /// Called after the write is registered in the generations: a layer
    /// added after this check can only be filled by promotions, which see
    /// the write and drop what they read.
    fn newest(&self) -> Option<Self> {
        if self.core.changes.load(Ordering::Acquire) == self.seen {
            return None;
        }
        let published = self
            .core
            .published
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Some(Self {
            layers: published.clone(),
            policy: self.policy,
            core: Arc::clone(&self.core),
            seen: self.core.changes.load(Ordering::Acquire),
        })
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
    /// promotions and invalidations, and failures after the first one of a
    /// call under [`ErrorPolicy::Strict`]. The hook runs on the calling
    /// thread (for an invalidation, the thread that reported it).
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
    pub fn on_failure(self, hook: impl Fn(&LayerFailure<'_>) + Send + Sync + 'static) -> Self {
        *self
            .core
            .on_failure
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(hook));
        self
    }

    /// How many layer failures did not fail their call (see
    /// [`on_failure`](Layered::on_failure)) since the stack was made.
    pub fn failures(&self) -> u64 {
        self.core.failures.load(Ordering::Relaxed)
    }

    fn report(&self, depth: usize, operation: Operation, error: &Error) {
        self.core.report(depth, operation, error);
    }

    /// After the layer at `depth` failed to store `key` (or refused the
    /// entry's deadlines), removes the key from it, so that it cannot serve
    /// the older value once the layers above lose the new one.
    fn forget(&self, depth: usize, key: &K) {
        if let Err(error) = self.layers[depth].remove(key) {
            self.report(depth, Operation::Remove, &error);
        }
    }

    fn wrap(&self, depth: usize, operation: Operation, error: Error) -> Error {
        let mut layer = format!("{:?}", self.layers[depth]);
        // Up to the first bracket outside `<...>`: `Serialised<FnCodec(x)>`
        // keeps its codec whole.
        let mut angles = 0usize;
        let end = layer.char_indices().find_map(|(at, c)| {
            match c {
                '<' => angles += 1,
                '>' => angles = angles.saturating_sub(1),
                '(' | '[' | '{' if angles == 0 => return Some(at),
                _ => {}
            }
            None
        });
        if let Some(end) = end {
            layer.truncate(end);
            layer.truncate(layer.trim_end().len());
        }
        Error::Layer {
            depth,
            layer,
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
}

impl<K, V> Layered<K, V>
where
    K: Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// This stack with `layer` added at the bottom.
    pub fn with_layer(mut self, layer: impl Cache<K, V> + 'static) -> Self {
        self.push(layer);
        self
    }

    /// Add `layer` at the bottom of the stack.
    pub fn push(&mut self, layer: impl Cache<K, V> + 'static) {
        self.insert_layer(self.layers.len(), Arc::new(layer));
    }

    /// Add an already boxed `layer` at the bottom of the stack.
    pub fn push_boxed(&mut self, layer: Box<dyn Cache<K, V>>) {
        self.insert_layer(self.layers.len(), Arc::from(layer));
    }

    /// Put `layer` at `depth` (0 is the top; at most [`depth`](Self::depth)),
    /// moving the layers from there down by one. The stack watches it for
    /// changes made by others (see [`Cache::watch`]).
    ///
    /// # Panics
    ///
    /// If `depth` is greater than the number of layers, as `Vec::insert`.
    pub fn insert_layer(&mut self, depth: usize, layer: Arc<dyn Cache<K, V>>) {
        let id = self.core.next_id.fetch_add(1, Ordering::Relaxed);
        self.layers.insert(depth, layer.clone());
        self.core
            .layers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                depth,
                Member {
                    id,
                    layer: layer.clone(),
                    reports: false,
                },
            );
        // Watched after it is in place, so that a report finds its depth.
        let reports = layer.watch(Arc::new(LayerWatcher {
            core: Arc::downgrade(&self.core),
            id,
        }));
        let mut layers = self
            .core
            .layers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(member) = layers.iter_mut().find(|member| member.id == id) {
            member.reports = reports;
        }
    }
}

/// A stack of the layers in order, top first, with the
/// [`Strict`](ErrorPolicy::Strict) policy: `layers.into_iter().collect()`.
///
/// ```
/// use std::sync::Arc;
/// use layercache::{Cache, Layered, MemoryCache};
///
/// let layers: Vec<Arc<dyn Cache<u32, String>>> = vec![
///     Arc::new(MemoryCache::new()),
///     Arc::new(MemoryCache::new()),
/// ];
/// let stack: Layered<u32, String> = layers.into_iter().collect();
/// assert_eq!(stack.depth(), 2);
/// stack.set(1, "one".to_string()).unwrap();
/// assert_eq!(stack.layer(1).unwrap().get(&1).unwrap(), Some("one".to_string()));
/// ```
impl<K, V> FromIterator<Arc<dyn Cache<K, V>>> for Layered<K, V>
where
    K: Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    fn from_iter<I: IntoIterator<Item = Arc<dyn Cache<K, V>>>>(layers: I) -> Self {
        let mut stack = Self::new();
        stack.extend(layers);
        stack
    }
}

/// Boxed layers, in order, top first: see the `Arc` form above.
impl<K, V> FromIterator<Box<dyn Cache<K, V>>> for Layered<K, V>
where
    K: Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    fn from_iter<I: IntoIterator<Item = Box<dyn Cache<K, V>>>>(layers: I) -> Self {
        layers.into_iter().map(Arc::from).collect()
    }
}

/// Adds the layers at the bottom, in order.
impl<K, V> Extend<Arc<dyn Cache<K, V>>> for Layered<K, V>
where
    K: Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    fn extend<I: IntoIterator<Item = Arc<dyn Cache<K, V>>>>(&mut self, layers: I) {
        for layer in layers {
            self.insert_layer(self.layers.len(), layer);
        }
    }
}

impl<K, V> Layered<K, V>
where
    K: Hash + Clone,
    V: Clone,
{
    /// The rest of a `get` whose top layer answered `answer`: a miss or an
    /// error, or a hit it cannot trust because a promotion of a key in
    /// `stripe` ran while it was read (see `Generations`). Kept out of line
    /// so that the hit path stays small.
    #[inline(never)]
    fn below_top<T>(
        &self,
        key: &K,
        stripe: &Stripe,
        answer: Result<Option<T>>,
    ) -> Result<Option<Entry<V>>> {
        if let Err(error) = answer {
            self.fail(0, Operation::Get, error)?;
        }
        self.lookup_in(key, stripe, 1, true)
    }

    /// Asks each layer for `key` from depth `from` down, promoting a hit
    /// into the layers above it if asked; a failing layer is handled by the
    /// stack's policy (and reported to its hook) as in `get`.
    pub(crate) fn lookup(&self, key: &K, from: usize, promote: bool) -> Result<Option<Entry<V>>> {
        if let Some(newest) = self.newest() {
            return newest.lookup(key, from, promote);
        }
        self.lookup_in(key, self.core.generations.stripe(key), from, promote)
    }

    fn lookup_in(
        &self,
        key: &K,
        stripe: &Stripe,
        from: usize,
        promote: bool,
    ) -> Result<Option<Entry<V>>> {
        // Read before any lower layer is: see `Generations`.
        let seen = stripe.writes.load(Ordering::SeqCst);
        let promotions = stripe.promotions.load(Ordering::SeqCst);
        let bottom = self.layers.len().saturating_sub(1);
        for (depth, layer) in self.layers.iter().enumerate().skip(from) {
            match layer.get_entry(key) {
                Ok(Some(entry)) => {
                    // A hit above the bottom may be a promotion's write that
                    // is about to be undone: trust it only if no promotion of
                    // a key in the stripe was in flight or ran meanwhile, and
                    // otherwise look further down. Nothing promotes into the
                    // bottom layer, so its answer always stands.
                    if depth < bottom
                        && (promotions & IN_FLIGHT != 0
                            || stripe.promotions.load(Ordering::SeqCst) != promotions)
                    {
                        continue;
                    }
                    if promote && depth > 0 {
                        self.promote(key, &entry, depth, stripe, seen);
                    }
                    return Ok(Some(entry));
                }
                Ok(None) => {}
                Err(error) => self.fail(depth, Operation::Get, error)?,
            }
        }
        Ok(None)
    }

    /// Writes `entry`, found at `depth`, into the layers above it, unless a
    /// write of the key began since the stripe read `seen`; undoes the
    /// promotion if one began while it was being written. Marked as a
    /// promotion in flight throughout, so that no read trusts what it
    /// writes before it has checked (see `Generations`).
    fn promote(&self, key: &K, entry: &Entry<V>, depth: usize, stripe: &Stripe, seen: u64) {
        if seen & IN_FLIGHT != 0 {
            return;
        }
        let _promoting = Promoting::begin(&stripe.promotions, &self.core.promotions);
        let mut written = 0;
        for (above, upper) in self.layers[..depth].iter().enumerate() {
            if stripe.writes.load(Ordering::SeqCst) != seen {
                break;
            }
            match upper.set_entry(key.clone(), entry.clone()) {
                Ok(()) => written = above + 1,
                Err(error) => self.report(above, Operation::Promote, &error),
            }
        }
        if written > 0 && stripe.writes.load(Ordering::SeqCst) != seen {
            for (above, upper) in self.layers[..written].iter().enumerate() {
                if let Err(error) = upper.remove(key) {
                    self.report(above, Operation::Promote, &error);
                }
            }
        }
    }

    /// A read through the stack with `read` (`get` or `get_entry` of a
    /// layer), `from_entry` turning a lower layer's entry into its answer.
    ///
    /// The top layer's hit is the hot path: it is returned as it is when no
    /// promotion ran anywhere in the stack while it was read (two loads of
    /// one word, no hashing). See `Generations`.
    #[inline]
    fn read_through<T>(
        &self,
        key: &K,
        read: impl Fn(&dyn Cache<K, V>, &K) -> Result<Option<T>>,
        from_entry: fn(Entry<V>) -> T,
    ) -> Result<Option<T>> {
        if self.core.changes.load(Ordering::Acquire) != self.seen {
            return self.read_newest(key, read, from_entry);
        }
        let Some(top) = self.layers.first() else {
            return Ok(None);
        };
        let before = self.core.promotions.load(Ordering::SeqCst);
        let answer = read(&**top, key);
        if let Ok(Some(_)) = answer {
            if before & IN_FLIGHT == 0 && self.core.promotions.load(Ordering::SeqCst) == before {
                return answer;
            }
            return self.recheck_top(key, &read, from_entry);
        }
        let stripe = self.core.generations.stripe(key);
        Ok(self.below_top(key, stripe, answer)?.map(from_entry))
    }

    /// A read through a copy of the stack whose layers a newer copy changed
    /// (see `fork`): through the layers as they are now, so that it neither
    /// reads a layer taken out nor promotes what that layer held into the
    /// layers the copies share.
    #[inline(never)]
    fn read_newest<T>(
        &self,
        key: &K,
        read: impl Fn(&dyn Cache<K, V>, &K) -> Result<Option<T>>,
        from_entry: fn(Entry<V>) -> T,
    ) -> Result<Option<T>> {
        match self.newest() {
            Some(newest) => newest.read_through(key, read, from_entry),
            None => self.read_through(key, read, from_entry),
        }
    }

    /// A hit in the top layer read while a promotion ran somewhere in the
    /// stack: read the top again between two loads of the key's own stripe,
    /// and trust that hit only if no promotion of a key in the stripe was in
    /// flight or began or ended in between; otherwise read the layers below.
    #[inline(never)]
    fn recheck_top<T>(
        &self,
        key: &K,
        read: &LayerRead<'_, K, V, T>,
        from_entry: fn(Entry<V>) -> T,
    ) -> Result<Option<T>> {
        let stripe = self.core.generations.stripe(key);
        let before = stripe.promotions.load(Ordering::SeqCst);
        if before & IN_FLIGHT != 0 {
            return Ok(self.lookup_in(key, stripe, 1, true)?.map(from_entry));
        }
        let answer = read(&*self.layers[0], key);
        if let Ok(Some(_)) = answer
            && stripe.promotions.load(Ordering::SeqCst) == before
        {
            return answer;
        }
        let answer = answer.map(|_| None::<T>);
        Ok(self.below_top(key, stripe, answer)?.map(from_entry))
    }
}

impl<K, V> Layered<K, V>
where
    K: Hash + Eq + Clone + Send + Sync,
    V: Clone + Send + Sync,
{
    /// `set_entry` through these layers, the write registered by the
    /// caller in the generations.
    fn set_registered(&self, key: K, entry: Entry<V>, writing: &Writing<'_>) -> Result<()> {
        let Some((last, above)) = self.layers.split_last() else {
            return Ok(());
        };
        let mut outcome = Ok(());
        for (depth, layer) in above.iter().enumerate() {
            let result = layer.set_entry(key.clone(), entry.clone());
            if self
                .collect(&mut outcome, depth, Operation::Set, result)
                .is_none()
            {
                self.forget(depth, &key);
            }
        }
        let result = last.set_entry(key.clone(), entry);
        if self
            .collect(&mut outcome, above.len(), Operation::Set, result)
            .is_none()
        {
            self.forget(above.len(), &key);
        }
        // Another write of the key overlapped this one: the upper layers
        // may hold its value and the bottom this one's, or the other way
        // round. Drop the key from the upper layers while this write is
        // still in flight (so no promotion puts an old value back); the
        // next read finds the bottom's value. See `Generations`.
        if !above.is_empty() && writing.overlapped() {
            for (depth, layer) in above.iter().enumerate() {
                self.collect(&mut outcome, depth, Operation::Remove, layer.remove(&key));
            }
        }
        outcome
    }

    /// `remove` through these layers, the write registered by the caller.
    fn remove_registered(&self, key: &K) -> Result<Option<V>> {
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

    /// `clear` through these layers, the write registered by the caller.
    fn clear_registered(&self) -> Result<()> {
        let mut outcome = Ok(());
        for (depth, layer) in self.layers.iter().enumerate() {
            self.collect(&mut outcome, depth, Operation::Clear, layer.clear());
        }
        outcome
    }

    /// `clear_matching` through these layers, the write registered by the
    /// caller.
    fn clear_matching_registered(&self, matches: &dyn Fn(&K) -> bool) -> Result<usize> {
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

impl<K, V> Cache<K, V> for Layered<K, V>
where
    K: Hash + Eq + Clone + Send + Sync,
    V: Clone + Send + Sync,
{
    #[inline]
    fn get(&self, key: &K) -> Result<Option<V>> {
        self.read_through(key, |layer, key| layer.get(key), Entry::into_value)
    }

    #[inline]
    fn get_entry(&self, key: &K) -> Result<Option<Entry<V>>> {
        self.read_through(key, |layer, key| layer.get_entry(key), |entry| entry)
    }

    fn set_entry(&self, key: K, entry: Entry<V>) -> Result<()> {
        let writing = self.core.generations.write(&key);
        match self.newest() {
            Some(newest) => newest.set_registered(key, entry, &writing),
            None => self.set_registered(key, entry, &writing),
        }
    }

    fn remove(&self, key: &K) -> Result<Option<V>> {
        let _writing = self.core.generations.write(key);
        match self.newest() {
            Some(newest) => newest.remove_registered(key),
            None => self.remove_registered(key),
        }
    }

    fn keys(&self) -> Result<Vec<K>> {
        if let Some(newest) = self.newest() {
            return newest.keys();
        }
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
        if let Some(newest) = self.newest() {
            return newest.values();
        }
        let keys = self.keys()?;
        let mut values = Vec::with_capacity(keys.len());
        for key in &keys {
            if let Some(entry) = self.lookup(key, 0, false)? {
                values.push(entry.value);
            }
        }
        Ok(values)
    }

    fn clear(&self) -> Result<()> {
        let _writing = self.core.generations.write_all();
        match self.newest() {
            Some(newest) => newest.clear_registered(),
            None => self.clear_registered(),
        }
    }

    /// Clears matching keys from every layer. The count is of distinct keys
    /// that matched in at least one layer: a key present in several layers
    /// counts once.
    fn clear_matching(&self, matches: &dyn Fn(&K) -> bool) -> Result<usize> {
        let _writing = self.core.generations.write_all();
        match self.newest() {
            Some(newest) => newest.clear_matching_registered(matches),
            None => self.clear_matching_registered(matches),
        }
    }

    /// The top layer's clock (the [`SystemClock`] for
    /// an empty stack): what [`CacheExt::set_with_ttl`](crate::CacheExt::set_with_ttl)
    /// reads to turn a time-to-live into a deadline.
    fn clock(&self) -> &dyn Clock {
        match self.layers.first() {
            Some(top) => top.clock(),
            None => &SystemClock,
        }
    }

    /// Reports to `watcher` what any layer reports, after the stack has
    /// dropped the key from the layers above that one. Returns whether any
    /// layer reports at all.
    fn watch(&self, watcher: Arc<dyn Watcher<K>>) -> bool {
        self.core.watchers.add(watcher);
        self.core
            .layers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|layer| layer.reports)
    }
}

impl<K, V> fmt::Debug for Layered<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Layered")?;
        f.debug_list().entries(&self.layers).finish()
    }
}
