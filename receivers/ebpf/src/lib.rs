//! `ebpf` receiver: telemetry from the kernel.
//!
//! `flows:` — network flows counted by an XDP program (ingress) and a TC program (egress) on
//! each watched interface, harvested every `flush_interval` into `flows` batches.
//!
//! ```yaml
//! receivers:
//!   ebpf:
//!     flows:
//!       interfaces: default        # default-route interface | all | [eth0, eth1]
//!       mode: auto                 # auto (native, else generic) | native | generic
//!       egress: true
//!       flush_interval: 1s
//!       max_flows: 65536           # per map (two maps alternate)
//!       sample_every: 1            # 1-in-N packet sampling, counts scaled back up
//! ```

pub mod bench;
mod flows;
mod sys;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Factory, Flow, Receiver, ReceiverContext,
    Resource, Signal, Telemetry,
};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use tracing::info;

/// Which interfaces to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Interfaces {
    /// The interface of the default route.
    #[default]
    Default,
    /// Every non-loopback interface.
    All,
    /// These interfaces.
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Interfaces {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Interfaces;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of interface names, `all` (every non-loopback interface) or `default` (the default-route interface)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Interfaces, E> {
                match v {
                    "default" => Ok(Interfaces::Default),
                    "all" => Ok(Interfaces::All),
                    other => Err(E::custom(format!(
                        "`{other}`: expected `all`, `default`, or a list such as [{other}]"
                    ))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Interfaces, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                Ok(Interfaces::List(names))
            }
        }
        d.deserialize_any(V)
    }
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Native (driver) mode, else generic, with a log line.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic (skb) only.
    Generic,
}

/// `flows:` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    /// Interfaces to watch.
    pub interfaces: Interfaces,
    /// XDP mode.
    pub mode: XdpModeConfig,
    /// Also count egress with TC.
    pub egress: bool,
    /// How often to harvest the flow maps.
    #[serde(with = "oxeye_api::config::duration")]
    pub flush_interval: Duration,
    /// Capacity of each flow map (entries).
    pub max_flows: u32,
    /// Count 1 packet in N, scaled back up (1 = every packet).
    pub sample_every: u32,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            interfaces: Interfaces::Default,
            mode: XdpModeConfig::Auto,
            egress: true,
            flush_interval: Duration::from_secs(1),
            max_flows: 65536,
            sample_every: 1,
        }
    }
}

/// Receiver config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Network flows from XDP and TC.
    pub flows: Option<FlowsConfig>,
}

/// The receiver.
pub struct EbpfReceiver {
    flows: Option<(FlowsConfig, Vec<String>)>,
    resource: Arc<Resource>,
    telemetry: Telemetry,
}

const BATCH: usize = 4096;

async fn emit(ctx: &ReceiverContext, resource: &Arc<Resource>, flows: Vec<Flow>) {
    let mut flows = flows;
    while !flows.is_empty() {
        let rest = flows.split_off(flows.len().min(BATCH));
        ctx.emit(Batch::flows(resource.clone(), flows)).await;
        flows = rest;
    }
}

#[async_trait]
impl Receiver for EbpfReceiver {
    async fn run(self: Box<Self>, ctx: ReceiverContext) -> Result<(), BoxError> {
        let Some((cfg, interfaces)) = self.flows.filter(|_| ctx.wants(Signal::Flows)) else {
            ctx.shutdown().wait().await;
            return Ok(());
        };
        let mut probe = flows::FlowProbe::start(&cfg, &interfaces, self.telemetry.clone()).await?;
        let mut tick = tokio::time::interval(cfg.flush_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let flows = probe.harvest().await?;
                    emit(&ctx, &self.resource, flows).await;
                }
                _ = ctx.shutdown().wait() => break,
            }
        }
        // Detach first, so the final drain sees every packet counted.
        probe.detach();
        let flows = probe.drain_all()?;
        let counters: Vec<String> = self
            .telemetry
            .counters()
            .iter()
            .map(|(name, source, n)| format!("{source}.{}={n}", name.trim_start_matches("ebpf_")))
            .collect();
        info!(
            flows = flows.len(),
            "flow programs detached; final harvest; kernel counters: {}",
            counters.join(" ")
        );
        emit(&ctx, &self.resource, flows).await;
        Ok(())
    }
}

/// Factory for [`EbpfReceiver`].
pub struct EbpfFactory;

impl Factory for EbpfFactory {
    type Config = EbpfConfig;
    type Component = Box<dyn Receiver>;
    const TYPE: &'static str = "ebpf";
    const SIGNALS: &'static [Signal] = &[Signal::Flows];
    const DESCRIPTION: &'static str =
        "kernel telemetry: network flows from XDP (ingress) and TC (egress); needs root";

    fn validate(c: &EbpfConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        let Some(f) = &c.flows else {
            e.push(
                "",
                "configure `flows:` (spans arrive with a later release), or nothing is collected",
            );
            return Err(e);
        };
        if f.flush_interval.is_zero() {
            e.push("flows.flush_interval", "must be greater than 0");
        }
        if f.max_flows == 0 {
            e.push("flows.max_flows", "must be at least 1");
        }
        if f.sample_every == 0 {
            e.push(
                "flows.sample_every",
                "must be at least 1 (1 = count every packet)",
            );
        }
        if let Interfaces::List(names) = &f.interfaces {
            if names.is_empty() {
                e.push(
                    "flows.interfaces",
                    "empty list: name interfaces, or write `default` or `all`",
                );
            }
            for (i, n) in names.iter().enumerate() {
                if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
                    e.push(
                        format!("flows.interfaces[{i}]"),
                        format!("`{n}` is not a valid interface name"),
                    );
                }
            }
        }
        e.into_result()
    }

    fn build(config: EbpfConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        let flows = match config.flows {
            Some(f) => {
                flows::check_privileges()?;
                let names = flows::resolve_interfaces(&f.interfaces)?;
                Some((f, names))
            }
            None => None,
        };
        Ok(Box::new(EbpfReceiver {
            flows,
            resource: ctx.resource,
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(EbpfFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::check;

    #[test]
    fn config_validation() {
        assert!(check::<EbpfFactory>("flows: {interfaces: [eth0], sample_every: 4}").is_ok());
        assert!(check::<EbpfFactory>("flows: {interfaces: all}").is_ok());
        assert!(check::<EbpfFactory>("flows: {}").is_ok());
        let e = check::<EbpfFactory>("flows: {interfaces: eth0}").unwrap_err();
        assert!(
            e.to_string()
                .contains("expected `all`, `default`, or a list such as [eth0]"),
            "{e}"
        );
        let e = check::<EbpfFactory>(
            "flows: {interfaces: [], flush_interval: 0s, sample_every: 0, max_flows: 0}",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "flows.flush_interval",
                "flows.max_flows",
                "flows.sample_every",
                "flows.interfaces"
            ]
        );
        assert!(check::<EbpfFactory>("flows: {mode: turbo}").is_err());
        assert!(check::<EbpfFactory>("{}").is_err());
    }
}
