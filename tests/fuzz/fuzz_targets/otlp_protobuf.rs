//! The OTLP protobuf decoder (`wire::request`, used for every protobuf request) against prost's
//! decoding of the official protos (`convert::request`): the same spans, refusals and first
//! error, or both refuse; and whatever the forward-as-received check (`wire::encoded`) passes
//! decodes to exactly those spans.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use oxeye_api::Batch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_receiver_otlp::{convert, wire};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let buf = bytes::Bytes::copy_from_slice(data);
    let ours = wire::request(&buf);
    let theirs = ExportTraceServiceRequest::decode(data).map(convert::request);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => {
            assert_eq!(same(&a.batches), same(&b.batches));
            assert_eq!(
                (a.accepted, a.rejected, &a.first_error),
                (b.accepted, b.rejected, &b.first_error)
            );
        }
        (Err(_), Err(_)) => {}
        // prost counts its recursion limit (100) over every message level, so it refuses
        // values nested about 48 deep inside a span that this decoder takes (up to 100).
        (Ok(_), Err(e)) if e.to_string().contains("recursion limit") => {}
        (Ok(_), Err(e)) => panic!("prost refuses what the decoder takes: {e}"),
        (Err(e), Ok(_)) => panic!("the decoder refuses what prost takes: {e}"),
    }
    if let Some(encoded) = wire::encoded(&buf) {
        let decoded: Vec<Batch> = encoded
            .batches
            .into_iter()
            .map(|b| Arc::unwrap_or_clone(Batch::decoded(Arc::new(b)).expect("decodes")))
            .collect();
        let ours = ours.expect("what the check passes decodes");
        assert_eq!(same(&decoded), same(&ours.batches));
    }
});

/// What the comparison sees: the Debug form, where a NaN value equals itself (`==` on batches
/// holding a `double_value` NaN is false even for the same batch).
fn same(batches: &[Batch]) -> String {
    format!("{batches:?}")
}
