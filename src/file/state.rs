//! One process's view of one cache: its mapped segments and the index of
//! their committed records.
//!
//! A cache is the active segment (the file at the path) and the sealed
//! segments named `<path>.<id>.seg` whose ids run from the active
//! segment's base up to its own id. A process maps each one and gives it a
//! slot; index positions name the slot (see `index.rs`).
//!
//! Invariants kept here:
//! - Every record of every mapped segment below its `end` is in the
//!   index (sealed segments wholly, the active one up to `indexed()`), in
//!   log order: segments by id, records by offset; and `indexed()` never
//!   exceeds the active segment's committed length.
//! - A segment's slot is freed, and its map dropped, only once no index
//!   entry points into it.
//! - The cache's segments change only under the exclusive lock: a writer
//!   seals the active segment (a second name for it, then a new file
//!   renamed onto the path), drops the oldest sealed one (the base moves,
//!   then the file is unlinked), or a compaction replaces them all. So a
//!   process that holds the lock sees whole changes, and a load, repair or
//!   cleanup of a dead writer's leftovers never races another process.
//! - The only truncation cuts bytes past the active segment's committed
//!   length, which no cooperating process reads; no segment that another
//!   process may map is ever truncated, and a dropped segment is unlinked,
//!   which leaves its pages valid for every process still mapping it.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::crash;
use super::format::{self, HEADER_SIZE, Kind, NewHeader, RECORD_HEADER_SIZE};
use super::hint;
use super::identity::{self, Paths, ident};
use super::index::{self, Index, Loc, Logs};
use super::lock::{Exclusive, LockPage};
use super::log::{Damaged, Log, ScanEnd, Walked, walk};
use super::options::{Durability, Options};
use super::segment::{Segment, map_file};
use crate::error::{Error, Result};
use memmap2::UncheckedAdvice;

/// Counts of what this process did to one cache (see `FileStats`).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) seals: AtomicU64,
    pub(super) drops: AtomicU64,
    pub(super) evictions: AtomicU64,
    pub(super) copied: AtomicU64,
    pub(super) hinted: AtomicU64,
    pub(super) scanned: AtomicU64,
}

/// The background threads of one cache in this process (hint writers,
/// segment releasers): joined when the process's last handle on the cache
/// closes, so that none writes a hint file or unlinks a segment after the
/// caller has let go of the cache (and, say, deleted its directory).
#[derive(Debug, Default)]
pub(super) struct Background(std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>);

impl Background {
    /// Runs `work` on a thread of its own, at the lowest priority; `false`
    /// when no thread could be started (`work` is then dropped unrun).
    fn spawn(&self, name: &str, work: impl FnOnce() + Send + 'static) -> bool {
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                lowest_priority();
                work();
            });
        match spawned {
            Ok(handle) => {
                let mut handles = super::lock_poisoned(self.0.lock());
                handles.retain(|handle| !handle.is_finished());
                handles.push(handle);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits for every thread started so far.
    pub(super) fn join_all(&self) {
        let handles = std::mem::take(&mut *super::lock_poisoned(self.0.lock()));
        for handle in handles {
            let _ = handle.join();
        }
    }

    /// In a forked child: lets go of the parent's threads without touching
    /// them. They do not exist in the child, and dropping a `JoinHandle`
    /// detaches its thread: `pthread_detach` of a parent's thread id in
    /// the child marked one of the child's own threads detached (its join
    /// then failed). If another thread of the parent held the list at the
    /// fork, it is left as it is.
    pub(super) fn forget_all(&self) {
        if let Ok(mut handles) = self.0.try_lock() {
            std::mem::forget(std::mem::take(&mut *handles));
        }
    }
}

/// What one process's state of a file was opened with, for every load of
/// it (the first handle's options: see `FileCacheBuilder::growth`).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// The map's reach past the active segment's end.
    pub(super) growth: u64,
    /// The mode of files this state creates.
    pub(super) mode: u32,
    /// Whether the file may be on a network file system.
    pub(super) allow_remote: bool,
    /// The size at which a writer seals the active segment.
    pub(super) segment_bytes: u64,
    /// Whether seals are made durable (`fsync`) before they are published.
    pub(super) durable: bool,
    /// What this process did, for its `FileStats`.
    pub(super) counters: Arc<Counters>,
    /// This process's background threads for the cache.
    pub(super) background: Arc<Background>,
}

impl Settings {
    pub(super) fn of(options: &Options) -> Settings {
        Settings {
            growth: options.growth,
            mode: options.mode,
            allow_remote: options.allow_network_fs,
            segment_bytes: options.segment_bytes,
            durable: options.durability != Durability::Buffered,
            counters: Arc::default(),
            background: Arc::default(),
        }
    }
}

/// A mapped segment (`seg.end`: how far this process has indexed it).
pub(super) struct Slot {
    pub(super) seg: Segment,
    /// Dropped from the cache: reads no longer see it, and it is unmapped
    /// once the index has forgotten its entries.
    dropped: bool,
}

/// The slots of a state, as the index reads them.
#[derive(Clone, Copy)]
pub(super) struct Slots<'a>(&'a [Option<Slot>]);

impl<'a> Logs<'a> for Slots<'a> {
    #[inline]
    fn log(&self, slot: usize) -> Option<Log<'a>> {
        let slot = self.0.get(slot)?.as_ref().filter(|slot| !slot.dropped)?;
        Some(slot.seg.log(slot.seg.end))
    }

    #[inline]
    fn mapped(&self, slot: usize) -> Option<Log<'a>> {
        let slot = self.0.get(slot)?.as_ref()?;
        Some(slot.seg.log(slot.seg.end))
    }
}

/// One process's view of one cache: the mapped segments and the index.
pub(super) struct State {
    slots: Vec<Option<Slot>>,
    /// The active segment's slot.
    active: usize,
    /// The sealed segments' slots, oldest (lowest id) first.
    sealed: Vec<usize>,
    /// Slots of segments dropped from the cache whose entries the index
    /// still has: one shard of the index forgets them at each
    /// [`sweep`](Self::sweep), from `sweep_next` on.
    dropping: Vec<usize>,
    sweep_next: usize,
    /// Bytes of the sealed segments' records (headers not counted).
    sealed_bytes: u64,
    /// The lock file's data epoch when this state last matched the files,
    /// and the lock file's page, where readers watch it move with no lock
    /// and no system call.
    pub(super) epoch: u64,
    pub(super) lock_page: Arc<LockPage>,
    /// Compactions (full rewrites) the cache has had.
    pub(super) generation: u64,
    /// The index's hash seed, the same in every segment of the cache.
    seed: u64,
    /// What this process did, for its `FileStats`.
    counters: Arc<Counters>,
    /// This process's background threads for the cache.
    background: Arc<Background>,
    pub(super) index: Index,
}

impl State {
    /// Opens the cache at `paths` (creating it with `settings.mode`),
    /// checks that it is one this process may use, maps its segments and
    /// indexes them. The caller holds the exclusive lock, so nobody is
    /// writing: a new file gets its header, a torn tail past the committed
    /// length is cut off, and leftovers of a writer or compaction that died
    /// are removed.
    pub(super) fn load(paths: &Paths, settings: &Settings, lock: &Exclusive<'_>) -> Result<State> {
        let given = &paths.given;
        let io = |e| Error::io(given, e);
        let format_error = |reason: String| Error::Format {
            path: given.to_owned(),
            reason,
        };
        // Nothing there, a directory, no permission: whatever stays in the
        // way, the next compaction or seal reports.
        let _ = std::fs::remove_file(&paths.compact);
        let _ = std::fs::remove_file(&paths.next);
        let file = identity::open_or_create(&paths.data, settings.mode, given)?;
        identity::check_local(&file, given, settings.allow_remote)?;
        let mut len = file.metadata().map_err(io)?.len();
        let epoch = if len == 0 {
            // A new cache at the path: it starts empty, after any segment
            // left there, which is below its base and so removed below.
            let after = paths
                .sealed_ids()
                .map_err(io)?
                .last()
                .map_or(1, |id| id + 1);
            let header = format::new_header(NewHeader {
                generation: 0,
                salt: format::new_salt(),
                id: after,
                seed: format::random_u64(),
                base: after,
                max_bytes: 0,
                cursor: 0,
            });
            file.write_all_at(&header, 0).map_err(io)?;
            file.sync_all().map_err(io)?;
            len = HEADER_SIZE;
            // Tell the processes still on an older file (see `lock.rs`).
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
        let meta = file.metadata().map_err(io)?;
        let map = map_file(&file, len, settings.growth).map_err(io)?;
        let active = Segment::new(file, map, &meta, info.id, info.salt);
        if info.version == format::VERSION_1 {
            // Written by layercache 0.1: rewrite it in this format, in place
            // of the old file (processes still running 0.1 follow the
            // superseded flag, and refuse the new file by its version).
            super::v1::convert(&active, len, info.generation, paths, lock)?;
            return State::load(paths, settings, lock);
        }
        // A seal that died between giving the active segment its sealed
        // name and renaming the new one onto the path left that second name.
        let own_name = paths.segment(info.id);
        if std::fs::symlink_metadata(&own_name).is_ok_and(|m| ident(&m) == active.ident) {
            std::fs::remove_file(&own_name).map_err(io)?;
        }
        identity::check_links(&active.file.metadata().map_err(io)?, given)?;
        let mut base = active.base().load(Ordering::Acquire);
        if base > info.id {
            // Damaged: no drop ever moves the base past the active segment.
            // No sealed segment can be trusted then (a record in one may be
            // older than the lost base says), so all are dropped: misses,
            // never older data.
            base = info.id;
            active.base().store(base, Ordering::Release);
        }
        let mut state = State {
            slots: Vec::new(),
            active: 0,
            sealed: Vec::new(),
            dropping: Vec::new(),
            sweep_next: 0,
            sealed_bytes: 0,
            epoch,
            lock_page: lock.page(),
            generation: info.generation,
            seed: info.seed,
            counters: settings.counters.clone(),
            background: settings.background.clone(),
            index: Index::new(info.seed),
        };
        for id in paths.sealed_ids().map_err(io)? {
            if id < base {
                // Dropped, but its unlink never happened.
                let _ = std::fs::remove_file(paths.segment(id));
            }
        }
        // Every segment from the base up: one that is not there (deleted,
        // or damaged beyond reading its header) is a hole in the log, and
        // a record older than a hole may have been overwritten or removed
        // in it, so every segment before a hole is left out (its entries
        // read as missing). One that is there but cannot be opened now is
        // an error: this process must not go on without it.
        let mut sealed = Vec::new();
        let mut hole = None;
        for id in base..info.id {
            match state.open_sealed_hinted(paths, id)? {
                Some(opened) => sealed.push(opened),
                None => {
                    sealed.clear();
                    hole = Some(id);
                }
            }
        }
        if let Some(hole) = hole {
            // Every process must leave out the same segments (one that
            // still maps them would otherwise serve their entries, and its
            // cleaning copy them forward past a removal made here): the
            // hole and everything before it are dropped for all, as a drop
            // is, by moving the base past them.
            state_base_past(&active, hole, lock);
            state.epoch = lock.epoch();
            for id in base..=hole {
                let _ = std::fs::remove_file(paths.segment(id));
                let _ = std::fs::remove_file(paths.hint(id));
            }
        }
        for id in paths.hint_ids().map_err(io)? {
            if id < base || id >= info.id {
                let _ = std::fs::remove_file(paths.hint(id));
            }
        }
        // Room for every put the hints hold, so loading them moves nothing.
        let hinted: usize = sealed
            .iter()
            .filter_map(|(_, hinted)| hinted.as_ref())
            .map(hint::Hint::len)
            .sum();
        // And for the active segment's records, at the hinted segments'
        // average record size.
        let hinted_bytes: u64 = sealed
            .iter()
            .filter(|(_, hinted)| hinted.is_some())
            .map(|(seg, _)| seg.end - HEADER_SIZE)
            .sum();
        let active_records = match hinted_bytes / (hinted.max(1) as u64) {
            0 => 0,
            average => (len.saturating_sub(HEADER_SIZE) / average) as usize,
        };
        state.index.reserve(hinted + active_records);
        // Runs of hinted segments are loaded together (see `Index::load`);
        // a segment with no valid hint is scanned, in its place in the log.
        let mut run: Vec<(usize, hint::Hint)> = Vec::new();
        for (seg, hinted) in sealed {
            match hinted {
                Some(hint) => {
                    let slot = state.add_hinted(seg);
                    run.push((slot, hint));
                }
                None => {
                    state.load_run(std::mem::take(&mut run));
                    state.index_sealed(paths, seg, None);
                }
            }
        }
        state.load_run(run);
        state.active = state.add_slot(active);
        state.open_active(len, paths)?;
        // Under the exclusive lock no compaction or seal is under way, so a
        // flag on the file at the path is from one that died before its
        // rename: this file is still the active one.
        if state.superseded() {
            state.active().superseded_flag().store(0, Ordering::Release);
        }
        Ok(state)
    }

    /// Checks and indexes the active segment, `len` bytes long, repairing
    /// its committed length and cutting a torn tail. Under the lock.
    fn open_active(&mut self, len: u64, paths: &Paths) -> Result<()> {
        let mut committed = self.committed();
        if committed < HEADER_SIZE || committed > len || !committed.is_multiple_of(format::ALIGN) {
            // The file was cut short from outside, or the header's length was
            // damaged: keep every whole record that is there.
            committed = self.active().valid_end(len);
        }
        if self.scan(committed) == ScanEnd::InsideRecord {
            // The committed length points into a record: it is damaged (a
            // writer only ever advances it to a record's end). Keep every
            // whole record in the file instead of cutting one in half.
            committed = self.active().valid_end(len);
            self.reindex();
            self.scan(committed);
        }
        if len > committed {
            // A write that never returned: cut it off so the file holds only
            // committed records. Nobody reads past the committed length.
            self.active()
                .file
                .set_len(committed)
                .map_err(|e| Error::io(&paths.given, e))?;
        }
        self.active()
            .committed_atomic()
            .store(committed, Ordering::Release);
        Ok(())
    }

    /// Opens the sealed segment `id` and reads its hint, if it has a valid
    /// one.
    fn open_sealed_hinted(
        &self,
        paths: &Paths,
        id: u64,
    ) -> Result<Option<(Segment, Option<hint::Hint>)>> {
        let Some(seg) = open_sealed(paths, id, self.seed)? else {
            return Ok(None);
        };
        let describes = hint::Describes {
            id,
            end: seg.end,
            seed: self.seed,
            salt: seg.salt,
        };
        let hinted = hint::Hint::read(&paths.hint(id), describes)
            .filter(|hint| hint.matches(seg.log(seg.end), self.seed));
        Ok(Some((seg, hinted)))
    }

    /// Indexes the sealed segment `seg`, after every segment already
    /// indexed, from `hinted` or by a scan.
    fn index_sealed(&mut self, paths: &Paths, seg: Segment, hinted: Option<hint::Hint>) {
        if let Some(hint) = hinted {
            let slot = self.add_hinted(seg);
            self.load_run(vec![(slot, hint)]);
            return;
        }
        self.counters.scanned.fetch_add(1, Ordering::Relaxed);
        let end = seg.end;
        let slot = self.add_slot(seg);
        self.index_records(slot, HEADER_SIZE, end);
        self.write_hint_later(paths, slot);
        self.sealed.push(slot);
        self.sealed_bytes += end - HEADER_SIZE;
    }

    /// Maps the sealed segment `seg`, after every segment already indexed,
    /// for its records to be loaded from its hint ([`load_run`]).
    fn add_hinted(&mut self, seg: Segment) -> usize {
        self.counters.hinted.fetch_add(1, Ordering::Relaxed);
        let end = seg.end;
        let slot = self.add_slot(seg);
        self.sealed.push(slot);
        self.sealed_bytes += end - HEADER_SIZE;
        slot
    }

    /// Indexes the records of a run of sealed segments, in order, from
    /// their hints.
    fn load_run(&mut self, run: Vec<(usize, hint::Hint)>) {
        let count = run.iter().map(|(_, hint)| hint.len()).sum();
        self.index.load(count, || {
            run.iter()
                .flat_map(|(slot, hint)| hint.entries_inside().map(|e| hinted_record(*slot, e)))
        });
    }

    /// Writes the hint of the sealed segment in `slot` on a background
    /// thread (it reads the whole segment); a failure leaves no hint, and
    /// the next open scans the segment.
    fn write_hint_later(&self, paths: &Paths, slot: usize) {
        let filled = self.slot(slot);
        let seg = &filled.seg;
        let map = seg.map.clone();
        let describes = hint::Describes {
            id: seg.id,
            end: filled.seg.end,
            seed: self.seed,
            salt: seg.salt,
        };
        let path = paths.hint(seg.id);
        let segment = paths.segment(seg.id);
        let file = seg.file.clone();
        self.background.spawn("layercache-hint", move || {
            let log = Log::of(&map, describes.end, describes.salt);
            if let Ok(like) = file.metadata()
                && let Some(entries) = hint::entries_of(log, describes.seed)
                && hint::write(&path, describes, &entries, &like).is_ok()
                && !segment.exists()
            {
                // Dropped while the hint was written.
                let _ = std::fs::remove_file(&path);
            }
        });
    }

    fn add_slot(&mut self, seg: Segment) -> usize {
        let slot = Slot {
            seg,
            dropped: false,
        };
        match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                self.slots[free] = Some(slot);
                free
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        }
    }

    #[inline]
    fn slot(&self, slot: usize) -> &Slot {
        self.slots[slot]
            .as_ref()
            .expect("a state's slots in use are filled")
    }

    #[inline]
    fn slot_mut(&mut self, slot: usize) -> &mut Slot {
        self.slots[slot]
            .as_mut()
            .expect("a state's slots in use are filled")
    }

    /// The active segment.
    #[inline]
    pub(super) fn active(&self) -> &Segment {
        &self.slot(self.active).seg
    }

    /// The active segment's slot, to remap it.
    pub(super) fn active_slot_mut(&mut self) -> &mut Slot {
        let active = self.active;
        self.slot_mut(active)
    }

    /// The sealed segments, oldest first.
    pub(super) fn sealed(&self) -> impl Iterator<Item = &Segment> {
        self.sealed.iter().map(|&slot| &self.slot(slot).seg)
    }

    /// Every mapped segment of the cache, oldest first, with the offset up
    /// to which it is indexed.
    pub(super) fn segments(&self) -> impl Iterator<Item = (&Segment, u64)> {
        self.sealed
            .iter()
            .chain(std::iter::once(&self.active))
            .map(|&slot| {
                let slot = self.slot(slot);
                (&slot.seg, slot.seg.end)
            })
    }

    /// The indexed records, for the index's lookups.
    #[inline]
    pub(super) fn logs(&self) -> Slots<'_> {
        Slots(&self.slots)
    }

    /// The active segment's committed length.
    #[inline]
    pub(super) fn committed(&self) -> u64 {
        self.active().committed()
    }

    /// Records of the active segment below this offset are in the index.
    #[inline]
    pub(super) fn indexed(&self) -> u64 {
        self.slot(self.active).seg.end
    }

    #[inline]
    pub(super) fn superseded(&self) -> bool {
        self.active().superseded()
    }

    /// The oldest sealed segment: its slot, the segment and its length.
    pub(super) fn oldest(&self) -> Option<(usize, &Segment, u64)> {
        let &slot = self.sealed.first()?;
        let filled = self.slot(slot);
        Some((slot, &filled.seg, filled.seg.end))
    }

    /// Where records of `len` bytes go: the active segment's committed end,
    /// after sealing it if they would take it past the segment size (a
    /// segment holding no record takes them whatever their size). The
    /// error of a seal that failed is returned beside the place: the
    /// records then go to the segment that is there, and seals pause as
    /// cleaning does after a failure. Under the lock.
    pub(super) fn place(
        &mut self,
        paths: &Paths,
        settings: &Settings,
        lock: &mut Exclusive<'_>,
        len: u64,
    ) -> (format::Place, Option<Error>) {
        let at = self.committed();
        let max = self.active().max_bytes().load(Ordering::Acquire);
        let size = if max > 0 {
            // Small enough that the budget drops an eighth at a time.
            settings.segment_bytes.min(max / 8).max(2 * HEADER_SIZE)
        } else {
            settings.segment_bytes
        };
        let failed = if at > HEADER_SIZE && at.saturating_add(len) > size && !lock.paused() {
            let failed = self.seal(paths, settings, lock).err();
            lock.after_upkeep(failed.is_none());
            failed
        } else {
            None
        };
        let place = format::Place {
            salt: self.active().salt,
            at: self.committed(),
        };
        (place, failed)
    }

    /// Bytes of records in every segment, live or not.
    pub(super) fn record_bytes(&self) -> u64 {
        self.sealed_bytes + self.indexed() - HEADER_SIZE
    }

    /// Bytes of indexed records that no live entry points at.
    pub(super) fn garbage(&self) -> u64 {
        // Entries of dropped segments not yet forgotten count as live
        // bytes that are no longer records: hence saturating.
        self.record_bytes().saturating_sub(self.index.live_bytes())
    }

    /// Bytes the cache's segment files take: records and headers.
    pub(super) fn file_bytes(&self) -> u64 {
        self.record_bytes() + HEADER_SIZE * (self.sealed.len() as u64 + 1)
    }

    /// Indexes the records of the active segment in `indexed()..to`, and
    /// says whether `to` fell inside a record.
    pub(super) fn scan(&mut self, to: u64) -> ScanEnd {
        let from = self.indexed();
        if to <= from {
            return ScanEnd::Clean;
        }
        self.index_records(self.active, from, to)
    }

    /// Indexes the records of the segment in `slot` in `from..to`, which
    /// follow every record indexed so far in log order, and marks them
    /// indexed.
    fn index_records(&mut self, slot: usize, from: u64, to: u64) -> ScanEnd {
        self.slot_mut(slot).seg.end = to;
        let Self { slots, index, .. } = self;
        let logs = Slots(slots);
        let log = logs.log(slot).expect("the slot was just filled");
        let mut end = ScanEnd::Clean;
        walk(log, from, |at, record| {
            let here = index::pos(slot, at);
            match record {
                Walked::Record(header, key) => match header.kind {
                    Kind::Put => {
                        let loc = Loc {
                            pos: here,
                            hash: 0, // set by the index
                            key_len: header.key_len,
                            value_len: header.value_len,
                            key_crc: header.key_crc,
                            value_crc: header.value_crc,
                        };
                        index.insert(&logs, key, loc);
                    }
                    Kind::Tombstone => {
                        index.remove(&logs, key);
                    }
                },
                Walked::DamagedKey { key_crc } => {
                    // A record for an unknown key whose checksum is
                    // `key_crc`: an older value of that key must not be
                    // served in its place, so forget every such key (every
                    // indexed record is older than this one).
                    index.retain(|loc| loc.key_crc != key_crc);
                }
                Walked::Damaged(Damaged::Header) => {
                    // A record we cannot read at all may have overwritten or
                    // removed any key. Its key bytes most likely survive
                    // where a key starts: forget every older key found
                    // there, so that an older value is never served in place
                    // of the lost one (a key that merely shares a prefix is
                    // forgotten too: it reads as missing, which is safe).
                    let would_be_key = log.from(at + RECORD_HEADER_SIZE as u64);
                    index.retain(|loc| {
                        !loc.key(&logs)
                            .is_some_and(|key| would_be_key.starts_with(key))
                    });
                }
                Walked::Damaged(Damaged::PastEnd) => end = ScanEnd::InsideRecord,
            }
        });
        end
    }

    /// Forgets the index, and indexes every committed record again.
    pub(super) fn reindex(&mut self) {
        self.index = Index::new(self.seed);
        for slot in std::mem::take(&mut self.dropping) {
            self.slots[slot] = None;
        }
        for slot in self.sealed.clone() {
            let end = self.slot(slot).seg.end;
            self.index_records(slot, HEADER_SIZE, end);
        }
        self.slot_mut(self.active).seg.end = HEADER_SIZE;
    }

    /// Whether another process has put a new data file at the path, sealed
    /// the active segment or dropped one since this state last matched the
    /// files (one atomic load; see `lock.rs`).
    #[inline]
    pub(super) fn epoch_moved(&self) -> bool {
        self.lock_page.epoch() != self.epoch
    }

    /// Brings the state in line with the files, under the lock: follows
    /// seals made by other processes (their new segments are indexed, and
    /// nothing already indexed is read again), dropped segments (their
    /// entries are forgotten and their maps released), and otherwise a
    /// file replaced at the path (loaded afresh).
    pub(super) fn refresh(
        &mut self,
        paths: &Paths,
        settings: &Settings,
        lock: &Exclusive<'_>,
    ) -> Result<()> {
        let current =
            std::fs::metadata(&paths.data).is_ok_and(|m| ident(&m) == self.active().ident);
        if current && !self.superseded() {
            // Segments dropped meanwhile are dropped from this view once
            // the active segment is caught up (`drop_dropped`), so the
            // copies cleaning made are indexed first.
        } else if !(self.follow_seals(paths, settings)?) {
            *self = State::load(paths, settings, lock)?;
            return Ok(());
        }
        self.epoch = lock.epoch();
        self.lock_page = lock.page();
        Ok(())
    }

    /// Follows the seals of other processes: the active segment this state
    /// has is sealed now, and the file at the path is a later segment of
    /// the same cache. Says `false` when that is not so (a compaction, or a
    /// file replaced from outside), for the caller to load afresh.
    fn follow_seals(&mut self, paths: &Paths, settings: &Settings) -> Result<bool> {
        let io = |e| Error::io(&paths.given, e);
        let old = self.active();
        let sealed_name = paths.segment(old.id);
        if !std::fs::symlink_metadata(&sealed_name).is_ok_and(|m| ident(&m) == old.ident) {
            return Ok(false);
        }
        let file = match identity::open_existing(&paths.data) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            // No descriptor left, say: nothing is changed, and the call
            // that needed the state fails.
            Err(e) => return Err(io(e)),
        };
        let meta = file.metadata().map_err(io)?;
        let mut header = vec![0u8; HEADER_SIZE as usize];
        file.read_exact_at(&mut header, 0).map_err(io)?;
        let Ok(info) = format::check_header(&header) else {
            return Ok(false);
        };
        if info.version != format::VERSION
            || info.seed != self.seed
            || info.generation != self.generation
            || info.id <= old.id
        {
            return Ok(false);
        }
        let end = self.committed();
        if end < self.indexed() {
            return Ok(false);
        }
        // Everything that can fail is done before the state changes: the
        // segments sealed since (a hole among them: load afresh, by its
        // rules; one that cannot be opened now: an error, and nothing
        // changed), and the new active segment's map.
        let mut between = Vec::new();
        for id in old.id + 1..info.id {
            match self.open_sealed_hinted(paths, id)? {
                Some(opened) => between.push(opened),
                None => return Ok(false),
            }
        }
        let len = meta.len();
        let map = map_file(&file, len, settings.growth).map_err(io)?;
        // The old active segment is sealed: index it to its final length.
        self.scan(end);
        let old = self.active;
        self.sealed.push(old);
        self.sealed_bytes += end - HEADER_SIZE;
        for (seg, hinted) in between {
            self.index_sealed(paths, seg, hinted);
        }
        self.active = self.add_slot(Segment::new(file, map, &meta, info.id, info.salt));
        let committed = self.committed();
        if committed < HEADER_SIZE || committed > len || self.scan(committed) != ScanEnd::Clean {
            // Damaged: every process follows the path's file by loading it.
            return Ok(false);
        }
        Ok(true)
    }

    /// Drops from this view the sealed segments another process dropped
    /// (below the active segment's base). Call it once caught up.
    pub(super) fn drop_dropped(&mut self) {
        let base = self.active().base().load(Ordering::Acquire);
        self.drop_below(base);
    }

    /// Drops the sealed segments whose id is below `base` from this view:
    /// reads no longer see them at once, and their maps are released once
    /// the index has forgotten their entries (at once when none points
    /// there, as after cleaning copied them; otherwise over the next
    /// [`sweep`](Self::sweep)s).
    pub(super) fn drop_below(&mut self, base: u64) {
        while let Some(&slot) = self.sealed.first()
            && self.slot(slot).seg.id < base
        {
            self.sealed.remove(0);
            let filled = self.slot_mut(slot);
            filled.dropped = true;
            let end = filled.seg.end;
            self.sealed_bytes -= end - HEADER_SIZE;
            self.dropping.push(slot);
        }
        self.release_dropped();
    }

    /// Unmaps the dropped segments no index entry points into.
    fn release_dropped(&mut self) {
        let Self {
            dropping,
            slots,
            index,
            background,
            ..
        } = self;
        dropping.retain(|&slot| {
            let in_use = index.in_slot(slot) > 0;
            if !in_use && let Some(gone) = slots[slot].take() {
                in_background(background, Vec::new(), Some(gone.seg));
            }
            in_use
        });
    }

    /// One bounded step of forgetting the entries of dropped segments: one
    /// shard of the index (1/64 of it). Costs nothing when none is left.
    pub(super) fn sweep(&mut self) {
        if self.dropping.is_empty() {
            return;
        }
        let shard = self.sweep_next;
        self.sweep_next = (shard + 1) % Index::SHARDS;
        let dropping = &self.dropping;
        self.index
            .retain_shard(shard, |loc| !dropping.contains(&index::slot_of(loc.pos)));
        self.release_dropped();
    }

    /// Whether dropped segments are still mapped, waiting for
    /// [`sweep`](Self::sweep).
    #[inline]
    pub(super) fn sweeping(&self) -> bool {
        !self.dropping.is_empty()
    }

    /// Entries in the cache: the index's, less those of dropped segments
    /// it has not forgotten yet.
    pub(super) fn len(&self) -> usize {
        self.index.len()
            - self
                .dropping
                .iter()
                .map(|&slot| self.index.in_slot(slot))
                .sum::<usize>()
    }

    /// Seals the active segment and puts a new, empty one at the path.
    /// Under the lock, with the state caught up. Other processes follow on
    /// their next call (the superseded flag and the epoch).
    pub(super) fn seal(
        &mut self,
        paths: &Paths,
        settings: &Settings,
        lock: &Exclusive<'_>,
    ) -> Result<()> {
        let io = |e| Error::io(&paths.given, e);
        let old = self.active();
        let id = old.id + 1;
        let salt = format::new_salt();
        let next = identity::create_replacing(&paths.next).map_err(io)?;
        let made = (|| {
            identity::inherit(&next, &old.file.metadata()?)?;
            let header = format::new_header(NewHeader {
                generation: self.generation,
                salt,
                id,
                seed: self.seed,
                base: old.base().load(Ordering::Acquire),
                max_bytes: old.max_bytes().load(Ordering::Acquire),
                cursor: old.cursor().load(Ordering::Acquire),
            });
            next.write_all_at(&header, 0)?;
            if settings.durable {
                next.sync_all()?;
                old.file.sync_data()?;
            }
            crash::point("seal:next-written");
            // The old active segment takes its sealed name first: at every
            // moment the path names a whole segment, and every record is in
            // a segment the next load finds.
            let sealed_name = paths.segment(old.id);
            let _ = std::fs::remove_file(&sealed_name);
            std::fs::hard_link(&paths.data, &sealed_name)?;
            crash::point("seal:linked");
            old.superseded_flag().store(1, Ordering::Release);
            crash::point("seal:flagged");
            if let Err(e) = std::fs::rename(&paths.next, &paths.data) {
                old.superseded_flag().store(0, Ordering::Release);
                let _ = std::fs::remove_file(&sealed_name);
                return Err(e);
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_file(&paths.next);
            return Err(io(e));
        }
        crash::point("seal:renamed");
        lock.bump_epoch();
        settings.counters.seals.fetch_add(1, Ordering::Relaxed);
        if settings.durable {
            identity::sync_parent(&paths.data);
        }
        let meta = next.metadata().map_err(io)?;
        let map = map_file(&next, HEADER_SIZE, settings.growth).map_err(io)?;
        let end = self.indexed();
        let old = self.active;
        self.sealed.push(old);
        self.sealed_bytes += end - HEADER_SIZE;
        self.write_hint_later(paths, old);
        self.active = self.add_slot(Segment::new(next, map, &meta, id, salt));
        self.epoch = lock.epoch();
        Ok(())
    }

    /// Drops the oldest sealed segment from the cache: the base moves past
    /// it, other processes are told, and its file is unlinked (processes
    /// still mapping it keep reading valid pages until they follow).
    pub(super) fn drop_oldest(&mut self, paths: &Paths, settings: &Settings, lock: &Exclusive<'_>) {
        let Some(&slot) = self.sealed.first() else {
            return;
        };
        let id = self.slot(slot).seg.id;
        let counters = &settings.counters;
        counters.drops.fetch_add(1, Ordering::Relaxed);
        let evicted = self.index.in_slot(slot) as u64;
        counters.evictions.fetch_add(evicted, Ordering::Relaxed);
        let active = self.active();
        // The cursor first: it names the segment it is in, and a process
        // that dies between the two stores leaves one that applies to no
        // other segment either way.
        active.cursor().store(0, Ordering::Release);
        active.base().store(id + 1, Ordering::Release);
        crash::point("drop:based");
        lock.bump_epoch();
        self.epoch = lock.epoch();
        // The segment is no longer part of the cache (a load would remove
        // it, being below the base): its unlink, like the unmap, is left to
        // the background.
        // The segment first, then its hint: a hint thread that is still
        // writing it removes its hint if it finds the segment gone, so one of
        // the two always removes it (see `write_hint_later`).
        let files = vec![paths.segment(id), paths.hint(id)];
        self.drop_below(id + 1);
        match self.dropping.iter().position(|&s| s == slot) {
            // Still mapped here: unlinked now, unmapped once swept.
            Some(_) => {
                for file in files {
                    let _ = std::fs::remove_file(file);
                }
            }
            None => in_background(&self.background, files, None),
        }
    }
}

/// Moves the base of `active` past segment `id`, and tells every process
/// (the epoch). Under the lock.
fn state_base_past(active: &Segment, id: u64, lock: &Exclusive<'_>) {
    active.cursor().store(0, Ordering::Release);
    active.base().store(id + 1, Ordering::Release);
    lock.bump_epoch();
}

/// Unlinks `files`, in order, and unmaps `segment` on a thread of
/// `background`. Both
/// can take milliseconds when they free a large segment's pages and blocks
/// (the last unmap of an unlinked file frees them), and the caller holds
/// locks that writers in every process, or this process's readers, wait
/// on. When no thread can be started, they are done here.
fn in_background(
    background: &Background,
    files: Vec<std::path::PathBuf>,
    segment: Option<Segment>,
) {
    let unlink_here = files.clone();
    let started = background.spawn("layercache-release", move || {
        for file in &files {
            let _ = std::fs::remove_file(file);
        }
        if let Some(segment) = segment {
            release_gradually(segment);
        }
    });
    // When no thread can be started, the closure, and the segment with it,
    // is dropped (unmapped) here; the unlinks are done here too.
    if !started {
        for file in unlink_here {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Gives the calling thread the lowest scheduling priority (nice 19; on
/// Linux, `setpriority` with `PRIO_PROCESS` and 0 applies to the calling
/// thread alone), so that releasing a segment takes no CPU time from the
/// threads that serve requests when the cores are busy.
fn lowest_priority() {
    // SAFETY: setpriority takes three integers and touches no memory of
    // ours; its failure (not permitted, say) is harmless and ignored.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// Unmaps `segment` a megabyte at a time. One `munmap` of a large,
/// populated mapping holds the process's memory map lock for writing while
/// it tears the page tables down (milliseconds for 64 MiB), and every page
/// fault of every thread waits on it; dropping the pages a megabyte at a
/// time (`MADV_DONTNEED` takes the lock for reading) leaves the final
/// `munmap` nothing to tear down.
fn release_gradually(segment: Segment) {
    const STEP: usize = 1 << 20;
    if let Ok(map) = Arc::try_unwrap(segment.map) {
        let mut at = 0;
        while at < map.len() {
            let len = STEP.min(map.len() - at);
            // SAFETY: `map` is the last handle on this mapping (`try_unwrap`
            // succeeded, and no slice or reference into it outlives the
            // state's locks, which the caller released the segment from), so
            // nothing reads through it again: dropping its pages cannot
            // change bytes anyone still reads. It is a shared file mapping,
            // so a page dropped here would read again from the file, never
            // as zeros; it is unmapped just after. The range lies within the
            // mapping.
            let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, at, len) };
            at += len;
            std::thread::yield_now();
        }
    }
}

/// A hint's entry for a record of the segment in `slot`, for the index.
fn hinted_record(slot: usize, entry: hint::Entry) -> index::Hinted {
    match entry.kind {
        Kind::Put => index::Hinted::Put(Loc {
            pos: index::pos(slot, entry.offset),
            hash: entry.hash,
            key_len: entry.key_len,
            value_len: entry.value_len,
            key_crc: entry.key_crc,
            value_crc: entry.value_crc,
        }),
        Kind::Tombstone => index::Hinted::Remove(entry.hash),
    }
}

impl Segment {
    /// The end of the last whole, valid record at or below `limit`.
    pub(super) fn valid_end(&self, limit: u64) -> u64 {
        let mut end = HEADER_SIZE;
        walk(self.log(limit), HEADER_SIZE, |at, record| {
            if let Walked::Record(header, _) = record {
                end = at + header.total_len();
            }
        });
        end
    }
}

/// Opens and maps the sealed segment `id` of the cache whose hash seed is
/// `seed`. `Ok(None)` when there is no such segment there: the file is
/// missing, too short, or its header is damaged or another cache's; an
/// error when it is there but cannot be opened or mapped now (no file
/// descriptor left, no permission, an I/O error), so that the caller
/// neither skips it nor reads older records in its place.
fn open_sealed(paths: &Paths, id: u64, seed: u64) -> Result<Option<Segment>> {
    let name = paths.segment(id);
    let io = |e| Error::io(&name, e);
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&name)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    let len = meta.len();
    if len < HEADER_SIZE {
        return Ok(None);
    }
    let mut header = vec![0u8; HEADER_SIZE as usize];
    file.read_exact_at(&mut header, 0).map_err(io)?;
    let Ok(info) = format::check_header(&header) else {
        return Ok(None);
    };
    if info.version != format::VERSION || info.id != id || info.seed != seed {
        return Ok(None);
    }
    let len_usize =
        usize::try_from(len).map_err(|_| io(std::io::Error::other("too large to map")))?;
    let map = memmap2::MmapOptions::new()
        .len(len_usize)
        .map_raw_read_only(&file)
        .map_err(io)?;
    let mut seg = Segment::new(file, map, &meta, id, info.salt);
    let committed = seg.committed();
    seg.end =
        if committed < HEADER_SIZE || committed > len || !committed.is_multiple_of(format::ALIGN) {
            seg.valid_end(len)
        } else {
            committed
        };
    Ok(Some(seg))
}
