//! The path is not the file: resolving the names a cache file is opened by
//! to one file, and creating and replacing files without changing who may
//! open them.
//!
//! Invariants kept here:
//! - Every handle on one data file, whatever name it was opened by (a
//!   symbolic link, a relative path), locks the same lock file: the data
//!   path is resolved to its real path before the lock path is derived, and
//!   compaction renames onto the real path, so a symbolic link stays a link.
//! - A data file with more than one hard link is refused: its other names
//!   would derive other lock files.
//! - A file is identified by (device, inode), never by its name: names are
//!   re-checked against the open file after the lock is taken.
//! - New files get exactly the configured mode, whatever the umask; a file
//!   that replaces another (compaction) gets the old one's mode, group and
//!   owner, as far as the process may set them.

use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{ErrorKind, Read as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::format::MAGIC;
use crate::error::{Error, Result};

/// A file's identity: (device, inode).
pub(super) type Ident = (u64, u64);

/// The identity of the file `meta` describes.
pub(super) fn ident(meta: &Metadata) -> Ident {
    (meta.dev(), meta.ino())
}

/// The names one cache uses.
#[derive(Debug, Clone)]
pub(super) struct Paths {
    /// The path as given, for messages.
    pub(super) given: PathBuf,
    /// The data file's real path: symbolic links resolved.
    pub(super) data: PathBuf,
    /// The lock file, beside the real data file.
    pub(super) lock: PathBuf,
    /// Compaction's new file, beside the real data file.
    pub(super) compact: PathBuf,
    /// A new active segment, beside the real data file, while a writer
    /// seals the one at the path.
    pub(super) next: PathBuf,
}

fn refused(given: &Path, reason: impl Into<String>) -> Error {
    Error::Refused {
        path: given.to_owned(),
        reason: reason.into(),
    }
}

impl Paths {
    /// Resolves `given` to the data file's real path, and checks, before
    /// anything is opened or created beside it, that its directory is on a
    /// local file system (unless `allow_remote`) and that what is there can
    /// be a cache file: a regular file starting with the format's magic, or
    /// nothing.
    pub(super) fn resolve(given: &Path, allow_remote: bool) -> Result<Paths> {
        let data = match fs::canonicalize(given) {
            Ok(real) => real,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if fs::symlink_metadata(given).is_ok() {
                    return Err(refused(
                        given,
                        "it is a symbolic link to a file that does not exist",
                    ));
                }
                let name = given
                    .file_name()
                    .ok_or_else(|| refused(given, "the path does not name a file"))?;
                let parent = match given.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                };
                fs::canonicalize(parent)
                    .map_err(|e| Error::io(parent, e))?
                    .join(name)
            }
            Err(e) => return Err(Error::io(given, e)),
        };
        if let Some(dir) = data.parent() {
            let dir_file = File::open(dir).map_err(|e| Error::io(dir, e))?;
            check_local(&dir_file, given, allow_remote)?;
        }
        match fs::metadata(&data) {
            Ok(meta) if !meta.is_file() => {
                return Err(refused(given, "it is not a regular file"));
            }
            Ok(meta) if meta.len() > 0 => {
                let mut magic = [0u8; MAGIC.len()];
                let read = File::open(&data).and_then(|mut f| f.read_exact(&mut magic));
                if read.is_err() || magic != MAGIC {
                    return Err(Error::Format {
                        path: given.to_owned(),
                        reason: "not a layercache file (bad magic bytes)".into(),
                    });
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(given, e)),
        }
        Ok(Paths {
            given: given.to_owned(),
            lock: sibling(&data, ".lock"),
            compact: sibling(&data, ".compact"),
            next: sibling(&data, ".next"),
            data,
        })
    }

    /// The name of the sealed segment `id`: `<real path>.<id>.seg`.
    pub(super) fn segment(&self, id: u64) -> PathBuf {
        sibling(&self.data, &format!(".{id}.seg"))
    }

    /// The name of the hint file of sealed segment `id`:
    /// `<real path>.<id>.hint`.
    pub(super) fn hint(&self, id: u64) -> PathBuf {
        sibling(&self.data, &format!(".{id}.hint"))
    }

    /// The ids of the sealed segments in the data file's directory, in
    /// ascending order.
    pub(super) fn sealed_ids(&self) -> std::io::Result<Vec<u64>> {
        self.ids_of(b".seg")
    }

    /// The ids of the hint files in the data file's directory, in
    /// ascending order.
    pub(super) fn hint_ids(&self) -> std::io::Result<Vec<u64>> {
        self.ids_of(b".hint")
    }

    /// The ids `<id>` of the files named `<real path>.<id><suffix>` beside
    /// the data file, in ascending order.
    fn ids_of(&self, suffix: &[u8]) -> std::io::Result<Vec<u64>> {
        let name = self.data.file_name().unwrap_or_default().as_encoded_bytes();
        let dir = match self.data.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let id = file_name
                .as_encoded_bytes()
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(b"."))
                .and_then(|rest| rest.strip_suffix(suffix))
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse::<u64>().ok());
            ids.extend(id);
        }
        ids.sort_unstable();
        Ok(ids)
    }
}

/// `path` with `suffix` appended (`cache.lc` → `cache.lc.lock`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens `path` read-write, creating it with exactly `mode` if it does not
/// exist (the umask does not apply). `name` is the path to put in errors.
///
/// A symbolic link at `path` is refused, not followed: the data path was
/// resolved already, and the lock file is derived from it, so a link there
/// was planted by someone who can write the directory, to make this
/// process write (and, as root, chown) the file it points to.
pub(super) fn open_or_create(path: &Path, mode: u32, name: &Path) -> Result<File> {
    let io = |e: std::io::Error| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            refused(
                name,
                format!(
                    "{} is a symbolic link; the cache's own files are never opened through one",
                    path.display()
                ),
            )
        } else {
            Error::io(name, e)
        }
    };
    loop {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => {
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(io)?;
                return Ok(file);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => return Ok(file),
            // Removed between the two opens: create it after all.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        }
    }
}

/// Opens an existing file read-write, never through a symbolic link.
pub(super) fn open_existing(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates `path` anew, empty, readable and writable by the owner only
/// until [`inherit`] gives it another file's permissions. Whatever is at
/// `path` (a file left by a compaction that died, or a symbolic link
/// someone planted) is removed first, and the file is created exclusively
/// and never through a link, so compaction writes only a file of its own.
pub(super) fn create_replacing(path: &Path) -> std::io::Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Gives `file` the owner, group and mode of the file `like` describes: the
/// owner and group where the process may set them (root may set both; an
/// owner may set a group it belongs to), then the mode (after the owner, as
/// changing the owner clears set-id bits).
pub(super) fn inherit(file: &File, like: &Metadata) -> std::io::Result<()> {
    if std::os::unix::fs::fchown(file, Some(like.uid()), Some(like.gid())).is_err() {
        let _ = std::os::unix::fs::fchown(file, None, Some(like.gid()));
    }
    file.set_permissions(Permissions::from_mode(like.mode() & 0o7777))
}

/// Refuses a data file that has other hard links.
pub(super) fn check_links(meta: &Metadata, given: &Path) -> Result<()> {
    if meta.nlink() > 1 {
        return Err(refused(
            given,
            format!(
                "the file has {} hard links; each name would lock its own lock file, so \
                 writers through different names would not exclude each other. Open it by one \
                 name (a symbolic link is fine) and remove the other links",
                meta.nlink()
            ),
        ));
    }
    Ok(())
}

/// Refuses a data file on a network (or FUSE) file system unless `allow`.
pub(super) fn check_local(file: &File, given: &Path, allow: bool) -> Result<()> {
    if allow {
        return Ok(());
    }
    match remote_kind(file) {
        Some(kind) => Err(refused(
            given,
            format!(
                "it is on a {kind} file system: a shared memory map is not coherent across \
                 hosts, and flock may not reach them. Use a local file system, or \
                 FileCacheBuilder::allow_network_fs(true) if only one host opens the file"
            ),
        )),
        None => Ok(()),
    }
}

/// The kind of network or FUSE file system `file` is on, if it is on one.
#[cfg(target_os = "linux")]
fn remote_kind(file: &File) -> Option<&'static str> {
    use std::os::fd::AsRawFd;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `file` is an open descriptor for the duration of the call, and
    // `stat` points to writable memory of the size and alignment of the
    // `statfs` struct the call fills in.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None; // cannot tell: the open that follows reports real errors
    }
    // SAFETY: `fstatfs` returned 0, so it initialised the whole struct.
    let stat = unsafe { stat.assume_init() };
    remote_name(stat.f_type as u64 as u32)
}

#[cfg(not(target_os = "linux"))]
fn remote_kind(_file: &File) -> Option<&'static str> {
    None
}

/// The name of the network or FUSE file system whose magic number (the
/// `f_type` of `statfs`, as in Linux's `magic.h`) is `magic`.
pub(super) fn remote_name(magic: u32) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFE53_4D42 => "SMB2",
        0xFF53_4D42 => "CIFS",
        0x5346_414F => "AFS",
        0x6B41_4653 => "kAFS",
        0x7375_7245 => "Coda",
        0x00C3_6400 => "Ceph",
        0x0BD0_0BD0 => "Lustre",
        0x0116_1970 => "GFS2",
        0x7461_636F => "OCFS2",
        0x4750_4653 => "GPFS",
        0x0102_1997 => "9P",
        0x564C => "NCP",
        0x6573_5546 => "FUSE",
        _ => return None,
    })
}

/// Makes a rename in `path`'s directory durable, where the platform lets a
/// directory be opened and synced (the data is safe either way).
pub(super) fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_file_systems_are_named_and_local_ones_are_not() {
        assert_eq!(remote_name(0x6969), Some("NFS"));
        assert_eq!(remote_name(0xFF53_4D42), Some("CIFS"));
        assert_eq!(remote_name(0x6573_5546), Some("FUSE"));
        // ext4, tmpfs, xfs, btrfs, overlayfs.
        for local in [0xEF53, 0x0102_1994, 0x5846_5342, 0x9123_683E, 0x794C_7630] {
            assert_eq!(remote_name(local), None, "{local:#x}");
        }
    }

    #[test]
    fn the_directory_the_tests_run_in_is_local() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = File::create(dir.path().join("probe")).expect("a file in it");
        assert!(check_local(&file, dir.path(), false).is_ok());
    }
}
