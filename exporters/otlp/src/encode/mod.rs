//! oxeye records → generated OTLP messages (opentelemetry-proto). Metrics and logs, field for
//! field, in [`metrics`] and [`logs`].
//!
//! Spans become `ResourceSpans/ScopeSpans/Span`; flows become two monotonic delta Sums,
//! `network.flow.bytes` and `network.flow.packets`, one data point per flow record with the
//! semantic-convention attributes and the record's window as start/time. Profile samples become
//! OTLP profiles (v1development, as of opentelemetry-proto 1.8.0): one `Profile` per resource and
//! window, sample type `samples/count` with period `cpu/nanoseconds`, and one
//! `ProfilesDictionary` per request holding every mapping, location, function, stack, link and
//! attribute once.

pub mod logs;
pub mod metrics;

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::profiles::v1development as prof;
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Status};
use oxeye_api::profile::Tables;
use oxeye_api::{Attributes, Flow, Resource, Sample, Scope, Span, SpanKind, StatusCode, Value};

use crate::config::ResourceValue;

/// Name of the metric carrying flow bytes.
pub const FLOW_BYTES: &str = "network.flow.bytes";
/// Name of the metric carrying flow packets.
pub const FLOW_PACKETS: &str = "network.flow.packets";

pub(crate) fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

pub(crate) fn str_value(s: &str) -> any_value::Value {
    any_value::Value::StringValue(s.to_string())
}

fn int_array(values: &[u64]) -> any_value::Value {
    any_value::Value::ArrayValue(ArrayValue {
        values: values
            .iter()
            .map(|&v| AnyValue {
                // Addresses above i64::MAX (kernel space) keep their bits.
                value: Some(any_value::Value::IntValue(v as i64)),
            })
            .collect(),
    })
}

/// Stack addresses as one string, `0xffffffff81a2b3c4 0x7f…`, innermost first: readable in trace
/// UIs (an int array shows kernel addresses as negative numbers) and one leaf instead of an
/// array nested eight messages deep, which prost walks once per level (2× the encode cost).
fn hex_addresses(values: &[u64]) -> any_value::Value {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(values.len() * 19);
    for (i, &v) in values.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str("0x");
        let digits = (16 - v.leading_zeros() as usize / 4).max(1);
        for d in (0..digits).rev() {
            out.push(DIGITS[((v >> (d * 4)) & 0xf) as usize] as char);
        }
    }
    any_value::Value::StringValue(out)
}

pub(crate) fn any_value(v: &Value) -> AnyValue {
    AnyValue {
        value: match v {
            Value::Str(s) => Some(str_value(s)),
            Value::Int(i) => Some(any_value::Value::IntValue(*i)),
            Value::F64(f) => Some(any_value::Value::DoubleValue(*f)),
            Value::Bool(b) => Some(any_value::Value::BoolValue(*b)),
            Value::Bytes(b) => Some(any_value::Value::BytesValue(b.to_vec())),
            Value::Array(values) => Some(any_value::Value::ArrayValue(ArrayValue {
                values: values.iter().map(any_value).collect(),
            })),
            Value::Map(attrs) => Some(any_value::Value::KvlistValue(KeyValueList {
                values: key_values(attrs),
            })),
            // Empty, and value types this version does not know.
            _ => None,
        },
    }
}

pub(crate) fn key_values(attrs: &Attributes) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(attrs.len());
    push_attributes(&mut out, attrs);
    out
}

fn push_attributes(out: &mut Vec<KeyValue>, attrs: &Attributes) {
    out.extend(attrs.iter().map(|(k, v)| KeyValue {
        key: k.to_string(),
        value: Some(any_value(v)),
    }));
}

/// Turns oxeye resources into OTLP resources with the configured extras, caching by identity
/// (a receiver shares one `Arc<Resource>` across all its batches).
pub struct Resources {
    extra: Vec<(String, any_value::Value)>,
    cache: Vec<(Arc<Resource>, ProtoResource)>,
    encoded: Vec<(Arc<Resource>, Arc<[u8]>)>,
}

impl Resources {
    /// Extras from config (`resource: {service.name: edge-7}`) override record attributes.
    pub fn new(extra: &std::collections::BTreeMap<String, ResourceValue>) -> Self {
        let extra = extra
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    ResourceValue::Bool(b) => any_value::Value::BoolValue(*b),
                    ResourceValue::Int(i) => any_value::Value::IntValue(*i),
                    ResourceValue::F64(f) => any_value::Value::DoubleValue(*f),
                    ResourceValue::Str(s) => str_value(s),
                };
                (k.clone(), v)
            })
            .collect();
        Resources {
            extra,
            cache: Vec::new(),
            encoded: Vec::new(),
        }
    }

    /// The resource as an encoded `Resource` message (for [`crate::wire`]), cached the same way.
    pub fn encoded(&mut self, resource: &Arc<Resource>) -> Arc<[u8]> {
        if let Some((_, b)) = self.encoded.iter().find(|(r, _)| Arc::ptr_eq(r, resource)) {
            return Arc::clone(b);
        }
        use prost::Message;
        let bytes: Arc<[u8]> = self.get(resource).encode_to_vec().into();
        if self.encoded.len() >= 64 {
            self.encoded.remove(0);
        }
        self.encoded
            .push((Arc::clone(resource), Arc::clone(&bytes)));
        bytes
    }

    pub(crate) fn get(&mut self, resource: &Arc<Resource>) -> ProtoResource {
        if let Some((_, p)) = self.cache.iter().find(|(r, _)| Arc::ptr_eq(r, resource)) {
            return p.clone();
        }
        let mut attributes = Vec::new();
        for (k, v) in resource.attributes.iter() {
            if !self.extra.iter().any(|(e, _)| e == k) {
                attributes.push(KeyValue {
                    key: k.to_string(),
                    value: Some(any_value(v)),
                });
            }
        }
        for (k, v) in &self.extra {
            attributes.push(kv(k, v.clone()));
        }
        let proto = ProtoResource {
            attributes,
            dropped_attributes_count: resource.dropped_attributes_count,
            entity_refs: resource
                .entity_refs
                .iter()
                .map(|e| EntityRef {
                    schema_url: e.schema_url.as_deref().unwrap_or_default().to_string(),
                    r#type: e.entity_type.to_string(),
                    id_keys: e.id_keys.iter().map(|k| k.to_string()).collect(),
                    description_keys: e.description_keys.iter().map(|k| k.to_string()).collect(),
                })
                .collect(),
        };
        if self.cache.len() >= 64 {
            self.cache.remove(0);
        }
        self.cache.push((Arc::clone(resource), proto.clone()));
        proto
    }
}

pub(crate) fn oxeye_scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "oxeye".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    }
}

/// A span's scope and the `ScopeSpans.schema_url` (oxeye's own scope for spans oxeye made).
pub(crate) fn scope(s: Option<&Arc<Scope>>) -> (InstrumentationScope, String) {
    match s {
        None => (oxeye_scope(), String::new()),
        Some(s) => (
            InstrumentationScope {
                name: s.name.to_string(),
                version: s.version.to_string(),
                attributes: key_values(&s.attributes),
                dropped_attributes_count: s.dropped_attributes_count,
            },
            s.schema_url.as_deref().unwrap_or_default().to_string(),
        ),
    }
}

pub(crate) fn opt_str(s: &Option<Arc<str>>) -> String {
    s.as_deref().unwrap_or_default().to_string()
}

/// One span as OTLP.
pub fn span(s: &Span) -> opentelemetry_proto::tonic::trace::v1::Span {
    let mut attributes = Vec::with_capacity(s.attributes.len() + 8);
    if let Some(t) = &s.task {
        attributes.push(kv("process.pid", any_value::Value::IntValue(t.pid.into())));
        attributes.push(kv("thread.id", any_value::Value::IntValue(t.tid.into())));
        attributes.push(kv(
            "process.executable.name",
            any_value::Value::StringValue(t.comm.as_str().into_owned()),
        ));
        attributes.push(kv(
            "cpu.logical_number",
            any_value::Value::IntValue(t.cpu.into()),
        ));
    }
    if let Some(r) = s.return_value {
        attributes.push(kv("oxeye.return_value", any_value::Value::IntValue(r)));
    }
    if !s.args.is_empty() {
        attributes.push(kv("oxeye.args", int_array(&s.args)));
    }
    if !s.kernel_stack.is_empty() {
        attributes.push(kv("oxeye.kernel_stack", hex_addresses(&s.kernel_stack)));
    }
    if !s.user_stack.is_empty() {
        attributes.push(kv("oxeye.user_stack", hex_addresses(&s.user_stack)));
    }
    if !s.frames.is_empty() {
        let mut trace = String::new();
        for f in &s.frames {
            use std::fmt::Write;
            let _ = write!(
                trace,
                "{}{}+{:#x} ({}",
                if trace.is_empty() { "" } else { "\n" },
                f.function.as_deref().unwrap_or("?"),
                f.offset,
                f.module.as_deref().unwrap_or("?"),
            );
            if let (Some(file), Some(line)) = (&f.file, f.line) {
                let _ = write!(trace, " {file}:{line}");
            }
            trace.push(')');
        }
        attributes.push(kv("code.stacktrace", any_value::Value::StringValue(trace)));
    }
    push_attributes(&mut attributes, &s.attributes);
    let kind = match s.kind {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Unspecified => span::SpanKind::Unspecified,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    };
    let code = match s.status {
        StatusCode::Unset => status::StatusCode::Unset,
        StatusCode::Ok => status::StatusCode::Ok,
        StatusCode::Error => status::StatusCode::Error,
    };
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: s.trace_id.0.to_vec(),
        span_id: s.span_id.0.to_vec(),
        trace_state: opt_str(&s.trace_state),
        parent_span_id: s.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: s.flags,
        name: s.name.to_string(),
        kind: kind as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes,
        dropped_attributes_count: s.dropped.attributes,
        events: s
            .events
            .iter()
            .map(|e| span::Event {
                time_unix_nano: e.time_unix_ns,
                name: e.name.to_string(),
                attributes: key_values(&e.attributes),
                dropped_attributes_count: e.dropped_attributes_count,
            })
            .collect(),
        dropped_events_count: s.dropped.events,
        links: s
            .links
            .iter()
            .map(|l| span::Link {
                trace_id: l.trace_id.0.to_vec(),
                span_id: l.span_id.0.to_vec(),
                trace_state: opt_str(&l.trace_state),
                attributes: key_values(&l.attributes),
                dropped_attributes_count: l.dropped_attributes_count,
                flags: l.flags,
            })
            .collect(),
        dropped_links_count: s.dropped.links,
        // Always written, as the Collector does: an empty status is an unset one.
        status: Some(Status {
            code: code as i32,
            message: opt_str(&s.status_message),
        }),
    }
}

/// Groups records by resource (by identity, in first-seen order): one `Resource*` message each.
pub(crate) fn by_resource<'a, T>(
    parts: impl IntoIterator<Item = (&'a Arc<Resource>, &'a [T])>,
) -> Vec<(&'a Arc<Resource>, Vec<&'a T>)> {
    let mut groups: Vec<(&Arc<Resource>, Vec<&T>)> = Vec::new();
    for (resource, records) in parts {
        match groups.iter_mut().find(|(r, _)| Arc::ptr_eq(r, resource)) {
            Some((_, g)) => g.extend(records),
            None => groups.push((resource, records.iter().collect())),
        }
    }
    groups
}

/// Groups a resource's records by scope (by identity, in first-seen order).
pub(crate) fn by_scope<'a, T>(
    records: Vec<&'a T>,
    scope_of: impl Fn(&'a T) -> Option<&'a Arc<Scope>>,
) -> Vec<(Option<&'a Arc<Scope>>, Vec<&'a T>)> {
    let mut groups: Vec<(Option<&Arc<Scope>>, Vec<&T>)> = Vec::new();
    for s in records {
        let key = scope_of(s);
        let same = |g: &Option<&Arc<Scope>>| match (g, key) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        match groups.iter_mut().find(|(g, _)| same(g)) {
            Some((_, g)) => g.push(s),
            None => groups.push((key, vec![s])),
        }
    }
    groups
}

/// Builds one trace request from spans of possibly several resources.
pub fn trace_request<'a>(
    resources: &mut Resources,
    parts: impl IntoIterator<Item = (&'a Arc<Resource>, &'a [Span])>,
) -> ExportTraceServiceRequest {
    trace_request_of(
        resources,
        parts
            .into_iter()
            .flat_map(|(r, spans)| spans.iter().map(move |s| (r, s))),
    )
}

/// Builds one trace request from single spans and their resources (spans routed one by one).
pub fn trace_request_of<'a>(
    resources: &mut Resources,
    spans: impl IntoIterator<Item = (&'a Arc<Resource>, &'a Span)>,
) -> ExportTraceServiceRequest {
    let mut groups: Vec<(&Arc<Resource>, Vec<&Span>)> = Vec::new();
    for (resource, span) in spans {
        match groups.iter_mut().find(|(r, _)| Arc::ptr_eq(r, resource)) {
            Some((_, g)) => g.push(span),
            None => groups.push((resource, vec![span])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(resources.get(resource)),
                scope_spans: by_scope(spans, |s| s.scope.as_ref())
                    .into_iter()
                    .map(|(sc, spans)| {
                        let (scope, schema_url) = scope(sc);
                        ScopeSpans {
                            scope: Some(scope),
                            spans: spans.into_iter().map(span).collect(),
                            schema_url,
                        }
                    })
                    .collect(),
                schema_url: opt_str(&resource.schema_url),
            })
            .collect(),
    }
}

/// The semantic-convention attributes of a flow's data points.
pub fn flow_attributes(f: &Flow) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(8 + f.attributes.len());
    a.push(kv("source.address", str_value(&f.src_addr.to_string())));
    a.push(kv(
        "source.port",
        any_value::Value::IntValue(f.src_port.into()),
    ));
    a.push(kv(
        "destination.address",
        str_value(&f.dst_addr.to_string()),
    ));
    a.push(kv(
        "destination.port",
        any_value::Value::IntValue(f.dst_port.into()),
    ));
    a.push(kv("network.transport", str_value(&f.transport.as_str())));
    a.push(kv("network.type", str_value(f.network_type())));
    if let Some(i) = &f.interface {
        a.push(kv("network.interface.name", str_value(i)));
    }
    a.push(kv("network.io.direction", str_value(f.direction.as_str())));
    push_attributes(&mut a, &f.attributes);
    a
}

/// Start and end of the interval a flow covers: its window, or first/last seen for raw records.
fn flow_interval(f: &Flow) -> (u64, u64) {
    if f.window_end_unix_ns > 0 {
        (f.window_start_unix_ns, f.window_end_unix_ns)
    } else {
        (f.first_seen_unix_ns, f.last_seen_unix_ns)
    }
}

fn delta_sum(name: &str, unit: &str, description: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.to_string(),
        unit: unit.to_string(),
        description: description.to_string(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

/// Builds one metrics request from flows of possibly several resources.
pub fn metrics_request<'a>(
    resources: &mut Resources,
    parts: impl IntoIterator<Item = (&'a Arc<Resource>, &'a [Flow])>,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: by_resource(parts)
            .into_iter()
            .map(|(resource, flows)| {
                let (mut bytes, mut packets) = (
                    Vec::with_capacity(flows.len()),
                    Vec::with_capacity(flows.len()),
                );
                for f in flows {
                    let (start, end) = flow_interval(f);
                    let point = |v: u64, attributes: Vec<KeyValue>| NumberDataPoint {
                        attributes,
                        start_time_unix_nano: start,
                        time_unix_nano: end,
                        value: Some(number_data_point::Value::AsInt(v as i64)),
                        ..Default::default()
                    };
                    let attributes = flow_attributes(f);
                    bytes.push(point(f.bytes, attributes.clone()));
                    packets.push(point(f.packets, attributes));
                }
                ResourceMetrics {
                    resource: Some(resources.get(resource)),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(oxeye_scope()),
                        metrics: vec![
                            delta_sum(FLOW_BYTES, "By", "Bytes seen on a network flow.", bytes),
                            delta_sum(
                                FLOW_PACKETS,
                                "{packet}",
                                "Packets seen on a network flow.",
                                packets,
                            ),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
            .collect(),
    }
}

/// The dictionary tables OTLP profiles add to the shared ones: stacks, links, attributes
/// (index 0 of each is the null entry).
struct Dictionary {
    tables: Tables,
    stacks: Vec<prof::Stack>,
    stack_ids: std::collections::HashMap<Vec<i32>, i32>,
    links: Vec<prof::Link>,
    link_ids: std::collections::HashMap<([u8; 16], [u8; 8]), i32>,
    attributes: Vec<prof::KeyValueAndUnit>,
    /// (key, value as text with its type) → index.
    attribute_ids: std::collections::HashMap<(i32, String), i32>,
}

impl Dictionary {
    fn new() -> Dictionary {
        Dictionary {
            tables: Tables::new(),
            stacks: vec![prof::Stack::default()],
            stack_ids: std::collections::HashMap::new(),
            links: vec![prof::Link::default()],
            link_ids: std::collections::HashMap::new(),
            attributes: vec![prof::KeyValueAndUnit::default()],
            attribute_ids: std::collections::HashMap::new(),
        }
    }

    fn attribute(&mut self, key: &str, value: any_value::Value) -> i32 {
        let key = self.tables.string(key) as i32;
        let id = (key, format!("{value:?}"));
        if let Some(&i) = self.attribute_ids.get(&id) {
            return i;
        }
        let i = self.attributes.len() as i32;
        self.attributes.push(prof::KeyValueAndUnit {
            key_strindex: key,
            value: Some(AnyValue { value: Some(value) }),
            unit_strindex: 0,
        });
        self.attribute_ids.insert(id, i);
        i
    }

    fn sample(&mut self, s: &Sample) -> prof::Sample {
        let locations: Vec<i32> = self.tables.stack(s).into_iter().map(|l| l as i32).collect();
        let stack_index = match self.stack_ids.get(&locations) {
            Some(&i) => i,
            None => {
                let i = self.stacks.len() as i32;
                self.stacks.push(prof::Stack {
                    location_indices: locations.clone(),
                });
                self.stack_ids.insert(locations, i);
                i
            }
        };
        let link_index = match (s.trace_id, s.span_id) {
            (Some(t), Some(sp)) => *self.link_ids.entry((t.0, sp.0)).or_insert_with(|| {
                self.links.push(prof::Link {
                    trace_id: t.0.to_vec(),
                    span_id: sp.0.to_vec(),
                });
                self.links.len() as i32 - 1
            }),
            _ => 0,
        };
        let mut attribute_indices = vec![
            self.attribute("process.pid", any_value::Value::IntValue(s.pid.into())),
            self.attribute("thread.id", any_value::Value::IntValue(s.tid.into())),
            self.attribute("process.executable.name", str_value(&s.comm.as_str())),
        ];
        for (k, v) in s.attributes.iter() {
            if let Some(v) = any_value(v).value {
                attribute_indices.push(self.attribute(k, v));
            }
        }
        prof::Sample {
            stack_index,
            values: vec![s.count as i64],
            attribute_indices,
            link_index,
            timestamps_unix_nano: Vec::new(),
        }
    }

    fn into_proto(mut self) -> prof::ProfilesDictionary {
        let build_id_key = self.tables.string("process.executable.build_id.gnu");
        let frame_type_key = self.tables.string("profile.frame.type");
        let mut attributes = std::mem::take(&mut self.attributes);
        let mut build_ids = std::collections::HashMap::new();
        let t = &self.tables;
        let mapping_table = t
            .mappings
            .iter()
            .map(|m| {
                let mut attribute_indices = Vec::new();
                if m.build_id != 0 {
                    let i = *build_ids.entry(m.build_id).or_insert_with(|| {
                        attributes.push(prof::KeyValueAndUnit {
                            key_strindex: build_id_key as i32,
                            value: Some(AnyValue {
                                value: Some(str_value(&t.strings[m.build_id as usize])),
                            }),
                            unit_strindex: 0,
                        });
                        attributes.len() as i32 - 1
                    });
                    attribute_indices.push(i);
                }
                prof::Mapping {
                    memory_start: m.start,
                    memory_limit: m.end,
                    file_offset: m.file_offset,
                    filename_strindex: m.path as i32,
                    attribute_indices,
                }
            })
            .collect();
        // `profile.frame.type` (kernel, native, cpython): one attribute entry per kind.
        let mut frame_types = std::collections::HashMap::new();
        let location_table = t
            .locations
            .iter()
            .enumerate()
            .map(|(i, l)| prof::Location {
                mapping_index: l.mapping as i32,
                address: l.address,
                line: (l.function != 0)
                    .then_some(prof::Line {
                        function_index: l.function as i32,
                        line: l.line.into(),
                        column: 0,
                    })
                    .into_iter()
                    .collect(),
                attribute_indices: (i != 0)
                    .then(|| {
                        let kind = t.frame_type(l);
                        *frame_types.entry(kind).or_insert_with(|| {
                            attributes.push(prof::KeyValueAndUnit {
                                key_strindex: frame_type_key as i32,
                                value: Some(AnyValue {
                                    value: Some(str_value(kind)),
                                }),
                                unit_strindex: 0,
                            });
                            attributes.len() as i32 - 1
                        })
                    })
                    .into_iter()
                    .collect(),
            })
            .collect();
        let function_table = t
            .functions
            .iter()
            .map(|f| prof::Function {
                name_strindex: f.name as i32,
                system_name_strindex: f.name as i32,
                filename_strindex: f.file as i32,
                start_line: 0,
            })
            .collect();
        prof::ProfilesDictionary {
            mapping_table,
            location_table,
            function_table,
            link_table: self.links,
            string_table: t.strings.iter().map(|s| s.to_string()).collect(),
            attribute_table: attributes,
            stack_table: self.stacks,
        }
    }
}

/// Builds one profiles request from samples of possibly several resources and windows: a
/// `Profile` per (resource, window), all sharing the request's dictionary.
pub fn profiles_request<'a>(
    resources: &mut Resources,
    parts: impl IntoIterator<Item = (&'a Arc<Resource>, &'a [Sample])>,
) -> ExportProfilesServiceRequest {
    let mut dict = Dictionary::new();
    let [samples, count, cpu, ns] =
        ["samples", "count", "cpu", "nanoseconds"].map(|s| dict.tables.string(s) as i32);
    let value_type = |ty, unit| prof::ValueType {
        type_strindex: ty,
        unit_strindex: unit,
        aggregation_temporality: prof::AggregationTemporality::Delta as i32,
    };
    let resource_profiles = by_resource(parts)
        .into_iter()
        .map(|(resource, records)| {
            let mut windows: std::collections::BTreeMap<(u64, u64, u64), prof::Profile> =
                std::collections::BTreeMap::new();
            for s in records {
                let key = (s.window_start_unix_ns, s.window_end_unix_ns, s.period_ns);
                let sample = dict.sample(s);
                windows
                    .entry(key)
                    .or_insert_with(|| prof::Profile {
                        sample_type: Some(value_type(samples, count)),
                        time_unix_nano: key.0,
                        duration_nano: key.1.saturating_sub(key.0),
                        period_type: Some(value_type(cpu, ns)),
                        period: key.2 as i64,
                        ..Default::default()
                    })
                    .sample
                    .push(sample);
            }
            prof::ResourceProfiles {
                resource: Some(resources.get(resource)),
                scope_profiles: vec![prof::ScopeProfiles {
                    scope: Some(oxeye_scope()),
                    profiles: windows.into_values().collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dict.into_proto()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::{Comm, Direction, SpanId, TaskContext, TraceId, Transport};
    use std::net::{IpAddr, Ipv4Addr};

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn spans_keep_ids_links_times_status_and_attributes() {
        let resource = Arc::new(Resource::new(
            [("service.name", "oxeye"), ("host.name", "h1")]
                .into_iter()
                .collect(),
        ));
        let s = Span {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([1; 8]),
            parent_span_id: Some(SpanId([2; 8])),
            name: "syscall read".into(),
            kind: SpanKind::Server,
            start_unix_ns: 100,
            end_unix_ns: 350,
            status: StatusCode::Error,
            status_message: Some("EBADF".into()),
            attributes: [("oxeye.fd", 3i64)].into_iter().collect(),
            task: Some(TaskContext {
                pid: 42,
                tid: 43,
                comm: Comm::new("nginx"),
                cpu: 1,
            }),
            return_value: Some(-9),
            kernel_stack: vec![u64::MAX],
            ..Default::default()
        };
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("service.name".into(), ResourceValue::Str("edge-7".into()));
        extra.insert("deployment.shard".into(), ResourceValue::Int(3));
        let mut resources = Resources::new(&extra);
        let req = trace_request(&mut resources, [(&resource, std::slice::from_ref(&s))]);
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let res = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(attr(res, "service.name"), Some(&str_value("edge-7")));
        assert_eq!(attr(res, "host.name"), Some(&str_value("h1")));
        assert_eq!(
            attr(res, "deployment.shard"),
            Some(&any_value::Value::IntValue(3))
        );
        assert_eq!(res.iter().filter(|kv| kv.key == "service.name").count(), 1);
        let p = &rs.scope_spans[0].spans[0];
        assert_eq!(p.trace_id, vec![7; 16]);
        assert_eq!(p.span_id, vec![1; 8]);
        assert_eq!(p.parent_span_id, vec![2; 8]);
        assert_eq!(p.name, "syscall read");
        assert_eq!(p.kind, span::SpanKind::Server as i32);
        assert_eq!((p.start_time_unix_nano, p.end_time_unix_nano), (100, 350));
        let st = p.status.as_ref().unwrap();
        assert_eq!((st.code, st.message.as_str()), (2, "EBADF"));
        assert_eq!(
            attr(&p.attributes, "process.pid"),
            Some(&any_value::Value::IntValue(42))
        );
        assert_eq!(
            attr(&p.attributes, "process.executable.name"),
            Some(&str_value("nginx"))
        );
        assert_eq!(
            attr(&p.attributes, "oxeye.return_value"),
            Some(&any_value::Value::IntValue(-9))
        );
        assert_eq!(
            attr(&p.attributes, "oxeye.fd"),
            Some(&any_value::Value::IntValue(3))
        );
        assert_eq!(
            attr(&p.attributes, "oxeye.kernel_stack"),
            Some(&str_value("0xffffffffffffffff"))
        );
        assert_eq!(
            hex_addresses(&[0xffff_ffff_81a2_b3c4, 0x7f00_0000_1000, 0]),
            str_value("0xffffffff81a2b3c4 0x7f0000001000 0x0")
        );
        // A root span has an empty parent; an unset status is written empty (as the Collector).
        let root = span(&Span::default());
        assert!(root.parent_span_id.is_empty());
        assert_eq!(root.status, Some(Status::default()));
    }

    #[test]
    fn flows_become_two_delta_sums_with_semconv_attributes() {
        let resource = Arc::new(Resource::default());
        let f = Flow {
            src_addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst_addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            src_port: 5353,
            dst_port: 53,
            transport: Transport::Udp,
            ether_type: 0x0800,
            ifindex: 2,
            interface: Some("eth0".into()),
            direction: Direction::Transmit,
            packets: 3,
            bytes: 300,
            tcp_flags: Default::default(),
            first_seen_unix_ns: 11,
            last_seen_unix_ns: 12,
            window_start_unix_ns: 10,
            window_end_unix_ns: 20,
            attributes: Attributes::new(),
        };
        let mut resources = Resources::new(&Default::default());
        let req = metrics_request(&mut resources, [(&resource, std::slice::from_ref(&f))]);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2);
        for (m, name, value) in [
            (&metrics[0], FLOW_BYTES, 300),
            (&metrics[1], FLOW_PACKETS, 3),
        ] {
            assert_eq!(m.name, name);
            let Some(metric::Data::Sum(sum)) = &m.data else {
                panic!("not a sum")
            };
            assert!(sum.is_monotonic);
            assert_eq!(
                sum.aggregation_temporality,
                AggregationTemporality::Delta as i32
            );
            let p = &sum.data_points[0];
            assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (10, 20));
            assert_eq!(p.value, Some(number_data_point::Value::AsInt(value)));
            for (k, v) in [
                ("source.address", str_value("10.0.0.1")),
                ("source.port", any_value::Value::IntValue(5353)),
                ("destination.address", str_value("10.0.0.2")),
                ("destination.port", any_value::Value::IntValue(53)),
                ("network.transport", str_value("udp")),
                ("network.type", str_value("ipv4")),
                ("network.interface.name", str_value("eth0")),
                ("network.io.direction", str_value("transmit")),
            ] {
                assert_eq!(attr(&p.attributes, k), Some(&v), "{k}");
            }
        }
    }
}
