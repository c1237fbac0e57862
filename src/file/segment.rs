//! One segment file of a cache: its open file, its shared memory map and
//! the atomics in its header.
//!
//! A cache is a log split into segments. The file at the cache's path is
//! the *active* segment, where writers append; when it is full, a writer
//! *seals* it (gives it a second name, `<path>.<id>.seg`, and puts a fresh
//! active segment at the path), and sealed segments never change again.
//! Sealed segments are dropped oldest first: by cleaning (their live
//! records copied to the active segment first) or by the byte budget (not
//! copied). See `state.rs` for how a process follows those changes.
//!
//! Invariants kept here:
//! - The header's committed length and superseded flag, and the active
//!   segment's base, budget and cursor, are the only bytes ever written in
//!   place, by any process, and are only ever accessed as atomics through
//!   a map; no slice covers the header (see `log.rs`).
//! - Bytes below a committed length this process loaded never change while
//!   the segment is mapped: records are append-only, no cooperating process
//!   truncates below the committed length, and a segment that is dropped
//!   is unlinked, never truncated, so its pages stay valid for every
//!   process that still maps it.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::format::{self, HEADER_SIZE};
use super::identity::Ident;
use super::log::Log;

/// One mapped segment file.
pub(super) struct Segment {
    /// Shared with `Durability::Periodic`'s syncs, which run with no lock.
    pub(super) file: Arc<File>,
    pub(super) map: Arc<MmapRaw>,
    /// The file's (device, inode), to recognise it under another name.
    pub(super) ident: Ident,
    /// Its place in the log: sealed segments are ordered by id, and the
    /// active one has the highest.
    pub(super) id: u64,
    /// Its record salt.
    pub(super) salt: u32,
    /// Records below this offset are in this process's index: for a sealed
    /// segment, all of them (its final committed length); for the active
    /// one, those caught up with so far.
    pub(super) end: u64,
}

impl Segment {
    /// The segment `id` in `file` (whose metadata is `meta`), with record
    /// salt `salt`, mapped by `map`, none of it indexed yet.
    pub(super) fn new(
        file: File,
        map: MmapRaw,
        meta: &std::fs::Metadata,
        id: u64,
        salt: u32,
    ) -> Segment {
        Segment {
            file: Arc::new(file),
            map: Arc::new(map),
            ident: super::identity::ident(meta),
            id,
            salt,
            end: HEADER_SIZE,
        }
    }

    #[inline]
    fn atomic_u64(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at.is_multiple_of(8) && at + 8 <= HEADER_SIZE as usize);
        // SAFETY: `at` is one of the header's 8-byte-aligned u64 fields
        // (H_COMMITTED, H_BASE, H_MAX_BYTES, H_CURSOR), inside the first page,
        // which every mapping covers (a segment file is at least HEADER_SIZE
        // long, and mappings start at offset 0 and are page aligned, so the
        // address is aligned for AtomicU64). Other processes store to these
        // fields while we hold the reference; that is sound because every
        // access to them, in every process, is atomic through a shared
        // mapping of the same page (no `&[u8]` ever covers the header: see
        // `Log`), and the only non-atomic write to a header, `pwrite` of a
        // fresh one, happens before any process maps the file. The
        // reference borrows `self.map`, so it does not outlive the mapping.
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

    /// The oldest segment id still in the cache (meaningful in the active
    /// segment).
    #[inline]
    pub(super) fn base(&self) -> &AtomicU64 {
        self.atomic_u64(format::H_BASE)
    }

    /// The byte budget, 0 for none (meaningful in the active segment).
    #[inline]
    pub(super) fn max_bytes(&self) -> &AtomicU64 {
        self.atomic_u64(format::H_MAX_BYTES)
    }

    /// Where cleaning resumes: a position in the oldest segment, 0 for its
    /// start (meaningful in the active segment).
    #[inline]
    pub(super) fn cursor(&self) -> &AtomicU64 {
        self.atomic_u64(format::H_CURSOR)
    }

    #[inline]
    pub(super) fn superseded_flag(&self) -> &AtomicU32 {
        // SAFETY: as in `atomic_u64`: H_SUPERSEDED is a 4-byte-aligned u32 in
        // the first page, only ever accessed atomically.
        unsafe { &*(self.map.as_ptr().add(format::H_SUPERSEDED) as *const AtomicU32) }
    }

    /// Whether this file is no longer the active segment at the path
    /// (sealed, or replaced by a compaction).
    #[inline]
    pub(super) fn superseded(&self) -> bool {
        self.superseded_flag().load(Ordering::Acquire) != 0
    }

    /// The records below the file offset `end` (at or below a committed
    /// length this process loaded, and within the mapping).
    #[inline]
    pub(super) fn log(&self, end: u64) -> Log<'_> {
        Log::of(&self.map, end, self.salt)
    }
}

/// Maps `file` shared, read-write, covering at least `len` bytes plus
/// `growth` of room to grow (none for a sealed segment). Pages past the end
/// of the file are never touched.
pub(super) fn map_file(file: &File, len: u64, growth: u64) -> std::io::Result<MmapRaw> {
    let reach = if growth == 0 {
        len.max(HEADER_SIZE)
    } else {
        len.saturating_add(growth).div_ceil(growth) * growth
    };
    let reach =
        usize::try_from(reach).map_err(|_| std::io::Error::other("file too large to map"))?;
    MmapOptions::new().len(reach).map_raw(file)
}
