//! `flowmetrics` connector: ends flows pipelines, starts metrics pipelines. Flow records' bytes
//! and packets are summed per series of the configured dimensions into two monotonic sums,
//! `<namespace>.io` (`By`) and `<namespace>.packets` (`{packet}`), emitted every
//! `metrics_flush_interval` and once more at shutdown. Series past
//! `aggregation_cardinality_limit` fold into one `otel.metric.overflow` series, counted.
//! Conservation: the sums over every series (overflow included) equal the records' sums.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use oxeye_api::metrics::{Number, NumberPoint, Sum};
use oxeye_api::{
    Attributes, Batch, BoxError, BuildContext, ConfigErrors, Connector, Factory, Flow, Metric,
    MetricData, Output, Processor, Records, Resource, Scope, Signal, Telemetry, Temporality, Value,
};
use serde::Deserialize;

/// The dimensions a series can have.
pub const DIMENSIONS: [&str; 8] = [
    "network.interface.name",
    "network.io.direction",
    "network.transport",
    "network.type",
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
];

/// `connectors.flowmetrics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowMetricsConfig {
    /// Prefix of the metric names (`<namespace>.io`, `<namespace>.packets`).
    pub namespace: String,
    /// The series' dimensions, from [`DIMENSIONS`].
    pub dimensions: Vec<String>,
    /// `AGGREGATION_TEMPORALITY_CUMULATIVE` (default) or `AGGREGATION_TEMPORALITY_DELTA`.
    pub aggregation_temporality: String,
    /// How often the metrics are emitted (and once more at shutdown).
    #[serde(with = "oxeye_api::config::duration")]
    pub metrics_flush_interval: Duration,
    /// A cumulative series with no record for this long is dropped; `0s`: never.
    #[serde(with = "oxeye_api::config::duration")]
    pub metrics_expiration: Duration,
    /// Series at most; `0`: no limit.
    #[serde(alias = "max_series")]
    pub aggregation_cardinality_limit: usize,
}

impl Default for FlowMetricsConfig {
    fn default() -> Self {
        FlowMetricsConfig {
            namespace: "network.flow".into(),
            dimensions: [
                "network.interface.name",
                "network.io.direction",
                "network.transport",
            ]
            .map(String::from)
            .to_vec(),
            aggregation_temporality: "AGGREGATION_TEMPORALITY_CUMULATIVE".into(),
            metrics_flush_interval: Duration::from_secs(60),
            metrics_expiration: Duration::from_secs(300),
            aggregation_cardinality_limit: 10_000,
        }
    }
}

const CUMULATIVE: &str = "AGGREGATION_TEMPORALITY_CUMULATIVE";
const DELTA: &str = "AGGREGATION_TEMPORALITY_DELTA";

/// One dimension's value in a series key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Dim {
    Str(Arc<str>),
    Static(&'static str),
    Ip(IpAddr),
    Port(u16),
    Absent,
}

impl Dim {
    fn value(&self) -> Option<Value> {
        match self {
            Dim::Str(s) => Some(Value::Str(Arc::clone(s))),
            Dim::Static(s) => Some(Value::from(*s)),
            Dim::Ip(ip) => Some(Value::from(ip.to_string().as_str())),
            Dim::Port(p) => Some(Value::Int(*p as i64)),
            Dim::Absent => None,
        }
    }
}

/// The value of dimension `index` (into [`DIMENSIONS`]) of a flow.
fn dim(f: &Flow, index: usize) -> Dim {
    match index {
        0 => f.interface.clone().map_or(Dim::Absent, Dim::Str),
        1 => Dim::Static(f.direction.as_str()),
        2 => match f.transport.as_str() {
            std::borrow::Cow::Borrowed(s) => Dim::Static(s),
            std::borrow::Cow::Owned(s) => Dim::Str(s.into()),
        },
        3 => Dim::Static(f.network_type()),
        4 => Dim::Ip(f.src_addr),
        5 => Dim::Port(f.src_port),
        6 => Dim::Ip(f.dst_addr),
        _ => Dim::Port(f.dst_port),
    }
}

#[derive(Default)]
struct Counts {
    bytes: u64,
    packets: u64,
    start_ns: u64,
    updated_ns: u64,
}

/// The factory.
pub struct FlowMetricsFactory;

impl Factory for FlowMetricsFactory {
    type Config = FlowMetricsConfig;
    type Component = Box<dyn Connector>;
    const TYPE: &'static str = "flowmetrics";
    const SIGNALS: &'static [Signal] = &[Signal::Flows];
    const OUTPUT_SIGNALS: &'static [Signal] = &[Signal::Metrics];
    const DESCRIPTION: &'static str =
        "connector: byte and packet counters from network flows, per chosen dimensions";
    const DOCS: &'static str = include_str!("../../../../docs/components/connector-flowmetrics.md");

    fn validate(c: &FlowMetricsConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        for (i, d) in c.dimensions.iter().enumerate() {
            if !DIMENSIONS.contains(&d.as_str()) {
                e.push(
                    format!("dimensions[{i}]"),
                    format!(
                        "unknown dimension `{d}`: expected one of {}",
                        DIMENSIONS.join(", ")
                    ),
                );
            } else if c.dimensions[..i].contains(d) {
                e.push(format!("dimensions[{i}]"), format!("`{d}` is listed twice"));
            }
        }
        if c.aggregation_temporality != CUMULATIVE && c.aggregation_temporality != DELTA {
            e.push(
                "aggregation_temporality",
                format!(
                    "`{}`: expected {CUMULATIVE} or {DELTA}",
                    c.aggregation_temporality
                ),
            );
        }
        if c.metrics_flush_interval.is_zero() {
            e.push("metrics_flush_interval", "must be longer than 0s");
        }
        e.into_result()
    }

    fn build(c: FlowMetricsConfig, ctx: BuildContext) -> Result<Box<dyn Connector>, BoxError> {
        let named = |suffix: &str| -> Arc<str> {
            if c.namespace.is_empty() {
                suffix.into()
            } else {
                format!("{}.{suffix}", c.namespace).into()
            }
        };
        let now = unix_ns(SystemTime::now());
        Ok(Box::new(FlowMetrics {
            dims: c
                .dimensions
                .iter()
                .filter_map(|d| DIMENSIONS.iter().position(|x| x == d))
                .collect(),
            io: named("io"),
            packets: named("packets"),
            delta: c.aggregation_temporality == DELTA,
            limit: c.aggregation_cardinality_limit,
            expiration_ns: c.metrics_expiration.as_nanos() as u64,
            every: c.metrics_flush_interval,
            groups: Vec::new(),
            series: 0,
            overflowed: 0,
            since_flush: 0,
            last_flush_ns: now,
            scope: Arc::new(Scope {
                name: "flowmetricsconnector".into(),
                ..Scope::default()
            }),
            source: ctx.id,
            telemetry: ctx.telemetry,
        }))
    }
}

oxeye_api::register!(FlowMetricsFactory);

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

type Series = HashMap<Box<[Dim]>, Counts, foldhash::fast::RandomState>;

/// The series of one resource.
struct Group {
    resource: Arc<Resource>,
    series: Series,
    overflow: Option<Counts>,
}

/// The connector.
pub struct FlowMetrics {
    /// Indexes into [`DIMENSIONS`].
    dims: Vec<usize>,
    io: Arc<str>,
    packets: Arc<str>,
    delta: bool,
    limit: usize,
    /// 0: never.
    expiration_ns: u64,
    every: Duration,
    groups: Vec<Group>,
    series: usize,
    overflowed: u64,
    since_flush: u64,
    last_flush_ns: u64,
    scope: Arc<Scope>,
    source: String,
    telemetry: Telemetry,
}

impl FlowMetrics {
    fn group(&mut self, resource: &Arc<Resource>) -> usize {
        if let Some(i) = self
            .groups
            .iter()
            .position(|g| Arc::ptr_eq(&g.resource, resource) || *g.resource == **resource)
        {
            return i;
        }
        self.groups.push(Group {
            resource: Arc::clone(resource),
            series: Series::default(),
            overflow: None,
        });
        self.groups.len() - 1
    }

    fn add(&mut self, resource: &Arc<Resource>, flows: &[Flow], now_ns: u64) {
        let g = self.group(resource);
        for f in flows {
            let key: Box<[Dim]> = self.dims.iter().map(|&d| dim(f, d)).collect();
            let group = &mut self.groups[g];
            let counts = match group.series.get_mut(&key) {
                Some(c) => c,
                None if self.limit == 0 || self.series < self.limit => {
                    self.series += 1;
                    group.series.entry(key).or_insert(Counts {
                        start_ns: now_ns,
                        ..Counts::default()
                    })
                }
                None => {
                    self.overflowed += 1;
                    group.overflow.get_or_insert(Counts {
                        start_ns: now_ns,
                        ..Counts::default()
                    })
                }
            };
            counts.bytes += f.bytes;
            counts.packets += f.packets;
            counts.updated_ns = now_ns;
        }
        self.since_flush += flows.len() as u64;
    }

    fn emit(&mut self, now: SystemTime, out: &mut Output) {
        let now_ns = unix_ns(now);
        if !self.delta && self.expiration_ns > 0 {
            // Series with no record for `metrics_expiration` go, freeing their places.
            let ttl = self.expiration_ns;
            let fresh = |c: &Counts| now_ns.saturating_sub(c.updated_ns) <= ttl;
            for g in &mut self.groups {
                let before = g.series.len();
                g.series.retain(|_, c| fresh(c));
                self.series -= before - g.series.len();
                if g.overflow.as_ref().is_some_and(|c| !fresh(c)) {
                    g.overflow = None;
                }
            }
            self.groups
                .retain(|g| !g.series.is_empty() || g.overflow.is_some());
        }
        self.telemetry.add_merged(self.since_flush);
        for g in &self.groups {
            let mut io = Vec::new();
            let mut packets = Vec::new();
            let entries = g
                .series
                .iter()
                .map(|(k, c)| (Some(k), c))
                .chain(g.overflow.iter().map(|c| (None, c)));
            for (key, c) in entries {
                let mut attributes = Attributes::new();
                match key {
                    Some(key) => {
                        for (&d, v) in self.dims.iter().zip(key.iter()) {
                            if let Some(v) = v.value() {
                                attributes.set(DIMENSIONS[d], v);
                            }
                        }
                    }
                    None => attributes.set("otel.metric.overflow", true),
                }
                let start = if self.delta {
                    c.start_ns.max(self.last_flush_ns)
                } else {
                    c.start_ns
                };
                let point = |v: u64| NumberPoint {
                    attributes: attributes.clone(),
                    start_unix_ns: start,
                    time_unix_ns: now_ns,
                    value: Some(Number::Int(v as i64)),
                    ..NumberPoint::default()
                };
                io.push(point(c.bytes));
                packets.push(point(c.packets));
            }
            if io.is_empty() {
                continue;
            }
            let temporality = if self.delta {
                Temporality::Delta
            } else {
                Temporality::Cumulative
            };
            let metric = |name: &Arc<str>, unit: &str, points| Metric {
                name: Arc::clone(name),
                unit: Some(unit.into()),
                data: MetricData::Sum(Sum {
                    points,
                    temporality,
                    monotonic: true,
                }),
                scope: Some(Arc::clone(&self.scope)),
                ..Metric::default()
            };
            out.push(Batch::metrics(
                Arc::clone(&g.resource),
                vec![
                    metric(&self.io, "By", io),
                    metric(&self.packets, "{packet}", packets),
                ],
            ));
        }
        if self.delta {
            self.groups.clear();
            self.series = 0;
        }
        self.last_flush_ns = now_ns;
        self.since_flush = 0;
        self.telemetry
            .set_counter("flowmetrics_overflow_flows", &self.source, self.overflowed);
        self.telemetry
            .set_counter("flowmetrics_series", &self.source, self.series as u64);
    }
}

#[async_trait]
impl Processor for FlowMetrics {
    async fn process(&mut self, batch: Arc<Batch>, _out: &mut Output) -> Result<(), BoxError> {
        if let Records::Flows(flows) = &batch.records {
            self.add(&batch.resource, flows, unix_ns(SystemTime::now()));
        }
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(self.every)
    }

    async fn tick(&mut self, now: SystemTime, out: &mut Output) -> Result<(), BoxError> {
        self.emit(now, out);
        Ok(())
    }

    async fn flush(&mut self, out: &mut Output) -> Result<(), BoxError> {
        self.emit(SystemTime::now(), out);
        Ok(())
    }

    fn held(&self) -> u64 {
        self.since_flush
    }
}

impl Connector for FlowMetrics {}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{check, flow_batch, metrics, ProcessorHarness};

    fn total(ms: &[&Metric], name: &str) -> (i64, usize, usize) {
        let mut sum = 0;
        let mut points = 0;
        let mut overflow = 0;
        for m in ms.iter().filter(|m| &*m.name == name) {
            let MetricData::Sum(s) = &m.data else {
                panic!("a sum")
            };
            for p in &s.points {
                let Some(Number::Int(v)) = p.value else {
                    panic!("an int")
                };
                sum += v;
                points += 1;
                overflow += usize::from(p.attributes.get("otel.metric.overflow").is_some());
            }
        }
        (sum, points, overflow)
    }

    #[test]
    fn bytes_and_packets_are_conserved_per_series_and_past_the_limit() {
        // flow_batch: 50 source ports, 1 packet of 100 bytes each.
        let mut h = ProcessorHarness::connector::<FlowMetricsFactory>(
            "dimensions: [source.port, network.transport]\nmax_series: 20",
        )
        .expect("build");
        for _ in 0..10 {
            h.process(flow_batch(1000)).expect("process");
        }
        assert_eq!(h.held(), 10_000);
        let out = h.flush().expect("flush");
        let ms = metrics(&out);
        let (bytes, points, overflow) = total(&ms, "network.flow.io");
        assert_eq!(bytes, 10_000 * 100);
        assert_eq!(
            (points, overflow),
            (21, 1),
            "20 series and the overflow one"
        );
        let (packets, _, _) = total(&ms, "network.flow.packets");
        assert_eq!(packets, 10_000);
        assert_eq!(ms[0].unit.as_deref(), Some("By"));
        let MetricData::Sum(s) = &ms[0].data else {
            panic!()
        };
        let p = s
            .points
            .iter()
            .find(|p| p.attributes.get("source.port").is_some())
            .expect("a series");
        assert_eq!(
            p.attributes.get("network.transport"),
            Some(&Value::from("tcp"))
        );
        assert_eq!(h.telemetry().merged(), 10_000);
    }

    #[test]
    fn delta_starts_afresh_and_config_mistakes_are_reported() {
        let mut h = ProcessorHarness::connector::<FlowMetricsFactory>(
            "aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA",
        )
        .expect("build");
        h.process(flow_batch(10)).expect("process");
        let first = h.tick(SystemTime::now()).expect("tick");
        assert_eq!(total(&metrics(&first), "network.flow.packets").0, 10);
        assert!(h.tick(SystemTime::now()).expect("tick").is_empty());
        let e = check::<FlowMetricsFactory>(
            "dimensions: [source.port, nope, source.port]\naggregation_temporality: DELTA\nmetrics_flush_interval: 0s",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dimensions[1]",
                "dimensions[2]",
                "aggregation_temporality",
                "metrics_flush_interval"
            ]
        );
    }
}
