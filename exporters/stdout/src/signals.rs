//! Metrics and logs as lines: one per data point and one per log record.
//!
//! Text: `metric <name> <Type> value=... k=v` and `log <time> <SEVERITY> <body> k=v`.
//! JSON keys follow the OTLP names: `name`, `type`, `unit`, `temporality`, `monotonic`,
//! `start_time_unix_nano`, `time_unix_nano`, `value` (gauges and sums), `count`, `sum`, `min`,
//! `max`, `bucket_counts`, `explicit_bounds` (histograms), `scale`, `zero_count`, `positive`,
//! `negative` (exponential histograms), `quantiles` (summaries); for logs `time_unix_nano`,
//! `observed_time_unix_nano`, `severity_number`, `severity_text`, `body`, `event_name`,
//! `trace_id`, `span_id`. Attributes follow at the top level, as for spans; the resource's under
//! `resource`.

use oxeye_api::metrics::*;
use oxeye_api::{Attributes, LogRecord, Severity, Value};

use crate::{hex, int, json_attrs, json_str, json_value, key, text_str, text_value};

fn json_f64(out: &mut Vec<u8>, v: f64) {
    json_value(out, &Value::F64(v));
}

fn json_opt_f64(out: &mut Vec<u8>, k: &str, v: Option<f64>) {
    if let Some(v) = v {
        key(out, k);
        json_f64(out, v);
    }
}

fn json_list<T: Copy>(out: &mut Vec<u8>, k: &str, items: &[T], f: impl Fn(&mut Vec<u8>, T)) {
    key(out, k);
    out.push(b'[');
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        f(out, *v);
    }
    out.push(b']');
}

fn number(n: Number) -> Value {
    match n {
        Number::Int(i) => Value::Int(i),
        Number::F64(f) => Value::F64(f),
    }
}

/// The fields every point of `m` shares, opening its line.
fn json_head(out: &mut Vec<u8>, m: &Metric, start: u64, time: u64) {
    out.extend_from_slice(b"{\"signal\":\"metrics\",\"name\":");
    json_str(out, &m.name);
    key(out, "type");
    json_str(out, m.data.type_name());
    if let Some(u) = &m.unit {
        key(out, "unit");
        json_str(out, u);
    }
    if let Some(t) = m.data.temporality() {
        key(out, "temporality");
        json_str(out, t.as_str());
    }
    if let MetricData::Sum(s) = &m.data {
        key(out, "monotonic");
        out.extend_from_slice(if s.monotonic { b"true" } else { b"false" });
    }
    key(out, "start_time_unix_nano");
    int(out, start);
    key(out, "time_unix_nano");
    int(out, time);
}

fn json_tail(out: &mut Vec<u8>, attributes: &Attributes, resource: &Attributes) {
    json_attrs(out, attributes);
    out.extend_from_slice(b",\"resource\":{");
    json_attrs(out, resource);
    out.extend_from_slice(b"}}\n");
}

fn json_buckets(out: &mut Vec<u8>, k: &str, b: &Buckets) {
    key(out, k);
    out.extend_from_slice(b"{\"offset\":");
    int(out, b.offset);
    json_list(out, "bucket_counts", &b.bucket_counts, int);
    out.push(b'}');
}

/// One JSON line per data point of `m`.
pub(crate) fn json_metric(out: &mut Vec<u8>, m: &Metric, resource: &Attributes) {
    match &m.data {
        MetricData::Gauge(points) | MetricData::Sum(Sum { points, .. }) => {
            for p in points {
                json_head(out, m, p.start_unix_ns, p.time_unix_ns);
                key(out, "value");
                match p.value {
                    Some(v) => json_value(out, &number(v)),
                    None => out.extend_from_slice(b"null"),
                }
                json_tail(out, &p.attributes, resource);
            }
        }
        MetricData::Histogram(h) => {
            for p in &h.points {
                json_head(out, m, p.start_unix_ns, p.time_unix_ns);
                key(out, "count");
                int(out, p.count);
                json_opt_f64(out, "sum", p.sum);
                json_opt_f64(out, "min", p.min);
                json_opt_f64(out, "max", p.max);
                json_list(out, "bucket_counts", &p.bucket_counts, int);
                json_list(out, "explicit_bounds", &p.explicit_bounds, json_f64);
                json_tail(out, &p.attributes, resource);
            }
        }
        MetricData::ExponentialHistogram(h) => {
            for p in &h.points {
                json_head(out, m, p.start_unix_ns, p.time_unix_ns);
                key(out, "count");
                int(out, p.count);
                json_opt_f64(out, "sum", p.sum);
                json_opt_f64(out, "min", p.min);
                json_opt_f64(out, "max", p.max);
                key(out, "scale");
                int(out, p.scale);
                key(out, "zero_count");
                int(out, p.zero_count);
                json_buckets(out, "positive", &p.positive);
                json_buckets(out, "negative", &p.negative);
                json_tail(out, &p.attributes, resource);
            }
        }
        MetricData::Summary(points) => {
            for p in points {
                json_head(out, m, p.start_unix_ns, p.time_unix_ns);
                key(out, "count");
                int(out, p.count);
                key(out, "sum");
                json_f64(out, p.sum);
                key(out, "quantiles");
                out.push(b'[');
                for (i, q) in p.quantiles.iter().enumerate() {
                    out.extend_from_slice(if i > 0 { b",{" } else { b"{" });
                    key(out, "quantile");
                    json_f64(out, q.quantile);
                    key(out, "value");
                    json_f64(out, q.value);
                    out.push(b'}');
                }
                out.push(b']');
                json_tail(out, &p.attributes, resource);
            }
        }
        // No point, no line; types this version does not know are skipped too.
        _ => {}
    }
}

fn text_attrs(out: &mut Vec<u8>, attributes: &Attributes) {
    for (k, v) in attributes.iter() {
        out.push(b' ');
        text_str(out, k);
        out.push(b'=');
        text_value(out, v);
    }
    out.push(b'\n');
}

fn text_head(out: &mut Vec<u8>, m: &Metric) {
    out.extend_from_slice(b"metric ");
    text_str(out, &m.name);
    out.push(b' ');
    out.extend_from_slice(m.data.type_name().as_bytes());
}

/// One text line per data point of `m`.
pub(crate) fn text_metric(out: &mut Vec<u8>, m: &Metric) {
    use std::io::Write as _;
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
    match &m.data {
        MetricData::Gauge(points) | MetricData::Sum(Sum { points, .. }) => {
            for p in points {
                text_head(out, m);
                out.extend_from_slice(b" value=");
                match p.value {
                    Some(v) => text_value(out, &number(v)),
                    None => out.push(b'-'),
                }
                text_attrs(out, &p.attributes);
            }
        }
        MetricData::Histogram(h) => {
            for p in &h.points {
                text_head(out, m);
                let _ = write!(
                    out,
                    " count={} sum={} buckets={:?} bounds={:?}",
                    p.count,
                    opt(p.sum),
                    p.bucket_counts,
                    p.explicit_bounds
                );
                text_attrs(out, &p.attributes);
            }
        }
        MetricData::ExponentialHistogram(h) => {
            for p in &h.points {
                text_head(out, m);
                let _ = write!(
                    out,
                    " count={} sum={} scale={} zero={} positive={}:{:?} negative={}:{:?}",
                    p.count,
                    opt(p.sum),
                    p.scale,
                    p.zero_count,
                    p.positive.offset,
                    p.positive.bucket_counts,
                    p.negative.offset,
                    p.negative.bucket_counts
                );
                text_attrs(out, &p.attributes);
            }
        }
        MetricData::Summary(points) => {
            for p in points {
                text_head(out, m);
                let _ = write!(out, " count={} sum={}", p.count, p.sum);
                for q in &p.quantiles {
                    let _ = write!(out, " q{}={}", q.quantile, q.value);
                }
                text_attrs(out, &p.attributes);
            }
        }
        _ => {}
    }
}

/// One JSON line per record.
pub(crate) fn json_log(out: &mut Vec<u8>, l: &LogRecord, resource: &Attributes) {
    out.extend_from_slice(b"{\"signal\":\"logs\",\"time_unix_nano\":");
    int(out, l.time_unix_ns);
    key(out, "observed_time_unix_nano");
    int(out, l.observed_time_unix_ns);
    key(out, "severity_number");
    int(out, l.severity_number);
    if let Some(t) = &l.severity_text {
        key(out, "severity_text");
        json_str(out, t);
    }
    if let Some(body) = &l.body {
        key(out, "body");
        json_value(out, body);
    }
    if let Some(e) = &l.event_name {
        key(out, "event_name");
        json_str(out, e);
    }
    if let Some(t) = l.trace_id {
        key(out, "trace_id");
        out.push(b'"');
        hex(out, &t.0);
        out.push(b'"');
    }
    if let Some(s) = l.span_id {
        key(out, "span_id");
        out.push(b'"');
        hex(out, &s.0);
        out.push(b'"');
    }
    json_tail(out, &l.attributes, resource);
}

/// One text line per record: `log <severity> [event] <body> k=v`.
pub(crate) fn text_log(out: &mut Vec<u8>, l: &LogRecord) {
    out.extend_from_slice(b"log ");
    match (&l.severity_text, Severity::name(l.severity_number)) {
        (Some(t), _) => text_str(out, t),
        (None, Some(n)) => out.extend_from_slice(n.as_bytes()),
        (None, None) => int(out, l.severity_number),
    }
    if let Some(e) = &l.event_name {
        out.push(b' ');
        text_str(out, e);
    }
    if let Some(body) = &l.body {
        out.push(b' ');
        text_value(out, body);
    }
    if let Some(t) = l.trace_id {
        out.extend_from_slice(b" trace=");
        hex(out, &t.0);
    }
    text_attrs(out, &l.attributes);
}

#[cfg(test)]
mod tests {
    use oxeye_api::testing::{log_batch, metric_batch};

    use crate::{Format, Renderer};

    #[test]
    fn one_json_line_per_point_and_record_that_jq_can_read() {
        let mut r = Renderer::new(Format::Json);
        let out = String::from_utf8(r.render(&metric_batch(6)).to_vec()).unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "Gauge",
                "Sum",
                "Sum",
                "Histogram",
                "ExponentialHistogram",
                "Summary"
            ]
        );
        assert_eq!(lines[1]["monotonic"], true);
        assert_eq!(lines[3]["bucket_counts"], serde_json::json!([1, 2, 0]));
        assert_eq!(lines[4]["positive"]["offset"], 3);
        assert_eq!(lines[5]["quantiles"][0]["value"], 1.0);
        assert_eq!(lines[0]["k"], 0);
        let out = String::from_utf8(r.render(&log_batch(2)).to_vec()).unwrap();
        let logs: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(logs[0]["body"], "message 0");
        assert_eq!(logs[0]["severity_number"], 9);
        assert!(logs[0]["trace_id"].is_string() && logs[1].get("trace_id").is_none());
    }

    #[test]
    fn text_lines_name_the_metric_type_and_the_severity() {
        let mut r = Renderer::new(Format::Text);
        let out = String::from_utf8(r.render(&metric_batch(4)).to_vec()).unwrap();
        assert!(out.starts_with("metric gauge Gauge value=0 k=0\n"), "{out}");
        assert!(out.contains("metric histogram Histogram count=3 sum=7.5 buckets=[1, 2, 0]"));
        let out = String::from_utf8(r.render(&log_batch(1)).to_vec()).unwrap();
        assert!(out.starts_with("log INFO message 0 trace=0000"), "{out}");
    }
}
