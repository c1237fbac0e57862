//! A persistent stack: `Layered[MemoryCache, Serialised<Bincode>(FileCache)]`.
//!
//! Run it twice: the first run computes every value and stores it in the
//! file; the second is served from the file.
//!
//! ```sh
//! cargo run --example persistent            # first run: misses
//! cargo run --example persistent            # second run: hits from the file
//! cargo run --example persistent -- --fresh # start again
//! ```

use std::sync::Arc;
use std::time::Instant;

use layercache::codec::Bincode;
use layercache::prelude::*;
use layercache::{FileCache, Serialised};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shot {
    name: String,
    frames: u32,
    artists: Vec<String>,
}

/// Stands in for something slow: a server query, a render, a parse.
fn expensive_shot(n: u32) -> Shot {
    std::thread::sleep(std::time::Duration::from_millis(20));
    Shot {
        name: format!("sh{n:03}0"),
        frames: 24 * (n + 1),
        artists: vec!["ada".into(), "grace".into()],
    }
}

fn main() -> layercache::Result<()> {
    let path = std::env::temp_dir().join("layercache-example-persistent.lc");
    if std::env::args().any(|a| a == "--fresh") {
        let _ = std::fs::remove_file(&path);
    }
    let file = Arc::new(FileCache::open(&path)?);
    let cache: Layered<String, Shot> =
        Layered::new()
            .with_layer(MemoryCache::new())
            .with_layer(Serialised::versioned(
                file.clone(),
                Bincode::new(),
                // Bincode stores fields by position: the keys carry the
                // shape of `Shot`, so a changed `Shot` misses, never misreads.
                Schema::<Shot>::reflect()?,
            ));
    println!("cache file: {} ({} entries)", path.display(), file.len()?);
    println!("stack: {cache:?}");

    let started = Instant::now();
    let (mut hits, mut misses) = (0, 0);
    for n in 0..10 {
        let key = format!("Shot:{n}");
        match cache.get(&key)? {
            Some(_) => hits += 1,
            None => {
                misses += 1;
                cache.set(key, expensive_shot(n))?;
            }
        }
    }
    println!(
        "10 shots: {hits} from the file, {misses} computed, in {:?}",
        started.elapsed()
    );
    if misses > 0 {
        println!("run again: the next run is served from the file");
    }
    println!("stack: {cache:?}");
    Ok(())
}
