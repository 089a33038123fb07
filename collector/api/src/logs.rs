//! Logs: the OTLP log record (`opentelemetry/proto/logs/v1`), field for field. Its resource is
//! the batch's.

use std::sync::Arc;

use crate::data::{Attributes, Scope, SpanId, TraceId, Value};

/// One log record or event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogRecord {
    /// When the event happened, Unix ns (0: not known).
    pub time_unix_ns: u64,
    /// When the record was collected, Unix ns.
    pub observed_time_unix_ns: u64,
    /// OTLP severity number, 1 (TRACE) to 24 (FATAL4); 0 when not given ([`Severity`]).
    pub severity_number: i32,
    /// Severity as the source wrote it (`INFO`, `warning`), when given.
    pub severity_text: Option<Arc<str>>,
    /// The message: a string, or any value (a map for structured logs, bytes); `None` when the
    /// record has no body (`Some(Value::Empty)`: a body with no value set, as some SDKs send).
    pub body: Option<Value>,
    /// Attributes.
    pub attributes: Attributes,
    /// Attributes the source dropped.
    pub dropped_attributes_count: u32,
    /// W3C trace flags of the context the record was made in.
    pub flags: u32,
    /// The trace the record was made in, when known.
    pub trace_id: Option<TraceId>,
    /// The span it was made in, when known.
    pub span_id: Option<SpanId>,
    /// The event's name, for a record that is an event (`process.exec`).
    pub event_name: Option<Arc<str>>,
    /// The instrumentation scope that made the record; `None` for records oxeye made.
    pub scope: Option<Arc<Scope>>,
}

/// OTLP severity numbers: the first of each range (`TRACE` is 1–4, `DEBUG` 5–8, ...).
pub struct Severity;

impl Severity {
    /// TRACE.
    pub const TRACE: i32 = 1;
    /// DEBUG.
    pub const DEBUG: i32 = 5;
    /// INFO.
    pub const INFO: i32 = 9;
    /// WARN.
    pub const WARN: i32 = 13;
    /// ERROR.
    pub const ERROR: i32 = 17;
    /// FATAL.
    pub const FATAL: i32 = 21;

    /// The short name of a severity number's range (`INFO` for 9–12), `UNSPECIFIED` for 0,
    /// and `None` outside 0–24.
    pub fn name(number: i32) -> Option<&'static str> {
        Some(match number {
            0 => "UNSPECIFIED",
            1..=4 => "TRACE",
            5..=8 => "DEBUG",
            9..=12 => "INFO",
            13..=16 => "WARN",
            17..=20 => "ERROR",
            21..=24 => "FATAL",
            _ => return None,
        })
    }
}
