//! The lock file that writers and compaction hold between processes.
//!
//! The lock is an OS advisory lock (`flock` on Unix, through std's
//! `File::lock`, stable since Rust 1.89) on `<path>.lock`, never on the data
//! file: compaction replaces the data file, and a lock on a replaced file
//! would exclude nobody. std's lock is used rather than fs2's: it is
//! maintained, needs no dependency, and its inherent methods would shadow
//! fs2's trait methods anyway.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An open lock file.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// Holds the exclusive lock until dropped. Locks do not nest: dropping a
/// second guard taken by the same holder releases the lock for both.
#[derive(Debug)]
pub struct Exclusive<'a>(&'a LockFile);

impl LockFile {
    /// Opens (or creates, owner-only) the lock file beside `data`.
    pub fn open(data: &Path) -> Result<Self> {
        let path = super::sibling(data, ".lock");
        let file = super::open_private(&path, false)?;
        Ok(Self { file, path })
    }

    /// Blocks until this process holds the exclusive lock.
    pub fn exclusive(&self) -> Result<Exclusive<'_>> {
        self.file.lock().map_err(|e| Error::io(&self.path, e))?;
        Ok(Exclusive(self))
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        // Closing the file would release it too; an unlock error leaves the
        // lock to be released when the process ends, nothing to report.
        let _ = self.0.file.unlock();
    }
}
