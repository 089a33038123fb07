//! `remote_write_queue.storage`: each shard's queue on disk ([`oxeye_diskqueue`]), in
//! `<directory>/<exporter>/shard-<n>`.
//!
//! `export` appends each request's body (protobuf, snappy'd: as it is sent) to its shard's
//! queue and returns once it is written, so what the pipeline handed over survives a kill.
//! Each shard's consumer reads its requests back in order, sends them, and acknowledges them;
//! a retryable failure is retried until it passes (the requests wait on disk, bounded by
//! `max_size` per shard, not given up after `max_elapsed_time`). Points are counted as
//! delivered or dropped when their request is settled, perhaps by the next run. Shards a
//! previous run had beyond `num_consumers` are drained too, never written to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use oxeye_api::{BoxError, Telemetry};
use oxeye_diskqueue::{Disk, StorageConfig, WhenFull};
use tokio::sync::watch;
use tracing::warn;

use crate::write::Request;
use crate::Shared;

/// The kind of every record: a remote-write request body.
const REQUEST: u8 = 1;

/// The exporter's queues on disk, one per shard.
pub(crate) struct Persistent {
    storage: StorageConfig,
    when_full: WhenFull,
    /// Opened by the exporter's first `start` (on its runtime); shard `i` is `disks[i]`.
    pub(crate) disks: Vec<Arc<Disk>>,
    /// Set at shutdown: the consumers stop once their queues are drained.
    pub(crate) closing: Arc<watch::Sender<bool>>,
    sync_tasks: Vec<tokio::task::AbortHandle>,
}

/// The exporter's directory: one per exporter, so exporters can share `storage.directory`.
fn directory(storage: &StorageConfig, id: &str) -> PathBuf {
    storage.directory.join(id.replace('/', "_"))
}

fn shard_dir(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard}"))
}

/// What opening would refuse (for `validate`, which builds the exporter): nothing is created
/// or locked.
pub(crate) fn check(storage: &StorageConfig, id: &str, shards: usize) -> Result<(), BoxError> {
    let dir = directory(storage, id);
    for shard in 0..shards {
        oxeye_diskqueue::check(&shard_dir(&dir, shard))
            .map_err(|e| format!("remote_write_queue.storage: {e}"))?;
    }
    Ok(())
}

impl Persistent {
    pub(crate) fn new(storage: StorageConfig, when_full: WhenFull) -> Persistent {
        Persistent {
            storage,
            when_full,
            disks: Vec::new(),
            closing: Arc::new(watch::channel(false).0),
            sync_tasks: Vec::new(),
        }
    }

    /// Opens the queues of shards `0..shards`, and of any shard beyond them that a previous run
    /// left records in (drained, not written to). Off the async workers: recovery reads the
    /// backlog's headers.
    pub(crate) async fn open(
        &self,
        id: &str,
        shards: usize,
        telemetry: Telemetry,
    ) -> Result<Vec<Arc<Disk>>, BoxError> {
        let (storage, id) = (self.storage.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            let dir = directory(&storage, &id);
            let mut n = shards;
            // A run with more consumers left `shard-N` for N ≥ shards.
            while shard_dir(&dir, n).is_dir() {
                n += 1;
            }
            (0..n)
                .map(|shard| {
                    Disk::open(
                        &shard_dir(&dir, shard),
                        &storage,
                        &id,
                        &format!("shard-{shard}"),
                        telemetry.clone(),
                    )
                    .map(Arc::new)
                    .map_err(|e| format!("remote_write_queue.storage: {e}").into())
                })
                .collect()
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The queues are open: their fsync tasks start.
    pub(crate) fn started(&mut self, disks: Vec<Arc<Disk>>) {
        for disk in &disks {
            if let Some(task) = Arc::clone(disk).sync_loop() {
                self.sync_tasks.push(tokio::spawn(task).abort_handle());
            }
        }
        self.disks = disks;
    }

    /// Writes each request to its shard's queue; returns once all are on disk (or dropped
    /// and counted as `when_full` says).
    pub(crate) async fn append(&self, requests: Vec<Request>) -> Result<(), BoxError> {
        for r in requests {
            let disk = &self.disks[r.shard];
            disk.append(REQUEST, r.points, Arc::new(r.body), self.when_full)
                .await?;
        }
        Ok(())
    }

    /// At shutdown, once the consumers are done: what was appended is made durable.
    pub(crate) async fn sync(&mut self) -> Result<(), BoxError> {
        for task in self.sync_tasks.drain(..) {
            task.abort();
        }
        for disk in &self.disks {
            let disk = Arc::clone(disk);
            oxeye_diskqueue::blocking(move || disk.queue.sync()).await?;
        }
        Ok(())
    }

    /// The exporter is dropped (perhaps at the shutdown deadline): says what stays on disk.
    pub(crate) fn stop(&mut self, id: &str) {
        for task in self.sync_tasks.drain(..) {
            task.abort();
        }
        let (mut points, mut bytes) = (0, 0);
        for disk in self.disks.iter().filter(|d| !d.taken_over()) {
            let s = disk.queue.stats();
            points += s.records;
            bytes += s.bytes;
        }
        if points > 0 {
            let dir = directory(&self.storage, id);
            warn!(exporter = %id, points, bytes, dir = %dir.display(), "points kept in the queue on disk: sent at the next start");
        }
    }
}

/// One shard's consumer: reads its requests off the disk in order, sends each, acknowledges
/// it. Returns when the queue is drained and `closing` is set (or at once when closing and a
/// reload's new instance of this exporter has the queue: it goes on sending).
pub(crate) async fn consumer(
    shared: Arc<Shared>,
    disk: Arc<Disk>,
    closing: Arc<watch::Sender<bool>>,
) {
    let mut closed = closing.subscribe();
    let handed_over = || *closing.borrow() && disk.taken_over();
    loop {
        // One request a chunk: request bodies are snappy blocks, which do not concatenate.
        let Some(mut pending) = disk
            .wait_next(1, usize::MAX, |_| false, &mut closed, &handed_over)
            .await
        else {
            return;
        };
        let points = pending.chunk.records;
        shared.ledger.add(points);
        if pending.chunk.kind == REQUEST {
            let body = Bytes::from(std::mem::take(&mut pending.chunk.bytes));
            match shared.sender.send_persistent(body, &handed_over).await {
                Ok(true) => shared.ledger.settle(points, points, "delivered"),
                // Given back (the guard) to the instance that took over.
                Ok(false) => return,
                Err(f) => {
                    warn!(exporter = %shared.id, points, "prometheusremotewrite: dropped a request: {}", f.message);
                    shared.ledger.settle(points, 0, f.reason);
                }
            }
        } else {
            shared.ledger.settle(points, 0, "unknown_record_kind");
        }
        disk.ack(pending);
    }
}
