//! Crash points for the fault-injection tests: a testing aid, never a feature.
//!
//! The crash-safety promise ("a `kill -9` at any moment loses no run and repeats no succeeded
//! step") is tested by killing the real binary at named moments. Code calls
//! [`point`]`("name")` where a crash matters; the point does nothing unless this process was
//! started with the environment variable
//!
//! ```text
//! CORDON_FAULT=<point>:<n>        e.g. CORDON_FAULT=http.after_response:3
//! ```
//!
//! in which case the process sends itself SIGKILL the `n`-th time (counted from 1, per
//! process) it reaches `<point>`: no destructor, no flush, no graceful anything, exactly what
//! `kill -9` or a power loss leaves behind. The variable is read once; it cannot be set from
//! the configuration file or over HTTP. Unset, a point costs one atomic load. A malformed
//! value is reported once on stderr and arms nothing.
//!
//! The points:
//!
//! | point | where |
//! | --- | --- |
//! | `http.before_send` | a request to a vendor is built; nothing has been sent (the vendor never sees it) |
//! | `http.after_response` | the vendor's whole response has been read (the vendor saw the request); nothing of it is stored |
//! | `step.before_start_commit` / `step.after_start_commit` | around the commit that marks items `running` (before their calls) |
//! | `step.before_commit` / `step.after_commit` | around the commit that stores items' results |
//! | `step.before_retry_commit` / `step.after_retry_commit` | around the commit of a further attempt, before its call |
//! | `run.before_finish_commit` / `run.after_finish_commit` | around the commit that finishes a run |
//!
//! One commit can hold several of these (a step's result and the next step's start are
//! committed together); its points are reached in the order of the table, results first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub const ENV: &str = "CORDON_FAULT";

struct Armed {
    point: String,
    at: u64,
    reached: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

fn armed() -> Option<&'static Armed> {
    ARMED
        .get_or_init(|| {
            let value = std::env::var(ENV).ok()?;
            match parse(&value) {
                Ok((point, at)) => Some(Armed {
                    point,
                    at,
                    reached: AtomicU64::new(0),
                }),
                Err(why) => {
                    eprintln!("{ENV}={value:?} ignored: {why}");
                    None
                }
            }
        })
        .as_ref()
}

/// True when a crash point is armed in this process (callers skip work that only serves
/// the points).
#[inline]
pub fn is_armed() -> bool {
    armed().is_some()
}

/// Reach the crash point `name`: SIGKILL this process if it is the armed point and this is
/// the armed count; otherwise nothing.
#[inline]
pub fn point(name: &str) {
    if let Some(a) = armed() {
        reach(a, name);
    }
}

#[cold]
fn reach(a: &Armed, name: &str) {
    if a.point != name {
        return;
    }
    let n = a.reached.fetch_add(1, Ordering::SeqCst) + 1;
    if n == a.at {
        eprintln!("{ENV}: SIGKILL at {name} (reached {n} times)");
        // SAFETY: sends a signal to this very process; SIGKILL cannot be caught.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL is delivered before kill(2) returns to a process signalling itself; never
        // go on as if nothing happened should it not be.
        loop {
            std::thread::park();
        }
    }
}

/// `<point>:<n>` with `n` ≥ 1.
fn parse(value: &str) -> Result<(String, u64), String> {
    let (point, n) = value
        .trim()
        .rsplit_once(':')
        .ok_or("expected <point>:<n>, e.g. http.after_response:3")?;
    if point.is_empty()
        || !point
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    {
        return Err(format!("`{point}` is not a crash point name"));
    }
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{n}` is not a count (1, 2, …)"))?;
    if n == 0 {
        return Err("the count starts at 1".into());
    }
    Ok((point.to_string(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_point_and_count() {
        assert_eq!(
            parse("http.after_response:3"),
            Ok(("http.after_response".to_string(), 3))
        );
        assert_eq!(
            parse(" step.before_commit:1 "),
            Ok(("step.before_commit".to_string(), 1))
        );
        assert!(parse("http.after_response").is_err());
        assert!(parse("http.after_response:0").is_err());
        assert!(parse("http.after_response:x").is_err());
        assert!(parse(":2").is_err());
        assert!(parse("a b:2").is_err());
    }

    #[test]
    fn an_unarmed_or_other_point_does_nothing() {
        let a = Armed {
            point: "x.y".into(),
            at: 2,
            reached: AtomicU64::new(0),
        };
        reach(&a, "x.z");
        assert_eq!(a.reached.load(Ordering::SeqCst), 0);
        reach(&a, "x.y");
        assert_eq!(a.reached.load(Ordering::SeqCst), 1);
        // Unarmed in the test process (the variable is not set by `cargo test`).
        if std::env::var_os(ENV).is_none() {
            point("x.y");
            assert!(!is_armed());
        }
    }
}
