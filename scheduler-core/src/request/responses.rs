//! `/v1/responses` `input`: a string, or an array of items (messages with content parts, function calls,
//! their outputs, reasoning, ...). Messages are checked for shape; other item kinds only need a `type`.

use super::error::Path;
use super::seeds::{reject, AnyValue, At, Ctx, Key, Seen, Str, Text};
use alloc::borrow::Cow;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The validated `input`: its text when it is a string (hashed as text), `None` for an item array
/// (hashed as its raw JSON by the caller).
pub(crate) struct Input<'c> {
    pub ctx: &'c Ctx,
    pub path: &'c Path<'c>,
}

impl<'de> DeserializeSeed<'de> for Input<'_> {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(InputVisitor {
            at: At { ctx: self.ctx, path: self.path, expected: "a string or an array" },
        })
    }
}

struct InputVisitor<'c> {
    at: At<'c>,
}

impl<'de> Visitor<'de> for InputVisitor<'_> {
    type Value = Option<Cow<'de, str>>;

    reject!(null bool number object);

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.at.ctx.add_text(v.len());
        Ok(Some(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.at.ctx.add_text(v.len());
        Ok(Some(Cow::Owned(v.into())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut index = 0usize;
        loop {
            let path = self.at.path.index(index);
            let at = At { ctx: self.at.ctx, path: &path, expected: "an object" };
            if seq.next_element_seed(Item { at })?.is_none() {
                return Ok(None);
            }
            index = index.saturating_add(1);
        }
    }
}

struct Item<'c> {
    at: At<'c>,
}

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

const ITEM_FIELDS: [&str; 5] = ["type", "role", "content", "output", "arguments"];

impl<'de> Visitor<'de> for Item<'_> {
    type Value = ();

    reject!(null bool number string array);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.at.ctx;
        let mut seen = Seen::default();
        let mut item_type: Option<Cow<'de, str>> = None;
        while let Some(key) = map.next_key_seed(Key)? {
            let Some(bit) = ITEM_FIELDS.iter().position(|k| *k == key) else {
                self.at.ctx.skip(&mut map)?;
                continue;
            };
            let key: &str = &key;
            seen.first(&self.at, u32::try_from(bit).unwrap_or(u32::MAX), key)?;
            let path = self.at.path.key(key);
            match key {
                "type" => item_type = Some(map.next_value_seed(Text::new(ctx, &path))?),
                "role" => {
                    map.next_value_seed(Str::new(ctx, &path))?;
                }
                "content" => {
                    let at = At { ctx, path: &path, expected: "a string or an array" };
                    map.next_value_seed(Content { at })?;
                }
                // Tool calls and their outputs reach the model as text: count them, whatever their shape.
                _ => map.next_value_seed(AnyValue::count_if_text(ctx))?,
            }
        }
        // An item without `type` is an "easy input message" (`{"role":"user","content":"hi"}`).
        if matches!(item_type.as_deref(), None | Some("message")) {
            if !seen.has(1) {
                return self.at.missing("role");
            }
            if !seen.has(2) {
                return self.at.missing("content");
            }
        }
        Ok(())
    }
}

struct Content<'c> {
    at: At<'c>,
}

impl<'de> DeserializeSeed<'de> for Content<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Content<'_> {
    type Value = ();

    reject!(null bool number object);

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.at.ctx.add_text(v.len());
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            let path = self.at.path.index(index);
            let at = At { ctx: self.at.ctx, path: &path, expected: "an object" };
            if seq.next_element_seed(Part { at })?.is_none() {
                return Ok(());
            }
            index = index.saturating_add(1);
        }
    }
}

const PART_FIELDS: [&str; 3] = ["type", "text", "refusal"];

/// The field a content part of this `type` must carry; `None` for parts the gateway does not police
/// (`input_image` may carry `image_url` or `file_id`, `input_file` one of several sources).
fn required_field(part_type: &str) -> Option<&'static str> {
    match part_type {
        "input_text" | "output_text" | "summary_text" | "reasoning_text" => Some("text"),
        "refusal" => Some("refusal"),
        _ => None,
    }
}

struct Part<'c> {
    at: At<'c>,
}

impl<'de> DeserializeSeed<'de> for Part<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Part<'_> {
    type Value = ();

    reject!(null bool number string array);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.at.ctx;
        let mut seen = Seen::default();
        let mut part_type: Option<Cow<'de, str>> = None;
        while let Some(key) = map.next_key_seed(Key)? {
            let Some(bit) = PART_FIELDS.iter().position(|k| *k == key) else {
                self.at.ctx.skip(&mut map)?;
                continue;
            };
            let key: &str = &key;
            seen.first(&self.at, u32::try_from(bit).unwrap_or(u32::MAX), key)?;
            let path = self.at.path.key(key);
            if key == "type" {
                part_type = Some(map.next_value_seed(Text::new(ctx, &path))?);
            } else {
                map.next_value_seed(Str::counted(ctx, &path))?;
            }
        }
        let Some(part_type) = part_type else {
            return self.at.missing("type");
        };
        if let Some(field) = required_field(&part_type) {
            let bit = PART_FIELDS.iter().position(|k| *k == field).and_then(|b| u32::try_from(b).ok());
            if !bit.is_some_and(|b| seen.has(b)) {
                return self.at.missing(field);
            }
        }
        Ok(())
    }
}
