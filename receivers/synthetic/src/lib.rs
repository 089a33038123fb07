//! `synthetic` receiver: a seeded, deterministic generator of realistic spans, flows, metrics
//! and logs.
//!
//! Needs no root. The same seed gives the same records (ids, names, durations, tuples, counts);
//! only timestamps follow the wall clock.
//!
//! ```yaml
//! receivers:
//!   synthetic:
//!     seed: 7
//!     spans: {count: 100000, rate: 0}   # rate 0 = as fast as possible
//!     flows: {count: 200000}            # a signal that is not configured is not generated
//!     metrics: {count: 100000, series: 256}
//!     logs: {count: 100000}
//! ```

mod logs;
mod metrics;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use oxeye_api::{
    Attributes, Batch, BoxError, BuildContext, Comm, ConfigErrors, Direction, Factory, Flow,
    Receiver, ReceiverContext, Resource, Signal, Span, SpanId, StatusCode, TaskContext, TcpFlags,
    TraceId, Transport, Value,
};
use serde::Deserialize;

/// Receiver config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Seed of the generator.
    pub seed: u64,
    /// Records per batch.
    pub batch_size: usize,
    /// Generate spans (absent: no spans).
    pub spans: Option<SpanConfig>,
    /// Generate flows (absent: no flows).
    pub flows: Option<FlowConfig>,
    /// Generate metric data points (absent: none).
    pub metrics: Option<MetricConfig>,
    /// Generate log records (absent: none).
    pub logs: Option<LogConfig>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 1,
            batch_size: 1024,
            spans: None,
            flows: None,
            metrics: None,
            logs: None,
        }
    }
}

/// Span generation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanConfig {
    /// Stop after this many spans (absent: run until shutdown).
    pub count: Option<u64>,
    /// Spans per second; 0 = as fast as possible.
    pub rate: u64,
    /// Give spans the attributes an instrumented HTTP service's spans carry (root spans:
    /// `http.request.method`, `http.route`, `http.response.status_code`, `server.address`,
    /// `url.scheme`; child spans: `code.function.name`). Off by default.
    pub attributes: bool,
}

/// Metric generation: one data point per record.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricConfig {
    /// Stop after this many data points (absent: run until shutdown).
    pub count: Option<u64>,
    /// Data points per second; 0 = as fast as possible.
    pub rate: u64,
    /// Distinct attribute sets (series) per metric.
    pub series: usize,
}

impl Default for MetricConfig {
    fn default() -> Self {
        MetricConfig {
            count: None,
            rate: 0,
            series: 64,
        }
    }
}

/// Log generation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Stop after this many records (absent: run until shutdown).
    pub count: Option<u64>,
    /// Records per second; 0 = as fast as possible.
    pub rate: u64,
}

/// Routes of the `attributes` mode, most popular first.
const ROUTES: &[&str] = &[
    "/api/items",
    "/api/items/{id}",
    "/api/orders",
    "/health",
    "/api/users/{id}",
    "/metrics",
    "/api/cart",
    "/static/{file}",
];

/// Shared keys and values of the `attributes` mode: spans hold pointers, not copies.
struct AttrPool {
    method: Arc<str>,
    route: Arc<str>,
    status: Arc<str>,
    server: Arc<str>,
    scheme: Arc<str>,
    function: Arc<str>,
    methods: Vec<Value>,
    routes: Vec<Value>,
    servers: Vec<Value>,
    https: Value,
}

impl AttrPool {
    fn new() -> Self {
        let vals = |v: &[&str]| v.iter().map(|&s| Value::from(s)).collect();
        AttrPool {
            method: "http.request.method".into(),
            route: "http.route".into(),
            status: "http.response.status_code".into(),
            server: "server.address".into(),
            scheme: "url.scheme".into(),
            function: "code.function.name".into(),
            methods: vals(&["GET", "GET", "GET", "POST", "PUT", "DELETE"]),
            routes: vals(ROUTES),
            servers: vals(&["api.shop.internal", "orders.shop.internal"]),
            https: "https".into(),
        }
    }
}

/// Flow generation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Stop after this many flow records (absent: run until shutdown).
    pub count: Option<u64>,
    /// Flow records per second; 0 = as fast as possible.
    pub rate: u64,
    /// Number of distinct 5-tuples.
    pub distinct: usize,
    /// Zipf exponent of tuple popularity.
    pub zipf_exponent: f64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            count: None,
            rate: 0,
            distinct: 1024,
            zipf_exponent: 1.1,
        }
    }
}

/// SplitMix64: tiny, fast, and stable across versions (unlike a crate's default RNG).
#[derive(Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// Standard normal (Box–Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    pub(crate) fn nonzero_u64(&mut self) -> u64 {
        self.next_u64().max(1)
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Names of root spans (user-level operations) and child spans (kernel functions / syscalls).
const ROOT_NAMES: &[&str] = &[
    "handle_request",
    "GET /api/items",
    "POST /api/orders",
    "db.query",
];
const CHILD_NAMES: &[&str] = &[
    "sys_openat",
    "sys_read",
    "sys_write",
    "vfs_read",
    "tcp_sendmsg",
    "tcp_recvmsg",
    "ext4_file_write_iter",
    "futex_wait",
];
/// A small pool of "functions" so stack addresses repeat like real ones.
const KERNEL_BASE: u64 = 0xffff_ffff_8100_0000;
const USER_BASE: u64 = 0x5555_5555_0000;

struct SpanGen {
    rng: Rng,
    roots: Vec<Arc<str>>,
    children: Vec<Arc<str>>,
    kernel_fns: Vec<u64>,
    user_fns: Vec<u64>,
    /// Spans of the current trace not yet handed out (pre-order, so a cut never orphans a child).
    pending: std::collections::VecDeque<Span>,
    attrs: Option<AttrPool>,
}

impl SpanGen {
    fn new(seed: u64, attributes: bool) -> Self {
        let mut rng = Rng::new(seed);
        let kernel_fns = (0..64)
            .map(|_| KERNEL_BASE + rng.below(0x80_0000))
            .collect();
        let user_fns = (0..64).map(|_| USER_BASE + rng.below(0x40_0000)).collect();
        SpanGen {
            rng,
            roots: ROOT_NAMES.iter().map(|&s| Arc::from(s)).collect(),
            children: CHILD_NAMES.iter().map(|&s| Arc::from(s)).collect(),
            kernel_fns,
            user_fns,
            pending: Default::default(),
            attrs: attributes.then(AttrPool::new),
        }
    }

    /// The attributes of the `attributes` mode (empty without it).
    fn attributes(&mut self, root: bool, name: &Arc<str>, error: bool) -> Attributes {
        let Some(p) = &self.attrs else {
            return Attributes::new();
        };
        if !root {
            return [(p.function.clone(), Value::Str(name.clone()))]
                .into_iter()
                .collect();
        }
        // Zipf-like: route i with weight 1/(i+1).
        let mut r = self.rng.unit() * 2.717857;
        let mut route = 0;
        while route + 1 < p.routes.len() {
            r -= 1.0 / (route + 1) as f64;
            if r <= 0.0 {
                break;
            }
            route += 1;
        }
        let status = if error {
            500 + self.rng.below(4) as i64
        } else {
            [200, 200, 200, 201, 204, 304, 404][self.rng.below(7) as usize]
        };
        let method = p.methods[self.rng.below(p.methods.len() as u64) as usize].clone();
        let server = p.servers[self.rng.below(2) as usize].clone();
        [
            (p.method.clone(), method),
            (p.route.clone(), p.routes[route].clone()),
            (p.status.clone(), Value::Int(status)),
            (p.server.clone(), server),
            (p.scheme.clone(), p.https.clone()),
        ]
        .into_iter()
        .collect()
    }

    fn stack(&mut self, kernel: bool) -> Vec<u64> {
        let (pool, depth) = if kernel {
            (&self.kernel_fns, 3 + self.rng.below(4))
        } else {
            (&self.user_fns, 3 + self.rng.below(6))
        };
        let mut stack = Vec::with_capacity(depth as usize);
        for _ in 0..depth {
            let f = pool[self.rng.below(pool.len() as u64) as usize];
            stack.push(f + self.rng.below(0x200));
        }
        stack
    }

    /// Generates one trace ending at `end_ns`: a root with up to two levels of nested children.
    fn trace(&mut self, end_ns: u64) {
        let trace_id = TraceId(
            ((self.rng.nonzero_u64() as u128) << 64 | self.rng.next_u64() as u128).to_be_bytes(),
        );
        // Log-normal root duration, median 200 µs.
        let dur = ((200_000f64).ln() + self.rng.normal())
            .exp()
            .clamp(1_000.0, 1e10) as u64;
        let pid = [1200u32, 1300][self.rng.below(2) as usize];
        let task = TaskContext {
            pid,
            tid: pid + 1 + self.rng.below(4) as u32,
            comm: Comm::new(if pid == 1200 { "api-server" } else { "worker" }),
            cpu: self.rng.below(8) as u32,
        };
        let name = self.roots[self.rng.below(self.roots.len() as u64) as usize].clone();
        self.span(trace_id, None, name, end_ns - dur, dur, task, 0);
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        trace_id: TraceId,
        parent: Option<SpanId>,
        name: Arc<str>,
        start: u64,
        dur: u64,
        task: TaskContext,
        depth: u32,
    ) {
        let span_id = SpanId(self.rng.nonzero_u64().to_be_bytes());
        let kernel = depth > 0;
        let error = self.rng.below(100) == 0;
        let attributes = self.attributes(depth == 0, &name, error);
        let span = Span {
            attributes,
            trace_id,
            span_id,
            parent_span_id: parent,
            name,
            start_unix_ns: start,
            end_unix_ns: start + dur,
            status: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            task: Some(task),
            return_value: kernel.then(|| {
                if error {
                    -2
                } else {
                    self.rng.below(4096) as i64
                }
            }),
            kernel_stack: if kernel { self.stack(true) } else { Vec::new() },
            user_stack: if kernel {
                Vec::new()
            } else {
                self.stack(false)
            },
            ..Span::default()
        };
        self.pending.push_back(span);
        if depth < 2 {
            let n = self.rng.below(4);
            if let Some(slot) = dur.checked_div(n) {
                for i in 0..n {
                    let child_dur = (slot as f64 * (0.2 + 0.7 * self.rng.unit())) as u64;
                    let name =
                        self.children[self.rng.below(self.children.len() as u64) as usize].clone();
                    self.span(
                        trace_id,
                        Some(span_id),
                        name,
                        start + i * slot,
                        child_dur.max(1),
                        task,
                        depth + 1,
                    );
                }
            }
        }
    }

    fn next(&mut self, now_ns: u64) -> Span {
        loop {
            if let Some(span) = self.pending.pop_front() {
                return span;
            }
            self.trace(now_ns);
        }
    }
}

struct Tuple {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    transport: Transport,
    direction: Direction,
}

struct FlowGen {
    rng: Rng,
    tuples: Vec<Tuple>,
    cdf: Vec<f64>,
    interface: Arc<str>,
}

impl FlowGen {
    fn new(seed: u64, cfg: &FlowConfig) -> Self {
        let mut rng = Rng::new(seed);
        let tuples = (0..cfg.distinct)
            .map(|_| {
                let v6 = rng.below(5) == 0;
                let (src, dst): (IpAddr, IpAddr) = if v6 {
                    (
                        Ipv6Addr::new(
                            0xfd00,
                            0,
                            0,
                            1,
                            0,
                            0,
                            rng.below(256) as u16,
                            rng.below(65536) as u16,
                        )
                        .into(),
                        Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, rng.below(64) as u16 + 1).into(),
                    )
                } else {
                    (
                        Ipv4Addr::new(10, 1, rng.below(256) as u8, rng.below(254) as u8 + 1).into(),
                        Ipv4Addr::new(10, 2, 0, rng.below(64) as u8 + 1).into(),
                    )
                };
                let dport = [80u16, 443, 53, 5432, 6379, 8080][rng.below(6) as usize];
                let transport = if dport == 53 {
                    Transport::Udp
                } else {
                    Transport::Tcp
                };
                Tuple {
                    src,
                    dst,
                    sport: 32768 + rng.below(28232) as u16,
                    dport,
                    transport,
                    direction: if rng.below(2) == 0 {
                        Direction::Receive
                    } else {
                        Direction::Transmit
                    },
                }
            })
            .collect();
        let mut cdf = Vec::with_capacity(cfg.distinct);
        let mut acc = 0.0;
        for k in 1..=cfg.distinct {
            acc += 1.0 / (k as f64).powf(cfg.zipf_exponent);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        FlowGen {
            rng,
            tuples,
            cdf,
            interface: Arc::from("eth0"),
        }
    }

    fn next(&mut self, now_ns: u64) -> Flow {
        let u = self.rng.unit();
        let idx = self
            .cdf
            .partition_point(|&c| c < u)
            .min(self.tuples.len() - 1);
        let t = &self.tuples[idx];
        let packets = 1 + self.rng.below(64);
        let bytes = packets * (64 + self.rng.below(1437));
        let tcp_flags = match t.transport {
            Transport::Tcp => {
                let mut f = TcpFlags::ACK | TcpFlags::PSH;
                if self.rng.below(10) == 0 {
                    f |= TcpFlags::SYN;
                }
                if self.rng.below(10) == 0 {
                    f |= TcpFlags::FIN;
                }
                f
            }
            _ => 0,
        };
        let span = self.rng.below(1_000_000_000);
        Flow {
            src_addr: t.src,
            dst_addr: t.dst,
            src_port: t.sport,
            dst_port: t.dport,
            transport: t.transport,
            ether_type: if t.src.is_ipv4() { 0x0800 } else { 0x86dd },
            ifindex: 2,
            interface: Some(self.interface.clone()),
            direction: t.direction,
            packets,
            bytes,
            tcp_flags: TcpFlags(tcp_flags),
            first_seen_unix_ns: now_ns - span,
            last_seen_unix_ns: now_ns,
            window_start_unix_ns: now_ns - 1_000_000_000,
            window_end_unix_ns: now_ns,
            attributes: Default::default(),
        }
    }
}

/// Emits `count` records (or until shutdown) at `rate` per second (0 = unthrottled).
async fn generate<T>(
    ctx: &ReceiverContext,
    resource: &Arc<Resource>,
    batch_size: usize,
    count: Option<u64>,
    rate: u64,
    mut next: impl FnMut(u64) -> T,
    wrap: fn(Arc<Resource>, Vec<T>) -> Batch,
) {
    // Throttled: about 20 batches a second, so the rate is smooth.
    let batch_size = if rate > 0 {
        batch_size.min((rate / 20).max(1) as usize)
    } else {
        batch_size
    };
    let started = Instant::now();
    let mut sent = 0u64;
    let shutdown = ctx.shutdown();
    loop {
        if shutdown.is_triggered() {
            return;
        }
        let n = match count {
            Some(c) if sent >= c => return,
            Some(c) => (c - sent).min(batch_size as u64) as usize,
            None => batch_size,
        };
        let now = now_unix_ns();
        let records: Vec<T> = (0..n).map(|_| next(now)).collect();
        ctx.emit(wrap(resource.clone(), records)).await;
        sent += n as u64;
        if rate > 0 {
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = shutdown.wait() => return,
            }
        }
    }
}

/// The receiver.
pub struct Synthetic {
    config: SyntheticConfig,
    resource: Arc<Resource>,
}

#[async_trait]
impl Receiver for Synthetic {
    async fn run(self: Box<Self>, ctx: ReceiverContext) -> Result<(), BoxError> {
        let cfg = &self.config;
        let spans = async {
            if let Some(s) = cfg.spans.as_ref().filter(|_| ctx.wants(Signal::Traces)) {
                let mut gen = SpanGen::new(cfg.seed, s.attributes);
                generate(
                    &ctx,
                    &self.resource,
                    cfg.batch_size,
                    s.count,
                    s.rate,
                    |now| gen.next(now),
                    Batch::spans,
                )
                .await;
            }
        };
        let flows = async {
            if let Some(f) = cfg.flows.as_ref().filter(|_| ctx.wants(Signal::Flows)) {
                let mut gen = FlowGen::new(cfg.seed.wrapping_add(1), f);
                generate(
                    &ctx,
                    &self.resource,
                    cfg.batch_size,
                    f.count,
                    f.rate,
                    |now| gen.next(now),
                    Batch::flows,
                )
                .await;
            }
        };
        let metrics = async {
            if let Some(m) = cfg.metrics.as_ref().filter(|_| ctx.wants(Signal::Metrics)) {
                let mut gen = metrics::MetricGen::new(cfg.seed.wrapping_add(2), m.series);
                generate(
                    &ctx,
                    &self.resource,
                    cfg.batch_size,
                    m.count,
                    m.rate,
                    |now| gen.next(now),
                    Batch::metrics,
                )
                .await;
            }
        };
        let logs = async {
            if let Some(l) = cfg.logs.as_ref().filter(|_| ctx.wants(Signal::Logs)) {
                let mut gen = logs::LogGen::new(cfg.seed.wrapping_add(3));
                generate(
                    &ctx,
                    &self.resource,
                    cfg.batch_size,
                    l.count,
                    l.rate,
                    |now| gen.next(now),
                    Batch::logs,
                )
                .await;
            }
        };
        tokio::join!(spans, flows, metrics, logs);
        Ok(())
    }
}

/// Factory for [`Synthetic`].
pub struct SyntheticFactory;

impl Factory for SyntheticFactory {
    type Config = SyntheticConfig;
    type Component = Box<dyn Receiver>;
    const TYPE: &'static str = "synthetic";
    const SIGNALS: &'static [Signal] =
        &[Signal::Traces, Signal::Flows, Signal::Metrics, Signal::Logs];
    const DESCRIPTION: &'static str =
        "seeded generator of realistic spans, flows, metrics and logs (no root needed)";
    const DOCS: &'static str = include_str!("../../../docs/components/receiver-synthetic.md");

    fn validate(config: &SyntheticConfig) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::new();
        if config.batch_size == 0 {
            errors.push("batch_size", "must be at least 1");
        }
        if config.spans.is_none()
            && config.flows.is_none()
            && config.metrics.is_none()
            && config.logs.is_none()
        {
            errors.push(
                "",
                "configure `spans:`, `flows:`, `metrics:` and/or `logs:`, or nothing is generated",
            );
        }
        if config.metrics.as_ref().is_some_and(|m| m.series == 0) {
            errors.push("metrics.series", "must be at least 1");
        }
        if let Some(f) = &config.flows {
            if f.distinct == 0 {
                errors.push("flows.distinct", "must be at least 1");
            }
            if !(f.zipf_exponent > 0.0 && f.zipf_exponent.is_finite()) {
                errors.push(
                    "flows.zipf_exponent",
                    format!("must be a positive number, got {}", f.zipf_exponent),
                );
            }
        }
        errors.into_result()
    }

    fn build(config: SyntheticConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(Synthetic {
            config,
            resource: ctx.resource,
        }))
    }
}

oxeye_api::register!(SyntheticFactory);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_deterministic_and_nested() {
        let mut a = SpanGen::new(7, false);
        let mut b = SpanGen::new(7, false);
        let xs: Vec<Span> = (0..1000).map(|_| a.next(1_000_000_000_000)).collect();
        let ys: Vec<Span> = (0..1000).map(|_| b.next(1_000_000_000_000)).collect();
        assert_eq!(xs, ys);
        // Every parent precedes its children in the same trace, and children nest in time.
        let mut seen: std::collections::HashMap<SpanId, &Span> = std::collections::HashMap::new();
        for s in &xs {
            if let Some(p) = s.parent_span_id {
                let parent: &Span = seen.get(&p).expect("parent emitted before child");
                assert_eq!(parent.trace_id, s.trace_id);
                assert!(
                    s.start_unix_ns >= parent.start_unix_ns && s.end_unix_ns <= parent.end_unix_ns
                );
                assert!(!s.kernel_stack.is_empty());
            } else {
                assert!(!s.user_stack.is_empty());
            }
            seen.insert(s.span_id, s);
        }
        assert!(xs.iter().any(|s| s.parent_span_id.is_some()));
    }

    #[test]
    fn attribute_mode_gives_http_attributes() {
        let mut g = SpanGen::new(7, true);
        let xs: Vec<Span> = (0..20_000).map(|_| g.next(1_000_000_000_000)).collect();
        let roots: Vec<&Span> = xs.iter().filter(|s| s.parent_span_id.is_none()).collect();
        assert!(roots.iter().all(|s| s.attributes.len() == 5));
        let health = roots
            .iter()
            .filter(|s| s.attributes.get("http.route") == Some(&Value::from("/health")))
            .count() as f64;
        // Route 3 of 8 with weight 1/4 of 2.7179: 9.2 %.
        let share = health / roots.len() as f64;
        assert!((0.07..0.115).contains(&share), "{share}");
        let errors = roots.iter().filter(|s| s.status == StatusCode::Error);
        assert!(errors.into_iter().all(|s| matches!(
            s.attributes.get("http.response.status_code"),
            Some(Value::Int(500..=503))
        )));
        assert!(xs
            .iter()
            .filter(|s| s.parent_span_id.is_some())
            .all(|s| s.attributes.get("code.function.name") == Some(&Value::Str(s.name.clone()))));
    }

    #[test]
    fn flows_follow_zipf() {
        let cfg = FlowConfig::default();
        let mut g = FlowGen::new(3, &cfg);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100_000 {
            let f = g.next(10_000_000_000);
            *counts
                .entry((f.src_addr, f.src_port, f.dst_addr, f.dst_port))
                .or_insert(0u32) += 1;
        }
        let mut v: Vec<u32> = counts.into_values().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        // The most popular tuple is far more frequent than the median one.
        assert!(
            v[0] > 20 * v[v.len() / 2],
            "top {} median {}",
            v[0],
            v[v.len() / 2]
        );
    }
}

#[cfg(test)]
mod harness_tests {
    use super::*;
    use oxeye_api::testing::{check, run_receiver};

    #[test]
    fn counts_are_exact_and_unconfigured_signals_are_not_generated() {
        let batches = run_receiver::<SyntheticFactory>(
            "{seed: 3, batch_size: 100, spans: {count: 1050}}",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 1050);
        assert!(batches
            .iter()
            .all(|b| b.signal() == Signal::Traces && b.len() <= 100));
    }

    #[test]
    fn metrics_and_logs_are_valid_otlp_and_counted_by_point() {
        let batches = run_receiver::<SyntheticFactory>(
            "{batch_size: 64, metrics: {count: 500, series: 8}, logs: {count: 300}}",
            Duration::from_secs(10),
        )
        .unwrap();
        let by = |s: Signal| -> usize {
            batches
                .iter()
                .filter(|b| b.signal() == s)
                .map(|b| b.len())
                .sum()
        };
        assert_eq!((by(Signal::Metrics), by(Signal::Logs)), (500, 300));
        let metrics: Vec<&oxeye_api::Metric> = batches
            .iter()
            .filter_map(|b| match &b.records {
                oxeye_api::Records::Metrics(m) => Some(m),
                _ => None,
            })
            .flatten()
            .collect();
        let types: std::collections::BTreeSet<&str> =
            metrics.iter().map(|m| m.data.type_name()).collect();
        assert_eq!(
            types.into_iter().collect::<Vec<_>>(),
            ["ExponentialHistogram", "Gauge", "Histogram", "Sum"]
        );
        for m in &metrics {
            m.check().unwrap();
        }
        let a = metrics::MetricGen::new(5, 4).next(1);
        assert_eq!(a, metrics::MetricGen::new(5, 4).next(1), "deterministic");
    }

    #[test]
    fn rate_limits_and_stops_on_shutdown() {
        let started = Instant::now();
        let batches =
            run_receiver::<SyntheticFactory>("{flows: {rate: 2000}}", Duration::from_millis(500))
                .unwrap();
        let n: usize = batches.iter().map(|b| b.len()).sum();
        // 0.5 s at 2000/s: about 1000 records, never a burst far beyond the rate.
        assert!((700..=1200).contains(&n), "{n} records");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn validation() {
        let e =
            check::<SyntheticFactory>("{batch_size: 0, flows: {distinct: 0, zipf_exponent: -1}}")
                .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["batch_size", "flows.distinct", "flows.zipf_exponent"]
        );
        assert!(check::<SyntheticFactory>("{}")
            .unwrap_err()
            .to_string()
            .contains("nothing is generated"));
        assert!(check::<SyntheticFactory>("{spans: {}, sped: 1}").is_err());
    }
}
