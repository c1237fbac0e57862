//! The log: reading records out of the mapped file.
//!
//! Invariants kept here:
//! - A [`Log`] covers the records only, from the end of the header page to a
//!   committed length loaded from the header. It never covers the header,
//!   whose committed length and superseded flag other processes store to
//!   while we read.
//! - Bytes below a committed length never change again (records are
//!   append-only, compaction writes a new file, and the only truncation cuts
//!   bytes past the committed length), so a `Log` may be held for as long as
//!   the mapping lives.
//! - A walk never reads past the `Log` it was given.

use memmap2::MmapRaw;

use super::format::{self, HEADER_SIZE, RECORD_HEADER_SIZE, crc};

/// The records of a mapped file, from [`HEADER_SIZE`] to an end, addressed
/// by file offset.
#[derive(Clone, Copy)]
pub(super) struct Log<'a> {
    records: &'a [u8],
    /// The file's record salt.
    salt: u32,
}

impl<'a> Log<'a> {
    /// The records of `map` up to the file offset `end`, which must lie
    /// below a committed length this process has loaded, and within the
    /// mapping and the file; `salt` is the file's record salt.
    #[inline]
    pub(super) fn of(map: &'a MmapRaw, end: u64, salt: u32) -> Log<'a> {
        assert!(
            HEADER_SIZE <= end && end <= map.len() as u64,
            "a log ends past the header and within the mapping"
        );
        // SAFETY: the range HEADER_SIZE..end lies within the mapping (checked
        // above), which is at least HEADER_SIZE long and starts at offset 0.
        // Callers pass an `end` at or below a committed length they loaded
        // (Acquire) from the header, or, when repairing at open, at or below
        // the file's size while holding the exclusive lock. Those bytes were
        // written (with `pwrite`) before the committed length was advanced
        // past them, and no cooperating process writes them again: records
        // are append-only, compaction writes a new file, and the only
        // truncation cuts bytes past the committed length, under the lock. So
        // the bytes are initialised, lie within the file (no access touches a
        // page past its end, which would raise SIGBUS), and do not change
        // while the slice lives. The header page, the only bytes written in
        // place, is not part of the slice. The slice borrows `map`, so it
        // cannot outlive the mapping.
        let records = unsafe {
            std::slice::from_raw_parts(
                map.as_ptr().add(HEADER_SIZE as usize),
                (end - HEADER_SIZE) as usize,
            )
        };
        Log { records, salt }
    }

    /// What a record starting at file offset `at` of this log was written
    /// with.
    #[inline]
    pub(super) fn place(&self, at: u64) -> format::Place {
        format::Place {
            salt: self.salt,
            at,
        }
    }

    /// The valid record header at file offset `at`, if there is one.
    #[inline]
    pub(super) fn header(&self, at: u64) -> Option<format::RecordHeader> {
        format::decode_record_header(self.from(at), self.place(at))
    }

    /// The file offset just past the last byte.
    #[inline]
    pub(super) fn end(&self) -> u64 {
        HEADER_SIZE + self.records.len() as u64
    }

    /// The `len` bytes at file offset `at`; `None` when they run past the
    /// end (or start before the records).
    #[inline]
    pub(super) fn get(&self, at: u64, len: usize) -> Option<&'a [u8]> {
        let start = usize::try_from(at.checked_sub(HEADER_SIZE)?).ok()?;
        self.records.get(start..start.checked_add(len)?)
    }

    /// Every byte from file offset `at` to the end (empty past the end).
    #[inline]
    pub(super) fn from(&self, at: u64) -> &'a [u8] {
        at.checked_sub(HEADER_SIZE)
            .and_then(|start| self.records.get(start as usize..))
            .unwrap_or_default()
    }
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanEnd {
    /// At a record boundary, or after damage the walk resynced past.
    Clean,
    /// Inside a record whose header is valid: the end is not a boundary.
    InsideRecord,
}

/// Bytes that are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Damaged {
    /// A record header that fails its checks.
    Header,
    /// A valid record header whose record runs past the end.
    PastEnd,
}

impl Damaged {
    pub(super) fn problem(self) -> &'static str {
        match self {
            Damaged::Header => "damaged record header",
            Damaged::PastEnd => "record runs past the committed end",
        }
    }
}

/// What [`walk`] found at an offset.
pub(super) enum Walked<'a> {
    /// A record with a valid header and key.
    Record(format::RecordHeader, &'a [u8]),
    /// A record with a valid header whose key fails its checksum.
    DamagedKey { key_crc: u32 },
    /// Bytes that are not a valid record; the walk resumed at the next
    /// valid record header (or stopped, past the end).
    Damaged(Damaged),
}

/// Walks the records of `log` from the file offset `from`, calling `visit`
/// for each record and damaged place. Never reads past the log's end.
pub(super) fn walk<'a>(log: Log<'a>, from: u64, mut visit: impl FnMut(u64, Walked<'a>)) {
    let end = log.end();
    let mut at = from;
    while at + RECORD_HEADER_SIZE as u64 <= end {
        let here = log.from(at);
        match format::decode_record_header(here, log.place(at)) {
            Some(header) if at + header.total_len() <= end => {
                let key = &here[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + header.key_len as usize];
                if crc(key) == header.key_crc {
                    visit(at, Walked::Record(header, key));
                } else {
                    visit(
                        at,
                        Walked::DamagedKey {
                            key_crc: header.key_crc,
                        },
                    );
                }
                at += header.total_len();
            }
            Some(_) => {
                // A valid header whose record runs past the end: a torn
                // tail (only possible below a damaged committed length).
                visit(at, Walked::Damaged(Damaged::PastEnd));
                return;
            }
            None => {
                visit(at, Walked::Damaged(Damaged::Header));
                at = resync(log, at + format::ALIGN);
            }
        }
    }
}

/// The offset of the next valid record header at or after `from`, or the
/// end of `log`.
pub(super) fn resync(log: Log<'_>, from: u64) -> u64 {
    let end = log.end();
    let mut at = from;
    while at + RECORD_HEADER_SIZE as u64 <= end {
        if log.header(at).is_some_and(|h| at + h.total_len() <= end) {
            return at;
        }
        at += format::ALIGN;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header, which other processes store to while we read, is not
    /// reachable through a `Log`: what the SAFETY comment of `Log::of`
    /// relies on.
    #[test]
    fn a_log_never_reaches_the_header() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("log");
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("a file");
        file.set_len(HEADER_SIZE + 64).expect("room for records");
        let map = memmap2::MmapOptions::new()
            .len((HEADER_SIZE + 64) as usize)
            .map_raw(&file)
            .expect("a map");
        let log = Log::of(&map, HEADER_SIZE + 64, 0);
        assert_eq!(log.end(), HEADER_SIZE + 64);
        for at in [0, 8, 32, 40, HEADER_SIZE - 1] {
            assert_eq!(log.get(at, 1), None, "offset {at}");
            assert!(log.from(at).is_empty(), "offset {at}");
        }
        assert_eq!(log.get(HEADER_SIZE, 64).map(<[u8]>::len), Some(64));
        assert_eq!(log.get(HEADER_SIZE, 65), None, "nor past its end");
        let empty = Log::of(&map, HEADER_SIZE, 0);
        assert_eq!(empty.get(HEADER_SIZE, 1), None);
    }
}
