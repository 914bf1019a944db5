//! CEL (Common Expression Language) for `if` conditions and `for_each` lists.
//!
//! The context is the same JSON object the templates read; each top-level key becomes a CEL
//! variable. JSON converts to CEL faithfully: integral numbers are `int` (or `uint` past
//! `i64`), others `double`; objects are maps with string keys; `null` is `null`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::objects::{Key, Map};
use cel::{Context, Env, ExecutionError, Program, Value as CelValue};
use serde_json::Value;

use super::ExprError;

/// The CEL environment: the standard library plus the strings extension
/// (`lowerAscii`, `split`, …). Immutable once built, so one shared copy is enough.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // Adding a built-in extension to a fresh environment cannot conflict; if a future
        // version disagrees we keep the standard library rather than fail.
        let _ = env.add_extension(cel::extensions::strings);
        Arc::new(env)
    })
}

/// Entry point for compiling CEL expressions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cel;

impl Cel {
    /// Parse `expr`; a syntax error says where and what.
    pub fn compile(expr: &str) -> Result<CelProgram, ExprError> {
        if expr.trim().is_empty() {
            return Err(ExprError::CelSyntax {
                message: "the expression is empty".to_owned(),
                line: None,
                column: None,
            });
        }
        let program = env().compile(expr).map_err(|errs| {
            let first = errs.errors.first();
            let (line, column) = match first.map(|e| e.pos) {
                Some((l, c)) if l >= 1 && c >= 1 => {
                    (usize::try_from(l).ok(), usize::try_from(c).ok())
                }
                _ => (None, None),
            };
            let message = errs
                .errors
                .iter()
                .map(|e| e.msg.trim_start_matches("Syntax error: ").to_owned())
                .collect::<Vec<_>>()
                .join("; ");
            ExprError::CelSyntax {
                message,
                line,
                column,
            }
        })?;
        Ok(CelProgram {
            source: expr.to_owned(),
            program: Arc::new(program),
        })
    }
}

/// A parsed CEL expression; cheap to clone.
#[derive(Debug, Clone)]
pub struct CelProgram {
    source: String,
    program: Arc<Program>,
}

impl CelProgram {
    /// The text it was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate to a JSON value.
    pub fn eval(&self, ctx: &Value) -> Result<Value, ExprError> {
        let v = self.eval_cel(ctx)?;
        cel_to_json(&v)
    }

    /// Evaluate a condition; anything but a bool is an error saying what it was.
    pub fn eval_bool(&self, ctx: &Value) -> Result<bool, ExprError> {
        match self.eval_cel(ctx)? {
            CelValue::Bool(b) => Ok(b),
            other => Err(ExprError::NotBool {
                got: type_name(&other),
            }),
        }
    }

    /// Evaluate a `for_each` list.
    pub fn eval_list(&self, ctx: &Value) -> Result<Vec<Value>, ExprError> {
        match self.eval_cel(ctx)? {
            CelValue::List(items) => items.iter().map(cel_to_json).collect(),
            other => Err(ExprError::NotList {
                got: type_name(&other),
            }),
        }
    }

    /// The variables the expression reads, as dotted member paths where the expression
    /// spells them (`steps.find.output.found`, `inputs.device_serials`,
    /// `steps["snap-logs"].output` as `steps.snap-logs.output`), else the bare variable.
    /// Comprehension variables (`x` in `list.map(x, …)`) are not included.
    pub fn references(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        let mut bound = Vec::new();
        collect_refs(self.program.expression(), &mut bound, &mut out);
        out.into_iter().collect()
    }

    fn eval_cel(&self, ctx: &Value) -> Result<CelValue, ExprError> {
        let mut context = Context::with_env(env().clone());
        if let Value::Object(vars) = ctx {
            for (k, v) in vars {
                context.add_variable_from_value(k.clone(), json_to_cel(v));
            }
        }
        self.program.execute(&context).map_err(eval_error)
    }
}

fn eval_error(e: ExecutionError) -> ExprError {
    match e {
        ExecutionError::UndeclaredReference(name) => ExprError::Undefined {
            variable: name.to_string(),
        },
        other => ExprError::Eval {
            message: other.to_string(),
        },
    }
}

fn type_name(v: &CelValue) -> String {
    v.type_of().to_string()
}

/// JSON to CEL, keeping integral numbers integers.
pub(crate) fn json_to_cel(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                CelValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                CelValue::UInt(u)
            } else {
                CelValue::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<Key, CelValue> = m
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            CelValue::Map(Map { map: Arc::new(map) })
        }
    }
}

/// CEL to JSON; values JSON cannot hold (functions, NaN) are errors.
fn cel_to_json(v: &CelValue) -> Result<Value, ExprError> {
    if let CelValue::Float(f) = v {
        if !f.is_finite() {
            return Err(ExprError::Eval {
                message: format!("the result {f} is not a JSON number"),
            });
        }
    }
    v.json().map_err(|e| ExprError::Eval {
        message: e.to_string(),
    })
}

/// The dotted path an expression spells (`a.b["c"]` is `a.b.c`), if it is one.
fn member_path(e: &IdedExpr) -> Option<Vec<String>> {
    match &e.expr {
        Expr::Ident(name) => Some(vec![name.clone()]),
        Expr::Select(s) if !s.test => {
            let mut p = member_path(&s.operand)?;
            p.push(s.field.clone());
            Some(p)
        }
        Expr::Call(c) if c.func_name == "_[_]" && c.args.len() == 2 && c.target.is_none() => {
            let mut p = member_path(&c.args[0])?;
            match &c.args[1].expr {
                Expr::Literal(LiteralValue::String(s)) => p.push(s.to_string()),
                Expr::Literal(LiteralValue::Int(i)) => p.push(i.to_string()),
                _ => return None,
            }
            Some(p)
        }
        _ => None,
    }
}

fn collect_refs(e: &IdedExpr, bound: &mut Vec<String>, out: &mut BTreeSet<String>) {
    if let Some(path) = member_path(e) {
        if !bound.iter().any(|b| *b == path[0]) {
            out.insert(path.join("."));
        }
        return;
    }
    match &e.expr {
        Expr::Select(s) => {
            // `has(a.b.c)`: reads `a.b` and asks about `c`.
            if let Some(mut p) = member_path(&s.operand) {
                if !bound.iter().any(|b| *b == p[0]) {
                    p.push(s.field.clone());
                    out.insert(p.join("."));
                }
            } else {
                collect_refs(&s.operand, bound, out);
            }
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                collect_refs(t, bound, out);
            }
            for a in &c.args {
                collect_refs(a, bound, out);
            }
        }
        Expr::Comprehension(c) => {
            collect_refs(&c.iter_range, bound, out);
            collect_refs(&c.accu_init, bound, out);
            let n = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(c.accu_var.clone());
            collect_refs(&c.loop_cond, bound, out);
            collect_refs(&c.loop_step, bound, out);
            collect_refs(&c.result, bound, out);
            bound.truncate(n);
        }
        Expr::List(l) => {
            for el in &l.elements {
                collect_refs(el, bound, out);
            }
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    collect_refs(&me.key, bound, out);
                    collect_refs(&me.value, bound, out);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => collect_refs(&f.value, bound, out),
                    EntryExpr::MapEntry(me) => {
                        collect_refs(&me.key, bound, out);
                        collect_refs(&me.value, bound, out);
                    }
                }
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "inputs": {"confidence": 0.8, "device_serials": ["C02A", "C02B"], "count": 3,
                        "empty": [], "nothing": null},
            "steps": {"find": {"status": "succeeded", "output": {"found": true, "id": "00u1"}},
                      "snap-logs": {"output": {"records": 12}}},
            "run": {"id": "r1"},
        })
    }

    fn eval(src: &str) -> Result<Value, ExprError> {
        Cel::compile(src)?.eval(&ctx())
    }

    #[test]
    fn conditions() {
        let c = ctx();
        let t = |s: &str| Cel::compile(s).and_then(|p| p.eval_bool(&c));
        assert_eq!(t("inputs.confidence >= 0.7"), Ok(true));
        assert_eq!(t("inputs.confidence >= 0.9"), Ok(false));
        assert_eq!(t("size(inputs.device_serials) > 0"), Ok(true));
        assert_eq!(t("size(inputs.empty) > 0"), Ok(false));
        assert_eq!(t("steps.find.output.found"), Ok(true));
        assert_eq!(t("inputs.count == 3"), Ok(true));
        assert_eq!(t("inputs.nothing == null"), Ok(true));
        assert_eq!(t("steps['snap-logs'].output.records > 10"), Ok(true));
        assert_eq!(t("has(steps.find.output.id)"), Ok(true));
        assert_eq!(t("has(steps.find.output.nope)"), Ok(false));
        assert_eq!(t("steps.find.status == 'succeeded'"), Ok(true));
    }

    #[test]
    fn non_bool_condition_says_what_it_got() {
        let e = Cel::compile("inputs.count")
            .and_then(|p| p.eval_bool(&ctx()))
            .unwrap_err();
        assert_eq!(e, ExprError::NotBool { got: "int".into() });
        assert!(e.to_string().contains("gave a int"), "{e}");
    }

    #[test]
    fn lists() {
        let c = ctx();
        let l = |s: &str| Cel::compile(s).and_then(|p| p.eval_list(&c));
        assert_eq!(
            l("inputs.device_serials"),
            Ok(vec![json!("C02A"), json!("C02B")])
        );
        assert_eq!(
            l("[1,2,3].map(x, x * 2)"),
            Ok(vec![json!(2), json!(4), json!(6)])
        );
        assert_eq!(
            l("inputs.device_serials.filter(s, s.endsWith('B'))"),
            Ok(vec![json!("C02B")])
        );
        assert_eq!(
            l("inputs.count"),
            Err(ExprError::NotList { got: "int".into() })
        );
    }

    #[test]
    fn conversion_round_trips() {
        assert_eq!(
            eval("steps.find.output"),
            Ok(json!({"found": true, "id": "00u1"}))
        );
        assert_eq!(eval("inputs.count + 1"), Ok(json!(4)));
        assert_eq!(eval("inputs.confidence"), Ok(json!(0.8)));
        assert_eq!(eval("null"), Ok(Value::Null));
        assert_eq!(eval("{'a': [1, 'b']}"), Ok(json!({"a": [1, "b"]})));
        assert_eq!(eval("'ABC'.lowerAscii()"), Ok(json!("abc")));
    }

    #[test]
    fn errors() {
        let e = Cel::compile("inputs.confidence >= ").unwrap_err();
        assert!(
            matches!(e, ExprError::CelSyntax { line: Some(1), .. }),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("CEL syntax error at line 1"),
            "{e}"
        );
        assert!(matches!(
            Cel::compile("  "),
            Err(ExprError::CelSyntax { .. })
        ));
        assert_eq!(
            eval("nope > 1"),
            Err(ExprError::Undefined {
                variable: "nope".into()
            })
        );
        assert!(matches!(
            eval("inputs.missing"),
            Err(ExprError::Eval { .. })
        ));
        assert!(matches!(eval("1 / 0"), Err(ExprError::Eval { .. })));
    }

    #[test]
    fn references() {
        let r = |s: &str| Cel::compile(s).map(|p| p.references());
        assert_eq!(
            r("inputs.confidence >= 0.7 && steps.find.output.found"),
            Ok(vec![
                "inputs.confidence".to_owned(),
                "steps.find.output.found".to_owned()
            ])
        );
        assert_eq!(
            r("size(inputs.device_serials) > 0"),
            Ok(vec!["inputs.device_serials".to_owned()])
        );
        assert_eq!(
            r("steps['snap-logs'].output.records > 0"),
            Ok(vec!["steps.snap-logs.output.records".to_owned()])
        );
        assert_eq!(
            r("inputs.list.map(x, x.name + run.id)"),
            Ok(vec!["inputs.list".to_owned(), "run.id".to_owned()])
        );
        assert_eq!(
            r("has(steps.find.output.id)"),
            Ok(vec!["steps.find.output.id".to_owned()])
        );
        assert_eq!(r("[1,2,3].map(x, x * 2)"), Ok(vec![]));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(Cel::compile(&deep).is_err());
    }

    #[test]
    fn programs_are_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<CelProgram>();
    }
}
