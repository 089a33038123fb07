//! The connector's config: the Collector's spanmetrics settings (contrib `connector/spanmetricsconnector`,
//! v0.1xx names and defaults), checked with every mistake reported at its field.

use std::time::Duration;

use oxeye_api::{config::parse_duration, ConfigErrors};
use serde::Deserialize;

/// The dimensions every series has, in this order.
pub const DEFAULT_DIMENSIONS: [&str; 4] = ["service.name", "span.name", "span.kind", "status.code"];

/// The Collector's default duration buckets, in milliseconds.
pub const DEFAULT_BUCKETS_MS: [f64; 16] = [
    2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1400.0, 2000.0, 5000.0,
    10_000.0, 15_000.0,
];

/// `connectors.spanmetrics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanMetricsConfig {
    /// Prefix of the metric names (`<namespace>.calls`, `<namespace>.duration`); empty for none.
    pub namespace: String,
    /// Dimensions beyond the default four, from span attributes, else resource attributes.
    pub dimensions: Vec<Dimension>,
    /// Default dimensions left out.
    pub exclude_dimensions: Vec<String>,
    /// The duration histogram.
    pub histogram: HistogramConfig,
    /// `AGGREGATION_TEMPORALITY_CUMULATIVE` (default) or `AGGREGATION_TEMPORALITY_DELTA`.
    pub aggregation_temporality: Temporality,
    /// How often the metrics are emitted (and once more at shutdown).
    #[serde(with = "oxeye_api::config::duration")]
    pub metrics_flush_interval: Duration,
    /// A cumulative series with no span for this long is no longer emitted, and frees its
    /// place under the cardinality limit; `0s`: never.
    #[serde(with = "oxeye_api::config::duration")]
    pub metrics_expiration: Duration,
    /// Series at most; spans of any further series fold into one `otel.metric.overflow` series
    /// per resource, counted. `0`: no limit.
    #[serde(alias = "max_series")]
    pub aggregation_cardinality_limit: usize,
    /// Exemplars (trace and span ids of spans) on the duration histogram.
    pub exemplars: ExemplarsConfig,
}

impl Default for SpanMetricsConfig {
    fn default() -> Self {
        SpanMetricsConfig {
            namespace: "traces.span.metrics".into(),
            dimensions: Vec::new(),
            exclude_dimensions: Vec::new(),
            histogram: HistogramConfig::default(),
            aggregation_temporality: Temporality::Cumulative,
            metrics_flush_interval: Duration::from_secs(60),
            metrics_expiration: Duration::from_secs(300),
            aggregation_cardinality_limit: 10_000,
            exemplars: ExemplarsConfig::default(),
        }
    }
}

/// One configured dimension.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dimension {
    /// Attribute name.
    pub name: String,
    /// Value when neither the span nor its resource has it; none: the dimension is left out.
    #[serde(default)]
    pub default: Option<String>,
}

/// `aggregation_temporality`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Temporality {
    /// Totals since the series started.
    #[serde(rename = "AGGREGATION_TEMPORALITY_CUMULATIVE")]
    Cumulative,
    /// What happened since the last flush.
    #[serde(rename = "AGGREGATION_TEMPORALITY_DELTA")]
    Delta,
}

/// `histogram`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistogramConfig {
    /// No duration histogram, calls only.
    pub disable: bool,
    /// `ms` (default) or `s`.
    pub unit: Unit,
    /// Explicit bucket bounds.
    pub explicit: ExplicitConfig,
}

impl Default for HistogramConfig {
    fn default() -> Self {
        HistogramConfig {
            disable: false,
            unit: Unit::Ms,
            explicit: ExplicitConfig::default(),
        }
    }
}

/// The histogram's unit.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds.
    #[serde(rename = "ms")]
    Ms,
    /// Seconds.
    #[serde(rename = "s")]
    S,
}

impl Unit {
    /// As the metric's unit.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::S => "s",
        }
    }

    /// Nanoseconds in one unit.
    pub fn ns(self) -> f64 {
        match self {
            Unit::Ms => 1e6,
            Unit::S => 1e9,
        }
    }
}

/// `histogram.explicit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExplicitConfig {
    /// Bounds as durations (`2ms`, `1s`); none: the Collector's default buckets.
    pub buckets: Option<Vec<String>>,
}

/// `exemplars`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExemplarsConfig {
    /// Off by default, as in the Collector.
    pub enabled: bool,
    /// Exemplars kept per data point and flush (the first ones).
    pub max_per_data_point: usize,
}

impl Default for ExemplarsConfig {
    fn default() -> Self {
        ExemplarsConfig {
            enabled: false,
            max_per_data_point: 5,
        }
    }
}

impl SpanMetricsConfig {
    /// The histogram's bounds in its unit, increasing.
    pub fn bounds(&self) -> Result<Vec<f64>, ConfigErrors> {
        let unit = self.histogram.unit.ns();
        let Some(buckets) = &self.histogram.explicit.buckets else {
            return Ok(DEFAULT_BUCKETS_MS
                .iter()
                .map(|ms| ms * 1e6 / unit)
                .collect());
        };
        let mut errors = ConfigErrors::new();
        let mut bounds = Vec::with_capacity(buckets.len());
        for (i, b) in buckets.iter().enumerate() {
            let path = format!("histogram.explicit.buckets[{i}]");
            match parse_duration(b) {
                Ok(d) => {
                    let v = d.as_nanos() as f64 / unit;
                    if bounds.last().is_some_and(|last| *last >= v) {
                        errors.push(path, format!("`{b}` is not larger than the bucket before it: bounds must increase"));
                    }
                    bounds.push(v);
                }
                Err(e) => errors.push(path, e.to_string()),
            }
        }
        if errors.0.is_empty() {
            Ok(bounds)
        } else {
            Err(errors)
        }
    }

    /// Every check serde cannot make, all reported at once.
    pub fn check(&self) -> Result<(), ConfigErrors> {
        let mut errors = match self.bounds() {
            Ok(_) => ConfigErrors::new(),
            Err(e) => e,
        };
        if self.metrics_flush_interval.is_zero() {
            errors.push(
                "metrics_flush_interval",
                "must be longer than 0s: metrics are emitted at this interval",
            );
        }
        let mut seen: Vec<&str> = DEFAULT_DIMENSIONS.to_vec();
        for (i, d) in self.dimensions.iter().enumerate() {
            if d.name.is_empty() {
                errors.push(
                    format!("dimensions[{i}].name"),
                    "is empty: name a span or resource attribute",
                );
            } else if seen.contains(&d.name.as_str()) {
                errors.push(
                    format!("dimensions[{i}].name"),
                    format!("duplicate dimension `{}`: {} are always dimensions, and each may be listed once", d.name, DEFAULT_DIMENSIONS.join(", ")),
                );
            }
            seen.push(&d.name);
        }
        for (i, x) in self.exclude_dimensions.iter().enumerate() {
            if !DEFAULT_DIMENSIONS.contains(&x.as_str()) {
                errors.push(
                    format!("exclude_dimensions[{i}]"),
                    format!(
                        "`{x}` is not a default dimension: expected one of {}",
                        DEFAULT_DIMENSIONS.join(", ")
                    ),
                );
            }
        }
        if self.exemplars.enabled && self.exemplars.max_per_data_point == 0 {
            errors.push(
                "exemplars.max_per_data_point",
                "must be at least 1 when exemplars are enabled",
            );
        }
        if errors.0.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
