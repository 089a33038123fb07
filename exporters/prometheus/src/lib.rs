//! `prometheus` exporter: metrics on a Prometheus scrape endpoint (`GET /metrics`, text format
//! 0.0.4), with the settings of the Collector's `prometheus` exporter. Names follow the
//! OpenTelemetry specification's Prometheus rules (`oxeye-prometheus-series`); delta points add up into
//! cumulative series; a series not updated for `metric_expiration` is dropped from the
//! endpoint. Exponential histogram points (the text format cannot show them) and points whose
//! Prometheus name another metric of another type holds are counted as dropped, with the reason.

/// What `tests/benches/prometheus.rs` measures without the endpoint: not an API.
#[doc(hidden)]
pub mod bench {
    use std::time::Instant;

    use oxeye_api::Batch;
    use oxeye_prometheus_series::store::{Settings, Store};

    /// A store with the defaults holding `batches`, rendered as a scrape: the text and how long
    /// rendering took.
    pub fn scrape(batches: &[Batch]) -> (String, std::time::Duration) {
        let mut store = Store::new(Settings {
            namespace: String::new(),
            const_labels: Vec::new(),
            resource_labels: false,
            suffixes: true,
            expiration: std::time::Duration::from_secs(300),
            track_updates: false,
        });
        let now = Instant::now();
        for b in batches {
            if let oxeye_api::Records::Metrics(m) = &b.records {
                store.add(&b.resource, m, now);
            }
        }
        let store = std::sync::Mutex::new(store);
        let t0 = Instant::now();
        let text = crate::scrape(&store);
        (text, t0.elapsed())
    }
}

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Exporter, Factory, Records, Signal, Telemetry,
};
use serde::Deserialize;
use tracing::{info, warn};

use oxeye_prometheus_series::store::{Settings, Store};
use oxeye_prometheus_series::valid_label;

/// `exporters.prometheus`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// `host:port` of the scrape endpoint.
    pub endpoint: String,
    /// Prefix of every metric name (`<namespace>_<name>`).
    pub namespace: String,
    /// Labels on every series.
    pub const_labels: BTreeMap<String, String>,
    /// Every resource attribute as a label too (`job` and `instance` always are).
    pub resource_to_telemetry_conversion: Conversion,
    /// A series not updated for this long leaves the endpoint.
    #[serde(with = "oxeye_api::config::duration")]
    pub metric_expiration: Duration,
    /// Unit and `_total` suffixes on names.
    pub add_metric_suffixes: bool,
}

/// `resource_to_telemetry_conversion`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversion {
    /// Off by default, as in the Collector.
    pub enabled: bool,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            endpoint: "127.0.0.1:8889".into(),
            namespace: String::new(),
            const_labels: BTreeMap::new(),
            resource_to_telemetry_conversion: Conversion::default(),
            metric_expiration: Duration::from_secs(300),
            add_metric_suffixes: true,
        }
    }
}

/// The factory.
pub struct PrometheusFactory;

impl Factory for PrometheusFactory {
    type Config = PrometheusConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "prometheus";
    const SIGNALS: &'static [Signal] = &[Signal::Metrics];
    const DESCRIPTION: &'static str = "metrics on a Prometheus scrape endpoint";
    const DOCS: &'static str = include_str!("../../../docs/components/exporter-prometheus.md");

    fn validate(c: &PrometheusConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if c.endpoint.parse::<SocketAddr>().is_err() {
            e.push(
                "endpoint",
                format!("`{}` is not host:port (e.g. 127.0.0.1:8889, or 0.0.0.0:8889 for every interface)", c.endpoint),
            );
        }
        for k in c.const_labels.keys() {
            if !valid_label(k) {
                e.push(
                    format!("const_labels.{k}"),
                    format!("`{k}` is not a Prometheus label name: letters, digits and `_`, not starting with a digit or `__`"),
                );
            }
        }
        if !c.namespace.is_empty() && !valid_label(&c.namespace) {
            e.push(
                "namespace",
                format!(
                    "`{}` is not a Prometheus name prefix: letters, digits and `_`",
                    c.namespace
                ),
            );
        }
        if c.metric_expiration.is_zero() {
            e.push("metric_expiration", "must be longer than 0s");
        }
        e.into_result()
    }

    fn build(c: PrometheusConfig, ctx: BuildContext) -> Result<Box<dyn Exporter>, BoxError> {
        let endpoint = c.endpoint.parse()?;
        let store = Store::new(Settings {
            namespace: c.namespace,
            const_labels: c.const_labels.into_iter().collect(),
            resource_labels: c.resource_to_telemetry_conversion.enabled,
            suffixes: c.add_metric_suffixes,
            expiration: c.metric_expiration,
            track_updates: false,
        });
        Ok(Box::new(PrometheusExporter {
            store: Arc::new(Mutex::new(store)),
            endpoint,
            server: None,
            bind_failures: 0,
            source: ctx.id,
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(PrometheusFactory);

/// The exporter: the series, and the endpoint serving them.
pub struct PrometheusExporter {
    store: Arc<Mutex<Store>>,
    endpoint: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
    /// Binds tried and failed, in all.
    bind_failures: u64,
    source: String,
    telemetry: Telemetry,
}

/// One scrape: every series, through the `prometheus` crate's text encoder.
fn scrape(store: &Mutex<Store>) -> String {
    store.lock().unwrap_or_else(|p| p.into_inner()).render()
}

impl PrometheusExporter {
    /// Starts the endpoint (on the first batch or tick: building, as `validate` does, binds
    /// nothing); while the port is taken, tries again at the next one.
    async fn serve(&mut self) -> Result<(), BoxError> {
        if self.server.is_some() {
            return Ok(());
        }
        // Not fatal: on reload, the instance this one replaces may hold the port until it has
        // drained; batches are kept meanwhile and the bind is tried again every tick.
        let listener = match tokio::net::TcpListener::bind(self.endpoint).await {
            Ok(l) => l,
            Err(e) => {
                self.bind_failures += 1;
                self.telemetry.set_counter(
                    "prometheus_bind_failures",
                    &self.source,
                    self.bind_failures,
                );
                if self.bind_failures == 1 || self.bind_failures.is_multiple_of(120) {
                    warn!(endpoint = %self.endpoint, failures = self.bind_failures, "prometheus exporter: cannot listen for scrapes: {e}; trying again every 500 ms");
                }
                return Ok(());
            }
        };
        let store = Arc::clone(&self.store);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let store = Arc::clone(&store);
                async move {
                    // Rendering 100 000 series takes tens of ms: off the async workers.
                    let body = tokio::task::spawn_blocking(move || scrape(&store))
                        .await
                        .unwrap_or_else(|e| format!("# oxeye: scrape failed: {e}\n"));
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        body,
                    )
                }
            }),
        );
        info!(endpoint = %self.endpoint, "prometheus exporter: serving /metrics");
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
        Ok(())
    }
}

#[async_trait]
impl Exporter for PrometheusExporter {
    async fn export(&mut self, batch: Arc<Batch>) -> Result<(), BoxError> {
        self.serve().await?;
        let Records::Metrics(metrics) = &batch.records else {
            return Ok(());
        };
        let refused = self.store.lock().unwrap_or_else(|p| p.into_inner()).add(
            &batch.resource,
            metrics,
            Instant::now(),
        );
        let dropped = refused.unsupported + refused.collisions;
        self.telemetry
            .add_dropped("unsupported_type", refused.unsupported);
        self.telemetry
            .add_dropped("name_collision", refused.collisions);
        self.telemetry
            .add_emitted((batch.len() as u64).saturating_sub(dropped));
        Ok(())
    }

    fn counts_delivery(&self) -> bool {
        true
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(500))
    }

    async fn tick(&mut self, _now: SystemTime) -> Result<(), BoxError> {
        self.serve().await?;
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        store.expire(Instant::now());
        self.telemetry
            .set_counter("prometheus_series", &self.source, store.len() as u64);
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), BoxError> {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        Ok(())
    }
}

impl Drop for PrometheusExporter {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::check;

    #[test]
    fn config_mistakes_are_reported_at_their_fields() {
        let e = check::<PrometheusFactory>(
            "endpoint: localhost\nconst_labels: {'1x': a, ok: b}\nmetric_expiration: 0s\nnamespace: 'a-b'",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "endpoint",
                "const_labels.1x",
                "namespace",
                "metric_expiration"
            ],
            "{e:?}"
        );
        assert!(check::<PrometheusFactory>("").is_ok());
    }
}
