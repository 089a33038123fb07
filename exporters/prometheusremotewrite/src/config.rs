//! `exporters.prometheusremotewrite`: the Collector contrib exporter's keys and defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use oxeye_api::config::duration;
use oxeye_api::ConfigErrors;
pub use oxeye_diskqueue::{StorageConfig, WhenFull};
use oxeye_prometheus_series::valid_label;
use serde::Deserialize;

/// The exporter's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// The remote-write URL, e.g. `http://prometheus:9090/api/v1/write` (required).
    pub endpoint: String,
    /// Extra HTTP headers on every request (e.g. `Authorization`, `X-Scope-OrgID`).
    pub headers: BTreeMap<String, String>,
    /// Longest one request may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Only `snappy`: remote write 1.0 requires it.
    pub compression: String,
    /// TLS for an `https://` endpoint.
    pub tls: Tls,
    /// Prefix of every metric name (`<namespace>_<name>`).
    pub namespace: String,
    /// Labels on every series (they replace a label of the same name).
    pub external_labels: BTreeMap<String, String>,
    /// Every resource attribute as a label too (`job` and `instance` always are).
    pub resource_to_telemetry_conversion: Conversion,
    /// Unit and `_total` suffixes on names.
    pub add_metric_suffixes: bool,
    /// `target_info` series with the resource attributes.
    pub target_info: TargetInfo,
    /// Largest uncompressed request; a batch's series are split into requests below it.
    pub max_batch_size_bytes: usize,
    /// Retries of a request that failed for a reason that may pass.
    pub retry_on_failure: Retry,
    /// How many requests of one batch are sent at once.
    pub remote_write_queue: Queue,
    /// Series (their accumulated deltas among them) not updated for this long are forgotten.
    #[serde(with = "duration")]
    pub metric_expiration: Duration,
}

/// `resource_to_telemetry_conversion`: off unless `enabled: true`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conversion {
    pub enabled: bool,
}

/// `target_info`: on unless `enabled: false`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetInfo {
    pub enabled: bool,
}

impl Default for TargetInfo {
    fn default() -> Self {
        TargetInfo { enabled: true }
    }
}

/// `tls`, as the `otlp` exporter's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<String>,
    /// PEM client certificate (mutual TLS); needs `key_file`.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
    /// Accept any server certificate (testing only).
    pub insecure_skip_verify: bool,
}

impl Tls {
    /// As the shared TLS code takes them.
    pub fn settings(&self) -> oxeye_sending::tls::ClientTls {
        oxeye_sending::tls::ClientTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
        }
    }
}

/// `retry_on_failure`: exponential backoff with jitter, as the Collector's exporters retry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    pub enabled: bool,
    #[serde(with = "duration")]
    pub initial_interval: Duration,
    #[serde(with = "duration")]
    pub max_interval: Duration,
    /// After this long a request is given up and its points counted as dropped; 0: never.
    #[serde(with = "duration")]
    pub max_elapsed_time: Duration,
    pub multiplier: f64,
    pub randomization_factor: f64,
}

/// `remote_write_queue`: requests waiting to be sent, and how many are sent at once. Full, it
/// holds the pipeline back (its receivers back off) rather than drop.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Off: each batch's requests are sent before the next batch is taken.
    pub enabled: bool,
    /// Requests it holds (each at most `max_batch_size_bytes`).
    pub queue_size: usize,
    /// Requests sent at once.
    pub num_consumers: usize,
    /// The queue on disk instead of in memory (one per consumer, so each series stays in
    /// order): a restart, a crash or an OOM kill loses nothing that was queued.
    pub storage: Option<StorageConfig>,
    /// Full: `block` (the default), `drop_newest`, or `drop_oldest` (with `storage`).
    pub when_full: WhenFull,
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        RemoteWriteConfig {
            endpoint: String::new(),
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(5),
            compression: "snappy".into(),
            tls: Tls::default(),
            namespace: String::new(),
            external_labels: BTreeMap::new(),
            resource_to_telemetry_conversion: Conversion::default(),
            add_metric_suffixes: true,
            target_info: TargetInfo::default(),
            max_batch_size_bytes: 3_000_000,
            retry_on_failure: Retry::default(),
            remote_write_queue: Queue::default(),
            metric_expiration: Duration::from_secs(300),
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        // The contrib exporter's defaults.
        Retry {
            enabled: true,
            initial_interval: Duration::from_millis(50),
            max_interval: Duration::from_millis(200),
            max_elapsed_time: Duration::from_secs(60),
            multiplier: 1.5,
            randomization_factor: 0.5,
        }
    }
}

impl Default for Queue {
    fn default() -> Self {
        // The contrib exporter's defaults.
        Queue {
            enabled: true,
            queue_size: 10_000,
            num_consumers: 5,
            storage: None,
            when_full: WhenFull::Block,
        }
    }
}

impl RemoteWriteConfig {
    /// Every mistake, at its key.
    pub fn check(&self) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        match self.endpoint.parse::<hyper::Uri>() {
            _ if self.endpoint.is_empty() => e.push(
                "endpoint",
                "required: the remote-write URL, e.g. http://127.0.0.1:9090/api/v1/write",
            ),
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => e.push(
                "endpoint",
                format!(
                    "`{}` is not an http:// or https:// URL, e.g. http://127.0.0.1:9090/api/v1/write",
                    self.endpoint
                ),
            ),
        }
        for (k, v) in &self.headers {
            if hyper::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                e.push(
                    format!("headers.{k}"),
                    format!("`{k}` is not an HTTP header name"),
                );
            } else if hyper::header::HeaderValue::from_str(v).is_err() {
                e.push(
                    format!("headers.{k}"),
                    "the value is not a valid HTTP header value",
                );
            }
        }
        if self.timeout.is_zero() {
            e.push("timeout", "must be longer than 0s");
        }
        if self.compression != "snappy" {
            e.push(
                "compression",
                format!(
                    "`{}`: remote write 1.0 bodies are snappy-compressed; only `snappy` is accepted",
                    self.compression
                ),
            );
        }
        if !self.namespace.is_empty() && !valid_label(&self.namespace) {
            e.push(
                "namespace",
                format!(
                    "`{}` is not a Prometheus name prefix: letters, digits and `_`",
                    self.namespace
                ),
            );
        }
        for k in self.external_labels.keys() {
            if !valid_label(k) {
                e.push(
                    format!("external_labels.{k}"),
                    format!("`{k}` is not a Prometheus label name: letters, digits and `_`, not starting with a digit or `__`"),
                );
            }
        }
        if !(1024..=1 << 28).contains(&self.max_batch_size_bytes) {
            e.push(
                "max_batch_size_bytes",
                format!(
                    "must be 1024 to 268435456 (256 MiB), got {}",
                    self.max_batch_size_bytes
                ),
            );
        }
        let r = &self.retry_on_failure;
        if r.enabled {
            if r.initial_interval.is_zero() {
                e.push(
                    "retry_on_failure.initial_interval",
                    "must be longer than 0s",
                );
            }
            if r.max_interval < r.initial_interval {
                e.push(
                    "retry_on_failure.max_interval",
                    "must be at least initial_interval",
                );
            }
            if !(r.multiplier >= 1.0 && r.multiplier.is_finite()) {
                e.push(
                    "retry_on_failure.multiplier",
                    format!("must be 1 or more, got {}", r.multiplier),
                );
            }
            if !(0.0..=1.0).contains(&r.randomization_factor) {
                e.push(
                    "retry_on_failure.randomization_factor",
                    format!("must be 0 to 1, got {}", r.randomization_factor),
                );
            }
        }
        let q = &self.remote_write_queue;
        if q.num_consumers == 0 {
            e.push("remote_write_queue.num_consumers", "must be at least 1");
        }
        if q.enabled && !(1..=1_000_000).contains(&q.queue_size) {
            e.push(
                "remote_write_queue.queue_size",
                format!("must be 1 to 1000000 requests, got {}", q.queue_size),
            );
        }
        match &q.storage {
            Some(storage) => {
                storage.check("remote_write_queue.storage", &mut e);
                if !q.enabled {
                    e.push(
                        "remote_write_queue.storage",
                        "needs the queue: `enabled: true`",
                    );
                }
            }
            None if q.when_full != WhenFull::Block => e.push(
                "remote_write_queue.when_full",
                "the queue in memory can only `block`: `drop_newest` and `drop_oldest` need `storage`",
            ),
            None => {}
        }
        let given = |f: &Option<String>| f.as_deref().is_some_and(|p| !p.is_empty());
        if given(&self.tls.cert_file) != given(&self.tls.key_file) {
            e.push("tls", "`cert_file` and `key_file` go together (mutual TLS)");
        } else if let Err(why) = oxeye_sending::tls::client_config(
            &self.tls.settings(),
            self.endpoint.starts_with("https://"),
        ) {
            // The files are read as `run` reads them: what it would refuse, refused here.
            e.push("tls", why.to_string());
        }
        if self.metric_expiration.is_zero() {
            e.push("metric_expiration", "must be longer than 0s");
        }
        e.into_result()
    }
}

#[cfg(test)]
mod tests {
    use crate::RemoteWriteFactory;
    use oxeye_api::testing::check;

    #[test]
    fn every_mistake_at_its_key() {
        let e = check::<RemoteWriteFactory>(
            "endpoint: 127.0.0.1:9090\nheaders: {'bad header': x}\ncompression: gzip\nexternal_labels: {'__x': a}\nmax_batch_size_bytes: 10\nretry_on_failure: {multiplier: 0.5}\nremote_write_queue: {num_consumers: 0}",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "endpoint",
                "headers.bad header",
                "compression",
                "external_labels.__x",
                "max_batch_size_bytes",
                "retry_on_failure.multiplier",
                "remote_write_queue.num_consumers"
            ],
            "{e:?}"
        );
        assert!(
            check::<RemoteWriteFactory>("{}").is_err(),
            "endpoint is required"
        );
        assert!(
            check::<RemoteWriteFactory>("endpoint: http://127.0.0.1:9090/api/v1/write").is_ok()
        );
    }

    #[test]
    fn the_queue_on_disk_is_checked_where_it_is_configured() {
        let at = |yaml: &str| -> Vec<String> {
            let full = format!("endpoint: http://127.0.0.1:9090/api/v1/write\n{yaml}");
            match check::<RemoteWriteFactory>(&full) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.iter().map(|f| f.path.clone()).collect(),
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        assert_eq!(
            at(&format!(
                "remote_write_queue: {{storage: {{directory: {d}}}}}"
            )),
            Vec::<String>::new()
        );
        assert_eq!(
            at(&format!(
                "remote_write_queue: {{when_full: drop_oldest, storage: {{directory: {d}, max_size: 1000, fsync: 0s}}}}"
            )),
            [
                "remote_write_queue.storage.max_size",
                "remote_write_queue.storage.fsync"
            ]
        );
        assert_eq!(
            at("remote_write_queue: {when_full: drop_newest}"),
            ["remote_write_queue.when_full"]
        );
        assert_eq!(
            at(&format!(
                "remote_write_queue: {{enabled: false, storage: {{directory: {d}}}}}"
            )),
            ["remote_write_queue.storage"]
        );
        assert_eq!(
            at("remote_write_queue: {storage: {directory: /proc/oxeye}}"),
            ["remote_write_queue.storage.directory"]
        );
    }
}
