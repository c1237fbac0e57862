//! [`Codec`]: how [`Serialised`](crate::Serialised) turns values into bytes
//! and back, with codecs for bincode, CBOR and JSON, and [`FnCodec`] for two
//! closures of your own.
//!
//! | codec | feature | format | notes |
//! |---|---|---|---|
//! | [`Bincode`](type@Bincode) | `bincode` | bincode 2 (serde API, standard config) | smallest and fastest; decoding is bounded by a memory limit (roughly the value's in-memory size, not its encoded size) and [`BINCODE_DEPTH_LIMIT`] levels of nesting; encoding decodes once more to check the value reads back |
//! | [`Cbor`] | `cbor` | CBOR (RFC 8949) via ciborium | self-describing, readable from other languages |
//! | [`Json`] | `json` | JSON via serde_json | readable by people and by ftrack's Python API |
//! | [`FnCodec`] | always | whatever the closures do | ftrack's `encode=`/`decode=` |
//!
//! A codec never panics on bad bytes: decoding garbage is an
//! [`Error::Decode`], and so is nesting deeper than the format's limit
//! ([`BINCODE_DEPTH_LIMIT`] levels for bincode, 256 for CBOR, 128 for JSON),
//! which would otherwise overflow the stack.

use std::fmt;

// Without a codec feature, `Error` is named only by doc links.
#[cfg_attr(
    not(any(feature = "bincode", feature = "cbor", feature = "json")),
    allow(unused_imports)
)]
use crate::error::{Error, Result};

#[cfg(any(feature = "bincode", feature = "reflect"))]
pub(crate) mod depth;

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

    /// The name of the format this codec writes, part of a
    /// [`Versioned`](crate::Versioned) store's namespace, so that a build
    /// that changed codec does not read another build's bytes. Two codecs
    /// with one name must read each other's bytes. The default is the
    /// codec's `Debug` text; ours answer `bincode` (whatever the limit:
    /// the bytes are the same), `cbor`, `json` and an [`FnCodec`]'s name.
    fn format(&self) -> String {
        format!("{self:?}")
    }
}

/// A codec whose bytes name what they hold (JSON's and CBOR's field names
/// and types), so a value of a changed type fails to decode, or decodes
/// field by field, rather than being read as wrong data:
/// [`Serialised::new`](crate::Serialised::new) takes only these.
///
/// A codec that stores fields by position ([`Bincode`](type@Bincode), an [`FnCodec`], most
/// codecs of your own) goes through
/// [`Serialised::versioned`](crate::Serialised::versioned) with a
/// [`Schema`](crate::Schema) instead. Implement this only for a format that
/// keeps field names and types in its bytes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` stores fields by position: a value of a changed type could decode as wrong data",
    label = "this codec needs a schema version",
    note = "use `Serialised::versioned(inner, codec, Schema::<V>::reflect()?)` or `.versioned(codec, Schema::version(\"v1\")?)`",
    note = "for a store no other version of the program reads (a MemoryCache in one process), `Serialised::unversioned(inner, codec)`"
)]
pub trait SelfDescribing {}

impl<X: SelfDescribing + ?Sized> SelfDescribing for &X {}
impl<X: SelfDescribing + ?Sized> SelfDescribing for std::sync::Arc<X> {}

impl<V, X: Codec<V> + ?Sized> Codec<V> for &X {
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        (**self).encode(value)
    }
    fn decode(&self, bytes: &[u8]) -> Result<V> {
        (**self).decode(bytes)
    }
    fn format(&self) -> String {
        (**self).format()
    }
}

impl<V, X: Codec<V> + ?Sized> Codec<V> for std::sync::Arc<X> {
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        (**self).encode(value)
    }
    fn decode(&self, bytes: &[u8]) -> Result<V> {
        (**self).decode(bytes)
    }
    fn format(&self) -> String {
        (**self).format()
    }
}

#[cfg(any(feature = "bincode", feature = "cbor", feature = "json"))]
fn encode_error(codec: &'static str, source: impl Into<crate::BoxError>) -> Error {
    Error::Encode {
        codec,
        source: source.into(),
    }
}

#[cfg(any(feature = "bincode", feature = "cbor", feature = "json"))]
fn decode_error(codec: &'static str, source: impl Into<crate::BoxError>) -> Error {
    Error::Decode {
        codec,
        source: source.into(),
    }
}

/// The default decode limit of [`Bincode`](type@Bincode): 16 MiB.
pub const DEFAULT_BINCODE_LIMIT: usize = 16 * 1024 * 1024;

/// How deeply a value read by [`LimitedBincode`] may nest: 128 levels.
///
/// Each sequence, tuple, struct, map, enum, `Some` and newtype struct is one
/// level (a tuple or struct variant is two: the enum and its fields). bincode
/// itself recurses once per level without a limit, so a few bytes claiming a
/// million nested sequences would overflow the stack and abort the process;
/// past this depth decoding is an [`Error::Decode`] ("nesting deeper than 128
/// levels") instead, and encoding refuses the value.
///
/// ```
/// # #[cfg(feature = "bincode")] {
/// use layercache::codec::{BINCODE_DEPTH_LIMIT, Bincode, Codec};
///
/// /// Two levels per tree: the newtype struct and its `Vec`.
/// #[derive(Debug, serde::Deserialize, serde::Serialize)]
/// struct Tree(Vec<Tree>);
///
/// /// `trees` trees, each the only child of the one before: the encoding is
/// /// a length of 1 per tree but the last, which has none.
/// fn chain(trees: usize) -> Vec<u8> {
///     let mut bytes = vec![1u8; trees - 1];
///     bytes.push(0);
///     bytes
/// }
///
/// let codec = Bincode::new();
/// let ok: Result<Tree, _> = codec.decode(&chain(BINCODE_DEPTH_LIMIT / 2));
/// assert!(ok.is_ok());
/// let deep: Result<Tree, _> = codec.decode(&chain(BINCODE_DEPTH_LIMIT / 2 + 1));
/// assert!(deep.unwrap_err().to_string().contains("nesting deeper than 128 levels"));
/// # }
/// ```
pub const BINCODE_DEPTH_LIMIT: usize = 128;

/// bincode 2 with its standard configuration and the default decode limit
/// of 16 MiB: see [`LimitedBincode`].
///
/// `Bincode` is a type and, like [`Json`] and [`Cbor`], a value:
/// `Bincode` and `Bincode::new()` are the same codec.
///
/// ```
/// use layercache::codec::{Bincode, Codec};
///
/// let codec: Bincode = Bincode;
/// let bytes = codec.encode(&("Task".to_string(), 3u32)).unwrap();
/// let back: (String, u32) = codec.decode(&bytes).unwrap();
/// assert_eq!(back, ("Task".to_string(), 3));
/// assert_eq!(Bincode, Bincode::new());
/// ```
#[cfg(feature = "bincode")]
pub type Bincode = LimitedBincode<DEFAULT_BINCODE_LIMIT>;

/// The [`Bincode`](type@Bincode) codec as a value, so that it is written as [`Json`] and
/// [`Cbor`] are: `store.versioned(Bincode, schema)`.
#[cfg(feature = "bincode")]
#[allow(non_upper_case_globals)]
pub const Bincode: Bincode = LimitedBincode;

/// bincode 2 with its standard configuration (little endian, variable-length
/// integers), through serde, with decoding bounded by `LIMIT` bytes of
/// memory and [`BINCODE_DEPTH_LIMIT`] levels of nesting.
///
/// # What the limit counts
///
/// `LIMIT` bounds the memory the decoder claims while reading the value,
/// which is roughly the value's size in memory, **not** the size of its
/// encoding. Each integer and float counts its in-memory size however few
/// bytes its varint took (8 for a `u64`, `i64`, `f64` or `usize`), each
/// sequence, map, string and byte buffer counts 8 for its length and strings
/// and byte buffers one more per byte, an enum counts 4 for its variant
/// index, a `bool` or an `Option`'s tag 1 and a `char` its UTF-8 width. So
/// `vec![0u64; 20]` encodes to 21 bytes but claims 8 + 20 × 8 = 168, and a
/// 63-byte string encodes to 64 bytes but claims 71. The count is checked
/// before anything is allocated, so a corrupt length prefix is rejected
/// instead of allocating whatever it claims (bincode has no limit of its
/// own).
///
/// # Nothing is stored that could not be read back
///
/// Encoding refuses, with [`Error::TooLarge`], a value whose encoding is over
/// `LIMIT` bytes (a cheap check) or whose decoding would claim more than
/// `LIMIT` (its `size` is then the encoded length: how much more decoding
/// would claim is not counted past the limit). To know the latter exactly,
/// `encode` decodes what it produced once, so encoding costs one extra
/// decode. A value that does not read back for any other reason (nested
/// deeper than [`BINCODE_DEPTH_LIMIT`], or a `Serialize` and `Deserialize`
/// that disagree) is an [`Error::Encode`].
///
/// [`Bincode`](type@Bincode) is this codec with a 16 MiB limit; choose another in the
/// type: `LimitedBincode::<{ 256 * 1024 * 1024 }>::new()`.
///
/// The format has no field names: a struct with two fields swapped, or a
/// `u64` that became an `i64`, decodes the old bytes as wrong data. So
/// [`Serialised`](crate::Serialised) takes it only with a
/// [`Schema`](crate::Schema) version in the keys
/// ([`Serialised::versioned`](crate::Serialised::versioned)).
///
/// ```
/// use layercache::{Error, codec::{Codec, LimitedBincode}};
///
/// let small = LimitedBincode::<64>::new();
/// assert!(small.encode(&vec![0u8; 100]).is_err(), "101 bytes encoded");
/// let bytes = small.encode(&vec![7u8; 10]).unwrap();
/// assert_eq!(small.decode(&bytes).ok(), Some(vec![7u8; 10]));
///
/// // 21 bytes encoded, but reading it back claims 8 + 20 * 8 = 168.
/// let error = small.encode(&vec![0u64; 20]).unwrap_err();
/// assert!(matches!(error, Error::TooLarge { size: 21, limit: 64, .. }));
/// assert!(small.encode(&vec![0u64; 7]).is_ok(), "8 + 7 * 8 = 64 fits");
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
    /// The decode limit in bytes: see [what it counts](LimitedBincode#what-the-limit-counts).
    pub const LIMIT: usize = LIMIT;

    /// The codec.
    pub const fn new() -> Self {
        Self
    }

    fn config() -> impl bincode::config::Config {
        bincode::config::standard().with_limit::<LIMIT>()
    }

    /// Decodes a `V` from the start of `bytes` within the limits: the value
    /// and how many bytes it took.
    fn decode_prefix<V: serde::de::DeserializeOwned>(
        bytes: &[u8],
    ) -> Result<(V, usize), bincode::error::DecodeError> {
        let seed = depth::Seed::new(std::marker::PhantomData::<V>, BINCODE_DEPTH_LIMIT);
        bincode::serde::seed_decode_from_slice(seed, bytes, Self::config())
    }
}

/// bincode's error as the source of an [`Error::Decode`] or
/// [`Error::Encode`]: serde's messages (such as the depth limit's) as they
/// are, rather than in bincode's `Debug` form.
#[cfg(feature = "bincode")]
fn bincode_source(error: bincode::error::DecodeError) -> crate::BoxError {
    match error {
        bincode::error::DecodeError::OtherString(message) => message.into(),
        other => other.into(),
    }
}

/// Why a decode that read a whole value but not all of its input failed.
#[cfg(any(feature = "bincode", feature = "cbor"))]
fn trailing_bytes(extra: usize) -> String {
    format!("{extra} trailing bytes after the value")
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
        // The decode limit counts memory, not encoded bytes, so only reading
        // the value back tells whether it fits (and whether it reads back at
        // all).
        let reason = match Self::decode_prefix::<V>(&bytes) {
            Ok((_, read)) if read == bytes.len() => return Ok(bytes),
            Ok((_, read)) => trailing_bytes(bytes.len() - read),
            Err(bincode::error::DecodeError::LimitExceeded) => {
                return Err(Error::TooLarge {
                    what: "value decoded from an encoding",
                    size: bytes.len(),
                    limit: LIMIT,
                });
            }
            Err(error) => bincode_source(error).to_string(),
        };
        Err(encode_error(
            "bincode",
            format!("the encoding does not read back: {reason}"),
        ))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V> {
        let (value, read) =
            Self::decode_prefix(bytes).map_err(|e| decode_error("bincode", bincode_source(e)))?;
        if read != bytes.len() {
            return Err(decode_error("bincode", trailing_bytes(bytes.len() - read)));
        }
        Ok(value)
    }

    fn format(&self) -> String {
        "bincode".into()
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
/// let bytes = Cbor.encode(&vec!["a".to_string(), "b".to_string()]).unwrap();
/// let back: Vec<String> = Cbor.decode(&bytes).unwrap();
/// assert_eq!(back, ["a", "b"]);
/// ```
#[cfg(feature = "cbor")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cbor;

#[cfg(feature = "cbor")]
impl SelfDescribing for Cbor {}

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
            return Err(decode_error("cbor", trailing_bytes(reader.len())));
        }
        Ok(value)
    }

    fn format(&self) -> String {
        "cbor".into()
    }
}

/// JSON through serde_json: compact, UTF-8.
///
/// ```
/// use layercache::codec::{Codec, Json};
///
/// let bytes = Json.encode(&("Task".to_string(), 3)).unwrap();
/// assert_eq!(bytes, br#"["Task",3]"#);
/// ```
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

#[cfg(feature = "json")]
impl SelfDescribing for Json {}

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

    fn format(&self) -> String {
        "json".into()
    }
}

/// A codec made of two closures, as ftrack's
/// `SerialisedCache(cache, encode=..., decode=...)`, with a name for the
/// format they write: it is the codec's [`format`](Codec::format), part of
/// a [`Versioned`](crate::Versioned) store's namespace, so two `FnCodec`s
/// that write different bytes must have different names.
///
/// ```
/// use layercache::codec::{Codec, FnCodec};
///
/// let upper = FnCodec::new(
///     "upper-utf8",
///     |s: &String| Ok(s.to_uppercase().into_bytes()),
///     |b: &[u8]| Ok(String::from_utf8_lossy(b).into_owned()),
/// );
/// assert_eq!(upper.encode(&"abc".to_string()).unwrap(), b"ABC");
/// assert_eq!(Codec::<String>::format(&upper), "upper-utf8");
/// ```
#[derive(Clone)]
pub struct FnCodec<E, D> {
    name: std::borrow::Cow<'static, str>,
    encode: E,
    decode: D,
}

impl<E, D> FnCodec<E, D> {
    /// A codec named `name` (the format it writes) that encodes with
    /// `encode` and decodes with `decode`.
    pub fn new(name: impl Into<std::borrow::Cow<'static, str>>, encode: E, decode: D) -> Self {
        Self {
            name: name.into(),
            encode,
            decode,
        }
    }
}

impl<E, D> fmt::Debug for FnCodec<E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FnCodec({})", self.name)
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

    fn format(&self) -> String {
        self.name.to_string()
    }
}
