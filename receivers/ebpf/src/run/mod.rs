//! The running receiver: its flows half and its spans-and-profiles half run side by side, and
//! live config changes are handed to the half they concern.

mod flows;
mod process;
mod profiles;
mod requests;
mod spans;

use std::sync::Arc;

use async_trait::async_trait;
use oxeye_api::blocking::unblock;
use oxeye_api::{Batch, BoxError, Flow, Receiver, ReceiverContext, Resource, Signal, Telemetry};

use crate::config::*;
use flows::run_flows;
use profiles::run_profiles;
use spans::{run_spans, start_probes};

/// The receiver.
pub struct EbpfReceiver {
    /// `flows:` and the interfaces it resolved to at build.
    pub(crate) flows: Option<(FlowsConfig, Vec<String>)>,
    pub(crate) spans: Option<SpansConfig>,
    pub(crate) profiles: Option<ProfilesConfig>,
    pub(crate) process: Option<ProcessConfig>,
    pub(crate) requests: Option<RequestsConfig>,
    pub(crate) resource: Arc<Resource>,
    pub(crate) telemetry: Telemetry,
}

const BATCH: usize = 4096;

/// Sends records in batches of at most BATCH (moving each record once).
async fn emit_batches<T>(
    ctx: &ReceiverContext,
    resource: &Arc<Resource>,
    records: Vec<T>,
    wrap: fn(Arc<Resource>, Vec<T>) -> Batch,
) {
    let mut records = records.into_iter();
    loop {
        let chunk: Vec<T> = records.by_ref().take(BATCH).collect();
        if chunk.is_empty() {
            return;
        }
        ctx.emit(wrap(resource.clone(), chunk)).await;
    }
}

async fn emit(ctx: &ReceiverContext, resource: &Arc<Resource>, flows: Vec<Flow>) {
    emit_batches(ctx, resource, flows, Batch::flows).await;
}

/// A part of a new config for one half of the receiver, and where to say whether it applied.
type Change<T> = (T, tokio::sync::oneshot::Sender<Result<(), String>>);
type Changes<T> = tokio::sync::mpsc::UnboundedReceiver<Change<T>>;

#[async_trait]
impl Receiver for EbpfReceiver {
    async fn run(self: Box<Self>, ctx: ReceiverContext) -> Result<(), BoxError> {
        let this = *self;
        let flows_now = this.flows.as_ref().map(|(c, _)| c.clone());
        let spans_now = this.spans.clone();
        let (flow_tx, flow_rx) = tokio::sync::mpsc::unbounded_channel();
        let (span_tx, span_rx) = tokio::sync::mpsc::unbounded_channel();
        let profiles_now = this.profiles.clone();
        let process_now = this.process.clone();
        let process = async {
            match this.process.clone().filter(|_| ctx.wants(Signal::Logs)) {
                Some(cfg) => process::run_process(&ctx, cfg, &this.resource, &this.telemetry).await,
                None => Ok(()),
            }
        };
        let requests_now = this.requests.clone();
        let requests = async {
            let wanted = ctx.wants(Signal::Traces) || ctx.wants(Signal::Metrics);
            match this.requests.clone().filter(|_| wanted) {
                Some(cfg) => {
                    requests::run_requests(&ctx, cfg, &this.resource, &this.telemetry).await
                }
                None => Ok(()),
            }
        };
        let flows_on = this.flows.is_some() && ctx.wants(Signal::Flows);
        let spans_on = this.spans.is_some() && ctx.wants(Signal::Traces);
        let flows = async {
            match this.flows.filter(|_| ctx.wants(Signal::Flows)) {
                Some((cfg, interfaces)) => {
                    run_flows(
                        &ctx,
                        cfg,
                        interfaces,
                        &this.resource,
                        &this.telemetry,
                        flow_rx,
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        let tracing = async {
            let spans = this.spans.filter(|_| ctx.wants(Signal::Traces));
            let profiles = this.profiles.filter(|_| ctx.wants(Signal::Profiles));
            if spans.is_none() && profiles.is_none() {
                return Ok(());
            }
            // Loading and attaching are hundreds of syscalls: off the async workers.
            let (s, p, t) = (spans.clone(), profiles.clone(), this.telemetry.clone());
            let (span_probe, profile_probe) =
                unblock(move || start_probes(s.as_ref(), p.as_ref(), t)).await?;
            let run_s = async {
                match (span_probe, spans) {
                    (Some(probe), Some(cfg)) => {
                        run_spans(&ctx, probe, cfg, &this.resource, &this.telemetry, span_rx).await
                    }
                    _ => Ok(()),
                }
            };
            let run_p = async {
                match (profile_probe, profiles) {
                    (Some(probe), Some(cfg)) => {
                        run_profiles(&ctx, probe, cfg, &this.resource).await
                    }
                    _ => Ok(()),
                }
            };
            tokio::try_join!(run_s, run_p).map(|_| ())
        };
        // Live config changes: each half takes its part; anything else is refused, and the
        // engine then replaces the receiver.
        let dispatch = async {
            let Some(mut changes) = ctx.reconfigurations() else {
                return std::future::pending::<()>().await;
            };
            let (mut flows_now, mut spans_now) = (flows_now, spans_now);
            while let Some(change) = changes.recv().await {
                let result = async {
                    let value = match change.config.clone() {
                        serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
                        v => v,
                    };
                    let new: EbpfConfig =
                        serde_yaml::from_value(value).map_err(|e| format!("config: {e}"))?;
                    for (part, differs, on, now_some, new_some) in [
                        (
                            "flows",
                            new.flows != flows_now,
                            flows_on,
                            flows_now.is_some(),
                            new.flows.is_some(),
                        ),
                        (
                            "spans",
                            new.spans != spans_now,
                            spans_on,
                            spans_now.is_some(),
                            new.spans.is_some(),
                        ),
                    ] {
                        if differs && (!on || now_some != new_some) {
                            return Err(format!("`{part}:` added, removed or not running"));
                        }
                    }
                    if new.requests != requests_now {
                        return Err("`requests:` changed (its programs restart)".to_string());
                    }
                    if new.process != process_now {
                        return Err("`process:` changed (its programs restart)".to_string());
                    }
                    if new.profiles != profiles_now {
                        return Err("`profiles:` changed (the profiler restarts)".to_string());
                    }
                    if let Some(f) = new.flows.clone().filter(|f| Some(f) != flows_now.as_ref()) {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        flow_tx
                            .send((f, tx))
                            .map_err(|_| "flows stopped".to_string())?;
                        rx.await.map_err(|_| "flows stopped".to_string())??;
                        flows_now = new.flows.clone();
                    }
                    if let Some(sp) = new
                        .spans
                        .clone()
                        .filter(|sp| Some(sp) != spans_now.as_ref())
                    {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        span_tx
                            .send((sp, tx))
                            .map_err(|_| "spans stopped".to_string())?;
                        rx.await.map_err(|_| "spans stopped".to_string())??;
                        spans_now = new.spans.clone();
                    }
                    Ok(())
                }
                .await;
                let _ = change.done.send(result);
            }
            std::future::pending::<()>().await
        };
        // Either half failing ends the receiver at once (the other half is dropped, which
        // detaches its programs); the engine then marks it unhealthy and shuts everything down.
        tokio::select! {
            r = async { tokio::try_join!(flows, tracing, process, requests).map(|_| ()) } => r,
            _ = dispatch => unreachable!("pends forever"),
        }
    }
}
