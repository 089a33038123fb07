//! The flows loop: harvest the flow maps every `flush_interval`, apply `interfaces` changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use oxeye_api::blocking::unblock;
use oxeye_api::{BoxError, Flow, ReceiverContext, Resource, Telemetry};
use tracing::info;

use super::{emit, Changes};
use crate::config::FlowsConfig;

pub(super) async fn run_flows(
    ctx: &ReceiverContext,
    mut cfg: FlowsConfig,
    interfaces: Vec<String>,
    resource: &Arc<Resource>,
    telemetry: &Telemetry,
    mut changes: Changes<FlowsConfig>,
) -> Result<(), BoxError> {
    // Loading, attaching and harvesting are hundreds to thousands of syscalls: they run on the
    // blocking pool, never on the async workers.
    let flush_interval = cfg.flush_interval;
    let t = telemetry.clone();
    let started = cfg.clone();
    let mut probe =
        unblock(move || crate::flows::FlowProbe::start(&started, &interfaces, t)).await?;
    let mut seen = Seen::new(telemetry);
    info!(
        "watching {}: a record per flow every {flush_interval:?}",
        probe.interfaces().join(", "),
    );
    let mut tick = tokio::time::interval(flush_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let old = probe.flip()?;
                // Programs that read the old index finish within microseconds.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let (p, flows) = unblock(move || {
                    let flows = probe.harvest(old);
                    (probe, flows)
                })
                .await;
                probe = p;
                let flows = flows?;
                seen.harvest(&flows, &probe.interfaces(), flush_interval);
                emit(ctx, resource, flows).await;
            }
            Some((new, done)) = changes.recv() => {
                let (result, p) = change_flows(probe, &mut cfg, new).await;
                probe = p;
                let _ = done.send(result);
            }
            _ = ctx.shutdown().wait() => break,
        }
    }
    // Detach first, so the final drain sees every packet counted.
    let (_probe, flows) = unblock(move || {
        probe.detach();
        let flows = probe.drain_all();
        (probe, flows)
    })
    .await;
    let flows = flows?;
    let counters: Vec<String> = telemetry
        .counters()
        .iter()
        .filter(|(name, _, _)| {
            name.starts_with("ebpf_") && !name.contains("span") && !name.contains("orphan")
        })
        .map(|(name, source, n)| format!("{source}.{}={n}", name.trim_start_matches("ebpf_")))
        .collect();
    seen.count(&flows);
    info!(
        flows = flows.len(),
        "flow programs detached; final harvest; packets seen: {}; kernel counters: {}",
        seen.totals(),
        counters.join(" ")
    );
    emit(ctx, resource, flows).await;
    Ok(())
}

/// Packets seen per interface (`oxeye_ebpf_interface_packets_total{source=<interface>}`), so
/// a quiet run says what it watches: one line when a harvest finds nothing, at most a minute
/// apart.
struct Seen {
    telemetry: Telemetry,
    packets: BTreeMap<String, u64>,
    quiet_said: Option<tokio::time::Instant>,
}

impl Seen {
    fn new(telemetry: &Telemetry) -> Self {
        Seen {
            telemetry: telemetry.clone(),
            packets: BTreeMap::new(),
            quiet_said: None,
        }
    }

    fn count(&mut self, flows: &[Flow]) {
        for f in flows {
            let iface = f.interface.as_deref().unwrap_or("?");
            match self.packets.get_mut(iface) {
                Some(n) => *n += f.packets,
                None => {
                    self.packets.insert(iface.to_string(), f.packets);
                }
            }
        }
        for (iface, n) in &self.packets {
            self.telemetry
                .set_counter("ebpf_interface_packets", iface, *n);
        }
    }

    fn harvest(&mut self, flows: &[Flow], watched: &[String], every: Duration) {
        self.count(flows);
        if !flows.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        if self
            .quiet_said
            .is_some_and(|at| now - at < Duration::from_secs(60))
        {
            return;
        }
        self.quiet_said = Some(now);
        info!(
            "no packets on {} in the last {every:?}; packets seen so far: {}",
            watched.join(", "),
            self.totals()
        );
    }

    /// `eth0 1234, veth0 56`: the interfaces records came from (none yet: `none`).
    fn totals(&self) -> String {
        if self.packets.is_empty() {
            return "none".to_string();
        }
        let parts: Vec<String> = self
            .packets
            .iter()
            .map(|(iface, n)| format!("{iface} {n}"))
            .collect();
        parts.join(", ")
    }
}

/// Applies a new `flows:` whose only change is `interfaces`: the programs are attached to new
/// interfaces and detached from removed ones; the others, the maps and the counters go on.
async fn change_flows(
    mut probe: crate::flows::FlowProbe,
    cfg: &mut FlowsConfig,
    new: FlowsConfig,
) -> (Result<(), String>, crate::flows::FlowProbe) {
    let same_rest = FlowsConfig {
        interfaces: cfg.interfaces.clone(),
        ..new.clone()
    } == *cfg;
    if !same_rest {
        return (
            Err("flows settings other than `interfaces` changed".into()),
            probe,
        );
    }
    let spec = new.interfaces.clone();
    let (result, probe) = unblock(move || {
        let wanted = match crate::flows::resolve_interfaces(&spec) {
            Ok(w) => w,
            Err(e) => return (Err(e.to_string()), probe),
        };
        let now = probe.interfaces();
        for iface in now.iter().filter(|i| !wanted.contains(i)) {
            probe.remove_interface(iface);
        }
        for iface in wanted.iter().filter(|i| !now.contains(i)) {
            if let Err(e) = probe.add_interface(iface) {
                return (Err(e.to_string()), probe);
            }
        }
        (Ok(()), probe)
    })
    .await;
    if result.is_ok() {
        *cfg = new;
    }
    (result, probe)
}
