//! A serde [`Deserializer`] adapter that bounds how deeply values nest.
//!
//! bincode recurses once per level of nesting and has no limit of its own, so
//! bytes claiming a million nested sequences overflow the stack and abort the
//! process. [`Seed`] wraps the format's deserializer in [`Limited`], which
//! wraps every visitor it is given in [`Nested`]; a visitor handed something
//! nested (`visit_seq`, `visit_map`, `visit_enum`, `visit_some`,
//! `visit_newtype_struct`) spends one level of the budget and passes the rest
//! down with the wrapped deserializer or access. When the budget is spent the
//! visitor fails with a custom error instead of recursing.
//!
//! Every other call is forwarded unchanged, so a value that stays within the
//! limit decodes exactly as it would without the adapter. The budget travels
//! by value: there is no shared state, and the cost is one `usize` beside
//! each visitor.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// The error for a value nested deeper than the limit.
fn too_deep<E: de::Error>() -> E {
    E::custom(format_args!(
        "nesting deeper than {} levels",
        super::BINCODE_DEPTH_LIMIT
    ))
}

/// A seed that deserializes with `seed` through a [`Limited`] deserializer
/// allowing `remaining` more levels of nesting.
#[derive(Clone)]
pub(crate) struct Seed<S> {
    seed: S,
    remaining: usize,
}

impl<S> Seed<S> {
    /// `seed`, allowed `remaining` levels of nesting.
    pub(crate) fn new(seed: S, remaining: usize) -> Self {
        Self { seed, remaining }
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Limited {
            inner: deserializer,
            remaining: self.remaining,
        })
    }
}

/// A deserializer that wraps every visitor it is given in [`Nested`].
struct Limited<D> {
    inner: D,
    remaining: usize,
}

/// Forwards `Deserializer` methods to `self.inner`, wrapping the visitor.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* Nested { visitor, remaining: self.remaining })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visitor that spends a level of nesting on whatever nested thing it is
/// handed, and passes the rest of the budget down with it.
struct Nested<V> {
    visitor: V,
    remaining: usize,
}

impl<V> Nested<V> {
    /// The budget for what is nested inside this value, or the error.
    #[inline]
    fn inside<E: de::Error>(&self) -> Result<usize, E> {
        self.remaining.checked_sub(1).ok_or_else(too_deep)
    }
}

/// Forwards `Visitor` methods with no nested content to `self.visitor`.
macro_rules! forward_visit {
    ($($method:ident($($arg:ident: $ty:ty)?);)*) => {$(
        #[inline]
        fn $method<E: de::Error>(self, $($arg: $ty)?) -> Result<Self::Value, E> {
            self.visitor.$method($($arg)?)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Nested<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool(v: bool);
        visit_i8(v: i8);
        visit_i16(v: i16);
        visit_i32(v: i32);
        visit_i64(v: i64);
        visit_i128(v: i128);
        visit_u8(v: u8);
        visit_u16(v: u16);
        visit_u32(v: u32);
        visit_u64(v: u64);
        visit_u128(v: u128);
        visit_f32(v: f32);
        visit_f64(v: f64);
        visit_char(v: char);
        visit_str(v: &str);
        visit_borrowed_str(v: &'de str);
        visit_string(v: String);
        visit_bytes(v: &[u8]);
        visit_borrowed_bytes(v: &'de [u8]);
        visit_byte_buf(v: Vec<u8>);
        visit_none();
        visit_unit();
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        let remaining = self.inside()?;
        self.visitor.visit_some(Limited { inner, remaining })
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        let remaining = self.inside()?;
        self.visitor
            .visit_newtype_struct(Limited { inner, remaining })
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let remaining = self.inside()?;
        self.visitor.visit_seq(Access { inner, remaining })
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let remaining = self.inside()?;
        self.visitor.visit_map(Access { inner, remaining })
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let remaining = self.inside()?;
        self.visitor.visit_enum(Access { inner, remaining })
    }
}

/// A sequence, map, enum or variant whose contents get `remaining` levels.
struct Access<A> {
    inner: A,
    remaining: usize,
}

impl<A> Access<A> {
    /// `seed`, with this access's budget.
    #[inline]
    fn seed<S>(&self, seed: S) -> Seed<S> {
        Seed::new(seed, self.remaining)
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(self.seed(seed))
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(self.seed(seed))
    }

    #[inline]
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(self.seed(seed))
    }

    #[inline]
    fn next_entry_seed<K: DeserializeSeed<'de>, T: DeserializeSeed<'de>>(
        &mut self,
        key: K,
        value: T,
    ) -> Result<Option<(K::Value, T::Value)>, A::Error> {
        self.inner.next_entry_seed(self.seed(key), self.seed(value))
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<A> {
    type Error = A::Error;
    type Variant = Access<A::Variant>;

    #[inline]
    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let seed = self.seed(seed);
        let (value, inner) = self.inner.variant_seed(seed)?;
        Ok((
            value,
            Access {
                inner,
                remaining: self.remaining,
            },
        ))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.newtype_variant_seed(seed)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let remaining = self.remaining;
        self.inner.tuple_variant(len, Nested { visitor, remaining })
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let remaining = self.remaining;
        self.inner
            .struct_variant(fields, Nested { visitor, remaining })
    }
}
