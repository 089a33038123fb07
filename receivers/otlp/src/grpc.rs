//! OTLP/gRPC: a TraceService reading requests with [`crate::wire`] on a tonic server (gzip, message
//! size limit, TLS/mTLS); MetricsService and LogsService answer UNIMPLEMENTED with a reason.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use oxeye_api::{BoxError, Shutdown};
use prost::bytes::Buf;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::codec::{CompressionEncoding, DecodeBuf, EnabledCompressionEncodings, EncodeBuf};
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::info;

use crate::convert::Converted;
use crate::{unsupported, GrpcConfig, Shared};

/// The TraceService by hand rather than the generated `TraceServiceServer`: its prost codec
/// would decode into generated structs first; this one reads requests with [`crate::wire`]
/// (a third of the gateway's CPU went to prost decoding and the copy after it).
#[derive(Clone)]
struct Traces {
    shared: Arc<Shared>,
    limit: usize,
}

const TRACES_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl tonic::server::NamedService for Traces {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> tower::Service<http::Request<B>> for Traces
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != TRACES_EXPORT {
                return Ok(
                    Status::unimplemented(format!("no method {}", req.uri().path())).into_http(),
                );
            }
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(Codec(Arc::clone(&this.shared)))
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(this.limit), None);
            let shared = Arc::clone(&this.shared);
            let mut response = grpc.unary(Export(this.shared), req).await;
            oversized(&shared, &mut response);
            Ok(response)
        })
    }
}

/// tonic refuses a message over the size limit before the codec sees it: OUT_OF_RANGE when the
/// frame's length is over it, which OTLP clients retry (and the same message fails again), and
/// RESOURCE_EXHAUSTED without RetryInfo when decompressing passes it. Both are answered
/// RESOURCE_EXHAUSTED without RetryInfo — not retried, what the Collector (grpc-go) answers —
/// and counted like any request that cannot be read.
fn oversized<B>(shared: &Shared, response: &mut http::Response<B>) {
    let headers = response.headers_mut();
    let status = headers.get("grpc-status").map(|v| v.as_bytes());
    let message = headers
        .get("grpc-message")
        .map_or("", |v| v.to_str().unwrap_or(""));
    let refused = match status {
        Some(b"11") => message.contains("too%20large"),
        Some(b"8") => message.contains("size%20limit"),
        _ => false,
    };
    if refused {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        shared.malformed("grpc");
    }
}

struct Export(Arc<Shared>);

impl tonic::server::UnaryService<Converted> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Self::Response>, Status>> + Send>,
    >;

    fn call(&mut self, request: Request<Converted>) -> Self::Future {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            match shared.accept("grpc", request.into_inner()).await {
                Ok(response) => Ok(Response::new(response)),
                Err(crate::Busy) => Err(Status::with_error_details(
                    Code::ResourceExhausted,
                    "the pipeline is full: retry later",
                    ErrorDetails::with_retry_info(Some(shared.backpressure.retry_after)),
                )),
            }
        })
    }
}

/// Requests are read by [`crate::wire`] (a bad one is counted and answered INVALID_ARGUMENT);
/// responses are small and written by prost.
struct Codec(Arc<Shared>);

impl tonic::codec::Codec for Codec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Converted;
    type Encoder = Codec;
    type Decoder = Codec;

    fn encoder(&mut self) -> Codec {
        Codec(Arc::clone(&self.0))
    }

    fn decoder(&mut self) -> Codec {
        Codec(Arc::clone(&self.0))
    }
}

impl tonic::codec::Encoder for Codec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

impl tonic::codec::Decoder for Codec {
    type Item = Converted;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Converted>, Status> {
        // tonic hands over one message in one `BytesMut`: taking it as `Bytes` copies nothing,
        // and encoded batches keep slices of it.
        let len = src.remaining();
        let keep = self.0.keeps_encoded();
        let converted = crate::wire::read(&src.copy_to_bytes(len), keep);
        match converted {
            Ok(c) => Ok(Some(c)),
            Err(why) => {
                self.0.malformed("grpc");
                Err(Status::invalid_argument(format!(
                    "not an OTLP trace request: {why}"
                )))
            }
        }
    }
}

struct Unsupported;

#[tonic::async_trait]
impl MetricsService for Unsupported {
    async fn export(
        &self,
        _: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Err(Status::unimplemented(unsupported("metrics")))
    }
}

#[tonic::async_trait]
impl LogsService for Unsupported {
    async fn export(
        &self,
        _: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        Err(Status::unimplemented(unsupported("logs")))
    }
}

/// Serves until shutdown, then lets in-flight requests finish.
pub(crate) async fn serve(
    cfg: &GrpcConfig,
    listeners: Vec<tokio::net::TcpListener>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let limit = (cfg.max_recv_msg_size_mib << 20) as usize;
    let traces = Traces { shared, limit };
    let tls = match &cfg.tls {
        Some(t) => Some(crate::tls::server_config(t, &[b"h2"])?),
        None => None,
    };
    let router = Server::builder()
        .add_service(traces)
        .add_service(MetricsServiceServer::new(Unsupported))
        .add_service(LogsServiceServer::new(Unsupported));
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    info!(
        "otlp receiver: OTLP/gRPC on {}{}",
        addrs.join(", "),
        if cfg.tls.is_some() { " (TLS)" } else { "" }
    );
    let incoming = tokio_stream::wrappers::ReceiverStream::new(crate::tls::incoming(
        listeners,
        tls,
        shutdown.clone(),
        "OTLP/gRPC",
    ))
    .map(|(io, _)| Ok::<_, std::io::Error>(io));
    router
        .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await })
        .await
        .map_err(|e| format!("OTLP/gRPC server: {e}").into())
}
