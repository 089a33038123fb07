//! Metrics: the OTLP metric data model (`opentelemetry/proto/metrics/v1`), field for field, so
//! what an SDK sends leaves oxeye as it came. A [`Metric`] is one named stream of data points
//! from one instrumentation scope; its resource is the batch's.

use std::sync::Arc;

use crate::data::{Attributes, Scope, SpanId, TraceId};

/// One metric: a name, its description and unit, and its data points of one type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metric {
    /// Metric name (`http.server.request.duration`).
    pub name: Arc<str>,
    /// Description, when given.
    pub description: Option<Arc<str>>,
    /// Unit (UCUM, `ms`, `By`, `{request}`), when given.
    pub unit: Option<Arc<str>>,
    /// The data points and their type.
    pub data: MetricData,
    /// Extra metadata about the metric (OTLP `Metric.metadata`), not part of its identity.
    pub metadata: Attributes,
    /// The instrumentation scope that made the metric; `None` for metrics oxeye made.
    pub scope: Option<Arc<Scope>>,
}

impl Metric {
    /// Number of data points.
    pub fn points(&self) -> usize {
        self.data.len()
    }
}

/// A metric's type and its data points (OTLP `Metric.data`).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum MetricData {
    /// No data set (OTLP allows a metric without data; it carries no point).
    #[default]
    Empty,
    /// A value sampled at a time (temperature, queue length).
    Gauge(Vec<NumberPoint>),
    /// A sum over time: a counter when monotonic, an up-down counter when not.
    Sum(Sum),
    /// Explicit-bucket histograms.
    Histogram(Histogram),
    /// Base-2 exponential histograms.
    ExponentialHistogram(ExponentialHistogram),
    /// Quantile summaries (legacy, from Prometheus and StatsD sources).
    Summary(Vec<SummaryPoint>),
}

impl MetricData {
    /// The type's name as the OTTL `metric.type` and the Collector write it (`Gauge`, `Sum`,
    /// `Histogram`, `ExponentialHistogram`, `Summary`, `Empty`).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetricData::Empty => "Empty",
            MetricData::Gauge(_) => "Gauge",
            MetricData::Sum(_) => "Sum",
            MetricData::Histogram(_) => "Histogram",
            MetricData::ExponentialHistogram(_) => "ExponentialHistogram",
            MetricData::Summary(_) => "Summary",
        }
    }

    /// Number of data points.
    pub fn len(&self) -> usize {
        match self {
            MetricData::Empty => 0,
            MetricData::Gauge(p) => p.len(),
            MetricData::Sum(s) => s.points.len(),
            MetricData::Histogram(h) => h.points.len(),
            MetricData::ExponentialHistogram(h) => h.points.len(),
            MetricData::Summary(p) => p.len(),
        }
    }

    /// True when there is no data point.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The temporality of a sum or histogram (`None` for the other types).
    pub fn temporality(&self) -> Option<Temporality> {
        match self {
            MetricData::Sum(s) => Some(s.temporality),
            MetricData::Histogram(h) => Some(h.temporality),
            MetricData::ExponentialHistogram(h) => Some(h.temporality),
            _ => None,
        }
    }

    /// Keeps the data points for which `keep` returns true, whatever the type; returns how many
    /// were removed. `keep` sees each point's attributes.
    pub fn retain_points(&mut self, mut keep: impl FnMut(&mut Attributes) -> bool) -> usize {
        let before = self.len();
        match self {
            MetricData::Empty => {}
            MetricData::Gauge(p) => p.retain_mut(|p| keep(&mut p.attributes)),
            MetricData::Sum(s) => s.points.retain_mut(|p| keep(&mut p.attributes)),
            MetricData::Histogram(h) => h.points.retain_mut(|p| keep(&mut p.attributes)),
            MetricData::ExponentialHistogram(h) => h.points.retain_mut(|p| keep(&mut p.attributes)),
            MetricData::Summary(p) => p.retain_mut(|p| keep(&mut p.attributes)),
        }
        before - self.len()
    }

    /// The attributes of every data point, in order.
    pub fn point_attributes(&self) -> Vec<&Attributes> {
        match self {
            MetricData::Gauge(p) | MetricData::Sum(Sum { points: p, .. }) => {
                p.iter().map(|p| &p.attributes).collect()
            }
            MetricData::Histogram(h) => h.points.iter().map(|p| &p.attributes).collect(),
            MetricData::ExponentialHistogram(h) => h.points.iter().map(|p| &p.attributes).collect(),
            MetricData::Summary(p) => p.iter().map(|p| &p.attributes).collect(),
            MetricData::Empty => Vec::new(),
        }
    }

    /// Calls `f` with the attributes of every data point.
    pub fn for_each_point(&mut self, mut f: impl FnMut(&mut Attributes)) {
        self.retain_points(|a| {
            f(a);
            true
        });
    }
}

/// How the values of a sum or histogram relate over time (OTLP `AggregationTemporality`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Temporality {
    /// Not given (invalid for a sum or histogram in OTLP; kept as it came).
    #[default]
    Unspecified,
    /// Each point covers the time since the previous one.
    Delta,
    /// Each point covers the time since a fixed start.
    Cumulative,
    /// A value this version does not know, kept for the round trip.
    Other(i32),
}

impl Temporality {
    /// From the OTLP enum number.
    pub fn from_i32(n: i32) -> Temporality {
        match n {
            0 => Temporality::Unspecified,
            1 => Temporality::Delta,
            2 => Temporality::Cumulative,
            n => Temporality::Other(n),
        }
    }

    /// The OTLP enum number.
    pub fn as_i32(self) -> i32 {
        match self {
            Temporality::Unspecified => 0,
            Temporality::Delta => 1,
            Temporality::Cumulative => 2,
            Temporality::Other(n) => n,
        }
    }

    /// `Delta`, `Cumulative` or `Unspecified` (OTTL's names).
    pub fn as_str(self) -> &'static str {
        match self {
            Temporality::Delta => "Delta",
            Temporality::Cumulative => "Cumulative",
            _ => "Unspecified",
        }
    }
}

/// A sum's points, temporality and monotonicity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sum {
    /// The data points.
    pub points: Vec<NumberPoint>,
    /// Delta or cumulative.
    pub temporality: Temporality,
    /// True for a counter (never decreases).
    pub monotonic: bool,
}

/// An explicit-bucket histogram's points and temporality.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// The data points.
    pub points: Vec<HistogramPoint>,
    /// Delta or cumulative.
    pub temporality: Temporality,
}

/// An exponential histogram's points and temporality.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExponentialHistogram {
    /// The data points.
    pub points: Vec<ExponentialHistogramPoint>,
    /// Delta or cumulative.
    pub temporality: Temporality,
}

/// A gauge or sum value: integer or float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    /// An integer (OTLP `as_int`).
    Int(i64),
    /// A float (OTLP `as_double`).
    F64(f64),
}

impl Number {
    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::F64(f) => f,
        }
    }
}

/// OTLP `DataPointFlags`: bit 0 says the point holds no recorded value (a stale marker).
pub const FLAG_NO_RECORDED_VALUE: u32 = 1;

/// A gauge or sum data point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NumberPoint {
    /// The point's attributes (its identity within the metric).
    pub attributes: Attributes,
    /// Start of the interval the value covers, Unix ns (0: not given).
    pub start_unix_ns: u64,
    /// When the value was recorded, Unix ns.
    pub time_unix_ns: u64,
    /// The value; `None` when the source sent none.
    pub value: Option<Number>,
    /// Measurements that stand for the value, with their trace context.
    pub exemplars: Vec<Exemplar>,
    /// [`FLAG_NO_RECORDED_VALUE`] and future flags.
    pub flags: u32,
}

/// An explicit-bucket histogram data point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramPoint {
    /// The point's attributes.
    pub attributes: Attributes,
    /// Start of the interval, Unix ns.
    pub start_unix_ns: u64,
    /// End of the interval, Unix ns.
    pub time_unix_ns: u64,
    /// Number of measurements (the sum of `bucket_counts` when they are given).
    pub count: u64,
    /// Sum of the measurements, when known.
    pub sum: Option<f64>,
    /// Measurements per bucket: one more than `explicit_bounds`, or none.
    pub bucket_counts: Vec<u64>,
    /// Upper bounds of the buckets but the last, increasing.
    pub explicit_bounds: Vec<f64>,
    /// Exemplars.
    pub exemplars: Vec<Exemplar>,
    /// [`FLAG_NO_RECORDED_VALUE`] and future flags.
    pub flags: u32,
    /// Smallest measurement, when known.
    pub min: Option<f64>,
    /// Largest measurement, when known.
    pub max: Option<f64>,
}

/// One side (positive or negative) of an exponential histogram's buckets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    /// Index of the first bucket.
    pub offset: i32,
    /// Counts of consecutive buckets from `offset`.
    pub bucket_counts: Vec<u64>,
}

/// An exponential histogram data point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExponentialHistogramPoint {
    /// The point's attributes.
    pub attributes: Attributes,
    /// Start of the interval, Unix ns.
    pub start_unix_ns: u64,
    /// End of the interval, Unix ns.
    pub time_unix_ns: u64,
    /// Number of measurements.
    pub count: u64,
    /// Sum of the measurements, when known.
    pub sum: Option<f64>,
    /// Resolution: bucket bounds are powers of `2^(2^-scale)`.
    pub scale: i32,
    /// Measurements equal to zero (within `zero_threshold`).
    pub zero_count: u64,
    /// Buckets of positive measurements.
    pub positive: Buckets,
    /// Buckets of negative measurements.
    pub negative: Buckets,
    /// [`FLAG_NO_RECORDED_VALUE`] and future flags.
    pub flags: u32,
    /// Exemplars.
    pub exemplars: Vec<Exemplar>,
    /// Smallest measurement, when known.
    pub min: Option<f64>,
    /// Largest measurement, when known.
    pub max: Option<f64>,
    /// Width of the zero bucket.
    pub zero_threshold: f64,
}

/// A quantile of a summary.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quantile {
    /// The quantile, 0.0 to 1.0.
    pub quantile: f64,
    /// Its value.
    pub value: f64,
}

/// A summary data point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SummaryPoint {
    /// The point's attributes.
    pub attributes: Attributes,
    /// Start of the interval, Unix ns.
    pub start_unix_ns: u64,
    /// End of the interval, Unix ns.
    pub time_unix_ns: u64,
    /// Number of measurements.
    pub count: u64,
    /// Sum of the measurements.
    pub sum: f64,
    /// Quantiles, increasing.
    pub quantiles: Vec<Quantile>,
    /// [`FLAG_NO_RECORDED_VALUE`] and future flags.
    pub flags: u32,
}

/// A measurement kept as an example of a data point, with the trace it was taken in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exemplar {
    /// Attributes of the measurement that the point's attributes filtered out.
    pub filtered_attributes: Attributes,
    /// When, Unix ns.
    pub time_unix_ns: u64,
    /// The measured value.
    pub value: Option<Number>,
    /// The span it was taken in, when sampled.
    pub span_id: Option<SpanId>,
    /// That span's trace.
    pub trace_id: Option<TraceId>,
}

/// Why a data point cannot be right (see [`Metric::check`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PointError {
    /// Histogram bucket counts that do not add up to the count.
    #[error(
        "metric `{metric}`: histogram bucket counts add up to {buckets}, its count says {count}"
    )]
    BucketsDoNotAddUp {
        /// Metric name.
        metric: String,
        /// Sum of the bucket counts.
        buckets: u64,
        /// The point's count.
        count: u64,
    },
    /// `bucket_counts` must be one longer than `explicit_bounds` (or empty).
    #[error(
        "metric `{metric}`: {counts} bucket counts for {bounds} explicit bounds (must be one more)"
    )]
    BucketsAndBounds {
        /// Metric name.
        metric: String,
        /// Bucket counts given.
        counts: usize,
        /// Bounds given.
        bounds: usize,
    },
    /// Explicit bounds that do not increase, or are NaN.
    #[error("metric `{metric}`: histogram bounds must increase and be numbers")]
    Bounds {
        /// Metric name.
        metric: String,
    },
    /// A NaN or infinite sum, min or max.
    #[error("metric `{metric}`: the {field} is {value}")]
    NotFinite {
        /// Metric name.
        metric: String,
        /// `sum`, `min`, `max` or `quantile`.
        field: &'static str,
        /// The value.
        value: f64,
    },
}

impl Metric {
    /// Checks what OTLP requires of the data points and a receiver can verify cheaply:
    /// histogram buckets that add up to the count and match their bounds, finite sums, bounds
    /// that increase, quantiles between 0 and 1. A receiver refuses a metric that fails
    /// (partial success, counted), rather than pass on points no backend can read.
    pub fn check(&self) -> Result<(), PointError> {
        let metric = || self.name.to_string();
        let finite = |field: &'static str, v: Option<f64>| match v {
            Some(value) if !value.is_finite() => Err(PointError::NotFinite {
                metric: metric(),
                field,
                value,
            }),
            _ => Ok(()),
        };
        let sum_of = |counts: &[u64]| counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
        match &self.data {
            MetricData::Histogram(h) => {
                for p in &h.points {
                    if !p.bucket_counts.is_empty() {
                        if p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
                            return Err(PointError::BucketsAndBounds {
                                metric: metric(),
                                counts: p.bucket_counts.len(),
                                bounds: p.explicit_bounds.len(),
                            });
                        }
                        let buckets = sum_of(&p.bucket_counts);
                        if buckets != p.count {
                            return Err(PointError::BucketsDoNotAddUp {
                                metric: metric(),
                                buckets,
                                count: p.count,
                            });
                        }
                    }
                    if p.explicit_bounds.windows(2).any(|w| w[0] >= w[1])
                        || p.explicit_bounds.iter().any(|b| b.is_nan())
                    {
                        return Err(PointError::Bounds { metric: metric() });
                    }
                    finite("sum", p.sum)?;
                    finite("min", p.min)?;
                    finite("max", p.max)?;
                }
            }
            MetricData::ExponentialHistogram(h) => {
                for p in &h.points {
                    let buckets = sum_of(&p.positive.bucket_counts)
                        .saturating_add(sum_of(&p.negative.bucket_counts))
                        .saturating_add(p.zero_count);
                    if buckets != p.count {
                        return Err(PointError::BucketsDoNotAddUp {
                            metric: metric(),
                            buckets,
                            count: p.count,
                        });
                    }
                    finite("sum", p.sum)?;
                    finite("min", p.min)?;
                    finite("max", p.max)?;
                }
            }
            MetricData::Summary(points) => {
                for p in points {
                    finite("sum", Some(p.sum))?;
                    for q in &p.quantiles {
                        if !(0.0..=1.0).contains(&q.quantile) {
                            return Err(PointError::NotFinite {
                                metric: metric(),
                                field: "quantile",
                                value: q.quantile,
                            });
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(count: u64, buckets: Vec<u64>, bounds: Vec<f64>, sum: f64) -> Metric {
        Metric {
            name: "latency".into(),
            data: MetricData::Histogram(Histogram {
                points: vec![HistogramPoint {
                    count,
                    sum: Some(sum),
                    bucket_counts: buckets,
                    explicit_bounds: bounds,
                    ..HistogramPoint::default()
                }],
                temporality: Temporality::Delta,
            }),
            ..Metric::default()
        }
    }

    #[test]
    fn check_refuses_what_no_backend_can_read() {
        assert_eq!(histogram(3, vec![1, 2], vec![5.0], 1.0).check(), Ok(()));
        assert_eq!(histogram(3, vec![], vec![], 1.0).check(), Ok(()));
        let e = histogram(4, vec![1, 2], vec![5.0], 1.0)
            .check()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "metric `latency`: histogram bucket counts add up to 3, its count says 4"
        );
        assert!(matches!(
            histogram(3, vec![1, 2], vec![], 1.0).check(),
            Err(PointError::BucketsAndBounds {
                counts: 2,
                bounds: 0,
                ..
            })
        ));
        assert!(matches!(
            histogram(3, vec![1, 1, 1], vec![5.0, 5.0], 1.0).check(),
            Err(PointError::Bounds { .. })
        ));
        assert!(matches!(
            histogram(3, vec![1, 2], vec![5.0], f64::NAN).check(),
            Err(PointError::NotFinite { field: "sum", .. })
        ));
        let exp = Metric {
            data: MetricData::ExponentialHistogram(ExponentialHistogram {
                points: vec![ExponentialHistogramPoint {
                    count: 4,
                    zero_count: 1,
                    positive: Buckets {
                        offset: 0,
                        bucket_counts: vec![1, 1],
                    },
                    negative: Buckets {
                        offset: 0,
                        bucket_counts: vec![1],
                    },
                    ..ExponentialHistogramPoint::default()
                }],
                temporality: Temporality::Delta,
            }),
            ..Metric::default()
        };
        assert_eq!(exp.check(), Ok(()));
        let gauge = Metric {
            data: MetricData::Gauge(vec![NumberPoint {
                value: Some(Number::F64(f64::NAN)),
                ..NumberPoint::default()
            }]),
            ..Metric::default()
        };
        assert_eq!(gauge.check(), Ok(()), "a NaN gauge value is valid OTLP");
    }

    #[test]
    fn points_are_reached_whatever_the_type() {
        let mut m = histogram(3, vec![1, 2], vec![5.0], 1.0);
        m.data.for_each_point(|a| a.set("k", 1i64));
        assert_eq!(m.data.retain_points(|a| a.get("k").is_none()), 1);
        assert!(m.data.is_empty());
        assert_eq!(m.data.type_name(), "Histogram");
        assert_eq!(Temporality::from_i32(7).as_i32(), 7);
    }
}
