//! The otlp receiver end to end: spans from the official OpenTelemetry Python SDK and
//! hand-made requests with every field go through oxeye (otlp receiver → otlp exporter) to a
//! loopback endpoint of the test unchanged; bad input gets a clear status and is counted;
//! a full pipeline makes clients back off instead of oxeye buffering.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use oxeye_tests::free_port;

mod common;
use common::otlp::{gzip, http_post, sink_endpoint, Sink};
use common::run::{component, counter, sdk_python, Oxeye};
use common::tls::pki;
use prost::Message;

/// otlp receiver (gRPC on `grpc`, HTTP on `http`) → otlp exporter to the sink on `sink`; with
/// `nop`, a processor between them, so spans are decoded and encoded again instead of being
/// forwarded as received.
fn gateway_yaml(grpc: u16, http: u16, sink: u16, extra: &str, nop: bool) -> String {
    let processors = if nop { "[nop]" } else { "[]" };
    format!(
        "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: '127.0.0.1:{grpc}'}}
      http: {{endpoint: '127.0.0.1:{http}', max_request_body_size: 1048576}}
{extra}
processors:
  nop:
exporters:
  otlp:
    endpoint: 'http://127.0.0.1:{sink}'
    batch: {{timeout: 20ms}}
    retry_on_failure: {{initial_interval: 50ms}}
service:
  pipelines:
    # A request is one batch: a few of them are buffer enough, and bound the memory.
    traces: {{receivers: [otlp], processors: {processors}, exporters: [otlp], queue: {{capacity: 8}}}}
"
    )
}

/// Every span with its resource and scope (and their schema URLs), sorted by span id: requests
/// may group spans differently, their contents must not differ.
type Flat = (
    Option<Resource>,
    String,
    Option<InstrumentationScope>,
    String,
    Span,
);

fn flatten(requests: &[ExportTraceServiceRequest]) -> Vec<Flat> {
    let mut out = Vec::new();
    for r in requests {
        for rs in &r.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push((
                        rs.resource.clone(),
                        rs.schema_url.clone(),
                        ss.scope.clone(),
                        ss.schema_url.clone(),
                        s.clone(),
                    ));
                }
            }
        }
    }
    out.sort_by(|a, b| a.4.span_id.cmp(&b.4.span_id));
    out
}

fn assert_same(sent: &[ExportTraceServiceRequest], got: &[ExportTraceServiceRequest]) {
    let (sent, got) = (flatten(sent), flatten(got));
    assert_eq!(sent.len(), got.len(), "span count");
    for (s, g) in sent.iter().zip(&got) {
        assert_eq!(s, g, "a span changed on its way through oxeye");
    }
}

#[test]
fn python_sdk_spans_arrive_unchanged_over_grpc_and_http() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (protocol, nop) in [
        ("grpc", false),
        ("http", false),
        ("grpc", true),
        ("http", true),
    ] {
        let sink = Arc::new(Sink::default());
        let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
        let (grpc, http) = (free_port(), free_port());
        let yaml = gateway_yaml(grpc, http, sink_port, "", nop);
        let oxeye = Oxeye::start(&yaml, &[grpc, http]);
        let expected = std::env::temp_dir().join(format!(
            "oxeye-otel-sdk-{}-{protocol}.pb",
            std::process::id()
        ));
        let endpoint = match protocol {
            "grpc" => format!("http://127.0.0.1:{grpc}"),
            _ => format!("http://127.0.0.1:{http}/v1/traces"),
        };
        let out = std::process::Command::new(sdk_python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/workloads/otel_sdk_spans.py"
            ))
            .args([protocol, &endpoint])
            .arg(&expected)
            .output()
            .expect("run the SDK script");
        assert!(
            out.status.success(),
            "SDK script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sent = ExportTraceServiceRequest::decode(&std::fs::read(&expected).expect("read")[..])
            .expect("expected request");
        let n = flatten(std::slice::from_ref(&sent)).len();
        assert_eq!(n, 40, "the script makes 40 spans");
        sink.wait_for(n, Duration::from_secs(10));
        let report = oxeye.stop();
        let got = sink.got.lock().expect("lock").clone();
        assert_same(&[sent], &got);
        let t = component(&report, "exporters/otlp");
        assert_eq!((t.emitted(), t.dropped_total()), (40, 0), "{protocol}");
        // Forwarded as received, unless a processor needed the spans decoded.
        let forwarded = counter(&report, "exporters/otlp", "otlp_forwarded_spans", "traces");
        assert_eq!(
            forwarded,
            if nop { 0 } else { 40 },
            "{protocol}, nop: {nop}"
        );
        let _ = std::fs::remove_file(&expected);
    }
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

/// A request with what the Python SDK cannot make: maps, bytes, empty values, nested arrays,
/// repeated keys, entity refs, every dropped count, flags and an unspecified kind.
fn every_field_request(empty_values: bool) -> ExportTraceServiceRequest {
    use any_value::Value as V;
    let mut attributes = vec![
        kv("s", V::StringValue("ünïcode ✓".into())),
        kv("i", V::IntValue(-9_007_199_254_740_993)),
        kv("d", V::DoubleValue(-0.125)),
        kv("b", V::BoolValue(false)),
        kv("bytes", V::BytesValue(vec![0, 1, 254, 255])),
        kv(
            "nested",
            V::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(V::ArrayValue(ArrayValue {
                            values: vec![AnyValue {
                                value: Some(V::IntValue(1)),
                            }],
                        })),
                    },
                    AnyValue {
                        value: Some(V::KvlistValue(KeyValueList {
                            values: vec![kv("deep", V::StringValue("x".into()))],
                        })),
                    },
                ],
            }),
        ),
        kv(
            "map",
            V::KvlistValue(KeyValueList {
                values: vec![
                    kv("a", V::IntValue(1)),
                    kv("m", V::KvlistValue(KeyValueList { values: vec![] })),
                ],
            }),
        ),
        kv("s", V::StringValue("repeated key".into())),
    ];
    if empty_values {
        attributes.push(KeyValue {
            key: "empty".into(),
            value: Some(AnyValue { value: None }),
        });
    }
    let span = |id: u8, kind: span::SpanKind| Span {
        trace_id: vec![0xab; 16],
        span_id: vec![id; 8],
        trace_state: "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into(),
        parent_span_id: if id > 1 { vec![1; 8] } else { vec![] },
        flags: 0x301,
        name: format!("op-{id}"),
        kind: kind as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000 + id as u64,
        end_time_unix_nano: 1_700_000_000_123_456_789,
        attributes: attributes.clone(),
        dropped_attributes_count: 3,
        events: vec![span::Event {
            time_unix_nano: 1_700_000_000_000_000_500,
            name: "exception".into(),
            attributes: vec![kv("exception.type", V::StringValue("E".into()))],
            dropped_attributes_count: 1,
        }],
        dropped_events_count: 4,
        links: vec![span::Link {
            trace_id: vec![0xcd; 16],
            span_id: vec![0xef; 8],
            trace_state: "k=v".into(),
            attributes: vec![kv("l", V::BoolValue(true))],
            dropped_attributes_count: 2,
            flags: 0x100,
        }],
        dropped_links_count: 5,
        status: Some(Status {
            code: status::StatusCode::Error as i32,
            message: "failed".into(),
        }),
    };
    let resource = |name: &str| Resource {
        attributes: vec![kv("service.name", V::StringValue(name.into()))],
        dropped_attributes_count: 7,
        entity_refs: vec![EntityRef {
            schema_url: "https://example.com/entities".into(),
            r#type: "service".into(),
            id_keys: vec!["service.name".into()],
            description_keys: vec!["service.version".into()],
        }],
    };
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(resource("a")),
                scope_spans: vec![
                    ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "lib.one".into(),
                            version: "0.9".into(),
                            attributes: vec![kv("scope.attr", V::IntValue(1))],
                            dropped_attributes_count: 6,
                        }),
                        spans: vec![
                            span(1, span::SpanKind::Unspecified),
                            span(2, span::SpanKind::Server),
                        ],
                        schema_url: "https://opentelemetry.io/schemas/1.20.0".into(),
                    },
                    ScopeSpans {
                        scope: Some(InstrumentationScope::default()),
                        spans: vec![span(3, span::SpanKind::Consumer)],
                        schema_url: String::new(),
                    },
                ],
                schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
            },
            ResourceSpans {
                resource: Some(resource("b")),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope::default()),
                    spans: vec![span(4, span::SpanKind::Producer)],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            },
        ],
    }
}

#[test]
fn every_field_survives_grpc_http_protobuf_gzip_and_json() {
    for nop in [false, true] {
        every_field_survives(nop);
    }
}

/// Forwarded as received (gRPC and HTTP protobuf) or, with a processor, decoded and encoded.
fn every_field_survives(nop: bool) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink::default());
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, http) = (free_port(), free_port());
    let oxeye = Oxeye::start(&gateway_yaml(grpc, http, sink_port, "", nop), &[grpc, http]);

    // gRPC, compressed by the client.
    let request = every_field_request(true);
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .expect("connect")
            .send_compressed(tonic::codec::CompressionEncoding::Gzip);
        let response = client.export(request.clone()).await.expect("export");
        assert_eq!(response.into_inner().partial_success, None);
    });
    sink.wait_for(4, Duration::from_secs(10));
    assert_same(
        std::slice::from_ref(&request),
        &sink.got.lock().expect("lock"),
    );
    sink.got.lock().expect("lock").clear();

    // HTTP/protobuf, gzip.
    let (code, head, body) = http_post(
        http,
        "/v1/traces",
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        &gzip(&request.encode_to_vec()),
    );
    assert_eq!(code, 200, "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/x-protobuf"));
    assert_eq!(
        ExportTraceServiceResponse::decode(&body[..]).expect("response"),
        ExportTraceServiceResponse::default()
    );
    sink.wait_for(4, Duration::from_secs(10));
    assert_same(
        std::slice::from_ref(&request),
        &sink.got.lock().expect("lock"),
    );
    sink.got.lock().expect("lock").clear();

    // HTTP/JSON (OTLP/JSON has no way to write an empty value, so none here).
    let request = every_field_request(false);
    let json = serde_json::to_vec(&request).expect("json");
    let (code, head, body) = http_post(
        http,
        "/v1/traces",
        &[("content-type", "application/json")],
        &json,
    );
    assert_eq!(code, 200, "{head} {}", String::from_utf8_lossy(&body));
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    sink.wait_for(4, Duration::from_secs(10));
    assert_same(
        std::slice::from_ref(&request),
        &sink.got.lock().expect("lock"),
    );

    let report = oxeye.stop();
    let t = component(&report, "exporters/otlp");
    assert_eq!((t.emitted(), t.dropped_total()), (12, 0));
    // JSON is always decoded (it is not protobuf to forward).
    let forwarded = counter(&report, "exporters/otlp", "otlp_forwarded_spans", "traces");
    assert_eq!(forwarded, if nop { 0 } else { 8 }, "nop: {nop}");
}

#[test]
fn bad_input_gets_a_clear_status_and_is_counted() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink::default());
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, http) = (free_port(), free_port());
    let oxeye = Oxeye::start(
        &gateway_yaml(grpc, http, sink_port, "", false),
        &[grpc, http],
    );
    let proto = [("content-type", "application/x-protobuf")];
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    let status_of = |body: &[u8]| tonic_types::Status::decode(body).expect("a google.rpc.Status");

    // Malformed protobuf.
    let (code, _, body) = http_post(http, "/v1/traces", &proto, b"\xff\xff\xff\xff not protobuf");
    assert_eq!(code, 400);
    assert!(
        status_of(&body)
            .message
            .contains("not an OTLP trace request"),
        "{}",
        text(&body)
    );
    // Malformed JSON, answered in JSON.
    let (code, _, body) = http_post(
        http,
        "/v1/traces",
        &[("content-type", "application/json")],
        b"{\"resourceSpans\": [",
    );
    assert_eq!(code, 400);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON status");
    assert!(
        v["message"].as_str().unwrap_or("").contains("invalid JSON"),
        "{v}"
    );
    // Wrong content type.
    let (code, _, body) = http_post(
        http,
        "/v1/traces",
        &[("content-type", "text/plain")],
        b"hello",
    );
    assert_eq!(code, 415);
    assert!(status_of(&body)
        .message
        .contains("application/x-protobuf or application/json"));
    // Larger than max_request_body_size (1 MiB here).
    let (code, _, _) = http_post(http, "/v1/traces", &proto, &vec![0u8; 2 << 20]);
    assert_eq!(code, 413);
    // A gzip bomb: 64 MiB of zeros in about 64 KiB.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    let (code, _, body) = http_post(
        http,
        "/v1/traces",
        &[proto[0], ("content-encoding", "gzip")],
        &bomb,
    );
    assert_eq!(code, 413);
    assert!(
        status_of(&body).message.contains("decompressed body"),
        "{}",
        text(&body)
    );
    // Unknown encoding.
    let (code, _, _) = http_post(
        http,
        "/v1/traces",
        &[proto[0], ("content-encoding", "br")],
        b"x",
    );
    assert_eq!(code, 415);
    // Metrics are taken only by a receiver in a metrics pipeline; this one says so.
    let (code, _, body) = http_post(http, "/v1/metrics", &proto, b"");
    assert_eq!(code, 404);
    assert!(
        text(&body).contains("in no metrics pipeline"),
        "{}",
        text(&body)
    );

    // Malformed spans: refused one by one, the rest delivered.
    let mut request = every_field_request(true);
    let spans = &mut request.resource_spans[0].scope_spans[0].spans;
    spans[0].span_id = vec![1, 2, 3];
    spans[1].trace_id = vec![0; 16];
    let (code, _, body) = http_post(http, "/v1/traces", &proto, &request.encode_to_vec());
    assert_eq!(code, 200);
    let partial = ExportTraceServiceResponse::decode(&body[..])
        .expect("response")
        .partial_success
        .expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert_eq!(partial.error_message, "span_id has 3 bytes, not 8");

    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut client = TraceServiceClient::new(channel.clone())
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_encoding_message_size(64 << 20);
        // A gzip bomb over gRPC: one 32 MiB attribute, a few KiB on the wire, over the 4 MiB
        // default limit once decompressed.
        let big = |bytes: usize| {
            let mut r = every_field_request(true);
            let attrs = &mut r.resource_spans[0].scope_spans[0].spans[0].attributes;
            attrs.push(kv("big", any_value::Value::StringValue("a".repeat(bytes))));
            r
        };
        let err = client
            .export(big(32 << 20))
            .await
            .expect_err("over the limit");
        assert!(err.message().contains("size limit"), "{err:?}");
        // Not retryable (no RetryInfo): the same message would be refused again.
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.metadata().get("grpc-status-details-bin").is_none());
        // Compressed and still over the limit (random bytes do not compress): refused from the
        // message's header, not retryable either.
        let mut incompressible = every_field_request(true);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..5 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        incompressible.resource_spans[0].scope_spans[0].spans[0]
            .attributes
            .push(kv("noise", any_value::Value::BytesValue(noise)));
        let err = client
            .export(incompressible)
            .await
            .expect_err("over the limit compressed");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("size limit"), "{err:?}");
        assert!(err.metadata().get("grpc-status-details-bin").is_none());
        // Over the limit without compression: tonic says OUT_OF_RANGE, which OTLP clients
        // retry; answered RESOURCE_EXHAUSTED like the Collector does.
        let mut plain =
            TraceServiceClient::new(channel.clone()).max_encoding_message_size(64 << 20);
        let err = plain
            .export(big(5 << 20))
            .await
            .expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("too large"), "{err:?}");
        // Malformed spans over gRPC.
        let mut request = every_field_request(true);
        request.resource_spans[1].scope_spans[0].spans[0].kind = 42;
        let partial = client
            .export(request)
            .await
            .expect("export")
            .into_inner()
            .partial_success
            .expect("partial");
        assert_eq!(
            (partial.rejected_spans, partial.error_message.as_str()),
            (1, "kind 42 is not a span kind (0-5)")
        );
        // Not protobuf over gRPC: INVALID_ARGUMENT with the reason, counted.
        let mut raw = tonic::client::Grpc::new(channel.clone());
        raw.ready().await.expect("ready");
        let err = raw
            .unary(
                tonic::Request::new(b"\xff\xff\xff\xff not protobuf".to_vec()),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                ),
                RawCodec,
            )
            .await
            .expect_err("not protobuf");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with("not an OTLP trace request: "),
            "{err:?}"
        );
        // Metrics, with no metrics pipeline: UNIMPLEMENTED with the reason.
        let err = MetricsServiceClient::new(channel)
            .export(ExportMetricsServiceRequest::default())
            .await
            .expect_err("metrics are not taken");
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert!(err.message().contains("in no metrics pipeline"), "{err:?}");
    });
    sink.wait_for(2 + 3, Duration::from_secs(10));
    let report = oxeye.stop();
    let r = component(&report, "receivers/otlp");
    assert_eq!(r.dropped(), vec![("malformed_span", 3)]);
    assert_eq!(
        counter(&report, "receivers/otlp", "otlp_malformed_requests", "http"),
        6
    );
    assert_eq!(
        counter(&report, "receivers/otlp", "otlp_malformed_requests", "grpc"),
        4,
        "garbage, a gzip bomb, an oversized compressed message, an oversized message"
    );
    assert_eq!(component(&report, "exporters/otlp").emitted(), 5);
    assert_eq!(sink.spans(), 5, "the well-formed spans of both requests");
}

/// Sends bytes as a gRPC message unchanged, garbage included; answers come back as bytes.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A request of `n` HTTP-shaped spans of trace `seed`.
fn load_request(seed: u64, n: usize) -> ExportTraceServiceRequest {
    let mut request = every_field_request(false);
    let template = request.resource_spans[0].scope_spans[0].spans[0].clone();
    let spans = (0..n)
        .map(|i| {
            let mut s = template.clone();
            s.trace_id[..8].copy_from_slice(&seed.to_be_bytes());
            s.span_id = ((seed << 20) + i as u64 + 1).to_be_bytes().to_vec();
            s
        })
        .collect();
    request.resource_spans.truncate(1);
    request.resource_spans[0].scope_spans.truncate(1);
    request.resource_spans[0].scope_spans[0].spans = spans;
    request
}

#[test]
fn forwarded_requests_stay_within_send_batch_size() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink::default());
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let grpc = free_port();
    let oxeye = Oxeye::start(
        &format!(
            "receivers:\n  otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{grpc}'}}}}}}\nexporters:\n  otlp: {{endpoint: 'http://127.0.0.1:{sink_port}', batch: {{send_batch_size: 100, timeout: 20ms}}}}\nservice:\n  pipelines:\n    traces: {{receivers: [otlp], exporters: [otlp]}}\n"
        ),
        &[grpc],
    );
    // Two requests that fit are forwarded as they came; one of 250 spans in a single
    // ResourceSpans is more than a request may hold: decoded and split.
    let requests = [
        load_request(1, 60),
        load_request(2, 60),
        load_request(3, 250),
    ];
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .expect("connect");
        for r in &requests {
            client.export(r.clone()).await.expect("export");
        }
    });
    sink.wait_for(370, Duration::from_secs(10));
    let report = oxeye.stop();
    let got = sink.got.lock().expect("lock").clone();
    let sizes: Vec<usize> = got
        .iter()
        .map(|r| flatten(std::slice::from_ref(r)).len())
        .collect();
    assert!(sizes.iter().all(|&n| n <= 100), "request sizes {sizes:?}");
    assert_same(&requests, &got);
    assert_eq!(
        counter(&report, "exporters/otlp", "otlp_forwarded_spans", "traces"),
        120
    );
}

/// A request that came gzip'd in one member and is forwarded alone goes out as it came
/// (counted in `otlp_forwarded_gzipped_requests`); one in two members, or through an exporter
/// that sends without compression, is encoded again. Every span arrives as sent either way.
#[test]
fn gzipd_requests_are_forwarded_as_they_came() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for compression in ["gzip", "none"] {
        let sink = Arc::new(Sink::default());
        let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
        let (grpc, http) = (free_port(), free_port());
        let oxeye = Oxeye::start(
            &format!(
                "receivers:\n  otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{grpc}'}}, http: {{endpoint: '127.0.0.1:{http}'}}}}}}\nexporters:\n  otlp: {{endpoint: 'http://127.0.0.1:{sink_port}', compression: {compression}, batch: {{send_batch_size: 100, timeout: 20ms}}}}\nservice:\n  pipelines:\n    traces: {{receivers: [otlp], exporters: [otlp]}}\n"
            ),
            &[grpc, http],
        );
        let requests = [
            load_request(1, 60),
            load_request(2, 60),
            load_request(3, 60),
        ];
        rt.block_on(async {
            let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
                .await
                .expect("connect")
                .send_compressed(tonic::codec::CompressionEncoding::Gzip);
            client.export(requests[0].clone()).await.expect("export");
        });
        let protobuf_gzip = [
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ];
        let one = gzip(&requests[1].encode_to_vec());
        let (code, head, _) = http_post(http, "/v1/traces", &protobuf_gzip, &one);
        assert_eq!(code, 200, "{head}");
        // Two members, as RFC 1952 allows: a reader that stops after the first would lose
        // half of it, so it is never forwarded as it came.
        let body = requests[2].encode_to_vec();
        let (a, b) = body.split_at(body.len() / 2);
        let two = [gzip(a), gzip(b)].concat();
        let (code, head, _) = http_post(http, "/v1/traces", &protobuf_gzip, &two);
        assert_eq!(code, 200, "{head}");
        sink.wait_for(180, Duration::from_secs(10));
        let report = oxeye.stop();
        assert_same(&requests, &sink.got.lock().expect("lock"));
        let counted = |name| counter(&report, "exporters/otlp", name, "traces");
        assert_eq!(counted("otlp_forwarded_spans"), 180, "{compression}");
        assert_eq!(
            counted("otlp_forwarded_gzipped_requests"),
            if compression == "gzip" { 2 } else { 0 },
            "{compression}"
        );
    }
}

#[test]
fn a_full_pipeline_makes_clients_back_off_and_memory_stays_bounded() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // The slow exporter's far end: 100 ms per request.
    let sink = Arc::new(Sink {
        delay: Duration::from_millis(100),
        ..Sink::default()
    });
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, http) = (free_port(), free_port());
    let config = oxeye_tests::temp_config(
        "otlp-backpressure",
        &gateway_yaml(
            grpc,
            http,
            sink_port,
            "    backpressure: {wait: 50ms, retry_after: 2s}",
            false,
        ),
    );
    let mut child = oxeye_tests::spawn(&["run", "-c", config.to_str().expect("path")]);
    let stderr = child.stderr.take().expect("stderr");
    let (_, log) = oxeye_tests::follow(stderr);
    let child = oxeye_tests::KillOnDrop(child);
    for port in [grpc, http] {
        oxeye_tests::wait_port(port);
    }

    // Four gRPC clients as fast as they are let, for 3 s, 500 spans a request.
    const SPANS: usize = 500;
    let until = Instant::now() + Duration::from_secs(3);
    // And one HTTP client at the same time: 429 with Retry-After.
    let http_client = std::thread::spawn(move || {
        let (mut ok, mut refusal) = (0u64, None);
        let mut i = 0;
        while Instant::now() < until {
            let body = load_request(9_000_000 + i, SPANS).encode_to_vec();
            i += 1;
            let (code, head, _) = http_post(
                http,
                "/v1/traces",
                &[("content-type", "application/x-protobuf")],
                &body,
            );
            match code {
                200 => ok += SPANS as u64,
                429 => refusal = Some(head),
                other => panic!("HTTP {other}: {head}"),
            }
        }
        (ok, refusal)
    });
    let (accepted, refused, retry_info) = rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..4u64 {
            tasks.push(tokio::spawn(async move {
                let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
                    .await
                    .expect("connect");
                let (mut ok, mut refused, mut retry_info) = (0u64, 0u64, true);
                for i in 0.. {
                    if Instant::now() > until {
                        break;
                    }
                    match client.export(load_request(c * 100_000 + i, SPANS)).await {
                        Ok(_) => ok += SPANS as u64,
                        Err(e) => {
                            use tonic_types::StatusExt;
                            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                            retry_info &= e.get_details_retry_info().and_then(|r| r.retry_delay)
                                == Some(Duration::from_secs(2));
                            refused += SPANS as u64;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (ok, refused, retry_info)
            }));
        }
        let mut total = (0, 0, true);
        for t in tasks {
            let (ok, refused, info) = t.await.expect("client");
            total = (total.0 + ok, total.1 + refused, total.2 && info);
        }
        total
    });
    let (http_accepted, http_refusal) = http_client.join().expect("http client");
    println!("gRPC: {accepted} spans accepted, {refused} refused; HTTP: {http_accepted} accepted");
    let head = http_refusal.expect("an HTTP client saw a 429 while the pipeline was full");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 2"),
        "{head}"
    );
    assert!(
        refused > 0 && accepted > 0,
        "accepted {accepted}, refused {refused}"
    );
    assert!(
        retry_info,
        "every refusal carries RetryInfo with retry_after"
    );

    // Everything accepted arrives, nothing else; then the peak memory.
    oxeye_tests::signal(&child.0, libc::SIGINT);
    let child = {
        let mut child = child;
        std::mem::replace(
            &mut child.0,
            std::process::Command::new("true").spawn().expect("true"),
        )
    };
    let (_, peak_mib) = oxeye_tests::wait_with_rusage(child, Duration::from_secs(30));
    let log = log.join().expect("log");
    let accepted = accepted + http_accepted;
    assert_eq!(sink.spans() as u64, accepted, "{log}");
    let (received, out, dropped) = oxeye_tests::final_counts(&log).expect("summary line");
    assert_eq!((received, out, dropped), (accepted, accepted, 0), "{log}");
    println!("accepted {accepted} spans, refused {refused}, peak RSS {peak_mib:.1} MiB");
    assert!(peak_mib < 120.0, "peak RSS {peak_mib:.1} MiB");
}

/// A gateway: otlp receiver on `port` → `capture/<id>`.
fn gateway(port: u16, id: &str) -> Oxeye {
    Oxeye::start(
        &format!(
            "receivers:\n  otlp: {{protocols: {{grpc: {{endpoint: '127.0.0.1:{port}'}}}}}}\nexporters:\n  capture/{id}:\nservice:\n  pipelines:\n    traces: {{receivers: [otlp], exporters: [capture/{id}]}}\n"
        ),
        &[port],
    )
}

/// An agent: synthetic spans (`seed`, `count` at `rate`/s) → otlp balanced over `gateways`.
fn agent(seed: u64, count: u64, rate: u64, gateways: &[u16]) -> Oxeye {
    let endpoints: Vec<String> = gateways
        .iter()
        .map(|p| format!("'http://127.0.0.1:{p}'"))
        .collect();
    Oxeye::start(
        &format!(
            "receivers:\n  synthetic: {{seed: {seed}, batch_size: 200, spans: {{count: {count}, rate: {rate}}}}}\nexporters:\n  otlp:\n    endpoints: [{}]\n    routing_key: traceID\n    batch: {{timeout: 20ms}}\n    retry_on_failure: {{initial_interval: 100ms, max_interval: 500ms}}\nservice:\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [otlp]}}\n",
            endpoints.join(", ")
        ),
        &[],
    )
}

/// (trace id, span id) of every span `capture/<id>` got.
fn captured_ids(id: &str) -> Vec<([u8; 16], [u8; 8])> {
    oxeye_tests::captured(&format!("capture/{id}"))
        .iter()
        .flat_map(|b| match &b.records {
            oxeye_api::Records::Spans(s) => s.iter().map(|s| (s.trace_id.0, s.span_id.0)).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// Waits until the agent's exporter has settled all `n` spans (delivered or dropped).
fn agent_done(agent: Oxeye, n: u64) -> oxeye_api::Telemetry {
    let report = agent.join();
    let t = component(&report, "exporters/otlp");
    assert_eq!(t.emitted() + t.dropped_total(), n, "every span settled");
    t
}

#[test]
fn agents_balance_by_trace_id_over_three_gateways_whole_traces() {
    let ports = [free_port(), free_port(), free_port()];
    let gws: Vec<Oxeye> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| gateway(p, &format!("lb-whole-{i}")))
        .collect();
    let agents = [agent(1, 6000, 0, &ports), agent(2, 6000, 0, &ports)];
    for a in agents {
        let t = agent_done(a, 6000);
        assert_eq!(t.dropped_total(), 0);
    }
    for g in gws {
        g.stop();
    }
    let mut where_trace: std::collections::HashMap<[u8; 16], usize> = Default::default();
    let mut span_ids = std::collections::HashSet::new();
    for i in 0..3 {
        let ids = captured_ids(&format!("lb-whole-{i}"));
        assert!(
            ids.len() > 12_000 / 6,
            "gateway {i} got a fair share: {}",
            ids.len()
        );
        for (trace, span) in ids {
            assert!(span_ids.insert((trace, span)), "a span arrived twice");
            let g = *where_trace.entry(trace).or_insert(i);
            assert_eq!(g, i, "a trace split over gateways {g} and {i}");
        }
    }
    assert_eq!(span_ids.len(), 12_000, "every span arrived");
}

#[test]
fn a_stopped_gateway_has_its_traces_rerouted_and_gets_them_back() {
    let ports = [free_port(), free_port(), free_port()];
    let mut gws: Vec<Option<Oxeye>> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| Some(gateway(p, &format!("lb-fail-{i}"))))
        .collect();
    // 2 × 12 000 spans at 2000/s each: about 6 s.
    let agents = [
        agent(3, 12_000, 2000, &ports),
        agent(4, 12_000, 2000, &ports),
    ];
    std::thread::sleep(Duration::from_secs(1));
    gws[1].take().expect("gateway 1").stop();
    std::thread::sleep(Duration::from_millis(1500));
    // Back on the same port: it gets its traces again.
    gws[1] = Some(gateway(ports[1], "lb-fail-1-back"));
    let mut rerouted = 0;
    for a in agents {
        let t = agent_done(a, 12_000);
        assert_eq!(t.dropped(), vec![], "nothing dropped");
        rerouted += t
            .counters()
            .iter()
            .filter(|(n, s, _)| *n == "otlp_rerouted_spans" && s.contains(&ports[1].to_string()))
            .map(|(_, _, v)| v)
            .sum::<u64>();
    }
    for g in gws.into_iter().flatten() {
        g.stop();
    }
    let mut all = std::collections::HashMap::new();
    for id in ["lb-fail-0", "lb-fail-1", "lb-fail-2", "lb-fail-1-back"] {
        let ids = captured_ids(id);
        assert!(!ids.is_empty(), "{id} got spans");
        for s in ids {
            *all.entry(s).or_insert(0u32) += 1;
        }
    }
    let twice = all.values().filter(|&&n| n > 1).count();
    assert_eq!((all.len(), twice), (24_000, 0), "every span exactly once");
    println!("rerouted {rerouted} spans off the stopped gateway");
    assert!(rerouted > 0, "spans for the stopped gateway were rerouted");
}

#[test]
fn agent_to_rotel_to_gateway_every_span_once() {
    let (rotel_grpc, rotel_http, gw) = (free_port(), free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("oxeye-rotel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rotel = std::process::Command::new(oxeye_tests::rotel_agent())
        .args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{rotel_grpc}"),
        ])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{rotel_http}")])
        .args([
            "--exporter",
            "otlp",
            "--otlp-exporter-endpoint",
            &format!("http://127.0.0.1:{gw}"),
        ])
        .arg("--pid-file")
        .arg(dir.join("rotel.pid"))
        .arg("--log-file")
        .arg(dir.join("rotel.log"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rotel-agent");
    let rotel = oxeye_tests::KillOnDrop(rotel);
    let gateway = gateway(gw, "chain-gw");
    oxeye_tests::wait_port(rotel_grpc);
    let agent = Oxeye::start(
        &format!("receivers:\n  synthetic: {{seed: 11, batch_size: 250, spans: {{count: 5000}}}}\nexporters:\n  otlp: {{endpoint: 'http://127.0.0.1:{rotel_grpc}', batch: {{timeout: 20ms}}}}\nservice:\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [otlp]}}\n"),
        &[],
    );
    let t = agent_done(agent, 5000);
    assert_eq!(t.dropped_total(), 0);
    // Rotel batches for up to its timeout: wait for all 5000 at the gateway.
    let mut ids = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids.len() < 5000 && Instant::now() < deadline {
        for s in captured_ids("chain-gw") {
            *ids.entry(s).or_insert(0u32) += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(rotel);
    gateway.stop();
    for s in captured_ids("chain-gw") {
        *ids.entry(s).or_insert(0u32) += 1;
    }
    let twice = ids.values().filter(|&&n| n > 1).count();
    assert_eq!(
        (ids.len(), twice),
        (5000, 0),
        "every span id once at the gateway"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mtls_on_grpc_and_http_and_a_client_without_certificate_refused() {
    let dir = pki("mtls");
    let d = dir.display();
    let (grpc, http) = (free_port(), free_port());
    let tls = format!(
        "{{cert_file: '{d}/server.pem', key_file: '{d}/server.key', client_ca_file: '{d}/ca.pem'}}"
    );
    let gw = Oxeye::start(
        &format!("receivers:\n  otlp:\n    protocols:\n      grpc: {{endpoint: '127.0.0.1:{grpc}', tls: {tls}}}\n      http: {{endpoint: '127.0.0.1:{http}', tls: {tls}}}\nexporters:\n  capture/mtls:\nservice:\n  pipelines:\n    traces: {{receivers: [otlp], exporters: [capture/mtls]}}\n    metrics: {{receivers: [otlp], exporters: [capture/mtls]}}\n    logs: {{receivers: [otlp], exporters: [capture/mtls]}}\n"),
        &[grpc, http],
    );
    let agent = |protocol: &str, endpoint: String, client_cert: bool| {
        let cert = if client_cert {
            format!(", cert_file: '{d}/client.pem', key_file: '{d}/client.key'")
        } else {
            String::new()
        };
        // Spans, metric data points and log records: one server, one TLS set-up for all three.
        let yaml = format!("receivers:\n  synthetic: {{seed: 5, batch_size: 100, spans: {{count: 1000}}, metrics: {{count: 500}}, logs: {{count: 300}}}}\nexporters:\n  otlp: {{protocol: {protocol}, endpoint: '{endpoint}', tls: {{ca_file: '{d}/ca.pem'{cert}}}, retry_on_failure: {{enabled: false}}}}\nservice:\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [otlp]}}\n    metrics: {{receivers: [synthetic], exporters: [otlp]}}\n    logs: {{receivers: [synthetic], exporters: [otlp]}}\n");
        let report = oxeye_tests::run(&yaml);
        component(&report, "exporters/otlp")
    };
    let t = agent("grpc", format!("https://127.0.0.1:{grpc}"), true);
    assert_eq!(
        (t.emitted(), t.dropped_total()),
        (1800, 0),
        "gRPC over mTLS"
    );
    let t = agent("http/protobuf", format!("https://127.0.0.1:{http}"), true);
    assert_eq!(
        (t.emitted(), t.dropped_total()),
        (1800, 0),
        "HTTPS with a client certificate"
    );
    // No client certificate: the handshake fails, nothing gets in, the agent counts the loss.
    let t = agent("grpc", format!("https://127.0.0.1:{grpc}"), false);
    assert_eq!(
        (t.emitted(), t.dropped_total()),
        (0, 1800),
        "no client certificate"
    );
    gw.stop();
    let batches = oxeye_tests::captured("capture/mtls");
    let count = |signal: oxeye_api::Signal| -> usize {
        batches
            .iter()
            .filter(|b| b.signal() == signal)
            .map(|b| b.len())
            .sum()
    };
    assert_eq!(
        (
            count(oxeye_api::Signal::Traces),
            count(oxeye_api::Signal::Metrics),
            count(oxeye_api::Signal::Logs)
        ),
        (2000, 1000, 600),
        "spans, data points and log records over mTLS, gRPC and HTTPS"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
