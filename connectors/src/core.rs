//! The built-in `core` type: actions that touch nothing outside the engine.

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};

pub const TYPE: TypeDecl = TypeDecl {
    name: "core",
    description: "Built-in actions that call nothing outside the engine",
    needs_instance: false,
    actions: &[ActionDecl {
        name: "noop",
        description: "Does nothing and returns its inputs as its output",
        inputs: &[FieldDecl {
            name: "*",
            ty: "any",
            required: false,
            description: "any inputs; returned unchanged",
        }],
        outputs: &[FieldDecl {
            name: "*",
            ty: "any",
            required: false,
            description: "the inputs",
        }],
        effect: Effect::Lookup,
        undo: None,
        secret_outputs: &[],
    }],
};
