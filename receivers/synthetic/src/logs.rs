//! Log records shaped like a web service's: mostly INFO access lines, some WARN and ERROR with
//! an exception, half of them in a trace, a structured body now and then.

use std::sync::Arc;

use oxeye_api::{Attributes, LogRecord, Scope, Severity, SpanId, TraceId, Value};

use crate::{Rng, ROUTES};

pub(crate) struct LogGen {
    rng: Rng,
    scope: Arc<Scope>,
}

impl LogGen {
    pub(crate) fn new(seed: u64) -> Self {
        LogGen {
            rng: Rng::new(seed),
            scope: Arc::new(Scope {
                name: "oxeye.synthetic".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Scope::default()
            }),
        }
    }

    pub(crate) fn next(&mut self, now_ns: u64) -> LogRecord {
        let route = ROUTES[self.rng.below(ROUTES.len() as u64) as usize];
        let roll = self.rng.below(100);
        let (severity_number, text, status) = match roll {
            0..=4 => (Severity::ERROR, "ERROR", 500),
            5..=14 => (Severity::WARN, "WARN", 404),
            15..=19 => (Severity::DEBUG, "DEBUG", 200),
            _ => (Severity::INFO, "INFO", 200),
        };
        let duration_ms = (self.rng.normal() * 0.8 + 3.0).exp();
        let mut attributes = Attributes::new();
        attributes.set("http.route", route);
        attributes.set("http.response.status_code", status as i64);
        if severity_number == Severity::ERROR {
            attributes.set("exception.type", "TimeoutError");
            attributes.set("exception.message", "upstream did not answer in 2 s");
        }
        let body: Value = if roll.is_multiple_of(7) {
            let mut m = Attributes::new();
            m.set("route", route);
            m.set("duration_ms", duration_ms);
            m.set("status", status as i64);
            Value::Map(Arc::new(m))
        } else {
            format!("{route} answered {status} in {duration_ms:.1} ms").into()
        };
        let traced = self.rng.below(2) == 0;
        LogRecord {
            time_unix_ns: now_ns,
            observed_time_unix_ns: now_ns,
            severity_number,
            severity_text: Some(text.into()),
            body: Some(body),
            attributes,
            flags: u32::from(traced),
            trace_id: traced.then(|| {
                let (a, b) = (self.rng.nonzero_u64(), self.rng.next_u64());
                TraceId((u128::from(a) << 64 | u128::from(b)).to_be_bytes())
            }),
            span_id: traced.then(|| SpanId(self.rng.nonzero_u64().to_be_bytes())),
            scope: Some(Arc::clone(&self.scope)),
            ..LogRecord::default()
        }
    }
}
