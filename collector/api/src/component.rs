//! Component traits and the context the engine hands to them.
//!
//! The engine owns every loop: it receives batches, calls the component, sends what comes out,
//! counts records in and out, applies queue policies and runs shutdown. Components only transform
//! data and report what they themselves dropped ([`Telemetry::add_dropped`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::data::{Batch, Resource, Signal};

/// The error type components return. Any error ends the component and starts an orderly
/// shutdown of the whole collector; the engine reports it with the component's id.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A source of telemetry. `run` produces batches until the data ends or [`Shutdown`] fires.
#[async_trait]
pub trait Receiver: Send {
    /// Produces batches with [`ReceiverContext::emit`]. Return `Ok(())` when the data ends
    /// (e.g. a configured count was reached) or soon after `ctx.shutdown()` fires.
    async fn run(self: Box<Self>, ctx: ReceiverContext) -> Result<(), BoxError>;
}

/// A transformation between receivers and exporters.
///
/// A processor that changes a batch calls `Arc::make_mut(&mut batch)`: the batch is copied only
/// when another pipeline shares it.
#[async_trait]
pub trait Processor: Send {
    /// Handles one input batch, pushing any output to `out`.
    async fn process(&mut self, batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError>;

    /// How often the engine calls [`Processor::tick`]; `None` (the default) for never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Called every [`Processor::tick_interval`] with the wall-clock time (e.g. to close windows).
    async fn tick(&mut self, _now: SystemTime, _out: &mut Output) -> Result<(), BoxError> {
        Ok(())
    }

    /// Called once after the last input at shutdown: push everything still held.
    async fn flush(&mut self, _out: &mut Output) -> Result<(), BoxError> {
        Ok(())
    }

    /// Records taken in and held (open traces, open windows), neither passed on nor dropped
    /// yet. If the processor fails or is abandoned at the shutdown deadline, the engine counts
    /// them as dropped (`held_at_stop`), so nothing is lost silently. Default: 0.
    fn held(&self) -> u64 {
        0
    }

    /// False (the default): the engine decodes [`Records::Encoded`](crate::Records::Encoded)
    /// batches before `process`. True for a processor that passes batches on without looking
    /// at their records (e.g. one that only meters them).
    fn takes_encoded(&self) -> bool {
        false
    }

    /// A gate on the pipeline's entry: while it refuses, receivers sending into this pipeline
    /// are refused (those that can tell their clients to retry) or wait (the others). The
    /// `memory_limiter` processor uses it. Default: none.
    fn admission(&self) -> Option<Arc<dyn Admission>> {
        None
    }
}

/// Ends the pipelines of one signal and starts pipelines of another (spans → RED metrics,
/// flows → metrics): listed under `connectors:`, then in the `exporters:` of the pipelines it
/// takes from and the `receivers:` of those it feeds. It runs as a processor does —
/// [`Processor::process`] gets the batches of every pipeline it ends, what it pushes to its
/// [`Output`] goes into every pipeline it starts, `tick`, `flush` and `held` as for a processor
/// — so a connector implements [`Processor`] and marks itself with this trait. Its factory's
/// [`SIGNALS`](crate::Factory::SIGNALS) are those it takes and
/// [`OUTPUT_SIGNALS`](crate::Factory::OUTPUT_SIGNALS) those it makes.
pub trait Connector: Processor {}

/// A pipeline's entry gate (see [`Processor::admission`]).
pub trait Admission: Send + Sync + 'static {
    /// `Some(why)` while data entering the pipeline must be refused, e.g. `"memory_limit"`.
    fn refusing(&self) -> Option<&'static str>;
}

/// What a receiver keeps alive while a batch it emitted waits in the pipeline's queues — e.g. a
/// charge on its in-flight byte budget. The engine holds it beside the batch and whatever a
/// processor makes of it, and lets it go once the next stage has taken them.
pub type Hold = Arc<dyn std::any::Any + Send + Sync>;

/// A destination for telemetry.
#[async_trait]
pub trait Exporter: Send {
    /// Sends one batch. Retry transient failures inside; report records given up on with
    /// [`Telemetry::add_dropped`] and return `Ok`. An `Err` ends the collector.
    async fn export(&mut self, batch: Arc<Batch>) -> Result<(), BoxError>;

    /// False (the default): a batch counts as out when `export` returns `Ok`. True for an
    /// exporter that queues internally and calls [`Telemetry::add_emitted`] itself when the
    /// destination accepted the records (and [`Telemetry::add_dropped`] for the ones it gave
    /// up on), so "out" means delivered.
    fn counts_delivery(&self) -> bool {
        false
    }

    /// False (the default): the engine decodes [`Records::Encoded`](crate::Records::Encoded)
    /// batches into spans before `export`. True for an exporter that writes them as they are
    /// (OTLP to OTLP) and decodes what it must itself.
    fn takes_encoded(&self) -> bool {
        false
    }

    /// How often the engine calls [`Exporter::tick`]; `None` (the default) for never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Called every [`Exporter::tick_interval`] with the wall-clock time, between batches
    /// (e.g. to close a file that reached its maximum age while no record came).
    async fn tick(&mut self, _now: SystemTime) -> Result<(), BoxError> {
        Ok(())
    }

    /// Called once after the last batch: flush buffers, close files and connections.
    async fn shutdown(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Batches a processor produced for one call. The engine sends them downstream and counts them.
#[derive(Debug, Default)]
pub struct Output {
    batches: Vec<Arc<Batch>>,
}

impl Output {
    /// An empty output.
    pub fn new() -> Self {
        Output::default()
    }

    /// Queues a batch for the next stage. Empty batches are skipped.
    pub fn push(&mut self, batch: impl Into<Arc<Batch>>) {
        let batch = batch.into();
        if !batch.is_empty() {
            self.batches.push(batch);
        }
    }

    /// Takes the queued batches, leaving the output empty.
    pub fn take(&mut self) -> Vec<Arc<Batch>> {
        std::mem::take(&mut self.batches)
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// Fires when the collector shuts down. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Fires a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    /// A new signal and its trigger.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// True once shutdown has begun (or the trigger is gone).
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Completes when shutdown begins.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the trigger was dropped: treat as shutdown.
        let _ = rx.wait_for(|&fired| fired).await;
    }
}

impl ShutdownTrigger {
    /// Starts shutdown; every [`Shutdown`] completes.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

/// Where a receiver's batches go. Implemented by the engine (and by the testing harness).
#[async_trait]
pub trait BatchSink: Send + Sync {
    /// Delivers a batch downstream, waiting when a `block` queue is full.
    async fn send(&self, batch: Batch);

    /// Delivers a batch only if every `block` queue downstream takes it within `wait`;
    /// otherwise hands it back untouched and uncounted, so a receiver can refuse it to its
    /// client (backpressure) instead of holding it. The default waits like [`BatchSink::send`].
    async fn send_within(&self, batch: Batch, _wait: Duration) -> Result<(), Batch> {
        self.send(batch).await;
        Ok(())
    }

    /// [`BatchSink::send`], keeping `hold` alive while the batch waits in queues downstream.
    /// The default drops it once the batch is sent.
    async fn send_holding(&self, batch: Batch, hold: Hold) {
        self.send(batch).await;
        drop(hold);
    }

    /// [`BatchSink::send_within`], keeping `hold` alive while the batch waits in queues
    /// downstream. The default drops it once the batch is sent.
    async fn send_within_holding(
        &self,
        batch: Batch,
        wait: Duration,
        hold: Hold,
    ) -> Result<(), Batch> {
        let sent = self.send_within(batch, wait).await;
        drop(hold);
        sent
    }

    /// True when every stage that takes `signal` from here takes encoded records as they are
    /// (see [`ReceiverContext::takes_encoded`]). The default: false.
    fn takes_encoded(&self, _signal: Signal) -> bool {
        false
    }
}

/// A change of a running receiver's config (a live reload), for a receiver whose factory sets
/// [`Factory::RECONFIGURABLE`](crate::Factory::RECONFIGURABLE).
#[derive(Debug)]
pub struct Reconfigure {
    /// The new config, validated: deserialize it into the factory's config type.
    pub config: serde_yaml::Value,
    /// `Ok(())` once applied; `Err(why)` when it cannot be applied live, and the engine then
    /// replaces the receiver with one built from the new config instead.
    pub done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

type ReconfigureStream = tokio::sync::mpsc::UnboundedReceiver<Reconfigure>;

/// What a running receiver gets from the engine.
#[derive(Clone)]
pub struct ReceiverContext {
    sink: Arc<dyn BatchSink>,
    shutdown: Shutdown,
    signals: Vec<Signal>,
    reconfigure: Arc<std::sync::Mutex<Option<ReconfigureStream>>>,
}

impl ReceiverContext {
    /// Used by the engine and harnesses.
    pub fn new(sink: Arc<dyn BatchSink>, shutdown: Shutdown, signals: Vec<Signal>) -> Self {
        ReceiverContext {
            sink,
            shutdown,
            signals,
            reconfigure: Arc::default(),
        }
    }

    /// The same, with a stream of live config changes (used by the engine).
    pub fn with_reconfigure(self, changes: ReconfigureStream) -> Self {
        *self.reconfigure.lock().unwrap_or_else(|p| p.into_inner()) = Some(changes);
        self
    }

    /// The live config changes for this receiver (taken once; `None` after, or when the engine
    /// sends none). A receiver whose factory sets `RECONFIGURABLE` awaits it beside its work.
    pub fn reconfigurations(&self) -> Option<ReconfigureStream> {
        self.reconfigure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// True when some pipeline takes `signal` from this receiver: skip producing the others.
    pub fn wants(&self, signal: Signal) -> bool {
        self.signals.contains(&signal)
    }

    /// True when every pipeline that takes `signal` from this receiver sends it straight to
    /// exporters that take encoded records ([`crate::Records::Encoded`]) as they are: a receiver
    /// that could emit either saves the work of decoding. Otherwise the engine would decode them
    /// anyway, so decoding in the receiver costs nothing extra. It can change with a reload;
    /// either answer is correct, only the cost differs.
    pub fn takes_encoded(&self, signal: Signal) -> bool {
        self.sink.takes_encoded(signal)
    }

    /// Sends a batch to every pipeline that takes its signal from this receiver.
    pub async fn emit(&self, batch: Batch) {
        if !batch.is_empty() && self.wants(batch.signal()) {
            self.sink.send(batch).await;
        }
    }

    /// Like [`ReceiverContext::emit`], but gives the batch back when the pipeline does not take
    /// it within `wait` (its queues are full): a receiver with a client answers "try later"
    /// (gRPC RESOURCE_EXHAUSTED, HTTP 429) rather than buffering without bound.
    pub async fn emit_within(&self, batch: Batch, wait: Duration) -> Result<(), Batch> {
        if batch.is_empty() || !self.wants(batch.signal()) {
            return Ok(());
        }
        self.sink.send_within(batch, wait).await
    }

    /// [`ReceiverContext::emit`], keeping `hold` alive while the batch (and what the pipeline
    /// makes of it) waits in queues.
    pub async fn emit_holding(&self, batch: Batch, hold: Hold) {
        if !batch.is_empty() && self.wants(batch.signal()) {
            self.sink.send_holding(batch, hold).await;
        }
    }

    /// [`ReceiverContext::emit_within`], keeping `hold` alive while the batch (and what the
    /// pipeline makes of it) waits in queues: a receiver's budget for what its clients sent is
    /// then released only when the data has left them.
    pub async fn emit_within_holding(
        &self,
        batch: Batch,
        wait: Duration,
        hold: Hold,
    ) -> Result<(), Batch> {
        if batch.is_empty() || !self.wants(batch.signal()) {
            return Ok(());
        }
        self.sink.send_within_holding(batch, wait, hold).await
    }

    /// The shutdown signal.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

/// Counters of one component instance. The engine counts records in and out; components add
/// what they drop themselves (with a reason) and their own named counters.
#[derive(Debug, Default)]
pub struct Counters {
    received: AtomicU64,
    emitted: AtomicU64,
    merged: AtomicU64,
    errors: AtomicU64,
    dropped: Mutex<Vec<(&'static str, u64)>>,
    extra: Mutex<Vec<(&'static str, String, u64)>>,
    gauges: Mutex<Vec<(&'static str, String, u64)>>,
    lost: Mutex<Vec<LostCount>>,
}

/// What a loss before the pipeline is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostUnit {
    /// Whole records (spans, flows, samples) that never reached the pipeline.
    Records,
    /// Packets the kernel saw but could not count into a flow.
    Packets,
    /// Stacks that could not be captured (the record itself was delivered without it).
    Stacks,
}

impl LostUnit {
    /// `records`, `packets`, `stacks`.
    pub fn as_str(self) -> &'static str {
        match self {
            LostUnit::Records => "records",
            LostUnit::Packets => "packets",
            LostUnit::Stacks => "stacks",
        }
    }
}

/// One kind of loss before the pipeline (e.g. in the kernel), as last read from its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostCount {
    /// Why, e.g. `ringbuf_full`, `flows_evicted`, `map_insert_failures`, `stack_failures`.
    pub reason: &'static str,
    /// What was lost.
    pub unit: LostUnit,
    /// The probe or program it was counted by, e.g. `syscall:getppid`, `xdp`.
    pub source: String,
    /// Total so far.
    pub value: u64,
}

/// A handle on a component's [`Counters`]. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Telemetry(Arc<Counters>);

fn add_to<K: PartialEq + Clone>(list: &Mutex<Vec<(K, u64)>>, key: K, n: u64) {
    let mut list = list.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 += n,
        None => list.push((key, n)),
    }
}

impl Telemetry {
    /// Counts records taken in (done by the engine).
    pub fn add_received(&self, n: u64) {
        self.0.received.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts records passed on (done by the engine).
    pub fn add_emitted(&self, n: u64) {
        self.0.emitted.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts records combined into others (an aggregation's inputs beyond the one record each
    /// group becomes): neither passed on as they were nor lost. Per component, records in =
    /// out + dropped + merged.
    pub fn add_merged(&self, n: u64) {
        self.0.merged.fetch_add(n, Ordering::Relaxed);
    }

    /// Records combined into others ([`Telemetry::add_merged`]).
    pub fn merged(&self) -> u64 {
        self.0.merged.load(Ordering::Relaxed)
    }

    /// Counts an error that the component survived.
    pub fn add_error(&self) {
        self.0.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` records dropped for `reason` (e.g. `"queue_full"`, `"sampled_out"`).
    pub fn add_dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            add_to(&self.0.dropped, reason, n);
        }
    }

    /// Sets a component-specific counter, exported as `oxeye_<name>_total{source="<source>"}`
    /// (e.g. kernel-side counters read from a map).
    pub fn set_counter(&self, name: &'static str, source: &str, value: u64) {
        let mut list = self.0.extra.lock().unwrap_or_else(|p| p.into_inner());
        match list.iter_mut().find(|(n, s, _)| *n == name && s == source) {
            Some(entry) => entry.2 = value,
            None => list.push((name, source.to_string(), value)),
        }
    }

    /// Sets a component-specific gauge, exported as `oxeye_<name>{source="<source>"}` (e.g.
    /// what a queue holds on disk now).
    pub fn set_gauge(&self, name: &'static str, source: &str, value: u64) {
        let mut list = self.0.gauges.lock().unwrap_or_else(|p| p.into_inner());
        match list.iter_mut().find(|(n, s, _)| *n == name && s == source) {
            Some(entry) => entry.2 = value,
            None => list.push((name, source.to_string(), value)),
        }
    }

    /// Component-specific gauges as `(name, source, value)`.
    pub fn gauges(&self) -> Vec<(&'static str, String, u64)> {
        self.0
            .gauges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the total lost before the pipeline for `reason` at `source` (a receiver reads these
    /// from where they are counted, e.g. kernel maps). They appear in the summary lines and as
    /// `oxeye_lost_total{reason, unit, source}`: nothing is lost silently, even before the
    /// engine sees it.
    pub fn set_lost(&self, reason: &'static str, unit: LostUnit, source: &str, value: u64) {
        let mut list = self.0.lost.lock().unwrap_or_else(|p| p.into_inner());
        match list
            .iter_mut()
            .find(|l| l.reason == reason && l.unit == unit && l.source == source)
        {
            Some(entry) => entry.value = value,
            None => list.push(LostCount {
                reason,
                unit,
                source: source.to_string(),
                value,
            }),
        }
    }

    /// Losses before the pipeline, as set by [`Telemetry::set_lost`].
    pub fn lost(&self) -> Vec<LostCount> {
        self.0
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records taken in.
    pub fn received(&self) -> u64 {
        self.0.received.load(Ordering::Relaxed)
    }

    /// Records passed on.
    pub fn emitted(&self) -> u64 {
        self.0.emitted.load(Ordering::Relaxed)
    }

    /// Errors survived.
    pub fn errors(&self) -> u64 {
        self.0.errors.load(Ordering::Relaxed)
    }

    /// Records dropped, per reason.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        self.0
            .dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records dropped, all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped().iter().map(|(_, n)| n).sum()
    }

    /// Component-specific counters as `(name, source, value)`.
    pub fn counters(&self) -> Vec<(&'static str, String, u64)> {
        self.0
            .extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a factory gets when the engine builds a component instance.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The component id as written in config (`type` or `type/name`).
    pub id: String,
    /// The pipeline this instance belongs to (processors only; receivers and exporters are shared).
    pub pipeline: Option<String>,
    /// Signals this instance will handle (the pipelines it is wired into).
    pub signals: Vec<Signal>,
    /// Resource attributes for batches this component creates (`host.name`, `os.type`,
    /// `service.name` and `service.resource` from config).
    pub resource: Arc<Resource>,
    /// This instance's counters.
    pub telemetry: Telemetry,
}

impl BuildContext {
    /// A context for tests and harnesses: all signals, a plain resource, fresh counters.
    pub fn for_test(id: &str) -> Self {
        BuildContext {
            id: id.to_string(),
            pipeline: None,
            signals: Signal::ALL.to_vec(),
            resource: Arc::new(Resource::default()),
            telemetry: Telemetry::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_fires_and_trigger_drop_counts_as_shutdown() {
        let (trigger, shutdown) = Shutdown::new();
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        shutdown.wait().await;
        assert!(shutdown.is_triggered());

        let (trigger, shutdown) = Shutdown::new();
        drop(trigger);
        shutdown.wait().await;
        assert!(shutdown.is_triggered());
    }

    #[test]
    fn telemetry_sums_drops_per_reason() {
        let t = Telemetry::default();
        t.add_dropped("queue_full", 3);
        t.add_dropped("queue_full", 2);
        t.add_dropped("late", 1);
        t.add_dropped("none", 0);
        assert_eq!(t.dropped(), vec![("queue_full", 5), ("late", 1)]);
        assert_eq!(t.dropped_total(), 6);
    }
}
