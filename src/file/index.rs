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
use hashbrown::HashTable;

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

/// Where a live value is.
#[derive(Debug, Clone, Copy)]
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
    /// deadlines, which the index does not keep) and describes the record
    /// this entry says is there: a put of these lengths and checksums. An
    /// entry that came from a forged or stale hint, pointing at another
    /// record or into one, gets `None`, and reads as missing.
    #[inline]
    pub fn checked_header<'a>(&self, logs: &impl Logs<'a>) -> Option<format::RecordHeader> {
        let (log, at) = self.record(logs)?;
        log.header(at).filter(|header| {
            header.kind == format::Kind::Put
                && header.key_len == self.key_len
                && header.value_len == self.value_len
                && header.key_crc == self.key_crc
                && header.value_crc == self.value_crc
        })
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

/// One shard: its table and, while it grows, the table it replaces.
///
/// A full table is not resized in place (that moves every entry, inside
/// the write that found it full). It becomes `moving`, a table of twice
/// its capacity takes its place, and each insert of a new key moves
/// [`MOVE_PER_INSERT`] entries across; the new table has room for the old
/// entries and every insert made until they have all moved, so it never
/// resizes in place either. An entry is in exactly one of the two tables.
#[derive(Default)]
struct Shard {
    table: HashTable<Loc>,
    moving: HashTable<Loc>,
    /// The next bucket of `moving` to move: buckets below it are empty
    /// (removals leave other entries in their buckets), so each move
    /// resumes where the last stopped instead of scanning from the start.
    cursor: usize,
}

impl Shard {
    #[inline]
    fn moving(&self) -> bool {
        !self.moving.is_empty()
    }

    /// Makes room for `additional` more entries now, if nothing is moving
    /// (for loading, before any lookup depends on the layout).
    fn reserve(&mut self, additional: usize) {
        if !self.moving() {
            self.table.reserve(additional, |l| l.hash);
        }
    }

    #[inline]
    fn find(&self, hash: u64, eq: impl Fn(&Loc) -> bool) -> Option<&Loc> {
        match self.table.find(hash, &eq) {
            Some(loc) => Some(loc),
            None if !self.moving.is_empty() => self.moving.find(hash, eq),
            None => None,
        }
    }

    fn find_mut(&mut self, hash: u64, eq: impl Fn(&Loc) -> bool) -> Option<&mut Loc> {
        if let Some(loc) = self.table.find_mut(hash, &eq) {
            return Some(loc);
        }
        self.moving.find_mut(hash, eq)
    }

    fn remove(&mut self, hash: u64, eq: impl Fn(&Loc) -> bool) -> Option<Loc> {
        if let Ok(entry) = self.table.find_entry(hash, &eq) {
            return Some(entry.remove().0);
        }
        let removed = self
            .moving
            .find_entry(hash, eq)
            .ok()
            .map(|entry| entry.remove().0);
        self.release_moving();
        removed
    }

    /// Frees the old table once nothing is left in it.
    fn release_moving(&mut self) {
        if self.moving.is_empty() && self.moving.capacity() > 0 {
            self.moving = HashTable::new();
        }
    }

    /// Inserts `loc`, whose key is in neither table.
    fn insert_new(&mut self, loc: Loc) {
        if self.table.len() == self.table.capacity() && self.moving.is_empty() {
            let capacity = (self.table.capacity() * 2).max(16);
            self.moving = std::mem::replace(&mut self.table, HashTable::with_capacity(capacity));
            self.cursor = 0;
        }
        self.table.insert_unique(loc.hash, loc, |l| l.hash);
        if !self.moving.is_empty() {
            let mut moved = 0;
            while moved < MOVE_PER_INSERT && self.cursor < self.moving.num_buckets() {
                if let Ok(entry) = self.moving.get_bucket_entry(self.cursor) {
                    let (loc, _) = entry.remove();
                    self.table.insert_unique(loc.hash, loc, |l| l.hash);
                    moved += 1;
                }
                self.cursor += 1;
            }
            self.release_moving();
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Loc> {
        self.table.iter().chain(self.moving.iter())
    }

    fn retain(&mut self, mut keep: impl FnMut(&Loc) -> bool) {
        self.table.retain(|loc| keep(loc));
        self.moving.retain(|loc| keep(loc));
        self.release_moving();
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
fn load_into(
    shards: &mut [Shard],
    first: usize,
    room: usize,
    records: impl Iterator<Item = Hinted>,
) -> Tally {
    for shard in shards.iter_mut() {
        shard.reserve(room);
    }
    let mut tally = Tally::default();
    let range = first..first + shards.len();
    for record in records {
        let hash = match record {
            Hinted::Put(loc) => loc.hash,
            Hinted::Remove(hash) => hash,
        };
        let shard = shard_of(hash);
        if !range.contains(&shard) {
            continue;
        }
        let shard = &mut shards[shard - first];
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

    /// The key the entry `loc` is for: its bytes, if they pass their
    /// checksum and hash to the entry's hash. An entry loaded from a forged
    /// hint may point at another key's record; it is for no key then, and
    /// `keys`, `values` and compaction leave it out (a lookup never finds
    /// it: it compares the key asked for).
    pub fn key_of<'a>(&self, logs: &impl Logs<'a>, loc: &Loc) -> Option<&'a [u8]> {
        loc.checked_key(logs)
            .filter(|key| self.hasher.hash_one(key) == loc.hash)
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

    /// Removal among colliding hashes (one, two or three groups of keys
    /// whose hashes differ only in the bits a table does not use first):
    /// every other entry is still found, in any order of removals, and
    /// retain keeps exactly what it should.
    #[test]
    fn removal_shifts_back_without_losing_an_entry() {
        for (homes, count) in [(1u64, 300u64), (2, 300), (3, 230), (1, 230)] {
            let mut shard = Shard::default();
            let entry = |n: u64| Loc {
                hash: ((0xFFFF_FFFF - n % homes) << 32) | n,
                ..loc(n)
            };
            let mut live = std::collections::BTreeSet::new();
            for n in 1..=count {
                shard.insert_new(entry(n));
                live.insert(n);
            }
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
