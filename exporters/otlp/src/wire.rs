//! oxeye spans → an OTLP `ExportTraceServiceRequest`, written straight to protobuf bytes with
//! prost's varint primitives.
//!
//! Building opentelemetry-proto's message structs first costs a `String` per key and value and a
//! second walk for prost's lengths; here each string is copied once, into the output. Lengths
//! are computed before writing (a span's once, stored; a key/value's from its parts), so the
//! output is written front to back into one buffer of the exact size. The bytes are those prost
//! gives for [`crate::encode::trace_request`] (same fields, same order, same defaults left out:
//! tested byte for byte), so the generated structs stay the reference.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use oxeye_api::{Attributes, Resource, Scope, Span, SpanKind, StatusCode, Value};
use oxeye_otlp_wire as pb;
use oxeye_otlp_wire::{key, I32, I64, LEN, VARINT};
use prost::encoding::{encode_varint, encoded_len_varint};

use prost::Message;

use crate::encode::{oxeye_scope, Resources};

/// Bytes reserved in front of the message for a gRPC frame header (flag and length), so a
/// gRPC request without compression is sent from this buffer without a copy.
pub const FRAME_HEADER: usize = 5;

/// An encoded trace request, behind [`FRAME_HEADER`] reserved bytes.
#[derive(Clone, Debug)]
pub struct TraceMessage(Vec<u8>);

impl TraceMessage {
    /// The protobuf message.
    pub fn bytes(&self) -> &[u8] {
        &self.0[FRAME_HEADER..]
    }

    /// The buffer: [`FRAME_HEADER`] bytes (zero) then the message.
    pub fn into_buffer(self) -> Vec<u8> {
        self.0
    }
}

/// Length of a length-delimited value of `n` bytes (its length prefix included).
fn ld(n: usize) -> usize {
    encoded_len_varint(n as u64) + n
}

/// A varint, with the one- and two-byte cases (most lengths and small ints) inline.
#[inline(always)]
fn varint(buf: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        buf.push(v as u8);
    } else if v < 0x4000 {
        buf.extend_from_slice(&[v as u8 | 0x80, (v >> 7) as u8]);
    } else {
        encode_varint(v, buf);
    }
}

#[inline(always)]
fn put_len(buf: &mut Vec<u8>, k: u8, n: usize) {
    buf.extend_from_slice(&[k]);
    varint(buf, n as u64);
}

fn put_bytes(buf: &mut Vec<u8>, k: u8, b: &[u8]) {
    put_len(buf, k, b.len());
    buf.extend_from_slice(b);
}

/// A trace or span id: its length is known here, so the copy is a few moves, not a memcpy
/// call (ids are 24 of every span's bytes).
fn put_id<const N: usize>(buf: &mut Vec<u8>, k: u8, id: &[u8; N]) {
    let mut field = [0u8; 18];
    field[0] = k;
    field[1] = N as u8;
    field[2..2 + N].copy_from_slice(id);
    buf.extend_from_slice(&field[..2 + N]);
}

/// A proto3 string field: left out when empty.
fn str_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + ld(s.len())
    }
}

fn put_str(buf: &mut Vec<u8>, k: u8, s: &str) {
    if !s.is_empty() {
        put_bytes(buf, k, s.as_bytes());
    }
}

/// A proto3 varint field: left out when zero.
fn varint_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        1 + encoded_len_varint(v)
    }
}

fn put_varint(buf: &mut Vec<u8>, k: u8, v: u64) {
    if v != 0 {
        buf.push(k);
        varint(buf, v);
    }
}

fn fixed64_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        9
    }
}

fn put_fixed64(buf: &mut Vec<u8>, k: u8, v: u64) {
    if v != 0 {
        buf.push(k);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// An attribute value as the exporter writes it: the record's own values and the ones it
/// derives from a span's eBPF context.
enum AnyRef<'a> {
    Value(&'a Value),
    Int(i64),
    Str(Cow<'a, str>),
    /// Stack addresses as one hex string (see `encode::hex_addresses`).
    Hex(&'a [u64]),
    /// Raw arguments as an array of ints.
    Ints(&'a [u64]),
}

/// Length of an `AnyValue` message's body.
fn any_len(v: &AnyRef<'_>) -> usize {
    match v {
        AnyRef::Value(v) => value_len(v),
        AnyRef::Int(i) => 1 + encoded_len_varint(*i as u64),
        AnyRef::Str(s) => 1 + ld(s.len()),
        AnyRef::Hex(a) => 1 + ld(hex_len(a)),
        AnyRef::Ints(a) => 1 + ld(ints_len(a)),
    }
}

fn put_any(buf: &mut Vec<u8>, v: &AnyRef<'_>) {
    match v {
        AnyRef::Value(v) => put_value(buf, v),
        AnyRef::Int(i) => {
            buf.push(key(pb::any_value::INT, VARINT));
            varint(buf, *i as u64);
        }
        AnyRef::Str(s) => put_bytes(buf, key(pb::any_value::STRING, LEN), s.as_bytes()),
        AnyRef::Hex(a) => {
            put_len(buf, key(pb::any_value::STRING, LEN), hex_len(a));
            put_hex(buf, a);
        }
        AnyRef::Ints(a) => {
            put_len(buf, key(pb::any_value::ARRAY, LEN), ints_len(a));
            for &v in a.iter() {
                put_len(buf, key(pb::list::VALUES, LEN), 1 + encoded_len_varint(v));
                buf.push(key(pb::any_value::INT, VARINT));
                varint(buf, v);
            }
        }
    }
}

/// Oneof fields are written even when they hold a default (an empty string, 0, false).
fn value_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => 1 + ld(s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + encoded_len_varint(*i as u64),
        Value::F64(_) => 9,
        Value::Array(values) => 1 + ld(array_len(values)),
        Value::Map(attrs) => 1 + ld(kvs_len(attrs)),
        Value::Bytes(b) => 1 + ld(b.len()),
        // Empty, and value types this version does not know: an empty AnyValue.
        _ => 0,
    }
}

fn array_len(values: &[Value]) -> usize {
    values.iter().map(|v| 1 + ld(value_len(v))).sum()
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => put_bytes(buf, key(pb::any_value::STRING, LEN), s.as_bytes()),
        Value::Bool(b) => {
            buf.push(key(pb::any_value::BOOL, VARINT));
            buf.push(u8::from(*b));
        }
        Value::Int(i) => {
            buf.push(key(pb::any_value::INT, VARINT));
            varint(buf, *i as u64);
        }
        Value::F64(f) => {
            buf.push(key(pb::any_value::DOUBLE, I64));
            buf.extend_from_slice(&f.to_le_bytes());
        }
        Value::Array(values) => {
            put_len(buf, key(pb::any_value::ARRAY, LEN), array_len(values));
            for v in values.iter() {
                put_len(buf, key(pb::list::VALUES, LEN), value_len(v));
                put_value(buf, v);
            }
        }
        Value::Map(attrs) => {
            put_len(buf, key(pb::any_value::KVLIST, LEN), kvs_len(attrs));
            put_kvs(buf, key(pb::list::VALUES, LEN), attrs);
        }
        Value::Bytes(b) => put_bytes(buf, key(pb::any_value::BYTES, LEN), b),
        _ => {}
    }
}

/// `0x…` per address, separated by spaces.
fn hex_len(addresses: &[u64]) -> usize {
    let digits: usize = addresses
        .iter()
        .map(|&v| (16 - v.leading_zeros() as usize / 4).max(1))
        .sum();
    digits + addresses.len() * 3 - 1
}

fn put_hex(buf: &mut Vec<u8>, addresses: &[u64]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, &v) in addresses.iter().enumerate() {
        if i > 0 {
            buf.push(b' ');
        }
        buf.extend_from_slice(b"0x");
        let digits = (16 - v.leading_zeros() as usize / 4).max(1);
        for d in (0..digits).rev() {
            buf.push(DIGITS[((v >> (d * 4)) & 0xf) as usize]);
        }
    }
}

fn ints_len(values: &[u64]) -> usize {
    values
        .iter()
        .map(|&v| 1 + ld(1 + encoded_len_varint(v)))
        .sum()
}

/// Length of a `KeyValue` body whose value body is `value_len` bytes (the value message is
/// always written, empty or not).
fn kv_len(k: &str, value_len: usize) -> usize {
    str_len(k) + 1 + ld(value_len)
}

fn put_kv(buf: &mut Vec<u8>, field_key: u8, k: &str, v: &AnyRef<'_>) {
    let vl = any_len(v);
    put_len(buf, field_key, kv_len(k, vl));
    put_str(buf, key(pb::key_value::KEY, LEN), k);
    put_len(buf, key(pb::key_value::VALUE, LEN), vl);
    put_any(buf, v);
}

/// Length of repeated `KeyValue` fields (keys included).
fn kvs_len(attrs: &Attributes) -> usize {
    attrs
        .iter()
        .map(|(k, v)| 1 + ld(kv_len(k, value_len(v))))
        .sum()
}

fn put_kvs(buf: &mut Vec<u8>, field_key: u8, attrs: &Attributes) {
    for (k, v) in attrs.iter() {
        put_kv(buf, field_key, k, &AnyRef::Value(v));
    }
}

/// Calls `f` with each attribute a span's eBPF context adds before its own (as `encode::span`
/// does). A visitor, not an iterator: a chain of six optional parts costs more than the
/// encoding.
fn derived<'a>(
    s: &'a Span,
    stacktrace: Option<&'a str>,
    mut f: impl FnMut(&'static str, AnyRef<'a>),
) {
    if let Some(t) = &s.task {
        f("process.pid", AnyRef::Int(t.pid.into()));
        f("thread.id", AnyRef::Int(t.tid.into()));
        f("process.executable.name", AnyRef::Str(t.comm.as_str()));
        f("cpu.logical_number", AnyRef::Int(t.cpu.into()));
    }
    if let Some(r) = s.return_value {
        f("oxeye.return_value", AnyRef::Int(r));
    }
    if !s.args.is_empty() {
        f("oxeye.args", AnyRef::Ints(&s.args));
    }
    if !s.kernel_stack.is_empty() {
        f("oxeye.kernel_stack", AnyRef::Hex(&s.kernel_stack));
    }
    if !s.user_stack.is_empty() {
        f("oxeye.user_stack", AnyRef::Hex(&s.user_stack));
    }
    if let Some(t) = stacktrace {
        f("code.stacktrace", AnyRef::Str(Cow::Borrowed(t)));
    }
}

fn kind(k: SpanKind) -> u64 {
    match k {
        SpanKind::Unspecified => 0,
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn status_code(c: StatusCode) -> u64 {
    match c {
        StatusCode::Unset => 0,
        StatusCode::Ok => 1,
        StatusCode::Error => 2,
    }
}

fn opt(s: &Option<Arc<str>>) -> &str {
    s.as_deref().unwrap_or_default()
}

/// Length of a `Span` body; `stacktrace` is its rendered frames, if any.
fn span_len(s: &Span, stacktrace: Option<&str>) -> usize {
    let mut n = 18 + 10; // trace and span ids
    n += str_len(opt(&s.trace_state));
    if s.parent_span_id.is_some() {
        n += 10;
    }
    n += str_len(&s.name);
    n += varint_len(kind(s.kind));
    n += fixed64_len(s.start_unix_ns) + fixed64_len(s.end_unix_ns);
    derived(s, stacktrace, |k, v| n += 1 + ld(kv_len(k, any_len(&v))));
    n += kvs_len(&s.attributes);
    n += varint_len(s.dropped.attributes.into());
    for e in &s.events {
        n += 1 + ld(event_len(e));
    }
    n += varint_len(s.dropped.events.into());
    for l in &s.links {
        n += 1 + ld(link_len(l));
    }
    n += varint_len(s.dropped.links.into());
    n += 1 + ld(status_len(s));
    if s.flags != 0 {
        n += 6;
    }
    n
}

fn status_len(s: &Span) -> usize {
    str_len(opt(&s.status_message)) + varint_len(status_code(s.status))
}

fn event_len(e: &oxeye_api::Event) -> usize {
    fixed64_len(e.time_unix_ns)
        + str_len(&e.name)
        + kvs_len(&e.attributes)
        + varint_len(e.dropped_attributes_count.into())
}

fn link_len(l: &oxeye_api::Link) -> usize {
    18 + 10
        + str_len(opt(&l.trace_state))
        + kvs_len(&l.attributes)
        + varint_len(l.dropped_attributes_count.into())
        + if l.flags != 0 { 5 } else { 0 }
}

fn put_span(buf: &mut Vec<u8>, s: &Span, stacktrace: Option<&str>) {
    put_id(buf, key(pb::span::TRACE_ID, LEN), &s.trace_id.0);
    put_id(buf, key(pb::span::SPAN_ID, LEN), &s.span_id.0);
    put_str(buf, key(pb::span::TRACE_STATE, LEN), opt(&s.trace_state));
    if let Some(p) = s.parent_span_id {
        put_id(buf, key(pb::span::PARENT_SPAN_ID, LEN), &p.0);
    }
    put_str(buf, key(pb::span::NAME, LEN), &s.name);
    put_varint(buf, key(pb::span::KIND, VARINT), kind(s.kind));
    put_fixed64(
        buf,
        key(pb::span::START_TIME_UNIX_NANO, I64),
        s.start_unix_ns,
    );
    put_fixed64(buf, key(pb::span::END_TIME_UNIX_NANO, I64), s.end_unix_ns);
    derived(s, stacktrace, |k, v| {
        put_kv(buf, key(pb::span::ATTRIBUTES, LEN), k, &v)
    });
    put_kvs(buf, key(pb::span::ATTRIBUTES, LEN), &s.attributes);
    put_varint(
        buf,
        key(pb::span::DROPPED_ATTRIBUTES_COUNT, VARINT),
        s.dropped.attributes.into(),
    );
    for e in &s.events {
        put_len(buf, key(pb::span::EVENTS, LEN), event_len(e));
        put_fixed64(buf, key(pb::event::TIME_UNIX_NANO, I64), e.time_unix_ns);
        put_str(buf, key(pb::event::NAME, LEN), &e.name);
        put_kvs(buf, key(pb::event::ATTRIBUTES, LEN), &e.attributes);
        put_varint(
            buf,
            key(pb::event::DROPPED_ATTRIBUTES_COUNT, VARINT),
            e.dropped_attributes_count.into(),
        );
    }
    put_varint(
        buf,
        key(pb::span::DROPPED_EVENTS_COUNT, VARINT),
        s.dropped.events.into(),
    );
    for l in &s.links {
        put_len(buf, key(pb::span::LINKS, LEN), link_len(l));
        put_id(buf, key(pb::link::TRACE_ID, LEN), &l.trace_id.0);
        put_id(buf, key(pb::link::SPAN_ID, LEN), &l.span_id.0);
        put_str(buf, key(pb::link::TRACE_STATE, LEN), opt(&l.trace_state));
        put_kvs(buf, key(pb::link::ATTRIBUTES, LEN), &l.attributes);
        put_varint(
            buf,
            key(pb::link::DROPPED_ATTRIBUTES_COUNT, VARINT),
            l.dropped_attributes_count.into(),
        );
        if l.flags != 0 {
            buf.push(key(pb::link::FLAGS, I32));
            buf.extend_from_slice(&l.flags.to_le_bytes());
        }
    }
    put_varint(
        buf,
        key(pb::span::DROPPED_LINKS_COUNT, VARINT),
        s.dropped.links.into(),
    );
    // Always written, as the Collector does: an empty status is an unset one.
    put_len(buf, key(pb::span::STATUS, LEN), status_len(s));
    put_str(buf, key(pb::status::MESSAGE, LEN), opt(&s.status_message));
    put_varint(buf, key(pb::status::CODE, VARINT), status_code(s.status));
    if s.flags != 0 {
        buf.extend_from_slice(&pb::span::FLAGS_KEY);
        buf.extend_from_slice(&s.flags.to_le_bytes());
    }
}

/// Symbolized frames as one `code.stacktrace` string (`encode::span` renders the same).
fn stacktrace(s: &Span) -> Option<String> {
    if s.frames.is_empty() {
        return None;
    }
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
    Some(trace)
}

/// The encoded `InstrumentationScope` of spans oxeye made.
fn oxeye_scope_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| oxeye_scope().encode_to_vec())
}

/// A scope's encoded `InstrumentationScope` and its `ScopeSpans.schema_url`.
fn scope_bytes(s: Option<&Arc<Scope>>) -> (Cow<'static, [u8]>, &str) {
    match s {
        None => (Cow::Borrowed(oxeye_scope_bytes()), ""),
        Some(s) => {
            let proto = opentelemetry_proto::tonic::common::v1::InstrumentationScope {
                name: s.name.to_string(),
                version: s.version.to_string(),
                attributes: crate::encode::key_values(&s.attributes),
                dropped_attributes_count: s.dropped_attributes_count,
            };
            (Cow::Owned(proto.encode_to_vec()), opt(&s.schema_url))
        }
    }
}

/// What is known about a span before it is written.
struct Planned<'a> {
    span: &'a Span,
    len: usize,
    stacktrace: Option<String>,
}

struct ScopeGroup<'a> {
    scope: Option<&'a Arc<Scope>>,
    spans: Vec<Planned<'a>>,
}

struct ResourceGroup<'a> {
    resource: &'a Arc<Resource>,
    scopes: Vec<ScopeGroup<'a>>,
}

/// Encodes spans (with their resources) as one trace request: grouped by resource, then scope,
/// by identity in first-seen order, like [`crate::encode::trace_request_of`].
pub fn trace_message<'a>(
    resources: &mut Resources,
    spans: impl IntoIterator<Item = (&'a Arc<Resource>, &'a Span)>,
) -> TraceMessage {
    trace_message_with(resources, spans, &[])
}

/// [`trace_message`], followed by `encoded`: trace requests as received
/// ([`oxeye_api::EncodedSpans`]), copied as they are. Protobuf merges concatenated messages
/// (their `resource_spans` append), so the result is one request holding them all.
pub fn trace_message_with<'a>(
    resources: &mut Resources,
    spans: impl IntoIterator<Item = (&'a Arc<Resource>, &'a Span)>,
    encoded: &[&[u8]],
) -> TraceMessage {
    let mut groups: Vec<ResourceGroup<'a>> = Vec::new();
    for (resource, span) in spans {
        let g = match groups
            .iter_mut()
            .position(|g| Arc::ptr_eq(g.resource, resource))
        {
            Some(i) => &mut groups[i],
            None => {
                groups.push(ResourceGroup {
                    resource,
                    scopes: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        let key = span.scope.as_ref();
        let same = |g: &ScopeGroup<'_>| match (g.scope, key) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        let sg = match g.scopes.iter().rposition(same) {
            Some(i) => &mut g.scopes[i],
            None => {
                g.scopes.push(ScopeGroup {
                    scope: key,
                    spans: Vec::new(),
                });
                g.scopes.last_mut().expect("just pushed")
            }
        };
        let stacktrace = stacktrace(span);
        let len = span_len(span, stacktrace.as_deref());
        sg.spans.push(Planned {
            span,
            len,
            stacktrace,
        });
    }
    // Sizes of every ResourceSpans and ScopeSpans, then the bytes front to back.
    let mut sized = Vec::with_capacity(groups.len());
    let mut total = 0;
    for g in &groups {
        let resource = resources.encoded(g.resource);
        let mut scopes = Vec::with_capacity(g.scopes.len());
        let mut rs_len = 1 + ld(resource.len()) + str_len(opt(&g.resource.schema_url));
        for sg in &g.scopes {
            let (scope, schema) = scope_bytes(sg.scope);
            let ss_len = 1
                + ld(scope.len())
                + sg.spans.iter().map(|p| 1 + ld(p.len)).sum::<usize>()
                + str_len(schema);
            rs_len += 1 + ld(ss_len);
            scopes.push((scope, schema, ss_len));
        }
        total += 1 + ld(rs_len);
        sized.push((resource, rs_len, scopes));
    }
    let raw: usize = encoded.iter().map(|e| e.len()).sum();
    let mut buf = Vec::with_capacity(FRAME_HEADER + total + raw);
    buf.resize(FRAME_HEADER, 0);
    for (g, (resource, rs_len, scopes)) in groups.iter().zip(sized) {
        put_len(&mut buf, key(pb::request::RESOURCE_SPANS, LEN), rs_len);
        put_bytes(&mut buf, key(pb::resource_spans::RESOURCE, LEN), &resource);
        for (sg, (scope, schema, ss_len)) in g.scopes.iter().zip(scopes) {
            put_len(&mut buf, key(pb::resource_spans::SCOPE_SPANS, LEN), ss_len);
            put_bytes(&mut buf, key(pb::scope_spans::SCOPE, LEN), &scope);
            for p in &sg.spans {
                put_len(&mut buf, key(pb::scope_spans::SPANS, LEN), p.len);
                let start = buf.len();
                put_span(&mut buf, p.span, p.stacktrace.as_deref());
                debug_assert_eq!(buf.len() - start, p.len, "span length");
            }
            put_str(&mut buf, key(pb::scope_spans::SCHEMA_URL, LEN), schema);
        }
        put_str(
            &mut buf,
            key(pb::resource_spans::SCHEMA_URL, LEN),
            opt(&g.resource.schema_url),
        );
    }
    debug_assert_eq!(buf.len(), FRAME_HEADER + total, "request length");
    for e in encoded {
        buf.extend_from_slice(e);
    }
    TraceMessage(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResourceValue;
    use crate::encode::trace_request_of;
    use oxeye_api::{
        Comm, DroppedCounts, EntityRef, Event, Frame, Link, SpanId, TaskContext, TraceId,
    };

    /// Spans with every field and value type set, and some with none.
    fn spans() -> Vec<Span> {
        let map: Attributes = [("inner", Value::Int(-5)), ("", Value::Str("".into()))]
            .into_iter()
            .collect();
        let mut attrs = Attributes::new();
        attrs.push("s", "text");
        attrs.push("s", "repeated key");
        attrs.push("empty", "");
        attrs.push("i", -1i64);
        attrs.push("zero", 0i64);
        attrs.push("f", 0.0);
        attrs.push("b", false);
        attrs.push("bytes", Value::Bytes(Arc::from(&b"\x00\xff"[..])));
        attrs.push(
            "arr",
            Value::Array(Arc::from(vec![
                Value::Int(1),
                Value::Empty,
                Value::Array(Arc::from(vec![Value::Bool(true)])),
            ])),
        );
        attrs.push("map", Value::Map(Arc::new(map)));
        attrs.push("none", Value::Empty);
        let scope = Arc::new(Scope {
            name: "lib".into(),
            version: "1.2".into(),
            attributes: [("scope.attr", 1i64)].into_iter().collect(),
            dropped_attributes_count: 2,
            schema_url: Some("https://opentelemetry.io/schemas/1.30.0".into()),
        });
        let full = Span {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([1; 8]),
            parent_span_id: Some(SpanId([0; 8])),
            name: "GET /".into(),
            kind: SpanKind::Server,
            start_unix_ns: u64::MAX,
            end_unix_ns: 1,
            status: StatusCode::Error,
            status_message: Some("boom".into()),
            attributes: attrs.clone(),
            task: Some(TaskContext {
                pid: 42,
                tid: 43,
                comm: Comm([0xff; 16]),
                cpu: 0,
            }),
            return_value: Some(i64::MIN),
            args: vec![0, 1, u64::MAX],
            kernel_stack: vec![u64::MAX, 0],
            user_stack: vec![0x7f00_0000_1000],
            frames: vec![
                Frame {
                    address: 1,
                    function: Some("main".into()),
                    module: Some("/bin/x".into()),
                    offset: 0x10,
                    file: Some("x.c".into()),
                    line: Some(3),
                    build_id: None,
                },
                Frame::default(),
            ],
            trace_state: Some("k=v".into()),
            flags: 0x301,
            events: vec![
                Event {
                    time_unix_ns: 5,
                    name: "exception".into(),
                    attributes: attrs.clone(),
                    dropped_attributes_count: 1,
                },
                Event::default(),
            ],
            links: vec![
                Link {
                    trace_id: TraceId([3; 16]),
                    span_id: SpanId([4; 8]),
                    trace_state: Some("a=b".into()),
                    attributes: attrs,
                    dropped_attributes_count: 7,
                    flags: 1,
                },
                Link::default(),
            ],
            dropped: DroppedCounts {
                attributes: 1,
                events: 2,
                links: 300,
            },
            scope: Some(Arc::clone(&scope)),
        };
        let mut other_scope = full.clone();
        other_scope.scope = Some(Arc::new(Scope::default()));
        let mut same_scope = Span {
            kind: SpanKind::Unspecified,
            ..Span::default()
        };
        same_scope.scope = Some(scope);
        vec![
            full,
            Span::default(),
            other_scope,
            same_scope,
            Span {
                kind: SpanKind::Consumer,
                status: StatusCode::Ok,
                ..Span::default()
            },
        ]
    }

    #[test]
    fn bytes_are_those_prost_gives_for_the_generated_messages() {
        let spans = spans();
        let plain = Arc::new(Resource::default());
        let mut rich = Resource::new(
            [("service.name", "svc"), ("host.name", "h")]
                .into_iter()
                .collect(),
        );
        rich.dropped_attributes_count = 3;
        rich.schema_url = Some("https://example.com/s".into());
        rich.entity_refs = vec![EntityRef {
            schema_url: None,
            entity_type: "service".into(),
            id_keys: vec!["service.name".into()],
            description_keys: vec![],
        }];
        let rich = Arc::new(rich);
        // Resources interleaved: spans of one resource are grouped whatever their order.
        let items: Vec<(&Arc<Resource>, &Span)> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (if i % 2 == 0 { &rich } else { &plain }, s))
            .collect();
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("service.name".into(), ResourceValue::Str("edge".into()));
        let mut resources = Resources::new(&extra);
        let reference = trace_request_of(&mut resources, items.iter().copied()).encode_to_vec();
        let direct = trace_message(&mut resources, items.iter().copied());
        assert_eq!(direct.bytes(), &reference[..]);
        assert_eq!(&direct.clone().into_buffer()[..FRAME_HEADER], &[0; 5]);
        let empty = trace_message(&mut resources, std::iter::empty());
        assert!(empty.bytes().is_empty());
    }

    #[test]
    fn synthetic_spans_match_too() {
        let batch = oxeye_api::testing::span_batch(300);
        let mut resources = Resources::new(&Default::default());
        let oxeye_api::Records::Spans(spans) = &batch.records else {
            panic!("a span batch")
        };
        let items = || spans.iter().map(|s| (&batch.resource, s));
        let reference = trace_request_of(&mut resources, items()).encode_to_vec();
        assert_eq!(
            trace_message(&mut resources, items()).bytes(),
            &reference[..]
        );
    }
}
