//! The queue as an exporter on an async runtime uses it ([`Disk`]): disk I/O on blocking
//! threads, `when_full` applied to each append, the fsync interval, chunks given back unless
//! acknowledged, its figures in the exporter's telemetry, and — after a live reload — the new
//! instance of an exporter taking over its predecessor's queue.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oxeye_api::{BoxError, Telemetry};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::{Appended, Chunk, Fsync, Options, Queue, StorageConfig, WhenFull};

/// A queue on disk shared by an exporter's `export` and its senders.
pub struct Disk {
    pub queue: Arc<Queue>,
    /// Signalled after an append: idle senders look again.
    pub data: Notify,
    /// Signalled after an acknowledgement: a blocked append tries again.
    space: Notify,
    pub dir: PathBuf,
    instance: u64,
    fsync: Fsync,
    telemetry: Telemetry,
    /// The `source` of its gauges (an exporter with several queues has one per queue).
    source: String,
    /// Deliveries recorded by [`Disk::ack`], applied on disk by the next read's blocking
    /// call: one thread hop per chunk instead of two.
    acks: std::sync::Mutex<Vec<Pending>>,
}

/// Live [`Disk`]s (directory, instance number): after a reload the new instance of an exporter
/// shares its predecessor's queue, and the predecessor's senders stop instead of draining it.
static INSTANCES: std::sync::Mutex<Vec<(PathBuf, u64)>> = std::sync::Mutex::new(Vec::new());
static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn instances() -> std::sync::MutexGuard<'static, Vec<(PathBuf, u64)>> {
    INSTANCES.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Disk {
    fn drop(&mut self) {
        instances().retain(|(_, n)| *n != self.instance);
    }
}

/// Runs `f` on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

impl Disk {
    /// Opens (or takes over, after a reload) the queue in `dir`; `exporter` names it in logs,
    /// `source` labels its gauges. Blocks on the disk.
    pub fn open(
        dir: &Path,
        storage: &StorageConfig,
        exporter: &str,
        source: &str,
        telemetry: Telemetry,
    ) -> Result<Disk, crate::OpenError> {
        let max_size = storage.max_size.as_u64();
        let queue = Queue::open_shared(
            dir,
            Options {
                max_size,
                segment_size: Options::segment_size_for(max_size),
                fsync_every_append: storage.fsync == Fsync::EveryBatch,
            },
        )?;
        let stats = queue.stats();
        let dir = dir.to_path_buf();
        if instances().iter().any(|(d, _)| *d == dir) {
            info!(exporter, dir = %dir.display(), "queue on disk taken over from the instance before the reload");
        } else if stats.records > 0 {
            info!(exporter, records = stats.records, bytes = stats.bytes, dir = %dir.display(), "records queued on disk by a previous run: sending them first");
        } else {
            info!(exporter, dir = %dir.display(), max_size, "queue on disk");
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
            source: source.to_string(),
            acks: std::sync::Mutex::default(),
        };
        disk.publish();
        Ok(disk)
    }

    /// A newer instance (built by a reload) uses this queue now.
    pub fn taken_over(&self) -> bool {
        instances()
            .iter()
            .any(|(d, n)| *d == self.dir && *n > self.instance)
    }

    /// The queue's figures into `/metrics` and the final line.
    pub fn publish(&self) {
        let s = self.queue.stats();
        let (t, src) = (&self.telemetry, self.source.as_str());
        t.set_gauge("queue_disk_records", src, s.records);
        t.set_gauge("queue_disk_bytes", src, s.bytes);
        t.set_counter("queue_corrupt_records", src, s.corrupt);
        t.set_counter("queue_resent_records", src, s.resent);
    }

    /// Appends one record of `n` items; returns once it is on disk or dropped and counted as
    /// `when_full` says (`sending_queue_full`, `disk_full`).
    pub async fn append(
        self: &Arc<Self>,
        kind: u8,
        n: u64,
        bytes: Arc<Vec<u8>>,
        when_full: WhenFull,
    ) -> Result<(), BoxError> {
        let mut warned = false;
        loop {
            let (disk, bytes) = (Arc::clone(self), Arc::clone(&bytes));
            let make_room = when_full == WhenFull::DropOldest;
            // Registered before trying, so an acknowledgement in between is not missed.
            let space = self.space.notified();
            let appended = blocking(move || disk.queue.append(kind, n as u32, &bytes, make_room))
                .await
                .map_err(|e| format!("queue on disk ({}): {e}", self.dir.display()))?;
            match appended {
                Appended::Written { dropped } => {
                    self.telemetry.add_dropped("sending_queue_full", dropped);
                    self.data.notify_waiters();
                    self.publish();
                    return Ok(());
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
                            return Ok(());
                        }
                    }
                }
                Appended::Full { disk_full, dropped } if when_full == WhenFull::Block => {
                    self.telemetry.add_dropped("sending_queue_full", dropped);
                    if disk_full && !warned {
                        warn!(dir = %self.dir.display(), "the disk under the queue is full: waiting for room");
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
                    return Ok(());
                }
            }
        }
    }

    /// The task that makes appended records durable on the `fsync` interval, until aborted
    /// (none with `every_batch`).
    pub fn sync_loop(
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
                    error!(dir = %self.dir.display(), "cannot sync the queue on disk: {e}");
                }
            }
        })
    }

    /// The next chunk for a sender (see [`Queue::next_chunk`]), guarded: given back unless
    /// acknowledged. The guard is made on the blocking thread, so a sender aborted meanwhile
    /// gives it back all the same. The acknowledgements recorded since are applied first, on
    /// the same blocking thread.
    pub async fn next(
        self: &Arc<Self>,
        max_records: u64,
        max_bytes: usize,
        joinable: fn(u8) -> bool,
    ) -> std::io::Result<Option<Pending>> {
        let q = Arc::clone(&self.queue);
        let acks = std::mem::take(&mut *self.lock_acks());
        let applied = !acks.is_empty();
        let (acked, chunk) = blocking(move || {
            let acked = apply(&q, acks);
            let chunk = q.next_chunk(max_records, max_bytes, &joinable);
            Ok((
                acked,
                chunk.map(|c| {
                    c.map(|chunk| Pending {
                        queue: q,
                        chunk,
                        acked: false,
                    })
                }),
            ))
        })
        .await?;
        if applied {
            self.acked(acked);
        }
        chunk
    }

    /// Applies the acknowledgements recorded by [`Disk::ack`] now (a sender stopping).
    pub async fn apply_acks(self: &Arc<Self>) {
        let acks = std::mem::take(&mut *self.lock_acks());
        if acks.is_empty() {
            return;
        }
        let q = Arc::clone(&self.queue);
        let acked = blocking(move || apply(&q, acks)).await;
        self.acked(acked);
    }

    fn lock_acks(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After acknowledgements were applied: blocked appends try again, the gauges move.
    fn acked(&self, result: std::io::Result<()>) {
        if let Err(e) = result {
            error!(dir = %self.dir.display(), "cannot record delivery in the queue on disk (the records may be sent again after a restart): {e}");
            self.telemetry.add_error();
        }
        self.space.notify_waiters();
        self.publish();
    }

    /// The next chunk for a sender, waiting for one: `None` once `stop` says so, or once
    /// `closed` is set and nothing is left. Read errors are logged, counted, and retried.
    pub async fn wait_next(
        self: &Arc<Self>,
        max_records: u64,
        max_bytes: usize,
        joinable: fn(u8) -> bool,
        closed: &mut tokio::sync::watch::Receiver<bool>,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Option<Pending> {
        loop {
            if stop() {
                self.apply_acks().await;
                return None;
            }
            // Registered before looking, so an append in between is not missed.
            let data = self.data.notified();
            match self.next(max_records, max_bytes, joinable).await {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {
                    if *closed.borrow() {
                        return None;
                    }
                    // Also a look every second: chunks given back by a reload's previous
                    // instance come without this instance's notification.
                    tokio::select! {
                        _ = data => {}
                        _ = closed.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(e) => {
                    error!(dir = %self.dir.display(), "cannot read the queue on disk: {e}");
                    self.telemetry.add_error();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Records that `pending` is delivered (or dropped and counted): the sender's next call
    /// of [`Disk::next`] (or [`Disk::wait_next`]) applies it on disk, and its segment may go.
    pub fn ack(&self, pending: Pending) {
        self.lock_acks().push(pending);
    }
}

/// Applies acknowledgements (on a blocking thread); the first error, if any.
fn apply(queue: &Queue, acks: Vec<Pending>) -> std::io::Result<()> {
    let mut result = Ok(());
    for mut p in acks {
        p.acked = true;
        if let Err(e) = queue.ack(&p.chunk) {
            result = result.and(Err(e));
        }
    }
    result
}

/// A chunk handed to a sender: given back to the queue unless acknowledged, so a sender
/// stopped mid-way (aborted, handed over) leaves nothing unaccounted in flight.
pub struct Pending {
    queue: Arc<Queue>,
    pub chunk: Chunk,
    acked: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.acked {
            self.queue.unread(&self.chunk);
        }
    }
}
