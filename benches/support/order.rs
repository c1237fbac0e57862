//! Key order for the benches, shared by them (`#[path]`): keys visited in a
//! random order fixed by a seed, drawn outside the timing, so that no peer
//! gets a sequence the CPU's prefetcher can follow and runs compare.

/// The indexes `0..entries` in a random order (xorshift, fixed seed).
pub fn shuffled(entries: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..entries).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..entries).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

/// Visits the indexes `0..entries` in the order of [`shuffled`], over and
/// over: each call is one load from the precomputed permutation.
pub fn random_order(entries: usize) -> impl FnMut() -> usize {
    let order = shuffled(entries);
    let mut i = 0;
    move || {
        i = (i + 1) % entries;
        order[i]
    }
}
