//! Live reload: configs applied as diffs while records flow, nothing lost; invalid edits change
//! nothing; the triggers (SIGHUP, `POST /-/reload`, `--watch-config`) of the binary.

use std::collections::HashSet;
use std::io::Read;
use std::time::{Duration, Instant};

use oxeye::config::load;
use oxeye::engine::{Engine, Reload};
use oxeye_api::{Records, Value};
use oxeye_tests::{captured, final_counts, free_port, http_get, signal, spawn, temp_config};

fn config(value: &str, second_exporter: bool) -> String {
    let exporters = if second_exporter {
        "[capture/reload-one, capture/reload-two]"
    } else {
        "[capture/reload-one]"
    };
    format!(
        "receivers:
  synthetic: {{seed: 21, batch_size: 512, spans: {{count: 1000000, rate: 200000}}}}
processors:
  transform: {{trace_statements: ['set(attributes[\"v\"], \"{value}\")']}}
  nop:
exporters:
  capture/reload-one:
  capture/reload-two:
service:
  telemetry: {{logs: {{summary_interval: 0s}}}}
  pipelines:
    traces: {{receivers: [synthetic], processors: [transform, nop], exporters: {exporters}}}
"
    )
}

#[test]
fn ten_reloads_under_load_lose_and_duplicate_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let first = load("reload.yaml", &config("a", false))
        .config
        .expect("valid");
    let engine = Engine::build(&first).expect("builds");
    let registry = engine.registry();
    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let report = rt.block_on(async move {
        let run = tokio::spawn(engine.run_with_reloads(stop_rx, reload_rx));
        // Ten reloads in four seconds, while 1 000 000 spans arrive over five: the transform's
        // value alternates, and the second exporter comes and goes.
        let mut latencies = Vec::new();
        for i in 1..=10 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let value = if i % 2 == 0 { "a" } else { "b" };
            let cfg = load("reload.yaml", &config(value, i % 2 == 1))
                .config
                .expect("valid");
            let (done, result) = tokio::sync::oneshot::channel();
            let t0 = Instant::now();
            reload_tx
                .send(Reload { config: cfg, done })
                .await
                .expect("engine runs");
            let msg = result.await.expect("answered").expect("applied");
            latencies.push(t0.elapsed());
            assert!(msg.contains("~processors/transform[traces]"), "{msg}");
            assert!(
                msg.contains("(3 unchanged)"),
                "receiver, nop and exporter run on: {msg}"
            );
            let two = if i % 2 == 1 {
                "+exporters/capture/reload-two"
            } else {
                "-exporters/capture/reload-two"
            };
            assert!(msg.contains(two), "{msg}");
        }
        eprintln!("reload latencies: {latencies:?}");
        let report = run.await.expect("engine task");
        drop(stop_tx);
        report
    });
    assert!(report.clean(), "{:?}", report.failures);
    assert_eq!(registry.reloads(), (10, 0));
    let reg = &report.registry;
    assert_eq!(reg.records_in(), 1_000_000);
    assert_eq!(reg.records_dropped(), 0, "nothing dropped anywhere");
    // The exporter that stayed got every span exactly once, with both values of the transform.
    let mut ids = HashSet::new();
    let mut values = HashSet::new();
    let mut n = 0;
    for b in captured("capture/reload-one") {
        let Records::Spans(spans) = &b.records else {
            panic!("spans")
        };
        for s in spans {
            n += 1;
            ids.insert((s.trace_id, s.span_id));
            if let Some(Value::Str(v)) = s.attributes.get("v") {
                values.insert(v.to_string());
            }
        }
    }
    assert_eq!(n, 1_000_000, "spans at the exporter that stayed");
    assert_eq!(ids.len(), 1_000_000, "no span duplicated");
    assert_eq!(values.len(), 2, "both settings applied: {values:?}");
    // What the second exporter got while it was wired, it counted.
    let two: usize = captured("capture/reload-two").iter().map(|b| b.len()).sum();
    assert!(two > 0 && two < 1_000_000, "{two}");
    assert_eq!(
        report.received(oxeye_api::Kind::Exporter, "capture/reload-two"),
        two as u64
    );
}

/// Runs `oxeye run` with `args`; returns the child after its metrics endpoint answers.
fn start(args: &[&str], port: u16) -> oxeye_tests::KillOnDrop {
    let child = oxeye_tests::KillOnDrop(spawn(args));
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(port, "/readyz").map_or(true, |r| !r.contains("ready")) {
        assert!(Instant::now() < deadline, "oxeye did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn reloads(port: u16) -> (u64, u64) {
    let m = http_get(port, "/metrics").expect("metrics");
    let get = |result: &str| {
        m.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "oxeye_config_reloads_total{{result=\"{result}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    (get("applied"), get("rejected"))
}

fn post_reload(port: u16) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn triggers_and_an_invalid_edit() {
    let port = free_port();
    let yaml = |statement: &str, exporters: &str| {
        format!(
            "receivers:\n  synthetic: {{seed: 2, spans: {{rate: 2000}}}}\nprocessors:\n  transform: {{trace_statements: ['{statement}']}}\nexporters:\n  nop:\n  nop/2:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}, metrics: {{address: ':{port}'}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], processors: [transform], exporters: [{exporters}]}}\n"
        )
    };
    let path = temp_config("reload-triggers", &yaml("set(attributes[\"v\"], 1)", "nop"));
    let file = path.to_str().expect("utf8").to_string();
    let mut child = start(
        &[
            "run",
            "-c",
            &file,
            "--watch-config",
            "--enable-reload-endpoint",
        ],
        port,
    );

    // --watch-config: a saved edit is applied within a second.
    std::fs::write(&path, yaml("set(attributes[\"v\"], 2)", "nop, nop/2")).expect("write");
    let t0 = Instant::now();
    while reloads(port).0 < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the edit was not applied within 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // POST /-/reload answers with what changed (nothing, here).
    let answer = post_reload(port);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("config reloaded in") && answer.contains("nothing changed"),
        "{answer}"
    );
    // SIGHUP.
    signal(&child.0, libc::SIGHUP);
    let t0 = Instant::now();
    while reloads(port).0 < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // An invalid edit: refused with its position, the old config keeps running, health stays.
    std::fs::write(&path, yaml("set(attributes[\"v\"], 2) where", "nop")).expect("write");
    let t0 = Instant::now();
    while reloads(port).1 < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the invalid edit was not seen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(reloads(port), (3, 1), "the invalid edit is one rejection");
    let answer = post_reload(port);
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    assert!(
        answer.contains(&format!("{file}:4:")),
        "file:line:col in {answer}"
    );
    assert_eq!(reloads(port), (3, 2));
    assert!(http_get(port, "/healthz").expect("healthz").contains("ok"));
    let received = || {
        let m = http_get(port, "/metrics").expect("metrics");
        m.lines()
            .find(|l| {
                l.starts_with("oxeye_component_emitted_records_total") && l.contains("synthetic")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .expect("receiver counter")
    };
    let before = received();
    std::thread::sleep(Duration::from_millis(300));
    assert!(received() > before, "records still flow");

    signal(&child.0, libc::SIGTERM);
    let status = child.0.wait().expect("wait");
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    assert!(status.success(), "{stderr}");
    let (inn, out, dropped) = final_counts(&stderr).expect("final line");
    assert!(inn > 0 && dropped == 0 && out >= inn, "{stderr}");
    assert!(stderr.contains("+exporters/nop/2"), "{stderr}");
}

#[test]
fn a_receiver_that_cannot_take_a_change_is_replaced_even_when_already_stopped() {
    // `oneshot` claims live reconfiguration but has ended by the time the change comes: its
    // replacement must start (and the run end by itself once synthetic is done).
    let yaml = |tag: u64| {
        format!(
            "receivers:\n  synthetic: {{seed: 3, spans: {{count: 2000, rate: 2000}}}}\n  oneshot: {{tag: {tag}}}\nexporters:\n  nop:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [synthetic, oneshot], exporters: [nop]}}\n"
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = Engine::build(&load("r.yaml", &yaml(1)).config.expect("valid")).expect("builds");
    let before = oxeye_tests::ONESHOT_STARTS.load(std::sync::atomic::Ordering::Relaxed);
    let report = rt.block_on(async move {
        let (_stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let run = tokio::spawn(engine.run_with_reloads(stop_rx, rx));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (done, answer) = tokio::sync::oneshot::channel();
        tx.send(Reload {
            config: load("r.yaml", &yaml(2)).config.expect("valid"),
            done,
        })
        .await
        .expect("engine runs");
        let msg = answer.await.expect("answered").expect("applied");
        assert!(msg.contains("~receivers/oneshot (replaced:"), "{msg}");
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the run ends by itself")
            .expect("engine task")
    });
    assert!(report.clean(), "{:?}", report.failures);
    assert_eq!(
        oxeye_tests::ONESHOT_STARTS.load(std::sync::atomic::Ordering::Relaxed) - before,
        2,
        "the replacement started"
    );
}

#[test]
fn a_stop_during_a_slow_live_reconfiguration_is_honoured_at_once() {
    // `slowreconf` takes 8 s to answer a config change; the engine must not wait for it to
    // handle a stop (or anything else).
    let yaml = |tag: u64| {
        format!(
            "receivers:\n  slowreconf: {{delay: 8s, tag: {tag}}}\nexporters:\n  nop:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [slowreconf], exporters: [nop]}}\n"
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = Engine::build(&load("r.yaml", &yaml(1)).config.expect("valid")).expect("builds");
    let (report, stopped_in) = rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let run = tokio::spawn(engine.run_with_reloads(stop_rx, rx));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (done, answer) = tokio::sync::oneshot::channel();
        tx.send(Reload {
            config: load("r.yaml", &yaml(2)).config.expect("valid"),
            done,
        })
        .await
        .expect("engine runs");
        // The change is being taken; stop now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        stop_tx.send(()).await.expect("engine runs");
        let report = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the stop is honoured long before the change is answered")
            .expect("engine task");
        // The reload is answered too: it was applied, and the stop came first.
        let msg = answer.await.expect("answered").expect("applied");
        assert!(msg.contains("shutting down"), "{msg}");
        (report, t0.elapsed())
    });
    println!("stopped {stopped_in:?} after the request, during an 8 s reconfiguration");
    assert!(stopped_in < Duration::from_secs(1), "{stopped_in:?}");
    assert!(report.clean(), "{:?}", report.failures);
}

#[test]
fn the_reload_endpoint_is_off_unless_enabled() {
    let port = free_port();
    let yaml = format!(
        "receivers:\n  synthetic: {{seed: 2, spans: {{rate: 100}}}}\nexporters:\n  nop:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}, metrics: {{address: ':{port}'}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [nop]}}\n"
    );
    let path = temp_config("reload-off", &yaml);
    let _child = start(&["run", "-c", path.to_str().expect("utf8")], port);
    let answer = post_reload(port);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("--enable-reload-endpoint"), "{answer}");
    assert_eq!(reloads(port), (0, 0), "nothing reloaded");
}

#[test]
fn a_reload_applies_shutdown_timeout_and_refuses_a_new_resource() {
    // An exporter that stalls at its first batch holds the run until the deadline: the one the
    // reloaded config sets (300 ms), not the first one (30 s).
    let yaml = |timeout: &str, resource: &str| {
        format!(
            "receivers:\n  synthetic: {{seed: 5, spans: {{rate: 1000}}}}\nexporters:\n  chaos: {{stall_at: 0}}\nservice:\n  shutdown_timeout: {timeout}\n  resource: {{deployment.environment.name: {resource}}}\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [chaos]}}\n"
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = Engine::build(&load("r.yaml", &yaml("30s", "prod")).config.expect("valid"))
        .expect("builds");
    let (report, took) = rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let run = tokio::spawn(engine.run_with_reloads(stop_rx, rx));
        let reload = |text: String| {
            let tx = tx.clone();
            async move {
                let (done, answer) = tokio::sync::oneshot::channel();
                tx.send(Reload {
                    config: load("r.yaml", &text).config.expect("valid"),
                    done,
                })
                .await
                .expect("engine runs");
                answer.await.expect("answered")
            }
        };
        let refused = reload(yaml("300ms", "staging")).await.expect_err("refused");
        assert!(refused.contains("service.resource"), "{refused}");
        let applied = reload(yaml("300ms", "prod")).await.expect("applied");
        assert!(applied.contains("~service.shutdown_timeout"), "{applied}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        stop_tx.send(()).await.expect("engine runs");
        let report = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("ends at the new deadline")
            .expect("engine task");
        (report, t0.elapsed())
    });
    println!("stopped {took:?} after the request with a stalled exporter");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(report.abandoned.len(), 1, "{:?}", report.abandoned);
}

/// Spans → a `spanmetrics` connector (delta, so each span counts in exactly one point) →
/// metrics; the connector's dimension default is the reload's number.
fn connector_config(i: usize) -> String {
    format!(
        "receivers:
  synthetic: {{seed: 22, batch_size: 512, spans: {{count: 400000, rate: 200000}}}}
exporters:
  capture/connector-spans:
  capture/connector-metrics:
connectors:
  spanmetrics:
    aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA
    metrics_flush_interval: 100ms
    histogram: {{disable: true}}
    dimensions: [{{name: reload, default: '{i}'}}]
service:
  telemetry: {{logs: {{summary_interval: 0s}}}}
  pipelines:
    traces: {{receivers: [synthetic], exporters: [capture/connector-spans, spanmetrics]}}
    metrics: {{receivers: [spanmetrics], exporters: [capture/connector-metrics]}}
"
    )
}

#[test]
fn a_connector_replaced_under_load_counts_every_span_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let first = load("reload.yaml", &connector_config(0))
        .config
        .expect("valid");
    let engine = Engine::build(&first).expect("builds");
    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let report = rt.block_on(async move {
        let run = tokio::spawn(engine.run_with_reloads(stop_rx, reload_rx));
        for i in 1..=4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let cfg = load("reload.yaml", &connector_config(i))
                .config
                .expect("valid");
            let (done, result) = tokio::sync::oneshot::channel();
            reload_tx
                .send(Reload { config: cfg, done })
                .await
                .expect("engine runs");
            let msg = result.await.expect("answered").expect("applied");
            assert!(msg.contains("~connectors/spanmetrics"), "{msg}");
        }
        let report = run.await.expect("engine task");
        drop(stop_tx);
        report
    });
    assert!(report.clean(), "{:?}", report.failures);
    let reg = &report.registry;
    assert_eq!(reg.records_dropped(), 0, "nothing dropped anywhere");
    let spans: usize = captured("capture/connector-spans")
        .iter()
        .map(|b| b.len())
        .sum();
    assert_eq!(spans, 400_000);
    // Every span in exactly one calls point, whichever connector instance counted it.
    let mut calls = 0;
    let mut instances = HashSet::new();
    for b in captured("capture/connector-metrics") {
        let Records::Metrics(metrics) = &b.records else {
            panic!("metrics")
        };
        for m in metrics {
            let oxeye_api::MetricData::Sum(s) = &m.data else {
                panic!("calls only")
            };
            for p in &s.points {
                let Some(oxeye_api::metrics::Number::Int(n)) = p.value else {
                    panic!("an integer count")
                };
                calls += n;
                instances.insert(format!("{:?}", p.attributes.get("reload")));
            }
        }
    }
    assert_eq!(calls, 400_000, "calls over every flush of every instance");
    assert!(
        instances.len() >= 3,
        "several instances counted: {instances:?}"
    );
    assert_eq!(
        report.received(oxeye_api::Kind::Connector, "spanmetrics"),
        400_000
    );
}
