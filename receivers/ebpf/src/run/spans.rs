//! The spans loop: drain the ring buffer, expire sources past their ttl, apply source changes;
//! and the joint start of span sources and the profiler.

use std::sync::Arc;

use oxeye_api::blocking::unblock;
use oxeye_api::{Batch, BoxError, ReceiverContext, Resource, Telemetry};
use oxeye_ebpf_common::SPAN_COUNTER_NAMES;
use tracing::info;

use super::{Changes, BATCH};
use crate::config::{ProfilesConfig, SourceSpec, SpansConfig};
use crate::{profiles, spans};

/// Starts the span sources and the profiler together: a profile sample looks up the span open
/// on its thread in the span programs' `THREADS` map, which the profile object reuses through a
/// pin that only lives while both start.
pub(super) fn start_probes(
    spans: Option<&SpansConfig>,
    profiles: Option<&ProfilesConfig>,
    telemetry: Telemetry,
) -> Result<(Option<spans::SpanProbe>, Option<profiles::ProfileProbe>), crate::ProbeError> {
    let link = spans.is_some() && profiles.is_some();
    let (span_probe, pins) = match spans {
        Some(cfg) => {
            let (probe, pins) = spans::SpanProbe::start(cfg, telemetry.clone(), link)?;
            (Some(probe), pins)
        }
        None => (None, None),
    };
    let threads = pins.as_ref().map(|p| p.map_path("THREADS"));
    let profile_probe = match profiles {
        Some(cfg) => Some(profiles::ProfileProbe::start(
            cfg,
            telemetry,
            threads.as_deref(),
        )?),
        None => None,
    };
    Ok((span_probe, profile_probe))
}

pub(super) async fn run_spans(
    ctx: &ReceiverContext,
    mut probe: spans::SpanProbe,
    mut cfg: SpansConfig,
    resource: &Arc<Resource>,
    telemetry: &Telemetry,
    mut changes: Changes<SpansConfig>,
) -> Result<(), BoxError> {
    let drain_interval = cfg.drain_interval;
    let mut expired = 0;
    loop {
        let expiry = probe.next_expiry();
        tokio::select! {
            _ = probe.wait(drain_interval) => {
                drain_spans(ctx, resource, &mut probe).await;
                probe.update_counters();
            }
            Some((new, done)) = changes.recv() => {
                let (result, p) = change_spans(probe, &mut cfg, new).await;
                probe = p;
                let _ = done.send(result);
            }
            _ = sleep_until(expiry), if expiry.is_some() => {
                let (gone, p) = unblock(move || {
                    let gone = probe.expire(std::time::Instant::now());
                    (gone, probe)
                })
                .await;
                probe = p;
                for label in gone {
                    info!(source = %label, "span source expired (ttl): detached");
                    expired += 1;
                    telemetry.set_counter("ebpf_sources_expired", "spans", expired);
                }
            }
            _ = ctx.shutdown().wait() => break,
        }
    }
    // Detaching fentry/fexit links waits for RCU: off the async workers too.
    let mut probe = unblock(move || {
        probe.detach();
        probe
    })
    .await;
    let final_drain = drain_spans(ctx, resource, &mut probe).await;
    probe.update_counters();
    let counters: Vec<String> = telemetry
        .counters()
        .iter()
        .filter(|(name, _, n)| {
            SPAN_COUNTER_NAMES.contains(name) && (*n > 0 || *name == "ebpf_spans")
        })
        .map(|(name, source, n)| format!("{source} {}={n}", name.trim_start_matches("ebpf_")))
        .collect();
    info!(
        final_drain,
        "span sources detached; kernel counters: {}",
        counters.join(", ")
    );
    Ok(())
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Applies a new `spans:` to running span sources: sources removed are detached, new ones
/// attached, the others untouched. Anything else changed cannot be applied live (`Err`: the
/// engine then replaces the receiver).
async fn change_spans(
    mut probe: spans::SpanProbe,
    cfg: &mut SpansConfig,
    spans: SpansConfig,
) -> (Result<(), String>, spans::SpanProbe) {
    let same_rest = SpansConfig {
        sources: cfg.sources.clone(),
        ..spans.clone()
    } == *cfg;
    if !same_rest {
        return (
            Err("ring_size, wakeup_bytes or drain_interval changed".into()),
            probe,
        );
    }
    let removed: Vec<SourceSpec> = cfg
        .sources
        .iter()
        .filter(|s| !spans.sources.contains(s))
        .cloned()
        .collect();
    let added: Vec<SourceSpec> = spans
        .sources
        .iter()
        .filter(|s| !cfg.sources.contains(s))
        .cloned()
        .collect();
    *cfg = spans;
    // Attach and detach call into the kernel (and may wait for RCU): off the async workers.
    unblock(move || {
        for spec in &removed {
            probe.remove(spec);
        }
        let mut result = Ok(());
        for spec in &added {
            if let Err(e) = probe.add(spec) {
                result = Err(e.to_string());
                break;
            }
        }
        (result, probe)
    })
    .await
}

/// Drains the ring buffer batch by batch (bounded memory however much waits); returns the count.
async fn drain_spans(
    ctx: &ReceiverContext,
    resource: &Arc<Resource>,
    probe: &mut spans::SpanProbe,
) -> usize {
    let mut total = 0;
    loop {
        let spans = probe.drain(BATCH);
        let n = spans.len();
        total += n;
        if n > 0 {
            ctx.emit(Batch::spans(resource.clone(), spans)).await;
        }
        if n < BATCH {
            return total;
        }
    }
}
