//! Counting what an exporter queued until each record is settled: delivered, dropped for a
//! reason, or — at the shutdown deadline — dropped as `shutdown_deadline`, exactly once.

use std::sync::Mutex;

use oxeye_api::Telemetry;

#[derive(Default)]
struct State {
    outstanding: u64,
    abandoned: bool,
}

/// Records accepted by `export` and not yet settled. Settling and abandoning take the same
/// lock, so a record is counted exactly once.
pub struct Ledger {
    state: Mutex<State>,
    telemetry: Telemetry,
}

impl Ledger {
    pub fn new(telemetry: Telemetry) -> Ledger {
        Ledger {
            state: Mutex::default(),
            telemetry,
        }
    }

    /// `n` more records queued.
    pub fn add(&self, n: u64) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .outstanding += n;
    }

    /// Settles `n` records: `delivered` of them are out, the rest dropped for `reason`.
    pub fn settle(&self, n: u64, delivered: u64, reason: &'static str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.abandoned {
            return; // already counted as dropped at the deadline
        }
        s.outstanding = s.outstanding.saturating_sub(n);
        self.telemetry.add_emitted(delivered);
        self.telemetry.add_dropped(reason, n - delivered);
    }

    /// At the shutdown deadline: everything unsettled is dropped; returns how much.
    pub fn abandon(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.abandoned = true;
        let n = std::mem::take(&mut s.outstanding);
        self.telemetry.add_dropped("shutdown_deadline", n);
        n
    }
}
