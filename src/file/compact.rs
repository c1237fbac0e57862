//! Upkeep of the segments: cleaning (a few records per write, oldest
//! segment first), the byte budget, and compaction (rewriting every live
//! record into one new file, on request).
//!
//! Invariants kept here:
//! - Cleaning copies a record only while the index points at it (it is
//!   live), and drops a segment only once every record in it was read and
//!   the copies are committed; its cursor names the segment it is in, so a
//!   cursor never applies to another.
//! - The budget drops the oldest sealed segment only, after each write and
//!   after each cleaning step.
//! - Compaction runs under the exclusive lock, so one runs at a time across
//!   every process, and its fixed temporary name (`<real path>.compact`)
//!   cannot be in use by another.
//! - The old file is flagged superseded before the rename, so a process that
//!   sees the flag reopens the path, waiting on the lock until the rename is
//!   done; a flag left by a compaction that died before its rename is
//!   cleared by the next load.
//! - A compaction that fails leaves the old file live and unflagged, and no
//!   temporary file behind (a crash leaves one, which the next load under
//!   the lock removes).
//! - The new file gets the old one's mode, group and owner before it is
//!   renamed into place, and is renamed onto the real path, so a symbolic
//!   link to the cache stays a link.
//! - Compaction never changes a value or a deadline; it only drops dead,
//!   expired and damaged records.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::crash;
use super::format::{
    self, Deadlines, HEADER_SIZE, Kind, NewHeader, Place, RECORD_HEADER_SIZE, crc,
};
use super::identity::{self, Paths};
use super::index;
use super::lock::Exclusive;
use super::options::Options;
use super::segment::Segment;
use super::shared::Shared;
use super::state::State;
use crate::error::{Error, Result};

/// Writes the live records (none unless `keep_live`; expired ones, by
/// `now`, dropped) of every segment to a new file, renames it over the
/// active segment, flags that one superseded and unlinks the sealed ones.
/// The caller holds the exclusive lock and `state`. Checks first, with
/// `stat`, that the data path still names `state`'s file (following it if
/// not), so that a rename never replaces a file this process has not read.
pub(super) fn rewrite(
    shared: &Shared,
    lock: &mut Exclusive<'_>,
    state: &mut State,
    keep_live: bool,
    now: u64,
) -> Result<()> {
    shared.follow(lock, state, true)?;
    let paths = &shared.paths;
    let logs = state.logs();
    let live = state.index.iter().filter(|_| keep_live).filter_map(|loc| {
        // Damaged since it was indexed, or expired: dropped (either reads
        // as missing).
        let header = loc.checked_header(&logs)?;
        let key = state.index.key_of(&logs, loc)?;
        let value = loc.value(&logs)?;
        (crc(value) == loc.value_crc && now < header.deadlines.expires).then_some((
            key,
            value,
            header.deadlines,
        ))
    });
    let active = state.active();
    let like = active
        .file
        .metadata()
        .map_err(|e| Error::io(&paths.given, e))?;
    let id = active.id + 1;
    let header = NewHeader {
        generation: state.generation + 1,
        salt: format::new_salt(),
        id,
        seed: format::random_u64(),
        base: id,
        max_bytes: active.max_bytes().load(Ordering::Acquire),
        cursor: 0,
    };
    write_file(paths, &like, header, live)?;
    crash::point("compact:written");
    install(paths, lock, active)?;
    crash::point("compact:installed");
    for seg in state.sealed() {
        // Below the new base: the next load removes any left behind.
        let _ = std::fs::remove_file(paths.segment(seg.id));
        let _ = std::fs::remove_file(paths.hint(seg.id));
    }
    *state = State::load(paths, &shared.settings, lock)?;
    Ok(())
}

/// Writes a file with `header` and `records` (key, value, deadlines) at the
/// compaction path, durably, with the permissions of the file `like`
/// describes. Leaves nothing behind when it fails.
pub(super) fn write_file<'a>(
    paths: &Paths,
    like: &std::fs::Metadata,
    header: NewHeader,
    records: impl Iterator<Item = (&'a [u8], &'a [u8], Deadlines)>,
) -> Result<()> {
    let tmp = &paths.compact;
    let written = (|| {
        let io_tmp = |e| Error::io(tmp, e);
        let file = identity::create_replacing(tmp).map_err(io_tmp)?;
        identity::inherit(&file, like).map_err(io_tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&format::new_header(header)).map_err(io_tmp)?;
        let mut end = HEADER_SIZE;
        let mut record = Vec::new();
        for (key, value, deadlines) in records {
            record.clear();
            let place = Place {
                salt: header.salt,
                at: end,
            };
            format::encode_record(Kind::Put, key, value, deadlines, place, &mut record);
            out.write_all(&record).map_err(io_tmp)?;
            end += record.len() as u64;
        }
        out.flush().map_err(io_tmp)?;
        drop(out);
        File::write_all_at(&file, &end.to_le_bytes(), format::H_COMMITTED as u64)
            .map_err(io_tmp)?;
        file.sync_all().map_err(io_tmp)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    written
}

/// Puts the file [`write_file`] wrote in place of the active segment
/// `old`: flags `old` superseded, renames, and tells other processes (the
/// epoch). On failure `old` stays live and unflagged, and the new file is
/// removed.
pub(super) fn install(paths: &Paths, lock: &Exclusive<'_>, old: &Segment) -> Result<()> {
    // Flag the old file first: a process that sees the flag reopens the
    // path, which blocks on the lock we hold until the rename is done. If we
    // die before the rename, the next load finds the flag on the file still
    // at the path and clears it.
    old.superseded_flag().store(1, Ordering::Release);
    crash::point("compact:flagged");
    if let Err(e) = std::fs::rename(&paths.compact, &paths.data) {
        old.superseded_flag().store(0, Ordering::Release);
        let _ = std::fs::remove_file(&paths.compact);
        return Err(Error::io(&paths.given, e));
    }
    identity::sync_parent(&paths.data);
    lock.bump_epoch();
    Ok(())
}

/// Bytes of the oldest segment a write's cleaning step reads, per byte the
/// write appended.
const CLEAN_PER_BYTE: u64 = 4;
/// Bytes of the oldest segment a cleaning step reads at least.
const CLEAN_MIN: u64 = 1024;

/// The upkeep after a write, under the locks: keeps the files within the
/// byte budget (dropping the oldest segments), then, when the garbage
/// warrants it (`options`) or a pass is under way, takes one cleaning step
/// that reads about [`CLEAN_PER_BYTE`] times what the write appended. No
/// step rewrites the cache or waits for more than that. Returns the error
/// of a step that failed, for the caller to report once the locks are
/// released; after one, steps pause (1 s, doubling up to a minute).
pub(super) fn after_write(
    shared: &Shared,
    lock: &mut Exclusive<'_>,
    state: &mut State,
    options: &Options,
    written: u64,
) -> Option<Error> {
    keep_within_budget(shared, lock, state);
    let garbage = state.garbage();
    let under_way = state.active().cursor().load(Ordering::Acquire) != 0;
    if !under_way
        && (garbage == 0
            || garbage < options.compact_min_bytes
            || (garbage as f64) < options.compact_ratio * state.record_bytes() as f64)
    {
        return None;
    }
    if lock.paused() {
        return None;
    }
    let budget = written.saturating_mul(CLEAN_PER_BYTE).max(CLEAN_MIN);
    let result = clean_step(shared, lock, state, options, budget);
    lock.after_upkeep(result.is_ok());
    // The step's copies, or the seal it made, may have taken the files
    // over the budget again.
    keep_within_budget(shared, lock, state);
    result.err()
}

/// Drops the oldest sealed segments while the files exceed the budget.
fn keep_within_budget(shared: &Shared, lock: &Exclusive<'_>, state: &mut State) {
    let max = state.active().max_bytes().load(Ordering::Acquire);
    if max > 0 {
        while state.file_bytes() > max && state.oldest().is_some() {
            state.drop_oldest(&shared.paths, &shared.settings, lock);
        }
    }
}

/// Bits of the cleaning cursor that hold the offset; the bits above hold
/// the low bits of the id of the segment it is in.
const CURSOR_OFFSET_BITS: u32 = 40;

/// The cleaning cursor for offset `at` of segment `id`.
fn cursor_for(id: u64, at: u64) -> u64 {
    (id << CURSOR_OFFSET_BITS) | (at & ((1 << CURSOR_OFFSET_BITS) - 1))
}

/// Where cleaning resumes in segment `id`, by `cursor`: its offset if the
/// cursor is in that segment, otherwise the segment's start. A cursor left
/// by a process that died while dropping the segment it was in never
/// applies to the next one (that skipped records, and the drop that
/// followed lost them).
fn cursor_in(cursor: u64, id: u64) -> u64 {
    let mask = (1 << CURSOR_OFFSET_BITS) - 1;
    if cursor != 0
        && cursor >> CURSOR_OFFSET_BITS == (id << CURSOR_OFFSET_BITS) >> CURSOR_OFFSET_BITS
    {
        cursor & mask
    } else {
        0
    }
}

/// One cleaning step: reads about `budget` bytes of the oldest sealed
/// segment, from where the last step stopped (the active segment's
/// cursor), copies the live, unexpired records found there to the active
/// segment, and drops the oldest segment once it is read to its end. With
/// no sealed segment, seals the active one first. Under the locks, with
/// the state caught up, so "live" is exact: the index points at the record.
fn clean_step(
    shared: &Shared,
    lock: &mut Exclusive<'_>,
    state: &mut State,
    options: &Options,
    budget: u64,
) -> Result<()> {
    let paths = &shared.paths;
    if state.oldest().is_none() {
        if state.indexed() == HEADER_SIZE {
            return Ok(());
        }
        state.seal(paths, &shared.settings, lock)?;
    }
    let now = options.clock.now().as_millis();
    let writer = &mut **lock;
    writer.scratch.clear();
    // (key length, value length, deadlines) of each copy in `scratch`.
    let mut copies: Vec<(usize, usize, Deadlines)> = Vec::new();
    let (at, end) = {
        let logs = state.logs();
        let (slot, oldest, end) = state.oldest().expect("sealed above");
        let log = oldest.log(end);
        let cursor = state.active().cursor().load(Ordering::Acquire);
        let mut at = cursor_in(cursor, oldest.id).clamp(HEADER_SIZE, end);
        let stop = at.saturating_add(budget);
        while at < end && at < stop {
            let Some(header) = log.header(at).filter(|h| at + h.total_len() <= end) else {
                at = super::log::resync(log, at + format::ALIGN);
                continue;
            };
            let here = index::pos(slot, at);
            let key_at = at + RECORD_HEADER_SIZE as u64;
            let value_at = key_at + u64::from(header.key_len);
            if header.kind == Kind::Put
                && now < header.deadlines.expires
                && let Some(key) = log.get(key_at, header.key_len as usize)
                && state
                    .index
                    .get(&logs, key)
                    .is_some_and(|loc| loc.pos == here)
                && let Some(value) = log.get(value_at, header.value_len as usize)
                && crc(value) == header.value_crc
            {
                writer.scratch.extend_from_slice(key);
                writer.scratch.extend_from_slice(value);
                copies.push((key.len(), value.len(), header.deadlines));
            }
            at += header.total_len();
        }
        (at, end)
    };
    if !copies.is_empty() {
        let counters = &shared.settings.counters;
        counters
            .copied
            .fetch_add(copies.len() as u64, Ordering::Relaxed);
        let len = copies
            .iter()
            .map(|&(key, value, _)| format::record_len(key, value))
            .sum();
        let (start, failed) = state.place(paths, &shared.settings, lock, len);
        if let Some(e) = failed {
            return Err(e);
        }
        let writer = &mut **lock;
        writer.buf.clear();
        let mut from = 0;
        for (key_len, value_len, deadlines) in copies {
            let key = &writer.scratch[from..from + key_len];
            let value = &writer.scratch[from + key_len..from + key_len + value_len];
            from += key_len + value_len;
            let place = Place {
                at: start.at + writer.buf.len() as u64,
                ..start
            };
            format::encode_record(Kind::Put, key, value, deadlines, place, &mut writer.buf);
        }
        super::append(shared, options.durability, lock, state)?;
        crash::point("clean:copied");
    }
    if at >= end {
        state.drop_oldest(paths, &shared.settings, lock);
    } else {
        let oldest = state.oldest().expect("not dropped").1.id;
        state
            .active()
            .cursor()
            .store(cursor_for(oldest, at), Ordering::Release);
    }
    Ok(())
}
