//! The requests loop: drain the ring buffer into spans (and, in a metrics pipeline, into the
//! RED histograms, emitted every `metrics.interval`), forget the connections of exited
//! processes now and then, until shutdown.

use std::sync::Arc;

use oxeye_api::blocking::unblock;
use oxeye_api::{Batch, BoxError, ReceiverContext, Resource, Signal, Telemetry};
use tracing::info;

use super::BATCH;
use crate::config::RequestsConfig;
use crate::requests::{RedMetrics, RequestProbe, SWEEP_INTERVAL};

pub(super) async fn run_requests(
    ctx: &ReceiverContext,
    cfg: RequestsConfig,
    resource: &Arc<Resource>,
    telemetry: &Telemetry,
) -> Result<(), BoxError> {
    // Loading and attaching are hundreds of syscalls: off the async workers.
    let (c, t) = (cfg.clone(), telemetry.clone());
    let mut probe = unblock(move || RequestProbe::start(&c, t)).await?;
    let mut out = Out {
        spans: ctx.wants(Signal::Traces),
        metrics: ctx
            .wants(Signal::Metrics)
            .then(|| RedMetrics::new(unix_now(), cfg.metrics.max_series)),
    };
    let mut swept = tokio::time::Instant::now();
    let mut flush = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.metrics.interval,
        cfg.metrics.interval,
    );
    loop {
        tokio::select! {
            _ = probe.wait(cfg.drain_interval) => {}
            _ = flush.tick(), if out.metrics.is_some() => {
                drain(ctx, resource, &mut probe, &mut out).await;
                out.flush(ctx, resource, telemetry).await;
            }
            _ = ctx.shutdown().wait() => break,
        }
        drain(ctx, resource, &mut probe, &mut out).await;
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
    drain(ctx, resource, &mut probe, &mut out).await;
    out.flush(ctx, resource, telemetry).await;
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
        connections_tracked = probe.connections_tracked(),
        unmatched_responses = c.unmatched_responses,
        closed_mid_response = c.closed_mid_response,
        truncated_heads = c.truncated_heads,
        heads_shed = c.heads_shed,
        metric_series = out.metrics.as_ref().map_or(0, |m| m.series()),
        "requests: programs detached"
    );
    Ok(())
}

/// Where finished request spans go: downstream as spans, into the RED histograms, or both.
struct Out {
    spans: bool,
    metrics: Option<RedMetrics>,
}

impl Out {
    /// Emits the histograms' totals so far.
    async fn flush(&self, ctx: &ReceiverContext, resource: &Arc<Resource>, telemetry: &Telemetry) {
        let Some(red) = &self.metrics else { return };
        telemetry.set_counter("ebpf_l7_metric_overflow", "requests", red.overflowed);
        let metrics = red.collect(unix_now());
        if !metrics.is_empty() {
            ctx.emit(Batch::metrics(resource.clone(), metrics)).await;
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Sends what waits in the ring buffer, batch by batch.
async fn drain(
    ctx: &ReceiverContext,
    resource: &Arc<Resource>,
    probe: &mut RequestProbe,
    out: &mut Out,
) {
    loop {
        let (events, spans) = probe.drain(BATCH);
        if let Some(red) = &mut out.metrics {
            for s in &spans {
                red.record(s);
            }
        }
        if out.spans && !spans.is_empty() {
            ctx.emit(Batch::spans(resource.clone(), spans)).await;
        }
        if events < BATCH {
            return;
        }
    }
}
