//! Exporter encoding on the same synthetic spans (seed 7, batches of 1024), one thread:
//! OTLP protobuf (generated types + prost) with and without gzip, and Arrow IPC (record batch
//! build + stream encoding) with and without zstd, and the stdout exporter's JSON lines and
//! text, rendered and written to /dev/null, for synthetic spans and for syscall spans shaped as
//! the ebpf receiver makes them. Prints spans/s, ns/span and bytes/span.
//! A benchmark, not a test: it never fails on speed.
//!
//!     cargo bench -p oxeye-tests --bench exporters       # OXEYE_BENCH_RECORDS=500000 to change N

use std::sync::Arc;
use std::time::Instant;

use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use oxeye_api::{Batch, Comm, Records, Span, TaskContext};
use oxeye_exporter_arrow::{span_schema, spans_to_arrow, Dicts};
use oxeye_exporter_otlp::bench::{gzip_bytes, trace_message, trace_request, Resources};
use oxeye_exporter_stdout::{Format, Renderer};
use oxeye_tests::bench::{median, records_and_rounds};
use oxeye_tests::{captured, run};
use prost::Message;

// The allocator the `oxeye` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Spans from the synthetic receiver, as the exporters would get them.
fn synthetic_spans(n: u64) -> Vec<Arc<Batch>> {
    let report = run(&format!(
        "receivers:\n  synthetic: {{seed: 7, batch_size: 1024, spans: {{count: {n}}}}}\nexporters:\n  capture/bench:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  resource: {{service.name: bench}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [capture/bench]}}\n"
    ));
    assert!(report.failures.is_empty());
    captured("capture/bench")
}

/// The same spans as a `syscall: getppid` source emits them: task, return value, one attribute.
fn syscall_spans(batches: &[Arc<Batch>]) -> Vec<Arc<Batch>> {
    batches
        .iter()
        .map(|b| {
            let spans = spans(b)
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut attributes = oxeye_api::Attributes::new();
                    attributes.set("code.function.name", "getppid");
                    Span {
                        name: "getppid".into(),
                        parent_span_id: None,
                        attributes,
                        task: Some(TaskContext {
                            pid: 4242,
                            tid: 4242 + (i as u32 % 4),
                            comm: Comm::new("oxeye-workload"),
                            cpu: i as u32 % 2,
                        }),
                        return_value: Some(4241),
                        ..s.clone()
                    }
                })
                .collect();
            Arc::new(Batch::spans(b.resource.clone(), spans))
        })
        .collect()
}

fn spans(b: &Batch) -> &[Span] {
    match &b.records {
        Records::Spans(s) => s,
        _ => &[],
    }
}

/// Runs `f` over every batch `rounds` times; (median ns per span, bytes per span).
fn measure(
    batches: &[Arc<Batch>],
    rounds: usize,
    mut f: impl FnMut(&Batch) -> usize,
) -> (f64, f64) {
    let n: usize = batches.iter().map(|b| b.len()).sum();
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes = 0;
        let t = Instant::now();
        for b in batches {
            bytes += f(b);
        }
        times.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    (median(times), bytes as f64 / n as f64)
}

fn arrow_ipc(b: &Batch, compression: Option<arrow_ipc::CompressionType>) -> usize {
    let options = IpcWriteOptions::default()
        .try_with_compression(compression)
        .expect("compression");
    let mut dicts = Dicts::default();
    let batch = spans_to_arrow(spans(b), &b.resource, &mut dicts).expect("arrow batch");
    let mut w =
        StreamWriter::try_new_with_options(Vec::new(), &span_schema(), options).expect("writer");
    w.write(&batch).expect("write");
    w.into_inner().expect("finish").len()
}

fn main() {
    let (n, rounds) = records_and_rounds(500_000);
    let batches = synthetic_spans(n);
    println!("exporter encoding, {n} synthetic spans in batches of 1024, one thread, median of {rounds}:");

    let mut resources = Resources::new(&Default::default());
    let row = |label: &str, (ns, bytes): (f64, f64)| {
        println!(
            "  {label:<34} {ns:>7.1} ns/span  {:>6.2} M spans/s  {bytes:>6.1} bytes/span",
            1e3 / ns
        );
        bytes
    };
    row(
        "otlp protobuf (generated types)",
        measure(&batches, rounds, |b| {
            trace_request(&mut resources, [(&b.resource, spans(b))]).encoded_len()
        }),
    );
    row(
        "otlp protobuf, encoded to bytes",
        measure(&batches, rounds, |b| {
            trace_request(&mut resources, [(&b.resource, spans(b))])
                .encode_to_vec()
                .len()
        }),
    );
    row(
        "otlp protobuf, written directly",
        measure(&batches, rounds, |b| {
            trace_message(&mut resources, spans(b).iter().map(|s| (&b.resource, s)))
                .bytes()
                .len()
        }),
    );
    row(
        "otlp protobuf, written directly + gzip",
        measure(&batches, rounds, |b| {
            gzip_bytes(
                trace_message(&mut resources, spans(b).iter().map(|s| (&b.resource, s))).bytes(),
            )
            .len()
        }),
    );
    let otlp_gzip = row(
        "otlp protobuf + gzip",
        measure(&batches, rounds, |b| {
            gzip_bytes(&trace_request(&mut resources, [(&b.resource, spans(b))]).encode_to_vec())
                .len()
        }),
    );
    row(
        "arrow record batch (build only)",
        measure(&batches, rounds, |b| {
            let mut dicts = Dicts::default();
            spans_to_arrow(spans(b), &b.resource, &mut dicts)
                .expect("arrow")
                .get_array_memory_size()
        }),
    );
    row(
        "arrow ipc stream",
        measure(&batches, rounds, |b| arrow_ipc(b, None)),
    );
    let arrow_zstd = row(
        "arrow ipc stream + zstd",
        measure(&batches, rounds, |b| {
            arrow_ipc(b, Some(arrow_ipc::CompressionType::ZSTD))
        }),
    );
    use std::io::Write;
    let mut null = std::fs::File::create("/dev/null").expect("/dev/null");
    let syscalls = syscall_spans(&batches);
    for (format, yaml) in [("json", Format::Json), ("text", Format::Text)] {
        for (what, input) in [("synthetic", &batches), ("syscall", &syscalls)] {
            let mut r = Renderer::new(yaml);
            row(
                &format!("stdout {format}, {what} spans"),
                measure(input, rounds, |b| {
                    let lines = r.render(b);
                    null.write_all(lines).expect("write");
                    lines.len()
                }),
            );
        }
    }
    println!(
        "  otlp+gzip / arrow+zstd size: {:.2}x (per 1024-span batch; a long-lived stream shares dictionaries and does better)",
        otlp_gzip / arrow_zstd
    );
}
