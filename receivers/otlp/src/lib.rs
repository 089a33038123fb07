#![doc = include_str!("../README.md")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use oxeye_api::{
    BoxError, BuildContext, ConfigErrors, Factory, Hold, Receiver, ReceiverContext, Signal,
    Telemetry,
};
use tracing::info;

mod admission;
pub mod body;
mod config;
pub mod convert;
mod grpc;
mod gzip;

/// Inflating as the receiver does, for the fuzz target (`tests/fuzz`): not the receiver's
/// interface.
#[doc(hidden)]
pub mod fuzzing {
    /// [`crate::gzip::gunzip`] with a budget of `limit`: the inflated bytes, `None` when refused.
    pub fn gunzip(raw: &[u8], limit: usize) -> Option<Vec<u8>> {
        let budget = crate::admission::Budget::new(limit as u64);
        crate::gzip::gunzip(raw, limit, &mut budget.charge()).ok()
    }
}
mod http;
mod serve;
mod tls;
pub mod wire;

pub use config::{
    Admission, Backpressure, GrpcConfig, GrpcKeepalive, HttpConfig, OtlpReceiverConfig, Protocols,
    ServerParameters, ServerTls,
};

/// The receiver's counters, exported as `oxeye_otlp_<name>_total{source=grpc|http}`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    /// Requests refused because the pipeline stayed full for `backpressure.wait`, or a gate
    /// (`memory_limiter`) refused.
    RefusedRequests,
    /// Spans in those requests.
    RefusedSpans,
    /// Metric data points in those requests.
    RefusedDataPoints,
    /// Log records in those requests.
    RefusedLogRecords,
    /// Requests refused before they were read whole: over `admission.request_limit_mib`.
    RefusedOverBudget,
    /// Requests that could not be read (bad protobuf/JSON, content type, size).
    MalformedRequests,
    /// Connections closed at accept: over `max_connections`.
    RefusedConnections,
    /// Connections or requests cut by a timeout (TLS handshake, first request, headers, body).
    Timeouts,
    /// Connections still open at the end of the shutdown drain, closed by force.
    AbortedConnections,
    /// Requests whose body ended early (the client went away or reset the stream).
    IncompleteRequests,
}

impl Counter {
    const ALL: [Counter; 10] = [
        Counter::RefusedRequests,
        Counter::RefusedSpans,
        Counter::RefusedDataPoints,
        Counter::RefusedLogRecords,
        Counter::RefusedOverBudget,
        Counter::MalformedRequests,
        Counter::RefusedConnections,
        Counter::Timeouts,
        Counter::AbortedConnections,
        Counter::IncompleteRequests,
    ];

    fn name(self) -> &'static str {
        match self {
            Counter::RefusedRequests => "otlp_refused_requests",
            Counter::RefusedSpans => "otlp_refused_spans",
            Counter::RefusedDataPoints => "otlp_refused_data_points",
            Counter::RefusedLogRecords => "otlp_refused_log_records",
            Counter::RefusedOverBudget => "otlp_refused_over_budget_requests",
            Counter::MalformedRequests => "otlp_malformed_requests",
            Counter::RefusedConnections => "otlp_refused_connections",
            Counter::Timeouts => "otlp_timeouts",
            Counter::AbortedConnections => "otlp_aborted_connections",
            Counter::IncompleteRequests => "otlp_incomplete_requests",
        }
    }
}

/// What the protocol servers share.
pub(crate) struct Shared {
    ctx: ReceiverContext,
    telemetry: Telemetry,
    backpressure: Backpressure,
    /// `acknowledgements`: answer once the exporters have taken the records.
    acknowledgements: bool,
    budget: Arc<admission::Budget>,
    /// `admission.max_concurrent_requests`, both protocols together.
    requests: Arc<tokio::sync::Semaphore>,
    /// Per source (gRPC, HTTP), per [`Counter`].
    counts: [[AtomicU64; Counter::ALL.len()]; 2],
}

/// A request's charge that, once the pipeline lets go of it, says so (`acknowledgements`).
struct Acknowledged(
    #[allow(dead_code)] admission::Charge,
    Option<tokio::sync::oneshot::Sender<()>>,
);

impl Drop for Acknowledged {
    fn drop(&mut self) {
        if let Some(tx) = self.1.take() {
            let _ = tx.send(());
        }
    }
}

/// A request the pipeline could not take in time: the client is told to retry.
pub(crate) struct Busy;

/// Records of an accepted request not sent into the pipeline yet: counted as dropped
/// (`receiver_stopped`) if the request is abandoned.
struct Unsent<'a> {
    telemetry: &'a Telemetry,
    records: u64,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.telemetry.add_dropped("receiver_stopped", self.records);
    }
}

/// The refused-records counter and the malformed-record drop reason of a signal.
fn record_names(signal: Signal) -> (Counter, &'static str) {
    match signal {
        Signal::Metrics => (Counter::RefusedDataPoints, "malformed_data_point"),
        Signal::Logs => (Counter::RefusedLogRecords, "malformed_log_record"),
        _ => (Counter::RefusedSpans, "malformed_span"),
    }
}

/// Why a signal is refused by a receiver in no pipeline of it.
pub(crate) fn not_wired(signal: Signal) -> String {
    format!("this otlp receiver is in no {signal} pipeline: add it to one (service.pipelines.{signal}.receivers) to take {signal}")
}

impl Shared {
    /// `grpc` or `http`, from a protocol's name in logs.
    pub(crate) fn source_of(&self, what: &str) -> &'static str {
        if what.contains("gRPC") {
            "grpc"
        } else {
            "http"
        }
    }

    pub(crate) fn bump(&self, counter: Counter, source: &'static str, n: u64) {
        let row = usize::from(source != "grpc");
        let cell = &self.counts[row][counter as usize];
        let total = cell.fetch_add(n, Ordering::Relaxed) + n;
        self.telemetry.set_counter(counter.name(), source, total);
    }

    /// A new, empty charge on the in-flight budget.
    pub(crate) fn charge(&self) -> admission::Charge {
        self.budget.charge()
    }

    /// A place among the requests served at once; `None` when all are taken.
    pub(crate) fn request_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.requests).try_acquire_owned().ok()
    }

    /// True when the pipeline sends `signal` straight to exporters that forward requests as
    /// received: clean requests are then kept as they came, not decoded ([`wire::encoded`],
    /// [`wire::encoded_metrics`], [`wire::encoded_logs`]).
    pub(crate) fn keeps_encoded(&self, signal: Signal) -> bool {
        self.ctx.takes_encoded(signal)
    }

    /// True when a pipeline of `signal` takes this receiver's output.
    pub(crate) fn takes(&self, signal: Signal) -> bool {
        self.ctx.wants(signal)
    }

    /// Counts a request that could not be read (bad protobuf/JSON, content type, size).
    pub(crate) fn malformed(&self, source: &'static str) {
        self.bump(Counter::MalformedRequests, source, 1);
    }

    /// Counts a request refused over the in-flight budget.
    pub(crate) fn over_budget(&self, source: &'static str) {
        self.bump(Counter::RefusedOverBudget, source, 1);
    }

    /// How long open requests may take to finish once the receiver stops.
    pub(crate) fn drain_time(&self) -> std::time::Duration {
        serve::drain_time(self.backpressure.wait)
    }

    /// The delay suggested to refused clients, in whole seconds (at least 1).
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.backpressure.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }

    /// Hands a decoded request to the pipeline: all of it, or (pipeline full) none of it. The
    /// request's charge travels with its batches until the pipeline's first stages took them.
    pub(crate) async fn accept(
        &self,
        source: &'static str,
        signal: Signal,
        converted: convert::Converted,
        mut charge: admission::Charge,
    ) -> Result<ExportTraceServiceResponse, Busy> {
        // What the batches hold from here on: their encoded bytes, or their decoded spans.
        charge.shrink_to(converted.held_bytes);
        // With acknowledgements, the hold says when the last stage let go of the batches: the
        // exporters' `export` returned for all of them (or a processor dropped them).
        let (hold, taken): (Hold, _) = if self.acknowledgements {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Arc::new(Acknowledged(charge, Some(tx))), Some(rx))
        } else {
            (Arc::new(charge), None)
        };
        let mut batches = converted.batches.into_iter();
        if let Some(first) = batches.next() {
            if self
                .ctx
                .emit_within_holding(first, self.backpressure.wait, Arc::clone(&hold))
                .await
                .is_err()
            {
                self.bump(Counter::RefusedRequests, source, 1);
                self.bump(record_names(signal).0, source, converted.accepted);
                return Err(Busy);
            }
            // The rest of an accepted request follows whatever the wait: the client was not
            // refused, so none of it may be lost. If the receiver is torn down meanwhile (its
            // connections aborted after the shutdown drain), what was not sent counts as
            // dropped.
            let mut rest = Unsent {
                telemetry: &self.telemetry,
                records: batches.as_slice().iter().map(|b| b.len() as u64).sum(),
            };
            for batch in batches {
                let n = batch.len() as u64;
                self.ctx.emit_holding(batch, Arc::clone(&hold)).await;
                rest.records -= n;
            }
        }
        drop(hold);
        if let Some(taken) = taken {
            let _ = taken.await;
        }
        self.telemetry
            .add_dropped(record_names(signal).1, converted.rejected);
        Ok(ExportTraceServiceResponse {
            partial_success: (converted.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: converted.rejected as i64,
                error_message: converted.first_error.unwrap_or_default(),
            }),
        })
    }
}

/// Resolves `host:port` to the addresses to bind (all of `localhost`'s, as the Collector does).
async fn resolve(endpoint: &str) -> Result<Vec<SocketAddr>, BoxError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| format!("cannot resolve `{endpoint}`: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("`{endpoint}` resolves to no address").into());
    }
    Ok(addrs)
}

/// Binds `endpoint`: every address it resolves to that can be bound (localhost's ::1 may not
/// exist), failing when none can, with the error of the first.
pub(crate) async fn bind(
    endpoint: &str,
    what: &str,
) -> Result<Vec<tokio::net::TcpListener>, BoxError> {
    let mut listeners = Vec::new();
    let mut first_error = None;
    for addr in resolve(endpoint).await? {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                first_error.get_or_insert(format!("cannot listen on {addr} for {what}: {e}"));
            }
        }
    }
    match (listeners.is_empty(), first_error) {
        (true, Some(e)) => Err(e.into()),
        _ => Ok(listeners),
    }
}

/// The otlp receiver.
pub struct OtlpReceiver {
    config: OtlpReceiverConfig,
    telemetry: Telemetry,
}

#[async_trait]
impl Receiver for OtlpReceiver {
    async fn run(self: Box<Self>, ctx: ReceiverContext) -> Result<(), BoxError> {
        let shutdown = ctx.shutdown().clone();
        let shared = Arc::new(Shared {
            ctx,
            telemetry: self.telemetry,
            backpressure: self.config.backpressure.clone(),
            acknowledgements: self.config.acknowledgements,
            budget: admission::Budget::new(self.config.admission.request_limit_mib << 20),
            requests: Arc::new(tokio::sync::Semaphore::new(
                self.config.admission.max_concurrent_requests,
            )),
            counts: Default::default(),
        });
        // Bind both first, so a taken port fails the start before anything is served.
        let grpc = match &self.config.protocols.grpc {
            Some(cfg) => Some((cfg, bind(&cfg.endpoint, "OTLP/gRPC").await?)),
            None => None,
        };
        let http = match &self.config.protocols.http {
            Some(cfg) => Some((cfg, bind(&cfg.endpoint, "OTLP/HTTP").await?)),
            None => None,
        };
        let grpc = async {
            match grpc {
                Some((cfg, listeners)) => {
                    grpc::serve(cfg, listeners, Arc::clone(&shared), shutdown.clone()).await
                }
                None => Ok(()),
            }
        };
        let http = async {
            match http {
                Some((cfg, listeners)) => {
                    http::serve(cfg, listeners, Arc::clone(&shared), shutdown.clone()).await
                }
                None => Ok(()),
            }
        };
        tokio::try_join!(grpc, http)?;
        info!("otlp receiver stopped");
        Ok(())
    }
}

/// Factory for [`OtlpReceiver`].
pub struct OtlpReceiverFactory;

impl Factory for OtlpReceiverFactory {
    type Config = OtlpReceiverConfig;
    type Component = Box<dyn Receiver>;
    const TYPE: &'static str = "otlp";
    const SIGNALS: &'static [Signal] = &[Signal::Traces, Signal::Metrics, Signal::Logs];
    const DESCRIPTION: &'static str =
        "OTLP traces, metrics and logs over gRPC (4317) and HTTP (4318, protobuf and JSON) from OpenTelemetry SDKs and collectors";
    const DOCS: &'static str = include_str!("../../../docs/components/receiver-otlp.md");

    fn validate(config: &OtlpReceiverConfig) -> Result<(), ConfigErrors> {
        config.validate()
    }

    fn build(config: OtlpReceiverConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(OtlpReceiver {
            config,
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(OtlpReceiverFactory);

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<(String, String)> {
        let config: OtlpReceiverConfig = serde_yaml::from_str(yaml).expect("yaml");
        match OtlpReceiverFactory::validate(&config) {
            Ok(()) => Vec::new(),
            Err(e) => e.0.into_iter().map(|f| (f.path, f.message)).collect(),
        }
    }

    #[test]
    fn a_bare_protocol_key_means_its_defaults() {
        let c: OtlpReceiverConfig = serde_yaml::from_str("protocols: {grpc: }").unwrap();
        assert_eq!(c.protocols.grpc.unwrap().endpoint, "localhost:4317");
        assert!(c.protocols.http.is_none());
        assert!(errors("protocols: {grpc: , http: }").is_empty());
    }

    #[test]
    fn every_mistake_at_once() {
        let e = errors(
            "protocols:
  grpc: {endpoint: 'nowhere', max_recv_msg_size_mib: 0, tls: {cert_file: /no/cert, key_file: /no/key}}
  http: {endpoint: 'nowhere', traces_url_path: /v1/logs, metrics_url_path: v1/metrics}",
        );
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "protocols.grpc.endpoint",
                "protocols.grpc.max_recv_msg_size_mib",
                "protocols.grpc.tls.cert_file",
                "protocols.grpc.tls.key_file",
                "protocols.http.endpoint",
                "protocols.http.metrics_url_path",
                "protocols.http.logs_url_path",
                "protocols.http.endpoint",
            ],
            "{e:?}"
        );
        assert!(e[0].1.contains("is not host:port"));
        assert_eq!(errors("{}")[0].0, "protocols");
    }
}
