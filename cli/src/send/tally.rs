//! How the sends of one `keel send` ended: a line per answer, a progress line while
//! they come in, the summary and the exit status.

use crate::output::{json, print_json};
use keel_client::{ClientError, SendStatus};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Exit status when some sends have an unknown outcome (they may be stored).
pub(crate) const EXIT_UNKNOWN: u8 = 3;

/// Which input an answer belongs to: one message, or a batch of several.
#[derive(Clone, Copy)]
pub(super) struct Inputs {
    pub first: u64,
    pub last: u64,
}

impl Inputs {
    pub fn one(input: u64) -> Inputs {
        Inputs {
            first: input,
            last: input,
        }
    }
}

impl std::fmt::Display for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.first == self.last {
            true => write!(f, "input {}", self.first),
            false => write!(f, "inputs {}-{}", self.first, self.last),
        }
    }
}

#[derive(Default)]
pub(super) struct Tally {
    pub sent: u64,
    pub ok: u64,
    /// Stored, but not as durably as asked: FLUSH_DISK_TIMEOUT and the like, by name.
    pub other: BTreeMap<&'static str, u64>,
    pub failed: u64,
    pub unknown: u64,
    progress: Option<Progress>,
}

/// The progress line of a long `keel send`.
struct Progress {
    /// How many messages there are, when known before they are read.
    total: Option<u64>,
    started: Instant,
    shown: Instant,
    interval: Duration,
    /// Rewrite one line in place (a terminal), rather than a line each time.
    in_place: bool,
    drawn: bool,
}

impl Tally {
    /// A tally with a progress line when asked (`asked`: at that interval), or one in
    /// place when stderr is a terminal and stdout is not (on one screen, the answers'
    /// own lines are the progress).
    pub fn new(total: Option<u64>, asked: Option<Duration>) -> Tally {
        use std::io::IsTerminal;
        let in_place = std::io::stderr().is_terminal() && !std::io::stdout().is_terminal();
        let interval = asked.or(in_place.then_some(Duration::from_secs(1)));
        let now = Instant::now();
        Tally {
            progress: interval.map(|interval| Progress {
                total,
                started: now,
                shown: now,
                interval,
                in_place,
                drawn: false,
            }),
            ..Tally::default()
        }
    }

    /// Shows the progress line when its interval has passed since the last.
    fn show_progress(&mut self) {
        let answered = self.sent;
        let trouble = self.failed + self.unknown + self.other.values().sum::<u64>();
        let Some(progress) = &mut self.progress else {
            return;
        };
        let done = progress.total.is_some_and(|total| answered >= total);
        if progress.shown.elapsed() < progress.interval || done {
            return;
        }
        progress.shown = Instant::now();
        let rate = answered as f64 / progress.started.elapsed().as_secs_f64().max(1e-3);
        let of = match progress.total {
            Some(total) => format!(
                "{answered}/{total} answered ({:.0}%)",
                answered as f64 * 100.0 / total.max(1) as f64
            ),
            None => format!("{answered} answered"),
        };
        let line = format!("keel send: {of}, {rate:.0} msg/s, {trouble} not SEND_OK");
        if progress.in_place {
            eprint!("\r\x1b[K{line}");
            progress.drawn = true;
        } else {
            eprintln!("{line}");
        }
    }

    /// Clears an in-place progress line before a line of its own or the summary.
    pub fn end_progress(&mut self) {
        if let Some(progress) = self.progress.as_mut().filter(|p| p.drawn) {
            eprint!("\r\x1b[K");
            progress.drawn = false;
        }
    }

    /// Counts (and prints the trouble of) the answer for `count` messages.
    pub fn answer(
        &mut self,
        inputs: Inputs,
        count: u64,
        outcome: Result<SendStatus, &ClientError>,
    ) {
        if outcome.is_err() {
            // Its line goes below the progress line, not into it.
            self.end_progress();
        }
        self.sent += count;
        match outcome {
            Ok(SendStatus::SendOk) => self.ok += count,
            Ok(SendStatus::OutcomeUnknown) => self.unknown += count,
            Ok(status) => *self.other.entry(status.name()).or_default() += count,
            Err(error) if error.is_outcome_unknown() => {
                self.unknown += count;
                print_unknown(inputs, count, &error.to_string());
            }
            Err(error) => self.refused(inputs, count, error),
        }
        self.show_progress();
    }

    /// A piece of input that was never sent (unreadable, too large, not JSON...).
    pub fn not_sent(&mut self, input: u64, error: &ClientError) {
        self.end_progress();
        self.refused(Inputs::one(input), 1, error);
    }

    fn refused(&mut self, inputs: Inputs, count: u64, error: &ClientError) {
        self.failed += count;
        match json() {
            true => print_json(&serde_json::json!({
                "status": "ERROR", "stored": false, "messages": count, "input": inputs.first,
                "error_code": error.code_name(), "error": error.to_string(),
            })),
            false => eprintln!("ERROR (not stored) {inputs}: {error}"),
        }
    }

    /// Sends still unanswered when `keel send` stopped waiting: they may be stored.
    pub fn unanswered(&mut self, inputs: Inputs, count: u64, why: &str) {
        self.end_progress();
        self.sent += count;
        self.unknown += count;
        print_unknown(inputs, count, why);
    }

    pub fn summary(&self) -> String {
        let mut parts = vec![
            format!("sent {}", self.sent),
            format!("SEND_OK {}", self.ok),
        ];
        parts.extend(
            self.other
                .iter()
                .map(|(name, count)| format!("{name} {count}")),
        );
        parts.push(format!("failed {}", self.failed));
        parts.push(format!("unknown {}", self.unknown));
        parts.join(", ")
    }

    /// 3 when an outcome is unknown, 1 when something was not stored (or stored
    /// without SEND_OK), else 128 + the signal that interrupted the run, else 0.
    pub fn exit_code(&self, interrupted: Option<i32>) -> ExitCode {
        if self.unknown > 0 {
            ExitCode::from(EXIT_UNKNOWN)
        } else if self.failed > 0 || !self.other.is_empty() {
            ExitCode::FAILURE
        } else if let Some(signal) = interrupted {
            ExitCode::from(128u8.saturating_add(signal.clamp(0, 127) as u8))
        } else {
            ExitCode::SUCCESS
        }
    }
}

fn print_unknown(inputs: Inputs, count: u64, why: &str) {
    match json() {
        true => print_json(&serde_json::json!({
            "status": "UNKNOWN", "stored": null, "messages": count, "input": inputs.first,
            "error": why,
        })),
        false => eprintln!("UNKNOWN {inputs}: {why}"),
    }
}
