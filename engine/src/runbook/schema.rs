//! The JSON Schema of the runbook format (`cordon schema`), for editors that complete and
//! check runbooks as they are typed.
//!
//! It starts from `schemars` on the model (descriptions come from the doc comments) and adds
//! what the types alone cannot say: the version, name and id patterns, durations, minimums,
//! known formats, and that a step is exactly one of `uses`, `approval` or `task`. The
//! validator remains the authority (it also checks actions, references and cycles).

use serde_json::{json, Value};

use super::model::Runbook;

const ID_PATTERN: &str = "^[a-z0-9-]+$";
const DURATION_PATTERN: &str = "^[0-9]+(ms|s|m|h|d)$";
const USES_PATTERN: &str = "^[a-z][a-z0-9_-]*\\.[a-z][a-z0-9_]*$";
const INPUT_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
const LOOP_VAR_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";

/// The JSON Schema (draft 2020-12) of runbook format version 1.
pub fn json_schema() -> Value {
    let mut s = serde_json::to_value(schemars::schema_for!(Runbook)).unwrap_or_else(|_| json!({}));
    let set = |s: &mut Value, ptr: &str, key: &str, v: Value| {
        if let Some(Value::Object(m)) = s.pointer_mut(ptr) {
            m.insert(key.to_owned(), v);
        }
    };
    set(
        &mut s,
        "",
        "$schema",
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    set(
        &mut s,
        "",
        "title",
        json!("Cordon runbook (format version 1)"),
    );
    set(
        &mut s,
        "",
        "description",
        json!("An incident-response runbook: inputs, then steps that form a DAG through `needs`. See runbook-format.md."),
    );
    set(&mut s, "/properties/version", "const", json!(1));
    set(&mut s, "/properties/name", "pattern", json!(ID_PATTERN));
    set(
        &mut s,
        "/properties/inputs",
        "propertyNames",
        json!({"pattern": INPUT_NAME_PATTERN}),
    );

    let step = "/$defs/Step/properties";
    set(&mut s, &format!("{step}/id"), "pattern", json!(ID_PATTERN));
    set(
        &mut s,
        &format!("{step}/uses"),
        "pattern",
        json!(USES_PATTERN),
    );
    set(
        &mut s,
        &format!("{step}/needs"),
        "items",
        json!({"type": "string", "pattern": ID_PATTERN}),
    );
    set(
        &mut s,
        &format!("{step}/as"),
        "pattern",
        json!(LOOP_VAR_PATTERN),
    );
    set(&mut s, &format!("{step}/max_parallel"), "minimum", json!(1));
    set(
        &mut s,
        "/$defs/Step",
        "oneOf",
        json!([
            {"required": ["uses"], "properties": {"uses": {"type": "string"}}},
            {"required": ["approval"], "properties": {"approval": {"type": "object"}}},
            {"required": ["task"], "properties": {"task": {"type": "object"}}}
        ]),
    );
    set(
        &mut s,
        "/$defs/UndoSpec/properties/uses",
        "pattern",
        json!(USES_PATTERN),
    );
    for ptr in [
        "/$defs/Step/properties/timeout",
        "/$defs/RetrySpec/properties/backoff",
        "/$defs/RetrySpec/properties/max_backoff",
        "/$defs/ApprovalSpec/properties/timeout",
        "/$defs/TaskSpec/properties/timeout",
    ] {
        set(&mut s, ptr, "pattern", json!(DURATION_PATTERN));
    }
    set(
        &mut s,
        "/$defs/RetrySpec/properties/attempts",
        "minimum",
        json!(1),
    );
    set(
        &mut s,
        "/$defs/ApprovalSpec/properties/min_approvals",
        "minimum",
        json!(1),
    );
    set(
        &mut s,
        "/$defs/InputSpec/properties/format",
        "enum",
        json!(["email", "date-time", "uri", null]),
    );

    // Fields whose doc comments are missing in the model.
    for (ptr, text) in [
        ("/$defs/InputSpec/properties/type", "The input's JSON type."),
        (
            "/$defs/InputSpec/properties/required",
            "Whether a run must supply it (unless it has a `default`).",
        ),
        (
            "/$defs/InputSpec/properties/description",
            "Shown to the person starting a run.",
        ),
        (
            "/$defs/InputSpec/properties/minimum",
            "Smallest allowed number.",
        ),
        (
            "/$defs/InputSpec/properties/maximum",
            "Largest allowed number.",
        ),
        (
            "/$defs/Step/properties/retry",
            "Attempts and exponential backoff with jitter for transient failures.",
        ),
        (
            "/$defs/Step/properties/continue_on_error",
            "A failure does not fail the run; steps that need this one still run.",
        ),
        (
            "/$defs/UndoSpec/properties/uses",
            "The action that reverses the step, `<connector type>.<action>`.",
        ),
        (
            "/$defs/UndoSpec/properties/with",
            "Its inputs; strings are Handlebars templates and may read the step's own output.",
        ),
        (
            "/$defs/ApprovalSpec/properties/min_approvals",
            "How many distinct approvers must agree (default 1).",
        ),
        (
            "/$defs/ApprovalSpec/properties/on_timeout",
            "What happens when `timeout` passes: `reject` (default) or `approve`.",
        ),
        (
            "/$defs/TaskSpec/properties/timeout",
            "How long to wait for the task, e.g. `24h`.",
        ),
    ] {
        let has = s.pointer(ptr).and_then(|v| v.get("description")).is_some();
        if !has {
            set(&mut s, ptr, "description", json!(text));
        }
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The example from runbook-format.md, with vendor actions replaced by `core.noop` and
    /// `http.request` (the only types in the catalogue today).
    pub const EXAMPLE: &str = r##"
version: 1
name: example-containment
title: "Suspected DPRK remote IT worker: contain, preserve, notify"
description: |
  Free text shown in the UI and in `cordon runbooks list`.
labels: [insider-threat, sanctions]
inputs:
  alert_id:        { type: string, required: true }
  subject_email:   { type: string, format: email, required: true }
  device_serials:  { type: array, items: { type: string }, default: [] }
  confidence:      { type: number, minimum: 0, maximum: 1, default: 0.5 }
concurrency_key: "{{ inputs.subject_email }}"
steps:
  - id: snapshot-idp-logs
    uses: http.snapshot
    with:
      method: GET
      url: "https://idp.example.com/logs?user={{ inputs.subject_email }}&since={{ ago '90d' }}"
  - id: suspend-account
    needs: [snapshot-idp-logs]
    uses: http.request
    with: { method: POST, url: "https://idp.example.com/users/{{ inputs.subject_email }}/suspend" }
    retry: { attempts: 5, backoff: 2s, max_backoff: 60s }
    timeout: 30s
    undo:
      uses: http.request
      with: { method: POST, url: "https://idp.example.com/users/{{ inputs.subject_email }}/unsuspend" }
  - id: contain-devices
    needs: [snapshot-idp-logs]
    if: inputs.confidence >= 0.7
    for_each: inputs.device_serials
    as: serial
    uses: core.noop
    with: { device: "{{ serial }}" }
  - id: approve-legal
    needs: [suspend-account, contain-devices]
    approval:
      approvers: [role:legal]
      min_approvals: 1
      message: "Draft notifications to authorities for {{ inputs.subject_email }}?"
      timeout: 72h
      on_timeout: reject
  - id: payment-hold
    needs: [snapshot-idp-logs]
    task:
      assignees: [role:finance]
      message: "Hold all pending payments to {{ inputs.subject_email }}"
  - id: draft-fbi-referral
    needs: [approve-legal]
    uses: core.noop
    with:
      template: fbi-ic3-referral
      to: "FBI field office"
    continue_on_error: false
on_failure:
  - id: page-oncall
    uses: core.noop
    with: { channel: "#soc-critical", text: "Runbook {{ run.runbook }} failed: {{ run.error }}" }
"##;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).expect("test YAML parses")
    }

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&json_schema()).expect("the schema is a valid JSON Schema")
    }

    #[test]
    fn schema_has_editor_metadata() {
        let s = json_schema();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert!(s["title"].as_str().is_some_and(|t| t.contains("runbook")));
        assert_eq!(s["properties"]["name"]["pattern"], ID_PATTERN);
        assert_eq!(
            s["$defs"]["Step"]["properties"]["id"]["pattern"],
            ID_PATTERN
        );
        assert!(s["$defs"]["Step"]["properties"]["uses"]["description"].is_string());
    }

    #[test]
    fn shipped_example_validates() {
        let v = validator();
        let doc = yaml(EXAMPLE);
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn unknown_key_and_bad_values_are_rejected() {
        let v = validator();
        let bad_key = EXAMPLE.replace(
            "    needs: [snapshot-idp-logs]\n    uses: http.request",
            "    neds: [snapshot-idp-logs]\n    uses: http.request",
        );
        assert!(!v.is_valid(&yaml(&bad_key)));
        let bad_id = EXAMPLE.replace("id: payment-hold", "id: Payment_Hold");
        assert!(!v.is_valid(&yaml(&bad_id)));
        let bad_duration = EXAMPLE.replace("timeout: 30s", "timeout: 30 seconds");
        assert!(!v.is_valid(&yaml(&bad_duration)));
        let two_kinds = EXAMPLE.replace(
            "    task:\n      assignees",
            "    uses: core.noop\n    task:\n      assignees",
        );
        assert!(!v.is_valid(&yaml(&two_kinds)));
        let version = EXAMPLE.replace("version: 1", "version: 2");
        assert!(!v.is_valid(&yaml(&version)));
    }

    #[test]
    fn shape_tables_match_the_schema() {
        let s = json_schema();
        for (def, fields) in crate::runbook::validate::shape_tables() {
            let props = if def == "Runbook" {
                &s["properties"]
            } else {
                &s["$defs"][def]["properties"]
            };
            let mut in_schema: Vec<&str> = props
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let mut ours = fields.clone();
            in_schema.sort_unstable();
            ours.sort_unstable();
            assert_eq!(in_schema, ours, "{def}");
        }
    }
}
