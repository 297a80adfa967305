//! Prefix-cache producers and token producers (llm-d's dataproducer family): the prefix index of prefix-cache-scorer does their work.

use super::Group;

pub const GROUP: Group = Group { entries: &[], mapped: &[], refused: &[] };
