//! `prometheusremotewrite` exporter: metrics to a Prometheus remote-write endpoint (Prometheus
//! with `--web.enable-remote-write-receiver`, Mimir, Thanos receive, VictoriaMetrics…), with the
//! keys and defaults of the Collector contrib exporter. Names and labels follow the same
//! specification rules as the `prometheus` exporter (the shared `oxeye-prometheus-series`);
//! delta points are accumulated into cumulative series, as remote write has no deltas.
//!
//! Each batch is sent before the next is taken, so a slow or failing endpoint holds the
//! pipeline back (its receivers back off) instead of piling batches up; a request given up
//! after its retries, or refused for good, has its points counted as dropped with the reason.

mod config;
mod send;
mod write;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Exporter, Factory, Records, Signal, Telemetry,
};
use oxeye_prometheus_series::store::{Settings, Store};
use tracing::warn;

pub use config::RemoteWriteConfig;
use send::Sender;

/// The factory.
pub struct RemoteWriteFactory;

impl Factory for RemoteWriteFactory {
    type Config = RemoteWriteConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "prometheusremotewrite";
    const SIGNALS: &'static [Signal] = &[Signal::Metrics];
    const DESCRIPTION: &'static str = "metrics to a Prometheus remote-write endpoint";
    const DOCS: &'static str =
        include_str!("../../../docs/components/exporter-prometheusremotewrite.md");

    fn validate(c: &RemoteWriteConfig) -> Result<(), ConfigErrors> {
        c.check()
    }

    fn build(c: RemoteWriteConfig, ctx: BuildContext) -> Result<Box<dyn Exporter>, BoxError> {
        let sender = Arc::new(Sender::new(&c)?);
        Ok(Box::new(RemoteWriteExporter {
            store: Store::new(Settings {
                namespace: c.namespace,
                const_labels: c.external_labels.into_iter().collect(),
                resource_labels: c.resource_to_telemetry_conversion.enabled,
                suffixes: c.add_metric_suffixes,
                expiration: c.metric_expiration,
                track_updates: true,
            }),
            sender,
            max_bytes: c.max_batch_size_bytes,
            consumers: c.remote_write_queue.num_consumers,
            target_info: c.target_info.enabled,
            source: ctx.id,
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(RemoteWriteFactory);

/// The exporter: the series (deltas accumulate there) and the client.
pub struct RemoteWriteExporter {
    store: Store,
    sender: Arc<Sender>,
    max_bytes: usize,
    consumers: usize,
    target_info: bool,
    source: String,
    telemetry: Telemetry,
}

impl RemoteWriteExporter {
    /// The requests carrying the series `metrics` updated.
    fn requests(
        &mut self,
        batch: &Batch,
        metrics: &[oxeye_api::Metric],
    ) -> (Vec<write::Request>, u64) {
        let refused = self.store.add(&batch.resource, metrics, Instant::now());
        self.telemetry
            .add_dropped("unsupported_type", refused.unsupported);
        self.telemetry
            .add_dropped("name_collision", refused.collisions);
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut requests = write::Builder::new(self.max_bytes, now_ms);
        let target_info = self.target_info;
        self.store.drain_updated(|u| {
            if target_info || u.family.name() != "target_info" {
                requests.add(&u);
            }
        });
        (
            requests.requests(),
            refused.unsupported + refused.collisions,
        )
    }
}

#[async_trait]
impl Exporter for RemoteWriteExporter {
    async fn export(&mut self, batch: Arc<Batch>) -> Result<(), BoxError> {
        let Records::Metrics(metrics) = &batch.records else {
            return Ok(());
        };
        let (requests, refused) = self.requests(&batch, metrics);
        let sends = requests.into_iter().map(|r| {
            let sender = Arc::clone(&self.sender);
            async move { (r.points, sender.send(Bytes::from(r.body)).await) }
        });
        let results: Vec<_> = futures_util::stream::iter(sends)
            .buffer_unordered(self.consumers)
            .collect()
            .await;
        let mut failed = 0;
        for (points, result) in results {
            if let Err(f) = result {
                warn!(exporter = %self.source, points, "prometheusremotewrite: dropped a request: {}", f.message);
                self.telemetry.add_dropped(f.reason, points);
                failed += points;
            }
        }
        self.telemetry
            .add_emitted((batch.len() as u64).saturating_sub(refused + failed));
        Ok(())
    }

    fn counts_delivery(&self) -> bool {
        true
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(5))
    }

    async fn tick(&mut self, _now: SystemTime) -> Result<(), BoxError> {
        self.store.expire(Instant::now());
        Ok(())
    }
}
