//! Notification templates: loading, checking against the facts schema, rendering.
//!
//! Template `X` is the file `X.md.hbs` in the configured templates folder (`templates:`,
//! default `./templates`); the shipped templates are embedded in the binary as a fallback
//! when the folder lacks the file, so `cordon demo` works from any directory. A file starts
//! with a front-matter block:
//!
//! ```text
//! ---
//! subject: "IC3 complaint: {{ case.organisation.name }}"
//! audience: authority        # authority | internal | third-party
//! ---
//! # The body, Markdown with Handlebars
//! ```
//!
//! The subject is itself a template (rendered as one line of plain text). The body is
//! Handlebars in strict mode whose every `{{ value }}` is escaped for Markdown
//! ([`super::markdown::escape`]); `{{{ raw }}}` is refused, so no value ever escapes that.
//!
//! Before rendering, [`DraftTemplate::check`] walks the template against the facts'
//! [`Shape`]: every field it reads, in every branch (not only those the facts take), must
//! exist, lists must be iterated with `{{#each}}` (not printed), and only the known helpers
//! may be called. A problem is a [`TemplateError`] naming the template, its file and line,
//! and the field path, e.g. ``template `fbi-ic3-complaint` (templates/fbi-ic3-complaint.md.hbs:42:7):
//! field `subject.emial` is not in the incident-facts schema``.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use handlebars::template::{BlockParam, HelperTemplate, Parameter, TemplateElement};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, Path, PathSeg, RenderContext, RenderError,
    RenderErrorReason, Renderable, ScopedJson, StringOutput, Template,
};
use serde_json::Value;

use super::facts::{is_placeholder, Shape};
use super::markdown;

/// The templates shipped with Cordon, embedded in the binary.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "fbi-ic3-complaint",
        include_str!("../../../templates/fbi-ic3-complaint.md.hbs"),
    ),
    (
        "fbi-field-office-cover-letter",
        include_str!("../../../templates/fbi-field-office-cover-letter.md.hbs"),
    ),
    (
        "ofac-voluntary-self-disclosure",
        include_str!("../../../templates/ofac-voluntary-self-disclosure.md.hbs"),
    ),
    (
        "ofac-blocked-property-report",
        include_str!("../../../templates/ofac-blocked-property-report.md.hbs"),
    ),
    (
        "ofac-rejected-transaction-report",
        include_str!("../../../templates/ofac-rejected-transaction-report.md.hbs"),
    ),
    (
        "legal-hold-memo",
        include_str!("../../../templates/legal-hold-memo.md.hbs"),
    ),
    (
        "executive-brief",
        include_str!("../../../templates/executive-brief.md.hbs"),
    ),
    (
        "staffing-vendor-notice",
        include_str!("../../../templates/staffing-vendor-notice.md.hbs"),
    ),
    (
        "hr-separation-notice",
        include_str!("../../../templates/hr-separation-notice.md.hbs"),
    ),
    (
        "false-positive-release-notice",
        include_str!("../../../templates/false-positive-release-notice.md.hbs"),
    ),
];

/// Realistic sample facts for previews (`cordon templates render`) and template checks.
pub const SAMPLE_FACTS: &str = include_str!("../../../templates/sample-facts.yaml");

/// The file extension of a template.
pub const EXTENSION: &str = ".md.hbs";

/// Value helpers a template may call; block helpers are `if`, `unless`, `each`, `with`.
const VALUE_HELPERS: &[&str] = &[
    "eq", "ne", "and", "or", "not", "lower", "upper", "join", "default", "json", "len", "gt",
    "gte", "lt", "lte", "known",
];
const BLOCK_HELPERS: &[&str] = &["if", "unless", "each", "with"];

/// Who a draft is for. Drafts for an authority are filed by counsel, never sent by Cordon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Authority,
    Internal,
    ThirdParty,
}

impl Audience {
    pub fn parse(s: &str) -> Option<Audience> {
        match s {
            "authority" => Some(Audience::Authority),
            "internal" => Some(Audience::Internal),
            "third-party" => Some(Audience::ThirdParty),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Authority => "authority",
            Audience::Internal => "internal",
            Audience::ThirdParty => "third-party",
        }
    }
}

/// A problem with a template, naming the template, where it is, and (for fields) the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TemplateError {
    pub template: String,
    /// The file (or `<name>.md.hbs (embedded)`).
    pub file: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The field path at fault, for unknown or misused fields.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "template `{}` ({}", self.template, self.file)?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, ":{l}:{c}")?,
            (Some(l), None) => write!(f, ":{l}")?,
            _ => {}
        }
        write!(f, "): {}", self.message)
    }
}

/// A loaded template: its front matter and body.
#[derive(Debug, Clone)]
pub struct DraftTemplate {
    pub name: String,
    pub file: String,
    pub audience: Audience,
    /// The subject template.
    pub subject: String,
    /// Line of the `subject:` key in the file.
    pub subject_line: usize,
    /// The body template.
    pub body: String,
    /// Line in the file where the body starts.
    pub body_line: usize,
}

/// What rendering produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub body_markdown: String,
    pub body_text: String,
    pub audience: Audience,
}

struct Registries {
    /// Body: values escaped for Markdown.
    markdown: Handlebars<'static>,
    /// Subject: values on one line, no Markdown escaping.
    plain: Handlebars<'static>,
}

/// The template folder (with the shipped templates as a fallback) and the renderers.
#[derive(Clone)]
pub struct DraftTemplates {
    dir: Option<PathBuf>,
    registries: Arc<Registries>,
}

impl fmt::Debug for DraftTemplates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DraftTemplates")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn registry(escape: fn(&str) -> String) -> Handlebars<'static> {
    let mut hbs = Handlebars::new();
    hbs.set_strict_mode(true);
    hbs.register_escape_fn(escape);
    crate::expr::register_value_helpers(&mut hbs);
    hbs.register_helper("known", Box::new(KnownHelper));
    hbs
}

impl DraftTemplates {
    /// Templates from `dir` (when given), else the shipped ones.
    pub fn new(dir: Option<PathBuf>) -> DraftTemplates {
        DraftTemplates {
            dir,
            registries: Arc::new(Registries {
                markdown: registry(markdown::escape),
                plain: registry(markdown::one_line),
            }),
        }
    }

    /// Only the shipped templates.
    pub fn shipped() -> DraftTemplates {
        DraftTemplates::new(None)
    }

    pub fn dir(&self) -> Option<&FsPath> {
        self.dir.as_deref()
    }

    /// Every template name: the folder's and the shipped ones, sorted, with where each comes
    /// from.
    pub fn list(&self) -> Vec<(String, String)> {
        let mut out: std::collections::BTreeMap<String, String> = SHIPPED
            .iter()
            .map(|(n, _)| (n.to_string(), format!("{n}{EXTENSION} (embedded)")))
            .collect();
        if let Some(dir) = &self.dir {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let file = e.file_name().to_string_lossy().into_owned();
                    if let Some(name) = file.strip_suffix(EXTENSION) {
                        if valid_name(name) {
                            out.insert(name.to_string(), e.path().display().to_string());
                        }
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// Load template `name`: the folder's file, else the shipped one.
    pub fn load(&self, name: &str) -> Result<DraftTemplate, Box<TemplateError>> {
        let err = |file: String, message: String| {
            Box::new(TemplateError {
                template: name.to_string(),
                file,
                line: None,
                column: None,
                field: None,
                message,
            })
        };
        if !valid_name(name) {
            return Err(err(
                name.to_string(),
                "is not a template name: use lowercase letters, digits and `-`, as in `fbi-ic3-complaint`".into(),
            ));
        }
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{name}{EXTENSION}"));
            match std::fs::read_to_string(&path) {
                Ok(text) => return parse(name, &path.display().to_string(), &text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(err(
                        path.display().to_string(),
                        format!("cannot read the template: {e}"),
                    ))
                }
            }
        }
        if let Some((_, text)) = SHIPPED.iter().find(|(n, _)| *n == name) {
            return parse(name, &format!("{name}{EXTENSION} (embedded)"), text);
        }
        let names: Vec<String> = self.list().into_iter().map(|(n, _)| n).collect();
        let hint = crate::runbook::diagnostics::closest(name, names.iter().map(String::as_str))
            .map(|c| format!("; did you mean `{c}`?"))
            .unwrap_or_default();
        let searched = match &self.dir {
            Some(d) => format!("{}", d.join(format!("{name}{EXTENSION}")).display()),
            None => format!("{name}{EXTENSION}"),
        };
        Err(err(
            searched,
            format!("no such template (neither in the templates folder nor shipped){hint}"),
        ))
    }

    /// Check `t` against `shape`, then render it with `facts`.
    pub fn render(
        &self,
        t: &DraftTemplate,
        facts: &Value,
        shape: &Shape,
    ) -> Result<Rendered, Vec<TemplateError>> {
        let (subject_t, body_t) = t.compile().map_err(|e| vec![*e])?;
        let problems = t.check_compiled(&subject_t, &body_t, shape);
        if !problems.is_empty() {
            return Err(problems);
        }
        let ctx = Context::from(facts.clone());
        let subject = render_one(&self.registries.plain, &subject_t, &ctx)
            .map_err(|e| vec![t.render_error(e, t.subject_line)])?;
        let subject = markdown::one_line(&subject);
        let body_markdown = render_one(&self.registries.markdown, &body_t, &ctx)
            .map_err(|e| vec![t.render_error(e, t.body_line)])?;
        let body_markdown = tidy(&body_markdown);
        let body_text = markdown::to_text(&body_markdown);
        Ok(Rendered {
            subject,
            body_markdown,
            body_text,
            audience: t.audience,
        })
    }
}

fn render_one(
    hbs: &Handlebars<'static>,
    t: &Template,
    ctx: &Context,
) -> Result<String, RenderError> {
    let mut rc = RenderContext::new(None);
    let mut out = StringOutput::new();
    t.render(hbs, ctx, &mut rc, &mut out)?;
    out.into_string()
        .map_err(|e| RenderErrorReason::Other(e.to_string()).into())
}

/// No trailing spaces, at most one blank line in a row, one final newline.
fn tidy(md: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut blank = 0;
    for line in md.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// `[a-z0-9-]+`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Split front matter from body and read `subject` and `audience`.
pub fn parse(name: &str, file: &str, text: &str) -> Result<DraftTemplate, Box<TemplateError>> {
    let at = |line: usize, message: String| {
        Box::new(TemplateError {
            template: name.to_string(),
            file: file.to_string(),
            line: Some(line),
            column: Some(1),
            field: None,
            message,
        })
    };
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().unwrap_or("");
    if first.trim_end() != "---" {
        return Err(at(
            1,
            "must begin with a front-matter block: `---`, `subject: …`, `audience: …`, `---`"
                .into(),
        ));
    }
    let mut subject: Option<(String, usize)> = None;
    let mut audience: Option<(String, usize)> = None;
    let mut consumed = first.len();
    let mut line_no = 1;
    let mut closed = false;
    for raw in lines {
        line_no += 1;
        consumed += raw.len();
        let line = raw.trim_end();
        if line == "---" {
            closed = true;
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            return Err(at(
                line_no,
                format!("front matter: expected `key: value`, found `{trimmed}`"),
            ));
        };
        let value = unquote(value.trim());
        match key.trim() {
            "subject" => subject = Some((value, line_no)),
            "audience" => audience = Some((value, line_no)),
            other => {
                let hint =
                    crate::runbook::diagnostics::did_you_mean(other, ["subject", "audience"])
                        .map(|h| format!("; {h}"))
                        .unwrap_or_default();
                return Err(at(
                    line_no,
                    format!(
                        "front matter: unknown key `{other}` (known: `subject`, `audience`){hint}"
                    ),
                ));
            }
        }
    }
    if !closed {
        return Err(at(line_no, "front matter: no closing `---` line".into()));
    }
    let Some((subject, subject_line)) = subject.filter(|(s, _)| !s.trim().is_empty()) else {
        return Err(at(1, "front matter: `subject` is required".into()));
    };
    let Some((aud, aud_line)) = audience else {
        return Err(at(
            1,
            "front matter: `audience` is required (`authority`, `internal` or `third-party`)"
                .into(),
        ));
    };
    let Some(audience) = Audience::parse(&aud) else {
        return Err(at(
            aud_line,
            format!("front matter: audience `{aud}` is not one of `authority`, `internal`, `third-party`"),
        ));
    };
    Ok(DraftTemplate {
        name: name.to_string(),
        file: file.to_string(),
        audience,
        subject,
        subject_line,
        body: text[consumed..].to_string(),
        body_line: line_no + 1,
    })
}

/// A front-matter value without its quotes (`"…"` with `\"` and `\\`, or `'…'`).
fn unquote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        let inner = &v[1..v.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        return v[1..v.len() - 1].replace("''", "'");
    }
    v.to_string()
}

impl DraftTemplate {
    fn error(
        &self,
        line: Option<usize>,
        column: Option<usize>,
        field: Option<String>,
        message: String,
    ) -> TemplateError {
        TemplateError {
            template: self.name.clone(),
            file: self.file.clone(),
            line,
            column,
            field,
            message,
        }
    }

    /// Compile subject and body (syntax errors located in the file).
    pub fn compile(&self) -> Result<(Template, Template), Box<TemplateError>> {
        let compile = |src: &str, first_line: usize| {
            Template::compile_with_name(src, self.name.clone()).map_err(|e| {
                let (line, column) = match e.pos() {
                    Some((l, c)) => (Some(first_line + l.saturating_sub(1)), Some(c)),
                    None => (Some(first_line), None),
                };
                Box::new(self.error(
                    line,
                    column,
                    None,
                    format!("template syntax error: {}", e.reason()),
                ))
            })
        };
        let subject = compile(&self.subject, self.subject_line)?;
        let body = compile(&self.body, self.body_line)?;
        Ok((subject, body))
    }

    /// Every problem with this template against `shape` (empty: it renders with any facts
    /// of that shape).
    pub fn check(&self, shape: &Shape) -> Vec<TemplateError> {
        match self.compile() {
            Ok((s, b)) => self.check_compiled(&s, &b, shape),
            Err(e) => vec![*e],
        }
    }

    fn check_compiled(
        &self,
        subject: &Template,
        body: &Template,
        shape: &Shape,
    ) -> Vec<TemplateError> {
        let mut ck = Checker {
            template: self,
            errors: Vec::new(),
            first_line: self.subject_line,
        };
        let root = Frame {
            shape: shape.clone(),
            path: String::new(),
            each: false,
            params: Vec::new(),
        };
        ck.walk(subject, &mut vec![root.clone()]);
        ck.first_line = self.body_line;
        ck.walk(body, &mut vec![root]);
        ck.errors
    }

    fn render_error(&self, e: RenderError, first_line: usize) -> TemplateError {
        let line = e.line_no.map(|l| first_line + l.saturating_sub(1));
        let column = e.column_no;
        match e.reason() {
            RenderErrorReason::MissingVariable(path) => {
                let field = path.clone().unwrap_or_else(|| "(unnamed)".into());
                self.error(
                    line,
                    column,
                    Some(field.clone()),
                    format!("field `{field}` is not in the facts"),
                )
            }
            other => self.error(line, column, None, format!("cannot render: {other}")),
        }
    }
}

/// One scope of the static check: the shape `{{ name }}` resolves against.
#[derive(Clone)]
struct Frame {
    shape: Shape,
    /// The absolute path of this scope (`devices[]`), for messages.
    path: String,
    /// Inside `{{#each}}`: `@index`, `@first`, `@last` are defined.
    each: bool,
    /// Block parameters (`as |d i|`) and their shapes.
    params: Vec<(String, Shape, String)>,
}

struct Checker<'t> {
    template: &'t DraftTemplate,
    errors: Vec<TemplateError>,
    /// File line of the template's first line.
    first_line: usize,
}

/// What a parameter position expects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Printed: must be text.
    Text,
    /// A helper's argument or a condition: anything.
    Any,
}

impl Checker<'_> {
    fn push(&mut self, pos: (usize, usize), field: Option<String>, message: String) {
        let line = (pos.0 > 0).then(|| self.first_line + pos.0.saturating_sub(1));
        let column = (pos.1 > 0).then_some(pos.1);
        let e = self.template.error(line, column, field, message);
        if !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }

    fn walk(&mut self, t: &Template, frames: &mut Vec<Frame>) {
        for (i, el) in t.elements.iter().enumerate() {
            let pos = t.mapping.get(i).map(|m| (m.0, m.1)).unwrap_or((0, 0));
            match el {
                TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
                TemplateElement::HtmlExpression(_) => self.push(
                    pos,
                    None,
                    "`{{{…}}}` inserts a value without Markdown escaping; use `{{…}}`".into(),
                ),
                TemplateElement::Expression(ht) => self.expression(ht, frames, pos),
                TemplateElement::HelperBlock(ht) => self.block(ht, frames, pos),
                _ => self.push(
                    pos,
                    None,
                    "partials and decorators are not supported in notification templates".into(),
                ),
            }
        }
    }

    fn expression(&mut self, ht: &HelperTemplate, frames: &[Frame], pos: (usize, usize)) {
        let has_args = !ht.params.is_empty() || !ht.hash.is_empty();
        if let Some(name) = ht.name.as_name() {
            if VALUE_HELPERS.contains(&name) {
                self.params(ht.params.iter().chain(ht.hash.values()), frames, pos);
                return;
            }
            if BLOCK_HELPERS.contains(&name) {
                self.push(
                    pos,
                    None,
                    format!(
                        "`{name}` is a block helper: write `{{{{#{name} …}}}}…{{{{/{name}}}}}`"
                    ),
                );
                return;
            }
            if has_args {
                self.push(
                    pos,
                    None,
                    format!(
                        "unknown helper `{name}` (known: {})",
                        VALUE_HELPERS.join(", ")
                    ),
                );
                return;
            }
        }
        if has_args {
            self.push(pos, None, "unknown helper".into());
            return;
        }
        self.param(&ht.name, frames, pos, Want::Text);
    }

    fn params<'p>(
        &mut self,
        ps: impl Iterator<Item = &'p Parameter>,
        frames: &[Frame],
        pos: (usize, usize),
    ) {
        for p in ps {
            self.param(p, frames, pos, Want::Any);
        }
    }

    fn param(
        &mut self,
        p: &Parameter,
        frames: &[Frame],
        pos: (usize, usize),
        want: Want,
    ) -> Option<(Shape, String)> {
        match p {
            Parameter::Literal(_) => Some((Shape::Text, String::new())),
            Parameter::Subexpression(s) => {
                if let TemplateElement::Expression(ht) = &*s.element {
                    match ht.name.as_name() {
                        Some(n) if VALUE_HELPERS.contains(&n) => {
                            self.params(ht.params.iter().chain(ht.hash.values()), frames, pos)
                        }
                        Some(n) => self.push(
                            pos,
                            None,
                            format!("unknown helper `{n}` (known: {})", VALUE_HELPERS.join(", ")),
                        ),
                        None => self.push(pos, None, "unknown helper".into()),
                    }
                }
                Some((Shape::Any, String::new()))
            }
            Parameter::Name(n) => {
                self.resolve(std::slice::from_ref(n), 0, false, n, frames, pos, want)
            }
            Parameter::Path(Path::Local((level, name, raw))) => {
                let each = frames.iter().rev().skip(*level).any(|f| f.each);
                if !each || !["index", "first", "last", "key"].contains(&name.as_str()) {
                    self.push(
                        pos,
                        None,
                        format!("`{raw}` is only defined inside `{{{{#each}}}}`"),
                    );
                }
                Some((Shape::Text, String::new()))
            }
            Parameter::Path(Path::Relative((segs, raw))) => {
                let names: Vec<String> = segs
                    .iter()
                    .filter_map(|s| match s {
                        PathSeg::Named(n) if n != "this" => Some(n.clone()),
                        _ => None,
                    })
                    .collect();
                let mut rest = raw.as_str();
                let root = rest.starts_with("@root");
                let mut ups = 0;
                while let Some(r) = rest.strip_prefix("../") {
                    ups += 1;
                    rest = r;
                }
                self.resolve(&names, ups, root, raw, frames, pos, want)
            }
            _ => Some((Shape::Any, String::new())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn resolve(
        &mut self,
        names: &[String],
        ups: usize,
        root: bool,
        raw: &str,
        frames: &[Frame],
        pos: (usize, usize),
        want: Want,
    ) -> Option<(Shape, String)> {
        let Some(frame) = (if root {
            frames.first()
        } else {
            frames
                .len()
                .checked_sub(ups + 1)
                .and_then(|i| frames.get(i))
        }) else {
            self.push(
                pos,
                None,
                format!("`{raw}` goes above the top of the facts"),
            );
            return None;
        };
        let mut shape = frame.shape.clone();
        let mut path = frame.path.clone();
        let mut rest = names;
        if !root && ups == 0 {
            if let Some(first) = names.first() {
                if let Some((_, s, p)) = frames
                    .iter()
                    .rev()
                    .flat_map(|f| f.params.iter())
                    .find(|(n, _, _)| n == first)
                {
                    shape = s.clone();
                    path = p.clone();
                    rest = &names[1..];
                }
            }
        }
        for n in rest {
            if let Shape::List(_) = &shape {
                let shown = path.replace("[]", "");
                self.push(
                    pos,
                    Some(format!("{shown}.{n}")),
                    format!("`{shown}` is a list, which may be empty: use `{{{{#each {shown}}}}}…{{{{else}}}}…{{{{/each}}}}` instead of `.{n}`"),
                );
                return None;
            }
            let next = shape.field(n).cloned();
            path = if path.is_empty() {
                n.clone()
            } else {
                format!("{path}.{n}")
            };
            match next {
                Some(s) => shape = s,
                None => {
                    let shown = path.replace("[]", "");
                    let known = match &shape {
                        Shape::Object(m) => {
                            let keys: Vec<&str> = m.keys().map(String::as_str).collect();
                            match crate::runbook::diagnostics::closest(n, keys.iter().copied()) {
                                Some(c) => format!("; did you mean `{c}`?"),
                                None => format!("; its fields: {}", keys.join(", ")),
                            }
                        }
                        Shape::List(_) => "; it is a list: use `{{#each}}`".to_string(),
                        _ => String::new(),
                    };
                    self.push(
                        pos,
                        Some(shown.clone()),
                        format!("field `{shown}` is not in the incident-facts schema{known}"),
                    );
                    return None;
                }
            }
        }
        if want == Want::Text {
            let shown = if path.is_empty() {
                "this".to_string()
            } else {
                path.replace("[]", "")
            };
            match &shape {
                Shape::Object(_) => {
                    self.push(
                        pos,
                        Some(shown.clone()),
                        format!("`{shown}` is a mapping: print one of its fields"),
                    );
                }
                Shape::List(_) => {
                    self.push(
                        pos,
                        Some(shown.clone()),
                        format!("`{shown}` is a list: use `{{{{#each {raw}}}}}…{{{{else}}}}…{{{{/each}}}}` or `{{{{join {raw} \", \"}}}}`"),
                    );
                }
                _ => {}
            }
        }
        Some((shape, path))
    }

    fn block(&mut self, ht: &HelperTemplate, frames: &mut Vec<Frame>, pos: (usize, usize)) {
        let name = ht.name.as_name().unwrap_or("");
        if !BLOCK_HELPERS.contains(&name) {
            self.push(
                pos,
                None,
                format!(
                    "unknown block helper `{name}` (known: {})",
                    BLOCK_HELPERS.join(", ")
                ),
            );
            return;
        }
        let Some(first) = ht.params.first() else {
            self.push(pos, None, format!("`{{{{#{name}}}}}` needs a parameter"));
            return;
        };
        self.params(
            ht.params.iter().skip(1).chain(ht.hash.values()),
            frames,
            pos,
        );
        let target = self.param(first, frames, pos, Want::Any);
        match name {
            "each" | "with" => {
                let (inner, each, path) = match (name, target) {
                    ("each", Some((Shape::List(item), p))) => (*item, true, p),
                    ("each", Some((Shape::Any, p))) | ("with", Some((Shape::Any, p))) => {
                        (Shape::Any, name == "each", p)
                    }
                    ("with", Some((s @ Shape::Object(_), p))) => (s, false, p),
                    (_, Some((_, p))) => {
                        let what = if name == "each" { "list" } else { "mapping" };
                        self.push(pos, None, format!("`{{{{#{name}}}}}` needs a {what}"));
                        (Shape::Any, name == "each", p)
                    }
                    (_, None) => (Shape::Any, name == "each", String::new()),
                };
                let item_path = if each { format!("{path}[]") } else { path };
                let mut params = Vec::new();
                if let Some(bp) = &ht.block_param {
                    let (a, b) = match bp {
                        BlockParam::Single(a) => (a.as_name(), None),
                        BlockParam::Pair((a, b)) => (a.as_name(), b.as_name()),
                        _ => (None, None),
                    };
                    if let Some(a) = a {
                        params.push((a.to_string(), inner.clone(), item_path.clone()));
                    }
                    if let Some(b) = b {
                        params.push((b.to_string(), Shape::Text, String::new()));
                    }
                }
                frames.push(Frame {
                    shape: inner,
                    path: item_path,
                    each,
                    params,
                });
                if let Some(t) = &ht.template {
                    self.walk(t, frames);
                }
                frames.pop();
            }
            _ => {
                if let Some(t) = &ht.template {
                    self.walk(t, frames);
                }
            }
        }
        if let Some(inv) = &ht.inverse {
            self.walk(inv, frames);
        }
    }
}

/// `known x`: true when `x` is a known value (not a placeholder, not an empty list).
struct KnownHelper;

impl HelperDef for KnownHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let p = h
            .param(0)
            .ok_or_else(|| RenderErrorReason::Other("`known` needs a parameter".into()))?;
        if p.is_value_missing() {
            return Err(RenderError::strict_error(p.relative_path()));
        }
        let v = p.value();
        let known = match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::String(s) => !s.trim().is_empty() && !is_placeholder(v),
            _ => true,
        };
        Ok(ScopedJson::Derived(Value::Bool(known)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::facts;
    use serde_json::json;

    fn tpl(body: &str) -> DraftTemplate {
        parse(
            "t",
            "templates/t.md.hbs",
            &format!("---\nsubject: \"Case {{{{case.id}}}}\"\naudience: internal\n---\n{body}"),
        )
        .expect("parses")
    }

    fn facts_with(v: Value) -> Value {
        let mut f = v;
        facts::complete(&mut f, &facts::shape(), "");
        f
    }

    #[test]
    fn front_matter_is_read_and_checked() {
        let t = tpl("# Hello\n");
        assert_eq!(t.subject, "Case {{case.id}}");
        assert_eq!(t.audience, Audience::Internal);
        assert_eq!(t.subject_line, 2);
        assert_eq!(t.body_line, 5);
        assert_eq!(t.body, "# Hello\n");
        for (text, want) in [
            (
                "# no front matter\n",
                "must begin with a front-matter block",
            ),
            ("---\nsubject: x\n", "no closing `---`"),
            ("---\naudience: internal\n---\n", "`subject` is required"),
            ("---\nsubject: x\n---\n", "`audience` is required"),
            (
                "---\nsubject: x\naudience: press\n---\n",
                "audience `press`",
            ),
            (
                "---\nsubjct: x\naudience: internal\n---\n",
                "did you mean `subject`?",
            ),
        ] {
            let e = parse("t", "t.md.hbs", text).unwrap_err();
            assert!(e.to_string().contains(want), "{text:?}: {e}");
            assert!(e.to_string().starts_with("template `t` (t.md.hbs:"), "{e}");
        }
    }

    #[test]
    fn unknown_field_names_template_line_and_path() {
        let t = tpl("# Title\n\nName: {{case.organisation.name}}\nEmail: {{subject.emial}}\n");
        let errs = t.check(&facts::shape());
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = &errs[0];
        assert_eq!(e.field.as_deref(), Some("subject.emial"));
        assert_eq!(e.line, Some(8), "{e}");
        assert_eq!(
            e.to_string(),
            "template `t` (templates/t.md.hbs:8:8): field `subject.emial` is not in the incident-facts schema; did you mean `emails`?"
        );
        // Rendering refuses it too, before producing anything.
        let ts = DraftTemplates::shipped();
        let r = ts.render(&t, &facts_with(json!({})), &facts::shape());
        assert_eq!(r.unwrap_err()[0].field.as_deref(), Some("subject.emial"));
    }

    #[test]
    fn fields_are_checked_in_branches_not_taken_and_inside_each() {
        let t = tpl(concat!(
            "{{#if payments.blocked}}{{payments.totl}}{{/if}}\n",
            "{{#each devices}}{{serail}} {{@index}} {{../case.id}}{{else}}none{{/each}}\n",
            "{{#each network.ip_addresses as |a|}}{{a.ip}} {{a.cuntry}}{{/each}}\n",
            "{{#with case.organisation}}{{name}} {{nam}}{{/with}}\n",
            "{{subject.names}} {{case}} {{@index}} {{{case.id}}} {{frob case.id}}\n",
            "{{#each case.id}}x{{/each}} {{devices.0.serial}}\n",
        ));
        let errs = t.check(&facts::shape());
        let fields: Vec<Option<&str>> = errs.iter().map(|e| e.field.as_deref()).collect();
        assert_eq!(
            fields,
            vec![
                Some("payments.totl"),
                Some("devices.serail"),
                Some("network.ip_addresses.cuntry"),
                Some("case.organisation.nam"),
                Some("subject.names"),
                Some("case"),
                None,
                None,
                None,
                None,
                Some("devices.0"),
            ],
            "{errs:#?}"
        );
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(text[4].contains("is a list"), "{}", text[4]);
        assert!(text[6].contains("@index"), "{}", text[6]);
        assert!(text[7].contains("without Markdown escaping"), "{}", text[7]);
        assert!(text[8].contains("unknown helper `frob`"), "{}", text[8]);
        assert!(text[9].contains("needs a list"), "{}", text[9]);
        assert!(text[10].contains("may be empty"), "{}", text[10]);
        assert_eq!(errs[1].line, Some(6));
    }

    #[test]
    fn data_fields_extend_the_shape() {
        let t = tpl("{{field_office}} {{case.organisation.name}}\n");
        assert_eq!(t.check(&facts::shape()).len(), 1);
        let shape = facts::shape().merged(&Shape::of_value(&json!({"field_office": "Phoenix"})));
        assert!(t.check(&shape).is_empty());
    }

    #[test]
    fn values_are_escaped_in_the_body_but_not_the_subject() {
        let t = parse(
            "t",
            "t.md.hbs",
            "---\nsubject: \"Re: {{join subject.names \\\" / \\\"}}\"\naudience: internal\n---\nName: {{#each subject.names}}{{this}}{{/each}}\nMail: {{join subject.emails \", \"}}\n",
        )
        .unwrap();
        let f = facts_with(json!({"subject": {
            "names": ["[Evil](https://x.example) <b>\n# head"],
            "emails": ["j_doe@example.com", "*x*"],
        }}));
        let r = DraftTemplates::shipped()
            .render(&t, &f, &facts::shape())
            .unwrap();
        assert_eq!(r.subject, "Re: [Evil](https://x.example) <b> # head");
        assert_eq!(
            r.body_markdown,
            "Name: \\[Evil\\](https://x.example) \\<b> # head\nMail: j_doe@example.com, \\*x\\*\n"
        );
        assert_eq!(
            r.body_text,
            "Name: [Evil](https://x.example) <b> # head\nMail: j_doe@example.com, *x*\n"
        );
    }

    #[test]
    fn known_tells_placeholders_from_values() {
        let t = tpl("{{#if (known payments.total_paid)}}paid {{payments.total_paid}}{{else}}unknown{{/if}} {{#if (known devices)}}d{{else}}no devices{{/if}}\n");
        let ts = DraftTemplates::shipped();
        let r = ts
            .render(&t, &facts_with(json!({})), &facts::shape())
            .unwrap();
        assert_eq!(r.body_markdown, "unknown no devices\n");
        let r = ts
            .render(
                &t,
                &facts_with(json!({"payments": {"total_paid": "100.00"}})),
                &facts::shape(),
            )
            .unwrap();
        assert_eq!(r.body_markdown, "paid 100.00 no devices\n");
    }

    #[test]
    fn syntax_errors_are_located_in_the_file() {
        let t = tpl("line one\n{{#if case.id}}\nunclosed\n");
        let e = t.check(&facts::shape());
        assert_eq!(e.len(), 1);
        assert!(
            e[0].to_string()
                .starts_with("template `t` (templates/t.md.hbs:"),
            "{}",
            e[0]
        );
        assert!(e[0].message.contains("syntax"), "{}", e[0]);
    }

    #[test]
    fn loading_prefers_the_folder_and_falls_back_to_shipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("executive-brief.md.hbs"),
            "---\nsubject: Local brief\naudience: internal\n---\nlocal\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("custom-note.md.hbs"),
            "---\nsubject: Note\naudience: third-party\n---\nnote\n",
        )
        .unwrap();
        let ts = DraftTemplates::new(Some(dir.path().to_path_buf()));
        assert_eq!(ts.load("executive-brief").unwrap().subject, "Local brief");
        assert_eq!(
            ts.load("custom-note").unwrap().audience,
            Audience::ThirdParty
        );
        let shipped = ts.load("fbi-ic3-complaint").unwrap();
        assert!(shipped.file.ends_with("(embedded)"), "{}", shipped.file);
        assert_eq!(shipped.audience, Audience::Authority);
        let e = ts.load("fbi-ic3-complant").unwrap_err().to_string();
        assert!(e.contains("did you mean `fbi-ic3-complaint`?"), "{e}");
        let e = ts.load("../etc/passwd").unwrap_err().to_string();
        assert!(e.contains("not a template name"), "{e}");
        let names: Vec<String> = ts.list().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"custom-note".to_string()));
        assert_eq!(names.len(), SHIPPED.len() + 1);
    }
}
