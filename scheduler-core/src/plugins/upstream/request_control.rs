//! Request control (admitters, reporters, screeners, request-header plugins) and flow-control policies.

use super::Group;

pub const GROUP: Group = Group { entries: &[], mapped: &[], refused: &[] };
