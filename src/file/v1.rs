//! Reading a version-1 file (layercache 0.1), to convert it.
//!
//! A version-1 record has a 32-byte header (`LCR1`, a checksum of bytes
//! 8..32, kind, key length, value length, key and value checksums) and no
//! deadlines; its checksum covers neither a salt nor the record's offset.
//! Conversion keeps the newest put of every key, drops what the version-1
//! reader would have read as missing (damaged values and keys, and any key
//! a damaged record may have overwritten), and writes the rest as a
//! version-2 file, with no deadlines, in file order.
//!
//! Invariant kept here: conversion runs under the exclusive lock, reads
//! only below the old file's committed length (or its size, when that
//! length cannot be right), and changes the old file only by flagging it
//! superseded once the new file is complete.

use std::collections::HashMap;

use super::compact;
use super::format::{self, Deadlines, HEADER_SIZE, NewHeader, crc, u32_at};
use super::identity::Paths;
use super::lock::Exclusive;
use super::log::Log;
use super::segment::Segment;
use crate::error::{Error, Result};

const RECORD_MAGIC: [u8; 4] = *b"LCR1";
const RECORD_HEADER_SIZE: usize = 32;

/// A version-1 record header: (is a put, key length, value length, key
/// checksum, value checksum).
struct Header {
    put: bool,
    key_len: usize,
    value_len: usize,
    key_crc: u32,
    value_crc: u32,
}

impl Header {
    fn total_len(&self) -> u64 {
        format::align_up((RECORD_HEADER_SIZE + self.key_len + self.value_len) as u64)
    }
}

fn decode(bytes: &[u8]) -> Option<Header> {
    let bytes = bytes.get(..RECORD_HEADER_SIZE)?;
    if bytes[..4] != RECORD_MAGIC || crc(&bytes[8..]) != u32_at(bytes, 4) {
        return None;
    }
    let put = match bytes[8] {
        1 => true,
        2 => false,
        _ => return None,
    };
    Some(Header {
        put,
        key_len: u32_at(bytes, 12) as usize,
        value_len: u32_at(bytes, 16) as usize,
        key_crc: u32_at(bytes, 20),
        value_crc: u32_at(bytes, 24),
    })
}

/// Where a live value of the old file is.
struct Live {
    record: u64,
    key_len: usize,
    value_len: usize,
    value_crc: u32,
}

/// The live entries of the version-1 records in `log`: key → newest put.
fn live_entries<'a>(log: Log<'a>) -> HashMap<&'a [u8], Live> {
    let mut live: HashMap<&[u8], Live> = HashMap::new();
    let end = log.end();
    let mut at = HEADER_SIZE;
    while at + RECORD_HEADER_SIZE as u64 <= end {
        let here = log.from(at);
        match decode(here) {
            Some(header) if at + header.total_len() <= end => {
                let key = &here[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + header.key_len];
                if crc(key) != header.key_crc {
                    // As version 1 reads it: an older value of any key with
                    // this checksum must not stand in for the damaged one.
                    live.retain(|key, _| crc(key) != header.key_crc);
                } else if header.put {
                    let entry = Live {
                        record: at,
                        key_len: header.key_len,
                        value_len: header.value_len,
                        value_crc: header.value_crc,
                    };
                    live.insert(key, entry);
                } else {
                    live.remove(key);
                }
                at += header.total_len();
            }
            Some(_) => break, // a torn tail
            None => {
                // As version 1 reads it: forget every older key found where
                // the damaged record's key would start, then resync.
                let would_be_key = log.from(at + RECORD_HEADER_SIZE as u64);
                live.retain(|key, _| !would_be_key.starts_with(key));
                at += format::ALIGN;
                while at + RECORD_HEADER_SIZE as u64 <= end
                    && decode(log.from(at)).is_none_or(|h| at + h.total_len() > end)
                {
                    at += format::ALIGN;
                }
            }
        }
    }
    live
}

/// Rewrites the version-1 file `old` (mapped, `len` bytes long, of
/// `generation`) as a version-2 file at the data path. The caller holds the
/// exclusive lock.
pub(super) fn convert(
    old: &Segment,
    len: u64,
    generation: u64,
    paths: &Paths,
    lock: &Exclusive<'_>,
) -> Result<()> {
    let committed = old.committed();
    let end = if committed < HEADER_SIZE || committed > len {
        len
    } else {
        committed
    };
    let log = old.log(end);
    let live = live_entries(log);
    let mut records: Vec<(&[u8], &Live)> = live.iter().map(|(k, v)| (*k, v)).collect();
    records.sort_unstable_by_key(|(_, live)| live.record);
    let records = records.into_iter().filter_map(|(key, live)| {
        let value_at = live.record + (RECORD_HEADER_SIZE + live.key_len) as u64;
        let value = log.get(value_at, live.value_len)?;
        (crc(value) == live.value_crc).then_some((key, value, Deadlines::NONE))
    });
    let like = old
        .file
        .metadata()
        .map_err(|e| Error::io(&paths.given, e))?;
    // After any segment file already beside it (there should be none).
    let id = paths
        .sealed_ids()
        .map_err(|e| Error::io(&paths.given, e))?
        .last()
        .map_or(1, |id| id + 1);
    let header = NewHeader {
        generation: generation + 1,
        salt: format::new_salt(),
        id,
        seed: format::random_u64(),
        base: id,
        max_bytes: 0,
        cursor: 0,
    };
    compact::write_file(paths, &like, header, records)?;
    compact::install(paths, lock, old)
}
