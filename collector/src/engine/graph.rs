//! The live graph: which instances run and the sending ends the engine keeps to rewire them.
//! A config — the first one or a reload — is applied as a diff against it (see README.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use oxeye_api::component::ShutdownTrigger;
use oxeye_api::{
    Admission, BuildContext, ConfigErrors, Instance, Kind, ReceiverContext, Reconfigure, Shutdown,
    Signal, Telemetry,
};
use serde_yaml::Value as Yaml;
use tokio::sync::mpsc;

use super::{
    label, BuildError, ComponentInfo, Edge, EdgeStats, FanOut, InputEnd, Inputs, Stage, Task,
};
use crate::config::{Config, QueueConfig};

/// A message to a running processor, taken before its next batch.
pub(super) enum Control {
    /// Send from now on into these edges (the next stage was replaced); the old ones close.
    SetOutputs(Vec<Edge>),
}

/// Per signal, the edges a receiver's batches go into.
pub(super) type RouteTable = Vec<(Signal, Vec<Edge>)>;

/// Where a receiver's batches go; swapped on reload while it runs, and closed (`None`) once it
/// has stopped, so that nothing it left behind — a connection task, a clone of its context —
/// holds the pipeline's edges open.
pub(super) struct Routes(RwLock<Option<Arc<RouteTable>>>);

impl Routes {
    /// The routes; `None` once closed.
    pub(super) fn get(&self) -> Option<Arc<RouteTable>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, routes: RouteTable) {
        let mut r = self.0.write().unwrap_or_else(|p| p.into_inner());
        if r.is_some() {
            *r = Some(Arc::new(routes));
        }
    }

    /// Drops the edges: the pipelines' first stages see their input close once no send is in
    /// progress.
    pub(super) fn close(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn open(routes: RouteTable) -> Arc<Routes> {
        Arc::new(Routes(RwLock::new(Some(Arc::new(routes)))))
    }
}

struct LiveReceiver {
    config: Yaml,
    signals: Vec<Signal>,
    routes: Arc<Routes>,
    /// Dropping it stops the receiver (a gone trigger counts as shutdown).
    trigger: ShutdownTrigger,
    /// Live config changes, for a receiver that takes them.
    control: Option<mpsc::UnboundedSender<Reconfigure>>,
}

/// A changed receiver to be asked to take its new config live; `fallback` (built, not started)
/// replaces it if it cannot.
pub(super) struct Pending {
    id: String,
    pub label: String,
    config: Yaml,
    fallback: (Stage, LiveReceiver),
}

struct LiveProcessor {
    id: String,
    config: Yaml,
    queue: QueueConfig,
    /// A sending end of its input edge, to hand to a new upstream stage.
    input: Edge,
    control: mpsc::UnboundedSender<Control>,
    /// Its gate on the pipeline's entry ([`oxeye_api::Processor::admission`]).
    admission: Option<Arc<dyn Admission>>,
    /// It takes encoded batches itself ([`oxeye_api::Processor::takes_encoded`]).
    takes_encoded: bool,
}

struct LivePipeline {
    signal: Signal,
    processors: Vec<LiveProcessor>,
    /// `(exporter id, queue, sending end of this pipeline's edge into it)`.
    into_exporters: Vec<(String, QueueConfig, Edge)>,
}

/// A connector: an exporter at its inputs (edges reach it through `adder`), a processor at its
/// outputs (the entry edges of the pipelines it starts, set through `control`).
struct LiveConnector {
    config: Yaml,
    /// Signals of the pipelines it ends, and of those it starts.
    signals: (Vec<Signal>, Vec<Signal>),
    adder: mpsc::UnboundedSender<InputEnd>,
    control: mpsc::UnboundedSender<Control>,
    takes_encoded: bool,
}

struct LiveExporter {
    config: Yaml,
    signals: Vec<Signal>,
    /// New input edges reach the running exporter through this; dropping it lets the exporter
    /// end once its current inputs close.
    adder: mpsc::UnboundedSender<InputEnd>,
    /// [`Exporter::takes_encoded`](oxeye_api::Exporter::takes_encoded), asked when it was built.
    takes_encoded: bool,
}

/// What runs now.
#[derive(Default)]
pub(super) struct Live {
    receivers: BTreeMap<String, LiveReceiver>,
    pipelines: BTreeMap<String, LivePipeline>,
    exporters: BTreeMap<String, LiveExporter>,
    connectors: BTreeMap<String, LiveConnector>,
    /// Counters by label: a replaced component's successor keeps counting where it left off.
    telemetry: HashMap<String, Telemetry>,
    /// `service.resource` the running components were built with: it is stamped on their
    /// batches, so a reload may not change it.
    resource: Option<Arc<oxeye_api::Resource>>,
    /// `service.shutdown_timeout`, as the last config applied says.
    pub(super) shutdown_timeout: std::time::Duration,
}

/// What applying a config did: stages to start, one-line description, edges and components now.
pub(super) struct Applied {
    pub stages: Vec<Stage>,
    pub changes: Vec<String>,
    pub unchanged: usize,
    pub new_components: Vec<ComponentInfo>,
    pub edges: Vec<Arc<EdgeStats>>,
    pub reconfigure: Vec<Pending>,
}

/// An instance built in the first phase, before anything running is touched.
struct Built {
    info: ComponentInfo,
    instance: Instance,
    signals: Vec<Signal>,
}

fn new_edge(
    pipeline: &str,
    from: String,
    to: String,
    queue: QueueConfig,
    downstream: &Telemetry,
    takes_encoded: bool,
) -> (Edge, InputEnd) {
    let (tx, rx) = mpsc::channel(queue.capacity);
    let stats = Arc::new(EdgeStats {
        pipeline: pipeline.to_string(),
        from,
        to,
        capacity: queue.capacity,
        queued_batches: AtomicU64::new(0),
        queued_records: AtomicU64::new(0),
        sent_records: AtomicU64::new(0),
    });
    let edge = Edge {
        tx,
        when_full: queue.when_full,
        stats: Arc::clone(&stats),
        downstream: downstream.clone(),
        takes_encoded,
        gates: Vec::new(),
    };
    (edge, (rx, stats))
}

impl Live {
    /// Asks a running receiver to take its new config. The answer (it cannot, or none within
    /// 10 s, count as no) is for [`Live::settle`]; the future owns what it needs, so the engine
    /// awaits it beside its other work.
    pub(super) fn ask(
        &self,
        p: Pending,
    ) -> impl std::future::Future<Output = (Pending, Result<(), String>)> + Send + 'static {
        let asked = self.receivers.get(&p.id).and_then(|r| r.control.clone());
        async move {
            let answer = match asked {
                None => Err("it is not running".to_string()),
                Some(control) => {
                    let (done, answer) = tokio::sync::oneshot::channel();
                    let request = Reconfigure {
                        config: p.config.clone(),
                        done,
                    };
                    if control.send(request).is_err() {
                        Err("it has stopped".to_string())
                    } else {
                        match tokio::time::timeout(std::time::Duration::from_secs(10), answer).await
                        {
                            Ok(Ok(result)) => result,
                            Ok(Err(_)) => Err("it stopped without answering".to_string()),
                            Err(_) => Err("no answer within 10 s".to_string()),
                        }
                    }
                }
            };
            (p, answer)
        }
    }

    /// Applies a receiver's answer to [`Live::ask`]: on `Err` its replacement's stage to start,
    /// and the reason.
    pub(super) fn settle(
        &mut self,
        p: Pending,
        answer: Result<(), String>,
    ) -> Result<(), (Box<Stage>, String)> {
        let Pending {
            id,
            config,
            fallback: (stage, live),
            ..
        } = p;
        match answer {
            Ok(()) => {
                if let Some(r) = self.receivers.get_mut(&id) {
                    r.config = config;
                }
                Ok(())
            }
            Err(why) => {
                // The old one stops (its trigger is dropped); the new one starts after it.
                self.receivers.insert(id, live);
                Err((Box::new(stage), why))
            }
        }
    }

    fn telemetry_of(
        &mut self,
        label: &str,
        fresh: &mut Vec<ComponentInfo>,
        info: ComponentInfo,
    ) -> Telemetry {
        match self.telemetry.get(label) {
            Some(t) => t.clone(),
            None => {
                let t = info.telemetry.clone();
                self.telemetry.insert(label.to_string(), t.clone());
                fresh.push(info);
                t
            }
        }
    }

    /// Drops every sending end and trigger the engine holds: receivers stop, and each stage
    /// ends once its upstream has ended and its queue is drained.
    pub(super) fn release(&mut self) {
        for r in self.receivers.values() {
            r.trigger.trigger();
        }
        self.receivers.clear();
        self.pipelines.clear();
        self.exporters.clear();
        self.connectors.clear();
    }

    /// Applies `config`: builds what is new or changed (nothing running is touched if any build
    /// fails), then rewires. Unchanged components keep running as they are.
    pub(super) fn apply(&mut self, config: &Config) -> Result<Applied, Vec<BuildError>> {
        if self
            .resource
            .as_ref()
            .is_some_and(|r| *r != config.resource)
        {
            return Err(vec![BuildError {
                label: "service.resource".into(),
                path: "service.resource".into(),
                offset: None,
                message: "changed: every running component stamps the resource it was built with on its batches, so a new one needs a restart of oxeye (change the rest live, the resource at the next restart)".into(),
            }]);
        }
        let def = |kind: Kind, id: &str| &config.components[&(kind, id.to_string())];
        let mut fresh_infos = Vec::new();
        // Signals per receiver and exporter in the new config.
        let mut signals: BTreeMap<(Kind, &str), Vec<Signal>> = BTreeMap::new();
        // Per connector, the signals of the pipelines it ends and of those it starts.
        let mut connects: BTreeMap<&str, (Vec<Signal>, Vec<Signal>)> = BTreeMap::new();
        let add = |s: &mut Vec<Signal>, signal: Signal| {
            if !s.contains(&signal) {
                s.push(signal);
            }
        };
        for p in &config.pipelines {
            for (kind, ids) in [
                (Kind::Receiver, &p.receivers),
                (Kind::Exporter, &p.exporters),
            ] {
                for id in ids {
                    if config
                        .components
                        .contains_key(&(Kind::Connector, id.clone()))
                    {
                        let (ends, starts) = connects.entry(id.as_str()).or_default();
                        match kind {
                            Kind::Exporter => add(ends, p.signal),
                            _ => add(starts, p.signal),
                        }
                    } else {
                        add(signals.entry((kind, id.as_str())).or_default(), p.signal);
                    }
                }
            }
        }

        // Phase 1: decide what is kept, build the rest.
        let mut built: HashMap<String, Built> = HashMap::new();
        let mut errors = Vec::new();
        let mut build = |this: &mut Live,
                         fresh: &mut Vec<ComponentInfo>,
                         kind: Kind,
                         id: &str,
                         pipeline: Option<&str>,
                         sigs: Vec<Signal>| {
            let l = label(kind, id, pipeline);
            let info = ComponentInfo {
                kind,
                id: id.to_string(),
                pipeline: pipeline.map(str::to_string),
                telemetry: Telemetry::default(),
            };
            let telemetry = this.telemetry_of(&l, fresh, info.clone());
            let info = ComponentInfo {
                telemetry: telemetry.clone(),
                ..info
            };
            let d = def(kind, id);
            let ctx = BuildContext {
                id: id.to_string(),
                pipeline: pipeline.map(str::to_string),
                signals: sigs.clone(),
                resource: Arc::clone(&config.resource),
                telemetry,
            };
            match d.registration.build(&d.config, ctx) {
                Ok(instance) => {
                    built.insert(
                        l,
                        Built {
                            info,
                            instance,
                            signals: sigs,
                        },
                    );
                }
                Err(e) => {
                    // A factory that names the fields at fault gets an error at each.
                    let base = format!("{}.{id}", kind.section());
                    match e.downcast_ref::<ConfigErrors>() {
                        Some(fields) => errors.extend(fields.0.iter().map(|f| BuildError {
                            label: l.clone(),
                            path: crate::config::field_path(&base, &f.path),
                            offset: f.offset,
                            message: f.message.clone(),
                        })),
                        None => errors.push(BuildError {
                            label: l,
                            path: base,
                            offset: None,
                            message: e.to_string(),
                        }),
                    }
                }
            }
        };
        let kept_receiver = |this: &Live, id: &str, sigs: &Vec<Signal>| {
            this.receivers
                .get(id)
                .is_some_and(|r| r.config == def(Kind::Receiver, id).config && &r.signals == sigs)
        };
        let kept_exporter = |this: &Live, id: &str, sigs: &Vec<Signal>| {
            this.exporters
                .get(id)
                .is_some_and(|x| x.config == def(Kind::Exporter, id).config && &x.signals == sigs)
        };
        let kept_connector = |this: &Live, id: &str, sigs: &(Vec<Signal>, Vec<Signal>)| {
            this.connectors
                .get(id)
                .is_some_and(|c| c.config == def(Kind::Connector, id).config && &c.signals == sigs)
        };
        // Index of the old processor kept for (pipeline, position).
        let kept_processor =
            |this: &Live, p: &crate::config::PipelineDef, i: usize| -> Option<usize> {
                let old = this.pipelines.get(&p.id).filter(|o| o.signal == p.signal)?;
                let id = &p.processors[i];
                old.processors.iter().position(|lp| {
                    &lp.id == id
                        && lp.config == def(Kind::Processor, id).config
                        && lp.queue == p.queue_into(id)
                })
            };
        for ((kind, id), sigs) in &signals {
            let keep = match kind {
                Kind::Receiver => kept_receiver(self, id, sigs),
                _ => kept_exporter(self, id, sigs),
            };
            if !keep {
                build(self, &mut fresh_infos, *kind, id, None, sigs.clone());
            }
        }
        for (id, sigs) in &connects {
            if !kept_connector(self, id, sigs) {
                // Built with the signals it takes.
                build(
                    self,
                    &mut fresh_infos,
                    Kind::Connector,
                    id,
                    None,
                    sigs.0.clone(),
                );
            }
        }
        for p in &config.pipelines {
            for (i, id) in p.processors.iter().enumerate() {
                if kept_processor(self, p, i).is_none() {
                    build(
                        self,
                        &mut fresh_infos,
                        Kind::Processor,
                        id,
                        Some(&p.id),
                        vec![p.signal],
                    );
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // Phase 2: nothing can fail from here. Rewire, start what was built, retire the rest.
        let mut stages = Vec::new();
        let mut changes = Vec::new();
        let mut unchanged = 0;
        let mut edges = Vec::new();

        // Exporters: keep, or replace (the old one ends once the edges into it close).
        let mut exporters = BTreeMap::new();
        let mut kept_exporters = Vec::new();
        for ((kind, id), sigs) in signals.iter().filter(|((k, _), _)| *k == Kind::Exporter) {
            let l = label(*kind, id, None);
            let old = self.exporters.remove(*id);
            match built.remove(&l) {
                None => {
                    unchanged += 1;
                    kept_exporters.push(id.to_string());
                    exporters.insert(id.to_string(), old.expect("kept"));
                }
                Some(b) => {
                    changes.push(format!("{}{l}", if old.is_some() { "~" } else { "+" }));
                    let (adder, adds) = mpsc::unbounded_channel();
                    let Instance::Exporter(x) = b.instance else {
                        unreachable!("an exporter")
                    };
                    let takes_encoded = x.takes_encoded();
                    let inputs = Inputs {
                        rxs: Vec::new(),
                        next: 0,
                        owner: b.info.telemetry.clone(),
                        adder: Some(adds),
                    };
                    stages.push(Stage {
                        info: b.info,
                        task: Task::Exporter(x, inputs),
                        input_edges: Vec::new(),
                        routes: None,
                    });
                    let config = def(Kind::Exporter, id).config.clone();
                    exporters.insert(
                        id.to_string(),
                        LiveExporter {
                            config,
                            signals: sigs.clone(),
                            adder,
                            takes_encoded,
                        },
                    );
                }
            }
        }
        for id in self.exporters.keys() {
            changes.push(format!("-{}", label(Kind::Exporter, id, None)));
        }

        // Connectors: their inputs are wired like an exporter's, their outputs once the
        // pipelines they start are (below). A replaced one ends once the edges into it close,
        // passing on what it holds into the pipelines it fed.
        let mut connectors = BTreeMap::new();
        let mut kept_connectors = Vec::new();
        let mut new_connectors = Vec::new();
        for (id, sigs) in &connects {
            let l = label(Kind::Connector, id, None);
            let old = self.connectors.remove(*id);
            match built.remove(&l) {
                None => {
                    unchanged += 1;
                    kept_connectors.push(id.to_string());
                    connectors.insert(id.to_string(), old.expect("kept"));
                }
                Some(b) => {
                    changes.push(format!("{}{l}", if old.is_some() { "~" } else { "+" }));
                    let Instance::Connector(c) = b.instance else {
                        unreachable!("a connector")
                    };
                    let (adder, adds) = mpsc::unbounded_channel();
                    let (control, control_rx) = mpsc::unbounded_channel();
                    connectors.insert(
                        id.to_string(),
                        LiveConnector {
                            config: def(Kind::Connector, id).config.clone(),
                            signals: sigs.clone(),
                            adder,
                            control,
                            takes_encoded: c.takes_encoded(),
                        },
                    );
                    new_connectors.push((id.to_string(), b.info, c, adds, control_rx));
                }
            }
        }
        for id in self.connectors.keys() {
            changes.push(format!("-{}", label(Kind::Connector, id, None)));
        }

        // Pipelines, last stage first: each stage's outputs are the next stage's input.
        let mut pipelines = BTreeMap::new();
        let mut entries: BTreeMap<String, (Signal, Vec<Edge>)> = BTreeMap::new();
        for p in &config.pipelines {
            let mut old = self
                .pipelines
                .remove(&p.id)
                .filter(|o| o.signal == p.signal);
            let last_label = p
                .processors
                .last()
                .map_or(format!("pipelines/{}", p.id), |id| {
                    label(Kind::Processor, id, Some(&p.id))
                });
            // Edges into exporters: the old one if the exporter and its queue are unchanged.
            let mut into_exporters = Vec::new();
            for x in &p.exporters {
                let queue = p.queue_into(x);
                // An exporter, or a connector this pipeline ends.
                let (kind, exporter_kept, adder, takes_encoded) = match connectors.get(x) {
                    Some(c) => (
                        Kind::Connector,
                        kept_connectors.contains(x),
                        &c.adder,
                        c.takes_encoded,
                    ),
                    None => {
                        let live = &exporters[x.as_str()];
                        (
                            Kind::Exporter,
                            kept_exporters.contains(x),
                            &live.adder,
                            live.takes_encoded,
                        )
                    }
                };
                let reuse = old.as_mut().and_then(|o| {
                    let i = o
                        .into_exporters
                        .iter()
                        .position(|(id, q, _)| id == x && *q == queue)?;
                    Some(o.into_exporters.swap_remove(i))
                });
                match reuse.filter(|_| exporter_kept) {
                    Some(e) => into_exporters.push(e),
                    None => {
                        let t = &self.telemetry[&label(kind, x, None)];
                        let (edge, end) = new_edge(
                            &p.id,
                            last_label.clone(),
                            label(kind, x, None),
                            queue,
                            t,
                            takes_encoded,
                        );
                        let _ = adder.send(end);
                        into_exporters.push((x.clone(), queue, edge));
                    }
                }
            }
            let mut outputs: Vec<Edge> = into_exporters
                .iter()
                .map(|(_, _, e)| e.clone_sender())
                .collect();
            let mut chain: Vec<LiveProcessor> = Vec::new();
            for (i, id) in p.processors.iter().enumerate().rev() {
                let l = label(Kind::Processor, id, Some(&p.id));
                let from = if i == 0 {
                    format!("pipelines/{}", p.id)
                } else {
                    label(Kind::Processor, &p.processors[i - 1], Some(&p.id))
                };
                // Encoded batches go into a stage only if it and every stage after it take them
                // (else they are decoded once, at the first stage that needs spans).
                let downstream_encoded = outputs.iter().all(|e| e.takes_encoded);
                let mut lp = match built.remove(&l) {
                    None => {
                        unchanged += 1;
                        let o = old
                            .as_mut()
                            .expect("kept processors come from the old pipeline");
                        let at = o
                            .processors
                            .iter()
                            .position(|lp| &lp.id == id)
                            .expect("kept");
                        let lp = o.processors.remove(at);
                        let _ = lp
                            .control
                            .send(Control::SetOutputs(std::mem::take(&mut outputs)));
                        lp
                    }
                    Some(b) => {
                        // The instance it replaces, if any, is retired here: its input closes.
                        let existed = old.as_mut().is_some_and(|o| {
                            let at = o.processors.iter().position(|lp| &lp.id == id);
                            at.map(|at| o.processors.remove(at)).is_some()
                        });
                        changes.push(format!("{}{l}", if existed { "~" } else { "+" }));
                        let queue = p.queue_into(id);
                        let Instance::Processor(proc_) = b.instance else {
                            unreachable!("a processor")
                        };
                        let takes_encoded = proc_.takes_encoded();
                        let (input, end) = new_edge(
                            &p.id,
                            from,
                            l.clone(),
                            queue,
                            &b.info.telemetry,
                            takes_encoded,
                        );
                        let admission = proc_.admission();
                        let (control, control_rx) = mpsc::unbounded_channel();
                        let inputs = Inputs {
                            rxs: vec![end],
                            next: 0,
                            owner: b.info.telemetry.clone(),
                            adder: None,
                        };
                        stages.push(Stage {
                            info: b.info,
                            task: Task::Processor(
                                proc_,
                                inputs,
                                std::mem::take(&mut outputs),
                                control_rx,
                            ),
                            input_edges: vec![Arc::clone(&input.stats)],
                            routes: None,
                        });
                        LiveProcessor {
                            id: id.clone(),
                            config: def(Kind::Processor, id).config.clone(),
                            queue,
                            input,
                            control,
                            admission,
                            takes_encoded,
                        }
                    }
                };
                lp.input.takes_encoded = lp.takes_encoded && downstream_encoded;
                outputs = vec![lp.input.clone_sender()];
                chain.push(lp);
            }
            chain.reverse();
            if let Some(o) = old {
                for lp in &o.processors {
                    changes.push(format!("-{}", label(Kind::Processor, &lp.id, Some(&p.id))));
                }
            }
            // Receivers sending into the pipeline pass its processors' gates.
            let gates: Vec<Arc<dyn Admission>> =
                chain.iter().filter_map(|lp| lp.admission.clone()).collect();
            for entry in &mut outputs {
                entry.gates = gates.clone();
            }
            edges.extend(chain.iter().map(|lp| Arc::clone(&lp.input.stats)));
            edges.extend(into_exporters.iter().map(|(_, _, e)| Arc::clone(&e.stats)));
            entries.insert(p.id.clone(), (p.signal, outputs));
            pipelines.insert(
                p.id.clone(),
                LivePipeline {
                    signal: p.signal,
                    processors: chain,
                    into_exporters,
                },
            );
        }
        for (id, o) in &self.pipelines {
            for lp in &o.processors {
                changes.push(format!("-{}", label(Kind::Processor, &lp.id, Some(id))));
            }
        }

        // Connectors' outputs: the entries of the pipelines they start.
        let outputs_of = |id: &str| -> Vec<Edge> {
            config
                .pipelines
                .iter()
                .filter(|p| p.receivers.iter().any(|r| r == id))
                .flat_map(|p| entries[&p.id].1.iter().map(Edge::clone_sender))
                .collect()
        };
        for id in &kept_connectors {
            let _ = connectors[id]
                .control
                .send(Control::SetOutputs(outputs_of(id)));
        }
        for (id, info, c, adds, control_rx) in new_connectors {
            let inputs = Inputs {
                rxs: Vec::new(),
                next: 0,
                owner: info.telemetry.clone(),
                adder: Some(adds),
            };
            let outputs = outputs_of(&id);
            stages.push(Stage {
                info,
                task: Task::Processor(c, inputs, outputs, control_rx),
                input_edges: Vec::new(),
                routes: None,
            });
        }

        // Receivers: new routes for the kept ones; start the new; stop the rest. A changed one
        // that can take its new config live is asked to (by the engine, right after), with a
        // replacement built and ready in case it cannot.
        let mut receivers = BTreeMap::new();
        let mut reconfigure = Vec::new();
        for ((kind, id), sigs) in signals.iter().filter(|((k, _), _)| *k == Kind::Receiver) {
            let routes = || {
                let mut routes: RouteTable = Vec::new();
                for p in config
                    .pipelines
                    .iter()
                    .filter(|p| p.receivers.iter().any(|r| r == id))
                {
                    let (signal, entry) = &entries[&p.id];
                    let clones: Vec<Edge> = entry.iter().map(Edge::clone_sender).collect();
                    match routes.iter_mut().find(|(s, _)| s == signal) {
                        Some((_, v)) => v.extend(clones),
                        None => routes.push((*signal, clones)),
                    }
                }
                routes
            };
            let l = label(*kind, id, None);
            let old = self.receivers.remove(*id);
            match built.remove(&l) {
                None => {
                    unchanged += 1;
                    let r = old.expect("kept");
                    r.routes.set(routes());
                    receivers.insert(id.to_string(), r);
                }
                Some(b) => {
                    let shared = Routes::open(routes());
                    let (trigger, shutdown) = Shutdown::new();
                    let sink = Arc::new(FanOut {
                        routes: Arc::clone(&shared),
                        telemetry: b.info.telemetry.clone(),
                        shutdown: shutdown.clone(),
                    });
                    let Instance::Receiver(r) = b.instance else {
                        unreachable!("a receiver")
                    };
                    let mut ctx = ReceiverContext::new(sink, shutdown, b.signals);
                    let registration = def(Kind::Receiver, id).registration;
                    let control = registration.reconfigurable.then(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        ctx = ctx.clone().with_reconfigure(rx);
                        tx
                    });
                    let stage = Stage {
                        info: b.info,
                        task: Task::Receiver(r, ctx),
                        input_edges: Vec::new(),
                        routes: Some(Arc::clone(&shared)),
                    };
                    let live = LiveReceiver {
                        config: def(Kind::Receiver, id).config.clone(),
                        signals: sigs.clone(),
                        routes: shared,
                        trigger,
                        control,
                    };
                    match old {
                        Some(o) if o.control.is_some() && &o.signals == sigs => {
                            changes.push(format!("~{l}"));
                            o.routes.set(routes());
                            receivers.insert(id.to_string(), o);
                            reconfigure.push(Pending {
                                id: id.to_string(),
                                label: l,
                                config: live.config.clone(),
                                fallback: (stage, live),
                            });
                        }
                        old => {
                            changes.push(format!("{}{l}", if old.is_some() { "~" } else { "+" }));
                            drop(old); // its trigger: the old receiver stops
                            stages.push(stage);
                            receivers.insert(id.to_string(), live);
                        }
                    }
                }
            }
        }
        for id in self.receivers.keys() {
            changes.push(format!("-{}", label(Kind::Receiver, id, None)));
        }
        if self.resource.is_some() && self.shutdown_timeout != config.shutdown_timeout {
            changes.push(format!(
                "~service.shutdown_timeout ({:?} -> {:?})",
                self.shutdown_timeout, config.shutdown_timeout
            ));
        }
        self.shutdown_timeout = config.shutdown_timeout;
        self.resource = Some(Arc::clone(&config.resource));
        // What is left of the old graph is retired: dropping it closes edges and stops receivers.
        self.receivers = receivers;
        self.pipelines = pipelines;
        self.exporters = exporters;
        self.connectors = connectors;
        Ok(Applied {
            stages,
            changes,
            unchanged,
            new_components: fresh_infos,
            edges,
            reconfigure,
        })
    }
}
