//! Top-level fields of a JSON body other than `model` (which the picker's reader already gives), as
//! header text: strings unescaped, numbers and booleans as written. Read only when such fields are
//! configured; values of other keys are skipped without being kept.

use alloc::borrow::Cow;
use alloc::collections::BTreeMap;
use alloc::string::String;
use core::fmt;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// `names`' values in `body`, for those present as a string, number or boolean; `None` if the body is
/// not a JSON object (the picker's reader has already answered such bodies where it reads them).
pub(super) fn top_level<'b>(body: &'b [u8], names: &[&str]) -> Option<BTreeMap<String, Cow<'b, str>>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = Wanted { names }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(found)
}

struct Wanted<'n> {
    names: &'n [&'n str],
}

impl<'de> DeserializeSeed<'de> for Wanted<'_> {
    type Value = BTreeMap<String, Cow<'de, str>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Wanted<'_> {
    type Value = BTreeMap<String, Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if !self.names.contains(&key.as_ref()) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let raw: &'de RawValue = map.next_value()?;
            if let Some(text) = scalar_text(raw) {
                // A repeated key: the last copy, as Go's decoder (GIE) keeps.
                out.insert(key.into_owned(), text);
            }
        }
        Ok(out)
    }
}

fn scalar_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    match text.as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
        b't' | b'f' | b'-' | b'0'..=b'9' => Some(Cow::Borrowed(text)),
        _ => None,
    }
}
