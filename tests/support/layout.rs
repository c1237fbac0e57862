//! The on-disk layout of a FileCache (docs/file-format.md), read and
//! forged by hand: the files beside a cache, hint entries, records' keys.
//! Shared by the tests that attack those bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::crc32;

pub const HINT_HEADER: usize = 64;
pub const HINT_ENTRY: usize = 32;

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub fn record_len(key: usize, value: usize) -> u64 {
    (48 + key as u64 + value as u64).div_ceil(8) * 8
}

/// The files beside `path` named `<name>.<id>.<suffix>`, by id.
pub fn numbered(path: &Path, suffix: &str) -> BTreeMap<u64, PathBuf> {
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let file = entry.file_name().into_string().ok()?;
            let id = file
                .strip_prefix(&format!("{name}."))?
                .strip_suffix(&format!(".{suffix}"))?
                .parse()
                .ok()?;
            Some((id, entry.path()))
        })
        .collect()
}

pub fn sealed(path: &Path) -> BTreeMap<u64, PathBuf> {
    numbered(path, "seg")
}

pub fn hints(path: &Path) -> BTreeMap<u64, PathBuf> {
    numbered(path, "hint")
}

/// Waits until every sealed segment beside `path` has its hint.
pub fn wait_for_hints(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s: Vec<u64> = sealed(path).keys().copied().collect();
        let h: Vec<u64> = hints(path).keys().copied().collect();
        if s == h {
            return;
        }
        assert!(Instant::now() < deadline, "hints {h:?} for segments {s:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// One hint entry, as the file holds it.
#[derive(Debug, Clone, Copy)]
pub struct HintEntry {
    pub offset: u64,
    pub hash: u64,
    pub key_len: u32,
    pub value_len: u32,
    pub key_crc: u32,
    pub value_crc: u32,
}

pub fn hint_entries(hint: &[u8]) -> Vec<HintEntry> {
    hint[HINT_HEADER..]
        .chunks_exact(HINT_ENTRY)
        .map(|e| HintEntry {
            offset: u64_at(e, 0),
            hash: u64_at(e, 8),
            key_len: u32_at(e, 16),
            value_len: u32_at(e, 20),
            key_crc: u32_at(e, 24),
            value_crc: u32_at(e, 28),
        })
        .collect()
}

pub fn put_hint_entry(hint: &mut [u8], n: usize, e: HintEntry) {
    let at = HINT_HEADER + n * HINT_ENTRY;
    hint[at..at + 8].copy_from_slice(&e.offset.to_le_bytes());
    hint[at + 8..at + 16].copy_from_slice(&e.hash.to_le_bytes());
    hint[at + 16..at + 20].copy_from_slice(&e.key_len.to_le_bytes());
    hint[at + 20..at + 24].copy_from_slice(&e.value_len.to_le_bytes());
    hint[at + 24..at + 28].copy_from_slice(&e.key_crc.to_le_bytes());
    hint[at + 28..at + 32].copy_from_slice(&e.value_crc.to_le_bytes());
}

/// Makes a hint's two checksums right again after its entries changed.
pub fn reseal_hint(hint: &mut [u8]) {
    let body = crc32(&hint[HINT_HEADER..]);
    hint[44..48].copy_from_slice(&body.to_le_bytes());
    let header = crc32(&hint[..60]);
    hint[60..64].copy_from_slice(&header.to_le_bytes());
}

/// The key of the record at `offset` of a segment's bytes.
pub fn key_at(segment: &[u8], offset: u64) -> Vec<u8> {
    let o = offset as usize;
    let key_len = u32_at(segment, o + 12) as usize;
    segment[o + 48..o + 48 + key_len].to_vec()
}
