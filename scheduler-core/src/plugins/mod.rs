pub mod filters;
pub mod scorers;
