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
use oxeye_diskqueue::Disk;
use tracing::error;

use crate::config::{OtlpSignal, StorageConfig, WhenFull};
use crate::transport::{Encoded, Request};
use crate::{encode, Shared};

/// The largest chunk a sender reads at once (a single larger record still goes, alone).
const MAX_CHUNK_BYTES: usize = 8 << 20;

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

/// What opening would refuse (for `validate`, which builds the exporter): nothing is created
/// or locked.
pub(crate) fn check(storage: &StorageConfig, id: &str) -> Result<(), BoxError> {
    oxeye_diskqueue::check(&directory(storage, id))
        .map_err(|e| format!("sending_queue.storage: {e}").into())
}

/// Opens exporter `id`'s queue (blocks on the disk).
pub(crate) fn open(
    storage: &StorageConfig,
    id: &str,
    telemetry: Telemetry,
) -> Result<Disk, BoxError> {
    Disk::open(&directory(storage, id), storage, id, "", telemetry)
        .map_err(|e| format!("sending_queue.storage: {e}").into())
}

/// Writes `batch` as requests of at most `max` records, one record each; returns once all are
/// on disk (or dropped and counted by `when_full`).
pub(crate) async fn append(
    disk: &Arc<Disk>,
    resources: &mut encode::Resources,
    batch: Arc<Batch>,
    max: usize,
    when_full: WhenFull,
) -> Result<(), BoxError> {
    for (signal, request, n) in crate::requests(resources, &[batch], max) {
        let bytes = Arc::new(request.to_protobuf());
        disk.append(kind(signal), n, bytes, when_full).await?;
    }
    Ok(())
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
        // Concatenated requests merge, except profiles' one dictionary each.
        let next = disk
            .next(shared.send_batch_size as u64, MAX_CHUNK_BYTES, |k| {
                k != kind(OtlpSignal::Profiles)
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
        if let Err(e) = disk.ack(pending).await {
            error!(exporter = %shared.id, dir = %disk.dir.display(), "cannot record delivery in the sending queue on disk (the records may be sent again after a restart): {e}");
            shared.telemetry.add_error();
        }
    }
}
