//! A scrape of the `prometheus` exporter with 100 000 series (Prometheus' series: a histogram's
//! every `_bucket` line is one): its time and what the process holds, two ways:
//!
//! - `oxeye run` as users run it (the release binary): synthetic metrics (an HTTP service's
//!   counter, up-down counter, 15-bucket histogram and gauge over 5 000 attribute sets each,
//!   20 series a set;
//!   its exponential histogram is counted as dropped) → `prometheus`; scraped over HTTP once
//!   every series is there: wall time per scrape (median of 5), body size, the process's RSS;
//! - the store alone (`oxeye_exporter_prometheus::bench::scrape`) on the same shape of series:
//!   render time, without the HTTP round trip.
//!
//! ```sh
//! cargo build --release -p oxeye && cargo bench -p oxeye-tests --bench prometheus
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use oxeye_api::metrics::{Histogram, HistogramPoint, Number, NumberPoint, Sum};
use oxeye_api::{Attributes, Batch, Metric, MetricData, Resource, Temporality};
use oxeye_tests::bench::{median, quick, release_oxeye};
use oxeye_tests::{free_port, http_get, temp_config, KillOnDrop};

/// One scrape as a client makes it: (ms until the whole body is in, the body).
fn scrape(port: u16) -> (f64, String) {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .expect("ask");
    let mut response = Vec::with_capacity(32 << 20);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = s.read(&mut chunk).expect("read");
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let text = String::from_utf8(response).expect("utf8");
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (ms, body)
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// The series a scrape shows: its sample lines (`target_info` aside).
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("target_info"))
        .count()
}

/// `per` attribute sets of each of four metrics, as the synthetic receiver's shapes.
fn batches(per: usize) -> Vec<Batch> {
    let mut r = Attributes::new();
    r.set("service.name", "checkout");
    let resource = Arc::new(Resource::new(r));
    let attrs = |i: usize| {
        let mut a = Attributes::new();
        a.set("http.route", format!("/api/v1/items/{}", i % 1000));
        a.set("http.response.status_code", (200 + i / 1000) as i64);
        a
    };
    let number = |i: usize| NumberPoint {
        attributes: attrs(i),
        value: Some(Number::Int(i as i64)),
        ..NumberPoint::default()
    };
    let bounds = vec![
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ];
    let metric = |name: &str, unit: &str, data| Metric {
        name: name.into(),
        unit: Some(unit.into()),
        data,
        ..Metric::default()
    };
    let metrics = vec![
        metric(
            "http.server.requests",
            "{request}",
            MetricData::Sum(Sum {
                points: (0..per).map(number).collect(),
                temporality: Temporality::Cumulative,
                monotonic: true,
            }),
        ),
        metric(
            "http.server.active_requests",
            "{request}",
            MetricData::Sum(Sum {
                points: (0..per).map(number).collect(),
                temporality: Temporality::Cumulative,
                monotonic: false,
            }),
        ),
        metric(
            "http.server.request.duration",
            "s",
            MetricData::Histogram(Histogram {
                points: (0..per)
                    .map(|i| HistogramPoint {
                        attributes: attrs(i),
                        count: 15,
                        sum: Some(1.5),
                        bucket_counts: vec![1; 15],
                        explicit_bounds: bounds.clone(),
                        ..HistogramPoint::default()
                    })
                    .collect(),
                temporality: Temporality::Cumulative,
            }),
        ),
        metric(
            "process.memory.usage",
            "By",
            MetricData::Gauge((0..per).map(number).collect()),
        ),
    ];
    vec![Batch::metrics(resource, metrics)]
}

fn main() {
    let quick = quick();
    let per = if quick { 200 } else { 5_000 };
    let runs = if quick { 1 } else { 5 };
    println!(
        "prometheus exporter: a scrape of {} series, median of {runs}",
        per * 20
    );

    let oxeye = release_oxeye(quick);
    let (endpoint, telemetry) = (free_port(), free_port());
    let cfg = temp_config(
        "bench-prometheus",
        &format!(
            "receivers:
  synthetic: {{seed: 3, metrics: {{count: {}, series: {per}}}}}
  synthetic/idle: {{seed: 2, spans: {{rate: 10}}}}
exporters:
  prometheus: {{endpoint: '127.0.0.1:{endpoint}'}}
  nop:
service:
  telemetry: {{metrics: {{address: '127.0.0.1:{telemetry}'}}, logs: {{summary_interval: 0s}}}}
  pipelines:
    metrics: {{receivers: [synthetic], exporters: [prometheus]}}
    traces: {{receivers: [synthetic/idle], exporters: [nop]}}
",
            per * 5
        ),
    );
    let child = KillOnDrop(
        std::process::Command::new(&oxeye)
            .args(["run", "-c"])
            .arg(&cfg)
            .env_remove("OXEYE_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("oxeye run"),
    );
    let pid = child.0.id();
    // Every series there: the receiver has emitted all it will.
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = format!(
        "oxeye_component_emitted_records_total{{kind=\"receiver\",id=\"synthetic\"}} {}",
        per * 5
    );
    loop {
        let r = http_get(telemetry, "/metrics").unwrap_or_default();
        if r.contains(&done) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the synthetic metrics did not all arrive"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..runs {
        let (ms, text) = scrape(endpoint);
        times.push(ms);
        body = text;
    }
    let shown = series(&body);
    println!(
        "  oxeye run -> prometheus      {:>8.1} ms per scrape   {shown} series, {:.1} MiB of text   RSS {:.1} MiB (peak {:.1} MiB)",
        median(times),
        body.len() as f64 / (1 << 20) as f64,
        rss_mib(pid, "VmRSS:"),
        rss_mib(pid, "VmHWM:")
    );
    drop(child);

    let input = batches(per);
    let mut times = Vec::new();
    for _ in 0..runs {
        let (text, took) = oxeye_exporter_prometheus::bench::scrape(&input);
        times.push(took.as_secs_f64() * 1e3);
        assert_eq!(series(&text), per * 20);
    }
    println!(
        "  the store alone, render      {:>8.1} ms              {} series",
        median(times),
        per * 20
    );
}
