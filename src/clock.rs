//! Time for deadlines: [`Timestamp`], the [`Clock`] trait, the default
//! [`SystemClock`] and the [`ManualClock`] that tests move by hand.
//!
//! Deadlines are wall-clock instants with millisecond resolution, so that a
//! layer shared by processes (a file) can store them and a layer on another
//! host (Redis) can turn them into relative times. An in-process cache
//! reads its clock only when an entry has a deadline: a memory store of
//! entries that never expire never asks for the time.

use std::fmt;
use std::ops::{Add, Sub};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wall-clock instant: whole milliseconds since the Unix epoch.
///
/// Eight bytes, `Copy`, totally ordered; arithmetic saturates rather than
/// overflows. Convert from and to [`SystemTime`] at the edges.
///
/// ```
/// use std::time::Duration;
/// use layercache::Timestamp;
///
/// let t = Timestamp::from_millis(1_000);
/// assert_eq!((t + Duration::from_millis(500)).as_millis(), 1_500);
/// assert_eq!(t - Timestamp::from_millis(400), Duration::from_millis(600));
/// assert_eq!(Timestamp::from_millis(400) - t, Duration::ZERO); // saturates
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);
    /// The latest instant there is (about 584 million years after the
    /// epoch).
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The instant `time` falls in (rounded down to the millisecond; times
    /// before the epoch become the epoch).
    pub fn from_system_time(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// This instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// The time from `earlier` to this instant, or zero if `earlier` is
    /// later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// This instant plus `duration`, rounded up to the millisecond (so a
    /// deadline `now + ttl` is never earlier than asked), saturating at
    /// [`Timestamp::MAX`].
    pub fn saturating_add(self, duration: Duration) -> Timestamp {
        let millis = duration.as_nanos().div_ceil(1_000_000);
        Self(
            self.0
                .saturating_add(u64::try_from(millis).unwrap_or(u64::MAX)),
        )
    }

    /// This instant minus `duration`, rounded down to the millisecond,
    /// saturating at the Unix epoch.
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::Timestamp;
    ///
    /// let t = Timestamp::from_millis(5_000);
    /// assert_eq!(t - Duration::from_millis(1_500), Timestamp::from_millis(3_500));
    /// assert_eq!(t - Duration::from_secs(60), Timestamp::from_millis(0));
    /// ```
    pub fn saturating_sub(self, duration: Duration) -> Timestamp {
        let millis = duration.as_nanos().div_ceil(1_000_000);
        Self(
            self.0
                .saturating_sub(u64::try_from(millis).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    /// Saturating: see [`Timestamp::saturating_sub`].
    fn sub(self, duration: Duration) -> Timestamp {
        self.saturating_sub(duration)
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    /// Saturating: see [`Timestamp::saturating_add`].
    fn add(self, duration: Duration) -> Timestamp {
        self.saturating_add(duration)
    }
}

impl Sub for Timestamp {
    type Output = Duration;
    /// Saturating: see [`Timestamp::saturating_duration_since`].
    fn sub(self, earlier: Timestamp) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}ms)", self.0)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        Self::from_system_time(time)
    }
}

impl From<Timestamp> for SystemTime {
    fn from(time: Timestamp) -> Self {
        time.to_system_time()
    }
}

/// Where a cache gets the time to check deadlines.
///
/// Caches take one as an `Arc<dyn Clock>` (for example
/// [`MemoryCache::with_clock`](crate::MemoryCache::with_clock)); the default
/// is [`SystemClock`]. Tests inject a [`ManualClock`] and move it by hand.
/// Give every layer of a stack the same clock.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// The system's wall clock, read cheaply.
///
/// On Linux it reads `CLOCK_REALTIME_COARSE` (about 6 ns here, against
/// 37 ns for [`SystemTime::now`], and never a system call): the time of the
/// last scheduler tick, so deadlines are honoured to within a tick (1 to
/// 4 ms), well inside a cache's tolerance. Elsewhere it reads
/// [`SystemTime::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The current time (also [`Clock::now`], without the trait in scope).
    #[inline]
    pub fn now(&self) -> Timestamp {
        coarse_now()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Timestamp {
        coarse_now()
    }
}

#[cfg(target_os = "linux")]
#[inline]
fn coarse_now() -> Timestamp {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec that outlives the call,
    // and CLOCK_REALTIME_COARSE is a clock every Linux since 2.6.32 has;
    // the call writes only through the pointer it is given.
    let failed = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) } != 0;
    if failed {
        return Timestamp::from_system_time(SystemTime::now());
    }
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    Timestamp(seconds.saturating_mul(1_000).saturating_add(millis))
}

#[cfg(not(target_os = "linux"))]
#[inline]
fn coarse_now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// A clock that moves only when told to: for tests of expiry that must not
/// sleep.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use layercache::{Cache, CacheExt, ManualClock, MemoryCache};
///
/// # fn main() -> layercache::Result<()> {
/// let clock = Arc::new(ManualClock::new());
/// let cache = MemoryCache::new().with_clock(clock.clone());
/// cache.set_with_ttl("k".to_string(), 1, Duration::from_secs(60))?;
/// clock.advance(Duration::from_secs(59));
/// assert_eq!(cache.get(&"k".to_string())?, Some(1));
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(cache.get(&"k".to_string())?, None);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock that reads a fixed, arbitrary instant (2001-09-09) until
    /// moved.
    pub fn new() -> Self {
        Self::starting_at(Timestamp::from_millis(1_000_000_000_000))
    }

    /// A clock that reads `start` until moved.
    pub fn starting_at(start: Timestamp) -> Self {
        Self(AtomicU64::new(start.0))
    }

    /// Move the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // The closure never returns None, so this cannot fail.
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }

    /// Set the clock to `now` (it may go backwards, as wall clocks do).
    pub fn set(&self, now: Timestamp) {
        self.0.store(now.0, Ordering::SeqCst);
    }

    /// The time it reads (also [`Clock::now`], without the trait in scope).
    pub fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        ManualClock::now(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_agrees_with_system_time_to_within_a_tick() {
        let before = Timestamp::from_system_time(SystemTime::now());
        let coarse = SystemClock.now();
        let after = Timestamp::from_system_time(SystemTime::now());
        // The coarse clock lags by at most a scheduler tick (a few ms).
        assert!(coarse <= after, "{coarse:?} after {after:?}");
        assert!(
            before - coarse < Duration::from_millis(50),
            "{before:?} vs {coarse:?}"
        );
    }

    #[test]
    fn deadlines_round_up_and_saturate() {
        let t = Timestamp::from_millis(10);
        assert_eq!((t + Duration::from_micros(1)).as_millis(), 11);
        assert_eq!(Timestamp::MAX + Duration::from_secs(1), Timestamp::MAX);
        assert_eq!(t + Duration::MAX, Timestamp::MAX);
    }
}
