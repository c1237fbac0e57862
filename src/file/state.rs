//! One process's view of one cache file: the open file, its shared memory
//! map and the index of its committed records.
//!
//! Invariants kept here:
//! - `indexed` never exceeds the committed length, and every record below
//!   `indexed` is in the index.
//! - The header's committed length and superseded flag are the only bytes
//!   written in place, by any process, and are only ever accessed as
//!   atomics through the map; no slice covers the header (see `log.rs`).
//! - A file is loaded, created, repaired or cleared of a dead compaction's
//!   leftovers only under the exclusive lock, so no other cooperating
//!   process is writing, compacting or repairing it meanwhile.
//! - The only truncation cuts bytes past the committed length, which no
//!   cooperating process reads (they read below a committed length they
//!   loaded, and under the lock nobody advances it): no page that another
//!   process may read is ever taken from under its map.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::format::{self, HEADER_SIZE, Kind, RECORD_HEADER_SIZE};
use super::identity::{self, Ident, Paths, ident};
use super::index::{Index, Loc};
use super::lock::{Exclusive, LockPage};
use super::log::{Damaged, Log, ScanEnd, Walked, walk};
use super::options::Options;
use crate::error::{Error, Result};

/// What one process's state of a file was opened with, for every load of
/// it (the first handle's options: see `FileCacheBuilder::growth`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// The map's reach past the file's end.
    pub(super) growth: u64,
    /// The mode of files this state creates.
    pub(super) mode: u32,
    /// Whether the file may be on a network file system.
    pub(super) allow_remote: bool,
}

impl Settings {
    pub(super) fn of(options: &Options) -> Settings {
        Settings {
            growth: options.growth,
            mode: options.mode,
            allow_remote: options.allow_network_fs,
        }
    }
}

/// One process's view of one file: the mapping and the index.
pub(super) struct State {
    /// Shared with `Durability::Periodic`'s syncs, which run with no lock.
    pub(super) file: Arc<File>,
    pub(super) map: Arc<MmapRaw>,
    /// The data file's (device, inode), to notice it was replaced.
    pub(super) ident: Ident,
    /// The lock file's data epoch when this file was loaded, and the lock
    /// file's page, where readers watch it move with no lock and no system
    /// call.
    pub(super) epoch: u64,
    pub(super) lock_page: Arc<LockPage>,
    pub(super) generation: u64,
    /// The file's record salt (see `format.rs`).
    pub(super) salt: u32,
    pub(super) index: Index,
    /// Records below this offset are in the index.
    pub(super) indexed: u64,
}

impl State {
    /// Opens the data file (creating it with `mode`), checks that it is one
    /// this process may use, and indexes it. The caller holds the exclusive
    /// lock, so nobody is writing: a new file gets its header, a torn tail
    /// past the committed length is cut off, and a compaction file left by
    /// a compaction that died is removed.
    pub(super) fn load(paths: &Paths, settings: &Settings, lock: &Exclusive<'_>) -> Result<State> {
        let given = &paths.given;
        let io = |e| Error::io(given, e);
        let format_error = |reason: String| Error::Format {
            path: given.to_owned(),
            reason,
        };
        let file = identity::open_or_create(&paths.data, settings.mode, given)?;
        let meta = file.metadata().map_err(io)?;
        identity::check_links(&meta, given)?;
        identity::check_local(&file, given, settings.allow_remote)?;
        // Nothing there, a directory, no permission: whatever stays in the
        // way, the next compaction reports.
        let _ = std::fs::remove_file(&paths.compact);
        let mut len = meta.len();
        let epoch = if len == 0 {
            // A new data file at the path: tell the processes still on an
            // older one (see `lock.rs`).
            file.write_all_at(&format::new_header(0, format::new_salt()), 0)
                .map_err(io)?;
            file.sync_all().map_err(io)?;
            len = HEADER_SIZE;
            lock.bump_epoch()
        } else {
            lock.epoch()
        };
        if len < HEADER_SIZE {
            return Err(format_error(format!(
                "{len} bytes is shorter than a cache file's header: not a layercache file"
            )));
        }
        let mut header = vec![0u8; HEADER_SIZE as usize];
        file.read_exact_at(&mut header, 0).map_err(io)?;
        let info = format::check_header(&header).map_err(|p| format_error(p.to_string()))?;
        let map = map_file(&file, len, settings.growth).map_err(io)?;
        let mut state = State {
            file: Arc::new(file),
            map: Arc::new(map),
            ident: ident(&meta),
            epoch,
            lock_page: lock.page(),
            generation: info.generation,
            salt: info.salt,
            index: Index::default(),
            indexed: HEADER_SIZE,
        };
        if info.version == format::VERSION_1 {
            // Written by layercache 0.1: rewrite it in this format, in place
            // of the old file (processes still running 0.1 follow the
            // superseded flag, and refuse the new file by its version).
            super::v1::convert(&state, len, paths, lock)?;
            return State::load(paths, settings, lock);
        }
        let mut committed = state.committed();
        if committed < HEADER_SIZE || committed > len || !committed.is_multiple_of(format::ALIGN) {
            // The file was cut short from outside, or the header's length was
            // damaged: keep every whole record that is there.
            committed = state.valid_end(len);
        }
        if state.scan(committed) == ScanEnd::InsideRecord {
            // The committed length points into a record: it is damaged (a
            // writer only ever advances it to a record's end). Keep every
            // whole record in the file instead of cutting one in half.
            committed = state.valid_end(len);
            state.reindex();
            state.scan(committed);
        }
        if len > committed {
            // A write that never returned: cut it off so the file holds only
            // committed records. Nobody reads past the committed length.
            state.file.set_len(committed).map_err(io)?;
        }
        state.committed_atomic().store(committed, Ordering::Release);
        // Under the exclusive lock no compaction is under way, so a flag on
        // the file at the path is from a compaction that died before its
        // rename: this file is still the live one.
        if state.superseded() {
            state.superseded_flag().store(0, Ordering::Release);
        }
        Ok(state)
    }

    #[inline]
    pub(super) fn atomic_u64(&self, at: usize) -> &AtomicU64 {
        // SAFETY: `at` is one of the header's 8-byte-aligned u64 fields
        // (H_COMMITTED), inside the first page, which every mapping covers
        // (files are at least HEADER_SIZE long, and mappings start at offset
        // 0 and are page aligned, so the address is aligned for AtomicU64).
        // Other processes store to this field while we hold the reference;
        // that is sound because every access to it, in every process, is
        // atomic through a shared mapping of the same page (no `&[u8]` ever
        // covers the header: see `Log`), and the only non-atomic write to a
        // header, `pwrite` of a fresh header, happens before any process maps
        // the file. The reference does not outlive `self.map`.
        unsafe { &*(self.map.as_ptr().add(at) as *const AtomicU64) }
    }

    #[inline]
    pub(super) fn committed_atomic(&self) -> &AtomicU64 {
        self.atomic_u64(format::H_COMMITTED)
    }

    #[inline]
    pub(super) fn committed(&self) -> u64 {
        self.committed_atomic().load(Ordering::Acquire)
    }

    #[inline]
    pub(super) fn superseded_flag(&self) -> &AtomicU32 {
        // SAFETY: as in `atomic_u64`: H_SUPERSEDED is a 4-byte-aligned u32 in
        // the first page, only ever accessed atomically.
        unsafe { &*(self.map.as_ptr().add(format::H_SUPERSEDED) as *const AtomicU32) }
    }

    #[inline]
    pub(super) fn superseded(&self) -> bool {
        self.superseded_flag().load(Ordering::Acquire) != 0
    }

    /// The end of the last whole, valid record at or below `limit`.
    pub(super) fn valid_end(&self, limit: u64) -> u64 {
        let mut end = HEADER_SIZE;
        walk(
            Log::of(&self.map, limit, self.salt),
            HEADER_SIZE,
            |at, record| {
                if let Walked::Record(header, _) = record {
                    end = at + header.total_len();
                }
            },
        );
        end
    }

    /// Indexes the records in `self.indexed..to`, and says whether `to`
    /// fell inside a record.
    pub(super) fn scan(&mut self, to: u64) -> ScanEnd {
        if to <= self.indexed {
            return ScanEnd::Clean;
        }
        let index = &mut self.index;
        let file = Log::of(&self.map, to, self.salt);
        let mut end = ScanEnd::Clean;
        walk(file, self.indexed, |at, record| match record {
            Walked::Record(header, key) => match header.kind {
                Kind::Put => {
                    let loc = Loc {
                        record: at,
                        hash: 0, // set by the index
                        key_len: header.key_len,
                        value_len: header.value_len,
                        key_crc: header.key_crc,
                        value_crc: header.value_crc,
                    };
                    index.insert(file, key, loc);
                }
                Kind::Tombstone => {
                    index.remove(file, key);
                }
            },
            Walked::DamagedKey { key_crc } => {
                // A record for an unknown key whose checksum is `key_crc`: an
                // older value of that key must not be served in its place,
                // so forget every such key written before it.
                index.retain(|loc| !(loc.record < at && loc.key_crc == key_crc));
            }
            Walked::Damaged(Damaged::Header) => {
                // A record we cannot read at all may have overwritten or
                // removed any key. Its key bytes most likely survive where a
                // key starts: forget every older key found there, so that an
                // older value is never served in place of the lost one (a
                // key that merely shares a prefix is forgotten too: it reads
                // as missing, which is safe).
                let here = file.from(at + RECORD_HEADER_SIZE as u64);
                index.retain(|loc| !(loc.record < at && here.starts_with(loc.key(file))));
            }
            Walked::Damaged(Damaged::PastEnd) => end = ScanEnd::InsideRecord,
        });
        self.indexed = to;
        end
    }

    /// Forgets the index, so that the next scan indexes every committed
    /// record again.
    pub(super) fn reindex(&mut self) {
        self.index = Index::default();
        self.indexed = HEADER_SIZE;
    }

    /// The indexed records.
    #[inline]
    pub(super) fn file(&self) -> Log<'_> {
        Log::of(&self.map, self.indexed, self.salt)
    }

    /// Whether another process has put a new data file at the path since
    /// this one was loaded (one atomic load; see `lock.rs`).
    #[inline]
    pub(super) fn epoch_moved(&self) -> bool {
        self.lock_page.epoch() != self.epoch
    }

    /// Whether the file is still the one at the data path: not superseded
    /// by a compaction, nor removed or replaced from outside (a `stat` of
    /// the path).
    pub(super) fn is_current(&self, paths: &Paths) -> bool {
        !self.superseded()
            && std::fs::metadata(&paths.data).is_ok_and(|meta| ident(&meta) == self.ident)
    }

    /// Bytes of indexed records that no live entry points at.
    pub(super) fn garbage(&self) -> u64 {
        self.indexed - HEADER_SIZE - self.index.live_bytes()
    }
}

/// Maps `file` shared, read-write, covering at least `len` bytes plus room
/// to grow. Pages past the end of the file are never touched.
pub(super) fn map_file(file: &File, len: u64, growth: u64) -> std::io::Result<MmapRaw> {
    let reach = len.saturating_add(growth).div_ceil(growth) * growth;
    let reach =
        usize::try_from(reach).map_err(|_| std::io::Error::other("file too large to map"))?;
    MmapOptions::new().len(reach).map_raw(file)
}
