//! OTLP log requests → oxeye log records, field for field. A record with an id of the wrong
//! length is refused alone (partial success).

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1 as proto;
use oxeye_api::{Batch, LogRecord, Scope, SpanId, TraceId};

use super::{attributes, optional, resource, scope, value, Converted, Strings};

/// An id that may be absent (empty); all zero is the same as absent.
fn id<const N: usize>(bytes: &[u8], what: &str) -> Result<Option<[u8; N]>, String> {
    match bytes.len() {
        0 => Ok(None),
        n if n == N => {
            let id: [u8; N] = bytes.try_into().unwrap_or([0; N]);
            Ok((id != [0; N]).then_some(id))
        }
        n => Err(format!("a log record's {what} has {n} bytes, not {N} or 0")),
    }
}

fn record(
    strings: &mut Strings,
    scope: &Arc<Scope>,
    r: proto::LogRecord,
) -> Result<LogRecord, String> {
    Ok(LogRecord {
        time_unix_ns: r.time_unix_nano,
        observed_time_unix_ns: r.observed_time_unix_nano,
        severity_number: r.severity_number,
        severity_text: optional(r.severity_text),
        body: r.body.map(|b| value(strings, Some(b))),
        attributes: attributes(strings, r.attributes),
        dropped_attributes_count: r.dropped_attributes_count,
        flags: r.flags,
        trace_id: id::<16>(&r.trace_id, "trace_id")?.map(TraceId),
        span_id: id::<8>(&r.span_id, "span_id")?.map(SpanId),
        event_name: optional(r.event_name),
        scope: Some(Arc::clone(scope)),
    })
}

/// Converts one request; never fails as a whole (bad records are counted in `rejected`).
pub fn request(req: ExportLogsServiceRequest) -> Converted {
    let mut strings = Strings::default();
    let mut out = Converted::default();
    for rl in req.resource_logs {
        let res = Arc::new(resource(&mut strings, rl.resource, rl.schema_url));
        let mut logs = Vec::new();
        for sl in rl.scope_logs {
            let sc = Arc::new(scope(&mut strings, sl.scope, sl.schema_url));
            logs.reserve(sl.log_records.len());
            for r in sl.log_records {
                match record(&mut strings, &sc, r) {
                    Ok(r) => logs.push(r),
                    Err(why) => {
                        out.rejected += 1;
                        out.first_error.get_or_insert(why);
                    }
                }
            }
        }
        if !logs.is_empty() {
            out.accepted += logs.len() as u64;
            out.batches.push(Batch::logs(res, logs));
        }
    }
    out
}
