//! What self-telemetry and reports read: every component that ran with its counters, the edges
//! now wired, health and readiness, and how a run ended.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use oxeye_api::{Kind, LostUnit, Telemetry};

use super::EdgeStats;

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
pub(super) fn label(kind: Kind, id: &str, pipeline: Option<&str>) -> String {
    match pipeline {
        Some(p) => format!("{}/{id}[{p}]", kind.section()),
        None => format!("{}/{id}", kind.section()),
    }
}

/// Everything self-telemetry reads while the engine runs.
#[derive(Debug, Default)]
pub struct Registry {
    /// Every component that ran, by label (a replacement keeps its predecessor's counters).
    pub(super) components: RwLock<Vec<ComponentInfo>>,
    /// Every edge now wired.
    pub(super) edges: RwLock<Vec<Arc<EdgeStats>>>,
    /// Every edge ever wired (reloads retire some): totals count them all.
    pub(super) history: RwLock<Vec<Arc<EdgeStats>>>,
    /// True once every stage runs, false again when shutdown starts.
    pub ready: AtomicBool,
    /// True until a component fails.
    pub healthy: AtomicBool,
    pub(super) reloads_applied: AtomicU64,
    pub(super) reloads_rejected: AtomicU64,
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

    /// Records sent to the component labelled `label` over every edge into it.
    pub fn sent_to(&self, label: &str) -> u64 {
        self.edges()
            .iter()
            .filter(|e| e.to == label)
            .map(|e| e.sent_records())
            .sum()
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

    pub(super) fn update(&self, new_components: Vec<ComponentInfo>, edges: Vec<Arc<EdgeStats>>) {
        self.components
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(new_components);
        {
            let mut history = self.history.write().unwrap_or_else(|p| p.into_inner());
            for e in &edges {
                if !history.iter().any(|h| Arc::ptr_eq(h, e)) {
                    history.push(Arc::clone(e));
                }
            }
        }
        *self.edges.write().unwrap_or_else(|p| p.into_inner()) = edges;
    }

    /// Per pipeline and per exporter, what came in and where it went, so that in = out +
    /// dropped reads true however many pipelines and exporters share records (the headline
    /// totals add every exporter's copy). One line each:
    /// `pipeline flows: 2100 in, 100 dropped (filtered 100) → stdout 2000, nop/sink 2000` and
    /// `exporter nop/sink: 2000 in, 1900 out, 100 dropped (queue_full 100)`.
    pub fn breakdown(&self) -> Vec<String> {
        let edges = self
            .history
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let components = self.components();
        let mut pipelines: Vec<&str> = Vec::new();
        for e in &edges {
            if !pipelines.contains(&e.pipeline.as_str()) {
                pipelines.push(&e.pipeline);
            }
        }
        let dropped = |t: &Telemetry| -> String {
            let reasons: Vec<String> = t
                .dropped()
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            format!("{} dropped ({})", t.dropped_total(), reasons.join(", "))
        };
        let mut lines = Vec::new();
        for p in &pipelines {
            let entry = format!("pipelines/{p}");
            // Every edge out of the entry gets every record (one into the first processor, or
            // one into each exporter of a pipeline without processors).
            let input: u64 = edges
                .iter()
                .filter(|e| e.pipeline == *p && e.from == entry)
                .map(|e| e.sent_records())
                .max()
                .unwrap_or(0);
            let mut line = format!("pipeline {p}: {input} in");
            for c in components
                .iter()
                .filter(|c| c.kind == Kind::Processor && c.pipeline.as_deref() == Some(*p))
            {
                let t = &c.telemetry;
                if t.dropped_total() > 0 {
                    line.push_str(&format!(", {} {}", c.id, dropped(t)));
                }
                if t.merged() > 0 {
                    line.push_str(&format!(", {} {} merged", c.id, t.merged()));
                }
            }
            let mut into: Vec<(String, u64)> = Vec::new();
            for e in edges
                .iter()
                .filter(|e| e.pipeline == *p && e.to.starts_with("exporters/"))
                .chain(
                    edges
                        .iter()
                        .filter(|e| e.pipeline == *p && e.to.starts_with("connectors/")),
                )
            {
                let x = e.to.split_once('/').map_or("", |(_, x)| x).to_string();
                match into.iter_mut().find(|(id, _)| *id == x) {
                    Some(entry) => entry.1 += e.sent_records(),
                    None => into.push((x, e.sent_records())),
                }
            }
            let into: Vec<String> = into.iter().map(|(x, n)| format!("{x} {n}")).collect();
            line.push_str(&format!(" → {}", into.join(", ")));
            lines.push(line);
        }
        for c in components
            .iter()
            .filter(|c| matches!(c.kind, Kind::Exporter | Kind::Connector))
        {
            let label = c.label();
            let sent = self.sent_to(&label);
            let t = &c.telemetry;
            let mut line = format!("{} {}: {sent} in, {} out", c.kind, c.id, t.emitted());
            if t.merged() > 0 {
                // A connector's records in become series: its out counts data points.
                line.push_str(&format!(", {} merged", t.merged()));
            }
            if t.dropped_total() > 0 {
                line.push_str(&format!(", {}", dropped(t)));
            }
            let queued: u64 = edges
                .iter()
                .filter(|e| e.to == label)
                .map(|e| e.queued_records())
                .sum();
            if queued > 0 {
                line.push_str(&format!(", {queued} queued"));
            }
            let gauge = |name: &str| {
                t.gauges()
                    .iter()
                    .filter(|(n, _, _)| *n == name)
                    .map(|g| g.2)
                    .sum::<u64>()
            };
            let (on_disk, bytes) = (gauge("queue_disk_records"), gauge("queue_disk_bytes"));
            if on_disk > 0 {
                // Kept for the next start: not lost, and not out yet.
                line.push_str(&format!(
                    ", {on_disk} on disk ({:.1} MB)",
                    bytes as f64 / 1e6
                ));
            }
            lines.push(line);
        }
        lines
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
    pub(super) fn sum(&self, kind: Kind, f: impl Fn(&Telemetry) -> u64) -> u64 {
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
