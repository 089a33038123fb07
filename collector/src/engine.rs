//! The runtime: builds every component of a [`Config`], joins them with bounded channels, runs
//! one task per stage instance and shuts down in order.
//!
//! Shape: each receiver feeds the first stage of every pipeline that lists it (fan-out shares one
//! `Arc<Batch>`); each processor is an instance per pipeline; the last stage of a pipeline feeds
//! every exporter it lists; an exporter shared by several pipelines merges their edges (fan-in).
//! Every edge is its own channel with its own capacity and full-queue policy.
//!
//! Shutdown: receivers stop; when a stage's inputs are all closed it flushes and closes its
//! outputs; exporters drain and shut down. Nothing accepted is lost unless the deadline passes,
//! in which case the unfinished components and the records still queued to them are reported.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use oxeye_api::component::{BatchSink, ShutdownTrigger};
use oxeye_api::{
    Batch, BoxError, BuildContext, Exporter, Instance, Kind, LostUnit, Output, Processor, Receiver,
    ReceiverContext, Shutdown, Signal, Telemetry,
};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::{Config, QueueConfig, WhenFull};

/// Counters of one edge (a channel between two stages).
#[derive(Debug)]
pub struct EdgeStats {
    /// Pipeline id.
    pub pipeline: String,
    /// Upstream stage label.
    pub from: String,
    /// Downstream stage label.
    pub to: String,
    /// Capacity in batches.
    pub capacity: usize,
    queued_batches: AtomicU64,
    queued_records: AtomicU64,
}

impl EdgeStats {
    /// Batches waiting in the queue.
    pub fn depth(&self) -> u64 {
        self.queued_batches.load(Ordering::Relaxed)
    }
    /// Records waiting in the queue.
    pub fn queued_records(&self) -> u64 {
        self.queued_records.load(Ordering::Relaxed)
    }
    fn add(&self, records: usize) {
        self.queued_batches.fetch_add(1, Ordering::Relaxed);
        self.queued_records
            .fetch_add(records as u64, Ordering::Relaxed);
    }
    fn sub(&self, records: usize) {
        self.queued_batches.fetch_sub(1, Ordering::Relaxed);
        self.queued_records
            .fetch_sub(records as u64, Ordering::Relaxed);
    }
}

/// The sending end of an edge.
struct Edge {
    tx: mpsc::Sender<Arc<Batch>>,
    when_full: WhenFull,
    stats: Arc<EdgeStats>,
    /// The downstream component: records refused by its queue count as its drops.
    downstream: Telemetry,
}

/// Records a stage holds while an await is pending. If the stage stops before `done` (error,
/// panic, abort at the deadline), the drop counts them as dropped: nothing is lost silently.
struct InFlight<'a> {
    telemetry: &'a Telemetry,
    records: u64,
}

impl<'a> InFlight<'a> {
    fn new(telemetry: &'a Telemetry, records: usize) -> Self {
        InFlight {
            telemetry,
            records: records as u64,
        }
    }
    fn done(mut self) {
        self.records = 0;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.telemetry
            .add_dropped("component_stopped", self.records);
    }
}

impl Edge {
    /// Another sending end of the same edge (several receivers feeding one pipeline).
    fn clone_sender(&self) -> Edge {
        Edge {
            tx: self.tx.clone(),
            when_full: self.when_full,
            stats: Arc::clone(&self.stats),
            downstream: self.downstream.clone(),
        }
    }

    async fn send(&self, batch: Arc<Batch>) {
        let n = batch.len();
        self.stats.add(n);
        let in_flight = InFlight::new(&self.downstream, n);
        let result = match self.when_full {
            WhenFull::Block => self.tx.send(batch).await.map_err(|_| "downstream_failed"),
            WhenFull::DropNewest => self.tx.try_send(batch).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "downstream_failed",
            }),
        };
        in_flight.done();
        if let Err(reason) = result {
            self.stats.sub(n);
            self.downstream.add_dropped(reason, n as u64);
        }
    }
}

/// The receiving ends of all edges into a stage, polled round-robin.
struct Inputs {
    rxs: Vec<(mpsc::Receiver<Arc<Batch>>, Arc<EdgeStats>)>,
    next: usize,
    /// The owning stage: what is still queued when it stops early counts as its drops.
    owner: Telemetry,
}

impl Drop for Inputs {
    fn drop(&mut self) {
        // Only non-empty when the stage failed or was abandoned: count, never lose silently.
        for (rx, stats) in &mut self.rxs {
            rx.close();
            while let Ok(batch) = rx.try_recv() {
                stats.sub(batch.len());
                self.owner
                    .add_dropped("component_stopped", batch.len() as u64);
            }
        }
    }
}

impl Inputs {
    /// The next batch from any input; `None` once every input is closed and empty.
    async fn recv(&mut self) -> Option<Arc<Batch>> {
        std::future::poll_fn(|cx| {
            let mut i = 0;
            while i < self.rxs.len() {
                let idx = (self.next + i) % self.rxs.len();
                match self.rxs[idx].0.poll_recv(cx) {
                    Poll::Ready(Some(batch)) => {
                        self.rxs[idx].1.sub(batch.len());
                        self.next = idx + 1;
                        return Poll::Ready(Some(batch));
                    }
                    Poll::Ready(None) => {
                        self.rxs.swap_remove(idx);
                    }
                    Poll::Pending => i += 1,
                }
            }
            if self.rxs.is_empty() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A receiver's fan-out: every edge of every pipeline that takes the batch's signal.
struct FanOut {
    routes: Vec<(Signal, Vec<Edge>)>,
    telemetry: Telemetry,
}

#[async_trait]
impl BatchSink for FanOut {
    async fn send(&self, batch: Batch) {
        let signal = batch.signal();
        let batch = Arc::new(batch);
        self.telemetry.add_emitted(batch.len() as u64);
        for (s, edges) in &self.routes {
            if *s == signal {
                for edge in edges {
                    edge.send(Arc::clone(&batch)).await;
                }
            }
        }
        drop(batch);
        // Let the next stage take the batch while it is still in this core's cache: without
        // this a fast receiver fills the whole queue first (64 batches, tens of MB), and every
        // processor then reads its records back from memory (3x its own cost, measured).
        tokio::task::yield_now().await;
    }
}

async fn send_all(out: &mut Output, edges: &[Edge], telemetry: &Telemetry) {
    for batch in out.take() {
        telemetry.add_emitted(batch.len() as u64);
        for edge in edges {
            edge.send(Arc::clone(&batch)).await;
        }
    }
}

/// A stage's timer: the first tick one interval after start; a late tick is not made up for.
fn ticker(every: Option<Duration>) -> Option<tokio::time::Interval> {
    every.filter(|d| !d.is_zero()).map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

/// The next input batch (`Some(Some)`), the end of input (`Some(None)`) or a tick (`None`).
async fn next(
    inputs: &mut Inputs,
    ticker: &mut Option<tokio::time::Interval>,
) -> Option<Option<Arc<Batch>>> {
    match ticker.as_mut() {
        Some(t) => tokio::select! {
            b = inputs.recv() => Some(b),
            _ = t.tick() => None,
        },
        None => Some(inputs.recv().await),
    }
}

async fn run_processor(
    mut p: Box<dyn Processor>,
    mut inputs: Inputs,
    outputs: Vec<Edge>,
    telemetry: Telemetry,
) -> Result<(), BoxError> {
    let mut out = Output::new();
    let mut ticker = ticker(p.tick_interval());
    loop {
        match next(&mut inputs, &mut ticker).await {
            Some(Some(batch)) => {
                telemetry.add_received(batch.len() as u64);
                let in_flight = InFlight::new(&telemetry, batch.len());
                p.process(batch, &mut out).await?;
                in_flight.done();
            }
            Some(None) => break,
            None => p.tick(SystemTime::now(), &mut out).await?,
        }
        send_all(&mut out, &outputs, &telemetry).await;
    }
    p.flush(&mut out).await?;
    send_all(&mut out, &outputs, &telemetry).await;
    Ok(())
}

async fn run_exporter(
    mut e: Box<dyn Exporter>,
    mut inputs: Inputs,
    telemetry: Telemetry,
) -> Result<(), BoxError> {
    let counts_delivery = e.counts_delivery();
    let mut ticker = ticker(e.tick_interval());
    loop {
        match next(&mut inputs, &mut ticker).await {
            Some(Some(batch)) => {
                let n = batch.len() as u64;
                telemetry.add_received(n);
                let in_flight = InFlight::new(&telemetry, batch.len());
                e.export(batch).await?;
                in_flight.done();
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

/// One component instance as seen by telemetry and reports.
#[derive(Clone, Debug)]
pub struct ComponentInfo {
    /// Kind.
    pub kind: Kind,
    /// Id as written in config.
    pub id: String,
    /// Pipeline (processors only).
    pub pipeline: Option<String>,
    /// Its counters.
    pub telemetry: Telemetry,
}

impl ComponentInfo {
    /// `receivers/synthetic`, `processors/nop[traces]`.
    pub fn label(&self) -> String {
        match &self.pipeline {
            Some(p) => format!("{}/{}[{}]", self.kind.section(), self.id, p),
            None => format!("{}/{}", self.kind.section(), self.id),
        }
    }
}

/// Everything self-telemetry reads while the engine runs.
#[derive(Debug, Default)]
pub struct Registry {
    /// Every component instance.
    pub components: Vec<ComponentInfo>,
    /// Every edge.
    pub edges: Vec<Arc<EdgeStats>>,
    /// True once every stage runs, false again when shutdown starts.
    pub ready: AtomicBool,
    /// True until a component fails.
    pub healthy: AtomicBool,
}

impl Registry {
    /// Records produced by receivers.
    pub fn records_in(&self) -> u64 {
        self.sum(Kind::Receiver, |t| t.emitted())
    }
    /// Records exported.
    pub fn records_out(&self) -> u64 {
        self.sum(Kind::Exporter, |t| t.emitted())
    }
    /// Records dropped anywhere, any reason.
    pub fn records_dropped(&self) -> u64 {
        self.components
            .iter()
            .map(|c| c.telemetry.dropped_total())
            .sum()
    }
    /// Losses before the pipeline (kernel ring buffer full, LRU evictions, ...), summed per
    /// reason and unit over components and sources, in the order first seen.
    pub fn lost(&self) -> Vec<(&'static str, LostUnit, u64)> {
        let mut out: Vec<(&'static str, LostUnit, u64)> = Vec::new();
        for l in self.components.iter().flat_map(|c| c.telemetry.lost()) {
            match out
                .iter_mut()
                .find(|(r, u, _)| *r == l.reason && *u == l.unit)
            {
                Some(e) => e.2 += l.value,
                None => out.push((l.reason, l.unit, l.value)),
            }
        }
        out
    }

    /// `", 328563 lost in the kernel (ringbuf_full 328563)"` and, for partial losses,
    /// `"; 12 stacks not captured (stack_failures 12)"`; empty when no receiver counts losses.
    pub fn lost_summary(&self) -> String {
        let lost = self.lost();
        if lost.is_empty() {
            return String::new();
        }
        let part = |unit: LostUnit| -> (u64, String) {
            let items: Vec<String> = lost
                .iter()
                .filter(|(_, u, n)| *u == unit && *n > 0)
                .map(|(r, _, n)| format!("{r} {n}"))
                .collect();
            let total = lost
                .iter()
                .filter(|(_, u, _)| *u == unit)
                .map(|l| l.2)
                .sum();
            (total, items.join(", "))
        };
        let (records, why) = part(LostUnit::Records);
        let mut out = format!(", {records} lost in the kernel");
        if !why.is_empty() {
            out.push_str(&format!(" ({why})"));
        }
        for (unit, what) in [
            (LostUnit::Packets, "packets not counted"),
            (LostUnit::Stacks, "stacks not captured"),
        ] {
            let (n, why) = part(unit);
            if n > 0 {
                out.push_str(&format!("; {n} {what} ({why})"));
            }
        }
        out
    }

    /// Records waiting in queues.
    pub fn records_queued(&self) -> u64 {
        self.edges.iter().map(|e| e.queued_records()).sum()
    }
    fn sum(&self, kind: Kind, f: impl Fn(&Telemetry) -> u64) -> u64 {
        self.components
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| f(&c.telemetry))
            .sum()
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Report {
    /// Components and their final counters.
    pub registry: Arc<Registry>,
    /// `label: message` of every component that failed or panicked.
    pub failures: Vec<String>,
    /// `(label, records queued to it)` of every component still running at the deadline.
    pub abandoned: Vec<(String, u64)>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Report {
    /// True when no component failed and nothing was abandoned.
    pub fn clean(&self) -> bool {
        self.failures.is_empty() && self.abandoned.is_empty()
    }

    /// Counters of the component with this kind and id (summed over pipelines).
    pub fn received(&self, kind: Kind, id: &str) -> u64 {
        self.of(kind, id).map(|t| t.received()).sum()
    }
    /// Records emitted (receivers, processors) or exported (exporters).
    pub fn emitted(&self, kind: Kind, id: &str) -> u64 {
        self.of(kind, id).map(|t| t.emitted()).sum()
    }
    /// Records dropped by (or refused at the queue of) the component, all reasons.
    pub fn dropped(&self, kind: Kind, id: &str) -> u64 {
        self.of(kind, id).map(|t| t.dropped_total()).sum()
    }
    fn of<'a>(&'a self, kind: Kind, id: &'a str) -> impl Iterator<Item = &'a Telemetry> + 'a {
        self.registry
            .components
            .iter()
            .filter(move |c| c.kind == kind && c.id == id)
            .map(|c| &c.telemetry)
    }
}

/// A component that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{label}: {message}")]
pub struct BuildError {
    /// `receivers/ebpf`, ...
    pub label: String,
    /// The factory's error.
    pub message: String,
}

/// A wired but not yet started collector.
pub struct Engine {
    registry: Arc<Registry>,
    stages: Vec<Stage>,
    trigger: ShutdownTrigger,
    shutdown_timeout: Duration,
}

enum Task {
    Receiver(Box<dyn Receiver>, ReceiverContext),
    Processor(Box<dyn Processor>, Inputs, Vec<Edge>),
    Exporter(Box<dyn Exporter>, Inputs),
}

struct Stage {
    info: ComponentInfo,
    task: Task,
    input_edges: Vec<Arc<EdgeStats>>,
}

type InputEnd = (mpsc::Receiver<Arc<Batch>>, Arc<EdgeStats>);

/// A stage while the graph is wired: its edges in and out, before its component is built.
struct Wiring {
    info: ComponentInfo,
    inputs: Vec<InputEnd>,
    /// Per signal, the edges out (one signal except for receivers).
    outputs: Vec<(Signal, Vec<Edge>)>,
    signals: Vec<Signal>,
}

impl Wiring {
    fn new(kind: Kind, id: &str, pipeline: Option<&str>) -> Self {
        Wiring {
            info: ComponentInfo {
                kind,
                id: id.to_string(),
                pipeline: pipeline.map(str::to_string),
                telemetry: Telemetry::default(),
            },
            inputs: Vec::new(),
            outputs: Vec::new(),
            signals: Vec::new(),
        }
    }

    /// Opens an edge from `from` into this stage and returns its sending end.
    fn connect(
        &mut self,
        pipeline: &str,
        from: String,
        queue: QueueConfig,
        all: &mut Vec<Arc<EdgeStats>>,
    ) -> Edge {
        let (tx, rx) = mpsc::channel(queue.capacity);
        let stats = Arc::new(EdgeStats {
            pipeline: pipeline.to_string(),
            from,
            to: self.info.label(),
            capacity: queue.capacity,
            queued_batches: AtomicU64::new(0),
            queued_records: AtomicU64::new(0),
        });
        all.push(Arc::clone(&stats));
        self.inputs.push((rx, Arc::clone(&stats)));
        Edge {
            tx,
            when_full: queue.when_full,
            stats,
            downstream: self.info.telemetry.clone(),
        }
    }

    fn add_outputs(&mut self, signal: Signal, edges: Vec<Edge>) {
        if !self.signals.contains(&signal) {
            self.signals.push(signal);
        }
        match self.outputs.iter_mut().find(|(s, _)| *s == signal) {
            Some((_, v)) => v.extend(edges),
            None => self.outputs.push((signal, edges)),
        }
    }
}

impl Engine {
    /// Builds every component and wires the graph. Nothing runs yet.
    pub fn build(config: &Config) -> Result<Engine, Vec<BuildError>> {
        let (trigger, shutdown) = Shutdown::new();
        let mut edges = Vec::new();
        // Receivers and exporters are shared by pipelines; processors are one per pipeline.
        let mut receivers: BTreeMap<&str, Wiring> = BTreeMap::new();
        let mut exporters: BTreeMap<&str, Wiring> = BTreeMap::new();
        let mut processors: Vec<Wiring> = Vec::new();

        for p in &config.pipelines {
            let entry = format!("pipelines/{}", p.id);
            let mut chain: Vec<Wiring> = p
                .processors
                .iter()
                .map(|id| Wiring::new(Kind::Processor, id, Some(&p.id)))
                .collect();
            // The last stage (last processor, or the pipeline entry) feeds every exporter.
            let last_label = chain.last().map_or(entry.clone(), |w| w.info.label());
            let mut into_exporters = Vec::new();
            for x in &p.exporters {
                let w = exporters
                    .entry(x)
                    .or_insert_with(|| Wiring::new(Kind::Exporter, x, None));
                // Told each signal once, however many pipelines of it share the exporter.
                if !w.signals.contains(&p.signal) {
                    w.signals.push(p.signal);
                }
                into_exporters.push(w.connect(
                    &p.id,
                    last_label.clone(),
                    p.queue_into(x),
                    &mut edges,
                ));
            }
            // Each processor feeds the next; the pipeline entry feeds the first processor.
            let mut next_inputs = into_exporters;
            for i in (0..chain.len()).rev() {
                let from = if i == 0 {
                    entry.clone()
                } else {
                    chain[i - 1].info.label()
                };
                let e = chain[i].connect(&p.id, from, p.queue_into(&p.processors[i]), &mut edges);
                chain[i].add_outputs(p.signal, std::mem::replace(&mut next_inputs, vec![e]));
            }
            processors.extend(chain);
            // Every receiver of the pipeline sends into the entry edges (fan-in by cloned senders).
            for r in &p.receivers {
                let w = receivers
                    .entry(r)
                    .or_insert_with(|| Wiring::new(Kind::Receiver, r, None));
                let clones = next_inputs.iter().map(Edge::clone_sender).collect();
                w.add_outputs(p.signal, clones);
            }
        }

        let mut stages = Vec::new();
        let mut errors = Vec::new();
        for w in receivers
            .into_values()
            .chain(processors)
            .chain(exporters.into_values())
        {
            let def = &config.components[&(w.info.kind, w.info.id.clone())];
            let ctx = BuildContext {
                id: w.info.id.clone(),
                pipeline: w.info.pipeline.clone(),
                signals: w.signals.clone(),
                resource: Arc::clone(&config.resource),
                telemetry: w.info.telemetry.clone(),
            };
            let instance = match def.registration.build(&def.config, ctx) {
                Ok(instance) => instance,
                Err(e) => {
                    errors.push(BuildError {
                        label: w.info.label(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let input_edges = w.inputs.iter().map(|(_, s)| Arc::clone(s)).collect();
            let inputs = Inputs {
                rxs: w.inputs,
                next: 0,
                owner: w.info.telemetry.clone(),
            };
            let task = match instance {
                Instance::Receiver(r) => {
                    let sink = Arc::new(FanOut {
                        routes: w.outputs,
                        telemetry: w.info.telemetry.clone(),
                    });
                    Task::Receiver(r, ReceiverContext::new(sink, shutdown.clone(), w.signals))
                }
                Instance::Processor(p) => {
                    let outs = w.outputs.into_iter().flat_map(|(_, e)| e).collect();
                    Task::Processor(p, inputs, outs)
                }
                Instance::Exporter(x) => Task::Exporter(x, inputs),
            };
            stages.push(Stage {
                info: w.info,
                task,
                input_edges,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let registry = Arc::new(Registry {
            components: stages.iter().map(|s| s.info.clone()).collect(),
            edges,
            ready: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
        });
        Ok(Engine {
            registry,
            stages,
            trigger,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// What telemetry reads; valid before and during the run.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Runs until every receiver has finished and everything drained, or until `stop` yields
    /// (first time: orderly shutdown within the deadline; second time: give up at once).
    pub async fn run(self, mut stop: mpsc::Receiver<()>) -> Report {
        let started = Instant::now();
        let Engine {
            registry,
            stages,
            trigger,
            shutdown_timeout,
        } = self;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
        struct Running {
            info: ComponentInfo,
            input_edges: Vec<Arc<EdgeStats>>,
            abort: tokio::task::AbortHandle,
            done: bool,
        }
        let mut running = Vec::new();
        let mut receivers_left = 0;
        for (idx, stage) in stages.into_iter().enumerate() {
            let telemetry = stage.info.telemetry.clone();
            let fut: std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> =
                match stage.task {
                    Task::Receiver(r, ctx) => {
                        receivers_left += 1;
                        Box::pin(r.run(ctx))
                    }
                    Task::Processor(p, inputs, outs) => {
                        Box::pin(run_processor(p, inputs, outs, telemetry))
                    }
                    Task::Exporter(x, inputs) => Box::pin(run_exporter(x, inputs, telemetry)),
                };
            let handle = tokio::spawn(fut);
            running.push(Running {
                info: stage.info,
                input_edges: stage.input_edges,
                abort: handle.abort_handle(),
                done: false,
            });
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let result = match handle.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) if e.is_panic() => {
                        let payload = e.into_panic();
                        let msg = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown payload".into());
                        Err(format!("panicked: {msg}"))
                    }
                    Err(_) => Err("aborted".into()),
                };
                let _ = done_tx.send((idx, result));
            });
        }
        drop(done_tx);
        registry.ready.store(true, Ordering::Relaxed);

        let mut left = running.len();
        let mut failures = Vec::new();
        let mut abandoned = Vec::new();
        let mut stopping = false;
        let mut deadline: Option<tokio::time::Instant> = None;
        let begin_shutdown = |stopping: &mut bool, deadline: &mut Option<tokio::time::Instant>| {
            if !*stopping {
                *stopping = true;
                trigger.trigger();
                registry.ready.store(false, Ordering::Relaxed);
                *deadline = Some(tokio::time::Instant::now() + shutdown_timeout);
            }
        };
        while left > 0 {
            let sleep_until = deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400));
            tokio::select! {
                signal = stop.recv(), if !stop.is_closed() => {
                    if signal.is_none() {
                        continue;
                    }
                    if stopping {
                        warn!("second stop request: giving up on draining");
                        deadline = Some(tokio::time::Instant::now());
                    } else {
                        info!(timeout = ?shutdown_timeout, "shutting down: stopping receivers, draining pipelines");
                        begin_shutdown(&mut stopping, &mut deadline);
                    }
                }
                Some((idx, result)) = done_rx.recv() => {
                    left -= 1;
                    let r = &mut running[idx];
                    r.done = true;
                    if r.info.kind == Kind::Receiver {
                        receivers_left -= 1;
                        if receivers_left == 0 && !stopping && result.is_ok() {
                            // The same deadline as a stop request: an exporter retrying a dead
                            // backend must not hold the process for its whole retry budget.
                            info!(timeout = ?shutdown_timeout, "all receivers finished; draining pipelines");
                            begin_shutdown(&mut stopping, &mut deadline);
                        }
                    }
                    if let Err(msg) = result {
                        let label = r.info.label();
                        error!(component = %label, "component failed: {msg}; shutting down");
                        r.info.telemetry.add_error();
                        registry.healthy.store(false, Ordering::Relaxed);
                        failures.push(format!("{label}: {msg}"));
                        // Starts shutdown if it has not started; never moves a deadline already
                        // set (by a stop request, a natural end, an earlier failure or a second
                        // signal's "give up now").
                        begin_shutdown(&mut stopping, &mut deadline);
                    }
                }
                _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => {
                    for r in running.iter().filter(|r| !r.done) {
                        let queued: u64 = r.input_edges.iter().map(|e| e.queued_records()).sum();
                        let label = r.info.label();
                        error!(component = %label, queued_records = queued, "shutdown deadline passed: abandoning");
                        abandoned.push((label, queued));
                        r.abort.abort();
                    }
                    // Let the aborted tasks unwind so what they held is counted as dropped.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while left > 0 && done_rx.recv().await.is_some() {
                            left -= 1;
                        }
                    })
                    .await;
                    break;
                }
            }
        }
        registry.ready.store(false, Ordering::Relaxed);
        Report {
            registry,
            failures,
            abandoned,
            elapsed: started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(id: &str) -> ComponentInfo {
        ComponentInfo {
            kind: Kind::Receiver,
            id: id.into(),
            pipeline: None,
            telemetry: Telemetry::default(),
        }
    }

    #[test]
    fn losses_before_the_pipeline_are_summed_per_reason() {
        let mut reg = Registry::default();
        assert_eq!(reg.lost_summary(), "", "no receiver counts losses");
        let (a, b) = (component("ebpf"), component("ebpf/2"));
        a.telemetry
            .set_lost("ringbuf_full", LostUnit::Records, "syscall:read", 5);
        a.telemetry
            .set_lost("ringbuf_full", LostUnit::Records, "syscall:read", 7); // a new reading
        a.telemetry
            .set_lost("ringbuf_full", LostUnit::Records, "syscall:write", 3);
        b.telemetry
            .set_lost("flows_evicted", LostUnit::Records, "flows", 0);
        b.telemetry
            .set_lost("map_insert_failures", LostUnit::Packets, "xdp", 2);
        a.telemetry
            .set_lost("stack_failures", LostUnit::Stacks, "syscall:read", 4);
        reg.components = vec![a, b];
        assert_eq!(
            reg.lost_summary(),
            ", 10 lost in the kernel (ringbuf_full 10); 2 packets not counted (map_insert_failures 2); 4 stacks not captured (stack_failures 4)"
        );
    }
}
