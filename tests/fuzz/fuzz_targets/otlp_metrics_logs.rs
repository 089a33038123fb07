//! OTLP metrics and logs, protobuf: never a panic; what the receiver takes, written back by
//! the exporter's encoders and read again, gives the same records — the round trip that keeps
//! every field; and what the forwarding check (`wire::encoded_*`) passes, prost decodes and
//! `convert` takes whole, with the same count and records; the JSON path never panics (the
//! first byte picks the signal and the encoding).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use oxeye_api::Records;
use oxeye_exporter_otlp::bench::{logs, metrics, Resources};
use oxeye_receiver_otlp::{convert, wire};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&signal, data)) = data.split_first() else {
        return;
    };
    // 2 and 3: the JSON path, which must never panic and never pass what convert refuses
    // silently (its counts add up).
    if signal % 4 >= 2 {
        let c = if signal % 2 == 0 {
            convert::from_json::<ExportMetricsServiceRequest>(data, "metrics")
                .map(convert::metrics::request)
        } else {
            convert::from_json::<ExportLogsServiceRequest>(data, "logs").map(convert::logs::request)
        };
        if let Ok(c) = c {
            let held: u64 = c.batches.iter().map(|b| b.len() as u64).sum();
            assert_eq!(held, c.accepted);
        }
        return;
    }
    let mut resources = Resources::new(&Default::default());
    let bytes = bytes::Bytes::copy_from_slice(data);
    let checked = if signal % 2 == 0 {
        wire::encoded_metrics(&bytes)
    } else {
        wire::encoded_logs(&bytes)
    };
    let (first, again) = if signal % 2 == 0 {
        let Ok(request) = ExportMetricsServiceRequest::decode(data) else {
            assert!(checked.is_none(), "the check passed what prost refuses");
            return;
        };
        let first = convert::metrics::request(request);
        let parts: Vec<_> = first
            .batches
            .iter()
            .map(|b| match &b.records {
                Records::Metrics(m) => (&b.resource, &m[..]),
                _ => unreachable!("metrics convert to metrics"),
            })
            .collect();
        let encoded = metrics::request(&mut resources, parts).encode_to_vec();
        let again = convert::metrics::request(
            ExportMetricsServiceRequest::decode(&encoded[..]).expect("what we encode decodes"),
        );
        (first, again)
    } else {
        let Ok(request) = ExportLogsServiceRequest::decode(data) else {
            assert!(checked.is_none(), "the check passed what prost refuses");
            return;
        };
        let first = convert::logs::request(request);
        let parts: Vec<_> = first
            .batches
            .iter()
            .map(|b| match &b.records {
                Records::Logs(l) => (&b.resource, &l[..]),
                _ => unreachable!("logs convert to logs"),
            })
            .collect();
        let encoded = logs::request(&mut resources, parts).encode_to_vec();
        let again = convert::logs::request(
            ExportLogsServiceRequest::decode(&encoded[..]).expect("what we encode decodes"),
        );
        (first, again)
    };
    assert_eq!(again.rejected, 0, "{:?}", again.first_error);
    assert_eq!(first.accepted, again.accepted);
    // Batches are regrouped by resource identity: compare the records with their resources.
    let flat = |c: &convert::Converted| {
        c.batches
            .iter()
            .map(|b| format!("{:?}", (Arc::as_ref(&b.resource), &b.records)))
            .collect::<Vec<_>>()
            .concat()
    };
    assert_eq!(flat(&first), flat(&again));
    if let Some(c) = checked {
        assert_eq!(first.rejected, 0, "the check passed {:?}", first.first_error);
        assert_eq!(c.accepted, first.accepted);
        // Decoding the forwarded batches gives what decoding the request gave.
        let decoded: Vec<_> = c
            .batches
            .into_iter()
            .map(|b| oxeye_api::Batch::decoded(Arc::new(b)).expect("a checked batch decodes"))
            .collect();
        let flat_decoded: String = decoded
            .iter()
            .map(|b| format!("{:?}", (Arc::as_ref(&b.resource), &b.records)))
            .collect::<Vec<_>>()
            .concat();
        assert_eq!(flat_decoded, flat(&first));
    }
});
