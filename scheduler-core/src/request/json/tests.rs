//! The reader against serde_json: whatever it accepts, serde_json accepts with the same values, and on
//! plain valid JSON it never gives up.

use super::*;
use alloc::borrow::Cow;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;

fn fast(body: &[u8]) -> Option<Value> {
    read(body, core::marker::PhantomData::<Value>).ok()
}

fn reference(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// String contents that exercise every escape and multi-byte UTF-8.
fn text() -> impl Strategy<Value = String> {
    "[a-z \"\\\\/\n\t\u{1}\u{7f}\u{e9}\u{20ac}\u{1F600}]{0,24}"
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        text().prop_map(Value::String),
        // Long strings cross the scanner's 64- and 16-byte steps at every offset.
        (0usize..150, text()).prop_map(|(n, t)| Value::String("x".repeat(n) + &t)),
    ];
    leaf.prop_recursive(6, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The same value written with `\u` escapes for every non-ASCII character (surrogate pairs above the BMP).
fn ascii_escaped(value: &Value) -> String {
    let mut out = String::new();
    for ch in serde_json::to_string(value).unwrap().chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04X}"));
            }
        }
    }
    out
}

/// Read as a `Value`, `body` gives what serde_json gives; refused, it is refused where serde_json refuses
/// it, with serde_json's words and position (a body that is not UTF-8 outside its strings is worded by
/// serde_json's skipping parse instead, so only the refusal is compared).
fn agrees_with_serde_json(body: &[u8]) -> core::result::Result<(), TestCaseError> {
    let shown = String::from_utf8_lossy(body);
    match fast(body) {
        Some(read) => prop_assert_eq!(Some(read), reference(body), "{}", shown),
        None if core::str::from_utf8(body).is_ok() => {
            prop_assert_eq!(our_error(body), serde_json_error(body, true), "{}", shown);
        }
        None => prop_assert!(reference(body).is_none(), "{}", shown),
    }
    Ok(())
}

proptest! {
    #[test]
    fn valid_json_reads_as_serde_json_reads_it(value in json_value(), pretty in any::<bool>()) {
        let body = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
        let body = body.unwrap();
        // Against serde_json's reading, not `value`: serde_json's float parse does not always round-trip.
        let expected = reference(body.as_bytes());
        prop_assert!(expected.is_some());
        prop_assert_eq!(fast(body.as_bytes()), expected.clone(), "{}", body);
        let escaped = ascii_escaped(&value);
        prop_assert_eq!(fast(escaped.as_bytes()), expected, "{}", escaped);
    }

    #[test]
    fn damaged_json_is_never_accepted_where_serde_json_refuses_it(
        value in json_value(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut body = serde_json::to_vec(&value).unwrap();
        for (at, byte, how) in edits {
            if body.is_empty() {
                break;
            }
            let at = at.index(body.len());
            match how {
                0 => body[at] = byte,
                1 => body.insert(at, byte),
                _ => body.truncate(at),
            }
        }
        agrees_with_serde_json(&body)?;
    }

    #[test]
    fn json_alphabet_soup_is_never_accepted_where_serde_json_refuses_it(
        body in prop::collection::vec(
            prop::sample::select(b"{}[],:\"\\ \n0123456789-+.eEtrufalsn\xc3\xa9\xff\x01abu".to_vec()),
            0..40,
        )
    ) {
        agrees_with_serde_json(&body)?;
    }
}

#[test]
fn numbers_get_serde_jsons_kinds_and_values() {
    for text in [
        "0",
        "-0",
        "7",
        "-7",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "-18446744073709551616",
        "1.5",
        "-0.0",
        "1e2",
        "1E+2",
        "2.5e-3",
        "100.0",
        "123456789012345678901234567890",
        "0.1000000000000000055511151231257827",
        "1.7976931348623157e308",
        "5e-324",
    ] {
        assert_eq!(fast(text.as_bytes()), reference(text.as_bytes()), "{text}");
        let fast = fast(text.as_bytes()).unwrap();
        let reference = reference(text.as_bytes()).unwrap();
        // `Value` equality treats 0.0 and -0.0 alike; the kind and the sign must match too.
        assert_eq!(fast.as_u64(), reference.as_u64(), "{text}");
        assert_eq!(fast.as_i64(), reference.as_i64(), "{text}");
        assert_eq!(fast.as_f64().map(f64::to_bits), reference.as_f64().map(f64::to_bits), "{text}");
    }
}

#[test]
fn what_it_refuses() {
    for text in [
        "",
        " ",
        "01",
        "-",
        "1.",
        ".5",
        "1e",
        "+1",
        "1e400",
        "nul",
        "True",
        "[1,]",
        "[,1]",
        "{\"a\":1,}",
        "{,}",
        "{\"a\" 1}",
        "{1:2}",
        "[1] x",
        "\"a",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\uD800\"",
        "\"\\uDC00\"",
        "\"\\uD800\\u0041\"",
        "\"tab\there\"",
        "\"\u{0}\"",
    ] {
        assert_eq!(fast(text.as_bytes()), None, "{text:?}");
    }
    assert_eq!(fast(b"\"\xff\""), None);
    assert_eq!(fast(b"\"\xc3\""), None);
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert!(fast(deep(127).as_bytes()).is_some());
    assert_eq!(fast(deep(128).as_bytes()), None);
    assert_eq!(reference(deep(128).as_bytes()), None, "serde_json's limit moved");
}

/// Records whether a string came borrowed from the body.
struct Borrowing;

impl<'de> DeserializeSeed<'de> for Borrowing {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> core::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Borrowing {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> core::result::Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> core::result::Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

#[test]
fn strings_are_borrowed_unless_escaped() {
    let long = format!("\"{}\u{e9}\"", "a".repeat(100));
    assert!(matches!(read(long.as_bytes(), Borrowing).ok(), Some(Cow::Borrowed(s)) if s.len() == 102));
    let escaped = read(br#""a\"b\u00e9\uD83D\uDE00""#, Borrowing).ok();
    assert_eq!(escaped, Some(Cow::Owned("a\"b\u{e9}\u{1F600}".to_string())));
    assert!(matches!(escaped, Some(Cow::Owned(_))));
}

#[test]
fn skipped_strings_are_not_decoded_as_serde_json_skips_them() {
    // serde_json does not check the UTF-8 of a value it skips; neither does the reader.
    let body = b"{\"keep\":1,\"skip\":\"\xff\"}";
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Keep {
        keep: u8,
    }
    assert_eq!(read(body, core::marker::PhantomData::<Keep>).ok(), Some(Keep { keep: 1 }));
    assert_eq!(serde_json::from_slice::<Keep>(body).ok(), Some(Keep { keep: 1 }));
}

#[test]
fn raw_values_are_the_exact_json_text() {
    let body = br#"{ "a" : [ 1, {"b": "\u00e9"} ] , "b":"x" ,"c":  null }"#;
    let fast: BTreeMap<String, &RawValue> = read(body, core::marker::PhantomData).unwrap();
    let reference: BTreeMap<String, &RawValue> = serde_json::from_slice(body).unwrap();
    let text = |m: &BTreeMap<String, &RawValue>| -> Vec<(String, String)> {
        m.iter().map(|(k, v)| (k.clone(), v.get().to_string())).collect()
    };
    assert_eq!(text(&fast), text(&reference));
    assert_eq!(text(&fast)[0].1, r#"[ 1, {"b": "\u00e9"} ]"#);
    let optional: Option<BTreeMap<String, Option<&RawValue>>> =
        read(br#"{"t":null,"u":[]}"#, core::marker::PhantomData).ok();
    let optional = optional.unwrap();
    assert!(optional["t"].is_none());
    assert_eq!(optional["u"].map(RawValue::get), Some("[]"));
}

#[test]
fn refusal_is_an_ordinary_serde_error() {
    use serde::de::Error as _;
    assert_eq!(Refused::custom("x").to_string(), "x");
    assert_eq!(read(b"[1, 2]", core::marker::PhantomData::<(u8, u8)>).ok(), Some((1, 2)));
    assert!(read(b"[1, 2, 3]", core::marker::PhantomData::<(u8, u8)>).is_err());
    assert_eq!(read(b"[1] ", core::marker::PhantomData::<Vec<u8>>).ok(), Some(vec![1]));
}

/// The error serde_json gives when it decodes all of `body` into a `Value` (`decode`) or skips it.
fn serde_json_error(body: &[u8], decode: bool) -> (usize, usize, String) {
    let err = if decode {
        serde_json::from_slice::<Value>(body).unwrap_err()
    } else {
        serde_json::from_slice::<de::IgnoredAny>(body).unwrap_err()
    };
    let detail = err.to_string();
    let detail = detail.split(" at line ").next().unwrap().to_string();
    (err.line(), err.column(), detail)
}

fn our_error(body: &[u8]) -> (usize, usize, String) {
    our_error_as::<Value>(body)
}

/// The error for `body` read as a `T`.
fn our_error_as<T: serde::de::DeserializeOwned + fmt::Debug>(body: &[u8]) -> (usize, usize, String) {
    let refused = read(body, core::marker::PhantomData::<T>).unwrap_err();
    match refused.to_request_error(body).problem() {
        crate::request::Problem::NotJson { line, column, detail } => (*line, *column, detail.clone()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_are_placed_and_worded_as_serde_json_does() {
    let deep = format!("{{\"a\":\n{}{}", "[".repeat(130), "]".repeat(130));
    for body in [
        // Syntax errors, worded by serde_json's decoding parse.
        &b"{"[..],
        b"{\"a\" 1}",
        b"[1,]",
        b"[1 2]",
        b"{\"a\":1,}",
        b"\"abc",
        b"\"a\\x\"",
        b"\"a\\u12\"",
        b"\"tab\there\"",
        b"[1] x",
        b"\n\n  [tru]",
        b"01",
        b"-",
        b"1.",
        b"1e+",
        b"",
        // Errors found only when decoding, placed and worded by the reader as serde_json's decoding does.
        b"[1e400]",
        b"\n [ -1.5e999 , 2]",
        b"[123456789012345678901234567890e400]",
        b"[\"\xff\"]",
        b"\n\"ab\xc3\"",
        b"[\"a\\n\xff\"]",
        b"\"\\uDC00\"",
        b"\"\\uD800\"",
        b"\"\\uD800x\"",
        b"\"\\uD800\\n\"",
        b"\"\\uD800\\u0041\"",
        b"\"\\uD800\\uD800\"",
        deep.as_bytes(),
    ] {
        assert_eq!(our_error(body), serde_json_error(body, true), "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn skipped_values_are_checked_as_serde_json_checks_them() {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Keep {
        keep: u8,
    }
    // Beyond decoding's depth limit, lone surrogates, out-of-range numbers: all fine when skipped.
    let deep = format!("{{\"keep\":1,\"skip\":{}{}}}", "[".repeat(300), "]".repeat(300));
    for body in [
        deep.as_bytes(),
        br#"{"keep":1,"skip":"\uD800\uDC00\uDC00x"}"#,
        br#"{"skip":[1e999,{"a":-0.5e-999}],"keep":1}"#,
    ] {
        assert_eq!(serde_json::from_slice::<Keep>(body).ok(), Some(Keep { keep: 1 }));
        assert_eq!(read(body, core::marker::PhantomData::<Keep>).ok(), Some(Keep { keep: 1 }));
    }
    for body in
        [&br#"{"keep":1,"skip":"\x"}"#[..], br#"{"keep":1,"skip":[1,]}"#, b"{\"keep\":1,\"skip\":\"\x01\"}"]
    {
        assert!(serde_json::from_slice::<Keep>(body).is_err());
        assert_eq!(our_error(body), serde_json_error(body, true), "{}", String::from_utf8_lossy(body));
    }
    // A syntax error after something only decoding refuses, in a skipped value: worded by the skipping
    // parse, which gets as far as the syntax error.
    let body = br#"{"skip":1e999,"keep":1,}"#;
    assert_eq!(our_error_as::<Keep>(body), serde_json_error(body, false));
    assert_eq!(our_error_as::<Keep>(body).2, "key must be a string");
}
