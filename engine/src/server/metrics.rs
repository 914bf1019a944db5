//! Prometheus metrics (`GET /metrics`, OpenMetrics text), owned by the server's state.
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `cordon_runs` | `state` | runs in the database by state (read at scrape time) |
//! | `cordon_step_duration_seconds` | `connector` | action steps, start to finish, by the type part of `uses` |
//! | `cordon_webhook_accepted_total` | `hook`, `deduplicated` | deliveries answered 202 (`false`) or 200 (`true`) |
//! | `cordon_webhook_rejected_total` | `hook`, `reason` | deliveries refused, by reason |
//! | `cordon_queue_depth` | | runs accepted by this process and waiting for an execution slot |
//! | `cordon_runs_executing` | | runs this process is executing now |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::exec::{Observer, Progress};
use crate::store::{RunStatus, Store, StoreError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorLabel {
    pub connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcceptedLabels {
    pub hook: String,
    pub deduplicated: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectedLabels {
    pub hook: String,
    pub reason: String,
}

fn step_histogram() -> Histogram {
    // 5 ms … ~82 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    runs: Family<StateLabel, Gauge>,
    pub step_duration: Family<ConnectorLabel, Histogram, fn() -> Histogram>,
    pub webhook_accepted: Family<AcceptedLabels, Counter>,
    pub webhook_rejected: Family<RejectedLabels, Counter>,
    pub queue_depth: Gauge,
    pub executing: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cordon");
        let runs = Family::<StateLabel, Gauge>::default();
        registry.register("runs", "Runs in the database by state", runs.clone());
        let step_duration: Family<ConnectorLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(step_histogram);
        registry.register_with_unit(
            "step_duration",
            "Action steps from start to finish, by connector type",
            prometheus_client::registry::Unit::Seconds,
            step_duration.clone(),
        );
        let webhook_accepted = Family::<AcceptedLabels, Counter>::default();
        registry.register(
            "webhook_accepted",
            "Webhook deliveries accepted (202) or answered as a repeat (200)",
            webhook_accepted.clone(),
        );
        let webhook_rejected = Family::<RejectedLabels, Counter>::default();
        registry.register(
            "webhook_rejected",
            "Webhook deliveries refused, by reason",
            webhook_rejected.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Runs accepted by this process and waiting for an execution slot",
            queue_depth.clone(),
        );
        let executing = Gauge::default();
        registry.register(
            "runs_executing",
            "Runs this process is executing now",
            executing.clone(),
        );
        Metrics {
            registry,
            runs,
            step_duration,
            webhook_accepted,
            webhook_rejected,
            queue_depth,
            executing,
        }
    }

    pub fn accepted(&self, hook: &str, deduplicated: bool) {
        self.webhook_accepted
            .get_or_create(&AcceptedLabels {
                hook: hook.to_string(),
                deduplicated: deduplicated.to_string(),
            })
            .inc();
    }

    pub fn rejected(&self, hook: &str, reason: &str) {
        self.webhook_rejected
            .get_or_create(&RejectedLabels {
                hook: hook.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The text exposition, with the run counts read now.
    pub async fn render(&self, store: &dyn Store) -> Result<String, StoreError> {
        let counts = store.run_counts().await?;
        for s in [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Waiting,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            let n = counts
                .iter()
                .find(|(st, _)| *st == s)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            self.runs
                .get_or_create(&StateLabel {
                    state: s.as_str().into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode metrics: {e}")))?;
        Ok(out)
    }
}

/// Times action steps for the latency histogram. One per execution of a run.
pub struct StepTimer {
    metrics: Arc<Metrics>,
    /// Action steps started: step id → when, and its connector type.
    started: Mutex<HashMap<String, (Instant, String)>>,
}

impl StepTimer {
    pub fn new(metrics: Arc<Metrics>) -> StepTimer {
        StepTimer {
            metrics,
            started: Mutex::new(HashMap::new()),
        }
    }
}

impl Observer for StepTimer {
    fn event(&self, event: Progress) {
        match event {
            Progress::StepStarted {
                step, connector, ..
            } => {
                if let Ok(mut m) = self.started.lock() {
                    m.insert(step, (Instant::now(), connector));
                }
            }
            Progress::StepFinished { step, .. } => {
                let began = self.started.lock().ok().and_then(|mut m| m.remove(&step));
                if let Some((began, connector)) = began {
                    self.metrics
                        .step_duration
                        .get_or_create(&ConnectorLabel { connector })
                        .observe(began.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }
}
