//! Checking the inputs a run is started with against the runbook's declarations.
//!
//! Values from the command line arrive as strings unless they parse as JSON, so a string
//! given for a `number`, `integer`, `boolean`, `array` or `object` input is converted when
//! it parses as one. The same value check validates `default`s at validation time.

use serde_json::{Map, Value};

use super::diagnostics::did_you_mean;
use super::model::{InputSpec, InputType, Runbook};

/// Something wrong with one supplied input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The runbook declares no input of that name.
    #[error("unknown input `{name}`{}", .hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default())]
    Unknown { name: String, hint: Option<String> },
    /// A required input was not supplied and has no default.
    #[error("input `{name}` is required")]
    Missing { name: String },
    /// The value does not satisfy the declaration.
    #[error("input `{name}`: {problem}")]
    Invalid { name: String, problem: String },
}

impl InputError {
    /// The input's name.
    pub fn name(&self) -> &str {
        match self {
            InputError::Unknown { name, .. }
            | InputError::Missing { name }
            | InputError::Invalid { name, .. } => name,
        }
    }
}

/// Apply defaults and check every supplied input; all problems at once. A `null` counts as
/// not supplied (alerts often carry empty fields).
pub fn resolve_inputs(
    rb: &Runbook,
    supplied: Map<String, Value>,
) -> Result<Map<String, Value>, Vec<InputError>> {
    let mut errors = Vec::new();
    for name in supplied.keys() {
        if !rb.inputs.contains_key(name) {
            errors.push(InputError::Unknown {
                name: name.clone(),
                hint: did_you_mean(name, rb.inputs.keys().map(String::as_str)),
            });
        }
    }
    let mut out = Map::new();
    for (name, spec) in &rb.inputs {
        match supplied.get(name).filter(|v| !v.is_null()) {
            Some(v) => match check_value(spec, v.clone()) {
                Ok(v) => {
                    out.insert(name.clone(), v);
                }
                Err(problem) => errors.push(InputError::Invalid {
                    name: name.clone(),
                    problem,
                }),
            },
            None => match &spec.default {
                Some(d) => {
                    out.insert(name.clone(), d.clone());
                }
                None if spec.required => errors.push(InputError::Missing { name: name.clone() }),
                None => {}
            },
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

pub(crate) fn type_name(t: InputType) -> &'static str {
    match t {
        InputType::String => "string",
        InputType::Number => "number",
        InputType::Integer => "integer",
        InputType::Boolean => "boolean",
        InputType::Array => "array",
        InputType::Object => "object",
    }
}

/// What kind of JSON value `v` is, for messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Check (and where needed convert) one value against its declaration; the error says what
/// was wrong, without the input's name (callers add it).
pub(crate) fn check_value(spec: &InputSpec, v: Value) -> Result<Value, String> {
    let v = convert(spec.ty, v)?;
    let v = match (spec.ty, v) {
        (InputType::Array, Value::Array(items)) => match &spec.items {
            Some(item_spec) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        check_value(item_spec, item).map_err(|e| format!("item {}: {e}", i + 1))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            None => Value::Array(items),
        },
        (_, v) => v,
    };
    if let Some(allowed) = &spec.allowed {
        if !allowed.iter().any(|a| same_value(a, &v)) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Err(format!("{v} is not one of {}", list.join(", ")));
        }
    }
    if let (Some(format), Value::String(s)) = (&spec.format, &v) {
        check_format(format, s)?;
    }
    if let Some(x) = v.as_f64() {
        if let Some(min) = spec.minimum {
            if x < min {
                return Err(format!("{v} is less than the minimum {min}"));
            }
        }
        if let Some(max) = spec.maximum {
            if x > max {
                return Err(format!("{v} is more than the maximum {max}"));
            }
        }
    }
    Ok(v)
}

/// Formats the checker knows.
pub(crate) const FORMATS: &[&str] = &["email", "date-time", "uri"];

fn check_format(format: &str, s: &str) -> Result<(), String> {
    let ok = match format {
        "email" => is_email(s),
        "date-time" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "uri" => url::Url::parse(s).is_ok(),
        // Unknown formats are a validation error; at run time they check nothing.
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`{s}` is not a valid {format}"))
    }
}

/// A deliberately simple address check: `local@domain.tld`, no spaces, one `@`.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// Equality where `1` and `1.0` are the same number.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// Type check, converting strings (and integral floats for integers).
fn convert(ty: InputType, v: Value) -> Result<Value, String> {
    let want = type_name(ty);
    let wrong = |v: &Value| format!("expected {} {want}, got {}", article(want), describe(v));
    match (ty, v) {
        (InputType::String, v @ Value::String(_)) => Ok(v),
        (InputType::Number, v @ Value::Number(_)) => Ok(v),
        (InputType::Integer, Value::Number(n)) => {
            if n.is_i64() || n.is_u64() {
                Ok(Value::Number(n))
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Value::from(f as i64)),
                    _ => Err(wrong(&Value::Number(n))),
                }
            }
        }
        (InputType::Boolean, v @ Value::Bool(_)) => Ok(v),
        (InputType::Array, v @ Value::Array(_)) => Ok(v),
        (InputType::Object, v @ Value::Object(_)) => Ok(v),
        (InputType::String, v) => Err(wrong(&v)),
        (ty, Value::String(s)) => {
            let t = s.trim();
            let parsed = match ty {
                InputType::Boolean => match t {
                    "true" => Some(Value::Bool(true)),
                    "false" => Some(Value::Bool(false)),
                    _ => None,
                },
                InputType::Number => serde_json::from_str::<Value>(t)
                    .ok()
                    .filter(Value::is_number),
                InputType::Integer => t.parse::<i64>().ok().map(Value::from),
                InputType::Array | InputType::Object => {
                    serde_json::from_str::<Value>(t).ok().filter(|v| match ty {
                        InputType::Array => v.is_array(),
                        _ => v.is_object(),
                    })
                }
                InputType::String => None,
            };
            match parsed {
                Some(v) => convert(ty, v),
                None => Err(format!(
                    "expected {} {want}, got the string `{s}`",
                    article(want)
                )),
            }
        }
        (_, v) => Err(wrong(&v)),
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::String(s) => format!("the string `{s}`"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        other => {
            let kind = json_kind(other);
            format!("{} {kind} {other}", article(kind))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rb() -> Runbook {
        let v = json!({
            "version": 1, "name": "t", "steps": [],
            "inputs": {
                "alert_id": {"type": "string", "required": true},
                "subject_email": {"type": "string", "format": "email", "required": true},
                "device_serials": {"type": "array", "items": {"type": "string"}, "default": []},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
                "count": {"type": "integer"},
                "dry": {"type": "boolean"},
                "severity": {"type": "string", "enum": ["low", "high"]},
                "extra": {"type": "object"},
                "ports": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "when": {"type": "string", "format": "date-time"},
                "link": {"type": "string", "format": "uri"},
            }
        });
        serde_json::from_value(v).expect("model")
    }

    fn base() -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("alert_id".into(), json!("A-1"));
        m.insert("subject_email".into(), json!("x@example.com"));
        m
    }

    fn with(k: &str, v: Value) -> Result<Map<String, Value>, Vec<InputError>> {
        let mut m = base();
        m.insert(k.into(), v);
        resolve_inputs(&rb(), m)
    }

    fn invalid(k: &str, v: Value) -> String {
        match with(k, v) {
            Err(errs) => match &errs[..] {
                [InputError::Invalid { name, problem }] if name == k => problem.clone(),
                other => panic!("unexpected {other:?}"),
            },
            Ok(m) => panic!("accepted: {m:?}"),
        }
    }

    #[test]
    fn defaults_applied_and_optional_left_out() {
        let m = resolve_inputs(&rb(), base()).expect("valid");
        assert_eq!(m["device_serials"], json!([]));
        assert_eq!(m["confidence"], json!(0.5));
        assert!(!m.contains_key("count"));
        assert_eq!(m["alert_id"], json!("A-1"));
    }

    #[test]
    fn required_missing_and_unknown_reported_together() {
        let mut m = Map::new();
        m.insert("subjet_email".into(), json!("x@example.com"));
        m.insert("alert_id".into(), Value::Null);
        let errs = resolve_inputs(&rb(), m).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            vec![
                "unknown input `subjet_email`; did you mean `subject_email`?",
                "input `alert_id` is required",
                "input `subject_email` is required",
            ]
        );
        assert_eq!(errs[0].name(), "subjet_email");
    }

    #[test]
    fn strings_convert_when_they_parse() {
        assert_eq!(
            with("confidence", json!("0.9")).expect("ok")["confidence"],
            json!(0.9)
        );
        assert_eq!(with("count", json!("42")).expect("ok")["count"], json!(42));
        assert_eq!(with("dry", json!("true")).expect("ok")["dry"], json!(true));
        assert_eq!(
            with("device_serials", json!("[\"C02A\"]")).expect("ok")["device_serials"],
            json!(["C02A"])
        );
        assert_eq!(
            with("extra", json!("{\"a\":1}")).expect("ok")["extra"],
            json!({"a": 1})
        );
        assert_eq!(
            with("ports", json!(["22", 443])).expect("ok")["ports"],
            json!([22, 443])
        );
        assert!(invalid("count", json!("4.5")).contains("expected an integer"));
        assert!(invalid("dry", json!("maybe")).contains("expected a boolean"));
        assert!(invalid("device_serials", json!("C02A")).contains("expected an array"));
    }

    #[test]
    fn types() {
        assert!(invalid("alert_id", json!(5)).contains("expected a string, got an integer 5"));
        assert!(invalid("count", json!(1.5)).contains("expected an integer"));
        assert_eq!(with("count", json!(3.0)).expect("ok")["count"], json!(3));
        assert!(invalid("extra", json!([1])).contains("expected an object"));
        assert!(invalid("device_serials", json!([1])).contains("item 1: expected a string"));
    }

    #[test]
    fn enum_format_and_range() {
        assert!(invalid("severity", json!("medium")).contains("not one of \"low\", \"high\""));
        assert!(with("severity", json!("low")).is_ok());
        assert!(invalid("subject_email", json!("not-an-email")).contains("valid email"));
        assert!(invalid("subject_email", json!("a b@c.com")).contains("valid email"));
        assert!(invalid("when", json!("yesterday")).contains("valid date-time"));
        assert!(with("when", json!("2024-05-01T12:00:00Z")).is_ok());
        assert!(invalid("link", json!("no scheme")).contains("valid uri"));
        assert!(invalid("confidence", json!(1.5)).contains("more than the maximum 1"));
        assert!(invalid("confidence", json!(-0.1)).contains("less than the minimum 0"));
        assert!(invalid("ports", json!([0])).contains("item 1: 0 is less than the minimum 1"));
    }
}
