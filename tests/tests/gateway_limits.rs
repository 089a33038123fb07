//! The OTLP gateway under hostile load, as a binary users run (the default settings): slow and
//! silent connections do not stop a well-behaved client; a flood of large requests keeps the
//! process's memory bounded, every refused request told to the client and counted; a client
//! stalled mid-request cannot hold a shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use oxeye_tests::{free_port, KillOnDrop};
use prost::Message;

mod common;
use common::otlp::{http_post, sink_endpoint, Sink};

/// These tests measure a gateway's peak memory and its answers under load, each with a process
/// of its own: run side by side on two cores they slowed each other, and a peak bound failed
/// now and then. One at a time.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lets this test process open thousands of sockets (soft limit up to the hard one).
fn raise_open_files() {
    // SAFETY: getrlimit/setrlimit on owned locals.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// `n` spans whose attributes make each about `span_bytes` bytes of protobuf.
fn request(seed: u64, n: usize, span_bytes: usize) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| Span {
            // Spread over the id space: samplers read the low bytes.
            trace_id: [
                &seed.to_be_bytes()[..],
                &(i as u64 + 1)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .to_be_bytes()[..],
            ]
            .concat(),
            span_id: ((seed << 32) + i as u64 + 1).to_be_bytes().to_vec(),
            name: "GET /api/orders".into(),
            start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
            end_time_unix_nano: 1_700_000_000_001_000_000 + i as u64,
            attributes: vec![KeyValue {
                key: "payload".into(),
                // Distinct per span, as real payloads are (repeated values are shared).
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(format!(
                        "{seed}/{i}/{}",
                        "x".repeat(span_bytes)
                    ))),
                }),
            }],
            ..Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// A gateway with the default settings: otlp receiver → otlp exporter → the sink on `sink`;
/// `http` settings and receiver-level `extra` lines added.
fn gateway(grpc: u16, http: u16, metrics: u16, sink: u16, settings: (&str, &str)) -> KillOnDrop {
    gateway_with(grpc, http, metrics, sink, settings, "")
}

/// [`gateway`] with `processor` (a `type: {config}` line) in the pipeline; `sink` 0: spans go to
/// a `nop` exporter instead.
fn gateway_with(
    grpc: u16,
    http: u16,
    metrics: u16,
    sink: u16,
    settings: (&str, &str),
    processor: &str,
) -> KillOnDrop {
    let exporter = if sink == 0 {
        "nop: {}".to_string()
    } else {
        format!("otlp: {{endpoint: 'http://127.0.0.1:{sink}'}}")
    };
    let exporter_id = exporter.split(':').next().unwrap_or_default().to_string();
    let (http_settings, extra) = settings;
    let (processors, listed) = match processor.split_once(':') {
        Some((id, _)) => (format!("processors:\n  {processor}\n"), id.trim()),
        None => (String::new(), ""),
    };
    let yaml = format!(
        "receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc}}}
      http: {{endpoint: 127.0.0.1:{http}{http_settings}}}
{extra}
{processors}exporters:
  {exporter}
service:
  telemetry:
    metrics: {{address: 127.0.0.1:{metrics}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [{listed}], exporters: [{exporter_id}]}}
"
    );
    let config = oxeye_tests::temp_config(&format!("gateway-limits-{grpc}"), &yaml);
    let child = oxeye_tests::spawn(&["run", "-c", config.to_str().expect("path")]);
    let child = KillOnDrop(child);
    for port in [grpc, http, metrics] {
        oxeye_tests::wait_port(port);
    }
    child
}

/// The sum of a counter family's samples on oxeye's `/metrics` whose labels contain `filter`.
fn metric(port: u16, name: &str, filter: &str) -> u64 {
    let page = oxeye_tests::http_get(port, "/metrics").expect("/metrics");
    page.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Stops oxeye with SIGTERM; (exit code, seconds it took, stderr, peak RSS in MiB).
fn stop(mut child: KillOnDrop, log: std::thread::JoinHandle<String>) -> (i32, f64, String, f64) {
    let t0 = Instant::now();
    oxeye_tests::signal(&child.0, libc::SIGTERM);
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: wait4 on our own child into owned locals.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    let mut peak = 0.0f64;
    loop {
        if let Some(p) = oxeye_tests::peak_rss_mib(child.0.id()) {
            peak = peak.max(p);
        }
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "oxeye did not stop within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = t0.elapsed().as_secs_f64();
    // Reaped: nothing left for KillOnDrop.
    let _ = child.0.try_wait();
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, took, log.join().expect("log"), peak)
}

#[test]
fn slow_and_silent_connections_do_not_stop_a_good_client() {
    let _one_at_a_time = alone();
    raise_open_files();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink::default());
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, http, metrics) = (free_port(), free_port(), free_port());
    let mut child = gateway(grpc, http, metrics, sink_port, ("", ""));
    let (_, log) = oxeye_tests::follow(child.0.stderr.take().expect("stderr"));

    // 2 000 hostile connections: silent ones, and slowloris ones sending their headers a byte at
    // a time, on both protocols.
    let mut silent = Vec::new();
    let mut slow = Vec::new();
    for i in 0..2000 {
        let port = if i % 4 == 0 { grpc } else { http };
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        if i % 2 == 0 {
            silent.push(s);
        } else {
            s.write_all(b"POST /v1/traces HTTP/1.1\r\nhost: x\r\n")
                .expect("write");
            slow.push(s);
        }
    }
    let dripping = Arc::new(AtomicBool::new(true));
    let drip = {
        let dripping = Arc::clone(&dripping);
        std::thread::spawn(move || {
            while dripping.load(Ordering::Relaxed) {
                for s in &mut slow {
                    let _ = s.write_all(b"x");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            slow
        })
    };

    // The good client: ten requests on each protocol, each answered promptly.
    let mut worst = Duration::ZERO;
    for i in 0..10u64 {
        let body = request(100 + i, 50, 100).encode_to_vec();
        let t0 = Instant::now();
        let (code, head, _) = http_post(
            http,
            "/v1/traces",
            &[("content-type", "application/x-protobuf")],
            &body,
        );
        assert_eq!(code, 200, "{head}");
        worst = worst.max(t0.elapsed());
        let t0 = Instant::now();
        rt.block_on(async {
            let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
                .await
                .expect("connect");
            client
                .export(request(200 + i, 50, 100))
                .await
                .expect("export");
        });
        worst = worst.max(t0.elapsed());
    }
    println!("the good client's slowest answer among 2 000 hostile connections: {worst:?}");
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    sink.wait_for(1000, Duration::from_secs(10));
    assert_eq!(sink.spans(), 1000);

    // None of them ever sent a whole request: after read_header_timeout (10 s) they are closed.
    std::thread::sleep(Duration::from_secs(11));
    dripping.store(false, Ordering::Relaxed);
    let slow = drip.join().expect("drip");
    let mut closed = 0;
    for mut s in silent.into_iter().chain(slow) {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = [0u8; 1024];
        // EOF or a reset: the server closed it (it may answer something first); a read that
        // times out: still open.
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(_) => {
                    closed += 1;
                    break;
                }
            }
        }
    }
    let timeouts = metric(metrics, "oxeye_otlp_timeouts_total", "");
    println!("{closed} of 2000 closed by the gateway; oxeye_otlp_timeouts_total {timeouts}");
    assert_eq!(closed, 2000);
    assert!(timeouts >= 1500, "timeouts counted: {timeouts}");
    let (code, took, log, _) = stop(child, log);
    assert_eq!(code, 0, "{log}");
    assert!(took < 5.0, "stopped in {took:.1} s");
}

#[test]
fn a_flood_of_large_requests_keeps_memory_bounded_and_every_refusal_counted() {
    let _one_at_a_time = alone();
    // The peak stays within the budget plus the overhead stated in
    // docs/components/receiver-otlp.md: 160 MiB the budget does not cover — the process itself
    // (a debug build here), the otlp exporter's queue (a 15 MiB request and its outgoing copy)
    // and what the allocator keeps between requests; measured 100–147 over runs (147 in a CI
    // run that accepted more requests than most).
    const OVERHEAD_MIB: f64 = 160.0;
    // The defaults: 128 MiB of requests in flight, 20 MiB requests at most.
    flood(("", ""), 128.0 + OVERHEAD_MIB);
    // A budget of 64 MiB (16 MiB requests at most).
    flood(
        (
            ", max_request_body_size: 16777216",
            "    admission: {request_limit_mib: 64}",
        ),
        64.0 + OVERHEAD_MIB,
    );
}

/// 24 clients POST 15 MiB requests back to back for 10 s; the peak RSS stays within
/// `limit_mib`.
fn flood(settings: (&str, &str), limit_mib: f64) {
    const CLIENTS: usize = 24;
    const SPANS: usize = 7_000;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink {
        count_only: true,
        ..Sink::default()
    });
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, http, metrics) = (free_port(), free_port(), free_port());
    let mut child = gateway(grpc, http, metrics, sink_port, settings);
    let (_, log) = oxeye_tests::follow(child.0.stderr.take().expect("stderr"));
    let body = Arc::new(request(7, SPANS, 2_200).encode_to_vec());
    println!(
        "{} requests of {:.1} MiB ({SPANS} spans) from {CLIENTS} clients",
        if settings.1.is_empty() {
            "default settings:"
        } else {
            settings.1.trim()
        },
        body.len() as f64 / (1 << 20) as f64
    );
    assert!(body.len() > 15 << 20, "{}", body.len());
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let until = Instant::now() + Duration::from_secs(10);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (body, accepted, refused) = (
                Arc::clone(&body),
                Arc::clone(&accepted),
                Arc::clone(&refused),
            );
            std::thread::spawn(move || {
                while Instant::now() < until {
                    let (code, head, _) = http_post(
                        http,
                        "/v1/traces",
                        &[("content-type", "application/x-protobuf")],
                        &body,
                    );
                    match code {
                        200 => accepted.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            assert!(
                                head.to_ascii_lowercase().contains("retry-after: 1"),
                                "{head}"
                            );
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("HTTP {other}: {head}"),
                    };
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let (accepted, refused) = (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let counted = metric(
        metrics,
        "oxeye_otlp_refused_over_budget_requests_total",
        "http",
    ) + metric(metrics, "oxeye_otlp_refused_requests_total", "http");
    sink.wait_for(accepted as usize * SPANS, Duration::from_secs(60));
    let (code, _, log, peak_mib) = stop(child, log);
    println!(
        "accepted {accepted} requests, refused {refused} (counted {counted}); peak RSS {peak_mib:.0} MiB"
    );
    assert_eq!(code, 0, "{log}");
    assert!(accepted > 0 && refused > 0, "{accepted} / {refused}");
    assert_eq!(counted, refused, "every refusal counted");
    assert_eq!(
        sink.spans() as u64,
        accepted * SPANS as u64,
        "every accepted span delivered"
    );
    let (received, out, dropped) = oxeye_tests::final_counts(&log).expect("final line");
    assert_eq!(
        (received, out, dropped),
        (accepted * SPANS as u64, accepted * SPANS as u64, 0)
    );
    assert!(
        peak_mib <= limit_mib,
        "peak RSS {peak_mib:.0} MiB > {limit_mib} MiB"
    );
}

#[test]
fn a_client_stalled_mid_request_does_not_hold_a_shutdown() {
    let _one_at_a_time = alone();
    raise_open_files();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink::default());
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, http, metrics) = (free_port(), free_port(), free_port());
    let mut child = gateway(grpc, http, metrics, sink_port, ("", ""));
    let (_, log) = oxeye_tests::follow(child.0.stderr.take().expect("stderr"));
    // 1 500 requests whose headers arrived and whose bodies stop half way.
    let body = request(1, 100, 100).encode_to_vec();
    let mut stalled = Vec::new();
    for _ in 0..1500 {
        let mut s = TcpStream::connect(("127.0.0.1", http)).expect("connect");
        write!(
            s,
            "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .expect("head");
        s.write_all(&body[..body.len() / 2]).expect("half a body");
        stalled.push(s);
    }
    // A good request still goes through meanwhile.
    let (code, head, _) = http_post(
        http,
        "/v1/traces",
        &[("content-type", "application/x-protobuf")],
        &request(2, 10, 10).encode_to_vec(),
    );
    assert_eq!(code, 200, "{head}");
    sink.wait_for(10, Duration::from_secs(10));
    let (code, took, log, _) = stop(child, log);
    println!(
        "stopped in {took:.2} s with {} stalled requests open",
        stalled.len()
    );
    assert_eq!(code, 0, "{log}");
    assert!(
        took < 4.0,
        "the drain is backpressure.wait + 1 s: stopped in {took:.1} s"
    );
    assert!(!log.contains("abandon"), "{log}");
    assert!(
        log.contains("still open"),
        "the forced close is logged: {log}"
    );
    assert_eq!(sink.spans(), 10);
}

/// Peak RSS of a gateway with `processor` (→ a `nop` exporter) taking 120 requests of 400
/// distinct traces whose spans carry 2 KiB each (about 100 MiB of spans); (peak MiB, spans
/// kept, spans dropped).
fn tail_flood(processor: &str) -> (f64, u64, u64) {
    let (grpc, http, metrics) = (free_port(), free_port(), free_port());
    let mut child = gateway_with(grpc, http, metrics, 0, ("", ""), processor);
    let (_, log) = oxeye_tests::follow(child.0.stderr.take().expect("stderr"));
    for i in 0..120u64 {
        let body = request(1000 + i, 400, 2048).encode_to_vec();
        let (code, head, answer) = http_post(
            http,
            "/v1/traces",
            &[("content-type", "application/x-protobuf")],
            &body,
        );
        assert_eq!(code, 200, "{head} {}", String::from_utf8_lossy(&answer));
    }
    let (code, _, log, peak) = stop(child, log);
    assert_eq!(code, 0, "{log}");
    let (inn, out, dropped) = oxeye_tests::final_counts(&log).expect("final line");
    assert_eq!(inn, 48_000);
    assert_eq!(out + dropped, 48_000, "{log}");
    (peak, out, dropped)
}

#[test]
fn tail_sampling_holds_otlp_spans_with_large_attributes_within_max_bytes() {
    let _one_at_a_time = alone();
    let (nop, _, _) = tail_flood("nop:");
    let (capped, kept, dropped) = tail_flood(
        "tail_sampling: {decision_wait: 1h, num_traces: 1000000, max_bytes: 33554432, policies: [{name: some, type: probabilistic, probabilistic: {sampling_percentage: 10}}]}",
    );
    println!(
        "peak RSS: nop {nop:.0} MiB; tail_sampling with max_bytes 32 MiB {capped:.0} MiB ({kept} kept, {dropped} sampled out)"
    );
    // The cap counts the spans' strings: 100 MiB of them cannot all be held (before it did,
    // the cap let this run reach +144 MiB). Above the cap: requests queued before the
    // processor and freed pages not yet given back, which vary with timing (+55 to +78 MiB
    // seen with 32 MiB held).
    assert!(
        capped - nop < 32.0 + 56.0,
        "max_bytes 32 MiB: +{:.0} MiB over nop",
        capped - nop
    );
    assert!(kept > 0 && dropped > kept);
}

#[test]
fn connection_budget_and_timeout_limits_answer_retryably_and_count() {
    let _one_at_a_time = alone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = Arc::new(Sink {
        count_only: true,
        delay: Duration::from_millis(50),
        ..Sink::default()
    });
    let sink_port = sink_endpoint(&rt, Arc::clone(&sink));
    let (grpc, http, metrics) = (free_port(), free_port(), free_port());
    let mut child = gateway(
        grpc,
        http,
        metrics,
        sink_port,
        (
            ", max_connections: 10, read_timeout: 1s, max_request_body_size: 4194304",
            "    admission: {request_limit_mib: 10}",
        ),
    );
    let (_, log) = oxeye_tests::follow(child.0.stderr.take().expect("stderr"));

    // max_connections: the 11th and later connections are closed at once, and counted.
    let mut open: Vec<TcpStream> = (0..15)
        .map(|_| TcpStream::connect(("127.0.0.1", http)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut closed = 0;
    for s in &mut open {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        if matches!(s.read(&mut [0u8; 16]), Ok(0)) {
            closed += 1;
        }
    }
    // At least the five over the limit (the probe that found the port may still hold a place).
    assert!((5..=6).contains(&closed), "{closed} connections closed");
    assert_eq!(
        metric(metrics, "oxeye_otlp_refused_connections_total", "http"),
        closed
    );

    // read_timeout: a body that stops coming gets 503 with Retry-After (OTLP clients retry it).
    let s = open
        .iter_mut()
        .find(|s| s.peer_addr().is_ok())
        .expect("an open one");
    write!(
        s,
        "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000\r\n\r\n0123456789"
    )
    .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let t0 = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = s.read(&mut answer).expect("an answer");
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    println!("stalled body answered in {:?}", t0.elapsed());
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    drop(open);

    // gRPC over the 10 MiB budget: RESOURCE_EXHAUSTED with RetryInfo, each one counted.
    let big = request(3, 1500, 2_500);
    assert!(big.encoded_len() > 3 << 20);
    let (accepted, refused) = rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(3);
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let big = big.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
                    .await
                    .expect("connect")
                    .max_encoding_message_size(8 << 20);
                let (mut ok, mut refused) = (0u64, 0u64);
                while Instant::now() < until {
                    match client.export(big.clone()).await {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            use tonic_types::StatusExt;
                            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                            assert!(e.message().contains("admission"), "{e:?}");
                            assert!(e.get_details_retry_info().is_some(), "retryable: {e:?}");
                            refused += 1;
                        }
                    }
                }
                (ok, refused)
            }));
        }
        let mut total = (0, 0);
        for t in tasks {
            let (ok, refused) = t.await.expect("client");
            total = (total.0 + ok, total.1 + refused);
        }
        total
    });
    println!("gRPC with a 10 MiB budget: {accepted} accepted, {refused} refused");
    assert!(accepted > 0 && refused > 0);
    assert_eq!(
        metric(
            metrics,
            "oxeye_otlp_refused_over_budget_requests_total",
            "grpc"
        ) + metric(metrics, "oxeye_otlp_refused_requests_total", "grpc"),
        refused
    );
    sink.wait_for(accepted as usize * 1500, Duration::from_secs(30));
    let (code, _, log, _) = stop(child, log);
    assert_eq!(code, 0, "{log}");
    assert_eq!(sink.spans() as u64, accepted * 1500);
}

#[test]
fn memory_limiter_refuses_clients_retryably_above_its_limit_then_takes_data_again() {
    let _one_at_a_time = alone();
    let (grpc, http, metrics) = (free_port(), free_port(), free_port());
    // A soft limit of 48 MiB: above oxeye at rest (the debug binary alone keeps ~30 MB of
    // file-backed pages resident, librdkafka's included), below it under this load.
    let mut child = gateway_with(
        grpc,
        http,
        metrics,
        0,
        ("", ""),
        "memory_limiter: {check_interval: 50ms, limit_mib: 56, spike_limit_mib: 8}",
    );
    let (_, log) = oxeye_tests::follow(child.0.stderr.take().expect("stderr"));
    let body = Arc::new(request(11, 4000, 2_000).encode_to_vec());
    let post = |body: &[u8]| {
        http_post(
            http,
            "/v1/traces",
            &[("content-type", "application/x-protobuf")],
            body,
        )
    };
    // Eight clients at once push resident memory over the soft limit: refusals with a delay.
    let until = Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let body = Arc::clone(&body);
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0u64, 0u64);
                while Instant::now() < until {
                    let (code, head, _) = http_post(
                        http,
                        "/v1/traces",
                        &[("content-type", "application/x-protobuf")],
                        &body,
                    );
                    match code {
                        200 => ok += 1,
                        429 => {
                            assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
                            refused += 1;
                        }
                        other => panic!("HTTP {other}: {head}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for c in clients {
        let (o, r) = c.join().expect("client");
        ok += o;
        refused += r;
    }
    let counted = metric(metrics, "oxeye_otlp_refused_requests_total", "http")
        + metric(
            metrics,
            "oxeye_otlp_refused_over_budget_requests_total",
            "http",
        );
    let refusals = metric(metrics, "oxeye_memory_limiter_refusals_total", "");
    println!("memory_limiter: {ok} accepted, {refused} refused ({counted} counted), refusing {refusals} time(s)");
    assert!(refusals >= 1, "the limiter refused at least once");
    // Whether any request got in before the first check saw the load depends on the host's
    // pace (one CI run had all 179 refused); taking data again is checked below, at rest.
    assert!(refused > 0, "{ok} accepted, none refused");
    assert_eq!(counted, refused);
    // The load gone, memory falls back under the soft limit (the limiter hands freed memory
    // back at most every 10 s) and data is taken again.
    let load_ended = Instant::now();
    let deadline = load_ended + Duration::from_secs(20);
    loop {
        let (code, _, _) = post(&request(12, 10, 100).encode_to_vec());
        if code == 200 {
            println!(
                "memory_limiter: taking data again {:.1} s after the load",
                load_ended.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refusing 20 s after the load"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, log, _) = stop(child, log);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("above the soft limit"), "{log}");
}
