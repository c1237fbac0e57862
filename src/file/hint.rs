//! Hint files: what indexing a sealed segment needs (each record's place,
//! lengths, checksums and key hash), without its keys and values, so that
//! opening a cache indexes a sealed segment without reading it.
//!
//! `<real path>.<id>.hint`, written once the segment is sealed (by the
//! process that sealed it, or one that opened the cache and found none),
//! on a background thread, to a temporary name and then renamed:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `LCHINT02` |
//! | 8 | 8 | segment id |
//! | 16 | 8 | segment end (its committed length) |
//! | 24 | 8 | hash seed |
//! | 32 | 8 | entries |
//! | 40 | 4 | the segment's salt |
//! | 44 | 4 | CRC-32 of the entries |
//! | 48 | 12 | reserved, zero |
//! | 60 | 4 | CRC-32 of bytes 0..60 |
//!
//! Then one 32-byte entry per record, in file order: offset (u64; bit 63
//! set for a tombstone), key hash (u64), key length, value length, key
//! checksum and value checksum (u32 each).
//!
//! Invariants kept here: a hint is used only if every field of its header
//! matches the segment it describes (id, end, salt, seed), both checksums
//! pass, and the key hashes of a sample of its entries match the keys in
//! the segment; otherwise the segment is scanned. A segment with any
//! damage gets no hint (the scan's rules for damage need the bytes). So a
//! stale or damaged hint costs a scan, never wrong data.

use std::fs::File;
use std::hash::BuildHasher;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use foldhash::fast::FixedState;

use super::format::{self, HEADER_SIZE, Kind, RECORD_HEADER_SIZE, crc, u32_at, u64_at};
use super::log::{Log, Walked, walk};

const MAGIC: [u8; 8] = *b"LCHINT02";
const HINT_HEADER: usize = 64;
const ENTRY: usize = 32;
const TOMBSTONE: u64 = 1 << 63;

/// One record of a sealed segment, as a hint describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) offset: u64,
    pub(super) kind: Kind,
    pub(super) hash: u64,
    pub(super) key_len: u32,
    pub(super) value_len: u32,
    pub(super) key_crc: u32,
    pub(super) value_crc: u32,
}

/// What a hint must match: the segment it describes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Describes {
    pub(super) id: u64,
    pub(super) end: u64,
    pub(super) seed: u64,
    pub(super) salt: u32,
}

/// The entries of the segment whose records are `log` (to its end), or
/// `None` when it has any damage.
pub(super) fn entries_of(log: Log<'_>, seed: u64) -> Option<Vec<Entry>> {
    let hasher = FixedState::with_seed(seed);
    let mut entries = Vec::new();
    let mut damaged = false;
    walk(log, HEADER_SIZE, |at, walked| match walked {
        Walked::Record(header, key) => entries.push(Entry {
            offset: at,
            kind: header.kind,
            hash: hasher.hash_one(key),
            key_len: header.key_len,
            value_len: header.value_len,
            key_crc: header.key_crc,
            value_crc: header.value_crc,
        }),
        _ => damaged = true,
    });
    (!damaged).then_some(entries)
}

/// Writes the hint of the segment `describes`, holding `entries`, at
/// `path` (through a temporary name, so a reader never sees half of it).
/// The file is created readable and writable by its owner only, then given
/// the owner, group and mode of the segment it describes (`like`): a hint
/// is no more readable than the cache.
pub(super) fn write(
    path: &Path,
    describes: Describes,
    entries: &[Entry],
    like: &std::fs::Metadata,
) -> std::io::Result<()> {
    let mut body = Vec::with_capacity(entries.len() * ENTRY);
    for entry in entries {
        let offset = match entry.kind {
            Kind::Put => entry.offset,
            Kind::Tombstone => entry.offset | TOMBSTONE,
        };
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&entry.hash.to_le_bytes());
        body.extend_from_slice(&entry.key_len.to_le_bytes());
        body.extend_from_slice(&entry.value_len.to_le_bytes());
        body.extend_from_slice(&entry.key_crc.to_le_bytes());
        body.extend_from_slice(&entry.value_crc.to_le_bytes());
    }
    let mut header = [0u8; HINT_HEADER];
    header[..8].copy_from_slice(&MAGIC);
    header[8..16].copy_from_slice(&describes.id.to_le_bytes());
    header[16..24].copy_from_slice(&describes.end.to_le_bytes());
    header[24..32].copy_from_slice(&describes.seed.to_le_bytes());
    header[32..40].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    header[40..44].copy_from_slice(&describes.salt.to_le_bytes());
    header[44..48].copy_from_slice(&crc(&body).to_le_bytes());
    let header_crc = crc(&header[..60]);
    header[60..64].copy_from_slice(&header_crc.to_le_bytes());
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}.{:x}.tmp",
        std::process::id(),
        format::random_u64()
    ));
    let written = (|| {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        super::identity::inherit(&file, like)?;
        file.write_all(&header)?;
        file.write_all(&body)?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A hint file's entries, checked against the segment it describes.
pub(super) struct Hint {
    /// The whole file, header included.
    map: memmap2::Mmap,
}

impl Hint {
    /// The hint at `path` if it describes exactly the segment `describes`,
    /// passes its checksums and places every record inside the segment;
    /// `None` otherwise (no file, a stale or damaged one).
    pub(super) fn read(path: &Path, describes: Describes) -> Option<Hint> {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .ok()?;
        if file.metadata().ok()?.len() < HINT_HEADER as u64 {
            return None;
        }
        // SAFETY: a hint file is written whole under a temporary name and
        // then renamed into place; no cooperating process writes to it or
        // truncates it afterwards (a newer hint replaces the name, not the
        // file), so the mapped bytes do not change while the map lives, and
        // the map covers exactly the file's length, checked above to hold
        // the header. A process that truncates a hint by hand breaks this as
        // it would for a segment (docs/file-format.md, "Assumptions").
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let header = &map[..HINT_HEADER];
        if header[..8] != MAGIC
            || crc(&header[..60]) != u32_at(header, 60)
            || u64_at(header, 8) != describes.id
            || u64_at(header, 16) != describes.end
            || u64_at(header, 24) != describes.seed
            || u32_at(header, 40) != describes.salt
        {
            return None;
        }
        let count = usize::try_from(u64_at(header, 32)).ok()?;
        let body = &map[HINT_HEADER..];
        if body.len() != count.checked_mul(ENTRY)? || crc(body) != u32_at(header, 44) {
            return None;
        }
        // Entries are checked as they are loaded (`entries_inside`); one
        // that points at another record reads as missing, as every read
        // checks the record's header against the entry and compares the
        // key.
        Some(Hint { map })
    }

    fn body(&self) -> &[u8] {
        &self.map[HINT_HEADER..]
    }

    /// The entries that lie inside the segment (after its header, whole
    /// below its end), in file order. Others are left out: they would read
    /// as missing anyway, and a position past 2^48 cannot be indexed.
    pub(super) fn entries_inside(&self) -> impl Iterator<Item = Entry> + '_ {
        let end = u64_at(&self.map, 16);
        self.entries().filter(move |entry| {
            let len = format::record_len(entry.key_len as usize, entry.value_len as usize);
            entry.offset >= HEADER_SIZE
                && entry.offset.is_multiple_of(format::ALIGN)
                && entry
                    .offset
                    .checked_add(len)
                    .is_some_and(|last| last <= end)
        })
    }

    /// How many records the hint describes.
    pub(super) fn len(&self) -> usize {
        self.body().len() / ENTRY
    }

    /// The entries, in file order.
    pub(super) fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.body().chunks_exact(ENTRY).map(|e| {
            let offset = u64_at(e, 0);
            Entry {
                offset: offset & !TOMBSTONE,
                kind: if offset & TOMBSTONE == 0 {
                    Kind::Put
                } else {
                    Kind::Tombstone
                },
                hash: u64_at(e, 8),
                key_len: u32_at(e, 16),
                value_len: u32_at(e, 20),
                key_crc: u32_at(e, 24),
                value_crc: u32_at(e, 28),
            }
        })
    }

    /// Whether the entries' key hashes and key checksums match the keys in
    /// `log`, for a sample of them (the first, the last and every 4096th):
    /// a hint written with another hash function, or for other bytes,
    /// fails.
    pub(super) fn matches(&self, log: Log<'_>, seed: u64) -> bool {
        let hasher = FixedState::with_seed(seed);
        let count = self.body().len() / ENTRY;
        self.entries()
            .enumerate()
            .filter(|(n, _)| n % 4096 == 0 || *n + 1 == count)
            .all(|(_, entry)| {
                log.get(
                    entry.offset + RECORD_HEADER_SIZE as u64,
                    entry.key_len as usize,
                )
                .is_some_and(|key| crc(key) == entry.key_crc && hasher.hash_one(key) == entry.hash)
            })
    }
}
