//! OTLP metric requests → oxeye metrics, field for field. A metric whose data points OTLP says
//! cannot be right ([`oxeye_api::Metric::check`]) is refused whole and its points reported back
//! as rejected (partial success).

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1 as proto;
use oxeye_api::metrics::*;
use oxeye_api::{Batch, Scope, SpanId, TraceId};

use super::{attributes, optional, resource, scope, Converted, Strings};

fn number(v: Option<proto::number_data_point::Value>) -> Option<Number> {
    v.map(|v| match v {
        proto::number_data_point::Value::AsInt(i) => Number::Int(i),
        proto::number_data_point::Value::AsDouble(f) => Number::F64(f),
    })
}

/// An exemplar's id: empty means none; another length than the id's is refused.
fn id<const N: usize>(bytes: &[u8], what: &str) -> Result<Option<[u8; N]>, String> {
    match bytes.len() {
        0 => Ok(None),
        n if n == N => Ok(bytes.try_into().ok()),
        n => Err(format!("an exemplar's {what} has {n} bytes, not {N} or 0")),
    }
}

fn exemplars(strings: &mut Strings, es: Vec<proto::Exemplar>) -> Result<Vec<Exemplar>, String> {
    es.into_iter()
        .map(|e| {
            Ok(Exemplar {
                filtered_attributes: attributes(strings, e.filtered_attributes),
                time_unix_ns: e.time_unix_nano,
                value: e.value.map(|v| match v {
                    proto::exemplar::Value::AsInt(i) => Number::Int(i),
                    proto::exemplar::Value::AsDouble(f) => Number::F64(f),
                }),
                span_id: id::<8>(&e.span_id, "span_id")?.map(SpanId),
                trace_id: id::<16>(&e.trace_id, "trace_id")?.map(TraceId),
            })
        })
        .collect()
}

fn number_points(
    strings: &mut Strings,
    points: Vec<proto::NumberDataPoint>,
) -> Result<Vec<NumberPoint>, String> {
    points
        .into_iter()
        .map(|p| {
            Ok(NumberPoint {
                attributes: attributes(strings, p.attributes),
                start_unix_ns: p.start_time_unix_nano,
                time_unix_ns: p.time_unix_nano,
                value: number(p.value),
                exemplars: exemplars(strings, p.exemplars)?,
                flags: p.flags,
            })
        })
        .collect()
}

fn buckets(b: Option<proto::exponential_histogram_data_point::Buckets>) -> Buckets {
    let b = b.unwrap_or_default();
    Buckets {
        offset: b.offset,
        bucket_counts: b.bucket_counts,
    }
}

fn data(strings: &mut Strings, d: Option<proto::metric::Data>) -> Result<MetricData, String> {
    use proto::metric::Data;
    Ok(match d {
        None => MetricData::Empty,
        Some(Data::Gauge(g)) => MetricData::Gauge(number_points(strings, g.data_points)?),
        Some(Data::Sum(s)) => MetricData::Sum(Sum {
            points: number_points(strings, s.data_points)?,
            temporality: Temporality::from_i32(s.aggregation_temporality),
            monotonic: s.is_monotonic,
        }),
        Some(Data::Histogram(h)) => MetricData::Histogram(Histogram {
            temporality: Temporality::from_i32(h.aggregation_temporality),
            points: h
                .data_points
                .into_iter()
                .map(|p| {
                    Ok(HistogramPoint {
                        attributes: attributes(strings, p.attributes),
                        start_unix_ns: p.start_time_unix_nano,
                        time_unix_ns: p.time_unix_nano,
                        count: p.count,
                        sum: p.sum,
                        bucket_counts: p.bucket_counts,
                        explicit_bounds: p.explicit_bounds,
                        exemplars: exemplars(strings, p.exemplars)?,
                        flags: p.flags,
                        min: p.min,
                        max: p.max,
                    })
                })
                .collect::<Result<_, String>>()?,
        }),
        Some(Data::ExponentialHistogram(h)) => {
            MetricData::ExponentialHistogram(ExponentialHistogram {
                temporality: Temporality::from_i32(h.aggregation_temporality),
                points: h
                    .data_points
                    .into_iter()
                    .map(|p| {
                        Ok(ExponentialHistogramPoint {
                            attributes: attributes(strings, p.attributes),
                            start_unix_ns: p.start_time_unix_nano,
                            time_unix_ns: p.time_unix_nano,
                            count: p.count,
                            sum: p.sum,
                            scale: p.scale,
                            zero_count: p.zero_count,
                            positive: buckets(p.positive),
                            negative: buckets(p.negative),
                            flags: p.flags,
                            exemplars: exemplars(strings, p.exemplars)?,
                            min: p.min,
                            max: p.max,
                            zero_threshold: p.zero_threshold,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            })
        }
        Some(Data::Summary(s)) => MetricData::Summary(
            s.data_points
                .into_iter()
                .map(|p| SummaryPoint {
                    attributes: attributes(strings, p.attributes),
                    start_unix_ns: p.start_time_unix_nano,
                    time_unix_ns: p.time_unix_nano,
                    count: p.count,
                    sum: p.sum,
                    quantiles: p
                        .quantile_values
                        .into_iter()
                        .map(|q| Quantile {
                            quantile: q.quantile,
                            value: q.value,
                        })
                        .collect(),
                    flags: p.flags,
                })
                .collect(),
        ),
    })
}

/// Data points of a metric as sent (what a refused metric counts as rejected).
fn sent_points(m: &proto::Metric) -> u64 {
    use proto::metric::Data;
    (match &m.data {
        None => 0,
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
    }) as u64
}

fn metric(strings: &mut Strings, scope: &Arc<Scope>, m: proto::Metric) -> Result<Metric, String> {
    let metric = Metric {
        name: strings.get(m.name),
        description: optional(m.description),
        unit: optional(m.unit),
        metadata: attributes(strings, m.metadata),
        data: data(strings, m.data)?,
        scope: Some(Arc::clone(scope)),
    };
    metric.check().map_err(|e| e.to_string())?;
    Ok(metric)
}

/// Converts one request; never fails as a whole. `accepted` and `rejected` count data points
/// (what OTLP's partial success reports for metrics).
pub fn request(req: ExportMetricsServiceRequest) -> Converted {
    let mut strings = Strings::default();
    let mut out = Converted::default();
    for rm in req.resource_metrics {
        let res = Arc::new(resource(&mut strings, rm.resource, rm.schema_url));
        let mut metrics = Vec::new();
        for sm in rm.scope_metrics {
            let sc = Arc::new(scope(&mut strings, sm.scope, sm.schema_url));
            metrics.reserve(sm.metrics.len());
            for m in sm.metrics {
                let sent = sent_points(&m);
                match metric(&mut strings, &sc, m) {
                    Ok(m) => metrics.push(m),
                    Err(why) => {
                        out.rejected += sent;
                        out.first_error.get_or_insert(why);
                    }
                }
            }
        }
        if !metrics.is_empty() {
            let batch = Batch::metrics(res, metrics);
            out.accepted += batch.len() as u64;
            out.batches.push(batch);
        }
    }
    out
}
