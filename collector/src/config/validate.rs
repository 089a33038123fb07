//! Checks a parsed config and builds the [`Config`] model: every problem is reported, with its
//! YAML path and position, before anything is built.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use oxeye_api::{Attributes, Kind, Resource, Signal, Value};
use serde::Deserialize;
use serde_yaml::Value as Yaml;

use super::locate::{join, Locations};
use super::model::*;
use super::{field_path, registered, Diagnostic, Severity};

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueRaw {
    capacity: Option<usize>,
    when_full: Option<WhenFull>,
}

impl QueueRaw {
    fn over(self, base: QueueConfig) -> QueueConfig {
        QueueConfig {
            capacity: self.capacity.unwrap_or(base.capacity),
            when_full: self.when_full.unwrap_or(base.when_full),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineRaw {
    #[serde(default)]
    receivers: Vec<String>,
    #[serde(default)]
    processors: Vec<String>,
    #[serde(default)]
    exporters: Vec<String>,
    #[serde(default)]
    queue: QueueRaw,
    #[serde(default)]
    queues: BTreeMap<String, QueueRaw>,
}

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) locations: Locations,
    pub(super) diagnostics: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn report(&mut self, severity: Severity, path: impl Into<String>, message: impl Into<String>) {
        let d = self
            .locations
            .diagnostic(self.file, severity, path.into(), None, message.into());
        self.diagnostics.push(d);
    }

    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.report(Severity::Error, path, message);
    }

    /// An error at character `offset` of the string at `path` (inside an expression); at the
    /// string itself when its text cannot be mapped to columns (multi-line, escapes).
    fn error_in_text(&mut self, path: String, offset: usize, message: String) {
        let d = self
            .locations
            .diagnostic(self.file, Severity::Error, path, Some(offset), message);
        self.diagnostics.push(d);
    }

    /// Deserializes `value` as `T`, reporting a failure at its path; `None` on error.
    fn typed<T: serde::de::DeserializeOwned>(&mut self, base: &str, value: &Yaml) -> Option<T> {
        let value = match value {
            Yaml::Null => Yaml::Mapping(Default::default()),
            v => v.clone(),
        };
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut path = base.to_string();
                for seg in e.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Seq { index } => {
                            path.push_str(&format!("[{index}]"))
                        }
                        other => path = join(&path, &other.to_string()),
                    }
                }
                self.error(path, e.into_inner().to_string());
                None
            }
        }
    }
}

fn key_str(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        Yaml::Null => "null".into(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        _ => "<complex key>".into(),
    }
}

fn yaml_to_value(v: &Yaml) -> Option<Value> {
    match v {
        Yaml::String(s) => Some(Value::from(s.as_str())),
        Yaml::Bool(b) => Some(Value::Bool(*b)),
        Yaml::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_f64().map(Value::F64)),
        _ => None,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

const TOP_KEYS: &[&str] = &[
    "receivers",
    "processors",
    "exporters",
    "connectors",
    "service",
];
const SERVICE_KEYS: &[&str] = &["pipelines", "telemetry", "resource", "shutdown_timeout"];

fn mapping<'a>(ctx: &mut Ctx, path: &str, v: Option<&'a Yaml>) -> Vec<(String, &'a Yaml)> {
    match v {
        None | Some(Yaml::Null) => Vec::new(),
        Some(Yaml::Mapping(m)) => m.iter().map(|(k, v)| (key_str(k), v)).collect(),
        Some(_) => {
            ctx.error(path, "expected a mapping");
            Vec::new()
        }
    }
}

fn check_keys(ctx: &mut Ctx, path: &str, entries: &[(String, &Yaml)], allowed: &[&str]) {
    for (k, _) in entries {
        if !allowed.contains(&k.as_str()) {
            ctx.error(
                join(path, k),
                format!("unknown key `{k}`: expected one of {}", allowed.join(", ")),
            );
        }
    }
}

pub(super) fn validate(ctx: &mut Ctx, root: &Yaml) -> Option<Config> {
    if !matches!(root, Yaml::Mapping(_) | Yaml::Null) {
        ctx.error(
            "",
            "expected a mapping with receivers, processors, exporters and service",
        );
        return None;
    }
    let top = mapping(ctx, "", Some(root));
    check_keys(ctx, "", &top, TOP_KEYS);
    let get = |k: &str| top.iter().find(|(key, _)| key == k).map(|(_, v)| *v);

    // Components: id syntax, registered type, config valid.
    let mut defs: BTreeMap<(Kind, String), ComponentDef> = BTreeMap::new();
    let mut declared: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
    for kind in [
        Kind::Receiver,
        Kind::Processor,
        Kind::Exporter,
        Kind::Connector,
    ] {
        let section = kind.section();
        let known = registered(kind);
        for (id, cfg) in mapping(ctx, section, get(section)) {
            let path = join(section, &id);
            declared.entry(kind).or_default().insert(id.clone());
            let type_name = id.split('/').next().unwrap_or("");
            let name_ok = id
                .split_once('/')
                .is_none_or(|(_, n)| !n.is_empty() && !n.contains('/'));
            if type_name.is_empty() || !name_ok {
                ctx.error(
                    &path,
                    format!("invalid {kind} id `{id}`: write `type` or `type/name`"),
                );
                continue;
            }
            let Some(registration) = known.get(type_name) else {
                let list: Vec<&str> = known.keys().copied().collect();
                ctx.error(
                    &path,
                    format!(
                        "unknown {kind} type `{type_name}`; registered {} types: {}",
                        kind,
                        list.join(", ")
                    ),
                );
                continue;
            };
            if let Err(errors) = registration.check(cfg) {
                for e in errors.0 {
                    let p = field_path(&path, &e.path);
                    match e.offset {
                        Some(offset) => ctx.error_in_text(p, offset, e.message),
                        None => ctx.error(p, e.message),
                    }
                }
                continue;
            }
            defs.insert(
                (kind, id.clone()),
                ComponentDef {
                    id,
                    registration,
                    config: cfg.clone(),
                },
            );
        }
    }

    // Service.
    let service = mapping(ctx, "service", get("service"));
    check_keys(ctx, "service", &service, SERVICE_KEYS);
    let sget = |k: &str| service.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
    let telemetry = sget("telemetry")
        .and_then(|v| ctx.typed::<TelemetryConfig>("service.telemetry", v))
        .unwrap_or_default();
    // `run` binds it before anything starts; an address that cannot parse is the file's error.
    if let Some(address) = &telemetry.metrics.address {
        if let Err(e) = crate::telemetry::parse_address(address) {
            ctx.error("service.telemetry.metrics.address", e.to_string());
        }
    }
    let shutdown_timeout = match sget("shutdown_timeout") {
        None => Duration::from_secs(10),
        Some(Yaml::String(s)) => oxeye_api::config::parse_duration(s).unwrap_or_else(|e| {
            ctx.error("service.shutdown_timeout", e.to_string());
            Duration::from_secs(10)
        }),
        Some(_) => {
            ctx.error(
                "service.shutdown_timeout",
                "expected a duration such as `10s`",
            );
            Duration::from_secs(10)
        }
    };
    let mut attributes = Attributes::new();
    attributes.set("host.name", host_name());
    attributes.set("os.type", "linux");
    attributes.set("service.name", "oxeye");
    for (k, v) in mapping(ctx, "service.resource", sget("resource")) {
        match yaml_to_value(v) {
            Some(value) => attributes.set(k.as_str(), value),
            None => ctx.error(
                join("service.resource", &k),
                "expected a string, number or boolean",
            ),
        }
    }

    // Pipelines.
    let mut pipelines = Vec::new();
    let mut used: BTreeSet<(Kind, String)> = BTreeSet::new();
    // The signals each component serves, for the checks that depend on them.
    let mut serves: BTreeMap<(Kind, String), BTreeSet<Signal>> = BTreeMap::new();
    // Per connector, the pipelines it ends (it is an exporter there) and those it starts.
    let mut connects: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let entries = mapping(ctx, "service.pipelines", sget("pipelines"));
    if entries.is_empty() {
        ctx.error(
            "service.pipelines",
            "no pipelines: add e.g. `traces: {receivers: [...], exporters: [...]}`",
        );
    }
    for (pid, body) in entries {
        let path = join("service.pipelines", &pid);
        let signal_name = pid.split('/').next().unwrap_or("");
        let Some(signal) = Signal::parse(signal_name) else {
            let names: Vec<&str> = Signal::ALL.iter().map(|s| s.as_str()).collect();
            ctx.error(
                &path,
                format!("unknown signal `{signal_name}` in pipeline id `{pid}`: expected {} (optionally `/name`)", names.join(" or ")),
            );
            continue;
        };
        let Some(raw) = ctx.typed::<PipelineRaw>(&path, body) else {
            continue;
        };
        if raw.receivers.is_empty() {
            ctx.error(
                &path,
                "pipeline has no receivers: list at least one under `receivers:`",
            );
        }
        if raw.exporters.is_empty() {
            ctx.error(
                &path,
                "pipeline has no exporters: list at least one under `exporters:`",
            );
        }
        for (kind, list, field) in [
            (Kind::Receiver, &raw.receivers, "receivers"),
            (Kind::Processor, &raw.processors, "processors"),
            (Kind::Exporter, &raw.exporters, "exporters"),
        ] {
            let mut seen = BTreeSet::new();
            for (i, id) in list.iter().enumerate() {
                let p = format!("{path}.{field}[{i}]");
                if !seen.insert(id) {
                    ctx.error(
                        &p,
                        format!("{kind} `{id}` is listed twice in this pipeline"),
                    );
                    continue;
                }
                let is = |kind: Kind| declared.get(&kind).is_some_and(|s| s.contains(id));
                let side = kind;
                let kind = if kind != Kind::Processor && is(Kind::Connector) {
                    if is(kind) {
                        ctx.error(
                            &p,
                            format!(
                                "`{id}` is declared under both `{}:` and `connectors:`: rename one",
                                kind.section()
                            ),
                        );
                        continue;
                    }
                    let (ends, starts) = connects.entry(id.clone()).or_default();
                    match side {
                        Kind::Exporter => ends.push(pid.clone()),
                        _ => starts.push(pid.clone()),
                    }
                    Kind::Connector
                } else {
                    kind
                };
                used.insert((kind, id.clone()));
                if side != Kind::Receiver || kind != Kind::Connector {
                    // A connector's signals, for its checks, are those it takes.
                    serves.entry((kind, id.clone())).or_default().insert(signal);
                }
                let is_declared = declared.get(&kind).is_some_and(|s| s.contains(id));
                if !is_declared {
                    let have: Vec<String> = declared
                        .get(&kind)
                        .map(|s| s.iter().cloned().collect())
                        .unwrap_or_default();
                    let have = if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    };
                    ctx.error(
                        &p,
                        format!(
                            "undefined {kind} `{id}`: not declared under `{}:` (declared: {have})",
                            kind.section()
                        ),
                    );
                } else if let Some(def) = defs.get(&(kind, id.clone())) {
                    if kind == Kind::Connector {
                        connector_signal(ctx, &p, id, def, side, signal);
                    } else if !def.registration.supports(signal) {
                        let sigs: Vec<&str> = def
                            .registration
                            .signals
                            .iter()
                            .map(|s| s.as_str())
                            .collect();
                        ctx.error(
                            &p,
                            format!(
                                "{kind} `{id}` does not support {signal}: type `{}` supports {}",
                                def.registration.type_name,
                                sigs.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        let base = QueueRaw::default().over(QueueConfig {
            capacity: DEFAULT_QUEUE_CAPACITY,
            when_full: WhenFull::Block,
        });
        let base = raw.queue.over(base);
        if base.capacity == 0 {
            ctx.error(
                format!("{path}.queue.capacity"),
                "must be at least 1 (batches)",
            );
        }
        let mut queues = BTreeMap::new();
        for to in raw.processors.iter().chain(&raw.exporters) {
            queues.insert(to.clone(), base);
        }
        for (to, q) in &raw.queues {
            let p = format!("{path}.queues.{to}");
            if !queues.contains_key(to) {
                ctx.error(&p, format!("`{to}` is not a processor or exporter of this pipeline; queues are set on the edge into one"));
                continue;
            }
            let q = q.over(base);
            if q.capacity == 0 {
                ctx.error(format!("{p}.capacity"), "must be at least 1 (batches)");
            }
            queues.insert(to.clone(), q);
        }
        pipelines.push(PipelineDef {
            id: pid,
            signal,
            receivers: raw.receivers,
            processors: raw.processors,
            exporters: raw.exporters,
            queues,
        });
    }

    connections(ctx, &connects, &pipelines);
    for (kind, ids) in &declared {
        for id in ids {
            if !used.contains(&(*kind, id.clone())) {
                ctx.report(
                    Severity::Warning,
                    join(kind.section(), id),
                    format!("{kind} `{id}` is not used by any pipeline and will not run"),
                );
            }
        }
    }

    defs.retain(|key, _| used.contains(key));
    for ((kind, id), def) in &defs {
        let signals: Vec<Signal> = serves
            .get(&(*kind, id.clone()))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        if let Err(errors) = def.registration.check_signals(&def.config, &signals) {
            let path = join(kind.section(), id);
            for e in errors.0 {
                let p = field_path(&path, &e.path);
                match e.offset {
                    Some(offset) => ctx.error_in_text(p, offset, e.message),
                    None => ctx.error(p, e.message),
                }
            }
        }
    }
    Some(Config {
        file: ctx.file.to_string(),
        components: defs,
        pipelines,
        telemetry,
        resource: Arc::new(Resource::new(attributes)),
        shutdown_timeout,
    })
}

/// A connector listed in a pipeline of `signal`: it must take that signal where it ends the
/// pipeline (an exporter there) and make it where it starts it (a receiver there).
fn connector_signal(
    ctx: &mut Ctx,
    path: &str,
    id: &str,
    def: &ComponentDef,
    side: Kind,
    signal: Signal,
) {
    let r = def.registration;
    let names = |s: &[Signal]| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    let (fits, does, what) = match side {
        Kind::Exporter => (r.supports(signal), "takes", names(r.signals)),
        _ => (r.makes(signal), "makes", names(r.output_signals)),
    };
    if !fits {
        ctx.error(
            path,
            format!(
                "connector `{id}` {does} {what}, not {signal}: type `{}` ends pipelines of {} and starts pipelines of {}",
                r.type_name,
                names(r.signals),
                names(r.output_signals)
            ),
        );
    }
}

/// Each connector ends a pipeline and starts one, and no chain of connectors leads a pipeline
/// back to itself (its records would go round for ever).
fn connections(
    ctx: &mut Ctx,
    connects: &BTreeMap<String, (Vec<String>, Vec<String>)>,
    pipelines: &[PipelineDef],
) {
    for (id, (ends, starts)) in connects {
        let path = join("connectors", id);
        if ends.is_empty() {
            ctx.error(&path, format!("connector `{id}` is a receiver of {} but an exporter of no pipeline: list it under `exporters:` of the pipeline it takes from", starts.join(", ")));
        }
        if starts.is_empty() {
            ctx.error(&path, format!("connector `{id}` is an exporter of {} but a receiver of no pipeline: list it under `receivers:` of the pipeline it feeds", ends.join(", ")));
        }
    }
    // Pipeline → the pipelines its connectors feed.
    let mut next: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (id, (ends, starts)) in connects {
        for from in ends {
            for to in starts {
                next.entry(from).or_default().push((id, to));
            }
        }
    }
    // Depth-first from every pipeline; a pipeline met again on the current path is a cycle,
    // reported once, from the first pipeline of it in id order.
    let mut reported = BTreeSet::new();
    for start in pipelines.iter().map(|p| p.id.as_str()) {
        let mut path: Vec<(&str, &str)> = Vec::new(); // (pipeline, connector out of it)
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        while let Some((at, i)) = stack.pop() {
            let outs = next.get(at).map(Vec::as_slice).unwrap_or(&[]);
            path.truncate(stack.len());
            let Some(&(via, to)) = outs.get(i) else {
                continue;
            };
            stack.push((at, i + 1));
            path.push((at, via));
            if to == start {
                let ring: BTreeSet<&str> = path.iter().map(|(p, _)| *p).collect();
                if reported.insert(ring) {
                    let route: String = path.iter().map(|(p, c)| format!("{p} → {c} → ")).collect();
                    ctx.error(
                        join("service.pipelines", start),
                        format!("connectors make a cycle: {route}{start}; records would go round for ever"),
                    );
                }
            } else if !path.iter().any(|(p, _)| *p == to) {
                stack.push((to, 0));
            }
        }
    }
}
