//! P/D deciders (llm-d): whether a request's prefill runs on a pod of its own once the decode pod is
//! picked. A decider does nothing by itself; the profile handler that names it (`disagg-profile-handler`'s
//! `deciders.prefill`, `pd-profile-handler`'s `deciderPluginName`) asks it, through the
//! [`PdDecider`](crate::scheduling::PdDecider) it offers in the build context.

pub mod always_disagg_pd_decider;
pub mod prefix_based_pd_decider;
