//! What a [`FileCache`](super::FileCache) is opened with: durability,
//! compaction thresholds, the map's reach and size limits.
//!
//! Invariant kept here: an `Options` value is what `open` uses; setters only
//! record what the user asked for.

use std::path::PathBuf;
use std::time::Duration;

use super::format::HEADER_SIZE;

/// When a [`FileCache`] forces its writes to stable storage.
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
    /// `fdatasync` on a write when at least this long has passed since the
    /// last one: bounds what an OS crash can lose to about this window.
    Periodic(Duration),
}

/// Options for opening a [`FileCache`]: see [`FileCache::builder`].
#[derive(Debug, Clone)]
pub struct FileCacheBuilder {
    pub(super) path: PathBuf,
    pub(super) options: Options,
}

#[derive(Debug, Clone)]
pub(super) struct Options {
    pub(super) durability: Durability,
    pub(super) compact_ratio: f64,
    pub(super) compact_min_bytes: u64,
    pub(super) growth: u64,
    pub(super) max_key_len: usize,
    pub(super) max_value_len: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::Buffered,
            compact_ratio: 0.5,
            compact_min_bytes: 4 * 1024 * 1024,
            growth: 64 * 1024 * 1024,
            max_key_len: 64 * 1024,
            max_value_len: 256 * 1024 * 1024,
        }
    }
}

impl FileCacheBuilder {
    /// When writes are forced to disk (default [`Durability::Buffered`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.options.durability = durability;
        self
    }

    /// Compact automatically, after a write, once dead records (overwritten
    /// or removed values, tombstones) are at least `ratio` of the records'
    /// bytes and at least `min_bytes` (defaults 0.5 and 4 MiB). A ratio
    /// above 1 turns automatic compaction off; [`FileCache::compact`] still
    /// works.
    pub fn compact_when(mut self, ratio: f64, min_bytes: u64) -> Self {
        self.options.compact_ratio = ratio;
        self.options.compact_min_bytes = min_bytes;
        self
    }

    /// How far past the file's end the memory map reaches (default 64 MiB,
    /// rounded to whole pages): appends by any process within that reach
    /// are read without remapping. Address space, not memory.
    pub fn growth(mut self, bytes: u64) -> Self {
        self.options.growth = bytes.max(HEADER_SIZE).div_ceil(HEADER_SIZE) * HEADER_SIZE;
        self
    }

    /// The largest key accepted, in bytes (default 64 KiB).
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.options.max_key_len = bytes.min(u32::MAX as usize);
        self
    }

    /// The largest value accepted, in bytes (default 256 MiB, at most
    /// 4 GiB - 1).
    pub fn max_value_len(mut self, bytes: usize) -> Self {
        self.options.max_value_len = bytes.min(u32::MAX as usize);
        self
    }
}
