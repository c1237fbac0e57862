//! [`Memoiser`]: cache the results of function calls.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::key::{KeyMaker, ObjectKeyMaker, push_prefixed};

/// Caches the results of function calls under a key made from the
/// function's name and its arguments (ftrack's `Memoiser`).
///
/// - Works over any [`Cache<String, V>`](Cache): on a
///   [`MemoryCache`](crate::MemoryCache) for one process, or on a persistent
///   or shared stack so results survive a restart.
/// - Keys come from the key maker `M` (default [`ObjectKeyMaker`]) over the
///   arguments, prefixed with the function's name, so two functions with the
///   same arguments do not share entries.
/// - Single flight: when several threads call with one key at once, one
///   computes and the others wait for its result.
/// - Only `Ok` results of fallible functions are stored.
///
/// # Waiting on each other
///
/// A computation may call the memoiser for other keys. Two calls that
/// would wait on each other forever are errors instead:
///
/// - a computation that calls its own key on its own thread is an
///   [`Error::Recursion`];
/// - calls on several threads that wait on each other in a circle (the
///   computation of `a` on one thread needs `b`, whose computation on
///   another thread needs `a`) are an [`Error::Cycle`] for the call whose
///   wait would close the circle, naming the keys in it. That call's
///   computation then typically fails, its flight ends, and the others
///   go on (they may meet the circle again, from their side, and fail in
///   turn; none waits forever).
///
/// What the memoiser cannot see is not detected, as with moka's
/// `get_with`: a computation that waits on another thread (a join, a
/// channel, a lock) which calls the memoiser with the first computation's
/// key waits forever; so does a circle through two memoisers. Do not make
/// a computation wait for another thread's memoised call of its own key.
///
/// # When the result cannot be stored
///
/// A computed value that the cache fails to store (a full disk under it;
/// a [`Layered`](crate::Layered) stack under
/// [`ErrorPolicy::Strict`](crate::ErrorPolicy::Strict) whose lower layer
/// failed, though the top layer holds the value) is returned in an
/// [`Error::NotStored`]: [`Error::into_computed`] gives it back. Under
/// [`ErrorPolicy::Degrade`](crate::ErrorPolicy::Degrade) the stack skips a
/// failing layer and the value comes back as `Ok`.
/// - Values come back owned (ftrack's `return_copies`): each caller gets its
///   own clone. Store an `Arc` to share one instance.
///
/// # Example
///
/// ```
/// use layercache::{MemoryCache, Memoiser};
///
/// # fn main() -> layercache::Result<()> {
/// let memo = Memoiser::new(MemoryCache::new());
/// let calls = std::cell::Cell::new(0);
/// let area = |(w, h): &(u32, u32)| {
///     calls.set(calls.get() + 1);
///     w * h
/// };
/// assert_eq!(memo.call("area", &(3, 4), || area(&(3, 4)))?, 12);
/// assert_eq!(memo.call("area", &(3, 4), || area(&(3, 4)))?, 12);
/// assert_eq!(calls.get(), 1);
///
/// // Or wrap the function once and call the wrapper.
/// let area = memo.wrap("area", area);
/// assert_eq!(area.call(&(3, 4))?, 12);
/// assert_eq!(area.call(&(5, 5))?, 25);
/// assert_eq!(calls.get(), 2);
/// # Ok(())
/// # }
/// ```
pub struct Memoiser<C, M = ObjectKeyMaker> {
    cache: C,
    key_maker: M,
    flights: Mutex<Flights>,
}

/// The computations under way, and who waits on which: one lock for both,
/// so that a wait that would close a circle is seen when it is added.
#[derive(Default)]
struct Flights {
    by_key: HashMap<String, Arc<Flight>>,
    /// The flight each waiting thread waits on.
    waiting: HashMap<ThreadId, Arc<Flight>>,
}

impl Flights {
    /// The keys of the circle that `me` waiting on `flight` would close,
    /// `flight`'s key first, or `None`.
    fn cycle(&self, me: ThreadId, flight: &Flight) -> Option<Vec<String>> {
        let mut keys = vec![flight.key.clone()];
        let mut leader = flight.leader;
        // Each thread waits on at most one flight, so the walk ends: at a
        // leader that waits on nothing, or back at `me`.
        while leader != me {
            let next = self.waiting.get(&leader)?;
            if next.landed.load(Ordering::Relaxed) {
                return None; // `leader` is awake, about to stop waiting
            }
            keys.push(next.key.clone());
            leader = next.leader;
            if keys.len() > self.waiting.len() + 1 {
                return None; // a circle that does not pass through `me`
            }
        }
        Some(keys)
    }
}

/// A computation under way: followers wait on it until the leader is done.
struct Flight {
    key: String,
    leader: ThreadId,
    /// Set under the `Flights` lock when the flight ends, so that a walk
    /// for circles under that lock never follows a wait that is over.
    landed: AtomicBool,
    done: Mutex<bool>,
    finished: Condvar,
}

impl Flight {
    fn wait(&self) {
        let mut done = lock(&self.done);
        while !*done {
            done = self
                .finished
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends the leader's flight however the computation ends, a panic included,
/// so followers never wait forever.
struct Landing<'a> {
    flights: &'a Mutex<Flights>,
    key: &'a str,
    flight: Arc<Flight>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        {
            let mut flights = lock(self.flights);
            flights.by_key.remove(self.key);
            self.flight.landed.store(true, Ordering::Relaxed);
        }
        *lock(&self.flight.done) = true;
        self.flight.finished.notify_all();
    }
}

impl<C> Memoiser<C> {
    /// A memoiser storing results in `cache`, keyed by [`ObjectKeyMaker`].
    pub fn new(cache: C) -> Self {
        Self::with_key_maker(cache, ObjectKeyMaker)
    }
}

impl<C, M> Memoiser<C, M> {
    /// A memoiser storing results in `cache`, keyed by `key_maker`.
    pub fn with_key_maker(cache: C, key_maker: M) -> Self {
        Self {
            cache,
            key_maker,
            flights: Mutex::new(Flights::default()),
        }
    }

    /// The cache holding the results.
    pub fn cache(&self) -> &C {
        &self.cache
    }

    /// The key of a call of `function` with `args`: the function's name,
    /// length-prefixed, then the key maker's key for the arguments.
    pub fn key<A: ?Sized>(&self, function: &str, args: &A) -> Result<String>
    where
        M: KeyMaker<A>,
    {
        let mut key = String::with_capacity(function.len() + 32);
        push_prefixed(&mut key, function);
        self.key_maker.key_into(args, &mut key)?;
        Ok(key)
    }

    /// The result of `function(args)`: from the cache, or from `compute`
    /// (then stored) on a miss. `compute` runs at most once at a time per
    /// key across threads.
    ///
    /// # Errors
    ///
    /// The cache's errors, a key maker's error, [`Error::Recursion`] when
    /// `compute` calls the memoiser with its own key, [`Error::Cycle`] when
    /// calls on several threads would wait on each other in a circle, and
    /// [`Error::NotStored`], carrying the value, when it was computed but
    /// could not be stored (see [the type's documentation](Memoiser)).
    pub fn call<A, V>(&self, function: &str, args: &A, compute: impl FnOnce() -> V) -> Result<V>
    where
        A: ?Sized,
        M: KeyMaker<A>,
        C: Cache<String, V>,
        V: Clone + Send + Sync + 'static,
    {
        self.try_call(function, args, || Ok::<V, Error>(compute()))
    }

    /// Like [`call`](Memoiser::call) for a fallible `compute`: an `Err` is
    /// returned to this caller and not stored; a waiting caller then
    /// computes for itself.
    ///
    /// ```
    /// use layercache::{Error, MemoryCache, Memoiser};
    ///
    /// let memo = Memoiser::new(MemoryCache::new());
    /// let parsed: Result<u32, Error> = memo.try_call("parse", "x", || {
    ///     "x".parse::<u32>().map_err(|e| Error::Key { reason: e.to_string() })
    /// });
    /// assert!(parsed.is_err());
    /// assert_eq!(memo.cache().len(), 0);
    /// ```
    pub fn try_call<A, V, E>(
        &self,
        function: &str,
        args: &A,
        compute: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E>
    where
        A: ?Sized,
        M: KeyMaker<A>,
        C: Cache<String, V>,
        V: Clone + Send + Sync + 'static,
        E: From<Error>,
    {
        let key = self.key(function, args)?;
        let me = thread::current().id();
        loop {
            if let Some(value) = self.cache.get(&key)? {
                return Ok(value);
            }
            let (flight, leading) = {
                let mut flights = lock(&self.flights);
                match flights.by_key.get(&key).cloned() {
                    Some(flight) if flight.leader == me => {
                        return Err(Error::Recursion {
                            function: function.to_owned(),
                            key,
                        }
                        .into());
                    }
                    Some(flight) => {
                        if let Some(cycle) = flights.cycle(me, &flight) {
                            let mut cycle = cycle.join(" -> ");
                            cycle.push_str(" -> ");
                            cycle.push_str(&key);
                            return Err(Error::Cycle { key, cycle }.into());
                        }
                        flights.waiting.insert(me, flight.clone());
                        (flight, false)
                    }
                    None => {
                        let flight = Arc::new(Flight {
                            key: key.clone(),
                            leader: me,
                            landed: AtomicBool::new(false),
                            done: Mutex::new(false),
                            finished: Condvar::new(),
                        });
                        flights.by_key.insert(key.clone(), flight.clone());
                        (flight, true)
                    }
                }
            };
            if !leading {
                // Then read the leader's result from the cache, or lead a
                // new flight if it failed.
                flight.wait();
                lock(&self.flights).waiting.remove(&me);
                continue;
            }
            let _landing = Landing {
                flights: &self.flights,
                key: &key,
                flight,
            };
            // A leader that finished between our read and our flight has
            // stored its result: do not compute it again.
            if let Some(value) = self.cache.get(&key)? {
                return Ok(value);
            }
            let value = compute()?;
            return match self.cache.set(key.clone(), value.clone()) {
                Ok(()) => Ok(value),
                Err(error) => Err(Error::not_stored(error, value).into()),
            };
        }
    }

    /// `function` wrapped: [`Memoised::call`] answers from the cache or calls
    /// it. `name` identifies the function in keys: give each function its
    /// own name.
    pub fn wrap<F>(&self, name: impl Into<String>, function: F) -> Memoised<'_, C, M, F> {
        Memoised {
            memoiser: self,
            name: name.into(),
            function,
        }
    }
}

impl<C: fmt::Debug, M: fmt::Debug> fmt::Debug for Memoiser<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Memoiser<{:?}>({:?})", self.key_maker, self.cache)
    }
}

/// A function wrapped by [`Memoiser::wrap`].
pub struct Memoised<'m, C, M, F> {
    memoiser: &'m Memoiser<C, M>,
    name: String,
    function: F,
}

impl<C, M, F> Memoised<'_, C, M, F> {
    /// The result for `args`, from the cache or from the function.
    pub fn call<A, V>(&self, args: &A) -> Result<V>
    where
        A: ?Sized,
        F: Fn(&A) -> V,
        M: KeyMaker<A>,
        C: Cache<String, V>,
        V: Clone + Send + Sync + 'static,
    {
        self.memoiser
            .call(&self.name, args, || (self.function)(args))
    }

    /// The result for `args` of a fallible function: `Ok` results are
    /// cached, errors are returned and not stored.
    pub fn try_call<A, V, E>(&self, args: &A) -> Result<V, E>
    where
        A: ?Sized,
        F: Fn(&A) -> Result<V, E>,
        M: KeyMaker<A>,
        C: Cache<String, V>,
        V: Clone + Send + Sync + 'static,
        E: From<Error>,
    {
        self.memoiser
            .try_call(&self.name, args, || (self.function)(args))
    }

    /// The name the function is cached under.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<C, M, F> fmt::Debug for Memoised<'_, C, M, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Memoised({})", self.name)
    }
}
