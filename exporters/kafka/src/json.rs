//! `encoding: otlp_json`: the protobuf request read back into the generated types and written
//! as OTLP/JSON (hex ids, camelCase names: the `with-serde` mapping of opentelemetry-proto).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_api::{BoxError, Signal};
use prost::Message;

/// The OTLP/JSON of `protobuf`, a request of `signal`.
pub fn from_protobuf(signal: Signal, protobuf: &[u8]) -> Result<Vec<u8>, BoxError> {
    Ok(match signal {
        Signal::Traces => serde_json::to_vec(&ExportTraceServiceRequest::decode(protobuf)?)?,
        Signal::Logs => serde_json::to_vec(&ExportLogsServiceRequest::decode(protobuf)?)?,
        _ => serde_json::to_vec(&ExportMetricsServiceRequest::decode(protobuf)?)?,
    })
}
