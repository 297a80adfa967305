//! `session-affinity-scorer` (llm-d): keeps a conversation on the endpoint that served it before.
//!
//! The client echoes `x-session-token`, which the gateway set on the previous response to base64 of
//! the serving endpoint's address (llm-d's `encoded_endpoint_header` strategy); that endpoint scores
//! 1, every other 0. Stateless, so every gateway replica honours every token.
//!
//! The token is set by the exchange's response-headers step (`crate::exchange`) when a profile uses this
//! scorer. llm-d-router's own scorer encodes the pod's `namespace/name` instead (our endpoints carry no pod
//! name, and one pod may serve several ports), so its tokens name no endpoint here: no preference.

use crate::config::params::ParamError;
use crate::plugins::candidates::state;
use crate::scheduling::{BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer};
use alloc::string::String;
use alloc::vec::Vec;
use serde::de::IgnoredAny;
use serde::Deserialize;

pub const TYPE: &str = "session-affinity-scorer";

/// The request and response header that carries the token.
pub const SESSION_HEADER: &str = "x-session-token";

const ENCODED_ENDPOINT_HEADER: &str = "encoded_endpoint_header";

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Only `encoded_endpoint_header` is supported; llm-d's `session_id` needs a session table.
    pub strategy: String,
    pub encoded_endpoint_header_config: EncodedEndpointHeaderConfig,
    /// Accepted so llm-d configurations load; only meaningful with the `session_id` strategy.
    pub session_id_config: Option<IgnoredAny>,
    /// Profile whose primary target is written back in the token (empty: the primary profile). Used
    /// by the response side, not by scoring.
    pub profile_name: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EncodedEndpointHeaderConfig {
    pub header: String,
}

impl Default for EncodedEndpointHeaderConfig {
    fn default() -> EncodedEndpointHeaderConfig {
        EncodedEndpointHeaderConfig { header: String::from(SESSION_HEADER) }
    }
}

impl Default for Params {
    fn default() -> Params {
        Params {
            strategy: String::from(ENCODED_ENDPOINT_HEADER),
            encoded_endpoint_header_config: EncodedEndpointHeaderConfig::default(),
            session_id_config: None,
            profile_name: String::new(),
        }
    }
}

/// Scores 1.0 for the endpoint named by the request's session token, 0.0 for the others. A missing,
/// malformed (not base64, not UTF-8) or unknown token scores every candidate 0: no preference.
#[derive(Clone, Debug, Default)]
pub struct SessionAffinityScorer {
    profile_name: String,
}

impl PluginFactory for SessionAffinityScorer {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<SessionAffinityScorer, ParamError> {
        match params.strategy.as_str() {
            ENCODED_ENDPOINT_HEADER => {}
            "session_id" => {
                return Err(ParamError::invalid(
                    "strategy",
                    "\"encoded_endpoint_header\" (the session_id strategy is not supported)",
                ))
            }
            _ => return Err(ParamError::invalid("strategy", "\"encoded_endpoint_header\"")),
        }
        // The request only carries `x-session-token` (`SchedulingRequest::session_token`), so another
        // header name would silently never match.
        let header = params.encoded_endpoint_header_config.header.trim();
        if !(header.is_empty() || header.eq_ignore_ascii_case(SESSION_HEADER)) {
            return Err(ParamError::invalid(
                "encodedEndpointHeaderConfig.header",
                "\"x-session-token\" (the only session header passed to the scheduler)",
            ));
        }
        Ok(SessionAffinityScorer { profile_name: params.profile_name })
    }
}

impl SessionAffinityScorer {
    /// Profile whose primary target the response side should encode, `None` for the primary profile.
    pub fn profile_name(&self) -> Option<&str> {
        Some(self.profile_name.as_str()).filter(|p| !p.is_empty())
    }
}

impl Plugin for SessionAffinityScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Scorer for SessionAffinityScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        let target = ctx.request.session_token.and_then(decode_session_token);
        for (slot, &i) in scores.iter_mut().zip(candidates) {
            let hit = match (&target, state(ctx, i)) {
                (Some(t), Some(s)) => s.address() == t.as_str(),
                _ => false,
            };
            *slot = if hit { 1.0 } else { 0.0 };
        }
    }
}

/// The token to send back on the response: standard padded base64 of the endpoint address, the
/// encoding llm-d writes.
pub fn encode_session_token(address: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(address.len().div_ceil(3).saturating_mul(4));
    for chunk in address.as_bytes().chunks(3) {
        let mut buf = [0u8; 3];
        for (dst, src) in buf.iter_mut().zip(chunk) {
            *dst = *src;
        }
        let [a, b, c] = buf;
        let group = u32::from_be_bytes([0, a, b, c]);
        for k in 0..4u32 {
            // A chunk of n bytes yields n + 1 characters, padded to 4 with '='.
            if (k as usize) <= chunk.len() {
                let sextet = (group >> (18 - 6 * k)) & 63;
                out.push(ALPHABET.get(sextet as usize).map_or('A', |&ch| char::from(ch)));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes a session token back to an endpoint address. Accepts the standard and URL-safe alphabets
/// (clients and proxies rewrite one into the other), with or without padding; when padding is present
/// it must be complete. `None` for anything else or when the bytes are not UTF-8.
pub fn decode_session_token(token: &str) -> Option<String> {
    String::from_utf8(decode_base64(token.as_bytes())?).ok()
}

fn decode_base64(input: &[u8]) -> Option<Vec<u8>> {
    let data_len = input.iter().rposition(|&c| c != b'=').map_or(0, |p| p + 1);
    let (data, padding) = input.split_at(data_len);
    let rem = data.len() % 4;
    if rem == 1 {
        return None;
    }
    if !padding.is_empty() && (!input.len().is_multiple_of(4) || padding.len() != (4 - rem) % 4) {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    for chunk in data.chunks(4) {
        let mut group = 0u32;
        for &c in chunk {
            group = (group << 6) | sextet(c)?;
        }
        group <<= 6 * (4 - chunk.len() as u32);
        let [_, b0, b1, b2] = group.to_be_bytes();
        // n characters carry n − 1 whole bytes; leftover low bits are ignored, as Go's decoder does.
        out.extend([b0, b1, b2].into_iter().take(chunk.len().saturating_sub(1)));
    }
    Some(out)
}

fn sextet(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        b'/' | b'_' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::scheduling::SchedulingRequest;
    use alloc::vec;

    fn with_token(token: &str) -> SchedulingRequest<'_> {
        SchedulingRequest { session_token: Some(token), ..SchedulingRequest::default() }
    }

    #[test]
    fn the_session_endpoint_scores_one() {
        let p = pool(vec![ep(1, 0, 0, 0.0), ep(2, 0, 0, 0.0), bare(3)]);
        let s = built::<SessionAffinityScorer>("{}");
        // base64("10.0.0.2:8000")
        assert_eq!(encode_session_token("10.0.0.2:8000"), "MTAuMC4wLjI6ODAwMA==");
        assert_close(&scores(&s, &p, &with_token("MTAuMC4wLjI6ODAwMA==")), &[0.0, 1.0, 0.0]);
        // Works even when the session endpoint has no metrics yet.
        let token = encode_session_token(&addr(3));
        assert_close(&scores(&s, &p, &with_token(&token)), &[0.0, 0.0, 1.0]);
    }

    #[test]
    fn no_invalid_or_unknown_token_means_no_preference() {
        let p = pool(vec![ep(1, 0, 0, 0.0), ep(2, 0, 0, 0.0)]);
        let s = built::<SessionAffinityScorer>("{}");
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[0.0, 0.0]);
        for bad in ["", "%%%", "MTAuMC4wLjI6ODAwMA=", "M", "MTAuMC4wLjk6ODAwMA==", "/w=="] {
            assert_close(&scores(&s, &p, &with_token(bad)), &[0.0, 0.0]);
        }
    }

    #[test]
    fn base64_variants() {
        let want = Some(String::from("10.0.0.2:8000"));
        assert_eq!(decode_session_token("MTAuMC4wLjI6ODAwMA=="), want);
        assert_eq!(decode_session_token("MTAuMC4wLjI6ODAwMA"), want);
        // ASCII addresses never reach the alphabet's last two characters, but the decoder still
        // accepts both spellings of them: "ab?ab>" is "YWI/YWI+" (std) or "YWI_YWI-" (URL-safe).
        assert_eq!(encode_session_token("ab?ab>"), "YWI/YWI+");
        assert_eq!(decode_session_token("YWI/YWI+").as_deref(), Some("ab?ab>"));
        assert_eq!(decode_session_token("YWI_YWI-").as_deref(), Some("ab?ab>"));
        let v6 = "[fd00::fb]:8000";
        assert_eq!(decode_session_token(&encode_session_token(v6)).as_deref(), Some(v6));
        // Lengths 1..=3 mod 3 round-trip, padded and not.
        for text in ["a", "ab", "abc", "abcd"] {
            let t = encode_session_token(text);
            assert_eq!(decode_session_token(&t).as_deref(), Some(text));
            assert_eq!(decode_session_token(t.trim_end_matches('=')).as_deref(), Some(text));
        }
        // Bad padding, stray characters, impossible length.
        for bad in ["YQ=", "YQ===", "Y===", "YWJj=", "YW=J", "Y", "YW Jj", "YWJj\n"] {
            assert_eq!(decode_session_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parameters() {
        let s = built::<SessionAffinityScorer>(
            r#"{"encodedEndpointHeaderConfig": {"header": "X-Session-Token"}, "profileName": "prefill"}"#,
        );
        assert_eq!(s.profile_name(), Some("prefill"));
        assert_eq!(built::<SessionAffinityScorer>("{}").profile_name(), None);
        let err = build_err::<SessionAffinityScorer>(r#"{"strategy": "session_id", "sessionIdConfig": {}}"#);
        assert_eq!(err.field, "strategy");
        let err =
            build_err::<SessionAffinityScorer>(r#"{"encodedEndpointHeaderConfig": {"header": "x-other"}}"#);
        assert_eq!(err.field, "encodedEndpointHeaderConfig.header");
        assert!(
            try_build::<SessionAffinityScorer>(r#"{"encodedEndpointHeaderConfig": {"name": "x"}}"#).is_err()
        );
    }
}
