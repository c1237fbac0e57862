//! The log: reading records out of the mapped file.
//!
//! Invariants kept here: bytes below a committed length loaded from the
//! header never change again (records are append-only, compaction writes a
//! new file, and the only truncation cuts bytes past the committed length),
//! so a slice of them may be held for as long as the mapping lives; a walk
//! never reads past the slice it was given.

use memmap2::MmapRaw;

use super::format::{self, RECORD_HEADER_SIZE, crc};

/// The mapped bytes in `from..to`, which must lie below a committed length
/// this process has read.
pub(super) fn mapped(map: &MmapRaw, from: u64, to: u64) -> &[u8] {
    debug_assert!(from <= to && to <= map.len() as u64);
    // SAFETY: callers pass ranges below a committed length they loaded (with
    // Acquire ordering) from the header, and within the mapping (`catch_up`
    // and `append` remap before indexing anything beyond it). Those bytes
    // were written before the committed length was advanced past them, and
    // no process using this crate ever writes them again: records are
    // append-only, compaction writes a new file, and the only truncation
    // cuts bytes past the committed length. They also lie within the file
    // (the committed length never exceeds its size), so no access touches a
    // page past the end of the file. The one caller that reads past a
    // committed length, `State::load` repairing a damaged header, stops at
    // the file's size and holds the exclusive lock, so nobody writes those
    // bytes meanwhile. The slice borrows `map`, so it cannot outlive the
    // mapping.
    unsafe { std::slice::from_raw_parts(map.as_ptr().add(from as usize), (to - from) as usize) }
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

/// Walks the records of `bytes` from `from`, calling `visit` for each
/// record and damaged place. Never reads past `bytes`.
pub(super) fn walk<'a>(bytes: &'a [u8], from: u64, mut visit: impl FnMut(u64, Walked<'a>)) {
    let end = bytes.len() as u64;
    let mut at = from;
    while at + RECORD_HEADER_SIZE as u64 <= end {
        let here = &bytes[at as usize..];
        match format::decode_record_header(here) {
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
                at = resync(bytes, at + format::ALIGN);
            }
        }
    }
}

/// The offset of the next valid record header at or after `from`, or the
/// end of `bytes`.
pub(super) fn resync(bytes: &[u8], from: u64) -> u64 {
    let end = bytes.len() as u64;
    let mut at = from;
    while at + RECORD_HEADER_SIZE as u64 <= end {
        let here = &bytes[at as usize..];
        if format::decode_record_header(here).is_some_and(|h| at + h.total_len() <= end) {
            return at;
        }
        at += format::ALIGN;
    }
    end
}
