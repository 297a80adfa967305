//! Streaming validators shared by the per-API parsers: each one checks one JSON shape while the reader
//! (`super::json`) reads it, so a body is validated in the same pass that borrows its strings, with no `Value` tree.
//!
//! A validator that meets the wrong shape records a located `RequestError` in the `Ctx` and stops the
//! parse with a placeholder serde error; `drive` then reports the recorded error instead.

use super::error::{Found, Path, Problem, RequestError};
use alloc::borrow::Cow;
use alloc::string::ToString;
use core::cell::Cell;
use core::fmt;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Per-parse state: the first validation error and the running count of prompt text bytes.
#[derive(Default)]
pub(crate) struct Ctx {
    error: Cell<Option<RequestError>>,
    text_bytes: Cell<usize>,
    /// Whether values skipped inside `messages` / `input` must have their strings checked for UTF-8.
    /// Set by the single pass, which reads those arrays straight from the body instead of from a
    /// `RawValue` the reader has already checked whole.
    check_skipped: bool,
}

impl Ctx {
    /// The context of the single pass over a body (see `check_skipped`).
    pub(crate) fn checking_skipped() -> Self {
        Ctx { check_skipped: true, ..Ctx::default() }
    }

    /// Skips a value inside `messages` / `input` that the gateway does not read.
    pub(crate) fn skip<'de, A: MapAccess<'de>>(&self, map: &mut A) -> Result<(), A::Error> {
        if self.check_skipped {
            map.next_value_seed(AnyValue::CHECKED)
        } else {
            skip(map)
        }
    }

    /// Records `problem` at `path` (the first one wins) and returns the error that aborts the parse.
    pub(crate) fn fail<T, E: de::Error>(&self, path: &Path<'_>, problem: Problem) -> Result<T, E> {
        let first = self.error.take().unwrap_or_else(|| path.error(problem));
        self.error.set(Some(first));
        Err(E::custom("rejected by validation"))
    }

    pub(crate) fn add_text(&self, len: usize) {
        self.text_bytes.set(self.text_bytes.get().saturating_add(len));
    }

    pub(crate) fn text_bytes(&self) -> usize {
        self.text_bytes.get()
    }

    fn take_error(&self) -> Option<RequestError> {
        self.error.take()
    }
}

/// Runs `seed` over a whole JSON document (rejecting trailing data) and turns failures into a
/// `RequestError`: our own recorded error if there is one, else the JSON error, located in `input`.
pub(crate) fn drive<'de, S: DeserializeSeed<'de>>(
    ctx: &Ctx,
    input: &'de [u8],
    seed: S,
) -> Result<S::Value, RequestError> {
    match super::json::read(input, seed) {
        Ok(value) => match ctx.take_error() {
            None => Ok(value),
            Some(err) => Err(err),
        },
        Err(refused) => Err(ctx.take_error().unwrap_or_else(|| refused.to_request_error(input))),
    }
}

/// Where a validator is and what it expects there: enough to report a located error.
#[derive(Clone, Copy)]
pub(crate) struct At<'c> {
    pub ctx: &'c Ctx,
    pub path: &'c Path<'c>,
    pub expected: &'static str,
}

impl At<'_> {
    pub(crate) fn reject<T, E: de::Error>(&self, found: Found) -> Result<T, E> {
        self.ctx.fail(self.path, Problem::Unexpected { expected: self.expected, found })
    }

    pub(crate) fn missing<T, E: de::Error>(&self, field: &str) -> Result<T, E> {
        self.ctx.fail(&self.path.key(field), Problem::Missing)
    }
}

/// Classifies a JSON number the reader reported as a float.
pub(crate) fn found_f64(v: f64) -> Found {
    if v < 0.0 {
        Found::NegativeNumber
    } else {
        Found::FractionalNumber
    }
}

/// The kind of a captured raw value, from its first byte (raw values start at the value, no whitespace).
pub(crate) fn found_raw(raw: &RawValue) -> Found {
    match raw.get().as_bytes().first() {
        Some(b'[') => Found::Array,
        Some(b'{') => Found::Object,
        Some(b'"') => Found::String,
        Some(b't' | b'f') => Found::Boolean,
        Some(b'n') => Found::Null,
        Some(b'-') => Found::NegativeNumber,
        _ => Found::Number,
    }
}

/// Generates the `Visitor` methods that refuse the listed JSON kinds through `self.at`, plus
/// `expecting`. Every visitor lists every kind it does not accept, so serde's generic type errors
/// (which carry no path) never surface.
macro_rules! reject {
    ($($kind:ident)*) => {
        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.at.expected)
        }
        $( reject!(@$kind); )*
    };
    (@null) => {
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            self.at.reject($crate::request::error::Found::Null)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            self.at.reject($crate::request::error::Found::Null)
        }
    };
    (@bool) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            self.at.reject($crate::request::error::Found::Boolean)
        }
    };
    (@number) => {
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            self.at.reject($crate::request::error::Found::Number)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            self.at.reject(if v < 0 {
                $crate::request::error::Found::NegativeNumber
            } else {
                $crate::request::error::Found::Number
            })
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            self.at.reject($crate::request::error::Found::Number)
        }
    };
    (@string) => {
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            self.at.reject($crate::request::error::Found::String)
        }
    };
    (@array) => {
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            self.at.reject($crate::request::error::Found::Array)
        }
    };
    (@object) => {
        fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            self.at.reject($crate::request::error::Found::Object)
        }
    };
}
pub(crate) use reject;

/// Accepts `null` as "absent" and hands anything else to the inner validator.
pub(crate) struct Nullable<S>(pub S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// An object key, borrowed unless it contains escapes.
pub(crate) struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

/// Which of an object's known fields were seen, to refuse duplicates.
#[derive(Default)]
pub(crate) struct Seen(u32);

impl Seen {
    /// Marks field number `bit` of the object at `at.path` as seen; a second time is an error.
    pub(crate) fn first<E: de::Error>(&mut self, at: &At<'_>, bit: u32, key: &str) -> Result<(), E> {
        let mask = 1u32.checked_shl(bit).unwrap_or(0);
        if self.0 & mask != 0 {
            return at.ctx.fail(&at.path.key(key), Problem::Duplicate);
        }
        self.0 |= mask;
        Ok(())
    }

    pub(crate) fn has(&self, bit: u32) -> bool {
        self.0 & 1u32.checked_shl(bit).unwrap_or(0) != 0
    }
}

/// Skips a value the gateway does not read.
pub(crate) fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(|_| ())
}

/// A string, returned borrowed when it has no escapes.
pub(crate) struct Text<'c> {
    pub at: At<'c>,
}

impl<'c> Text<'c> {
    pub(crate) fn new(ctx: &'c Ctx, path: &'c Path<'c>) -> Self {
        Text { at: At { ctx, path, expected: "a string" } }
    }
}

impl<'de> DeserializeSeed<'de> for Text<'_> {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Text<'_> {
    type Value = Cow<'de, str>;

    reject!(null bool number array object);

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

/// A string whose content is not kept (roles, URLs, message text in chat where the raw JSON is hashed):
/// returns only its length, so even an escaped string is never copied by us.
pub(crate) struct Str<'c> {
    pub at: At<'c>,
    pub count: bool,
}

impl<'c> Str<'c> {
    pub(crate) fn new(ctx: &'c Ctx, path: &'c Path<'c>) -> Self {
        Str { at: At { ctx, path, expected: "a string" }, count: false }
    }

    pub(crate) fn counted(ctx: &'c Ctx, path: &'c Path<'c>) -> Self {
        Str { count: true, ..Str::new(ctx, path) }
    }
}

impl<'de> DeserializeSeed<'de> for Str<'_> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Str<'_> {
    type Value = usize;

    reject!(null bool number array object);

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if self.count {
            self.at.ctx.add_text(v.len());
        }
        Ok(v.len())
    }
}

/// Accepts any value. With `count_text`, a string's length counts into the prompt size (fields whose
/// shape the gateway does not police but whose text still reaches the model: tool outputs). With `check`,
/// nested values are decoded rather than skipped: unlike `IgnoredAny` that makes the reader decode every
/// string (keys included), which checks it is UTF-8, and their nesting counts against its depth limit
/// (serde_json's), so a pathologically deep value fails here (and the single pass falls back to the two-pass parse).
#[derive(Clone, Copy)]
pub(crate) struct AnyValue<'c> {
    count_text: Option<&'c Ctx>,
    check: bool,
}

impl<'c> AnyValue<'c> {
    /// Reads and drops any value, checking what it contains.
    pub(crate) const CHECKED: AnyValue<'static> = AnyValue { count_text: None, check: true };

    /// Counts a string; checks a nested value when `ctx` is the single pass's.
    pub(crate) fn count_if_text(ctx: &'c Ctx) -> Self {
        AnyValue { count_text: Some(ctx), check: ctx.check_skipped }
    }
}

impl<'de> DeserializeSeed<'de> for AnyValue<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyValue<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if let Some(ctx) = self.count_text {
            ctx.add_text(v.len());
        }
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    // Text nested inside a value is not counted (only a field's own string is).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.check {
            while seq.next_element_seed(AnyValue::CHECKED)?.is_some() {}
        } else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.check {
            while map.next_key_seed(AnyValue::CHECKED)?.is_some() {
                map.next_value_seed(AnyValue::CHECKED)?;
            }
        } else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        }
        Ok(())
    }
}

/// A non-negative integer (token limits). `100.0` is accepted as 100, like Python servers do.
pub(crate) struct Count<'c> {
    pub at: At<'c>,
}

impl<'c> Count<'c> {
    pub(crate) fn new(ctx: &'c Ctx, path: &'c Path<'c>) -> Self {
        Count { at: At { ctx, path, expected: "a non-negative integer" } }
    }
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = u64;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// 2^53: beyond it an f64 no longer holds every integer, so a float that large is not a trustworthy count.
const MAX_EXACT_F64: f64 = 9_007_199_254_740_992.0;

impl<'de> Visitor<'de> for Count<'_> {
    type Value = u64;

    reject!(null bool string array object);

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).or_else(|_| self.at.reject(Found::NegativeNumber))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        if (0.0..=MAX_EXACT_F64).contains(&v) && (v as u64) as f64 == v {
            return Ok(v as u64);
        }
        self.at.reject(found_f64(v))
    }
}

/// A boolean.
pub(crate) struct Flag<'c> {
    pub at: At<'c>,
}

impl<'c> Flag<'c> {
    pub(crate) fn new(ctx: &'c Ctx, path: &'c Path<'c>) -> Self {
        Flag { at: At { ctx, path, expected: "a boolean" } }
    }
}

impl<'de> DeserializeSeed<'de> for Flag<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flag<'_> {
    type Value = bool;

    reject!(null number string array object);

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
}
