//! Every interleaving of a promoting `get` with the writes that race it,
//! explored exhaustively by a scheduler of our own (stateless model
//! checking): no sleeps, nothing left to timing.
//!
//! Each layer of the stack under test is wrapped in a [`Gate`]. Every call
//! into a gate first announces "thread T is about to call `op` on layer L"
//! to the [`Scheduler`] and blocks until the scheduler lets it run; each
//! racing operation runs on a thread of its own and also waits for a
//! "start" permission before it calls into the stack at all. So exactly one
//! thread runs at a time, from one scheduling point to its next, and a run
//! is fixed by the sequence of choices "which waiting thread goes next".
//! What a thread does between two layer calls, such as the generation
//! loads and bumps of `Layered`, belongs to the step before; the scenarios
//! with two threads also run with a second stop when each layer call
//! returns ([`Steps::CallsAndReturns`]), so that what a thread does between
//! its calls interleaves with the other thread's calls as well.
//!
//! [`explore`] runs a scenario from scratch (a fresh stack) once for each
//! such sequence, depth first over the choices, until every one has been
//! run; after each run it checks the scenario's invariant on the quiet
//! stack. The core invariant: every upper layer either misses the key or
//! holds exactly the bottom layer's entry (deadlines included), and a fresh
//! `get` through the stack answers the newest written value.
//!
//! The read-your-writes scenarios also check an intermediate state, inside
//! the writer's thread: a read that starts after the thread's own `set` or
//! `remove` returned must answer that write or miss, never the older value
//! a racing promotion wrote into an upper layer and has yet to undo.
//!
//! Only a thread that belongs to a run is gated: the test's own thread sets
//! up and checks the layers without stopping.
//!
//! Each scenario prints how many schedules it explored and asserts a
//! floor, so that it cannot pass by exploring nothing. To see a failing
//! schedule, break `Layered::promote` (drop its undo, say) and run
//! `cargo test --features testing --test layered_interleavings`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use layercache::testing::Watched;
use layercache::{Cache, Clock, Entry, Layered, ManualClock, MemoryCache, Timestamp, Watcher};

type Key = u8;
type Val = u32;
type Mem = MemoryCache<Key, Val>;

/// The key every scenario races on.
const KEY: Key = 7;

// ---------------------------------------------------------------------------
// The scheduler
// ---------------------------------------------------------------------------

/// One decision of a run: which of `options` waiting threads (in thread
/// order) was let go.
#[derive(Clone, Copy, Debug)]
struct Choice {
    index: usize,
    options: usize,
}

/// What a worker's operation returns, for the scenario's check.
type Seen = Option<Entry<Val>>;

/// Lets the threads of one run go one at a time, in the order its choices
/// say. Whichever thread arrives at a scheduling point makes the next
/// decision (once every thread of the run is waiting or done), so a step
/// costs one hand-over between threads at most.
struct Scheduler {
    state: Mutex<State>,
    /// One per worker thread: signalled when it may run.
    wake: Vec<Condvar>,
    /// Signalled when every worker is done.
    all_done: Condvar,
}

struct State {
    workers: usize,
    /// Workers that have reached their start point.
    arrived: usize,
    finished: usize,
    /// The worker that was let go and has not yet come back.
    running: Option<usize>,
    /// Waiting workers and what each is about to do.
    waiting: BTreeMap<usize, String>,
    /// The choices to replay before going on with the first option.
    replay: Vec<Choice>,
    /// The choices made in this run.
    taken: Vec<Choice>,
    /// What ran, in order: "T1 set_entry L0".
    trace: Vec<String>,
    /// What each worker's operation returned, or its panic message.
    results: Vec<Option<Result<Seen, String>>>,
    /// Things that went wrong inside the scheduler.
    failures: Vec<String>,
}

impl Scheduler {
    fn new(workers: usize, replay: Vec<Choice>) -> Self {
        Self {
            state: Mutex::new(State {
                workers,
                arrived: 0,
                finished: 0,
                running: None,
                waiting: BTreeMap::new(),
                replay,
                taken: Vec::new(),
                trace: Vec::new(),
                results: vec![None; workers],
                failures: Vec::new(),
            }),
            wake: (0..workers).map(|_| Condvar::new()).collect(),
            all_done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Worker `id` asks to start `what`; returns when it may.
    fn start(&self, id: usize, what: &str) {
        let mut state = self.lock();
        state.arrived += 1;
        state.waiting.insert(id, format!("start {what}"));
        self.dispatch(&mut state);
        self.wait_turn(state, id);
    }

    /// Worker `id`, which is running, is about to do `what`; returns when
    /// it may.
    fn pause(&self, id: usize, what: String) {
        let mut state = self.lock();
        if state.running != Some(id) {
            let wrong = format!("T{id} reached `{what}` while not running");
            state.failures.push(wrong);
        }
        state.running = None;
        state.waiting.insert(id, what);
        self.dispatch(&mut state);
        self.wait_turn(state, id);
    }

    /// Worker `id` is done, with `result`.
    fn finish(&self, id: usize, result: Result<Seen, String>) {
        let mut state = self.lock();
        if state.running == Some(id) {
            state.running = None;
        }
        state.results[id] = Some(result);
        state.finished += 1;
        self.dispatch(&mut state);
    }

    fn wait_turn(&self, mut state: MutexGuard<'_, State>, id: usize) {
        while state.running != Some(id) {
            state = self.wake[id]
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// If nobody runs and everyone has arrived, lets the next worker go.
    fn dispatch(&self, state: &mut State) {
        if state.running.is_some() || state.arrived < state.workers {
            return;
        }
        if state.waiting.is_empty() {
            if state.finished == state.workers {
                self.all_done.notify_all();
            }
            return;
        }
        let options: Vec<usize> = state.waiting.keys().copied().collect();
        let step = state.taken.len();
        let index = match state.replay.get(step) {
            Some(choice) if choice.options == options.len() => choice.index,
            Some(choice) => {
                let seen = format!(
                    "not deterministic: step {step} had {} options, now {}",
                    choice.options,
                    options.len()
                );
                state.failures.push(seen);
                0
            }
            None => 0,
        };
        state.taken.push(Choice {
            index,
            options: options.len(),
        });
        let id = options[index];
        let what = state.waiting.remove(&id).unwrap_or_default();
        state.trace.push(format!("T{id} {what}"));
        state.running = Some(id);
        self.wake[id].notify_one();
    }

    /// Waits for every worker to finish, and takes what the run left.
    ///
    /// A run that makes no progress for a minute is a deadlock (a thread
    /// blocked on something other than the scheduler, such as a lock held
    /// across a layer call): the timeout only turns that hang into a
    /// failure, it orders nothing.
    fn wait_all(&self) -> Run {
        let mut state = self.lock();
        while state.finished < state.workers {
            let (next, timeout) = self
                .all_done
                .wait_timeout(state, Duration::from_secs(60))
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            if timeout.timed_out() && state.finished < state.workers {
                panic!(
                    "stuck: running {:?}, waiting {:?}, trace:\n  {}",
                    state.running,
                    state.waiting,
                    state.trace.join("\n  ")
                );
            }
        }
        Run {
            taken: std::mem::take(&mut state.taken),
            trace: std::mem::take(&mut state.trace),
            results: std::mem::take(&mut state.results),
            failures: std::mem::take(&mut state.failures),
        }
    }
}

/// What a finished run left: its choices, its trace, what each worker
/// returned, and what went wrong.
struct Run {
    taken: Vec<Choice>,
    trace: Vec<String>,
    results: Vec<Option<Result<Seen, String>>>,
    failures: Vec<String>,
}

thread_local! {
    /// The scheduler and worker id of this thread while it runs an
    /// operation of a run.
    static WORKER: RefCell<Option<(Arc<Scheduler>, usize)>> = const { RefCell::new(None) };
}

/// A scheduling point: a worker waits here for its turn; any other thread
/// goes straight on.
fn point(what: impl FnOnce() -> String) {
    let worker = WORKER.with(|worker| worker.borrow().clone());
    if let Some((scheduler, id)) = worker {
        scheduler.pause(id, what());
    }
}

/// An operation racing in a scenario: a name and what it does on the
/// scenario's world.
type Op<W> = (&'static str, fn(&W) -> Seen);

/// One operation of one run, for a worker thread.
type Job = Box<dyn FnOnce() + Send>;

/// Worker threads kept for all the runs of a scenario (starting threads for
/// every run would cost more than the runs).
struct Pool {
    jobs: Vec<mpsc::Sender<Job>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Pool {
    fn new(workers: usize) -> Self {
        let mut jobs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..workers {
            let (send, receive) = mpsc::channel::<Job>();
            jobs.push(send);
            threads.push(thread::spawn(move || {
                for job in receive {
                    job();
                }
            }));
        }
        Self { jobs, threads }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs.clear();
        // A run that got stuck leaves its workers blocked for good: joining
        // them would hang the failing test instead of failing it.
        if thread::panicking() {
            return;
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs every interleaving of `ops` on a fresh world from `setup`, checking
/// each finished run with `check` (given the world and what each op
/// returned). Returns how many schedules ran, asserting at least `least`.
fn explore<W: Send + Sync + 'static>(
    scenario: &str,
    least: usize,
    setup: impl Fn() -> W,
    ops: &[Op<W>],
    check: impl Fn(&W, &[Seen]) -> Result<(), String>,
) -> usize {
    let began = Instant::now();
    let pool = Pool::new(ops.len());
    let mut replay: Vec<Choice> = Vec::new();
    let mut schedules = 0;
    loop {
        let world = Arc::new(setup());
        let scheduler = Arc::new(Scheduler::new(ops.len(), replay.clone()));
        for (id, &(name, op)) in ops.iter().enumerate() {
            let world = world.clone();
            let scheduler = scheduler.clone();
            let job: Job = Box::new(move || {
                WORKER.with(|worker| *worker.borrow_mut() = Some((scheduler.clone(), id)));
                scheduler.start(id, name);
                let result = panic::catch_unwind(AssertUnwindSafe(|| op(&world)));
                WORKER.with(|worker| *worker.borrow_mut() = None);
                scheduler.finish(id, result.map_err(|payload| panic_message(&*payload)));
            });
            pool.jobs[id].send(job).expect("a worker");
        }
        let run = scheduler.wait_all();
        schedules += 1;
        let mut failures = run.failures;
        let mut seen = Vec::new();
        for (id, result) in run.results.into_iter().enumerate() {
            seen.push(match result {
                Some(Ok(value)) => value,
                Some(Err(message)) => {
                    failures.push(format!("T{id} ({}) panicked: {message}", ops[id].0));
                    None
                }
                None => {
                    failures.push(format!("T{id} left no result"));
                    None
                }
            });
        }
        let verdict = if failures.is_empty() {
            check(&world, &seen)
        } else {
            Err(failures.join("; "))
        };
        if let Err(why) = verdict {
            let threads = ops
                .iter()
                .enumerate()
                .fold(String::new(), |mut out, (id, (name, _))| {
                    let _ = write!(out, " T{id}={name}");
                    out
                });
            panic!(
                "{scenario}: schedule #{schedules} breaks the invariant: {why}\n\
                 threads:{threads}\nreturned: {seen:?}\nschedule:\n  {}",
                run.trace.join("\n  ")
            );
        }
        // The next schedule: the deepest choice with an option left, moved on.
        replay = run.taken;
        while replay
            .last()
            .is_some_and(|choice| choice.index + 1 == choice.options)
        {
            replay.pop();
        }
        match replay.last_mut() {
            Some(choice) => choice.index += 1,
            None => break,
        }
    }
    println!(
        "{scenario}: {schedules} schedules explored in {:?}",
        began.elapsed()
    );
    assert!(
        schedules >= least,
        "{scenario}: only {schedules} schedules explored, expected at least {least}"
    );
    schedules
}

// ---------------------------------------------------------------------------
// The gate layer
// ---------------------------------------------------------------------------

/// Where a [`Gate`] stops a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Steps {
    /// Before every call into a layer: what a step holds is one layer call
    /// and whatever the thread does after it, up to its next layer call.
    Calls,
    /// Before every call and again when it returns: a layer call is a step
    /// of its own, and so is what the thread does between two calls (the
    /// generation loads and bumps), so those interleave with the other
    /// threads' layer calls too. Many more schedules.
    CallsAndReturns,
}

/// A layer that stops a worker before every call into `inner` (and after
/// it, with [`Steps::CallsAndReturns`]).
struct Gate<C> {
    name: String,
    steps: Steps,
    inner: C,
}

impl<C> Gate<C> {
    fn new(name: impl Into<String>, steps: Steps, inner: C) -> Self {
        Self {
            name: name.into(),
            steps,
            inner,
        }
    }

    /// Runs `call`, the layer call `op`, as a step.
    fn step<T>(&self, op: &str, call: impl FnOnce() -> T) -> T {
        point(|| format!("{op} {}", self.name));
        let answer = call();
        if self.steps == Steps::CallsAndReturns {
            point(|| format!("back from {op} {}", self.name));
        }
        answer
    }
}

impl<C: fmt::Debug> fmt::Debug for Gate<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gate({}, {:?})", self.name, self.inner)
    }
}

impl<C: Cache<Key, Val>> Cache<Key, Val> for Gate<C> {
    fn get_entry(&self, key: &Key) -> layercache::Result<Option<Entry<Val>>> {
        self.step("get_entry", || self.inner.get_entry(key))
    }
    fn set_entry(&self, key: Key, entry: Entry<Val>) -> layercache::Result<()> {
        self.step("set_entry", || self.inner.set_entry(key, entry))
    }
    fn get(&self, key: &Key) -> layercache::Result<Option<Val>> {
        self.step("get", || self.inner.get(key))
    }
    fn set(&self, key: Key, value: Val) -> layercache::Result<()> {
        self.step("set", || self.inner.set(key, value))
    }
    fn remove(&self, key: &Key) -> layercache::Result<Option<Val>> {
        self.step("remove", || self.inner.remove(key))
    }
    fn keys(&self) -> layercache::Result<Vec<Key>> {
        self.step("keys", || self.inner.keys())
    }
    fn values(&self) -> layercache::Result<Vec<Val>> {
        self.step("values", || self.inner.values())
    }
    fn clear(&self) -> layercache::Result<()> {
        self.step("clear", || self.inner.clear())
    }
    fn clear_matching(&self, matches: &dyn Fn(&Key) -> bool) -> layercache::Result<usize> {
        self.step("clear_matching", || self.inner.clear_matching(matches))
    }
    fn clock(&self) -> &dyn Clock {
        self.step("clock", || self.inner.clock())
    }
    fn watch(&self, watcher: Arc<dyn Watcher<Key>>) -> bool {
        self.step("watch", || self.inner.watch(watcher))
    }
}

// ---------------------------------------------------------------------------
// Worlds: a stack of gated memory layers on a manual clock
// ---------------------------------------------------------------------------

struct World {
    stack: Layered<Key, Val>,
    clock: Arc<ManualClock>,
    /// The bottom layer when it reports changes made elsewhere.
    watched: Option<Arc<Watched<Key, Gate<Mem>>>>,
}

impl World {
    fn memory(clock: &Arc<ManualClock>) -> Mem {
        MemoryCache::new().with_clock(clock.clone())
    }

    /// `depth` gated memory layers, L0 on top.
    fn new(depth: usize, steps: Steps) -> Self {
        let clock = Arc::new(ManualClock::new());
        let mut stack = Layered::new();
        for depth in 0..depth {
            stack.push(Gate::new(format!("L{depth}"), steps, Self::memory(&clock)));
        }
        Self {
            stack,
            clock,
            watched: None,
        }
    }

    /// A gated memory layer over a bottom layer that holds `value` and
    /// reports writes made elsewhere.
    fn watched(value: Val, steps: Steps) -> Self {
        let clock = Arc::new(ManualClock::new());
        let bottom = Arc::new(Watched::new(Gate::new("L1", steps, Self::memory(&clock))));
        let stack = Layered::new()
            .with_layer(Gate::new("L0", steps, Self::memory(&clock)))
            .with_layer(bottom.clone());
        let world = Self {
            stack,
            clock,
            watched: Some(bottom),
        };
        world.bottom().set(KEY, value).expect("seed the bottom");
        world
    }

    /// `depth` layers with `value` in the bottom one only.
    fn with_bottom(depth: usize, value: Val, steps: Steps) -> Self {
        let world = Self::new(depth, steps);
        world.bottom().set(KEY, value).expect("seed the bottom");
        world
    }

    fn layers(&self) -> &[Arc<dyn Cache<Key, Val>>] {
        self.stack.layers()
    }

    fn top(&self) -> &dyn Cache<Key, Val> {
        &*self.layers()[0]
    }

    fn bottom(&self) -> &dyn Cache<Key, Val> {
        &**self.layers().last().expect("a layer")
    }

    /// Every upper layer misses the key or holds exactly the bottom's entry.
    fn consistent(&self) -> Result<(), String> {
        let layers = self.layers();
        let bottom = self.bottom().get_entry(&KEY).map_err(|e| e.to_string())?;
        for (depth, layer) in layers[..layers.len() - 1].iter().enumerate() {
            let held = layer.get_entry(&KEY).map_err(|e| e.to_string())?;
            if held.is_some() && held != bottom {
                return Err(format!(
                    "layer {depth} holds {held:?} while the bottom holds {bottom:?}"
                ));
            }
        }
        Ok(())
    }

    /// [`consistent`](Self::consistent), and two fresh reads through the
    /// stack answer `newest`.
    fn settled(&self, newest: Option<Val>) -> Result<(), String> {
        self.consistent()?;
        for read in ["first", "second"] {
            let got = self.stack.get(&KEY).map_err(|e| e.to_string())?;
            if got != newest {
                return Err(format!(
                    "{read} fresh get answers {got:?}, the newest write is {newest:?}"
                ));
            }
        }
        self.consistent()
    }
}

/// The value of what a `get` saw, if it saw one.
fn value(seen: &Seen) -> Option<Val> {
    seen.as_ref().map(|entry| entry.value)
}

/// `seen[id]` is one of `allowed`.
fn returned(seen: &[Seen], id: usize, allowed: &[Option<Val>]) -> Result<(), String> {
    let got = value(&seen[id]);
    if allowed.contains(&got) {
        Ok(())
    } else {
        Err(format!("T{id} returned {got:?}, not one of {allowed:?}"))
    }
}

fn get(world: &World) -> Seen {
    world.stack.get(&KEY).expect("get").map(Entry::new)
}

fn get_entry(world: &World) -> Seen {
    world.stack.get_entry(&KEY).expect("get_entry")
}

fn set_2(world: &World) -> Seen {
    world.stack.set(KEY, 2).expect("set");
    None
}

fn set_3(world: &World) -> Seen {
    world.stack.set(KEY, 3).expect("set");
    None
}

fn remove(world: &World) -> Seen {
    world.stack.remove(&KEY).expect("remove").map(Entry::new)
}

/// A bounded top layer evicting the key: straight into the layer, not a
/// write through the stack.
fn evict_top(world: &World) -> Seen {
    world.top().remove(&KEY).expect("evict").map(Entry::new)
}

/// Someone else writes 2 into the bottom store, which reports it.
fn write_elsewhere_2(world: &World) -> Seen {
    let watched = world.watched.as_ref().expect("a watched bottom");
    watched.write_elsewhere(KEY, 2).expect("write elsewhere");
    None
}

/// The bottom layer's value is one of `allowed`, and the stack has
/// settled on it.
fn settled_on_one_of(world: &World, allowed: &[Option<Val>]) -> Result<(), String> {
    let bottom = world.bottom().get(&KEY).map_err(|e| e.to_string())?;
    if !allowed.contains(&bottom) {
        return Err(format!(
            "the bottom holds {bottom:?}, not one of {allowed:?}"
        ));
    }
    world.settled(bottom)
}

/// The name of a scenario run with `steps`.
fn named(scenario: &str, steps: Steps) -> String {
    match steps {
        Steps::Calls => scenario.to_string(),
        Steps::CallsAndReturns => format!("{scenario} (calls and returns)"),
    }
}

/// Both granularities, with the least number of schedules each must
/// explore.
fn both(calls: usize, calls_and_returns: usize) -> Vec<(Steps, usize)> {
    vec![
        (Steps::Calls, calls),
        (Steps::CallsAndReturns, calls_and_returns),
    ]
}

/// Only the coarser granularity (the finer one would take too long), with
/// the least number of schedules it must explore.
fn calls_only(calls: usize) -> Vec<(Steps, usize)> {
    vec![(Steps::Calls, calls)]
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// 1. A promoting `get` against a `set` of the same key: the bottom holds
///    1, the upper layers nothing; the `set` writes 2. With two layers, and
///    with three (a promotion from depth 2).
#[test]
fn promotion_races_a_set() {
    for (depth, least) in [(2, both(20, 200)), (3, both(60, 2_500))] {
        for (steps, least) in least {
            let ops: [Op<World>; 2] = [("get", get), ("set 2", set_2)];
            explore(
                &named(&format!("get vs set, {depth} layers"), steps),
                least,
                || World::with_bottom(depth, 1, steps),
                &ops,
                |world, seen| {
                    returned(seen, 0, &[Some(1), Some(2)])?;
                    world.settled(Some(2))
                },
            );
        }
    }
}

/// 2. A promoting `get` against a `remove` of the same key.
#[test]
fn promotion_races_a_remove() {
    for (depth, least) in [(2, both(20, 250)), (3, calls_only(80))] {
        for (steps, least) in least {
            let ops: [Op<World>; 2] = [("get", get), ("remove", remove)];
            explore(
                &named(&format!("get vs remove, {depth} layers"), steps),
                least,
                || World::with_bottom(depth, 1, steps),
                &ops,
                |world, seen| {
                    returned(seen, 0, &[Some(1), None])?;
                    returned(seen, 1, &[Some(1)])?;
                    world.settled(None)
                },
            );
        }
    }
}

/// 3. A promoting `get` against the top layer evicting the key (a direct
///    `remove` on the top layer, standing for a bounded layer). An
///    eviction is not a write: the bottom still holds the value, so the top
///    may lose it or get it back, but must never hold anything else. With
///    a `set` racing too, the top may lose either value but must never end
///    up holding an older one than the bottom.
#[test]
fn promotion_races_an_eviction() {
    for (steps, least) in both(15, 100) {
        let ops: [Op<World>; 2] = [("get", get), ("evict top", evict_top)];
        explore(
            &named("get vs eviction", steps),
            least,
            || World::with_bottom(2, 1, steps),
            &ops,
            |world, seen| {
                returned(seen, 0, &[Some(1)])?;
                returned(seen, 1, &[Some(1), None])?;
                world.settled(Some(1))
            },
        );
    }
    let ops: [Op<World>; 3] = [("get", get), ("set 2", set_2), ("evict top", evict_top)];
    explore(
        "get vs set vs eviction",
        600,
        || World::with_bottom(2, 1, Steps::Calls),
        &ops,
        |world, seen| {
            returned(seen, 0, &[Some(1), Some(2)])?;
            returned(seen, 2, &[Some(1), Some(2), None])?;
            world.settled(Some(2))
        },
    );
}

/// 4. A promoting `get`, a `set` and a second `get`, all of the same key.
#[test]
fn two_promotions_race_a_set() {
    let ops: [Op<World>; 3] = [("get", get), ("set 2", set_2), ("get", get)];
    explore(
        "get vs set vs get",
        4_000,
        || World::with_bottom(2, 1, Steps::Calls),
        &ops,
        |world, seen| {
            returned(seen, 0, &[Some(1), Some(2)])?;
            returned(seen, 2, &[Some(1), Some(2)])?;
            world.settled(Some(2))
        },
    );
}

/// 5. A promoting `get` against a write made elsewhere into the bottom
///    store, which reports the key (`Watched`): the stack must drop it from
///    the top, and no promotion may put the old value back.
#[test]
fn promotion_races_an_invalidation() {
    for (steps, least) in both(30, 600) {
        let ops: [Op<World>; 2] = [("get", get), ("write 2 elsewhere", write_elsewhere_2)];
        explore(
            &named("get vs invalidation", steps),
            least,
            || World::watched(1, steps),
            &ops,
            |world, seen| {
                returned(seen, 0, &[Some(1), Some(2)])?;
                world.settled(Some(2))
            },
        );
    }
}

/// The test clock's start plus `seconds`.
fn at(seconds: u64) -> Timestamp {
    ManualClock::new().now() + Duration::from_secs(seconds)
}

/// Value 1, fresh for 10 s, expiring after 60 s.
fn first_entry() -> Entry<Val> {
    Entry::new(1).with_expires(at(60)).with_fresh_until(at(10))
}

/// Value 2, fresh for 20 s, expiring after 120 s.
fn second_entry() -> Entry<Val> {
    Entry::new(2).with_expires(at(120)).with_fresh_until(at(20))
}

fn set_second_entry(world: &World) -> Seen {
    world
        .stack
        .set_entry(KEY, second_entry())
        .expect("set_entry");
    None
}

/// `depth` layers with the first entry in the bottom one only.
fn with_first_entry(depth: usize, steps: Steps) -> World {
    let world = World::new(depth, steps);
    world
        .bottom()
        .set_entry(KEY, first_entry())
        .expect("seed the bottom");
    world
}

/// No layer, and not the stack, serves the key.
fn gone_everywhere(world: &World) -> Result<(), String> {
    for (depth, layer) in world.layers().iter().enumerate() {
        let held = layer.get_entry(&KEY).map_err(|e| e.to_string())?;
        if held.is_some() {
            return Err(format!("layer {depth} serves {held:?} after it expired"));
        }
    }
    match world.stack.get_entry(&KEY).map_err(|e| e.to_string())? {
        None => Ok(()),
        Some(entry) => Err(format!("the stack serves {entry:?} after it expired")),
    }
}

/// 6. A promoted entry keeps its deadlines. Two promoting reads of an entry
///    with both deadlines, from the bottom of three layers: whatever the
///    order, both upper layers end up with the same entry and deadlines,
///    the entry goes stale when it should, and once it expires no layer
///    serves it. Then a promotion against a `set_entry` of an entry with
///    other deadlines: no upper layer keeps a mix of the two.
#[test]
fn a_promoted_entry_keeps_its_deadlines() {
    for (steps, least) in calls_only(700) {
        let ops: [Op<World>; 2] = [("get_entry", get_entry), ("get_entry", get_entry)];
        explore(
            &named("get_entry vs get_entry with deadlines, 3 layers", steps),
            least,
            || with_first_entry(3, steps),
            &ops,
            |world, seen| {
                for (id, got) in seen.iter().enumerate() {
                    if *got != Some(first_entry()) {
                        return Err(format!("T{id} read {got:?}, not {:?}", first_entry()));
                    }
                }
                for (depth, layer) in world.layers().iter().enumerate() {
                    let held = layer.get_entry(&KEY).map_err(|e| e.to_string())?;
                    if held != Some(first_entry()) {
                        return Err(format!(
                            "layer {depth} holds {held:?} after the promotions, not {:?}",
                            first_entry()
                        ));
                    }
                }
                world.clock.advance(Duration::from_secs(10));
                let stale = world.stack.get_entry(&KEY).map_err(|e| e.to_string())?;
                let now = world.clock.now();
                if stale != Some(first_entry()) || stale.is_some_and(|entry| entry.is_fresh(now)) {
                    return Err(format!("after 10 s the stack serves {stale:?}"));
                }
                world.clock.advance(Duration::from_secs(50));
                gone_everywhere(world)
            },
        );
    }

    for (steps, least) in both(20, 200) {
        let ops: [Op<World>; 2] = [("get_entry", get_entry), ("set_entry 2", set_second_entry)];
        explore(
            &named("get_entry vs set_entry with deadlines", steps),
            least,
            || with_first_entry(2, steps),
            &ops,
            |world, seen| {
                if ![Some(first_entry()), Some(second_entry())].contains(&seen[0]) {
                    return Err(format!("T0 read {:?}", seen[0]));
                }
                world.consistent()?;
                let got = world.stack.get_entry(&KEY).map_err(|e| e.to_string())?;
                if got != Some(second_entry()) {
                    return Err(format!("a fresh get_entry answers {got:?}"));
                }
                world.consistent()?;
                world.clock.advance(Duration::from_secs(60));
                world.consistent()?;
                world.clock.advance(Duration::from_secs(60));
                gone_everywhere(world)
            },
        );
    }
}

/// 7. Writes of the same key racing each other, with and without a
///    promotion: the layers may get the values in different orders, but
///    once all is done no upper layer may hold a value the bottom does not.
///    (Before a `set` checked for an overlapping write, "set 2" and "set 3"
///    could leave the top holding 3 and the bottom 2 for good, and "set 2"
///    and "remove" the top holding 2 over an empty bottom.)
#[test]
fn writes_race_each_other() {
    for (depth, least) in [(2, both(50, 2_500)), (3, calls_only(600))] {
        for (steps, least) in least {
            let ops: [Op<World>; 2] = [("set 2", set_2), ("set 3", set_3)];
            explore(
                &named(&format!("set vs set, {depth} layers"), steps),
                least,
                || World::with_bottom(depth, 1, steps),
                &ops,
                |world, _| settled_on_one_of(world, &[Some(2), Some(3)]),
            );
        }
    }
    for (depth, least) in [(2, both(25, 500)), (3, calls_only(150))] {
        for (steps, least) in least {
            let ops: [Op<World>; 2] = [("set 2", set_2), ("remove", remove)];
            explore(
                &named(&format!("set vs remove, {depth} layers"), steps),
                least,
                || World::with_bottom(depth, 1, steps),
                &ops,
                |world, _| settled_on_one_of(world, &[Some(2), None]),
            );
        }
    }
    for (steps, least) in both(20, 200) {
        let ops: [Op<World>; 2] = [("set 3", set_3), ("write 2 elsewhere", write_elsewhere_2)];
        explore(
            &named("set vs invalidation", steps),
            least,
            || World::watched(1, steps),
            &ops,
            |world, _| settled_on_one_of(world, &[Some(2), Some(3)]),
        );
    }
    let ops: [Op<World>; 3] = [("set 2", set_2), ("set 3", set_3), ("get", get)];
    explore(
        "set vs set vs get",
        6_000,
        || World::with_bottom(2, 1, Steps::Calls),
        &ops,
        |world, seen| {
            returned(seen, 2, &[Some(1), Some(2), Some(3)])?;
            settled_on_one_of(world, &[Some(2), Some(3)])
        },
    );
}

// ---------------------------------------------------------------------------
// Read your writes
// ---------------------------------------------------------------------------

/// What a thread that wrote the key and then read it on the same thread
/// may see: what it wrote, or a miss (a spurious miss is allowed, an older
/// value never is). Checked inside the writer thread, right after its read
/// returned: a failure panics there, and the run reports it with its
/// schedule.
fn own_write(read: &str, got: Option<Val>, written: Option<Val>) {
    assert!(
        got.is_none() || got == written,
        "read-your-writes: the writer's {read} after its own write of {written:?} returned {got:?}"
    );
}

/// The writer's `values()`: one key at most, so one value at most.
fn values_read(world: &World, written: Option<Val>) -> Seen {
    let values = world.stack.values().expect("values");
    assert!(
        values.len() <= 1,
        "values() returned {values:?} for one key"
    );
    let got = values.first().copied();
    own_write("values()", got, written);
    got.map(Entry::new)
}

fn set_1_then_get(world: &World) -> Seen {
    world.stack.set(KEY, 1).expect("set");
    let got = world.stack.get(&KEY).expect("get");
    own_write("get", got, Some(1));
    got.map(Entry::new)
}

fn set_1_then_get_entry(world: &World) -> Seen {
    world.stack.set(KEY, 1).expect("set");
    let got = world.stack.get_entry(&KEY).expect("get_entry");
    own_write("get_entry", value(&got), Some(1));
    got
}

fn set_1_then_values(world: &World) -> Seen {
    world.stack.set(KEY, 1).expect("set");
    values_read(world, Some(1))
}

fn remove_then_get(world: &World) -> Seen {
    world.stack.remove(&KEY).expect("remove");
    let got = world.stack.get(&KEY).expect("get");
    own_write("get", got, None);
    got.map(Entry::new)
}

fn remove_then_get_entry(world: &World) -> Seen {
    world.stack.remove(&KEY).expect("remove");
    let got = world.stack.get_entry(&KEY).expect("get_entry");
    own_write("get_entry", value(&got), None);
    got
}

fn remove_then_values(world: &World) -> Seen {
    world.stack.remove(&KEY).expect("remove");
    values_read(world, None)
}

/// A writer thread's operation, and what it wrote (`None`: a removal).
struct Writer {
    name: &'static str,
    op: fn(&World) -> Seen,
    writes: Option<Val>,
}

/// Every writer: a `set` of 1 or a `remove`, each followed on the same
/// thread by a `get`, a `get_entry` or a `values()`.
const WRITERS: [Writer; 6] = [
    Writer {
        name: "set 1, get",
        op: set_1_then_get,
        writes: Some(1),
    },
    Writer {
        name: "set 1, get_entry",
        op: set_1_then_get_entry,
        writes: Some(1),
    },
    Writer {
        name: "set 1, values",
        op: set_1_then_values,
        writes: Some(1),
    },
    Writer {
        name: "remove, get",
        op: remove_then_get,
        writes: None,
    },
    Writer {
        name: "remove, get_entry",
        op: remove_then_get_entry,
        writes: None,
    },
    Writer {
        name: "remove, values",
        op: remove_then_values,
        writes: None,
    },
];

/// Where the key starts, with value 0, the upper layers above it empty.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// In the bottom layer only.
    Bottom,
    /// In the middle layer of three only (the bottom has lost it).
    Middle,
}

/// `depth` layers with 0 where `start` says.
fn with_zero(depth: usize, start: Start, steps: Steps) -> World {
    match start {
        Start::Bottom => World::with_bottom(depth, 0, steps),
        Start::Middle => {
            let world = World::new(depth, steps);
            world.layers()[1].set(KEY, 0).expect("seed the middle");
            world
        }
    }
}

/// Checks a finished read-your-writes run: the writer (T0) read its own
/// write or missed (it also checked that itself), every promoting reader
/// read 0 or the write, and the stack settled on the write.
fn read_your_writes_held(world: &World, seen: &[Seen], writes: Option<Val>) -> Result<(), String> {
    returned(seen, 0, &[writes, None])?;
    for id in 1..seen.len() {
        returned(seen, id, &[Some(0), writes])?;
    }
    world.settled(writes)
}

/// Runs each of `writers` against `readers` promoting `get`s, on `depth` layers
/// with 0 where `start` says, with each of `modes`. Returns the schedules
/// explored.
fn read_your_writes(
    writers: &[Writer],
    depth: usize,
    start: Start,
    readers: usize,
    modes: &[(Steps, usize)],
) -> usize {
    let mut total = 0;
    for writer in writers {
        for &(steps, least) in modes {
            let mut ops: Vec<Op<World>> = vec![(writer.name, writer.op)];
            ops.extend((0..readers).map(|_| -> Op<World> { ("get", get) }));
            let writes = writer.writes;
            let start_name = match start {
                Start::Bottom => "0 in the bottom",
                Start::Middle => "0 in the middle",
            };
            let readers_name = match readers {
                1 => "get".to_string(),
                n => format!("{n} gets"),
            };
            total += explore(
                &named(
                    &format!(
                        "read your writes: [{}] vs {readers_name}, {depth} layers, {start_name}",
                        writer.name
                    ),
                    steps,
                ),
                least,
                || with_zero(depth, start, steps),
                &ops,
                |world, seen| read_your_writes_held(world, seen, writes),
            );
        }
    }
    total
}

/// 8. Read your writes, on two layers: a thread `set`s the key to 1 (or
///    removes it) and then reads it (`get`, `get_entry`, `values()`), while
///    another thread's `get` promotes the 0 the bottom held at the start.
///    The promotion may write 0 into the top before it sees the write and
///    undoes it; the writer's read, which starts after its write returned,
///    must not trust that 0: it answers the write, or misses, never 0.
#[test]
fn a_read_after_a_write_sees_it() {
    read_your_writes(&WRITERS, 2, Start::Bottom, 1, &both(40, 1_500));
}

/// 9. Read your writes on three layers, the key starting in the bottom
///    only (a promotion into the middle and the top) and in the middle
///    only (a promotion into the top; the writer's read may hit the
///    middle). Calls only: with returns too, a writer explores 7,000 to
///    200,000 schedules (up to a minute).
#[test]
fn a_read_after_a_write_sees_it_3_layers() {
    read_your_writes(&WRITERS, 3, Start::Bottom, 1, &calls_only(200));
    read_your_writes(&WRITERS, 3, Start::Middle, 1, &calls_only(60));
}

/// 10. Read your writes against two promoting `get`s, on two layers: the
///     writer `set`s 1 and `get`s. Calls only, and this one writer: it
///     explores some 41,000 schedules (about 7 s); each of the others
///     explores 27,000 to 77,000.
#[test]
fn a_read_after_a_write_sees_it_with_two_promotions() {
    read_your_writes(&WRITERS[..1], 2, Start::Bottom, 2, &calls_only(30_000));
}
