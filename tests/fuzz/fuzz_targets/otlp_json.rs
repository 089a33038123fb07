//! The OTLP/JSON path (`convert::from_json`, then `convert::request`): never a panic, and what
//! it takes, written back as protobuf and read by the protobuf decoder, gives the same spans.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxeye_receiver_otlp::{convert, wire};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = convert::from_json::<
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    >(data, "trace") else {
        return;
    };
    let protobuf = bytes::Bytes::from(request.encode_to_vec());
    let from_json = convert::request(request);
    let from_protobuf = wire::request(&protobuf).expect("what JSON gave encodes and decodes");
    // Debug forms: a NaN value equals itself there, not under `==`.
    assert_eq!(
        format!("{:?}", from_json.batches),
        format!("{:?}", from_protobuf.batches)
    );
    assert_eq!(from_json.accepted, from_protobuf.accepted);
});
