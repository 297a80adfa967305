//! The JSON reader of request bodies: a serde `Deserializer` over a body that reads each byte once.
//!
//! serde_json reads a string in two passes (a scan for the closing quote, then UTF-8 validation of the
//! whole string) with 32-bit words on wasm32, which made the prompt text the largest cost of a decision at
//! large bodies. This reader scans strings 16 bytes at a time with Wasm SIMD (`scan`) and validates as
//! UTF-8 only strings that have non-ASCII bytes.
//!
//! It accepts exactly what serde_json accepts and hands the visitors what serde_json would: the same
//! strings (borrowed from the body unless escaped), numbers as `u64` / `i64` / `f64` by serde_json's rules
//! with floats parsed by serde_json itself, `RawValue`s; values that are skipped are checked as serde_json
//! checks them (grammar and escapes, not UTF-8 or number range, no depth limit). Where it stops, it says
//! where and why as serde_json would: a syntax error is worded by serde_json's own skipping parse of the
//! same input (`Refused::to_request_error`), an error serde_json finds only when decoding a value (a
//! number out of range, a lone surrogate, bad UTF-8, nesting past 127) by this reader, at the position
//! serde_json gives it. Tests hold both to serde_json.

mod scan;
#[cfg(test)]
mod tests;

use super::error::RequestError;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The newtype name through which serde_json's `RawValue` asks a deserializer for a value's raw JSON.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Deepest nesting of decoded arrays and objects; serde_json refuses the 128th level.
const MAX_DEPTH: u32 = 127;

/// Why and where the reader stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The byte index serde_json reports the same error at (`usize::MAX` until known).
    at: usize,
    reason: Reason,
}

#[derive(Debug, PartialEq, Eq)]
enum Reason {
    /// Not JSON; serde_json's skipping parse words it.
    Syntax,
    /// JSON that serde_json refuses when it decodes the value, in serde_json's words.
    Value(&'static str),
    /// A visitor's own error.
    Custom(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Reason::Syntax => f.write_str("syntax error"),
            Reason::Value(detail) => f.write_str(detail),
            Reason::Custom(detail) => f.write_str(detail),
        }
    }
}

impl core::error::Error for Refused {}

impl de::Error for Refused {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refused { at: usize::MAX, reason: Reason::Custom(msg.to_string()) }
    }
}

impl Refused {
    /// The body-level error for this refusal of `input` (the text the reader was given).
    pub(crate) fn to_request_error(&self, input: &[u8]) -> RequestError {
        let detail = match &self.reason {
            Reason::Syntax => match syntax_error(input) {
                Some(err) => return RequestError::from_json(&err),
                // The reader and serde_json disagree on the grammar (never expected).
                None => "invalid JSON",
            },
            Reason::Value(detail) => detail,
            Reason::Custom(detail) => detail.as_str(),
        };
        let (line, column) = position(input, self.at);
        RequestError::not_json(line, column, detail)
    }
}

/// serde_json's error for a body that is not JSON, as its decoding parse words it ("trailing comma",
/// "EOF while parsing an object"), unless that parse stops first on something only decoding refuses (in
/// a value the gateway skips): then as its skipping parse words it. (`from_str`: the instance the
/// configuration parse already links in; a body that is not UTF-8 is worded by the skipping parse.)
fn syntax_error(input: &[u8]) -> Option<serde_json::Error> {
    let decoded = core::str::from_utf8(input)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).err());
    if let Some(err) = decoded {
        let detail = err.to_string();
        if ![BAD_UTF8, LONE_SURROGATE, HEX_ESCAPE_END, OUT_OF_RANGE, TOO_DEEP]
            .iter()
            .any(|d| detail.starts_with(d))
        {
            return Some(err);
        }
    }
    serde_json::from_slice::<de::IgnoredAny>(input).err()
}

/// serde_json's line and column of byte index `at`: lines from 1, the column counting the bytes of the
/// line before `at`.
fn position(input: &[u8], at: usize) -> (usize, usize) {
    let head = input.get(..at).unwrap_or(input);
    let line_start = head.iter().rposition(|b| *b == b'\n').map_or(0, |nl| nl.saturating_add(1));
    let line = head.iter().take(line_start).filter(|b| **b == b'\n').count().saturating_add(1);
    (line, head.len().saturating_sub(line_start))
}

type Result<T> = core::result::Result<T, Refused>;

/// Reads `input` whole (one JSON value, whitespace around it) with `seed`.
pub(crate) fn read<'de, S: DeserializeSeed<'de>>(input: &'de [u8], seed: S) -> Result<S::Value> {
    let mut reader = Reader { input, at: 0, depth: 0, scratch: Vec::new(), open: Vec::new() };
    let value = seed.deserialize(&mut reader).and_then(|value| {
        reader.skip_ws();
        if reader.at == input.len() {
            Ok(value)
        } else {
            Err(reader.syntax())
        }
    });
    value.map_err(|mut refused| {
        if refused.at == usize::MAX {
            refused.at = reader.at;
        }
        refused
    })
}

struct Reader<'de> {
    input: &'de [u8],
    /// Index of the next unread byte.
    at: usize,
    /// Decoded arrays and objects currently open.
    depth: u32,
    /// Decoded text of the current string when it has escapes.
    scratch: Vec<u8>,
    /// Closing brackets of the containers a skip is inside.
    open: Vec<u8>,
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

/// serde_json's words for the errors it finds only when decoding.
const BAD_UTF8: &str = "invalid unicode code point";
const LONE_SURROGATE: &str = "lone leading surrogate in hex escape";
const HEX_ESCAPE_END: &str = "unexpected end of hex escape";
const OUT_OF_RANGE: &str = "number out of range";
const TOO_DEEP: &str = "recursion limit exceeded";

impl<'de> Reader<'de> {
    fn syntax(&self) -> Refused {
        Refused { at: self.at, reason: Reason::Syntax }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn bump(&mut self) {
        self.at = self.at.saturating_add(1);
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.bump();
        }
    }

    /// The first byte of the next value.
    fn next_value(&mut self) -> Result<u8> {
        self.skip_ws();
        self.peek().ok_or_else(|| self.syntax())
    }

    fn expect(&mut self, byte: u8) -> Result<()> {
        self.skip_ws();
        if self.peek() != Some(byte) {
            return Err(self.syntax());
        }
        self.bump();
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        let end = self.at.saturating_add(word.len());
        if self.input.get(self.at..end) != Some(word) {
            return Err(self.syntax());
        }
        self.at = end;
        Ok(())
    }

    /// Opens a decoded array or object (the reader is at its bracket).
    fn enter(&mut self) -> Result<()> {
        self.depth = self.depth.saturating_add(1);
        if self.depth > MAX_DEPTH {
            return Err(Refused { at: self.at.saturating_add(1), reason: Reason::Value(TOO_DEEP) });
        }
        self.bump();
        Ok(())
    }

    fn leave(&mut self, close: u8) -> Result<()> {
        self.expect(close)?;
        self.depth = self.depth.saturating_sub(1);
        Ok(())
    }

    /// Reads a string (the reader is at its opening quote). `decode`: escapes are decoded and the text
    /// must be UTF-8 with paired surrogates; otherwise (a skipped value, which serde_json does not decode
    /// either) only the grammar is checked and the text returned is empty.
    fn string(&mut self, decode: bool) -> Result<Text<'de, '_>> {
        let start = self.at.saturating_add(1);
        let mut from = start;
        let mut non_ascii = false;
        let mut escaped = false;
        self.scratch.clear();
        loop {
            let run = scan::scan(self.input, from);
            non_ascii |= run.non_ascii;
            let Some(stop) = run.stop else {
                self.at = self.input.len();
                return Err(self.syntax());
            };
            let plain = self.input.get(from..stop).unwrap_or_default();
            self.at = stop.saturating_add(1);
            match self.input.get(stop) {
                Some(b'"') if !decode => return Ok(Text::Body("")),
                // serde_json places a UTF-8 error one past the first bad byte, counted back from past the
                // closing quote by the bytes of text after it (so only roughly when the string had escapes).
                Some(b'"') if !escaped => {
                    let text = self.input.get(start..stop).unwrap_or_default();
                    return ascii_or_utf8(text, non_ascii)
                        .map(Text::Body)
                        .map_err(|valid| bad_utf8(start.saturating_add(valid).saturating_add(1)));
                }
                Some(b'"') => {
                    self.scratch.extend_from_slice(plain);
                    let len = self.scratch.len();
                    return ascii_or_utf8(&self.scratch, non_ascii)
                        .map(Text::Decoded)
                        .map_err(|valid| bad_utf8(self.at.saturating_sub(len.saturating_sub(valid))));
                }
                Some(b'\\') => {
                    escaped = true;
                    if decode {
                        self.scratch.extend_from_slice(plain);
                    }
                    self.escape(decode)?;
                    // A decoded `\u` escape above U+007F ends in a UTF-8 continuation byte; every other
                    // escape decodes to one ASCII byte.
                    non_ascii |= decode && self.scratch.last().is_some_and(|&b| b >= 0x80);
                    from = self.at;
                }
                // A control byte, which JSON strings may not hold raw.
                _ => return Err(self.syntax()),
            }
        }
    }

    /// An escape (the reader is at the byte after its backslash), decoded into the scratch buffer when
    /// `decode`.
    fn escape(&mut self, decode: bool) -> Result<()> {
        let byte = match self.peek() {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                self.bump();
                return if decode { self.unicode_escape() } else { self.hex4().map(drop) };
            }
            _ => return Err(self.syntax()),
        };
        self.bump();
        if decode {
            self.scratch.push(byte);
        }
        Ok(())
    }

    /// The four hex digits at the reader, as a number.
    fn hex4(&mut self) -> Result<u32> {
        let end = self.at.saturating_add(4);
        let Some(digits) = self.input.get(self.at..end) else {
            self.at = self.input.len();
            return Err(self.syntax());
        };
        let value = digits.iter().try_fold(0u32, |acc, &d| Some((acc << 4) | char::from(d).to_digit(16)?));
        self.at = end;
        value.ok_or_else(|| self.syntax())
    }

    /// Decodes `\uXXXX` (the reader is at the hex digits), a surrogate pair taking two; serde_json's rules
    /// and error positions for lone surrogates.
    fn unicode_escape(&mut self) -> Result<()> {
        let lone = |at| Refused { at, reason: Reason::Value(LONE_SURROGATE) };
        let first = self.hex4()?;
        let code = match first {
            0xDC00..=0xDFFF => return Err(lone(self.at)),
            0xD800..=0xDBFF => {
                for next in [b'\\', b'u'] {
                    match self.peek() {
                        None => return Err(self.syntax()),
                        Some(b) if b == next => self.bump(),
                        Some(_) => {
                            self.bump();
                            return Err(Refused { at: self.at, reason: Reason::Value(HEX_ESCAPE_END) });
                        }
                    }
                }
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(lone(self.at));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            code => code,
        };
        let ch = char::from_u32(code).ok_or_else(|| lone(self.at))?;
        let mut buf = [0u8; 4];
        self.scratch.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }

    /// Reads a number (the reader is at its first byte) and classifies it as serde_json does.
    fn number(&mut self) -> Result<Number> {
        let start = self.at;
        let integer = self.skip_number()?;
        let text = self.input.get(start..self.at).unwrap_or_default();
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
        // serde_json's own float reading, so the value is the one it would give, bit for bit; the only
        // error left after the grammar check is a number out of f64's range, placed where serde_json
        // places it.
        serde_json::from_slice::<f64>(text).map(Number::F64).map_err(|err| Refused {
            at: start.saturating_add(err.column()),
            reason: Reason::Value(OUT_OF_RANGE),
        })
    }

    /// Moves past a number, checking its grammar; returns whether it is an integer (no fraction or
    /// exponent).
    fn skip_number(&mut self) -> Result<bool> {
        if self.peek() == Some(b'-') {
            self.bump();
        }
        match self.peek() {
            Some(b'0') => self.bump(),
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax()),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.bump();
            self.some_digits()?;
            integer = false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.bump();
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.bump();
            }
            self.some_digits()?;
            integer = false;
        }
        Ok(integer)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.bump();
        }
    }

    fn some_digits(&mut self) -> Result<()> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.syntax());
        }
        self.digits();
        Ok(())
    }

    /// Moves past one value, checking it as serde_json checks a value it skips: grammar and escapes;
    /// not UTF-8, number range or depth (the open containers are kept on a heap stack, not recursed).
    fn skip_value(&mut self) -> Result<()> {
        self.open.clear();
        loop {
            match self.next_value()? {
                b'n' => self.literal(b"null")?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'"' => {
                    self.string(false)?;
                }
                b'-' | b'0'..=b'9' => {
                    self.skip_number()?;
                }
                open @ (b'[' | b'{') => {
                    self.bump();
                    let close = if open == b'[' { b']' } else { b'}' };
                    self.open.push(close);
                    self.skip_ws();
                    if self.peek() != Some(close) {
                        if close == b'}' {
                            self.key()?;
                        }
                        continue;
                    }
                    self.bump();
                    self.open.pop();
                }
                _ => return Err(self.syntax()),
            }
            // After a whole value: close what ends here, stop at a `,` (then read the next value).
            loop {
                let Some(&close) = self.open.last() else {
                    return Ok(());
                };
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.bump();
                        if close == b'}' {
                            self.skip_ws();
                            self.key()?;
                        }
                        break;
                    }
                    Some(b) if b == close => {
                        self.bump();
                        self.open.pop();
                    }
                    _ => return Err(self.syntax()),
                }
            }
        }
    }

    /// A skipped object's key and its `:` (the reader is at the key).
    fn key(&mut self) -> Result<()> {
        if self.peek() != Some(b'"') {
            return Err(self.syntax());
        }
        self.string(false)?;
        self.expect(b':')
    }

    /// Between the items of a decoded array or object: `false` at its end (the reader stays at `close`),
    /// else past the `,` that must separate an item from the one before; for an object, at the key.
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
            return Err(self.syntax());
        }
        Ok(true)
    }
}

/// `text` as a `str`: checked as UTF-8 only if the scan (or an escape decoded into it) put a non-ASCII
/// byte in it. The error is the length of the valid head.
fn ascii_or_utf8(text: &[u8], non_ascii: bool) -> core::result::Result<&str, usize> {
    if non_ascii {
        return core::str::from_utf8(text).map_err(|e| e.valid_up_to());
    }
    debug_assert!(text.is_ascii());
    // SAFETY: no byte ≥ 0x80 went into `text` (the scan saw none, and no escape decoded to one), so it is
    // ASCII, which is UTF-8.
    Ok(unsafe { core::str::from_utf8_unchecked(text) })
}

fn bad_utf8(at: usize) -> Refused {
    Refused { at, reason: Reason::Value(BAD_UTF8) }
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
            _ => Err(self.syntax()),
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
        let raw = self.input.get(start..self.at).unwrap_or_default();
        // serde_json points one past the first bad byte here.
        let raw = core::str::from_utf8(raw)
            .map_err(|e| bad_utf8(start.saturating_add(e.valid_up_to()).saturating_add(1)))?;
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
        let raw = self.raw.take().unwrap_or_default();
        seed.deserialize(BorrowedStrDeserializer::new(raw))
    }
}
