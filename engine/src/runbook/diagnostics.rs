//! Located problems in a runbook, each with a stable code.
//!
//! A [`Diagnostic`] prints as `file:line:column: message [CODE]`, followed by `; hint` when
//! there is one, e.g.
//! ``runbooks/x.yaml:12:5: unknown key `neds` in step `suspend` [E103]; did you mean `needs`?``.
//! Lines and columns are 1-based: at the key for an unknown or missing key, at the value for
//! a bad value. Codes are stable so that people and tools can look them up ([`CODES`]).

use std::fmt;

use serde::Serialize;

/// One problem, where it is, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// Stable code, e.g. `E103`; see [`CODES`].
    pub code: &'static str,
    pub message: String,
    /// What to do, e.g. "did you mean `needs`?".
    pub hint: Option<String>,
    /// The step the problem is in, if any.
    pub step: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {} [{}]",
            self.file, self.line, self.column, self.message, self.code
        )?;
        if let Some(h) = &self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

/// Every diagnostic code and what it means.
pub const CODES: &[(&str, &str)] = &[
    ("E001", "the file is not valid YAML"),
    ("E002", "the file cannot be read"),
    ("E003", "the document is not a mapping"),
    ("E101", "a required key is missing"),
    ("E102", "a value has the wrong type"),
    ("E103", "unknown key"),
    ("E104", "unsupported format version"),
    ("E105", "malformed runbook name"),
    ("E110", "duplicate step id"),
    ("E111", "malformed step id"),
    (
        "E112",
        "a step needs exactly one of `uses`, `approval` or `task`",
    ),
    ("E120", "`needs` names an unknown step"),
    ("E121", "the steps' `needs` form a cycle"),
    ("E130", "unknown connector type"),
    ("E131", "unknown action"),
    ("E132", "malformed `uses` (want `<type>.<action>`)"),
    ("E133", "`with` key that the action does not take"),
    ("E134", "required `with` key missing"),
    ("E135", "unknown `undo` action"),
    ("E136", "`with` value of the wrong type for the action"),
    ("E138", "key that does not apply to this kind of step"),
    ("E140", "template syntax error"),
    ("E141", "CEL syntax error"),
    ("E142", "unknown template helper"),
    ("E150", "reference to an unknown step"),
    (
        "E151",
        "reference to a step that is not among the step's `needs`",
    ),
    ("E152", "reference to an undeclared input"),
    ("E153", "reference to an unknown variable"),
    (
        "E154",
        "reference to an unknown or unavailable `run` variable",
    ),
    ("E155", "loop variable used outside a `for_each` step"),
    ("E156", "malformed or misplaced `as`"),
    ("E157", "a step has only `output` and `status`"),
    ("E160", "malformed duration"),
    ("E161", "`retry.attempts` must be at least 1"),
    ("E162", "impossible approval quorum"),
    ("E163", "`max_parallel` must be at least 1"),
    ("E164", "a task needs at least one assignee"),
    ("E170", "`connector` names no configured instance"),
    ("E171", "`connector` names an instance of another type"),
    ("E172", "no configured instance of the connector type"),
    (
        "E173",
        "several instances of the connector type and no `connector`",
    ),
    (
        "E174",
        "several instances given for an action that runs on one",
    ),
    ("E180", "input `default` does not match the declared type"),
    ("E181", "input `enum` problem"),
    ("E182", "`items` on an input that is not an array"),
    ("E183", "unknown or misplaced input `format`"),
    ("E184", "input `minimum`/`maximum` problem"),
    ("E185", "malformed input name"),
    ("E190", "`notify.draft` names an unknown notification template"),
    (
        "E191",
        "a notification template does not render (front matter, syntax, a field not in the incident-facts schema, a helper)",
    ),
    (
        "E192",
        "`smtp.send_email` of a draft without an approval step among the steps it needs",
    ),
    (
        "E193",
        "`smtp.send_email` of a draft meant for an authority (counsel files those)",
    ),
    (
        "E194",
        "`smtp.send_email` with both `draft` and its own subject or body",
    ),
];

pub(crate) const E_YAML: &str = "E001";
pub(crate) const E_READ: &str = "E002";
pub(crate) const E_NOT_MAPPING: &str = "E003";
pub(crate) const E_MISSING_KEY: &str = "E101";
pub(crate) const E_TYPE: &str = "E102";
pub(crate) const E_UNKNOWN_KEY: &str = "E103";
pub(crate) const E_VERSION: &str = "E104";
pub(crate) const E_NAME: &str = "E105";
pub(crate) const E_DUP_ID: &str = "E110";
pub(crate) const E_BAD_ID: &str = "E111";
pub(crate) const E_STEP_KIND: &str = "E112";
pub(crate) const E_UNKNOWN_NEED: &str = "E120";
pub(crate) const E_CYCLE: &str = "E121";
pub(crate) const E_UNKNOWN_TYPE: &str = "E130";
pub(crate) const E_UNKNOWN_ACTION: &str = "E131";
pub(crate) const E_BAD_USES: &str = "E132";
pub(crate) const E_UNKNOWN_WITH: &str = "E133";
pub(crate) const E_MISSING_WITH: &str = "E134";
pub(crate) const E_UNKNOWN_UNDO: &str = "E135";
pub(crate) const E_WITH_TYPE: &str = "E136";
pub(crate) const E_NOT_APPLICABLE: &str = "E138";
pub(crate) const E_TEMPLATE: &str = "E140";
pub(crate) const E_CEL: &str = "E141";
pub(crate) const E_HELPER: &str = "E142";
pub(crate) const E_UNKNOWN_STEP_REF: &str = "E150";
pub(crate) const E_RACE: &str = "E151";
pub(crate) const E_UNKNOWN_INPUT: &str = "E152";
pub(crate) const E_UNKNOWN_VAR: &str = "E153";
pub(crate) const E_RUN_VAR: &str = "E154";
pub(crate) const E_LOOP_VAR: &str = "E155";
pub(crate) const E_AS: &str = "E156";
pub(crate) const E_STEP_FIELD: &str = "E157";
pub(crate) const E_DURATION: &str = "E160";
pub(crate) const E_ATTEMPTS: &str = "E161";
pub(crate) const E_QUORUM: &str = "E162";
pub(crate) const E_MAX_PARALLEL: &str = "E163";
pub(crate) const E_ASSIGNEES: &str = "E164";
pub(crate) const E_NO_INSTANCE_NAMED: &str = "E170";
pub(crate) const E_INSTANCE_TYPE: &str = "E171";
pub(crate) const E_NOT_CONFIGURED: &str = "E172";
pub(crate) const E_AMBIGUOUS_INSTANCE: &str = "E173";
pub(crate) const E_MANY_INSTANCES: &str = "E174";
pub(crate) const E_INPUT_DEFAULT: &str = "E180";
pub(crate) const E_INPUT_ENUM: &str = "E181";
pub(crate) const E_INPUT_ITEMS: &str = "E182";
pub(crate) const E_INPUT_FORMAT: &str = "E183";
pub(crate) const E_INPUT_RANGE: &str = "E184";
pub(crate) const E_INPUT_NAME: &str = "E185";
pub(crate) const E_UNKNOWN_TEMPLATE: &str = "E190";
pub(crate) const E_TEMPLATE_PROBLEM: &str = "E191";
pub(crate) const E_SEND_UNAPPROVED: &str = "E192";
pub(crate) const E_SEND_AUTHORITY: &str = "E193";
pub(crate) const E_SEND_DRAFT_AND_BODY: &str = "E194";

/// The closest candidate to `word`, when it is close enough to be a likely typo.
pub(crate) fn closest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "did you mean `x`?" for the closest candidate, if any.
pub(crate) fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_starts_with_location_and_has_code_and_hint() {
        let d = Diagnostic {
            file: "rb.yaml".into(),
            line: 3,
            column: 5,
            code: E_UNKNOWN_KEY,
            message: "unknown key `neds` in step `suspend`".into(),
            hint: Some("did you mean `needs`?".into()),
            step: Some("suspend".into()),
        };
        assert_eq!(
            d.to_string(),
            "rb.yaml:3:5: unknown key `neds` in step `suspend` [E103]; did you mean `needs`?"
        );
        let json = serde_json::to_value(&d).expect("serializable");
        assert_eq!(json["line"], 3);
        assert_eq!(json["code"], "E103");
    }

    #[test]
    fn hints_only_for_close_words() {
        let keys = ["needs", "uses", "with", "timeout"];
        assert_eq!(closest("neds", keys), Some("needs"));
        assert_eq!(closest("timout", keys), Some("timeout"));
        assert_eq!(closest("zzzzzz", keys), None);
        assert_eq!(closest("uses", keys), None);
    }

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for (c, _) in CODES {
            assert!(seen.insert(*c), "duplicate code {c}");
        }
    }
}
