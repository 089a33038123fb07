//! `enrich` processor — the worked example of a processor crate (see collector/api/README.md).
//!
//! Adds attributes to records of every signal:
//! - `attributes:` a static table (`{deployment.environment: prod, team: edge}`) set on every
//!   record (every data point of a metric);
//! - `container_id: true` — for spans, profile samples and log records with `process.pid`, reads `/proc/<pid>/cgroup` once per
//!   process (a process gone by then gets none) and sets the
//!   OTel attribute `container.id` when the cgroup path names a container (a 64-hex-digit id, as
//!   Docker, containerd and CRI-O use), and `oxeye.cgroup` to the cgroup path.
//!
//! It depends on `oxeye-api` alone and registers itself exactly like the built-in processors.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use oxeye_api::{
    Attributes, Batch, BoxError, BuildContext, ConfigErrors, Factory, Output, Processor, Records,
    Signal, Value,
};
use serde::Deserialize;

/// Config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Attributes set on every record.
    pub attributes: HashMap<String, String>,
    /// Look up `container.id` from the span's process cgroup.
    pub container_id: bool,
}

/// What a process's cgroup says (cached per pid).
#[derive(Clone, Debug, Default)]
struct CgroupInfo {
    path: Option<Arc<str>>,
    container: Option<Arc<str>>,
}

/// The container id in a cgroup path: the last 64-hex-digit run (e.g.
/// `/system.slice/docker-<id>.scope` or `/kubepods/.../cri-containerd-<id>.scope`).
pub fn container_id(cgroup_path: &str) -> Option<&str> {
    cgroup_path
        .split(|c: char| !c.is_ascii_hexdigit())
        .rfind(|run| run.len() == 64)
}

fn read_cgroup(pid: u32) -> CgroupInfo {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return CgroupInfo::default();
    };
    // cgroup v2: a single `0::<path>` line; v1: take the first path with a container id.
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .collect();
    let path = paths
        .iter()
        .find(|p| container_id(p).is_some())
        .or(paths.first())
        .copied();
    CgroupInfo {
        path: path.map(Arc::from),
        container: path.and_then(container_id).map(Arc::from),
    }
}

/// The processor.
pub struct Enrich {
    attributes: Vec<(Arc<str>, Value)>,
    container_id: bool,
    cgroups: HashMap<u32, CgroupInfo>,
}

const MAX_CACHED_PROCESSES: usize = 4096;

impl Enrich {
    /// Reads the cgroups of the batch's processes not cached yet. File reads block, so they run
    /// on tokio's blocking pool (`oxeye_api::blocking::unblock`), all of a batch's in one hop,
    /// never on the async workers that move everyone's batches.
    async fn learn(&mut self, batch: &Batch) {
        let mut pids: Vec<u32> = match &batch.records {
            Records::Spans(spans) => spans.iter().filter_map(|s| s.task.map(|t| t.pid)).collect(),
            Records::Samples(samples) => samples.iter().map(|s| s.pid).collect(),
            // Process events carry their cgroup already (the process may be gone by now).
            Records::Logs(logs) => logs
                .iter()
                .filter(|l| l.attributes.get("oxeye.cgroup").is_none())
                .filter_map(log_pid)
                .collect(),
            // Encoded spans never reach a processor: the engine decodes them.
            _ => return,
        };
        pids.sort_unstable();
        pids.dedup();
        let mut new: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| !self.cgroups.contains_key(pid))
            .collect();
        if new.is_empty() {
            return;
        }
        if self.cgroups.len() + new.len() > MAX_CACHED_PROCESSES {
            // Bounded (processes come and go); this batch's processes are all read again.
            self.cgroups.clear();
            new = pids;
        }
        let read = oxeye_api::blocking::unblock(move || {
            new.into_iter()
                .map(|pid| (pid, read_cgroup(pid)))
                .collect::<Vec<_>>()
        })
        .await;
        self.cgroups.extend(read);
    }

    fn cgroup(&self, pid: u32) -> CgroupInfo {
        self.cgroups.get(&pid).cloned().unwrap_or_default()
    }

    /// `oxeye.cgroup` and `container.id` of process `pid`, when known.
    fn set_cgroup(&self, pid: u32, attrs: &mut Attributes) {
        let info = self.cgroup(pid);
        if let Some(path) = info.path {
            attrs.set("oxeye.cgroup", path);
        }
        if let Some(id) = info.container {
            attrs.set("container.id", id);
        }
    }

    fn set_static(&self, attrs: &mut Attributes) {
        for (k, v) in &self.attributes {
            attrs.set(k.clone(), v.clone());
        }
    }
}

#[async_trait]
impl Processor for Enrich {
    async fn process(&mut self, mut batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        if self.container_id {
            self.learn(&batch).await;
        }
        // Copy-on-write: only copied if another pipeline still holds this batch.
        match &mut Arc::make_mut(&mut batch).records {
            Records::Spans(spans) => {
                for s in spans.iter_mut() {
                    self.set_static(&mut s.attributes);
                    if let (true, Some(task)) = (self.container_id, s.task) {
                        self.set_cgroup(task.pid, &mut s.attributes);
                    }
                }
            }
            Records::Samples(samples) => {
                for s in samples.iter_mut() {
                    self.set_static(&mut s.attributes);
                    if self.container_id {
                        self.set_cgroup(s.pid, &mut s.attributes);
                    }
                }
            }
            Records::Flows(flows) => {
                for f in flows.iter_mut() {
                    self.set_static(&mut f.attributes);
                }
            }
            // On every data point, as the Collector's attributes processor does.
            Records::Metrics(metrics) => {
                for m in metrics.iter_mut() {
                    m.data.for_each_point(|a| self.set_static(a));
                }
            }
            Records::Logs(logs) => {
                for l in logs.iter_mut() {
                    self.set_static(&mut l.attributes);
                    if !self.container_id {
                        continue;
                    }
                    let known = match l.attributes.get("oxeye.cgroup") {
                        Some(Value::Str(path)) => Some(Arc::clone(path)),
                        _ => None,
                    };
                    match (known, log_pid(l)) {
                        (Some(path), _) => {
                            if let Some(id) = container_id(&path) {
                                l.attributes.set("container.id", id);
                            }
                        }
                        (None, Some(pid)) => self.set_cgroup(pid, &mut l.attributes),
                        (None, None) => {}
                    }
                }
            }
            _ => {}
        }
        out.push(batch);
        Ok(())
    }
}

/// The process a log record is about: its `process.pid` attribute (process events carry it).
fn log_pid(l: &oxeye_api::LogRecord) -> Option<u32> {
    match l.attributes.get("process.pid") {
        Some(oxeye_api::Value::Int(pid)) => u32::try_from(*pid).ok(),
        _ => None,
    }
}

/// Factory for [`Enrich`].
pub struct EnrichFactory;

impl Factory for EnrichFactory {
    type Config = EnrichConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "enrich";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str =
        "adds static attributes, and container.id from /proc/<pid>/cgroup (example crate)";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-enrich.md");

    fn validate(c: &EnrichConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        for k in c.attributes.keys() {
            if k.is_empty() {
                e.push("attributes", "attribute names must not be empty");
            }
        }
        if c.attributes.is_empty() && !c.container_id {
            e.push(
                "",
                "nothing to add: set `attributes:` and/or `container_id: true`",
            );
        }
        e.into_result()
    }

    fn build(c: EnrichConfig, _ctx: BuildContext) -> Result<Self::Component, BoxError> {
        let mut attributes: Vec<(Arc<str>, Value)> = c
            .attributes
            .into_iter()
            .map(|(k, v)| (Arc::from(k), Value::from(v)))
            .collect();
        attributes.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Box::new(Enrich {
            attributes,
            container_id: c.container_id,
            cgroups: HashMap::new(),
        }))
    }
}

oxeye_api::register!(EnrichFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{check, flow_batch, span_batch, spans, ProcessorHarness};
    use oxeye_api::TaskContext;

    #[test]
    fn every_data_point_and_log_record_and_the_container_of_a_process_event() {
        use oxeye_api::testing::{log_batch, logs, metric_batch, metrics};
        let mut h = ProcessorHarness::new::<EnrichFactory>(
            "{attributes: {team: edge}, container_id: true}",
        )
        .unwrap();
        let out = h.process(metric_batch(6)).unwrap();
        for mut m in metrics(&out).into_iter().cloned() {
            let mut seen = 0;
            m.data.for_each_point(|a| {
                assert_eq!(a.get("team"), Some(&"edge".into()));
                seen += 1;
            });
            assert_eq!(seen, 1, "{}", m.name);
        }
        let mut batch = log_batch(2);
        if let Records::Logs(l) = &mut batch.records {
            l[0].attributes
                .set("process.pid", std::process::id() as i64);
        }
        let out = h.process(batch).unwrap();
        let l = logs(&out);
        assert_eq!(l[1].attributes.get("team"), Some(&"edge".into()));
        assert!(
            l[0].attributes.get("oxeye.cgroup").is_some(),
            "this process's cgroup: {:?}",
            l[0].attributes
        );
        assert!(
            l[1].attributes.get("oxeye.cgroup").is_none(),
            "no pid, no cgroup"
        );
    }

    #[test]
    fn static_attributes_on_spans_and_flows() {
        let mut h = ProcessorHarness::new::<EnrichFactory>(
            "attributes: {deployment.environment: prod, team: edge}",
        )
        .unwrap();
        let out = h.process(span_batch(3)).unwrap();
        for s in spans(&out) {
            assert_eq!(s.attributes.get("team"), Some(&"edge".into()));
            assert_eq!(
                s.attributes.get("deployment.environment"),
                Some(&"prod".into())
            );
        }
        let out = h.process(flow_batch(2)).unwrap();
        let Records::Flows(f) = &out[0].records else {
            panic!()
        };
        assert_eq!(f[1].attributes.get("team"), Some(&"edge".into()));
    }

    #[test]
    fn container_ids_from_cgroup_paths() {
        let id = "4a1e6d2f0c9b8a7e6d5c4b3a29180716f5e4d3c2b1a09f8e7d6c5b4a39281706";
        assert_eq!(
            container_id(&format!("/system.slice/docker-{id}.scope")),
            Some(id)
        );
        assert_eq!(
            container_id(&format!(
                "/kubepods/burstable/pod1/cri-containerd-{id}.scope"
            )),
            Some(id)
        );
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-3.scope"),
            None
        );
    }

    #[test]
    fn this_process_gets_its_cgroup() {
        let mut h = ProcessorHarness::new::<EnrichFactory>("container_id: true").unwrap();
        let mut b = span_batch(1);
        let Records::Spans(s) = &mut b.records else {
            panic!()
        };
        s[0].task = Some(TaskContext {
            pid: std::process::id(),
            ..Default::default()
        });
        let out = h.process(b).unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let expected = own
            .lines()
            .next()
            .and_then(|l| l.splitn(3, ':').nth(2))
            .unwrap()
            .to_string();
        assert_eq!(
            spans(&out)[0].attributes.get("oxeye.cgroup"),
            Some(&Value::from(expected))
        );
    }

    #[test]
    fn a_full_cache_keeps_the_batch_s_own_processes() {
        let mut h = ProcessorHarness::new::<EnrichFactory>("container_id: true").unwrap();
        let me = std::process::id();
        let batch_of = |pids: Vec<u32>| {
            let mut b = span_batch(pids.len());
            let Records::Spans(s) = &mut b.records else {
                panic!()
            };
            for (span, pid) in s.iter_mut().zip(pids) {
                span.task = Some(TaskContext {
                    pid,
                    ..Default::default()
                });
            }
            b
        };
        // Fill the cache to its bound with this process and pids that do not exist.
        let fill: Vec<u32> = std::iter::once(me)
            .chain((0..MAX_CACHED_PROCESSES as u32 - 1).map(|i| u32::MAX - i))
            .collect();
        h.process(batch_of(fill)).unwrap();
        // One new pid clears the cache: this process, cached before, must still be enriched.
        let out = h.process(batch_of(vec![me, u32::MAX - 5000])).unwrap();
        assert!(
            spans(&out)[0].attributes.get("oxeye.cgroup").is_some(),
            "{:?}",
            spans(&out)[0].attributes
        );
    }

    #[test]
    fn validation_errors_have_paths() {
        assert!(check::<EnrichFactory>("{}")
            .unwrap_err()
            .to_string()
            .contains("nothing to add"));
        assert!(check::<EnrichFactory>("attributes: {'': x}")
            .unwrap_err()
            .to_string()
            .starts_with("attributes:"));
        assert!(check::<EnrichFactory>("container_id: maybe").is_err());
    }
}
