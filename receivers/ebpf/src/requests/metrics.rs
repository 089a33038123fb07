//! RED metrics from request spans, with the semantic conventions' names, attributes and bucket
//! boundaries: `http.server.request.duration`, `http.client.request.duration`,
//! `db.client.operation.duration` (Redis commands a process made) and `dns.lookup.duration`.
//! Cumulative explicit-bucket histograms in seconds, as an SDK would export them: the count is
//! the calls, the error rate is the series with `error.type`, the buckets the durations.

use std::collections::HashMap;
use std::sync::Arc;

use oxeye_api::{
    Attributes, Histogram, HistogramPoint, Metric, MetricData, Span, SpanKind, Temporality,
};

/// `http.*.request.duration`'s advised buckets (HTTP metric conventions), seconds.
const HTTP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// `db.client.operation.duration`'s advised buckets (database metric conventions), seconds.
const DB_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// One metric: its name, description, buckets, and the span attributes its points keep.
struct Kind {
    name: &'static str,
    description: &'static str,
    buckets: &'static [f64],
    attributes: &'static [&'static str],
}

const KINDS: [Kind; 4] = [
    Kind {
        name: "http.server.request.duration",
        description: "Duration of HTTP server requests.",
        buckets: &HTTP_BUCKETS,
        attributes: &[
            "http.request.method",
            "http.response.status_code",
            "http.route",
            "url.scheme",
            "network.protocol.version",
            "error.type",
        ],
    },
    Kind {
        name: "http.client.request.duration",
        description: "Duration of HTTP client requests.",
        buckets: &HTTP_BUCKETS,
        attributes: &[
            "http.request.method",
            "http.response.status_code",
            "server.address",
            "server.port",
            "network.protocol.version",
            "error.type",
        ],
    },
    Kind {
        name: "db.client.operation.duration",
        description: "Duration of database client operations.",
        buckets: &DB_BUCKETS,
        attributes: &[
            "db.system.name",
            "db.operation.name",
            "db.response.status_code",
            "server.address",
            "server.port",
            "error.type",
        ],
    },
    Kind {
        name: "dns.lookup.duration",
        description: "Measures the time taken to perform a DNS lookup.",
        buckets: &HTTP_BUCKETS,
        attributes: &["dns.question.name", "error.type"],
    },
];

/// Which metric a request span counts in (Redis commands a server answered count in none:
/// the conventions have no server-side database metric).
fn kind_of(span: &Span) -> Option<usize> {
    let a = &span.attributes;
    let client = span.kind == SpanKind::Client;
    if a.get("http.request.method").is_some() {
        Some(if client { 1 } else { 0 })
    } else if a.get("db.system.name").is_some() {
        client.then_some(2)
    } else if span.name.starts_with("DNS") {
        client.then_some(3)
    } else {
        None
    }
}

#[derive(Default)]
struct Series {
    attributes: Attributes,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    buckets: Vec<u64>,
}

/// The histograms, by metric and attribute values.
pub struct RedMetrics {
    start_unix_ns: u64,
    series: HashMap<(usize, String), Series>,
    max_series: usize,
    /// Spans whose series would have gone past `max_series`: counted in their metric's
    /// `otel.metric.overflow` series instead.
    pub overflowed: u64,
}

impl RedMetrics {
    /// Histograms that start now, at most `max_series` of them (then one overflow series per
    /// metric).
    pub fn new(start_unix_ns: u64, max_series: usize) -> RedMetrics {
        RedMetrics {
            start_unix_ns,
            series: HashMap::new(),
            max_series,
            overflowed: 0,
        }
    }

    /// Counts a finished request span.
    pub fn record(&mut self, span: &Span) {
        let Some(k) = kind_of(span) else { return };
        let kind = &KINDS[k];
        let mut attributes = Attributes::new();
        let mut key = String::new();
        for name in kind.attributes {
            if let Some(v) = span.attributes.get(name) {
                attributes.set(*name, v.clone());
                key.push_str(name);
                key.push('=');
                key.push_str(&v.to_string());
                key.push('\u{1f}');
            }
        }
        if k < 2 {
            attributes.set("network.protocol.name", "http");
        }
        let mut at = (k, key);
        if !self.series.contains_key(&at) && self.series.len() >= self.max_series {
            self.overflowed += 1;
            attributes = Attributes::new();
            attributes.set("otel.metric.overflow", true);
            at.1 = "\u{1f}overflow".into();
        }
        let seconds = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9;
        let s = self.series.entry(at).or_insert_with(|| Series {
            attributes,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            buckets: vec![0; kind.buckets.len() + 1],
            ..Series::default()
        });
        s.count += 1;
        s.sum += seconds;
        s.min = s.min.min(seconds);
        s.max = s.max.max(seconds);
        // A bucket holds the values up to and including its bound.
        let b = kind.buckets.partition_point(|bound| *bound < seconds);
        s.buckets[b] += 1;
    }

    /// Series so far.
    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Every series' totals since the start, as of `now_unix_ns`: one metric per name.
    pub fn collect(&self, now_unix_ns: u64) -> Vec<Metric> {
        let mut points: Vec<Vec<HistogramPoint>> = KINDS.iter().map(|_| Vec::new()).collect();
        for ((k, _), s) in &self.series {
            points[*k].push(HistogramPoint {
                attributes: s.attributes.clone(),
                start_unix_ns: self.start_unix_ns,
                time_unix_ns: now_unix_ns,
                count: s.count,
                sum: Some(s.sum),
                bucket_counts: s.buckets.clone(),
                explicit_bounds: KINDS[*k].buckets.to_vec(),
                min: Some(s.min),
                max: Some(s.max),
                ..HistogramPoint::default()
            });
        }
        KINDS
            .iter()
            .zip(points)
            .filter(|(_, p)| !p.is_empty())
            .map(|(kind, points)| Metric {
                name: kind.name.into(),
                description: Some(kind.description.into()),
                unit: Some(Arc::from("s")),
                data: MetricData::Histogram(Histogram {
                    points,
                    temporality: Temporality::Cumulative,
                }),
                ..Metric::default()
            })
            .collect()
    }
}

/// The value of `key` in a point's attributes, for tests.
#[cfg(test)]
fn point_value<'a>(p: &'a HistogramPoint, key: &str) -> Option<&'a oxeye_api::Value> {
    p.attributes.get(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::Value;

    fn span(kind: SpanKind, name: &str, ms: u64, attrs: &[(&str, Value)]) -> Span {
        let mut a = Attributes::new();
        for (k, v) in attrs {
            a.set(*k, v.clone());
        }
        Span {
            name: name.into(),
            kind,
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_000_000_000 + ms * 1_000_000,
            attributes: a,
            ..Span::default()
        }
    }

    fn histogram(m: &Metric) -> &Histogram {
        match &m.data {
            MetricData::Histogram(h) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn spans_become_the_conventions_histograms() {
        let mut red = RedMetrics::new(5, 100);
        let get = |route: &str, status: i64| {
            vec![
                ("http.request.method", Value::from("GET")),
                ("http.route", Value::from(route)),
                ("http.response.status_code", Value::Int(status)),
                ("url.path", Value::from("/users/1")),
            ]
        };
        red.record(&span(
            SpanKind::Server,
            "GET /u",
            3,
            &get("/users/{id}", 200),
        ));
        red.record(&span(
            SpanKind::Server,
            "GET /u",
            10,
            &get("/users/{id}", 200),
        ));
        red.record(&span(
            SpanKind::Server,
            "GET /u",
            700,
            &get("/users/{id}", 200),
        ));
        let mut failed = get("/users/{id}", 500);
        failed.push(("error.type", Value::from("500")));
        red.record(&span(SpanKind::Server, "GET /u", 1, &failed));
        red.record(&span(
            SpanKind::Client,
            "SET",
            2,
            &[
                ("db.system.name", Value::from("redis")),
                ("db.operation.name", Value::from("SET")),
            ],
        ));
        // A server's Redis span counts in no metric.
        red.record(&span(
            SpanKind::Server,
            "SET",
            2,
            &[("db.system.name", Value::from("redis"))],
        ));
        red.record(&span(
            SpanKind::Client,
            "DNS A",
            4,
            &[("dns.question.name", Value::from("a.test"))],
        ));
        let metrics = red.collect(9);
        let names: Vec<&str> = metrics.iter().map(|m| &*m.name).collect();
        assert_eq!(
            names,
            [
                "http.server.request.duration",
                "db.client.operation.duration",
                "dns.lookup.duration"
            ]
        );
        let http = histogram(&metrics[0]);
        assert_eq!(http.temporality, Temporality::Cumulative);
        assert_eq!(metrics[0].unit.as_deref(), Some("s"));
        let ok = http
            .points
            .iter()
            .find(|p| point_value(p, "error.type").is_none())
            .expect("the 200 series");
        assert_eq!(ok.count, 3);
        assert_eq!(ok.explicit_bounds, HTTP_BUCKETS);
        // 3 ms and 10 ms (a bound belongs to its bucket) and 700 ms.
        assert_eq!(ok.bucket_counts[0], 1);
        assert_eq!(ok.bucket_counts[1], 1);
        assert_eq!(ok.bucket_counts[8], 1);
        assert!((ok.sum.unwrap() - 0.713).abs() < 1e-9);
        assert_eq!((ok.start_unix_ns, ok.time_unix_ns), (5, 9));
        assert!(point_value(ok, "url.path").is_none(), "never the raw path");
        assert_eq!(
            point_value(ok, "network.protocol.name"),
            Some(&Value::from("http"))
        );
        assert_eq!(http.points.len(), 2);
        let db = histogram(&metrics[1]);
        assert_eq!(db.points[0].explicit_bounds, DB_BUCKETS);
        assert_eq!(db.points[0].bucket_counts[1], 1, "2 ms");
    }

    #[test]
    fn series_beyond_the_limit_fold_into_one_overflow_series() {
        let mut red = RedMetrics::new(0, 2);
        for i in 0..5 {
            let name = format!("host{i}.test");
            red.record(&span(
                SpanKind::Client,
                "DNS A",
                1,
                &[("dns.question.name", Value::from(name.as_str()))],
            ));
        }
        assert_eq!(red.series(), 3);
        assert_eq!(red.overflowed, 3);
        let m = red.collect(1);
        let h = histogram(&m[0]);
        let over = h
            .points
            .iter()
            .find(|p| point_value(p, "otel.metric.overflow").is_some())
            .expect("overflow series");
        assert_eq!(over.count, 3);
        assert_eq!(h.points.iter().map(|p| p.count).sum::<u64>(), 5);
    }
}
