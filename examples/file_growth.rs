//! Grows a cache file to many entries and reports what each write cost and
//! what opening the result costs: the measurement behind the FileCache
//! figures in docs/benchmarks.md ("a file growing to 1M entries").
//!
//! ```sh
//! cargo run --release --example file_growth -- /tmp/growth.lc 1000000
//! ```
//!
//! Keys are shaped like the ftrack session's (40 bytes), written in a
//! scrambled order; values are 300 bytes; default options. Every set is
//! timed; the report gives the median, the 99.9th percentile, the slowest
//! set and where it happened, and how many sets took over 1 ms. Then a new
//! process (this program again) opens the file, so that the open builds its
//! index from the file as any other process would, and reports the time.

use std::process::Command;
use std::time::Instant;

use layercache::{Cache, FileCache};

fn key(n: u64) -> String {
    // A bijection on 0..2^64, so keys are distinct and in no useful order.
    let scrambled = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    format!("('Task', ['{scrambled:026x}'])")
}

fn main() -> layercache::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "/tmp/file_growth.lc".to_string());
    let entries: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);

    if args.next().as_deref() == Some("open") {
        let start = Instant::now();
        let cache = FileCache::open(&path)?;
        let len = cache.len()?;
        println!(
            "open: {len} entries in {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        return Ok(());
    }

    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(format!("{path}.lock"));
    let cache = FileCache::open(&path)?;
    let value = vec![7u8; 300];
    let mut nanos = Vec::with_capacity(entries as usize);
    for n in 0..entries {
        let key = key(n);
        let start = Instant::now();
        cache.set(key, value.clone())?;
        nanos.push(start.elapsed().as_nanos() as u64);
    }
    let over_1ms = nanos.iter().filter(|&&t| t > 1_000_000).count();
    let (slowest_at, slowest) = nanos
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|&(_, t)| t)
        .unwrap_or_default();
    nanos.sort_unstable();
    let quantile = |q: f64| nanos[((nanos.len() - 1) as f64 * q) as usize];
    println!(
        "{entries} sets: p50 {} ns, p99.9 {} ns, slowest {:.1} ms (set #{slowest_at}), {over_1ms} over 1 ms",
        quantile(0.5),
        quantile(0.999),
        slowest as f64 / 1e6,
    );
    drop(cache);

    let exe = std::env::current_exe().expect("this program's path");
    let status = Command::new(exe)
        .args([&path, &entries.to_string(), "open"])
        .status()
        .expect("run the open in a new process");
    assert!(status.success(), "the open failed");
    Ok(())
}
