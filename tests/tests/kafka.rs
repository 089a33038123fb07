//! The kafka exporter and receiver with the real binary and a real broker (nisshi, in memory, on
//! loopback): an agent (otlp in, kafka out, one message per trace) → a topic of 4 partitions →
//! two gateways in one consumer group (kafka in, otlp out) → a sink per gateway. Every span
//! arrives once and every trace on one gateway; a gateway killed mid-run hands its partitions
//! to the other and nothing is lost (what was read but not committed comes again: counted).
//! Bad settings and an unreachable broker are clear errors.

use std::sync::Arc;
use std::time::Duration;

use oxeye_tests::broker::Broker;
use oxeye_tests::free_port;

mod common;
use common::load::{kill9, received, send_until_accepted, stop, wait, Agent, PER_REQUEST};
use common::otlp::{sink_endpoint, Sink};

/// The tests share the one machine's two cores: one at a time.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// `oxeye run -c` with `yaml`, once `ports` listen.
fn oxeye(name: &str, yaml: &str, ports: &[u16]) -> Agent {
    let config = oxeye_tests::temp_config(name, yaml);
    let a = Agent::spawn(&config);
    for &p in ports {
        oxeye_tests::wait_port(p);
    }
    a
}

/// otlp/gRPC on `grpc` → kafka, one message per trace.
fn agent(broker: u16, grpc: u16, metrics: u16) -> Agent {
    let yaml = format!(
        "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc}}}
    acknowledgements: true
exporters:
  kafka:
    brokers: [127.0.0.1:{broker}]
    partition_traces_by_id: true
service:
  telemetry:
    metrics: {{address: 127.0.0.1:{metrics}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [kafka]}}
"
    );
    oxeye(&format!("kafka-agent-{grpc}"), &yaml, &[grpc, metrics])
}

/// kafka (group `gateways`) → otlp to the sink on `sink`, its queue on disk (under the
/// system's temporary directory, one per gateway): what the docs prescribe for no loss when a
/// gateway is killed.
fn gateway(broker: u16, sink: u16, metrics: u16) -> Agent {
    let queue = std::env::temp_dir().join(format!("oxeye-kafka-gateway-queue-{metrics}"));
    let _ = std::fs::remove_dir_all(&queue);
    let yaml = format!(
        "receivers:
  kafka:
    brokers: [127.0.0.1:{broker}]
    group_id: gateways
    initial_offset: earliest
    session_timeout: 6s
    heartbeat_interval: 1s
exporters:
  otlp:
    endpoint: http://127.0.0.1:{sink}
    sending_queue: {{storage: {{directory: {queue}}}}}
service:
  telemetry:
    metrics: {{address: 127.0.0.1:{metrics}}}
  pipelines:
    traces: {{receivers: [kafka], exporters: [otlp]}}
",
        queue = queue.display()
    );
    oxeye(&format!("kafka-gateway-{metrics}"), &yaml, &[metrics])
}

/// Trace ids (request numbers) a sink received.
fn traces(sink: &Sink) -> std::collections::HashSet<u64> {
    sink.got
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| u64::from_be_bytes(s.trace_id[..8].try_into().expect("16 bytes")))
        .collect()
}

struct Setup {
    _rt: tokio::runtime::Runtime,
    broker: Broker,
    sinks: [Arc<Sink>; 2],
    sink_ports: [u16; 2],
}

fn setup() -> Setup {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let broker = Broker::start();
    broker.create_topic("otlp_spans", 4);
    let sinks = [Arc::new(Sink::default()), Arc::new(Sink::default())];
    let sink_ports = [
        sink_endpoint(&rt, Arc::clone(&sinks[0])),
        sink_endpoint(&rt, Arc::clone(&sinks[1])),
    ];
    Setup {
        _rt: rt,
        broker,
        sinks,
        sink_ports,
    }
}

/// Every span of requests `0..requests` in the two sinks together: (spans seen twice or more,
/// and the most copies of one).
fn all_arrived(s: &Setup, requests: u64, within: Duration) -> Result<(u64, u32), String> {
    let total = (requests * PER_REQUEST) as usize;
    let both = || {
        let mut seen = received(&s.sinks[0]);
        for (id, n) in received(&s.sinks[1]) {
            *seen.entry(id).or_default() += n;
        }
        seen
    };
    let t0 = std::time::Instant::now();
    while both().len() < total {
        if t0.elapsed() > within {
            return Err(format!(
                "not every span at the sinks within {within:?}: {} of {total} (sinks: {} and {} spans)",
                both().len(),
                s.sinks[0].spans(),
                s.sinks[1].spans()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1)); // late duplicates
    let seen = both();
    assert_eq!(seen.len(), total, "span ids other than those sent");
    let twice = seen.values().filter(|&&n| n > 1).count() as u64;
    Ok((twice, seen.values().copied().max().unwrap_or(0)))
}

#[test]
fn two_gateways_in_a_group_share_the_partitions_and_every_span_arrives_once() {
    let _one = alone();
    let s = setup();
    let (grpc, am, gm) = (free_port(), free_port(), [free_port(), free_port()]);
    let gateways = [
        gateway(s.broker.port, s.sink_ports[0], gm[0]),
        gateway(s.broker.port, s.sink_ports[1], gm[1]),
    ];
    let agent = agent(s.broker.port, grpc, am);
    // 200 000 spans at 20 000/s, one trace per request.
    const REQUESTS: u64 = 2_000;
    let again = send_until_accepted(grpc, 0..REQUESTS, 20_000);
    assert_eq!(again, 0, "the agent refused requests");
    let (twice, _) = all_arrived(&s, REQUESTS, Duration::from_secs(60)).expect("delivered");
    assert_eq!(twice, 0, "spans delivered twice in a run without failures");
    let (a, b) = (traces(&s.sinks[0]), traces(&s.sinks[1]));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "one gateway got every partition: {} / {} traces",
        a.len(),
        b.len()
    );
    assert_eq!(
        a.intersection(&b).count(),
        0,
        "traces split between the gateways"
    );
    let err = stop(agent);
    assert!(err.contains("kafka exporter connected"), "{err}");
    for g in gateways {
        let err = stop(g);
        assert!(err.contains("kafka receiver consuming"), "{err}");
    }
    println!("gateways: {} and {} traces", a.len(), b.len());
}

#[test]
fn a_gateway_killed_mid_run_hands_its_partitions_over_and_after_its_restart_nothing_is_lost() {
    let _one = alone();
    let s = setup();
    let (grpc, am, gm) = (free_port(), free_port(), [free_port(), free_port()]);
    let first = gateway(s.broker.port, s.sink_ports[0], gm[0]);
    let second = gateway(s.broker.port, s.sink_ports[1], gm[1]);
    let agent = agent(s.broker.port, grpc, am);
    const REQUESTS: u64 = 4_000; // 400 000 spans at 20 000/s: 20 s
    let load = std::thread::spawn(move || send_until_accepted(grpc, 0..REQUESTS, 20_000));
    // Once the first gateway delivered some, kill it mid-run.
    wait(
        "the first gateway delivers",
        Duration::from_secs(30),
        || s.sinks[0].spans() > 20_000,
    );
    kill9(first);
    // Its partitions move to the second gateway after `session_timeout` (6 s); then it comes
    // back, as an orchestrator restarts it, and delivers what its queue on disk holds.
    std::thread::sleep(Duration::from_secs(9));
    let first = gateway(s.broker.port, s.sink_ports[0], gm[0]);
    assert_eq!(load.join().expect("load"), 0, "the agent refused requests");
    let (twice, most) = match all_arrived(&s, REQUESTS, Duration::from_secs(90)) {
        Ok(r) => r,
        Err(e) => panic!(
            "{e}; the gateway left:\n{}\nthe broker:\n{}",
            stop(second),
            s.broker.log()
        ),
    };
    println!("spans delivered twice after the kill: {twice} (at most {most} copies)");
    assert!(most <= 2, "a span came {most} times");
    // Read again only what the killed gateway had read and not committed: it had delivered it.
    let killed = s.sinks[0].spans() as u64;
    assert!(
        twice <= killed,
        "{twice} duplicates, but the killed gateway delivered {killed}"
    );
    stop(agent);
    stop(first);
    let err = stop(second);
    let all = "otlp_spans[0], otlp_spans[1], otlp_spans[2], otlp_spans[3]";
    assert!(
        err.contains(&format!(
            "partitions assigned component=kafka partitions={all}"
        )),
        "the killed gateway's partitions did not move:\n{err}"
    );
}

#[test]
fn metrics_and_logs_cross_as_otlp_json() {
    let _one = alone();
    let s = setup();
    s.broker.create_topic("otlp_metrics", 2);
    s.broker.create_topic("otlp_logs", 2);
    let (am, gm) = (free_port(), free_port());
    let json = "{encoding: otlp_json}";
    let gateway = oxeye(
        "kafka-json-gateway",
        &format!(
            "receivers:
  kafka:
    brokers: [{broker}]
    initial_offset: earliest
    metrics: {json}
    logs: {json}
exporters:
  otlp: {{endpoint: http://127.0.0.1:{sink}}}
service:
  telemetry:
    metrics: {{address: 127.0.0.1:{gm}}}
  pipelines:
    metrics: {{receivers: [kafka], exporters: [otlp]}}
    logs: {{receivers: [kafka], exporters: [otlp]}}
",
            broker = s.broker.address(),
            sink = s.sink_ports[0],
        ),
        &[gm],
    );
    // The agent ends once its synthetic records are all out: delivered to the broker.
    let agent = oxeye(
        "kafka-json-agent",
        &format!(
            "receivers:
  synthetic: {{metrics: {{count: 5000, series: 50}}, logs: {{count: 7000}}}}
exporters:
  kafka:
    brokers: [{broker}]
    metrics: {json}
    logs: {json}
service:
  telemetry:
    metrics: {{address: 127.0.0.1:{am}}}
  pipelines:
    metrics: {{receivers: [synthetic], exporters: [kafka]}}
    logs: {{receivers: [synthetic], exporters: [kafka]}}
",
            broker = s.broker.address(),
        ),
        &[],
    );
    let err = stop_when_done(agent);
    assert!(err.contains("12000 out"), "{err}");
    let sink = &s.sinks[0];
    sink.wait_until(Duration::from_secs(60), || {
        sink.points() >= 5000 && sink.log_records() >= 7000
    });
    assert_eq!((sink.points(), sink.log_records()), (5000, 7000));
    let err = stop(gateway);
    assert!(err.contains("12000 out"), "{err}");
}

#[test]
fn spans_cross_a_tls_only_broker() {
    let _one = alone();
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = rsa_pki(pki.path());
    let broker = Broker::start_tls(&cert, &key, &ca);
    broker.create_topic("otlp_spans", 2);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink::default());
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, am, gm) = (free_port(), free_port(), free_port());
    let tls = format!("tls: {{ca_file: {}}}", ca.display());
    let gateway = oxeye(
        "kafka-tls-gateway",
        &format!(
            "receivers:
  kafka: {{brokers: [{broker}], initial_offset: earliest, {tls}}}
exporters:
  otlp: {{endpoint: http://127.0.0.1:{sink_port}}}
service:
  telemetry:
    metrics: {{address: 127.0.0.1:{gm}}}
  pipelines:
    traces: {{receivers: [kafka], exporters: [otlp]}}
",
            broker = broker.address(),
        ),
        &[gm],
    );
    let agent = oxeye(
        "kafka-tls-agent",
        &format!(
            "receivers:
  otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:{grpc}}}}}}}
exporters:
  kafka: {{brokers: [{broker}], {tls}}}
service:
  telemetry:
    metrics: {{address: 127.0.0.1:{am}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [kafka]}}
",
            broker = broker.address(),
        ),
        &[grpc, am],
    );
    assert_eq!(send_until_accepted(grpc, 0..100, 20_000), 0);
    sink.wait_for(100 * PER_REQUEST as usize, Duration::from_secs(30));
    assert_eq!(received(&sink).len(), 100 * PER_REQUEST as usize);
    stop(agent);
    stop(gateway);

    // Without `tls:`, the TLS-only broker never answers: an error at start.
    let yaml = format!(
        "receivers:
  otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:{grpc}}}}}}}
exporters:
  kafka: {{brokers: [{}]}}
service:
  pipelines:
    traces: {{receivers: [otlp], exporters: [kafka]}}
",
        broker.address()
    );
    let config = oxeye_tests::temp_config("kafka-tls-plain", &yaml);
    let out = oxeye_tests::spawn(&["run", "-c", config.to_str().expect("path")])
        .wait_with_output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("did not answer"), "{err}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it, RSA, made with the openssl
/// command (nisshi does not load the ECDSA keys rcgen makes): (CA, certificate, key) files.
fn rsa_pki(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (installed by tests/setup.sh)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let rsa = ["-newkey", "rsa:2048", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &rsa,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=oxeye-test-ca",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &rsa,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// Waits for oxeye to end by itself (its receivers done); its stderr.
fn stop_when_done(mut a: Agent) -> String {
    let status = a.child.0.wait().expect("wait");
    let err = a.log.join().expect("log");
    assert!(status.success(), "oxeye failed: {status}\n{err}");
    err
}

#[test]
fn bad_settings_and_an_unreachable_broker_are_clear_errors() {
    let _one = alone();
    // validate refuses what run would: every mistake at once, with its path.
    let yaml = "receivers:
  kafka:
    brokers: [nowhere]
    heartbeat_interval: 20s
    metrics: {topic: otlp_spans}
exporters:
  kafka:
    producer: {required_acks: 2, compression: brotli}
service:
  pipelines:
    traces: {receivers: [kafka], exporters: [kafka]}
";
    let config = oxeye_tests::temp_config("kafka-bad", yaml);
    let out = oxeye_tests::spawn(&["validate", "-c", config.to_str().expect("path")])
        .wait_with_output()
        .expect("validate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for expected in [
        "receivers.kafka.brokers[0]",
        "`nowhere` is not `host:port`",
        "heartbeat_interval",
        "metrics.topic",
        "brotli",
    ] {
        assert!(err.contains(expected), "no `{expected}` in:\n{err}");
    }

    // No broker there: run stops at once and says which brokers did not answer.
    let (dead, grpc) = (free_port(), free_port());
    let yaml = format!(
        "receivers:
  otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:{grpc}}}}}}}
exporters:
  kafka: {{brokers: [127.0.0.1:{dead}]}}
service:
  pipelines:
    traces: {{receivers: [otlp], exporters: [kafka]}}
"
    );
    let config = oxeye_tests::temp_config("kafka-dead", &yaml);
    let t0 = std::time::Instant::now();
    let out = oxeye_tests::spawn(&["run", "-c", config.to_str().expect("path")])
        .wait_with_output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{dead} did not answer")),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );

    // A topic that does not exist: named, with what to do.
    let broker = Broker::start();
    let yaml = format!(
        "receivers:
  kafka: {{brokers: [127.0.0.1:{port}], traces: {{topic: nope}}}}
exporters:
  nop:
service:
  pipelines:
    traces: {{receivers: [kafka], exporters: [nop]}}
",
        port = broker.port
    );
    let config = oxeye_tests::temp_config("kafka-no-topic", &yaml);
    let out = oxeye_tests::spawn(&["run", "-c", config.to_str().expect("path")])
        .wait_with_output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("topic `nope` not found"), "{err}");
}
