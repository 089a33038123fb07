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

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use oxeye_api::component::BatchSink;
use oxeye_api::{
    Batch, BoxError, Exporter, Kind, LostUnit, Output, Processor, Receiver, ReceiverContext,
    Signal, Telemetry,
};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::{Config, WhenFull};

mod graph;
use graph::{Control, Live, Routes};

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
    /// The downstream component takes encoded spans as they are (an exporter that says so).
    takes_encoded: bool,
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
            takes_encoded: self.takes_encoded,
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
    rxs: Vec<InputEnd>,
    next: usize,
    /// The owning stage: what is still queued when it stops early counts as its drops.
    owner: Telemetry,
    /// Edges added while running (an exporter fed by a new pipeline); `None` once the engine
    /// has dropped its end: then the stage ends when its current inputs are closed and empty.
    adder: Option<mpsc::UnboundedReceiver<InputEnd>>,
}

impl Drop for Inputs {
    fn drop(&mut self) {
        // Only non-empty when the stage failed or was abandoned: count, never lose silently.
        if let Some(mut adder) = self.adder.take() {
            adder.close();
            while let Ok(end) = adder.try_recv() {
                self.rxs.push(end);
            }
        }
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
            while let Some(adder) = self.adder.as_mut() {
                match adder.poll_recv(cx) {
                    Poll::Ready(Some(end)) => self.rxs.push(end),
                    Poll::Ready(None) => self.adder = None,
                    Poll::Pending => break,
                }
            }
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
            if self.rxs.is_empty() && self.adder.is_none() {
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
    /// Swapped by a reload while the receiver runs.
    routes: Arc<Routes>,
    telemetry: Telemetry,
}

#[async_trait]
impl BatchSink for FanOut {
    async fn send(&self, batch: Batch) {
        let signal = batch.signal();
        let batch = Arc::new(batch);
        self.telemetry.add_emitted(batch.len() as u64);
        let routes = self.routes.get();
        for (s, edges) in routes.iter() {
            if *s == signal {
                for edge in edges {
                    edge.send(Arc::clone(&batch)).await;
                }
            }
        }
        drop((batch, routes));
        // Let the next stage take the batch while it is still in this core's cache: without
        // this a fast receiver fills the whole queue first (64 batches, tens of MB), and every
        // processor then reads its records back from memory (3x its own cost, measured).
        tokio::task::yield_now().await;
    }

    fn takes_encoded(&self, signal: Signal) -> bool {
        let routes = self.routes.get();
        let mut edges = routes
            .iter()
            .filter(|(s, _)| *s == signal)
            .flat_map(|(_, edges)| edges)
            .peekable();
        edges.peek().is_some() && edges.all(|e| e.takes_encoded)
    }

    async fn send_within(&self, batch: Batch, wait: Duration) -> Result<(), Batch> {
        let signal = batch.signal();
        let routes = self.routes.get();
        let edges: Vec<&Edge> = routes
            .iter()
            .filter(|(s, _)| *s == signal)
            .flat_map(|(_, edges)| edges)
            .collect();
        // Reserve a slot in every `block` queue first, so the batch goes to all pipelines or to
        // none: a refused batch is retried by the client and must not arrive twice.
        let deadline = tokio::time::Instant::now() + wait;
        let mut permits = Vec::with_capacity(edges.len());
        for edge in &edges {
            permits.push(match edge.when_full {
                WhenFull::Block => match tokio::time::timeout_at(deadline, edge.tx.reserve()).await
                {
                    Ok(Ok(permit)) => Some(permit),
                    // A stopped stage: `Edge::send` below counts it as `downstream_failed`.
                    Ok(Err(_)) => None,
                    Err(_) => return Err(batch),
                },
                WhenFull::DropNewest => None,
            });
        }
        let n = batch.len();
        let batch = Arc::new(batch);
        self.telemetry.add_emitted(n as u64);
        for (edge, permit) in edges.iter().zip(permits) {
            match permit {
                Some(permit) => {
                    edge.stats.add(n);
                    permit.send(Arc::clone(&batch));
                }
                None => edge.send(Arc::clone(&batch)).await,
            }
        }
        drop((batch, routes));
        tokio::task::yield_now().await;
        Ok(())
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

async fn run_processor(
    mut p: Box<dyn Processor>,
    mut inputs: Inputs,
    mut outputs: Vec<Edge>,
    mut control: mpsc::UnboundedReceiver<Control>,
    telemetry: Telemetry,
) -> Result<(), BoxError> {
    let mut out = Output::new();
    let mut ticker = ticker(p.tick_interval());
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
        match step {
            Some(Some(batch)) => {
                telemetry.add_received(batch.len() as u64);
                let Some(batch) = decoded(batch, &telemetry) else {
                    continue;
                };
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
    let takes_encoded = e.takes_encoded();
    let mut ticker = ticker(e.tick_interval());
    loop {
        match next(&mut inputs, &mut ticker).await {
            Some(Some(batch)) => {
                telemetry.add_received(batch.len() as u64);
                let batch = if takes_encoded {
                    batch
                } else {
                    match decoded(batch, &telemetry) {
                        Some(b) => b,
                        None => continue,
                    }
                };
                let n = batch.len() as u64;
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
        label(self.kind, &self.id, self.pipeline.as_deref())
    }
}

/// `receivers/synthetic`, `processors/nop[traces]`: how logs, metrics and reports name a stage.
fn label(kind: Kind, id: &str, pipeline: Option<&str>) -> String {
    match pipeline {
        Some(p) => format!("{}/{id}[{p}]", kind.section()),
        None => format!("{}/{id}", kind.section()),
    }
}

/// Everything self-telemetry reads while the engine runs.
#[derive(Debug, Default)]
pub struct Registry {
    /// Every component that ran, by label (a replacement keeps its predecessor's counters).
    components: RwLock<Vec<ComponentInfo>>,
    /// Every edge now wired.
    edges: RwLock<Vec<Arc<EdgeStats>>>,
    /// True once every stage runs, false again when shutdown starts.
    pub ready: AtomicBool,
    /// True until a component fails.
    pub healthy: AtomicBool,
    reloads_applied: AtomicU64,
    reloads_rejected: AtomicU64,
}

impl Registry {
    /// Every component that ran (in the order first started).
    pub fn components(&self) -> Vec<ComponentInfo> {
        self.components
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every edge now wired.
    pub fn edges(&self) -> Vec<Arc<EdgeStats>> {
        self.edges.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Config reloads `(applied, rejected)`.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_applied.load(Ordering::Relaxed),
            self.reloads_rejected.load(Ordering::Relaxed),
        )
    }

    /// Counts a reload refused before it reached the engine (an invalid file).
    pub fn count_rejected_reload(&self) {
        self.reloads_rejected.fetch_add(1, Ordering::Relaxed);
    }

    fn update(&self, new_components: Vec<ComponentInfo>, edges: Vec<Arc<EdgeStats>>) {
        self.components
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(new_components);
        *self.edges.write().unwrap_or_else(|p| p.into_inner()) = edges;
    }

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
        self.components()
            .iter()
            .map(|c| c.telemetry.dropped_total())
            .sum()
    }
    /// Losses before the pipeline (kernel ring buffer full, LRU evictions, ...), summed per
    /// reason and unit over components and sources, in the order first seen.
    pub fn lost(&self) -> Vec<(&'static str, LostUnit, u64)> {
        let mut out: Vec<(&'static str, LostUnit, u64)> = Vec::new();
        for l in self.components().iter().flat_map(|c| c.telemetry.lost()) {
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
        self.edges().iter().map(|e| e.queued_records()).sum()
    }
    fn sum(&self, kind: Kind, f: impl Fn(&Telemetry) -> u64) -> u64 {
        self.components()
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
    fn of(&self, kind: Kind, id: &str) -> impl Iterator<Item = Telemetry> {
        let id = id.to_string();
        self.registry
            .components()
            .into_iter()
            .filter(move |c| c.kind == kind && c.id == id)
            .map(|c| c.telemetry)
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
    live: Live,
    stages: Vec<Stage>,
    shutdown_timeout: Duration,
}

enum Task {
    Receiver(Box<dyn Receiver>, ReceiverContext),
    Processor(
        Box<dyn Processor>,
        Inputs,
        Vec<Edge>,
        mpsc::UnboundedReceiver<Control>,
    ),
    Exporter(Box<dyn Exporter>, Inputs),
}

struct Stage {
    info: ComponentInfo,
    task: Task,
    input_edges: Vec<Arc<EdgeStats>>,
}

type InputEnd = (mpsc::Receiver<Arc<Batch>>, Arc<EdgeStats>);

/// A new config for a running engine, and where to say how applying it went.
pub struct Reload {
    /// The validated config.
    pub config: Config,
    /// `Ok(what changed)` or `Err(why not)`.
    pub done: tokio::sync::oneshot::Sender<Result<String, String>>,
}

/// A started stage.
struct Running {
    info: ComponentInfo,
    input_edges: Vec<Arc<EdgeStats>>,
    abort: tokio::task::AbortHandle,
    done: bool,
}

type Done = mpsc::UnboundedSender<(usize, Result<(), String>)>;

/// Starts a stage's task; its end (result, panic or abort) is reported on `done` as `idx`.
fn spawn_stage(stage: Stage, idx: usize, done: &Done) -> Running {
    let telemetry = stage.info.telemetry.clone();
    let fut: std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> = match stage.task
    {
        Task::Receiver(r, ctx) => Box::pin(r.run(ctx)),
        Task::Processor(p, inputs, outs, control) => {
            Box::pin(run_processor(p, inputs, outs, control, telemetry))
        }
        Task::Exporter(x, inputs) => Box::pin(run_exporter(x, inputs, telemetry)),
    };
    let handle = tokio::spawn(fut);
    let abort = handle.abort_handle();
    let done = done.clone();
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
        let _ = done.send((idx, result));
    });
    Running {
        info: stage.info,
        input_edges: stage.input_edges,
        abort,
        done: false,
    }
}

impl Engine {
    /// Builds every component and wires the graph. Nothing runs yet.
    pub fn build(config: &Config) -> Result<Engine, Vec<BuildError>> {
        let mut live = Live::default();
        let applied = live.apply(config)?;
        let registry = Arc::new(Registry {
            healthy: AtomicBool::new(true),
            ..Registry::default()
        });
        registry.update(applied.new_components, applied.edges);
        Ok(Engine {
            registry,
            live,
            stages: applied.stages,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// What telemetry reads; valid before and during the run.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Runs until every receiver has finished and everything drained, or until `stop` yields
    /// (first time: orderly shutdown within the deadline; second time: give up at once).
    pub async fn run(self, stop: mpsc::Receiver<()>) -> Report {
        let (_keep, reloads) = mpsc::channel(1);
        self.run_with_reloads(stop, reloads).await
    }

    /// [`Engine::run`], also applying each config sent on `reloads` as a diff: unchanged
    /// components run on untouched; changed, added and removed ones are started and stopped
    /// and the edges rewired, without losing what was accepted (see `engine/README.md`).
    pub async fn run_with_reloads(
        self,
        mut stop: mpsc::Receiver<()>,
        mut reloads: mpsc::Receiver<Reload>,
    ) -> Report {
        let started = Instant::now();
        let Engine {
            registry,
            mut live,
            stages,
            shutdown_timeout,
        } = self;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
        let mut running: Vec<Running> = Vec::new();
        let mut receivers_left = 0;
        for stage in stages {
            if stage.info.kind == Kind::Receiver {
                receivers_left += 1;
            }
            let idx = running.len();
            running.push(spawn_stage(stage, idx, &done_tx));
        }
        registry.ready.store(true, Ordering::Relaxed);
        // A changed receiver's replacement starts once the old one has stopped (an interface or
        // a port is held by one at a time).
        let mut deferred: Vec<Stage> = Vec::new();

        let mut left = running.len();
        let mut failures = Vec::new();
        let mut abandoned = Vec::new();
        let mut stopping = false;
        let mut deadline: Option<tokio::time::Instant> = None;
        let begin_shutdown =
            |stopping: &mut bool, deadline: &mut Option<tokio::time::Instant>, live: &mut Live| {
                if !*stopping {
                    *stopping = true;
                    live.release();
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
                        begin_shutdown(&mut stopping, &mut deadline, &mut live);
                        receivers_left -= deferred.len();
                        deferred.clear();
                    }
                }
                Some(req) = reloads.recv(), if !stopping => {
                    let t0 = Instant::now();
                    match live.apply(&req.config) {
                        Ok(applied) => {
                            registry.update(applied.new_components, applied.edges);
                            for stage in applied.stages {
                                if stage.info.kind == Kind::Receiver {
                                    receivers_left += 1;
                                    let label = stage.info.label();
                                    if running.iter().any(|r| !r.done && r.info.label() == label) {
                                        deferred.push(stage);
                                        continue;
                                    }
                                }
                                let idx = running.len();
                                running.push(spawn_stage(stage, idx, &done_tx));
                                left += 1;
                            }
                            // Changed receivers that take a new config live are asked now.
                            let mut changes = applied.changes;
                            for p in applied.reconfigure {
                                let label = p.label.clone();
                                let note = match live.reconfigure(p).await {
                                    Ok(()) => " (live)".to_string(),
                                    Err((stage, why)) => {
                                        warn!(component = %label, "cannot take its new config live ({why}): replacing it");
                                        receivers_left += 1;
                                        // After the old one has stopped, or now if it already has.
                                        if running.iter().any(|r| !r.done && r.info.label() == label) {
                                            deferred.push(stage);
                                        } else {
                                            let idx = running.len();
                                            running.push(spawn_stage(stage, idx, &done_tx));
                                            left += 1;
                                        }
                                        format!(" (replaced: {why})")
                                    }
                                };
                                if let Some(c) = changes.iter_mut().find(|c| c[1..] == label) {
                                    c.push_str(&note);
                                }
                            }
                            registry.reloads_applied.fetch_add(1, Ordering::Relaxed);
                            let what = if changes.is_empty() {
                                "nothing changed".to_string()
                            } else {
                                changes.join(", ")
                            };
                            let msg = format!(
                                "config reloaded in {:.1} ms: {what} ({} unchanged)",
                                t0.elapsed().as_secs_f64() * 1e3,
                                applied.unchanged
                            );
                            info!("{msg}");
                            let _ = req.done.send(Ok(msg));
                        }
                        Err(errors) => {
                            registry.reloads_rejected.fetch_add(1, Ordering::Relaxed);
                            let why: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                            let msg = format!("config reload rejected, the running pipelines go on: {}", why.join("; "));
                            error!("{msg}");
                            let _ = req.done.send(Err(msg));
                        }
                    }
                }
                Some((idx, result)) = done_rx.recv() => {
                    left -= 1;
                    let r = &mut running[idx];
                    r.done = true;
                    let label = r.info.label();
                    let was_receiver = r.info.kind == Kind::Receiver;
                    if let Err(msg) = &result {
                        error!(component = %label, "component failed: {msg}; shutting down");
                        r.info.telemetry.add_error();
                        registry.healthy.store(false, Ordering::Relaxed);
                        failures.push(format!("{label}: {msg}"));
                    }
                    if was_receiver {
                        receivers_left -= 1;
                        // The replacement of a changed receiver starts now.
                        if let Some(at) = deferred.iter().position(|s| s.info.label() == label) {
                            let stage = deferred.remove(at);
                            let idx = running.len();
                            running.push(spawn_stage(stage, idx, &done_tx));
                            left += 1;
                        }
                        if receivers_left == 0 && !stopping && result.is_ok() {
                            // The same deadline as a stop request: an exporter retrying a dead
                            // backend must not hold the process for its whole retry budget.
                            info!(timeout = ?shutdown_timeout, "all receivers finished; draining pipelines");
                            begin_shutdown(&mut stopping, &mut deadline, &mut live);
                        }
                    }
                    if result.is_err() {
                        // Starts shutdown if it has not started; never moves a deadline already
                        // set (by a stop request, a natural end, an earlier failure or a second
                        // signal's "give up now").
                        begin_shutdown(&mut stopping, &mut deadline, &mut live);
                        receivers_left -= deferred.len();
                        deferred.clear();
                    }
                }
                _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => {
                    let wired = registry.edges();
                    for r in running.iter().filter(|r| !r.done) {
                        let label = r.info.label();
                        // Its edges: those it started with, and those added since (an exporter's).
                        let mut edges: Vec<&Arc<EdgeStats>> = r.input_edges.iter().collect();
                        for e in wired.iter().filter(|e| e.to == label) {
                            if !edges.iter().any(|x| Arc::ptr_eq(x, e)) {
                                edges.push(e);
                            }
                        }
                        let queued: u64 = edges.iter().map(|e| e.queued_records()).sum();
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
        drop(live);
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
        let reg = Registry::default();
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
        *reg.components.write().unwrap() = vec![a, b];
        assert_eq!(
            reg.lost_summary(),
            ", 10 lost in the kernel (ringbuf_full 10); 2 packets not counted (map_insert_failures 2); 4 stacks not captured (stack_failures 4)"
        );
    }
}
