//! [`Proxy`]: a cache that forwards every call to another.

use std::fmt;

use std::ops::{Deref, DerefMut};

#[cfg(doc)]
use crate::Cache;
use crate::cache::forward_cache;

/// A cache that forwards every call to an inner cache.
///
/// It dereferences to the inner cache. On its own it changes nothing; it is the starting point for a cache that
/// changes one behaviour and keeps the rest (ftrack's `ProxyCache`). Hold a
/// `Proxy` in your type, implement [`Cache`] by forwarding to it, and
/// override what you need. `docs/custom-caches.md` walks through one.
///
/// # Example
///
/// A cache that refuses to store empty strings:
///
/// ```
/// use layercache::{Cache, Entry, MemoryCache, Proxy, Result};
///
/// #[derive(Debug)]
/// struct NoEmpty<C>(Proxy<C>);
///
/// impl<C: Cache<String, String>> Cache<String, String> for NoEmpty<C> {
///     fn get_entry(&self, key: &String) -> Result<Option<Entry<String>>> {
///         self.0.get_entry(key)
///     }
///     // `set` and the `set_with_ttl` family reach this through the defaults.
///     fn set_entry(&self, key: String, entry: Entry<String>) -> Result<()> {
///         if entry.value.is_empty() { return Ok(()); }
///         self.0.set_entry(key, entry)
///     }
///     fn remove(&self, key: &String) -> Result<Option<String>> { self.0.remove(key) }
///     fn keys(&self) -> Result<Vec<String>> { self.0.keys() }
/// }
///
/// # fn main() -> Result<()> {
/// let cache = NoEmpty(Proxy::new(MemoryCache::new()));
/// cache.set("a".into(), String::new())?;
/// assert_eq!(cache.get(&"a".into())?, None);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Proxy<C: ?Sized> {
    inner: C,
}

impl<C> Proxy<C> {
    /// A proxy for `inner`.
    pub fn new(inner: C) -> Self {
        Self { inner }
    }

    /// The proxied cache, taken back.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C: ?Sized> Deref for Proxy<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.inner
    }
}

impl<C: ?Sized> DerefMut for Proxy<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.inner
    }
}

forward_cache!(Proxy<C>);

impl<C: fmt::Debug + ?Sized> fmt::Debug for Proxy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({:?})", &&self.inner)
    }
}
