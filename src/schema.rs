//! [`Schema`]: the version of a value type, kept in the key namespace so
//! that a changed type is a miss, never wrong data.
//!
//! A codec that stores fields by position, such as bincode, cannot tell a
//! struct from the same struct with two fields swapped, or a `u64` from an
//! `i64`: it decodes the old bytes into the new type and the program gets
//! wrong data. So [`Serialised`](crate::Serialised) refuses such a codec
//! unless the values' schema has a version: every stored key is then put
//! under `<version>:`, and a program whose type changed (and whose version
//! changed with it) reads and writes keys of its own. Two versions of a
//! program sharing a cache during a rolling deploy each see their own
//! entries and never touch the other's.
//!
//! A version comes from you ([`Schema::version`]), or is derived from the
//! type's serde shape ([`Schema::reflect`], feature `reflect`): field names,
//! their order and types, enum variants, container names. Any change to
//! those gives another version.
//!
//! ```
//! # #[cfg(all(feature = "bincode", feature = "reflect"))] {
//! use layercache::{Schema, codec::Bincode, prelude::*};
//!
//! #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! struct User {
//!     name: String,
//!     age: u32,
//! }
//!
//! # fn main() -> layercache::Result<()> {
//! let store: MemoryCache<String, Vec<u8>> = MemoryCache::new();
//! let users = store.versioned(Bincode::new(), Schema::reflect::<User>()?);
//! users.set("ada".to_string(), User { name: "Ada".into(), age: 36 })?;
//!
//! // The stored key carries the schema's version.
//! let stored = users.inner().inner().keys()?;
//! assert_eq!(stored, [format!("{}:ada", Schema::reflect::<User>()?)]);
//! # Ok(())
//! # }
//! # main().unwrap();
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The version of a value type's schema: see [the module](self).
///
/// A version is 1 to 64 characters among ASCII letters, digits, `.`, `_`
/// and `-`, so that `<version>:` never begins another version's
/// namespace. A derived version is `#` followed by 16 hexadecimal digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Schema {
    /// The namespace: the version and a `:`.
    namespace: Arc<str>,
}

/// The longest version [`Schema::version`] takes.
const MAX_VERSION: usize = 64;

impl Schema {
    /// A version you give, such as `"users-3"`: bump it whenever the type
    /// changes in a way its codec would not notice.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] when `version` is empty, longer than 64
    /// characters, or holds a character other than an ASCII letter, digit,
    /// `.`, `_` or `-`.
    ///
    /// ```
    /// use layercache::Schema;
    ///
    /// assert_eq!(Schema::version("users-3").unwrap().as_str(), "users-3");
    /// assert!(Schema::version("a:b").is_err());
    /// assert!(Schema::version("").is_err());
    /// ```
    pub fn version(version: &str) -> Result<Self> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if version.is_empty() || version.len() > MAX_VERSION || !version.chars().all(allowed) {
            return Err(Error::InvalidOption {
                option: "schema version",
                reason: format!(
                    "{version:?} is not 1 to {MAX_VERSION} ASCII letters, digits, '.', '_' or '-'"
                ),
            });
        }
        Ok(Self::tagged(version))
    }

    /// The version derived from `V`'s serde shape (feature `reflect`): a
    /// hash of what [serde-reflection](https://docs.rs/serde-reflection)
    /// traces of it, so any change to a field's name, order or type, an
    /// enum's variants or a container's name gives another version. A
    /// change that keeps the shape (a field that now counts kilobytes
    /// instead of bytes) keeps the version: give one by hand for those.
    ///
    /// The hash is stable across runs, processes and builds of the same
    /// type; a new major version of serde-reflection may change it, which
    /// costs one cold cache, never wrong data.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming the type when it cannot be traced:
    /// a `Deserialize` written by hand that refuses the tracer's sample
    /// values, `#[serde(untagged)]` or `flatten`, a type that is not
    /// self-contained. Give such a type a [`version`](Self::version).
    ///
    /// ```
    /// # #[cfg(feature = "reflect")] {
    /// use layercache::Schema;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct V1 { a: u32, b: u32 }
    /// #[derive(serde::Deserialize)]
    /// struct V2 { b: u32, a: u32 }
    ///
    /// let one = Schema::reflect::<V1>().unwrap();
    /// assert_eq!(one, Schema::reflect::<V1>().unwrap());
    /// assert_ne!(one, Schema::reflect::<V2>().unwrap());
    /// assert!(one.as_str().starts_with('#'));
    /// # }
    /// ```
    #[cfg(feature = "reflect")]
    pub fn reflect<V: serde::de::DeserializeOwned>() -> Result<Self> {
        use serde_reflection::{FormatHolder, Tracer, TracerConfig};

        let refused = |reason: String| Error::InvalidOption {
            option: "schema",
            reason: format!(
                "cannot derive the schema of {} ({reason}): give it one with Schema::version",
                std::any::type_name::<V>()
            ),
        };
        let mut tracer = Tracer::new(TracerConfig::default());
        let (mut format, _) = tracer
            .trace_simple_type::<V>()
            .map_err(|e| refused(e.to_string()))?;
        format.normalize().map_err(|e| refused(e.to_string()))?;
        let registry = tracer.registry().map_err(|e| refused(e.to_string()))?;
        let shape = serde_json::to_vec(&(format, registry)).map_err(|e| refused(e.to_string()))?;
        Ok(Self::tagged(&format!("#{:016x}", fnv1a(&shape))))
    }

    fn tagged(version: &str) -> Self {
        Self {
            namespace: Arc::from(format!("{version}:")),
        }
    }

    /// The version.
    pub fn as_str(&self) -> &str {
        &self.namespace[..self.namespace.len() - 1]
    }

    /// What is put in front of every stored key: the version and a `:`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schema({})", self.as_str())
    }
}

/// FNV-1a, 64 bits: a hash fixed by its definition, the same in every
/// build (std's hashers promise no such thing).
#[cfg(feature = "reflect")]
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
