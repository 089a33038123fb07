//! Self-telemetry: `/metrics` (Prometheus text format, rendered by the `prometheus` crate),
//! `/healthz` and `/readyz` (served by axum), and the periodic one-line summary. Everything is
//! read from the engine's [`Registry`] at scrape time; components count nothing themselves
//! beyond their own drops, losses and named counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::core::Collector;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
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

/// One family: HELP, TYPE and every sample of the name together.
fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .map(|(labels, value)| {
            let mut m = Metric::from_label(
                labels
                    .into_iter()
                    .map(|(k, v)| {
                        let mut l = LabelPair::default();
                        l.set_name(k.to_string());
                        l.set_value(v);
                        l
                    })
                    .collect(),
            );
            match kind {
                MetricType::GAUGE => {
                    let mut g = Gauge::default();
                    g.set_value(value as f64);
                    m.set_gauge(g);
                }
                _ => {
                    let mut c = Counter::default();
                    c.set_value(value as f64);
                    m.set_counter(c);
                }
            }
            m
        })
        .collect();
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn edge_gauge(
    name: &str,
    help: &str,
    edges: &[Arc<EdgeStats>],
    get: fn(&EdgeStats) -> u64,
) -> MetricFamily {
    family(
        name,
        help,
        MetricType::GAUGE,
        edges.iter().map(|e| {
            let labels: Labels = vec![
                ("pipeline", e.pipeline.clone()),
                ("from", e.from.clone()),
                ("to", e.to.clone()),
            ];
            (labels, get(e))
        }),
    )
}

/// Every family read from the engine's registry.
fn families(reg: &Registry) -> Vec<MetricFamily> {
    let components = reg.components();
    let edges = reg.edges();
    let each = |get: fn(&oxeye_api::Telemetry) -> u64| {
        components
            .iter()
            .map(move |c| (component_labels(c), get(&c.telemetry)))
    };
    let mut out = vec![
        family(
            "oxeye_component_received_records_total",
            "Records taken in by a component.",
            MetricType::COUNTER,
            each(|t| t.received()),
        ),
        family(
            "oxeye_component_emitted_records_total",
            "Records passed on by a component (for exporters: delivered).",
            MetricType::COUNTER,
            each(|t| t.emitted()),
        ),
        family(
            "oxeye_component_errors_total",
            "Errors of a component.",
            MetricType::COUNTER,
            each(|t| t.errors()),
        ),
        family(
            "oxeye_component_dropped_records_total",
            "Records dropped by, or at the queue of, a component, by reason.",
            MetricType::COUNTER,
            components.iter().flat_map(|c| {
                c.telemetry.dropped().into_iter().map(move |(reason, n)| {
                    let mut l = component_labels(c);
                    l.push(("reason", reason.to_string()));
                    (l, n)
                })
            }),
        ),
        family(
            "oxeye_lost_total",
            "Lost before the pipeline (e.g. in the kernel: ring buffer full, LRU evictions), by reason, unit and source.",
            MetricType::COUNTER,
            components.iter().flat_map(|c| {
                c.telemetry.lost().into_iter().map(move |l| {
                    let mut labels = component_labels(c);
                    labels.push(("reason", l.reason.to_string()));
                    labels.push(("unit", l.unit.as_str().to_string()));
                    labels.push(("source", l.source));
                    (labels, l.value)
                })
            }),
        ),
    ];
    // Components' own counters and gauges: one family per name, every component's samples
    // together.
    type Own = fn(&oxeye_api::Telemetry) -> Vec<(&'static str, String, u64)>;
    let own: [(Own, &str, &str, MetricType); 2] = [
        (|t| t.counters(), "_total", "Counted", MetricType::COUNTER),
        (|t| t.gauges(), "", "Measured", MetricType::GAUGE),
    ];
    for (get, suffix, how, kind) in own {
        let mut named: BTreeMap<&'static str, Vec<(Labels, u64)>> = BTreeMap::new();
        for c in &components {
            for (name, source, n) in get(&c.telemetry) {
                let mut l = component_labels(c);
                l.push(("source", source));
                named.entry(name).or_default().push((l, n));
            }
        }
        for (name, samples) in named {
            out.push(family(
                &format!("oxeye_{name}{suffix}"),
                &format!("{how} by the component itself ({name}), per source: see its README."),
                kind,
                samples,
            ));
        }
    }
    out.extend([
        edge_gauge(
            "oxeye_queue_depth_batches",
            "Batches waiting on an edge.",
            &edges,
            |e| e.depth(),
        ),
        edge_gauge(
            "oxeye_queue_records",
            "Records waiting on an edge.",
            &edges,
            |e| e.queued_records(),
        ),
        edge_gauge(
            "oxeye_queue_capacity_batches",
            "Capacity of an edge, in batches.",
            &edges,
            |e| e.capacity as u64,
        ),
        family(
            "oxeye_config_reloads_total",
            "Config reloads, by result (applied; rejected: invalid, or a component failed to build).",
            MetricType::COUNTER,
            {
                let (applied, rejected) = reg.reloads();
                [
                    (vec![("result", "applied".to_string())], applied),
                    (vec![("result", "rejected".to_string())], rejected),
                ]
            },
        ),
        family(
            "oxeye_healthy",
            "1 while no component has failed.",
            MetricType::GAUGE,
            [(Labels::new(), reg.healthy.load(Ordering::Relaxed) as u64)],
        ),
    ]);
    // The text format has no empty families (e.g. no losses counted in this pipeline).
    out.retain(|f| !f.get_metric().is_empty());
    out
}

/// The exposition (Prometheus text format 0.0.4): oxeye's families, then the process's own
/// (`process_resident_memory_bytes`, `process_cpu_seconds_total`, open fds, ...).
pub fn render(registry: &Registry) -> String {
    // Built once: its descriptors do not change between scrapes.
    static PROCESS: std::sync::OnceLock<prometheus::process_collector::ProcessCollector> =
        std::sync::OnceLock::new();
    let mut all = families(registry);
    all.extend(
        PROCESS
            .get_or_init(prometheus::process_collector::ProcessCollector::for_self)
            .collect(),
    );
    prometheus::TextEncoder::new()
        .encode_to_string(&all)
        .unwrap_or_else(|e| format!("# oxeye: cannot render metrics: {e}\n"))
}

/// Why the metrics endpoint cannot listen where it is told to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Not `host:port` or `:port`.
    #[error("`{0}` is not an address: write host:port, e.g. 127.0.0.1:8888, or :8888")]
    Invalid(String),
    /// The address is taken, or not this host's.
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

/// Parses `host:port` or `:port` (loopback).
pub fn parse_address(address: &str) -> Result<SocketAddr, AddressError> {
    let full = if address.starts_with(':') {
        format!("127.0.0.1{address}")
    } else {
        address.to_string()
    };
    full.parse()
        .map_err(|_| AddressError::Invalid(address.to_string()))
}

/// Binds the metrics endpoint (so a bad address fails before anything starts).
pub async fn bind(address: &str) -> Result<TcpListener, AddressError> {
    let addr = parse_address(address)?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| AddressError::Bind { addr, source })
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    // The process metrics read /proc: rendered on the blocking pool.
    let body = oxeye_api::blocking::unblock(move || render(&registry)).await;
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body)
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

/// What `POST /-/reload` may do: reload (`Some`), nothing to reload, or off.
#[derive(Clone)]
struct Reloads {
    trigger: Option<crate::reload::Trigger>,
    enabled: bool,
}

async fn reload(State(reloads): State<Reloads>) -> (StatusCode, String) {
    if !reloads.enabled {
        return (
            StatusCode::FORBIDDEN,
            "POST /-/reload is off: start oxeye with --enable-reload-endpoint to take it (anyone who reaches this address could reload the config); SIGHUP and --watch-config reload without it\n"
                .into(),
        );
    }
    match reloads.trigger {
        None => (
            StatusCode::CONFLICT,
            "nothing to reload: oxeye runs the embedded default pipeline (start it with -c FILE)\n"
                .into(),
        ),
        Some(t) => match t.reload().await {
            Ok(msg) => (StatusCode::OK, format!("{msg}\n")),
            Err(msg) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{msg}\n")),
        },
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and (with `reload_endpoint`) `POST /-/reload` until
/// the task is dropped.
/// axum's accept loop backs off when accepting fails (e.g. EMFILE: out of file descriptors)
/// instead of spinning.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    reloads: Option<crate::reload::Trigger>,
    reload_endpoint: bool,
) {
    let reloads = Reloads {
        trigger: reloads,
        enabled: reload_endpoint,
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(registry)
        .merge(
            axum::Router::new()
                .route("/-/reload", axum::routing::post(reload))
                .with_state(reloads),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "try /metrics, /healthz, /readyz or POST /-/reload\n",
            )
        });
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
            "records/s in {} out {} dropped {} | total in {} out {} dropped {} queued {}{} | {}",
            rate(now.0 - last.0, dt),
            rate(now.1 - last.1, dt),
            rate(now.2 - last.2, dt),
            now.0,
            now.1,
            now.2,
            registry.records_queued(),
            registry.lost_summary(),
            registry.breakdown().join("; ")
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
            parse_address(":8888").ok(),
            Some("127.0.0.1:8888".parse().expect("addr"))
        );
        assert_eq!(
            parse_address("0.0.0.0:9").ok(),
            Some("0.0.0.0:9".parse().expect("addr"))
        );
        assert!(parse_address("localhost").is_err());
    }
}
