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
//! write shards. A request given up after its retries, or refused for good, has its points
//! counted as dropped with the reason; at the shutdown deadline, what is still queued is counted
//! too. `export` waits for room for all of a batch's requests before it counts or queues any:
//! cancelled at the deadline while waiting, the engine counts the whole batch, once.
//!
//! With `remote_write_queue.storage` each shard's queue is on disk (`persist.rs`).

mod config;
mod persist;
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
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
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
        let persistent = match &q.storage {
            Some(storage) => {
                persist::check(storage, &ctx.id, q.num_consumers)?;
                Some(persist::Persistent::new(storage.clone(), q.when_full))
            }
            None => None,
        };
        // queue_size shared out among the shards; off, one request a shard.
        let room = if q.enabled {
            q.queue_size.div_ceil(q.num_consumers)
        } else {
            1
        };
        let mut shards = Vec::new();
        let mut queues = Vec::new();
        for _ in 0..q.num_consumers {
            let (tx, rx) = mpsc::unbounded_channel();
            shards.push(Shard {
                tx,
                room: Arc::new(Semaphore::new(room)),
                capacity: room as u32,
            });
            queues.push(rx);
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
            shards,
            queues,
            persistent,
            consumers: JoinSet::new(),
            max_bytes: c.max_batch_size_bytes,
            target_info: c.target_info.enabled,
            telemetry: ctx.telemetry,
            expired: Instant::now(),
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

/// A queued request and the room it takes in its shard's queue, freed once it is settled
/// (none for the requests of a batch beyond a whole queue).
type Queued = (write::Request, Option<OwnedSemaphorePermit>);

/// One shard's queue: room counted in requests by a semaphore, so `export` can wait for room
/// for a whole batch before queueing any of it.
struct Shard {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    capacity: u32,
}

/// Delivers one shard's requests in order, until its queue is closed and empty.
async fn consumer(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Queued>) {
    while let Some((r, room)) = queue.recv().await {
        shared.deliver(r).await;
        drop(room);
    }
}

/// The exporter: the series (deltas accumulate there), the shards and their consumers.
pub struct RemoteWriteExporter {
    shared: Arc<Shared>,
    store: Store,
    /// Each shard's queue (none once shut down).
    shards: Vec<Shard>,
    /// Until the consumers start.
    queues: Vec<mpsc::UnboundedReceiver<Queued>>,
    /// The shards' queues on disk instead (`remote_write_queue.storage`).
    persistent: Option<persist::Persistent>,
    consumers: JoinSet<()>,
    max_bytes: usize,
    target_info: bool,
    telemetry: Telemetry,
    /// When series last expired (every 5 s).
    expired: Instant,
}

/// A batch's requests and what is counted with them.
struct Outgoing {
    requests: Vec<write::Request>,
    /// Points that cannot be shown: (exponential histograms, name collisions).
    refused: (u64, u64),
}

impl RemoteWriteExporter {
    /// Starts the consumers on the current runtime (on first use), opening the queues on disk
    /// first when they are there.
    async fn start(&mut self) -> Result<(), BoxError> {
        if let Some(p) = &mut self.persistent {
            if p.disks.is_empty() {
                let (id, n) = (self.shared.id.clone(), self.shards.len());
                let disks = p.open(&id, n, self.telemetry.clone()).await?;
                for disk in &disks {
                    self.consumers.spawn(persist::consumer(
                        Arc::clone(&self.shared),
                        Arc::clone(disk),
                        Arc::clone(&p.closing),
                    ));
                }
                p.started(disks);
            }
            return Ok(());
        }
        for rx in self.queues.drain(..) {
            self.consumers.spawn(consumer(Arc::clone(&self.shared), rx));
        }
        Ok(())
    }

    /// The requests carrying the series `metrics` updated.
    fn requests(&mut self, batch: &Batch, metrics: &[oxeye_api::Metric]) -> Outgoing {
        let refused = self.store.add(&batch.resource, metrics, Instant::now());
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut requests = write::Builder::new(self.max_bytes, now_ms, self.shards.len());
        let target_info = self.target_info;
        self.store.drain_updated(|u| {
            if target_info || u.family.name() != "target_info" {
                requests.add(&u);
            }
        });
        Outgoing {
            requests: requests.requests(),
            refused: (refused.unsupported, refused.collisions),
        }
    }

    /// Counts the points of a batch of `points` that no request carries: `refused`, and those
    /// with no value (flagged "no recorded value": nothing to send, done). `queued` are in
    /// requests.
    fn count_unsent(&self, points: u64, refused: (u64, u64), queued: u64) {
        let (unsupported, collisions) = refused;
        self.telemetry.add_dropped("unsupported_type", unsupported);
        self.telemetry.add_dropped("name_collision", collisions);
        self.telemetry
            .add_emitted(points.saturating_sub(unsupported + collisions + queued));
    }

    /// Room for every request of a batch, shard by shard (a shard wanting more than its whole
    /// queue takes all of it). Cancel-safe: nothing is counted or queued yet.
    async fn room(
        &self,
        requests: &[write::Request],
    ) -> Result<Vec<Option<OwnedSemaphorePermit>>, BoxError> {
        let mut want = vec![0u32; self.shards.len()];
        for r in requests {
            want[r.shard] += 1;
        }
        let mut permits = Vec::with_capacity(self.shards.len());
        for (shard, n) in self.shards.iter().zip(want) {
            if n == 0 {
                permits.push(None);
                continue;
            }
            let permit = Arc::clone(&shard.room)
                .acquire_many_owned(n.min(shard.capacity))
                .await
                .map_err(|_| "prometheusremotewrite: its queue is closed")?;
            permits.push(Some(permit));
        }
        Ok(permits)
    }
}

#[async_trait]
impl Exporter for RemoteWriteExporter {
    async fn export(&mut self, batch: Arc<Batch>) -> Result<(), BoxError> {
        let Records::Metrics(metrics) = &batch.records else {
            return Ok(());
        };
        if self.shards.is_empty() {
            return Err("prometheusremotewrite: export after shutdown".into());
        }
        self.start().await?;
        let out = self.requests(&batch, metrics);
        if let Some(p) = &self.persistent {
            // The requests' points are counted as they are sent, when read back (perhaps by
            // the next run); the rest once all are written. (Cancelled part way at the
            // shutdown deadline, the engine counts the whole batch, and what was written is
            // sent and counted again by the next run: at least once.)
            let refused = out.refused;
            let queued: u64 = out.requests.iter().map(|r| r.points).sum();
            p.append(out.requests).await?;
            self.count_unsent(batch.len() as u64, refused, queued);
            return Ok(());
        }
        let mut permits = self.room(&out.requests).await?;
        // From here on nothing awaits: the batch is counted and queued whole.
        let queued: u64 = out.requests.iter().map(|r| r.points).sum();
        self.count_unsent(batch.len() as u64, out.refused, queued);
        self.shared.ledger.add(queued);
        for r in out.requests {
            let shard = &self.shards[r.shard];
            // Each request holds one unit of its shard's room; past a whole queue's worth (a
            // batch larger than the queue took all of it), none.
            let room = match permits[r.shard].as_mut() {
                Some(p) if p.num_permits() > 1 => p.split(1),
                _ => permits[r.shard].take(),
            };
            if let Err(unsent) = shard.tx.send((r, room)) {
                let (r, _) = unsent.0;
                self.shared.ledger.settle(r.points, 0, "component_stopped");
            }
        }
        Ok(())
    }

    fn counts_delivery(&self) -> bool {
        true
    }

    /// Every 5 s: series expire. With the queues on disk every second, so that a backlog a
    /// previous run left goes out before the first batch comes.
    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(if self.persistent.is_some() {
            1
        } else {
            5
        }))
    }

    async fn tick(&mut self, _now: SystemTime) -> Result<(), BoxError> {
        if self.persistent.is_some() {
            self.start().await?;
        }
        if self.expired.elapsed() >= Duration::from_secs(5) {
            self.expired = Instant::now();
            self.store.expire(self.expired);
        }
        if let Some(ended) = self.consumers.try_join_next() {
            return Err(format!("prometheusremotewrite: a consumer stopped: {ended:?}").into());
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), BoxError> {
        // Closing the queues lets the consumers drain them and stop; the engine's deadline
        // bounds this.
        self.start().await?;
        self.shards.clear();
        if let Some(p) = &self.persistent {
            p.closing.send_replace(true);
        }
        while let Some(r) = self.consumers.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    return Err(format!("a prometheusremotewrite consumer panicked: {e}").into());
                }
            }
        }
        if let Some(p) = &mut self.persistent {
            p.sync().await?;
        }
        Ok(())
    }
}

impl Drop for RemoteWriteExporter {
    fn drop(&mut self) {
        // Aborted at the shutdown deadline (or shut down normally: nothing left then).
        self.consumers.abort_all();
        if let Some(p) = &mut self.persistent {
            // What is unsent stays on disk and goes out at the next start: not lost.
            p.stop(&self.shared.id);
            return;
        }
        let n = self.shared.ledger.abandon();
        if n > 0 {
            error!(exporter = %self.shared.id, points = n, "shutdown deadline passed with requests still queued or retrying: dropped");
        }
    }
}
