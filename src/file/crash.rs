//! Crash points, for tests that kill a process at a chosen step of a seal,
//! a drop, a cleaning step or a compaction (feature `testing`).
//!
//! With `LAYERCACHE_CRASH_AT=<point>:<n>` in its environment, a process
//! aborts the n-th time it reaches `<point>`: no destructor runs and
//! nothing is flushed but what the kernel already has, as when a process
//! is killed there. Without the feature, [`point`] is an empty inline
//! function.

/// Marks a step at which a process may die; see the module docs.
#[cfg(feature = "testing")]
pub(super) fn point(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let wanted = std::env::var("LAYERCACHE_CRASH_AT").ok()?;
        let (point, nth) = wanted.rsplit_once(':')?;
        Some((point.to_string(), nth.parse().ok()?))
    });
    if let Some((point, nth)) = target
        && point == name
        && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *nth
    {
        std::process::abort();
    }
}

/// Marks a step at which a process may die (nothing without the feature
/// `testing`).
#[cfg(not(feature = "testing"))]
#[inline(always)]
pub(super) fn point(_name: &str) {}
