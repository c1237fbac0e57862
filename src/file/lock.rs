//! The exclusive lock that writers, compaction and reopening hold, between
//! the threads of a process and between processes.
//!
//! Invariants kept here:
//! - The OS lock is an advisory `flock` (std's `File::lock`) on
//!   `<real path>.lock`, never on the data file: compaction replaces the
//!   data file, and a lock on a replaced file would exclude nobody.
//! - `flock` belongs to the open file description, which every thread of a
//!   process shares, and it does not nest: a thread that took and dropped it
//!   while another held it would release it for both. So a process opens
//!   each lock file once (the [`Shared`](super::shared::Shared) state is per
//!   process), and the description is only ever locked and unlocked by the
//!   holder of the in-process mutex around it: a thread takes the mutex,
//!   then the OS lock, and gives them back in the other order.
//! - After `flock` returns, the lock path is checked to still name the
//!   locked file; if it was removed or replaced, the file now at the path is
//!   locked instead, so every process converges on one lock file.
//! - A forked child never locks or unlocks a description it inherited: it
//!   opens its own (see `shared.rs`).

use std::fs::{self, File};
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::identity::{Ident, ident};
use super::lock_poisoned;
use crate::error::{Error, Result};

/// What the holder of the exclusive lock may use: the write buffer and the
/// pause between failed automatic compactions.
#[derive(Debug)]
pub(super) struct Writer {
    /// Encoded records on their way to the file.
    pub(super) buf: Vec<u8>,
    /// After an automatic compaction failed: not before this instant, and
    /// the pause to take after the next failure.
    pub(super) compaction_pause: Option<(Instant, Duration)>,
}

/// The write buffer's capacity is given back after a write that needed more.
const KEPT_BUFFER: usize = 1 << 20;

impl Writer {
    /// Gives back a buffer grown past [`KEPT_BUFFER`] by one large write.
    pub(super) fn shrink(&mut self) {
        if self.buf.capacity() > KEPT_BUFFER {
            self.buf = Vec::new();
        }
    }
}

#[derive(Debug)]
struct Holder {
    file: File,
    ident: Ident,
    writer: Writer,
}

/// A process's hold on one lock file.
#[derive(Debug)]
pub(super) struct ProcessLock {
    held: Mutex<Holder>,
}

/// Holds the exclusive lock, for this thread alone, until dropped; gives
/// access to the [`Writer`].
#[derive(Debug)]
pub(super) struct Exclusive<'a> {
    holder: MutexGuard<'a, Holder>,
}

impl ProcessLock {
    /// Takes over `file`, the open lock file whose identity is `ident`.
    pub(super) fn new(file: File, ident: Ident) -> Self {
        ProcessLock {
            held: Mutex::new(Holder {
                file,
                ident,
                writer: Writer {
                    buf: Vec::new(),
                    compaction_pause: None,
                },
            }),
        }
    }

    /// Blocks until this thread holds the lock, within the process and
    /// between processes. `path` is the lock file's path; `reopen` opens
    /// the lock file now at `path` when the one held was removed or
    /// replaced (it returns the new file and its identity).
    pub(super) fn exclusive(
        &self,
        path: &std::path::Path,
        mut reopen: impl FnMut(&File) -> Result<(File, Ident)>,
    ) -> Result<Exclusive<'_>> {
        let mut holder = lock_poisoned(self.held.lock());
        loop {
            holder.file.lock().map_err(|e| Error::io(path, e))?;
            match fs::metadata(path) {
                Ok(meta) if ident(&meta) == holder.ident => return Ok(Exclusive { holder }),
                _ => {
                    // Someone removed or replaced the lock file: the lock we
                    // hold excludes nobody who opens the path from now on.
                    let _ = holder.file.unlock();
                    match reopen(&holder.file) {
                        Ok((file, id)) => {
                            holder.file = file;
                            holder.ident = id;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// The lock file, for the fork handler's bookkeeping; `&mut` access
    /// needs no locking (the state is being dropped).
    pub(super) fn file_mut(&mut self) -> &File {
        &lock_poisoned(self.held.get_mut()).file
    }
}

#[cfg(test)]
impl ProcessLock {
    /// The write buffer's capacity, for tests.
    pub(super) fn buffer_capacity(&self) -> usize {
        lock_poisoned(self.held.lock()).writer.buf.capacity()
    }
}

impl Deref for Exclusive<'_> {
    type Target = Writer;
    fn deref(&self) -> &Writer {
        &self.holder.writer
    }
}

impl DerefMut for Exclusive<'_> {
    fn deref_mut(&mut self) -> &mut Writer {
        &mut self.holder.writer
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        // The OS lock first, then (as the guard drops) the mutex, so no other
        // thread of this process can lock the description while it is still
        // held. An unlock error leaves the lock to be released when the
        // description is closed: nothing to report from a drop.
        let _ = self.holder.file.unlock();
    }
}
