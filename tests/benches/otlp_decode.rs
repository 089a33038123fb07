//! The `otlp` receiver's decoding on what a gateway receives: HTTP-shaped synthetic spans
//! (seed 21, attributes on) written by the `otlp` exporter in requests of 512 spans, read
//! (a) straight into oxeye spans (`wire::request`, what the receiver runs) and (b) by prost into
//! the generated types, then converted (`convert::request`, the JSON path and the old protobuf
//! path). One thread, the oxeye binary's allocator; interleaved rounds, medians.
//! A benchmark, not a test: it never fails on speed.
//!
//!     cargo bench -p oxeye-tests --bench otlp_decode     # OXEYE_BENCH_RECORDS=500000 to change N

use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_api::Records;
use oxeye_exporter_otlp::bench::{trace_message, Resources};
use oxeye_receiver_otlp::{convert, wire};
use oxeye_tests::bench::{median, records_and_rounds};
use oxeye_tests::{captured, run};
use prost::Message;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let (n, rounds) = records_and_rounds(500_000);
    let report = run(&format!(
        "receivers:\n  synthetic: {{seed: 21, batch_size: 512, spans: {{count: {n}, attributes: true}}}}\nexporters:\n  capture/decode:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [capture/decode]}}\n"
    ));
    assert!(report.failures.is_empty());
    let mut resources = Resources::new(&Default::default());
    let requests: Vec<Vec<u8>> = captured("capture/decode")
        .iter()
        .map(|b| match &b.records {
            Records::Spans(s) => {
                let m = trace_message(&mut resources, s.iter().map(|s| (&b.resource, s)));
                m.bytes().to_vec()
            }
            _ => unreachable!("spans"),
        })
        .collect();
    let bytes: usize = requests.iter().map(Vec::len).sum();
    println!(
        "otlp receiver decoding, {n} HTTP-shaped spans in requests of 512 ({:.0} bytes/span), one thread, median of {rounds}:",
        bytes as f64 / n as f64
    );
    let shared: Vec<bytes::Bytes> = requests.iter().map(|r| r.clone().into()).collect();
    let (mut direct, mut prost, mut checked) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        // What a gateway does with a clean request: check it, keep its bytes (wire::encoded).
        let t = Instant::now();
        let mut spans = 0;
        for r in &shared {
            spans += wire::encoded(r).expect("clean").accepted;
        }
        assert_eq!(spans, n);
        checked.push(t.elapsed().as_nanos() as f64 / n as f64);
        let t = Instant::now();
        let mut spans = 0;
        for r in &requests {
            spans += wire::request(r).expect("decodes").accepted;
        }
        assert_eq!(spans, n);
        direct.push(t.elapsed().as_nanos() as f64 / n as f64);
        let t = Instant::now();
        let mut spans = 0;
        for r in &requests {
            let req = ExportTraceServiceRequest::decode(&r[..]).expect("prost");
            spans += convert::request(req).accepted;
        }
        assert_eq!(spans, n);
        prost.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    let (direct, prost, checked) = (median(direct), median(prost), median(checked));
    for (label, ns) in [
        ("checked, kept as received (wire::encoded)", checked),
        ("read directly (wire::request)", direct),
        ("prost decode + convert", prost),
    ] {
        println!(
            "  {label:<42} {ns:>7.1} ns/span  {:>6.2} M spans/s",
            1e3 / ns
        );
    }
    println!("  direct / prost time: {:.2}x", direct / prost);
    println!("  checked / direct time: {:.2}x", checked / direct);
}
