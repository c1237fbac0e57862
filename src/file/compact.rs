//! Compaction: rewriting the live records into a new file and renaming it
//! over the old one.
//!
//! Invariants kept here: compaction runs under the exclusive lock; the old
//! file is flagged superseded before the rename, so a process that sees the
//! flag reopens the path (waiting on the lock until the rename is done); a
//! flag left by a compaction that died before its rename is cleared by the
//! next open.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::format::{self, HEADER_SIZE, Kind, crc};
use super::state::State;
use super::{FileCache, open_private, sibling};
use crate::error::{Error, Result};

impl FileCache {
    pub(super) fn maybe_compact(&self, state: &mut State) -> Result<()> {
        let records = state.indexed - HEADER_SIZE;
        let garbage = state.garbage();
        if garbage >= self.options.compact_min_bytes
            && garbage as f64 >= self.options.compact_ratio * records as f64
        {
            self.rewrite(state, true)?;
        }
        Ok(())
    }

    /// Writes the live records (none unless `keep_live`) to a new file,
    /// renames it over the old one and flags the old one superseded. The
    /// caller holds the locks.
    pub(super) fn rewrite(&self, state: &mut State, keep_live: bool) -> Result<()> {
        let tmp = sibling(&self.path, ".compact");
        let io_tmp = |e| Error::io(&tmp, e);
        // Under the exclusive lock, a file left here is from a compaction
        // that died: replace it.
        let file = open_private(&tmp, true)?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&format::new_header(state.generation + 1))
            .map_err(io_tmp)?;
        let mut end = HEADER_SIZE;
        let mut record = Vec::new();
        let old = state.file();
        for loc in state.index.iter().filter(|_| keep_live) {
            let Some(key) = loc.checked_key(old) else {
                continue; // damaged since it was indexed: drop it
            };
            let value = loc.value(old);
            if crc(value) != loc.value_crc {
                continue; // damaged: it reads as missing, so it is dropped
            }
            record.clear();
            format::encode_record(Kind::Put, key, value, &mut record);
            out.write_all(&record).map_err(io_tmp)?;
            end += record.len() as u64;
        }
        out.flush().map_err(io_tmp)?;
        drop(out);
        file.write_all_at(&end.to_le_bytes(), format::H_COMMITTED as u64)
            .map_err(io_tmp)?;
        file.sync_all().map_err(io_tmp)?;
        // Flag the old file first: a process that sees the flag reopens the
        // path, which blocks on the lock we hold until the rename is done.
        // If we die before the rename, the next `load` finds the flag on the
        // file still at the path and clears it.
        state.superseded_flag().store(1, Ordering::Release);
        if let Err(e) = std::fs::rename(&tmp, &self.path) {
            state.superseded_flag().store(0, Ordering::Release);
            return Err(Error::io(&self.path, e));
        }
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // Make the rename itself durable; not every platform lets a
            // directory be opened and synced, and the data is safe either way.
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        *state = State::load(&self.path, &self.options)?;
        Ok(())
    }

    /// Rewrites the file with only its live records, reclaiming the space
    /// of overwritten and removed values. Other processes follow to the new
    /// file on their next call and lose nothing.
    pub fn compact(&self) -> Result<()> {
        self.with_writer(|_, state| self.rewrite(state, true))
    }

    /// Removes every entry by replacing the file with an empty one (a
    /// compaction that keeps nothing), whatever the key type.
    pub fn clear(&self) -> Result<()> {
        self.with_writer(|_, state| self.rewrite(state, false))
    }
}
