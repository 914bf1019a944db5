//! Validation: from runbook text to a [`ValidatedRunbook`], or every problem at once.
//!
//! Three passes over the document:
//! 1. shape: every mapping's keys (unknown ones with a "did you mean"), required keys and
//!    value types, checked on the JSON tree so that one bad value does not hide the rest;
//!    the offending keys are then dropped so that the model can still be built;
//! 2. meaning: ids, `needs` and cycles, connector types, actions and their `with` keys,
//!    instances, durations, quorums, input declarations;
//! 3. expressions: template and CEL syntax, and every variable they read: declared inputs,
//!    known `run.*` variables, loop variables, and steps that are certain to have finished
//!    (among the step's `needs`, directly or through others), since anything else would race.
//!
//! Validation is pure: no network, no files besides the one given to [`validate_file`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use cordon_connectors::catalog::{self, ActionDecl, TypeDecl};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::diagnostics::*;
use super::graph::{Ancestors, Ancestry, Needs};
use super::inputs::{check_value, json_kind, type_name, FORMATS};
use super::model::{ConnectorRef, InputSpec, InputType, Runbook, Step, StepKind};
use super::parse::{self, child, Spans};
use crate::expr::{template_refs, Cel, ExprError};

/// What validation knows about the configuration.
#[derive(Debug, Clone, Default)]
pub struct ValidationContext {
    /// Configured connector instance names and their types; `None` when no configuration
    /// was given (then `connector:` names are not checked).
    pub instances: Option<BTreeMap<String, String>>,
    /// Notification templates, to check `notify.draft` steps that name a template
    /// literally (it exists, and renders with any facts); `None` skips that check (a stored
    /// runbook validated again at resume).
    pub templates: Option<crate::notify::DraftTemplates>,
}

/// A runbook that passed validation, with the exact text it came from.
#[derive(Debug, Clone)]
pub struct ValidatedRunbook {
    pub runbook: Runbook,
    /// The source text, byte for byte.
    pub text: String,
    /// Lowercase hex SHA-256 of `text`.
    pub sha256: String,
    /// Where it was read from (as given).
    pub file: String,
    /// The ids of `steps` (not `on_failure`) in a topological order: every step after the
    /// steps it needs, otherwise in file order.
    pub order: Vec<String>,
    /// What the engine derives from the steps, once however many runs execute them.
    derived: OnceLock<Derived>,
}

/// Worked out from a runbook's steps on first use and kept with it.
#[derive(Debug, Clone)]
struct Derived {
    by_id: Arc<HashMap<String, Step>>,
    reads: HashMap<String, Option<BTreeSet<String>>>,
    ancestry: Ancestry,
}

impl ValidatedRunbook {
    fn derived(&self) -> &Derived {
        self.derived.get_or_init(|| {
            let all = || self.runbook.steps.iter().chain(&self.runbook.on_failure);
            Derived {
                by_id: Arc::new(all().map(|s| (s.id.clone(), s.clone())).collect()),
                reads: all().map(|s| (s.id.clone(), step_reads(s))).collect(),
                ancestry: Needs::new(all().map(|s| (s.id.as_str(), s.needs.as_slice()))).ancestry(),
            }
        })
    }

    /// Every step of `steps` and `on_failure` by id, shared by the runs that execute them.
    pub fn steps_by_id(&self) -> Arc<HashMap<String, Step>> {
        self.derived().by_id.clone()
    }

    /// The ids of the steps whose results step `id`'s templates and expressions read; None
    /// when that cannot be told (or `id` is no step), and so any of them may be read.
    pub fn reads(&self, id: &str) -> Option<&BTreeSet<String>> {
        self.derived().reads.get(id)?.as_ref()
    }

    /// A step of `steps` or `on_failure` by id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.derived().by_id.get(id)
    }

    /// Every step `id` needs, directly or through others.
    pub fn ancestors(&self, id: &str) -> BTreeSet<String> {
        self.derived().ancestry.of(id).ids()
    }

    /// Whether step `id` needs step `other`, directly or through others.
    pub fn needs_transitively(&self, id: &str, other: &str) -> bool {
        self.derived().ancestry.of(id).contains(other)
    }

    /// The ids of `on_failure` steps in a topological order.
    pub fn on_failure_order(&self) -> Vec<String> {
        topo_order(&self.runbook.on_failure)
    }
}

/// Validate runbook text. `file` is used in diagnostics.
pub fn validate(
    source: &str,
    file: &str,
    ctx: &ValidationContext,
) -> Result<ValidatedRunbook, Vec<Diagnostic>> {
    let parsed = match parse::parse(source) {
        Ok(p) => p,
        Err(p) => {
            return Err(vec![Diagnostic {
                file: file.to_owned(),
                line: p.pos.line,
                column: p.pos.column,
                code: E_YAML,
                message: format!("YAML syntax error: {}", p.message),
                hint: None,
                step: None,
            }])
        }
    };
    let mut ck = Checker {
        file,
        spans: &parsed.spans,
        ctx,
        diags: Vec::new(),
    };
    ck.check(&parsed.doc);
    let mut diags = ck.diags;
    if !diags.is_empty() {
        diags.sort_by_key(|d| (d.line, d.column));
        return Err(diags);
    }
    let runbook = parse::runbook_from_yaml(source).map_err(|p| {
        vec![Diagnostic {
            file: file.to_owned(),
            line: p.pos.line,
            column: p.pos.column,
            code: E_TYPE,
            message: p.message,
            hint: None,
            step: None,
        }]
    })?;
    let order = topo_order(&runbook.steps);
    Ok(ValidatedRunbook {
        sha256: hex::encode(Sha256::digest(source.as_bytes())),
        text: source.to_owned(),
        file: file.to_owned(),
        order,
        runbook,
        derived: OnceLock::new(),
    })
}

/// The step ids a step's templates and CEL expressions read; None when that cannot be told.
fn step_reads(def: &Step) -> Option<BTreeSet<String>> {
    fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::String(s) => out.push(s),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(m) => m.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut texts = Vec::new();
    if let Some(with) = &def.with {
        with.values().for_each(|v| strings(v, &mut texts));
    }
    if let Some(a) = &def.approval {
        texts.extend(a.message.as_deref());
    }
    if let Some(t) = &def.task {
        texts.push(&t.message);
    }
    let mut paths: Vec<String> = Vec::new();
    for t in texts {
        if t.contains("{{") {
            paths.extend(template_refs(t).ok()?);
        }
    }
    for e in [&def.condition, &def.for_each].into_iter().flatten() {
        paths.extend(Cel::compile(e).ok()?.references());
    }
    let mut ids = BTreeSet::new();
    for p in paths {
        if p == "steps" {
            return None;
        }
        if let Some(rest) = p.strip_prefix("steps.") {
            let id = rest.split('.').next().unwrap_or(rest);
            ids.insert(id.to_string());
        }
    }
    Some(ids)
}

/// Read and validate a runbook file; an unreadable file is a diagnostic at 1:1.
pub fn validate_file(
    path: &Path,
    ctx: &ValidationContext,
) -> Result<ValidatedRunbook, Vec<Diagnostic>> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(source) => validate(&source, &file, ctx),
        Err(e) => Err(vec![Diagnostic {
            file,
            line: 1,
            column: 1,
            code: E_READ,
            message: format!("cannot read the runbook: {e}"),
            hint: None,
            step: None,
        }]),
    }
}

/// Every step after the steps it needs, choosing among those ready in file order. Steps
/// caught in a cycle (impossible after validation) come last, in file order.
fn topo_order(steps: &[Step]) -> Vec<String> {
    Needs::new(steps.iter().map(|s| (s.id.as_str(), s.needs.as_slice())))
        .order()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Shape tables. They mirror `model.rs`; a test checks them against the JSON Schema.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ty {
    Str,
    Bool,
    U32,
    Num,
    StrList,
    AnyList,
    Map,
    Any,
    StrOrList,
    Obj,
    MapOfObj,
    ListOfObj,
    OneOf(&'static [&'static str]),
}

impl Ty {
    fn describe(self) -> String {
        match self {
            Ty::Str => "a string".into(),
            Ty::Bool => "true or false".into(),
            Ty::U32 => "a whole number (0 or more)".into(),
            Ty::Num => "a number".into(),
            Ty::StrList => "a list of strings".into(),
            Ty::AnyList => "a list".into(),
            Ty::Map | Ty::Obj => "a mapping".into(),
            Ty::Any => "any value".into(),
            Ty::StrOrList => "a string or a list of strings".into(),
            Ty::MapOfObj => "a mapping of names to mappings".into(),
            Ty::ListOfObj => "a list of mappings".into(),
            Ty::OneOf(vals) => format!(
                "one of {}",
                vals.iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn accepts(self, v: &Value) -> bool {
        let str_list = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
        match self {
            Ty::Str => v.is_string(),
            Ty::Bool => v.is_boolean(),
            Ty::U32 => v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
            Ty::Num => v.is_number(),
            Ty::StrList => str_list(v),
            Ty::AnyList => v.is_array(),
            Ty::Map | Ty::Obj | Ty::MapOfObj => v.is_object(),
            Ty::Any => true,
            Ty::StrOrList => v.is_string() || str_list(v),
            Ty::ListOfObj => v.is_array(),
            Ty::OneOf(vals) => v.as_str().is_some_and(|s| vals.contains(&s)),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct F {
    name: &'static str,
    ty: Ty,
    required: bool,
    /// `null` means "not given" (an `Option` in the model).
    nullable: bool,
}

const fn req(name: &'static str, ty: Ty) -> F {
    F {
        name,
        ty,
        required: true,
        nullable: false,
    }
}
/// Optional, `null` allowed.
const fn opt(name: &'static str, ty: Ty) -> F {
    F {
        name,
        ty,
        required: false,
        nullable: true,
    }
}
/// Optional with a default, `null` not allowed.
const fn dfl(name: &'static str, ty: Ty) -> F {
    F {
        name,
        ty,
        required: false,
        nullable: false,
    }
}

const INPUT_TYPES: &[&str] = &["string", "number", "integer", "boolean", "array", "object"];

const RUNBOOK_FIELDS: &[F] = &[
    req("version", Ty::U32),
    req("name", Ty::Str),
    opt("title", Ty::Str),
    opt("description", Ty::Str),
    dfl("labels", Ty::StrList),
    dfl("inputs", Ty::MapOfObj),
    opt("concurrency_key", Ty::Str),
    req("steps", Ty::ListOfObj),
    dfl("on_failure", Ty::ListOfObj),
];

const INPUT_FIELDS: &[F] = &[
    req("type", Ty::OneOf(INPUT_TYPES)),
    dfl("required", Ty::Bool),
    opt("description", Ty::Str),
    opt("default", Ty::Any),
    opt("enum", Ty::AnyList),
    opt("format", Ty::Str),
    opt("minimum", Ty::Num),
    opt("maximum", Ty::Num),
    opt("items", Ty::Obj),
];

const STEP_FIELDS: &[F] = &[
    req("id", Ty::Str),
    opt("name", Ty::Str),
    opt("uses", Ty::Str),
    opt("connector", Ty::StrOrList),
    opt("with", Ty::Map),
    dfl("needs", Ty::StrList),
    opt("if", Ty::Str),
    opt("for_each", Ty::Str),
    opt("as", Ty::Str),
    opt("max_parallel", Ty::U32),
    opt("retry", Ty::Obj),
    opt("timeout", Ty::Str),
    dfl("continue_on_error", Ty::Bool),
    dfl("optional", Ty::Bool),
    opt("undo", Ty::Obj),
    opt("approval", Ty::Obj),
    opt("task", Ty::Obj),
];

const RETRY_FIELDS: &[F] = &[
    req("attempts", Ty::U32),
    opt("backoff", Ty::Str),
    opt("max_backoff", Ty::Str),
];

const UNDO_FIELDS: &[F] = &[
    req("uses", Ty::Str),
    opt("connector", Ty::StrOrList),
    opt("with", Ty::Map),
];

const APPROVAL_FIELDS: &[F] = &[
    req("approvers", Ty::StrList),
    dfl("min_approvals", Ty::U32),
    opt("message", Ty::Str),
    opt("timeout", Ty::Str),
    dfl("on_timeout", Ty::OneOf(&["reject", "approve"])),
];

const TASK_FIELDS: &[F] = &[
    req("assignees", Ty::StrList),
    req("message", Ty::Str),
    opt("timeout", Ty::Str),
];

/// The nested objects of a step, with their tables.
const STEP_PARTS: &[(&str, &[F])] = &[
    ("retry", RETRY_FIELDS),
    ("undo", UNDO_FIELDS),
    ("approval", APPROVAL_FIELDS),
    ("task", TASK_FIELDS),
];

/// Keys that only make sense on action (`uses`) steps.
const ACTION_ONLY: &[&str] = &[
    "with",
    "connector",
    "undo",
    "for_each",
    "as",
    "max_parallel",
    "retry",
    "optional",
];

/// Keys whose values are durations.
const DURATION_KEYS: &[&str] = &["timeout", "backoff", "max_backoff"];

const RUN_VARS: &[&str] = &["id", "runbook", "started_at", "trigger", "error"];
const STEP_VARS: &[&str] = &["output", "status"];
const RESERVED_VARS: &[&str] = &["inputs", "steps", "run", "this"];

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_ident(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn has_template(s: &str) -> bool {
    s.contains("{{")
}

// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Group {
    Main,
    OnFailure,
}

impl Group {
    fn key(self) -> &'static str {
        match self {
            Group::Main => "steps",
            Group::OnFailure => "on_failure",
        }
    }
}

/// One step as found in the file.
struct Entry {
    ptr: String,
    group: Group,
    /// The id as written, if it is a string.
    id: Option<String>,
    /// The model, when the step's shape allowed building it.
    step: Option<Step>,
    /// The keys as written, before shape checks removed any.
    raw_keys: BTreeSet<String>,
}

/// Where a template or expression is, and what it may read.
struct RefScope<'s> {
    /// Human name of the field, e.g. "`with.url` of step `x`".
    what: String,
    step: Option<&'s str>,
    group: Group,
    ancestors: Ancestors<'s>,
    loop_var: Option<&'s str>,
    /// `undo` may read the step's own output.
    allow_self: bool,
    /// `concurrency_key` is rendered before any step runs.
    allow_steps: bool,
    /// CEL source, for hints about `-` in step ids.
    cel_source: Option<&'s str>,
}

struct Checker<'a> {
    file: &'a str,
    spans: &'a Spans,
    ctx: &'a ValidationContext,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn push(
        &mut self,
        pos: parse::Pos,
        code: &'static str,
        message: String,
        step: Option<&str>,
    ) -> &mut Diagnostic {
        self.diags.push(Diagnostic {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            code,
            message,
            hint: None,
            step: step.map(str::to_owned),
        });
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    /// A problem with the key at `ptr` (unknown, missing, misplaced).
    fn at_key(
        &mut self,
        ptr: &str,
        code: &'static str,
        message: String,
        step: Option<&str>,
    ) -> &mut Diagnostic {
        let pos = self.spans.key(ptr);
        self.push(pos, code, message, step)
    }

    /// A problem with the value at `ptr`.
    fn at_value(
        &mut self,
        ptr: &str,
        code: &'static str,
        message: String,
        step: Option<&str>,
    ) -> &mut Diagnostic {
        let pos = self.spans.value(ptr);
        self.push(pos, code, message, step)
    }

    /// Check one mapping's keys and value types. Returns the mapping without its bad keys,
    /// and whether every required key was there.
    fn shape(
        &mut self,
        v: &Value,
        ptr: &str,
        fields: &[F],
        what: &str,
        step: Option<&str>,
    ) -> Option<(Map<String, Value>, bool)> {
        let Some(obj) = v.as_object() else {
            self.at_value(
                ptr,
                E_TYPE,
                format!("{what} must be a mapping, not {}", kind_phrase(v)),
                step,
            );
            return None;
        };
        let mut clean = Map::new();
        for (k, val) in obj {
            let kp = child(ptr, k);
            let Some(f) = fields.iter().find(|f| f.name == k) else {
                let hint = did_you_mean(k, fields.iter().map(|f| f.name));
                self.at_key(
                    &kp,
                    E_UNKNOWN_KEY,
                    format!("unknown key `{k}` in {what}"),
                    step,
                )
                .hint = hint;
                continue;
            };
            if val.is_null() && f.nullable {
                continue;
            }
            if !f.ty.accepts(val) {
                let mut hint = None;
                if let Ty::OneOf(vals) = f.ty {
                    if let Some(s) = val.as_str() {
                        hint = did_you_mean(s, vals.iter().copied());
                    }
                }
                if DURATION_KEYS.contains(&f.name) && val.is_number() {
                    hint = Some(format!("durations need a unit: write e.g. `{k}: {val}s`"));
                }
                if f.ty == Ty::StrList && val.is_string() {
                    hint = Some(format!(
                        "write a list: `{k}: [{}]`",
                        val.as_str().unwrap_or("")
                    ));
                }
                let d = self.at_value(
                    &kp,
                    E_TYPE,
                    format!(
                        "`{k}` in {what} must be {}, not {}",
                        f.ty.describe(),
                        kind_phrase(val)
                    ),
                    step,
                );
                d.hint = hint;
                continue;
            }
            clean.insert(k.clone(), val.clone());
        }
        let mut complete = true;
        for f in fields.iter().filter(|f| f.required) {
            match obj.get(f.name) {
                None | Some(Value::Null) => {
                    complete = false;
                    let pos_ptr = if obj.get(f.name).is_some() {
                        child(ptr, f.name)
                    } else {
                        ptr.to_owned()
                    };
                    self.at_key(
                        &pos_ptr,
                        E_MISSING_KEY,
                        format!("missing key `{}` in {what}", f.name),
                        step,
                    );
                }
                Some(_) if !clean.contains_key(f.name) => complete = false,
                Some(_) => {}
            }
        }
        Some((clean, complete))
    }

    fn check(&mut self, doc: &Value) {
        if !doc.is_object() {
            self.push(
                parse::Pos::START,
                E_NOT_MAPPING,
                format!(
                    "a runbook must be a mapping with `version`, `name` and `steps`, not {}",
                    kind_phrase(doc)
                ),
                None,
            );
            return;
        }
        let Some((top, _)) = self.shape(doc, "", RUNBOOK_FIELDS, "the runbook", None) else {
            return;
        };
        if let Some(v) = top.get("version") {
            if v.as_u64() != Some(1) {
                self.at_value(
                    "/version",
                    E_VERSION,
                    format!("unsupported runbook version {v}: this engine reads version 1"),
                    None,
                );
            }
        }
        if let Some(Value::String(n)) = top.get("name") {
            if !is_id(n) {
                self.at_value(
                    "/name",
                    E_NAME,
                    format!("runbook name `{n}` must be lowercase letters, digits and `-`"),
                    None,
                )
                .hint = suggest_id(n);
            }
        }

        // Inputs.
        let declared: BTreeSet<String> = doc
            .get("inputs")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(Value::Object(inputs)) = top.get("inputs") {
            for (name, spec) in inputs {
                let ptr = child("/inputs", name);
                if !is_ident(name) {
                    self.at_key(
                        &ptr,
                        E_INPUT_NAME,
                        format!(
                            "input name `{name}` must be letters, digits and `_`, not starting with a digit"
                        ),
                        None,
                    );
                }
                self.input_spec(spec, &ptr, &format!("input `{name}`"));
            }
        }

        // Steps, shape first.
        let mut entries = Vec::new();
        for group in [Group::Main, Group::OnFailure] {
            if let Some(Value::Array(items)) = top.get(group.key()) {
                for (i, item) in items.iter().enumerate() {
                    let ptr = child(&format!("/{}", group.key()), &i.to_string());
                    entries.push(self.step_shape(item, ptr, group));
                }
            }
        }
        let ck = StepsCheck::new(&entries, &declared);
        ck.run(self);

        if let Some(Value::String(key)) = top.get("concurrency_key") {
            let scope = RefScope {
                what: "`concurrency_key`".into(),
                step: None,
                group: Group::Main,
                ancestors: Ancestors::none(),
                loop_var: None,
                allow_self: false,
                allow_steps: false,
                cel_source: None,
            };
            self.template("/concurrency_key", key, &scope, &ck);
        }
    }

    fn input_spec(&mut self, spec: &Value, ptr: &str, what: &str) {
        let Some((mut clean, complete)) = self.shape(spec, ptr, INPUT_FIELDS, what, None) else {
            return;
        };
        // `items` is itself a declaration: check it, and drop it if it is broken.
        if let Some(items) = clean.get("items").cloned() {
            let ip = child(ptr, "items");
            let before = self.diags.len();
            self.input_spec(&items, &ip, &format!("`items` of {what}"));
            if self.diags.len() > before {
                clean.remove("items");
            }
        }
        if !complete {
            return;
        }
        let Ok(spec) = serde_json::from_value::<InputSpec>(Value::Object(clean)) else {
            return;
        };
        let ty = type_name(spec.ty);
        let numeric = matches!(spec.ty, InputType::Number | InputType::Integer);
        if spec.items.is_some() && spec.ty != InputType::Array {
            self.at_key(
                &child(ptr, "items"),
                E_INPUT_ITEMS,
                format!("`items` only applies to arrays, and {what} is {ty}"),
                None,
            );
        }
        if let Some(format) = &spec.format {
            let fp = child(ptr, "format");
            if spec.ty != InputType::String {
                self.at_key(
                    &fp,
                    E_INPUT_FORMAT,
                    format!("`format` only applies to strings, and {what} is {ty}"),
                    None,
                );
            } else if !FORMATS.contains(&format.as_str()) {
                self.at_value(
                    &fp,
                    E_INPUT_FORMAT,
                    format!(
                        "unknown format `{format}` for {what}; known formats: {}",
                        FORMATS.join(", ")
                    ),
                    None,
                )
                .hint = did_you_mean(format, FORMATS.iter().copied());
            }
        }
        for key in ["minimum", "maximum"] {
            let present = match key {
                "minimum" => spec.minimum.is_some(),
                _ => spec.maximum.is_some(),
            };
            if present && !numeric {
                self.at_key(
                    &child(ptr, key),
                    E_INPUT_RANGE,
                    format!("`{key}` only applies to numbers and integers, and {what} is {ty}"),
                    None,
                );
            }
        }
        if let (Some(min), Some(max)) = (spec.minimum, spec.maximum) {
            if min > max {
                self.at_value(
                    &child(ptr, "maximum"),
                    E_INPUT_RANGE,
                    format!("`maximum` {max} of {what} is less than its `minimum` {min}"),
                    None,
                );
            }
        }
        let bare = InputSpec {
            allowed: None,
            default: None,
            ..spec.clone()
        };
        if let Some(allowed) = &spec.allowed {
            if allowed.is_empty() {
                self.at_value(
                    &child(ptr, "enum"),
                    E_INPUT_ENUM,
                    format!("`enum` of {what} is empty: no value could be given"),
                    None,
                );
            }
            for (i, v) in allowed.iter().enumerate() {
                if let Err(e) = strict_check(&bare, v) {
                    self.at_value(
                        &child(&child(ptr, "enum"), &i.to_string()),
                        E_INPUT_ENUM,
                        format!("`enum` value of {what}: {e}"),
                        None,
                    );
                }
            }
        }
        if let Some(d) = &spec.default {
            if let Err(e) = strict_check(&spec, d) {
                self.at_value(
                    &child(ptr, "default"),
                    E_INPUT_DEFAULT,
                    format!("`default` of {what}: {e}"),
                    None,
                );
            }
        }
    }

    fn step_shape(&mut self, item: &Value, ptr: String, group: Group) -> Entry {
        let raw_id = item.get("id").and_then(Value::as_str).map(str::to_owned);
        let what = match (&raw_id, group) {
            (Some(id), Group::Main) => format!("step `{id}`"),
            (Some(id), Group::OnFailure) => format!("on_failure step `{id}`"),
            (None, _) => format!("step {} of `{}`", ptr_index(&ptr), group.key()),
        };
        let sid = raw_id.as_deref();
        let Some((mut clean, complete)) = self.shape(item, &ptr, STEP_FIELDS, &what, sid) else {
            return Entry {
                ptr,
                group,
                id: None,
                step: None,
                raw_keys: BTreeSet::new(),
            };
        };
        for (key, fields) in STEP_PARTS {
            let Some(v) = clean.get(*key).cloned() else {
                continue;
            };
            let part_what = format!("`{key}` of {what}");
            match self.shape(&v, &child(&ptr, key), fields, &part_what, sid) {
                Some((part, true)) => {
                    clean.insert((*key).to_owned(), Value::Object(part));
                }
                _ => {
                    clean.remove(*key);
                }
            }
        }
        // Exactly one kind, judged on what was written (even if it was malformed).
        let obj = item.as_object();
        let kinds: Vec<&str> = ["uses", "approval", "task"]
            .into_iter()
            .filter(|k| obj.and_then(|o| o.get(*k)).is_some_and(|v| !v.is_null()))
            .collect();
        match kinds.len() {
            1 => {}
            0 => {
                self.at_key(
                    &ptr,
                    E_STEP_KIND,
                    format!(
                        "{what} has none of `uses`, `approval` or `task`: it needs exactly one"
                    ),
                    sid,
                );
            }
            _ => {
                let list = kinds
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" and ");
                self.at_key(
                    &child(&ptr, kinds[1]),
                    E_STEP_KIND,
                    format!(
                        "{what} has {list}: a step is exactly one of `uses`, `approval` or `task`"
                    ),
                    sid,
                )
                .hint = Some("split it into separate steps".into());
            }
        }
        let step = if complete {
            serde_json::from_value::<Step>(Value::Object(clean)).ok()
        } else {
            None
        };
        Entry {
            ptr,
            group,
            id: raw_id,
            step,
            raw_keys: obj.map(|o| o.keys().cloned().collect()).unwrap_or_default(),
        }
    }

    /// Check one template string: syntax, helpers, and what it reads.
    fn template(&mut self, ptr: &str, text: &str, scope: &RefScope<'_>, ck: &StepsCheck<'_>) {
        match template_refs(text) {
            Ok(refs) => {
                for r in refs {
                    self.reference(ptr, &r, scope, ck);
                }
            }
            Err(ExprError::UnknownHelper { name }) => {
                let hint = did_you_mean(&name, KNOWN_HELPERS.iter().copied());
                self.at_value(
                    ptr,
                    E_HELPER,
                    format!("unknown template helper `{name}` in {}", scope.what),
                    scope.step,
                )
                .hint = hint;
            }
            Err(e) => {
                self.at_value(
                    ptr,
                    E_TEMPLATE,
                    format!("{e} in {}", scope.what),
                    scope.step,
                );
            }
        }
    }

    /// Check one CEL expression: syntax and what it reads.
    fn cel(&mut self, ptr: &str, text: &str, scope: &RefScope<'_>, ck: &StepsCheck<'_>) {
        match Cel::compile(text) {
            Ok(p) => {
                for r in p.references() {
                    self.reference(ptr, &r, scope, ck);
                }
            }
            Err(e) => {
                self.at_value(ptr, E_CEL, format!("{e} in {}", scope.what), scope.step);
            }
        }
    }

    /// Check one variable path read by a template or expression.
    fn reference(&mut self, ptr: &str, path: &str, scope: &RefScope<'_>, ck: &StepsCheck<'_>) {
        let segs: Vec<&str> = path.split('.').collect();
        let sid = scope.step;
        let what = &scope.what;
        match segs[0] {
            "inputs" => {
                if let Some(name) = segs.get(1) {
                    if !ck.declared.contains(*name) {
                        let hint = did_you_mean(name, ck.declared.iter().map(String::as_str));
                        self.at_value(
                            ptr,
                            E_UNKNOWN_INPUT,
                            format!("{what} reads `inputs.{name}`, which is not a declared input"),
                            sid,
                        )
                        .hint = hint;
                    }
                }
            }
            "steps" => {
                if !scope.allow_steps {
                    self.at_value(
                        ptr,
                        E_UNKNOWN_STEP_REF,
                        format!("{what} reads `{path}`, but it is rendered before any step runs"),
                        sid,
                    );
                    return;
                }
                let Some(id) = segs.get(1) else {
                    self.at_value(
                        ptr,
                        E_UNKNOWN_STEP_REF,
                        format!("{what} reads all of `steps`; name a step: `steps.<id>.output`"),
                        sid,
                    );
                    return;
                };
                match ck.group_of.get(*id) {
                    None => {
                        let mut hint = did_you_mean(id, ck.group_of.keys().copied());
                        if let Some(src) = scope.cel_source {
                            if let Some(full) = hyphen_id(src, id, ck) {
                                hint = Some(format!(
                                    "in CEL `-` is subtraction: write `steps['{full}']`"
                                ));
                            }
                        }
                        self.at_value(
                            ptr,
                            E_UNKNOWN_STEP_REF,
                            format!("{what} reads `steps.{id}`, but there is no step `{id}`"),
                            sid,
                        )
                        .hint = hint;
                        return;
                    }
                    Some(_) if Some(*id) == sid => {
                        if !scope.allow_self {
                            self.at_value(
                                ptr,
                                E_RACE,
                                format!("{what} reads its own step's `steps.{id}`, which is not known before it runs"),
                                sid,
                            );
                            return;
                        }
                    }
                    Some(g) if *g != scope.group => {
                        if scope.group == Group::Main {
                            self.at_value(
                                ptr,
                                E_UNKNOWN_STEP_REF,
                                format!("{what} reads `steps.{id}`, an on_failure step, which only runs after the run has failed"),
                                sid,
                            );
                            return;
                        }
                        // on_failure steps run after every main step has settled.
                    }
                    Some(_) => {
                        if !scope.ancestors.contains(id) {
                            let d = self.at_value(
                                ptr,
                                E_RACE,
                                format!("{what} reads `steps.{id}`, but `{id}` is not among its `needs` (directly or through others), so it may not have finished"),
                                sid,
                            );
                            d.hint = Some(format!("add `{id}` to `needs`"));
                            return;
                        }
                    }
                }
                if let Some(field) = segs.get(2) {
                    if !STEP_VARS.contains(field) {
                        let hint = did_you_mean(field, STEP_VARS.iter().copied());
                        self.at_value(
                            ptr,
                            E_STEP_FIELD,
                            format!("{what} reads `steps.{id}.{field}`; a step has `output` and `status`"),
                            sid,
                        )
                        .hint = hint;
                    }
                }
            }
            "run" => {
                if let Some(var) = segs.get(1) {
                    if !RUN_VARS.contains(var) {
                        let hint = did_you_mean(var, RUN_VARS.iter().copied());
                        self.at_value(
                            ptr,
                            E_RUN_VAR,
                            format!(
                                "{what} reads `run.{var}`; `run` has {}",
                                RUN_VARS
                                    .iter()
                                    .map(|v| format!("`{v}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                            sid,
                        )
                        .hint = hint;
                    } else if *var == "error" && scope.group != Group::OnFailure {
                        self.at_value(
                            ptr,
                            E_RUN_VAR,
                            format!("{what} reads `run.error`, which is only defined in `on_failure` steps"),
                            sid,
                        );
                    }
                }
            }
            v if Some(v) == scope.loop_var => {}
            v => {
                if ck.loop_vars.contains(v) {
                    self.at_value(
                        ptr,
                        E_LOOP_VAR,
                        format!(
                            "{what} reads `{v}`, which is only defined in a step with `for_each`"
                        ),
                        sid,
                    );
                    return;
                }
                let mut names = vec!["inputs", "steps", "run"];
                if let Some(l) = scope.loop_var {
                    names.push(l);
                }
                let mut hint = did_you_mean(v, names.iter().copied());
                if let Some(src) = scope.cel_source {
                    if let Some(full) = hyphen_id(src, v, ck) {
                        hint = Some(format!(
                            "in CEL `-` is subtraction: write `steps['{full}']`"
                        ));
                    }
                }
                self.at_value(
                    ptr,
                    E_UNKNOWN_VAR,
                    format!("{what} reads unknown variable `{v}`"),
                    sid,
                )
                .hint = hint;
            }
        }
    }
}

/// Helpers a template may call (for hints).
const KNOWN_HELPERS: &[&str] = &[
    "ago", "now", "json", "default", "lower", "upper", "join", "eq", "ne", "and", "or", "not",
    "if", "unless", "each", "with", "lookup", "len", "gt", "gte", "lt", "lte",
];

/// When CEL read `a-b` as `a - b`, the step id the author meant.
fn hyphen_id(src: &str, part: &str, ck: &StepsCheck<'_>) -> Option<String> {
    ck.group_of
        .keys()
        .find(|id| id.contains('-') && id.split('-').any(|p| p == part) && src.contains(*id))
        .map(|s| (*s).to_owned())
}

fn ptr_index(ptr: &str) -> String {
    let i = ptr.rsplit('/').next().unwrap_or("0");
    let n: usize = i.parse().unwrap_or(0);
    format!("#{}", n + 1)
}

fn kind_phrase(v: &Value) -> String {
    match v {
        Value::Null => "empty".into(),
        Value::String(s) => format!("the string `{s}`"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
    }
}

fn suggest_id(s: &str) -> Option<String> {
    let fixed: String = s
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let fixed = fixed.trim_matches('-').to_owned();
    (is_id(&fixed) && fixed != s).then(|| format!("did you mean `{fixed}`?"))
}

/// A declared default or enum value must already have the declared type (no string
/// conversion, which is only for values typed on a command line).
fn strict_check(spec: &InputSpec, v: &Value) -> Result<(), String> {
    let want = type_name(spec.ty);
    let got = json_kind(v);
    let ok = match spec.ty {
        InputType::Number => v.is_number(),
        InputType::Integer => v.is_i64() || v.is_u64(),
        _ => got == want,
    };
    if !ok {
        return Err(format!("expected {want}, got {got} {v}"));
    }
    if let (InputType::Array, Some(items), Value::Array(list)) = (spec.ty, &spec.items, v) {
        for (i, item) in list.iter().enumerate() {
            strict_check(items, item).map_err(|e| format!("item {}: {e}", i + 1))?;
        }
    }
    check_value(spec, v.clone()).map(|_| ())
}

// ---------------------------------------------------------------------------------------
// Steps: ids, needs, cycles, actions, connectors, expressions.

struct StepsCheck<'e> {
    entries: &'e [Entry],
    declared: &'e BTreeSet<String>,
    /// Every (string) step id and its group (the first occurrence wins).
    group_of: BTreeMap<&'e str, Group>,
    /// Every `as` name (and `item`), to explain loop variables used elsewhere.
    loop_vars: BTreeSet<&'e str>,
}

impl<'e> StepsCheck<'e> {
    fn new(entries: &'e [Entry], declared: &'e BTreeSet<String>) -> Self {
        let mut group_of = BTreeMap::new();
        let mut loop_vars = BTreeSet::new();
        for e in entries {
            if let Some(id) = &e.id {
                group_of.entry(id.as_str()).or_insert(e.group);
            }
            if let Some(s) = &e.step {
                if s.for_each.is_some() {
                    loop_vars.insert(s.loop_var());
                }
            }
        }
        StepsCheck {
            entries,
            declared,
            group_of,
            loop_vars,
        }
    }

    fn run(&self, ck: &mut Checker<'_>) {
        // Ids: well-formed and unique across `steps` and `on_failure`.
        let mut first_seen: BTreeMap<&str, &Entry> = BTreeMap::new();
        for e in self.entries {
            let Some(id) = &e.id else { continue };
            let ip = child(&e.ptr, "id");
            if !is_id(id) {
                ck.at_value(
                    &ip,
                    E_BAD_ID,
                    format!("step id `{id}` must be lowercase letters, digits and `-`"),
                    Some(id),
                )
                .hint = suggest_id(id);
            }
            if let Some(first) = first_seen.get(id.as_str()) {
                let line = ck.spans.value(&child(&first.ptr, "id")).line;
                ck.at_value(
                    &ip,
                    E_DUP_ID,
                    format!("duplicate step id `{id}` (first used on line {line})"),
                    Some(id),
                );
            } else {
                first_seen.insert(id, e);
            }
        }

        // Needs: known, same group; then cycles per group.
        let needs = Needs::new(
            self.entries
                .iter()
                .filter_map(|e| e.step.as_ref())
                .map(|s| (s.id.as_str(), s.needs.as_slice())),
        );
        for e in self.entries {
            let Some(s) = &e.step else { continue };
            for (i, n) in s.needs.iter().enumerate() {
                let np = child(&child(&e.ptr, "needs"), &i.to_string());
                match self.group_of.get(n.as_str()) {
                    Some(g) if *g == e.group => {}
                    Some(_) if e.group == Group::Main => {
                        ck.at_value(
                            &np,
                            E_UNKNOWN_NEED,
                            format!("step `{}` needs `{n}`, an on_failure step, which only runs after the run has failed", s.id),
                            Some(&s.id),
                        );
                    }
                    Some(_) => {
                        ck.at_value(
                            &np,
                            E_UNKNOWN_NEED,
                            format!("on_failure step `{}` needs `{n}`, a main step; on_failure steps run after the main steps and can only need each other", s.id),
                            Some(&s.id),
                        );
                    }
                    None => {
                        let same: Vec<&str> = self
                            .group_of
                            .iter()
                            .filter(|(_, g)| **g == e.group)
                            .map(|(id, _)| *id)
                            .collect();
                        ck.at_value(
                            &np,
                            E_UNKNOWN_NEED,
                            format!("step `{}` needs unknown step `{n}`", s.id),
                            Some(&s.id),
                        )
                        .hint = did_you_mean(n, same);
                    }
                }
            }
        }
        let unsettled = needs.unsettled();
        for group in [Group::Main, Group::OnFailure] {
            self.cycles(ck, group, &unsettled);
        }

        let ancestry = needs.ancestry();
        for e in self.entries {
            let Some(s) = &e.step else { continue };
            self.step(ck, e, s, ancestry.of(&s.id));
        }
    }

    /// Report every cycle once, naming its steps in `needs` order. Only the steps in or
    /// behind a cycle of the whole graph (`unsettled`) can be on one.
    fn cycles(&self, ck: &mut Checker<'_>, group: Group, unsettled: &BTreeSet<&str>) {
        let steps: Vec<(&Entry, &Step)> = self
            .entries
            .iter()
            .filter(|e| e.group == group)
            .filter_map(|e| e.step.as_ref().map(|s| (e, s)))
            .collect();
        let edges: BTreeMap<&str, Vec<&str>> = steps
            .iter()
            .map(|(_, s)| {
                let targets = s
                    .needs
                    .iter()
                    .map(String::as_str)
                    .filter(|n| self.group_of.get(n) == Some(&group))
                    .collect();
                (s.id.as_str(), targets)
            })
            .collect();
        let mut reported: BTreeSet<&str> = BTreeSet::new();
        for (e, s) in &steps {
            let start = s.id.as_str();
            if reported.contains(start) || !unsettled.contains(start) {
                continue;
            }
            let Some(path) = shortest_cycle(start, &edges) else {
                continue;
            };
            reported.extend(path.iter().copied());
            let mut names: Vec<String> = path.iter().map(|p| format!("`{p}`")).collect();
            names.push(format!("`{start}`"));
            ck.at_key(
                &child(&e.ptr, "needs"),
                E_CYCLE,
                format!(
                    "steps form a cycle through `needs`: {} (each needs the next)",
                    names.join(" → ")
                ),
                Some(start),
            );
        }
    }

    fn step(&self, ck: &mut Checker<'_>, e: &Entry, s: &Step, anc: Ancestors<'_>) {
        let ptr = e.ptr.as_str();
        let sid = Some(s.id.as_str());
        let kind_name = match e.group {
            Group::Main => "step",
            Group::OnFailure => "on_failure step",
        };
        let what = |field: &str| format!("`{field}` of {kind_name} `{}`", s.id);

        // Durations and counts.
        let mut durations: Vec<(String, &str)> = Vec::new();
        if let Some(t) = &s.timeout {
            durations.push((child(ptr, "timeout"), t));
        }
        if let Some(r) = &s.retry {
            let rp = child(ptr, "retry");
            if let Some(b) = &r.backoff {
                durations.push((child(&rp, "backoff"), b));
            }
            if let Some(b) = &r.max_backoff {
                durations.push((child(&rp, "max_backoff"), b));
            }
            if r.attempts == 0 {
                ck.at_value(
                    &child(&rp, "attempts"),
                    E_ATTEMPTS,
                    format!(
                        "{} must be at least 1 (it counts every attempt, the first included)",
                        what("retry.attempts")
                    ),
                    sid,
                );
            }
        }
        if let Some(a) = &s.approval {
            if let Some(t) = &a.timeout {
                durations.push((child(&child(ptr, "approval"), "timeout"), t));
            }
        }
        if let Some(t) = &s.task {
            if let Some(t) = &t.timeout {
                durations.push((child(&child(ptr, "task"), "timeout"), t));
            }
        }
        for (dp, text) in durations {
            if let Err(err) = crate::duration::parse(text) {
                let field = dp.split('/').skip(3).collect::<Vec<_>>().join(".");
                ck.at_value(&dp, E_DURATION, format!("{}: {err}", what(&field)), sid);
            }
        }
        if s.max_parallel == Some(0) {
            ck.at_value(
                &child(ptr, "max_parallel"),
                E_MAX_PARALLEL,
                format!("{} must be at least 1", what("max_parallel")),
                sid,
            );
        }

        // Loop variable.
        let loop_var = s.for_each.as_ref().map(|_| s.loop_var());
        if let Some(as_var) = &s.as_var {
            let ap = child(ptr, "as");
            if s.for_each.is_none() {
                ck.at_key(
                    &ap,
                    E_AS,
                    format!("{kind_name} `{}` has `as` but no `for_each`", s.id),
                    sid,
                );
            } else if !is_ident(as_var)
                || RESERVED_VARS.contains(&as_var.as_str())
                || KNOWN_HELPERS.contains(&as_var.as_str())
            {
                ck.at_value(
                    &ap,
                    E_AS,
                    format!("loop variable `{as_var}` of {kind_name} `{}` must be a plain name (letters, digits, `_`) that is not `inputs`, `steps`, `run`, `this` or a template helper", s.id),
                    sid,
                );
            }
        }

        match s.kind() {
            StepKind::Action => self.action_step(ck, e, s, anc, loop_var),
            kind => {
                let kind_word = if kind == StepKind::Approval {
                    "an approval"
                } else {
                    "a task"
                };
                // Keys that only action steps use.
                for k in ACTION_ONLY {
                    if e.raw_keys.contains(*k) {
                        ck.at_key(
                            &child(ptr, k),
                            E_NOT_APPLICABLE,
                            format!("`{k}` does not apply to {kind_word} step (`{}`)", s.id),
                            sid,
                        );
                    }
                }
            }
        }
        let scope = |field: String| RefScope {
            what: field,
            step: sid,
            group: e.group,
            ancestors: anc,
            loop_var: None,
            allow_self: false,
            allow_steps: true,
            cel_source: None,
        };
        if let Some(a) = &s.approval {
            let ap = child(ptr, "approval");
            if a.approvers.is_empty() {
                ck.at_value(
                    &child(&ap, "approvers"),
                    E_QUORUM,
                    format!(
                        "{} is empty: nobody could approve",
                        what("approval.approvers")
                    ),
                    sid,
                );
            } else if a.min_approvals == 0 {
                ck.at_value(
                    &child(&ap, "min_approvals"),
                    E_QUORUM,
                    format!("{} must be at least 1", what("approval.min_approvals")),
                    sid,
                );
            } else if a.approvers.iter().all(|x| !x.starts_with("role:")) {
                let people: BTreeSet<&str> = a.approvers.iter().map(String::as_str).collect();
                if (a.min_approvals as usize) > people.len() {
                    ck.at_value(
                        &child(&ap, "min_approvals"),
                        E_QUORUM,
                        format!(
                            "{} is {} but only {} approver(s) are listed, so it could never be met",
                            what("approval.min_approvals"),
                            a.min_approvals,
                            people.len()
                        ),
                        sid,
                    );
                }
            }
            if let Some(m) = &a.message {
                let sc = scope(what("approval.message"));
                ck.template(&child(&ap, "message"), m, &sc, self);
            }
        }
        if let Some(t) = &s.task {
            let tp = child(ptr, "task");
            if t.assignees.is_empty() {
                ck.at_value(
                    &child(&tp, "assignees"),
                    E_ASSIGNEES,
                    format!("{} is empty: nobody could do it", what("task.assignees")),
                    sid,
                );
            }
            let sc = scope(what("task.message"));
            ck.template(&child(&tp, "message"), &t.message, &sc, self);
        }
        for (key, text) in [("if", &s.condition), ("for_each", &s.for_each)] {
            if let Some(text) = text {
                let mut sc = scope(what(key));
                sc.cel_source = Some(text);
                ck.cel(&child(ptr, key), text, &sc, self);
            }
        }
    }

    fn action_step(
        &self,
        ck: &mut Checker<'_>,
        e: &Entry,
        s: &Step,
        anc: Ancestors<'_>,
        loop_var: Option<&str>,
    ) {
        let ptr = e.ptr.as_str();
        let sid = Some(s.id.as_str());
        let kind_name = match e.group {
            Group::Main => "step",
            Group::OnFailure => "on_failure step",
        };
        let Some(uses) = &s.uses else { return };
        let decl = self.uses(
            ck,
            &child(ptr, "uses"),
            uses,
            sid,
            E_UNKNOWN_TYPE,
            E_UNKNOWN_ACTION,
        );
        let with_what = |field: &str| format!("`{field}` of {kind_name} `{}`", s.id);
        if let Some((ty, action)) = decl {
            self.with_keys(ck, ptr, uses, action, s.with.as_ref(), sid);
            self.connector(ck, ptr, s.connector.as_ref(), ty, s.optional, sid);
            match uses.as_str() {
                "notify.draft" => self.draft_step(ck, ptr, s),
                "smtp.send_email" => self.send_draft_step(ck, ptr, s, anc),
                _ => {}
            }
        }
        let mut scope = RefScope {
            what: String::new(),
            step: sid,
            group: e.group,
            ancestors: anc,
            loop_var,
            allow_self: false,
            allow_steps: true,
            cel_source: None,
        };
        if let Some(with) = &s.with {
            self.templates_in(
                ck,
                &child(ptr, "with"),
                "with",
                with,
                &mut scope,
                &with_what,
            );
        }
        if let Some(undo) = &s.undo {
            let up = child(ptr, "undo");
            let decl = self.uses(
                ck,
                &child(&up, "uses"),
                &undo.uses,
                sid,
                E_UNKNOWN_UNDO,
                E_UNKNOWN_UNDO,
            );
            if let Some((ty, action)) = decl {
                self.with_keys(ck, &up, &undo.uses, action, undo.with.as_ref(), sid);
                self.connector(ck, &up, undo.connector.as_ref(), ty, s.optional, sid);
            }
            if let Some(with) = &undo.with {
                scope.allow_self = true;
                self.templates_in(
                    ck,
                    &child(&up, "with"),
                    "undo.with",
                    with,
                    &mut scope,
                    &with_what,
                );
            }
        }
    }

    /// `notify.draft` naming a template literally: the template exists, and renders with
    /// any incident facts (every field it reads is in the schema, or in the step's `data`).
    fn draft_step(&self, ck: &mut Checker<'_>, ptr: &str, s: &Step) {
        let Some(templates) = ck.ctx.templates.clone() else {
            return;
        };
        let with = s.with.as_ref();
        let Some(name) = with
            .and_then(|w| w.get("template"))
            .and_then(Value::as_str)
            .filter(|n| !has_template(n))
        else {
            return;
        };
        let tp = child(&child(ptr, "with"), "template");
        let sid = Some(s.id.as_str());
        let t = match templates.load(name) {
            Ok(t) => t,
            Err(e) => {
                let code = if e.message.starts_with("no such template") {
                    E_UNKNOWN_TEMPLATE
                } else {
                    E_TEMPLATE_PROBLEM
                };
                ck.at_value(&tp, code, format!("step `{}`: {e}", s.id), sid);
                return;
            }
        };
        let data = with.and_then(|w| w.get("data"));
        let sample = crate::notify::sample_facts().unwrap_or_default();
        let (facts, shape) = crate::notify::with_data(&sample, data);
        let problems = match templates.render(&t, &facts, &shape) {
            Ok(_) => Vec::new(),
            Err(errs) => errs,
        };
        for p in problems {
            ck.at_value(
                &tp,
                E_TEMPLATE_PROBLEM,
                format!("step `{}`: {p}", s.id),
                sid,
            );
        }
    }

    /// `smtp.send_email` of a stored draft: only after a person approved (an approval step
    /// among the step's ancestors), never a draft meant for an authority, and the subject
    /// and body come from the draft.
    fn send_draft_step(&self, ck: &mut Checker<'_>, ptr: &str, s: &Step, anc: Ancestors<'_>) {
        let Some(with) = s.with.as_ref() else { return };
        let Some(draft) = with.get("draft") else {
            return;
        };
        let wp = child(ptr, "with");
        let dp = child(&wp, "draft");
        let sid = Some(s.id.as_str());
        let approved = self.entries.iter().any(|e| {
            e.step
                .as_ref()
                .is_some_and(|st| anc.contains(&st.id) && st.approval.is_some())
        });
        if !approved {
            ck.at_key(
                &dp,
                E_SEND_UNAPPROVED,
                format!(
                    "step `{}` sends a stored draft, but no approval step is among the steps it needs",
                    s.id
                ),
                sid,
            )
            .hint = Some("add an approval step (e.g. `approve-send`) to its `needs`, directly or through others".into());
        }
        for k in ["subject", "body", "body_markdown"] {
            if with.contains_key(k) {
                ck.at_key(
                    &child(&wp, k),
                    E_SEND_DRAFT_AND_BODY,
                    format!("step `{}` sends a draft, which carries its own subject and body: drop `with.{k}`", s.id),
                    sid,
                );
            }
        }
        // `draft: "{{ steps.X.output.draft_id }}"` where X drafts a literal template: its
        // audience is known now.
        let Some(text) = draft.as_str() else { return };
        let inner = text.trim();
        let Some(path) = inner
            .strip_prefix("{{")
            .and_then(|t| t.strip_suffix("}}"))
            .map(str::trim)
        else {
            return;
        };
        let Some(from) = path
            .strip_prefix("steps.")
            .and_then(|p| p.strip_suffix(".output.draft_id"))
        else {
            return;
        };
        let Some(templates) = ck.ctx.templates.clone() else {
            return;
        };
        let source = self
            .entries
            .iter()
            .filter_map(|e| e.step.as_ref())
            .find(|st| st.id == from && st.uses.as_deref() == Some("notify.draft"));
        let Some(name) = source
            .and_then(|st| st.with.as_ref())
            .and_then(|w| w.get("template"))
            .and_then(Value::as_str)
            .filter(|n| !has_template(n))
        else {
            return;
        };
        if let Ok(t) = templates.load(name) {
            if t.audience == crate::notify::Audience::Authority {
                ck.at_value(
                    &dp,
                    E_SEND_AUTHORITY,
                    format!(
                        "step `{}` would send the draft of `{from}` (template `{name}`, for an authority): {}",
                        s.id,
                        crate::notify::AUTHORITY_REFUSAL
                    ),
                    sid,
                )
                .hint = Some("give counsel the draft (`cordon drafts show`); counsel files it".into());
            }
        }
    }

    /// Check every template string in a `with` tree.
    fn templates_in(
        &self,
        ck: &mut Checker<'_>,
        ptr: &str,
        field: &str,
        with: &Map<String, Value>,
        scope: &mut RefScope<'_>,
        what: &dyn Fn(&str) -> String,
    ) {
        let mut stack: Vec<(String, String, &Value)> = with
            .iter()
            .map(|(k, v)| (child(ptr, k), format!("{field}.{k}"), v))
            .collect();
        stack.reverse();
        while let Some((p, name, v)) = stack.pop() {
            match v {
                Value::String(text) => {
                    scope.what = what(&name);
                    ck.template(&p, text, scope, self);
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate().rev() {
                        stack.push((child(&p, &i.to_string()), format!("{name}[{i}]"), item));
                    }
                }
                Value::Object(m) => {
                    for (k, item) in m.iter().rev() {
                        stack.push((child(&p, k), format!("{name}.{k}"), item));
                    }
                }
                _ => {}
            }
        }
    }

    /// Resolve `uses` in the catalogue, reporting what is wrong.
    fn uses(
        &self,
        ck: &mut Checker<'_>,
        ptr: &str,
        uses: &str,
        sid: Option<&str>,
        type_code: &'static str,
        action_code: &'static str,
    ) -> Option<(&'static TypeDecl, &'static ActionDecl)> {
        let Some((ty_name, action_name)) = uses
            .split_once('.')
            .filter(|(t, a)| !t.is_empty() && !a.is_empty() && !a.contains('.'))
        else {
            ck.at_value(
                ptr,
                E_BAD_USES,
                format!("`uses: {uses}` must be `<connector type>.<action>`, e.g. `http.request`"),
                sid,
            );
            return None;
        };
        let all: Vec<String> = catalog::catalog()
            .iter()
            .flat_map(|t| {
                t.actions
                    .iter()
                    .map(move |a| format!("{}.{}", t.name, a.name))
            })
            .collect();
        let Some(ty) = catalog::find_type(ty_name) else {
            let hint = did_you_mean(uses, all.iter().map(String::as_str))
                .or_else(|| did_you_mean(ty_name, catalog::catalog().iter().map(|t| t.name)));
            ck.at_value(
                ptr,
                type_code,
                format!(
                    "unknown connector type `{ty_name}` in `uses: {uses}` (`cordon connectors list` shows them all)"
                ),
                sid,
            )
            .hint = hint;
            return None;
        };
        let Some(action) = ty.action(action_name) else {
            let own: Vec<String> = ty
                .actions
                .iter()
                .map(|a| format!("{}.{}", ty.name, a.name))
                .collect();
            let hint = did_you_mean(uses, own.iter().map(String::as_str));
            ck.at_value(
                ptr,
                action_code,
                format!(
                    "connector type `{}` has no action `{action_name}` (it has {})",
                    ty.name,
                    own.iter()
                        .map(|a| format!("`{a}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                sid,
            )
            .hint = hint;
            return None;
        };
        Some((ty, action))
    }

    /// `with` keys against the action's declared inputs.
    fn with_keys(
        &self,
        ck: &mut Checker<'_>,
        ptr: &str,
        uses: &str,
        action: &ActionDecl,
        with: Option<&Map<String, Value>>,
        sid: Option<&str>,
    ) {
        let any = action.input("*").is_some();
        let wp = child(ptr, "with");
        let empty = Map::new();
        let with = with.unwrap_or(&empty);
        for (k, v) in with {
            let kp = child(&wp, k);
            match action.input(k) {
                None if any => {}
                None => {
                    let names = action.inputs.iter().map(|f| f.name);
                    let hint = did_you_mean(k, names).or_else(|| {
                        Some(format!(
                            "`{uses}` takes {}",
                            action
                                .inputs
                                .iter()
                                .map(|f| format!("`{}`", f.name))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    });
                    ck.at_key(
                        &kp,
                        E_UNKNOWN_WITH,
                        format!("`with` key `{k}` is not an input of `{uses}`"),
                        sid,
                    )
                    .hint = hint;
                }
                Some(f) => {
                    let templated = v.as_str().is_some_and(has_template);
                    if !templated && !literal_fits(f.ty, v) {
                        ck.at_value(
                            &kp,
                            E_WITH_TYPE,
                            format!(
                                "`with.{k}` of `{uses}` must be {} {}, not {}",
                                if f.ty.starts_with(['a', 'i', 'o']) {
                                    "an"
                                } else {
                                    "a"
                                },
                                f.ty,
                                kind_phrase(v)
                            ),
                            sid,
                        );
                    }
                }
            }
        }
        for f in action.inputs.iter().filter(|f| f.required && f.name != "*") {
            if !with.contains_key(f.name) {
                let at = if with.is_empty() && !ck.written(&wp) {
                    child(ptr, "uses")
                } else {
                    wp.clone()
                };
                ck.at_key(
                    &at,
                    E_MISSING_WITH,
                    format!("`{uses}` needs `with.{}`", f.name),
                    sid,
                );
            }
        }
    }

    /// `connector:` against the configured instances, when they are known.
    fn connector(
        &self,
        ck: &mut Checker<'_>,
        ptr: &str,
        conn: Option<&ConnectorRef>,
        ty: &TypeDecl,
        optional: bool,
        sid: Option<&str>,
    ) {
        let Some(instances) = &ck.ctx.instances else {
            return;
        };
        let instances = instances.clone();
        let cp = child(ptr, "connector");
        match conn {
            Some(c) => {
                let names = c.names();
                let role = cordon_connectors::roles::is_role_type(ty.name);
                if names.len() > 1 && !role {
                    ck.at_value(
                        &cp,
                        E_MANY_INSTANCES,
                        format!(
                            "`connector` lists {} instances, but `{}` actions run on one",
                            names.len(),
                            ty.name
                        ),
                        sid,
                    );
                }
                for (i, name) in names.iter().enumerate() {
                    let vp = match c {
                        ConnectorRef::One(_) => cp.clone(),
                        ConnectorRef::Many(_) => child(&cp, &i.to_string()),
                    };
                    match instances.get(*name) {
                        None => {
                            let same: Vec<&str> = instances
                                .iter()
                                .filter(|(_, t)| *t == ty.name)
                                .map(|(n, _)| n.as_str())
                                .collect();
                            let hint = did_you_mean(name, instances.keys().map(String::as_str))
                                .or_else(|| match same.as_slice() {
                                    [] => None,
                                    list => Some(format!(
                                        "configured `{}` instances: {}",
                                        ty.name,
                                        list.iter()
                                            .map(|n| format!("`{n}`"))
                                            .collect::<Vec<_>>()
                                            .join(", ")
                                    )),
                                });
                            ck.at_value(
                                &vp,
                                E_NO_INSTANCE_NAMED,
                                format!("no connector instance named `{name}` is configured"),
                                sid,
                            )
                            .hint = hint;
                        }
                        Some(t)
                            if t != ty.name
                                && !(role
                                    && cordon_connectors::roles::role_type_accepts(ty.name, t)) =>
                        {
                            ck.at_value(
                                &vp,
                                E_INSTANCE_TYPE,
                                format!("connector instance `{name}` is of type `{t}`, but the action is `{}`", ty.name),
                                sid,
                            );
                        }
                        Some(_) => {}
                    }
                }
            }
            None if ty.needs_instance => {
                let of_type: Vec<&str> = instances
                    .iter()
                    .filter(|(_, t)| *t == ty.name)
                    .map(|(n, _)| n.as_str())
                    .collect();
                let up = child(ptr, "uses");
                match of_type.len() {
                    0 if !optional => {
                        ck.at_value(
                            &up,
                            E_NOT_CONFIGURED,
                            format!("no connector instance of type `{}` is configured", ty.name),
                            sid,
                        )
                        .hint = Some(format!(
                            "configure a `{}` connector, or mark the step `optional: true`",
                            ty.name
                        ));
                    }
                    0 | 1 => {}
                    _ => {
                        ck.at_value(
                            &up,
                            E_AMBIGUOUS_INSTANCE,
                            format!(
                                "several `{}` instances are configured ({}); say which with `connector:`",
                                ty.name,
                                of_type
                                    .iter()
                                    .map(|n| format!("`{n}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                            sid,
                        );
                    }
                }
            }
            None => {}
        }
    }
}

/// Whether a literal (non-template) `with` value fits a declared connector input type.
fn literal_fits(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => true,
    }
}

/// The shortest cycle through `start`, as the list of steps from `start` (following
/// `needs`) back to just before `start`.
fn shortest_cycle<'a>(
    start: &'a str,
    edges: &BTreeMap<&'a str, Vec<&'a str>>,
) -> Option<Vec<&'a str>> {
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    let mut seen: BTreeSet<&str> = BTreeSet::from([start]);
    while let Some(n) = queue.pop_front() {
        for &m in edges.get(n).map(Vec::as_slice).unwrap_or_default() {
            if m == start {
                let mut path = vec![n];
                let mut cur = n;
                while cur != start {
                    cur = prev.get(cur)?;
                    path.push(cur);
                }
                path.reverse();
                return Some(path);
            }
            if seen.insert(m) {
                prev.insert(m, n);
                queue.push_back(m);
            }
        }
    }
    None
}

impl Checker<'_> {
    /// Whether the location reader saw a node at `ptr`.
    fn written(&self, ptr: &str) -> bool {
        self.spans.contains(ptr)
    }
}

/// The field tables, for the test that keeps them in step with the model's JSON Schema.
#[cfg(test)]
pub(crate) fn shape_tables() -> Vec<(&'static str, Vec<&'static str>)> {
    let names = |fs: &[F]| fs.iter().map(|f| f.name).collect::<Vec<_>>();
    vec![
        ("Runbook", names(RUNBOOK_FIELDS)),
        ("InputSpec", names(INPUT_FIELDS)),
        ("Step", names(STEP_FIELDS)),
        ("RetrySpec", names(RETRY_FIELDS)),
        ("UndoSpec", names(UNDO_FIELDS)),
        ("ApprovalSpec", names(APPROVAL_FIELDS)),
        ("TaskSpec", names(TASK_FIELDS)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbook::schema::tests::EXAMPLE;

    fn run(src: &str) -> Result<ValidatedRunbook, Vec<Diagnostic>> {
        validate(src, "rb.yaml", &ValidationContext::default())
    }

    fn errors(src: &str) -> Vec<String> {
        match run(src) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(ToString::to_string).collect(),
        }
    }

    fn with_instances(src: &str, inst: &[(&str, &str)]) -> Vec<String> {
        let ctx = ValidationContext {
            instances: Some(
                inst.iter()
                    .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                    .collect(),
            ),
            ..ValidationContext::default()
        };
        match validate(src, "rb.yaml", &ctx) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn draft_templates_are_checked_against_the_facts_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("brief.md.hbs"),
            "---\nsubject: Brief\naudience: internal\n---\n# Brief\n\n{{case.id}} {{case.orgnisation.name}}\n{{field_office}}\n",
        )
        .expect("write");
        let ctx = ValidationContext {
            templates: Some(crate::notify::DraftTemplates::new(Some(
                dir.path().to_path_buf(),
            ))),
            ..ValidationContext::default()
        };
        let src = "version: 1\nname: t\nsteps:\n  - id: brief\n    uses: notify.draft\n    with:\n      template: brief\n      data: { field_office: Phoenix }\n";
        let errs: Vec<String> = match validate(src, "rb.yaml", &ctx) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(ToString::to_string).collect(),
        };
        let file = dir.path().join("brief.md.hbs").display().to_string();
        assert_eq!(
            errs,
            vec![format!("rb.yaml:7:17: step `brief`: template `brief` ({file}:7:13): field `case.orgnisation` is not in the incident-facts schema; did you mean `organisation`? [E191]")]
        );
        // Without templates in the context (a stored runbook at resume) nothing is checked.
        assert!(run(src).is_ok());
    }

    #[test]
    fn example_validates_with_order_hash_and_ancestors() {
        let v = run(EXAMPLE).unwrap_or_else(|d| panic!("{d:#?}"));
        assert_eq!(v.runbook.name, "example-containment");
        assert_eq!(v.text, EXAMPLE);
        assert_eq!(v.sha256, hex::encode(Sha256::digest(EXAMPLE.as_bytes())));
        assert_eq!(v.sha256.len(), 64);
        assert_eq!(
            v.order,
            vec![
                "snapshot-idp-logs",
                "suspend-account",
                "contain-devices",
                "approve-legal",
                "payment-hold",
                "draft-fbi-referral"
            ]
        );
        assert_eq!(
            v.ancestors("draft-fbi-referral"),
            [
                "approve-legal",
                "contain-devices",
                "snapshot-idp-logs",
                "suspend-account"
            ]
            .into_iter()
            .map(String::from)
            .collect()
        );
        assert!(v.ancestors("snapshot-idp-logs").is_empty());
        assert!(v.step("page-oncall").is_some());
        assert_eq!(v.on_failure_order(), vec!["page-oncall"]);
    }

    #[test]
    fn order_follows_needs_not_file_order() {
        let src = "version: 1\nname: t\nsteps:\n  - { id: c, uses: core.noop, needs: [b] }\n  - { id: a, uses: core.noop }\n  - { id: b, uses: core.noop, needs: [a] }\n";
        let v = run(src).unwrap_or_else(|d| panic!("{d:#?}"));
        assert_eq!(v.order, vec!["a", "b", "c"]);
    }

    #[test]
    fn typo_in_key_points_at_key_with_hint() {
        let src = "version: 1\nname: t\nsteps:\n  - id: a\n    uses: core.noop\n  - id: b\n    neds: [a]\n    uses: core.noop\n";
        assert_eq!(
            errors(src),
            vec!["rb.yaml:7:5: unknown key `neds` in step `b` [E103]; did you mean `needs`?"]
        );
    }

    #[test]
    fn reading_a_step_outside_needs_is_a_race() {
        let src = "version: 1\nname: t\nsteps:\n  - id: find\n    uses: core.noop\n  - id: use\n    uses: core.noop\n    with: { x: \"{{ steps.find.output.id }}\" }\n";
        let e = errors(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with("rb.yaml:8:16: "), "{}", e[0]);
        assert!(e[0].contains("[E151]"), "{}", e[0]);
        assert!(e[0].ends_with("add `find` to `needs`"), "{}", e[0]);
        // Transitive needs are fine.
        let ok = "version: 1\nname: t\nsteps:\n  - { id: find, uses: core.noop }\n  - { id: mid, uses: core.noop, needs: [find] }\n  - id: use\n    needs: [mid]\n    uses: core.noop\n    if: steps.find.output.found\n    with: { x: \"{{ steps.find.output.id }}\" }\n";
        assert_eq!(errors(ok), Vec::<String>::new());
    }

    #[test]
    fn cycle_names_steps_in_order() {
        let src = "version: 1\nname: t\nsteps:\n  - { id: a, uses: core.noop, needs: [c] }\n  - { id: b, uses: core.noop, needs: [a] }\n  - { id: c, uses: core.noop, needs: [b] }\n";
        let e = errors(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("`a` → `c` → `b` → `a`"), "{}", e[0]);
    }

    #[test]
    fn instances_checked_when_known() {
        let src = "version: 1\nname: t\nsteps:\n  - id: a\n    uses: http.request\n    connector: api-prod\n    with: { method: GET, url: \"https://x\" }\n";
        assert_eq!(errors(src), Vec::<String>::new());
        assert_eq!(
            with_instances(src, &[("api-prod", "http")]),
            Vec::<String>::new()
        );
        let e = with_instances(src, &[("api-prd", "http")]);
        assert_eq!(
            e,
            vec!["rb.yaml:6:16: no connector instance named `api-prod` is configured [E170]; did you mean `api-prd`?"]
        );
        let e = with_instances(src, &[("api-prod", "core")]);
        assert!(e[0].contains("[E171]"), "{e:?}");
    }

    #[test]
    fn run_error_only_in_on_failure() {
        let src = "version: 1\nname: t\nsteps:\n  - id: a\n    uses: core.noop\n    with: { e: \"{{ run.error }}\" }\non_failure:\n  - id: b\n    uses: core.noop\n    with: { e: \"{{ run.error }} {{ steps.a.status }}\" }\n";
        let e = errors(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].contains("[E154]") && e[0].starts_with("rb.yaml:6:"),
            "{e:?}"
        );
    }

    #[test]
    fn loop_variable_only_with_for_each() {
        let src = "version: 1\nname: t\ninputs: { l: { type: array } }\nsteps:\n  - id: a\n    for_each: inputs.l\n    as: dev\n    uses: core.noop\n    with: { d: \"{{ dev }}\" }\n  - id: b\n    uses: core.noop\n    with: { d: \"{{ dev }}\" }\n";
        let e = errors(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].contains("[E155]") && e[0].starts_with("rb.yaml:12:"),
            "{e:?}"
        );
    }

    #[test]
    fn unreadable_file_is_a_diagnostic() {
        let d = validate_file(
            Path::new("/nonexistent/rb.yaml"),
            &ValidationContext::default(),
        )
        .unwrap_err();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].line, d[0].column, d[0].code), (1, 1, "E002"));
    }
}
