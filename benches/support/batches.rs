//! Timing lookups at scale with the keys fetched outside the timed region.
//!
//! At a million keys, reading `keys[i]` for a random `i` inside the timing
//! costs two cache misses of its own (the `String` and its bytes), as much
//! as the lookup being measured. [`time_in_batches`] reads a batch of keys
//! first, untimed, so they sit in L1, then times the batch's lookups.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Lookups timed per batch: 32 keys of ~60 bytes stay in L1, and a batch
/// is long enough (tens of microseconds) that reading the clock is noise.
const BATCH: usize = 32;

/// Runs `op` on `iters` keys taken from `keys` (already in the order to
/// visit) from `*cursor` on, wrapping; returns the time spent in `op` only.
pub fn time_in_batches(
    iters: u64,
    keys: &[String],
    cursor: &mut usize,
    mut op: impl FnMut(&String),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    let empty = String::new();
    let mut batch: [&String; BATCH] = [&empty; BATCH];
    while left > 0 {
        let n = (left as usize).min(BATCH);
        // Untimed: bring each key's bytes into the cache.
        for slot in batch.iter_mut().take(n) {
            let k = &keys[*cursor];
            *cursor = (*cursor + 1) % keys.len();
            black_box(k.bytes().fold(0u8, u8::wrapping_add));
            *slot = k;
        }
        let start = Instant::now();
        for k in &batch[..n] {
            op(k);
        }
        total += start.elapsed();
        left -= n as u64;
    }
    total
}
