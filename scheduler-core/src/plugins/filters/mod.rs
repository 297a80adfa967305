//! Filters: remove candidates a profile must not consider.

pub mod by_label_filter;
pub mod decode_filter;
pub mod encode_filter;
pub mod label_selector_filter;
pub mod least_kv_cache_filter;
pub mod least_queue_filter;
pub mod lora_affinity_filter;
pub mod low_queue_filter;
pub mod prefill_filter;
pub mod prefix_cache_affinity_filter;
pub mod utilization_filter;

use crate::model::{Endpoint, Role, ROLE_LABEL};

/// An endpoint's disaggregation role as llm-d's role filters read it: the `llm-d.ai/role` pod label,
/// or, for an endpoint configured with a role and no such label (a static endpoint), that role.
/// `None` when neither says anything (an aggregated server).
pub(crate) fn llm_d_role(e: &Endpoint) -> Option<&str> {
    match e.label(ROLE_LABEL) {
        Some(v) => Some(v),
        None if e.role == Role::Both => None,
        None => Some(e.role.as_str()),
    }
}

#[cfg(test)]
mod role_tests {
    use super::decode_filter::DecodeFilter;
    use super::encode_filter::EncodeFilter;
    use super::prefill_filter::PrefillFilter;
    use crate::model::{Role, ROLE_LABEL};
    use crate::plugins::test_support::{bare, kept, pool};
    use crate::scheduling::SchedulingRequest;
    use alloc::string::String;
    use alloc::vec::Vec;

    /// Endpoint 1 has no role at all; 2.. carry `llm-d.ai/role` = the values in order; the last two are
    /// static endpoints configured with `role: prefill` / `role: decode` and no label.
    fn pool_of(values: &[&str]) -> crate::model::PoolSnapshot {
        let mut eps = alloc::vec![bare(1)];
        for (n, v) in (2u8..).zip(values) {
            let mut e = bare(n);
            e.endpoint.labels.push((String::from(ROLE_LABEL), String::from(*v)));
            eps.push(e);
        }
        let n = u8::try_from(values.len()).unwrap() + 2;
        for (n, role) in (n..).zip([Role::Prefill, Role::Decode]) {
            let mut e = bare(n);
            e.endpoint.role = role;
            eps.push(e);
        }
        pool(eps)
    }

    #[test]
    fn role_filters_keep_llm_d_s_value_sets() {
        let values = [
            "decode",
            "prefill",
            "encode",
            "both",
            "prefill-decode",
            "encode-prefill",
            "encode-prefill-decode",
            "",
            "x",
        ];
        let p = pool_of(&values);
        let req = SchedulingRequest::default();
        let names = |kept: Vec<usize>| -> Vec<&str> {
            kept.iter()
                .map(|&i| match i {
                    0 => "none",
                    i if i <= values.len() => values[i - 1],
                    i if i == values.len() + 1 => "static prefill",
                    _ => "static decode",
                })
                .collect()
        };
        assert_eq!(
            names(kept(&DecodeFilter, &p, &req)),
            ["none", "decode", "both", "prefill-decode", "encode-prefill-decode", "static decode"]
        );
        assert_eq!(
            names(kept(&PrefillFilter, &p, &req)),
            [
                "prefill",
                "both",
                "prefill-decode",
                "encode-prefill",
                "encode-prefill-decode",
                "static prefill"
            ]
        );
        assert_eq!(
            names(kept(&EncodeFilter, &p, &req)),
            ["encode", "encode-prefill", "encode-prefill-decode"]
        );
    }
}
