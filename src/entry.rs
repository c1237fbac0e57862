//! [`Entry`]: a value and its two deadlines.

use std::time::Duration;

use crate::clock::Timestamp;

/// A value with two optional deadlines, as stored in and read from a cache
/// through [`Cache::get_entry`](crate::Cache::get_entry) and
/// [`Cache::set_entry`](crate::Cache::set_entry).
///
/// - **`expires`**: from this instant on the entry is gone from every
///   layer: a read misses. `None`: it never expires.
/// - **`fresh_until`**: from this instant on the entry is *stale*: still
///   served, but a loader should fetch a new value (and may serve the stale
///   one while it does, or when the source fails). `None`: fresh until it
///   expires.
///
/// An entry is never fresh after it expires: setting a `fresh_until` later
/// than `expires` keeps `expires` as the end of freshness.
///
/// ```
/// use std::time::Duration;
/// use layercache::{Entry, Timestamp};
///
/// let now = Timestamp::from_millis(1_000);
/// let entry = Entry::new("v")
///     .with_expires(now + Duration::from_secs(60))
///     .with_fresh_until(now + Duration::from_secs(10));
/// assert!(entry.is_fresh(now));
/// assert!(!entry.is_fresh(now + Duration::from_secs(10)));    // stale...
/// assert!(!entry.is_expired(now + Duration::from_secs(10)));  // ...but served
/// assert!(entry.is_expired(now + Duration::from_secs(60)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Entry<V> {
    /// The value.
    pub value: V,
    /// Milliseconds since the epoch; `u64::MAX` for none. Never later than
    /// `expires`.
    fresh_until: u64,
    /// Milliseconds since the epoch; `u64::MAX` for none.
    expires: u64,
}

/// `u64::MAX` in a deadline field means "no deadline".
const NEVER: u64 = u64::MAX;

impl<V> Entry<V> {
    /// An entry that never expires and is always fresh.
    pub const fn new(value: V) -> Self {
        Self {
            value,
            fresh_until: NEVER,
            expires: NEVER,
        }
    }

    /// This entry, expiring at `expires` (`None`: never), and fresh no
    /// later than that.
    pub fn with_expires(mut self, expires: impl Into<Option<Timestamp>>) -> Self {
        self.expires = expires
            .into()
            .map_or(NEVER, |at| at.as_millis().min(NEVER - 1));
        self.fresh_until = self.fresh_until.min(self.expires);
        self
    }

    /// This entry, fresh until `fresh_until` (`None`: until it expires),
    /// and never after it expires.
    pub fn with_fresh_until(mut self, fresh_until: impl Into<Option<Timestamp>>) -> Self {
        let fresh = fresh_until
            .into()
            .map_or(NEVER, |at| at.as_millis().min(NEVER - 1));
        self.fresh_until = fresh.min(self.expires);
        self
    }

    /// An entry for `value` that expires `ttl` after `now`.
    pub fn expiring_in(value: V, now: Timestamp, ttl: Duration) -> Self {
        Self::new(value).with_expires(now + ttl)
    }

    /// When the entry expires, if ever.
    pub fn expires(&self) -> Option<Timestamp> {
        (self.expires != NEVER).then_some(Timestamp::from_millis(self.expires))
    }

    /// When the entry goes stale, if before it expires. `None` when it stays
    /// fresh until it expires (or forever).
    pub fn fresh_until(&self) -> Option<Timestamp> {
        (self.fresh_until != NEVER && self.fresh_until != self.expires)
            .then_some(Timestamp::from_millis(self.fresh_until))
    }

    /// Whether the entry has either deadline.
    pub fn has_deadline(&self) -> bool {
        self.expires != NEVER || self.fresh_until != NEVER
    }

    /// Whether the entry has expired at `now` (its deadline is `now` or
    /// earlier).
    #[inline]
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires <= now.as_millis()
    }

    /// Whether the entry is fresh at `now`: neither stale nor expired.
    #[inline]
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        now.as_millis() < self.fresh_until
    }

    /// How long until the entry expires, from `now` (`None`: never; zero if
    /// it has expired).
    pub fn time_to_live(&self, now: Timestamp) -> Option<Duration> {
        self.expires().map(|at| at - now)
    }

    /// Whether the entry is still there by `clock`: it has no expiry (the
    /// clock is not read), or its expiry is later than now.
    #[inline]
    pub(crate) fn alive(&self, clock: &dyn crate::clock::Clock) -> bool {
        self.expires == NEVER || !self.is_expired(clock.now())
    }

    /// The deadlines as stored: milliseconds since the epoch, `u64::MAX`
    /// for none, `(fresh_until, expires)`.
    #[cfg(feature = "file")]
    pub(crate) fn raw_deadlines(&self) -> (u64, u64) {
        (self.fresh_until, self.expires)
    }

    /// An entry with deadlines as [`raw_deadlines`](Self::raw_deadlines)
    /// gives them (read back from storage: `fresh_until` is clamped to
    /// `expires`, as the setters keep it).
    #[cfg(feature = "file")]
    pub(crate) fn with_raw_deadlines(value: V, fresh_until: u64, expires: u64) -> Self {
        Self {
            value,
            fresh_until: fresh_until.min(expires),
            expires,
        }
    }

    /// The value, without its deadlines.
    pub fn into_value(self) -> V {
        self.value
    }

    /// The same deadlines on `f(value)`.
    pub fn map<U>(self, f: impl FnOnce(V) -> U) -> Entry<U> {
        Entry {
            value: f(self.value),
            fresh_until: self.fresh_until,
            expires: self.expires,
        }
    }

    /// The same deadlines on `f(value)`, if `f` succeeds.
    pub fn try_map<U, E>(self, f: impl FnOnce(V) -> Result<U, E>) -> Result<Entry<U>, E> {
        Ok(Entry {
            value: f(self.value)?,
            fresh_until: self.fresh_until,
            expires: self.expires,
        })
    }

    /// The same deadlines on a reference to the value.
    pub fn as_ref(&self) -> Entry<&V> {
        Entry {
            value: &self.value,
            fresh_until: self.fresh_until,
            expires: self.expires,
        }
    }
}

impl<V> From<V> for Entry<V> {
    fn from(value: V) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_never_outlives_expiry() {
        let t = Timestamp::from_millis;
        let entry = Entry::new(()).with_fresh_until(t(50)).with_expires(t(20));
        assert_eq!(entry.expires(), Some(t(20)));
        assert_eq!(entry.fresh_until(), None, "fresh until it expires");
        assert!(entry.is_fresh(t(19)));
        assert!(!entry.is_fresh(t(20)));
        let entry = Entry::new(()).with_expires(t(20)).with_fresh_until(t(50));
        assert_eq!(entry.fresh_until(), None);
        assert!(!entry.is_fresh(t(20)));
        let entry = Entry::new(()).with_expires(t(20)).with_fresh_until(t(5));
        assert_eq!(entry.fresh_until(), Some(t(5)));
        assert!(entry.is_expired(t(20)) && !entry.is_expired(t(19)));
    }

    #[test]
    fn an_entry_without_deadlines_is_fresh_forever() {
        let entry = Entry::new(1);
        assert!(!entry.has_deadline());
        assert!(entry.is_fresh(Timestamp::from_millis(u64::MAX - 1)));
        assert!(!entry.is_expired(Timestamp::from_millis(u64::MAX - 1)));
        assert_eq!(entry.time_to_live(Timestamp::UNIX_EPOCH), None);
    }
}
