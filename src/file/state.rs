//! One process's view of one cache file: the open file, its shared memory
//! map and the index of its committed records.
//!
//! Invariants kept here: `indexed` never exceeds the committed length, and
//! every record below `indexed` is in the index; the header's committed
//! length and superseded flag are only ever accessed atomically.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::format::{self, HEADER_SIZE, Kind, RECORD_HEADER_SIZE};
use super::index::{Index, Loc};
use super::log::{Damaged, ScanEnd, Walked, mapped, walk};
use super::open_private;
use super::options::Options;
use crate::error::{Error, Result};

/// One process's view of one file: the mapping and the index.
pub(super) struct State {
    pub(super) file: File,
    pub(super) map: MmapRaw,
    pub(super) generation: u64,
    pub(super) index: Index,
    /// Records below this offset are in the index.
    pub(super) indexed: u64,
}

impl State {
    /// Opens `path` and indexes it. The caller holds the exclusive lock, so
    /// nobody is writing: a new file gets its header, and a torn tail past
    /// the committed length is cut off.
    pub(super) fn load(path: &Path, options: &Options) -> Result<State> {
        let io = |e| Error::io(path, e);
        let format_error = |reason: String| Error::Format {
            path: path.to_owned(),
            reason,
        };
        let file = open_private(path, false)?;
        let meta = file.metadata().map_err(io)?;
        let mut len = meta.len();
        if len == 0 {
            file.write_all_at(&format::new_header(0), 0).map_err(io)?;
            file.sync_all().map_err(io)?;
            len = HEADER_SIZE;
        }
        if len < HEADER_SIZE {
            return Err(format_error(format!(
                "{len} bytes is shorter than a cache file's header: not a layercache file"
            )));
        }
        let mut header = vec![0u8; HEADER_SIZE as usize];
        file.read_exact_at(&mut header, 0).map_err(io)?;
        let generation = format::check_header(&header).map_err(|p| format_error(p.to_string()))?;
        let map = map_file(&file, len, options.growth).map_err(io)?;
        let mut state = State {
            file,
            map,
            generation,
            index: Index::default(),
            indexed: HEADER_SIZE,
        };
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
            state.index = Index::default();
            state.indexed = HEADER_SIZE;
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

    pub(super) fn atomic_u64(&self, at: usize) -> &AtomicU64 {
        // SAFETY: `at` is one of the header's 8-byte-aligned u64 fields
        // (H_COMMITTED), inside the first page, which every mapping covers
        // (files are at least HEADER_SIZE long and mappings start at 0 and
        // are page aligned). The field is only ever accessed atomically, by
        // this process and by every other (they map the same page shared),
        // and the reference does not outlive `self.map`.
        unsafe { &*(self.map.as_ptr().add(at) as *const AtomicU64) }
    }

    pub(super) fn committed_atomic(&self) -> &AtomicU64 {
        self.atomic_u64(format::H_COMMITTED)
    }

    pub(super) fn committed(&self) -> u64 {
        self.committed_atomic().load(Ordering::Acquire)
    }

    pub(super) fn superseded_flag(&self) -> &AtomicU32 {
        // SAFETY: as in `atomic_u64`: H_SUPERSEDED is a 4-byte-aligned u32 in
        // the first page, only ever accessed atomically.
        unsafe { &*(self.map.as_ptr().add(format::H_SUPERSEDED) as *const AtomicU32) }
    }

    pub(super) fn superseded(&self) -> bool {
        self.superseded_flag().load(Ordering::Acquire) != 0
    }

    /// The end of the last whole, valid record at or below `limit`.
    pub(super) fn valid_end(&self, limit: u64) -> u64 {
        let mut end = HEADER_SIZE;
        walk(mapped(&self.map, 0, limit), HEADER_SIZE, |at, record| {
            if let Walked::Record(header, _) = record {
                end = at + header.total_len();
            }
        });
        end
    }

    /// Indexes the records in `self.indexed..to`, and says whether `to`
    /// fell inside a record.
    pub(super) fn scan(&mut self, to: u64) -> ScanEnd {
        if to <= self.indexed {
            return ScanEnd::Clean;
        }
        let index = &mut self.index;
        let file = mapped(&self.map, 0, to);
        let mut end = ScanEnd::Clean;
        walk(file, self.indexed, |at, record| match record {
            Walked::Record(header, key) => match header.kind {
                Kind::Put => {
                    let loc = Loc {
                        record: at,
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
                let key_at = at as usize + RECORD_HEADER_SIZE;
                let here = file.get(key_at..).unwrap_or_default();
                index.retain(|loc| !(loc.record < at && here.starts_with(loc.key(file))));
            }
            Walked::Damaged(Damaged::PastEnd) => end = ScanEnd::InsideRecord,
        });
        self.indexed = to;
        end
    }

    /// The indexed part of the file, from offset 0.
    pub(super) fn file(&self) -> &[u8] {
        mapped(&self.map, 0, self.indexed)
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
