//! OTLP requests → oxeye batches, field for field (metrics in [`metrics`], logs in [`logs`]).
//! For traces: what the exporter writes back out is
//! what came in (kind, status, every attribute value type, events, links, trace state, flags,
//! dropped counts, resource, scope and schema URLs). Spans with invalid ids or enum values are
//! rejected one by one and reported back as a partial success.

pub mod logs;
pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1 as proto;
use oxeye_api::{
    Attributes, Batch, DroppedCounts, EntityRef, Event, Link, Resource, Scope, Span, SpanId,
    SpanKind, StatusCode, TraceId, Value,
};

/// What one request turned into.
#[derive(Debug, Default)]
pub struct Converted {
    /// One batch per `ResourceSpans` (`ResourceMetrics`, `ResourceLogs`) that kept a record.
    pub batches: Vec<Batch>,
    /// Spans (data points, log records) in the batches.
    pub accepted: u64,
    /// Spans (data points, log records) refused as malformed.
    pub rejected: u64,
    /// Why the first refused span was refused.
    pub first_error: Option<String>,
    /// Estimated memory the batches hold (their encoded bytes, or decoded spans): what stays
    /// charged to the receiver's in-flight budget while they wait in the pipeline.
    pub held_bytes: u64,
}

/// Memory the decoded records of `batches` take ([`oxeye_api::Span::size_bytes`] and its
/// like for metrics and logs).
pub(crate) fn decoded_size(batches: &[Batch]) -> u64 {
    use oxeye_api::Records;
    batches
        .iter()
        .map(|b| {
            let records: usize = match &b.records {
                Records::Spans(spans) => spans.iter().map(Span::size_bytes).sum(),
                Records::Metrics(m) => m.iter().map(oxeye_api::Metric::size_bytes).sum(),
                Records::Logs(l) => l.iter().map(oxeye_api::LogRecord::size_bytes).sum(),
                _ => 0,
            };
            (records + std::mem::size_of::<Batch>()) as u64
        })
        .sum()
}

/// The interners' hasher: keyed with a random seed, so a client cannot craft keys that collide
/// (which would make a request's decoding quadratic); foldhash is as fast as FNV on short keys.
pub(crate) type Keyed = foldhash::fast::RandomState;

/// Interns attribute keys (and other repeated strings) within one request: a key repeated on
/// every span is allocated once.
#[derive(Default)]
pub(super) struct Strings(HashMap<String, Arc<str>, Keyed>);

impl Strings {
    pub(super) fn get(&mut self, s: String) -> Arc<str> {
        if let Some(a) = self.0.get(&s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s.as_str());
        self.0.insert(s, Arc::clone(&a));
        a
    }
}

pub(super) fn optional(s: String) -> Option<Arc<str>> {
    (!s.is_empty()).then(|| Arc::from(s))
}

pub(super) fn value(strings: &mut Strings, v: Option<AnyValue>) -> Value {
    match v.and_then(|v| v.value) {
        None => Value::Empty,
        Some(any_value::Value::StringValue(s)) => Value::Str(s.into()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(b),
        Some(any_value::Value::IntValue(i)) => Value::Int(i),
        Some(any_value::Value::DoubleValue(d)) => Value::F64(d),
        Some(any_value::Value::BytesValue(b)) => Value::Bytes(b.into()),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(
            a.values
                .into_iter()
                .map(|v| value(strings, Some(v)))
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(kv)) => {
            Value::Map(Arc::new(attributes(strings, kv.values)))
        }
    }
}

pub(super) fn attributes(strings: &mut Strings, kvs: Vec<KeyValue>) -> Attributes {
    let mut out = Attributes::new();
    out.reserve(kvs.len());
    for kv in kvs {
        let key = strings.get(kv.key);
        out.push(key, value(strings, kv.value));
    }
    out
}

pub(super) fn resource(
    strings: &mut Strings,
    r: Option<ProtoResource>,
    schema_url: String,
) -> Resource {
    let r = r.unwrap_or_default();
    Resource {
        attributes: attributes(strings, r.attributes),
        dropped_attributes_count: r.dropped_attributes_count,
        schema_url: optional(schema_url),
        entity_refs: r
            .entity_refs
            .into_iter()
            .map(|e| EntityRef {
                schema_url: optional(e.schema_url),
                entity_type: e.r#type.into(),
                id_keys: e.id_keys.into_iter().map(|k| strings.get(k)).collect(),
                description_keys: e
                    .description_keys
                    .into_iter()
                    .map(|k| strings.get(k))
                    .collect(),
            })
            .collect(),
    }
}

pub(super) fn scope(
    strings: &mut Strings,
    s: Option<InstrumentationScope>,
    schema_url: String,
) -> Scope {
    let s = s.unwrap_or_default();
    Scope {
        name: strings.get(s.name),
        version: strings.get(s.version),
        attributes: attributes(strings, s.attributes),
        dropped_attributes_count: s.dropped_attributes_count,
        schema_url: optional(schema_url),
    }
}

fn trace_id(bytes: &[u8], what: &str) -> Result<TraceId, String> {
    match <[u8; 16]>::try_from(bytes) {
        Ok(id) if id != [0; 16] => Ok(TraceId(id)),
        Ok(_) => Err(format!("{what} is all zero")),
        Err(_) => Err(format!("{what} has {} bytes, not 16", bytes.len())),
    }
}

fn span_id(bytes: &[u8], what: &str) -> Result<SpanId, String> {
    match <[u8; 8]>::try_from(bytes) {
        Ok(id) if id != [0; 8] => Ok(SpanId(id)),
        Ok(_) => Err(format!("{what} is all zero")),
        Err(_) => Err(format!("{what} has {} bytes, not 8", bytes.len())),
    }
}

fn kind(k: i32) -> Result<SpanKind, String> {
    Ok(match proto::span::SpanKind::try_from(k) {
        Ok(proto::span::SpanKind::Unspecified) => SpanKind::Unspecified,
        Ok(proto::span::SpanKind::Internal) => SpanKind::Internal,
        Ok(proto::span::SpanKind::Server) => SpanKind::Server,
        Ok(proto::span::SpanKind::Client) => SpanKind::Client,
        Ok(proto::span::SpanKind::Producer) => SpanKind::Producer,
        Ok(proto::span::SpanKind::Consumer) => SpanKind::Consumer,
        Err(_) => return Err(format!("kind {k} is not a span kind (0-5)")),
    })
}

fn span(strings: &mut Strings, scope: &Arc<Scope>, s: proto::Span) -> Result<Span, String> {
    let parent_span_id = match s.parent_span_id.len() {
        0 => None,
        // An all-zero parent is invalid but harmless: kept as sent.
        8 => Some(SpanId(
            s.parent_span_id.as_slice().try_into().unwrap_or_default(),
        )),
        n => return Err(format!("parent_span_id has {n} bytes, not 8 or 0")),
    };
    let (status, status_message) = match s.status {
        None => (StatusCode::Unset, None),
        Some(st) => {
            let code = match proto::status::StatusCode::try_from(st.code) {
                Ok(proto::status::StatusCode::Unset) => StatusCode::Unset,
                Ok(proto::status::StatusCode::Ok) => StatusCode::Ok,
                Ok(proto::status::StatusCode::Error) => StatusCode::Error,
                Err(_) => return Err(format!("status code {} is not 0, 1 or 2", st.code)),
            };
            (code, optional(st.message))
        }
    };
    let mut links = Vec::with_capacity(s.links.len());
    for l in s.links {
        links.push(Link {
            trace_id: trace_id(&l.trace_id, "a link's trace_id")?,
            span_id: span_id(&l.span_id, "a link's span_id")?,
            trace_state: optional(l.trace_state),
            attributes: attributes(strings, l.attributes),
            dropped_attributes_count: l.dropped_attributes_count,
            flags: l.flags,
        });
    }
    Ok(Span {
        trace_id: trace_id(&s.trace_id, "trace_id")?,
        span_id: span_id(&s.span_id, "span_id")?,
        parent_span_id,
        kind: kind(s.kind)?,
        name: strings.get(s.name),
        start_unix_ns: s.start_time_unix_nano,
        end_unix_ns: s.end_time_unix_nano,
        status,
        status_message,
        attributes: attributes(strings, s.attributes),
        trace_state: optional(s.trace_state),
        flags: s.flags,
        events: s
            .events
            .into_iter()
            .map(|e| Event {
                time_unix_ns: e.time_unix_nano,
                name: strings.get(e.name),
                attributes: attributes(strings, e.attributes),
                dropped_attributes_count: e.dropped_attributes_count,
            })
            .collect(),
        links,
        dropped: DroppedCounts {
            attributes: s.dropped_attributes_count,
            events: s.dropped_events_count,
            links: s.dropped_links_count,
        },
        scope: Some(Arc::clone(scope)),
        ..Span::default()
    })
}

/// Converts one request; never fails as a whole (bad spans are counted in `rejected`).
pub fn request(req: ExportTraceServiceRequest) -> Converted {
    let mut strings = Strings::default();
    let mut out = Converted::default();
    for rs in req.resource_spans {
        let res = Arc::new(resource(&mut strings, rs.resource, rs.schema_url));
        let mut spans = Vec::new();
        for ss in rs.scope_spans {
            let sc = Arc::new(scope(&mut strings, ss.scope, ss.schema_url));
            spans.reserve(ss.spans.len());
            for s in ss.spans {
                match span(&mut strings, &sc, s) {
                    Ok(s) => spans.push(s),
                    Err(why) => {
                        out.rejected += 1;
                        out.first_error.get_or_insert(why);
                    }
                }
            }
        }
        if !spans.is_empty() {
            out.accepted += spans.len() as u64;
            out.batches.push(Batch::spans(res, spans));
        }
    }
    out
}

/// OTLP/JSON → the generated message of one signal (`what`: `trace`, `metrics`, `logs`).
///
/// The specification lets 64-bit integers be JSON numbers or strings. The generated serde code
/// takes one form per field, and not the same everywhere: strings for most `*UnixNano` times,
/// numbers for the times of exemplars, exponential histogram and summary points, and for counts
/// and integer values. Each is turned into the form its field takes first.
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, String> {
    use serde_json::Value as J;
    let mut v: J = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    fn as_number(v: &mut J) {
        if let Some(n) = v.as_str().and_then(|s| s.parse::<i128>().ok()) {
            if let Ok(n) = serde_json::from_str::<J>(&n.to_string()) {
                *v = n;
            }
        }
    }
    fn fix(v: &mut J, numeric_times: bool) {
        match v {
            J::Object(map) => {
                for (k, v) in map.iter_mut() {
                    match k.as_str() {
                        k if k.ends_with("UnixNano") => match v {
                            J::Number(n) if !numeric_times => *v = J::String(n.to_string()),
                            J::String(_) if numeric_times => as_number(v),
                            _ => {}
                        },
                        "count" | "zeroCount" | "asInt" => as_number(v),
                        "bucketCounts" => {
                            if let J::Array(items) = v {
                                items.iter_mut().for_each(as_number);
                            }
                        }
                        "exemplars" | "exponentialHistogram" | "summary" => fix(v, true),
                        _ => fix(v, numeric_times),
                    }
                }
            }
            J::Array(items) => items.iter_mut().for_each(|v| fix(v, numeric_times)),
            _ => {}
        }
    }
    fix(&mut v, false);
    serde_json::from_value(v).map_err(|e| format!("not an OTLP/JSON {what} request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
        }
    }

    fn good_span(id: u8) -> proto::Span {
        proto::Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            kind: 2,
            name: "GET /".into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_value_type_and_bad_ids() {
        let mut bad_trace = good_span(2);
        bad_trace.trace_id = vec![0; 16];
        let mut bad_kind = good_span(3);
        bad_kind.kind = 9;
        let mut bad_parent = good_span(4);
        bad_parent.parent_span_id = vec![1, 2, 3];
        let mut ok = good_span(1);
        ok.attributes = vec![
            kv("s", any_value::Value::StringValue("x".into())),
            kv(
                "a",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::IntValue(7)),
                    }],
                }),
            ),
            kv(
                "m",
                any_value::Value::KvlistValue(KeyValueList {
                    values: vec![kv("b", any_value::Value::BoolValue(true))],
                }),
            ),
            KeyValue {
                key: "e".into(),
                value: None,
            },
        ];
        let req = ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                scope_spans: vec![proto::ScopeSpans {
                    spans: vec![ok, bad_trace, bad_kind, bad_parent],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let c = request(req);
        assert_eq!((c.accepted, c.rejected), (1, 3));
        assert_eq!(c.first_error.as_deref(), Some("trace_id is all zero"));
        let oxeye_api::Records::Spans(spans) = &c.batches[0].records else {
            panic!()
        };
        let a = &spans[0].attributes;
        assert_eq!(a.get("a"), Some(&Value::Array(vec![Value::Int(7)].into())));
        assert_eq!(a.get("e"), Some(&Value::Empty));
        assert_eq!(spans[0].kind, SpanKind::Server);
        assert!(spans[0].scope.is_some());
    }

    #[test]
    fn json_takes_numbers_or_strings_for_times() {
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",
             "name":"a","kind":1,"startTimeUnixNano":1700000000000000000,
             "endTimeUnixNano":"1700000000000000001"}]}]}]}"#;
        let req: ExportTraceServiceRequest = from_json(body, "trace").unwrap();
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(s.end_time_unix_nano, 1_700_000_000_000_000_001);
        assert!(from_json::<ExportTraceServiceRequest>(b"{", "trace")
            .unwrap_err()
            .starts_with("invalid JSON"));
    }
}
