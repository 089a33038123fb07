//! `sending_queue.storage`: the sending queue on disk ([`oxeye_diskqueue`]).
//!
//! `export` encodes each batch into OTLP requests and appends their protobuf bytes (one record
//! per request, its kind the signal), gzip'd when the signal's client compresses: compressed
//! once, when written, a backlog is sent as it lies on disk. It returns once they are written,
//! so what the pipeline handed over survives a kill. Senders read the records back — several
//! uncompressed ones of one signal at once (concatenated protobuf requests are one request;
//! not profiles, whose requests each carry a dictionary), a gzip'd one alone — send them with
//! retries, and acknowledge them: only then can their segment be deleted. A
//! retryable failure is retried until it succeeds — the records wait on disk, bounded by
//! `max_size`, instead of being given up after `max_elapsed_time`. Disk I/O runs on blocking
//! threads.

use std::path::PathBuf;
use std::sync::Arc;

use oxeye_api::{Batch, BoxError, Telemetry};
use oxeye_diskqueue::Disk;

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

/// The kind bit of a gzip'd record.
const GZIPPED: u8 = 0x80;

fn kind(signal: OtlpSignal) -> u8 {
    match signal {
        OtlpSignal::Traces => 1,
        OtlpSignal::Metrics => 2,
        OtlpSignal::Logs => 3,
        OtlpSignal::Profiles => 4,
    }
}

fn signal(kind: u8) -> Option<OtlpSignal> {
    OtlpSignal::ALL
        .into_iter()
        .find(|&s| self::kind(s) == kind & !GZIPPED)
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
    shared: &Shared,
    resources: &mut encode::Resources,
    batch: Arc<Batch>,
    max: usize,
    when_full: WhenFull,
) -> Result<(), BoxError> {
    let gzip = |signal| shared.client(signal).is_some_and(|c| c.gzip());
    for (signal, request, n) in crate::requests(resources, &[batch], max, gzip) {
        let gzip = gzip(signal);
        shared.count_gzipped(&request);
        let bytes = Arc::new(request.to_protobuf(gzip));
        let kind = kind(signal) | if gzip { GZIPPED } else { 0 };
        disk.append(kind, n, bytes, when_full).await?;
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
        // Concatenated requests merge, except profiles' one dictionary each and gzip'd ones.
        let joinable = |k| k != kind(OtlpSignal::Profiles) && k & GZIPPED == 0;
        let max = shared.send_batch_size as u64;
        let Some(mut pending) = disk
            .wait_next(max, MAX_CHUNK_BYTES, joinable, &mut closed, &handed_over)
            .await
        else {
            return;
        };
        let records = pending.chunk.records;
        let gzipped = pending.chunk.kind & GZIPPED != 0;
        let Some(signal) = signal(pending.chunk.kind) else {
            shared.telemetry.add_dropped("unknown_record_kind", records);
            disk.ack(pending);
            continue;
        };
        let Some(client) = shared.client(signal) else {
            // Queued by a run whose pipelines had this signal; this one has not.
            shared.add_outstanding(records);
            shared.settle(records, 0, "signal_not_configured");
            disk.ack(pending);
            continue;
        };
        let bytes = std::mem::take(&mut pending.chunk.bytes);
        let request = match (gzipped, client.gzip()) {
            (false, _) => Request::Encoded(signal, Encoded(bytes)),
            (true, true) => Request::Gzipped(signal, bytes.into()),
            // Written by a run that compressed; this one does not: inflated off the workers.
            (true, false) => match oxeye_diskqueue::blocking(move || Ok(gunzip(&bytes))).await {
                Ok(Some(plain)) => Request::Encoded(signal, Encoded(plain)),
                _ => {
                    shared.telemetry.add_dropped("corrupt_record", records);
                    disk.ack(pending);
                    continue;
                }
            },
        };
        shared.add_outstanding(records);
        if !shared
            .deliver(signal, client, request, records, &handed_over)
            .await
        {
            return; // given back (the guard) to the instance that took over
        }
        disk.ack(pending);
    }
}

/// A gzip'd record inflated (`None`: not gzip after all, though its checksum held).
fn gunzip(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}
