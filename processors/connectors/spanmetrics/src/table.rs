//! The series table: per resource, one series per distinct (span name, kind, status,
//! dimensions), found with one hash probe a span and no allocation unless the series is new;
//! and the calls and duration metrics a flush makes of it.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;
use oxeye_api::metrics::{Exemplar, Histogram, HistogramPoint, Number, NumberPoint, Sum};
use oxeye_api::{
    Attributes, Batch, Metric, MetricData, Resource, Scope, Span, SpanKind, StatusCode,
    Temporality, Value,
};

use crate::config::{SpanMetricsConfig, Unit};

/// Dimensions beyond the default four, at most (checked in the config): a span's values are
/// gathered on the stack.
pub const MAX_DIMENSIONS: usize = 16;

/// What the config says a series is and what a flush makes of it.
struct Spec {
    calls: Arc<str>,
    duration: Arc<str>,
    unit: Unit,
    bounds: Arc<[f64]>,
    histogram: bool,
    dims: Vec<(Arc<str>, Option<Value>)>,
    service: bool,
    name: bool,
    kind: bool,
    status: bool,
    temporality: Temporality,
    exemplars: usize,
    limit: usize,
    /// A cumulative series with no span for this long is dropped (0: never).
    expiration_ns: u64,
    scope: Arc<Scope>,
}

struct Series {
    name: Arc<str>,
    kind: SpanKind,
    status: StatusCode,
    dims: Box<[Option<Value>]>,
    /// When the series (cumulative) or its current interval (delta) started.
    start_ns: u64,
    /// When its last span was counted.
    updated_ns: u64,
    count: u64,
    sum: f64,
    buckets: Box<[u64]>,
    exemplars: Vec<Exemplar>,
    /// The series past the cardinality limit (no dimensions of its own).
    overflow: bool,
}

/// The series of one resource.
struct Group {
    resource: Arc<Resource>,
    hash: u64,
    service: Option<Value>,
    series: Vec<Series>,
    index: HashTable<u32>,
    /// Spans of series past the cardinality limit, as one series.
    overflow: Option<Series>,
}

/// Every series, by resource.
pub struct Table {
    spec: Spec,
    hasher: foldhash::fast::RandomState,
    groups: Vec<Group>,
    by_resource: HashTable<u32>,
    /// Series in all groups (the overflow ones aside).
    series: usize,
    /// Spans counted since the last flush: what is lost if the connector is abandoned.
    pub since_flush: u64,
    /// Spans folded into an overflow series, in all.
    pub overflowed: u64,
    last_flush_ns: u64,
}

fn kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "SPAN_KIND_SERVER",
        SpanKind::Client => "SPAN_KIND_CLIENT",
        SpanKind::Producer => "SPAN_KIND_PRODUCER",
        SpanKind::Consumer => "SPAN_KIND_CONSUMER",
        SpanKind::Unspecified => "SPAN_KIND_UNSPECIFIED",
        _ => "SPAN_KIND_INTERNAL",
    }
}

fn status_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::Ok => "STATUS_CODE_OK",
        StatusCode::Error => "STATUS_CODE_ERROR",
        _ => "STATUS_CODE_UNSET",
    }
}

/// Feeds a value to a hash: scalars and strings by content; lists and maps by kind only (the
/// equality check tells them apart).
fn hash_value(h: &mut impl Hasher, v: &Value) {
    match v {
        Value::Str(s) => {
            h.write_u8(1);
            h.write(s.as_bytes());
        }
        Value::Int(i) => {
            h.write_u8(2);
            h.write_i64(*i);
        }
        Value::F64(f) => {
            h.write_u8(3);
            h.write_u64(f.to_bits());
        }
        Value::Bool(b) => {
            h.write_u8(4);
            h.write_u8(*b as u8);
        }
        Value::Bytes(b) => {
            h.write_u8(5);
            h.write(b);
        }
        _ => h.write_u8(6),
    }
}

/// Equal as dimension values: floats by bits (in lists and maps too), so a NaN series or
/// resource is found again.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(a, b)| same_value(a, b))
        }
        (Value::Map(x), Value::Map(y)) => same_attributes(x, y),
        _ => a == b,
    }
}

fn same_attributes(a: &Attributes, b: &Attributes) -> bool {
    a.iter().count() == b.iter().count()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

/// A series' hash, from its key.
fn key_hash<'a>(
    hasher: &foldhash::fast::RandomState,
    name: &str,
    kind: SpanKind,
    status: StatusCode,
    dims: impl Iterator<Item = Option<&'a Value>>,
) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(name.as_bytes());
    kind.hash(&mut h);
    status.hash(&mut h);
    for d in dims {
        match d {
            Some(v) => hash_value(&mut h, v),
            None => h.write_u8(0),
        }
    }
    h.finish()
}

fn same_str(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl Table {
    /// An empty table; `bounds` from [`SpanMetricsConfig::bounds`].
    pub fn new(config: &SpanMetricsConfig, bounds: Vec<f64>, now_ns: u64) -> Table {
        let named = |suffix: &str| -> Arc<str> {
            if config.namespace.is_empty() {
                suffix.into()
            } else {
                format!("{}.{suffix}", config.namespace).into()
            }
        };
        let kept = |d: &str| !config.exclude_dimensions.iter().any(|x| x == d);
        Table {
            spec: Spec {
                calls: named("calls"),
                duration: named("duration"),
                unit: config.histogram.unit,
                bounds: bounds.into(),
                histogram: !config.histogram.disable,
                dims: config
                    .dimensions
                    .iter()
                    .map(|d| {
                        (
                            Arc::from(d.name.as_str()),
                            d.default.as_deref().map(Value::from),
                        )
                    })
                    .collect(),
                service: kept("service.name"),
                name: kept("span.name"),
                kind: kept("span.kind"),
                status: kept("status.code"),
                temporality: match config.aggregation_temporality {
                    crate::config::Temporality::Cumulative => Temporality::Cumulative,
                    crate::config::Temporality::Delta => Temporality::Delta,
                },
                exemplars: if config.exemplars.enabled {
                    config.exemplars.max_per_data_point
                } else {
                    0
                },
                limit: config.aggregation_cardinality_limit,
                expiration_ns: config.metrics_expiration.as_nanos() as u64,
                scope: Arc::new(Scope {
                    name: "spanmetricsconnector".into(),
                    ..Scope::default()
                }),
            },
            hasher: foldhash::fast::RandomState::default(),
            groups: Vec::new(),
            by_resource: HashTable::new(),
            series: 0,
            since_flush: 0,
            overflowed: 0,
            last_flush_ns: now_ns,
        }
    }

    /// Series held now (overflow series aside).
    pub fn len(&self) -> usize {
        self.series
    }

    /// The group of `resource`, made if new.
    fn group(&mut self, resource: &Arc<Resource>) -> usize {
        let mut h = self.hasher.build_hasher();
        for (k, v) in resource.attributes.iter() {
            h.write(k.as_bytes());
            hash_value(&mut h, v);
        }
        let hash = h.finish();
        let groups = &self.groups;
        let found = self.by_resource.find(hash, |&i| {
            let g = &groups[i as usize];
            Arc::ptr_eq(&g.resource, resource)
                || same_attributes(&g.resource.attributes, &resource.attributes)
        });
        if let Some(&i) = found {
            return i as usize;
        }
        let i = self.groups.len();
        self.groups.push(Group {
            resource: Arc::clone(resource),
            hash,
            service: resource.attributes.get("service.name").cloned(),
            series: Vec::new(),
            index: HashTable::new(),
            overflow: None,
        });
        let groups = &self.groups;
        self.by_resource
            .insert_unique(hash, i as u32, |&j| groups[j as usize].hash);
        i
    }

    /// Counts the spans of a batch.
    pub fn add(&mut self, resource: &Arc<Resource>, spans: &[Span], now_ns: u64) {
        if spans.is_empty() {
            return;
        }
        let g = self.group(resource);
        let empty: Arc<str> = Arc::from("");
        // What each dimension is when a span does not have it: its resource's value (the same
        // for the whole batch), else the default.
        let fallback: Vec<Option<Value>> = self
            .spec
            .dims
            .iter()
            .map(|(key, default)| resource.attributes.get(key).or(default.as_ref()).cloned())
            .collect();
        for span in spans {
            self.add_span(g, &fallback, span, &empty, now_ns);
        }
        self.since_flush += spans.len() as u64;
    }

    fn add_span(
        &mut self,
        g: usize,
        fallback: &[Option<Value>],
        span: &Span,
        empty: &Arc<str>,
        now_ns: u64,
    ) {
        let spec = &self.spec;
        // The series key; excluded default dimensions take one fixed value.
        let name = if spec.name { &span.name } else { empty };
        let kind = if spec.kind {
            span.kind
        } else {
            SpanKind::Internal
        };
        let status = if spec.status {
            span.status
        } else {
            StatusCode::Unset
        };
        let mut dims: [Option<&Value>; MAX_DIMENSIONS] = [None; MAX_DIMENSIONS];
        for ((slot, (key, _)), fallback) in dims.iter_mut().zip(&spec.dims).zip(fallback) {
            *slot = span.attributes.get(key).or(fallback.as_ref());
        }
        let dims = &dims[..spec.dims.len()];
        let hash = key_hash(&self.hasher, name, kind, status, dims.iter().copied());
        let value = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / spec.unit.ns();
        let group = &mut self.groups[g];
        let list = &group.series;
        let found = group.index.find(hash, |&i| {
            let s = &list[i as usize];
            s.kind == kind
                && s.status == status
                && same_str(&s.name, name)
                && s.dims.iter().zip(dims).all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => same_value(a, b),
                    (None, None) => true,
                    _ => false,
                })
        });
        let new_series = |spec: &Spec| Series {
            name: Arc::clone(name),
            kind,
            status,
            dims: dims.iter().map(|d| d.cloned()).collect(),
            start_ns: now_ns,
            updated_ns: now_ns,
            count: 0,
            sum: 0.0,
            buckets: vec![0; spec.bounds.len() + 1].into(),
            exemplars: Vec::new(),
            overflow: false,
        };
        let series = match found {
            Some(&i) => &mut group.series[i as usize],
            None if spec.limit == 0 || self.series < spec.limit => {
                let i = group.series.len() as u32;
                group.series.push(new_series(spec));
                let list = &group.series;
                let hasher = &self.hasher;
                group.index.insert_unique(hash, i, |&j| {
                    let s = &list[j as usize];
                    key_hash(
                        hasher,
                        &s.name,
                        s.kind,
                        s.status,
                        s.dims.iter().map(Option::as_ref),
                    )
                });
                self.series += 1;
                &mut group.series[i as usize]
            }
            None => {
                self.overflowed += 1;
                group.overflow.get_or_insert_with(|| Series {
                    name: Arc::clone(empty),
                    dims: Box::new([]),
                    overflow: true,
                    ..new_series(spec)
                })
            }
        };
        series.count += 1;
        series.updated_ns = now_ns;
        series.sum += value;
        let bucket = spec.bounds.partition_point(|b| *b < value);
        series.buckets[bucket] += 1;
        if series.exemplars.len() < spec.exemplars {
            series.exemplars.push(Exemplar {
                time_unix_ns: span.end_unix_ns,
                value: Some(Number::F64(value)),
                span_id: Some(span.span_id),
                trace_id: Some(span.trace_id),
                ..Exemplar::default()
            });
        }
    }

    /// The metrics of every series, a batch per resource; a delta table starts afresh.
    pub fn flush(&mut self, now_ns: u64) -> Vec<Batch> {
        let delta = self.spec.temporality == Temporality::Delta;
        if !delta && self.spec.expiration_ns > 0 {
            self.expire(now_ns);
        }
        let spec = &self.spec;
        let mut out = Vec::new();
        for group in &mut self.groups {
            let all = group.series.iter_mut().chain(group.overflow.as_mut());
            let mut calls = Vec::new();
            let mut durations = Vec::new();
            for s in all {
                if s.count == 0 {
                    continue; // a cumulative series always has; a delta one is cleared below
                }
                let attributes = attributes(spec, group.service.as_ref(), s);
                let start = if delta {
                    s.start_ns.max(self.last_flush_ns)
                } else {
                    s.start_ns
                };
                calls.push(NumberPoint {
                    attributes: attributes.clone(),
                    start_unix_ns: start,
                    time_unix_ns: now_ns,
                    value: Some(Number::Int(s.count as i64)),
                    ..NumberPoint::default()
                });
                if spec.histogram {
                    durations.push(HistogramPoint {
                        attributes,
                        start_unix_ns: start,
                        time_unix_ns: now_ns,
                        count: s.count,
                        sum: Some(s.sum),
                        bucket_counts: s.buckets.to_vec(),
                        explicit_bounds: spec.bounds.to_vec(),
                        exemplars: std::mem::take(&mut s.exemplars),
                        ..HistogramPoint::default()
                    });
                } else {
                    s.exemplars.clear();
                }
            }
            if calls.is_empty() {
                continue;
            }
            let metric = |name: &Arc<str>, unit: Option<&str>, data| Metric {
                name: Arc::clone(name),
                unit: unit.map(Arc::from),
                data,
                scope: Some(Arc::clone(&spec.scope)),
                ..Metric::default()
            };
            let mut metrics = vec![metric(
                &spec.calls,
                None,
                MetricData::Sum(Sum {
                    points: calls,
                    temporality: spec.temporality,
                    monotonic: true,
                }),
            )];
            if spec.histogram {
                metrics.push(metric(
                    &spec.duration,
                    Some(spec.unit.as_str()),
                    MetricData::Histogram(Histogram {
                        points: durations,
                        temporality: spec.temporality,
                    }),
                ));
            }
            out.push(Batch::metrics(Arc::clone(&group.resource), metrics));
        }
        if delta {
            // Every series starts afresh (and so does the cardinality count).
            self.groups.clear();
            self.by_resource.clear();
            self.series = 0;
        }
        self.last_flush_ns = now_ns;
        self.since_flush = 0;
        out
    }
}

impl Table {
    /// Drops the cumulative series (and resources) with no span for `metrics_expiration`,
    /// freeing their places under the cardinality limit.
    fn expire(&mut self, now_ns: u64) {
        let ttl = self.spec.expiration_ns;
        let fresh = |updated: u64| now_ns.saturating_sub(updated) <= ttl;
        let hasher = &self.hasher;
        let mut removed = 0;
        for g in &mut self.groups {
            let before = g.series.len();
            g.series.retain(|s| fresh(s.updated_ns));
            if g.overflow.as_ref().is_some_and(|o| !fresh(o.updated_ns)) {
                g.overflow = None;
            }
            if g.series.len() == before {
                continue;
            }
            removed += before - g.series.len();
            let hash = |s: &Series| {
                key_hash(
                    hasher,
                    &s.name,
                    s.kind,
                    s.status,
                    s.dims.iter().map(Option::as_ref),
                )
            };
            g.index.clear();
            let list = &g.series;
            for (i, s) in list.iter().enumerate() {
                g.index
                    .insert_unique(hash(s), i as u32, |&j| hash(&list[j as usize]));
            }
        }
        self.series -= removed;
        if self
            .groups
            .iter()
            .any(|g| g.series.is_empty() && g.overflow.is_none())
        {
            self.groups
                .retain(|g| !g.series.is_empty() || g.overflow.is_some());
            self.by_resource.clear();
            let groups = &self.groups;
            for (i, g) in groups.iter().enumerate() {
                self.by_resource
                    .insert_unique(g.hash, i as u32, |&j| groups[j as usize].hash);
            }
        }
    }
}

/// A series' point attributes: the default dimensions kept, then the configured ones it has;
/// an overflow series has `otel.metric.overflow = true` alone.
fn attributes(spec: &Spec, service: Option<&Value>, s: &Series) -> Attributes {
    let mut a = Attributes::new();
    if s.overflow {
        a.set("otel.metric.overflow", true);
        return a;
    }
    if spec.service {
        if let Some(v) = service {
            a.set("service.name", v.clone());
        }
    }
    if spec.name {
        a.set("span.name", Value::Str(Arc::clone(&s.name)));
    }
    if spec.kind {
        a.set("span.kind", kind_name(s.kind));
    }
    if spec.status {
        a.set("status.code", status_name(s.status));
    }
    for ((key, _), v) in spec.dims.iter().zip(s.dims.iter()) {
        if let Some(v) = v {
            a.set(Arc::clone(key), v.clone());
        }
    }
    a
}
