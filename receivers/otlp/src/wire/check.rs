//! The checking walk: whether a request can be kept as it came (every span clean, nothing this
//! walk does not know), without building its spans. It reads the same typed fields as the
//! decoding walk and applies the same span rules, and refuses more, never less: whatever it
//! passes, [`super::request`] decodes whole.

use std::sync::Arc;

use oxeye_api::{Batch, EncodedSpans, Records, Resource, Scope};

use super::decode::{self, Ctx, Raw};
use super::fields::{self, fields};
use super::reader::utf8;
use crate::convert::Converted;

/// Nesting of arrays and maps followed before leaving the request to decoding.
const MAX_DEPTH: usize = 16;

/// The request as it came, split into one batch of [`EncodedSpans`] per `ResourceSpans` that
/// holds spans (each the bytes of that field: a request of its own), with only the resources
/// decoded — when [`super::request`] would accept every span in it. `None` when it would not,
/// or when the request holds anything this check does not know (unknown fields, deep nesting,
/// an out-of-range enum it would take): then decoding says what it refused.
pub fn encoded(buf: &bytes::Bytes) -> Option<Converted> {
    let mut ctx = Ctx::default();
    let mut out = Converted::default();
    let mut it = fields::<fields::Request>(buf);
    loop {
        let start = it.pos();
        let Some(field) = it.next() else { break };
        let fields::Request::ResourceSpans(b) = known(field)?;
        let (res, spans) = resource_spans(&mut ctx, b)?;
        if spans > 0 {
            out.accepted += spans as u64;
            out.batches.push(Batch {
                resource: Arc::new(res),
                records: Records::Encoded(EncodedSpans::new(
                    buf.slice(start..it.pos()),
                    spans,
                    decode_spans,
                )),
            });
        }
    }
    Some(out)
}

/// The decoder behind [`EncodedSpans`]: the spans of a request [`encoded`] passed.
fn decode_spans(buf: &[u8]) -> Result<Vec<oxeye_api::Span>, oxeye_api::BoxError> {
    let c = super::request(buf)?;
    if let Some(why) = c.first_error {
        return Err(why.into());
    }
    let mut spans = Vec::with_capacity(c.accepted as usize);
    for b in c.batches {
        if let Records::Spans(s) = b.records {
            spans.extend(s);
        }
    }
    Ok(spans)
}

/// A field this walk takes: read, and one its message has.
#[inline(always)]
pub(super) fn known<T>(field: super::reader::Result<Option<T>>) -> Option<T> {
    field.ok().flatten()
}

/// A `ResourceSpans`: its resource (decoded) and how many spans it holds, all clean.
fn resource_spans<'a>(ctx: &mut Ctx<'a>, buf: &'a [u8]) -> Option<(Resource, usize)> {
    use fields::ResourceSpans as F;
    let mut res = Resource::default();
    let mut spans = 0;
    for field in fields(buf) {
        match known(field)? {
            F::Resource(b) => decode::resource(ctx, &mut res, b).ok()?,
            F::ScopeSpans(b) => {
                for field in fields(b) {
                    match known(field)? {
                        fields::ScopeSpans::Scope(b) => {
                            decode::scope(ctx, &mut Scope::default(), b).ok()?
                        }
                        fields::ScopeSpans::Span(b) => {
                            span(b)?;
                            spans += 1;
                        }
                        fields::ScopeSpans::SchemaUrl(b) => str(b)?,
                    }
                }
            }
            F::SchemaUrl(b) => res.schema_url = decode::optional(b).ok()?,
        }
    }
    Some((res, spans))
}

pub(super) fn str(b: &[u8]) -> Option<()> {
    utf8(b).ok().map(drop)
}

/// A span the decoding walk reads and its rules accept.
fn span(buf: &[u8]) -> Option<()> {
    use fields::Span as F;
    let mut raw = Raw::default();
    for field in fields(buf) {
        match known(field)? {
            F::TraceId(b) => raw.trace_id = b,
            F::SpanId(b) => raw.span_id = b,
            F::TraceState(b) | F::Name(b) => str(b)?,
            F::ParentSpanId(b) => raw.parent = b,
            F::Kind(k) => raw.kind = k,
            F::StartTime(_) | F::EndTime(_) | F::Flags(_) => {}
            F::DroppedAttributes(_) | F::DroppedEvents(_) | F::DroppedLinks(_) => {}
            F::Attribute(b) => key_value(b, 0)?,
            F::Event(b) => {
                for field in fields(b) {
                    match known(field)? {
                        fields::Event::Name(b) => str(b)?,
                        fields::Event::Attribute(b) => key_value(b, 0)?,
                        fields::Event::Time(_) | fields::Event::DroppedAttributes(_) => {}
                    }
                }
            }
            F::Link(b) => {
                let (mut tid, mut sid): (&[u8], &[u8]) = (b"", b"");
                for field in fields(b) {
                    match known(field)? {
                        fields::Link::TraceId(b) => tid = b,
                        fields::Link::SpanId(b) => sid = b,
                        fields::Link::TraceState(b) => str(b)?,
                        fields::Link::Attribute(b) => key_value(b, 0)?,
                        fields::Link::DroppedAttributes(_) | fields::Link::Flags(_) => {}
                    }
                }
                if !(decode::valid_id(tid, 16) && decode::valid_id(sid, 8)) {
                    return None;
                }
            }
            F::Status(b) => {
                for field in fields(b) {
                    match known(field)? {
                        fields::Status::Message(b) => str(b)?,
                        fields::Status::Code(c) => raw.status_code = c,
                    }
                }
            }
        }
    }
    let clean = decode::valid_parent(raw.parent)
        && decode::valid_status(raw.status_code)
        && decode::valid_id(raw.trace_id, 16)
        && decode::valid_id(raw.span_id, 8)
        && decode::valid_kind(raw.kind);
    clean.then_some(())
}

pub(super) fn key_value(buf: &[u8], depth: usize) -> Option<()> {
    for field in fields(buf) {
        match known(field)? {
            fields::KeyValue::Key(b) => str(b)?,
            fields::KeyValue::Value(b) => any_value(b, depth)?,
        }
    }
    Some(())
}

pub(super) fn any_value(buf: &[u8], depth: usize) -> Option<()> {
    use fields::AnyValue as F;
    if depth > MAX_DEPTH {
        return None;
    }
    for field in fields(buf) {
        match known(field)? {
            F::String(b) => str(b)?,
            F::Bool(_) | F::Int(_) | F::Double(_) | F::Bytes(_) => {}
            F::Array(b) => {
                for item in fields(b) {
                    let fields::ArrayItem(b) = known(item)?;
                    any_value(b, depth + 1)?;
                }
            }
            F::KvList(b) => {
                for item in fields(b) {
                    let fields::KvListItem(b) = known(item)?;
                    key_value(b, depth + 1)?;
                }
            }
        }
    }
    Some(())
}
