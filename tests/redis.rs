//! RedisCache against a real `redis-server` that each test starts on a free
//! loopback port (persistence off) and stops at its end: the conformance
//! suite, two processes sharing entries, namespace isolation, TTL expiry,
//! entry deadlines (kept as relative times, so clock skew is harmless, and
//! the stored header), and the server failing, going silent and coming
//! back.
//!
//! Without a `redis-server` on the PATH every test here says so loudly and
//! passes; with `LAYERCACHE_REQUIRE_REDIS=1` (as in CI) it fails instead.
//!
//! The two-process test runs this binary again as a child
//! (`child_stack --exact --nocapture`) with `LAYERCACHE_CHILD=child_stack`;
//! the child reads commands on stdin and answers on stdout, one line each,
//! marked with `#lc ` (libtest may print on the same line before it).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use layercache::testing::{self, RedisServer};
use layercache::{
    Cache, CacheExt, Clock, Entry, Error, ErrorPolicy, Layered, ManualClock, MemoryCache,
    RedisCache, Serialised, SystemClock, Timestamp,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A namespace no other cache in this process uses.
fn fresh_namespace(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("test:{test}:{}:", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn cache(server: &RedisServer, test: &str) -> RedisCache {
    RedisCache::builder(server.url())
        .namespace(fresh_namespace(test))
        .build()
        .expect("build a RedisCache")
}

/// Makes a user on `server` that may use only the key `allowed` (and no
/// other), and returns a URL that connects as it: every command on another
/// key gets an error reply (`NOPERM`), the way to make a server answer with
/// an error on purpose.
fn limited_to(server: &RedisServer, allowed: &str) -> String {
    let user = format!("limited{}", server.port());
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg("nopass")
        .arg(format!("~{allowed}"))
        .arg("+@all")
        .query::<()>(&mut raw(server))
        .expect("ACL SETUSER");
    format!("redis://{user}:any@127.0.0.1:{}/", server.port())
}

/// Whether `message` is the server refusing a command for lack of
/// permission (NOPERM, or a transaction aborted for it).
fn refused(message: &str) -> bool {
    message.contains("NOPERM") || message.contains("EXECABORT") || message.contains("permission")
}

/// A plain client on `server`, to look at and plant raw keys.
fn raw(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .expect("client")
        .get_connection()
        .expect("connect")
}

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// The header `RedisCache` puts in front of a value that has no freshness
/// lead: the magic `F1 4C 43` (`0xF1`, `LC`), then the tag `0`.
const PLAIN: &[u8] = b"\xF1LC0";

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

/// The message of `result`'s error, which must be an [`Error::Backend`]
/// naming the server.
fn backend_error<T: std::fmt::Debug>(result: layercache::Result<T>, server: &str) -> String {
    let error = result.expect_err("the call should fail");
    let message = error.to_string();
    assert!(
        matches!(error.root(), Error::Backend { .. }),
        "not a backend error: {error:?}"
    );
    assert!(
        message.contains(server),
        "error does not name the server {server}: {message}"
    );
    message
}

// ---------------------------------------------------------------------------
// Conformance, namespaces, TTL
// ---------------------------------------------------------------------------

#[test]
fn conformance() {
    let Some(server) = RedisServer::start_or_skip("redis conformance") else {
        return;
    };
    testing::run_all(|| cache(&server, "conformance"));
    testing::run_string_keyed(|| cache(&server, "conformance"));
    // Typed values through a codec, as a user would stack it.
    testing::run_all::<String, u64, _>(|| {
        cache(&server, "serialised").serialised(layercache::codec::Json)
    });
}

/// The deadline checks of the conformance suite that need no time to pass
/// on the cache's clock (the server expires entries on its own clock):
/// both deadlines come back, through the cache and through the wrappers a
/// user stacks on it.
#[test]
fn conformance_deadlines() {
    let Some(server) = RedisServer::start_or_skip("redis conformance deadlines") else {
        return;
    };
    let with_clock = |clock: Arc<layercache::ManualClock>| {
        RedisCache::builder(server.url())
            .namespace(fresh_namespace("deadlines"))
            .clock(clock)
            .build()
            .expect("build a RedisCache")
    };
    testing::run_deadlines_kept(with_clock);
    testing::run_deadlines_kept::<String, u64, _>(|clock| {
        with_clock(clock).serialised(layercache::codec::Json)
    });
    testing::run_deadlines_kept(|clock| {
        layercache::Layered::new()
            .with_layer(layercache::MemoryCache::<String, Vec<u8>>::new().with_clock(clock.clone()))
            .with_layer(with_clock(clock))
    });
}

#[test]
fn namespaces_never_touch_other_keys() {
    let Some(server) = RedisServer::start_or_skip("redis namespaces") else {
        return;
    };
    let mut raw = raw(&server);
    // Glob characters in a namespace are literal: clearing `app*[1]:` must
    // not touch `appX1:` or `app*1:`.
    let tricky = RedisCache::builder(server.url())
        .namespace("app*[1]:")
        .build()
        .unwrap();
    let other = RedisCache::builder(server.url())
        .namespace("app*[1]:x")
        .build()
        .unwrap();
    let planted = [
        "appX1:a",
        "app*1:a",
        "app*[1]",
        "unrelated",
        "App*[1]:a",
        "app*[1]-a",
    ];
    for key in planted {
        redis::cmd("SET")
            .arg(key)
            .arg("raw")
            .query::<()>(&mut raw)
            .unwrap();
    }
    // A key inside the namespace that is not UTF-8 (no RedisCache writes
    // one, another client might).
    let mut binary = bytes("app*[1]:");
    binary.extend_from_slice(&[0xff, 0xfe]);
    redis::cmd("SET")
        .arg(&binary)
        .arg("raw")
        .query::<()>(&mut raw)
        .unwrap();

    for n in 0..50 {
        tricky.set(format!("k{n}"), bytes("mine")).unwrap();
    }
    other.set("k".into(), bytes("other")).unwrap();
    // `other`'s namespace starts with `tricky`'s, so `tricky` sees its key
    // as `xk`: namespaces are prefixes, and one that extends another
    // overlaps it. What must never happen is a key outside the prefix.
    let keys = sorted(tricky.keys().unwrap());
    assert_eq!(keys.len(), 51, "{keys:?}");
    assert!(keys.contains(&"xk".to_string()));
    assert!(keys.iter().all(|k| k == "xk" || k.starts_with('k')));

    let removed = tricky
        .clear_matching(&|key: &String| key.starts_with("k1"))
        .unwrap();
    assert_eq!(removed, 11, "k1 and k10..k19");
    assert_eq!(tricky.get(&"k1".into()).unwrap(), None);
    assert_eq!(tricky.get(&"k2".into()).unwrap(), Some(bytes("mine")));

    tricky.clear().unwrap();
    assert_eq!(tricky.keys().unwrap(), Vec::<String>::new());
    // The non-UTF-8 key was inside the namespace, so clear removed it.
    assert!(
        !redis::cmd("EXISTS")
            .arg(&binary)
            .query::<bool>(&mut raw)
            .unwrap()
    );
    for key in planted {
        let value: Option<String> = redis::cmd("GET").arg(key).query(&mut raw).unwrap();
        assert_eq!(value.as_deref(), Some("raw"), "{key} was touched");
    }

    // Two caches with disjoint namespaces do not see each other.
    let a = cache(&server, "a");
    let b = cache(&server, "b");
    a.set("shared".into(), bytes("a")).unwrap();
    b.set("shared".into(), bytes("b")).unwrap();
    assert_eq!(a.get(&"shared".into()).unwrap(), Some(bytes("a")));
    assert_eq!(b.get(&"shared".into()).unwrap(), Some(bytes("b")));
    a.clear().unwrap();
    assert_eq!(a.get(&"shared".into()).unwrap(), None);
    assert_eq!(b.get(&"shared".into()).unwrap(), Some(bytes("b")));
    assert_eq!(b.keys().unwrap(), vec!["shared".to_string()]);
}

#[test]
fn namespace_with_many_keys_is_scanned_whole() {
    let Some(server) = RedisServer::start_or_skip("redis scan") else {
        return;
    };
    let cache = cache(&server, "many");
    let mut raw = raw(&server);
    // Enough keys, in and out of the namespace, for SCAN to take many
    // rounds and MGET/UNLINK several batches.
    let mut pipe = redis::pipe();
    for n in 0..5_000 {
        // Values as RedisCache stores them: the header without a freshness
        // lead, then the bytes.
        let mut stored = PLAIN.to_vec();
        stored.extend_from_slice(n.to_string().as_bytes());
        pipe.set(format!("{}{n}", cache.namespace()), stored)
            .ignore();
        pipe.set(format!("outside:{n}"), n).ignore();
    }
    pipe.query::<()>(&mut raw).unwrap();
    assert_eq!(cache.keys().unwrap().len(), 5_000);
    let mut values: Vec<u64> = cache
        .values()
        .unwrap()
        .iter()
        .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..5_000).collect::<Vec<_>>());
    cache.clear().unwrap();
    assert!(cache.keys().unwrap().is_empty());
    let outside: usize = redis::cmd("DBSIZE").query(&mut raw).unwrap();
    assert_eq!(outside, 5_000);
}

#[test]
fn ttl_expires_entries() {
    let Some(server) = RedisServer::start_or_skip("redis ttl") else {
        return;
    };
    let mut raw = raw(&server);
    let ttl = Duration::from_millis(300);
    let expiring = RedisCache::builder(server.url())
        .namespace(fresh_namespace("ttl"))
        .ttl(ttl)
        .build()
        .unwrap();
    let lasting = cache(&server, "no-ttl");

    expiring.set("k".into(), bytes("v")).unwrap();
    lasting.set("k".into(), bytes("v")).unwrap();
    let set_at = Instant::now();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}k", expiring.namespace()))
        .query(&mut raw)
        .unwrap();
    assert!(pttl > 0 && pttl <= 300, "PTTL {pttl}");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}k", lasting.namespace()))
        .query(&mut raw)
        .unwrap();
    assert_eq!(pttl, -1, "no TTL set means none on the server");
    if set_at.elapsed() < ttl / 2 {
        assert_eq!(expiring.get(&"k".into()).unwrap(), Some(bytes("v")));
    }

    thread::sleep(ttl + Duration::from_millis(200));
    assert_eq!(expiring.get(&"k".into()).unwrap(), None);
    assert!(expiring.keys().unwrap().is_empty());
    assert_eq!(lasting.get(&"k".into()).unwrap(), Some(bytes("v")));

    // Overwriting renews the TTL: with a long TTL, the remaining time
    // drops while the entry ages, and is whole again after a set.
    let long = RedisCache::builder(server.url())
        .namespace(fresh_namespace("ttl-long"))
        .ttl(Duration::from_secs(20))
        .build()
        .unwrap();
    let key = format!("{}k", long.namespace());
    long.set("k".into(), bytes("v1")).unwrap();
    thread::sleep(Duration::from_millis(1500));
    let aged: i64 = redis::cmd("PTTL").arg(&key).query(&mut raw).unwrap();
    assert!(aged > 0 && aged <= 18_500, "PTTL {aged} after 1.5 s");
    long.set("k".into(), bytes("v2")).unwrap();
    let renewed: i64 = redis::cmd("PTTL").arg(&key).query(&mut raw).unwrap();
    assert!(
        renewed > aged + 1000,
        "PTTL {renewed} after the overwrite, {aged} before"
    );
}

#[test]
fn bad_options_are_errors() {
    let error = RedisCache::open("http://example.com/").unwrap_err();
    assert!(error.to_string().contains("http://example.com/"), "{error}");
    // TLS is not built in: a clear error, not a failure at the first call.
    let error = RedisCache::open("rediss://:hunter2@127.0.0.1:1/").unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("TLS") && message.contains("rediss://***@127.0.0.1:1/"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    let builder = || RedisCache::builder("redis://:hunter2@127.0.0.1:1/");
    let cases = [
        (builder().command_timeout(Duration::ZERO), "timeout"),
        (builder().connect_timeout(Duration::ZERO), "timeout"),
        (builder().namespace(""), "namespace may not be empty"),
        (builder().ttl(Duration::ZERO), "TTL"),
        (builder().ttl(Duration::MAX), "TTL"),
    ];
    for (options, expected) in cases {
        let message = options.build().unwrap_err().to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains("during open"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
    // The longest TTL accepted is one Redis accepts.
    let Some(server) = RedisServer::start_or_skip("redis long ttl") else {
        return;
    };
    let century = RedisCache::builder(server.url())
        .namespace(fresh_namespace("century"))
        .ttl(Duration::from_secs(100 * 365 * 24 * 3600))
        .build()
        .unwrap();
    century.set("k".into(), bytes("v")).unwrap();
    assert_eq!(century.get(&"k".into()).unwrap(), Some(bytes("v")));
}

// ---------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// A cache on `server` with a fresh namespace, reading `clock`, with an
/// optional builder `ttl`.
fn clocked(
    server: &RedisServer,
    test: &str,
    clock: Arc<dyn Clock>,
    ttl: Option<Duration>,
) -> RedisCache {
    let mut builder = RedisCache::builder(server.url())
        .namespace(fresh_namespace(test))
        .clock(clock);
    if let Some(ttl) = ttl {
        builder = builder.ttl(ttl);
    }
    builder.build().expect("build a RedisCache")
}

/// A clock that stands still at the system clock's now: deadlines read
/// back through it can be compared exactly with those written.
fn frozen() -> Arc<ManualClock> {
    Arc::new(ManualClock::starting_at(SystemClock.now()))
}

/// The server's PTTL of `key` in `cache`'s namespace.
fn pttl(raw: &mut redis::Connection, cache: &RedisCache, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(format!("{}{key}", cache.namespace()))
        .query(raw)
        .unwrap()
}

/// The stored bytes of `key` in `cache`'s namespace, header and all.
fn stored(raw: &mut redis::Connection, cache: &RedisCache, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(format!("{}{key}", cache.namespace()))
        .query(raw)
        .unwrap()
}

/// Asserts `at` lies in `[latest - SECOND, latest]`: a deadline read back
/// may have lost the time the round trips took, never gained any.
#[track_caller]
fn within_a_second_before(at: Option<Timestamp>, latest: Timestamp, what: &str) {
    let at = at.unwrap_or_else(|| panic!("{what}: no deadline came back"));
    assert!(
        at <= latest && latest - at <= SECOND,
        "{what}: {at:?}, expected within a second before {latest:?}"
    );
}

#[test]
fn deadlines_come_back() {
    let Some(server) = RedisServer::start_or_skip("redis deadlines") else {
        return;
    };
    let clock = frozen();
    let cache = clocked(&server, "deadlines", clock.clone(), None);
    let set_at = clock.now();
    let expires = set_at + Duration::from_secs(60);
    let fresh_until = set_at + Duration::from_secs(20);
    cache
        .set_entry(
            "both".into(),
            Entry::new(bytes("v"))
                .with_expires(expires)
                .with_fresh_until(fresh_until),
        )
        .unwrap();
    let entry = cache.get_entry(&"both".into()).unwrap().expect("a hit");
    assert_eq!(entry.value, bytes("v"));
    within_a_second_before(entry.expires(), expires, "expires");
    within_a_second_before(entry.fresh_until(), fresh_until, "fresh_until");
    // The lead is stored exactly: both deadlines moved by the same amount.
    assert_eq!(
        entry.expires().unwrap() - entry.fresh_until().unwrap(),
        Duration::from_secs(40)
    );
    assert!(entry.is_fresh(set_at));
    assert!(!entry.is_fresh(fresh_until) && !entry.is_expired(fresh_until));

    // Expiry alone: fresh until it expires.
    cache
        .set_entry(
            "expiry".into(),
            Entry::new(bytes("e")).with_expires(expires),
        )
        .unwrap();
    let entry = cache.get_entry(&"expiry".into()).unwrap().expect("a hit");
    within_a_second_before(entry.expires(), expires, "expires");
    assert_eq!(entry.fresh_until(), None);

    // No deadline: none comes back, and the server keeps it for good.
    let mut raw = raw(&server);
    cache.set("forever".into(), bytes("f")).unwrap();
    let entry = cache.get_entry(&"forever".into()).unwrap().expect("a hit");
    assert_eq!(entry, Entry::new(bytes("f")));
    assert_eq!(pttl(&mut raw, &cache, "forever"), -1);

    // Already stale when written, not yet expired: served, stale.
    cache
        .set_entry(
            "stale".into(),
            Entry::new(bytes("s"))
                .with_expires(expires)
                .with_fresh_until(set_at),
        )
        .unwrap();
    let entry = cache.get_entry(&"stale".into()).unwrap().expect("a hit");
    within_a_second_before(entry.fresh_until(), set_at, "fresh_until");
    assert!(!entry.is_fresh(set_at));

    // Plain get strips the header and needs no PTTL.
    assert_eq!(cache.get(&"both".into()).unwrap(), Some(bytes("v")));
    let mut values = cache.values().unwrap();
    values.sort();
    assert_eq!(values, vec![bytes("e"), bytes("f"), bytes("s"), bytes("v")]);
    assert_eq!(cache.remove(&"both".into()).unwrap(), Some(bytes("v")));
    assert_eq!(cache.get_entry(&"both".into()).unwrap(), None);

    // With the system clock, through the CacheExt conveniences: the time
    // to live left, measured after the read, is at most what was given.
    let live = clocked(&server, "deadlines-system", Arc::new(SystemClock), None);
    live.set_with_freshness(
        "k".into(),
        bytes("v"),
        Duration::from_secs(30),
        Duration::from_secs(90),
    )
    .unwrap();
    let entry = live.get_entry(&"k".into()).unwrap().expect("a hit");
    let now = SystemClock.now();
    within_a_second_before(entry.expires(), now + Duration::from_secs(90), "expires");
    within_a_second_before(
        entry.fresh_until(),
        now + Duration::from_secs(30),
        "fresh_until",
    );
}

#[test]
fn the_server_expires_entries() {
    let Some(server) = RedisServer::start_or_skip("redis entry expiry") else {
        return;
    };
    let mut raw = raw(&server);
    let cache = cache(&server, "expiry");
    cache
        .set_with_ttl("short".into(), bytes("v"), Duration::from_millis(100))
        .unwrap();
    cache.set("lasting".into(), bytes("l")).unwrap();
    // Counting down from at most 100 ms, or (on a stalled machine) gone
    // already; never -1, which would mean no expiry.
    let left = pttl(&mut raw, &cache, "short");
    assert!((left > 0 && left <= 100) || left == -2, "PTTL {left}");
    // The server drops it by itself: poll, with a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get(&"short".into()).unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "a 100 ms entry was still there after 5 s"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(cache.get_entry(&"short".into()).unwrap(), None);
    assert_eq!(stored(&mut raw, &cache, "short"), None);
    assert_eq!(cache.keys().unwrap(), vec!["lasting".to_string()]);
    assert_eq!(cache.get(&"lasting".into()).unwrap(), Some(bytes("l")));
}

#[test]
fn builder_ttl_caps_entry_deadlines() {
    let Some(server) = RedisServer::start_or_skip("redis ttl cap") else {
        return;
    };
    let mut raw = raw(&server);
    let clock = frozen();
    let cap = Duration::from_secs(10);
    let cache = clocked(&server, "cap", clock.clone(), Some(cap));
    let now = clock.now();

    // A longer expiry is cut to the cap...
    cache
        .set_entry(
            "long".into(),
            Entry::new(bytes("l")).with_expires(now + HOUR),
        )
        .unwrap();
    let left = pttl(&mut raw, &cache, "long");
    assert!(left > 9_000 && left <= 10_000, "PTTL {left}");
    let entry = cache.get_entry(&"long".into()).unwrap().expect("a hit");
    within_a_second_before(entry.expires(), now + cap, "capped expires");

    // ...a shorter one is kept...
    let short = now + Duration::from_secs(3);
    cache
        .set_entry("short".into(), Entry::new(bytes("s")).with_expires(short))
        .unwrap();
    let left = pttl(&mut raw, &cache, "short");
    assert!(left > 2_000 && left <= 3_000, "PTTL {left}");
    let entry = cache.get_entry(&"short".into()).unwrap().expect("a hit");
    within_a_second_before(entry.expires(), short, "short expires");

    // ...an entry without one gets the cap, and get_entry says so.
    cache.set("plain".into(), bytes("p")).unwrap();
    let left = pttl(&mut raw, &cache, "plain");
    assert!(left > 9_000 && left <= 10_000, "PTTL {left}");
    let entry = cache.get_entry(&"plain".into()).unwrap().expect("a hit");
    within_a_second_before(entry.expires(), now + cap, "plain expires");
    assert_eq!(entry.fresh_until(), None);

    // Freshness within the cap is kept as it was, measured from the
    // capped expiry; freshness beyond it ends at the expiry.
    let fresh_until = now + Duration::from_secs(4);
    cache
        .set_entry(
            "fresh".into(),
            Entry::new(bytes("f"))
                .with_expires(now + HOUR)
                .with_fresh_until(fresh_until),
        )
        .unwrap();
    let entry = cache.get_entry(&"fresh".into()).unwrap().expect("a hit");
    within_a_second_before(entry.fresh_until(), fresh_until, "fresh_until");
    assert_eq!(
        entry.expires().unwrap() - entry.fresh_until().unwrap(),
        Duration::from_secs(6)
    );
    cache
        .set_entry(
            "fresh-long".into(),
            Entry::new(bytes("f"))
                .with_expires(now + HOUR)
                .with_fresh_until(now + Duration::from_secs(60)),
        )
        .unwrap();
    let entry = cache
        .get_entry(&"fresh-long".into())
        .unwrap()
        .expect("a hit");
    assert_eq!(entry.fresh_until(), None, "fresh until the capped expiry");
    assert_eq!(
        stored(&mut raw, &cache, "fresh-long"),
        Some([PLAIN, b"f"].concat())
    );

    // With a cap, freshness needs no expiry of the entry's own.
    cache
        .set_entry(
            "fresh-only".into(),
            Entry::new(bytes("f")).with_fresh_until(fresh_until),
        )
        .unwrap();
    let entry = cache
        .get_entry(&"fresh-only".into())
        .unwrap()
        .expect("a hit");
    within_a_second_before(entry.expires(), now + cap, "expires");
    within_a_second_before(entry.fresh_until(), fresh_until, "fresh_until");
}

#[test]
fn freshness_without_expiry_is_refused() {
    let Some(server) = RedisServer::start_or_skip("redis fresh without expiry") else {
        return;
    };
    let mut raw = raw(&server);
    let clock = frozen();
    let cache = clocked(&server, "refused", clock.clone(), None);
    let fresh = Entry::new(bytes("new")).with_fresh_until(clock.now() + HOUR);
    let error = cache.set_entry("k".into(), fresh).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Unsupported {
                cache: "RedisCache",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("fresh_until"), "{error}");
    assert_eq!(stored(&mut raw, &cache, "k"), None, "nothing stored");

    // Nor is what was there touched.
    cache.set("k".into(), bytes("old")).unwrap();
    let fresh = Entry::new(bytes("new")).with_fresh_until(clock.now() + HOUR);
    assert!(cache.set_entry("k".into(), fresh).is_err());
    assert_eq!(cache.get(&"k".into()).unwrap(), Some(bytes("old")));

    // An expiry further away than Redis is asked to keep is refused too,
    // rather than stored shorter or forever.
    let far = Entry::new(bytes("far")).with_expires(clock.now() + HOUR * 24 * 365 * 200);
    let error = cache.set_entry("k".into(), far).unwrap_err();
    assert!(
        matches!(error, Error::Unsupported { .. }) && error.to_string().contains("100 years"),
        "{error:?}"
    );
    assert_eq!(cache.get(&"k".into()).unwrap(), Some(bytes("old")));
}

#[test]
fn an_expired_entry_removes_what_was_there() {
    let Some(server) = RedisServer::start_or_skip("redis expired on arrival") else {
        return;
    };
    let mut raw = raw(&server);
    let clock = frozen();
    for ttl in [None, Some(HOUR)] {
        let cache = clocked(&server, "dead", clock.clone(), ttl);
        let now = clock.now();
        for expires in [now, Timestamp::from_millis(now.as_millis() - 1_000)] {
            cache.set("k".into(), bytes("old")).unwrap();
            assert!(stored(&mut raw, &cache, "k").is_some());
            cache
                .set_entry("k".into(), Entry::new(bytes("dead")).with_expires(expires))
                .unwrap();
            assert_eq!(stored(&mut raw, &cache, "k"), None, "ttl {ttl:?}");
            assert_eq!(cache.get_entry(&"k".into()).unwrap(), None);
            // On a key that was not there, it is no error either.
            cache
                .set_entry("k".into(), Entry::new(bytes("dead")).with_expires(expires))
                .unwrap();
            assert_eq!(cache.get(&"k".into()).unwrap(), None);
        }
    }
}

#[test]
fn stored_values_start_with_the_header() {
    let Some(server) = RedisServer::start_or_skip("redis header") else {
        return;
    };
    let mut raw = raw(&server);
    let clock = frozen();
    let cache = clocked(&server, "header", clock.clone(), None);
    let now = clock.now();

    cache.set("plain".into(), bytes("abc")).unwrap();
    assert_eq!(
        stored(&mut raw, &cache, "plain"),
        Some(b"\xF1LC0abc".to_vec())
    );
    cache.set("empty".into(), Vec::new()).unwrap();
    assert_eq!(stored(&mut raw, &cache, "empty"), Some(PLAIN.to_vec()));
    assert_eq!(cache.get(&"empty".into()).unwrap(), Some(Vec::new()));

    cache
        .set_entry(
            "fresh".into(),
            Entry::new(bytes("abc"))
                .with_expires(now + Duration::from_secs(60))
                .with_fresh_until(now + Duration::from_millis(20_500)),
        )
        .unwrap();
    let mut expected = b"\xF1LC1".to_vec();
    expected.extend_from_slice(&39_500u64.to_le_bytes());
    expected.extend_from_slice(b"abc");
    assert_eq!(stored(&mut raw, &cache, "fresh"), Some(expected));
    // The expiry is the key's time to live, not an absolute time.
    let left = pttl(&mut raw, &cache, "fresh");
    assert!(left > 59_000 && left <= 60_000, "PTTL {left}");

    // Someone removed the time to live (PERSIST): the lead has nothing to
    // hang from, and the entry reads as stale rather than fresh for good.
    redis::cmd("PERSIST")
        .arg(format!("{}fresh", cache.namespace()))
        .query::<i64>(&mut raw)
        .unwrap();
    let entry = cache.get_entry(&"fresh".into()).unwrap().expect("a hit");
    assert_eq!(entry.value, bytes("abc"));
    assert_eq!(entry.expires(), None);
    assert_eq!(entry.fresh_until(), Some(now));
    assert!(!entry.is_fresh(now));
}

#[test]
fn clock_skew_is_harmless() {
    let Some(server) = RedisServer::start_or_skip("redis clock skew") else {
        return;
    };
    let namespace = fresh_namespace("skew");
    let on = |clock: Arc<dyn Clock>| {
        RedisCache::builder(server.url())
            .namespace(namespace.clone())
            .clock(clock)
            .build()
            .unwrap()
    };
    let system = on(Arc::new(SystemClock));
    let to_live = Duration::from_secs(60);
    let fresh_for = Duration::from_secs(20);
    for (name, skewed) in [
        ("ahead", SystemClock.now() + HOUR),
        (
            "behind",
            Timestamp::from_millis(SystemClock.now().as_millis() - HOUR.as_millis() as u64),
        ),
    ] {
        let clock = Arc::new(ManualClock::starting_at(skewed));
        let writer = on(clock.clone());
        writer
            .set_with_freshness(name.into(), bytes(name), fresh_for, to_live)
            .unwrap();
        // The host with the right time sees about 60 s to live.
        let entry = system.get_entry(&name.into()).unwrap().expect("a hit");
        let now = SystemClock.now();
        within_a_second_before(entry.expires(), now + to_live, name);
        within_a_second_before(entry.fresh_until(), now + fresh_for, name);
        assert!(entry.is_fresh(now), "{name}");
        // And the skewed host, reading its own entry, sees the same on its
        // clock.
        let entry = writer.get_entry(&name.into()).unwrap().expect("a hit");
        within_a_second_before(entry.expires(), clock.now() + to_live, name);

        // The other way round: written with the right time, read by the
        // skewed host.
        system
            .set_with_ttl(name.into(), bytes(name), to_live)
            .unwrap();
        let entry = writer.get_entry(&name.into()).unwrap().expect("a hit");
        within_a_second_before(entry.expires(), clock.now() + to_live, name);
        assert!(!entry.is_expired(clock.now()), "{name}");
    }
}

#[test]
fn values_without_a_header_are_misses_and_kept() {
    let Some(server) = RedisServer::start_or_skip("redis foreign values") else {
        return;
    };
    let mut raw = raw(&server);
    let cache = cache(&server, "foreign");
    // Bytes that do not start with the magic, whatever they start with
    // (text, bincode's 0x00 and 0x01, the one-byte tags of an earlier
    // draft of the header), and bytes with the magic that are not a header
    // this version writes.
    let old_lead = [&[1u8][..], &5_000u64.to_le_bytes(), b"value"].concat();
    let foreign: [(&str, &[u8]); 11] = [
        ("v01", b"{\"written by\": \"layercache 0.1\"}"),
        ("empty", b""),
        ("zero", b"\x00"),
        ("bincode", b"\x00\x01\x00"),
        ("one", b"\x01\x02\x03"),
        ("old-lead", &old_lead),
        ("tag", b"\x07value"),
        ("magic-only", b"\xF1LC"),
        ("lowercase", b"\xF1lc0value"),
        ("unknown-tag", b"\xF1LC7value"),
        ("short-lead", b"\xF1LC1\x88\x13\x00"),
    ];
    for (key, value) in foreign {
        redis::cmd("SET")
            .arg(format!("{}{key}", cache.namespace()))
            .arg(value)
            .query::<()>(&mut raw)
            .unwrap();
    }
    cache.set("ours".into(), bytes("mine")).unwrap();
    for (key, value) in foreign {
        assert_eq!(cache.get(&key.into()).unwrap(), None, "{key}");
        assert_eq!(cache.get_entry(&key.into()).unwrap(), None, "{key}");
        // A codec above sees a miss, not bytes to fail on (and drop).
        let typed = Serialised::new(&cache, layercache::codec::Json);
        let found: Option<String> = typed.get(&key.into()).unwrap();
        assert_eq!(found, None, "{key}");
        assert_eq!(typed.stale(), 0, "{key}");
        assert_eq!(
            stored(&mut raw, &cache, key).as_deref(),
            Some(value),
            "{key} was touched"
        );
    }
    assert_eq!(cache.values().unwrap(), vec![bytes("mine")]);
    assert_eq!(cache.keys().unwrap().len(), foreign.len() + 1);
    // remove deletes the key all the same, and cannot return the value.
    assert_eq!(cache.remove(&"v01".into()).unwrap(), None);
    assert_eq!(stored(&mut raw, &cache, "v01"), None);
}

/// Headers with the magic but leads no `RedisCache` writes (another client,
/// a bug) read back without panicking or overflowing, with `fresh_until`
/// never after `expires`.
#[test]
fn planted_headers_with_any_lead_read_sanely() {
    let Some(server) = RedisServer::start_or_skip("redis planted leads") else {
        return;
    };
    let mut raw = raw(&server);
    let cache = cache(&server, "leads");
    let now = SystemClock.now();
    for (name, lead, ttl_ms) in [
        ("huge", u64::MAX, Some(60_000)),
        ("zero", 0, Some(60_000)),
        ("longer-than-ttl", 120_000, Some(60_000)),
        ("no-ttl", 5_000, None),
    ] {
        let key = format!("{}{name}", cache.namespace());
        let mut value = b"\xF1LC1".to_vec();
        value.extend_from_slice(&lead.to_le_bytes());
        value.extend_from_slice(b"v");
        redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .query::<()>(&mut raw)
            .unwrap();
        if let Some(ttl_ms) = ttl_ms {
            redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl_ms)
                .query::<()>(&mut raw)
                .unwrap();
        }
        assert_eq!(cache.get(&name.into()).unwrap(), Some(bytes("v")), "{name}");
        let entry = cache.get_entry(&name.into()).unwrap().expect("a hit");
        assert_eq!(entry.value, bytes("v"), "{name}");
        match entry.expires() {
            Some(expires) => {
                assert!(expires <= now + SECOND * 61, "{name}: {expires:?}");
                // A lead of 0 is fresh until it expires, one longer than
                // the time to live stale at once.
                match entry.fresh_until() {
                    None => assert_eq!(lead, 0, "{name}"),
                    Some(fresh) => assert!(lead > 0 && fresh < expires, "{name}"),
                }
                if lead >= 60_000 {
                    assert!(!entry.is_fresh(SystemClock.now()), "{name}");
                }
            }
            // A lead without a time to live: stale at once.
            None => assert!(!entry.is_fresh(SystemClock.now()), "{name}"),
        }
    }
}

#[test]
fn serialised_keeps_deadlines() {
    let Some(server) = RedisServer::start_or_skip("redis serialised deadlines") else {
        return;
    };
    let mut raw = raw(&server);
    let clock = frozen();
    let typed = Serialised::new(
        clocked(&server, "serialised", clock.clone(), None),
        layercache::codec::Json,
    );
    let now = clock.now();
    let ttl = Duration::from_secs(30);
    typed
        .set_with_ttl("k".to_string(), vec![1u32, 2, 3], ttl)
        .unwrap();
    let entry: Entry<Vec<u32>> = typed.get_entry(&"k".to_string()).unwrap().expect("a hit");
    assert_eq!(entry.value, vec![1u32, 2, 3]);
    within_a_second_before(entry.expires(), now + ttl, "expires");
    assert_eq!(entry.fresh_until(), None);
    assert_eq!(
        stored(&mut raw, typed.inner(), "k"),
        Some([PLAIN, b"[1,2,3]"].concat())
    );
    let left = pttl(&mut raw, typed.inner(), "k");
    assert!(left > 29_000 && left <= 30_000, "PTTL {left}");

    typed
        .set_with_freshness("f".to_string(), vec![4u32], SECOND * 10, ttl)
        .unwrap();
    let entry: Entry<Vec<u32>> = typed.get_entry(&"f".to_string()).unwrap().expect("a hit");
    within_a_second_before(entry.fresh_until(), now + SECOND * 10, "fresh_until");
    within_a_second_before(entry.expires(), now + ttl, "expires");

    // Refusals come through the wrapper as they are.
    let refused = typed.set_entry(
        "r".to_string(),
        Entry::new(vec![5u32]).with_fresh_until(now + ttl),
    );
    assert!(
        matches!(refused, Err(Error::Unsupported { .. })),
        "{refused:?}"
    );
}

/// Server connections accepted so far, from `INFO stats`.
fn connections_received(raw: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(raw).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received in INFO stats")
}

#[test]
fn error_replies_fail_the_call_and_keep_the_connection() {
    let Some(server) = RedisServer::start_or_skip("redis error replies") else {
        return;
    };
    let mut raw = raw(&server);
    // A user allowed the key `k` only: a command on `h` gets an error reply.
    let namespace = fresh_namespace("refused");
    let cache = RedisCache::builder(limited_to(&server, &format!("{namespace}k")))
        .namespace(namespace)
        .build()
        .expect("build a RedisCache");
    cache.set("k".into(), bytes("v")).unwrap();
    let before = connections_received(&mut raw);
    for _ in 0..20 {
        let message = backend_error(
            cache.get(&"h".into()),
            &format!("127.0.0.1:{}", server.port()),
        );
        assert!(
            message.contains("GET failed") && refused(&message),
            "{message}"
        );
        assert_eq!(cache.get(&"k".into()).unwrap(), Some(bytes("v")));
        // The same through the GET+PTTL transaction.
        let message = backend_error(
            cache.get_entry(&"h".into()),
            &format!("127.0.0.1:{}", server.port()),
        );
        assert!(
            message.contains("GET+PTTL failed") && refused(&message),
            "{message}"
        );
        assert_eq!(
            cache.get_entry(&"k".into()).unwrap().map(Entry::into_value),
            Some(bytes("v"))
        );
    }
    // The error replies were read whole, so the pooled connection went on
    // being used: no reconnect per failed call.
    assert_eq!(connections_received(&mut raw), before);
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// A cache on `url` with a fresh namespace, `timeout` for connecting and
/// for each command, and `retry_after`: short waits, so fault tests are
/// quick.
fn quick(url: &str, timeout: Duration, retry_after: Duration) -> RedisCache {
    RedisCache::builder(url)
        .namespace(fresh_namespace("fault"))
        .connect_timeout(timeout)
        .command_timeout(timeout)
        .retry_after(retry_after)
        .build()
        .unwrap()
}

/// A [`quick`] cache on `server` with 500 ms timeouts.
fn impatient(server: &RedisServer, retry_after: Duration) -> RedisCache {
    quick(&server.url(), Duration::from_millis(500), retry_after)
}

#[test]
fn stopped_server_fails_fast_and_recovers() {
    let Some(mut server) = RedisServer::start_or_skip("redis stop and restart") else {
        return;
    };
    let retry_after = Duration::from_millis(200);
    let cache = impatient(&server, retry_after);
    let url = server.url();
    cache.set("k".into(), bytes("v")).unwrap();
    assert_eq!(cache.get(&"k".into()).unwrap(), Some(bytes("v")));

    server.stop();
    // The first call finds the pooled connection closed, tries a new one,
    // is refused: an error naming the server and the command, well within
    // the timeouts (no hang).
    let started = Instant::now();
    let message = backend_error(cache.get(&"k".into()), &url);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(message.contains("GET failed"), "{message}");
    // Within the retry interval, every call fails without trying.
    let message = backend_error(cache.set("k".into(), bytes("w")), &url);
    assert!(message.contains("SET not sent"), "{message}");
    for result in [
        cache.remove(&"k".into()).map(drop),
        cache.keys().map(drop),
        cache.values().map(drop),
        cache.clear(),
        cache.clear_matching(&|_: &String| true).map(drop),
    ] {
        backend_error(result, &url);
    }
    // After the interval the cache tries again, and is refused again.
    thread::sleep(retry_after + Duration::from_millis(50));
    let message = backend_error(cache.get(&"k".into()), &url);
    assert!(message.contains("GET failed"), "{message}");

    server.restart().expect("restart redis-server");
    thread::sleep(retry_after + Duration::from_millis(50));
    // The same cache object works again; the restarted server is empty.
    assert_eq!(cache.get(&"k".into()).unwrap(), None);
    cache.set("k".into(), bytes("after")).unwrap();
    assert_eq!(cache.get(&"k".into()).unwrap(), Some(bytes("after")));
}

#[test]
fn an_error_reply_to_the_retry_means_the_server_is_back() {
    let Some(mut server) = RedisServer::start_or_skip("redis retry answered") else {
        return;
    };
    let retry_after = Duration::from_millis(200);
    let namespace = fresh_namespace("fault");
    let url = limited_to(&server, &format!("{namespace}k"));
    let cache = RedisCache::builder(url)
        .namespace(namespace.clone())
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_millis(500))
        .retry_after(retry_after)
        .build()
        .unwrap();
    server.stop();
    backend_error(
        cache.get(&"k".into()),
        &format!("127.0.0.1:{}", server.port()),
    );
    server.restart().expect("restart redis-server");
    // The restarted server has forgotten its users: make it again.
    limited_to(&server, &format!("{namespace}k"));
    thread::sleep(retry_after + Duration::from_millis(50));
    // The call that tries again gets an error reply: the server answered.
    let message = backend_error(
        cache.get(&"h".into()),
        &format!("127.0.0.1:{}", server.port()),
    );
    assert!(refused(&message), "{message}");
    // So the next call goes to it at once.
    assert_eq!(cache.get(&"k".into()).unwrap(), None);
}

/// A loopback server that accepts connections, counts them, keeps them
/// open and never answers, as a hung server does: its URL and the count.
/// Needs no redis-server.
fn silent_server() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "redis://127.0.0.1:{}/",
        listener.local_addr().unwrap().port()
    );
    let accepted = Arc::new(AtomicU64::new(0));
    thread::spawn({
        let accepted = Arc::clone(&accepted);
        move || {
            let mut open = Vec::new();
            for stream in listener.incoming() {
                accepted.fetch_add(1, Ordering::SeqCst);
                open.push(stream);
            }
        }
    });
    (url, accepted)
}

/// Runs `call` on a thread and waits at most `limit` for it: a call that
/// hangs fails the test instead of hanging it.
fn within<T: Send + 'static>(limit: Duration, call: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(call()));
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the call did not return within {limit:?}"))
}

#[test]
fn hung_server_times_commands_out() {
    let Some(server) = RedisServer::start_or_skip("redis hung server") else {
        return;
    };
    let url = server.url();
    let cache = Arc::new(quick(
        &url,
        Duration::from_millis(300),
        Duration::from_millis(300),
    ));
    cache.set("k".into(), bytes("v")).unwrap(); // a pooled connection
    server.pause().expect("SIGSTOP redis-server");
    // The pooled connection is open and the server silent: only the
    // command timeout ends the wait.
    let started = Instant::now();
    let result = within(Duration::from_secs(10), {
        let cache = Arc::clone(&cache);
        move || cache.get(&"k".into())
    });
    let waited = started.elapsed();
    let message = backend_error(result, &url);
    assert!(
        message.contains("GET failed: no answer within 300ms"),
        "{message}"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "gave up after {waited:?}"
    );
    let message = backend_error(cache.get(&"k".into()), &url);
    assert!(message.contains("GET not sent"), "{message}");

    server.resume().expect("SIGCONT redis-server");
    thread::sleep(Duration::from_millis(350));
    assert_eq!(cache.get(&"k".into()).unwrap(), Some(bytes("v")));
}

#[test]
fn one_caller_at_a_time_tries_a_silent_server() {
    let (url, accepted) = silent_server();
    let timeout = Duration::from_millis(100);
    let cache = quick(&url, timeout, timeout);
    let threads = 8;
    let run = Duration::from_millis(1200);
    let calls = AtomicU64::new(0);
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let started = Instant::now();
                while started.elapsed() < run {
                    assert!(cache.get(&"k".into()).is_err());
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let accepted = accepted.load(Ordering::SeqCst);
    let calls = calls.load(Ordering::Relaxed);
    // Each thread's first call connects (the server was not known to be
    // down); after that, one try per interval of at least `timeout`
    // (the try) + `timeout` (the wait): about 6 in 1.2 s. If every thread
    // tried after each interval it would be about 8 times as many.
    let limit = threads + 12;
    assert!(
        accepted <= limit,
        "{accepted} connections for {calls} calls; at most {limit} expected"
    );
    assert!(
        calls > 1000,
        "calls should fail fast between tries: {calls}"
    );
}

#[test]
fn restart_while_idle_is_invisible() {
    let Some(mut server) = RedisServer::start_or_skip("redis idle restart") else {
        return;
    };
    let cache = Arc::new(impatient(&server, Duration::from_secs(60)));
    // Fill the pool with several connections.
    thread::scope(|scope| {
        for t in 0..4 {
            let cache = &cache;
            scope.spawn(move || {
                for n in 0..50 {
                    cache.set(format!("{t}:{n}"), bytes("v")).unwrap();
                }
            });
        }
    });
    server.restart().expect("restart redis-server");
    // Every pooled connection is now closed by the old server's death. The
    // first call replaces them and succeeds: with a 60 s retry interval, a
    // failure here would leave the cache failing for the rest of the test.
    assert_eq!(cache.get(&"0:0".into()).unwrap(), None);
    cache.set("k".into(), bytes("v")).unwrap();
    assert_eq!(cache.get(&"k".into()).unwrap(), Some(bytes("v")));
}

#[test]
fn silent_server_costs_one_timeout_per_interval() {
    let (url, _) = silent_server();
    let timeout = Duration::from_millis(200);
    let cache = quick(&url, timeout, Duration::from_secs(60));
    let started = Instant::now();
    let message = backend_error(cache.get(&"k".into()), &url);
    let first = started.elapsed();
    assert!(
        first >= timeout / 2,
        "a silent server answered in {first:?}: {message}"
    );
    assert!(first < Duration::from_secs(5), "no hang: took {first:?}");
    // The next calls do not wait on it again.
    for _ in 0..100 {
        let message = backend_error(cache.get(&"k".into()), &url);
        assert!(message.contains("GET not sent"), "{message}");
    }
}

#[test]
fn layered_degrade_keeps_serving_through_an_outage() {
    let Some(mut server) = RedisServer::start_or_skip("redis layered outage") else {
        return;
    };
    let retry_after = Duration::from_millis(100);
    let stack: Layered<String, Vec<u8>> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(impatient(&server, retry_after))
        .with_policy(ErrorPolicy::Degrade);
    stack.set("before".into(), bytes("v")).unwrap();

    server.stop();
    // Reads: from memory on a hit; a miss in memory plus a failed Redis is
    // a miss, reported, not an error.
    assert_eq!(stack.get(&"before".into()).unwrap(), Some(bytes("v")));
    assert_eq!(stack.get(&"elsewhere".into()).unwrap(), None);
    assert!(stack.failures() >= 1);
    // Writes land in memory and are served from there.
    stack.set("during".into(), bytes("d")).unwrap();
    assert_eq!(stack.get(&"during".into()).unwrap(), Some(bytes("d")));
    // Strict would have failed the same read.
    let strict: Layered<String, Vec<u8>> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(impatient(&server, retry_after));
    assert!(strict.get(&"elsewhere".into()).is_err());

    server.restart().expect("restart redis-server");
    thread::sleep(retry_after + Duration::from_millis(50));
    stack.set("after".into(), bytes("a")).unwrap();
    let redis = stack.layer(1).unwrap();
    assert_eq!(redis.get(&"after".into()).unwrap(), Some(bytes("a")));
    // What was written during the outage never reached the new server.
    assert_eq!(redis.get(&"during".into()).unwrap(), None);
}

#[test]
fn server_killed_mid_run_under_load() {
    let Some(mut server) = RedisServer::start_or_skip("redis kill under load") else {
        return;
    };
    let retry_after = Duration::from_millis(50);
    let stack: Arc<Layered<String, Vec<u8>>> = Arc::new(
        Layered::new()
            .with_layer(MemoryCache::new())
            .with_layer(impatient(&server, retry_after))
            .with_policy(ErrorPolicy::Degrade),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stack = Arc::clone(&stack);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut calls = 0u64;
                let mut slowest = Duration::ZERO;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{t}:{}", n % 200);
                    let started = Instant::now();
                    if n.is_multiple_of(3) {
                        stack.set(key, n.to_le_bytes().to_vec()).unwrap();
                    } else if let Some(value) = stack.get(&key).unwrap() {
                        assert_eq!(value.len(), 8, "torn value for {key}");
                    }
                    slowest = slowest.max(started.elapsed());
                    calls += 1;
                    n += 1;
                }
                (calls, slowest)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    server.stop();
    thread::sleep(Duration::from_millis(300));
    server.restart().expect("restart redis-server");
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let (calls, slowest) = worker.join().expect("a worker panicked");
        assert!(calls > 0);
        // Every call returned within the connect and command timeouts.
        assert!(slowest < Duration::from_secs(2), "a call took {slowest:?}");
    }
    assert!(stack.failures() > 0, "the outage was never noticed");
    // After the restart, writes reach Redis again.
    thread::sleep(retry_after);
    stack.set("final".into(), bytes("f")).unwrap();
    assert_eq!(
        stack.layer(1).unwrap().get(&"final".into()).unwrap(),
        Some(bytes("f"))
    );
}

// ---------------------------------------------------------------------------
// Two processes sharing one stack's lower layer
// ---------------------------------------------------------------------------

const CHILD: &str = "LAYERCACHE_CHILD";
const MARK: &str = "#lc ";

/// A child process holding a `Layered[MemoryCache, RedisCache]`, driven
/// line by line.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(url: &str, namespace: &str) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["child_stack", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "child_stack")
            .env("LAYERCACHE_ARG_URL", url)
            .env("LAYERCACHE_ARG_NAMESPACE", namespace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a child");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, replies) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(MARK)
                    && tx.send(line[at + MARK.len()..].to_string()).is_err()
                {
                    break;
                }
            }
        });
        Peer {
            child,
            stdin,
            replies,
        }
    }

    /// Sends one command and waits for its reply.
    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to the child");
        self.stdin.flush().unwrap();
        self.replies
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no reply to {command:?}: {e}"))
    }

    fn finish(mut self) {
        drop(self.stdin);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child exited with {status}");
    }
}

/// The child: a two-layer stack, answering `set K V`, `get K` (the stack),
/// `top K` (the memory layer alone) and `forget K` (drop K from memory).
#[test]
fn child_stack() {
    if std::env::var(CHILD).as_deref() != Ok("child_stack") {
        return;
    }
    let url = std::env::var("LAYERCACHE_ARG_URL").unwrap();
    let namespace = std::env::var("LAYERCACHE_ARG_NAMESPACE").unwrap();
    let redis = RedisCache::builder(url)
        .namespace(namespace)
        .build()
        .unwrap();
    let stack: Layered<String, Vec<u8>> = Layered::new()
        .with_layer(MemoryCache::new())
        .with_layer(redis);
    let show = |value: Option<Vec<u8>>| match value {
        Some(bytes) => String::from_utf8(bytes).unwrap(),
        None => "<miss>".to_string(),
    };
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut words = line.splitn(3, ' ');
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("set"), Some(key), Some(value)) => {
                stack.set(key.into(), value.into()).unwrap();
                "ok".to_string()
            }
            (Some("get"), Some(key), None) => show(stack.get(&key.into()).unwrap()),
            (Some("top"), Some(key), None) => {
                show(stack.layer(0).unwrap().get(&key.into()).unwrap())
            }
            (Some("forget"), Some(key), None) => {
                show(stack.layer(0).unwrap().remove(&key.into()).unwrap())
            }
            _ => panic!("unknown command {line:?}"),
        };
        writeln!(out, "{MARK}{reply}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn two_processes_share_entries() {
    let Some(server) = RedisServer::start_or_skip("redis two processes") else {
        return;
    };
    let namespace = fresh_namespace("processes");
    let mut a = Peer::spawn(&server.url(), &namespace);
    let mut b = Peer::spawn(&server.url(), &namespace);

    // A writes; B's memory misses, Redis answers, and the value is promoted
    // into B's memory.
    assert_eq!(a.ask("set task:1 from-a"), "ok");
    assert_eq!(b.ask("top task:1"), "<miss>");
    assert_eq!(b.ask("get task:1"), "from-a");
    assert_eq!(b.ask("top task:1"), "from-a");

    // And the other way round.
    assert_eq!(b.ask("set task:2 from-b"), "ok");
    assert_eq!(a.ask("get task:2"), "from-b");

    // A key nobody wrote is a miss in both.
    assert_eq!(a.ask("get task:3"), "<miss>");
    assert_eq!(b.ask("get task:3"), "<miss>");

    // Memory layers are per process and not invalidated by other writers:
    // B keeps its copy of task:1 until its memory forgets it, then reads
    // A's new value through Redis.
    assert_eq!(a.ask("set task:1 from-a-again"), "ok");
    assert_eq!(b.ask("get task:1"), "from-a");
    assert_eq!(b.ask("forget task:1"), "from-a");
    assert_eq!(b.ask("get task:1"), "from-a-again");

    // The server holds what both wrote.
    let seen = RedisCache::builder(server.url())
        .namespace(namespace)
        .build()
        .unwrap();
    assert_eq!(
        sorted(seen.keys().unwrap()),
        vec!["task:1".to_string(), "task:2".to_string()]
    );
    a.finish();
    b.finish();
}
