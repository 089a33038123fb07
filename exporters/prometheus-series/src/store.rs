//! The series a scrape shows, kept as the `prometheus` crate's families so that a scrape is
//! one pass of its text encoder over them (no copy of 100 000 series a scrape): one series per
//! Prometheus name and label set, updated in place by every point (cumulative points replace,
//! delta points add up), expired when not updated for `metric_expiration`. With
//! `track_updates`, it also notes which series each batch updated, for remote write to send.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use oxeye_api::metrics::{HistogramPoint, NumberPoint, SummaryPoint, FLAG_NO_RECORDED_VALUE};
use oxeye_api::{Attributes, Metric, MetricData, Resource, Temporality, Value};
use prometheus::proto;

use crate::names::{self, Shape};

type Labels = Vec<(String, String)>;
/// Attributes as labels before they are merged: (label name, original key, value).
type Raw = Vec<(String, String, String)>;
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What was not shown, and why; read after each batch.
#[derive(Debug, Default, PartialEq)]
pub struct Refused {
    /// Exponential histogram points: the text format has no way to show them.
    pub unsupported: u64,
    /// Points whose name is taken by a metric of another type.
    pub collisions: u64,
}

/// Settings the store follows.
pub struct Settings {
    pub namespace: String,
    pub const_labels: Labels,
    pub resource_labels: bool,
    pub suffixes: bool,
    pub expiration: Duration,
    /// Note the series each [`Store::add`] updates, for [`Store::drain_updated`].
    pub track_updates: bool,
}

/// One family's series: the rendered protos, and beside them, at the same index, their label
/// sets and when they were last updated.
struct Family {
    shape: Shape,
    index: Map<Labels, usize>,
    keys: Vec<Labels>,
    updated: Vec<Instant>,
    /// Time of the last point, Unix ms.
    times: Vec<i64>,
    /// In `Store::fresh` already.
    noted: Vec<bool>,
    /// Points (of the batches' records) set into it since the last drain.
    points: Vec<u64>,
}

/// A series a batch updated, from [`Store::drain_updated`].
pub struct Updated<'a> {
    /// Its family: name, type.
    pub family: &'a proto::MetricFamily,
    /// Its labels and values.
    pub series: &'a proto::Metric,
    /// The time of its last point, Unix ms (0: the point gave none).
    pub time_ms: i64,
    /// The records (points) it took since the last drain.
    pub points: u64,
}

/// Every series.
pub struct Store {
    settings: Settings,
    /// What a scrape encodes, `target_info` among them.
    protos: Vec<proto::MetricFamily>,
    /// Name → position in `protos` and its series.
    families: Map<String, usize>,
    meta: Vec<Family>,
    /// Series updated since the last drain: (family, series), with `track_updates`.
    fresh: Vec<(usize, usize)>,
}

/// Attribute labels merged and sorted: attributes whose names sanitize to one label have their
/// values joined with `;` in the order of their original keys, as the specification says; then
/// `overrides` (`job`, `instance`, const labels) replace any label of their name.
fn merged(mut raw: Raw, overrides: &Labels) -> Labels {
    raw.sort();
    let mut out: Labels = Vec::with_capacity(raw.len() + overrides.len());
    for (k, _, v) in raw {
        match out.last_mut() {
            Some((lk, lv)) if *lk == k => {
                lv.push(';');
                lv.push_str(&v);
            }
            _ => out.push((k, v)),
        }
    }
    for (k, v) in overrides {
        match out.iter_mut().find(|(lk, _)| lk == k) {
            Some(l) => l.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out.sort();
    out
}

fn push_attributes(raw: &mut Raw, attributes: &Attributes) {
    for (k, v) in attributes.iter() {
        raw.push((names::label(k), k.to_string(), v.to_string()));
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

/// A point's value, to set into a series or add to it.
enum Sample {
    Number(f64),
    Histogram(proto::Histogram),
    Summary(proto::Summary),
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

/// The time of a metric's latest point, Unix ns.
fn latest_time(m: &Metric) -> u64 {
    let t = match &m.data {
        MetricData::Gauge(p) => p.iter().map(|p| p.time_unix_ns).max(),
        MetricData::Sum(s) => s.points.iter().map(|p| p.time_unix_ns).max(),
        MetricData::Histogram(h) => h.points.iter().map(|p| p.time_unix_ns).max(),
        MetricData::Summary(p) => p.iter().map(|p| p.time_unix_ns).max(),
        MetricData::ExponentialHistogram(h) => h.points.iter().map(|p| p.time_unix_ns).max(),
        _ => None,
    };
    t.unwrap_or(0)
}

fn histogram(p: &HistogramPoint) -> Sample {
    let mut h = proto::Histogram::default();
    h.set_sample_count(p.count);
    h.set_sample_sum(p.sum.unwrap_or(0.0));
    let mut cumulative = 0;
    h.set_bucket(
        p.explicit_bounds
            .iter()
            .zip(&p.bucket_counts)
            .map(|(le, n)| {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*le);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect(),
    );
    Sample::Histogram(h)
}

fn summary(p: &SummaryPoint) -> Sample {
    let mut s = proto::Summary::default();
    s.set_sample_count(p.count);
    s.set_sample_sum(p.sum);
    s.set_quantile(
        p.quantiles
            .iter()
            .map(|q| {
                let mut x = proto::Quantile::default();
                x.set_quantile(q.quantile);
                x.set_value(q.value);
                x
            })
            .collect(),
    );
    Sample::Summary(s)
}

/// Sets `sample` into `m` (a delta adds to what it holds: histograms with the same bounds
/// bucket by bucket, else it replaces).
fn apply(m: &mut proto::Metric, shape: Shape, sample: Sample, delta: bool) {
    match sample {
        Sample::Number(v) => {
            if shape == Shape::Counter {
                let v = if delta {
                    m.get_counter().get_value() + v
                } else {
                    v
                };
                let mut c = proto::Counter::default();
                c.set_value(v);
                m.set_counter(c);
            } else {
                let v = if delta {
                    m.get_gauge().get_value() + v
                } else {
                    v
                };
                let mut g = proto::Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
        }
        Sample::Histogram(mut h) => {
            let old = m.get_histogram();
            let same_bounds = old.get_bucket().len() == h.get_bucket().len()
                && old
                    .get_bucket()
                    .iter()
                    .zip(h.get_bucket())
                    .all(|(a, b)| a.upper_bound() == b.upper_bound());
            if delta && same_bounds {
                h.set_sample_count(h.get_sample_count() + old.get_sample_count());
                h.set_sample_sum(h.get_sample_sum() + old.get_sample_sum());
                let buckets = h
                    .get_bucket()
                    .iter()
                    .zip(old.get_bucket())
                    .map(|(new, old)| {
                        let mut b = new.clone();
                        b.set_cumulative_count(new.cumulative_count() + old.cumulative_count());
                        b
                    })
                    .collect();
                h.set_bucket(buckets);
            }
            m.set_histogram(h);
        }
        Sample::Summary(s) => m.set_summary(s),
    }
}

fn label_pairs(labels: &Labels) -> Vec<proto::LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(k.clone());
            l.set_value(v.clone());
            l
        })
        .collect()
}

impl Store {
    pub fn new(settings: Settings) -> Store {
        Store {
            settings,
            protos: Vec::new(),
            families: Map::default(),
            meta: Vec::new(),
            fresh: Vec::new(),
        }
    }

    /// Whether it holds no series.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Series held now (all families, `target_info` aside).
    pub fn len(&self) -> usize {
        self.protos
            .iter()
            .zip(&self.meta)
            .filter(|(f, _)| f.name() != "target_info")
            .map(|(_, m)| m.keys.len())
            .sum()
    }

    /// The family `name`, made if new; `None` if it has another shape.
    fn family(&mut self, name: String, help: &str, shape: Shape) -> Option<usize> {
        if let Some(&i) = self.families.get(&name) {
            return (self.meta[i].shape == shape).then_some(i);
        }
        let mut f = proto::MetricFamily::default();
        f.set_name(name.clone());
        f.set_help(help.to_string());
        f.set_field_type(match shape {
            Shape::Counter => proto::MetricType::COUNTER,
            Shape::Gauge => proto::MetricType::GAUGE,
            Shape::Histogram => proto::MetricType::HISTOGRAM,
            Shape::Summary => proto::MetricType::SUMMARY,
        });
        let i = self.protos.len();
        self.protos.push(f);
        self.meta.push(Family {
            shape,
            index: Map::default(),
            keys: Vec::new(),
            updated: Vec::new(),
            times: Vec::new(),
            noted: Vec::new(),
            points: Vec::new(),
        });
        self.families.insert(name, i);
        Some(i)
    }

    /// Sets a point into series `labels` of family `f`; `time_ns` is the point's time, `points`
    /// how many records it stands for (0 for `target_info`).
    fn put(
        &mut self,
        f: usize,
        labels: Labels,
        sample: Sample,
        delta: bool,
        at: (Instant, u64, u64),
    ) {
        let (now, time_ns, points) = at;
        let meta = &mut self.meta[f];
        let metrics = self.protos[f].mut_metric();
        let at = match meta.index.get(&labels) {
            Some(&at) => at,
            None => {
                metrics.push(proto::Metric::from_label(label_pairs(&labels)));
                meta.index.insert(labels.clone(), meta.keys.len());
                meta.keys.push(labels);
                meta.updated.push(now);
                meta.times.push(0);
                meta.noted.push(false);
                meta.points.push(0);
                meta.keys.len() - 1
            }
        };
        apply(&mut metrics[at], meta.shape, sample, delta);
        meta.updated[at] = now;
        // Never back in time (an older point, or target_info from a batch of older points).
        meta.times[at] = meta.times[at].max((time_ns / 1_000_000) as i64);
        meta.points[at] += points;
        if self.settings.track_updates && !meta.noted[at] {
            meta.noted[at] = true;
            self.fresh.push((f, at));
        }
    }

    /// Hands over each series updated since the last drain and forgets them. Drain after each
    /// [`Store::add`]: [`Store::expire`] moves series, so it forgets what was not drained.
    pub fn drain_updated(&mut self, mut each: impl FnMut(Updated<'_>)) {
        for (f, at) in self.fresh.drain(..) {
            let meta = &mut self.meta[f];
            meta.noted[at] = false;
            each(Updated {
                family: &self.protos[f],
                series: &self.protos[f].get_metric()[at],
                time_ms: meta.times[at],
                points: std::mem::take(&mut meta.points[at]),
            });
        }
    }

    /// Takes one batch's metrics.
    pub fn add(&mut self, resource: &Resource, metrics: &[Metric], now: Instant) -> Refused {
        // target_info's time: the batch's latest point.
        let latest = metrics.iter().map(latest_time).max().unwrap_or(0);
        let mut refused = Refused::default();
        let target = target(resource);
        let identity = |k: &str| {
            matches!(
                k,
                "service.name" | "service.namespace" | "service.instance.id"
            )
        };
        // Resource attributes count as attributes; job, instance and const labels override
        // (on target_info too).
        let mut overrides = target;
        overrides.extend(self.settings.const_labels.iter().cloned());
        if overrides.iter().any(|(k, _)| k == "job" || k == "instance") {
            let mut info = Raw::new();
            for (k, v) in resource.attributes.iter().filter(|(k, _)| !identity(k)) {
                info.push((names::label(k), k.to_string(), v.to_string()));
            }
            if let Some(f) = self.family("target_info".into(), "Target metadata", Shape::Gauge) {
                let info = merged(info, &overrides);
                self.put(f, info, Sample::Number(1.0), false, (now, latest, 0));
            }
        }
        let mut base = Raw::new();
        if self.settings.resource_labels {
            push_attributes(&mut base, &resource.attributes);
        }
        for m in metrics {
            self.add_metric(m, &base, &overrides, now, &mut refused);
        }
        refused
    }

    fn add_metric(
        &mut self,
        m: &Metric,
        base: &Raw,
        overrides: &Labels,
        now: Instant,
        refused: &mut Refused,
    ) {
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
        let help = m.description.as_deref().unwrap_or(&m.name).to_string();
        let Some(f) = self.family(name, &help, shape) else {
            refused.collisions += m.points() as u64;
            return;
        };
        let labels = |attributes: &Attributes| {
            let mut l = base.clone();
            push_attributes(&mut l, attributes);
            merged(l, overrides)
        };
        let mut points = Vec::new();
        match &m.data {
            MetricData::Gauge(p) => number_points(p, |p, v| {
                points.push((labels(&p.attributes), v, p.time_unix_ns))
            }),
            MetricData::Sum(sum) => number_points(&sum.points, |p, v| {
                points.push((labels(&p.attributes), v, p.time_unix_ns))
            }),
            MetricData::Histogram(h) => {
                for p in h
                    .points
                    .iter()
                    .filter(|p| p.flags & FLAG_NO_RECORDED_VALUE == 0)
                {
                    points.push((labels(&p.attributes), histogram(p), p.time_unix_ns));
                }
            }
            MetricData::Summary(ps) => {
                for p in ps.iter().filter(|p| p.flags & FLAG_NO_RECORDED_VALUE == 0) {
                    points.push((labels(&p.attributes), summary(p), p.time_unix_ns));
                }
            }
            _ => {}
        }
        for (l, sample, time_ns) in points {
            self.put(f, l, sample, delta, (now, time_ns, 1));
        }
    }

    /// Forgets series not updated within `metric_expiration`.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.settings.expiration;
        for (f, at) in self.fresh.drain(..) {
            self.meta[f].noted[at] = false;
            self.meta[f].points[at] = 0;
        }
        for (proto, meta) in self.protos.iter_mut().zip(&mut self.meta) {
            let metrics = proto.mut_metric();
            let mut i = 0;
            while i < meta.keys.len() {
                if now.saturating_duration_since(meta.updated[i]) <= ttl {
                    i += 1;
                    continue;
                }
                // Swap the last series into its place.
                let gone = meta.keys.swap_remove(i);
                meta.index.remove(&gone);
                meta.updated.swap_remove(i);
                meta.times.swap_remove(i);
                meta.noted.swap_remove(i);
                meta.points.swap_remove(i);
                metrics.swap_remove(i);
                if let Some(moved) = meta.keys.get(i) {
                    meta.index.insert(moved.clone(), i);
                }
            }
        }
        // A family with no series left goes too: its name is free for a metric of another type.
        if self.meta.iter().any(|m| m.keys.is_empty()) {
            let mut keep = self.meta.iter().map(|m| !m.keys.is_empty());
            self.protos.retain(|_| keep.next().unwrap_or(true));
            self.meta.retain(|m| !m.keys.is_empty());
            self.families = self
                .protos
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name().to_string(), i))
                .collect();
        }
    }

    /// A scrape: every family with a series, in the text format.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        let mut out = String::with_capacity(self.len() * 160);
        // Family by family: the encoder refuses one without series (all expired, or a metric
        // that came without points).
        for f in self.protos.iter().filter(|f| !f.get_metric().is_empty()) {
            if let Err(e) = encoder.encode_utf8(std::slice::from_ref(f), &mut out) {
                out.push_str(&format!("# oxeye: cannot render {}: {e}\n", f.name()));
            }
        }
        out
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
        store.render()
    }

    #[test]
    fn counters_histograms_deltas_and_what_cannot_be_shown() {
        let mut store = Store::new(Settings {
            namespace: String::new(),
            const_labels: vec![("cluster".into(), "eu-1".into())],
            resource_labels: false,
            suffixes: true,
            expiration: Duration::from_secs(60),
            track_updates: false,
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
            r#"target_info{cluster="eu-1",host_name="n1",job="checkout"} 1"#,
        ] {
            assert!(text.contains(line), "{line}\nnot in\n{text}");
        }
        assert!(!text.contains("sizes"), "{text}");
        // Not updated within the expiration: gone.
        store.expire(t0 + Duration::from_secs(61));
        assert_eq!(store.len(), 0);
        assert_eq!(render(&store), "");
    }

    #[test]
    fn job_and_const_labels_override_colliding_attributes_and_empty_families_go() {
        let mut store = Store::new(Settings {
            namespace: String::new(),
            const_labels: vec![("cluster".into(), "eu-1".into())],
            resource_labels: false,
            suffixes: true,
            expiration: Duration::from_secs(60),
            track_updates: false,
        });
        let resource = Resource::new(attrs(&[("service.name", "checkout")]));
        let t0 = Instant::now();
        let gauge = |name: &str, a: Attributes| {
            metric(
                name,
                "",
                MetricData::Gauge(vec![NumberPoint {
                    attributes: a,
                    value: Some(Number::Int(1)),
                    ..NumberPoint::default()
                }]),
            )
        };
        store.add(
            &resource,
            &[gauge(
                "queue",
                attrs(&[
                    ("job", "mine"),
                    ("cluster", "x"),
                    ("a.b", "1"),
                    ("a_b", "2"),
                ]),
            )],
            t0,
        );
        let text = render(&store);
        assert!(
            text.contains(r#"queue{a_b="1;2",cluster="eu-1",job="checkout"} 1"#),
            "{text}"
        );
        // Once its series expire, the name is free for another type.
        store.expire(t0 + Duration::from_secs(61));
        let later = t0 + Duration::from_secs(62);
        let histogram = MetricData::Histogram(Histogram {
            points: vec![HistogramPoint {
                count: 1,
                bucket_counts: vec![1, 0],
                explicit_bounds: vec![1.0],
                ..HistogramPoint::default()
            }],
            temporality: Temporality::Cumulative,
        });
        let refused = store.add(&resource, &[metric("queue", "", histogram)], later);
        assert_eq!(refused, Refused::default(), "`queue` is a histogram now");
        assert!(render(&store).contains("# TYPE queue histogram"));
    }
}
