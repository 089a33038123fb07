//! The loops the engine runs around processors and exporters: input, ticks, flush, output,
//! counting, decoding encoded batches for the components that need it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oxeye_api::{Batch, BoxError, Exporter, Hold, Output, Processor, Telemetry};
use tokio::sync::mpsc;
use tracing::error;

use super::edge::{send_all, Edge, InFlight, Inputs, Item};
use super::graph::Control;

/// A stage's timer: the first tick one interval after start; a late tick is not made up for.
fn ticker(every: Option<Duration>) -> Option<tokio::time::Interval> {
    every.filter(|d| !d.is_zero()).map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

/// The next input (`Some(Some)`), the end of input (`Some(None)`) or a tick (`None`).
async fn next(
    inputs: &mut Inputs,
    ticker: &mut Option<tokio::time::Interval>,
) -> Option<Option<Item>> {
    match ticker.as_mut() {
        Some(t) => tokio::select! {
            b = inputs.recv() => Some(b),
            _ = t.tick() => None,
        },
        None => Some(inputs.recv().await),
    }
}

/// A batch of encoded spans (an OTLP receiver's, see [`oxeye_api::EncodedSpans`]) decoded for a
/// component that takes spans. The receiver checked every span, so decoding does not fail; if it
/// ever did, the spans are counted as dropped (`undecodable`), never lost silently.
fn decoded(batch: Arc<Batch>, telemetry: &Telemetry) -> Option<Arc<Batch>> {
    if !batch.is_encoded() {
        return Some(batch);
    }
    let n = batch.len();
    match Batch::decoded(batch) {
        Ok(b) => {
            telemetry.add_dropped("undecodable", n.saturating_sub(b.len()) as u64);
            Some(b)
        }
        Err(why) => {
            error!("encoded spans the receiver accepted cannot be decoded: {why}");
            telemetry.add_dropped("undecodable", n as u64);
            None
        }
    }
}

/// A processor as its loop owns it. If the loop ends before the processor was flushed — it
/// failed, or was abandoned at the deadline — the records it still holds (open traces, open
/// windows) count as dropped, `held_at_stop`: nothing is lost silently.
struct Owned {
    p: Box<dyn Processor>,
    telemetry: Telemetry,
    flushed: bool,
    /// What it held before the batch being processed (that batch counts as
    /// `component_stopped`: what it took of it is not counted twice).
    held_before: u64,
    /// Records of the batch being processed.
    in_process: u64,
}

impl Owned {
    /// Its `held()`, 0 if that panics (never a panic while unwinding from another).
    fn held(&self) -> u64 {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.p.held())).unwrap_or(0)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.flushed {
            let held = self.held();
            let taken_from_batch = held.saturating_sub(self.held_before).min(self.in_process);
            self.telemetry
                .add_dropped("held_at_stop", held - taken_from_batch);
        }
    }
}

/// Batches a processor pushed before its call failed: never sent, counted as dropped.
fn count_unsent(out: &mut Output, telemetry: &Telemetry) {
    let n: usize = out.take().iter().map(|b| b.len()).sum();
    telemetry.add_dropped("component_stopped", n as u64);
}

pub(super) async fn run_processor(
    p: Box<dyn Processor>,
    mut inputs: Inputs,
    mut outputs: Vec<Edge>,
    mut control: mpsc::UnboundedReceiver<Control>,
    telemetry: Telemetry,
) -> Result<(), BoxError> {
    let takes_encoded = p.takes_encoded();
    let mut ticker = ticker(p.tick_interval());
    let mut owned = Owned {
        p,
        telemetry: telemetry.clone(),
        flushed: false,
        held_before: 0,
        in_process: 0,
    };
    let mut out = Output::new();
    let mut control_open = true;
    loop {
        // Control ahead of data: a rewiring applies before the next batch is taken.
        let step = tokio::select! {
            biased;
            c = control.recv(), if control_open => match c {
                Some(Control::SetOutputs(new)) => {
                    outputs = new;
                    continue;
                }
                None => {
                    control_open = false;
                    continue;
                }
            },
            step = next(&mut inputs, &mut ticker) => step,
        };
        // What the input kept alive stays alive beside what the processor made of it.
        let mut hold: Option<Hold> = None;
        match step {
            Some(Some(item)) => {
                telemetry.add_received(item.batch.len() as u64);
                hold = item.hold;
                let batch = if takes_encoded {
                    item.batch
                } else {
                    match decoded(item.batch, &telemetry) {
                        Some(b) => b,
                        None => continue,
                    }
                };
                let in_flight = InFlight::new(&telemetry, batch.len());
                owned.held_before = owned.held();
                owned.in_process = batch.len() as u64;
                if let Err(e) = owned.p.process(batch, &mut out).await {
                    // The batch counts as `component_stopped`; what it held besides it, as
                    // `held_at_stop` (`in_process` keeps them apart).
                    count_unsent(&mut out, &telemetry);
                    return Err(e);
                }
                owned.in_process = 0;
                in_flight.done();
            }
            Some(None) => break,
            None => {
                if let Err(e) = owned.p.tick(SystemTime::now(), &mut out).await {
                    count_unsent(&mut out, &telemetry);
                    return Err(e);
                }
            }
        }
        send_all(&mut out, &outputs, &telemetry, hold.as_ref()).await;
    }
    // What `flush` pushes leaves what it held: count it from `out` if the flush fails.
    let flushed = owned.p.flush(&mut out).await;
    owned.flushed = true;
    if let Err(e) = flushed {
        owned.telemetry.add_dropped("held_at_stop", owned.held());
        count_unsent(&mut out, &telemetry);
        return Err(e);
    }
    send_all(&mut out, &outputs, &telemetry, None).await;
    Ok(())
}

pub(super) async fn run_exporter(
    mut e: Box<dyn Exporter>,
    mut inputs: Inputs,
    telemetry: Telemetry,
) -> Result<(), BoxError> {
    let counts_delivery = e.counts_delivery();
    let takes_encoded = e.takes_encoded();
    let mut ticker = ticker(e.tick_interval());
    loop {
        match next(&mut inputs, &mut ticker).await {
            Some(Some(item)) => {
                telemetry.add_received(item.batch.len() as u64);
                let batch = if takes_encoded {
                    item.batch
                } else {
                    match decoded(item.batch, &telemetry) {
                        Some(b) => b,
                        None => continue,
                    }
                };
                let n = batch.len() as u64;
                let in_flight = InFlight::new(&telemetry, batch.len());
                if let Err(err) = e.export(batch).await {
                    // Not taken: the receiver must not acknowledge it (`acknowledgements`).
                    // The collector is stopping; the client hears of it when it closes.
                    std::mem::forget(item.hold);
                    return Err(err);
                }
                in_flight.done();
                // The exporter has the records now: what the receiver kept alive for them goes.
                drop(item.hold);
                if !counts_delivery {
                    telemetry.add_emitted(n);
                }
            }
            Some(None) => break,
            None => e.tick(SystemTime::now()).await?,
        }
    }
    e.shutdown().await
}
