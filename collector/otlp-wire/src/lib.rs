//! OTLP trace protobuf field numbers and wire types, named once: the `otlp` receiver decodes
//! and the `otlp` exporter encodes with these. Field numbers are those of
//! `opentelemetry/proto/{collector/trace,trace,common,resource}/v1/*.proto` (checked against
//! `opentelemetry-proto`'s generated messages in the tests).

/// A varint (int32, int64, uint32, uint64, bool, enum).
pub const VARINT: u8 = 0;
/// 8 bytes (fixed64, double).
pub const I64: u8 = 1;
/// Length-delimited (string, bytes, message, packed repeated).
pub const LEN: u8 = 2;
/// A group's start (deprecated; only skipped).
pub const START_GROUP: u8 = 3;
/// A group's end.
pub const END_GROUP: u8 = 4;
/// 4 bytes (fixed32).
pub const I32: u8 = 5;

/// The one-byte key of a field numbered up to 15 (every field here but `Span.flags`). Inlined
/// so the encoder's keys fold into constants (without it, each is a call across crates: the
/// exporter's direct writer ran 11 % slower).
#[inline(always)]
pub const fn key(field: u32, wire: u8) -> u8 {
    assert!(matches!(field, 1..=15), "a one-byte key");
    ((field as u8) << 3) | wire
}

/// `ExportTraceServiceRequest`.
pub mod request {
    /// `repeated ResourceSpans resource_spans`.
    pub const RESOURCE_SPANS: u32 = 1;
}

/// `ResourceSpans`.
pub mod resource_spans {
    pub const RESOURCE: u32 = 1;
    pub const SCOPE_SPANS: u32 = 2;
    pub const SCHEMA_URL: u32 = 3;
}

/// `ScopeSpans`.
pub mod scope_spans {
    pub const SCOPE: u32 = 1;
    pub const SPANS: u32 = 2;
    pub const SCHEMA_URL: u32 = 3;
}

/// `Resource`.
pub mod resource {
    pub const ATTRIBUTES: u32 = 1;
    pub const DROPPED_ATTRIBUTES_COUNT: u32 = 2;
    pub const ENTITY_REFS: u32 = 3;
}

/// `EntityRef`.
pub mod entity_ref {
    pub const SCHEMA_URL: u32 = 1;
    pub const TYPE: u32 = 2;
    pub const ID_KEYS: u32 = 3;
    pub const DESCRIPTION_KEYS: u32 = 4;
}

/// `InstrumentationScope`.
pub mod scope {
    pub const NAME: u32 = 1;
    pub const VERSION: u32 = 2;
    pub const ATTRIBUTES: u32 = 3;
    pub const DROPPED_ATTRIBUTES_COUNT: u32 = 4;
}

/// `Span`.
pub mod span {
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const TRACE_STATE: u32 = 3;
    pub const PARENT_SPAN_ID: u32 = 4;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START_TIME_UNIX_NANO: u32 = 7;
    pub const END_TIME_UNIX_NANO: u32 = 8;
    pub const ATTRIBUTES: u32 = 9;
    pub const DROPPED_ATTRIBUTES_COUNT: u32 = 10;
    pub const EVENTS: u32 = 11;
    pub const DROPPED_EVENTS_COUNT: u32 = 12;
    pub const LINKS: u32 = 13;
    pub const DROPPED_LINKS_COUNT: u32 = 14;
    pub const STATUS: u32 = 15;
    /// The one field past 15: a two-byte key ([`FLAGS_KEY`]).
    pub const FLAGS: u32 = 16;
    /// The key of `flags` (fixed32).
    pub const FLAGS_KEY: [u8; 2] = [((FLAGS << 3) as u8 | super::I32) | 0x80, (FLAGS >> 4) as u8];
}

/// `Span.Event`.
pub mod event {
    pub const TIME_UNIX_NANO: u32 = 1;
    pub const NAME: u32 = 2;
    pub const ATTRIBUTES: u32 = 3;
    pub const DROPPED_ATTRIBUTES_COUNT: u32 = 4;
}

/// `Span.Link`.
pub mod link {
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const TRACE_STATE: u32 = 3;
    pub const ATTRIBUTES: u32 = 4;
    pub const DROPPED_ATTRIBUTES_COUNT: u32 = 5;
    pub const FLAGS: u32 = 6;
}

/// `Status`.
pub mod status {
    pub const MESSAGE: u32 = 2;
    pub const CODE: u32 = 3;
}

/// `KeyValue`.
pub mod key_value {
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
}

/// `AnyValue` (a oneof).
pub mod any_value {
    pub const STRING: u32 = 1;
    pub const BOOL: u32 = 2;
    pub const INT: u32 = 3;
    pub const DOUBLE: u32 = 4;
    pub const ARRAY: u32 = 5;
    pub const KVLIST: u32 = 6;
    pub const BYTES: u32 = 7;
}

/// `ArrayValue` and `KeyValueList`: one repeated field.
pub mod list {
    pub const VALUES: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value::Value as V, AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue,
        KeyValueList,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        span::{Event, Link},
        ResourceSpans, ScopeSpans, Span, Status,
    };
    use prost::Message;

    /// The (field, wire type) of each field of an encoded message, in order.
    fn fields(m: &impl Message) -> Vec<(u32, u8)> {
        let b = m.encode_to_vec();
        let mut buf = &b[..];
        let mut out = Vec::new();
        while !buf.is_empty() {
            let (tag, wire) = prost::encoding::decode_key(&mut buf).expect("key");
            let wire_byte = wire as u8;
            out.push((tag, wire_byte));
            prost::encoding::skip_field(wire, tag, &mut buf, Default::default()).expect("skip");
        }
        out
    }

    fn kv() -> KeyValue {
        KeyValue {
            key: "k".into(),
            value: Some(AnyValue {
                value: Some(V::BoolValue(true)),
            }),
        }
    }

    #[test]
    fn wire_types_are_prosts() {
        use prost::encoding::WireType;
        for (ours, theirs) in [
            (VARINT, WireType::Varint),
            (I64, WireType::SixtyFourBit),
            (LEN, WireType::LengthDelimited),
            (START_GROUP, WireType::StartGroup),
            (END_GROUP, WireType::EndGroup),
            (I32, WireType::ThirtyTwoBit),
        ] {
            assert_eq!(ours, theirs as u8);
        }
        assert_eq!(key(span::NAME, LEN), 0x2a);
    }

    #[test]
    fn every_number_is_the_generated_messages() {
        let span_msg = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            trace_state: "t".into(),
            parent_span_id: vec![3; 8],
            name: "n".into(),
            kind: 2,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: vec![kv()],
            dropped_attributes_count: 1,
            events: vec![Event {
                time_unix_nano: 1,
                name: "e".into(),
                attributes: vec![kv()],
                dropped_attributes_count: 1,
            }],
            dropped_events_count: 1,
            links: vec![Link {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                trace_state: "t".into(),
                attributes: vec![kv()],
                dropped_attributes_count: 1,
                flags: 1,
            }],
            dropped_links_count: 1,
            status: Some(Status {
                message: "m".into(),
                code: 2,
            }),
            flags: 1,
        };
        use span as s;
        assert_eq!(
            fields(&span_msg),
            vec![
                (s::TRACE_ID, LEN),
                (s::SPAN_ID, LEN),
                (s::TRACE_STATE, LEN),
                (s::PARENT_SPAN_ID, LEN),
                (s::NAME, LEN),
                (s::KIND, VARINT),
                (s::START_TIME_UNIX_NANO, I64),
                (s::END_TIME_UNIX_NANO, I64),
                (s::ATTRIBUTES, LEN),
                (s::DROPPED_ATTRIBUTES_COUNT, VARINT),
                (s::EVENTS, LEN),
                (s::DROPPED_EVENTS_COUNT, VARINT),
                (s::LINKS, LEN),
                (s::DROPPED_LINKS_COUNT, VARINT),
                (s::STATUS, LEN),
                (s::FLAGS, I32),
            ]
        );
        let encoded = span_msg.encode_to_vec();
        assert_eq!(
            encoded[encoded.len() - 6..encoded.len() - 4],
            span::FLAGS_KEY
        );
        assert_eq!(
            fields(&span_msg.events[0]),
            vec![
                (event::TIME_UNIX_NANO, I64),
                (event::NAME, LEN),
                (event::ATTRIBUTES, LEN),
                (event::DROPPED_ATTRIBUTES_COUNT, VARINT),
            ]
        );
        assert_eq!(
            fields(&span_msg.links[0]),
            vec![
                (link::TRACE_ID, LEN),
                (link::SPAN_ID, LEN),
                (link::TRACE_STATE, LEN),
                (link::ATTRIBUTES, LEN),
                (link::DROPPED_ATTRIBUTES_COUNT, VARINT),
                (link::FLAGS, I32),
            ]
        );
        assert_eq!(
            fields(span_msg.status.as_ref().expect("status")),
            vec![(status::MESSAGE, LEN), (status::CODE, VARINT)]
        );
        let scope_msg = InstrumentationScope {
            name: "s".into(),
            version: "1".into(),
            attributes: vec![kv()],
            dropped_attributes_count: 1,
        };
        assert_eq!(
            fields(&scope_msg),
            vec![
                (scope::NAME, LEN),
                (scope::VERSION, LEN),
                (scope::ATTRIBUTES, LEN),
                (scope::DROPPED_ATTRIBUTES_COUNT, VARINT),
            ]
        );
        let entity = EntityRef {
            schema_url: "u".into(),
            r#type: "t".into(),
            id_keys: vec!["i".into()],
            description_keys: vec!["d".into()],
        };
        assert_eq!(
            fields(&entity),
            vec![
                (entity_ref::SCHEMA_URL, LEN),
                (entity_ref::TYPE, LEN),
                (entity_ref::ID_KEYS, LEN),
                (entity_ref::DESCRIPTION_KEYS, LEN),
            ]
        );
        let resource_msg = Resource {
            attributes: vec![kv()],
            dropped_attributes_count: 1,
            entity_refs: vec![entity],
        };
        assert_eq!(
            fields(&resource_msg),
            vec![
                (resource::ATTRIBUTES, LEN),
                (resource::DROPPED_ATTRIBUTES_COUNT, VARINT),
                (resource::ENTITY_REFS, LEN),
            ]
        );
        let ss = ScopeSpans {
            scope: Some(scope_msg),
            spans: vec![span_msg],
            schema_url: "u".into(),
        };
        assert_eq!(
            fields(&ss),
            vec![
                (scope_spans::SCOPE, LEN),
                (scope_spans::SPANS, LEN),
                (scope_spans::SCHEMA_URL, LEN),
            ]
        );
        let rs = ResourceSpans {
            resource: Some(resource_msg),
            scope_spans: vec![ss],
            schema_url: "u".into(),
        };
        assert_eq!(
            fields(&rs),
            vec![
                (resource_spans::RESOURCE, LEN),
                (resource_spans::SCOPE_SPANS, LEN),
                (resource_spans::SCHEMA_URL, LEN),
            ]
        );
        let req = ExportTraceServiceRequest {
            resource_spans: vec![rs],
        };
        assert_eq!(fields(&req), vec![(request::RESOURCE_SPANS, LEN)]);
        assert_eq!(
            fields(&kv()),
            vec![(key_value::KEY, LEN), (key_value::VALUE, LEN)]
        );
    }

    #[test]
    fn any_value_numbers_are_the_generated_oneof() {
        let any = |v: V| fields(&AnyValue { value: Some(v) });
        assert_eq!(
            any(V::StringValue("s".into())),
            vec![(any_value::STRING, LEN)]
        );
        assert_eq!(any(V::BoolValue(true)), vec![(any_value::BOOL, VARINT)]);
        assert_eq!(any(V::IntValue(1)), vec![(any_value::INT, VARINT)]);
        assert_eq!(any(V::DoubleValue(1.0)), vec![(any_value::DOUBLE, I64)]);
        assert_eq!(any(V::BytesValue(vec![1])), vec![(any_value::BYTES, LEN)]);
        let array = ArrayValue {
            values: vec![AnyValue {
                value: Some(V::IntValue(1)),
            }],
        };
        assert_eq!(fields(&array), vec![(list::VALUES, LEN)]);
        assert_eq!(any(V::ArrayValue(array)), vec![(any_value::ARRAY, LEN)]);
        let map = KeyValueList { values: vec![kv()] };
        assert_eq!(fields(&map), vec![(list::VALUES, LEN)]);
        assert_eq!(any(V::KvlistValue(map)), vec![(any_value::KVLIST, LEN)]);
    }
}
