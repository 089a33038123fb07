//! The kafka exporter side by side with Rotel's (both on librdkafka), on one nisshi broker: the
//! same N spans sent over OTLP/gRPC by a load generator (oxeye synthetic → otlp exporter,
//! pinned to CPU 0) into (a) `oxeye run` with an otlp receiver and the kafka exporter at its
//! defaults, (a') the same with `partition_traces_by_id` (one message per trace), (b)
//! `rotel-agent` (OTLP receiver → kafka exporter, protobuf, batches of 2048 spans: its default
//! 8192 make messages the broker refuses), each pinned to CPU 1. A consumer in
//! this process reads the topic and counts the spans until all N are there. Per exporter: CPU
//! seconds per million spans (utime + stime of the exporter's process), spans/s, peak RSS;
//! runs interleaved, medians.
//!
//! First, the client crates alone, producing the same messages (OTLP requests of 100 spans) to
//! the same broker: `rdkafka` (librdkafka, what oxeye uses) and `rskafka` (pure Rust, no
//! consumer groups), CPU seconds of this process and wall time per message.
//!
//!     cargo build --release -p oxeye && cargo bench -p oxeye-tests --bench kafka
//!     OXEYE_BENCH_ONLY=clients cargo bench ...     # one part: clients or exporters

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use oxeye_kafka::rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use oxeye_tests::bench::{cpu_seconds, median, pinned, quick};
use oxeye_tests::broker::Broker;
use oxeye_tests::free_port;
use prost::Message as _;

const PARTITIONS: i32 = 4;

/// Messages per rskafka produce request (under the broker's 1 MB limit).
const BATCH: usize = 50;

/// The exporter under test: OTLP/gRPC in on `port`, Kafka out to `topic`.
fn start(kind: &str, oxeye: &Path, broker: &Broker, port: u16, topic: &str, dir: &Path) -> Child {
    if kind == "rotel" {
        let http = free_port();
        return pinned("1", &oxeye_tests::rotel_agent())
            .args([
                "start",
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args([
                "--exporter",
                "kafka",
                "--kafka-exporter-brokers",
                &broker.address(),
            ])
            // Rotel sends each batch as one message: its default 8192 spans make messages over
            // the broker's 1 MB limit, refused and lost. 2048 fit.
            .args(["--batch-max-size", "2048"])
            .args([
                "--kafka-exporter-traces-topic",
                topic,
                "--kafka-exporter-format",
                "protobuf",
            ])
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .spawn()
            .expect("rotel-agent");
    }
    let by_id = kind.ends_with("by trace id");
    let yaml = format!(
        "receivers:\n  otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{port}', max_recv_msg_size_mib: 16}}}}}}\nexporters:\n  kafka: {{brokers: ['{}'], traces: {{topic: {topic}}}, partition_traces_by_id: {by_id}}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [otlp], exporters: [kafka]}}\n",
        broker.address()
    );
    let cfg = dir.join("exporter.yaml");
    std::fs::write(&cfg, yaml).expect("config");
    pinned("1", oxeye)
        .args(["run", "-c"])
        .arg(cfg)
        .spawn()
        .expect("oxeye")
}

/// Counts the spans in `topic` (every partition from its start) until `n` are there.
fn count_spans(broker: &Broker, topic: &str, n: u64, within: Duration) -> u64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", format!("bench-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + within;
    let mut spans = 0;
    while spans < n && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let req = ExportTraceServiceRequest::decode(m.payload().unwrap_or_default()).expect("OTLP");
        spans += req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum::<u64>();
    }
    spans
}

struct Row {
    cpu_s: f64,
    per_s: f64,
    rss: f64,
}

fn run(kind: &str, oxeye: &Path, broker: &Broker, n: u64, round: usize) -> Row {
    let dir = std::env::temp_dir().join(format!("oxeye-bench-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let topic = format!("spans-{}-{round}", kind.replace(' ', "-"));
    broker.create_topic(&topic, PARTITIONS as u32);
    let port = free_port();
    let mut exporter = start(kind, oxeye, broker, port, &topic, &dir);
    oxeye_tests::wait_port(port);
    let load = format!(
        "receivers:\n  synthetic: {{seed: 21, batch_size: 512, spans: {{count: {n}, attributes: true}}}}\nexporters:\n  otlp: {{endpoint: 'http://127.0.0.1:{port}', compression: none, retry_on_failure: {{initial_interval: 20ms, max_interval: 200ms}}}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [otlp]}}\n"
    );
    let cfg = dir.join("load.yaml");
    std::fs::write(&cfg, load).expect("config");
    let cpu0 = cpu_seconds(exporter.id());
    let started = Instant::now();
    let mut loadgen = pinned("0", oxeye)
        .args(["run", "-c"])
        .arg(&cfg)
        .spawn()
        .expect("load");
    let got = count_spans(broker, &topic, n, Duration::from_secs(600));
    let wall = started.elapsed().as_secs_f64();
    let row = Row {
        cpu_s: cpu_seconds(exporter.id()) - cpu0,
        per_s: n as f64 / wall,
        rss: oxeye_tests::peak_rss_mib(exporter.id()).unwrap_or(0.0),
    };
    let _ = loadgen.wait();
    let _ = exporter.kill();
    let _ = exporter.wait();
    assert_eq!(got, n, "{kind}: spans in the topic");
    let _ = std::fs::remove_dir_all(&dir);
    row
}

/// An OTLP trace request of 100 spans with a few attributes each.
fn payload() -> Vec<u8> {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    };
    let spans = (0..100u64)
        .map(|i| Span {
            trace_id: [i.to_be_bytes(), [7; 8]].concat(),
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: "GET /api/orders/{id}".into(),
            start_time_unix_nano: 1_700_000_000_000_000_000 + i,
            end_time_unix_nano: 1_700_000_000_001_000_000 + i,
            attributes: vec![
                kv("http.request.method", "GET"),
                kv("url.path", "/api/orders/12345"),
                kv("server.address", "orders.internal"),
            ],
            ..Span::default()
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
    .encode_to_vec()
}

/// This process's CPU seconds (user + system, all threads: librdkafka's too).
fn own_cpu() -> f64 {
    oxeye_tests::bench::cpu_seconds(std::process::id())
}

/// `n` messages through librdkafka (a FutureProducer at oxeye's defaults), all delivered:
/// (CPU µs, wall µs) per message.
fn rdkafka_client(broker: &Broker, topic: &str, body: &[u8], n: usize) -> (f64, f64) {
    use oxeye_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.address())
            .set("linger.ms", "10")
            .set("acks", "1")
            .create()
            .expect("producer");
        let (cpu0, t0) = (own_cpu(), Instant::now());
        let mut pending = Vec::with_capacity(n);
        for _ in 0..n {
            let mut record = FutureRecord::<(), [u8]>::to(topic).payload(body);
            loop {
                match producer.send_result(record) {
                    Ok(d) => break pending.push(d),
                    Err((_, r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        for d in pending {
            d.await.expect("delivery").expect("delivered");
        }
        let per = |x: f64| x * 1e6 / n as f64;
        (per(own_cpu() - cpu0), per(t0.elapsed().as_secs_f64()))
    })
}

/// The same through rskafka: one produce request of [`BATCH`] messages at a time per
/// partition, partitions in parallel (it has no batching of its own).
fn rskafka_client(broker: &Broker, topic: &str, body: &[u8], n: usize) -> (f64, f64) {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    use rskafka::client::ClientBuilder;
    use rskafka::record::Record;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = ClientBuilder::new(vec![broker.address()])
            .build()
            .await
            .expect("rskafka client");
        let mut partitions = Vec::new();
        for p in 0..PARTITIONS {
            partitions.push(
                client
                    .partition_client(topic, p, UnknownTopicHandling::Retry)
                    .await
                    .expect("partition client"),
            );
        }
        let (cpu0, t0) = (own_cpu(), Instant::now());
        let per_partition = n / PARTITIONS as usize;
        let body = std::sync::Arc::new(body.to_vec());
        let sends = partitions.into_iter().map(|pc| {
            let body = std::sync::Arc::clone(&body);
            async move {
                for _ in 0..per_partition / BATCH {
                    let records = (0..BATCH)
                        .map(|_| Record {
                            key: None,
                            value: Some(body.to_vec()),
                            headers: Default::default(),
                            timestamp: chrono::Utc::now(),
                        })
                        .collect();
                    pc.produce(records, Compression::NoCompression)
                        .await
                        .expect("produce");
                }
            }
        });
        let tasks: Vec<_> = sends.map(tokio::spawn).collect();
        for t in tasks {
            t.await.expect("task");
        }
        let per = |x: f64| x * 1e6 / n as f64;
        (per(own_cpu() - cpu0), per(t0.elapsed().as_secs_f64()))
    })
}

fn clients(broker: &Broker, quick: bool) {
    let n = if quick { 2_000 } else { 20_000 };
    let runs = if quick { 1 } else { 5 };
    let body = payload();
    let mut rows = [(); 2].map(|_| (Vec::new(), Vec::new()));
    for round in 0..runs {
        for (i, name) in ["rdkafka", "rskafka"].iter().enumerate() {
            let topic = format!("clients-{name}-{round}");
            broker.create_topic(&topic, PARTITIONS as u32);
            let (cpu, wall) = if i == 0 {
                rdkafka_client(broker, &topic, &body, n)
            } else {
                rskafka_client(broker, &topic, &body, n)
            };
            rows[i].0.push(cpu);
            rows[i].1.push(wall);
        }
    }
    println!(
        "kafka clients: {n} messages of {} bytes (an OTLP request of 100 spans), {runs} interleaved runs, medians",
        body.len()
    );
    for (name, (cpu, wall)) in ["rdkafka", "rskafka"].iter().zip(rows) {
        let (cpu, wall) = (median(cpu), median(wall));
        println!("  {name:<8} {cpu:>6.2} µs CPU per message, {wall:>6.2} µs wall per message ({:.0} messages/s)", 1e6 / wall);
    }
}

fn main() {
    let quick = quick();
    let oxeye = oxeye_tests::bench::release_oxeye(quick);
    let n: u64 = if quick { 20_000 } else { 500_000 };
    let runs = if quick { 1 } else { 5 };
    let broker = Broker::start();
    let only = std::env::var("OXEYE_BENCH_ONLY").unwrap_or_default();
    if "clients".contains(&only) {
        clients(&broker, quick);
    }
    if !"exporters".contains(&only) {
        return;
    }
    let kinds = ["oxeye", "oxeye by trace id", "rotel"];
    let mut rows: Vec<Vec<Row>> = kinds.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for (i, kind) in kinds.iter().enumerate() {
            rows[i].push(run(kind, &oxeye, &broker, n, round));
        }
    }
    println!("kafka exporter: {n} spans over OTLP/gRPC into each, to nisshi (memory), {runs} interleaved runs, medians");
    let mut cpu = Vec::new();
    for (kind, r) in kinds.iter().zip(&rows) {
        let cpu_per_m = median(r.iter().map(|r| r.cpu_s * 1e6 / n as f64).collect());
        let per_s = median(r.iter().map(|r| r.per_s).collect());
        let rss = median(r.iter().map(|r| r.rss).collect());
        println!("  {kind:<18} {cpu_per_m:>6.2} CPU-s per million spans ({:.2} µs/span), {per_s:>8.0} spans/s, peak RSS {rss:.1} MiB", cpu_per_m);
        cpu.push(cpu_per_m);
    }
    println!(
        "  spans per CPU-second vs rotel: oxeye {:.2}x, oxeye by trace id {:.2}x",
        cpu[2] / cpu[0],
        cpu[2] / cpu[1]
    );
}
