//! Metrics and logs as Arrow: [`metric_schema`] (one row per data point, every type in one
//! table with the columns that type uses) and [`log_schema`] (one row per log record).

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, FixedSizeBinaryBuilder, Float64Builder, Int32Builder, Int64Builder,
    ListBuilder, MapBuilder, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, SchemaRef};
use oxeye_api::metrics::*;
use oxeye_api::{BoxError, LogRecord, Resource};

use crate::{append_attributes, attributes_field, dict, resource_str, u64_list, with_meta, Dicts};

fn f64_list(name: &str) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
        false,
    )
}

/// The metric schema: one row per data point. `type` says which columns a row uses:
/// `value_int`/`value_double` (gauges, sums), `count`, `sum`, `min`, `max`, `bucket_counts`,
/// `explicit_bounds` (histograms), `scale`, `zero_count`, `positive_*`, `negative_*`
/// (exponential histograms), `quantiles`/`quantile_values` (summaries); the others are null or
/// empty. Exemplars are not carried.
pub fn metric_schema() -> SchemaRef {
    with_meta(
        vec![
            Field::new("name", dict(), false),
            Field::new("type", dict(), false),
            Field::new("unit", dict(), true),
            Field::new("description", dict(), true),
            Field::new("aggregation_temporality", dict(), true),
            Field::new("is_monotonic", DataType::Boolean, true),
            Field::new("start_time_unix_nano", DataType::UInt64, false),
            Field::new("time_unix_nano", DataType::UInt64, false),
            Field::new("value_int", DataType::Int64, true),
            Field::new("value_double", DataType::Float64, true),
            Field::new("count", DataType::UInt64, true),
            Field::new("sum", DataType::Float64, true),
            Field::new("min", DataType::Float64, true),
            Field::new("max", DataType::Float64, true),
            u64_list("bucket_counts"),
            f64_list("explicit_bounds"),
            Field::new("scale", DataType::Int32, true),
            Field::new("zero_count", DataType::UInt64, true),
            Field::new("positive_offset", DataType::Int32, true),
            u64_list("positive_bucket_counts"),
            Field::new("negative_offset", DataType::Int32, true),
            u64_list("negative_bucket_counts"),
            f64_list("quantiles"),
            f64_list("quantile_values"),
            Field::new("flags", DataType::UInt32, false),
            attributes_field(),
            Field::new("scope.name", dict(), true),
            Field::new("service.name", dict(), true),
            Field::new("host.name", dict(), true),
        ],
        "metrics",
    )
}

/// The log schema: one row per record. `body` is the body as text (a map or list body in
/// oxeye's `{k: v}` / `[a, b]` form).
pub fn log_schema() -> SchemaRef {
    with_meta(
        vec![
            Field::new("time_unix_nano", DataType::UInt64, false),
            Field::new("observed_time_unix_nano", DataType::UInt64, false),
            Field::new("severity_number", DataType::Int32, false),
            Field::new("severity_text", dict(), true),
            Field::new("body", DataType::Utf8, true),
            Field::new("event_name", dict(), true),
            Field::new("trace_id", DataType::FixedSizeBinary(16), true),
            Field::new("span_id", DataType::FixedSizeBinary(8), true),
            Field::new("flags", DataType::UInt32, false),
            attributes_field(),
            Field::new("scope.name", dict(), true),
            Field::new("service.name", dict(), true),
            Field::new("host.name", dict(), true),
        ],
        "logs",
    )
}

/// The builders of [`metric_schema`]'s columns that are not dictionaries.
#[derive(Default)]
struct Columns {
    monotonic: BooleanBuilder,
    start: UInt64Builder,
    time: UInt64Builder,
    value_int: Int64Builder,
    value_double: Float64Builder,
    count: UInt64Builder,
    sum: Float64Builder,
    min: Float64Builder,
    max: Float64Builder,
    buckets: ListBuilder<UInt64Builder>,
    bounds: ListBuilder<Float64Builder>,
    scale: Int32Builder,
    zero_count: UInt64Builder,
    positive_offset: Int32Builder,
    positive: ListBuilder<UInt64Builder>,
    negative_offset: Int32Builder,
    negative: ListBuilder<UInt64Builder>,
    quantiles: ListBuilder<Float64Builder>,
    quantile_values: ListBuilder<Float64Builder>,
    flags: UInt32Builder,
}

impl Columns {
    /// The histogram and summary columns of a gauge or sum row: null or empty.
    fn no_distribution(&mut self) {
        self.count.append_null();
        self.sum.append_null();
        self.min.append_null();
        self.max.append_null();
        self.buckets.append(true);
        self.bounds.append(true);
        self.scale.append_null();
        self.zero_count.append_null();
        self.positive_offset.append_null();
        self.positive.append(true);
        self.negative_offset.append_null();
        self.negative.append(true);
        self.quantiles.append(true);
        self.quantile_values.append(true);
    }
}

/// Metrics → a record batch of [`metric_schema`], one row per data point.
pub fn metrics_to_arrow(
    metrics: &[Metric],
    resource: &Resource,
    dicts: &mut Dicts,
) -> Result<RecordBatch, BoxError> {
    let mut name = dicts.builder(0)?;
    let mut kind = dicts.builder(1)?;
    let mut unit = dicts.builder(2)?;
    let mut description = dicts.builder(3)?;
    let mut temporality = dicts.builder(4)?;
    let mut scope = dicts.builder(26)?;
    let mut c = Columns::default();
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut rows = 0;
    for m in metrics {
        let head = |c: &mut Columns, start: u64, time: u64, flags: u32| {
            c.start.append_value(start);
            c.time.append_value(time);
            c.flags.append_value(flags);
            c.monotonic.append_option(match &m.data {
                MetricData::Sum(s) => Some(s.monotonic),
                _ => None,
            });
        };
        let mut points = 0;
        match &m.data {
            MetricData::Gauge(p) | MetricData::Sum(Sum { points: p, .. }) => {
                for p in p {
                    head(&mut c, p.start_unix_ns, p.time_unix_ns, p.flags);
                    let (int, double) = match p.value {
                        Some(Number::Int(i)) => (Some(i), None),
                        Some(Number::F64(f)) => (None, Some(f)),
                        None => (None, None),
                    };
                    c.value_int.append_option(int);
                    c.value_double.append_option(double);
                    c.no_distribution();
                    append_attributes(&mut attrs, &p.attributes)?;
                    points += 1;
                }
            }
            MetricData::Histogram(h) => {
                for p in &h.points {
                    head(&mut c, p.start_unix_ns, p.time_unix_ns, p.flags);
                    c.value_int.append_null();
                    c.value_double.append_null();
                    c.count.append_value(p.count);
                    c.sum.append_option(p.sum);
                    c.min.append_option(p.min);
                    c.max.append_option(p.max);
                    c.buckets.values().append_slice(&p.bucket_counts);
                    c.buckets.append(true);
                    c.bounds.values().append_slice(&p.explicit_bounds);
                    c.bounds.append(true);
                    c.scale.append_null();
                    c.zero_count.append_null();
                    c.positive_offset.append_null();
                    c.positive.append(true);
                    c.negative_offset.append_null();
                    c.negative.append(true);
                    c.quantiles.append(true);
                    c.quantile_values.append(true);
                    append_attributes(&mut attrs, &p.attributes)?;
                    points += 1;
                }
            }
            MetricData::ExponentialHistogram(h) => {
                for p in &h.points {
                    head(&mut c, p.start_unix_ns, p.time_unix_ns, p.flags);
                    c.value_int.append_null();
                    c.value_double.append_null();
                    c.count.append_value(p.count);
                    c.sum.append_option(p.sum);
                    c.min.append_option(p.min);
                    c.max.append_option(p.max);
                    c.buckets.append(true);
                    c.bounds.append(true);
                    c.scale.append_value(p.scale);
                    c.zero_count.append_value(p.zero_count);
                    c.positive_offset.append_value(p.positive.offset);
                    c.positive.values().append_slice(&p.positive.bucket_counts);
                    c.positive.append(true);
                    c.negative_offset.append_value(p.negative.offset);
                    c.negative.values().append_slice(&p.negative.bucket_counts);
                    c.negative.append(true);
                    c.quantiles.append(true);
                    c.quantile_values.append(true);
                    append_attributes(&mut attrs, &p.attributes)?;
                    points += 1;
                }
            }
            MetricData::Summary(ps) => {
                for p in ps {
                    head(&mut c, p.start_unix_ns, p.time_unix_ns, p.flags);
                    c.value_int.append_null();
                    c.value_double.append_null();
                    c.count.append_value(p.count);
                    c.sum.append_value(p.sum);
                    c.min.append_null();
                    c.max.append_null();
                    c.buckets.append(true);
                    c.bounds.append(true);
                    c.scale.append_null();
                    c.zero_count.append_null();
                    c.positive_offset.append_null();
                    c.positive.append(true);
                    c.negative_offset.append_null();
                    c.negative.append(true);
                    for q in &p.quantiles {
                        c.quantiles.values().append_value(q.quantile);
                        c.quantile_values.values().append_value(q.value);
                    }
                    c.quantiles.append(true);
                    c.quantile_values.append(true);
                    append_attributes(&mut attrs, &p.attributes)?;
                    points += 1;
                }
            }
            // No point, no row (an empty metric, or a type this version does not know).
            _ => {}
        }
        for _ in 0..points {
            name.append_value(&*m.name);
            kind.append_value(m.data.type_name());
            unit.append_option(m.unit.as_deref());
            description.append_option(m.description.as_deref());
            temporality.append_option(m.data.temporality().map(|t| t.as_str()));
            scope.append_option(m.scope.as_ref().map(|s| &*s.name));
        }
        rows += points;
    }
    let (service_name, host_name) = (
        resource_str(resource, "service.name"),
        resource_str(resource, "host.name"),
    );
    let columns: Vec<ArrayRef> = vec![
        dicts.finish(0, name)?,
        dicts.finish(1, kind)?,
        dicts.finish(2, unit)?,
        dicts.finish(3, description)?,
        dicts.finish(4, temporality)?,
        Arc::new(c.monotonic.finish()),
        Arc::new(c.start.finish()),
        Arc::new(c.time.finish()),
        Arc::new(c.value_int.finish()),
        Arc::new(c.value_double.finish()),
        Arc::new(c.count.finish()),
        Arc::new(c.sum.finish()),
        Arc::new(c.min.finish()),
        Arc::new(c.max.finish()),
        Arc::new(c.buckets.finish()),
        Arc::new(c.bounds.finish()),
        Arc::new(c.scale.finish()),
        Arc::new(c.zero_count.finish()),
        Arc::new(c.positive_offset.finish()),
        Arc::new(c.positive.finish()),
        Arc::new(c.negative_offset.finish()),
        Arc::new(c.negative.finish()),
        Arc::new(c.quantiles.finish()),
        Arc::new(c.quantile_values.finish()),
        Arc::new(c.flags.finish()),
        Arc::new(attrs.finish()),
        dicts.finish(26, scope)?,
        dicts.constant(27, service_name.as_deref(), rows)?,
        dicts.constant(28, host_name.as_deref(), rows)?,
    ];
    Ok(RecordBatch::try_new(metric_schema(), columns)?)
}

/// Log records → a record batch of [`log_schema`].
pub fn logs_to_arrow(
    logs: &[LogRecord],
    resource: &Resource,
    dicts: &mut Dicts,
) -> Result<RecordBatch, BoxError> {
    let n = logs.len();
    let (mut time, mut observed) = (
        UInt64Builder::with_capacity(n),
        UInt64Builder::with_capacity(n),
    );
    let mut severity = Int32Builder::with_capacity(n);
    let mut severity_text = dicts.builder(3)?;
    let mut body = StringBuilder::new();
    let mut event = dicts.builder(5)?;
    let mut trace = FixedSizeBinaryBuilder::with_capacity(n, 16);
    let mut span = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut flags = UInt32Builder::with_capacity(n);
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut scope = dicts.builder(10)?;
    for l in logs {
        time.append_value(l.time_unix_ns);
        observed.append_value(l.observed_time_unix_ns);
        severity.append_value(l.severity_number);
        severity_text.append_option(l.severity_text.as_deref());
        body.append_option(l.body.as_ref().map(|b| b.to_string()));
        event.append_option(l.event_name.as_deref());
        match l.trace_id {
            Some(t) => trace.append_value(t.0)?,
            None => trace.append_null(),
        }
        match l.span_id {
            Some(s) => span.append_value(s.0)?,
            None => span.append_null(),
        }
        flags.append_value(l.flags);
        append_attributes(&mut attrs, &l.attributes)?;
        scope.append_option(l.scope.as_ref().map(|s| &*s.name));
    }
    let (service_name, host_name) = (
        resource_str(resource, "service.name"),
        resource_str(resource, "host.name"),
    );
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(observed.finish()),
        Arc::new(severity.finish()),
        dicts.finish(3, severity_text)?,
        Arc::new(body.finish()),
        dicts.finish(5, event)?,
        Arc::new(trace.finish()),
        Arc::new(span.finish()),
        Arc::new(flags.finish()),
        Arc::new(attrs.finish()),
        dicts.finish(10, scope)?,
        dicts.constant(11, service_name.as_deref(), n)?,
        dicts.constant(12, host_name.as_deref(), n)?,
    ];
    Ok(RecordBatch::try_new(log_schema(), columns)?)
}
