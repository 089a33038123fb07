//! The decoding walk: a request's fields into oxeye batches, each string copied once (keys and
//! names interned per request), and the rules that refuse a span on its own.

use std::collections::HashMap;
use std::sync::Arc;

use oxeye_api::{Attributes, Batch, SpanId, SpanKind, StatusCode, TraceId, Value};

use super::fields::{self, fields};
use super::reader::{count, utf8, Result, WireError, MAX_NESTING};
use crate::convert::{Converted, Keyed};

/// Per-request state: interned keys and names, and what the last attribute lists held.
#[derive(Default)]
pub(super) struct Ctx<'a> {
    strings: HashMap<&'a [u8], Arc<str>, Keyed>,
    /// The key and string value last read at each attribute position. The spans of a request
    /// mostly repeat their keys in the same order and many values (methods, routes, hosts), so
    /// one comparison finds them — no hashing, no UTF-8 check, no allocation.
    recent: Vec<(Recent<'a>, Recent<'a>)>,
    /// How many attributes the last span had: the next one's list is sized for as many.
    span_attrs: usize,
}

/// Bytes as read and the string made of them.
type Recent<'a> = Option<(&'a [u8], Arc<str>)>;

/// Attribute positions remembered in [`Ctx::recent`].
const RECENT: usize = 32;

impl<'a> Ctx<'a> {
    /// A key or name: allocated once per request however often it repeats.
    fn intern(&mut self, b: &'a [u8]) -> Result<Arc<str>> {
        if let Some(s) = self.strings.get(b) {
            return Ok(Arc::clone(s));
        }
        let s: Arc<str> = Arc::from(utf8(b)?);
        self.strings.insert(b, Arc::clone(&s));
        Ok(s)
    }

    /// The key of attribute `i`: the last one at `i` when the bytes are the same.
    fn key_at(&mut self, i: usize, b: &'a [u8]) -> Result<Arc<str>> {
        if let Some((Some((k, s)), _)) = self.recent.get(i) {
            if *k == b {
                return Ok(Arc::clone(s));
            }
        }
        let s = self.intern(b)?;
        if let Some(slot) = self.slot(i) {
            slot.0 = Some((b, Arc::clone(&s)));
        }
        Ok(s)
    }

    /// The string value of attribute `i`: the last one at `i` when the bytes are the same.
    fn value_at(&mut self, i: usize, b: &'a [u8]) -> Result<Arc<str>> {
        if let Some((_, Some((v, s)))) = self.recent.get(i) {
            if *v == b {
                return Ok(Arc::clone(s));
            }
        }
        let s = text(b)?;
        if let Some(slot) = self.slot(i) {
            slot.1 = Some((b, Arc::clone(&s)));
        }
        Ok(s)
    }

    fn slot(&mut self, i: usize) -> Option<&mut (Recent<'a>, Recent<'a>)> {
        if i >= RECENT {
            return None;
        }
        if self.recent.len() <= i {
            self.recent.resize(i + 1, (None, None));
        }
        self.recent.get_mut(i)
    }
}

fn text(b: &[u8]) -> Result<Arc<str>> {
    utf8(b).map(Arc::from)
}

/// An empty string field is an absent one.
pub(super) fn optional(b: &[u8]) -> Result<Option<Arc<str>>> {
    if b.is_empty() {
        Ok(None)
    } else {
        text(b).map(Some)
    }
}

/// Decodes an `ExportTraceServiceRequest`. `Err` when the bytes are not one (the whole request
/// is refused); malformed spans are counted in [`Converted::rejected`].
pub fn request(buf: &[u8]) -> Result<Converted> {
    let mut ctx = Ctx::default();
    let mut out = Converted::default();
    for field in fields(buf) {
        match field? {
            Some(fields::Request::ResourceSpans(b)) => resource_spans(&mut ctx, &mut out, b)?,
            None => {}
        }
    }
    Ok(out)
}

fn resource_spans<'a>(ctx: &mut Ctx<'a>, out: &mut Converted, buf: &'a [u8]) -> Result<()> {
    use fields::ResourceSpans as F;
    let mut res = oxeye_api::Resource::default();
    let mut spans = Vec::new();
    for field in fields(buf) {
        match field? {
            Some(F::Resource(b)) => resource(ctx, &mut res, b)?,
            Some(F::ScopeSpans(body)) => {
                // The scope may come after its spans: they get it once the message is read.
                let first = spans.len();
                let mut sc = oxeye_api::Scope {
                    name: ctx.intern(b"")?,
                    version: ctx.intern(b"")?,
                    ..oxeye_api::Scope::default()
                };
                spans.reserve(count(body, oxeye_otlp_wire::scope_spans::SPANS));
                for field in fields(body) {
                    match field? {
                        Some(fields::ScopeSpans::Scope(b)) => scope(ctx, &mut sc, b)?,
                        Some(fields::ScopeSpans::Span(b)) => match span(ctx, b)? {
                            Ok(s) => spans.push(s),
                            Err(why) => {
                                out.rejected += 1;
                                out.first_error.get_or_insert(why);
                            }
                        },
                        Some(fields::ScopeSpans::SchemaUrl(b)) => sc.schema_url = optional(b)?,
                        None => {}
                    }
                }
                let sc = Arc::new(sc);
                for s in &mut spans[first..] {
                    s.scope = Some(Arc::clone(&sc));
                }
            }
            Some(F::SchemaUrl(b)) => res.schema_url = optional(b)?,
            None => {}
        }
    }
    if !spans.is_empty() {
        out.accepted += spans.len() as u64;
        out.batches.push(Batch::spans(Arc::new(res), spans));
    }
    Ok(())
}

pub(super) fn resource<'a>(
    ctx: &mut Ctx<'a>,
    out: &mut oxeye_api::Resource,
    buf: &'a [u8],
) -> Result<()> {
    use fields::Resource as F;
    for field in fields(buf) {
        match field? {
            Some(F::Attribute(b)) => key_value(ctx, &mut out.attributes, b, 0)?,
            Some(F::DroppedAttributes(n)) => out.dropped_attributes_count = n as u32,
            Some(F::EntityRef(b)) => {
                use fields::EntityRef as E;
                let mut e = oxeye_api::EntityRef::default();
                for field in fields(b) {
                    match field? {
                        Some(E::SchemaUrl(b)) => e.schema_url = optional(b)?,
                        Some(E::Type(b)) => e.entity_type = text(b)?,
                        Some(E::IdKey(b)) => e.id_keys.push(ctx.intern(b)?),
                        Some(E::DescriptionKey(b)) => e.description_keys.push(ctx.intern(b)?),
                        None => {}
                    }
                }
                out.entity_refs.push(e);
            }
            None => {}
        }
    }
    Ok(())
}

pub(super) fn scope<'a>(
    ctx: &mut Ctx<'a>,
    out: &mut oxeye_api::Scope,
    buf: &'a [u8],
) -> Result<()> {
    use fields::Scope as F;
    for field in fields(buf) {
        match field? {
            Some(F::Name(b)) => out.name = ctx.intern(b)?,
            Some(F::Version(b)) => out.version = ctx.intern(b)?,
            Some(F::Attribute(b)) => key_value(ctx, &mut out.attributes, b, 0)?,
            Some(F::DroppedAttributes(n)) => out.dropped_attributes_count = n as u32,
            None => {}
        }
    }
    Ok(())
}

/// A span as read, before the checks that may refuse it alone.
#[derive(Default)]
pub(super) struct Raw<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent: &'a [u8],
    pub kind: i32,
    pub status_code: i32,
}

/// Reads a span. `Err` is an unreadable request; `Ok(Err(why))` a span refused on its own.
fn span<'a>(
    ctx: &mut Ctx<'a>,
    buf: &'a [u8],
) -> Result<std::result::Result<oxeye_api::Span, String>> {
    use fields::Span as F;
    let mut s = oxeye_api::Span {
        kind: SpanKind::Unspecified,
        ..oxeye_api::Span::default()
    };
    s.attributes.reserve(ctx.span_attrs);
    let mut raw = Raw::default();
    let mut link_ids = Vec::new();
    for field in fields(buf) {
        match field? {
            Some(F::TraceId(b)) => raw.trace_id = b,
            Some(F::SpanId(b)) => raw.span_id = b,
            Some(F::TraceState(b)) => s.trace_state = optional(b)?,
            Some(F::ParentSpanId(b)) => raw.parent = b,
            Some(F::Name(b)) => s.name = ctx.intern(b)?,
            Some(F::Kind(k)) => raw.kind = k,
            Some(F::StartTime(t)) => s.start_unix_ns = t,
            Some(F::EndTime(t)) => s.end_unix_ns = t,
            Some(F::Attribute(b)) => key_value(ctx, &mut s.attributes, b, 0)?,
            Some(F::DroppedAttributes(n)) => s.dropped.attributes = n as u32,
            Some(F::Event(b)) => {
                use fields::Event as E;
                let mut e = oxeye_api::Event::default();
                for field in fields(b) {
                    match field? {
                        Some(E::Time(t)) => e.time_unix_ns = t,
                        Some(E::Name(b)) => e.name = ctx.intern(b)?,
                        Some(E::Attribute(b)) => key_value(ctx, &mut e.attributes, b, 0)?,
                        Some(E::DroppedAttributes(n)) => e.dropped_attributes_count = n as u32,
                        None => {}
                    }
                }
                s.events.push(e);
            }
            Some(F::DroppedEvents(n)) => s.dropped.events = n as u32,
            Some(F::Link(b)) => {
                use fields::Link as L;
                let mut l = oxeye_api::Link::default();
                let (mut tid, mut sid): (&[u8], &[u8]) = (b"", b"");
                for field in fields(b) {
                    match field? {
                        Some(L::TraceId(b)) => tid = b,
                        Some(L::SpanId(b)) => sid = b,
                        Some(L::TraceState(b)) => l.trace_state = optional(b)?,
                        Some(L::Attribute(b)) => key_value(ctx, &mut l.attributes, b, 0)?,
                        Some(L::DroppedAttributes(n)) => l.dropped_attributes_count = n as u32,
                        Some(L::Flags(f)) => l.flags = f,
                        None => {}
                    }
                }
                s.links.push(l);
                link_ids.push((tid, sid));
            }
            Some(F::DroppedLinks(n)) => s.dropped.links = n as u32,
            Some(F::Status(b)) => {
                for field in fields(b) {
                    match field? {
                        Some(fields::Status::Message(b)) => s.status_message = optional(b)?,
                        Some(fields::Status::Code(c)) => raw.status_code = c,
                        None => {}
                    }
                }
            }
            Some(F::Flags(f)) => s.flags = f,
            None => {}
        }
    }
    ctx.span_attrs = s.attributes.len();
    Ok(checked(s, &raw, &link_ids))
}

/// The checks `convert::span` makes, in its order (the first reason is reported back). The
/// check for keeping a request as received ([`super::check`]) applies these same rules.
fn checked(
    mut s: oxeye_api::Span,
    raw: &Raw<'_>,
    link_ids: &[(&[u8], &[u8])],
) -> std::result::Result<oxeye_api::Span, String> {
    s.parent_span_id = parent_span_id(raw.parent)?;
    s.status = status_code(raw.status_code)?;
    for (l, (tid, sid)) in s.links.iter_mut().zip(link_ids) {
        l.trace_id = trace_id(tid, "a link's trace_id")?;
        l.span_id = span_id(sid, "a link's span_id")?;
    }
    s.trace_id = trace_id(raw.trace_id, "trace_id")?;
    s.span_id = span_id(raw.span_id, "span_id")?;
    s.kind = span_kind(raw.kind)?;
    Ok(s)
}

// The span rules, each a predicate both walks apply (the check calls only these) and, for
// decoding, the value or the reason it is refused.

/// An id of `n` bytes, not all zero.
#[inline]
pub(super) fn valid_id(b: &[u8], n: usize) -> bool {
    b.len() == n && b.iter().any(|&x| x != 0)
}

/// A parent span id: absent, or 8 bytes (an all-zero one is invalid but harmless: kept).
#[inline]
pub(super) fn valid_parent(b: &[u8]) -> bool {
    matches!(b.len(), 0 | 8)
}

/// Status codes 0-2 (unset, ok, error).
#[inline]
pub(super) fn valid_status(c: i32) -> bool {
    (0..=2).contains(&c)
}

/// Span kinds 0-5 (unspecified to consumer).
#[inline]
pub(super) fn valid_kind(k: i32) -> bool {
    (0..=5).contains(&k)
}

fn parent_span_id(b: &[u8]) -> std::result::Result<Option<SpanId>, String> {
    if !valid_parent(b) {
        return Err(format!("parent_span_id has {} bytes, not 8 or 0", b.len()));
    }
    Ok(<[u8; 8]>::try_from(b).ok().map(SpanId))
}

fn status_code(c: i32) -> std::result::Result<StatusCode, String> {
    if !valid_status(c) {
        return Err(format!("status code {c} is not 0, 1 or 2"));
    }
    Ok([StatusCode::Unset, StatusCode::Ok, StatusCode::Error][c as usize])
}

fn span_kind(k: i32) -> std::result::Result<SpanKind, String> {
    if !valid_kind(k) {
        return Err(format!("kind {k} is not a span kind (0-5)"));
    }
    Ok([
        SpanKind::Unspecified,
        SpanKind::Internal,
        SpanKind::Server,
        SpanKind::Client,
        SpanKind::Producer,
        SpanKind::Consumer,
    ][k as usize])
}

fn trace_id(b: &[u8], what: &str) -> std::result::Result<TraceId, String> {
    match <[u8; 16]>::try_from(b) {
        Ok(id) if valid_id(b, 16) => Ok(TraceId(id)),
        Ok(_) => Err(format!("{what} is all zero")),
        Err(_) => Err(format!("{what} has {} bytes, not 16", b.len())),
    }
}

fn span_id(b: &[u8], what: &str) -> std::result::Result<SpanId, String> {
    match <[u8; 8]>::try_from(b) {
        Ok(id) if valid_id(b, 8) => Ok(SpanId(id)),
        Ok(_) => Err(format!("{what} is all zero")),
        Err(_) => Err(format!("{what} has {} bytes, not 8", b.len())),
    }
}

/// A `KeyValue` inside `depth` arrays and maps, appended to `attrs`.
fn key_value<'a>(
    ctx: &mut Ctx<'a>,
    attrs: &mut Attributes,
    buf: &'a [u8],
    depth: usize,
) -> Result<()> {
    let at = attrs.len();
    let mut key: &[u8] = b"";
    let mut value = Value::Empty;
    for field in fields(buf) {
        match field? {
            Some(fields::KeyValue::Key(b)) => {
                // A key written twice: the last one counts, but prost checks every one (an
                // invalid one refuses the request), so must this (found by fuzzing).
                if !key.is_empty() {
                    utf8(key)?;
                }
                key = b;
            }
            Some(fields::KeyValue::Value(b)) => value = any_value(ctx, b, Some(at), depth)?,
            None => {}
        }
    }
    attrs.push(ctx.key_at(at, key)?, value);
    Ok(())
}

/// An `AnyValue`; `at` is its attribute position when it is an attribute's value; `depth` the
/// arrays and maps it is in.
fn any_value<'a>(
    ctx: &mut Ctx<'a>,
    buf: &'a [u8],
    at: Option<usize>,
    depth: usize,
) -> Result<Value> {
    use fields::AnyValue as F;
    if depth > MAX_NESTING {
        return Err(WireError::ValuesTooDeep);
    }
    let mut v = Value::Empty;
    for field in fields(buf) {
        v = match field? {
            Some(F::String(b)) => Value::Str(match at {
                Some(i) => ctx.value_at(i, b)?,
                None => text(b)?,
            }),
            Some(F::Bool(b)) => Value::Bool(b),
            Some(F::Int(i)) => Value::Int(i),
            Some(F::Double(d)) => Value::F64(d),
            Some(F::Array(b)) => {
                let mut items = Vec::new();
                for item in fields(b) {
                    if let Some(fields::ArrayItem(b)) = item? {
                        items.push(any_value(ctx, b, None, depth + 1)?);
                    }
                }
                Value::Array(items.into())
            }
            Some(F::KvList(b)) => {
                let mut attrs = Attributes::new();
                for item in fields(b) {
                    if let Some(fields::KvListItem(b)) = item? {
                        key_value(ctx, &mut attrs, b, depth + 1)?;
                    }
                }
                Value::Map(Arc::new(attrs))
            }
            Some(F::Bytes(b)) => Value::Bytes(b.into()),
            None => v,
        };
    }
    Ok(v)
}
