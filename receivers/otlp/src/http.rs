//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` with `application/x-protobuf` or
//! `application/json`, gzip or not, answered in the request's encoding as the OTLP specification says: 200 with a (partial)
//! success, 400/413/415 with a `google.rpc.Status` for a request that cannot be read, 429 with
//! Retry-After when the pipeline is full. Served by axum over hyper, HTTP/1.1 and h2, plain or
//! TLS (rustls).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use oxeye_api::{BoxError, Shutdown, Signal};
use prost::Message;

use crate::admission::{self, Body as BodyKind, Charge, Refused};
use crate::gzip::Inflate;
use crate::{Counter, HttpConfig, Shared};

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    /// `max_request_body_size`.
    limit: usize,
    /// `read_timeout`: from the headers to the whole body.
    read_timeout: Option<Duration>,
}

/// A `google.rpc.Status` body in the request's encoding.
fn status(http: StatusCode, code: tonic::Code, message: String, enc: Encoding) -> Response {
    let body = match enc {
        Encoding::Protobuf => tonic_types::Status {
            code: code as i32,
            message,
            details: Vec::new(),
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::json!({"code": code as i32, "message": message})
            .to_string()
            .into_bytes(),
    };
    (http, [(header::CONTENT_TYPE, enc.content_type())], body).into_response()
}

fn encoding_of(headers: &HeaderMap) -> Result<Encoding, String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    match mime.to_ascii_lowercase().as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(format!(
            "content type `{ct}` is not supported: send application/x-protobuf or application/json"
        )),
    }
}

/// Why a body was not read.
enum Unread {
    /// Answered with this status and message.
    Status(StatusCode, String),
    /// Over the in-flight budget: refused, retryable.
    OverBudget,
    /// The client went away or broke the stream mid-body.
    Incomplete(String),
    /// The body arrived slower than [`MIN_BODY_RATE`].
    TooSlow,
}

/// A body must arrive at this rate on average, after [`BODY_GRACE`] (the grace Kestrel gives
/// its `MinRequestBodyDataRate`): slow enough for a poor uplink, fast enough that holding the
/// budget with announced bodies costs an attacker real bandwidth.
const MIN_BODY_RATE: u64 = 64 << 10;
const BODY_GRACE: Duration = Duration::from_secs(2);

/// When the next bytes must have arrived for a body of which `got` bytes came since `started`.
fn next_due(started: tokio::time::Instant, got: usize) -> tokio::time::Instant {
    started + BODY_GRACE + Duration::from_secs_f64(got as f64 / MIN_BODY_RATE as f64)
}

fn too_large(what: &str, limit: usize) -> Unread {
    Unread::Status(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{what} is larger than max_request_body_size ({limit} bytes)"),
    )
}

/// The body, decompressed, at most `limit` bytes (a gzip bomb stops at the limit), every byte
/// charged to the in-flight budget as it arrives — never more than the budget allows; with
/// `keep`, also the body as it came when it is one gzip member (to be forwarded so).
async fn read_body(
    headers: &HeaderMap,
    body: &mut Body,
    limit: usize,
    charge: &mut Charge,
    keep: bool,
) -> Result<(Bytes, Option<Bytes>), Unread> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large("the request body", limit));
    }
    // A declared length is charged whole before any of it is read: a request that cannot fit
    // is refused without reading it, and one that fits reads into one buffer of its size
    // (refusing requests part way instead makes the allocator churn, which costs far more
    // memory than the budget: measured). So that announcing a body is not a cheap way to hold
    // the budget, the body must then keep arriving (`MIN_BODY_RATE`). A body of undeclared
    // length (chunked) is charged as it arrives.
    if let Some(n) = declared {
        if !charge.grow(n) {
            return Err(Unread::OverBudget);
        }
    }
    let started = tokio::time::Instant::now();
    let mut raw = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        let frame = match tokio::time::timeout_at(next_due(started, raw.len()), body.frame()).await
        {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => return Err(Unread::TooSlow),
        };
        let frame = frame.map_err(|e| Unread::Incomplete(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if raw.len() + data.len() > limit {
            return Err(too_large("the request body", limit));
        }
        if declared.is_none() && !charge.grow(data.len() as u64) {
            return Err(Unread::OverBudget);
        }
        raw.extend_from_slice(&data);
    }
    let raw = raw.freeze();
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok((raw, None)),
        "gzip" => {
            let (out, one_member) =
                crate::gzip::gunzip_member(&raw, limit, charge).map_err(|e| match e {
                    Inflate::TooLarge => too_large("the decompressed body", limit),
                    Inflate::OverBudget => Unread::OverBudget,
                    Inflate::Invalid(why) => {
                        Unread::Status(StatusCode::BAD_REQUEST, format!("invalid gzip body: {why}"))
                    }
                })?;
            // The compressed bytes are freed unless kept; what stays charged is what is held.
            charge.shrink_to(out.len() as u64);
            // Copied to its size: the buffer it was read into may have twice the room.
            let gzipped = (keep && one_member && charge.grow(raw.len() as u64))
                .then(|| Bytes::copy_from_slice(&raw));
            Ok((out.into(), gzipped))
        }
        other => Err(Unread::Status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content encoding `{other}` is not supported: send gzip or none"),
        )),
    }
}

/// Reads and drops the rest of a refused body (at most `limit` bytes), so an HTTP/1.1 client
/// still sending it reads the answer instead of a reset connection. Holds no memory.
async fn discard(body: &mut Body, limit: usize) {
    let mut seen = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit {
                return;
            }
        }
    }
}

/// Refuses a request over the in-flight budget (bytes, or requests at once) with 429 and
/// Retry-After, after reading and dropping the rest of its body (within `read_timeout`).
async fn refuse_over_budget(
    shared: &Shared,
    mut body: Body,
    app: &App,
    deadline: Option<tokio::time::Instant>,
    enc: Encoding,
) -> Response {
    shared.over_budget("http");
    let deadline = deadline.or_else(|| app.read_timeout.map(|t| tokio::time::Instant::now() + t));
    let rest = discard(&mut body, app.limit);
    match deadline {
        Some(d) => {
            let _ = tokio::time::timeout_at(d, rest).await;
        }
        None => rest.await,
    }
    retry_later(
        shared,
        "oxeye holds as many requests as admission allows (request_limit_mib, max_concurrent_requests): retry later"
            .into(),
        enc,
    )
}

/// 429 with Retry-After, in the request's encoding.
fn retry_later(shared: &Shared, message: String, enc: Encoding) -> Response {
    let mut r = status(
        StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::ResourceExhausted,
        message,
        enc,
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(shared.retry_after_secs()),
    );
    r
}

async fn export(signal: Signal, app: App, headers: HeaderMap, body: Body) -> Response {
    let shared = &app.shared;
    if !shared.takes(signal) {
        return status(
            StatusCode::NOT_FOUND,
            tonic::Code::Unimplemented,
            crate::not_wired(signal),
            Encoding::Json,
        );
    }
    let enc = match encoding_of(&headers) {
        Ok(enc) => enc,
        Err(why) => {
            shared.malformed("http");
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                tonic::Code::InvalidArgument,
                why,
                Encoding::Protobuf,
            );
        }
    };
    let Some(_slot) = shared.request_slot() else {
        return refuse_over_budget(shared, body, &app, None, enc).await;
    };
    let mut charge = shared.charge();
    let mut body = body;
    let deadline = app.read_timeout.map(|t| tokio::time::Instant::now() + t);
    let keep = shared.keeps_encoded(signal) && enc == Encoding::Protobuf;
    let read = read_body(&headers, &mut body, app.limit, &mut charge, keep);
    let read = match deadline {
        Some(d) => tokio::time::timeout_at(d, read).await,
        None => Ok(read.await),
    };
    let (bytes, gzipped) = match read {
        Ok(Ok(b)) => b,
        Ok(Err(Unread::Status(http, why))) => {
            shared.malformed("http");
            return status(http, tonic::Code::InvalidArgument, why, enc);
        }
        Ok(Err(Unread::Incomplete(why))) => {
            shared.bump(Counter::IncompleteRequests, "http", 1);
            return status(
                StatusCode::BAD_REQUEST,
                tonic::Code::Cancelled,
                format!("the request body ended early: {why}"),
                enc,
            );
        }
        Ok(Err(Unread::OverBudget)) => {
            drop(charge);
            return refuse_over_budget(shared, body, &app, deadline, enc).await;
        }
        Ok(Err(Unread::TooSlow)) | Err(_) => {
            // 503 with a delay, not 408: OTLP clients retry 503 (and drop what a 408 refuses).
            shared.bump(Counter::Timeouts, "http", 1);
            let mut r = status(
                StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                format!(
                    "the request body did not arrive within read_timeout, or came slower than {} KiB/s",
                    MIN_BODY_RATE >> 10
                ),
                enc,
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(shared.retry_after_secs()),
            );
            return r;
        }
    };
    let kind = match enc {
        Encoding::Protobuf => BodyKind::Protobuf,
        Encoding::Json => BodyKind::Json,
    };
    let mut request = admission::decode(
        signal,
        &bytes,
        kind,
        shared.keeps_encoded(signal),
        &mut charge,
    );
    if let (Ok(converted), Some(gz)) = (&mut request, gzipped) {
        crate::body::keep_gzipped(converted, &bytes, gz);
    }
    drop(bytes);
    let request = match request {
        Ok(r) => r,
        Err(Refused::OverBudget) => {
            drop(charge);
            return refuse_over_budget(shared, body, &app, deadline, enc).await;
        }
        Err(Refused::TooLarge(n)) => {
            shared.malformed("http");
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                tonic::Code::InvalidArgument,
                format!(
                    "decoded, this request takes {} MiB, more than admission.request_limit_mib allows at once: send smaller requests",
                    n.div_ceil(1 << 20)
                ),
                enc,
            );
        }
        Err(Refused::Malformed(why)) => {
            shared.malformed("http");
            return status(
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument,
                why,
                enc,
            );
        }
    };
    match shared.accept("http", signal, request, charge).await {
        Ok(response) => {
            let body = match enc {
                // The three signals' responses are one message on the wire (see `grpc`).
                Encoding::Protobuf => response.encode_to_vec(),
                Encoding::Json => json_response(signal, response),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, enc.content_type())],
                body,
            )
                .into_response()
        }
        Err(crate::Busy) => retry_later(shared, "the pipeline is full: retry later".into(), enc),
    }
}

/// A response in OTLP/JSON, whose names differ by signal (`rejectedSpans`,
/// `rejectedDataPoints`, `rejectedLogRecords`).
fn json_response(
    signal: Signal,
    r: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::{logs, metrics};
    match signal {
        Signal::Metrics => serde_json::to_vec(&metrics::v1::ExportMetricsServiceResponse {
            partial_success: r
                .partial_success
                .map(|p| metrics::v1::ExportMetricsPartialSuccess {
                    rejected_data_points: p.rejected_spans,
                    error_message: p.error_message,
                }),
        }),
        Signal::Logs => serde_json::to_vec(&logs::v1::ExportLogsServiceResponse {
            partial_success: r
                .partial_success
                .map(|p| logs::v1::ExportLogsPartialSuccess {
                    rejected_log_records: p.rejected_spans,
                    error_message: p.error_message,
                }),
        }),
        _ => serde_json::to_vec(&r),
    }
    .unwrap_or_default()
}

/// Serves until shutdown, then lets open requests finish (`backpressure.wait` + 1 s at most).
pub(crate) async fn serve(
    cfg: &HttpConfig,
    listeners: Vec<tokio::net::TcpListener>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let tls = match &cfg.tls {
        Some(t) => Some(crate::tls::server_config(t, &[b"h2", b"http/1.1"])?),
        None => None,
    };
    let app = App {
        shared: Arc::clone(&shared),
        limit: cfg.max_request_body_size as usize,
        read_timeout: (!cfg.read_timeout.is_zero()).then_some(cfg.read_timeout),
    };
    let route = |signal: Signal| {
        post(
            move |State(app): State<App>, headers: HeaderMap, body: Body| {
                export(signal, app, headers, body)
            },
        )
    };
    let router = Router::new()
        .route(&cfg.traces_url_path, route(Signal::Traces))
        .route(&cfg.metrics_url_path, route(Signal::Metrics))
        .route(&cfg.logs_url_path, route(Signal::Logs))
        .with_state(app);
    crate::serve::announce(
        "OTLP/HTTP",
        &listeners,
        tls.is_some(),
        &format!(
            " ({}, {}, {})",
            cfg.traces_url_path, cfg.metrics_url_path, cfg.logs_url_path
        ),
    );
    crate::serve::serve(
        "OTLP/HTTP",
        listeners,
        tls,
        router,
        cfg.limits(),
        shared,
        shutdown,
    )
    .await;
    Ok(())
}
