//! A layered stack in action: a fast memory layer over a serialised byte
//! store, read through with promotion.
//!
//! Run it with `cargo run --example layered`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use layercache::codec::Json;
use layercache::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: String,
    name: String,
}

/// Stands in for a remote server: slow, and we count every call.
struct Server {
    calls: AtomicUsize,
}

impl Server {
    fn fetch_user(&self, id: &str) -> User {
        self.calls.fetch_add(1, Ordering::Relaxed);
        User {
            id: id.to_string(),
            name: format!("user {id}"),
        }
    }
}

fn main() -> layercache::Result<()> {
    let server = Server {
        calls: AtomicUsize::new(0),
    };

    // Keep handles to both layers so we can look inside them.
    let memory: Arc<MemoryCache<String, User>> = Arc::new(MemoryCache::new());
    let store: Arc<MemoryCache<String, Vec<u8>>> = Arc::new(MemoryCache::new());
    let cache = Layered::new()
        .with_layer(memory.clone())
        .with_layer(store.clone().serialised(Json));
    println!("stack: {cache:?}");

    let get_user = |id: &str| -> layercache::Result<User> {
        let key = format!("User:{id}");
        if let Some(user) = cache.get(&key)? {
            println!("  {key}: hit");
            return Ok(user);
        }
        println!("  {key}: miss, asking the server");
        let user = server.fetch_user(id);
        cache.set(key, user.clone())?; // written through to both layers
        Ok(user)
    };

    println!("1. first get of a user goes to the server:");
    get_user("ada")?;
    println!("2. second get is a hit in the memory layer:");
    get_user("ada")?;
    println!(
        "   the store holds it as JSON: {}",
        String::from_utf8_lossy(&store.get(&"User:ada".to_string())?.unwrap_or_default())
    );

    println!("3. the memory layer is dropped (as when a session ends):");
    memory.clear()?;
    println!("   stack: {cache:?}");
    get_user("ada")?;
    println!("   promoted back into memory: {cache:?}");

    println!("4. remove at any depth, through the stack:");
    cache.remove(&"User:ada".to_string())?;
    println!("   stack: {cache:?}");
    get_user("ada")?;

    println!("5. a value with a time to live expires in every layer:");
    let key = "User:grace".to_string();
    let grace = User {
        id: "grace".to_string(),
        name: "Grace Hopper".to_string(),
    };
    cache.set_with_ttl(key.clone(), grace, Duration::from_millis(200))?;
    let entry = cache.get_entry(&key)?.expect("just set");
    println!(
        "   {key}: expires in {:?}",
        entry.time_to_live(cache.clock().now()).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(250));
    println!("   after 250 ms:");
    get_user("grace")?;

    println!("6. memoise a function over a cache:");
    let memo = Memoiser::new(MemoryCache::new());
    let lookups = AtomicUsize::new(0);
    let initials = memo.wrap("initials", |name: &str| {
        lookups.fetch_add(1, Ordering::Relaxed);
        name.split(' ')
            .filter_map(|w| w.chars().next())
            .collect::<String>()
    });
    for _ in 0..3 {
        initials.call("Ada Lovelace")?;
    }
    println!(
        "   initials(\"Ada Lovelace\") = {:?}, computed {} time(s) for 3 calls",
        initials.call("Ada Lovelace")?,
        lookups.load(Ordering::Relaxed)
    );

    println!(
        "server calls: {} (one per miss of the whole stack)",
        server.calls.load(Ordering::Relaxed)
    );
    Ok(())
}
