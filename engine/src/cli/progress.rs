//! Progress for a person: a live line per step on a terminal, plain lines otherwise.
//! Everything goes to stderr, so stdout stays for `run <id>` and `--json`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exec::{Observer, Progress};
use crate::store::StepStatus;

pub struct Display {
    live: Option<MultiProgress>,
    bars: Mutex<HashMap<String, (ProgressBar, Instant)>>,
    quiet: bool,
}

impl Display {
    /// Live bars when stderr is a terminal, plain lines otherwise; nothing when `quiet`.
    pub fn new(quiet: bool) -> Display {
        let live = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Display {
            live,
            bars: Mutex::new(HashMap::new()),
            quiet,
        }
    }

    fn line(&self, text: String) {
        if self.quiet {
            return;
        }
        match &self.live {
            Some(m) => {
                let _ = m.println(text);
            }
            None => {
                let mut e = std::io::stderr().lock();
                let _ = writeln!(e, "{text}");
            }
        }
    }

    fn bar(&self, step: &str, items: u32) {
        let Some(m) = &self.live else { return };
        let style =
            ProgressStyle::with_template("{spinner} {prefix:.bold} {msg} {pos}/{len} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let pb = m.add(ProgressBar::new(items as u64));
        pb.set_style(style);
        pb.set_prefix(step.to_string());
        pb.set_message("running");
        pb.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut b) = self.bars.lock() {
            b.insert(step.to_string(), (pb, Instant::now()));
        }
    }

    fn take(&self, step: &str) -> Option<(ProgressBar, Instant)> {
        self.bars.lock().ok().and_then(|mut b| b.remove(step))
    }
}

impl Observer for Display {
    fn event(&self, event: Progress) {
        match event {
            Progress::StepStarted { step, items, .. } => {
                if self.live.is_some() {
                    self.bar(&step, items);
                } else if items > 1 {
                    self.line(format!("▶ {step}: started ({items} items)"));
                } else {
                    self.line(format!("▶ {step}: started"));
                }
            }
            Progress::ItemFinished { step, .. } => {
                if let Ok(b) = self.bars.lock() {
                    if let Some((pb, _)) = b.get(&step) {
                        pb.inc(1);
                    }
                }
            }
            Progress::StepRetrying {
                step,
                idx,
                attempt,
                delay_ms,
                error,
            } => {
                let at = if idx > 0 {
                    format!(" [{idx}]")
                } else {
                    String::new()
                };
                self.line(format!(
                    "↻ {step}{at}: attempt {attempt} in {:.1}s after: {error}",
                    delay_ms as f64 / 1000.0
                ));
            }
            Progress::StepFinished {
                step,
                status,
                detail,
            } => {
                let took = self.take(&step).map(|(pb, t)| {
                    pb.finish_and_clear();
                    t.elapsed()
                });
                let mark = match status {
                    StepStatus::Succeeded => "✔",
                    StepStatus::Failed => "✘",
                    StepStatus::Skipped => "↷",
                    StepStatus::Cancelled => "■",
                    _ => "•",
                };
                let mut text = format!("{mark} {step}: {}", status.as_str());
                if let Some(t) = took {
                    text.push_str(&format!(" ({:.1}s)", t.as_secs_f64()));
                }
                if let Some(d) = detail {
                    text.push_str(&format!(": {d}"));
                }
                self.line(text);
            }
            Progress::Waiting { step, message } => {
                self.line(format!("⏸ {step}: waiting: {message}"));
            }
            Progress::Paused { step } => {
                self.line(format!(
                    "⏸ {step}: engine paused (`cordon unpause` to continue)"
                ));
            }
        }
    }
}
