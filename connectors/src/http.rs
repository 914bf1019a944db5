//! The generic `http` connector (to be written).

use crate::catalog::{ActionDecl, Effect, TypeDecl};

pub const TYPE: TypeDecl = TypeDecl {
    name: "http",
    description: "Any REST API",
    needs_instance: false,
    actions: &[
        ActionDecl {
            name: "request",
            description: "One HTTP request",
            inputs: &[],
            outputs: &[],
            effect: Effect::ByMethod,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "snapshot",
            description: "Save a response body as evidence",
            inputs: &[],
            outputs: &[],
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
    ],
};
