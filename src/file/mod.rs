//! [`FileCache`]: a memory-mapped, crash-safe cache file that many
//! processes share.
//!
//! The cache is a log (in the manner of Bitcask) split into segments: the
//! active segment at the path, where writers append, and sealed segments
//! beside it (`<path>.<id>.seg`) that never change again. Each segment is a
//! header page, then append-only records, each a put or a tombstone with
//! checksums and deadlines. Every process keeps one index (key → record)
//! per cache, built by scanning the segments when it opens, and caught up
//! by scanning the active segment's new tail whenever its committed length
//! has moved. Reads go through shared memory maps and cost no system call;
//! writes append with `pwrite` under an exclusive lock, then advance the
//! committed length in the mapped header. Space is reclaimed a segment at
//! a time, oldest first, by cleaning steps that ride on writes, and a byte
//! budget drops the oldest segments; other processes follow by a flag and
//! an epoch, and keep reading a dropped segment's pages until they do.
//!
//! The code is split by mechanism, each file stating the invariants it
//! keeps:
//!
//! - `identity.rs`: resolving names to one file; creating and replacing
//!   files with the right mode and owner; refusing hard links and network
//!   file systems.
//! - `shared.rs`: one state per file per process, and what a fork does.
//! - `lock.rs`: the exclusive lock, between threads and between processes.
//! - `segment.rs`: one mapped segment and the atomics in its header.
//! - `state.rs`: one process's view of the segments and the index;
//!   loading, repair, sealing, following other processes, dropping.
//! - `log.rs` and `format.rs`: the records and their bytes.
//! - `index.rs`: key → newest record.
//! - `compact.rs`: cleaning, the byte budget, and compaction (rewriting
//!   the live records into one new file).
//! - `v1.rs`: converting a version-1 file.
//! - `verify.rs`: reporting damage.
//! - this file: the handle users hold.
//!
//! The byte layout and the assumptions made of the OS are in
//! `docs/file-format.md`.

mod compact;
mod crash;
mod format;
mod hint;
mod identity;
mod index;
mod lock;
mod log;
mod options;
mod segment;
mod shared;
mod state;
mod v1;
mod verify;

use std::fmt;
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLockReadGuard};

pub use self::options::{Durability, FileCacheBuilder};
pub use self::verify::{Damage, Verification};

use self::format::{Deadlines, HEADER_SIZE, Kind, Place, crc};
use self::index::{Loc, Logs};
use self::lock::{Exclusive, Writer};
use self::options::Options;
use self::segment::map_file;
use self::shared::Shared;
use self::state::State;
use crate::cache::Cache;
use crate::entry::Entry;
use crate::error::{Error, Result};

/// A cache in one file, shared by any number of threads and processes.
///
/// - **Persistent**: everything set is there after the process exits and
///   the file is reopened.
/// - **Shared**: any number of processes may open one path and read and
///   write at once; a value one sets is returned by another's next `get`,
///   and a removal is seen likewise, with no reopening. Threads may share a
///   handle or open their own; forked children may keep using a handle
///   they inherited; a symbolic link and the real path name the same cache.
/// - **Fast reads**: a hit is an index lookup and a copy out of the memory
///   map, with its checksum checked: no system call.
/// - **Crash safe**: a process killed at any moment leaves a file that
///   opens, with every write that returned.
/// - **Bounded, with expiry**: entries keep their deadlines (an expired
///   entry is a miss in every process); space is reclaimed a segment at a
///   time by steps that ride on writes, so no write waits for a rewrite;
///   and [`FileCacheBuilder::max_bytes`] bounds the files, evicting the
///   oldest entries first.
/// - **Damage contained**: a damaged record reads as missing, never as
///   wrong bytes, and [`verify`](FileCache::verify) says where it is.
/// - **A write's result is the write's**: when the upkeep that goes with a
///   write (a seal, a cleaning step) fails, the write still returns `Ok`
///   and the failure goes to [`FileCacheBuilder::on_compaction_error`].
///
/// A `FileCache` (that is, `FileCache<String>`) is a `Cache<String,
/// Vec<u8>>`; one opened with [`FileCacheBuilder::byte_keys`] is a
/// `FileCache<Vec<u8>>`, a `Cache<Vec<u8>, Vec<u8>>`. One key type per
/// handle, so calls need no annotations. Wrap it in a
/// [`Serialised`](crate::Serialised) for typed values.
///
/// Unix only (it relies on `pwrite`, shared memory maps and `flock`). What
/// it assumes of the OS, and what a process that does not use this crate
/// can break (truncating the file by hand, deleting its lock file), is in
/// `docs/file-format.md`, "Assumptions".
///
/// # Example
///
/// ```
/// use layercache::{Cache, FileCache};
///
/// # fn main() -> layercache::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("cache.lc");
/// {
///     let cache = FileCache::open(&path)?;
///     cache.set("greeting".to_string(), b"hello".to_vec())?;
/// }
/// let cache = FileCache::open(&path)?; // a later run, or another process
/// assert_eq!(cache.get(&"greeting".to_string())?, Some(b"hello".to_vec()));
/// # Ok(())
/// # }
/// ```
pub struct FileCache<K = String> {
    /// The path as given.
    path: PathBuf,
    options: Options,
    /// The state of this file in the process that opened the handle; after
    /// a fork, `Shared::current` finds the child's own.
    shared: Arc<Shared>,
    keys: PhantomData<fn(K) -> K>,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for String {}
    impl Sealed for Vec<u8> {}
}

/// A key type a [`FileCache`] holds: `String` (the default, stored as its
/// UTF-8 bytes) or `Vec<u8>` (see [`FileCacheBuilder::byte_keys`]). One
/// handle has one key type, so calls need no type annotations. For keys of
/// other types, make string keys of them with a
/// [`KeyMaker`](crate::KeyMaker).
pub trait FileKey: sealed::Sealed + Send + Sync + 'static {
    /// The key's bytes in the file.
    fn key_bytes(&self) -> &[u8];
    /// The key made of bytes read from the file, or `None` when they are
    /// not a key of this type (bytes that are not UTF-8, for `String`).
    fn from_key_bytes(bytes: Vec<u8>) -> Option<Self>
    where
        Self: Sized;
    /// The key's bytes, taken without a copy.
    fn into_key_bytes(self) -> Vec<u8>
    where
        Self: Sized;
}

impl FileKey for String {
    fn key_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn from_key_bytes(bytes: Vec<u8>) -> Option<Self> {
        String::from_utf8(bytes).ok()
    }
    fn into_key_bytes(self) -> Vec<u8> {
        self.into_bytes()
    }
}

impl FileKey for Vec<u8> {
    fn key_bytes(&self) -> &[u8] {
        self
    }
    fn from_key_bytes(bytes: Vec<u8>) -> Option<Self> {
        Some(bytes)
    }
    fn into_key_bytes(self) -> Vec<u8> {
        self
    }
}

/// Counters of one cache file in this process (every handle on the file
/// shares them): see [`FileCache::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FileStats {
    /// Times the file was forced to stable storage by
    /// [`Durability::Periodic`] (in the background or when a handle is
    /// dropped).
    pub syncs: u64,
    /// Automatic compactions that failed (each reported to
    /// [`FileCacheBuilder::on_compaction_error`]); the writes they followed
    /// succeeded.
    pub compaction_failures: u64,
    /// Active segments this process sealed.
    pub seals: u64,
    /// Sealed segments this process dropped: cleaned through, or over the
    /// byte budget.
    pub drops: u64,
    /// Entries this process's drops evicted (live entries of segments
    /// dropped over the byte budget).
    pub evictions: u64,
    /// Live records this process's cleaning copied to the active segment.
    pub copied: u64,
    /// Sealed segments this process indexed from their hint files.
    pub hinted: u64,
    /// Sealed segments this process indexed by reading them (no valid
    /// hint: none written yet, or stale or damaged).
    pub scanned: u64,
}

fn lock_poisoned<T>(result: std::result::Result<T, PoisonError<T>>) -> T {
    // Every mutation of the state is completed or abandoned before a panic
    // can unwind (nothing here panics mid-update on valid data), so a
    // poisoned lock still guards a usable state.
    result.unwrap_or_else(PoisonError::into_inner)
}

impl<K> FileCacheBuilder<K> {
    /// Opens the cache file, creating it (with [`mode`](Self::mode), by
    /// default readable and writable by its owner only) if it does not
    /// exist. A symbolic link is followed: the lock file goes beside the
    /// real file, and compaction replaces the real file, not the link.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidOption`] when an option is out of range (nothing is
    ///   opened or created);
    /// - [`Error::Format`] when the file is not a cache file, is of a newer
    ///   format version, or has a damaged header (the file is not touched);
    /// - [`Error::Refused`] when the file has other hard links, is on a
    ///   network file system (see
    ///   [`allow_network_fs`](Self::allow_network_fs)), is not a regular
    ///   file, or is a dangling symbolic link;
    /// - [`Error::Io`] when it cannot be opened.
    pub fn open(self) -> Result<FileCache<K>> {
        let options = self.options.validate()?;
        let shared = Shared::open(&self.path, &options)?;
        let cache = FileCache {
            path: self.path,
            options,
            shared,
            keys: PhantomData,
        };
        if let Some(max) = cache.options.max_bytes {
            cache.locked(|_, _, state| {
                state.active().max_bytes().store(max, Ordering::Release);
                Ok(())
            })?;
        }
        Ok(cache)
    }
}

impl FileCache {
    /// Opens the cache file at `path` with default options and `String`
    /// keys, creating it if need be. See [`FileCacheBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).open()
    }

    /// Options for opening the cache file at `path` (with `String` keys
    /// unless [`byte_keys`](FileCacheBuilder::byte_keys)).
    pub fn builder(path: impl AsRef<Path>) -> FileCacheBuilder {
        FileCacheBuilder {
            path: path.as_ref().to_owned(),
            options: Options::default(),
            keys: PhantomData,
        }
    }
}

impl<K> FileCache<K> {
    /// The cache file's path, as given to [`open`](Self::open).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of live entries, as of the last write seen.
    pub fn len(&self) -> Result<usize> {
        Ok(self.fresh()?.len())
    }

    /// Whether there are no live entries.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The file's generation: 0 when created, one more at each compaction.
    pub fn generation(&self) -> Result<u64> {
        Ok(self.fresh()?.generation)
    }

    /// Bytes the cache's segment files take (records and headers), as of
    /// the last write seen: what [`FileCacheBuilder::max_bytes`] bounds.
    pub fn file_bytes(&self) -> Result<u64> {
        Ok(self.fresh()?.file_bytes())
    }

    /// Bytes of dead records (overwritten or removed values, tombstones)
    /// that compaction would reclaim.
    pub fn garbage_bytes(&self) -> Result<u64> {
        Ok(self.fresh()?.garbage())
    }

    /// This process's counters for this file (zero in a forked child that
    /// has not used the cache yet).
    pub fn stats(&self) -> FileStats {
        self.shared
            .opened_here()
            .map(|shared| FileStats {
                syncs: shared.syncs.load(Ordering::Relaxed),
                compaction_failures: shared.compaction_failures.load(Ordering::Relaxed),
                seals: shared.settings.counters.seals.load(Ordering::Relaxed),
                drops: shared.settings.counters.drops.load(Ordering::Relaxed),
                evictions: shared.settings.counters.evictions.load(Ordering::Relaxed),
                copied: shared.settings.counters.copied.load(Ordering::Relaxed),
                hinted: shared.settings.counters.hinted.load(Ordering::Relaxed),
                scanned: shared.settings.counters.scanned.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }

    /// The state this process uses for the file.
    #[inline]
    fn shared(&self) -> Result<&Shared> {
        self.shared.current(&self.options)
    }

    /// The state, caught up with every write committed before the call.
    fn fresh(&self) -> Result<RwLockReadGuard<'_, State>> {
        let shared = self.shared()?;
        let moved = {
            let state = shared.read();
            let moved = state.superseded() || state.epoch_moved();
            if !moved && state.committed() == state.indexed() && !state.sweeping() {
                return Ok(state);
            }
            moved
        };
        if moved {
            // Another process compacted, or put a new file at the path:
            // loading the file now there takes the lock, as every load does,
            // and so waits for a compaction's rename.
            let mut lock = shared.exclusive()?;
            shared.follow(&mut lock, &mut shared.write(), false)?;
        } else {
            shared.catch_up(&mut shared.write())?;
        }
        Ok(shared.read())
    }

    /// Runs `op` holding the exclusive lock and the state, caught up and on
    /// the file now at the path.
    fn locked<T>(
        &self,
        op: impl FnOnce(&Shared, &mut Exclusive<'_>, &mut State) -> Result<T>,
    ) -> Result<T> {
        let shared = self.shared()?;
        let mut lock = shared.exclusive()?;
        let mut state = shared.write();
        shared.follow(&mut lock, &mut state, false)?;
        let result = op(shared, &mut lock, &mut state);
        lock.shrink();
        result
    }

    /// [`locked`](Self::locked), then an automatic compaction if one is
    /// due. A compaction's failure is reported once the locks are released,
    /// and does not change what `op` returned.
    fn write<T>(
        &self,
        op: impl FnOnce(&Shared, &mut Exclusive<'_>, &mut State) -> Result<T>,
    ) -> Result<T> {
        let mut failed = None;
        let result = self.locked(|shared, writer, state| {
            let before = state.record_bytes();
            let result = op(shared, writer, state);
            failed = writer.upkeep_error.take();
            let result = result?;
            let written = state.record_bytes().saturating_sub(before);
            if let Some(e) = compact::after_write(shared, writer, state, &self.options, written) {
                shared.compaction_failures.fetch_add(1, Ordering::Relaxed);
                failed.get_or_insert(e);
            }
            Ok(result)
        });
        if let (Some(error), Some(hook)) = (failed, &self.options.on_compaction_error) {
            hook(&error);
        }
        result
    }

    /// Where records of `len` bytes go (see [`State::place`]). A seal that
    /// failed is counted and kept for [`write`](Self::write) to report once
    /// the locks are released; the records go to the segment that is
    /// there. The caller holds the locks.
    fn place(
        &self,
        shared: &Shared,
        lock: &mut Exclusive<'_>,
        state: &mut State,
        len: u64,
    ) -> Place {
        let (place, failed) = state.place(&shared.paths, &shared.settings, lock, len);
        if let Some(e) = failed {
            shared.compaction_failures.fetch_add(1, Ordering::Relaxed);
            lock.upkeep_error.get_or_insert(e);
        }
        place
    }

    fn append(&self, shared: &Shared, writer: &mut Writer, state: &mut State) -> Result<()> {
        append(shared, self.options.durability, writer, state)
    }

    /// Rewrites the cache, every segment, into one file with only its live
    /// records, reclaiming at once the space of overwritten, removed and
    /// expired values (cleaning does that a segment at a time without
    /// being asked). Other processes follow to the new file on their next
    /// call and lose nothing; writers wait for it.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the new file cannot be written (a full disk, say):
    /// the old file stays in place, whole, and nothing is left beside it.
    pub fn compact(&self) -> Result<()> {
        let now = self.now();
        self.locked(|shared, lock, state| compact::rewrite(shared, lock, state, true, now))
    }

    /// Removes every entry by replacing the file with an empty one (a
    /// compaction that keeps nothing), whatever the key type.
    pub fn clear(&self) -> Result<()> {
        self.locked(|shared, lock, state| compact::rewrite(shared, lock, state, false, 0))
    }

    fn check_sizes(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.len() > self.options.max_key_len {
            return Err(Error::TooLarge {
                what: "key",
                size: key.len(),
                limit: self.options.max_key_len,
            });
        }
        if value.len() > self.options.max_value_len {
            return Err(Error::TooLarge {
                what: "value",
                size: value.len(),
                limit: self.options.max_value_len,
            });
        }
        Ok(())
    }

    /// Now by this handle's clock, in milliseconds since the epoch.
    fn now(&self) -> u64 {
        self.options.clock.now().as_millis()
    }

    fn get_entry_bytes(&self, key: &[u8]) -> Result<Option<Entry<Vec<u8>>>> {
        let state = self.fresh()?;
        let logs = state.logs();
        Ok(state
            .index
            .get(&logs, key)
            .and_then(|loc| read_entry(&logs, loc, || self.now())))
    }

    fn set_bytes(&self, key: &[u8], value: &[u8], deadlines: Deadlines) -> Result<()> {
        self.check_sizes(key, value)?;
        let len = format::record_len(key.len(), value.len());
        self.write(|shared, writer, state| {
            let place = self.place(shared, writer, state, len);
            writer.buf.clear();
            format::encode_record(Kind::Put, key, value, deadlines, place, &mut writer.buf);
            self.append(shared, writer, state)
        })
    }

    fn remove_bytes(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // Not this handle's `max_key_len`: another handle, or another
        // process, may have stored a longer key.
        if key.len() > u32::MAX as usize {
            return Ok(None); // the format cannot hold it: never stored
        }
        self.write(|shared, writer, state| {
            let logs = state.logs();
            let Some(loc) = state.index.get(&logs, key).copied() else {
                return Ok(None);
            };
            // An entry expired by this handle's clock is still removed:
            // another process's clock may not have reached its deadline.
            let old = read_entry(&logs, &loc, || self.now()).map(Entry::into_value);
            let place = self.place(shared, writer, state, format::record_len(key.len(), 0));
            writer.buf.clear();
            let none = Deadlines::NONE;
            format::encode_record(Kind::Tombstone, key, &[], none, place, &mut writer.buf);
            self.append(shared, writer, state)?;
            Ok(old)
        })
    }

    /// The keys of the live, unexpired entries.
    fn keys_bytes(&self) -> Result<Vec<Vec<u8>>> {
        let state = self.fresh()?;
        let logs = state.logs();
        let now = self.now();
        Ok(state
            .index
            .iter()
            .filter(|loc| alive(&logs, loc, now))
            .filter_map(|loc| state.index.key_of(&logs, loc).map(<[u8]>::to_vec))
            .collect())
    }

    /// Writes one tombstone per key in `keys` still present; returns how many.
    fn remove_all(&self, keys: &[Vec<u8>]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.write(|shared, writer, state| {
            let present: Vec<&[u8]> = {
                let logs = state.logs();
                keys.iter()
                    .map(Vec::as_slice)
                    .filter(|key| state.index.get(&logs, key).is_some())
                    .collect()
            };
            if present.is_empty() {
                return Ok(0);
            }
            let len = present
                .iter()
                .map(|key| format::record_len(key.len(), 0))
                .sum();
            let start = self.place(shared, writer, state, len);
            writer.buf.clear();
            for key in &present {
                let place = Place {
                    at: start.at + writer.buf.len() as u64,
                    ..start
                };
                let none = Deadlines::NONE;
                format::encode_record(Kind::Tombstone, key, &[], none, place, &mut writer.buf);
            }
            self.append(shared, writer, state)?;
            Ok(present.len())
        })
    }
}

/// Appends the encoded records in `writer.buf` at the committed end of the
/// active segment (where [`State::place`] put them) and indexes them. The
/// caller holds the locks.
fn append(
    shared: &Shared,
    durability: Durability,
    writer: &mut Writer,
    state: &mut State,
) -> Result<()> {
    let io = |e| Error::io(&shared.paths.given, e);
    let at = state.committed();
    let end = at + writer.buf.len() as u64;
    let active = &mut state.active_slot_mut().seg;
    if let Err(e) = active.file.write_all_at(&writer.buf, at) {
        // Nothing past the committed length is ever read; give back what the
        // failed write took, if the file system lets us.
        let _ = active.file.set_len(at);
        return Err(io(e));
    }
    let sync = durability == Durability::Sync;
    if sync {
        active.file.sync_data().map_err(io)?;
    }
    if end > active.map.len() as u64 {
        active.map = Arc::new(map_file(&active.file, end, shared.settings.growth).map_err(io)?);
    }
    active.committed_atomic().store(end, Ordering::Release);
    if sync {
        active
            .map
            .flush_range(0, HEADER_SIZE as usize)
            .map_err(io)?;
    } else if let Durability::Periodic(_) = durability {
        shared.written.fetch_add(1, Ordering::AcqRel);
    }
    state.scan(end);
    Ok(())
}

/// Whether the entry at `loc` has not expired by `now` (its header still
/// passes its checksum).
#[inline]
fn alive<'a>(logs: &impl Logs<'a>, loc: &Loc, now: u64) -> bool {
    loc.checked_header(logs)
        .is_some_and(|header| now < header.deadlines.expires)
}

/// The entry at `loc`, or `None` when it has expired by `now` (read only
/// for an entry with an expiry), or its header or value fails its checksum
/// or does not match `loc` (the file was damaged after the record was
/// indexed, or the entry came from a forged hint). The caller has made sure
/// of the key: a lookup compared the record's key bytes with the key asked
/// for (and the 64-bit hashes), `values` checked it with
/// [`Index::key_of`](self::index::Index::key_of).
#[inline]
fn read_entry<'a>(
    logs: &impl Logs<'a>,
    loc: &Loc,
    now: impl FnOnce() -> u64,
) -> Option<Entry<Vec<u8>>> {
    let header = loc.checked_header(logs)?;
    let Deadlines {
        fresh_until,
        expires,
    } = header.deadlines;
    if expires != format::NEVER && expires <= now() {
        return None;
    }
    let value = loc.value(logs)?;
    (crc(value) == loc.value_crc)
        .then(|| Entry::with_raw_deadlines(value.to_vec(), fresh_until, expires))
}

/// Keys are stored as their bytes (a `String` as its UTF-8). Through a
/// `String`-keyed handle, keys that are not UTF-8 (written by a byte-keyed
/// handle on the same file) are left out of `keys` and `clear_matching`.
///
/// Entries keep both deadlines, as wall-clock instants (milliseconds since
/// the Unix epoch): an entry whose expiry has passed is a miss in every
/// process (by each handle's [`clock`](FileCacheBuilder::clock)), is left
/// out of `keys` and `values`, and is dropped by the next compaction.
/// Until then it still counts in [`len`](FileCache::len), and `remove`
/// still writes a tombstone for it (another process's clock may be behind).
impl<K: FileKey> Cache<K, Vec<u8>> for FileCache<K> {
    fn get_entry(&self, key: &K) -> Result<Option<Entry<Vec<u8>>>> {
        self.get_entry_bytes(key.key_bytes())
    }
    fn set_entry(&self, key: K, entry: Entry<Vec<u8>>) -> Result<()> {
        let (fresh_until, expires) = entry.raw_deadlines();
        if expires <= self.now() {
            // Dead on arrival: the key is gone, as the contract says.
            self.remove_bytes(key.key_bytes())?;
            return Ok(());
        }
        let deadlines = Deadlines {
            fresh_until,
            expires,
        };
        self.set_bytes(key.key_bytes(), &entry.value, deadlines)
    }
    fn get(&self, key: &K) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_entry_bytes(key.key_bytes())?
            .map(Entry::into_value))
    }
    fn set(&self, key: K, value: Vec<u8>) -> Result<()> {
        self.set_bytes(key.key_bytes(), &value, Deadlines::NONE)
    }
    fn remove(&self, key: &K) -> Result<Option<Vec<u8>>> {
        self.remove_bytes(key.key_bytes())
    }
    fn keys(&self) -> Result<Vec<K>> {
        Ok(self
            .keys_bytes()?
            .into_iter()
            .filter_map(K::from_key_bytes)
            .collect())
    }
    fn values(&self) -> Result<Vec<Vec<u8>>> {
        let state = self.fresh()?;
        let logs = state.logs();
        let now = self.now();
        Ok(state
            .index
            .iter()
            .filter(|loc| state.index.key_of(&logs, loc).is_some())
            .filter_map(|loc| read_entry(&logs, loc, || now).map(Entry::into_value))
            .collect())
    }
    fn clear(&self) -> Result<()> {
        FileCache::clear(self)
    }
    fn clock(&self) -> &dyn crate::clock::Clock {
        &*self.options.clock
    }
    fn clear_matching(&self, matches: &dyn Fn(&K) -> bool) -> Result<usize> {
        // The predicate runs with no lock held, so it may use this cache.
        let keys: Vec<Vec<u8>> = self
            .keys()?
            .into_iter()
            .filter(|key| matches(key))
            .map(K::into_key_bytes)
            .collect();
        self.remove_all(&keys)
    }
}

impl<K> fmt::Debug for FileCache<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A forked child that has not used the cache yet has no state of its
        // own, and must not lock its parent's.
        match self.shared.opened_here() {
            Some(shared) => {
                let len = shared.read().len();
                let noun = if len == 1 { "entry" } else { "entries" };
                write!(f, "File({:?}, {len} {noun})", self.path)
            }
            None => write!(f, "File({:?})", self.path),
        }
    }
}

impl<K> Drop for FileCache<K> {
    fn drop(&mut self) {
        if let Durability::Periodic(_) = self.options.durability
            && let Some(shared) = self.shared.opened_here()
            && shared.unsynced()
        {
            // Nothing to report an error to; the background thread retries
            // while another handle keeps the file open.
            let _ = shared.sync();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: one large value pinned its write buffer's capacity for
    /// the life of the process.
    #[test]
    fn a_large_values_buffer_is_given_back() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cache = FileCache::open(dir.path().join("big.lc")).expect("open");
        let big = vec![7u8; 8 << 20];
        cache.set("big".to_string(), big.clone()).expect("set");
        assert_eq!(cache.get(&"big".to_string()).expect("get"), Some(big));
        let shared = cache.shared().expect("state");
        assert!(
            shared.buffer_capacity() <= 1 << 20,
            "{} bytes kept after an 8 MiB value",
            shared.buffer_capacity()
        );
        cache.set("small".to_string(), vec![1; 100]).expect("set");
        assert!(shared.buffer_capacity() > 0, "small writes keep theirs");
    }
}
