//! The validated config the engine runs: components, pipelines, queues, `service.telemetry`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use oxeye_api::{Kind, Registration, Resource, Signal};
use serde::Deserialize;
use serde_yaml::Value as Yaml;

/// What to do when a queue between two stages is full.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: slows the sender, loses nothing.
    #[default]
    Block,
    /// Drop the batch being sent and count its records as dropped (`reason="queue_full"`).
    DropNewest,
}

/// Settings of one edge's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Capacity in batches.
    pub capacity: usize,
    /// Full-queue policy.
    pub when_full: WhenFull,
}

/// Default queue capacity, in batches.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;

/// `service.telemetry`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Logs.
    pub logs: LogsConfig,
    /// Self-metrics endpoint.
    pub metrics: MetricsConfig,
}

/// `service.telemetry.logs`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// `error`, `warn`, `info` (default), `debug` or `trace`.
    pub level: LogLevel,
    /// `text` (default) or `json` (one JSON object a line, for log pipelines).
    pub format: LogFormat,
    /// How often to log a one-line summary of records/s in, out and dropped (`0s`: never).
    #[serde(with = "oxeye_api::config::duration")]
    pub summary_interval: Duration,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            level: LogLevel::Info,
            format: LogFormat::Text,
            summary_interval: Duration::from_secs(10),
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line (`timestamp`, `level`, `fields.message`, ...).
    Json,
}

/// Log level.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Verbose.
    Debug,
    /// Very verbose.
    Trace,
}

impl LogLevel {
    /// As a tracing filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `service.telemetry.metrics`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` for `/metrics`, `/healthz` and `/readyz`; a bare `:port` binds 127.0.0.1.
    /// Unset: no endpoint.
    pub address: Option<String>,
}

/// A component declared in `receivers:`, `processors:` or `exporters:`.
#[derive(Clone, Debug)]
pub struct ComponentDef {
    /// Id as written (`type` or `type/name`).
    pub id: String,
    /// Its factory.
    pub registration: &'static Registration,
    /// Its raw config (validated).
    pub config: Yaml,
}

/// One pipeline of `service.pipelines`.
#[derive(Clone, Debug)]
pub struct PipelineDef {
    /// Id as written (`traces` or `traces/name`).
    pub id: String,
    /// The signal it carries.
    pub signal: Signal,
    /// Receiver ids.
    pub receivers: Vec<String>,
    /// Processor ids, in order.
    pub processors: Vec<String>,
    /// Exporter ids.
    pub exporters: Vec<String>,
    /// Queue of the edges into each processor and exporter of this pipeline.
    pub queues: BTreeMap<String, QueueConfig>,
}

impl PipelineDef {
    /// The queue of the edge into `to` (a processor or exporter id of this pipeline).
    pub fn queue_into(&self, to: &str) -> QueueConfig {
        self.queues.get(to).copied().unwrap_or(QueueConfig {
            capacity: DEFAULT_QUEUE_CAPACITY,
            when_full: WhenFull::Block,
        })
    }
}

/// A validated config, ready to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// File name (for messages).
    pub file: String,
    /// Components by kind and id; only those used by some pipeline.
    pub components: BTreeMap<(Kind, String), ComponentDef>,
    /// Pipelines, in id order.
    pub pipelines: Vec<PipelineDef>,
    /// `service.telemetry`.
    pub telemetry: TelemetryConfig,
    /// Resource attributes for every batch receivers create.
    pub resource: Arc<Resource>,
    /// `service.shutdown_timeout` (default 10s).
    pub shutdown_timeout: Duration,
}
