//! Handlebars templates: rendering with typed single-variable values, helpers, and the
//! static analysis ([`template_refs`]) the validator needs.
//!
//! Rendering is strict (a missing variable is an error naming it, never an empty string)
//! and never HTML-escapes: runbook values go to APIs and drafts are Markdown/text; the
//! review UI escapes on display.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use handlebars::template::{Parameter, TemplateElement};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, JsonRender, JsonTruthy, Path, PathSeg, RenderContext,
    RenderError, RenderErrorReason, Renderable, ScopedJson, StringOutput, Template, TemplateError,
    TemplateErrorReason,
};
use serde_json::Value;

use super::ExprError;

/// Where `now` and `ago` read the time; inject a fixed clock in tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Helpers our registry knows: Handlebars' built-ins plus ours. [`template_refs`] needs the
/// list to tell `{{ now }}` (a helper) from `{{ serial }}` (a variable).
const HELPERS: &[&str] = &[
    // built-in
    "if", "unless", "each", "with", "lookup", "raw", "log", "gt", "gte", "lt", "lte", "len",
    // ours (eq, ne, and, or, not replace the built-ins so that errors name the variable)
    "ago", "now", "json", "default", "lower", "upper", "join", "eq", "ne", "and", "or", "not",
];

/// Block helpers that change the context: paths inside them are relative to an element.
const CONTEXT_HELPERS: &[&str] = &["each", "with"];

/// Bound on the compiled-template cache; past it the cache starts over (runbooks have a few
/// hundred templates at most, so this only guards against unbounded growth).
const CACHE_LIMIT: usize = 4096;

/// Deepest nesting of sub-expressions or blocks we compile. The parser and renderer recurse,
/// so an adversarial template could otherwise exhaust the stack; real ones nest a few levels.
const MAX_NESTING: usize = 32;

/// Compile a template, refusing pathological nesting first.
fn compile(template: &str) -> Result<Template, ExprError> {
    let (mut parens, mut blocks, mut deepest) = (0usize, 0usize, 0usize);
    let bytes = template.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'(' => parens += 1,
            b')' => parens = parens.saturating_sub(1),
            b'{' if bytes.get(i + 1) == Some(&b'{') => match bytes.get(i + 2) {
                Some(b'#') => blocks += 1,
                Some(b'/') => blocks = blocks.saturating_sub(1),
                _ => {}
            },
            _ => {}
        }
        deepest = deepest.max(parens).max(blocks);
    }
    if deepest > MAX_NESTING {
        return Err(ExprError::Syntax {
            message: format!("the template nests more than {MAX_NESTING} levels deep"),
            line: None,
            column: None,
        });
    }
    Template::compile(template).map_err(syntax_error)
}

fn is_helper(name: &str) -> bool {
    HELPERS.contains(&name)
}

/// The name Handlebars looks up as a helper: `{{ now }}` parses as a path, yet calls `now`.
fn helper_name(p: &Parameter) -> Option<&str> {
    p.as_name().filter(|n| is_helper(n))
}

/// A compiled template: either a typed single-variable lookup or a Handlebars template.
enum Compiled {
    /// The whole string is `{{ a.b.c }}`: the value keeps its JSON type.
    Path(Vec<String>),
    Template(Template),
}

struct Inner {
    hbs: Handlebars<'static>,
    cache: Mutex<HashMap<String, Arc<Compiled>>>,
}

/// The template engine: a strict Handlebars registry with the runbook helpers and a cache
/// of compiled templates. Cheap to clone (an `Arc`), `Send + Sync`.
#[derive(Clone)]
pub struct Templates {
    inner: Arc<Inner>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// Templates whose `now`/`ago` read the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(Utc::now))
    }

    /// Templates whose `now`/`ago` read `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        let mut hbs = Handlebars::new();
        hbs.set_strict_mode(true);
        hbs.register_escape_fn(handlebars::no_escape);
        hbs.register_helper(
            "now",
            Box::new(ClockHelper {
                clock: clock.clone(),
                ago: false,
            }),
        );
        hbs.register_helper("ago", Box::new(ClockHelper { clock, ago: true }));
        register_value_helpers(&mut hbs);
        Templates {
            inner: Arc::new(Inner {
                hbs,
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Render one template string. Exactly one `{{ path }}` returns the value at that path
    /// with its JSON type; anything else renders to a string; a string without `{{` comes
    /// back unchanged.
    pub fn render_str(&self, template: &str, ctx: &Value) -> Result<Value, ExprError> {
        let mut hctx = None;
        self.render_with(template, ctx, &mut hctx)
    }

    /// Render every string in a JSON tree (map keys stay as they are).
    pub fn render_value(&self, v: &Value, ctx: &Value) -> Result<Value, ExprError> {
        // One Handlebars context per tree: building it copies `ctx`.
        let mut hctx = None;
        self.render_tree(v, ctx, &mut hctx)
    }

    fn render_tree(
        &self,
        v: &Value,
        ctx: &Value,
        hctx: &mut Option<Context>,
    ) -> Result<Value, ExprError> {
        Ok(match v {
            Value::String(s) => self.render_with(s, ctx, hctx)?,
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.render_tree(i, ctx, hctx))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => {
                let mut out = serde_json::Map::with_capacity(map.len());
                for (k, v) in map {
                    out.insert(k.clone(), self.render_tree(v, ctx, hctx)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }

    fn render_with(
        &self,
        template: &str,
        ctx: &Value,
        hctx: &mut Option<Context>,
    ) -> Result<Value, ExprError> {
        if !template.contains("{{") {
            return Ok(Value::String(template.to_owned()));
        }
        let compiled = self.compiled(template)?;
        match &*compiled {
            Compiled::Path(segs) => {
                lookup(ctx, segs)
                    .cloned()
                    .ok_or_else(|| ExprError::Undefined {
                        variable: segs.join("."),
                    })
            }
            Compiled::Template(t) => {
                let hctx = hctx.get_or_insert_with(|| Context::from(ctx.clone()));
                let mut rc = RenderContext::new(None);
                let mut out = StringOutput::new();
                t.render(&self.inner.hbs, hctx, &mut rc, &mut out)
                    .map_err(render_error)?;
                let s = out.into_string().map_err(|e| ExprError::Render {
                    message: e.to_string(),
                })?;
                Ok(Value::String(s))
            }
        }
    }

    fn compiled(&self, template: &str) -> Result<Arc<Compiled>, ExprError> {
        if let Ok(cache) = self.inner.cache.lock() {
            if let Some(c) = cache.get(template) {
                return Ok(c.clone());
            }
        }
        let t = compile(template)?;
        let compiled = Arc::new(match single_path(&t) {
            Some(segs) => Compiled::Path(segs),
            None => Compiled::Template(t),
        });
        // A poisoned cache only costs recompilation, never a wrong answer.
        if let Ok(mut cache) = self.inner.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(template.to_owned(), compiled.clone());
        }
        Ok(compiled)
    }
}

/// The path segments when the template is exactly one `{{ plain.path }}`.
fn single_path(t: &Template) -> Option<Vec<String>> {
    let [el] = t.elements.as_slice() else {
        return None;
    };
    let ht = match el {
        TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => ht,
        _ => return None,
    };
    if !ht.params.is_empty() || !ht.hash.is_empty() || ht.block {
        return None;
    }
    if helper_name(&ht.name).is_some() {
        return None;
    }
    match &ht.name {
        Parameter::Name(n) => Some(vec![n.clone()]),
        Parameter::Path(Path::Relative((segs, _))) if !segs.is_empty() => segs
            .iter()
            .map(|s| match s {
                PathSeg::Named(n) => Some(n.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The value at `segs` (object keys, or array indexes) in `v`.
fn lookup<'a>(mut v: &'a Value, segs: &[String]) -> Option<&'a Value> {
    for s in segs {
        v = match v {
            Value::Object(m) => m.get(s)?,
            Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn syntax_error(e: TemplateError) -> ExprError {
    let (line, column) = match e.pos() {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    };
    let message = match e.reason() {
        // The grammar's own message lists parser rules ("expected escape, expression,
        // html_expression, …"), which means nothing to a runbook author.
        TemplateErrorReason::InvalidSyntax(_) => "invalid template syntax: check that every `{{` is closed by `}}` and every `{{#helper}}` by `{{/helper}}`".to_owned(),
        other => other.to_string(),
    };
    ExprError::Syntax {
        message,
        line,
        column,
    }
}

fn render_error(e: RenderError) -> ExprError {
    match e.reason() {
        RenderErrorReason::MissingVariable(var) => ExprError::Undefined {
            variable: var.clone().unwrap_or_else(|| "(unnamed)".to_owned()),
        },
        RenderErrorReason::HelperNotFound(name) => ExprError::UnknownHelper { name: name.clone() },
        RenderErrorReason::TemplateError(t) => ExprError::Syntax {
            message: t.reason().to_string(),
            line: t.pos().map(|p| p.0),
            column: t.pos().map(|p| p.1),
        },
        RenderErrorReason::Other(message) => ExprError::Render {
            message: message.clone(),
        },
        other => ExprError::Render {
            message: other.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// The helpers that compute a value from their parameters (`json`, `default`, `lower`,
/// `upper`, `join`, `eq`, `ne`, `and`, `or`, `not`); notification templates use them too.
pub(crate) fn register_value_helpers(hbs: &mut Handlebars<'_>) {
    let fns: [(&str, HelperFn); 10] = [
        ("json", json_helper),
        ("default", default_helper),
        ("lower", lower_helper),
        ("upper", upper_helper),
        ("join", join_helper),
        ("eq", eq_helper),
        ("ne", ne_helper),
        ("and", and_helper),
        ("or", or_helper),
        ("not", not_helper),
    ];
    for (name, f) in fns {
        hbs.register_helper(name, Box::new(FnHelper { f }));
    }
}

type HelperFn = fn(&Helper<'_>) -> Result<Value, RenderError>;

/// A helper that computes a value from its parameters (usable as a sub-expression).
struct FnHelper {
    f: HelperFn,
}

impl HelperDef for FnHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        (self.f)(h).map(ScopedJson::Derived)
    }
}

struct ClockHelper {
    clock: Clock,
    ago: bool,
}

impl HelperDef for ClockHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let now = (self.clock)();
        let t = if self.ago {
            let d = param(h, 0, "ago")?;
            let text = d
                .as_str()
                .ok_or_else(|| other("`ago` takes a duration such as '90d'"))?;
            let dur = crate::duration::parse(text).map_err(|e| other(format!("`ago`: {e}")))?;
            let dur = chrono::Duration::from_std(dur)
                .map_err(|_| other(format!("`ago`: `{text}` is too large")))?;
            now.checked_sub_signed(dur)
                .ok_or_else(|| other(format!("`ago`: `{text}` is too large")))?
        } else {
            now
        };
        Ok(ScopedJson::Derived(Value::String(crate::time::format(t))))
    }
}

fn other(msg: impl Into<String>) -> RenderError {
    RenderErrorReason::Other(msg.into()).into()
}

/// Parameter `idx`; a missing variable is an error naming it (strict mode).
fn param<'a>(h: &'a Helper<'_>, idx: usize, helper: &str) -> Result<&'a Value, RenderError> {
    match h.param(idx) {
        None => Err(other(format!(
            "`{helper}` needs a parameter at position {}",
            idx + 1
        ))),
        Some(p) if p.is_value_missing() => Err(RenderError::strict_error(p.relative_path())),
        Some(p) => Ok(p.value()),
    }
}

fn all_params<'a>(h: &'a Helper<'_>, helper: &str) -> Result<Vec<&'a Value>, RenderError> {
    (0..h.params().len()).map(|i| param(h, i, helper)).collect()
}

fn json_helper(h: &Helper<'_>) -> Result<Value, RenderError> {
    let v = param(h, 0, "json")?;
    serde_json::to_string(v)
        .map(Value::String)
        .map_err(|e| other(format!("`json`: {e}")))
}

/// `default x fallback`: x unless it is missing or null. Missing is allowed here, strict
/// mode notwithstanding: that is the helper's purpose.
fn default_helper(h: &Helper<'_>) -> Result<Value, RenderError> {
    let fallback = param(h, 1, "default")?;
    match h.param(0) {
        Some(p) if !p.is_value_missing() && !p.value().is_null() => Ok(p.value().clone()),
        _ => Ok(fallback.clone()),
    }
}

fn lower_helper(h: &Helper<'_>) -> Result<Value, RenderError> {
    Ok(Value::String(param(h, 0, "lower")?.render().to_lowercase()))
}

fn upper_helper(h: &Helper<'_>) -> Result<Value, RenderError> {
    Ok(Value::String(param(h, 0, "upper")?.render().to_uppercase()))
}

fn join_helper(h: &Helper<'_>) -> Result<Value, RenderError> {
    let list = param(h, 0, "join")?;
    let sep = match h.param(1) {
        Some(_) => param(h, 1, "join")?.render(),
        None => ", ".to_owned(),
    };
    let items = list
        .as_array()
        .ok_or_else(|| other("`join` takes a list as its first parameter"))?;
    let parts: Vec<String> = items
        .iter()
        .map(|i| match i {
            Value::String(s) => s.clone(),
            Value::Array(_) | Value::Object(_) => i.to_string(),
            other => other.render(),
        })
        .collect();
    Ok(Value::String(parts.join(&sep)))
}

/// JSON equality, except that numbers compare by value (`1` equals `1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        _ => a == b,
    }
}

fn eq_helper(h: &Helper<'_>) -> Result<Value, RenderError> {
    Ok(Value::Bool(json_eq(param(h, 0, "eq")?, param(h, 1, "eq")?)))
}

fn ne_helper(h: &Helper<'_>) -> Result<Value, RenderError> {
    Ok(Value::Bool(!json_eq(
        param(h, 0, "ne")?,
        param(h, 1, "ne")?,
    )))
}

fn and_helper(h: &Helper<'_>) -> Result<Value, RenderError> {
    let ps = all_params(h, "and")?;
    if ps.is_empty() {
        return Err(other("`and` needs at least one parameter"));
    }
    Ok(Value::Bool(ps.iter().all(|v| v.is_truthy(false))))
}

fn or_helper(h: &Helper<'_>) -> Result<Value, RenderError> {
    let ps = all_params(h, "or")?;
    if ps.is_empty() {
        return Err(other("`or` needs at least one parameter"));
    }
    Ok(Value::Bool(ps.iter().any(|v| v.is_truthy(false))))
}

fn not_helper(h: &Helper<'_>) -> Result<Value, RenderError> {
    Ok(Value::Bool(!param(h, 0, "not")?.is_truthy(false)))
}

// ---------------------------------------------------------------------------------------
// Static analysis

/// The variable paths a template reads (`inputs.x`, `steps.find.output.id`, `serial`), in
/// order of first appearance, including inside helper calls, sub-expressions and block
/// helpers. Paths inside `{{#each}}`/`{{#with}}` that are relative to the element, block
/// parameters and `@index`-style locals are not variables of the context and are left out.
pub fn template_refs(template: &str) -> Result<Vec<String>, ExprError> {
    if !template.contains("{{") {
        return Ok(Vec::new());
    }
    let t = compile(template)?;
    let mut out = Vec::new();
    let scope = Scope {
        depth: 0,
        block_params: Vec::new(),
    };
    walk_template(&t, &scope, &mut out)?;
    Ok(out)
}

#[derive(Clone)]
struct Scope {
    /// How many context-changing blocks (`each`, `with`) enclose this point.
    depth: usize,
    block_params: Vec<String>,
}

fn walk_template(t: &Template, scope: &Scope, out: &mut Vec<String>) -> Result<(), ExprError> {
    for el in &t.elements {
        match el {
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
            TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                walk_call(&ht.name, &ht.params, ht.hash.values(), scope, out)?;
            }
            TemplateElement::HelperBlock(ht) => {
                let Some(name) = helper_name(&ht.name) else {
                    return Err(ExprError::UnknownHelper {
                        name: name_of(&ht.name),
                    });
                };
                walk_params(&ht.params, ht.hash.values(), scope, out)?;
                let mut inner = scope.clone();
                if CONTEXT_HELPERS.contains(&name) {
                    inner.depth += 1;
                }
                if let Some(bp) = &ht.block_param {
                    inner.block_params.extend(block_param_names(bp));
                }
                if let Some(body) = &ht.template {
                    walk_template(body, &inner, out)?;
                }
                if let Some(inv) = &ht.inverse {
                    walk_template(inv, scope, out)?;
                }
            }
            TemplateElement::DecoratorExpression(_)
            | TemplateElement::DecoratorBlock(_)
            | TemplateElement::PartialExpression(_)
            | TemplateElement::PartialBlock(_)
            | _ => {
                return Err(ExprError::Syntax {
                    message: "partials and decorators are not supported in runbook templates"
                        .to_owned(),
                    line: None,
                    column: None,
                })
            }
        }
    }
    Ok(())
}

fn block_param_names(bp: &handlebars::template::BlockParam) -> Vec<String> {
    use handlebars::template::BlockParam;
    let mut names = Vec::new();
    let mut push = |p: &Parameter| {
        if let Some(n) = p.as_name() {
            names.push(n.to_owned());
        }
    };
    match bp {
        BlockParam::Single(p) => push(p),
        BlockParam::Pair((a, b)) => {
            push(a);
            push(b);
        }
        _ => {}
    }
    names
}

fn name_of(p: &Parameter) -> String {
    p.as_name().map(str::to_owned).unwrap_or_default()
}

/// An expression `{{ name params… }}`: a helper call, or (without params) a variable.
fn walk_call<'a>(
    name: &'a Parameter,
    params: &'a [Parameter],
    hash: impl Iterator<Item = &'a Parameter>,
    scope: &Scope,
    out: &mut Vec<String>,
) -> Result<(), ExprError> {
    let mut hash = hash.peekable();
    let has_args = !params.is_empty() || hash.peek().is_some();
    if helper_name(name).is_some() {
        return walk_params(params, hash, scope, out);
    }
    match name {
        Parameter::Name(_) | Parameter::Path(_) if has_args => Err(ExprError::UnknownHelper {
            name: name_of(name),
        }),
        Parameter::Name(n) => {
            push_ref(std::slice::from_ref(n), 0, scope, out);
            Ok(())
        }
        Parameter::Path(p) => {
            path_ref(p, scope, out);
            Ok(())
        }
        Parameter::Subexpression(s) => walk_subexpr(s, scope, out),
        _ => Ok(()),
    }
}

fn walk_params<'a>(
    params: &'a [Parameter],
    hash: impl Iterator<Item = &'a Parameter>,
    scope: &Scope,
    out: &mut Vec<String>,
) -> Result<(), ExprError> {
    for p in params.iter().chain(hash) {
        match p {
            Parameter::Name(n) => push_ref(std::slice::from_ref(n), 0, scope, out),
            Parameter::Path(path) => path_ref(path, scope, out),
            Parameter::Subexpression(s) => walk_subexpr(s, scope, out)?,
            _ => {}
        }
    }
    Ok(())
}

fn walk_subexpr(
    s: &handlebars::template::Subexpression,
    scope: &Scope,
    out: &mut Vec<String>,
) -> Result<(), ExprError> {
    match &*s.element {
        TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
            walk_call(&ht.name, &ht.params, ht.hash.values(), scope, out)
        }
        _ => Ok(()),
    }
}

fn path_ref(p: &Path, scope: &Scope, out: &mut Vec<String>) {
    let Path::Relative((segs, raw)) = p else {
        // `@index`, `@key`, …: locals of a block, not context variables.
        return;
    };
    let rooted = raw.starts_with("@root");
    let ups = segs
        .iter()
        .filter(|s| !matches!(s, PathSeg::Named(_)))
        .count()
        .saturating_sub(usize::from(rooted));
    let named: Vec<String> = segs
        .iter()
        .filter_map(|s| match s {
            PathSeg::Named(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    let depth_up = if rooted { usize::MAX } else { ups };
    push_ref(&named, depth_up, scope, out);
}

/// Record `segs` when it names a context variable at the top level.
fn push_ref(segs: &[String], ups: usize, scope: &Scope, out: &mut Vec<String>) {
    let Some(first) = segs.first() else {
        return; // `{{ this }}`
    };
    if ups < scope.depth {
        return; // relative to an `each`/`with` element
    }
    if ups == 0 && scope.block_params.iter().any(|b| b == first) {
        return;
    }
    let path = segs.join(".");
    if !out.contains(&path) {
        out.push(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn fixed() -> Templates {
        let t = Utc
            .with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
            .single()
            .expect("valid date");
        Templates::with_clock(Arc::new(move || t))
    }

    fn ctx() -> Value {
        json!({
            "inputs": {
                "subject_email": "Mallory@Example.com",
                "device_serials": ["C02A", "C02B"],
                "confidence": 0.8,
                "count": 3,
                "empty": null,
            },
            "steps": {"find": {"status": "succeeded", "output": {"id": "00u1", "found": true}},
                      "snap-logs": {"output": {"sha256": "abc"}}},
            "run": {"id": "r1", "runbook": "rb"},
            "serial": "C02A",
        })
    }

    #[test]
    fn single_path_keeps_type() {
        let t = fixed();
        let c = ctx();
        assert_eq!(
            t.render_str("{{ inputs.device_serials }}", &c),
            Ok(json!(["C02A", "C02B"]))
        );
        assert_eq!(t.render_str("{{inputs.count}}", &c), Ok(json!(3)));
        assert_eq!(t.render_str("{{ inputs.confidence }}", &c), Ok(json!(0.8)));
        assert_eq!(
            t.render_str("{{ steps.find.output }}", &c),
            Ok(json!({"id": "00u1", "found": true}))
        );
        assert_eq!(t.render_str("{{ serial }}", &c), Ok(json!("C02A")));
        assert_eq!(
            t.render_str("{{ inputs.device_serials.1 }}", &c),
            Ok(json!("C02B"))
        );
        assert_eq!(
            t.render_str("{{ steps.snap-logs.output.sha256 }}", &c),
            Ok(json!("abc"))
        );
        assert_eq!(t.render_str("{{ inputs.empty }}", &c), Ok(Value::Null));
    }

    #[test]
    fn missing_variable_is_named() {
        let t = fixed();
        let c = ctx();
        let e = t.render_str("{{ inputs.subjet_email }}", &c).unwrap_err();
        assert_eq!(
            e.to_string(),
            "variable `inputs.subjet_email` is not defined"
        );
        let e = t
            .render_str("user {{ inputs.subjet_email }}!", &c)
            .unwrap_err();
        assert_eq!(
            e,
            ExprError::Undefined {
                variable: "inputs.subjet_email".into()
            }
        );
        let e = t.render_str("{{ lower inputs.nope }}", &c).unwrap_err();
        assert_eq!(
            e,
            ExprError::Undefined {
                variable: "inputs.nope".into()
            }
        );
    }

    #[test]
    fn strings_render_without_escaping() {
        let t = fixed();
        let c = ctx();
        assert_eq!(t.render_str("plain <b>&", &c), Ok(json!("plain <b>&")));
        assert_eq!(
            t.render_str("to <{{ inputs.subject_email }}> & co", &c),
            Ok(json!("to <Mallory@Example.com> & co"))
        );
        assert_eq!(t.render_str("n={{ inputs.count }}", &c), Ok(json!("n=3")));
    }

    #[test]
    fn helpers() {
        let t = fixed();
        let c = ctx();
        let r = |s: &str| t.render_str(s, &c);
        assert_eq!(r("{{ ago '90d' }}"), Ok(json!("2024-02-01T12:00:00.000Z")));
        assert_eq!(r("{{ now }}"), Ok(json!("2024-05-01T12:00:00.000Z")));
        assert_eq!(
            r("{{ json inputs.device_serials }}"),
            Ok(json!("[\"C02A\",\"C02B\"]"))
        );
        assert_eq!(r("{{ default inputs.missing 'none' }}"), Ok(json!("none")));
        assert_eq!(
            r("{{ default steps.nope.output.x 'none' }}"),
            Ok(json!("none"))
        );
        assert_eq!(r("{{ default inputs.empty 'none' }}"), Ok(json!("none")));
        assert_eq!(r("{{ default inputs.count 'none' }}"), Ok(json!("3")));
        assert_eq!(
            r("{{ lower inputs.subject_email }}"),
            Ok(json!("mallory@example.com"))
        );
        assert_eq!(r("{{ upper serial }}"), Ok(json!("C02A")));
        assert_eq!(
            r("{{ join inputs.device_serials ', ' }}"),
            Ok(json!("C02A, C02B"))
        );
        assert_eq!(
            r("{{#if (eq inputs.count 3)}}yes{{else}}no{{/if}}"),
            Ok(json!("yes"))
        );
        assert_eq!(
            r("{{#if (ne inputs.count 3)}}yes{{else}}no{{/if}}"),
            Ok(json!("no"))
        );
        assert_eq!(
            r("{{#if (and steps.find.output.found (not inputs.empty))}}y{{/if}}"),
            Ok(json!("y"))
        );
        assert_eq!(
            r("{{#if (or inputs.empty false)}}y{{else}}n{{/if}}"),
            Ok(json!("n"))
        );
        assert_eq!(r("{{#if inputs.missing}}y{{else}}n{{/if}}"), Ok(json!("n")));
        assert_eq!(
            r("{{#each inputs.device_serials}}[{{@index}}:{{this}}]{{/each}}"),
            Ok(json!("[0:C02A][1:C02B]"))
        );
        assert!(matches!(
            r("{{ ago '90x' }}"),
            Err(ExprError::Render { .. })
        ));
        assert!(matches!(
            r("{{ join inputs.count }}"),
            Err(ExprError::Render { .. })
        ));
        assert_eq!(
            r("{{ frobnicate inputs.count }}"),
            Err(ExprError::UnknownHelper {
                name: "frobnicate".into()
            })
        );
    }

    #[test]
    fn render_value_walks_the_tree() {
        let t = fixed();
        let c = ctx();
        let v = json!({"user": "{{ inputs.subject_email }}", "{{ keep }}": [1, "{{ inputs.count }}", {"s": "x{{serial}}"}], "n": null});
        assert_eq!(
            t.render_value(&v, &c),
            Ok(
                json!({"user": "Mallory@Example.com", "{{ keep }}": [1, 3, {"s": "xC02A"}], "n": null})
            )
        );
        let bad = json!({"a": ["{{ inputs.nope }}"]});
        assert!(t.render_value(&bad, &c).is_err());
    }

    #[test]
    fn syntax_errors_have_positions() {
        let t = fixed();
        let e = t.render_str("a {{ inputs.x ", &json!({})).unwrap_err();
        assert!(
            matches!(e, ExprError::Syntax { line: Some(1), .. }),
            "{e:?}"
        );
        let e = template_refs("{{#if x}}unclosed").unwrap_err();
        assert!(matches!(e, ExprError::Syntax { .. }), "{e:?}");
    }

    #[test]
    fn cache_reuses_compiled_templates() {
        let t = fixed();
        let c = ctx();
        for _ in 0..3 {
            assert_eq!(t.render_str("{{ serial }}-x", &c), Ok(json!("C02A-x")));
        }
        let len = t.inner.cache.lock().map(|c| c.len()).unwrap_or(0);
        assert_eq!(len, 1);
    }

    #[test]
    fn refs() {
        assert_eq!(template_refs("no templates"), Ok(vec![]));
        assert_eq!(
            template_refs("{{ inputs.a }} {{ steps.find.output.id }} {{ serial }} {{ now }}"),
            Ok(vec![
                "inputs.a".to_owned(),
                "steps.find.output.id".to_owned(),
                "serial".to_owned()
            ])
        );
        assert_eq!(
            template_refs("{{ default (lower inputs.b) 'x' }}{{ ago '1d' }}"),
            Ok(vec!["inputs.b".to_owned()])
        );
        assert_eq!(
            template_refs(
                "{{#if (eq steps.a.status 'succeeded')}}{{run.id}}{{else}}{{inputs.c}}{{/if}}"
            ),
            Ok(vec![
                "steps.a.status".to_owned(),
                "run.id".to_owned(),
                "inputs.c".to_owned()
            ])
        );
        assert_eq!(
            template_refs(
                "{{#each steps.list.output as |h|}}{{h.name}}{{name}}{{@index}}{{../inputs.d}}{{@root.inputs.e}}{{/each}}"
            ),
            Ok(vec![
                "steps.list.output".to_owned(),
                "inputs.d".to_owned(),
                "inputs.e".to_owned()
            ])
        );
        assert_eq!(
            template_refs("{{ nohelper inputs.a }}"),
            Err(ExprError::UnknownHelper {
                name: "nohelper".into()
            })
        );
        assert!(matches!(
            template_refs("{{> partial }}"),
            Err(ExprError::Syntax { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let deep = format!("{{{{ {}x{} }}}}", "(not ".repeat(5000), ")".repeat(5000));
        assert!(matches!(
            template_refs(&deep),
            Err(ExprError::Syntax { .. })
        ));
        assert!(fixed().render_str(&deep, &json!({"x": 1})).is_err());
        let blocks = format!("{}x{}", "{{#if a}}".repeat(5000), "{{/if}}".repeat(5000));
        assert!(matches!(
            template_refs(&blocks),
            Err(ExprError::Syntax { .. })
        ));
        let ok = format!("{}{{{{x}}}}{}", "{{#if a}}".repeat(5), "{{/if}}".repeat(5));
        assert_eq!(template_refs(&ok), Ok(vec!["a".to_owned(), "x".to_owned()]));
    }

    #[test]
    fn templates_are_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Templates>();
    }
}
