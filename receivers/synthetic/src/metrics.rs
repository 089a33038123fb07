//! Metric data points shaped like an instrumented HTTP service's: request counters, active
//! requests, request-duration histograms (explicit and exponential) and a memory gauge, over a
//! fixed set of series. One record is one metric with one data point.

use std::sync::Arc;

use oxeye_api::metrics::*;
use oxeye_api::{Attributes, Scope, SpanId, TraceId};

use crate::{Rng, ROUTES};

/// Explicit bounds of the duration histogram: the semantic conventions' advice, in seconds.
const BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

pub(crate) struct MetricGen {
    rng: Rng,
    series: Vec<Attributes>,
    scope: Arc<Scope>,
    names: [Arc<str>; 5],
    started_ns: u64,
    n: u64,
}

impl MetricGen {
    pub(crate) fn new(seed: u64, series: usize) -> Self {
        let mut rng = Rng::new(seed);
        let methods = ["GET", "POST", "PUT", "DELETE"];
        let series = (0..series)
            .map(|i| {
                let mut a = Attributes::new();
                a.set("http.request.method", methods[i % methods.len()]);
                a.set("http.route", ROUTES[(i / methods.len()) % ROUTES.len()]);
                let status = [200i64, 200, 200, 201, 404, 500][rng.below(6) as usize];
                a.set("http.response.status_code", status);
                a.set("server.instance", format!("i-{}", i / 32));
                a
            })
            .collect();
        MetricGen {
            rng,
            series,
            scope: Arc::new(Scope {
                name: "oxeye.synthetic".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Scope::default()
            }),
            names: [
                "http.server.requests".into(),
                "http.server.active_requests".into(),
                "http.server.request.duration".into(),
                "http.server.request.body.size".into(),
                "process.memory.usage".into(),
            ],
            started_ns: 0,
            n: 0,
        }
    }

    pub(crate) fn next(&mut self, now_ns: u64) -> Metric {
        if self.started_ns == 0 {
            self.started_ns = now_ns;
        }
        let i = self.n;
        self.n += 1;
        let attributes = self.series[(i / 5) as usize % self.series.len()].clone();
        let (start_unix_ns, time_unix_ns) = (self.started_ns, now_ns);
        let number = |value: Number| NumberPoint {
            attributes: attributes.clone(),
            start_unix_ns,
            time_unix_ns,
            value: Some(value),
            ..NumberPoint::default()
        };
        let kind = (i % 5) as usize;
        let (unit, data) = match kind {
            0 => (
                "{request}",
                MetricData::Sum(Sum {
                    points: vec![number(Number::Int(i as i64 / 5 + 1))],
                    temporality: Temporality::Cumulative,
                    monotonic: true,
                }),
            ),
            1 => (
                "{request}",
                MetricData::Sum(Sum {
                    points: vec![number(Number::Int(self.rng.below(64) as i64))],
                    temporality: Temporality::Cumulative,
                    monotonic: false,
                }),
            ),
            2 => {
                let mut bucket_counts = vec![0u64; BOUNDS.len() + 1];
                let count = 1 + self.rng.below(50);
                let mut sum = 0.0;
                for _ in 0..count {
                    let v = (self.rng.normal() * 1.2 - 3.5).exp();
                    sum += v;
                    bucket_counts[BOUNDS.partition_point(|b| *b < v)] += 1;
                }
                // One sampled measurement in four keeps its trace as an exemplar.
                let exemplars = (self.rng.below(4) == 0)
                    .then(|| Exemplar {
                        time_unix_ns: now_ns,
                        value: Some(Number::F64(sum / count as f64)),
                        trace_id: Some(TraceId(
                            (u128::from(self.rng.nonzero_u64()) << 64).to_be_bytes(),
                        )),
                        span_id: Some(SpanId(self.rng.nonzero_u64().to_be_bytes())),
                        ..Exemplar::default()
                    })
                    .into_iter()
                    .collect();
                (
                    "s",
                    MetricData::Histogram(Histogram {
                        points: vec![HistogramPoint {
                            attributes,
                            start_unix_ns,
                            time_unix_ns,
                            count,
                            sum: Some(sum),
                            bucket_counts,
                            explicit_bounds: BOUNDS.to_vec(),
                            exemplars,
                            ..HistogramPoint::default()
                        }],
                        temporality: Temporality::Delta,
                    }),
                )
            }
            3 => {
                let counts: Vec<u64> = (0..8).map(|_| self.rng.below(20)).collect();
                let zero_count = self.rng.below(3);
                let count = counts.iter().sum::<u64>() + zero_count;
                (
                    "By",
                    MetricData::ExponentialHistogram(ExponentialHistogram {
                        points: vec![ExponentialHistogramPoint {
                            attributes,
                            start_unix_ns,
                            time_unix_ns,
                            count,
                            sum: Some(count as f64 * 700.0),
                            scale: 3,
                            zero_count,
                            positive: Buckets {
                                offset: 70,
                                bucket_counts: counts,
                            },
                            ..ExponentialHistogramPoint::default()
                        }],
                        temporality: Temporality::Delta,
                    }),
                )
            }
            _ => (
                "By",
                MetricData::Gauge(vec![number(Number::Int(
                    (200 << 20) + self.rng.below(50 << 20) as i64,
                ))]),
            ),
        };
        Metric {
            name: Arc::clone(&self.names[kind]),
            description: None,
            unit: Some(unit.into()),
            data,
            metadata: Attributes::new(),
            scope: Some(Arc::clone(&self.scope)),
        }
    }
}
