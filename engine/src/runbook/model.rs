//! The runbook file as written: serde structs that mirror `runbook-format.md` v1.
//!
//! These types describe the document; [`super::validate`] turns a parsed document into a
//! [`super::ValidatedRunbook`] or a list of located diagnostics. Every struct denies unknown
//! fields so that `serde` and the JSON Schema agree with the validator.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A whole runbook file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    /// Format version; must be 1.
    pub version: u32,
    /// Unique name, `[a-z0-9-]+`; runs refer to the runbook by it.
    pub name: String,
    /// One-line title shown in lists.
    #[serde(default)]
    pub title: Option<String>,
    /// Free text shown in the UI and in `cordon runbooks list`.
    #[serde(default)]
    pub description: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// What the alert or the analyst must supply, by name.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputSpec>,
    /// Handlebars template; at most one active run per rendered key.
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// The steps, a DAG through `needs`.
    pub steps: Vec<Step>,
    /// Steps run once if the run fails.
    #[serde(default)]
    pub on_failure: Vec<Step>,
}

/// Declared type of an input (and of array items).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    String,
    Number,
    Integer,
    Boolean,
    Array,
    Object,
}

/// One declared input.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    #[serde(rename = "type")]
    pub ty: InputType,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub description: Option<String>,
    /// Used when the input is not supplied.
    #[serde(default)]
    pub default: Option<Value>,
    /// Allowed values.
    #[serde(default, rename = "enum")]
    pub allowed: Option<Vec<Value>>,
    /// String format; `email` is checked.
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub minimum: Option<f64>,
    #[serde(default)]
    pub maximum: Option<f64>,
    /// Item schema for arrays.
    #[serde(default)]
    pub items: Option<Box<InputSpec>>,
}

/// One step. Exactly one of `uses`, `approval` or `task` is set (checked by validation).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique within the runbook, `[a-z0-9-]+`.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// `<connector type>.<action>`, or a role action such as `identity.suspend_user`.
    #[serde(default)]
    pub uses: Option<String>,
    /// Which configured instance (or, for role actions, instances) to use.
    #[serde(default)]
    pub connector: Option<ConnectorRef>,
    /// The action's inputs; strings are Handlebars templates.
    #[serde(default)]
    pub with: Option<serde_json::Map<String, Value>>,
    /// Steps that must finish first.
    #[serde(default)]
    pub needs: Vec<String>,
    /// CEL condition; false skips the step.
    #[serde(default, rename = "if")]
    pub condition: Option<String>,
    /// CEL expression giving a list; the action runs once per element.
    #[serde(default)]
    pub for_each: Option<String>,
    /// Loop variable name (default `item`).
    #[serde(default, rename = "as")]
    pub as_var: Option<String>,
    /// Bound on concurrent `for_each` elements (default 8).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Bound on one attempt, e.g. `30s`.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub continue_on_error: bool,
    /// Skipped (not an error) when no instance of the connector type is configured.
    #[serde(default)]
    pub optional: bool,
    /// How to reverse this step.
    #[serde(default)]
    pub undo: Option<UndoSpec>,
    /// The run waits for people to approve.
    #[serde(default)]
    pub approval: Option<ApprovalSpec>,
    /// The run waits for a person to mark a task done.
    #[serde(default)]
    pub task: Option<TaskSpec>,
}

/// `connector:` is one instance name or a list of them (role actions).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ConnectorRef {
    One(String),
    Many(Vec<String>),
}

impl ConnectorRef {
    pub fn names(&self) -> Vec<&str> {
        match self {
            ConnectorRef::One(s) => vec![s.as_str()],
            ConnectorRef::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Every attempt counts, the first included.
    pub attempts: u32,
    /// First delay, e.g. `2s` (default `1s`).
    #[serde(default)]
    pub backoff: Option<String>,
    /// Cap on one delay, e.g. `60s` (default `30s`).
    #[serde(default)]
    pub max_backoff: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UndoSpec {
    pub uses: String,
    #[serde(default)]
    pub connector: Option<ConnectorRef>,
    #[serde(default)]
    pub with: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    #[default]
    Reject,
    Approve,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// `role:<group>` or a person's name.
    pub approvers: Vec<String>,
    #[serde(default = "one")]
    pub min_approvals: u32,
    /// Template shown to approvers.
    #[serde(default)]
    pub message: Option<String>,
    /// e.g. `72h`; after it, `on_timeout` decides.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// `role:<group>` or a person's name.
    pub assignees: Vec<String>,
    /// Template telling the person what to do.
    pub message: String,
    #[serde(default)]
    pub timeout: Option<String>,
}

/// What kind of step this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Action,
    Approval,
    Task,
}

impl Step {
    pub fn kind(&self) -> StepKind {
        if self.approval.is_some() {
            StepKind::Approval
        } else if self.task.is_some() {
            StepKind::Task
        } else {
            StepKind::Action
        }
    }

    pub fn loop_var(&self) -> &str {
        self.as_var.as_deref().unwrap_or("item")
    }
}
