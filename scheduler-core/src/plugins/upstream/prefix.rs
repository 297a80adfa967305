//! Prefix-cache and token producers (llm-d's data producers) and the scorers that read them.
//!
//! `approx-prefix-cache-producer` is a real plugin (`plugins/producers/`) owning the prefix index;
//! `no-hit-lru-scorer` is a scorer (`plugins/scorers/`); `token-producer` is mapped onto the token
//! estimate every prefix and length computation here already uses. The producers that need what
//! wasm-epp does not have (the engines' KV-cache events, the model's tokenizer, a batch window, the
//! latency-predictor sidecars, multimodal item hashes) are refused.

use super::{only_keys, Group, Mapped, Refused};
use crate::config::params::ParamError;
use crate::plugins::producers::approx_prefix_cache_producer::ApproxPrefixCacheProducer;
use crate::plugins::registry::Entry;
use crate::plugins::scorers::no_hit_lru_scorer::NoHitLruScorer;
use crate::scheduling::{BuildContext, SectionRole};
use serde_json::Value;

/// Why a tokenizer backend is refused: completes `got "<type>", which it cannot: `, the registry's
/// wording for a refused type, so the error reads like one.
const NO_TOKENIZER: &str = "wasm-epp does not tokenize with the model's tokenizer (vLLM's /render or a \
                            tokenizer sidecar); remove modelName, vllm and udsTokenizerConfig, and token counts \
                            are estimated at 4 bytes per token, as llm-d's default estimate backend does";

/// The error for a tokenizer backend selected by `key`.
fn tokenizer_backend(key: &str, type_name: &str) -> ParamError {
    ParamError::new(
        key,
        "the estimate backend (the only one wasm-epp can run)",
        Some(alloc::format!("a tokenizer backend for {type_name:?}, which it cannot: {NO_TOKENIZER}")),
    )
}

/// `token-producer` parameters: only the tokenizer-free `estimate` backend, untuned.
fn estimate_only(params: &Value, _: &mut BuildContext<'_>) -> Result<(), ParamError> {
    check_estimate(params, "token-producer")
}

fn check_estimate(params: &Value, type_name: &str) -> Result<(), ParamError> {
    let Some(obj) = only_keys(params, &["modelName", "vllm", "udsTokenizerConfig", "estimate"])? else {
        return Ok(());
    };
    for key in ["vllm", "udsTokenizerConfig"] {
        if obj.get(key).is_some_and(|v| !v.is_null()) {
            return Err(tokenizer_backend(key, type_name));
        }
    }
    // llm-d selects the vLLM backend for a non-empty model name.
    if obj.get("modelName").is_some_and(|v| !v.is_null() && v.as_str() != Some("")) {
        return Err(tokenizer_backend("modelName", type_name));
    }
    let estimate = obj.get("estimate").unwrap_or(&Value::Null);
    let Some(tuning) = only_keys(estimate, &["image", "video"]).map_err(|e| nested("estimate", e))? else {
        return Ok(());
    };
    if let Some(key) = tuning.keys().next() {
        return Err(ParamError::new(
            alloc::format!("estimate.{key}"),
            "no image or video tuning: wasm-epp's estimate counts the request's bytes (4 per token) and adds no \
             placeholder tokens for images or videos",
            None,
        ));
    }
    Ok(())
}

/// `tokenizer`: llm-d's deprecated name of `token-producer`.
fn legacy_estimate_only(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    ctx.warn("", "the plugin type tokenizer is deprecated in llm-d; its name is now token-producer");
    check_estimate(params, "tokenizer")
}

/// `e` for a key inside `parent`.
fn nested(parent: &str, e: ParamError) -> ParamError {
    let field = if e.field.is_empty() {
        alloc::string::String::from(parent)
    } else {
        alloc::format!("{parent}.{}", e.field)
    };
    ParamError { field, ..e }
}

crate::upstream_mapped_plugin!(
    /// `token-producer`: the tokenized prompt llm-d's producers and deciders read; here every token
    /// count is the 4-bytes-per-token estimate of its `estimate` backend.
    TokenProducer,
    "token-producer",
    DataProducer,
    estimate_only
);

crate::upstream_mapped_plugin!(
    /// `tokenizer`: the deprecated name of `token-producer`.
    LegacyTokenizer,
    "tokenizer",
    DataProducer,
    legacy_estimate_only
);

const TOKENS_DONE_BY: &str = "the request reader's token estimate (4 bytes of prompt per token), which is what \
                              llm-d's default estimate backend computes for text; a vLLM or tokenizer-sidecar \
                              backend (modelName, vllm, udsTokenizerConfig) or image/video tuning is an error \
                              naming the parameter";

pub const GROUP: Group = Group {
    entries: &[
        Entry::of::<ApproxPrefixCacheProducer>(),
        Entry::of::<NoHitLruScorer>(),
        Entry::of::<TokenProducer>(),
        Entry::of::<LegacyTokenizer>(),
    ],
    mapped: &[
        Mapped {
            type_name: "approx-prefix-cache-producer",
            role: Some(SectionRole::DataProducer),
            done_by: "wasm-epp's approximate prefix index (scheduler-core/src/prefix), with llm-d v0.10's \
                      settings (blocks of at least 64 tokens, auto-tuned from block_size and num_gpu_blocks, a \
                      131072-token cap, the deprecated blockSize in tokens), read by prefix-cache-scorer, \
                      prefix-cache-affinity-filter and no-hit-lru-scorer through prefixMatchInfoProducerName; \
                      one per configuration. Difference: a prefix-cache-scorer with no producer keeps an index \
                      of its own with GIE's defaults (16-token blocks, the first 256 blocks of the prompt), \
                      where llm-d v0.10 auto-creates this producer with its defaults: declare \
                      approx-prefix-cache-producer to get llm-d's",
        },
        Mapped { type_name: "token-producer", role: Some(SectionRole::DataProducer), done_by: TOKENS_DONE_BY },
        Mapped {
            type_name: "tokenizer",
            role: Some(SectionRole::DataProducer),
            done_by: "as token-producer (llm-d's deprecated name for it; a warning says so)",
        },
    ],
    refused: &[
        Refused {
            type_name: "precise-prefix-cache-producer",
            why: "it needs the model servers' KV-cache event stream (ZMQ) and the model's tokenizer, neither of \
                  which wasm-epp uses; remove it and the prefixMatchInfoProducerName naming it, and \
                  prefix-cache-scorer reads the approximate prefix index instead, as llm-d does without that name",
        },
        Refused {
            type_name: "burst-prefix-cache-producer",
            why: "it holds requests for a batch window to place prompt-sharing groups together, and wasm-epp \
                  routes each request when it arrives, in every gateway worker; remove it and the \
                  prefixMatchInfoProducerName naming it, and requests sharing a prompt follow the first one's \
                  placement through the approximate prefix index",
        },
        Refused {
            type_name: "mm-embeddings-cache-producer",
            why: "multimodal encoder-cache affinity is not implemented in wasm-epp; remove it and \
                  mm-embeddings-cache-scorer, and requests with images are placed by the other scorers",
        },
        Refused {
            type_name: "mm-embeddings-cache-scorer",
            why: "multimodal encoder-cache affinity is not implemented in wasm-epp; remove it and \
                  mm-embeddings-cache-producer, and requests with images are placed by the other scorers",
        },
        Refused {
            type_name: "predicted-latency-producer",
            why: "it needs llm-d's latency-predictor training and prediction sidecars, which wasm-epp does not \
                  call; use the chart's default plugins (latencyPredictor disabled): queue-, \
                  kv-cache-utilization- and prefix-cache-scorer",
        },
        Refused {
            type_name: "p2p-source-producer",
            why: "it picks the pod to pull KV blocks from out of precise-prefix-cache-producer's KV-block index, \
                  which wasm-epp does not keep; remove it",
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::{build_err, built};
    use alloc::string::ToString;

    #[test]
    fn token_producer_takes_the_estimate_backend_only() {
        built::<TokenProducer>("{}");
        built::<TokenProducer>(r#"{"estimate": {}, "modelName": ""}"#);
        let err =
            build_err::<TokenProducer>(r#"{"modelName": "m", "vllm": {"url": "http://localhost:8000"}}"#);
        assert_eq!(err.field, "vllm");
        assert!(
            err.to_string().contains(r#"got a tokenizer backend for "token-producer", which it cannot: "#),
            "{err}"
        );
        assert_eq!(build_err::<TokenProducer>(r#"{"modelName": "Qwen/Qwen3-8B"}"#).field, "modelName");
        assert_eq!(
            build_err::<TokenProducer>(r#"{"udsTokenizerConfig": {"socketFile": "/s"}}"#).field,
            "udsTokenizerConfig"
        );
        assert_eq!(
            build_err::<TokenProducer>(r#"{"estimate": {"image": {"mode": "static"}}}"#).field,
            "estimate.image"
        );
        assert_eq!(build_err::<TokenProducer>(r#"{"estimate": {"audio": {}}}"#).field, "estimate.audio");
        assert_eq!(build_err::<TokenProducer>(r#"{"tokenizer": 1}"#).field, "tokenizer");
        built::<LegacyTokenizer>("{}");
    }

    #[test]
    fn refusals_say_what_to_do() {
        for r in GROUP.refused {
            assert!(r.why.contains("wasm-epp"), "{}", r.type_name);
        }
    }
}
