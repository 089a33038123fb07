//! The exporter's config and its resolution against the standard `OTEL_EXPORTER_OTLP_*`
//! environment variables. Precedence: the config file, then the signal-specific variable
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), then the generic one (`OTEL_EXPORTER_OTLP_ENDPOINT`),
//! then the defaults of the OTel SDK exporters.

use std::collections::BTreeMap;
use std::time::Duration;

use oxeye_api::config::{duration, opt_duration};
use oxeye_api::ConfigErrors;
use serde::Deserialize;

/// Wire protocol.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies (default port 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    fn parse(s: &str) -> Result<Protocol, String> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => {
                Err("`http/json` is not supported: use `http/protobuf` or `grpc`".into())
            }
            other => Err(format!(
                "unknown protocol `{other}`: use `grpc` or `http/protobuf`"
            )),
        }
    }

    /// `grpc` or `http/protobuf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Payload compression.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (the Collector's default).
    Gzip,
    /// Uncompressed.
    None,
}

impl Compression {
    fn parse(s: &str) -> Result<Compression, String> {
        match s.trim() {
            "gzip" => Ok(Compression::Gzip),
            "none" | "" => Ok(Compression::None),
            other => Err(format!(
                "unknown compression `{other}`: use `gzip` or `none`"
            )),
        }
    }
}

pub use oxeye_diskqueue::{StorageConfig, WhenFull};

/// TLS settings (used for `https://` endpoints).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<String>,
    /// PEM client certificate (mutual TLS); needs `key_file`.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
    /// Plain text for an endpoint written without a scheme (`host:port`), as in the Collector.
    pub insecure: Option<bool>,
    /// Accept any server certificate (testing only).
    pub insecure_skip_verify: bool,
}

/// Batching inside the exporter.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Records per request; larger batches are split.
    pub send_batch_size: usize,
    /// Longest a record waits for a batch to fill.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            send_batch_size: 1024,
            timeout: Duration::from_millis(200),
        }
    }
}

/// What `sending_queue.queue_size` counts.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Sizer {
    /// Records (spans, flows, samples): memory follows the setting whatever the batch sizes.
    #[default]
    Items,
    /// Batches, as they come from the pipeline.
    Requests,
}

/// The bounded queue between `export` and the senders. It bounds everything the exporter
/// holds: queued records and those being sent or retried.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `items` (records, the default) or `requests` (batches).
    pub sizer: Sizer,
    /// Records (or batches) the queue holds.
    pub queue_size: usize,
    /// Concurrent senders.
    pub num_consumers: usize,
    /// `block`, `drop_newest`, or (with `storage`) `drop_oldest`.
    pub when_full: WhenFull,
    /// Keep the queue on disk (absent: in memory).
    pub storage: Option<StorageConfig>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            sizer: Sizer::Items,
            queue_size: 8192,
            num_consumers: 2,
            when_full: WhenFull::Block,
            storage: None,
        }
    }
}

/// Retries of retryable failures (gRPC UNAVAILABLE etc., HTTP 429/502/503/504, no connection).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Off: a failed request is dropped (and counted) at once.
    pub enabled: bool,
    /// First wait.
    #[serde(with = "duration")]
    pub initial_interval: Duration,
    /// Longest wait.
    #[serde(with = "duration")]
    pub max_interval: Duration,
    /// Give up (and count the records as dropped) after retrying this long.
    #[serde(with = "duration")]
    pub max_elapsed_time: Duration,
    /// Growth of the wait per attempt.
    pub multiplier: f64,
    /// Jitter: each wait is drawn from `wait × (1 ± randomization_factor)`.
    pub randomization_factor: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        // The Collector's exporterhelper defaults.
        RetryConfig {
            enabled: true,
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
            multiplier: 1.5,
            randomization_factor: 0.5,
        }
    }
}

/// A resource attribute value written in config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ResourceValue {
    /// `true`.
    Bool(bool),
    /// `42`.
    Int(i64),
    /// `0.5`.
    F64(f64),
    /// `edge-7`.
    Str(String),
}

/// `exporters: {otlp: ...}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// `grpc` or `http/protobuf` (env `OTEL_EXPORTER_OTLP_PROTOCOL`; default `grpc`).
    pub protocol: Option<Protocol>,
    /// gRPC: the server URL. HTTP: the base URL; `/v1/traces`, `/v1/metrics` and
    /// `/v1development/profiles` are appended.
    pub endpoint: Option<String>,
    /// HTTP/gRPC URL for traces, used as is.
    pub traces_endpoint: Option<String>,
    /// Several endpoints (gateways) to balance traces over, each like `endpoint`; with
    /// `routing_key: traceID` every span of a trace goes to the same one.
    pub endpoints: Vec<String>,
    /// What load balancing routes by: `traceID` (the default with `endpoints`).
    pub routing_key: Option<String>,
    /// HTTP/gRPC URL for metrics (and flows), used as is.
    pub metrics_endpoint: Option<String>,
    /// HTTP/gRPC URL for logs, used as is.
    pub logs_endpoint: Option<String>,
    /// HTTP/gRPC URL for profiles, used as is.
    pub profiles_endpoint: Option<String>,
    /// Extra request headers (`authorization: Bearer ...`); added to `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: BTreeMap<String, String>,
    /// `gzip` (default) or `none`.
    pub compression: Option<Compression>,
    /// Per-request timeout (default 10s).
    #[serde(with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// TLS.
    pub tls: TlsConfig,
    /// Resource attributes added to (and overriding) those of the records.
    pub resource: BTreeMap<String, ResourceValue>,
    /// Batching.
    pub batch: BatchConfig,
    /// The sending queue.
    pub sending_queue: QueueConfig,
    /// Retries.
    pub retry_on_failure: RetryConfig,
}

/// The OTLP signal a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpSignal {
    /// Spans.
    Traces,
    /// Metrics, and flows as metrics.
    Metrics,
    /// CPU profiles (OTLP profiles, v1development).
    Profiles,
    /// Log records.
    Logs,
}

impl OtlpSignal {
    /// Every signal, in the order of [`OtlpSignal`] (its index in per-signal counters).
    pub const ALL: [OtlpSignal; 4] = [
        OtlpSignal::Traces,
        OtlpSignal::Metrics,
        OtlpSignal::Profiles,
        OtlpSignal::Logs,
    ];

    /// `traces`, `metrics`, `profiles` or `logs`.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpSignal::Traces => "traces",
            OtlpSignal::Metrics => "metrics",
            OtlpSignal::Profiles => "profiles",
            OtlpSignal::Logs => "logs",
        }
    }
    fn env_part(self) -> &'static str {
        match self {
            OtlpSignal::Traces => "TRACES",
            OtlpSignal::Metrics => "METRICS",
            OtlpSignal::Profiles => "PROFILES",
            OtlpSignal::Logs => "LOGS",
        }
    }
}

/// Everything needed to talk to one signal's endpoint, with env and defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// Protocol.
    pub protocol: Protocol,
    /// Full URL (with `/v1/<signal>` for HTTP).
    pub url: String,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Compression.
    pub compression: Compression,
    /// Per-request timeout.
    pub timeout: Duration,
    /// CA file.
    pub ca_file: Option<String>,
    /// Client certificate.
    pub cert_file: Option<String>,
    /// Client key.
    pub key_file: Option<String>,
    /// Skip server certificate checks.
    pub insecure_skip_verify: bool,
}

/// Reads a variable (a function so tests can supply their own environment).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, ignoring empty values.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl OtlpConfig {
    /// Resolves one signal's settings. Errors name the config key or variable at fault.
    pub fn resolve(&self, signal: OtlpSignal, env: Env) -> Result<Resolved, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let s = signal.env_part();
        // Signal-specific variable first, then the generic one: (name, value).
        let var = |key: &str| -> Option<(String, String)> {
            let specific = format!("OTEL_EXPORTER_OTLP_{s}_{key}");
            let generic = format!("OTEL_EXPORTER_OTLP_{key}");
            env(&specific)
                .map(|v| (specific, v))
                .or_else(|| env(&generic).map(|v| (generic, v)))
        };

        let protocol = match (self.protocol, var("PROTOCOL")) {
            (Some(p), _) => p,
            (None, Some((name, v))) => Protocol::parse(&v).unwrap_or_else(|e| {
                errors.push("", format!("{name}: {e}"));
                Protocol::Grpc
            }),
            (None, None) => Protocol::Grpc,
        };

        let insecure = match (self.tls.insecure, var("INSECURE")) {
            (Some(b), _) => b,
            (None, Some((name, v))) => match v.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    errors.push("", format!("{name}: expected `true` or `false`, got `{v}`"));
                    false
                }
            },
            (None, None) => false,
        };

        let path = match signal {
            OtlpSignal::Traces => "/v1/traces",
            OtlpSignal::Metrics => "/v1/metrics",
            OtlpSignal::Profiles => "/v1development/profiles",
            OtlpSignal::Logs => "/v1/logs",
        };
        let (signal_key, config_signal_endpoint) = match signal {
            OtlpSignal::Traces => ("traces_endpoint", &self.traces_endpoint),
            OtlpSignal::Metrics => ("metrics_endpoint", &self.metrics_endpoint),
            OtlpSignal::Profiles => ("profiles_endpoint", &self.profiles_endpoint),
            OtlpSignal::Logs => ("logs_endpoint", &self.logs_endpoint),
        };
        let specific_var = format!("OTEL_EXPORTER_OTLP_{s}_ENDPOINT");
        // (where it came from, URL, whether the signal path must be appended)
        let (origin, raw, append) = if let Some(e) = config_signal_endpoint {
            (signal_key.to_string(), e.clone(), false)
        } else if let Some(e) = &self.endpoint {
            ("endpoint".to_string(), e.clone(), true)
        } else if let Some(e) = env(&specific_var) {
            (specific_var, e, false)
        } else if let Some(e) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), e, true)
        } else {
            let default = match protocol {
                Protocol::Grpc => "http://localhost:4317",
                Protocol::HttpProtobuf => "http://localhost:4318",
            };
            ("default".to_string(), default.to_string(), true)
        };
        let url = match normalize_url(&raw, insecure) {
            Ok(base) if append && protocol == Protocol::HttpProtobuf => {
                format!("{}{path}", base.trim_end_matches('/'))
            }
            Ok(base) => base,
            Err(e) => {
                let at = if origin.starts_with("OTEL_") {
                    ""
                } else {
                    origin.as_str()
                };
                let msg = if at.is_empty() {
                    format!("{origin}: {e}")
                } else {
                    e
                };
                errors.push(at, msg);
                String::new()
            }
        };

        let mut headers: Vec<(String, String)> = Vec::new();
        let add_header = |k: &str, v: &str, headers: &mut Vec<(String, String)>| {
            let k = k.trim().to_ascii_lowercase();
            headers.retain(|(existing, _)| *existing != k);
            headers.push((k, v.trim().to_string()));
        };
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS".to_string(),
            format!("OTEL_EXPORTER_OTLP_{s}_HEADERS"),
        ] {
            if let Some(list) = env(&name) {
                match parse_header_list(&list) {
                    Ok(pairs) => pairs
                        .iter()
                        .for_each(|(k, v)| add_header(k, v, &mut headers)),
                    Err(e) => errors.push("", format!("{name}: {e}")),
                }
            }
        }
        for (k, v) in &self.headers {
            if let Err(e) = check_header(k, v) {
                errors.push(format!("headers.{k}"), e);
            }
            add_header(k, v, &mut headers);
        }

        let compression = match (self.compression, var("COMPRESSION")) {
            (Some(c), _) => c,
            (None, Some((name, v))) => Compression::parse(&v).unwrap_or_else(|e| {
                errors.push("", format!("{name}: {e}"));
                Compression::Gzip
            }),
            (None, None) => Compression::Gzip,
        };

        let timeout = match (self.timeout, var("TIMEOUT")) {
            (Some(t), _) => t,
            (None, Some((name, v))) => match v.trim().parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => {
                    errors.push("", format!("{name}: expected milliseconds, got `{v}`"));
                    Duration::from_secs(10)
                }
            },
            (None, None) => Duration::from_secs(10),
        };
        if timeout.is_zero() {
            errors.push("timeout", "must be more than 0");
        }

        let ca_file = self
            .tls
            .ca_file
            .clone()
            .filter(|p| !p.is_empty()) // an empty path is no path
            .or_else(|| var("CERTIFICATE").map(|(_, v)| v));
        let cert_file = self
            .tls
            .cert_file
            .clone()
            .filter(|p| !p.is_empty()) // an empty path is no path
            .or_else(|| var("CLIENT_CERTIFICATE").map(|(_, v)| v));
        let key_file = self
            .tls
            .key_file
            .clone()
            .filter(|p| !p.is_empty()) // an empty path is no path
            .or_else(|| var("CLIENT_KEY").map(|(_, v)| v));
        if cert_file.is_some() != key_file.is_some() {
            errors.push("tls", "`cert_file` and `key_file` go together (mutual TLS)");
        }

        errors.into_result().map(|()| Resolved {
            protocol,
            url,
            headers,
            compression,
            timeout,
            ca_file,
            cert_file,
            key_file,
            insecure_skip_verify: self.tls.insecure_skip_verify,
        })
    }

    /// This config with `endpoints[i]` as its only endpoint (one member of a load-balanced set).
    pub fn for_endpoint(&self, endpoint: &str) -> OtlpConfig {
        OtlpConfig {
            endpoint: Some(endpoint.to_string()),
            endpoints: Vec::new(),
            routing_key: None,
            ..self.clone()
        }
    }

    /// The routing key load balancing uses for `signal` (see
    /// [`RoutingKey::for_signal`](crate::balance::RoutingKey::for_signal)).
    pub fn routing(&self, signal: OtlpSignal) -> Result<crate::balance::RoutingKey, String> {
        let key = self
            .routing_key
            .as_deref()
            .and_then(crate::balance::RoutingKey::parse);
        crate::balance::RoutingKey::for_signal(key, signal)
    }

    /// With `endpoints:`, that every signal served can be balanced by `routing_key`.
    pub fn check_balancing(&self, signals: &[OtlpSignal]) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::new();
        if self.endpoints.is_empty() {
            return Ok(());
        }
        let mut seen = Vec::new();
        for &s in signals {
            if seen.contains(&s) {
                continue;
            }
            seen.push(s);
            if let Err(why) = self.routing(s) {
                let key = if self.routing_key.is_some() {
                    "routing_key"
                } else {
                    "endpoints"
                };
                errors.push(
                    key,
                    format!("a {} pipeline uses this exporter: {why}", s.as_str()),
                );
            }
        }
        errors.into_result()
    }

    /// Checks what serde cannot: sizes, intervals, and (for every signal) the env-derived values.
    pub fn check(&self, signals: &[OtlpSignal], env: Env) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::new();
        if let Some(key) = &self.routing_key {
            if crate::balance::RoutingKey::parse(key).is_none() {
                errors.push(
                    "routing_key",
                    format!(
                        "`{key}` is not a routing key: use {}",
                        crate::balance::RoutingKey::NAMES
                            .map(|n| format!("`{n}`"))
                            .join(", ")
                    ),
                );
            }
            if self.endpoints.is_empty() {
                errors.push(
                    "routing_key",
                    "needs `endpoints:` (the endpoints to balance over)",
                );
            }
        }
        if !self.endpoints.is_empty() {
            for key in [
                "endpoint",
                "traces_endpoint",
                "metrics_endpoint",
                "logs_endpoint",
                "profiles_endpoint",
            ] {
                let set = match key {
                    "endpoint" => &self.endpoint,
                    "traces_endpoint" => &self.traces_endpoint,
                    "metrics_endpoint" => &self.metrics_endpoint,
                    "logs_endpoint" => &self.logs_endpoint,
                    _ => &self.profiles_endpoint,
                };
                if set.is_some() {
                    errors.push(
                        key,
                        "use either `endpoints:` (load balancing) or `endpoint:`, not both",
                    );
                }
            }
            if self.endpoints.len() > crate::balance::MAX_ENDPOINTS {
                errors.push(
                    "endpoints",
                    format!("at most {} endpoints", crate::balance::MAX_ENDPOINTS),
                );
            }
            for (i, e) in self.endpoints.iter().enumerate() {
                if self.endpoints[..i].contains(e) {
                    errors.push(format!("endpoints[{i}]"), format!("`{e}` is listed twice"));
                }
                if let Err(errs) = self.for_endpoint(e).resolve(OtlpSignal::Traces, env) {
                    for f in errs.0 {
                        errors.push(format!("endpoints[{i}]"), f.message);
                    }
                }
            }
        }
        if self.batch.send_batch_size == 0 {
            errors.push("batch.send_batch_size", "must be at least 1");
        }
        if self.batch.timeout.is_zero() {
            errors.push("batch.timeout", "must be more than 0");
        }
        if self.sending_queue.queue_size == 0 || self.sending_queue.queue_size > 1 << 30 {
            errors.push("sending_queue.queue_size", "must be 1 to 1073741824");
        }
        if self.sending_queue.num_consumers == 0 {
            errors.push("sending_queue.num_consumers", "must be at least 1");
        }
        match &self.sending_queue.storage {
            None if self.sending_queue.when_full == WhenFull::DropOldest => errors.push(
                "sending_queue.when_full",
                "`drop_oldest` needs `storage` (the queue in memory can `block` or `drop_newest`)",
            ),
            None => {}
            Some(storage) => {
                storage.check("sending_queue.storage", &mut errors);
                if !self.endpoints.is_empty() {
                    errors.push(
                        "sending_queue.storage",
                        "not yet supported with `endpoints:` (load balancing): use the queue in memory there",
                    );
                }
            }
        }
        let r = &self.retry_on_failure;
        // NaN and infinities fail these ranges too.
        if !(1.0..=100.0).contains(&r.multiplier) {
            errors.push(
                "retry_on_failure.multiplier",
                format!("must be a number from 1.0 to 100, got {}", r.multiplier),
            );
        }
        if !(0.0..=1.0).contains(&r.randomization_factor) {
            errors.push(
                "retry_on_failure.randomization_factor",
                "must be between 0 and 1",
            );
        }
        if r.initial_interval > r.max_interval {
            errors.push(
                "retry_on_failure.initial_interval",
                "must not exceed `max_interval`",
            );
        }
        for &signal in signals {
            if let Err(e) = self.resolve(signal, env) {
                for f in e.0 {
                    if !errors.0.contains(&f) {
                        errors.0.push(f);
                    }
                }
            }
        }
        errors.into_result()
    }
}

/// Accepts `http://` and `https://` URLs; `host:port` gets `https://` unless `insecure`
/// (the Collector's rule for its gRPC exporter).
fn normalize_url(raw: &str, insecure: bool) -> Result<String, String> {
    let raw = raw.trim();
    let url = if raw.starts_with("http://") || raw.starts_with("https://") {
        raw.to_string()
    } else if raw.contains("://") {
        return Err(format!("`{raw}`: the scheme must be http:// or https://"));
    } else if insecure {
        format!("http://{raw}")
    } else {
        format!("https://{raw}")
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("`{raw}` is not a URL ({e}): write e.g. http://127.0.0.1:4317"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "`{raw}` has no host: write e.g. http://127.0.0.1:4317"
        ));
    }
    Ok(url)
}

/// `k1=v1,k2=v2` with percent-encoded values (W3C baggage style, as the OTel spec says).
fn parse_header_list(list: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in list.split(',').filter(|i| !i.trim().is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not `name=value`"))?;
        let v = percent_decode(v.trim()).ok_or_else(|| format!("bad %-escape in `{item}`"))?;
        check_header(k.trim(), &v)?;
        out.push((k.trim().to_string(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    if hyper::header::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err() {
        return Err(format!("`{name}` is not a valid header name"));
    }
    if hyper::header::HeaderValue::from_str(value.trim()).is_err() {
        return Err(format!(
            "the value of `{name}` has characters a header cannot carry"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn yaml(text: &str) -> OtlpConfig {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_match_the_sdk_exporters() {
        let none = env_of(&[]);
        let c = OtlpConfig::default();
        let t = c.resolve(OtlpSignal::Traces, &none).unwrap();
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(t.url, "http://localhost:4317");
        assert_eq!(t.compression, Compression::Gzip);
        assert_eq!(t.timeout, Duration::from_secs(10));
        let c = yaml("protocol: http/protobuf");
        assert_eq!(
            c.resolve(OtlpSignal::Metrics, &none).unwrap().url,
            "http://localhost:4318/v1/metrics"
        );
    }

    #[test]
    fn http_appends_signal_paths_to_the_base_but_not_to_signal_endpoints() {
        let none = env_of(&[]);
        let c = yaml("{protocol: http/protobuf, endpoint: 'http://tempo:4318/', metrics_endpoint: 'http://m:9/custom'}");
        assert_eq!(
            c.resolve(OtlpSignal::Traces, &none).unwrap().url,
            "http://tempo:4318/v1/traces"
        );
        assert_eq!(
            c.resolve(OtlpSignal::Metrics, &none).unwrap().url,
            "http://m:9/custom"
        );
    }

    #[test]
    fn env_vars_fill_what_config_leaves_out() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/v1/t",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20abc,x-a=1",
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-a=2"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
        ]);
        let c = OtlpConfig::default();
        let t = c.resolve(OtlpSignal::Traces, &env).unwrap();
        assert_eq!(t.url, "http://traces:4318/v1/t");
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.timeout, Duration::from_millis(2500));
        assert_eq!(t.compression, Compression::None);
        assert_eq!(t.ca_file.as_deref(), Some("/ca.pem"));
        assert_eq!(
            t.headers,
            [
                ("authorization".into(), "Bearer abc".into()),
                ("x-a".into(), "1".into())
            ]
        );
        let m = c.resolve(OtlpSignal::Metrics, &env).unwrap();
        assert_eq!(m.url, "http://collector:4318/v1/metrics");
        assert_eq!(
            m.headers,
            [
                ("authorization".into(), "Bearer abc".into()),
                ("x-a".into(), "2".into())
            ]
        );
        // Config wins over env.
        let c = yaml(
            "{protocol: grpc, endpoint: 'http://127.0.0.1:4317', headers: {X-A: '3'}, timeout: 1s}",
        );
        let t = c.resolve(OtlpSignal::Traces, &env).unwrap();
        assert_eq!(t.url, "http://127.0.0.1:4317");
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!(t.headers[1], ("x-a".into(), "3".into()));
    }

    #[test]
    fn scheme_less_endpoints_follow_the_collector() {
        let none = env_of(&[]);
        let c = yaml("endpoint: tempo:4317");
        assert_eq!(
            c.resolve(OtlpSignal::Traces, &none).unwrap().url,
            "https://tempo:4317"
        );
        let c = yaml("{endpoint: tempo:4317, tls: {insecure: true}}");
        assert_eq!(
            c.resolve(OtlpSignal::Traces, &none).unwrap().url,
            "http://tempo:4317"
        );
    }

    #[test]
    fn routing_keys_per_signal() {
        use OtlpSignal::*;
        let lb = |key: &str| {
            yaml(&format!(
                "{{endpoints: [http://a:4317, http://b:4317]{key}}}"
            ))
        };
        let none = lb("");
        assert!(
            none.check_balancing(&[Traces, Metrics, Logs]).is_ok(),
            "defaults fit all"
        );
        use crate::balance::RoutingKey as K;
        assert_eq!(none.routing(Metrics), Ok(K::Service));
        assert_eq!(none.routing(Logs), Ok(K::TraceId));
        let stream = lb(", routing_key: streamID");
        assert_eq!(stream.routing(Metrics), Ok(K::StreamId));
        let e = stream
            .check_balancing(&[Traces, Metrics, Logs])
            .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["routing_key", "routing_key"], "{e}");
        assert!(e.0[0].message.contains("a traces pipeline"), "{e}");
        let bad = lb(", routing_key: span");
        let e = bad.check(&[Traces], &|_| None).unwrap_err();
        assert!(
            e.0[0]
                .message
                .contains("`traceID`, `service`, `resource`, `metric`, `streamID`"),
            "{e}"
        );
        assert!(
            yaml("{}").check_balancing(&[Metrics]).is_ok(),
            "no endpoints, nothing to check"
        );
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
        ]);
        let c = yaml("{endpoint: 'ftp://x', tls: {cert_file: /c.pem}, batch: {send_batch_size: 0}, retry_on_failure: {multiplier: 0.5}}");
        for bad in [".inf", ".nan", "1e20", "-.inf"] {
            let c = yaml(&format!(
                "{{retry_on_failure: {{multiplier: {bad}, randomization_factor: {bad}}}}}"
            ));
            let text = c
                .check(&[OtlpSignal::Traces], &env_of(&[]))
                .unwrap_err()
                .to_string();
            assert!(
                text.contains("retry_on_failure.multiplier"),
                "{bad}: {text}"
            );
            assert!(
                text.contains("retry_on_failure.randomization_factor"),
                "{bad}: {text}"
            );
        }
        let e = c
            .check(&[OtlpSignal::Traces, OtlpSignal::Metrics], &env)
            .unwrap_err();
        let text = e.to_string();
        for needle in [
            "batch.send_batch_size",
            "retry_on_failure.multiplier",
            "OTEL_EXPORTER_OTLP_PROTOCOL: `http/json` is not supported",
            "OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds",
            "OTEL_EXPORTER_OTLP_HEADERS: `novalue` is not `name=value`",
            "endpoint: `ftp://x`: the scheme must be http:// or https://",
            "tls: `cert_file` and `key_file` go together",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
        // Reported once even though both signals resolve the same values.
        assert_eq!(
            text.matches("OTEL_EXPORTER_OTLP_TIMEOUT").count(),
            1,
            "{text}"
        );
    }
}
