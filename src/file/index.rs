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
//! shards by hash, so that a resize moves one shard, 1/64 of the entries,
//! and no single write waits for the whole index to grow (at 1M entries the
//! slowest set went from about 40 ms to 8 ms, the file's own growth; 256
//! shards gave the same worst case but more small resizes in the 99.9th
//! percentile).
//!
//! Invariants kept here: every `Loc` points at a whole put record below the
//! indexed length, so its key and value lie inside any [`Log`] that reaches
//! that length; its `hash` is the index's hash of that key; `live_bytes` is
//! the sum of the records' lengths.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::format::{self, RECORD_HEADER_SIZE};
use super::log::Log;

/// Where a live value is.
#[derive(Debug, Clone, Copy)]
pub struct Loc {
    /// The record's offset in the file.
    pub record: u64,
    /// The index's hash of the key (set by [`Index::insert`]).
    pub hash: u64,
    pub key_len: u32,
    pub value_len: u32,
    pub key_crc: u32,
    pub value_crc: u32,
}

impl Loc {
    #[inline]
    fn key_at(&self) -> u64 {
        self.record + RECORD_HEADER_SIZE as u64
    }

    /// The key's bytes in `file`, which reaches past this record.
    #[inline]
    pub fn key<'a>(&self, file: Log<'a>) -> &'a [u8] {
        file.get(self.key_at(), self.key_len as usize)
            .expect("an indexed record lies inside the indexed log")
    }

    /// The key's bytes in `file` if they still match their checksum:
    /// damage after indexing must not let a record answer for another key.
    #[inline]
    pub fn checked_key<'a>(&self, file: Log<'a>) -> Option<&'a [u8]> {
        let key = self.key(file);
        (format::crc(key) == self.key_crc).then_some(key)
    }

    /// The value's bytes in `file`.
    #[inline]
    pub fn value<'a>(&self, file: Log<'a>) -> &'a [u8] {
        let at = self.key_at() + u64::from(self.key_len);
        file.get(at, self.value_len as usize)
            .expect("an indexed record lies inside the indexed log")
    }

    /// The record's length, padding included.
    pub fn record_len(&self) -> u64 {
        format::record_len(self.key_len as usize, self.value_len as usize)
    }
}

/// Shards of the index: a resize moves one shard's entries only.
const SHARDS: usize = 64;

pub struct Index {
    shards: Box<[HashTable<Loc>]>,
    hasher: DefaultHashBuilder,
    /// Entries in all shards.
    len: usize,
    /// Bytes of the records the index points at.
    live_bytes: u64,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
            hasher: DefaultHashBuilder::default(),
            len: 0,
            live_bytes: 0,
        }
    }
}

impl Index {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = &Loc> {
        self.shards.iter().flat_map(HashTable::iter)
    }

    /// The shard for `hash`: bits 48..56, clear of the bits a table uses
    /// for its buckets (the lowest) and for its control bytes (the top 7).
    #[inline]
    fn shard(&self, hash: u64) -> &HashTable<Loc> {
        &self.shards[(hash >> 48) as usize % SHARDS]
    }

    #[inline]
    fn shard_mut(&mut self, hash: u64) -> &mut HashTable<Loc> {
        &mut self.shards[(hash >> 48) as usize % SHARDS]
    }

    #[inline]
    pub fn get(&self, file: Log<'_>, key: &[u8]) -> Option<&Loc> {
        let hash = self.hasher.hash_one(key);
        self.shard(hash)
            .find(hash, |loc| loc.hash == hash && loc.key(file) == key)
    }

    /// Points `key` (whose record is in `file`) at `loc`; returns the
    /// previous position.
    pub fn insert(&mut self, file: Log<'_>, key: &[u8], mut loc: Loc) -> Option<Loc> {
        let hash = self.hasher.hash_one(key);
        loc.hash = hash;
        self.live_bytes += loc.record_len();
        let shard = self.shard_mut(hash);
        let old = match shard.find_mut(hash, |l| l.hash == hash && l.key(file) == key) {
            Some(slot) => Some(std::mem::replace(slot, loc)),
            None => {
                // Growing rehashes from the stored hashes: no file reads.
                shard.insert_unique(hash, loc, |l| l.hash);
                None
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        if let Some(old) = &old {
            self.live_bytes -= old.record_len();
        }
        old
    }

    pub fn remove(&mut self, file: Log<'_>, key: &[u8]) -> Option<Loc> {
        let hash = self.hasher.hash_one(key);
        let removed = self
            .shard_mut(hash)
            .find_entry(hash, |l| l.hash == hash && l.key(file) == key)
            .ok()
            .map(|entry| entry.remove().0);
        if let Some(old) = &removed {
            self.live_bytes -= old.record_len();
            self.len -= 1;
        }
        removed
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Loc) -> bool) {
        let (live_bytes, len) = (&mut self.live_bytes, &mut self.len);
        for shard in self.shards.iter_mut() {
            shard.retain(|loc| {
                let kept = keep(loc);
                if !kept {
                    *live_bytes -= loc.record_len();
                    *len -= 1;
                }
                kept
            });
        }
    }
}
