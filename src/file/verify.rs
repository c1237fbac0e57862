//! [`FileCache::verify`]: a read-only walk over the committed records that
//! reports every damaged place.
//!
//! Invariant kept here: verification changes nothing, neither the file nor
//! the index; it reads only below the committed length.

use super::FileCache;
use super::format::{HEADER_SIZE, crc};
use super::log::{Walked, walk};
use crate::error::Result;

/// What [`FileCache::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verification {
    /// Records read: puts and tombstones, those whose key or value is
    /// damaged included (a record whose header is damaged cannot be told
    /// from its neighbours, and counts only as damage).
    pub records: u64,
    /// Keys with a live value.
    pub live: u64,
    /// Damaged places, in file order. Empty for a healthy file.
    pub damage: Vec<Damage>,
}

/// A damaged place in a cache file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// The segment file: the cache's path (its real path) for the active
    /// segment, `<path>.<id>.seg` for a sealed one.
    pub file: std::path::PathBuf,
    /// Byte offset of the damaged record in that file.
    pub offset: u64,
    /// What is wrong there.
    pub problem: &'static str,
}

impl<K> FileCache<K> {
    /// Reads every committed record of every segment and checks its
    /// checksums; reports where the files are damaged. Damaged records read as missing; the next
    /// compaction drops them.
    pub fn verify(&self) -> Result<Verification> {
        let state = self.fresh()?;
        let mut report = Verification {
            records: 0,
            live: state.len() as u64,
            damage: Vec::new(),
        };
        for (seg, end) in state.segments() {
            let bytes = seg.log(end);
            let file = if seg.id == state.active().id {
                self.shared()?.paths.data.clone()
            } else {
                self.shared()?.paths.segment(seg.id)
            };
            let mut damage = |offset, problem| {
                report.damage.push(Damage {
                    offset,
                    problem,
                    file: file.clone(),
                })
            };
            walk(bytes, HEADER_SIZE, |at, walked| match walked {
                Walked::Record(header, _) => {
                    report.records += 1;
                    let value = bytes.get(at + header.value_offset(), header.value_len as usize);
                    if value.is_none_or(|value| crc(value) != header.value_crc) {
                        damage(at, "value fails its checksum");
                    }
                }
                Walked::DamagedKey { .. } => {
                    report.records += 1;
                    damage(at, "key fails its checksum");
                }
                Walked::Damaged(damaged) => damage(at, damaged.problem()),
            });
        }
        Ok(report)
    }
}
