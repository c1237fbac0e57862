//! The hit ratio of a FileCache under a byte budget on a Zipf workload:
//! the measurement behind "FileCache under a byte budget" in
//! docs/benchmarks.md. `scripts/zipf_vs_diskcache.py` runs it and then
//! replays the same requests against Python's `diskcache` with the same
//! budget.
//!
//! ```sh
//! cargo run --release --example zipf_hit_ratio -- /tmp/zipf 100000 500000 1000 0.1 0.9
//! ```
//!
//! Arguments: a directory, keys, requests, value bytes, budget (a share of
//! all keys' values), Zipf exponent. Requests are drawn from a Zipf
//! distribution over the keys (key 0 the most popular) with a fixed seed;
//! each is a `get`, and a miss is followed by a `set` (cache-aside). The
//! cache has default options and `max_bytes` of the budget. The requests
//! are written to `<dir>/requests.bin` (little-endian u32 key numbers) for
//! the Python side.

#[path = "support/rng.rs"]
mod rng;

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use layercache::{Cache, FileCache};
use rng::Rng;

fn main() -> layercache::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |n: usize, default: &str| args.get(n).cloned().unwrap_or_else(|| default.to_string());
    let dir = arg(0, "/tmp/zipf");
    let keys: usize = arg(1, "100000").parse().expect("keys");
    let requests: usize = arg(2, "500000").parse().expect("requests");
    let value_bytes: usize = arg(3, "1000").parse().expect("value bytes");
    let budget_share: f64 = arg(4, "0.1").parse().expect("budget share");
    let exponent: f64 = arg(5, "0.9").parse().expect("exponent");

    // The Zipf distribution's cumulative weights, for inverse sampling.
    let mut cumulative = Vec::with_capacity(keys);
    let mut total = 0.0;
    for rank in 1..=keys {
        total += 1.0 / (rank as f64).powf(exponent);
        cumulative.push(total);
    }
    let mut rng = Rng(0x5EED_2026);
    let trace: Vec<u32> = (0..requests)
        .map(|_| {
            let u = rng.unit() * total;
            cumulative.partition_point(|&c| c < u).min(keys - 1) as u32
        })
        .collect();
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("the directory");
    let mut file = std::fs::File::create(dir.join("requests.bin")).expect("the trace");
    for key in &trace {
        file.write_all(&key.to_le_bytes()).expect("write the trace");
    }

    let path = dir.join("cache.lc");
    for entry in std::fs::read_dir(dir).expect("the directory").flatten() {
        if entry.file_name().to_string_lossy().starts_with("cache.lc") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let budget = ((keys * value_bytes) as f64 * budget_share) as u64;
    let cache = FileCache::builder(&path).max_bytes(budget).open()?;
    let value = vec![b'v'; value_bytes];
    let (mut hits, mut largest) = (0usize, 0u64);
    let start = Instant::now();
    for (n, key) in trace.iter().enumerate() {
        let key = format!("key-{key}");
        if cache.get(&key)?.is_some() {
            hits += 1;
        } else {
            cache.set(key, value.clone())?;
        }
        if n % 1024 == 0 {
            largest = largest.max(cache.file_bytes()?);
        }
    }
    let took = start.elapsed();
    let stats = cache.stats();
    println!(
        "layercache: hit ratio {:.4} ({hits} of {requests}), budget {budget} bytes, largest {largest} bytes, \
         {} segments dropped, {} entries evicted, {:.2} s",
        hits as f64 / requests as f64,
        stats.drops,
        stats.evictions,
        took.as_secs_f64()
    );
    Ok(())
}
