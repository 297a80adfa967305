//! Disaggregation and data-parallel profile handlers and deciders (llm-d's disagg-profile-handler family).

use super::Group;

pub const GROUP: Group = Group { entries: &[], mapped: &[], refused: &[] };
