//! An OTLP request body of one signal, protobuf or JSON, made into batches: what the receiver
//! does with a request once read, and what the `kafka` receiver does with a message.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use oxeye_api::Signal;
use prost::Message;

use crate::convert::{self, logs, metrics, Converted};

/// How a request's body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `application/x-protobuf`, gRPC, or a Kafka message in `otlp_proto`.
    Protobuf,
    /// OTLP/JSON.
    Json,
}

/// Reads `body`, a request of `signal` (traces, metrics or logs). `keep`: a clean protobuf
/// request is kept as its bytes (`Records::Encoded*`) for exporters that forward requests as
/// received. The error says why it is not a request of that signal.
pub fn read(
    signal: Signal,
    body: &bytes::Bytes,
    kind: Body,
    keep: bool,
) -> Result<Converted, String> {
    let sized = |mut c: Converted| {
        c.held_bytes = convert::decoded_size(&c.batches);
        c
    };
    let protobuf = |what: &str, e: prost::DecodeError| format!("not an OTLP {what} request: {e}");
    // Metrics and logs are checked off the wire to be forwarded as received, and otherwise
    // decoded by prost (spans have a decoder of their own: the bulk of a node's telemetry).
    match (signal, kind) {
        (Signal::Metrics, Body::Protobuf) => match keep.then(|| crate::wire::encoded_metrics(body))
        {
            Some(Some(c)) => Ok(c),
            _ => ExportMetricsServiceRequest::decode(body.as_ref())
                .map(|r| sized(metrics::request(r)))
                .map_err(|e| protobuf("metrics", e)),
        },
        (Signal::Metrics, Body::Json) => {
            convert::from_json(body, "metrics").map(|r| sized(metrics::request(r)))
        }
        (Signal::Logs, Body::Protobuf) => match keep.then(|| crate::wire::encoded_logs(body)) {
            Some(Some(c)) => Ok(c),
            _ => ExportLogsServiceRequest::decode(body.as_ref())
                .map(|r| sized(logs::request(r)))
                .map_err(|e| protobuf("logs", e)),
        },
        (Signal::Logs, Body::Json) => {
            convert::from_json(body, "logs").map(|r| sized(logs::request(r)))
        }
        (_, Body::Protobuf) => {
            crate::wire::read(body, keep).map_err(|e| format!("not an OTLP trace request: {e}"))
        }
        (_, Body::Json) => convert::from_json(body, "trace").map(|r| sized(convert::request(r))),
    }
}

/// Keeps `gzipped`, the request as it came (one gzip member that inflated to `message`), with
/// a request forwarded as received whole: one batch whose encoded bytes are all of `message`.
/// An exporter sending gzip sends it as it is. Anything else is left as it was.
pub(crate) fn keep_gzipped(converted: &mut Converted, message: &[u8], gzipped: bytes::Bytes) {
    use oxeye_api::Records;
    let [batch] = converted.batches.as_mut_slice() else {
        return;
    };
    let n = gzipped.len() as u64;
    match &mut batch.records {
        Records::Encoded(e) if e.bytes() == message => *e = e.clone().with_gzipped(gzipped),
        Records::EncodedMetrics(e) if e.bytes() == message => {
            *e = e.clone().with_gzipped(gzipped);
        }
        Records::EncodedLogs(e) if e.bytes() == message => *e = e.clone().with_gzipped(gzipped),
        _ => return,
    }
    converted.held_bytes += n;
}
