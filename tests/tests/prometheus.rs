//! Self-metrics against the real tools: `promtool check metrics` (Debian's `prometheus`
//! package, installed by tests/setup.sh) on a real scrape of a run with two OTLP exporters,
//! aggregation and sampling; then a real Prometheus server scrapes oxeye on loopback and its
//! HTTP API answers `up == 1` and an oxeye counter with the value oxeye counted. And the
//! `prometheus` exporter the same way: RED metrics of spans, scraped by `promtool` and by a real
//! Prometheus server whose queries give the spans' count and the sum of their durations; and
//! the `prometheusremotewrite` exporter into a real Prometheus's remote-write receiver.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oxeye_api::Records;
use oxeye_tests::{captured, free_port, http_get, signal, spawn, temp_config, KillOnDrop};

mod common;
use common::otlp::http_post;
use common::run::{component, Oxeye};
use common::tls::{https_get, pki};

/// A loopback OTLP/HTTP endpoint that accepts everything (an empty protobuf response is a
/// full success), so both OTLP exporters deliver.
fn otlp_sink(port: u16) -> KillOnDrop {
    const SINK: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;
    KillOnDrop(
        Command::new("python3")
            .args(["-c", SINK, &port.to_string()])
            .spawn()
            .expect("python3 OTLP sink"),
    )
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Polls `f` every 200 ms until it returns `Some`, or panics with `what` after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for `n` spans in `capture/<id>` (at most 30 s) and returns the sum of their durations
/// in seconds: the spans as they left.
fn spans_left(capture: &str, n: usize) -> f64 {
    let mut spans = 0;
    let mut total_s = 0.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while spans < n && Instant::now() < deadline {
        for b in captured(capture) {
            if let Records::Spans(s) = &b.records {
                spans += s.len();
                total_s += s
                    .iter()
                    .map(|s| (s.end_unix_ns - s.start_unix_ns) as f64 / 1e9)
                    .sum::<f64>();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(spans, n);
    total_s
}

/// What a Prometheus holding `spans` spans' RED metrics answers (`number`: an instant query's
/// value): once every span is in, calls and histogram count equal the spans, and the sum of
/// durations is theirs (`total_s`).
fn assert_red_metrics(number: &dyn Fn(&str) -> Option<f64>, spans: usize, total_s: f64) {
    let count = wait_for(
        "Prometheus to hold every span",
        Duration::from_secs(60),
        || number("sum(traces_span_metrics_calls_total)").filter(|n| *n == spans as f64),
    );
    assert_eq!(count, spans as f64);
    assert_eq!(
        number("sum(traces_span_metrics_duration_seconds_count)"),
        Some(spans as f64)
    );
    let sum = number("sum(traces_span_metrics_duration_seconds_sum)").expect("sum");
    assert!(
        (sum - total_s).abs() <= 1e-6 * total_s,
        "Prometheus says {sum} s, the spans took {total_s} s"
    );
}

/// The value of an instant query's single result, from the Prometheus HTTP API.
fn query(prometheus: u16, promql: &str) -> Option<String> {
    query_with(|path| http_get(prometheus, path), promql)
}

/// The same through `get` (a GET of a path: plain, or HTTPS).
fn query_with(get: impl Fn(&str) -> std::io::Result<String>, promql: &str) -> Option<String> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let response = get(&format!("/api/v1/query?query={encoded}")).ok()?;
    let json: serde_json::Value = serde_json::from_str(body(&response)).ok()?;
    json["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_string)
}

/// `promtool check metrics` on a scrape: no problem at all (it prints one line per problem and
/// exits non-zero).
fn promtool_check(metrics: &str) {
    let scrape = std::env::temp_dir().join(format!(
        "oxeye-scrape-{}-{}.txt",
        std::process::id(),
        metrics.len()
    ));
    std::fs::write(&scrape, metrics).expect("write scrape");
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scrape).expect("scrape"))
        .output()
        .expect("promtool (tests/setup.sh installs Debian's prometheus package)");
    let _ = std::fs::remove_file(&scrape);
    assert!(
        check.status.success() && check.stdout.is_empty() && check.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// A real Prometheus server on loopback scraping `target` every second as job `job`; removed
/// (and its data) when dropped.
struct Prometheus {
    _server: KillOnDrop,
    dir: std::path::PathBuf,
    port: u16,
}

impl Prometheus {
    fn scrape(job: &str, target: u16) -> Prometheus {
        Prometheus::start(
            job,
            &format!(
                "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
            &[],
        )
    }

    /// A server scraping nothing that takes remote write on `/api/v1/write`; ready when this
    /// returns.
    fn receiver(name: &str) -> Prometheus {
        Prometheus::receiver_at(name, free_port())
    }

    /// The same on `port`.
    fn receiver_at(name: &str, port: u16) -> Prometheus {
        let p = Prometheus::start_at(
            name,
            "global: {}\n",
            &["--web.enable-remote-write-receiver"],
            port,
        );
        wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            http_get(p.port, "/-/ready")
                .ok()
                .filter(|r| r.starts_with("HTTP/1.1 200"))
        });
        p
    }

    fn start(name: &str, config: &str, flags: &[&str]) -> Prometheus {
        Prometheus::start_at(name, config, flags, free_port())
    }

    fn start_at(name: &str, config: &str, flags: &[&str], port: u16) -> Prometheus {
        let dir =
            std::env::temp_dir().join(format!("oxeye-prometheus-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
        let server = KillOnDrop(
            Command::new("prometheus")
                .args(flags)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("prometheus server"),
        );
        Prometheus {
            _server: server,
            dir,
            port,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_prometheus_exporter_is_scraped_with_the_spans_counts_and_durations() {
    const SPANS: usize = 20_000;
    let exporter = free_port();
    let oxeye = Oxeye::start(
        &format!(
            "receivers:
  synthetic: {{seed: 11, spans: {{count: {SPANS}, attributes: true}}}}
  synthetic/idle: {{seed: 2, spans: {{rate: 10}}}}
exporters:
  capture/prometheus-spans:
  nop:
  prometheus: {{endpoint: '127.0.0.1:{exporter}', const_labels: {{cluster: test}}}}
connectors:
  spanmetrics:
    metrics_flush_interval: 500ms
    histogram: {{unit: s}}               # Prometheus' base unit (promtool says so)
    dimensions: [{{name: http.request.method}}]
service:
  telemetry: {{logs: {{summary_interval: 0s}}}}
  pipelines:
    traces: {{receivers: [synthetic], exporters: [capture/prometheus-spans, spanmetrics]}}
    traces/idle: {{receivers: [synthetic/idle], exporters: [nop]}}
    metrics: {{receivers: [spanmetrics], exporters: [prometheus]}}
"
        ),
        &[],
    );
    let total_s = spans_left("capture/prometheus-spans", SPANS);
    oxeye_tests::wait_port(exporter);
    let calls = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("traces_span_metrics_calls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let scrape = wait_for("every span in the scrape", Duration::from_secs(30), || {
        let r = http_get(exporter, "/metrics").ok()?;
        let text = body(&r).to_string();
        (calls(&text) == SPANS as f64).then_some(text)
    });
    for needle in [
        "# TYPE traces_span_metrics_calls_total counter",
        "# TYPE traces_span_metrics_duration_seconds histogram",
        "cluster=\"test\"",
        "span_kind=\"SPAN_KIND_INTERNAL\"",
        "le=\"+Inf\"",
        "target_info{",
    ] {
        assert!(scrape.contains(needle), "{needle} not in\n{scrape}");
    }
    promtool_check(&scrape);

    let prometheus = Prometheus::scrape("spanmetrics", exporter);
    let number = |q: &str| -> Option<f64> { query(prometheus.port, q)?.parse().ok() };
    assert_red_metrics(&number, SPANS, total_s);
    assert_eq!(
        number("sum(traces_span_metrics_calls_total{cluster=\"test\",http_request_method=\"GET\"}) > 0").map(|n| n > 0.0),
        Some(true)
    );
    drop(prometheus);
    let report = oxeye.stop();
    assert_eq!(report.registry.records_dropped(), 0);
}

#[test]
fn remote_write_lands_in_a_real_prometheus_and_refusals_are_counted() {
    const SPANS: usize = 20_000;
    let prometheus = Prometheus::receiver("remote-write");
    let closed = free_port();
    let write = format!("http://127.0.0.1:{}/api/v1/write", prometheus.port);
    // Delta spanmetrics: the exporter sends their running totals.
    let oxeye = Oxeye::start(
        &format!(
            "receivers:
  synthetic: {{seed: 11, spans: {{count: {SPANS}, attributes: true}}}}
exporters:
  capture/remote-write-spans:
  prometheusremotewrite:
    endpoint: {write}
    external_labels: {{cluster: test}}
    max_batch_size_bytes: 4096         # many requests a batch, sent five at once
  prometheusremotewrite/wrong-path:
    endpoint: http://127.0.0.1:{port}/api/v1/writ
  prometheusremotewrite/down:
    endpoint: http://127.0.0.1:{closed}/api/v1/write
    retry_on_failure: {{max_elapsed_time: 300ms}}
connectors:
  spanmetrics:
    metrics_flush_interval: 500ms
    aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA
    histogram: {{unit: s}}
    dimensions: [{{name: http.request.method}}]
service:
  telemetry: {{logs: {{summary_interval: 0s}}}}
  pipelines:
    traces: {{receivers: [synthetic], exporters: [capture/remote-write-spans, spanmetrics]}}
    metrics: {{receivers: [spanmetrics], exporters: [prometheusremotewrite, prometheusremotewrite/wrong-path, prometheusremotewrite/down]}}
",
            port = prometheus.port
        ),
        &[],
    );
    let total_s = spans_left("capture/remote-write-spans", SPANS);
    let number = |q: &str| -> Option<f64> { query(prometheus.port, q)?.parse().ok() };
    assert_red_metrics(&number, SPANS, total_s);
    assert_eq!(
        number("sum(traces_span_metrics_duration_seconds_bucket{le=\"+Inf\"})"),
        Some(SPANS as f64)
    );
    assert_eq!(
        number("count(traces_span_metrics_calls_total{cluster=\"test\",http_request_method=\"GET\"}) > 0").map(|n| n > 0.0),
        Some(true)
    );
    assert_eq!(
        number("count(target_info{cluster=\"test\"})").map(|n| n > 0.0),
        Some(true)
    );
    // The receiver is finite: oxeye drains (the `down` exporter retrying) and ends by itself.
    let report = oxeye.join();
    // Every point the good exporter took was delivered; the others counted each one, by reason.
    let good = component(&report, "exporters/prometheusremotewrite");
    assert!(good.received() > 0);
    assert_eq!(good.emitted(), good.received());
    assert_eq!(good.dropped_total(), 0);
    let wrong = component(&report, "exporters/prometheusremotewrite/wrong-path");
    assert_eq!(wrong.dropped(), [("rejected", wrong.received())]);
    let down = component(&report, "exporters/prometheusremotewrite/down");
    assert_eq!(down.dropped(), [("retries_exhausted", down.received())]);
    drop(prometheus);
}

/// `remote_write_queue.storage`: 300 gauges written while Prometheus is not there yet, the
/// agent killed with SIGKILL and started again, then Prometheus started: every series lands,
/// with its value, and the queues on disk empty.
#[test]
fn remote_write_queued_on_disk_survives_kill_9_and_lands_once_prometheus_is_up() {
    use common::load::{kill9, metric, stop, wait, Agent};
    const SERIES: u64 = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, metrics, prometheus_port) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "receivers:
  otlp: {{protocols: {{http: {{endpoint: '127.0.0.1:{http}'}}}}}}
exporters:
  prometheusremotewrite:
    endpoint: http://127.0.0.1:{prometheus_port}/api/v1/write
    retry_on_failure: {{initial_interval: 100ms, max_interval: 300ms}}
    remote_write_queue: {{num_consumers: 3, storage: {{directory: {dir}}}}}
service:
  telemetry:
    metrics: {{address: 127.0.0.1:{metrics}}}
  pipelines:
    metrics: {{receivers: [otlp], exporters: [prometheusremotewrite]}}
",
        dir = dir.path().display()
    );
    let config = temp_config("remote-write-disk", &yaml);
    let agent = || {
        let a = Agent::spawn(&config);
        oxeye_tests::wait_port(http);
        oxeye_tests::wait_port(metrics);
        a
    };
    let a = agent();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    for i in 0..SERIES {
        let mut body = gauge_request(&format!("disk.gauge.{i}"), now);
        // The value 7.0 as a double, replaced by i (8 little-endian bytes).
        let at = body
            .windows(8)
            .position(|w| w == 7.0f64.to_le_bytes())
            .expect("the value in the request");
        body[at..at + 8].copy_from_slice(&(i as f64).to_le_bytes());
        let (code, head, _) = http_post(
            http,
            "/v1/metrics",
            &[("content-type", "application/x-protobuf")],
            &body,
        );
        assert_eq!(code, 200, "{head}");
    }
    wait("every point on disk", Duration::from_secs(30), || {
        metric(metrics, "oxeye_queue_disk_records") >= SERIES
    });
    kill9(a);
    let a = agent();
    let prometheus = Prometheus::receiver_at("remote-write-disk", prometheus_port);
    let number = |q: &str| -> Option<f64> { query(prometheus.port, q)?.parse().ok() };
    wait_for(
        "every series in Prometheus",
        Duration::from_secs(60),
        || number("count({__name__=~\"disk_gauge_.*\"})").filter(|n| *n == SERIES as f64),
    );
    assert_eq!(
        number("sum({__name__=~\"disk_gauge_.*\"})"),
        Some((0..SERIES).sum::<u64>() as f64)
    );
    wait("the queues on disk empty", Duration::from_secs(30), || {
        metric(metrics, "oxeye_queue_disk_records") == 0
    });
    let err = stop(a);
    assert!(
        err.contains("records queued on disk by a previous run"),
        "the restart found the backlog:\n{err}"
    );
    let line = err
        .lines()
        .rfind(|l| l.contains("exporter prometheusremotewrite:"))
        .unwrap_or_else(|| panic!("no exporter line:\n{err}"));
    assert!(
        !line.contains("dropped") && !line.contains("on disk"),
        "{line}"
    );
    drop(prometheus);
}

/// A gauge point of `name` at `time` (Unix ns), as an OTLP/HTTP request body.
fn gauge_request(name: &str, time: u64) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("checkout".into())),
                    }),
                }],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: time,
                            value: Some(number_data_point::Value::AsDouble(7.0)),
                            ..NumberDataPoint::default()
                        }],
                    })),
                    ..Metric::default()
                }],
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
    .encode_to_vec()
}

#[test]
fn samples_prometheus_refuses_are_counted_with_its_reason() {
    let prometheus = Prometheus::receiver("remote-write-refused");
    let http = free_port();
    let oxeye = Oxeye::start(
        &format!(
            "receivers:
  otlp: {{protocols: {{http: {{endpoint: '127.0.0.1:{http}'}}}}}}
exporters:
  prometheusremotewrite: {{endpoint: 'http://127.0.0.1:{}/api/v1/write'}}
service:
  telemetry: {{logs: {{summary_interval: 0s}}}}
  pipelines:
    metrics: {{receivers: [otlp], exporters: [prometheusremotewrite]}}
",
            prometheus.port
        ),
        &[http],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let post = |body: &[u8]| {
        let (code, head, _) = http_post(
            http,
            "/v1/metrics",
            &[("content-type", "application/x-protobuf")],
            body,
        );
        assert_eq!(code, 200, "{head}");
    };
    // A fresh sample is stored; one three hours old is outside Prometheus's head (out of bounds).
    post(&gauge_request("fresh.gauge", now));
    let number = |q: &str| -> Option<f64> { query(prometheus.port, q)?.parse().ok() };
    wait_for("the fresh sample", Duration::from_secs(30), || {
        number("fresh_gauge{job=\"checkout\"}").filter(|v| *v == 7.0)
    });
    post(&gauge_request(
        "stale.gauge",
        now - 3 * 3600 * 1_000_000_000,
    ));
    // Stopping drains the exporter's queue: the refusal is in the report.
    let report = oxeye.stop();
    let t = component(&report, "exporters/prometheusremotewrite");
    assert_eq!(t.received(), 2);
    assert_eq!((t.emitted(), t.dropped()), (1, vec![("rejected", 1)]));
    assert_eq!(
        number("count(stale_gauge)"),
        None,
        "Prometheus did not store it"
    );
    drop(prometheus);
}

/// An endpoint that never answers, retried without end, a queue of one request: at the
/// shutdown deadline every point the exporter took is counted once — the queued ones as
/// `shutdown_deadline`, the batch waiting for room as `component_stopped`.
#[test]
fn at_the_shutdown_deadline_every_point_is_counted_once() {
    let closed = free_port();
    let oxeye = Oxeye::start(
        &format!(
            "receivers:
  synthetic: {{seed: 5, metrics: {{count: 20000, series: 50}}}}
exporters:
  prometheusremotewrite:
    endpoint: http://127.0.0.1:{closed}/api/v1/write
    retry_on_failure: {{max_elapsed_time: 0s}}
    remote_write_queue: {{queue_size: 1, num_consumers: 1}}
service:
  shutdown_timeout: 1s
  telemetry: {{logs: {{summary_interval: 0s}}}}
  pipelines:
    metrics: {{receivers: [synthetic], exporters: [prometheusremotewrite]}}
"
        ),
        &[],
    );
    let report = oxeye.join();
    let t = component(&report, "exporters/prometheusremotewrite");
    let dropped: std::collections::HashMap<_, _> = t.dropped().into_iter().collect();
    assert!(t.received() > 0);
    assert_eq!(t.emitted(), 0, "{dropped:?}");
    assert!(dropped.contains_key("shutdown_deadline"), "{dropped:?}");
    assert!(dropped.contains_key("component_stopped"), "{dropped:?}");
    // What it took, each point once; with what was still queued before it, every point made.
    let queued = dropped.get("queued_at_stop").copied().unwrap_or(0);
    assert_eq!(t.dropped_total() - queued, t.received(), "{dropped:?}");
    assert_eq!(t.dropped_total(), 20_000, "{dropped:?}");
}

#[test]
fn remote_write_over_mutual_tls_and_a_client_without_certificate_refused() {
    let dir = pki("remote-write");
    let d = dir.display();
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!("tls_server_config:\n  cert_file: {d}/server.pem\n  key_file: {d}/server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {d}/ca.pem\n"),
    )
    .expect("web.yml");
    let prometheus = Prometheus::start(
        "remote-write-tls",
        "global: {}\n",
        &[
            "--web.enable-remote-write-receiver",
            &format!("--web.config.file={}", web.display()),
        ],
    );
    let port = prometheus.port;
    let number = |q: &str| -> Option<f64> {
        query_with(|path| https_get(&dir, port, path), q)?
            .parse()
            .ok()
    };
    wait_for("Prometheus over TLS", Duration::from_secs(30), || {
        number("vector(1)")
    });
    let oxeye = Oxeye::start(
        &format!(
            "receivers:
  synthetic: {{seed: 3, spans: {{count: 2000}}}}
exporters:
  prometheusremotewrite:
    endpoint: https://127.0.0.1:{port}/api/v1/write
    tls: {{ca_file: '{d}/ca.pem', cert_file: '{d}/client.pem', key_file: '{d}/client.key'}}
  prometheusremotewrite/no-client-certificate:
    endpoint: https://127.0.0.1:{port}/api/v1/write
    tls: {{ca_file: '{d}/ca.pem'}}
    retry_on_failure: {{max_elapsed_time: 300ms}}
connectors:
  spanmetrics: {{metrics_flush_interval: 200ms}}
service:
  telemetry: {{logs: {{summary_interval: 0s}}}}
  pipelines:
    traces: {{receivers: [synthetic], exporters: [spanmetrics]}}
    metrics: {{receivers: [spanmetrics], exporters: [prometheusremotewrite, prometheusremotewrite/no-client-certificate]}}
"
        ),
        &[],
    );
    wait_for(
        "Prometheus to hold every span",
        Duration::from_secs(60),
        || number("sum(traces_span_metrics_calls_total)").filter(|n| *n == 2000.0),
    );
    let report = oxeye.join();
    let good = component(&report, "exporters/prometheusremotewrite");
    assert!(good.received() > 0);
    assert_eq!((good.emitted(), good.dropped_total()), (good.received(), 0));
    let refused = component(
        &report,
        "exporters/prometheusremotewrite/no-client-certificate",
    );
    assert_eq!(
        refused.dropped(),
        [("retries_exhausted", refused.received())]
    );
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn promtool_and_a_real_prometheus_accept_the_metrics() {
    let (sink_port, metrics_port) = (free_port(), free_port());
    let _sink = otlp_sink(sink_port);
    let cfg = temp_config(
        "prometheus",
        &format!(
            "receivers:
  synthetic: {{seed: 9, spans: {{count: 20000}}, flows: {{count: 5000}}}}
  synthetic/idle: {{seed: 2, spans: {{rate: 10}}}}
processors:
  sampling: {{ratio: 0.5}}
  aggregation: {{window: 1s}}
exporters:
  otlp/traces: {{protocol: http/protobuf, endpoint: 'http://127.0.0.1:{sink_port}'}}
  otlp/flows: {{protocol: http/protobuf, endpoint: 'http://127.0.0.1:{sink_port}'}}
  nop:
service:
  telemetry: {{metrics: {{address: '127.0.0.1:{metrics_port}'}}, logs: {{summary_interval: 0s}}}}
  pipelines:
    traces: {{receivers: [synthetic], processors: [sampling], exporters: [otlp/traces]}}
    flows: {{receivers: [synthetic], processors: [aggregation], exporters: [otlp/flows]}}
    traces/idle: {{receivers: [synthetic/idle], exporters: [nop]}}
"
        ),
    );
    let mut oxeye = KillOnDrop(spawn(&["run", "-c", cfg.to_str().expect("utf8")]));
    let _ = oxeye.0.stdout.take();
    let (_lines, stderr) = oxeye_tests::follow(oxeye.0.stderr.take().expect("stderr"));

    // A scrape once the counted receiver is done and both exporters delivered something.
    let series = "oxeye_component_emitted_records_total{kind=\"receiver\",id=\"synthetic\"} 25000";
    let metrics = wait_for(
        "the synthetic receiver's 25000 records",
        Duration::from_secs(30),
        || {
            let r = http_get(metrics_port, "/metrics").ok()?;
            let delivered = |id: &str| {
                r.lines().any(|l| {
                    l.starts_with(&format!(
                        "oxeye_component_emitted_records_total{{kind=\"exporter\",id=\"{id}\"}}"
                    )) && !l.ends_with(" 0")
                })
            };
            (r.contains(series) && delivered("otlp/traces") && delivered("otlp/flows"))
                .then(|| body(&r).to_string())
        },
    );
    assert!(
        metrics.contains("oxeye_otlp_requests_total{kind=\"exporter\",id=\"otlp/flows\""),
        "{metrics}"
    );
    // Every family once, with its HELP and TYPE (component counters used to be interleaved).
    let types: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .collect();
    let mut unique = types.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(types.len(), unique.len(), "{metrics}");
    assert_eq!(
        metrics.lines().filter(|l| l.starts_with("# HELP ")).count(),
        types.len()
    );

    promtool_check(&metrics);

    // A real Prometheus server scraping oxeye every second, on loopback.
    let server = Prometheus::scrape("oxeye", metrics_port);
    let prometheus_port = server.port;
    let up = wait_for(
        "Prometheus to scrape oxeye",
        Duration::from_secs(60),
        || query(prometheus_port, "up{job=\"oxeye\"}").filter(|v| v == "1"),
    );
    assert_eq!(up, "1");
    let counted = wait_for("the counter in Prometheus", Duration::from_secs(30), || {
        query(
            prometheus_port,
            "oxeye_component_emitted_records_total{job=\"oxeye\",kind=\"receiver\",id=\"synthetic\"}",
        )
    });
    assert_eq!(counted, "25000");
    drop(server);

    signal(&oxeye.0, libc::SIGINT);
    let status = oxeye.0.wait().expect("wait");
    let stderr = stderr.join().expect("stderr");
    assert_eq!(status.code(), Some(0), "{stderr}");
}
