//! The process-events loop: drain the ring buffer into log records until shutdown.

use std::sync::Arc;

use oxeye_api::blocking::unblock;
use oxeye_api::{Batch, BoxError, ReceiverContext, Resource, Telemetry};
use tracing::info;

use crate::config::ProcessConfig;
use crate::process::{Cgroups, ProcessProbe, DRAIN_INTERVAL};

pub(super) async fn run_process(
    ctx: &ReceiverContext,
    cfg: ProcessConfig,
    resource: &Arc<Resource>,
    telemetry: &Telemetry,
) -> Result<(), BoxError> {
    // Loading and attaching are syscalls: off the async workers.
    let t = telemetry.clone();
    let mut probe = unblock(move || ProcessProbe::start(&cfg, t)).await?;
    let mut cgroups = Some(Cgroups::default());
    let mut emitted = 0;
    loop {
        tokio::select! {
            _ = probe.wait(DRAIN_INTERVAL) => {}
            _ = ctx.shutdown().wait() => break,
        }
        emitted += drain(ctx, resource, &mut probe, &mut cgroups).await;
    }
    probe.detach();
    emitted += drain(ctx, resource, &mut probe, &mut cgroups).await;
    info!(events = emitted, "process events detached");
    Ok(())
}

/// Sends what waits in the ring buffer. Placing events in their cgroups may walk
/// /sys/fs/cgroup (at most once a second), so that part runs on a blocking thread.
async fn drain(
    ctx: &ReceiverContext,
    resource: &Arc<Resource>,
    probe: &mut ProcessProbe,
    cgroups: &mut Option<Cgroups>,
) -> usize {
    let events = probe.drain();
    probe.update_counters();
    if events.is_empty() {
        return 0;
    }
    let mut cg = cgroups.take().unwrap_or_default();
    let (records, cg) = unblock(move || (events.records(&mut cg), cg)).await;
    *cgroups = Some(cg);
    let n = records.len();
    ctx.emit(Batch::logs(Arc::clone(resource), records)).await;
    n
}
