//! Inputs the fuzz targets (tests/fuzz) found, kept as tests: the decoder and prost's decoding
//! of the official protos agree on each.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_receiver_otlp::{convert, wire};
use prost::Message;

fn agree(name: &str, data: &[u8]) {
    let ours = wire::request(&bytes::Bytes::copy_from_slice(data));
    let theirs = ExportTraceServiceRequest::decode(data).map(convert::request);
    match (ours, theirs) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.batches, b.batches, "{name}");
            assert_eq!((a.accepted, a.rejected), (b.accepted, b.rejected), "{name}");
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "{name}: the decoder says {:?}, prost {:?}",
            a.map(|c| (c.accepted, c.rejected, c.first_error)),
            b.map(|c| (c.accepted, c.rejected, c.first_error))
        ),
    }
}

#[test]
fn fuzz_findings_decode_as_prost_decodes_them() {
    agree(
        "invalid-utf8-key",
        include_bytes!("regressions/invalid-utf8-key.pb"),
    );
}
