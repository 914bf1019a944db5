//! The generic `http` connector (to be written).

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};

const fn field(name: &'static str, ty: &'static str, required: bool) -> FieldDecl {
    FieldDecl {
        name,
        ty,
        required,
        description: "",
    }
}

// Placeholder declarations so that the validator can be tested; the http connector's
// author owns the final wording.
const INPUTS: &[FieldDecl] = &[
    field("method", "string", true),
    field("url", "string", true),
    field("headers", "object", false),
    field("json", "any", false),
    field("body", "string", false),
    field("timeout", "string", false),
];

const REQUEST_OUTPUTS: &[FieldDecl] = &[
    field("status", "integer", true),
    field("headers", "object", true),
    field("body", "any", true),
];

const SNAPSHOT_OUTPUTS: &[FieldDecl] = &[
    field("evidence_id", "string", true),
    field("sha256", "string", true),
    field("bytes", "integer", true),
    field("records", "integer", true),
    field("status", "integer", true),
];

pub const TYPE: TypeDecl = TypeDecl {
    name: "http",
    description: "Any REST API",
    needs_instance: false,
    actions: &[
        ActionDecl {
            name: "request",
            description: "One HTTP request",
            inputs: INPUTS,
            outputs: REQUEST_OUTPUTS,
            effect: Effect::ByMethod,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "snapshot",
            description: "Save a response body as evidence",
            inputs: INPUTS,
            outputs: SNAPSHOT_OUTPUTS,
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
    ],
};
