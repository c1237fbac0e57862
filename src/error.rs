//! The crate's error type.
//!
//! A miss is never an error: [`Cache::get`](crate::Cache::get) answers
//! `Ok(None)`. An [`Error`] means the cache could not answer at all, and its
//! variant says what went wrong and where.

use std::fmt;
use std::path::PathBuf;

/// A boxed error from a codec, a backend or a user callback.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every fallible operation in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a cache operation was doing when it failed, for error messages and
/// for [`Layered`](crate::Layered)'s failure reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`Cache::get`](crate::Cache::get).
    Get,
    /// [`Cache::set`](crate::Cache::set).
    Set,
    /// [`Cache::remove`](crate::Cache::remove).
    Remove,
    /// [`Cache::keys`](crate::Cache::keys).
    Keys,
    /// [`Cache::values`](crate::Cache::values).
    Values,
    /// [`Cache::clear`](crate::Cache::clear).
    Clear,
    /// [`Cache::clear_matching`](crate::Cache::clear_matching).
    ClearMatching,
    /// Writing a value found in a lower layer into the layers above it.
    Promote,
    /// Opening a cache or checking its options.
    Open,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Get => "get",
            Operation::Set => "set",
            Operation::Remove => "remove",
            Operation::Keys => "keys",
            Operation::Values => "values",
            Operation::Clear => "clear",
            Operation::ClearMatching => "clear_matching",
            Operation::Promote => "promote",
            Operation::Open => "open",
        })
    }
}

/// Why a cache could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a file the cache uses.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A value could not be encoded to bytes.
    #[error("{codec} could not encode a value: {source}")]
    Encode {
        /// The codec's name, such as `"json"`.
        codec: &'static str,
        /// What the codec said.
        #[source]
        source: BoxError,
    },

    /// Stored bytes could not be decoded to a value.
    #[error("{codec} could not decode a value: {source}")]
    Decode {
        /// The codec's name, such as `"json"`.
        codec: &'static str,
        /// What the codec said.
        #[source]
        source: BoxError,
    },

    /// Stored data failed a consistency check.
    #[error("corrupt data in {location}: {reason}")]
    Corrupt {
        /// Where the damage is (a path and offset, a key, ...).
        location: String,
        /// What check failed.
        reason: String,
    },

    /// A file cannot be used as a cache file: it is not one, it is of a
    /// newer format version, or its header is damaged. The file is left
    /// untouched.
    #[error("cannot open {} as a cache file: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Why not.
        reason: String,
    },

    /// A file the cache will not use, though it may be a valid cache file:
    /// a data file with other hard links (each name would get its own
    /// lock, and writers through different names would not exclude each
    /// other), one on a network file system, a directory, or a dangling
    /// symbolic link. Nothing is created or changed.
    #[error("refusing to use {} as a cache file: {reason}", path.display())]
    Refused {
        /// The path as given.
        path: PathBuf,
        /// Why, and what to do instead.
        reason: String,
    },

    /// An option given to a builder is out of range. Nothing was opened.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option, as the builder method that sets it is named.
        option: &'static str,
        /// What is wrong with the value.
        reason: String,
    },

    /// A query expression the server does not understand.
    #[error("cannot run query {expression:?}: {reason}")]
    Query {
        /// The expression as given.
        expression: String,
        /// What is wrong with it, and where.
        reason: String,
    },

    /// A key or value is larger than the cache or codec accepts.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large (`"key"`, `"value"`, `"encoded value"`,
        /// `"value decoded from an encoding"`).
        what: &'static str,
        /// Its size in bytes (for a value refused by a codec's decode limit,
        /// the size of its encoding).
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },

    /// A key could not be made from an item.
    #[error("cannot make a key: {reason}")]
    Key {
        /// Why the key maker failed.
        reason: String,
    },

    /// A backend (a server, a user's cache) failed.
    #[error("backend {backend} failed during {operation}: {source}")]
    Backend {
        /// The backend, such as `"redis://127.0.0.1:6379"`.
        backend: String,
        /// What it was asked to do.
        operation: Operation,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },

    /// A layer of a [`Layered`](crate::Layered) cache failed.
    #[error("layer {depth} ({layer}) failed during {operation}: {source}")]
    Layer {
        /// The layer's depth, 0 being the top.
        depth: usize,
        /// The layer's `Debug` description.
        layer: String,
        /// What it was asked to do.
        operation: Operation,
        /// The layer's error.
        #[source]
        source: Box<Error>,
    },

    /// A memoised function called itself with the same arguments, which
    /// would wait for its own result forever.
    #[error("memoised function {function} called itself with the same arguments (key {key})")]
    Recursion {
        /// The function's name as given to the memoiser.
        function: String,
        /// The cache key of the call.
        key: String,
    },

    /// The cache cannot do what was asked and refuses rather than do
    /// something else: for example keep a deadline it has nowhere to store.
    #[error("{cache} cannot {what}")]
    Unsupported {
        /// The kind of cache.
        cache: &'static str,
        /// What it cannot do, and why.
        what: &'static str,
    },
}

impl Error {
    /// An [`Error::Backend`] from any error type.
    pub fn backend(
        backend: impl Into<String>,
        operation: Operation,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend: backend.into(),
            operation,
            source: source.into(),
        }
    }

    /// An [`Error::Io`] naming `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The innermost error, looking through [`Error::Layer`] wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Layer { source, .. } => source.root(),
            other => other,
        }
    }
}
