//! (to be written)
pub mod model;
