//! A render farm sharing one cache: two hosts with three worker processes
//! each. Every worker reads shot records through the stack
//!
//! ```text
//! Layered[ MemoryCache                      (this process)
//!        , Serialised<Bincode>(FileCache)   (this host: one file per host)
//!        , Serialised<Bincode>(RedisCache)  (the whole farm) ]   Degrade
//! ```
//!
//! and fetches a record from "the server" (a 20 ms sleep) only when no layer
//! has it. Without sharing, the farm would fetch every shot once per worker;
//! with it, each shot is fetched about once for the whole farm.
//!
//! ```sh
//! cargo run --example shared_farm --features redis,testing
//! LAYERCACHE_REDIS_URL=redis://my-redis:6379/ cargo run --example shared_farm --features redis,testing
//! ```
//!
//! Without `LAYERCACHE_REDIS_URL` the example starts its own `redis-server`
//! on a free loopback port (Debian: `apt-get install -y redis-server`).
//! The workers are this program run again with `--worker`.

use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::codec::Bincode;
use layercache::error::Operation;
use layercache::testing::{Instrumented, RedisServer};
use layercache::{
    Cache, ErrorPolicy, FileCache, Layered, MemoryCache, RedisCache, Result, Schema, Serialised,
};
use serde::{Deserialize, Serialize};

const HOSTS: usize = 2;
const WORKERS_PER_HOST: usize = 3;
const SHOTS: u32 = 40;
const FETCH: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shot {
    id: u32,
    name: String,
    frames: (u32, u32),
    assets: Vec<String>,
}

/// Stands in for a query to the production tracking server.
fn fetch_shot(id: u32) -> Shot {
    std::thread::sleep(FETCH);
    Shot {
        id,
        name: format!("sq010_sh{id:03}0"),
        frames: (1001, 1001 + 24 * (id % 7 + 1)),
        assets: vec![format!("char_{}", id % 5), "env_forest".into()],
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = if args.get(1).map(String::as_str) == Some("--worker") {
        worker(&args[2..])
    } else {
        farm()
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the workers, waits for them, and sums up.
fn farm() -> Result<ExitCode> {
    let (_server, url) = match std::env::var("LAYERCACHE_REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) if RedisServer::available() => {
            let server =
                RedisServer::start().map_err(|e| layercache::Error::io("redis-server", e))?;
            let url = server.url();
            (Some(server), url)
        }
        Err(_) => {
            eprintln!(
                "no redis-server on PATH: install it (apt-get install -y redis-server) \
                 or set LAYERCACHE_REDIS_URL to a server"
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    // A namespace of this run's own, so that runs never see each other's
    // entries on a shared server; removed at the end.
    let namespace = format!("layercache-example:farm:{}:", std::process::id());
    let hosts = tempfile::tempdir().map_err(|e| layercache::Error::io("temp dir", e))?;
    println!("redis {url}, namespace {namespace:?}");
    println!(
        "{HOSTS} hosts x {WORKERS_PER_HOST} workers, {SHOTS} shots each, fetching a shot takes {FETCH:?}\n"
    );

    let exe = std::env::current_exe().map_err(|e| layercache::Error::io("current exe", e))?;
    let started = Instant::now();
    let mut children = Vec::new();
    for host in 0..HOSTS {
        for worker in 0..WORKERS_PER_HOST {
            let file = hosts.path().join(format!("host{host}.lc"));
            let child = Command::new(&exe)
                .arg("--worker")
                .args([&host.to_string(), &worker.to_string(), &url, &namespace])
                .arg(&file)
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| layercache::Error::io(&exe, e))?;
            children.push(child);
        }
    }
    let mut fetched = 0;
    let mut failed = false;
    for child in children {
        let output = child
            .wait_with_output()
            .map_err(|e| layercache::Error::io(&exe, e))?;
        let text = String::from_utf8_lossy(&output.stdout);
        print!("{text}");
        failed |= !output.status.success();
        fetched += text
            .lines()
            .filter_map(|line| {
                line.split("fetched ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .sum::<u32>();
    }
    let workers = (HOSTS * WORKERS_PER_HOST) as u32;
    println!(
        "\nthe farm fetched {fetched} shots from the server in {:?}; \
         without a shared cache it would have fetched {} (one per worker per shot)",
        started.elapsed(),
        workers * SHOTS
    );

    let redis = RedisCache::builder(url).namespace(namespace).build()?;
    println!(
        "redis holds {} shots; clearing the namespace",
        redis.keys()?.len()
    );
    redis.clear()?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One worker process: reads every shot twice through its stack.
fn worker(args: &[String]) -> Result<ExitCode> {
    let [host, worker, url, namespace, file] = args else {
        eprintln!("usage: shared_farm --worker HOST WORKER URL NAMESPACE FILE");
        return Ok(ExitCode::FAILURE);
    };
    let number: usize = host.parse().unwrap_or(0) * WORKERS_PER_HOST + worker.parse().unwrap_or(0);

    // The stack, each layer counted so that we can say where reads landed.
    let memory = Arc::new(Instrumented::new(MemoryCache::<String, Shot>::new()));
    // Bincode stores fields by position: the keys carry the shape of
    // `Shot`, so a build with a changed `Shot` misses instead of misreading.
    let schema = Schema::<Shot>::reflect()?;
    let file = Arc::new(Instrumented::new(Serialised::versioned(
        FileCache::open(file)?,
        Bincode::new(),
        schema.clone(),
    )));
    let redis = RedisCache::builder(url.as_str())
        .namespace(namespace.as_str())
        .ttl(Duration::from_secs(3600))
        .build()?;
    let redis = Arc::new(Instrumented::new(Serialised::versioned(
        redis,
        Bincode::new(),
        schema,
    )));
    let stack: Layered<String, Shot> = Layered::new()
        .with_layer(memory.clone())
        .with_layer(file.clone())
        .with_layer(redis.clone())
        .with_policy(ErrorPolicy::Degrade)
        .on_failure(|failure| eprintln!("degraded: {failure}"));
    if number == 0 {
        // The layers without their counting wrappers.
        println!(
            "stack: Layered[{:?}, {:?}, {:?}], {:?}",
            memory.inner(),
            file.inner(),
            redis.inner(),
            stack.policy()
        );
    }

    // Each worker starts at a different shot, as a farm's tasks would.
    let mut fetched = 0;
    for pass in 0..2 {
        for i in 0..SHOTS {
            let id = (i + number as u32 * 7) % SHOTS;
            let key = format!("Shot:{id}");
            let shot = match stack.get(&key)? {
                Some(shot) => shot,
                None => {
                    fetched += 1;
                    let shot = fetch_shot(id);
                    stack.set(key, shot.clone())?;
                    shot
                }
            };
            assert_eq!(shot.id, id, "pass {pass}: a record under the wrong key");
        }
    }

    let reads = u64::from(2 * SHOTS);
    let in_memory = reads - file.calls(Operation::Get);
    let in_file = file.calls(Operation::Get) - redis.calls(Operation::Get);
    let in_redis = redis.calls(Operation::Get) - fetched;
    println!(
        "host {host} worker {worker}: {reads} reads: {in_memory} memory, {in_file} host file, \
         {in_redis} redis, fetched {fetched} from the server"
    );
    Ok(ExitCode::SUCCESS)
}
