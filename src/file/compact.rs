//! Compaction: rewriting the live records into a new file and renaming it
//! over the old one.
//!
//! Invariants kept here:
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
use std::time::{Duration, Instant};

use super::format::{self, Deadlines, HEADER_SIZE, Kind, Place, crc};
use super::identity::{self, Paths};
use super::lock::Exclusive;
use super::options::Options;
use super::shared::Shared;
use super::state::State;
use crate::error::{Error, Result};

/// The first pause after an automatic compaction failed.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between automatic compaction attempts that fail.
const LONGEST_PAUSE: Duration = Duration::from_secs(60);

/// Writes the live records (none unless `keep_live`; expired ones, by
/// `now`, dropped) to a new file, renames it over the old one and flags
/// the old one superseded. The caller holds the exclusive lock and
/// `state`. Checks first, with `stat`, that the data path still names
/// `state`'s file (following it if not), so that a rename never replaces a
/// file this process has not read.
pub(super) fn rewrite(
    shared: &Shared,
    lock: &mut Exclusive<'_>,
    state: &mut State,
    keep_live: bool,
    now: u64,
) -> Result<()> {
    shared.follow(lock, state, true)?;
    let paths = &shared.paths;
    let old = state.file();
    let live = state.index.iter().filter(|_| keep_live).filter_map(|loc| {
        // Damaged since it was indexed, or expired: dropped (either reads
        // as missing).
        let header = loc.checked_header(old)?;
        let key = loc.checked_key(old)?;
        let value = loc.value(old);
        (crc(value) == loc.value_crc && now < header.deadlines.expires).then_some((
            key,
            value,
            header.deadlines,
        ))
    });
    write_file(paths, state, live)?;
    install(paths, lock, state)?;
    *state = State::load(paths, &shared.settings, lock)?;
    Ok(())
}

/// Writes a file of `records` (key, value, deadlines) at the compaction
/// path, durably, with the permissions of `old`'s file and the generation
/// after its. Leaves nothing behind when it fails.
pub(super) fn write_file<'a>(
    paths: &Paths,
    old: &State,
    records: impl Iterator<Item = (&'a [u8], &'a [u8], Deadlines)>,
) -> Result<()> {
    let tmp = &paths.compact;
    let written = (|| {
        let io_tmp = |e| Error::io(tmp, e);
        let old_meta = old.file.metadata().map_err(io_tmp)?;
        let file = identity::create_replacing(tmp).map_err(io_tmp)?;
        identity::inherit(&file, &old_meta).map_err(io_tmp)?;
        let salt = format::new_salt();
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&format::new_header(old.generation + 1, salt))
            .map_err(io_tmp)?;
        let mut end = HEADER_SIZE;
        let mut record = Vec::new();
        for (key, value, deadlines) in records {
            record.clear();
            let place = Place { salt, at: end };
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

/// Puts the file [`write_file`] wrote in place of `old`'s: flags `old`
/// superseded, renames, and tells other processes (the epoch). On failure
/// `old` stays live and unflagged, and the new file is removed.
pub(super) fn install(paths: &Paths, lock: &Exclusive<'_>, old: &State) -> Result<()> {
    // Flag the old file first: a process that sees the flag reopens the
    // path, which blocks on the lock we hold until the rename is done. If we
    // die before the rename, the next load finds the flag on the file still
    // at the path and clears it.
    old.superseded_flag().store(1, Ordering::Release);
    if let Err(e) = std::fs::rename(&paths.compact, &paths.data) {
        old.superseded_flag().store(0, Ordering::Release);
        let _ = std::fs::remove_file(&paths.compact);
        return Err(Error::io(&paths.given, e));
    }
    identity::sync_parent(&paths.data);
    lock.bump_epoch();
    Ok(())
}

/// Compacts after a write when `options` say the garbage warrants it and no
/// pause after a failure is running. Returns the error of a compaction that
/// failed, for the caller to report once the locks are released.
pub(super) fn after_write(
    shared: &Shared,
    lock: &mut Exclusive<'_>,
    state: &mut State,
    options: &Options,
) -> Option<Error> {
    let records = state.indexed - HEADER_SIZE;
    let garbage = state.garbage();
    if garbage < options.compact_min_bytes
        || (garbage as f64) < options.compact_ratio * records as f64
    {
        return None;
    }
    let now = Instant::now();
    if let Some((until, _)) = lock.compaction_pause
        && now < until
    {
        return None;
    }
    match rewrite(shared, lock, state, true, options.clock.now().as_millis()) {
        Ok(()) => {
            lock.compaction_pause = None;
            None
        }
        Err(e) => {
            let pause = lock
                .compaction_pause
                .map_or(FIRST_PAUSE, |(_, last)| (last * 2).min(LONGEST_PAUSE));
            lock.compaction_pause = Some((now + pause, pause));
            Some(e)
        }
    }
}
