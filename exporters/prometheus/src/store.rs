//! The series a scrape shows: one per Prometheus name and label set, updated by every point
//! (cumulative points replace, delta points add up), expired when not updated for
//! `metric_expiration`; and the families a scrape renders.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use oxeye_api::metrics::{HistogramPoint, NumberPoint, SummaryPoint, FLAG_NO_RECORDED_VALUE};
use oxeye_api::{Attributes, Metric, MetricData, Resource, Temporality, Value};
use prometheus::proto;

use crate::names::{self, Shape};

type Labels = Vec<(String, String)>;
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What was not shown, and why; read after each batch.
#[derive(Debug, Default, PartialEq)]
pub struct Refused {
    /// Exponential histogram points: the text format has no way to show them.
    pub unsupported: u64,
    /// Points whose name is taken by a metric of another type.
    pub collisions: u64,
}

enum Sample {
    Number(f64),
    Histogram {
        count: u64,
        sum: f64,
        bounds: Vec<f64>,
        /// Per bucket, not cumulative.
        counts: Vec<u64>,
    },
    Summary {
        count: u64,
        sum: f64,
        quantiles: Vec<(f64, f64)>,
    },
}

struct Series {
    sample: Sample,
    updated: Instant,
}

struct Family {
    shape: Shape,
    /// The OTel name it came from (a second name mapping here with another type collides).
    help: String,
    series: Map<Labels, Series>,
}

/// Settings the store follows.
pub struct Settings {
    pub namespace: String,
    pub const_labels: Labels,
    pub resource_labels: bool,
    pub suffixes: bool,
    pub expiration: Duration,
}

/// Every series.
pub struct Store {
    settings: Settings,
    families: Map<String, Family>,
    /// `target_info` per job/instance: the resource attributes.
    targets: Map<Labels, (Labels, Instant)>,
}

fn sorted(mut labels: Labels) -> Labels {
    labels.sort();
    // Attributes that sanitize to one name: their values joined with `;`, as the spec says.
    let mut out: Labels = Vec::with_capacity(labels.len());
    for (k, v) in labels {
        match out.last_mut() {
            Some((lk, lv)) if *lk == k => {
                lv.push(';');
                lv.push_str(&v);
            }
            _ => out.push((k, v)),
        }
    }
    out
}

fn push_attributes(labels: &mut Labels, attributes: &Attributes) {
    for (k, v) in attributes.iter() {
        labels.push((names::label(k), v.to_string()));
    }
}

/// `job` and `instance` from the resource, as the Collector sets them.
fn target(resource: &Resource) -> Labels {
    let get = |k: &str| resource.attributes.get(k).map(Value::to_string);
    let mut t = Vec::new();
    if let Some(name) = get("service.name") {
        let job = match get("service.namespace") {
            Some(ns) => format!("{ns}/{name}"),
            None => name,
        };
        t.push(("job".to_string(), job));
    }
    if let Some(instance) = get("service.instance.id") {
        t.push(("instance".to_string(), instance));
    }
    t
}

impl Store {
    pub fn new(settings: Settings) -> Store {
        Store {
            settings,
            families: Map::default(),
            targets: Map::default(),
        }
    }

    /// Series held now (all families).
    pub fn len(&self) -> usize {
        self.families.values().map(|f| f.series.len()).sum()
    }

    /// Takes one batch's metrics.
    pub fn add(&mut self, resource: &Resource, metrics: &[Metric], now: Instant) -> Refused {
        let mut refused = Refused::default();
        let mut base = target(resource);
        if !base.is_empty() {
            let mut attrs = Vec::new();
            push_attributes(&mut attrs, &resource.attributes);
            self.targets
                .insert(sorted(base.clone()), (sorted(attrs), now));
        }
        if self.settings.resource_labels {
            push_attributes(&mut base, &resource.attributes);
        }
        base.extend(self.settings.const_labels.iter().cloned());
        for m in metrics {
            self.add_metric(m, &base, now, &mut refused);
        }
        refused
    }

    fn add_metric(&mut self, m: &Metric, base: &Labels, now: Instant, refused: &mut Refused) {
        let unit = m.unit.as_deref().unwrap_or("");
        let (shape, delta) = match &m.data {
            MetricData::Gauge(_) => (Shape::Gauge, false),
            MetricData::Sum(s) => (
                if s.monotonic {
                    Shape::Counter
                } else {
                    Shape::Gauge
                },
                s.temporality == Temporality::Delta,
            ),
            MetricData::Histogram(h) => (Shape::Histogram, h.temporality == Temporality::Delta),
            MetricData::Summary(_) => (Shape::Summary, false),
            MetricData::ExponentialHistogram(h) => {
                refused.unsupported += h.points.len() as u64;
                return;
            }
            _ => return,
        };
        let s = &self.settings;
        let name = names::metric(&s.namespace, &m.name, unit, shape, s.suffixes);
        let family = self.families.entry(name).or_insert_with(|| Family {
            shape,
            help: m.description.as_deref().unwrap_or(&m.name).to_string(),
            series: Map::default(),
        });
        if family.shape != shape {
            refused.collisions += m.points() as u64;
            return;
        }
        let labels = |attributes: &Attributes| {
            let mut l = base.clone();
            push_attributes(&mut l, attributes);
            sorted(l)
        };
        let mut put = |labels: Labels, sample: Sample| {
            match family.series.get_mut(&labels) {
                Some(old) if delta => old.sample.add(sample),
                Some(old) => old.sample = sample,
                None => {
                    family.series.insert(
                        labels,
                        Series {
                            sample,
                            updated: now,
                        },
                    );
                    return;
                }
            }
            if let Some(s) = family.series.get_mut(&labels) {
                s.updated = now;
            }
        };
        match &m.data {
            MetricData::Gauge(points) => {
                number_points(points, |p, v| put(labels(&p.attributes), v))
            }
            MetricData::Sum(sum) => {
                number_points(&sum.points, |p, v| put(labels(&p.attributes), v))
            }
            MetricData::Histogram(h) => {
                for p in h
                    .points
                    .iter()
                    .filter(|p| p.flags & FLAG_NO_RECORDED_VALUE == 0)
                {
                    put(labels(&p.attributes), histogram(p));
                }
            }
            MetricData::Summary(points) => {
                for p in points
                    .iter()
                    .filter(|p| p.flags & FLAG_NO_RECORDED_VALUE == 0)
                {
                    put(labels(&p.attributes), summary(p));
                }
            }
            _ => {}
        }
    }

    /// Forgets series (and targets) not updated within `metric_expiration`.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.settings.expiration;
        let fresh = |t: Instant| now.saturating_duration_since(t) <= ttl;
        for f in self.families.values_mut() {
            f.series.retain(|_, s| fresh(s.updated));
        }
        self.families.retain(|_, f| !f.series.is_empty());
        self.targets.retain(|_, (_, t)| fresh(*t));
    }

    /// The families a scrape shows, sorted by name.
    pub fn families(&self) -> Vec<proto::MetricFamily> {
        let mut out: Vec<proto::MetricFamily> = Vec::with_capacity(self.families.len() + 1);
        for (name, f) in &self.families {
            let metrics = f
                .series
                .iter()
                .map(|(labels, s)| s.sample.render(labels))
                .collect();
            out.push(family(name, &f.help, f.shape, metrics));
        }
        if !self.targets.is_empty() {
            let metrics = self
                .targets
                .iter()
                .map(|(target, (attrs, _))| {
                    let mut l = target.clone();
                    l.extend(
                        attrs
                            .iter()
                            .filter(|(k, _)| k != "job" && k != "instance")
                            .cloned(),
                    );
                    Sample::Number(1.0).render(&sorted(l))
                })
                .collect();
            out.push(family(
                "target_info",
                "Target metadata",
                Shape::Gauge,
                metrics,
            ));
        }
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }
}

fn family(
    name: &str,
    help: &str,
    shape: Shape,
    metrics: Vec<proto::Metric>,
) -> proto::MetricFamily {
    let mut f = proto::MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(match shape {
        Shape::Counter => proto::MetricType::COUNTER,
        Shape::Gauge => proto::MetricType::GAUGE,
        Shape::Histogram => proto::MetricType::HISTOGRAM,
        Shape::Summary => proto::MetricType::SUMMARY,
    });
    f.set_metric(metrics);
    f
}

fn number_points(points: &[NumberPoint], mut each: impl FnMut(&NumberPoint, Sample)) {
    for p in points
        .iter()
        .filter(|p| p.flags & FLAG_NO_RECORDED_VALUE == 0)
    {
        if let Some(v) = p.value {
            each(p, Sample::Number(v.as_f64()));
        }
    }
}

fn histogram(p: &HistogramPoint) -> Sample {
    Sample::Histogram {
        count: p.count,
        sum: p.sum.unwrap_or(0.0),
        bounds: p.explicit_bounds.clone(),
        counts: p.bucket_counts.clone(),
    }
}

fn summary(p: &SummaryPoint) -> Sample {
    Sample::Summary {
        count: p.count,
        sum: p.sum,
        quantiles: p.quantiles.iter().map(|q| (q.quantile, q.value)).collect(),
    }
}

impl Sample {
    /// A delta point added to what the series holds (histograms with other bounds replace it).
    fn add(&mut self, other: Sample) {
        match (self, other) {
            (Sample::Number(a), Sample::Number(b)) => *a += b,
            (
                Sample::Histogram {
                    count,
                    sum,
                    bounds,
                    counts,
                },
                Sample::Histogram {
                    count: c,
                    sum: s,
                    bounds: b,
                    counts: n,
                },
            ) if *bounds == b && counts.len() == n.len() => {
                *count += c;
                *sum += s;
                for (x, y) in counts.iter_mut().zip(n) {
                    *x += y;
                }
            }
            (this, other) => *this = other,
        }
    }

    fn render(&self, labels: &Labels) -> proto::Metric {
        let mut m = proto::Metric::from_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = proto::LabelPair::default();
                    l.set_name(k.clone());
                    l.set_value(v.clone());
                    l
                })
                .collect(),
        );
        match self {
            Sample::Number(v) => {
                // The family's type decides which the encoder reads; both carry the value.
                let mut g = proto::Gauge::default();
                g.set_value(*v);
                m.set_gauge(g);
                let mut c = proto::Counter::default();
                c.set_value(*v);
                m.set_counter(c);
            }
            Sample::Histogram {
                count,
                sum,
                bounds,
                counts,
            } => {
                let mut h = proto::Histogram::default();
                h.set_sample_count(*count);
                h.set_sample_sum(*sum);
                let mut cumulative = 0;
                let buckets = bounds
                    .iter()
                    .zip(counts)
                    .map(|(le, n)| {
                        cumulative += n;
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(*le);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect();
                h.set_bucket(buckets);
                m.set_histogram(h);
            }
            Sample::Summary {
                count,
                sum,
                quantiles,
            } => {
                let mut s = proto::Summary::default();
                s.set_sample_count(*count);
                s.set_sample_sum(*sum);
                s.set_quantile(
                    quantiles
                        .iter()
                        .map(|(q, v)| {
                            let mut x = proto::Quantile::default();
                            x.set_quantile(*q);
                            x.set_value(*v);
                            x
                        })
                        .collect(),
                );
                m.set_summary(s);
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::metrics::{ExponentialHistogram, Histogram, Number, Sum};
    use std::sync::Arc;

    fn attrs(kv: &[(&str, &str)]) -> Attributes {
        let mut a = Attributes::new();
        for (k, v) in kv {
            a.set(*k, *v);
        }
        a
    }

    fn metric(name: &str, unit: &str, data: MetricData) -> Metric {
        Metric {
            name: name.into(),
            unit: (!unit.is_empty()).then(|| Arc::from(unit)),
            data,
            ..Metric::default()
        }
    }

    fn sum(v: i64, temporality: Temporality, route: &str) -> MetricData {
        MetricData::Sum(Sum {
            points: vec![NumberPoint {
                attributes: attrs(&[("http.route", route)]),
                value: Some(Number::Int(v)),
                ..NumberPoint::default()
            }],
            temporality,
            monotonic: true,
        })
    }

    fn render(store: &Store) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&store.families())
            .expect("encode")
    }

    #[test]
    fn counters_histograms_deltas_and_what_cannot_be_shown() {
        let mut store = Store::new(Settings {
            namespace: String::new(),
            const_labels: vec![("cluster".into(), "eu-1".into())],
            resource_labels: false,
            suffixes: true,
            expiration: Duration::from_secs(60),
        });
        let resource = Resource::new(attrs(&[("service.name", "checkout"), ("host.name", "n1")]));
        let t0 = Instant::now();
        let histogram = MetricData::Histogram(Histogram {
            points: vec![HistogramPoint {
                attributes: attrs(&[("span.name", "GET /")]),
                count: 6,
                sum: Some(123.5),
                bucket_counts: vec![1, 2, 3],
                explicit_bounds: vec![10.0, 100.0],
                ..HistogramPoint::default()
            }],
            temporality: Temporality::Cumulative,
        });
        let refused = store.add(
            &resource,
            &[
                metric(
                    "traces.span.metrics.calls",
                    "",
                    sum(7, Temporality::Cumulative, "/a"),
                ),
                metric(
                    "http.requests",
                    "{request}",
                    sum(2, Temporality::Delta, "/b"),
                ),
                metric("traces.span.metrics.duration", "ms", histogram),
                metric(
                    "sizes",
                    "By",
                    MetricData::ExponentialHistogram(ExponentialHistogram {
                        points: vec![Default::default(); 3],
                        temporality: Temporality::Delta,
                    }),
                ),
                // Another type under a name taken: refused, counted.
                metric(
                    "http.requests.total",
                    "",
                    MetricData::Gauge(vec![NumberPoint {
                        value: Some(Number::F64(1.0)),
                        ..NumberPoint::default()
                    }]),
                ),
            ],
            t0,
        );
        assert_eq!(
            refused,
            Refused {
                unsupported: 3,
                collisions: 1
            }
        );
        // A second delta adds up; a second cumulative replaces.
        store.add(
            &resource,
            &[
                metric(
                    "http.requests",
                    "{request}",
                    sum(3, Temporality::Delta, "/b"),
                ),
                metric(
                    "traces.span.metrics.calls",
                    "",
                    sum(9, Temporality::Cumulative, "/a"),
                ),
            ],
            t0,
        );
        let text = render(&store);
        for line in [
            "# TYPE traces_span_metrics_calls_total counter",
            r#"traces_span_metrics_calls_total{cluster="eu-1",http_route="/a",job="checkout"} 9"#,
            r#"http_requests_total{cluster="eu-1",http_route="/b",job="checkout"} 5"#,
            "# TYPE traces_span_metrics_duration_milliseconds histogram",
            r#"traces_span_metrics_duration_milliseconds_bucket{cluster="eu-1",job="checkout",span_name="GET /",le="10"} 1"#,
            r#"traces_span_metrics_duration_milliseconds_bucket{cluster="eu-1",job="checkout",span_name="GET /",le="100"} 3"#,
            r#"traces_span_metrics_duration_milliseconds_bucket{cluster="eu-1",job="checkout",span_name="GET /",le="+Inf"} 6"#,
            r#"traces_span_metrics_duration_milliseconds_sum{cluster="eu-1",job="checkout",span_name="GET /"} 123.5"#,
            r#"traces_span_metrics_duration_milliseconds_count{cluster="eu-1",job="checkout",span_name="GET /"} 6"#,
            r#"target_info{host_name="n1",job="checkout",service_name="checkout"} 1"#,
        ] {
            assert!(text.contains(line), "{line}\nnot in\n{text}");
        }
        assert!(!text.contains("sizes"), "{text}");
        // Not updated within the expiration: gone.
        store.expire(t0 + Duration::from_secs(61));
        assert_eq!(store.len(), 0);
        assert_eq!(render(&store), "");
    }
}
