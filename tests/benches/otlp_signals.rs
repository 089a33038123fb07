//! OTLP metrics and logs through the `otlp` receiver and exporter, per data point and per log
//! record, beside the spans rows of `otlp_decode`: synthetic metrics (one point each, 256
//! series) and logs, written by the exporter's encoder in requests of 512, then
//! (a) checked and kept as received (`wire::encoded_metrics` / `encoded_logs`, a forwarding
//! gateway), (b) decoded by prost and converted (`convert::metrics` / `convert::logs`, any
//! pipeline with a processor), (c) encoded again by the exporter (`encode::metrics` /
//! `encode::logs`, then prost). One thread, the oxeye binary's allocator; interleaved rounds,
//! medians. A benchmark, not a test: it never fails on speed.
//!
//!     cargo bench -p oxeye-tests --bench otlp_signals    # OXEYE_BENCH_RECORDS=500000 to change N

use std::sync::Arc;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use oxeye_api::{Batch, Records};
use oxeye_exporter_otlp::bench::{logs, metrics, Resources};
use oxeye_receiver_otlp::{convert, wire};
use oxeye_tests::bench::{median, records_and_rounds};
use oxeye_tests::{captured, run};
use prost::Message;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Batches of `signal` the synthetic receiver makes, 512 records each.
fn synthetic(signal: &str, source: &str) -> Vec<Arc<Batch>> {
    let id = format!("capture/signals-{signal}");
    let report = run(&format!(
        "receivers:\n  synthetic: {{seed: 21, batch_size: 512, {source}}}\nexporters:\n  {id}:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    {signal}: {{receivers: [synthetic], exporters: [{id}]}}\n"
    ));
    assert!(report.failures.is_empty());
    captured(&id)
}

/// Medians (check, decode, encode) in ns per record.
fn measure(
    rounds: usize,
    n: u64,
    requests: &[bytes::Bytes],
    batches: &[Arc<Batch>],
    check: fn(&bytes::Bytes) -> Option<convert::Converted>,
    decode: fn(&[u8]) -> convert::Converted,
    encode: fn(&mut Resources, &Batch) -> usize,
) -> [f64; 3] {
    let (mut checked, mut decoded, mut encoded) = (Vec::new(), Vec::new(), Vec::new());
    let mut resources = Resources::new(&Default::default());
    for _ in 0..rounds {
        let t = Instant::now();
        let total: u64 = requests
            .iter()
            .map(|r| check(r).expect("clean").accepted)
            .sum();
        assert_eq!(total, n);
        checked.push(t.elapsed().as_nanos() as f64 / n as f64);
        let t = Instant::now();
        let total: u64 = requests.iter().map(|r| decode(r).accepted).sum();
        assert_eq!(total, n);
        decoded.push(t.elapsed().as_nanos() as f64 / n as f64);
        let t = Instant::now();
        let bytes: usize = batches.iter().map(|b| encode(&mut resources, b)).sum();
        assert!(bytes > 0);
        encoded.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    [median(checked), median(decoded), median(encoded)]
}

fn main() {
    let (n, rounds) = records_and_rounds(500_000);
    let metric_batches = synthetic("metrics", &format!("metrics: {{count: {n}, series: 256}}"));
    let log_batches = synthetic("logs", &format!("logs: {{count: {n}}}"));
    let mut resources = Resources::new(&Default::default());
    let metric_requests: Vec<bytes::Bytes> = metric_batches
        .iter()
        .map(|b| match &b.records {
            Records::Metrics(m) => metrics::request(&mut resources, [(&b.resource, &m[..])])
                .encode_to_vec()
                .into(),
            _ => unreachable!("metrics"),
        })
        .collect();
    let log_requests: Vec<bytes::Bytes> = log_batches
        .iter()
        .map(|b| match &b.records {
            Records::Logs(l) => logs::request(&mut resources, [(&b.resource, &l[..])])
                .encode_to_vec()
                .into(),
            _ => unreachable!("logs"),
        })
        .collect();
    let size = |r: &[bytes::Bytes]| r.iter().map(|r| r.len()).sum::<usize>() as f64 / n as f64;
    println!(
        "otlp metrics and logs, {n} synthetic data points ({:.0} bytes each) and {n} log records ({:.0} bytes each) in requests of 512, one thread, median of {rounds}:",
        size(&metric_requests),
        size(&log_requests),
    );
    let m = measure(
        rounds,
        n,
        &metric_requests,
        &metric_batches,
        wire::encoded_metrics,
        |r| convert::metrics::request(ExportMetricsServiceRequest::decode(r).expect("prost")),
        |res, b| match &b.records {
            Records::Metrics(m) => metrics::request(res, [(&b.resource, &m[..])])
                .encode_to_vec()
                .len(),
            _ => 0,
        },
    );
    let l = measure(
        rounds,
        n,
        &log_requests,
        &log_batches,
        wire::encoded_logs,
        |r| convert::logs::request(ExportLogsServiceRequest::decode(r).expect("prost")),
        |res, b| match &b.records {
            Records::Logs(l) => logs::request(res, [(&b.resource, &l[..])])
                .encode_to_vec()
                .len(),
            _ => 0,
        },
    );
    for (unit, [check, decode, encode]) in [("data point", m), ("log record", l)] {
        for (label, ns) in [
            ("checked, kept as received", check),
            ("prost decode + convert", decode),
            ("encode (oxeye → OTLP, prost)", encode),
        ] {
            println!(
                "  {unit:<10} {label:<30} {ns:>7.1} ns  {:>6.2} M/s",
                1e3 / ns
            );
        }
    }
}
