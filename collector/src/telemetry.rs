//! Self-telemetry: Prometheus text at `/metrics`, `/healthz`, `/readyz`, and the periodic
//! one-line summary. Everything is read from the engine's [`Registry`]; components count nothing
//! themselves beyond their own drops.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::engine::Registry;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every counter in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    let labels = |c: &crate::engine::ComponentInfo| {
        let mut l = format!("kind=\"{}\",id=\"{}\"", c.kind.as_str(), escape(&c.id));
        if let Some(p) = &c.pipeline {
            let _ = write!(l, ",pipeline=\"{}\"", escape(p));
        }
        l
    };
    type Getter = fn(&oxeye_api::Telemetry) -> u64;
    let series: [(&str, &str, Getter); 3] = [
        (
            "oxeye_component_received_records_total",
            "Records taken in by a component.",
            |t| t.received(),
        ),
        (
            "oxeye_component_emitted_records_total",
            "Records passed on (exported, for exporters).",
            |t| t.emitted(),
        ),
        (
            "oxeye_component_errors_total",
            "Errors of a component.",
            |t| t.errors(),
        ),
    ];
    for (name, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for c in &registry.components {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(c), get(&c.telemetry));
        }
    }
    let name = "oxeye_component_dropped_records_total";
    let _ = writeln!(
        out,
        "# HELP {name} Records dropped by or at the queue of a component.\n# TYPE {name} counter"
    );
    for c in &registry.components {
        for (reason, n) in c.telemetry.dropped() {
            let _ = writeln!(out, "{name}{{{},reason=\"{reason}\"}} {n}", labels(c));
        }
    }
    for c in &registry.components {
        for (counter, source, n) in c.telemetry.counters() {
            let _ = writeln!(
                out,
                "oxeye_{counter}_total{{{},source=\"{}\"}} {n}",
                labels(c),
                escape(&source)
            );
        }
    }
    for (name, help, get) in [
        (
            "oxeye_queue_depth_batches",
            "Batches waiting on an edge.",
            (|e| e.depth()) as fn(&crate::engine::EdgeStats) -> u64,
        ),
        ("oxeye_queue_records", "Records waiting on an edge.", |e| {
            e.queued_records()
        }),
        (
            "oxeye_queue_capacity_batches",
            "Capacity of an edge.",
            |e| e.capacity as u64,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for e in &registry.edges {
            let _ = writeln!(
                out,
                "{name}{{pipeline=\"{}\",from=\"{}\",to=\"{}\"}} {}",
                escape(&e.pipeline),
                escape(&e.from),
                escape(&e.to),
                get(e)
            );
        }
    }
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

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            // Read the whole request head: a client may send it in several writes, and closing
            // with unread data would reset the connection.
            let mut buf = Vec::with_capacity(1024);
            let read_head = async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            };
            if !matches!(
                tokio::time::timeout(Duration::from_secs(5), read_head).await,
                Ok(true)
            ) {
                return;
            }
            let request = String::from_utf8_lossy(&buf);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", render(&registry)),
                "/healthz" if registry.healthy.load(Ordering::Relaxed) => ("200 OK", "ok\n".into()),
                "/healthz" => ("503 Service Unavailable", "a component failed\n".into()),
                "/readyz" if registry.ready.load(Ordering::Relaxed) => ("200 OK", "ready\n".into()),
                "/readyz" => ("503 Service Unavailable", "not ready\n".into()),
                _ => (
                    "404 Not Found",
                    "try /metrics, /healthz or /readyz\n".into(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = sock.write_all(response.as_bytes()).await {
                debug!("metrics client went away: {e}");
            }
        });
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
            "records/s in {} out {} dropped {} | total in {} out {} dropped {} queued {}",
            rate(now.0 - last.0, dt),
            rate(now.1 - last.1, dt),
            rate(now.2 - last.2, dt),
            now.0,
            now.1,
            now.2,
            registry.records_queued()
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
