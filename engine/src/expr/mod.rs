//! Expressions and templates, one place for both.
//!
//! - [`Templates`]: Handlebars in strict mode without HTML escaping, with the runbook helpers
//!   (`ago`, `now`, `json`, `default`, `lower`, `upper`, `join`, `eq`, `ne`, `and`, `or`,
//!   `not`). A string that is exactly one `{{ path }}` keeps its JSON type.
//! - [`template_refs`]: the variable paths a template reads, for the validator.
//! - [`Cel`] / [`CelProgram`]: CEL conditions (`if`) and lists (`for_each`).
//!
//! Both read the same JSON context: an object whose top-level keys (`inputs`, `steps`, `run`,
//! a `for_each` variable) are the variables. Errors are [`ExprError`]; they name the missing
//! variable or the syntax problem, and callers add the step and field.

mod cel;
mod templates;

pub use self::cel::{Cel, CelProgram};
pub(crate) use self::templates::register_value_helpers;
pub use self::templates::{template_refs, Clock, Templates};

/// Something wrong with a template or a CEL expression.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    /// The template does not parse.
    #[error("template syntax error{}: {message}", at(*.line, *.column))]
    Syntax {
        message: String,
        /// 1-based position within the template, when Handlebars reports one.
        line: Option<usize>,
        column: Option<usize>,
    },
    /// The CEL expression does not parse.
    #[error("CEL syntax error{}: {message}", at(*.line, *.column))]
    CelSyntax {
        message: String,
        /// 1-based position within the expression, when known.
        line: Option<usize>,
        column: Option<usize>,
    },
    /// A variable the template or expression reads is not in the context.
    #[error("variable `{variable}` is not defined")]
    Undefined { variable: String },
    /// A template calls a helper that does not exist.
    #[error("unknown template helper `{name}`")]
    UnknownHelper { name: String },
    /// Rendering failed for another reason (a helper given bad arguments, ...).
    #[error("template error: {message}")]
    Render { message: String },
    /// Evaluating a CEL expression failed.
    #[error("CEL evaluation error: {message}")]
    Eval { message: String },
    /// A CEL condition gave something other than a bool.
    #[error("CEL condition must give a bool, but it gave a {got}")]
    NotBool { got: String },
    /// A CEL `for_each` expression gave something other than a list.
    #[error("CEL `for_each` expression must give a list, but it gave a {got}")]
    NotList { got: String },
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}
