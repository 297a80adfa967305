//! Compact, versioned binary form of a [`PoolSnapshot`]: what the collector writes into proxy shared data and
//! what the companion collector service serves; readers re-decode only when the generation changed.
//!
//! Layout (integers little-endian; `uvar` = unsigned LEB128, at most 10 bytes; `str` = `uvar` byte length
//! then UTF-8 bytes; `opt32` = `uvar` holding value + 1, with 0 meaning none; `svar` = zigzag `uvar`):
//!
//! ```text
//! offset  size  field
//!      0     4  magic b"WEPS"
//!      4     2  format version (u16): 1, or 2 when sections follow the endpoints
//!      6     8  generation (u64)            <- peek_generation reads only bytes 0..14
//!     14     8  published_at_ms (u64)
//!     22        pool: str
//!               endpoint count: uvar, then per endpoint:
//!                 address: str
//!                 role: u8 (0 both, 1 prefill, 2 decode)
//!                 engine: u8 (0 vllm, 1 sglang, 2 trtllm-serve, 3 triton)
//!                 label count: uvar, then (key: str, value: str) pairs
//!                 consecutive_scrape_failures: uvar (u32)
//!                 in_flight.requests: uvar (u32), in_flight.tokens: uvar (u64)
//!                 has metrics: u8 (0 or 1), then if 1:
//!                   waiting: uvar (u32), running: uvar (u32), kv_usage: f64 (8 bytes, IEEE bits)
//!                   running_loras: uvar count + str each; waiting_loras: the same
//!                   max_lora, block_size, num_gpu_blocks: opt32 each
//!                   updated_at_ms: uvar (u64)
//!               version 2 only: section count: uvar, then per section:
//!                 tag: uvar, length: uvar, then `length` bytes:
//!                   tag 1, objectives: count: uvar, then (name: str, priority: svar (i32))
//!                   tag 2, model rewrites (oldest resource first): count: uvar, then per resource:
//!                     name: str ("" = none), rule count: uvar, then per rule:
//!                       match count: uvar, then model value: str (type Exact, the only one)
//!                       target count: uvar, then (modelRewrite: str, weight: opt32)
//!                   any other tag: skipped (a newer writer's section this build does not know)
//!               end of buffer (trailing bytes are an error)
//! ```
//!
//! Compatibility: a snapshot without Kubernetes resources ([`PoolResources`] empty) is written as
//! version 1, byte for byte what earlier builds wrote, so they keep reading it; with resources it is
//! version 2, which earlier builds refuse with [`DecodeError::UnsupportedVersion`] (the companion
//! collector serves such pollers version 1 instead: see `shim-ext-proc/src/snapshot_server.rs`). This build
//! reads both. New kinds of data go into new section tags, which older version-2 readers skip.
//!
//! Decoding trusts nothing: every length and count is checked against the bytes that remain before
//! anything is allocated, so a corrupt or hostile buffer costs at most its own size.

use crate::config::objectives::{Objective, ObjectivePriorities};
use crate::model::{Endpoint, EndpointState, Engine, InFlight, Metrics, PoolResources, PoolSnapshot, Role};
use crate::model_rewrite::{
    InferenceModelRewrite, Match, MatchType, ModelMatch, ModelRewrites, Rule, Target,
};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

pub const MAGIC: [u8; 4] = *b"WEPS";
/// The newest format version this build reads and writes (it writes 1 when there is nothing for 2 to add).
pub const FORMAT_VERSION: u16 = 2;
/// The oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u16 = 1;
/// Section tags of format version 2.
const SECTION_OBJECTIVES: u64 = 1;
const SECTION_REWRITES: u64 = 2;
/// Bytes before the variable-length part: magic, version, generation, published_at_ms.
pub const HEADER_LEN: usize = 22;

/// Smallest possible encodings, used to bound counts by the bytes that remain.
const MIN_ENDPOINT_LEN: usize = 8;
const MIN_LABEL_LEN: usize = 2;
const MIN_STR_LEN: usize = 1;

/// Why a buffer is not a snapshot this build can use. Offsets are byte positions in the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    BadMagic {
        found: [u8; 4],
    },
    /// Written by a different format version; the reader should ignore it (fail open), not guess.
    UnsupportedVersion {
        found: u16,
        supported: u16,
    },
    /// The buffer ended while `field` needed `needed` more bytes.
    Truncated {
        offset: usize,
        field: &'static str,
        needed: usize,
    },
    /// A length or count larger than the rest of the buffer could hold.
    LengthTooLarge {
        offset: usize,
        field: &'static str,
        length: u64,
        remaining: usize,
    },
    InvalidUtf8 {
        offset: usize,
        field: &'static str,
    },
    /// A varint longer than 10 bytes or wider than 64 bits.
    BadVarint {
        offset: usize,
        field: &'static str,
    },
    /// A number outside its field's range (u32 fields, enum tags, the metrics flag).
    OutOfRange {
        offset: usize,
        field: &'static str,
        value: u64,
        max: u64,
    },
    TrailingBytes {
        offset: usize,
        count: usize,
    },
    /// A section decoded but what it holds is not valid (e.g. a rewrite weight out of range).
    InvalidSection {
        offset: usize,
        section: &'static str,
        reason: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadMagic { found } => {
                write!(f, "not a pool snapshot: expected magic {MAGIC:?} at byte 0, found {found:?}")
            }
            DecodeError::UnsupportedVersion { found, supported } => write!(
                f,
                "pool snapshot format version {found} is not supported (this build reads {OLDEST_FORMAT_VERSION} to {supported})"
            ),
            DecodeError::Truncated { offset, field, needed } => {
                write!(f, "pool snapshot truncated at byte {offset}: {field} needs {needed} more byte(s)")
            }
            DecodeError::LengthTooLarge { offset, field, length, remaining } => write!(
                f,
                "pool snapshot corrupt at byte {offset}: {field} claims {length} but only {remaining} byte(s) remain"
            ),
            DecodeError::InvalidUtf8 { offset, field } => {
                write!(f, "pool snapshot corrupt at byte {offset}: {field} is not UTF-8")
            }
            DecodeError::BadVarint { offset, field } => {
                write!(f, "pool snapshot corrupt at byte {offset}: {field} is not a valid varint (max 64 bits)")
            }
            DecodeError::OutOfRange { offset, field, value, max } => {
                write!(f, "pool snapshot corrupt at byte {offset}: {field} is {value}, expected at most {max}")
            }
            DecodeError::TrailingBytes { offset, count } => {
                write!(f, "pool snapshot has {count} unexpected byte(s) after the end at byte {offset}")
            }
            DecodeError::InvalidSection { offset, section, reason } => {
                write!(f, "pool snapshot section {section} at byte {offset} is not valid: {reason}")
            }
        }
    }
}

/// Encodes `snapshot` in the current format version.
pub fn encode(snapshot: &PoolSnapshot) -> Vec<u8> {
    // Rough size: a few dozen bytes per endpoint beyond its strings; avoids most regrowth.
    let mut out = Vec::with_capacity(HEADER_LEN + 16 + snapshot.endpoints.len() * 96);
    out.extend_from_slice(&MAGIC);
    let version = if snapshot.resources.is_empty() { OLDEST_FORMAT_VERSION } else { FORMAT_VERSION };
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&snapshot.generation.to_le_bytes());
    out.extend_from_slice(&snapshot.published_at_ms.to_le_bytes());
    put_str(&mut out, &snapshot.pool);
    put_uvar(&mut out, snapshot.endpoints.len() as u64);
    for state in &snapshot.endpoints {
        let ep = &state.endpoint;
        put_str(&mut out, &ep.address);
        out.push(role_tag(ep.role));
        out.push(engine_tag(ep.engine));
        put_uvar(&mut out, ep.labels.len() as u64);
        for (key, value) in &ep.labels {
            put_str(&mut out, key);
            put_str(&mut out, value);
        }
        put_uvar(&mut out, u64::from(state.consecutive_scrape_failures));
        put_uvar(&mut out, u64::from(state.in_flight.requests));
        put_uvar(&mut out, state.in_flight.tokens);
        match &state.metrics {
            None => out.push(0),
            Some(m) => {
                out.push(1);
                put_uvar(&mut out, u64::from(m.waiting));
                put_uvar(&mut out, u64::from(m.running));
                out.extend_from_slice(&m.kv_usage.to_bits().to_le_bytes());
                put_str_list(&mut out, &m.running_loras);
                put_str_list(&mut out, &m.waiting_loras);
                for opt in [m.max_lora, m.block_size, m.num_gpu_blocks] {
                    put_uvar(&mut out, opt.map_or(0, |v| u64::from(v) + 1));
                }
                put_uvar(&mut out, m.updated_at_ms);
            }
        }
    }
    if version >= 2 {
        put_sections(&mut out, &snapshot.resources);
    }
    out
}

/// Encodes `snapshot` for a reader of format version 1 only: the same bytes as [`encode`] without the
/// pool's Kubernetes resources (which version 1 cannot carry).
pub fn encode_v1(snapshot: &PoolSnapshot) -> Vec<u8> {
    if snapshot.resources.is_empty() {
        return encode(snapshot);
    }
    let bare = PoolSnapshot {
        generation: snapshot.generation,
        published_at_ms: snapshot.published_at_ms,
        pool: snapshot.pool.clone(),
        endpoints: snapshot.endpoints.clone(),
        resources: PoolResources::default(),
    };
    encode(&bare)
}

/// The format version of an encoding made by [`encode`] (header bytes 4..6), without other checks.
pub fn peek_version(bytes: &[u8]) -> Option<u16> {
    let v = bytes.get(4..6)?;
    Some(u16::from_le_bytes([*v.first()?, *v.get(1)?]))
}

fn put_sections(out: &mut Vec<u8>, resources: &PoolResources) {
    let mut sections: Vec<(u64, Vec<u8>)> = Vec::new();
    if !resources.objectives.is_empty() {
        let mut body = Vec::new();
        put_uvar(&mut body, resources.objectives.len() as u64);
        for o in resources.objectives.iter() {
            put_str(&mut body, &o.name);
            put_uvar(&mut body, u64::from(((o.priority << 1) ^ (o.priority >> 31)) as u32));
        }
        sections.push((SECTION_OBJECTIVES, body));
    }
    if !resources.rewrites.is_empty() {
        let mut body = Vec::new();
        put_uvar(&mut body, resources.rewrites.specs().len() as u64);
        for r in resources.rewrites.specs() {
            put_str(&mut body, r.name.as_deref().unwrap_or(""));
            put_uvar(&mut body, r.rules.len() as u64);
            for rule in &r.rules {
                put_uvar(&mut body, rule.matches.len() as u64);
                for m in &rule.matches {
                    put_str(&mut body, &m.model.value);
                }
                put_uvar(&mut body, rule.targets.len() as u64);
                for t in &rule.targets {
                    put_str(&mut body, &t.model_rewrite);
                    let weight = t.weight.and_then(|w| u64::try_from(w).ok());
                    put_uvar(&mut body, weight.map_or(0, |w| w.saturating_add(1)));
                }
            }
        }
        sections.push((SECTION_REWRITES, body));
    }
    put_uvar(out, sections.len() as u64);
    for (tag, body) in sections {
        put_uvar(out, tag);
        put_uvar(out, body.len() as u64);
        out.extend_from_slice(&body);
    }
}

/// Decodes a buffer written by [`encode`] of this format version.
pub fn decode(bytes: &[u8]) -> Result<PoolSnapshot, DecodeError> {
    let mut r = Reader::new(bytes);
    let generation = r.header()?;
    let published_at_ms = r.u64_le("published_at_ms")?;
    let pool = r.string("pool")?;
    let count = r.count("endpoint count", MIN_ENDPOINT_LEN)?;
    let mut endpoints = Vec::with_capacity(count);
    for _ in 0..count {
        endpoints.push(r.endpoint()?);
    }
    let resources = if r.version >= 2 { r.sections()? } else { PoolResources::default() };
    if r.remaining() > 0 {
        return Err(DecodeError::TrailingBytes { offset: r.pos, count: r.remaining() });
    }
    Ok(PoolSnapshot { generation, published_at_ms, pool, endpoints, resources })
}

/// Reads only the header: the generation, after checking magic and version. Lets a reader skip a decode
/// when nothing changed.
pub fn peek_generation(bytes: &[u8]) -> Result<u64, DecodeError> {
    Reader::new(bytes).header()
}

fn put_uvar(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uvar(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_str_list(out: &mut Vec<u8>, items: &[String]) {
    put_uvar(out, items.len() as u64);
    for item in items {
        put_str(out, item);
    }
}

fn role_tag(role: Role) -> u8 {
    match role {
        Role::Both => 0,
        Role::Prefill => 1,
        Role::Decode => 2,
    }
}

fn engine_tag(engine: Engine) -> u8 {
    match engine {
        Engine::Vllm => 0,
        Engine::Sglang => 1,
        Engine::TrtllmServe => 2,
        Engine::Triton => 3,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The format version read from the header (0 before).
    version: u16,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0, version: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.buf.len());
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(DecodeError::Truncated {
                offset: self.pos,
                field,
                needed: n.saturating_sub(self.remaining()),
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array(field)?))
    }

    fn u64_le(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn header(&mut self) -> Result<u64, DecodeError> {
        let magic: [u8; 4] = self.array("magic")?;
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes(self.array("format version")?);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
        }
        self.version = version;
        self.u64_le("generation")
    }

    fn uvar(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8(field)?;
            let bits = u64::from(byte & 0x7f);
            // The 10th byte may only carry the top bit of a u64.
            if shift == 63 && bits > 1 {
                return Err(DecodeError::BadVarint { offset: start, field });
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint { offset: start, field })
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let offset = self.pos;
        let value = self.uvar(field)?;
        u32::try_from(value).map_err(|_| DecodeError::OutOfRange {
            offset,
            field,
            value,
            max: u64::from(u32::MAX),
        })
    }

    fn opt_u32(&mut self, field: &'static str) -> Result<Option<u32>, DecodeError> {
        let offset = self.pos;
        match self.uvar(field)? {
            0 => Ok(None),
            v => u32::try_from(v - 1).map(Some).map_err(|_| DecodeError::OutOfRange {
                offset,
                field,
                value: v,
                max: u64::from(u32::MAX) + 1,
            }),
        }
    }

    fn tag(&mut self, field: &'static str, max: u8) -> Result<u8, DecodeError> {
        let offset = self.pos;
        let tag = self.u8(field)?;
        if tag > max {
            return Err(DecodeError::OutOfRange {
                offset,
                field,
                value: u64::from(tag),
                max: u64::from(max),
            });
        }
        Ok(tag)
    }

    /// A count of items that each take at least `min_item_len` bytes, checked before any allocation.
    fn count(&mut self, field: &'static str, min_item_len: usize) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let n = self.uvar(field)?;
        let limit = self.remaining() / min_item_len;
        match usize::try_from(n) {
            Ok(n) if n <= limit => Ok(n),
            _ => Err(DecodeError::LengthTooLarge { offset, field, length: n, remaining: self.remaining() }),
        }
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.count(field, 1)?;
        let offset = self.pos;
        let bytes = self.take(len, field)?;
        core::str::from_utf8(bytes).map(String::from).map_err(|_| DecodeError::InvalidUtf8 { offset, field })
    }

    fn string_list(&mut self, field: &'static str) -> Result<Vec<String>, DecodeError> {
        let n = self.count(field, MIN_STR_LEN)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.string(field)?);
        }
        Ok(items)
    }

    fn endpoint(&mut self) -> Result<EndpointState, DecodeError> {
        let address = self.string("endpoint address")?;
        let role = match self.tag("endpoint role", 2)? {
            0 => Role::Both,
            1 => Role::Prefill,
            _ => Role::Decode,
        };
        let engine = match self.tag("endpoint engine", 3)? {
            0 => Engine::Vllm,
            1 => Engine::Sglang,
            2 => Engine::TrtllmServe,
            _ => Engine::Triton,
        };
        let label_count = self.count("endpoint label count", MIN_LABEL_LEN)?;
        let mut labels = Vec::with_capacity(label_count);
        for _ in 0..label_count {
            let key = self.string("endpoint label key")?;
            let value = self.string("endpoint label value")?;
            labels.push((key, value));
        }
        let consecutive_scrape_failures = self.u32("consecutive_scrape_failures")?;
        let in_flight = InFlight {
            requests: self.u32("in_flight.requests")?,
            tokens: self.uvar("in_flight.tokens")?,
            ..InFlight::default()
        };
        let metrics = match self.tag("metrics flag", 1)? {
            0 => None,
            _ => Some(self.metrics()?),
        };
        Ok(EndpointState {
            endpoint: Endpoint { address, role, engine, labels },
            metrics,
            consecutive_scrape_failures,
            in_flight,
        })
    }

    fn i32_zigzag(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        let z = self.u32(field)?;
        Ok(((z >> 1) as i32) ^ -((z & 1) as i32))
    }

    /// Version 2's sections, after the endpoints. Each known section must fill its length exactly.
    fn sections(&mut self) -> Result<PoolResources, DecodeError> {
        let mut resources = PoolResources::default();
        // A section is at least a tag, a length and nothing else.
        let count = self.count("section count", 2)?;
        for _ in 0..count {
            let tag = self.uvar("section tag")?;
            let len = self.count("section length", 1)?;
            let start = self.pos;
            let body = self.take(len, "section")?;
            let mut sub = Reader { buf: body, pos: 0, version: self.version };
            // Offsets inside a section are reported from the start of the whole buffer.
            match tag {
                SECTION_OBJECTIVES => resources.objectives = sub.objectives().map_err(|e| shift(e, start))?,
                SECTION_REWRITES => resources.rewrites = sub.rewrites().map_err(|e| shift(e, start))?,
                _ => continue,
            }
            if sub.remaining() > 0 {
                return Err(DecodeError::TrailingBytes { offset: start + sub.pos, count: sub.remaining() });
            }
        }
        Ok(resources)
    }

    fn objectives(&mut self) -> Result<ObjectivePriorities, DecodeError> {
        let n = self.count("objective count", 2)?;
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.string("objective name")?;
            let priority = self.i32_zigzag("objective priority")?;
            list.push(Objective { name, priority });
        }
        Ok(ObjectivePriorities::new(list))
    }

    fn rewrites(&mut self) -> Result<ModelRewrites, DecodeError> {
        let n = self.count("rewrite count", 2)?;
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.string("rewrite name")?;
            let rule_count = self.count("rewrite rule count", 2)?;
            let mut rules = Vec::with_capacity(rule_count);
            for _ in 0..rule_count {
                let match_count = self.count("rewrite match count", MIN_STR_LEN)?;
                let mut matches = Vec::with_capacity(match_count);
                for _ in 0..match_count {
                    let value = self.string("rewrite match model")?;
                    matches.push(Match { model: ModelMatch { match_type: MatchType::Exact, value } });
                }
                let target_count = self.count("rewrite target count", 2)?;
                let mut targets = Vec::with_capacity(target_count);
                for _ in 0..target_count {
                    let model_rewrite = self.string("rewrite target model")?;
                    let weight = self.opt_u32("rewrite target weight")?.map(i64::from);
                    targets.push(Target { model_rewrite, weight });
                }
                rules.push(Rule { matches, targets });
            }
            let name = (!name.is_empty()).then_some(name);
            list.push(InferenceModelRewrite { name, pool_ref: None, rules });
        }
        let offset = self.pos;
        ModelRewrites::new(list).map_err(|e| DecodeError::InvalidSection {
            offset,
            section: "model rewrites",
            reason: e.to_string(),
        })
    }

    fn metrics(&mut self) -> Result<Metrics, DecodeError> {
        Ok(Metrics {
            waiting: self.u32("metrics.waiting")?,
            running: self.u32("metrics.running")?,
            kv_usage: f64::from_bits(self.u64_le("metrics.kv_usage")?),
            running_loras: self.string_list("metrics.running_loras")?,
            waiting_loras: self.string_list("metrics.waiting_loras")?,
            max_lora: self.opt_u32("metrics.max_lora")?,
            block_size: self.opt_u32("metrics.block_size")?,
            num_gpu_blocks: self.opt_u32("metrics.num_gpu_blocks")?,
            updated_at_ms: self.uvar("metrics.updated_at_ms")?,
        })
    }
}

/// `e` with its offset moved by `by` (an error found in a section's own reader).
fn shift(e: DecodeError, by: usize) -> DecodeError {
    match e {
        DecodeError::Truncated { offset, field, needed } => {
            DecodeError::Truncated { offset: offset + by, field, needed }
        }
        DecodeError::LengthTooLarge { offset, field, length, remaining } => {
            DecodeError::LengthTooLarge { offset: offset + by, field, length, remaining }
        }
        DecodeError::InvalidUtf8 { offset, field } => DecodeError::InvalidUtf8 { offset: offset + by, field },
        DecodeError::BadVarint { offset, field } => DecodeError::BadVarint { offset: offset + by, field },
        DecodeError::OutOfRange { offset, field, value, max } => {
            DecodeError::OutOfRange { offset: offset + by, field, value, max }
        }
        DecodeError::TrailingBytes { offset, count } => {
            DecodeError::TrailingBytes { offset: offset + by, count }
        }
        DecodeError::InvalidSection { offset, section, reason } => {
            DecodeError::InvalidSection { offset: offset + by, section, reason }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    fn sample_snapshot() -> PoolSnapshot {
        let mut a = EndpointState::new(Endpoint {
            address: "10.0.0.1:8000".into(),
            role: Role::Prefill,
            engine: Engine::Sglang,
            labels: vec![("app".into(), "llama".into()), ("zone".into(), "eu-west-1a".into())],
        });
        a.metrics = Some(Metrics {
            waiting: 3,
            running: 17,
            kv_usage: 0.4375,
            running_loras: vec!["sql-lora".into(), "chat-lora".into()],
            waiting_loras: vec!["tldr-lora".into()],
            max_lora: Some(4),
            block_size: Some(16),
            num_gpu_blocks: Some(27_828),
            updated_at_ms: 1_757_134_210_881,
        });
        a.consecutive_scrape_failures = 2;
        a.in_flight = InFlight { requests: 5, tokens: 12_345, ..InFlight::default() };
        let b = EndpointState::new(Endpoint::new("[fd00::7]:8000"));
        PoolSnapshot {
            generation: 42,
            published_at_ms: 1_757_134_210_900,
            pool: "llama-pool".into(),
            endpoints: vec![a, b],
            resources: PoolResources::default(),
        }
    }

    fn sample_resources() -> PoolResources {
        PoolResources {
            objectives: ObjectivePriorities::from_json(
                r#"[{"name": "batch", "priority": -1}, {"name": "chat", "priority": 10},
                    {"name": "floor", "priority": -2147483648}, {"name": "top", "priority": 2147483647}]"#,
            )
            .unwrap(),
            rewrites: ModelRewrites::from_json(
                r#"[{"name": "canary", "rules": [
                      {"matches": [{"model": {"value": "llama"}}], "targets": [{"modelRewrite": "llama-v1", "weight": 90}, {"modelRewrite": "llama-v2", "weight": 10}]},
                      {"targets": [{"modelRewrite": "fallback"}]}]},
                    {"rules": [{"matches": [{"model": {"value": "a"}}, {"model": {"value": "b"}}], "targets": [{"modelRewrite": "ab"}]}]}]"#,
            )
            .unwrap(),
        }
    }

    fn with_resources() -> PoolSnapshot {
        PoolSnapshot { resources: sample_resources(), ..sample_snapshot() }
    }

    #[test]
    fn round_trip_and_header_layout() {
        let snap = sample_snapshot();
        let bytes = encode(&snap);
        assert_eq!(bytes.get(..4), Some(&b"WEPS"[..]));
        assert_eq!(bytes.get(4..6), Some(&[1u8, 0][..]));
        assert_eq!(bytes.get(6..14), Some(&42u64.to_le_bytes()[..]));
        assert_eq!(decode(&bytes), Ok(snap));
        assert_eq!(peek_generation(&bytes), Ok(42));
        // Header-only reads work on a buffer cut right after the generation.
        assert_eq!(peek_generation(bytes.get(..14).unwrap_or_default()), Ok(42));
    }

    #[test]
    fn empty_pool_is_small() {
        let bytes = encode(&PoolSnapshot::default());
        assert_eq!(bytes.len(), HEADER_LEN + 2);
        assert_eq!(decode(&bytes), Ok(PoolSnapshot::default()));
    }

    #[test]
    fn every_truncation_errors_cleanly() {
        let bytes = encode(&sample_snapshot());
        for len in 0..bytes.len() {
            let cut = bytes.get(..len).unwrap_or_default();
            match decode(cut) {
                Err(DecodeError::Truncated { offset, needed, .. }) => {
                    assert!(offset <= len && needed > 0, "len {len}: offset {offset}, needed {needed}")
                }
                // A length prefix read before the cut can exceed what is left; that is reported instead.
                Err(DecodeError::LengthTooLarge { .. }) => {}
                other => panic!("prefix of {len} bytes should be truncated, got {other:?}"),
            }
        }
    }

    #[test]
    fn version_mismatch_is_reported_not_guessed() {
        let mut bytes = encode(&sample_snapshot());
        if let Some(v) = bytes.get_mut(4..6) {
            v.copy_from_slice(&3u16.to_le_bytes());
        }
        let expected = Err(DecodeError::UnsupportedVersion { found: 3, supported: 2 });
        assert_eq!(decode(&bytes), expected);
        assert_eq!(peek_generation(&bytes), expected.map(|_: PoolSnapshot| 0));
        let shown = decode(&bytes).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(shown, "pool snapshot format version 3 is not supported (this build reads 1 to 2)");
        if let Some(v) = bytes.get_mut(4..6) {
            v.copy_from_slice(&0u16.to_le_bytes());
        }
        assert_eq!(decode(&bytes), Err(DecodeError::UnsupportedVersion { found: 0, supported: 2 }));
    }

    /// A version-1 snapshot as earlier builds wrote it (one endpoint `a` with metrics 3 waiting), frozen.
    const FROZEN_V1: &[u8] = b"WEPS\x01\x00\x07\x00\x00\x00\x00\x00\x00\x00\xe8\x03\x00\x00\x00\x00\x00\x00\x01p\x01\x01a\x00\x00\x00\x00\x00\x00\x01\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

    #[test]
    fn snapshots_without_resources_stay_version_1_byte_for_byte() {
        let mut snap = PoolSnapshot {
            generation: 7,
            published_at_ms: 1000,
            pool: "p".into(),
            ..PoolSnapshot::default()
        };
        let mut a = EndpointState::new(Endpoint::new("a"));
        a.metrics = Some(Metrics { waiting: 3, ..Metrics::default() });
        snap.endpoints.push(a);
        assert_eq!(encode(&snap), FROZEN_V1, "what earlier builds write and read");
        assert_eq!(decode(FROZEN_V1), Ok(snap.clone()));
        assert_eq!(peek_version(FROZEN_V1), Some(1));
        assert_eq!(encode_v1(&snap), FROZEN_V1);
    }

    #[test]
    fn resources_make_version_2_and_round_trip() {
        let snap = with_resources();
        let bytes = encode(&snap);
        assert_eq!(peek_version(&bytes), Some(2));
        assert_eq!(peek_generation(&bytes), Ok(42));
        assert_eq!(decode(&bytes), Ok(snap.clone()));
        // Version 2 is version 1 with the sections appended: the endpoints read the same either way.
        let v1 = encode_v1(&snap);
        assert_eq!(peek_version(&v1), Some(1));
        assert_eq!(bytes.get(6..v1.len()), v1.get(6..));
        assert_eq!(decode(&v1), Ok(sample_snapshot()), "version 1 carries everything but the resources");
        // Earlier builds read version 1 only: they refuse this one (UnsupportedVersion) instead of
        // misreading it.
        // Priorities survive the zigzag at both ends of i32.
        let back = decode(&bytes).unwrap().resources;
        assert_eq!(back.objectives.get("floor"), Some(i32::MIN));
        assert_eq!(back.objectives.get("top"), Some(i32::MAX));
        assert_eq!(back.objectives.get("batch"), Some(-1));
    }

    #[test]
    fn unknown_sections_are_skipped_and_known_ones_must_fill_their_length() {
        let snap = PoolSnapshot { resources: sample_resources(), ..PoolSnapshot::default() };
        let bytes = encode(&snap);
        // Rebuild with an extra section (tag 99) before the known ones: a newer writer's addition.
        let base = encode_v1(&snap);
        let sections = bytes.get(base.len()..).unwrap().to_vec();
        let mut newer = bytes.get(..base.len()).unwrap().to_vec();
        let count = sections.first().copied().unwrap();
        newer.push(count + 1);
        put_uvar(&mut newer, 99);
        put_str(&mut newer, "future data");
        newer.extend_from_slice(sections.get(1..).unwrap());
        assert_eq!(decode(&newer), Ok(snap.clone()));

        // An objectives section one byte longer than its content.
        let mut padded = bytes.get(..base.len()).unwrap().to_vec();
        let mut body = Vec::new();
        put_uvar(&mut body, 1);
        put_str(&mut body, "x");
        put_uvar(&mut body, 2);
        body.push(0);
        padded.push(1);
        put_uvar(&mut padded, SECTION_OBJECTIVES);
        put_uvar(&mut padded, body.len() as u64);
        padded.extend_from_slice(&body);
        assert!(
            matches!(decode(&padded), Err(DecodeError::TrailingBytes { count: 1, .. })),
            "{:?}",
            decode(&padded)
        );
    }

    #[test]
    fn an_invalid_rewrite_in_a_section_is_reported_with_its_reason() {
        let snap = PoolSnapshot::default();
        let mut bytes = encode(&snap);
        if let Some(v) = bytes.get_mut(4..6) {
            v.copy_from_slice(&2u16.to_le_bytes());
        }
        let mut body = Vec::new();
        put_uvar(&mut body, 1); // one resource
        put_str(&mut body, "bad");
        put_uvar(&mut body, 1); // one rule
        put_uvar(&mut body, 0); // catch-all
        put_uvar(&mut body, 1); // one target
        put_str(&mut body, "m");
        put_uvar(&mut body, 2_000_000 + 1); // weight 2,000,000
        bytes.push(1);
        put_uvar(&mut bytes, SECTION_REWRITES);
        put_uvar(&mut bytes, body.len() as u64);
        bytes.extend_from_slice(&body);
        let err = decode(&bytes).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.starts_with("pool snapshot section model rewrites at byte")
                && err.ends_with(
                    "rewrites[0].rules[0].targets[0].weight: expected an integer in 1..=1000000, got 2000000"
                ),
            "{err}"
        );
    }

    #[test]
    fn every_truncation_of_a_version_2_snapshot_errors_cleanly() {
        let bytes = encode(&with_resources());
        for len in 0..bytes.len() {
            let cut = bytes.get(..len).unwrap_or_default();
            assert!(
                matches!(
                    decode(cut),
                    Err(DecodeError::Truncated { .. } | DecodeError::LengthTooLarge { .. })
                ),
                "prefix of {len} bytes: {:?}",
                decode(cut)
            );
        }
    }

    #[test]
    fn wrong_magic() {
        let mut bytes = encode(&sample_snapshot());
        if let Some(b) = bytes.first_mut() {
            *b = b'X';
        }
        assert_eq!(decode(&bytes), Err(DecodeError::BadMagic { found: *b"XEPS" }));
        assert!(matches!(peek_generation(b"WEP"), Err(DecodeError::Truncated { offset: 0, needed: 1, .. })));
    }

    fn header() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 16]);
        out
    }

    #[test]
    fn oversized_lengths_are_rejected_before_allocating() {
        // Pool name claiming 2^60 bytes.
        let mut bytes = header();
        put_uvar(&mut bytes, 1 << 60);
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::LengthTooLarge { offset: 22, field: "pool", length, remaining: 0 }) if length == 1 << 60
        ));
        // A billion endpoints in 20 bytes.
        let mut bytes = header();
        put_str(&mut bytes, "p");
        put_uvar(&mut bytes, 1_000_000_000);
        bytes.extend_from_slice(&[0; 20]);
        let err = decode(&bytes).err();
        assert!(matches!(err, Some(DecodeError::LengthTooLarge { field: "endpoint count", .. })), "{err:?}");
        // u64::MAX count also fits the check (no overflow in the bound).
        let mut bytes = header();
        put_str(&mut bytes, "p");
        put_uvar(&mut bytes, u64::MAX);
        assert!(matches!(decode(&bytes), Err(DecodeError::LengthTooLarge { .. })));
    }

    #[test]
    fn bad_varints_tags_and_ranges() {
        let mut bytes = header();
        bytes.extend_from_slice(&[0xff; 10]);
        bytes.push(0x01);
        assert!(matches!(decode(&bytes), Err(DecodeError::BadVarint { offset: 22, field: "pool" })));
        let mut bytes = header();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert!(matches!(decode(&bytes), Err(DecodeError::BadVarint { .. })));

        let good = encode(&sample_snapshot());
        // Role byte of the first endpoint: header, pool str (1 + 10), count (1), address str (1 + 13).
        let role_at = HEADER_LEN + 11 + 1 + 14;
        let mut bytes = good.clone();
        if let Some(b) = bytes.get_mut(role_at) {
            *b = 9;
        }
        let err = decode(&bytes).err();
        assert_eq!(
            err,
            Some(DecodeError::OutOfRange { offset: role_at, field: "endpoint role", value: 9, max: 2 })
        );
        assert_eq!(
            err.map(|e| e.to_string()).unwrap_or_default(),
            "pool snapshot corrupt at byte 48: endpoint role is 9, expected at most 2"
        );

        let mut bytes = good;
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(DecodeError::TrailingBytes { count: 1, .. })));
    }

    #[test]
    fn u32_fields_reject_wider_values() {
        let mut snap = PoolSnapshot::default();
        snap.endpoints.push(EndpointState::new(Endpoint::new("a")));
        let mut bytes = encode(&snap);
        // Replace the trailing failures(0), requests(0), tokens(0), flag(0) with failures = 2^32.
        bytes.truncate(bytes.len() - 4);
        put_uvar(&mut bytes, 1 << 32);
        bytes.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::OutOfRange { field: "consecutive_scrape_failures", value, .. }) if value == 1 << 32
        ));
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let mut bytes = header();
        bytes.extend_from_slice(&[2, 0xc3, 0x28, 0]);
        assert_eq!(decode(&bytes), Err(DecodeError::InvalidUtf8 { offset: 23, field: "pool" }));
    }

    #[test]
    fn decodes_1024_endpoints() {
        // Size sanity for the shared-data budget; speed is measured in BENCHMARKS.md, not here.
        let mut snap = sample_snapshot();
        let template = snap.endpoints.first().cloned().unwrap_or_default();
        snap.endpoints = (0..1024)
            .map(|i| {
                let mut e = template.clone();
                e.endpoint.address = alloc::format!("10.0.{}.{}:8000", i / 256, i % 256);
                e
            })
            .collect();
        let bytes = encode(&snap);
        // About 100 bytes per endpoint with two labels and three adapters.
        assert!(bytes.len() < 128 * 1024, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes), Ok(snap));
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![".{0,12}", "[a-z0-9.:\\[\\]-]{0,24}"]
    }

    fn arb_metrics() -> impl Strategy<Value = Metrics> {
        (
            (any::<u32>(), any::<u32>(), any::<f64>().prop_filter("NaN != NaN", |v| !v.is_nan())),
            (prop::collection::vec(arb_string(), 0..4), prop::collection::vec(arb_string(), 0..4)),
            (any::<Option<u32>>(), any::<Option<u32>>(), any::<Option<u32>>(), any::<u64>()),
        )
            .prop_map(
                |(
                    (waiting, running, kv_usage),
                    (running_loras, waiting_loras),
                    (max_lora, block_size, num_gpu_blocks, updated_at_ms),
                )| Metrics {
                    waiting,
                    running,
                    kv_usage,
                    running_loras,
                    waiting_loras,
                    max_lora,
                    block_size,
                    num_gpu_blocks,
                    updated_at_ms,
                },
            )
    }

    fn arb_endpoint() -> impl Strategy<Value = EndpointState> {
        (
            arb_string(),
            0u8..3,
            0u8..4,
            prop::collection::vec((arb_string(), arb_string()), 0..4),
            proptest::option::of(arb_metrics()),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
        )
            .prop_map(|(address, role, engine, labels, metrics, failures, requests, tokens)| {
                EndpointState {
                    endpoint: Endpoint {
                        address,
                        role: [Role::Both, Role::Prefill, Role::Decode]
                            .get(usize::from(role))
                            .copied()
                            .unwrap_or_default(),
                        engine: Engine::ALL.get(usize::from(engine)).copied().unwrap_or_default(),
                        labels,
                    },
                    metrics,
                    consecutive_scrape_failures: failures,
                    in_flight: InFlight { requests, tokens, ..InFlight::default() },
                }
            })
    }

    fn arb_resources() -> impl Strategy<Value = PoolResources> {
        let objective =
            (arb_string(), any::<i32>()).prop_map(|(name, priority)| Objective { name, priority });
        let target =
            ("[a-z0-9.-]{1,12}", proptest::option::of(1i64..=i64::from(crate::model_rewrite::MAX_WEIGHT)));
        let rule = (prop::collection::vec("[a-z0-9.-]{1,12}", 0..3), prop::collection::vec(target, 1..4))
            .prop_map(|(matches, targets)| {
                let all_weighted = targets.iter().all(|(_, w)| w.is_some());
                Rule {
                    matches: matches
                        .into_iter()
                        .map(|value| Match { model: ModelMatch { match_type: MatchType::Exact, value } })
                        .collect(),
                    targets: targets
                        .into_iter()
                        .map(|(model_rewrite, w)| Target {
                            model_rewrite,
                            weight: w.filter(|_| all_weighted),
                        })
                        .collect(),
                }
            });
        let rewrite = (proptest::option::of("[a-z]{1,8}"), prop::collection::vec(rule, 0..3))
            .prop_map(|(name, rules)| InferenceModelRewrite { name, pool_ref: None, rules });
        (prop::collection::vec(objective, 0..4), prop::collection::vec(rewrite, 0..3)).prop_map(|(o, r)| {
            PoolResources {
                objectives: ObjectivePriorities::new(o),
                rewrites: ModelRewrites::new(r).unwrap(),
            }
        })
    }

    fn arb_snapshot() -> impl Strategy<Value = PoolSnapshot> {
        (
            any::<u64>(),
            any::<u64>(),
            arb_string(),
            prop::collection::vec(arb_endpoint(), 0..8),
            prop_oneof![Just(PoolResources::default()), arb_resources()],
        )
            .prop_map(|(generation, published_at_ms, pool, endpoints, resources)| PoolSnapshot {
                generation,
                published_at_ms,
                pool,
                endpoints,
                resources,
            })
    }

    proptest! {
        #[test]
        fn round_trips(snap in arb_snapshot()) {
            let bytes = encode(&snap);
            prop_assert_eq!(peek_generation(&bytes), Ok(snap.generation));
            prop_assert_eq!(decode(&bytes), Ok(snap));
        }

        #[test]
        fn reencoding_is_byte_identical_even_for_nan_kv(snap in arb_snapshot(), kv_bits in any::<u64>()) {
            let mut snap = snap;
            for e in &mut snap.endpoints {
                if let Some(m) = &mut e.metrics {
                    m.kv_usage = f64::from_bits(kv_bits);
                }
            }
            let bytes = encode(&snap);
            let again = decode(&bytes).map(|s| encode(&s));
            prop_assert_eq!(again, Ok(bytes));
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            let _ = peek_generation(&bytes);
        }

        #[test]
        fn random_bodies_after_a_valid_header_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = header();
            bytes.extend_from_slice(&body);
            let _ = decode(&bytes);
        }

        #[test]
        fn corrupted_encodings_never_panic(snap in arb_snapshot(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = encode(&snap);
            if !bytes.is_empty() {
                let i = at % bytes.len();
                if let Some(b) = bytes.get_mut(i) {
                    *b = byte;
                }
            }
            let _ = decode(&bytes);
        }
    }
}
