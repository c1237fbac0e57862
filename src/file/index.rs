//! A process's index of a cache file: key → position of its newest put.
//!
//! The index holds no copy of the keys: an entry is the record's position,
//! and equality is checked against the key bytes in the mapped file, which
//! never change below the committed length. That saves an allocation per
//! key, and a lookup touches the record's cache lines (key, then value)
//! instead of a separate heap copy of the key.
//!
//! Each entry keeps its key's hash, so that growing the table rehashes
//! from memory instead of reading every key back from random places in
//! the file (a resize of a million entries did that inside a write, under
//! the lock every process waits on), and so that a lookup compares the
//! full hash before it touches the file. The table is split into 64
//! shards by hash, and a full shard is not resized in place: a table twice
//! its size takes its place and the old entries move across a few at each
//! insert (see `Shard`), so no write waits for the index to grow, whatever
//! its size (a resize of a 1M-entry table stalled one set for about 40 ms).
//!
//! Invariants kept here: every `Loc` points at a whole put record below the
//! indexed length of a segment this process maps (a segment that was
//! dropped keeps its slot, and stays mapped, until no `Loc` points into
//! it), so its key and value lie inside that segment's [`Log`]; its `hash`
//! is the index's hash of that key; it is in exactly one table of one
//! shard; `len` counts them and `live_bytes` is the sum of their records'
//! lengths.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;

use super::format::{self, RECORD_HEADER_SIZE};
use super::log::Log;

/// Bits of a position that hold the file offset; the bits above hold the
/// segment's slot.
const OFFSET_BITS: u32 = 48;

/// A position in the log: the slot of the segment (in this process's table
/// of mapped segments) and the record's file offset in it.
#[inline]
pub fn pos(slot: usize, offset: u64) -> u64 {
    debug_assert!(slot < 1 << (64 - OFFSET_BITS) && offset < 1 << OFFSET_BITS);
    ((slot as u64) << OFFSET_BITS) | offset
}

/// The slot of a position.
#[inline]
pub fn slot_of(pos: u64) -> usize {
    (pos >> OFFSET_BITS) as usize
}

/// The file offset of a position.
#[inline]
pub fn offset_of(pos: u64) -> u64 {
    pos & ((1 << OFFSET_BITS) - 1)
}

/// The indexed records of every mapped segment, by slot.
pub trait Logs<'a> {
    /// The indexed records of the segment in `slot`, if it is mapped and
    /// still part of the cache: what reads see.
    fn log(&self, slot: usize) -> Option<Log<'a>>;
    /// The indexed records of the segment in `slot`, if it is mapped, even
    /// if it was dropped from the cache: what the index matches keys
    /// against while it forgets the segment's entries.
    fn mapped(&self, slot: usize) -> Option<Log<'a>>;
}

/// Where a live value is. 32 bytes, aligned so that two fill a cache line
/// and none straddles two (see [`Table`]).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct Loc {
    /// The record's position: segment slot and file offset.
    pub pos: u64,
    /// The index's hash of the key (set by [`Index::insert`]).
    pub hash: u64,
    pub key_len: u32,
    pub value_len: u32,
    pub key_crc: u32,
    pub value_crc: u32,
}

impl Loc {
    /// A table slot with no entry.
    const EMPTY: Loc = Loc {
        pos: EMPTY,
        hash: 0,
        key_len: 0,
        value_len: 0,
        key_crc: 0,
        value_crc: 0,
    };

    #[inline]
    fn record<'a>(&self, logs: &impl Logs<'a>) -> Option<(Log<'a>, u64)> {
        Some((logs.log(slot_of(self.pos))?, offset_of(self.pos)))
    }

    /// The key's bytes, if the segment is still part of the cache.
    #[inline]
    pub fn key<'a>(&self, logs: &impl Logs<'a>) -> Option<&'a [u8]> {
        let (log, at) = self.record(logs)?;
        log.get(at + RECORD_HEADER_SIZE as u64, self.key_len as usize)
    }

    /// The key's bytes, if the segment is mapped (dropped or not).
    #[inline]
    fn mapped_key<'a>(&self, logs: &impl Logs<'a>) -> Option<&'a [u8]> {
        let log = logs.mapped(slot_of(self.pos))?;
        let at = offset_of(self.pos) + RECORD_HEADER_SIZE as u64;
        log.get(at, self.key_len as usize)
    }

    /// The key's bytes if they still match their checksum: damage after
    /// indexing must not let a record answer for another key.
    #[inline]
    pub fn checked_key<'a>(&self, logs: &impl Logs<'a>) -> Option<&'a [u8]> {
        let key = self.key(logs)?;
        (format::crc(key) == self.key_crc).then_some(key)
    }

    /// The record's header, if it still passes its checksum (it holds the
    /// deadlines, which the index does not keep).
    #[inline]
    pub fn checked_header<'a>(&self, logs: &impl Logs<'a>) -> Option<format::RecordHeader> {
        let (log, at) = self.record(logs)?;
        log.header(at)
    }

    /// The value's bytes, if the segment is still mapped.
    #[inline]
    pub fn value<'a>(&self, logs: &impl Logs<'a>) -> Option<&'a [u8]> {
        let (log, at) = self.record(logs)?;
        let at = at + RECORD_HEADER_SIZE as u64 + u64::from(self.key_len);
        log.get(at, self.value_len as usize)
    }

    /// The record's length, padding included.
    pub fn record_len(&self) -> u64 {
        format::record_len(self.key_len as usize, self.value_len as usize)
    }
}

/// Shards of the index: a shard grows on its own.
const SHARDS: usize = 64;

/// The shard for `hash`: bits 48..56, clear of the bits a table uses for
/// its buckets (the lowest) and for its control bytes (the top 7).
#[inline]
fn shard_of(hash: u64) -> usize {
    (hash >> 48) as usize % SHARDS
}

/// A record read from a hint file, for [`Index::load`].
#[derive(Debug, Clone, Copy)]
pub enum Hinted {
    /// A put, its `hash` set.
    Put(Loc),
    /// A tombstone: the key's hash.
    Remove(u64),
}

/// Entries moved from a shard's old table to its new one at each insert
/// of a new key while the shard grows.
const MOVE_PER_INSERT: usize = 16;

/// `Loc::pos` of a slot that holds no entry and never held one since the
/// table was made (a probe stops there). No record is at position 0 (the
/// header is), and a table of zeros is one the allocator can give without
/// writing it.
const EMPTY: u64 = 0;
/// `Loc::pos` of a slot of a shard's old table whose entry was removed
/// while the table was being moved (a probe goes on past it).
const GONE: u64 = u64::MAX - 1;

/// An open-addressing table of [`Loc`]s with linear probing, at most 3/4
/// full.
///
/// Each slot holds the whole entry, its hash included, and two slots fill
/// a cache line (`Loc` is 32-byte aligned): a lookup reads the line of the
/// key's home slot and, rarely, the next, where a table with a separate
/// array of control bytes (hashbrown's) reads one line of each, so one
/// cache miss instead of two at a million entries. Removal shifts the
/// entries that follow back (no tombstones), except in a table being moved
/// (see [`Shard`]).
struct Table {
    slots: Box<[Loc]>,
    len: usize,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            slots: Box::new([]),
            len: 0,
        }
    }
}

impl Table {
    fn with_slots(slots: usize) -> Table {
        if slots == 0 {
            return Table::default();
        }
        let layout = std::alloc::Layout::array::<Loc>(slots).expect("a table that fits in memory");
        // SAFETY: the layout has a nonzero size (slots > 0, and a Loc is 32
        // bytes). Zeroed memory is a valid `[Loc]`: every field of `Loc` is
        // an integer, for which zero is a valid value (an all-zero `Loc` is
        // `Loc::EMPTY`). The pointer comes from the global allocator with
        // the layout of a `[Loc]` of `slots` elements, which is what a
        // `Box<[Loc]>` of that length frees it with. Zeroed memory comes
        // from the allocator's zeroed pages where it can, so a large table
        // costs no writes until it is filled.
        let slots = unsafe {
            let ptr = std::alloc::alloc_zeroed(layout).cast::<Loc>();
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, slots))
        };
        Table { slots, len: 0 }
    }

    /// Entries the table takes before it is full: three quarters of its
    /// slots (linear probing slows fast past that).
    #[inline]
    fn capacity(&self) -> usize {
        self.slots.len() / 4 * 3
    }

    /// The slot after `at`, wrapping at the end.
    #[inline]
    fn next(&self, at: usize) -> usize {
        if at + 1 == self.slots.len() {
            0
        } else {
            at + 1
        }
    }

    /// The key's home slot: the hash scaled to the table's size (any size,
    /// so a table is sized to its entries rather than to a power of two).
    #[inline]
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    /// The slot of the entry `eq` picks among those with `hash`, probing
    /// from its home slot to the first empty one, and skipping slots below
    /// `from` (those a move took already).
    #[inline]
    fn find_index(&self, hash: u64, from: usize, eq: impl Fn(&Loc) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut at = self.home(hash);
        loop {
            let slot = &self.slots[at];
            if slot.pos == EMPTY {
                return None;
            }
            if slot.hash == hash && slot.pos != GONE && at >= from && eq(slot) {
                return Some(at);
            }
            at = self.next(at);
        }
    }

    /// Puts `loc` in the first free slot from its home. The table has room.
    fn insert_unique(&mut self, loc: Loc) {
        debug_assert!(self.len < self.capacity());
        let mut at = self.home(loc.hash);
        while self.slots[at].pos != EMPTY {
            at = self.next(at);
        }
        self.slots[at] = loc;
        self.len += 1;
    }

    /// Removes the entry in slot `at`, shifting back the entries after it
    /// that may move closer to their home (so no probe ever has to step
    /// over a hole).
    fn remove_at(&mut self, mut at: usize) -> Loc {
        let removed = self.slots[at];
        let mut next = at;
        loop {
            next = self.next(next);
            if self.slots[next].pos == EMPTY {
                break;
            }
            let home = self.home(self.slots[next].hash);
            // The entry at `next` stays if its home lies cyclically in
            // (at, next]: moving it to `at` would put it before its home.
            let stays = if at <= next {
                at < home && home <= next
            } else {
                at < home || home <= next
            };
            if !stays {
                self.slots[at] = self.slots[next];
                at = next;
            }
        }
        self.slots[at] = Loc::EMPTY;
        self.len -= 1;
        removed
    }

    fn iter(&self, from: usize) -> impl Iterator<Item = &Loc> {
        self.slots
            .get(from..)
            .unwrap_or_default()
            .iter()
            .filter(|loc| loc.pos != EMPTY && loc.pos != GONE)
    }
}

/// One shard: its table and, while it grows, the table it replaces.
///
/// A full table is not resized in place (that moves every entry, inside
/// the write that found it full). It becomes `moving`, a table of twice
/// its size takes its place, and each insert of a new key copies
/// [`MOVE_PER_INSERT`] of the old table's entries across, slot by slot from
/// `cursor`; the new table has room for the old entries and every insert
/// made until they have all moved, so it never resizes in place either.
///
/// The old table is frozen meanwhile: nothing is inserted into it, and an
/// entry removed from it becomes [`GONE`] rather than shifting others back,
/// so every slot below `cursor` has been copied and every entry at or above
/// it has not. A lookup tries the new table, then the old one from the
/// key's home slot, skipping slots below `cursor`. An entry is live in
/// exactly one of the two tables.
#[derive(Default)]
struct Shard {
    table: Table,
    moving: Table,
    cursor: usize,
}

impl Shard {
    #[inline]
    fn moving(&self) -> bool {
        self.moving.len > 0
    }

    #[inline]
    fn find(&self, hash: u64, eq: impl Fn(&Loc) -> bool) -> Option<&Loc> {
        if let Some(at) = self.table.find_index(hash, 0, &eq) {
            return Some(&self.table.slots[at]);
        }
        if !self.moving() {
            return None;
        }
        let at = self.moving.find_index(hash, self.cursor, eq)?;
        Some(&self.moving.slots[at])
    }

    fn find_mut(&mut self, hash: u64, eq: impl Fn(&Loc) -> bool) -> Option<&mut Loc> {
        if let Some(at) = self.table.find_index(hash, 0, &eq) {
            return Some(&mut self.table.slots[at]);
        }
        if !self.moving() {
            return None;
        }
        let at = self.moving.find_index(hash, self.cursor, eq)?;
        Some(&mut self.moving.slots[at])
    }

    fn remove(&mut self, hash: u64, eq: impl Fn(&Loc) -> bool) -> Option<Loc> {
        if let Some(at) = self.table.find_index(hash, 0, &eq) {
            return Some(self.table.remove_at(at));
        }
        if !self.moving() {
            return None;
        }
        let at = self.moving.find_index(hash, self.cursor, eq)?;
        Some(self.take_moving(at))
    }

    /// Removes the old table's entry in slot `at` (at or above `cursor`).
    fn take_moving(&mut self, at: usize) -> Loc {
        let removed = self.moving.slots[at];
        self.moving.slots[at].pos = GONE;
        self.moving.len -= 1;
        self.release_moving();
        removed
    }

    /// Frees the old table once nothing is left in it.
    fn release_moving(&mut self) {
        if self.moving.len == 0 && !self.moving.slots.is_empty() {
            self.moving = Table::default();
            self.cursor = 0;
        }
    }

    /// Asks the CPU to start fetching the cache line of the home slot of
    /// `hash` in the current table (a hint: it reads nothing and cannot
    /// fault).
    #[inline]
    fn prefetch(&self, hash: u64) {
        #[cfg(target_arch = "x86_64")]
        if !self.table.slots.is_empty() {
            let slot: *const Loc = &self.table.slots[self.table.home(hash)];
            // SAFETY: a prefetch reads no memory and cannot fault, whatever
            // the address; this one is inside the table anyway.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(slot.cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    /// Makes room for `additional` more entries now, if nothing is moving
    /// (for loading, before any lookup depends on the layout).
    fn reserve(&mut self, additional: usize) {
        let wanted = self.table.len + additional;
        if self.moving() || wanted <= self.table.capacity() {
            return;
        }
        // 70% full once loaded.
        let slots = (wanted * 10 / 7 + 1).max(16);
        let old = std::mem::replace(&mut self.table, Table::with_slots(slots));
        for loc in old.iter(0) {
            self.table.insert_unique(*loc);
        }
    }

    /// Inserts `loc`, whose key is in neither table.
    fn insert_new(&mut self, loc: Loc) {
        if self.table.len >= self.table.capacity() && !self.moving() {
            let slots = (self.table.slots.len() * 2).max(16);
            self.moving = std::mem::replace(&mut self.table, Table::with_slots(slots));
            self.cursor = 0;
            if self.moving.len == 0 {
                self.moving = Table::default();
            }
        }
        self.table.insert_unique(loc);
        if self.moving() {
            let mut moved = 0;
            while moved < MOVE_PER_INSERT && self.cursor < self.moving.slots.len() {
                let loc = self.moving.slots[self.cursor];
                self.cursor += 1;
                if loc.pos != EMPTY && loc.pos != GONE {
                    self.table.insert_unique(loc);
                    self.moving.len -= 1;
                    moved += 1;
                }
            }
            self.release_moving();
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Loc> {
        let from = if self.moving() { self.cursor } else { 0 };
        self.table.iter(0).chain(self.moving.iter(from))
    }

    fn retain(&mut self, mut keep: impl FnMut(&Loc) -> bool) {
        let mut at = 0;
        while at < self.table.slots.len() {
            let loc = self.table.slots[at];
            if loc.pos != EMPTY && loc.pos != GONE && !keep(&loc) {
                // The shift may bring an unvisited entry into `at`, or one
                // visited already from the table's start (seen again, and
                // kept again: `keep` is asked twice at most).
                self.table.remove_at(at);
            } else {
                at += 1;
            }
        }
        if self.moving() {
            for at in self.cursor..self.moving.slots.len() {
                let loc = self.moving.slots[at];
                if loc.pos != EMPTY && loc.pos != GONE && !keep(&loc) {
                    self.moving.slots[at].pos = GONE;
                    self.moving.len -= 1;
                }
            }
            self.release_moving();
        }
    }
}

/// What [`Index::load`] changed in some shards: to add to the index's
/// counts.
#[derive(Default)]
struct Tally {
    len: isize,
    live_bytes: i64,
    in_slot: Vec<isize>,
}

impl Tally {
    fn count(&mut self, loc: &Loc, up: bool) {
        let slot = slot_of(loc.pos);
        if slot >= self.in_slot.len() {
            self.in_slot.resize(slot + 1, 0);
        }
        let bytes = loc.record_len() as i64;
        if up {
            self.in_slot[slot] += 1;
            self.live_bytes += bytes;
        } else {
            self.in_slot[slot] -= 1;
            self.live_bytes -= bytes;
        }
    }
}

/// Makes room for `room` more entries in each of `shards` (the shards from
/// `first` on), then applies the records of `records` whose shard is one
/// of them, in order; see [`Index::load`].
///
/// Loading is a stream of independent writes to random places in a large
/// table, each a cache miss: the slot of each record is fetched
/// [`AHEAD`] records before it is written, so that many misses are under
/// way at once instead of one after another.
fn load_into(
    shards: &mut [Shard],
    first: usize,
    room: usize,
    records: impl Iterator<Item = Hinted>,
) -> Tally {
    const AHEAD: usize = 8;
    for shard in shards.iter_mut() {
        shard.reserve(room);
    }
    let mut tally = Tally::default();
    let range = first..first + shards.len();
    let hash_of = |record: &Hinted| match record {
        Hinted::Put(loc) => loc.hash,
        Hinted::Remove(hash) => *hash,
    };
    let mut ahead: std::collections::VecDeque<Hinted> =
        std::collections::VecDeque::with_capacity(AHEAD + 1);
    let mut records = records.filter(|record| range.contains(&shard_of(hash_of(record))));
    loop {
        while ahead.len() < AHEAD {
            let Some(record) = records.next() else { break };
            let hash = hash_of(&record);
            shards[shard_of(hash) - first].prefetch(hash);
            ahead.push_back(record);
        }
        let Some(record) = ahead.pop_front() else {
            break;
        };
        let hash = hash_of(&record);
        let shard = &mut shards[shard_of(hash) - first];
        match record {
            Hinted::Put(loc) => {
                tally.count(&loc, true);
                match shard.find_mut(hash, |l| l.hash == hash) {
                    Some(slot) => {
                        let old = std::mem::replace(slot, loc);
                        tally.count(&old, false);
                    }
                    None => {
                        shard.insert_new(loc);
                        tally.len += 1;
                    }
                }
            }
            Hinted::Remove(hash) => {
                if let Some(old) = shard.remove(hash, |l| l.hash == hash) {
                    tally.count(&old, false);
                    tally.len -= 1;
                }
            }
        }
    }
    tally
}

pub struct Index {
    shards: Box<[Shard]>,
    /// Seeded from the cache's header, so every process hashes a key alike
    /// (and a hint file can hold the hash).
    hasher: FixedState,
    /// Entries in all shards.
    len: usize,
    /// Entries pointing into each segment slot.
    in_slot: Vec<usize>,
    /// Bytes of the records the index points at.
    live_bytes: u64,
    /// Room to make in each shard before the next load or insert.
    reserve_per_shard: usize,
}

impl Index {
    /// An empty index hashing with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: FixedState::with_seed(seed),
            len: 0,
            in_slot: Vec::new(),
            live_bytes: 0,
            reserve_per_shard: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// How many entries point into the segment in `slot`.
    pub fn in_slot(&self, slot: usize) -> usize {
        self.in_slot.get(slot).copied().unwrap_or(0)
    }

    fn count(&mut self, loc: &Loc, up: bool) {
        let slot = slot_of(loc.pos);
        if slot >= self.in_slot.len() {
            self.in_slot.resize(slot + 1, 0);
        }
        if up {
            self.in_slot[slot] += 1;
        } else {
            self.in_slot[slot] -= 1;
        }
    }

    /// The number of shards, for [`retain_shard`](Self::retain_shard).
    pub const SHARDS: usize = SHARDS;

    pub fn iter(&self) -> impl Iterator<Item = &Loc> {
        self.shards.iter().flat_map(Shard::iter)
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[shard_of(hash)]
    }

    #[inline]
    fn shard_mut(&mut self, hash: u64) -> &mut Shard {
        &mut self.shards[shard_of(hash)]
    }

    /// The entry for `key`. It may point into a segment dropped from the
    /// cache whose entries are still being forgotten: reads check that
    /// (through [`Loc::key`] and the like, which see no such segment).
    #[inline]
    pub fn get<'a>(&self, logs: &impl Logs<'a>, key: &[u8]) -> Option<&Loc> {
        let hash = self.hasher.hash_one(key);
        self.shard(hash).find(hash, |loc| {
            loc.hash == hash && loc.mapped_key(logs) == Some(key)
        })
    }

    /// Points `key` at `loc`; returns the previous position.
    pub fn insert<'a>(&mut self, logs: &impl Logs<'a>, key: &[u8], mut loc: Loc) -> Option<Loc> {
        if self.reserve_per_shard > 0 {
            self.make_room();
        }
        let hash = self.hasher.hash_one(key);
        loc.hash = hash;
        self.live_bytes += loc.record_len();
        self.count(&loc, true);
        let shard = self.shard_mut(hash);
        let old = match shard.find_mut(hash, |l| l.hash == hash && l.mapped_key(logs) == Some(key))
        {
            Some(slot) => Some(std::mem::replace(slot, loc)),
            None => {
                // Growing rehashes from the stored hashes: no file reads.
                shard.insert_new(loc);
                None
            }
        };
        match &old {
            Some(old) => {
                self.live_bytes -= old.record_len();
                self.count(old, false);
            }
            None => self.len += 1,
        }
        old
    }

    pub fn remove<'a>(&mut self, logs: &impl Logs<'a>, key: &[u8]) -> Option<Loc> {
        let hash = self.hasher.hash_one(key);
        let removed = self
            .shard_mut(hash)
            .remove(hash, |l| l.hash == hash && l.mapped_key(logs) == Some(key));
        if let Some(old) = &removed {
            self.live_bytes -= old.record_len();
            self.len -= 1;
            self.count(old, false);
        }
        removed
    }

    /// Room for `additional` more entries, spread over the shards, so that
    /// loading them moves nothing. Made by the next [`load`](Self::load),
    /// on its threads (allocating a large table means zeroing it), or by
    /// the next insert.
    pub fn reserve(&mut self, additional: usize) {
        self.reserve_per_shard = additional.div_ceil(SHARDS);
    }

    /// Makes the room [`reserve`](Self::reserve) asked for, in every shard.
    #[cold]
    fn make_room(&mut self) {
        let per_shard = std::mem::take(&mut self.reserve_per_shard);
        for shard in self.shards.iter_mut() {
            shard.reserve(per_shard);
        }
    }

    /// Indexes records read from hint files, in log order, whose hashes
    /// are already known: a put replaces the entry with the same hash, a
    /// tombstone forgets it, without reading either key. Only for loading:
    /// two keys whose 64-bit hashes collide then keep only the newer (the
    /// other reads as missing, as a lookup checks the key), which never
    /// serves wrong bytes.
    ///
    /// `records` gives the same records at every call. With many of them,
    /// two threads load them, each into half of the shards (each reading
    /// every record and keeping its own): shards share nothing, and the
    /// load is mostly waiting on memory.
    pub fn load<I>(&mut self, count: usize, records: impl Fn() -> I + Sync)
    where
        I: Iterator<Item = Hinted>,
    {
        const PARALLEL_FROM: usize = 1 << 16;
        let room = std::mem::take(&mut self.reserve_per_shard);
        let tallies = if count >= PARALLEL_FROM {
            let (low, high) = self.shards.split_at_mut(SHARDS / 2);
            // The other thread takes the high half from here; if it cannot
            // be started, the half is still here for this thread.
            let high = std::sync::Mutex::new(Some(high));
            let take = || high.lock().ok().and_then(|mut half| half.take());
            std::thread::scope(|scope| {
                let other = std::thread::Builder::new()
                    .name("layercache-load".into())
                    .spawn_scoped(scope, || {
                        take().map(|half| load_into(half, SHARDS / 2, room, records()))
                    });
                let mut tallies = vec![load_into(low, 0, room, records())];
                let theirs = match other {
                    Ok(other) => other
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    Err(_) => None,
                };
                match theirs {
                    Some(tally) => tallies.push(tally),
                    None => {
                        if let Some(half) = take() {
                            tallies.push(load_into(half, SHARDS / 2, room, records()));
                        }
                    }
                }
                tallies
            })
        } else {
            vec![load_into(&mut self.shards, 0, room, records())]
        };
        for tally in tallies {
            self.len = self.len.wrapping_add_signed(tally.len);
            self.live_bytes = self.live_bytes.wrapping_add_signed(tally.live_bytes);
            if self.in_slot.len() < tally.in_slot.len() {
                self.in_slot.resize(tally.in_slot.len(), 0);
            }
            for (count, delta) in self.in_slot.iter_mut().zip(tally.in_slot) {
                *count = count.wrapping_add_signed(delta);
            }
        }
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Loc) -> bool) {
        for shard in 0..SHARDS {
            self.retain_shard(shard, &mut keep);
        }
    }

    /// Keeps only the entries of shard `shard` for which `keep` is true:
    /// a bounded part of [`retain`](Self::retain), to spread its cost.
    pub fn retain_shard(&mut self, shard: usize, mut keep: impl FnMut(&Loc) -> bool) {
        let Self {
            shards,
            len,
            live_bytes,
            in_slot,
            ..
        } = self;
        shards[shard].retain(|loc| {
            let kept = keep(loc);
            if !kept {
                *live_bytes -= loc.record_len();
                *len -= 1;
                in_slot[slot_of(loc.pos)] -= 1;
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(n: u64) -> Loc {
        Loc {
            pos: n,
            // A poor hash on purpose: neighbours share buckets and tags.
            hash: n.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xFFFF_0000_0000_FFFF,
            key_len: 0,
            value_len: 0,
            key_crc: 0,
            value_crc: 0,
        }
    }

    /// Growth moves entries a few at a time: every entry stays findable
    /// exactly once through any number of growths, replacements and
    /// removals, and a growing table never resizes in place.
    #[test]
    fn a_growing_shard_keeps_every_entry_exactly_once() {
        let mut shard = Shard::default();
        let mut live = std::collections::BTreeSet::new();
        // Positions from 1: 0 marks an empty slot.
        for n in 1..20_000u64 {
            let new = loc(n);
            assert!(shard.find_mut(new.hash, |l| l.pos == n).is_none());
            let capacity = shard.table.capacity();
            let moving = shard.moving();
            shard.insert_new(new);
            live.insert(n);
            if moving {
                assert_eq!(shard.table.capacity(), capacity, "resized in place at {n}");
            }
            if n % 3 == 0 {
                let gone = n / 2;
                if live.remove(&gone) {
                    let l = loc(gone);
                    assert!(shard.remove(l.hash, |x| x.pos == gone).is_some());
                }
            }
            if n % 997 == 0 {
                for &m in &live {
                    let l = loc(m);
                    assert!(
                        shard.find(l.hash, |x| x.pos == m).is_some(),
                        "{m} lost at {n}"
                    );
                }
                let mut seen: Vec<u64> = shard.iter().map(|l| l.pos).collect();
                seen.sort_unstable();
                assert_eq!(seen, live.iter().copied().collect::<Vec<_>>(), "at {n}");
            }
        }
        shard.retain(|l| l.pos % 2 == 0);
        assert!(shard.iter().all(|l| l.pos % 2 == 0));
        assert_eq!(
            shard.iter().count(),
            live.iter().filter(|n| *n % 2 == 0).count()
        );
        for m in live.iter().filter(|n| *n % 2 == 0) {
            let l = loc(*m);
            assert!(shard.find(l.hash, |x| x.pos == *m).is_some(), "{m}");
        }
    }

    /// Removal from one long cluster (every key's home the same slot, or
    /// one of two neighbours, wrapping around the table's end): every other
    /// entry is still found, in any order of removals, and retain keeps
    /// exactly what it should, while a move is under way or not.
    #[test]
    fn removal_shifts_back_without_losing_an_entry() {
        // 196 entries: the table grew at 192 (3/4 of 256 slots), and most of
        // the old one is still to move.
        for (homes, count) in [(1u64, 300u64), (2, 300), (3, 196), (1, 196)] {
            let mut shard = Shard::default();
            let entry = |n: u64| Loc {
                // The home slot scales the hash to the table: hashes this
                // close to the top make it the last slot (or one of the last
                // `homes`), whatever the size, so clusters wrap around.
                hash: ((0xFFFF_FFFF - n % homes) << 32) | n,
                ..loc(n)
            };
            let mut live = std::collections::BTreeSet::new();
            for n in 1..=count {
                shard.insert_new(entry(n));
                live.insert(n);
            }
            assert_eq!(shard.moving(), count == 196, "{count}");
            let mut state = 0x1234_5678u64;
            for round in 0..250 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let gone = 1 + state % count;
                let e = entry(gone);
                let removed = shard.remove(e.hash, |x| x.pos == gone);
                assert_eq!(removed.is_some(), live.remove(&gone), "round {round}");
                for &m in &live {
                    let e = entry(m);
                    assert!(
                        shard.find(e.hash, |x| x.pos == m).is_some(),
                        "{homes} homes: {m} lost after removing {gone}"
                    );
                }
            }
            shard.retain(|l| l.pos % 3 != 0);
            live.retain(|n| n % 3 != 0);
            let mut seen: Vec<u64> = shard.iter().map(|l| l.pos).collect();
            seen.sort_unstable();
            assert_eq!(seen, live.iter().copied().collect::<Vec<_>>());
            for &m in &live {
                let e = entry(m);
                assert!(shard.find(e.hash, |x| x.pos == m).is_some(), "{m}");
            }
        }
    }
}
