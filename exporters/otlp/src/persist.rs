//! `sending_queue.storage`: the sending queue on disk ([`oxeye_diskqueue`]).
//!
//! `export` encodes each batch into OTLP requests and appends their protobuf bytes (one record
//! per request, its kind the signal); it returns once they are written, so what the pipeline
//! handed over survives a kill. Senders read consecutive records of one signal (concatenated
//! protobuf requests are one request; not profiles, whose requests each carry a dictionary),
//! send them with retries, and acknowledge them: only then can their segment be deleted. A
//! retryable failure is retried until it succeeds — the records wait on disk, bounded by
//! `max_size`, instead of being given up after `max_elapsed_time`. Disk I/O runs on blocking
//! threads.

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
    instance: u64,
    fsync: Fsync,
    telemetry: Telemetry,
}

/// Live [`Disk`]s (directory, instance number): after a reload the new instance of an exporter
/// shares its predecessor's queue, and the predecessor's senders stop instead of draining it.
static INSTANCES: std::sync::Mutex<Vec<(PathBuf, u64)>> = std::sync::Mutex::new(Vec::new());
static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn instances() -> std::sync::MutexGuard<'static, Vec<(PathBuf, u64)>> {
    INSTANCES.lock().unwrap_or_else(|p| p.into_inner())
}

impl Disk {
    /// A newer instance (built by a reload) uses this queue now.
    pub(crate) fn taken_over(&self) -> bool {
        instances()
            .iter()
            .any(|(d, n)| *d == self.dir && *n > self.instance)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        instances().retain(|(_, n)| *n != self.instance);
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
        let shared = instances().iter().any(|(d, _)| *d == dir);
        if shared {
            info!(exporter = %id, dir = %dir.display(), "sending queue on disk taken over from the instance before the reload");
        } else if stats.records > 0 {
            info!(exporter = %id, records = stats.records, bytes = stats.bytes, dir = %dir.display(), "records queued on disk by a previous run: sending them first");
        } else {
            info!(exporter = %id, dir = %dir.display(), max_size, "sending queue on disk");
        }
        let instance = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        instances().push((dir.clone(), instance));
        let disk = Disk {
            instance,
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
        let mut warned = false;
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
                    Appended::Full {
                        disk_full: true,
                        dropped,
                    } if when_full == WhenFull::DropOldest => {
                        self.telemetry.add_dropped("sending_queue_full", dropped);
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
                    Appended::Full { disk_full, dropped } if when_full == WhenFull::Block => {
                        self.telemetry.add_dropped("sending_queue_full", dropped);
                        if disk_full && !warned {
                            warn!(dir = %self.dir.display(), "the disk under the sending queue is full: waiting for room");
                            warned = true;
                        }
                        // Room comes with acknowledgements; a full disk may clear by itself.
                        let _ = tokio::time::timeout(Duration::from_secs(1), space).await;
                    }
                    Appended::Full { disk_full, dropped } => {
                        self.telemetry.add_dropped("sending_queue_full", dropped);
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

    /// The task that makes appended records durable on the `fsync` interval, until aborted
    /// (none with `every_batch`).
    pub(crate) fn sync_loop(
        self: Arc<Self>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let Fsync::Interval(every) = self.fsync else {
            return None;
        };
        Some(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let disk = Arc::clone(&self);
                if let Err(e) = blocking(move || disk.queue.sync()).await {
                    error!(dir = %self.dir.display(), "cannot sync the sending queue on disk: {e}");
                }
            }
        })
    }
}

/// A chunk handed to a sender: given back to the queue unless acknowledged, so a sender
/// stopped mid-way (aborted, handed over) leaves nothing unaccounted in flight.
struct Pending {
    queue: Arc<Queue>,
    chunk: Chunk,
    acked: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.acked {
            self.queue.unread(&self.chunk);
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
    let handed_over = || *closing.borrow() && disk.taken_over();
    loop {
        if handed_over() {
            return;
        }
        // Registered before looking, so an append in between is not missed.
        let data = disk.data.notified();
        let q = Arc::clone(&disk.queue);
        let max = shared.send_batch_size as u64;
        // The guard is made on the blocking thread: if this task is aborted meanwhile, the
        // chunk is given back all the same.
        let next = blocking(move || {
            let profiles = kind(OtlpSignal::Profiles);
            // Concatenated requests merge, except profiles' one dictionary each.
            let chunk = q.next_chunk(max, MAX_CHUNK_BYTES, &|k| k != profiles)?;
            Ok(chunk.map(|chunk| Pending {
                queue: q,
                chunk,
                acked: false,
            }))
        })
        .await;
        let mut pending = match next {
            Ok(Some(p)) => p,
            Ok(None) => {
                if *closed.borrow() {
                    return;
                }
                // Also a look every second: chunks given back by a reload's previous instance
                // come without this instance's notification.
                tokio::select! {
                    _ = data => {}
                    _ = closed.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Err(e) => {
                error!(exporter = %shared.id, dir = %disk.dir.display(), "cannot read the sending queue on disk: {e}");
                shared.telemetry.add_error();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let records = pending.chunk.records;
        match signal(pending.chunk.kind) {
            Some(signal) => {
                let client = match signal {
                    OtlpSignal::Traces => shared.traces.as_ref(),
                    OtlpSignal::Metrics => shared.metrics.as_ref(),
                    OtlpSignal::Profiles => shared.profiles.as_ref(),
                    OtlpSignal::Logs => shared.logs.as_ref(),
                };
                let bytes = std::mem::take(&mut pending.chunk.bytes);
                let request = Request::Encoded(signal, Encoded(bytes));
                shared.add_outstanding(records);
                let settled = match client {
                    Some(c) => {
                        shared
                            .deliver(signal, c, request, records, &handed_over)
                            .await
                    }
                    // Queued by a run whose pipelines had this signal; this one has not.
                    None => {
                        shared.settle(records, 0, "signal_not_configured");
                        true
                    }
                };
                if !settled {
                    return; // given back (the guard) to the instance that took over
                }
            }
            None => shared.telemetry.add_dropped("unknown_record_kind", records),
        }
        pending.acked = true;
        let q = Arc::clone(&disk.queue);
        let acked = blocking(move || q.ack(&pending.chunk)).await;
        if let Err(e) = acked {
            error!(exporter = %shared.id, dir = %disk.dir.display(), "cannot record delivery in the sending queue on disk (the records may be sent again after a restart): {e}");
            shared.telemetry.add_error();
        }
        disk.space.notify_waiters();
        disk.publish();
    }
}
