//! The built-in `notify` type: drafts of notifications, stored in Cordon, never sent.
//!
//! `notify.draft` renders a notification template (`templates/<name>.md.hbs`) against the
//! run's incident facts and stores the result as a draft for counsel to review. It changes
//! nothing outside Cordon, so it is declared [`Effect::Record`] and needs no configured
//! instance (like `core`).
//!
//! Drafting needs the run's state, the templates and the store, which live in the engine:
//! the engine executes this action itself. [`NotifyConnector::call`] exists so that the
//! type can be resolved like any other; it refuses to be called directly rather than
//! pretend to draft.

use async_trait::async_trait;
use serde_json::Value;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::{ActionCall, Connector, ConnectorError};

pub const TYPE: TypeDecl = TypeDecl {
    name: "notify",
    description: "Notification drafts for counsel's review, stored in Cordon (never sent)",
    needs_instance: false,
    actions: &[ActionDecl {
        name: "draft",
        description:
            "Render a notification template with the run's incident facts and store it as a draft",
        inputs: &[
            FieldDecl {
                name: "template",
                ty: "string",
                required: true,
                description: "template name: `X` is the file `templates/X.md.hbs`",
            },
            FieldDecl {
                name: "data",
                ty: "object",
                required: false,
                description: "extra fields merged over the incident facts before rendering",
            },
            FieldDecl {
                name: "to",
                ty: "any",
                required: false,
                description: "the recipient shown on the draft (an address, a name, or a list)",
            },
        ],
        outputs: &[
            FieldDecl {
                name: "draft_id",
                ty: "string",
                required: true,
                description: "the stored draft's id (`cordon drafts show DRAFT`)",
            },
            FieldDecl {
                name: "template",
                ty: "string",
                required: true,
                description: "the template's name",
            },
            FieldDecl {
                name: "subject",
                ty: "string",
                required: true,
                description: "the rendered subject line",
            },
            FieldDecl {
                name: "audience",
                ty: "string",
                required: true,
                description: "`authority`, `internal` or `third-party` (from the template)",
            },
            FieldDecl {
                name: "to",
                ty: "any",
                required: false,
                description: "the recipient shown on the draft, when given",
            },
        ],
        effect: Effect::Record,
        undo: None,
        secret_outputs: &[],
    }],
};

/// The `notify` connector: resolvable like any type, executed by the engine.
#[derive(Debug, Clone)]
pub struct NotifyConnector {
    instance: String,
}

impl NotifyConnector {
    pub fn new(instance: impl Into<String>) -> Self {
        NotifyConnector {
            instance: instance.into(),
        }
    }
}

#[async_trait]
impl Connector for NotifyConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        Err(ConnectorError::Other(format!(
            "`notify.{}` is executed by the engine (it needs the run's facts, the templates and the store); it cannot be called as a plain connector",
            call.action
        )))
    }
}
