//! What the filter and transform processors share: `error_mode`, compiling lists of text into
//! config errors with positions, and counting run-time errors.

use std::time::{Duration, Instant};

use oxeye_api::{ConfigErrors, Telemetry};
use serde::Deserialize;

use crate::{CompileError, Context};

/// What a run-time error in one record does (the Collector's `error_mode`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ErrorMode {
    /// Count it, log it (at most every 10 s), and go on as if the condition were false or the
    /// statement had not run.
    #[default]
    Ignore,
    /// Count it and go on, without logging.
    Silent,
    /// Count it and drop the whole batch (`dropped{reason="expression_error"}`), as the
    /// Collector drops the payload.
    Propagate,
}

/// Compiles every text in `texts` with `compile`, reporting each failure at `path[i]` with its
/// column; returns the compiled items only when all compiled.
pub fn compile_list<T>(
    texts: &[String],
    path: &str,
    context: Context,
    compile: fn(&str, Context) -> Result<T, CompileError>,
    errors: &mut ConfigErrors,
) -> Vec<T> {
    let mut out = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        match compile(text, context) {
            Ok(item) => out.push(item),
            Err(e) => errors.push_at(format!("{path}[{i}]"), e.offset, e.message),
        }
    }
    out
}

/// Counts run-time errors as `oxeye_<counter>_total{source=<component id>}` and logs them
/// (rate-limited) unless the mode is `silent`.
pub struct Errors {
    mode: ErrorMode,
    counter: &'static str,
    id: String,
    total: u64,
    unlogged: u64,
    last_log: Option<Instant>,
}

impl Errors {
    /// A counter exported as `oxeye_<counter>_total`.
    pub fn new(mode: ErrorMode, counter: &'static str, id: &str) -> Self {
        Errors {
            mode,
            counter,
            id: id.to_string(),
            total: 0,
            unlogged: 0,
            last_log: None,
        }
    }

    /// The mode.
    pub fn mode(&self) -> ErrorMode {
        self.mode
    }

    /// Records one error (`what` says which statement or condition).
    pub fn record(&mut self, what: &str, error: &dyn std::fmt::Display) {
        self.total += 1;
        self.unlogged += 1;
        if self.mode == ErrorMode::Silent {
            return;
        }
        let due = self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::warn!(
                component = %self.id,
                errors = self.unlogged,
                total = self.total,
                "`{what}`: {error} (error_mode: {:?})",
                self.mode
            );
            self.unlogged = 0;
            self.last_log = Some(Instant::now());
        }
    }

    /// Publishes the total.
    pub fn publish(&self, telemetry: &Telemetry) {
        if self.total > 0 {
            telemetry.set_counter(self.counter, &self.id, self.total);
        }
    }
}
