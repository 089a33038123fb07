//! OTLP trace request bytes → oxeye batches, read straight off the wire.
//!
//! Decoding into opentelemetry-proto's generated structs first costs a `String` per key and
//! value, and converting those into oxeye spans copies every string again; here each string is
//! copied once, from the request into its `Arc<str>`, and keys and names repeated in a request
//! are allocated once (interned by their bytes, borrowed from the request). The result is what
//! [`crate::convert::request`] makes of the prost-decoded request — same spans, same refusals,
//! same first reason (tested on the same bytes) — and what prost refuses is refused here too:
//! truncated or overlong fields, wrong wire types for known fields, invalid UTF-8 in strings.
//! Unknown fields are skipped, as protobuf requires.

use std::collections::HashMap;
use std::sync::Arc;

use oxeye_api::{
    Attributes, Batch, EncodedSpans, EntityRef, Event, Link, Records, Resource, Scope, Span,
    SpanId, SpanKind, StatusCode, TraceId, Value,
};

use crate::convert::{Converted, Keyed};

use oxeye_otlp_wire as pb;
use oxeye_otlp_wire::{END_GROUP, I32, I64, LEN, START_GROUP, VARINT};

type Result<T> = std::result::Result<T, String>;

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn more(&self) -> bool {
        self.pos < self.buf.len()
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64> {
        // One byte: most keys, lengths and small numbers; kept inline, the rest out of line.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(b.into());
            }
        }
        self.long_varint()
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err("a varint runs past the end of its message".into());
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err("a varint overflows 64 bits".into());
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a varint is longer than 10 bytes".into())
    }

    /// The next field's number and wire type.
    #[inline]
    fn key(&mut self) -> Result<(u32, u8)> {
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(format!("invalid field number {field}"));
        }
        Ok((field as u32, (k & 7) as u8))
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&end| end <= self.buf.len())
            .ok_or("a length-delimited field runs past the end of its message")?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or("a fixed-size field runs past the end of its message")?;
        self.pos += N;
        Ok(b.try_into().expect("N bytes"))
    }

    fn fixed64(&mut self) -> Result<u64> {
        self.fixed::<8>().map(u64::from_le_bytes)
    }

    fn fixed32(&mut self) -> Result<u32> {
        self.fixed::<4>().map(u32::from_le_bytes)
    }

    /// Skips a field this decoder does not know. Groups are skipped with a stack of the open
    /// ones' field numbers, not by recursion: a small request of nested group starts must not
    /// overflow the stack; more than [`MAX_NESTING`] open at once are refused.
    fn skip(&mut self, field: u32, wire: u8) -> Result<()> {
        let mut open: Vec<u32> = Vec::new();
        let (mut field, mut wire) = (field, wire);
        loop {
            match wire {
                VARINT => self.varint().map(drop)?,
                I64 => self.fixed::<8>().map(drop)?,
                LEN => self.bytes().map(drop)?,
                I32 => self.fixed::<4>().map(drop)?,
                START_GROUP => {
                    if open.len() >= MAX_NESTING {
                        return Err(format!("groups are nested deeper than {MAX_NESTING}"));
                    }
                    open.push(field);
                }
                END_GROUP => match open.pop() {
                    Some(f) if f == field => {}
                    Some(_) => return Err("a group ends with another field's number".into()),
                    None => return Err("a group ends that was not started".into()),
                },
                w => return Err(format!("invalid wire type {w}")),
            }
            if open.is_empty() {
                return Ok(());
            }
            (field, wire) = self.key()?;
        }
    }
}

/// A known field with another wire type than its own: prost refuses the request, so do we.
fn wrong_type(message: &str, field: u32, wire: u8) -> String {
    format!("field {field} of {message} has wire type {wire}, not its own")
}

/// Per-request state: interned keys and names, and what the last attribute lists held.
#[derive(Default)]
struct Ctx<'a> {
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

fn utf8(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).map_err(|_| "a string field is not valid UTF-8".to_string())
}

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
fn optional(b: &[u8]) -> Result<Option<Arc<str>>> {
    if b.is_empty() {
        Ok(None)
    } else {
        text(b).map(Some)
    }
}

/// Arrays and maps (and unknown groups) nested deeper than this are refused: a request of a few
/// MiB could otherwise nest values a million deep and overflow the stack. (prost's recursion
/// limit, also 100, counts every message level from the request down, so it refuses values
/// about 48 arrays deep inside a span; this decoder takes up to 100.)
const MAX_NESTING: usize = 100;

/// An `AnyValue`; `at` is its attribute position when it is an attribute's value; `depth` the
/// arrays and maps it is in.
fn any_value<'a>(
    ctx: &mut Ctx<'a>,
    buf: &'a [u8],
    at: Option<usize>,
    depth: usize,
) -> Result<Value> {
    if depth > MAX_NESTING {
        return Err(format!("values are nested deeper than {MAX_NESTING}"));
    }
    let mut r = Reader::new(buf);
    let mut v = Value::Empty;
    while r.more() {
        let (field, wire) = r.key()?;
        v = match (field, wire) {
            (pb::any_value::STRING, LEN) => Value::Str(match at {
                Some(i) => ctx.value_at(i, r.bytes()?)?,
                None => text(r.bytes()?)?,
            }),
            (pb::any_value::BOOL, VARINT) => Value::Bool(r.varint()? != 0),
            (pb::any_value::INT, VARINT) => Value::Int(r.varint()? as i64),
            (pb::any_value::DOUBLE, I64) => Value::F64(f64::from_bits(r.fixed64()?)),
            (pb::any_value::ARRAY, LEN) => {
                let mut items = Vec::new();
                let mut a = Reader::new(r.bytes()?);
                while a.more() {
                    match a.key()? {
                        (pb::list::VALUES, LEN) => {
                            items.push(any_value(ctx, a.bytes()?, None, depth + 1)?)
                        }
                        (pb::list::VALUES, w) => {
                            return Err(wrong_type("ArrayValue", pb::list::VALUES, w))
                        }
                        (f, w) => a.skip(f, w)?,
                    }
                }
                Value::Array(items.into())
            }
            (pb::any_value::KVLIST, LEN) => {
                let mut attrs = Attributes::new();
                let mut m = Reader::new(r.bytes()?);
                while m.more() {
                    match m.key()? {
                        (pb::list::VALUES, LEN) => {
                            nested_key_value(ctx, &mut attrs, m.bytes()?, depth + 1)?
                        }
                        (pb::list::VALUES, w) => {
                            return Err(wrong_type("KeyValueList", pb::list::VALUES, w))
                        }
                        (f, w) => m.skip(f, w)?,
                    }
                }
                Value::Map(Arc::new(attrs))
            }
            (pb::any_value::BYTES, LEN) => Value::Bytes(r.bytes()?.into()),
            (pb::any_value::STRING..=pb::any_value::BYTES, w) => {
                return Err(wrong_type("AnyValue", field, w))
            }
            (f, w) => {
                r.skip(f, w)?;
                v
            }
        };
    }
    Ok(v)
}

fn key_value<'a>(ctx: &mut Ctx<'a>, attrs: &mut Attributes, buf: &'a [u8]) -> Result<()> {
    nested_key_value(ctx, attrs, buf, 0)
}

/// A `KeyValue` inside `depth` arrays and maps.
fn nested_key_value<'a>(
    ctx: &mut Ctx<'a>,
    attrs: &mut Attributes,
    buf: &'a [u8],
    depth: usize,
) -> Result<()> {
    let at = attrs.len();
    let mut r = Reader::new(buf);
    let mut key: &[u8] = b"";
    let mut value = Value::Empty;
    while r.more() {
        match r.key()? {
            (pb::key_value::KEY, LEN) => {
                // A key written twice: the last one counts, but prost checks every one (an
                // invalid one refuses the request), so must this (found by fuzzing).
                if !key.is_empty() {
                    utf8(key)?;
                }
                key = r.bytes()?;
            }
            (pb::key_value::VALUE, LEN) => value = any_value(ctx, r.bytes()?, Some(at), depth)?,
            (f @ pb::key_value::KEY..=pb::key_value::VALUE, w) => {
                return Err(wrong_type("KeyValue", f, w))
            }
            (f, w) => r.skip(f, w)?,
        }
    }
    attrs.push(ctx.key_at(at, key)?, value);
    Ok(())
}

fn resource<'a>(ctx: &mut Ctx<'a>, out: &mut Resource, buf: &'a [u8]) -> Result<()> {
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key()? {
            (pb::resource::ATTRIBUTES, LEN) => key_value(ctx, &mut out.attributes, r.bytes()?)?,
            (pb::resource::DROPPED_ATTRIBUTES_COUNT, VARINT) => {
                out.dropped_attributes_count = r.varint()? as u32
            }
            (pb::resource::ENTITY_REFS, LEN) => {
                let mut e = EntityRef::default();
                let mut er = Reader::new(r.bytes()?);
                while er.more() {
                    match er.key()? {
                        (pb::entity_ref::SCHEMA_URL, LEN) => e.schema_url = optional(er.bytes()?)?,
                        (pb::entity_ref::TYPE, LEN) => e.entity_type = text(er.bytes()?)?,
                        (pb::entity_ref::ID_KEYS, LEN) => e.id_keys.push(ctx.intern(er.bytes()?)?),
                        (pb::entity_ref::DESCRIPTION_KEYS, LEN) => {
                            e.description_keys.push(ctx.intern(er.bytes()?)?)
                        }
                        (f @ pb::entity_ref::SCHEMA_URL..=pb::entity_ref::DESCRIPTION_KEYS, w) => {
                            return Err(wrong_type("EntityRef", f, w))
                        }
                        (f, w) => er.skip(f, w)?,
                    }
                }
                out.entity_refs.push(e);
            }
            (f @ pb::resource::ATTRIBUTES..=pb::resource::ENTITY_REFS, w) => {
                return Err(wrong_type("Resource", f, w))
            }
            (f, w) => r.skip(f, w)?,
        }
    }
    Ok(())
}

fn scope<'a>(ctx: &mut Ctx<'a>, out: &mut Scope, buf: &'a [u8]) -> Result<()> {
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key()? {
            (pb::scope::NAME, LEN) => out.name = ctx.intern(r.bytes()?)?,
            (pb::scope::VERSION, LEN) => out.version = ctx.intern(r.bytes()?)?,
            (pb::scope::ATTRIBUTES, LEN) => key_value(ctx, &mut out.attributes, r.bytes()?)?,
            (pb::scope::DROPPED_ATTRIBUTES_COUNT, VARINT) => {
                out.dropped_attributes_count = r.varint()? as u32
            }
            (f @ pb::scope::NAME..=pb::scope::DROPPED_ATTRIBUTES_COUNT, w) => {
                return Err(wrong_type("InstrumentationScope", f, w))
            }
            (f, w) => r.skip(f, w)?,
        }
    }
    Ok(())
}

/// A span as read, before the checks that may refuse it alone.
#[derive(Default)]
struct Raw<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent: &'a [u8],
    kind: i32,
    status_code: i32,
    link_ids: Vec<(&'a [u8], &'a [u8])>,
}

fn trace_id(bytes: &[u8], what: &str) -> std::result::Result<TraceId, String> {
    match <[u8; 16]>::try_from(bytes) {
        Ok(id) if id != [0; 16] => Ok(TraceId(id)),
        Ok(_) => Err(format!("{what} is all zero")),
        Err(_) => Err(format!("{what} has {} bytes, not 16", bytes.len())),
    }
}

fn span_id(bytes: &[u8], what: &str) -> std::result::Result<SpanId, String> {
    match <[u8; 8]>::try_from(bytes) {
        Ok(id) if id != [0; 8] => Ok(SpanId(id)),
        Ok(_) => Err(format!("{what} is all zero")),
        Err(_) => Err(format!("{what} has {} bytes, not 8", bytes.len())),
    }
}

/// Reads a span. `Err` is an unreadable request; `Ok(Err(why))` a span refused on its own.
fn span<'a>(ctx: &mut Ctx<'a>, buf: &'a [u8]) -> Result<std::result::Result<Span, String>> {
    let mut r = Reader::new(buf);
    let mut s = Span {
        kind: SpanKind::Unspecified,
        ..Span::default()
    };
    s.attributes.reserve(ctx.span_attrs);
    let mut raw = Raw::default();
    while r.more() {
        match r.key()? {
            (pb::span::TRACE_ID, LEN) => raw.trace_id = r.bytes()?,
            (pb::span::SPAN_ID, LEN) => raw.span_id = r.bytes()?,
            (pb::span::TRACE_STATE, LEN) => s.trace_state = optional(r.bytes()?)?,
            (pb::span::PARENT_SPAN_ID, LEN) => raw.parent = r.bytes()?,
            (pb::span::NAME, LEN) => s.name = ctx.intern(r.bytes()?)?,
            (pb::span::KIND, VARINT) => raw.kind = r.varint()? as i32,
            (pb::span::START_TIME_UNIX_NANO, I64) => s.start_unix_ns = r.fixed64()?,
            (pb::span::END_TIME_UNIX_NANO, I64) => s.end_unix_ns = r.fixed64()?,
            (pb::span::ATTRIBUTES, LEN) => key_value(ctx, &mut s.attributes, r.bytes()?)?,
            (pb::span::DROPPED_ATTRIBUTES_COUNT, VARINT) => {
                s.dropped.attributes = r.varint()? as u32
            }
            (pb::span::EVENTS, LEN) => {
                let mut e = Event::default();
                let mut er = Reader::new(r.bytes()?);
                while er.more() {
                    match er.key()? {
                        (pb::event::TIME_UNIX_NANO, I64) => e.time_unix_ns = er.fixed64()?,
                        (pb::event::NAME, LEN) => e.name = ctx.intern(er.bytes()?)?,
                        (pb::event::ATTRIBUTES, LEN) => {
                            key_value(ctx, &mut e.attributes, er.bytes()?)?
                        }
                        (pb::event::DROPPED_ATTRIBUTES_COUNT, VARINT) => {
                            e.dropped_attributes_count = er.varint()? as u32
                        }
                        (
                            f @ pb::event::TIME_UNIX_NANO..=pb::event::DROPPED_ATTRIBUTES_COUNT,
                            w,
                        ) => return Err(wrong_type("Span.Event", f, w)),
                        (f, w) => er.skip(f, w)?,
                    }
                }
                s.events.push(e);
            }
            (pb::span::DROPPED_EVENTS_COUNT, VARINT) => s.dropped.events = r.varint()? as u32,
            (pb::span::LINKS, LEN) => {
                let mut l = Link::default();
                let (mut tid, mut sid): (&[u8], &[u8]) = (b"", b"");
                let mut lr = Reader::new(r.bytes()?);
                while lr.more() {
                    match lr.key()? {
                        (pb::link::TRACE_ID, LEN) => tid = lr.bytes()?,
                        (pb::link::SPAN_ID, LEN) => sid = lr.bytes()?,
                        (pb::link::TRACE_STATE, LEN) => l.trace_state = optional(lr.bytes()?)?,
                        (pb::link::ATTRIBUTES, LEN) => {
                            key_value(ctx, &mut l.attributes, lr.bytes()?)?
                        }
                        (pb::link::DROPPED_ATTRIBUTES_COUNT, VARINT) => {
                            l.dropped_attributes_count = lr.varint()? as u32
                        }
                        (pb::link::FLAGS, I32) => l.flags = lr.fixed32()?,
                        (f @ pb::link::TRACE_ID..=pb::link::FLAGS, w) => {
                            return Err(wrong_type("Span.Link", f, w))
                        }
                        (f, w) => lr.skip(f, w)?,
                    }
                }
                s.links.push(l);
                raw.link_ids.push((tid, sid));
            }
            (pb::span::DROPPED_LINKS_COUNT, VARINT) => s.dropped.links = r.varint()? as u32,
            (pb::span::STATUS, LEN) => {
                let mut st = Reader::new(r.bytes()?);
                while st.more() {
                    match st.key()? {
                        (pb::status::MESSAGE, LEN) => s.status_message = optional(st.bytes()?)?,
                        (pb::status::CODE, VARINT) => raw.status_code = st.varint()? as i32,
                        (f @ pb::status::MESSAGE..=pb::status::CODE, w) => {
                            return Err(wrong_type("Status", f, w))
                        }
                        (f, w) => st.skip(f, w)?,
                    }
                }
            }
            (pb::span::FLAGS, I32) => s.flags = r.fixed32()?,
            (f @ pb::span::TRACE_ID..=pb::span::FLAGS, w) => return Err(wrong_type("Span", f, w)),
            (f, w) => r.skip(f, w)?,
        }
    }
    ctx.span_attrs = s.attributes.len();
    Ok(check(s, raw))
}

/// The checks `convert::span` makes, in its order (the first reason is reported back).
fn check(mut s: Span, raw: Raw<'_>) -> std::result::Result<Span, String> {
    s.parent_span_id = match raw.parent.len() {
        0 => None,
        // An all-zero parent is invalid but harmless: kept as sent.
        8 => Some(SpanId(raw.parent.try_into().unwrap_or_default())),
        n => return Err(format!("parent_span_id has {n} bytes, not 8 or 0")),
    };
    s.status = match raw.status_code {
        0 => StatusCode::Unset,
        1 => StatusCode::Ok,
        2 => StatusCode::Error,
        c => return Err(format!("status code {c} is not 0, 1 or 2")),
    };
    for (l, (tid, sid)) in s.links.iter_mut().zip(raw.link_ids) {
        l.trace_id = trace_id(tid, "a link's trace_id")?;
        l.span_id = span_id(sid, "a link's span_id")?;
    }
    s.trace_id = trace_id(raw.trace_id, "trace_id")?;
    s.span_id = span_id(raw.span_id, "span_id")?;
    s.kind = match raw.kind {
        0 => SpanKind::Unspecified,
        1 => SpanKind::Internal,
        2 => SpanKind::Server,
        3 => SpanKind::Client,
        4 => SpanKind::Producer,
        5 => SpanKind::Consumer,
        k => return Err(format!("kind {k} is not a span kind (0-5)")),
    };
    Ok(s)
}

/// Decodes an `ExportTraceServiceRequest`. `Err` when the bytes are not one (the whole request
/// is refused); malformed spans are counted in [`Converted::rejected`].
pub fn request(buf: &[u8]) -> Result<Converted> {
    let mut ctx = Ctx::default();
    let mut out = Converted::default();
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key()? {
            (pb::request::RESOURCE_SPANS, LEN) => resource_spans(&mut ctx, &mut out, r.bytes()?)?,
            (f @ pb::request::RESOURCE_SPANS, w) => {
                return Err(wrong_type("ExportTraceServiceRequest", f, w))
            }
            (f, w) => r.skip(f, w)?,
        }
    }
    Ok(out)
}

fn resource_spans<'a>(ctx: &mut Ctx<'a>, out: &mut Converted, buf: &'a [u8]) -> Result<()> {
    let mut res = Resource::default();
    let mut spans = Vec::new();
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key()? {
            (pb::resource_spans::RESOURCE, LEN) => resource(ctx, &mut res, r.bytes()?)?,
            (pb::resource_spans::SCOPE_SPANS, LEN) => {
                // The scope may come after its spans: they get it once the message is read.
                let first = spans.len();
                let mut sc = Scope {
                    name: ctx.intern(b"")?,
                    version: ctx.intern(b"")?,
                    ..Scope::default()
                };
                let body = r.bytes()?;
                spans.reserve(count(body, pb::scope_spans::SPANS));
                let mut ss = Reader::new(body);
                while ss.more() {
                    match ss.key()? {
                        (pb::scope_spans::SCOPE, LEN) => scope(ctx, &mut sc, ss.bytes()?)?,
                        (pb::scope_spans::SPANS, LEN) => match span(ctx, ss.bytes()?)? {
                            Ok(s) => spans.push(s),
                            Err(why) => {
                                out.rejected += 1;
                                out.first_error.get_or_insert(why);
                            }
                        },
                        (pb::scope_spans::SCHEMA_URL, LEN) => {
                            sc.schema_url = optional(ss.bytes()?)?
                        }
                        (f @ pb::scope_spans::SCOPE..=pb::scope_spans::SCHEMA_URL, w) => {
                            return Err(wrong_type("ScopeSpans", f, w))
                        }
                        (f, w) => ss.skip(f, w)?,
                    }
                }
                let sc = Arc::new(sc);
                for s in &mut spans[first..] {
                    s.scope = Some(Arc::clone(&sc));
                }
            }
            (pb::resource_spans::SCHEMA_URL, LEN) => res.schema_url = optional(r.bytes()?)?,
            (f @ pb::resource_spans::RESOURCE..=pb::resource_spans::SCHEMA_URL, w) => {
                return Err(wrong_type("ResourceSpans", f, w))
            }
            (f, w) => r.skip(f, w)?,
        }
    }
    if !spans.is_empty() {
        out.accepted += spans.len() as u64;
        out.batches.push(Batch::spans(Arc::new(res), spans));
    }
    Ok(())
}

/// Reads a request: with `keep` (the pipeline takes encoded spans as they are), as [`encoded`]
/// batches when every span in it is clean; else, and otherwise, by [`request`].
pub fn read(buf: &bytes::Bytes, keep: bool) -> Result<Converted> {
    match keep.then(|| encoded(buf)).flatten() {
        Some(mut c) => {
            // The batches are slices of `buf`: they keep all of it.
            c.held_bytes = buf.len() as u64;
            Ok(c)
        }
        None => {
            let mut c = request(buf)?;
            c.held_bytes = crate::convert::decoded_size(&c.batches);
            Ok(c)
        }
    }
}

/// The request as it came, split into one batch of [`EncodedSpans`] per `ResourceSpans` that
/// holds spans (each the bytes of that field: a request of its own), with only the resources
/// decoded — when [`request`] would accept every span in it. `None` when it would not, or when
/// the request holds anything this check does not know (unknown fields, deep nesting, an
/// out-of-range enum it would take): then [`request`] decodes it and says what it refused.
/// This check is stricter than [`request`], never looser: whatever passes here decodes.
pub fn encoded(buf: &bytes::Bytes) -> Option<Converted> {
    let mut ctx = Ctx::default();
    let mut out = Converted::default();
    let mut r = Reader::new(buf);
    while r.more() {
        let start = r.pos;
        if r.key().ok()? != (pb::request::RESOURCE_SPANS, LEN) {
            return None;
        }
        let (res, spans) = checked_resource_spans(&mut ctx, r.bytes().ok()?)?;
        if spans > 0 {
            out.accepted += spans as u64;
            out.batches.push(Batch {
                resource: Arc::new(res),
                records: Records::Encoded(EncodedSpans::new(
                    buf.slice(start..r.pos),
                    spans,
                    decode_spans,
                )),
            });
        }
    }
    Some(out)
}

/// The decoder behind [`EncodedSpans`]: the spans of a request [`encoded`] passed.
fn decode_spans(buf: &[u8]) -> std::result::Result<Vec<Span>, String> {
    let c = request(buf)?;
    if let Some(why) = c.first_error {
        return Err(why);
    }
    let mut spans = Vec::with_capacity(c.accepted as usize);
    for b in c.batches {
        if let Records::Spans(s) = b.records {
            spans.extend(s);
        }
    }
    Ok(spans)
}

/// A `ResourceSpans`: its resource (decoded) and how many spans it holds, all clean.
fn checked_resource_spans<'a>(ctx: &mut Ctx<'a>, buf: &'a [u8]) -> Option<(Resource, usize)> {
    let mut res = Resource::default();
    let mut spans = 0;
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key().ok()? {
            (pb::resource_spans::RESOURCE, LEN) => resource(ctx, &mut res, r.bytes().ok()?).ok()?,
            (pb::resource_spans::SCOPE_SPANS, LEN) => {
                let mut ss = Reader::new(r.bytes().ok()?);
                while ss.more() {
                    match ss.key().ok()? {
                        (pb::scope_spans::SCOPE, LEN) => {
                            scope(ctx, &mut Scope::default(), ss.bytes().ok()?).ok()?
                        }
                        (pb::scope_spans::SPANS, LEN) => {
                            checked_span(ss.bytes().ok()?)?;
                            spans += 1;
                        }
                        (pb::scope_spans::SCHEMA_URL, LEN) => checked_str(ss.bytes().ok()?)?,
                        _ => return None,
                    }
                }
            }
            (pb::resource_spans::SCHEMA_URL, LEN) => {
                res.schema_url = optional(r.bytes().ok()?).ok()?
            }
            _ => return None,
        }
    }
    Some((res, spans))
}

fn checked_str(b: &[u8]) -> Option<()> {
    std::str::from_utf8(b).ok().map(drop)
}

/// An id [`check`] takes: `n` bytes, not all zero.
fn checked_id(b: &[u8], n: usize) -> bool {
    b.len() == n && b.iter().any(|&x| x != 0)
}

/// Nesting of arrays and maps followed before giving the request to [`request`].
const MAX_DEPTH: usize = 16;

fn checked_kv(buf: &[u8], depth: usize) -> Option<()> {
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key().ok()? {
            (pb::key_value::KEY, LEN) => checked_str(r.bytes().ok()?)?,
            (pb::key_value::VALUE, LEN) => checked_any(r.bytes().ok()?, depth)?,
            _ => return None,
        }
    }
    Some(())
}

/// An `ArrayValue` or `KeyValueList`: nothing but field 1, each item passing `item`.
fn checked_items(buf: &[u8], item: impl Fn(&[u8]) -> Option<()>) -> Option<()> {
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key().ok()? {
            (pb::list::VALUES, LEN) => item(r.bytes().ok()?)?,
            _ => return None,
        }
    }
    Some(())
}

fn checked_any(buf: &[u8], depth: usize) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader::new(buf);
    while r.more() {
        match r.key().ok()? {
            (pb::any_value::STRING, LEN) => checked_str(r.bytes().ok()?)?,
            (pb::any_value::BOOL | pb::any_value::INT, VARINT) => r.varint().ok().map(drop)?,
            (pb::any_value::DOUBLE, I64) => r.fixed64().ok().map(drop)?,
            (pb::any_value::ARRAY, LEN) => {
                checked_items(r.bytes().ok()?, |b| checked_any(b, depth + 1))?
            }
            (pb::any_value::KVLIST, LEN) => {
                checked_items(r.bytes().ok()?, |b| checked_kv(b, depth + 1))?
            }
            (pb::any_value::BYTES, LEN) => r.bytes().ok().map(drop)?,
            _ => return None,
        }
    }
    Some(())
}

/// A span [`span`] reads and [`check`] accepts.
fn checked_span(buf: &[u8]) -> Option<()> {
    let mut r = Reader::new(buf);
    let (mut trace, mut span) = (false, false);
    while r.more() {
        match r.key().ok()? {
            (pb::span::TRACE_ID, LEN) => trace = checked_id(r.bytes().ok()?, 16),
            (pb::span::SPAN_ID, LEN) => span = checked_id(r.bytes().ok()?, 8),
            (pb::span::TRACE_STATE | pb::span::NAME, LEN) => checked_str(r.bytes().ok()?)?,
            (pb::span::PARENT_SPAN_ID, LEN) => {
                if !matches!(r.bytes().ok()?.len(), 0 | 8) {
                    return None;
                }
            }
            (pb::span::KIND, VARINT) => {
                if r.varint().ok()? > 5 {
                    return None;
                }
            }
            (pb::span::START_TIME_UNIX_NANO | pb::span::END_TIME_UNIX_NANO, I64) => {
                r.fixed64().ok().map(drop)?
            }
            (pb::span::ATTRIBUTES, LEN) => checked_kv(r.bytes().ok()?, 0)?,
            (
                pb::span::DROPPED_ATTRIBUTES_COUNT
                | pb::span::DROPPED_EVENTS_COUNT
                | pb::span::DROPPED_LINKS_COUNT,
                VARINT,
            ) => r.varint().ok().map(drop)?,
            (pb::span::EVENTS, LEN) => {
                let mut e = Reader::new(r.bytes().ok()?);
                while e.more() {
                    match e.key().ok()? {
                        (pb::event::TIME_UNIX_NANO, I64) => e.fixed64().ok().map(drop)?,
                        (pb::event::NAME, LEN) => checked_str(e.bytes().ok()?)?,
                        (pb::event::ATTRIBUTES, LEN) => checked_kv(e.bytes().ok()?, 0)?,
                        (pb::event::DROPPED_ATTRIBUTES_COUNT, VARINT) => {
                            e.varint().ok().map(drop)?
                        }
                        _ => return None,
                    }
                }
            }
            (pb::span::LINKS, LEN) => {
                let mut l = Reader::new(r.bytes().ok()?);
                let (mut trace, mut span) = (false, false);
                while l.more() {
                    match l.key().ok()? {
                        (pb::link::TRACE_ID, LEN) => trace = checked_id(l.bytes().ok()?, 16),
                        (pb::link::SPAN_ID, LEN) => span = checked_id(l.bytes().ok()?, 8),
                        (pb::link::TRACE_STATE, LEN) => checked_str(l.bytes().ok()?)?,
                        (pb::link::ATTRIBUTES, LEN) => checked_kv(l.bytes().ok()?, 0)?,
                        (pb::link::DROPPED_ATTRIBUTES_COUNT, VARINT) => {
                            l.varint().ok().map(drop)?
                        }
                        (pb::link::FLAGS, I32) => l.fixed32().ok().map(drop)?,
                        _ => return None,
                    }
                }
                if !(trace && span) {
                    return None;
                }
            }
            (pb::span::STATUS, LEN) => {
                let mut st = Reader::new(r.bytes().ok()?);
                while st.more() {
                    match st.key().ok()? {
                        (pb::status::MESSAGE, LEN) => checked_str(st.bytes().ok()?)?,
                        (pb::status::CODE, VARINT) => {
                            if st.varint().ok()? > 2 {
                                return None;
                            }
                        }
                        _ => return None,
                    }
                }
            }
            (pb::span::FLAGS, I32) => r.fixed32().ok().map(drop)?,
            _ => return None,
        }
    }
    (trace && span).then_some(())
}

/// How many length-delimited fields `field` a message holds (a sizing hint: a message that
/// cannot be read stops the count, and the real pass reports why).
fn count(buf: &[u8], field: u32) -> usize {
    let mut r = Reader::new(buf);
    let mut n = 0;
    while r.more() {
        let Ok((f, w)) = r.key() else { break };
        n += usize::from(f == field && w == LEN);
        if r.skip(f, w).is_err() {
            break;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
    use opentelemetry_proto::tonic::trace::v1 as proto;
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
            request(&broken).unwrap_err(),
            "a string field is not valid UTF-8"
        );
        // A known field with the wrong wire type; an overlong varint.
        assert!(request(&[0x08, 0x01]).unwrap_err().contains("wire type"));
        assert!(
            request(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err()
        );
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
            let why = request(&req).unwrap_err();
            assert!(why.contains("nested deeper than 100"), "{why}");
            assert!(!passes_as_received(&req));
        }
        // Unknown groups nested a million deep (field 2 of the request, start-group, each one
        // byte): refused, not skipped by recursion.
        let groups = vec![2 << 3 | START_GROUP; 1_000_000];
        let why = request(&groups).unwrap_err();
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
}
