//! Scheduling filters and scorers of llm-d that wasm-epp maps or refuses.

use super::Group;

pub const GROUP: Group = Group { entries: &[], mapped: &[], refused: &[] };
