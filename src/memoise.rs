//! [`Memoiser`]: cache the results of function calls.

use std::collections::HashMap;
use std::fmt;
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
    flights: Mutex<HashMap<String, Arc<Flight>>>,
}

/// A computation under way: followers wait on it until the leader is done.
struct Flight {
    leader: ThreadId,
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
    flights: &'a Mutex<HashMap<String, Arc<Flight>>>,
    key: &'a str,
    flight: Arc<Flight>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        lock(self.flights).remove(self.key);
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
            flights: Mutex::new(HashMap::new()),
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
    /// The cache's errors, a key maker's error, or [`Error::Recursion`] when
    /// `compute` calls the memoiser with its own key.
    pub fn call<A, V>(&self, function: &str, args: &A, compute: impl FnOnce() -> V) -> Result<V>
    where
        A: ?Sized,
        M: KeyMaker<A>,
        C: Cache<String, V>,
        V: Clone,
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
        V: Clone,
        E: From<Error>,
    {
        let key = self.key(function, args)?;
        loop {
            if let Some(value) = self.cache.get(&key)? {
                return Ok(value);
            }
            let (flight, leading) = {
                let mut flights = lock(&self.flights);
                match flights.get(&key) {
                    Some(flight) => (flight.clone(), false),
                    None => {
                        let flight = Arc::new(Flight {
                            leader: thread::current().id(),
                            done: Mutex::new(false),
                            finished: Condvar::new(),
                        });
                        flights.insert(key.clone(), flight.clone());
                        (flight, true)
                    }
                }
            };
            if !leading {
                if flight.leader == thread::current().id() {
                    return Err(Error::Recursion {
                        function: function.to_owned(),
                        key,
                    }
                    .into());
                }
                // Then read the leader's result from the cache, or lead a
                // new flight if it failed.
                flight.wait();
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
            self.cache.set(key.clone(), value.clone())?;
            return Ok(value);
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
        V: Clone,
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
        V: Clone,
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
