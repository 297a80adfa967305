//! `/v1/completions` `prompt`: a string, a list of strings, a list of token ids, or a list of lists of ids.
//!
//! The hashed bytes are the prompt text (strings joined with `\n`) or, for token ids, each id as four
//! little-endian bytes, so `prompt_bytes` / 4 is exactly the number of tokens.

use super::error::{Found, Path};
use super::seeds::{found_f64, reject, At, Ctx};
use alloc::borrow::Cow;
use alloc::vec::Vec;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};

/// Separator between the strings of a batched prompt, so `["ab","c"]` and `["a","bc"]` hash differently.
const BATCH_SEPARATOR: u8 = b'\n';

const TOKEN_ID: &str = "a token id (an integer from 0 to 4294967295)";

/// A validated prompt: the bytes hashed for prefix affinity and the prompt size.
#[derive(Debug)]
pub(crate) struct Prompt<'de> {
    pub input: Cow<'de, [u8]>,
    pub bytes: usize,
}

pub(crate) struct PromptSeed<'c> {
    pub ctx: &'c Ctx,
    pub path: &'c Path<'c>,
}

impl<'de> DeserializeSeed<'de> for PromptSeed<'_> {
    type Value = Prompt<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(PromptVisitor {
            at: At { ctx: self.ctx, path: self.path, expected: "a string or an array" },
        })
    }
}

struct PromptVisitor<'c> {
    at: At<'c>,
}

impl<'de> Visitor<'de> for PromptVisitor<'_> {
    type Value = Prompt<'de>;

    reject!(null bool number object);

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Prompt { input: Cow::Borrowed(v.as_bytes()), bytes: v.len() })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Prompt { input: Cow::Owned(v.as_bytes().to_vec()), bytes: v.len() })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut batch = Batch::default();
        let mut index = 0usize;
        loop {
            let path = self.at.path.index(index);
            let item = ItemSeed { ctx: self.at.ctx, path: &path, batch: &mut batch };
            if seq.next_element_seed(item)?.is_none() {
                break;
            }
            index = index.saturating_add(1);
        }
        Ok(batch.finish())
    }
}

/// Which of the list forms the first element chose; later elements must agree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Texts,
    Tokens,
    TokenLists,
}

#[derive(Default)]
struct Batch<'de> {
    form: Option<Form>,
    texts: Vec<Cow<'de, str>>,
    tokens: Vec<u8>,
}

impl<'de> Batch<'de> {
    fn finish(self) -> Prompt<'de> {
        if self.form != Some(Form::Texts) {
            let bytes = self.tokens.len();
            return Prompt { input: Cow::Owned(self.tokens), bytes };
        }
        let bytes = self.texts.iter().map(|t| t.len()).fold(0usize, usize::saturating_add);
        let mut texts = self.texts.into_iter();
        match (texts.next(), texts.len()) {
            // A one-element batch hashes like the plain string, and stays borrowed.
            (Some(Cow::Borrowed(only)), 0) => Prompt { input: Cow::Borrowed(only.as_bytes()), bytes },
            (first, _) => {
                let mut joined = Vec::with_capacity(bytes.saturating_add(texts.len()));
                if let Some(first) = first {
                    joined.extend_from_slice(first.as_bytes());
                }
                for text in texts {
                    joined.push(BATCH_SEPARATOR);
                    joined.extend_from_slice(text.as_bytes());
                }
                Prompt { input: Cow::Owned(joined), bytes }
            }
        }
    }

    /// Adopts `form` if this is the first element; false if an earlier element chose another form.
    fn accepts(&mut self, form: Form) -> bool {
        *self.form.get_or_insert(form) == form
    }

    fn expected(&self) -> &'static str {
        match self.form {
            None => "a string, a token id or an array of token ids",
            Some(Form::Texts) => "a string",
            Some(Form::Tokens) => TOKEN_ID,
            Some(Form::TokenLists) => "an array of token ids",
        }
    }
}

struct ItemSeed<'c, 'b, 'de> {
    ctx: &'c Ctx,
    path: &'c Path<'c>,
    batch: &'b mut Batch<'de>,
}

impl<'de> DeserializeSeed<'de> for ItemSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let expected = self.batch.expected();
        d.deserialize_any(ItemVisitor {
            at: At { ctx: self.ctx, path: self.path, expected },
            batch: self.batch,
        })
    }
}

struct ItemVisitor<'c, 'b, 'de> {
    at: At<'c>,
    batch: &'b mut Batch<'de>,
}

impl ItemVisitor<'_, '_, '_> {
    fn token<E: de::Error>(self, v: u64) -> Result<(), E> {
        if !self.batch.accepts(Form::Tokens) {
            return self.at.reject(Found::Number);
        }
        push_token(&At { expected: TOKEN_ID, ..self.at }, &mut self.batch.tokens, v)
    }
}

fn push_token<E: de::Error>(at: &At<'_>, out: &mut Vec<u8>, v: u64) -> Result<(), E> {
    match u32::try_from(v) {
        Ok(id) => {
            out.extend_from_slice(&id.to_le_bytes());
            Ok(())
        }
        Err(_) => at.reject(Found::LargeNumber),
    }
}

impl<'de> Visitor<'de> for ItemVisitor<'_, '_, 'de> {
    type Value = ();

    reject!(null bool object);

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        if !self.batch.accepts(Form::Texts) {
            return self.at.reject(Found::String);
        }
        self.batch.texts.push(Cow::Borrowed(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if !self.batch.accepts(Form::Texts) {
            return self.at.reject(Found::String);
        }
        self.batch.texts.push(Cow::Owned(v.into()));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.token(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        match u64::try_from(v) {
            Ok(v) => self.token(v),
            Err(_) => self.at.reject(Found::NegativeNumber),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.at.reject(found_f64(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if !self.batch.accepts(Form::TokenLists) {
            return self.at.reject(Found::Array);
        }
        let mut index = 0usize;
        loop {
            let path = self.at.path.index(index);
            let at = At { ctx: self.at.ctx, path: &path, expected: TOKEN_ID };
            if seq.next_element_seed(TokenSeed { at, out: &mut self.batch.tokens })?.is_none() {
                return Ok(());
            }
            index = index.saturating_add(1);
        }
    }
}

struct TokenSeed<'c, 'b> {
    at: At<'c>,
    out: &'b mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for TokenSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TokenSeed<'_, '_> {
    type Value = ();

    reject!(null bool string array object);

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        push_token(&self.at, self.out, v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        match u64::try_from(v) {
            Ok(v) => push_token(&self.at, self.out, v),
            Err(_) => self.at.reject(Found::NegativeNumber),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.at.reject(found_f64(v))
    }
}
