//! The conformance suite, run on every cache in the crate and on a minimal
//! backend that implements only the four required methods.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use layercache::codec::{Bincode, Cbor, FnCodec, Json};
use layercache::testing::{self, Instrumented};
use layercache::{
    Cache, CacheExt, Clock, Entry, ErrorPolicy, Layered, MemoryCache, Proxy, Result, Schema,
    Serialised, SystemClock,
};

#[test]
fn memory_string_keys() {
    testing::run_all(MemoryCache::<String, String>::new);
    testing::run_string_keyed(MemoryCache::<String, String>::new);
}

#[test]
fn memory_byte_keys_and_values() {
    testing::run_all(MemoryCache::<Vec<u8>, Vec<u8>>::new);
}

#[test]
fn memory_single_shard() {
    testing::run_all(|| MemoryCache::<u64, String>::with_shards(1));
}

#[test]
fn proxy() {
    testing::run_all(|| Proxy::new(MemoryCache::<String, Vec<u8>>::new()));
    testing::run_string_keyed(|| Proxy::new(MemoryCache::<String, u64>::new()));
}

#[test]
fn boxed_and_shared() {
    testing::run_all(|| MemoryCache::<String, String>::new().boxed());
    testing::run_all(|| Arc::new(MemoryCache::<String, String>::new()));
}

fn three_layers() -> Layered<String, String> {
    Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(MemoryCache::new())
        .with_layer(MemoryCache::new())
}

#[test]
fn layered() {
    testing::run_all(three_layers);
    testing::run_string_keyed(three_layers);
    testing::run_all(|| three_layers().with_policy(ErrorPolicy::Degrade));
    testing::run_all(|| Layered::<u64, u64>::new().with_layer(MemoryCache::new()));
}

#[test]
fn layered_over_serialised() {
    let make = || {
        Layered::new()
            .with_layer(MemoryCache::new())
            .with_layer(MemoryCache::<String, Vec<u8>>::new().serialised(Json))
    };
    testing::run_all::<String, String, _>(make);
    testing::run_string_keyed::<String, _>(make);
}

#[test]
fn serialised_each_codec() {
    testing::run_all::<String, String, _>(|| {
        Serialised::new(MemoryCache::<String, Vec<u8>>::new(), Json)
    });
    testing::run_all::<String, Vec<u8>, _>(|| {
        Serialised::new(MemoryCache::<String, Vec<u8>>::new(), Cbor)
    });
    testing::run_all::<String, u64, _>(|| {
        Serialised::unversioned(MemoryCache::<String, Vec<u8>>::new(), Bincode::new())
    });
    testing::run_all::<String, u64, _>(|| {
        Serialised::versioned(
            MemoryCache::<String, Vec<u8>>::new(),
            Bincode::new(),
            Schema::<u64>::reflect().expect("u64 traces"),
        )
    });
    testing::run_all::<String, String, _>(|| {
        Serialised::unversioned(
            MemoryCache::<String, Vec<u8>>::new(),
            FnCodec::new(
                "utf8",
                |s: &String| Ok(s.as_bytes().to_vec()),
                |b: &[u8]| {
                    String::from_utf8(b.to_vec()).map_err(|e| layercache::Error::Decode {
                        codec: "utf8",
                        source: e.into(),
                    })
                },
            ),
        )
    });
    testing::run_string_keyed::<String, _>(|| {
        Serialised::new(MemoryCache::<String, Vec<u8>>::new(), Cbor).strict(true)
    });
}

#[test]
fn instrumented() {
    testing::run_all(|| Instrumented::new(MemoryCache::<String, String>::new()));
}

/// A backend as a user would write one: the four required methods over a
/// mutex-guarded BTreeMap of entries, checking expiry on the clock it is
/// given, everything else from the trait's defaults.
#[derive(Debug)]
struct Minimal {
    map: Mutex<BTreeMap<String, Entry<String>>>,
    clock: Arc<dyn Clock>,
}

impl Default for Minimal {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl Minimal {
    fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            map: Mutex::default(),
            clock,
        }
    }
}

impl Cache<String, String> for Minimal {
    fn get_entry(&self, key: &String) -> Result<Option<Entry<String>>> {
        let now = self.clock.now();
        let mut map = self.map.lock().unwrap();
        if map.get(key).is_some_and(|entry| entry.is_expired(now)) {
            map.remove(key);
        }
        Ok(map.get(key).cloned())
    }
    fn set_entry(&self, key: String, entry: Entry<String>) -> Result<()> {
        self.map.lock().unwrap().insert(key, entry);
        Ok(())
    }
    fn remove(&self, key: &String) -> Result<Option<String>> {
        let now = self.clock.now();
        let removed = self.map.lock().unwrap().remove(key);
        Ok(removed
            .filter(|entry| !entry.is_expired(now))
            .map(Entry::into_value))
    }
    fn keys(&self) -> Result<Vec<String>> {
        let now = self.clock.now();
        let map = self.map.lock().unwrap();
        Ok(map
            .iter()
            .filter(|(_, entry)| !entry.is_expired(now))
            .map(|(key, _)| key.clone())
            .collect())
    }
    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }
}

#[test]
fn trait_defaults_on_a_minimal_backend() {
    testing::run_all(Minimal::default);
    testing::run_string_keyed(Minimal::default);
}

/// The defaults of `values`, `clear` and `clear_matching` skip keys that
/// vanish between `keys` and the per-key call, deterministically: this
/// backend's `keys` removes every other key behind the caller's back.
#[derive(Debug, Default)]
struct Vanishing(Minimal);

impl Cache<String, String> for Vanishing {
    fn get_entry(&self, key: &String) -> Result<Option<Entry<String>>> {
        self.0.get_entry(key)
    }
    fn set_entry(&self, key: String, entry: Entry<String>) -> Result<()> {
        self.0.set_entry(key, entry)
    }
    fn remove(&self, key: &String) -> Result<Option<String>> {
        self.0.remove(key)
    }
    fn keys(&self) -> Result<Vec<String>> {
        let keys = self.0.keys()?;
        for key in keys.iter().step_by(2) {
            self.0.remove(key)?;
        }
        Ok(keys)
    }
}

#[test]
fn defaults_skip_keys_that_vanish() {
    let fill = |cache: &Vanishing| {
        for n in 0..10 {
            cache.set(format!("k{n}"), format!("v{n}")).unwrap();
        }
    };
    let cache = Vanishing::default();
    fill(&cache);
    assert_eq!(
        cache.values().unwrap().len(),
        5,
        "half the keys vanished before their get"
    );

    fill(&cache);
    assert_eq!(
        cache.clear_matching(&|_| true).unwrap(),
        5,
        "only keys still there count"
    );
    assert!(cache.0.keys().unwrap().is_empty());

    fill(&cache);
    cache.clear().unwrap();
    assert!(cache.0.keys().unwrap().is_empty());
}

/// Deadlines survive every cache and every wrapper: set through the
/// wrapper, read back through it, and expire on the clock it was given.
#[test]
fn deadlines_survive_every_wrapper() {
    testing::run_deadlines(|clock| MemoryCache::<String, String>::new().with_clock(clock));
    testing::run_deadlines(|clock| MemoryCache::<u64, Vec<u8>>::with_shards(1).with_clock(clock));
    testing::run_deadlines(|clock| MemoryCache::<String, u64>::new().with_clock(clock).boxed());
    testing::run_deadlines(|clock| {
        Box::new(MemoryCache::<String, u64>::new().with_clock(clock)) as Box<dyn Cache<String, u64>>
    });
    testing::run_deadlines(|clock| Arc::new(MemoryCache::<String, u64>::new().with_clock(clock)));
    testing::run_deadlines(|clock| Proxy::new(MemoryCache::<String, u64>::new().with_clock(clock)));
    testing::run_deadlines::<String, String, _>(|clock| {
        Serialised::new(
            MemoryCache::<String, Vec<u8>>::new().with_clock(clock),
            Json,
        )
    });
    testing::run_deadlines::<String, u64, _>(|clock| {
        Serialised::versioned(
            MemoryCache::<String, Vec<u8>>::new().with_clock(clock),
            Bincode::new(),
            Schema::version("v1").expect("a valid version"),
        )
    });
    testing::run_deadlines(|clock| {
        Instrumented::new(MemoryCache::<String, String>::new().with_clock(clock))
    });
    testing::run_deadlines(|clock| {
        testing::Watched::new(MemoryCache::<String, String>::new().with_clock(clock))
    });
    testing::run_deadlines(|clock: Arc<layercache::ManualClock>| Minimal::with_clock(clock));
    testing::run_deadlines(|clock| {
        Layered::new()
            .with_layer(MemoryCache::<String, String>::new().with_clock(clock.clone()))
            .with_layer(MemoryCache::new().with_clock(clock))
    });
    testing::run_deadlines(|clock| {
        Layered::new()
            .with_layer(MemoryCache::<String, String>::new().with_clock(clock.clone()))
            .with_layer(Proxy::new(MemoryCache::new().with_clock(clock.clone())))
            .with_layer(MemoryCache::new().with_clock(clock))
            .with_policy(ErrorPolicy::Degrade)
    });
}

/// A reference to a cache is a cache, deadlines included.
#[test]
fn deadlines_survive_a_reference() {
    let clock = Arc::new(layercache::ManualClock::new());
    let cache = MemoryCache::<String, String>::new().with_clock(clock.clone());
    testing::expiry_follows_the_clock(&&cache, &clock);
}

/// Promotion from a lower layer keeps the entry's deadlines: the top layer
/// does not serve the value after the lower layer's expiry.
#[test]
fn a_promoted_entry_expires_with_its_source() {
    let clock = Arc::new(layercache::ManualClock::new());
    let top = Arc::new(MemoryCache::<String, u32>::new().with_clock(clock.clone()));
    let bottom = Arc::new(MemoryCache::<String, u32>::new().with_clock(clock.clone()));
    let stack = Layered::new()
        .with_layer(top.clone())
        .with_layer(bottom.clone());
    let key = "k".to_string();
    bottom
        .set_with_freshness(
            key.clone(),
            1,
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
        .unwrap();
    let below = bottom.get_entry(&key).unwrap().unwrap();
    assert_eq!(stack.get(&key).unwrap(), Some(1));
    let promoted = top.get_entry(&key).unwrap().expect("promoted");
    assert_eq!(promoted, below, "deadlines kept exactly");
    clock.advance(Duration::from_secs(30));
    assert_eq!(top.get(&key).unwrap(), None);
    assert_eq!(stack.get(&key).unwrap(), None);
}
