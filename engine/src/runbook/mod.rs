//! Runbooks: the YAML format people write response procedures in.
//!
//! - [`model`]: serde structs that mirror `runbook-format.md` v1.
//! - [`validate()`]: text → [`ValidatedRunbook`] (the exact text, its SHA-256, a topological
//!   step order) or every problem at once as located [`Diagnostic`]s with stable codes.
//! - [`resolve_inputs`]: a run's inputs checked and defaulted against the declarations.
//! - [`json_schema`]: the JSON Schema of the format, for editors (`cordon schema`).
//!
//! `parse` (private) is the only place that touches `serde_yaml`.

pub mod diagnostics;
mod graph;
pub mod inputs;
pub mod model;
mod parse;
pub mod schema;
pub mod validate;

pub use diagnostics::{Diagnostic, CODES};
pub use inputs::{resolve_inputs, InputError};
pub use model::*;
pub use schema::json_schema;
pub use validate::{validate, validate_file, ValidatedRunbook, ValidationContext};
