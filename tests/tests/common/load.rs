//! Load for agents and gateways run as `oxeye run`: numbered spans sent over OTLP/gRPC, each
//! span id counted where it arrives; the process handled with SIGKILL and SIGTERM.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use oxeye_tests::KillOnDrop;

use super::otlp::Sink;

/// Spans per request: request `r` is one trace, its spans numbered `r * PER_REQUEST + 1 ..`.
pub const PER_REQUEST: u64 = 100;

/// Request `r`: spans with ids `r * PER_REQUEST + 1 ..`.
pub fn request(r: u64) -> ExportTraceServiceRequest {
    let spans = (0..PER_REQUEST)
        .map(|i| {
            let id = r * PER_REQUEST + i + 1;
            Span {
                trace_id: [&r.to_be_bytes()[..], &[7; 8]].concat(),
                span_id: id.to_be_bytes().to_vec(),
                name: "GET /api/orders".into(),
                start_time_unix_nano: 1_700_000_000_000_000_000 + id,
                end_time_unix_nano: 1_700_000_000_001_000_000 + id,
                ..Span::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// `oxeye run`, its stderr read as it comes (a full pipe would stop oxeye).
pub struct Agent {
    pub child: KillOnDrop,
    pub log: std::thread::JoinHandle<String>,
}

impl Agent {
    pub fn spawn(config: &Path) -> Agent {
        let mut child = KillOnDrop(oxeye_tests::spawn(&[
            "run",
            "-c",
            config.to_str().expect("path"),
        ]));
        let (_, log) = oxeye_tests::follow(child.0.stderr.take().expect("stderr"));
        Agent { child, log }
    }
}

/// A sample of oxeye's `/metrics` (the sum over labels), or 0.
pub fn metric(port: u16, name: &str) -> u64 {
    let Ok(page) = oxeye_tests::http_get(port, "/metrics") else {
        return 0;
    };
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub fn wait(what: &str, within: Duration, done: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn kill9(mut a: Agent) {
    oxeye_tests::signal(&a.child.0, libc::SIGKILL);
    let _ = a.child.0.wait();
}

/// Stops oxeye with SIGTERM; its stderr.
pub fn stop(mut a: Agent) -> String {
    oxeye_tests::signal(&a.child.0, libc::SIGTERM);
    let status = a.child.0.wait().expect("wait");
    let err = a.log.join().expect("log");
    assert!(status.success(), "oxeye failed: {status}\n{err}");
    err
}

/// Span id → times received.
pub fn received(sink: &Sink) -> HashMap<u64, u32> {
    let mut seen = HashMap::new();
    for req in sink.got.lock().expect("lock").iter() {
        for span in req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            let id = u64::from_be_bytes(span.span_id[..8].try_into().expect("8 bytes"));
            *seen.entry(id).or_default() += 1;
        }
    }
    seen
}

/// Sends requests `range` at `per_second` spans, each until it is accepted (as an SDK retries:
/// a request answered with an error, or not at all, is sent again); returns the requests sent
/// more than once.
pub fn send_until_accepted(port: u16, range: std::ops::Range<u64>, per_second: u64) -> u64 {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect_lazy();
        let mut client = TraceServiceClient::new(channel);
        let gap = Duration::from_secs_f64(PER_REQUEST as f64 / per_second as f64);
        let mut next = tokio::time::Instant::now();
        let mut again = 0;
        let deadline = Instant::now() + Duration::from_secs(300);
        for r in range {
            tokio::time::sleep_until(next).await;
            next += gap;
            let mut first = true;
            loop {
                let sent = tokio::time::timeout(Duration::from_secs(5), client.export(request(r)));
                if matches!(sent.await, Ok(Ok(_))) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "request {r} not accepted within 300 s"
                );
                if first {
                    again += 1;
                    first = false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        again
    })
}
