//! The profiles loop: drain samples, close each window on time, emit its records.

use std::sync::Arc;
use std::time::Duration;

use oxeye_api::blocking::unblock;
use oxeye_api::{Batch, BoxError, Mapping, ReceiverContext, Resource};
use tracing::info;

use crate::config::ProfilesConfig;
use crate::{profiles, sys};

pub(super) async fn run_profiles(
    ctx: &ReceiverContext,
    mut probe: profiles::ProfileProbe,
    cfg: ProfilesConfig,
    resource: &Arc<Resource>,
) -> Result<(), BoxError> {
    // A window is closed once a drain after its end has run, so its last samples are in.
    let grace = profiles::DRAIN_INTERVAL + Duration::from_millis(50);
    let window_ns = cfg.window.as_nanos() as u64;
    let next_close = || {
        let now = sys::unix_now_ns();
        let wait = window_ns - now % window_ns;
        tokio::time::Instant::now() + Duration::from_nanos(wait) + grace
    };
    let mut close_at = next_close();
    let mut emitted = 0;
    loop {
        tokio::select! {
            _ = probe.wait(profiles::DRAIN_INTERVAL) => drain_profiles(&mut probe).await,
            _ = tokio::time::sleep_until(close_at) => {
                drain_profiles(&mut probe).await;
                let closed = probe.close(sys::unix_now_ns() - grace.as_nanos() as u64, false);
                probe.update_counters();
                emitted += emit_windows(ctx, resource, closed).await;
                close_at = next_close();
            }
            _ = ctx.shutdown().wait() => break,
        }
    }
    probe.detach();
    drain_profiles(&mut probe).await;
    let closed = probe.close(0, true);
    probe.update_counters();
    emitted += emit_windows(ctx, resource, closed).await;
    info!(
        samples = probe.samples(),
        records = emitted,
        "profiler detached; final windows emitted"
    );
    Ok(())
}

/// Drains the profile ring buffer; reads the mappings of processes new in their window off the
/// async workers.
async fn drain_profiles(probe: &mut profiles::ProfileProbe) {
    probe.drain();
    if let Some((pids, tables)) = probe.pending_tables() {
        unblock(move || {
            let mut t = tables.lock().unwrap_or_else(|p| p.into_inner());
            for pid in pids {
                t.load(pid);
            }
        })
        .await;
    }
    let pids = probe.pending_snapshots();
    if !pids.is_empty() {
        let read = unblock(move || {
            pids.into_iter()
                .map(|pid| (pid, Mapping::of_process(pid)))
                .collect()
        })
        .await;
        probe.set_mappings(read);
    }
}

/// Emits closed windows, one batch each, so exporters that merge by stack (folded, pprof)
/// see a whole window at once; returns the number of records.
async fn emit_windows(
    ctx: &ReceiverContext,
    resource: &Arc<Resource>,
    closed: Vec<(u64, Vec<oxeye_api::Sample>)>,
) -> usize {
    let mut n = 0;
    for (_, samples) in closed {
        n += samples.len();
        if !samples.is_empty() {
            ctx.emit(Batch::samples(resource.clone(), samples)).await;
        }
    }
    n
}
