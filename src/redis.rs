//! [`RedisCache`]: a cache layer on a Redis server, shared by every process
//! and host that can reach it (feature `redis`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::{Client, Connection, ConnectionLike, RedisError, RedisWrite, ToRedisArgs};

use crate::cache::Cache;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::entry::Entry;
use crate::error::{Error, Operation, Result};

/// A `Cache<String, Vec<u8>>` on a Redis server.
///
/// - **Namespaced**: every key is stored under a prefix (default
///   `layercache:`); `keys`, `clear` and `clear_matching` walk the
///   namespace with `SCAN` (never `KEYS`, which blocks the server) and never
///   touch keys outside it.
/// - **Deadlines kept, as relative times**: an [`Entry`]'s `expires`
///   becomes the key's time to live on the server (`SET ... PX`), and its
///   `fresh_until` is kept in a small header in front of the stored value
///   as a lead before that expiry. Nothing absolute is stored, so hosts
///   whose clocks disagree still agree on how long an entry has left. See
///   [`set_entry`](Cache::set_entry) for the format and what is refused.
/// - **Optional TTL cap**: with [`ttl`](RedisCacheBuilder::ttl), no entry
///   lives longer than that on the server, and entries without an expiry
///   get it.
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
/// - **Timed-out writes may still land**: a write that fails with a
///   timeout may still be applied by the server later (a server that is
///   stalled, not gone, runs the command when it resumes), with its time to
///   live counted from when it runs. Such an entry can outlive its
///   deadline by as long as the server was stalled. A write that succeeds
///   keeps its deadline to within the time the call took.
/// - **Foreign values are misses**: every stored value starts with a
///   header that begins with fixed magic bytes (see
///   [`set_entry`](Cache::set_entry)); bytes without it (written by
///   layercache 0.1 or another program) read as a miss and are left in
///   place, as are keys of another type (a hash, a list) under the
///   namespace.
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
    /// The clock deadlines are turned into relative times by, and back.
    clock: Arc<dyn Clock>,
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
    clock: Arc<dyn Clock>,
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

    /// The longest an entry lives on the server (default: no cap). An
    /// entry's expiry becomes the earlier of its own `expires` and `ttl`
    /// after it is set; an entry without an expiry (a plain
    /// [`set`](Cache::set)) expires `ttl` after it is set. Reading the entry
    /// back with [`get_entry`](Cache::get_entry) reports the expiry it got.
    ///
    /// At least 1 ms and at most 100 years (Redis counts in milliseconds,
    /// and rejects expiry times it cannot represent).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The clock that deadlines are measured against (default
    /// [`SystemClock`]): [`set_entry`](Cache::set_entry) turns an entry's
    /// deadlines into times from this clock's now, and
    /// [`get_entry`](Cache::get_entry) turns the server's remaining time
    /// back into deadlines on it. It is also the cache's
    /// [`clock`](Cache::clock). Tests inject a
    /// [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
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
            clock: self.clock,
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
/// A key of another type under the namespace (a hash, a list: another
/// program's) answers `WRONGTYPE`: that is a foreign value, so a miss left
/// in place, as foreign strings are, not a failed call.
fn foreign_type_is_a_miss<T>(
    answer: std::result::Result<Option<T>, RedisError>,
) -> std::result::Result<Option<T>, RedisError> {
    let wrong_type = |error: &RedisError| {
        error.code() == Some("WRONGTYPE")
            // In a transaction the error is one of the pipeline's.
            || error.clone().into_server_errors().is_some_and(|errors| {
                errors.iter().any(|(_, error)| error.code() == "WRONGTYPE")
            })
    };
    match answer {
        Err(error) if wrong_type(&error) => Ok(None),
        answer => answer,
    }
}

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

/// The first bytes of every value a [`RedisCache`] stores: `0xF1` (which
/// no UTF-8 text starts with when `L` follows, so JSON or other text can
/// never carry it), then `LC`. Stored bytes that do not start with it were
/// written by someone else (layercache 0.1, another program).
const MAGIC: [u8; 3] = [0xF1, b'L', b'C'];
/// The byte after [`MAGIC`]: no freshness lead, the value follows.
const TAG_PLAIN: u8 = b'0';
/// The byte after [`MAGIC`]: an 8-byte little-endian lead in milliseconds
/// (how long before its expiry the entry goes stale) follows, then the
/// value.
const TAG_LEAD: u8 = b'1';
/// The length of a [`TAG_PLAIN`] header: the magic and the tag.
const PLAIN_HEADER: usize = MAGIC.len() + 1;
/// The length of a [`TAG_LEAD`] header: the magic, the tag and the lead.
const LEAD_HEADER: usize = PLAIN_HEADER + 8;

/// A value with its header in front, written straight into a command's
/// buffer: the value is not copied into a new `Vec` on the way.
struct Framed<'a> {
    /// Milliseconds from going stale to expiring, if the entry goes stale
    /// before it expires.
    lead: Option<u64>,
    value: &'a [u8],
}

impl ToRedisArgs for Framed<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let header = if self.lead.is_some() {
            LEAD_HEADER
        } else {
            PLAIN_HEADER
        };
        out.reserve_space_for_args([header + self.value.len()]);
        let mut arg = out.writer_for_next_arg();
        // Writing to the command's own buffer cannot fail.
        let _ = arg.write_all(&MAGIC);
        match self.lead {
            Some(lead) => {
                let _ = arg.write_all(&[TAG_LEAD]);
                let _ = arg.write_all(&lead.to_le_bytes());
            }
            None => {
                let _ = arg.write_all(&[TAG_PLAIN]);
            }
        }
        let _ = arg.write_all(self.value);
    }
}

/// The value stored in `bytes` and its freshness lead, the header
/// stripped; `None` when the bytes do not start with a header this version
/// writes (no [`MAGIC`]: a value from layercache 0.1 or another program;
/// an unknown tag; too short for its tag).
fn unframe(mut bytes: Vec<u8>) -> Option<(Vec<u8>, Option<u64>)> {
    let (header, lead) = match bytes.strip_prefix(&MAGIC)?.split_first()? {
        (&TAG_PLAIN, _) => (PLAIN_HEADER, None),
        (&TAG_LEAD, rest) => {
            let lead: [u8; 8] = rest.get(..8)?.try_into().ok()?;
            (LEAD_HEADER, Some(u64::from_le_bytes(lead)))
        }
        _ => return None,
    };
    bytes.drain(..header);
    Some((bytes, lead))
}

/// What [`RedisCache`]'s `set_entry` sends for an entry that expires, at
/// one instant: the key's time to live and the freshness lead, both in
/// milliseconds.
struct Plan {
    px: u64,
    lead: Option<u64>,
}

/// The longest time to live [`RedisCache`] sends, in milliseconds: the
/// builder's limit for its `ttl`, [`MAX_TTL`].
const MAX_PX: u64 = MAX_TTL.as_millis() as u64;

/// Why an entry that goes stale but never expires is refused.
const FRESH_WITHOUT_EXPIRY: Error = Error::Unsupported {
    cache: "RedisCache",
    what: "keep fresh_until on an entry that never expires (the freshness deadline is \
           stored as a lead before the expiry; give the entry an expiry, or the cache a ttl)",
};

/// Why an entry that expires too far ahead is refused.
const TOO_FAR: Error = Error::Unsupported {
    cache: "RedisCache",
    what: "keep an expiry more than 100 years away",
};

impl RedisCache {
    /// Options for a cache on the server at `url`
    /// (`redis://[:password@]host[:port][/db]`).
    pub fn builder(url: impl Into<String>) -> RedisCacheBuilder {
        RedisCacheBuilder {
            url: url.into(),
            namespace: "layercache:".into(),
            ttl: None,
            clock: Arc::new(SystemClock),
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

    /// What to send for an entry with `expires` and `fresh_until` at `now`
    /// by this cache's clock, when it expires (by itself or by the `ttl`
    /// cap); `None` when it has expired by `now`.
    ///
    /// The expiry is the earlier of `expires` and `now + ttl`. Both are
    /// whole milliseconds, and `now + ttl` rounds up, so the time to live
    /// is the deadline less `now`, rounded up. The lead keeps `fresh_until`
    /// as it was, measured back from that expiry; none when the entry stays
    /// fresh until it expires.
    fn plan(
        &self,
        now: Timestamp,
        expires: Option<Timestamp>,
        fresh_until: Option<Timestamp>,
    ) -> Option<Plan> {
        let cap = self.ttl.map(|ttl| now + ttl);
        let deadline = match (expires, cap) {
            (Some(expires), Some(cap)) => expires.min(cap),
            (expires, cap) => expires.or(cap)?,
        };
        if deadline <= now {
            return None;
        }
        let lead = fresh_until
            .filter(|&fresh| fresh < deadline)
            .map(|fresh| deadline.as_millis() - fresh.as_millis());
        Some(Plan {
            px: deadline.as_millis() - now.as_millis(),
            lead,
        })
    }

    /// Deletes `key` for a set whose entry has already expired.
    fn unlink(&self, key: &str) -> Result<()> {
        self.with(Operation::Set, "UNLINK", |connection| {
            redis::cmd("UNLINK")
                .arg(Prefixed(&self.namespace, key))
                .query::<()>(connection)
        })
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
    /// The value with its deadlines, from `GET` and `PTTL` sent together
    /// in one round trip (as one `MULTI`/`EXEC` transaction, so that both
    /// answers are about the same write).
    ///
    /// `expires` is the clock's now, read just before the commands are
    /// sent, plus the time to live the server reports: as the server
    /// counts it, so it cannot be moved by a difference between this host's
    /// clock and the writer's. `fresh_until` is that expiry less the lead
    /// stored in the value's header. A key with no time to live has no
    /// expiry; if its header has a lead anyway (someone ran `PERSIST` on
    /// it), it is reported stale.
    ///
    /// The deadlines read back may be earlier than those written by the
    /// time the round trips took, and later by at most the time the `SET`
    /// took to reach the server plus the writer's clock resolution: a
    /// relative time starts counting when the server runs it. (For a `SET`
    /// that failed with a timeout and ran later, that is however long the
    /// server was stalled: see [`set_entry`](Cache::set_entry).)
    ///
    /// Stored bytes without a header this version understands (written by
    /// layercache 0.1 or by another program) read as a miss, and are left
    /// in place.
    fn get_entry(&self, key: &String) -> Result<Option<Entry<Vec<u8>>>> {
        let found = self.with(Operation::Get, "GET+PTTL", |connection| {
            // Before the commands go out, so the deadline read back is
            // never later than the one the server counts down to.
            let now = self.clock.now();
            let answer: std::result::Result<(Option<Vec<u8>>, i64), _> = redis::pipe()
                .atomic()
                .cmd("GET")
                .arg(Prefixed(&self.namespace, key))
                .cmd("PTTL")
                .arg(Prefixed(&self.namespace, key))
                .query(connection);
            let Some((value, pttl)) = foreign_type_is_a_miss(answer.map(Some))? else {
                return Ok(None);
            };
            Ok(value.map(|value| (value, pttl, now)))
        })?;
        let Some((bytes, pttl, now)) = found else {
            return Ok(None);
        };
        let expires = match pttl {
            -1 => None,
            // Whole milliseconds left: a key with 0 left has expired by the
            // time it would be returned, and -2 means no key.
            left if left > 0 => Some(now + Duration::from_millis(left.unsigned_abs())),
            _ => return Ok(None),
        };
        let Some((value, lead)) = unframe(bytes) else {
            return Ok(None);
        };
        let entry = Entry::new(value).with_expires(expires);
        Ok(Some(match (lead, expires) {
            (None, _) => entry,
            (Some(lead), Some(expires)) => entry.with_fresh_until(Timestamp::from_millis(
                expires.as_millis().saturating_sub(lead),
            )),
            (Some(_), None) => entry.with_fresh_until(now),
        }))
    }

    /// Stores the entry with `SET`, its deadlines as relative times (no
    /// absolute time is stored, so hosts whose clocks disagree agree on an
    /// entry's remaining life):
    ///
    /// - **Expiry**: `PX` is the entry's `expires` less the clock's now,
    ///   capped by the builder's [`ttl`](RedisCacheBuilder::ttl); an entry
    ///   without `expires` gets the `ttl`, or no `PX` without one. An entry
    ///   that has already expired (by the clock, or with a `ttl` cap) is
    ///   not stored: the key is deleted, as a later expiry would, and the
    ///   call succeeds.
    /// - **Freshness**: the stored value starts with a header: the magic
    ///   bytes `F1 4C 43` (`0xF1`, then `LC`), then a tag byte. Tag `0`
    ///   (`0x30`) means no freshness lead, and the value follows; tag `1`
    ///   (`0x31`) means an 8-byte little-endian lead in milliseconds (expiry
    ///   less `fresh_until`) follows, then the value. No UTF-8 text starts
    ///   with the magic, so a JSON or text value written by another program
    ///   is never taken for one of ours.
    ///
    /// A `SET` that fails with a timeout may still be applied: the command
    /// waits in the server's socket buffer while the server is stalled, and
    /// runs when it resumes, with its time to live counted from then. The
    /// entry can then outlive its deadline by as long as the server was
    /// stalled. (Bounding that would take an absolute time, which this cache
    /// never sends.)
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`], storing nothing, for an entry with a
    /// `fresh_until` that never expires in this cache (no `expires` and no
    /// builder `ttl`: a lead needs an expiry to be measured from), and for
    /// an expiry more than 100 years away. [`Error::Backend`] when the
    /// server fails.
    fn set_entry(&self, key: String, entry: Entry<Vec<u8>>) -> Result<()> {
        let (expires, fresh_until) = (entry.expires(), entry.fresh_until());
        let value = entry.into_value();
        if expires.is_none() && self.ttl.is_none() {
            // It never expires: no clock, no time to live.
            if fresh_until.is_some() {
                return Err(FRESH_WITHOUT_EXPIRY);
            }
            return self.with(Operation::Set, "SET", |connection| {
                redis::cmd("SET")
                    .arg(Prefixed(&self.namespace, &key))
                    .arg(Framed {
                        lead: None,
                        value: &value,
                    })
                    .query::<()>(connection)
            });
        }
        match self.plan(self.clock.now(), expires, fresh_until) {
            None => return self.unlink(&key),
            Some(plan) if plan.px > MAX_PX => return Err(TOO_FAR),
            Some(_) => {}
        }
        self.with(Operation::Set, "SET", |connection| {
            // Planned again on each try, from the clock's now as the
            // command goes out: a second try on a new connection goes out
            // later, and must not give the entry that much longer.
            match self.plan(self.clock.now(), expires, fresh_until) {
                Some(plan) => redis::cmd("SET")
                    .arg(Prefixed(&self.namespace, &key))
                    .arg(Framed {
                        lead: plan.lead,
                        value: &value,
                    })
                    .arg("PX")
                    .arg(plan.px)
                    .query::<()>(connection),
                None => redis::cmd("UNLINK")
                    .arg(Prefixed(&self.namespace, &key))
                    .query::<()>(connection),
            }
        })
    }

    /// The value with a single `GET` (no `PTTL`: the server does not
    /// return a key that has expired), its header stripped. Bytes without a
    /// header this version understands are a miss and are left in place.
    fn get(&self, key: &String) -> Result<Option<Vec<u8>>> {
        let found: Option<Vec<u8>> = self.with(Operation::Get, "GET", |connection| {
            foreign_type_is_a_miss(
                redis::cmd("GET")
                    .arg(Prefixed(&self.namespace, key))
                    .query(connection),
            )
        })?;
        Ok(found.and_then(unframe).map(|(value, _)| value))
    }

    /// Removes with `GETDEL` (Redis 6.2 or later), one round trip, and
    /// returns the value with its header stripped. A value without a header
    /// this version understands is removed all the same (the key is gone),
    /// and `None` is returned.
    ///
    /// If a pooled connection breaks after the server ran the command but
    /// before its answer arrived, the command goes once more on a new
    /// connection and answers `None`: the entry is gone, but its value is
    /// not returned. (`clear_matching` may undercount in the same way.)
    fn remove(&self, key: &String) -> Result<Option<Vec<u8>>> {
        let found: Option<Vec<u8>> = self.with(Operation::Remove, "GETDEL", |connection| {
            foreign_type_is_a_miss(
                redis::cmd("GETDEL")
                    .arg(Prefixed(&self.namespace, key))
                    .query(connection),
            )
        })?;
        Ok(found.and_then(unframe).map(|(value, _)| value))
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

    /// The values in the namespace (`MGET` in batches), their headers
    /// stripped; values without a header this version understands are
    /// skipped.
    fn values(&self) -> Result<Vec<Vec<u8>>> {
        let keys = self.scan(Operation::Values)?;
        let mut values = Vec::with_capacity(keys.len());
        for batch in keys.chunks(SCAN_COUNT) {
            let found: Vec<Option<Vec<u8>>> =
                self.with(Operation::Values, "MGET", |connection| {
                    redis::cmd("MGET").arg(batch).query(connection)
                })?;
            values.extend(
                found
                    .into_iter()
                    .flatten()
                    .filter_map(unframe)
                    .map(|(value, _)| value),
            );
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

    fn clock(&self) -> &dyn Clock {
        &*self.clock
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

    /// The bytes `Framed` writes into a command's buffer.
    fn framed(lead: Option<u64>, value: &[u8]) -> Vec<u8> {
        let mut args = Framed { lead, value }.to_redis_args();
        assert_eq!(args.len(), 1, "one argument");
        args.remove(0)
    }

    #[test]
    fn headers_round_trip() {
        assert_eq!(framed(None, b"abc"), b"\xF1LC0abc");
        assert_eq!(framed(None, b""), b"\xF1LC0");
        let mut lead = b"\xF1LC1".to_vec();
        lead.extend_from_slice(&39_500u64.to_le_bytes());
        lead.extend_from_slice(b"abc");
        assert_eq!(framed(Some(39_500), b"abc"), lead);
        for (lead, value) in [(None, &b""[..]), (None, b"\xF1LC0"), (Some(0), b"x")] {
            assert_eq!(
                unframe(framed(lead, value)),
                Some((value.to_vec(), lead)),
                "{lead:?} {value:?}"
            );
        }
    }

    #[test]
    fn bytes_without_the_magic_are_foreign() {
        let foreign: [&[u8]; 11] = [
            b"",
            b"\x00",
            b"\x01",
            b"\x00\x01\x00",
            b"\x01\x00\x00\x00\x00\x00\x00\x00\x00v",
            b"{\"json\": 1}",
            b"\xF1L",
            b"\xF1LC",
            b"\xF1LC2v",
            b"\xF1LC1\x00\x00\x00\x00\x00\x00\x00",
            b"\xF1lc0v",
        ];
        for bytes in foreign {
            assert_eq!(unframe(bytes.to_vec()), None, "{bytes:?}");
        }
        // No UTF-8 text can start with the magic: its first byte is an
        // invalid sequence whatever follows.
        let error = String::from_utf8(MAGIC.to_vec())
            .expect_err("the magic is not UTF-8")
            .utf8_error();
        assert_eq!((error.valid_up_to(), error.error_len()), (0, Some(1)));
    }

    #[test]
    fn namespace_globs_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
