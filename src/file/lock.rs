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
//! - The lock file's first page is mapped shared and holds the data epoch:
//!   a counter that every process bumps, under the lock, whenever it puts a
//!   new data file at the path (creating one, or compaction's rename). A
//!   writer or reader that finds the epoch moved since it loaded its file
//!   knows, with no system call, that the path names another file now.
//! - Every lock descriptor is a [`Registered`]: known to the fork handler
//!   from the moment it is opened until it closes (see `shared.rs`).
//! - A full check (a `stat` of the lock path and of the data path) runs
//!   when the epoch moved, when the file is flagged superseded, before every
//!   compaction, and otherwise at most every [`FULL_CHECK_EVERY`]: it
//!   notices files removed or replaced by hand. A lock file that was
//!   replaced is followed: the file now at the path is locked instead, so
//!   every process converges on one lock file.
//! - A forked child never locks or unlocks a description it inherited: it
//!   opens its own (see `shared.rs`).

use std::fs::{self, File};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::path::Path;

use memmap2::{MmapOptions, MmapRaw};

use super::identity::{Ident, ident};
use super::lock_poisoned;
use super::shared::Registered;
use crate::error::{Error, Result};

/// What the holder of the exclusive lock may use: the write buffer and the
/// pause between failed automatic compactions.
#[derive(Debug)]
pub(super) struct Writer {
    /// Encoded records on their way to the file.
    pub(super) buf: Vec<u8>,
    /// Records that cleaning copies out of the oldest segment, before
    /// they are encoded again into `buf`.
    pub(super) scratch: Vec<u8>,
    /// The error of a seal that failed during a write, to report once the
    /// locks are released (the hook may use the cache).
    pub(super) upkeep_error: Option<Error>,
    /// After an automatic compaction failed: not before this instant, and
    /// the pause to take after the next failure.
    pub(super) compaction_pause: Option<(Instant, Duration)>,
    /// When the paths are next due to be checked against the open files
    /// (a deadline, so the hot path compares two instants and subtracts
    /// none).
    pub(super) next_full_check: Instant,
}

/// The longest a writer goes without checking, with `stat`, that the lock
/// and data paths still name the files it has open (when nothing else
/// made it check).
pub(super) const FULL_CHECK_EVERY: Duration = Duration::from_millis(100);

/// The lock file's size: one page, mapped by every process.
pub(super) const LOCK_PAGE: u64 = 4096;

/// The write buffer's capacity is given back after a write that needed more.
const KEPT_BUFFER: usize = 1 << 20;

/// The first pause after a seal or a cleaning step failed.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between seal or cleaning attempts that fail.
const LONGEST_PAUSE: Duration = Duration::from_secs(60);

impl Writer {
    /// Whether seals and cleaning steps are paused after a failure.
    pub(super) fn paused(&self) -> bool {
        self.compaction_pause
            .is_some_and(|(until, _)| Instant::now() < until)
    }

    /// Records how a seal or a cleaning step went: a success ends the
    /// pause; a failure starts one (1 s, doubling up to a minute).
    pub(super) fn after_upkeep(&mut self, succeeded: bool) {
        self.compaction_pause = if succeeded {
            None
        } else {
            let pause = self
                .compaction_pause
                .map_or(FIRST_PAUSE, |(_, last)| (last * 2).min(LONGEST_PAUSE));
            Some((Instant::now() + pause, pause))
        };
    }

    /// Gives back a buffer grown past [`KEPT_BUFFER`] by one large write.
    pub(super) fn shrink(&mut self) {
        if self.buf.capacity() > KEPT_BUFFER {
            self.buf = Vec::new();
        }
        if self.scratch.capacity() > KEPT_BUFFER {
            self.scratch = Vec::new();
        }
    }
}

#[derive(Debug)]
struct Holder {
    file: Registered,
    ident: Ident,
    /// The lock file's page, for the data epoch (shared with the states
    /// loaded under this lock, whose readers check it without the lock).
    page: Arc<LockPage>,
    writer: Writer,
}

/// Maps the page of the lock file at `path`, whose identity must be
/// `ident`, first reserving the page's blocks (and making the file that
/// long if it is shorter): a store through a map into a hole the file
/// system cannot fill, on a full disk, would raise SIGBUS, where reserving
/// fails with an error. Reserving and extending are idempotent, so
/// processes may race to do them; no process ever shortens a lock file.
///
/// The map is made through a descriptor of its own, opened here and closed
/// once mapped, never through the descriptor that is locked: a mapping
/// holds a reference to the open file description it was made from, and a
/// forked child inherits mappings. Were the page mapped from the locked
/// description, a child would keep the parent's lock alive after the parent
/// died holding it, and every writer would wait for the child to exit.
pub(super) fn map_page(path: &Path, ident: Ident) -> std::io::Result<Arc<LockPage>> {
    let file = super::identity::open_existing(path)?;
    if super::identity::ident(&file.metadata()?) != ident {
        return Err(std::io::Error::other(
            "the lock file was replaced while it was being opened",
        ));
    }
    reserve_page(&file)?;
    let map = MmapOptions::new().len(LOCK_PAGE as usize).map_raw(&file)?;
    Ok(Arc::new(LockPage(map)))
}

/// The lock file's mapped page.
#[derive(Debug)]
pub(super) struct LockPage(MmapRaw);

impl LockPage {
    fn epoch_atomic(&self) -> &AtomicU64 {
        // SAFETY: the page is mapped shared, read-write, from offset 0 of
        // the lock file, which `map_page` made at least LOCK_PAGE long (and
        // reserved) and no process shortens; a mapping is page aligned, so
        // its first 8 bytes are aligned for an AtomicU64. Every process
        // accesses these bytes only as this atomic, through its own shared
        // mapping of the same page, and no slice ever covers them. The
        // reference borrows `self`, so it cannot outlive the mapping.
        unsafe { &*(self.0.as_ptr() as *const AtomicU64) }
    }

    /// The data epoch: how many times a data file was put at the path.
    #[inline]
    pub(super) fn epoch(&self) -> u64 {
        self.epoch_atomic().load(Ordering::Acquire)
    }

    /// Records that a new data file is now at the path; returns the new
    /// epoch. Only under the exclusive lock.
    fn bump(&self) -> u64 {
        self.epoch_atomic().fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// Allocates the blocks of the lock file's page, extending it if shorter.
#[cfg(target_os = "linux")]
fn reserve_page(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor open for the duration of
    // the call; mode 0 allocates without changing any byte already written.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, LOCK_PAGE as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        // A file system that cannot reserve: extend, as elsewhere.
        Some(libc::EOPNOTSUPP) => extend_page(file),
        _ => Err(error),
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve_page(file: &File) -> std::io::Result<()> {
    extend_page(file)
}

fn extend_page(file: &File) -> std::io::Result<()> {
    if file.metadata()?.len() < LOCK_PAGE {
        file.set_len(LOCK_PAGE)?;
    }
    Ok(())
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
    /// Takes over `file`, the lock file at `path` whose identity is
    /// `ident`, and maps its page.
    pub(super) fn new(file: Registered, ident: Ident, path: &Path) -> std::io::Result<Self> {
        let page = map_page(path, ident)?;
        Ok(ProcessLock {
            held: Mutex::new(Holder {
                file,
                ident,
                page,
                writer: Writer {
                    buf: Vec::new(),
                    scratch: Vec::new(),
                    upkeep_error: None,
                    compaction_pause: None,
                    next_full_check: Instant::now(),
                },
            }),
        })
    }

    /// Blocks until this thread holds the lock, within the process and
    /// between processes. `path` is the lock file's path, for errors.
    pub(super) fn exclusive(&self, path: &Path) -> Result<Exclusive<'_>> {
        let holder = lock_poisoned(self.held.lock());
        holder.file.lock().map_err(|e| Error::io(path, e))?;
        Ok(Exclusive { holder })
    }
}

#[cfg(test)]
impl ProcessLock {
    /// The write buffer's capacity, for tests.
    pub(super) fn buffer_capacity(&self) -> usize {
        lock_poisoned(self.held.lock()).writer.buf.capacity()
    }
}

impl Exclusive<'_> {
    /// The data epoch: how many times a data file was put at the path.
    pub(super) fn epoch(&self) -> u64 {
        self.holder.page.epoch()
    }

    /// Records that a new data file is now at the path; returns the new
    /// epoch.
    pub(super) fn bump_epoch(&self) -> u64 {
        self.holder.page.bump()
    }

    /// The lock file's page, for a state loaded under this lock.
    pub(super) fn page(&self) -> Arc<LockPage> {
        self.holder.page.clone()
    }

    /// Makes sure the lock held is on the file now at `path`: if the lock
    /// file was removed or replaced, the lock held excludes nobody who
    /// opens the path from now on, so `reopen` opens the file now there
    /// (returning it, its identity and its mapped page) and that one is
    /// locked instead.
    pub(super) fn ensure_current(
        &mut self,
        path: &Path,
        mut reopen: impl FnMut(&Registered) -> Result<(Registered, Ident, Arc<LockPage>)>,
    ) -> Result<()> {
        loop {
            match fs::metadata(path) {
                Ok(meta) if ident(&meta) == self.holder.ident => return Ok(()),
                _ => {
                    let _ = self.holder.file.unlock();
                    let (file, id, page) = reopen(&self.holder.file)?;
                    let holder = &mut *self.holder;
                    holder.file = file;
                    holder.ident = id;
                    holder.page = page;
                    holder.file.lock().map_err(|e| Error::io(path, e))?;
                }
            }
        }
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
