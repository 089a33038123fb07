//! The OTLP exporter as users run it: the release `oxeye` binary, synthetic spans → `otlp`
//! exporter (gRPC) → a blackhole TraceService of this benchmark on loopback. Prints oxeye's own
//! CPU per span (its rusage from wait4, generator included) and peak RSS, for `compression:
//! none` and `gzip`, next to a run with the `nop` exporter (what generating costs), runs
//! interleaved, medians.
//!
//!     cargo build --release -p oxeye && cargo bench -p oxeye-tests --bench otlp_exporter
//!     OXEYE_BENCH_BASELINE=/path/to/older/oxeye cargo bench ...   # its rows too, interleaved
//!     OXEYE_BENCH_BASELINE=/path/to/older/oxeye cargo bench ...   # its rows too, interleaved

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use oxeye_tests::bench::{median, quick};

/// Counts the spans it receives and throws them away.
struct Blackhole(Arc<AtomicU64>);

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

/// Runs the binary on `yaml` to the end: (CPU seconds, peak RSS MiB).
fn run(bin: &std::path::Path, yaml: &str) -> (f64, f64) {
    let cfg = oxeye_tests::temp_config("bench-otlp", yaml);
    let child = std::process::Command::new(bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start oxeye");
    oxeye_tests::wait_with_rusage(child, std::time::Duration::from_secs(600))
}

fn main() {
    let quick = quick();
    let bin = oxeye_tests::bench::release_oxeye(quick);
    let n: u64 = if quick { 20_000 } else { 500_000 };
    let runs = if quick { 1 } else { 5 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let received = Arc::new(AtomicU64::new(0));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let service = TraceServiceServer::new(Blackhole(Arc::clone(&received)))
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(64 << 20);
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let yaml = |exporter: &str| {
        format!(
            "receivers:\n  synthetic: {{seed: 7, spans: {{count: {n}}}}}\nexporters:\n  {exporter}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [{}]}}\n",
            exporter.split(':').next().expect("id")
        )
    };
    let otlp = |compression: &str| {
        yaml(&format!(
            "otlp: {{endpoint: 'http://127.0.0.1:{port}', compression: {compression}}}"
        ))
    };
    println!("otlp exporter as run: release oxeye, {n} synthetic spans -> gRPC -> loopback blackhole; median of {runs}");
    let baseline = std::env::var_os("OXEYE_BENCH_BASELINE").map(std::path::PathBuf::from);
    let mut cases: Vec<(String, std::path::PathBuf, String)> = vec![
        (
            "nop exporter (generating only)".into(),
            bin.clone(),
            yaml("nop:"),
        ),
        ("otlp, compression: none".into(), bin.clone(), otlp("none")),
        ("otlp, compression: gzip".into(), bin.clone(), otlp("gzip")),
    ];
    if let Some(b) = &baseline {
        cases.push((
            "baseline: otlp, compression: none".into(),
            b.clone(),
            otlp("none"),
        ));
        cases.push((
            "baseline: otlp, compression: gzip".into(),
            b.clone(),
            otlp("gzip"),
        ));
    }
    let mut rows: Vec<(String, Vec<f64>, Vec<f64>)> = cases
        .iter()
        .map(|c| (c.0.clone(), vec![], vec![]))
        .collect();
    for _ in 0..runs {
        for (i, (_, b, y)) in cases.iter().enumerate() {
            let before = received.load(Ordering::Relaxed);
            let (cpu, rss) = run(b, y);
            if i > 0 {
                assert_eq!(
                    received.load(Ordering::Relaxed) - before,
                    n,
                    "every span arrived"
                );
            }
            rows[i].1.push(cpu);
            rows[i].2.push(rss);
        }
    }
    let base = median(rows[0].1.clone());
    for (what, cpu, rss) in rows {
        let c = median(cpu);
        let us = c / n as f64 * 1e6;
        let over = (c - base) / n as f64 * 1e6;
        println!(
            "  {what:<32} {us:>6.2} µs/span CPU ({over:>5.2} over generating)  peak RSS {:>6.1} MiB",
            median(rss)
        );
    }
}
