//! Data sources, extractors and discovery (llm-d's dataLayer): the collector and the pool section do their work.

use super::Group;

pub const GROUP: Group = Group { entries: &[], mapped: &[], refused: &[] };
