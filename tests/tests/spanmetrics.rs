//! RED metrics from spans, and the spans they came from, exported together: synthetic spans →
//! traces pipeline → otlp exporter and the `spanmetrics` connector → metrics pipeline → otlp
//! exporter, both to a loopback sink that decodes with the official Python OTLP protos. Calls
//! and histogram counts equal the spans, histogram sums their durations, exemplars name traces
//! that arrived.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;
use common::run::{component, counter, sdk_python, Oxeye};

struct Sink {
    child: Child,
    port: u16,
}

impl Sink {
    fn start() -> Sink {
        let dir = std::env::temp_dir().join(format!("oxeye-spanmetrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let port_file = dir.join("port");
        let _ = std::fs::remove_file(&port_file);
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workloads/otlp_http_sink.py");
        let child = Command::new(sdk_python())
            .arg(script)
            .arg(&port_file)
            .spawn()
            .expect("start the Python sink");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p.trim().parse().expect("port");
            }
            assert!(Instant::now() < deadline, "the Python sink did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Sink { child, port }
    }

    fn summary(&self) -> serde_json::Value {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.write_all(b"GET /summary HTTP/1.0\r\nHost: sink\r\n\r\n")
            .expect("ask");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        let body = answer.split_once("\r\n\r\n").expect("http").1;
        serde_json::from_str(body).expect("json")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn red_metrics_and_their_spans_reach_the_official_protos_exactly() {
    const SPANS: u64 = 20_000;
    let sink = Sink::start();
    let endpoint = format!("http://127.0.0.1:{}", sink.port);
    let yaml = format!(
        "
receivers:
  synthetic: {{seed: 7, spans: {{count: {SPANS}, rate: 0, attributes: true}}}}
exporters:
  otlp: {{endpoint: '{endpoint}', protocol: http/protobuf}}
  otlp/metrics: {{endpoint: '{endpoint}', protocol: http/protobuf}}
connectors:
  spanmetrics:
    dimensions: [{{name: http.request.method, default: none}}]
    exemplars: {{enabled: true, max_per_data_point: 1}}
    metrics_flush_interval: 200ms
service:
  pipelines:
    traces: {{receivers: [synthetic], exporters: [otlp, spanmetrics]}}
    metrics: {{receivers: [spanmetrics], exporters: [otlp/metrics]}}
"
    );
    // The source is finite: oxeye drains (the connector's last flush included) and ends.
    let report = Oxeye::start(&yaml, &[]).join();
    let c = component(&report, "connectors/spanmetrics");
    assert_eq!(c.received(), SPANS);
    assert_eq!(c.merged(), SPANS, "every span went into a series");
    assert_eq!(c.dropped_total(), 0);
    assert_eq!(
        counter(
            &report,
            "connectors/spanmetrics",
            "spanmetrics_overflow_spans",
            "spanmetrics"
        ),
        0
    );
    assert_eq!(component(&report, "exporters/otlp").emitted(), SPANS);
    let points = component(&report, "exporters/otlp/metrics").emitted();
    assert!(
        points > 0 && points == c.emitted(),
        "{points} points, {} emitted",
        c.emitted()
    );

    let s = sink.summary();
    assert_eq!(s["spans"], SPANS, "{s}");
    let calls = &s["metrics"]["traces.span.metrics.calls"];
    let duration = &s["metrics"]["traces.span.metrics.duration"];
    assert_eq!(calls["type"], "sum", "{s}");
    assert_eq!(duration["type"], "histogram", "{s}");
    assert_eq!(calls["value"], SPANS, "calls total = spans: {s}");
    assert_eq!(duration["count"], SPANS, "histogram count = spans: {s}");
    let (sum, span_ms) = (
        duration["sum"].as_f64().expect("sum"),
        s["span_ms"].as_f64().expect("span_ms"),
    );
    assert!(
        (sum - span_ms).abs() <= 1e-6 * span_ms,
        "histogram sum {sum} ms, spans {span_ms} ms"
    );
    assert!(calls["series"].as_u64().expect("series") > 1, "{s}");
    let exemplars = duration["exemplars"].as_u64().expect("exemplars");
    assert!(exemplars > 0, "{s}");
    assert_eq!(
        duration["exemplars_of_known_traces"], exemplars,
        "every exemplar names a trace that arrived: {s}"
    );
}
