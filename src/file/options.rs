//! What a [`FileCache`](super::FileCache) is opened with: durability,
//! compaction thresholds, the map's reach, size limits, the mode of new
//! files and what to do with a failed automatic compaction.
//!
//! Invariant kept here: setters record what the user asked for, unchecked;
//! [`Options::validate`] runs at open and turns every out-of-range value
//! into an [`Error::InvalidOption`] naming the option, so nothing later can
//! panic on a value it was given.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::format::HEADER_SIZE;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};

/// When a [`FileCache`](super::FileCache) forces its writes to stable
/// storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Never: a write is in the OS's page cache when `set` returns. It
    /// survives the process being killed at any moment, not an OS crash or
    /// a power loss. The default, and the fastest.
    #[default]
    Buffered,
    /// `fdatasync` after every write: a write that returned survives an OS
    /// crash. Costs a disk flush per write.
    Sync,
    /// `fdatasync` at most this long after a write: a write that returned
    /// survives an OS crash that happens more than about this long after it.
    /// A background thread (one per cache file per process) syncs what is
    /// still unsynced when the interval has passed, so the last writes of a
    /// burst are covered too, and a handle syncs when it is dropped. Must be
    /// longer than zero.
    Periodic(Duration),
}

/// Called with the error of an automatic compaction that failed.
pub(super) type CompactionHook = Arc<dyn Fn(&Error) + Send + Sync>;

/// Options for opening a [`FileCache`](super::FileCache): see
/// [`FileCache::builder`](super::FileCache::builder).
///
/// Setters take any value; [`open`](FileCacheBuilder::open) checks them all
/// and refuses an out-of-range one with [`Error::InvalidOption`].
pub struct FileCacheBuilder<K = String> {
    pub(super) path: PathBuf,
    pub(super) options: Options,
    pub(super) keys: PhantomData<fn(K) -> K>,
}

impl<K> Clone for FileCacheBuilder<K> {
    fn clone(&self) -> Self {
        FileCacheBuilder {
            path: self.path.clone(),
            options: self.options.clone(),
            keys: PhantomData,
        }
    }
}

impl<K> fmt::Debug for FileCacheBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCacheBuilder")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish()
    }
}

/// The largest map reach accepted: 1 TiB of address space.
const MAX_GROWTH: u64 = 1 << 40;
/// The smallest segment size accepted: a header page and a page of
/// records.
const MIN_SEGMENT: u64 = 2 * HEADER_SIZE;
/// The smallest byte budget accepted: eight of the smallest segments.
const MIN_BUDGET: u64 = 8 * MIN_SEGMENT;

#[derive(Clone)]
pub(super) struct Options {
    pub(super) durability: Durability,
    pub(super) compact_ratio: f64,
    pub(super) compact_min_bytes: u64,
    pub(super) growth: u64,
    pub(super) segment_bytes: u64,
    pub(super) max_bytes: Option<u64>,
    pub(super) max_key_len: usize,
    pub(super) max_value_len: usize,
    pub(super) mode: u32,
    pub(super) allow_network_fs: bool,
    pub(super) on_compaction_error: Option<CompactionHook>,
    pub(super) clock: Arc<dyn Clock>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("durability", &self.durability)
            .field("compact_ratio", &self.compact_ratio)
            .field("compact_min_bytes", &self.compact_min_bytes)
            .field("growth", &self.growth)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_bytes", &self.max_bytes)
            .field("max_key_len", &self.max_key_len)
            .field("max_value_len", &self.max_value_len)
            .field("mode", &format_args!("{:#o}", self.mode))
            .field("allow_network_fs", &self.allow_network_fs)
            .field("on_compaction_error", &self.on_compaction_error.is_some())
            .field("clock", &self.clock)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::Buffered,
            compact_ratio: 0.5,
            compact_min_bytes: 4 * 1024 * 1024,
            growth: 64 * 1024 * 1024,
            segment_bytes: 16 * 1024 * 1024,
            max_bytes: None,
            max_key_len: 64 * 1024,
            max_value_len: 256 * 1024 * 1024,
            mode: 0o600,
            allow_network_fs: false,
            on_compaction_error: None,
            clock: Arc::new(SystemClock),
        }
    }
}

fn invalid(option: &'static str, reason: String) -> Error {
    Error::InvalidOption { option, reason }
}

impl Options {
    /// Checks every option, and rounds the map's reach up to whole pages.
    pub(super) fn validate(mut self) -> Result<Options> {
        if let Durability::Periodic(every) = self.durability
            && every.is_zero()
        {
            return Err(invalid(
                "durability",
                "Periodic(0) would sync continuously; use Durability::Sync".into(),
            ));
        }
        if self.compact_ratio.is_nan() || self.compact_ratio < 0.0 {
            return Err(invalid(
                "compact_when",
                format!(
                    "ratio {} is not a number of at least 0 (above 1 turns automatic compaction off)",
                    self.compact_ratio
                ),
            ));
        }
        if !(HEADER_SIZE..=MAX_GROWTH).contains(&self.growth) {
            return Err(invalid(
                "growth",
                format!(
                    "{} bytes is outside {HEADER_SIZE} bytes to {MAX_GROWTH} bytes (1 TiB)",
                    self.growth
                ),
            ));
        }
        self.growth = self.growth.div_ceil(HEADER_SIZE) * HEADER_SIZE;
        if let Some(max) = self.max_bytes
            && max != 0
            && max < MIN_BUDGET
        {
            return Err(invalid(
                "max_bytes",
                format!(
                    "{max} bytes is below the smallest budget, 64 KiB (eight segments of the smallest size, 8 KiB); 0 removes the budget"
                ),
            ));
        }
        if !(MIN_SEGMENT..=MAX_GROWTH).contains(&self.segment_bytes) {
            return Err(invalid(
                "segment_size",
                format!(
                    "{} bytes is outside {MIN_SEGMENT} bytes to {MAX_GROWTH} bytes (1 TiB)",
                    self.segment_bytes
                ),
            ));
        }
        for (option, value) in [
            ("max_key_len", self.max_key_len),
            ("max_value_len", self.max_value_len),
        ] {
            if value > u32::MAX as usize {
                return Err(invalid(
                    option,
                    format!("{value} bytes is more than the format's limit of 4 GiB - 1"),
                ));
            }
        }
        if self.mode & !0o777 != 0 || self.mode & 0o600 != 0o600 {
            return Err(invalid(
                "mode",
                format!(
                    "{:#o} must be permission bits only (at most 0o777) and let the owner read and write (0o600)",
                    self.mode
                ),
            ));
        }
        Ok(self)
    }
}

impl FileCacheBuilder<String> {
    /// Keys of the handle this opens are `Vec<u8>` instead of `String`.
    /// Both kinds of handle may open one file: keys are stored as bytes, a
    /// `String` as its UTF-8.
    ///
    /// ```
    /// use layercache::{Cache, FileCache};
    /// # fn main() -> layercache::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("bytes.lc");
    /// let bytes = FileCache::builder(&path).byte_keys().open()?;
    /// bytes.set(b"k".to_vec(), b"v".to_vec())?;
    /// let strings = FileCache::open(&path)?;
    /// assert_eq!(strings.get(&"k".to_string())?, Some(b"v".to_vec()));
    /// assert_eq!(bytes.keys()?, [b"k".to_vec()]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn byte_keys(self) -> FileCacheBuilder<Vec<u8>> {
        FileCacheBuilder {
            path: self.path,
            options: self.options,
            keys: PhantomData,
        }
    }
}

impl<K> FileCacheBuilder<K> {
    /// When writes are forced to disk (default [`Durability::Buffered`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.options.durability = durability;
        self
    }

    /// Clean automatically once dead records (overwritten or removed
    /// values, tombstones, expired entries) are at least `ratio` of the
    /// records' bytes and at least `min_bytes` (defaults 0.5 and 4 MiB).
    /// Cleaning never rewrites the cache at once: each write then also
    /// reads about four times its own bytes of the oldest sealed segment,
    /// copies what is still live there to the active segment, and drops
    /// the segment once it is read through. A ratio above 1 turns automatic
    /// cleaning off; [`FileCache::compact`](super::FileCache::compact)
    /// still works. A negative or NaN ratio is refused at open.
    pub fn compact_when(mut self, ratio: f64, min_bytes: u64) -> Self {
        self.options.compact_ratio = ratio;
        self.options.compact_min_bytes = min_bytes;
        self
    }

    /// How far past the file's end the memory map reaches (default 64 MiB,
    /// rounded up to whole pages; 4 KiB to 1 TiB): appends by any process
    /// within that reach are read without remapping. Address space, not
    /// memory. The first handle a process opens on a file sets it for the
    /// process.
    pub fn growth(mut self, bytes: u64) -> Self {
        self.options.growth = bytes;
        self
    }

    /// The size at which a writer seals the active segment (the file at
    /// the path) and starts a new one (default 16 MiB; 8 KiB to 1 TiB). A
    /// record larger than that gets a segment of its own. Sealed segments
    /// are the unit that cleaning and the byte budget drop, and opening a
    /// cache scans only the active segment (the sealed ones have hint
    /// files), so a smaller size opens faster and reclaims space in finer
    /// steps, at the cost of more files. The first handle a process opens
    /// on a file sets it for the process; processes may differ.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.options.segment_bytes = bytes;
        self
    }

    /// A byte budget for the cache's segment files, kept in the file so
    /// that every process applies it: opening with this option sets it for
    /// everyone (0 removes it); opening without it leaves the one the file
    /// has (default: none). At least 64 KiB. Over the budget, a write drops
    /// the oldest sealed segments, with every entry in them; segments are
    /// then at most an eighth of the budget (or
    /// [`segment_size`](Self::segment_size), if smaller). The entries that
    /// go are the oldest, counting an entry's age from its last write or,
    /// with cleaning on ([`compact_when`](Self::compact_when)), from the
    /// last time cleaning copied it forward.
    ///
    /// The files exceed the budget by at most the last write's records
    /// (and a process that still maps a dropped segment keeps its blocks
    /// allocated until its next call).
    ///
    /// ```
    /// use layercache::{Cache, FileCache};
    /// # fn main() -> layercache::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let cache = FileCache::builder(dir.path().join("bounded.lc"))
    ///     .max_bytes(1 << 20)
    ///     .open()?;
    /// for n in 0..10_000 {
    ///     cache.set(format!("key{n}"), vec![7; 300])?;
    /// }
    /// assert!(cache.file_bytes()? <= 1 << 20);
    /// assert!(cache.get(&"key9999".to_string())?.is_some()); // the newest stay
    /// assert!(cache.get(&"key0".to_string())?.is_none()); // the oldest went first
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.options.max_bytes = Some(bytes);
        self
    }

    /// The largest key accepted, in bytes (default 64 KiB, at most
    /// 4 GiB - 1).
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.options.max_key_len = bytes;
        self
    }

    /// The largest value accepted, in bytes (default 256 MiB, at most
    /// 4 GiB - 1).
    pub fn max_value_len(mut self, bytes: usize) -> Self {
        self.options.max_value_len = bytes;
        self
    }

    /// The permission bits of the files this handle creates: the data file,
    /// its lock file and compaction's new file (default `0o600`, readable
    /// and writable by the owner only). The mode is set exactly, whatever
    /// the process's umask. `0o660` lets a group share the cache (give the
    /// directory to that group with the setgid bit, so new files get its
    /// group). The owner must keep read and write (`0o600`); only
    /// permission bits are accepted. Compaction keeps an existing file's
    /// mode, group and owner, whatever this says.
    ///
    /// ```
    /// use std::os::unix::fs::PermissionsExt;
    /// # fn main() -> layercache::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("farm.lc");
    /// let cache = layercache::FileCache::builder(&path).mode(0o660).open()?;
    /// let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    /// assert_eq!(mode & 0o777, 0o660);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mode(mut self, mode: u32) -> Self {
        self.options.mode = mode;
        self
    }

    /// Opens a file on a network file system (NFS, SMB/CIFS, AFS, Ceph,
    /// Lustre, GFS2, OCFS2, GPFS, 9P) or a FUSE file system, which `open`
    /// refuses by default (Linux detects them; other systems are not
    /// checked). What it risks: processes on one host still exclude each
    /// other and see each other's writes, but a shared memory map is not
    /// coherent across hosts and `flock` may not reach other hosts, so two
    /// hosts writing one file can lose writes and read torn records (which
    /// the checksums turn into misses). Allow it only when a single host
    /// opens the file, or for a FUSE file system known to be local.
    pub fn allow_network_fs(mut self, allow: bool) -> Self {
        self.options.allow_network_fs = allow;
        self
    }

    /// Called with the error of the upkeep that goes with a write and
    /// failed: a seal of the active segment, or a cleaning step. The write
    /// itself succeeded and returns `Ok`; the failure is also counted by
    /// [`FileCache::stats`](super::FileCache::stats) (`compaction_failures`),
    /// and seals and cleaning pause (1 s, doubling to at most a minute)
    /// before they try again. Runs on the writing thread with no lock held,
    /// so it may use the cache.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// # fn main() -> layercache::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let failures = Arc::new(AtomicUsize::new(0));
    /// let seen = failures.clone();
    /// let cache = layercache::FileCache::builder(dir.path().join("c.lc"))
    ///     .on_compaction_error(move |error| {
    ///         eprintln!("cache compaction failed: {error}");
    ///         seen.fetch_add(1, Ordering::Relaxed);
    ///     })
    ///     .open()?;
    /// # drop(cache);
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_compaction_error(mut self, hook: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.options.on_compaction_error = Some(Arc::new(hook));
        self
    }

    /// The clock the handle reports as [`Cache::clock`](crate::Cache::clock)
    /// and checks deadlines against (default [`SystemClock`]): an entry
    /// whose expiry has passed by this clock is a miss through this handle,
    /// one set already expired removes its key, and a compaction this
    /// handle runs drops the entries expired by it. Deadlines are stored as
    /// wall-clock instants, so every process on a host agrees. Give every
    /// layer of a stack the same clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.options.clock = clock;
        self
    }
}
