//! `prometheusremotewrite` exporter: metrics to a Prometheus remote-write endpoint (Prometheus
//! with `--web.enable-remote-write-receiver`, Mimir, Thanos receive, VictoriaMetrics…), with the
//! keys and defaults of the Collector contrib exporter. Names and labels follow the same
//! specification rules as the `prometheus` exporter (the shared `oxeye-prometheus-series`);
//! delta points are accumulated into cumulative series, as remote write has no deltas.
//!
//! A batch's series go out as requests through `remote_write_queue` (bounded: full, it holds
//! the pipeline back and its receivers back off, nothing is dropped), split into
//! `num_consumers` shards by series, each sent in order by a consumer of its own — so
//! concurrent requests never put one series' samples out of order, as Prometheus's own remote
//! write shards.
//! A request given up after its retries, or refused for good, has its points counted as
//! dropped with the reason; at the shutdown deadline, what is still queued is counted too.

mod config;
mod send;
mod write;

/// What `tests/benches/remotewrite.rs` measures without the network, and what the `prompb`
/// fuzz target checks: not an API.
#[doc(hidden)]
pub mod bench {
    use oxeye_api::{Batch, Records};
    use oxeye_prometheus_series::store::{Settings, Store};

    pub use crate::write::{encode_series, prompb, series_len};

    /// Every batch through a store with the defaults into requests of `shards` shards, as the
    /// exporter makes them: (requests, compressed bytes, points).
    pub fn requests(batches: &[std::sync::Arc<Batch>], shards: usize) -> (usize, usize, u64) {
        let mut store = Store::new(Settings {
            namespace: String::new(),
            const_labels: Vec::new(),
            resource_labels: false,
            suffixes: true,
            expiration: std::time::Duration::from_secs(300),
            track_updates: true,
        });
        let (mut requests, mut bytes, mut points) = (0, 0, 0);
        for b in batches {
            let Records::Metrics(m) = &b.records else {
                continue;
            };
            store.add(&b.resource, m, std::time::Instant::now());
            let mut w = crate::write::Builder::new(3_000_000, 0, shards);
            store.drain_updated(|u| w.add(&u));
            for r in w.requests() {
                requests += 1;
                bytes += r.body.len();
                points += r.points;
            }
        }
        (requests, bytes, points)
    }
}

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
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
        let (mut tx, mut rx) = (Vec::new(), Vec::new());
        if q.enabled {
            // queue_size in all, shared out among the shards.
            let each = q.queue_size.div_ceil(q.num_consumers);
            for _ in 0..q.num_consumers {
                let (t, r) = mpsc::channel(each);
                tx.push(t);
                rx.push(r);
            }
        }
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
            queued: q.enabled,
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

/// Delivers one shard's requests in order, until its queue is closed and empty.
async fn consumer(shared: Arc<Shared>, mut queue: mpsc::Receiver<write::Request>) {
    while let Some(r) = queue.recv().await {
        shared.deliver(r).await;
    }
}

/// The exporter: the series (deltas accumulate there), the queue and its consumers.
pub struct RemoteWriteExporter {
    shared: Arc<Shared>,
    store: Store,
    /// `remote_write_queue.enabled`.
    queued: bool,
    /// Each shard's queue (none once shut down, or with the queue off).
    tx: Vec<mpsc::Sender<write::Request>>,
    /// Until the consumers start.
    rx: Vec<mpsc::Receiver<write::Request>>,
    consumers: JoinSet<()>,
    num_consumers: usize,
    max_bytes: usize,
    target_info: bool,
    telemetry: Telemetry,
}

impl RemoteWriteExporter {
    /// Starts the consumers on the current runtime (on first use).
    fn start(&mut self) {
        for rx in self.rx.drain(..) {
            self.consumers.spawn(consumer(Arc::clone(&self.shared), rx));
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
        let mut requests = write::Builder::new(self.max_bytes, now_ms, self.num_consumers);
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
        if !self.queued {
            // No queue: this batch's requests go out before the next batch is taken, the
            // shards side by side, each shard's in order.
            let mut shards: Vec<Vec<write::Request>> =
                (0..self.num_consumers).map(|_| Vec::new()).collect();
            for r in requests {
                shards[r.shard].push(r);
            }
            let shared = &self.shared;
            futures_util::future::join_all(shards.into_iter().map(|shard| async move {
                for r in shard {
                    shared.deliver(r).await;
                }
            }))
            .await;
            return Ok(());
        }
        for r in requests {
            let Some(tx) = self.tx.get(r.shard) else {
                self.shared.ledger.settle(r.points, 0, "component_stopped");
                return Err("prometheusremotewrite: export after shutdown".into());
            };
            // Waits while the shard's queue is full: the pipeline behind waits too.
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
        self.tx.clear();
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
