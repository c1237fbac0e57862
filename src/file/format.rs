//! The byte layout of a cache file (documented in `docs/file-format.md`).
//!
//! All integers are little endian. A file is a 4096-byte header followed by
//! records, each starting at a multiple of 8.

/// The first 8 bytes of every cache file.
pub const MAGIC: [u8; 8] = *b"LYRCACHE";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// The header's size: one page, so records never share the header's page.
pub const HEADER_SIZE: u64 = 4096;
/// The first 4 bytes of every record, to find record boundaries again after
/// a damaged record header.
pub const RECORD_MAGIC: [u8; 4] = *b"LCR1";
/// A record header's size.
pub const RECORD_HEADER_SIZE: usize = 32;
/// Records start at multiples of this.
pub const ALIGN: u64 = 8;

// Header offsets.
pub const H_MAGIC: usize = 0; // [u8; 8]
pub const H_VERSION: usize = 8; // u32
pub const H_HEADER_SIZE: usize = 12; // u32
pub const H_GENERATION: usize = 16; // u64
pub const H_STATIC_CRC: usize = 24; // u32: crc32 of bytes 0..24
// 28..32 reserved (zero)
pub const H_COMMITTED: usize = 32; // u64, atomic: end of the last complete record
pub const H_SUPERSEDED: usize = 40; // u32, atomic: 1 once compaction replaced this file

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

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// A fresh header for a file of `generation`, with nothing committed.
pub fn new_header(generation: u64) -> [u8; HEADER_SIZE as usize] {
    let mut header = [0u8; HEADER_SIZE as usize];
    header[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC);
    header[H_VERSION..H_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
    header[H_HEADER_SIZE..H_HEADER_SIZE + 4].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    header[H_GENERATION..H_GENERATION + 8].copy_from_slice(&generation.to_le_bytes());
    let static_crc = crc(&header[..H_STATIC_CRC]);
    header[H_STATIC_CRC..H_STATIC_CRC + 4].copy_from_slice(&static_crc.to_le_bytes());
    header[H_COMMITTED..H_COMMITTED + 8].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    header
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

/// Checks the fixed fields of a header and returns its generation.
pub fn check_header(header: &[u8]) -> Result<u64, HeaderProblem> {
    if header.len() < HEADER_SIZE as usize || header[H_MAGIC..H_MAGIC + 8] != MAGIC {
        return Err(HeaderProblem::NotACache);
    }
    let version = u32_at(header, H_VERSION);
    if version > VERSION {
        return Err(HeaderProblem::NewerVersion(version));
    }
    if version == 0
        || u32_at(header, H_HEADER_SIZE) != HEADER_SIZE as u32
        || crc(&header[..H_STATIC_CRC]) != u32_at(header, H_STATIC_CRC)
    {
        return Err(HeaderProblem::Damaged);
    }
    Ok(u64_at(header, H_GENERATION))
}

/// Encodes a record's header for `key` and `value` into `out` (32 bytes).
pub fn encode_record_header(kind: Kind, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
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
    let header_crc = crc(&out[start + 8..start + RECORD_HEADER_SIZE]);
    out[start + 4..start + 8].copy_from_slice(&header_crc.to_le_bytes());
}

/// A whole record, padded: header, key, value.
pub fn encode_record(kind: Kind, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    encode_record_header(kind, key, value, out);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let padded = start + record_len(key.len(), value.len()) as usize;
    out.resize(padded, 0);
}

/// Decodes the record header at the start of `bytes`, or `None` when there
/// is no valid one (not enough bytes, wrong magic, checksum mismatch, an
/// unknown kind).
pub fn decode_record_header(bytes: &[u8]) -> Option<RecordHeader> {
    let bytes = bytes.get(..RECORD_HEADER_SIZE)?;
    if bytes[..4] != RECORD_MAGIC || crc(&bytes[8..]) != u32_at(bytes, 4) {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_damage() {
        let mut out = Vec::new();
        encode_record(Kind::Put, b"key", b"value", &mut out);
        assert_eq!(out.len() as u64, record_len(3, 5));
        assert_eq!(out.len() % 8, 0);
        let header = decode_record_header(&out).expect("valid");
        assert_eq!(
            (header.kind, header.key_len, header.value_len),
            (Kind::Put, 3, 5)
        );
        assert_eq!(header.key_crc, crc(b"key"));
        for at in 0..RECORD_HEADER_SIZE {
            let mut damaged = out.clone();
            damaged[at] ^= 0x40;
            assert_eq!(decode_record_header(&damaged), None, "flip at {at}");
        }
    }

    #[test]
    fn header_checks() {
        let header = new_header(7);
        assert_eq!(check_header(&header), Ok(7));
        let mut newer = header;
        newer[H_VERSION] = 2;
        assert_eq!(check_header(&newer), Err(HeaderProblem::NewerVersion(2)));
        let mut damaged = header;
        damaged[H_GENERATION] ^= 1;
        assert_eq!(check_header(&damaged), Err(HeaderProblem::Damaged));
        assert_eq!(check_header(b"hello"), Err(HeaderProblem::NotACache));
    }
}
