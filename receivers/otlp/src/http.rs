//! OTLP/HTTP: `POST /v1/traces` with `application/x-protobuf` or `application/json`, gzip or
//! not, answered in the request's encoding as the OTLP specification says: 200 with a (partial)
//! success, 400/413/415 with a `google.rpc.Status` for a request that cannot be read, 429 with
//! Retry-After when the pipeline is full. Served by axum over hyper, HTTP/1.1 and h2, plain or
//! TLS (rustls).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use oxeye_api::{BoxError, Shutdown};
use prost::Message;
use tracing::{debug, info, warn};

use crate::{convert, unsupported, HttpConfig, Shared};

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
    limit: usize,
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

/// The body, decompressed, at most `limit` bytes (a gzip bomb stops at the limit).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, (StatusCode, String)> {
    let too_large = |what: &str| {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is larger than max_request_body_size ({limit} bytes)"),
        )
    };
    let raw = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large("the request body"))?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" => {
            let mut out = Vec::with_capacity((raw.len() * 4).min(limit));
            flate2::read::GzDecoder::new(&raw[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}")))?;
            if out.len() > limit {
                return Err(too_large("the decompressed body"));
            }
            Ok(out.into())
        }
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content encoding `{other}` is not supported: send gzip or none"),
        )),
    }
}

async fn traces(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let shared = &app.shared;
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
    let body = match read_body(&headers, body, app.limit).await {
        Ok(b) => b,
        Err((http, why)) => {
            shared.malformed("http");
            return status(http, tonic::Code::InvalidArgument, why, enc);
        }
    };
    let request = match enc {
        Encoding::Protobuf => crate::wire::read(&body, shared.keeps_encoded())
            .map_err(|e| format!("not an OTLP trace request: {e}")),
        Encoding::Json => convert::from_json(&body).map(convert::request),
    };
    let request = match request {
        Ok(r) => r,
        Err(why) => {
            shared.malformed("http");
            return status(
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument,
                why,
                enc,
            );
        }
    };
    match shared.accept("http", request).await {
        Ok(response) => {
            let body = match enc {
                Encoding::Protobuf => response.encode_to_vec(),
                Encoding::Json => serde_json::to_vec(&response).unwrap_or_default(),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, enc.content_type())],
                body,
            )
                .into_response()
        }
        Err(crate::Busy) => {
            let mut r = status(
                StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::ResourceExhausted,
                "the pipeline is full: retry later".into(),
                enc,
            );
            let secs = shared
                .backpressure
                .retry_after
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
    }
}

fn not_supported(signal: &'static str) -> Response {
    status(
        StatusCode::NOT_IMPLEMENTED,
        tonic::Code::Unimplemented,
        unsupported(signal),
        Encoding::Json,
    )
}

/// Serves until shutdown, then waits (at most 5 s) for open requests to finish.
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
        shared,
        limit: cfg.max_request_body_size as usize,
    };
    let router = Router::new()
        .route(&cfg.traces_url_path, post(traces))
        .route("/v1/metrics", post(|| async { not_supported("metrics") }))
        .route("/v1/logs", post(|| async { not_supported("logs") }))
        .with_state(app);
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    info!(
        "otlp receiver: OTLP/HTTP on {}{} ({})",
        addrs.join(", "),
        if tls.is_some() { " (TLS)" } else { "" },
        cfg.traces_url_path
    );
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    accept_loop(listeners, tls, router, &graceful, shutdown).await;
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("otlp receiver: OTLP/HTTP connections still open after 5 s: closed");
    }
    Ok(())
}

async fn accept_loop(
    listeners: Vec<tokio::net::TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    shutdown: Shutdown,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut incoming = crate::tls::incoming(listeners, tls, shutdown, "OTLP/HTTP");
    while let Some((io, peer)) = incoming.recv().await {
        let service = TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("otlp receiver: OTLP/HTTP connection from {peer}: {e}");
            }
        });
    }
}
