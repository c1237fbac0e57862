//! The byte layout of a cache file (documented in `docs/file-format.md`).
//!
//! All integers are little endian. A file is a 4096-byte header followed by
//! records, each starting at a multiple of 8.
//!
//! Version 2 (this code's) gives every record its deadlines and makes a
//! record's header checksum cover the file's salt and the record's own
//! offset, so that the image of a record inside a value (from this file or
//! any other) never passes for a record when a scan resyncs after damage.
//! Version 1 files are read only to convert them (`v1.rs`).

/// The first 8 bytes of every cache file.
pub const MAGIC: [u8; 8] = *b"LYRCACHE";
/// The format version this code writes and reads.
pub const VERSION: u32 = 2;
/// The version of files this code converts to [`VERSION`] when it opens
/// them.
pub const VERSION_1: u32 = 1;
/// The header's size: one page, so records never share the header's page.
pub const HEADER_SIZE: u64 = 4096;
/// The first 4 bytes of every record, to find record boundaries again after
/// a damaged record header.
pub const RECORD_MAGIC: [u8; 4] = *b"LCR2";
/// A record header's size.
pub const RECORD_HEADER_SIZE: usize = 48;
/// "No deadline", in a record's deadline fields.
pub const NEVER: u64 = u64::MAX;
/// Records start at multiples of this.
pub const ALIGN: u64 = 8;

// Header offsets. Every segment file has this header; the fields marked
// "active" are read and written only in the active segment (the file at the
// cache's path).
pub const H_MAGIC: usize = 0; // [u8; 8]
pub const H_VERSION: usize = 8; // u32
pub const H_HEADER_SIZE: usize = 12; // u32
pub const H_GENERATION: usize = 16; // u64: compactions (full rewrites) so far
pub const H_SALT: usize = 24; // u32, version 2: this file's record salt
pub const H_STATIC_CRC: usize = 28; // u32, version 2: crc32 of bytes 0..28 and 48..64
/// Version 1 kept its static checksum at 24 (over bytes 0..24), and 28..32
/// zero.
pub const H_STATIC_CRC_V1: usize = 24;
pub const H_COMMITTED: usize = 32; // u64, atomic: end of the last complete record
pub const H_SUPERSEDED: usize = 40; // u32, atomic: 1 once this file is no longer the active one
pub const H_SEGMENT_ID: usize = 48; // u64: this segment's place in the log
pub const H_HASH_SEED: usize = 56; // u64: the index's hash seed, the same in every segment
pub const H_BASE: usize = 64; // u64, atomic, active: the oldest segment id in the cache
pub const H_MAX_BYTES: usize = 72; // u64, atomic, active: the byte budget (0: none)
pub const H_CURSOR: usize = 80; // u64, atomic, active: where cleaning resumes

/// What a record says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The key now has the value that follows it.
    Put = 1,
    /// The key was removed.
    Tombstone = 2,
}

/// A record header, decoded and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: Kind,
    pub key_len: u32,
    pub value_len: u32,
    pub key_crc: u32,
    pub value_crc: u32,
    pub deadlines: Deadlines,
}

/// An entry's deadlines as a record stores them: milliseconds since the
/// Unix epoch, [`NEVER`] for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub fresh_until: u64,
    pub expires: u64,
}

impl Deadlines {
    /// No deadline: fresh forever, never expires.
    pub const NONE: Deadlines = Deadlines {
        fresh_until: NEVER,
        expires: NEVER,
    };
}

impl RecordHeader {
    /// The offset of the value from the record's start.
    pub fn value_offset(&self) -> u64 {
        RECORD_HEADER_SIZE as u64 + u64::from(self.key_len)
    }

    /// The record's length including padding to the next record.
    pub fn total_len(&self) -> u64 {
        record_len(self.key_len as usize, self.value_len as usize)
    }
}

/// The length of a record for a key and value of these sizes, padded.
pub fn record_len(key_len: usize, value_len: usize) -> u64 {
    align_up(RECORD_HEADER_SIZE as u64 + key_len as u64 + value_len as u64)
}

/// `n` rounded up to a multiple of [`ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// The checksum used throughout the format: CRC-32 (ISO-HDLC, as zlib).
pub fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// What a new segment's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewHeader {
    pub generation: u64,
    pub salt: u32,
    pub id: u64,
    pub seed: u64,
    pub base: u64,
    pub max_bytes: u64,
    pub cursor: u64,
}

/// A fresh header, with nothing committed.
pub fn new_header(new: NewHeader) -> [u8; HEADER_SIZE as usize] {
    let mut header = [0u8; HEADER_SIZE as usize];
    header[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC);
    header[H_VERSION..H_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
    header[H_HEADER_SIZE..H_HEADER_SIZE + 4].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    header[H_GENERATION..H_GENERATION + 8].copy_from_slice(&new.generation.to_le_bytes());
    header[H_SALT..H_SALT + 4].copy_from_slice(&new.salt.to_le_bytes());
    header[H_SEGMENT_ID..H_SEGMENT_ID + 8].copy_from_slice(&new.id.to_le_bytes());
    header[H_HASH_SEED..H_HASH_SEED + 8].copy_from_slice(&new.seed.to_le_bytes());
    let static_crc = static_crc(&header);
    header[H_STATIC_CRC..H_STATIC_CRC + 4].copy_from_slice(&static_crc.to_le_bytes());
    header[H_COMMITTED..H_COMMITTED + 8].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    header[H_BASE..H_BASE + 8].copy_from_slice(&new.base.to_le_bytes());
    header[H_MAX_BYTES..H_MAX_BYTES + 8].copy_from_slice(&new.max_bytes.to_le_bytes());
    header[H_CURSOR..H_CURSOR + 8].copy_from_slice(&new.cursor.to_le_bytes());
    header
}

/// The checksum of a version-2 header's fixed fields: bytes 0..28 and
/// 48..64.
fn static_crc(header: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..H_STATIC_CRC]);
    hasher.update(&header[H_SEGMENT_ID..H_HASH_SEED + 8]);
    hasher.finalize()
}

/// A salt for a new file: different for every file this process makes,
/// and unlikely to match any other file's.
pub fn new_salt() -> u32 {
    let random = random_u64();
    (random ^ (random >> 32)) as u32
}

/// A random 64-bit number: different at every call (not for secrets).
pub fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((
        nanos,
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed),
    ))
}

/// What a valid header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderInfo {
    /// [`VERSION`], or [`VERSION_1`] for a file to convert.
    pub version: u32,
    pub generation: u64,
    /// The record salt (0 in a version-1 file, which has none).
    pub salt: u32,
    /// The segment's id (0 in a version-1 file).
    pub id: u64,
    /// The index's hash seed (0 in a version-1 file).
    pub seed: u64,
}

/// Why a header is not one this code can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Not a cache file at all.
    NotACache,
    /// A cache file of a format version this code does not know.
    NewerVersion(u32),
    /// The header's fixed fields fail their checksum.
    Damaged,
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::NotACache => f.write_str("not a layercache file (bad magic bytes)"),
            HeaderProblem::NewerVersion(v) => write!(
                f,
                "format version {v} is newer than this build of layercache reads (version {VERSION})"
            ),
            HeaderProblem::Damaged => f.write_str("the file header is damaged (checksum mismatch)"),
        }
    }
}

/// Checks the fixed fields of a header (of this version, or of version 1).
pub fn check_header(header: &[u8]) -> Result<HeaderInfo, HeaderProblem> {
    if header.len() < HEADER_SIZE as usize || header[H_MAGIC..H_MAGIC + 8] != MAGIC {
        return Err(HeaderProblem::NotACache);
    }
    let version = u32_at(header, H_VERSION);
    if version > VERSION {
        return Err(HeaderProblem::NewerVersion(version));
    }
    if u32_at(header, H_HEADER_SIZE) != HEADER_SIZE as u32 {
        return Err(HeaderProblem::Damaged);
    }
    match version {
        VERSION if static_crc(header) == u32_at(header, H_STATIC_CRC) => Ok(HeaderInfo {
            version,
            generation: u64_at(header, H_GENERATION),
            salt: u32_at(header, H_SALT),
            id: u64_at(header, H_SEGMENT_ID),
            seed: u64_at(header, H_HASH_SEED),
        }),
        VERSION_1 if crc(&header[..H_STATIC_CRC_V1]) == u32_at(header, H_STATIC_CRC_V1) => {
            Ok(HeaderInfo {
                version,
                generation: u64_at(header, H_GENERATION),
                salt: 0,
                id: 0,
                seed: 0,
            })
        }
        _ => Err(HeaderProblem::Damaged),
    }
}

/// The checksum of a record header at file offset `at` in a file salted
/// with `salt`: CRC-32 of the salt and the offset (little endian), then
/// bytes 8..48 of the header. An image of the header at any other offset,
/// or from another file, fails it.
#[inline]
fn header_crc(salt: u32, at: u64, fields: &[u8]) -> u32 {
    // One call over one buffer: three calls cost twice as much, each
    // small update a dispatch of its own (a get checks a header every
    // time).
    let mut covered = [0u8; 4 + 8 + RECORD_HEADER_SIZE - 8];
    covered[..4].copy_from_slice(&salt.to_le_bytes());
    covered[4..12].copy_from_slice(&at.to_le_bytes());
    let fields = &fields[..fields.len().min(RECORD_HEADER_SIZE - 8)];
    covered[12..12 + fields.len()].copy_from_slice(fields);
    crc(&covered[..12 + fields.len()])
}

/// What a record is written with, besides its key and value.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// The file's record salt.
    pub salt: u32,
    /// The file offset the record starts at.
    pub at: u64,
}

/// Encodes a record's header for `key` and `value` into `out` (48 bytes).
pub fn encode_record_header(
    kind: Kind,
    key: &[u8],
    value: &[u8],
    deadlines: Deadlines,
    place: Place,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&[0; 4]); // header crc, filled below
    out.push(kind as u8);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(key).to_le_bytes());
    out.extend_from_slice(&crc(value).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&deadlines.expires.to_le_bytes());
    out.extend_from_slice(&deadlines.fresh_until.to_le_bytes());
    let header_crc = header_crc(
        place.salt,
        place.at,
        &out[start + 8..start + RECORD_HEADER_SIZE],
    );
    out[start + 4..start + 8].copy_from_slice(&header_crc.to_le_bytes());
}

/// A whole record, padded: header, key, value. `place.at` is where it will
/// be written.
pub fn encode_record(
    kind: Kind,
    key: &[u8],
    value: &[u8],
    deadlines: Deadlines,
    place: Place,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    encode_record_header(kind, key, value, deadlines, place, out);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let padded = start + record_len(key.len(), value.len()) as usize;
    out.resize(padded, 0);
}

/// Decodes the record header at the start of `bytes`, which is at file
/// offset `place.at`, or `None` when there is no valid one there (not
/// enough bytes, wrong magic, a checksum mismatch, an unknown kind, the
/// image of a record written elsewhere).
#[inline]
pub fn decode_record_header(bytes: &[u8], place: Place) -> Option<RecordHeader> {
    let bytes = bytes.get(..RECORD_HEADER_SIZE)?;
    if bytes[..4] != RECORD_MAGIC
        || header_crc(place.salt, place.at, &bytes[8..]) != u32_at(bytes, 4)
    {
        return None;
    }
    let kind = match bytes[8] {
        1 => Kind::Put,
        2 => Kind::Tombstone,
        _ => return None,
    };
    Some(RecordHeader {
        kind,
        key_len: u32_at(bytes, 12),
        value_len: u32_at(bytes, 16),
        key_crc: u32_at(bytes, 20),
        value_crc: u32_at(bytes, 24),
        deadlines: Deadlines {
            expires: u64_at(bytes, 32),
            fresh_until: u64_at(bytes, 40),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: Place = Place {
        salt: 0x5EED,
        at: 4096,
    };

    #[test]
    fn record_round_trip_and_damage() {
        let mut out = Vec::new();
        let deadlines = Deadlines {
            fresh_until: 1_000,
            expires: 2_000,
        };
        encode_record(Kind::Put, b"key", b"value", deadlines, HERE, &mut out);
        assert_eq!(out.len() as u64, record_len(3, 5));
        assert_eq!(out.len() % 8, 0);
        let header = decode_record_header(&out, HERE).expect("valid");
        assert_eq!(
            (header.kind, header.key_len, header.value_len),
            (Kind::Put, 3, 5)
        );
        assert_eq!(header.key_crc, crc(b"key"));
        assert_eq!(header.deadlines, deadlines);
        for at in 0..RECORD_HEADER_SIZE {
            let mut damaged = out.clone();
            damaged[at] ^= 0x40;
            assert_eq!(decode_record_header(&damaged, HERE), None, "flip at {at}");
        }
    }

    /// The image of a record is not a record: not at another offset, not
    /// in another file.
    #[test]
    fn a_record_is_valid_only_where_it_was_written() {
        let mut out = Vec::new();
        encode_record(Kind::Put, b"k", b"v", Deadlines::NONE, HERE, &mut out);
        assert!(decode_record_header(&out, HERE).is_some());
        for place in [
            Place { at: 4104, ..HERE },
            Place { at: 0, ..HERE },
            Place {
                salt: 0x5EEE,
                ..HERE
            },
        ] {
            assert_eq!(decode_record_header(&out, place), None, "{place:?}");
        }
    }

    #[test]
    fn header_checks() {
        let header = new_header(NewHeader {
            generation: 7,
            salt: 99,
            id: 3,
            seed: 42,
            base: 2,
            max_bytes: 0,
            cursor: 0,
        });
        assert_eq!(
            check_header(&header),
            Ok(HeaderInfo {
                version: VERSION,
                generation: 7,
                salt: 99,
                id: 3,
                seed: 42,
            })
        );
        let mut newer = header;
        newer[H_VERSION] = 3;
        assert_eq!(check_header(&newer), Err(HeaderProblem::NewerVersion(3)));
        for at in [
            H_GENERATION,
            H_SALT,
            H_STATIC_CRC,
            H_SEGMENT_ID,
            H_HASH_SEED,
        ] {
            let mut damaged = header;
            damaged[at] ^= 1;
            assert_eq!(check_header(&damaged), Err(HeaderProblem::Damaged), "{at}");
        }
        assert_eq!(check_header(b"hello"), Err(HeaderProblem::NotACache));
        // A version-1 header: its checksum is at 24, over bytes 0..24.
        let mut v1 = [0u8; HEADER_SIZE as usize];
        v1[..8].copy_from_slice(&MAGIC);
        v1[H_VERSION..H_VERSION + 4].copy_from_slice(&1u32.to_le_bytes());
        v1[H_HEADER_SIZE..H_HEADER_SIZE + 4].copy_from_slice(&4096u32.to_le_bytes());
        v1[H_GENERATION] = 3;
        let sum = crc(&v1[..24]);
        v1[24..28].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(
            check_header(&v1),
            Ok(HeaderInfo {
                version: VERSION_1,
                generation: 3,
                salt: 0,
                id: 0,
                seed: 0,
            })
        );
        assert_ne!(new_salt(), new_salt());
    }
}
