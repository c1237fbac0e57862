//! [`FileCache`]: a memory-mapped, crash-safe cache file that many
//! processes share.
//!
//! The file is a log (in the manner of Bitcask): a header page, then
//! append-only records, each a put or a tombstone with checksums. Every
//! process keeps its own index (key → record) built by scanning the file
//! when it opens, and caught up by scanning the new tail whenever the
//! header's committed length has moved. Reads go through a shared memory map
//! and cost no system call; writes append with `pwrite` under an OS lock on
//! `<path>.lock`, then advance the committed length in the mapped header.
//! Compaction writes the live records to a new file and renames it over the
//! old one; other processes notice a flag in the old header and follow.
//!
//! The byte layout is in `docs/file-format.md`.

mod format;
mod index;
mod lock;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};

use self::format::{HEADER_SIZE, Kind, RECORD_HEADER_SIZE, crc};
use self::index::{Index, Loc};
use self::lock::LockFile;
use crate::cache::Cache;
use crate::error::{Error, Result};

/// When a [`FileCache`] forces its writes to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Never: a write is in the OS's page cache when `set` returns. It
    /// survives the process being killed at any moment, not an OS crash or
    /// a power loss. The default, and the fastest.
    #[default]
    Buffered,
    /// `fdatasync` after every write: a write that returned survives an OS
    /// crash. Costs a disk flush per write.
    Sync,
    /// `fdatasync` on a write when at least this long has passed since the
    /// last one: bounds what an OS crash can lose to about this window.
    Periodic(Duration),
}

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

/// Options for opening a [`FileCache`]: see [`FileCache::builder`].
#[derive(Debug, Clone)]
pub struct FileCacheBuilder {
    path: PathBuf,
    options: Options,
}

#[derive(Debug, Clone)]
struct Options {
    durability: Durability,
    compact_ratio: f64,
    compact_min_bytes: u64,
    growth: u64,
    max_key_len: usize,
    max_value_len: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::Buffered,
            compact_ratio: 0.5,
            compact_min_bytes: 4 * 1024 * 1024,
            growth: 64 * 1024 * 1024,
            max_key_len: 64 * 1024,
            max_value_len: 256 * 1024 * 1024,
        }
    }
}

impl FileCacheBuilder {
    /// When writes are forced to disk (default [`Durability::Buffered`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.options.durability = durability;
        self
    }

    /// Compact automatically, after a write, once dead records (overwritten
    /// or removed values, tombstones) are at least `ratio` of the records'
    /// bytes and at least `min_bytes` (defaults 0.5 and 4 MiB). A ratio
    /// above 1 turns automatic compaction off; [`FileCache::compact`] still
    /// works.
    pub fn compact_when(mut self, ratio: f64, min_bytes: u64) -> Self {
        self.options.compact_ratio = ratio;
        self.options.compact_min_bytes = min_bytes;
        self
    }

    /// How far past the file's end the memory map reaches (default 64 MiB,
    /// rounded to whole pages): appends by any process within that reach
    /// are read without remapping. Address space, not memory.
    pub fn growth(mut self, bytes: u64) -> Self {
        self.options.growth = bytes.max(HEADER_SIZE).div_ceil(HEADER_SIZE) * HEADER_SIZE;
        self
    }

    /// The largest key accepted, in bytes (default 64 KiB).
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.options.max_key_len = bytes.min(u32::MAX as usize);
        self
    }

    /// The largest value accepted, in bytes (default 256 MiB, at most
    /// 4 GiB - 1).
    pub fn max_value_len(mut self, bytes: usize) -> Self {
        self.options.max_value_len = bytes.min(u32::MAX as usize);
        self
    }

    /// Opens the cache file, creating it (readable and writable by its owner
    /// only) if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Format`] when the file is not a cache file, is of a newer
    /// format version, or has a damaged header (the file is not touched);
    /// [`Error::Io`] when it cannot be opened.
    pub fn open(self) -> Result<FileCache> {
        let lock = LockFile::open(&self.path)?;
        let state = {
            let _exclusive = lock.exclusive()?;
            State::load(&self.path, &self.options)?
        };
        Ok(FileCache {
            path: self.path,
            options: self.options,
            lock,
            state: RwLock::new(state),
            writer: Mutex::new(Writer {
                buf: Vec::new(),
                last_sync: Instant::now(),
            }),
        })
    }
}

/// A cache in one file, shared by any number of threads and processes.
///
/// - **Persistent**: everything set is there after the process exits and
///   the file is reopened.
/// - **Shared**: any number of processes may open one path and read and
///   write at once; a value one sets is returned by another's next `get`,
///   and a removal is seen likewise, with no reopening.
/// - **Fast reads**: a hit is an index lookup and a copy out of the memory
///   map, with its checksum checked: no system call.
/// - **Crash safe**: a process killed at any moment leaves a file that
///   opens, with every write that returned.
/// - **Damage contained**: a damaged record reads as missing, never as
///   wrong bytes, and [`verify`](FileCache::verify) says where it is.
///
/// It is a `Cache<String, Vec<u8>>` and a `Cache<Vec<u8>, Vec<u8>>`: wrap it
/// in a [`Serialised`](crate::Serialised) for typed values.
///
/// Unix only (it relies on `pwrite`, shared memory maps and `flock`). Do not
/// truncate or rewrite a cache file from outside while it is open: a
/// process reading a mapped page that no longer exists gets SIGBUS.
///
/// # Example
///
/// ```
/// use layercache::{Cache, FileCache};
///
/// # fn main() -> layercache::Result<()> {
/// let dir = std::env::temp_dir().join(format!("layercache-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("cache.lc");
/// {
///     let cache = FileCache::open(&path)?;
///     cache.set("greeting".to_string(), b"hello".to_vec())?;
/// }
/// let cache = FileCache::open(&path)?; // a later run, or another process
/// assert_eq!(cache.get(&"greeting".to_string())?, Some(b"hello".to_vec()));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
pub struct FileCache {
    path: PathBuf,
    options: Options,
    lock: LockFile,
    state: RwLock<State>,
    writer: Mutex<Writer>,
}

struct Writer {
    buf: Vec<u8>,
    last_sync: Instant,
}

/// One process's view of one file: the mapping and the index.
struct State {
    file: File,
    map: MmapRaw,
    generation: u64,
    index: Index,
    /// Records below this offset are in the index.
    indexed: u64,
}

fn lock_poisoned<T>(result: std::result::Result<T, PoisonError<T>>) -> T {
    // Every mutation of the state is completed or abandoned before a panic
    // can unwind (nothing here panics mid-update on valid data), so a
    // poisoned lock still guards a usable state.
    result.unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Opens `path` and indexes it. The caller holds the exclusive lock, so
    /// nobody is writing: a new file gets its header, and a torn tail past
    /// the committed length is cut off.
    fn load(path: &Path, options: &Options) -> Result<State> {
        let io = |e| Error::io(path, e);
        let format_error = |reason: String| Error::Format {
            path: path.to_owned(),
            reason,
        };
        let file = open_private(path, false)?;
        let meta = file.metadata().map_err(io)?;
        let mut len = meta.len();
        if len == 0 {
            file.write_all_at(&format::new_header(0), 0).map_err(io)?;
            file.sync_all().map_err(io)?;
            len = HEADER_SIZE;
        }
        if len < HEADER_SIZE {
            return Err(format_error(format!(
                "{len} bytes is shorter than a cache file's header: not a layercache file"
            )));
        }
        let mut header = vec![0u8; HEADER_SIZE as usize];
        file.read_exact_at(&mut header, 0).map_err(io)?;
        let generation = format::check_header(&header).map_err(|p| format_error(p.to_string()))?;
        let map = map_file(&file, len, options.growth).map_err(io)?;
        let mut state = State {
            file,
            map,
            generation,
            index: Index::default(),
            indexed: HEADER_SIZE,
        };
        let mut committed = state.committed();
        if committed < HEADER_SIZE || committed > len || !committed.is_multiple_of(format::ALIGN) {
            // The file was cut short from outside, or the header's length was
            // damaged: keep every whole record that is there.
            committed = state.valid_end(len);
        }
        if state.scan(committed) == ScanEnd::InsideRecord {
            // The committed length points into a record: it is damaged (a
            // writer only ever advances it to a record's end). Keep every
            // whole record in the file instead of cutting one in half.
            committed = state.valid_end(len);
            state.index = Index::default();
            state.indexed = HEADER_SIZE;
            state.scan(committed);
        }
        if len > committed {
            // A write that never returned: cut it off so the file holds only
            // committed records. Nobody reads past the committed length.
            state.file.set_len(committed).map_err(io)?;
        }
        state.committed_atomic().store(committed, Ordering::Release);
        // Under the exclusive lock no compaction is under way, so a flag on
        // the file at the path is from a compaction that died before its
        // rename: this file is still the live one.
        if state.superseded() {
            state.superseded_flag().store(0, Ordering::Release);
        }
        Ok(state)
    }

    fn atomic_u64(&self, at: usize) -> &AtomicU64 {
        // SAFETY: `at` is one of the header's 8-byte-aligned u64 fields
        // (H_COMMITTED), inside the first page, which every mapping covers
        // (files are at least HEADER_SIZE long and mappings start at 0 and
        // are page aligned). The field is only ever accessed atomically, by
        // this process and by every other (they map the same page shared),
        // and the reference does not outlive `self.map`.
        unsafe { &*(self.map.as_ptr().add(at) as *const AtomicU64) }
    }

    fn committed_atomic(&self) -> &AtomicU64 {
        self.atomic_u64(format::H_COMMITTED)
    }

    fn committed(&self) -> u64 {
        self.committed_atomic().load(Ordering::Acquire)
    }

    fn superseded_flag(&self) -> &AtomicU32 {
        // SAFETY: as in `atomic_u64`: H_SUPERSEDED is a 4-byte-aligned u32 in
        // the first page, only ever accessed atomically.
        unsafe { &*(self.map.as_ptr().add(format::H_SUPERSEDED) as *const AtomicU32) }
    }

    fn superseded(&self) -> bool {
        self.superseded_flag().load(Ordering::Acquire) != 0
    }

    /// The end of the last whole, valid record at or below `limit`.
    fn valid_end(&self, limit: u64) -> u64 {
        let mut end = HEADER_SIZE;
        walk(mapped(&self.map, 0, limit), HEADER_SIZE, |at, record| {
            if let Walked::Record(header, _) = record {
                end = at + header.total_len();
            }
        });
        end
    }

    /// Indexes the records in `self.indexed..to`, and says whether `to`
    /// fell inside a record.
    fn scan(&mut self, to: u64) -> ScanEnd {
        if to <= self.indexed {
            return ScanEnd::Clean;
        }
        let index = &mut self.index;
        let file = mapped(&self.map, 0, to);
        let mut end = ScanEnd::Clean;
        walk(file, self.indexed, |at, record| match record {
            Walked::Record(header, key) => match header.kind {
                Kind::Put => {
                    let loc = Loc {
                        record: at,
                        key_len: header.key_len,
                        value_len: header.value_len,
                        key_crc: header.key_crc,
                        value_crc: header.value_crc,
                    };
                    index.insert(file, key, loc);
                }
                Kind::Tombstone => {
                    index.remove(file, key);
                }
            },
            Walked::DamagedKey { key_crc } => {
                // A record for an unknown key whose checksum is `key_crc`: an
                // older value of that key must not be served in its place,
                // so forget every such key written before it.
                index.retain(|loc| !(loc.record < at && loc.key_crc == key_crc));
            }
            Walked::Damaged(Damaged::Header) => {
                // A record we cannot read at all may have overwritten or
                // removed any key. Its key bytes most likely survive where a
                // key starts: forget every older key found there, so that an
                // older value is never served in place of the lost one (a
                // key that merely shares a prefix is forgotten too: it reads
                // as missing, which is safe).
                let key_at = at as usize + RECORD_HEADER_SIZE;
                let here = file.get(key_at..).unwrap_or_default();
                index.retain(|loc| !(loc.record < at && here.starts_with(loc.key(file))));
            }
            Walked::Damaged(Damaged::PastEnd) => end = ScanEnd::InsideRecord,
        });
        self.indexed = to;
        end
    }

    /// The indexed part of the file, from offset 0.
    fn file(&self) -> &[u8] {
        mapped(&self.map, 0, self.indexed)
    }

    /// Bytes of indexed records that no live entry points at.
    fn garbage(&self) -> u64 {
        self.indexed - HEADER_SIZE - self.index.live_bytes()
    }
}

/// The mapped bytes in `from..to`, which must lie below a committed length
/// this process has read.
fn mapped(map: &MmapRaw, from: u64, to: u64) -> &[u8] {
    debug_assert!(from <= to && to <= map.len() as u64);
    // SAFETY: callers pass ranges below a committed length they loaded (with
    // Acquire ordering) from the header, and within the mapping (`catch_up`
    // and `append` remap before indexing anything beyond it). Those bytes
    // were written before the committed length was advanced past them, and
    // no process using this crate ever writes them again: records are
    // append-only, compaction writes a new file, and the only truncation
    // cuts bytes past the committed length. They also lie within the file
    // (the committed length never exceeds its size), so no access touches a
    // page past the end of the file. The one caller that reads past a
    // committed length, `State::load` repairing a damaged header, stops at
    // the file's size and holds the exclusive lock, so nobody writes those
    // bytes meanwhile. The slice borrows `map`, so it cannot outlive the
    // mapping.
    unsafe { std::slice::from_raw_parts(map.as_ptr().add(from as usize), (to - from) as usize) }
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanEnd {
    /// At a record boundary, or after damage the walk resynced past.
    Clean,
    /// Inside a record whose header is valid: the end is not a boundary.
    InsideRecord,
}

/// Bytes that are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damaged {
    /// A record header that fails its checks.
    Header,
    /// A valid record header whose record runs past the end.
    PastEnd,
}

impl Damaged {
    fn problem(self) -> &'static str {
        match self {
            Damaged::Header => "damaged record header",
            Damaged::PastEnd => "record runs past the committed end",
        }
    }
}

/// What [`walk`] found at an offset.
enum Walked<'a> {
    /// A record with a valid header and key.
    Record(format::RecordHeader, &'a [u8]),
    /// A record with a valid header whose key fails its checksum.
    DamagedKey { key_crc: u32 },
    /// Bytes that are not a valid record; the walk resumed at the next
    /// valid record header (or stopped, past the end).
    Damaged(Damaged),
}

/// Walks the records of `bytes` from `from`, calling `visit` for each
/// record and damaged place. Never reads past `bytes`.
fn walk<'a>(bytes: &'a [u8], from: u64, mut visit: impl FnMut(u64, Walked<'a>)) {
    let end = bytes.len() as u64;
    let mut at = from;
    while at + RECORD_HEADER_SIZE as u64 <= end {
        let here = &bytes[at as usize..];
        match format::decode_record_header(here) {
            Some(header) if at + header.total_len() <= end => {
                let key = &here[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + header.key_len as usize];
                if crc(key) == header.key_crc {
                    visit(at, Walked::Record(header, key));
                } else {
                    visit(
                        at,
                        Walked::DamagedKey {
                            key_crc: header.key_crc,
                        },
                    );
                }
                at += header.total_len();
            }
            Some(_) => {
                // A valid header whose record runs past the end: a torn
                // tail (only possible below a damaged committed length).
                visit(at, Walked::Damaged(Damaged::PastEnd));
                return;
            }
            None => {
                visit(at, Walked::Damaged(Damaged::Header));
                at = resync(bytes, at + format::ALIGN);
            }
        }
    }
}

/// The offset of the next valid record header at or after `from`, or the
/// end of `bytes`.
fn resync(bytes: &[u8], from: u64) -> u64 {
    let end = bytes.len() as u64;
    let mut at = from;
    while at + RECORD_HEADER_SIZE as u64 <= end {
        let here = &bytes[at as usize..];
        if format::decode_record_header(here).is_some_and(|h| at + h.total_len() <= end) {
            return at;
        }
        at += format::ALIGN;
    }
    end
}

/// `path` with `suffix` appended (`cache.lc` → `cache.lc.lock`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens `path` read-write, creating it readable and writable by its owner
/// only, emptied first if `truncate`.
fn open_private(path: &Path, truncate: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Maps `file` shared, read-write, covering at least `len` bytes plus room
/// to grow. Pages past the end of the file are never touched.
fn map_file(file: &File, len: u64, growth: u64) -> std::io::Result<MmapRaw> {
    let reach = len.saturating_add(growth).div_ceil(growth) * growth;
    let reach =
        usize::try_from(reach).map_err(|_| std::io::Error::other("file too large to map"))?;
    MmapOptions::new().len(reach).map_raw(file)
}

impl FileCache {
    /// Opens the cache file at `path` with default options, creating it if
    /// need be. See [`FileCacheBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).open()
    }

    /// Options for opening the cache file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> FileCacheBuilder {
        FileCacheBuilder {
            path: path.as_ref().to_owned(),
            options: Options::default(),
        }
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of live entries, as of the last write seen.
    pub fn len(&self) -> Result<usize> {
        Ok(self.fresh()?.index.len())
    }

    /// Whether there are no live entries.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The file's generation: 0 when created, one more at each compaction.
    pub fn generation(&self) -> Result<u64> {
        Ok(self.fresh()?.generation)
    }

    /// Bytes of dead records (overwritten or removed values, tombstones)
    /// that compaction would reclaim.
    pub fn garbage_bytes(&self) -> Result<u64> {
        Ok(self.fresh()?.garbage())
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        lock_poisoned(self.state.read())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        lock_poisoned(self.state.write())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        lock_poisoned(self.writer.lock())
    }

    /// The state, caught up with every write committed before the call.
    fn fresh(&self) -> Result<RwLockReadGuard<'_, State>> {
        {
            let state = self.read_state();
            if !state.superseded() && state.committed() == state.indexed {
                return Ok(state);
            }
        }
        self.catch_up(&mut self.write_state(), false)?;
        Ok(self.read_state())
    }

    /// Catches `state` up: follows a compaction to the new file, remaps when
    /// the file outgrew the mapping, and indexes new records. `locked` says
    /// whether the caller holds the exclusive lock already: an `flock` does
    /// not nest, so taking it again and dropping the inner guard would
    /// release the caller's lock too.
    fn catch_up(&self, state: &mut State, locked: bool) -> Result<()> {
        while state.superseded() {
            let _exclusive = if locked {
                None
            } else {
                Some(self.lock.exclusive()?)
            };
            *state = State::load(&self.path, &self.options)?;
        }
        let committed = state.committed();
        if committed > state.map.len() as u64 {
            state.map = map_file(&state.file, committed, self.options.growth)
                .map_err(|e| Error::io(&self.path, e))?;
        }
        state.scan(committed);
        Ok(())
    }

    /// Runs `write` holding this process's writer lock, the OS lock and the
    /// state, caught up and on the current file.
    fn with_writer<T>(
        &self,
        write: impl FnOnce(&mut Writer, &mut State) -> Result<T>,
    ) -> Result<T> {
        let mut writer = self.writer();
        let _exclusive = self.lock.exclusive()?;
        let mut state = self.write_state();
        self.catch_up(&mut state, true)?;
        write(&mut writer, &mut state)
    }

    /// Appends the encoded records in `buf` at the committed end and indexes
    /// them. The caller holds the locks (`with_writer`).
    fn append(&self, writer: &mut Writer, state: &mut State) -> Result<()> {
        let io = |e| Error::io(&self.path, e);
        let at = state.committed();
        let end = at + writer.buf.len() as u64;
        if let Err(e) = state.file.write_all_at(&writer.buf, at) {
            // Nothing past the committed length is ever read; give back
            // what the failed write took, if the file system lets us.
            let _ = state.file.set_len(at);
            return Err(io(e));
        }
        let sync = match self.options.durability {
            Durability::Buffered => false,
            Durability::Sync => true,
            Durability::Periodic(every) => writer.last_sync.elapsed() >= every,
        };
        if sync {
            state.file.sync_data().map_err(io)?;
        }
        if end > state.map.len() as u64 {
            state.map = map_file(&state.file, end, self.options.growth).map_err(io)?;
        }
        state.committed_atomic().store(end, Ordering::Release);
        if sync {
            state.map.flush_range(0, HEADER_SIZE as usize).map_err(io)?;
            writer.last_sync = Instant::now();
        }
        state.scan(end);
        self.maybe_compact(state)
    }

    fn maybe_compact(&self, state: &mut State) -> Result<()> {
        let records = state.indexed - HEADER_SIZE;
        let garbage = state.garbage();
        if garbage >= self.options.compact_min_bytes
            && garbage as f64 >= self.options.compact_ratio * records as f64
        {
            self.rewrite(state, true)?;
        }
        Ok(())
    }

    /// Writes the live records (none unless `keep_live`) to a new file,
    /// renames it over the old one and flags the old one superseded. The
    /// caller holds the locks.
    fn rewrite(&self, state: &mut State, keep_live: bool) -> Result<()> {
        let tmp = sibling(&self.path, ".compact");
        let io_tmp = |e| Error::io(&tmp, e);
        // Under the exclusive lock, a file left here is from a compaction
        // that died: replace it.
        let file = open_private(&tmp, true)?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&format::new_header(state.generation + 1))
            .map_err(io_tmp)?;
        let mut end = HEADER_SIZE;
        let mut record = Vec::new();
        let old = state.file();
        for loc in state.index.iter().filter(|_| keep_live) {
            let Some(key) = loc.checked_key(old) else {
                continue; // damaged since it was indexed: drop it
            };
            let value = loc.value(old);
            if crc(value) != loc.value_crc {
                continue; // damaged: it reads as missing, so it is dropped
            }
            record.clear();
            format::encode_record(Kind::Put, key, value, &mut record);
            out.write_all(&record).map_err(io_tmp)?;
            end += record.len() as u64;
        }
        out.flush().map_err(io_tmp)?;
        drop(out);
        file.write_all_at(&end.to_le_bytes(), format::H_COMMITTED as u64)
            .map_err(io_tmp)?;
        file.sync_all().map_err(io_tmp)?;
        // Flag the old file first: a process that sees the flag reopens the
        // path, which blocks on the lock we hold until the rename is done.
        // If we die before the rename, the next `load` finds the flag on the
        // file still at the path and clears it.
        state.superseded_flag().store(1, Ordering::Release);
        if let Err(e) = std::fs::rename(&tmp, &self.path) {
            state.superseded_flag().store(0, Ordering::Release);
            return Err(Error::io(&self.path, e));
        }
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // Make the rename itself durable; not every platform lets a
            // directory be opened and synced, and the data is safe either way.
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        *state = State::load(&self.path, &self.options)?;
        Ok(())
    }

    /// Rewrites the file with only its live records, reclaiming the space
    /// of overwritten and removed values. Other processes follow to the new
    /// file on their next call and lose nothing.
    pub fn compact(&self) -> Result<()> {
        self.with_writer(|_, state| self.rewrite(state, true))
    }

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
                let value_at = (at + header.value_offset()) as usize;
                let value = &bytes[value_at..value_at + header.value_len as usize];
                if crc(value) != header.value_crc {
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

    fn check_sizes(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.len() > self.options.max_key_len {
            return Err(Error::TooLarge {
                what: "key",
                size: key.len(),
                limit: self.options.max_key_len,
            });
        }
        if value.len() > self.options.max_value_len {
            return Err(Error::TooLarge {
                what: "value",
                size: value.len(),
                limit: self.options.max_value_len,
            });
        }
        Ok(())
    }

    fn get_bytes(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let state = self.fresh()?;
        Ok(state
            .index
            .get(state.file(), key)
            .and_then(|loc| read_value(&state, loc)))
    }

    fn set_bytes(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_sizes(key, value)?;
        self.with_writer(|writer, state| {
            writer.buf.clear();
            format::encode_record(Kind::Put, key, value, &mut writer.buf);
            self.append(writer, state)
        })
    }

    fn remove_bytes(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if key.len() > self.options.max_key_len {
            return Ok(None); // never stored
        }
        self.with_writer(|writer, state| {
            let Some(loc) = state.index.get(state.file(), key).copied() else {
                return Ok(None);
            };
            let old = read_value(state, &loc);
            writer.buf.clear();
            format::encode_record(Kind::Tombstone, key, &[], &mut writer.buf);
            self.append(writer, state)?;
            Ok(old)
        })
    }

    fn keys_bytes(&self) -> Result<Vec<Vec<u8>>> {
        let state = self.fresh()?;
        let file = state.file();
        Ok(state
            .index
            .iter()
            .filter_map(|loc| loc.checked_key(file).map(<[u8]>::to_vec))
            .collect())
    }

    /// Writes one tombstone per key in `keys` still present; returns how many.
    fn remove_all(&self, keys: &[Vec<u8>]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.with_writer(|writer, state| {
            writer.buf.clear();
            let mut removed = 0;
            for key in keys {
                if state.index.get(state.file(), key).is_some() {
                    format::encode_record(Kind::Tombstone, key, &[], &mut writer.buf);
                    removed += 1;
                }
            }
            if removed > 0 {
                self.append(writer, state)?;
            }
            Ok(removed)
        })
    }

    /// Removes every entry by replacing the file with an empty one (a
    /// compaction that keeps nothing), whatever the key type.
    pub fn clear(&self) -> Result<()> {
        self.with_writer(|_, state| self.rewrite(state, false))
    }
}

/// The value at `loc`, or `None` when it or its key fails its checksum
/// (the file was damaged after the record was indexed).
fn read_value(state: &State, loc: &Loc) -> Option<Vec<u8>> {
    let file = state.file();
    loc.checked_key(file)?;
    let value = loc.value(file);
    (crc(value) == loc.value_crc).then(|| value.to_vec())
}

impl Cache<Vec<u8>, Vec<u8>> for FileCache {
    fn get(&self, key: &Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.get_bytes(key)
    }
    fn set(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.set_bytes(&key, &value)
    }
    fn remove(&self, key: &Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.remove_bytes(key)
    }
    fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.keys_bytes()
    }
    fn values(&self) -> Result<Vec<Vec<u8>>> {
        let state = self.fresh()?;
        Ok(state
            .index
            .iter()
            .filter_map(|loc| read_value(&state, loc))
            .collect())
    }
    fn clear(&self) -> Result<()> {
        FileCache::clear(self)
    }
    fn clear_matching(&self, matches: &dyn Fn(&Vec<u8>) -> bool) -> Result<usize> {
        // The predicate runs with no lock held, so it may use this cache.
        let mut keys = self.keys_bytes()?;
        keys.retain(|k| matches(k));
        self.remove_all(&keys)
    }
}

/// String keys are stored as their UTF-8 bytes. Keys that are not UTF-8
/// (written through the byte-keyed interface) are left out of `keys`.
impl Cache<String, Vec<u8>> for FileCache {
    fn get(&self, key: &String) -> Result<Option<Vec<u8>>> {
        self.get_bytes(key.as_bytes())
    }
    fn set(&self, key: String, value: Vec<u8>) -> Result<()> {
        self.set_bytes(key.as_bytes(), &value)
    }
    fn remove(&self, key: &String) -> Result<Option<Vec<u8>>> {
        self.remove_bytes(key.as_bytes())
    }
    fn keys(&self) -> Result<Vec<String>> {
        Ok(self
            .keys_bytes()?
            .into_iter()
            .filter_map(|k| String::from_utf8(k).ok())
            .collect())
    }
    fn values(&self) -> Result<Vec<Vec<u8>>> {
        Cache::<Vec<u8>, Vec<u8>>::values(self)
    }
    fn clear(&self) -> Result<()> {
        FileCache::clear(self)
    }
    fn clear_matching(&self, matches: &dyn Fn(&String) -> bool) -> Result<usize> {
        let mut keys = Cache::<String, Vec<u8>>::keys(self)?;
        keys.retain(|k| matches(k));
        let keys: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
        self.remove_all(&keys)
    }
}

impl fmt::Debug for FileCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.read_state().index.len();
        write!(f, "File({:?}, {entries} entries)", self.path)
    }
}
