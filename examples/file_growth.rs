//! Grows a cache file to many entries, overwrites them while another
//! process reads, and reports what each write and each read cost and what
//! opening the result costs: the measurement behind the FileCache figures
//! in docs/benchmarks.md ("a file growing to 1M entries").
//!
//! ```sh
//! cargo run --release --example file_growth -- /tmp/growth.lc 1000000 2000000
//! ```
//!
//! Keys are shaped like the ftrack session's (40 bytes), written in a
//! scrambled order; values are 300 bytes; default options. Three phases:
//!
//! 1. **Fill**: one set per key. Every set is timed.
//! 2. **Overwrite**: sets of keys drawn at random, enough that cleaning
//!    runs (it starts once half the records are dead) and drops sealed
//!    segments, while a second process (this program again) reads random
//!    keys throughout and times every get. The report gives the sets'
//!    tail, the count of sets over 1 ms, the reader's tail overall and in
//!    the 20 ms after each segment drop beside the 20 ms before it.
//! 3. **Open**: a new process opens the cache, as any other process
//!    would, and reports the time.
//!
//! `FILE_GROWTH_READER_PAUSE_US=<n>` makes the reader pause n µs after each
//! get (by default it spins, keeping one of the machine's cores busy);
//! `FILE_GROWTH_NO_READER=1` runs the overwrites with no reader;
//! `FILE_GROWTH_BUSY_LOOP=1` replaces the reader with a process that spins
//! without touching the cache: the control that tells what the writer pays
//! for sharing the cores from what it pays for the reader's work.

#[path = "support/rng.rs"]
mod rng;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use layercache::{Cache, FileCache};
use rng::Rng;

fn key(n: u64) -> String {
    // A bijection on 0..2^64, so keys are distinct and in no useful order.
    let scrambled = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    format!("('Task', ['{scrambled:026x}'])")
}

/// Nanoseconds since the Unix epoch: a clock both processes share.
fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct Tail {
    count: usize,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    over_1ms: usize,
}

fn tail(mut nanos: Vec<u64>) -> Tail {
    if nanos.is_empty() {
        return Tail {
            count: 0,
            p50: 0,
            p99: 0,
            p999: 0,
            max: 0,
            over_1ms: 0,
        };
    }
    nanos.sort_unstable();
    let q = |q: f64| nanos[((nanos.len() - 1) as f64 * q) as usize];
    Tail {
        count: nanos.len(),
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        max: *nanos.last().unwrap(),
        over_1ms: nanos.iter().filter(|&&t| t > 1_000_000).count(),
    }
}

fn show(what: &str, t: &Tail) {
    println!(
        "{what}: {} samples, p50 {} ns, p99 {} ns, p99.9 {} ns, max {:.2} ms, {} over 1 ms",
        t.count,
        t.p50,
        t.p99,
        t.p999,
        t.max as f64 / 1e6,
        t.over_1ms
    );
}

/// The reader process: random gets until `stop` exists; writes (wall
/// time, latency) pairs to `out`.
fn read(path: &str, entries: u64, stop: &Path, out: &Path) -> layercache::Result<()> {
    if std::env::var_os("FILE_GROWTH_BUSY_LOOP").is_some() {
        std::fs::write(format!("{}.ready", out.display()), b"").expect("ready file");
        while !stop.exists() {
            let mut x = 0u64;
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
        }
        std::fs::write(out, b"").expect("write no samples");
        return Ok(());
    }
    let cache = FileCache::open(path)?;
    let mut rng = Rng(0x5EED_1234);
    let mut samples: Vec<(u64, u64)> = Vec::with_capacity(1 << 24);
    std::fs::write(format!("{}.ready", out.display()), b"").expect("ready file");
    // FILE_GROWTH_READER_PAUSE_US: a pause after each get, for a reader
    // that does not keep a core busy (default: none, a spinning reader).
    let pause = std::env::var("FILE_GROWTH_READER_PAUSE_US")
        .ok()
        .and_then(|us| us.parse().ok())
        .map(Duration::from_micros);
    let mut n = 0u64;
    loop {
        if n.is_multiple_of(1024) && stop.exists() {
            break;
        }
        if let Some(pause) = pause {
            std::thread::sleep(pause);
            if stop.exists() {
                break;
            }
        }
        n += 1;
        let key = key(rng.next() % entries);
        let at = wall_nanos();
        let start = Instant::now();
        let got = cache.get(&key)?;
        let took = start.elapsed().as_nanos() as u64;
        assert!(got.is_some(), "every key is there");
        samples.push((at, took));
    }
    let bytes: Vec<u8> = samples
        .iter()
        .flat_map(|(at, took)| at.to_le_bytes().into_iter().chain(took.to_le_bytes()))
        .collect();
    std::fs::write(out, bytes).expect("write the samples");
    Ok(())
}

fn main() -> layercache::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "/tmp/file_growth.lc".to_string());
    let entries: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let third = args.next();
    match third.as_deref() {
        Some("open") => {
            let start = Instant::now();
            let cache = FileCache::open(&path)?;
            let len = cache.len()?;
            let took = start.elapsed();
            let stats = cache.stats();
            println!(
                "open: {len} entries in {:.1} ms ({} segments from hints, {} scanned)",
                took.as_secs_f64() * 1e3,
                stats.hinted,
                stats.scanned
            );
            return Ok(());
        }
        Some("read") => {
            let stop = args.next().expect("the stop file");
            let out = args.next().expect("the samples file");
            return read(&path, entries, Path::new(&stop), Path::new(&out));
        }
        _ => {}
    }
    let overwrites: u64 = third.and_then(|n| n.parse().ok()).unwrap_or(entries * 2);

    let dir = Path::new(&path).parent().unwrap_or(Path::new("."));
    let name = Path::new(&path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for entry in std::fs::read_dir(dir).expect("the directory").flatten() {
        if entry.file_name().to_string_lossy().starts_with(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let cache = FileCache::open(&path)?;
    let value = vec![7u8; 300];

    // 1. Fill.
    let mut fill = Vec::with_capacity(entries as usize);
    let mut slowest = (0, 0);
    for n in 0..entries {
        let key = key(n);
        let start = Instant::now();
        cache.set(key, value.clone())?;
        let took = start.elapsed().as_nanos() as u64;
        if took > slowest.1 {
            slowest = (n, took);
        }
        fill.push(took);
    }
    show("fill: sets", &tail(fill));
    println!("fill: slowest set #{}; {:?}", slowest.0, cache.stats());

    // 2. Overwrite, with a reader in another process.
    let exe = std::env::current_exe().expect("this program's path");
    let stop = format!("{path}.stop");
    let out = format!("{path}.samples");
    let _ = std::fs::remove_file(&stop);
    let _ = std::fs::remove_file(format!("{out}.ready"));
    let alone = std::env::var_os("FILE_GROWTH_NO_READER").is_some();
    let mut reader = Command::new(&exe)
        .args([&path, &entries.to_string(), "read", &stop, &out])
        .spawn()
        .expect("start the reader");
    if alone {
        std::fs::write(&stop, b"").expect("stop file");
    }
    while !Path::new(&format!("{out}.ready")).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut rng = Rng(0xC0FF_EE00);
    let mut sets = Vec::with_capacity(overwrites as usize);
    let mut drops_at = Vec::new();
    let mut drops = cache.stats().drops;
    let mut seals = cache.stats().seals;
    let mut slowest = (0, 0);
    let mut slow = Vec::new();
    for n in 0..overwrites {
        let key = key(rng.next() % entries);
        let start = Instant::now();
        cache.set(key, value.clone()).expect("set");
        let took = start.elapsed().as_nanos() as u64;
        if took > slowest.1 {
            slowest = (n, took);
        }
        sets.push(took);
        let stats = cache.stats();
        let (dropped, sealed) = (stats.drops != drops, stats.seals != seals);
        if dropped {
            drops_at.push(wall_nanos());
        }
        if took > 1_000_000 {
            slow.push(format!(
                "#{n} {:.2} ms{}{}",
                took as f64 / 1e6,
                if dropped { " (dropped a segment)" } else { "" },
                if sealed { " (sealed)" } else { "" }
            ));
        }
        (drops, seals) = (stats.drops, stats.seals);
    }
    println!("overwrite: sets over 1 ms: {}", slow.join(", "));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&stop, b"").expect("stop file");
    assert!(
        reader.wait().expect("the reader").success(),
        "the reader failed"
    );
    show("overwrite: sets", &tail(sets));
    println!(
        "overwrite: slowest set #{}; {} segments dropped; {:?}",
        slowest.0,
        drops_at.len(),
        cache.stats()
    );
    let bytes = std::fs::read(&out).expect("the samples");
    let samples: Vec<(u64, u64)> = bytes
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().unwrap()),
                u64::from_le_bytes(c[8..].try_into().unwrap()),
            )
        })
        .collect();
    let window = 20_000_000;
    let near = |before: bool| -> Vec<u64> {
        samples
            .iter()
            .filter(|(at, _)| {
                drops_at.iter().any(|&d| {
                    if before {
                        *at + window >= d && *at < d
                    } else {
                        *at >= d && *at < d + window
                    }
                })
            })
            .map(|&(_, took)| took)
            .collect()
    };
    show("reader: gets", &tail(samples.iter().map(|s| s.1).collect()));
    show("reader: gets in the 20 ms before a drop", &tail(near(true)));
    show("reader: gets in the 20 ms after a drop", &tail(near(false)));
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(format!("{out}.ready"));
    let _ = std::fs::remove_file(&stop);
    println!(
        "files: {} bytes, {} garbage",
        cache.file_bytes()?,
        cache.garbage_bytes()?
    );
    drop(cache);

    // 3. Open, in a new process, once the hints of the sealed segments
    // (written in the background) are there.
    let count = |suffix: &str| {
        std::fs::read_dir(dir)
            .expect("the directory")
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&name) && n.ends_with(suffix)
            })
            .count()
    };
    let waited = Instant::now();
    while count(".hint") < count(".seg") && waited.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "hints: {} of {} sealed segments, after {:.0} ms",
        count(".hint"),
        count(".seg"),
        waited.elapsed().as_secs_f64() * 1e3
    );
    let status = Command::new(exe)
        .args([&path, &entries.to_string(), "open"])
        .status()
        .expect("run the open in a new process");
    assert!(status.success(), "the open failed");
    Ok(())
}
