//! Gateways side by side: the same N records — spans, metric data points or log records —
//! sent over OTLP/gRPC by one load generator (oxeye synthetic → otlp exporter, pinned to CPU 0
//! with taskset), through (a) an oxeye gateway (otlp receiver → otlp exporter; requests
//! forwarded as received, see `oxeye_api::EncodedSpans` and `EncodedRecords`), (a') the same
//! oxeye gateway with a `nop` processor between (every record decoded into oxeye records and
//! encoded again, as with any processor) and (b) Rotel (`rotel-agent`, OTLP receiver →
//! OTLP exporter), each pinned to CPU 1, to a blackhole of this benchmark. Per gateway: CPU
//! seconds per million records (utime + stime from /proc/<pid>/stat), records/s, peak RSS
//! (VmHWM); runs interleaved, medians.
//!
//!     cargo build --release -p oxeye && cargo bench -p oxeye-tests --bench gateway
//!     OXEYE_BENCH_ONLY=gzip cargo bench ...   # only the rows whose name has this text
//!     OXEYE_BENCH_SIGNALS=metrics,logs ...    # these signals only (default: all three)

use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
use oxeye_tests::bench::{cpu_seconds, median, pinned, quick};
use oxeye_tests::free_port;

/// Counts the records it receives (spans, data points, log records) and throws them away.
#[derive(Clone)]
struct Blackhole(Arc<AtomicU64>);

#[tonic::async_trait]
impl MetricsService for Blackhole {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let n: usize = request
            .into_inner()
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            })
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Blackhole {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let n: usize = request
            .into_inner()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Blackhole {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Peak RSS (VmHWM) of a live process, MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("VmHWM")
        / 1024.0
}

/// The gateway under test, listening on `port`, sending to the sink on `sink`.
fn start_gateway(
    signal: &str,
    kind: &str,
    oxeye: &Path,
    port: u16,
    sink: u16,
    gzip: bool,
    dir: &Path,
) -> Child {
    let compression = if gzip { "gzip" } else { "none" };
    if kind.starts_with("oxeye") {
        let processors = if kind == "oxeye" { "[]" } else { "[nop]" };
        let yaml = format!(
            "receivers:\n  otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{port}', max_recv_msg_size_mib: 16}}}}}}\nprocessors:\n  nop: {{}}\nexporters:\n  otlp: {{endpoint: 'http://127.0.0.1:{sink}', compression: {compression}}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    {signal}: {{receivers: [otlp], processors: {processors}, exporters: [otlp], queue: {{capacity: 8}}}}\n"
        );
        let cfg = dir.join("gateway.yaml");
        std::fs::write(&cfg, yaml).expect("config");
        // Its stderr is not kept (it would cost the gateway CPU): a refused config says why here.
        let checked = Command::new(oxeye)
            .args(["validate", "-c"])
            .arg(&cfg)
            .output()
            .expect("oxeye validate");
        assert!(
            checked.status.success(),
            "the gateway config: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
        pinned("1", oxeye)
            .args(["run", "-c"])
            .arg(cfg)
            .spawn()
            .expect("oxeye gateway")
    } else {
        let http = free_port();
        pinned("1", &oxeye_tests::rotel_agent())
            .args([
                "start",
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--exporter", "otlp"])
            .args([
                "--otlp-exporter-endpoint",
                &format!("http://127.0.0.1:{sink}"),
            ])
            .args(["--otlp-exporter-compression", compression])
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .spawn()
            .expect("rotel-agent")
    }
}

struct Row {
    cpu_s: f64,
    per_s: f64,
    rss: f64,
}

/// One run: gateway up, N records of `signal` from the load generator, until the sink has them
/// all.
fn run(
    signal: &str,
    kind: &str,
    oxeye: &Path,
    n: u64,
    gzip: bool,
    sink: u16,
    received: &AtomicU64,
) -> Row {
    let dir = std::env::temp_dir().join(format!("oxeye-bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let mut gw = start_gateway(signal, kind, oxeye, port, sink, gzip, &dir);
    oxeye_tests::wait_port(port);
    let compression = if gzip { "gzip" } else { "none" };
    let source = match signal {
        "metrics" => format!("metrics: {{count: {n}, series: 256}}"),
        "logs" => format!("logs: {{count: {n}}}"),
        _ => format!("spans: {{count: {n}, attributes: true}}"),
    };
    let load = format!(
        "receivers:\n  synthetic: {{seed: 21, batch_size: 512, {source}}}\nexporters:\n  otlp: {{endpoint: 'http://127.0.0.1:{port}', compression: {compression}, retry_on_failure: {{initial_interval: 20ms, max_interval: 200ms}}}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    {signal}: {{receivers: [synthetic], exporters: [otlp]}}\n"
    );
    let cfg = dir.join("load.yaml");
    std::fs::write(&cfg, load).expect("config");
    let before = received.load(Ordering::Relaxed);
    let cpu0 = cpu_seconds(gw.id());
    let started = Instant::now();
    let mut loadgen = pinned("0", oxeye)
        .args(["run", "-c"])
        .arg(&cfg)
        .spawn()
        .expect("load");
    let deadline = started + Duration::from_secs(600);
    while received.load(Ordering::Relaxed) - before < n {
        assert!(
            Instant::now() < deadline,
            "{signal} {kind}: records did not all arrive"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = started.elapsed().as_secs_f64();
    let row = Row {
        cpu_s: cpu_seconds(gw.id()) - cpu0,
        per_s: n as f64 / wall,
        rss: peak_rss_mib(gw.id()),
    };
    let _ = loadgen.wait();
    let _ = gw.kill();
    let _ = gw.wait();
    assert_eq!(
        received.load(Ordering::Relaxed) - before,
        n,
        "{signal} {kind}: records arrived once"
    );
    let _ = std::fs::remove_dir_all(&dir);
    row
}

fn main() {
    let quick = quick();
    let oxeye = oxeye_tests::bench::release_oxeye(quick);
    let n: u64 = if quick { 20_000 } else { 500_000 };
    let runs = if quick { 1 } else { 5 };
    let only = std::env::var("OXEYE_BENCH_ONLY").unwrap_or_default();
    let signals =
        std::env::var("OXEYE_BENCH_SIGNALS").unwrap_or_else(|_| "traces,metrics,logs".to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let received = Arc::new(AtomicU64::new(0));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let sink = listener.local_addr().expect("addr").port();
    let hole = Blackhole(Arc::clone(&received));
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(hole.clone())
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                    .max_decoding_message_size(64 << 20),
            )
            .add_service(
                MetricsServiceServer::new(hole.clone())
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                    .max_decoding_message_size(64 << 20),
            )
            .add_service(
                LogsServiceServer::new(hole)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                    .max_decoding_message_size(64 << 20),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    for signal in signals.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let unit = match signal {
            "metrics" => "data points",
            "logs" => "log records",
            _ => "spans",
        };
        println!(
            "gateways side by side: {n} synthetic {signal} ({unit}) over OTLP/gRPC (load generator on CPU 0, gateway on CPU 1) -> loopback blackhole; median of {runs}, interleaved"
        );
        let cases: Vec<(&str, bool)> = [
            ("oxeye", false),
            ("oxeye+nop", false),
            ("rotel", false),
            ("oxeye", true),
            ("oxeye+nop", true),
            ("rotel", true),
        ]
        .into_iter()
        .filter(|(k, gz)| {
            let name = format!("{signal} {k} {}", if *gz { "gzip" } else { "none" });
            only.is_empty() || name.contains(&only)
        })
        .collect();
        let mut rows: Vec<Vec<Row>> = cases.iter().map(|_| Vec::new()).collect();
        for _ in 0..runs {
            for (i, &(kind, gzip)) in cases.iter().enumerate() {
                rows[i].push(run(signal, kind, &oxeye, n, gzip, sink, &received));
            }
        }
        let mut per_cpu_s = std::collections::HashMap::new();
        for (&(kind, gzip), rows) in cases.iter().zip(&rows) {
            let cpu = median(rows.iter().map(|r| r.cpu_s).collect());
            let rate = median(rows.iter().map(|r| r.per_s).collect());
            let rss = median(rows.iter().map(|r| r.rss).collect());
            let compression = if gzip { "gzip" } else { "none" };
            per_cpu_s.insert((kind, gzip), n as f64 / cpu);
            println!(
                "  {kind:<9} compression {compression:<5} {:>7.2} CPU-s per million {unit}  {:>9.0} /s  {:>9.0} per CPU-s  peak RSS {rss:>6.1} MiB",
                cpu / n as f64 * 1e6,
                rate,
                n as f64 / cpu,
            );
        }
        for gzip in [false, true] {
            for kind in ["oxeye", "oxeye+nop"] {
                if let (Some(o), Some(r)) = (
                    per_cpu_s.get(&(kind, gzip)),
                    per_cpu_s.get(&("rotel", gzip)),
                ) {
                    println!(
                        "  {signal}: {kind} / rotel {unit} per CPU-second, compression {}: {:.2}x",
                        if gzip { "gzip" } else { "none" },
                        o / r
                    );
                }
            }
        }
    }
}
