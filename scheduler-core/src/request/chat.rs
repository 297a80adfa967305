//! `/v1/chat/completions` `messages`: validated for shape and measured for size; the hashed bytes are the
//! raw JSON of `messages` itself (see `super::parse_request`), so nothing here is kept.

use super::error::{Found, Path};
use super::seeds::{reject, At, Ctx, Key, Seen, Str, Text};
use alloc::borrow::Cow;
use alloc::vec::Vec;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Validates a `messages` array; adds the text content sizes to `ctx`.
pub(crate) struct Messages<'c> {
    pub ctx: &'c Ctx,
    pub path: &'c Path<'c>,
}

impl<'de> DeserializeSeed<'de> for Messages<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(MessagesVisitor { at: At { ctx: self.ctx, path: self.path, expected: "an array" } })
    }
}

struct MessagesVisitor<'c> {
    at: At<'c>,
}

impl<'de> Visitor<'de> for MessagesVisitor<'_> {
    type Value = ();

    reject!(null bool number string object);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            let path = self.at.path.index(index);
            let at = At { ctx: self.at.ctx, path: &path, expected: "an object" };
            if seq.next_element_seed(MessageVisitor { at })?.is_none() {
                break;
            }
            index = index.saturating_add(1);
        }
        if index == 0 {
            // No model server accepts a chat without messages; say so before a pod is chosen.
            let at = At { expected: "a non-empty array", ..self.at };
            return at.reject(Found::EmptyArray);
        }
        Ok(())
    }
}

struct MessageVisitor<'c> {
    at: At<'c>,
}

impl<'de> DeserializeSeed<'de> for MessageVisitor<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MessageVisitor<'_> {
    type Value = ();

    reject!(null bool number string array);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.at.ctx;
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(Key)? {
            let key: &str = &key;
            let path = self.at.path.key(key);
            match key {
                "role" => {
                    seen.first(&self.at, 0, key)?;
                    map.next_value_seed(Str::new(ctx, &path))?;
                }
                "content" => {
                    seen.first(&self.at, 1, key)?;
                    let at = At { ctx, path: &path, expected: "a string or an array" };
                    map.next_value_seed(Content { at })?;
                }
                _ => ctx.skip(&mut map)?,
            }
        }
        // `content` may be absent or null: an assistant turn that only calls tools has none.
        if !seen.has(0) {
            return self.at.missing("role");
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

    reject!(bool number object);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

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

/// Part fields whose shape is checked; each part `type` names the field that must carry its data
/// (`{"type":"image_url","image_url":{...}}`), which holds for every OpenAI and vLLM part type.
const PART_FIELDS: [&str; 7] = ["type", "text", "refusal", "image_url", "video_url", "video", "input_audio"];

/// Whether the part field `name` (one of `PART_FIELDS`) was seen.
fn has(seen: &Seen, name: &str) -> bool {
    PART_FIELDS
        .iter()
        .position(|k| *k == name)
        .and_then(|bit| u32::try_from(bit).ok())
        .is_some_and(|bit| seen.has(bit))
}

/// Media fields (beyond `PART_FIELDS`) that vLLM recognises in a part without `type`.
const TYPELESS_MEDIA: [&str; 2] = ["audio_url", "image_embeds"];

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
        // Keys of part types the gateway does not know, to check that the one named by `type` is there.
        let mut other_keys: Vec<Cow<'de, str>> = Vec::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let Some(bit) = PART_FIELDS.iter().position(|k| *k == key) else {
                other_keys.push(key);
                self.at.ctx.skip(&mut map)?;
                continue;
            };
            let key: &str = &key;
            seen.first(&self.at, u32::try_from(bit).unwrap_or(u32::MAX), key)?;
            let path = self.at.path.key(key);
            match key {
                "type" => part_type = Some(map.next_value_seed(Text::new(ctx, &path))?),
                "text" | "refusal" => {
                    map.next_value_seed(Str::counted(ctx, &path))?;
                }
                "input_audio" => {
                    let at = At { ctx, path: &path, expected: "an object" };
                    map.next_value_seed(Fields { at, required: &["data", "format"], or_string: false })?;
                }
                _ => {
                    let at = At { ctx, path: &path, expected: "a string or an object" };
                    map.next_value_seed(Fields { at, required: &["url"], or_string: true })?;
                }
            }
        }
        let Some(part_type) = part_type else {
            // vLLM also takes a media part without `type` (`{"image_url": "https://..."}`).
            let media = ["image_url", "video_url", "video", "input_audio"].iter().any(|f| has(&seen, f))
                || other_keys.iter().any(|k| TYPELESS_MEDIA.contains(&k.as_ref()));
            return if media { Ok(()) } else { self.at.missing("type") };
        };
        let present = if PART_FIELDS.contains(&part_type.as_ref()) {
            has(&seen, &part_type)
        } else {
            other_keys.contains(&part_type)
        };
        if !present {
            return self.at.missing(&part_type);
        }
        Ok(())
    }
}

/// An object that must have the `required` string fields (a URL or audio payload), or, when
/// `or_string`, a bare string (vLLM accepts `"image_url": "https://..."`).
struct Fields<'c> {
    at: At<'c>,
    required: &'static [&'static str],
    or_string: bool,
}

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = ();

    reject!(null bool number array);

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        if self.or_string {
            Ok(())
        } else {
            self.at.reject(Found::String)
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(Key)? {
            let Some(bit) = self.required.iter().position(|k| *k == key) else {
                self.at.ctx.skip(&mut map)?;
                continue;
            };
            let key: &str = &key;
            seen.first(&self.at, u32::try_from(bit).unwrap_or(u32::MAX), key)?;
            let path = self.at.path.key(key);
            map.next_value_seed(Str::new(self.at.ctx, &path))?;
        }
        for (bit, name) in (0u32..).zip(self.required) {
            if !seen.has(bit) {
                return self.at.missing(name);
            }
        }
        Ok(())
    }
}
