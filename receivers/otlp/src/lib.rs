#![doc = include_str!("../README.md")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use oxeye_api::config::duration;
use oxeye_api::{
    BoxError, BuildContext, ConfigErrors, Factory, Receiver, ReceiverContext, Signal, Telemetry,
};
use serde::{Deserialize, Deserializer};
use tracing::info;

pub mod convert;
mod grpc;
mod http;
mod tls;
pub mod wire;

/// `receivers: {otlp: ...}`, shaped like the OpenTelemetry Collector's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    /// The protocols to serve; at least one.
    pub protocols: Protocols,
    /// What happens when the pipeline is full.
    pub backpressure: Backpressure,
}

/// `protocols: {grpc: ..., http: ...}`; `grpc:` alone (no settings) serves with the defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Protocols {
    /// OTLP/gRPC.
    #[serde(deserialize_with = "present")]
    pub grpc: Option<GrpcConfig>,
    /// OTLP/HTTP (protobuf and JSON).
    #[serde(deserialize_with = "present")]
    pub http: Option<HttpConfig>,
}

/// A key written with no value (`grpc:`) means "on, with the defaults", as in the Collector.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// Server-side TLS; with `client_ca_file`, clients must present a certificate it signed (mTLS).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain of the server.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// PEM CA certificates that client certificates must chain to (turns on mTLS).
    pub client_ca_file: Option<String>,
}

/// `protocols.grpc`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// `host:port` to listen on.
    pub endpoint: String,
    /// Largest message taken, in MiB, after decompression.
    pub max_recv_msg_size_mib: u64,
    /// TLS (plain text when absent).
    pub tls: Option<ServerTls>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            endpoint: "localhost:4317".into(),
            max_recv_msg_size_mib: 4,
            tls: None,
        }
    }
}

/// `protocols.http`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `host:port` to listen on.
    pub endpoint: String,
    /// Largest request body taken, in bytes, after decompression.
    pub max_request_body_size: u64,
    /// Path of the traces endpoint.
    pub traces_url_path: String,
    /// TLS (plain text when absent).
    pub tls: Option<ServerTls>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            endpoint: "localhost:4318".into(),
            max_request_body_size: 20 << 20,
            traces_url_path: "/v1/traces".into(),
            tls: None,
        }
    }
}

/// `backpressure`: a request the pipeline cannot take within `wait` is refused with
/// RESOURCE_EXHAUSTED (gRPC, with RetryInfo) or 429 (HTTP, with Retry-After); the client's
/// exporter retries it. Nothing is buffered beyond the pipeline's own bounded queues.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backpressure {
    /// How long a request waits for room in the pipeline.
    #[serde(with = "duration")]
    pub wait: Duration,
    /// The delay suggested to refused clients.
    #[serde(with = "duration")]
    pub retry_after: Duration,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure {
            wait: Duration::from_millis(500),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// Checks a `host:port` endpoint without resolving it.
fn check_endpoint(errors: &mut ConfigErrors, path: &str, endpoint: &str) {
    let port = endpoint
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(_))) if !host.is_empty() => {}
        _ => errors.push(
            path,
            format!("`{endpoint}` is not host:port (e.g. `localhost:4317`, `0.0.0.0:4317`)"),
        ),
    }
}

fn check_tls(errors: &mut ConfigErrors, path: &str, tls: &Option<ServerTls>) {
    let Some(tls) = tls else { return };
    for (key, file) in [
        ("cert_file", Some(&tls.cert_file)),
        ("key_file", Some(&tls.key_file)),
        ("client_ca_file", tls.client_ca_file.as_ref()),
    ] {
        if let Some(file) = file {
            if std::fs::metadata(file).is_err() {
                errors.push(format!("{path}.{key}"), format!("cannot read `{file}`"));
            }
        }
    }
}

/// Counters shared by the protocol servers, exported as `oxeye_otlp_*_total{source=grpc|http}`.
#[derive(Default)]
struct Counts {
    refused_requests: AtomicU64,
    refused_spans: AtomicU64,
    malformed_requests: AtomicU64,
}

/// What the protocol servers share.
pub(crate) struct Shared {
    ctx: ReceiverContext,
    telemetry: Telemetry,
    backpressure: Backpressure,
    grpc: Counts,
    http: Counts,
}

/// A request the pipeline could not take in time: the client is told to retry.
pub(crate) struct Busy;

impl Shared {
    fn counts(&self, source: &'static str) -> &Counts {
        if source == "grpc" {
            &self.grpc
        } else {
            &self.http
        }
    }

    fn bump(&self, name: &'static str, source: &'static str, n: u64) {
        let c = self.counts(source);
        let cell = match name {
            "otlp_refused_requests" => &c.refused_requests,
            "otlp_refused_spans" => &c.refused_spans,
            _ => &c.malformed_requests,
        };
        let total = cell.fetch_add(n, Ordering::Relaxed) + n;
        self.telemetry.set_counter(name, source, total);
    }

    /// True when the pipeline sends spans straight to exporters that forward them as received:
    /// clean requests are then kept as they came, not decoded ([`wire::encoded`]).
    pub(crate) fn keeps_encoded(&self) -> bool {
        self.ctx.takes_encoded(Signal::Traces)
    }

    /// Counts a request that could not be read (bad protobuf/JSON, content type, size).
    pub(crate) fn malformed(&self, source: &'static str) {
        self.bump("otlp_malformed_requests", source, 1);
    }

    /// Hands a decoded request to the pipeline: all of it, or (pipeline full) none of it.
    pub(crate) async fn accept(
        &self,
        source: &'static str,
        converted: convert::Converted,
    ) -> Result<ExportTraceServiceResponse, Busy> {
        let mut batches = converted.batches.into_iter();
        if let Some(first) = batches.next() {
            if self
                .ctx
                .emit_within(first, self.backpressure.wait)
                .await
                .is_err()
            {
                self.bump("otlp_refused_requests", source, 1);
                self.bump("otlp_refused_spans", source, converted.accepted);
                return Err(Busy);
            }
            // The rest of an accepted request follows whatever the wait: the client was not
            // refused, so none of it may be lost.
            for batch in batches {
                self.ctx.emit(batch).await;
            }
        }
        self.telemetry
            .add_dropped("malformed_span", converted.rejected);
        Ok(ExportTraceServiceResponse {
            partial_success: (converted.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: converted.rejected as i64,
                error_message: converted.first_error.unwrap_or_default(),
            }),
        })
    }
}

/// The message for a signal this receiver does not take yet.
pub(crate) fn unsupported(signal: &str) -> String {
    format!("{signal} are not supported by this receiver: oxeye's otlp receiver takes traces only")
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
            grpc: Counts::default(),
            http: Counts::default(),
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
    const SIGNALS: &'static [Signal] = &[Signal::Traces];
    const DESCRIPTION: &'static str =
        "OTLP traces over gRPC (4317) and HTTP (4318, protobuf and JSON) from OpenTelemetry SDKs and collectors";

    fn validate(config: &OtlpReceiverConfig) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let p = &config.protocols;
        if p.grpc.is_none() && p.http.is_none() {
            errors.push(
                "protocols",
                "enable at least one protocol: `protocols: {grpc:, http:}`",
            );
        }
        if let Some(g) = &p.grpc {
            check_endpoint(&mut errors, "protocols.grpc.endpoint", &g.endpoint);
            if g.max_recv_msg_size_mib == 0 || g.max_recv_msg_size_mib > 1024 {
                errors.push(
                    "protocols.grpc.max_recv_msg_size_mib",
                    format!("must be 1 to 1024, got {}", g.max_recv_msg_size_mib),
                );
            }
            check_tls(&mut errors, "protocols.grpc.tls", &g.tls);
        }
        if let Some(h) = &p.http {
            check_endpoint(&mut errors, "protocols.http.endpoint", &h.endpoint);
            if h.max_request_body_size == 0 || h.max_request_body_size > 1 << 30 {
                errors.push(
                    "protocols.http.max_request_body_size",
                    format!(
                        "must be 1 to 1073741824 bytes, got {}",
                        h.max_request_body_size
                    ),
                );
            }
            if !h.traces_url_path.starts_with('/') {
                errors.push(
                    "protocols.http.traces_url_path",
                    format!("must start with `/`, got `{}`", h.traces_url_path),
                );
            } else if ["/v1/metrics", "/v1/logs"].contains(&h.traces_url_path.as_str()) {
                errors.push(
                    "protocols.http.traces_url_path",
                    format!("`{}` is the path of another signal", h.traces_url_path),
                );
            }
            check_tls(&mut errors, "protocols.http.tls", &h.tls);
        }
        if let (Some(g), Some(h)) = (&p.grpc, &p.http) {
            if g.endpoint == h.endpoint {
                errors.push(
                    "protocols.http.endpoint",
                    format!(
                        "`{}` is also the gRPC endpoint: use another port",
                        h.endpoint
                    ),
                );
            }
        }
        errors.into_result()
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
  http: {endpoint: 'nowhere', traces_url_path: /v1/logs}",
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
                "protocols.http.traces_url_path",
                "protocols.http.endpoint",
            ],
            "{e:?}"
        );
        assert!(e[0].1.contains("is not host:port"));
        assert_eq!(errors("{}")[0].0, "protocols");
    }
}
