//! `notify_waiting` in `cordon serve`: sends the queued notices that a step waits.
//!
//! Every second it lists due notices (`waiting_notices`, queued by the commit that made
//! the step wait, in any process sharing the database), claims each one (an `UPDATE … WHERE
//! status = 'pending'`, so one process gets it), checks that the step still waits, sends
//! the message ([`crate::notify::waiting`]) and settles the notice with its audit event
//! (`notify.waiting_sent`, or `notify.waiting_failed`) in one transaction. A sent notice is
//! never sent again, whatever restarts. A failure is logged and audited and never touches
//! the run; a transient one (timeout, 429, 5xx) is tried again later, up to
//! [`MAX_ATTEMPTS`] in all. A process killed between sending and settling leaves its claim,
//! which another process takes over after [`STALE_CLAIM`]: that notice may then be
//! delivered twice (for email with the same `Message-ID`).
//!
//! Shutdown: the loop stops between notices; a send in flight finishes (it is bounded by
//! the connector's timeout).

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::exec::Engine;
use crate::notify::waiting::{compose, send, NotifyWaiting, SendContext};
use crate::store::{AuditDraft, NoticeOutcome, RunStatus, StepStatus, StoreError, WaitingNotice};

/// How often due notices are looked for.
pub const POLL: Duration = Duration::from_secs(1);
/// A claim older than this belongs to a process that died mid-send.
pub const STALE_CLAIM: Duration = Duration::from_secs(300);
/// Attempts at one notice before giving up.
pub const MAX_ATTEMPTS: u32 = 5;
/// Notices handled per pass.
const BATCH: u32 = 50;

pub struct Notifier {
    engine: Engine,
    cfg: NotifyWaiting,
    /// `public_url`, checked, without a trailing slash.
    public_url: Option<String>,
}

/// Wait before attempt `n + 1`: 10 s, 20 s, 40 s, … (at least what the vendor asked).
fn backoff(attempt: u32, asked: Option<Duration>) -> Duration {
    let base = Duration::from_secs(10 * 2u64.pow(attempt.saturating_sub(1).min(10)));
    base.max(asked.unwrap_or_default())
}

impl Notifier {
    pub fn new(engine: Engine, cfg: NotifyWaiting, public_url: Option<String>) -> Notifier {
        Notifier {
            engine,
            cfg,
            public_url,
        }
    }

    /// Send what is due until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = token.cancelled() => return,
            }
            if let Err(e) = self.pass(&token).await {
                tracing::warn!(error = %e, "cannot look for waiting notices; retrying");
            }
        }
    }

    /// One pass over the due notices; returns how many this process handled.
    pub async fn pass(&self, token: &CancellationToken) -> Result<usize, StoreError> {
        let store = self.engine.store();
        let now = Utc::now();
        let stale = now - TimeDelta::from_std(STALE_CLAIM).unwrap_or(TimeDelta::MAX);
        let (now_s, stale_s) = (crate::time::format(now), crate::time::format(stale));
        let due = store.due_notices(&now_s, &stale_s, BATCH).await?;
        let mut handled = 0;
        for n in due {
            if token.is_cancelled() {
                break;
            }
            let owner = &self.engine.inner.owner;
            let Some(attempt) = store.claim_notice(&n.id, owner, &now_s, &stale_s).await? else {
                continue; // another process took it
            };
            handled += 1;
            let (outcome, audit) = self.deliver(&n, attempt).await;
            if !store.settle_notice(&n.id, owner, outcome, audit).await? {
                tracing::warn!(notice = %n.id, "a waiting notice's claim was taken over before it was settled");
            }
        }
        Ok(handled)
    }

    async fn deliver(
        &self,
        n: &WaitingNotice,
        attempt: u32,
    ) -> (NoticeOutcome, Option<AuditDraft>) {
        let store = self.engine.store();
        let redactor = &self.engine.inner.redactor;
        let (run, steps) = match (store.get_run(&n.run_id).await, store.steps(&n.run_id).await) {
            (Ok(Some(run)), Ok(steps)) => (run, steps),
            (Ok(None), _) => return (NoticeOutcome::Skipped("the run is gone".into()), None),
            (Err(e), _) | (_, Err(e)) => {
                let next = Utc::now() + TimeDelta::seconds(10);
                return (
                    NoticeOutcome::Retry {
                        next_at: crate::time::format(next),
                        error: e.to_string(),
                    },
                    None,
                );
            }
        };
        let step = steps.into_iter().find(|s| s.step_id == n.step_id);
        let Some(step) = step.filter(|s| {
            s.status == StepStatus::Waiting
                && matches!(run.status, RunStatus::Running | RunStatus::Waiting)
        }) else {
            tracing::debug!(run_id = %n.run_id, step = %n.step_id, "the step no longer waits; no notice");
            return (
                NoticeOutcome::Skipped("the step no longer waits".into()),
                None,
            );
        };
        let msg = compose(&run, &step, self.public_url.as_deref(), redactor);
        let key = format!("notify-waiting/{}", n.id);
        let sent = send(
            &self.cfg,
            &self.engine.inner.registry,
            &msg,
            SendContext {
                idempotency_key: &key,
                run_id: &run.id,
                step_id: &step.step_id,
                attempt,
            },
        )
        .await;
        let event = |action: &str, details: serde_json::Value| AuditDraft {
            run_id: Some(run.id.clone()),
            actor: "system:notify".into(),
            action: action.into(),
            details,
        };
        match sent {
            Ok(_) => {
                tracing::info!(run_id = %run.id, step = %step.step_id, connector = %self.cfg.connector, "told that the run waits");
                (
                    NoticeOutcome::Sent,
                    Some(event(
                        "notify.waiting_sent",
                        json!({
                            "step": step.step_id,
                            "connector": self.cfg.connector,
                            "link": msg.link,
                            "attempt": attempt,
                        }),
                    )),
                )
            }
            Err(e) => {
                let error = redactor.redact_str(&e.to_string());
                let retry = e.is_transient() && attempt < MAX_ATTEMPTS;
                tracing::warn!(run_id = %run.id, step = %step.step_id, connector = %self.cfg.connector,
                    attempt, will_retry = retry, error = %error, "cannot tell that the run waits");
                let audit = event(
                    "notify.waiting_failed",
                    json!({
                        "step": step.step_id,
                        "connector": self.cfg.connector,
                        "attempt": attempt,
                        "will_retry": retry,
                        "error": error,
                    }),
                );
                let outcome = if retry {
                    let wait = backoff(attempt, e.retry_after());
                    let next = Utc::now() + TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX);
                    NoticeOutcome::Retry {
                        next_at: crate::time::format(next),
                        error,
                    }
                } else {
                    NoticeOutcome::Failed(error)
                };
                (outcome, Some(audit))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_honours_the_vendor() {
        assert_eq!(backoff(1, None), Duration::from_secs(10));
        assert_eq!(backoff(3, None), Duration::from_secs(40));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(90))),
            Duration::from_secs(90)
        );
        assert!(backoff(200, None) <= Duration::from_secs(10 * 1024));
    }
}
