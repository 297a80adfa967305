//! The JSON reader of the hot path: a serde `Deserializer` over a request body that reads each byte once.
//!
//! serde_json reads a string in two passes (a scan for the closing quote, then UTF-8 validation of the
//! whole string) with 32-bit words on wasm32, which made the prompt text the largest cost of a decision at
//! large bodies. This reader scans strings 16 bytes at a time with Wasm SIMD (`scan`) and validates only
//! strings that have non-ASCII bytes.
//!
//! It is never the last word: anything it does not accept exactly as serde_json would — invalid JSON of
//! any kind, numbers it cannot read to the same value, nesting deeper than serde_json allows — makes it
//! give up with [`Refused`], and the caller reads the body again with serde_json, whose verdict and error
//! message are the ones reported. So it may be stricter than serde_json, never more lenient, and what it
//! hands the visitors is what serde_json would hand them: the same strings (borrowed from the body unless
//! escaped), `u64` / `i64` / `f64` chosen by serde_json's rules, floats parsed by serde_json itself.

mod scan;
#[cfg(test)]
mod tests;

use alloc::vec::Vec;
use core::fmt;
use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The newtype name through which serde_json's `RawValue` asks a deserializer for a value's raw JSON.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Deepest nesting of arrays and objects read; serde_json refuses the 128th level.
const MAX_DEPTH: u32 = 127;

/// The reader gave up; the caller reads the body again with serde_json for the verdict.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not read by the fast JSON reader")
    }
}

impl core::error::Error for Refused {}

impl de::Error for Refused {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Refused
    }
}

type Result<T> = core::result::Result<T, Refused>;

/// Reads `body` whole with `seed`: `None` when the body is not one JSON value (with whitespace around
/// it), when the seed refuses it, or when serde_json might read it differently.
pub(crate) fn read<'de, S: DeserializeSeed<'de>>(body: &'de [u8], seed: S) -> Option<S::Value> {
    let mut reader = Reader { input: body, at: 0, depth: 0, scratch: Vec::new() };
    let value = seed.deserialize(&mut reader).ok()?;
    reader.skip_ws();
    (reader.at == body.len()).then_some(value)
}

struct Reader<'de> {
    input: &'de [u8],
    /// Index of the next unread byte.
    at: usize,
    /// Arrays and objects currently open.
    depth: u32,
    /// Decoded text of the current string when it has escapes.
    scratch: Vec<u8>,
}

/// A string's text: borrowed from the body, or decoded into the reader's scratch buffer.
enum Text<'de, 's> {
    Body(&'de str),
    Decoded(&'s str),
}

/// A number as serde_json reports it to a visitor.
enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'de> Reader<'de> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.at = self.at.saturating_add(1);
        }
    }

    /// The first byte of the next value.
    fn next_value(&mut self) -> Result<u8> {
        self.skip_ws();
        self.peek().ok_or(Refused)
    }

    fn expect(&mut self, byte: u8) -> Result<()> {
        self.skip_ws();
        if self.peek() != Some(byte) {
            return Err(Refused);
        }
        self.at = self.at.saturating_add(1);
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        let end = self.at.saturating_add(word.len());
        if self.input.get(self.at..end) != Some(word) {
            return Err(Refused);
        }
        self.at = end;
        Ok(())
    }

    /// Opens an array or object (the reader is at its bracket).
    fn enter(&mut self) -> Result<()> {
        self.depth = self.depth.saturating_add(1);
        if self.depth > MAX_DEPTH {
            return Err(Refused);
        }
        self.at = self.at.saturating_add(1);
        Ok(())
    }

    fn leave(&mut self, close: u8) -> Result<()> {
        self.expect(close)?;
        self.depth = self.depth.saturating_sub(1);
        Ok(())
    }

    /// Reads a string (the reader is at its opening quote), decoding escapes. With `check_utf8` false
    /// (a skipped value, which serde_json does not decode either) the text is not checked as UTF-8 and an
    /// empty text is returned.
    fn string(&mut self, check_utf8: bool) -> Result<Text<'de, '_>> {
        let start = self.at.saturating_add(1);
        let mut from = start;
        let mut non_ascii = false;
        let mut escaped = false;
        self.scratch.clear();
        loop {
            let run = scan::scan(self.input, from);
            non_ascii |= run.non_ascii;
            let stop = run.stop.ok_or(Refused)?;
            let plain = self.input.get(from..stop).ok_or(Refused)?;
            let next = stop.saturating_add(1);
            match self.input.get(stop) {
                Some(b'"') => {
                    self.at = next;
                    if !check_utf8 {
                        return Ok(Text::Body(""));
                    }
                    if !escaped {
                        let text = self.input.get(start..stop).ok_or(Refused)?;
                        return ascii_or_utf8(text, non_ascii).map(Text::Body);
                    }
                    self.scratch.extend_from_slice(plain);
                    return core::str::from_utf8(&self.scratch).map(Text::Decoded).map_err(|_| Refused);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.scratch.extend_from_slice(plain);
                    from = self.escape(next)?;
                }
                // A control byte, which JSON strings may not hold raw.
                _ => return Err(Refused),
            }
        }
    }

    /// Decodes the escape whose letter is at `at` into the scratch buffer; returns the index after it.
    fn escape(&mut self, at: usize) -> Result<usize> {
        let byte = match self.input.get(at) {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => return self.unicode_escape(at.saturating_add(1)),
            _ => return Err(Refused),
        };
        self.scratch.push(byte);
        Ok(at.saturating_add(1))
    }

    /// `\uXXXX` (the hex digits at `at`), a surrogate pair taking two. A lone surrogate is refused.
    fn unicode_escape(&mut self, at: usize) -> Result<usize> {
        let first = hex4(self.input, at)?;
        let mut end = at.saturating_add(4);
        let code = match first {
            0xD800..=0xDBFF => {
                if self.input.get(end..end.saturating_add(2)) != Some(b"\\u") {
                    return Err(Refused);
                }
                let second = hex4(self.input, end.saturating_add(2))?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(Refused);
                }
                end = end.saturating_add(6);
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            code => code,
        };
        let ch = char::from_u32(code).ok_or(Refused)?;
        let mut buf = [0u8; 4];
        self.scratch.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        Ok(end)
    }

    /// Reads a number (the reader is at its first byte) and classifies it as serde_json does.
    fn number(&mut self) -> Result<Number> {
        let start = self.at;
        let integer = self.skip_number()?;
        let text = self.input.get(start..self.at).ok_or(Refused)?;
        if integer {
            let (negative, digits) = match text.split_first() {
                Some((b'-', digits)) => (true, digits),
                _ => (false, text),
            };
            let value = digits
                .iter()
                .try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d.wrapping_sub(b'0'))));
            // serde_json: non-negative integers that fit are u64, negative ones that fit are i64, and
            // `-0` or anything larger is a float.
            #[allow(clippy::cast_possible_wrap, clippy::cast_precision_loss)]
            match value {
                Some(value) if !negative => return Ok(Number::U64(value)),
                Some(value) => {
                    let negated = (value as i64).wrapping_neg();
                    return Ok(if negated < 0 { Number::I64(negated) } else { Number::F64(-(value as f64)) });
                }
                None => {}
            }
        }
        // serde_json's own float reading, so the value is the one it would give, bit for bit.
        serde_json::from_slice::<f64>(text).map(Number::F64).map_err(|_| Refused)
    }

    /// Moves past a number, checking its grammar; returns whether it is an integer (no fraction or
    /// exponent).
    fn skip_number(&mut self) -> Result<bool> {
        if self.peek() == Some(b'-') {
            self.at = self.at.saturating_add(1);
        }
        match self.peek() {
            Some(b'0') => self.at = self.at.saturating_add(1),
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Refused),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.at = self.at.saturating_add(1);
            self.some_digits()?;
            integer = false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at = self.at.saturating_add(1);
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at = self.at.saturating_add(1);
            }
            self.some_digits()?;
            integer = false;
        }
        Ok(integer)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at = self.at.saturating_add(1);
        }
    }

    fn some_digits(&mut self) -> Result<()> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(Refused);
        }
        self.digits();
        Ok(())
    }

    /// Moves past one value, checking it is JSON; strings are not decoded or checked as UTF-8 and numbers
    /// not converted (serde_json skips values the same way).
    fn skip_value(&mut self) -> Result<()> {
        match self.next_value()? {
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'"' => self.string(false).map(drop),
            b'-' | b'0'..=b'9' => self.skip_number().map(drop),
            b'[' => {
                self.enter()?;
                let mut first = true;
                while self.next_item(b']', &mut first)? {
                    self.skip_value()?;
                }
                self.leave(b']')
            }
            b'{' => {
                self.enter()?;
                let mut first = true;
                while self.next_item(b'}', &mut first)? {
                    self.string(false)?;
                    self.expect(b':')?;
                    self.skip_value()?;
                }
                self.leave(b'}')
            }
            _ => Err(Refused),
        }
    }

    /// Between the items of an array or object: `false` at its end (the reader stays at `close`), else
    /// past the `,` that must separate an item from the one before; for an object, at the key's quote.
    fn next_item(&mut self, close: u8, first: &mut bool) -> Result<bool> {
        self.skip_ws();
        if self.peek() == Some(close) {
            return Ok(false);
        }
        if !core::mem::replace(first, false) {
            self.expect(b',')?;
            self.skip_ws();
        }
        if close == b'}' && self.peek() != Some(b'"') {
            return Err(Refused);
        }
        Ok(true)
    }
}

/// `text` as a `str`: checked as UTF-8 only if the scan saw a non-ASCII byte in it.
fn ascii_or_utf8(text: &[u8], non_ascii: bool) -> Result<&str> {
    if non_ascii {
        return core::str::from_utf8(text).map_err(|_| Refused);
    }
    debug_assert!(text.is_ascii());
    // SAFETY: the scan that delimited `text` saw no byte ≥ 0x80 in it, so it is ASCII, which is UTF-8.
    Ok(unsafe { core::str::from_utf8_unchecked(text) })
}

/// The four hex digits at `at` as a number.
fn hex4(input: &[u8], at: usize) -> Result<u32> {
    let digits = input.get(at..at.saturating_add(4)).ok_or(Refused)?;
    digits.iter().try_fold(0u32, |acc, &d| {
        let v = char::from(d).to_digit(16).ok_or(Refused)?;
        Ok((acc << 4) | v)
    })
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Refused;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.next_value()? {
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            b'"' => match self.string(true)? {
                Text::Body(text) => visitor.visit_borrowed_str(text),
                Text::Decoded(text) => visitor.visit_str(text),
            },
            b'-' | b'0'..=b'9' => match self.number()? {
                Number::U64(v) => visitor.visit_u64(v),
                Number::I64(v) => visitor.visit_i64(v),
                Number::F64(v) => visitor.visit_f64(v),
            },
            b'[' => {
                self.enter()?;
                let value = visitor.visit_seq(Items { reader: &mut *self, first: true })?;
                self.leave(b']')?;
                Ok(value)
            }
            b'{' => {
                self.enter()?;
                let value = visitor.visit_map(Items { reader: &mut *self, first: true })?;
                self.leave(b'}')?;
                Ok(value)
            }
            _ => Err(Refused),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.next_value()? == b'n' {
            self.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value> {
        if name != RAW_VALUE_TOKEN {
            return visitor.visit_newtype_struct(self);
        }
        self.skip_ws();
        let start = self.at;
        self.skip_value()?;
        let raw = self.input.get(start..self.at).ok_or(Refused)?;
        let raw = core::str::from_utf8(raw).map_err(|_| Refused)?;
        visitor.visit_map(RawValueAccess { raw: Some(raw) })
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.skip_value()?;
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct enum identifier
    }
}

/// The items of an array or the members of an object being read.
struct Items<'r, 'de> {
    reader: &'r mut Reader<'de>,
    first: bool,
}

impl<'de> SeqAccess<'de> for Items<'_, 'de> {
    type Error = Refused;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.reader.next_item(b']', &mut self.first)? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

impl<'de> MapAccess<'de> for Items<'_, 'de> {
    type Error = Refused;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.reader.next_item(b'}', &mut self.first)? {
            return Ok(None);
        }
        let key = seed.deserialize(&mut *self.reader)?;
        self.reader.expect(b':')?;
        Ok(Some(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.reader)
    }
}

/// What serde_json's `RawValue` expects back: a one-entry map from its token to the raw JSON text.
struct RawValueAccess<'de> {
    raw: Option<&'de str>,
}

impl<'de> MapAccess<'de> for RawValueAccess<'de> {
    type Error = Refused;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.raw.is_none() {
            return Ok(None);
        }
        seed.deserialize(BorrowedStrDeserializer::new(RAW_VALUE_TOKEN)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let raw = self.raw.take().ok_or(Refused)?;
        seed.deserialize(BorrowedStrDeserializer::new(raw))
    }
}
