//! `prometheusremotewrite` exporter: metrics to a Prometheus remote-write endpoint (Prometheus
//! with `--web.enable-remote-write-receiver`, Mimir, Thanos receive, VictoriaMetrics…), with the
//! keys and defaults of the Collector contrib exporter. Names and labels follow the same
//! specification rules as the `prometheus` exporter (the shared `oxeye-prometheus-series`);
//! delta points are accumulated into cumulative series, as remote write has no deltas.
//!
//! A batch's series go out as requests through `remote_write_queue` (bounded: full, it holds
//! the pipeline back and its receivers back off, nothing is dropped); `num_consumers` send them.
//! A request given up after its retries, or refused for good, has its points counted as
//! dropped with the reason; at the shutdown deadline, what is still queued is counted too.

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
use oxeye_sending::Ledger;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, warn};

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
        let q = &c.remote_write_queue;
        let (tx, rx) = if q.enabled {
            let (tx, rx) = mpsc::channel(q.queue_size);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Ok(Box::new(RemoteWriteExporter {
            shared: Arc::new(Shared {
                sender: Sender::new(&c)?,
                ledger: Ledger::new(ctx.telemetry.clone()),
                id: ctx.id,
            }),
            store: Store::new(Settings {
                namespace: c.namespace,
                const_labels: c.external_labels.into_iter().collect(),
                resource_labels: c.resource_to_telemetry_conversion.enabled,
                suffixes: c.add_metric_suffixes,
                expiration: c.metric_expiration,
                track_updates: true,
            }),
            tx,
            rx,
            consumers: JoinSet::new(),
            num_consumers: c.remote_write_queue.num_consumers,
            max_bytes: c.max_batch_size_bytes,
            target_info: c.target_info.enabled,
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(RemoteWriteFactory);

/// What the consumers share.
struct Shared {
    sender: Sender,
    ledger: Ledger,
    id: String,
}

impl Shared {
    /// Sends one request (retrying as configured) and settles its points.
    async fn deliver(&self, r: write::Request) {
        match self.sender.send(Bytes::from(r.body)).await {
            Ok(()) => self.ledger.settle(r.points, r.points, "delivered"),
            Err(f) => {
                warn!(exporter = %self.id, points = r.points, "prometheusremotewrite: dropped a request: {}", f.message);
                self.ledger.settle(r.points, 0, f.reason);
            }
        }
    }
}

/// Takes requests off the queue and delivers them, until the queue is closed and empty.
async fn consumer(
    shared: Arc<Shared>,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<write::Request>>>,
) {
    loop {
        let next = queue.lock().await.recv().await;
        match next {
            Some(r) => shared.deliver(r).await,
            None => return,
        }
    }
}

/// The exporter: the series (deltas accumulate there), the queue and its consumers.
pub struct RemoteWriteExporter {
    shared: Arc<Shared>,
    store: Store,
    /// The queue (`None` once shut down, or with the queue off).
    tx: Option<mpsc::Sender<write::Request>>,
    /// Until the consumers start.
    rx: Option<mpsc::Receiver<write::Request>>,
    consumers: JoinSet<()>,
    num_consumers: usize,
    max_bytes: usize,
    target_info: bool,
    telemetry: Telemetry,
}

impl RemoteWriteExporter {
    /// Starts the consumers on the current runtime (on first use).
    fn start(&mut self) {
        if let Some(rx) = self.rx.take() {
            let queue = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..self.num_consumers {
                self.consumers
                    .spawn(consumer(Arc::clone(&self.shared), Arc::clone(&queue)));
            }
        }
    }

    /// The requests carrying the series `metrics` updated; points that cannot be shown are
    /// counted as dropped here.
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
        self.start();
        let (requests, refused) = self.requests(&batch, metrics);
        // Points with no value (flagged "no recorded value") have nothing to send: done.
        let queued: u64 = requests.iter().map(|r| r.points).sum();
        self.telemetry
            .add_emitted((batch.len() as u64).saturating_sub(refused + queued));
        self.shared.ledger.add(queued);
        let Some(tx) = &self.tx else {
            // No queue: this batch's requests go out before the next batch is taken.
            let shared = &self.shared;
            futures_util::stream::iter(requests.into_iter().map(|r| shared.deliver(r)))
                .buffer_unordered(self.num_consumers)
                .collect::<Vec<()>>()
                .await;
            return Ok(());
        };
        for r in requests {
            // Waits while the queue is full: the pipeline behind waits too.
            if let Err(unsent) = tx.send(r).await {
                let r = unsent.0;
                self.shared.ledger.settle(r.points, 0, "component_stopped");
                return Err("prometheusremotewrite: its consumers stopped".into());
            }
        }
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
        if let Some(ended) = self.consumers.try_join_next() {
            return Err(format!("prometheusremotewrite: a consumer stopped: {ended:?}").into());
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), BoxError> {
        // Closing the queue lets the consumers drain it and stop; the engine's deadline bounds this.
        self.tx = None;
        self.start();
        while let Some(r) = self.consumers.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    return Err(format!("a prometheusremotewrite consumer panicked: {e}").into());
                }
            }
        }
        Ok(())
    }
}

impl Drop for RemoteWriteExporter {
    fn drop(&mut self) {
        // Aborted at the shutdown deadline (or shut down normally: nothing left then).
        self.consumers.abort_all();
        let n = self.shared.ledger.abandon();
        if n > 0 {
            error!(exporter = %self.shared.id, points = n, "shutdown deadline passed with requests still queued or retrying: dropped");
        }
    }
}
