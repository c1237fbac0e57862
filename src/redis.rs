//! [`RedisCache`]: a cache layer on a Redis server, shared by every process
//! and host that can reach it (feature `redis`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::{Client, Connection, ConnectionLike, RedisError, RedisWrite, ToRedisArgs};

use crate::cache::Cache;
use crate::entry::Entry;
use crate::error::{Error, Operation, Result};

/// A `Cache<String, Vec<u8>>` on a Redis server.
///
/// - **Namespaced**: every key is stored under a prefix (default
///   `layercache:`); `keys`, `clear` and `clear_matching` walk the
///   namespace with `SCAN` (never `KEYS`, which blocks the server) and never
///   touch keys outside it.
/// - **Optional TTL**: with [`ttl`](RedisCacheBuilder::ttl), entries expire
///   on the server on their own.
/// - **Pooled**: connections are kept in a small pool and shared by any
///   number of threads; a connection that fails is dropped, and the next
///   call connects again, so the cache works again when a server comes back
///   without being rebuilt.
/// - **Bounded waits**: connecting and every command have timeouts
///   (default 1 s each), so a server that is down or unreachable makes calls
///   fail with an [`Error::Backend`] naming the server and the command,
///   never hang. After a failure to connect or a timeout, calls fail at once
///   without touching the network for [`retry_after`] (default 500 ms);
///   then one call tries again while the others keep failing fast. A host
///   that drops packets therefore costs one timeout per interval, not one
///   per call (the calls already waiting when it stops answering each wait
///   out their own timeout).
/// - **Quiet reconnects**: a pooled connection that the server closed (it
///   restarted, or dropped idle clients) is replaced, and the command sent
///   again once on a new connection, instead of failing the call.
///
/// Values are bytes: wrap it in a [`Serialised`](crate::Serialised) for
/// typed values, and put a [`MemoryCache`](crate::MemoryCache) above it in
/// a [`Layered`](crate::Layered) stack with
/// [`ErrorPolicy::Degrade`](crate::ErrorPolicy::Degrade) so that an outage
/// does not take reads down.
///
/// `remove` uses `GETDEL`, so the server must be Redis 6.2 or later.
///
/// [`retry_after`]: RedisCacheBuilder::retry_after
///
/// ```no_run
/// use layercache::{Cache, RedisCache};
/// use std::time::Duration;
///
/// # fn main() -> layercache::Result<()> {
/// let cache = RedisCache::builder("redis://127.0.0.1:6379/")
///     .namespace("farm:ftrack:")
///     .ttl(Duration::from_secs(3600))
///     .build()?;
/// cache.set("('Task', ['4f0e'])".to_string(), b"{...}".to_vec())?;
/// # Ok(())
/// # }
/// ```
pub struct RedisCache {
    client: Client,
    /// The server's address with no password, for messages.
    server: String,
    namespace: String,
    /// The namespace with glob characters escaped, then `*`: SCAN's MATCH.
    pattern: String,
    ttl: Option<Duration>,
    connect_timeout: Duration,
    command_timeout: Duration,
    retry_after: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Connection>>,
    /// When this cache was built: the origin of `health`'s times.
    epoch: Instant,
    /// The server's health as last seen, one atomic word, so that reading
    /// it costs a load on every call. With the [`UP`] bit: answering (the
    /// other bits are when that was found, so each state is a new value).
    /// Without it: failing, and the nanoseconds after `epoch` before which
    /// calls fail without trying it. See [`RedisCache::may_try`].
    health: AtomicU64,
}

/// The bit of [`RedisCache`]'s `health` that says the server is answering.
const UP: u64 = 1 << 63;

/// Options for a [`RedisCache`]: see [`RedisCache::builder`].
#[derive(Debug, Clone)]
pub struct RedisCacheBuilder {
    url: String,
    namespace: String,
    ttl: Option<Duration>,
    connect_timeout: Duration,
    command_timeout: Duration,
    retry_after: Duration,
    max_idle: usize,
}

impl RedisCacheBuilder {
    /// The prefix of every key (default `layercache:`). Caches with
    /// different namespaces on one server do not see each other's entries
    /// (unless one namespace starts with the other). It may not be empty:
    /// `clear` would then delete every key in the database.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Entries expire this long after they are set (default: never). At
    /// least 1 ms and at most 100 years (Redis counts in milliseconds, and
    /// rejects expiry times it cannot represent).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long connecting may take (default 1 s), including the commands
    /// the client sends to set up a connection. It bounds each address the
    /// host name resolves to; resolving the name itself is not bounded, so
    /// use an IP address where DNS may hang.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the server may stay silent while a command is sent or its
    /// reply awaited (default 1 s). It bounds each socket read and write,
    /// not a command's total time: a reply trickling in slowly can take
    /// longer, and `keys`, `values` and the clears send many commands.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// After the server fails to connect or to answer in time, how long
    /// calls fail at once without trying it (default 500 ms). Zero tries
    /// the server on every call.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }

    /// How many idle connections the pool keeps (default 16). More threads
    /// than this still work; their extra connections are closed after use.
    pub fn max_idle(mut self, connections: usize) -> Self {
        self.max_idle = connections;
        self
    }

    /// The cache. Nothing is connected until the first call, so a server
    /// that is down now is not an error here.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the URL is not a Redis URL, or a timeout is
    /// zero.
    pub fn build(self) -> Result<RedisCache> {
        let server = redact(&self.url);
        let invalid = |why: &str| Error::backend(&server, Operation::Open, why.to_owned());
        let client = Client::open(self.url.as_str())
            .map_err(|e| Error::backend(&server, Operation::Open, Failed::Command("open", e)))?;
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(invalid("timeouts must be longer than zero"));
        }
        if self.namespace.is_empty() {
            return Err(invalid(
                "the namespace may not be empty (clear would delete every key in the database)",
            ));
        }
        if let Some(ttl) = self.ttl
            && !(Duration::from_millis(1)..=MAX_TTL).contains(&ttl)
        {
            return Err(invalid(&format!(
                "a TTL must be between 1 ms and 100 years, not {ttl:?}"
            )));
        }
        let pattern = format!("{}*", escape_glob(&self.namespace));
        Ok(RedisCache {
            client,
            server,
            namespace: self.namespace,
            pattern,
            ttl: self.ttl,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            retry_after: self.retry_after,
            max_idle: self.max_idle,
            idle: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            health: AtomicU64::new(UP),
        })
    }
}

/// The longest TTL a cache accepts: 100 years.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The URL with any password replaced, so errors and `Debug` never show it:
/// the one in the authority (`redis://user:secret@host`) and the `pass` or
/// `password` query parameter (`redis+unix:///run/redis.sock?pass=secret`).
fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.find("://") {
        Some(scheme) => {
            let rest = &base[scheme + 3..];
            let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
            match authority.rfind('@') {
                Some(at) => format!("{}://***@{}", &base[..scheme], &rest[at + 1..]),
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        for (n, parameter) in query.split('&').enumerate() {
            if n > 0 {
                out.push('&');
            }
            match parameter.split_once('=') {
                Some((name, _))
                    if name.eq_ignore_ascii_case("pass")
                        || name.eq_ignore_ascii_case("password") =>
                {
                    out.push_str(name);
                    out.push_str("=***");
                }
                _ => out.push_str(parameter),
            }
        }
    }
    out
}

/// `text` with Redis glob characters escaped, for a SCAN MATCH pattern.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Why a Redis command did not succeed: the source of an
/// [`Error::Backend`].
#[derive(Debug)]
enum Failed {
    /// The command (or connecting for it) failed, and this is what the
    /// client or the server said.
    Command(&'static str, RedisError),
    /// The server did not answer the command within the timeout.
    TimedOut(&'static str, Duration, RedisError),
    /// The command was not sent: the server failed recently and the retry
    /// interval has not passed.
    NotSent(&'static str, Duration),
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failed::Command(command, error) => write!(f, "{command} failed: {error}"),
            Failed::TimedOut(command, timeout, _) => {
                write!(f, "{command} failed: no answer within {timeout:?}")
            }
            Failed::NotSent(command, wait) => write!(
                f,
                "{command} not sent: the server failed less than {wait:?} ago \
                 (a call after that tries it again)"
            ),
        }
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failed::Command(_, error) | Failed::TimedOut(_, _, error) => Some(error),
            Failed::NotSent(..) => None,
        }
    }
}

/// Whether `error` says the connection is gone (closed by the server, reset)
/// rather than slow or refused: a pooled connection failing so is stale, and
/// the command is worth sending again once on a new connection.
fn is_stale(error: &RedisError) -> bool {
    error.is_connection_dropped() && !error.is_connection_refusal() && !error.is_timeout()
}

/// Whether `error` says the server cannot be reached or does not answer in
/// time, so that calls should back off for a while.
fn is_unreachable(error: &RedisError) -> bool {
    error.is_io_error() || error.is_timeout() || error.is_connection_refusal()
}

/// A key with the namespace in front, written straight into a command's
/// buffer: no `String` is built for it on the way.
struct Prefixed<'a>(&'a str, &'a str);

impl ToRedisArgs for Prefixed<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        out.reserve_space_for_args([self.0.len() + self.1.len()]);
        let mut arg = out.writer_for_next_arg();
        // Writing to the command's own buffer cannot fail.
        let _ = arg.write_all(self.0.as_bytes());
        let _ = arg.write_all(self.1.as_bytes());
    }
}

/// Keys are scanned in batches of about this many.
const SCAN_COUNT: usize = 1000;

impl RedisCache {
    /// Options for a cache on the server at `url`
    /// (`redis://[:password@]host[:port][/db]`).
    pub fn builder(url: impl Into<String>) -> RedisCacheBuilder {
        RedisCacheBuilder {
            url: url.into(),
            namespace: "layercache:".into(),
            ttl: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            retry_after: Duration::from_millis(500),
            max_idle: 16,
        }
    }

    /// A cache on the server at `url` with the default options.
    pub fn open(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).build()
    }

    /// The key prefix.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The server, as given, without its password.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The idle connections. A panic while the lock was held cannot leave
    /// the list itself inconsistent, so a poisoned lock is simply taken.
    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn connect(&self) -> std::result::Result<Connection, RedisError> {
        let connection = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        connection.set_read_timeout(Some(self.command_timeout))?;
        connection.set_write_timeout(Some(self.command_timeout))?;
        Ok(connection)
    }

    fn nanos_since_epoch(&self) -> u64 {
        // Below UP for 292 years after the cache was built.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(UP - 1)
    }

    fn after(&self, wait: Duration) -> u64 {
        let wait = u64::try_from(wait.as_nanos()).unwrap_or(UP);
        self.nanos_since_epoch()
            .saturating_add(wait)
            .clamp(1, UP - 1)
    }

    /// Whether this call may try the server, and if so the health it saw,
    /// for [`record`](Self::record): yes while the server is answering; no
    /// within `retry_after` of a failure; and once that has passed, yes for
    /// one caller, which holds the others off while it tries (for as long
    /// as a connect and a command may take).
    fn may_try(&self) -> Option<u64> {
        let seen = self.health.load(Ordering::Acquire);
        if seen & UP != 0 {
            return Some(seen);
        }
        if self.nanos_since_epoch() < seen {
            return None;
        }
        let probing = self.after(self.connect_timeout + self.command_timeout);
        self.health
            .compare_exchange(seen, probing, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| probing)
    }

    /// Records how a call that saw health `seen` ended. Only a call that
    /// saw the current state changes it, so a slow call that started
    /// before an outage was noticed cannot declare the server up again.
    fn record(&self, seen: u64, error: Option<&RedisError>) {
        let next = match error {
            Some(error) if is_unreachable(error) => {
                if self.retry_after.is_zero() {
                    return;
                }
                self.after(self.retry_after)
            }
            // An answer, even an error reply, means the server is up.
            _ if seen & UP != 0 => return,
            _ => UP | self.nanos_since_epoch(),
        };
        let changed = self
            .health
            .compare_exchange(seen, next, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if changed && next & UP == 0 {
            // The pooled connections are to the same server: drop them.
            self.idle().clear();
        }
    }

    /// Runs `work` on a pooled connection (connecting if none is idle).
    ///
    /// After an error reply the connection goes back to the pool (the
    /// reply was read whole, so the stream is in step); after an I/O error
    /// or a timeout it is dropped. When a *pooled* connection turns out to
    /// be closed, the pool is emptied (its other connections are as old)
    /// and `work` runs once more on a new connection. Every command here is
    /// safe to send twice, with one narrow exception that the
    /// [`remove`](Cache::remove) docs describe.
    fn with<T>(
        &self,
        operation: Operation,
        command: &'static str,
        mut work: impl FnMut(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        let Some(seen) = self.may_try() else {
            return Err(Error::backend(
                &self.server,
                operation,
                Failed::NotSent(command, self.retry_after),
            ));
        };
        let pooled = self.idle().pop();
        let (outcome, connection) = match pooled {
            Some(mut connection) => match work(&mut connection) {
                Err(error) if is_stale(&error) => {
                    self.idle().clear();
                    self.fresh(&mut work)
                }
                outcome => (outcome, Some(connection)),
            },
            None => self.fresh(&mut work),
        };
        self.record(seen, outcome.as_ref().err());
        let reusable = match &outcome {
            Ok(_) => true,
            Err(error) => !error.is_io_error() && !error.is_timeout(),
        };
        if let Some(connection) = connection.filter(|c| reusable && c.is_open()) {
            let mut idle = self.idle();
            if idle.len() < self.max_idle {
                idle.push(connection);
            }
        }
        outcome.map_err(|error| {
            let failed = if error.is_timeout() {
                Failed::TimedOut(command, self.command_timeout, error)
            } else {
                Failed::Command(command, error)
            };
            Error::backend(&self.server, operation, failed)
        })
    }

    /// Connects and runs `work` on the new connection, returning both
    /// (no connection if connecting failed).
    fn fresh<T>(
        &self,
        work: &mut impl FnMut(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> (std::result::Result<T, RedisError>, Option<Connection>) {
        match self.connect() {
            Ok(mut connection) => (work(&mut connection), Some(connection)),
            Err(error) => (Err(error), None),
        }
    }

    /// Every full key in the namespace, by SCAN, as bytes: another client
    /// may have stored keys that are not UTF-8 under the prefix.
    fn scan(&self, operation: Operation) -> Result<Vec<Vec<u8>>> {
        self.with(operation, "SCAN", |connection| {
            let mut keys = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&self.pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query(connection)?;
                // MATCH already holds SCAN to the prefix; checking again
                // keeps the slicing of prefixes below safe whatever the
                // server answers.
                keys.extend(
                    batch
                        .into_iter()
                        .filter(|key| key.starts_with(self.namespace.as_bytes())),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            // SCAN may return a key more than once.
            keys.sort_unstable();
            keys.dedup();
            Ok(keys)
        })
    }

    /// Deletes `keys` (full keys) in batches; returns how many existed.
    fn delete(&self, operation: Operation, keys: &[Vec<u8>]) -> Result<usize> {
        let mut deleted = 0;
        for batch in keys.chunks(SCAN_COUNT) {
            deleted += self.with(operation, "UNLINK", |connection| {
                redis::cmd("UNLINK").arg(batch).query::<usize>(connection)
            })?;
        }
        Ok(deleted)
    }
}

impl Cache<String, Vec<u8>> for RedisCache {
    fn get_entry(&self, key: &String) -> Result<Option<Entry<Vec<u8>>>> {
        Ok(self.get(key)?.map(Entry::new))
    }

    fn set_entry(&self, key: String, entry: Entry<Vec<u8>>) -> Result<()> {
        if entry.has_deadline() {
            return Err(Error::Unsupported {
                cache: "RedisCache",
                what: "keep an entry's deadlines yet",
            });
        }
        self.set(key, entry.value)
    }

    fn get(&self, key: &String) -> Result<Option<Vec<u8>>> {
        self.with(Operation::Get, "GET", |connection| {
            redis::cmd("GET")
                .arg(Prefixed(&self.namespace, key))
                .query(connection)
        })
    }

    fn set(&self, key: String, value: Vec<u8>) -> Result<()> {
        self.with(Operation::Set, "SET", |connection| {
            let mut command = redis::cmd("SET");
            command.arg(Prefixed(&self.namespace, &key)).arg(&value);
            if let Some(ttl) = self.ttl {
                // `build` holds a TTL to 1 ms ..= 100 years: this fits.
                command
                    .arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            }
            command.query::<()>(connection)
        })
    }

    /// Removes with `GETDEL` (Redis 6.2 or later), one round trip. If a
    /// pooled connection breaks after the server ran the command but
    /// before its answer arrived, the command goes once more on a new
    /// connection and answers `None`: the entry is gone, but its value is
    /// not returned. (`clear_matching` may undercount in the same way.)
    fn remove(&self, key: &String) -> Result<Option<Vec<u8>>> {
        self.with(Operation::Remove, "GETDEL", |connection| {
            redis::cmd("GETDEL")
                .arg(Prefixed(&self.namespace, key))
                .query(connection)
        })
    }

    /// The keys in the namespace, without the prefix. A key that is not
    /// UTF-8 (no `RedisCache` writes one) is left out.
    fn keys(&self) -> Result<Vec<String>> {
        let prefix = self.namespace.len();
        Ok(self
            .scan(Operation::Keys)?
            .into_iter()
            .filter_map(|mut key| String::from_utf8(key.split_off(prefix)).ok())
            .collect())
    }

    fn values(&self) -> Result<Vec<Vec<u8>>> {
        let keys = self.scan(Operation::Values)?;
        let mut values = Vec::with_capacity(keys.len());
        for batch in keys.chunks(SCAN_COUNT) {
            let found: Vec<Option<Vec<u8>>> =
                self.with(Operation::Values, "MGET", |connection| {
                    redis::cmd("MGET").arg(batch).query(connection)
                })?;
            values.extend(found.into_iter().flatten());
        }
        Ok(values)
    }

    fn clear(&self) -> Result<()> {
        let keys = self.scan(Operation::Clear)?;
        self.delete(Operation::Clear, &keys)?;
        Ok(())
    }

    /// Calls `matches` on the keys in the namespace (without the prefix)
    /// and deletes those it accepts. A key that is not UTF-8 is kept.
    fn clear_matching(&self, matches: &dyn Fn(&String) -> bool) -> Result<usize> {
        let prefix = self.namespace.len();
        let mut keys = self.scan(Operation::ClearMatching)?;
        keys.retain(|full| {
            std::str::from_utf8(&full[prefix..]).is_ok_and(|key| matches(&key.to_owned()))
        });
        self.delete(Operation::ClearMatching, &keys)
    }
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redis({}, namespace {:?})", self.server, self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://:hunter2@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        let cache = RedisCache::open("redis://user:hunter2@127.0.0.1:1/").expect("a valid URL");
        assert!(!format!("{cache:?}").contains("hunter2"));
    }

    #[test]
    fn passwords_in_query_parameters_never_show() {
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=1&pass=hunter2&user=ops"),
            "redis+unix:///run/redis.sock?db=1&pass=***&user=ops"
        );
        assert_eq!(
            redact("redis://db:6379/?PASSWORD=hunter2"),
            "redis://db:6379/?PASSWORD=***"
        );
        // An `@` after the host is not a password separator.
        assert_eq!(redact("redis://db:6379/0?x=a@b"), "redis://db:6379/0?x=a@b");
        assert_eq!(redact("redis://u:p@db/0?x=a@b"), "redis://***@db/0?x=a@b");
    }

    #[test]
    fn namespace_globs_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
