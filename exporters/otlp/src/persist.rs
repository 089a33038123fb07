//! `sending_queue.storage`: the sending queue on disk ([`oxeye_diskqueue`]).
//!
//! `export` encodes each batch into OTLP requests and appends their protobuf bytes (one record
//! per request, its kind the signal); it returns once they are written, so what the pipeline
//! handed over survives a kill. Senders read consecutive records of one signal (concatenated
//! protobuf requests are one request), send them with retries, and acknowledge them: only then
//! can their segment be deleted. A retryable failure is retried until it succeeds — the
//! records wait on disk, bounded by `max_size`, instead of being given up after
//! `max_elapsed_time`. Disk I/O runs on blocking threads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use oxeye_api::{Batch, BoxError, Telemetry};
use oxeye_diskqueue::{Appended, Chunk, Options, Queue};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::config::{Fsync, OtlpSignal, StorageConfig, WhenFull};
use crate::transport::{Encoded, Request};
use crate::{encode, Shared};

/// The largest chunk a sender reads at once (a single larger record still goes, alone).
const MAX_CHUNK_BYTES: usize = 8 << 20;

/// What the exporter and its senders share.
pub(crate) struct Disk {
    pub(crate) queue: Arc<Queue>,
    /// Signalled after an append: idle senders look again.
    data: Notify,
    /// Signalled after an acknowledgement: a blocked `export` tries again.
    space: Notify,
    pub(crate) dir: PathBuf,
    fsync: Fsync,
    telemetry: Telemetry,
}

/// Live [`Disk`]s per directory: after a reload the new instance of an exporter shares its
/// predecessor's queue, and the predecessor's senders stop instead of draining it.
static INSTANCES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn instances() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    INSTANCES.lock().unwrap_or_else(|p| p.into_inner())
}

impl Disk {
    /// Another instance (built by a reload) uses this queue now.
    fn taken_over(&self) -> bool {
        instances().iter().filter(|d| **d == self.dir).count() > 1
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let mut list = instances();
        if let Some(i) = list.iter().position(|d| *d == self.dir) {
            list.swap_remove(i);
        }
    }
}

/// The queue's directory for exporter `id`: one subdirectory per exporter, so exporters can
/// share `storage.directory`.
fn directory(storage: &StorageConfig, id: &str) -> PathBuf {
    storage.directory.join(id.replace('/', "_"))
}

fn kind(signal: OtlpSignal) -> u8 {
    match signal {
        OtlpSignal::Traces => 1,
        OtlpSignal::Metrics => 2,
        OtlpSignal::Logs => 3,
        OtlpSignal::Profiles => 4,
    }
}

fn signal(kind: u8) -> Option<OtlpSignal> {
    OtlpSignal::ALL.into_iter().find(|&s| self::kind(s) == kind)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// What opening would refuse (for `validate`, which builds the exporter): nothing is created
/// or locked.
pub(crate) fn check(storage: &StorageConfig, id: &str) -> Result<(), BoxError> {
    oxeye_diskqueue::check(&directory(storage, id))
        .map_err(|e| format!("sending_queue.storage: {e}").into())
}

impl Disk {
    pub(crate) fn open(
        storage: &StorageConfig,
        id: &str,
        telemetry: Telemetry,
    ) -> Result<Disk, BoxError> {
        let dir = directory(storage, id);
        let max_size = storage.max_size.as_u64();
        let queue = Queue::open_shared(
            &dir,
            Options {
                max_size,
                segment_size: Options::segment_size_for(max_size),
                fsync_every_append: storage.fsync == Fsync::EveryBatch,
            },
        )
        .map_err(|e| format!("sending_queue.storage: {e}"))?;
        let stats = queue.stats();
        if stats.records > 0 {
            info!(exporter = %id, records = stats.records, bytes = stats.bytes, dir = %dir.display(), "records queued on disk by a previous run: sending them first");
        } else {
            info!(exporter = %id, dir = %dir.display(), max_size, "sending queue on disk");
        }
        instances().push(dir.clone());
        let disk = Disk {
            queue,
            data: Notify::new(),
            space: Notify::new(),
            dir,
            fsync: storage.fsync,
            telemetry,
        };
        disk.publish();
        Ok(disk)
    }

    /// The queue's figures into `/metrics` and the final line.
    fn publish(&self) {
        let s = self.queue.stats();
        let t = &self.telemetry;
        t.set_gauge("queue_disk_records", "", s.records);
        t.set_gauge("queue_disk_bytes", "", s.bytes);
        t.set_counter("queue_corrupt_records", "", s.corrupt);
        t.set_counter("queue_resent_records", "", s.resent);
    }

    /// Writes `batch` as requests of at most `max` records; returns once all are on disk (or
    /// dropped and counted by `when_full`).
    pub(crate) async fn append(
        self: &Arc<Self>,
        resources: &mut encode::Resources,
        batch: Arc<Batch>,
        max: usize,
        when_full: WhenFull,
    ) -> Result<(), BoxError> {
        for (signal, request, n) in crate::requests(resources, &[batch], max) {
            let bytes = Arc::new(request.to_protobuf());
            loop {
                let (disk, bytes2) = (Arc::clone(self), Arc::clone(&bytes));
                let make_room = when_full == WhenFull::DropOldest;
                // Registered before trying, so an acknowledgement in between is not missed.
                let space = self.space.notified();
                let appended = blocking(move || {
                    disk.queue
                        .append(kind(signal), n as u32, &bytes2, make_room)
                })
                .await
                .map_err(|e| format!("sending queue on disk ({}): {e}", self.dir.display()))?;
                match appended {
                    Appended::Written { dropped } => {
                        self.telemetry.add_dropped("sending_queue_full", dropped);
                        self.data.notify_waiters();
                        self.publish();
                        break;
                    }
                    Appended::Full { disk_full: true } if when_full == WhenFull::DropOldest => {
                        let disk = Arc::clone(self);
                        let freed = blocking(move || Ok(disk.queue.drop_oldest_segment()))
                            .await
                            .ok()
                            .flatten();
                        match freed {
                            Some(dropped) => {
                                self.telemetry.add_dropped("sending_queue_full", dropped);
                            }
                            None => {
                                self.telemetry.add_dropped("disk_full", n);
                                break;
                            }
                        }
                    }
                    Appended::Full { disk_full } if when_full == WhenFull::Block => {
                        if disk_full {
                            warn!(dir = %self.dir.display(), "the disk under the sending queue is full: waiting for room");
                        }
                        // Room comes with acknowledgements; a full disk may clear by itself.
                        let _ = tokio::time::timeout(Duration::from_secs(1), space).await;
                    }
                    Appended::Full { disk_full } => {
                        let reason = if disk_full {
                            "disk_full"
                        } else {
                            "sending_queue_full"
                        };
                        self.telemetry.add_dropped(reason, n);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes appended records durable on the `fsync` interval (nothing to do with
    /// `every_batch`), until the exporter is dropped.
    pub(crate) async fn sync_loop(self: Arc<Self>) {
        let Fsync::Interval(every) = self.fsync else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let disk = Arc::clone(&self);
            if let Err(e) = blocking(move || disk.queue.sync()).await {
                error!(dir = %self.dir.display(), "cannot sync the sending queue on disk: {e}");
            }
        }
    }
}

/// A sender: reads chunks off the disk, delivers them, acknowledges them. Returns when the
/// queue is drained and `closing` is set (or at once when closing and another instance of
/// this exporter, built by a reload, shares the queue: it goes on sending).
pub(crate) async fn sender(
    shared: Arc<Shared>,
    disk: Arc<Disk>,
    closing: Arc<tokio::sync::watch::Sender<bool>>,
) {
    let mut closed = closing.subscribe();
    loop {
        if *closed.borrow() && disk.taken_over() {
            return;
        }
        // Registered before looking, so an append in between is not missed.
        let data = disk.data.notified();
        let q = Arc::clone(&disk.queue);
        let max = shared.send_batch_size as u64;
        let chunk: Option<Chunk> = match blocking(move || q.next_chunk(max, MAX_CHUNK_BYTES)).await
        {
            Ok(c) => c,
            Err(e) => {
                error!(exporter = %shared.id, dir = %disk.dir.display(), "cannot read the sending queue on disk: {e}");
                shared.telemetry.add_error();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(mut chunk) = chunk else {
            if *closed.borrow() {
                return;
            }
            tokio::select! {
                _ = data => {}
                _ = closed.changed() => {}
            }
            continue;
        };
        let records = chunk.records;
        match signal(chunk.kind) {
            Some(signal) => {
                let client = match signal {
                    OtlpSignal::Traces => shared.traces.as_ref(),
                    OtlpSignal::Metrics => shared.metrics.as_ref(),
                    OtlpSignal::Profiles => shared.profiles.as_ref(),
                    OtlpSignal::Logs => shared.logs.as_ref(),
                };
                let request = Request::Encoded(signal, Encoded(std::mem::take(&mut chunk.bytes)));
                shared.add_outstanding(records);
                match client {
                    Some(c) => shared.deliver(signal, c, request, records).await,
                    // Queued by a run whose pipelines had this signal; this one has not.
                    None => shared.settle(records, 0, "signal_not_configured"),
                }
            }
            None => shared.telemetry.add_dropped("unknown_record_kind", records),
        }
        let (q, c) = (Arc::clone(&disk.queue), chunk);
        if let Err(e) = blocking(move || q.ack(&c)).await {
            error!(exporter = %shared.id, dir = %disk.dir.display(), "cannot record delivery in the sending queue on disk (the records may be sent again after a restart): {e}");
            shared.telemetry.add_error();
        }
        disk.space.notify_waiters();
        disk.publish();
    }
}
