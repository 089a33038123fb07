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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxeye_api::{BoxError, Exporter, Kind, Processor, Receiver, ReceiverContext};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::Config;

mod edge;
mod graph;
mod registry;
mod stage;
pub use edge::EdgeStats;
use edge::{Edge, FanOut, InputEnd, Inputs};
use graph::{Control, Live, Pending, Routes};
use registry::label;
pub use registry::{ComponentInfo, Registry, Report};
use stage::{run_exporter, run_processor};

/// A component that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{label}: {message}")]
pub struct BuildError {
    /// `receivers/ebpf`, ...
    pub label: String,
    /// The YAML path of what is wrong: a field the factory named (its [`ConfigErrors`]), else
    /// the component (`receivers.ebpf`).
    ///
    /// [`ConfigErrors`]: oxeye_api::ConfigErrors
    pub path: String,
    /// A character inside the string value at `path`, when the factory gave one.
    pub offset: Option<usize>,
    /// The factory's error.
    pub message: String,
}

/// A wired but not yet started collector.
pub struct Engine {
    registry: Arc<Registry>,
    live: Live,
    stages: Vec<Stage>,
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
    /// A receiver's routes, closed when its task ends.
    routes: Option<Arc<Routes>>,
}

/// A new config for a running engine, and where to say how applying it went.
pub struct Reload {
    /// The validated config.
    pub config: Config,
    /// `Ok(what changed)` or `Err(why not)`.
    pub done: tokio::sync::oneshot::Sender<Result<String, String>>,
}

/// A reload applied to the graph whose changed receivers are still answering whether they
/// take their new config live.
struct Reloading {
    done: tokio::sync::oneshot::Sender<Result<String, String>>,
    changes: Vec<String>,
    unchanged: usize,
    t0: Instant,
    asks: tokio::task::JoinSet<(Pending, Result<(), String>)>,
}

impl Reloading {
    /// Logs and answers the reload. Stopping: the answers not in yet are not waited for.
    fn finish(self, stopping: bool) -> Result<String, String> {
        let what = if self.changes.is_empty() {
            "nothing changed".to_string()
        } else {
            self.changes.join(", ")
        };
        let msg = format!(
            "config reloaded in {:.1} ms: {what} ({} unchanged){}",
            self.t0.elapsed().as_secs_f64() * 1e3,
            self.unchanged,
            if stopping && !self.asks.is_empty() {
                "; shutting down before every receiver answered"
            } else {
                ""
            }
        );
        info!("{msg}");
        let _ = self.done.send(Ok(msg.clone()));
        Ok(msg)
    }
}

/// A started stage.
struct Running {
    info: ComponentInfo,
    input_edges: Vec<Arc<EdgeStats>>,
    abort: tokio::task::AbortHandle,
    done: bool,
    /// A receiver's routes: closed as soon as its task ends, so that whatever it left behind
    /// (a connection task, a clone of its context) cannot hold the pipeline open.
    routes: Option<Arc<Routes>>,
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
        routes: stage.routes,
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
                    *deadline = Some(tokio::time::Instant::now() + live.shutdown_timeout);
                }
            };
        // A reload whose live reconfigurations are still being answered.
        let mut reloading: Option<Reloading> = None;
        while left > 0 {
            if reloading
                .as_ref()
                .is_some_and(|r| r.asks.is_empty() || stopping)
            {
                if let Some(r) = reloading.take() {
                    let outcome = r.finish(stopping);
                    if outcome.is_ok() {
                        registry.reloads_applied.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
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
                        info!(timeout = ?live.shutdown_timeout, "shutting down: stopping receivers, draining pipelines");
                        begin_shutdown(&mut stopping, &mut deadline, &mut live);
                        receivers_left -= deferred.len();
                        deferred.clear();
                    }
                }
                Some(req) = reloads.recv(), if !stopping && reloading.is_none() => {
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
                            // Changed receivers that take a new config live are asked now; the
                            // answers come back on `asks`, so this loop goes on meanwhile
                            // (signals, failures, the deadline).
                            let mut asks = tokio::task::JoinSet::new();
                            for p in applied.reconfigure {
                                asks.spawn(live.ask(p));
                            }
                            reloading = Some(Reloading {
                                done: req.done,
                                changes: applied.changes,
                                unchanged: applied.unchanged,
                                t0,
                                asks,
                            });
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
                answer = async {
                    match reloading.as_mut() {
                        Some(r) if !r.asks.is_empty() => r.asks.join_next().await,
                        _ => std::future::pending().await,
                    }
                }, if reloading.as_ref().is_some_and(|r| !r.asks.is_empty()) && !stopping => {
                    let Some(Ok((p, answer))) = answer else { continue };
                    let label = p.label.clone();
                    let note = match live.settle(p, answer) {
                        Ok(()) => " (live)".to_string(),
                        Err((stage, why)) => {
                            warn!(component = %label, "cannot take its new config live ({why}): replacing it");
                            receivers_left += 1;
                            // After the old one has stopped, or now if it already has.
                            if running.iter().any(|r| !r.done && r.info.label() == label) {
                                deferred.push(*stage);
                            } else {
                                let idx = running.len();
                                running.push(spawn_stage(*stage, idx, &done_tx));
                                left += 1;
                            }
                            format!(" (replaced: {why})")
                        }
                    };
                    if let Some(r) = reloading.as_mut() {
                        if let Some(c) = r.changes.iter_mut().find(|c| c[1..] == label) {
                            c.push_str(&note);
                        }
                    }
                }
                Some((idx, result)) = done_rx.recv() => {
                    left -= 1;
                    let r = &mut running[idx];
                    r.done = true;
                    let label = r.info.label();
                    let was_receiver = r.info.kind == Kind::Receiver;
                    if let Some(routes) = &r.routes {
                        routes.close();
                    }
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
                            info!(timeout = ?live.shutdown_timeout, "all receivers finished; draining pipelines");
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
