//! Sample records and README example extraction for the filter and transform tests
//! (feature `testing`).

use std::net::IpAddr;
use std::sync::Arc;

use oxeye_api::{
    Attributes, Batch, Comm, Direction, Flow, Resource, Span, SpanId, SpanKind, StatusCode,
    TaskContext, TraceId, Transport, Value,
};

fn span(i: u8, name: &str, kind: SpanKind, dur_ns: u64, attrs: &[(&str, Value)]) -> Span {
    Span {
        trace_id: TraceId([i; 16]),
        span_id: SpanId([i; 8]),
        name: name.into(),
        kind,
        start_unix_ns: 1_000_000_000,
        end_unix_ns: 1_000_000_000 + dur_ns,
        attributes: attrs.iter().cloned().collect(),
        task: Some(TaskContext {
            pid: 100 + i as u32,
            tid: 100 + i as u32,
            comm: Comm::new("app"),
            cpu: 0,
        }),
        ..Span::default()
    }
}

/// Spans the README examples run on: a server span with an id in its path and personal
/// attributes, a health check, a metrics scrape, a static asset, a failed short `read` by
/// `sshd`, and a slow `write` by `sshd`.
pub fn sample_spans() -> Batch {
    let mut read = span(5, "read", SpanKind::Internal, 500_000, &[]);
    read.status = StatusCode::Error;
    read.return_value = Some(-11);
    read.task.as_mut().expect("task").comm = Comm::new("sshd");
    let mut write = span(6, "write", SpanKind::Internal, 3_000_000, &[]);
    write.return_value = Some(512);
    write.task.as_mut().expect("task").comm = Comm::new("sshd");
    let spans = vec![
        span(
            1,
            "GET /users/42",
            SpanKind::Server,
            12_000_000,
            &[
                ("user.email", "ada@example.com".into()),
                ("http.request.header.cookie", "secret".into()),
                (
                    "url.full",
                    "https://shop.example.com/users/42?tab=orders".into(),
                ),
            ],
        ),
        span(
            2,
            "GET /health",
            SpanKind::Server,
            200_000,
            &[("http.route", "/health".into())],
        ),
        span(3, "GET /metrics", SpanKind::Server, 900_000, &[]),
        span(4, "GET /static/app.js", SpanKind::Server, 1_500_000, &[]),
        read,
        write,
    ];
    Batch::spans(sample_resource(), spans)
}

fn sample_resource() -> Arc<Resource> {
    Arc::new(Resource::new(
        [("service.name", "shop"), ("host.name", "node-1")]
            .into_iter()
            .collect(),
    ))
}

fn flow(src: &str, dst: &str, sport: u16, dport: u16, transport: Transport) -> Flow {
    Flow {
        src_addr: src.parse::<IpAddr>().expect("address"),
        dst_addr: dst.parse::<IpAddr>().expect("address"),
        src_port: sport,
        dst_port: dport,
        transport,
        ether_type: 0x0800,
        ifindex: 2,
        interface: Some("eth0".into()),
        direction: Direction::Transmit,
        packets: 2,
        bytes: 180,
        tcp_flags: Default::default(),
        first_seen_unix_ns: 1_000,
        last_seen_unix_ns: 2_000,
        window_start_unix_ns: 0,
        window_end_unix_ns: 10_000,
        attributes: Attributes::new(),
    }
}

/// Flows the README examples run on: a DNS query, its answer, an HTTPS connection and an ARP
/// frame.
pub fn sample_flows() -> Batch {
    let mut arp = flow("0.0.0.0", "0.0.0.0", 0, 0, Transport::None);
    arp.ether_type = 0x0806;
    Batch::flows(
        sample_resource(),
        vec![
            flow("10.0.0.5", "10.0.0.53", 40001, 53, Transport::Udp),
            flow("10.0.0.53", "10.0.0.5", 53, 40001, Transport::Udp),
            flow("10.0.0.5", "93.184.216.34", 40002, 443, Transport::Tcp),
            arp,
        ],
    )
}

/// The YAML examples of a README: each ```yaml block preceded by `<!-- example: NAME -->`.
/// Panics on a YAML block without a name, so no example goes untested.
pub fn readme_examples(readme: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if let Some(n) = line
            .strip_prefix("<!-- example: ")
            .and_then(|r| r.strip_suffix(" -->"))
        {
            name = Some(n.to_string());
        } else if line.trim() == "```yaml" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let n = name.take().unwrap_or_else(|| {
                panic!("a yaml block has no `<!-- example: NAME -->`: {body:?}")
            });
            out.push((n, body.join("\n")));
        }
    }
    out
}

/// The component config of a one-component example (`filter/x: {...}` → `{...}`) as YAML text.
pub fn example_config(yaml: &str) -> String {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml).expect("example is YAML");
    let map = doc.as_mapping().expect("example is a mapping");
    assert_eq!(map.len(), 1, "one component per example");
    let (_, config) = map.iter().next().expect("one entry");
    serde_yaml::to_string(config).expect("serializes")
}
