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
        /// The kind of layer: its `Debug` text up to the first `(`, `[` or `{`
        /// outside `<...>`
        /// (`Memory`, `File`, `Serialised<Json>`), not the whole of it, which
        /// for a stack of stacks runs on. The source error names the file,
        /// server or key.
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

    /// Memoised calls on several threads wait on each other in a circle: the
    /// call of `key` would wait, through the others, for its own result.
    /// Returned to the call whose wait would have closed the circle; the
    /// others then go on (see [`Memoiser`](crate::Memoiser)).
    #[error("memoised call {key} would wait for its own result through other threads: {cycle}")]
    Cycle {
        /// The cache key of the call that would have waited.
        key: String,
        /// The keys in the circle, each waiting on the next:
        /// `a -> b -> a`.
        cycle: String,
    },

    /// A value was computed (by `get_or_insert_with`, a
    /// [`Memoiser`](crate::Memoiser)) but storing it failed: the error
    /// carries the value, which [`Error::into_computed`] gives back. Under
    /// [`ErrorPolicy::Strict`](crate::ErrorPolicy::Strict) a
    /// [`Layered`](crate::Layered) stack fails a write that one layer
    /// refused, though the layers above may hold the value.
    #[error("computed a value but could not store it: {source}")]
    NotStored {
        /// Why the value was not stored.
        source: Box<Error>,
        /// The value.
        value: Computed,
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

    /// The innermost error, looking through [`Error::Layer`] and
    /// [`Error::NotStored`] wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Layer { source, .. } | Error::NotStored { source, .. } => source.root(),
            other => other,
        }
    }

    /// `error` from storing `value`, which was computed: an
    /// [`Error::NotStored`] carrying it.
    pub fn not_stored<V: Send + Sync + 'static>(error: Error, value: V) -> Self {
        Error::NotStored {
            source: Box::new(error),
            value: Computed {
                type_name: std::any::type_name::<V>(),
                value: Box::new(value),
            },
        }
    }

    /// The value this error carries ([`Error::NotStored`]), when it is a
    /// `V`; otherwise the error itself, back.
    ///
    /// ```
    /// use layercache::{CacheExt, Error, ErrorPolicy, Layered, MemoryCache};
    /// # use layercache::{Cache, Entry, Result};
    /// # #[derive(Debug)]
    /// # struct Full;
    /// # impl Cache<u32, String> for Full {
    /// #     fn get_entry(&self, _: &u32) -> Result<Option<Entry<String>>> { Ok(None) }
    /// #     fn set_entry(&self, _: u32, _: Entry<String>) -> Result<()> {
    /// #         Err(Error::Unsupported { cache: "Full", what: "store more" })
    /// #     }
    /// #     fn remove(&self, _: &u32) -> Result<Option<String>> { Ok(None) }
    /// #     fn keys(&self) -> Result<Vec<u32>> { Ok(vec![]) }
    /// #     fn clear(&self) -> Result<()> { Ok(()) }
    /// # }
    ///
    /// // Memory over a layer that refuses every write (`Full`, a disk
    /// // that filled up), under the default Strict policy.
    /// let stack = Layered::new().with_layer(MemoryCache::new()).with_layer(Full);
    /// let error = stack.get_or_insert_with(1, || "one".to_string()).unwrap_err();
    /// assert!(matches!(error, Error::NotStored { .. }));
    /// assert_eq!(error.into_computed::<String>().unwrap(), "one");
    /// ```
    pub fn into_computed<V: 'static>(self) -> std::result::Result<V, Error> {
        match self {
            Error::NotStored { source, value } => match value.value.downcast::<V>() {
                Ok(value) => Ok(*value),
                Err(other) => Err(Error::NotStored {
                    source,
                    value: Computed {
                        type_name: value.type_name,
                        value: other,
                    },
                }),
            },
            other => Err(other),
        }
    }
}

/// A computed value carried by an [`Error::NotStored`]: take it with
/// [`Error::into_computed`].
pub struct Computed {
    type_name: &'static str,
    value: Box<dyn std::any::Any + Send + Sync>,
}

impl Computed {
    /// The name of the value's type, as `std::any::type_name` gives it.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl fmt::Debug for Computed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Computed({})", self.type_name)
    }
}
