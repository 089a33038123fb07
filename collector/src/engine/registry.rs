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
