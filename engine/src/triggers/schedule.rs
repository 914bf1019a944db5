//! Schedules: the `schedules:` configuration, checked once at start, cron expressions in a
//! time zone, and the catch-up planner. Pure (no I/O): `crate::server::scheduler` claims
//! the fire times in the database and starts the runs.
//!
//! **Expressions.** Six or seven fields (`sec min hour day-of-month month day-of-week
//! [year]`) are read by the `cron` crate as they are: there, day of week 1 is Sunday and a
//! day must match both day fields. Five fields (`min hour day-of-month month day-of-week`)
//! and the nicknames `@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`,
//! `@yearly`/`@annually` have the standard (Vixie) cron meaning: day of week 0 or 7 is
//! Sunday, names (`JAN`–`DEC`, `SUN`–`SAT`, any case) may stand for numbers, a step
//! follows `*` or a range, and when both day fields are restricted (neither starts with
//! `*`) a day matching either fires. [`CronSpec::parse`] checks the five fields itself (each
//! error names the field), expands them to explicit values and hands the `cron` crate the
//! equivalent six-field expression, twice (day of month only, day of week only) for the
//! "either" case; the next fire time is the earlier of the two.
//!
//! **Time zones.** Fire times are wall-clock times in the schedule's IANA `timezone`
//! (default UTC). A wall-clock time that does not exist (the hour skipped when clocks
//! spring forward) is skipped: nothing fires for it. A wall-clock time that happens twice
//! (clocks fall back) fires once, at its first occurrence, when the hour field is
//! restricted (`30 1 * * *`); an expression that runs every hour (`*/15 * * * *`) fires at
//! every instant, the repeated hour included, since those are distinct times.
//!
//! **Catch-up.** [`plan`] decides what to do with the fire times that came due since the
//! last one handled: only the most recent is fired, and only if it is at most `catch_up`
//! old (default 1 h; a fire is always "on time" within 30 s); every other one is missed
//! (recorded as one `schedule.missed` audit event with the count and the first and last
//! time). Never a burst.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// How late a fire may still be made when `catch_up` is not set.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(3600);
/// A fire reached within this much of its time is on time, whatever `catch_up` says.
pub const ON_TIME: Duration = Duration::from_secs(30);
/// Missed fire times are counted up to this many (the audit event says when it stopped).
pub const MISSED_COUNT_CAP: u64 = 10_000;
/// Candidates the `cron` crate yields before a usable one (DST duplicates are skipped).
const SCAN: usize = 64;
/// The same, inside a repeated hour (up to two candidates per second of it).
const SCAN_REPEATED: usize = 3 * 3600;

/// One problem in `schedules:`, naming the schedule's index, its runbook and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    pub index: usize,
    pub runbook: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "schedules[{}]", self.index)?;
        if let Some(r) = &self.runbook {
            write!(f, " (runbook `{r}`)")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// A schedule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    runbook: String,
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    inputs: Map<String, Value>,
    #[serde(default)]
    catch_up: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct ScheduleDef {
    /// Its position in `schedules:`.
    pub index: usize,
    /// What the database knows it by: `name`, else `<runbook>@<hash of cron, timezone and
    /// inputs>` (change one of those and the schedule starts afresh).
    pub key: String,
    pub name: Option<String>,
    pub runbook: String,
    pub cron: CronSpec,
    /// Input values, as given (checked against the runbook when it is loaded).
    pub inputs: Map<String, Value>,
    pub catch_up: Duration,
}

impl ScheduleDef {
    /// `schedule:<runbook>`: the runs' trigger and starter.
    pub fn trigger(&self) -> String {
        format!("schedule:{}", self.runbook)
    }

    fn error(&self, field: &str, message: impl Into<String>) -> ScheduleError {
        ScheduleError {
            index: self.index,
            runbook: Some(self.runbook.clone()),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Check the inputs against the runbook (an error names the input).
    pub fn check_inputs(
        &self,
        runbook: &crate::runbook::validate::ValidatedRunbook,
    ) -> Result<(), ScheduleError> {
        crate::runbook::inputs::resolve_inputs(&runbook.runbook, self.inputs.clone())
            .map(|_| ())
            .map_err(|errs| {
                self.error(
                    "inputs",
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })
    }
}

/// Check every schedule (all problems at once). Keys must be distinct.
pub fn build_all(values: &[Value]) -> (Vec<ScheduleDef>, Vec<ScheduleError>) {
    let mut defs = Vec::new();
    let mut problems = Vec::new();
    let mut keys: std::collections::BTreeMap<String, usize> = Default::default();
    for (index, v) in values.iter().enumerate() {
        match build(index, v) {
            Ok(d) => {
                if let Some(first) = keys.get(&d.key) {
                    problems.push(d.error(
                        if d.name.is_some() { "name" } else { "" },
                        format!(
                            "the same schedule as schedules[{first}] (give each a distinct `name`)"
                        ),
                    ));
                } else {
                    keys.insert(d.key.clone(), index);
                    defs.push(d);
                }
            }
            Err(mut e) => problems.append(&mut e),
        }
    }
    (defs, problems)
}

fn build(index: usize, v: &Value) -> Result<ScheduleDef, Vec<ScheduleError>> {
    let runbook_hint = v.get("runbook").and_then(Value::as_str).map(str::to_string);
    let err = |field: &str, message: String| ScheduleError {
        index,
        runbook: runbook_hint.clone(),
        field: field.into(),
        message,
    };
    let raw: RawSchedule =
        serde_json::from_value(v.clone()).map_err(|e| vec![err("", e.to_string())])?;
    let mut problems = Vec::new();
    if raw.runbook.trim().is_empty() {
        problems.push(err("runbook", "must name a runbook".into()));
    }
    let tz = match raw.timezone.as_deref() {
        None => Some(Tz::UTC),
        Some(name) => match parse_timezone(name) {
            Ok(tz) => Some(tz),
            Err(m) => {
                problems.push(err("timezone", m));
                None
            }
        },
    };
    let cron = tz.and_then(|tz| match CronSpec::parse(&raw.cron, tz) {
        Ok(c) => Some(c),
        Err(m) => {
            problems.push(err("cron", m));
            None
        }
    });
    let catch_up = match raw.catch_up.as_deref() {
        None => Some(DEFAULT_CATCH_UP),
        Some(s) => match crate::duration::parse(s) {
            Ok(d) => Some(d),
            Err(m) => {
                problems.push(err("catch_up", format!("`{s}`: {m}")));
                None
            }
        },
    };
    if let Some(n) = &raw.name {
        let ok = !n.is_empty()
            && n.len() <= 100
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            problems.push(err(
                "name",
                format!("`{n}`: use 1 to 100 letters, digits, `-`, `_` or `.`"),
            ));
        }
    }
    match (cron, catch_up) {
        (Some(cron), Some(catch_up)) if problems.is_empty() => {
            let key = match &raw.name {
                Some(n) => n.clone(),
                None => {
                    let mut h = Sha256::new();
                    h.update(raw.cron.trim().as_bytes());
                    h.update([0]);
                    h.update(cron.timezone().name().as_bytes());
                    h.update([0]);
                    let canonical = serde_json_canonicalizer::to_string(&raw.inputs)
                        .unwrap_or_else(|_| Value::Object(raw.inputs.clone()).to_string());
                    h.update(canonical.as_bytes());
                    format!("{}@{}", raw.runbook, &hex::encode(h.finalize())[..12])
                }
            };
            Ok(ScheduleDef {
                index,
                key,
                name: raw.name,
                runbook: raw.runbook,
                cron,
                inputs: raw.inputs,
                catch_up,
            })
        }
        _ => Err(problems),
    }
}

/// An IANA zone name; a near miss is suggested.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    if let Ok(tz) = Tz::from_str(name) {
        return Ok(tz);
    }
    let best = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| {
            (
                strsim::jaro_winkler(&name.to_lowercase(), &tz.name().to_lowercase()),
                tz,
            )
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score > 0.85)
        .map(|(_, tz)| format!("; did you mean `{}`?", tz.name()))
        .unwrap_or_default();
    Err(format!(
        "`{name}` is not an IANA time zone name (such as `UTC`, `Europe/Berlin`, `America/New_York`){best}"
    ))
}

/// A cron expression in a time zone, ready to say when it fires.
#[derive(Debug, Clone)]
pub struct CronSpec {
    expression: String,
    tz: Tz,
    /// One schedule, or two whose union is the schedule (day of month OR day of week).
    parts: Vec<cron::Schedule>,
    /// The hour field is restricted: a wall-clock time that happens twice fires once.
    fixed_hours: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Unit {
    const ALL: [Unit; 5] = [
        Unit::Minute,
        Unit::Hour,
        Unit::DayOfMonth,
        Unit::Month,
        Unit::DayOfWeek,
    ];

    fn label(self) -> &'static str {
        match self {
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::DayOfMonth => "day of month",
            Unit::Month => "month",
            Unit::DayOfWeek => "day of week",
        }
    }

    /// Values as written (day of week: 0–7, both ends Sunday).
    fn bounds(self) -> (u32, u32) {
        match self {
            Unit::Minute => (0, 59),
            Unit::Hour => (0, 23),
            Unit::DayOfMonth => (1, 31),
            Unit::Month => (1, 12),
            Unit::DayOfWeek => (0, 7),
        }
    }

    /// What `*` covers.
    fn full(self) -> (u32, u32) {
        match self {
            Unit::DayOfWeek => (0, 6),
            other => other.bounds(),
        }
    }

    fn named(self, s: &str) -> Option<u32> {
        const MONTHS: [&str; 12] = [
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let s = s.to_ascii_lowercase();
        let pos = |list: &[&str]| list.iter().position(|n| *n == s).map(|i| i as u32);
        match self {
            Unit::Month => pos(&MONTHS).map(|i| i + 1),
            Unit::DayOfWeek => pos(&DAYS),
            _ => None,
        }
    }

    fn value(self, s: &str) -> Result<u32, String> {
        let (lo, hi) = self.bounds();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let v: u32 = s
                .parse()
                .map_err(|_| format!("`{s}` is out of range {lo}-{hi}"))?;
            if v < lo || v > hi {
                let extra = if self == Unit::DayOfWeek {
                    " (0 and 7 are Sunday)"
                } else {
                    ""
                };
                return Err(format!("`{s}` is out of range {lo}-{hi}{extra}"));
            }
            return Ok(v);
        }
        self.named(s).ok_or_else(|| match self {
            Unit::Month => format!("`{s}` is neither a number 1-12 nor a month name (JAN-DEC)"),
            Unit::DayOfWeek => {
                format!("`{s}` is neither a number 0-7 nor a day name (SUN-SAT)")
            }
            _ => format!("`{s}` is not a number"),
        })
    }

    /// The values a field allows (day of week: 0–6, Sunday 0).
    fn parse(self, text: &str) -> Result<BTreeSet<u32>, String> {
        let mut set = BTreeSet::new();
        for item in text.split(',') {
            if item.is_empty() {
                return Err(format!("`{text}` has an empty list item"));
            }
            let (base, step) = match item.split_once('/') {
                Some((b, s)) => {
                    let step: u32 = s.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        format!("`{item}`: the step `{s}` is not a number of at least 1")
                    })?;
                    (b, Some(step))
                }
                None => (item, None),
            };
            let (lo, hi) = if base == "*" {
                self.full()
            } else if let Some((a, b)) = base.split_once('-') {
                let (lo, hi) = (self.value(a)?, self.value(b)?);
                if lo > hi {
                    return Err(format!("the range `{base}` runs backwards"));
                }
                (lo, hi)
            } else {
                let v = self.value(base)?;
                if let Some(step) = step {
                    return Err(format!(
                        "`{item}`: a step follows `*` or a range; write `{base}-{}/{step}`",
                        self.bounds().1
                    ));
                }
                (v, v)
            };
            let step = step.unwrap_or(1) as usize;
            for v in (lo..=hi).step_by(step) {
                set.insert(if self == Unit::DayOfWeek { v % 7 } else { v });
            }
        }
        Ok(set)
    }
}

/// `*` for a full set, else the values joined with commas (`shift` added to each).
fn crate_field(set: &BTreeSet<u32>, unit: Unit, shift: u32) -> String {
    let (lo, hi) = unit.full();
    if set.len() as u32 == hi - lo + 1 {
        return "*".into();
    }
    set.iter()
        .map(|v| (v + shift).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The five-field form of a nickname.
fn nickname(s: &str) -> Result<&'static str, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@reboot" => return Err("`@reboot` has no meaning for a service; use a time".into()),
        _ => {
            return Err(format!(
                "`{s}` is not a nickname (@hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually)"
            ))
        }
    })
}

fn crate_schedule(expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| format!("`{expr}`: {e}"))
}

impl CronSpec {
    /// Read an expression (five fields with standard cron meaning, or six/seven as the
    /// `cron` crate reads them) in zone `tz`. The error names the field.
    pub fn parse(expression: &str, tz: Tz) -> Result<CronSpec, String> {
        let trimmed = expression.trim();
        let five: String;
        let text = if trimmed.starts_with('@') {
            five = nickname(trimmed)?.to_string();
            five.as_str()
        } else {
            trimmed
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let (parts, fixed_hours) = match fields.len() {
            5 => {
                let mut sets = Vec::with_capacity(5);
                for (i, (unit, f)) in Unit::ALL.iter().zip(&fields).enumerate() {
                    let set = unit
                        .parse(f)
                        .map_err(|m| format!("field {} ({}): {m}", i + 1, unit.label()))?;
                    sets.push(set);
                }
                let [min, hour, dom, month, dow] = [&sets[0], &sets[1], &sets[2], &sets[3], &sets[4]];
                let m = crate_field(min, Unit::Minute, 0);
                let h = crate_field(hour, Unit::Hour, 0);
                let dm = crate_field(dom, Unit::DayOfMonth, 0);
                let mo = crate_field(month, Unit::Month, 0);
                // The crate counts days of the week from 1 = Sunday.
                let dw = crate_field(dow, Unit::DayOfWeek, 1);
                let dom_star = fields[2].starts_with('*');
                let dow_star = fields[4].starts_with('*');
                let parts = if dom_star || dow_star {
                    vec![crate_schedule(&format!("0 {m} {h} {dm} {mo} {dw}"))?]
                } else {
                    // Both restricted: a day matching either fires.
                    vec![
                        crate_schedule(&format!("0 {m} {h} {dm} {mo} *"))?,
                        crate_schedule(&format!("0 {m} {h} * {mo} {dw}"))?,
                    ]
                };
                (parts, h != "*")
            }
            6 | 7 => {
                let s = cron::Schedule::from_str(text).map_err(|e| e.to_string())?;
                use cron::TimeUnitSpec;
                let fixed = !s.hours().is_all();
                (vec![s], fixed)
            }
            n => {
                return Err(format!(
                    "`{trimmed}` has {n} fields; write five (minute hour day-of-month month day-of-week), or six or seven with seconds first"
                ))
            }
        };
        let spec = CronSpec {
            expression: trimmed.to_string(),
            tz,
            parts,
            fixed_hours,
        };
        if spec.next_after(Utc::now()).is_none() {
            return Err(format!("`{trimmed}` never fires (from now on)"));
        }
        Ok(spec)
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// A wall-clock time that happens twice fires only at its first occurrence when the
    /// hours are restricted.
    fn allowed(&self, c: &DateTime<Tz>) -> bool {
        if !self.fixed_hours {
            return true;
        }
        match self.tz.from_local_datetime(&c.naive_local()) {
            LocalResult::Ambiguous(_, later) => later != *c,
            _ => true,
        }
    }

    /// When `t`'s wall-clock time happens twice (clocks fell back): whether `t` is the
    /// first occurrence, and how far apart the two are.
    fn twin(&self, t: DateTime<Utc>) -> Option<(bool, TimeDelta)> {
        match self
            .tz
            .from_local_datetime(&t.with_timezone(&self.tz).naive_local())
        {
            LocalResult::Ambiguous(earlier, later) => Some((
                earlier.with_timezone(&Utc) == t,
                later.with_timezone(&Utc) - earlier.with_timezone(&Utc),
            )),
            _ => None,
        }
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // The crate searches forward in wall-clock time, so from the first pass through a
        // repeated hour it would never come back to that hour's second pass: start it one
        // repetition earlier, before the repeated hour, and keep the earliest instant after
        // `t` among what it yields (instants run back by at most `slack` there).
        let (start, slack, scan) = match self.twin(t) {
            Some((true, shift)) => (t - shift, shift, SCAN_REPEATED),
            _ => (t, TimeDelta::zero(), SCAN),
        };
        let local = start.with_timezone(&self.tz);
        self.parts
            .iter()
            .filter_map(|p| {
                let mut best: Option<DateTime<Utc>> = None;
                for c in p.after(&local).take(scan) {
                    let u = c.with_timezone(&Utc);
                    if best.is_some_and(|b| u > b + slack) {
                        break;
                    }
                    if u > t && self.allowed(&c) && best.is_none_or(|b| u < b) {
                        best = Some(u);
                    }
                }
                best
            })
            .min()
    }

    /// The last fire time at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Mirror of `next_after`: from the second pass through a repeated hour, search back
        // from after it so that the first pass is seen too.
        let (start, slack, scan) = match self.twin(t) {
            Some((false, shift)) => (t + shift, shift, SCAN_REPEATED),
            _ => (t, TimeDelta::zero(), SCAN),
        };
        let from = (start + TimeDelta::seconds(1)).with_timezone(&self.tz);
        self.parts
            .iter()
            .filter_map(|p| {
                let mut best: Option<DateTime<Utc>> = None;
                for c in p.after(&from).rev().take(scan) {
                    let u = c.with_timezone(&Utc);
                    if best.is_some_and(|b| u < b - slack) {
                        break;
                    }
                    if u <= t && self.allowed(&c) && best.is_none_or(|b| u > b) {
                        best = Some(u);
                    }
                }
                best
            })
            .max()
    }

    /// The next `n` fire times after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }
}

/// Fire times that came due and were not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    /// How many (at most [`MISSED_COUNT_CAP`]).
    pub count: u64,
    /// The count stopped at the cap.
    pub capped: bool,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

/// What to do with the fire times due since the last one handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The fire time to make now: the most recent one, if within the catch-up window.
    pub fire: Option<DateTime<Utc>>,
    pub missed: Option<Missed>,
    /// The most recent due fire time: everything up to it is handled once this is done.
    pub through: DateTime<Utc>,
}

/// Fire times due in (`after`, `now`], and what to do with them: the most recent is fired
/// if it is at most `catch_up` (or [`ON_TIME`]) old, the others are missed. None when
/// nothing is due.
pub fn plan(
    spec: &CronSpec,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
    catch_up: Duration,
) -> Option<Due> {
    let latest = spec.latest_at_or_before(now)?;
    if latest <= after {
        return None;
    }
    let window = TimeDelta::from_std(catch_up.max(ON_TIME)).unwrap_or(TimeDelta::MAX);
    let fire = (now - latest <= window).then_some(latest);
    let missed_until = match fire {
        Some(f) => spec.latest_at_or_before(f - TimeDelta::seconds(1)),
        None => Some(latest),
    };
    let missed = missed_until.filter(|m| *m > after).and_then(|last| {
        let first = spec.next_after(after)?;
        let mut count = 0;
        let mut at = after;
        let mut capped = false;
        while let Some(t) = spec.next_after(at) {
            if t > last {
                break;
            }
            if count == MISSED_COUNT_CAP {
                capped = true;
                break;
            }
            count += 1;
            at = t;
        }
        Some(Missed {
            count,
            capped,
            first,
            last,
        })
    });
    Some(Due {
        fire,
        missed,
        through: latest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn spec(expr: &str) -> CronSpec {
        CronSpec::parse(expr, Tz::UTC).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    fn next_n(expr: &str, tz: Tz, from: &str, n: usize) -> Vec<String> {
        CronSpec::parse(expr, tz)
            .unwrap()
            .upcoming(utc(from), n)
            .into_iter()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect()
    }

    #[test]
    fn weekdays_at_nine() {
        // 2026-03-06 is a Friday.
        assert_eq!(
            next_n("0 9 * * 1-5", Tz::UTC, "2026-03-06T08:00:00Z", 3),
            [
                "2026-03-06T09:00:00Z",
                "2026-03-09T09:00:00Z",
                "2026-03-10T09:00:00Z"
            ]
        );
        // Names mean the same, in any case.
        assert_eq!(
            next_n("0 9 * * mon-FRI", Tz::UTC, "2026-03-06T08:00:00Z", 3),
            next_n("0 9 * * 1-5", Tz::UTC, "2026-03-06T08:00:00Z", 3)
        );
    }

    #[test]
    fn every_fifteen_minutes() {
        assert_eq!(
            next_n("*/15 * * * *", Tz::UTC, "2026-03-06T08:07:30Z", 4),
            [
                "2026-03-06T08:15:00Z",
                "2026-03-06T08:30:00Z",
                "2026-03-06T08:45:00Z",
                "2026-03-06T09:00:00Z"
            ]
        );
        assert_eq!(
            next_n("10-40/15 * * * *", Tz::UTC, "2026-03-06T08:00:00Z", 4),
            [
                "2026-03-06T08:10:00Z",
                "2026-03-06T08:25:00Z",
                "2026-03-06T08:40:00Z",
                "2026-03-06T09:10:00Z"
            ]
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // The 1st of each month, and every Sunday. March 2026: Sundays 1, 8, 15, 22, 29;
        // April 1st is a Wednesday, April 5th a Sunday.
        assert_eq!(
            next_n("0 0 1 * 0", Tz::UTC, "2026-02-27T00:00:00Z", 7),
            [
                "2026-03-01T00:00:00Z",
                "2026-03-08T00:00:00Z",
                "2026-03-15T00:00:00Z",
                "2026-03-22T00:00:00Z",
                "2026-03-29T00:00:00Z",
                "2026-04-01T00:00:00Z",
                "2026-04-05T00:00:00Z"
            ]
        );
        // A field starting with `*` is unrestricted: then both must match (Vixie cron), so
        // `*/2` days of month that are Mondays.
        assert_eq!(
            next_n("0 0 */2 * 1", Tz::UTC, "2026-03-01T00:00:00Z", 3),
            [
                "2026-03-09T00:00:00Z",
                "2026-03-23T00:00:00Z",
                "2026-04-13T00:00:00Z"
            ]
        );
        // Day of month alone.
        assert_eq!(
            next_n("0 0 1 * *", Tz::UTC, "2026-02-27T00:00:00Z", 2),
            ["2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"]
        );
    }

    #[test]
    fn seven_and_zero_are_sunday() {
        let zero = next_n("0 12 * * 0", Tz::UTC, "2026-03-02T00:00:00Z", 3);
        assert_eq!(
            zero,
            [
                "2026-03-08T12:00:00Z",
                "2026-03-15T12:00:00Z",
                "2026-03-22T12:00:00Z"
            ]
        );
        assert_eq!(
            next_n("0 12 * * 7", Tz::UTC, "2026-03-02T00:00:00Z", 3),
            zero
        );
        assert_eq!(
            next_n("0 12 * * SUN", Tz::UTC, "2026-03-02T00:00:00Z", 3),
            zero
        );
        // Friday to Sunday, through 7.
        assert_eq!(
            next_n("0 12 * * 5-7", Tz::UTC, "2026-03-02T00:00:00Z", 4),
            [
                "2026-03-06T12:00:00Z",
                "2026-03-07T12:00:00Z",
                "2026-03-08T12:00:00Z",
                "2026-03-13T12:00:00Z"
            ]
        );
        // `*/2` over the week is Sunday, Tuesday, Thursday, Saturday.
        assert_eq!(
            next_n("0 12 * * */2", Tz::UTC, "2026-03-02T00:00:00Z", 4),
            [
                "2026-03-03T12:00:00Z",
                "2026-03-05T12:00:00Z",
                "2026-03-07T12:00:00Z",
                "2026-03-08T12:00:00Z"
            ]
        );
    }

    #[test]
    fn month_names_lists_and_nicknames() {
        assert_eq!(
            next_n("30 6 1 jan,Jul *", Tz::UTC, "2026-03-01T00:00:00Z", 2),
            ["2026-07-01T06:30:00Z", "2027-01-01T06:30:00Z"]
        );
        assert_eq!(
            next_n("@weekly", Tz::UTC, "2026-03-02T00:00:00Z", 1),
            ["2026-03-08T00:00:00Z"]
        );
        assert_eq!(
            next_n("@daily", Tz::UTC, "2026-03-02T10:00:00Z", 1),
            ["2026-03-03T00:00:00Z"]
        );
    }

    #[test]
    fn six_and_seven_fields_are_the_crates() {
        assert_eq!(
            next_n("*/20 * * * * *", Tz::UTC, "2026-03-02T10:00:05Z", 3),
            [
                "2026-03-02T10:00:20Z",
                "2026-03-02T10:00:40Z",
                "2026-03-02T10:01:00Z"
            ]
        );
        // In the crate's form, day of week 1 is Sunday.
        assert_eq!(
            next_n("0 0 12 * * 1", Tz::UTC, "2026-03-02T00:00:00Z", 1),
            ["2026-03-08T12:00:00Z"]
        );
        assert_eq!(
            next_n("0 0 0 1 1 * 2030", Tz::UTC, "2026-03-02T00:00:00Z", 1),
            ["2030-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = |expr: &str| CronSpec::parse(expr, Tz::UTC).unwrap_err();
        assert!(
            e("0 9 * * 8").contains("field 5 (day of week): `8` is out of range 0-7"),
            "{}",
            e("0 9 * * 8")
        );
        assert!(e("60 * * * *").contains("field 1 (minute): `60` is out of range 0-59"));
        assert!(e("0 24 * * *").contains("field 2 (hour)"));
        assert!(e("0 0 0 * *").contains("field 3 (day of month): `0` is out of range 1-31"));
        assert!(e("0 0 * 13 *").contains("field 4 (month)"));
        assert!(e("0 0 * FOO *").contains("month name"));
        assert!(e("0 0 * * FUN").contains("day name"));
        assert!(
            e("5/15 * * * *").contains("write `5-59/15`"),
            "{}",
            e("5/15 * * * *")
        );
        assert!(e("*/0 * * * *").contains("step"));
        assert!(e("10-5 * * * *").contains("runs backwards"));
        assert!(e("1,,2 * * * *").contains("empty list item"));
        assert!(e("* * * *").contains("4 fields"));
        assert!(e("@reboot").contains("@reboot"));
        assert!(e("0 0 30 2 *").contains("never fires"));
        assert!(!e("0 0 0 0 0 0").is_empty(), "the crate's own error");
    }

    #[test]
    fn spring_forward_skips_the_missing_time() {
        let ny = Tz::America__New_York;
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
        assert_eq!(
            next_n("30 2 * * *", ny, "2026-03-07T12:00:00Z", 3),
            // 02:30 EDT on the 9th and after: the 8th has no 02:30.
            [
                "2026-03-09T06:30:00Z",
                "2026-03-10T06:30:00Z",
                "2026-03-11T06:30:00Z"
            ]
        );
        // Every 30 minutes runs on through the change with no gap in real time.
        assert_eq!(
            next_n("*/30 * * * *", ny, "2026-03-08T06:15:00Z", 3),
            [
                "2026-03-08T06:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T07:30:00Z"
            ]
        );
    }

    #[test]
    fn fall_back_fires_a_repeated_time_once_unless_every_hour() {
        let ny = Tz::America__New_York;
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens at 05:30Z and 06:30Z.
        assert_eq!(
            next_n("30 1 * * *", ny, "2026-10-31T12:00:00Z", 3),
            [
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z",
                "2026-11-03T06:30:00Z"
            ]
        );
        // Every hour: both 01:30s, since they are an hour apart.
        assert_eq!(
            next_n("30 * * * *", ny, "2026-11-01T04:00:00Z", 4),
            [
                "2026-11-01T04:30:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T07:30:00Z"
            ]
        );
        // Starting inside the repeated hour (01:10 EST, the second pass), the next 01:30 is
        // 01:30 EST, not the earlier 01:30 EDT.
        assert_eq!(
            next_n("*/20 * * * *", ny, "2026-11-01T06:10:00Z", 2),
            ["2026-11-01T06:20:00Z", "2026-11-01T06:40:00Z"]
        );
        // From the middle of the first pass (01:45 EDT), the next 01:30 is the second one.
        assert_eq!(
            next_n("30 * * * *", ny, "2026-11-01T05:45:00Z", 2),
            ["2026-11-01T06:30:00Z", "2026-11-01T07:30:00Z"]
        );
        // And back from the second pass (01:10 EST), the last 01:30 is the first one.
        let hourly = CronSpec::parse("30 * * * *", ny).unwrap();
        assert_eq!(
            hourly.latest_at_or_before(utc("2026-11-01T06:10:00Z")),
            Some(utc("2026-11-01T05:30:00Z"))
        );
        // Every second through the repeated hour: one fire per real second.
        let secs = CronSpec::parse("* * * * * *", ny).unwrap();
        let t = utc("2026-11-01T05:59:58Z");
        assert_eq!(
            secs.upcoming(t, 4),
            ["05:59:59", "06:00:00", "06:00:01", "06:00:02"]
                .iter()
                .map(|s| utc(&format!("2026-11-01T{s}Z")))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            secs.latest_at_or_before(utc("2026-11-01T06:00:01.5Z")),
            Some(utc("2026-11-01T06:00:01Z"))
        );
        assert_eq!(
            secs.next_after(utc("2026-11-01T05:30:00Z")),
            Some(utc("2026-11-01T05:30:01Z"))
        );
        // Looking back from after the change finds the first 01:30 for a fixed hour.
        let s = CronSpec::parse("30 1 * * *", ny).unwrap();
        assert_eq!(
            s.latest_at_or_before(utc("2026-11-01T12:00:00Z")),
            Some(utc("2026-11-01T05:30:00Z"))
        );
    }

    #[test]
    fn zones_shift_fire_times() {
        assert_eq!(
            next_n("0 9 * * *", Tz::Asia__Tokyo, "2026-03-02T00:00:00Z", 2),
            ["2026-03-03T00:00:00Z", "2026-03-04T00:00:00Z"]
        );
        assert!(parse_timezone("Europe/Berln")
            .unwrap_err()
            .contains("did you mean `Europe/Berlin`"));
        assert!(parse_timezone("Nowhere").is_err());
    }

    #[test]
    fn latest_at_or_before_is_inclusive() {
        let s = spec("*/15 * * * *");
        assert_eq!(
            s.latest_at_or_before(utc("2026-03-02T10:15:00Z")),
            Some(utc("2026-03-02T10:15:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(utc("2026-03-02T10:14:59.999Z")),
            Some(utc("2026-03-02T10:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-03-02T10:15:00Z")),
            Some(utc("2026-03-02T10:30:00Z"))
        );
        // The union form looks back across both parts.
        let u = spec("0 0 1 * 0");
        assert_eq!(
            u.latest_at_or_before(utc("2026-04-04T00:00:00Z")),
            Some(utc("2026-04-01T00:00:00Z"))
        );
    }

    #[test]
    fn plan_fires_on_time_and_nothing_twice() {
        let s = spec("*/15 * * * *");
        let d = plan(
            &s,
            utc("2026-03-02T10:00:00Z"),
            utc("2026-03-02T10:15:00.200Z"),
            DEFAULT_CATCH_UP,
        )
        .unwrap();
        assert_eq!(d.fire, Some(utc("2026-03-02T10:15:00Z")));
        assert_eq!(d.missed, None);
        assert_eq!(d.through, utc("2026-03-02T10:15:00Z"));
        // Once handled, nothing is due until the next time.
        assert_eq!(
            plan(&s, d.through, utc("2026-03-02T10:29:59Z"), DEFAULT_CATCH_UP),
            None
        );
    }

    #[test]
    fn plan_catches_up_once_for_the_most_recent_within_the_window() {
        let s = spec("*/15 * * * *");
        // Down from 10:00 to 10:50: 10:15, 10:30 and 10:45 came due; 10:45 is 5 min old.
        let d = plan(
            &s,
            utc("2026-03-02T10:00:00Z"),
            utc("2026-03-02T10:50:00Z"),
            DEFAULT_CATCH_UP,
        )
        .unwrap();
        assert_eq!(d.fire, Some(utc("2026-03-02T10:45:00Z")));
        assert_eq!(
            d.missed,
            Some(Missed {
                count: 2,
                capped: false,
                first: utc("2026-03-02T10:15:00Z"),
                last: utc("2026-03-02T10:30:00Z"),
            })
        );
        // With a 2-minute window, 10:45 is too old: all three are missed.
        let d = plan(
            &s,
            utc("2026-03-02T10:00:00Z"),
            utc("2026-03-02T10:50:00Z"),
            Duration::from_secs(120),
        )
        .unwrap();
        assert_eq!(d.fire, None);
        assert_eq!(d.missed.as_ref().map(|m| m.count), Some(3));
        assert_eq!(d.through, utc("2026-03-02T10:45:00Z"));
        // `catch_up: 0s` still fires what is reached within 30 s.
        let d = plan(
            &s,
            utc("2026-03-02T10:00:00Z"),
            utc("2026-03-02T10:15:10Z"),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(d.fire, Some(utc("2026-03-02T10:15:00Z")));
    }

    #[test]
    fn plan_counts_a_long_outage_up_to_the_cap() {
        let s = spec("* * * * * *");
        let d = plan(
            &s,
            utc("2026-03-02T00:00:00Z"),
            utc("2026-03-03T00:00:00Z"),
            DEFAULT_CATCH_UP,
        )
        .unwrap();
        assert_eq!(d.fire, Some(utc("2026-03-03T00:00:00Z")));
        let m = d.missed.unwrap();
        assert_eq!((m.count, m.capped), (MISSED_COUNT_CAP, true));
        assert_eq!(m.first, utc("2026-03-02T00:00:01Z"));
        assert_eq!(m.last, utc("2026-03-02T23:59:59Z"));
    }

    #[test]
    fn schedules_are_checked_with_every_problem_named() {
        let (defs, problems) = build_all(&[
            json!({"runbook": "sweep", "cron": "*/15 * * * *"}),
            json!({"runbook": "sweep", "cron": "0 9 * * 8", "timezone": "Mars/Base"}),
            json!({"runbook": "other", "cron": "0 9 * * 1", "catch_up": "soon", "bogus": 1}),
            json!({"runbook": "other", "cron": "0 9 * * 1", "catch_up": "10m", "timezone": "Europe/Berln"}),
            json!({"runbook": "sweep", "cron": "*/15 * * * *"}),
            json!({"runbook": "sweep", "cron": "*/15 * * * *", "inputs": {"x": 1}, "name": "has space"}),
        ]);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(defs.len(), 1, "{text:#?}");
        assert_eq!(defs[0].catch_up, DEFAULT_CATCH_UP);
        assert_eq!(defs[0].cron.timezone(), Tz::UTC);
        assert!(defs[0].key.starts_with("sweep@"));
        let has = |needle: &str| {
            assert!(
                text.iter().any(|t| t.contains(needle)),
                "no `{needle}` in {text:#?}"
            )
        };
        has("schedules[1] (runbook `sweep`): timezone: `Mars/Base` is not an IANA time zone");
        has("schedules[2] (runbook `other`): unknown field `bogus`");
        has("schedules[3] (runbook `other`): timezone: `Europe/Berln`");
        has("schedules[4] (runbook `sweep`): the same schedule as schedules[0]");
        has("schedules[5] (runbook `sweep`): name: `has space`");
        let (_, p) = build_all(&[json!({"runbook": "r", "cron": "0 9 * * 8"})]);
        assert_eq!(
            p[0].to_string(),
            "schedules[0] (runbook `r`): cron: field 5 (day of week): `8` is out of range 0-7 (0 and 7 are Sunday)"
        );
        let (_, p) = build_all(&[json!({"runbook": "r", "cron": "* * * * *", "catch_up": "soon"})]);
        assert!(
            p[0].to_string()
                .starts_with("schedules[0] (runbook `r`): catch_up: `soon`"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn keys_are_stable_and_depend_on_what_fires() {
        let key = |v: Value| build_all(&[v]).0.remove(0).key;
        let a = key(json!({"runbook": "s", "cron": "*/15 * * * *", "inputs": {"a": 1, "b": 2}}));
        assert_eq!(
            a,
            key(json!({"runbook": "s", "cron": "*/15 * * * *", "inputs": {"b": 2, "a": 1}}))
        );
        assert_eq!(
            a,
            key(
                json!({"runbook": "s", "cron": "*/15 * * * *", "inputs": {"a": 1, "b": 2}, "catch_up": "5m"})
            )
        );
        assert_ne!(
            a,
            key(json!({"runbook": "s", "cron": "*/10 * * * *", "inputs": {"a": 1, "b": 2}}))
        );
        assert_ne!(
            a,
            key(
                json!({"runbook": "s", "cron": "*/15 * * * *", "timezone": "Europe/Paris", "inputs": {"a": 1, "b": 2}})
            )
        );
        assert_eq!(
            key(json!({"runbook": "s", "cron": "* * * * *", "name": "nightly"})),
            "nightly"
        );
    }
}
