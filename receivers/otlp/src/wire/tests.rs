use std::sync::Arc;

use super::reader::Reader;
use super::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1 as proto;
use oxeye_api::{Batch, Records};
use oxeye_otlp_wire::{END_GROUP, LEN, START_GROUP};
use prost::Message;

fn kv(key: &str, v: Option<any_value::Value>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: v }),
    }
}

fn attrs() -> Vec<KeyValue> {
    use any_value::Value as V;
    vec![
        kv("s", Some(V::StringValue("text".into()))),
        kv("s", Some(V::StringValue("repeated".into()))),
        kv("", Some(V::StringValue(String::new()))),
        kv("b", Some(V::BoolValue(true))),
        kv("i", Some(V::IntValue(-7))),
        kv("d", Some(V::DoubleValue(-0.5))),
        kv("bytes", Some(V::BytesValue(vec![0, 255]))),
        kv(
            "arr",
            Some(V::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(V::IntValue(1)),
                    },
                    AnyValue { value: None },
                ],
            })),
        ),
        kv(
            "map",
            Some(V::KvlistValue(KeyValueList {
                values: vec![kv("inner", Some(V::BoolValue(false)))],
            })),
        ),
        kv("empty", None),
        KeyValue {
            key: "no value".into(),
            value: None,
        },
    ]
}

fn full_span(id: u8) -> proto::Span {
    proto::Span {
        trace_id: vec![1; 16],
        span_id: vec![id; 8],
        trace_state: "k=v".into(),
        parent_span_id: vec![0; 8],
        flags: 0x301,
        name: "GET /".into(),
        kind: 2,
        start_time_unix_nano: 5,
        end_time_unix_nano: u64::MAX,
        attributes: attrs(),
        dropped_attributes_count: 1,
        events: vec![
            proto::span::Event {
                time_unix_nano: 6,
                name: "exception".into(),
                attributes: attrs(),
                dropped_attributes_count: 2,
            },
            proto::span::Event::default(),
        ],
        dropped_events_count: 3,
        links: vec![proto::span::Link {
            trace_id: vec![2; 16],
            span_id: vec![3; 8],
            trace_state: "a=b".into(),
            attributes: attrs(),
            dropped_attributes_count: 4,
            flags: 1,
        }],
        dropped_links_count: 5,
        status: Some(proto::Status {
            message: "boom".into(),
            code: 2,
        }),
    }
}

fn request_with_everything() -> ExportTraceServiceRequest {
    let mut bad = Vec::new();
    for (i, f) in [
        (|s: &mut proto::Span| s.trace_id = vec![0; 16]) as fn(&mut proto::Span),
        |s| s.span_id = vec![1; 3],
        |s| s.parent_span_id = vec![1; 3],
        |s| s.kind = 9,
        |s| s.kind = -1,
        |s| s.status.as_mut().unwrap().code = 7,
        |s| s.links[0].span_id = vec![0; 8],
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = full_span(10 + i as u8);
        f(&mut s);
        bad.push(s);
    }
    let mut spans = vec![full_span(1), proto::Span::default()];
    spans.extend(bad);
    spans.push(full_span(2));
    ExportTraceServiceRequest {
        resource_spans: vec![
            proto::ResourceSpans {
                resource: Some(ProtoResource {
                    attributes: attrs(),
                    dropped_attributes_count: 9,
                    entity_refs: vec![opentelemetry_proto::tonic::common::v1::EntityRef {
                        schema_url: "u".into(),
                        r#type: "service".into(),
                        id_keys: vec!["s".into()],
                        description_keys: vec!["b".into(), "i".into()],
                    }],
                }),
                scope_spans: vec![
                    proto::ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "lib".into(),
                            version: "1".into(),
                            attributes: attrs(),
                            dropped_attributes_count: 1,
                        }),
                        spans,
                        schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
                    },
                    proto::ScopeSpans {
                        spans: vec![full_span(3)],
                        ..Default::default()
                    },
                ],
                schema_url: "r".into(),
            },
            // Nothing left of it: no batch.
            proto::ResourceSpans {
                scope_spans: vec![proto::ScopeSpans {
                    spans: vec![proto::Span::default()],
                    ..Default::default()
                }],
                ..Default::default()
            },
            proto::ResourceSpans::default(),
            proto::ResourceSpans {
                scope_spans: vec![proto::ScopeSpans {
                    spans: vec![full_span(4)],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    }
}

/// Appends field `field` (length-delimited) holding `body` to `out`.
fn push_field(out: &mut Vec<u8>, field: u8, body: &[u8]) {
    out.push(field << 3 | LEN);
    prost::encoding::encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A request of one ResourceSpans holding `scope_spans` (its encoded fields).
fn request_of(scope_spans: &[u8]) -> Vec<u8> {
    let (mut rs, mut req) = (Vec::new(), Vec::new());
    push_field(&mut rs, 2, scope_spans);
    push_field(&mut req, 1, &rs);
    req
}

fn same(bytes: &[u8]) {
    let direct = request(bytes).expect("decodes");
    let reference =
        crate::convert::request(ExportTraceServiceRequest::decode(bytes).expect("prost"));
    assert_eq!(direct.batches, reference.batches);
    assert_eq!(
        (direct.accepted, direct.rejected, direct.first_error),
        (
            reference.accepted,
            reference.rejected,
            reference.first_error
        )
    );
}

#[test]
fn what_convert_makes_of_the_prost_decoded_request() {
    let bytes = request_with_everything().encode_to_vec();
    same(&bytes);
    let c = request(&bytes).unwrap();
    assert_eq!((c.accepted, c.rejected), (4, 9));
    same(&[]);
}

#[test]
fn fields_in_any_order_and_unknown_fields() {
    // The scope after the spans, an unknown varint, fixed64, group and length-delimited
    // field in a span, and a span whose fields are written in reverse order.
    let mut ss = Vec::new();
    let span = full_span(1).encode_to_vec();
    let scope = InstrumentationScope {
        name: "late".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut fields = Vec::new();
    let mut r = Reader::new(&span);
    while r.more() {
        let start = r.pos;
        let (f, w) = r.key().unwrap();
        r.skip(f, w).unwrap();
        fields.push(span[start..r.pos].to_vec());
    }
    let mut reversed: Vec<u8> = fields.into_iter().rev().flatten().collect();
    reversed.extend_from_slice(&[0xa8, 0x06, 0x01]); // field 101, varint
    reversed.extend_from_slice(&[0xa9, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]); // field 101, fixed64
    reversed.extend_from_slice(&[0xab, 0x06, 0x08, 0x01, 0xac, 0x06]); // group 101
    reversed.extend_from_slice(&[0xaa, 0x06, 0x02, b'h', b'i']); // field 101, bytes
    push_field(&mut ss, 2, &reversed);
    push_field(&mut ss, 1, &scope);
    let req = request_of(&ss);
    same(&req);
    let c = request(&req).unwrap();
    let oxeye_api::Records::Spans(spans) = &c.batches[0].records else {
        panic!()
    };
    assert_eq!(&*spans[0].scope.as_ref().unwrap().name, "late");
    // Repeated attributes keep their order; the last of a repeated scalar wins.
    assert_eq!(spans[0].attributes.len(), 11);
}

/// Whether `encoded` takes the request as it is; when it does, its batches are `request`'s:
/// the same resources and counts, and each one's bytes decode to the same spans.
fn passes_as_received(bytes: &[u8]) -> bool {
    let buf = bytes::Bytes::copy_from_slice(bytes);
    let Some(enc) = encoded(&buf) else {
        return false;
    };
    let direct = request(bytes).expect("what `encoded` passes decodes");
    assert_eq!((direct.rejected, enc.rejected), (0, 0));
    assert_eq!(enc.accepted, direct.accepted);
    assert_eq!(enc.batches.len(), direct.batches.len());
    for (e, d) in enc.batches.iter().zip(&direct.batches) {
        assert!(e.is_encoded());
        assert_eq!(e.len(), d.len());
        let decoded = Batch::decoded(Arc::new(e.clone())).expect("decodes");
        assert_eq!(*decoded, *d);
    }
    true
}

/// Clean spans in two resources and three scopes.
fn clean_request() -> ExportTraceServiceRequest {
    let everything = request_with_everything();
    let mut first = everything.resource_spans[0].clone();
    first.scope_spans[0].spans = vec![full_span(1), full_span(2)];
    let mut second = everything.resource_spans[3].clone();
    second.scope_spans.push(proto::ScopeSpans {
        scope: Some(InstrumentationScope {
            name: "other".into(),
            ..Default::default()
        }),
        spans: vec![full_span(5)],
        schema_url: String::new(),
    });
    ExportTraceServiceRequest {
        resource_spans: vec![first, proto::ResourceSpans::default(), second],
    }
}

#[test]
fn clean_requests_pass_as_received_the_rest_is_decoded() {
    let clean = clean_request().encode_to_vec();
    assert!(passes_as_received(&clean));
    let buf = bytes::Bytes::from(clean.clone());
    let enc = encoded(&buf).unwrap();
    assert_eq!(enc.accepted, 5);
    // One batch per ResourceSpans with spans, each a request of its own: together, the
    // request (the empty ResourceSpans between them had nothing to send).
    let parts: Vec<u8> = enc
        .batches
        .iter()
        .flat_map(|b| match &b.records {
            Records::Encoded(e) => e.bytes().to_vec(),
            _ => panic!("encoded"),
        })
        .collect();
    let whole = ExportTraceServiceRequest::decode(&clean[..]).unwrap();
    let mut merged = ExportTraceServiceRequest::decode(&parts[..]).unwrap();
    merged
        .resource_spans
        .insert(1, proto::ResourceSpans::default());
    assert_eq!(merged, whole);
    // A span to refuse, an unknown field, a field out of order with one: decoded instead,
    // so the client hears exactly what was refused.
    assert!(!passes_as_received(
        &request_with_everything().encode_to_vec()
    ));
    assert!(read(
        &bytes::Bytes::from(request_with_everything().encode_to_vec()),
        true
    )
    .unwrap()
    .batches
    .iter()
    .all(|b| !b.is_encoded()));
    // Not kept when the pipeline would decode them anyway.
    let buf = bytes::Bytes::from(clean.clone());
    assert!(read(&buf, false)
        .unwrap()
        .batches
        .iter()
        .all(|b| !b.is_encoded()));
    assert!(read(&buf, true)
        .unwrap()
        .batches
        .iter()
        .all(|b| b.is_encoded()));
    let mut unknown = clean.clone();
    unknown.extend_from_slice(&[0xa8, 0x06, 0x01]); // field 101, varint
    assert!(!passes_as_received(&unknown));
    assert!(passes_as_received(&[]));
}

#[test]
fn what_passes_as_received_always_decodes() {
    // Every byte of a clean request changed to values that break lengths, keys, ids, enums
    // and UTF-8, and every truncation: whatever `encoded` passes, `request` takes whole.
    let good = clean_request().encode_to_vec();
    let (mut passed, mut tried) = (0, 0);
    for i in 0..good.len() {
        for v in [
            0x00,
            0x01,
            0x06,
            0x7f,
            0x80,
            0xff,
            good[i] ^ 0x08,
            good[i] ^ 0x02,
        ] {
            let mut b = good.clone();
            b[i] = v;
            tried += 1;
            passed += usize::from(passes_as_received(&b));
        }
        passes_as_received(&good[..i]);
    }
    assert!(passed > 0 && passed < tried, "{passed} of {tried}");
}

#[test]
fn refuses_what_prost_refuses() {
    let good = request_with_everything().encode_to_vec();
    for cut in [1, 2, 10, good.len() / 2, good.len() - 1] {
        let bad = &good[..cut];
        assert!(ExportTraceServiceRequest::decode(bad).is_err());
        assert!(request(bad).is_err(), "cut at {cut}");
    }
    let invalid_utf8 = ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            scope_spans: vec![proto::ScopeSpans {
                spans: vec![proto::Span {
                    name: "x".into(),
                    ..full_span(1)
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let at = invalid_utf8
        .windows(1)
        .rposition(|w| w == b"x")
        .expect("the name");
    let mut broken = invalid_utf8.clone();
    broken[at] = 0xff;
    assert!(ExportTraceServiceRequest::decode(&broken[..]).is_err());
    assert_eq!(
        request(&broken).unwrap_err().to_string(),
        "a string field is not valid UTF-8"
    );
    // A known field with the wrong wire type; an overlong varint.
    assert!(request(&[0x08, 0x01])
        .unwrap_err()
        .to_string()
        .contains("wire type"));
    assert!(request(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    assert!(request(b"\xff\xff\xff\xff not protobuf").is_err());
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    // An attribute whose value is an array in an array ... a million deep (about 4 MiB).
    let nested = |depth: usize| {
        // Built inside out as prefixes (an AnyValue holding an ArrayValue holding the
        // inner AnyValue), then written outermost first: linear in the depth.
        let (mut prefixes, mut len) = (Vec::new(), 0usize); // the innermost value is empty
        for _ in 0..depth {
            let mut p = vec![5 << 3 | LEN];
            let array = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
            prost::encoding::encode_varint(array as u64, &mut p);
            p.push(1 << 3 | LEN);
            prost::encoding::encode_varint(len as u64, &mut p);
            len += p.len();
            prefixes.push(p);
        }
        let v: Vec<u8> = prefixes.into_iter().rev().flatten().collect();
        assert_eq!(v.len(), len);
        let span = proto::Span {
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: None,
            }],
            ..full_span(1)
        }
        .encode_to_vec();
        // The span's one attribute, with the nested value appended to its KeyValue.
        let mut kv = Vec::new();
        push_field(&mut kv, 1, b"deep");
        push_field(&mut kv, 2, &v);
        let mut span = span;
        push_field(&mut span, 9, &kv);
        let mut ss = Vec::new();
        push_field(&mut ss, 2, &span);
        request_of(&ss)
    };
    assert_eq!(request(&nested(50)).expect("50 deep is fine").accepted, 1);
    assert!(passes_as_received(&nested(10)));
    for depth in [101, 1_000_000] {
        let req = nested(depth);
        assert!(ExportTraceServiceRequest::decode(&req[..]).is_err());
        let why = request(&req).unwrap_err().to_string();
        assert!(why.contains("nested deeper than 100"), "{why}");
        assert!(!passes_as_received(&req));
    }
    // Unknown groups nested a million deep (field 2 of the request, start-group, each one
    // byte): refused, not skipped by recursion.
    let groups = vec![2 << 3 | START_GROUP; 1_000_000];
    let why = request(&groups).unwrap_err().to_string();
    assert!(why.contains("groups are nested deeper than 100"), "{why}");
    assert!(!passes_as_received(&groups));
    // A group nested a few deep and closed is skipped like any unknown field.
    let mut ok = vec![
        2 << 3 | START_GROUP,
        3 << 3 | START_GROUP,
        3 << 3 | END_GROUP,
    ];
    ok.push(2 << 3 | END_GROUP);
    assert_eq!(request(&ok).expect("skipped").accepted, 0);
}
