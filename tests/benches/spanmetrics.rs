//! The spanmetrics connector's cost, two ways, interleaved, medians:
//!
//! - `oxeye run` as users run it (the release binary, default settings): synthetic HTTP-shaped
//!   spans → traces pipeline → `nop` and `spanmetrics` (dimensions: method, route, status code:
//!   about 1 100 series) → metrics pipeline → `nop`, beside the same run without the connector; the
//!   difference in the process's CPU is the connector's, per span;
//! - the connector alone in the test harness, on pre-built batches of 10 000 spans over 1 000
//!   series, beside the `nop` processor in the same harness.
//!
//! ```sh
//! cargo build --release -p oxeye && cargo bench -p oxeye-tests --bench spanmetrics
//! OXEYE_BENCH_RECORDS=2000000 ...   # spans per run
//! ```

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use oxeye_api::testing::ProcessorHarness;
use oxeye_api::{Attributes, Batch, Resource, Span, SpanId, SpanKind, StatusCode, TraceId};
use oxeye_connector_spanmetrics::SpanMetricsFactory;
use oxeye_tests::bench::{median, quick, records_and_rounds, release_oxeye};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cpu(who: i32) -> Duration {
    // SAFETY: getrusage writes into the struct we pass; no other memory is touched.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `oxeye run` of `n` synthetic spans, with or without the connector: (CPU s, its summary line
/// for the connector).
fn run(oxeye: &std::path::Path, n: u64, connector: bool, dir: &std::path::Path) -> (f64, String) {
    let (exporters, extra) = if connector {
        (
            "[nop, spanmetrics]",
            "connectors:
  spanmetrics:
    dimensions: [{name: http.request.method}, {name: http.route}, {name: http.response.status_code}]
",
        )
    } else {
        ("[nop]", "")
    };
    let metrics = if connector {
        "\n    metrics: {receivers: [spanmetrics], exporters: [nop]}"
    } else {
        ""
    };
    let yaml = format!(
        "receivers:
  synthetic: {{seed: 7, spans: {{count: {n}, rate: 0, attributes: true}}}}
exporters:
  nop:
{extra}service:
  pipelines:
    traces: {{receivers: [synthetic], exporters: {exporters}}}{metrics}
"
    );
    let file = dir.join(if connector {
        "with.yaml"
    } else {
        "without.yaml"
    });
    std::fs::write(&file, yaml).expect("config");
    let before = cpu(libc::RUSAGE_CHILDREN);
    let out = Command::new(oxeye)
        .args(["run", "-c"])
        .arg(&file)
        .output()
        .expect("oxeye run");
    let used = cpu(libc::RUSAGE_CHILDREN) - before;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("connector spanmetrics:"))
        .map(|l| l.split_once("connector ").map_or(l, |(_, r)| r).to_string())
        .unwrap_or_default();
    if connector {
        assert!(line.contains(&format!(": {n} in,")), "{stderr}");
    }
    (used.as_secs_f64(), line)
}

/// Batches of 10 000 server spans over `series` (span name, status) pairs.
fn batches(n: u64, series: usize) -> Vec<Arc<Batch>> {
    let mut a = Attributes::new();
    a.set("service.name", "checkout");
    let resource = Arc::new(Resource::new(a));
    let names: Vec<Arc<str>> = (0..series / 2)
        .map(|i| Arc::from(format!("GET /api/v1/items/{i}")))
        .collect();
    let per = 10_000;
    (0..n.div_ceil(per))
        .map(|b| {
            let spans = (0..per)
                .map(|i| {
                    let k = (b * per + i) as usize;
                    Span {
                        trace_id: TraceId((k as u128 + 1).to_be_bytes()),
                        span_id: SpanId((k as u64 + 1).to_be_bytes()),
                        name: Arc::clone(&names[k % names.len()]),
                        kind: SpanKind::Server,
                        status: if (k / names.len()).is_multiple_of(2) {
                            StatusCode::Unset
                        } else {
                            StatusCode::Error
                        },
                        start_unix_ns: 1_000_000,
                        end_unix_ns: 1_000_000 + (k as u64 * 7_919) % 3_000_000_000,
                        ..Span::default()
                    }
                })
                .collect();
            Arc::new(Batch::spans(Arc::clone(&resource), spans))
        })
        .collect()
}

/// CPU s to put every batch through `h` and flush it.
fn harness(h: &mut ProcessorHarness, input: &[Arc<Batch>]) -> f64 {
    let c0 = cpu(libc::RUSAGE_SELF);
    for b in input {
        h.process_shared(Arc::clone(b)).expect("process");
    }
    h.flush().expect("flush");
    (cpu(libc::RUSAGE_SELF) - c0).as_secs_f64()
}

fn main() {
    let quick = quick();
    let (n, runs) = records_and_rounds(5_000_000);
    let oxeye = release_oxeye(quick);
    let dir = std::env::temp_dir().join(format!("oxeye-bench-spanmetrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    println!("spanmetrics: {n} spans a run, median of {runs}, interleaved");

    let (mut with, mut without, mut line) = (Vec::new(), Vec::new(), String::new());
    for _ in 0..runs {
        let (c, l) = run(&oxeye, n, true, &dir);
        with.push(c);
        line = l;
        without.push(run(&oxeye, n, false, &dir).0);
    }
    let (with, without) = (median(with), median(without));
    let added_ns = (with - without).max(1e-9) * 1e9 / n as f64;
    println!(
        "  oxeye run, synthetic -> nop           {:>8.3} CPU-s   {:>7.1} ns/span",
        without,
        without * 1e9 / n as f64
    );
    println!(
        "  oxeye run, synthetic -> nop + spanmetrics {:>4.3} CPU-s   {:>7.1} ns/span   connector: {:>6.1} ns/span = {:.1} M spans/s per core   ({line})",
        with,
        with * 1e9 / n as f64,
        added_ns,
        1e3 / added_ns
    );

    let input = batches(n, 1000);
    let (mut sm, mut nop) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut h = ProcessorHarness::connector::<SpanMetricsFactory>("").expect("spanmetrics");
        sm.push(harness(&mut h, &input));
        let mut h = ProcessorHarness::new::<oxeye_processor_nop::NopFactory>("").expect("nop");
        nop.push(harness(&mut h, &input));
    }
    let (sm, nop) = (median(sm), median(nop));
    println!(
        "  harness, nop processor                {:>8.3} CPU-s   {:>7.1} ns/span",
        nop,
        nop * 1e9 / n as f64
    );
    println!(
        "  harness, spanmetrics (1 000 series)   {:>8.3} CPU-s   {:>7.1} ns/span = {:.1} M spans/s per core (target >= 10)",
        sm,
        sm * 1e9 / n as f64,
        n as f64 / sm / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
