//! The requests loop: drain the ring buffer into spans, forget the connections of exited
//! processes now and then, until shutdown.

use std::sync::Arc;

use oxeye_api::blocking::unblock;
use oxeye_api::{Batch, BoxError, ReceiverContext, Resource, Telemetry};
use tracing::info;

use super::BATCH;
use crate::config::RequestsConfig;
use crate::requests::{RequestProbe, SWEEP_INTERVAL};

pub(super) async fn run_requests(
    ctx: &ReceiverContext,
    cfg: RequestsConfig,
    resource: &Arc<Resource>,
    telemetry: &Telemetry,
) -> Result<(), BoxError> {
    // Loading and attaching are hundreds of syscalls: off the async workers.
    let (c, t) = (cfg.clone(), telemetry.clone());
    let mut probe = unblock(move || RequestProbe::start(&c, t)).await?;
    let mut swept = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = probe.wait(cfg.drain_interval) => {}
            _ = ctx.shutdown().wait() => break,
        }
        drain(ctx, resource, &mut probe).await;
        if swept.elapsed() >= SWEEP_INTERVAL {
            // A walk of the connection map: a syscall per entry.
            probe = unblock(move || {
                probe.sweep();
                probe
            })
            .await;
            swept = tokio::time::Instant::now();
        }
        probe.update_counters();
    }
    probe.detach();
    drain(ctx, resource, &mut probe).await;
    probe.update_counters();
    let c = probe.counts();
    if probe.connections_tracked() == 0 {
        tracing::warn!(
            ports = ?cfg.ports,
            comm = cfg.comm.as_deref().unwrap_or(""),
            pid = cfg.pid.unwrap_or(0),
            "requests: no connection was opened that the filters let through: no request spans (connections opened before oxeye started are not seen)"
        );
    }
    info!(
        spans = c.spans,
        unmatched_responses = c.unmatched_responses,
        closed_mid_response = c.closed_mid_response,
        truncated_heads = c.truncated_heads,
        "requests: programs detached"
    );
    Ok(())
}

/// Sends what waits in the ring buffer, batch by batch.
async fn drain(ctx: &ReceiverContext, resource: &Arc<Resource>, probe: &mut RequestProbe) {
    loop {
        let (events, spans) = probe.drain(BATCH);
        if !spans.is_empty() {
            ctx.emit(Batch::spans(resource.clone(), spans)).await;
        }
        if events < BATCH {
            return;
        }
    }
}
