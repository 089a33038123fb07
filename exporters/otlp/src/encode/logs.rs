//! oxeye log records → an OTLP logs request, field for field.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1 as proto;
use oxeye_api::{LogRecord, Resource};

use super::{any_value, by_resource, by_scope, key_values, opt_str, scope, Resources};

/// One record as OTLP.
pub fn record(r: &LogRecord) -> proto::LogRecord {
    proto::LogRecord {
        time_unix_nano: r.time_unix_ns,
        observed_time_unix_nano: r.observed_time_unix_ns,
        severity_number: r.severity_number,
        severity_text: opt_str(&r.severity_text),
        body: r.body.as_ref().map(any_value),
        attributes: key_values(&r.attributes),
        dropped_attributes_count: r.dropped_attributes_count,
        flags: r.flags,
        trace_id: r.trace_id.map(|t| t.0.to_vec()).unwrap_or_default(),
        span_id: r.span_id.map(|s| s.0.to_vec()).unwrap_or_default(),
        event_name: opt_str(&r.event_name),
    }
}

/// Builds one logs request from records of possibly several resources.
pub fn request<'a>(
    resources: &mut Resources,
    parts: impl IntoIterator<Item = (&'a Arc<Resource>, &'a [LogRecord])>,
) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: by_resource(parts)
            .into_iter()
            .map(|(resource, records)| proto::ResourceLogs {
                resource: Some(resources.get(resource)),
                scope_logs: by_scope(records, |r| r.scope.as_ref())
                    .into_iter()
                    .map(|(sc, records)| {
                        let (scope, schema_url) = scope(sc);
                        proto::ScopeLogs {
                            scope: Some(scope),
                            log_records: records.into_iter().map(record).collect(),
                            schema_url,
                        }
                    })
                    .collect(),
                schema_url: opt_str(&resource.schema_url),
            })
            .collect(),
    }
}
