//! What the OTLP end-to-end tests share: a loopback OTLP/gRPC sink, a raw HTTP/1.1 client,
//! gzip. Included by each test file that needs it (`mod common;`).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// A loopback OTLP/gRPC endpoint that keeps every request (optionally slow, every signal;
/// `count_only` applies to traces).
#[derive(Default)]
pub struct Sink {
    pub got: Mutex<Vec<ExportTraceServiceRequest>>,
    pub metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    pub logs: Mutex<Vec<ExportLogsServiceRequest>>,
    pub delay: Duration,
    /// Count the spans of each request and drop it (for loads too large to keep).
    pub count_only: bool,
    pub counted: AtomicUsize,
    /// With `count_only`: also how many times each span id (its first 8 bytes) came.
    pub span_ids: Option<Mutex<std::collections::HashMap<u64, u32>>>,
}

fn spans_of(r: &ExportTraceServiceRequest) -> usize {
    r.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

impl Sink {
    pub fn spans(&self) -> usize {
        let got = self.got.lock().expect("lock");
        got.iter().map(spans_of).sum::<usize>() + self.counted.load(Ordering::Relaxed)
    }

    pub fn wait_for(&self, n: usize, within: Duration) {
        self.wait_until(within, || self.spans() >= n);
    }

    /// Data points received.
    pub fn points(&self) -> usize {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let got = self.metrics.lock().expect("lock");
        got.iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| match &m.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            })
            .sum()
    }

    /// Log records received.
    pub fn log_records(&self) -> usize {
        let got = self.logs.lock().expect("lock");
        got.iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len())
            .sum()
    }

    /// Waits until `done` or `within` passed.
    pub fn wait_until(&self, within: Duration, done: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if !self.0.delay.is_zero() {
            tokio::time::sleep(self.0.delay).await;
        }
        self.0
            .metrics
            .lock()
            .expect("lock")
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        if !self.0.delay.is_zero() {
            tokio::time::sleep(self.0.delay).await;
        }
        self.0.logs.lock().expect("lock").push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

struct Grpc(Arc<Sink>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if !self.0.delay.is_zero() {
            tokio::time::sleep(self.0.delay).await;
        }
        let request = request.into_inner();
        if self.0.count_only {
            if let Some(ids) = &self.0.span_ids {
                let mut ids = ids.lock().expect("lock");
                for span in request
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .flat_map(|s| &s.spans)
                {
                    let id = span
                        .span_id
                        .get(..8)
                        .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                    *ids.entry(id).or_default() += 1;
                }
            }
            self.0
                .counted
                .fetch_add(spans_of(&request), Ordering::Relaxed);
        } else {
            self.0.got.lock().expect("lock").push(request);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts the sink on `rt`; returns its port.
pub fn sink_endpoint(rt: &tokio::runtime::Runtime, sink: Arc<Sink>) -> u16 {
    sink_endpoint_at(rt, sink, 0)
}

/// Starts the sink on `rt` at `port` (0: any); returns its port.
pub fn sink_endpoint_at(rt: &tokio::runtime::Runtime, sink: Arc<Sink>, port: u16) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(Grpc(Arc::clone(&sink)))
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                    .max_decoding_message_size(64 << 20),
            )
            .add_service(
                MetricsServiceServer::new(Grpc(Arc::clone(&sink)))
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .add_service(
                LogsServiceServer::new(Grpc(sink))
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}

/// `POST path` with a body on 127.0.0.1:port over HTTP/1.1: (status, headers, body).
pub fn http_post(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    // The server may answer (413) before taking the whole body: a write error is fine then.
    let _ = s.write_all(body);
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, head, response[split + 4..].to_vec())
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}
