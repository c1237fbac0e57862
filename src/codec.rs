//! [`Codec`]: how [`Serialised`](crate::Serialised) turns values into bytes
//! and back, with codecs for bincode, CBOR and JSON, and [`FnCodec`] for two
//! closures of your own.
//!
//! | codec | feature | format | notes |
//! |---|---|---|---|
//! | [`Bincode`] | `bincode` | bincode 2 (serde API, standard config) | smallest and fastest; decoding is bounded by a size limit |
//! | [`Cbor`] | `cbor` | CBOR (RFC 8949) via ciborium | self-describing, readable from other languages |
//! | [`Json`] | `json` | JSON via serde_json | readable by people and by ftrack's Python API |
//! | [`FnCodec`] | always | whatever the closures do | ftrack's `encode=`/`decode=` |
//!
//! A codec never panics on bad bytes: decoding garbage is an
//! [`Error::Decode`].

use std::fmt;

use crate::error::{Error, Result};

/// Turns values of type `V` into bytes and back.
///
/// Implement it for a format of your own; it is all that
/// [`Serialised`](crate::Serialised) needs.
///
/// ```
/// use layercache::{Result, codec::Codec};
///
/// /// Stores `u64`s as 8 little-endian bytes.
/// #[derive(Debug)]
/// struct U64Le;
///
/// impl Codec<u64> for U64Le {
///     fn encode(&self, value: &u64) -> Result<Vec<u8>> {
///         Ok(value.to_le_bytes().to_vec())
///     }
///     fn decode(&self, bytes: &[u8]) -> Result<u64> {
///         let array: [u8; 8] = bytes.try_into().map_err(|_| layercache::Error::Decode {
///             codec: "u64le",
///             source: format!("expected 8 bytes, got {}", bytes.len()).into(),
///         })?;
///         Ok(u64::from_le_bytes(array))
///     }
/// }
///
/// assert_eq!(U64Le.decode(&U64Le.encode(&42).unwrap()).unwrap(), 42);
/// assert!(U64Le.decode(b"short").is_err());
/// ```
pub trait Codec<V>: Send + Sync + fmt::Debug {
    /// The bytes for `value`.
    fn encode(&self, value: &V) -> Result<Vec<u8>>;

    /// The value for `bytes`; an [`Error::Decode`] when they are not one.
    fn decode(&self, bytes: &[u8]) -> Result<V>;
}

impl<V, X: Codec<V> + ?Sized> Codec<V> for &X {
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        (**self).encode(value)
    }
    fn decode(&self, bytes: &[u8]) -> Result<V> {
        (**self).decode(bytes)
    }
}

impl<V, X: Codec<V> + ?Sized> Codec<V> for std::sync::Arc<X> {
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        (**self).encode(value)
    }
    fn decode(&self, bytes: &[u8]) -> Result<V> {
        (**self).decode(bytes)
    }
}

fn encode_error(codec: &'static str, source: impl Into<crate::BoxError>) -> Error {
    Error::Encode {
        codec,
        source: source.into(),
    }
}

fn decode_error(codec: &'static str, source: impl Into<crate::BoxError>) -> Error {
    Error::Decode {
        codec,
        source: source.into(),
    }
}

/// The default decode limit of [`Bincode`]: 16 MiB.
pub const DEFAULT_BINCODE_LIMIT: usize = 16 * 1024 * 1024;

/// bincode 2 with its standard configuration and the default decode limit
/// of 16 MiB: see [`LimitedBincode`].
///
/// ```
/// use layercache::codec::{Bincode, Codec};
///
/// let codec = Bincode::new();
/// let bytes = codec.encode(&("Task", 3u32)).unwrap();
/// let back: (String, u32) = codec.decode(&bytes).unwrap();
/// assert_eq!(back, ("Task".to_string(), 3));
/// ```
#[cfg(feature = "bincode")]
pub type Bincode = LimitedBincode<DEFAULT_BINCODE_LIMIT>;

/// bincode 2 with its standard configuration (little endian, variable-length
/// integers), through serde, decoding at most `LIMIT` bytes.
///
/// Decoding is bounded by `LIMIT` bytes of memory claimed by the value's
/// strings, byte buffers and sequences, so a corrupt length prefix is
/// rejected before anything is allocated for it (bincode would otherwise
/// allocate whatever a prefix claims). Encoding refuses values whose
/// encoding is over `LIMIT`, so nothing is stored that could not be read
/// back. [`Bincode`] is this codec with a 16 MiB limit; choose another in
/// the type: `LimitedBincode::<{ 256 * 1024 * 1024 }>::new()`.
///
/// The format has no field names: a changed struct no longer decodes (which
/// [`Serialised`](crate::Serialised) treats as a miss).
///
/// ```
/// use layercache::codec::{Codec, LimitedBincode};
///
/// let small = LimitedBincode::<64>::new();
/// assert!(small.encode(&vec![0u8; 100]).is_err(), "over the limit");
/// let bytes = small.encode(&vec![7u8; 10]).unwrap();
/// assert_eq!(small.decode(&bytes).ok(), Some(vec![7u8; 10]));
/// ```
#[cfg(feature = "bincode")]
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitedBincode<const LIMIT: usize>;

#[cfg(feature = "bincode")]
impl<const LIMIT: usize> fmt::Debug for LimitedBincode<LIMIT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if LIMIT == DEFAULT_BINCODE_LIMIT {
            f.write_str("Bincode")
        } else {
            write!(f, "LimitedBincode<{LIMIT}>")
        }
    }
}

#[cfg(feature = "bincode")]
impl<const LIMIT: usize> LimitedBincode<LIMIT> {
    /// The decode limit in bytes.
    pub const LIMIT: usize = LIMIT;

    /// The codec.
    pub const fn new() -> Self {
        Self
    }

    fn config() -> impl bincode::config::Config {
        bincode::config::standard().with_limit::<LIMIT>()
    }
}

#[cfg(feature = "bincode")]
impl<V, const LIMIT: usize> Codec<V> for LimitedBincode<LIMIT>
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        let bytes = bincode::serde::encode_to_vec(value, Self::config())
            .map_err(|e| encode_error("bincode", e))?;
        if bytes.len() > LIMIT {
            return Err(Error::TooLarge {
                what: "encoded value",
                size: bytes.len(),
                limit: LIMIT,
            });
        }
        Ok(bytes)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V> {
        let (value, read) = bincode::serde::decode_from_slice(bytes, Self::config())
            .map_err(|e| decode_error("bincode", e))?;
        if read != bytes.len() {
            return Err(decode_error(
                "bincode",
                format!("{} trailing bytes after the value", bytes.len() - read),
            ));
        }
        Ok(value)
    }
}

/// CBOR (RFC 8949) through ciborium.
///
/// Self-describing, so a struct that gained an optional field still reads
/// old records. ciborium reads strings and byte strings in chunks, so a
/// corrupt length prefix fails at the end of the input instead of
/// allocating what it claims; nesting deeper than 256 levels is refused.
///
/// ```
/// use layercache::codec::{Cbor, Codec};
///
/// let bytes = Cbor.encode(&vec!["a", "b"]).unwrap();
/// let back: Vec<String> = Cbor.decode(&bytes).unwrap();
/// assert_eq!(back, ["a", "b"]);
/// ```
#[cfg(feature = "cbor")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cbor;

#[cfg(feature = "cbor")]
impl<V> Codec<V> for Cbor
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        ciborium::into_writer(value, &mut bytes)
            .map_err(|e| encode_error("cbor", e.to_string()))?;
        Ok(bytes)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V> {
        let mut reader = bytes;
        let value =
            ciborium::from_reader(&mut reader).map_err(|e| decode_error("cbor", e.to_string()))?;
        if !reader.is_empty() {
            return Err(decode_error(
                "cbor",
                format!("{} trailing bytes after the value", reader.len()),
            ));
        }
        Ok(value)
    }
}

/// JSON through serde_json: compact, UTF-8.
///
/// ```
/// use layercache::codec::{Codec, Json};
///
/// let bytes = Json.encode(&("Task", 3)).unwrap();
/// assert_eq!(bytes, br#"["Task",3]"#);
/// ```
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

#[cfg(feature = "json")]
impl<V> Codec<V> for Json
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| encode_error("json", e))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V> {
        serde_json::from_slice(bytes).map_err(|e| decode_error("json", e))
    }
}

/// A codec made of two closures, as ftrack's
/// `SerialisedCache(cache, encode=..., decode=...)`.
///
/// ```
/// use layercache::codec::{Codec, FnCodec};
///
/// let upper = FnCodec::new(
///     |s: &String| Ok(s.to_uppercase().into_bytes()),
///     |b: &[u8]| Ok(String::from_utf8_lossy(b).into_owned()),
/// );
/// assert_eq!(upper.encode(&"abc".to_string()).unwrap(), b"ABC");
/// ```
#[derive(Clone)]
pub struct FnCodec<E, D> {
    encode: E,
    decode: D,
}

impl<E, D> FnCodec<E, D> {
    /// A codec that encodes with `encode` and decodes with `decode`.
    pub fn new(encode: E, decode: D) -> Self {
        Self { encode, decode }
    }
}

impl<E, D> fmt::Debug for FnCodec<E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnCodec")
    }
}

impl<V, E, D> Codec<V> for FnCodec<E, D>
where
    E: Fn(&V) -> Result<Vec<u8>> + Send + Sync,
    D: Fn(&[u8]) -> Result<V> + Send + Sync,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        (self.encode)(value)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V> {
        (self.decode)(bytes)
    }
}
