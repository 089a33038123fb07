//! Each OTLP trace message's fields, typed: field numbers and wire types are matched here once,
//! for both walks over a request (decoding it, and checking it can be kept as received), so the
//! two cannot disagree on the wire format. A known field with another wire type refuses the
//! request, as prost does; a field the message does not have is skipped and read as `None`
//! (decoding ignores it; the check leaves such a request to decoding). Adding a field to an
//! enum here makes both walks fail to compile until they handle it.

use std::marker::PhantomData;

use oxeye_otlp_wire as pb;
use oxeye_otlp_wire::{I32, I64, LEN, VARINT};

use super::reader::{Reader, Result, WireError};

/// A message type, as the enum of its fields.
pub(super) trait Message<'a>: Sized {
    /// The field `(field, wire)`, read from `r`; `None` for a field this message does not have
    /// (skipped by then).
    fn read(field: u32, wire: u8, r: &mut Reader<'a>) -> Result<Option<Self>>;
}

/// The fields of the message in `buf`, in the order they came.
pub(super) fn fields<'a, M: Message<'a>>(buf: &'a [u8]) -> Fields<'a, M> {
    Fields {
        r: Reader::new(buf),
        message: PhantomData,
    }
}

pub(super) struct Fields<'a, M> {
    r: Reader<'a>,
    message: PhantomData<M>,
}

impl<M> Fields<'_, M> {
    /// Where the next field starts.
    pub(super) fn pos(&self) -> usize {
        self.r.pos
    }
}

impl<'a, M: Message<'a>> Iterator for Fields<'a, M> {
    type Item = Result<Option<M>>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if !self.r.more() {
            return None;
        }
        Some(self.r.key().and_then(|(f, w)| M::read(f, w, &mut self.r)))
    }
}

/// What a field that is not its message's reads as: refused when the number is the message's
/// (`known`) with another wire type, else skipped.
#[cold]
#[inline(never)]
fn other(
    message: &'static str,
    known: std::ops::RangeInclusive<u32>,
    field: u32,
    wire: u8,
    r: &mut Reader<'_>,
) -> Result<()> {
    // It returns no field: an out-of-line call returning one would keep every field read in
    // memory rather than in registers (measured: the check walk 20 % slower).
    if known.contains(&field) {
        return Err(WireError::WrongType {
            message,
            field,
            wire,
        });
    }
    r.skip(field, wire)
}

/// `ExportTraceServiceRequest`.
pub(super) enum Request<'a> {
    ResourceSpans(&'a [u8]),
}

impl<'a> Message<'a> for Request<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        Ok(Some(match (f, w) {
            (pb::request::RESOURCE_SPANS, LEN) => Request::ResourceSpans(r.bytes()?),
            _ => {
                let known = pb::request::RESOURCE_SPANS..=pb::request::RESOURCE_SPANS;
                other("ExportTraceServiceRequest", known, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `ResourceSpans`.
pub(super) enum ResourceSpans<'a> {
    Resource(&'a [u8]),
    ScopeSpans(&'a [u8]),
    SchemaUrl(&'a [u8]),
}

impl<'a> Message<'a> for ResourceSpans<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::resource_spans as n;
        Ok(Some(match (f, w) {
            (n::RESOURCE, LEN) => ResourceSpans::Resource(r.bytes()?),
            (n::SCOPE_SPANS, LEN) => ResourceSpans::ScopeSpans(r.bytes()?),
            (n::SCHEMA_URL, LEN) => ResourceSpans::SchemaUrl(r.bytes()?),
            _ => {
                other("ResourceSpans", n::RESOURCE..=n::SCHEMA_URL, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `Resource`.
pub(super) enum Resource<'a> {
    Attribute(&'a [u8]),
    DroppedAttributes(u64),
    EntityRef(&'a [u8]),
}

impl<'a> Message<'a> for Resource<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::resource as n;
        Ok(Some(match (f, w) {
            (n::ATTRIBUTES, LEN) => Resource::Attribute(r.bytes()?),
            (n::DROPPED_ATTRIBUTES_COUNT, VARINT) => Resource::DroppedAttributes(r.varint()?),
            (n::ENTITY_REFS, LEN) => Resource::EntityRef(r.bytes()?),
            _ => {
                other("Resource", n::ATTRIBUTES..=n::ENTITY_REFS, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `EntityRef`.
pub(super) enum EntityRef<'a> {
    SchemaUrl(&'a [u8]),
    Type(&'a [u8]),
    IdKey(&'a [u8]),
    DescriptionKey(&'a [u8]),
}

impl<'a> Message<'a> for EntityRef<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::entity_ref as n;
        Ok(Some(match (f, w) {
            (n::SCHEMA_URL, LEN) => EntityRef::SchemaUrl(r.bytes()?),
            (n::TYPE, LEN) => EntityRef::Type(r.bytes()?),
            (n::ID_KEYS, LEN) => EntityRef::IdKey(r.bytes()?),
            (n::DESCRIPTION_KEYS, LEN) => EntityRef::DescriptionKey(r.bytes()?),
            _ => {
                other("EntityRef", n::SCHEMA_URL..=n::DESCRIPTION_KEYS, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `ScopeSpans`.
pub(super) enum ScopeSpans<'a> {
    Scope(&'a [u8]),
    Span(&'a [u8]),
    SchemaUrl(&'a [u8]),
}

impl<'a> Message<'a> for ScopeSpans<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::scope_spans as n;
        Ok(Some(match (f, w) {
            (n::SCOPE, LEN) => ScopeSpans::Scope(r.bytes()?),
            (n::SPANS, LEN) => ScopeSpans::Span(r.bytes()?),
            (n::SCHEMA_URL, LEN) => ScopeSpans::SchemaUrl(r.bytes()?),
            _ => {
                other("ScopeSpans", n::SCOPE..=n::SCHEMA_URL, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `InstrumentationScope`.
pub(super) enum Scope<'a> {
    Name(&'a [u8]),
    Version(&'a [u8]),
    Attribute(&'a [u8]),
    DroppedAttributes(u64),
}

impl<'a> Message<'a> for Scope<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::scope as n;
        Ok(Some(match (f, w) {
            (n::NAME, LEN) => Scope::Name(r.bytes()?),
            (n::VERSION, LEN) => Scope::Version(r.bytes()?),
            (n::ATTRIBUTES, LEN) => Scope::Attribute(r.bytes()?),
            (n::DROPPED_ATTRIBUTES_COUNT, VARINT) => Scope::DroppedAttributes(r.varint()?),
            _ => {
                let known = n::NAME..=n::DROPPED_ATTRIBUTES_COUNT;
                other("InstrumentationScope", known, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `Span`.
#[allow(clippy::enum_variant_names)] // named as the protos name the fields
pub(super) enum Span<'a> {
    TraceId(&'a [u8]),
    SpanId(&'a [u8]),
    TraceState(&'a [u8]),
    ParentSpanId(&'a [u8]),
    Name(&'a [u8]),
    /// An `int32` enum: the varint's low 32 bits, as prost reads it.
    Kind(i32),
    StartTime(u64),
    EndTime(u64),
    Attribute(&'a [u8]),
    DroppedAttributes(u64),
    Event(&'a [u8]),
    DroppedEvents(u64),
    Link(&'a [u8]),
    DroppedLinks(u64),
    Status(&'a [u8]),
    Flags(u32),
}

impl<'a> Message<'a> for Span<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::span as n;
        Ok(Some(match (f, w) {
            (n::TRACE_ID, LEN) => Span::TraceId(r.bytes()?),
            (n::SPAN_ID, LEN) => Span::SpanId(r.bytes()?),
            (n::TRACE_STATE, LEN) => Span::TraceState(r.bytes()?),
            (n::PARENT_SPAN_ID, LEN) => Span::ParentSpanId(r.bytes()?),
            (n::NAME, LEN) => Span::Name(r.bytes()?),
            (n::KIND, VARINT) => Span::Kind(r.varint()? as i32),
            (n::START_TIME_UNIX_NANO, I64) => Span::StartTime(r.fixed64()?),
            (n::END_TIME_UNIX_NANO, I64) => Span::EndTime(r.fixed64()?),
            (n::ATTRIBUTES, LEN) => Span::Attribute(r.bytes()?),
            (n::DROPPED_ATTRIBUTES_COUNT, VARINT) => Span::DroppedAttributes(r.varint()?),
            (n::EVENTS, LEN) => Span::Event(r.bytes()?),
            (n::DROPPED_EVENTS_COUNT, VARINT) => Span::DroppedEvents(r.varint()?),
            (n::LINKS, LEN) => Span::Link(r.bytes()?),
            (n::DROPPED_LINKS_COUNT, VARINT) => Span::DroppedLinks(r.varint()?),
            (n::STATUS, LEN) => Span::Status(r.bytes()?),
            (n::FLAGS, I32) => Span::Flags(r.fixed32()?),
            _ => {
                other("Span", n::TRACE_ID..=n::FLAGS, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `Span.Event`.
pub(super) enum Event<'a> {
    Time(u64),
    Name(&'a [u8]),
    Attribute(&'a [u8]),
    DroppedAttributes(u64),
}

impl<'a> Message<'a> for Event<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::event as n;
        Ok(Some(match (f, w) {
            (n::TIME_UNIX_NANO, I64) => Event::Time(r.fixed64()?),
            (n::NAME, LEN) => Event::Name(r.bytes()?),
            (n::ATTRIBUTES, LEN) => Event::Attribute(r.bytes()?),
            (n::DROPPED_ATTRIBUTES_COUNT, VARINT) => Event::DroppedAttributes(r.varint()?),
            _ => {
                let known = n::TIME_UNIX_NANO..=n::DROPPED_ATTRIBUTES_COUNT;
                other("Span.Event", known, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `Span.Link`.
pub(super) enum Link<'a> {
    TraceId(&'a [u8]),
    SpanId(&'a [u8]),
    TraceState(&'a [u8]),
    Attribute(&'a [u8]),
    DroppedAttributes(u64),
    Flags(u32),
}

impl<'a> Message<'a> for Link<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::link as n;
        Ok(Some(match (f, w) {
            (n::TRACE_ID, LEN) => Link::TraceId(r.bytes()?),
            (n::SPAN_ID, LEN) => Link::SpanId(r.bytes()?),
            (n::TRACE_STATE, LEN) => Link::TraceState(r.bytes()?),
            (n::ATTRIBUTES, LEN) => Link::Attribute(r.bytes()?),
            (n::DROPPED_ATTRIBUTES_COUNT, VARINT) => Link::DroppedAttributes(r.varint()?),
            (n::FLAGS, I32) => Link::Flags(r.fixed32()?),
            _ => {
                other("Span.Link", n::TRACE_ID..=n::FLAGS, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `Status`.
pub(super) enum Status<'a> {
    Message(&'a [u8]),
    /// An `int32` enum, as [`Span::Kind`].
    Code(i32),
}

impl<'a> Message<'a> for Status<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::status as n;
        Ok(Some(match (f, w) {
            (n::MESSAGE, LEN) => Status::Message(r.bytes()?),
            (n::CODE, VARINT) => Status::Code(r.varint()? as i32),
            _ => {
                other("Status", n::MESSAGE..=n::CODE, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `KeyValue`.
pub(super) enum KeyValue<'a> {
    Key(&'a [u8]),
    Value(&'a [u8]),
}

impl<'a> Message<'a> for KeyValue<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::key_value as n;
        Ok(Some(match (f, w) {
            (n::KEY, LEN) => KeyValue::Key(r.bytes()?),
            (n::VALUE, LEN) => KeyValue::Value(r.bytes()?),
            _ => {
                other("KeyValue", n::KEY..=n::VALUE, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// `AnyValue` (a oneof: the last one written counts).
pub(super) enum AnyValue<'a> {
    String(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(&'a [u8]),
    KvList(&'a [u8]),
    Bytes(&'a [u8]),
}

impl<'a> Message<'a> for AnyValue<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        use pb::any_value as n;
        Ok(Some(match (f, w) {
            (n::STRING, LEN) => AnyValue::String(r.bytes()?),
            (n::BOOL, VARINT) => AnyValue::Bool(r.varint()? != 0),
            (n::INT, VARINT) => AnyValue::Int(r.varint()? as i64),
            (n::DOUBLE, I64) => AnyValue::Double(f64::from_bits(r.fixed64()?)),
            (n::ARRAY, LEN) => AnyValue::Array(r.bytes()?),
            (n::KVLIST, LEN) => AnyValue::KvList(r.bytes()?),
            (n::BYTES, LEN) => AnyValue::Bytes(r.bytes()?),
            _ => {
                other("AnyValue", n::STRING..=n::BYTES, f, w, r)?;
                return Ok(None);
            }
        }))
    }
}

/// An `ArrayValue`'s item: an `AnyValue`.
pub(super) struct ArrayItem<'a>(pub &'a [u8]);

impl<'a> Message<'a> for ArrayItem<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        match (f, w) {
            (pb::list::VALUES, LEN) => Ok(Some(ArrayItem(r.bytes()?))),
            _ => {
                other("ArrayValue", pb::list::VALUES..=pb::list::VALUES, f, w, r)?;
                Ok(None)
            }
        }
    }
}

/// A `KeyValueList`'s item: a `KeyValue`.
pub(super) struct KvListItem<'a>(pub &'a [u8]);

impl<'a> Message<'a> for KvListItem<'a> {
    #[inline(always)]
    fn read(f: u32, w: u8, r: &mut Reader<'a>) -> Result<Option<Self>> {
        match (f, w) {
            (pb::list::VALUES, LEN) => Ok(Some(KvListItem(r.bytes()?))),
            _ => {
                other("KeyValueList", pb::list::VALUES..=pb::list::VALUES, f, w, r)?;
                Ok(None)
            }
        }
    }
}
