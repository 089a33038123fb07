//! oxeye metrics → an OTLP metrics request, field for field (the receiver's
//! `convert::metrics` read back gives the same metrics).

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1 as proto;
use oxeye_api::metrics::*;
use oxeye_api::Resource;

use super::{by_resource, by_scope, key_values, opt_str, scope, Resources};

fn number(v: Option<Number>) -> Option<proto::number_data_point::Value> {
    v.map(|v| match v {
        Number::Int(i) => proto::number_data_point::Value::AsInt(i),
        Number::F64(f) => proto::number_data_point::Value::AsDouble(f),
    })
}

fn exemplars(es: &[Exemplar]) -> Vec<proto::Exemplar> {
    es.iter()
        .map(|e| proto::Exemplar {
            filtered_attributes: key_values(&e.filtered_attributes),
            time_unix_nano: e.time_unix_ns,
            span_id: e.span_id.map(|s| s.0.to_vec()).unwrap_or_default(),
            trace_id: e.trace_id.map(|t| t.0.to_vec()).unwrap_or_default(),
            value: e.value.map(|v| match v {
                Number::Int(i) => proto::exemplar::Value::AsInt(i),
                Number::F64(f) => proto::exemplar::Value::AsDouble(f),
            }),
        })
        .collect()
}

fn number_points(points: &[NumberPoint]) -> Vec<proto::NumberDataPoint> {
    points
        .iter()
        .map(|p| proto::NumberDataPoint {
            attributes: key_values(&p.attributes),
            start_time_unix_nano: p.start_unix_ns,
            time_unix_nano: p.time_unix_ns,
            exemplars: exemplars(&p.exemplars),
            flags: p.flags,
            value: number(p.value),
        })
        .collect()
}

/// Buckets are always written, empty or not, as the SDKs write them.
fn buckets(b: &Buckets) -> Option<proto::exponential_histogram_data_point::Buckets> {
    Some(proto::exponential_histogram_data_point::Buckets {
        offset: b.offset,
        bucket_counts: b.bucket_counts.clone(),
    })
}

fn data(d: &MetricData) -> Option<proto::metric::Data> {
    use proto::metric::Data;
    Some(match d {
        MetricData::Gauge(p) => Data::Gauge(proto::Gauge {
            data_points: number_points(p),
        }),
        MetricData::Sum(s) => Data::Sum(proto::Sum {
            data_points: number_points(&s.points),
            aggregation_temporality: s.temporality.as_i32(),
            is_monotonic: s.monotonic,
        }),
        MetricData::Histogram(h) => Data::Histogram(proto::Histogram {
            aggregation_temporality: h.temporality.as_i32(),
            data_points: h
                .points
                .iter()
                .map(|p| proto::HistogramDataPoint {
                    attributes: key_values(&p.attributes),
                    start_time_unix_nano: p.start_unix_ns,
                    time_unix_nano: p.time_unix_ns,
                    count: p.count,
                    sum: p.sum,
                    bucket_counts: p.bucket_counts.clone(),
                    explicit_bounds: p.explicit_bounds.clone(),
                    exemplars: exemplars(&p.exemplars),
                    flags: p.flags,
                    min: p.min,
                    max: p.max,
                })
                .collect(),
        }),
        MetricData::ExponentialHistogram(h) => {
            Data::ExponentialHistogram(proto::ExponentialHistogram {
                aggregation_temporality: h.temporality.as_i32(),
                data_points: h
                    .points
                    .iter()
                    .map(|p| proto::ExponentialHistogramDataPoint {
                        attributes: key_values(&p.attributes),
                        start_time_unix_nano: p.start_unix_ns,
                        time_unix_nano: p.time_unix_ns,
                        count: p.count,
                        sum: p.sum,
                        scale: p.scale,
                        zero_count: p.zero_count,
                        positive: buckets(&p.positive),
                        negative: buckets(&p.negative),
                        flags: p.flags,
                        exemplars: exemplars(&p.exemplars),
                        min: p.min,
                        max: p.max,
                        zero_threshold: p.zero_threshold,
                    })
                    .collect(),
            })
        }
        MetricData::Summary(p) => Data::Summary(proto::Summary {
            data_points: p
                .iter()
                .map(|p| proto::SummaryDataPoint {
                    attributes: key_values(&p.attributes),
                    start_time_unix_nano: p.start_unix_ns,
                    time_unix_nano: p.time_unix_ns,
                    count: p.count,
                    sum: p.sum,
                    quantile_values: p
                        .quantiles
                        .iter()
                        .map(|q| proto::summary_data_point::ValueAtQuantile {
                            quantile: q.quantile,
                            value: q.value,
                        })
                        .collect(),
                    flags: p.flags,
                })
                .collect(),
        }),
        // `MetricData` is non-exhaustive: a type this version cannot write goes without data.
        _ => return None,
    })
}

/// One metric as OTLP.
pub fn metric(m: &Metric) -> proto::Metric {
    proto::Metric {
        name: m.name.to_string(),
        description: opt_str(&m.description),
        unit: opt_str(&m.unit),
        metadata: key_values(&m.metadata),
        data: data(&m.data),
    }
}

/// Builds one metrics request from metrics of possibly several resources.
pub fn request<'a>(
    resources: &mut Resources,
    parts: impl IntoIterator<Item = (&'a Arc<Resource>, &'a [Metric])>,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: by_resource(parts)
            .into_iter()
            .map(|(resource, metrics)| proto::ResourceMetrics {
                resource: Some(resources.get(resource)),
                scope_metrics: by_scope(metrics, |m| m.scope.as_ref())
                    .into_iter()
                    .map(|(sc, metrics)| {
                        let (scope, schema_url) = scope(sc);
                        proto::ScopeMetrics {
                            scope: Some(scope),
                            metrics: metrics.into_iter().map(metric).collect(),
                            schema_url,
                        }
                    })
                    .collect(),
                schema_url: opt_str(&resource.schema_url),
            })
            .collect(),
    }
}
