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
    /// Byte offset of the damaged record in the file.
    pub offset: u64,
    /// What is wrong there.
    pub problem: &'static str,
}

impl<K> FileCache<K> {
    /// Reads every committed record and checks its checksums; reports where
    /// the file is damaged. Damaged records read as missing; the next
    /// compaction drops them.
    pub fn verify(&self) -> Result<Verification> {
        let state = self.fresh()?;
        let bytes = state.file();
        let mut report = Verification {
            records: 0,
            live: state.index.len() as u64,
            damage: Vec::new(),
        };
        walk(bytes, HEADER_SIZE, |at, walked| match walked {
            Walked::Record(header, _) => {
                report.records += 1;
                let value = bytes.get(at + header.value_offset(), header.value_len as usize);
                if value.is_none_or(|value| crc(value) != header.value_crc) {
                    report.damage.push(Damage {
                        offset: at,
                        problem: "value fails its checksum",
                    });
                }
            }
            Walked::DamagedKey { .. } => {
                report.records += 1;
                report.damage.push(Damage {
                    offset: at,
                    problem: "key fails its checksum",
                });
            }
            Walked::Damaged(damaged) => report.damage.push(Damage {
                offset: at,
                problem: damaged.problem(),
            }),
        });
        Ok(report)
    }
}
