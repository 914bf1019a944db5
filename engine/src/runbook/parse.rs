//! Reading a runbook's YAML, with locations. The only module that touches `serde_yaml`
//! (archived upstream; keeping it behind one file keeps a later swap small).
//!
//! Two readers, two roles: `serde_yaml` is the authority on what the document means (syntax
//! errors, the values, the final [`Runbook`]); `marked-yaml` is only used to find where each
//! key and value sits, so that every diagnostic can point at a line and column. If the
//! location reader cannot follow a document that `serde_yaml` accepts (anchors, tags), the
//! diagnostics fall back to the nearest located parent, or 1:1.

use std::collections::HashMap;

use marked_yaml::{LoaderOptions, Node};
use serde_json::Value;

use super::model::Runbook;

/// A 1-based position in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };
}

/// Where each node sits, by JSON pointer (`/steps/0/with/url`).
#[derive(Debug, Default)]
pub(crate) struct Spans {
    /// pointer → (position of the key, if the node is a mapping value; position of the value)
    map: HashMap<String, (Option<Pos>, Pos)>,
}

impl Spans {
    /// The key of `ptr` (for unknown or missing keys); the value's position for list items.
    pub fn key(&self, ptr: &str) -> Pos {
        match self.map.get(ptr) {
            Some((Some(k), _)) => *k,
            Some((None, v)) => *v,
            None => self.parent(ptr),
        }
    }

    /// The value at `ptr` (for bad values).
    pub fn value(&self, ptr: &str) -> Pos {
        match self.map.get(ptr) {
            Some((_, v)) => *v,
            None => self.parent(ptr),
        }
    }

    /// Whether a node was located at `ptr`.
    pub fn contains(&self, ptr: &str) -> bool {
        self.map.contains_key(ptr)
    }

    fn parent(&self, ptr: &str) -> Pos {
        match ptr.rfind('/') {
            Some(i) => self.value(&ptr[..i]),
            None => Pos::START,
        }
    }
}

/// The pointer of `key` under `ptr` (RFC 6901 escaping).
pub(crate) fn child(ptr: &str, key: &str) -> String {
    let mut s = String::with_capacity(ptr.len() + key.len() + 1);
    s.push_str(ptr);
    s.push('/');
    for c in key.chars() {
        match c {
            '~' => s.push_str("~0"),
            '/' => s.push_str("~1"),
            c => s.push(c),
        }
    }
    s
}

/// A problem found while reading the YAML.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParseProblem {
    pub pos: Pos,
    pub message: String,
}

/// The document as JSON, and where its parts are.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub doc: Value,
    pub spans: Spans,
}

/// Parse `source` as YAML into JSON values, with locations.
pub(crate) fn parse(source: &str) -> Result<Parsed, ParseProblem> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(source).map_err(|e| {
        let mut problem = yaml_problem(&e);
        // serde_yaml places duplicate keys at the document start; the location reader can
        // say where the second one is.
        if problem.message.contains("duplicate entry") {
            let opts = LoaderOptions::default().error_on_duplicate_keys(true);
            if let Err(marked_yaml::LoadError::DuplicateKey(d)) =
                marked_yaml::parse_yaml_with_options(0, source, opts)
            {
                if let Some(m) = d.key.span().start() {
                    problem.pos = Pos {
                        line: m.line(),
                        column: m.column(),
                    };
                }
            }
        }
        problem
    })?;
    let spans = spans(source);
    let doc = to_json(yaml, "", &spans)?;
    Ok(Parsed { doc, spans })
}

/// Deserialize the runbook model from `source` (the authoritative reading, used once the
/// validator has found no problem).
pub(crate) fn runbook_from_yaml(source: &str) -> Result<Runbook, ParseProblem> {
    serde_yaml::from_str(source).map_err(|e| yaml_problem(&e))
}

fn yaml_problem(e: &serde_yaml::Error) -> ParseProblem {
    let pos = e
        .location()
        .map(|l| Pos {
            line: l.line().max(1),
            column: l.column().max(1),
        })
        .unwrap_or(Pos::START);
    // serde_yaml appends " at line X column Y" to its message; we print our own location.
    let mut message = e.to_string();
    if let Some(i) = message.find(" at line ") {
        let rest = &message[i..];
        let tail = rest
            .find(", ")
            .map(|j| rest[j..].to_owned())
            .unwrap_or_default();
        message = format!("{}{}", &message[..i], tail);
    }
    ParseProblem { pos, message }
}

fn to_json(v: serde_yaml::Value, ptr: &str, spans: &Spans) -> Result<Value, ParseProblem> {
    use serde_yaml::Value as Y;
    let problem = |message: String| ParseProblem {
        pos: spans.value(ptr),
        message,
    };
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| problem(format!("`{n}` is not a finite number")))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| to_json(item, &child(ptr, &i.to_string()), spans))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = serde_json::Map::with_capacity(m.len());
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".to_owned(),
                    _ => return Err(problem("mapping keys must be plain scalars".to_owned())),
                };
                let value = to_json(v, &child(ptr, &key), spans)?;
                out.insert(key, value);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            return Err(problem(format!(
                "YAML tags such as `{}` are not supported in runbooks",
                t.tag
            )))
        }
    })
}

/// Locations of every key and value, as far as the location reader can follow.
fn spans(source: &str) -> Spans {
    let mut spans = Spans::default();
    if let Ok(node) = marked_yaml::parse_yaml_with_options(0, source, LoaderOptions::default()) {
        record(&node, "", None, &mut spans);
    }
    spans
}

fn pos_of(m: Option<&marked_yaml::Marker>) -> Option<Pos> {
    m.map(|m| Pos {
        line: m.line(),
        column: m.column(),
    })
}

fn record(node: &Node, ptr: &str, key: Option<Pos>, spans: &mut Spans) {
    let mut value = pos_of(node.span().start());
    match node {
        Node::Mapping(m) => {
            // A block mapping's span starts after its first key; its first key is where a
            // reader sees it begin.
            let first_key = m.keys().filter_map(|k| pos_of(k.span().start())).min();
            if let Some(fk) = first_key {
                value = Some(value.map_or(fk, |v| v.min(fk)));
            }
            for (k, v) in m.iter() {
                let kp = pos_of(k.span().start());
                record(v, &child(ptr, k.as_str()), kp, spans);
            }
        }
        Node::Sequence(s) => {
            for (i, item) in s.iter().enumerate() {
                record(item, &child(ptr, &i.to_string()), None, spans);
            }
        }
        Node::Scalar(_) => {}
    }
    if let Some(v) = value.or(key) {
        spans.map.insert(ptr.to_owned(), (key, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_located() {
        let e = parse("version: 1\nsteps: [a, b\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, column: 1 });
        assert!(e.message.contains("did not find expected"), "{}", e.message);
        // The primary location is ours; serde_yaml's context ("while parsing … at line 2")
        // stays because it helps.
        assert!(!e.message.contains("at line 3"), "{}", e.message);
    }

    #[test]
    fn duplicate_key_located_at_second_key() {
        let e = parse("version: 1\nname: a\nname: b\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, column: 1 });
        assert!(e.message.contains("duplicate"), "{}", e.message);
    }

    #[test]
    fn spans_for_keys_and_values() {
        let src = "version: 1\nsteps:\n  - id: x\n    with: { user: y }\n  - id: z\n";
        let p = parse(src).expect("parses");
        assert_eq!(p.spans.key("/version"), Pos { line: 1, column: 1 });
        assert_eq!(
            p.spans.value("/version"),
            Pos {
                line: 1,
                column: 10
            }
        );
        assert_eq!(p.spans.key("/steps/0/id"), Pos { line: 3, column: 5 });
        assert_eq!(p.spans.value("/steps/0/id"), Pos { line: 3, column: 9 });
        assert_eq!(p.spans.value("/steps/0"), Pos { line: 3, column: 5 });
        assert_eq!(
            p.spans.key("/steps/0/with/user"),
            Pos {
                line: 4,
                column: 13
            }
        );
        assert_eq!(
            p.spans.value("/steps/0/with/user"),
            Pos {
                line: 4,
                column: 19
            }
        );
        assert_eq!(p.spans.value("/steps/1/id"), Pos { line: 5, column: 9 });
        // Unknown pointers fall back to the nearest parent.
        assert_eq!(
            p.spans.key("/steps/0/with/nope"),
            Pos {
                line: 4,
                column: 11
            }
        );
        assert_eq!(p.doc["steps"][0]["with"]["user"], "y");
    }

    #[test]
    fn pointer_escaping() {
        assert_eq!(child("/with", "a/b~c"), "/with/a~1b~0c");
        let p = parse("with:\n  a/b: 1\n").expect("parses");
        assert_eq!(
            p.spans.key(&child("/with", "a/b")),
            Pos { line: 2, column: 3 }
        );
    }

    #[test]
    fn tags_and_odd_numbers_are_problems() {
        assert!(parse("a: !include x.yaml\n").is_err());
        assert!(parse("a: .nan\n").is_err());
        let p = parse("1: x\ntrue: y\n").expect("parses");
        assert_eq!(p.doc["1"], "x");
        assert_eq!(p.doc["true"], "y");
    }
}
