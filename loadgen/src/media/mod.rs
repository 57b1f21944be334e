//! (being written)
pub mod probe;
