//! Key makers: turn items (a function's arguments, an entity's identity)
//! into cache keys.
//!
//! - [`StringKeyMaker`]: the item's [`Display`], as
//!   ftrack's `StringKeyMaker`. Simple and readable; two different items
//!   can display alike.
//! - [`ObjectKeyMaker`]: a deterministic, unambiguous encoding of any
//!   `Serialize` value. Distinct values give distinct keys, equal maps give
//!   one key whatever their insertion order, and a key is the same in every
//!   run and on every platform.

use std::fmt::{self, Display, Write as _};

use serde::ser::{self, Serialize};

use crate::error::{Error, Result};

/// Makes cache keys from items of type `T`.
///
/// ```
/// use layercache::key::{KeyMaker, StringKeyMaker};
///
/// assert_eq!(StringKeyMaker.key(&42).unwrap(), "42");
/// ```
pub trait KeyMaker<T: ?Sized>: Send + Sync {
    /// The key for `item`.
    fn key(&self, item: &T) -> Result<String>;

    /// Appends the key for `item` to `out`, for callers that build a key
    /// from several parts without another allocation. The default appends
    /// [`key`](KeyMaker::key).
    fn key_into(&self, item: &T, out: &mut String) -> Result<()> {
        out.push_str(&self.key(item)?);
        Ok(())
    }
}

/// The key is the item's [`Display`]: ftrack's `StringKeyMaker`.
///
/// Readable, but not unambiguous: `"1"` and `1` make the same key. Use
/// [`ObjectKeyMaker`] when items of different shapes share a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StringKeyMaker;

impl<T: Display + ?Sized> KeyMaker<T> for StringKeyMaker {
    fn key(&self, item: &T) -> Result<String> {
        Ok(item.to_string())
    }

    fn key_into(&self, item: &T, out: &mut String) -> Result<()> {
        write!(out, "{item}").map_err(|_| Error::Key {
            reason: "a Display implementation returned an error".into(),
        })
    }
}

/// A deterministic, unambiguous key for any [`Serialize`] value: ftrack's
/// `ObjectKeyMaker`, for Rust's data model.
///
/// The key is a compact text in which every value is tagged with its kind,
/// strings and names are length-prefixed, sequences and maps are delimited,
/// and map entries are sorted by their encoded key. So:
///
/// - distinct values give distinct keys: `("a:b", "")` and `("a", "b")`
///   differ, and so do `1` and `1.0`, `None` and `()`, `Some(None)` and
///   `None`;
/// - equal maps give one key whatever their insertion order, also nested;
/// - integers of every width share one form (`1u8` and `1i64` make one
///   key); structs and enums carry their names, so two types with the same
///   fields differ;
/// - the key is the same in every run, process and platform.
///
/// A `HashSet` serialises in an order that changes between runs and so
/// gives unstable keys: use a `BTreeSet` in keys (maps of any kind are fine).
///
/// ```
/// use std::collections::HashMap;
/// use layercache::key::{KeyMaker, ObjectKeyMaker};
///
/// let keys = ObjectKeyMaker;
/// assert_ne!(keys.key(&("a:b", "")).unwrap(), keys.key(&("a", "b")).unwrap());
///
/// let one: HashMap<&str, u32> = [("x", 1), ("y", 2)].into();
/// let two: HashMap<&str, u32> = [("y", 2), ("x", 1)].into();
/// assert_eq!(keys.key(&one).unwrap(), keys.key(&two).unwrap());
/// assert_eq!(keys.key(&("Task", 3)).unwrap(), r#"["4:Taski3;]"#);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectKeyMaker;

impl<T: Serialize + ?Sized> KeyMaker<T> for ObjectKeyMaker {
    fn key(&self, item: &T) -> Result<String> {
        let mut out = String::new();
        self.key_into(item, &mut out)?;
        Ok(out)
    }

    fn key_into(&self, item: &T, out: &mut String) -> Result<()> {
        item.serialize(&mut KeyWriter { out })
            .map_err(|KeyError(reason)| Error::Key { reason })
    }
}

/// Why a value could not be encoded: only a `Serialize` impl that fails on
/// its own can cause one.
#[derive(Debug)]
struct KeyError(String);

impl Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl ser::Error for KeyError {
    fn custom<T: Display>(msg: T) -> Self {
        KeyError(msg.to_string())
    }
}

type KeyResult = std::result::Result<(), KeyError>;

// The grammar, one tag character per kind of value, so that every encoding is
// self-delimiting and concatenations of encodings are unambiguous:
//
//   u            unit              n / s<value>   None / Some
//   T / F        bools             i<decimal>;    any integer
//   f<float>;    f32 (widened) or f64, Rust's shortest round-trip form
//   "<len>:<utf8>     str and char  (len in bytes)
//   b<len>:<hex>      bytes
//   [<value>...]      sequences and tuples
//   {<key><value>...} maps, entries sorted by encoded key
//   c<name>           unit struct            w<name><value>       newtype struct
//   t<name>[...]      tuple struct           r<name>{<field><value>...} struct
//   v<name><name>     unit variant           V<name><name><value> newtype variant
//   x<name><name>[...] tuple variant         y<name><name>{...}   struct variant
//
// where <name> is <len>:<utf8> and a <field> is encoded as a string.
struct KeyWriter<'a> {
    out: &'a mut String,
}

/// Appends `n` in decimal: what `write!(out, "{n}")` does, without the
/// formatting machinery, which dominates the cost of a short key.
pub(crate) fn push_decimal(out: &mut String, mut n: u128) {
    const CHUNK: u128 = 10_000_000_000_000_000_000; // 10^19, fits a u64
    let mut digits = [0u8; 39];
    let mut at = digits.len();
    // u128 division is a library call: peel off 19-digit chunks with it only
    // for numbers past u64, then divide in u64.
    while n > u128::from(u64::MAX) {
        let mut chunk = (n % CHUNK) as u64;
        n /= CHUNK;
        for _ in 0..19 {
            at -= 1;
            digits[at] = b'0' + (chunk % 10) as u8;
            chunk /= 10;
        }
    }
    let mut low = n as u64;
    loop {
        at -= 1;
        digits[at] = b'0' + (low % 10) as u8;
        low /= 10;
        if low == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

/// Appends `<len>:<text>`: a length-prefixed, self-delimiting string.
pub(crate) fn push_prefixed(out: &mut String, text: &str) {
    push_decimal(out, text.len() as u128);
    out.push(':');
    out.push_str(text);
}

impl KeyWriter<'_> {
    fn name(&mut self, name: &str) {
        push_prefixed(self.out, name);
    }

    fn tagged_name(&mut self, tag: char, name: &str) {
        self.out.push(tag);
        self.name(name);
    }

    fn int(&mut self, v: impl Into<i128>) -> KeyResult {
        let v: i128 = v.into();
        self.out.push('i');
        if v < 0 {
            self.out.push('-');
        }
        push_decimal(self.out, v.unsigned_abs());
        self.out.push(';');
        Ok(())
    }

    fn uint(&mut self, v: impl Into<u128>) -> KeyResult {
        self.out.push('i');
        push_decimal(self.out, v.into());
        self.out.push(';');
        Ok(())
    }

    fn float(&mut self, v: f64) -> KeyResult {
        let _ = write!(self.out, "f{v:?};");
        Ok(())
    }
}

/// Sequences, tuples and structs: elements written in order, then a closer.
struct Seq<'a, 'b> {
    writer: &'a mut KeyWriter<'b>,
    close: char,
}

impl Seq<'_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> KeyResult {
        value.serialize(&mut *self.writer)
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> KeyResult {
        self.writer.out.push('"');
        self.writer.name(name);
        value.serialize(&mut *self.writer)
    }

    fn finish(self) -> KeyResult {
        self.writer.out.push(self.close);
        Ok(())
    }
}

/// Maps: entries encoded apart, then sorted, so insertion order is lost.
struct Map<'a, 'b> {
    writer: &'a mut KeyWriter<'b>,
    entries: Vec<(String, String)>,
    key: Option<String>,
}

fn encode<T: Serialize + ?Sized>(value: &T) -> std::result::Result<String, KeyError> {
    let mut out = String::new();
    value.serialize(&mut KeyWriter { out: &mut out })?;
    Ok(out)
}

impl<'a, 'b> ser::Serializer for &'a mut KeyWriter<'b> {
    type Ok = ();
    type Error = KeyError;
    type SerializeSeq = Seq<'a, 'b>;
    type SerializeTuple = Seq<'a, 'b>;
    type SerializeTupleStruct = Seq<'a, 'b>;
    type SerializeTupleVariant = Seq<'a, 'b>;
    type SerializeMap = Map<'a, 'b>;
    type SerializeStruct = Seq<'a, 'b>;
    type SerializeStructVariant = Seq<'a, 'b>;

    fn serialize_bool(self, v: bool) -> KeyResult {
        self.out.push(if v { 'T' } else { 'F' });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> KeyResult {
        self.int(v)
    }
    fn serialize_i16(self, v: i16) -> KeyResult {
        self.int(v)
    }
    fn serialize_i32(self, v: i32) -> KeyResult {
        self.int(v)
    }
    fn serialize_i64(self, v: i64) -> KeyResult {
        self.int(v)
    }
    fn serialize_i128(self, v: i128) -> KeyResult {
        self.int(v)
    }
    fn serialize_u8(self, v: u8) -> KeyResult {
        self.uint(v)
    }
    fn serialize_u16(self, v: u16) -> KeyResult {
        self.uint(v)
    }
    fn serialize_u32(self, v: u32) -> KeyResult {
        self.uint(v)
    }
    fn serialize_u64(self, v: u64) -> KeyResult {
        self.uint(v)
    }
    fn serialize_u128(self, v: u128) -> KeyResult {
        self.uint(v)
    }
    fn serialize_f32(self, v: f32) -> KeyResult {
        self.float(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> KeyResult {
        self.float(v)
    }
    fn serialize_char(self, v: char) -> KeyResult {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> KeyResult {
        self.tagged_name('"', v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> KeyResult {
        self.out.push('b');
        push_decimal(self.out, v.len() as u128);
        self.out.push(':');
        for byte in v {
            let _ = write!(self.out, "{byte:02x}");
        }
        Ok(())
    }
    fn serialize_none(self) -> KeyResult {
        self.out.push('n');
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> KeyResult {
        self.out.push('s');
        value.serialize(self)
    }
    fn serialize_unit(self) -> KeyResult {
        self.out.push('u');
        Ok(())
    }
    fn serialize_unit_struct(self, name: &'static str) -> KeyResult {
        self.tagged_name('c', name);
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
    ) -> KeyResult {
        self.tagged_name('v', name);
        self.name(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> KeyResult {
        self.tagged_name('w', name);
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> KeyResult {
        self.tagged_name('V', name);
        self.name(variant);
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Seq<'a, 'b>, KeyError> {
        self.out.push('[');
        Ok(Seq {
            writer: self,
            close: ']',
        })
    }
    fn serialize_tuple(self, len: usize) -> std::result::Result<Seq<'a, 'b>, KeyError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> std::result::Result<Seq<'a, 'b>, KeyError> {
        self.tagged_name('t', name);
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> std::result::Result<Seq<'a, 'b>, KeyError> {
        self.tagged_name('x', name);
        self.name(variant);
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, len: Option<usize>) -> std::result::Result<Map<'a, 'b>, KeyError> {
        Ok(Map {
            writer: self,
            entries: Vec::with_capacity(len.unwrap_or(0)),
            key: None,
        })
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> std::result::Result<Seq<'a, 'b>, KeyError> {
        self.tagged_name('r', name);
        self.out.push('{');
        Ok(Seq {
            writer: self,
            close: '}',
        })
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> std::result::Result<Seq<'a, 'b>, KeyError> {
        self.tagged_name('y', name);
        self.name(variant);
        self.out.push('{');
        Ok(Seq {
            writer: self,
            close: '}',
        })
    }
}

macro_rules! seq_impls {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Seq<'_, '_> {
            type Ok = ();
            type Error = KeyError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> KeyResult {
                self.element(value)
            }
            fn end(self) -> KeyResult {
                self.finish()
            }
        }
    )*};
}

seq_impls!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

macro_rules! struct_impls {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Seq<'_, '_> {
            type Ok = ();
            type Error = KeyError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                value: &T,
            ) -> KeyResult {
                self.field(name, value)
            }
            fn end(self) -> KeyResult {
                self.finish()
            }
        }
    )*};
}

struct_impls!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for Map<'_, '_> {
    type Ok = ();
    type Error = KeyError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> KeyResult {
        self.key = Some(encode(key)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> KeyResult {
        let key = self
            .key
            .take()
            .ok_or_else(|| KeyError("a map value was serialised before its key".into()))?;
        self.entries.push((key, encode(value)?));
        Ok(())
    }

    fn end(mut self) -> KeyResult {
        self.entries.sort_unstable();
        let out = &mut *self.writer.out;
        out.push('{');
        for (key, value) in &self.entries {
            out.push_str(key);
            out.push_str(value);
        }
        out.push('}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::push_decimal;

    #[test]
    fn decimals_match_display() {
        let mut samples = vec![0u128, 1, 9, 10, 99, 100, u128::from(u64::MAX), u128::MAX];
        samples.extend([
            u128::from(u64::MAX) + 1,
            10u128.pow(19),
            10u128.pow(19) - 1,
            10u128.pow(38),
        ]);
        let mut x = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834u128;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(0x2360_ED05_1FC6_5DA4_4385_DF64_9FCC_F645)
                .wrapping_add(1);
            samples.push(x >> (x % 128));
        }
        for n in samples {
            let mut out = String::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }
}
