//! One state per cache file per process, shared by every handle and thread
//! of the process, and rebuilt in a forked child.
//!
//! Invariants kept here:
//! - A process holds at most one [`Shared`] per lock file, found in a
//!   registry by the lock file's (device, inode), so every handle on one
//!   file, whatever name it was opened by, shares one OS lock holder, one
//!   map and one index (see `lock.rs` for why `flock` needs that).
//! - A forked child never uses its parent's `Shared`: [`Shared::current`]
//!   compares a fork generation (bumped by a `pthread_atfork` child handler,
//!   so the check is one relaxed load, no system call) and opens the child's
//!   own. The locks of the parent's `Shared` may have been held by threads
//!   that do not exist in the child, and its lock file description is the
//!   parent's: the child handler points every lock descriptor the registry
//!   knows at `/dev/null`, so the child can neither unlock the parent's
//!   lock nor keep it alive after the parent dies holding it.
//! - Every lock descriptor is registered, under the registry's mutex, from
//!   the moment it is opened until it is closed, and the `pthread_atfork`
//!   prepare handler holds that mutex across `fork()`, so no descriptor
//!   escapes the child handler.
//! - A forked child takes no mutex, `Once` or lock of its parent's state
//!   (any may have been held, at the fork, by a thread the child lacks):
//!   its first use opens its own state through the registry, whose mutex
//!   the handlers hold across the fork and release in the child, and
//!   installing the handlers takes no lock at all.
//! - Lock order: a state's exclusive lock, then its `RwLock<State>`; the
//!   registry's mutex is taken inside either, never around them.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;

use super::identity::{self, Ident, Paths, ident};
use super::lock::{Exclusive, FULL_CHECK_EVERY, LockPage, ProcessLock};
use super::lock_poisoned;
use super::options::Options;
use super::segment::map_file;
use super::state::{Settings, State};
use crate::error::{Error, Result};

/// One registered lock descriptor.
struct Entry {
    ident: Ident,
    fd: RawFd,
    fork_generation: u64,
    /// Empty while the state is being built.
    shared: Weak<Shared>,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// Bumped in a forked child, before anything else runs there.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Whether the fork handlers are installed. Not a `Once`: a child forked
/// while another thread ran a `Once` would inherit it running for good.
static FORK_HANDLERS: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The registry, held by the forking thread from the prepare handler
    /// until the parent or child handler.
    static HELD_ACROSS_FORK: RefCell<Option<MutexGuard<'static, Vec<Entry>>>> =
        const { RefCell::new(None) };
}

fn registry() -> MutexGuard<'static, Vec<Entry>> {
    lock_poisoned(REGISTRY.lock())
}

extern "C" fn before_fork() {
    let _ = HELD_ACROSS_FORK.try_with(|held| {
        // The handlers may be installed more than once (threads racing to
        // install them); the registry is taken once per fork.
        if let Ok(mut held) = held.try_borrow_mut()
            && held.is_none()
        {
            *held = Some(registry());
        }
    });
}

extern "C" fn after_fork_in_parent() {
    let _ = HELD_ACROSS_FORK.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            held.take();
        }
    });
}

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
    let _ = HELD_ACROSS_FORK.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut()
            && let Some(entries) = held.take()
        {
            disown(&entries);
        }
    });
}

/// `/dev/null`, opened when the fork handlers are installed and kept open
/// for the life of the process, so that the child handler needs no free
/// descriptor to disown the lock descriptors (-1 if it could not be
/// opened).
static DEV_NULL: AtomicI32 = AtomicI32::new(-1);

/// Points every lock descriptor in `entries` at `/dev/null`: in a forked
/// child, they share the parent's open file descriptions.
fn disown(entries: &[Entry]) {
    let null = DEV_NULL.load(Ordering::Relaxed);
    if null < 0 {
        return; // no /dev/null: the child keeps the parent's descriptions
    }
    for entry in entries {
        // SAFETY: `null` is open for the life of the process (`DEV_NULL`).
        // `entry.fd` is open: it is owned by a `File` in a lock holder
        // that unregisters it, under the registry mutex that the prepare
        // handler held across the fork, before closing it. `dup2` replaces
        // what the descriptor refers to without closing the number, so that
        // `File` stays valid; the child never locks it again (its `Shared`
        // is never used there) and only closes it, now closing `/dev/null`
        // instead of dropping a reference to the parent's lock. Both calls
        // are async-signal-safe.
        unsafe {
            libc::dup2(null, entry.fd);
            libc::fcntl(entry.fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

fn install_fork_handlers() -> Result<()> {
    if FORK_HANDLERS.load(Ordering::Acquire) {
        return Ok(());
    }
    // No lock and no `Once` here: a child forked while another thread
    // installs would inherit either held. Threads that race may each
    // install the handlers; they are written to run more than once per
    // fork (the registry is taken once, the generation bumped twice).
    if DEV_NULL.load(Ordering::Acquire) < 0
        && let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
    {
        let fd = null.into_raw_fd();
        if DEV_NULL
            .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: `fd` was just opened here and is owned by nobody
            // else; another thread's descriptor won the slot.
            drop(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
    }
    // SAFETY: the handlers are `extern "C"` functions that live for the
    // whole program, take no arguments and do not unwind (they only use
    // `try_with`, `try_borrow_mut` and a mutex whose poisoning is
    // recovered).
    let rc = unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_in_parent),
            Some(after_fork_in_child),
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "pthread_atfork",
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    FORK_HANDLERS.store(true, Ordering::Release);
    Ok(())
}

/// Opens (creating with `mode`) the lock file at `paths.lock`, and its
/// identity. The caller holds the registry and registers it.
fn open_lock_file(paths: &Paths, mode: u32) -> Result<(File, Ident)> {
    let file = identity::open_or_create(&paths.lock, mode, &paths.given)?;
    let id = ident(&file.metadata().map_err(|e| Error::io(&paths.given, e))?);
    Ok((file, id))
}

/// Opens the lock file at `paths.lock` and registers its descriptor, under
/// the registry's mutex; or returns a live state already registered for
/// the same file.
fn open_lock(
    paths: &Paths,
    mode: u32,
) -> Result<std::result::Result<(Registered, Ident), Arc<Shared>>> {
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    let mut entries = registry();
    // Entries from before a fork are the parent's: already disowned.
    entries.retain(|e| e.fork_generation == generation);
    if let Ok(meta) = std::fs::metadata(&paths.lock)
        && let Some(shared) = live(&entries, ident(&meta))
    {
        return Ok(Err(shared));
    }
    let (file, id) = open_lock_file(paths, mode)?;
    if let Some(shared) = live(&entries, id) {
        return Ok(Err(shared));
    }
    Ok(Ok((Registered::new(&mut entries, file, id), id)))
}

/// Opens the lock file now at `paths.lock` in place of `old`, which was
/// removed or replaced, and maps its page, then registers it for the same
/// state as `old`, all under the registry's mutex: a failure closes the new
/// descriptor before it was ever registered, and the state stays the one
/// this process finds for the new lock file. `old` unregisters itself as it
/// drops.
fn relock(
    paths: &Paths,
    mode: u32,
    old: &Registered,
) -> Result<(Registered, Ident, Arc<LockPage>)> {
    let mut entries = registry();
    let (file, id) = open_lock_file(paths, mode)?;
    let page = super::lock::map_page(&paths.lock, id).map_err(|e| Error::io(&paths.lock, e))?;
    let state = entries
        .iter()
        .find(|e| e.fd == old.as_raw_fd())
        .map(|e| e.shared.clone())
        .unwrap_or_default();
    let file = Registered::new(&mut entries, file, id);
    if let Some(entry) = entries.last_mut() {
        entry.shared = state;
    }
    Ok((file, id, page))
}

fn live(entries: &[Entry], id: Ident) -> Option<Arc<Shared>> {
    entries
        .iter()
        .filter(|e| e.ident == id)
        .find_map(|e| e.shared.upgrade())
}

/// A lock descriptor the registry knows, from its registration until it
/// closes: dropping it unregisters it first, so a fork in between cannot
/// leave the fork handler a closed (or reused) number. Never drop one while
/// holding the registry's mutex.
#[derive(Debug)]
pub(super) struct Registered(File);

impl Registered {
    fn new(entries: &mut Vec<Entry>, file: File, id: Ident) -> Registered {
        entries.push(Entry {
            ident: id,
            fd: file.as_raw_fd(),
            fork_generation: FORK_GENERATION.load(Ordering::Relaxed),
            shared: Weak::new(),
        });
        Registered(file)
    }
}

impl std::ops::Deref for Registered {
    type Target = File;
    fn deref(&self) -> &File {
        &self.0
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // No unlock: a held lock is released by the `Exclusive` guard, and
        // in a forked child the descriptor is `/dev/null` by now.
        let fd = self.0.as_raw_fd();
        registry().retain(|e| e.fd != fd);
    }
}

/// A process's state for one cache file.
pub(super) struct Shared {
    pub(super) paths: Paths,
    fork_generation: u64,
    lock: ProcessLock,
    state: RwLock<State>,
    pub(super) settings: Settings,
    /// Writes made by `Durability::Periodic` handles, and how many of them
    /// were covered by a completed sync.
    pub(super) written: AtomicU64,
    synced: AtomicU64,
    /// `Durability::Periodic`'s background thread, once started, and its
    /// interval in nanoseconds (the shortest any handle asked for).
    flusher: OnceLock<std::thread::Thread>,
    flush_every: AtomicU64,
    pub(super) syncs: AtomicU64,
    pub(super) compaction_failures: AtomicU64,
    /// This process's own state, opened after a fork.
    forked: OnceLock<Arc<Shared>>,
    /// Taken to start `flusher` once (only in the process that owns this
    /// state: a forked child opens its own).
    starting: Mutex<()>,
}

impl Shared {
    /// The state for the cache file at `given` in this process: the one
    /// already open, or a new one.
    pub(super) fn open(given: &Path, options: &Options) -> Result<Arc<Shared>> {
        let shared = Self::find_or_build(given, options)?;
        if let super::Durability::Periodic(every) = options.durability {
            shared
                .flush_within(every)
                .map_err(|e| Error::io("the Periodic durability sync thread", e))?;
        }
        Ok(shared)
    }

    fn find_or_build(given: &Path, options: &Options) -> Result<Arc<Shared>> {
        install_fork_handlers()?;
        let paths = Paths::resolve(given, options.allow_network_fs)?;
        let (file, id) = match open_lock(&paths, options.mode)? {
            Ok(opened) => opened,
            Err(shared) => return Ok(shared),
        };
        let fd = file.as_raw_fd();
        let settings = Settings::of(options);
        let lock =
            ProcessLock::new(file, id, &paths.lock).map_err(|e| Error::io(&paths.given, e))?;
        let state = State::load(&paths, &settings, &lock.exclusive(&paths.lock)?)?;
        let shared = Arc::new(Shared {
            paths,
            fork_generation: FORK_GENERATION.load(Ordering::Relaxed),
            lock,
            state: RwLock::new(state),
            settings,
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            flusher: OnceLock::new(),
            flush_every: AtomicU64::new(u64::MAX),
            syncs: AtomicU64::new(0),
            compaction_failures: AtomicU64::new(0),
            forked: OnceLock::new(),
            starting: Mutex::new(()),
        });
        let mut entries = registry();
        if let Some(winner) = live(&entries, id) {
            // Another thread opened the same file meanwhile: share its
            // state; ours unregisters as it drops, after the registry.
            drop(entries);
            return Ok(winner);
        }
        if let Some(entry) = entries.iter_mut().find(|e| e.fd == fd) {
            entry.shared = Arc::downgrade(&shared);
        }
        Ok(shared)
    }

    /// The state this process uses: `self`, or after a fork the child's own
    /// (opened on first use, with `options`).
    #[inline]
    pub(super) fn current(&self, options: &Options) -> Result<&Shared> {
        if self.fork_generation == FORK_GENERATION.load(Ordering::Relaxed) {
            return Ok(self);
        }
        self.after_fork(options)
    }

    /// The state this process has opened for the file, if any: like
    /// [`current`](Self::current), but never opens one after a fork.
    pub(super) fn opened_here(&self) -> Option<&Shared> {
        if self.fork_generation == FORK_GENERATION.load(Ordering::Relaxed) {
            return Some(self);
        }
        self.forked.get()?.opened_here()
    }

    #[cold]
    fn after_fork(&self, options: &Options) -> Result<&Shared> {
        if let Some(child) = self.forked.get() {
            return child.current(options);
        }
        // No mutex: one of ours could have been held, at the fork, by a
        // thread the child does not have. Threads of the child that race
        // here get the same state from the registry, and one `set` wins.
        let child = Shared::open(&self.paths.data, options)?;
        let _ = self.forked.set(child);
        self.forked
            .get()
            .expect("set above, or by a racing thread")
            .current(options)
    }

    #[inline]
    pub(super) fn read(&self) -> RwLockReadGuard<'_, State> {
        lock_poisoned(self.state.read())
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, State> {
        lock_poisoned(self.state.write())
    }

    /// Blocks until this thread holds the exclusive lock.
    pub(super) fn exclusive(&self) -> Result<Exclusive<'_>> {
        self.lock.exclusive(&self.paths.lock)
    }

    /// Under the exclusive lock: moves `state` to the file now at the data
    /// path if that is another (compacted by another process, created anew
    /// after a removal, or replaced by hand), then catches it up.
    ///
    /// The full check, a `stat` of the lock path and of the data path, runs
    /// when `force`, when the file is flagged superseded, when the lock
    /// file's data epoch moved (another process put a new data file at the
    /// path), and otherwise at most every [`FULL_CHECK_EVERY`]; a write
    /// between checks costs no system call for it.
    pub(super) fn follow(
        &self,
        lock: &mut Exclusive<'_>,
        state: &mut State,
        force: bool,
    ) -> Result<()> {
        let due = force
            || state.superseded()
            || state.epoch != lock.epoch()
            || Instant::now() >= lock.next_full_check;
        if due {
            lock.ensure_current(&self.paths.lock, |old| {
                relock(&self.paths, self.settings.mode, old)
            })?;
            state.refresh(&self.paths, &self.settings, lock)?;
            lock.next_full_check = Instant::now() + FULL_CHECK_EVERY;
            self.catch_up(state)?;
            state.drop_dropped();
            return Ok(());
        }
        self.catch_up(state)
    }

    /// Catches `state` up with the records other processes committed:
    /// remaps when the file outgrew the mapping, and indexes the new
    /// records. Needs no lock between processes: the records below the
    /// committed length never change.
    pub(super) fn catch_up(&self, state: &mut State) -> Result<()> {
        let committed = state.committed();
        if committed < state.indexed() {
            // The committed length went back: only writers that did not
            // exclude each other (a lock file deleted under them) can do
            // that, and what this state indexed past it may be gone. Index
            // the file afresh, so that records appended from here on are
            // seen.
            state.reindex();
        }
        let active = &mut state.active_slot_mut().seg;
        if committed > active.map.len() as u64 {
            active.map = Arc::new(
                map_file(&active.file, committed, self.settings.growth)
                    .map_err(|e| Error::io(&self.paths.given, e))?,
            );
        }
        state.scan(committed);
        state.sweep();
        Ok(())
    }

    /// The write buffer's capacity, for tests.
    #[cfg(test)]
    pub(super) fn buffer_capacity(&self) -> usize {
        self.lock.buffer_capacity()
    }

    /// Whether a write of a `Durability::Periodic` handle is not yet
    /// covered by a completed sync.
    pub(super) fn unsynced(&self) -> bool {
        self.written.load(Ordering::Acquire) > self.synced.load(Ordering::Acquire)
    }

    /// Forces what was written to stable storage: the records, then the
    /// header page that commits them. No lock is held while the disk works.
    /// Returns once every write counted before the call is durable: a sync
    /// that another thread has under way is not taken for this one.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        let covers = self.written.load(Ordering::Acquire);
        // Every segment: one this process wrote may have been sealed by
        // another since (syncing a file with nothing unsynced costs little).
        let (files, map): (Vec<Arc<File>>, Arc<MmapRaw>) = {
            let state = self.read();
            let files = state.segments().map(|(seg, _)| seg.file.clone()).collect();
            (files, state.active().map.clone())
        };
        for file in files {
            file.sync_data()?;
        }
        map.flush_range(0, super::format::HEADER_SIZE as usize)?;
        self.synced.fetch_max(covers, Ordering::AcqRel);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes sure a background thread syncs unsynced writes at most `every`
    /// after they were made; fails when no thread can be started.
    pub(super) fn flush_within(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        let nanos = u64::try_from(every.as_nanos()).unwrap_or(u64::MAX);
        let before = self.flush_every.fetch_min(nanos, Ordering::AcqRel);
        if let Some(thread) = self.flusher.get() {
            if nanos < before {
                thread.unpark(); // the running thread takes the shorter interval now
            }
            return Ok(());
        }
        let _starting = lock_poisoned(self.starting.lock());
        if self.flusher.get().is_none() {
            let weak = Arc::downgrade(self);
            let handle = std::thread::Builder::new()
                .name("layercache-flush".into())
                .spawn(move || flush_loop(weak))?;
            let _ = self.flusher.set(handle.thread().clone());
        }
        Ok(())
    }
}

/// `Durability::Periodic`'s background thread: every interval, syncs what
/// was written since the last sync; ends once its state is dropped.
fn flush_loop(shared: Weak<Shared>) {
    loop {
        let every = match shared.upgrade() {
            Some(shared) => Duration::from_nanos(shared.flush_every.load(Ordering::Acquire)),
            None => return,
        };
        std::thread::park_timeout(every);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.unsynced() {
            // An error is retried on the next round (the writes stay
            // unsynced); `Durability::Sync` is for callers that must hear
            // of it.
            let _ = shared.sync();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The lock descriptor unregisters itself as the fields drop.
        if let Some(flusher) = self.flusher.get() {
            flusher.unpark(); // let it see we are gone
        }
        // Hint writers and segment releasers finish before the last handle
        // is gone. Only in the process that started them: a forked child
        // has none of its parent's threads to wait for.
        if self.fork_generation == FORK_GENERATION.load(Ordering::Relaxed) {
            self.settings.background.join_all();
        } else {
            self.settings.background.forget_all();
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}
