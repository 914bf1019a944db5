//! Static declarations of connector types and their actions.
//!
//! The engine knows nothing vendor-specific: the validator checks `uses` and `with` against
//! these declarations, the executor asks them whether an action mutates (for dry runs and
//! guards) and what undoes it, and `cordon connectors list` prints them.

use serde::Serialize;
use serde_json::Value;

/// One input or output field of an action.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FieldDecl {
    pub name: &'static str,
    /// JSON type: `string`, `number`, `integer`, `boolean`, `array`, `object`, or `any`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub required: bool,
    pub description: &'static str,
}

/// What calling an action does to the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Reads only (`find_*`, `get_*`): runs for real in a dry run.
    Lookup,
    /// Changes a target's state (suspend, contain, lock); guarded, reported in a dry run.
    Mutation,
    /// Collects evidence; not called in a dry run.
    Snapshot,
    /// Sends a message; not idempotent in general.
    Send,
    /// Records something inside Cordon only (`notify.draft` stores a draft): no vendor is
    /// called and nothing outside Cordon changes. Not called in a dry run; not guarded.
    Record,
    /// `http.request`: a lookup for GET/HEAD, a mutation otherwise.
    ByMethod,
}

impl Effect {
    /// The effect of a call with these inputs (resolves [`Effect::ByMethod`]).
    pub fn for_input(self, input: &Value) -> Effect {
        match self {
            Effect::ByMethod => {
                let method = input
                    .get("method")
                    .and_then(Value::as_str)
                    .unwrap_or("GET")
                    .to_ascii_uppercase();
                if method == "GET" || method == "HEAD" {
                    Effect::Lookup
                } else {
                    Effect::Mutation
                }
            }
            other => other,
        }
    }
}

/// One action of a connector type.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ActionDecl {
    pub name: &'static str,
    pub description: &'static str,
    pub inputs: &'static [FieldDecl],
    pub outputs: &'static [FieldDecl],
    pub effect: Effect,
    /// The action (same type) that reverses this one, if any.
    pub undo: Option<&'static str>,
    /// Output fields that are secrets (stored for admins only, never rendered or logged).
    pub secret_outputs: &'static [&'static str],
}

impl ActionDecl {
    pub fn input(&self, name: &str) -> Option<&FieldDecl> {
        self.inputs.iter().find(|f| f.name == name)
    }
}

/// One connector type.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TypeDecl {
    pub name: &'static str,
    pub description: &'static str,
    /// False for types usable without a configured instance (`http`, `core`).
    pub needs_instance: bool,
    pub actions: &'static [ActionDecl],
}

impl TypeDecl {
    pub fn action(&self, name: &str) -> Option<&'static ActionDecl> {
        self.actions.iter().find(|a| a.name == name)
    }
}

/// Every connector type this build knows.
pub fn catalog() -> &'static [TypeDecl] {
    &[
        crate::core::TYPE,
        crate::http::TYPE,
        crate::okta::TYPE,
        crate::entra::TYPE,
        crate::google::TYPE,
        crate::scim::TYPE,
        crate::fleet::TYPE,
        crate::crowdstrike::TYPE,
        crate::jamf::TYPE,
        crate::kandji::TYPE,
        crate::intune::TYPE,
        crate::defender::TYPE,
        crate::slack::TYPE,
        crate::notify::TYPE,
        crate::smtp::TYPE,
        crate::splunk::TYPE,
        crate::elasticsearch::TYPE,
        crate::roles::IDENTITY,
        crate::roles::DEVICE_ROLE,
    ]
}

/// Look up a type by name.
pub fn find_type(name: &str) -> Option<&'static TypeDecl> {
    catalog().iter().find(|t| t.name == name)
}

/// Look up `type.action`.
pub fn find_action(uses: &str) -> Option<(&'static TypeDecl, &'static ActionDecl)> {
    let (ty, action) = uses.split_once('.')?;
    let t = find_type(ty)?;
    Some((t, t.action(action)?))
}
