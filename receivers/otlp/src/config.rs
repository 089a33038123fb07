//! `receivers: {otlp: ...}`: the settings, shaped like the OpenTelemetry Collector's (its
//! `confighttp` and `configgrpc` server settings, and `admission` as in its OTel-Arrow
//! receiver), and their validation.

use std::time::Duration;

use oxeye_api::config::duration;
use oxeye_api::ConfigErrors;
use serde::{Deserialize, Deserializer};

use crate::serve::Limits;

/// `receivers: {otlp: ...}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    /// The protocols to serve; at least one.
    pub protocols: Protocols,
    /// The in-flight byte budget shared by both protocols.
    pub admission: Admission,
    /// What happens when the pipeline is full.
    pub backpressure: Backpressure,
    /// Answer a request only once every exporter of its pipelines has taken its records
    /// (queued them: on disk, with an exporter's `sending_queue.storage`), instead of once the
    /// pipeline's first queue has. With a queue on disk, nothing answered is lost to a crash.
    pub acknowledgements: bool,
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
    /// Concurrent requests (HTTP/2 streams) per connection.
    pub max_concurrent_streams: u32,
    /// Connections open at once; more are closed when accepted, and counted.
    pub max_connections: usize,
    /// Keep-alive and connection lifetime (grpc-go's `keepalive.server_parameters`).
    pub keepalive: GrpcKeepalive,
    /// TLS (plain text when absent).
    pub tls: Option<ServerTls>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            endpoint: "localhost:4317".into(),
            max_recv_msg_size_mib: 4,
            max_concurrent_streams: 100,
            max_connections: 4096,
            keepalive: GrpcKeepalive::default(),
            tls: None,
        }
    }
}

/// `protocols.grpc.keepalive`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcKeepalive {
    /// The server's side of keep-alive.
    pub server_parameters: ServerParameters,
}

/// `protocols.grpc.keepalive.server_parameters`; a duration of `0s` means none.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerParameters {
    /// A connection that moved no byte for this long is closed (GOAWAY, then closed).
    #[serde(with = "duration")]
    pub max_connection_idle: Duration,
    /// A connection older than this is closed gracefully, so clients rebalance.
    #[serde(with = "duration")]
    pub max_connection_age: Duration,
    /// Time given to requests on a connection past its age or idle limit.
    #[serde(with = "duration")]
    pub max_connection_age_grace: Duration,
    /// Ping a client after this long without frames...
    #[serde(with = "duration")]
    pub time: Duration,
    /// ...and close the connection if the ping is not answered within this.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for ServerParameters {
    fn default() -> Self {
        ServerParameters {
            max_connection_idle: Duration::ZERO,
            max_connection_age: Duration::ZERO,
            max_connection_age_grace: Duration::from_secs(5),
            time: Duration::from_secs(2 * 3600),
            timeout: Duration::from_secs(20),
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
    /// Path of the metrics endpoint.
    pub metrics_url_path: String,
    /// Path of the logs endpoint.
    pub logs_url_path: String,
    /// Connections open at once; more are closed when accepted, and counted.
    pub max_connections: usize,
    /// Concurrent requests per HTTP/2 connection (HTTP/1.1 takes one at a time).
    pub max_concurrent_streams: u32,
    /// From the connection (or the end of the last request) to a request's complete headers.
    #[serde(with = "duration")]
    pub read_header_timeout: Duration,
    /// From a request's headers to its complete body; `0s` for none.
    #[serde(with = "duration")]
    pub read_timeout: Duration,
    /// A keep-alive connection that moved no byte for this long is closed; `0s` for never.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// HTTP/1.1 keep-alive (false: one request per connection).
    pub keep_alives_enabled: bool,
    /// TLS (plain text when absent).
    pub tls: Option<ServerTls>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            endpoint: "localhost:4318".into(),
            max_request_body_size: 20 << 20,
            traces_url_path: "/v1/traces".into(),
            metrics_url_path: "/v1/metrics".into(),
            logs_url_path: "/v1/logs".into(),
            max_connections: 4096,
            max_concurrent_streams: 100,
            read_header_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            keep_alives_enabled: true,
            tls: None,
        }
    }
}

/// `admission`: what clients' requests may hold in memory at once, both protocols together.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admission {
    /// MiB of requests read, decompressed, decoded and queued in the pipeline at once; a
    /// request that does not fit is refused (429 / RESOURCE_EXHAUSTED, retryable) and counted.
    pub request_limit_mib: u64,
    /// Requests served at once (from their headers to their answer); more are refused the
    /// same way.
    pub max_concurrent_requests: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            request_limit_mib: 128,
            max_concurrent_requests: 4096,
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

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl GrpcConfig {
    /// Largest message, in bytes.
    pub(crate) fn limit(&self) -> usize {
        (self.max_recv_msg_size_mib << 20) as usize
    }

    pub(crate) fn limits(&self) -> Limits {
        let k = &self.keepalive.server_parameters;
        Limits {
            max_connections: self.max_connections,
            // The HTTP/2 preface and the first request's headers (and the TLS handshake).
            first_request: Duration::from_secs(10),
            idle: nonzero(k.max_connection_idle),
            max_age: nonzero(k.max_connection_age),
            age_grace: k.max_connection_age_grace,
            http1: false,
            keep_alive: true,
            max_concurrent_streams: self.max_concurrent_streams,
            ping: nonzero(k.time).map(|t| (t, k.timeout)),
        }
    }
}

impl HttpConfig {
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            first_request: self.read_header_timeout,
            idle: nonzero(self.idle_timeout),
            max_age: None,
            age_grace: Duration::from_secs(5),
            http1: true,
            keep_alive: self.keep_alives_enabled,
            max_concurrent_streams: self.max_concurrent_streams,
            ping: None,
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

fn check_range(errors: &mut ConfigErrors, path: &str, value: u64, low: u64, high: u64) {
    if value < low || value > high {
        errors.push(path, format!("must be {low} to {high}, got {value}"));
    }
}

fn check_positive(errors: &mut ConfigErrors, path: &str, d: Duration) {
    if d.is_zero() {
        errors.push(path, "must be longer than 0s");
    }
}

impl OtlpReceiverConfig {
    /// Every problem, with its path.
    pub(crate) fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let p = &self.protocols;
        if p.grpc.is_none() && p.http.is_none() {
            errors.push(
                "protocols",
                "enable at least one protocol: `protocols: {grpc: {}, http: {}}`",
            );
        }
        if let Some(g) = &p.grpc {
            check_endpoint(&mut errors, "protocols.grpc.endpoint", &g.endpoint);
            check_range(
                &mut errors,
                "protocols.grpc.max_recv_msg_size_mib",
                g.max_recv_msg_size_mib,
                1,
                1024,
            );
            check_range(
                &mut errors,
                "protocols.grpc.max_concurrent_streams",
                g.max_concurrent_streams.into(),
                1,
                100_000,
            );
            check_range(
                &mut errors,
                "protocols.grpc.max_connections",
                g.max_connections as u64,
                1,
                1_000_000,
            );
            let k = &g.keepalive.server_parameters;
            if !k.time.is_zero() {
                check_positive(
                    &mut errors,
                    "protocols.grpc.keepalive.server_parameters.timeout",
                    k.timeout,
                );
            }
            check_tls(&mut errors, "protocols.grpc.tls", &g.tls);
        }
        if let Some(h) = &p.http {
            check_endpoint(&mut errors, "protocols.http.endpoint", &h.endpoint);
            check_range(
                &mut errors,
                "protocols.http.max_request_body_size",
                h.max_request_body_size,
                1,
                1 << 30,
            );
            let paths = [
                ("traces_url_path", &h.traces_url_path),
                ("metrics_url_path", &h.metrics_url_path),
                ("logs_url_path", &h.logs_url_path),
            ];
            for (i, (key, path)) in paths.iter().enumerate() {
                if !path.starts_with('/') {
                    errors.push(
                        format!("protocols.http.{key}"),
                        format!("must start with `/`, got `{path}`"),
                    );
                } else if let Some((other, _)) = paths[..i].iter().find(|(_, p)| p == path) {
                    errors.push(
                        format!("protocols.http.{key}"),
                        format!(
                            "`{path}` is already the path of `{other}`: each signal needs its own"
                        ),
                    );
                }
            }
            check_range(
                &mut errors,
                "protocols.http.max_connections",
                h.max_connections as u64,
                1,
                1_000_000,
            );
            check_range(
                &mut errors,
                "protocols.http.max_concurrent_streams",
                h.max_concurrent_streams.into(),
                1,
                100_000,
            );
            check_positive(
                &mut errors,
                "protocols.http.read_header_timeout",
                h.read_header_timeout,
            );
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
        // The largest request must fit the budget alone, or it could never be taken.
        let budget = self.admission.request_limit_mib << 20;
        let largest = [
            p.grpc
                .as_ref()
                .map(|g| crate::admission::worst_case(g.limit() as u64)),
            p.http
                .as_ref()
                .map(|h| crate::admission::worst_case(h.max_request_body_size)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        if self.admission.request_limit_mib == 0 || self.admission.request_limit_mib > 1 << 20 {
            errors.push(
                "admission.request_limit_mib",
                format!(
                    "must be 1 to 1048576, got {}",
                    self.admission.request_limit_mib
                ),
            );
        } else if budget < largest {
            errors.push(
                "admission.request_limit_mib",
                format!(
                    "{} MiB cannot hold the largest request the protocols take ({} MiB read and decompressed): raise it to at least {} or lower max_request_body_size / max_recv_msg_size_mib",
                    self.admission.request_limit_mib,
                    largest.div_ceil(1 << 20),
                    largest.div_ceil(1 << 20)
                ),
            );
        }
        if self.admission.max_concurrent_requests == 0
            || self.admission.max_concurrent_requests > 1_000_000
        {
            errors.push(
                "admission.max_concurrent_requests",
                format!(
                    "must be 1 to 1000000, got {}",
                    self.admission.max_concurrent_requests
                ),
            );
        }
        errors.into_result()
    }
}
