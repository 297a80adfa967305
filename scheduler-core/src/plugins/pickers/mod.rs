//! Pickers: turn the scored candidates of a profile into the primary target plus fallbacks.
//!
//! All take GIE's `maxNumOfEndpoints` (default 1); the pipeline's own cap is applied on top.

pub mod max_score_picker;
pub mod near_best_picker;
pub mod random_picker;
pub mod weighted_random_picker;

use crate::config::params::positive_count;
use serde::Deserialize;

/// Parameters shared by every picker (GIE's `PickerParameters`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PickerParams {
    #[serde(deserialize_with = "positive_count")]
    pub max_num_of_endpoints: usize,
}

impl Default for PickerParams {
    fn default() -> PickerParams {
        PickerParams { max_num_of_endpoints: 1 }
    }
}
