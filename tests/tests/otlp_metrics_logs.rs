//! Metrics and logs through oxeye (otlp receiver → otlp exporter → a loopback sink decoding with
//! the official protos): what the official OpenTelemetry Python SDK sends and hand-made
//! requests with every field arrive unchanged over gRPC, HTTP/protobuf (gzip) and HTTP/JSON;
//! data points OTLP says cannot be right are refused with a partial success and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, Exemplar, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use oxeye_tests::free_port;
use prost::Message;

mod common;
use common::otlp::{gzip, http_post, sink_endpoint, Sink};
use common::run::{component, counter, sdk_python, Oxeye};

/// otlp receiver → (nop) → otlp exporter to the sink, for metrics and logs.
fn yaml(grpc: u16, http: u16, sink: u16, nop: bool) -> String {
    let processors = if nop { "[nop]" } else { "[]" };
    format!(
        "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: '127.0.0.1:{grpc}'}}
      http: {{endpoint: '127.0.0.1:{http}'}}
processors:
  nop:
exporters:
  otlp:
    endpoint: 'http://127.0.0.1:{sink}'
    batch: {{timeout: 20ms}}
service:
  pipelines:
    metrics: {{receivers: [otlp], processors: {processors}, exporters: [otlp]}}
    logs: {{receivers: [otlp], processors: {processors}, exporters: [otlp]}}
"
    )
}

type FlatMetric = (
    Option<Resource>,
    String,
    Option<InstrumentationScope>,
    String,
    Metric,
);
type FlatLog = (
    Option<Resource>,
    String,
    Option<InstrumentationScope>,
    String,
    LogRecord,
);

/// Every metric with its resource and scope, in a stable order: requests may group metrics
/// differently, their contents must not differ.
fn metrics(requests: &[ExportMetricsServiceRequest]) -> Vec<FlatMetric> {
    let mut out = Vec::new();
    for r in requests {
        for rm in &r.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    out.push((
                        rm.resource.clone(),
                        rm.schema_url.clone(),
                        sm.scope.clone(),
                        sm.schema_url.clone(),
                        m.clone(),
                    ));
                }
            }
        }
    }
    out.sort_by_key(|f| format!("{:?}{:?}", f.2, f.4));
    out
}

fn logs(requests: &[ExportLogsServiceRequest]) -> Vec<FlatLog> {
    let mut out = Vec::new();
    for r in requests {
        for rl in &r.resource_logs {
            for sl in &rl.scope_logs {
                for l in &sl.log_records {
                    out.push((
                        rl.resource.clone(),
                        rl.schema_url.clone(),
                        sl.scope.clone(),
                        sl.schema_url.clone(),
                        l.clone(),
                    ));
                }
            }
        }
    }
    out.sort_by_key(|f| format!("{:?}{:?}", f.2, f.4));
    out
}

fn assert_same<T: PartialEq + std::fmt::Debug>(what: &str, sent: &[T], got: &[T]) {
    assert_eq!(sent.len(), got.len(), "{what} count");
    for (s, g) in sent.iter().zip(got) {
        assert_eq!(s, g, "a {what} changed on its way through oxeye");
    }
}

#[test]
fn python_sdk_metrics_and_logs_arrive_unchanged_over_grpc_and_http() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (protocol, nop) in [("grpc", false), ("http", true)] {
        let sink = Arc::new(Sink::default());
        let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
        let (grpc, http) = (free_port(), free_port());
        let oxeye = Oxeye::start(&yaml(grpc, http, sink_port, nop), &[grpc, http]);
        let prefix = std::env::temp_dir().join(format!(
            "oxeye-otel-sdk-ml-{}-{protocol}",
            std::process::id()
        ));
        let endpoint = match protocol {
            "grpc" => format!("http://127.0.0.1:{grpc}"),
            _ => format!("http://127.0.0.1:{http}"),
        };
        let out = std::process::Command::new(sdk_python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/workloads/otel_sdk_metrics_logs.py"
            ))
            .args([protocol, &endpoint])
            .arg(&prefix)
            .output()
            .expect("run the SDK script");
        assert!(
            out.status.success(),
            "SDK script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |ext: &str| {
            let path = format!("{}.{ext}.pb", prefix.display());
            let bytes = std::fs::read(&path).expect("expected request");
            let _ = std::fs::remove_file(&path);
            bytes
        };
        let sent_metrics =
            ExportMetricsServiceRequest::decode(&read("metrics")[..]).expect("metrics");
        let sent_logs = ExportLogsServiceRequest::decode(&read("logs")[..]).expect("logs");
        let (m, l) = (metrics(&[sent_metrics]), logs(&[sent_logs]));
        let points = points_of(&m);
        assert!(
            points >= 15 && l.len() == 28,
            "{points} points, {} logs",
            l.len()
        );
        let kinds: std::collections::HashSet<_> = m
            .iter()
            .map(|f| std::mem::discriminant(f.4.data.as_ref().expect("data")))
            .collect();
        assert_eq!(
            kinds.len(),
            4,
            "sum, gauge, histogram, exponential histogram"
        );
        sink.wait_until(Duration::from_secs(10), || {
            sink.points() >= points && sink.log_records() >= l.len()
        });
        let report = oxeye.stop();
        assert_same("metric", &m, &metrics(&sink.metrics.lock().expect("lock")));
        assert_same("log record", &l, &logs(&sink.logs.lock().expect("lock")));
        let t = component(&report, "exporters/otlp");
        assert_eq!(
            (t.emitted(), t.dropped_total()),
            ((points + l.len()) as u64, 0),
            "{protocol}"
        );
        // Without a processor, forwarded as received (never decoded); with one, decoded.
        let forwarded = |name, source| counter(&report, "exporters/otlp", name, source);
        assert_eq!(
            (
                forwarded("otlp_forwarded_data_points", "metrics"),
                forwarded("otlp_forwarded_log_records", "logs")
            ),
            if nop {
                (0, 0)
            } else {
                (points as u64, l.len() as u64)
            },
            "{protocol}, nop: {nop}"
        );
    }
}

fn points_of(m: &[FlatMetric]) -> usize {
    m.iter()
        .map(|f| match f.4.data.as_ref() {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        })
        .sum()
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

fn resource() -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", any_value::Value::StringValue("api".into())),
            kv(
                "map",
                any_value::Value::KvlistValue(KeyValueList {
                    values: vec![kv("a", any_value::Value::IntValue(1))],
                }),
            ),
        ],
        dropped_attributes_count: 7,
        entity_refs: vec![EntityRef {
            schema_url: "https://example.com/entities".into(),
            r#type: "service".into(),
            id_keys: vec!["service.name".into()],
            description_keys: vec![],
        }],
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "lib.one".into(),
        version: "0.9".into(),
        attributes: vec![kv("scope.attr", any_value::Value::IntValue(1))],
        dropped_attributes_count: 6,
    }
}

/// Every metric type with what the Python SDK does not send: summaries, int exemplars,
/// flags, metadata, min/max, negative buckets, a zero threshold, NaN gauges, no value.
fn every_metric_field() -> ExportMetricsServiceRequest {
    use any_value::Value as V;
    let attrs = vec![
        kv("s", V::StringValue("ünïcode".into())),
        kv("bytes", V::BytesValue(vec![0, 255])),
        kv("list", V::ArrayValue(ArrayValue { values: vec![] })),
    ];
    let exemplars = vec![
        Exemplar {
            filtered_attributes: vec![kv("user", V::StringValue("u1".into()))],
            time_unix_nano: 1_700_000_000_000_000_001,
            span_id: vec![7; 8],
            trace_id: vec![9; 16],
            value: Some(exemplar::Value::AsInt(-3)),
        },
        Exemplar {
            time_unix_nano: 1_700_000_000_000_000_002,
            value: Some(exemplar::Value::AsDouble(0.5)),
            ..Default::default()
        },
    ];
    let number = |v: Option<number_data_point::Value>, flags: u32| NumberDataPoint {
        attributes: attrs.clone(),
        start_time_unix_nano: 1_699_999_999_000_000_000,
        time_unix_nano: 1_700_000_000_000_000_000,
        exemplars: exemplars.clone(),
        flags,
        value: v,
    };
    let metric = |name: &str, data: Data| Metric {
        name: name.into(),
        description: format!("{name} described"),
        unit: "ms".into(),
        metadata: vec![kv("prometheus.type", V::StringValue("counter".into()))],
        data: Some(data),
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: vec![
                    metric(
                        "gauge",
                        Data::Gauge(Gauge {
                            data_points: vec![
                                number(Some(number_data_point::Value::AsDouble(f64::NAN)), 0),
                                number(None, 1),
                                number(Some(number_data_point::Value::AsInt(i64::MIN)), 0),
                            ],
                        }),
                    ),
                    metric(
                        "sum",
                        Data::Sum(Sum {
                            data_points: vec![number(Some(number_data_point::Value::AsInt(42)), 0)],
                            aggregation_temporality: 1,
                            is_monotonic: false,
                        }),
                    ),
                    metric(
                        "histogram",
                        Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                attributes: attrs.clone(),
                                start_time_unix_nano: 1,
                                time_unix_nano: 2,
                                count: 6,
                                sum: Some(-1.5),
                                bucket_counts: vec![1, 2, 3],
                                explicit_bounds: vec![-1.0, 10.0],
                                exemplars: exemplars.clone(),
                                flags: 0,
                                min: Some(-2.0),
                                max: None,
                            }],
                            aggregation_temporality: 2,
                        }),
                    ),
                    metric(
                        "exp_histogram",
                        Data::ExponentialHistogram(ExponentialHistogram {
                            data_points: vec![ExponentialHistogramDataPoint {
                                attributes: attrs.clone(),
                                start_time_unix_nano: 1,
                                time_unix_nano: 2,
                                count: 10,
                                sum: None,
                                scale: -3,
                                zero_count: 1,
                                positive: Some(Buckets {
                                    offset: -2,
                                    bucket_counts: vec![4, 0, 1],
                                }),
                                negative: Some(Buckets {
                                    offset: 5,
                                    bucket_counts: vec![4],
                                }),
                                flags: 0,
                                exemplars: exemplars.clone(),
                                min: Some(-40.0),
                                max: Some(9.0),
                                zero_threshold: 1e-9,
                            }],
                            aggregation_temporality: 1,
                        }),
                    ),
                    metric(
                        "summary",
                        Data::Summary(Summary {
                            data_points: vec![SummaryDataPoint {
                                attributes: attrs.clone(),
                                start_time_unix_nano: 1,
                                time_unix_nano: 2,
                                count: 100,
                                sum: 250.0,
                                quantile_values: vec![
                                    ValueAtQuantile {
                                        quantile: 0.0,
                                        value: 0.1,
                                    },
                                    ValueAtQuantile {
                                        quantile: 0.99,
                                        value: 9.5,
                                    },
                                ],
                                flags: 0,
                            }],
                        }),
                    ),
                ],
                schema_url: "https://opentelemetry.io/schemas/1.20.0".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
        }],
    }
}

/// Log records with every body type, dropped counts, flags and event names.
fn every_log_field() -> ExportLogsServiceRequest {
    use any_value::Value as V;
    let bodies = [
        Some(V::StringValue("line\nwith\u{1b}[31m escapes".into())),
        Some(V::KvlistValue(KeyValueList {
            values: vec![kv("nested", V::ArrayValue(ArrayValue { values: vec![] }))],
        })),
        Some(V::BytesValue(vec![1, 2, 3])),
        Some(V::DoubleValue(-0.0)),
        None,
    ];
    let records = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| LogRecord {
            time_unix_nano: if i == 0 {
                0
            } else {
                1_700_000_000_000_000_000 + i as u64
            },
            observed_time_unix_nano: 1_700_000_000_000_000_100,
            severity_number: [0, 9, 17, 24, 3][i],
            severity_text: ["", "INFO", "error", "FATAL", "trace"][i].into(),
            body: body.map(|v| AnyValue { value: Some(v) }),
            attributes: vec![kv("i", V::IntValue(i as i64))],
            dropped_attributes_count: i as u32,
            flags: if i % 2 == 0 { 1 } else { 0 },
            trace_id: if i % 2 == 0 { vec![0xab; 16] } else { vec![] },
            span_id: if i % 2 == 0 { vec![0xcd; 8] } else { vec![] },
            event_name: if i == 1 {
                "process.exec".into()
            } else {
                String::new()
            },
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource()),
            scope_logs: vec![
                ScopeLogs {
                    scope: Some(scope()),
                    log_records: records,
                    schema_url: "https://opentelemetry.io/schemas/1.20.0".into(),
                },
                ScopeLogs {
                    scope: Some(InstrumentationScope::default()),
                    log_records: vec![LogRecord {
                        body: Some(AnyValue {
                            value: Some(V::StringValue("bare".into())),
                        }),
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                },
            ],
            schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
        }],
    }
}

/// NaN is not equal to itself: compare the encoded bytes of each metric instead.
fn encoded(m: &[FlatMetric]) -> Vec<Vec<u8>> {
    m.iter()
        .map(|f| {
            let mut b = f.4.encode_to_vec();
            b.extend(f.0.as_ref().map(Message::encode_to_vec).unwrap_or_default());
            b.extend(f.2.as_ref().map(Message::encode_to_vec).unwrap_or_default());
            b.extend(f.1.as_bytes());
            b.extend(f.3.as_bytes());
            b
        })
        .collect()
}

#[test]
fn every_metric_and_log_field_survives_grpc_http_protobuf_gzip_and_json() {
    // Forwarded as received, and decoded and encoded again (a processor between).
    for nop in [false, true] {
        every_field_survives(nop);
    }
}

fn every_field_survives(nop: bool) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink::default());
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, http) = (free_port(), free_port());
    let oxeye = Oxeye::start(&yaml(grpc, http, sink_port, nop), &[grpc, http]);
    let (m, l) = (every_metric_field(), every_log_field());
    // gRPC.
    rt.block_on(async {
        let url = format!("http://127.0.0.1:{grpc}");
        let mut c = MetricsServiceClient::connect(url.clone())
            .await
            .expect("connect");
        let r = c.export(m.clone()).await.expect("metrics").into_inner();
        assert_eq!(r.partial_success, None);
        let mut c = LogsServiceClient::connect(url).await.expect("connect");
        let r = c.export(l.clone()).await.expect("logs").into_inner();
        assert_eq!(r.partial_success, None);
    });
    // HTTP: protobuf, gzip'd protobuf, JSON.
    for (path, body) in [
        ("/v1/metrics", m.encode_to_vec()),
        ("/v1/logs", l.encode_to_vec()),
    ] {
        let proto = [("content-type", "application/x-protobuf")];
        let (status, _, _) = http_post(http, path, &proto, &body);
        assert_eq!(status, 200, "{path} protobuf");
        let zipped = [
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ];
        let (status, _, _) = http_post(http, path, &zipped, &gzip(&body));
        assert_eq!(status, 200, "{path} gzip");
    }
    let json = [("content-type", "application/json")];
    // NaN has no JSON form: the JSON request goes without the NaN point.
    let mut m_json = m.clone();
    if let Some(Data::Gauge(g)) = &mut m_json.resource_metrics[0].scope_metrics[0].metrics[0].data {
        g.data_points.remove(0);
    }
    let body = serde_json::to_vec(&m_json).expect("json");
    let (status, _, answer) = http_post(http, "/v1/metrics", &json, &body);
    assert_eq!(
        status,
        200,
        "metrics json: {}",
        String::from_utf8_lossy(&answer)
    );
    let body = serde_json::to_vec(&l).expect("json");
    let (status, _, answer) = http_post(http, "/v1/logs", &json, &body);
    assert_eq!(
        status,
        200,
        "logs json: {}",
        String::from_utf8_lossy(&answer)
    );

    let sent_m: Vec<_> = [&m, &m, &m, &m_json].map(|r| r.clone()).to_vec();
    let sent_l = vec![l.clone(); 4];
    let (points, records) = (points_of(&metrics(&sent_m)), logs(&sent_l).len());
    sink.wait_until(Duration::from_secs(10), || {
        sink.points() >= points && sink.log_records() >= records
    });
    let report = oxeye.stop();
    assert_eq!(
        encoded(&metrics(&sent_m)),
        encoded(&metrics(&sink.metrics.lock().expect("lock"))),
        "every metric field survives"
    );
    assert_same(
        "log record",
        &logs(&sent_l),
        &logs(&sink.logs.lock().expect("lock")),
    );
    let t = component(&report, "exporters/otlp");
    assert_eq!(
        (t.emitted(), t.dropped_total()),
        ((points + records) as u64, 0)
    );
}

#[test]
fn impossible_points_and_bad_ids_are_refused_with_a_partial_success_and_counted() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink::default());
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, http) = (free_port(), free_port());
    let oxeye = Oxeye::start(&yaml(grpc, http, sink_port, false), &[grpc, http]);
    let mut m = every_metric_field();
    let metrics = &mut m.resource_metrics[0].scope_metrics[0].metrics;
    // Buckets adding up to 6, count 7: the histogram's one point is refused.
    if let Some(Data::Histogram(h)) = &mut metrics[2].data {
        h.data_points[0].count = 7;
    }
    // A NaN sum: the summary's point is refused.
    if let Some(Data::Summary(s)) = &mut metrics[4].data {
        s.data_points[0].sum = f64::NAN;
    }
    let mut l = every_log_field();
    l.resource_logs[0].scope_logs[0].log_records[0].trace_id = vec![1; 5];
    let (m_answer, l_answer) = rt.block_on(async {
        let url = format!("http://127.0.0.1:{grpc}");
        let mut c = MetricsServiceClient::connect(url.clone())
            .await
            .expect("connect");
        let m_answer: ExportMetricsServiceResponse =
            c.export(m.clone()).await.expect("metrics").into_inner();
        let mut c = LogsServiceClient::connect(url).await.expect("connect");
        (
            m_answer,
            c.export(l.clone()).await.expect("logs").into_inner(),
        )
    });
    let p = m_answer.partial_success.expect("a partial success");
    assert_eq!(p.rejected_data_points, 2, "{p:?}");
    assert!(
        p.error_message
            .contains("histogram bucket counts add up to 6, its count says 7"),
        "{p:?}"
    );
    let p = l_answer.partial_success.expect("a partial success");
    assert_eq!(p.rejected_log_records, 1);
    assert!(p.error_message.contains("trace_id has 5 bytes"), "{p:?}");
    // Over HTTP/JSON the answer names the signal's own field.
    let body = serde_json::to_vec(&l).expect("json");
    let (status, _, answer) = http_post(
        http,
        "/v1/logs",
        &[("content-type", "application/json")],
        &body,
    );
    assert_eq!(status, 200);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("\"rejectedLogRecords\":1"), "{answer}");
    sink.wait_until(Duration::from_secs(10), || {
        sink.points() >= 5 && sink.log_records() >= 10
    });
    let report = oxeye.stop();
    let r = component(&report, "receivers/otlp");
    let dropped: std::collections::HashMap<_, _> = r.dropped().into_iter().collect();
    assert_eq!(dropped.get("malformed_data_point"), Some(&2));
    assert_eq!(dropped.get("malformed_log_record"), Some(&2));
    assert_eq!((sink.points(), sink.log_records()), (5, 10));
    assert_eq!(
        counter(&report, "receivers/otlp", "otlp_malformed_requests", "grpc"),
        0
    );
}

#[test]
fn a_signal_without_a_pipeline_is_refused_with_the_reason() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (grpc, http) = (free_port(), free_port());
    let oxeye = Oxeye::start(
        &format!(
            "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: '127.0.0.1:{grpc}'}}
      http: {{endpoint: '127.0.0.1:{http}'}}
exporters:
  nop:
service:
  pipelines:
    traces: {{receivers: [otlp], exporters: [nop]}}
"
        ),
        &[grpc, http],
    );
    let status = rt.block_on(async {
        let mut c = MetricsServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .expect("connect");
        c.export(every_metric_field()).await.expect_err("refused")
    });
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(
        status.message().contains("in no metrics pipeline"),
        "{}",
        status.message()
    );
    let (code, _, body) = http_post(
        http,
        "/v1/logs",
        &[("content-type", "application/x-protobuf")],
        &every_log_field().encode_to_vec(),
    );
    assert_eq!(code, 404);
    assert!(String::from_utf8_lossy(&body).contains("in no logs pipeline"));
    oxeye.stop();
}

/// Rotel's `rotel-agent` on `grpc`, sending OTLP/gRPC on to `to`; killed when dropped.
fn rotel(grpc: u16, to: u16, dir: &std::path::Path) -> oxeye_tests::KillOnDrop {
    let child = std::process::Command::new(oxeye_tests::rotel_agent())
        .args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{grpc}"),
        ])
        .args([
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--exporter", "otlp"])
        .args([
            "--otlp-exporter-endpoint",
            &format!("http://127.0.0.1:{to}"),
        ])
        .arg("--pid-file")
        .arg(dir.join("rotel.pid"))
        .arg("--log-file")
        .arg(dir.join("rotel.log"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rotel-agent");
    let child = oxeye_tests::KillOnDrop(child);
    oxeye_tests::wait_port(grpc);
    child
}

/// oxeye (synthetic metrics and logs) → Rotel → oxeye (otlp receiver → otlp exporter) → sink,
/// beside the same records sent from the first oxeye straight to a second sink: both sinks get
/// every data point and record once, and the same.
#[test]
fn oxeye_to_rotel_to_oxeye_every_point_and_record_once() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (through, direct) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
    let through_port = sink_endpoint(&rt, Arc::clone(&through));
    let direct_port = sink_endpoint(&rt, Arc::clone(&direct));
    let dir = std::env::temp_dir().join(format!("oxeye-rotel-ml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (gw_grpc, gw_http, rotel_grpc) = (free_port(), free_port(), free_port());
    let gateway = Oxeye::start(&yaml(gw_grpc, gw_http, through_port, false), &[gw_grpc]);
    let rotel = rotel(rotel_grpc, gw_grpc, &dir);
    let (points, records) = (3000, 2000);
    let agent = Oxeye::start(
        &format!(
            "receivers:
  synthetic: {{seed: 5, batch_size: 200, metrics: {{count: {points}, series: 40}}, logs: {{count: {records}}}}}
exporters:
  otlp/rotel: {{endpoint: 'http://127.0.0.1:{rotel_grpc}', batch: {{timeout: 20ms}}}}
  otlp/direct: {{endpoint: 'http://127.0.0.1:{direct_port}', batch: {{timeout: 20ms}}}}
service:
  pipelines:
    metrics: {{receivers: [synthetic], exporters: [otlp/rotel, otlp/direct]}}
    logs: {{receivers: [synthetic], exporters: [otlp/rotel, otlp/direct]}}
"
        ),
        &[],
    );
    let report = agent.join();
    for e in ["exporters/otlp/rotel", "exporters/otlp/direct"] {
        let t = component(&report, e);
        assert_eq!(
            (t.emitted(), t.dropped_total()),
            ((points + records) as u64, 0),
            "{e}"
        );
    }
    // Rotel batches for up to its timeout.
    through.wait_until(Duration::from_secs(20), || {
        through.points() >= points && through.log_records() >= records
    });
    drop(rotel);
    gateway.stop();
    assert_eq!(
        (through.points(), through.log_records()),
        (points, records),
        "every point and record once through Rotel"
    );
    // Rotel regroups requests; what each metric and record says must not change.
    let strip = |mut m: Vec<FlatMetric>| {
        for f in &mut m {
            f.0 = None; // Rotel may regroup resources; the resource is compared below.
        }
        m
    };
    let (a, b) = (
        metrics(&direct.metrics.lock().expect("lock")),
        metrics(&through.metrics.lock().expect("lock")),
    );
    assert_eq!(a.first().map(|f| &f.0), b.first().map(|f| &f.0), "resource");
    assert_same("metric", &strip(a), &strip(b));
    assert_same(
        "log record",
        &logs(&direct.logs.lock().expect("lock")),
        &logs(&through.logs.lock().expect("lock")),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An oxeye gateway on `port` whose metrics and logs go to `capture/<id>`.
fn capture_gateway(port: u16, id: &str) -> Oxeye {
    Oxeye::start(
        &format!(
            "receivers:\n  otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{port}'}}}}}}\nexporters:\n  capture/{id}:\nservice:\n  pipelines:\n    metrics: {{receivers: [otlp], exporters: [capture/{id}]}}\n    logs: {{receivers: [otlp], exporters: [capture/{id}]}}\n"
        ),
        &[port],
    )
}

/// Data points by stream and log records by trace over three gateways: each stream's points
/// and each trace's records on one gateway, every one once, shares fair.
#[test]
fn metrics_by_stream_and_logs_by_trace_over_three_gateways() {
    use oxeye_api::Records;
    let ports = [free_port(), free_port(), free_port()];
    let gws: Vec<Oxeye> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| capture_gateway(p, &format!("lb-ml-{i}")))
        .collect();
    let endpoints: Vec<String> = ports
        .iter()
        .map(|p| format!("'http://127.0.0.1:{p}'"))
        .collect();
    let (points, records) = (6000usize, 3000usize);
    // The synthetic metrics are one point each over 256 series; the logs carry their own
    // traces (half of them) or none (those go by resource: one gateway).
    let agent = Oxeye::start(
        &format!(
            "receivers:
  synthetic: {{seed: 3, batch_size: 250, metrics: {{count: {points}, series: 256}}, logs: {{count: {records}}}}}
exporters:
  otlp/metrics: {{endpoints: [{e}], routing_key: streamID, batch: {{timeout: 20ms}}}}
  otlp/logs: {{endpoints: [{e}], batch: {{timeout: 20ms}}}}
service:
  pipelines:
    metrics: {{receivers: [synthetic], exporters: [otlp/metrics]}}
    logs: {{receivers: [synthetic], exporters: [otlp/logs]}}
",
            e = endpoints.join(", ")
        ),
        &[],
    );
    let report = agent.join();
    for e in ["exporters/otlp/metrics", "exporters/otlp/logs"] {
        assert_eq!(component(&report, e).dropped_total(), 0, "{e}");
    }
    for g in gws {
        g.stop();
    }
    let mut stream_at = HashMap::new();
    let mut trace_at = HashMap::new();
    let (mut got_points, mut got_records) = (0, 0);
    for i in 0..3 {
        let batches = oxeye_tests::captured(&format!("capture/lb-ml-{i}"));
        let mut mine = 0;
        for b in &batches {
            match &b.records {
                Records::Metrics(ms) => {
                    for m in ms {
                        for a in m.data.point_attributes() {
                            let stream = format!("{}{a:?}", m.name);
                            let at = *stream_at.entry(stream).or_insert(i);
                            assert_eq!(at, i, "a stream of {} split over gateways", m.name);
                            mine += 1;
                            got_points += 1;
                        }
                    }
                }
                Records::Logs(ls) => {
                    for l in ls {
                        if let Some(t) = l.trace_id {
                            let at = *trace_at.entry(t).or_insert(i);
                            assert_eq!(at, i, "a trace's records split over gateways");
                        }
                        got_records += 1;
                    }
                }
                _ => {}
            }
        }
        assert!(
            mine > points / 6,
            "gateway {i} got a fair share of points: {mine}"
        );
    }
    assert_eq!(
        (got_points, got_records),
        (points, records),
        "every one once"
    );
}

/// A metrics request of `n` gauge points (distinct attributes) and a logs request of `n`
/// records, both tagged `seed`.
/// Metrics and logs received gzip'd in one member, each forwarded in a request of its own, go
/// out as they came (`otlp_forwarded_gzipped_requests`), and arrive whole.
#[test]
fn gzipd_metrics_and_logs_are_forwarded_as_they_came() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink::default());
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let http = free_port();
    let oxeye = Oxeye::start(
        &format!(
            "receivers:\n  otlp: {{protocols: {{http: {{endpoint: '127.0.0.1:{http}'}}}}}}\nexporters:\n  otlp: {{endpoint: 'http://127.0.0.1:{sink_port}', batch: {{send_batch_size: 50, timeout: 20ms}}}}\nservice:\n  pipelines:\n    metrics: {{receivers: [otlp], exporters: [otlp]}}\n    logs: {{receivers: [otlp], exporters: [otlp]}}\n"
        ),
        &[http],
    );
    // 30 points (records) a request, 50 a request at most: none is merged with another.
    let loads: Vec<_> = (1..=3).map(|seed| load(seed, 30)).collect();
    let zipped = [
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "gzip"),
    ];
    for (m, l) in &loads {
        for (path, body) in [
            ("/v1/metrics", m.encode_to_vec()),
            ("/v1/logs", l.encode_to_vec()),
        ] {
            let (status, head, _) = http_post(http, path, &zipped, &gzip(&body));
            assert_eq!(status, 200, "{path}: {head}");
        }
    }
    sink.wait_until(Duration::from_secs(10), || {
        sink.points() >= 90 && sink.log_records() >= 90
    });
    let report = oxeye.stop();
    let sent_m: Vec<_> = loads.iter().map(|(m, _)| m.clone()).collect();
    let sent_l: Vec<_> = loads.iter().map(|(_, l)| l.clone()).collect();
    assert_eq!(
        encoded(&metrics(&sent_m)),
        encoded(&metrics(&sink.metrics.lock().expect("lock")))
    );
    assert_same(
        "log record",
        &logs(&sent_l),
        &logs(&sink.logs.lock().expect("lock")),
    );
    for signal in ["metrics", "logs"] {
        assert_eq!(
            counter(
                &report,
                "exporters/otlp",
                "otlp_forwarded_gzipped_requests",
                signal
            ),
            3,
            "{signal}"
        );
    }
}

fn load(seed: u64, n: usize) -> (ExportMetricsServiceRequest, ExportLogsServiceRequest) {
    let points = (0..n)
        .map(|i| NumberDataPoint {
            attributes: vec![kv(
                "i",
                any_value::Value::IntValue((seed * 100_000 + i as u64) as i64),
            )],
            time_unix_nano: 1_700_000_000_000_000_000,
            value: Some(number_data_point::Value::AsDouble(i as f64)),
            ..NumberDataPoint::default()
        })
        .collect();
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: vec![Metric {
                    name: "queue.depth".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: points,
                    })),
                    ..Metric::default()
                }],
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    };
    let records = (0..n)
        .map(|i| LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000,
            severity_number: 9,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!(
                    "{seed} {i} GET /api/orders 200"
                ))),
            }),
            ..LogRecord::default()
        })
        .collect();
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    };
    (metrics, logs)
}

#[test]
fn a_full_pipeline_makes_metrics_and_logs_clients_back_off_and_loses_nothing() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // The exporter's far end: 100 ms a request, so the pipeline fills.
    let sink = Arc::new(Sink {
        delay: Duration::from_millis(100),
        ..Sink::default()
    });
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, http) = (free_port(), free_port());
    let oxeye = Oxeye::start(
        &format!(
            "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: '127.0.0.1:{grpc}'}}
      http: {{endpoint: '127.0.0.1:{http}'}}
    backpressure: {{wait: 50ms, retry_after: 2s}}
exporters:
  otlp: {{endpoint: 'http://127.0.0.1:{sink_port}', batch: {{timeout: 20ms}}}}
service:
  pipelines:
    metrics: {{receivers: [otlp], exporters: [otlp], queue: {{capacity: 4}}}}
    logs: {{receivers: [otlp], exporters: [otlp], queue: {{capacity: 4}}}}
"
        ),
        &[grpc, http],
    );
    const N: usize = 500;
    let until = std::time::Instant::now() + Duration::from_secs(2);
    // An HTTP metrics client meanwhile: 429 with Retry-After when refused.
    let http_client = std::thread::spawn(move || {
        let (mut ok, mut refusal) = (0usize, None);
        let mut seed = 1_000;
        while std::time::Instant::now() < until {
            seed += 1;
            let body = load(seed, N).0.encode_to_vec();
            let (code, head, _) = http_post(
                http,
                "/v1/metrics",
                &[("content-type", "application/x-protobuf")],
                &body,
            );
            match code {
                200 => ok += N,
                429 => refusal = Some(head),
                other => panic!("HTTP {other}: {head}"),
            }
        }
        (ok, refusal)
    });
    // gRPC: a metrics client and a logs client, each as fast as it is let.
    let (points, records, refused) = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let metrics = {
            let mut client = MetricsServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0, 0);
                let mut seed = 0;
                while std::time::Instant::now() < until {
                    seed += 1;
                    match client.export(load(seed, N).0).await {
                        Ok(_) => ok += N,
                        Err(e) => {
                            refused += refusal(&e);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (ok, refused)
            })
        };
        let mut client = LogsServiceClient::new(channel);
        let (mut records, mut refused) = (0, 0);
        let mut seed = 500;
        while std::time::Instant::now() < until {
            seed += 1;
            match client.export(load(seed, N).1).await {
                Ok(_) => records += N,
                Err(e) => {
                    refused += refusal(&e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        let (points, m_refused) = metrics.await.expect("metrics client");
        (points, records, refused + m_refused)
    });
    let (http_points, http_refusal) = http_client.join().expect("http client");
    let points = points + http_points;
    println!("accepted {points} points and {records} records; {refused} gRPC refusals");
    assert!(refused > 0, "the full pipeline refused some gRPC requests");
    let head = http_refusal.expect("an HTTP client saw a 429 while the pipeline was full");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 2"),
        "{head}"
    );
    // Everything accepted arrives once; nothing refused does.
    sink.wait_until(Duration::from_secs(30), || {
        sink.points() >= points && sink.log_records() >= records
    });
    let report = oxeye.stop();
    assert_eq!((sink.points(), sink.log_records()), (points, records));
    assert_eq!(report.registry.records_dropped(), 0);
}

/// A gRPC refusal of a full pipeline: RESOURCE_EXHAUSTED with RetryInfo saying 2 s.
fn refusal(e: &tonic::Status) -> usize {
    use tonic_types::StatusExt;
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(2)),
        "{e:?}"
    );
    1
}
