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

mod compact;
mod format;
mod index;
mod lock;
mod log;
mod options;
mod state;
mod verify;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

pub use self::options::{Durability, FileCacheBuilder};
pub use self::verify::{Damage, Verification};

use self::format::{HEADER_SIZE, Kind, crc};
use self::index::Loc;
use self::lock::LockFile;
use self::options::Options;
use self::state::{State, map_file};
use crate::cache::Cache;
use crate::error::{Error, Result};

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

fn lock_poisoned<T>(result: std::result::Result<T, PoisonError<T>>) -> T {
    // Every mutation of the state is completed or abandoned before a panic
    // can unwind (nothing here panics mid-update on valid data), so a
    // poisoned lock still guards a usable state.
    result.unwrap_or_else(PoisonError::into_inner)
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

impl FileCacheBuilder {
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
