//! OTLP/gRPC: the TraceService, MetricsService and LogsService `Export` methods as one service
//! (gzip, message size limit, every byte charged to the in-flight budget; traces read with
//! [`crate::wire`], metrics and logs with prost), served by [`crate::serve`] (limits, timeouts,
//! TLS/mTLS). A signal the receiver is in no pipeline of answers UNIMPLEMENTED with a reason.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use oxeye_api::{BoxError, Shutdown, Signal};
use prost::bytes::Buf;
use prost::Message;
use std::sync::Mutex;
use tonic::codec::{CompressionEncoding, DecodeBuf, EnabledCompressionEncodings, EncodeBuf};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::admission::{self, Charge, Refused};
use crate::convert::Converted;
use crate::gzip::Inflate;
use crate::{GrpcConfig, Shared};

/// The three services by hand rather than the generated `TraceServiceServer` and its like:
/// their prost codec would decode spans into generated structs first, where this one reads
/// them with [`crate::wire`] (a third of the gateway's CPU went to prost decoding and the copy
/// after it); and it charges every byte to the receiver's in-flight budget as it arrives,
/// whatever the signal.
#[derive(Clone)]
struct Otlp {
    shared: Arc<Shared>,
    limit: usize,
}

/// The `Export` method of each signal's service.
const EXPORTS: [(&str, Signal); 3] = [
    (
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Traces,
    ),
    (
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Metrics,
    ),
    (
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        Signal::Logs,
    ),
];

impl tonic::server::NamedService for Otlp {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

/// A request's charge, shared by its body (which grows it as data frames arrive) and the codec
/// (which takes it with the message).
type Slot = Arc<Mutex<Option<Charge>>>;

/// A message inflated before tonic saw the request, taken by the codec (tonic is handed an
/// empty message: copying the inflated one into its buffer was 2 % of a gzip gateway's CPU),
/// and the message as it came gzip'd when it may be forwarded so.
type Inflated = Arc<Mutex<Option<(bytes::Bytes, Option<bytes::Bytes>)>>>;

/// RESOURCE_EXHAUSTED with RetryInfo: the client retries after `retry_after`.
fn over_budget(shared: &Shared) -> Status {
    shared.over_budget("grpc");
    Status::with_error_details(
        Code::ResourceExhausted,
        "oxeye holds as many requests as admission.request_limit_mib allows: retry later",
        ErrorDetails::with_retry_info(Some(shared.backpressure.retry_after)),
    )
}

/// How long a gRPC request may take to arrive whole (the Collector has no such limit; a stream
/// stalled mid-message would otherwise hold its charge and its task for ever).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A request body whose data frames are charged to the budget as they arrive; one that does not
/// fit ends the request with [`over_budget`] before tonic buffers it, and one that does not
/// arrive within [`READ_TIMEOUT`] with DEADLINE_EXCEEDED (retryable).
struct Charged<B> {
    inner: B,
    slot: Slot,
    shared: Arc<Shared>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> http_body::Body for Charged<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(f))) => f,
            std::task::Poll::Ready(Some(Err(e))) => {
                return std::task::Poll::Ready(Some(Err(e.into())))
            }
            std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
            std::task::Poll::Pending => {
                if std::future::Future::poll(self.deadline.as_mut(), cx).is_ready() {
                    self.shared.bump(crate::Counter::Timeouts, "grpc", 1);
                    let late = Status::deadline_exceeded(format!(
                        "the request did not arrive within {} s",
                        READ_TIMEOUT.as_secs()
                    ));
                    return std::task::Poll::Ready(Some(Err(Box::new(late))));
                }
                return std::task::Poll::Pending;
            }
        };
        if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            let refused = match slot.as_mut() {
                Some(charge) => {
                    (!charge.grow(data.len() as u64)).then(|| over_budget(&self.shared))
                }
                // The codec took the charge with the message: a unary call has no second one.
                None => Some(Status::invalid_argument(
                    "more than one message in a unary call",
                )),
            };
            if let Some(status) = refused {
                return std::task::Poll::Ready(Some(Err(Box::new(status))));
            }
        }
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Otlp {
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

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let path = req.uri().path();
            let Some(&(_, signal)) = EXPORTS.iter().find(|(p, _)| *p == path) else {
                return Ok(Status::unimplemented(format!("no method {path}")).into_http());
            };
            if !this.shared.takes(signal) {
                return Ok(Status::unimplemented(crate::not_wired(signal)).into_http());
            }
            let Some(_request_slot) = this.shared.request_slot() else {
                return Ok(over_budget(&this.shared).into_http());
            };
            let encoding = req.headers().get("grpc-encoding").map(|v| v.as_bytes());
            let gzip = encoding == Some(b"gzip");
            // Another encoding is tonic's to refuse.
            let compressed = !gzip && encoding.is_some_and(|v| v != b"identity");
            let slot: Slot = Arc::new(Mutex::new(Some(this.shared.charge())));
            let held: Inflated = Arc::default();
            let (mut parts, inner) = req.into_parts();
            let charged = Charged {
                inner,
                slot: Arc::clone(&slot),
                shared: Arc::clone(&this.shared),
                deadline: Box::pin(tokio::time::sleep(READ_TIMEOUT)),
            };
            let body = if gzip {
                let keep = this.shared.keeps_encoded(signal);
                match inflate(charged, this.limit, &slot, &held, &this.shared, keep).await {
                    Ok(message) => {
                        parts.headers.remove("grpc-encoding");
                        message
                    }
                    Err(status) => return Ok(status.into_http()),
                }
            } else {
                tonic::body::Body::new(charged)
            };
            let req = http::Request::from_parts(parts, body);
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let codec = Codec {
                shared: Arc::clone(&this.shared),
                slot,
                inflated: held,
                compressed,
                signal,
            };
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(this.limit), None);
            let shared = Arc::clone(&this.shared);
            let mut response = grpc.unary(Export(this.shared, signal), req).await;
            oversized(&shared, &mut response);
            Ok(response)
        })
    }
}

/// A gzip'd request read whole and inflated by [`crate::gzip`] (libdeflate, about twice as fast
/// as tonic's streaming inflater) into `held`; tonic gets an empty message in its place. Charged like
/// tonic's path: the compressed bytes as they arrive, then the inflated ones instead; over the
/// size limit either way is RESOURCE_EXHAUSTED without RetryInfo, as [`oversized`] answers.
async fn inflate<B>(
    body: Charged<B>,
    limit: usize,
    slot: &Slot,
    held: &Inflated,
    shared: &Shared,
    keep: bool,
) -> Result<tonic::body::Body, Status>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let refuse = |status: Status| {
        shared.malformed("grpc");
        status
    };
    let too_large = |what: &str| {
        refuse(Status::resource_exhausted(format!(
            "{what} is larger than the size limit ({limit} bytes): send smaller requests"
        )))
    };
    // Read frame by frame: a message whose header says it is over the limit is refused before
    // the rest of it is read (and charged), as tonic does.
    let mut body = std::pin::pin!(body);
    let mut buf = bytes::BytesMut::new();
    let mut declared = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Status::from_error)?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        if declared.is_none() && buf.len() >= 5 {
            let n = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if n > limit {
                return Err(too_large("the message"));
            }
            buf.reserve((5 + n).saturating_sub(buf.len()));
            declared = Some(n);
        }
        // More than the one message a unary call holds: refused at once, not read on.
        if declared.is_some_and(|n| buf.len() > 5 + n) {
            return Err(refuse(Status::invalid_argument(
                "a unary call holds exactly one whole message",
            )));
        }
    }
    let raw = buf.freeze();
    let Some((&flag, rest)) = raw.split_first().filter(|_| raw.len() >= 5) else {
        return Err(refuse(Status::invalid_argument(
            "the request holds no message",
        )));
    };
    let declared = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if declared > limit {
        return Err(too_large("the message"));
    }
    if declared != rest.len() - 4 {
        return Err(refuse(Status::invalid_argument(
            "a unary call holds exactly one whole message",
        )));
    }
    let empty = || {
        tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from_static(
            &[0; 5],
        )))
    };
    if flag == 0 {
        *held.lock().unwrap_or_else(|p| p.into_inner()) = Some((raw.slice(5..), None));
        return Ok(empty());
    }
    let mut charge = slot
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_else(|| shared.charge());
    let inflated = crate::gzip::gunzip_member(&raw[5..], limit, &mut charge);
    let (message, one_member) = match inflated {
        Ok(inflated) => inflated,
        Err(Inflate::TooLarge) => return Err(too_large("decompressed, the message")),
        Err(Inflate::OverBudget) => return Err(over_budget(shared)),
        Err(Inflate::Invalid(why)) => {
            return Err(refuse(Status::invalid_argument(format!(
                "invalid gzip message: {why}"
            ))))
        }
    };
    // The compressed bytes are freed, unless kept to be forwarded as they came (a fifth of
    // the inflated ones, typically); what stays charged is what is held.
    charge.shrink_to(message.len() as u64);
    let gzipped = (keep && one_member && charge.grow(raw.len() as u64 - 5)).then(|| raw.slice(5..));
    drop(raw);
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(charge);
    *held.lock().unwrap_or_else(|p| p.into_inner()) = Some((message.into(), gzipped));
    Ok(empty())
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

struct Export(Arc<Shared>, Signal);

/// A request as the codec read it, with its charge.
struct Decoded {
    converted: Converted,
    charge: Charge,
}

impl tonic::server::UnaryService<Decoded> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Self::Response>, Status>> + Send>,
    >;

    fn call(&mut self, request: Request<Decoded>) -> Self::Future {
        let (shared, signal) = (Arc::clone(&self.0), self.1);
        Box::pin(async move {
            let Decoded { converted, charge } = request.into_inner();
            match shared.accept("grpc", signal, converted, charge).await {
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

/// Requests are read by [`crate::admission::decode`] (a bad one is counted and answered
/// INVALID_ARGUMENT); responses are small and written by prost. The three signals' responses
/// are one message on the wire (`partial_success` = 1 holding `rejected_<records>` = 1 and
/// `error_message` = 2), so the trace response's type writes all three.
struct Codec {
    shared: Arc<Shared>,
    slot: Slot,
    inflated: Inflated,
    /// The message came compressed: tonic holds it twice, compressed and not.
    compressed: bool,
    signal: Signal,
}

impl tonic::codec::Codec for Codec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Decoded;
    type Encoder = Codec;
    type Decoder = Codec;

    fn encoder(&mut self) -> Codec {
        self.clone()
    }

    fn decoder(&mut self) -> Codec {
        self.clone()
    }
}

impl Clone for Codec {
    fn clone(&self) -> Codec {
        Codec {
            shared: Arc::clone(&self.shared),
            slot: Arc::clone(&self.slot),
            inflated: Arc::clone(&self.inflated),
            compressed: self.compressed,
            signal: self.signal,
        }
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
    type Item = Decoded;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Decoded>, Status> {
        let len = src.remaining();
        let mut charge = self
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| self.shared.charge());
        // tonic holds a compressed message twice: compressed (charged as it arrived) and not.
        if self.compressed && !charge.grow(len as u64) {
            return Err(over_budget(&self.shared));
        }
        // tonic hands over one message in one `BytesMut`: taking it as `Bytes` copies nothing,
        // and encoded batches keep slices of it.
        let inflated = self
            .inflated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (bytes, gzipped) = inflated.unwrap_or_else(|| (src.copy_to_bytes(len), None));
        let keep = self.shared.keeps_encoded(self.signal);
        match admission::decode(
            self.signal,
            &bytes,
            admission::Body::Protobuf,
            keep,
            &mut charge,
        ) {
            Ok(mut converted) => {
                if let Some(gz) = gzipped {
                    crate::body::keep_gzipped(&mut converted, &bytes, gz);
                }
                Ok(Some(Decoded { converted, charge }))
            }
            Err(Refused::OverBudget) => Err(over_budget(&self.shared)),
            Err(Refused::TooLarge(n)) => {
                // Never retried (no RetryInfo): it can never fit.
                self.shared.malformed("grpc");
                Err(Status::resource_exhausted(format!(
                    "decoded, this request takes {} MiB, more than admission.request_limit_mib allows at once: send smaller requests",
                    n.div_ceil(1 << 20)
                )))
            }
            Err(Refused::Malformed(why)) => {
                self.shared.malformed("grpc");
                Err(Status::invalid_argument(why))
            }
        }
    }
}

/// [`Otlp`] under another service's name (tonic routes by it).
#[derive(Clone)]
struct Named<N>(Otlp, std::marker::PhantomData<N>);

#[derive(Clone)]
struct Metrics;
#[derive(Clone)]
struct Logs;

impl tonic::server::NamedService for Named<Metrics> {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}
impl tonic::server::NamedService for Named<Logs> {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

impl<N> tower::Service<http::Request<tonic::body::Body>> for Named<N> {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = <Otlp as tower::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.call(req)
    }
}

/// Serves until shutdown, then lets open requests finish (`backpressure.wait` + 1 s at most).
pub(crate) async fn serve(
    cfg: &GrpcConfig,
    listeners: Vec<tokio::net::TcpListener>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let otlp = Otlp {
        shared: Arc::clone(&shared),
        limit: cfg.limit(),
    };
    let tls = match &cfg.tls {
        Some(t) => Some(crate::tls::server_config(t, &[b"h2"])?),
        None => None,
    };
    // One route per service name, all served by `otlp`.
    let routes = tonic::service::Routes::new(otlp.clone())
        .add_service(Named::<Metrics>(otlp.clone(), std::marker::PhantomData))
        .add_service(Named::<Logs>(otlp, std::marker::PhantomData))
        .prepare();
    crate::serve::announce("OTLP/gRPC", &listeners, tls.is_some(), "");
    crate::serve::serve(
        "OTLP/gRPC",
        listeners,
        tls,
        routes,
        cfg.limits(),
        shared,
        shutdown,
    )
    .await;
    Ok(())
}
