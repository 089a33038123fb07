//! Self-telemetry: `/metrics` (OpenMetrics text, rendered by `prometheus-client`), `/healthz`
//! and `/readyz` (served by axum), and the periodic one-line summary. Everything is read from
//! the engine's [`Registry`] at scrape time; components count nothing themselves beyond their
//! own drops, losses and named counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::net::TcpListener;
use tracing::info;

use crate::engine::{ComponentInfo, EdgeStats, Registry};

type Labels = Vec<(&'static str, String)>;

fn component_labels(c: &ComponentInfo) -> Labels {
    let mut l = vec![("kind", c.kind.as_str().to_string()), ("id", c.id.clone())];
    if let Some(p) = &c.pipeline {
        l.push(("pipeline", p.clone()));
    }
    l
}

/// Reads the engine's registry on each scrape. Each family is written once, with its HELP and
/// TYPE, all its samples together.
#[derive(Debug)]
struct Engine(Arc<Registry>);

/// Writes one counter family: `name` without `_total` (OpenMetrics appends it).
fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    edges: &[Arc<EdgeStats>],
    get: fn(&EdgeStats) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for e in edges {
        let labels: Labels = vec![
            ("pipeline", e.pipeline.clone()),
            ("from", e.from.clone()),
            ("to", e.to.clone()),
        ];
        ConstGauge::new(get(e) as i64).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Engine {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let reg = &self.0;
        let each = |get: fn(&oxeye_api::Telemetry) -> u64| {
            reg.components
                .iter()
                .map(move |c| (component_labels(c), get(&c.telemetry)))
        };
        counters(
            &mut encoder,
            "oxeye_component_received_records",
            "Records taken in by a component.",
            each(|t| t.received()),
        )?;
        counters(
            &mut encoder,
            "oxeye_component_emitted_records",
            "Records passed on by a component (for exporters: delivered).",
            each(|t| t.emitted()),
        )?;
        counters(
            &mut encoder,
            "oxeye_component_errors",
            "Errors of a component.",
            each(|t| t.errors()),
        )?;
        counters(
            &mut encoder,
            "oxeye_component_dropped_records",
            "Records dropped by, or at the queue of, a component, by reason.",
            reg.components.iter().flat_map(|c| {
                c.telemetry.dropped().into_iter().map(move |(reason, n)| {
                    let mut l = component_labels(c);
                    l.push(("reason", reason.to_string()));
                    (l, n)
                })
            }),
        )?;
        counters(
            &mut encoder,
            "oxeye_lost",
            "Lost before the pipeline (e.g. in the kernel: ring buffer full, LRU evictions), by reason, unit and source.",
            reg.components.iter().flat_map(|c| {
                c.telemetry.lost().into_iter().map(move |l| {
                    let mut labels = component_labels(c);
                    labels.push(("reason", l.reason.to_string()));
                    labels.push(("unit", l.unit.as_str().to_string()));
                    labels.push(("source", l.source));
                    (labels, l.value)
                })
            }),
        )?;
        // Components' own counters, one family per name, all components' samples together.
        let mut named: BTreeMap<&'static str, Vec<(Labels, u64)>> = BTreeMap::new();
        for c in &reg.components {
            for (name, source, n) in c.telemetry.counters() {
                let mut l = component_labels(c);
                l.push(("source", source));
                named.entry(name).or_default().push((l, n));
            }
        }
        for (name, samples) in named {
            counters(
                &mut encoder,
                &format!("oxeye_{name}"),
                &format!("Counted by the component itself ({name}), per source; see its README."),
                samples,
            )?;
        }
        gauges(
            &mut encoder,
            "oxeye_queue_depth_batches",
            "Batches waiting on an edge.",
            &reg.edges,
            |e| e.depth(),
        )?;
        gauges(
            &mut encoder,
            "oxeye_queue_records",
            "Records waiting on an edge.",
            &reg.edges,
            |e| e.queued_records(),
        )?;
        gauges(
            &mut encoder,
            "oxeye_queue_capacity_batches",
            "Capacity of an edge, in batches.",
            &reg.edges,
            |e| e.capacity as u64,
        )?;
        let mut up = encoder.encode_descriptor(
            "oxeye_healthy",
            "1 while no component has failed.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(reg.healthy.load(Ordering::Relaxed) as i64)
            .encode(up.encode_family(&Labels::new())?)?;
        Ok(())
    }
}

/// The exposition of every counter and gauge (OpenMetrics text).
pub fn render(registry: &Arc<Registry>) -> String {
    let mut r = prometheus_client::registry::Registry::default();
    r.register_collector(Box::new(Engine(Arc::clone(registry))));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

/// Parses `host:port` or `:port` (loopback).
pub fn parse_address(address: &str) -> Result<SocketAddr, String> {
    let full = if address.starts_with(':') {
        format!("127.0.0.1{address}")
    } else {
        address.to_string()
    };
    full.parse().map_err(|_| {
        format!("`{address}` is not an address: write host:port, e.g. 127.0.0.1:8888, or :8888")
    })
}

/// Binds the metrics endpoint (so a bad address fails before anything starts).
pub async fn bind(address: &str) -> Result<TcpListener, String> {
    let addr = parse_address(address)?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for /metrics: {e}"))
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&registry),
    )
}

async fn healthz(State(registry): State<Arc<Registry>>) -> (StatusCode, &'static str) {
    if registry.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "a component failed\n")
    }
}

async fn readyz(State(registry): State<Arc<Registry>>) -> (StatusCode, &'static str) {
    if registry.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped. axum's accept loop
/// backs off when accepting fails (e.g. EMFILE: out of file descriptors) instead of spinning.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n") })
        .with_state(registry);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("self-metrics endpoint stopped: {e}");
    }
}

fn rate(n: u64, d: Duration) -> String {
    let r = n as f64 / d.as_secs_f64().max(1e-9);
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// Logs records/s in, out and dropped every `every`, until the task is dropped.
pub async fn summarize(registry: Arc<Registry>, every: Duration) {
    let mut last = (
        registry.records_in(),
        registry.records_out(),
        registry.records_dropped(),
    );
    let mut at = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let now = (
            registry.records_in(),
            registry.records_out(),
            registry.records_dropped(),
        );
        let dt = at.elapsed();
        info!(
            "records/s in {} out {} dropped {} | total in {} out {} dropped {} queued {}{}",
            rate(now.0 - last.0, dt),
            rate(now.1 - last.1, dt),
            rate(now.2 - last.2, dt),
            now.0,
            now.1,
            now.2,
            registry.records_queued(),
            registry.lost_summary()
        );
        last = now;
        at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address(":8888"),
            Ok("127.0.0.1:8888".parse().expect("addr"))
        );
        assert_eq!(
            parse_address("0.0.0.0:9"),
            Ok("0.0.0.0:9".parse().expect("addr"))
        );
        assert!(parse_address("localhost").is_err());
    }
}
