//! The variables templates and CEL expressions see: `inputs`, `steps.<id>.output`,
//! `steps.<id>.status`, `run.*`, and the `for_each` variable.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::store::RunRecord;

/// Base context for one run; step results are added as steps finish.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub inputs: Value,
    pub run: Map<String, Value>,
    pub steps: Map<String, Value>,
}

impl RunContext {
    pub fn new(run: &RunRecord) -> RunContext {
        let mut r = Map::new();
        r.insert("id".into(), json!(run.id));
        r.insert("runbook".into(), json!(run.runbook));
        r.insert(
            "started_at".into(),
            json!(run
                .started_at
                .clone()
                .unwrap_or_else(|| run.created_at.clone())),
        );
        r.insert("trigger".into(), json!(run.trigger));
        r.insert("started_by".into(), json!(run.started_by));
        r.insert("dry_run".into(), json!(run.dry_run));
        RunContext {
            inputs: run.inputs.clone(),
            run: r,
            steps: Map::new(),
        }
    }

    pub fn set_step(&mut self, id: &str, status: &str, output: Option<&Value>) {
        self.steps.insert(
            id.to_string(),
            json!({"status": status, "output": output.cloned().unwrap_or(Value::Null)}),
        );
    }

    pub fn set_error(&mut self, error: &str) {
        self.run.insert("error".into(), json!(error));
    }

    /// The JSON object templates render against.
    pub fn value(&self) -> Value {
        json!({"inputs": self.inputs, "run": self.run, "steps": self.steps})
    }

    /// Like [`Self::value`], with only the named steps.
    pub fn value_with(&self, ids: &BTreeSet<String>) -> Value {
        let steps: Map<String, Value> = ids
            .iter()
            .filter_map(|id| self.steps.get(id).map(|v| (id.clone(), v.clone())))
            .collect();
        json!({"inputs": self.inputs, "run": self.run, "steps": steps})
    }

    /// With the loop variable (and `index`) bound.
    pub fn with_var(&self, name: &str, item: &Value, idx: usize) -> Value {
        let mut v = self.value();
        if let Value::Object(m) = &mut v {
            m.insert(name.to_string(), item.clone());
            m.entry("index").or_insert(json!(idx));
        }
        v
    }
}

/// `ctx` with the loop variable (and `index`) bound.
pub fn bind(ctx: &Value, name: &str, item: &Value, idx: usize) -> Value {
    let mut v = ctx.clone();
    if let Value::Object(m) = &mut v {
        m.insert(name.to_string(), item.clone());
        m.entry("index").or_insert(json!(idx));
    }
    v
}

/// In a dry run, mustaches that read the output of a step that was not called render a
/// visible placeholder instead of failing. Returns the template with such mustaches
/// replaced (block openers get a placeholder string literal, so `{{#if …}}` stays valid).
pub fn dry_run_placeholders(template: &str, uncalled: &BTreeSet<String>) -> Option<String> {
    if uncalled.is_empty() || !template.contains("{{") {
        return None;
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut changed = false;
    while let Some(start) = rest.find("{{") {
        let Some(end_rel) = rest[start..].find("}}") else {
            break;
        };
        let end = start + end_rel + 2;
        let inner = &rest[start + 2..end - 2];
        out.push_str(&rest[..start]);
        match uncalled_ref(inner, uncalled) {
            Some(path) => {
                changed = true;
                let trimmed = inner.trim_start();
                if trimmed.starts_with('#') || trimmed.starts_with('^') {
                    out.push_str("{{");
                    out.push_str(
                        &inner.replace(&path, &format!("\"<{path}: not run in dry run>\"")),
                    );
                    out.push_str("}}");
                } else {
                    out.push_str(&format!("<{path}: not run in dry run>"));
                }
            }
            None => out.push_str(&rest[start..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// The first `steps.<id>.output…` path inside a mustache whose step was not called.
fn uncalled_ref(inner: &str, uncalled: &BTreeSet<String>) -> Option<String> {
    let mut search = inner;
    while let Some(pos) = search.find("steps.") {
        let tail = &search[pos + 6..];
        let id: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if uncalled.contains(&id) {
            let full: String = search[pos..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != ')' && *c != '}')
                .collect();
            return Some(full);
        }
        search = &search[pos + 6..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_only_for_uncalled_steps() {
        let set: BTreeSet<String> = ["suspend".to_string()].into();
        let t = "user {{ steps.suspend.output.target }} via {{ steps.find.output.id }}";
        let r = dry_run_placeholders(t, &set).unwrap();
        assert_eq!(
            r,
            "user <steps.suspend.output.target: not run in dry run> via {{ steps.find.output.id }}"
        );
        assert!(dry_run_placeholders("{{ steps.find.output.id }}", &set).is_none());
        let b = dry_run_placeholders("{{#if steps.suspend.output.already}}x{{/if}}", &set).unwrap();
        assert!(
            b.starts_with("{{#if \"<steps.suspend.output.already"),
            "{b}"
        );
    }
}
