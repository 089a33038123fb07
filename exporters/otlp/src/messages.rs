//! OTLP requests as protobuf bytes, for exporters that carry OTLP over another transport (the
//! `kafka` exporter): the requests this exporter would send, and spans cut into one request
//! per trace (a message keyed by its trace id).

use std::collections::HashMap;
use std::sync::Arc;

use oxeye_api::{Batch, Records, Signal};

use crate::config::OtlpSignal;
pub use crate::encode::Resources;

/// One OTLP export request.
#[derive(Debug)]
pub struct Message {
    /// Traces, metrics (flows included), logs or profiles.
    pub signal: Signal,
    /// Spans, data points or log records in it.
    pub records: u64,
    /// The `Export*ServiceRequest`, protobuf-encoded.
    pub protobuf: Vec<u8>,
}

/// `batches` as requests of at most `max` records, one signal each.
pub fn requests(resources: &mut Resources, batches: &[Arc<Batch>], max: usize) -> Vec<Message> {
    crate::requests(resources, batches, max, |_| false)
        .into_iter()
        .map(|(signal, request, records)| Message {
            signal: match signal {
                OtlpSignal::Traces => Signal::Traces,
                OtlpSignal::Metrics => Signal::Metrics,
                OtlpSignal::Logs => Signal::Logs,
                OtlpSignal::Profiles => Signal::Profiles,
            },
            records,
            protobuf: request.to_protobuf(false),
        })
        .collect()
}

/// The spans of `batches` (decoded: not [`Records::Encoded`]) as one trace request per trace
/// id, in first-seen order; the other records are left out.
pub fn requests_per_trace(
    resources: &mut Resources,
    batches: &[Arc<Batch>],
) -> Vec<([u8; 16], Message)> {
    let mut traces: Vec<([u8; 16], Vec<_>)> = Vec::new();
    let mut index: HashMap<[u8; 16], usize> = HashMap::new();
    for b in batches {
        if let Records::Spans(spans) = &b.records {
            for s in spans {
                let i = *index.entry(s.trace_id.0).or_insert_with(|| {
                    traces.push((s.trace_id.0, Vec::new()));
                    traces.len() - 1
                });
                traces[i].1.push((&b.resource, s));
            }
        }
    }
    traces
        .into_iter()
        .map(|(id, spans)| {
            let records = spans.len() as u64;
            let protobuf = crate::wire::trace_message(resources, spans)
                .bytes()
                .to_vec();
            (
                id,
                Message {
                    signal: Signal::Traces,
                    records,
                    protobuf,
                },
            )
        })
        .collect()
}
