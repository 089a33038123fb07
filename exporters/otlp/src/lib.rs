//! `otlp` exporter: spans as OTLP traces, metrics and logs as they are, flows as OTLP metrics
//! (monotonic delta Sums `network.flow.bytes` / `network.flow.packets`) and CPU profiles as OTLP
//! profiles (v1development), over gRPC or HTTP/protobuf.
//!
//! ```yaml
//! exporters:
//!   otlp:
//!     protocol: grpc                    # grpc | http/protobuf  (OTEL_EXPORTER_OTLP_PROTOCOL)
//!     endpoint: http://127.0.0.1:4317   # HTTP: base URL, /v1/traces, /v1/metrics, /v1/logs appended
//!     headers: {authorization: "Bearer ${TOKEN}"}
//!     compression: gzip                 # gzip | none
//!     timeout: 10s
//!     tls: {ca_file: /etc/ssl/ca.pem, cert_file: c.pem, key_file: k.pem, insecure_skip_verify: false}
//!     resource: {service.name: edge-7}
//!     batch: {send_batch_size: 1024, timeout: 200ms}
//!     sending_queue: {sizer: items, queue_size: 8192, num_consumers: 2, when_full: block}
//!     # endpoints: [http://gw-0:4317, http://gw-1:4317]  # instead of endpoint: load balancing
//!     # routing_key: traceID      # traces: traceID|service|resource; metrics: service|resource|
//!     #                           # metric|streamID; logs: traceID|resource
//!     retry_on_failure: {enabled: true, initial_interval: 5s, max_interval: 30s, max_elapsed_time: 300s}
//! ```
//!
//! `export` only queues. Senders take batches off the bounded queue, batch them by size and age,
//! encode with the generated OTLP types and send, retrying retryable failures with exponential
//! backoff and jitter (honouring Retry-After / RetryInfo). The exporter counts its own
//! deliveries: records are "out" when the backend accepted them; rejected (partial success),
//! given-up and abandoned-at-shutdown records are counted as dropped with a reason.

mod balance;
mod config;
mod encode;
pub mod messages;
mod persist;
mod transport;
mod wire;

/// The encoders, for the benchmarks beside oxeye's own (`tests/benches`) and the fuzz targets;
/// not an API.
#[doc(hidden)]
pub mod bench {
    pub use crate::encode::{logs, metrics, trace_request, Resources};
    pub use crate::transport::gzip_bytes;
    pub use crate::wire::trace_message;
}

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oxeye_api::{
    Attributes, Batch, BoxError, BuildContext, ConfigErrors, Exporter, Factory, Records, Resource,
    Signal, Span, Telemetry,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

pub use config::OtlpConfig;
use config::{process_env, OtlpSignal, RetryConfig, Sizer, WhenFull};
use oxeye_sending::retry::{backoff, jitter};
use oxeye_sending::Ledger;
use transport::{Client, Outcome, Request};

fn otlp_signals(signals: &[Signal]) -> Vec<OtlpSignal> {
    signals
        .iter()
        .filter_map(|s| match s {
            Signal::Traces => Some(OtlpSignal::Traces),
            Signal::Flows | Signal::Metrics => Some(OtlpSignal::Metrics),
            Signal::Profiles => Some(OtlpSignal::Profiles),
            Signal::Logs => Some(OtlpSignal::Logs),
            // The factory declares the signals it takes: no other one is sent here.
            _ => None,
        })
        .collect()
}

/// Registers `otlp`.
pub struct OtlpFactory;

impl Factory for OtlpFactory {
    type Config = OtlpConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "otlp";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str =
        "OTLP over gRPC or HTTP/protobuf: traces, metrics, logs, flows as delta-sum metrics, profiles";
    const DOCS: &'static str = include_str!("../../../docs/components/exporter-otlp.md");

    fn validate(config: &OtlpConfig) -> Result<(), ConfigErrors> {
        config.check(&otlp_signals(Signal::ALL), &process_env)
    }

    fn validate_signals(config: &OtlpConfig, signals: &[Signal]) -> Result<(), ConfigErrors> {
        if config.endpoints.is_empty() {
            return Ok(());
        }
        let mut errors = ConfigErrors::new();
        for s in signals {
            if matches!(s, Signal::Flows | Signal::Profiles) {
                errors.push(
                    "endpoints",
                    format!("load balancing takes traces, metrics and logs, but a {s} pipeline uses this exporter: send {s} through another otlp exporter"),
                );
            }
        }
        let balanced: Vec<Signal> = signals
            .iter()
            .copied()
            .filter(|s| matches!(s, Signal::Traces | Signal::Metrics | Signal::Logs))
            .collect();
        if let Err(e) = config.check_balancing(&otlp_signals(&balanced)) {
            errors.0.extend(e.0);
        }
        errors.into_result()
    }

    fn build(config: OtlpConfig, ctx: BuildContext) -> Result<Box<dyn Exporter>, BoxError> {
        Ok(Box::new(OtlpExporter::new(config, ctx)?))
    }
}

oxeye_api::register!(OtlpFactory);

/// What the senders share.
struct Shared {
    id: String,
    telemetry: Telemetry,
    ledger: Ledger,
    traces: Option<Client>,
    metrics: Option<Client>,
    profiles: Option<Client>,
    logs: Option<Client>,
    /// Several endpoints, balanced by `routing_key` (`endpoints:`); then `traces`, `metrics`
    /// and `logs` are `None`.
    balancer: Option<Balanced>,
    /// Records moved off each failed endpoint, by member and signal.
    rerouted: Mutex<Vec<[u64; OtlpSignal::ALL.len()]>>,
    retry: RetryConfig,
    send_batch_size: usize,
    batch_timeout: Duration,
    resource: std::collections::BTreeMap<String, config::ResourceValue>,
    stats: Mutex<Stats>,
    /// The queue is on disk: a retryable failure is retried until it succeeds (the records
    /// wait there, bounded by `storage.max_size`), not given up after `max_elapsed_time`.
    persistent: bool,
}

#[derive(Default)]
struct Stats {
    /// Records sent on as they were received (never decoded here), per signal.
    forwarded: [u64; OtlpSignal::ALL.len()],
    /// Requests sent on gzip'd as they were received, per signal.
    gzipped: [u64; OtlpSignal::ALL.len()],
    requests: [u64; OtlpSignal::ALL.len()],
    retries: [u64; OtlpSignal::ALL.len()],
    failed: [u64; OtlpSignal::ALL.len()],
}

impl Shared {
    /// The client of `signal`, if this run exports it.
    fn client(&self, signal: OtlpSignal) -> Option<&Client> {
        match signal {
            OtlpSignal::Traces => self.traces.as_ref(),
            OtlpSignal::Metrics => self.metrics.as_ref(),
            OtlpSignal::Profiles => self.profiles.as_ref(),
            OtlpSignal::Logs => self.logs.as_ref(),
        }
    }

    /// Counts `request` in `otlp_forwarded_gzipped_requests` if it goes out gzip'd as it came.
    fn count_gzipped(&self, request: &Request) {
        let Request::Gzipped(signal, _) = request else {
            return;
        };
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.gzipped[*signal as usize] += 1;
        self.telemetry.set_counter(
            "otlp_forwarded_gzipped_requests",
            signal.as_str(),
            s.gzipped[*signal as usize],
        );
    }

    fn add_outstanding(&self, n: u64) {
        self.ledger.add(n);
    }

    /// Settles `n` records: `delivered` of them are out, the rest dropped for `reason`.
    fn settle(&self, n: u64, delivered: u64, reason: &'static str) {
        self.ledger.settle(n, delivered, reason);
    }

    fn count(&self, signal: OtlpSignal, f: impl FnOnce(&mut Stats, usize)) {
        let i = signal as usize;
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s, i);
        let src = signal.as_str();
        self.telemetry
            .set_counter("otlp_requests", src, s.requests[i]);
        self.telemetry
            .set_counter("otlp_retries", src, s.retries[i]);
        self.telemetry
            .set_counter("otlp_failed_requests", src, s.failed[i]);
    }

    /// Sends one request, retrying retryable failures; settles its records. `false` when it
    /// stopped retrying unsettled because `handed_over` said so (a reload's new instance took
    /// the queue on disk over, and sends the request itself).
    async fn deliver(
        &self,
        signal: OtlpSignal,
        client: &Client,
        request: Request,
        n: u64,
        handed_over: &(dyn Fn() -> bool + Sync),
    ) -> bool {
        let started = tokio::time::Instant::now();
        let mut interval = self.retry.initial_interval;
        let mut attempt = 0u32;
        // Encoded once; every attempt sends the same bytes.
        let payload = client.prepare(request);
        loop {
            self.count(signal, |s, i| s.requests[i] += 1);
            match client.send(&payload).await {
                Outcome::Delivered { rejected, message } => {
                    if attempt > 0 {
                        info!(exporter = %self.id, signal = signal.as_str(), attempts = attempt + 1, "export succeeded after retrying");
                    }
                    if rejected > 0 {
                        warn!(exporter = %self.id, signal = signal.as_str(), rejected, %message, "backend accepted the request but rejected some records");
                    }
                    // OTLP counts rejected profiles, and a profile holds many samples: any
                    // rejected profile counts every sample of the request as rejected (never
                    // fewer than were lost).
                    let rejected = if signal == OtlpSignal::Profiles && rejected > 0 {
                        n
                    } else {
                        rejected.min(n)
                    };
                    self.settle(n, n - rejected, "rejected_by_backend");
                    return true;
                }
                Outcome::Permanent { reason } => {
                    self.count(signal, |s, i| s.failed[i] += 1);
                    error!(exporter = %self.id, signal = signal.as_str(), records = n, %reason, "export failed permanently; records dropped");
                    self.settle(n, 0, "export_failed");
                    return true;
                }
                Outcome::Retryable { reason, after } => {
                    let wait =
                        after.unwrap_or_else(|| jitter(interval, self.retry.randomization_factor));
                    if !self.retry.enabled
                        || (!self.persistent
                            && started.elapsed().saturating_add(wait) > self.retry.max_elapsed_time)
                    {
                        self.count(signal, |s, i| s.failed[i] += 1);
                        error!(exporter = %self.id, signal = signal.as_str(), records = n, attempts = attempt + 1, %reason, "export failed, no more retries; records dropped");
                        self.settle(n, 0, "retries_exhausted");
                        return true;
                    }
                    if handed_over() {
                        return false;
                    }
                    self.count(signal, |s, i| s.retries[i] += 1);
                    if attempt == 0 {
                        warn!(exporter = %self.id, signal = signal.as_str(), %reason, ?wait, "export failed; retrying");
                    } else {
                        debug!(exporter = %self.id, signal = signal.as_str(), %reason, ?wait, attempt, "still retrying");
                    }
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    interval = backoff(interval, self.retry.multiplier, self.retry.max_interval);
                }
            }
        }
    }
}

/// Load balancing: the ring and the routing key of each signal served.
struct Balanced {
    ring: balance::Balancer,
    traces: Option<balance::RoutingKey>,
    metrics: Option<balance::RoutingKey>,
    logs: Option<balance::RoutingKey>,
}

/// One record to route, with its resource.
#[derive(Clone, Copy)]
enum Item<'a> {
    Span(&'a Arc<Resource>, &'a Span),
    Metric(&'a Arc<Resource>, &'a oxeye_api::Metric),
    Log(&'a Arc<Resource>, &'a oxeye_api::LogRecord),
}

impl Item<'_> {
    fn signal(&self) -> OtlpSignal {
        match self {
            Item::Span(..) => OtlpSignal::Traces,
            Item::Metric(..) => OtlpSignal::Metrics,
            Item::Log(..) => OtlpSignal::Logs,
        }
    }

    /// Records it counts for: a metric's data points, else 1.
    fn weight(&self) -> u64 {
        match self {
            Item::Metric(_, m) => m.points() as u64,
            _ => 1,
        }
    }

    /// Its ring position under `key` (a log record without a trace goes by its resource).
    fn key(&self, key: balance::RoutingKey) -> u64 {
        use balance::RoutingKey as K;
        match (self, key) {
            (Item::Span(_, s), K::TraceId) => balance::trace_key(&s.trace_id),
            (Item::Log(_, l), K::TraceId) if l.trace_id.is_some() => {
                balance::trace_key(&l.trace_id.unwrap_or_default())
            }
            (Item::Metric(r, m), K::Metric) => balance::metric_key(r, m),
            // One point per item (split before routing).
            (Item::Metric(r, m), K::StreamId) => {
                let empty = Attributes::new();
                let points = m.data.point_attributes();
                let point = points.first().copied().unwrap_or(&empty);
                balance::stream_key(r, m.scope.as_deref(), &m.name, point)
            }
            (Item::Span(r, _) | Item::Metric(r, _) | Item::Log(r, _), K::Service) => {
                balance::service_key(r)
            }
            (Item::Span(r, _) | Item::Metric(r, _) | Item::Log(r, _), _) => {
                balance::resource_key(r)
            }
        }
    }
}

/// Metrics with one data point each (for `routing_key: streamID`, which routes points).
fn split_points(m: &oxeye_api::Metric) -> Vec<oxeye_api::Metric> {
    (0..m.points())
        .map(|i| {
            let mut one = m.clone();
            let mut at = 0;
            one.data.retain_points(|_| {
                at += 1;
                at - 1 == i
            });
            one
        })
        .collect()
}

/// One request of `items` (all of one signal).
fn balanced_request(resources: &mut encode::Resources, items: &[Item<'_>]) -> Request {
    match items.first().map(Item::signal) {
        Some(OtlpSignal::Metrics) => {
            let parts: Vec<_> = items
                .iter()
                .filter_map(|i| match i {
                    Item::Metric(r, m) => Some((*r, std::slice::from_ref(*m))),
                    _ => None,
                })
                .collect();
            Request::Metrics(encode::metrics::request(resources, parts))
        }
        Some(OtlpSignal::Logs) => {
            let parts: Vec<_> = items
                .iter()
                .filter_map(|i| match i {
                    Item::Log(r, l) => Some((*r, std::slice::from_ref(*l))),
                    _ => None,
                })
                .collect();
            Request::Logs(encode::logs::request(resources, parts))
        }
        _ => Request::Traces(wire::trace_message(
            resources,
            items.iter().filter_map(|i| match i {
                Item::Span(r, s) => Some((*r, *s)),
                _ => None,
            }),
        )),
    }
}

/// The counter of records moved off a failed endpoint, per signal.
fn rerouted_counter(signal: OtlpSignal) -> &'static str {
    match signal {
        OtlpSignal::Metrics => "otlp_rerouted_data_points",
        OtlpSignal::Logs => "otlp_rerouted_log_records",
        _ => "otlp_rerouted_spans",
    }
}

impl Shared {
    /// Load balancing: routes each record by `key`, sends each endpoint its share (all at
    /// once), and moves the share of an endpoint that fails to the next ones on the ring
    /// (counted) until every record is settled. When every endpoint is down it waits, as a
    /// single endpoint's retries would, and gives up after `max_elapsed_time`.
    async fn deliver_balanced(
        &self,
        balancer: &balance::Balancer,
        resources: &mut encode::Resources,
        signal: OtlpSignal,
        key: balance::RoutingKey,
        mut pending: Vec<Item<'_>>,
    ) {
        let started = tokio::time::Instant::now();
        let mut interval = self.retry.initial_interval;
        let weight = |items: &[Item<'_>]| items.iter().map(Item::weight).sum::<u64>();
        while !pending.is_empty() {
            let now = std::time::Instant::now();
            let mut shares: Vec<Vec<Item<'_>>> = vec![Vec::new(); balancer.members().len()];
            let mut unroutable = Vec::new();
            let mut moved = vec![0u64; shares.len()];
            for item in pending.drain(..) {
                match balancer.route(item.key(key), now) {
                    Some((i, owner)) => {
                        if i != owner {
                            moved[owner] += item.weight();
                        }
                        shares[i].push(item)
                    }
                    None => unroutable.push(item),
                }
            }
            if moved.iter().any(|&n| n > 0) {
                let mut r = self.rerouted.lock().unwrap_or_else(|p| p.into_inner());
                for (i, n) in moved.into_iter().enumerate().filter(|(_, n)| *n > 0) {
                    r[i][signal as usize] += n;
                    self.telemetry.set_counter(
                        rerouted_counter(signal),
                        &balancer.members()[i].url,
                        r[i][signal as usize],
                    );
                }
            }
            let mut sends = Vec::new();
            for (i, share) in shares.iter().enumerate() {
                let lens: Vec<usize> = share.iter().map(|it| it.weight() as usize).collect();
                for (range, _) in fill(&lens, self.send_batch_size) {
                    let chunk = &share[range];
                    sends.push((i, chunk, balanced_request(resources, chunk)));
                }
            }
            let attempts = sends.into_iter().map(|(i, chunk, request)| async move {
                let member = &balancer.members()[i];
                let Some(client) = member.client(signal) else {
                    let reason = format!("no {} client for this endpoint", signal.as_str());
                    return (i, chunk, Outcome::Permanent { reason });
                };
                let payload = client.prepare(request);
                self.count(signal, |s, k| s.requests[k] += 1);
                (i, chunk, client.send(&payload).await)
            });
            // The longest delay an endpoint asked for (it is alive, only busy: its records
            // wait for it rather than move, which would split their traces or streams).
            let mut asked: Option<Duration> = None;
            for (i, chunk, outcome) in futures_util::future::join_all(attempts).await {
                let n = weight(chunk);
                let url = &balancer.members()[i].url;
                match outcome {
                    Outcome::Delivered { rejected, message } => {
                        if balancer.mark_up(i) {
                            info!(exporter = %self.id, endpoint = %url, "endpoint is back: it takes its records again");
                        }
                        if rejected > 0 {
                            warn!(exporter = %self.id, endpoint = %url, rejected, %message, "backend accepted the request but rejected some records");
                        }
                        self.settle(n, n - rejected.min(n), "rejected_by_backend");
                    }
                    Outcome::Permanent { reason } => {
                        self.count(signal, |s, k| s.failed[k] += 1);
                        error!(exporter = %self.id, endpoint = %url, records = n, %reason, "export failed permanently; records dropped");
                        self.settle(n, 0, "export_failed");
                    }
                    Outcome::Retryable {
                        after: Some(after), ..
                    } => {
                        self.count(signal, |s, k| s.retries[k] += 1);
                        asked = Some(asked.map_or(after, |a| a.max(after)));
                        pending.extend_from_slice(chunk);
                    }
                    Outcome::Retryable {
                        reason,
                        after: None,
                    } => {
                        let (newly, off) = balancer.mark_down(i);
                        if newly {
                            warn!(exporter = %self.id, endpoint = %url, %reason, ?off, "endpoint failed: its records go to the next endpoints on the ring");
                        }
                        let total = {
                            let mut r = self.rerouted.lock().unwrap_or_else(|p| p.into_inner());
                            r[i][signal as usize] += n;
                            r[i][signal as usize]
                        };
                        self.telemetry
                            .set_counter(rerouted_counter(signal), url, total);
                        self.count(signal, |s, k| s.retries[k] += 1);
                        pending.extend_from_slice(chunk);
                    }
                }
            }
            if !unroutable.is_empty() || asked.is_some() {
                // Every endpoint is down (wait for the first to come back, as retries would),
                // or one asked for time.
                let wait = match asked {
                    Some(after) => after,
                    None => balancer
                        .next_return()
                        .map(|t| t.saturating_duration_since(std::time::Instant::now()))
                        .unwrap_or(interval)
                        .max(jitter(interval, self.retry.randomization_factor)),
                };
                if !self.retry.enabled
                    || started.elapsed().saturating_add(wait) > self.retry.max_elapsed_time
                {
                    let n = weight(&unroutable) + weight(&pending);
                    self.count(signal, |s, k| s.failed[k] += 1);
                    error!(exporter = %self.id, records = n, "every endpoint failed, no more retries; records dropped");
                    self.settle(n, 0, "retries_exhausted");
                    return;
                }
                tokio::time::sleep(wait).await;
                interval = backoff(interval, self.retry.multiplier, self.retry.max_interval);
                pending.extend(unroutable);
            }
        }
    }
}

/// Takes batches off the queue, groups them into requests of at most `send_batch_size` records
/// (waiting at most `batch.timeout` for more), and delivers them.
async fn sender(shared: Arc<Shared>, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>) {
    let mut resources = encode::Resources::new(&shared.resource);
    loop {
        let mut batches: Vec<Arc<Batch>> = Vec::new();
        // Held until the requests are settled: the queue's room counts records being sent too.
        let mut room = Vec::new();
        let mut records = 0;
        {
            let mut rx = queue.lock().await;
            let Some((first, permit)) = rx.recv().await else {
                return; // queue closed and empty: shutdown
            };
            #[cfg(test)]
            if tests::SENDERS_PANIC.load(std::sync::atomic::Ordering::Relaxed) {
                panic!("a deliberate panic (test)");
            }
            records += first.len();
            batches.push(first);
            room.push(permit);
            let deadline = tokio::time::Instant::now() + shared.batch_timeout;
            while records < shared.send_batch_size {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((b, permit))) => {
                        records += b.len();
                        batches.push(b);
                        room.push(permit);
                    }
                    _ => break,
                }
            }
        }
        if let Some(balanced) = &shared.balancer {
            let streams = balanced.metrics == Some(balance::RoutingKey::StreamId);
            // Routed by stream, a metric's points part ways: one metric per point.
            let split: Vec<(&Arc<Resource>, Vec<oxeye_api::Metric>)> = if streams {
                batches
                    .iter()
                    .filter_map(|b| match &b.records {
                        Records::Metrics(m) => {
                            Some((&b.resource, m.iter().flat_map(split_points).collect()))
                        }
                        _ => None,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let (mut spans, mut metrics, mut logs) = (Vec::new(), Vec::new(), Vec::new());
            for b in &batches {
                let r = &b.resource;
                match &b.records {
                    Records::Spans(v) => spans.extend(v.iter().map(|s| Item::Span(r, s))),
                    Records::Metrics(v) if !streams => {
                        metrics.extend(v.iter().map(|m| Item::Metric(r, m)))
                    }
                    Records::Logs(v) => logs.extend(v.iter().map(|l| Item::Log(r, l))),
                    _ => {}
                }
            }
            for (r, v) in &split {
                metrics.extend(v.iter().map(|m| Item::Metric(r, m)));
            }
            for (signal, key, items) in [
                (OtlpSignal::Traces, balanced.traces, spans),
                (OtlpSignal::Metrics, balanced.metrics, metrics),
                (OtlpSignal::Logs, balanced.logs, logs),
            ] {
                if items.is_empty() {
                    continue;
                }
                match key {
                    Some(key) => {
                        shared
                            .deliver_balanced(&balanced.ring, &mut resources, signal, key, items)
                            .await
                    }
                    // Refused by validation; counted if it ever happens.
                    None => shared.settle(
                        items.iter().map(Item::weight).sum(),
                        0,
                        "signal_not_configured",
                    ),
                }
            }
            drop(room);
            continue;
        }
        let mut forwarded = [0u64; OtlpSignal::ALL.len()];
        for b in batches.iter().filter(|b| b.is_encoded()) {
            let signal = match b.signal() {
                Signal::Metrics => OtlpSignal::Metrics,
                Signal::Logs => OtlpSignal::Logs,
                _ => OtlpSignal::Traces,
            };
            forwarded[signal as usize] += b.len() as u64;
        }
        if forwarded.iter().any(|&n| n > 0) {
            let mut s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
            for signal in [OtlpSignal::Traces, OtlpSignal::Metrics, OtlpSignal::Logs] {
                let i = signal as usize;
                if forwarded[i] > 0 {
                    s.forwarded[i] += forwarded[i];
                    let name = match signal {
                        OtlpSignal::Metrics => "otlp_forwarded_data_points",
                        OtlpSignal::Logs => "otlp_forwarded_log_records",
                        _ => "otlp_forwarded_spans",
                    };
                    shared
                        .telemetry
                        .set_counter(name, signal.as_str(), s.forwarded[i]);
                }
            }
        }
        let gzip = |signal| shared.client(signal).is_some_and(Client::gzip);
        for (signal, request, n) in requests(&mut resources, &batches, shared.send_batch_size, gzip)
        {
            shared.count_gzipped(&request);
            match shared.client(signal) {
                Some(c) => {
                    shared.deliver(signal, c, request, n, &|| false).await;
                }
                // Not wired for this signal (cannot happen through the engine): count it.
                None => shared.settle(n, 0, "signal_not_configured"),
            }
        }
        drop(room);
    }
}

/// A queued batch and the room it takes in the queue.
type Queued = (Arc<Batch>, tokio::sync::OwnedSemaphorePermit);

/// Splits batches into requests of at most `max` records, one signal each. A request received
/// gzip'd and forwarded alone goes out as it came when `gzipped(signal)` (the client sends
/// gzip): no deflating again, which was half of a gzip gateway's CPU.
fn requests(
    resources: &mut encode::Resources,
    batches: &[Arc<Batch>],
    max: usize,
    gzipped: impl Fn(OtlpSignal) -> bool,
) -> Vec<(OtlpSignal, Request, u64)> {
    let mut out = Vec::new();
    let mut spans = Vec::new();
    let mut flows = Vec::new();
    let mut samples = Vec::new();
    let mut metrics = Vec::new();
    let mut logs = Vec::new();
    // Requests received and forwarded as they came: (bytes, records), per signal.
    let (mut raw_metrics, mut raw_logs) = (Vec::new(), Vec::new());
    for b in batches {
        match &b.records {
            Records::Spans(s) => s
                .chunks(max)
                .for_each(|c| spans.push(SpanPart::Spans(&b.resource, c))),
            // Forwarded as received: a part of its own, whatever its size.
            Records::Encoded(e) => spans.push(SpanPart::Encoded(e.bytes(), e.len(), e.gzipped())),
            Records::Flows(f) => f.chunks(max).for_each(|c| flows.push((&b.resource, c))),
            Records::Samples(p) => p.chunks(max).for_each(|c| samples.push((&b.resource, c))),
            Records::Metrics(m) => {
                for c in by_points(m, max) {
                    metrics.push((&b.resource, c));
                }
            }
            Records::Logs(l) => l.chunks(max).for_each(|c| logs.push((&b.resource, c))),
            Records::EncodedMetrics(e) => raw_metrics.push((e.bytes(), e.len(), e.gzipped())),
            Records::EncodedLogs(e) => raw_logs.push((e.bytes(), e.len(), e.gzipped())),
            _ => {}
        }
    }
    let lens: Vec<usize> = spans.iter().map(SpanPart::len).collect();
    for (range, n) in fill(&lens, max) {
        let parts = &spans[range];
        if let ([SpanPart::Encoded(_, _, Some(gz))], true) = (parts, gzipped(OtlpSignal::Traces)) {
            let req = Request::Gzipped(OtlpSignal::Traces, (*gz).clone());
            out.push((OtlpSignal::Traces, req, n));
            continue;
        }
        let encoded: Vec<&[u8]> = parts
            .iter()
            .filter_map(|p| match p {
                SpanPart::Encoded(b, ..) => Some(*b),
                SpanPart::Spans(..) => None,
            })
            .collect();
        let req = wire::trace_message_with(
            resources,
            parts
                .iter()
                .filter_map(|p| match p {
                    SpanPart::Spans(r, spans) => Some((*r, *spans)),
                    SpanPart::Encoded(..) => None,
                })
                .flat_map(|(r, spans)| spans.iter().map(move |s| (r, s))),
            &encoded,
        );
        out.push((OtlpSignal::Traces, Request::Traces(req), n));
    }
    let lens: Vec<usize> = flows.iter().map(|p| p.1.len()).collect();
    for (range, n) in fill(&lens, max) {
        let req = encode::metrics_request(resources, flows[range].iter().copied());
        out.push((OtlpSignal::Metrics, Request::Metrics(req), n));
    }
    let lens: Vec<usize> = metrics
        .iter()
        .map(|p| p.1.iter().map(oxeye_api::Metric::points).sum())
        .collect();
    for (range, n) in fill(&lens, max) {
        let req = encode::metrics::request(resources, metrics[range].iter().copied());
        out.push((OtlpSignal::Metrics, Request::Metrics(req), n));
    }
    let lens: Vec<usize> = logs.iter().map(|p| p.1.len()).collect();
    for (range, n) in fill(&lens, max) {
        let req = encode::logs::request(resources, logs[range].iter().copied());
        out.push((OtlpSignal::Logs, Request::Logs(req), n));
    }
    for (signal, raw) in [
        (OtlpSignal::Metrics, raw_metrics),
        (OtlpSignal::Logs, raw_logs),
    ] {
        let lens: Vec<usize> = raw.iter().map(|p| p.1).collect();
        for (range, n) in fill(&lens, max) {
            if let ([(_, _, Some(gz))], true) = (&raw[range.clone()], gzipped(signal)) {
                out.push((signal, Request::Gzipped(signal, (*gz).clone()), n));
                continue;
            }
            let mut bytes = Vec::with_capacity(raw[range.clone()].iter().map(|p| p.0.len()).sum());
            raw[range].iter().for_each(|p| bytes.extend_from_slice(p.0));
            out.push((
                signal,
                Request::Encoded(signal, transport::Encoded(bytes)),
                n,
            ));
        }
    }
    let lens: Vec<usize> = samples.iter().map(|p| p.1.len()).collect();
    for (range, n) in fill(&lens, max) {
        let req = encode::profiles_request(resources, samples[range].iter().copied());
        out.push((OtlpSignal::Profiles, Request::Profiles(req), n));
    }
    out
}

/// Metrics cut into runs of at most `max` data points (a metric is never split: one with more
/// goes alone).
fn by_points(metrics: &[oxeye_api::Metric], max: usize) -> Vec<&[oxeye_api::Metric]> {
    let lens: Vec<usize> = metrics.iter().map(oxeye_api::Metric::points).collect();
    fill(&lens, max)
        .into_iter()
        .map(|(range, _)| &metrics[range])
        .collect()
}

/// Spans for a trace request: decoded (with their resource), or a request as received.
enum SpanPart<'a> {
    Spans(&'a Arc<Resource>, &'a [Span]),
    /// A request as received, its span count, and the same gzip'd as it came (if kept).
    Encoded(&'a [u8], usize, Option<&'a bytes::Bytes>),
}

impl SpanPart<'_> {
    fn len(&self) -> usize {
        match self {
            SpanPart::Spans(_, s) => s.len(),
            SpanPart::Encoded(_, n, _) => *n,
        }
    }
}

/// Groups consecutive parts (of these lengths) into ranges of at most `max` records; a part is
/// never split here, so one larger than `max` goes alone.
fn fill(lens: &[usize], max: usize) -> Vec<(std::ops::Range<usize>, u64)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < lens.len() {
        let (mut end, mut n) = (start, 0);
        while end < lens.len() && (end == start || n + lens[end] <= max) {
            n += lens[end];
            end += 1;
        }
        out.push((start..end, n as u64));
        start = end;
    }
    out
}

/// The exporter instance.
pub struct OtlpExporter {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Queued>>,
    rx: Option<mpsc::Receiver<Queued>>,
    /// Room in the queue, in records or batches (`sending_queue.sizer`).
    room: Arc<tokio::sync::Semaphore>,
    sizer: Sizer,
    queue_size: usize,
    when_full: WhenFull,
    num_consumers: usize,
    senders: JoinSet<()>,
    /// `sending_queue.storage`: the queue on disk, instead of `tx`/`rx`; opened by `start`
    /// (building, as `validate` does, takes no lock).
    disk: Option<Arc<oxeye_diskqueue::Disk>>,
    storage: Option<(config::StorageConfig, String, Telemetry)>,
    /// Set at shutdown: the disk senders stop once the queue is drained.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// The queue on disk's fsync interval task.
    sync_task: Option<tokio::task::AbortHandle>,
    /// For encoding batches before they are written to disk.
    resources: encode::Resources,
}

impl OtlpExporter {
    /// Builds the clients (no connection yet) for the signals this instance serves.
    pub fn new(config: OtlpConfig, ctx: BuildContext) -> Result<Self, BoxError> {
        let signals = otlp_signals(&ctx.signals);
        let client = |s: OtlpSignal| -> Result<Option<Client>, BoxError> {
            if !signals.contains(&s) {
                return Ok(None);
            }
            let r = config.resolve(s, &process_env).map_err(|e| e.to_string())?;
            info!(exporter = %ctx.id, signal = s.as_str(), url = %r.url, protocol = r.protocol.as_str(), "otlp exporter");
            Ok(Some(Client::new(&r)?))
        };
        let balancer = if config.endpoints.is_empty() {
            None
        } else {
            let mut members = Vec::new();
            for e in &config.endpoints {
                let mut clients = Vec::new();
                for &s in &signals {
                    if clients.iter().any(|(x, _)| *x == s) {
                        continue;
                    }
                    let r = config
                        .for_endpoint(e)
                        .resolve(s, &process_env)
                        .map_err(|e| e.to_string())?;
                    info!(exporter = %ctx.id, signal = s.as_str(), url = %r.url, protocol = r.protocol.as_str(), routing_key = ?config.routing(s), "otlp exporter: load-balanced endpoint");
                    clients.push((s, Client::new(&r)?));
                }
                members.push((e.clone(), clients));
            }
            Some(Balanced {
                ring: balance::Balancer::new(members),
                traces: config.routing(OtlpSignal::Traces).ok(),
                metrics: config.routing(OtlpSignal::Metrics).ok(),
                logs: config.routing(OtlpSignal::Logs).ok(),
            })
        };
        let (traces, metrics, logs) = if balancer.is_some() {
            (None, None, None)
        } else {
            (
                client(OtlpSignal::Traces)?,
                client(OtlpSignal::Metrics)?,
                client(OtlpSignal::Logs)?,
            )
        };
        let profiles = client(OtlpSignal::Profiles)?;
        let q = &config.sending_queue;
        // Every batch takes at least one unit of room, so the channel never fills first.
        let (tx, rx) = mpsc::channel(q.queue_size);
        let room = Arc::new(tokio::sync::Semaphore::new(q.queue_size));
        let (sizer, queue_size) = (q.sizer, q.queue_size);
        if let Some(storage) = &q.storage {
            persist::check(storage, &ctx.id)?;
        }
        let storage = q
            .storage
            .clone()
            .map(|s| (s, ctx.id.clone(), ctx.telemetry.clone()));
        let resources = encode::Resources::new(&config.resource);
        Ok(OtlpExporter {
            shared: Arc::new(Shared {
                id: ctx.id,
                ledger: Ledger::new(ctx.telemetry.clone()),
                telemetry: ctx.telemetry,
                traces,
                metrics,
                profiles,
                logs,
                rerouted: Mutex::new(vec![
                    [0; OtlpSignal::ALL.len()];
                    balancer.as_ref().map_or(0, |b| b.ring.members().len())
                ]),
                balancer,
                retry: config.retry_on_failure,
                send_batch_size: config.batch.send_batch_size,
                batch_timeout: config.batch.timeout,
                resource: config.resource,
                stats: Mutex::default(),
                persistent: storage.is_some(),
            }),
            tx: Some(tx),
            rx: Some(rx),
            room,
            sizer,
            queue_size,
            when_full: config.sending_queue.when_full,
            num_consumers: config.sending_queue.num_consumers,
            senders: JoinSet::new(),
            disk: None,
            sync_task: None,
            storage,
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
            resources,
        })
    }

    /// Starts the senders on the current runtime (on first use), opening the queue on disk
    /// first when there is one.
    async fn start(&mut self) -> Result<(), BoxError> {
        if let Some((storage, id, telemetry)) = &self.storage {
            if self.disk.is_none() {
                // Recovery reads the backlog's headers: off the async workers.
                let (storage, id, telemetry) = (storage.clone(), id.clone(), telemetry.clone());
                let disk =
                    tokio::task::spawn_blocking(move || persist::open(&storage, &id, telemetry))
                        .await
                        .map_err(|e| e.to_string())??;
                self.disk = Some(Arc::new(disk));
            }
        }
        let Some(rx) = self.rx.take() else {
            return Ok(()); // started already
        };
        match &self.disk {
            Some(disk) => {
                for _ in 0..self.num_consumers {
                    self.senders.spawn(persist::sender(
                        Arc::clone(&self.shared),
                        Arc::clone(disk),
                        Arc::clone(&self.closing),
                    ));
                }
                self.sync_task = Arc::clone(disk)
                    .sync_loop()
                    .map(|f| tokio::spawn(f).abort_handle());
            }
            None => {
                let queue = Arc::new(tokio::sync::Mutex::new(rx));
                for _ in 0..self.num_consumers {
                    self.senders
                        .spawn(sender(Arc::clone(&self.shared), Arc::clone(&queue)));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Exporter for OtlpExporter {
    async fn export(&mut self, batch: Arc<Batch>) -> Result<(), BoxError> {
        self.start().await?;
        // Encoded spans go out as they came, a part of a request never split; more of them than
        // a request may hold are decoded here, so requests stay within `send_batch_size`.
        let batch = if batch.is_encoded() && batch.len() > self.shared.send_batch_size {
            let n = batch.len() as u64;
            match Batch::decoded(batch) {
                Ok(b) => b,
                Err(why) => {
                    // The receiver checked them: not expected, but never lost silently.
                    error!(exporter = %self.shared.id, "encoded spans cannot be decoded: {why}");
                    self.shared.telemetry.add_dropped("undecodable", n);
                    return Ok(());
                }
            }
        } else {
            batch
        };
        let n = batch.len() as u64;
        if self.tx.is_none() {
            return Err("export after shutdown".into());
        }
        if let Some(ended) = self.senders.try_join_next() {
            return Err(sender_died(ended).into());
        }
        if let Some(disk) = &self.disk {
            let (max, when_full) = (self.shared.send_batch_size, self.when_full);
            return persist::append(
                disk,
                &self.shared,
                &mut self.resources,
                batch,
                max,
                when_full,
            )
            .await;
        }
        // A batch larger than the whole queue takes all of it (it is then sent alone).
        let units = match self.sizer {
            Sizer::Items => batch.len().clamp(1, self.queue_size),
            Sizer::Requests => 1,
        } as u32;
        let room = match self.when_full {
            // Cancel-safe: nothing is counted unless the batch is queued. A sender dying while
            // this waits for room ends the wait.
            WhenFull::Block => tokio::select! {
                biased;
                Some(ended) = self.senders.join_next() => return Err(sender_died(ended).into()),
                room = Arc::clone(&self.room).acquire_many_owned(units) => match room {
                    Ok(room) => room,
                    Err(_) => return Err(self.why_stopped().await.into()),
                },
            },
            // `drop_oldest` needs storage (refused by validation otherwise).
            WhenFull::DropNewest | WhenFull::DropOldest => {
                match Arc::clone(&self.room).try_acquire_many_owned(units) {
                    Ok(room) => room,
                    Err(tokio::sync::TryAcquireError::NoPermits) => {
                        self.shared.telemetry.add_dropped("sending_queue_full", n);
                        return Ok(());
                    }
                    Err(tokio::sync::TryAcquireError::Closed) => {
                        return Err(self.why_stopped().await.into())
                    }
                }
            }
        };
        let tx = self.tx.as_ref().expect("checked above");
        if let Ok(permit) = tx.reserve().await {
            self.shared.add_outstanding(n);
            permit.send((batch, room));
            return Ok(());
        }
        Err(self.why_stopped().await.into())
    }

    fn counts_delivery(&self) -> bool {
        true
    }

    /// With the queue on disk, a tick starts the senders if the exporter was built outside a
    /// runtime: a backlog goes out before the first batch comes.
    fn tick_interval(&self) -> Option<Duration> {
        self.storage.as_ref().map(|_| Duration::from_millis(250))
    }

    async fn tick(&mut self, _now: std::time::SystemTime) -> Result<(), BoxError> {
        self.start().await?;
        Ok(())
    }

    /// Requests as received go out as they came, unless spans must be read: load balancing
    /// routes each span by its trace id, and `resource:` extras rewrite the resource.
    fn takes_encoded(&self) -> bool {
        self.shared.balancer.is_none() && self.shared.resource.is_empty()
    }

    async fn shutdown(&mut self) -> Result<(), BoxError> {
        self.start().await?;
        // Closing the queue lets the senders drain it and stop; the engine's deadline bounds this.
        self.tx = None;
        self.closing.send_replace(true);
        if let Some(disk) = &self.disk {
            // The senders drain the disk (or, once a reload's new instance has the queue, give
            // it what they hold and stop), then end.
            while let Some(r) = self.senders.join_next().await {
                if let Err(e) = r {
                    if e.is_panic() {
                        return Err(format!("an otlp sender panicked: {e}").into());
                    }
                }
            }
            if let Some(task) = self.sync_task.take() {
                task.abort();
            }
            let disk = Arc::clone(disk);
            tokio::task::spawn_blocking(move || disk.queue.sync())
                .await
                .map_err(|e| e.to_string())??;
            return Ok(());
        }
        while let Some(r) = self.senders.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    return Err(format!("an otlp sender panicked: {e}").into());
                }
            }
        }
        Ok(())
    }
}

impl OtlpExporter {
    /// Why the queue closed while the exporter runs: the senders ended, so their reason (a
    /// panic's message) is waiting in the join set.
    async fn why_stopped(&mut self) -> String {
        match self.senders.join_next().await {
            Some(ended) => sender_died(ended),
            None => "the senders stopped".to_string(),
        }
    }
}

/// Why a sender task ended before the exporter shut down.
fn sender_died(ended: Result<(), tokio::task::JoinError>) -> String {
    match ended {
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("an otlp sender panicked ({msg}): the exporter cannot send any more")
        }
        _ => "an otlp sender stopped: the exporter cannot send any more".to_string(),
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        // Aborted at the shutdown deadline (or shut down normally: nothing left then).
        self.senders.abort_all();
        if let Some(task) = self.sync_task.take() {
            task.abort();
        }
        if let Some(disk) = &self.disk {
            // Unacknowledged records stay on disk and go out at the next start: not lost.
            let s = disk.queue.stats();
            if s.records > 0 && !disk.taken_over() {
                warn!(exporter = %self.shared.id, records = s.records, bytes = s.bytes, dir = %disk.dir.display(), "records kept in the sending queue on disk: sent at the next start");
            }
            return;
        }
        let n = self.shared.ledger.abandon();
        if n > 0 {
            error!(exporter = %self.shared.id, records = n, "shutdown deadline passed with records still queued or retrying: dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::Flow;

    /// Makes every sender panic when it takes a batch.
    pub(crate) static SENDERS_PANIC: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    #[test]
    fn a_sender_that_dies_fails_the_exporter_instead_of_filling_its_queue() {
        use oxeye_api::testing::{span_batch, ExporterHarness};
        SENDERS_PANIC.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut h = ExporterHarness::new::<OtlpFactory>(
            "{endpoint: 'http://127.0.0.1:9', sending_queue: {queue_size: 20, num_consumers: 2}}",
        )
        .expect("builds");
        let mut failed = None;
        for _ in 0..100 {
            match h.export(span_batch(10)) {
                Ok(()) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        SENDERS_PANIC.store(false, std::sync::atomic::Ordering::Relaxed);
        let failed = failed.expect("the exporter fails once its senders died");
        assert!(failed.contains("an otlp sender panicked"), "{failed}");
        assert!(failed.contains("a deliberate panic"), "{failed}");
    }

    #[test]
    fn requests_hold_at_most_max_records_and_keep_signals_apart() {
        let r = Arc::new(Resource::default());
        let flow = Flow {
            src_addr: std::net::Ipv4Addr::LOCALHOST.into(),
            dst_addr: std::net::Ipv4Addr::LOCALHOST.into(),
            src_port: 1,
            dst_port: 2,
            transport: Default::default(),
            ether_type: 0x0800,
            ifindex: 1,
            interface: None,
            direction: Default::default(),
            packets: 1,
            bytes: 1,
            tcp_flags: Default::default(),
            first_seen_unix_ns: 1,
            last_seen_unix_ns: 2,
            window_start_unix_ns: 0,
            window_end_unix_ns: 0,
            attributes: Default::default(),
        };
        let batches = vec![
            Arc::new(Batch::spans(Arc::clone(&r), vec![Span::default(); 2500])),
            Arc::new(Batch::flows(Arc::clone(&r), vec![flow; 10])),
            Arc::new(Batch::spans(Arc::clone(&r), vec![Span::default(); 100])),
            Arc::new(oxeye_api::testing::sample_batch(1500)),
            Arc::new(oxeye_api::testing::metric_batch(2500)),
            Arc::new(oxeye_api::testing::log_batch(1200)),
        ];
        let mut resources = encode::Resources::new(&Default::default());
        let reqs = requests(&mut resources, &batches, 1000, |_| false);
        let sizes: Vec<(OtlpSignal, u64)> = reqs.iter().map(|(s, _, n)| (*s, *n)).collect();
        assert_eq!(
            sizes,
            [
                (OtlpSignal::Traces, 1000),
                (OtlpSignal::Traces, 1000),
                (OtlpSignal::Traces, 600),
                (OtlpSignal::Metrics, 10),
                (OtlpSignal::Metrics, 1000),
                (OtlpSignal::Metrics, 1000),
                (OtlpSignal::Metrics, 500),
                (OtlpSignal::Logs, 1000),
                (OtlpSignal::Logs, 200),
                (OtlpSignal::Profiles, 1000),
                (OtlpSignal::Profiles, 500)
            ]
        );
        for (_, req, n) in &reqs {
            let counted: usize = match req {
                Request::Traces(t) => <opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as prost::Message>::decode(t.bytes())
                    .expect("decodes")
                    .resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .map(|ss| ss.spans.len())
                    .sum(),
                // A flow is two points (bytes, packets) counted once: packets are left out.
                Request::Metrics(m) => m.resource_metrics[0].scope_metrics[0]
                    .metrics
                    .iter()
                    .filter(|m| m.name != encode::FLOW_PACKETS)
                    .map(|m| {
                        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
                        match m.data.as_ref() {
                            Some(Data::Sum(s)) => s.data_points.len(),
                            Some(Data::Gauge(g)) => g.data_points.len(),
                            Some(Data::Histogram(h)) => h.data_points.len(),
                            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                            Some(Data::Summary(s)) => s.data_points.len(),
                            None => 0,
                        }
                    })
                    .sum(),
                Request::Logs(l) => l
                    .resource_logs
                    .iter()
                    .flat_map(|rl| &rl.scope_logs)
                    .map(|sl| sl.log_records.len())
                    .sum(),
                Request::Encoded(..) | Request::Gzipped(..) => {
                    unreachable!("no encoded batches here")
                }
                Request::Profiles(p) => p
                    .resource_profiles
                    .iter()
                    .flat_map(|rp| &rp.scope_profiles)
                    .flat_map(|sp| &sp.profiles)
                    .map(|p| p.sample.len())
                    .sum(),
            };
            assert_eq!(counted as u64, *n);
        }
    }

    #[test]
    fn encoded_spans_go_out_as_received_beside_decoded_ones() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let mut resources = encode::Resources::new(&Default::default());
        let theirs = Arc::new(Resource {
            schema_url: Some("theirs".into()),
            ..Resource::default()
        });
        let spans = oxeye_api::testing::spans(&[Arc::new(oxeye_api::testing::span_batch(200))])
            .into_iter()
            .cloned()
            .collect::<Vec<_>>();
        let received = wire::trace_message(&mut resources, spans.iter().map(|s| (&theirs, s)));
        let encoded = Records::Encoded(oxeye_api::EncodedSpans::new(
            received.bytes().to_vec().into(),
            200,
            |_| Err("not decoded by the exporter".into()),
        ));
        let ours = Arc::new(Resource::default());
        let batches = vec![
            Arc::new(Batch::spans(Arc::clone(&ours), vec![Span::default(); 300])),
            Arc::new(Batch {
                resource: Arc::clone(&theirs),
                records: encoded,
            }),
            Arc::new(Batch::spans(Arc::clone(&ours), vec![Span::default(); 100])),
        ];
        let count = |reqs: &[(OtlpSignal, Request, u64)]| -> Vec<(u64, usize, usize)> {
            reqs.iter()
                .map(|(_, r, n)| {
                    let Request::Traces(t) = r else {
                        panic!("traces")
                    };
                    let req = ExportTraceServiceRequest::decode(t.bytes()).expect("decodes");
                    let spans = req
                        .resource_spans
                        .iter()
                        .flat_map(|rs| &rs.scope_spans)
                        .map(|ss| ss.spans.len())
                        .sum();
                    (*n, spans, req.resource_spans.len())
                })
                .collect()
        };
        let one = requests(&mut resources, &batches, 1000, |_| false);
        assert_eq!(count(&one), [(600, 600, 2)]);
        // The received request's spans are in it byte for byte.
        let Request::Traces(t) = &one[0].1 else {
            panic!()
        };
        assert!(t.bytes().ends_with(received.bytes()));
        // Encoded spans are never split; decoded ones fill around them.
        let split = requests(&mut resources, &batches, 250, |_| false);
        assert_eq!(count(&split), [(250, 250, 1), (250, 250, 2), (100, 100, 1)]);
    }
}
